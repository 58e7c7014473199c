//! The Pakfile: what a system (or a user environment) is made of.
//!
//! Everything here is declarative. Relative paths inside a Pakfile are
//! relative to the Pakfile's own directory, so a Pakfile means the same thing
//! whatever the caller's working directory is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::spec::profile;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pakfile {
    #[serde(default)]
    pub system: System,
    /// Package name → version requirement (`*`, `>= 1.0`, `>= 1, < 2`).
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
    #[serde(default)]
    pub repository: Vec<RepositorySpec>,
    #[serde(default)]
    pub boot: Boot,
    #[serde(default)]
    pub image: Image,
    /// Absolute path in the image → content. Configuration is files, not scripts.
    #[serde(default)]
    pub files: BTreeMap<String, FileSpec>,
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    /// Long-running programs the image's init starts and supervises.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// How the machine comes up on the network (DHCP when absent).
    #[serde(
        default,
        skip_serializing_if = "crate::spec::network::Network::is_empty"
    )]
    pub network: crate::spec::network::Network,
    /// Where the machine takes its updates from, and when (see
    /// `spec::update`): the image runs the updater as a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<crate::spec::update::Update>,
    /// Where this Pakfile was read from; relative paths resolve against it.
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_arch")]
    pub arch: String,
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Free-form version shown in `/etc/os-release`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The system's PID 1 after pak's `/init` (busybox when absent).
    #[serde(default, skip_serializing_if = "Init::is_busybox")]
    pub init: Init,
}

/// What runs as PID 1 once `/init` has switched to the root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// busybox init with pak's inittab: small and quick to boot, for
    /// appliances whose services the Pakfile spells out as commands.
    #[default]
    Busybox,
    /// Debian's systemd: packages' own units, journald, networkd.
    Systemd,
}

impl Init {
    pub fn is_busybox(&self) -> bool {
        *self == Init::Busybox
    }
}

impl Default for System {
    fn default() -> Self {
        System {
            name: default_name(),
            arch: default_arch(),
            profiles: Vec::new(),
            version: None,
            init: Init::Busybox,
        }
    }
}

fn default_name() -> String {
    "pak".into()
}
fn default_arch() -> String {
    "x86_64".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySpec {
    pub name: String,
    #[serde(default)]
    pub kind: RepoKind,
    /// For `pak` repositories: a directory (relative to the Pakfile), `file://` or `http(s)://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A `.pub` file (relative to the Pakfile) or the public key text itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For `apt` repositories: an archive snapshot's base (`http(s)://`,
    /// `file://` or a directory relative to the Pakfile) laid out like
    /// Debian's snapshot archive, `<snapshot>/<archive>/<YYYYMMDDTHHMMSSZ>/pool/...`.
    /// Asked only for a locked version the mirror no longer serves, at the
    /// lock's `archive_date`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// A copy of this repository's locked packages, as `pak vendor` writes
    /// it (a directory relative to the Pakfile, `file://` or `http(s)://`):
    /// asked first for a locked package, by its location, and trusted by
    /// the sha256 the lock pins. Like `snapshot` it says where to fetch,
    /// not what to build, so images do not record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

/// What a `[[repository]]` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoKind {
    /// A signed pak index and its packages (a directory or a URL).
    #[default]
    Pak,
    /// Debian's archive, through the building host's apt configuration.
    Apt,
}

impl RepoKind {
    /// As written in a Pakfile.
    pub fn as_str(self) -> &'static str {
        match self {
            RepoKind::Pak => "pak",
            RepoKind::Apt => "apt",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Boot attempts a new generation gets before the loader falls back.
    #[serde(default = "default_tries")]
    pub tries: u32,
    /// Boot each generation from one unified kernel image (systemd-stub,
    /// kernel, initrd and command line in one PE file) rather than a
    /// kernel and initrd the loader entry puts a command line to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uki: bool,
    /// Sign systemd-boot and the unified kernel images for UEFI Secure
    /// Boot with this key and certificate (paths relative to the
    /// Pakfile); needed at build time only.
    #[serde(
        default,
        rename = "secure-boot",
        skip_serializing_if = "Option::is_none"
    )]
    pub secure_boot: Option<SecureBootSpec>,
}

/// `[boot] secure-boot = { key = "db.key", cert = "db.crt" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureBootSpec {
    /// The RSA private key (PEM).
    pub key: String,
    /// Its X.509 certificate (PEM or DER), the one the firmware trusts.
    pub cert: String,
}

impl Default for Boot {
    fn default() -> Self {
        Boot {
            cmdline: default_cmdline(),
            tries: default_tries(),
            uki: false,
            secure_boot: None,
        }
    }
}

fn default_cmdline() -> String {
    "console=ttyS0".into()
}
fn default_tries() -> u32 {
    3
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Whole disk size, e.g. `2GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esp_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_size: Option<String>,
}

/// A file given as configuration: its text inline, or a source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FileSpec {
    Text(String),
    Full(FileEntry),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A file relative to the Pakfile's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Octal, e.g. `"0755"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct User {
    /// Absent: pak picks one from 1000 up and the lock keeps it, so the
    /// account owns the same files in every generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// A crypt(3) hash; absent means the account has no password login.
    #[serde(
        default,
        alias = "password_hash",
        skip_serializing_if = "Option::is_none"
    )]
    pub password_hash: Option<String>,
    /// OpenSSH public keys (`ssh-ed25519 AAAA... comment`) that may log in
    /// as this user; the image's sshd reads them from
    /// `/etc/ssh/authorized_keys.d/NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// `false` for an account nobody logs in to (root or a service switches
    /// to it); otherwise a user needs a key or a password hash.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub login: bool,
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The command, run in the foreground and restarted when it exits.
    /// Under systemd it becomes a unit of its own, unless `enable` says to
    /// use the package's unit instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    /// `init = "systemd"` only: enable the unit a package ships under this
    /// service's name (`nginx` → `nginx.service`, or a full unit name such
    /// as `ssh.socket`), as `systemctl enable` would. busybox init has no
    /// units and runs `exec`, so a service may carry both and work under
    /// either init. `enable = false` (alone) keeps a package's unit off
    /// even where a preset would enable it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    /// A command that exits 0 once the service is healthy; the system is
    /// marked good only when every service's check passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// The account the command runs as (root when absent): a [users] entry,
    /// or one a package creates (`postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Service {
    /// `enable = true`: a package's unit, not a command of pak's.
    pub fn uses_package_unit(&self) -> bool {
        self.enable == Some(true)
    }

    /// `enable = false`: a package's unit kept off.
    pub fn disabled(&self) -> bool {
        self.enable == Some(false)
    }
}

/// A user name as useradd accepts it (and short enough for utmp).
fn valid_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
        && name.len() <= 32
}

/// An OpenSSH public key as a `.pub` file holds it: one line, a known
/// kind, a blob. (Seeds give keys too, under the same rule.)
pub fn check_ssh_key(key: &str) -> Result<()> {
    let mut parts = key.split_whitespace();
    let (kind, blob) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let known =
        kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
    if !known || blob.len() < 16 || key.contains('\n') {
        bail!(
            "not an OpenSSH public key (`ssh-ed25519 AAAA... comment`, one line, as in a .pub file): {key:?}"
        );
    }
    Ok(())
}

fn validate_user(name: &str, u: &User) -> Result<()> {
    if !valid_user_name(name) {
        bail!(
            "[users.{name}]: {name:?} is not a valid user name; use lower-case letters, digits, `_` and `-`, starting with a letter"
        );
    }
    for (i, key) in u.ssh_authorized_keys.iter().enumerate() {
        check_ssh_key(key).with_context(|| format!("[users.{name}] ssh-authorized-keys[{i}]"))?;
    }
    if let Some(h) = &u.password_hash
        && (!h.starts_with('$') || h.contains(':') || h.contains('\n'))
    {
        bail!(
            "[users.{name}] password-hash is not a crypt(3) hash (`$y$...` or `$6$...`, as `mkpasswd` prints); never put a plain password here"
        );
    }
    if u.login && u.ssh_authorized_keys.is_empty() && u.password_hash.is_none() {
        bail!(
            "[users.{name}] has neither ssh-authorized-keys nor a password-hash, so nobody could log in as {name}: add a key, or `login = false` for an account only root and services switch to"
        );
    }
    Ok(())
}

impl Pakfile {
    /// Reads a Pakfile and the profiles it names, merged: the Pakfile's own
    /// package requirements override the profiles'.
    pub fn load(path: &Path) -> Result<Pakfile> {
        let mut pakfile = Self::load_unmerged(path)?;
        pakfile.merge_profiles()?;
        Ok(pakfile)
    }

    /// Adds what the profiles bring; the Pakfile's own entries win. Merging
    /// twice changes nothing.
    pub fn merge_profiles(&mut self) -> Result<()> {
        let merged = profile::expand(&self.system.profiles, &self.dir)?;
        for (name, req) in merged.packages {
            self.packages.entry(name).or_insert(req);
        }
        for (name, svc) in merged.services {
            self.services.entry(name).or_insert(svc);
        }
        for (path, spec) in merged.files {
            self.files.entry(path).or_insert(spec);
        }
        // [update] means a running updater, under either init.
        if self.update.is_some() {
            self.services
                .entry(crate::spec::update::SERVICE.into())
                .or_insert_with(|| Service {
                    exec: Some(crate::spec::update::EXEC.into()),
                    enable: None,
                    health: None,
                    user: None,
                });
        }
        Ok(())
    }

    /// Reads a Pakfile alone, without expanding its profiles (for editing).
    pub fn load_unmerged(path: &Path) -> Result<Pakfile> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the Pakfile {}: create one with `pak init`, or name another with --pakfile or PAKFILE",
                path.display()
            )
        })?;
        let mut pakfile = Self::parse(&text)
            .with_context(|| format!("{} is not a valid Pakfile", path.display()))?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        pakfile.dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(pakfile)
    }

    pub fn parse(text: &str) -> Result<Pakfile> {
        let pakfile: Pakfile = toml::from_str(text)?;
        pakfile.validate()?;
        Ok(pakfile)
    }

    fn validate(&self) -> Result<()> {
        self.network.validate()?;
        if let Some(u) = &self.update {
            u.validate()?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for repo in &self.repository {
            if !seen.insert(&repo.name) {
                bail!(
                    "two repositories are named {:?}; give each a unique name",
                    repo.name
                );
            }
            match repo.kind {
                RepoKind::Pak => {
                    if repo.snapshot.is_some() {
                        bail!(
                            "repository {:?} has a `snapshot`, which only applies to kind = \"apt\" repositories (a pak repository keeps its own packages); remove it",
                            repo.name
                        );
                    }
                    if repo.url.is_none() {
                        bail!(
                            "repository {:?} has no `url`: a pak repository needs the directory or URL that holds its index",
                            repo.name
                        );
                    }
                    if repo.key.is_none() {
                        bail!(
                            "repository {:?} has no `key`: pak only reads signed repositories; give the path to its .pub file (see `pak key generate`)",
                            repo.name
                        );
                    }
                }
                RepoKind::Apt => {}
            }
        }
        for path in self.files.keys() {
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                bail!(
                    "[files] key {path:?} must be an absolute path inside the image, without `..`"
                );
            }
        }
        for (name, spec) in &self.files {
            if let FileSpec::Full(e) = spec {
                if e.content.is_some() == e.source.is_some() {
                    bail!("[files] {name:?} needs exactly one of `content` or `source`");
                }
                if let Some(mode) = &e.mode {
                    parse_mode(mode).with_context(|| format!("[files] {name:?}"))?;
                }
            }
        }
        for (name, u) in &self.users {
            validate_user(name, u)?;
        }
        for (name, svc) in &self.services {
            if let Some(user) = &svc.user
                && !valid_user_name(user)
            {
                bail!("[services.{name}] user = {user:?} is not a valid user name");
            }
            if name.is_empty()
                || name.starts_with('.')
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":-_.@".contains(c))
            {
                bail!(
                    "[services.{name:?}]: a service is named like a systemd unit (letters, digits, `:-_.@`), e.g. `nginx` or `ssh.socket`"
                );
            }
            if svc.exec.is_none() && svc.enable.is_none() {
                bail!(
                    "[services.{name}] has neither `exec` (a command pak runs and restarts) nor `enable = true` (the unit a package ships, with init = \"systemd\"); give one"
                );
            }
            let running = [
                ("exec", svc.exec.is_some()),
                ("health", svc.health.is_some()),
                ("user", svc.user.is_some()),
            ];
            if svc.disabled()
                && let Some((field, _)) = running.iter().find(|(_, given)| *given)
            {
                bail!(
                    "[services.{name}] says `enable = false`, which keeps a package's unit off, but also gives `{field}`, which is for a service that runs: remove one of them"
                );
            }
            if svc.disabled() && self.system.init == Init::Busybox {
                bail!(
                    "[services.{name}] says `enable = false`, but busybox init has no units to keep off: it runs only the Pakfile's `exec` services. Remove the entry, or set [system] init = \"systemd\""
                );
            }
            if svc.exec.is_none() && self.system.init == Init::Busybox {
                bail!(
                    "[services.{name}] enables a package's unit, but busybox init has no units: set [system] init = \"systemd\" (and add the systemd profile), or give the command to run as `exec`"
                );
            }
            if svc.enable.is_some() && svc.user.is_some() && self.system.init == Init::Systemd {
                bail!(
                    "[services.{name}] enables a package's own unit, which says which user it runs as; `user` applies to `exec` only (change the unit's user with a drop-in in [files], /etc/systemd/system/{name}.service.d/user.conf)"
                );
            }
        }
        if self.boot.tries == 0 || self.boot.tries > 9 {
            bail!(
                "[boot] tries = {} is out of range: use 1 to 9 boot attempts",
                self.boot.tries
            );
        }
        if self.boot.secure_boot.is_some() && !self.boot.uki {
            bail!(
                "[boot] secure-boot signs unified kernel images, so it needs `uki = true` in [boot] (a separate kernel and initrd cannot be signed as one)"
            );
        }
        Ok(())
    }

    /// The root requirements: package name → requirement, sorted.
    pub fn requirements(&self) -> Vec<(String, String)> {
        self.packages
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Resolves a path written in the Pakfile against its directory.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

/// Parses an octal mode such as `0755`.
pub fn parse_mode(s: &str) -> Result<u32> {
    let mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .with_context(|| format!("mode {s:?} is not an octal number such as \"0644\""))?;
    if mode > 0o7777 {
        bail!("mode {s:?} is larger than 07777");
    }
    Ok(mode)
}

/// The starter Pakfile `pak init` writes: commented, and valid as it is.
pub const STARTER: &str = r#"# A Pakfile declares a system: what packages it holds, where they come
# from, how it boots. `pak build` turns it into a bootable disk image.

[system]
name = "mysystem"
arch = "x86_64"
# Package groups from profiles/<name>.toml (built-in: base, server, debug).
profiles = ["base"]

[packages]
# name = "version requirement", e.g. hello = ">= 1.0" or nginx = "*"

# Debian's packages, through this host's apt configuration.
[[repository]]
name = "debian"
kind = "apt"

# A signed pak repository: a directory or URL holding `index` and packages.
# [[repository]]
# name = "local"
# url = "repo"
# key = "keys/local.pub"

[boot]
cmdline = "console=ttyS0"
tries = 3           # boots a new generation gets before falling back

[image]
size = "2GiB"

# Configuration is files, not scripts:
# [files]
# "/etc/motd" = "welcome\n"
# "/etc/app.conf" = { source = "app.conf", mode = "0600" }

# [services.web]
# exec = "/usr/sbin/httpd -f -p 80"
# health = "wget -q -O /dev/null http://127.0.0.1/"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_need_a_way_in_and_well_formed_keys() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk admin@laptop";
        let ok = Pakfile::parse(&format!(
            "[users.admin]\nssh-authorized-keys = [\"{key}\"]\n[users.svc]\nlogin = false\n[users.pw]\npassword-hash = \"$y$j9T$abc$def\"\n[users.old]\npassword_hash = \"$6$salt$hash\"\n"
        ))
        .unwrap();
        assert_eq!(ok.users["admin"].uid, None);
        assert_eq!(
            ok.users["old"].password_hash.as_deref(),
            Some("$6$salt$hash")
        );
        let err = |text: &str| format!("{:#}", Pakfile::parse(text).unwrap_err());
        let e = err("[users.alice]\nuid = 1000\n");
        assert!(
            e.contains("[users.alice]")
                && e.contains("ssh-authorized-keys")
                && e.contains("login = false"),
            "{e}"
        );
        let e = err("[users.alice]\nssh-authorized-keys = [\"AAAAC3Nza alice\"]\n");
        assert!(
            e.contains("ssh-authorized-keys[0]") && e.contains("OpenSSH public key"),
            "{e}"
        );
        let e = err("[users.alice]\npassword-hash = \"hunter2\"\n");
        assert!(e.contains("password-hash") && e.contains("crypt"), "{e}");
        let e = err("[users.Alice]\nlogin = false\n");
        assert!(e.contains("not a valid user name"), "{e}");
    }

    #[test]
    fn a_service_kept_off_is_only_that() {
        let systemd = "[system]\nname = \"x\"\narch = \"x86_64\"\ninit = \"systemd\"\n";
        let p = Pakfile::parse(&format!(
            "{systemd}[services.e2scrub_reap]\nenable = false\n"
        ))
        .unwrap();
        assert!(p.services["e2scrub_reap"].disabled());
        for (extra, field) in [
            ("exec = \"/bin/x\"", "exec"),
            ("health = \"true\"", "health"),
            ("user = \"www\"", "user"),
        ] {
            let e = Pakfile::parse(&format!(
                "{systemd}[services.nginx]\nenable = false\n{extra}\n"
            ))
            .unwrap_err();
            assert!(
                format!("{e:#}").contains(&format!("also gives `{field}`")),
                "{e:#}"
            );
        }
        let e = Pakfile::parse("[services.nginx]\nenable = false\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("busybox init has no units to keep off"),
            "{e:#}"
        );
    }

    #[test]
    fn starter_parses() {
        let p = Pakfile::parse(STARTER).unwrap();
        assert_eq!(p.system.profiles, vec!["base"]);
        assert_eq!(p.boot.tries, 3);
        assert_eq!(p.repository[0].kind, RepoKind::Apt);
    }

    #[test]
    fn boot_uki_and_secure_boot() {
        let p = Pakfile::parse(
            "[boot]\nuki = true\nsecure-boot = { key = \"db.key\", cert = \"db.crt\" }\n",
        )
        .unwrap();
        assert!(p.boot.uki);
        assert_eq!(
            p.boot.secure_boot,
            Some(SecureBootSpec {
                key: "db.key".into(),
                cert: "db.crt".into()
            })
        );
        let e = format!(
            "{:#}",
            Pakfile::parse("[boot]\nsecure-boot = { key = \"k\", cert = \"c\" }\n").unwrap_err()
        );
        assert!(e.contains("uki = true"), "{e}");
        let e = format!(
            "{:#}",
            Pakfile::parse("[boot]\nuki = true\nsecure-boot = { key = \"k\" }\n").unwrap_err()
        );
        assert!(e.contains("cert"), "{e}");
        // Off by default, and then absent from a written Pakfile.
        assert!(!Pakfile::parse("").unwrap().boot.uki);
    }

    #[test]
    fn malformed_toml_names_line_and_column() {
        let err = Pakfile::parse("[system]\nname = \"x\"\nprofiles = [\"base\"\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let err = Pakfile::parse("[system]\nnmae = \"x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("nmae"));
    }

    #[test]
    fn files_forms() {
        let p = Pakfile::parse(
            "[files]\n\"/etc/motd\" = \"hi\\n\"\n\"/etc/x\" = { source = \"x\", mode = \"0600\" }\n",
        )
        .unwrap();
        assert_eq!(p.files["/etc/motd"], FileSpec::Text("hi\n".into()));
        assert!(Pakfile::parse("[files]\n\"etc/motd\" = \"x\"\n").is_err());
        assert!(Pakfile::parse("[files]\n\"/etc/x\" = { mode = \"0600\" }\n").is_err());
        assert!(
            Pakfile::parse("[files]\n\"/etc/x\" = { content = \"\", mode = \"999\" }\n").is_err()
        );
    }

    #[test]
    fn repositories_are_checked() {
        assert!(
            Pakfile::parse("[[repository]]\nname = \"a\"\nurl = \"r\"\n").is_err(),
            "unsigned"
        );
        assert!(Pakfile::parse("[[repository]]\nname = \"a\"\nkind = \"apt\"\n[[repository]]\nname = \"a\"\nkind = \"apt\"\n").is_err());
        assert!(Pakfile::parse("[[repository]]\nname = \"a\"\nkind = \"rpm\"\n").is_err());
        let p = Pakfile::parse(
            "[[repository]]\nname = \"d\"\nkind = \"apt\"\nsnapshot = \"http://s/archive\"\n",
        )
        .unwrap();
        assert_eq!(
            p.repository[0].snapshot.as_deref(),
            Some("http://s/archive")
        );
        let err = Pakfile::parse(
            "[[repository]]\nname = \"a\"\nurl = \"r\"\nkey = \"k.pub\"\nsnapshot = \"http://s\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("only applies"), "{err}");
    }
}
