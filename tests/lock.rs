//! The lock contract, through the `pak` command: a lock changes only when
//! the user asks or the Pakfile needs it, every change is printed, and
//! `--locked` refuses any change and writes nothing.

mod common;
use common::Project;

fn lock_text(p: &Project) -> String {
    p.read("Pakfile.lock")
}

#[test]
fn lock_prints_every_change_and_moves_only_what_the_pakfile_needs() {
    let p = Project::new();
    p.package("a", "1.0-1", &[]);
    p.package("b", "1.0-1", &["a"]);
    p.index();
    p.pakfile("a = \"*\"\n");

    let out = p.ok(&["lock"]);
    assert!(out.contains("+ a 1.0-1"), "{out}");
    assert!(out.contains("wrote Pakfile.lock (1 package)"), "{out}");
    assert!(p.ok(&["lock"]).contains("Pakfile.lock is up to date"));

    // A newer a in the repository does not move a lock that still fits.
    p.package("a", "2.0-1", &[]);
    p.index();
    assert!(p.ok(&["lock"]).contains("is up to date"));
    assert!(lock_text(&p).contains("version = \"1.0-1\""));

    // The Pakfile asks for more: fetch re-locks only what that needs, and
    // says so. b needs a, which stays at its locked version.
    p.pakfile("a = \"*\"\nb = \"*\"\n");
    let out = p.ok(&["fetch"]);
    assert!(
        out.contains("Pakfile.lock no longer fits Pakfile: nothing locked satisfies b"),
        "{out}"
    );
    assert!(out.contains("+ b 1.0-1") && !out.contains("~ a"), "{out}");
    assert!(!lock_text(&p).contains("2.0-1"));

    let out = p.ok(&["update", "a"]);
    assert!(out.contains("~ a 1.0-1 -> 2.0-1"), "{out}");
    assert!(p.ok(&["update"]).contains("is up to date"));

    // Asked for no more, b leaves the lock (and so the image).
    p.pakfile("a = \"*\"\n");
    let out = p.ok(&["fetch"]);
    assert!(
        out.contains("nothing needs b any more") && out.contains("- b 1.0-1"),
        "{out}"
    );
}

/// Debian's security archive drops superseded versions within days: a lock
/// must not drift because its repository moved on.
#[test]
fn a_locked_version_the_repository_dropped_stays_locked_when_the_pakfile_changes() {
    let p = Project::new();
    p.package("a", "1.0-1", &[]);
    p.package("b", "1.0-1", &[]);
    p.index();
    p.pakfile("a = \"*\"\n");
    p.ok(&["fetch"]);
    std::fs::remove_file(p.repo().join("a-1.0-1-any.pak")).unwrap();
    p.package("a", "1.1-1", &[]);
    p.index();

    p.pakfile("a = \"*\"\nb = \"*\"\n");
    let out = p.ok(&["fetch"]);
    assert!(out.contains("+ b 1.0-1") && !out.contains("~ a"), "{out}");
    let lock = lock_text(&p);
    assert!(lock.contains("1.0-1") && !lock.contains("1.1-1"), "{lock}");
}

#[test]
fn locked_refuses_any_change_naming_it_and_writes_nothing() {
    let p = Project::new();
    p.package("a", "1.0-1", &[]);
    p.package("b", "1.0-1", &[]);
    p.index();
    p.pakfile("a = \"*\"\n");

    // No lock at all.
    let err = p.fails(&["--locked", "lock"]);
    assert!(
        err.contains("would have to change, and --locked forbids it")
            && err.contains("there is no Pakfile.lock yet")
            && err.contains("+ a 1.0-1"),
        "{err}"
    );
    assert!(!p.path("Pakfile.lock").exists());

    p.ok(&["lock"]);
    let before = lock_text(&p);
    assert!(
        p.ok(&["--locked", "fetch"])
            .contains("1 package in the store")
    );

    // A changed Pakfile, through every command that locks.
    p.pakfile("a = \"*\"\nb = \"*\"\n");
    for args in [
        &["--locked", "lock"][..],
        &["--locked", "fetch"],
        &["--locked", "update"],
        &["--locked", "build", "-o", "x.raw"],
        &["--locked", "run", "--", "true"],
    ] {
        let err = p.fails(args);
        assert!(
            err.contains("--locked forbids it") && err.contains("+ b 1.0-1"),
            "{args:?}: {err}"
        );
        assert_eq!(lock_text(&p), before, "{args:?} changed the lock");
    }
    assert!(!p.path("x.raw").exists());

    // A Pakfile nothing can satisfy: the resolver's reason, and --locked.
    p.pakfile("a = \">= 3\"\n");
    let err = p.fails(&["--locked", "lock"]);
    assert!(err.contains("--locked") && err.contains("a >= 3"), "{err}");
    assert_eq!(lock_text(&p), before);
}

#[test]
fn pak_itself_is_locked_by_version_and_another_version_is_refused() {
    let p = Project::new();
    p.package("a", "1.0-1", &[]);
    p.index();
    p.pakfile("a = \"*\"\npak = \"*\"\n");
    let version = env!("CARGO_PKG_VERSION");
    let out = p.ok(&["lock"]);
    assert!(out.contains(&format!("+ pak {version}")), "{out}");
    let lock = lock_text(&p);
    let entry = lock
        .split("[[package]]")
        .find(|e| e.contains("name = \"pak\""))
        .unwrap();
    assert!(
        entry.contains("source = \"pak\"") && !entry.contains("sha256"),
        "pak is pinned by version, not by the bytes of one build: {entry}"
    );
    p.ok(&["fetch"]);

    // A lock made by another pak.
    let other = lock.replace(
        &format!("name = \"pak\"\nversion = \"{version}\""),
        "name = \"pak\"\nversion = \"0.0.9\"",
    );
    assert_ne!(other, lock);
    p.write("Pakfile.lock", &other);
    let err = p.fails(&["fetch"]);
    assert!(
        err.contains(&format!("pins pak 0.0.9, but this is pak {version}"))
            && err.contains("pak update pak"),
        "{err}"
    );
    assert_eq!(lock_text(&p), other, "nothing was re-pinned");
    let out = p.ok(&["update", "pak"]);
    assert!(out.contains(&format!("~ pak 0.0.9 -> {version}")), "{out}");

    // A lock from an older pak, which pinned the binary's sha256.
    let old = lock_text(&p).replace(
        "source = \"pak\"",
        &format!("sha256 = \"{}\"\nsource = \"pak\"", "ab".repeat(32)),
    );
    assert_ne!(old, lock_text(&p));
    p.write("Pakfile.lock", &old);
    let err = p.fails(&["--locked", "fetch"]);
    assert!(err.contains("pinned by version"), "{err}");
    let out = p.ok(&["fetch"]);
    assert!(out.contains("~ pak"), "{out}");
    assert!(!lock_text(&p).contains(&"ab".repeat(32)));
}
