//! Packages, signed repositories, the resolver, the lock and the store,
//! driven through the `pak` command as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pak(dir: &Path, root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pak"))
        .current_dir(dir)
        .arg("--root")
        .arg(root)
        .args(args)
        .env("PAK_NO_PROGRESS", "1")
        .output()
        .expect("run pak")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "pak failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: Output) -> String {
    assert!(
        !out.status.success(),
        "pak should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn package(work: &Path, name: &str, version: &str, extra: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = work.join(format!("src-{name}-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".PAKINFO"),
        format!("name = \"{name}\"\nversion = \"{version}\"\narch = \"x86_64\"\n{extra}"),
    )
    .unwrap();
    for (path, content) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

struct Repo {
    work: tempfile::TempDir,
}

impl Repo {
    /// A signed repository with hello 1.0 and 2.0 (needing cmd:sh) and a shell.
    fn new() -> Repo {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        let root = w.join("root");
        std::fs::create_dir_all(w.join("repo")).unwrap();
        ok(pak(w, &root, &["key", "generate", "local"]));
        for (name, version, extra, files) in [
            (
                "hello",
                "1.0-1",
                "requires = [\"cmd:sh\"]\n",
                vec![("usr/bin/hello", "#!/bin/sh\necho hello 1\n")],
            ),
            (
                "hello",
                "2.0-1",
                "requires = [\"cmd:sh\"]\n",
                vec![("usr/bin/hello", "#!/bin/sh\necho hello 2\n")],
            ),
            (
                "tinysh",
                "1.0",
                "provides = [\"cmd:sh\"]\n",
                vec![("bin/sh", "shell")],
            ),
        ] {
            let src = package(w, name, version, extra, &files);
            ok(pak(
                w,
                &root,
                &["pkg", "create", src.to_str().unwrap(), "-o", "repo"],
            ));
        }
        ok(pak(
            w,
            &root,
            &["repo", "index", "repo", "--key", "local.key"],
        ));
        std::fs::write(
            w.join("Pakfile"),
            "[system]\nname = \"t\"\n[packages]\nhello = \">= 1.0\"\n[[repository]]\nname = \"local\"\nurl = \"repo\"\nkey = \"local.pub\"\n",
        )
        .unwrap();
        Repo { work }
    }

    fn dir(&self) -> &Path {
        self.work.path()
    }
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
    let r = Repo::new();
    let root = r.dir().join("root");
    let out = ok(pak(r.dir(), &root, &["lock"]));
    assert!(
        out.contains("+ hello 2.0-1") && out.contains("+ tinysh 1.0"),
        "{out}"
    );
    let lock = std::fs::read_to_string(r.dir().join("Pakfile.lock")).unwrap();
    assert!(
        lock.contains("sha256 = ") && lock.contains("source = \"local\""),
        "{lock}"
    );
    // A lock that still fits is kept as is.
    assert!(ok(pak(r.dir(), &root, &["lock"])).contains("up to date"));
    ok(pak(r.dir(), &root, &["fetch"]));
    let entries = store_entries(&root);
    assert_eq!(entries.len(), 2, "hello 2.0-1 and tinysh: {entries:?}");
    assert!(ok(pak(r.dir(), &root, &["owns", "/usr/bin/hello"])).contains("hello 2.0-1"));
    assert!(ok(pak(r.dir(), &root, &["list"])).contains("tinysh"));
    assert!(ok(pak(r.dir(), &root, &["search", "hel"])).starts_with("hello"));
    // Pinning lower re-resolves; gc then drops what the lock no longer needs.
    let pakfile = std::fs::read_to_string(r.dir().join("Pakfile")).unwrap();
    std::fs::write(r.dir().join("Pakfile"), pakfile.replace(">= 1.0", "< 2")).unwrap();
    assert!(ok(pak(r.dir(), &root, &["lock"])).contains("~ hello 2.0-1 -> 1.0-1"));
    ok(pak(r.dir(), &root, &["fetch"]));
    let gc = ok(pak(r.dir(), &root, &["gc"]));
    assert!(gc.contains("hello-2.0-1"), "{gc}");
    assert_eq!(store_entries(&root).len(), 2);
}

#[test]
fn tampered_or_stale_repositories_are_refused() {
    let r = Repo::new();
    let d = r.dir();
    // A package changed after indexing: download refused, store untouched.
    ok(pak(d, &d.join("root1"), &["lock"]));
    let hello = d.join("repo/hello-2.0-1-x86_64.pak");
    let mut bytes = std::fs::read(&hello).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&hello, &bytes).unwrap();
    let e = err(pak(d, &d.join("root2"), &["fetch"]));
    assert!(e.contains("sha256") && e.contains("hello"), "{e}");
    assert!(
        store_entries(&d.join("root2"))
            .iter()
            .all(|k| !k.starts_with("hello"))
    );

    // Tampered index.
    let index = std::fs::read_to_string(d.join("repo/index")).unwrap();
    std::fs::write(
        d.join("repo/index"),
        index
            .replace("hello 1", "hello X")
            .replace("version = 1", "version = 9"),
    )
    .unwrap();
    let e = err(pak(d, &d.join("root3"), &["update"]));
    assert!(e.contains("signature"), "{e}");
    std::fs::write(d.join("repo/index"), &index).unwrap();

    // Unsigned.
    let sig = std::fs::read(d.join("repo/index.sig")).unwrap();
    std::fs::remove_file(d.join("repo/index.sig")).unwrap();
    assert!(err(pak(d, &d.join("root3"), &["update"])).contains("no index.sig"));
    std::fs::write(d.join("repo/index.sig"), sig).unwrap();

    // Expired.
    ok(pak(
        d,
        &d.join("root3"),
        &[
            "repo",
            "index",
            "repo",
            "--key",
            "local.key",
            "--expires-in",
            "0",
        ],
    ));
    assert!(err(pak(d, &d.join("root3"), &["update"])).contains("expired"));

    // Older than one already seen.
    ok(pak(
        d,
        &d.join("root3"),
        &[
            "repo",
            "index",
            "repo",
            "--key",
            "local.key",
            "--version",
            "7",
        ],
    ));
    ok(pak(d, &d.join("root3"), &["update"]));
    ok(pak(
        d,
        &d.join("root3"),
        &[
            "repo",
            "index",
            "repo",
            "--key",
            "local.key",
            "--version",
            "5",
        ],
    ));
    assert!(err(pak(d, &d.join("root3"), &["update"])).contains("older than version 7"));
}

#[test]
fn bad_inputs_get_clear_errors() {
    let r = Repo::new();
    let d = r.dir();
    let root = d.join("root");
    std::fs::write(
        d.join("Bad"),
        "[system]\nname = \"x\"\nprofiles = [\"base\"\n",
    )
    .unwrap();
    let e = err(pak(d, &root, &["--pakfile", "Bad", "lock"]));
    assert!(e.contains("line 3") && e.contains("Bad"), "{e}");
    let pakfile = std::fs::read_to_string(d.join("Pakfile")).unwrap();
    std::fs::write(d.join("Unknown"), pakfile.replace("hello = ", "helo = ")).unwrap();
    assert!(err(pak(d, &root, &["--pakfile", "Unknown", "lock"])).contains("did you mean hello"));
    std::fs::write(d.join("Unsat"), pakfile.replace(">= 1.0", ">= 3")).unwrap();
    let e = err(pak(d, &root, &["--pakfile", "Unsat", "lock"]));
    assert!(
        e.contains("cannot all be met") && e.contains("hello"),
        "{e}"
    );
    assert!(!d.join("Unsat.lock").exists(), "no lock written on failure");
    assert!(err(pak(d, &root, &["--pakfile", "Missing", "lock"])).contains("pak init"));
}

#[test]
fn lock_over_http() {
    let r = Repo::new();
    let d = r.dir();
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
    let pakfile = std::fs::read_to_string(d.join("Pakfile")).unwrap();
    std::fs::write(
        d.join("Http"),
        pakfile.replace("url = \"repo\"", &format!("url = \"{url}\"")),
    )
    .unwrap();
    let root = d.join("root-http");
    let res = pak(d, &root, &["--pakfile", "Http", "fetch"]);
    let _ = server.kill();
    let _ = server.wait();
    ok(res);
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
    let root = w.join("root");
    let out = pak(
        w,
        &root,
        &["pkg", "import-deb", deb.to_str().unwrap(), "-o", "out"],
    );
    let pakfile = w.join(ok(out).trim());
    let info = ok(pak(w, &root, &["pkg", "info", pakfile.to_str().unwrap()]));
    assert!(
        info.contains("name = \"busybox-static\"") && info.contains("arch = \"x86_64\""),
        "{info}"
    );
    ok(pak(w, &root, &["pkg", "verify", pakfile.to_str().unwrap()]));
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
