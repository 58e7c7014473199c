//! Run a command with package trees shown over the read-only system, unprivileged.
//!
//! How it works, and why:
//!
//! * The process leaves the host's mount namespace. An unprivileged caller
//!   also enters a new user namespace that maps only its own uid and gid
//!   (setgroups denied first, as the kernel requires), so files it creates
//!   in its home or working directory belong to it, not to a fake root. A
//!   caller that already holds `CAP_SYS_ADMIN` (root) needs no user
//!   namespace: a plain mount namespace works even where user namespaces are
//!   disabled.
//! * Mounts are made private so nothing propagates back to the host.
//! * For every top-level directory the trees provide (`usr`, `etc`, `opt`,
//!   ...) an overlay is mounted *in place* over that directory, with the
//!   trees' copies stacked over the host's own: an overlay whose lowest
//!   layer is `/` fails inside a user namespace because `/` has submounts,
//!   while one over `/usr` does not. Without an upper layer the overlays are
//!   read-only: writing under `/usr` fails with `EROFS` and nothing reaches
//!   the system.
//! * Merged-/usr hosts make `/bin`, `/sbin`, `/lib`, `/lib64` symlinks into
//!   `/usr`. A tree that ships `bin/x` as a real directory gets a second
//!   overlay, in place over `/usr/bin` (mounted after the `/usr` one), whose
//!   extra layers are the trees' `bin` directories. So `bin/x` and `/usr/bin/x`
//!   both work inside, the way they do for the host's own files. When a tree
//!   ships both `usr/bin/x` and `bin/x`, the `bin/x` copy wins.
//! * An overlay takes the directory it covers without the mounts beneath it
//!   (in a user namespace the kernel refuses it; as root it would hide them).
//!   So a directory with mounts below, such as `/usr` with `/usr/local`
//!   mounted, is covered one subdirectory at a time, down to where no mount
//!   is in the way; a mount point the trees provide gets its own overlay.
//! * Runtime and state directories (`/var`, `/run`, `/tmp`, `/home`, `/dev`,
//!   ...) are never overlaid: the command must see and write the real ones.
//!   What trees ship there is reported in [`Layout::skipped`].
//! * Layers are passed to overlayfs as `/proc/self/fd/N`, opened after the
//!   namespace exists: the kernel caps mount options at one page, which long
//!   store paths would exhaust after a few dozen packages, and store paths
//!   could contain the `:` and `,` that overlayfs treats as separators.
//! * The working directory is re-entered by path once the overlays are in
//!   place, so a command started in `/usr/share/x` sees the merged view.
//!
//! [`Sandbox::exec`] replaces the calling process (what `pak run` wants:
//! stdin, stdout, stderr, exit status and signals pass through untouched, and
//! no process is left in between). [`Sandbox::run`] forks a child for callers
//! that must continue afterwards (`pak taste`, tests).
//!
//! The steps between `fork` and `exec` run only system calls over data built
//! beforehand: a child forked from a multi-threaded parent must not allocate
//! or take locks.
//!
//! The parts: `layout` decides what to mount from the trees and the host's
//! mounts (plain files, testable without privileges); `exec` enters the
//! namespaces, mounts and execs, in the child or in place; `error` turns a
//! failed step into a [`SandboxError`] that says what to do.

mod error;
mod exec;
mod layout;

use std::convert::Infallible;
use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use error::Context;
pub use error::SandboxError;
use exec::Isolation;
pub use layout::{Layout, Overlay};

/// One package tree: a directory laid out like a root (`usr/bin/jq`, `etc/...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lower {
    /// What messages call it, e.g. `jq 1.6-2`.
    pub name: String,
    pub path: PathBuf,
}

impl Lower {
    /// A tree named after its directory.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Lower { name, path }
    }

    pub fn named(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Lower {
            name: name.into(),
            path: path.into(),
        }
    }
}

/// A set of package trees to show over the system. Later trees win over
/// earlier ones; every tree wins over the system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    pub lowers: Vec<Lower>,
}

impl Sandbox {
    pub fn new(lowers: Vec<Lower>) -> Self {
        Sandbox { lowers }
    }

    /// Trees named after their directories.
    pub fn from_paths<P: Into<PathBuf>>(paths: impl IntoIterator<Item = P>) -> Self {
        Sandbox::new(paths.into_iter().map(Lower::new).collect())
    }

    /// The overlays this sandbox mounts on this host.
    pub fn layout(&self) -> Result<Layout, SandboxError> {
        layout::plan_layout(
            &self.lowers,
            Path::new("/"),
            &layout::current_mount_points(),
        )
    }

    /// Replace the calling process by `cmd` inside the sandbox. `cmd` is
    /// looked up in `PATH` inside, so commands from the trees are found.
    /// Without `CAP_SYS_ADMIN` the calling process must be single-threaded
    /// (the kernel's rule for entering a user namespace).
    pub fn exec(&self, cmd: &OsStr, args: &[OsString]) -> Result<Infallible, SandboxError> {
        Err(exec::exec(&self.context(cmd)?, cmd, args))
    }

    /// Run `cmd` inside the sandbox in a child process with this process's
    /// stdin, stdout and stderr, and wait for it. Like system(3), SIGINT and
    /// SIGQUIT are ignored here while the child runs, so a Ctrl-C meant for
    /// an interactive child does not leave it orphaned.
    pub fn run(&self, cmd: &OsStr, args: &[OsString]) -> Result<ExitStatus, SandboxError> {
        exec::run(&self.context(cmd)?, cmd, args)
    }

    fn context(&self, cmd: &OsStr) -> Result<Context, SandboxError> {
        Ok(Context {
            layout: self.layout()?,
            isolation: Isolation::detect(),
            cmd: cmd.to_string_lossy().into_owned(),
            packages: self.package_list(),
        })
    }

    fn package_list(&self) -> String {
        if self.lowers.is_empty() {
            return "none".to_string();
        }
        self.lowers
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How a command ended, in words: "exited with status 42",
/// "terminated by signal 15 (SIGTERM)".
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => {
            let core = if status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            };
            format!(
                "terminated by signal {signal} ({}){core}",
                signal_name(signal)
            )
        }
        _ => format!("ended with raw status {}", status.into_raw()),
    }
}

pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "unknown signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_described_for_people() {
        assert_eq!(
            describe_status(ExitStatus::from_raw(42 << 8)),
            "exited with status 42"
        );
        assert_eq!(
            describe_status(ExitStatus::from_raw(libc::SIGTERM)),
            "terminated by signal 15 (SIGTERM)"
        );
    }
}
