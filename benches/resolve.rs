//! Resolver benchmark: pak against `apt-get install -s`, from nothing,
//! on the Debian index this host's apt holds.
//!
//! `cargo bench --bench resolve` prints, per target package, the median
//! wall time of apt's own simulated install (with an empty dpkg status so
//! it resolves from nothing) beside pak's: index load (cold: parsing the
//! lists; warm: from pak's parsed-index cache) plus resolution. It also
//! checks that pak's closure is complete and conflict-free.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use pak::state::StateDir;

const TARGETS: &[&str] = &["nginx", "postgresql", "xfce4"];
const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let scratch = tempfile::tempdir().unwrap();
    let root = StateDir::new(scratch.path().join("root"));
    let status = scratch.path().join("status");
    std::fs::write(&status, "").unwrap();

    // Cold: parse the lists (the cache is removed before each run).
    let mut cold = Vec::new();
    for _ in 0..RUNS {
        let _ = std::fs::remove_dir_all(root.cache_dir());
        let t = Instant::now();
        let c = pak::sources::apt::load("debian", &root).expect("apt lists (run apt-get update)");
        cold.push(t.elapsed());
        assert!(c.len() > 50_000, "a Debian-sized index, got {}", c.len());
        drop(c);
    }
    let mut warm = Vec::new();
    let mut cands = Vec::new();
    for _ in 0..RUNS {
        // Free the previous copy first: dropping a million strings is not
        // part of loading (a real pak run never pays it; it exits).
        drop(std::mem::take(&mut cands));
        let t = Instant::now();
        cands = pak::sources::apt::load("debian", &root).unwrap();
        warm.push(t.elapsed());
    }
    println!(
        "index: {} candidates; load cold {} (parse lists), warm {} (pak's cache)",
        cands.len(),
        ms(median(cold.clone())),
        ms(median(warm.clone()))
    );
    println!();
    println!(
        "{:<12} {:>10} {:>12} {:>14} {:>10} {:>9} {:>9}",
        "package", "apt -s", "pak resolve", "pak warm total", "ratio", "apt pkgs", "pak pkgs"
    );
    for target in TARGETS {
        let mut apt_times = Vec::new();
        let mut apt_count = 0;
        for _ in 0..RUNS {
            let t = Instant::now();
            let out = Command::new("apt-get")
                .args(["install", "-s", "--no-install-recommends", "-o"])
                .arg(format!("Dir::State::status={}", status.display()))
                .arg(target)
                .output()
                .expect("apt-get");
            apt_times.push(t.elapsed());
            apt_count = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("Inst "))
                .count();
        }
        let roots = vec![(target.to_string(), "*".to_string())];
        let mut pak_times = Vec::new();
        let mut chosen = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            chosen = pak::lock::resolve::resolve(&cands, "x86_64", &roots, &BTreeMap::new())
                .unwrap_or_else(|e| panic!("{target}: {e}"));
            pak_times.push(t.elapsed());
        }
        let infos: Vec<&pak::packages::pakinfo::PakInfo> =
            chosen.iter().map(|i| &cands[*i].info).collect();
        let problems = pak::lock::closure::check_closure(&infos);
        assert!(
            problems.is_empty(),
            "{target}: closure problems: {problems:?}"
        );
        let apt = median(apt_times);
        let resolve = median(pak_times);
        let total = median(warm.clone()) + resolve;
        println!(
            "{:<12} {:>10} {:>12} {:>14} {:>9.2}x {:>9} {:>9}",
            target,
            ms(apt),
            ms(resolve),
            ms(total),
            total.as_secs_f64() / apt.as_secs_f64(),
            apt_count,
            chosen.len()
        );
    }
    println!();
    println!(
        "ratio = pak (warm index load + resolve) / apt-get install -s; every pak closure checked complete and conflict-free."
    );
}
