//! End to end under QEMU: a machine updates itself from a channel served by
//! Debian's nginx on the host (`10.0.2.2` from QEMU's user network).
//!
//! One machine, in order: a rollout of 0% leaves it where it is; at 100%
//! `pak system update` starts, the server dies mid-download (nginx
//! throttled, then killed), a second run resumes with a Range request and
//! switches; the reboot comes up in generation 2, marked good by the
//! image's health checks. Then a generation 3 whose health check fails:
//! the machine updates to it, the watchdog resets the boot on trial, and
//! it falls back to 2 by itself; the next update does not try 3 again and
//! says why. Generation 4, published halted, is not taken until the
//! rollout resumes; then the machine boots it, marked good.
//!
//! Numbers are never typed: generation 2 comes after the disk image's,
//! 3 after the channel's newest, and 4 (the fixed Pakfile built again)
//! after the newest pak built from that Pakfile.

mod common;
use common::{BOOT, Nginx, free_port, pak_e2e, vm, workspace};

use std::path::{Path, PathBuf};
use std::time::Duration;

use pak::vm::vmtest::Machine;

const NET: Duration = Duration::from_secs(300);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_machine_updates_itself_from_a_channel_served_by_nginx() {
    let started = std::time::Instant::now();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let port = free_port();
    pak_e2e(&["key", "generate", s(&w.join("channel"))]);
    let public = std::fs::read_to_string(w.join("channel.pub")).unwrap();
    let channel = w.join("channel");

    // The image names its channel in /etc/pak/update.toml.
    let minimal = std::fs::read_to_string(workspace().join("images/minimal/Pakfile")).unwrap();
    let pakfile_from = |minimal: &str, name: &str, extra: &str| -> PathBuf {
        let d = w.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("update.toml"),
            format!("channel = \"http://10.0.2.2:{port}\"\nkey = \"\"\"\n{public}\"\"\"\n"),
        )
        .unwrap();
        let p = d.join("Pakfile");
        std::fs::write(
            &p,
            format!("{minimal}\n{extra}\n[files]\n\"/etc/pak/update.toml\" = {{ source = \"update.toml\" }}\n"),
        )
        .unwrap();
        p
    };
    let pakfile = |name: &str, extra: &str| pakfile_from(&minimal, name, extra);
    let img = w.join("minimal.raw");
    pak_e2e(&["--pakfile", s(&pakfile("gen1", "")), "build", "-o", s(&img)]);
    let gen2 = w.join("gen2.sqfs");
    let hello = "[packages]\nhello = \"*\"\n";
    let out = pak_e2e(&[
        "--pakfile",
        s(&pakfile("gen2", hello)),
        "build",
        "--generation",
        s(&gen2),
        "--after",
        s(&img),
    ]);
    assert!(out.contains("numbering it generation 2"), "{out}");
    let size = std::fs::metadata(&gen2).unwrap().len();
    let publish = |args: &[&str]| {
        let mut a = vec!["publish", "--channel", s(&channel), "--key"];
        let key = w.join("channel.key");
        let key = s(&key).to_string();
        a.push(&key);
        a.extend_from_slice(args);
        pak_e2e(&a);
    };
    publish(&[s(&gen2), "--rollout", "0"]);

    // Generation 3 never gets healthy: its service's check fails, and one
    // try with a short watchdog keeps the fallback quick.
    let service = "[services.app]\nexec = \"sleep 86400\"\n";
    let broken = minimal
        .replace("tries = 3", "tries = 1")
        .replace("panic=10\"", "panic=10 pak.watchdog=30\"");
    assert!(broken.contains("tries = 1") && broken.contains("pak.watchdog=30"));
    let next = pakfile_from(
        &broken,
        "next",
        &format!("{hello}\n{service}health = \"false\"\n"),
    );
    let gen3 = w.join("gen3.sqfs");
    let out = pak_e2e(&[
        "--pakfile",
        s(&next),
        "build",
        "--generation",
        s(&gen3),
        "--after",
        s(&channel),
    ]);
    assert!(out.contains("numbering it generation 3"), "{out}");
    // The same Pakfile, fixed: numbered after the 3 built from it.
    let fixed = pakfile_from(
        &minimal,
        "next",
        &format!("{hello}\n{service}health = \"true\"\n"),
    );
    assert_eq!(fixed, next);
    let gen4 = w.join("gen4.sqfs");
    let out = pak_e2e(&["--pakfile", s(&next), "build", "--generation", s(&gen4)]);
    assert!(out.contains("numbering it generation 4"), "{out}");
    eprintln!("built and published in {:?}", started.elapsed());

    let logs = w.join("nginx");
    // Slow enough that the download is still running when nginx dies: a
    // delta update fetches a few hundred KiB (after a ~60 KiB chunk
    // index), over 4 connections.
    let server = Nginx::start(&logs, &channel, port, "20k");

    let mut m = Machine::start(&vm(&img, &[]), &w.join("console.log")).unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    common::wait_for_address(&mut m, "10.0.2.15");
    let booted = std::time::Instant::now();

    // 0%: the machine stays where it is, and says why.
    let (st, out) = m
        .execute("PAK_NO_PROGRESS=1 pak system update", NET)
        .unwrap();
    assert_eq!(st, 0, "{out}");
    assert!(out.contains("not in the rollout of generation 2"), "{out}");
    assert!(out.contains("up to date: generation 1"), "{out}");

    // 100%, and the server dies during the download.
    publish(&["--rollout", "100"]);
    m.succeed("(PAK_NO_PROGRESS=1 pak system update > /tmp/update.log 2>&1; echo exit $? >> /tmp/update.log) & true")
        .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    // Gone at once, as a crashed server or a cut cable (one process:
    // `master_process off`, so SIGKILL to it ends all serving).
    drop(server);
    let (_, out) = m
        .execute(
            "i=0; while [ $i -lt 600 ] && ! grep -q '^exit' /tmp/update.log; do i=$((i+1)); sleep 0.2; done; cat /tmp/update.log; ls -l /var/cache/pak/update",
            NET,
        )
        .unwrap();
    assert!(out.contains("exit 1") && out.contains("resume"), "{out}");
    let partial: u64 = out
        .lines()
        .find(|l| l.contains(".partial"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no partial download kept:\n{out}"));
    assert!(partial > 0 && partial < size, "{partial} of {size}: {out}");
    m.succeed("pak system status | grep -q 'slot b: empty'")
        .unwrap();

    let _server = Nginx::start(&logs, &channel, port, "0");
    let (st, out) = m
        .execute("PAK_NO_PROGRESS=1 pak system update", NET)
        .unwrap();
    assert_eq!(st, 0, "{out}");
    assert!(out.contains("generation 2 written to slot b"), "{out}");
    let log = std::fs::read_to_string(logs.join("access.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(".sqfs") && l.contains("\" 206 ")),
        "the second download was not a Range request:\n{log}"
    );
    // A delta: slot a was the seed, and both runs together fetched a
    // small part of the generation.
    assert!(out.contains("generation 2: fetching"), "{out}");
    let sent: u64 = log
        .lines()
        .filter(|l| l.contains("-2.sqfs ") || l.contains("-2.chunks "))
        .filter_map(|l| {
            l.split("\" ")
                .nth(1)?
                .split(' ')
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        sent > 0 && sent * 4 < size,
        "generation 2 cost {sent} of its {size} bytes:\n{log}"
    );
    m.reboot().unwrap();
    let cmdline = m.succeed("cat /proc/cmdline").unwrap();
    assert!(cmdline.contains("pak.generation=2"), "{cmdline}");
    m.wait_for("pak: boot complete", BOOT).unwrap();
    assert!(m.succeed("hello").unwrap().contains("Hello, world!"));
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("booted: generation 2 from slot b (marked good)")
            && status.contains(&format!(
                "updates: channel http://10.0.2.2:{port} (from /etc/pak/update.toml)"
            ))
            && status.contains("installed generation 2"),
        "{status}"
    );
    eprintln!("generation 2 runs: {:?}", booted.elapsed());

    // Generation 3 fails its health check: tried once, then generation 2
    // again, by itself.
    publish(&[s(&gen3)]);
    let (st, out) = m
        .execute("PAK_NO_PROGRESS=1 pak system update", NET)
        .unwrap();
    assert_eq!(st, 0, "{out}");
    assert!(out.contains("generation 3 written to slot a"), "{out}");
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("pending: generation 3 in slot a boots next, on trial"),
        "{status}"
    );
    m.send("sync; reboot\n").unwrap();
    m.wait_for("pak-init: starting generation 3 from slot a", BOOT)
        .unwrap();
    m.wait_for("unless it is marked good within 30s", BOOT)
        .unwrap();
    m.wait_for("pak-init: starting generation 2 from slot b", BOOT)
        .unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    common::wait_for_address(&mut m, "10.0.2.15");
    eprintln!("fell back to 2: {:?}", booted.elapsed());
    let (st, out) = m
        .execute("PAK_NO_PROGRESS=1 pak system update", NET)
        .unwrap();
    assert_eq!(st, 0, "{out}");
    assert!(
        out.contains("not trying again (this machine fell back from them): generation 3")
            && out.contains("up to date: generation 2"),
        "{out}"
    );
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("rolled back: generation 3 (slot a) failed to boot")
            && status.contains("failed here, not tried again: generation 3"),
        "{status}"
    );

    // Generation 4 published halted: nothing moves until it resumes.
    publish(&[s(&gen4), "--halt"]);
    let (st, out) = m
        .execute("PAK_NO_PROGRESS=1 pak system update", NET)
        .unwrap();
    assert_eq!(st, 0, "{out}");
    assert!(
        out.contains("the channel is halted: no update is offered (generation 2 stays)"),
        "{out}"
    );
    m.succeed("pak system status | grep -q 'last check: .*: the channel is halted'")
        .unwrap();
    publish(&["--resume"]);
    let (st, out) = m
        .execute("PAK_NO_PROGRESS=1 pak system update", NET)
        .unwrap();
    assert_eq!(st, 0, "{out}");
    assert!(out.contains("generation 4 written to slot a"), "{out}");
    m.reboot().unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("booted: generation 4 from slot a (marked good)"),
        "{status}"
    );
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
    eprintln!(
        "in the VM: {:?}; whole test: {:?}",
        booted.elapsed(),
        started.elapsed()
    );
}

/// `[update]` in the Pakfile: the machine checks its channel by itself,
/// installs what it is offered and reboots into it, with no command
/// typed; the new generation is marked good by its health checks.
#[test]
fn a_machine_with_update_in_its_pakfile_updates_by_itself() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let port = free_port();
    pak_e2e(&["key", "generate", s(&w.join("channel"))]);
    let channel = w.join("channel");
    let minimal = std::fs::read_to_string(workspace().join("images/minimal/Pakfile")).unwrap();
    let pakfile = |name: &str, extra: &str| -> PathBuf {
        let d = w.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(w.join("channel.pub"), d.join("channel.pub")).unwrap();
        let p = d.join("Pakfile");
        std::fs::write(
            &p,
            format!(
                "{minimal}\n{extra}\n[update]\nchannel = \"http://10.0.2.2:{port}\"\nkey = \"channel.pub\"\ninterval = \"5s\"\n"
            ),
        )
        .unwrap();
        p
    };
    let img = w.join("minimal.raw");
    pak_e2e(&["--pakfile", s(&pakfile("gen1", "")), "build", "-o", s(&img)]);
    let gen2 = w.join("gen2.sqfs");
    pak_e2e(&[
        "--pakfile",
        s(&pakfile("gen2", "[packages]\nhello = \"*\"\n")),
        "build",
        "--generation",
        s(&gen2),
        "--after",
        s(&img),
    ]);
    let key = w.join("channel.key");
    pak_e2e(&[
        "publish",
        s(&gen2),
        "--channel",
        s(&channel),
        "--key",
        s(&key),
    ]);
    let _nginx = Nginx::start(&w.join("nginx"), &channel, port, "0");

    let mut m = Machine::start(&vm(&img, &[]), &w.join("console.log")).unwrap();
    m.wait_for("pak update: checking every 5s", BOOT).unwrap();
    // Generation 1 is on trial until its checks pass; the updater waits
    // for that, then installs 2 and reboots into it by itself.
    m.wait_for("pak update: rebooting into the update", NET)
        .unwrap();
    m.wait_for("pak-init: starting generation 2 from slot b", BOOT)
        .unwrap();
    m.wait_for("marked generation 2 (slot b) good", BOOT)
        .unwrap();
    m.wait_for_shell(BOOT).unwrap();
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("booted: generation 2 from slot b (marked good)"),
        "{status}"
    );
    m.succeed("hello").unwrap();
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
}
