//! Boot Loader Specification type #1 entries, named for systemd-boot's
//! boot counting: `pak-<slot>-<generation>[+LEFT[-DONE]].conf`.
//!
//! An entry with a counter is pending; systemd-boot decrements LEFT (and
//! increments DONE) by renaming the file before each boot, and sorts an
//! entry with LEFT = 0 ("bad") after all others. Without a counter the
//! entry is good. `loader.conf` selects `default pak-*`: the first match in
//! systemd-boot's order, i.e. the newest generation not yet bad
//! (systemd.io/AUTOMATIC_BOOT_ASSESSMENT).

use std::fmt;

use crate::disk::{Slot, esp};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    pub slot: Slot,
    pub generation: u64,
    /// (tries left, tries done); `None` for an entry marked good.
    pub tries: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Good,
    Pending,
    Bad,
}

impl EntryName {
    pub fn parse(file: &str) -> Option<EntryName> {
        let stem = file.strip_suffix(".conf")?;
        let rest = stem.strip_prefix("pak-")?;
        let (id, counter) = match rest.split_once('+') {
            Some((id, c)) => (id, Some(c)),
            None => (rest, None),
        };
        let (slot, generation) = id.split_once('-')?;
        let slot = Slot::parse(slot)?;
        let generation = generation.parse().ok()?;
        let tries = match counter {
            None => None,
            Some(c) => Some(match c.split_once('-') {
                Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
                None => (c.parse().ok()?, 0),
            }),
        };
        Some(EntryName {
            slot,
            generation,
            tries,
        })
    }

    pub fn state(&self) -> State {
        match self.tries {
            None => State::Good,
            Some((0, _)) => State::Bad,
            Some(_) => State::Pending,
        }
    }

    /// The name without a counter: what `mark-good` renames to.
    pub fn good(&self) -> EntryName {
        EntryName {
            tries: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pak-{}-{}", self.slot, self.generation)?;
        match self.tries {
            None => {}
            Some((l, 0)) => write!(f, "+{l}")?,
            Some((l, d)) => write!(f, "+{l}-{d}")?,
        }
        f.write_str(".conf")
    }
}

/// The command line a generation boots with from `slot`: the Pakfile's
/// (with its dm-verity root), `panic=10` unless the command line sets
/// `panic=` itself (a generation whose init dies must reboot, and so use
/// up a try, not hang), and the slot and generation `/init` reads.
pub fn boot_options(slot: Slot, generation: u64, cmdline: &str) -> String {
    let panic = if cmdline.split_whitespace().any(|w| w.starts_with("panic=")) {
        ""
    } else {
        " panic=10"
    };
    format!("{cmdline}{panic} pak.slot={slot} pak.generation={generation}")
}

/// The content of an entry for `slot` holding `generation`.
///
/// `priority` goes into `version`: all pak entries share one `sort-key`, so
/// systemd-boot orders them by it, highest first, and `default pak-*` picks
/// the first that is not bad. A switch gives the new entry the highest
/// priority; a rollback raises the other slot's entry above the booted one.
pub fn render_entry(
    system: &str,
    slot: Slot,
    generation: u64,
    priority: u64,
    cmdline: &str,
) -> String {
    let (kernel, initrd) = (esp::kernel(slot), esp::initrd(slot));
    format!(
        "title {system} (generation {generation}, slot {slot})\nversion {priority}\nsort-key pak\nlinux /{kernel}\ninitrd /{initrd}\noptions {}\n",
        boot_options(slot, generation, cmdline)
    )
}

/// The entry for a slot that boots a unified kernel image: named,
/// counted and ordered as [`render_entry`]'s, but starting the slot's
/// UKI, whose command line is inside it (and, signed, cannot be changed:
/// systemd-stub ignores any other under Secure Boot). The entry is not
/// signed, which is why the priority lives here and not in the UKI: a
/// rollback must be able to change it on a host that has no key.
pub fn render_uki_entry(system: &str, slot: Slot, generation: u64, priority: u64) -> String {
    format!(
        "title {system} (generation {generation}, slot {slot})\nversion {priority}\nsort-key pak\nefi /{}\n",
        esp::uki(slot)
    )
}

/// Whether an entry's content starts a unified kernel image.
pub fn is_uki_entry(content: &str) -> bool {
    content.lines().any(|l| l.trim_start().starts_with("efi "))
}

/// The `version` of an entry's content: its boot priority.
pub fn priority(content: &str) -> Option<u64> {
    content.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(char::is_whitespace)?;
        (k == "version").then(|| v.trim().parse().ok())?
    })
}

pub const LOADER_CONF: &str =
    "default pak-*\ntimeout 0\neditor no\nauto-entries no\nauto-firmware no\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        for (s, state) in [
            ("pak-a-1.conf", State::Good),
            ("pak-b-12+3.conf", State::Pending),
            ("pak-a-2+2-1.conf", State::Pending),
            ("pak-b-3+0-3.conf", State::Bad),
        ] {
            let n = EntryName::parse(s).unwrap();
            assert_eq!(n.to_string(), s);
            assert_eq!(n.state(), state);
        }
        assert_eq!(
            EntryName::parse("pak-b-12+2-1.conf")
                .unwrap()
                .good()
                .to_string(),
            "pak-b-12.conf"
        );
        for bad in [
            "pak-c-1.conf",
            "pak-a-x.conf",
            "other.conf",
            "pak-a-1+x.conf",
            "pak-a-1",
        ] {
            assert!(EntryName::parse(bad).is_none(), "{bad}");
        }
        let e = render_entry("minimal", Slot::A, 1, 7, "console=ttyS0");
        assert!(e.contains("options console=ttyS0 panic=10 pak.slot=a pak.generation=1"));
        assert_eq!(priority(&e), Some(7));
        let e = render_entry("minimal", Slot::B, 2, 3, "console=ttyS0 panic=5");
        assert!(e.contains("options console=ttyS0 panic=5 pak.slot=b"));
        assert_eq!(priority("title x\n"), None);
        let u = render_uki_entry("minimal", Slot::B, 4, 9);
        assert!(
            u.contains("\nefi /pak/b/linux.efi\n") && !u.contains("options"),
            "{u}"
        );
        assert_eq!(priority(&u), Some(9));
        assert!(is_uki_entry(&u) && !is_uki_entry(&e));
        assert_eq!(
            boot_options(Slot::B, 4, "console=ttyS0"),
            "console=ttyS0 panic=10 pak.slot=b pak.generation=4"
        );
    }
}
