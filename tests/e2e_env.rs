//! End to end: a pak image installs a package into the `user` environment
//! from a repository served over HTTP by the host, runs it, and still runs
//! it after a reboot — with the network down, from the store on the data
//! partition.
//!
//! The image is `images/minimal` plus `/etc/pak/repositories.toml`, which
//! names the host's repository (QEMU's user network shows the host as
//! 10.0.2.2). The HTTP server is a small one in this test, over real TCP.

mod common;
use common::{BOOT, pak_e2e, vm, workspace};

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pak::vm::vmtest::Machine;

const NET: Duration = Duration::from_secs(120);

/// Serves the files of `dir` over HTTP/1.0 GET, one thread per connection,
/// for as long as the test runs. Returns the port.
fn serve(dir: PathBuf) -> u16 {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let _ = answer(&dir, stream);
            });
        }
    });
    port
}

fn answer(dir: &Path, mut stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let name = path.trim_start_matches('/');
    let file = (!name.is_empty() && !name.contains("..") && !name.contains('/'))
        .then(|| std::fs::read(dir.join(name)).ok())
        .flatten();
    match file {
        Some(body) => {
            write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)?;
        }
        None => write!(
            stream,
            "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
    }
    stream.flush()
}

/// A signed repository with `e2e-hello`, a command no image has.
fn make_repo(work: &Path) -> (PathBuf, String) {
    let src = work.join("e2e-hello");
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::write(
        src.join("usr/bin/e2e-hello"),
        "#!/bin/sh\necho \"hello from the user environment, env=$PAK_ENV\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        src.join("usr/bin/e2e-hello"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        src.join(".PAKINFO"),
        "name = \"e2e-hello\"\nversion = \"1.0-1\"\narch = \"any\"\nsummary = \"says hello\"\nlicense = \"MIT\"\n",
    )
    .unwrap();
    let repo = work.join("repo");
    std::fs::create_dir(&repo).unwrap();
    pak_e2e::<&std::ffi::OsStr>(&[
        "pkg".as_ref(),
        "create".as_ref(),
        src.as_ref(),
        "-o".as_ref(),
        repo.as_ref(),
    ]);
    let key = work.join("e2e");
    pak_e2e::<&std::ffi::OsStr>(&["key".as_ref(), "generate".as_ref(), key.as_ref()]);
    pak_e2e::<&std::ffi::OsStr>(&[
        "repo".as_ref(),
        "index".as_ref(),
        repo.as_ref(),
        "--key".as_ref(),
        work.join("e2e.key").as_ref(),
    ]);
    let public = std::fs::read_to_string(work.join("e2e.pub")).unwrap();
    (repo, public)
}

#[test]
fn install_user_from_an_http_repository_survives_a_reboot_and_a_switch() {
    let work = tempfile::tempdir().unwrap();
    let (repo, public) = make_repo(work.path());
    let port = serve(repo);

    // images/minimal, plus the repository users' environments start from.
    let image_dir = work.path().join("image");
    std::fs::create_dir(&image_dir).unwrap();
    let minimal = std::fs::read_to_string(workspace().join("images/minimal/Pakfile")).unwrap();
    std::fs::write(
        image_dir.join("repositories.toml"),
        format!(
            "[[repository]]\nname = \"host\"\nurl = \"http://10.0.2.2:{port}\"\nkey = \"\"\"\n{public}\"\"\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        image_dir.join("Pakfile"),
        format!(
            "{minimal}\n[files]\n\"/etc/pak/repositories.toml\" = {{ source = \"repositories.toml\" }}\n\n[users.alice]\nuid = 1000\nlogin = false\n"
        ),
    )
    .unwrap();
    let img = work.path().join("env.raw");
    pak_e2e::<&std::ffi::OsStr>(&[
        "--pakfile".as_ref(),
        image_dir.join("Pakfile").as_ref(),
        "build".as_ref(),
        "-o".as_ref(),
        img.as_ref(),
    ]);

    // Generation 2 of the same system, for the switch at the end: it
    // reaches the guest as a second disk.
    let next = work.path().join("next.sqfs");
    pak_e2e::<&std::ffi::OsStr>(&[
        "--pakfile".as_ref(),
        image_dir.join("Pakfile").as_ref(),
        "build".as_ref(),
        "--generation".as_ref(),
        next.as_ref(),
        "--number".as_ref(),
        "2".as_ref(),
    ]);

    let cfg = vm(&img, &[&next]);
    let mut m = Machine::start(&cfg, &work.path().join("console.log")).unwrap();
    m.wait_for("pak-init: switching to /sbin/init", BOOT)
        .unwrap();
    // The boot's health check prints on the console when it is done; wait
    // for it so it cannot land inside a command's output.
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    m.fail("command -v e2e-hello").unwrap();
    // The image configures its network itself ([network] absent: DHCP on
    // every Ethernet interface); QEMU's user network leases 10.0.2.15.
    common::wait_for_address(&mut m, "10.0.2.15");

    let (status, out) = m
        .execute("PAK_NO_PROGRESS=1 pak install --user e2e-hello", NET)
        .unwrap();
    assert_eq!(status, 0, "pak install --user failed:\n{out}");
    assert!(out.contains("+ e2e-hello 1.0-1"), "{out}");
    let which = m.succeed("command -v e2e-hello").unwrap();
    assert_eq!(which.trim(), "/var/lib/pak/envs/user/bin/e2e-hello");
    assert_eq!(
        m.succeed("e2e-hello").unwrap().trim(),
        "hello from the user environment, env=user"
    );
    // Shown over the system, never written into it.
    m.fail("test -e /usr/bin/e2e-hello").unwrap();

    // An ordinary user: own store under ~/.local/share/pak, a user
    // namespace for the sandbox, and /etc/profile's PATH for login shells.
    m.succeed("mkdir -p /home/alice && chown 1000:1000 /home/alice")
        .unwrap();
    let (status, out) = m
        .execute(
            "su -l alice -c 'PAK_NO_PROGRESS=1 pak install --user e2e-hello'",
            NET,
        )
        .unwrap();
    assert_eq!(status, 0, "pak install --user as alice failed:\n{out}");
    let alice = m
        .succeed("su -l alice -c 'command -v e2e-hello && e2e-hello && id -u'")
        .unwrap();
    assert_eq!(
        alice.trim(),
        "/home/alice/.local/share/pak/envs/user/bin/e2e-hello\nhello from the user environment, env=user\n1000"
    );

    // Machine::reboot, with the health check's message awaited before the
    // shell, so it is behind the console cursor either way.
    m.send("sync; reboot\n").unwrap();
    m.wait_for("pak-init: starting generation", BOOT).unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    // No network now (the image brought it up again by DHCP; take it
    // down): the lock and the store on the data partition suffice.
    m.succeed("kill $(cat /run/udhcpc.eth0.pid); ip addr flush dev eth0; ip link set eth0 down")
        .unwrap();
    m.fail("ip addr show eth0 | grep -q 10.0.2.15").unwrap();
    assert_eq!(
        m.succeed("e2e-hello").unwrap().trim(),
        "hello from the user environment, env=user"
    );
    assert!(m.succeed("pak env list").unwrap().contains("e2e-hello"));
    assert_eq!(
        m.succeed("su -l alice -c e2e-hello").unwrap().trim(),
        "hello from the user environment, env=user"
    );

    // A new system generation: environments live on the data partition,
    // so they keep working after a switch.
    let out = m
        .succeed("PAK_NO_PROGRESS=1 pak system switch /dev/vdb")
        .unwrap();
    assert!(out.contains("generation 2 written to slot b"), "{out}");
    m.send("sync; reboot\n").unwrap();
    m.wait_for("pak-init: starting generation 2 from slot b", BOOT)
        .unwrap();
    m.wait_for("pak: boot complete", BOOT).unwrap();
    m.wait_for_shell(BOOT).unwrap();
    assert!(
        m.succeed("cat /proc/cmdline")
            .unwrap()
            .contains("pak.generation=2")
    );
    assert_eq!(
        m.succeed("e2e-hello").unwrap().trim(),
        "hello from the user environment, env=user"
    );
    assert!(
        m.succeed("su -l alice -c e2e-hello")
            .unwrap()
            .contains("hello from the user environment")
    );

    m.send("poweroff\n").unwrap();
    m.wait_for_shutdown(BOOT).unwrap();
}
