//! The fuzz targets' smoke pass in the ordinary test run: every seed pak's
//! own writers make, every kept corpus input (fuzz/corpus/TARGET) and
//! every input that once broke a reader (fuzz/regressions/TARGET) goes
//! through the same `pak::fuzzing` function the libFuzzer target calls.
//! A reader that panics on any of them fails this test, naming the file.
//! When tools/fuzz has built the libFuzzer binaries, each also runs for a
//! few seconds (sanitizers and coverage on), so that CI exercises new
//! inputs too.
//!
//! `cargo test --test fuzz_smoke -- --ignored write_seeds` writes the seeds
//! to `$PAK_FUZZ_SEEDS/TARGET/` for tools/fuzz.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use pak::fuzzing::{TARGETS, seeds};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs `f` on `data`; the panic's message if it panicked.
fn survives(f: fn(&[u8]), data: &[u8]) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| f(data))).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })
}

#[test]
fn every_seed_corpus_and_regression_input_is_survived() {
    let seeds = seeds().expect("pak's writers make the seeds");
    let mut failures = Vec::new();
    for (target, f) in TARGETS {
        let mut count = 0;
        for (t, name, data) in &seeds {
            if t == target {
                count += 1;
                if let Err(e) = survives(*f, data) {
                    failures.push(format!("{target}: seed {name}: {e}"));
                }
            }
        }
        for kind in ["corpus", "regressions"] {
            for p in inputs(&fuzz_dir().join(kind).join(target)) {
                count += 1;
                let data = std::fs::read(&p).unwrap();
                if let Err(e) = survives(*f, &data) {
                    failures.push(format!("{target}: {}: {e}", p.display()));
                }
            }
        }
        assert!(count > 0, "fuzz target {target} has no seed and no corpus");
    }
    assert!(
        failures.is_empty(),
        "readers panicked:\n{}",
        failures.join("\n")
    );
}

/// The libFuzzer binaries tools/fuzz builds, if it has.
fn fuzz_binary(target: &str) -> Option<PathBuf> {
    let p = fuzz_dir()
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target);
    p.is_file().then_some(p)
}

#[test]
fn each_libfuzzer_target_runs_briefly_when_built() {
    let built: Vec<_> = TARGETS
        .iter()
        .filter_map(|(t, _)| fuzz_binary(t).map(|b| (*t, b)))
        .collect();
    if built.is_empty() {
        eprintln!(
            "no libFuzzer binaries under fuzz/target (tools/fuzz --build makes them); corpora were replayed only"
        );
        return;
    }
    // A fixed seed and run count: the same mutations on every CI run, so a
    // crash found here is found again, not a flake; the time cap bounds
    // the slowest targets.
    let runs = std::env::var("PAK_FUZZ_SMOKE_RUNS").unwrap_or_else(|_| "20000".into());
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    for (target, bin) in built {
        let corpus = work.path().join(target);
        std::fs::create_dir_all(&corpus).unwrap();
        let artifacts = work.path().join(format!("{target}-"));
        let mut cmd = Command::new(&bin);
        cmd.arg("-seed=1")
            .arg(format!("-runs={runs}"))
            .arg("-max_total_time=4")
            .arg("-rss_limit_mb=1024")
            .arg("-malloc_limit_mb=512")
            .arg("-timeout=10")
            .arg(format!("-artifact_prefix={}", artifacts.display()))
            .arg(&corpus);
        for kind in ["corpus", "regressions"] {
            let d = fuzz_dir().join(kind).join(target);
            if d.is_dir() {
                cmd.arg(d);
            }
        }
        let out = cmd.output().unwrap();
        if !out.status.success() {
            // libFuzzer's report, without the stack frames of its own.
            let err = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = err.lines().collect();
            let said: Vec<&str> = lines
                .iter()
                .enumerate()
                .filter(|(i, l)| {
                    [
                        "panicked at",
                        "ERROR:",
                        "SUMMARY",
                        "Test unit written",
                        "pak::",
                    ]
                    .iter()
                    .any(|k| l.contains(k))
                        || (*i > 0 && lines[i - 1].contains("panicked at"))
                })
                .map(|(_, l)| *l)
                .collect();
            panic!(
                "fuzz target {target} crashed (if its binary predates the source, tools/fuzz --build):\n{}",
                said.join("\n")
            );
        }
    }
    eprintln!("libFuzzer smoke pass: {:?}", started.elapsed());
}

#[test]
#[ignore = "tools/fuzz runs it to write the seeds"]
fn write_seeds() {
    let dir =
        PathBuf::from(std::env::var("PAK_FUZZ_SEEDS").expect("PAK_FUZZ_SEEDS names a directory"));
    for (target, name, data) in seeds().unwrap() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    }
}

/// The seeds are what their readers accept, so fuzzing starts past the
/// first checks (magic, signature, checksums) instead of at them.
#[test]
fn seeds_are_accepted_by_their_readers() {
    let seeds = seeds().unwrap();
    let seed = |target: &str, name: &str| -> Vec<u8> {
        seeds
            .iter()
            .find(|(t, n, _)| *t == target && n == name)
            .unwrap_or_else(|| panic!("no seed {target}/{name}"))
            .2
            .clone()
    };
    let dir = tempfile::tempdir().unwrap();

    let pak = dir.path().join("seed.pak");
    std::fs::write(&pak, &seed("pak", "seed-zstd")[1..]).unwrap();
    let verified = pak::packages::package::verify(&pak).unwrap();
    assert!(verified.entries >= 5, "{verified:?}");

    for ext in ["gz", "xz", "zst", "tar"] {
        let out = dir.path().join(ext);
        std::fs::create_dir_all(&out).unwrap();
        let p = pak::packages::deb::convert(&seed("deb", &format!("seed-{ext}")), &out).unwrap();
        pak::packages::package::verify(&p).unwrap();
    }

    let sqfs = seed("squashfs", "seed");
    let mut r = pak::image::squashfs::Reader::open(std::io::Cursor::new(&sqfs[..]), 0).unwrap();
    assert_eq!(r.read("usr/lib/big").unwrap().len(), 20000);

    let mut esp =
        pak::disk::fat::Volume::open(pak::fuzzing::SparseDisk::parse(&seed("fat", "seed")), 0)
            .unwrap();
    assert_eq!(
        esp.read("loader/loader.conf").unwrap(),
        pak_boot::bls::LOADER_CONF.as_bytes()
    );

    let mut disk = pak::fuzzing::SparseDisk::parse(&seed("gpt", "seed")[1..]);
    assert_eq!(pak::disk::gpt::read(&mut disk).unwrap().len(), 2);

    let modinfo = pak::image::kmod::modinfo(&seed("kmod", "seed")).unwrap();
    assert_eq!(modinfo[1], ("depends".into(), "a,b".into()));
}
