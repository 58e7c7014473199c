//! pak killed with SIGKILL at random instants during `fetch`, `build`,
//! `gc`, `install --user` and `env create`. After every kill: `pak store
//! verify` is clean (no half entry is visible), no GC root is lost and no
//! rooted entry is gone, and the command completes when run again (a build
//! then writes the same bytes as an uninterrupted one).
//!
//! The instants are drawn from a seeded PRNG over each command's measured
//! duration, so the kills land inside the command on slow and fast machines
//! alike. A failure names the seed and the kill; `PAK_KILL_SEED=N cargo
//! test --test store_kill` replays the same instants.

mod common;
use common::{Package, Project};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kills per command: 110 in all.
const KILLS_PER_COMMAND: usize = 22;

/// xorshift64*: the delays only need to be spread and replayable.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed() -> u64 {
    std::env::var("PAK_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// What a store and its GC roots hold.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    /// Root file name → the keys it names.
    roots: BTreeMap<String, BTreeSet<String>>,
    entries: BTreeSet<String>,
}

fn snapshot(root: &Path) -> Snapshot {
    let names = |dir: PathBuf| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().path())
                    .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    let roots = names(root.join("gcroots"))
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let keys = text.lines().map(str::to_string).collect();
            (p.file_name().unwrap().to_string_lossy().into_owned(), keys)
        })
        .collect();
    let entries = names(root.join("store"))
        .into_iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    Snapshot { roots, entries }
}

/// One command to kill, and the root it starts from.
struct Case<'a> {
    name: &'a str,
    project: &'a Project,
    args: Vec<String>,
    /// A root to start from, copied as hard links (pak never writes into
    /// a file it did not create, it renames over); `None`: an empty one.
    template: Option<PathBuf>,
}

struct Killer {
    seed: u64,
    rng: Rng,
    kills: usize,
    runs: usize,
    work: tempfile::TempDir,
}

impl Killer {
    fn fresh_root(&mut self, case: &Case) -> PathBuf {
        self.runs += 1;
        let r = self.work.path().join(format!("root-{}", self.runs));
        match &case.template {
            Some(t) => {
                let ok = Command::new("cp")
                    .arg("-al")
                    .arg(t)
                    .arg(&r)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "cp -al {}", t.display());
            }
            None => std::fs::create_dir(&r).unwrap(),
        }
        r
    }

    /// A root readied by `ready`, to copy for every run.
    fn template(&mut self, ready: impl Fn(&Path)) -> PathBuf {
        let t = self.work.path().join(format!("template-{}", self.runs));
        self.runs += 1;
        std::fs::create_dir(&t).unwrap();
        ready(&t);
        t
    }

    fn command(&self, case: &Case, root: &Path) -> Command {
        let mut c = case.project.pak(&case.args).root(root).command();
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    /// How long the command takes uninterrupted.
    fn measure(&mut self, case: &Case) -> Duration {
        let root = self.fresh_root(case);
        let start = Instant::now();
        let out = self.command(case, &root).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
        start.elapsed()
    }

    fn run(&mut self, case: &Case, check: &dyn Fn(&Path)) {
        if std::env::var("PAK_KILL_ONLY").is_ok_and(|only| only != case.name) {
            return;
        }
        let start = Instant::now();
        let mut took = self.measure(case);
        let mut last = None;
        let mut killed_here = 0;
        // Some instants fall after the command finished; go on until enough
        // landed inside it.
        for n in 0..KILLS_PER_COMMAND * 3 {
            if killed_here == KILLS_PER_COMMAND {
                break;
            }
            let root = self.fresh_root(case);
            let before = snapshot(&root);
            let delay = took.mul_f64(self.rng.unit());
            let what = format!(
                "{} kill {n} after {delay:?} of {took:?} (replay with PAK_KILL_SEED={}; root {})",
                case.name,
                self.seed,
                root.display()
            );
            let mut child = self.command(case, &root).spawn().unwrap();
            std::thread::sleep(delay);
            let _ = child.kill();
            let status = child.wait().unwrap();
            let killed = !status.success() && {
                use std::os::unix::process::ExitStatusExt;
                status.signal() == Some(9)
            };
            assert!(
                killed || status.success(),
                "{what}: failed by itself: {status}"
            );
            if !killed {
                // The measured run was slower than the command is now.
                took = took.mul_f64(0.8);
            }
            self.kills += killed as usize;
            killed_here += killed as usize;
            self.after_kill(&root, &before, &what);
            // A create killed after it finished (between its last write and
            // its exit) made the environment whole: run again, it must say
            // so, not build a second one.
            let created = case.name == "env create"
                && root.join("envs/dev/Pakfile").is_file()
                && !root.join("envs/dev/.creating").exists();
            if created {
                let again = self.command(case, &root).output().unwrap();
                let stderr = String::from_utf8_lossy(&again.stderr);
                assert!(
                    !again.status.success() && stderr.contains("already exists"),
                    "{what}: a finished create run again: {stderr}"
                );
            } else if killed || case.name != "env create" {
                let again = self.command(case, &root).output().unwrap();
                assert!(
                    again.status.success(),
                    "{what}: the command run again failed: {}",
                    String::from_utf8_lossy(&again.stderr)
                );
            }
            check(&root);
            if let Some(previous) = last.replace(root) {
                let _ = std::fs::remove_dir_all(previous);
            }
        }
        let root = last.unwrap();
        let verify = case.project.pak(["store", "verify"]).root(&root).run();
        assert!(
            verify.success(),
            "{}: after the last re-run: {}",
            case.name,
            verify.text()
        );
        eprintln!(
            "{}: {killed_here} kills, runs of {took:?}, {:?} in all",
            case.name,
            start.elapsed()
        );
    }

    fn after_kill(&self, root: &Path, before: &Snapshot, what: &str) {
        // In this process: one pak less to start per kill.
        let store = pak::store::Store::open(&pak::state::StateDir::new(root)).unwrap();
        let report = store.verify().unwrap();
        assert!(report.is_clean(), "{what}: {:?}", report.damaged);
        let after = snapshot(root);
        for (file, keys) in &before.roots {
            assert!(
                after.roots.contains_key(file),
                "{what}: the GC root {file} is gone"
            );
            for key in keys {
                assert!(
                    !before.entries.contains(key) || after.entries.contains(key),
                    "{what}: {key}, which the root {file} names, is gone"
                );
            }
        }
    }
}

/// A project that builds an image from local packages, and one with small
/// packages of a few hundred files for the rest.
fn projects() -> (Project, Project) {
    let image = Project::new();
    image.add(&Package::kernel("kernel"));
    image.add(&Package::boot_loader("boot-loader"));
    image.add(&many_files("greet", 60));
    image.index();
    image.pakfile("pak = \"*\"\nkernel = \"*\"\nboot-loader = \"*\"\ngreet = \"*\"\n");
    image.ok(&["lock"]);

    let small = Project::new();
    for name in ["a", "b", "c", "d"] {
        small.add(&many_files(name, 60));
    }
    small.index();
    small.pakfile("a = \"*\"\nb = \"*\"\nc = \"*\"\n");
    small.write(
        "extra/Pakfile",
        "[system]\nname = \"x\"\narch = \"x86_64\"\n\n[packages]\nd = \"*\"\n\n[[repository]]\nname = \"local\"\nurl = \"../repo\"\nkey = \"../local.pub\"\n",
    );
    small.ok(&["lock"]);
    (image, small)
}

fn many_files(name: &str, n: usize) -> Package {
    let mut p = Package::new(name, "1.0-1");
    for i in 0..n {
        p = p.file(
            &format!("usr/share/{name}/{}/f{i}", i % 7),
            format!("{name} {i}\n").repeat(1 + i % 50),
        );
    }
    p
}

#[test]
fn killed_paks_leave_a_sound_store_and_finish_when_run_again() {
    let (image, small) = projects();
    let seed = seed();
    let mut k = Killer {
        seed,
        rng: Rng(seed),
        kills: 0,
        runs: 0,
        work: tempfile::tempdir().unwrap(),
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let start = Instant::now();

    k.run(
        &Case {
            name: "fetch",
            project: &small,
            args: args(&["fetch"]),
            template: None,
        },
        &|root| assert_eq!(snapshot(root).entries.len(), 3),
    );
    // Garbage to collect: an environment's packages, once it is removed.
    let garbage = k.template(|root| {
        small.pak(["fetch"]).root(root).ok();
        small
            .pak(["env", "create", "tmp", "--pakfile", "extra/Pakfile"])
            .root(root)
            .ok();
        small.pak(["env", "remove", "tmp"]).root(root).ok();
    });
    k.run(
        &Case {
            name: "gc",
            project: &small,
            args: args(&["gc"]),
            template: Some(garbage),
        },
        &|root| assert_eq!(snapshot(root).entries.len(), 3, "d collected"),
    );
    k.run(
        &Case {
            name: "install --user",
            project: &small,
            args: args(&["install", "--user", "d"]),
            template: None,
        },
        &|root| {
            let pakfile = std::fs::read_to_string(root.join("envs/user/Pakfile")).unwrap();
            assert!(pakfile.contains("d = "), "{pakfile}");
            assert!(root.join("envs/user/Pakfile.lock").is_file());
            assert!(!root.join("envs/user/.creating").exists());
        },
    );
    k.run(
        &Case {
            name: "env create",
            project: &small,
            args: args(&["env", "create", "dev", "--pakfile", "Pakfile"]),
            template: None,
        },
        &|root| {
            assert!(root.join("envs/dev/Pakfile.lock").is_file());
            assert!(!root.join("envs/dev/.creating").exists());
        },
    );
    // The reference build, to compare every re-run's bytes with; its
    // root (fetched) is where the killed builds start.
    let reference = k.work.path().join("reference.sqfs");
    let fetched = k.template(|root| {
        image
            .pak(["build", "--generation"])
            .arg(&reference)
            .args(["--number", "1"])
            .root(root)
            .ok();
    });
    let reference = std::fs::read(&reference).unwrap();
    let out = image.path("g.sqfs");
    k.run(
        &Case {
            name: "build",
            project: &image,
            args: vec![
                "build".into(),
                "--generation".into(),
                out.display().to_string(),
                "--number".into(),
                "1".into(),
            ],
            template: Some(fetched),
        },
        &|_| assert!(std::fs::read(&out).unwrap() == reference, "build differs"),
    );
    eprintln!(
        "{} kills in {} runs, {:?} (seed {seed})",
        k.kills,
        k.runs,
        start.elapsed()
    );
    assert!(
        k.kills >= 100,
        "only {} of the runs were killed before they finished (seed {seed})",
        k.kills
    );
}
