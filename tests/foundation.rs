//! Packages, signed repositories, the resolver, the lock and the store,
//! driven through the `pak` command as a user would.

mod common;
use common::{Package, Project, pak};

use std::path::Path;
use std::process::Command;

/// A signed repository with hello 1.0 and 2.0 (needing cmd:sh) and a
/// shell, and a Pakfile asking for hello >= 1.0.
fn hello_project() -> Project {
    let p = Project::new();
    for version in ["1.0-1", "2.0-1"] {
        let n = &version[..1];
        p.add(
            &Package::new("hello", version)
                .arch("x86_64")
                .requires(&["cmd:sh"])
                .file("usr/bin/hello", format!("#!/bin/sh\necho hello {n}\n")),
        );
    }
    p.add(
        &Package::new("tinysh", "1.0")
            .arch("x86_64")
            .provides(&["cmd:sh"])
            .file("bin/sh", "shell"),
    );
    p.index();
    p.pakfile("hello = \">= 1.0\"\n");
    p
}

fn store_entries(root: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(root.join("store")) else {
        return vec![];
    };
    let mut v: Vec<String> = rd
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

#[test]
fn lock_fetch_update_from_a_signed_repository() {
    let p = hello_project();
    let out = p.ok(&["lock"]);
    assert!(
        out.contains("+ hello 2.0-1") && out.contains("+ tinysh 1.0"),
        "{out}"
    );
    let lock = p.read("Pakfile.lock");
    assert!(
        lock.contains("sha256 = ") && lock.contains("source = \"local\""),
        "{lock}"
    );
    // A lock that still fits is kept as is.
    assert!(p.ok(&["lock"]).contains("up to date"));
    p.ok(&["fetch"]);
    let root = p.path("root");
    let entries = store_entries(&root);
    assert_eq!(entries.len(), 2, "hello 2.0-1 and tinysh: {entries:?}");
    assert!(p.ok(&["owns", "/usr/bin/hello"]).contains("hello 2.0-1"));
    assert!(p.ok(&["list"]).contains("tinysh"));
    assert!(p.ok(&["search", "hel"]).starts_with("hello"));
    // Pinning lower re-resolves; gc then drops what the lock no longer needs.
    p.write("Pakfile", &p.read("Pakfile").replace(">= 1.0", "< 2"));
    assert!(p.ok(&["lock"]).contains("~ hello 2.0-1 -> 1.0-1"));
    p.ok(&["fetch"]);
    let gc = p.ok(&["gc"]);
    assert!(gc.contains("hello-2.0-1"), "{gc}");
    assert_eq!(store_entries(&root).len(), 2);
}

#[test]
fn tampered_or_stale_repositories_are_refused() {
    let p = hello_project();
    let d = p.dir();
    let at = |root: &str, args: &[&str]| p.pak(args).root(d.join(root));
    // A package changed after indexing: download refused, store untouched.
    at("root1", &["lock"]).ok();
    let hello = d.join("repo/hello-2.0-1-x86_64.pak");
    let mut bytes = std::fs::read(&hello).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&hello, &bytes).unwrap();
    let e = at("root2", &["fetch"]).fails();
    assert!(e.contains("sha256") && e.contains("hello"), "{e}");
    assert!(
        store_entries(&d.join("root2"))
            .iter()
            .all(|k| !k.starts_with("hello"))
    );

    // Tampered index.
    let index = p.read("repo/index");
    p.write(
        "repo/index",
        &index
            .replace("hello 1", "hello X")
            .replace("version = 1", "version = 9"),
    );
    let e = at("root3", &["update"]).fails();
    assert!(e.contains("signature"), "{e}");
    p.write("repo/index", &index);

    // Unsigned.
    let sig = p.read("repo/index.sig");
    std::fs::remove_file(d.join("repo/index.sig")).unwrap();
    assert!(at("root3", &["update"]).fails().contains("no index.sig"));
    p.write("repo/index.sig", &sig);

    // Expired.
    let index_with = |more: &[&str]| {
        at("root3", &["repo", "index", "repo", "--key", "local.key"])
            .args(more)
            .ok()
    };
    index_with(&["--expires-in", "0"]);
    assert!(at("root3", &["update"]).fails().contains("expired"));

    // Older than one already seen.
    index_with(&["--version", "7"]);
    at("root3", &["update"]).ok();
    index_with(&["--version", "5"]);
    assert!(
        at("root3", &["update"])
            .fails()
            .contains("older than version 7")
    );
}

#[test]
fn bad_inputs_get_clear_errors() {
    let p = hello_project();
    p.write("Bad", "[system]\nname = \"x\"\nprofiles = [\"base\"\n");
    let e = p.fails(&["--pakfile", "Bad", "lock"]);
    assert!(e.contains("line 3") && e.contains("Bad"), "{e}");
    let pakfile = p.read("Pakfile");
    p.write("Unknown", &pakfile.replace("hello = ", "helo = "));
    assert!(
        p.fails(&["--pakfile", "Unknown", "lock"])
            .contains("did you mean hello")
    );
    p.write("Unsat", &pakfile.replace(">= 1.0", ">= 3"));
    let e = p.fails(&["--pakfile", "Unsat", "lock"]);
    assert!(
        e.contains("cannot all be met") && e.contains("hello"),
        "{e}"
    );
    assert!(!p.path("Unsat.lock").exists(), "no lock written on failure");
    assert!(
        p.fails(&["--pakfile", "Missing", "lock"])
            .contains("pak init")
    );
}

#[test]
fn lock_over_http() {
    let p = hello_project();
    let d = p.dir();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(d.join("repo"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 serves the repository");
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    p.write(
        "Http",
        &p.read("Pakfile")
            .replace("url = \"repo\"", &format!("url = \"{url}\"")),
    );
    let root = d.join("root-http");
    let res = p.pak(["--pakfile", "Http", "fetch"]).root(&root).run();
    let _ = server.kill();
    let _ = server.wait();
    res.ok();
    assert_eq!(store_entries(&root).len(), 2);
}

#[test]
fn import_a_real_debian_package() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let dl = Command::new("apt-get")
        .args(["download", "-q", "busybox-static"])
        .current_dir(w)
        .output()
        .unwrap();
    if !dl.status.success() {
        eprintln!(
            "skipping: apt cannot download busybox-static here: {}",
            String::from_utf8_lossy(&dl.stderr)
        );
        return;
    }
    let deb = std::fs::read_dir(w)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap();
    let run = |args: &[&str], file: &Path| pak(args).arg(file).cwd(w).root(w.join("root"));
    let out = run(&["pkg", "import-deb"], &deb).args(["-o", "out"]).ok();
    let pakfile = w.join(out.trim());
    let info = run(&["pkg", "info"], &pakfile).ok();
    assert!(
        info.contains("name = \"busybox-static\"") && info.contains("arch = \"x86_64\""),
        "{info}"
    );
    run(&["pkg", "verify"], &pakfile).ok();
    // The payload matches what dpkg itself extracts.
    let x = w.join("x");
    assert!(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&x)
            .status()
            .unwrap()
            .success()
    );
    let listing = Command::new("tar")
        .args(["--zstd", "-tf"])
        .arg(&pakfile)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.starts_with(".PAKINFO\n.BOM\n"), "{listing}");
    let ours = Command::new("tar")
        .args(["--zstd", "-xOf"])
        .arg(&pakfile)
        .arg("bin/busybox")
        .output()
        .unwrap()
        .stdout;
    assert_eq!(ours, std::fs::read(x.join("bin/busybox")).unwrap());
}
