//! The disk image: `GPT[ esp | root-a | root-b | data ]`, written by an
//! unprivileged user into a sparse file, without loop devices or mounts.
//!
//! root-a holds generation 1; root-b stays empty until the first switch;
//! data stays blank and `/init` formats it on first boot. Partition GUIDs
//! derive from the content, so the same inputs give the same image.

pub mod fat;
pub mod gpt;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use pak_boot::disk::{DATA_LABEL, ESP_LABEL, Slot};

use gpt::{Partition, SECTOR};

const MIB: u64 = 1 << 20;
pub const DEFAULT_TOTAL: u64 = 2 << 30;
pub const DEFAULT_ESP: u64 = 256 * MIB;
const MIN_DATA: u64 = 64 * MIB;

/// Sizes, in bytes, all multiples of 1 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub total: u64,
    pub esp: u64,
    pub slot: u64,
    pub data: u64,
}

/// Parses `2GiB`, `512MiB`, `1G`, `300M`, or plain bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size like \"2GiB\" or \"512MiB\""))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => MIB,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        other => bail!("unknown size unit {other:?} in {s:?}; use KiB, MiB, GiB or TiB"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("{s:?} is too large"))
}

impl Layout {
    /// The whole disk is `total`; each slot gets an equal share of what the
    /// ESP and a minimal data partition leave, unless `slot` is given.
    pub fn new(total: Option<u64>, esp: Option<u64>, slot: Option<u64>) -> Result<Layout> {
        let round = |v: u64| v / MIB * MIB;
        let total = round(total.unwrap_or(DEFAULT_TOTAL));
        let esp = round(esp.unwrap_or(DEFAULT_ESP));
        // 1 MiB before the first partition and 1 MiB for the backup GPT.
        let usable = total
            .checked_sub(2 * MIB + esp)
            .context("the image is smaller than its ESP")?;
        let slot = match slot {
            Some(s) => round(s),
            None => round(usable.saturating_sub(MIN_DATA) / 2 / 2),
        };
        let data = usable.checked_sub(2 * slot).filter(|d| *d >= MIN_DATA).with_context(|| {
            format!("[image] size {} MiB leaves no room for two {} MiB slots and a data partition; raise it", total / MIB, slot / MIB)
        })?;
        Ok(Layout {
            total,
            esp,
            slot,
            data,
        })
    }

    pub fn partitions(&self, seed: &str) -> Vec<Partition> {
        let s = |bytes: u64| bytes / SECTOR;
        let mut at = s(MIB);
        let mut out = Vec::new();
        for (label, ty, size) in [
            (ESP_LABEL, gpt::ESP_TYPE, self.esp),
            (Slot::A.label(), gpt::ROOT_X86_64_TYPE, self.slot),
            (Slot::B.label(), gpt::ROOT_X86_64_TYPE, self.slot),
            (DATA_LABEL, gpt::VAR_TYPE, self.data),
        ] {
            out.push(Partition {
                label: label.into(),
                type_guid: ty.into(),
                guid: gpt::derived_guid(&format!("{seed}/{label}")),
                first_lba: at,
                last_lba: at + s(size) - 1,
            });
            at += s(size);
        }
        out
    }
}

/// Asks the kernel to start writing `len` bytes at `at` of `f` to disk,
/// without waiting: only a head start for a later sync, so a kernel that
/// refuses costs nothing.
fn start_writeback(f: &File, at: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor this function borrows; it
    // reads no memory of this process.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            at as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Copies the first `len` bytes of `from` to byte `at` of `to`, in the
/// kernel (`copy_file_range`: no pass through this process, and a shared
/// extent where the file system can), by reads and writes where it cannot.
fn copy_at(from: &File, to: &File, at: u64, len: u64) -> std::io::Result<()> {
    let bar = crate::util::progress::bytes(len, &format!("write {}", Slot::A.label()));
    let (mut src, mut dst) = (0u64, at);
    while src < len {
        let want = (len - src).min(1 << 30) as usize;
        let n = match rustix::fs::copy_file_range(from, Some(&mut src), to, Some(&mut dst), want) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the generation ended early",
                ));
            }
            Ok(n) => n,
            // Across file systems on older kernels, or where it is not offered.
            Err(rustix::io::Errno::XDEV | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL) => {
                copy_by_reads(from, to, &mut src, &mut dst, len)?;
                break;
            }
            Err(e) => return Err(e.into()),
        };
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

fn copy_by_reads(
    from: &File,
    to: &File,
    src: &mut u64,
    dst: &mut u64,
    len: u64,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4 * MIB as usize];
    while *src < len {
        let n = ((len - *src) as usize).min(buf.len());
        from.read_exact_at(&mut buf[..n], *src)?;
        to.write_all_at(&buf[..n], *dst)?;
        *src += n as u64;
        *dst += n as u64;
    }
    Ok(())
}

/// Writes a new disk image at `out` (atomically): the GPT, the ESP with
/// `esp_files`, and the generation file `slot_a` in root-a.
pub fn create(
    out: &Path,
    layout: &Layout,
    esp_files: &[(String, Vec<u8>)],
    slot_a: &Path,
    seed: &str,
) -> Result<()> {
    let f = File::open(slot_a).with_context(|| format!("cannot read {}", slot_a.display()))?;
    create_from(out, layout, esp_files, &f, seed)
}

/// [`create`] with the generation file open (all of it goes to root-a).
pub fn create_from(
    out: &Path,
    layout: &Layout,
    esp_files: &[(String, Vec<u8>)],
    slot_a: &File,
    seed: &str,
) -> Result<()> {
    let gen_size = slot_a
        .metadata()
        .context("cannot read the generation")?
        .len();
    if gen_size > layout.slot {
        bail!(
            "the generation is {} MiB but a slot holds {} MiB; raise [image] size (or slot_size)",
            gen_size.div_ceil(MIB),
            layout.slot / MIB
        );
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".img-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.as_file().set_len(layout.total).with_context(|| {
        format!(
            "cannot make a {} MiB image in {} (disk full?)",
            layout.total / MIB,
            dir.display()
        )
    })?;
    let parts = layout.partitions(seed);
    // The slot first, its write-back started at once: the disk writes it
    // while the ESP is laid out, and the sync below has less to wait for.
    copy_at(slot_a, tmp.as_file(), parts[1].offset(), gen_size)
        .context("cannot write the image (disk full?)")?;
    start_writeback(tmp.as_file(), parts[1].offset(), gen_size);
    let mut w = BufWriter::with_capacity(4 * MIB as usize, tmp.as_file().try_clone()?);
    gpt::write(
        &mut w,
        layout.total / SECTOR,
        &gpt::derived_guid(&format!("{seed}/disk")),
        &parts,
    )?;
    crate::disk::fat::write(&mut w, parts[0].offset(), parts[0].size(), "ESP", esp_files)?;
    w.flush()?;
    drop(w);
    tmp.as_file().sync_all()?;
    let mut perms = tmp.as_file().metadata()?.permissions();
    // Readable like any file the user writes, whatever the temp file had.
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    tmp.as_file().set_permissions(perms)?;
    tmp.persist(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_layout() {
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert!(parse_size("2 parsecs").is_err());
        let l = Layout::new(Some(1 << 30), None, None).unwrap();
        assert_eq!(l.esp + 2 * l.slot + l.data + 2 * MIB, l.total);
        assert!(l.data >= MIN_DATA);
        assert!(Layout::new(Some(300 * MIB), None, Some(200 * MIB)).is_err());
    }

    #[test]
    fn a_generation_larger_than_its_slot_is_refused_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let gen_path = dir.path().join("big.sqfs");
        let f = std::fs::File::create(&gen_path).unwrap();
        f.set_len(200 * MIB).unwrap();
        let layout = Layout::new(Some(512 * MIB), Some(64 * MIB), Some(128 * MIB)).unwrap();
        let out = dir.path().join("img.raw");
        let err = create(&out, &layout, &[], &gen_path, "seed")
            .unwrap_err()
            .to_string();
        assert!(err.contains("200 MiB") && err.contains("128 MiB"), "{err}");
        assert!(!out.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
