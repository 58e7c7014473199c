//! Hostile sizes: trees thousands of directories deep, names of 255 bytes
//! and paths past PATH_MAX, a package of thirty thousand tiny files, one
//! that declares more than a million, a repository index of hundreds of
//! MB. pak handles each within a stated
//! peak memory, or refuses it with an error naming it: never a stack
//! overflow, never an out-of-memory kill.
//!
//! Peak memory is the child's maximum resident set, from wait4(2).

mod common;
use common::Project;
use common::bounded::{MIB, create, measured, nest, refused, source, within};

use std::io::Write;

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn deep_trees_and_long_names() {
    let p = Project::new();
    // 1500 levels: a 3000-byte path, inside PATH_MAX with the store's
    // prefix; deep enough to overflow a recursive walk's stack.
    let deep = source(&p, "deep");
    nest(&deep, "d", 1500);
    // The longest name a file system takes, twice nested.
    let long = "n".repeat(255);
    std::fs::create_dir_all(deep.join(&long)).unwrap();
    std::fs::write(deep.join(&long).join(&long), "long\n").unwrap();
    within(&p, &args(&create(&p, &deep)), 256 * MIB);
    p.index();
    p.pakfile("deep = \"*\"\n");
    within(&p, &["fetch"], 256 * MIB);
    within(&p, &["store", "verify"], 256 * MIB);
    within(&p, &["gc"], 256 * MIB);

    // Past PATH_MAX: refused with the path's name, nothing half made.
    let deeper = source(&p, "deeper");
    nest(&deeper, "dd", 2100);
    let err = refused(&p, &args(&create(&p, &deeper)), "src-deeper");
    assert!(err.contains("too long"), "{err}");
    assert!(!p.repo().join("deeper-1.0-1-any.pak").exists());
}

#[test]
fn thirty_thousand_tiny_files() {
    let p = Project::new();
    let many = source(&p, "many");
    // A hundred per directory. A million is the same code path but takes
    // many minutes on CI; pak's memory grows by about 1 KiB a file for
    // `pkg create` (each file's source path held until it is written) and
    // under 0.5 KiB for fetch, which 30k measure as well (measured: 36 and
    // 27 MiB). More than a million entries are refused: see
    // a_package_of_more_than_a_million_entries_is_refused.
    for d in 0..300 {
        let dir = many.join(format!("usr/share/many/{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("{f:02}")), format!("{d} {f}\n")).unwrap();
        }
    }
    within(&p, &args(&create(&p, &many)), 128 * MIB);
    p.index();
    p.pakfile("many = \"*\"\n");
    within(&p, &["fetch"], 128 * MIB);
    within(&p, &["store", "verify"], 128 * MIB);
}

#[test]
fn an_index_of_hundreds_of_mb_is_refused_within_its_limit() {
    let p = Project::new();
    p.package("a", "1.0-1", &[]);
    p.index();
    // Streamed to disk: the test never holds it in memory.
    let index = p.repo().join("index");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&index).unwrap());
    let line = format!("# {}\n", "x".repeat(1000));
    for _ in 0..(300 << 10) {
        f.write_all(line.as_bytes()).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    p.pakfile("a = \"*\"\n");
    let (status, err, peak) = measured(p.command(&["lock"]));
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    assert!(err.contains("larger than"), "{err}");
    // It reads at most its limit (256 MiB) before refusing.
    assert!(peak < 400 * MIB, "peak {} MiB", peak / MIB);
    eprintln!("a 300 MiB index: refused at a peak of {} MiB", peak / MIB);
}

/// An `ar` archive (a .deb) of the given members.
fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        out.extend(
            format!(
                "{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                0,
                0,
                0,
                "100644",
                data.len()
            )
            .as_bytes(),
        );
        out.extend(*data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

/// `count` directory entries, compressed: declared in a few MB, never
/// made on disk (pak refuses before it lays out a tree).
fn many_dirs_tar_gz(count: usize) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for i in 0..count {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, format!("./{i:07}/"), std::io::empty())
            .unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

#[test]
fn a_package_of_more_than_a_million_entries_is_refused() {
    let p = Project::new();
    let limit = pak::packages::package::MAX_ENTRIES;
    let control = {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        let text = b"Package: many\nVersion: 1\nArchitecture: amd64\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "./control", &text[..]).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    };
    let deb = p.path("many.deb");
    let data = many_dirs_tar_gz(limit + 1);
    std::fs::write(
        &deb,
        ar(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar.gz", &control),
            ("data.tar.gz", &data),
        ]),
    )
    .unwrap();
    let out = p.path("out");
    let (status, err, peak) = measured(p.command(&[
        "pkg",
        "import-deb",
        &deb.display().to_string(),
        "-o",
        &out.display().to_string(),
    ]));
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    assert!(
        err.contains("many.deb") && err.contains(&format!("more than the {limit}")),
        "{err}"
    );
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0);
    // What a million entries cost, at most: the figure the error states.
    let per_entry = pak::packages::package::BYTES_PER_ENTRY as i64;
    assert!(
        peak * 1024 < per_entry * limit as i64,
        "peak {} MiB",
        peak / MIB
    );
    eprintln!(
        "a .deb of {} entries: refused at a peak of {} MiB ({} bytes an entry)",
        limit + 1,
        peak / MIB,
        peak * 1024 / limit as i64
    );

    // A .pak whose bill of materials lists as many: refused from its
    // line count, before one entry is parsed.
    let mut bom = String::from("pak-bom 1\n");
    for i in 0..=limit {
        bom.push_str(&format!("d 0755 0 0 - - {i:07}\n"));
    }
    let pak = p.path("many.pak");
    let mut b = tar::Builder::new(zstd::Encoder::new(Vec::new(), 1).unwrap());
    for (name, bytes) in [
        (
            ".PAKINFO",
            &b"name = \"many\"\nversion = \"1\"\narch = \"any\"\n"[..],
        ),
        (".BOM", bom.as_bytes()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, bytes).unwrap();
    }
    std::fs::write(&pak, b.into_inner().unwrap().finish().unwrap()).unwrap();
    drop(bom);
    refused(
        &p,
        &["pkg", "verify", &pak.display().to_string()],
        &format!("has {} entries, more than the {limit}", limit + 1),
    );
}
