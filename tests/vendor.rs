//! Locks that keep building: a locked package its repository has dropped is
//! a clear error naming the ways out; an apt repository's `snapshot` serves
//! the exact version the mirror dropped; `pak vendor` keeps every locked
//! package in signed repositories of one's own, from which
//! `pak build --offline` makes the same image, byte for byte.
//!
//! Everything is local: the test's own packages (a stand-in kernel as a
//! Debian `.deb`, a stand-in systemd-boot and a command as `.pak`s), a fake
//! apt host under `PAK_APT_ROOT`, and an HTTP server on 127.0.0.1 inside the
//! test process that logs every request, so "no network" is checked, not
//! assumed.

mod common;
use common::{Package, Pak, Project};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KERNEL: &str = "linux-image-test";
const KERNEL_DEB: &str = "pool/main/l/linux-image-test/linux-image-test_1.0-1_amd64.deb";
/// The `Date:` of the fake suite's InRelease, and its snapshot timestamp.
const RELEASE_DATE: &str = "Sat, 10 Jun 2023 09:13:20 UTC";
const SNAPSHOT_DATE: &str = "20230610T091320Z";

/// A static file server on 127.0.0.1 that records the paths asked for.
struct Server {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop, root) = (Arc::clone(&log), Arc::clone(&stop), root.to_path_buf());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(s) = stream {
                        serve(s, &root, &log);
                    }
                }
            })
        };
        Server {
            port,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The paths asked for since the last call.
    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.log.lock().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut s: TcpStream, root: &Path, log: &Mutex<Vec<String>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 1 << 16 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = percent_decode(head.split_whitespace().nth(1).unwrap_or("/"));
    log.lock().unwrap().push(path.clone());
    let file = root.join(path.trim_start_matches('/'));
    let body = (!path.split('/').any(|c| c == "..") && file.is_file())
        .then(|| std::fs::read(&file).ok())
        .flatten();
    let (status, body) = match body {
        Some(b) => ("200 OK", b),
        None => ("404 Not Found", b"not found\n".to_vec()),
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(&body);
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A project (signed local repository, key `local`), the served tree and
/// a fake apt host around it.
struct World {
    p: Project,
    dir: PathBuf,
    www: PathBuf,
    server: Server,
}

impl World {
    fn new() -> World {
        let p = Project::with_prefix("pak-vendor-test-");
        let dir = p.dir().to_path_buf();
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        let server = Server::start(&www);
        World {
            p,
            dir,
            www,
            server,
        }
    }

    fn root(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// pak in the project directory with store root `root`, on the fake
    /// apt host.
    fn pak(&self, root: &str, args: &[&str]) -> Pak {
        self.p
            .pak(args)
            .root(self.root(root))
            .env("PAK_APT_ROOT", self.dir.join("apt"))
    }

    /// A signed repository `dir` with greet (and what `more` adds).
    fn pak_repository(&self, dir: &str, more: bool) {
        self.p.add_to(
            dir,
            &Package::new("greet", "1.0-1").arch("x86_64").file_mode(
                "usr/bin/greet",
                "#!/bin/sh\necho hello\n",
                0o755,
            ),
        );
        if more {
            self.p
                .add_to(dir, &Package::boot_loader("systemd-boot-test"));
        }
        self.index(dir);
    }

    fn index(&self, dir: &str) {
        self.p.index_dir(dir);
    }

    /// An apt host whose one source is `www/debian` over HTTP, listing the
    /// stand-in kernel, and the kernel's `.deb` on that mirror.
    fn apt_mirror(&self) {
        let deb = self.kernel_deb();
        let bytes = std::fs::read(&deb).unwrap();
        let apt = self.dir.join("apt");
        let sources = apt.join("etc/apt/sources.list.d");
        let lists = apt.join("var/lib/apt/lists");
        std::fs::create_dir_all(&sources).unwrap();
        std::fs::create_dir_all(&lists).unwrap();
        let uri = self.server.url("debian");
        std::fs::write(
            sources.join("test.sources"),
            format!("Types: deb\nURIs: {uri}\nSuites: bookworm\nComponents: main\n"),
        )
        .unwrap();
        let list = |file: &str| {
            let name = format!(
                "{}/dists/bookworm/{file}",
                uri.trim_start_matches("http://")
            );
            lists.join(name.replace('/', "_"))
        };
        std::fs::write(
            list("InRelease"),
            format!(
                "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Test\nSuite: stable\nCodename: bookworm\nDate: {RELEASE_DATE}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            list("main/binary-amd64/Packages"),
            format!(
                "Package: {KERNEL}\nVersion: 1.0-1\nArchitecture: amd64\nDescription: a stand-in kernel\nFilename: {KERNEL_DEB}\nSize: {}\nSHA256: {}\n",
                bytes.len(),
                sha256(&bytes)
            ),
        )
        .unwrap();
        put(&self.www.join("debian").join(KERNEL_DEB), &bytes);
    }

    /// A `.deb` of the stand-in kernel.
    fn kernel_deb(&self) -> PathBuf {
        let src = self.dir.join("src-kernel");
        Package::kernel(KERNEL).write_files(&src);
        put(
            &src.join("DEBIAN/control"),
            format!(
                "Package: {KERNEL}\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: pak tests <tests@pak.invalid>\nDescription: a stand-in kernel\n"
            )
            .as_bytes(),
        );
        let deb = self.dir.join("kernel.deb");
        let out = Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&src)
            .arg(&deb)
            .output()
            .expect("dpkg-deb (pak needs a Debian host)");
        assert!(
            out.status.success(),
            "dpkg-deb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        deb
    }

    fn write(&self, file: &str, text: &str) {
        self.p.write(file, text);
    }

    fn read(&self, file: &str) -> String {
        self.p.read(file)
    }
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn sha256(bytes: &[u8]) -> String {
    pak::util::fsutil::sha256_hex(bytes)
}

#[track_caller]
fn assert_has(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "{p:?} missing from:\n{text}");
    }
}

/// Names under `dir`, recursively, relative to it (empty when absent).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

/// A failed fetch leaves no store entry and no download, whole or partial.
#[track_caller]
fn assert_nothing_kept(root: &Path) {
    let store: Vec<String> = files_under(&root.join("store"))
        .into_iter()
        .filter(|f| !f.contains('/') && !f.starts_with('.'))
        .collect();
    assert!(store.is_empty(), "store entries left: {store:?}");
    let cached = files_under(&root.join("cache/pkgs"));
    assert!(cached.is_empty(), "downloads left: {cached:?}");
}

const GREET_PAK: &str = "greet-1.0-1-x86_64.pak";

#[test]
fn a_pak_package_gone_from_its_repository_is_a_clear_error() {
    let w = World::new();
    w.pak_repository("www/repo", false);
    w.write(
        "Pakfile",
        &format!(
            "[system]\nname = \"t\"\n[packages]\ngreet = \"*\"\n[[repository]]\nname = \"web\"\nurl = \"{}\"\nkey = \"local.pub\"\n",
            w.server.url("repo")
        ),
    );
    w.pak("r1", &["lock"]).ok();
    let lock = w.read("Pakfile.lock");
    let moved = w.dir.join(GREET_PAK);
    std::fs::rename(w.www.join("repo").join(GREET_PAK), &moved).unwrap();

    // The file is gone but the index still lists it.
    w.server.take_log();
    let e = w.pak("r2", &["fetch"]).fails();
    assert_has(
        &e,
        &[
            "package greet 1.0-1 from repository \"web\" can no longer be downloaded",
            "index still lists it",
            "HTTP 404",
            "`pak update greet`",
            "`pak vendor DIR`",
        ],
    );
    assert!(
        !e.contains("snapshot"),
        "no snapshot for pak repositories: {e}"
    );
    assert_nothing_kept(&w.root("r2"));

    // The index no longer lists it (the file is back, unlisted): refused
    // without downloading it.
    w.index("www/repo");
    std::fs::rename(&moved, w.www.join("repo").join(GREET_PAK)).unwrap();
    w.server.take_log();
    let e = w.pak("r2", &["fetch"]).fails();
    assert_has(
        &e,
        &[
            "package greet 1.0-1 from repository \"web\"",
            &format!("index no longer lists {GREET_PAK}"),
            "`pak update greet`",
        ],
    );
    let asked = w.server.take_log();
    assert!(
        !asked.iter().any(|p| p.ends_with(".pak")),
        "downloaded an unlisted file: {asked:?}"
    );
    assert_nothing_kept(&w.root("r2"));
    assert_eq!(
        w.read("Pakfile.lock"),
        lock,
        "a failed fetch keeps the lock"
    );

    // --offline: refused before any request, naming what is missing.
    w.index("www/repo");
    let e = w.pak("r3", &["--offline", "fetch"]).fails();
    assert_has(
        &e,
        &[
            "package greet 1.0-1 from repository \"web\"",
            "--offline is on",
            &w.server.url("repo"),
        ],
    );
    assert_eq!(
        w.server.take_log(),
        Vec::<String>::new(),
        "no request offline"
    );
    assert_nothing_kept(&w.root("r3"));
    // What the cache holds still serves offline.
    w.pak("r3", &["fetch"]).ok();
    std::fs::remove_dir_all(w.root("r3").join("store")).unwrap();
    w.server.take_log();
    w.pak("r3", &["--offline", "fetch"]).ok();
    assert_eq!(w.server.take_log(), Vec::<String>::new());
}

#[test]
fn a_debian_package_the_mirror_dropped_comes_from_the_snapshot() {
    let w = World::new();
    w.apt_mirror();
    let pakfile = format!(
        "[system]\nname = \"t\"\n[packages]\n{KERNEL} = \"*\"\n[[repository]]\nname = \"debian\"\nkind = \"apt\"\n"
    );
    w.write("Pakfile", &pakfile);
    w.pak("r1", &["lock"]).ok();
    let lock = w.read("Pakfile.lock");
    assert_has(
        &lock,
        &[
            &format!("location = \"bookworm/{KERNEL_DEB}\""),
            &format!("archive_date = \"{SNAPSHOT_DATE}\""),
        ],
    );

    // The mirror dropped it.
    let deb = w.www.join("debian").join(KERNEL_DEB);
    let bytes = std::fs::read(&deb).unwrap();
    std::fs::remove_file(&deb).unwrap();
    let e = w.pak("r2", &["fetch"]).fails();
    assert_has(
        &e,
        &[
            &format!(
                "package {KERNEL} 1.0-1 from repository \"debian\" can no longer be downloaded"
            ),
            "the mirror no longer has it",
            "HTTP 404",
            &format!("`pak update {KERNEL}`"),
            "`pak vendor DIR`",
            "`snapshot = \"URL\"` on [[repository]] \"debian\"",
            &format!("URL/<archive>/{SNAPSHOT_DATE}/pool/"),
        ],
    );
    assert_nothing_kept(&w.root("r2"));

    // A snapshot that lacks it too.
    w.write(
        "Pakfile",
        &format!("{pakfile}snapshot = \"{}\"\n", w.server.url("snapshot")),
    );
    w.server.take_log();
    let e = w.pak("r2", &["fetch"]).fails();
    assert_has(&e, &["nor does the snapshot", "did not have it either"]);
    let snapshot_path = format!("/snapshot/debian/{SNAPSHOT_DATE}/{KERNEL_DEB}");
    assert_eq!(
        w.server.take_log(),
        vec![format!("/debian/{KERNEL_DEB}"), snapshot_path.clone()],
        "the mirror first, then the snapshot of the lock's date"
    );
    assert_nothing_kept(&w.root("r2"));

    // The snapshot has it: fetched, and nothing else asked.
    put(&w.www.join(&snapshot_path[1..]), &bytes);
    let out = w.pak("r2", &["fetch"]).ok();
    assert!(out.contains("1 package in the store"), "{out}");
    assert_eq!(
        w.server.take_log(),
        vec![format!("/debian/{KERNEL_DEB}"), snapshot_path]
    );
    assert_eq!(w.read("Pakfile.lock"), lock, "the lock is kept as it was");
}

#[test]
fn a_vendored_copy_builds_the_same_image_offline() {
    let w = World::new();
    w.apt_mirror();
    w.pak_repository("repo", true);
    let packages = format!(
        "[system]\nname = \"vendored\"\n[packages]\npak = \"*\"\n{KERNEL} = \"*\"\nsystemd-boot-test = \"*\"\ngreet = \"*\"\n[image]\nsize = \"512MiB\"\n"
    );
    w.write(
        "Pakfile",
        &format!(
            "{packages}[[repository]]\nname = \"debian\"\nkind = \"apt\"\n[[repository]]\nname = \"local\"\nurl = \"repo\"\nkey = \"local.pub\"\n"
        ),
    );
    w.pak("r1", &["build", "-o", "a.raw"]).ok();

    let snippet = w.pak("r1", &["vendor", "vendor"]).ok();
    assert_has(
        &snippet,
        &[
            "# vendored 3 packages into",
            "signed with a new key",
            "#   debian: 1 package\n",
            "#   local: 2 packages\n",
            "# not vendored: pak ",
            "builder's own binary",
            "[[repository]]\nname = \"debian\"\nkind = \"apt\"\nmirror = \"vendor/debian\"\n",
            "[[repository]]\nname = \"local\"\nkind = \"pak\"\nurl = \"repo\"\nkey = \"local.pub\"\nmirror = \"vendor/local\"\n",
        ],
    );
    // The artifacts exactly as downloaded, at their locked locations.
    let vendored_deb = w.dir.join("vendor/debian/bookworm").join(KERNEL_DEB);
    assert_eq!(
        std::fs::read(&vendored_deb).unwrap(),
        std::fs::read(w.www.join("debian").join(KERNEL_DEB)).unwrap()
    );
    assert_eq!(
        std::fs::read(w.dir.join("vendor/local").join(GREET_PAK)).unwrap(),
        std::fs::read(w.dir.join("repo").join(GREET_PAK)).unwrap()
    );
    let index = std::fs::read_to_string(w.dir.join("vendor/debian/index")).unwrap();
    assert_has(&index, &["format = 2", "format = \"deb\"", SNAPSHOT_DATE]);
    assert!(
        std::fs::read_to_string(w.dir.join("vendor/local/index"))
            .unwrap()
            .contains("format = 1"),
        "a repository of .pak files keeps index format 1"
    );

    // The same Pakfile with the snippet as its repositories (mirrors
    // added), and the same lock: built offline into another store, with the
    // original local repository gone, nothing asked of the network.
    w.write("Vendored", &format!("{packages}{snippet}"));
    std::fs::copy(w.dir.join("Pakfile.lock"), w.dir.join("Vendored.lock")).unwrap();
    std::fs::rename(w.dir.join("repo"), w.dir.join("repo.away")).unwrap();
    w.server.take_log();
    w.pak(
        "r2",
        &["--offline", "--pakfile", "Vendored", "build", "-o", "b.raw"],
    )
    .ok();
    assert_eq!(w.server.take_log(), Vec::<String>::new(), "no request");
    std::fs::rename(w.dir.join("repo.away"), w.dir.join("repo")).unwrap();
    assert_eq!(w.read("Vendored.lock"), w.read("Pakfile.lock"));
    let same = Command::new("cmp")
        .arg(w.dir.join("a.raw"))
        .arg(w.dir.join("b.raw"))
        .status()
        .unwrap();
    assert!(
        same.success(),
        "the vendored build differs from the original"
    );

    // The copies are signed repositories in their own right: resolving
    // anew from them alone gives the same lock, each package keeping its
    // identity, archive date included.
    w.write(
        "Direct",
        &format!(
            "{packages}[[repository]]\nname = \"debian\"\nurl = \"vendor/debian\"\nkey = \"vendor/vendor.pub\"\n[[repository]]\nname = \"local\"\nurl = \"vendor/local\"\nkey = \"vendor/vendor.pub\"\n"
        ),
    );
    w.pak("r2", &["--offline", "--pakfile", "Direct", "update"])
        .ok();
    assert_eq!(w.read("Direct.lock"), w.read("Pakfile.lock"));

    // Vendoring again signs with the same key, the next index version.
    let again = w.pak("r1", &["vendor", "vendor"]).ok();
    assert!(
        again.contains("signed with") && !again.contains("new key"),
        "{again}"
    );
    assert!(
        std::fs::read_to_string(w.dir.join("vendor/debian/index"))
            .unwrap()
            .contains("version = 2")
    );

    // With a given key and SOURCE_DATE_EPOCH, the copy is the same bytes
    // and modes whatever the umask, and its indexes are signed with it.
    let mut trees = Vec::new();
    for (dir, umask) in [("v1", "022"), ("v2", "077")] {
        let text = w
            .pak("r1", &["vendor", dir, "--key", "local.key"])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .umask(umask)
            .ok();
        assert!(
            text.contains(&format!("mirror = \"{dir}/local\"")),
            "{text}"
        );
        let local = pak::sources::key::PublicKey::from_pakfile_field("local.pub", &w.dir).unwrap();
        for repo in ["debian", "local"] {
            let at = w.dir.join(dir).join(repo);
            let index = std::fs::read(at.join("index")).unwrap();
            let sig = std::fs::read_to_string(at.join("index.sig")).unwrap();
            local.verify(&index, &sig).unwrap();
        }
        assert!(!w.dir.join(dir).join("vendor.key").exists());
        trees.push(tree_of(&w.dir.join(dir)));
    }
    assert_eq!(trees[0], trees[1]);
    assert!(
        trees[0]
            .iter()
            .any(|(f, mode, _)| f.ends_with("/index") && *mode == 0o644)
    );
}

/// Every path below `dir` with its mode and content's sha256 (empty for
/// directories).
fn tree_of(dir: &Path) -> Vec<(String, u32, String)> {
    use std::os::unix::fs::PermissionsExt;
    files_under(dir)
        .into_iter()
        .map(|f| {
            let p = dir.join(&f);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            let content = if p.is_dir() {
                String::new()
            } else {
                sha256(&std::fs::read(&p).unwrap())
            };
            (f, mode, content)
        })
        .collect()
}
