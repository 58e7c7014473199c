//! End to end: immutable servers as an operator meets them. The shipped
//! server and database images, built from Debian's packages and configured
//! only through their Pakfiles, booted under QEMU and reached from the host
//! the way one reaches a server: over SSH with Debian's client, and with
//! Debian's `psql` through a forwarded port.

mod common;
use common::{BOOT, free_port, pak_e2e, vm, workspace};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pak::vm::vmtest::Machine;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `images/NAME/Pakfile` with `extra` appended, in `w/NAME/`.
fn pakfile(w: &Path, image: &str, extra: &str) -> PathBuf {
    let dir = w.join(image);
    std::fs::create_dir_all(&dir).unwrap();
    let text =
        std::fs::read_to_string(workspace().join("images").join(image).join("Pakfile")).unwrap();
    let path = dir.join("Pakfile");
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    path
}

/// An ed25519 key pair made by Debian's ssh-keygen: (private key, public line).
fn key_pair(w: &Path, name: &str) -> (PathBuf, String) {
    let key = w.join(name);
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

/// Runs `cmd` on the guest over SSH as `user`, retrying while sshd comes
/// up; the host key is recorded in `known_hosts`. Returns stdout.
fn ssh(key: &Path, known_hosts: &Path, port: u16, user: &str, cmd: &str) -> String {
    let mut last = String::new();
    for _ in 0..60 {
        let out = Command::new("ssh")
            .arg("-i")
            .arg(key)
            .args(["-p", &port.to_string()])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "ConnectTimeout=20",
                "-o",
            ])
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .arg(format!("{user}@127.0.0.1"))
            .arg(cmd)
            .output()
            .unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("ssh {user}@127.0.0.1:{port} {cmd:?} never succeeded: {last}");
}

/// The SHA256 fingerprint of the ed25519 host key `known_hosts` recorded.
fn recorded_fingerprint(known_hosts: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(known_hosts)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains("ED25519"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no ed25519 key recorded: {text}"))
        .to_string()
}

/// A key that must not log in as `user`.
fn refused(key: &Path, known_hosts: &Path, port: u16, user: &str) {
    let out = Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string(), "-o", "BatchMode=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg(format!("{user}@127.0.0.1"))
        .arg("true")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{} logged in as {user} on port {port}",
        key.display()
    );
}

/// One server image, two machines. The operator's key comes from the
/// Pakfile and logs in to both; each machine's seed names it and gives
/// root a key of its own, which works on that machine only. Each machine
/// makes its own host key on its first boot, onto /var (the image holds
/// none), and keeps it across a reboot.
#[test]
fn one_server_image_two_machines_reached_over_ssh() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (operator, public) = key_pair(w, "operator");
    let pakfile = pakfile(
        w,
        "server",
        &format!("[users.admin]\nssh-authorized-keys = [\"{public}\"]\n"),
    );
    let img = w.join("server.raw");
    pak_e2e(&["--pakfile", s(&pakfile), "build", "-o", s(&img)]);

    // Per machine: a copy of the image, a seed, a port for its sshd.
    let mut machines: Vec<_> = ["web-1", "web-2"]
        .into_iter()
        .map(|name| {
            let disk = w.join(format!("{name}.raw"));
            std::fs::copy(&img, &disk).unwrap();
            let (root_key, root_public) = key_pair(w, &format!("root-{name}"));
            let seed = w.join(format!("seed-{name}"));
            std::fs::create_dir_all(&seed).unwrap();
            std::fs::write(
                seed.join("pak-seed.toml"),
                format!(
                    "hostname = \"{name}\"\n[users.root]\nssh-authorized-keys = [\"{root_public}\"]\n"
                ),
            )
            .unwrap();
            let seed_img = w.join(format!("{name}.seed.img"));
            pak::vm::seed::write(&seed, &seed_img).unwrap();
            let port = free_port();
            let mut cfg = vm(&disk, &[&seed_img]);
            cfg.forwards = vec![format!("{port}:22").parse().unwrap()];
            let m = Machine::start(&cfg, &w.join(format!("{name}.console.log"))).unwrap();
            (name, m, port, root_key, w.join(format!("{name}.known_hosts")))
        })
        .collect();

    let mut fingerprints = Vec::new();
    for (name, m, port, root_key, known_hosts) in machines.iter_mut() {
        let port = *port;
        m.wait_for("pak: boot complete", BOOT).unwrap();
        m.wait_for_shell(BOOT).unwrap();
        assert_eq!(
            ssh(&operator, known_hosts, port, "admin", "id -un; hostname"),
            format!("admin\n{name}\n")
        );
        assert_eq!(ssh(root_key, known_hosts, port, "root", "id -un"), "root\n");
        let fingerprint = recorded_fingerprint(known_hosts);
        assert!(
            m.tail(400).contains(&fingerprint),
            "{name}: the key sshd presented is the one made at first boot ({fingerprint})"
        );
        // Nothing per-machine in the image: the keys are on /var only.
        m.fail("ls /etc/ssh/ssh_host_* /usr/share/factory/var/lib/ssh")
            .unwrap();
        let (stranger, _) = key_pair(w, &format!("stranger-{name}"));
        refused(&stranger, known_hosts, port, "admin");
        fingerprints.push(fingerprint);
    }
    assert_ne!(
        fingerprints[0], fingerprints[1],
        "each machine its own host key"
    );
    // web-1's root key is web-1's alone.
    refused(&machines[0].3, &machines[1].4, machines[1].2, "root");

    let (_, m, port, _, known_hosts) = &mut machines[0];
    m.reboot().unwrap();
    ssh(&operator, known_hosts, *port, "admin", "true");
    assert_eq!(
        recorded_fingerprint(known_hosts),
        fingerprints[0],
        "same host key after a reboot"
    );
    for (_, m, ..) in &mut machines {
        m.send("poweroff\n").unwrap();
        m.wait_for_shutdown(BOOT).unwrap();
    }
}

/// `psql` on the host, through the forwarded port; stdout, trimmed.
fn psql(port: u16, sql: &str) -> String {
    let mut last = String::new();
    for _ in 0..90 {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"])
            .args(["-Atc", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        // Only a server that is not up yet is worth waiting for.
        if !last.contains("connection") && !last.contains("starting up") {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("psql {sql:?} failed: {last}");
}

/// The database image: a table written from the host keeps its rows across
/// a reboot and a `pak system switch` to the next generation, and the data
/// stays owned by the same `postgres` uid in both generations.
#[test]
fn a_database_keeps_its_rows_across_a_reboot_and_a_switch() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let gen1 = pakfile(w, "postgres", "");
    let img = w.join("db.raw");
    pak_e2e(&["--pakfile", s(&gen1), "build", "-o", s(&img)]);
    // Generation 2: the same database, one more file.
    let gen2 = {
        let text = std::fs::read_to_string(&gen1).unwrap();
        let dir = w.join("gen2");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("Pakfile");
        std::fs::write(
            &path,
            text.replace(
                "[files]\n",
                "[files]\n\"/etc/motd\" = \"generation 2\\n\"\n",
            ),
        )
        .unwrap();
        path
    };
    std::fs::copy(
        gen1.with_file_name("Pakfile.lock"),
        gen2.with_file_name("Pakfile.lock"),
    )
    .unwrap();
    let next = w.join("gen2.sqfs");
    pak_e2e(&[
        "--pakfile",
        s(&gen2),
        "--locked",
        "build",
        "--generation",
        s(&next),
        "--number",
        "2",
    ]);

    let port = free_port();
    let mut cfg = vm(&img, &[&next]);
    cfg.forwards = vec![format!("{port}:5432").parse().unwrap()];
    let mut m = Machine::start(&cfg, &w.join("console.log")).unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    psql(
        port,
        "create table visits (n int primary key, who text); insert into visits values (1, 'first boot')",
    );
    let owner = m
        .succeed("stat -c %u /var/lib/postgresql/15/main; id -u postgres")
        .unwrap();

    // reboot() waits for the shell; psql waits for the server.
    m.reboot().unwrap();
    psql(port, "insert into visits values (2, 'after a reboot')");
    let status = m.succeed("pak system status").unwrap();
    assert!(
        status.contains("data: /dev/vda4 checked at boot, clean"),
        "the boot's check of /var, in the status: {status}"
    );
    assert_eq!(
        psql(port, "select who from visits order by n"),
        "first boot\nafter a reboot"
    );

    let out = m.succeed("pak system switch /dev/vdb").unwrap();
    assert!(out.contains("generation 2 written to slot b"), "{out}");
    // Generation 2 boots on trial and is marked good once its checks
    // pass, which says so on the console: waited for here, before any
    // command, so that line cannot land inside a command's output.
    m.send("sync; reboot\n").unwrap();
    m.wait_for("pak-init: starting generation 2", BOOT).unwrap();
    m.wait_for("marked generation 2 (slot b) good", BOOT)
        .unwrap();
    m.wait_for_shell(BOOT).unwrap();
    assert!(
        m.succeed("cat /proc/cmdline")
            .unwrap()
            .contains("pak.generation=2")
    );
    assert_eq!(m.succeed("cat /etc/motd").unwrap(), "generation 2\n");
    assert_eq!(
        psql(port, "select who from visits order by n"),
        "first boot\nafter a reboot"
    );
    assert_eq!(
        m.succeed("stat -c %u /var/lib/postgresql/15/main; id -u postgres")
            .unwrap(),
        owner,
        "the data and the postgres account keep one uid across generations"
    );
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
}

/// A static `[network]` matched by MAC (QEMU's first NIC is
/// 52:54:00:12:34:56): the guest takes the address the Pakfile gives
/// instead of the one DHCP would (10.0.2.15), reaches the host through the
/// Pakfile's gateway, and names its DNS server and search domain in
/// /etc/resolv.conf.
#[test]
fn a_static_network_by_mac_reaches_the_host() {
    use std::io::{Read, Write};
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let pakfile = pakfile(
        w,
        "minimal",
        "[network.interfaces.lan]\nmac = \"52:54:00:12:34:56\"\naddress = [\"10.0.2.77/24\"]\ngateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\"]\nsearch = [\"example.test\"]\n",
    );
    let img = w.join("static.raw");
    pak_e2e(&["--pakfile", s(&pakfile), "build", "-o", s(&img)]);

    // A one-shot HTTP server on the host's loopback, which QEMU's user
    // network shows the guest as 10.0.2.2.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf);
        c.write_all(b"HTTP/1.0 200 OK\r\n\r\nstatic works\n")
            .unwrap();
        peer
    });

    let mut m = Machine::start(&vm(&img, &[]), &w.join("console.log")).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    common::wait_for_address(&mut m, "10.0.2.77");
    let addrs = m.succeed("ip -4 addr show eth0").unwrap();
    assert!(
        !addrs.contains("10.0.2.15"),
        "no DHCP address beside the static one: {addrs}"
    );
    let resolv = m.succeed("cat /etc/resolv.conf").unwrap();
    assert!(
        resolv.contains("nameserver 10.0.2.3") && resolv.contains("search example.test"),
        "{resolv}"
    );
    let page = m
        .succeed(&format!("wget -q -O - http://10.0.2.2:{port}/"))
        .unwrap();
    assert_eq!(page, "static works\n");
    server.join().unwrap();
    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
}
