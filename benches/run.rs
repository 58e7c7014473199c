//! How long entering a sandbox costs: process start to the command's exit,
//! warm, for `true` run plainly, through `pak::env::sandbox` with ten trees, and
//! through the real `pak run -e NAME -- true` binary path (an environment of
//! ten packages from a signed local repository: Pakfile and lock read, lock
//! checked, store looked up, sandbox entered, `true` exec'd).
//!
//! `cargo bench --bench run` prints median and p95 per case and fails when
//! the sandbox's median overhead over `env true` exceeds the budget.
//! When run as root, the sandboxed cases also run as `nobody`, so the
//! unprivileged (user namespace) path is the one measured.
//!
//! The benchmark binary doubles as the launcher (`--child`): it is a fresh,
//! single-threaded process, like `pak run` will be.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use pak::env::sandbox::Sandbox;

const TREES: usize = 10;
const WARMUP: usize = 20;
const ITERATIONS: usize = 300;
const BUDGET: Duration = Duration::from_millis(50);
const NOBODY: u32 = 65534;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--child") {
        return child(&args[1..]);
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and
    // then a few runs prove the benchmark works without taking the time.
    let iterations = if args.iter().any(|a| a == "--bench") {
        (WARMUP, ITERATIONS)
    } else {
        (1, 5)
    };
    bench(iterations)
}

/// `--child [--fork] TREE... -- CMD ARGS...`
fn child(args: &[OsString]) -> ExitCode {
    let fork = args.first().is_some_and(|a| a == "--fork");
    let args = &args[usize::from(fork)..];
    let split = args.iter().position(|a| a == "--").expect("-- CMD");
    let sandbox = Sandbox::from_paths(args[..split].iter().map(PathBuf::from));
    let (cmd, rest) = (&args[split + 1], &args[split + 2..]);
    let result = if fork {
        sandbox
            .run(cmd, rest)
            .map(|status| status.code().unwrap_or(1) as u8)
    } else {
        sandbox.exec(cmd, rest).map(|never| match never {})
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("run bench child: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

struct Case {
    name: String,
    command: Command,
    samples: Vec<Duration>,
}

impl Case {
    fn new(name: &str, program: &Path, args: &[OsString], uid: Option<u32>) -> Case {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .current_dir("/");
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        Case {
            name: name.to_string(),
            command,
            samples: Vec::new(),
        }
    }

    fn once(&mut self) -> Duration {
        let start = Instant::now();
        let status = self.command.status().expect("spawn");
        let took = start.elapsed();
        assert!(status.success(), "{}: {status}", self.name);
        took
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
        sorted[rank]
    }
}

fn bench((warmup, iterations): (usize, usize)) -> ExitCode {
    let scratch = tempfile::Builder::new()
        .prefix("env-bench-")
        .tempdir()
        .expect("scratch dir");
    let trees = make_trees(scratch.path());
    let me = std::env::current_exe().expect("own path");
    let root = rustix::process::geteuid().is_root();
    let user = root.then_some(NOBODY);
    let who = if root { "as nobody" } else { "as you" };

    let sandboxed = |fork: bool| -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--child".into()];
        if fork {
            args.push("--fork".into());
        }
        args.extend(trees.iter().map(|t| t.clone().into_os_string()));
        args.extend(["--".into(), "true".into()]);
        args
    };
    let plain: Vec<OsString> = vec!["--child".into(), "--".into(), "true".into()];
    let pak_root = make_env(scratch.path(), &trees);
    let pak_run = |env: &str| -> Vec<OsString> {
        vec![
            "--root".into(),
            pak_root.clone().into_os_string(),
            "run".into(),
            "-e".into(),
            env.into(),
            "--".into(),
            "true".into(),
        ]
    };
    let pak = Path::new(env!("CARGO_BIN_EXE_pak"));
    let mut cases = vec![
        Case::new(
            &format!("env true ({who})"),
            Path::new("env"),
            &["true".into()],
            user,
        ),
        Case::new(&format!("launcher, no trees ({who})"), &me, &plain, user),
        Case::new(
            &format!("sandbox exec, {TREES} trees ({who})"),
            &me,
            &sandboxed(false),
            user,
        ),
        Case::new(
            &format!("sandbox run (fork), {TREES} trees ({who})"),
            &me,
            &sandboxed(true),
            user,
        ),
    ];
    cases.push(Case::new(
        &format!("pak run -e bench -- true, {TREES} pkgs ({who})"),
        pak,
        &pak_run("bench"),
        user,
    ));
    cases.push(Case::new(
        &format!("pak run -e empty -- true, 0 pkgs ({who})"),
        pak,
        &pak_run("empty"),
        user,
    ));
    if root {
        cases.push(Case::new(
            &format!("sandbox exec, {TREES} trees (root, mount ns only)"),
            &me,
            &sandboxed(false),
            None,
        ));
    }

    for case in &mut cases {
        for _ in 0..warmup {
            case.once();
        }
    }
    // Round-robin so drift on a shared machine hits every case alike.
    for _ in 0..iterations {
        for case in &mut cases {
            let took = case.once();
            case.samples.push(took);
        }
    }
    report(&cases, warmup)
}

fn report(cases: &[Case], warmup: usize) -> ExitCode {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let baseline = cases[0].percentile(0.5);
    println!(
        "\nprocess start to exit of `true`, {} runs each, warm ({warmup} warm-up runs)\n",
        cases[0].samples.len()
    );
    println!(
        "{:<52} {:>10} {:>10} {:>16}",
        "case", "median ms", "p95 ms", "overhead ms"
    );
    for case in cases {
        let median = case.percentile(0.5);
        println!(
            "{:<52} {:>10.2} {:>10.2} {:>16.2}",
            case.name,
            ms(median),
            ms(case.percentile(0.95)),
            ms(median) - ms(baseline)
        );
    }
    let worst = cases[2..]
        .iter()
        .map(|c| c.percentile(0.5).saturating_sub(baseline))
        .max()
        .unwrap_or_default();
    println!(
        "\nworst sandbox median overhead: {:.2} ms (budget {} ms)",
        ms(worst),
        BUDGET.as_millis()
    );
    if worst > BUDGET {
        eprintln!("over budget");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Ten trees shaped like Debian packages: binaries under usr/bin (one under
/// bin/, which takes the merged-/usr fold path), data under usr/share and etc.
fn make_trees(dir: &Path) -> Vec<PathBuf> {
    set_mode(dir, 0o755);
    (0..TREES)
        .map(|i| {
            let tree = dir.join(format!("bench-pkg-{i:02}-1.0-{}", "0".repeat(64)));
            let bin = if i == 0 { "bin" } else { "usr/bin" };
            for (path, mode) in [
                (format!("{bin}/pak-bench-{i}"), 0o755),
                (format!("usr/share/doc/pak-bench-{i}/copyright"), 0o644),
                (format!("etc/pak-bench-{i}.conf"), 0o644),
            ] {
                let file = tree.join(path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, "#!/bin/sh\n").unwrap();
                set_mode(&file, mode);
            }
            tree
        })
        .collect()
}

/// A pak root holding environment `bench` (the ten trees as packages from a
/// signed repository, locked and fetched) and an empty one, `empty`. Made
/// by the pak binary itself, so the timed runs take the warm path a user's
/// second `pak run` takes. World-readable: the runs may be as nobody.
fn make_env(dir: &Path, trees: &[PathBuf]) -> PathBuf {
    let pak = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pak"))
            .args(args)
            .current_dir(dir)
            .env("PAK_NO_PROGRESS", "1")
            .output()
            .expect("run pak");
        assert!(
            out.status.success(),
            "pak {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let repo = dir.join("repo");
    std::fs::create_dir(&repo).unwrap();
    let mut packages = String::new();
    for (i, tree) in trees.iter().enumerate() {
        std::fs::write(
            tree.join(".PAKINFO"),
            format!("name = \"bench-pkg-{i:02}\"\nversion = \"1.0\"\narch = \"any\"\n"),
        )
        .unwrap();
        pak(&[
            "pkg".as_ref(),
            "create".as_ref(),
            tree.as_ref(),
            "-o".as_ref(),
            repo.as_ref(),
        ]);
        std::fs::remove_file(tree.join(".PAKINFO")).unwrap();
        packages.push_str(&format!("bench-pkg-{i:02} = \"*\"\n"));
    }
    pak(&["key".as_ref(), "generate".as_ref(), "bench".as_ref()]);
    pak(&[
        "repo".as_ref(),
        "index".as_ref(),
        repo.as_ref(),
        "--key".as_ref(),
        "bench.key".as_ref(),
    ]);
    std::fs::write(
        dir.join("Pakfile"),
        format!("[packages]\n{packages}\n[[repository]]\nname = \"bench\"\nurl = \"repo\"\nkey = \"bench.pub\"\n"),
    )
    .unwrap();
    let root = dir.join("pak-root");
    for args in [
        ["env", "create", "bench", "--pakfile", "Pakfile"],
        ["env", "create", "empty", "--pakfile", "/dev/null"],
    ] {
        let mut full: Vec<&std::ffi::OsStr> = vec!["--root".as_ref(), root.as_ref()];
        full.extend(args.iter().map(std::ffi::OsStr::new));
        pak(&full);
    }
    root
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
