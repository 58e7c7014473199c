//! A Pakfile with its lock: resolving, updating and fetching.
//!
//! `lock` re-resolves only when it must: a lock that still satisfies its
//! Pakfile is used as it is, with no network, so a build from a committed
//! lock is the same build anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::lock::{Lock, LockedPackage};
use crate::pakfile::Pakfile;
use crate::pakinfo::PakInfo;
use crate::requirement;
use crate::resolve;
use crate::root::Root;
use crate::sources::Sources;
use crate::store::{self, Store, StoreEntry};
use crate::version::Version;

pub struct Project {
    pub pakfile_path: PathBuf,
    pub pakfile: Pakfile,
    pub root: Root,
}

/// What to re-resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Keep the lock if it still satisfies the Pakfile.
    IfNeeded,
    /// Re-resolve everything to the newest versions.
    All,
    /// Re-resolve this package (and what it needs); keep the rest.
    Only(String),
}

#[derive(Debug)]
pub struct LockOutcome {
    pub lock: Lock,
    /// Whether the lock file was (re)written.
    pub written: bool,
    pub changes: Vec<String>,
}

impl Project {
    pub fn open(pakfile_path: &Path, root: Root) -> Result<Project> {
        let pakfile = Pakfile::load(pakfile_path)?;
        Ok(Project {
            pakfile_path: pakfile_path.to_path_buf(),
            pakfile,
            root,
        })
    }

    pub fn lock_path(&self) -> PathBuf {
        Lock::path_for(&self.pakfile_path)
    }

    pub fn read_lock(&self) -> Result<Option<Lock>> {
        Lock::read(&self.lock_path())
    }

    /// `pak lock` / `pak update`.
    pub fn lock(&self, update: Update) -> Result<LockOutcome> {
        let current = self.read_lock()?;
        if let (Update::IfNeeded, Some(lock)) = (&update, &current)
            && self.unsatisfied(lock).is_empty()
        {
            return Ok(LockOutcome {
                lock: lock.clone(),
                written: false,
                changes: Vec::new(),
            });
        }
        let mut prefer = BTreeMap::new();
        if let Some(lock) = &current {
            match &update {
                Update::All => {}
                Update::Only(name) => {
                    if lock.get(name).is_none() {
                        bail!(
                            "{name} is not in {}; `pak update` without a name re-resolves everything",
                            self.lock_path().display()
                        );
                    }
                    prefer.extend(
                        lock.packages
                            .iter()
                            .filter(|p| p.name != *name)
                            .map(|p| (p.name.clone(), p.version.clone())),
                    );
                }
                Update::IfNeeded => {
                    prefer.extend(
                        lock.packages
                            .iter()
                            .filter(|p| p.source != crate::selfpkg::REPO)
                            .map(|p| (p.name.clone(), p.version.clone())),
                    );
                }
            }
        }
        let sources = Sources::from_pakfile(&self.pakfile)?;
        let cands = sources.candidates(&self.root)?;
        let chosen = resolve::resolve(
            &cands,
            &self.pakfile.system.arch,
            &self.pakfile.requirements(),
            &prefer,
        )?;
        let lock = Lock::new(
            chosen
                .iter()
                .map(|i| LockedPackage::from_candidate(&cands[*i]))
                .collect(),
        );
        let changes = diff(current.as_ref(), &lock);
        lock.write(&self.lock_path())?;
        Ok(LockOutcome {
            lock,
            written: true,
            changes,
        })
    }

    /// Why the lock no longer fits the Pakfile (empty when it does).
    pub fn unsatisfied(&self, lock: &Lock) -> Vec<String> {
        let mut why = Vec::new();
        let infos: Vec<PakInfo> = lock
            .packages
            .iter()
            .map(|p| p.to_candidate().info)
            .collect();
        for (name, range) in self.pakfile.requirements() {
            let dep = match requirement::parse_root(&name, &range) {
                Ok(d) => d,
                Err(e) => {
                    why.push(format!("[packages] {name}: {e}"));
                    continue;
                }
            };
            let met = infos.iter().any(|i| {
                (i.name == dep.name
                    && Version::parse(&i.version).is_ok_and(|v| dep.range.contains(&v)))
                    || i.provides.iter().any(|p| {
                        requirement::parse_provide(p).is_ok_and(|(n, v)| {
                            n == dep.name
                                && match v {
                                    Some(v) => dep.range.contains(&v),
                                    None => dep.range.is_any(),
                                }
                        })
                    })
            });
            if !met {
                why.push(format!("nothing locked satisfies {dep}"));
            }
        }
        let refs: Vec<&PakInfo> = infos.iter().collect();
        why.extend(resolve::check_closure(&refs));
        let mut repos: Vec<&str> = self
            .pakfile
            .repository
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        repos.push(crate::selfpkg::REPO);
        for p in &lock.packages {
            if p.source == crate::selfpkg::REPO
                && crate::selfpkg::candidate().is_ok_and(|c| c.sha256 != p.sha256)
            {
                why.push("this pak binary differs from the one locked".into());
            }
            if !repos.contains(&p.source.as_str()) {
                why.push(format!(
                    "{} comes from repository {:?}, which the Pakfile no longer names",
                    p.name, p.source
                ));
            }
        }
        why
    }

    /// Locks if needed, then fetches every locked package into the store.
    pub fn fetch(&self) -> Result<(Lock, Vec<(LockedPackage, StoreEntry)>)> {
        let lock = self.lock(Update::IfNeeded)?.lock;
        let store = Store::open(&self.root)?;
        let sources = Sources::from_pakfile(&self.pakfile)?;
        let bar = crate::progress::items(lock.packages.len() as u64, "fetch and extract");
        let mut out = Vec::new();
        for p in &lock.packages {
            let e = sources.fetch(p, &self.root, &store)?;
            bar.inc(1);
            out.push((p.clone(), e));
        }
        bar.finish_and_clear();
        let keys: Vec<String> = lock.packages.iter().map(LockedPackage::store_key).collect();
        let abs = std::path::absolute(self.lock_path()).unwrap_or_else(|_| self.lock_path());
        store::register_root(&self.root, &format!("lock:{}", abs.display()), &keys)
            .context("cannot record the lock as a GC root")?;
        Ok((lock, out))
    }
}

/// Human lines for what changed between two locks.
pub fn diff(old: Option<&Lock>, new: &Lock) -> Vec<String> {
    let empty = Lock::new(vec![]);
    let old = old.unwrap_or(&empty);
    let mut out = Vec::new();
    for p in &new.packages {
        match old.get(&p.name) {
            None => out.push(format!("+ {} {}", p.name, p.version)),
            Some(o) if o.version != p.version || o.sha256 != p.sha256 => {
                out.push(format!("~ {} {} -> {}", p.name, o.version, p.version))
            }
            _ => {}
        }
    }
    for p in &old.packages {
        if new.get(&p.name).is_none() {
            out.push(format!("- {} {}", p.name, p.version));
        }
    }
    out
}
