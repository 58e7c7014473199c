//! pak as a package of every image: the running `pak` binary, offered by
//! an implicit repository named `pak`.
//!
//! Every image carries the pak that built it, so it can manage itself
//! (`pak system switch`, `pak run`), and its initramfs `/init` is the same
//! static binary. Because pak writes the initramfs itself, this package
//! provides Debian's `linux-initramfs-tool`, which kernels require.
//! The lock pins the binary's sha256: same lock, same pak, same bytes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::bom::{Entry, Kind};
use crate::candidate::Candidate;
use crate::package::{Content, Writer};
use crate::pakinfo::PakInfo;

pub const REPO: &str = "pak";
pub const NAME: &str = "pak";
pub const LOCATION: &str = "self";

pub fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the running pak binary")
}

fn info() -> PakInfo {
    PakInfo {
        name: NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        arch: "x86_64".into(),
        summary: "the image composer and manager, and the initramfs /init of pak images".into(),
        license: "MIT OR Apache-2.0".into(),
        requires: Vec::new(),
        provides: vec!["cmd:pak".into(), "linux-initramfs-tool".into()],
        conflicts: Vec::new(),
        special_files: Vec::new(),
        origin: None,
    }
}

/// The one candidate the built-in repository offers.
pub fn candidate() -> Result<Candidate> {
    let (size, sha256) = crate::package::hash_file(&exe()?)?;
    Ok(Candidate {
        info: info(),
        repo: REPO.into(),
        location: LOCATION.into(),
        sha256,
        size,
        archive_date: None,
    })
}

/// Writes the package of the running binary into `out_dir`, checking that
/// it is the binary the lock pins.
pub fn write_package(sha256: &str, out_dir: &Path) -> Result<PathBuf> {
    let exe = exe()?;
    let (_, got) = crate::package::hash_file(&exe)?;
    if got != sha256 {
        bail!(
            "the lock pins a pak binary with sha256 {sha256}, but this pak is {got}; run `pak update pak` to lock this one"
        );
    }
    let mut w = Writer::new(info());
    let dir = |p: &str| Entry {
        path: p.into(),
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    w.add(dir("usr"), Content::None)?;
    w.add(dir("usr/bin"), Content::None)?;
    w.add(
        Entry {
            path: "usr/bin/pak".into(),
            kind: Kind::File {
                size: 0,
                sha256: String::new(),
            },
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        Content::Path(exe),
    )?;
    w.write(out_dir)
}
