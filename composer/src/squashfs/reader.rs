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

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use anyhow::{Context, Result, bail};

use super::{MAGIC, META_SIZE, NO_FRAGMENT, UNCOMPRESSED_BLOCK, ZSTD_ID};

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
}

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
            || 1u32 << u16_at(&b, 22) != block_size
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
        };
        let end = r.seek(SeekFrom::End(0))?;
        if sb.bytes_used < 96 || base + sb.bytes_used > end {
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
        let Inode::File {
            blocks_start,
            size,
            fragment,
            frag_offset,
            sizes,
        } = self.resolve(path, true)?
        else {
            bail!("/{path} is not a regular file in the image");
        };
        if size > MAX_READ {
            bail!("/{path} is {size} bytes, more than pak reads from an image at once");
        }
        let bs = self.sb.block_size as usize;
        let mut out = Vec::with_capacity(size as usize);
        let mut pos = blocks_start;
        for word in sizes {
            let len = (word & !UNCOMPRESSED_BLOCK) as u64;
            if len == 0 {
                out.resize(out.len() + bs, 0);
                continue;
            }
            let raw = self.read_at(pos, len)?;
            pos += len;
            if word & UNCOMPRESSED_BLOCK != 0 {
                out.extend(raw);
            } else {
                out.extend(self.decompress(&raw, bs)?);
            }
        }
        if fragment != NO_FRAGMENT {
            if fragment >= self.sb.fragments {
                bail!("/{path} names a fragment the image does not have");
            }
            let index_at = self.sb.fragment_table + (fragment as u64 / 512) * 8;
            let block = u64_at(&self.read_at(index_at, 8)?, 0);
            let e = self.meta_read(block, (fragment % 512) as u16 * 16, 16)?;
            let (start, word) = (u64_at(&e, 0), u32_at(&e, 8));
            let len = (word & !UNCOMPRESSED_BLOCK) as u64;
            let raw = self.read_at(start, len)?;
            let frag = if word & UNCOMPRESSED_BLOCK != 0 {
                raw
            } else {
                self.decompress(&raw, bs)?
            };
            let tail = (size % bs as u64) as usize;
            let from = frag_offset as usize;
            out.extend_from_slice(
                frag.get(from..from + tail)
                    .with_context(|| format!("/{path}: its fragment is too short"))?,
            );
        }
        out.truncate(size as usize);
        if out.len() as u64 != size {
            bail!("/{path}: its blocks hold fewer bytes than its size");
        }
        Ok(out)
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
            }
        }
    }
}
