//! Unified kernel images (UAPI Group's UKI specification): systemd-stub
//! with the kernel, the initrd, the command line and os-release as PE
//! sections, so one file, signed as a whole, carries everything the
//! firmware starts. Laid out as systemd's ukify lays them out (section
//! order, alignment, a kernel section as large in memory as the kernel
//! asks), so systemd-stub and systemd-boot treat pak's UKIs as theirs.

pub mod appendix;
pub mod pe;

use anyhow::{Context, Result};
use pe::{NewSection, Pe, PeError};

use crate::image::assemble::RootTree;
use crate::image::read_from_tree;
use crate::sign::key::SecureBootKey;
use crate::spec::pakfile::Pakfile;

/// systemd-stub in Debian's systemd-boot-efi package.
pub const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Everything that goes into one UKI.
pub struct UkiParts<'a> {
    /// systemd-stub (`STUB` in the image's root).
    pub stub: &'a [u8],
    /// The kernel (an EFI-stub bzImage, itself a PE image).
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    /// The kernel command line; systemd-stub uses it and, under Secure
    /// Boot, refuses any other, which is what seals a verity root hash.
    pub cmdline: &'a str,
    /// The root's os-release, shown by systemd-boot's menu.
    pub os_release: &'a str,
    /// The kernel's release (`uname -r`), if known.
    pub uname: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("systemd-stub ({STUB}) cannot take the UKI's sections: {0}")]
    Stub(PeError),
    #[error("the kernel command line has a NUL byte")]
    Cmdline,
}

/// How `pak build` boots its generations when `[boot] uki` is on: from
/// a UKI, signed with the Pakfile's Secure Boot key if it gives one (and
/// then systemd-boot too).
pub struct UkiBuild {
    key: Option<SecureBootKey>,
}

impl UkiBuild {
    /// `None` when the Pakfile boots a kernel and initrd. The key is read
    /// and checked here, so a bad one stops the build before it writes.
    pub fn from_pakfile(pakfile: &Pakfile) -> Result<Option<UkiBuild>> {
        if !pakfile.boot.uki {
            return Ok(None);
        }
        let key = match &pakfile.boot.secure_boot {
            Some(sb) => Some(
                SecureBootKey::read(
                    &pakfile.resolve_path(&sb.key),
                    &pakfile.resolve_path(&sb.cert),
                )
                .context("[boot] secure-boot")?,
            ),
            None => None,
        };
        Ok(Some(UkiBuild { key }))
    }

    /// The UKI of a generation whose root is `tree`, booting with
    /// `cmdline` (the slot's whole command line), signed if a key is set.
    pub fn image(
        &self,
        tree: &RootTree,
        kernel: &[u8],
        initrd: &[u8],
        cmdline: &str,
        uname: &str,
    ) -> Result<Vec<u8>> {
        let stub = read_from_tree(tree, STUB).context(
            "[boot] uki needs systemd-stub (/usr/lib/systemd/boot/efi/linuxx64.efi.stub): add systemd-boot-efi to [packages] (the base profile has it)",
        )?;
        let os_release = read_from_tree(tree, "etc/os-release")
            .or_else(|_| read_from_tree(tree, "usr/lib/os-release"))
            .unwrap_or_default();
        let uki = build(&UkiParts {
            stub: &stub,
            kernel,
            initrd,
            cmdline,
            os_release: &String::from_utf8_lossy(&os_release),
            uname: Some(uname),
        })?;
        self.sign(&uki)
    }

    /// The boot loader as the ESP gets it: signed if a key is set.
    pub fn boot_loader(&self, systemd_boot: Vec<u8>) -> Result<Vec<u8>> {
        self.sign(&systemd_boot).context("cannot sign systemd-boot")
    }

    fn sign(&self, image: &[u8]) -> Result<Vec<u8>> {
        match &self.key {
            Some(k) => crate::sign::authenticode::sign_pe(image, k),
            None => Ok(image.to_vec()),
        }
    }
}

/// The UKI's bytes: a pure function of the parts.
pub fn build(parts: &UkiParts) -> Result<Vec<u8>, UkiError> {
    if parts.cmdline.contains('\0') {
        return Err(UkiError::Cmdline);
    }
    let mut stub = Pe::parse(parts.stub.to_vec()).map_err(UkiError::Stub)?;
    // A kernel that is a PE image asks for SizeOfImage bytes once loaded
    // (its bss and decompression room), more than its file size; the
    // section must reserve that much, as ukify does.
    let kernel_size = Pe::parse(parts.kernel.to_vec())
        .ok()
        .map(|k| k.size_of_image());
    let mut sections = vec![
        NewSection {
            name: ".osrel",
            data: parts.os_release.as_bytes(),
            virtual_size: None,
        },
        NewSection {
            name: ".cmdline",
            data: parts.cmdline.as_bytes(),
            virtual_size: None,
        },
    ];
    if let Some(u) = parts.uname {
        sections.push(NewSection {
            name: ".uname",
            data: u.as_bytes(),
            virtual_size: None,
        });
    }
    sections.push(NewSection {
        name: ".initrd",
        data: parts.initrd,
        virtual_size: None,
    });
    sections.push(NewSection {
        name: ".linux",
        data: parts.kernel,
        virtual_size: kernel_size,
    });
    stub.add_sections(&sections).map_err(UkiError::Stub)?;
    Ok(stub.into_bytes())
}

/// The command line sealed in a UKI (its `.cmdline` section), for the
/// host side to read the root hash a UKI slot boots with.
pub fn cmdline_of(uki: &[u8]) -> Option<String> {
    let pe = Pe::parse(uki.to_vec()).ok()?;
    let raw = pe.section_data(".cmdline")?;
    Some(
        String::from_utf8_lossy(raw)
            .trim_end_matches('\0')
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_read_back_in_ukify_order() {
        let stub = pe::tests::tiny_pe();
        let parts = UkiParts {
            stub: &stub,
            kernel: &pe::tests::tiny_pe(),
            initrd: b"070701initrd",
            cmdline: "pak.slot=a quiet",
            os_release: "ID=debian\n",
            uname: Some("6.12.0-1-amd64"),
        };
        let uki = build(&parts).unwrap();
        assert_eq!(uki, build(&parts).unwrap(), "same parts, same bytes");
        let pe = Pe::parse(uki).unwrap();
        let names: Vec<String> = pe.sections().into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [".text", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
        );
        assert_eq!(pe.section_data(".cmdline").unwrap(), b"pak.slot=a quiet");
        assert_eq!(cmdline_of(pe.bytes()).as_deref(), Some("pak.slot=a quiet"));
        assert_eq!(pe.section_data(".initrd").unwrap(), b"070701initrd");
        let linux = pe.sections().pop().unwrap();
        assert_eq!(linux.virtual_size, 0x2000, "the kernel's SizeOfImage");
        assert!(matches!(
            build(&UkiParts {
                stub: b"not a PE",
                ..parts
            }),
            Err(UkiError::Stub(_))
        ));
    }
}
