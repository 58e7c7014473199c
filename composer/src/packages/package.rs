//! The `.pak` package: a zstd-compressed tar whose first entries are
//! `.PAKINFO` (metadata) and `.BOM` (bill of materials), then the payload
//! in BOM order. `tar --zstd -tf` reads it.
//!
//! Writing is deterministic: entries sorted by path, mtime 0, numeric
//! owners from the BOM, no user or group names, fixed compression level.
//! Reading goes through one validating walker ([`walk`]) that `pak pkg
//! verify` and store extraction share, so what is checked cannot diverge.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::packages::bom::{self, Bom, Entry, FileDigest, Kind};
use crate::packages::pakinfo::PakInfo;

pub const INFO_NAME: &str = ".PAKINFO";
pub const BOM_NAME: &str = ".BOM";
const ZSTD_LEVEL: i32 = 6;
const INFO_MAX: u64 = 1 << 20;
const BOM_MAX: u64 = 64 << 20;

/// Where an entry's bytes come from when writing.
#[derive(Default)]
pub enum Content {
    #[default]
    None,
    Path(PathBuf),
    Bytes(Vec<u8>),
}

/// The most entries a package may hold. Debian's largest packages have
/// about 60,000; a million leaves room for any real one and bounds what a
/// hostile archive can make pak hold: each entry costs at most
/// [`BYTES_PER_ENTRY`] of memory while a package is made or unpacked, so
/// a refused one has cost under 512 MiB.
pub const MAX_ENTRIES: usize = 1_000_000;
/// What one entry costs in memory, at most, while a package is made or
/// unpacked: tests/bounded.rs measures about 330 bytes for a .deb of a
/// million directories (path, BOM entry and its place in the sorted map).
pub const BYTES_PER_ENTRY: usize = 512;

/// The error for a package with more than [`MAX_ENTRIES`] entries, with
/// their count when it is known (pak stops reading at the first too many).
pub fn too_many_entries(what: &str, count: Option<usize>) -> anyhow::Error {
    let count = match count {
        Some(n) => n.to_string(),
        None => format!("at least {}", MAX_ENTRIES + 1),
    };
    anyhow::anyhow!(
        "{what} has {count} entries, more than the {MAX_ENTRIES} a package may hold (pak keeps up to {BYTES_PER_ENTRY} bytes of memory per entry while it makes or unpacks one); split it into several packages"
    )
}

/// The entries of a package being made, by path, and the rules its bill
/// of materials follows. Every way a package is made (`pak pkg create`, a
/// `.deb` converted to a `.pak`, a `.deb` unpacked straight into the
/// store) goes through this one builder, so their BOMs cannot differ.
/// `C` is what the maker knows of a file's content.
pub struct Entries<C> {
    map: BTreeMap<String, (Entry, C)>,
}

impl<C> Default for Entries<C> {
    fn default() -> Self {
        Entries {
            map: BTreeMap::new(),
        }
    }
}

impl<C: Default> Entries<C> {
    /// Adds an entry; refuses a path that is not canonical, a path added
    /// twice, and more than [`MAX_ENTRIES`] entries (before they are held).
    pub fn add(&mut self, entry: Entry, content: C) -> Result<()> {
        bom::check_path(&entry.path)?;
        if self.map.len() >= MAX_ENTRIES {
            return Err(too_many_entries("the package", None));
        }
        if self.map.contains_key(&entry.path) {
            bail!("{} is added twice", entry.path);
        }
        self.map.insert(entry.path.clone(), (entry, content));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// In BOM order (sorted by path).
    pub fn iter(&self) -> impl Iterator<Item = &(Entry, C)> {
        self.map.values()
    }

    /// The bill of materials these entries make.
    pub fn into_bom(self) -> Bom {
        Bom {
            entries: self.map.into_values().map(|(e, _)| e).collect(),
        }
    }

    /// The text of that bill of materials, without a copy of the entries.
    pub fn render_bom(&self) -> String {
        bom::render(self.map.values().map(|(e, _)| e))
    }

    /// Fills in file digests (`digest` is called for each file, with its
    /// content and the digest to fill) and checks the package is
    /// well-formed before a byte of it is written: special files declared
    /// in `special_files`, implied parent directories added, every parent
    /// a directory, links inside the package.
    pub fn complete(
        &mut self,
        special_files: &[String],
        mut digest: impl FnMut(&str, &C, &mut FileDigest) -> Result<()>,
    ) -> Result<()> {
        let mut missing_parents = Vec::new();
        for path in self.map.keys() {
            if let Some((parent, _)) = path.rsplit_once('/')
                && !self.map.contains_key(parent)
                && missing_parents.last().is_none_or(|l: &String| l != parent)
            {
                missing_parents.push(parent.to_string());
            }
        }
        for (path, (entry, content)) in self.map.iter_mut() {
            if let Kind::File(d) = &mut entry.kind {
                digest(path, content, d)?;
            }
            if entry.is_special() && !special_files.iter().any(|s| s == path) {
                bail!(
                    "{path} is a device node or a setuid/setgid file; list it in `special_files` of .PAKINFO if the package really needs it"
                );
            }
        }
        // Directories a package implies but does not list (common in .deb
        // data tarballs that omit `./`) are added, root-owned, 0755.
        for parent in missing_parents {
            let mut cur = String::new();
            for comp in parent.split('/') {
                if !cur.is_empty() {
                    cur.push('/');
                }
                cur.push_str(comp);
                self.map.entry(cur.clone()).or_insert_with(|| {
                    (
                        Entry {
                            path: cur.clone(),
                            kind: Kind::Dir,
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                        },
                        C::default(),
                    )
                });
            }
        }
        let is_file = |p: &str| {
            matches!(
                self.map.get(p),
                Some((
                    Entry {
                        kind: Kind::File(_),
                        ..
                    },
                    _
                ))
            )
        };
        for (path, (entry, _)) in &self.map {
            match &entry.kind {
                Kind::HardLink(target) if !is_file(target) || target >= path => {
                    bail!(
                        "hard link {path} must point to a regular file that sorts before it, not {target}"
                    )
                }
                Kind::Symlink(target) if bom::link_destination(path, target).is_none() => {
                    bail!("symlink {path} -> {target} points outside the package root")
                }
                _ => {}
            }
            if let Some((parent, _)) = path.rsplit_once('/')
                && !matches!(
                    self.map.get(parent),
                    Some((
                        Entry {
                            kind: Kind::Dir,
                            ..
                        },
                        _
                    ))
                )
            {
                bail!(
                    "{path}: its parent {parent} is not a directory of the package (writing through a link is refused)"
                );
            }
        }
        Ok(())
    }

    /// Hard links found in an arbitrary order must point at the first
    /// path in sorted order; moves the content there where they do not.
    pub fn normalise_hardlinks(&mut self) {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (path, (e, _)) in &self.map {
            if let Kind::HardLink(target) = &e.kind {
                groups.entry(target.clone()).or_default().push(path.clone());
            }
        }
        for (first, links) in groups {
            let mut all = links.clone();
            all.push(first.clone());
            all.sort();
            let leader = all[0].clone();
            if leader == first {
                continue;
            }
            let (first_entry, content) = self.map.remove(&first).expect("target exists");
            let (leader_entry, _) = self.map.remove(&leader).expect("link exists");
            self.map.insert(
                leader.clone(),
                (
                    Entry {
                        path: leader.clone(),
                        ..first_entry.clone()
                    },
                    content,
                ),
            );
            self.map.insert(
                first.clone(),
                (
                    Entry {
                        path: first.clone(),
                        kind: Kind::HardLink(leader.clone()),
                        ..leader_entry
                    },
                    C::default(),
                ),
            );
            for l in links.iter().filter(|l| **l != leader) {
                if let Some((e, _)) = self.map.get_mut(l) {
                    e.kind = Kind::HardLink(leader.clone());
                }
            }
        }
    }
}

/// Collects entries, then writes a package.
pub struct Writer {
    info: PakInfo,
    entries: Entries<Content>,
}

impl Writer {
    pub fn new(info: PakInfo) -> Self {
        Writer::from_entries(info, Entries::default())
    }

    pub fn from_entries(info: PakInfo, entries: Entries<Content>) -> Self {
        Writer { info, entries }
    }

    /// Adds an entry. For files, size and sha256 in `entry.kind` are
    /// recomputed from the content, so callers may pass placeholders.
    pub fn add(&mut self, entry: Entry, content: Content) -> Result<()> {
        if self.entries.len() >= MAX_ENTRIES {
            return Err(too_many_entries(
                &format!("package {}", self.info.name),
                None,
            ));
        }
        self.entries.add(entry, content)
    }

    pub fn info_mut(&mut self) -> &mut PakInfo {
        &mut self.info
    }

    /// Writes `NAME-VERSION-ARCH.pak` into `out_dir`; returns its path.
    pub fn write(mut self, out_dir: &Path) -> Result<PathBuf> {
        self.complete()?;
        let out = out_dir.join(self.info.file_name());
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("cannot create {}", out_dir.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".pak-tmp-")
            .tempfile_in(out_dir)
            .with_context(|| format!("cannot write in {}", out_dir.display()))?;
        self.write_archive(tmp.as_file())?;
        tmp.as_file().sync_all()?;
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        tmp.persist(&out)
            .with_context(|| format!("cannot write {}", out.display()))?;
        Ok(out)
    }

    /// Fills in file hashes and checks the package is well-formed before a
    /// byte is written.
    fn complete(&mut self) -> Result<()> {
        self.entries
            .complete(&self.info.special_files, |path, content, d| {
                let (n, h) = match content {
                    Content::Bytes(b) => (b.len() as u64, hex::encode(Sha256::digest(b))),
                    Content::Path(p) => hash_file(p)?,
                    Content::None => bail!("file {path} has no content"),
                };
                d.size = n;
                d.sha256 = h;
                Ok(())
            })
    }

    fn write_archive(&self, file: &File) -> Result<()> {
        let enc = zstd::Encoder::new(BufWriter::new(file), ZSTD_LEVEL)?;
        let mut tar = tar::Builder::new(enc);
        tar.mode(tar::HeaderMode::Deterministic);
        let info = self.info.to_toml();
        append_bytes(&mut tar, INFO_NAME, info.as_bytes())?;
        append_bytes(&mut tar, BOM_NAME, self.entries.render_bom().as_bytes())?;
        for (entry, content) in self.entries.iter() {
            let mut h = tar::Header::new_gnu();
            h.set_mode(entry.mode);
            h.set_uid(entry.uid as u64);
            h.set_gid(entry.gid as u64);
            h.set_mtime(0);
            match &entry.kind {
                Kind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    tar.append_data(&mut h, &entry.path, io::empty())?;
                }
                Kind::File(FileDigest { size, .. }) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(*size);
                    match content {
                        Content::Bytes(b) => tar.append_data(&mut h, &entry.path, &b[..])?,
                        Content::Path(p) => {
                            let f = File::open(p)
                                .with_context(|| format!("cannot read {}", p.display()))?;
                            if f.metadata()?.len() != *size {
                                bail!("{} changed while it was being packaged", p.display());
                            }
                            tar.append_data(&mut h, &entry.path, f)?
                        }
                        Content::None => unreachable!("checked in complete()"),
                    }
                }
                Kind::Symlink(target) | Kind::HardLink(target) => {
                    let t = if matches!(entry.kind, Kind::Symlink(_)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    h.set_entry_type(t);
                    h.set_size(0);
                    tar.append_link(&mut h, &entry.path, target)?;
                }
                Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                    let t = if matches!(entry.kind, Kind::CharDev { .. }) {
                        tar::EntryType::Char
                    } else {
                        tar::EntryType::Block
                    };
                    h.set_entry_type(t);
                    h.set_device_major(*major)?;
                    h.set_device_minor(*minor)?;
                    h.set_size(0);
                    tar.append_data(&mut h, &entry.path, io::empty())?;
                }
                Kind::Fifo => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    h.set_size(0);
                    tar.append_data(&mut h, &entry.path, io::empty())?;
                }
            }
        }
        let enc = tar.into_inner()?;
        enc.finish()?.flush()?;
        Ok(())
    }
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(bytes.len() as u64);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, bytes)?;
    Ok(())
}

pub fn hash_file(p: &Path) -> Result<(u64, String)> {
    let mut f = File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", p.display()))?;
    Ok((n, hex::encode(h.finalize())))
}

/// `pak pkg create DIR`: DIR/.PAKINFO plus every other file under DIR.
/// Owners are fixed to root: what the packaging user happens to be must not
/// leak into the package.
pub fn create_from_dir(dir: &Path, out_dir: &Path) -> Result<PathBuf> {
    let info_path = dir.join(INFO_NAME);
    let text = std::fs::read_to_string(&info_path).with_context(|| {
        format!(
            "{} is missing: a package directory needs its metadata there",
            info_path.display()
        )
    })?;
    let info = PakInfo::from_toml(&text)
        .with_context(|| format!("{} is not valid", info_path.display()))?;
    let mut w = Writer::new(info);
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&abs)
            .with_context(|| format!("cannot list {}", abs.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let name = name
                .to_str()
                .with_context(|| format!("{:?} in {} is not UTF-8", name, abs.display()))?;
            if rel.is_empty() && name == INFO_NAME {
                continue;
            }
            let path = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let full = abs.join(name);
            let md = std::fs::symlink_metadata(&full)
                .with_context(|| format!("cannot read {path} in {}", dir.display()))?;
            let ft = md.file_type();
            let mode = md.mode() & 0o7777;
            let entry = |kind| Entry {
                path: path.clone(),
                kind,
                mode,
                uid: 0,
                gid: 0,
            };
            if ft.is_dir() {
                w.add(entry(Kind::Dir), Content::None)?;
                stack.push((full, path.clone()));
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&full)?;
                let target = target
                    .to_str()
                    .with_context(|| format!("link target of {path} is not UTF-8"))?;
                w.add(
                    Entry {
                        mode: 0o777,
                        ..entry(Kind::Symlink(target.into()))
                    },
                    Content::None,
                )?;
            } else if ft.is_file() {
                if md.nlink() > 1 {
                    if let Some(first) = inodes.get(&(md.dev(), md.ino())) {
                        w.add(entry(Kind::HardLink(first.clone())), Content::None)?;
                        continue;
                    }
                    inodes.insert((md.dev(), md.ino()), path.clone());
                }
                w.add(
                    entry(Kind::File(FileDigest {
                        size: 0,
                        sha256: String::new(),
                    })),
                    Content::Path(full),
                )?;
            } else if ft.is_char_device() || ft.is_block_device() {
                let (major, minor) = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
                let kind = if ft.is_char_device() {
                    Kind::CharDev { major, minor }
                } else {
                    Kind::BlockDev { major, minor }
                };
                w.add(entry(kind), Content::None)?;
            } else if ft.is_fifo() {
                w.add(entry(Kind::Fifo), Content::None)?;
            } else {
                bail!(
                    "{} is a socket; packages cannot hold sockets",
                    full.display()
                );
            }
        }
    }
    // Hard links found while walking in directory order must point at the
    // first path in sorted order; fix up where the walk met them otherwise.
    w.entries.normalise_hardlinks();
    w.write(out_dir)
}

/// A reader that refuses to produce more than `limit` bytes: the defence
/// against archives that decompress far beyond what they declare.
struct Capped<R> {
    inner: R,
    read: u64,
    limit: Rc<Cell<u64>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit.get() {
            return Err(io::Error::other(
                "the archive decompresses to more data than its bill of materials declares (a decompression bomb?)",
            ));
        }
        Ok(n)
    }
}

type Archive = tar::Archive<Capped<zstd::Decoder<'static, BufReader<File>>>>;

fn open_archive(path: &Path, limit: Rc<Cell<u64>>) -> Result<Archive> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let dec = zstd::Decoder::new(f)
        .with_context(|| format!("{} is not a zstd-compressed package", path.display()))?;
    Ok(tar::Archive::new(Capped {
        inner: dec,
        read: 0,
        limit,
    }))
}

fn read_small<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str, max: u64) -> Result<String> {
    let p = entry.path()?.to_string_lossy().into_owned();
    if p != name {
        bail!("expected {name} here but found {p:?}; a .pak starts with .PAKINFO then .BOM");
    }
    if entry.header().entry_type() != tar::EntryType::Regular || entry.size() > max {
        bail!("{name} is not a regular file of at most {max} bytes");
    }
    let mut s = String::new();
    entry
        .read_to_string(&mut s)
        .with_context(|| format!("{name} is not UTF-8 text"))?;
    Ok(s)
}

/// Reads only the metadata at the head of a package.
pub fn read_info(path: &Path) -> Result<PakInfo> {
    let limit = Rc::new(Cell::new(INFO_MAX + 4096));
    let mut ar = open_archive(path, limit)?;
    let mut entries = ar
        .entries()
        .with_context(|| format!("{} is not a tar archive", path.display()))?;
    let mut first = entries
        .next()
        .with_context(|| format!("{} is empty", path.display()))?
        .with_context(|| {
            format!(
                "{} is damaged or truncated: its first entry cannot be read",
                path.display()
            )
        })?;
    let text = read_small(&mut first, INFO_NAME, INFO_MAX)
        .with_context(|| format!("{} is not a package", path.display()))?;
    PakInfo::from_toml(&text)
        .with_context(|| format!("{}: its .PAKINFO is not valid", path.display()))
}

/// What the walker hands to a sink for each validated entry.
pub trait Sink {
    /// `content` is `Some` for files; the walker checks size and sha256 of
    /// what the sink reads (and reads the rest itself if the sink stops).
    fn entry(&mut self, entry: &Entry, content: Option<&mut dyn Read>) -> Result<()>;
}

/// A sink that only lets the walker check.
pub struct Check;

impl Sink for Check {
    fn entry(&mut self, _: &Entry, _: Option<&mut dyn Read>) -> Result<()> {
        Ok(())
    }
}

struct Hashing<'a, R> {
    inner: &'a mut R,
    hash: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// Reads a whole package, checking every payload entry against the BOM and
/// the package's safety rules, and hands each to `sink` in order. Any
/// disagreement stops the walk with an error naming the entry.
pub fn walk(path: &Path, sink: &mut dyn Sink) -> Result<(PakInfo, Bom)> {
    walk_inner(path, sink).with_context(|| format!("{} is refused", path.display()))
}

fn walk_inner(path: &Path, sink: &mut dyn Sink) -> Result<(PakInfo, Bom)> {
    let limit = Rc::new(Cell::new(INFO_MAX + BOM_MAX + 8192));
    let mut ar = open_archive(path, limit.clone())?;
    let mut entries = ar.entries().context("not a tar archive")?;
    let mut next =
        || -> Result<Option<tar::Entry<'_, _>>> { entries.next().transpose().map_err(Into::into) };
    let mut first = next()?.context("the archive is empty")?;
    let info = PakInfo::from_toml(&read_small(&mut first, INFO_NAME, INFO_MAX)?)
        .context("its .PAKINFO is not valid")?;
    drop(first);
    let mut second = next()?.context("the archive has no .BOM")?;
    let bom = Bom::parse(&read_small(&mut second, BOM_NAME, BOM_MAX)?)?;
    drop(second);
    // Every header block, long-name block and padding is at most a few KiB
    // per entry; file data must match the BOM exactly.
    limit.set(
        limit
            .get()
            .saturating_add(bom.payload_size())
            .saturating_add(8192 * (bom.entries.len() as u64 + 2)),
    );

    let special: HashSet<&str> = info.special_files.iter().map(String::as_str).collect();
    let mut seen_files: HashSet<&str> = HashSet::new();
    let mut expected = bom.entries.iter();
    loop {
        let Some(mut te) = next()? else { break };
        let raw = te.path()?.to_string_lossy().into_owned();
        let p = raw.strip_suffix('/').unwrap_or(&raw).to_string();
        bom::check_path(&p)?;
        let want = expected
            .next()
            .with_context(|| format!("entry {p:?} is not in the bill of materials"))?;
        if want.path != p {
            bail!(
                "entry {p:?} is out of place: the bill of materials lists {:?} next",
                want.path
            );
        }
        check_entry(&te, want, &bom, &special, &seen_files)?;
        if let Kind::File(FileDigest { size, sha256 }) = &want.kind {
            let mut hr = Hashing {
                inner: &mut te,
                hash: Sha256::new(),
                n: 0,
            };
            sink.entry(want, Some(&mut hr))?;
            io::copy(&mut hr, &mut io::sink())?;
            if hr.n != *size || hex::encode(hr.hash.finalize()) != *sha256 {
                bail!(
                    "{p}: content disagrees with the bill of materials (size or sha256); the package is corrupt or was tampered with"
                );
            }
            seen_files.insert(&want.path);
        } else {
            sink.entry(want, None)?;
        }
    }
    if let Some(missing) = expected.next() {
        bail!(
            "{} is listed in the bill of materials but missing from the archive",
            missing.path
        );
    }
    Ok((info, bom))
}

fn check_entry<R: Read>(
    te: &tar::Entry<'_, R>,
    want: &Entry,
    bom: &Bom,
    special: &HashSet<&str>,
    seen_files: &HashSet<&str>,
) -> Result<()> {
    let p = &want.path;
    let h = te.header();
    let et = h.entry_type();
    let type_ok = match &want.kind {
        Kind::Dir => et == tar::EntryType::Directory,
        Kind::File(FileDigest { size, .. }) => {
            (et == tar::EntryType::Regular || et == tar::EntryType::Continuous)
                && te.size() == *size
        }
        Kind::Symlink(_) => et == tar::EntryType::Symlink,
        Kind::HardLink(_) => et == tar::EntryType::Link,
        Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
            let t = if matches!(want.kind, Kind::CharDev { .. }) {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            et == t && h.device_major()? == Some(*major) && h.device_minor()? == Some(*minor)
        }
        Kind::Fifo => et == tar::EntryType::Fifo,
    };
    if !type_ok {
        bail!("{p}: type or size disagrees with the bill of materials");
    }
    if h.mode()? & 0o7777 != want.mode || h.uid()? != want.uid as u64 || h.gid()? != want.gid as u64
    {
        bail!("{p}: mode or owner disagrees with the bill of materials");
    }
    if want.is_special() && !special.contains(p.as_str()) {
        bail!(
            "{p} is a device node or setuid/setgid file the package does not declare in special_files"
        );
    }
    if let Some((parent, _)) = p.rsplit_once('/') {
        match bom.get(parent) {
            Some(Entry {
                kind: Kind::Dir, ..
            }) => {}
            _ => bail!(
                "{p}: its parent {parent} is not a directory of the package (writing through a link is refused)"
            ),
        }
    }
    match &want.kind {
        Kind::Symlink(target) => {
            let link = te.link_name()?.map(|l| l.to_string_lossy().into_owned());
            if link.as_deref() != Some(target.as_str()) {
                bail!("{p}: link target disagrees with the bill of materials");
            }
            if bom::link_destination(p, target).is_none() {
                bail!("{p}: symlink to {target} escapes the package root");
            }
        }
        Kind::HardLink(target) => {
            let link = te.link_name()?.map(|l| l.to_string_lossy().into_owned());
            if link.as_deref() != Some(target.as_str()) {
                bail!("{p}: hard link target disagrees with the bill of materials");
            }
            bom::check_path(target)
                .with_context(|| format!("{p}: hard link escapes the package root"))?;
            if !seen_files.contains(target.as_str()) {
                bail!("{p}: hard link to {target}, which is not an earlier file of this package");
            }
        }
        _ => {}
    }
    Ok(())
}

/// What `pak pkg verify` reports.
#[derive(Debug)]
pub struct Verified {
    pub info: PakInfo,
    pub entries: usize,
    pub payload_bytes: u64,
}

pub fn verify(path: &Path) -> Result<Verified> {
    let (info, bom) = walk(path, &mut Check)?;
    Ok(Verified {
        info,
        entries: bom.entries.len(),
        payload_bytes: bom.payload_size(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> PakInfo {
        PakInfo::from_toml("name = \"hello\"\nversion = \"1.0-1\"\narch = \"any\"\n").unwrap()
    }

    fn sample_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(INFO_NAME), info().to_toml()).unwrap();
        std::fs::create_dir_all(d.path().join("usr/bin")).unwrap();
        std::fs::write(d.path().join("usr/bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
        std::os::unix::fs::symlink("hello", d.path().join("usr/bin/hi")).unwrap();
        std::fs::hard_link(
            d.path().join("usr/bin/hello"),
            d.path().join("usr/bin/a-hello"),
        )
        .unwrap();
        d
    }

    #[test]
    fn create_is_deterministic_and_verifies() {
        let d = sample_dir();
        let o1 = tempfile::tempdir().unwrap();
        let o2 = tempfile::tempdir().unwrap();
        let p1 = create_from_dir(d.path(), o1.path()).unwrap();
        let p2 = create_from_dir(d.path(), o2.path()).unwrap();
        assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
        assert_eq!(p1.file_name().unwrap(), "hello-1.0-1-any.pak");
        let v = verify(&p1).unwrap();
        assert_eq!(v.info.name, "hello");
        let (_, bom) = walk(&p1, &mut Check).unwrap();
        // The sorted-first path of the hard-link pair carries the content.
        assert!(matches!(
            bom.get("usr/bin/a-hello").unwrap().kind,
            Kind::File(_)
        ));
        assert_eq!(
            bom.get("usr/bin/hello").unwrap().kind,
            Kind::HardLink("usr/bin/a-hello".into())
        );
        assert_eq!(read_info(&p1).unwrap(), info());
    }

    #[test]
    fn tampering_is_detected() {
        let d = sample_dir();
        let o = tempfile::tempdir().unwrap();
        let p = create_from_dir(d.path(), o.path()).unwrap();
        // Recompress the same tar with one payload byte flipped.
        let raw = zstd::decode_all(File::open(&p).unwrap()).unwrap();
        let pos = raw.windows(10).position(|w| w == b"echo hello").unwrap();
        let mut bad = raw.clone();
        bad[pos] = b'j';
        std::fs::write(&p, zstd::encode_all(&bad[..], 3).unwrap()).unwrap();
        let err = format!("{:#}", verify(&p).unwrap_err());
        assert!(err.contains("disagrees"), "{err}");
    }

    #[test]
    fn undeclared_setuid_is_refused_at_create() {
        let d = sample_dir();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            d.path().join("usr/bin/hello"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        let o = tempfile::tempdir().unwrap();
        let err = create_from_dir(d.path(), o.path()).unwrap_err().to_string();
        assert!(err.contains("special_files"), "{err}");
        assert_eq!(
            std::fs::read_dir(o.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }
}
