//! `pak build --timings`: the table names every step, in the order a
//! build runs them, then what no step claimed and the total. The figures
//! vary from run to run; the rows do not.

mod common;

use common::{e2e_store, pak, workspace};

const ROWS: &[&str] = &[
    "resolve",
    "fetch",
    "convert",
    "extract",
    "assemble",
    "initramfs",
    "squashfs",
    "disk",
    "other",
    "total",
];

#[test]
fn build_timings_names_every_step() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        workspace().join("images/minimal/Pakfile"),
        dir.path().join("Pakfile"),
    )
    .unwrap();
    let out = pak([
        "build",
        "--timings",
        "--generation",
        "gen.sqfs",
        "--number",
        "1",
    ])
    .root(e2e_store())
    .cwd(dir.path())
    .ok();
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("step "))
        .collect();
    assert!(
        table
            .first()
            .is_some_and(|h| h.split_whitespace().eq(["step", "seconds", "share"])),
        "no timings table:\n{out}"
    );
    let names: Vec<&str> = table[1..]
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ROWS, "{out}");
    for row in &table[1..] {
        let secs: f64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(secs >= 0.0, "{row}");
    }
}

/// An unchanged rebuild is served the generation remembered in the cache
/// (every block "from the cache"), and gives the same bytes; a damaged
/// remembered generation is noticed and made again, the same bytes still.
#[test]
fn an_unchanged_rebuild_is_remembered_and_identical() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        workspace().join("images/minimal/Pakfile"),
        dir.path().join("Pakfile"),
    )
    .unwrap();
    let build = |out: &str| {
        pak(["-v", "build", "-o", out])
            .root(e2e_store())
            .cwd(dir.path())
            .ok()
    };
    build("a.raw");
    let again = build("b.raw");
    let line = again
        .lines()
        .find(|l| l.starts_with("squashfs: "))
        .unwrap_or_else(|| panic!("no squashfs figures:\n{again}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    // "squashfs: B bytes, I inodes, C of D data blocks from the cache"
    assert_eq!(words[5], words[7], "not all remembered: {line}");
    let read = |n: &str| std::fs::read(dir.path().join(n)).unwrap();
    assert!(read("a.raw") == read("b.raw"), "the rebuild differs");

    // Damage the entry just used (the newest generation in the cache).
    let cache = e2e_store().join("cache/build");
    let newest = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gen"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .expect("a remembered generation");
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[4096] ^= 0xff;
    std::fs::write(&newest, &bytes).unwrap();
    build("c.raw");
    assert!(
        read("a.raw") == read("c.raw"),
        "a damaged memo reached the image"
    );
    assert!(
        std::fs::read(&newest).ok() != Some(bytes),
        "the damaged entry is still there"
    );
}
