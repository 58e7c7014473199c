//! The bill of materials (`.BOM`) of a package: every payload entry with
//! its type, mode, owner, size, sha256 and link target.
//!
//! A line per entry, sorted by path, fields separated by one space:
//!
//! ```text
//! pak-bom 1
//! d 0755 0 0 - - usr
//! f 0755 0 0 10 <sha256> usr/bin/hello
//! l 0777 0 0 - - usr/bin/hi hello
//! h 0755 0 0 - - usr/bin/hello2 usr/bin/hello
//! c 0620 0 5 4,1 - dev/tty1
//! p 0644 0 0 - - run/fifo
//! ```
//!
//! Paths and targets are percent-encoded where they hold bytes outside
//! printable ASCII, a space or `%`, so any file name survives and a line
//! always splits the same way.

use std::fmt::Write as _;

use anyhow::{Result, bail};

pub const MAGIC: &str = "pak-bom 1";

/// A BOM knows a regular file by its size and sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: String,
}

/// What a BOM entry is. A hard link names an earlier file entry of the
/// same package.
pub type Kind = crate::packages::file::FileKind<FileDigest>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, `/`-separated, canonical (no `.`, `..`, empty components).
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Entry {
    pub fn is_special(&self) -> bool {
        matches!(self.kind, Kind::CharDev { .. } | Kind::BlockDev { .. }) || self.mode & 0o6000 != 0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bom {
    pub entries: Vec<Entry>,
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| anyhow::anyhow!("truncated escape in {s:?}"))?;
            out.push(
                u8::from_str_radix(hex, 16).map_err(|_| anyhow::anyhow!("bad escape in {s:?}"))?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow::anyhow!("{s:?} is not UTF-8 once decoded"))
}

/// Checks that a payload path is canonical and stays inside the package.
pub fn check_path(path: &str) -> Result<()> {
    if path.is_empty() {
        bail!("an entry has an empty path");
    }
    if path.starts_with('/') {
        bail!("entry {path:?} is an absolute path; package paths are relative to the root");
    }
    for comp in path.split('/') {
        match comp {
            "" | "." => bail!("entry {path:?} is not a canonical path"),
            ".." => bail!("entry {path:?} climbs out of the package with `..`"),
            _ => {}
        }
    }
    if path.contains('\0') {
        bail!("entry {path:?} contains a NUL byte");
    }
    Ok(())
}

/// Where a symlink at `path` pointing to `target` leads, relative to the
/// package root; `None` when it climbs above the root. Absolute targets are
/// read relative to the image root, which the package root stands for.
pub fn link_destination(path: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let mut p: Vec<&str> = path.split('/').collect();
        p.pop();
        p
    };
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

impl Bom {
    pub fn render(&self) -> String {
        render(&self.entries)
    }

    pub fn parse(text: &str) -> Result<Bom> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            bail!("the .BOM does not start with {MAGIC:?}");
        }
        // Counted before any is held: a hostile BOM costs its text only.
        let count = text.lines().count().saturating_sub(1);
        if count > crate::packages::package::MAX_ENTRIES {
            return Err(crate::packages::package::too_many_entries(
                "the package",
                Some(count),
            ));
        }
        let mut entries = Vec::with_capacity(count);
        for (n, line) in lines.enumerate() {
            let e = parse_line(line).map_err(|e| anyhow::anyhow!(".BOM line {}: {e}", n + 2))?;
            entries.push(e);
        }
        for w in entries.windows(2) {
            if w[0].path >= w[1].path {
                bail!(".BOM is not sorted or repeats {:?}", w[1].path);
            }
        }
        Ok(Bom { entries })
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Sum of declared file sizes: the most a payload may decompress to.
    /// Saturating: a hostile BOM's sizes may add up past 2^64, and the
    /// payload is then refused when it does not match them.
    pub fn payload_size(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                Kind::File(FileDigest { size, .. }) => size,
                _ => 0,
            })
            .fold(0, u64::saturating_add)
    }
}

/// The text of a bill of materials listing `entries` (sorted by path):
/// what [`Bom::render`] writes, from entries held elsewhere, so a package
/// being made need not copy them into a [`Bom`].
pub fn render<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> String {
    let mut s = String::from(MAGIC);
    s.push('\n');
    for e in entries {
        let (t, size, sha, target) = match &e.kind {
            Kind::Dir => ("d", "-".to_string(), "-", None),
            Kind::File(FileDigest { size, sha256 }) => {
                ("f", size.to_string(), sha256.as_str(), None)
            }
            Kind::Symlink(target) => ("l", "-".into(), "-", Some(target)),
            Kind::HardLink(target) => ("h", "-".into(), "-", Some(target)),
            Kind::CharDev { major, minor } => ("c", format!("{major},{minor}"), "-", None),
            Kind::BlockDev { major, minor } => ("b", format!("{major},{minor}"), "-", None),
            Kind::Fifo => ("p", "-".into(), "-", None),
        };
        let _ = write!(
            s,
            "{t} {:04o} {} {} {size} {sha} {}",
            e.mode,
            e.uid,
            e.gid,
            encode(&e.path)
        );
        if let Some(target) = target {
            let _ = write!(s, " {}", encode(target));
        }
        s.push('\n');
    }
    s
}

fn parse_line(line: &str) -> Result<Entry> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() < 7 || f.len() > 8 {
        bail!("expected 7 or 8 fields, found {}", f.len());
    }
    let mode = u32::from_str_radix(f[1], 8).map_err(|_| anyhow::anyhow!("bad mode {:?}", f[1]))?;
    let uid: u32 = f[2]
        .parse()
        .map_err(|_| anyhow::anyhow!("bad uid {:?}", f[2]))?;
    let gid: u32 = f[3]
        .parse()
        .map_err(|_| anyhow::anyhow!("bad gid {:?}", f[3]))?;
    let path = decode(f[6])?;
    check_path(&path)?;
    let target = f.get(7).map(|t| decode(t)).transpose()?;
    let dev = |s: &str| -> Result<(u32, u32)> {
        let (a, b) = s
            .split_once(',')
            .ok_or_else(|| anyhow::anyhow!("bad device {s:?}"))?;
        Ok((a.parse()?, b.parse()?))
    };
    let kind = match (f[0], target) {
        ("d", None) => Kind::Dir,
        ("f", None) => {
            let size = f[4]
                .parse()
                .map_err(|_| anyhow::anyhow!("bad size {:?}", f[4]))?;
            if f[5].len() != 64 || !f[5].bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("bad sha256 {:?}", f[5]);
            }
            Kind::File(FileDigest {
                size,
                sha256: f[5].to_string(),
            })
        }
        ("l", Some(target)) => Kind::Symlink(target),
        ("h", Some(target)) => Kind::HardLink(target),
        ("c", None) => {
            let (major, minor) = dev(f[4])?;
            Kind::CharDev { major, minor }
        }
        ("b", None) => {
            let (major, minor) = dev(f[4])?;
            Kind::BlockDev { major, minor }
        }
        ("p", None) => Kind::Fifo,
        (t, _) => bail!("unknown entry type {t:?} or misplaced link target"),
    };
    if mode > 0o7777 {
        bail!("mode {mode:o} out of range");
    }
    Ok(Entry {
        path,
        kind,
        mode,
        uid,
        gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_odd_names() {
        let bom = Bom {
            entries: vec![
                Entry {
                    path: "a b".into(),
                    kind: Kind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
                Entry {
                    path: "a b/f%".into(),
                    kind: Kind::File(FileDigest {
                        size: 3,
                        sha256: "ab".repeat(32),
                    }),
                    mode: 0o4755,
                    uid: 0,
                    gid: 0,
                },
                Entry {
                    path: "dev".into(),
                    kind: Kind::CharDev { major: 4, minor: 1 },
                    mode: 0o620,
                    uid: 0,
                    gid: 5,
                },
                Entry {
                    path: "é".into(),
                    kind: Kind::Symlink("../x y".into()),
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                },
            ],
        };
        let text = bom.render();
        assert!(text.contains("a%20b/f%25"));
        assert_eq!(Bom::parse(&text).unwrap(), bom);
        assert!(bom.entries[1].is_special() && bom.entries[2].is_special());
        assert_eq!(bom.get("dev").unwrap().gid, 5);
    }

    #[test]
    fn hostile_lines_are_refused() {
        for bad in [
            "d 0755 0 0 - - ../x",
            "d 0755 0 0 - - /x",
            "f 0644 0 0 1 zz x",
            "d 0755 0 0 - - a//b",
            "x 0 0 0 - - a",
        ] {
            assert!(Bom::parse(&format!("{MAGIC}\n{bad}\n")).is_err(), "{bad}");
        }
        assert!(
            Bom::parse(&format!("{MAGIC}\nd 0755 0 0 - - b\nd 0755 0 0 - - a\n")).is_err(),
            "unsorted"
        );
    }

    #[test]
    fn link_destinations() {
        assert_eq!(
            link_destination("usr/bin/sh", "busybox").as_deref(),
            Some("usr/bin/busybox")
        );
        assert_eq!(
            link_destination("usr/bin/sh", "../../etc/x").as_deref(),
            Some("etc/x")
        );
        assert_eq!(link_destination("usr/bin/sh", "../../../etc/x"), None);
        assert_eq!(
            link_destination("a", "/etc/passwd").as_deref(),
            Some("etc/passwd")
        );
    }
}
