//! The host lifecycle of a pak disk: what boots, what each slot holds,
//! switching to a new generation, rolling back, marking a boot good.
//!
//! One code path serves a disk image (`--disk`, partitions at file offsets,
//! the ESP edited through [`crate::disk::fat::Volume`]) and the running system (the
//! whole disk holding the partition labelled `esp`, the booted slot from
//! `/proc/cmdline`). Everything goes through a [`Device`], so tests can run
//! the same code over memory and stop it after any write.
//!
//! Crash safety rests on one ordering (see [`PakDisk::switch`]): nothing
//! that boots is touched until its replacement is complete, and the last
//! write, the one that makes a new generation boot, is a single directory
//! entry. Whatever prefix of the sequence reaches the disk, systemd-boot
//! finds a complete generation to boot.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pak_boot::bls::{self, EntryName, State};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::disk::fat::Volume;
use crate::disk::gpt::Partition;
use crate::image::generation::{self, GenerationMeta, Written};
use crate::image::squashfs::Reader;
use crate::util::fsutil::sha256_hex;

const ENTRIES: &str = "loader/entries";

/// Storage a pak disk lives on. `flush` must be a durability barrier: what
/// was written before it is on the medium when it returns.
pub trait Device: Read + Write + Seek {
    /// Drops cached copies, so the next read comes from the medium.
    fn forget_cache(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Device for io::Cursor<Vec<u8>> {}

/// A disk image or block device whose `flush` is `fdatasync`.
pub struct SyncFile(File);

impl Read for SyncFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
impl Write for SyncFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}
impl Seek for SyncFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}
impl Device for SyncFile {
    fn forget_cache(&mut self) -> io::Result<()> {
        rustix::fs::fadvise(&self.0, 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    }
}

/// Fault injection: passes reads through and lets `n` writes and flushes
/// reach the device, then fails every later one, as if the power had been
/// cut there. `pak system` honours `PAK_CUT_AFTER_OPS=N` on `--disk` images
/// so tests can stop a real run at any boundary; unset, nothing is cut.
pub struct CutAfter<D> {
    inner: D,
    left: u64,
    /// Writes and flushes that reached the device.
    pub ops: u64,
}

impl<D> CutAfter<D> {
    pub fn new(inner: D, n: u64) -> Self {
        CutAfter {
            inner,
            left: n,
            ops: 0,
        }
    }
    pub fn into_inner(self) -> D {
        self.inner
    }
    fn spend(&mut self) -> io::Result<()> {
        if self.left == 0 {
            return Err(io::Error::other("power cut (PAK_CUT_AFTER_OPS)"));
        }
        self.left -= 1;
        self.ops += 1;
        Ok(())
    }
}

impl<D: Read> Read for CutAfter<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
impl<D: Write> Write for CutAfter<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.spend()?;
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.spend()?;
        self.inner.flush()
    }
}
impl<D: Seek> Seek for CutAfter<D> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}
impl<D: Device> Device for CutAfter<D> {
    fn forget_cache(&mut self) -> io::Result<()> {
        self.inner.forget_cache()
    }
}

/// A disk file or device as `pak system` opens it.
pub type DiskFile = CutAfter<SyncFile>;

/// A pak disk, opened for reading and edits.
pub struct PakDisk<D: Device = DiskFile> {
    name: String,
    esp: Volume<D>,
    root_a: Partition,
    root_b: Partition,
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
    /// The entry's place in systemd-boot's order (higher boots first).
    pub priority: Option<u64>,
    pub system: Option<String>,
    pub packages: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub disk: String,
    /// What is running (live) or what boots next (a disk image).
    pub booted_slot: Option<char>,
    pub booted_generation: Option<u64>,
    /// Whether the booted generation's entry is marked good.
    pub booted_good: Option<bool>,
    pub live: bool,
    /// The entry systemd-boot picks next.
    pub default_entry: Option<String>,
    /// Set when a newer generation used up its tries and the machine fell
    /// back: what happened, in words.
    pub rolled_back: Option<String>,
    pub slots: Vec<SlotStatus>,
    /// `/etc` files the user edited that the booted generation also
    /// changed; the user's copies are in use. Only known on a live system.
    pub etc_conflicts: Vec<String>,
}

/// A loader entry with its boot priority.
#[derive(Debug, Clone)]
struct Entry {
    name: EntryName,
    priority: u64,
}

/// What [`PakDisk::switch`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Switched {
    pub slot: char,
    pub generation: u64,
    pub entry: String,
    pub image_sha256: String,
    pub image_size: u64,
}

/// A generation read from a generation file, checked, ready to write.
pub struct Incoming<S> {
    source: S,
    name: String,
    pub meta: GenerationMeta,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    image_size: u64,
    image_sha256: String,
}

impl<S: Read + Seek> Incoming<S> {
    /// Reads the description, kernel and initrd of the generation file
    /// `source` and checks its seal (the sha256 `pak build` put behind the
    /// squashfs), so a corrupt file is refused before the disk is touched.
    pub fn read(mut source: S, name: &str) -> Result<Self> {
        let not_gen = || {
            format!(
                "{name} is not a pak generation file (make one with `pak build --generation FILE.sqfs`)"
            )
        };
        let (meta, kernel, initrd, used) = {
            let mut r = Reader::open(&mut source, 0).with_context(not_gen)?;
            let text = r.read(generation::META_FILE).with_context(not_gen)?;
            let meta = GenerationMeta::parse(&String::from_utf8_lossy(&text))
                .with_context(|| format!("{name}: its {} is invalid", generation::META_FILE))?;
            let kernel = r
                .read(&meta.kernel)
                .with_context(|| format!("{name} is corrupt: cannot read its kernel"))?;
            let initrd = r
                .read(&meta.initrd)
                .with_context(|| format!("{name} is corrupt: cannot read its initrd"))?;
            (meta, kernel, initrd, r.bytes_used())
        };
        let (image_size, image_sha256) = generation::check_seal(&mut source, used)
            .with_context(|| format!("{name} is corrupt or incomplete"))?;
        Ok(Incoming {
            source,
            name: name.to_string(),
            meta,
            kernel,
            initrd,
            image_size,
            image_sha256,
        })
    }
}

impl PakDisk<DiskFile> {
    /// A disk image file.
    pub fn open_image(path: &Path) -> Result<Self> {
        let f = open_locked(path)?;
        let cut = match std::env::var("PAK_CUT_AFTER_OPS") {
            Ok(n) => n
                .parse()
                .context("PAK_CUT_AFTER_OPS must be a number of operations")?,
            Err(_) => u64::MAX,
        };
        Self::open(
            CutAfter::new(SyncFile(f), cut),
            &path.display().to_string(),
            None,
        )
    }

    /// The disk of the running pak system.
    pub fn open_live() -> Result<Self> {
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
        let f = open_locked(&disk)?;
        Self::open(
            CutAfter::new(SyncFile(f), u64::MAX),
            &disk.display().to_string(),
            Some((slot, generation)),
        )
    }
}

/// Opens a disk for edits, one pak at a time.
fn open_locked(path: &Path) -> Result<File> {
    let f = File::options()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    use rustix::fs::FlockOperation;
    if rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        eprintln!(
            "waiting for another pak command working on {}",
            path.display()
        );
        rustix::fs::flock(&f, FlockOperation::LockExclusive)
            .with_context(|| format!("cannot lock {}", path.display()))?;
    }
    Ok(f)
}

impl<D: Device> PakDisk<D> {
    /// A pak disk on `dev`; `booted` is the running slot and generation.
    pub fn open(mut dev: D, name: &str, booted: Option<(char, u64)>) -> Result<Self> {
        let parts = crate::disk::gpt::read(&mut dev)
            .with_context(|| format!("{name} is not a pak disk"))?;
        let find = |label: &str| {
            parts
                .iter()
                .find(|p| p.label == label)
                .cloned()
                .with_context(|| {
                    format!(
                        "{name} has no partition labelled {label}: it is not a pak disk (pak disks have esp, root-a, root-b and data)"
                    )
                })
        };
        let esp = find("esp")?;
        let root_a = find("root-a")?;
        let root_b = find("root-b")?;
        find("data")?;
        let esp = Volume::open(dev, esp.offset())
            .with_context(|| format!("{name}: the partition labelled esp"))?;
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

    fn partition(&self, slot: char) -> &Partition {
        if slot == 'a' {
            &self.root_a
        } else {
            &self.root_b
        }
    }

    /// Our loader entries in systemd-boot's order: not-bad before bad,
    /// then by priority (`version`), highest first.
    fn entries(&mut self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in self.esp.list(ENTRIES)? {
            let Some(name) = EntryName::parse(&e.name).filter(|_| !e.is_dir) else {
                continue;
            };
            let text = self.esp.read(&format!("{ENTRIES}/{}", e.name))?;
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

    /// The description the ESP keeps of a slot's generation.
    pub fn slot_meta(&mut self, slot: char) -> Option<GenerationMeta> {
        let text = self.esp.read(&format!("pak/{slot}/generation.toml")).ok()?;
        GenerationMeta::parse(std::str::from_utf8(&text).ok()?).ok()
    }

    pub fn status(&mut self) -> Result<Status> {
        let entries = self.entries()?;
        let default = entries.first().cloned();
        let booted = self
            .booted
            .or(default.as_ref().map(|e| (e.name.slot, e.name.generation)));
        let booted_entry = booted.and_then(|(s, g)| {
            entries
                .iter()
                .find(|e| e.name.slot == s && e.name.generation == g)
                .cloned()
        });
        let mut slots = Vec::new();
        for slot in ['a', 'b'] {
            let entry = entries.iter().find(|e| e.name.slot == slot).cloned();
            let meta = self.slot_meta(slot);
            let state = match entry.as_ref().map(|e| e.name.state()) {
                None => "empty",
                Some(State::Good) => "good",
                Some(State::Pending) => "pending",
                Some(State::Bad) => "bad",
            };
            slots.push(SlotStatus {
                slot,
                entry: entry.as_ref().map(|e| e.name.to_string()),
                generation: entry.as_ref().map(|e| e.name.generation),
                state: state.into(),
                tries_left: entry.as_ref().and_then(|e| e.name.tries.map(|t| t.0)),
                tries_done: entry.as_ref().and_then(|e| e.name.tries.map(|t| t.1)),
                priority: entry.as_ref().map(|e| e.priority),
                system: meta.as_ref().map(|m| m.system.clone()),
                packages: meta.as_ref().map(|m| m.packages.len()),
            });
        }
        // A bad entry ranked above the booted one: it was the default, used
        // up its tries, and systemd-boot fell back.
        let rolled_back = booted_entry.as_ref().and_then(|b| {
            entries
                .iter()
                .filter(|e| e.name.state() == State::Bad && e.priority > b.priority)
                .map(|e| {
                    format!(
                        "generation {} (slot {}) failed to boot {} times and was abandoned; generation {} (slot {}) runs instead",
                        e.name.generation,
                        e.name.slot,
                        e.name.tries.map(|t| t.1).unwrap_or(0),
                        b.name.generation,
                        b.name.slot
                    )
                })
                .next()
        });
        let etc_conflicts = if self.booted.is_some() {
            // Written by `/init` on every boot: `/etc` files the user changed
            // that the booted generation changed too (the user's copy wins).
            std::fs::read_to_string(Path::new("/var").join(pak_boot::init::ETC_CONFLICTS))
                .map(|t| t.lines().map(String::from).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Status {
            disk: self.name.clone(),
            booted_slot: booted.map(|b| b.0),
            booted_generation: booted.map(|b| b.1),
            booted_good: booted_entry.map(|e| e.name.state() == State::Good),
            live: self.booted.is_some(),
            default_entry: default.map(|e| e.name.to_string()),
            rolled_back,
            slots,
            etc_conflicts,
        })
    }

    /// Strips the tries counter from the booted generation's entry (live)
    /// or from the entry that boots next (a disk image).
    pub fn mark_good(&mut self) -> Result<String> {
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

    /// Writes `incoming` to the slot that is not booted and makes it the default
    /// with a tries counter. The order of writes, each finished and synced
    /// before the next:
    ///
    /// 1. free what an interrupted earlier run left on the ESP;
    /// 2. remove the target slot's loader entries (the booted, good
    ///    generation stays the default and the fallback), then its boot files;
    /// 3. write the squashfs to the slot's partition, sync, drop the cache
    ///    and read it back: its sha256 must be the generation's;
    /// 4. kernel, initrd and description to `pak/<slot>/` on the ESP, each
    ///    data first and its directory entry last;
    /// 5. the new loader entry, with the highest priority: the one write
    ///    that makes the new generation boot.
    ///
    /// A cut before 5 leaves the booted generation the only entry; after 5
    /// the new one boots with tries, and falls back to the old one if it
    /// never gets marked good.
    pub fn switch<S: Read + Seek>(
        &mut self,
        incoming: &mut Incoming<S>,
        force: bool,
    ) -> Result<Switched> {
        let status = self.status()?;
        let target = match status.booted_slot {
            Some('a') => 'b',
            _ => 'a',
        };
        let meta = incoming.meta.clone();
        let meta = &meta;
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
                "no space in slot {target}: generation {} needs {} MiB, the slot has {} MiB; make the generation smaller or the slots larger ([image] slot_size)",
                meta.number,
                incoming.image_size.div_ceil(1 << 20),
                part.size() >> 20
            );
        }
        let written = Written::of(
            &incoming.image_sha256,
            incoming.image_size,
            &incoming.kernel,
            &incoming.initrd,
        );
        let mut esp_meta = meta.clone();
        esp_meta.written = Some(written);
        let meta_text = esp_meta.to_toml();
        let entries = self.entries()?;
        let priority = entries.iter().map(|e| e.priority).max().unwrap_or(0) + 1;
        let entry = EntryName {
            slot: target,
            generation: meta.number,
            tries: Some((meta.tries.max(1), 0)),
        };
        let entry_text =
            bls::render_entry(&meta.system, target, meta.number, priority, &meta.cmdline);
        self.check_esp_room(
            target,
            &entries,
            &[
                &incoming.kernel,
                &incoming.initrd,
                meta_text.as_bytes(),
                entry_text.as_bytes(),
            ],
        )?;

        // 1.
        self.esp.reclaim_lost_clusters()?;
        // 2.
        for e in entries.iter().filter(|e| e.name.slot == target) {
            self.esp.remove(&format!("{ENTRIES}/{}", e.name))?;
        }
        let dir = format!("pak/{target}");
        if self.esp.find(&dir)?.is_some() {
            for f in self.esp.list(&dir)? {
                if !f.is_dir {
                    self.esp.remove(&format!("{dir}/{}", f.name))?;
                }
            }
        }
        // 3.
        self.write_slot(target, &part, incoming)?;
        // 4.
        for d in ["pak", dir.as_str()] {
            if self.esp.find(d)?.is_none() {
                self.esp.create_dir(d)?;
            }
        }
        self.esp
            .create(&format!("{dir}/vmlinuz"), &incoming.kernel)?;
        self.esp
            .create(&format!("{dir}/initrd"), &incoming.initrd)?;
        self.esp
            .create(&format!("{dir}/generation.toml"), meta_text.as_bytes())?;
        // 5.
        self.esp
            .create(&format!("{ENTRIES}/{entry}"), entry_text.as_bytes())?;
        Ok(Switched {
            slot: target,
            generation: meta.number,
            entry: entry.to_string(),
            image_sha256: incoming.image_sha256.clone(),
            image_size: incoming.image_size,
        })
    }

    /// Refuses a switch the ESP has no room for, before anything is written.
    fn check_esp_room(&mut self, target: char, entries: &[Entry], files: &[&[u8]]) -> Result<()> {
        let mut freed = 0;
        for e in entries.iter().filter(|e| e.name.slot == target) {
            if let Some(f) = self.esp.find(&format!("{ENTRIES}/{}", e.name))? {
                freed += self.esp.footprint(f.size as u64);
            }
        }
        let dir = format!("pak/{target}");
        if self.esp.find(&dir)?.is_some() {
            for f in self.esp.list(&dir)? {
                freed += self.esp.footprint(f.size as u64);
            }
        }
        // Two directories may be new.
        let need: u64 = files
            .iter()
            .map(|f| self.esp.footprint(f.len() as u64))
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

    fn write_slot<S: Read + Seek>(
        &mut self,
        slot: char,
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
    pub fn rollback(&mut self) -> Result<String> {
        let status = self.status()?;
        let Some(booted) = status.booted_slot else {
            bail!("{}: no generation boots from this disk", self.name);
        };
        let other = if booted == 'a' { 'b' } else { 'a' };
        let slot = &status.slots[if other == 'a' { 0 } else { 1 }];
        let generation = slot.generation.unwrap_or(0);
        match slot.state.as_str() {
            "good" => {}
            "empty" => bail!("slot {other} is empty: there is no generation to roll back to"),
            "bad" => bail!(
                "generation {generation} in slot {other} failed to boot and is marked bad; refusing to roll back to it"
            ),
            _ => bail!(
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
        for f in ["vmlinuz", "initrd"] {
            if self.esp.find(&format!("pak/{other}/{f}"))?.is_none() {
                bail!(
                    "generation {generation} in slot {other} has no pak/{other}/{f} on the ESP; it cannot boot"
                );
            }
        }
        if target.priority == top && entries.first().is_some_and(|e| e.name.slot == other) {
            return Ok(format!(
                "generation {generation} (slot {other}) already boots next"
            ));
        }
        let meta = self
            .slot_meta(other)
            .with_context(|| format!("slot {other} has no description on the ESP"))?;
        let text = bls::render_entry(&meta.system, other, generation, top + 1, &meta.cmdline);
        let path = format!("{ENTRIES}/{}", target.name);
        let tmp = format!("{ENTRIES}/{}.tmp", target.name);
        self.esp.reclaim_lost_clusters()?;
        if self.esp.find(&tmp)?.is_some() {
            self.esp.remove(&tmp)?;
        }
        self.esp.create(&tmp, text.as_bytes())?;
        self.esp.replace(&tmp, &path)?;
        Ok(format!(
            "generation {generation} (slot {other}) boots next; reboot to use it"
        ))
    }

    /// Packages added, removed and changed from generation `a` to `b`.
    pub fn diff(&mut self, a: Option<u64>, b: Option<u64>) -> Result<Diff> {
        let status = self.status()?;
        let booted = status.booted_slot;
        let pick = |me: &mut Self, want: Option<u64>, default_slot: Option<char>| {
            let slot = match want {
                Some(g) => status
                    .slots
                    .iter()
                    .find(|s| s.generation == Some(g))
                    .map(|s| s.slot)
                    .with_context(|| format!("generation {g} is in neither slot of {}", me.name))?,
                None => default_slot.context("no generation to compare with")?,
            };
            me.slot_meta(slot)
                .with_context(|| format!("slot {slot} holds no generation"))
        };
        let other = booted.map(|s| if s == 'a' { 'b' } else { 'a' });
        let from = pick(self, a, booted)?;
        let to = pick(self, b, other)?;
        Ok(Diff::between(&from, &to))
    }

    /// Checks every entry that can boot: its kernel and initrd on the ESP
    /// and its slot's squashfs match what was recorded when they were
    /// written. Returns the entries in boot order with what is wrong.
    pub fn verify(&mut self) -> Result<Vec<(String, Option<String>)>> {
        let mut out = Vec::new();
        for e in self.entries()? {
            let problem = self.verify_entry(&e.name).err().map(|e| format!("{e:#}"));
            out.push((e.name.to_string(), problem));
        }
        Ok(out)
    }

    fn verify_entry(&mut self, name: &EntryName) -> Result<()> {
        let slot = name.slot;
        let meta = self
            .slot_meta(slot)
            .with_context(|| format!("no pak/{slot}/generation.toml"))?;
        if meta.number != name.generation {
            bail!(
                "the entry names generation {} but slot {slot} holds {}",
                name.generation,
                meta.number
            );
        }
        let w = meta
            .written
            .with_context(|| format!("pak/{slot}/generation.toml records no sha256"))?;
        for (f, want) in [("vmlinuz", &w.kernel_sha256), ("initrd", &w.initrd_sha256)] {
            let bytes = self.esp.read(&format!("pak/{slot}/{f}"))?;
            if &sha256_hex(&bytes) != want {
                bail!("pak/{slot}/{f} does not match its sha256");
            }
        }
        let off = self.partition(slot).offset();
        let got = read_sha256(self.esp.device(), off, w.image_size)?;
        if got != w.image_sha256 {
            bail!("slot {slot} does not hold the generation written there");
        }
        Ok(())
    }
}

fn read_sha256<D: Read + Seek>(dev: &mut D, offset: u64, len: u64) -> Result<String> {
    dev.seek(SeekFrom::Start(offset))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        dev.read_exact(&mut buf[..n])?;
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(hash.finalize()))
}

/// What changed between two generations.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Diff {
    pub from: u64,
    pub to: u64,
    pub added: Vec<(String, String)>,
    pub removed: Vec<(String, String)>,
    /// (name, old version, new version); a rebuild of the same version
    /// shows twice the same version.
    pub changed: Vec<(String, String, String)>,
}

impl Diff {
    pub fn between(a: &GenerationMeta, b: &GenerationMeta) -> Diff {
        use std::collections::BTreeMap;
        let map = |m: &GenerationMeta| -> BTreeMap<String, (String, String)> {
            m.packages
                .iter()
                .map(|p| (p.name.clone(), (p.version.clone(), p.sha256.clone())))
                .collect()
        };
        let (old, new) = (map(a), map(b));
        let mut d = Diff {
            from: a.number,
            to: b.number,
            added: vec![],
            removed: vec![],
            changed: vec![],
        };
        for (name, (v, sha)) in &new {
            match old.get(name) {
                None => d.added.push((name.clone(), v.clone())),
                Some((ov, osha)) if osha != sha => {
                    d.changed.push((name.clone(), ov.clone(), v.clone()))
                }
                _ => {}
            }
        }
        for (name, (v, _)) in &old {
            if !new.contains_key(name) {
                d.removed.push((name.clone(), v.clone()));
            }
        }
        d
    }

    pub fn render(&self) -> String {
        let mut out = format!("generation {} -> {}\n", self.from, self.to);
        for (n, v) in &self.added {
            out.push_str(&format!("+ {n} {v}\n"));
        }
        for (n, v) in &self.removed {
            out.push_str(&format!("- {n} {v}\n"));
        }
        for (n, a, b) in &self.changed {
            out.push_str(&format!("~ {n} {a} -> {b}\n"));
        }
        if self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty() {
            out.push_str("same packages\n");
        }
        out
    }
}

/// Whether the running system booted an entry that still counts tries
/// (what `/init` asks before arming the watchdog). Unknown counts as no:
/// a watchdog must never be armed where nothing will stop it.
pub fn booted_on_trial() -> bool {
    PakDisk::open_live()
        .and_then(|mut d| d.status())
        .is_ok_and(|s| s.booted_good == Some(false))
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
            let good = match s.booted_good {
                Some(true) => "marked good",
                Some(false) => "not marked good yet",
                None => "no entry",
            };
            out.push_str(&format!(
                "{verb}: generation {g} from slot {slot} ({good})\n"
            ))
        }
        _ => out.push_str("no generation boots from this disk\n"),
    }
    out.push_str(&format!(
        "default entry: {}\n",
        s.default_entry.as_deref().unwrap_or("none")
    ));
    if let Some(r) = &s.rolled_back {
        out.push_str(&format!("rolled back: {r}\n"));
    }
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
    if !s.etc_conflicts.is_empty() {
        out.push_str(
            "/etc files you changed that this generation also changed (yours are in use):\n",
        );
        for c in &s.etc_conflicts {
            out.push_str(&format!("  {c}\n"));
        }
    }
    out
}
