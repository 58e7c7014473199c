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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::thread::{CapabilitySet, UnshareFlags};

/// Top-level directories that hold the machine's state or kernel interfaces.
/// Overlaying them would hide the live contents or make them read-only.
const RUNTIME_DIRS: &[&str] = &[
    "boot",
    "dev",
    "home",
    "lost+found",
    "media",
    "mnt",
    "proc",
    "root",
    "run",
    "srv",
    "sys",
    "tmp",
    "var",
];

/// The kernel copies at most one page of mount options.
const MOUNT_OPTIONS_MAX: usize = 4096;
const FD_PATH_PREFIX: &[u8] = b"/proc/self/fd/";
/// `:` + prefix + the longest decimal file descriptor number.
const FD_LAYER_MAX: usize = 1 + FD_PATH_PREFIX.len() + 10;
const LOWERDIR: &[u8] = b"lowerdir=";

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

/// One overlay mounted in place over a host directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The host directory covered, e.g. `/usr`; also the lowest layer.
    pub target: PathBuf,
    /// Tree directories stacked over it, topmost first.
    pub layers: Vec<PathBuf>,
}

/// What the sandbox will mount, in mount order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub overlays: Vec<Overlay>,
    /// Tree directories left out because they hold runtime state (`var`, `run`, ...).
    pub skipped: Vec<PathBuf>,
}

/// Why the sandbox could not start the command. Callers map [`exit_code`]
/// to the process exit status.
///
/// [`exit_code`]: SandboxError::exit_code
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "cannot read package tree {path}: {source}. Check that the directory exists and is readable (a store entry may be missing; `pak gc` or a failed fetch can cause this)."
    )]
    Tree { path: PathBuf, source: io::Error },
    #[error(
        "package tree {tree} provides /{dir}, which this system does not have; a read-only root cannot grow new top-level directories. Such files belong under /usr or /opt."
    )]
    NoSuchSystemDir { tree: PathBuf, dir: String },
    #[error(
        "{path} cannot be shown: {target} has mounts beneath it ({mounts}), so its subdirectories are overlaid one by one, and {reason}. Move those mounts, or run without them."
    )]
    Submounts {
        path: PathBuf,
        target: PathBuf,
        mounts: String,
        reason: &'static str,
    },
    #[error(
        "{count} package trees provide {target}, more than one overlay mount can stack (at most {max}); split the environment or use fewer packages."
    )]
    TooManyLayers {
        target: PathBuf,
        count: usize,
        max: usize,
    },
    #[error(
        "unprivileged user namespaces are disabled on this host ({sysctl} = {value}), and pak needs one to show packages without root. Enable them with `sysctl -w {sysctl}={fix}` (persist it in /etc/sysctl.d/), or run as root."
    )]
    UsernsDisabled {
        sysctl: &'static str,
        value: String,
        fix: &'static str,
    },
    #[error(
        "the kernel refused {step}: {source}. No sysctl forbids unprivileged user namespaces, so a container's seccomp profile or a security module is blocking them; allow unshare(CLONE_NEWUSER) for pak there, or run as root."
    )]
    UsernsRefused {
        step: &'static str,
        source: io::Error,
    },
    #[error(
        "cannot create a user namespace: the process already runs several threads and unshare(CLONE_NEWUSER) requires one. Call Sandbox::exec before starting threads, or use Sandbox::run."
    )]
    Threaded,
    #[error("cannot set up the sandbox, {step} failed: {source}")]
    Setup { step: String, source: io::Error },
    #[error("cannot mount the overlay over {target} (layers: {layers}): {source}.{hint}")]
    Overlay {
        target: PathBuf,
        layers: String,
        hint: String,
        source: io::Error,
    },
    #[error("{cmd}: command not found in the environment (packages: {packages})")]
    CommandNotFound { cmd: String, packages: String },
    #[error(
        "{cmd}: cannot run it: {source}. Check that the file is executable and its interpreter exists in the environment."
    )]
    CannotExecute { cmd: String, source: io::Error },
}

impl SandboxError {
    /// The shell's conventions, as `env` and `chroot` use them: 127 when the
    /// command does not exist, 126 when it cannot run, 125 when the sandbox
    /// itself failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            SandboxError::CommandNotFound { .. } => 127,
            SandboxError::CannotExecute { .. } => 126,
            _ => 125,
        }
    }
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
        plan_layout(&self.lowers, Path::new("/"), &current_mount_points())
    }

    /// Replace the calling process by `cmd` inside the sandbox. `cmd` is
    /// looked up in `PATH` inside, so commands from the trees are found.
    /// Without `CAP_SYS_ADMIN` the calling process must be single-threaded
    /// (the kernel's rule for entering a user namespace).
    pub fn exec(&self, cmd: &OsStr, args: &[OsString]) -> Result<Infallible, SandboxError> {
        let context = self.context(cmd)?;
        let mut steps = Steps::prepare(&context, cmd, args)?;
        Err(context.explain(steps.enter_and_exec()))
    }

    /// Run `cmd` inside the sandbox in a child process with this process's
    /// stdin, stdout and stderr, and wait for it. Like system(3), SIGINT and
    /// SIGQUIT are ignored here while the child runs, so a Ctrl-C meant for
    /// an interactive child does not leave it orphaned.
    pub fn run(&self, cmd: &OsStr, args: &[OsString]) -> Result<ExitStatus, SandboxError> {
        let context = self.context(cmd)?;
        let mut steps = Steps::prepare(&context, cmd, args)?;
        let (mut report_reader, report_writer) =
            io::pipe().map_err(|source| setup("creating a pipe", source))?;
        let saved = IgnoredSignals::ignore_interactive();
        let restore = saved.dispositions();
        let mut command = Command::new(cmd);
        // SAFETY: the closure runs between fork and exec; it only makes
        // system calls over memory prepared above, which is async-signal-safe.
        // It execs the command itself, so std's own exec never runs; std's
        // close-on-exec pipe still tells spawn() that the exec succeeded.
        unsafe {
            command.pre_exec(move || {
                restore.apply();
                let failure = steps.enter_and_exec();
                failure.send(report_writer.as_fd());
                Err(io::Error::from_raw_os_error(failure.errno))
            });
        }
        let spawned = command.spawn();
        // The report pipe's write end lives in the closure; drop it so the
        // read below sees end-of-file instead of waiting for ourselves.
        drop(command);
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) => {
                let mut record = Vec::new();
                let _ = report_reader.read_to_end(&mut record);
                return Err(match Failure::decode(&record) {
                    Some(failure) => context.explain(failure),
                    None => setup("starting a child process", err),
                });
            }
        };
        let status = child
            .wait()
            .map_err(|source| setup("waiting for the command", source))?;
        drop(saved);
        Ok(status)
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

/// Decide which overlays to mount. `host_root` is `/` and `mounts` this
/// namespace's mount points, except in tests.
fn plan_layout(
    lowers: &[Lower],
    host_root: &Path,
    mounts: &[PathBuf],
) -> Result<Layout, SandboxError> {
    let mut wanted: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for lower in lowers {
        let tree = std::path::absolute(&lower.path).map_err(|source| SandboxError::Tree {
            path: lower.path.clone(),
            source,
        })?;
        for dir in top_level_dirs(&tree)? {
            let layer = tree.join(&dir);
            if RUNTIME_DIRS.contains(&dir.as_str()) {
                skipped.push(layer);
                continue;
            }
            let target = host_target(host_root, &tree, &dir)?;
            wanted.entry(target).or_default().push(layer);
        }
    }
    // BTreeMap orders paths component-wise, so `/usr` is mounted before
    // `/usr/bin` and the second overlay stacks on the first.
    let mut placed: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for (target, layers) in wanted {
        place(target, layers, host_root, mounts, &mut placed)?;
    }
    let overlays = placed
        .into_iter()
        .map(|(target, mut layers)| {
            layers.reverse();
            Overlay { target, layers }
        })
        .collect();
    Ok(Layout { overlays, skipped })
}

/// Assign `layers` (bottom first) to overlays. An overlay takes the
/// directory it covers without the mounts beneath it: inside a user
/// namespace the kernel refuses it outright, and as root it would hide them.
/// So a directory with mounts below is covered one subdirectory at a time.
fn place(
    target: PathBuf,
    layers: Vec<PathBuf>,
    host_root: &Path,
    mounts: &[PathBuf],
    placed: &mut BTreeMap<PathBuf, Vec<PathBuf>>,
) -> Result<(), SandboxError> {
    let below: Vec<&PathBuf> = mounts
        .iter()
        .filter(|m| *m != &target && m.starts_with(&target))
        .collect();
    if below.is_empty() {
        placed.entry(target).or_default().extend(layers);
        return Ok(());
    }
    let refuse = |path: PathBuf, reason: &'static str| SandboxError::Submounts {
        path,
        target: target.clone(),
        mounts: below
            .iter()
            .map(|m| m.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        reason,
    };
    let mut children: BTreeMap<OsString, Vec<PathBuf>> = BTreeMap::new();
    for layer in layers {
        for entry in sorted_entries(&layer)? {
            let path = layer.join(&entry);
            let is_dir = std::fs::symlink_metadata(&path)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if !is_dir {
                return Err(refuse(path, "only directories can be overlaid one by one"));
            }
            children.entry(entry).or_default().push(path);
        }
    }
    for (name, layers) in children {
        let child = target.join(&name);
        let relative = child.strip_prefix("/").unwrap_or(&child);
        let host_has_it = std::fs::symlink_metadata(host_root.join(relative))
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if !host_has_it {
            return Err(refuse(
                layers[0].clone(),
                "the system has no such directory to cover",
            ));
        }
        place(child, layers, host_root, mounts, placed)?;
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<OsString>, SandboxError> {
    let tree_err = |source| SandboxError::Tree {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = std::fs::read_dir(dir)
        .map_err(tree_err)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(tree_err)?;
    names.sort();
    Ok(names)
}

/// Mount points from /proc/self/mountinfo text, with the kernel's octal
/// escapes (`\040` for a space) undone.
fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape_octal(field))))
        .collect()
}

fn unescape_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match escape {
            Some(digits) => {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn current_mount_points() -> Vec<PathBuf> {
    // Unreadable mountinfo (no /proc) leaves the kernel to report conflicts.
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| mount_points(&info))
        .unwrap_or_default()
}

/// The tree's real top-level directories, sorted. Dot entries (`.PAKINFO`)
/// and top-level files or symlinks are packaging metadata, not content.
fn top_level_dirs(tree: &Path) -> Result<Vec<String>, SandboxError> {
    let tree_err = |source| SandboxError::Tree {
        path: tree.to_path_buf(),
        source,
    };
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(tree).map_err(tree_err)? {
        let entry = entry.map_err(tree_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !entry.file_type().map_err(tree_err)?.is_dir() {
            continue;
        }
        dirs.push(name.to_string());
    }
    dirs.sort();
    Ok(dirs)
}

/// Where the tree's top-level `dir` goes: the host's `/dir`, or where the
/// host's `/dir` symlink points (merged /usr).
fn host_target(host_root: &Path, tree: &Path, dir: &str) -> Result<PathBuf, SandboxError> {
    let missing = || SandboxError::NoSuchSystemDir {
        tree: tree.to_path_buf(),
        dir: dir.to_string(),
    };
    let host = host_root.join(dir);
    let meta = std::fs::symlink_metadata(&host).map_err(|_| missing())?;
    if meta.is_dir() {
        return Ok(Path::new("/").join(dir));
    }
    if !meta.file_type().is_symlink() {
        return Err(missing());
    }
    let link = std::fs::read_link(&host).map_err(|_| missing())?;
    let target = normalize_in_root(&link).ok_or_else(missing)?;
    let relative = target.strip_prefix("/").unwrap_or(&target);
    match std::fs::symlink_metadata(host_root.join(relative)) {
        Ok(meta) if meta.is_dir() => Ok(target),
        _ => Err(missing()),
    }
}

/// A top-level symlink's target as an absolute path, resolved against `/`.
fn normalize_in_root(link: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for component in link.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::Prefix(_) => return None,
        }
    }
    (out != Path::new("/")).then_some(out)
}

/// Which namespaces to enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// The caller may mount already: a mount namespace is enough.
    MountOnly,
    /// Unprivileged: a user namespace mapping the caller's own ids.
    User { uid: u32, gid: u32 },
}

impl Isolation {
    fn detect() -> Isolation {
        let may_mount = rustix::thread::capabilities(None)
            .map(|caps| caps.effective.contains(CapabilitySet::SYS_ADMIN))
            .unwrap_or(false);
        if may_mount {
            Isolation::MountOnly
        } else {
            Isolation::User {
                uid: rustix::process::getuid().as_raw(),
                gid: rustix::process::getgid().as_raw(),
            }
        }
    }
}

/// Where entering the sandbox failed: a step and the overlay/layer it was
/// working on, small enough to cross the report pipe in one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failure {
    stage: Stage,
    overlay: u32,
    layer: u32,
    errno: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Stage {
    Unshare = 1,
    Setgroups,
    UidMap,
    GidMap,
    MakePrivate,
    OpenLayer,
    Mount,
    Exec,
}

impl Stage {
    fn from_u8(value: u8) -> Option<Stage> {
        Some(match value {
            1 => Stage::Unshare,
            2 => Stage::Setgroups,
            3 => Stage::UidMap,
            4 => Stage::GidMap,
            5 => Stage::MakePrivate,
            6 => Stage::OpenLayer,
            7 => Stage::Mount,
            8 => Stage::Exec,
            _ => return None,
        })
    }
}

const FAILURE_LEN: usize = 13;

impl Failure {
    fn at(stage: Stage, err: rustix::io::Errno) -> Failure {
        Failure::errno(stage, err.raw_os_error())
    }

    fn errno(stage: Stage, errno: i32) -> Failure {
        Failure {
            stage,
            overlay: 0,
            layer: 0,
            errno,
        }
    }

    fn encode(&self) -> [u8; FAILURE_LEN] {
        let mut out = [0u8; FAILURE_LEN];
        out[0] = self.stage as u8;
        out[1..5].copy_from_slice(&self.overlay.to_le_bytes());
        out[5..9].copy_from_slice(&self.layer.to_le_bytes());
        out[9..13].copy_from_slice(&self.errno.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Failure> {
        let bytes: &[u8; FAILURE_LEN] = bytes.get(..FAILURE_LEN)?.try_into().ok()?;
        let word = |at: usize| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        Some(Failure {
            stage: Stage::from_u8(bytes[0])?,
            overlay: u32::from_le_bytes(word(1)),
            layer: u32::from_le_bytes(word(5)),
            errno: i32::from_le_bytes(word(9)),
        })
    }

    /// Best effort: if the report is lost, the caller still gets the errno.
    fn send(&self, fd: BorrowedFd<'_>) {
        let _ = rustix::io::write(fd, &self.encode());
    }
}

/// One overlay, ready to mount without allocating.
#[derive(Debug)]
struct PreparedOverlay {
    target: CString,
    layers: Vec<CString>,
}

/// Everything the steps between fork and exec need, built in advance.
#[derive(Debug)]
struct Steps {
    isolation: Isolation,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    overlays: Vec<PreparedOverlay>,
    /// Scratch for mount options; its capacity is reserved up front.
    options: Vec<u8>,
    /// Scratch for the layers' descriptors, closed right after each mount.
    fds: Vec<OwnedFd>,
    cwd: Option<CString>,
    /// Where execvp(3) would look for the command, in order.
    candidates: Vec<CString>,
    argv: CArgv,
}

impl Steps {
    fn prepare(context: &Context, cmd: &OsStr, args: &[OsString]) -> Result<Steps, SandboxError> {
        let (layout, isolation) = (&context.layout, context.isolation);
        let max_layers = max_layers(layout);
        let mut overlays = Vec::with_capacity(layout.overlays.len());
        for overlay in &layout.overlays {
            let target_len = overlay.target.as_os_str().len();
            if options_len(overlay.layers.len(), target_len) > MOUNT_OPTIONS_MAX {
                return Err(SandboxError::TooManyLayers {
                    target: overlay.target.clone(),
                    count: overlay.layers.len(),
                    max: (MOUNT_OPTIONS_MAX - LOWERDIR.len() - target_len - 1) / FD_LAYER_MAX,
                });
            }
            overlays.push(PreparedOverlay {
                target: c_path(&overlay.target)?,
                layers: overlay
                    .layers
                    .iter()
                    .map(|p| c_path(p))
                    .collect::<Result<_, _>>()?,
            });
        }
        let (uid_map, gid_map) = match isolation {
            Isolation::User { uid, gid } => (
                format!("{uid} {uid} 1\n").into_bytes(),
                format!("{gid} {gid} 1\n").into_bytes(),
            ),
            Isolation::MountOnly => (Vec::new(), Vec::new()),
        };
        // A vanished working directory is not ours to fix: stay where we are.
        let cwd = std::env::current_dir()
            .ok()
            .and_then(|dir| CString::new(dir.into_os_string().into_vec()).ok());
        Ok(Steps {
            isolation,
            uid_map,
            gid_map,
            overlays,
            options: Vec::with_capacity(MOUNT_OPTIONS_MAX),
            fds: Vec::with_capacity(max_layers),
            cwd,
            candidates: path_candidates(cmd, std::env::var_os("PATH").as_deref())?,
            argv: c_argv(cmd, args)?,
        })
    }

    /// Enter the sandbox and become the command; returns only on failure.
    fn enter_and_exec(&mut self) -> Failure {
        match self.enter() {
            Ok(()) => self.exec_first(),
            Err(failure) => failure,
        }
    }

    /// execvp(3)'s search, async-signal-safe. A PATH directory we may not
    /// search is skipped, as shells do; a file that exists but will not run
    /// is remembered and reported if nothing else runs.
    fn exec_first(&self) -> Failure {
        let mut errno = libc::ENOENT;
        for path in &self.candidates {
            // SAFETY: path and argv are NUL-terminated and argv ends in NULL.
            unsafe { libc::execv(path.as_ptr(), self.argv.pointers.as_ptr()) };
            match io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
            {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => {
                    if rustix::fs::stat(path.as_c_str()).is_ok() {
                        errno = libc::EACCES;
                    }
                }
                other => return Failure::errno(Stage::Exec, other),
            }
        }
        Failure::errno(Stage::Exec, errno)
    }

    /// Enter the namespaces and mount the overlays. Async-signal-safe: only
    /// system calls, and pushes into vectors whose capacity is reserved.
    fn enter(&mut self) -> Result<(), Failure> {
        let flags = match self.isolation {
            Isolation::MountOnly => UnshareFlags::NEWNS,
            Isolation::User { .. } => UnshareFlags::NEWUSER | UnshareFlags::NEWNS,
        };
        // SAFETY: no file descriptor table is unshared.
        unsafe { rustix::thread::unshare_unsafe(flags) }
            .map_err(|e| Failure::at(Stage::Unshare, e))?;
        if let Isolation::User { .. } = self.isolation {
            write_proc(c"/proc/self/setgroups", b"deny", Stage::Setgroups)?;
            write_proc(c"/proc/self/uid_map", &self.uid_map, Stage::UidMap)?;
            write_proc(c"/proc/self/gid_map", &self.gid_map, Stage::GidMap)?;
        }
        rustix::mount::mount_change(
            c"/",
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        )
        .map_err(|e| Failure::at(Stage::MakePrivate, e))?;
        for index in 0..self.overlays.len() {
            self.mount_overlay(index).map_err(|mut failure| {
                failure.overlay = index as u32;
                failure
            })?;
        }
        if let Some(cwd) = &self.cwd {
            let _ = rustix::process::chdir(cwd.as_c_str());
        }
        Ok(())
    }

    fn mount_overlay(&mut self, index: usize) -> Result<(), Failure> {
        let overlay = &self.overlays[index];
        self.fds.clear();
        for (layer_index, layer) in overlay.layers.iter().enumerate() {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rustix::fs::open(layer.as_c_str(), flags, Mode::empty()).map_err(|e| {
                let mut failure = Failure::at(Stage::OpenLayer, e);
                failure.layer = layer_index as u32;
                failure
            })?;
            self.fds.push(fd);
        }
        self.options.clear();
        self.options.extend_from_slice(LOWERDIR);
        for fd in &self.fds {
            self.options.extend_from_slice(FD_PATH_PREFIX);
            push_decimal(&mut self.options, fd.as_raw_fd());
            self.options.push(b':');
        }
        self.options.extend_from_slice(overlay.target.as_bytes());
        self.options.push(0);
        let options = std::ffi::CStr::from_bytes_with_nul(&self.options)
            .expect("options are built without interior NUL");
        let result = rustix::mount::mount(
            c"overlay",
            overlay.target.as_c_str(),
            c"overlay",
            MountFlags::RDONLY,
            options,
        );
        self.fds.clear();
        result.map_err(|e| Failure::at(Stage::Mount, e))
    }
}

fn write_proc(path: &std::ffi::CStr, content: &[u8], stage: Stage) -> Result<(), Failure> {
    let fd = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Failure::at(stage, e))?;
    rustix::io::write(&fd, content).map_err(|e| Failure::at(stage, e))?;
    Ok(())
}

fn push_decimal(out: &mut Vec<u8>, value: RawFd) {
    let mut digits = [0u8; 10];
    let mut n = value.unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn options_len(layers: usize, target_len: usize) -> usize {
    LOWERDIR.len() + layers * FD_LAYER_MAX + target_len + 1
}

fn max_layers(layout: &Layout) -> usize {
    layout
        .overlays
        .iter()
        .map(|o| o.layers.len())
        .max()
        .unwrap_or(0)
}

fn c_path(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SandboxError::Tree {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
    })
}

fn setup(step: &str, source: io::Error) -> SandboxError {
    SandboxError::Setup {
        step: step.to_string(),
        source,
    }
}

/// argv for execv(2): owned strings plus the NULL-terminated pointer array.
#[derive(Debug)]
struct CArgv {
    _strings: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into the CStrings' heap buffers, which are owned
// by the same struct and never mutated, so moving or sharing it is sound.
unsafe impl Send for CArgv {}
unsafe impl Sync for CArgv {}

fn c_argv(cmd: &OsStr, args: &[OsString]) -> Result<CArgv, SandboxError> {
    let nul = |_| {
        setup(
            "building the argument list",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "an argument contains a NUL byte",
            ),
        )
    };
    let mut strings = vec![CString::new(cmd.as_bytes()).map_err(nul)?];
    for arg in args {
        strings.push(CString::new(arg.as_bytes()).map_err(nul)?);
    }
    let mut pointers: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
    pointers.push(std::ptr::null());
    Ok(CArgv {
        _strings: strings,
        pointers,
    })
}

/// The files execvp(3) would try, in order. An empty PATH entry means the
/// current directory, as in POSIX.
fn path_candidates(cmd: &OsStr, path: Option<&OsStr>) -> Result<Vec<CString>, SandboxError> {
    let bytes = cmd.as_bytes();
    let nul = |_| {
        setup(
            "looking up the command",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the command contains a NUL byte",
            ),
        )
    };
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if bytes.contains(&b'/') {
        return Ok(vec![CString::new(bytes).map_err(nul)?]);
    }
    let path = path
        .map(OsStrExt::as_bytes)
        .unwrap_or(b"/usr/local/bin:/usr/bin:/bin");
    path.split(|&b| b == b':')
        .map(|dir| {
            let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
            let mut full = dir.to_vec();
            full.push(b'/');
            full.extend_from_slice(bytes);
            CString::new(full).map_err(nul)
        })
        .collect()
}

/// What the parent knows about a sandbox, to explain a failed step.
struct Context {
    layout: Layout,
    isolation: Isolation,
    cmd: String,
    packages: String,
}

impl Context {
    /// Turn a failed step into a message that names what to do.
    fn explain(&self, failure: Failure) -> SandboxError {
        let layout = &self.layout;
        let source = io::Error::from_raw_os_error(failure.errno);
        if failure.stage == Stage::Exec {
            return self.exec_error(source);
        }
        let userns = matches!(self.isolation, Isolation::User { .. });
        let refused = matches!(
            failure.errno,
            libc::EPERM | libc::EACCES | libc::ENOSPC | libc::EUSERS
        );
        let step = match failure.stage {
            Stage::Unshare if userns => "creating a user namespace (unshare)",
            Stage::Unshare => "creating a mount namespace (unshare)",
            Stage::Setgroups => "writing /proc/self/setgroups",
            Stage::UidMap => "writing /proc/self/uid_map",
            Stage::GidMap => "writing /proc/self/gid_map",
            Stage::MakePrivate => "making mounts private",
            Stage::OpenLayer | Stage::Mount => "mounting an overlay",
            Stage::Exec => "running the command",
        };
        if failure.stage == Stage::Unshare && failure.errno == libc::EINVAL {
            return SandboxError::Threaded;
        }
        if userns && refused {
            if let Some(blocker) = userns_blocker(Path::new("/proc/sys")) {
                return blocker;
            }
            if failure.stage != Stage::Mount && failure.stage != Stage::OpenLayer {
                return SandboxError::UsernsRefused { step, source };
            }
        }
        let overlay = layout.overlays.get(failure.overlay as usize);
        match (failure.stage, overlay) {
            (Stage::OpenLayer, Some(overlay)) => {
                let layer = overlay
                    .layers
                    .get(failure.layer as usize)
                    .cloned()
                    .unwrap_or_default();
                SandboxError::Tree {
                    path: layer,
                    source,
                }
            }
            (Stage::Mount, Some(overlay)) => SandboxError::Overlay {
                target: overlay.target.clone(),
                layers: overlay
                    .layers
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                hint: overlay_hint(&overlay.target, failure.errno),
                source,
            },
            _ => setup(step, source),
        }
    }

    fn exec_error(&self, source: io::Error) -> SandboxError {
        match source.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => SandboxError::CommandNotFound {
                cmd: self.cmd.clone(),
                packages: self.packages.clone(),
            },
            _ => SandboxError::CannotExecute {
                cmd: self.cmd.clone(),
                source,
            },
        }
    }
}

/// Overlayfs answers EINVAL for several distinct problems; name the likely one.
fn overlay_hint(target: &Path, errno: i32) -> String {
    if errno != libc::EINVAL {
        return String::new();
    }
    let submounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| submounts_below(&info, target))
        .unwrap_or_default();
    if submounts.is_empty() {
        return " The kernel rejected the layers: check that every tree and the system directory are on filesystems overlayfs accepts as lower layers, and that no more than two overlays are stacked.".to_string();
    }
    format!(
        " {} has mounts beneath it ({}), which an unprivileged overlay cannot include; move those mounts elsewhere or run as root.",
        target.display(),
        submounts.join(", ")
    )
}

/// Mount points strictly below `target`, from /proc/self/mountinfo text.
fn submounts_below(mountinfo: &str, target: &Path) -> Vec<String> {
    let mut found: Vec<String> = mount_points(mountinfo)
        .into_iter()
        .filter(|point| point != target && point.starts_with(target))
        .map(|point| point.display().to_string())
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The sysctl that forbids unprivileged user namespaces, if one does.
/// `proc_sys` is `/proc/sys` except in tests.
fn userns_blocker(proc_sys: &Path) -> Option<SandboxError> {
    let read = |name: &str| {
        std::fs::read_to_string(proc_sys.join(name))
            .ok()
            .map(|v| v.trim().to_string())
    };
    let checks: [(&'static str, &str, &str, &'static str); 3] = [
        (
            "kernel.unprivileged_userns_clone",
            "kernel/unprivileged_userns_clone",
            "0",
            "1",
        ),
        (
            "user.max_user_namespaces",
            "user/max_user_namespaces",
            "0",
            "15000",
        ),
        (
            "kernel.apparmor_restrict_unprivileged_userns",
            "kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "0",
        ),
    ];
    checks.into_iter().find_map(|(sysctl, file, bad, fix)| {
        let value = read(file)?;
        (value == bad).then_some(SandboxError::UsernsDisabled { sysctl, value, fix })
    })
}

/// While any `run` child is alive, SIGINT and SIGQUIT are ignored here. The
/// dispositions are process-wide, so concurrent `run` calls share one
/// guard: the first saves and ignores, the last restores, and every child
/// gets the original ones back.
struct IgnoredSignals {
    original: SavedDispositions,
}

/// (children running, dispositions before the first of them)
static INTERACTIVE: std::sync::Mutex<(usize, Option<SavedDispositions>)> =
    std::sync::Mutex::new((0, None));

const INTERACTIVE_SIGNALS: [i32; 2] = [libc::SIGINT, libc::SIGQUIT];

/// Signal dispositions, copied so the pre-exec closure owns them.
#[derive(Clone, Copy)]
struct SavedDispositions {
    saved: [(i32, libc::sigaction); 2],
}

// SAFETY: sigaction holds a handler address and flags; nothing thread-bound.
unsafe impl Send for SavedDispositions {}
unsafe impl Sync for SavedDispositions {}

impl IgnoredSignals {
    fn ignore_interactive() -> IgnoredSignals {
        let mut state = INTERACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        let original = match state.1 {
            Some(original) if state.0 > 0 => original,
            _ => SavedDispositions::replace_with_ignore(),
        };
        *state = (state.0 + 1, Some(original));
        IgnoredSignals { original }
    }

    fn dispositions(&self) -> SavedDispositions {
        self.original
    }
}

impl Drop for IgnoredSignals {
    fn drop(&mut self) {
        let mut state = INTERACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        if state.0 == 0 {
            self.original.apply();
            state.1 = None;
        }
    }
}

impl SavedDispositions {
    fn replace_with_ignore() -> SavedDispositions {
        let saved = INTERACTIVE_SIGNALS.map(|signal| {
            // SAFETY: a zeroed sigaction is a valid value to fill in; the
            // call only reads and writes the structs passed.
            unsafe {
                let mut ignore: libc::sigaction = std::mem::zeroed();
                ignore.sa_sigaction = libc::SIG_IGN;
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(signal, &ignore, &mut old);
                (signal, old)
            }
        });
        SavedDispositions { saved }
    }

    /// Async-signal-safe: sigaction(2) only.
    fn apply(&self) {
        for (signal, action) in &self.saved {
            // SAFETY: restores a disposition previously returned by sigaction.
            unsafe { libc::sigaction(*signal, action, std::ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mkdirs(root: &Path, dirs: &[&str]) {
        for dir in dirs {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
    }

    /// A merged-/usr host: /bin -> usr/bin, /lib64 -> /usr/lib64 (absolute).
    fn fake_host() -> tempfile::TempDir {
        let host = tempfile::tempdir().unwrap();
        mkdirs(
            host.path(),
            &["usr/bin", "usr/lib64", "usr/sbin", "etc", "opt", "var"],
        );
        symlink("usr/bin", host.path().join("bin")).unwrap();
        symlink("/usr/lib64", host.path().join("lib64")).unwrap();
        symlink("usr/nowhere", host.path().join("dangling")).unwrap();
        host
    }

    #[test]
    fn later_trees_stack_on_top_and_bin_folds_into_usr() {
        let host = fake_host();
        let trees = tempfile::tempdir().unwrap();
        let a = trees.path().join("a");
        let b = trees.path().join("b");
        mkdirs(&a, &["usr/bin", "etc/a", "bin", "var/lib/a"]);
        mkdirs(&b, &["usr/share", "lib64", ".meta"]);
        std::fs::write(a.join(".PAKINFO"), "x").unwrap();
        std::fs::write(b.join("README"), "x").unwrap();
        let layout = plan_layout(&[Lower::new(&a), Lower::new(&b)], host.path(), &[]).unwrap();
        let overlay = |target: &str, layers: Vec<PathBuf>| Overlay {
            target: PathBuf::from(target),
            layers,
        };
        assert_eq!(
            layout.overlays,
            vec![
                overlay("/etc", vec![a.join("etc")]),
                overlay("/usr", vec![b.join("usr"), a.join("usr")]),
                overlay("/usr/bin", vec![a.join("bin")]),
                overlay("/usr/lib64", vec![b.join("lib64")]),
            ]
        );
        assert_eq!(layout.skipped, vec![a.join("var")]);
    }

    #[test]
    fn a_directory_the_host_lacks_is_refused_by_name() {
        let host = fake_host();
        let trees = tempfile::tempdir().unwrap();
        mkdirs(trees.path(), &["t/nix/store", "u/dangling"]);
        for (tree, dir) in [("t", "nix"), ("u", "dangling")] {
            let err =
                plan_layout(&[Lower::new(trees.path().join(tree))], host.path(), &[]).unwrap_err();
            let message = err.to_string();
            assert!(message.contains(&format!("provides /{dir}")), "{message}");
            assert_eq!(err.exit_code(), 125);
        }
    }

    #[test]
    fn a_missing_tree_is_named() {
        let err =
            plan_layout(&[Lower::new("/nonexistent/pak-tree")], Path::new("/"), &[]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pak-tree"), "{err}");
    }

    #[test]
    fn symlink_targets_resolve_against_the_root() {
        assert_eq!(
            normalize_in_root(Path::new("usr/bin")),
            Some("/usr/bin".into())
        );
        assert_eq!(
            normalize_in_root(Path::new("/usr/lib64")),
            Some("/usr/lib64".into())
        );
        assert_eq!(
            normalize_in_root(Path::new("../../usr/./sbin")),
            Some("/usr/sbin".into())
        );
        assert_eq!(normalize_in_root(Path::new("..")), None);
    }

    #[test]
    fn failure_records_survive_the_pipe_encoding() {
        let failure = Failure {
            stage: Stage::OpenLayer,
            overlay: 3,
            layer: 70_000,
            errno: libc::ENOENT,
        };
        assert_eq!(Failure::decode(&failure.encode()), Some(failure));
        assert_eq!(Failure::decode(&[]), None);
        assert_eq!(Failure::decode(&[0; FAILURE_LEN]), None);
    }

    #[test]
    fn decimal_rendering_matches_format() {
        for value in [0, 7, 10, 99, 1234, i32::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, value);
            assert_eq!(out, value.to_string().into_bytes());
        }
    }

    #[test]
    fn too_many_layers_for_one_page_are_refused_before_forking() {
        let layout = Layout {
            overlays: vec![Overlay {
                target: "/usr".into(),
                layers: (0..400)
                    .map(|i| PathBuf::from(format!("/s/{i}/usr")))
                    .collect(),
            }],
            skipped: vec![],
        };
        let context = Context {
            layout,
            isolation: Isolation::MountOnly,
            cmd: "true".into(),
            packages: String::new(),
        };
        let err = Steps::prepare(&context, OsStr::new("true"), &[]).unwrap_err();
        let SandboxError::TooManyLayers { count, max, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(count, 400);
        assert!(options_len(max, 4) <= MOUNT_OPTIONS_MAX);
        assert!(options_len(max + 1, 4) > MOUNT_OPTIONS_MAX);
        assert!(max >= 150, "a realistic environment must fit: {max}");
    }

    #[test]
    fn each_userns_sysctl_is_named_with_its_fix() {
        let cases = [
            (
                "kernel/unprivileged_userns_clone",
                "0",
                "kernel.unprivileged_userns_clone=1",
            ),
            (
                "user/max_user_namespaces",
                "0",
                "user.max_user_namespaces=15000",
            ),
            (
                "kernel/apparmor_restrict_unprivileged_userns",
                "1",
                "kernel.apparmor_restrict_unprivileged_userns=0",
            ),
        ];
        for (file, value, fix) in cases {
            let sys = tempfile::tempdir().unwrap();
            mkdirs(sys.path(), &["kernel", "user"]);
            std::fs::write(sys.path().join("user/max_user_namespaces"), "15000\n").unwrap();
            std::fs::write(sys.path().join(file), format!("{value}\n")).unwrap();
            let message = userns_blocker(sys.path()).expect(file).to_string();
            assert!(message.contains(&format!("sysctl -w {fix}")), "{message}");
        }
        let sys = tempfile::tempdir().unwrap();
        mkdirs(sys.path(), &["kernel", "user"]);
        std::fs::write(sys.path().join("user/max_user_namespaces"), "15000\n").unwrap();
        std::fs::write(sys.path().join("kernel/unprivileged_userns_clone"), "1\n").unwrap();
        assert!(userns_blocker(sys.path()).is_none());
    }

    #[test]
    fn a_directory_with_mounts_below_is_covered_subdirectory_by_subdirectory() {
        let host = fake_host();
        mkdirs(host.path(), &["usr/local", "usr/share"]);
        let trees = tempfile::tempdir().unwrap();
        let a = trees.path().join("a");
        mkdirs(
            &a,
            &["usr/bin", "usr/share/doc", "usr/local/lib", "bin", "etc"],
        );
        let mounts = [PathBuf::from("/"), PathBuf::from("/usr/local")];
        let layout = plan_layout(&[Lower::new(&a)], host.path(), &mounts).unwrap();
        let targets: Vec<_> = layout.overlays.iter().map(|o| o.target.clone()).collect();
        assert_eq!(
            targets,
            ["/etc", "/usr/bin", "/usr/local", "/usr/share"].map(PathBuf::from)
        );
        // The fold joins the split overlay of /usr/bin, above usr/bin.
        assert_eq!(
            layout.overlays[1].layers,
            [a.join("bin"), a.join("usr/bin")]
        );
    }

    #[test]
    fn what_cannot_be_split_around_a_mount_is_refused_by_name() {
        let host = fake_host();
        mkdirs(host.path(), &["usr/local"]);
        let trees = tempfile::tempdir().unwrap();
        let files = trees.path().join("files");
        mkdirs(&files, &["usr"]);
        std::fs::write(files.join("usr/stray"), "x").unwrap();
        let newdir = trees.path().join("newdir");
        mkdirs(&newdir, &["usr/games"]);
        let mounts = [PathBuf::from("/usr/local")];
        for (tree, path, reason) in [
            (&files, files.join("usr/stray"), "only directories"),
            (&newdir, newdir.join("usr/games"), "no such directory"),
        ] {
            let err = plan_layout(&[Lower::new(tree)], host.path(), &mounts).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with(&path.display().to_string()),
                "{message}"
            );
            assert!(
                message.contains("/usr has mounts beneath it (/usr/local)"),
                "{message}"
            );
            assert!(message.contains(reason), "{message}");
        }
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        let info = "36 35 98:0 / /mnt/with\\040space rw - ext3 /dev/root rw\n\
                    37 35 98:0 / /plain\\ rw - ext3 /dev/root rw\n";
        assert_eq!(
            mount_points(info),
            [PathBuf::from("/mnt/with space"), PathBuf::from("/plain\\")]
        );
    }

    #[test]
    fn submounts_are_found_below_the_target_only() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
23 22 0:5 / /usr/local rw - tmpfs tmpfs rw
24 22 0:6 / /usr rw - tmpfs tmpfs rw
25 22 0:7 / /usrx rw - tmpfs tmpfs rw
";
        assert_eq!(submounts_below(info, Path::new("/usr")), vec!["/usr/local"]);
        assert!(submounts_below(info, Path::new("/etc")).is_empty());
    }

    #[test]
    fn path_search_follows_execvp() {
        let found = path_candidates(OsStr::new("jq"), Some(OsStr::new("/a::/b"))).unwrap();
        let found: Vec<_> = found.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(found, ["/a/jq", "./jq", "/b/jq"]);
        let direct = path_candidates(OsStr::new("./x/jq"), Some(OsStr::new("/a"))).unwrap();
        assert_eq!(direct, [CString::new("./x/jq").unwrap()]);
        assert!(path_candidates(OsStr::new(""), None).unwrap().is_empty());
    }

    fn unit_tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("unit-tree");
        let bin = tree.join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("pak-unit"), "#!/bin/sh\nexit 7\n").unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(bin.join("pak-unit"), mode).unwrap();
        (dir, tree)
    }

    /// `run` forks from this multi-threaded test process; concurrent calls
    /// must leave SIGINT as it was.
    #[test]
    fn run_works_from_a_threaded_process_and_restores_signals() {
        let (_dir, tree) = unit_tree();
        let sandbox = Sandbox::from_paths([&tree]);
        let disposition = |signal| unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut old);
            old.sa_sigaction
        };
        let before = disposition(libc::SIGINT);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    let status = sandbox.run(OsStr::new("pak-unit"), &[]).unwrap();
                    assert_eq!(status.code(), Some(7));
                });
            }
        });
        assert_eq!(disposition(libc::SIGINT), before);
        let err = sandbox
            .run(OsStr::new("pak-unit-missing"), &[])
            .unwrap_err();
        assert_eq!(err.exit_code(), 127, "{err}");
    }

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
