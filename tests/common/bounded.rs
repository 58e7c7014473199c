//! Running pak with its peak memory measured, and the hostile shapes the
//! bounded tests feed it (`tests/bounded.rs`, `tests/bounded_generation.rs`).
//!
//! Peak memory is the child's maximum resident set, from wait4(2).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Project;

/// KiB in a MiB: `ru_maxrss` is in KiB.
pub const MIB: i64 = 1024;

/// Runs pak; its exit status, stderr and peak resident memory in KiB.
// wait4 reaps the child: std's wait cannot report its resources.
#[allow(clippy::zombie_processes)]
pub fn measured(mut command: Command) -> (std::process::ExitStatus, String, i64) {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let mut status = 0;
    // SAFETY: plain syscall on our own child, with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid);
    (
        std::process::ExitStatus::from_raw(status),
        reader.join().unwrap(),
        usage.ru_maxrss,
    )
}

/// Runs pak, which must succeed within `limit_kib` of peak memory; the peak.
#[track_caller]
pub fn within(p: &Project, args: &[&str], limit_kib: i64) -> i64 {
    let (status, err, peak) = measured(p.command(args));
    assert!(status.success(), "pak {args:?}: {status}: {err}");
    assert!(
        peak < limit_kib,
        "pak {args:?} peaked at {} MiB, over {} MiB",
        peak / MIB,
        limit_kib / MIB
    );
    eprintln!("pak {args:?}: peak {} MiB", peak / MIB);
    peak
}

/// Runs pak, which must fail cleanly (exit 1) saying `says`; its stderr.
#[track_caller]
pub fn refused(p: &Project, args: &[&str], says: &str) -> String {
    let (status, err, _) = measured(p.command(args));
    assert_eq!(
        status.code(),
        Some(1),
        "pak {args:?} must fail cleanly: {status}: {err}"
    );
    assert!(err.contains(says), "pak {args:?}: {err}");
    err
}

/// A package source directory `src-NAME` with `.PAKINFO`.
pub fn source(p: &Project, name: &str) -> PathBuf {
    let src = p.path(format!("src-{name}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join(".PAKINFO"),
        format!("name = \"{name}\"\nversion = \"1.0-1\"\narch = \"any\"\n"),
    )
    .unwrap();
    src
}

/// `pak pkg create SRC -o REPO`.
pub fn create(p: &Project, src: &Path) -> Vec<String> {
    vec![
        "pkg".into(),
        "create".into(),
        src.display().to_string(),
        "-o".into(),
        p.repo().display().to_string(),
    ]
}

/// Makes `depth` nested directories named `name` under `dir`, relative to
/// one another (the whole path may be past PATH_MAX), with a file
/// `bottom` at the end.
pub fn nest(dir: &Path, name: &str, depth: usize) {
    use rustix::fs::{Mode, OFlags, mkdirat, open, openat};
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY;
    let mut fd = open(dir, dir_flags, Mode::empty()).unwrap();
    for _ in 0..depth {
        mkdirat(&fd, name, Mode::from_raw_mode(0o755)).unwrap();
        fd = openat(&fd, name, dir_flags, Mode::empty()).unwrap();
    }
    let f = openat(
        &fd,
        "bottom",
        OFlags::CREATE | OFlags::WRONLY,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&f, b"deep\n").unwrap();
}
