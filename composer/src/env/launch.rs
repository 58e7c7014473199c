//! pak becoming the command: what the command sees besides the packages
//! (`$PAK_ENV`, a `PATH` without environment wrappers), and the rule that
//! an unprivileged user namespace needs a single-threaded caller, which
//! after a fetch means running pak again from the start.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;

use anyhow::{Result, bail};

use super::prepare::Prepared;
use super::sandbox::SandboxError;
use super::wrappers::path_without_wrappers;
use crate::state::StateDir;

/// Environment variable set inside an environment to its name.
pub const ENV_VAR: &str = "PAK_ENV";

/// Set on the second start, so a fetch that somehow happens again cannot
/// loop.
const REEXEC_VAR: &str = "PAK_RUN_REEXEC";

/// Replaces this process by `program` in the prepared sandbox, with
/// `$PAK_ENV` set to `name` (when given) and the `extra` variables.
/// Returns only when that failed: `Err` when pak could not start itself
/// again, else the sandbox's error, for the caller to report and exit with
/// [`SandboxError::exit_code`].
pub fn exec(
    prepared: Prepared,
    root: &StateDir,
    name: Option<&str>,
    program: &OsStr,
    args: &[OsString],
    extra: &[(&str, OsString)],
) -> Result<SandboxError> {
    // Fetching may have started threads (progress, downloads), and an
    // unprivileged user namespace needs a single-threaded caller; run
    // again from the start, which finds everything in the store now.
    if prepared.fetched
        && !rustix::process::geteuid().is_root()
        && threads() > 1
        && std::env::var_os(REEXEC_VAR).is_none()
    {
        let mut again = std::process::Command::new("/proc/self/exe");
        again
            .arg0(std::env::args_os().next().unwrap_or_else(|| "pak".into()))
            .args(std::env::args_os().skip(1))
            .env(REEXEC_VAR, "1");
        let err = again.exec();
        bail!("cannot run pak again after fetching: {err}");
    }
    set_env(root, name, extra);
    match prepared.sandbox.exec(program, args) {
        Ok(never) => match never {},
        Err(err) => Ok(err),
    }
}

/// What the command sees: `$PAK_ENV`, and a `PATH` without environment
/// wrappers (they would call `pak run` again instead of the command).
pub(super) fn set_env(root: &StateDir, name: Option<&str>, extra: &[(&str, OsString)]) {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let path = path_without_wrappers(root, &path);
    // SAFETY: no other thread reads the environment now: `exec` makes an
    // unprivileged caller single-threaded first, and the worker threads a
    // fetch may leave behind otherwise are idle.
    unsafe {
        std::env::set_var("PATH", path);
        std::env::remove_var(REEXEC_VAR);
        if let Some(name) = name {
            std::env::set_var(ENV_VAR, name);
        }
        for (k, v) in extra {
            std::env::set_var(k, v);
        }
    }
}

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(1)
}
