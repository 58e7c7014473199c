//! The disk contract: the names `pak build` writes, the host lifecycle
//! (`pak system`) edits and `/init` and systemd-boot read. Each is defined
//! here once, so the three cannot drift apart.
//!
//! ```text
//! GPT: esp | root-a | root-b | data
//! ESP: EFI/BOOT/BOOTX64.EFI          systemd-boot
//!      loader/loader.conf            `default pak-*`
//!      loader/entries/pak-<slot>-<generation>[+tries].conf
//!      pak/<slot>/vmlinuz, initrd    the slot's boot files
//!      pak/<slot>/generation.toml    the slot's description
//! ```

use std::fmt;
use std::str::FromStr;

use crate::bls::{self, EntryName};

/// GPT label of the EFI system partition.
pub const ESP_LABEL: &str = "esp";
/// GPT label of the data partition (`/var`, `/home`, `/etc`'s upper layer).
pub const DATA_LABEL: &str = "data";

/// One of the two root partitions a generation is written to.
///
/// Ordered `A` before `B`, which is how systemd-boot orders entries of the
/// same priority by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The slot a switch writes to while this one holds the fallback.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `a` or `b`: the slot's name in `pak.slot=`, entry names and ESP paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The GPT label of the slot's root partition.
    pub fn label(self) -> &'static str {
        match self {
            Slot::A => "root-a",
            Slot::B => "root-b",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A slot name that is neither `a` nor `b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotASlot(pub String);

impl fmt::Display for NotASlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is neither slot a nor slot b", self.0)
    }
}

impl std::error::Error for NotASlot {}

impl FromStr for Slot {
    type Err = NotASlot;
    fn from_str(s: &str) -> Result<Slot, NotASlot> {
        Slot::parse(s).ok_or_else(|| NotASlot(s.to_string()))
    }
}

/// Paths on the ESP, relative to its root (FAT, so `/`-separated).
pub mod esp {
    use super::Slot;
    use crate::bls::EntryName;

    /// The removable-media boot path: firmware starts it without an NVRAM
    /// entry, so a disk boots wherever it is attached.
    pub const BOOT_LOADER: &str = "EFI/BOOT/BOOTX64.EFI";
    pub const LOADER_CONF: &str = "loader/loader.conf";
    pub const ENTRIES: &str = "loader/entries";
    /// Holds one directory per slot.
    pub const PAK_DIR: &str = "pak";

    /// `pak/<slot>`: the slot's boot files and description.
    pub fn slot_dir(slot: Slot) -> String {
        format!("{PAK_DIR}/{slot}")
    }
    pub fn kernel(slot: Slot) -> String {
        format!("{PAK_DIR}/{slot}/vmlinuz")
    }
    pub fn initrd(slot: Slot) -> String {
        format!("{PAK_DIR}/{slot}/initrd")
    }
    /// The slot's unified kernel image, when it boots one.
    pub fn uki(slot: Slot) -> String {
        format!("{PAK_DIR}/{slot}/linux.efi")
    }
    /// The slot's generation description, so the host side can report a
    /// slot without reading its squashfs.
    pub fn description(slot: Slot) -> String {
        format!("{PAK_DIR}/{slot}/generation.toml")
    }
    /// `loader/entries/<name>`.
    pub fn entry(name: &EntryName) -> String {
        format!("{ENTRIES}/{name}")
    }
}

/// What one generation puts on the ESP to boot from `slot`.
#[derive(Debug, Clone)]
pub struct SlotBoot<'a> {
    pub slot: Slot,
    pub generation: u64,
    /// The system's name, for the entry's title.
    pub system: &'a str,
    pub cmdline: &'a str,
    /// Boot tries before systemd-boot gives up on it; `None` for an entry
    /// already marked good.
    pub tries: Option<u32>,
    /// See [`bls::render_entry`].
    pub priority: u64,
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    /// `generation.toml`, as written next to the kernel.
    pub description: &'a [u8],
}

impl SlotBoot<'_> {
    pub fn entry_name(&self) -> EntryName {
        EntryName {
            slot: self.slot,
            generation: self.generation,
            tries: self.tries.map(|t| (t, 0)),
        }
    }

    pub fn entry_text(&self) -> String {
        self.entry_text_booting(false)
    }

    /// The entry's content; `uki`: it starts the slot's unified kernel
    /// image rather than its kernel and initrd.
    pub fn entry_text_booting(&self, uki: bool) -> String {
        if uki {
            bls::render_uki_entry(self.system, self.slot, self.generation, self.priority)
        } else {
            bls::render_entry(
                self.system,
                self.slot,
                self.generation,
                self.priority,
                self.cmdline,
            )
        }
    }

    /// The files, in the order a switch must write them: the loader entry
    /// last, because its directory entry is what makes the generation boot,
    /// and everything it names must be complete before it appears.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        self.files_booting(None)
    }

    /// [`SlotBoot::files`] for a slot that boots `uki` (a unified kernel
    /// image: kernel, initrd and this slot's command line in one file,
    /// signed for Secure Boot or not) instead of its kernel and initrd.
    pub fn files_booting(&self, uki: Option<&[u8]>) -> Vec<(String, Vec<u8>)> {
        let boot = match uki {
            Some(uki) => vec![(esp::uki(self.slot), uki.to_vec())],
            None => vec![
                (esp::kernel(self.slot), self.kernel.to_vec()),
                (esp::initrd(self.slot), self.initrd.to_vec()),
            ],
        };
        boot.into_iter()
            .chain([
                (esp::description(self.slot), self.description.to_vec()),
                (
                    esp::entry(&self.entry_name()),
                    self.entry_text_booting(uki.is_some()).into_bytes(),
                ),
            ])
            .collect()
    }
}

/// The whole ESP of a new disk: the boot loader, its configuration, and
/// `boot`'s files. A new disk is written whole and renamed into place, so
/// this order only fixes the image's bytes (the same inputs give the same
/// image); it is the order disks have always been written in.
pub fn new_esp(boot_loader: &[u8], boot: &SlotBoot) -> Vec<(String, Vec<u8>)> {
    new_esp_booting(boot_loader, boot, None)
}

/// [`new_esp`] whose slot boots `uki` ([`SlotBoot::files_booting`]).
pub fn new_esp_booting(
    boot_loader: &[u8],
    boot: &SlotBoot,
    uki: Option<&[u8]>,
) -> Vec<(String, Vec<u8>)> {
    let mut slot = boot.files_booting(uki);
    let entry = slot.pop().expect("a slot's files end with its entry");
    let mut out = vec![
        (esp::BOOT_LOADER.to_string(), boot_loader.to_vec()),
        (
            esp::LOADER_CONF.to_string(),
            bls::LOADER_CONF.as_bytes().to_vec(),
        ),
        entry,
    ];
    out.extend(slot);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots() {
        for s in Slot::ALL {
            assert_eq!(s.other().other(), s);
            assert_ne!(s.other(), s);
            assert_eq!(s.as_str().parse::<Slot>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
            assert_eq!(s.label(), format!("root-{s}"));
        }
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::parse("c"), None);
        assert_eq!(Slot::parse("A"), None);
        assert_eq!("".parse::<Slot>(), Err(NotASlot(String::new())));
        assert!(Slot::A < Slot::B);
    }

    fn boot(slot: Slot, tries: Option<u32>) -> SlotBoot<'static> {
        SlotBoot {
            slot,
            generation: 2,
            system: "minimal",
            cmdline: "console=ttyS0",
            tries,
            priority: 5,
            kernel: b"kernel",
            initrd: b"initrd",
            description: b"number = 2\n",
        }
    }

    #[test]
    fn a_uki_slot_puts_its_image_and_an_efi_entry_on_the_esp() {
        let b = boot(Slot::A, Some(3));
        let files = b.files_booting(Some(b"MZuki"));
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "pak/a/linux.efi",
                "pak/a/generation.toml",
                "loader/entries/pak-a-2+3.conf"
            ]
        );
        let entry = String::from_utf8(files[2].1.clone()).unwrap();
        assert!(entry.contains("\nefi /pak/a/linux.efi\n"), "{entry}");
        assert_eq!(bls::priority(&entry), Some(5));
    }

    #[test]
    fn a_slot_puts_its_boot_files_then_its_entry_on_the_esp() {
        let b = boot(Slot::B, Some(3));
        let files = b.files();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "pak/b/vmlinuz",
                "pak/b/initrd",
                "pak/b/generation.toml",
                "loader/entries/pak-b-2+3.conf"
            ]
        );
        assert_eq!(files[0].1, b"kernel");
        assert_eq!(files[2].1, b"number = 2\n");
        // The entry boots what the slot's files are.
        let entry = String::from_utf8(files[3].1.clone()).unwrap();
        for (path, _) in &files[..2] {
            assert!(entry.contains(&format!(" /{path}\n")), "{entry}");
        }
        assert!(entry.contains("pak.slot=b pak.generation=2"), "{entry}");
        assert_eq!(bls::priority(&entry), Some(5));
    }

    #[test]
    fn a_new_disk_holds_the_loader_and_the_same_slot_files() {
        let b = boot(Slot::A, None);
        let esp = new_esp(b"MZ", &b);
        let names: Vec<&str> = esp.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "EFI/BOOT/BOOTX64.EFI",
                "loader/loader.conf",
                "loader/entries/pak-a-2.conf",
                "pak/a/vmlinuz",
                "pak/a/initrd",
                "pak/a/generation.toml",
            ]
        );
        let mut slot_files = b.files();
        slot_files.sort();
        let mut from_disk: Vec<_> = esp[2..].to_vec();
        from_disk.sort();
        assert_eq!(slot_files, from_disk);
    }
}
