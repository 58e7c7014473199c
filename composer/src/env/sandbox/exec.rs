//! The fork/exec engine: enter the namespaces, mount the overlays and
//! exec the command, either in place of this process or in a child. Every
//! step after fork is a system call over memory prepared beforehand
//! ([`Steps`]), since a child forked from a threaded parent must not
//! allocate; a failed step is reported back as a fixed-size [`Failure`].

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::thread::{CapabilitySet, UnshareFlags};

use super::error::{Context, setup};
use super::{Layout, SandboxError};

/// The kernel copies at most one page of mount options.
const MOUNT_OPTIONS_MAX: usize = 4096;
const FD_PATH_PREFIX: &[u8] = b"/proc/self/fd/";
/// `:` + prefix + the longest decimal file descriptor number.
const FD_LAYER_MAX: usize = 1 + FD_PATH_PREFIX.len() + 10;
const LOWERDIR: &[u8] = b"lowerdir=";

/// Becomes the command inside the sandbox; returns only why it could not.
pub(super) fn exec(context: &Context, cmd: &OsStr, args: &[OsString]) -> SandboxError {
    match Steps::prepare(context, cmd, args) {
        Ok(mut steps) => context.explain(steps.enter_and_exec()),
        Err(err) => err,
    }
}

/// Runs the command inside the sandbox in a child and waits for it.
pub(super) fn run(
    context: &Context,
    cmd: &OsStr,
    args: &[OsString],
) -> Result<ExitStatus, SandboxError> {
    let mut steps = Steps::prepare(context, cmd, args)?;
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

/// Which namespaces to enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isolation {
    /// The caller may mount already: a mount namespace is enough.
    MountOnly,
    /// Unprivileged: a user namespace mapping the caller's own ids.
    User { uid: u32, gid: u32 },
}

impl Isolation {
    pub(super) fn detect() -> Isolation {
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
pub(super) struct Failure {
    pub(super) stage: Stage,
    pub(super) overlay: u32,
    pub(super) layer: u32,
    pub(super) errno: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Stage {
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
    use super::super::{Overlay, Sandbox};
    use super::*;
    use std::path::PathBuf;

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
}
