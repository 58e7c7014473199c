//! Getting a Pakfile's packages ready to show: lock it if needed, find
//! each locked tree in a store, fetch only what none holds, and keep the
//! lock registered as a GC root. Every way into an environment (`pak run`,
//! `pak env enter`, `pak taste`, installs) goes through [`prepare`], so the
//! warm path stays the same cheap one everywhere.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::sandbox::{Lower, Sandbox};
use crate::lock::{Change, Lock};
use crate::project::{LockPolicy, Project, Update};
use crate::sources::Sources;
use crate::state::StateDir;
use crate::store::{self, Store};

/// A Pakfile whose packages are ready to show: every tree in a store.
#[derive(Debug)]
pub struct Prepared {
    pub sandbox: Sandbox,
    /// Whether this call fetched packages (and so may have started threads).
    pub fetched: bool,
    /// The lock, when this call wrote it (first use, or the Pakfile
    /// changed), and what changed in it.
    pub wrote_lock: Option<(PathBuf, Vec<Change>)>,
}

/// Locks `pakfile` if its lock is missing or no longer fits, and makes every
/// locked package available, fetching only what no store holds. The warm
/// path reads two files and checks directories, nothing else.
pub fn prepare(pakfile: &Path, root: &StateDir, policy: LockPolicy) -> Result<Prepared> {
    let project = Project::open(pakfile, root.clone())?.with_policy(policy);
    // An empty environment needs no resolving (nor a repository).
    if project.pakfile.packages.is_empty() && !project.lock_path().exists() {
        return Ok(Prepared {
            sandbox: Sandbox::default(),
            fetched: false,
            wrote_lock: None,
        });
    }
    let outcome = project.lock(Update::IfNeeded)?;
    project.check_builder(&outcome.lock)?;
    let located = locate(&outcome.lock, root);
    let mut found = located.found;
    let fetched = !located.missing.is_empty();
    if fetched {
        let store = Store::open(root)?;
        let sources = Sources::from_pakfile(&project.pakfile)?;
        let bar = crate::util::progress::items(located.missing.len() as u64, "fetch and extract");
        let missing: Vec<crate::lock::LockedPackage> = located
            .missing
            .iter()
            .map(|&i| outcome.lock.packages[i].clone())
            .collect();
        let entries = sources.fetch_all(&missing, root, &store, &|| bar.inc(1));
        bar.finish_and_clear();
        for (index, entry) in located.missing.into_iter().zip(entries?) {
            found.push((index, entry.tree()));
        }
        found.sort_by_key(|(index, _)| *index);
    }
    if fetched || outcome.written {
        register_lock(root, &project.lock_path(), &outcome.lock)?;
    }
    let lowers = found
        .iter()
        .map(|(index, tree)| {
            let p = &outcome.lock.packages[*index];
            Lower::named(format!("{} {}", p.name, p.version), tree)
        })
        .collect();
    Ok(Prepared {
        sandbox: Sandbox::new(lowers),
        fetched,
        wrote_lock: outcome
            .written
            .then(|| (project.lock_path(), outcome.changes.clone())),
    })
}

pub(super) struct Located {
    /// Lock index and the package's tree.
    pub(super) found: Vec<(usize, PathBuf)>,
    /// Lock indexes of packages no store holds.
    pub(super) missing: Vec<usize>,
}

/// Where each locked package's tree is: the system store for unprivileged
/// callers when it has it (read-only use needs no copy), else the caller's.
pub(super) fn locate(lock: &Lock, root: &StateDir) -> Located {
    let own = root.store_dir();
    let system = StateDir::system_shared().store_dir();
    let shared = !rustix::process::geteuid().is_root() && system != own;
    let mut located = Located {
        found: Vec::new(),
        missing: Vec::new(),
    };
    for (index, p) in lock.packages.iter().enumerate() {
        let key = p.store_key();
        let candidates = shared
            .then(|| system.join(&key))
            .into_iter()
            .chain([own.join(&key)]);
        match candidates
            .into_iter()
            .find(|dir| dir.join(crate::packages::package::BOM_NAME).is_file())
        {
            Some(dir) => located.found.push((index, dir.join("tree"))),
            None => located.missing.push(index),
        }
    }
    located
}

pub(super) fn lock_root_name(lock_path: &Path) -> String {
    // The name `Project::fetch` uses, so the two never keep two roots.
    let abs = std::path::absolute(lock_path).unwrap_or_else(|_| lock_path.to_path_buf());
    format!("lock:{}", abs.display())
}

pub(super) fn register_lock(root: &StateDir, lock_path: &Path, lock: &Lock) -> Result<()> {
    let keys: Vec<String> = lock.packages.iter().map(|p| p.store_key()).collect();
    store::register_root(root, &lock_root_name(lock_path), &keys)
        .context("cannot record the lock as a GC root")
}
