//! A squashfs 4.0 writer (zstd), reproducible, parallel, with a
//! content-addressed cache of compressed blocks.
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
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

mod reader;
pub use reader::{ReadNode, Reader};

const MAGIC: u32 = 0x7371_7368;
const ZSTD_ID: u16 = 6;
const META_SIZE: usize = 8192;
const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
const NO_XATTR: u32 = 0xFFFF_FFFF;
const NONE_U64: u64 = 0xFFFF_FFFF_FFFF_FFFF;
const UNCOMPRESSED_BLOCK: u32 = 1 << 24;
const FLAG_NO_XATTRS: u16 = 0x0200;
/// Blocks compressed together before writing: bounds memory to about
/// this many block_size-sized buffers, twice.
const BATCH_BLOCKS: usize = 256;

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Source),
    Symlink(String),
    /// Another path of the tree, a regular file: the same inode.
    HardLink(String),
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

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
                Kind::Socket
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

/// Writes metadata (inodes, directories, tables) in 8 KiB blocks.
struct MetaWriter {
    level: i32,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl MetaWriter {
    fn new(level: i32) -> Self {
        MetaWriter {
            level,
            out: Vec::new(),
            buf: Vec::with_capacity(META_SIZE),
        }
    }

    /// (start of the current block within `out`, offset within it).
    fn position(&self) -> (u32, u16) {
        (self.out.len() as u32, self.buf.len() as u16)
    }

    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = META_SIZE - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == META_SIZE {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let c = zstd::bulk::compress(&self.buf, self.level).expect("zstd compresses");
        if c.len() < self.buf.len() {
            self.out.extend((c.len() as u16).to_le_bytes());
            self.out.extend(&c);
        } else {
            self.out
                .extend((self.buf.len() as u16 | 0x8000).to_le_bytes());
            self.out.extend(&self.buf);
        }
        self.buf.clear();
    }

    fn finish(mut self) -> Vec<u8> {
        self.flush();
        self.out
    }
}

/// A table stored as metadata blocks plus an index of their positions
/// (id, fragment and xattr-id tables).
fn indexed_table(level: i32, data: &[u8], base: u64) -> (Vec<u8>, Vec<u8>) {
    let mut blocks = Vec::new();
    let mut index = Vec::new();
    for chunk in data.chunks(META_SIZE) {
        index.extend((base + blocks.len() as u64).to_le_bytes());
        let mut m = MetaWriter::new(level);
        m.write(chunk);
        blocks.extend(m.finish());
    }
    (blocks, index)
}

struct Compressor {
    level: i32,
    block_size: u32,
    cache: Option<PathBuf>,
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
    fn compress(&self, data: &[u8]) -> (Vec<u8>, bool) {
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
fn holds(stored: &[u8], data: &[u8]) -> bool {
    if stored.len() == data.len() {
        // Stored raw (compression did not help), or compressed to exactly
        // the same length, which the writer never keeps.
        return stored == data;
    }
    zstd::bulk::decompress(stored, data.len()).is_ok_and(|d| d == data)
}

fn store_cached(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = p.parent().expect("has parent");
    std::fs::create_dir_all(dir)?;
    // A temporary file of its own for every writer: blocks are compressed
    // on many threads at once, and several processes may share a cache.
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(p).map_err(|e| e.error)?;
    Ok(())
}

struct FileData {
    blocks_start: u64,
    sizes: Vec<u32>,
    fragment: Option<(u32, u32)>,
    size: u64,
}

/// A reader over a file's bytes, whatever their source.
fn open_source(src: &Source) -> Result<(Box<dyn Read + '_>, u64)> {
    Ok(match src {
        Source::Bytes(b) => (Box::new(&b[..]), b.len() as u64),
        Source::Path(p) => {
            let f = File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
            let len = f.metadata()?.len();
            (Box::new(f), len)
        }
    })
}

struct DataWriter<'a> {
    out: &'a mut BufWriter<File>,
    pos: u64,
    comp: Compressor,
    frag_buf: Vec<u8>,
    /// Fragment blocks made so far (written or waiting in a batch).
    frag_count: u32,
    fragments: Vec<(u64, u32)>,
    stats: Stats,
    pool: rayon::ThreadPool,
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
    fn write_files(&mut self, files: &[&Source]) -> Result<Vec<FileData>> {
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
enum Job {
    /// The next data block of file `n`.
    Block(usize),
    /// Fragment block `n`.
    Fragment(u32),
}

/// Per-inode facts gathered before writing.
struct Node<'a> {
    path: &'a str,
    entry: &'a Entry,
    number: u32,
    nlink: u32,
    children: Vec<usize>,
    file: Option<usize>,
    xattr: u32,
}

fn basic_type(k: &Kind) -> u16 {
    match k {
        Kind::Dir => 1,
        Kind::File(_) | Kind::HardLink(_) => 2,
        Kind::Symlink(_) => 3,
        Kind::BlockDev { .. } => 4,
        Kind::CharDev { .. } => 5,
        Kind::Fifo => 6,
        Kind::Socket => 7,
    }
}

fn encode_dev(major: u32, minor: u32) -> u32 {
    (major << 8) | (minor & 0xff) | ((minor & !0xff) << 12)
}

fn split_xattr(name: &str) -> Result<(u16, &str)> {
    for (prefix, t) in [("user.", 0u16), ("trusted.", 1), ("security.", 2)] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return Ok((t, rest));
        }
    }
    bail!("xattr {name:?} has a namespace squashfs cannot store (user, trusted, security)")
}

/// Writes `tree` as a squashfs image at `out` (via a temporary file).
pub fn write(tree: &Tree, out: &Path, opts: &Options) -> Result<Stats> {
    if !opts.block_size.is_power_of_two() || !(4096..=1 << 20).contains(&opts.block_size) {
        bail!(
            "block size {} must be a power of two between 4 KiB and 1 MiB",
            opts.block_size
        );
    }
    let root = tree
        .entries
        .get("")
        .context("the tree has no root directory")?;
    if root.kind != Kind::Dir {
        bail!("the root of the tree must be a directory");
    }

    // Index nodes; hard links become extra names of their target's node.
    let mut nodes: Vec<Node> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (path, entry) in &tree.entries {
        if let Kind::HardLink(_) = entry.kind {
            continue;
        }
        index.insert(path.as_str(), nodes.len());
        nodes.push(Node {
            path,
            entry,
            number: 0,
            nlink: 1,
            children: Vec::new(),
            file: None,
            xattr: NO_XATTR,
        });
    }
    // Directory children: (name, node index), sorted by name bytes.
    let mut listing: HashMap<usize, Vec<(&str, usize)>> = HashMap::new();
    for (path, entry) in &tree.entries {
        if path.is_empty() {
            continue;
        }
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let pi = *index
            .get(parent)
            .with_context(|| format!("{path}: its parent directory is not in the tree"))?;
        if nodes[pi].entry.kind != Kind::Dir {
            bail!("{path}: its parent is not a directory");
        }
        let target = match &entry.kind {
            Kind::HardLink(t) => {
                let ti = *index.get(t.as_str()).with_context(|| {
                    format!("{path}: hard link to {t}, which is not in the tree")
                })?;
                if !matches!(nodes[ti].entry.kind, Kind::File(_)) {
                    bail!("{path}: hard link to {t}, which is not a regular file");
                }
                nodes[ti].nlink += 1;
                ti
            }
            _ => index[path.as_str()],
        };
        listing.entry(pi).or_default().push((name, target));
    }
    for l in listing.values_mut() {
        l.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    }
    let root_idx = index[""];
    // Post-order: children before parents, in sorted-name order.
    let mut order = Vec::with_capacity(nodes.len());
    let mut visited = vec![false; nodes.len()];
    fn post(
        i: usize,
        listing: &HashMap<usize, Vec<(&str, usize)>>,
        visited: &mut [bool],
        order: &mut Vec<usize>,
    ) {
        visited[i] = true;
        if let Some(children) = listing.get(&i) {
            for (_, c) in children {
                if !visited[*c] {
                    post(*c, listing, visited, order);
                }
            }
        }
        order.push(i);
    }
    post(root_idx, &listing, &mut visited, &mut order);
    for (n, i) in order.iter().enumerate() {
        nodes[*i].number = n as u32 + 1;
    }
    for (i, l) in &listing {
        nodes[*i].children = l.iter().map(|(_, c)| *c).collect();
        let subdirs = l
            .iter()
            .filter(|(_, c)| nodes[*c].entry.kind == Kind::Dir)
            .count() as u32;
        nodes[*i].nlink = 2 + subdirs;
    }
    if nodes[root_idx].children.is_empty() {
        nodes[root_idx].nlink = 2;
    }
    for n in nodes.iter_mut() {
        if n.entry.kind == Kind::Dir && !listing.contains_key(&index[n.path]) {
            n.nlink = 2;
        }
    }
    let inode_count = order.len() as u32;

    // uid/gid table.
    let mut ids: Vec<u32> = nodes
        .iter()
        .flat_map(|n| [n.entry.uid, n.entry.gid])
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > 65535 {
        bail!("more than 65535 distinct owners");
    }
    let id_of = |v: u32| ids.binary_search(&v).expect("collected") as u16;

    // xattrs: one id per distinct set.
    let mut xattr_sets: Vec<&Vec<(String, Vec<u8>)>> = Vec::new();
    let mut xattr_ids: HashMap<&Vec<(String, Vec<u8>)>, u32> = HashMap::new();
    for n in nodes.iter_mut() {
        if n.entry.xattrs.is_empty() {
            continue;
        }
        let id = *xattr_ids.entry(&n.entry.xattrs).or_insert_with(|| {
            xattr_sets.push(&n.entry.xattrs);
            (xattr_sets.len() - 1) as u32
        });
        n.xattr = id;
    }

    // Data: files in inode order.
    let file_nodes: Vec<usize> = order
        .iter()
        .copied()
        .filter(|i| matches!(nodes[*i].entry.kind, Kind::File(_)))
        .collect();
    let sources: Vec<&Source> = file_nodes
        .iter()
        .map(|i| match &nodes[*i].entry.kind {
            Kind::File(s) => s,
            _ => unreachable!(),
        })
        .collect();
    for (k, i) in file_nodes.iter().enumerate() {
        nodes[*i].file = Some(k);
    }

    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".sqfs-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file().try_clone()?);
    w.write_all(&[0u8; 96])?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.threads
    };
    let mut dw = DataWriter {
        out: &mut w,
        pos: 96,
        comp: Compressor {
            level: opts.level,
            block_size: opts.block_size,
            cache: opts.cache.clone(),
        },
        frag_buf: Vec::new(),
        frag_count: 0,
        fragments: Vec::new(),
        stats: Stats::default(),
        pool: rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?,
    };
    let data = dw.write_files(&sources)?;
    let fragments = std::mem::take(&mut dw.fragments);
    let mut stats = std::mem::take(&mut dw.stats);
    let mut pos = dw.pos;

    // Inodes and directories, children first.
    let mut inodes = MetaWriter::new(opts.level);
    let mut dirs = MetaWriter::new(opts.level);
    let mut refs: Vec<(u32, u16)> = vec![(0, 0); nodes.len()];
    for &i in &order {
        let n = &nodes[i];
        let e = n.entry;
        let mut b: Vec<u8> = Vec::with_capacity(64);
        let header = |b: &mut Vec<u8>, t: u16| {
            b.extend(t.to_le_bytes());
            b.extend((e.mode as u16 & 0o7777).to_le_bytes());
            b.extend(id_of(e.uid).to_le_bytes());
            b.extend(id_of(e.gid).to_le_bytes());
            b.extend(opts.mtime.to_le_bytes());
            b.extend(n.number.to_le_bytes());
        };
        match &e.kind {
            Kind::Dir => {
                let (start, offset) = dirs.position();
                let mut size = 0usize;
                let children = listing.get(&i).cloned().unwrap_or_default();
                let mut k = 0;
                while k < children.len() {
                    // One header per run sharing an inode metadata block,
                    // at most 256 entries, inode numbers within i16 of the base.
                    let (blk, _) = refs[children[k].1];
                    let base = nodes[children[k].1].number;
                    let mut end = k;
                    while end < children.len()
                        && end - k < 256
                        && refs[children[end].1].0 == blk
                        && (nodes[children[end].1].number as i64 - base as i64).abs() < 32767
                    {
                        end += 1;
                    }
                    let mut h = Vec::new();
                    h.extend(((end - k - 1) as u32).to_le_bytes());
                    h.extend(blk.to_le_bytes());
                    h.extend(base.to_le_bytes());
                    for (name, c) in &children[k..end] {
                        let (_, off) = refs[*c];
                        h.extend(off.to_le_bytes());
                        h.extend(((nodes[*c].number as i64 - base as i64) as i16).to_le_bytes());
                        h.extend(basic_type(&nodes[*c].entry.kind).to_le_bytes());
                        h.extend(((name.len() - 1) as u16).to_le_bytes());
                        h.extend(name.as_bytes());
                    }
                    size += h.len();
                    dirs.write(&h);
                    k = end;
                }
                let parent = if i == root_idx {
                    inode_count + 1
                } else {
                    let (p, _) = n.path.rsplit_once('/').unwrap_or(("", n.path));
                    nodes[index[p]].number
                };
                let file_size = size + 3;
                if file_size <= 0xFFFF && n.xattr == NO_XATTR {
                    header(&mut b, 1);
                    b.extend(start.to_le_bytes());
                    b.extend(n.nlink.to_le_bytes());
                    b.extend((file_size as u16).to_le_bytes());
                    b.extend(offset.to_le_bytes());
                    b.extend(parent.to_le_bytes());
                } else {
                    header(&mut b, 8);
                    b.extend(n.nlink.to_le_bytes());
                    b.extend((file_size as u32).to_le_bytes());
                    b.extend(start.to_le_bytes());
                    b.extend(parent.to_le_bytes());
                    b.extend(0u16.to_le_bytes());
                    b.extend(offset.to_le_bytes());
                    b.extend(n.xattr.to_le_bytes());
                }
            }
            Kind::File(_) => {
                let d = &data[n.file.expect("file index")];
                let (frag, frag_off) = d.fragment.unwrap_or((NO_FRAGMENT, 0));
                let sparse: u64 =
                    d.sizes.iter().filter(|s| **s == 0).count() as u64 * opts.block_size as u64;
                if n.nlink == 1
                    && n.xattr == NO_XATTR
                    && d.size < u32::MAX as u64
                    && d.blocks_start < u32::MAX as u64
                    && sparse == 0
                {
                    header(&mut b, 2);
                    b.extend((d.blocks_start as u32).to_le_bytes());
                    b.extend(frag.to_le_bytes());
                    b.extend(frag_off.to_le_bytes());
                    b.extend((d.size as u32).to_le_bytes());
                } else {
                    header(&mut b, 9);
                    b.extend(d.blocks_start.to_le_bytes());
                    b.extend(d.size.to_le_bytes());
                    b.extend(sparse.to_le_bytes());
                    b.extend(n.nlink.to_le_bytes());
                    b.extend(frag.to_le_bytes());
                    b.extend(frag_off.to_le_bytes());
                    b.extend(n.xattr.to_le_bytes());
                }
                for s in &d.sizes {
                    b.extend(s.to_le_bytes());
                }
            }
            Kind::Symlink(target) => {
                header(&mut b, if n.xattr == NO_XATTR { 3 } else { 10 });
                b.extend(1u32.to_le_bytes());
                b.extend((target.len() as u32).to_le_bytes());
                b.extend(target.as_bytes());
                if n.xattr != NO_XATTR {
                    b.extend(n.xattr.to_le_bytes());
                }
            }
            Kind::CharDev { .. } | Kind::BlockDev { .. } | Kind::Fifo | Kind::Socket => {
                // Basic inode types 4-7; their extended twins add 7 and an xattr index.
                let basic = basic_type(&e.kind);
                header(
                    &mut b,
                    if n.xattr == NO_XATTR {
                        basic
                    } else {
                        basic + 7
                    },
                );
                b.extend(1u32.to_le_bytes());
                if let Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } = &e.kind {
                    b.extend(encode_dev(*major, *minor).to_le_bytes());
                }
                if n.xattr != NO_XATTR {
                    b.extend(n.xattr.to_le_bytes());
                }
            }
            Kind::HardLink(_) => unreachable!("hard links are extra names, not nodes"),
        }
        refs[i] = inodes.position();
        inodes.write(&b);
    }
    let root_ref = {
        let (blk, off) = refs[root_idx];
        ((blk as u64) << 16) | off as u64
    };
    let inode_bytes = inodes.finish();
    let dir_bytes = dirs.finish();

    let inode_table_start = pos;
    w.write_all(&inode_bytes)?;
    pos += inode_bytes.len() as u64;
    let directory_table_start = pos;
    w.write_all(&dir_bytes)?;
    pos += dir_bytes.len() as u64;

    // Fragment table.
    let mut frag_entries = Vec::with_capacity(fragments.len() * 16);
    for (start, size) in &fragments {
        frag_entries.extend(start.to_le_bytes());
        frag_entries.extend(size.to_le_bytes());
        frag_entries.extend(0u32.to_le_bytes());
    }
    let (frag_blocks, frag_index) = indexed_table(opts.level, &frag_entries, pos);
    w.write_all(&frag_blocks)?;
    pos += frag_blocks.len() as u64;
    let fragment_table_start = pos;
    w.write_all(&frag_index)?;
    pos += frag_index.len() as u64;

    // Id table.
    let id_bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
    let (id_blocks, id_index) = indexed_table(opts.level, &id_bytes, pos);
    w.write_all(&id_blocks)?;
    pos += id_blocks.len() as u64;
    let id_table_start = pos;
    w.write_all(&id_index)?;
    pos += id_index.len() as u64;

    // Xattr table: key/value metadata, then the id table, then its index.
    let mut xattr_table_start = NONE_U64;
    if !xattr_sets.is_empty() {
        let kv_start = pos;
        let mut kv = MetaWriter::new(opts.level);
        let mut id_entries = Vec::new();
        for set in &xattr_sets {
            let (blk, off) = kv.position();
            let mut size = 0u32;
            for (name, value) in set.iter() {
                let (t, short) = split_xattr(name)?;
                let mut rec = Vec::new();
                rec.extend(t.to_le_bytes());
                rec.extend((short.len() as u16).to_le_bytes());
                rec.extend(short.as_bytes());
                rec.extend((value.len() as u32).to_le_bytes());
                rec.extend(value);
                size += rec.len() as u32;
                kv.write(&rec);
            }
            id_entries.extend((((blk as u64) << 16) | off as u64).to_le_bytes());
            id_entries.extend((set.len() as u32).to_le_bytes());
            id_entries.extend(size.to_le_bytes());
        }
        let kv_bytes = kv.finish();
        w.write_all(&kv_bytes)?;
        pos += kv_bytes.len() as u64;
        let (id_blocks, id_index) = indexed_table(opts.level, &id_entries, pos);
        w.write_all(&id_blocks)?;
        pos += id_blocks.len() as u64;
        xattr_table_start = pos;
        w.write_all(&kv_start.to_le_bytes())?;
        w.write_all(&(xattr_sets.len() as u32).to_le_bytes())?;
        w.write_all(&0u32.to_le_bytes())?;
        w.write_all(&id_index)?;
        pos += 16 + id_index.len() as u64;
    }

    let bytes_used = pos;
    // Pad to 4 KiB, as mksquashfs does, so the image fits block devices.
    let padded = bytes_used.div_ceil(4096) * 4096;
    w.write_all(&vec![0u8; (padded - bytes_used) as usize])?;

    let mut sb = Vec::with_capacity(96);
    sb.extend(MAGIC.to_le_bytes());
    sb.extend(inode_count.to_le_bytes());
    sb.extend(opts.mtime.to_le_bytes());
    sb.extend(opts.block_size.to_le_bytes());
    sb.extend((fragments.len() as u32).to_le_bytes());
    sb.extend(ZSTD_ID.to_le_bytes());
    sb.extend((opts.block_size.trailing_zeros() as u16).to_le_bytes());
    sb.extend(
        (if xattr_sets.is_empty() {
            FLAG_NO_XATTRS
        } else {
            0
        })
        .to_le_bytes(),
    );
    sb.extend((ids.len() as u16).to_le_bytes());
    sb.extend(4u16.to_le_bytes());
    sb.extend(0u16.to_le_bytes());
    sb.extend(root_ref.to_le_bytes());
    sb.extend(bytes_used.to_le_bytes());
    sb.extend(id_table_start.to_le_bytes());
    sb.extend(xattr_table_start.to_le_bytes());
    sb.extend(inode_table_start.to_le_bytes());
    sb.extend(directory_table_start.to_le_bytes());
    sb.extend(fragment_table_start.to_le_bytes());
    sb.extend(NONE_U64.to_le_bytes());
    w.flush()?;
    let mut f = w.into_inner().map_err(|e| e.into_error())?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&sb)?;
    f.sync_all()?;
    let mut perms = tmp.as_file().metadata()?.permissions();
    // Readable like any file the user writes, whatever the temp file had.
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    tmp.as_file().set_permissions(perms)?;
    tmp.persist(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    stats.bytes = padded;
    stats.inodes = inode_count;
    stats.fragments = fragments.len() as u32;
    Ok(stats)
}
