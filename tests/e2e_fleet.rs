//! End to end under QEMU: a fleet of two machines and one channel, served
//! by Debian's nginx on the host (`10.0.2.2` from QEMU's user network)
//! from a copy the publisher keeps in sync with rsync, as it would sync a
//! web server's directory or an S3 bucket: serving needs nothing of pak.
//!
//! Both machines run the same image, with `[update]` (checking every 5 s,
//! rebooting only within a window that excludes now) and a machine-id
//! each from its provisioning seed. In order: metadata that was replayed
//! (an older version), tampered with, signed by another key or expired is
//! refused by `pak system update` inside the guest, writing nothing; a
//! partial rollout, its percentage chosen by the same stable hash the
//! machines use, takes one machine and not the other; the machine in it
//! installs the update by itself and waits for its window (the update
//! pending, the machine still on generation 1); once its window includes
//! now, it reboots into generation 2, marked good.

mod common;
use common::{BOOT, Nginx, free_port, pak_e2e, vm, workspace};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pak::vm::qemu::Credential;
use pak::vm::vmtest::Machine;

const NET: Duration = Duration::from_secs(300);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A reboot window of the UTC day, `from` to `to` minutes from now
/// (QEMU's guest clock starts from the host's).
fn window(from: i64, to: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let minute = (now % 86_400) / 60;
    let hm = |m: i64| {
        let m = (minute + m).rem_euclid(1440);
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    format!("{}-{}", hm(from), hm(to))
}

/// Two machine-ids and a rollout percentage of generation 2 that takes
/// the first machine and not the second, by `pak::channel::in_rollout`.
fn ids_split_by_rollout() -> (String, String, u32) {
    let id = |n: u32| format!("{n:032x}");
    let first = id(1);
    for n in 2..100 {
        let second = id(n);
        if let Some(p) = (1..100).find(|&p| {
            pak::channel::in_rollout(Some(&first), 2, p)
                && !pak::channel::in_rollout(Some(&second), 2, p)
        }) {
            return (first, second, p);
        }
    }
    panic!("no machine-id is outside a rollout that takes {first}");
}

/// The publisher's copy to the server, as the README has it: the
/// generations first, then `channel.toml` that names them, and only then
/// are generations `--keep` pruned removed; a host never reads metadata
/// naming a file the server does not have. `channel.toml` is copied with
/// `--ignore-times`: two publishes in one second can leave it the same
/// size and time, which rsync's quick check takes for unchanged.
fn rsync(from: &Path, to: &Path) {
    let dir = format!("{}/", from.display());
    let metadata = from.join("channel.toml").display().to_string();
    let to_dir = format!("{}/", to.display());
    for args in [
        vec!["-a", "--exclude", "channel.toml", &dir, &to_dir],
        vec!["-a", "--ignore-times", &metadata, &to_dir],
        vec!["-a", "--delete-after", &dir, &to_dir],
    ] {
        let status = Command::new("rsync")
            .args(&args)
            .status()
            .expect("rsync is not installed (tools/packages.txt lists it)");
        assert!(status.success(), "rsync {args:?}");
    }
}

/// A machine of `image` whose provisioning seed (an SMBIOS credential)
/// gives it `machine_id`, booted to its shell with its address.
fn boot(image: &Path, machine_id: &str, log: &Path) -> Machine {
    let mut cfg = vm(image, &[]);
    cfg.credentials = vec![
        Credential::smbios(&format!(
            "pak.seed=files = {{ \"/etc/machine-id\" = \"{machine_id}\\n\" }}"
        ))
        .unwrap(),
    ];
    Machine::start(&cfg, log).unwrap()
}

fn ready(m: &mut Machine, machine_id: &str) {
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    common::wait_for_address(m, "10.0.2.15");
    assert_eq!(m.succeed("cat /etc/machine-id").unwrap().trim(), machine_id);
}

fn update(m: &mut Machine) -> (i32, String) {
    m.execute("PAK_NO_PROGRESS=1 pak system update 2>&1", NET)
        .unwrap()
}

/// Nothing was written: no generation in the other slot, none pending.
fn nothing_written(m: &mut Machine, what: &str) {
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("slot b: empty") && !status.contains("pending"),
        "{what}: {status}"
    );
}

#[test]
fn a_fleet_refuses_bad_metadata_takes_a_partial_rollout_and_reboots_in_its_window() {
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let port = free_port();
    pak_e2e(&["key", "generate", s(&w.join("channel"))]);
    pak_e2e(&["key", "generate", s(&w.join("other"))]);
    let (in_id, out_id, percent) = ids_split_by_rollout();
    // Opens in two hours: an update waits.
    let closed = window(120, 180);
    let minimal = std::fs::read_to_string(workspace().join("images/minimal/Pakfile")).unwrap();
    let pakfile = |name: &str, extra: &str| -> PathBuf {
        let d = w.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(w.join("channel.pub"), d.join("channel.pub")).unwrap();
        let p = d.join("Pakfile");
        std::fs::write(
            &p,
            format!(
                "{minimal}\n{extra}\n[update]\nchannel = \"http://10.0.2.2:{port}\"\nkey = \"channel.pub\"\ninterval = \"5s\"\nreboot-window = \"{closed}\"\n"
            ),
        )
        .unwrap();
        p
    };
    let host_in = w.join("host-in.raw");
    pak_e2e(&[
        "--pakfile",
        s(&pakfile("gen1", "")),
        "build",
        "-o",
        s(&host_in),
    ]);
    let host_out = w.join("host-out.raw");
    let copied = Command::new("cp")
        .args(["--sparse=always", s(&host_in), s(&host_out)])
        .status()
        .unwrap();
    assert!(copied.success());
    let gen2 = w.join("gen2.sqfs");
    pak_e2e(&[
        "--pakfile",
        s(&pakfile("gen2", "[packages]\nhello = \"*\"\n")),
        "build",
        "--generation",
        s(&gen2),
        "--after",
        s(&host_in),
    ]);

    let channel = w.join("channel-dir");
    let served = w.join("served");
    let key = w.join("channel.key");
    let publish = |args: &[&str]| {
        let mut a = vec!["publish", "--channel", s(&channel), "--key", s(&key)];
        a.extend_from_slice(args);
        pak_e2e(&a);
        rsync(&channel, &served);
    };
    let metadata = || std::fs::read_to_string(channel.join("channel.toml")).unwrap();
    publish(&[s(&gen2), "--rollout", "0"]);
    let old = metadata();
    publish(&["--rollout", "0"]);
    let current = metadata();
    let tampered = current.replace("rollout = 0\n", "rollout = 100\n");
    assert_ne!(tampered, current);
    let foreign_dir = w.join("foreign");
    pak_e2e(&[
        "publish",
        s(&gen2),
        "--channel",
        s(&foreign_dir),
        "--key",
        s(&w.join("other.key")),
    ]);
    let foreign = std::fs::read_to_string(foreign_dir.join("channel.toml")).unwrap();
    eprintln!("built and published in {:?}", started.elapsed());

    let _nginx = Nginx::start(&w.join("nginx"), &served, port, "0");
    let mut a = boot(&host_in, &in_id, &w.join("host-in.log"));
    let mut b = boot(&host_out, &out_id, &w.join("host-out.log"));
    ready(&mut a, &in_id);
    ready(&mut b, &out_id);
    let booted = Instant::now();

    // Version 2 at 0%: seen, nothing to do.
    let (st, out) = update(&mut a);
    assert_eq!(st, 0, "{out}");
    assert!(out.contains("not in the rollout of generation 2"), "{out}");

    // Bad metadata served in place of the channel's: refused, nothing written.
    let serve = |text: &str| std::fs::write(served.join("channel.toml"), text).unwrap();
    for (what, text, says) in [
        ("replayed", old.as_str(), "older than version 2"),
        ("tampered", tampered.as_str(), "tampered with"),
        ("another key's", foreign.as_str(), "not by the trusted key"),
    ] {
        serve(text);
        let (st, out) = update(&mut a);
        assert_ne!(st, 0, "{what}: {out}");
        assert!(out.contains(says), "{what}: {out}");
        nothing_written(&mut a, what);
    }
    publish(&["--rollout", "0", "--expires", "1s"]);
    std::thread::sleep(Duration::from_secs(2));
    let (st, out) = update(&mut a);
    assert_ne!(st, 0, "expired: {out}");
    assert!(out.contains("expired on"), "expired: {out}");
    nothing_written(&mut a, "expired");

    // A partial rollout: the first machine is in it, the second is not.
    publish(&["--rollout", &percent.to_string()]);
    let (st, out) = update(&mut b);
    assert_eq!(st, 0, "{out}");
    assert!(
        out.contains("not in the rollout of generation 2") && out.contains("up to date"),
        "{out}"
    );
    // The first installs it by itself, and waits for its window.
    a.wait_for(
        &format!("pak update: rebooting in the window {closed} UTC"),
        NET,
    )
    .unwrap();
    let status = a.succeed("pak system status").unwrap();
    assert!(
        status.contains("pending: generation 2 in slot b boots next"),
        "{status}"
    );
    // Two more intervals: still generation 1 on both.
    std::thread::sleep(Duration::from_secs(10));
    nothing_written(&mut b, "outside the rollout");
    for m in [&mut a, &mut b] {
        assert!(
            m.succeed("cat /proc/cmdline")
                .unwrap()
                .contains("pak.generation=1")
        );
    }
    eprintln!("refusals and rollout checked: {:?}", booted.elapsed());
    b.send("poweroff\n").unwrap();

    // The window now includes now: the updater, started again with it,
    // reboots into the update at once.
    let open = window(-60, 60);
    a.succeed(&format!(
        "sed -i 's/^reboot-window = .*/reboot-window = \"{open}\"/' /etc/pak/update.toml && ps | grep '[u]pdate --watch' | awk '{{print $1}}' | xargs kill"
    ))
    .unwrap();
    a.wait_for(&format!("rebooting into updates within {open} UTC"), BOOT)
        .unwrap();
    a.wait_for("pak update: rebooting into the update", NET)
        .unwrap();
    a.wait_for("pak-init: starting generation 2 from slot b", BOOT)
        .unwrap();
    a.wait_for("pak: boot complete", BOOT).unwrap();
    a.wait_for_shell(BOOT).unwrap();
    let status = a.succeed("pak system status").unwrap();
    assert!(
        status.contains("booted: generation 2 from slot b (marked good)"),
        "{status}"
    );
    a.succeed("hello").unwrap();
    a.send("poweroff\n").unwrap();
    a.wait_for_shutdown(BOOT).unwrap();
    b.wait_for_shutdown(BOOT).unwrap();
    eprintln!(
        "in the VMs: {:?}; whole test: {:?}",
        booted.elapsed(),
        started.elapsed()
    );
}
