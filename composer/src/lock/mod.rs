//! `Pakfile.lock`: the frozen result of resolution. Same lock, same image.
//!
//! Every locked package carries what is needed to fetch and verify it
//! (repository, location, sha256, size) and what is needed to check, without
//! any index, that the lock still satisfies its Pakfile (requires, provides,
//! conflicts). For `apt` repositories the location is relative to the
//! archive root (`pool/main/...`), so a lock names no mirror and works with
//! whichever mirror the building host's apt is configured for.
//!
//! pak itself (source `pak`, see `selfpkg`) is pinned by version, with no
//! sha256: the image gets the binary of the pak that builds it. A binary's
//! bytes depend on the toolchain, the profile and the checkout's path, so
//! pinning them would make every committed lock stale at the next commit
//! and on every other machine. The promise is therefore: same lock and same
//! pak binary, same bytes; and a lock naming a pak version the builder is
//! not is an error, never a silent re-pin.

pub mod closure;
pub mod explain;
pub mod resolve;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::packages::candidate::Candidate;
use crate::packages::pakinfo::PakInfo;

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    /// The uids and gids pak allocated (see `image::accounts`), kept so an
    /// account owns the same files in every generation.
    #[serde(default, skip_serializing_if = "Accounts::is_empty")]
    pub accounts: Accounts,
    #[serde(default, rename = "package")]
    pub packages: Vec<LockedPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// sha256 of the artifact as downloaded (`.pak`, or `.deb` for apt);
    /// empty for pak itself, which is the building binary.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// The Pakfile repository it came from.
    pub source: String,
    /// Where, relative to that repository (or absolute for `file://`/`http(s)://`).
    pub location: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provides: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// For Debian packages: the `Date:` of the suite's Release file they
    /// were locked from, as a snapshot timestamp (`20240610T091320Z`). When
    /// the mirror has dropped the exact version, a `snapshot` base on the
    /// apt repository is asked for `<snapshot>/<archive>/<archive_date>/pool/...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_date: Option<String>,
}

/// `[accounts]`: `users = { postgres = 100 }`, `groups = { ... }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, u32>,
}

impl Accounts {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LockedPackage {
    /// Whether this is pak itself, provided by the building binary.
    pub fn is_builder(&self) -> bool {
        self.source == crate::sources::selfpkg::REPO
    }

    pub fn from_candidate(c: &Candidate) -> Self {
        LockedPackage {
            name: c.info.name.clone(),
            version: c.info.version.clone(),
            arch: c.info.arch.clone(),
            sha256: c.sha256.clone(),
            size: c.size,
            source: c.repo.clone(),
            location: c.location.clone(),
            requires: c.info.requires.clone(),
            provides: c.info.provides.clone(),
            conflicts: c.info.conflicts.clone(),
            archive_date: c.archive_date.clone(),
        }
    }

    /// The metadata the resolver needs to treat this locked package as a
    /// candidate (e.g. to prefer it when re-resolving).
    pub fn to_candidate(&self) -> Candidate {
        Candidate {
            info: PakInfo {
                name: self.name.clone(),
                version: self.version.clone(),
                arch: self.arch.clone(),
                summary: String::new(),
                license: String::new(),
                requires: self.requires.clone(),
                provides: self.provides.clone(),
                conflicts: self.conflicts.clone(),
                special_files: Vec::new(),
                origin: None,
            },
            repo: self.source.clone(),
            location: self.location.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            archive_date: self.archive_date.clone(),
        }
    }

    /// The store entry name: `<name>-<version>-<sha256>`; for pak itself,
    /// the running binary's sha256, so two pak builds never share an entry.
    /// A `.deb` is stored as pak converted it, so its key also names the
    /// conversion (`-deb2`): an entry an older pak converted is not what
    /// this one would make, and is never used. The lock pins the `.deb`'s
    /// bytes, which is all it needs to; the key is the store's business.
    pub fn store_key(&self) -> String {
        if self.is_builder() {
            return store_key(&self.name, &self.version, crate::sources::selfpkg::sha256());
        }
        let key = store_key(&self.name, &self.version, &self.sha256);
        // The same test the fetch uses to tell a .deb from a .pak.
        if self.location.ends_with(".deb") {
            return format!("{key}-deb{}", crate::packages::deb::CONVERSION);
        }
        key
    }
}

/// `:` of epochs is replaced so the key is a portable file name.
pub fn store_key(name: &str, version: &str, sha256: &str) -> String {
    format!("{name}-{}-{sha256}", version.replace(':', "_"))
}

const HEADER: &str = "# Pakfile.lock — written by `pak lock`; do not edit by hand.\n# `pak update [PKG]` re-resolves; the same lock always builds the same image.\n";

impl Lock {
    pub fn new(mut packages: Vec<LockedPackage>) -> Self {
        packages.sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
        Lock {
            format: FORMAT,
            accounts: Accounts::default(),
            packages,
        }
    }

    pub fn parse(text: &str) -> Result<Lock> {
        let lock: Lock = toml::from_str(text)?;
        if lock.format != FORMAT {
            bail!(
                "lock format {} is not understood by this pak (it reads format {FORMAT}); run `pak update` to rewrite it",
                lock.format
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &lock.packages {
            if !names.insert(&p.name) {
                bail!(
                    "package {:?} is locked twice; run `pak update` to rewrite the lock",
                    p.name
                );
            }
            // pak itself has no sha256 (older locks pinned one; `Project`
            // re-locks those).
            let well_formed =
                p.sha256.len() == 64 && p.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !p.is_builder() && !well_formed {
                bail!(
                    "package {:?} has a malformed sha256 {:?}; run `pak update`",
                    p.name,
                    p.sha256
                );
            }
        }
        Ok(lock)
    }

    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("Lock always serialises");
        format!("{HEADER}\n{body}")
    }

    /// Reads a lock file; `Ok(None)` when it does not exist.
    pub fn read(path: &Path) -> Result<Option<Lock>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Lock::parse(&text)
                .with_context(|| {
                    format!(
                        "{} is broken; delete it or run `pak update` to write a new one",
                        path.display()
                    )
                })
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes atomically: a reader sees the old lock or the new one.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::util::fsutil::write_atomic(path, self.to_toml().as_bytes())
    }

    pub fn get(&self, name: &str) -> Option<&LockedPackage> {
        self.packages.iter().find(|p| p.name == name)
    }

    /// Keeps the old lock's archive dates for packages that did not change
    /// (same name, version and sha256): the date only says when the
    /// archive was seen to hold the package, and the earliest such day is
    /// as good as any for a snapshot, so re-resolving the same packages
    /// after an `apt-get update` must not rewrite the lock.
    pub fn keep_archive_dates(&mut self, old: &Lock) {
        for p in &mut self.packages {
            if let Some(o) = old.get(&p.name)
                && o.version == p.version
                && o.sha256 == p.sha256
                && o.archive_date.is_some()
            {
                p.archive_date.clone_from(&o.archive_date);
            }
        }
    }

    /// What changed from `old` (no lock at all when `None`) to this lock,
    /// sorted by package name.
    pub fn changes_from(&self, old: Option<&Lock>) -> Vec<Change> {
        let mut out = Vec::new();
        for p in &self.packages {
            match old.and_then(|o| o.get(&p.name)) {
                None => out.push(Change::Added {
                    name: p.name.clone(),
                    version: p.version.clone(),
                }),
                Some(o) if o.version != p.version => out.push(Change::Updated {
                    name: p.name.clone(),
                    from: o.version.clone(),
                    to: p.version.clone(),
                }),
                Some(o) if o != p => out.push(Change::Repinned {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    why: if o.sha256 != p.sha256 {
                        format!("sha256 {} -> {}", short(&o.sha256), short(&p.sha256))
                    } else if o.source != p.source {
                        format!("repository {} -> {}", o.source, p.source)
                    } else {
                        "metadata".into()
                    },
                }),
                Some(_) => {}
            }
        }
        for p in old.map(|o| o.packages.as_slice()).unwrap_or_default() {
            if self.get(&p.name).is_none() {
                out.push(Change::Removed {
                    name: p.name.clone(),
                    version: p.version.clone(),
                });
            }
        }
        out.sort_by(|a, b| a.name().cmp(b.name()));
        // Pins are only ever added (see `image::accounts`); after the packages.
        let old_accounts = old.map(|o| &o.accounts);
        for (kind, new, old) in [
            ("user", &self.accounts.users, old_accounts.map(|a| &a.users)),
            (
                "group",
                &self.accounts.groups,
                old_accounts.map(|a| &a.groups),
            ),
        ] {
            for (name, id) in new {
                if old.and_then(|o| o.get(name)) != Some(id) {
                    out.push(Change::Pinned {
                        kind: kind.into(),
                        name: name.clone(),
                        id: *id,
                    });
                }
            }
        }
        out
    }

    /// The lock file beside a Pakfile.
    pub fn path_for(pakfile: &Path) -> std::path::PathBuf {
        let name = pakfile
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        pakfile.with_file_name(format!("{name}.lock"))
    }
}

fn short(sha: &str) -> &str {
    if sha.is_empty() {
        "none"
    } else {
        &sha[..sha.len().min(12)]
    }
}

/// One line of what a new lock changes; printed by every command that
/// writes a lock, refused by `--locked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    Added {
        name: String,
        version: String,
    },
    Removed {
        name: String,
        version: String,
    },
    Updated {
        name: String,
        from: String,
        to: String,
    },
    /// Same version, other bytes or origin (a rebuilt package, a moved one).
    Repinned {
        name: String,
        version: String,
        why: String,
    },
    /// A new account's id, now kept in `[accounts]`.
    Pinned {
        kind: String,
        name: String,
        id: u32,
    },
}

impl Change {
    pub fn name(&self) -> &str {
        match self {
            Change::Added { name, .. }
            | Change::Removed { name, .. }
            | Change::Updated { name, .. }
            | Change::Repinned { name, .. }
            | Change::Pinned { name, .. } => name,
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Added { name, version } => write!(f, "+ {name} {version}"),
            Change::Removed { name, version } => write!(f, "- {name} {version}"),
            Change::Updated { name, from, to } => write!(f, "~ {name} {from} -> {to}"),
            Change::Repinned { name, version, why } => write!(f, "~ {name} {version} ({why})"),
            Change::Pinned { kind, name, id } => {
                let what = if kind == "user" { "uid" } else { "gid" };
                write!(f, "+ {kind} {name} ({what} {id})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: "1:2.0-1".into(),
            arch: "x86_64".into(),
            sha256: "ab".repeat(32),
            size: 10,
            source: "debian".into(),
            location: "pool/main/x.deb".into(),
            requires: vec!["libc6 >= 2.34".into()],
            provides: vec![],
            conflicts: vec![],
            archive_date: None,
        }
    }

    #[test]
    fn an_unchanged_package_keeps_its_archive_date() {
        let mut old = pkg("a");
        old.archive_date = Some("20260101T000000Z".into());
        let old = Lock::new(vec![old, pkg("b")]);
        let mut new_a = pkg("a");
        new_a.archive_date = Some("20260202T000000Z".into());
        let mut new_b = pkg("b");
        new_b.version = "3.0-1".into();
        new_b.archive_date = Some("20260202T000000Z".into());
        let mut new = Lock::new(vec![new_a, new_b]);
        new.keep_archive_dates(&old);
        assert_eq!(new.packages[0], old.packages[0]);
        assert_eq!(
            new.packages[1].archive_date.as_deref(),
            Some("20260202T000000Z")
        );
        let changes: Vec<String> = new
            .changes_from(Some(&old))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(changes, ["~ b 1:2.0-1 -> 3.0-1"]);
    }

    #[test]
    fn roundtrip_sorted() {
        let lock = Lock::new(vec![pkg("b"), pkg("a")]);
        let text = lock.to_toml();
        assert!(text.find("name = \"a\"").unwrap() < text.find("name = \"b\"").unwrap());
        assert_eq!(Lock::parse(&text).unwrap(), lock);
        assert_eq!(
            lock.packages[0].store_key(),
            format!(
                "a-1_2.0-1-{}-deb{}",
                "ab".repeat(32),
                crate::packages::deb::CONVERSION
            )
        );
        let mut pak = pkg("c");
        pak.location = "c-1.pak".into();
        assert_eq!(pak.store_key(), format!("c-1_2.0-1-{}", "ab".repeat(32)));
    }

    #[test]
    fn accounts_roundtrip_and_are_reported_as_changes() {
        let old = Lock::new(vec![pkg("a")]);
        let mut lock = old.clone();
        lock.accounts.users.insert("postgres".into(), 100);
        lock.accounts.groups.insert("postgres".into(), 100);
        let text = lock.to_toml();
        assert!(
            text.contains("[accounts.users]\npostgres = 100\n"),
            "{text}"
        );
        assert_eq!(Lock::parse(&text).unwrap(), lock);
        assert!(!old.to_toml().contains("accounts"), "no section when empty");
        let changes: Vec<String> = lock
            .changes_from(Some(&old))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            changes,
            ["+ user postgres (uid 100)", "+ group postgres (gid 100)"]
        );
        assert!(lock.changes_from(Some(&lock)).is_empty());
    }

    #[test]
    fn broken_locks_are_refused() {
        let mut lock = Lock::new(vec![pkg("a"), pkg("a")]);
        assert!(Lock::parse(&lock.to_toml()).is_err());
        lock.packages.truncate(1);
        lock.packages[0].sha256 = "zz".into();
        assert!(Lock::parse(&lock.to_toml()).is_err());
        assert!(Lock::parse("format = 9\n").is_err());
    }

    #[test]
    fn lock_path() {
        assert_eq!(
            Lock::path_for(Path::new("a/Pakfile")),
            Path::new("a/Pakfile.lock")
        );
    }
}
