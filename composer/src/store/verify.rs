//! `pak store verify` and `pak store repair`: every entry checked against
//! its BOM (extra, missing and modified files), and what is broken removed
//! and extracted again from the download cache.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::FileType;
use sha2::{Digest, Sha256};

use super::lock::{self, Mode};
use super::{DELETING, EXTRACTING, Store, StoreEntry, remove_tree, tree};
use crate::packages::bom::{Bom, FileDigest, Kind};
use crate::packages::package;
use crate::state::StateDir;

/// What is wrong with one path of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The entry's own records cannot be read, so nothing else can be checked.
    Unreadable(String),
    /// In the BOM, not on disk.
    Missing(String),
    /// On disk, not in the BOM.
    Extra(String),
    Modified {
        path: String,
        how: Difference,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    Type {
        want: &'static str,
        found: &'static str,
    },
    Size {
        want: u64,
        found: u64,
    },
    Content,
    Mode {
        want: u32,
        found: u32,
    },
    Target {
        want: String,
        found: String,
    },
    /// A hard link that no longer shares its target's file.
    Unlinked {
        target: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unreadable(why) => write!(f, "unreadable: {why}"),
            Problem::Missing(p) => write!(f, "missing {p}"),
            Problem::Extra(p) => write!(f, "extra {p}"),
            Problem::Modified { path, how } => write!(f, "modified {path}: {how}"),
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Type { want, found } => write!(f, "a {found}, the BOM says a {want}"),
            Difference::Size { want, found } => {
                write!(f, "{found} bytes, the BOM says {want}")
            }
            Difference::Content => write!(f, "its sha256 differs from the BOM's"),
            Difference::Mode { want, found } => {
                write!(f, "mode {found:04o}, the BOM says {want:04o}")
            }
            Difference::Target { want, found } => {
                write!(f, "points to {found:?}, the BOM says {want:?}")
            }
            Difference::Unlinked { target } => {
                write!(f, "no longer the same file as {target}")
            }
        }
    }
}

/// One damaged entry.
#[derive(Debug, Clone)]
pub struct Damaged {
    pub key: String,
    pub problems: Vec<Problem>,
}

/// What `pak store verify` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Entries checked.
    pub checked: usize,
    pub damaged: Vec<Damaged>,
    /// Left by a pak killed while extracting or deleting: not entries, so
    /// not damage; `pak gc` or `pak store repair` removes them.
    pub leftovers: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
    }
}

/// What `pak store repair` did.
#[derive(Debug, Clone, Default)]
pub struct Repaired {
    /// Damaged entries removed, with their problems.
    pub removed: Vec<Damaged>,
    pub leftovers: Vec<String>,
    /// Removed, then extracted again from the download cache.
    pub refetched: Vec<String>,
    /// Removed, and not in the download cache: the next fetch of a
    /// project or environment that needs them downloads them.
    pub not_cached: Vec<String>,
}

impl Store {
    /// Checks every entry against its BOM. Holds the store's shared lock,
    /// so no `pak gc` deletes what it reads.
    pub fn verify(&self) -> Result<Report> {
        let _lock = self.lock(Mode::Shared)?;
        self.verify_locked()
    }

    fn verify_locked(&self) -> Result<Report> {
        let mut report = Report::default();
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot read the store {}", self.dir.display()))?
        {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in names {
            if name.starts_with(EXTRACTING) {
                if self.abandoned(&name)? {
                    report.leftovers.push(name);
                }
                continue;
            }
            if name.starts_with(DELETING) {
                // No gc runs while this (shared) lock is held.
                report.leftovers.push(name);
                continue;
            }
            if name.starts_with('.') {
                continue;
            }
            report.checked += 1;
            let problems = check_entry(&StoreEntry {
                key: name.clone(),
                dir: self.dir.join(&name),
            });
            if !problems.is_empty() {
                report.damaged.push(Damaged {
                    key: name,
                    problems,
                });
            }
        }
        Ok(report)
    }

    /// Whether the extraction directory `name` is no running pak's.
    fn abandoned(&self, name: &str) -> Result<bool> {
        let hash = name
            .strip_prefix(EXTRACTING)
            .and_then(|r| r.split('-').next())
            .unwrap_or_default();
        if hash.is_empty() {
            return Ok(true);
        }
        let lock = self.dir.join(".locks").join(hash);
        Ok(lock::try_acquire(&lock, Mode::Exclusive)?.is_some())
    }

    /// Removes every damaged entry and leftover, then extracts the removed
    /// entries again from the download cache where it has them.
    pub fn repair(&self, root: &StateDir) -> Result<Repaired> {
        let mut done = Repaired::default();
        {
            let _lock = self.lock(Mode::Exclusive)?;
            let report = self.verify_locked()?;
            for d in report.damaged {
                self.delete(&d.key)?;
                done.removed.push(d);
            }
            for name in report.leftovers {
                remove_tree(&self.dir.join(&name))?;
                done.leftovers.push(name);
            }
            self.remove_entry_locks()?;
            crate::util::fsutil::sync_dir(&self.dir)?;
        }
        for d in &done.removed {
            match cached_artifact(root, &d.key) {
                Some((path, deb)) => {
                    self.install_artifact(&path, deb, &d.key).with_context(|| {
                        format!("cannot extract {} again from {}", d.key, path.display())
                    })?;
                    done.refetched.push(d.key.clone());
                }
                None => done.not_cached.push(d.key.clone()),
            }
        }
        Ok(done)
    }

    fn install_artifact(&self, path: &Path, deb: bool, key: &str) -> Result<()> {
        if deb {
            self.install_deb(path, key).map(drop)
        } else {
            self.install(path, key).map(drop)
        }
    }
}

/// The downloaded file an entry was made from, if the download cache still
/// holds it intact: `(path, is a .deb)`. Keys are `NAME-VERSION-SHA256`,
/// with `-debN` after for converted Debian packages.
fn cached_artifact(root: &StateDir, key: &str) -> Option<(std::path::PathBuf, bool)> {
    let deb_suffix = format!("-deb{}", crate::packages::deb::CONVERSION);
    let (rest, deb) = match key.strip_suffix(&deb_suffix) {
        Some(rest) => (rest, true),
        None => (key, false),
    };
    let sha = rest.rsplit('-').next()?;
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let path = root
        .cache_dir()
        .join("pkgs")
        .join(format!("{sha}.{}", if deb { "deb" } else { "pak" }));
    let intact = package::hash_file(&path).is_ok_and(|(_, h)| h == sha);
    intact.then_some((path, deb))
}

/// Everything wrong with one entry.
pub fn check_entry(entry: &StoreEntry) -> Vec<Problem> {
    let mut problems = Vec::new();
    let bom = match entry.bom() {
        Ok(b) => b,
        Err(e) => return vec![Problem::Unreadable(format!("{e:#}"))],
    };
    match entry.info() {
        Ok(info) => {
            let want = format!("{}-{}-", info.name, info.version.replace(':', "_"));
            if !entry.key.starts_with(&want) {
                problems.push(Problem::Unreadable(format!(
                    "its .PAKINFO says {} {}, which is not the package its key names",
                    info.name, info.version
                )));
            }
        }
        Err(e) => problems.push(Problem::Unreadable(format!("{e:#}"))),
    }
    match std::fs::read_dir(&entry.dir) {
        Ok(rd) => {
            let mut extra: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| ![package::INFO_NAME, package::BOM_NAME, "tree"].contains(&n.as_str()))
                .collect();
            extra.sort();
            problems.extend(extra.into_iter().map(|n| Problem::Extra(format!("../{n}"))));
        }
        Err(e) => problems.push(Problem::Unreadable(e.to_string())),
    }
    match check_tree(&entry.tree(), &bom) {
        Ok(p) => problems.extend(p),
        Err(e) => problems.push(Problem::Unreadable(format!("{e:#}"))),
    }
    problems
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Socket => "socket",
        FileType::Unknown => "file of unknown type",
    }
}

/// Compares a tree on disk with its BOM.
fn check_tree(root: &Path, bom: &Bom) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let mut seen = vec![false; bom.entries.len()];
    // Hard links are checked once every target has been seen.
    let targets: BTreeSet<&str> = bom
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::HardLink(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let mut inodes: HashMap<String, (u64, u64)> = HashMap::new();
    let mut links = Vec::new();
    // The extra directory being walked: its contents are not listed again.
    let mut extra_dir: Option<String> = None;
    tree::walk(root, |f| {
        if let Some(d) = &extra_dir {
            if f.path.starts_with(d.as_str()) && f.path.as_bytes().get(d.len()) == Some(&b'/') {
                return Ok(());
            }
            extra_dir = None;
        }
        let found = f.file_type();
        let Ok(i) = bom
            .entries
            .binary_search_by(|e| e.path.as_str().cmp(f.path))
        else {
            if found == FileType::Directory {
                extra_dir = Some(f.path.to_string());
            }
            problems.push(Problem::Extra(f.path.to_string()));
            return Ok(());
        };
        seen[i] = true;
        let e = &bom.entries[i];
        let modified = |how| Problem::Modified {
            path: e.path.clone(),
            how,
        };
        let want_type = match &e.kind {
            Kind::Dir => FileType::Directory,
            Kind::File(_) | Kind::HardLink(_) => FileType::RegularFile,
            Kind::Symlink(_) => FileType::Symlink,
            // Device nodes and fifos are in the BOM only.
            Kind::CharDev { .. } | Kind::BlockDev { .. } | Kind::Fifo => FileType::Unknown,
        };
        if found != want_type {
            let want = if want_type == FileType::Unknown {
                "nothing (it is made from the BOM)"
            } else {
                type_name(want_type)
            };
            problems.push(modified(Difference::Type {
                want,
                found: type_name(found),
            }));
            if found == FileType::Directory {
                extra_dir = Some(f.path.to_string());
            }
            return Ok(());
        }
        let mode = f.stat.st_mode & 0o7777;
        let want_mode = e.mode & 0o1777;
        match &e.kind {
            Kind::Dir => {
                if mode != want_mode {
                    problems.push(modified(Difference::Mode {
                        want: want_mode,
                        found: mode,
                    }));
                }
            }
            Kind::File(FileDigest { size, sha256 }) => {
                if f.stat.st_size as u64 != *size {
                    problems.push(modified(Difference::Size {
                        want: *size,
                        found: f.stat.st_size as u64,
                    }));
                } else if !same_content(f, sha256)
                    .with_context(|| format!("cannot read {}", e.path))?
                {
                    problems.push(modified(Difference::Content));
                }
                if mode != want_mode {
                    problems.push(modified(Difference::Mode {
                        want: want_mode,
                        found: mode,
                    }));
                }
                if targets.contains(e.path.as_str()) {
                    inodes.insert(e.path.clone(), (f.stat.st_dev, f.stat.st_ino));
                }
            }
            Kind::Symlink(target) => {
                let got = f.read_link()?.to_string_lossy().into_owned();
                if &got != target {
                    problems.push(modified(Difference::Target {
                        want: target.clone(),
                        found: got,
                    }));
                }
            }
            Kind::HardLink(target) => {
                links.push((
                    e.path.clone(),
                    target.clone(),
                    (f.stat.st_dev, f.stat.st_ino),
                ));
            }
            Kind::CharDev { .. } | Kind::BlockDev { .. } | Kind::Fifo => {}
        }
        Ok(())
    })?;
    for (path, target, inode) in links {
        if inodes.get(&target) != Some(&inode) {
            problems.push(Problem::Modified {
                path,
                how: Difference::Unlinked { target },
            });
        }
    }
    // A missing directory's contents are missing too; it is said once.
    let mut missing_dirs: BTreeSet<&str> = BTreeSet::new();
    for (e, seen) in bom.entries.iter().zip(seen) {
        if seen
            || matches!(
                e.kind,
                Kind::CharDev { .. } | Kind::BlockDev { .. } | Kind::Fifo
            )
        {
            continue;
        }
        let parent_missing = e
            .path
            .rsplit_once('/')
            .is_some_and(|(parent, _)| missing_dirs.contains(parent));
        if matches!(e.kind, Kind::Dir) {
            missing_dirs.insert(&e.path);
        }
        if !parent_missing {
            problems.push(Problem::Missing(e.path.clone()));
        }
    }
    Ok(problems)
}

fn same_content(f: &tree::Found, sha256: &str) -> Result<bool> {
    let mut file = f.open()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()) == sha256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::key_hash;
    use std::os::unix::fs::PermissionsExt;

    fn store_with_entry() -> (tempfile::TempDir, StateDir, Store, StoreEntry) {
        let d = tempfile::tempdir().unwrap();
        let root = StateDir::new(d.path().join("root"));
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("usr/bin")).unwrap();
        std::fs::write(
            src.join(".PAKINFO"),
            "name = \"t\"\nversion = \"1\"\narch = \"any\"\n",
        )
        .unwrap();
        std::fs::write(src.join("usr/bin/t"), "hello").unwrap();
        std::fs::create_dir_all(src.join("usr/share/t")).unwrap();
        std::fs::write(src.join("usr/share/t/a"), "a").unwrap();
        std::os::unix::fs::symlink("t", src.join("usr/bin/u")).unwrap();
        let pak = package::create_from_dir(&src, d.path()).unwrap();
        let store = Store::open(&root).unwrap();
        let key = format!("t-1-{}", "0".repeat(64));
        let e = store.install(&pak, &key).unwrap();
        (d, root, store, e)
    }

    #[test]
    fn verify_finds_extra_missing_and_modified() {
        let (_d, root, store, e) = store_with_entry();
        assert!(store.verify().unwrap().is_clean());
        let t = e.tree();
        std::fs::write(t.join("usr/bin/t"), "HELLO").unwrap();
        std::fs::write(t.join("usr/bin/extra"), "x").unwrap();
        std::fs::remove_dir_all(t.join("usr/share/t")).unwrap();
        std::fs::remove_file(t.join("usr/bin/u")).unwrap();
        std::os::unix::fs::symlink("elsewhere", t.join("usr/bin/u")).unwrap();
        std::fs::set_permissions(t.join("usr"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let report = store.verify().unwrap();
        assert_eq!(report.damaged.len(), 1);
        let text: Vec<String> = report.damaged[0]
            .problems
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            [
                "modified usr: mode 0700, the BOM says 0755",
                "extra usr/bin/extra",
                "modified usr/bin/t: its sha256 differs from the BOM's",
                "modified usr/bin/u: points to \"elsewhere\", the BOM says \"t\"",
                "missing usr/share/t",
            ]
        );
        // Not in the download cache: removed, and said so.
        let done = store.repair(&root).unwrap();
        assert_eq!(done.removed.len(), 1);
        assert_eq!(done.not_cached, vec![e.key.clone()]);
        assert!(store.verify().unwrap().is_clean());
        assert!(store.entries().unwrap().is_empty());
    }

    #[test]
    fn repair_extracts_again_from_the_cache_and_clears_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let root = StateDir::new(d.path().join("root"));
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(
            src.join(".PAKINFO"),
            "name = \"c\"\nversion = \"2\"\narch = \"any\"\n",
        )
        .unwrap();
        std::fs::write(src.join("etc/c"), "c").unwrap();
        let pak = package::create_from_dir(&src, d.path()).unwrap();
        let (_, sha) = package::hash_file(&pak).unwrap();
        let cache = root.cache_dir().join("pkgs");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::copy(&pak, cache.join(format!("{sha}.pak"))).unwrap();
        let store = Store::open(&root).unwrap();
        let key = format!("c-2-{sha}");
        let e = store.install(&pak, &key).unwrap();
        std::fs::remove_file(e.tree().join("etc/c")).unwrap();
        std::fs::create_dir(store.dir().join(format!("{EXTRACTING}{}-x", key_hash("k")))).unwrap();
        let report = store.verify().unwrap();
        assert_eq!(report.damaged.len(), 1);
        assert_eq!(report.leftovers.len(), 1);
        let done = store.repair(&root).unwrap();
        assert_eq!(done.refetched, vec![key.clone()]);
        assert_eq!(done.leftovers.len(), 1);
        let report = store.verify().unwrap();
        assert!(report.is_clean() && report.leftovers.is_empty());
        assert_eq!(std::fs::read(e.tree().join("etc/c")).unwrap(), b"c");
    }
}
