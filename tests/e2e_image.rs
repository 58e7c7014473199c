//! End to end: build the shipped images from Debian's real packages and
//! boot them under QEMU with OVMF (UEFI), as a user would.

mod common;
use common::{BOOT, e2e_store, pak, pak_e2e, vm};

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pak::vm::vmtest::Machine;

fn esp_entries(image: &Path) -> String {
    let out = Command::new("mdir")
        .args(["-b", "-i"])
        .arg(format!("{}@@1M", image.display()))
        .arg("::/loader/entries")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn minimal_boots_from_slot_a_with_a_read_only_root_and_persistent_var() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("minimal.raw");
    common::build_shipped("minimal", &img);
    assert!(
        esp_entries(&img).contains("pak-a-1+3.conf"),
        "a fresh image has an entry with three tries"
    );
    let meta = Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@1M", img.display()))
        .arg("::/pak/a/generation.toml")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&meta.stdout).contains("number = 1"),
        "the ESP describes slot a"
    );

    let mut m = Machine::start(&vm(&img, &[]), &work.path().join("console.log")).unwrap();
    // The first boot is on trial: the watchdog runs until the boot is good.
    m.wait_for("boot on trial: the watchdog resets the machine", BOOT)
        .unwrap();
    m.wait_for("pak-init: switching to /sbin/init", BOOT)
        .unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    let cmdline = m.succeed("cat /proc/cmdline").unwrap();
    assert!(
        cmdline.contains("pak.slot=a") && cmdline.contains("pak.generation=1"),
        "{cmdline}"
    );
    let root = m.succeed("grep ' / ' /proc/mounts").unwrap();
    assert!(root.contains(" / squashfs ro"), "{root}");
    m.fail("touch /usr/x").unwrap();
    m.succeed("echo kept > /var/kept && mkdir -p /home/me && echo mine > /home/me/f")
        .unwrap();
    assert!(m.succeed("cat /etc/os-release").unwrap().contains("ID=pak"));
    assert!(
        m.succeed("cat /usr/lib/pak/generation.toml")
            .unwrap()
            .contains("number = 1")
    );
    m.reboot().unwrap();
    assert_eq!(m.succeed("cat /var/kept").unwrap().trim(), "kept");
    assert_eq!(m.succeed("cat /home/me/f").unwrap().trim(), "mine");
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
    drop(m);
    // systemd-boot counted the first boot on the ESP pak wrote, and the
    // image marked it good by itself (no services to wait for): the entry
    // has no counter left, so the second boot was not counted.
    let entries = esp_entries(&img);
    assert!(
        entries.contains("pak-a-1.conf") && !entries.contains('+'),
        "marked good: {entries}"
    );
}

#[test]
fn server_serves_http_from_its_files_configuration() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("server.raw");
    common::build_shipped("server", &img);
    let mut m = Machine::start(&vm(&img, &[]), &work.path().join("console.log")).unwrap();
    m.wait_for("pak-init: switching to /sbin/init", BOOT)
        .unwrap();
    m.wait_for_shell(BOOT).unwrap();
    // nginx is started by init; give it a moment on a slow emulated CPU.
    let mut body = String::new();
    for _ in 0..30 {
        let (status, out) = m
            .execute("wget -q -O - http://127.0.0.1/", Duration::from_secs(30))
            .unwrap();
        if status == 0 {
            body = out;
            break;
        }
        m.succeed("sleep 1").unwrap();
    }
    assert!(
        body.contains("hello from a pak image"),
        "nginx did not answer: {body}"
    );
}

#[test]
fn builds_are_reproducible() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("minimal.raw");
    common::build_shipped("minimal", &img);
    let out = pak(["--pakfile"])
        .arg(work.path().join("minimal/Pakfile"))
        .args(["build", "--check", "-o"])
        .arg(&img)
        .root(e2e_store())
        .env("TZ", "Pacific/Auckland")
        .ok();
    assert!(out.contains("reproducible"), "{out}");
}

#[test]
fn missing_qemu_names_the_packages_to_install() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("x.raw");
    std::fs::write(&img, b"").unwrap();
    std::fs::write(work.path().join("s.pakt"), "shell\n").unwrap();
    let err = pak(["test"])
        .arg(&img)
        .arg(work.path().join("s.pakt"))
        .env("PATH", "/nonexistent")
        .env_remove("PAK_QEMU")
        .fails();
    assert!(
        err.contains("qemu-system-x86") && err.contains("ovmf"),
        "{err}"
    );
}

#[test]
fn system_status_and_mark_good_offline_and_inside_the_guest() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("minimal.raw");
    common::build_shipped("minimal", &img);
    let disk = img.to_str().unwrap();
    let status = pak_e2e(&["system", "status", "--disk", disk]);
    assert!(
        status.contains("boots next: generation 1 from slot a"),
        "{status}"
    );
    assert!(
        status.contains("slot a: pending, generation 1, 3 tries left, 0 done"),
        "{status}"
    );
    assert!(status.contains("slot b: empty"), "{status}");

    let mut m = Machine::start(&vm(&img, &[]), &work.path().join("console.log")).unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    let live = m.succeed("pak system status").unwrap();
    assert!(
        live.contains("booted: generation 1 from slot a (marked good)")
            && live.contains("slot a: good, generation 1"),
        "{live}"
    );
    assert!(
        m.succeed("pak system mark-good")
            .unwrap()
            .contains("generation 1 (slot a) is already marked good")
    );
    let json = m.succeed("pak system status --json").unwrap();
    assert!(json.contains("\"booted_good\": true"), "{json}");
    // Off a pak disk's view: rollback has nowhere to go.
    let err = m.fail("pak system rollback").unwrap();
    assert!(err.contains("slot b is empty"), "{err}");
    m.reboot().unwrap();
    assert!(
        m.succeed("pak system status")
            .unwrap()
            .contains("slot a: good, generation 1")
    );
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
    drop(m);
    // A good entry is not counted down any more, and the ESP stays clean.
    let offline = pak_e2e(&["system", "status", "--disk", disk]);
    assert!(offline.contains("default entry: pak-a-1.conf"), "{offline}");
}

/// The server image on the network with no configuration of its own
/// (DHCP on every Ethernet interface), reached from the host through
/// `--forward HOST:GUEST` (here the test driver's config): nginx's page.
#[test]
fn the_server_is_reached_through_a_forwarded_port() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("server.raw");
    common::build_shipped("server", &img);
    // A free port of this machine's loopback for the host side.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = vm(&img, &[]);
    cfg.forwards = vec![format!("{port}:80").parse().unwrap()];
    let mut m = Machine::start(&cfg, &work.path().join("console.log")).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    common::wait_for_address(&mut m, "10.0.2.15");
    let resolv = m.succeed("cat /etc/resolv.conf").unwrap();
    assert!(
        resolv.contains("nameserver 10.0.2.3"),
        "DNS from the lease: {resolv}"
    );
    let body = common::fetch_until(port, "hello from a pak image");
    assert!(
        body.contains("hello from a pak image"),
        "no page through 127.0.0.1:{port}: {body:?}"
    );
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
}
