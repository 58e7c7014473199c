//! Debian `.deb` files as a source of packages.
//!
//! A `.deb` is an `ar` archive of `debian-binary`, `control.tar.*` and
//! `data.tar.*`. Its control fields become `.PAKINFO` (through the same
//! mapping the apt index uses, so both agree), its data tarball becomes the
//! payload. Maintainer scripts are not run, only reported: what they would
//! have done, pak does declaratively when it assembles a generation.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::packages::bom::{Bom, Entry, FileDigest, Kind};
use crate::packages::package::{Content, Entries, Writer};
use crate::packages::pakinfo::PakInfo;

const SCRIPTS: &[&str] = &[
    "preinst", "postinst", "prerm", "postrm", "config", "triggers",
];
/// The version of what [`convert`] and [`unpack`] make of a `.deb`. The
/// store keys a converted package by it (see `LockedPackage::store_key`),
/// so a store entry converted by an older pak, which lacks what this one
/// records (the scripts' text since 2), is never used: the `.deb` is
/// converted again from the download cache. Bump it whenever the
/// conversion's output changes.
pub const CONVERSION: u32 = 2;
/// A maintainer script larger than this is not kept (real ones are a few
/// KiB; this bounds what a hostile .deb can put into metadata).
const SCRIPT_MAX: u64 = 1 << 20;
/// A .deb member larger than this is refused.
const MEMBER_MAX: u64 = 2 << 30;
/// The most a data.tar may decompress to. Debian's largest packages
/// unpack to a few GiB; this bounds the disk a decompression bomb costs
/// (memory it never costs: contents are streamed).
pub const DATA_MAX: u64 = 32 << 30;

/// Reads exactly what it is given while hashing it: the `.deb`'s sha256
/// comes out of the one pass that unpacks it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Refuses to produce more than [`DATA_MAX`] bytes.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "data.tar decompresses to more than {} GiB, beyond what pak unpacks (a decompression bomb?)",
                DATA_MAX >> 30
            ))
        })?;
        Ok(n)
    }
}

/// The header of the next `ar` member: its name and size; `None` at the
/// end of the archive.
fn ar_header(r: &mut impl Read, at: u64) -> Result<Option<(String, u64)>> {
    let mut h = [0u8; 60];
    let mut got = 0;
    while got < 60 {
        match r.read(&mut h[got..])? {
            0 => break,
            n => got += n,
        }
    }
    // Fewer bytes than a header are trailing padding, as before.
    if got < 60 {
        return Ok(None);
    }
    if &h[58..60] != b"`\n" {
        bail!("corrupt ar header at byte {at}");
    }
    let name = String::from_utf8_lossy(&h[0..16])
        .trim_end()
        .trim_end_matches('/')
        .to_string();
    let size: u64 = std::str::from_utf8(&h[48..58])?
        .trim()
        .parse()
        .with_context(|| format!("corrupt ar member size at byte {at}"))?;
    if size > MEMBER_MAX {
        bail!("member {name} is {size} bytes, beyond what a package may hold");
    }
    Ok(Some((name, size)))
}

/// What an xz member may take to decompress. Debian compresses with
/// `xz -6` (8 MiB dictionary) or at most `-9` (64 MiB); a member asking
/// for more is refused rather than allocated.
const XZ_MEMORY: u64 = 256 << 20;

/// An xz decoder on every core: dpkg-deb writes data.tar.xz in blocks of
/// 24 MiB (a kernel package has five), which liblzma decodes in parallel;
/// a one-block member decodes as before. Same bytes either way.
fn xz_decoder<'a>(data: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let stream = liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        .memlimit_threading(XZ_MEMORY)
        .memlimit_stop(XZ_MEMORY)
        .decoder()
        .context("cannot start an xz decoder")?;
    Ok(Box::new(liblzma::read::XzDecoder::new_stream(data, stream)))
}

fn decompressor<'a>(name: &str, data: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    Ok(match name.rsplit('.').next() {
        Some("xz") => xz_decoder(data)?,
        Some("zst") => Box::new(zstd::Decoder::new(data)?),
        Some("gz") => Box::new(flate2::read::GzDecoder::new(data)),
        Some("tar") => Box::new(data),
        _ => bail!("{name}: unsupported compression"),
    })
}

/// Maps a tar path of a .deb (`./usr/bin/x`) to a payload path.
fn payload_path(raw: &str) -> Option<String> {
    let p = raw.trim_start_matches("./").trim_end_matches('/');
    (!p.is_empty() && p != ".").then(|| p.to_string())
}

/// What control.tar says.
struct Control {
    text: String,
    scripts: Vec<String>,
    texts: std::collections::BTreeMap<String, String>,
}

fn read_control(r: impl Read) -> Result<Control> {
    let mut control_text = None;
    let mut scripts = Vec::new();
    let mut texts = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(r);
    for e in ar.entries()? {
        let mut e = e?;
        let name = e
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if name == "control" {
            if e.size() > SCRIPT_MAX {
                bail!(
                    "the control file is {} bytes, beyond what pak reads",
                    e.size()
                );
            }
            let mut s = String::new();
            e.read_to_string(&mut s)?;
            control_text = Some(s);
        } else if SCRIPTS.contains(&name.as_str()) {
            if e.size() > SCRIPT_MAX {
                bail!(
                    "maintainer script {name} is {} bytes, beyond what pak keeps",
                    e.size()
                );
            }
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes)?;
            texts.insert(name.clone(), String::from_utf8_lossy(&bytes).into_owned());
            scripts.push(name);
        }
    }
    scripts.sort();
    let text = control_text.context("control.tar has no control file")?;
    Ok(Control {
        text,
        scripts,
        texts,
    })
}

/// What takes each data.tar entry: a file comes with its content to read.
type Take<'a> = dyn FnMut(Entry, Option<&mut dyn Read>) -> Result<()> + 'a;

/// Hands each entry of data.tar to `take` (a file with its content to
/// read); returns the paths of setuid/setgid files and device nodes.
fn read_data(r: impl Read, take: &mut Take<'_>) -> Result<Vec<String>> {
    let mut special = Vec::new();
    let mut ar = tar::Archive::new(r);
    for e in ar.entries()? {
        let mut e = e?;
        let raw = e.path()?.to_string_lossy().into_owned();
        let Some(path) = payload_path(&raw) else {
            continue;
        };
        let h = e.header();
        let mode = h.mode()? & 0o7777;
        let (uid, gid) = (h.uid()? as u32, h.gid()? as u32);
        let entry = |kind| Entry {
            path: path.clone(),
            kind,
            mode,
            uid,
            gid,
        };
        let et = h.entry_type();
        let entry = match et {
            tar::EntryType::Directory => entry(Kind::Dir),
            tar::EntryType::Regular | tar::EntryType::Continuous => entry(Kind::File(FileDigest {
                size: 0,
                sha256: String::new(),
            })),
            tar::EntryType::Symlink => {
                let t = e
                    .link_name()?
                    .context("symlink without target")?
                    .to_string_lossy()
                    .into_owned();
                Entry {
                    mode: 0o777,
                    ..entry(Kind::Symlink(t))
                }
            }
            tar::EntryType::Link => {
                let t = e
                    .link_name()?
                    .context("hard link without target")?
                    .to_string_lossy()
                    .into_owned();
                let t = payload_path(&t).context("hard link to the root")?;
                entry(Kind::HardLink(t))
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let (major, minor) = (
                    h.device_major()?.unwrap_or(0),
                    h.device_minor()?.unwrap_or(0),
                );
                if et == tar::EntryType::Char {
                    entry(Kind::CharDev { major, minor })
                } else {
                    entry(Kind::BlockDev { major, minor })
                }
            }
            tar::EntryType::Fifo => entry(Kind::Fifo),
            other => bail!("{path}: tar entry type {other:?} is not supported"),
        };
        // Debian's own setuid programs and device nodes are declared, so
        // the store accepts them from this conversion and no other way.
        if entry.is_special() {
            special.push(entry.path.clone());
        }
        if matches!(entry.kind, Kind::File(_)) {
            take(entry, Some(&mut e))?;
        } else {
            take(entry, None)?;
        }
    }
    special.sort();
    Ok(special)
}

/// Reads a `.deb` once, front to back: control.tar into the metadata,
/// each entry of data.tar handed to `take` as it is decompressed. Only
/// metadata is held in memory.
fn read_deb(
    deb: impl Read,
    mut take: impl FnMut(Entry, Option<&mut dyn Read>) -> Result<()>,
) -> Result<PakInfo> {
    let mut r = Hashing {
        inner: deb,
        hash: Sha256::new(),
    };
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || &magic != b"!<arch>\n" {
        bail!("not a Debian package (no ar archive signature)");
    }
    let mut at = 8u64;
    let mut control = None;
    let mut special = None;
    while let Some((name, size)) = ar_header(&mut r, at)? {
        let mut member = (&mut r).take(size);
        if control.is_none() && name.starts_with("control.tar") {
            control = Some(read_control(decompressor(&name, &mut member)?)?);
        } else if special.is_none() && name.starts_with("data.tar") {
            let data = Capped {
                inner: decompressor(&name, &mut member)?,
                left: DATA_MAX,
            };
            special = Some(read_data(data, &mut take)?);
        }
        // What a decompressor left unread of its member (trailing blocks).
        io::copy(&mut member, &mut io::sink())?;
        if member.limit() > 0 {
            bail!("member {name} is truncated");
        }
        at += 60 + size;
        if size % 2 == 1 {
            let mut pad = [0u8; 1];
            if r.read(&mut pad)? == 0 {
                break;
            }
            at += 1;
        }
    }
    io::copy(&mut r, &mut io::sink())?;
    let sha = hex::encode(r.hash.finalize());
    let control = control.context("no control.tar member")?;
    let special = special.context("no data.tar member")?;
    let stanza = crate::packages::debian::parse_stanzas(&control.text)
        .into_iter()
        .next()
        .context("empty control file")?;
    let mut info: PakInfo = crate::packages::debian::to_pakinfo(&stanza, &sha, control.scripts)
        .context("control file lacks Package or Version")?;
    if let Some(origin) = &mut info.origin {
        origin.scripts = control.texts;
    }
    info.special_files = special;
    Ok(info)
}

/// Converts `.deb` bytes to a `.pak` written into `out_dir` (for `pak pkg
/// import-deb`: a `.pak` to keep or publish). Builds go through
/// [`unpack`], which makes no `.pak`.
pub fn convert(bytes: &[u8], out_dir: &Path) -> Result<PathBuf> {
    let _timed = crate::util::timings::enter(crate::util::timings::Step::Convert);
    let mut entries = Entries::default();
    let info = read_deb(bytes, |entry, content| {
        let content = match content {
            Some(r) => {
                let mut buf = Vec::new();
                r.read_to_end(&mut buf)?;
                Content::Bytes(buf)
            }
            None => Content::None,
        };
        entries.add(entry, content)
    })?;
    Writer::from_entries(info, entries).write(out_dir)
}

/// `pak pkg import-deb FILE.deb`.
pub fn import(deb: &Path, out_dir: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(deb).with_context(|| format!("cannot read {}", deb.display()))?;
    convert(&bytes, out_dir).with_context(|| format!("cannot import {}", deb.display()))
}

/// Unpacks a `.deb` straight into `dir` (an empty directory): its payload
/// under `dir/tree`, laid out as a store entry's; returns the metadata and
/// bill of materials, the same as [`convert`] and extracting its `.pak`
/// would give. data.tar is decompressed once: each file is written to a
/// staging file as it arrives, hashed on the way, and moved into the tree
/// once the whole package has been checked, so nothing is written through
/// a path the checks would refuse, and memory holds metadata only.
pub fn unpack(deb: &Path, dir: &Path) -> Result<(PakInfo, Bom)> {
    let _timed = crate::util::timings::enter(crate::util::timings::Step::Convert);
    let f = File::open(deb).with_context(|| format!("cannot read {}", deb.display()))?;
    unpack_from(BufReader::with_capacity(256 << 10, f), dir)
        .with_context(|| format!("cannot unpack {}", deb.display()))
}

fn unpack_from(deb: impl Read, dir: &Path) -> Result<(PakInfo, Bom)> {
    let staging = dir.join("staging");
    std::fs::create_dir(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    // A file's staged name is its number in data.tar.
    let mut entries: Entries<Option<u32>> = Entries::default();
    let mut staged = 0u32;
    let mut buf = vec![0u8; 128 << 10];
    let info = read_deb(deb, |mut entry, content| {
        let number = match (content, &mut entry.kind) {
            (Some(r), Kind::File(d)) => {
                let path = staging.join(staged.to_string());
                let mut f = File::options()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                let mut hash = Sha256::new();
                let mut size = 0u64;
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    f.write_all(&buf[..n])
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    size += n as u64;
                }
                // setuid/setgid never reach the store's disk.
                f.set_permissions(std::fs::Permissions::from_mode(entry.mode & 0o1777))?;
                d.size = size;
                d.sha256 = hex::encode(hash.finalize());
                staged += 1;
                Some(staged - 1)
            }
            _ => None,
        };
        entries.add(entry, number)
    })?;
    entries.complete(&info.special_files, |_, _, _| Ok(()))?;
    place(&entries, &staging, &dir.join("tree"))?;
    std::fs::remove_dir(&staging)
        .with_context(|| format!("cannot remove {}", staging.display()))?;
    Ok((info, entries.into_bom()))
}

/// Lays out checked entries below `tree`, in BOM order: every parent is a
/// directory made here before its children (the checks refused anything
/// else), so nothing is written through a link.
fn place(entries: &Entries<Option<u32>>, staging: &Path, tree: &Path) -> Result<()> {
    std::fs::create_dir(tree).with_context(|| format!("cannot create {}", tree.display()))?;
    let mut dirs = Vec::new();
    for (e, staged) in entries.iter() {
        let dest = tree.join(&e.path);
        let made = match &e.kind {
            Kind::Dir => {
                let r = std::fs::create_dir(&dest);
                dirs.push((dest.clone(), e.mode));
                r
            }
            Kind::File(_) => {
                let n = staged.expect("every file was staged");
                std::fs::rename(staging.join(n.to_string()), &dest)
            }
            Kind::Symlink(target) => std::os::unix::fs::symlink(target, &dest),
            Kind::HardLink(target) => std::fs::hard_link(tree.join(target), &dest),
            // Device nodes and fifos live in the BOM only; the generation
            // writer creates them from it.
            Kind::CharDev { .. } | Kind::BlockDev { .. } | Kind::Fifo => Ok(()),
        };
        made.with_context(|| format!("cannot create {}", dest.display()))?;
    }
    // Directory modes last: a read-only directory must not stop its own
    // contents from being written.
    for (path, mode) in dirs.iter().rev() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o1777))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = b"!<arch>\n".to_vec();
        for (name, data) in members {
            out.extend(
                format!(
                    "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                    name,
                    0,
                    0,
                    0,
                    "100644",
                    data.len()
                )
                .as_bytes(),
            );
            out.extend(*data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    fn tar_gz(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
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
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn converts_a_small_deb() {
        let control = tar_gz(&[
            ("./control", b"Package: hi\nVersion: 1:2-3\nArchitecture: amd64\nDepends: libc6 (>= 2.34)\nDescription: says hi\n", 0o644),
            ("./postinst", b"#!/bin/sh\nadduser --system hi\n", 0o755),
        ]);
        let data = tar_gz(&[
            ("./", b"", 0o755),
            ("./usr/bin/", b"", 0o755),
            ("./usr/bin/hi", b"hi", 0o4755),
        ]);
        let deb = ar(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar.gz", &control),
            ("data.tar.gz", &data),
        ]);
        let out = tempfile::tempdir().unwrap();
        let pak = convert(&deb, out.path()).unwrap();
        let v = crate::packages::package::verify(&pak).unwrap();
        assert_eq!(v.info.name, "hi");
        assert_eq!(v.info.requires, vec!["libc6 >= 2.34"]);
        assert_eq!(v.info.special_files, vec!["usr/bin/hi"]);
        let origin = v.info.origin.unwrap();
        assert_eq!(origin.scripts_not_run, vec!["postinst"]);
        assert_eq!(
            origin.scripts["postinst"],
            "#!/bin/sh\nadduser --system hi\n"
        );
        assert_eq!(pak.file_name().unwrap(), "hi-1_2-3-x86_64.pak");
        let again = tempfile::tempdir().unwrap();
        assert_eq!(
            std::fs::read(&pak).unwrap(),
            std::fs::read(convert(&deb, again.path()).unwrap()).unwrap()
        );
    }

    #[test]
    fn garbage_is_refused() {
        let out = tempfile::tempdir().unwrap();
        assert!(convert(b"hello", out.path()).is_err());
        let deb = ar(&[("debian-binary", b"2.0\n")]);
        assert!(
            convert(&deb, out.path())
                .unwrap_err()
                .to_string()
                .contains("control.tar")
        );
    }

    /// A tar entry: name, type, mode, content, link target.
    type Raw<'a> = (&'a str, tar::EntryType, u32, &'a [u8], Option<&'a str>);
    /// A metadata and BOM text, or why there are none.
    type Made = Result<(String, String)>;

    /// A data.tar of any entry types, in the order given (not sorted).
    fn tar_raw(entries: &[Raw]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, t, mode, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*t);
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            // Raw names: the tar crate refuses to write hostile ones.
            let g = h.as_gnu_mut().unwrap();
            g.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                g.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn deb_of(data: &[u8]) -> Vec<u8> {
        let control = tar_gz(&[(
            "./control",
            b"Package: t\nVersion: 1\nArchitecture: amd64\n",
            0o644,
        )]);
        ar(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar.gz", &control),
            ("data.tar", data),
        ])
    }

    /// Both ways into a store entry's layout: the metadata and BOM texts.
    fn both_ways(deb: &[u8]) -> (Made, Made) {
        let d = tempfile::tempdir().unwrap();
        let old = (|| {
            let pak = convert(deb, &d.path().join("paks"))?;
            let dir = d.path().join("old");
            std::fs::create_dir(&dir)?;
            let (i, b) = crate::store::extract_pak(&pak, &dir)?;
            Ok((i.to_toml(), b.render()))
        })();
        let new = (|| {
            let path = d.path().join("t.deb");
            std::fs::write(&path, deb)?;
            let dir = d.path().join("new");
            std::fs::create_dir(&dir)?;
            let (i, b) = unpack(&path, &dir)?;
            assert!(!dir.join("staging").exists());
            Ok((i.to_toml(), b.render()))
        })();
        (old, new)
    }

    #[test]
    fn unpack_makes_what_convert_and_extract_made() {
        use tar::EntryType::*;
        let data = tar_raw(&[
            // No `./`, no usr/: implied directories.
            ("./usr/bin/su", Regular, 0o4755, b"su", None),
            ("./usr/share/doc/t/b", Regular, 0o644, b"same", None),
            ("./usr/share/doc/t/a", Regular, 0o600, b"", None),
            (
                "./usr/share/doc/t/c",
                Link,
                0o644,
                b"",
                Some("./usr/share/doc/t/b"),
            ),
            ("./usr/bin/sh", Symlink, 0o777, b"", Some("su")),
            ("./etc/", Directory, 0o700, b"", None),
            ("./dev/null", Char, 0o666, b"", None),
        ]);
        let (old, new) = both_ways(&deb_of(&data));
        let (old, new) = (old.unwrap(), new.unwrap());
        assert_eq!(old, new);
        assert!(new.1.contains("usr/bin/su"), "{}", new.1);
    }

    #[test]
    fn unpack_refuses_what_install_refused() {
        use tar::EntryType::*;
        let hostile: &[&[Raw]] = &[
            // Writing through a symlink.
            &[
                ("./etc", Symlink, 0o777, b"", Some("/tmp")),
                ("./etc/passwd", Regular, 0o644, b"x", None),
            ],
            &[("./../x", Regular, 0o644, b"x", None)],
            &[("./a", Symlink, 0o777, b"", Some("../../x"))],
            &[("./a", Link, 0o644, b"", Some("./b"))],
            &[
                ("./a", Regular, 0o644, b"x", None),
                ("./a", Regular, 0o644, b"y", None),
            ],
        ];
        for entries in hostile {
            let (old, new) = both_ways(&deb_of(&tar_raw(entries)));
            assert!(
                old.is_err(),
                "{entries:?} was accepted by convert + install"
            );
            assert!(new.is_err(), "{entries:?} was accepted by unpack");
        }
    }
}
