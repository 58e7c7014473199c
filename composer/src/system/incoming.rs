//! A generation file on its way to a slot: read, and its seal and
//! dm-verity hash tree checked, before anything on the disk is touched.
//!
//! A file without a tree (built by a pak before verity roots) is refused
//! with the advice to rebuild it: written to a slot it would boot
//! unverified, and a rebuild from its lock gives the same root plus the
//! tree.
//!
//! A generation of a `[boot] uki` Pakfile carries, behind its trailer, a
//! signed UKI for each slot ([`crate::image::uki::appendix`]); each is
//! checked to boot its slot with the file's own dm-verity root, here too.

use std::io::{Read, Seek};

use anyhow::{Context, Result};

use crate::image::generation::{self, GenerationMeta};
use crate::image::squashfs::Reader;
use crate::image::uki::appendix::{self, SlotUkis};

/// A generation read from a generation file, checked, ready to write.
pub struct Incoming<S> {
    pub(super) source: S,
    /// What to call the file in messages.
    pub(super) name: String,
    pub meta: GenerationMeta,
    pub(super) kernel: Vec<u8>,
    pub(super) initrd: Vec<u8>,
    /// The squashfs, its seal, hash tree and trailer: what goes to the slot.
    pub(super) image_size: u64,
    pub(super) image_sha256: String,
    /// Its dm-verity root, for the loader entry.
    pub verity: pak_boot::verity::Verity,
    /// Its UKI for each slot (`[boot] uki`), each sealing that slot's
    /// command line with `verity`.
    pub(super) ukis: Option<SlotUkis>,
}

impl<S: Read + Seek> Incoming<S> {
    /// Reads the description, kernel and initrd of the generation file
    /// `source` and checks its seal (the sha256 `pak build` put behind the
    /// squashfs) and its hash tree, so a corrupt file is refused before the
    /// disk is touched; and, if it carries UKIs, that each boots its slot
    /// with the root the file's trailer gives.
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
        let checked = generation::check(&mut source, used)
            .with_context(|| format!("{name} is corrupt or incomplete"))?;
        let ukis = appendix::read(&mut source, checked.size)
            .with_context(|| format!("{name} is corrupt or incomplete"))?;
        if let Some(u) = &ukis {
            u.check(meta.number, &checked.verity)
                .with_context(|| format!("{name} is refused"))?;
        }
        Ok(Incoming {
            source,
            name: name.to_string(),
            meta,
            kernel,
            initrd,
            image_size: checked.size,
            image_sha256: checked.sha256,
            verity: checked.verity,
            ukis,
        })
    }
}
