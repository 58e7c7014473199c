//! Temporaries a pak killed halfway leaves behind, and how `pak gc` tells
//! them from those a live pak is still writing.
//!
//! Every temporary pak stages beside its final place (a download in
//! `cache/`, an environment being created in `envs/`, a squashfs being
//! written, a compressed block for the cache) is held under an exclusive
//! flock(2) by its creator for as long as the creator needs it. The kernel
//! drops the lock when the process dies, even by SIGKILL, so "nobody holds
//! it" means "its creator is gone": `pak gc` takes the lock itself (without
//! waiting) and removes only what it got.
//!
//! Creating a file and locking it are two steps; a gc between them could
//! take the lock and remove the fresh file. So a creator checks, once it
//! holds the lock, that its path still names the inode it locked, and
//! makes a new temporary if not ([`held`]). gc likewise removes a path only
//! if it still names the inode gc locked.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use rustix::fs::FlockOperation;

use crate::state::StateDir;

/// The kinds of temporaries, by the name prefix their creator gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporary {
    /// A download not yet verified (`sources::fetch`), in `cache/`.
    Download,
    /// An environment being created (`env::registry`), in `envs/`.
    EnvCreate,
    /// A generation being built beside a disk image (`pak build`).
    Generation,
    /// A squashfs being written, beside its output.
    Squashfs,
    /// A compressed block on its way into the squashfs block cache.
    CacheBlock,
}

impl Temporary {
    pub const ALL: [Temporary; 5] = [
        Temporary::Download,
        Temporary::EnvCreate,
        Temporary::Generation,
        Temporary::Squashfs,
        Temporary::CacheBlock,
    ];

    /// The name prefix its creator uses; the one place it is spelled.
    pub fn prefix(self) -> &'static str {
        match self {
            Temporary::Download => ".dl-",
            Temporary::EnvCreate => ".create-",
            Temporary::Generation => ".gen-",
            Temporary::Squashfs => ".sqfs-",
            Temporary::CacheBlock => ".tmp-",
        }
    }

    /// What it was, for gc's report.
    pub fn what(self) -> &'static str {
        match self {
            Temporary::Download => "an interrupted download",
            Temporary::EnvCreate => "an interrupted `pak env create`",
            Temporary::Generation => "an interrupted build's generation",
            Temporary::Squashfs => "an interrupted squashfs write",
            Temporary::CacheBlock => "an interrupted squashfs block cache write",
        }
    }

    fn of(name: &str) -> Option<Temporary> {
        Temporary::ALL
            .into_iter()
            .find(|t| name.starts_with(t.prefix()))
    }
}

fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Locks `file` (open on `path`) for this process: waits for a gc that
/// holds it, then says whether `path` still names it (false: gc removed
/// it meanwhile, make another).
pub fn lock(file: &File, path: &Path) -> io::Result<bool> {
    rustix::fs::flock(file, FlockOperation::LockExclusive)?;
    let mine = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(now) => Ok(same_inode(&mine, &now)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes a temporary with `create` and locks it (`file` gives the open
/// file, or directory, to lock and its path), again if a gc removed it
/// between the two.
pub fn held<T>(
    mut create: impl FnMut() -> io::Result<T>,
    file: impl Fn(&T) -> io::Result<(File, PathBuf)>,
) -> io::Result<(T, File)> {
    // A gc takes a lock for a moment only; losing this many races in a row
    // means something else removes our files.
    for _ in 0..16 {
        let t = create()?;
        let (f, path) = match file(&t) {
            Ok(f) => f,
            // A directory, removed before we could open it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if lock(&f, &path)? {
            return Ok((t, f));
        }
    }
    Err(io::Error::other(
        "every temporary file made was removed at once by something else (a pak gc?)",
    ))
}

/// Locks kept until the process exits: a squashfs written to a temporary
/// name (`.gen-*`) is a new inode renamed over it, which its creator never
/// opened; this process holds it for the rest of its (short) life, so a
/// gc never removes a generation a live build still reads.
static KEPT: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Keeps `file`'s lock until this process exits.
pub fn keep_until_exit(file: File) {
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(file);
}

/// Whether `path`'s file name is one of pak's temporaries.
pub fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(Temporary::of)
        .is_some()
}

/// One temporary gc removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub path: PathBuf,
    pub kind: Temporary,
}

/// Removes the temporaries of `kinds` directly in `dir` that no live
/// process holds; a missing `dir` has none.
pub fn collect(dir: &Path, kinds: &[Temporary]) -> Result<Vec<Removed>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in rd {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name();
        let Some(kind) = name.to_str().and_then(Temporary::of) else {
            continue;
        };
        if kinds.contains(&kind) {
            found.push((entry.path(), kind));
        }
    }
    // Sorted, so the report does not depend on directory order.
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut removed = Vec::new();
    for (path, kind) in found {
        if remove_if_dead(&path)? {
            removed.push(Removed { path, kind });
        }
    }
    Ok(removed)
}

/// `pak gc`'s sweep: the dead temporaries of `root` (downloads in
/// `cache/`, block-cache writes in `cache/squashfs/*/`, environment
/// creates in `envs/`) and of `build_dirs`, where `pak build` writes by
/// default (generations and squashfs writes). The store sweeps its own
/// `.extracting-*` and `.deleting-*`.
pub fn collect_root(root: &StateDir, build_dirs: &[PathBuf]) -> Result<Vec<Removed>> {
    let mut removed = collect(&root.cache_dir(), &[Temporary::Download])?;
    let blocks = root.cache_dir().join("squashfs");
    match std::fs::read_dir(&blocks) {
        Ok(rd) => {
            let mut dirs = Vec::new();
            for e in rd {
                let e = e.with_context(|| format!("cannot read {}", blocks.display()))?;
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
            dirs.sort();
            for d in dirs {
                removed.extend(collect(&d, &[Temporary::CacheBlock])?);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", blocks.display())),
    }
    removed.extend(collect(&root.envs_dir(), &[Temporary::EnvCreate])?);
    for dir in build_dirs {
        removed.extend(collect(dir, &[Temporary::Generation, Temporary::Squashfs])?);
    }
    Ok(removed)
}

/// Removes `path` if nobody holds its lock; whether it did.
fn remove_if_dead(path: &Path) -> Result<bool> {
    use rustix::fs::{Mode, OFlags};
    // Not followed: a symlink with a temporary's name is not pak's.
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP) => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let file = File::from(fd);
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
    let mine = file.metadata()?;
    let now = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if !same_inode(&mine, &now) {
        return Ok(false);
    }
    // Removed while locked: a creator that locks it after us sees it gone.
    let gone = if mine.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match gone {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_dead_temporaries_and_leaves_held_and_foreign_ones() {
        let d = tempfile::tempdir().unwrap();
        let dead = d.path().join(".dl-dead");
        std::fs::write(&dead, "x").unwrap();
        let dead_dir = d.path().join(".create-e-1");
        std::fs::create_dir_all(dead_dir.join("sub")).unwrap();
        let (tmp, _lock) = held(
            || {
                tempfile::Builder::new()
                    .prefix(Temporary::Download.prefix())
                    .tempfile_in(d.path())
            },
            |t| Ok((t.as_file().try_clone()?, t.path().to_path_buf())),
        )
        .unwrap();
        let other = d.path().join("keep.pak");
        std::fs::write(&other, "x").unwrap();
        let removed = collect(d.path(), &Temporary::ALL).unwrap();
        let paths: Vec<&Path> = removed.iter().map(|r| r.path.as_path()).collect();
        assert_eq!(paths, [dead_dir.as_path(), dead.as_path()]);
        assert!(tmp.path().exists() && other.exists());
        // Only the kinds asked for.
        std::fs::write(&dead, "x").unwrap();
        assert!(
            collect(d.path(), &[Temporary::EnvCreate])
                .unwrap()
                .is_empty()
        );
        assert!(dead.exists());
    }

    #[test]
    fn a_creator_whose_file_was_collected_makes_another() {
        let d = tempfile::tempdir().unwrap();
        let mut made = 0;
        let (tmp, _lock) = held(
            || {
                made += 1;
                let t = tempfile::Builder::new()
                    .prefix(".dl-")
                    .tempfile_in(d.path())?;
                if made == 1 {
                    // A gc that won the race: the path no longer names it.
                    std::fs::remove_file(t.path())?;
                }
                Ok(t)
            },
            |t| Ok((t.as_file().try_clone()?, t.path().to_path_buf())),
        )
        .unwrap();
        assert_eq!(made, 2);
        assert!(tmp.path().exists());
    }
}
