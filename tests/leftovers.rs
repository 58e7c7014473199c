//! `pak gc` collects the temporaries a pak killed halfway left behind
//! (interrupted downloads, environment creates, generations, squashfs and
//! block-cache writes), and only those: one a live process holds (its
//! creator's flock, held here by the test) stays, and so does everything
//! that merely looks alike.

mod common;
use common::Project;

use std::fs::File;
use std::path::{Path, PathBuf};

/// Holds `path`'s lock as its creator does, until dropped.
fn hold(path: &Path) -> File {
    let f = File::open(path).unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    f
}

fn file(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, "partial").unwrap();
    path.to_path_buf()
}

fn dir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path.join("bin")).unwrap();
    std::fs::write(path.join("Pakfile"), "[packages]\n").unwrap();
    path.to_path_buf()
}

/// The paths `pak gc` said it removed, in its order.
fn removed(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("removed "))
        .filter_map(|l| l.split_once(" (").map(|(p, _)| p.to_string()))
        .collect()
}

#[test]
fn gc_removes_exactly_the_dead_temporaries() {
    let p = Project::new();
    p.package("a", "1.0-1", &[]);
    p.index();
    p.pakfile("a = \"*\"\n");
    p.ok(&["fetch"]);
    let root = p.path("root");
    assert!(root.join("store").is_dir());
    let cache = root.join("cache");
    let dead = [
        file(&cache.join(".dl-k1Xw9a")),
        file(&cache.join("squashfs/ab/.tmp-Qz81pe")),
        dir(&root.join("envs/.create-dev-Yt3bq0")),
        file(&p.path(".gen-c0ffee.sqfs")),
        file(&p.path(".sqfs-9aBcDe")),
    ];
    let live = [
        file(&cache.join(".dl-live01")),
        dir(&root.join("envs/.create-dev-live02")),
        file(&p.path(".gen-live03.sqfs")),
    ];
    let held: Vec<File> = live.iter().map(|l| hold(l)).collect();
    // Look-alikes that are not pak's temporaries.
    let others = [
        file(&cache.join("x.dl-1")),
        file(&root.join("envs/creating-notes")),
        file(&p.path("gen-1.sqfs")),
        file(&cache.join("squashfs/ab/cdef0123")),
        file(&cache.join("0123abcd.pak")),
    ];
    let link = cache.join(".dl-link");
    std::os::unix::fs::symlink(&others[0], &link).unwrap();

    let out = p.ok(&["gc"]);
    // Named as gc saw them; compared by where they were.
    let place = |r: &Path| -> String {
        let abs = p.dir().join(r);
        abs.parent()
            .unwrap()
            .canonicalize()
            .unwrap()
            .join(abs.file_name().unwrap())
            .display()
            .to_string()
    };
    let mut want: Vec<String> = dead.iter().map(|d| place(d)).collect();
    want.sort();
    let mut got: Vec<String> = removed(&out).iter().map(|r| place(Path::new(r))).collect();
    got.sort();
    assert_eq!(got, want, "{out}");
    assert!(out.contains("5 leftover temporaries removed"), "{out}");
    assert!(out.contains("an interrupted download"), "{out}");
    for d in &dead {
        assert!(!d.exists(), "{} is left", d.display());
    }
    for l in live.iter().chain(&others) {
        assert!(l.exists(), "{} was removed", l.display());
    }
    assert!(link.symlink_metadata().is_ok(), "a symlink is not pak's");

    // Once their holder is gone, they are leftovers too.
    drop(held);
    let out = p.ok(&["gc"]);
    assert_eq!(removed(&out).len(), 3, "{out}");
    for l in &live {
        assert!(!l.exists(), "{} is left", l.display());
    }
    // Nothing left: gc says nothing about leftovers.
    let out = p.ok(&["gc"]);
    assert!(!out.contains("leftover"), "{out}");
}

/// A real pak killed halfway: `pak env create` stopped by SIGKILL while
/// its staged environment locks (its repository answers never), its
/// `.create-*` kept while it lives and collected once it is dead.
#[test]
fn a_killed_env_create_is_collected() {
    let p = Project::new();
    // Accepts, then never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    p.write(
        "hang.toml",
        &format!(
            "[system]\nname = \"test\"\narch = \"x86_64\"\n\n[packages]\na = \"*\"\n\n[[repository]]\nname = \"slow\"\nurl = \"http://127.0.0.1:{port}/\"\nkey = \"{}\"\n",
            p.path("local.pub").display()
        ),
    );
    let envs = p.path("root/envs");
    let mut child = p
        .command(&["--pakfile", "hang.toml", "env", "create", "dev"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let staged = || -> Vec<PathBuf> {
        std::fs::read_dir(&envs)
            .map(|rd| {
                rd.map(|e| e.unwrap().path())
                    .filter(|p| {
                        p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with(".create-")
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while staged().is_empty() {
        assert!(
            std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "pak env create staged nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Give it time to stop on the repository, past where it locks.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "it waits on the repository"
    );
    let out = p.ok(&["gc"]);
    assert!(!out.contains("leftover"), "a live create is kept: {out}");
    assert_eq!(staged().len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let out = p.ok(&["gc"]);
    assert!(out.contains("an interrupted `pak env create`"), "{out}");
    assert!(staged().is_empty());
}
