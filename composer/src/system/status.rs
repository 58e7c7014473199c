//! What a pak disk boots and what each slot holds, as data; the CLI
//! renders it as text or JSON.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use pak_boot::bls::State;
use pak_boot::disk::Slot;
use serde::{Serialize, Serializer};

use super::{Device, PakDisk};

/// What a slot's loader entry says about the generation in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Marked good: it booted and proved itself.
    Good,
    /// On trial: boots with a tries counter until marked good.
    Pending,
    /// Used up its tries; systemd-boot sorts it last.
    Bad,
    /// No loader entry.
    Empty,
}

impl SlotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Good => "good",
            SlotState::Pending => "pending",
            SlotState::Bad => "bad",
            SlotState::Empty => "empty",
        }
    }
}

impl From<State> for SlotState {
    fn from(s: State) -> SlotState {
        match s {
            State::Good => SlotState::Good,
            State::Pending => SlotState::Pending,
            State::Bad => SlotState::Bad,
        }
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotStatus {
    #[serde(serialize_with = "slot_name")]
    pub slot: Slot,
    /// The loader entry's file name, if the slot has one.
    pub entry: Option<String>,
    pub generation: Option<u64>,
    pub state: SlotState,
    pub tries_left: Option<u32>,
    pub tries_done: Option<u32>,
    /// The entry's place in systemd-boot's order (higher boots first).
    pub priority: Option<u64>,
    /// From the slot's description on the ESP.
    pub system: Option<String>,
    pub packages: Option<usize>,
    /// Why the slot's description on the ESP could not be read (it is
    /// there but unreadable or corrupt). The slot is still listed, from
    /// its loader entry, so the other slot's status is not lost to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub disk: String,
    /// What is running (live) or what boots next (a disk image).
    #[serde(serialize_with = "maybe_slot_name")]
    pub booted_slot: Option<Slot>,
    pub booted_generation: Option<u64>,
    /// Whether the booted generation's entry is marked good.
    pub booted_good: Option<bool>,
    pub live: bool,
    /// The entry systemd-boot picks next.
    pub default_entry: Option<String>,
    /// Set when a newer generation used up its tries and the machine fell
    /// back.
    pub rolled_back: Option<Fallback>,
    /// Slot a, then slot b.
    pub slots: Vec<SlotStatus>,
    /// `/etc` files the user edited that the booted generation also
    /// changed; the user's copies are in use. Only known on a live system.
    pub etc_conflicts: Vec<String>,
    /// What this machine's provisioning applied at first boot, and from
    /// where. Only known on a live system; `None` when it was never
    /// provisioned.
    pub provisioned: Option<super::provision::Record>,
    /// Why the provisioning record could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provision_error: Option<String>,
    /// How this boot's check of the data partition went. Only known on a
    /// live system.
    pub data_check: Option<super::datacheck::DataCheck>,
    /// Whether the next boot wipes the data partition (`pak system
    /// factory-reset`); `None` when the partition cannot be read (not root).
    pub factory_reset_pending: Option<bool>,
    /// The channel, the last check, failed and pending generations: filled
    /// by `pak system status` ([`PakDisk::update_status`]), `None` from
    /// [`PakDisk::status`] alone, which `/init` and every switch and update
    /// call and which need not read the image's configuration.
    pub update: Option<super::update::UpdateStatus>,
}

impl Status {
    pub fn slot(&self, slot: Slot) -> &SlotStatus {
        self.slots
            .iter()
            .find(|s| s.slot == slot)
            .expect("status lists both slots")
    }
}

/// A generation that failed to boot and was abandoned for another.
///
/// Serialized as its sentence: the JSON status has always carried
/// `rolled_back` as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub failed_slot: Slot,
    pub failed_generation: u64,
    /// Boots it used up.
    pub tries: u32,
    pub running_slot: Slot,
    pub running_generation: u64,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "generation {} (slot {}) failed to boot {} times and was abandoned; generation {} (slot {}) runs instead",
            self.failed_generation,
            self.failed_slot,
            self.tries,
            self.running_generation,
            self.running_slot
        )
    }
}

impl Serialize for Fallback {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub(super) fn slot_name<S: Serializer>(slot: &Slot, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(slot.as_str())
}

fn maybe_slot_name<S: Serializer>(slot: &Option<Slot>, s: S) -> Result<S::Ok, S::Error> {
    match slot {
        Some(slot) => s.serialize_some(slot.as_str()),
        None => s.serialize_none(),
    }
}

impl<D: Device> PakDisk<D> {
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
        for slot in Slot::ALL {
            let entry = entries.iter().find(|e| e.name.slot == slot).cloned();
            let (meta, description_error) = match self.slot_meta(slot) {
                Ok(m) => (m, None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            slots.push(SlotStatus {
                slot,
                entry: entry.as_ref().map(|e| e.name.to_string()),
                generation: entry.as_ref().map(|e| e.name.generation),
                state: entry
                    .as_ref()
                    .map_or(SlotState::Empty, |e| e.name.state().into()),
                tries_left: entry.as_ref().and_then(|e| e.name.tries.map(|t| t.0)),
                tries_done: entry.as_ref().and_then(|e| e.name.tries.map(|t| t.1)),
                priority: entry.as_ref().map(|e| e.priority),
                system: meta.as_ref().map(|m| m.system.clone()),
                packages: meta.as_ref().map(|m| m.packages.len()),
                description_error,
            });
        }
        // A bad entry ranked above the booted one: it was the default, used
        // up its tries, and systemd-boot fell back.
        let rolled_back = booted_entry.as_ref().and_then(|b| {
            entries
                .iter()
                .filter(|e| e.name.state() == State::Bad && e.priority > b.priority)
                .map(|e| Fallback {
                    failed_slot: e.name.slot,
                    failed_generation: e.name.generation,
                    tries: e.name.tries.map(|t| t.1).unwrap_or(0),
                    running_slot: b.name.slot,
                    running_generation: b.name.generation,
                })
                .next()
        });
        let etc_conflicts = if self.booted.is_some() {
            etc_conflicts()?
        } else {
            Vec::new()
        };
        // A record that cannot be read is reported, not fatal: the rest of
        // the status is what an operator needs most.
        let (provisioned, provision_error) = if self.booted.is_some() {
            match super::provision::read_record(Path::new("/")) {
                Ok(r) => (r, None),
                Err(e) => (None, Some(format!("{e:#}"))),
            }
        } else {
            (None, None)
        };
        let data_check = if self.booted.is_some() {
            super::datacheck::read()
        } else {
            None
        };
        let factory_reset_pending = self.factory_reset_pending().ok();
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
            provisioned,
            provision_error,
            data_check,
            factory_reset_pending,
            update: None,
        })
    }
}

/// The list `/init` writes on every boot: `/etc` files the user changed
/// that the booted generation changed too (the user's copy wins). None
/// before `/var` is mounted, as when `/init` itself asks for the status.
fn etc_conflicts() -> Result<Vec<String>> {
    let path = Path::new("/var").join(pak_boot::init::ETC_CONFLICTS);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t.lines().map(String::from).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
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
