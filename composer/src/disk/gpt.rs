//! GUID partition tables: written reproducibly (GUIDs derived from
//! content, never random) and read back from image files or devices.

use std::io::{Read, Seek, SeekFrom, Write};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

pub const SECTOR: u64 = 512;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors the partition entry array takes (128 × 128 bytes).
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// Discoverable Partitions Specification: root partition, x86-64.
pub const ROOT_X86_64_TYPE: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// Discoverable Partitions Specification: /var.
pub const VAR_TYPE: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

/// A GUID derived from a seed: stable across builds of the same content,
/// formatted as a version-4 variant-1 GUID so tools accept it.
pub fn derived_guid(seed: &str) -> String {
    let h = Sha256::digest(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&b[0..4]),
        hex::encode(&b[4..6]),
        hex::encode(&b[6..8]),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

/// GUID text to its on-disk mixed-endian bytes.
fn guid_bytes(g: &str) -> Result<[u8; 16]> {
    let hexs: String = g.chars().filter(|c| *c != '-').collect();
    let raw = hex::decode(&hexs).with_context(|| format!("{g} is not a GUID"))?;
    if raw.len() != 16 {
        bail!("{g} is not a GUID");
    }
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    b[4..6].copy_from_slice(&[raw[5], raw[4]]);
    b[6..8].copy_from_slice(&[raw[7], raw[6]]);
    b[8..16].copy_from_slice(&raw[8..16]);
    Ok(b)
}

fn guid_text(b: &[u8]) -> String {
    let raw = [b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]];
    format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&raw[0..4]),
        hex::encode(&raw[4..6]),
        hex::encode(&raw[6..8]),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

fn header(
    disk_guid: &[u8; 16],
    current: u64,
    backup: u64,
    first: u64,
    last: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; 92];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&current.to_le_bytes());
    h[32..40].copy_from_slice(&backup.to_le_bytes());
    h[40..48].copy_from_slice(&first.to_le_bytes());
    h[48..56].copy_from_slice(&last.to_le_bytes());
    h[56..72].copy_from_slice(disk_guid);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h.resize(SECTOR as usize, 0);
    h
}

/// Writes protective MBR, primary and backup GPT for a disk of
/// `total_sectors` to `w`.
pub fn write<W: Write + Seek>(
    w: &mut W,
    total_sectors: u64,
    disk_guid: &str,
    parts: &[Partition],
) -> Result<()> {
    let last_usable = total_sectors - 1 - ENTRY_SECTORS - 1;
    let first_usable = 2 + ENTRY_SECTORS;
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in parts.iter().enumerate() {
        if p.first_lba < first_usable || p.last_lba > last_usable || p.first_lba > p.last_lba {
            bail!(
                "partition {} ({}..{}) does not fit the disk",
                p.label,
                p.first_lba,
                p.last_lba
            );
        }
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&guid_bytes(&p.type_guid)?);
        e[16..32].copy_from_slice(&guid_bytes(&p.guid)?);
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        let name: Vec<u16> = p.label.encode_utf16().collect();
        if name.len() > 36 {
            bail!("partition label {} is longer than 36 characters", p.label);
        }
        for (k, c) in name.iter().enumerate() {
            e[56 + 2 * k..58 + 2 * k].copy_from_slice(&c.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&entries);
    let dg = guid_bytes(disk_guid)?;
    let mut mbr = vec![0u8; SECTOR as usize];
    mbr[446 + 4] = 0xEE;
    mbr[446 + 1..446 + 4].copy_from_slice(&[0x00, 0x02, 0x00]);
    mbr[446 + 5..446 + 8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    mbr[446 + 12..446 + 16]
        .copy_from_slice(&((total_sectors - 1).min(0xFFFF_FFFF) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    let backup_lba = total_sectors - 1;
    let backup_entries = backup_lba - ENTRY_SECTORS;
    w.seek(SeekFrom::Start(0))?;
    w.write_all(&mbr)?;
    w.write_all(&header(
        &dg,
        1,
        backup_lba,
        first_usable,
        last_usable,
        2,
        crc,
    ))?;
    w.write_all(&entries)?;
    w.seek(SeekFrom::Start(backup_entries * SECTOR))?;
    w.write_all(&entries)?;
    w.write_all(&header(
        &dg,
        backup_lba,
        1,
        first_usable,
        last_usable,
        backup_entries,
        crc,
    ))?;
    Ok(())
}

/// Reads the primary GPT.
pub fn read<R: Read + Seek>(r: &mut R) -> Result<Vec<Partition>> {
    match read_table(r)? {
        Ok(parts) => Ok(parts),
        Err(absent) => bail!("{absent}"),
    }
}

/// Reads the primary GPT if there is one: `None` when the disk has no GPT
/// signature at all (a generation file, a blank disk), an error when it
/// has one that cannot be read or is corrupt.
pub fn probe<R: Read + Seek>(r: &mut R) -> Result<Option<Vec<Partition>>> {
    Ok(read_table(r)?.ok())
}

/// The partitions, or (inner `Err`) why there is no GPT to read.
fn read_table<R: Read + Seek>(
    r: &mut R,
) -> Result<std::result::Result<Vec<Partition>, &'static str>> {
    let mut h = [0u8; 92];
    r.seek(SeekFrom::Start(SECTOR))?;
    match r.read_exact(&mut h) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Ok(Err("the disk is too small for a GPT"));
        }
        r => r.context("cannot read the GPT header")?,
    }
    if &h[0..8] != b"EFI PART" {
        return Ok(Err("no GUID partition table: this is not a pak disk"));
    }
    let mut check = h;
    check[16..20].fill(0);
    if crc32fast::hash(&check) != u32::from_le_bytes(h[16..20].try_into()?) {
        bail!("the GPT header checksum is wrong: the partition table is corrupt");
    }
    let lba = u64::from_le_bytes(h[72..80].try_into()?);
    let n = u32::from_le_bytes(h[80..84].try_into()?) as usize;
    let size = u32::from_le_bytes(h[84..88].try_into()?) as usize;
    if n > 1024 || !(128..=4096).contains(&size) {
        bail!("the GPT header is implausible");
    }
    let mut entries = vec![0u8; n * size];
    let at = lba
        .checked_mul(SECTOR)
        .context("the GPT header places its entries past the end of any disk")?;
    r.seek(SeekFrom::Start(at))?;
    r.read_exact(&mut entries)
        .context("cannot read the GPT partition entries")?;
    if crc32fast::hash(&entries) != u32::from_le_bytes(h[88..92].try_into()?) {
        bail!("the GPT partition entries checksum is wrong: the partition table is corrupt");
    }
    let mut out = Vec::new();
    for (i, e) in entries.chunks(size).enumerate() {
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let first_lba = u64::from_le_bytes(e[32..40].try_into()?);
        let last_lba = u64::from_le_bytes(e[40..48].try_into()?);
        // Partition::offset and size multiply these by the sector size.
        if first_lba > last_lba
            || last_lba
                .checked_add(1)
                .and_then(|n| n.checked_mul(SECTOR))
                .is_none()
        {
            bail!(
                "GPT partition entry {} has impossible bounds: the partition table is corrupt",
                i + 1
            );
        }
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|c| *c != 0)
            .collect();
        out.push(Partition {
            label: String::from_utf16_lossy(&name),
            type_guid: guid_text(&e[0..16]),
            guid: guid_text(&e[16..32]),
            first_lba,
            last_lba,
        });
    }
    Ok(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_sgdisk_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        let f = std::fs::File::create(&path).unwrap();
        let total = 64 * 1024 * 1024 / SECTOR;
        f.set_len(total * SECTOR).unwrap();
        let parts = vec![
            Partition {
                label: "esp".into(),
                type_guid: ESP_TYPE.into(),
                guid: derived_guid("a"),
                first_lba: 2048,
                last_lba: 2048 + 32767,
            },
            Partition {
                label: "root-a".into(),
                type_guid: ROOT_X86_64_TYPE.into(),
                guid: derived_guid("b"),
                first_lba: 34816,
                last_lba: total - 2048,
            },
        ];
        let mut w = std::io::BufWriter::new(f);
        write(&mut w, total, &derived_guid("disk"), &parts).unwrap();
        drop(w);
        let got = read(&mut std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(got, parts);
        if let Ok(out) = std::process::Command::new("sgdisk")
            .arg("-v")
            .arg(&path)
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("No problems found"), "{text}");
            let p = std::process::Command::new("sgdisk")
                .arg("-p")
                .arg(&path)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&p.stdout);
            assert!(text.contains("root-a") && text.contains("EF00"), "{text}");
        }
    }

    #[test]
    fn probe_tells_no_table_from_a_corrupt_one() {
        use std::io::Cursor;
        let total = 8 * 1024 * 1024 / SECTOR;
        let parts = vec![Partition {
            label: "esp".into(),
            type_guid: ESP_TYPE.into(),
            guid: derived_guid("a"),
            first_lba: 2048,
            last_lba: 4095,
        }];
        let mut disk = Cursor::new(vec![0u8; (total * SECTOR) as usize]);
        write(&mut disk, total, &derived_guid("disk"), &parts).unwrap();
        assert_eq!(probe(&mut disk).unwrap(), Some(parts));
        // No table: zeros, or a file too short to hold one.
        assert_eq!(probe(&mut Cursor::new(vec![0u8; 8192])).unwrap(), None);
        assert_eq!(probe(&mut Cursor::new(vec![0u8; 100])).unwrap(), None);
        assert!(
            read(&mut Cursor::new(vec![0u8; 8192]))
                .unwrap_err()
                .to_string()
                .contains("no GUID partition table")
        );
        // A table whose entries were damaged is an error, not "no table".
        let mut bytes = disk.into_inner();
        bytes[2 * SECTOR as usize + 60] ^= 1;
        let err = probe(&mut Cursor::new(bytes)).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
