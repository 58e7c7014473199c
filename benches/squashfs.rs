//! squashfs benchmark: pak's writer beside mksquashfs, same tree, same
//! block size and zstd level, in the same run.
//!
//! `cargo bench --bench squashfs` extracts a set of real Debian packages
//! (a kernel, perl, python, gcc, ...) into a scratch tree, then times:
//! mksquashfs; pak cold (empty block cache); pak rebuilding after one
//! package changed (warm cache). Peak memory is each child's max RSS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PACKAGES: &[&str] = &[
    "linux-image-6.1.0-56-cloud-amd64",
    "perl-modules-5.36",
    "libpython3.11-stdlib",
    "python3.11-minimal",
    "cpp-12",
    "vim-runtime",
    "coreutils",
    "libicu72",
];

fn run_timed(mut cmd: Command) -> (f64, u64) {
    // GNU time reports the child's max RSS.
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f").arg("%e %M").arg(cmd.get_program());
    t.args(cmd.get_args());
    let start = Instant::now();
    let out = t.output().expect("/usr/bin/time (package time)");
    let wall = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("0 0");
    let kib: u64 = last
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let _ = &mut cmd;
    (wall, kib / 1024)
}

fn pack(me: &Path, tree: &Path, out: &Path, cache: &Path) -> (f64, u64) {
    let mut c = Command::new(me);
    c.arg("--pack").arg(tree).arg(out).arg(cache);
    run_timed(c)
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Child mode: pack one tree (so its memory is measured alone).
    if args.len() == 5 && args[1] == "--pack" {
        let tree = pak::image::squashfs::Tree::from_dir(Path::new(&args[2])).unwrap();
        let opts = pak::image::squashfs::Options {
            cache: Some(PathBuf::from(&args[4])),
            ..Default::default()
        };
        pak::image::squashfs::write(&tree, Path::new(&args[3]), &opts).unwrap();
        return;
    }
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sqfs-bench");
    let tree = scratch.join("tree");
    if !tree.exists() {
        let debs = scratch.join("debs");
        std::fs::create_dir_all(&debs).unwrap();
        let ok = Command::new("apt-get")
            .arg("download")
            .args(PACKAGES)
            .current_dir(&debs)
            .status()
            .unwrap();
        assert!(ok.success(), "apt-get download failed");
        for d in std::fs::read_dir(&debs).unwrap() {
            let d = d.unwrap().path();
            let name = d
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .split('_')
                .next()
                .unwrap()
                .to_string();
            let dest = tree.join(name);
            std::fs::create_dir_all(&dest).unwrap();
            assert!(
                Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(&d)
                    .arg(&dest)
                    .status()
                    .unwrap()
                    .success()
            );
        }
    }
    let du = Command::new("du")
        .args(["-sb"])
        .arg(&tree)
        .output()
        .unwrap();
    let bytes: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    println!(
        "tree: {} packages, {} MiB, block size 128 KiB, zstd level 15, 2 threads\n",
        PACKAGES.len(),
        bytes >> 20
    );

    let me = std::env::current_exe().unwrap();
    let mk_out = scratch.join("mksquashfs.sqfs");
    let _ = std::fs::remove_file(&mk_out);
    let mut mk = Command::new("mksquashfs");
    mk.arg(&tree).arg(&mk_out).args([
        "-comp",
        "zstd",
        "-Xcompression-level",
        "15",
        "-b",
        "131072",
        "-processors",
        "2",
        "-noappend",
        "-quiet",
        "-no-progress",
        "-all-root",
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
    ]);
    let (mk_t, mk_rss) = run_timed(mk);

    let cache = scratch.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let pak_out = scratch.join("pak.sqfs");
    let (cold_t, cold_rss) = pack(&me, &tree, &pak_out, &cache);
    let cold_size = size(&pak_out);

    // One package changes: its files get new content.
    let changed = tree.join("coreutils");
    for e in walk(&changed) {
        let mut data = std::fs::read(&e).unwrap();
        data.extend_from_slice(b"\nrebuilt\n");
        std::fs::write(&e, data).unwrap();
    }
    let (warm_t, warm_rss) = pack(&me, &tree, &pak_out, &cache);

    println!("{:<34} {:>9} {:>11} {:>9}", "", "wall", "size", "peak RSS");
    println!(
        "{:<34} {:>8.1}s {:>7} MiB {:>5} MiB",
        "mksquashfs",
        mk_t,
        size(&mk_out) >> 20,
        mk_rss
    );
    println!(
        "{:<34} {:>8.1}s {:>7} MiB {:>5} MiB",
        "pak, cold (empty block cache)",
        cold_t,
        cold_size >> 20,
        cold_rss
    );
    println!(
        "{:<34} {:>8.1}s {:>7} MiB {:>5} MiB",
        "pak, rebuild after one package",
        warm_t,
        size(&pak_out) >> 20,
        warm_rss
    );
    println!();
    println!(
        "pak cold / mksquashfs: time {:.2}x, size {:.3}x; rebuild / cold: {:.2}x",
        cold_t / mk_t,
        cold_size as f64 / size(&mk_out) as f64,
        warm_t / cold_t
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            out.extend(walk(&p));
        } else if md.is_file() {
            out.push(p);
        }
    }
    out
}
