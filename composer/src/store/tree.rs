//! Walking and removing store trees of any depth and path length.
//!
//! A package may nest directories thousands deep, past PATH_MAX: paths
//! that long cannot be opened, and a recursive walk that deep can overflow
//! the stack. So these walk with one open directory at a time, opening
//! children relative to it (openat) and climbing back through `..`, and
//! keep their own stack of names on the heap. std's `remove_dir_all` and
//! the walkdir crate both build full paths, so neither served.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

fn open_dir_at(parent: &OwnedFd, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", path.display()))
}

/// The names in the directory `fd`, with their types, sorted by name.
fn list(fd: &OwnedFd) -> rustix::io::Result<Vec<(Vec<u8>, FileType)>> {
    let mut dir = rustix::fs::Dir::read_from(fd)?;
    let mut out = Vec::new();
    while let Some(e) = dir.read() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let mut t = e.file_type();
        if t == FileType::Unknown {
            t = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map(|s| FileType::from_raw_mode(s.st_mode))?;
        }
        out.push((name.to_vec(), t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Removes `path` and everything below it, whatever its depth and modes.
pub fn remove_tree(path: &Path) -> Result<()> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    };
    if !md.is_dir() {
        return std::fs::remove_file(path)
            .with_context(|| format!("cannot remove {}", path.display()));
    }
    // Read-only directories (from packages) must be made writable first.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot remove {}", path.display()))?;
    let fail = |e: rustix::io::Errno| {
        anyhow::Error::from(e).context(format!("cannot remove {}", path.display()))
    };
    let mut fd = open_dir(path)?;
    // Per level: the directory's name in its parent, and its
    // subdirectories still to remove.
    let mut stack: Vec<(Vec<u8>, Vec<Vec<u8>>)> = vec![(Vec::new(), unlink_files(&fd)?)];
    loop {
        let top = stack.last_mut().expect("the root level is popped last");
        if let Some(sub) = top.1.pop() {
            rustix::fs::chmodat(&fd, &sub[..], Mode::from_raw_mode(0o700), AtFlags::empty())
                .map_err(fail)?;
            fd = open_dir_at(&fd, &sub).map_err(fail)?;
            let subs = unlink_files(&fd)?;
            stack.push((sub, subs));
            continue;
        }
        let (name, _) = stack.pop().expect("not empty");
        if stack.is_empty() {
            break;
        }
        fd = open_dir_at(&fd, b"..").map_err(fail)?;
        rustix::fs::unlinkat(&fd, &name[..], AtFlags::REMOVEDIR).map_err(fail)?;
    }
    drop(fd);
    std::fs::remove_dir(path).with_context(|| format!("cannot remove {}", path.display()))
}

/// Unlinks everything in `fd` but directories; returns those.
fn unlink_files(fd: &OwnedFd) -> Result<Vec<Vec<u8>>> {
    let mut dirs = Vec::new();
    for (name, t) in list(fd)? {
        if t == FileType::Directory {
            dirs.push(name);
        } else {
            rustix::fs::unlinkat(fd, &name[..], AtFlags::empty())?;
        }
    }
    Ok(dirs)
}

/// One thing found by [`walk`].
pub struct Found<'a> {
    /// Relative to the walked directory, `/`-separated.
    pub path: &'a str,
    /// The directory it is in, to open it by `name`.
    pub dir: &'a OwnedFd,
    pub name: &'a [u8],
    pub stat: rustix::fs::Stat,
}

impl Found<'_> {
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }

    /// Opens it (a regular file) for reading.
    pub fn open(&self) -> rustix::io::Result<std::fs::File> {
        rustix::fs::openat(
            self.dir,
            self.name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(std::fs::File::from)
    }

    pub fn read_link(&self) -> rustix::io::Result<OsString> {
        rustix::fs::readlinkat(self.dir, self.name, Vec::new())
            .map(|c| OsString::from_vec(c.into_bytes()))
    }
}

/// Calls `visit` on everything below `root` (not `root` itself), parents
/// before children, in name order. Names that are not UTF-8 are passed
/// lossily (a BOM can only name UTF-8 paths, so such a name is extra
/// whatever it is called).
pub fn walk(root: &Path, mut visit: impl FnMut(&Found) -> Result<()>) -> Result<()> {
    let mut fd = open_dir(root)?;
    let fail = |e: rustix::io::Errno, at: &str| {
        anyhow::Error::from(e).context(format!("cannot read {}/{at}", root.display()))
    };
    // Per level: the directory's path, its name in its parent, and its
    // subdirectories still to visit.
    let mut stack: Vec<(String, Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
    let mut prefix = String::new();
    let mut name_here = Vec::new();
    loop {
        let mut subs = Vec::new();
        for (name, _) in list(&fd).map_err(|e| fail(e, &prefix))? {
            let rel = join(&prefix, &name);
            let stat = rustix::fs::statat(&fd, &name[..], AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| fail(e, &rel))?;
            visit(&Found {
                path: &rel,
                dir: &fd,
                name: &name,
                stat,
            })?;
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                subs.push(name);
            }
        }
        subs.reverse();
        stack.push((prefix, name_here, subs));
        // The next directory down, or back up until one has some left.
        loop {
            let Some(top) = stack.last_mut() else {
                return Ok(());
            };
            if let Some(sub) = top.2.pop() {
                prefix = join(&top.0, &sub);
                fd = open_dir_at(&fd, &sub).map_err(|e| fail(e, &prefix))?;
                name_here = sub;
                break;
            }
            stack.pop();
            if stack.is_empty() {
                return Ok(());
            }
            fd = open_dir_at(&fd, b"..").map_err(|e| fail(e, ".."))?;
        }
    }
}

fn join(prefix: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if prefix.is_empty() {
        name.into_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deeper than PATH_MAX allows a path to be, and read-only on the way.
    fn deep(root: &Path, depth: usize) {
        let mut fd = open_dir(root).unwrap();
        for i in 0..depth {
            let name = format!("d{}", i % 10);
            rustix::fs::mkdirat(&fd, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            let f = rustix::fs::openat(
                &fd,
                "f",
                OFlags::CREATE | OFlags::WRONLY,
                Mode::from_raw_mode(0o644),
            );
            drop(f);
            let next = open_dir_at(&fd, name.as_bytes()).unwrap();
            if i % 100 == 0 {
                rustix::fs::chmodat(
                    &fd,
                    name.as_str(),
                    Mode::from_raw_mode(0o555),
                    AtFlags::empty(),
                )
                .unwrap();
            }
            fd = next;
        }
    }

    #[test]
    fn deep_trees_walk_and_go() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("t");
        std::fs::create_dir(&root).unwrap();
        deep(&root, 3000);
        let mut dirs = 0;
        let mut longest = 0;
        walk(&root, |f| {
            if f.file_type() == FileType::Directory {
                dirs += 1;
            }
            longest = longest.max(f.path.len());
            Ok(())
        })
        .unwrap();
        assert_eq!(dirs, 3000);
        assert!(longest > 4096, "{longest}");
        remove_tree(&root).unwrap();
        assert!(!root.exists());
    }
}
