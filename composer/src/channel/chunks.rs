//! The chunk index of a generation file, for delta updates.
//!
//! A generation file is cut where its squashfs has seams: the superblock,
//! every compressed data block and fragment block, every 8 KiB metadata
//! block of the inode and directory tables, the remaining tables as one
//! piece, and whatever follows the squashfs (seal, padding, any trailer)
//! in pieces of at most [`TAIL_PIECE`]. pak's writer stores the same
//! uncompressed block as the same compressed bytes, so a block that did
//! not change between two generations is the same chunk in both, wherever
//! it moved; and since the cut points are read from the file itself, a
//! host finds them in the generation its slots hold without any index of
//! that older generation (it may have been pruned from the channel long
//! ago). Content-defined chunking (casync's, FastCDC) finds the same seams
//! only approximately: its chunks straddle block boundaries, so one
//! changed block costs its neighbours too (`cargo bench --bench delta`
//! measures both).
//!
//! Cutting never fails: a region that does not parse as pak's squashfs
//! (a corrupt or empty slot, a trailer) is cut into fixed pieces, and
//! every chunk is checked against its sha256 before it is used anyway.
//!
//! The index (`<system>-<N>.chunks` beside the generation, its sha256 in
//! the signed `channel.toml`) is binary and small, 36 bytes a chunk:
//!
//! ```text
//! "PAKCHNK1"  u64 file size  u32 count  count × (u32 length, [u8; 32] sha256)
//! ```
//!
//! little-endian; the chunks are contiguous from byte 0, so offsets are
//! implied.

use std::io::{Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

/// The first bytes of an index.
pub const MAGIC: &[u8; 8] = b"PAKCHNK1";
/// The longest chunk cut from a region with no squashfs seams.
pub const TAIL_PIECE: u64 = 64 << 10;
/// Refused beyond this: a chunk is at most a squashfs block (1 MiB).
const CHUNK_MAX: u32 = 1 << 21;

/// One chunk of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: u32,
    pub sha256: [u8; 32],
}

impl Chunk {
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// The chunks of one file, contiguous from byte 0 to its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    pub size: u64,
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{what} is not a pak chunk index (it does not start with {MAGIC:?})")]
    Magic { what: String },
    #[error("{what} is truncated or has trailing bytes: {len} bytes for {count} chunks")]
    Length {
        what: String,
        len: usize,
        count: u32,
    },
    #[error("{what} describes {described} bytes, but the signed metadata says the file has {size}")]
    Size {
        what: String,
        described: u64,
        size: u64,
    },
    #[error("{what} has a chunk of {len} bytes at {offset}: chunks are 1 to {CHUNK_MAX} bytes")]
    Chunk { what: String, offset: u64, len: u32 },
}

impl ChunkIndex {
    /// Cuts and hashes the first `len` bytes at `base` of `r`.
    pub fn of<R: Read + Seek>(r: &mut R, base: u64, len: u64) -> std::io::Result<ChunkIndex> {
        let cuts = cut(r, base, len);
        let mut chunks = Vec::with_capacity(cuts.len());
        let mut buf = Vec::new();
        r.seek(SeekFrom::Start(base))?;
        let mut at = 0u64;
        for (offset, n) in cuts {
            debug_assert_eq!(offset, at);
            buf.resize(n as usize, 0);
            r.read_exact(&mut buf)?;
            chunks.push(Chunk {
                offset,
                len: n as u32,
                sha256: Sha256::digest(&buf).into(),
            });
            at += n;
        }
        Ok(ChunkIndex { size: len, chunks })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.chunks.len() * 36);
        out.extend(MAGIC);
        out.extend(self.size.to_le_bytes());
        out.extend((self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend(c.len.to_le_bytes());
            out.extend(c.sha256);
        }
        out
    }

    /// Reads an index (called `what` in errors) of a file of `size` bytes.
    pub fn parse(bytes: &[u8], size: u64, what: &str) -> Result<ChunkIndex, IndexError> {
        if bytes.len() < 20 || &bytes[..8] != MAGIC {
            return Err(IndexError::Magic { what: what.into() });
        }
        let described = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
        if (bytes.len() - 20) as u64 != u64::from(count) * 36 {
            return Err(IndexError::Length {
                what: what.into(),
                len: bytes.len(),
                count,
            });
        }
        let mut chunks = Vec::with_capacity(count as usize);
        let mut offset = 0u64;
        for rec in bytes[20..].chunks_exact(36) {
            let len = u32::from_le_bytes(rec[..4].try_into().expect("4 bytes"));
            if len == 0 || len > CHUNK_MAX {
                return Err(IndexError::Chunk {
                    what: what.into(),
                    offset,
                    len,
                });
            }
            chunks.push(Chunk {
                offset,
                len,
                sha256: rec[4..].try_into().expect("32 bytes"),
            });
            offset += u64::from(len);
        }
        if offset != described || described != size {
            return Err(IndexError::Size {
                what: what.into(),
                described: offset.max(described),
                size,
            });
        }
        Ok(ChunkIndex { size, chunks })
    }
}

/// Where to cut the `len` bytes at `base` of `r`: (offset, length) pairs
/// relative to `base`, contiguous, covering all of it.
pub fn cut<R: Read + Seek>(r: &mut R, base: u64, len: u64) -> Vec<(u64, u64)> {
    let mut seams = squashfs_seams(r, base, len).unwrap_or_default();
    seams.retain(|&(o, n)| n > 0 && o + n <= len);
    let mut out = Vec::with_capacity(seams.len() + 16);
    let mut at = 0u64;
    for (o, n) in seams {
        if o < at {
            // Overlapping pieces (a corrupt table): keep the first.
            continue;
        }
        fill(&mut out, at, o);
        out.push((o, n));
        at = o + n;
    }
    fill(&mut out, at, len);
    out
}

/// Cuts `[from, to)` into pieces of at most [`TAIL_PIECE`], aligned to
/// multiples of it so that the same bytes at the same place cut alike.
fn fill(out: &mut Vec<(u64, u64)>, mut from: u64, to: u64) {
    while from < to {
        let next = ((from / TAIL_PIECE + 1) * TAIL_PIECE).min(to);
        out.push((from, next - from));
        from = next;
    }
}

/// The squashfs blocks of the generation at `base` (superblock, data,
/// fragment and metadata blocks, the other tables as one): what
/// [`cut`] cuts at, `None` when it is not pak's squashfs.
pub fn squashfs_blocks<R: Read + Seek>(r: &mut R, base: u64, len: u64) -> Option<Vec<(u64, u64)>> {
    squashfs_seams(r, base, len).ok()
}

const MAGIC_SQUASHFS: u32 = 0x7371_7368;
const ZSTD_ID: u16 = 6;
const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
const UNCOMPRESSED_BLOCK: u32 = 1 << 24;
const META_SIZE: usize = 8192;
const SUPERBLOCK: u64 = 96;

/// Why a region is not cut at squashfs seams; never shown, the region is
/// cut into fixed pieces instead.
type Seams = Result<Vec<(u64, u64)>, &'static str>;

/// The pieces of the squashfs at `base`, sorted by offset: superblock,
/// data and fragment blocks, inode and directory metadata blocks, the
/// other tables as one piece. Only pak's own layout (zstd, tables in the
/// writer's order) is cut; anything else is an error.
fn squashfs_seams<R: Read + Seek>(r: &mut R, base: u64, len: u64) -> Seams {
    let mut at = |o: u64, n: usize| -> Result<Vec<u8>, &'static str> {
        if o + n as u64 > len {
            return Err("past the end");
        }
        let mut b = vec![0u8; n];
        r.seek(SeekFrom::Start(base + o)).map_err(|_| "seek")?;
        r.read_exact(&mut b).map_err(|_| "read")?;
        Ok(b)
    };
    let sb = at(0, SUPERBLOCK as usize)?;
    let u16_ = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_ = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
    let u64_ = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
    if u32_(&sb, 0) != MAGIC_SQUASHFS || u16_(&sb, 20) != ZSTD_ID {
        return Err("not a zstd squashfs");
    }
    let inodes = u32_(&sb, 4);
    let block_size = u32_(&sb, 12);
    let fragments = u32_(&sb, 16);
    let bytes_used = u64_(&sb, 40);
    let id_start = u64_(&sb, 48);
    let inode_start = u64_(&sb, 64);
    let dir_start = u64_(&sb, 72);
    let frag_start = u64_(&sb, 80);
    if bytes_used > len
        || !(SUPERBLOCK..=dir_start).contains(&inode_start)
        || dir_start > bytes_used
        || !block_size.is_power_of_two()
    {
        return Err("superblock out of bounds");
    }
    // Where the inode and directory tables end: the first block of the
    // next table the writer puts there.
    let meta_end = if fragments > 0 {
        u64_(&at(frag_start, 8)?, 0)
    } else {
        u64_(&at(id_start, 8)?, 0)
    };
    if !(dir_start..=bytes_used).contains(&meta_end) {
        return Err("tables out of bounds");
    }
    let mut seams = vec![(0, SUPERBLOCK)];
    let mut inode_bytes = Vec::new();
    let mut pos = inode_start;
    while pos < meta_end {
        let h = u16_(&at(pos, 2)?, 0);
        let n = u64::from(h & 0x7FFF);
        let raw = at(pos + 2, n as usize)?;
        if pos < dir_start {
            if h & 0x8000 != 0 {
                inode_bytes.extend(raw);
            } else {
                inode_bytes
                    .extend(zstd::bulk::decompress(&raw, META_SIZE).map_err(|_| "metadata block")?);
            }
        }
        seams.push((pos, 2 + n));
        pos += 2 + n;
    }
    if pos != meta_end {
        return Err("metadata blocks overrun their table");
    }
    if bytes_used > meta_end {
        seams.push((meta_end, bytes_used - meta_end));
    }
    let mut data = file_blocks(&inode_bytes, inodes, block_size)?;
    let entries = fragments as usize * 16;
    let index = at(frag_start, entries.div_ceil(META_SIZE) * 8)?;
    let mut table = Vec::with_capacity(entries);
    for p in index.chunks_exact(8) {
        let p = u64::from_le_bytes(p.try_into().expect("8"));
        let h = u16_(&at(p, 2)?, 0);
        let raw = at(p + 2, usize::from(h & 0x7FFF))?;
        if h & 0x8000 != 0 {
            table.extend(raw);
        } else {
            table.extend(zstd::bulk::decompress(&raw, META_SIZE).map_err(|_| "fragment table")?);
        }
    }
    if table.len() < entries {
        return Err("short fragment table");
    }
    for e in table[..entries].chunks_exact(16) {
        data.push((u64_(e, 0), u64::from(u32_(e, 8) & !UNCOMPRESSED_BLOCK)));
    }
    data.retain(|&(o, n)| n > 0 && o >= SUPERBLOCK && o + n <= inode_start);
    seams.extend(data);
    seams.sort_unstable();
    seams.dedup();
    Ok(seams)
}

/// Every stored data block of the regular files among the `count` inodes
/// in `t` (the inode table, uncompressed).
fn file_blocks(t: &[u8], count: u32, block_size: u32) -> Seams {
    let bs = u64::from(block_size);
    let get = |o: usize, n: usize| t.get(o..o + n).ok_or("inode table truncated");
    let u16_ = |o: usize| get(o, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_ = |o: usize| get(o, 4).map(|b| u32::from_le_bytes(b.try_into().expect("4")));
    let u64_ = |o: usize| get(o, 8).map(|b| u64::from_le_bytes(b.try_into().expect("8")));
    let mut out = Vec::new();
    let mut p = 0usize;
    for _ in 0..count {
        let kind = u16_(p)?;
        let body = p + 16;
        let (start, size, frag, words) = match kind {
            2 => (
                u64::from(u32_(body)?),
                u64::from(u32_(body + 12)?),
                u32_(body + 4)?,
                body + 16,
            ),
            9 => (u64_(body)?, u64_(body + 8)?, u32_(body + 28)?, body + 40),
            _ => {
                p = body + other_inode_len(kind, body, &u16_, &u32_)?;
                continue;
            }
        };
        let blocks = if frag == NO_FRAGMENT {
            size.div_ceil(bs)
        } else {
            size / bs
        } as usize;
        let mut at = start;
        for k in 0..blocks {
            let n = u64::from(u32_(words + 4 * k)? & !UNCOMPRESSED_BLOCK);
            out.push((at, n));
            at += n;
        }
        p = words + 4 * blocks;
    }
    Ok(out)
}

/// The length after the common header of an inode that is not a regular
/// file.
fn other_inode_len(
    kind: u16,
    body: usize,
    u16_: &dyn Fn(usize) -> Result<u16, &'static str>,
    u32_: &dyn Fn(usize) -> Result<u32, &'static str>,
) -> Result<usize, &'static str> {
    Ok(match kind {
        1 => 16,
        3 | 10 => 8 + u32_(body + 4)? as usize + if kind == 10 { 4 } else { 0 },
        4 | 5 => 8,
        6 | 7 => 4,
        11 | 12 => 12,
        13 | 14 => 8,
        8 => {
            let mut n = 24;
            for _ in 0..u16_(body + 16)? {
                n += 12 + u32_(body + n + 8)? as usize + 1;
            }
            n
        }
        _ => return Err("unknown inode type"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::squashfs::{Entry, Kind, Options, Source, Tree};
    use std::io::Cursor;

    fn tree(files: &[(&str, Vec<u8>)]) -> Tree {
        let mut t = Tree::default();
        let dir = Entry {
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        };
        t.entries.insert(String::new(), dir.clone());
        t.entries.insert("d".into(), dir);
        for (p, b) in files {
            t.entries.insert(
                (*p).into(),
                Entry {
                    kind: Kind::File(Source::Bytes(b.clone())),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    xattrs: vec![],
                },
            );
        }
        t
    }

    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn image(t: &Tree) -> Vec<u8> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("i.sqfs");
        let opts = Options {
            block_size: 4096,
            ..Options::default()
        };
        crate::image::squashfs::write(t, &p, &opts).unwrap();
        std::fs::read(p).unwrap()
    }

    #[test]
    fn cuts_at_block_seams_and_shares_unchanged_blocks() {
        let files = vec![
            ("d/a", noise(1, 40_000)),
            ("d/b", noise(2, 50_000)),
            ("d/c", noise(3, 700)),
        ];
        let old = image(&tree(&files));
        let mut more = files.clone();
        more.push(("d/ab", noise(4, 9000)));
        let new = image(&tree(&more));
        let io = ChunkIndex::of(&mut Cursor::new(&old), 0, old.len() as u64).unwrap();
        let ni = ChunkIndex::of(&mut Cursor::new(&new), 0, new.len() as u64).unwrap();
        // Every block of a 4 KiB-block image of random files is a chunk.
        assert!(ni.chunks.iter().filter(|c| c.len > 4000).count() >= 20);
        let old_set: std::collections::HashSet<_> = io.chunks.iter().map(|c| c.sha256).collect();
        let new_bytes: u64 = ni
            .chunks
            .iter()
            .filter(|c| !old_set.contains(&c.sha256))
            .map(|c| u64::from(c.len))
            .sum();
        // The new file's two blocks, its tail's fragment block, the inode
        // and directory blocks and the other tables: not the other files.
        assert!(new_bytes < 24_000, "{new_bytes} new bytes");
        assert!(new.len() > 100_000);
        let round = ChunkIndex::parse(&ni.to_bytes(), new.len() as u64, "i").unwrap();
        assert_eq!(round, ni);
    }

    #[test]
    fn anything_else_is_cut_into_fixed_pieces() {
        let junk = noise(9, 200_000);
        let i = ChunkIndex::of(&mut Cursor::new(&junk), 0, junk.len() as u64).unwrap();
        assert_eq!(i.chunks.len(), 4);
        assert!(i.chunks.iter().all(|c| u64::from(c.len) <= TAIL_PIECE));
        let mut bad = i.to_bytes();
        bad[0] = b'X';
        assert!(matches!(
            ChunkIndex::parse(&bad, 200_000, "x"),
            Err(IndexError::Magic { .. })
        ));
        assert!(matches!(
            ChunkIndex::parse(&i.to_bytes(), 1, "x"),
            Err(IndexError::Size { .. })
        ));
        assert!(matches!(
            ChunkIndex::parse(&i.to_bytes()[..50], 200_000, "x"),
            Err(IndexError::Length { .. })
        ));
    }
}
