//! The dm-verity hash tree of a generation, and pak's trailer behind it.
//!
//! A generation file is `squashfs | seal | hash tree | trailer`:
//!
//! ```text
//! [0, D)          data: the squashfs, the seal (see `generation::seal`) and
//!                 zero padding; D = data_blocks * 4096
//! [D, D + T)      the hash tree, as the kernel's dm-verity reads it with
//!                 hash type 1, sha256, 4096-byte data and hash blocks and no
//!                 superblock: each hash is sha256(salt | block), 128 to a
//!                 hash block, zero padded; the level that fits in one block
//!                 first, the level over the data blocks last. The root hash
//!                 is sha256(salt | that first block).
//! [D + T, +4096)  the trailer, little-endian:
//!                   0  "PAKVRTY1"
//!                   8  u32 hash type (1)
//!                  12  u32 data block size (4096)
//!                  16  u32 hash block size (4096)
//!                  20  u32 salt length (32)
//!                  24  u64 data blocks (D / 4096)
//!                  32  u64 byte offset of the tree (D)
//!                  40  u64 hash blocks (T / 4096)
//!                  48  [32] root hash
//!                  80  [32] salt
//!                 112  zeros up to 4096
//! ```
//!
//! With `[boot] uki`, the signed UKIs for both slots follow the trailer
//! ([`crate::image::uki::appendix`]); nothing of them reaches a slot.
//!
//! `veritysetup verify --no-superblock --hash-offset=D --data-blocks=N
//! --salt=SALT FILE FILE ROOT` accepts the file (tests/verity.rs runs it).
//! The trailer only says where things are: what a slot must match is the
//! root hash in its loader entry and in the ESP's `generation.toml`
//! ([`pak_boot::verity`]); the trailer lets `switch` and `pak system
//! verify` find the tree, and `channel` publish the root hash
//! ([`root_hash_of`]).
//!
//! The salt is sha256("pak dm-verity salt" | sha256 of the squashfs): the
//! same lock gives the same bytes, and two generations never share one.
//!
//! Written here rather than with a crate: the tree is a loop over sha256
//! (which `sha2` does). The Rust way to a dm-verity tree found was
//! `libcryptsetup-rs`, bindings to the C library (a build and run time
//! dependency, and `veritysetup` is what checks pak's output in tests);
//! the Merkle-tree crates lay trees out otherwise (binary, unsalted, not
//! in padded blocks).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use pak_boot::verity::{BLOCK_SIZE, FORMAT, Verity};
use sha2::{Digest, Sha256};

const BLOCK: usize = BLOCK_SIZE as usize;
const DIGEST: usize = 32;
const HASHES_PER_BLOCK: u64 = (BLOCK / DIGEST) as u64;
pub const TRAILER_MAGIC: &[u8; 8] = b"PAKVRTY1";
pub const TRAILER_SIZE: u64 = BLOCK_SIZE;

/// Hash blocks per level, the level over the data first: what the kernel
/// computes from the data block count. One data block needs no level (the
/// root hash is that block's hash).
pub fn levels(data_blocks: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(HASHES_PER_BLOCK);
        out.push(n);
    }
    out
}

/// Hash blocks in the tree of `data_blocks`.
pub fn tree_blocks(data_blocks: u64) -> u64 {
    levels(data_blocks).iter().sum()
}

/// What the tree and the trailer add behind `data_blocks` blocks of data.
pub fn added_size(data_blocks: u64) -> u64 {
    tree_blocks(data_blocks) * BLOCK_SIZE + TRAILER_SIZE
}

/// The first block of level `level` (0 over the data), counted from the
/// start of the tree.
fn level_start(data_blocks: u64, level: usize) -> u64 {
    levels(data_blocks)[level + 1..].iter().sum()
}

/// The salt of a generation whose squashfs has this sha256.
pub fn salt_for(squashfs_sha256: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"pak dm-verity salt");
    h.update(squashfs_sha256);
    h.finalize().into()
}

fn hash(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Builds a tree from data blocks fed in order.
pub struct TreeBuilder {
    salt: Vec<u8>,
    /// The hashes of the data blocks so far.
    leaves: Vec<u8>,
    partial: Vec<u8>,
}

/// A finished tree.
pub struct Tree {
    /// As on disk: top level first.
    pub bytes: Vec<u8>,
    pub root: [u8; 32],
    pub data_blocks: u64,
}

impl TreeBuilder {
    pub fn new(salt: &[u8]) -> TreeBuilder {
        TreeBuilder {
            salt: salt.to_vec(),
            leaves: Vec::new(),
            partial: Vec::with_capacity(BLOCK),
        }
    }

    /// Feeds the next bytes of data; the total must be whole blocks.
    pub fn update(&mut self, mut data: &[u8]) {
        if !self.partial.is_empty() {
            let n = (BLOCK - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.partial.len() == BLOCK {
                let h = hash(&self.salt, &self.partial);
                self.leaves.extend_from_slice(&h);
                self.partial.clear();
            }
        }
        let mut blocks = data.chunks_exact(BLOCK);
        for b in &mut blocks {
            let h = hash(&self.salt, b);
            self.leaves.extend_from_slice(&h);
        }
        self.partial.extend_from_slice(blocks.remainder());
    }

    pub fn finish(self) -> Result<Tree> {
        if !self.partial.is_empty() {
            bail!("the data does not end on a 4096-byte block");
        }
        let data_blocks = (self.leaves.len() / DIGEST) as u64;
        if data_blocks == 0 {
            bail!("no data to hash");
        }
        // Each level: the hashes below it packed into zero-padded blocks.
        let mut below = self.leaves;
        let mut built: Vec<Vec<u8>> = Vec::new();
        while below.len() > DIGEST {
            let mut level = below;
            level.resize(level.len().next_multiple_of(BLOCK), 0);
            below = level
                .chunks_exact(BLOCK)
                .flat_map(|b| hash(&self.salt, b))
                .collect();
            built.push(level);
        }
        let root: [u8; 32] = below[..].try_into().expect("one hash");
        let bytes = built.into_iter().rev().flatten().collect();
        Ok(Tree {
            bytes,
            root,
            data_blocks,
        })
    }
}

impl Tree {
    /// The hash the tree holds for data block `i`.
    pub fn leaf(&self, i: u64) -> &[u8] {
        let at = (level_start(self.data_blocks, 0) * BLOCK_SIZE + i * DIGEST as u64) as usize;
        &self.bytes[at..at + DIGEST]
    }

    pub fn verity(&self, salt: &[u8]) -> Verity {
        Verity {
            root_hash: hex::encode(self.root),
            salt: hex::encode(salt),
            data_blocks: self.data_blocks,
        }
    }
}

/// pak's trailer: where the tree is and what it hashes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    pub data_blocks: u64,
    pub hash_blocks: u64,
    pub root: [u8; 32],
    pub salt: [u8; 32],
}

impl Trailer {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(BLOCK);
        b.extend_from_slice(TRAILER_MAGIC);
        for v in [FORMAT, BLOCK_SIZE as u32, BLOCK_SIZE as u32, 32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.data_blocks,
            self.data_blocks * BLOCK_SIZE,
            self.hash_blocks,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.root);
        b.extend_from_slice(&self.salt);
        b.resize(BLOCK, 0);
        b
    }

    /// Reads a trailer, which must describe a tree of `data_blocks`.
    pub fn decode(b: &[u8], data_blocks: u64) -> Result<Trailer> {
        if b.len() < 112 || &b[..8] != TRAILER_MAGIC {
            bail!(
                "it carries no dm-verity hash tree (it was built by a pak without verity roots); rebuild it with `pak build --generation FILE.sqfs`"
            );
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let t = Trailer {
            data_blocks: u64_at(24),
            hash_blocks: u64_at(40),
            root: b[48..80].try_into().unwrap(),
            salt: b[80..112].try_into().unwrap(),
        };
        let expected = (FORMAT, BLOCK_SIZE as u32, BLOCK_SIZE as u32, 32);
        if (u32_at(8), u32_at(12), u32_at(16), u32_at(20)) != expected
            || t.data_blocks != data_blocks
            || u64_at(32) != data_blocks * BLOCK_SIZE
            || t.hash_blocks != tree_blocks(data_blocks)
            || b[112..].iter().any(|&x| x != 0)
        {
            bail!(
                "its dm-verity trailer does not describe the tree of its {data_blocks} data blocks"
            );
        }
        Ok(t)
    }

    pub fn verity(&self) -> Verity {
        Verity {
            root_hash: hex::encode(self.root),
            salt: hex::encode(self.salt),
            data_blocks: self.data_blocks,
        }
    }
}

/// Appends the tree of the file's first `data_size` bytes (whole blocks;
/// the squashfs, its seal and padding) and the trailer. `squashfs_sha256`
/// seeds the salt.
pub fn append(path: &Path, data_size: u64, squashfs_sha256: &[u8]) -> Result<Verity> {
    Ok(append_hashed(path, data_size, squashfs_sha256, true)?.0)
}

/// [`append`], also giving the sha256 of the whole file it leaves (taken
/// on the way, so the file need not be read again for it), and syncing
/// the file only when `durable`.
pub fn append_hashed(
    path: &Path,
    data_size: u64,
    squashfs_sha256: &[u8],
    durable: bool,
) -> Result<(Verity, [u8; 32])> {
    if !data_size.is_multiple_of(BLOCK_SIZE) {
        bail!("{}: the data ends inside a block", path.display());
    }
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let salt = salt_for(squashfs_sha256);
    let mut builder = TreeBuilder::new(&salt);
    let mut whole = Sha256::new();
    f.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = data_size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n])
            .with_context(|| format!("cannot read {}", path.display()))?;
        builder.update(&buf[..n]);
        whole.update(&buf[..n]);
        left -= n as u64;
    }
    let tree = builder.finish()?;
    let trailer = Trailer {
        data_blocks: tree.data_blocks,
        hash_blocks: tree_blocks(tree.data_blocks),
        root: tree.root,
        salt,
    };
    f.set_len(data_size)?;
    f.seek(SeekFrom::Start(data_size))?;
    let trailer = trailer.encode();
    f.write_all(&tree.bytes)?;
    f.write_all(&trailer)?;
    if durable {
        f.sync_all()?;
    }
    whole.update(&tree.bytes);
    whole.update(&trailer);
    Ok((tree.verity(&salt), whole.finalize().into()))
}

/// What is wrong with a slot or file checked against a root hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error(
        "data block {0} does not match its dm-verity hash: the kernel refuses to read it (the bytes were changed after they were written, or the disk is failing)"
    )]
    DataBlock(u64),
    #[error("its dm-verity hash tree is damaged at hash block {0} (of the tree)")]
    TreeBlock(u64),
    #[error("its data and hash tree hash to root {found}, not to the root hash {expected}")]
    Root { found: String, expected: String },
}

/// Checks `data_blocks` blocks of data at `base` in `r` and the tree behind
/// them against `verity` (from a loader entry, a description or a
/// trailer): recomputes the tree and compares it block by block, so the
/// first damaged data or hash block is named.
pub fn check<R: Read + Seek>(
    r: &mut R,
    base: u64,
    verity: &Verity,
) -> Result<Result<(), Mismatch>> {
    let salt = hex::decode(&verity.salt).context("the salt is not hex")?;
    let n = verity.data_blocks;
    let mut builder = TreeBuilder::new(&salt);
    r.seek(SeekFrom::Start(base))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = n * BLOCK_SIZE;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..k])
            .context("the data ends before its last block")?;
        builder.update(&buf[..k]);
        left -= k as u64;
    }
    let tree = builder.finish()?;
    let mut stored = vec![0u8; tree.bytes.len()];
    r.read_exact(&mut stored)
        .context("the hash tree is cut short")?;
    Ok(compare(&tree, &stored, verity, &salt))
}

fn compare(tree: &Tree, stored: &[u8], verity: &Verity, salt: &[u8]) -> Result<(), Mismatch> {
    let found = hex::encode(tree.root);
    if tree.bytes == stored {
        return if found == verity.root_hash {
            Ok(())
        } else {
            Err(Mismatch::Root {
                found,
                expected: verity.root_hash.clone(),
            })
        };
    }
    // As the kernel reads it: each stored hash block must hash to its
    // entry in the level above, the top one to the root hash; the first
    // that does not is damaged. Past a whole tree, a data block whose hash
    // is not its leaf was changed.
    let expected = hex::decode(&verity.root_hash).unwrap_or_default();
    let n = tree.data_blocks;
    let levels = levels(n);
    let mut above = expected;
    for level in (0..levels.len()).rev() {
        let start = level_start(n, level);
        for j in 0..levels[level] {
            let at = ((start + j) * BLOCK_SIZE) as usize;
            let want = above.get(j as usize * DIGEST..(j as usize + 1) * DIGEST);
            if want != Some(&hash(salt, &stored[at..at + BLOCK])[..]) {
                return Err(Mismatch::TreeBlock(start + j));
            }
        }
        above = stored
            [(start * BLOCK_SIZE) as usize..((start + levels[level]) * BLOCK_SIZE) as usize]
            .to_vec();
    }
    if let Some(i) = (0..n)
        .filter(|_| !levels.is_empty())
        .find(|&i| tree.leaf(i) != &above[i as usize * DIGEST..(i as usize + 1) * DIGEST])
    {
        return Err(Mismatch::DataBlock(i));
    }
    Err(Mismatch::Root {
        found,
        expected: verity.root_hash.clone(),
    })
}

/// The verity of a generation file from its trailer (found from its
/// squashfs and seal), without checking the tree: what publishing it
/// needs. `switch` checks the tree itself ([`crate::image::generation::check`]).
pub fn of_file<R: Read + Seek>(r: &mut R) -> Result<Verity> {
    let used = crate::image::squashfs::Reader::open(&mut *r, 0)?.bytes_used();
    let data_blocks = crate::image::generation::sealed_size(used) / BLOCK_SIZE;
    let at = data_blocks * BLOCK_SIZE + tree_blocks(data_blocks) * BLOCK_SIZE;
    r.seek(SeekFrom::Start(at))?;
    let mut b = vec![0u8; BLOCK];
    r.read_exact(&mut b)
        .context("it ends before its dm-verity trailer")?;
    Ok(Trailer::decode(&b, data_blocks)?.verity())
}

/// The dm-verity root of the generation file at `path`, as its loader
/// entry will carry it.
pub fn root_of(path: &Path) -> Result<Verity> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    of_file(&mut f).with_context(|| format!("{} has no readable dm-verity root", path.display()))
}

/// The root hash (hex) of the generation file at `path`: what channel
/// metadata publishes beside the file's sha256.
pub fn root_hash_of(path: &Path) -> Result<String> {
    Ok(root_of(path)?.root_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_of(data: &[u8], salt: &[u8]) -> Tree {
        let mut b = TreeBuilder::new(salt);
        // Fed unevenly: the result must not depend on the chunking.
        for c in data.chunks(1000) {
            b.update(c);
        }
        b.finish().unwrap()
    }

    #[test]
    fn geometry_is_the_kernels() {
        assert_eq!(levels(1), Vec::<u64>::new());
        assert_eq!(levels(2), vec![1]);
        assert_eq!(levels(128), vec![1]);
        assert_eq!(levels(129), vec![2, 1]);
        assert_eq!(levels(128 * 128 + 1), vec![129, 2, 1]);
        assert_eq!(tree_blocks(129), 3);
        assert_eq!(level_start(129, 0), 1);
        assert_eq!(level_start(129, 1), 0);
    }

    #[test]
    fn one_level_root_is_the_hash_of_the_padded_leaves() {
        let data: Vec<u8> = (0..3 * BLOCK).map(|i| (i % 251) as u8).collect();
        let t = tree_of(&data, b"salt");
        let mut leaves: Vec<u8> = data.chunks(BLOCK).flat_map(|b| hash(b"salt", b)).collect();
        leaves.resize(BLOCK, 0);
        assert_eq!(t.bytes, leaves);
        assert_eq!(t.root, hash(b"salt", &leaves));
        assert_eq!(t.leaf(2), &hash(b"salt", &data[2 * BLOCK..])[..]);
    }

    #[test]
    fn damage_is_named_by_block() {
        let data: Vec<u8> = (0..300 * BLOCK).map(|i| (i * 7 % 253) as u8).collect();
        let t = tree_of(&data, &[1; 32]);
        let v = t.verity(&[1; 32]);
        let c = |t: &Tree, stored: &[u8], v: &Verity| compare(t, stored, v, &[1; 32]);
        assert_eq!(c(&t, &t.bytes, &v), Ok(()));
        let mut bad = data.clone();
        bad[200 * BLOCK + 5] ^= 1;
        let t2 = tree_of(&bad, &[1; 32]);
        assert_eq!(c(&t2, &t.bytes, &v), Err(Mismatch::DataBlock(200)));
        let mut stored = t.bytes.clone();
        stored[BLOCK * 2 + 3] ^= 1;
        assert_eq!(c(&t, &stored, &v), Err(Mismatch::TreeBlock(2)));
        stored = t.bytes.clone();
        stored[10] ^= 1;
        assert_eq!(c(&t, &stored, &v), Err(Mismatch::TreeBlock(0)));
        let other = Verity {
            root_hash: "00".repeat(32),
            ..v
        };
        assert!(matches!(
            c(&t, &t.bytes, &other),
            Err(Mismatch::Root { .. })
        ));
    }

    #[test]
    fn the_trailer_round_trips_and_refuses_what_it_does_not_describe() {
        let t = Trailer {
            data_blocks: 129,
            hash_blocks: 3,
            root: [7; 32],
            salt: [9; 32],
        };
        let b = t.encode();
        assert_eq!(b.len(), BLOCK);
        assert_eq!(Trailer::decode(&b, 129).unwrap(), t);
        assert!(Trailer::decode(&b, 130).is_err());
        let e = Trailer::decode(&[0; BLOCK], 129).unwrap_err().to_string();
        assert!(e.contains("rebuild"), "{e}");
    }
}
