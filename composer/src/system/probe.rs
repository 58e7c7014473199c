//! Finding the running pak system: which slot and generation booted (the
//! kernel command line) and which disk they came from (sysfs).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use pak_boot::disk::Slot;

/// The slot and generation the running system booted, from `/proc/cmdline`.
pub fn booted() -> Result<(Slot, u64)> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("cannot read /proc/cmdline")?;
    let args = pak_boot::cmdline::parse(&cmdline);
    match (args.slot, args.generation) {
        (Some(Ok(slot)), Some(generation)) => Ok((slot, generation)),
        (Some(Err(bad)), _) => bail!(
            "the kernel command line has pak.slot={}, which names no slot (a or b): the loader entry this system booted is broken",
            bad.0
        ),
        _ => bail!(
            "this is not a running pak system (no pak.slot= on the kernel command line); use --disk IMAGE for a disk image"
        ),
    }
}

/// The whole-disk device holding the partition with this GPT label.
pub fn disk_of_partition(label: &str) -> Result<PathBuf> {
    for e in std::fs::read_dir("/sys/class/block")
        .context("cannot read /sys/class/block")?
        .flatten()
    {
        let Ok(uevent) = std::fs::read_to_string(e.path().join("uevent")) else {
            continue;
        };
        if uevent.lines().any(|l| l == format!("PARTNAME={label}")) {
            // /sys/class/block/vda2 -> .../block/vda/vda2: the parent is the disk.
            let real = std::fs::canonicalize(e.path())?;
            let disk = real
                .parent()
                .and_then(|p| p.file_name())
                .context("partition without a disk")?;
            return Ok(PathBuf::from("/dev").join(disk));
        }
    }
    bail!(
        "no partition labelled {label}: this system was not booted from a pak disk; use --disk IMAGE"
    )
}
