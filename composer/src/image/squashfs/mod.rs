//! squashfs 4.0 (zstd), pak's generation format: the tree to write, the
//! writer (`write`: reproducible, parallel, with a content-addressed cache
//! of compressed blocks) and the reader (`reader`).
//!
//! Layout, as the kernel reads it (Documentation/filesystems/squashfs.rst):
//! superblock, data blocks and fragment blocks, inode table, directory
//! table, fragment table, id table, xattr table. Metadata is stored in
//! 8 KiB blocks, each behind a 16-bit length header.
//!
//! Inodes are written children-first, so a directory's listing can name
//! its children's inode references and its own inode can point at that
//! listing. Every inode gets the same mtime; entries are sorted by name; so
//! the same tree gives the same bytes, whatever the thread count or the
//! cache holds.
//!
//! The block cache keys compressed data blocks by the sha256 of their
//! uncompressed bytes (and the compressor settings): a rebuild where one
//! package changed recompresses only that package's blocks. Content-
//! addressed blocks also suit delta updates later (a host fetches the
//! blocks its current slot lacks).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

mod data;
mod reader;
mod write;
mod zstd_fast;
pub use reader::{ReadNode, Reader};

/// Writes `tree` as a squashfs image at `out` (see [`write::write`]).
pub fn write(tree: &Tree, out: &Path, opts: &Options) -> Result<Stats> {
    crate::util::timings::time(crate::util::timings::Step::Squashfs, || {
        write::write(tree, out, opts)
    })
}

const MAGIC: u32 = 0x7371_7368;
const ZSTD_ID: u16 = 6;
const META_SIZE: usize = 8192;
const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
const NO_XATTR: u32 = 0xFFFF_FFFF;
const NONE_U64: u64 = 0xFFFF_FFFF_FFFF_FFFF;
const UNCOMPRESSED_BLOCK: u32 = 1 << 24;
const FLAG_NO_XATTRS: u16 = 0x0200;

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

/// What a path of the tree is; a hard link names another path of the
/// tree, a regular file, whose inode it shares. Sockets are not packed: no
/// package can hold one (they are sockets of a running system).
pub type Kind = crate::packages::file::FileKind<Source>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// The tree to write: relative paths (`""` is the root) to entries.
/// Parents must be present as directories.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub block_size: u32,
    pub level: i32,
    /// The one modification time of every inode and of the image.
    pub mtime: u32,
    /// Compressed-block cache directory, if any.
    pub cache: Option<PathBuf>,
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            block_size: 128 * 1024,
            level: 15,
            mtime: 0,
            cache: None,
            threads: 0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub bytes: u64,
    pub inodes: u32,
    pub data_blocks: u64,
    pub cached_blocks: u64,
    pub fragments: u32,
}

impl Tree {
    /// Reads a directory as it is on disk (modes, owners, hard links,
    /// xattrs), for tests and benchmarks.
    pub fn from_dir(dir: &Path) -> Result<Tree> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let mut t = Tree::default();
        let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
        let mut stack = vec![(dir.to_path_buf(), String::new())];
        while let Some((abs, rel)) = stack.pop() {
            let md = std::fs::symlink_metadata(&abs)
                .with_context(|| format!("cannot read {}", abs.display()))?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                for e in std::fs::read_dir(&abs)? {
                    let name = e?
                        .file_name()
                        .to_str()
                        .context("non-UTF-8 name")?
                        .to_string();
                    let child = if rel.is_empty() {
                        name.clone()
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((abs.join(&name), child));
                }
                Kind::Dir
            } else if ft.is_symlink() {
                Kind::Symlink(
                    std::fs::read_link(&abs)?
                        .to_str()
                        .context("non-UTF-8 link")?
                        .to_string(),
                )
            } else if ft.is_file() {
                if md.nlink() > 1 {
                    if let Some(first) = inodes.get(&(md.dev(), md.ino())) {
                        Kind::HardLink(first.clone())
                    } else {
                        inodes.insert((md.dev(), md.ino()), rel.clone());
                        Kind::File(Source::Path(abs.clone()))
                    }
                } else {
                    Kind::File(Source::Path(abs.clone()))
                }
            } else if ft.is_char_device() || ft.is_block_device() {
                let (major, minor) = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
                if ft.is_char_device() {
                    Kind::CharDev { major, minor }
                } else {
                    Kind::BlockDev { major, minor }
                }
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                bail!(
                    "{} is a socket: sockets belong to a running system and are not packed",
                    abs.display()
                )
            };
            let xattrs = read_xattrs(&abs)?;
            t.entries.insert(
                rel,
                Entry {
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    xattrs,
                },
            );
        }
        // A hard link's "first" must be the sorted-first path, for determinism.
        t.normalise_hardlinks();
        Ok(t)
    }

    fn normalise_hardlinks(&mut self) {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (p, e) in &self.entries {
            if let Kind::HardLink(t) = &e.kind {
                groups.entry(t.clone()).or_default().push(p.clone());
            }
        }
        for (first, mut links) in groups {
            links.push(first.clone());
            links.sort();
            let leader = links[0].clone();
            if leader == first {
                continue;
            }
            let file = self.entries[&first].clone();
            for l in &links {
                let e = self.entries.get_mut(l).expect("present");
                if *l == leader {
                    *e = file.clone();
                } else {
                    e.kind = Kind::HardLink(leader.clone());
                }
            }
        }
    }
}

fn read_xattrs(p: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(p, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list xattrs of {}", p.display())),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(p, name.as_str(), &mut value)?;
        value.truncate(len);
        out.push((name, value));
    }
    out.sort();
    Ok(out)
}
