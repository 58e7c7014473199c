//! The host lifecycle of a pak disk: what boots, what each slot holds,
//! and marking a boot good. One code path serves a disk image (`--disk`,
//! partitions at file offsets) and the running system (the disk holding
//! the partition labelled `esp`, the booted slot from `/proc/cmdline`).

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pak_boot::bls::{EntryName, State};
use serde::Serialize;

use crate::fat::Volume;
use crate::generation::GenerationMeta;

const ENTRIES: &str = "loader/entries";

/// A pak disk, opened for reading and ESP edits.
pub struct PakDisk {
    pub path: PathBuf,
    esp: Volume<File>,
    /// The slot and generation running now (live), if known.
    booted: Option<(char, u64)>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotStatus {
    pub slot: char,
    /// The loader entry's file name, if the slot has one.
    pub entry: Option<String>,
    pub generation: Option<u64>,
    /// good, pending, bad, or empty.
    pub state: String,
    pub tries_left: Option<u32>,
    pub tries_done: Option<u32>,
    pub system: Option<String>,
    pub packages: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub disk: String,
    /// What is running (live) or what boots next (a disk image).
    pub booted_slot: Option<char>,
    pub booted_generation: Option<u64>,
    pub live: bool,
    /// The entry systemd-boot picks next: the newest that is not bad.
    pub default_entry: Option<String>,
    pub slots: Vec<SlotStatus>,
}

impl PakDisk {
    /// A disk image file.
    pub fn open_image(path: &Path) -> Result<PakDisk> {
        Self::open(path, None)
    }

    /// The disk of the running pak system.
    pub fn open_live() -> Result<PakDisk> {
        let cmdline =
            std::fs::read_to_string("/proc/cmdline").context("cannot read /proc/cmdline")?;
        let args = pak_boot::cmdline::parse(&cmdline);
        let (Some(slot), Some(generation)) = (args.slot, args.generation) else {
            bail!(
                "this is not a running pak system (no pak.slot= on the kernel command line); use --disk IMAGE for a disk image"
            );
        };
        let slot = slot.chars().next().context("empty pak.slot")?;
        let disk = disk_of_partition("esp")?;
        Self::open(&disk, Some((slot, generation)))
    }

    fn open(path: &Path, booted: Option<(char, u64)>) -> Result<PakDisk> {
        let mut f = File::options()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let parts = crate::gpt::read(&mut f)
            .with_context(|| format!("{} is not a pak disk", path.display()))?;
        let esp = parts.iter().find(|p| p.label == "esp").with_context(|| {
            format!(
                "{} has no partition labelled esp: not a pak disk",
                path.display()
            )
        })?;
        for label in ["root-a", "root-b", "data"] {
            if !parts.iter().any(|p| p.label == label) {
                bail!(
                    "{} has no partition labelled {label}: not a pak disk",
                    path.display()
                );
            }
        }
        let esp = Volume::open(f, esp.offset())?;
        Ok(PakDisk {
            path: path.to_path_buf(),
            esp,
            booted,
        })
    }

    fn entries(&mut self) -> Result<Vec<EntryName>> {
        let mut out: Vec<EntryName> = self
            .esp
            .list(ENTRIES)?
            .into_iter()
            .filter(|e| !e.is_dir)
            .filter_map(|e| EntryName::parse(&e.name))
            .collect();
        // systemd-boot's order for our entries (same sort-key): bad ones
        // last, then newer versions (generations) first.
        out.sort_by(|a, b| {
            (a.state() == State::Bad)
                .cmp(&(b.state() == State::Bad))
                .then(b.generation.cmp(&a.generation))
        });
        Ok(out)
    }

    fn slot_meta(&mut self, slot: char) -> Option<GenerationMeta> {
        let text = self.esp.read(&format!("pak/{slot}/generation.toml")).ok()?;
        GenerationMeta::parse(std::str::from_utf8(&text).ok()?).ok()
    }

    pub fn status(&mut self) -> Result<Status> {
        let entries = self.entries()?;
        let default = entries.first().cloned();
        let booted = self
            .booted
            .or(default.as_ref().map(|e| (e.slot, e.generation)));
        let mut slots = Vec::new();
        for slot in ['a', 'b'] {
            let entry = entries.iter().find(|e| e.slot == slot).cloned();
            let meta = self.slot_meta(slot);
            let state = match entry.as_ref().map(EntryName::state) {
                None => "empty",
                Some(State::Good) => "good",
                Some(State::Pending) => "pending",
                Some(State::Bad) => "bad",
            };
            slots.push(SlotStatus {
                slot,
                entry: entry.as_ref().map(ToString::to_string),
                generation: entry.as_ref().map(|e| e.generation),
                state: state.into(),
                tries_left: entry.as_ref().and_then(|e| e.tries.map(|t| t.0)),
                tries_done: entry.as_ref().and_then(|e| e.tries.map(|t| t.1)),
                system: meta.as_ref().map(|m| m.system.clone()),
                packages: meta.as_ref().map(|m| m.packages.len()),
            });
        }
        Ok(Status {
            disk: self.path.display().to_string(),
            booted_slot: booted.map(|b| b.0),
            booted_generation: booted.map(|b| b.1),
            live: self.booted.is_some(),
            default_entry: default.map(|e| e.to_string()),
            slots,
        })
    }

    /// Strips the tries counter from the booted generation's entry (live)
    /// or from the entry that boots next (a disk image).
    pub fn mark_good(&mut self) -> Result<String> {
        let status = self.status()?;
        let (Some(slot), Some(generation)) = (status.booted_slot, status.booted_generation) else {
            bail!("{} has no loader entry to mark good", self.path.display());
        };
        let entry = self
            .entries()?
            .into_iter()
            .find(|e| e.slot == slot && e.generation == generation)
            .with_context(|| {
                format!("no loader entry for generation {generation} in slot {slot}")
            })?;
        if entry.state() == State::Good {
            return Ok(format!(
                "generation {generation} (slot {slot}) is already marked good"
            ));
        }
        let good = entry.good();
        self.esp
            .rename(&format!("{ENTRIES}/{entry}"), &format!("{ENTRIES}/{good}"))?;
        Ok(format!(
            "marked generation {generation} (slot {slot}) good: {entry} -> {good}"
        ))
    }
}

/// The whole-disk device holding the partition with this GPT label.
fn disk_of_partition(label: &str) -> Result<PathBuf> {
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

/// Human-readable status.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let verb = if s.live { "booted" } else { "boots next" };
    match (s.booted_slot, s.booted_generation) {
        (Some(slot), Some(g)) => {
            out.push_str(&format!("{verb}: generation {g} from slot {slot}\n"))
        }
        _ => out.push_str("no generation boots from this disk\n"),
    }
    out.push_str(&format!(
        "default entry: {}\n",
        s.default_entry.as_deref().unwrap_or("none")
    ));
    for slot in &s.slots {
        let mut line = format!("slot {}: {}", slot.slot, slot.state);
        if let Some(g) = slot.generation {
            line.push_str(&format!(", generation {g}"));
        }
        if let (Some(l), Some(d)) = (slot.tries_left, slot.tries_done) {
            line.push_str(&format!(", {l} tries left, {d} done"));
        }
        if let (Some(sys), Some(n)) = (&slot.system, slot.packages) {
            line.push_str(&format!(" ({sys}, {n} packages)"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
