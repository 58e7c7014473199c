//! FAT32, the ESP's filesystem, written by pak itself.
//!
//! DESIGN.md records that the `fatfs` crate writes directories
//! `fsck.fat` flags, so pak lays FAT out itself. Two jobs, one file each:
//! [`write`] makes a whole volume for a new disk image (reproducibly),
//! [`volume`] edits one in place on a live or offline disk (`pak system`).
//! What both must agree on, the on-disk format, is here: geometry,
//! attributes, 8.3 names and their long-name entries.

use anyhow::{Result, bail};

pub mod volume;
pub mod write;

pub use volume::{DirEntry, Volume};
pub use write::write;

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
