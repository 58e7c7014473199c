//! End to end under QEMU: `pak system switch` and `rollback` inside a
//! booted image, the automatic fallback from a generation that cannot boot,
//! and disks cut in the middle of a switch booting what they should.
//!
//! New generations reach the guest as a second, read-only disk
//! (`/dev/vdb`): `pak system switch` takes a generation file or a block
//! device holding one.

mod common;
use common::{BOOT, pak_e2e, vm, workspace};

use std::path::{Path, PathBuf};
use std::process::Command;

use pak::vm::vmtest::Machine;

/// `images/minimal`'s Pakfile in `dir/name/`, with `extra` appended.
fn pakfile(dir: &Path, name: &str, extra: &str) -> String {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let base = std::fs::read_to_string(workspace().join("images/minimal/Pakfile")).unwrap();
    let p = d.join("Pakfile");
    std::fs::write(&p, base + extra).unwrap();
    p.to_str().unwrap().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `images/minimal` built as generation 1 into `w/minimal.raw`; the image
/// and its Pakfile.
fn minimal_image(w: &Path) -> (PathBuf, String) {
    let img = w.join("minimal.raw");
    let gen1 = pakfile(w, "gen1", "");
    pak_e2e(&["--pakfile", &gen1, "build", "-o", s(&img)]);
    (img, gen1)
}

/// `pakfile` built as the generation file `out`, numbered 2.
fn generation_2(pakfile: &str, out: &Path) -> PathBuf {
    let args = [
        "--pakfile",
        pakfile,
        "build",
        "--generation",
        s(out),
        "--number",
        "2",
    ];
    pak_e2e(&args);
    out.to_path_buf()
}

#[test]
fn switch_reboot_and_roll_back_inside_the_guest() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (img, _) = minimal_image(w);
    // Generation 2: one package more.
    let gen2 = pakfile(
        w,
        "gen2",
        "\n[packages]\nhello = \"*\"\n\n[files]\n\"/etc/motd\" = \"generation 2\\n\"\n",
    );
    let sqfs = generation_2(&gen2, &w.join("gen2.sqfs"));

    let mut m = Machine::start(&vm(&img, &[&sqfs]), &w.join("console.log")).unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    m.fail("hello").unwrap();
    // A local change to a file the next generation changes too.
    m.succeed("echo mine > /etc/motd").unwrap();
    let out = m.succeed("pak system switch /dev/vdb").unwrap();
    assert!(
        out.contains("generation 2 written to slot b") && out.contains("pak-b-2+3.conf"),
        "{out}"
    );
    let diff = m.succeed("pak system diff").unwrap();
    assert!(diff.contains("+ hello "), "{diff}");
    m.reboot().unwrap();
    let cmdline = m.succeed("cat /proc/cmdline").unwrap();
    assert!(
        cmdline.contains("pak.slot=b") && cmdline.contains("pak.generation=2"),
        "{cmdline}"
    );
    assert!(m.succeed("hello").unwrap().contains("Hello, world!"));
    m.wait_for("pak: boot complete", BOOT).unwrap();
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("booted: generation 2 from slot b (marked good)")
            && status.contains("slot a: good, generation 1"),
        "{status}"
    );
    // The user's /etc/motd wins, and status says so.
    assert_eq!(m.succeed("cat /etc/motd").unwrap().trim(), "mine");
    assert!(
        status.contains("/etc files you changed") && status.contains("  /etc/motd"),
        "{status}"
    );
    m.succeed("echo survives > /var/switch-test").unwrap();

    // --reboot: rolls back and reboots in one go.
    m.send("sync; pak system rollback --reboot\n").unwrap();
    m.wait_for("generation 1 (slot a) boots next", BOOT)
        .unwrap();
    m.wait_for("pak-init: starting generation 1 from slot a", BOOT)
        .unwrap();
    m.wait_for_shell(BOOT).unwrap();
    let cmdline = m.succeed("cat /proc/cmdline").unwrap();
    assert!(
        cmdline.contains("pak.slot=a") && cmdline.contains("pak.generation=1"),
        "{cmdline}"
    );
    assert_eq!(
        m.succeed("cat /var/switch-test").unwrap().trim(),
        "survives"
    );
    assert_eq!(m.succeed("cat /etc/motd").unwrap().trim(), "mine");
    m.fail("hello").unwrap();
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("booted: generation 1 from slot a")
            && status.contains("slot b: good, generation 2"),
        "{status}"
    );
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
}

/// A generation whose init hangs instead of exiting: the watchdog armed for
/// the boot on trial resets the machine each time, then the fallback.
#[test]
fn a_generation_that_hangs_is_reset_by_the_watchdog() {
    falls_back(
        "init=/bin/cat pak.watchdog=10",
        &[
            "watchdog resets the machine unless it is marked good within 10s",
            "switching to /bin/cat",
        ],
    );
}

/// Its init exits at once: the kernel panics, and panic= reboots.
#[test]
fn a_generation_that_cannot_boot_falls_back_by_itself() {
    falls_back("init=/bin/false", &["Attempted to kill init"]);
}

/// Switches a fresh minimal machine to a generation 2 whose kernel command
/// line has `cmdline_extra`, and checks `per_boot` appears in each of its
/// three tries before the machine comes back to generation 1 by itself.
fn falls_back(cmdline_extra: &str, per_boot: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (img, _) = minimal_image(w);
    let broken = pakfile(w, "broken", "");
    let text = std::fs::read_to_string(&broken).unwrap().replace(
        "cmdline = \"console=ttyS0 panic=10\"",
        &format!("cmdline = \"console=ttyS0 panic=10 {cmdline_extra}\""),
    );
    assert!(text.contains(cmdline_extra));
    std::fs::write(&broken, text).unwrap();
    let sqfs = generation_2(&broken, &w.join("broken.sqfs"));
    let mut m = Machine::start(&vm(&img, &[&sqfs]), &w.join("console.log")).unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    m.succeed("pak system switch /dev/vdb").unwrap();
    m.send("sync; reboot\n").unwrap();
    for _ in 0..3 {
        m.wait_for("pak-init: starting generation 2 from slot b", BOOT)
            .unwrap();
        for text in per_boot {
            m.wait_for(text, BOOT).unwrap();
        }
    }
    m.wait_for("pak-init: starting generation 1 from slot a", BOOT)
        .unwrap();
    m.wait_for_shell(BOOT).unwrap();
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("rolled back: generation 2 (slot b) failed to boot 3 times")
            && status.contains("slot b: bad, generation 2, 0 tries left, 3 done")
            && status.contains("booted: generation 1 from slot a (marked good)"),
        "{status}"
    );
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
}

/// `pak system switch --pakfile` builds the generation first, numbered
/// after the disk's newest.
#[test]
fn switch_builds_from_a_pakfile() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (img, _) = minimal_image(w);
    pak_e2e(&["system", "mark-good", "--disk", s(&img)]);
    let gen2 = pakfile(w, "gen2", "\n[packages]\nhello = \"*\"\n");
    let out = pak_e2e(&["--pakfile", &gen2, "system", "switch", "--disk", s(&img)]);
    assert!(
        out.contains("built generation 2 of minimal") && out.contains("written to slot b"),
        "{out}"
    );
    let diff = pak_e2e(&["system", "diff", "--disk", s(&img), "1", "2"]);
    assert!(diff.contains("+ hello "), "{diff}");
    pak_e2e(&["system", "verify", "--disk", s(&img)]);
}

/// A sample of the cut points the offline fault-injection test covers,
/// booted for real: a switch stopped while writing the slot, while copying
/// the kernel, and just before the entry is written boots generation 1; one
/// stopped after the entry boots generation 2.
#[test]
fn disks_cut_during_a_switch_boot_under_qemu() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (img, gen1) = minimal_image(w);
    pak_e2e(&["system", "mark-good", "--disk", s(&img)]);
    let sqfs = generation_2(&gen1, &w.join("gen2.sqfs"));
    // How many writes and flushes a whole switch takes, on a copy.
    let probe = w.join("probe.raw");
    copy(&img, &probe);
    let res = common::pak(["system", "switch", "--disk", s(&probe), s(&sqfs)])
        .env("PAK_CUT_AFTER_OPS", u64::MAX.to_string())
        .run();
    assert!(res.success());
    let err = res.stderr();
    let total: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("pak: device operations: "))
        .unwrap_or_else(|| panic!("no operation count in {err}"))
        .trim()
        .parse()
        .unwrap();
    let cuts = [(5, 1), (total / 2, 1), (total - 40, 1), (total, 2)];
    for (n, expect) in cuts {
        let disk = w.join(format!("cut-{n}.raw"));
        copy(&img, &disk);
        let res = common::pak(["system", "switch", "--disk", s(&disk), s(&sqfs)])
            .env("PAK_CUT_AFTER_OPS", n.to_string())
            .run();
        assert_eq!(res.success(), n == total, "cut after {n} of {total}");
        let mut m = Machine::start(&vm(&disk, &[]), &w.join(format!("cut-{n}.log"))).unwrap();
        m.wait_for_shell(BOOT).unwrap();
        let cmdline = m.succeed("cat /proc/cmdline").unwrap();
        assert!(
            cmdline.contains(&format!("pak.generation={expect}")),
            "cut after {n} of {total}: {cmdline}\n{}",
            m.tail(200)
        );
        m.send("poweroff\n").unwrap();
        m.wait_for_shutdown(BOOT).unwrap();
    }
}

/// Copies a disk image keeping it sparse.
fn copy(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}
