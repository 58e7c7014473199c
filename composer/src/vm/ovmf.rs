//! OVMF for Secure Boot: the firmware built with it (SMM-protected
//! variables), and a variable store that trusts the user's certificate.
//!
//! The store is written from Debian's blank one (`OVMF_VARS_4M.fd`) by
//! adding the variables that put the firmware in user mode with Secure
//! Boot on, as EDK2's key enrollment would leave them: PK, KEK and db
//! each hold the certificate (an EFI_SIGNATURE_LIST of one X.509
//! entry), SecureBootEnable is 1 and CustomMode 0. The layout (firmware
//! volume header, VARIABLE_STORE_HEADER, AUTHENTICATED_VARIABLE_HEADER,
//! 4-byte alignment) is EDK2's, MdeModulePkg/Include/Guid/VariableFormat.h.
//!
//! Why no crate: none on crates.io writes EDK2 variable stores (the tool
//! that does is Python's virt-firmware). The test boots the result:
//! firmware that starts a signed image and refuses a changed one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Secure Boot firmware: code built with SMM and Secure Boot, and the
/// blank variable store its variables are written into.
pub struct SecureBootFirmware {
    pub code: PathBuf,
    pub blank_vars: PathBuf,
}

const MISSING: &str = "install Debian's ovmf package, which ships OVMF_CODE_4M.secboot.fd (sudo apt-get install ovmf), or set PAK_OVMF_SECBOOT_CODE and PAK_OVMF_SECBOOT_VARS";

pub fn secure_boot_firmware() -> Result<SecureBootFirmware> {
    if let (Some(c), Some(v)) = (
        std::env::var_os("PAK_OVMF_SECBOOT_CODE"),
        std::env::var_os("PAK_OVMF_SECBOOT_VARS"),
    ) {
        return Ok(SecureBootFirmware {
            code: c.into(),
            blank_vars: v.into(),
        });
    }
    for (code, vars) in [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.secboot.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ] {
        if Path::new(code).is_file() && Path::new(vars).is_file() {
            return Ok(SecureBootFirmware {
                code: code.into(),
                blank_vars: vars.into(),
            });
        }
    }
    bail!("no Secure Boot UEFI firmware found: {MISSING}")
}

/// An EFI GUID in its textual field order; stored little-endian in the
/// first three fields, as EFI does.
#[derive(Clone, Copy)]
struct Guid(u32, u16, u16, [u8; 8]);

impl Guid {
    fn bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.0.to_le_bytes());
        b[4..6].copy_from_slice(&self.1.to_le_bytes());
        b[6..8].copy_from_slice(&self.2.to_le_bytes());
        b[8..].copy_from_slice(&self.3);
        b
    }
}

const SYSTEM_NV_DATA_FV: Guid = Guid(
    0xfff12b8d,
    0x7696,
    0x4c8b,
    [0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50],
);
const AUTHENTICATED_VARIABLE: Guid = Guid(
    0xaaf32c78,
    0x947b,
    0x439a,
    [0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92],
);
const GLOBAL_VARIABLE: Guid = Guid(
    0x8be4df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
const IMAGE_SECURITY_DATABASE: Guid = Guid(
    0xd719b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);
const SECURE_BOOT_ENABLE_DISABLE: Guid = Guid(
    0xf0a30bc7,
    0xaf08,
    0x4556,
    [0x99, 0xc4, 0x00, 0x10, 0x09, 0xc9, 0x3a, 0x44],
);
const CUSTOM_MODE_ENABLE: Guid = Guid(
    0xc076ec0c,
    0x7028,
    0x4399,
    [0xa0, 0x72, 0x71, 0xee, 0x5c, 0x44, 0x8b, 0x9f],
);
const CERT_X509: Guid = Guid(
    0xa5c059a1,
    0x94e4,
    0x4aa7,
    [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72],
);
/// The owner recorded with pak's signature entries.
const PAK_OWNER: Guid = Guid(
    0x5e1f0c7a,
    0x3b2d,
    0x4f7e,
    [0x9c, 0x1a, 0x70, 0x61, 0x6b, 0x2d, 0x73, 0x62],
);

const NON_VOLATILE: u32 = 0x01;
const BOOTSERVICE_ACCESS: u32 = 0x02;
const RUNTIME_ACCESS: u32 = 0x04;
const TIME_BASED_AUTHENTICATED_WRITE_ACCESS: u32 = 0x20;

const VARIABLE_DATA: u16 = 0x55aa;
const VAR_ADDED: u8 = 0x3f;
const VARIABLE_STORE_FORMATTED: u8 = 0x5a;
const VARIABLE_STORE_HEALTHY: u8 = 0xfe;
const VARIABLE_STORE_HEADER: usize = 28;
const AUTH_VARIABLE_HEADER: usize = 60;

/// The time recorded on the key variables. Fixed, so the same
/// certificate gives the same store; any later authenticated update
/// carries a newer time, which is all EDK2 checks it for.
const ENROLL_TIME: [u8; 16] = {
    let mut t = [0u8; 16];
    let year = 2024u16.to_le_bytes();
    t[0] = year[0];
    t[1] = year[1];
    t[2] = 1; // month
    t[3] = 1; // day
    t
};

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// An EFI_SIGNATURE_LIST holding one X.509 certificate.
fn x509_signature_list(cert_der: &[u8]) -> Vec<u8> {
    let entry = 16 + cert_der.len();
    let mut v = Vec::with_capacity(28 + entry);
    v.extend_from_slice(&CERT_X509.bytes());
    v.extend_from_slice(&((28 + entry) as u32).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&(entry as u32).to_le_bytes());
    v.extend_from_slice(&PAK_OWNER.bytes());
    v.extend_from_slice(cert_der);
    v
}

fn variable(name: &str, guid: Guid, attributes: u32, data: &[u8]) -> Vec<u8> {
    let name: Vec<u8> = name
        .encode_utf16()
        .chain([0])
        .flat_map(|c| c.to_le_bytes())
        .collect();
    let timed = attributes & TIME_BASED_AUTHENTICATED_WRITE_ACCESS != 0;
    let mut v = Vec::with_capacity(AUTH_VARIABLE_HEADER + name.len() + data.len() + 3);
    v.extend_from_slice(&VARIABLE_DATA.to_le_bytes());
    v.push(VAR_ADDED);
    v.push(0);
    v.extend_from_slice(&attributes.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes()); // MonotonicCount
    v.extend_from_slice(&if timed { ENROLL_TIME } else { [0; 16] });
    v.extend_from_slice(&0u32.to_le_bytes()); // PubKeyIndex
    v.extend_from_slice(&(name.len() as u32).to_le_bytes());
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(&guid.bytes());
    v.extend_from_slice(&name);
    v.extend_from_slice(data);
    // The next header starts 4-byte aligned; the gap stays erased flash.
    v.resize(v.len().next_multiple_of(4), 0xff);
    v
}

/// A variable store enrolling `cert_der` as PK, KEK and db, written into
/// a copy of a blank store. Refuses a store that is not a blank EDK2
/// authenticated store, rather than guess at its layout.
pub fn enroll(blank: &[u8], cert_der: &[u8]) -> Result<Vec<u8>> {
    if blank.len() < 0x48 + VARIABLE_STORE_HEADER || &blank[0x28..0x2c] != b"_FVH" {
        bail!("not an OVMF variable store (no firmware volume header)");
    }
    if blank[0x10..0x20] != SYSTEM_NV_DATA_FV.bytes() {
        bail!("the firmware volume is not an NV data volume");
    }
    let store = u16::from_le_bytes([blank[0x30], blank[0x31]]) as usize;
    if blank.len() < store + VARIABLE_STORE_HEADER
        || blank[store..store + 16] != AUTHENTICATED_VARIABLE.bytes()
    {
        bail!(
            "the variable store is not in EDK2's authenticated format (Secure Boot builds use it)"
        );
    }
    let size = u32_at(blank, store + 16) as usize;
    if blank[store + 20] != VARIABLE_STORE_FORMATTED
        || blank[store + 21] != VARIABLE_STORE_HEALTHY
        || store + size > blank.len()
    {
        bail!("the variable store is not formatted and healthy");
    }
    let first = (store + VARIABLE_STORE_HEADER).next_multiple_of(4);
    if blank[first..store + size].iter().any(|&b| b != 0xff) {
        bail!("the variable store already holds variables; start from the blank OVMF_VARS file");
    }
    let keys = x509_signature_list(cert_der);
    let authenticated =
        NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS;
    let vars = [
        variable("PK", GLOBAL_VARIABLE, authenticated, &keys),
        variable("KEK", GLOBAL_VARIABLE, authenticated, &keys),
        variable("db", IMAGE_SECURITY_DATABASE, authenticated, &keys),
        variable(
            "SecureBootEnable",
            SECURE_BOOT_ENABLE_DISABLE,
            NON_VOLATILE | BOOTSERVICE_ACCESS,
            &[1],
        ),
        variable(
            "CustomMode",
            CUSTOM_MODE_ENABLE,
            NON_VOLATILE | BOOTSERVICE_ACCESS,
            &[0],
        ),
    ]
    .concat();
    if first + vars.len() > store + size {
        bail!(
            "the certificate ({} bytes) does not fit the variable store three times",
            cert_der.len()
        );
    }
    let mut out = blank.to_vec();
    out[first..first + vars.len()].copy_from_slice(&vars);
    Ok(out)
}

/// The machine's variable store for Secure Boot, beside the image,
/// enrolling `cert_der`. Written afresh for every start of QEMU, so a
/// run always begins with exactly the keys asked for; reboots within a
/// run keep what the firmware wrote. pak's boot state (tries, the
/// default entry) lives on the ESP, not in NVRAM, so nothing of pak's
/// is lost.
pub fn secure_vars_for(image: &Path, fw: &SecureBootFirmware, cert_der: &[u8]) -> Result<PathBuf> {
    let vars = image.with_extension("secboot.vars");
    let blank = std::fs::read(&fw.blank_vars)
        .with_context(|| format!("cannot read {}: {MISSING}", fw.blank_vars.display()))?;
    let enrolled = enroll(&blank, cert_der).with_context(|| {
        format!(
            "cannot enroll a certificate into {}",
            fw.blank_vars.display()
        )
    })?;
    crate::util::fsutil::write_atomic(&vars, &enrolled)?;
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blank 4M-layout store: the firmware volume header and an empty
    /// authenticated variable store, as Debian's OVMF_VARS_4M.fd has.
    fn blank() -> Vec<u8> {
        let mut b = vec![0xffu8; 0x84000];
        b[..0x48].fill(0);
        b[0x10..0x20].copy_from_slice(&SYSTEM_NV_DATA_FV.bytes());
        b[0x28..0x2c].copy_from_slice(b"_FVH");
        b[0x30] = 0x48;
        b[0x48..0x58].copy_from_slice(&AUTHENTICATED_VARIABLE.bytes());
        b[0x58..0x5c].copy_from_slice(&0x3ffb8u32.to_le_bytes());
        b[0x5c] = VARIABLE_STORE_FORMATTED;
        b[0x5d] = VARIABLE_STORE_HEALTHY;
        b[0x5e..0x64].fill(0);
        b
    }

    /// Walks the store as EDK2 does and returns (name, attributes, data).
    fn read_vars(b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut at = 0x64;
        let mut out = Vec::new();
        while u16::from_le_bytes([b[at], b[at + 1]]) == VARIABLE_DATA {
            let ns = u32_at(b, at + 36) as usize;
            let ds = u32_at(b, at + 40) as usize;
            let name: Vec<u16> = b[at + 60..at + 60 + ns]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&c| c != 0)
                .collect();
            let data = b[at + 60 + ns..at + 60 + ns + ds].to_vec();
            out.push((String::from_utf16(&name).unwrap(), u32_at(b, at + 4), data));
            at = (at + 60 + ns + ds).next_multiple_of(4);
        }
        out
    }

    #[test]
    fn enrolled_store_holds_the_keys() {
        let cert = b"0\x82 not really DER but bytes".to_vec();
        let out = enroll(&blank(), &cert).unwrap();
        assert_eq!(out.len(), blank().len());
        let vars = read_vars(&out);
        let names: Vec<&str> = vars.iter().map(|v| v.0.as_str()).collect();
        assert_eq!(names, ["PK", "KEK", "db", "SecureBootEnable", "CustomMode"]);
        assert_eq!(vars[0].1, 0x27);
        let list = &vars[2].2;
        assert_eq!(&list[..16], &CERT_X509.bytes());
        assert_eq!(u32_at(list, 16) as usize, list.len());
        assert_eq!(&list[44..], &cert[..]);
        assert_eq!(enroll(&blank(), &cert).unwrap(), out, "reproducible");
        let e = enroll(&out, &cert).unwrap_err().to_string();
        assert!(e.contains("already holds variables"), "{e}");
        assert!(enroll(&[0u8; 100], &cert).is_err());
    }

    /// Debian's snakeoil store was made by EDK2 itself enrolling its key:
    /// the same walk reads PK, KEK and db from it, in the same layout;
    /// and Debian's blank store (what `pak qemu --secure-boot` starts
    /// from) takes the keys.
    #[test]
    fn layout_matches_debian_ovmf() {
        let read = |f: &str| {
            std::fs::read(format!("/usr/share/OVMF/{f}"))
                .unwrap_or_else(|e| panic!("{f}: {e}; install ovmf (tools/packages.txt)"))
        };
        let snakeoil = read("OVMF_VARS_4M.snakeoil.fd");
        // That store also holds deleted copies; the live keys are last.
        let live: Vec<_> = read_vars(&snakeoil)
            .into_iter()
            .filter(|v| ["PK", "KEK", "db"].contains(&v.0.as_str()))
            .collect();
        assert_eq!(live.len(), 3);
        for v in &live {
            assert_eq!(v.1, 0x27, "{}", v.0);
            assert_eq!(&v.2[..16], &CERT_X509.bytes(), "{}", v.0);
        }
        let blank = read("OVMF_VARS_4M.fd");
        let ours = enroll(&blank, b"cert").unwrap();
        assert_eq!(read_vars(&ours).len(), 5);
        assert_eq!(ours[..0x64], blank[..0x64], "headers untouched");
    }
}
