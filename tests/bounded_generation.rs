//! Hostile sizes on the generation side: a package tree two thousand
//! directories deep (a 4000-byte path) and names of 255 bytes become a
//! generation that pak's reader and `unsquashfs` both read back, and a
//! generation of 30k tiny files is written within a stated peak memory.
//! (Five thousand levels, past what a package can hold, are the writer's
//! and reader's unit test, on a 256 KiB stack.)
//!
//! Peak memory is the child's maximum resident set, from wait4(2).

mod common;
use common::bounded::{MIB, create, nest, source, within};
use common::{Package, Project};

use std::path::Path;
use std::process::Command;

/// A project with the stand-in kernel and boot loader a generation needs.
fn generation_project() -> Project {
    let p = Project::new();
    p.add(&Package::kernel("kernel"));
    p.add(&Package::boot_loader("boot-loader"));
    p
}

/// `unsquashfs -lls` of `image`: it must list it whole; its listing.
fn unsquashfs_lists(image: &Path) -> Option<String> {
    let out = match Command::new("unsquashfs")
        .args(["-lls", "-n"])
        .arg(image)
        .output()
    {
        Ok(out) => out,
        Err(_) => {
            eprintln!("skipped the unsquashfs check: no squashfs-tools");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "unsquashfs -lls {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

#[test]
fn a_tree_two_thousand_deep_becomes_a_generation_read_back_whole() {
    const DEPTH: usize = 2000;
    let p = generation_project();
    let deep = source(&p, "deep");
    nest(&deep, "d", DEPTH);
    let long = "n".repeat(255);
    std::fs::create_dir_all(deep.join(&long)).unwrap();
    std::fs::write(deep.join(&long).join(&long), "long\n").unwrap();
    within(
        &p,
        &create(&p, &deep)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        256 * MIB,
    );
    p.index();
    p.pakfile("pak = \"*\"\nkernel = \"*\"\nboot-loader = \"*\"\ndeep = \"*\"\n");
    within(&p, &["build", "--generation", "deep.sqfs"], 256 * MIB);

    let bottom = format!("{}bottom", "d/".repeat(DEPTH));
    assert_eq!(bottom.len(), 4006);
    let image = p.path("deep.sqfs");
    let mut r =
        pak::image::squashfs::Reader::open(std::fs::File::open(&image).unwrap(), 0).unwrap();
    assert_eq!(r.read(&bottom).unwrap(), b"deep\n");
    assert_eq!(r.read(&format!("{long}/{long}")).unwrap(), b"long\n");
    let walk = r.walk();
    for (path, fields) in &walk {
        assert!(
            fields.is_ok(),
            "{}: {fields:?}",
            &path[..path.len().min(80)]
        );
    }
    assert!(walk.iter().any(|(path, _)| path == &format!("/{bottom}")));

    if let Some(listing) = unsquashfs_lists(&image) {
        assert!(
            listing
                .lines()
                .any(|l| l.ends_with(&format!("squashfs-root/{bottom}"))),
            "unsquashfs does not list the bottom file"
        );
        assert!(
            listing
                .lines()
                .any(|l| l.ends_with(&format!("/{long}/{long}")))
        );
        // One line per path, as pak's own walk found them.
        assert_eq!(listing.lines().count(), walk.len());
    }
}

/// 30k files of a few bytes each, in directories of 1000: the writer
/// holds a few hundred bytes per file (see the squashfs writer's module
/// documentation for the figure), a whole build about 1.5 KiB, so it
/// stays within 512 MiB, and the image lists every file. 300k files
/// measured the same per-file figure (556 MiB against 126 MiB without
/// them) but took 13 minutes here with a debug pak, too long for CI; the
/// code path is the same.
#[test]
fn thirty_thousand_tiny_files_within_a_stated_memory() {
    const DIRS: usize = 30;
    const PER_DIR: usize = 1000;
    let p = generation_project();
    let many = source(&p, "many");
    for d in 0..DIRS {
        let dir = many.join(format!("usr/share/many/{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..PER_DIR {
            std::fs::write(dir.join(format!("{f:03}")), format!("{d} {f}\n")).unwrap();
        }
    }
    within(
        &p,
        &create(&p, &many)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        1024 * MIB,
    );
    p.index();
    p.pakfile("pak = \"*\"\nkernel = \"*\"\nboot-loader = \"*\"\n");
    let base = within(&p, &["build", "--generation", "base.sqfs"], 512 * MIB);
    p.pakfile("pak = \"*\"\nkernel = \"*\"\nboot-loader = \"*\"\nmany = \"*\"\n");
    let peak = within(&p, &["build", "--generation", "many.sqfs"], 512 * MIB);
    let per_file = (peak - base) * 1024 / (DIRS * PER_DIR) as i64;
    eprintln!(
        "30k tiny files: peak {} MiB, {} MiB without them: {per_file} bytes a file",
        peak / MIB,
        base / MIB
    );
    assert!(per_file < 2048, "{per_file} bytes a file");

    let image = p.path("many.sqfs");
    let mut r =
        pak::image::squashfs::Reader::open(std::fs::File::open(&image).unwrap(), 0).unwrap();
    assert_eq!(r.read("usr/share/many/029/999").unwrap(), b"29 999\n");
    assert_eq!(r.list("usr/share/many/017").unwrap().len(), PER_DIR);
    if let Some(listing) = unsquashfs_lists(&image) {
        let files = listing
            .lines()
            .filter(|l| l.contains("squashfs-root/usr/share/many/") && l.starts_with('-'))
            .count();
        assert_eq!(files, DIRS * PER_DIR);
    }
}
