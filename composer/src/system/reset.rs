//! Factory reset: the next boot wipes the data partition (`/var`, `/home`,
//! the changes to `/etc`) and provisions the machine again, as on its first
//! boot. The generations and the boot entries stay.
//!
//! Nothing is erased here. The request is one sector at the start of the
//! data partition ([`pak_boot::data::reset`]), which `/init` reads before it
//! touches the filesystem and clears once the new one is complete. So the
//! running system keeps working until the reboot, a request can be
//! withdrawn, and a power cut at any point leaves either no request or one
//! that is carried out whole.
//!
//! A disk image and the running system take the same steps on the same
//! bytes; only the device differs. On a disk image it is the image at the
//! data partition's offset. On the running system it is the data partition's
//! own device node: the mounted ext4 reads and writes its first block
//! through that device's page cache, so writing the request there keeps it
//! (writing it through the whole disk could be undone by the kernel writing
//! its stale copy of that block back).

use std::io::{Read, Seek, SeekFrom, Write};

use anyhow::{Context, Result, bail};
use pak_boot::data::reset;
use pak_boot::disk::DATA_LABEL;
use serde::Serialize;

use super::{Device, PakDisk, SyncFile};

/// What a factory-reset request or its withdrawal did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FactoryReset {
    /// The data partition, as messages name it.
    pub data: String,
    /// Whether a reset is requested now.
    pub requested: bool,
    /// Whether this call changed anything (false: it was already so).
    pub changed: bool,
}

impl<D: Device> PakDisk<D> {
    /// Asks the next boot to wipe the data partition and provision the
    /// machine again. Idempotent.
    pub fn request_factory_reset(&mut self) -> Result<FactoryReset> {
        self.set_factory_reset(true)
    }

    /// Withdraws a request the next boot has not carried out yet.
    pub fn cancel_factory_reset(&mut self) -> Result<FactoryReset> {
        self.set_factory_reset(false)
    }

    /// Whether the next boot wipes the data partition.
    pub fn factory_reset_pending(&mut self) -> Result<bool> {
        self.with_data_area(|dev, at, name| Ok(reset::is_requested(&read_area(dev, at, name)?)))
    }

    fn set_factory_reset(&mut self, want: bool) -> Result<FactoryReset> {
        self.with_data_area(|dev, at, name| {
            let area = read_area(dev, at, name)?;
            let requested = reset::is_requested(&area);
            if requested == want {
                return Ok(FactoryReset {
                    data: name.to_string(),
                    requested,
                    changed: false,
                });
            }
            // ext4 leaves its first sector zero, and so does a partition no
            // boot has formatted yet; anything else is not pak's to
            // overwrite.
            if !requested && area.iter().any(|&b| b != 0) {
                bail!(
                    "the first sector of the data partition ({name}) holds data pak did not write: it is not the ext4 filesystem pak makes, so it is left alone; check what is on it"
                );
            }
            let new = if want {
                reset::request()
            } else {
                [0u8; reset::AREA]
            };
            write_area(dev, at, &new, name)?;
            Ok(FactoryReset {
                data: name.to_string(),
                requested: want,
                changed: true,
            })
        })
    }

    /// Runs `f` on the device holding the data partition, with the
    /// partition's offset on it and its name for messages.
    fn with_data_area<T>(
        &mut self,
        f: impl FnOnce(&mut dyn AreaDevice, u64, &str) -> Result<T>,
    ) -> Result<T> {
        if self.booted.is_some() {
            let node = pak_boot::init::partition_by_label(DATA_LABEL).with_context(|| {
                format!("no partition labelled {DATA_LABEL} on this system: it was not booted from a pak disk")
            })?;
            let mut dev = SyncFile::open_locked(&node)?;
            return f(&mut dev, 0, &node.display().to_string());
        }
        let name = self.name.clone();
        let dev = self.device();
        let part = crate::disk::gpt::read(dev)?
            .into_iter()
            .find(|p| p.label == DATA_LABEL)
            .with_context(|| format!("{name} has no partition labelled {DATA_LABEL}"))?;
        let at = part.offset();
        f(
            dev,
            at,
            &format!("partition {DATA_LABEL} of {name}, at byte {at}"),
        )
    }
}

/// What the request is written through: a [`Device`], made object-safe.
trait AreaDevice: Read + Write + Seek {
    fn forget(&mut self) -> std::io::Result<()>;
}

impl<D: Device> AreaDevice for D {
    fn forget(&mut self) -> std::io::Result<()> {
        self.forget_cache()
    }
}

fn read_area(dev: &mut dyn AreaDevice, at: u64, name: &str) -> Result<[u8; reset::AREA]> {
    let mut area = [0u8; reset::AREA];
    dev.seek(SeekFrom::Start(at))
        .and_then(|_| dev.read_exact(&mut area))
        .with_context(|| format!("cannot read the first sector of {name}"))?;
    Ok(area)
}

/// Writes the area, makes it durable, and reads it back from the medium.
fn write_area(
    dev: &mut dyn AreaDevice,
    at: u64,
    bytes: &[u8; reset::AREA],
    name: &str,
) -> Result<()> {
    dev.seek(SeekFrom::Start(at))
        .and_then(|_| dev.write_all(bytes))
        .and_then(|_| dev.flush())
        .with_context(|| format!("cannot write the first sector of {name}"))?;
    dev.forget()
        .with_context(|| format!("cannot drop the cached copy of {name}"))?;
    if &read_area(dev, at, name)? != bytes {
        bail!("the first sector of {name} did not keep what was written: the disk is failing");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use pak_boot::disk::{Slot, SlotBoot};

    use super::*;

    const MIB: u64 = 1 << 20;

    /// A pak disk image file as `pak build` lays it out, its data partition
    /// never booted (zeros); the image and the data partition's offset.
    fn disk(dir: &Path) -> (PathBuf, u64) {
        let layout =
            crate::disk::Layout::new(Some(120 * MIB), Some(40 * MIB), Some(4 * MIB)).unwrap();
        let slot = dir.join("slot-a.sqfs");
        std::fs::write(&slot, b"a stand-in generation").unwrap();
        let boot = SlotBoot {
            slot: Slot::A,
            generation: 1,
            system: "test",
            cmdline: "console=ttyS0",
            tries: None,
            priority: 1,
            kernel: b"kernel",
            initrd: b"initrd",
            description: b"",
        };
        let img = dir.join("disk.raw");
        let files = pak_boot::disk::new_esp(b"MZ loader", &boot);
        crate::disk::create(&img, &layout, &files, &slot, "test").unwrap();
        let mut f = std::fs::File::open(&img).unwrap();
        let at = crate::disk::gpt::read(&mut f)
            .unwrap()
            .into_iter()
            .find(|p| p.label == DATA_LABEL)
            .unwrap()
            .offset();
        (img, at)
    }

    fn first_sector(img: &Path, at: u64) -> Vec<u8> {
        let bytes = std::fs::read(img).unwrap();
        bytes[at as usize..at as usize + reset::AREA].to_vec()
    }

    #[test]
    fn a_request_is_one_sector_of_the_data_partition_and_can_be_withdrawn() {
        let t = tempfile::tempdir().unwrap();
        let (img, at) = disk(t.path());
        let before = std::fs::read(&img).unwrap();
        let open = || PakDisk::open_image(&img, None).unwrap();
        assert!(!open().factory_reset_pending().unwrap());
        let r = open().request_factory_reset().unwrap();
        assert!(r.requested && r.changed, "{r:?}");
        assert!(r.data.contains(&format!("at byte {at}")), "{}", r.data);
        assert!(reset::is_requested(&first_sector(&img, at)));
        assert!(open().factory_reset_pending().unwrap());
        // Only that sector changed: slots, ESP and the rest of data stay.
        let after = std::fs::read(&img).unwrap();
        let changed: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert!(
            changed
                .iter()
                .all(|&i| (at as usize..at as usize + reset::AREA).contains(&i)),
            "bytes outside the request sector changed"
        );
        // Asking twice changes nothing more.
        assert!(!open().request_factory_reset().unwrap().changed);
        let c = open().cancel_factory_reset().unwrap();
        assert!(!c.requested && c.changed);
        assert_eq!(std::fs::read(&img).unwrap(), before);
        assert!(!open().cancel_factory_reset().unwrap().changed);
    }

    #[test]
    fn a_sector_pak_did_not_write_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let (img, at) = disk(t.path());
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[at as usize..at as usize + 4].copy_from_slice(b"XFSB");
        std::fs::write(&img, &bytes).unwrap();
        let err = PakDisk::open_image(&img, None)
            .unwrap()
            .request_factory_reset()
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("holds data pak did not write"),
            "{err:#}"
        );
        assert_eq!(std::fs::read(&img).unwrap(), bytes);
    }

    #[test]
    fn a_cut_write_leaves_no_half_request() {
        // The sector is written in one write and one flush: cut before the
        // write, nothing is requested; the write itself either lands whole
        // (sector writes are atomic on disks) or not at all.
        let t = tempfile::tempdir().unwrap();
        let (img, at) = disk(t.path());
        let err = PakDisk::open_image(&img, Some(0))
            .unwrap()
            .request_factory_reset()
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot write the first sector"),
            "{err:#}"
        );
        assert_eq!(first_sector(&img, at), vec![0u8; reset::AREA]);
    }
}
