//! An environment's `bin/`: one small script per command its packages
//! ship, each running `pak run -e NAME -- COMMAND`, so putting `bin/` on
//! `PATH` makes the environment's commands plain commands. And the other
//! side of that: the command itself must run with those directories off
//! `PATH`, or it would find its own wrapper.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Env;
use super::prepare::locate;
use crate::lock::Lock;
use crate::state::StateDir;

/// Directories whose commands get wrappers in an environment's `bin/`.
const COMMAND_DIRS: &[&str] = &["usr/bin", "bin", "usr/sbin", "sbin"];

impl Env {
    /// `bin/NAME` for each command the locked packages ship, each running
    /// `pak run -e ENV -- NAME`. Rewritten whole, so removed commands go.
    /// Returns the commands, sorted.
    pub fn write_wrappers(&self) -> Result<Vec<String>> {
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
        Ok(commands.into_iter().collect())
    }
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

pub(super) fn wrapper(pak: &Path, env: &Env, command: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
