//! The data part of a squashfs image: file contents cut into blocks,
//! compressed on many threads in batches, tails packed into fragments, all
//! written in inode order so the bytes never depend on the thread count;
//! and the content-addressed cache of compressed blocks.
//!
//! The block cache keys compressed data blocks by the sha256 of their
//! uncompressed bytes (and the compressor settings): a rebuild where one
//! package changed recompresses only that package's blocks.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::*;

pub(super) struct Compressor {
    pub(super) level: i32,
    pub(super) block_size: u32,
    pub(super) cache: Option<PathBuf>,
}

impl Compressor {
    fn cache_path(&self, data: &[u8]) -> Option<PathBuf> {
        let dir = self.cache.as_ref()?;
        let mut h = Sha256::new();
        h.update(format!("zstd:{}:{}\0", self.level, self.block_size));
        h.update(data);
        let key = hex::encode(h.finalize());
        Some(dir.join(&key[..2]).join(&key[2..]))
    }

    /// Returns the stored bytes (compressed, or raw when compression did
    /// not help) and whether the cache served them.
    pub(super) fn compress(&self, data: &[u8]) -> (Vec<u8>, bool) {
        let cached = self.cache_path(data);
        if let Some(p) = &cached
            && let Ok(bytes) = std::fs::read(p)
            && holds(&bytes, data)
        {
            return (bytes, true);
        }
        let c = zstd::bulk::compress(data, self.level).expect("zstd compresses");
        let stored = if c.len() < data.len() {
            c
        } else {
            data.to_vec()
        };
        if let Some(p) = cached {
            // A cache that cannot be written only costs time next build.
            let _ = store_cached(&p, &stored);
        }
        (stored, false)
    }
}

/// Whether a cache entry really stores `data`. The cache is only a hint:
/// an entry damaged on disk, truncated by a crash or written by someone
/// else must cost a recompression, never a wrong block in an image.
/// Decompressing is several times faster than compressing at pak's levels.
pub(super) fn holds(stored: &[u8], data: &[u8]) -> bool {
    if stored.len() == data.len() {
        // Stored raw (compression did not help), or compressed to exactly
        // the same length, which the writer never keeps.
        return stored == data;
    }
    zstd::bulk::decompress(stored, data.len()).is_ok_and(|d| d == data)
}

pub(super) fn store_cached(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = p.parent().expect("has parent");
    std::fs::create_dir_all(dir)?;
    // A temporary file of its own for every writer: blocks are compressed
    // on many threads at once, and several processes may share a cache.
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(p).map_err(|e| e.error)?;
    Ok(())
}

pub(super) struct FileData {
    pub(super) blocks_start: u64,
    pub(super) sizes: Vec<u32>,
    pub(super) fragment: Option<(u32, u32)>,
    pub(super) size: u64,
}

/// A reader over a file's bytes, whatever their source.
pub(super) fn open_source(src: &Source) -> Result<(Box<dyn Read + '_>, u64)> {
    Ok(match src {
        Source::Bytes(b) => (Box::new(&b[..]), b.len() as u64),
        Source::Path(p) => {
            let f = File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
            let len = f.metadata()?.len();
            (Box::new(f), len)
        }
    })
}

pub(super) struct DataWriter<'a> {
    pub(super) out: &'a mut BufWriter<File>,
    pub(super) pos: u64,
    pub(super) comp: Compressor,
    pub(super) frag_buf: Vec<u8>,
    /// Fragment blocks made so far (written or waiting in a batch).
    pub(super) frag_count: u32,
    pub(super) fragments: Vec<(u64, u32)>,
    pub(super) stats: Stats,
    pub(super) pool: rayon::ThreadPool,
}

impl DataWriter<'_> {
    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Compresses and writes all files, in order; returns each file's data
    /// description. Blocks of many files (and fragment blocks) are
    /// compressed together in parallel batches, then written in the order
    /// they were made, so the output does not depend on scheduling.
    pub(super) fn write_files(&mut self, files: &[&Source]) -> Result<Vec<FileData>> {
        let bs = self.comp.block_size as usize;
        let mut out: Vec<FileData> = Vec::with_capacity(files.len());
        let mut batch: Vec<(Job, Vec<u8>)> = Vec::new();
        for (f, src) in files.iter().enumerate() {
            let (mut reader, len) = open_source(src)?;
            out.push(FileData {
                blocks_start: 0,
                sizes: Vec::new(),
                fragment: None,
                size: len,
            });
            for _ in 0..len / bs as u64 {
                let mut b = vec![0u8; bs];
                reader
                    .read_exact(&mut b)
                    .context("a file changed size while being packed")?;
                batch.push((Job::Block(f), b));
                if batch.len() >= BATCH_BLOCKS {
                    self.flush_batch(&mut batch, &mut out)?;
                }
            }
            let tail = (len % bs as u64) as usize;
            if tail > 0 {
                let mut t = vec![0u8; tail];
                reader
                    .read_exact(&mut t)
                    .context("a file changed size while being packed")?;
                if self.frag_buf.len() + tail > bs {
                    let full = std::mem::take(&mut self.frag_buf);
                    batch.push((Job::Fragment(self.frag_count), full));
                    self.frag_count += 1;
                }
                out[f].fragment = Some((self.frag_count, self.frag_buf.len() as u32));
                self.frag_buf.extend(&t);
            }
            let mut extra = [0u8; 1];
            if reader.read(&mut extra)? != 0 {
                bail!("a file grew while being packed");
            }
        }
        if !self.frag_buf.is_empty() {
            let last = std::mem::take(&mut self.frag_buf);
            batch.push((Job::Fragment(self.frag_count), last));
            self.frag_count += 1;
        }
        self.flush_batch(&mut batch, &mut out)?;
        Ok(out)
    }

    fn flush_batch(&mut self, batch: &mut Vec<(Job, Vec<u8>)>, out: &mut [FileData]) -> Result<()> {
        let comp = &self.comp;
        let done: Vec<Option<(Vec<u8>, bool)>> = self.pool.install(|| {
            batch
                .par_iter()
                .map(|(job, b)| {
                    // All-zero data blocks are stored as holes.
                    if matches!(job, Job::Block(_)) && b.iter().all(|x| *x == 0) {
                        return None;
                    }
                    Some(comp.compress(b))
                })
                .collect()
        });
        for ((job, raw), res) in batch.drain(..).zip(done) {
            let (stored, hit) = match res {
                Some(r) => r,
                None => {
                    if let Job::Block(f) = job {
                        if out[f].sizes.is_empty() {
                            out[f].blocks_start = self.pos;
                        }
                        out[f].sizes.push(0);
                    }
                    continue;
                }
            };
            let word = if stored.len() == raw.len() {
                stored.len() as u32 | UNCOMPRESSED_BLOCK
            } else {
                stored.len() as u32
            };
            let start = self.pos;
            self.emit(&stored)?;
            self.stats.cached_blocks += hit as u64;
            match job {
                Job::Block(f) => {
                    if out[f].sizes.is_empty() {
                        out[f].blocks_start = start;
                    }
                    out[f].sizes.push(word);
                    self.stats.data_blocks += 1;
                }
                Job::Fragment(i) => {
                    debug_assert_eq!(i as usize, self.fragments.len());
                    self.fragments.push((start, word));
                }
            }
        }
        Ok(())
    }
}

/// What a compressed block is for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Job {
    /// The next data block of file `n`.
    Block(usize),
    /// Fragment block `n`.
    Fragment(u32),
}
