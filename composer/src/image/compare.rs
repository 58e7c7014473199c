//! Where two images differ: the partition, the byte, what lies there
//! (a file's block, a metadata table, a FAT cluster) and the first file
//! whose content or metadata differs. `pak verify` and `pak build --check`
//! report through it.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::squashfs;

/// One place where two images (disks or generation files) differ.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// The partition's label (`esp`, `root-a`, ...), `the partition table`,
    /// `the generation` (for generation files) or `the sizes`.
    pub part: String,
    /// The first differing byte, counted from the start of `part`.
    pub offset: u64,
    /// The same byte, counted from the start of the file.
    pub file_offset: u64,
    /// What lies at that byte, e.g. "the data of /usr/bin/pak (its block 3,
    /// zstd-compressed)".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub place: Option<String>,
    /// The first path inside the partition (in the image's own order) whose
    /// content or metadata differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathDifference>,
}

/// How one path differs between the two images.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PathDifference {
    /// `/usr/bin/pak` in a root slot, `loader/entries/x.conf` on the ESP.
    pub path: String,
    /// The first field that differs: `content`, `mode`, `owner`, `present`...
    pub field: String,
    pub first: String,
    pub second: String,
}

impl Difference {
    /// One line, naming the two images `first` and `second` (e.g. "the
    /// image" and "the rebuild").
    pub fn describe(&self, first: &str, second: &str) -> String {
        let mut s = if self.part == "the sizes" {
            format!("the sizes: one image ends at byte {}", self.file_offset)
        } else if self.part.starts_with("the ") {
            format!("{} at byte {}", self.part, self.offset)
        } else {
            format!(
                "partition {} at byte {} (image byte {})",
                self.part, self.offset, self.file_offset
            )
        };
        if let Some(place) = &self.place {
            s.push_str(&format!(", in {place}"));
        }
        if let Some(d) = &self.path {
            s.push_str(&format!(
                "; first differing file: {}, its {} ({first}: {}; {second}: {})",
                d.path, d.field, d.first, d.second
            ));
        }
        s
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe("first", "second"))
    }
}

/// Where two images first differ: the partition (or the partition table),
/// the byte, what lies there and the first differing file in it; `None`
/// when they are identical.
pub fn first_difference(a: &Path, b: &Path) -> Result<Option<Difference>> {
    Ok(differences(a, b)?.into_iter().next())
}

/// Every partition in which two disk images differ, in disk order, each
/// with its first differing byte and file. Two generation files (squashfs)
/// give at most one difference, `the generation`.
pub fn differences(a: &Path, b: &Path) -> Result<Vec<Difference>> {
    use std::io::{Read, Seek, SeekFrom};
    let open =
        |p: &Path| std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (len_a, len_b) = (fa.metadata()?.len(), fb.metadata()?.len());
    // The regions compared separately: the partitions, and what lies
    // outside them (the partition tables).
    // No partition table: a generation file, or not an image at all (then
    // the squashfs check says so). A corrupt one cannot be compared by
    // partition.
    let parts = crate::disk::gpt::probe(&mut open(a)?)
        .with_context(|| format!("{}: cannot read its partition table", a.display()))?
        .unwrap_or_default();
    let generation = parts.is_empty() && squashfs::Reader::open(open(a)?, 0).is_ok();
    let region = |at: u64| -> (String, u64, u64) {
        if generation {
            return ("the generation".into(), 0, u64::MAX);
        }
        match parts
            .iter()
            .find(|p| at >= p.offset() && at < p.offset() + p.size())
        {
            Some(p) => (p.label.clone(), p.offset(), p.offset() + p.size()),
            None => {
                // Up to the next partition.
                let end = parts
                    .iter()
                    .map(|p| p.offset())
                    .filter(|o| *o > at)
                    .min()
                    .unwrap_or(u64::MAX);
                ("the partition table".into(), 0, end)
            }
        }
    };
    let mut out = Vec::new();
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0u64;
    let common = len_a.min(len_b);
    while off < common {
        let n = ((common - off) as usize).min(ba.len());
        fa.seek(SeekFrom::Start(off))?;
        fb.seek(SeekFrom::Start(off))?;
        fa.read_exact(&mut ba[..n])?;
        fb.read_exact(&mut bb[..n])?;
        // memcmp first: most of an image is equal, and the per-byte search
        // is slow in debug builds.
        if ba[..n] == bb[..n] {
            off += n as u64;
            continue;
        }
        let i = ba[..n]
            .iter()
            .zip(&bb[..n])
            .position(|(x, y)| x != y)
            .expect("the chunks differ");
        let at = off + i as u64;
        let (part, start, end) = region(at);
        let mut d = Difference {
            part,
            offset: at - start,
            file_offset: at,
            place: None,
            path: None,
        };
        explain(&mut d, a, b, start, &parts);
        out.push(d);
        // The next region, if any, is compared on its own.
        if end == u64::MAX {
            break;
        }
        off = end;
    }
    if len_a != len_b {
        out.push(Difference {
            part: "the sizes".into(),
            offset: common,
            file_offset: common,
            place: Some(format!("one is {len_a} bytes, the other {len_b}")),
            path: None,
        });
    }
    Ok(out)
}

/// Fills in what lies at the difference and the first differing path, as
/// far as the two images can be read.
fn explain(
    d: &mut Difference,
    a: &Path,
    b: &Path,
    base: u64,
    parts: &[crate::disk::gpt::Partition],
) {
    let part = parts.iter().find(|p| p.label == d.part);
    let is_root = d.part == "the generation"
        || part.is_some_and(|p| p.type_guid == crate::disk::gpt::ROOT_X86_64_TYPE);
    let is_esp = part.is_some_and(|p| p.type_guid == crate::disk::gpt::ESP_TYPE);
    if is_root {
        compare_squashfs(d, a, b, base);
    } else if is_esp {
        compare_fat(d, a, b, base);
    } else if part.is_some_and(|p| p.type_guid == crate::disk::gpt::VAR_TYPE) {
        d.place = Some(
            "the data partition, which a fresh image leaves blank (the image has been booted?)"
                .into(),
        );
    }
}

fn compare_squashfs(d: &mut Difference, a: &Path, b: &Path, base: u64) {
    let open = |p: &Path| -> Result<squashfs::Reader<std::fs::File>> {
        squashfs::Reader::open(std::fs::File::open(p)?, base)
    };
    let (ra, rb) = (open(a), open(b));
    // Where the byte lies, from the layout of whichever image reads (the
    // second first: a rebuild is the one known to be whole).
    d.place = match (&ra, &rb) {
        (_, Ok(_)) => open(b).ok().map(|mut r| r.place_of(d.offset)),
        (Ok(_), _) => open(a).ok().map(|mut r| r.place_of(d.offset)),
        (Err(e), _) => Some(format!("a squashfs that cannot be opened ({e:#})")),
    };
    let walk = |r: Result<squashfs::Reader<std::fs::File>>| match r {
        Ok(mut r) => r.walk(),
        Err(e) => vec![(
            "/".to_string(),
            Err(format!("not a readable squashfs ({e:#})")),
        )],
    };
    d.path = first_path_difference(walk(ra), walk(rb));
}

type Fields = Vec<(&'static str, String)>;
type Walked = (String, std::result::Result<Fields, String>);

/// The first path, in path order, that one walk has and the other has not,
/// or whose fields differ.
fn first_path_difference(mut a: Vec<Walked>, mut b: Vec<Walked>) -> Option<PathDifference> {
    fn key(p: &str) -> Vec<&[u8]> {
        p.split('/')
            .filter(|c| !c.is_empty())
            .map(str::as_bytes)
            .collect()
    }
    a.sort_by(|x, y| key(&x.0).cmp(&key(&y.0)));
    b.sort_by(|x, y| key(&x.0).cmp(&key(&y.0)));
    let (mut i, mut j) = (0, 0);
    let present = |path: &str, first: bool| PathDifference {
        path: path.to_string(),
        field: "presence".into(),
        first: if first { "present" } else { "absent" }.into(),
        second: if first { "absent" } else { "present" }.into(),
    };
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => key(&x.0).cmp(&key(&y.0)),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => return Some(present(&a[i].0, true)),
            std::cmp::Ordering::Greater => return Some(present(&b[j].0, false)),
            std::cmp::Ordering::Equal => {}
        }
        let (path, x, y) = (&a[i].0, &a[i].1, &b[j].1);
        let differs = |field: &str, first: String, second: String| PathDifference {
            path: path.clone(),
            field: field.into(),
            first,
            second,
        };
        match (x, y) {
            (Ok(fx), Ok(fy)) => {
                for k in 0..fx.len().max(fy.len()) {
                    match (fx.get(k), fy.get(k)) {
                        (Some((n, v)), Some((m, w))) if n == m => {
                            if v != w {
                                return Some(differs(n, v.clone(), w.clone()));
                            }
                        }
                        (p, q) => {
                            let show = |f: Option<&(&str, String)>| {
                                f.map(|(n, v)| format!("{n} {v}")).unwrap_or_default()
                            };
                            return Some(differs("metadata", show(p), show(q)));
                        }
                    }
                }
            }
            (Err(e), Ok(_)) => return Some(differs("readability", e.clone(), "readable".into())),
            (Ok(_), Err(e)) => return Some(differs("readability", "readable".into(), e.clone())),
            (Err(e), Err(f)) if e != f => {
                return Some(differs("readability", e.clone(), f.clone()));
            }
            (Err(_), Err(_)) => {}
        }
        i += 1;
        j += 1;
    }
    None
}

fn compare_fat(d: &mut Difference, a: &Path, b: &Path, base: u64) {
    let walk = |p: &Path| -> Vec<Walked> {
        match fat_walk(p, base) {
            Ok(w) => w,
            Err(e) => vec![("/".to_string(), Err(format!("not a readable FAT ({e:#})")))],
        }
    };
    d.path = first_path_difference(walk(a), walk(b));
    d.place = fat_place(b, base, d.offset)
        .or_else(|_| fat_place(a, base, d.offset))
        .ok();
}

/// Every file and directory of the FAT file system at `base`, with its
/// size and content.
fn fat_walk(p: &Path, base: u64) -> Result<Vec<Walked>> {
    let mut v = crate::disk::fat::Volume::open(std::fs::File::open(p)?, base)?;
    let mut out = vec![("/".to_string(), Ok(vec![("type", "directory".to_string())]))];
    let mut todo = vec![String::new()];
    while let Some(dir) = todo.pop() {
        if out.len() > 1 << 16 {
            bail!("the ESP lists more than 65536 entries (corrupt?)");
        }
        let entries = match v.list(&dir) {
            Ok(e) => e,
            Err(e) => {
                out.push((format!("{dir}/"), Err(format!("cannot be listed ({e:#})"))));
                continue;
            }
        };
        for e in entries {
            let path = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            if e.is_dir {
                out.push((path.clone(), Ok(vec![("type", "directory".to_string())])));
                todo.push(path);
                continue;
            }
            let fields = v
                .read(&path)
                .map(|bytes| {
                    vec![
                        ("type", "file".to_string()),
                        (
                            "content",
                            format!("sha256 {}", crate::util::fsutil::sha256_hex(&bytes)),
                        ),
                        ("size", e.size.to_string()),
                        ("first cluster", e.cluster.to_string()),
                    ]
                })
                .map_err(|err| format!("cannot be read ({err:#})"));
            out.push((path, fields));
        }
    }
    Ok(out)
}

/// What lies at byte `at` of the FAT file system at `base`.
fn fat_place(p: &Path, base: u64, at: u64) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(p)?;
    let mut bs = [0u8; 512];
    f.seek(SeekFrom::Start(base))?;
    f.read_exact(&mut bs)?;
    let u16_at = |o: usize| u16::from_le_bytes([bs[o], bs[o + 1]]) as u64;
    let u32_at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]) as u64;
    let (bps, spc, reserved, fats, fat_sectors) = (
        u16_at(11),
        bs[13] as u64,
        u16_at(14),
        bs[16] as u64,
        u32_at(36),
    );
    if bps == 0 || spc == 0 {
        bail!("no FAT geometry");
    }
    let fat_start = reserved * bps;
    let data_start = fat_start + fats * fat_sectors * bps;
    if at < bps {
        return Ok("the FAT boot sector".into());
    }
    if at < fat_start {
        return Ok("the FAT reserved sectors (FSInfo, the backup boot sector)".into());
    }
    if at < data_start {
        let k = (at - fat_start) / (fat_sectors * bps) + 1;
        return Ok(format!("FAT copy {k} (the cluster chains)"));
    }
    let cluster = 2 + (at - data_start) / (spc * bps);
    // Follow every entry's chain through the first FAT.
    let mut fat = vec![0u8; (fat_sectors * bps) as usize];
    f.seek(SeekFrom::Start(base + fat_start))?;
    f.read_exact(&mut fat)?;
    let next = |c: u64| -> u64 {
        let i = c as usize * 4;
        fat.get(i..i + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as u64 & 0x0FFF_FFFF)
            .unwrap_or(0x0FFF_FFFF)
    };
    let owns = |first: u64| {
        let mut c = first;
        for _ in 0..fat.len() / 4 {
            if !(2..0x0FFF_FFF8).contains(&c) {
                return false;
            }
            if c == cluster {
                return true;
            }
            c = next(c);
        }
        false
    };
    let root = u32_at(44);
    if owns(root) {
        return Ok(format!("cluster {cluster}, the root directory's listing"));
    }
    let mut v = crate::disk::fat::Volume::open(std::fs::File::open(p)?, base)?;
    let mut todo = vec![String::new()];
    while let Some(dir) = todo.pop() {
        for e in v.list(&dir).unwrap_or_default() {
            let path = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            if owns(e.cluster as u64) {
                return Ok(if e.is_dir {
                    format!("cluster {cluster}, the listing of directory {path}")
                } else {
                    format!("cluster {cluster}, the data of {path}")
                });
            }
            if e.is_dir && todo.len() < 1 << 16 {
                todo.push(path);
            }
        }
    }
    Ok(format!("cluster {cluster}, which no file uses"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{self, Layout};
    use crate::image::generation;

    /// A small disk whose slot holds `/etc/timezone` = `tz` (a config file
    /// rendered from the environment: what a non-reproducible build step
    /// would write) and whose ESP holds `entry`.
    fn disk(dir: &Path, name: &str, tz: &str, entry: &str) -> std::path::PathBuf {
        let mut t = squashfs::Tree::default();
        let e = |kind| squashfs::Entry {
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        };
        t.entries.insert(String::new(), e(squashfs::Kind::Dir));
        t.entries.insert("etc".into(), e(squashfs::Kind::Dir));
        for (p, content) in [
            ("etc/hostname", "box\n".to_string()),
            ("etc/timezone", format!("{tz}\n")),
            ("etc/zz", "last\n".to_string()),
        ] {
            t.entries.insert(
                p.into(),
                e(squashfs::Kind::File(squashfs::Source::Bytes(
                    content.into_bytes(),
                ))),
            );
        }
        let sqfs = dir.join(format!("{name}.sqfs"));
        squashfs::write(&t, &sqfs, &squashfs::Options::default()).unwrap();
        generation::seal(&sqfs).unwrap();
        let layout = Layout::new(Some(256 << 20), Some(64 << 20), Some(32 << 20)).unwrap();
        let out = dir.join(format!("{name}.raw"));
        let files = vec![
            ("EFI/BOOT/BOOTX64.EFI".to_string(), vec![1u8; 5000]),
            (
                "loader/entries/pak-a-1.conf".to_string(),
                entry.as_bytes().to_vec(),
            ),
        ];
        disk::create(&out, &layout, &files, &sqfs, "seed").unwrap();
        out
    }

    #[test]
    fn differences_name_the_partition_and_the_file() {
        let d = tempfile::tempdir().unwrap();
        let a = disk(d.path(), "a", "Europe/Paris", "title a\n");
        let same = disk(d.path(), "same", "Europe/Paris", "title a\n");
        assert_eq!(first_difference(&a, &same).unwrap(), None);

        // The same build under another TZ, had it leaked into a file (a
        // zone name of the same length: the superblock stays the same).
        let tz = disk(d.path(), "tz", "Asia/Kolkata", "title a\n");
        let all = differences(&a, &tz).unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        let diff = &all[0];
        assert_eq!(diff.part, "root-a");
        let path = diff.path.as_ref().unwrap();
        assert_eq!(
            (path.path.as_str(), path.field.as_str()),
            ("/etc/timezone", "content")
        );
        assert!(
            diff.place.as_ref().unwrap().contains("/etc/timezone"),
            "{diff}"
        );
        let line = diff.describe("image", "rebuild");
        assert!(
            line.contains("partition root-a at byte")
                && line.contains("first differing file: /etc/timezone, its content (image: sha256"),
            "{line}"
        );

        let esp = disk(d.path(), "esp", "Europe/Paris", "title b\n");
        let diff = first_difference(&a, &esp).unwrap().unwrap();
        assert_eq!(diff.part, "esp");
        assert_eq!(
            diff.path.as_ref().unwrap().path,
            "loader/entries/pak-a-1.conf"
        );
        // Its serial number derives from the content: the first byte that
        // differs is the boot sector's; the file is still named.
        assert_eq!(diff.place.as_deref(), Some("the FAT boot sector"), "{diff}");
        // And a byte of the entry's own cluster is named as its data.
        let base = diff.file_offset - diff.offset;
        let bytes = std::fs::read(&esp).unwrap();
        let at = (base as usize..base as usize + (64 << 20))
            .find(|i| bytes[*i..].starts_with(b"title b\n"))
            .unwrap() as u64;
        let place = fat_place(&esp, base, at - base).unwrap();
        assert!(
            place.ends_with("the data of loader/entries/pak-a-1.conf"),
            "{place}"
        );

        // Generation files compare the same way.
        let g = differences(&d.path().join("a.sqfs"), &d.path().join("tz.sqfs")).unwrap();
        assert_eq!(g.len(), 1, "{g:?}");
        assert_eq!(g[0].part, "the generation");
        assert_eq!(g[0].path.as_ref().unwrap().path, "/etc/timezone");
    }

    #[test]
    fn a_path_only_one_side_has_is_named() {
        let ok = |fields: &[(&'static str, &str)]| {
            Ok(fields.iter().map(|(n, v)| (*n, v.to_string())).collect())
        };
        let a = vec![
            ("/".to_string(), ok(&[("type", "directory")])),
            ("/a".to_string(), ok(&[("type", "directory")])),
            (
                "/a/b".to_string(),
                ok(&[("type", "file"), ("mode", "0644")]),
            ),
            ("/a-c".to_string(), ok(&[("type", "file")])),
        ];
        let mut b = a.clone();
        let _ = b.remove(2);
        let d = first_path_difference(a.clone(), b).unwrap();
        assert_eq!(
            (d.path.as_str(), d.first.as_str(), d.second.as_str()),
            ("/a/b", "present", "absent")
        );
        let mut b = a.clone();
        b[2].1 = ok(&[("type", "file"), ("mode", "0600")]);
        let d = first_path_difference(a.clone(), b).unwrap();
        assert_eq!(
            (d.field.as_str(), d.first.as_str(), d.second.as_str()),
            ("mode", "0644", "0600")
        );
        let mut b = a.clone();
        b[3].1 = Err("its inode cannot be read".into());
        let d = first_path_difference(a.clone(), b).unwrap();
        assert_eq!((d.path.as_str(), d.field.as_str()), ("/a-c", "readability"));
        assert_eq!(first_path_difference(a.clone(), a), None);
    }
}
