//! Several pak processes on one store and one root at once: a build with
//! a gc, two fetches of the same packages, an install with a gc, two builds
//! sharing the block cache. Nothing is corrupted, nothing another process
//! still needs is deleted, and whoever waits says for what and for whom.

mod common;
use common::{Package, Project};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Each pair runs this many times: the interleavings differ every time.
const ROUNDS: usize = 3;

fn many_files(name: &str, n: usize) -> Package {
    let mut p = Package::new(name, "1.0-1");
    for i in 0..n {
        p = p.file(
            &format!("usr/share/{name}/{}/f{i}", i % 7),
            format!("{name} {i}\n").repeat(1 + i % 50),
        );
    }
    p
}

/// An image project (local packages only) and an `extra/Pakfile` whose
/// environment makes garbage once removed.
fn project() -> Project {
    let p = Project::new();
    p.add(&Package::kernel("kernel"));
    p.add(&Package::boot_loader("boot-loader"));
    for name in ["a", "b", "d"] {
        p.add(&many_files(name, 300));
    }
    p.index();
    p.pakfile("pak = \"*\"\nkernel = \"*\"\nboot-loader = \"*\"\na = \"*\"\nb = \"*\"\n");
    p.write(
        "extra/Pakfile",
        "[system]\nname = \"x\"\narch = \"x86_64\"\n\n[packages]\nd = \"*\"\n\n[[repository]]\nname = \"local\"\nurl = \"../repo\"\nkey = \"../local.pub\"\n",
    );
    p.ok(&["lock"]);
    p
}

fn spawn(p: &Project, root: &Path, args: &[&str]) -> Child {
    p.pak(args)
        .root(root)
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[track_caller]
fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {text}");
    text
}

#[track_caller]
fn verify_clean(p: &Project, root: &Path) {
    let ran = p.pak(["store", "verify"]).root(root).run();
    assert!(ran.success(), "{}", ran.text());
}

fn entries(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("store"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A root where `d` is garbage: fetched for an environment since removed.
fn with_garbage(p: &Project, root: &Path) {
    p.pak(["env", "create", "tmp", "--pakfile", "extra/Pakfile"])
        .root(root)
        .ok();
    p.pak(["env", "remove", "tmp"]).root(root).ok();
    assert!(entries(root).iter().any(|e| e.starts_with("d-")));
}

fn build_args(out: &Path) -> Vec<String> {
    vec![
        "build".into(),
        "--generation".into(),
        out.display().to_string(),
        "--number".into(),
        "1".into(),
    ]
}

fn reference(p: &Project, work: &Path) -> Vec<u8> {
    let out = work.join("reference.sqfs");
    p.pak(build_args(&out))
        .root(work.join("reference-root"))
        .ok();
    std::fs::read(out).unwrap()
}

#[test]
fn builds_and_installs_race_gc_and_each_other() {
    let p = project();
    let work = tempfile::tempdir().unwrap();
    let want = reference(&p, work.path());
    for round in 0..ROUNDS {
        // A build with a gc: the gc starts while the build fetches, so
        // the build's entries are in the store but not yet rooted.
        let root = work.path().join(format!("build-gc-{round}"));
        with_garbage(&p, &root);
        let out = work.path().join(format!("build-gc-{round}.sqfs"));
        let args = build_args(&out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let build = spawn(&p, &root, &args);
        std::thread::sleep(Duration::from_millis(40 * round as u64));
        let gc = spawn(&p, &root, &["gc"]);
        finish(gc, "gc beside a build");
        finish(build, "build beside a gc");
        assert!(
            std::fs::read(&out).unwrap() == want,
            "round {round}: image differs"
        );
        verify_clean(&p, &root);
        p.pak(["gc"]).root(&root).ok();
        assert!(!entries(&root).iter().any(|e| e.starts_with("d-")));
        assert_eq!(entries(&root).len(), 5, "the build's packages stay");

        // Two fetches of the same packages into an empty store.
        let root = work.path().join(format!("fetch-fetch-{round}"));
        let one = spawn(&p, &root, &["fetch"]);
        let two = spawn(&p, &root, &["fetch"]);
        finish(one, "first fetch");
        finish(two, "second fetch");
        verify_clean(&p, &root);
        assert_eq!(entries(&root).len(), 5);

        // An install with a gc.
        let root = work.path().join(format!("install-gc-{round}"));
        with_garbage(&p, &root);
        let install = spawn(&p, &root, &["install", "--user", "d"]);
        std::thread::sleep(Duration::from_millis(30 * round as u64));
        let gc = spawn(&p, &root, &["gc"]);
        finish(gc, "gc beside an install");
        finish(install, "install beside a gc");
        verify_clean(&p, &root);
        p.pak(["gc"]).root(&root).ok();
        assert!(
            entries(&root).iter().any(|e| e.starts_with("d-")),
            "the installed package stays"
        );

        // Two builds sharing one root, so one store and one block cache.
        let root = work.path().join(format!("build-build-{round}"));
        let outs = [0, 1].map(|i| work.path().join(format!("bb-{round}-{i}.sqfs")));
        let builds: Vec<Child> = outs
            .iter()
            .map(|o| {
                let args = build_args(o);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                spawn(&p, &root, &args)
            })
            .collect();
        for b in builds {
            finish(b, "one of two builds");
        }
        for o in &outs {
            assert!(
                std::fs::read(o).unwrap() == want,
                "round {round}: image differs"
            );
        }
        verify_clean(&p, &root);
    }
}

/// Holds the lock file `path` (as another pak would) until dropped.
fn hold(path: &Path, exclusive: bool) -> std::fs::File {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    let op = if exclusive {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::LockShared
    };
    rustix::fs::flock(&f, op).unwrap();
    f
}

/// Runs pak while the lock is held; returns the first line it prints on
/// stderr while waiting, then lets it go, and returns its whole output.
fn waits(mut command: Command, lock: std::fs::File) -> (String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            tx.send(line.unwrap()).unwrap();
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("pak said nothing while it waited");
    // Still waiting: it has not finished.
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "did not wait: {first}");
    drop(lock);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "{first}\n{}", rest.join("\n"));
    (first, rest.join("\n"))
}

#[test]
fn who_waits_says_for_what() {
    let p = project();
    let root: PathBuf = p.path("root");
    let store = root.join("store");
    let me = std::process::id();

    // A fetch waits for a gc.
    let lock = hold(&store.join(".lock"), true);
    let (said, _) = waits(p.pak(["fetch"]).root(&root).command(), lock);
    assert_eq!(
        said,
        format!(
            "waiting for another pak (pid {me}) to finish gc on {}",
            store.display()
        )
    );
    verify_clean(&p, &root);

    // A gc waits for a pak using the store.
    let lock = hold(&store.join(".lock"), false);
    let (said, _) = waits(p.pak(["gc"]).root(&root).command(), lock);
    assert_eq!(
        said,
        format!(
            "waiting for another pak (pid {me}) using the store {} to finish before deleting from it",
            store.display()
        )
    );
}
