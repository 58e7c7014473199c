//! Per-machine provisioning at first boot: one image, many machines.
//!
//! The image is the same on every machine; what differs (host name, who
//! may log in with which SSH key, static addresses, a few files) comes from
//! a small provisioning source the machine is given, through the channels
//! clouds and hypervisors already use:
//!
//! - a **seed volume**: a block device whose FAT file system is labelled
//!   `cidata` (NoCloud's name) or `pak-seed`, holding NoCloud's `meta-data`
//!   (`instance-id`, `local-hostname`), optionally a `#cloud-config`
//!   `user-data` (only `hostname` and `ssh_authorized_keys` are applied), and
//!   pak's own `pak-seed.toml` for everything else;
//! - **credentials** in systemd's `io.systemd.credential` convention, from
//!   QEMU's fw_cfg (`opt/io.systemd.credentials/NAME`) or SMBIOS type 11
//!   strings (`io.systemd.credential:NAME=VALUE`): `pak.seed` carries a
//!   whole `pak-seed.toml`; `system.hostname` and
//!   `ssh.authorized_keys.USER` mean what they mean to systemd, so a
//!   machine definition written for a systemd image works here too.
//!
//! The volume is read with pak's own FAT reader straight from the block
//! device, so no file system module (vfat, nls_*) has to be loaded and
//! nothing is mounted. Sources are applied in that order (volume, fw_cfg,
//! SMBIOS), a later one replacing what an earlier one set.
//!
//! Under systemd, PID 1 reads the credentials itself (SMBIOS, and fw_cfg
//! when its driver was loaded before systemd started) into
//! `/run/credentials/@system`, and provisioning takes them from there (or
//! from `$CREDENTIALS_DIRECTORY`, when a unit imports them), reading only
//! fw_cfg itself too (see [`find_sources`]); a seed's
//! `[network]` becomes systemd-networkd files in `/etc/systemd/network`,
//! written before networkd starts, instead of busybox's network script.
//!
//! Everything is parsed and checked before anything is written, so a bad
//! seed applies nothing and says which file and key are wrong; the boot goes
//! on. What was applied is recorded in `/var/lib/pak/provision/record.toml`,
//! on the data partition: provisioning happens once per data partition,
//! and `pak system status` shows it.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::spec::network::Network;
use crate::spec::pakfile::{FileSpec, parse_mode};

/// Where provisioning keeps what it made, on the data partition.
pub const DIR: &str = "var/lib/pak/provision";
/// What was applied, and from where.
pub const RECORD: &str = "var/lib/pak/provision/record.toml";
/// One file per user, OpenSSH's authorized_keys format; the image's sshd
/// reads it besides the Pakfile's keys.
pub const AUTHORIZED_KEYS: &str = "var/lib/pak/provision/authorized_keys";
/// The provisioned `[network]`, rendered like the image's own
/// `/usr/lib/pak/network`, which runs this one instead when it exists.
pub const NETWORK: &str = "var/lib/pak/provision/network";

/// File system labels of a seed volume (compared without case: FAT keeps
/// labels in upper case).
pub const SEED_LABELS: [&str; 2] = ["cidata", "pak-seed"];
/// pak's seed file on a volume, and the credential carrying the same text.
pub const SEED_FILE: &str = "pak-seed.toml";
pub const CRED_SEED: &str = "pak.seed";
/// systemd's credential names, honoured with systemd's meaning.
pub const CRED_HOSTNAME: &str = "system.hostname";
pub const CRED_KEYS_PREFIX: &str = "ssh.authorized_keys.";

const FW_CFG: &str = "/sys/firmware/qemu_fw_cfg";
const FW_CFG_CREDENTIALS: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials";
const FW_CFG_DEVICE: &str = "/sys/bus/acpi/devices/QEMU0002:00";
const DMI_ENTRIES: &str = "/sys/firmware/dmi/entries";
/// Exists while systemd is the init (sd_booted(3)).
const SYSTEMD_RUNTIME: &str = "run/systemd/system";
/// The credentials systemd (PID 1) was given, from SMBIOS and fw_cfg.
const SYSTEMD_CREDENTIALS: &str = "/run/credentials/@system";

/// `pak-seed.toml`: what one machine gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Seed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Keys for users the image has; they may log in with them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<String, SeedUser>,
    /// Exactly the Pakfile's `[network]`; replaces the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Files under /etc, /var or /home, as the Pakfile's `[files]` (text,
    /// or `{ content, mode, uid, gid }`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SeedUser {
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

/// One provisioning source, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// What it is and where, with the parts it held, for messages and the
    /// record: `seed volume /dev/vdb (PAK-SEED): meta-data, pak-seed.toml`.
    pub origin: String,
    pub instance_id: Option<String>,
    pub seed: Seed,
}

/// What was applied and from where: `/var/lib/pak/provision/record.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Record {
    pub sources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// User → how many keys were installed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ssh_keys: BTreeMap<String, usize>,
    #[serde(default)]
    pub network: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

const RECORD_HEADER: &str = "# Written by `pak system provision`: what this machine's provisioning\n# sources gave it. Provisioning happens once per data partition; remove\n# this file (or run `pak system provision --again`) to apply them again.\n";

/// What [`provision`] did.
#[derive(Debug)]
pub enum Outcome {
    Applied(Record),
    /// A record exists: this data partition was provisioned before.
    AlreadyDone(Record),
    /// No seed volume and no credentials.
    NoSource,
}

// ---------------------------------------------------------------- parsing

impl Seed {
    /// Parses and checks a `pak-seed.toml`; errors name `what` (the file
    /// and where it came from) and the key.
    pub fn parse(text: &str, what: &str) -> Result<Seed> {
        let seed: Seed = toml::from_str(text).with_context(|| format!("{what} is not valid"))?;
        seed.check().with_context(|| what.to_string())?;
        Ok(seed)
    }

    fn check(&self) -> Result<()> {
        if let Some(h) = &self.hostname {
            check_hostname(h).context("hostname")?;
        }
        for (name, u) in &self.users {
            if !valid_user_name(name) {
                bail!("[users.{name:?}]: not a user name (lower-case letters, digits, `_`, `-`)");
            }
            for (i, k) in u.ssh_authorized_keys.iter().enumerate() {
                crate::spec::pakfile::check_ssh_key(k)
                    .with_context(|| format!("[users.{name}] ssh-authorized-keys[{i}]"))?;
            }
        }
        if let Some(n) = &self.network {
            n.validate()?;
        }
        for (path, spec) in &self.files {
            check_file_path(path).with_context(|| format!("[files] {path:?}"))?;
            file_bytes(spec).with_context(|| format!("[files] {path:?}"))?;
        }
        Ok(())
    }

    /// `later` on top of `self`: what it sets replaces.
    fn merge(&mut self, later: Seed) {
        if later.hostname.is_some() {
            self.hostname = later.hostname;
        }
        self.users.extend(later.users);
        if later.network.is_some() {
            self.network = later.network;
        }
        self.files.extend(later.files);
    }
}

fn check_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !ok {
        bail!(
            "{h:?} is not a host name: letters, digits and `-`, in dot-separated labels of at most 63, like web-1 or web-1.example.com"
        );
    }
    Ok(())
}

fn valid_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
        && name.len() <= 32
}

/// A seed may write under /etc, /var and /home, but not over what
/// provisioning itself keeps there.
fn check_file_path(path: &str) -> Result<()> {
    let p = Path::new(path);
    let normal = p.is_absolute()
        && p.components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
        && !path.ends_with('/')
        && !path.contains("//");
    if !normal {
        bail!("not an absolute path without `.`, `..` or `//`, like /etc/motd");
    }
    let top = p.components().nth(1).and_then(|c| c.as_os_str().to_str());
    if !matches!(top, Some("etc" | "var" | "home")) || p.components().count() < 3 {
        bail!(
            "a seed writes files under /etc, /var or /home only (the rest of the system is the read-only image)"
        );
    }
    if p.starts_with(Path::new("/").join(DIR)) {
        bail!("/{DIR} is where provisioning keeps its own files");
    }
    Ok(())
}

/// A [files] entry's bytes, mode, uid and gid.
fn file_bytes(spec: &FileSpec) -> Result<(Vec<u8>, u32, u32, u32)> {
    match spec {
        FileSpec::Text(t) => Ok((t.clone().into_bytes(), 0o644, 0, 0)),
        FileSpec::Full(e) => {
            if e.source.is_some() {
                bail!(
                    "`source` names a file beside a Pakfile; a seed carries its files inline: use `content`"
                );
            }
            let content = e
                .content
                .clone()
                .context("has no `content`: give the file's text")?;
            let mode = e
                .mode
                .as_deref()
                .map(parse_mode)
                .transpose()?
                .unwrap_or(0o644);
            Ok((
                content.into_bytes(),
                mode,
                e.uid.unwrap_or(0),
                e.gid.unwrap_or(0),
            ))
        }
    }
}

/// NoCloud's `meta-data`: YAML, of which pak reads the two top-level
/// scalars that matter (`instance-id`, `local-hostname`); JSON, which
/// NoCloud also allows, is read too.
fn meta_data(text: &str, what: &str) -> Result<(Option<String>, Option<String>)> {
    if text.trim_start().starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{what} is not valid JSON"))?;
        let get = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
        return Ok((get("instance-id"), get("local-hostname")));
    }
    let (mut id, mut host) = (None, None);
    for line in text.lines() {
        if line.starts_with([' ', '\t', '#', '-']) || line.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            bail!("{what}: {line:?} is not `key: value`");
        };
        let v = unquote(v.trim());
        match k.trim() {
            "instance-id" => id = Some(v),
            "local-hostname" | "hostname" => host = Some(v),
            _ => {}
        }
    }
    Ok((id, host))
}

fn unquote(v: &str) -> String {
    let v = v.split(" #").next().unwrap_or(v).trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    v.to_string()
}

/// The `#cloud-config` subset pak applies: `hostname` and the top-level
/// `ssh_authorized_keys` (which cloud-init gives the default user; here,
/// root). Other keys are listed so the console says they were not applied.
fn cloud_config(text: &str, what: &str) -> Result<(Seed, Vec<String>)> {
    let mut seed = Seed::default();
    let mut ignored = Vec::new();
    let mut in_keys = false;
    let mut keys = Vec::new();
    for line in text.lines().skip(1) {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t', '-']) {
            if in_keys {
                let item = line.trim_start();
                let Some(k) = item.strip_prefix('-') else {
                    bail!("{what} ssh_authorized_keys: {line:?} is not a `- key` list item");
                };
                keys.push(unquote(k.trim()));
            }
            continue;
        }
        in_keys = false;
        let Some((k, v)) = line.split_once(':') else {
            bail!("{what}: {line:?} is not `key: value`");
        };
        match k.trim() {
            "hostname" => seed.hostname = Some(unquote(v.trim())),
            "ssh_authorized_keys" if v.trim().is_empty() => in_keys = true,
            "ssh_authorized_keys" => bail!(
                "{what} ssh_authorized_keys: write the keys as a list, one `- ssh-ed25519 AAAA...` per line"
            ),
            other => ignored.push(other.to_string()),
        }
    }
    if !keys.is_empty() {
        seed.users.insert(
            "root".into(),
            SeedUser {
                ssh_authorized_keys: keys,
            },
        );
    }
    seed.check().with_context(|| what.to_string())?;
    Ok((seed, ignored))
}

/// A seed's files (from a volume, or a directory in tests): `read` gives a
/// file's bytes, or `None` when it is not there.
pub fn from_files(
    origin: &str,
    mut read: impl FnMut(&str) -> Result<Option<Vec<u8>>>,
) -> Result<Source> {
    let mut parts = Vec::new();
    let mut seed = Seed::default();
    let mut instance_id = None;
    let text = |name: &str, bytes: Vec<u8>| {
        String::from_utf8(bytes).with_context(|| format!("{name} on {origin} is not UTF-8 text"))
    };
    if let Some(b) = read("meta-data")? {
        let what = format!("meta-data on {origin}");
        let (id, host) = meta_data(&text("meta-data", b)?, &what)?;
        if let Some(h) = &host {
            check_hostname(h).with_context(|| format!("{what}: local-hostname"))?;
        }
        instance_id = id;
        seed.hostname = host;
        parts.push("meta-data".to_string());
    }
    if let Some(b) = read("user-data")? {
        let t = text("user-data", b)?;
        if t.starts_with("#cloud-config") {
            let what = format!("user-data on {origin}");
            let (s, ignored) = cloud_config(&t, &what)?;
            if !ignored.is_empty() {
                eprintln!(
                    "pak: provision: {what}: not applied (pak applies hostname and ssh_authorized_keys only): {}",
                    ignored.join(", ")
                );
            }
            seed.merge(s);
            parts.push("user-data".to_string());
        } else if !t.trim().is_empty() {
            eprintln!(
                "pak: provision: user-data on {origin} is not #cloud-config; pak does not run scripts, so it is ignored"
            );
        }
    }
    if let Some(b) = read(SEED_FILE)? {
        let what = format!("{SEED_FILE} on {origin}");
        seed.merge(Seed::parse(&text(SEED_FILE, b)?, &what)?);
        parts.push(SEED_FILE.to_string());
    }
    Ok(Source {
        origin: format!("{origin}: {}", parts.join(", ")),
        instance_id,
        seed,
    })
}

/// Credentials (name → value) from one channel; `None` when none of them
/// is pak's or systemd's provisioning credentials.
pub fn from_credentials(
    channel: &str,
    creds: &BTreeMap<String, Vec<u8>>,
) -> Result<Option<Source>> {
    let mut seed = Seed::default();
    let mut used = Vec::new();
    let text = |name: &str, bytes: &[u8]| {
        String::from_utf8(bytes.to_vec())
            .with_context(|| format!("credential {name} ({channel}) is not UTF-8 text"))
    };
    if let Some(b) = creds.get(CRED_SEED) {
        let what = format!("credential {CRED_SEED} ({channel})");
        seed = Seed::parse(&text(CRED_SEED, b)?, &what)?;
        used.push(CRED_SEED.to_string());
    }
    if let Some(b) = creds.get(CRED_HOSTNAME) {
        let h = text(CRED_HOSTNAME, b)?.trim().to_string();
        check_hostname(&h).with_context(|| format!("credential {CRED_HOSTNAME} ({channel})"))?;
        seed.hostname = Some(h);
        used.push(CRED_HOSTNAME.to_string());
    }
    for (name, b) in creds {
        let Some(user) = name.strip_prefix(CRED_KEYS_PREFIX) else {
            continue;
        };
        let what = format!("credential {name} ({channel})");
        if !valid_user_name(user) {
            bail!("{what}: {user:?} is not a user name");
        }
        let keys: Vec<String> = text(name, b)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        for (i, k) in keys.iter().enumerate() {
            crate::spec::pakfile::check_ssh_key(k)
                .with_context(|| format!("{what}, line {}", i + 1))?;
        }
        seed.users.insert(
            user.to_string(),
            SeedUser {
                ssh_authorized_keys: keys,
            },
        );
        used.push(name.clone());
    }
    if used.is_empty() {
        return Ok(None);
    }
    Ok(Some(Source {
        origin: format!("{channel}: {}", used.join(", ")),
        instance_id: None,
        seed,
    }))
}

/// The `io.systemd.credential` strings of SMBIOS type 11 structures
/// (`/sys/firmware/dmi/entries/11-*/raw`): the formatted area, then the
/// strings, each NUL-terminated, the set ending in a second NUL.
pub fn smbios_credentials(raw: &[u8], into: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
    if raw.len() < 4 || raw[0] != 11 {
        bail!("not an SMBIOS type 11 structure");
    }
    let formatted = raw[1] as usize;
    let strings = raw.get(formatted..).unwrap_or_default();
    for s in strings.split(|b| *b == 0).take_while(|s| !s.is_empty()) {
        let s = String::from_utf8_lossy(s);
        let (name, value) = if let Some(rest) = s.strip_prefix("io.systemd.credential:") {
            match rest.split_once('=') {
                Some((n, v)) => (n.to_string(), v.as_bytes().to_vec()),
                None => continue,
            }
        } else if let Some(rest) = s.strip_prefix("io.systemd.credential.binary:") {
            let Some((n, v)) = rest.split_once('=') else {
                continue;
            };
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .with_context(|| format!("SMBIOS credential {n} is not valid base64"))?;
            (n.to_string(), bytes)
        } else {
            continue;
        };
        into.insert(name, value);
    }
    Ok(())
}

// ---------------------------------------------------------------- finding

/// The label of a FAT (or ISO 9660) file system starting at offset 0 of
/// `dev`, and whether pak can read it (FAT32).
fn volume_label(dev: &mut (impl Read + Seek)) -> Option<(String, &'static str)> {
    let mut bs = [0u8; 512];
    dev.read_exact(&mut bs).ok()?;
    // Padded with spaces by the specifications, with NULs by some tools.
    let label = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string()
    };
    if bs[510..512] == [0x55, 0xAA] {
        if &bs[82..87] == b"FAT32" {
            return Some((label(&bs[71..82]), "FAT32"));
        }
        if &bs[54..58] == b"FAT1" {
            return Some((label(&bs[43..54]), "FAT12/16"));
        }
    }
    let mut pvd = [0u8; 72];
    dev.seek(SeekFrom::Start(0x8000)).ok()?;
    dev.read_exact(&mut pvd).ok()?;
    if &pvd[1..6] == b"CD001" {
        return Some((label(&pvd[40..72]), "ISO 9660"));
    }
    None
}

/// Seed volumes: every block device (disks and partitions) whose file
/// system carries one of [`SEED_LABELS`].
fn seed_volumes() -> Result<Vec<Source>> {
    let mut names: Vec<String> = match std::fs::read_dir("/sys/class/block") {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => return Ok(Vec::new()),
    };
    // Sorted, so two seed volumes are always applied in the same order.
    names.sort();
    let mut out = Vec::new();
    for name in names {
        if name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram") {
            continue;
        }
        let dev = PathBuf::from("/dev").join(&name);
        let Ok(mut f) = std::fs::File::open(&dev) else {
            continue;
        };
        let Some((label, fs)) = volume_label(&mut f) else {
            continue;
        };
        if !SEED_LABELS.iter().any(|l| l.eq_ignore_ascii_case(&label)) {
            continue;
        }
        let origin = format!("seed volume {} ({label})", dev.display());
        if fs != "FAT32" {
            bail!(
                "{origin} is {fs}; pak reads FAT32 seed volumes (make one with `pak qemu --seed DIR`, or `mkfs.vfat -F 32 -n {label}` on 40 MiB or more)"
            );
        }
        let mut vol = crate::disk::fat::Volume::open(f, 0)
            .with_context(|| format!("{origin} cannot be read"))?;
        out.push(from_files(&origin, |file| match vol.find(file)? {
            Some(e) if !e.is_dir => vol.read(file).map(Some),
            _ => Ok(None),
        })?);
    }
    Ok(out)
}

/// Loads a kernel module and the modules it depends on, as `modules.dep`
/// (which pak writes into every image) lists them. pak loads it itself
/// because the image's `modprobe` may be kmod's, which finds modules by
/// name only in `modules.dep.bin`, an index pak does not write.
fn load_module(name: &str) -> Result<()> {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let dir = Path::new("/lib/modules").join(release);
    let dep = std::fs::read_to_string(dir.join("modules.dep"))
        .with_context(|| format!("cannot read {}", dir.join("modules.dep").display()))?;
    let file = format!("/{name}.ko:");
    let Some(line) = dep.lines().find(|l| {
        l.split(' ')
            .next()
            .is_some_and(|m| m.ends_with(&file) || m == &file[1..])
    }) else {
        bail!("the kernel has no module {name} in {}", dir.display());
    };
    let (module, deps) = line.split_once(':').unwrap_or((line, ""));
    // modules.dep lists the closest dependency first; load the farthest first.
    let mut order: Vec<&str> = deps.split_whitespace().rev().collect();
    order.push(module);
    for m in order {
        let path = dir.join(m);
        pak_boot::init::load_module_file(&path)
            .with_context(|| format!("cannot load {}", path.display()))?;
    }
    Ok(())
}

/// fw_cfg's credentials. The driver is a module in Debian's kernels that
/// nothing has loaded this early in the boot; it is loaded only where
/// QEMU's fw_cfg device is (ACPI id QEMU0002), so other machines pay
/// nothing.
fn fw_cfg_credentials() -> Result<BTreeMap<String, Vec<u8>>> {
    if !Path::new(FW_CFG).exists() && Path::new(FW_CFG_DEVICE).exists() {
        load_module("qemu_fw_cfg").context("QEMU's fw_cfg device is there, but its driver")?;
    }
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(FW_CFG_CREDENTIALS) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let raw = e.path().join("raw");
        let bytes =
            std::fs::read(&raw).with_context(|| format!("cannot read {}", raw.display()))?;
        out.insert(name, bytes);
    }
    Ok(out)
}

fn smbios_credentials_here() -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(DMI_ENTRIES) else {
        return Ok(out);
    };
    let mut entries: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("11-"))
        .map(|e| e.path())
        .collect();
    entries.sort();
    for e in entries {
        let raw = e.join("raw");
        let bytes =
            std::fs::read(&raw).with_context(|| format!("cannot read {}", raw.display()))?;
        smbios_credentials(&bytes, &mut out).with_context(|| raw.display().to_string())?;
    }
    Ok(out)
}

/// Whether systemd is the running init: its own test (sd_booted(3)).
fn systemd_runs(root: &Path) -> bool {
    root.join(SYSTEMD_RUNTIME).is_dir()
}

/// The credentials systemd passed on: a service's own directory when its
/// unit imports them ($CREDENTIALS_DIRECTORY), else the system's, which
/// PID 1 read from SMBIOS and fw_cfg when it started.
fn systemd_credentials() -> Result<BTreeMap<String, Vec<u8>>> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SYSTEMD_CREDENTIALS));
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let path = e.path();
        if !path.is_file() {
            continue;
        }
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        out.insert(e.file_name().to_string_lossy().into_owned(), bytes);
    }
    Ok(out)
}

/// Every source this machine has, in the order they apply.
///
/// Under systemd the credentials are systemd's: PID 1 reads SMBIOS and
/// fw_cfg itself, and a machine definition that gives a systemd image a
/// credential means what systemd makes of it. PID 1 reads fw_cfg only
/// when its driver was loaded before it started, though (a module nothing
/// loads that early), so pak reads fw_cfg as well, first: what systemd
/// has wins, as SMBIOS wins over fw_cfg under busybox.
pub fn find_sources() -> Result<Vec<Source>> {
    let mut out = seed_volumes()?;
    if let Some(s) = from_credentials("fw_cfg credentials", &fw_cfg_credentials()?)? {
        out.push(s);
    }
    if systemd_runs(Path::new("/")) {
        if let Some(s) = from_credentials("systemd credentials", &systemd_credentials()?)? {
            out.push(s);
        }
        return Ok(out);
    }
    if let Some(s) = from_credentials("SMBIOS credentials", &smbios_credentials_here()?)? {
        out.push(s);
    }
    Ok(out)
}

// ---------------------------------------------------------------- applying

/// The users of the root's `/etc/passwd`.
fn users_of(root: &Path) -> Result<Vec<String>> {
    let path = root.join("etc/passwd");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(String::from)
        .collect())
}

/// Checks what needs the machine itself: the users named exist.
fn check_against(root: &Path, s: &Source) -> Result<()> {
    let users = users_of(root)?;
    for name in s.seed.users.keys() {
        if !users.contains(name) {
            bail!(
                "{}: [users.{name}]: this image has no user {name:?} (it has {}); add the user to the image's Pakfile, or give the keys to a user it has",
                s.origin,
                users.join(", ")
            );
        }
    }
    Ok(())
}

/// Refuses to write through a symlink: a seed's path must not be turned
/// into a write elsewhere by a link already on the machine.
fn no_symlink_below(root: &Path, rel: &Path) -> Result<()> {
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "{} is a symbolic link; a seed does not write through links",
                at.display()
            );
        }
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = path.with_extension("pak-provision.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
            .with_context(|| format!("cannot give {} to {uid}:{gid}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Applies `sources` to the system under `root` (`/` on a machine), once:
/// nothing is done when a record exists, unless `again`.
pub fn apply(root: &Path, sources: &[Source], again: bool) -> Result<Outcome> {
    let record_path = root.join(RECORD);
    if !again && let Some(r) = read_record(root)? {
        return Ok(Outcome::AlreadyDone(r));
    }
    if sources.is_empty() {
        return Ok(Outcome::NoSource);
    }
    for s in sources {
        check_against(root, s)?;
    }
    let mut seed = Seed::default();
    let mut record = Record::default();
    for s in sources {
        seed.merge(s.seed.clone());
        record.sources.push(s.origin.clone());
        if s.instance_id.is_some() {
            record.instance_id = s.instance_id.clone();
        }
    }
    if let Some(h) = &seed.hostname {
        write_file(
            &root.join("etc/hostname"),
            format!("{h}\n").as_bytes(),
            0o644,
            0,
            0,
        )?;
        record.hostname = Some(h.clone());
    }
    let keys_dir = root.join(AUTHORIZED_KEYS);
    if again && keys_dir.exists() {
        // Keys given by an earlier run and not by this one must not linger.
        std::fs::remove_dir_all(&keys_dir)
            .with_context(|| format!("cannot clear {}", keys_dir.display()))?;
    }
    for (name, u) in &seed.users {
        let mut text = format!(
            "# Written by `pak system provision` from {}.\n",
            sources
                .iter()
                .rev()
                .find(|s| s.seed.users.contains_key(name))
                .map(|s| s.origin.as_str())
                .unwrap_or("a seed")
        );
        for k in &u.ssh_authorized_keys {
            text.push_str(k.trim());
            text.push('\n');
        }
        write_file(&keys_dir.join(name), text.as_bytes(), 0o644, 0, 0)?;
        record
            .ssh_keys
            .insert(name.clone(), u.ssh_authorized_keys.len());
    }
    let network = root.join(NETWORK);
    let networkd = root.join(crate::image::systemd::NETWORK_DIR.trim_start_matches('/'));
    if again {
        if network.exists() {
            std::fs::remove_file(&network)?;
        }
        for name in seed_network_files_in(&networkd)? {
            let path = networkd.join(name);
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    if let Some(n) = &seed.network {
        // Under systemd, networkd's own files (on /etc, which keeps them),
        // written before systemd-networkd starts; busybox's network script
        // runs the script.
        if systemd_runs(root) {
            for (name, body) in crate::image::systemd::seed_network_files(n) {
                write_file(&networkd.join(name), body.as_bytes(), 0o644, 0, 0)?;
            }
        } else {
            let script = crate::image::network::provisioned_script(n);
            write_file(&network, script.as_bytes(), 0o755, 0, 0)?;
        }
        record.network = true;
    }
    for (path, spec) in &seed.files {
        let rel = Path::new(path.trim_start_matches('/'));
        no_symlink_below(root, rel)?;
        let (bytes, mode, uid, gid) = file_bytes(spec)?;
        write_file(&root.join(rel), &bytes, mode, uid, gid)?;
        record.files.push(path.clone());
    }
    let body = toml::to_string(&record).context("cannot write the provisioning record")?;
    write_file(
        &record_path,
        format!("{RECORD_HEADER}{body}").as_bytes(),
        0o644,
        0,
        0,
    )?;
    Ok(Outcome::Applied(record))
}

/// The networkd files an earlier provisioning wrote into `dir`.
fn seed_network_files_in(dir: &Path) -> Result<Vec<String>> {
    use crate::image::systemd::{SEED_NETWORK_DHCP, SEED_NETWORK_PREFIX};
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(SEED_NETWORK_PREFIX) || n == SEED_NETWORK_DHCP)
        .collect();
    out.sort();
    Ok(out)
}

/// The record of an earlier provisioning; `None` when there was none.
pub fn read_record(root: &Path) -> Result<Option<Record>> {
    let path = root.join(RECORD);
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            Ok(Some(toml::from_str(&t).with_context(|| {
                format!("{} is corrupt", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// `pak system provision` on the running machine: find, check, apply,
/// and set the kernel's host name at once (rc.sysinit sets it from
/// /etc/hostname right after; a run by hand should not wait for a reboot).
pub fn provision_here(again: bool) -> Result<Outcome> {
    let root = Path::new("/");
    if !again && let Some(r) = read_record(root)? {
        return Ok(Outcome::AlreadyDone(r));
    }
    let sources = find_sources()?;
    let out = apply(root, &sources, again)?;
    if let Outcome::Applied(r) = &out
        && let Some(h) = &r.hostname
    {
        rustix::system::sethostname(h.as_bytes())
            .with_context(|| format!("cannot set the host name to {h}"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk1 admin@example";

    fn dir_source(files: &[(&str, &str)]) -> Result<Source> {
        let map: BTreeMap<String, Vec<u8>> = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        from_files("seed volume /dev/vdb (PAK-SEED)", |f| {
            Ok(map.get(f).cloned())
        })
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn a_nocloud_volume_with_a_pak_seed() {
        let s = dir_source(&[
            ("meta-data", "instance-id: iid-01\nlocal-hostname: 'from-meta'\n"),
            (
                SEED_FILE,
                &format!(
                    "hostname = \"alpha\"\n[users.root]\nssh-authorized-keys = [\"{KEY}\"]\n[network.interfaces.eth0]\naddress = [\"192.0.2.10/24\"]\ngateway = \"192.0.2.1\"\n[files]\n\"/etc/motd\" = \"hi\\n\"\n\"/home/x/secret\" = {{ content = \"s\", mode = \"0600\", uid = 1000 }}\n"
                ),
            ),
        ])
        .unwrap();
        assert_eq!(s.instance_id.as_deref(), Some("iid-01"));
        assert_eq!(
            s.seed.hostname.as_deref(),
            Some("alpha"),
            "pak-seed.toml wins"
        );
        assert_eq!(
            s.origin,
            "seed volume /dev/vdb (PAK-SEED): meta-data, pak-seed.toml"
        );
        assert_eq!(s.seed.users["root"].ssh_authorized_keys, [KEY]);
        assert_eq!(s.seed.files.len(), 2);
        let only_meta = dir_source(&[(
            "meta-data",
            "{\"instance-id\": \"i\", \"local-hostname\": \"j\"}",
        )])
        .unwrap();
        assert_eq!(only_meta.seed.hostname.as_deref(), Some("j"));
    }

    #[test]
    fn malformed_seeds_name_the_file_and_the_key() {
        for (files, want) in [
            (
                vec![(SEED_FILE, "hostnme = \"x\"\n")],
                "pak-seed.toml on seed volume /dev/vdb (PAK-SEED) is not valid",
            ),
            (vec![(SEED_FILE, "hostnme = \"x\"\n")], "hostnme"),
            (
                vec![(SEED_FILE, "hostname = \"no_underscores\"\n")],
                "hostname: \"no_underscores\" is not a host name",
            ),
            (
                vec![(
                    SEED_FILE,
                    "[users.root]\nssh-authorized-keys = [\"hello\"]\n",
                )],
                "[users.root] ssh-authorized-keys[0]",
            ),
            (
                vec![(
                    SEED_FILE,
                    "[network.interfaces.eth0]\naddress = [\"192.0.2.10\"]\n",
                )],
                "[network.interfaces.eth0] address",
            ),
            (
                vec![(SEED_FILE, "[files]\n\"/usr/bin/x\" = \"y\"\n")],
                "[files] \"/usr/bin/x\": a seed writes files under /etc, /var or /home only",
            ),
            (
                vec![(SEED_FILE, "[files]\n\"/etc/../usr/x\" = \"y\"\n")],
                "without `.`, `..`",
            ),
            (
                vec![(
                    SEED_FILE,
                    "[files]\n\"/var/lib/pak/provision/record.toml\" = \"y\"\n",
                )],
                "provisioning keeps",
            ),
            (
                vec![(SEED_FILE, "[files]\n\"/etc/x\" = { source = \"x\" }\n")],
                "use `content`",
            ),
            (
                vec![(
                    SEED_FILE,
                    "[files]\n\"/etc/x\" = { content = \"x\", mode = \"99\" }\n",
                )],
                "octal",
            ),
            (
                vec![("meta-data", "local-hostname: -bad-\n")],
                "meta-data on seed volume /dev/vdb (PAK-SEED): local-hostname",
            ),
            (
                vec![(
                    "user-data",
                    "#cloud-config\nssh_authorized_keys:\n  - nope\n",
                )],
                "user-data on seed volume",
            ),
        ] {
            let e = err(dir_source(&files));
            assert!(e.contains(want), "{files:?}: {e}");
        }
    }

    #[test]
    fn cloud_config_subset() {
        let s = dir_source(&[(
            "user-data",
            &format!("#cloud-config\nhostname: gamma\nssh_authorized_keys:\n  - \"{KEY}\"\npackages:\n  - nginx\n"),
        )])
        .unwrap();
        assert_eq!(s.seed.hostname.as_deref(), Some("gamma"));
        assert_eq!(s.seed.users["root"].ssh_authorized_keys, [KEY]);
        let script = dir_source(&[("user-data", "#!/bin/sh\necho hi\n")]).unwrap();
        assert_eq!(script.seed, Seed::default(), "scripts are not run");
    }

    #[test]
    fn credentials_in_systemds_convention() {
        let mut raw = vec![11u8, 5, 0, 0, 2];
        raw.extend(b"io.systemd.credential:system.hostname=beta\0");
        raw.extend(format!("io.systemd.credential:ssh.authorized_keys.root={KEY}\0").as_bytes());
        raw.extend(b"something else\0\0");
        let mut creds = BTreeMap::new();
        smbios_credentials(&raw, &mut creds).unwrap();
        assert_eq!(creds["system.hostname"], b"beta");
        let s = from_credentials("SMBIOS credentials", &creds)
            .unwrap()
            .unwrap();
        assert_eq!(s.seed.hostname.as_deref(), Some("beta"));
        assert_eq!(s.seed.users["root"].ssh_authorized_keys, [KEY]);
        assert_eq!(
            s.origin,
            "SMBIOS credentials: system.hostname, ssh.authorized_keys.root"
        );

        let mut creds = BTreeMap::new();
        creds.insert(CRED_SEED.to_string(), b"hostname = \"delta\"\n".to_vec());
        creds.insert("unrelated".to_string(), b"x".to_vec());
        let s = from_credentials("fw_cfg credentials", &creds)
            .unwrap()
            .unwrap();
        assert_eq!(s.seed.hostname.as_deref(), Some("delta"));
        creds.insert(CRED_SEED.to_string(), b"hostname = 1\n".to_vec());
        let e = err(from_credentials("fw_cfg credentials", &creds));
        assert!(
            e.contains("credential pak.seed (fw_cfg credentials) is not valid"),
            "{e}"
        );
        let none: BTreeMap<String, Vec<u8>> = [("x".to_string(), vec![])].into();
        assert!(from_credentials("c", &none).unwrap().is_none());
    }

    fn machine() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nadmin:x:1000:1000:admin:/home/admin:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/hostname"), "image\n").unwrap();
        d
    }

    #[test]
    fn applies_once_and_records_what_and_from_where() {
        let m = machine();
        let vol = dir_source(&[
            ("meta-data", "instance-id: iid-7\n"),
            (
                SEED_FILE,
                &format!("hostname = \"alpha\"\n[users.admin]\nssh-authorized-keys = [\"{KEY}\"]\n[network.interfaces.eth0]\naddress = [\"192.0.2.10/24\"]\n[files]\n\"/etc/motd\" = \"welcome\\n\"\n"),
            ),
        ])
        .unwrap();
        let creds: BTreeMap<String, Vec<u8>> =
            [(CRED_HOSTNAME.to_string(), b"beta\n".to_vec())].into();
        let smbios = from_credentials("SMBIOS credentials", &creds)
            .unwrap()
            .unwrap();
        let Outcome::Applied(r) = apply(m.path(), &[vol.clone(), smbios.clone()], false).unwrap()
        else {
            panic!("not applied")
        };
        let read = |p: &str| std::fs::read_to_string(m.path().join(p)).unwrap();
        assert_eq!(read("etc/hostname"), "beta\n", "the later source wins");
        assert!(read("var/lib/pak/provision/authorized_keys/admin").contains(KEY));
        assert!(read(NETWORK).contains("192.0.2.10/24"));
        assert_eq!(read("etc/motd"), "welcome\n");
        assert_eq!(r.instance_id.as_deref(), Some("iid-7"));
        assert_eq!(r.ssh_keys["admin"], 1);
        assert!(r.network);
        assert_eq!(r.sources.len(), 2);
        let text = read(RECORD);
        assert_eq!(read_record(m.path()).unwrap().unwrap(), r);
        // Once per data partition.
        std::fs::write(m.path().join("etc/hostname"), "changed\n").unwrap();
        assert!(matches!(
            apply(m.path(), std::slice::from_ref(&vol), false).unwrap(),
            Outcome::AlreadyDone(_)
        ));
        assert_eq!(read("etc/hostname"), "changed\n");
        // The same sources give the same record, byte for byte.
        let again = machine();
        apply(again.path(), &[vol.clone(), smbios], false).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path().join(RECORD)).unwrap(),
            text
        );
        // --again replaces, and drops what the new sources do not give.
        let Outcome::Applied(r) = apply(m.path(), &[smbios_only()], true).unwrap() else {
            panic!()
        };
        assert!(!r.network && r.ssh_keys.is_empty());
        assert!(!m.path().join(NETWORK).exists());
        assert!(!m.path().join(AUTHORIZED_KEYS).join("admin").exists());
        assert!(matches!(
            apply(machine().path(), &[], false).unwrap(),
            Outcome::NoSource
        ));
    }

    #[test]
    fn under_systemd_a_seed_network_is_networkds_own_files() {
        let m = machine();
        std::fs::create_dir_all(m.path().join(SYSTEMD_RUNTIME)).unwrap();
        let vol = dir_source(&[(
            SEED_FILE,
            "[network.interfaces.eth0]\naddress = [\"192.0.2.10/24\"]\ngateway = \"192.0.2.1\"\n",
        )])
        .unwrap();
        let Outcome::Applied(r) = apply(m.path(), std::slice::from_ref(&vol), false).unwrap()
        else {
            panic!("not applied")
        };
        assert!(r.network);
        let dir = m.path().join("etc/systemd/network");
        let eth0 = std::fs::read_to_string(dir.join("40-pak-seed-eth0.network")).unwrap();
        assert!(
            eth0.contains("Name=eth0\n")
                && eth0.contains("Address=192.0.2.10/24\nGateway=192.0.2.1\n"),
            "{eth0}"
        );
        assert!(dir.join("49-pak-seed-dhcp.network").exists());
        assert!(
            !m.path().join(NETWORK).exists(),
            "no busybox script under systemd"
        );
        // Provisioned again without a network: the seed's files go, the
        // image's own (and anything else there) stay.
        std::fs::write(dir.join("50-pak-eth0.network"), "image\n").unwrap();
        apply(m.path(), &[smbios_only()], true).unwrap();
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["50-pak-eth0.network"]);
    }

    fn smbios_only() -> Source {
        let creds: BTreeMap<String, Vec<u8>> = [(CRED_HOSTNAME.to_string(), b"b".to_vec())].into();
        from_credentials("SMBIOS credentials", &creds)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn unknown_users_and_links_are_refused_before_anything_is_written() {
        let m = machine();
        let s = dir_source(&[(
            SEED_FILE,
            &format!("hostname = \"x\"\n[users.bob]\nssh-authorized-keys = [\"{KEY}\"]\n"),
        )])
        .unwrap();
        let e = err(apply(m.path(), &[s], false));
        assert!(
            e.contains("this image has no user \"bob\"") && e.contains("pak-seed.toml"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(m.path().join("etc/hostname")).unwrap(),
            "image\n"
        );
        assert!(!m.path().join(RECORD).exists());

        std::os::unix::fs::symlink("/tmp", m.path().join("home")).unwrap();
        let s = dir_source(&[(SEED_FILE, "[files]\n\"/home/x\" = \"y\"\n")]).unwrap();
        assert!(err(apply(m.path(), &[s], false)).contains("symbolic link"));
    }

    #[test]
    fn labels_of_fat_and_iso_volumes() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("seed.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(64 << 20).unwrap();
        let mut w = std::io::BufWriter::new(f);
        crate::disk::fat::write(&mut w, 0, 64 << 20, "pak-seed", &[]).unwrap();
        drop(w);
        let mut f = std::fs::File::open(&img).unwrap();
        assert_eq!(volume_label(&mut f), Some(("PAK-SEED".into(), "FAT32")));
        let mut iso = vec![0u8; 0x8000 + 2048];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        iso[0x8028..0x8028 + 6].copy_from_slice(b"cidata");
        assert_eq!(
            volume_label(&mut std::io::Cursor::new(iso)),
            Some(("cidata".into(), "ISO 9660"))
        );
    }
}
