//! The signed UKIs a generation file of a `[boot] uki` Pakfile carries,
//! one per slot, so a switch can boot it from either slot without a key.
//!
//! A UKI seals the slot's whole command line (`pak.slot`, the generation
//! and the dm-verity root) and, signed, cannot be changed on the host: so
//! `pak build --generation` makes both, and the switch installs the one
//! for the slot it writes. They follow the dm-verity trailer (the layout
//! before it is in [`crate::image::verity`]); S is the trailer's end,
//! where what goes to a slot ends:
//!
//! ```text
//! [S, S + 8)       "PAKUKIS1"
//! [S + 8, +8)      u64 little-endian: La, the length of slot a's UKI
//! [S + 16, +La)    slot a's signed UKI
//! [.., +8)         u64 little-endian: Lb
//! [.., +Lb)        slot b's signed UKI; the file ends here
//! ```
//!
//! Nothing of it reaches a slot, and the seal, tree and trailer cover only
//! the bytes before S, so their checks ignore it; the channel's chunker
//! cuts it as any tail. A file without `[boot] uki` ends at S.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use pak_boot::disk::Slot;
use pak_boot::verity::Verity;

pub const MAGIC: &[u8; 8] = b"PAKUKIS1";
/// Far above any kernel and initrd: a length past it is damage, refused
/// before memory is set aside for it.
const MAX_UKI: u64 = 1 << 30;

/// A generation's UKI for each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotUkis {
    pub a: Vec<u8>,
    pub b: Vec<u8>,
}

impl SlotUkis {
    pub fn get(&self, slot: Slot) -> &[u8] {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// The appendix's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for uki in [&self.a, &self.b] {
            out.extend_from_slice(&(uki.len() as u64).to_le_bytes());
            out.extend_from_slice(uki);
        }
        out
    }

    /// Checks that the UKI for each slot boots that slot and `generation`,
    /// with `verity` (the root of the file's own trailer) as its root.
    pub fn check(&self, generation: u64, verity: &Verity) -> Result<()> {
        for slot in Slot::ALL {
            check_uki(self.get(slot), slot, generation, verity)
                .with_context(|| format!("its UKI for slot {slot}"))?;
        }
        Ok(())
    }
}

/// Checks that `uki`'s sealed command line boots `slot` holding
/// `generation` with the dm-verity root `verity`.
pub fn check_uki(uki: &[u8], slot: Slot, generation: u64, verity: &Verity) -> Result<()> {
    let cmdline = super::cmdline_of(uki)
        .context("it is not a unified kernel image (no PE image with a .cmdline section)")?;
    let args = pak_boot::cmdline::parse(&cmdline);
    match args.slot {
        Some(Ok(s)) if s == slot => {}
        _ => bail!("its command line does not say pak.slot={slot}: `{cmdline}`"),
    }
    if args.generation != Some(generation) {
        bail!("its command line does not say pak.generation={generation}: `{cmdline}`");
    }
    match args.verity {
        Some(Ok(v)) if &v == verity => Ok(()),
        Some(Ok(v)) => bail!(
            "its command line names dm-verity root {}, but the file's hash tree has root {}: the UKI was not made for this generation",
            v.root_hash,
            verity.root_hash
        ),
        Some(Err(e)) => bail!("its command line: {e}"),
        None => bail!("its command line carries no dm-verity root"),
    }
}

/// Appends `ukis` to the generation file at `path`, which ends at its
/// dm-verity trailer.
pub fn append(path: &Path, ukis: &SlotUkis) -> Result<()> {
    let mut f = std::fs::File::options()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.write_all(&ukis.encode())
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}

/// The UKIs of the generation in `r` whose trailer ends at `at`; `None`
/// when the file ends there.
pub fn read<R: Read + Seek>(r: &mut R, at: u64) -> Result<Option<SlotUkis>> {
    let len = r.seek(SeekFrom::End(0))?;
    if len <= at {
        return Ok(None);
    }
    r.seek(SeekFrom::Start(at))?;
    let mut left = len - at;
    let mut magic = [0u8; 8];
    if left < 8 || r.read_exact(&mut magic).is_err() || &magic != MAGIC {
        bail!(
            "{} bytes follow its dm-verity trailer, and they are not pak's UKI appendix: the file was changed after `pak build --generation`",
            len - at
        );
    }
    left -= 8;
    let mut one = |slot: Slot| -> Result<Vec<u8>> {
        let mut n = [0u8; 8];
        if left < 8 {
            bail!("its UKI appendix ends before slot {slot}'s UKI: the file is incomplete");
        }
        r.read_exact(&mut n)?;
        left -= 8;
        let n = u64::from_le_bytes(n);
        if n > left || n > MAX_UKI {
            bail!(
                "its UKI appendix gives slot {slot}'s UKI {n} bytes, but {left} follow: the file is incomplete or damaged"
            );
        }
        let mut uki = vec![0u8; n as usize];
        r.read_exact(&mut uki)?;
        left -= n;
        Ok(uki)
    };
    let a = one(Slot::A)?;
    let b = one(Slot::B)?;
    if left != 0 {
        bail!(
            "{left} bytes follow its UKI appendix: the file was changed after `pak build --generation`"
        );
    }
    Ok(Some(SlotUkis { a, b }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn verity() -> Verity {
        Verity {
            root_hash: "ab".repeat(32),
            salt: "cd".repeat(32),
            data_blocks: 3,
        }
    }

    fn uki(cmdline: &str) -> Vec<u8> {
        super::super::build(&super::super::UkiParts {
            stub: &super::super::pe::tests::tiny_pe(),
            kernel: &super::super::pe::tests::tiny_pe(),
            initrd: b"initrd",
            cmdline,
            os_release: "",
            uname: None,
        })
        .unwrap()
    }

    fn for_slot(slot: Slot, v: &Verity) -> Vec<u8> {
        uki(&pak_boot::bls::boot_options(
            slot,
            2,
            &pak_boot::verity::entry_cmdline("quiet", Some(v)),
        ))
    }

    #[test]
    fn reads_back_and_checks_slot_generation_and_root() {
        let v = verity();
        let ukis = SlotUkis {
            a: for_slot(Slot::A, &v),
            b: for_slot(Slot::B, &v),
        };
        let mut file = vec![7u8; 100];
        file.extend(ukis.encode());
        assert_eq!(
            read(&mut Cursor::new(&file), 100).unwrap(),
            Some(ukis.clone())
        );
        assert_eq!(read(&mut Cursor::new(&file[..100]), 100).unwrap(), None);
        ukis.check(2, &v).unwrap();
        assert!(ukis.check(3, &v).is_err());
        let other = Verity {
            root_hash: "ef".repeat(32),
            ..v.clone()
        };
        let err = format!("{:#}", ukis.check(2, &other).unwrap_err());
        assert!(err.contains("not made for this generation"), "{err}");
        let swapped = SlotUkis {
            a: ukis.b.clone(),
            b: ukis.a.clone(),
        };
        let err = format!("{:#}", swapped.check(2, &v).unwrap_err());
        assert!(err.contains("pak.slot=a"), "{err}");
        for cut in [101, 110, file.len() - 1] {
            assert!(read(&mut Cursor::new(&file[..cut]), 100).is_err(), "{cut}");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(read(&mut Cursor::new(&longer), 100).is_err());
    }
}
