//! Running images under QEMU with OVMF (UEFI), as real machines run them.
//!
//! KVM is used only when a short probe shows a KVM guest actually runs:
//! on some hosts `/dev/kvm` exists but guests hang, and a hang must not be
//! the price of trying. The verdict is cached per boot of the host.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

pub struct Firmware {
    pub code: PathBuf,
    pub vars: PathBuf,
}

const MISSING: &str = "install the Debian packages qemu-system-x86 and ovmf (sudo apt-get install qemu-system-x86 ovmf)";

pub fn qemu_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PAK_QEMU") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "PAK_QEMU names {}, which does not exist: {MISSING}, or point PAK_QEMU at qemu-system-x86_64",
                p.display()
            );
        }
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .with_context(|| format!("qemu-system-x86_64 is not installed: {MISSING}"))
}

pub fn firmware() -> Result<Firmware> {
    if let (Some(c), Some(v)) = (
        std::env::var_os("PAK_OVMF_CODE"),
        std::env::var_os("PAK_OVMF_VARS"),
    ) {
        return Ok(Firmware {
            code: c.into(),
            vars: v.into(),
        });
    }
    for (code, vars) in [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ] {
        if Path::new(code).is_file() && Path::new(vars).is_file() {
            return Ok(Firmware {
                code: code.into(),
                vars: vars.into(),
            });
        }
    }
    bail!("no UEFI firmware (OVMF) found: {MISSING}")
}

/// KVM or TCG: `PAK_ACCEL` decides when set; otherwise KVM if a probe
/// guest produces firmware output within a few seconds.
pub fn accel() -> Result<Accel> {
    match std::env::var("PAK_ACCEL").as_deref() {
        Ok("kvm") => return Ok(Accel::Kvm),
        Ok("tcg") => return Ok(Accel::Tcg),
        Ok(other) => bail!("PAK_ACCEL={other} is neither kvm nor tcg"),
        Err(_) => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(Accel::Tcg);
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let cache = std::env::temp_dir().join(format!(
        "pak-kvm-verdict-{}",
        rustix::process::getuid().as_raw()
    ));
    if let Ok(text) = std::fs::read_to_string(&cache)
        && let Some((id, verdict)) = text.split_once(' ')
        && id == boot_id.trim()
    {
        return Ok(if verdict.trim() == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        });
    }
    let verdict = if probe_kvm().unwrap_or(false) {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let _ = std::fs::write(&cache, format!("{} {}\n", boot_id.trim(), verdict.name()));
    Ok(verdict)
}

/// Boots the firmware alone under KVM and waits for it to print anything.
fn probe_kvm() -> Result<bool> {
    let fw = firmware()?;
    let mut child = Command::new(qemu_binary()?)
        .args([
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-m",
            "256",
            "-nographic",
            "-nodefaults",
            "-serial",
            "stdio",
            "-bios",
        ])
        .arg(&fw.code)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(out.read(&mut b).map(|n| n > 0).unwrap_or(false));
    });
    let ok = rx.recv_timeout(Duration::from_secs(5)).unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    Ok(ok)
}

/// How to run one machine.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub image: PathBuf,
    pub memory_mib: u32,
    /// Discard writes to the image at exit.
    pub snapshot: bool,
    /// Serial console on stdio multiplexed with the QEMU monitor
    /// (interactive use: Ctrl-a x quits).
    pub interactive: bool,
    /// More disks, read-only, after the image (`/dev/vdb`, `/dev/vdc`, ...
    /// in the guest): a generation file to switch to, for instance.
    pub drives: Vec<PathBuf>,
    /// Host ports that reach the guest's (QEMU user networking).
    pub forwards: Vec<Forward>,
    /// Credentials for the guest in systemd's `io.systemd.credential`
    /// convention (SMBIOS type 11 strings or fw_cfg files), which pak
    /// images read at first boot to provision themselves.
    pub credentials: Vec<Credential>,
}

/// One credential given to the guest: `--credential NAME=VALUE` (a short
/// one-line value, as an SMBIOS type 11 string) or `--credential-file
/// NAME=PATH` (any content, as the fw_cfg file
/// `opt/io.systemd.credentials/NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Smbios { name: String, value: String },
    FwCfg { name: String, file: PathBuf },
}

/// fw_cfg names are at most 55 bytes; this prefix takes 27 of them.
const FW_CFG_PREFIX: &str = "opt/io.systemd.credentials/";

fn credential_name(s: &str, flag: &str) -> Result<String> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if !ok {
        bail!(
            "{flag} {s:?}: a credential name is letters, digits, `.`, `_`, `-` or `@`, like system.hostname or pak.seed"
        );
    }
    Ok(s.to_string())
}

impl Credential {
    /// `NAME=VALUE`, for `--credential`.
    pub fn smbios(s: &str) -> Result<Credential> {
        let Some((name, value)) = s.split_once('=') else {
            bail!("--credential {s:?} is not NAME=VALUE, like system.hostname=web-1");
        };
        if value.contains('\n') || value.contains('\0') {
            bail!(
                "--credential {name}: the value has a line break; give multi-line values with --credential-file {name}=PATH"
            );
        }
        Ok(Credential::Smbios {
            name: credential_name(name, "--credential")?,
            value: value.to_string(),
        })
    }

    /// `NAME=PATH`, for `--credential-file`.
    pub fn fw_cfg(s: &str) -> Result<Credential> {
        let Some((name, file)) = s.split_once('=') else {
            bail!("--credential-file {s:?} is not NAME=PATH, like pak.seed=seed/pak-seed.toml");
        };
        let name = credential_name(name, "--credential-file")?;
        if FW_CFG_PREFIX.len() + name.len() > 55 {
            bail!(
                "--credential-file {name}: fw_cfg names are at most 55 bytes, which leaves {} for a credential's name",
                55 - FW_CFG_PREFIX.len()
            );
        }
        let file = PathBuf::from(file);
        if !file.is_file() {
            bail!("--credential-file {name}: {} is not a file", file.display());
        }
        Ok(Credential::FwCfg { name, file })
    }

    /// QEMU's arguments for it; commas in values are doubled, QEMU's
    /// escape in option strings.
    fn args(&self) -> [String; 2] {
        match self {
            Credential::Smbios { name, value } => [
                "-smbios".into(),
                format!(
                    "type=11,value=io.systemd.credential:{name}={}",
                    value.replace(',', ",,")
                ),
            ],
            Credential::FwCfg { name, file } => [
                "-fw_cfg".into(),
                format!(
                    "name={FW_CFG_PREFIX}{name},file={}",
                    file.display().to_string().replace(',', ",,")
                ),
            ],
        }
    }
}

/// A TCP port of the host, on 127.0.0.1 only, forwarded to a port of the
/// guest (`--forward HOST:GUEST`). The guest's side is its address on
/// QEMU's user network (10.0.2.15 by DHCP), so the guest must bring its
/// interface up; the host's side stays on loopback, so nothing but this
/// machine reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host: u16,
    pub guest: u16,
}

impl std::str::FromStr for Forward {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Forward> {
        let port = |p: &str| -> Option<u16> { p.parse().ok().filter(|n| *n != 0) };
        match s.split_once(':') {
            Some((h, g)) if port(h).is_some() && port(g).is_some() => Ok(Forward {
                host: port(h).unwrap_or_default(),
                guest: port(g).unwrap_or_default(),
            }),
            _ => bail!(
                "{s:?} is not HOST:GUEST: give two port numbers from 1 to 65535, such as 8080:80 (host port 8080 on 127.0.0.1 reaches the guest's port 80)"
            ),
        }
    }
}

/// QEMU's `-netdev` value: user networking, with the forwards.
fn netdev(forwards: &[Forward]) -> String {
    let mut v = String::from("user,id=net0");
    for f in forwards {
        v.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
    }
    v
}

/// The machine's UEFI variable store, kept beside the image so boot
/// loader state persists across boots, as in NVRAM.
pub fn vars_for(image: &Path, fw: &Firmware) -> Result<PathBuf> {
    let vars = image.with_extension("vars");
    if !vars.exists() {
        std::fs::copy(&fw.vars, &vars)
            .with_context(|| format!("cannot create {}", vars.display()))?;
    }
    Ok(vars)
}

/// Which firmware a machine boots: OVMF as it ships, or OVMF with
/// Secure Boot on and a certificate (DER) enrolled as PK, KEK and db.
#[derive(Debug, Clone, Default)]
pub enum FirmwareMode {
    #[default]
    Standard,
    SecureBoot {
        cert_der: Vec<u8>,
    },
}

impl FirmwareMode {
    /// Secure Boot trusting the certificate in `cert` (PEM or DER).
    pub fn secure_boot(cert: &Path) -> Result<FirmwareMode> {
        let cert = crate::sign::key::read_certificate(cert)?;
        Ok(FirmwareMode::SecureBoot {
            cert_der: der::Encode::to_der(&cert).context("cannot encode the certificate")?,
        })
    }
}

pub fn command(cfg: &VmConfig) -> Result<(Command, Accel)> {
    command_with(cfg, &FirmwareMode::Standard)
}

/// The pflash code and variable store for `fw`, and the machine type.
fn firmware_args(cfg: &VmConfig, fw: &FirmwareMode) -> Result<(Vec<String>, PathBuf, PathBuf)> {
    Ok(match fw {
        FirmwareMode::Standard => {
            let fw = firmware()?;
            let vars = vars_for(&cfg.image, &fw)?;
            (vec!["-machine".into(), "q35".into()], fw.code, vars)
        }
        FirmwareMode::SecureBoot { cert_der } => {
            let fw = super::ovmf::secure_boot_firmware()?;
            let vars = super::ovmf::secure_vars_for(&cfg.image, &fw, cert_der)?;
            // Secure Boot builds keep their variables behind SMM, so that
            // only the firmware writes them: QEMU must emulate SMM and
            // mark the flash secure, or the firmware stops at start.
            (
                [
                    "-machine",
                    "q35,smm=on",
                    "-global",
                    "driver=cfi.pflash01,property=secure,value=on",
                    "-global",
                    "ICH9-LPC.disable_s3=1",
                ]
                .map(String::from)
                .to_vec(),
                fw.code,
                vars,
            )
        }
    })
}

pub fn command_with(cfg: &VmConfig, fw: &FirmwareMode) -> Result<(Command, Accel)> {
    if !cfg.image.is_file() {
        bail!(
            "{} does not exist; build one with `pak build -o {}`",
            cfg.image.display(),
            cfg.image.display()
        );
    }
    let (machine, code, vars) = firmware_args(cfg, fw)?;
    let accel = accel()?;
    let mut c = Command::new(qemu_binary()?);
    c.args(machine)
        .args(["-accel", accel.name(), "-m"])
        .arg(cfg.memory_mib.to_string())
        .args(["-nographic", "-nodefaults", "-no-user-config", "-serial"])
        .arg(if cfg.interactive {
            "mon:stdio"
        } else {
            "stdio"
        })
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            code.display()
        ))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio{}",
            cfg.image.display(),
            if cfg.snapshot { ",snapshot=on" } else { "" }
        ))
        .args(cfg.drives.iter().flat_map(|d| {
            [
                "-drive".to_string(),
                format!("file={},format=raw,if=virtio,readonly=on", d.display()),
            ]
        }))
        .args(cfg.credentials.iter().flat_map(Credential::args))
        .args(["-device", "virtio-rng-pci", "-netdev"])
        .arg(netdev(&cfg.forwards))
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .args(["-device", "i6300esb", "-action", "watchdog=reset"]);
    Ok((c, accel))
}

/// `pak qemu IMAGE`: boots interactively until the machine powers off.
pub fn run_interactive(cfg: &VmConfig, fw: &FirmwareMode) -> Result<()> {
    let (mut c, accel) = command_with(cfg, fw)?;
    eprintln!(
        "booting {} under QEMU ({}{}); Ctrl-a x quits",
        cfg.image.display(),
        accel.name(),
        match fw {
            FirmwareMode::Standard => "",
            FirmwareMode::SecureBoot { .. } => ", Secure Boot",
        }
    );
    let start = Instant::now();
    let status = c.status().context("cannot start QEMU")?;
    if !status.success() {
        bail!(
            "QEMU exited with {status} after {:.0}s",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Credential, Forward, netdev};

    #[test]
    fn credentials_become_smbios_strings_and_fw_cfg_files() {
        let c = Credential::smbios("system.hostname=web,1").unwrap();
        assert_eq!(
            c.args(),
            [
                "-smbios".to_string(),
                "type=11,value=io.systemd.credential:system.hostname=web,,1".to_string()
            ]
        );
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("seed.toml");
        std::fs::write(&f, "hostname = \"x\"\n").unwrap();
        let c = Credential::fw_cfg(&format!("pak.seed={}", f.display())).unwrap();
        assert_eq!(
            c.args()[1],
            format!(
                "name=opt/io.systemd.credentials/pak.seed,file={}",
                f.display()
            )
        );
        for (r, want) in [
            (Credential::smbios("novalue"), "NAME=VALUE"),
            (Credential::smbios("a/b=c"), "credential name"),
            (Credential::smbios("a=b\nc"), "--credential-file"),
            (Credential::fw_cfg("pak.seed=/nonexistent"), "not a file"),
            (
                Credential::fw_cfg(&format!("{}={}", "n".repeat(40), f.display())),
                "55 bytes",
            ),
        ] {
            let e = r.unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn forwards_parse_and_stay_on_loopback() {
        let f: Forward = "8080:80".parse().unwrap();
        assert_eq!(
            f,
            Forward {
                host: 8080,
                guest: 80
            }
        );
        assert_eq!(netdev(&[]), "user,id=net0");
        assert_eq!(
            netdev(&[f, "2222:22".parse().unwrap()]),
            "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:127.0.0.1:2222-:22"
        );
        for bad in ["80", "0:80", "80:0", "a:b", "70000:80", "8080:80:1", ""] {
            let err = bad.parse::<Forward>().unwrap_err().to_string();
            assert!(err.contains("HOST:GUEST"), "{bad}: {err}");
        }
    }
}
