//! Advisory locks that let several pak processes share one store, and the
//! pending roots that keep what a running pak uses safe from `pak gc`.
//!
//! Locks are flock(2): the kernel drops them when their process dies, even
//! by SIGKILL, so a killed pak never leaves a store locked. Three kinds:
//!
//! - `store/.lock`: shared by every pak that adds or takes entries,
//!   exclusive for `pak gc` and `pak store repair`, which delete them.
//! - `store/.locks/<hash of key>`: exclusive while one entry is extracted,
//!   so two fetches of one package extract it once; the second waits.
//! - `store/.pending/<pid>-*`: every key a process has taken from the
//!   store, in a file that process holds locked until it exits. An entry a
//!   build uses but has not yet registered as a GC root (or never will:
//!   `pak verify` rebuilds from a lock it does not register) is named
//!   there, and `pak gc` keeps everything a live process names.
//!
//! A pak that has to wait says for what and for whom: the holders' pids
//! come from /proc/locks (no crate reads it; it is one line per lock).

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use rustix::fs::FlockOperation;

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// A held lock, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct Held {
    _file: File,
}

fn open_lock_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the lock {}", path.display()))
}

fn op(mode: Mode, wait: bool) -> FlockOperation {
    match (mode, wait) {
        (Mode::Shared, true) => FlockOperation::LockShared,
        (Mode::Shared, false) => FlockOperation::NonBlockingLockShared,
        (Mode::Exclusive, true) => FlockOperation::LockExclusive,
        (Mode::Exclusive, false) => FlockOperation::NonBlockingLockExclusive,
    }
}

/// Takes the lock at `path`, waiting if another process holds it; before
/// waiting, prints `waiting(holders)` (the holders' pids, when known).
pub fn acquire(path: &Path, mode: Mode, waiting: impl FnOnce(&[u32]) -> String) -> Result<Held> {
    let file = open_lock_file(path)?;
    match rustix::fs::flock(&file, op(mode, false)) {
        Ok(()) => return Ok(Held { _file: file }),
        Err(rustix::io::Errno::WOULDBLOCK) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
    let pids = holders(&file);
    eprintln!("{}", waiting(&pids));
    rustix::fs::flock(&file, op(mode, true))
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(Held { _file: file })
}

/// Takes the lock only if nobody holds it.
pub fn try_acquire(path: &Path, mode: Mode) -> Result<Option<Held>> {
    let file = open_lock_file(path)?;
    match rustix::fs::flock(&file, op(mode, false)) {
        Ok(()) => Ok(Some(Held { _file: file })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// "another pak (pid 12)", "other pak processes (pids 12, 13)".
pub fn who(pids: &[u32]) -> String {
    match pids {
        [] => "another pak".to_string(),
        [one] => format!("another pak (pid {one})"),
        many => format!(
            "other pak processes (pids {})",
            many.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The pids holding a flock on `file`, other than this process.
fn holders(file: &File) -> Vec<u32> {
    let Ok(md) = file.metadata() else {
        return Vec::new();
    };
    let dev = md.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        md.ino()
    );
    let Ok(text) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut pids = BTreeSet::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK ADVISORY WRITE pid dev:ino 0 EOF"; waiters have "->".
        if f.len() < 6 || f[1] != "FLOCK" || f[5] != id {
            continue;
        }
        if let Ok(pid) = f[4].parse::<u32>()
            && pid != me
        {
            pids.insert(pid);
        }
    }
    pids.into_iter().collect()
}

/// This process's pending-roots files, one per store it used.
fn pending_files() -> &'static Mutex<HashMap<PathBuf, (File, PathBuf)>> {
    static FILES: OnceLock<Mutex<HashMap<PathBuf, (File, PathBuf)>>> = OnceLock::new();
    FILES.get_or_init(|| {
        // SAFETY: registering a plain extern "C" function with atexit.
        unsafe { libc::atexit(remove_pending_files) };
        Mutex::new(HashMap::new())
    })
}

/// A clean exit takes its pending roots along; a killed pak's stay until
/// the next pak finds them unlocked.
extern "C" fn remove_pending_files() {
    if let Some(files) = pending_files().try_lock().ok().as_deref() {
        for (_, path) in files.values() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Records that this process uses `key` of the store at `pending_dir`'s
/// parent. The caller holds the store's shared lock, so `pak gc` (which
/// holds it exclusively while it reads these files) sees the record
/// before it could delete the entry.
pub fn record_pending(pending_dir: &Path, key: &str) -> Result<()> {
    let mut files = pending_files().lock().unwrap_or_else(|e| e.into_inner());
    if !files.contains_key(pending_dir) {
        let made = new_pending_file(pending_dir)?;
        files.insert(pending_dir.to_path_buf(), made);
    }
    let (file, path) = files.get_mut(pending_dir).expect("inserted above");
    file.write_all(format!("{key}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Made under a temporary name, locked, then renamed: a file under its
/// final name is locked from its first instant, so an unlocked one is
/// always a dead process's, and anyone may remove it.
fn new_pending_file(dir: &Path) -> Result<(File, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    remove_stale_pending(dir);
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    rustix::fs::flock(tmp.as_file(), FlockOperation::LockExclusive)?;
    let path = dir.join(format!("{}-{}", std::process::id(), unique(&tmp)));
    // The descriptor stays the locked one; this process is its only writer.
    let file = tmp
        .persist(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((file, path))
}

fn unique(tmp: &tempfile::NamedTempFile) -> String {
    tmp.path()
        .file_name()
        .map(|n| n.to_string_lossy().trim_start_matches(".tmp-").to_string())
        .unwrap_or_default()
}

/// Removes the pending-roots files of processes that died, and
/// temporaries of ones killed while making theirs.
fn remove_stale_pending(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if let Ok(f) = File::open(e.path())
            && rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared).is_ok()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The keys named by live processes' pending-roots files; removes dead
/// ones' files and leftovers. Only under the store's exclusive lock (no
/// process can be making one meanwhile).
pub fn live_pending(dir: &Path) -> Result<BTreeSet<String>> {
    let mut live = BTreeSet::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(live),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    for e in rd {
        let path = e?.path();
        let f = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        match rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared) {
            Ok(()) => {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                live.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_found_and_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        let _held = acquire(&p, Mode::Shared, |_| unreachable!("free")).unwrap();
        // Another open file description conflicts even in one process.
        assert!(try_acquire(&p, Mode::Exclusive).unwrap().is_none());
        assert!(try_acquire(&p, Mode::Shared).unwrap().is_some());
        assert_eq!(who(&[7]), "another pak (pid 7)");
        assert_eq!(who(&[7, 9]), "other pak processes (pids 7, 9)");
    }

    #[test]
    fn pending_roots_live_while_held() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(".pending");
        record_pending(&dir, "a-1-x").unwrap();
        record_pending(&dir, "b-1-y").unwrap();
        // This process holds its file, so it is live.
        let live = live_pending(&dir).unwrap();
        assert!(live.contains("a-1-x") && live.contains("b-1-y"), "{live:?}");
        // A dead process's file (nobody holds it) goes.
        std::fs::write(dir.join("1-dead"), "c-1-z\n").unwrap();
        let live = live_pending(&dir).unwrap();
        assert!(!live.contains("c-1-z"));
        assert!(!dir.join("1-dead").exists());
    }
}
