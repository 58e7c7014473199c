//! The environments of a root: naming them, creating one (staged beside
//! its final place, so a failure leaves nothing), finding, listing and
//! removing them, and the GC roots their locks hold.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::prepare::{self, Prepared};
use super::template::{Template, render_pakfile};
use crate::lock::{Change, Lock};
use crate::project::{LockPolicy, Project, Update};
use crate::spec::pakfile::Pakfile;
use crate::state::StateDir;
use crate::store::{self, Store};
use crate::util::leftovers::{self, Temporary};

/// In an environment's directory while `pak env create` makes it.
const CREATING: &str = ".creating";

/// The environment `--user` means; its `bin/` is on `PATH` in pak images.
pub const USER_ENV: &str = "user";

/// Refuses names that could leave `envs/` or confuse a shell: letters,
/// digits, `.`, `_`, `-`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        bail!(
            "{name:?} is not a valid environment name: use up to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit (no `/`, no `..`)"
        );
    }
    Ok(())
}

/// One environment under a root.
#[derive(Debug, Clone)]
pub struct Env {
    pub name: String,
    /// Absolute, so GC roots and wrappers name it the same way from anywhere.
    pub dir: PathBuf,
    pub root: StateDir,
}

/// What `pak env list` reports.
#[derive(Debug, Clone, Serialize)]
pub struct EnvSummary {
    pub name: String,
    pub path: PathBuf,
    /// The Pakfile's requirements, as written.
    pub packages: BTreeMap<String, String>,
    /// Packages in the lock, dependencies included; `None` before the first lock.
    pub locked: Option<usize>,
    /// Why the environment cannot be used as it is, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Env {
    /// The environment `name` of `root`, whether or not it exists.
    pub fn at(root: &StateDir, name: &str) -> Result<Env> {
        check_name(name)?;
        let envs = std::path::absolute(root.envs_dir()).unwrap_or_else(|_| root.envs_dir());
        Ok(Env {
            name: name.to_string(),
            dir: envs.join(name),
            root: root.clone(),
        })
    }

    /// An existing environment.
    pub fn open(root: &StateDir, name: &str) -> Result<Env> {
        let env = Env::at(root, name)?;
        if !env.pakfile_path().is_file() {
            bail!(
                "there is no environment {name:?} (looked in {}); create it with `pak env create {name}`, or see `pak env list`",
                env.dir.display()
            );
        }
        Ok(env)
    }

    /// Serialises changes to this environment (install, uninstall, remove):
    /// an exclusive flock on its directory, held until the guard drops.
    /// Runs take no lock; they see the old lock or the new one, never a mix.
    pub fn lock(&self) -> Result<std::fs::File> {
        let dir = std::fs::File::open(&self.dir)
            .with_context(|| format!("cannot open {}", self.dir.display()))?;
        rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("cannot lock {}", self.dir.display()))?;
        // It may have been removed while we waited.
        if !self.pakfile_path().is_file() {
            bail!(
                "environment {:?} was removed meanwhile; create it again with `pak env create {}`",
                self.name,
                self.name
            );
        }
        Ok(dir)
    }

    pub fn pakfile_path(&self) -> PathBuf {
        self.dir.join("Pakfile")
    }

    pub fn lock_path(&self) -> PathBuf {
        Lock::path_for(&self.pakfile_path())
    }

    /// Wrapper scripts for the environment's commands.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// Creates the environment: its Pakfile, a lock when it has packages,
    /// the packages in the store, and its `bin/`. Nothing is left behind
    /// when any step fails.
    pub fn create(root: &StateDir, name: &str, template: &Template) -> Result<(Env, Vec<Change>)> {
        let env = Env::at(root, name)?;
        if env.interrupted() {
            // A create killed halfway; wait for its pak if it still runs.
            let guard = env.lock()?;
            if env.interrupted() {
                env.remove()?;
            }
            drop(guard);
        }
        if env.dir.exists() {
            bail!(
                "environment {name:?} already exists at {}; use it (`pak run -e {name} -- CMD`), or `pak env remove {name}` first",
                env.dir.display()
            );
        }
        let (packages, repositories, origin) = template.contents()?;
        let text = render_pakfile(name, &packages, &repositories, origin.as_deref());
        std::fs::create_dir_all(root.envs_dir()).with_context(|| {
            format!(
                "cannot create {}; choose another root with --root",
                root.envs_dir().display()
            )
        })?;
        // Built beside its final place and renamed in: a failed lock leaves
        // no half environment, and a concurrent create of the same name loses.
        // Locked from the start and for the whole create (the lock is on the
        // directory, which the rename below keeps): a live creator's
        // `.create-*` is never taken by `pak gc`, a dead one's is, and
        // another create of this name waits for it (see `interrupted`).
        let (tmp, creating) = leftovers::held(
            || {
                tempfile::Builder::new()
                    .prefix(&format!("{}{name}-", Temporary::EnvCreate.prefix()))
                    .tempdir_in(root.envs_dir())
            },
            |t| Ok((std::fs::File::open(t.path())?, t.path().to_path_buf())),
        )
        .with_context(|| format!("cannot write in {}", root.envs_dir().display()))?;
        let staged = Env {
            name: name.to_string(),
            dir: tmp.path().to_path_buf(),
            root: root.clone(),
        };
        // tempfile makes it private; an environment is no secret, and a
        // root-made one may be run by others (benchmarks run it as nobody).
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
        crate::util::fsutil::write_atomic(&staged.pakfile_path(), text.as_bytes())?;
        // Until the environment is complete: a create killed after the
        // rename below is finished by the next one, not refused. The lock
        // taken above tells a live creator.
        std::fs::write(staged.dir.join(CREATING), "")?;
        let mut changes = Vec::new();
        if !packages.is_empty() {
            let project = Project::open(&staged.pakfile_path(), root.clone())?;
            changes = project
                .lock(Update::IfNeeded)
                .with_context(|| format!("cannot create environment {name:?}"))?
                .changes;
        }
        std::fs::rename(tmp.path(), &env.dir).with_context(|| {
            format!(
                "cannot create environment {name:?} at {}",
                env.dir.display()
            )
        })?;
        let _ = tmp.keep();
        if !packages.is_empty() {
            let done = env
                .prepare(LockPolicy::Update)
                .and_then(|_| env.write_wrappers());
            if let Err(e) = done {
                let _ = env.remove();
                return Err(e.context(format!("cannot create environment {name:?}")));
            }
        } else {
            env.write_wrappers()?;
        }
        std::fs::remove_file(env.dir.join(CREATING))?;
        drop(creating);
        Ok((env, changes))
    }

    /// Whether a `pak env create` of it was interrupted (or still runs).
    pub fn interrupted(&self) -> bool {
        self.dir.join(CREATING).exists()
    }

    /// Deletes the environment and its GC root; its packages stay in the
    /// store until `pak gc`.
    pub fn remove(&self) -> Result<()> {
        store::remove_root(&self.root, &prepare::lock_root_name(&self.lock_path()))?;
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("cannot remove {}", self.dir.display()))
    }

    /// Locks if needed and makes every locked package available.
    pub fn prepare(&self, policy: LockPolicy) -> Result<Prepared> {
        prepare::prepare(&self.pakfile_path(), &self.root, policy)
            .with_context(|| format!("environment {:?} ({})", self.name, self.dir.display()))
    }

    pub fn summary(&self) -> EnvSummary {
        let mut summary = EnvSummary {
            name: self.name.clone(),
            path: self.dir.clone(),
            packages: BTreeMap::new(),
            locked: None,
            problem: None,
        };
        match Pakfile::load_unmerged(&self.pakfile_path()) {
            Ok(p) => summary.packages = p.packages,
            Err(e) => summary.problem = Some(format!("{e:#}")),
        }
        match Lock::read(&self.lock_path()) {
            Ok(lock) => summary.locked = lock.map(|l| l.packages.len()),
            Err(e) => summary.problem = Some(format!("{e:#}")),
        }
        summary
    }
}

/// Every environment of `root`, sorted by name.
pub fn list(root: &StateDir) -> Result<Vec<Env>> {
    let dir = root.envs_dir();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in rd {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if check_name(&name).is_err() {
            continue;
        }
        let env = Env::at(root, &name)?;
        if env.pakfile_path().is_file() {
            out.push(env);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Registers every environment's lock as a GC root, so `pak gc` keeps what
/// they need even if a lock was edited since its packages were fetched.
/// A broken lock stops the collection: what it needs cannot be known.
fn register_gc_roots(root: &StateDir) -> Result<()> {
    for env in list(root)? {
        let lock = Lock::read(&env.lock_path()).with_context(|| {
            format!(
                "environment {:?} has a broken lock, so `pak gc` cannot tell what it needs; fix it (`pak update --pakfile {}`) or `pak env remove {}`",
                env.name,
                env.pakfile_path().display(),
                env.name
            )
        })?;
        if let Some(lock) = lock {
            prepare::register_lock(root, &env.lock_path(), &lock)?;
        }
    }
    Ok(())
}

/// Deletes environment `name` once no install or uninstall is changing it.
pub fn remove(root: &StateDir, name: &str) -> Result<()> {
    let env = Env::open(root, name)?;
    let _guard = env.lock()?;
    env.remove()
}

/// `pak gc`: removes the store entries no GC root names, and returns their
/// keys. Every environment's lock is registered again first, since a lock
/// may have been edited since its packages were fetched; the store alone
/// cannot know that, so this is the one way to collect it.
pub fn gc(root: &StateDir) -> Result<Vec<String>> {
    register_gc_roots(root)?;
    Store::open(root)?.gc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["user", "dev-1", "a.b_c", "0"] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "../x",
            ".hidden",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
