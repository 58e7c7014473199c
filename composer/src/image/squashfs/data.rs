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
        let c = compress_zstd(data, self.level);
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

thread_local! {
    /// This thread's zstd context and the level it is set to: a context
    /// made per block costs its allocation and table setup every time
    /// (several percent of a pack at level 15). The output is the same,
    /// the context being reset for every block.
    static ZSTD: std::cell::RefCell<Option<(i32, super::zstd_fast::Context)>> =
        const { std::cell::RefCell::new(None) };
}

pub(super) fn compress_zstd(data: &[u8], level: i32) -> Vec<u8> {
    ZSTD.with(|z| {
        let mut z = z.borrow_mut();
        if z.as_ref().is_none_or(|(l, _)| *l != level) {
            *z = Some((level, super::zstd_fast::Context::new(level)));
        }
        let (_, c) = z.as_mut().expect("set above");
        c.compress(data)
    })
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
    // Held while written: `pak gc` collects only a dead writer's.
    let (mut tmp, _held) = crate::util::leftovers::held(
        || {
            tempfile::Builder::new()
                .prefix(crate::util::leftovers::Temporary::CacheBlock.prefix())
                .tempfile_in(dir)
        },
        |t| Ok((t.as_file().try_clone()?, t.path().to_path_buf())),
    )?;
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

/// Opens `path` for reading, even past PATH_MAX (a store tree nested
/// thousands deep): such a path is opened one directory at a time, each
/// relative to the last (openat), since the kernel refuses it whole.
fn open_long(path: &Path) -> std::io::Result<File> {
    match File::open(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {}
        other => return other,
    }
    use rustix::fs::{Mode, OFlags};
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG)),
    };
    let mut dir = rustix::fs::open(
        if path.is_absolute() { "/" } else { "." },
        dir_flags,
        Mode::empty(),
    )?;
    for comp in parent.components() {
        if let std::path::Component::Normal(c) = comp {
            dir = rustix::fs::openat(&dir, c, dir_flags, Mode::empty())?;
        } else if comp == std::path::Component::ParentDir {
            dir = rustix::fs::openat(&dir, "..", dir_flags, Mode::empty())?;
        }
    }
    let fd = rustix::fs::openat(&dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    Ok(File::from(fd))
}

/// A reader over a file's bytes, whatever their source.
pub(super) fn open_source(src: &Source) -> Result<(Box<dyn Read + '_>, u64)> {
    Ok(match src {
        Source::Bytes(b) => (Box::new(&b[..]), b.len() as u64),
        Source::Path(p) => {
            let f = open_long(p).with_context(|| format!("cannot read {}", p.display()))?;
            let len = f.metadata()?.len();
            (Box::new(f), len)
        }
    })
}

pub(super) struct DataWriter<'a> {
    pub(super) out: &'a mut BufWriter<File>,
    pub(super) pos: u64,
    pub(super) comp: Compressor,
    pub(super) fragments: Vec<(u64, u32)>,
    pub(super) stats: Stats,
    /// Compressing threads.
    pub(super) threads: usize,
}

/// A block on its way: its place in the output, what it is for, its bytes.
struct Raw {
    seq: u64,
    job: Job,
    data: Vec<u8>,
}

/// A block compressed: `stored` is `None` for an all-zero data block
/// (a hole), else the bytes to write and whether the cache served them.
struct Done {
    seq: u64,
    job: Job,
    raw_len: usize,
    stored: Option<(Vec<u8>, bool)>,
}

/// What the reading thread learns of each file: its size and fragment.
struct Layout {
    size: u64,
    fragment: Option<(u32, u32)>,
}

impl DataWriter<'_> {
    /// Compresses and writes all files, in order; returns each file's data
    /// description.
    ///
    /// Three stages overlap: this thread's helper reads files and cuts
    /// them into blocks (tails packed into fragment blocks), `threads`
    /// workers compress, and this thread writes the results in the order
    /// the blocks were cut, so the bytes never depend on scheduling. At
    /// most [`IN_FLIGHT`] blocks per thread are between reading and
    /// writing, which bounds memory whatever the tree's size.
    ///
    /// `runs` cut the files into runs whose tails share fragment blocks
    /// (see `Plan::fragment_groups`): the fragment block open at the end
    /// of a run is written then. One call for all runs keeps the stages
    /// overlapping across them, and numbers fragments in one sequence.
    pub(super) fn write_files(
        &mut self,
        files: &[&Source],
        runs: &[std::ops::Range<usize>],
    ) -> Result<Vec<FileData>> {
        let mut run_end = vec![false; files.len()];
        for r in runs.iter().filter(|r| !r.is_empty()) {
            run_end[r.end - 1] = true;
        }
        let first_fragment = self.fragments.len() as u32;
        let bs = self.comp.block_size as usize;
        let threads = self.threads.max(1);
        let limit = IN_FLIGHT * threads;
        let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<Raw>(threads);
        let raw_rx = std::sync::Mutex::new(raw_rx);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
        // One token per block in flight: the reader takes one per block,
        // the writer gives it back once the block is written.
        let (token_tx, token_rx) = std::sync::mpsc::sync_channel::<()>(limit);
        for _ in 0..limit {
            token_tx.send(()).expect("room for every token");
        }
        let DataWriter {
            out,
            pos,
            comp,
            fragments,
            stats,
            ..
        } = self;
        let mut sink = Sink {
            out,
            pos,
            fragments,
            stats,
        };
        let comp = &*comp;
        std::thread::scope(|s| -> Result<Vec<FileData>> {
            // Owned by this closure, so that a panic here drops it and the
            // reader, waiting for a token, stops instead of hanging the scope.
            let mut token_tx = Some(token_tx);
            let run_end = &run_end;
            let reader =
                s.spawn(move || cut(files, run_end, first_fragment, bs, &raw_tx, &token_rx));
            for _ in 0..threads {
                let (raw_rx, done_tx) = (&raw_rx, done_tx.clone());
                s.spawn(move || {
                    loop {
                        let next = raw_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(raw) = next else { break };
                        // All-zero data blocks are stored as holes.
                        let hole =
                            matches!(raw.job, Job::Block(_)) && raw.data.iter().all(|x| *x == 0);
                        let stored = (!hole).then(|| comp.compress(&raw.data));
                        let done = Done {
                            seq: raw.seq,
                            job: raw.job,
                            raw_len: raw.data.len(),
                            stored,
                        };
                        if done_tx.send(done).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(done_tx);
            let mut placed: Vec<(u64, Vec<u32>)> = Vec::with_capacity(files.len());
            let mut waiting = std::collections::BTreeMap::new();
            let mut next = 0u64;
            let mut failed = None;
            // Ends when the reader and every worker are done (or gone).
            for done in done_rx.iter() {
                waiting.insert(done.seq, done);
                while let Some(done) = waiting.remove(&next) {
                    next += 1;
                    if failed.is_none()
                        && let Err(e) = sink.place(done, &mut placed)
                    {
                        failed = Some(e);
                        // Stops the reader once the tokens it has run out.
                        token_tx = None;
                    }
                    if let Some(tokens) = &token_tx {
                        // The reader may be gone after its own error.
                        let _ = tokens.send(());
                    }
                }
            }
            let layout = reader.join().expect("the reader does not panic")?;
            if let Some(e) = failed {
                return Err(e);
            }
            Ok(layout
                .into_iter()
                .enumerate()
                .map(|(f, l)| {
                    let (blocks_start, sizes) =
                        placed.get_mut(f).map(std::mem::take).unwrap_or_default();
                    FileData {
                        blocks_start,
                        sizes,
                        fragment: l.fragment,
                        size: l.size,
                    }
                })
                .collect())
        })
    }
}

/// Where compressed blocks go, in order: the image and its bookkeeping.
struct Sink<'w> {
    out: &'w mut BufWriter<File>,
    pos: &'w mut u64,
    fragments: &'w mut Vec<(u64, u32)>,
    stats: &'w mut Stats,
}

impl Sink<'_> {
    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        *self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes one compressed block where the format wants it, noting its
    /// place in `placed` (per file: where its blocks start, their size
    /// words) or in the fragment table.
    fn place(&mut self, done: Done, placed: &mut Vec<(u64, Vec<u32>)>) -> Result<()> {
        let Some((stored, hit)) = done.stored else {
            if let Job::Block(f) = done.job {
                file_blocks(placed, f, *self.pos).push(0);
            }
            return Ok(());
        };
        let word = if stored.len() == done.raw_len {
            stored.len() as u32 | UNCOMPRESSED_BLOCK
        } else {
            stored.len() as u32
        };
        let start = *self.pos;
        self.emit(&stored)?;
        self.stats.cached_blocks += hit as u64;
        match done.job {
            Job::Block(f) => {
                file_blocks(placed, f, start).push(word);
                self.stats.data_blocks += 1;
            }
            Job::Fragment(i) => {
                debug_assert_eq!(i as usize, self.fragments.len());
                self.fragments.push((start, word));
            }
        }
        Ok(())
    }
}

/// File `f`'s block size words, its blocks starting at `pos` if this is
/// its first.
fn file_blocks(placed: &mut Vec<(u64, Vec<u32>)>, f: usize, pos: u64) -> &mut Vec<u32> {
    if placed.len() <= f {
        placed.resize_with(f + 1, Default::default);
    }
    let p = &mut placed[f];
    if p.1.is_empty() {
        p.0 = pos;
    }
    &mut p.1
}

/// Blocks per compressing thread between reading and writing.
const IN_FLIGHT: usize = 8;

/// The reading stage: every file's full blocks, then its tail into the
/// current fragment block (closed early after a file that ends a run),
/// numbered in output order and sent on `raw`, one `token` per block.
/// Returns each file's size and fragment.
fn cut(
    files: &[&Source],
    run_end: &[bool],
    first_fragment: u32,
    bs: usize,
    raw: &std::sync::mpsc::SyncSender<Raw>,
    tokens: &std::sync::mpsc::Receiver<()>,
) -> Result<Vec<Layout>> {
    let mut seq = 0u64;
    let mut send = |job: Job, data: Vec<u8>| -> Result<()> {
        // No token or no worker: the writer stopped on an error it reports.
        tokens.recv().context("the squashfs writer stopped")?;
        raw.send(Raw { seq, job, data })
            .ok()
            .context("the squashfs writer stopped")?;
        seq += 1;
        Ok(())
    };
    let mut out = Vec::with_capacity(files.len());
    let mut frag_buf: Vec<u8> = Vec::new();
    let mut frag_count = first_fragment;
    for (f, src) in files.iter().enumerate() {
        let (mut reader, len) = open_source(src)?;
        for _ in 0..len / bs as u64 {
            let mut b = vec![0u8; bs];
            reader
                .read_exact(&mut b)
                .context("a file changed size while being packed")?;
            send(Job::Block(f), b)?;
        }
        let tail = (len % bs as u64) as usize;
        let mut fragment = None;
        if tail > 0 {
            let mut t = vec![0u8; tail];
            reader
                .read_exact(&mut t)
                .context("a file changed size while being packed")?;
            if frag_buf.len() + tail > bs {
                send(Job::Fragment(frag_count), std::mem::take(&mut frag_buf))?;
                frag_count += 1;
            }
            fragment = Some((frag_count, frag_buf.len() as u32));
            frag_buf.extend(&t);
        }
        let mut extra = [0u8; 1];
        if reader.read(&mut extra)? != 0 {
            bail!("a file grew while being packed");
        }
        out.push(Layout {
            size: len,
            fragment,
        });
        if run_end[f] && !frag_buf.is_empty() {
            send(Job::Fragment(frag_count), std::mem::take(&mut frag_buf))?;
            frag_count += 1;
        }
    }
    if !frag_buf.is_empty() {
        send(Job::Fragment(frag_count), frag_buf)?;
    }
    Ok(out)
}

/// What a compressed block is for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Job {
    /// The next data block of file `n`.
    Block(usize),
    /// Fragment block `n`.
    Fragment(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files of every shape the data stage handles: empty, tails only,
    /// several full blocks, all-zero blocks (holes), blocks that do not
    /// compress, and enough tails to fill many fragment blocks.
    fn tree() -> Tree {
        let mut t = Tree::default();
        let dir = |t: &mut Tree, p: &str| {
            t.entries.insert(
                p.to_string(),
                Entry {
                    kind: Kind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    xattrs: vec![],
                },
            );
        };
        dir(&mut t, "");
        dir(&mut t, "d");
        let mut noise = 0x9e37_79b9u32;
        for i in 0..200usize {
            let len = (i * 7919) % (5 * 4096 + 13);
            let data: Vec<u8> = (0..len)
                .map(|k| match i % 4 {
                    0 => 0,
                    1 => (k % 251) as u8,
                    _ => {
                        noise ^= noise << 13;
                        noise ^= noise >> 17;
                        noise ^= noise << 5;
                        noise as u8
                    }
                })
                .collect();
            t.entries.insert(
                format!("d/f{i:03}"),
                Entry {
                    kind: Kind::File(Source::Bytes(data)),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    xattrs: vec![],
                },
            );
        }
        t
    }

    fn pack(t: &Tree, threads: usize, cache: Option<PathBuf>) -> (Vec<u8>, Stats) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.sqfs");
        let opts = Options {
            block_size: 4096,
            threads,
            cache,
            ..Options::default()
        };
        let stats = super::super::write(t, &out, &opts).unwrap();
        (std::fs::read(&out).unwrap(), stats)
    }

    /// Every file reads back as it went in: the tails of 200 files span
    /// several fragment runs, whose fragment numbers must continue from
    /// run to run.
    #[test]
    fn every_file_reads_back_across_fragment_runs() {
        let t = tree();
        let (bytes, stats) = pack(&t, 2, None);
        assert!(stats.fragments > 10, "{stats:?}");
        let mut r = super::super::Reader::open(std::io::Cursor::new(bytes), 0).unwrap();
        for (path, e) in &t.entries {
            if let Kind::File(Source::Bytes(data)) = &e.kind {
                assert!(r.read(path).unwrap() == *data, "{path} reads back wrong");
            }
        }
    }

    #[test]
    fn bytes_do_not_depend_on_threads_or_the_cache() {
        let t = tree();
        let (one, stats) = pack(&t, 1, None);
        assert!(stats.data_blocks > 100 && stats.fragments > 10, "{stats:?}");
        for threads in [2, 3, 8] {
            assert!(pack(&t, threads, None).0 == one, "{threads} threads differ");
        }
        let cache = tempfile::tempdir().unwrap();
        let cold = pack(&t, 4, Some(cache.path().to_path_buf()));
        let warm = pack(&t, 4, Some(cache.path().to_path_buf()));
        assert!(
            cold.0 == one && warm.0 == one,
            "the cache changed the bytes"
        );
        assert_eq!(
            warm.1.cached_blocks,
            warm.1.data_blocks + warm.1.fragments as u64
        );
    }

    #[test]
    fn a_file_that_cannot_be_read_fails_the_write_without_hanging() {
        let mut t = tree();
        t.entries.get_mut("d/f100").unwrap().kind =
            Kind::File(Source::Path("/nonexistent/pak-test".into()));
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            block_size: 4096,
            threads: 2,
            ..Options::default()
        };
        let err = super::super::write(&t, &dir.path().join("x.sqfs"), &opts).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/pak-test"),
            "{err:#}"
        );
    }
}
