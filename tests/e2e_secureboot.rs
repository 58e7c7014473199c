//! End to end, Secure Boot: an image built with `[boot] uki = true` and
//! `secure-boot` boots on OVMF's Secure Boot firmware trusting only the
//! key pak generated (enrolled by pak as PK, KEK and db): systemd-boot and
//! the unified kernel image are pak's, signed; the same disk with one
//! byte of the UKI changed is refused by the firmware; switched offline
//! to generation 2, the disk boots slot b's signed UKI from the
//! generation file.

mod common;
use common::BOOT;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pak::disk::fat::volume::Volume;
use pak::disk::gpt;
use pak::image::uki::pe::Pe;
use pak::sign::key;
use pak::vm::qemu::FirmwareMode;
use pak::vm::vmtest::Machine;
use pak_boot::disk::{ESP_LABEL, Slot, esp};

/// The ESP of a disk image, opened for editing.
fn esp_volume(image: &Path) -> Volume<File> {
    let mut f = File::options().read(true).write(true).open(image).unwrap();
    let parts = gpt::read(&mut f).unwrap();
    let esp = parts.iter().find(|p| p.label == ESP_LABEL).unwrap();
    let offset = esp.offset();
    Volume::open(f, offset).unwrap()
}

/// The shipped minimal image's Pakfile, booting a UKI signed with the
/// key `db` beside it.
fn secure_pakfile(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(common::workspace().join("images/minimal/Pakfile"))
        .unwrap()
        .replace(
            "[boot]\n",
            "[boot]\nuki = true\nsecure-boot = { key = \"db.key\", cert = \"db.crt\" }\n",
        );
    let pakfile = dir.join("Pakfile");
    std::fs::write(&pakfile, text).unwrap();
    pakfile
}

fn flip_one_byte(image: &Path, path: &str) {
    let mut v = esp_volume(image);
    let mut bytes = v.read(path).unwrap();
    let pe = Pe::parse(bytes.clone()).unwrap();
    let cmdline = pe
        .sections()
        .into_iter()
        .find(|s| s.name == ".cmdline")
        .unwrap();
    // A space of the command line becomes a tab: as harmless a change as
    // there is, yet no longer what was signed.
    let at = cmdline.raw_offset as usize
        + pe.section_data(".cmdline")
            .unwrap()
            .iter()
            .position(|&c| c == b' ')
            .unwrap();
    bytes[at] = b'\t';
    v.remove(path).unwrap();
    v.create(path, &bytes).unwrap();
}

#[test]
fn signed_uki_boots_under_secure_boot_and_a_changed_byte_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let files = key::generate_files(&work.path().join("db")).unwrap();
    let pakfile = secure_pakfile(work.path());
    let img: PathBuf = work.path().join("secure.raw");
    let build = |out: &Path| {
        common::pak(["--pakfile", pakfile.to_str().unwrap(), "build", "-o"])
            .arg(out)
            .root(common::e2e_store())
    };
    build(&img).ok();

    // The slot boots its UKI; systemd-boot and the UKI carry signatures.
    let uki_path = esp::uki(Slot::A);
    {
        let mut v = esp_volume(&img);
        let entries = v.list(esp::ENTRIES).unwrap();
        assert_eq!(entries.len(), 1);
        let entry = String::from_utf8(
            v.read(&format!("{}/{}", esp::ENTRIES, entries[0].name))
                .unwrap(),
        )
        .unwrap();
        assert!(entry.contains(&format!("efi /{uki_path}")), "{entry}");
        assert!(v.find(&esp::kernel(Slot::A)).unwrap().is_none());
        for f in [esp::BOOT_LOADER, uki_path.as_str()] {
            let pe = Pe::parse(v.read(f).unwrap()).unwrap();
            assert_eq!(pe.signatures().len(), 1, "{f} is signed");
        }
    }

    // A key that does not match its certificate stops the build, naming
    // both files, and writes nothing.
    let mismatched = work.path().join("mismatched");
    std::fs::create_dir(&mismatched).unwrap();
    let other = key::generate_files(&mismatched.join("other")).unwrap();
    std::fs::copy(&files.key, mismatched.join("db.key")).unwrap();
    std::fs::copy(&other.cert_pem, mismatched.join("db.crt")).unwrap();
    let bad_pakfile = secure_pakfile(&mismatched);
    std::fs::copy(
        work.path().join("Pakfile.lock"),
        mismatched.join("Pakfile.lock"),
    )
    .unwrap();
    let bad = work.path().join("bad.raw");
    let err = common::pak(["--pakfile", bad_pakfile.to_str().unwrap(), "build", "-o"])
        .arg(&bad)
        .root(common::e2e_store())
        .fails();
    assert!(
        err.contains("db.key") && err.contains("db.crt") && err.contains("do not belong together"),
        "{err}"
    );
    assert!(!bad.exists());

    let cfg = common::vm(&img, &[]);
    let mut m = Machine::start_with(
        &cfg,
        &FirmwareMode::secure_boot(&files.cert_pem).unwrap(),
        &work.path().join("console.log"),
    )
    .unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    // The kernel read the firmware's SecureBoot variable at start.
    let sb = m.succeed("dmesg | grep secureboot:").unwrap();
    assert!(sb.contains("Secure boot enabled"), "{sb}");
    // The command line is the UKI's, the dm-verity root hash in it.
    let cmdline = m.succeed("cat /proc/cmdline").unwrap();
    assert!(
        cmdline.contains("pak.slot=a") && cmdline.contains("pak.verity"),
        "{cmdline}"
    );
    let root = m.succeed("grep ' / ' /proc/mounts").unwrap();
    assert!(
        root.contains("/dev/mapper/"),
        "the root is verity-checked: {root}"
    );
    m.succeed("sync").unwrap();
    m.kill();
    drop(m);

    // The firmware's refusal is checked on the disk as built; the disk
    // itself switches to generation 2, whose file carries slot b's signed
    // UKI, and boots it under Secure Boot.
    let changed = work.path().join("changed.raw");
    std::fs::copy(&img, &changed).unwrap();
    let g2 = work.path().join("g2.sqfs");
    common::pak([
        "--pakfile",
        pakfile.to_str().unwrap(),
        "build",
        "--number",
        "2",
        "--generation",
    ])
    .arg(&g2)
    .root(common::e2e_store())
    .ok();
    common::pak(["system", "mark-good", "--disk"])
        .arg(&img)
        .ok();
    let out = common::pak(["system", "switch", "--disk"])
        .arg(&img)
        .arg(&g2)
        .ok();
    assert!(out.contains("generation 2 written to slot b"), "{out}");
    let root2 = pak::image::verity::root_hash_of(&g2).unwrap();
    let mut m = Machine::start_with(
        &cfg,
        &FirmwareMode::secure_boot(&files.cert_pem).unwrap(),
        &work.path().join("console-g2.log"),
    )
    .unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    let cmdline = m.succeed("cat /proc/cmdline").unwrap();
    assert!(
        cmdline.contains("pak.slot=b pak.generation=2")
            && cmdline.contains(&format!("pak.verity={root2}")),
        "{cmdline}"
    );
    let root = m.succeed("grep ' / ' /proc/mounts").unwrap();
    assert!(root.contains("/dev/mapper/"), "{root}");
    m.kill();
    // Each machine holds one of the cores' slots until it is dropped.
    drop(m);

    let img = changed;
    let cfg = common::vm(&img, &[]);
    flip_one_byte(&img, &uki_path);
    let mut m = Machine::start_with(
        &cfg,
        &FirmwareMode::secure_boot(&files.cert_pem).unwrap(),
        &work.path().join("console-changed.log"),
    )
    .unwrap();
    m.wait_for("Error loading", BOOT).unwrap();
    // Nothing else starts: no kernel ever prints. (Waiting also lets the
    // loader finish its error line.)
    let refused = m.wait_for("Linux version", Duration::from_secs(20));
    assert!(refused.is_err(), "a kernel started from a changed UKI");
    let tail = m.tail(20);
    assert!(
        tail.contains("linux.efi") && (tail.contains("Security") || tail.contains("Access Denied")),
        "{tail}"
    );
    m.kill();
}
