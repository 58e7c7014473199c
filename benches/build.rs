//! How fast `pak build` is, beside what standard tools take for the same
//! job, measured in one run so load on a shared machine hits both alike.
//!
//! `cargo bench --bench build` (`-- --runs N`, default 3; `-- --server`
//! adds one cold build of `images/server` for its peak memory) prints, for
//! each case, the median wall time over N rounds, the peak RSS of its
//! processes, and pak's ratio to the reference:
//!
//! - `images/minimal` from an empty store, the `.deb`s already downloaded:
//!   `pak build` against a hand pipeline of standard tools on the same
//!   `.deb`s (`dpkg-deb -x`, `mksquashfs` zstd-15 on 2 threads, `sgdisk`,
//!   `mkfs.vfat` + `mcopy`, `dd`; no initramfs, no ld.so cache, no
//!   accounts, nothing reproducible).
//! - An unchanged rebuild of `images/minimal` (no reference).
//! - Packing Debian's generic kernel package (unpacked with `dpkg-deb -x`)
//!   as squashfs: pak's writer against `mksquashfs`, same block size, zstd
//!   level and thread count, no block cache; with the sizes of both.
//!
//! Cases run round-robin, one of each per round. The data is the bench's
//! own: it locks and fetches both projects into a root under the target
//! directory on its first run (downloads from Debian), then reuses it.
//! Peak RSS is each child's `ru_maxrss` from `wait4`; for a pipeline, the
//! largest of its processes.
//!
//! A benchmark and not a `pak` subcommand: it needs reference tools pak
//! must never depend on, and it measures pak rather than serving a user.
//!
//! The benchmark binary doubles as the squashfs packer (`--pack TREE OUT`),
//! so pak's writer runs in a process of its own whose memory is measured
//! alone.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LEVEL: i32 = 15;
const BLOCK: u32 = 128 * 1024;
const THREADS: usize = 2;

const KERNEL_PAKFILE: &str = r#"[system]
name = "kernel-bench"
arch = "x86_64"

[[repository]]
name = "debian"
kind = "apt"

[packages]
linux-image-amd64 = "*"
"#;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--pack") {
        pack(Path::new(&args[1]), Path::new(&args[2]));
        return;
    }
    // `cargo test --all-targets` runs benches without --bench: nothing
    // to prove there that the real run does not, and it costs minutes.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("--runs N"))
        .unwrap_or(3);
    let server = args.iter().any(|a| a == "--server");
    bench(runs, server);
}

/// Child mode: pak's squashfs writer on a directory, as `pak build` calls
/// it (no block cache: a cold pack).
fn pack(tree: &Path, out: &Path) {
    let tree = pak::image::squashfs::Tree::from_dir(tree).expect("read tree");
    let opts = pak::image::squashfs::Options {
        block_size: BLOCK,
        level: LEVEL,
        threads: THREADS,
        cache: None,
        ..Default::default()
    };
    pak::image::squashfs::write(&tree, out, &opts).expect("pack");
}

/// Wall time and peak RSS (bytes) of some processes run one after another.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    wall: Duration,
    /// User plus system time: less moved by other load than wall time.
    cpu: Duration,
    rss: u64,
}

/// Runs `cmd` to success; its wall time and peak RSS.
// The child is reaped by `wait4`, which std does not offer, and which
// alone gives this child's own rusage.
#[allow(clippy::zombie_processes)]
fn run(cmd: &mut Command) -> Sample {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()));
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        use std::io::Read;
        let _ = s.read_to_string(&mut err);
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our unreaped child; both pointers are live.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(
        pid,
        child.id() as i32,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    let status = std::process::ExitStatus::from_raw(status);
    assert!(status.success(), "{cmd:?}: {status}\n{err}");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Sample {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        rss: usage.ru_maxrss as u64 * 1024,
    }
}

/// Several processes as one case: wall times add, peak RSS is the largest.
fn pipeline(cmds: &mut [Command]) -> Sample {
    let mut total = Sample::default();
    for c in cmds {
        let s = run(c);
        total.wall += s.wall;
        total.cpu += s.cpu;
        total.rss = total.rss.max(s.rss);
    }
    total
}

fn pak() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pak"));
    c.env("PAK_NO_PROGRESS", "1").env_remove("PAK_ROOT");
    c
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A project directory holding `pakfile`, locked and fetched into `root`
/// (downloading on the first run).
fn project(dir: &Path, pakfile: &str, root: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("Pakfile");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(pakfile) {
        std::fs::write(&path, pakfile).unwrap();
    }
    ok(pak().arg("--root").arg(root).arg("fetch").current_dir(dir));
}

/// The download cache's file of each locked package that has one (pak
/// itself has none: it is the running binary).
fn locked_debs(dir: &Path, root: &Path) -> Vec<PathBuf> {
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("Pakfile.lock")).unwrap()).unwrap();
    lock["package"]
        .as_array()
        .expect("[[package]]")
        .iter()
        .filter_map(|p| p.get("sha256")?.as_str())
        .filter(|s| !s.is_empty())
        .map(|s| root.join("cache/pkgs").join(format!("{s}.deb")))
        .filter(|p| p.is_file())
        .collect()
}

/// A root with an empty store whose download cache is `warm`'s.
fn fresh_root(path: &Path, warm: &Path) {
    if path.exists() {
        // Store trees hold read-only directories.
        ok(Command::new("chmod").args(["-R", "u+w"]).arg(path));
        std::fs::remove_dir_all(path).unwrap();
    }
    std::fs::create_dir_all(path.join("cache")).unwrap();
    for sub in ["pkgs", "apt"] {
        std::os::unix::fs::symlink(warm.join("cache").join(sub), path.join("cache").join(sub))
            .unwrap();
    }
}

fn mksquashfs(tree: &Path, out: &Path) -> Command {
    let _ = std::fs::remove_file(out);
    let mut c = Command::new("mksquashfs");
    c.arg(tree).arg(out).args([
        "-comp",
        "zstd",
        "-Xcompression-level",
        &LEVEL.to_string(),
        "-b",
        &BLOCK.to_string(),
        "-processors",
        &THREADS.to_string(),
        "-noappend",
        "-quiet",
        "-no-progress",
        "-all-root",
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
    ]);
    c
}

/// The hand pipeline: the `.deb`s unpacked, packed as squashfs, and a
/// GPT disk with an ESP (kernel and boot loader copied in) and the
/// generation in slot A.
fn hand_pipeline(debs: &[PathBuf], work: &Path) -> Sample {
    if work.exists() {
        std::fs::remove_dir_all(work).unwrap();
    }
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
    let mut cmds: Vec<Command> = debs
        .iter()
        .map(|d| {
            let mut c = Command::new("dpkg-deb");
            c.arg("-x").arg(d).arg(&tree);
            c
        })
        .collect();
    let mut cp = Command::new("cp");
    cp.arg(env!("CARGO_BIN_EXE_pak"))
        .arg(tree.join("usr/bin/pak"));
    cmds.push(cp);
    let sqfs = work.join("gen.sqfs");
    cmds.push(mksquashfs(&tree, &sqfs));
    let mut s = pipeline(&mut cmds);

    let disk = work.join("disk.raw");
    let esp = work.join("esp.img");
    let kernel = std::fs::read_dir(tree.join("boot"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz")
        })
        .expect("a kernel in /boot");
    let sdboot = tree.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    let cmd = |p: &str, args: &[&OsStr]| {
        let mut c = Command::new(p);
        c.args(args);
        c
    };
    let o = |s: &str| OsStr::new(s).to_owned();
    let mut disk_cmds = vec![
        cmd("truncate", &[&o("-s"), &o("1G"), disk.as_os_str()]),
        cmd(
            "sgdisk",
            &[
                &o("-n"),
                &o("1:2048:+256M"),
                &o("-t"),
                &o("1:ef00"),
                &o("-n"),
                &o("2:0:+320M"),
                &o("-n"),
                &o("3:0:+320M"),
                &o("-n"),
                &o("4:0:0"),
                disk.as_os_str(),
            ],
        ),
        cmd("truncate", &[&o("-s"), &o("256M"), esp.as_os_str()]),
        cmd("mkfs.vfat", &[&o("-F"), &o("32"), esp.as_os_str()]),
        cmd(
            "mmd",
            &[&o("-i"), esp.as_os_str(), &o("::/EFI"), &o("::/EFI/BOOT")],
        ),
        cmd(
            "mcopy",
            &[
                &o("-i"),
                esp.as_os_str(),
                sdboot.as_os_str(),
                &o("::/EFI/BOOT/BOOTX64.EFI"),
            ],
        ),
        cmd(
            "mcopy",
            &[
                &o("-i"),
                esp.as_os_str(),
                kernel.as_os_str(),
                &o("::/vmlinuz"),
            ],
        ),
    ];
    for (file, start) in [(&esp, "1"), (&sqfs, "257")] {
        let mut dd = Command::new("dd");
        dd.arg(format!("if={}", file.display()))
            .arg(format!("of={}", disk.display()))
            .args(["bs=1M", &format!("seek={start}"), "conv=notrunc,sparse"]);
        disk_cmds.push(dd);
    }
    let d = pipeline(&mut disk_cmds);
    s.wall += d.wall;
    s.cpu += d.cpu;
    s.rss = s.rss.max(d.rss);
    s
}

fn median(d: impl Iterator<Item = Duration>) -> Duration {
    let mut d: Vec<Duration> = d.collect();
    d.sort();
    d[d.len() / 2]
}

struct Case {
    name: &'static str,
    samples: Vec<Sample>,
}

impl Case {
    fn new(name: &'static str) -> Case {
        Case {
            name,
            samples: Vec::new(),
        }
    }

    fn median(&self) -> Duration {
        median(self.samples.iter().map(|s| s.wall))
    }

    fn median_cpu(&self) -> Duration {
        median(self.samples.iter().map(|s| s.cpu))
    }

    fn peak(&self) -> u64 {
        self.samples.iter().map(|s| s.rss).max().unwrap_or(0)
    }
}

fn bench(runs: usize, server: bool) {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("build-bench");
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
    let warm = base.join("root");
    let minimal = base.join("minimal");
    let kernel = base.join("kernel");
    eprintln!("preparing (first run downloads from Debian)...");
    project(
        &minimal,
        &std::fs::read_to_string(images.join("minimal/Pakfile")).unwrap(),
        &warm,
    );
    project(&kernel, KERNEL_PAKFILE, &warm);
    let debs = locked_debs(&minimal, &warm);
    let kernel_deb = locked_debs(&kernel, &warm)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("the kernel's .deb");
    let ktree = base.join("kernel-tree");
    if !ktree.exists() {
        let tmp = base.join("kernel-tree.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        ok(Command::new("dpkg-deb")
            .arg("-x")
            .arg(&kernel_deb)
            .arg(&tmp));
        std::fs::rename(&tmp, &ktree).unwrap();
    }
    let (kbytes, kinodes) = du(&ktree);

    let cold_root = base.join("cold-root");
    let disk = base.join("minimal.raw");
    let hand = base.join("hand");
    let (pak_sqfs, mk_sqfs) = (base.join("pak.sqfs"), base.join("mksquashfs.sqfs"));
    let me = std::env::current_exe().unwrap();
    let build = |root: &Path| -> Sample {
        run(pak()
            .arg("--root")
            .arg(root)
            .args(["--offline", "--locked", "build", "-o"])
            .arg(&disk)
            .current_dir(&minimal))
    };

    let mut cases = [
        Case::new("pak build images/minimal, cold"),
        Case::new("hand pipeline, same .debs"),
        Case::new("pak build images/minimal, unchanged"),
        Case::new("pak squashfs, kernel tree"),
        Case::new("mksquashfs, kernel tree"),
    ];
    for round in 0..runs {
        eprintln!("round {}/{runs}", round + 1);
        fresh_root(&cold_root, &warm);
        cases[0].samples.push(build(&cold_root));
        cases[1].samples.push(hand_pipeline(&debs, &hand));
        cases[2].samples.push(build(&cold_root));
        let _ = std::fs::remove_file(&pak_sqfs);
        cases[3].samples.push(run(Command::new(&me)
            .arg("--pack")
            .arg(&ktree)
            .arg(&pak_sqfs)));
        cases[4]
            .samples
            .push(run(&mut mksquashfs(&ktree, &mk_sqfs)));
    }
    let server_sample = server.then(|| {
        let dir = base.join("server");
        project(
            &dir,
            &std::fs::read_to_string(images.join("server/Pakfile")).unwrap(),
            &warm,
        );
        let root = base.join("server-root");
        fresh_root(&root, &warm);
        run(pak()
            .arg("--root")
            .arg(&root)
            .args(["--offline", "--locked", "build", "-o"])
            .arg(base.join("server.raw"))
            .current_dir(&dir))
    });

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "\n{} ({} cores), median of {runs} rounds, cases interleaved\n",
        machine(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<38} {:>8} {:>7} {:>10} {:>7} {:>9}",
        "case", "wall s", "ratio", "peak RSS", "CPU s", "CPU ratio"
    );
    let ratio = |a: Duration, b: Duration| format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64());
    for (i, c) in cases.iter().enumerate() {
        let reference = match i {
            0 => Some(&cases[1]),
            3 => Some(&cases[4]),
            _ => None,
        };
        let (r, cr) = reference.map_or((String::new(), String::new()), |b| {
            (
                ratio(c.median(), b.median()),
                ratio(c.median_cpu(), b.median_cpu()),
            )
        });
        println!(
            "{:<38} {:>8.2} {:>7} {:>6.0} MiB {:>7.2} {:>9}",
            c.name,
            c.median().as_secs_f64(),
            r,
            mib(c.peak()),
            c.median_cpu().as_secs_f64(),
            cr
        );
    }
    if let Some(s) = server_sample {
        println!(
            "{:<38} {:>8.2} {:>7} {:>6.0} MiB {:>7.2}",
            "pak build images/server, cold (once)",
            s.wall.as_secs_f64(),
            "",
            mib(s.rss),
            s.cpu.as_secs_f64()
        );
    }
    let (ps, ms) = (size(&pak_sqfs), size(&mk_sqfs));
    println!(
        "\nkernel tree: {} ({:.0} MiB, {kinodes} inodes); squashfs zstd-{LEVEL}, {} KiB blocks, {THREADS} threads",
        kernel_deb.file_name().unwrap().to_string_lossy(),
        mib(kbytes),
        BLOCK / 1024
    );
    println!(
        "squashfs size: pak {ps} bytes, mksquashfs {ms} bytes ({:+.2}%)",
        100.0 * (ps as f64 / ms as f64 - 1.0)
    );
    println!("ratio: pak's median / the reference's (below 1: pak is faster); CPU: user + system");
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// Apparent bytes and inode count of a tree.
fn du(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut inodes = 1;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.path().symlink_metadata().unwrap();
        if md.is_dir() {
            let (b, i) = du(&e.path());
            bytes += b;
            inodes += i;
        } else {
            bytes += md.len();
            inodes += 1;
        }
    }
    (bytes, inodes)
}

/// The CPU model, for the figures' caption.
fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
