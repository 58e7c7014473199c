//! `pak verify` and `pak build --check` on real images: Debian's kernel,
//! busybox and systemd-boot, locked afresh against this host's apt.

mod common;
use common::{Ran, e2e_store, pak, pak_e2e, workspace};

use std::path::{Path, PathBuf};
use std::process::Command;

/// A copy of images/minimal/Pakfile, without its lock, in `work`.
fn minimal_project(work: &Path) -> PathBuf {
    let dir = work.join("minimal");
    std::fs::create_dir_all(&dir).unwrap();
    let pakfile = dir.join("Pakfile");
    std::fs::copy(workspace().join("images/minimal/Pakfile"), &pakfile).unwrap();
    pakfile
}

/// `pak verify IMAGE` with the e2e store.
fn verify(image: &Path) -> Ran {
    pak(["verify"]).arg(image).root(e2e_store()).run()
}

/// The byte offset of partition `label` in a disk image.
fn partition(image: &Path, label: &str) -> u64 {
    let parts = pak::disk::gpt::read(&mut std::fs::File::open(image).unwrap()).unwrap();
    parts.iter().find(|p| p.label == label).unwrap().offset()
}

#[test]
fn verify_says_identical_then_names_the_slot_and_file_of_a_flipped_byte() {
    let work = tempfile::tempdir().unwrap();
    let pakfile = minimal_project(work.path());
    let img = work.path().join("minimal.raw");
    pak_e2e(&[
        "--pakfile",
        pakfile.to_str().unwrap(),
        "build",
        "-o",
        img.to_str().unwrap(),
    ]);
    let before = std::fs::metadata(&img).unwrap().modified().unwrap();
    let good = verify(&img).ok();
    assert!(good.contains("identical"), "{good}");

    // One byte in the middle of slot a's squashfs (its data area: the
    // metadata tables sit at the end), flipped in a copy.
    let bad = work.path().join("flipped.raw");
    assert!(
        Command::new("cp")
            .args(["--sparse=always"])
            .arg(&img)
            .arg(&bad)
            .status()
            .unwrap()
            .success()
    );
    let slot = partition(&img, "root-a");
    let used = pak::image::squashfs::Reader::open(std::fs::File::open(&img).unwrap(), slot)
        .unwrap()
        .bytes_used();
    let at = slot + used / 3;
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&bad)
            .unwrap();
        let mut b = [0u8];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[b[0] ^ 0x5a]).unwrap();
    }
    let res = verify(&bad);
    let out = res.text();
    assert!(!res.success(), "a flipped byte must fail: {out}");
    assert!(
        out.contains(&format!(
            "partition root-a at byte {} (image byte {at})",
            at - slot
        )),
        "{out}"
    );
    assert!(out.contains("sealed"), "the broken seal is named: {out}");
    // The file it names is, read independently, the one that changed.
    let named = out
        .split("first differing file: ")
        .nth(1)
        .and_then(|r| r.split(", its ").next())
        .unwrap_or_else(|| panic!("no file named: {out}"))
        .to_string();
    assert!(named.starts_with('/'), "{out}");
    let read = |p: &Path| {
        pak::image::squashfs::Reader::open(std::fs::File::open(p).unwrap(), slot)
            .unwrap()
            .read(named.trim_start_matches('/'))
            .ok()
    };
    let (was, now) = (read(&img), read(&bad));
    assert!(was.is_some(), "{named} is a file of the image");
    assert_ne!(was, now, "{named} is the file the flipped byte changed");
    assert_eq!(
        std::fs::metadata(&img).unwrap().modified().unwrap(),
        before,
        "verify only reads the image"
    );
}

#[test]
fn build_check_varies_user_store_and_environment_and_passes() {
    let work = tempfile::tempdir().unwrap();
    let pakfile = minimal_project(work.path());
    let img = work.path().join("minimal.raw");
    let res = pak(["--pakfile"])
        .arg(&pakfile)
        .args(["build", "--check", "-o"])
        .arg(&img)
        .root(e2e_store())
        .env("TZ", "Pacific/Auckland")
        .run();
    let out = res.text();
    assert!(res.success(), "{out}");
    assert!(out.contains("reproducible"), "{out}");
    for varied in [
        "store root",
        "working directory",
        "umask",
        "TZ: Pacific/Auckland -> ",
        "LC_ALL",
        "wall clock",
    ] {
        assert!(out.contains(varied), "{varied} is not varied: {out}");
    }
    if common::is_root() {
        assert!(out.contains("user: root (uid 0) -> "), "{out}");
    }
}

#[test]
fn verify_refuses_what_is_not_a_pak_image() {
    let work = tempfile::tempdir().unwrap();
    let junk = work.path().join("junk.raw");
    std::fs::write(&junk, vec![7u8; 1 << 16]).unwrap();
    let out = verify(&junk).fails();
    assert!(
        out.contains("neither a pak disk image") && out.contains("junk.raw"),
        "{out}"
    );
    let out = verify(&work.path().join("nope.raw")).fails();
    assert!(out.contains("cannot open"), "{out}");
}
