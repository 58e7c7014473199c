//! The squashfs writer: reproducible, parallel, with a content-addressed
//! cache of compressed blocks. `write` is the step list; each table has a
//! function of its own.
//!
//! Bounds. Nothing here recurses over the tree: the post-order is an
//! explicit stack, so a tree thousands of directories deep costs heap, not
//! stack (unit test: 5000 levels on a 256 KiB thread). Memory grows with
//! the number of inodes, never with file sizes (data streams through
//! [`super::data`]): per inode the plan holds a `Node` (~80 bytes), its
//! entries in the name index and its parent's listing (~60 bytes), ~60
//! bytes of `FileData` for a regular file, and its share of the inode and
//! directory tables, kept compressed in memory until written (~20 bytes):
//! about 250 bytes. A whole `pak build --generation` of 300k tiny files
//! peaked at 1.5 KiB a file over the same build without them (556 MiB
//! against 126 MiB; tests/bounded_generation.rs holds a build of 100k to
//! that figure); the rest is the assembled tree and its squashfs
//! description, which hold store paths and checksums.

use std::collections::HashMap;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::Digest;

use super::data::{Compressor, DataWriter, FileData, compress_zstd};
use super::*;
use crate::util::leftovers::{self, Temporary};

/// Writes metadata (inodes, directories, tables) in 8 KiB blocks.
pub(super) struct MetaWriter {
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
        let c = compress_zstd(&self.buf, self.level);
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

/// Writes `tree` as a squashfs image at `out` (via a temporary file), in
/// the order the format lays it out: superblock (last, at offset 0), data,
/// inode and directory tables, fragment, id and xattr tables.
pub fn write(tree: &Tree, out: &Path, opts: &Options) -> Result<Stats> {
    if !opts.block_size.is_power_of_two() || !(4096..=1 << 20).contains(&opts.block_size) {
        bail!(
            "block size {} must be a power of two between 4 KiB and 1 MiB",
            opts.block_size
        );
    }
    let mut plan = Plan::of(tree)?;
    let sources = plan.number_files();

    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Held while written, so `pak gc` takes it only from a dead pak.
    let (tmp, held) = leftovers::held(
        || {
            tempfile::Builder::new()
                .prefix(Temporary::Squashfs.prefix())
                .tempfile_in(dir)
        },
        |t| Ok((t.as_file().try_clone()?, t.path().to_path_buf())),
    )
    .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file().try_clone()?);
    w.write_all(&[0u8; SUPERBLOCK_SIZE as usize])?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.threads
    };
    let mut dw = DataWriter {
        out: &mut w,
        pos: SUPERBLOCK_SIZE,
        comp: Compressor {
            level: opts.level,
            block_size: opts.block_size,
            cache: opts.cache.clone(),
        },
        fragments: Vec::new(),
        stats: Stats::default(),
        threads,
    };
    let data = dw.write_files(&sources, &plan.fragment_groups())?;
    let fragments = std::mem::take(&mut dw.fragments);
    let mut stats = std::mem::take(&mut dw.stats);
    let pos = dw.pos;

    let (inode_bytes, dir_bytes, root_ref) = plan.inodes(&data, opts);
    let mut t = Tables::new(&mut w, pos);
    let inode_table_start = t.raw(&inode_bytes)?;
    let directory_table_start = t.raw(&dir_bytes)?;
    let mut frag_entries = Vec::with_capacity(fragments.len() * 16);
    for (start, size) in &fragments {
        frag_entries.extend(start.to_le_bytes());
        frag_entries.extend(size.to_le_bytes());
        frag_entries.extend(0u32.to_le_bytes());
    }
    let fragment_table_start = t.indexed(opts.level, &frag_entries)?;
    let id_bytes: Vec<u8> = plan.ids.iter().flat_map(|v| v.to_le_bytes()).collect();
    let id_table_start = t.indexed(opts.level, &id_bytes)?;
    let xattr_table_start = if plan.xattr_sets.is_empty() {
        NONE_U64
    } else {
        t.xattrs(opts.level, &plan.xattr_sets)?
    };
    let bytes_used = t.pos;
    // Pad to 4 KiB, as mksquashfs does, so the image fits block devices.
    let padded = bytes_used.div_ceil(4096) * 4096;
    w.write_all(&vec![0u8; (padded - bytes_used) as usize])?;

    let inode_count = plan.order.len() as u32;
    let sb = Superblock {
        inode_count,
        mtime: opts.mtime,
        block_size: opts.block_size,
        fragments: fragments.len() as u32,
        xattrs: !plan.xattr_sets.is_empty(),
        ids: plan.ids.len() as u16,
        root_ref,
        bytes_used,
        id_table_start,
        xattr_table_start,
        inode_table_start,
        directory_table_start,
        fragment_table_start,
    }
    .to_bytes();
    w.flush()?;
    let mut f = w.into_inner().map_err(|e| e.into_error())?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&sb)?;
    // Not synced here: the build that keeps it seals it next, and the
    // seal syncs the whole file (`generation::seal`); a file never sealed
    // is refused as one (`seal_intact`). A sync of its own cost the pack
    // seconds of wall time waiting for the disk.
    let mut perms = tmp.as_file().metadata()?.permissions();
    // Readable like any file the user writes, whatever the temp file had.
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    tmp.as_file().set_permissions(perms)?;
    tmp.persist(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    if leftovers::is_temporary(out) {
        // A temporary itself (a build's `.gen-*`): still ours after this
        // returns, though the caller never opened this inode.
        leftovers::keep_until_exit(held);
    }
    stats.bytes = padded;
    stats.inodes = inode_count;
    stats.fragments = fragments.len() as u32;
    Ok(stats)
}

const SUPERBLOCK_SIZE: u64 = 96;
/// Files per run of shared fragment blocks, on average (see
/// `Plan::fragment_groups`): small enough that a changed run is a few
/// blocks, large enough that tails still compress together.
const FRAGMENT_RUN: u32 = 32;

/// The tree as inodes: one node per inode (hard links are extra names of
/// their target's node), each directory's sorted listing, and the order
/// inodes are written in (children first) which also numbers them.
struct Plan<'a> {
    nodes: Vec<Node<'a>>,
    index: HashMap<&'a str, usize>,
    listing: HashMap<usize, Vec<(&'a str, usize)>>,
    order: Vec<usize>,
    root: usize,
    /// Every uid and gid, sorted: the id table.
    ids: Vec<u32>,
    /// Each distinct set of xattrs once, in first-use order.
    xattr_sets: Vec<&'a Vec<(String, Vec<u8>)>>,
}

impl<'a> Plan<'a> {
    fn of(tree: &'a Tree) -> Result<Plan<'a>> {
        let root = tree
            .entries
            .get("")
            .context("the tree has no root directory")?;
        if root.kind != Kind::Dir {
            bail!("the root of the tree must be a directory");
        }
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
        let root = index[""];
        let order = post_order(root, &listing, nodes.len());
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
        if nodes[root].children.is_empty() {
            nodes[root].nlink = 2;
        }
        for n in nodes.iter_mut() {
            if n.entry.kind == Kind::Dir && !listing.contains_key(&index[n.path]) {
                n.nlink = 2;
            }
        }

        let mut ids: Vec<u32> = nodes
            .iter()
            .flat_map(|n| [n.entry.uid, n.entry.gid])
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > 65535 {
            bail!("more than 65535 distinct owners");
        }

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
        Ok(Plan {
            nodes,
            index,
            listing,
            order,
            root,
            ids,
            xattr_sets,
        })
    }

    /// Gives each regular file its place in the data, in inode order;
    /// returns their sources in that order.
    fn number_files(&mut self) -> Vec<&'a Source> {
        let file_nodes: Vec<usize> = self
            .order
            .iter()
            .copied()
            .filter(|i| matches!(self.nodes[*i].entry.kind, Kind::File(_)))
            .collect();
        let mut sources = Vec::with_capacity(file_nodes.len());
        for (k, i) in file_nodes.iter().enumerate() {
            self.nodes[*i].file = Some(k);
            if let Kind::File(s) = &self.nodes[*i].entry.kind {
                sources.push(s);
            }
        }
        sources
    }

    /// The regular files (numbered by [`Plan::number_files`]) cut into
    /// runs whose tails share fragment blocks; no tail shares one with a
    /// file outside its run. A run ends after a file whose path hashes to
    /// a multiple of [`FRAGMENT_RUN`], so where runs end depends on the
    /// paths alone: adding, removing or changing one file changes the
    /// fragment blocks of its own run only, not those of every file after
    /// it, and a delta update fetches that run's blocks, not the rest.
    fn fragment_groups(&self) -> Vec<std::ops::Range<usize>> {
        let mut paths: Vec<(usize, &str)> = self
            .nodes
            .iter()
            .filter_map(|n| n.file.map(|k| (k, n.path)))
            .collect();
        paths.sort_unstable();
        let mut runs = Vec::new();
        let mut start = 0;
        for (k, path) in paths {
            let h = sha2::Sha256::digest(path.as_bytes());
            if u32::from_le_bytes(h[..4].try_into().expect("4 bytes")) % FRAGMENT_RUN == 0 {
                runs.push(start..k + 1);
                start = k + 1;
            }
        }
        let total = self.nodes.iter().filter(|n| n.file.is_some()).count();
        if start < total {
            runs.push(start..total);
        }
        runs
    }

    fn id_of(&self, v: u32) -> u16 {
        self.ids.binary_search(&v).expect("collected") as u16
    }

    /// The inode and directory tables, children first, so a directory can
    /// name its children's inode references and its own inode can point at
    /// its listing; and the root inode's reference.
    fn inodes(&self, data: &[FileData], opts: &Options) -> (Vec<u8>, Vec<u8>, u64) {
        let mut inodes = MetaWriter::new(opts.level);
        let mut dirs = MetaWriter::new(opts.level);
        let mut refs: Vec<(u32, u16)> = vec![(0, 0); self.nodes.len()];
        for &i in &self.order {
            let b = match &self.nodes[i].entry.kind {
                Kind::Dir => {
                    let (start, offset) = dirs.position();
                    let size = self.listing_of(i, &refs, &mut dirs);
                    self.dir_inode(i, start, offset, size, opts)
                }
                Kind::File(_) => self.file_inode(i, data, opts),
                _ => self.other_inode(i, opts),
            };
            refs[i] = inodes.position();
            inodes.write(&b);
        }
        let (blk, off) = refs[self.root];
        let root_ref = ((blk as u64) << 16) | off as u64;
        (inodes.finish(), dirs.finish(), root_ref)
    }

    /// The common inode header: type, mode, owner, mtime, number.
    fn header(&self, b: &mut Vec<u8>, i: usize, inode_type: u16, opts: &Options) {
        let n = &self.nodes[i];
        b.extend(inode_type.to_le_bytes());
        b.extend((n.entry.mode as u16 & 0o7777).to_le_bytes());
        b.extend(self.id_of(n.entry.uid).to_le_bytes());
        b.extend(self.id_of(n.entry.gid).to_le_bytes());
        b.extend(opts.mtime.to_le_bytes());
        b.extend(n.number.to_le_bytes());
    }

    /// Writes directory `i`'s listing; returns its size in bytes.
    fn listing_of(&self, i: usize, refs: &[(u32, u16)], dirs: &mut MetaWriter) -> usize {
        let nodes = &self.nodes;
        let children = self.listing.get(&i).map(Vec::as_slice).unwrap_or_default();
        let mut size = 0usize;
        let mut k = 0;
        while k < children.len() {
            // One header per run sharing an inode metadata block, at most
            // 256 entries, inode numbers within i16 of the base.
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
        size
    }

    fn dir_inode(&self, i: usize, start: u32, offset: u16, size: usize, opts: &Options) -> Vec<u8> {
        let n = &self.nodes[i];
        let mut b = Vec::with_capacity(64);
        let parent = if i == self.root {
            self.order.len() as u32 + 1
        } else {
            let (p, _) = n.path.rsplit_once('/').unwrap_or(("", n.path));
            self.nodes[self.index[p]].number
        };
        let file_size = size + 3;
        if file_size <= 0xFFFF && n.xattr == NO_XATTR {
            self.header(&mut b, i, 1, opts);
            b.extend(start.to_le_bytes());
            b.extend(n.nlink.to_le_bytes());
            b.extend((file_size as u16).to_le_bytes());
            b.extend(offset.to_le_bytes());
            b.extend(parent.to_le_bytes());
        } else {
            self.header(&mut b, i, 8, opts);
            b.extend(n.nlink.to_le_bytes());
            b.extend((file_size as u32).to_le_bytes());
            b.extend(start.to_le_bytes());
            b.extend(parent.to_le_bytes());
            b.extend(0u16.to_le_bytes());
            b.extend(offset.to_le_bytes());
            b.extend(n.xattr.to_le_bytes());
        }
        b
    }

    fn file_inode(&self, i: usize, data: &[FileData], opts: &Options) -> Vec<u8> {
        let n = &self.nodes[i];
        let mut b = Vec::with_capacity(64);
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
            self.header(&mut b, i, 2, opts);
            b.extend((d.blocks_start as u32).to_le_bytes());
            b.extend(frag.to_le_bytes());
            b.extend(frag_off.to_le_bytes());
            b.extend((d.size as u32).to_le_bytes());
        } else {
            self.header(&mut b, i, 9, opts);
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
        b
    }

    /// Symlinks, devices and fifos.
    fn other_inode(&self, i: usize, opts: &Options) -> Vec<u8> {
        let n = &self.nodes[i];
        let mut b = Vec::with_capacity(64);
        match &n.entry.kind {
            Kind::Symlink(target) => {
                self.header(&mut b, i, if n.xattr == NO_XATTR { 3 } else { 10 }, opts);
                b.extend(1u32.to_le_bytes());
                b.extend((target.len() as u32).to_le_bytes());
                b.extend(target.as_bytes());
            }
            Kind::CharDev { .. } | Kind::BlockDev { .. } | Kind::Fifo => {
                // Basic inode types 4-7; their extended twins add 7 and an
                // xattr index.
                let basic = basic_type(&n.entry.kind);
                let t = if n.xattr == NO_XATTR {
                    basic
                } else {
                    basic + 7
                };
                self.header(&mut b, i, t, opts);
                b.extend(1u32.to_le_bytes());
                if let Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } =
                    &n.entry.kind
                {
                    b.extend(encode_dev(*major, *minor).to_le_bytes());
                }
            }
            Kind::Dir | Kind::File(_) => unreachable!("written by dir_inode and file_inode"),
            Kind::HardLink(_) => unreachable!("hard links are extra names, not nodes"),
        }
        if n.xattr != NO_XATTR {
            b.extend(n.xattr.to_le_bytes());
        }
        b
    }
}

/// Post-order: children before parents, in sorted-name order. Iterative
/// (an explicit stack of (directory, next child)), so a tree thousands of
/// directories deep costs heap, not the thread's stack.
fn post_order(root: usize, listing: &HashMap<usize, Vec<(&str, usize)>>, n: usize) -> Vec<usize> {
    let mut order = Vec::with_capacity(n);
    let mut visited = vec![false; n];
    visited[root] = true;
    let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
    while let Some((i, next)) = stack.last_mut() {
        let children = listing.get(i).map(Vec::as_slice).unwrap_or_default();
        // A hard link lists its target again; each inode is placed once.
        match children[*next..].iter().position(|(_, c)| !visited[*c]) {
            Some(k) => {
                let c = children[*next + k].1;
                *next += k + 1;
                visited[c] = true;
                stack.push((c, 0));
            }
            None => {
                order.push(*i);
                stack.pop();
            }
        }
    }
    order
}

/// The tables after the data, each written at the current position.
struct Tables<'w, W: Write> {
    w: &'w mut W,
    pos: u64,
}

impl<'w, W: Write> Tables<'w, W> {
    fn new(w: &'w mut W, pos: u64) -> Self {
        Tables { w, pos }
    }

    /// Bytes as they are; returns where they start.
    fn raw(&mut self, bytes: &[u8]) -> Result<u64> {
        let at = self.pos;
        self.w.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(at)
    }

    /// A table in metadata blocks, then its index; returns where the
    /// index starts (what the superblock points at).
    fn indexed(&mut self, level: i32, entries: &[u8]) -> Result<u64> {
        let (blocks, index) = indexed_table(level, entries, self.pos);
        self.raw(&blocks)?;
        self.raw(&index)
    }

    /// The xattr table: key/value metadata, then the id table, then its
    /// header and index; returns where the header starts.
    fn xattrs(&mut self, level: i32, sets: &[&Vec<(String, Vec<u8>)>]) -> Result<u64> {
        let kv_start = self.pos;
        let mut kv = MetaWriter::new(level);
        let mut id_entries = Vec::new();
        for set in sets {
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
        self.raw(&kv.finish())?;
        let (id_blocks, id_index) = indexed_table(level, &id_entries, self.pos);
        self.raw(&id_blocks)?;
        let mut header = Vec::with_capacity(16 + id_index.len());
        header.extend(kv_start.to_le_bytes());
        header.extend((sets.len() as u32).to_le_bytes());
        header.extend(0u32.to_le_bytes());
        header.extend(&id_index);
        self.raw(&header)
    }
}

/// What the superblock records, written last at offset 0.
struct Superblock {
    inode_count: u32,
    mtime: u32,
    block_size: u32,
    fragments: u32,
    xattrs: bool,
    ids: u16,
    root_ref: u64,
    bytes_used: u64,
    id_table_start: u64,
    xattr_table_start: u64,
    inode_table_start: u64,
    directory_table_start: u64,
    fragment_table_start: u64,
}

impl Superblock {
    fn to_bytes(&self) -> Vec<u8> {
        let mut sb = Vec::with_capacity(SUPERBLOCK_SIZE as usize);
        sb.extend(MAGIC.to_le_bytes());
        sb.extend(self.inode_count.to_le_bytes());
        sb.extend(self.mtime.to_le_bytes());
        sb.extend(self.block_size.to_le_bytes());
        sb.extend(self.fragments.to_le_bytes());
        sb.extend(ZSTD_ID.to_le_bytes());
        sb.extend((self.block_size.trailing_zeros() as u16).to_le_bytes());
        let flags = if self.xattrs { 0 } else { FLAG_NO_XATTRS };
        sb.extend(flags.to_le_bytes());
        sb.extend(self.ids.to_le_bytes());
        // Version 4.0.
        sb.extend(4u16.to_le_bytes());
        sb.extend(0u16.to_le_bytes());
        sb.extend(self.root_ref.to_le_bytes());
        sb.extend(self.bytes_used.to_le_bytes());
        sb.extend(self.id_table_start.to_le_bytes());
        sb.extend(self.xattr_table_start.to_le_bytes());
        sb.extend(self.inode_table_start.to_le_bytes());
        sb.extend(self.directory_table_start.to_le_bytes());
        sb.extend(self.fragment_table_start.to_le_bytes());
        // No export table.
        sb.extend(NONE_U64.to_le_bytes());
        sb
    }
}
