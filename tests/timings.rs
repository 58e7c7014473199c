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
