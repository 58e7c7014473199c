//! The sandbox mechanism, driven through `examples/sandbox-run` as an
//! unprivileged user: when the tests run as root they create `paktest-sbx`
//! and drop to it with setpriv(1), so the user-namespace path is what runs.

mod common;
use common::{User, chmod, is_root};

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

const TEST_USER: &str = "paktest-sbx";
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The example binary, built once per test run by cargo itself so the test
/// does not depend on which targets the caller asked cargo to build.
fn sandbox_run() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let mut command = Command::new(cargo);
        // Cargo describes this test to it through CARGO_* variables; build
        // scripts (ring's) watch some of them, so passing them on would make
        // every run rebuild half the dependency tree, twice.
        for (name, _) in std::env::vars_os() {
            if is_target_variable(&name.to_string_lossy()) {
                command.env_remove(name);
            }
        }
        let out = command
            .args(["build", "--quiet", "--example", "sandbox-run"])
            .args([
                "--message-format",
                "json-render-diagnostics",
                "--manifest-path",
            ])
            .arg(&manifest)
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "cargo build --example sandbox-run failed"
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|msg| msg["reason"] == "compiler-artifact")
            .filter(|msg| msg["target"]["name"] == "sandbox-run")
            .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
            .map(|exe| common::runnable_by_all(&exe))
            .expect("cargo reported no sandbox-run executable")
    })
}

fn is_target_variable(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}

fn user() -> User {
    common::test_user(TEST_USER)
}

/// Package trees, a working directory and a home owned by the test user.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    home: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("env-sandbox-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        chmod(&root, 0o755);
        let user = user();
        let work = root.join("work");
        let home = root.join("home");
        for owned in [&work, &home] {
            std::fs::create_dir(owned).unwrap();
            std::os::unix::fs::chown(owned, Some(user.uid), Some(user.gid)).unwrap();
        }
        Fixture {
            _dir: dir,
            root,
            work,
            home,
        }
    }

    /// A tree holding executable scripts at the given root-relative paths.
    fn tree(&self, name: &str, scripts: &[(&str, &str)]) -> PathBuf {
        let tree = self.root.join(name);
        for (path, body) in scripts {
            let file = tree.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, format!("#!/bin/sh\n{body}\n")).unwrap();
            chmod(&file, 0o755);
        }
        tree
    }

    fn hello(&self) -> PathBuf {
        self.tree(
            "hello-tree",
            &[
                ("usr/bin/pak-hello", "echo hello from pak-hello"),
                ("bin/pak-binonly", "echo hello from bin"),
            ],
        )
    }

    /// `sandbox-run [--fork] --tree T... -- argv` as the test user.
    fn command(&self, fork: bool, trees: &[PathBuf], argv: &[&str]) -> Command {
        let mut command = as_user(sandbox_run());
        if fork {
            command.arg("--fork");
        }
        for tree in trees {
            command.arg("--tree").arg(tree);
        }
        command.arg("--").args(argv);
        command
            .current_dir(&self.work)
            .env("HOME", &self.home)
            .env("PATH", PATH);
        command
    }

    fn output(&self, fork: bool, trees: &[PathBuf], argv: &[&str]) -> Output {
        self.command(fork, trees, argv)
            .stdin(Stdio::null())
            .output()
            .expect("run sandbox-run")
    }
}

fn as_user(program: &Path) -> Command {
    common::as_user(program, user())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn a_tree_command_runs_inside_and_is_missing_outside() {
    let fx = Fixture::new();
    let tree = fx.hello();
    for fork in [false, true] {
        let inside = fx.output(fork, std::slice::from_ref(&tree), &["pak-hello"]);
        assert_eq!(assert_ok(&inside), "hello from pak-hello\n");
    }
    let outside = as_user(Path::new("sh"))
        .args(["-c", "command -v pak-hello"])
        .env("PATH", PATH)
        .output()
        .unwrap();
    assert!(!outside.status.success(), "pak-hello leaked to the host");
    assert!(!Path::new("/usr/bin/pak-hello").exists());
}

#[test]
fn bin_of_a_tree_appears_under_usr_bin_and_bin() {
    let fx = Fixture::new();
    let tree = fx.hello();
    let script = "pak-binonly && /usr/bin/pak-binonly && /bin/pak-binonly && /usr/bin/pak-hello";
    let out = fx.output(false, &[tree], &["sh", "-c", script]);
    assert_eq!(
        assert_ok(&out),
        "hello from bin\nhello from bin\nhello from bin\nhello from pak-hello\n"
    );
}

#[test]
fn later_trees_win_over_earlier_ones() {
    let fx = Fixture::new();
    let first = fx.tree("first", &[("usr/bin/pak-which", "echo first")]);
    let second = fx.tree("second", &[("usr/bin/pak-which", "echo second")]);
    let out = fx.output(false, &[first.clone(), second.clone()], &["pak-which"]);
    assert_eq!(assert_ok(&out), "second\n");
    let out = fx.output(false, &[second, first], &["pak-which"]);
    assert_eq!(assert_ok(&out), "first\n");
}

#[test]
fn files_created_inside_belong_to_the_user() {
    let fx = Fixture::new();
    let script = "touch made-in-cwd \"$HOME/made-in-home\" && id -u";
    let out = fx.output(false, &[fx.hello()], &["sh", "-c", script]);
    let user = user();
    assert_eq!(assert_ok(&out).trim(), user.uid.to_string());
    for file in [fx.work.join("made-in-cwd"), fx.home.join("made-in-home")] {
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{file:?}");
    }
}

#[test]
fn writes_under_usr_fail_read_only_and_reach_nothing() {
    let fx = Fixture::new();
    let probe = format!("pak-sbx-probe-{}", std::process::id());
    let script = format!(
        "for d in /usr /usr/bin /bin; do touch \"$d/{probe}\" && exit 1; done; \
         mkdir /usr/{probe} && exit 1; exit 0"
    );
    // As root the directories would be writable without the overlay, so this
    // also proves the overlays are read-only rather than merely unowned.
    for as_root in [false, true] {
        let mut command = if as_root && is_root() {
            let mut c = Command::new(sandbox_run());
            c.args(["--tree"])
                .arg(fx.hello())
                .args(["--", "sh", "-c", &script]);
            c
        } else {
            fx.command(false, &[fx.hello()], &["sh", "-c", &script])
        };
        let out = command.output().unwrap();
        assert_ok(&out);
        let stderr = text(&out.stderr);
        assert_eq!(
            stderr.matches("Read-only file system").count(),
            4,
            "{stderr}"
        );
    }
    for dir in ["/usr", "/usr/bin"] {
        assert!(!Path::new(dir).join(&probe).exists());
    }
}

#[test]
fn the_working_directory_is_reentered_through_the_overlay() {
    let fx = Fixture::new();
    let mut command = fx.command(false, &[fx.hello()], &["sh", "-c", "pwd && ls pak-hello"]);
    command.current_dir("/usr/bin");
    let out = command.output().unwrap();
    assert_eq!(assert_ok(&out), "/usr/bin\npak-hello\n");
}

#[test]
fn exit_status_stdin_stdout_and_stderr_pass_through() {
    let fx = Fixture::new();
    let script = "read line; echo \"got $line\"; echo to-stderr >&2; exit 42";
    for fork in [false, true] {
        let mut child = fx
            .command(fork, &[fx.hello()], &["sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"ping\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(42), "fork={fork}");
        assert_eq!(text(&out.stdout), "got ping\n");
        assert_eq!(text(&out.stderr), "to-stderr\n");
    }
}

#[test]
fn a_signal_to_the_command_is_reported_as_such() {
    let fx = Fixture::new();
    // exec in place: the pid we spawned is the command; signal it from outside.
    let mut child = fx
        .command(
            false,
            &[fx.hello()],
            &["sh", "-c", "echo ready; exec sleep 60"],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");

    // fork + wait: the parent names the signal and dies of it too.
    let out = fx.output(true, &[fx.hello()], &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{:?}", out.status);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("sh: terminated by signal 15 (SIGTERM)"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_command_names_the_environment() {
    let fx = Fixture::new();
    let other = fx.tree("jq-1.6", &[("usr/bin/pak-jq", "true")]);
    for fork in [false, true] {
        let out = fx.output(fork, &[fx.hello(), other.clone()], &["pak-nope"]);
        assert_eq!(out.status.code(), Some(127));
        assert_eq!(
            text(&out.stderr),
            "sandbox-run: pak-nope: command not found in the environment (packages: hello-tree, jq-1.6)\n"
        );
    }
}

#[test]
fn a_file_that_will_not_run_is_not_called_missing() {
    let fx = Fixture::new();
    let tree = fx.tree("noexec", &[("usr/bin/pak-noexec", "true")]);
    chmod(&tree.join("usr/bin/pak-noexec"), 0o644);
    let out = fx.output(false, &[tree], &["pak-noexec"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(text(&out.stderr).contains("pak-noexec: cannot run it"));
}

#[test]
fn a_missing_tree_is_refused_before_anything_runs() {
    let fx = Fixture::new();
    let gone = fx.root.join("gone");
    let out = fx.output(
        false,
        std::slice::from_ref(&gone),
        &["sh", "-c", "echo ran"],
    );
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(text(&out.stdout), "");
    assert!(text(&out.stderr).contains(&gone.display().to_string()));
}

/// More layers than fit in one page of mount options as plain paths.
#[test]
fn a_hundred_and_fifty_long_named_trees_stack() {
    let fx = Fixture::new();
    let trees: Vec<PathBuf> = (0..150)
        .map(|i| {
            let name = format!("{i:03}-{}", "x".repeat(100));
            fx.tree(&name, &[(&format!("usr/bin/pak-layer-{i:03}"), "true")])
        })
        .collect();
    let script = "pak-layer-000 && pak-layer-149 && ls /usr/bin | grep -c '^pak-layer-'";
    let out = fx.output(false, &trees, &["sh", "-c", script]);
    assert_eq!(assert_ok(&out), "150\n");
}

/// Root needs no user namespace (and keeps working where they are disabled);
/// everyone else gets one that maps only their own ids.
#[test]
fn namespaces_follow_privilege() {
    let fx = Fixture::new();
    let own_userns = std::fs::read_link("/proc/self/ns/user").unwrap();
    let script = "readlink /proc/self/ns/user; id -u; pak-hello";
    let out = fx.output(false, &[fx.hello()], &["sh", "-c", script]);
    let stdout = assert_ok(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_ne!(
        Path::new(lines[0]),
        own_userns,
        "no user namespace was made"
    );
    assert_eq!(lines[1], user().uid.to_string());
    assert_eq!(lines[2], "hello from pak-hello");
    if is_root() {
        let out = Command::new(sandbox_run())
            .arg("--tree")
            .arg(fx.hello())
            .args(["--", "sh", "-c", script])
            .output()
            .unwrap();
        let stdout = assert_ok(&out);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(Path::new(lines[0]), own_userns);
        assert_eq!(lines[1..], ["0", "hello from pak-hello"]);
    }
}

/// A pak image mounts an overlay on /etc over its squashfs root; hosts may
/// also have mounts inside /usr. Both must keep working, and stay visible.
/// Setting up those mounts needs root; as anyone else this test says so.
#[test]
fn an_etc_overlay_and_a_mount_inside_usr_are_handled() {
    if !is_root() {
        eprintln!("skipped: building an image-like mount layout needs root");
        return;
    }
    let fx = Fixture::new();
    let tree = fx.tree(
        "image-tree",
        &[
            ("usr/bin/pak-hello", "echo hello"),
            ("usr/local/bin/pak-local", "echo local"),
        ],
    );
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/pak-sbx.conf"), "from the tree\n").unwrap();
    let (upper, work) = (fx.root.join("etc-upper"), fx.root.join("etc-work"));
    for dir in [&upper, &work] {
        std::fs::create_dir(dir).unwrap();
    }
    std::fs::write(upper.join("pak-sbx-upper"), "from the etc overlay\n").unwrap();
    let user = user();
    let script = r#"
        mount -t overlay overlay -o "lowerdir=/etc,upperdir=$UPPER,workdir=$WORK" /etc &&
        mount -t tmpfs -o mode=755 pak-sbx-local /usr/local &&
        echo "from the /usr/local mount" > /usr/local/pak-sbx-marker &&
        exec setpriv --reuid="$SBX_UID" --regid="$SBX_GID" --init-groups -- \
            "$SANDBOX_RUN" --tree "$TREE" -- sh -c '
                cat /etc/pak-sbx.conf /etc/pak-sbx-upper /usr/local/pak-sbx-marker &&
                pak-hello && pak-local'
    "#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("UPPER", &upper)
        .env("WORK", &work)
        .env("SBX_UID", user.uid.to_string())
        .env("SBX_GID", user.gid.to_string())
        .env("SANDBOX_RUN", sandbox_run())
        .env("TREE", &tree)
        .env("PATH", PATH)
        .current_dir(&fx.work)
        .output()
        .unwrap();
    assert_eq!(
        assert_ok(&out),
        "from the tree\nfrom the etc overlay\nfrom the /usr/local mount\nhello\nlocal\n"
    );
}

/// A user namespace needs a single-threaded caller; exec must say so
/// instead of failing obscurely. As root only a mount namespace is made,
/// which exec can enter from any thread.
#[test]
fn exec_from_a_threaded_process_is_refused_clearly_unless_root() {
    let fx = Fixture::new();
    let mut command = as_user(sandbox_run());
    command
        .args(["--idle-thread", "--tree"])
        .arg(fx.hello())
        .args(["--", "pak-hello"])
        .env("PATH", PATH);
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("several threads"), "{stderr}");
    assert!(stderr.contains("Sandbox::run"), "{stderr}");
    if is_root() {
        let out = Command::new(sandbox_run())
            .args(["--idle-thread", "--tree"])
            .arg(fx.hello())
            .args(["--", "pak-hello"])
            .env("PATH", PATH)
            .output()
            .unwrap();
        assert_eq!(assert_ok(&out), "hello from pak-hello\n");
    }
}
