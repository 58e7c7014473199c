//! The lifecycle edits: switch to a new generation, roll back to the other
//! slot's, mark the booted one good.
//!
//! Crash safety rests on one ordering (see [`PakDisk::switch`]): nothing
//! that boots is touched until its replacement is complete, and the last
//! write, the one that makes a new generation boot, is a single directory
//! entry. Whatever prefix of the sequence reaches the disk, systemd-boot
//! finds a complete generation to boot.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use anyhow::{Context, Result, bail};
use pak_boot::bls::{self, EntryName, State};
use pak_boot::disk::{Slot, SlotBoot, esp};
use pak_boot::verity;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::device::read_sha256;
use super::{Device, Entry, Incoming, PakDisk, SlotState};
use crate::disk::gpt::Partition;
use crate::image::generation::{GenerationMeta, Written};
use crate::project::Project;

/// What [`PakDisk::switch`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Switched {
    #[serde(serialize_with = "super::status::slot_name")]
    pub slot: Slot,
    pub generation: u64,
    /// The new loader entry's file name.
    pub entry: String,
    pub image_sha256: String,
    pub image_size: u64,
    /// The dm-verity root hash the new entry passes to `/init`.
    pub root_hash: String,
}

/// What [`PakDisk::rollback`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollback {
    /// The other slot's generation now boots next.
    Done { slot: Slot, generation: u64 },
    /// It already did; nothing was written.
    AlreadyNext { slot: Slot, generation: u64 },
}

/// What [`PakDisk::mark_good`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkGood {
    /// The entry was renamed from `from` to `to`, without its counter.
    Marked {
        slot: Slot,
        generation: u64,
        from: EntryName,
        to: EntryName,
    },
    /// It had no counter; nothing was written.
    AlreadyGood { slot: Slot, generation: u64 },
}

/// A generation built from a project for a disk, numbered after the
/// newest one on it, in a temporary file removed when this is dropped.
pub struct NextGeneration {
    file: tempfile::NamedTempFile,
    pub meta: GenerationMeta,
}

impl NextGeneration {
    /// The generation, read back and checked like any generation file.
    pub fn incoming(&self) -> Result<Incoming<File>> {
        let f = File::open(self.file.path())
            .with_context(|| format!("cannot open {}", self.file.path().display()))?;
        Incoming::read(f, &format!("generation {}", self.meta.number))
    }
}

impl<D: Device> PakDisk<D> {
    /// Builds the project's generation for this disk (`pak system switch
    /// --pakfile`), in the project's state directory; switch to it with
    /// [`NextGeneration::incoming`].
    pub fn build_next(&mut self, project: &Project) -> Result<NextGeneration> {
        let number = self.newest_generation()? + 1;
        let dir = project.root.dir().join("tmp");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let file = tempfile::Builder::new()
            .prefix(".generation-")
            .suffix(".sqfs")
            .tempfile_in(&dir)
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
        let built = crate::image::build_generation(project, number, file.path())?;
        Ok(NextGeneration {
            file,
            meta: built.meta,
        })
    }

    /// Writes `incoming` to the slot that is not booted and makes it the default
    /// with a tries counter. The order of writes, each finished and synced
    /// before the next:
    ///
    /// 1. free what an interrupted earlier run left on the ESP;
    /// 2. remove the target slot's loader entries (the booted, good
    ///    generation stays the default and the fallback), then its boot files;
    /// 3. write the generation (squashfs, seal, dm-verity tree, trailer) to
    ///    the slot's partition, sync, drop the cache and read it back: its
    ///    sha256 must be the generation's;
    /// 4. kernel and initrd (or the generation's UKI for the slot) and
    ///    description to `pak/<slot>/` on the ESP, each data first and its
    ///    directory entry last;
    /// 5. the new loader entry, with the highest priority and the slot's
    ///    root hash: the one write that makes the new generation boot.
    ///
    /// 4 and 5 are [`SlotBoot::files_booting`], in its order. A cut before 5 leaves
    /// the booted generation the only entry; after 5 the new one boots with
    /// tries, and falls back to the old one if it never gets marked good.
    pub fn switch<S: Read + Seek>(
        &mut self,
        incoming: &mut Incoming<S>,
        force: bool,
    ) -> Result<Switched> {
        let status = self.status()?;
        // A disk nothing boots from fills slot a first.
        let target = status.booted_slot.map_or(Slot::A, Slot::other);
        let meta = incoming.meta.clone();
        let verb = if status.live { "runs" } else { "boots" };
        if let (Some(slot), Some(number)) = (status.booted_slot, status.booted_generation) {
            if status.booted_good != Some(true) && !force {
                bail!(
                    "generation {number} (slot {slot}), which {verb} now, is not marked good yet, and slot {target} holds the only other generation to fall back to; check the system, run `pak system mark-good`, then switch (or pass --force to overwrite slot {target} anyway)"
                );
            }
            if meta.number <= number {
                bail!(
                    "{} holds generation {}, not newer than generation {number}, which {verb} from slot {slot}; build it with `pak build --generation FILE.sqfs --number {}`",
                    incoming.name,
                    meta.number,
                    number + 1
                );
            }
        }
        let part = self.partition(target).clone();
        if incoming.image_size > part.size() {
            bail!(
                "no space in slot {target}: generation {} needs {} MiB with its dm-verity hash tree, the slot has {} MiB; make the generation smaller or the slots larger ([image] slot_size)",
                meta.number,
                incoming.image_size.div_ceil(1 << 20),
                part.size() >> 20
            );
        }
        // The description on the ESP records what was written, for verify.
        let mut esp_meta = meta.clone();
        esp_meta.written = Some(
            Written::of(
                &incoming.image_sha256,
                incoming.image_size,
                &incoming.kernel,
                &incoming.initrd,
            )
            .with_verity(incoming.verity.clone()),
        );
        let cmdline = verity::entry_cmdline(&meta.cmdline, Some(&incoming.verity));
        let entries = self.entries()?;
        let uki = incoming.ukis.as_ref().map(|u| u.get(target));
        if uki.is_none()
            && let Some(e) = self.uki_entry(&entries)?
        {
            // Under Secure Boot the firmware starts only signed images, and
            // a kernel and initrd booted through an entry are not: the slot
            // needs a UKI made (and signed) for it, which only the build
            // that has the key can make.
            bail!(
                "this disk boots unified kernel images ({} starts one; [boot] uki), and {} carries none for slot {target}: build the generation from a Pakfile with `[boot] uki = true` (`pak build --generation`), or a new disk image with `pak build -o`",
                esp::entry(&e),
                incoming.name
            );
        }
        // A UKI generation on a disk that boots kernels is taken: the UKI
        // holds the same kernel, initrd and command line the entry would
        // name, systemd-boot starts it as it starts a kernel, and the other
        // slot's entry, rollback and mark-good work per entry either way.
        if let Some(u) = uki {
            self.check_signer(u, target, &incoming.name)?;
            esp_meta.written = esp_meta.written.map(|w| w.with_uki(u));
        }
        let description = esp_meta.to_toml();
        let boot = SlotBoot {
            slot: target,
            generation: meta.number,
            system: &meta.system,
            cmdline: &cmdline,
            tries: Some(meta.tries.max(1)),
            priority: entries.iter().map(|e| e.priority).max().unwrap_or(0) + 1,
            kernel: &incoming.kernel,
            initrd: &incoming.initrd,
            description: description.as_bytes(),
        };
        let entry = boot.entry_name();
        let files = boot.files_booting(uki);
        self.check_esp_room(target, &entries, &files)?;

        // 1.
        self.esp.reclaim_lost_clusters()?;
        // 2.
        for e in entries.iter().filter(|e| e.name.slot == target) {
            self.esp.remove(&esp::entry(&e.name))?;
        }
        let dir = esp::slot_dir(target);
        if self.esp.find(&dir)?.is_some() {
            for f in self.esp.list(&dir)? {
                if !f.is_dir {
                    self.esp.remove(&format!("{dir}/{}", f.name))?;
                }
            }
        }
        // 3.
        self.write_slot(target, &part, incoming)?;
        // 4 and 5.
        for (path, bytes) in &files {
            self.create_parents(path)?;
            self.esp.create(path, bytes)?;
        }
        Ok(Switched {
            slot: target,
            generation: meta.number,
            entry: entry.to_string(),
            image_sha256: incoming.image_sha256.clone(),
            image_size: incoming.image_size,
            root_hash: incoming.verity.root_hash.clone(),
        })
    }

    /// Refuses a UKI the disk's loader's key did not sign, when the loader
    /// is signed: under Secure Boot the firmware would refuse to start it,
    /// and the slot would be lost to a boot that can only fall back.
    fn check_signer(&mut self, uki: &[u8], target: Slot, name: &str) -> Result<()> {
        use crate::sign::authenticode::signers;
        if self.esp.find(esp::BOOT_LOADER)?.is_none() {
            return Ok(());
        }
        let loader = signers(&self.esp.read(esp::BOOT_LOADER)?)
            .with_context(|| format!("cannot read the signature of {}", esp::BOOT_LOADER))?;
        if loader.is_empty() {
            return Ok(());
        }
        let ours = signers(uki).with_context(|| {
            format!("cannot read the signature of {name}'s UKI for slot {target}")
        })?;
        if ours.iter().any(|s| loader.contains(s)) {
            return Ok(());
        }
        let by = |s: &[crate::sign::authenticode::Signer]| match s {
            [] => "unsigned".to_string(),
            s => format!(
                "signed by {}",
                s.iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        bail!(
            "{name}'s UKI for slot {target} is {}, but this disk's boot loader ({}) is {}: under Secure Boot the firmware would refuse to start it. Build the generation with the disk's key ([boot] secure-boot = {{ key, cert }} of that certificate)",
            by(&ours),
            esp::BOOT_LOADER,
            by(&loader)
        )
    }

    /// Creates the directories above `path` that do not exist yet.
    /// The first loader entry that starts a unified kernel image.
    fn uki_entry(&mut self, entries: &[Entry]) -> Result<Option<EntryName>> {
        for e in entries {
            let text = self.esp.read(&esp::entry(&e.name))?;
            if bls::is_uki_entry(&String::from_utf8_lossy(&text)) {
                return Ok(Some(e.name.clone()));
            }
        }
        Ok(None)
    }

    fn create_parents(&mut self, path: &str) -> Result<()> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            if self.esp.find(dir)?.is_none() {
                self.esp.create_dir(dir)?;
            }
            at += i + 1;
        }
        Ok(())
    }

    /// Refuses a switch the ESP has no room for, before anything is written.
    fn check_esp_room(
        &mut self,
        target: Slot,
        entries: &[Entry],
        files: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let mut freed = 0;
        for e in entries.iter().filter(|e| e.name.slot == target) {
            if let Some(f) = self.esp.find(&esp::entry(&e.name))? {
                freed += self.esp.footprint(f.size as u64);
            }
        }
        let dir = esp::slot_dir(target);
        if self.esp.find(&dir)?.is_some() {
            for f in self.esp.list(&dir)? {
                freed += self.esp.footprint(f.size as u64);
            }
        }
        // `pak` and `pak/<slot>` may be new.
        let need: u64 = files
            .iter()
            .map(|(_, f)| self.esp.footprint(f.len() as u64))
            .sum::<u64>()
            + 2 * self.esp.footprint(1);
        let free = self.esp.free_bytes()?;
        if free + freed < need {
            bail!(
                "the ESP has no room for generation's boot files: {} KiB needed, {} KiB free after removing slot {target}'s; make the disk with a larger [image] esp_size",
                need >> 10,
                (free + freed) >> 10
            );
        }
        Ok(())
    }

    /// Copies the generation to the slot's partition, syncs, and reads it
    /// back past the cache: what boots, and the tree that checks it, must
    /// be what was sealed.
    fn write_slot<S: Read + Seek>(
        &mut self,
        slot: Slot,
        part: &Partition,
        incoming: &mut Incoming<S>,
    ) -> Result<()> {
        let len = incoming.image_size;
        let bar = crate::util::progress::bytes(len, &format!("writing slot {slot}"));
        incoming.source.seek(SeekFrom::Start(0))?;
        let dev = self.esp.device();
        dev.seek(SeekFrom::Start(part.offset()))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut hash = Sha256::new();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            incoming
                .source
                .read_exact(&mut buf[..n])
                .with_context(|| format!("cannot read {}", incoming.name))?;
            hash.update(&buf[..n]);
            dev.write_all(&buf[..n])
                .with_context(|| format!("writing slot {slot} failed at byte {done}"))?;
            done += n as u64;
            bar.inc(n as u64);
        }
        dev.flush()
            .with_context(|| format!("cannot sync slot {slot} to the disk"))?;
        bar.finish_and_clear();
        if hex::encode(hash.finalize()) != incoming.image_sha256 {
            bail!("{} changed while it was being written", incoming.name);
        }
        // Best effort: without it the read-back may come from the cache,
        // which proves less but is not wrong.
        let _ = dev.forget_cache();
        let back = read_sha256(dev, part.offset(), len)
            .with_context(|| format!("cannot read slot {slot} back"))?;
        if back != incoming.image_sha256 {
            bail!(
                "slot {slot} read back different bytes than were written (sha256 {back}, expected {}): the disk may be failing; nothing boots from slot {slot}",
                incoming.image_sha256
            );
        }
        Ok(())
    }

    /// Makes the other slot's generation the default, if it is good.
    ///
    /// The entry keeps its name and gets a priority above all others: its
    /// new content goes to a temporary file that then replaces it, so a cut
    /// leaves the old content or the new one.
    pub fn rollback(&mut self) -> Result<Rollback> {
        let status = self.status()?;
        let Some(booted) = status.booted_slot else {
            bail!("{}: no generation boots from this disk", self.name);
        };
        let other = booted.other();
        let slot = status.slot(other);
        let generation = slot.generation.unwrap_or(0);
        match slot.state {
            SlotState::Good => {}
            SlotState::Empty => {
                bail!("slot {other} is empty: there is no generation to roll back to")
            }
            SlotState::Bad => bail!(
                "generation {generation} in slot {other} failed to boot and is marked bad; refusing to roll back to it"
            ),
            SlotState::Pending => bail!(
                "generation {generation} in slot {other} was never marked good (it has not proved it boots); refusing to roll back to it"
            ),
        }
        let entries = self.entries()?;
        let top = entries.iter().map(|e| e.priority).max().unwrap_or(0);
        let target = entries
            .iter()
            .find(|e| e.name.slot == other)
            .cloned()
            .context("the other slot's entry disappeared")?;
        let path = esp::entry(&target.name);
        let uki = bls::is_uki_entry(&String::from_utf8_lossy(&self.esp.read(&path)?));
        let boot_files = if uki {
            vec![esp::uki(other)]
        } else {
            vec![esp::kernel(other), esp::initrd(other)]
        };
        for f in boot_files {
            if self.find(&f)?.is_none() {
                bail!(
                    "generation {generation} in slot {other} has no {f} on the ESP; it cannot boot"
                );
            }
        }
        if target.priority == top && entries.first().is_some_and(|e| e.name.slot == other) {
            return Ok(Rollback::AlreadyNext {
                slot: other,
                generation,
            });
        }
        let meta = self
            .slot_meta(other)?
            .with_context(|| format!("slot {other} has no description on the ESP"))?;
        let verity = meta.written.as_ref().and_then(|w| w.verity.as_ref());
        let cmdline = verity::entry_cmdline(&meta.cmdline, verity);
        // An entry that starts a UKI stays one: its command line (with
        // the root hash) is inside the UKI, signed, and only the priority,
        // which lives in the entry, changes.
        let text = if uki {
            bls::render_uki_entry(&meta.system, other, generation, top + 1)
        } else {
            bls::render_entry(&meta.system, other, generation, top + 1, &cmdline)
        };
        let tmp = format!("{path}.tmp");
        self.esp.reclaim_lost_clusters()?;
        if self.esp.find(&tmp)?.is_some() {
            self.esp.remove(&tmp)?;
        }
        self.esp.create(&tmp, text.as_bytes())?;
        self.esp.replace(&tmp, &path)?;
        Ok(Rollback::Done {
            slot: other,
            generation,
        })
    }

    /// Strips the tries counter from the booted generation's entry (live)
    /// or from the entry that boots next (a disk image).
    pub fn mark_good(&mut self) -> Result<MarkGood> {
        let status = self.status()?;
        let (Some(slot), Some(generation)) = (status.booted_slot, status.booted_generation) else {
            bail!("{} has no loader entry to mark good", self.name);
        };
        let entry = self
            .entries()?
            .into_iter()
            .find(|e| e.name.slot == slot && e.name.generation == generation)
            .with_context(|| format!("no loader entry for generation {generation} in slot {slot}"))?
            .name;
        if entry.state() == State::Good {
            return Ok(MarkGood::AlreadyGood { slot, generation });
        }
        let good = entry.good();
        self.esp.rename(&esp::entry(&entry), &esp::entry(&good))?;
        Ok(MarkGood::Marked {
            slot,
            generation,
            from: entry,
            to: good,
        })
    }
}
