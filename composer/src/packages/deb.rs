//! Debian `.deb` files as a source of packages.
//!
//! A `.deb` is an `ar` archive of `debian-binary`, `control.tar.*` and
//! `data.tar.*`. Its control fields become `.PAKINFO` (through the same
//! mapping the apt index uses, so both agree), its data tarball becomes the
//! payload. Maintainer scripts are not run, only reported: what they would
//! have done, pak does declaratively when it assembles a generation.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::packages::bom::{Entry, FileDigest, Kind};
use crate::packages::package::{Content, Writer};
use crate::packages::pakinfo::PakInfo;

const SCRIPTS: &[&str] = &[
    "preinst", "postinst", "prerm", "postrm", "config", "triggers",
];
/// The version of what [`convert`] makes of a `.deb`. The store keys a
/// converted package by it (see `LockedPackage::store_key`), so a store
/// entry converted by an older pak, which lacks what this one records
/// (the scripts' text since 2), is never used: the `.deb` is converted
/// again from the download cache. Bump it whenever the conversion's output
/// changes.
pub const CONVERSION: u32 = 2;
/// A maintainer script larger than this is not kept (real ones are a few
/// KiB; this bounds what a hostile .deb can put into metadata).
const SCRIPT_MAX: u64 = 1 << 20;
/// A .deb member larger than this is refused rather than read into memory.
const MEMBER_MAX: u64 = 2 << 30;

/// A member of the `ar` archive, borrowed from the `.deb`'s bytes: a
/// kernel package's data.tar is tens of MiB, not worth a second copy.
struct Member<'a> {
    name: String,
    data: &'a [u8],
}

/// Splits an `ar` archive into its members.
fn ar_members(bytes: &[u8]) -> Result<Vec<Member<'_>>> {
    if !bytes.starts_with(b"!<arch>\n") {
        bail!("not a Debian package (no ar archive signature)");
    }
    let mut pos = 8;
    let mut out = Vec::new();
    while pos + 60 <= bytes.len() {
        let h = &bytes[pos..pos + 60];
        if &h[58..60] != b"`\n" {
            bail!("corrupt ar header at byte {pos}");
        }
        let name = String::from_utf8_lossy(&h[0..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: u64 = std::str::from_utf8(&h[48..58])?
            .trim()
            .parse()
            .with_context(|| format!("corrupt ar member size at byte {pos}"))?;
        if size > MEMBER_MAX {
            bail!("member {name} is {size} bytes, beyond what a package may hold");
        }
        let start = pos + 60;
        let end = start
            .checked_add(size as usize)
            .filter(|e| *e <= bytes.len());
        let Some(end) = end else {
            bail!("member {name} is truncated")
        };
        out.push(Member {
            name,
            data: &bytes[start..end],
        });
        pos = end + (end % 2);
    }
    Ok(out)
}

fn decompressor<'a>(name: &str, data: &'a [u8]) -> Result<Box<dyn Read + 'a>> {
    Ok(match name.rsplit('.').next() {
        Some("xz") => Box::new(xz2::read::XzDecoder::new(data)),
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

/// Converts `.deb` bytes to a `.pak` written into `out_dir`.
pub fn convert(bytes: &[u8], out_dir: &Path) -> Result<PathBuf> {
    let _timed = crate::util::timings::enter(crate::util::timings::Step::Convert);
    let sha = hex::encode(Sha256::digest(bytes));
    let members = ar_members(bytes)?;
    let control = members
        .iter()
        .find(|m| m.name.starts_with("control.tar"))
        .context("no control.tar member")?;
    let data = members
        .iter()
        .find(|m| m.name.starts_with("data.tar"))
        .context("no data.tar member")?;

    let mut control_text = None;
    let mut scripts = Vec::new();
    let mut texts = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(decompressor(&control.name, control.data)?);
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
    let control_text = control_text.context("control.tar has no control file")?;
    let stanza = crate::packages::debian::parse_stanzas(&control_text)
        .into_iter()
        .next()
        .context("empty control file")?;
    let mut info: PakInfo = crate::packages::debian::to_pakinfo(&stanza, &sha, scripts)
        .context("control file lacks Package or Version")?;
    if let Some(origin) = &mut info.origin {
        origin.scripts = texts;
    }

    let mut w = Writer::new(info);
    let mut special = Vec::new();
    let mut ar = tar::Archive::new(decompressor(&data.name, data.data)?);
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
        let (entry, content) = match et {
            tar::EntryType::Directory => (entry(Kind::Dir), Content::None),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // The size is the header's claim: memory follows the bytes
                // that actually arrive.
                let mut buf = Vec::with_capacity(e.size().min(1 << 20) as usize);
                e.read_to_end(&mut buf)?;
                (
                    entry(Kind::File(FileDigest {
                        size: 0,
                        sha256: String::new(),
                    })),
                    Content::Bytes(buf),
                )
            }
            tar::EntryType::Symlink => {
                let t = e
                    .link_name()?
                    .context("symlink without target")?
                    .to_string_lossy()
                    .into_owned();
                (
                    Entry {
                        mode: 0o777,
                        ..entry(Kind::Symlink(t))
                    },
                    Content::None,
                )
            }
            tar::EntryType::Link => {
                let t = e
                    .link_name()?
                    .context("hard link without target")?
                    .to_string_lossy()
                    .into_owned();
                let t = payload_path(&t).context("hard link to the root")?;
                (entry(Kind::HardLink(t)), Content::None)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let (major, minor) = (
                    h.device_major()?.unwrap_or(0),
                    h.device_minor()?.unwrap_or(0),
                );
                let kind = if et == tar::EntryType::Char {
                    Kind::CharDev { major, minor }
                } else {
                    Kind::BlockDev { major, minor }
                };
                (entry(kind), Content::None)
            }
            tar::EntryType::Fifo => (entry(Kind::Fifo), Content::None),
            other => bail!("{path}: tar entry type {other:?} is not supported"),
        };
        // Debian's own setuid programs and device nodes are declared, so
        // the store accepts them from this conversion and no other way.
        if entry.is_special() {
            special.push(entry.path.clone());
        }
        w.add(entry, content)?;
    }
    special.sort();
    w.info_mut().special_files = special;
    w.write(out_dir)
}

/// `pak pkg import-deb FILE.deb`.
pub fn import(deb: &Path, out_dir: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(deb).with_context(|| format!("cannot read {}", deb.display()))?;
    convert(&bytes, out_dir).with_context(|| format!("cannot import {}", deb.display()))
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
}
