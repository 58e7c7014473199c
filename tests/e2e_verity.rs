//! End to end under QEMU: a root mounted through dm-verity, and a slot
//! changed after it was written failing its boot on trial, the machine
//! falling back to the other slot by itself.

mod common;
use common::{BOOT, pak_e2e, vm, workspace};

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use pak::vm::vmtest::Machine;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Flips one byte in the middle of the squashfs in the partition labelled
/// `label`: a block the squashfs uses, whatever the boot reads. Returns
/// its offset in the partition.
fn flip_inside_used_block(img: &Path, label: &str) -> u64 {
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let parts = pak::disk::gpt::read(&mut f).unwrap();
    let part = parts.iter().find(|p| p.label == label).unwrap();
    let used = pak::image::squashfs::Reader::open(&mut f, part.offset())
        .unwrap()
        .bytes_used();
    let at = used / 2 / 4096 * 4096 + 1234;
    let mut b = [0u8];
    f.seek(SeekFrom::Start(part.offset() + at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(part.offset() + at)).unwrap();
    f.write_all(&[b[0] ^ 0x20]).unwrap();
    f.sync_all().unwrap();
    at
}

#[test]
fn a_changed_slot_fails_its_trial_and_the_machine_falls_back() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let base = std::fs::read_to_string(workspace().join("images/minimal/Pakfile")).unwrap();
    let gen1 = w.join("gen1/Pakfile");
    std::fs::create_dir_all(gen1.parent().unwrap()).unwrap();
    std::fs::write(&gen1, &base).unwrap();
    let img = w.join("minimal.raw");
    pak_e2e(&["--pakfile", s(&gen1), "build", "-o", s(&img)]);
    pak_e2e(&["system", "mark-good", "--disk", s(&img)]);
    // Generation 2 gets one try, so one failed boot is the fallback.
    let gen2 = w.join("gen2/Pakfile");
    std::fs::create_dir_all(gen2.parent().unwrap()).unwrap();
    assert!(base.contains("tries = 3"));
    std::fs::write(&gen2, base.replace("tries = 3", "tries = 1")).unwrap();
    let sqfs = w.join("gen2.sqfs");
    pak_e2e(&[
        "--pakfile",
        s(&gen2),
        "build",
        "--generation",
        s(&sqfs),
        "--number",
        "2",
    ]);
    let root = pak::image::verity::root_hash_of(&sqfs).unwrap();
    pak_e2e(&["system", "switch", "--disk", s(&img), s(&sqfs)]);
    pak_e2e(&["system", "verify", "--disk", s(&img)]);

    let at = flip_inside_used_block(&img, "root-b");
    let block = at / 4096;
    let verify = common::pak(["system", "verify", "--disk", s(&img)])
        .root(common::e2e_store())
        .run();
    assert!(!verify.success());
    assert!(
        verify.text().contains(&format!(
            "slot b: data block {block} does not match its dm-verity hash"
        )),
        "{}",
        verify.text()
    );

    let mut m = Machine::start(&vm(&img, &[]), &w.join("console.log")).unwrap();
    m.wait_for("pak-init: starting generation 2 from slot b", BOOT)
        .unwrap();
    m.wait_for(&format!("against root hash {root}"), BOOT)
        .unwrap();
    // The kernel names the block, /init says what it means, and reboots.
    m.wait_for(&format!("data block {block} is corrupted"), BOOT)
        .unwrap();
    m.wait_for("DM-VERITY ERROR: slot b does not match its root hash", BOOT)
        .unwrap();
    m.wait_for("pak-init: starting generation 1 from slot a", BOOT)
        .unwrap();
    m.wait_for("is checked by dm-verity against root hash", BOOT)
        .unwrap();
    m.wait_for_shell(BOOT).unwrap();
    let mounts = m.succeed("cat /proc/mounts").unwrap();
    assert!(
        mounts.contains("/dev/mapper/pak-root / squashfs ro"),
        "{mounts}"
    );
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("rolled back: generation 2 (slot b) failed to boot")
            && status.contains("slot b: bad, generation 2")
            && status.contains("booted: generation 1 from slot a (marked good)"),
        "{status}"
    );
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
}
