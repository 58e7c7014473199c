//! Delta update benchmark: what a host fetches to go from one generation
//! to the next, for real changes, beside casync on the same files.
//!
//! `cargo bench --bench delta` builds four pairs of generations with pak
//! (locking afresh through the host's apt configuration, packages cached
//! in the e2e store) and prints, per pair:
//!
//! - full: the new generation file;
//! - changed: the compressed bytes of its squashfs blocks (data, fragment
//!   and metadata blocks) that the old generation does not have;
//! - pak: what `pak system update` fetches with the old generation as its
//!   seed, measured by running its assembly (index included);
//! - cdc: the same files cut by FastCDC (casync's 16/64/256 KiB), the
//!   alternative to cutting at squashfs blocks;
//! - casync 64K / 128K: Debian's casync with its default and 128 KiB
//!   average chunks, the bytes of chunks (as stored, compressed) missing
//!   from the old generation's store, plus the new index.
//!
//! Arguments pick pairs by name (`cargo bench --bench delta -- hello`).
//! `PAK_BENCH_BUILDER=/path/to/pak` builds the generations with another
//! pak (an older writer, to compare layouts); the rest is measured by
//! this one.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use pak::channel::chunks::{self, ChunkIndex};
use pak::channel::delta::{self, Seed};
use sha2::{Digest, Sha256};

/// A generation to build: a shipped image with packages pinned or added.
struct Variant {
    image: &'static str,
    packages: &'static [(&'static str, &'static str)],
}

struct Pair {
    name: &'static str,
    old: Variant,
    new: Variant,
}

/// The pairs; the old and new versions are the two the host's apt
/// sources offer (bookworm and its security or point updates).
fn pairs() -> Vec<Pair> {
    vec![
        Pair {
            name: "minimal + hello",
            old: Variant {
                image: "minimal",
                packages: &[],
            },
            new: Variant {
                image: "minimal",
                packages: &[("hello", "*")],
            },
        },
        Pair {
            name: "kernel ABI bump",
            old: Variant {
                image: "minimal",
                packages: &[("linux-image-cloud-amd64", "= 6.1.176-1")],
            },
            new: Variant {
                image: "minimal",
                packages: &[("linux-image-cloud-amd64", "= 6.1.192-3")],
            },
        },
        Pair {
            name: "libc6 security update",
            old: Variant {
                image: "minimal",
                packages: &[("libc6", "= 2.36-9+deb12u7")],
            },
            new: Variant {
                image: "minimal",
                packages: &[("libc6", "= 2.36-9+deb12u14")],
            },
        },
        Pair {
            name: "server, nginx update",
            old: Variant {
                image: "server",
                packages: &[("nginx", "= 1.22.1-9+deb12u9")],
            },
            new: Variant {
                image: "server",
                packages: &[("nginx", "= 1.22.1-9+deb12u11")],
            },
        },
    ]
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds `v` as generation `number` into `dir`.
fn build(v: &Variant, dir: &Path, number: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut text =
        std::fs::read_to_string(workspace().join("images").join(v.image).join("Pakfile")).unwrap();
    if !v.packages.is_empty() {
        text.push_str("\n[packages]\n");
        for (name, req) in v.packages {
            text.push_str(&format!("{name} = \"{req}\"\n"));
        }
    }
    let pakfile = dir.join("Pakfile");
    std::fs::write(&pakfile, text).unwrap();
    let _ = std::fs::remove_file(dir.join("Pakfile.lock"));
    let out = dir.join("gen.sqfs");
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-root");
    let pak = std::env::var_os("PAK_BENCH_BUILDER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pak")));
    let st = Command::new(pak)
        .arg("--root")
        .arg(&root)
        .arg("--pakfile")
        .arg(&pakfile)
        .args(["build", "--generation"])
        .arg(&out)
        .args(["--number", &number.to_string()])
        .env("PAK_NO_PROGRESS", "1")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "pak build {} failed: {}",
        pakfile.display(),
        String::from_utf8_lossy(&st.stderr)
    );
    out
}

fn hash(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// The hashes and bytes of the squashfs blocks of generation `f`.
fn blocks(f: &Path) -> Vec<([u8; 32], u64)> {
    let data = std::fs::read(f).unwrap();
    let mut cur = std::io::Cursor::new(&data);
    let b = chunks::squashfs_blocks(&mut cur, 0, data.len() as u64)
        .expect("pak's generation is pak's squashfs");
    b.into_iter()
        .map(|(o, n)| (hash(&data[o as usize..(o + n) as usize]), n))
        .collect()
}

/// Bytes of the new generation's squashfs blocks the old one lacks.
fn changed(old: &Path, new: &Path) -> u64 {
    let have: HashSet<[u8; 32]> = blocks(old).into_iter().map(|(h, _)| h).collect();
    let mut seen = HashSet::new();
    blocks(new)
        .into_iter()
        .filter(|(h, _)| !have.contains(h) && seen.insert(*h))
        .map(|(_, n)| n)
        .sum()
}

/// What pak's updater fetches with `old` as its only seed: the index,
/// then the chunks it lacks. Checks that the result is `new`.
fn pak_fetch(old: &Path, new: &Path, scratch: &Path) -> u64 {
    let len = std::fs::metadata(new).unwrap().len();
    let index = ChunkIndex::of(&mut File::open(new).unwrap(), 0, len).unwrap();
    let seed = Seed {
        name: "old".into(),
        offset: 0,
        len: std::fs::metadata(old).unwrap().len(),
    };
    let out = scratch.join("assembled");
    let _ = std::fs::remove_file(&out);
    let a = delta::assemble(
        &mut File::open(old).unwrap(),
        &[seed],
        &index,
        new.to_str().unwrap(),
        &out,
        |_| {},
    )
    .unwrap();
    assert_eq!(
        hash(&std::fs::read(&out).unwrap()),
        hash(&std::fs::read(new).unwrap()),
        "the assembled generation is the new one"
    );
    std::fs::remove_file(&out).unwrap();
    a.fetched + index.to_bytes().len() as u64
}

/// FastCDC with casync's sizes on both whole files: bytes of the new
/// file's chunks the old lacks.
fn cdc(old: &Path, new: &Path) -> u64 {
    let cut = |p: &Path| {
        let data = std::fs::read(p).unwrap();
        fastcdc::v2020::FastCDC::new(&data, 16 << 10, 64 << 10, 256 << 10)
            .map(|c| (hash(&data[c.offset..c.offset + c.length]), c.length as u64))
            .collect::<Vec<_>>()
    };
    let have: HashSet<[u8; 32]> = cut(old).into_iter().map(|(h, _)| h).collect();
    let mut seen = HashSet::new();
    cut(new)
        .into_iter()
        .filter(|(h, _)| !have.contains(h) && seen.insert(*h))
        .map(|(_, n)| n)
        .sum()
}

/// casync with average chunk size `avg`: the new index plus the chunk
/// files of its store that the old store lacks, as casync stores them.
fn casync(old: &Path, new: &Path, avg: u64, scratch: &Path) -> u64 {
    let dir = scratch.join(format!("casync-{avg}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let make = |input: &Path, name: &str| {
        let store = dir.join(format!("{name}.castr"));
        let index = dir.join(format!("{name}.caibx"));
        let st = Command::new("casync")
            .arg("make")
            .arg(format!("--chunk-size={avg}"))
            .arg(format!("--store={}", store.display()))
            .arg(&index)
            .arg(input)
            .output()
            .expect("casync (Debian's casync package; tools/packages.txt lists it)");
        assert!(
            st.status.success(),
            "casync make failed: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        (store, index)
    };
    let (old_store, _) = make(old, "old");
    let (new_store, new_index) = make(new, "new");
    let names = |store: &Path| -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for sub in std::fs::read_dir(store).unwrap() {
            let sub = sub.unwrap().path();
            if !sub.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&sub).unwrap() {
                let f = f.unwrap();
                out.push((
                    f.file_name().to_string_lossy().into_owned(),
                    f.metadata().unwrap().len(),
                ));
            }
        }
        out
    };
    let have: HashSet<String> = names(&old_store).into_iter().map(|(n, _)| n).collect();
    let missing: u64 = names(&new_store)
        .into_iter()
        .filter(|(n, _)| !have.contains(n))
        .map(|(_, s)| s)
        .sum();
    let total = missing + std::fs::metadata(&new_index).unwrap().len();
    std::fs::remove_dir_all(&dir).unwrap();
    total
}

fn kib(n: u64) -> String {
    format!("{:.0} KiB", n as f64 / 1024.0)
}

fn main() {
    // `cargo bench` passes --bench; a filter argument picks pairs.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join(
        if std::env::var_os("PAK_BENCH_BUILDER").is_some() {
            "delta-bench-builder"
        } else {
            "delta-bench"
        },
    );
    std::fs::create_dir_all(&scratch).unwrap();
    let mut rows = Vec::new();
    for (i, p) in pairs().into_iter().enumerate() {
        if !filter.is_empty() && !filter.iter().any(|f| p.name.contains(f.as_str())) {
            continue;
        }
        eprintln!("building {}", p.name);
        let dir = scratch.join(format!("pair{i}"));
        let old = build(&p.old, &dir.join("old"), 1);
        let new = build(&p.new, &dir.join("new"), 2);
        let full = std::fs::metadata(&new).unwrap().len();
        let changed = changed(&old, &new);
        let pak = pak_fetch(&old, &new, &scratch);
        let cdc = cdc(&old, &new);
        let c64 = casync(&old, &new, 64 << 10, &scratch);
        let c128 = casync(&old, &new, 128 << 10, &scratch);
        rows.push((p.name, full, changed, pak, cdc, c64, c128));
    }
    println!(
        "{:<22} {:>11} {:>11} {:>11} {:>6} {:>11} {:>11} {:>11}",
        "pair", "full", "changed", "pak", "pak/ch", "fastcdc", "casync 64K", "casync 128K"
    );
    for (name, full, changed, pak, cdc, c64, c128) in rows {
        println!(
            "{:<22} {:>11} {:>11} {:>11} {:>6.2} {:>11} {:>11} {:>11}",
            name,
            kib(full),
            kib(changed),
            kib(pak),
            pak as f64 / changed.max(1) as f64,
            kib(cdc),
            kib(c64),
            kib(c128)
        );
    }
}
