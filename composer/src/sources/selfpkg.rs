//! pak as a package of every image: the running `pak` binary, offered by
//! an implicit repository named `pak`.
//!
//! Every image carries the pak that built it, so it can manage itself
//! (`pak system switch`, `pak run`), and its initramfs `/init` is the same
//! static binary. Because pak writes the initramfs itself, this package
//! provides Debian's `linux-initramfs-tool`, which kernels require.
//! The lock pins pak's version, not its bytes (see `lock`): the same lock
//! built by the same pak binary gives the same image; a lock naming another
//! pak version is refused with the ways out.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

use crate::packages::bom::{Entry, FileDigest, Kind};
use crate::packages::candidate::Candidate;
use crate::packages::package::{Content, Writer};
use crate::packages::pakinfo::PakInfo;

pub const REPO: &str = "pak";
pub const NAME: &str = "pak";
pub const LOCATION: &str = "self";
/// The boot step `rc.sysinit` runs before it sets the host name and brings
/// up the network. It ships with pak, not with the Pakfile's configuration,
/// because all it does is run pak: an image without pak has no such step,
/// and rc.sysinit skips what is not there.
pub const PROVISION_STEP: &str = "usr/lib/pak/provision";

const PROVISION_SCRIPT: &str = r#"#!/bin/sh
# Installed with pak; /usr/lib/pak/rc.sysinit runs it at every boot, before
# the host name and the network. `pak system provision` applies this
# machine's seed volume or credentials once per data partition; a bad seed
# is reported here on the console and the boot goes on without it.
if ! /usr/bin/pak system provision; then
    echo "pak: provisioning failed (above); this boot goes on with the image's own settings" >&2
fi
exit 0
"#;

/// The version of this pak, which the lock pins.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the running pak binary")
}

fn info() -> PakInfo {
    PakInfo {
        name: NAME.into(),
        version: VERSION.into(),
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

/// The one candidate the built-in repository offers: this pak's version,
/// with no sha256 (the lock pins pak by version).
pub fn candidate() -> Result<Candidate> {
    Ok(Candidate {
        info: info(),
        repo: REPO.into(),
        location: LOCATION.into(),
        sha256: String::new(),
        size: 0,
        archive_date: None,
    })
}

/// The sha256 of the running binary (empty if it cannot be read, which
/// [`write_package`] then reports), computed once per process.
pub fn sha256() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| {
        exe()
            .and_then(|e| crate::packages::package::hash_file(&e))
            .map(|(_, h)| h)
            .unwrap_or_default()
    })
}

/// Refuses a lock that pins another version of pak than this one.
pub fn check_version(locked: &str, lock_path: &Path) -> Result<()> {
    if locked != VERSION {
        bail!(
            "{} pins pak {locked}, but this is pak {VERSION}: an image carries the pak that builds it, so build with pak {locked}, or run `pak update pak` to lock this one",
            lock_path.display()
        );
    }
    Ok(())
}

/// Writes the package of the running binary into `out_dir`. `sha256` is
/// what the lock pins: empty (the lock pins the version, checked by
/// [`check_version`]), or, from an older lock, the binary's sha256.
pub fn write_package(sha256: &str, out_dir: &Path) -> Result<PathBuf> {
    let exe = exe()?;
    let (_, got) = crate::packages::package::hash_file(&exe)?;
    if !sha256.is_empty() && got != sha256 {
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
    // The size and digest are the writer's to fill in.
    let program = |p: &str| Entry {
        path: p.into(),
        kind: Kind::File(FileDigest {
            size: 0,
            sha256: String::new(),
        }),
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    w.add(dir("usr"), Content::None)?;
    w.add(dir("usr/bin"), Content::None)?;
    w.add(program("usr/bin/pak"), Content::Path(exe))?;
    w.add(dir("usr/lib"), Content::None)?;
    w.add(dir("usr/lib/pak"), Content::None)?;
    w.add(
        program(PROVISION_STEP),
        Content::Bytes(PROVISION_SCRIPT.as_bytes().to_vec()),
    )?;
    w.write(out_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provision_step_is_valid_sh_and_never_stops_the_boot() {
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", PROVISION_SCRIPT])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(PROVISION_SCRIPT.trim_end().ends_with("exit 0"));
        assert!(PROVISION_SCRIPT.contains("pak system provision"));
    }
}
