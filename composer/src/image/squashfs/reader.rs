//! Reads files back out of a squashfs 4.0 image (zstd, as [`super::write`]
//! and `mksquashfs -comp zstd` produce), from any position of a file or a
//! block device: a generation file, or the root partition of a slot.
//!
//! `pak system switch` needs three files of a generation (its description,
//! kernel and initrd) and `/etc` of the booted slot; it never needs to walk a
//! whole image, so this looks paths up one directory at a time. Every length
//! and position comes from the image and is checked against the image's own
//! size before it is used: a corrupt or hostile generation file is refused
//! with an error, never followed off the end or into a huge allocation.
//!
//! It is longer than most files here (about 830 lines of code, then its
//! corruption tests) because it is one job, reading the format
//! defensively: every table goes through the same bounds-checked reads, and
//! splitting the tables apart would spread those checks thin.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::{MAGIC, META_SIZE, NO_FRAGMENT, NO_XATTR, NONE_U64, UNCOMPRESSED_BLOCK, ZSTD_ID};

/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_LINKS: usize = 40;
/// The largest file read into memory: kernels and initrds are tens of MiB.
const MAX_READ: u64 = 1 << 30;

/// A squashfs image at `base` in `R`.
pub struct Reader<R> {
    r: R,
    base: u64,
    sb: Superblock,
    /// Decompressed metadata blocks by absolute position: (bytes, position
    /// of the next block).
    meta: HashMap<u64, (Vec<u8>, u64)>,
}

#[derive(Debug, Clone)]
struct Superblock {
    block_size: u32,
    fragments: u32,
    root: u64,
    bytes_used: u64,
    inode_table: u64,
    directory_table: u64,
    fragment_table: u64,
    mtime: u32,
    id_count: u16,
    id_table: u64,
    xattr_table: u64,
    export_table: u64,
}

/// What a walk says about one path: named fields in a fixed order (the
/// most telling first), so two images compare field by field and a
/// difference can be named. Plain strings keep the type free of this
/// module, which the squashfs module does not re-export.
pub type Fields = Vec<(&'static str, String)>;
/// One path of a walk (`/` for the root, `/usr/bin/x`) and its fields, or
/// why they cannot be read.
pub type Walked = (String, std::result::Result<Fields, String>);

/// What a path names inside the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadNode {
    Dir,
    File { size: u64 },
    Symlink(String),
    Other,
}

/// A parsed inode: what the reader needs of it.
#[derive(Debug, Clone)]
enum Inode {
    Dir {
        start: u32,
        offset: u16,
        size: u32,
    },
    File {
        blocks_start: u64,
        size: u64,
        fragment: u32,
        frag_offset: u32,
        sizes: Vec<u32>,
    },
    Symlink(String),
    Other,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl<R: Read + Seek> Reader<R> {
    /// Opens the image that starts at byte `base` of `r`.
    pub fn open(mut r: R, base: u64) -> Result<Self> {
        let mut b = [0u8; 96];
        r.seek(SeekFrom::Start(base))?;
        r.read_exact(&mut b)
            .context("too short for a squashfs superblock")?;
        if u32_at(&b, 0) != MAGIC {
            bail!("not a squashfs image (bad magic number)");
        }
        if u16_at(&b, 28) != 4 {
            bail!("squashfs version {} is not 4", u16_at(&b, 28));
        }
        if u16_at(&b, 20) != ZSTD_ID {
            bail!("this squashfs is not zstd-compressed (pak writes zstd)");
        }
        let block_size = u32_at(&b, 12);
        if !block_size.is_power_of_two()
            || !(4096..=1 << 20).contains(&block_size)
            || 1u32.checked_shl(u16_at(&b, 22).into()) != Some(block_size)
        {
            bail!("squashfs block size {block_size} is invalid");
        }
        let sb = Superblock {
            block_size,
            fragments: u32_at(&b, 16),
            root: u64_at(&b, 32),
            bytes_used: u64_at(&b, 40),
            inode_table: u64_at(&b, 64),
            directory_table: u64_at(&b, 72),
            fragment_table: u64_at(&b, 80),
            mtime: u32_at(&b, 8),
            id_count: u16_at(&b, 26),
            id_table: u64_at(&b, 48),
            xattr_table: u64_at(&b, 56),
            export_table: u64_at(&b, 88),
        };
        let end = r.seek(SeekFrom::End(0))?;
        if sb.bytes_used < 96 || base.saturating_add(sb.bytes_used) > end {
            bail!(
                "the squashfs claims {} bytes but only {} are there: it is truncated",
                sb.bytes_used,
                end.saturating_sub(base)
            );
        }
        for (what, at) in [
            ("inode table", sb.inode_table),
            ("directory table", sb.directory_table),
        ] {
            if at < 96 || at >= sb.bytes_used {
                bail!("the squashfs {what} lies outside the image");
            }
        }
        Ok(Reader {
            r,
            base,
            sb,
            meta: HashMap::new(),
        })
    }

    /// How many bytes the image occupies (what its sha256 covers).
    pub fn bytes_used(&self) -> u64 {
        self.sb.bytes_used
    }

    /// The one modification time the image and its inodes carry (pak's
    /// writer stamps `SOURCE_DATE_EPOCH`, or 0).
    pub fn mtime(&self) -> u32 {
        self.sb.mtime
    }

    /// Reads `len` bytes at image position `at`, within the image.
    fn read_at(&mut self, at: u64, len: u64) -> Result<Vec<u8>> {
        if at.checked_add(len).is_none_or(|e| e > self.sb.bytes_used) {
            bail!("the squashfs points past its end (corrupt image)");
        }
        let mut v = vec![0u8; len as usize];
        self.r.seek(SeekFrom::Start(self.base + at))?;
        self.r.read_exact(&mut v)?;
        Ok(v)
    }

    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>> {
        let out =
            zstd::bulk::decompress(data, limit).context("a squashfs block does not decompress")?;
        Ok(out)
    }

    /// The metadata block at image position `at`.
    fn meta_block(&mut self, at: u64) -> Result<(Vec<u8>, u64)> {
        if let Some(b) = self.meta.get(&at) {
            return Ok(b.clone());
        }
        let h = self.read_at(at, 2)?;
        let word = u16_at(&h, 0);
        let len = (word & 0x7FFF) as u64;
        if len == 0 || len > META_SIZE as u64 {
            bail!("a squashfs metadata block has an invalid length");
        }
        let raw = self.read_at(at + 2, len)?;
        let bytes = if word & 0x8000 != 0 {
            raw
        } else {
            self.decompress(&raw, META_SIZE)?
        };
        let entry = (bytes, at + 2 + len);
        self.meta.insert(at, entry.clone());
        Ok(entry)
    }

    /// `len` bytes of a metadata stream starting in the block at `block`
    /// (image position) at `offset`, continuing into the blocks after it.
    fn meta_read(&mut self, mut block: u64, offset: u16, len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len.min(1 << 20));
        let mut off = offset as usize;
        while out.len() < len {
            let (bytes, next) = self.meta_block(block)?;
            if off > bytes.len() {
                bail!("a squashfs metadata reference points past its block");
            }
            let take = (len - out.len()).min(bytes.len() - off);
            out.extend_from_slice(&bytes[off..off + take]);
            off = 0;
            block = next;
        }
        Ok(out)
    }

    fn inode(&mut self, reference: u64) -> Result<Inode> {
        let block = self.sb.inode_table + (reference >> 16);
        let offset = (reference & 0xFFFF) as u16;
        let h = self.meta_read(block, offset, 16)?;
        let kind = u16_at(&h, 0);
        let body = |me: &mut Self, n: usize| me.meta_read(block, offset, 16 + n);
        Ok(match kind {
            1 => {
                let b = body(self, 16)?;
                Inode::Dir {
                    start: u32_at(&b, 16),
                    size: u16_at(&b, 24) as u32,
                    offset: u16_at(&b, 26),
                }
            }
            8 => {
                let b = body(self, 24)?;
                Inode::Dir {
                    size: u32_at(&b, 20),
                    start: u32_at(&b, 24),
                    offset: u16_at(&b, 34),
                }
            }
            2 | 9 => {
                let (head, blocks_start, size, fragment, frag_offset) = if kind == 2 {
                    let b = body(self, 16)?;
                    (
                        32,
                        u32_at(&b, 16) as u64,
                        u32_at(&b, 28) as u64,
                        u32_at(&b, 20),
                        u32_at(&b, 24),
                    )
                } else {
                    let b = body(self, 40)?;
                    (
                        56,
                        u64_at(&b, 16),
                        u64_at(&b, 24),
                        u32_at(&b, 44),
                        u32_at(&b, 48),
                    )
                };
                if size > self.sb.bytes_used.saturating_mul(1 << 10) {
                    bail!("a squashfs file claims an impossible size");
                }
                let bs = self.sb.block_size as u64;
                let n = if fragment == NO_FRAGMENT {
                    size.div_ceil(bs)
                } else {
                    size / bs
                } as usize;
                let b = self.meta_read(block, offset, head + 4 * n)?;
                let sizes = (0..n).map(|k| u32_at(&b, head + 4 * k)).collect();
                Inode::File {
                    blocks_start,
                    size,
                    fragment,
                    frag_offset,
                    sizes,
                }
            }
            3 | 10 => {
                let b = body(self, 8)?;
                let len = u32_at(&b, 20) as usize;
                if len > 4096 {
                    bail!("a squashfs symlink target is too long");
                }
                let b = self.meta_read(block, offset, 24 + len)?;
                Inode::Symlink(String::from_utf8_lossy(&b[24..]).into_owned())
            }
            4..=7 | 11..=14 => Inode::Other,
            t => bail!("unknown squashfs inode type {t} (corrupt image)"),
        })
    }

    /// The (name, inode reference) pairs of a directory.
    fn listing(&mut self, start: u32, offset: u16, size: u32) -> Result<Vec<(String, u64)>> {
        // The size counts 3 bytes for the `.` and `..` the format omits.
        let len = (size as usize).saturating_sub(3);
        let block = self.sb.directory_table + start as u64;
        let b = self.meta_read(block, offset, len)?;
        let mut out = Vec::new();
        let mut p = 0;
        while p + 12 <= b.len() {
            let count = u32_at(&b, p) as usize + 1;
            let inode_block = u32_at(&b, p + 4) as u64;
            p += 12;
            for _ in 0..count {
                if p + 8 > b.len() {
                    bail!("a squashfs directory listing is truncated");
                }
                let off = u16_at(&b, p) as u64;
                let name_len = u16_at(&b, p + 6) as usize + 1;
                p += 8;
                let name = b
                    .get(p..p + name_len)
                    .context("a squashfs directory listing is truncated")?;
                out.push((
                    String::from_utf8_lossy(name).into_owned(),
                    (inode_block << 16) | off,
                ));
                p += name_len;
            }
        }
        Ok(out)
    }

    /// Resolves `path` (relative to the image root), following symlinks
    /// inside the image; `follow_last` decides for the last component.
    fn resolve(&mut self, path: &str, follow_last: bool) -> Result<Inode> {
        let mut stack: Vec<(u64, Inode)> = vec![(self.sb.root, self.inode(self.sb.root)?)];
        let mut todo: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .rev()
            .map(String::from)
            .collect();
        let mut links = 0;
        while let Some(comp) = todo.pop() {
            if comp == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let (start, offset, size) = match &stack.last().expect("root").1 {
                Inode::Dir {
                    start,
                    offset,
                    size,
                } => (*start, *offset, *size),
                _ => bail!("/{path}: a component is not a directory"),
            };
            let reference = self
                .listing(start, offset, size)?
                .into_iter()
                .find(|(n, _)| *n == comp)
                .map(|(_, r)| r)
                .with_context(|| format!("/{path} is not in the image"))?;
            let node = self.inode(reference)?;
            match node {
                Inode::Symlink(target) if follow_last || !todo.is_empty() => {
                    links += 1;
                    if links > MAX_LINKS {
                        bail!("/{path}: too many levels of symbolic links");
                    }
                    if target.starts_with('/') {
                        stack.truncate(1);
                    }
                    todo.extend(
                        target
                            .split('/')
                            .filter(|c| !c.is_empty() && *c != ".")
                            .rev()
                            .map(String::from),
                    );
                }
                other => stack.push((reference, other)),
            }
        }
        Ok(stack.pop().expect("root").1)
    }

    /// What `path` is (symlinks not followed for the last component).
    pub fn stat(&mut self, path: &str) -> Result<Option<ReadNode>> {
        let node = match self.resolve(path, false) {
            Ok(n) => n,
            Err(e) if e.to_string().ends_with("is not in the image") => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(match node {
            Inode::Dir { .. } => ReadNode::Dir,
            Inode::File { size, .. } => ReadNode::File { size },
            Inode::Symlink(t) => ReadNode::Symlink(t),
            Inode::Other => ReadNode::Other,
        }))
    }

    /// The names in directory `path`, in the image's (byte) order.
    pub fn list(&mut self, path: &str) -> Result<Vec<String>> {
        match self.resolve(path, true)? {
            Inode::Dir {
                start,
                offset,
                size,
            } => Ok(self
                .listing(start, offset, size)?
                .into_iter()
                .map(|(n, _)| n)
                .collect()),
            _ => bail!("/{path} is not a directory in the image"),
        }
    }

    /// The bytes of file `path` (following symlinks inside the image).
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>> {
        let inode = self.resolve(path, true)?;
        let Inode::File { size, .. } = inode else {
            bail!("/{path} is not a regular file in the image");
        };
        if size > MAX_READ {
            bail!("/{path} is {size} bytes, more than pak reads from an image at once");
        }
        let mut out = Vec::with_capacity(size as usize);
        self.file_data(&inode, &format!("/{path}"), |chunk| {
            out.extend_from_slice(chunk)
        })?;
        Ok(out)
    }

    /// Feeds the bytes of a file inode, in order, to `sink`, one block at
    /// a time (so a walk hashes big files without holding them).
    fn file_data(&mut self, inode: &Inode, path: &str, mut sink: impl FnMut(&[u8])) -> Result<()> {
        let Inode::File {
            blocks_start,
            size,
            fragment,
            frag_offset,
            sizes,
        } = inode
        else {
            bail!("{path} is not a regular file in the image");
        };
        let (size, fragment) = (*size, *fragment);
        let bs = self.sb.block_size as usize;
        let mut done = 0u64;
        let mut pos = *blocks_start;
        let zeros = vec![0u8; bs];
        for word in sizes {
            let want = (size - done).min(bs as u64) as usize;
            let len = (word & !UNCOMPRESSED_BLOCK) as u64;
            if len == 0 {
                sink(&zeros[..want]);
                done += want as u64;
                continue;
            }
            let raw = self.read_at(pos, len)?;
            pos += len;
            let block = if word & UNCOMPRESSED_BLOCK != 0 {
                raw
            } else {
                self.decompress(&raw, bs)?
            };
            if block.len() < want {
                bail!("{path}: its blocks hold fewer bytes than its size");
            }
            sink(&block[..want]);
            done += want as u64;
        }
        if fragment != NO_FRAGMENT {
            let frag = self.fragment_block(fragment, path)?;
            let tail = (size - done) as usize;
            let from = *frag_offset as usize;
            sink(
                frag.get(from..from + tail)
                    .with_context(|| format!("{path}: its fragment is too short"))?,
            );
            done += tail as u64;
        }
        if done != size {
            bail!("{path}: its blocks hold fewer bytes than its size");
        }
        Ok(())
    }

    /// Where fragment block `index` is stored: (image position, size word).
    fn fragment_entry(&mut self, index: u32) -> Result<(u64, u32)> {
        if index >= self.sb.fragments {
            bail!("a file names fragment {index}, which the image does not have");
        }
        let index_at = self.sb.fragment_table + (index as u64 / 512) * 8;
        let block = u64_at(&self.read_at(index_at, 8)?, 0);
        let e = self.meta_read(block, (index % 512) as u16 * 16, 16)?;
        Ok((u64_at(&e, 0), u32_at(&e, 8)))
    }

    fn fragment_block(&mut self, index: u32, path: &str) -> Result<Vec<u8>> {
        let (start, word) = self
            .fragment_entry(index)
            .with_context(|| path.to_string())?;
        let len = (word & !UNCOMPRESSED_BLOCK) as u64;
        let raw = self.read_at(start, len)?;
        if word & UNCOMPRESSED_BLOCK != 0 {
            Ok(raw)
        } else {
            self.decompress(&raw, self.sb.block_size as usize)
        }
    }

    /// The uid or gid stored at `index` of the id table.
    fn id(&mut self, index: u16) -> Result<u32> {
        if index >= self.sb.id_count {
            bail!("an inode names owner id {index}, which the id table does not have");
        }
        let per_block = (META_SIZE / 4) as u64;
        let at = self.sb.id_table + (index as u64 / per_block) * 8;
        let block = u64_at(&self.read_at(at, 8)?, 0);
        let b = self.meta_read(block, ((index as u64 % per_block) * 4) as u16, 4)?;
        Ok(u32_at(&b, 0))
    }

    /// Every field of the inode at `reference` that decides the image's
    /// bytes, content included (as a sha256), named.
    fn fields(&mut self, reference: u64, inode: &Inode, path: &str) -> Result<Fields> {
        let block = self.sb.inode_table + (reference >> 16);
        let offset = (reference & 0xFFFF) as u16;
        let h = self.meta_read(block, offset, 16)?;
        let type_code = u16_at(&h, 0);
        // The kind-specific words after the common header, long enough for
        // every inode type's fixed part.
        let x = |me: &mut Self, n: usize| -> Result<Vec<u8>> {
            Ok(me.meta_read(block, offset, 16 + n)?[16..].to_vec())
        };
        let xattr = |v: u32| {
            if v == NO_XATTR {
                "none".to_string()
            } else {
                v.to_string()
            }
        };
        let mut f: Fields = Vec::new();
        let kind = match type_code {
            1 | 8 => "directory",
            2 | 9 => "regular file",
            3 | 10 => "symbolic link",
            4 | 11 => "block device",
            5 | 12 => "character device",
            6 | 13 => "fifo",
            _ => "socket",
        };
        let form = if type_code >= 8 { "extended" } else { "basic" };
        f.push(("type", kind.to_string()));
        match inode {
            Inode::File {
                size,
                blocks_start,
                fragment,
                frag_offset,
                sizes,
            } => {
                let mut hash = Sha256::new();
                let content = match self.file_data(inode, path, |c| hash.update(c)) {
                    Ok(()) => format!("sha256 {}", hex::encode(hash.finalize())),
                    Err(e) => format!("unreadable ({e:#})"),
                };
                f.push(("content", content));
                f.push(("size", size.to_string()));
                if type_code == 9 {
                    let b = x(self, 40)?;
                    f.push(("link count", u32_at(&b, 24).to_string()));
                    f.push(("sparse bytes", u64_at(&b, 16).to_string()));
                    f.push(("xattrs", xattr(u32_at(&b, 36))));
                }
                let words: Vec<String> = sizes.iter().map(|w| format!("{w:#x}")).collect();
                let frag = if *fragment == NO_FRAGMENT {
                    "no fragment".to_string()
                } else {
                    format!("fragment {fragment} at {frag_offset}")
                };
                f.push((
                    "storage",
                    format!(
                        "blocks at byte {blocks_start}, sizes [{}], {frag}",
                        words.join(", ")
                    ),
                ));
            }
            Inode::Symlink(target) => {
                f.push(("target", target.clone()));
                f.push(("link count", u32_at(&x(self, 4)?, 0).to_string()));
            }
            Inode::Dir { .. } => {
                let b = x(self, 24)?;
                let (nlink, parent) = if type_code == 1 {
                    (u32_at(&b, 4), u32_at(&b, 12))
                } else {
                    (u32_at(&b, 0), u32_at(&b, 12))
                };
                f.push(("link count", nlink.to_string()));
                f.push(("parent inode", parent.to_string()));
                if type_code == 8 {
                    f.push(("xattrs", xattr(u32_at(&b, 20))));
                }
            }
            Inode::Other => {
                let b = x(self, 12)?;
                f.push(("link count", u32_at(&b, 0).to_string()));
                match type_code {
                    4 | 5 | 11 | 12 => {
                        let dev = u32_at(&b, 4);
                        f.push((
                            "device",
                            format!(
                                "{}:{}",
                                (dev >> 8) & 0xFFF,
                                (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
                            ),
                        ));
                        if type_code >= 11 {
                            f.push(("xattrs", xattr(u32_at(&b, 8))));
                        }
                    }
                    13 | 14 => f.push(("xattrs", xattr(u32_at(&b, 4)))),
                    _ => {}
                }
            }
        }
        f.push(("mode", format!("{:04o}", u16_at(&h, 2))));
        let uid = self.id(u16_at(&h, 4))?;
        let gid = self.id(u16_at(&h, 6))?;
        f.push(("owner", format!("{uid}:{gid}")));
        f.push(("mtime", u32_at(&h, 8).to_string()));
        f.push(("inode number", u32_at(&h, 12).to_string()));
        f.push(("inode form", form.to_string()));
        Ok(f)
    }

    /// Every path of the image, directories before what they hold and
    /// names in byte order, each with its [`Fields`]. A part of a corrupt
    /// image that cannot be read is an entry with the reason, and the walk
    /// goes on with the rest.
    ///
    /// Iterative, with no depth limit: a package may nest directories
    /// thousands deep, and the walk holds one pending entry per sibling of
    /// the path it is in, on the heap. A corrupt image whose listings loop
    /// ends because every directory is entered once.
    pub fn walk(&mut self) -> Vec<Walked> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![(String::new(), self.sb.root)];
        while let Some((path, reference)) = stack.pop() {
            let shown = if path.is_empty() {
                "/".to_string()
            } else {
                path.clone()
            };
            let inode = match self.inode(reference) {
                Ok(i) => i,
                Err(e) => {
                    out.push((shown, Err(format!("its inode cannot be read ({e:#})"))));
                    continue;
                }
            };
            let fields = self
                .fields(reference, &inode, &shown)
                .map_err(|e| format!("its inode cannot be read ({e:#})"));
            let Inode::Dir {
                start,
                offset,
                size,
            } = inode
            else {
                out.push((shown, fields));
                continue;
            };
            if !seen.insert(reference) {
                out.push((
                    shown,
                    Err("its directory is its own ancestor (corrupt image)".into()),
                ));
                continue;
            }
            match self.listing(start, offset, size) {
                Ok(list) => {
                    out.push((shown, fields));
                    // Reversed onto the stack, so names come off in order.
                    for (name, child) in list.into_iter().rev() {
                        stack.push((format!("{path}/{name}"), child));
                    }
                }
                Err(e) => out.push((
                    shown,
                    Err(format!("its directory listing cannot be read ({e:#})")),
                )),
            }
        }
        out
    }

    /// What lies at byte `at` of the image: a file's data, a fragment
    /// block and the files whose tails it holds, a metadata table, or the
    /// pak seal behind the image.
    pub fn place_of(&mut self, at: u64) -> String {
        let sb = self.sb.clone();
        if at < 96 {
            return "the squashfs superblock".into();
        }
        if at >= sb.bytes_used {
            return if at < sb.bytes_used + 40 {
                "the pak seal behind the squashfs (the sha256 of its bytes)".into()
            } else {
                "the padding behind the squashfs".into()
            };
        }
        if at < sb.inode_table {
            return self.data_owner(at);
        }
        let first_pointer = |me: &mut Self, table: u64| -> Option<u64> {
            me.read_at(table, 8).ok().map(|b| u64_at(&b, 0))
        };
        let mut regions = vec![
            (sb.inode_table, "the inode table".to_string()),
            (sb.directory_table, "the directory table".to_string()),
            (sb.fragment_table, "the fragment table's index".to_string()),
            (sb.id_table, "the id table's index".to_string()),
        ];
        if sb.fragments > 0
            && let Some(p) = first_pointer(self, sb.fragment_table)
        {
            regions.push((p, "the fragment table".into()));
        }
        if let Some(p) = first_pointer(self, sb.id_table) {
            regions.push((p, "the id table (owners)".into()));
        }
        if sb.export_table != NONE_U64 {
            regions.push((sb.export_table, "the export table".into()));
        }
        if sb.xattr_table != NONE_U64 {
            regions.push((sb.xattr_table, "the xattr table".into()));
        }
        regions
            .into_iter()
            .filter(|(start, _)| *start <= at)
            .max_by_key(|(start, _)| *start)
            .map(|(_, what)| what)
            .unwrap_or_else(|| "the squashfs metadata".into())
    }

    /// The file (or fragment block) whose stored bytes cover `at`.
    fn data_owner(&mut self, at: u64) -> String {
        let mut tails: HashMap<u32, Vec<String>> = HashMap::new();
        let mut stack = vec![(String::new(), self.sb.root)];
        let mut seen = HashSet::new();
        while let Some((path, reference)) = stack.pop() {
            let Ok(inode) = self.inode(reference) else {
                continue;
            };
            match inode {
                Inode::Dir {
                    start,
                    offset,
                    size,
                } if seen.insert(reference) => {
                    if let Ok(list) = self.listing(start, offset, size) {
                        for (name, child) in list.into_iter().rev() {
                            stack.push((format!("{path}/{name}"), child));
                        }
                    }
                }
                Inode::File {
                    blocks_start,
                    fragment,
                    sizes,
                    ..
                } => {
                    let stored: u64 = sizes.iter().map(|w| (w & !UNCOMPRESSED_BLOCK) as u64).sum();
                    // Sums of stored offsets and lengths saturate: a
                    // hostile image may place them near 2^64.
                    if (blocks_start..blocks_start.saturating_add(stored)).contains(&at) {
                        let mut pos = blocks_start;
                        for (k, w) in sizes.iter().enumerate() {
                            let len = (w & !UNCOMPRESSED_BLOCK) as u64;
                            if at < pos.saturating_add(len) {
                                return format!(
                                    "the data of {path} (its block {k}, {})",
                                    if w & UNCOMPRESSED_BLOCK != 0 {
                                        "stored uncompressed"
                                    } else {
                                        "zstd-compressed"
                                    }
                                );
                            }
                            pos = pos.saturating_add(len);
                        }
                    }
                    if fragment != NO_FRAGMENT {
                        tails.entry(fragment).or_default().push(path);
                    }
                }
                _ => {}
            }
        }
        for index in 0..self.sb.fragments {
            let Ok((start, word)) = self.fragment_entry(index) else {
                break;
            };
            let len = (word & !UNCOMPRESSED_BLOCK) as u64;
            if (start..start.saturating_add(len)).contains(&at) {
                let mut names = tails.remove(&index).unwrap_or_default();
                names.sort();
                let more = names.len().saturating_sub(5);
                names.truncate(5);
                return format!(
                    "fragment block {index}, which holds the tails of {}{}",
                    names.join(", "),
                    if more > 0 {
                        format!(" and {more} more files")
                    } else {
                        String::new()
                    }
                );
            }
        }
        "the data area, outside every file's blocks".into()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Entry, Kind, Options, Source, Tree, write};
    use super::*;

    fn entry(kind: Kind, mode: u32) -> Entry {
        Entry {
            kind,
            mode,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        }
    }

    fn sample() -> (Tree, Vec<(String, Vec<u8>)>) {
        let mut t = Tree::default();
        let mut files = Vec::new();
        t.entries.insert(String::new(), entry(Kind::Dir, 0o755));
        for d in ["etc", "usr", "usr/bin", "usr/lib", "big"] {
            t.entries.insert(d.into(), entry(Kind::Dir, 0o755));
        }
        let patterned = |n: usize, seed: u32| -> Vec<u8> {
            (0..n)
                .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
                .collect()
        };
        let mut sparse = vec![0u8; 3 * 131072 + 17];
        sparse[131072 * 2 + 5] = 9;
        for (p, data) in [
            ("etc/hostname", b"box\n".to_vec()),
            ("etc/empty", vec![]),
            ("usr/bin/tool", patterned(300_000, 1)),
            ("usr/lib/exact", patterned(131072, 2)),
            ("usr/lib/sparse", sparse),
            ("usr/lib/zeros", vec![0u8; 2 * 131072]),
        ] {
            t.entries.insert(
                p.into(),
                entry(Kind::File(Source::Bytes(data.clone())), 0o644),
            );
            files.push((p.to_string(), data));
        }
        // Enough names for several directory headers and metadata blocks.
        for i in 0..700 {
            let p = format!("big/a-somewhat-long-file-name-{i:04}");
            let data = format!("file {i}\n").into_bytes();
            t.entries.insert(
                p.clone(),
                entry(Kind::File(Source::Bytes(data.clone())), 0o644),
            );
            files.push((p, data));
        }
        t.entries.insert(
            "usr/bin/link".into(),
            entry(Kind::Symlink("tool".into()), 0o777),
        );
        t.entries
            .insert("bin".into(), entry(Kind::Symlink("usr/bin".into()), 0o777));
        t.entries.insert(
            "usr/lib/abs".into(),
            entry(Kind::Symlink("/etc/hostname".into()), 0o777),
        );
        t.entries.insert(
            "etc/hard".into(),
            entry(Kind::HardLink("etc/hostname".into()), 0o644),
        );
        (t, files)
    }

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("g.sqfs");
        let (tree, files) = sample();
        write(&tree, &img, &Options::default()).unwrap();
        // At an offset, as a slot sits on a disk.
        let disk = dir.path().join("disk");
        let mut bytes = vec![7u8; 4096];
        bytes.extend(std::fs::read(&img).unwrap());
        std::fs::write(&disk, &bytes).unwrap();
        let mut r = Reader::open(std::fs::File::open(&disk).unwrap(), 4096).unwrap();
        for (p, data) in &files {
            assert_eq!(&r.read(p).unwrap(), data, "{p}");
        }
        assert_eq!(r.read("bin/link").unwrap(), files[2].1);
        assert_eq!(r.read("usr/lib/abs").unwrap(), b"box\n");
        assert_eq!(r.read("etc/hard").unwrap(), b"box\n");
        assert_eq!(r.read("usr/../etc/./hostname").unwrap(), b"box\n");
        assert_eq!(
            r.stat("bin").unwrap(),
            Some(ReadNode::Symlink("usr/bin".into()))
        );
        assert_eq!(r.stat("etc").unwrap(), Some(ReadNode::Dir));
        assert_eq!(r.stat("etc/nothing").unwrap(), None);
        assert_eq!(r.list("big").unwrap().len(), 700);
        assert_eq!(r.list("etc").unwrap(), ["empty", "hard", "hostname"]);
        let err = r.read("etc").unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(r.read("etc/hostname/x").is_err());
    }

    /// Runs `f` on a thread with a 256 KiB stack: a recursion per level
    /// of a tree thousands deep would overflow it.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_tree_thousands_deep_is_written_and_walked_on_a_small_stack() {
        on_small_stack(|| {
            const DEPTH: usize = 5000;
            let mut t = Tree::default();
            t.entries.insert(String::new(), entry(Kind::Dir, 0o755));
            let mut path = String::new();
            for level in 0..DEPTH {
                if !path.is_empty() {
                    path.push('/');
                }
                // One level with the longest name a file system takes.
                if level == DEPTH / 2 {
                    path.push_str(&"n".repeat(255));
                } else {
                    path.push('d');
                }
                t.entries.insert(path.clone(), entry(Kind::Dir, 0o755));
            }
            let bottom = format!("{path}/bottom");
            t.entries.insert(
                bottom.clone(),
                entry(Kind::File(Source::Bytes(b"deep\n".to_vec())), 0o644),
            );
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("deep.sqfs");
            let opts = Options {
                level: 1,
                ..Options::default()
            };
            write(&t, &img, &opts).unwrap();
            let mut r = Reader::open(std::fs::File::open(&img).unwrap(), 0).unwrap();
            assert_eq!(r.read(&bottom).unwrap(), b"deep\n");
            let walk = r.walk();
            assert_eq!(walk.len(), DEPTH + 2);
            for (p, f) in &walk {
                assert!(f.is_ok(), "{}: {f:?}", &p[..p.len().min(80)]);
            }
            assert_eq!(walk.last().unwrap().0, format!("/{bottom}"));
        });
    }

    #[test]
    fn reads_what_mksquashfs_wrote() {
        if std::process::Command::new("mksquashfs")
            .arg("-version")
            .output()
            .is_err()
        {
            eprintln!("skipped: no mksquashfs (squashfs-tools)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(src.join("d/e/big"), &big).unwrap();
        std::fs::write(src.join("small"), b"small").unwrap();
        std::os::unix::fs::symlink("d/e/big", src.join("l")).unwrap();
        let img = dir.path().join("m.sqfs");
        let st = std::process::Command::new("mksquashfs")
            .arg(&src)
            .arg(&img)
            .args(["-comp", "zstd", "-quiet", "-no-progress", "-noappend"])
            .status()
            .unwrap();
        assert!(st.success());
        let mut r = Reader::open(std::fs::File::open(&img).unwrap(), 0).unwrap();
        assert_eq!(r.read("l").unwrap(), big);
        assert_eq!(r.read("small").unwrap(), b"small");
    }

    #[test]
    fn corrupt_images_give_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("g.sqfs");
        let (tree, files) = sample();
        write(&tree, &img, &Options::default()).unwrap();
        let good = std::fs::read(&img).unwrap();
        let err = Reader::open(std::io::Cursor::new(&good[..good.len() / 2]), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        let mut wrong = good.clone();
        wrong[0] ^= 1;
        assert!(Reader::open(std::io::Cursor::new(wrong), 0).is_err());
        // Flip bytes all over the image: every read either succeeds or
        // fails cleanly.
        let mut state = 0x2545F4914F6CDD1Du64;
        for _ in 0..300 {
            let mut bad = good.clone();
            for _ in 0..8 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = 96 + (state % (good.len() as u64 - 96)) as usize;
                bad[at] = (state >> 32) as u8;
            }
            if let Ok(mut r) = Reader::open(std::io::Cursor::new(bad), 0) {
                for (p, _) in files.iter().take(8) {
                    let _ = r.read(p);
                }
                let _ = r.list("big");
                let _ = r.walk();
                let _ = r.place_of(state % good.len() as u64);
            }
        }
    }

    /// A fragment table entry placed near 2^64 (found by the fuzzer):
    /// naming what lies at a byte must not overflow summing its offset
    /// and length.
    #[test]
    fn a_place_in_an_image_with_a_hostile_fragment_offset_is_named_without_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("g.sqfs");
        let mut tree = Tree::default();
        tree.entries.insert(String::new(), entry(Kind::Dir, 0o755));
        tree.entries.insert(
            "tail".into(),
            entry(
                Kind::File(Source::Bytes(b"a tail in a fragment".to_vec())),
                0o644,
            ),
        );
        write(&tree, &img, &Options::default()).unwrap();
        let mut bytes = std::fs::read(&img).unwrap();
        // The superblock's fragment table start (offset 80) points at the
        // index, whose first word points at the one metadata block: a
        // 16-byte entry does not compress, so it is stored as it is.
        let table = u64_at(&bytes, 80) as usize;
        let block = u64_at(&bytes, table) as usize;
        let header = u16::from_le_bytes([bytes[block], bytes[block + 1]]);
        assert_eq!(header, 0x8000 | 16, "the fragment entry is stored raw");
        bytes[block + 2..block + 10].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        let mut r = Reader::open(std::io::Cursor::new(bytes), 0).unwrap();
        let named = r.place_of(100);
        assert!(!named.is_empty());
    }

    #[test]
    fn a_walk_sees_every_field_and_a_place_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("g.sqfs");
        let (mut tree, _) = sample();
        tree.entries.insert("dev".into(), entry(Kind::Dir, 0o755));
        tree.entries.insert(
            "dev/null".into(),
            Entry {
                kind: Kind::CharDev { major: 1, minor: 3 },
                mode: 0o666,
                uid: 0,
                gid: 5,
                xattrs: vec![],
            },
        );
        write(
            &tree,
            &img,
            &Options {
                mtime: 77,
                ..Options::default()
            },
        )
        .unwrap();
        let mut r = Reader::open(std::fs::File::open(&img).unwrap(), 0).unwrap();
        assert_eq!(r.mtime(), 77);
        let walk = r.walk();
        let paths: Vec<&str> = walk.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths[0], "/");
        assert_eq!(paths.len(), tree.entries.len());
        let get = |p: &str, field: &str| -> String {
            let (_, f) = walk.iter().find(|(q, _)| q == p).unwrap();
            f.as_ref()
                .unwrap()
                .iter()
                .find(|(n, _)| *n == field)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(get("/dev/null", "device"), "1:3");
        assert_eq!(get("/dev/null", "owner"), "0:5");
        assert_eq!(get("/dev/null", "mode"), "0666");
        assert_eq!(get("/etc/hostname", "mtime"), "77");
        assert_eq!(get("/etc/hard", "link count"), "2");
        assert_eq!(
            get("/usr/bin/tool", "content"),
            format!(
                "sha256 {}",
                crate::util::fsutil::sha256_hex(&r.read("usr/bin/tool").unwrap())
            )
        );
        assert_eq!(get("/bin", "target"), "usr/bin");

        // A byte of the tool's second block, changed: the walk of the
        // changed image differs at that file, and the place names it.
        let first_block = match walk.iter().find(|(p, _)| p == "/usr/bin/tool") {
            Some((_, Ok(f))) => f.iter().find(|(n, _)| *n == "storage").unwrap().1.clone(),
            _ => panic!(),
        };
        let start: u64 = first_block
            .strip_prefix("blocks at byte ")
            .and_then(|s| s.split(',').next())
            .unwrap()
            .parse()
            .unwrap();
        let mut bytes = std::fs::read(&img).unwrap();
        let at = start + 10;
        bytes[at as usize] ^= 0x40;
        let mut bad = Reader::open(std::io::Cursor::new(bytes), 0).unwrap();
        assert!(
            r.place_of(at)
                .starts_with("the data of /usr/bin/tool (its block 0"),
            "{}",
            r.place_of(at)
        );
        let changed = bad.walk();
        let differing: Vec<&str> = walk
            .iter()
            .zip(&changed)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.0.as_str())
            .collect();
        assert_eq!(differing, ["/usr/bin/tool"]);
        assert_eq!(r.place_of(3), "the squashfs superblock");
        assert_eq!(
            r.place_of(r.bytes_used() + 1),
            "the pak seal behind the squashfs (the sha256 of its bytes)"
        );
        assert_eq!(r.place_of(r.sb.inode_table), "the inode table");
        assert!(
            r.place_of(r.sb.inode_table - 1).contains("the tails of")
                || r.place_of(r.sb.inode_table - 1).starts_with("the data of")
        );
    }
}
