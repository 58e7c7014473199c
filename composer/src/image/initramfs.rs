//! The initramfs of a generation: pak itself as `/init`, the kernel
//! modules needed to reach the root, and the list of them in load order.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::image::cpio::Cpio;
use crate::image::kmod::Modules;

/// What the root cannot be reached without: dm-verity under the root's
/// squashfs (its dependencies, dm-mod and dm-bufio, come with it), ext4
/// for data, overlay for /etc.
pub const REQUIRED: &[&str] = &["dm_verity", "squashfs", "overlay", "ext4"];
/// Disk controllers (virtio and real ones) and the watchdog: taken when
/// the kernel has them (Debian's cloud kernel has no SATA, for instance).
pub const DRIVERS: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "softdog",
];

/// Where `/init` finds the modules to load, one path per line.
pub const MODULE_LIST: &str = "etc/pak/modules";

/// Builds the zstd-compressed initramfs. `init` is the static `/init`
/// binary; `modules_dir` is the generation's `usr/lib/modules/<version>`.
pub fn build(init: &[u8], modules_dir: &Path) -> Result<Vec<u8>> {
    let mods = Modules::open(modules_dir)?;
    if !mods.has("dm_verity") {
        bail!(
            "kernel {} has no dm-verity module (drivers/md/dm-verity.ko, CONFIG_DM_VERITY), which checks a pak root against the hash it was built with; use a kernel package that has it, such as linux-image-cloud-amd64",
            modules_dir.file_name().map_or_else(
                || modules_dir.display().to_string(),
                |v| v.to_string_lossy().into_owned()
            )
        );
    }
    let wanted: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .chain(DRIVERS.iter().copied().filter(|m| mods.has(m)))
        .filter(|m| !mods.is_builtin(m))
        .collect();
    let order = mods.closure(&wanted)?;
    let mut c = Cpio::default();
    for d in [
        "dev",
        "proc",
        "sys",
        "sysroot",
        "etc",
        "etc/pak",
        "lib",
        "lib/modules",
    ] {
        c.dir(d);
    }
    c.file("init", 0o755, init);
    let mut made = std::collections::BTreeSet::new();
    let mut list = String::new();
    for rel in &order {
        let dest = format!("lib/modules/{rel}");
        let mut cur = String::new();
        for comp in dest
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, d)| d)
            .unwrap_or(&[])
        {
            cur = if cur.is_empty() {
                comp.to_string()
            } else {
                format!("{cur}/{comp}")
            };
            if cur != "lib" && cur != "lib/modules" && made.insert(cur.clone()) {
                c.dir(&cur);
            }
        }
        let bytes = std::fs::read(modules_dir.join(rel))
            .with_context(|| format!("cannot read module {rel}"))?;
        c.file(&dest, 0o644, &bytes);
        list.push('/');
        list.push_str(&dest);
        list.push('\n');
    }
    c.file(MODULE_LIST, 0o644, list.as_bytes());
    // Level 3: the archive is mostly the pak binary; higher levels cost
    // seconds per build and save little.
    Ok(zstd::bulk::compress(&c.finish(), 3)?)
}
