//! A whole FAT32 volume for a new disk image: reserved region with boot
//! sector, FSInfo and their backups, two FATs, then every directory and
//! file in contiguous clusters, sorted, with long names, a fixed date
//! (1980-01-01) and a volume id derived from the content, so the same
//! files give the same bytes.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};

use anyhow::{Result, bail};

use super::*;

/// One node of the directory tree being laid out.
#[derive(Default)]
struct Dir {
    dirs: BTreeMap<String, Dir>,
    /// name → (content, first cluster).
    files: BTreeMap<String, (Vec<u8>, u32)>,
    cluster: u32,
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
