//! End to end under QEMU: the data partition survives power cuts, a
//! damaged one is repaired at boot (or the machine still boots when it
//! cannot be), and a factory reset wipes it on an image and live.
//!
//! The host reads the data partition only to check what pak made: it copies
//! the partition out of the image, mounts the copy through a loop device
//! (partition scanning does not work here) and runs `e2fsck -fn` on it.
//! Damage is done by hand, in the superblock, with its checksum redone.

mod common;
use common::{BOOT, pak_e2e, vm, workspace};

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pak::vm::vmtest::Machine;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `images/minimal`'s Pakfile in `dir/name/`, edited by `edit`.
fn pakfile(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> String {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let base = std::fs::read_to_string(workspace().join("images/minimal/Pakfile")).unwrap();
    let p = d.join("Pakfile");
    std::fs::write(&p, edit(base)).unwrap();
    p.to_str().unwrap().to_string()
}

/// `images/minimal` as generation 1 in `w/minimal.raw`.
fn minimal_image(w: &Path) -> PathBuf {
    let img = w.join("minimal.raw");
    let p = pakfile(w, "minimal", |t| t);
    pak_e2e(&["--pakfile", &p, "build", "-o", s(&img)]);
    img
}

/// The data partition's offset and size in `img`.
fn data_partition(img: &Path) -> (u64, u64) {
    let mut f = std::fs::File::open(img).unwrap();
    let p = pak::disk::gpt::read(&mut f)
        .unwrap()
        .into_iter()
        .find(|p| p.label == "data")
        .expect("a data partition");
    (p.offset(), p.size())
}

/// Copies the data partition out of `img` into `out`, leaving holes where
/// it is zero, so a mostly empty partition copies quickly.
fn extract_data(img: &Path, out: &Path) {
    let (at, size) = data_partition(img);
    let mut from = std::fs::File::open(img).unwrap();
    from.seek(SeekFrom::Start(at)).unwrap();
    let mut to = std::fs::File::create(out).unwrap();
    to.set_len(size).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < size {
        let n = buf.len().min((size - done) as usize);
        from.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            to.seek(SeekFrom::Start(done)).unwrap();
            to.write_all(&buf[..n]).unwrap();
        }
        done += n as u64;
    }
}

/// `e2fsck -fn` on a partition file: what it says, and whether it is clean.
fn host_fsck(part: &Path) -> (bool, String) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(part)
        .output()
        .expect("e2fsck on the host (e2fsprogs) checks the guest's filesystem");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The data partition of `img` copied to `w/name`, checked clean by
/// `e2fsck -fn` after its journal is replayed (by mounting the copy, which
/// is what the next boot does to the original). Calls `look` with the
/// mounted copy.
fn check_data_from_host(img: &Path, w: &Path, name: &str, look: impl FnOnce(&Path)) {
    let part = w.join(name);
    extract_data(img, &part);
    let mnt = w.join(format!("{name}.mnt"));
    std::fs::create_dir_all(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&part)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "cannot loop-mount the data partition copy");
    let looked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| look(&mnt)));
    let st = Command::new("umount").arg(&mnt).status().unwrap();
    assert!(st.success(), "cannot unmount {}", mnt.display());
    if let Err(p) = looked {
        std::panic::resume_unwind(p);
    }
    let (clean, text) = host_fsck(&part);
    assert!(clean, "e2fsck -fn on the data partition: {text}");
    std::fs::remove_file(&part).unwrap();
}

/// The ext4 superblock of the data partition, edited by `edit`, its
/// checksum redone when the filesystem has one (metadata_csum).
fn patch_superblock(img: &Path, edit: impl FnOnce(&mut [u8])) {
    let (at, _) = data_partition(img);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut sb = vec![0u8; 1024];
    f.seek(SeekFrom::Start(at + 1024)).unwrap();
    f.read_exact(&mut sb).unwrap();
    let metadata_csum = u32::from_le_bytes(sb[0x64..0x68].try_into().unwrap()) & 0x400 != 0;
    edit(&mut sb);
    if metadata_csum {
        let c = crc32c(&sb[..0x3FC]);
        sb[0x3FC..].copy_from_slice(&c.to_le_bytes());
    }
    f.seek(SeekFrom::Start(at + 1024)).unwrap();
    f.write_all(&sb).unwrap();
    f.sync_all().unwrap();
}

/// ext4's superblock checksum: CRC-32C seeded with !0, not inverted after.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    crc
}

/// Whether the data partition's ext4 has a journal (`has_journal`).
fn has_journal(img: &Path) -> bool {
    let mut j = false;
    read_superblock(img, |sb| {
        j = u32::from_le_bytes(sb[0x5C..0x60].try_into().unwrap()) & 0x4 != 0
    });
    j
}

fn read_superblock(img: &Path, look: impl FnOnce(&[u8])) {
    let (at, _) = data_partition(img);
    let mut f = std::fs::File::open(img).unwrap();
    let mut sb = vec![0u8; 1024];
    f.seek(SeekFrom::Start(at + 1024)).unwrap();
    f.read_exact(&mut sb).unwrap();
    assert_eq!(sb[0x38..0x3A], [0x53, 0xEF], "no ext superblock on data");
    look(&sb);
}

/// The content the guest's writer gives file `i`, so both sides agree
/// without sending it: a line repeated to a size that varies with `i`.
fn power_cut_file(i: u64) -> Vec<u8> {
    let line = format!("pak power-cut test file {i}\n");
    let size = ((i % 17 + 1) * 4096 + i) as usize;
    line.bytes().cycle().take(size).collect()
}

/// The same, in the guest's shell (busybox), for file `$i`.
const GUEST_FILE: &str =
    r#"yes "pak power-cut test file $i" | head -c $(( (i % 17 + 1) * 4096 + i ))"#;

/// A small random number from the clock: where to cut varies run to run.
fn random(below: u64) -> u64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut x = n ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x % below
}

/// Ten power cuts during heavy writes to /var: QEMU killed at a random
/// point while a writer makes numbered files, syncs each and prints its
/// number, with unsynced bulk writes going on beside it. After each cut,
/// every file whose number was printed is intact: on the host (the copy's
/// journal replayed, `e2fsck -fn` clean) and in the guest after the next
/// boot, whose `/init` ran `e2fsck -p` on the cut filesystem.
#[test]
fn ten_power_cuts_lose_no_synced_file() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let img = minimal_image(w);
    // (first, last) file numbers each cut promised.
    let mut promised: Vec<(u64, u64)> = Vec::new();
    let started = Instant::now();
    for cycle in 1..=11u64 {
        let log = w.join(format!("boot-{cycle}.log"));
        let mut m = Machine::start(&vm(&img, &[]), &log).unwrap();
        m.wait_for("pak-init: mounted data on /var", BOOT).unwrap();
        m.wait_for_shell(BOOT).unwrap();
        let console = m.tail(10_000);
        assert!(
            !console.contains("could not repair"),
            "boot {cycle} after a cut:\n{console}"
        );
        // The guest sees what the host saw: everything promised so far.
        if !promised.is_empty() {
            let ranges: Vec<String> = promised
                .iter()
                .map(|(a, b)| format!("$(seq {a} {b})"))
                .collect();
            let out = m
                .succeed(&format!(
                    "for i in {}; do {GUEST_FILE} | cmp -s - /var/pc/f$i || echo PC-BAD $i; done; echo PC-CHECKED",
                    ranges.join(" ")
                ))
                .unwrap();
            assert!(
                out.contains("PC-CHECKED") && !out.contains("PC-BAD"),
                "boot {cycle}: {out}"
            );
        }
        if cycle == 11 {
            m.send("poweroff\n").unwrap();
            m.wait_for_shutdown(BOOT).unwrap();
            break;
        }
        let first = cycle * 1000;
        m.send(&format!(
            "mkdir -p /var/pc; (while :; do dd if=/dev/zero of=/var/pc/bulk bs=64k count=64 2>/dev/null; done) & i={first}; while :; do {GUEST_FILE} > /var/pc/f$i; sync; echo PC-SYNCED $i; i=$((i+1)); done\n"
        ))
        .unwrap();
        let wait = 2 + random(6);
        m.wait_for(&format!("PC-SYNCED {}", first + wait), BOOT)
            .unwrap();
        std::thread::sleep(Duration::from_millis(random(1500)));
        m.kill();
        let console = std::fs::read_to_string(&log).unwrap();
        let last = console
            .lines()
            .filter_map(|l| l.trim().strip_prefix("PC-SYNCED "))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .max()
            .unwrap();
        assert!(last >= first + wait);
        promised.push((first, last));
        eprintln!("cut {cycle}: files {first}..={last} synced before the cut");
        check_data_from_host(&img, w, "data.part", |mnt| {
            for &(a, b) in &promised {
                for i in a..=b {
                    let p = mnt.join(format!("pc/f{i}"));
                    let got = std::fs::read(&p)
                        .unwrap_or_else(|e| panic!("cut {cycle}: {}: {e}", p.display()));
                    assert!(
                        got == power_cut_file(i),
                        "cut {cycle}: file {i} synced before the cut is not intact"
                    );
                }
            }
        });
    }
    eprintln!("10 power cuts, 11 boots: {}s", started.elapsed().as_secs());
}

/// Reads the data partition's bytes, to prove a boot left them alone.
fn data_bytes(img: &Path) -> Vec<u8> {
    let (at, size) = data_partition(img);
    let mut f = std::fs::File::open(img).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let mut b = vec![0u8; size as usize];
    f.read_exact(&mut b).unwrap();
    b
}

/// A data partition an older pak left without a journal gets one; errors
/// `e2fsck -p` can fix are fixed at boot and said; one it cannot fix still
/// boots to a shell, with /var on a tmpfs, the check readable, and the
/// damaged partition untouched.
#[test]
fn a_damaged_var_is_repaired_at_boot_or_still_boots() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // Generation 1 without e2fsprogs formats /var as an older pak did:
    // busybox's mke2fs, no journal.
    let old = pakfile(w, "old", |t| {
        t.replace("profiles = [\"base\"]\n", "")
            + "\n[packages]\nlinux-image-cloud-amd64 = \"*\"\nbusybox-static = \"*\"\nsystemd-boot-efi = \"*\"\npak = \"*\"\n"
    });
    let img = w.join("old.raw");
    pak_e2e(&["--pakfile", &old, "build", "-o", s(&img)]);
    let mut m = Machine::start(&vm(&img, &[]), &w.join("boot-1.log")).unwrap();
    m.wait_for("this image has no mkfs.ext4 (add e2fsprogs)", BOOT)
        .unwrap();
    m.wait_for("pak-init: mounted data on /var", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    m.succeed("echo kept > /var/keep && sync").unwrap();
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
    drop(m);
    assert!(!has_journal(&img), "busybox's mke2fs made a journal?");

    // Generation 2 has e2fsprogs; the partition gets damage e2fsck -p
    // repairs: a wrong free-block count, the filesystem marked with errors.
    let new = pakfile(w, "new", |t| t);
    let gen2 = w.join("gen2.sqfs");
    pak_e2e(&[
        "--pakfile",
        &new,
        "build",
        "--generation",
        s(&gen2),
        "--number",
        "2",
    ]);
    pak_e2e(&["system", "mark-good", "--disk", s(&img)]);
    pak_e2e(&["system", "switch", "--disk", s(&img), s(&gen2)]);
    patch_superblock(&img, |sb| {
        sb[0x0C..0x10].copy_from_slice(&12345u32.to_le_bytes());
        sb[0x3A] |= 0x2;
    });
    let mut m = Machine::start(&vm(&img, &[]), &w.join("boot-2.log")).unwrap();
    m.wait_for(
        "pak-init: e2fsck corrected errors on the data partition",
        BOOT,
    )
    .unwrap();
    m.wait_for("pak-init: added a journal to the data partition", BOOT)
        .unwrap();
    m.wait_for_shell(BOOT).unwrap();
    assert_eq!(m.succeed("cat /var/keep").unwrap().trim(), "kept");
    let record = m.succeed("cat /var/lib/pak/data-check").unwrap();
    assert!(
        record.contains("outcome=corrected")
            && record.contains("e2fsck_exit=1")
            && record.contains("journal_added=yes"),
        "{record}"
    );
    m.succeed("grep -q ' /var ext4 ' /proc/mounts").unwrap();
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
    drop(m);
    assert!(has_journal(&img));
    check_data_from_host(&img, w, "data.part", |mnt| {
        assert_eq!(std::fs::read_to_string(mnt.join("keep")).unwrap(), "kept\n");
    });

    // Damage e2fsck -p cannot repair: the superblock's magic is gone.
    patch_superblock(&img, |sb| sb[0x38..0x3A].copy_from_slice(&[0, 0]));
    let before = data_bytes(&img);
    let mut m = Machine::start(&vm(&img, &[]), &w.join("boot-3.log")).unwrap();
    m.wait_for("pak-init: e2fsck could not repair the data partition", BOOT)
        .unwrap();
    m.wait_for("HAS ERRORS e2fsck could not repair", BOOT)
        .unwrap();
    m.wait_for("to repair it: e2fsck -f /dev/", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    let record = m.succeed("cat /var/lib/pak/data-check").unwrap();
    assert!(
        record.contains("outcome=uncorrectable") && record.contains("output="),
        "{record}"
    );
    m.succeed("grep -q ' /var tmpfs ' /proc/mounts").unwrap();
    m.succeed("echo usable > /var/scratch && cat /var/scratch")
        .unwrap();
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
    drop(m);
    assert!(
        data_bytes(&img) == before,
        "a boot changed the damaged data partition"
    );

    // Damage this image's e2fsck cannot handle but the kernel can read: a
    // filesystem feature it does not know (as a newer e2fsprogs could
    // leave). The files stay readable, read-only, beside the tmpfs /var,
    // and nothing else holds them, so the operator can unmount to repair.
    patch_superblock(&img, |sb| {
        sb[0x38..0x3A].copy_from_slice(&[0x53, 0xEF]);
        sb[0x67] |= 0x80;
    });
    let before = data_bytes(&img);
    let mut m = Machine::start(&vm(&img, &[]), &w.join("boot-4.log")).unwrap();
    m.wait_for("pak-init: e2fsck could not repair the data partition", BOOT)
        .unwrap();
    m.wait_for(
        "its files are mounted read-only on /var/lib/pak/data-ro",
        BOOT,
    )
    .unwrap();
    m.wait_for(
        "to repair it: umount /var/lib/pak/data-ro && e2fsck -f /dev/",
        BOOT,
    )
    .unwrap();
    m.wait_for_shell(BOOT).unwrap();
    assert_eq!(
        m.succeed("cat /var/lib/pak/data-ro/keep").unwrap().trim(),
        "kept"
    );
    let record = m.succeed("cat /var/lib/pak/data-check").unwrap();
    assert!(
        record.contains("outcome=uncorrectable")
            && record.contains("damaged_mount=/var/lib/pak/data-ro")
            && record.contains("unsupported feature"),
        "{record}"
    );
    m.fail("touch /var/lib/pak/data-ro/x").unwrap();
    m.succeed("umount /var/lib/pak/data-ro").unwrap();
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
    assert!(
        data_bytes(&img) == before,
        "a boot changed the damaged data partition"
    );
}

/// `pak system factory-reset`, on a disk image and live: the next boot
/// wipes /var and the changes to /etc and provisions the machine again;
/// the generation stays. Without a terminal and without --yes it refuses.
#[test]
fn factory_reset_on_an_image_and_live() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // 2 GiB, so that the data partition is large enough for mke2fs to pick
    // 4 KiB blocks: then the request shares its block with the superblock,
    // which the mounted filesystem writes back (the live case must survive
    // that).
    let img = w.join("minimal.raw");
    let p = pakfile(w, "minimal", |t| {
        t.replace("size = \"1GiB\"", "size = \"2GiB\"")
    });
    pak_e2e(&["--pakfile", &p, "build", "-o", s(&img)]);
    let mut m = Machine::start(&vm(&img, &[]), &w.join("boot-1.log")).unwrap();
    m.wait_for("is blank: formatting it (first boot)", BOOT)
        .unwrap();
    m.wait_for_shell(BOOT).unwrap();
    m.succeed("echo mine > /etc/pak-test && echo gone > /var/keep && sync")
        .unwrap();
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
    drop(m);
    read_superblock(&img, |sb| {
        assert_eq!(sb[0x18], 2, "the data filesystem's blocks are not 4 KiB")
    });

    let (at, _) = data_partition(&img);
    let first_sector = |img: &Path| {
        let mut f = std::fs::File::open(img).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        let mut b = vec![0u8; 512];
        f.read_exact(&mut b).unwrap();
        b
    };
    let err = common::pak(["system", "factory-reset", "--disk", s(&img)])
        .root(common::e2e_store())
        .fails();
    assert!(
        err.contains("no terminal to confirm it on; pass --yes"),
        "{err}"
    );
    assert_eq!(first_sector(&img), vec![0u8; 512], "a refusal wrote");
    let out = pak_e2e(&["system", "factory-reset", "--disk", s(&img), "--yes"]);
    assert!(out.contains("factory reset requested"), "{out}");

    let mut m = Machine::start(&vm(&img, &[]), &w.join("boot-2.log")).unwrap();
    m.wait_for("pak-init: factory reset requested: erasing", BOOT)
        .unwrap();
    m.wait_for("entries to /var from the image", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    let after_reset = |m: &mut Machine, gone: &str| {
        m.fail(&format!("test -e /var/{gone}")).unwrap();
        m.fail("test -e /etc/pak-test").unwrap();
        let cmdline = m.succeed("cat /proc/cmdline").unwrap();
        assert!(cmdline.contains("pak.generation=1"), "{cmdline}");
        let record = m.succeed("cat /var/lib/pak/data-check").unwrap();
        assert!(record.contains("outcome=reset"), "{record}");
    };
    after_reset(&mut m, "keep");
    let status = m.succeed("pak system status").unwrap();
    assert!(status.contains("generation 1 from slot a"), "{status}");

    // Live.
    m.succeed("echo mine > /etc/pak-test && echo gone > /var/keep-live && sync")
        .unwrap();
    let out = m.fail("pak system factory-reset < /dev/null").unwrap();
    assert!(out.contains("pass --yes"), "{out}");
    let out = m.succeed("pak system factory-reset --yes").unwrap();
    assert!(out.contains("factory reset requested"), "{out}");
    m.send("sync; reboot\n").unwrap();
    m.wait_for("pak-init: factory reset requested: erasing", BOOT)
        .unwrap();
    m.wait_for("entries to /var from the image", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    after_reset(&mut m, "keep-live");
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
    assert_eq!(first_sector(&img), vec![0u8; 512], "the request stayed");
    check_data_from_host(&img, w, "data.part", |mnt| {
        assert!(!mnt.join("keep-live").exists());
    });
}
