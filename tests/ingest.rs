//! A `.deb` unpacked straight into the store (`Store::install_deb`, what
//! builds do) makes the entry that converting it to a `.pak` and
//! extracting that (`deb::convert` + `Store::install`, what pak did
//! before) made: `.PAKINFO` and `.BOM` byte for byte, and the same tree.
//!
//! Real Debian packages: the e2e store's download cache when it is there
//! (no network), else a few downloaded with `apt-get download`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pak::packages::deb;
use pak::state::StateDir;
use pak::store::Store;

/// Packages with hard links, setuid programs, symlinks, deep trees and
/// implied directories between them.
const DOWNLOAD: &[&str] = &["busybox-static", "e2fsprogs", "mount", "kmod", "tzdata"];

fn real_debs(work: &Path) -> Vec<PathBuf> {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-gnu/tmp/e2e-root/cache/pkgs");
    let mut debs: Vec<(u64, PathBuf)> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .filter(|(n, _)| *n < 16 << 20)
        .collect();
    if debs.is_empty() {
        let dl = Command::new("apt-get")
            .args(["download", "-q"])
            .args(DOWNLOAD)
            .current_dir(work)
            .output()
            .unwrap();
        assert!(
            dl.status.success(),
            "no .debs in {} and apt cannot download {DOWNLOAD:?}: {}",
            cache.display(),
            String::from_utf8_lossy(&dl.stderr)
        );
        for e in std::fs::read_dir(work).unwrap() {
            let p = e.unwrap().path();
            debs.push((std::fs::metadata(&p).unwrap().len(), p));
        }
    }
    // A spread of sizes, the same every run.
    debs.sort();
    let step = debs.len().div_ceil(12).max(1);
    debs.into_iter().step_by(step).map(|(_, p)| p).collect()
}

/// Every path of a tree with its type, mode, size, link count, link
/// target and content, in name order.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if md.is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                let bytes = std::fs::read(&p).unwrap();
                format!("{} bytes, {:x}", bytes.len(), crc(&bytes))
            };
            out.push(format!(
                "{rel} {:o} links {} {what}",
                md.mode(),
                if md.is_dir() { 0 } else { md.nlink() }
            ));
        }
    }
    out.sort();
    out
}

fn crc(b: &[u8]) -> u64 {
    // FNV-1a: enough to tell contents apart here.
    b.iter().fold(0xcbf29ce484222325, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

#[test]
fn a_deb_unpacks_to_the_entry_its_pak_makes() {
    let work = tempfile::tempdir().unwrap();
    let dl = work.path().join("dl");
    std::fs::create_dir(&dl).unwrap();
    let debs = real_debs(&dl);
    assert!(debs.len() >= 3, "too few .debs to compare: {debs:?}");
    let old = Store::open(&StateDir::new(work.path().join("old"))).unwrap();
    let new = Store::open(&StateDir::new(work.path().join("new"))).unwrap();
    let paks = work.path().join("paks");
    for deb in &debs {
        let key = deb.file_stem().unwrap().to_string_lossy().into_owned();
        let pak = deb::import(deb, &paks).unwrap();
        let a = old.install(&pak, &key).unwrap();
        let b = new.install_deb(deb, &key).unwrap();
        for f in [".PAKINFO", ".BOM"] {
            assert!(
                std::fs::read(a.dir.join(f)).unwrap() == std::fs::read(b.dir.join(f)).unwrap(),
                "{f} of {} differs",
                deb.display()
            );
        }
        assert_eq!(listing(&a.tree()), listing(&b.tree()), "{}", deb.display());
        eprintln!(
            "{}: {} entries, identical",
            deb.display(),
            b.bom().unwrap().entries.len()
        );
    }
}
