//! End to end: `[system] init = "systemd"` images from Debian's real
//! packages, booted under QEMU: Debian's own units run, the boot is judged
//! by boot-complete.target, and the busybox and systemd images' boot times
//! are measured side by side.

mod common;
use common::{BOOT, pak_e2e, vm, workspace};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pak::vm::qemu::Credential;
use pak::vm::vmtest::Machine;

/// The MAC address QEMU gives the first network card.
const QEMU_MAC: &str = "52:54:00:12:34:56";
/// An address only a provisioning seed gives the machine.
const SEED_ADDRESS: &str = "10.0.2.77";

/// Powers the guest off and waits for QEMU to exit.
fn power_off(m: &mut Machine) {
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
}

/// Polls `systemctl is-system-running` until the boot has settled; its
/// last answer, with the failed units when there are any.
fn system_state(m: &mut Machine) -> String {
    let (_, out) = m
        .execute(
            "i=0; while [ $i -lt 240 ]; do s=$(systemctl is-system-running); case $s in running|degraded|maintenance) break ;; esac; i=$((i+1)); sleep 0.5; done; echo \"$s\"; systemctl --failed --no-legend --plain --no-pager",
            Duration::from_secs(180),
        )
        .unwrap();
    out.trim().to_string()
}

/// The server of images/server, run by Debian's systemd: nginx and sshd
/// from their own units, the network from networkd, the boot marked good
/// through boot-complete.target; the machine-id and the journal survive a
/// reboot.
#[test]
fn server_systemd_runs_debians_units_and_is_marked_good_through_boot_complete() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("server-systemd.raw");
    common::build_shipped("server-systemd", &img);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = vm(&img, &[]);
    cfg.forwards = vec![format!("{port}:80").parse().unwrap()];
    // Provisioning through systemd's credentials: the host name as an
    // SMBIOS string (read by systemd itself), a static network as a seed
    // in fw_cfg (the address QEMU's DHCP would give, and one more).
    let seed = work.path().join("pak-seed.toml");
    std::fs::write(
        &seed,
        format!(
            "[network.interfaces.lan]\nmac = \"{QEMU_MAC}\"\naddress = [\"10.0.2.15/24\", \"{SEED_ADDRESS}/24\"]\ngateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\"]\n"
        ),
    )
    .unwrap();
    cfg.credentials = vec![
        Credential::smbios("system.hostname=web-7").unwrap(),
        Credential::fw_cfg(&format!("pak.seed={}", seed.display())).unwrap(),
    ];
    let started = Instant::now();
    let mut m = Machine::start(&cfg, &work.path().join("console.log")).unwrap();
    m.wait_for("pak-init: switching to /sbin/init", BOOT)
        .unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    eprintln!(
        "server-systemd: boot complete {:.1}s after QEMU started (TCG)",
        started.elapsed().as_secs_f64()
    );
    m.wait_for_shell(BOOT).unwrap();
    let state = system_state(&mut m);
    assert_eq!(state, "running", "systemctl is-system-running");
    assert_eq!(
        m.succeed("readlink /proc/1/exe").unwrap().trim(),
        "/usr/lib/systemd/systemd"
    );
    for unit in ["nginx.service", "ssh.service", "systemd-networkd.service"] {
        assert_eq!(
            m.succeed(&format!("systemctl is-active {unit}"))
                .unwrap()
                .trim(),
            "active",
            "{unit}"
        );
    }
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("booted: generation 1 from slot a (marked good)"),
        "{status}"
    );
    assert_eq!(
        m.succeed("systemctl is-active boot-complete.target pak-mark-good.service")
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["active", "active"]
    );

    let body = common::fetch_until(port, "hello from a pak image run by systemd");
    assert!(
        body.contains("hello from a pak image run by systemd"),
        "no page through 127.0.0.1:{port}: {body:?}"
    );

    // Provisioned from systemd's credentials and fw_cfg; the seed's
    // network is networkd's, and replaces the image's DHCP.
    assert_eq!(m.succeed("hostname").unwrap().trim(), "web-7");
    assert!(
        status.contains("provisioned from fw_cfg credentials: pak.seed")
            && status.contains("provisioned from systemd credentials: system.hostname"),
        "{status}"
    );
    common::wait_for_address(&mut m, SEED_ADDRESS);
    let networkd = m
        .succeed("for l in /sys/class/net/*; do [ ${l##*/} = lo ] || networkctl status --no-pager --lines=0 ${l##*/}; done | grep -i 'network file'")
        .unwrap();
    assert!(
        networkd.contains("/etc/systemd/network/40-pak-seed-lan.network"),
        "{networkd}"
    );

    // Debian's 90-systemd.preset enables systemd-network-generator; pak's
    // own keeps the getty it names off the console, and a unit no preset
    // names (e2fsprogs' e2scrub_reap) off.
    assert_eq!(
        m.succeed("systemctl is-active systemd-network-generator.service")
            .unwrap()
            .trim(),
        "active"
    );
    let (_, enabled) = m
        .execute(
            "systemctl is-enabled getty@tty1.service e2scrub_reap.service",
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(
        enabled.split_whitespace().collect::<Vec<_>>(),
        ["disabled", "disabled"]
    );

    let id = m.succeed("cat /etc/machine-id").unwrap().trim().to_string();
    assert_eq!(id.len(), 32, "systemd made a machine-id: {id:?}");
    m.reboot().unwrap();
    assert_eq!(system_state(&mut m), "running");
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("data: /dev/vda4 checked at boot, clean"),
        "/var was left clean at the reboot: {status}"
    );
    assert_eq!(
        m.succeed("cat /etc/machine-id").unwrap().trim(),
        id,
        "the machine-id is kept on /var"
    );
    let boots = m
        .succeed("journalctl --list-boots --no-pager | wc -l")
        .unwrap();
    assert!(
        boots.trim().parse::<u32>().unwrap() >= 2,
        "the journal of the previous boot is kept: {boots}"
    );
    power_off(&mut m);
    // /var (under the /etc overlay, and the journal's) is unmounted at the
    // end, cleanly, at the reboot and at power-off.
    let log = std::fs::read_to_string(work.path().join("console.log")).unwrap();
    assert!(
        log.contains("reboot: Power down"),
        "the log ends before power-off"
    );
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Failed unmounting") || l.contains("Not all file systems unmounted"))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

/// The same server under busybox init and under systemd, each from power
/// on to its boot marked good: what choosing systemd costs under TCG.
#[test]
fn boot_time_of_busybox_and_systemd_servers() {
    let work = tempfile::tempdir().unwrap();
    let mut times = Vec::new();
    for image in ["server", "server-systemd"] {
        let img = work.path().join(format!("{image}.raw"));
        common::build_shipped(image, &img);
        let started = Instant::now();
        let mut m =
            Machine::start(&vm(&img, &[]), &work.path().join(format!("{image}.log"))).unwrap();
        m.wait_for("pak: boot complete", BOOT).unwrap();
        let t = started.elapsed().as_secs_f64();
        eprintln!("{image}: boot marked good {t:.1}s after QEMU started (TCG)");
        times.push(t);
        m.wait_for_shell(BOOT).unwrap();
        power_off(&mut m);
    }
    eprintln!(
        "boot to marked good under TCG: busybox {:.1}s, systemd {:.1}s",
        times[0], times[1]
    );
}

/// A minimal busybox disk `w/minimal.raw` (generation 1), and beside it a
/// systemd generation 2 of the same system, numbered after the disk's:
/// `images/minimal` with `init = "systemd"`, `tweak`ed, plus `extra`.
fn busybox_disk_and_systemd_generation(
    w: &Path,
    tweak: impl Fn(String) -> String,
    extra: &str,
) -> (PathBuf, PathBuf) {
    let img = w.join("minimal.raw");
    common::build_shipped("minimal", &img);
    let dir = w.join("systemd");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(workspace().join("images/minimal/Pakfile"))
        .unwrap()
        .replace(
            "profiles = [\"base\"]",
            "init = \"systemd\"\nprofiles = [\"base\", \"systemd\"]",
        );
    assert!(text.contains("init = \"systemd\""));
    let pakfile = dir.join("Pakfile");
    std::fs::write(&pakfile, format!("{}\n{extra}", tweak(text))).unwrap();
    let gen2 = w.join("gen2.sqfs");
    pak_e2e(&[
        "--pakfile",
        pakfile.to_str().unwrap(),
        "build",
        "--generation",
        gen2.to_str().unwrap(),
        "--after",
        img.to_str().unwrap(),
    ]);
    (img, gen2)
}

/// One disk, both inits: a busybox generation switches to a systemd one,
/// which boots to `running` and is marked good through
/// boot-complete.target; a rollback brings the busybox generation back,
/// and /var (which both share) is the same.
#[test]
fn a_busybox_generation_switches_to_systemd_and_rolls_back() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (img, gen2) = busybox_disk_and_systemd_generation(w, |t| t, "");

    let mut m = Machine::start(&vm(&img, &[&gen2]), &w.join("console.log")).unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    assert!(
        m.succeed("readlink /proc/1/exe")
            .unwrap()
            .contains("busybox")
    );
    m.succeed("echo kept > /var/both-inits").unwrap();
    let out = m.succeed("pak system switch /dev/vdb").unwrap();
    assert!(out.contains("generation 2 written to slot b"), "{out}");

    m.reboot().unwrap();
    assert!(
        m.succeed("cat /proc/cmdline")
            .unwrap()
            .contains("pak.generation=2")
    );
    assert_eq!(system_state(&mut m), "running");
    assert!(
        m.succeed("readlink /proc/1/exe")
            .unwrap()
            .contains("systemd")
    );
    assert_eq!(m.succeed("cat /var/both-inits").unwrap().trim(), "kept");
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("booted: generation 2 from slot b (marked good)"),
        "{status}"
    );

    m.succeed("pak system rollback").unwrap();
    m.reboot().unwrap();
    assert!(
        m.succeed("cat /proc/cmdline")
            .unwrap()
            .contains("pak.generation=1")
    );
    assert!(
        m.succeed("readlink /proc/1/exe")
            .unwrap()
            .contains("busybox")
    );
    assert_eq!(m.succeed("cat /var/both-inits").unwrap().trim(), "kept");
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("booted: generation 1 from slot a")
            && status.contains("slot b: good, generation 2"),
        "{status}"
    );
    power_off(&mut m);
}

/// A systemd generation whose required service never gets healthy is not
/// blessed: boot-complete.target is never reached, the watchdog /init
/// armed for the boot on trial resets it, and with its one try used the
/// machine falls back to the generation before by itself.
#[test]
fn a_systemd_generation_whose_service_fails_falls_back_by_itself() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let tweak = |t: String| {
        let t = t
            .replace("tries = 3", "tries = 1")
            .replace("panic=10\"", "panic=10 pak.watchdog=30\"");
        assert!(t.contains("tries = 1") && t.contains("pak.watchdog=30"));
        t
    };
    let (img, gen2) = busybox_disk_and_systemd_generation(
        w,
        tweak,
        "[services.app]\nexec = \"sleep 86400\"\nhealth = \"false\"\n",
    );

    let mut m = Machine::start(&vm(&img, &[&gen2]), &w.join("console.log")).unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    m.succeed("pak system switch /dev/vdb").unwrap();
    m.send("sync; reboot\n").unwrap();
    m.wait_for("pak-init: starting generation 2 from slot b", BOOT)
        .unwrap();
    // Not marked good; the watchdog resets the boot on trial.
    m.wait_for("pak-init: starting generation 1 from slot a", BOOT * 2)
        .unwrap();
    m.wait_for_shell(BOOT).unwrap();
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("rolled back: generation 2 (slot b)")
            && status.contains("booted: generation 1 from slot a"),
        "{status}"
    );
    power_off(&mut m);
}
