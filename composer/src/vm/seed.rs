//! `pak qemu --seed DIR`: a provisioning seed volume made from a
//! directory, as a cloud would attach one. The volume is FAT32 labelled
//! `pak-seed`, written by pak's own FAT writer (no mtools, no root), with
//! the fixed dates and content-derived volume id of every FAT pak writes,
//! so the same directory gives the same bytes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::system::provision;

/// The label pak gives the seed volumes it makes.
pub const LABEL: &str = "pak-seed";
/// The smallest FAT32 volume is about 33 MiB; the file is sparse, so the
/// room costs nothing.
const MIN_SIZE: u64 = 40 << 20;

/// The files of `dir`, relative, `/`-separated, in sorted order.
fn files_of(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let at = dir.join(&rel);
        let rd = std::fs::read_dir(&at).with_context(|| format!("cannot read {}", at.display()))?;
        for e in rd {
            let e = e?;
            let name = e.file_name().into_string().map_err(|n| {
                anyhow::anyhow!(
                    "{}: {n:?} is not UTF-8; a seed's file names must be",
                    at.display()
                )
            })?;
            let path = rel.join(&name);
            let ty = std::fs::metadata(e.path())?.file_type();
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                let bytes = std::fs::read(e.path())
                    .with_context(|| format!("cannot read {}", e.path().display()))?;
                out.push((path.to_string_lossy().into_owned(), bytes));
            } else {
                bail!(
                    "{} is neither a file nor a directory; a seed holds only those",
                    e.path().display()
                );
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Checks the seed in `dir` as the machine will (parsing and validation;
/// the users are checked by the machine, which knows them). An error here
/// is what the machine's console will say.
pub fn check(dir: &Path) -> Result<provision::Source> {
    let origin = format!("seed directory {}", dir.display());
    provision::from_files(&origin, |name| {
        let p = dir.join(name);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    })
}

/// Writes the seed volume for `dir` to `out`.
pub fn write(dir: &Path, out: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "{} is not a directory; give a directory holding meta-data and/or {}",
            dir.display(),
            provision::SEED_FILE
        );
    }
    let files = files_of(dir)?;
    if !files
        .iter()
        .any(|(n, _)| ["meta-data", "user-data", provision::SEED_FILE].contains(&n.as_str()))
    {
        bail!(
            "{} holds none of meta-data, user-data or {}: a machine would find nothing to apply",
            dir.display(),
            provision::SEED_FILE
        );
    }
    let content: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    let size = (content * 2 + (8 << 20))
        .max(MIN_SIZE)
        .next_multiple_of(1 << 20);
    let _ = std::fs::remove_file(out);
    let f =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    f.set_len(size)?;
    let mut w = std::io::BufWriter::new(f);
    crate::disk::fat::write(&mut w, 0, size, LABEL, &files)
        .with_context(|| format!("cannot write the seed volume {}", out.display()))?;
    use std::io::Write;
    w.flush()?;
    Ok(())
}

/// For `pak qemu` and `pak test`: the seed volume of `dir`, written beside
/// `image` (`NAME.seed.img`). A seed the machine would refuse is still
/// attached, since trying a bad seed is a fair test, but the problem is
/// said here first.
pub fn attach(image: &Path, dir: &Path) -> Result<PathBuf> {
    let out = image.with_extension("seed.img");
    write(dir, &out)?;
    if let Err(e) = check(dir) {
        eprintln!("warning: the machine will refuse this seed and boot without it: {e:#}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_directory_becomes_a_clean_reproducible_volume_the_machine_reads() {
        let d = tempfile::tempdir().unwrap();
        let seed = d.path().join("seed");
        std::fs::create_dir_all(seed.join("extra")).unwrap();
        std::fs::write(
            seed.join("meta-data"),
            "instance-id: i-1\nlocal-hostname: alpha\n",
        )
        .unwrap();
        std::fs::write(seed.join(provision::SEED_FILE), "hostname = \"alpha-1\"\n").unwrap();
        std::fs::write(seed.join("extra/notes.txt"), "x").unwrap();
        let img = d.path().join("seed.img");
        write(&seed, &img).unwrap();

        let fsck = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        let label = std::process::Command::new("fatlabel").arg(&img).output();
        if let Ok(l) = label {
            assert_eq!(String::from_utf8_lossy(&l.stdout).trim(), "PAK-SEED");
        }

        // What the machine does with a block device, on the file.
        let mut vol =
            crate::disk::fat::Volume::open(std::fs::File::open(&img).unwrap(), 0).unwrap();
        let s = provision::from_files("seed volume", |f| match vol.find(f)? {
            Some(e) if !e.is_dir => vol.read(f).map(Some),
            _ => Ok(None),
        })
        .unwrap();
        assert_eq!(s.seed.hostname.as_deref(), Some("alpha-1"));
        assert_eq!(s.instance_id.as_deref(), Some("i-1"));
        assert_eq!(check(&seed).unwrap().seed, s.seed);

        let again = d.path().join("again.img");
        write(&seed, &again).unwrap();
        assert!(
            std::fs::read(&img).unwrap() == std::fs::read(&again).unwrap(),
            "reproducible"
        );

        let empty = d.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let e = write(&empty, &d.path().join("e.img"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds none of meta-data"), "{e}");
    }
}
