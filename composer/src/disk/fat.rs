//! FAT32, written whole: the ESP of a new disk image.
//!
//! DESIGN.md records that the `fatfs` crate writes directories
//! `fsck.fat` flags; this writer lays out everything itself: reserved
//! region with boot sector, FSInfo and their backups, two FATs, then every
//! directory and file in contiguous clusters, sorted, with long names, a
//! fixed date (1980-01-01) and a volume id derived from the content, so
//! the same files give the same bytes.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};

use anyhow::{Context, Result, bail};

const SECTOR: u64 = 512;
const RESERVED: u64 = 32;
const DATE_1980_01_01: u16 = (1 << 5) | 1;
const END: u32 = 0x0FFF_FFFF;
const ATTR_DIR: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LFN: u8 = 0x0F;
const ATTR_VOLUME: u8 = 0x08;

struct Geometry {
    spc: u64,
    fat_sectors: u64,
    clusters: u64,
    total: u64,
}

fn geometry(size: u64) -> Result<Geometry> {
    let total = size / SECTOR;
    for spc in [1u64, 2, 4, 8] {
        let mut fat_sectors = 1;
        loop {
            let data = total.saturating_sub(RESERVED + 2 * fat_sectors);
            let clusters = data / spc;
            let need = ((clusters + 2) * 4).div_ceil(SECTOR);
            if need <= fat_sectors {
                if (65_525..0x0FFF_FFF5).contains(&clusters) {
                    return Ok(Geometry {
                        spc,
                        fat_sectors,
                        clusters,
                        total,
                    });
                }
                break;
            }
            fat_sectors = need;
        }
    }
    bail!(
        "{} MiB is too small or too large for a FAT32 ESP; use 64 MiB to 2 TiB",
        size >> 20
    )
}

/// One node of the directory tree being laid out.
#[derive(Default)]
struct Dir {
    dirs: BTreeMap<String, Dir>,
    /// name → (content, first cluster).
    files: BTreeMap<String, (Vec<u8>, u32)>,
    cluster: u32,
}

fn valid_short_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || "$%'-_@~`!(){}^#&".contains(c)
}

/// The 8.3 name, if `name` is one exactly (no long name needed).
fn exact_short(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    if base.is_empty()
        || base.len() > 8
        || ext.len() > 3
        || !base.chars().chain(ext.chars()).all(valid_short_char)
    {
        return None;
    }
    let mut s = [b' '; 11];
    s[..base.len()].copy_from_slice(base.as_bytes());
    s[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(s)
}

fn short_alias(name: &str, n: usize) -> [u8; 11] {
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (b, e),
        _ => (name, ""),
    };
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != ' ' && *c != '.')
            .map(|c| c.to_ascii_uppercase())
            .map(|c| if valid_short_char(c) { c } else { '_' })
            .collect()
    };
    let tail = format!("~{n}");
    let b: String = clean(base).chars().take(8 - tail.len()).collect();
    let e: String = clean(ext).chars().take(3).collect();
    let mut s = [b' '; 11];
    let full = format!("{b}{tail}");
    s[..full.len()].copy_from_slice(full.as_bytes());
    s[8..8 + e.len()].copy_from_slice(e.as_bytes());
    s
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, b| sum.rotate_right(1).wrapping_add(*b))
}

fn entry(short: &[u8; 11], attr: u8, cluster: u32, size: u32) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[0..11].copy_from_slice(short);
    e[11] = attr;
    e[16..18].copy_from_slice(&DATE_1980_01_01.to_le_bytes());
    e[18..20].copy_from_slice(&DATE_1980_01_01.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[24..26].copy_from_slice(&DATE_1980_01_01.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// Directory entries for one named child: long-name entries (last part
/// first), then the 8.3 entry.
fn named_entries(
    name: &str,
    short: [u8; 11],
    attr: u8,
    cluster: u32,
    size: u32,
    out: &mut Vec<u8>,
) {
    if exact_short(name).is_none() {
        let units: Vec<u16> = name.encode_utf16().collect();
        let parts = units.len().div_ceil(13);
        let sum = lfn_checksum(&short);
        for i in (0..parts).rev() {
            let mut e = [0u8; 32];
            e[0] = (i as u8 + 1) | if i == parts - 1 { 0x40 } else { 0 };
            e[11] = ATTR_LFN;
            e[13] = sum;
            let mut chars = [0xFFFFu16; 13];
            for (k, slot) in chars.iter_mut().enumerate() {
                let idx = i * 13 + k;
                if idx < units.len() {
                    *slot = units[idx];
                } else if idx == units.len() {
                    *slot = 0;
                }
            }
            let offsets = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
            for (k, off) in offsets.iter().enumerate() {
                e[*off..off + 2].copy_from_slice(&chars[k].to_le_bytes());
            }
            out.extend(e);
        }
    }
    out.extend(entry(&short, attr, cluster, size));
}

/// The bytes of a directory; needs its children's clusters assigned.
fn dir_bytes(d: &Dir, parent_cluster: u32, is_root: bool, label: &[u8; 11]) -> Vec<u8> {
    let mut out = Vec::new();
    if is_root {
        out.extend(entry(label, ATTR_VOLUME, 0, 0));
    } else {
        out.extend(entry(b".          ", ATTR_DIR, d.cluster, 0));
        out.extend(entry(b"..         ", ATTR_DIR, parent_cluster, 0));
    }
    let mut used: Vec<[u8; 11]> = Vec::new();
    let mut short_for = |name: &str| -> [u8; 11] {
        if let Some(s) = exact_short(name) {
            used.push(s);
            return s;
        }
        let mut n = 1;
        loop {
            let s = short_alias(name, n);
            if !used.contains(&s) {
                used.push(s);
                return s;
            }
            n += 1;
        }
    };
    // Files and directories in one sorted sequence of names.
    let mut names: Vec<(&String, bool)> = d
        .dirs
        .keys()
        .map(|k| (k, true))
        .chain(d.files.keys().map(|k| (k, false)))
        .collect();
    names.sort();
    for (name, is_dir) in names {
        let s = short_for(name);
        if is_dir {
            named_entries(name, s, ATTR_DIR, d.dirs[name].cluster, 0, &mut out);
        } else {
            let (data, cluster) = &d.files[name];
            named_entries(name, s, ATTR_ARCHIVE, *cluster, data.len() as u32, &mut out);
        }
    }
    out
}

fn dir_size(d: &Dir, is_root: bool) -> usize {
    let entries_for = |name: &str| {
        1 + if exact_short(name).is_some() {
            0
        } else {
            name.encode_utf16().count().div_ceil(13)
        }
    };
    let own = if is_root { 1 } else { 2 };
    (own + d.dirs.keys().map(|n| entries_for(n)).sum::<usize>()
        + d.files.keys().map(|n| entries_for(n)).sum::<usize>())
        * 32
}

struct Layout {
    cluster_bytes: u64,
    next: u32,
    /// (first cluster, cluster count) of every chain, in allocation order.
    chains: Vec<(u32, u32)>,
}

impl Layout {
    fn alloc(&mut self, bytes: u64) -> u32 {
        let n = bytes.div_ceil(self.cluster_bytes).max(1) as u32;
        let first = self.next;
        self.next += n;
        self.chains.push((first, n));
        first
    }
}

/// Assigns clusters: each directory, then its files, then its
/// subdirectories, in sorted order.
fn assign(d: &mut Dir, is_root: bool, l: &mut Layout) {
    d.cluster = if is_root {
        d.cluster
    } else {
        l.alloc(dir_size(d, false) as u64)
    };
    for (data, cluster) in d.files.values_mut() {
        *cluster = if data.is_empty() {
            0
        } else {
            l.alloc(data.len() as u64)
        };
    }
    for sub in d.dirs.values_mut() {
        assign(sub, false, l);
    }
}

fn write_tree<W: Write + Seek>(
    w: &mut W,
    d: &Dir,
    parent: u32,
    is_root: bool,
    label: &[u8; 11],
    cluster_off: &dyn Fn(u32) -> u64,
) -> Result<()> {
    let bytes = dir_bytes(d, if parent == 2 { 0 } else { parent }, is_root, label);
    w.seek(SeekFrom::Start(cluster_off(d.cluster)))?;
    w.write_all(&bytes)?;
    for (data, cluster) in d.files.values() {
        if !data.is_empty() {
            w.seek(SeekFrom::Start(cluster_off(*cluster)))?;
            w.write_all(data)?;
        }
    }
    for sub in d.dirs.values() {
        write_tree(w, sub, d.cluster, false, label, cluster_off)?;
    }
    Ok(())
}

/// Formats `size` bytes at `offset` of `w` as FAT32 holding `files`
/// (paths like `EFI/BOOT/BOOTX64.EFI`; directories are implied). The region
/// must read as zeros beforehand (a new sparse image does).
pub fn write<W: Write + Seek>(
    w: &mut W,
    offset: u64,
    size: u64,
    label: &str,
    files: &[(String, Vec<u8>)],
) -> Result<()> {
    let g = geometry(size)?;
    let mut root = Dir {
        cluster: 2,
        ..Dir::default()
    };
    for (path, data) in files {
        let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let name = parts
            .pop()
            .ok_or_else(|| anyhow::anyhow!("empty path in the ESP"))?;
        let mut d = &mut root;
        for p in parts {
            d = d.dirs.entry(p.to_string()).or_default();
        }
        if d.files
            .insert(name.to_string(), (data.clone(), 0))
            .is_some()
        {
            bail!("{path} is given twice for the ESP");
        }
    }
    let cluster_bytes = g.spc * SECTOR;
    let mut l = Layout {
        cluster_bytes,
        next: 2,
        chains: Vec::new(),
    };
    let root_first = l.alloc(dir_size(&root, true) as u64);
    debug_assert_eq!(root_first, 2);
    assign(&mut root, true, &mut l);
    let used = (l.next - 2) as u64;
    if used > g.clusters {
        bail!(
            "the ESP files need {} MiB but the ESP holds {} MiB; raise [image] esp_size",
            (used * cluster_bytes) >> 20,
            (g.clusters * cluster_bytes) >> 20
        );
    }

    let mut fat = vec![0u8; (g.fat_sectors * SECTOR) as usize];
    let mut set =
        |c: u32, v: u32| fat[c as usize * 4..c as usize * 4 + 4].copy_from_slice(&v.to_le_bytes());
    set(0, 0x0FFF_FFF8);
    set(1, END);
    for (first, n) in &l.chains {
        for k in 0..*n {
            let c = first + k;
            set(c, if k + 1 == *n { END } else { c + 1 });
        }
    }

    let mut label11 = [b' '; 11];
    for (i, b) in label.bytes().take(11).enumerate() {
        label11[i] = b.to_ascii_uppercase();
    }
    // The volume id is derived from the content, like every id pak makes.
    let mut h = sha2::Sha256::new();
    use sha2::Digest;
    for (p, d) in files {
        h.update(p.as_bytes());
        h.update(d);
    }
    let volume_id = u32::from_le_bytes(h.finalize()[..4].try_into()?);

    let mut bs = vec![0u8; SECTOR as usize];
    bs[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    bs[3..11].copy_from_slice(b"PAK     ");
    bs[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    bs[13] = g.spc as u8;
    bs[14..16].copy_from_slice(&(RESERVED as u16).to_le_bytes());
    bs[16] = 2;
    bs[21] = 0xF8;
    bs[24..26].copy_from_slice(&32u16.to_le_bytes());
    bs[26..28].copy_from_slice(&64u16.to_le_bytes());
    bs[28..32].copy_from_slice(&((offset / SECTOR) as u32).to_le_bytes());
    bs[32..36].copy_from_slice(&(g.total as u32).to_le_bytes());
    bs[36..40].copy_from_slice(&(g.fat_sectors as u32).to_le_bytes());
    bs[44..48].copy_from_slice(&2u32.to_le_bytes());
    bs[48..50].copy_from_slice(&1u16.to_le_bytes());
    bs[50..52].copy_from_slice(&6u16.to_le_bytes());
    bs[64] = 0x80;
    bs[66] = 0x29;
    bs[67..71].copy_from_slice(&volume_id.to_le_bytes());
    bs[71..82].copy_from_slice(&label11);
    bs[82..90].copy_from_slice(b"FAT32   ");
    bs[510] = 0x55;
    bs[511] = 0xAA;
    let mut info = vec![0u8; SECTOR as usize];
    info[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    info[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    info[488..492].copy_from_slice(&((g.clusters - used) as u32).to_le_bytes());
    info[492..496].copy_from_slice(&l.next.to_le_bytes());
    info[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    let mut third = vec![0u8; SECTOR as usize];
    third[510] = 0x55;
    third[511] = 0xAA;
    for base in [0u64, 6] {
        w.seek(SeekFrom::Start(offset + base * SECTOR))?;
        w.write_all(&bs)?;
        w.write_all(&info)?;
        w.write_all(&third)?;
    }
    for copy in 0..2 {
        w.seek(SeekFrom::Start(
            offset + (RESERVED + copy * g.fat_sectors) * SECTOR,
        ))?;
        w.write_all(&fat)?;
    }
    let data_start = offset + (RESERVED + 2 * g.fat_sectors) * SECTOR;
    let cluster_off = move |c: u32| data_start + (c as u64 - 2) * cluster_bytes;
    write_tree(w, &root, 0, true, &label11, &cluster_off)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsck_and_mtools_accept_it() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("esp.img");
        let size = 128u64 << 20;
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(size).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let files = vec![
            ("EFI/BOOT/BOOTX64.EFI".to_string(), b"efi".to_vec()),
            (
                "loader/loader.conf".to_string(),
                b"default pak-*\n".to_vec(),
            ),
            (
                "loader/entries/pak-a-1+3.conf".to_string(),
                b"title a\n".to_vec(),
            ),
            ("pak/a/vmlinuz".to_string(), big.clone()),
            ("pak/a/empty".to_string(), Vec::new()),
            (
                "a-rather-long-file-name-that-needs-three-lfn-entries.txt".to_string(),
                b"x".to_vec(),
            ),
            (
                "a-rather-long-file-name-that-needs-three-lfn-entries.txu".to_string(),
                b"y".to_vec(),
            ),
        ];
        let mut w = std::io::BufWriter::new(f);
        write(&mut w, 0, size, "ESP", &files).unwrap();
        drop(w);
        let fsck = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(&img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&fsck.stdout).into_owned()
            + &String::from_utf8_lossy(&fsck.stderr);
        assert!(fsck.status.success(), "{text}");
        let ls = std::process::Command::new("mdir")
            .args(["-/", "-b", "-i"])
            .arg(&img)
            .arg("::")
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&ls.stdout);
        assert!(
            listing.contains("::/loader/entries/pak-a-1+3.conf"),
            "{listing}"
        );
        assert!(listing.contains("::/EFI/BOOT/BOOTX64.EFI"), "{listing}");
        let t = std::process::Command::new("mtype")
            .arg("-i")
            .arg(&img)
            .arg("::/pak/a/vmlinuz")
            .output()
            .unwrap();
        assert!(t.stdout == big, "content read back differs");
        let again = dir.path().join("again.img");
        let f = std::fs::File::create(&again).unwrap();
        f.set_len(size).unwrap();
        let mut w = std::io::BufWriter::new(f);
        write(&mut w, 0, size, "ESP", &files).unwrap();
        drop(w);
        assert!(
            std::fs::read(&img).unwrap() == std::fs::read(&again).unwrap(),
            "reproducible"
        );
    }
}

/// A FAT32 filesystem opened in place (an image file at an offset, or a
/// block device), for the few edits the ESP needs after it is written:
/// read a file, add a file, rename, remove. Both FATs and the FSInfo free
/// count are kept in step, so `fsck.fat` stays clean after every edit.
pub struct Volume<F> {
    f: F,
    offset: u64,
    bytes_per_sector: u64,
    cluster_bytes: u64,
    fat_start: u64,
    fat_bytes: u64,
    fats: u64,
    data_start: u64,
    root: u32,
    clusters: u32,
}

/// One directory entry, with where its slots are (for rename and remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
    pub cluster: u32,
    pub size: u32,
    /// Absolute byte positions of its long-name slots and its 8.3 slot.
    slots: Vec<u64>,
}

impl<F: std::io::Read + Write + Seek> Volume<F> {
    pub fn open(mut f: F, offset: u64) -> Result<Volume<F>> {
        let mut bs = [0u8; 512];
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut bs)?;
        if bs[510..512] != [0x55, 0xAA] || &bs[82..87] != b"FAT32" {
            bail!("no FAT32 file system here (is this the ESP of a pak disk?)");
        }
        let u16_at = |o: usize| u16::from_le_bytes([bs[o], bs[o + 1]]) as u64;
        let u32_at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]) as u64;
        let bps = u16_at(11);
        let spc = bs[13] as u64;
        let reserved = u16_at(14);
        let fats = bs[16] as u64;
        let total = u32_at(32);
        let fat_sectors = u32_at(36);
        if bps != 512 || spc == 0 || fats == 0 {
            bail!("unsupported FAT32 geometry");
        }
        let data_start = offset + (reserved + fats * fat_sectors) * bps;
        let clusters = ((total - reserved - fats * fat_sectors) / spc) as u32;
        Ok(Volume {
            f,
            offset,
            bytes_per_sector: bps,
            cluster_bytes: spc * bps,
            fat_start: offset + reserved * bps,
            fat_bytes: fat_sectors * bps,
            fats,
            data_start,
            root: u32_at(44) as u32,
            clusters,
        })
    }

    fn cluster_pos(&self, c: u32) -> u64 {
        self.data_start + (c as u64 - 2) * self.cluster_bytes
    }

    fn fat_get(&mut self, c: u32) -> Result<u32> {
        let mut b = [0u8; 4];
        self.f
            .seek(SeekFrom::Start(self.fat_start + c as u64 * 4))?;
        self.f.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b) & 0x0FFF_FFFF)
    }

    fn fat_set(&mut self, c: u32, v: u32) -> Result<()> {
        for k in 0..self.fats {
            self.f.seek(SeekFrom::Start(
                self.fat_start + k * self.fat_bytes + c as u64 * 4,
            ))?;
            self.f.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    }

    fn chain(&mut self, first: u32) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut c = first;
        while (2..0x0FFF_FFF8).contains(&c) {
            if out.len() as u32 > self.clusters {
                bail!("a FAT chain loops: the ESP is corrupt");
            }
            out.push(c);
            c = self.fat_get(c)?;
        }
        Ok(out)
    }

    fn entries(&mut self, dir: u32) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        let mut lfn: Vec<(u8, Vec<u16>)> = Vec::new();
        let mut lfn_sum: Vec<u8> = Vec::new();
        let mut slots = Vec::new();
        for c in self.chain(dir)? {
            let pos = self.cluster_pos(c);
            let mut buf = vec![0u8; self.cluster_bytes as usize];
            self.f.seek(SeekFrom::Start(pos))?;
            self.f.read_exact(&mut buf)?;
            for (i, e) in buf.chunks(32).enumerate() {
                let at = pos + i as u64 * 32;
                match e[0] {
                    0x00 => return Ok(out),
                    0xE5 => {
                        lfn.clear();
                        lfn_sum.clear();
                        slots.clear();
                        continue;
                    }
                    _ => {}
                }
                if e[11] == ATTR_LFN {
                    let mut units = Vec::new();
                    for off in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30] {
                        units.push(u16::from_le_bytes([e[off], e[off + 1]]));
                    }
                    if e[0] & 0x40 != 0 {
                        // The first slot of a new sequence: whatever came
                        // before belonged to no entry.
                        lfn.clear();
                        slots.clear();
                    }
                    lfn.push((e[0] & 0x1F, units));
                    lfn_sum.push(e[13]);
                    slots.push(at);
                    continue;
                }
                if e[11] & ATTR_VOLUME != 0 || e[0] == b'.' {
                    lfn.clear();
                    lfn_sum.clear();
                    slots.clear();
                    continue;
                }
                // A long name counts only when it is complete (ordinals
                // n..1) and made for this 8.3 entry (checksum); leftovers
                // of an interrupted edit are ignored, as firmware does.
                let short: [u8; 11] = e[0..11].try_into().expect("11 bytes");
                let complete = lfn
                    .iter()
                    .rev()
                    .enumerate()
                    .all(|(i, (n, _))| *n as usize == i + 1)
                    && lfn_sum.iter().all(|c| *c == lfn_checksum(&short));
                if !complete {
                    lfn.clear();
                    slots.clear();
                }
                lfn_sum.clear();
                let name = if lfn.is_empty() {
                    let base = String::from_utf8_lossy(&e[0..8]).trim_end().to_string();
                    let ext = String::from_utf8_lossy(&e[8..11]).trim_end().to_string();
                    if ext.is_empty() {
                        base
                    } else {
                        format!("{base}.{ext}")
                    }
                } else {
                    lfn.sort_by_key(|(n, _)| *n);
                    let units: Vec<u16> = lfn
                        .iter()
                        .flat_map(|(_, u)| u.iter().copied())
                        .take_while(|u| *u != 0)
                        .collect();
                    String::from_utf16_lossy(&units)
                };
                slots.push(at);
                let cluster = (u16::from_le_bytes([e[20], e[21]]) as u32) << 16
                    | u16::from_le_bytes([e[26], e[27]]) as u32;
                out.push(DirEntry {
                    name,
                    is_dir: e[11] & ATTR_DIR != 0,
                    cluster,
                    size: u32::from_le_bytes([e[28], e[29], e[30], e[31]]),
                    slots: std::mem::take(&mut slots),
                });
                lfn.clear();
            }
        }
        Ok(out)
    }

    /// The first cluster of a directory (`""` is the root).
    fn dir_cluster(&mut self, dir: &str) -> Result<u32> {
        let mut c = self.root;
        for comp in dir.split('/').filter(|s| !s.is_empty()) {
            let e = self
                .entries(c)?
                .into_iter()
                .find(|e| e.is_dir && e.name.eq_ignore_ascii_case(comp));
            c = e
                .with_context(|| format!("no directory {dir} on the ESP"))?
                .cluster;
        }
        Ok(c)
    }

    /// The directory holding `path` (`a/b/c` → the cluster of `a/b`) and
    /// the last component.
    fn parent<'p>(&mut self, path: &'p str) -> Result<(u32, &'p str)> {
        let (dir, name) = path
            .trim_matches('/')
            .rsplit_once('/')
            .unwrap_or(("", path.trim_matches('/')));
        Ok((self.dir_cluster(dir)?, name))
    }

    /// The entries of a directory (`""` is the root).
    pub fn list(&mut self, dir: &str) -> Result<Vec<DirEntry>> {
        let c = self.dir_cluster(dir)?;
        self.entries(c)
    }

    pub fn find(&mut self, path: &str) -> Result<Option<DirEntry>> {
        let (dir, name) = self.parent(path)?;
        Ok(self
            .entries(dir)?
            .into_iter()
            .find(|e| e.name.eq_ignore_ascii_case(name)))
    }

    pub fn read(&mut self, path: &str) -> Result<Vec<u8>> {
        let e = self
            .find(path)?
            .with_context(|| format!("no file {path} on the ESP"))?;
        let mut out = Vec::with_capacity(e.size as usize);
        for c in self.chain(e.cluster)? {
            let mut buf = vec![0u8; self.cluster_bytes as usize];
            self.f.seek(SeekFrom::Start(self.cluster_pos(c)))?;
            self.f.read_exact(&mut buf)?;
            out.extend(buf);
        }
        out.truncate(e.size as usize);
        Ok(out)
    }

    /// The first FAT, whole.
    fn read_fat(&mut self) -> Result<Vec<u8>> {
        let mut fat = vec![0u8; self.fat_bytes as usize];
        self.f.seek(SeekFrom::Start(self.fat_start))?;
        self.f.read_exact(&mut fat)?;
        Ok(fat)
    }

    fn count_free(&self, fat: &[u8]) -> usize {
        (2..self.clusters + 2)
            .filter(|c| fat[*c as usize * 4..*c as usize * 4 + 4] == [0, 0, 0, 0])
            .count()
    }

    fn free_clusters(&mut self, n: usize) -> Result<Vec<u32>> {
        let fat = self.read_fat()?;
        let free: Vec<u32> = (2..self.clusters + 2)
            .filter(|c| fat[*c as usize * 4..*c as usize * 4 + 4] == [0, 0, 0, 0])
            .take(n)
            .collect();
        if free.len() < n {
            bail!(
                "the ESP is full: {} KiB more are needed; raise [image] esp_size",
                n as u64 * self.cluster_bytes / 1024
            );
        }
        Ok(free)
    }

    /// Free directory slots for `n` entries in `dir`, growing it if needed.
    fn slots_for(&mut self, dir: u32, n: usize) -> Result<Vec<u64>> {
        let per = (self.cluster_bytes / 32) as usize;
        let chain = self.chain(dir)?;
        let mut run = Vec::new();
        for &c in &chain {
            let pos = self.cluster_pos(c);
            let mut buf = vec![0u8; self.cluster_bytes as usize];
            self.f.seek(SeekFrom::Start(pos))?;
            self.f.read_exact(&mut buf)?;
            for i in 0..per {
                if buf[i * 32] == 0x00 || buf[i * 32] == 0xE5 {
                    run.push(pos + i as u64 * 32);
                    if run.len() == n {
                        return Ok(run);
                    }
                } else {
                    run.clear();
                }
            }
        }
        // Grow the directory by a zeroed cluster.
        let new = self.free_clusters(1)?[0];
        let last = *chain.last().expect("a directory has a cluster");
        let pos = self.cluster_pos(new);
        self.f.seek(SeekFrom::Start(pos))?;
        self.f.write_all(&vec![0u8; self.cluster_bytes as usize])?;
        self.fat_set(new, END)?;
        self.fat_set(last, new)?;
        run.extend((0..n - run.len()).map(|i| pos + i as u64 * 32));
        Ok(run)
    }

    fn put_entries(
        &mut self,
        dir: u32,
        name: &str,
        attr: u8,
        cluster: u32,
        size: u32,
    ) -> Result<()> {
        let taken: Vec<[u8; 11]> = {
            let mut v = Vec::new();
            for e in self.entries(dir)? {
                let mut b = [0u8; 11];
                let mut s = [0u8; 32];
                self.f
                    .seek(SeekFrom::Start(*e.slots.last().expect("8.3 slot")))?;
                self.f.read_exact(&mut s)?;
                b.copy_from_slice(&s[0..11]);
                v.push(b);
            }
            v
        };
        let short = exact_short(name).unwrap_or_else(|| {
            (1..)
                .map(|n| short_alias(name, n))
                .find(|s| !taken.contains(s))
                .expect("some alias is free")
        });
        let mut bytes = Vec::new();
        named_entries(name, short, attr, cluster, size, &mut bytes);
        let slots = self.slots_for(dir, bytes.len() / 32)?;
        for (k, at) in slots.iter().enumerate() {
            self.f.seek(SeekFrom::Start(*at))?;
            self.f.write_all(&bytes[k * 32..k * 32 + 32])?;
        }
        Ok(())
    }

    /// Adds a new file (the name must be free). Data and the FAT chain are
    /// written before the directory entry, so a cut leaves no entry that
    /// points at unwritten data.
    pub fn create(&mut self, path: &str, data: &[u8]) -> Result<()> {
        if self.find(path)?.is_some() {
            bail!("{path} already exists on the ESP");
        }
        let (dir, name) = self.parent(path)?;
        let n = data.len().div_ceil(self.cluster_bytes as usize);
        let clusters = self.free_clusters(n)?;
        for (k, c) in clusters.iter().enumerate() {
            let chunk = &data[k * self.cluster_bytes as usize
                ..((k + 1) * self.cluster_bytes as usize).min(data.len())];
            self.f.seek(SeekFrom::Start(self.cluster_pos(*c)))?;
            self.f.write_all(chunk)?;
            self.fat_set(*c, clusters.get(k + 1).copied().unwrap_or(END))?;
        }
        self.f.flush()?;
        self.put_entries(
            dir,
            name,
            ATTR_ARCHIVE,
            clusters.first().copied().unwrap_or(0),
            data.len() as u32,
        )?;
        self.update_fsinfo()
    }

    /// Renames within one directory: the new name is written before the
    /// old one is removed, so a cut leaves the file under one name or both.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let e = self
            .find(from)?
            .with_context(|| format!("no file {from} on the ESP"))?;
        if self.find(to)?.is_some() {
            bail!("{to} already exists on the ESP");
        }
        let (dir, name) = self.parent(to)?;
        let (from_dir, _) = self.parent(from)?;
        let attr = if e.is_dir { ATTR_DIR } else { ATTR_ARCHIVE };
        if from_dir == dir && self.rename_in_place(dir, &e, name, attr)? {
            return Ok(());
        }
        self.put_entries(dir, name, attr, e.cluster, e.size)?;
        self.f.flush()?;
        self.unlink(&e)
    }

    /// Rewrites an entry's name over the tail of its own slots in a single
    /// write, when the new name needs no more slots and they share a
    /// sector: a cut leaves the old name or the new one, never both (the
    /// renames boot counting and mark-good make always shrink the name).
    fn rename_in_place(&mut self, dir: u32, e: &DirEntry, name: &str, attr: u8) -> Result<bool> {
        let taken: Vec<[u8; 11]> = {
            let mut v = Vec::new();
            for other in self.entries(dir)? {
                if other.slots == e.slots {
                    continue;
                }
                let mut s = [0u8; 32];
                self.f
                    .seek(SeekFrom::Start(*other.slots.last().expect("8.3 slot")))?;
                self.f.read_exact(&mut s)?;
                v.push(s[0..11].try_into().expect("11 bytes"));
            }
            v
        };
        let short = exact_short(name).unwrap_or_else(|| {
            (1..)
                .map(|n| short_alias(name, n))
                .find(|s| !taken.contains(s))
                .expect("some alias is free")
        });
        let mut bytes = Vec::new();
        named_entries(name, short, attr, e.cluster, e.size, &mut bytes);
        let n = bytes.len() / 32;
        if n > e.slots.len() {
            return Ok(false);
        }
        let tail = &e.slots[e.slots.len() - n..];
        let one_sector = tail.windows(2).all(|w| w[1] == w[0] + 32)
            && tail[0] / self.bytes_per_sector == tail[n - 1] / self.bytes_per_sector;
        if !one_sector {
            return Ok(false);
        }
        self.f.seek(SeekFrom::Start(tail[0]))?;
        self.f.write_all(&bytes)?;
        self.f.flush()?;
        for at in e.slots[..e.slots.len() - n].iter().rev() {
            self.f.seek(SeekFrom::Start(*at))?;
            self.f.write_all(&[0xE5])?;
        }
        self.f.flush()?;
        Ok(true)
    }

    /// Removes a file: its entry first, then its clusters are freed.
    pub fn remove(&mut self, path: &str) -> Result<()> {
        let e = self
            .find(path)?
            .with_context(|| format!("no file {path} on the ESP"))?;
        self.unlink(&e)?;
        for c in self.chain(e.cluster)? {
            self.fat_set(c, 0)?;
        }
        self.update_fsinfo()
    }

    /// Deletes an entry's slots, the 8.3 slot first: that one write is what
    /// removes the file; long-name slots left by a cut after it are ignored.
    fn unlink(&mut self, e: &DirEntry) -> Result<()> {
        for at in e.slots.iter().rev() {
            self.f.seek(SeekFrom::Start(*at))?;
            self.f.write_all(&[0xE5])?;
        }
        self.f.flush()?;
        Ok(())
    }

    /// Creates a directory (its parent must exist): a zeroed cluster with
    /// `.` and `..`, then the entry in the parent.
    pub fn create_dir(&mut self, path: &str) -> Result<()> {
        if self.find(path)?.is_some() {
            bail!("{path} already exists on the ESP");
        }
        let (parent, name) = self.parent(path)?;
        let c = self.free_clusters(1)?[0];
        let mut bytes = vec![0u8; self.cluster_bytes as usize];
        bytes[..32].copy_from_slice(&entry(b".          ", ATTR_DIR, c, 0));
        // `..` of a directory in the root names cluster 0.
        let up = if parent == self.root { 0 } else { parent };
        bytes[32..64].copy_from_slice(&entry(b"..         ", ATTR_DIR, up, 0));
        self.f.seek(SeekFrom::Start(self.cluster_pos(c)))?;
        self.f.write_all(&bytes)?;
        self.fat_set(c, END)?;
        self.f.flush()?;
        self.put_entries(parent, name, ATTR_DIR, c, 0)?;
        self.update_fsinfo()
    }

    /// Makes `to` hold the content of `from`, and `from` disappear, so that
    /// a cut at any point leaves `to` with its complete old or complete new
    /// content: (1) `from`'s entry is deleted, its clusters kept; (2) `to`'s
    /// 8.3 entry is repointed at them, one 32-byte write inside a sector;
    /// (3) `to`'s old clusters are freed. A cut after (1) leaves clusters
    /// no entry reaches; [`Volume::reclaim_lost_clusters`] frees them.
    pub fn replace(&mut self, from: &str, to: &str) -> Result<()> {
        let src = self
            .find(from)?
            .with_context(|| format!("no file {from} on the ESP"))?;
        let Some(dst) = self.find(to)? else {
            return self.rename(from, to);
        };
        if src.is_dir || dst.is_dir {
            bail!("cannot replace {to} with {from}: only files can be replaced");
        }
        self.unlink(&src)?;
        let at = *dst.slots.last().expect("8.3 slot");
        let mut e = [0u8; 32];
        self.f.seek(SeekFrom::Start(at))?;
        self.f.read_exact(&mut e)?;
        e[20..22].copy_from_slice(&((src.cluster >> 16) as u16).to_le_bytes());
        e[26..28].copy_from_slice(&(src.cluster as u16).to_le_bytes());
        e[28..32].copy_from_slice(&src.size.to_le_bytes());
        self.f.seek(SeekFrom::Start(at))?;
        self.f.write_all(&e)?;
        self.f.flush()?;
        for c in self.chain(dst.cluster)? {
            self.fat_set(c, 0)?;
        }
        self.update_fsinfo()
    }

    /// Frees clusters that are allocated but that no directory entry
    /// reaches, and clears long-name slots that belong to no entry, as a
    /// cut in the middle of an edit can leave. Returns how many clusters
    /// it freed.
    pub fn reclaim_lost_clusters(&mut self) -> Result<u32> {
        let mut reachable = vec![false; self.clusters as usize + 2];
        let mut orphans = 0;
        let mut dirs = vec![self.root];
        let mut seen = std::collections::HashSet::new();
        while let Some(d) = dirs.pop() {
            if !seen.insert(d) {
                continue;
            }
            let chain = self.chain(d)?;
            for c in &chain {
                reachable[*c as usize] = true;
            }
            let entries = self.entries(d)?;
            // Long-name slots that belong to no entry: what a cut in the
            // middle of adding or removing an entry leaves behind.
            let owned: std::collections::HashSet<u64> = entries
                .iter()
                .flat_map(|e| e.slots.iter().copied())
                .collect();
            'scan: for c in chain {
                let pos = self.cluster_pos(c);
                let mut buf = vec![0u8; self.cluster_bytes as usize];
                self.f.seek(SeekFrom::Start(pos))?;
                self.f.read_exact(&mut buf)?;
                for (i, e) in buf.chunks(32).enumerate() {
                    let at = pos + i as u64 * 32;
                    if e[0] == 0 {
                        break 'scan;
                    }
                    if e[0] != 0xE5 && e[11] == ATTR_LFN && !owned.contains(&at) {
                        self.f.seek(SeekFrom::Start(at))?;
                        self.f.write_all(&[0xE5])?;
                        orphans += 1;
                    }
                }
            }
            for e in entries {
                if e.cluster < 2 || e.cluster as usize >= reachable.len() {
                    continue;
                }
                if e.is_dir {
                    dirs.push(e.cluster);
                } else {
                    for c in self.chain(e.cluster)? {
                        reachable[c as usize] = true;
                    }
                }
            }
        }
        let fat = self.read_fat()?;
        let mut freed = 0;
        for c in 2..self.clusters + 2 {
            let i = c as usize * 4;
            if fat[i..i + 4] != [0, 0, 0, 0] && !reachable[c as usize] {
                self.fat_set(c, 0)?;
                freed += 1;
            }
        }
        if orphans > 0 || freed > 0 {
            self.f.flush()?;
        }
        // The free count a cut may have left stale.
        self.update_fsinfo()?;
        Ok(freed)
    }

    /// Bytes free for file data.
    pub fn free_bytes(&mut self) -> Result<u64> {
        let fat = self.read_fat()?;
        let free = self.count_free(&fat) as u64;
        Ok(free * self.cluster_bytes)
    }

    /// Bytes a file of `len` bytes takes, in whole clusters.
    pub fn footprint(&self, len: u64) -> u64 {
        len.div_ceil(self.cluster_bytes) * self.cluster_bytes
    }

    fn update_fsinfo(&mut self) -> Result<()> {
        let fat = self.read_fat()?;
        let free = self.count_free(&fat) as u32;
        for sector in [1u64, 7] {
            self.f.seek(SeekFrom::Start(
                self.offset + sector * self.bytes_per_sector + 488,
            ))?;
            self.f.write_all(&free.to_le_bytes())?;
            self.f.write_all(&0xFFFF_FFFFu32.to_le_bytes())?;
        }
        self.f.flush()?;
        Ok(())
    }

    /// The device underneath, for writes outside the ESP (a slot).
    pub fn device(&mut self) -> &mut F {
        &mut self.f
    }

    pub fn into_inner(self) -> F {
        self.f
    }
}

#[cfg(test)]
mod edit_tests {
    use super::*;

    fn fsck(img: &std::path::Path) {
        let out = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
    }

    #[test]
    fn edits_keep_fsck_clean_and_mtools_agree() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("esp.img");
        let size = 128u64 << 20;
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(size).unwrap();
        let files = vec![
            (
                "loader/entries/pak-a-1+3.conf".to_string(),
                b"title a\n".to_vec(),
            ),
            ("pak/a/vmlinuz".to_string(), vec![1u8; 10_000]),
        ];
        let mut w = std::io::BufWriter::new(f);
        write(&mut w, 0, size, "ESP", &files).unwrap();
        drop(w);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let mut v = Volume::open(f, 0).unwrap();
        assert_eq!(
            v.read("loader/entries/pak-a-1+3.conf").unwrap(),
            b"title a\n"
        );
        let kernel: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        v.create("pak/b/../b-kernel", b"x").unwrap_err();
        v.create("pak/a/vmlinuz-new", &kernel).unwrap();
        v.create("loader/entries/pak-b-2+3.conf", b"title b\n")
            .unwrap();
        v.rename(
            "loader/entries/pak-a-1+3.conf",
            "loader/entries/pak-a-1.conf",
        )
        .unwrap();
        v.remove("pak/a/vmlinuz").unwrap();
        v.create_dir("pak/b").unwrap();
        v.create("pak/b/x.tmp", b"new contents").unwrap();
        v.create("pak/b/x", &kernel).unwrap();
        v.replace("pak/b/x.tmp", "pak/b/x").unwrap();
        assert_eq!(v.read("pak/b/x").unwrap(), b"new contents");
        assert!(v.find("pak/b/x.tmp").unwrap().is_none());
        // A cut after step (1) of a replace: clusters nobody reaches.
        v.create("pak/b/lost", &kernel).unwrap();
        let lost = v.find("pak/b/lost").unwrap().unwrap();
        v.unlink(&lost).unwrap();
        assert_eq!(
            v.reclaim_lost_clusters().unwrap() as u64,
            v.footprint(kernel.len() as u64) / v.cluster_bytes
        );
        assert_eq!(v.reclaim_lost_clusters().unwrap(), 0);
        for i in 0..80 {
            // Enough long names to grow the directory past one cluster.
            v.create(
                &format!("loader/entries/a-rather-long-entry-name-number-{i}.conf"),
                b"e",
            )
            .unwrap();
        }
        drop(v);
        fsck(&img);
        let ls = std::process::Command::new("mdir")
            .args(["-b", "-i"])
            .arg(&img)
            .arg("::/loader/entries")
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&ls.stdout);
        assert!(
            listing.contains("pak-a-1.conf")
                && listing.contains("pak-b-2+3.conf")
                && !listing.contains("pak-a-1+3.conf"),
            "{listing}"
        );
        assert!(listing.contains("number-79.conf"), "{listing}");
        let t = std::process::Command::new("mtype")
            .arg("-i")
            .arg(&img)
            .arg("::/pak/a/vmlinuz-new")
            .output()
            .unwrap();
        assert!(t.stdout == kernel);
        let f = std::fs::File::open(&img).unwrap();
        let mut v = Volume::open(ReadOnly(f), 0).unwrap();
        let names: Vec<String> = v
            .list("pak/a")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["vmlinuz-new"]);
    }

    /// Lets a read-only file satisfy the editor's bounds in tests.
    struct ReadOnly(std::fs::File);
    impl std::io::Read for ReadOnly {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for ReadOnly {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("read-only"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Seek for ReadOnly {
        fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
            self.0.seek(p)
        }
    }
}
