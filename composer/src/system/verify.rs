//! `pak system verify`: does every entry that can boot boot what it names?
//!
//! A slot with a dm-verity root is checked as the kernel will read it: its
//! tree recomputed from its data and compared with the stored one and the
//! root hash in the loader entry, so a changed block is named. Then the
//! sha256 of everything written (squashfs, seal, tree, trailer) is
//! compared with the one recorded on the ESP. An entry that starts a UKI
//! is checked through it: its sha256, and the root hash sealed in its
//! command line.

use anyhow::{Context, Result, bail};
use pak_boot::bls::{self, EntryName};
use pak_boot::disk::esp;
use pak_boot::verity::Verity;

use super::device::read_sha256;
use super::{Device, PakDisk};
use crate::image::verity;
use crate::util::fsutil::sha256_hex;

impl<D: Device> PakDisk<D> {
    /// Checks every entry that can boot: its kernel and initrd (or UKI) on the ESP
    /// and its slot's squashfs match what was recorded when they were
    /// written. Returns the entries in boot order, each with what is wrong
    /// with it, if anything.
    pub fn verify(&mut self) -> Result<Vec<(EntryName, Option<String>)>> {
        let mut out = Vec::new();
        for e in self.entries()? {
            let problem = self.verify_entry(&e.name).err().map(|e| format!("{e:#}"));
            out.push((e.name, problem));
        }
        Ok(out)
    }

    fn verify_entry(&mut self, name: &EntryName) -> Result<()> {
        let slot = name.slot;
        let description = esp::description(slot);
        let meta = self
            .slot_meta(slot)?
            .with_context(|| format!("no {description}"))?;
        if meta.number != name.generation {
            bail!(
                "the entry names generation {} but slot {slot} holds {}",
                name.generation,
                meta.number
            );
        }
        let w = meta
            .written
            .with_context(|| format!("{description} records no sha256"))?;
        let off = self.partition(slot).offset();
        let entry_text = String::from_utf8_lossy(&self.esp.read(&esp::entry(name))?).into_owned();
        // A UKI entry's command line, root hash included, is sealed in the
        // UKI, which replaces the kernel and initrd on the ESP.
        let uki = bls::is_uki_entry(&entry_text);
        // What carries the root hash, for messages.
        let carrier = if uki {
            esp::uki(slot)
        } else {
            esp::entry(name)
        };
        let entry_verity = if uki {
            let f = esp::uki(slot);
            let want = w
                .uki_sha256
                .as_ref()
                .with_context(|| format!("{description} records no sha256 of {f}"))?;
            let bytes = self.esp.read(&f)?;
            if &sha256_hex(&bytes) != want {
                bail!("{f} does not match its sha256");
            }
            let cmdline = crate::image::uki::cmdline_of(&bytes)
                .with_context(|| format!("{f} has no .cmdline section"))?;
            Verity::from_cmdline(&cmdline)
        } else {
            for (f, want) in [
                (esp::kernel(slot), &w.kernel_sha256),
                (esp::initrd(slot), &w.initrd_sha256),
            ] {
                let bytes = self.esp.read(&f)?;
                if &sha256_hex(&bytes) != want {
                    bail!("{f} does not match its sha256");
                }
            }
            Verity::from_cmdline(&entry_text)
        };
        match (&w.verity, entry_verity) {
            (None, None) => {}
            (Some(_), None) => bail!(
                "{} carries no dm-verity root hash, though slot {slot} has one: it would mount the slot unchecked",
                carrier
            ),
            (_, Some(Err(e))) => bail!("{}: {e}", carrier),
            (None, Some(Ok(_))) => bail!("{description} records no dm-verity root"),
            (Some(recorded), Some(Ok(v))) => {
                if recorded != &v {
                    bail!(
                        "{} and {description} name different dm-verity roots",
                        carrier
                    );
                }
                if let Err(m) = verity::check(self.esp.device(), off, &v)? {
                    bail!("slot {slot}: {m}");
                }
            }
        }
        let got = read_sha256(self.esp.device(), off, w.image_size)?;
        if got != w.image_sha256 {
            bail!("slot {slot} does not hold the generation written there");
        }
        Ok(())
    }
}
