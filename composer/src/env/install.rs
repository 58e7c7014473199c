//! `pak install` and `pak uninstall` as transactions: find (or, for
//! `--user`, create) the environment, hold its lock, edit one line of its
//! Pakfile, re-lock, fetch and rewrite its `bin/`; on any failure, put the
//! Pakfile and lock back as they were and drop an environment made for it.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::prepare;
use super::registry::{Env, USER_ENV};
use super::template::Template;
use crate::lock::{Change, Lock};
use crate::project::{LockPolicy, Project, Update};
use crate::spec::pakfile::Pakfile;
use crate::state::StateDir;

/// Which Pakfile `pak install`/`pak uninstall` edit.
#[derive(Debug, Clone)]
pub enum Target {
    /// A project's Pakfile (`./Pakfile` unless told otherwise).
    Pakfile(PathBuf),
    /// An existing environment.
    Env(String),
    /// The [`USER_ENV`] environment. The first install creates it, with the
    /// repositories an empty environment takes from `cwd_pakfile` or the
    /// system ([`Template::Empty`]).
    User { cwd_pakfile: PathBuf },
}

/// What `pak install`/`pak uninstall` did.
#[derive(Debug)]
pub struct Edit {
    /// How the lock changed.
    pub changes: Vec<Change>,
    /// What was edited, as messages name it: `environment NAME`, or the
    /// Pakfile's path.
    pub target: String,
    /// The environment edited, if one was, and the commands now in its `bin/`.
    pub env: Option<(Env, Vec<String>)>,
}

/// Adds (or changes) the requirement `spec` (`PKG` or `PKG==VERSION`) in
/// the target's [packages], re-locks and fetches. On failure nothing is
/// changed, and a `user` environment this call created is removed again.
pub fn install(root: &StateDir, target: &Target, spec: &str) -> Result<Edit> {
    let (name, req) = parse_spec(spec)?;
    let opened = Opened::new(root, target, true)?;
    let _guard = opened.env.as_ref().map(Env::lock).transpose()?;
    let result = edit_pakfile(&opened.pakfile, root, &name, Some(&req))
        .and_then(|changes| opened.finish(changes))
        .with_context(|| {
            format!(
                "cannot install {spec} into {}; nothing was changed",
                opened.target
            )
        });
    if result.is_err()
        && opened.created
        && let Some(env) = &opened.env
    {
        let _ = env.remove();
    }
    result
}

/// Removes `name` from the target's [packages], re-locks (keeping every
/// other version) and drops what nothing needs any more.
pub fn uninstall(root: &StateDir, target: &Target, name: &str) -> Result<Edit> {
    let opened = Opened::new(root, target, false)?;
    let _guard = opened.env.as_ref().map(Env::lock).transpose()?;
    check_installed(&opened.pakfile, name)
        .and_then(|()| edit_pakfile(&opened.pakfile, root, name, None))
        .and_then(|changes| opened.finish(changes))
        .with_context(|| format!("cannot uninstall {name} from {}", opened.target))
}

/// A [`Target`] found (or created).
struct Opened {
    env: Option<Env>,
    /// Whether this call created `env`, so a failed install removes it.
    created: bool,
    pakfile: PathBuf,
    /// As messages name it.
    target: String,
}

impl Opened {
    fn new(root: &StateDir, target: &Target, create_user: bool) -> Result<Opened> {
        let (env, created) = match target {
            Target::Pakfile(pakfile) => {
                return Ok(Opened {
                    env: None,
                    created: false,
                    pakfile: pakfile.clone(),
                    target: pakfile.display().to_string(),
                });
            }
            Target::Env(name) => (Env::open(root, name)?, false),
            Target::User { cwd_pakfile } => {
                let env = Env::at(root, USER_ENV)?;
                // An interrupted first install is started again.
                if env.pakfile_path().is_file() && !(create_user && env.interrupted()) {
                    (env, false)
                } else if !create_user {
                    bail!(
                        "there is no `user` environment yet (looked in {}); `pak install --user PKG` creates it",
                        env.dir.display()
                    );
                } else {
                    let template = Template::Empty {
                        cwd_pakfile: cwd_pakfile.clone(),
                    };
                    (Env::create(root, USER_ENV, &template)?.0, true)
                }
            }
        };
        Ok(Opened {
            pakfile: env.pakfile_path(),
            target: format!("environment {}", env.name),
            env: Some(env),
            created,
        })
    }

    /// The environment's `bin/` follows its new lock.
    fn finish(&self, changes: Vec<Change>) -> Result<Edit> {
        let env = match &self.env {
            Some(env) => Some((env.clone(), env.write_wrappers()?)),
            None => None,
        };
        Ok(Edit {
            changes,
            target: self.target.clone(),
            env,
        })
    }
}

fn check_installed(pakfile: &Path, name: &str) -> Result<()> {
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
    Ok(())
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

/// Sets (`Some`) or removes (`None`) one requirement, re-locks and fetches.
/// On any failure the Pakfile and lock are put back byte for byte.
fn edit_pakfile(
    pakfile: &Path,
    root: &StateDir,
    name: &str,
    req: Option<&str>,
) -> Result<Vec<Change>> {
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
    let new_text = crate::spec::edit::edit_packages(&old_text, name, req)
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
    let result = (|| -> Result<Vec<Change>> {
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
        prepare::prepare(pakfile, root, LockPolicy::Update)?;
        // prepare registers only what it fetched or locked itself; the new
        // lock may need nothing new and still name other packages.
        prepare::register_lock(root, &project.lock_path(), &outcome.lock)?;
        Ok(outcome.changes)
    })();
    match result {
        Ok(changes) => Ok(changes),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
