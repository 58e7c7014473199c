//! The host lifecycle of a pak disk: what boots, what each slot holds,
//! switching to a new generation, rolling back, marking a boot good.
//!
//! One code path serves a disk image (`--disk`, partitions at file offsets,
//! the ESP edited through [`crate::disk::fat::Volume`]) and the running
//! system (the whole disk holding the partition labelled `esp`, the booted
//! slot from `/proc/cmdline`). Everything goes through a [`Device`], so
//! tests can run the same code over memory and stop it after any write.
//! The names on the disk are `pak_boot::disk`'s, shared with `pak build`
//! and `/init`.
//!
//! - `device`: the I/O layer, and the fault injection tests cut runs with;
//! - `probe`: finding the running system's slot and disk;
//! - `incoming`: a generation file, read and checked;
//! - `status`: what boots and what each slot holds;
//! - `switch`: switch, rollback, mark-good, and their crash-safe order;
//! - `diff`, `verify`: comparing generations, checking what boots;
//! - `provision`: a machine's own settings from a seed volume or
//!   credentials, applied at first boot.
//!
//! The library returns data; `cli::system` turns it into words.

pub mod datacheck;
mod device;
mod diff;
mod incoming;
mod probe;
pub mod provision;
pub mod reset;
mod status;
mod switch;
pub mod update;
mod verify;

use std::path::Path;

use anyhow::{Context, Result};
use pak_boot::bls::{self, EntryName, State};
use pak_boot::disk::{DATA_LABEL, ESP_LABEL, Slot, esp};

use crate::disk::fat::{DirEntry, Volume};
use crate::disk::gpt::Partition;
use crate::image::generation::GenerationMeta;

pub use device::{CutAfter, Device, DiskFile, SyncFile};
pub use diff::Diff;
pub use incoming::Incoming;
pub use status::{Fallback, SlotState, SlotStatus, Status, booted_on_trial};
pub use switch::{MarkGood, NextGeneration, Rollback, Switched};

/// A pak disk, opened for reading and edits.
pub struct PakDisk<D: Device = DiskFile> {
    /// What to call the disk in messages.
    name: String,
    esp: Volume<D>,
    root_a: Partition,
    root_b: Partition,
    /// The slot and generation running now (live), if known.
    booted: Option<(Slot, u64)>,
}

/// A loader entry with its boot priority.
#[derive(Debug, Clone)]
struct Entry {
    name: EntryName,
    priority: u64,
}

impl PakDisk<DiskFile> {
    /// A disk image file. `cut_after` is fault injection for tests: let
    /// that many writes and flushes through, fail the rest.
    pub fn open_image(path: &Path, cut_after: Option<u64>) -> Result<Self> {
        let f = SyncFile::open_locked(path)?;
        Self::open(
            CutAfter::new(f, cut_after.unwrap_or(u64::MAX)),
            &path.display().to_string(),
            None,
        )
    }

    /// The disk of the running pak system.
    pub fn open_live() -> Result<Self> {
        let booted = probe::booted()?;
        let disk = probe::disk_of_partition(ESP_LABEL)?;
        let f = SyncFile::open_locked(&disk)?;
        Self::open(
            CutAfter::never(f),
            &disk.display().to_string(),
            Some(booted),
        )
    }
}

impl<D: Device> PakDisk<D> {
    /// A pak disk on `dev`; `booted` is the running slot and generation.
    pub fn open(mut dev: D, name: &str, booted: Option<(Slot, u64)>) -> Result<Self> {
        let parts = crate::disk::gpt::read(&mut dev)
            .with_context(|| format!("{name} is not a pak disk"))?;
        let find = |label: &str| {
            parts
                .iter()
                .find(|p| p.label == label)
                .cloned()
                .with_context(|| {
                    format!(
                        "{name} has no partition labelled {label}: it is not a pak disk (pak disks have {ESP_LABEL}, {}, {} and {DATA_LABEL})",
                        Slot::A.label(),
                        Slot::B.label()
                    )
                })
        };
        let esp = find(ESP_LABEL)?;
        let root_a = find(Slot::A.label())?;
        let root_b = find(Slot::B.label())?;
        find(DATA_LABEL)?;
        let esp = Volume::open(dev, esp.offset())
            .with_context(|| format!("{name}: the partition labelled {ESP_LABEL}"))?;
        Ok(PakDisk {
            name: name.to_string(),
            esp,
            root_a,
            root_b,
            booted,
        })
    }

    /// The device underneath.
    pub fn device(&mut self) -> &mut D {
        self.esp.device()
    }

    /// The device, for tests that inspect what was written.
    pub fn into_device(self) -> D {
        self.esp.into_inner()
    }

    fn partition(&self, slot: Slot) -> &Partition {
        match slot {
            Slot::A => &self.root_a,
            Slot::B => &self.root_b,
        }
    }

    /// A file or directory on the ESP; `None` also when a directory above
    /// it is missing.
    fn find(&mut self, path: &str) -> Result<Option<DirEntry>> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            if self.esp.find(&path[..at + i])?.is_none() {
                return Ok(None);
            }
            at += i + 1;
        }
        self.esp.find(path)
    }

    /// Our loader entries in systemd-boot's order: not-bad before bad,
    /// then by priority (`version`), highest first.
    fn entries(&mut self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in self.esp.list(esp::ENTRIES)? {
            let Some(name) = EntryName::parse(&e.name).filter(|_| !e.is_dir) else {
                continue;
            };
            let text = self.esp.read(&format!("{}/{}", esp::ENTRIES, e.name))?;
            let priority =
                bls::priority(&String::from_utf8_lossy(&text)).unwrap_or(name.generation);
            out.push(Entry { name, priority });
        }
        out.sort_by(|a, b| {
            (a.name.state() == State::Bad)
                .cmp(&(b.name.state() == State::Bad))
                .then(b.priority.cmp(&a.priority))
                .then(b.name.generation.cmp(&a.name.generation))
                .then(b.name.slot.cmp(&a.name.slot))
        });
        Ok(out)
    }

    /// The description the ESP keeps of a slot's generation; `None` when
    /// there is none, an error naming the file when it is unreadable.
    pub fn slot_meta(&mut self, slot: Slot) -> Result<Option<GenerationMeta>> {
        let path = esp::description(slot);
        if self.find(&path)?.is_none() {
            return Ok(None);
        }
        let text = self
            .esp
            .read(&path)
            .with_context(|| format!("cannot read {path} on the ESP of {}", self.name))?;
        let text = std::str::from_utf8(&text)
            .with_context(|| format!("{path} on the ESP of {} is corrupt", self.name))?;
        let meta = GenerationMeta::parse(text)
            .with_context(|| format!("{path} on the ESP of {} is corrupt", self.name))?;
        Ok(Some(meta))
    }

    /// Tidies what an interrupted edit left on the ESP (clusters and
    /// long-name slots no file owns, a stale free count). Every switch and
    /// rollback does this first.
    pub fn repair(&mut self) -> Result<u32> {
        self.esp.reclaim_lost_clusters()
    }

    /// The highest generation number on the disk.
    pub fn newest_generation(&mut self) -> Result<u64> {
        Ok(self
            .entries()?
            .iter()
            .map(|e| e.name.generation)
            .chain(self.booted.map(|b| b.1))
            .max()
            .unwrap_or(0))
    }
}
