//! User environments: "a virtualenv for system packages".
//!
//! An environment is a Pakfile and its lock kept under `<root>/envs/NAME/`
//! (`~/.local/share/pak/envs/NAME` for users, `/var/lib/pak/envs/NAME` for
//! root, which inside an image is on the writable data partition). Its
//! packages are shown over the read-only system by [`crate::env::sandbox`]; nothing
//! is ever written to the system itself.
//!
//! * `pak run` with no environment uses the Pakfile of the current directory
//!   the same way, with its lock written beside it on first use.
//! * A warm run reads the Pakfile and the lock and checks the store: it
//!   neither resolves nor touches the network while the lock still fits.
//! * An unprivileged caller also reads package trees from the system store
//!   (`/var/lib/pak/store`) when it holds them, so nothing is copied twice.
//! * Each environment gets `bin/`, one small wrapper script per command its
//!   packages ship, so putting `envs/user/bin` on `PATH` makes the `user`
//!   environment's commands plain commands (`pak install --user`).
//! * Every environment's lock is a GC root: `pak gc` keeps what it needs.

pub mod sandbox;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::lock::{Change, Lock};
use crate::project::{LockPolicy, Project, Update};
use crate::sources::Sources;
use crate::spec::pakfile::{Pakfile, RepositorySpec};
use crate::state::StateDir;
use crate::store::{self, Store};
use sandbox::{Lower, Sandbox};

/// The environment `--user` means; its `bin/` is on `PATH` in pak images.
pub const USER_ENV: &str = "user";

/// The store root uses; unprivileged callers read it too.
pub const SYSTEM_ROOT: &str = "/var/lib/pak";

/// Overrides [`SYSTEM_ROOT`] (tests, and hosts that keep it elsewhere).
pub const SYSTEM_ROOT_VAR: &str = "PAK_SYSTEM_ROOT";

fn system_store() -> PathBuf {
    std::env::var_os(SYSTEM_ROOT_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SYSTEM_ROOT))
        .join("store")
}

/// Repositories for new environments on a system (an image) when the
/// current directory has no Pakfile: the administrator's list first, then
/// the one the image ships.
pub const SYSTEM_REPOSITORY_FILES: &[&str] = &[
    "/etc/pak/repositories.toml",
    "/usr/lib/pak/repositories.toml",
];

/// Environment variable set inside an environment to its name.
pub const ENV_VAR: &str = "PAK_ENV";

/// Directories whose commands get wrappers in an environment's `bin/`.
const COMMAND_DIRS: &[&str] = &["usr/bin", "bin", "usr/sbin", "sbin"];

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

/// Where a new environment's packages and repositories come from.
#[derive(Debug, Clone)]
pub enum Template {
    /// Requirements and repositories of this Pakfile (profiles expanded).
    Pakfile(PathBuf),
    /// No packages; repositories from [`default_repositories`].
    Empty { cwd_pakfile: PathBuf },
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
        if env.dir.exists() {
            bail!(
                "environment {name:?} already exists at {}; use it (`pak run -e {name} -- CMD`), or `pak env remove {name}` first",
                env.dir.display()
            );
        }
        let (packages, repositories, origin) = match template {
            Template::Pakfile(path) => {
                let from = Pakfile::load(path)?;
                let repos = absolute_repositories(&from.repository, &from.dir)
                    .with_context(|| format!("repositories of {}", path.display()))?;
                let origin = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                (from.packages, repos, Some(origin))
            }
            Template::Empty { cwd_pakfile } => {
                let (repos, origin) = default_repositories(cwd_pakfile)?;
                (BTreeMap::new(), repos, origin)
            }
        };
        let text = render_pakfile(name, &packages, &repositories, origin.as_deref());
        std::fs::create_dir_all(root.envs_dir()).with_context(|| {
            format!(
                "cannot create {}; choose another root with --root",
                root.envs_dir().display()
            )
        })?;
        // Built beside its final place and renamed in: a failed lock leaves
        // no half environment, and a concurrent create of the same name loses.
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".create-{name}-"))
            .tempdir_in(root.envs_dir())
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
        Ok((env, changes))
    }

    /// Deletes the environment and its GC root; its packages stay in the
    /// store until `pak gc`.
    pub fn remove(&self) -> Result<()> {
        store::remove_root(&self.root, &lock_root_name(&self.lock_path()))?;
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("cannot remove {}", self.dir.display()))
    }

    /// Locks if needed and makes every locked package available.
    pub fn prepare(&self, policy: LockPolicy) -> Result<Prepared> {
        prepare(&self.pakfile_path(), &self.root, policy)
            .with_context(|| format!("environment {:?} ({})", self.name, self.dir.display()))
    }

    /// `bin/NAME` for each command the locked packages ship, each running
    /// `pak run -e ENV -- NAME`. Rewritten whole, so removed commands go.
    pub fn write_wrappers(&self) -> Result<()> {
        let pak = crate::sources::selfpkg::exe()?;
        let commands = match Lock::read(&self.lock_path())? {
            Some(lock) => commands_of(&locate(&lock, &self.root).found)?,
            None => BTreeSet::new(),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".bin-")
            .tempdir_in(&self.dir)
            .with_context(|| format!("cannot write in {}", self.dir.display()))?;
        for command in &commands {
            let path = tmp.path().join(command);
            std::fs::write(&path, wrapper(&pak, self, command))
                .with_context(|| format!("cannot write {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
        let bin = self.bin_dir();
        let old = self.dir.join(".bin-old");
        let _ = std::fs::remove_dir_all(&old);
        match std::fs::rename(&bin, &old) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot replace {}", bin.display()));
            }
            _ => {}
        }
        std::fs::rename(tmp.path(), &bin)
            .with_context(|| format!("cannot write {}", bin.display()))?;
        let _ = tmp.keep();
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
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
pub fn register_gc_roots(root: &StateDir) -> Result<usize> {
    let envs = list(root)?;
    for env in &envs {
        let lock = Lock::read(&env.lock_path()).with_context(|| {
            format!(
                "environment {:?} has a broken lock, so `pak gc` cannot tell what it needs; fix it (`pak update --pakfile {}`) or `pak env remove {}`",
                env.name,
                env.pakfile_path().display(),
                env.name
            )
        })?;
        if let Some(lock) = lock {
            register_lock(root, &env.lock_path(), &lock)?;
        }
    }
    Ok(envs.len())
}

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
        for index in located.missing {
            let entry = sources.fetch(&outcome.lock.packages[index], root, &store)?;
            found.push((index, entry.tree()));
            bar.inc(1);
        }
        bar.finish_and_clear();
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

struct Located {
    /// Lock index and the package's tree.
    found: Vec<(usize, PathBuf)>,
    /// Lock indexes of packages no store holds.
    missing: Vec<usize>,
}

/// Where each locked package's tree is: the system store for unprivileged
/// callers when it has it (read-only use needs no copy), else the caller's.
fn locate(lock: &Lock, root: &StateDir) -> Located {
    let own = root.store_dir();
    let system = system_store();
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

fn lock_root_name(lock_path: &Path) -> String {
    // The name `Project::fetch` uses, so the two never keep two roots.
    let abs = std::path::absolute(lock_path).unwrap_or_else(|_| lock_path.to_path_buf());
    format!("lock:{}", abs.display())
}

fn register_lock(root: &StateDir, lock_path: &Path, lock: &Lock) -> Result<()> {
    let keys: Vec<String> = lock.packages.iter().map(|p| p.store_key()).collect();
    store::register_root(root, &lock_root_name(lock_path), &keys)
        .context("cannot record the lock as a GC root")
}

/// Names of the commands the trees ship, for wrappers.
fn commands_of(found: &[(usize, PathBuf)]) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for (_, tree) in found {
        for dir in COMMAND_DIRS {
            let dir = tree.join(dir);
            // A merged-/usr package may ship `bin` as a symlink to `usr/bin`.
            if std::fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
                continue;
            }
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
            };
            for entry in rd {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    continue;
                }
                let name = entry.file_name();
                if let Some(name) = name.to_str().filter(|n| safe_command_name(n)) {
                    out.insert(name.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// A name a wrapper can carry as a file name and a shell word.
fn safe_command_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+@:,=".contains(&b))
}

fn wrapper(pak: &Path, env: &Env, command: &str) -> String {
    format!(
        "#!/bin/sh\n# {command} from pak environment {name:?}; rewritten by `pak install`/`pak uninstall`.\nexec {pak} --root {root} run -e {name} -- {command} \"$@\"\n",
        name = env.name,
        pak = shell_quote(pak.as_os_str()),
        root = shell_quote(
            std::path::absolute(env.root.dir())
                .unwrap_or_else(|_| env.root.dir().to_path_buf())
                .as_os_str()
        ),
    )
}

fn shell_quote(s: &OsStr) -> String {
    let s = String::from_utf8_lossy(s.as_bytes());
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `PATH` without the `bin/` directories of this root's environments: their
/// wrappers run `pak run`, which would find the wrapper again instead of the
/// command inside the environment.
pub fn path_without_wrappers(root: &StateDir, path: &OsStr) -> OsString {
    let envs = std::path::absolute(root.envs_dir()).unwrap_or_else(|_| root.envs_dir());
    let kept: Vec<PathBuf> = std::env::split_paths(path)
        .filter(|dir| {
            let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            !abs.starts_with(&envs)
        })
        .collect();
    std::env::join_paths(kept).unwrap_or_else(|_| path.to_os_string())
}

/// The repositories of a new, empty environment: the Pakfile in the current
/// directory if there is one (a project's environment uses the project's
/// repositories), else the system's list (see [`SYSTEM_REPOSITORY_FILES`]),
/// else none. Returns where they came from.
pub fn default_repositories(cwd_pakfile: &Path) -> Result<(Vec<RepositorySpec>, Option<PathBuf>)> {
    if cwd_pakfile.is_file() {
        let p = Pakfile::load_unmerged(cwd_pakfile)?;
        let repos = absolute_repositories(&p.repository, &p.dir)
            .with_context(|| format!("repositories of {}", cwd_pakfile.display()))?;
        let origin = std::path::absolute(cwd_pakfile).unwrap_or_else(|_| cwd_pakfile.into());
        return Ok((repos, Some(origin)));
    }
    for file in SYSTEM_REPOSITORY_FILES {
        let path = Path::new(file);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let list: RepositoryList = toml::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid list of [[repository]] entries",
                path.display()
            )
        })?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let repos = absolute_repositories(&list.repository, dir)
            .with_context(|| format!("repositories of {}", path.display()))?;
        return Ok((repos, Some(path.to_path_buf())));
    }
    Ok((Vec::new(), None))
}

/// `/etc/pak/repositories.toml`: `[[repository]]` entries as in a Pakfile.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryList {
    #[serde(default)]
    repository: Vec<RepositorySpec>,
}

/// Repositories made independent of the file they came from: directory
/// URLs made absolute, key files replaced by the key text.
fn absolute_repositories(repos: &[RepositorySpec], dir: &Path) -> Result<Vec<RepositorySpec>> {
    repos
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if let Some(url) = &r.url
                && !url.contains("://")
            {
                r.url = Some(dir.join(url).display().to_string());
            }
            if let Some(key) = &r.key {
                let public = crate::sources::key::PublicKey::from_pakfile_field(key, dir)
                    .with_context(|| format!("repository {:?}", r.name))?;
                r.key = Some(public.to_text());
            }
            Ok(r)
        })
        .collect()
}

fn render_pakfile(
    name: &str,
    packages: &BTreeMap<String, String>,
    repositories: &[RepositorySpec],
    origin: Option<&Path>,
) -> String {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = format!(
        "# pak environment {name:?}. `pak install -e {name} PKG` and `pak uninstall -e {name} PKG`\n# edit [packages] and keep the rest of this file, comments included.\n"
    );
    if let Some(origin) = origin {
        out.push_str(&format!(
            "# Repositories taken from {} when it was created.\n",
            origin.display()
        ));
    }
    out.push_str(&format!(
        "\n[system]\nname = {}\narch = {}\n\n[packages]\n",
        q(name),
        q(std::env::consts::ARCH)
    ));
    for (pkg, req) in packages {
        out.push_str(&format!("{} = {}\n", toml_key(pkg), q(req)));
    }
    if repositories.is_empty() {
        out.push_str(
            "\n# No repository yet: add a [[repository]] (name, url, key) to install packages.\n",
        );
    }
    for r in repositories {
        out.push_str(&format!(
            "\n[[repository]]\nname = {}\nkind = {}\n",
            q(&r.name),
            q(r.kind.as_str())
        ));
        if let Some(url) = &r.url {
            out.push_str(&format!("url = {}\n", q(url)));
        }
        if let Some(key) = &r.key {
            out.push_str(&format!("key = {}\n", q(key.trim_end())));
        }
    }
    out
}

fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        name.to_string()
    } else {
        toml::Value::String(name.to_string()).to_string()
    }
}

/// `PKG` or `PKG==VERSION` as a Pakfile requirement.
pub fn parse_spec(spec: &str) -> Result<(String, String)> {
    let (name, req) = match spec.split_once("==") {
        Some((name, version)) if !version.trim().is_empty() => {
            (name.trim(), format!("= {}", version.trim()))
        }
        Some(_) => bail!("{spec:?}: give a version after `==`, e.g. {spec}1.0"),
        None => (spec.trim(), "*".to_string()),
    };
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+:".contains(&b));
    if !ok {
        bail!("{spec:?} is not a package name: use NAME or NAME==VERSION");
    }
    crate::packages::requirement::parse_root(name, &req).with_context(|| format!("{spec:?}"))?;
    Ok((name.to_string(), req))
}

/// What `pak install`/`pak uninstall` did to the lock.
#[derive(Debug)]
pub struct Edit {
    pub changes: Vec<Change>,
}

/// Adds (or changes) `name = req` in the Pakfile's [packages], re-locks and
/// fetches. On any failure the Pakfile and lock are put back byte for byte.
pub fn install(pakfile: &Path, root: &StateDir, name: &str, req: &str) -> Result<Edit> {
    edit(pakfile, root, name, Some(req))
}

/// Removes `name` from the Pakfile's [packages], re-locks (keeping every
/// other version) and drops what nothing needs any more.
pub fn uninstall(pakfile: &Path, root: &StateDir, name: &str) -> Result<Edit> {
    let current = Pakfile::load_unmerged(pakfile)?;
    if !current.packages.contains_key(name) {
        let listed: Vec<&str> = current.packages.keys().map(String::as_str).collect();
        bail!(
            "{name} is not installed in {}: its [packages] lists {}",
            pakfile.display(),
            if listed.is_empty() {
                "nothing".to_string()
            } else {
                listed.join(", ")
            }
        );
    }
    edit(pakfile, root, name, None)
}

fn edit(pakfile: &Path, root: &StateDir, name: &str, req: Option<&str>) -> Result<Edit> {
    let old_text = std::fs::read_to_string(pakfile)
        .with_context(|| format!("cannot read {}", pakfile.display()))?;
    let lock_path = Lock::path_for(pakfile);
    let old_lock = match std::fs::read(&lock_path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", lock_path.display())),
    };
    // A broken lock is reported as such, not silently replaced.
    let locked = Lock::read(&lock_path)?;
    let before = Pakfile::parse(&old_text)
        .with_context(|| format!("{} is not a valid Pakfile", pakfile.display()))?;
    let new_text = edit_packages(&old_text, name, req)
        .with_context(|| format!("cannot edit [packages] of {}", pakfile.display()))?;
    crate::util::fsutil::write_atomic(pakfile, new_text.as_bytes())?;
    let restore = || -> Result<()> {
        crate::util::fsutil::write_atomic(pakfile, old_text.as_bytes())?;
        match &old_lock {
            Some(bytes) => crate::util::fsutil::write_atomic(&lock_path, bytes),
            None => match std::fs::remove_file(&lock_path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
        }
    };
    let result = (|| -> Result<Edit> {
        let project = Project::open(pakfile, root.clone())?;
        // The old lock may still satisfy the new Pakfile (a package removed,
        // or a pin loosened to "*"), so the named package is re-resolved to
        // what the new requirement picks, keeping every other version.
        let changed = before.packages.get(name).map(String::as_str) != req;
        let update = match &locked {
            Some(lock) if changed && lock.get(name).is_some() => Update::Only(name.to_string()),
            _ => Update::IfNeeded,
        };
        let outcome = project.lock(update)?;
        prepare(pakfile, root, LockPolicy::Update)?;
        // prepare registers only what it fetched or locked itself; the new
        // lock may need nothing new and still name other packages.
        register_lock(root, &project.lock_path(), &outcome.lock)?;
        Ok(Edit {
            changes: outcome.changes,
        })
    })();
    match result {
        Ok(edit) => Ok(edit),
        Err(err) => {
            if let Err(undo) = restore() {
                return Err(err.context(format!(
                    "and restoring {} failed too: {undo:#}",
                    pakfile.display()
                )));
            }
            Err(err)
        }
    }
}

/// Sets or removes one requirement in the text of a Pakfile, touching no
/// other line, so comments and layout survive. The result is checked by
/// parsing it: any layout this does not understand is an error, not a guess.
pub fn edit_packages(text: &str, name: &str, req: Option<&str>) -> Result<String> {
    let before = Pakfile::parse(text)?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let header = lines.iter().position(|l| is_header(l, "packages"));
    let new_line = req.map(|r| {
        format!(
            "{} = {}",
            toml_key(name),
            toml::Value::String(r.to_string())
        )
    });
    match header {
        Some(h) => {
            let end = (h + 1..lines.len())
                .find(|&i| lines[i].trim_start().starts_with('['))
                .unwrap_or(lines.len());
            let existing = (h + 1..end).find(|&i| line_key(&lines[i]).as_deref() == Some(name));
            match (existing, new_line) {
                (Some(i), Some(line)) => lines[i] = line,
                (Some(i), None) => {
                    lines.remove(i);
                }
                (None, Some(line)) => {
                    // After the last requirement; in a section with none,
                    // after its leading comments, which describe it.
                    let last_key = (h + 1..end).rev().find(|&i| line_key(&lines[i]).is_some());
                    let last_text = (h + 1..end).rev().find(|&i| !lines[i].trim().is_empty());
                    lines.insert(last_key.or(last_text).unwrap_or(h) + 1, line);
                }
                (None, None) => {}
            }
        }
        None => {
            if let Some(line) = new_line {
                if lines.last().is_some_and(|l| !l.trim().is_empty()) {
                    lines.push(String::new());
                }
                lines.push("[packages]".into());
                lines.push(line);
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    let after = Pakfile::parse(&out).context("the edited Pakfile would not parse")?;
    let mut expected = before.packages.clone();
    match req {
        Some(r) => {
            expected.insert(name.to_string(), r.to_string());
        }
        None => {
            expected.remove(name);
        }
    }
    if after.packages != expected || after.repository != before.repository {
        bail!("its layout is unusual (e.g. an inline `packages = {{...}}` table); edit it by hand");
    }
    Ok(out)
}

fn is_header(line: &str, table: &str) -> bool {
    let code = line.split('#').next().unwrap_or("").trim();
    code.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .is_some_and(|s| s.trim() == table)
}

/// The key of a `key = value` line (bare or quoted), if it is one.
fn line_key(line: &str) -> Option<String> {
    let t = line.trim_start();
    let (key, rest) = if let Some(q) = t.strip_prefix('"') {
        let end = q.find('"')?;
        (q[..end].to_string(), &q[end + 1..])
    } else if let Some(q) = t.strip_prefix('\'') {
        let end = q.find('\'')?;
        (q[..end].to_string(), &q[end + 1..])
    } else {
        let end = t
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(t.len());
        if end == 0 {
            return None;
        }
        (t[..end].to_string(), &t[end..])
    };
    rest.trim_start().starts_with('=').then_some(key)
}

/// Creates a throwaway environment for `pak taste`: a Pakfile asking for
/// `spec`, in a temporary directory that is deleted with the returned guard.
pub struct Taste {
    dir: tempfile::TempDir,
    root: StateDir,
}

impl Taste {
    pub fn new(root: &StateDir, spec: &str, cwd_pakfile: &Path) -> Result<Taste> {
        let (name, req) = parse_spec(spec)?;
        let (repos, origin) = default_repositories(cwd_pakfile)?;
        if repos.is_empty() {
            bail!(
                "no repository to take {name} from: run `pak taste` beside a Pakfile that names repositories, or list them in {}",
                SYSTEM_REPOSITORY_FILES[0]
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("pak-taste-")
            .tempdir()
            .context("cannot create a temporary directory for pak taste")?;
        let packages = BTreeMap::from([(name, req)]);
        let text = render_pakfile("taste", &packages, &repos, origin.as_deref());
        crate::util::fsutil::write_atomic(&dir.path().join("Pakfile"), text.as_bytes())?;
        Ok(Taste {
            dir,
            root: root.clone(),
        })
    }

    pub fn prepare(&self) -> Result<Prepared> {
        prepare(
            &self.dir.path().join("Pakfile"),
            &self.root,
            LockPolicy::Update,
        )
    }
}

impl Drop for Taste {
    fn drop(&mut self) {
        let lock = Lock::path_for(&self.dir.path().join("Pakfile"));
        let _ = store::remove_root(&self.root, &lock_root_name(&lock));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAKFILE: &str = "# my env\n[system]\nname = \"x\"\n\n[packages]\n# tools I like\njq = \"*\" # json\n\"g++\" = \">= 12\"\n\n[[repository]]\nname = \"debian\"\nkind = \"apt\"\n";

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

    #[test]
    fn specs() {
        assert_eq!(parse_spec("jq").unwrap(), ("jq".into(), "*".into()));
        assert_eq!(
            parse_spec("jq==1.6-2").unwrap(),
            ("jq".into(), "= 1.6-2".into())
        );
        assert!(parse_spec("jq==").is_err());
        assert!(parse_spec("../x").is_err());
        assert!(parse_spec("").is_err());
    }

    #[test]
    fn install_edits_keep_comments() {
        let added = edit_packages(PAKFILE, "hello", Some("= 1.0")).unwrap();
        assert!(
            added.contains(
                "# tools I like\njq = \"*\" # json\n\"g++\" = \">= 12\"\nhello = \"= 1.0\"\n"
            ),
            "{added}"
        );
        assert!(added.starts_with("# my env\n"));
        let changed = edit_packages(&added, "jq", Some(">= 1.7")).unwrap();
        assert!(changed.contains("jq = \">= 1.7\"\n"), "{changed}");
        let removed = edit_packages(&changed, "g++", None).unwrap();
        assert!(!removed.contains("g++"), "{removed}");
        assert!(removed.contains("# tools I like"));
        assert_eq!(
            Pakfile::parse(&removed).unwrap().packages,
            BTreeMap::from([
                ("jq".to_string(), ">= 1.7".to_string()),
                ("hello".to_string(), "= 1.0".to_string())
            ])
        );
    }

    #[test]
    fn install_into_a_pakfile_without_packages() {
        let text = "[system]\nname = \"x\"\n";
        let out = edit_packages(text, "jq", Some("*")).unwrap();
        assert_eq!(out, "[system]\nname = \"x\"\n\n[packages]\njq = \"*\"\n");
        assert!(edit_packages("packages = { a = \"*\" }\n", "jq", Some("*")).is_err());
    }

    #[test]
    fn path_loses_only_environment_bins() {
        let root = StateDir::new("/data/pak");
        let path = OsStr::new("/data/pak/envs/user/bin:/usr/bin:/data/pak/store:/bin");
        assert_eq!(
            path_without_wrappers(&root, path),
            OsString::from("/usr/bin:/data/pak/store:/bin")
        );
    }

    #[test]
    fn wrappers_quote_their_paths() {
        let env = Env::at(&StateDir::new("/r o'ot"), "user").unwrap();
        let text = wrapper(Path::new("/usr/bin/pak"), &env, "jq");
        assert!(
            text.ends_with("exec '/usr/bin/pak' --root '/r o'\\''ot' run -e user -- jq \"$@\"\n"),
            "{text}"
        );
    }
}
