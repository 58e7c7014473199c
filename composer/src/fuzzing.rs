//! Fuzz targets: one function per reader of untrusted input, each taking
//! the fuzzer's bytes. The `fuzz/` crate (cargo fuzz, libFuzzer) wraps each
//! in a `fuzz_target!`, and `tests/fuzz_smoke.rs` replays every corpus and
//! regression input through the same functions in the ordinary test run,
//! so a reader that panics on a known input fails `cargo test`.
//!
//! A target returns nothing: readers may refuse their input (that is their
//! job); what must not happen is a panic, a hang, or an allocation beyond
//! what the input can account for. Where a reader's output is written back
//! by pak (a lock, a BOM, a loader entry name), the target also checks
//! that what was read survives a round trip: a reader that accepts what
//! its writer cannot reproduce would corrupt state silently.
//!
//! Disk structures (FAT, GPT) are tens of MiB of mostly zeros, too large
//! for a fuzzer to mutate; their targets read a [`SparseDisk`]: a declared
//! size and the non-zero extents, which is what the seeds are made from.

use std::collections::BTreeMap;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::OnceLock;

use crate::packages::bom::Bom;
use crate::packages::pakinfo::PakInfo;
use crate::sources::key::{PublicKey, SecretKey};

/// A fuzz target: its name (the directory of its corpus) and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order the campaign script runs them.
pub const TARGETS: &[Target] = &[
    ("pakfile", pakfile),
    ("lock", lock),
    ("pakinfo", pakinfo),
    ("bom", bom),
    ("pak", pak),
    ("repo_index", repo_index),
    ("channel", channel),
    ("deb", deb),
    ("debian_packages", debian_packages),
    ("squashfs", squashfs),
    ("fat", fat),
    ("gpt", gpt),
    ("boot_names", boot_names),
    ("generation", generation),
    ("kmod", kmod),
    ("cpio", cpio),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A fixed signing key, so a target can sign what the fuzzer made and
/// reach the code behind the signature check.
fn key() -> &'static SecretKey {
    static KEY: OnceLock<SecretKey> = OnceLock::new();
    KEY.get_or_init(|| {
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let mut f = tempfile::NamedTempFile::new().expect("a temporary file for the key");
        write!(f, "pak secret key fuzz\n{body}\n").expect("write the key");
        SecretKey::read(f.path()).expect("the fuzzing key reads back")
    })
}

fn public_key() -> PublicKey {
    key().public()
}

/// Splits `data` at its first byte: targets whose input may be signed or
/// compressed by the harness use it to pick how.
fn mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}

pub fn pakfile(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if let Ok(p) = crate::spec::pakfile::Pakfile::parse(t) {
        let _ = p.requirements();
        for f in p.files.keys() {
            let _ = p.resolve_path(f);
        }
    }
    let _ = crate::spec::pakfile::parse_mode(t);
    let _ = crate::spec::pakfile::check_ssh_key(t);
}

pub fn lock(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let Ok(lock) = crate::lock::Lock::parse(t) else {
        return;
    };
    let again = crate::lock::Lock::parse(&lock.to_toml())
        .expect("a lock pak read must read back after pak writes it");
    assert_eq!(
        again.to_toml(),
        lock.to_toml(),
        "a lock changed on a round trip"
    );
    for p in &lock.packages {
        let _ = p.store_key();
        let _ = p.to_candidate();
    }
    let _ = lock.changes_from(Some(&again));
}

pub fn pakinfo(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let Ok(info) = PakInfo::from_toml(t) else {
        return;
    };
    let _ = info.file_name();
    let again = PakInfo::from_toml(&info.to_toml())
        .expect("a .PAKINFO pak read must read back after pak writes it");
    assert_eq!(again, info, "a .PAKINFO changed on a round trip");
}

pub fn bom(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let Ok(bom) = Bom::parse(t) else { return };
    let _ = bom.payload_size();
    for e in &bom.entries {
        let _ = bom.get(&e.path);
        let _ = e.is_special();
        if let crate::packages::bom::Kind::Symlink(target) = &e.kind {
            let _ = crate::packages::bom::link_destination(&e.path, target);
        }
    }
    let again = Bom::parse(&bom.render()).expect("a BOM pak read must read back after rendering");
    assert_eq!(again, bom, "a BOM changed on a round trip");
}

/// A `.pak`: verified, then extracted into a store in a temporary
/// directory. Mode byte odd: the rest is a tar the harness compresses, so
/// the fuzzer works on the archive's structure rather than on zstd's.
pub fn pak(data: &[u8]) {
    let Some((m, rest)) = mode(data) else { return };
    let bytes = if m & 1 == 1 {
        zstd::encode_all(rest, 1).expect("zstd compresses in memory")
    } else {
        rest.to_vec()
    };
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path();
    let file = dir.join("in.pak");
    std::fs::write(&file, &bytes).expect("write input");
    let _ = crate::packages::package::read_info(&file);
    if crate::packages::package::verify(&file).is_ok() {
        let root = crate::state::StateDir::new(dir.join("root"));
        let store = crate::store::Store::open(&root).expect("a store in scratch");
        let entry = store
            .install(&file, "fuzz")
            .expect("a package that verifies must extract");
        let _ = entry.bom().expect("an installed BOM reads back");
        let _ = entry.info().expect("an installed .PAKINFO reads back");
    }
    remove_tree(dir);
}

/// Extraction keeps directory modes, some without write permission.
fn remove_tree(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Splits `rest` into a signature and a signed file: a 2-byte length, then
/// that many bytes of signature.
fn split_sig(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let n = (u16::from_le_bytes(*len) as usize).min(rest.len());
    Some(rest.split_at(n))
}

/// A repository's `index` and `index.sig`. Mode byte odd: the harness
/// signs the rest with the trusted key, reaching the index parser; even: a
/// signature and an index as they came.
pub fn repo_index(data: &[u8]) {
    let Some((m, rest)) = mode(data) else { return };
    let (sig, index) = if m & 1 == 1 {
        (key().sign(rest).into_bytes(), rest)
    } else {
        let Some((sig, index)) = split_sig(rest) else {
            return;
        };
        (sig.to_vec(), index)
    };
    let _ = crate::sources::repo::parse_signed_index("fuzz", &public_key(), index, sig);
}

/// A channel's `channel.toml`. Mode byte odd: the harness seals the rest
/// with the trusted key; even: the file as it came.
pub fn channel(data: &[u8]) {
    let Some((m, rest)) = mode(data) else { return };
    let sealed;
    let bytes = if m & 1 == 1 {
        let Some(body) = text(rest) else { return };
        sealed = crate::channel::seal(body, key());
        sealed.as_bytes()
    } else {
        rest
    };
    let Ok(ch) = crate::channel::verify("fuzz", bytes, &public_key()) else {
        return;
    };
    let _ = crate::channel::check_fresh("fuzz", &ch, 1 << 31, 1, "state");
    for g in &ch.generations {
        let pct = ch.rollout_of(g.number);
        let _ = crate::channel::in_rollout(Some("machine"), g.number, pct);
        let _ = crate::channel::generation_url("/srv/channel", g);
    }
    let again: crate::channel::Channel =
        toml::from_str(&ch.to_toml()).expect("channel metadata pak read must read back");
    assert_eq!(again, ch, "channel metadata changed on a round trip");
}

/// A `.deb`, converted to a `.pak`; what the conversion writes must then
/// verify as any package pak fetches.
pub fn deb(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    if let Ok(pak) = crate::packages::deb::convert(data, dir.path()) {
        crate::packages::package::verify(&pak).expect("a converted .deb must verify");
    }
}

/// Debian `Packages` lists and control stanzas.
pub fn debian_packages(data: &[u8]) {
    let Some(t) = text(data) else { return };
    for stanza in crate::packages::debian::parse_stanzas(t) {
        let _ = crate::packages::debian::to_pakinfo(&stanza, "0", Vec::new());
    }
    for c in crate::sources::apt::parse_packages(t, "debian", "main", Some("20250101T000000Z")) {
        let _ = c.info.file_name();
    }
    let _ = crate::packages::debian::map_relations(t);
    let _ = crate::packages::debian::map_arch(t);
}

/// A squashfs generation: opened, walked, and its paths read.
pub fn squashfs(data: &[u8]) {
    use crate::image::squashfs::Reader;
    let Ok(mut r) = Reader::open(Cursor::new(data), 0) else {
        return;
    };
    let _ = r.bytes_used();
    let _ = r.mtime();
    let walked = r.walk();
    for (path, fields) in walked.iter().take(64) {
        if fields.is_ok() {
            let _ = r.stat(path);
            let _ = r.list(path);
            let _ = r.read(path);
        }
    }
    for at in [0, 96, data.len() as u64 / 2, data.len() as u64] {
        let _ = r.place_of(at);
    }
    let _ = crate::image::generation::seal_intact(&mut Cursor::new(data), 0);
}

/// A disk of a declared size of which only some extents are stored; the
/// rest reads as zeros. Writes past the end fail, as on a block device.
#[derive(Debug, Clone, Default)]
pub struct SparseDisk {
    len: u64,
    /// Extents by start, non-overlapping.
    sectors: BTreeMap<u64, [u8; 512]>,
    pos: u64,
}

/// The largest disk a fuzz input may declare: an ESP is far smaller, and a
/// FAT of this size is read whole in 32 MiB at most.
const SPARSE_MAX: u64 = 4 << 30;

impl SparseDisk {
    /// `data`: the size (8 bytes, little-endian), then extents, each a
    /// 4-byte position in 512-byte sectors, a 2-byte length and the bytes.
    pub fn parse(data: &[u8]) -> SparseDisk {
        let (len, mut rest) = match data.split_first_chunk::<8>() {
            Some((l, r)) => (u64::from_le_bytes(*l).min(SPARSE_MAX), r),
            None => (0, &[][..]),
        };
        let mut d = SparseDisk {
            len,
            ..SparseDisk::default()
        };
        while let Some((head, r)) = rest.split_first_chunk::<6>() {
            let at = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as u64 * 512;
            let n = (u16::from_le_bytes([head[4], head[5]]) as usize).min(r.len());
            let (bytes, r) = r.split_at(n);
            d.pos = at;
            let _ = d.write_all(bytes);
            rest = r;
        }
        d.pos = 0;
        d
    }
}

impl Read for SparseDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let mut done = 0;
        while done < n {
            let at = self.pos + done as u64;
            let (sector, off) = (at / 512, (at % 512) as usize);
            let k = (512 - off).min(n - done);
            match self.sectors.get(&sector) {
                Some(s) => buf[done..done + k].copy_from_slice(&s[off..off + k]),
                None => buf[done..done + k].fill(0),
            }
            done += k;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SparseDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos.saturating_add(buf.len() as u64) > self.len {
            return Err(io::Error::other("write past the end of the disk"));
        }
        let mut done = 0;
        while done < buf.len() {
            let at = self.pos + done as u64;
            let (sector, off) = (at / 512, (at % 512) as usize);
            let k = (512 - off).min(buf.len() - done);
            let s = self.sectors.entry(sector).or_insert([0; 512]);
            s[off..off + k].copy_from_slice(&buf[done..done + k]);
            done += k;
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for SparseDisk {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

/// An ESP: read, then edited as `pak system switch` edits it.
pub fn fat(data: &[u8]) {
    use crate::disk::fat::Volume;
    let Ok(mut v) = Volume::open(SparseDisk::parse(data), 0) else {
        return;
    };
    let _ = v.free_bytes();
    let _ = v.footprint(4096);
    let mut files = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(d) = dirs.pop() {
        let Ok(list) = v.list(&d) else { continue };
        for e in list.into_iter().take(32) {
            let path = if d.is_empty() {
                e.name.clone()
            } else {
                format!("{d}/{}", e.name)
            };
            if e.is_dir && dirs.len() < 16 && path.len() < 200 {
                dirs.push(path);
            } else if !e.is_dir {
                files.push(path);
            }
        }
    }
    for f in files.iter().take(16) {
        let _ = v.find(f);
        let _ = v.read(f);
    }
    let _ = v.create("loader/entries/pak-a-2+3.conf", b"title fuzz\n");
    let _ = v.create_dir("EFI/pak");
    if let Some(f) = files.first() {
        let _ = v.rename(f, "loader/entries/pak-b-1.conf");
        let _ = v.replace("loader/entries/pak-a-2+3.conf", f);
    }
    if let Some(f) = files.get(1) {
        let _ = v.remove(f);
    }
    let _ = v.reclaim_lost_clusters();
    let _ = v.free_bytes();
}

/// A disk's partition table. Mode byte odd: the harness first makes both
/// checksums right, so the fuzzer reaches what the header and entries say.
pub fn gpt(data: &[u8]) {
    let Some((m, rest)) = mode(data) else { return };
    let mut d = SparseDisk::parse(rest);
    if m & 1 == 1 {
        fix_gpt_checksums(&mut d);
    }
    let _ = crate::disk::gpt::probe(&mut d);
    if let Ok(parts) = crate::disk::gpt::read(&mut d) {
        for p in parts {
            let _ = (p.offset(), p.size());
        }
    }
}

fn fix_gpt_checksums(d: &mut SparseDisk) {
    let mut h = [0u8; 92];
    if d.seek(SeekFrom::Start(512)).is_err() || d.read_exact(&mut h).is_err() {
        return;
    }
    let lba = u64::from_le_bytes(h[72..80].try_into().expect("8 bytes"));
    let n = u32::from_le_bytes(h[80..84].try_into().expect("4 bytes")) as u64;
    let size = u32::from_le_bytes(h[84..88].try_into().expect("4 bytes")) as u64;
    let mut entries = vec![0u8; (n * size).min(1 << 20) as usize];
    let read = lba.checked_mul(512).is_some_and(|at| {
        d.seek(SeekFrom::Start(at)).is_ok() && d.read_exact(&mut entries).is_ok()
    });
    if read {
        h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
    }
    h[16..20].fill(0);
    let crc = crc32fast::hash(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    let _ = d.seek(SeekFrom::Start(512)).and_then(|_| d.write_all(&h));
}

/// Names and records the initramfs reads at boot: loader entry names and
/// their `version`, the kernel command line, the data partition's check
/// record.
pub fn boot_names(data: &[u8]) {
    use pak_boot::bls::EntryName;
    let Some(t) = text(data) else { return };
    if let Some(name) = EntryName::parse(t) {
        let _ = name.state();
        let _ = name.good();
        assert_eq!(
            EntryName::parse(&name.to_string()),
            Some(name.clone()),
            "a loader entry name changed on a round trip"
        );
    }
    let _ = pak_boot::bls::priority(t);
    let _ = pak_boot::cmdline::parse(t);
    if let Some(r) = pak_boot::data::CheckRecord::parse(t) {
        let _ = pak_boot::data::CheckRecord::parse(&r.render());
    }
}

/// A generation's `generation.toml`.
pub fn generation(data: &[u8]) {
    use crate::image::generation::GenerationMeta;
    let Some(t) = text(data) else { return };
    let Ok(meta) = GenerationMeta::parse(t) else {
        return;
    };
    let again = GenerationMeta::parse(&meta.to_toml())
        .expect("a generation.toml pak read must read back after pak writes it");
    assert_eq!(again, meta, "a generation.toml changed on a round trip");
}

/// A kernel module's `.modinfo` section (the ELF comes from a package).
pub fn kmod(data: &[u8]) {
    let _ = crate::image::kmod::modinfo(data);
}

/// The initramfs archive pak writes: pak has no cpio reader, so the
/// target feeds the writer names and contents the fuzzer picks and checks
/// that every header is where the format puts it.
pub fn cpio(data: &[u8]) {
    use crate::image::cpio::Cpio;
    let mut c = Cpio::default();
    let mut names = Vec::new();
    for (i, part) in data.split(|b| *b == 0).take(64).enumerate() {
        let s = String::from_utf8_lossy(part);
        let (name, body) = s.split_once('=').unwrap_or((&s, ""));
        match i % 3 {
            0 => c.dir(name),
            1 => c.file(name, 0o644, body.as_bytes()),
            _ => c.symlink(name, body),
        }
        names.push(name.to_string());
    }
    let out = c.finish();
    assert_eq!(out.len() % 512, 0, "a cpio archive is padded to 512 bytes");
    let mut at = 0;
    let mut seen = 0;
    loop {
        assert!(at + 110 <= out.len(), "cpio header {seen} is past the end");
        assert_eq!(
            &out[at..at + 6],
            b"070701",
            "cpio header {seen} has no magic"
        );
        let field = |i: usize| {
            let f = std::str::from_utf8(&out[at + 6 + 8 * i..at + 14 + 8 * i]).expect("hex");
            usize::from_str_radix(f, 16).expect("a hex field")
        };
        let (size, namesize) = (field(6), field(11));
        let name = &out[at + 110..at + 110 + namesize - 1];
        if name == b"TRAILER!!!" {
            break;
        }
        at = (at + 110 + namesize).next_multiple_of(4);
        at = (at + size).next_multiple_of(4);
        seen += 1;
    }
    assert!(seen <= names.len(), "more cpio entries than were written");
}

/// Seed inputs made by pak's own writers, for targets whose real inputs
/// are archives or disk images: `(target, name, bytes)`. The campaign
/// script adds the repository's own text files and whatever real packages
/// the machine has.
pub fn seeds() -> anyhow::Result<Vec<(&'static str, String, Vec<u8>)>> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir()?;
    let work = dir.path();

    // A package with a file, an empty file, a symlink and directories.
    let src = work.join("src");
    std::fs::create_dir_all(src.join("usr/bin"))?;
    std::fs::write(
        src.join(crate::packages::package::INFO_NAME),
        "name = \"seed\"\nversion = \"1.0-1\"\narch = \"any\"\n",
    )?;
    std::fs::write(src.join("usr/bin/hello"), b"#!/bin/sh\necho hello\n")?;
    std::os::unix::fs::symlink("hello", src.join("usr/bin/hi"))?;
    std::fs::write(src.join("usr/empty"), b"")?;
    let pak_path = crate::packages::package::create_from_dir(&src, &work.join("out"))?;
    let pak_bytes = std::fs::read(&pak_path)?;
    let tar = zstd::decode_all(&pak_bytes[..])?;
    out.push(("pak", "seed-zstd".into(), [&[0u8][..], &pak_bytes].concat()));
    out.push(("pak", "seed-tar".into(), [&[1u8][..], &tar].concat()));
    let (info, bom) =
        crate::packages::package::walk(&pak_path, &mut crate::packages::package::Check)?;
    out.push(("pakinfo", "seed".into(), info.to_toml().into_bytes()));
    out.push(("bom", "seed".into(), bom.render().into_bytes()));

    // A repository index of that package, signed and as the harness signs.
    let repo = work.join("repo");
    std::fs::create_dir_all(&repo)?;
    std::fs::copy(&pak_path, repo.join("seed-1.0-1-any.pak"))?;
    crate::sources::repo::write_index(&repo, key(), 30, Some(1))?;
    let index = std::fs::read(repo.join(crate::sources::repo::INDEX))?;
    let sig = std::fs::read(repo.join(crate::sources::repo::SIG))?;
    out.push((
        "repo_index",
        "seed-harness-signed".into(),
        [&[1u8][..], &index].concat(),
    ));
    let mut signed = vec![0u8];
    signed.extend_from_slice(&(sig.len() as u16).to_le_bytes());
    signed.extend_from_slice(&sig);
    signed.extend_from_slice(&index);
    out.push(("repo_index", "seed-signed".into(), signed));

    // A `.deb` in each compression Debian uses.
    let control = b"Package: hi\nVersion: 1:2-3\nArchitecture: amd64\nDepends: libc6 (>= 2.34), foo | bar\nProvides: hello (= 1)\nDescription: says hi\n more\n";
    let control_tar = tar_of(&[
        ("./", b"", 0o755),
        ("./control", control, 0o644),
        ("./postinst", b"#!/bin/sh\n", 0o755),
    ])?;
    let data_tar = tar_of(&[
        ("./", b"", 0o755),
        ("./usr/", b"", 0o755),
        ("./usr/bin/", b"", 0o755),
        ("./usr/bin/hi", b"#!/bin/sh\necho hi\n", 0o755),
    ])?;
    for ext in ["gz", "xz", "zst", ""] {
        let (c, d) = (compress(ext, &control_tar)?, compress(ext, &data_tar)?);
        let dot = if ext.is_empty() { "" } else { "." };
        let deb = ar_of(&[
            ("debian-binary", b"2.0\n"),
            (&format!("control.tar{dot}{ext}"), &c),
            (&format!("data.tar{dot}{ext}"), &d),
        ]);
        out.push((
            "deb",
            format!("seed-{}", if ext.is_empty() { "tar" } else { ext }),
            deb,
        ));
    }
    out.push(("debian_packages", "seed-control".into(), control.to_vec()));

    // A squashfs generation of a few files.
    use crate::image::squashfs::{Entry, Kind, Source, Tree};
    let node = |kind, mode| Entry {
        kind,
        mode,
        uid: 0,
        gid: 0,
        xattrs: Vec::new(),
    };
    let mut tree = Tree::default();
    tree.entries.insert(String::new(), node(Kind::Dir, 0o755));
    tree.entries.insert("usr".into(), node(Kind::Dir, 0o755));
    tree.entries
        .insert("usr/lib".into(), node(Kind::Dir, 0o755));
    tree.entries.insert(
        "usr/lib/small".into(),
        node(Kind::File(Source::Bytes(b"hello\n".to_vec())), 0o644),
    );
    tree.entries.insert(
        "usr/lib/big".into(),
        node(
            Kind::File(Source::Bytes(
                (0..20000u32).map(|i| (i % 251) as u8).collect(),
            )),
            0o644,
        ),
    );
    tree.entries.insert(
        "usr/link".into(),
        node(Kind::Symlink("lib/small".into()), 0o777),
    );
    let sqfs = work.join("g.sqfs");
    let opts = crate::image::squashfs::Options {
        block_size: 4096,
        level: 3,
        ..Default::default()
    };
    crate::image::squashfs::write(&tree, &sqfs, &opts)?;
    out.push(("squashfs", "seed".into(), std::fs::read(&sqfs)?));

    // An ESP as pak writes it, and a disk's GPT.
    let esp_len = 40 << 20;
    let mut esp = SparseDisk {
        len: esp_len,
        ..SparseDisk::default()
    };
    let files = vec![
        (
            "EFI/BOOT/BOOTX64.EFI".to_string(),
            b"MZ boot loader".to_vec(),
        ),
        (
            "loader/loader.conf".to_string(),
            pak_boot::bls::LOADER_CONF.as_bytes().to_vec(),
        ),
        (
            "loader/entries/pak-a-1.conf".to_string(),
            b"title pak\nversion 1\n".to_vec(),
        ),
        ("pak/a/initrd.img".to_string(), vec![0x42; 3000]),
    ];
    crate::disk::fat::write(&mut esp, 0, esp_len, "ESP", &files)?;
    out.push(("fat", "seed".into(), esp.encode_self()));
    let disk_len: u64 = 64 << 20;
    let mut disk = SparseDisk {
        len: disk_len,
        ..SparseDisk::default()
    };
    let part = |label: &str, type_guid: &str, first_lba, last_lba| crate::disk::gpt::Partition {
        label: label.into(),
        type_guid: type_guid.into(),
        guid: crate::disk::gpt::derived_guid(label),
        first_lba,
        last_lba,
    };
    let parts = [
        part("esp", crate::disk::gpt::ESP_TYPE, 2048, 20479),
        part("root-a", crate::disk::gpt::ROOT_X86_64_TYPE, 20480, 100000),
    ];
    crate::disk::gpt::write(
        &mut disk,
        disk_len / 512,
        &crate::disk::gpt::derived_guid("disk"),
        &parts,
    )?;
    out.push((
        "gpt",
        "seed".into(),
        [&[0u8][..], &disk.encode_self()].concat(),
    ));
    out.push((
        "gpt",
        "seed-fixed".into(),
        [&[1u8][..], &disk.encode_self()].concat(),
    ));

    // Text files pak writes and reads back.
    out.push(("pakfile", "seed".into(), SEED_PAKFILE.as_bytes().to_vec()));
    let locked = crate::lock::LockedPackage {
        name: "seed".into(),
        version: "1.0-1".into(),
        arch: "any".into(),
        sha256: "ab".repeat(32),
        size: 1234,
        source: "local".into(),
        location: "seed-1.0-1-any.pak".into(),
        requires: vec!["libc6 (>= 2.34)".into()],
        provides: vec!["hello".into()],
        conflicts: vec!["other".into()],
        archive_date: Some("20250101T000000Z".into()),
    };
    let mut lock = crate::lock::Lock::new(vec![locked]);
    lock.accounts.users.insert("postgres".into(), 100);
    lock.accounts.groups.insert("postgres".into(), 100);
    out.push(("lock", "seed".into(), lock.to_toml().into_bytes()));
    let package = crate::image::generation::PackageRef {
        name: "seed".into(),
        version: "1.0-1".into(),
        sha256: "ab".repeat(32),
    };
    let meta = crate::image::generation::GenerationMeta {
        number: 3,
        build_id: "cd".repeat(32),
        system: "minimal".into(),
        cmdline: "console=ttyS0".into(),
        tries: 3,
        kernel: "boot/vmlinuz".into(),
        kernel_version: "6.1.0-cloud-amd64".into(),
        initrd: "usr/lib/pak/initrd.img".into(),
        written: Some(crate::image::generation::Written::of(
            "ef", 4096, b"k", b"i",
        )),
        packages: vec![package.clone()],
    };
    out.push(("generation", "seed".into(), meta.to_toml().into_bytes()));
    let channel = crate::channel::Channel {
        format: crate::channel::FORMAT,
        version: 4,
        expires: 1 << 32,
        rollout: 50,
        halted: false,
        newest: 3,
        generations: vec![crate::channel::ChannelGeneration {
            number: 3,
            file: "minimal-3.sqfs".into(),
            sha256: "ab".repeat(32),
            size: 4096,
            system: "minimal".into(),
            build_id: "cd".repeat(32),
            kernel: "6.1.0".into(),
            packages: vec![package],
            chunks: Some(crate::channel::ChunkFile {
                file: "minimal-3.chunks".into(),
                sha256: "ef".repeat(32),
                size: 56,
            }),
            root_hash: Some("12".repeat(32)),
        }],
    };
    let body = channel.to_toml();
    out.push((
        "channel",
        "seed-harness-sealed".into(),
        [&[1u8][..], body.as_bytes()].concat(),
    ));
    let sealed = crate::channel::seal(&body, key());
    out.push((
        "channel",
        "seed-sealed".into(),
        [&[0u8][..], sealed.as_bytes()].concat(),
    ));
    for (name, text) in [
        ("entry", "pak-a-3+2-1.conf"),
        ("content", "title x\nversion 12\nlinux /pak/a/vmlinuz\n"),
        (
            "cmdline",
            "quiet pak.slot=a pak.generation=3 pak.debug init=/sbin/init",
        ),
        (
            "record",
            "boot_id=1\ndevice=/dev/vda4\noutcome=clean\noutput=ok\n",
        ),
    ] {
        out.push(("boot_names", name.into(), text.as_bytes().to_vec()));
    }
    out.push((
        "kmod",
        "seed".into(),
        elf_module(b"license=GPL\0depends=a,b\0", 0),
    ));
    out.push((
        "cpio",
        "seed".into(),
        b"init\0bin/sh=#!/bin/sh\0bin/ls=sh".to_vec(),
    ));
    Ok(out)
}

const SEED_PAKFILE: &str = r#"[system]
name = "seed"
arch = "x86_64"
profiles = ["base"]

[[repository]]
name = "debian"
kind = "apt"

[boot]
cmdline = "console=ttyS0"
tries = 3

[image]
size = "1GiB"
"#;

/// The smallest ELF64 a module reader accepts: a header, a section name
/// table, a `.modinfo` section, and a `.text` of `text` bytes before the
/// section table that a reader of `.modinfo` must not need. Also the
/// kernel-module tests' stand-in module.
pub fn elf_module(modinfo: &[u8], text: usize) -> Vec<u8> {
    let names = b"\0.shstrtab\0.modinfo\0.text\0";
    let mut out = vec![0u8; 64];
    out[..5].copy_from_slice(b"\x7fELF\x02");
    let names_at = out.len();
    out.extend_from_slice(names);
    let info_at = out.len();
    out.extend_from_slice(modinfo);
    let text_at = out.len();
    out.resize(text_at + text, 0x90);
    let shoff = out.len();
    out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
    out[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
    for (name, at, len) in [
        (0u32, 0, 0),
        (1, names_at, names.len()),
        (11, info_at, modinfo.len()),
        (20, text_at, text),
    ] {
        let mut sh = [0u8; 64];
        sh[..4].copy_from_slice(&name.to_le_bytes());
        sh[0x18..0x20].copy_from_slice(&(at as u64).to_le_bytes());
        sh[0x20..0x28].copy_from_slice(&(len as u64).to_le_bytes());
        out.extend_from_slice(&sh);
    }
    out
}

impl SparseDisk {
    /// This disk as a fuzz input.
    fn encode_self(&self) -> Vec<u8> {
        let mut out = self.len.to_le_bytes().to_vec();
        for (s, bytes) in &self.sectors {
            if bytes.iter().any(|b| *b != 0) {
                out.extend_from_slice(&(*s as u32).to_le_bytes());
                out.extend_from_slice(&512u16.to_le_bytes());
                out.extend_from_slice(bytes);
            }
        }
        out
    }
}

fn tar_of(files: &[(&str, &[u8], u32)]) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(if name.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        b.append_data(&mut h, name, *data)?;
    }
    Ok(b.into_inner()?)
}

fn compress(ext: &str, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    Ok(match ext {
        "gz" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data)?;
            e.finish()?
        }
        "xz" => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(data)?;
            e.finish()?
        }
        "zst" => zstd::encode_all(data, 1)?,
        _ => data.to_vec(),
    })
}

fn ar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        let head = format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            name,
            0,
            0,
            0,
            "100644",
            data.len()
        );
        out.extend(head.as_bytes());
        out.extend(*data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}
