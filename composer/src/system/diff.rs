//! Packages added, removed and changed between two generations on a disk.

use anyhow::{Context, Result};
use pak_boot::disk::Slot;
use serde::Serialize;

use super::{Device, PakDisk};
use crate::image::generation::GenerationMeta;

/// What changed between two generations.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Diff {
    pub from: u64,
    pub to: u64,
    /// (name, version)
    pub added: Vec<(String, String)>,
    /// (name, version)
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

    /// Whether both generations hold the same packages.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl<D: Device> PakDisk<D> {
    /// Packages added, removed and changed from generation `a` to `b`. By
    /// default, what the next change of generation changes: on a running
    /// system from the running generation to the other slot's; on a disk
    /// image, which runs nothing, from the other slot's to the one that
    /// boots next (after a switch: old -> new).
    pub fn diff(&mut self, a: Option<u64>, b: Option<u64>) -> Result<Diff> {
        let status = self.status()?;
        let (from_slot, to_slot) = match self.booted {
            Some((running, _)) => (Some(running), Some(running.other())),
            None => (status.booted_slot.map(|s| s.other()), status.booted_slot),
        };
        let pick = |me: &mut Self,
                    want: Option<u64>,
                    default_slot: Option<Slot>|
         -> Result<GenerationMeta> {
            let slot = match want {
                Some(g) => status
                    .slots
                    .iter()
                    .find(|s| s.generation == Some(g))
                    .map(|s| s.slot)
                    .with_context(|| format!("generation {g} is in neither slot of {}", me.name))?,
                None => default_slot.context("no generation to compare with")?,
            };
            me.slot_meta(slot)?
                .with_context(|| format!("slot {slot} holds no generation"))
        };
        let from = pick(self, a, from_slot)?;
        let to = pick(self, b, to_slot)?;
        Ok(Diff::between(&from, &to))
    }
}
