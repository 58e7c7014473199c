//! User environments through the real `pak` binary, as an unprivileged user:
//! when the tests run as root they create `paktest-env` and drop to it with
//! setpriv(1), so the user-namespace path and the per-user root
//! (`$HOME/.local/share/pak`) are what run.
//!
//! Each test builds its own packages with `pak pkg create` and serves them
//! from a signed local repository (`pak key generate`, `pak repo index`).

mod common;
use common::{Package, User, chmod};

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const TEST_USER: &str = "paktest-env";
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// A command no host has: proves it comes from the environment.
const HELLO: &str = "pak-envtest-hello";

/// The pak binary, where the test user can run it.
fn pak() -> &'static Path {
    static PAK: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PAK.get_or_init(|| common::runnable_by_all(Path::new(env!("CARGO_BIN_EXE_pak"))))
}

fn user() -> User {
    common::test_user(TEST_USER)
}

fn as_user(program: &Path) -> Command {
    common::as_user(program, user())
}

fn chown_user(path: &Path) {
    let user = user();
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
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

#[track_caller]
fn assert_fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// A signed repository, a project directory and a home owned by the user.
struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    repo: PathBuf,
    work: PathBuf,
    home: PathBuf,
    tmp: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("pak-env-test-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        chmod(&root, 0o755);
        let (work, home, tmp) = (root.join("work"), root.join("home"), root.join("tmp"));
        for owned in [&work, &home, &tmp] {
            std::fs::create_dir(owned).unwrap();
            chown_user(owned);
        }
        let fx = Fixture {
            _dir: dir,
            dir: root.clone(),
            repo: root.join("repo"),
            work,
            home,
            tmp,
        };
        std::fs::create_dir(&fx.repo).unwrap();
        fx.package(
            "envdata",
            "1.0-1",
            &[],
            &[(
                "usr/share/envdata/greeting",
                "greetings from envdata",
                0o644,
            )],
        );
        fx.package(
            "hello",
            "1.0-1",
            &["envdata"],
            &[(
                &format!("usr/bin/{HELLO}"),
                "#!/bin/sh\necho \"$(cat /usr/share/envdata/greeting), args: $*\"\n",
                0o755,
            )],
        );
        fx.package(
            "hello",
            "2.0-1",
            &["envdata"],
            &[(
                &format!("usr/bin/{HELLO}"),
                "#!/bin/sh\necho \"hello 2, args: $*\"\n",
                0o755,
            )],
        );
        fx.package(
            "other",
            "1.0-1",
            &[],
            &[("bin/pak-envtest-other", "#!/bin/sh\necho other\n", 0o755)],
        );
        fx.add(&Package::new("clash", "1.0-1").pakinfo_line("conflicts = [\"hello\"]"));
        let key = fx.dir.join("local");
        root_pak(["key", "generate"]).arg(&key).ok();
        root_pak(["repo", "index"])
            .arg(&fx.repo)
            .arg("--key")
            .arg(fx.dir.join("local.key"))
            .ok();
        std::fs::write(
            fx.work.join("Pakfile"),
            format!(
                "# the project's own Pakfile\n[system]\nname = \"proj\"\n\n[packages]\nhello = \"< 2\"\n\n[[repository]]\nname = \"local\"\nurl = \"{}\"\nkey = \"{}\"\n",
                fx.repo.display(),
                fx.dir.join("local.pub").display()
            ),
        )
        .unwrap();
        chown_user(&fx.work.join("Pakfile"));
        fx
    }

    /// `pak pkg create` of a package with these files into the repository.
    fn package(&self, name: &str, version: &str, requires: &[&str], files: &[(&str, &str, u32)]) {
        let mut p = Package::new(name, version)
            .requires(requires)
            .pakinfo_line("summary = \"test\"\nlicense = \"MIT\"");
        for (path, body, mode) in files {
            p = p.file_mode(path, body, *mode);
        }
        self.add(&p);
    }

    fn add(&self, p: &Package) {
        let src = self.dir.join(format!("build-{}-{}", p.name, p.version));
        p.write_source(&src);
        root_pak(["pkg", "create"])
            .arg(&src)
            .arg("-o")
            .arg(&self.repo)
            .ok();
    }

    /// The user's default root: `$HOME/.local/share/pak`.
    fn user_root(&self) -> PathBuf {
        self.home.join(".local/share/pak")
    }

    fn env_dir(&self, name: &str) -> PathBuf {
        self.user_root().join("envs").join(name)
    }

    /// `pak ARGS` as the test user, in the project directory, with only
    /// the environment a login would give.
    fn pak(&self, args: &[&str]) -> Command {
        let mut command = common::pak(args)
            .program(pak())
            .run_as(user())
            .cwd(&self.work)
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", PATH)
            .env("TMPDIR", &self.tmp)
            .env("PAK_NO_PROGRESS", "1")
            .env("PAK_SYSTEM_ROOT", self.dir.join("no-system-root"))
            .command();
        command.stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.pak(args).output().expect("run pak")
    }

    /// `pak env create dev` with hello installed.
    fn dev_with_hello(&self) {
        assert_ok(&self.run(&["env", "create", "dev"]));
        assert_ok(&self.run(&["install", "-e", "dev", "hello==1.0-1"]));
    }

    fn store_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.user_root().join("store"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// pak run as root (setting up fixtures), outside any environment.
fn root_pak<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> common::Pak {
    common::pak(args).program(pak())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn run_shows_the_project_packages_and_a_plain_shell_does_not() {
    let fx = Fixture::new();
    let out = fx.run(&["run", "--", HELLO, "a b", "c"]);
    assert_eq!(assert_ok(&out), "greetings from envdata, args: a b c\n");
    // Locked on first use, beside the Pakfile, like a virtualenv.
    let lock = read(&fx.work.join("Pakfile.lock"));
    assert!(lock.contains("name = \"hello\"") && lock.contains("name = \"envdata\""));
    assert_eq!(
        std::fs::metadata(fx.work.join("Pakfile.lock"))
            .unwrap()
            .uid(),
        user().uid
    );
    let outside = as_user(Path::new("sh"))
        .args(["-c", &format!("command -v {HELLO}")])
        .env("PATH", PATH)
        .output()
        .unwrap();
    assert!(!outside.status.success(), "{HELLO} leaked to the host");
    assert!(!Path::new("/usr/bin").join(HELLO).exists());
    // Packages went to the user's own store under the XDG data dir.
    assert!(
        fx.store_entries()
            .iter()
            .any(|e| e.starts_with("hello-1.0-1-")),
        "{:?}",
        fx.store_entries()
    );
}

#[test]
fn files_made_inside_belong_to_the_user_and_nothing_reaches_usr() {
    let fx = Fixture::new();
    let probe = format!("pak-envtest-probe-{}", std::process::id());
    let script = format!(
        "touch made-in-cwd \"$HOME/made-in-home\" && id -u && \
         for d in /usr /usr/bin /usr/share/envdata; do touch \"$d/{probe}\" 2>/dev/null && exit 1; done; \
         echo $PAK_ENV"
    );
    fx.dev_with_hello();
    let out = fx.run(&["run", "-e", "dev", "--", "sh", "-c", &script]);
    assert_eq!(assert_ok(&out), format!("{}\ndev\n", user().uid));
    let user = user();
    for file in [fx.work.join("made-in-cwd"), fx.home.join("made-in-home")] {
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{file:?}");
    }
    for dir in ["/usr", "/usr/bin"] {
        assert!(!Path::new(dir).join(&probe).exists());
    }
    // The store tree itself was not written through the overlay either.
    let store = fx.user_root().join("store");
    let found = Command::new("find")
        .arg(&store)
        .args(["-name", &probe])
        .output()
        .unwrap();
    assert_eq!(text(&found.stdout), "");
}

#[test]
fn exit_status_stdin_stdout_and_stderr_pass_through() {
    let fx = Fixture::new();
    fx.dev_with_hello();
    let script = format!("read line; {HELLO} \"$line\"; echo to-stderr >&2; exit 42");
    let mut child = fx
        .pak(&["run", "-e", "dev", "--", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ping\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(text(&out.stdout), "greetings from envdata, args: ping\n");
    assert_eq!(text(&out.stderr), "to-stderr\n");
}

/// pak becomes the command: the pid pak was started as is the command's.
#[test]
fn run_leaves_no_process_in_between() {
    let fx = Fixture::new();
    fx.dev_with_hello();
    let child = fx
        .pak(&["run", "-e", "dev", "--", "sh", "-c", "echo $$"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let inner: u32 = assert_ok(&out).trim().parse().unwrap();
    // setpriv execs too, so the pid we spawned ends up being sh itself.
    assert_eq!(inner, pid);
}

#[test]
fn a_warm_run_needs_no_repository_and_keeps_the_lock() {
    let fx = Fixture::new();
    assert_ok(&fx.run(&["run", "--", HELLO]));
    let lock = read(&fx.work.join("Pakfile.lock"));
    // No network, no resolving: the repository may vanish.
    std::fs::rename(&fx.repo, fx.dir.join("repo-gone")).unwrap();
    let out = fx.run(&["run", "--", HELLO, "warm"]);
    assert_eq!(assert_ok(&out), "greetings from envdata, args: warm\n");
    assert_eq!(read(&fx.work.join("Pakfile.lock")), lock);
}

#[test]
fn install_and_uninstall_edit_the_pakfile_lock_and_wrappers() {
    let fx = Fixture::new();
    assert_ok(&fx.run(&["env", "create", "dev"]));
    let pakfile = fx.env_dir("dev").join("Pakfile");
    let lock = fx.env_dir("dev").join("Pakfile.lock");
    let bin = fx.env_dir("dev").join("bin");
    // Hand edits survive every install and uninstall.
    let with_comment = read(&pakfile).replace("[packages]\n", "[packages]\n# my tools\n");
    std::fs::write(&pakfile, with_comment).unwrap();

    let out = fx.run(&["install", "-e", "dev", "hello==1.0-1"]);
    let stdout = assert_ok(&out);
    assert!(
        stdout.contains("+ hello 1.0-1") && stdout.contains("+ envdata 1.0-1"),
        "{stdout}"
    );
    assert!(read(&pakfile).contains("[packages]\n# my tools\nhello = \"= 1.0-1\"\n"));
    assert!(read(&lock).contains("version = \"1.0-1\""));
    let wrapper = bin.join(HELLO);
    assert!(
        read(&wrapper).contains("run -e dev --"),
        "{}",
        read(&wrapper)
    );
    // The wrapper is a plain command: as the user, from anywhere.
    let out = as_user(&wrapper)
        .arg("via-wrapper")
        .env("HOME", &fx.home)
        .env("PATH", PATH)
        .output()
        .unwrap();
    assert_eq!(
        assert_ok(&out),
        "greetings from envdata, args: via-wrapper\n"
    );

    assert_ok(&fx.run(&["install", "-e", "dev", "other"]));
    assert!(bin.join("pak-envtest-other").is_file());
    let out = fx.run(&["install", "-e", "dev", "hello"]);
    assert!(assert_ok(&out).contains("~ hello 1.0-1 -> 2.0-1"));
    assert_eq!(
        assert_ok(&fx.run(&["run", "-e", "dev", "--", HELLO])),
        "hello 2, args: \n"
    );

    let out = fx.run(&["uninstall", "-e", "dev", "hello"]);
    let stdout = assert_ok(&out);
    assert!(
        stdout.contains("- hello 2.0-1") && stdout.contains("- envdata 1.0-1"),
        "{stdout}"
    );
    let text = read(&pakfile);
    assert!(
        !text.contains("hello") && text.contains("# my tools\nother = \"*\"\n"),
        "{text}"
    );
    assert!(!read(&lock).contains("\"hello\""));
    assert!(
        !bin.join(HELLO).exists(),
        "the wrapper of an uninstalled command stays"
    );
    assert!(bin.join("pak-envtest-other").is_file());
    let err = assert_fails(&fx.run(&["uninstall", "-e", "dev", "hello"]));
    assert!(
        err.contains("hello is not installed") && err.contains("other"),
        "{err}"
    );
}

/// `--user`: created on first install with the current directory's
/// repositories; its bin/ works on PATH (the wrappers must not find
/// themselves again inside).
#[test]
fn install_user_puts_commands_on_a_path() {
    let fx = Fixture::new();
    let out = fx.run(&["install", "--user", "hello"]);
    assert_ok(&out);
    let bin = fx.env_dir("user").join("bin");
    let script = format!("{HELLO} on-path && command -v {HELLO}");
    let out = as_user(Path::new("sh"))
        .args(["-c", &script])
        .env("HOME", &fx.home)
        .env("PATH", format!("{}:{PATH}", bin.display()))
        .current_dir(&fx.tmp)
        .output()
        .unwrap();
    assert_eq!(
        assert_ok(&out),
        format!("hello 2, args: on-path\n{}\n", bin.join(HELLO).display())
    );
    let list = assert_ok(&fx.run(&["env", "list", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "user");
    assert_eq!(list[0]["packages"]["hello"], "*");
    assert_eq!(list[0]["locked"], 2);
    assert_ok(&fx.run(&["uninstall", "--user", "hello"]));
    assert!(!bin.join(HELLO).exists());
}

#[test]
fn taste_runs_a_package_and_keeps_no_environment() {
    let fx = Fixture::new();
    let out = fx.run(&[
        "taste",
        "other",
        "--",
        "sh",
        "-c",
        "pak-envtest-other; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "other\n");
    assert!(
        !fx.user_root().join("envs").exists()
            || std::fs::read_dir(fx.user_root().join("envs"))
                .unwrap()
                .next()
                .is_none()
    );
    assert_eq!(
        std::fs::read_dir(&fx.tmp).unwrap().count(),
        0,
        "pak taste left its temporary Pakfile behind"
    );
    assert!(!fx.work.join("Pakfile.lock").exists());
    // Only the store keeps it, and nothing roots it.
    assert!(fx.store_entries().iter().any(|e| e.starts_with("other-")));
    let gc = assert_ok(&fx.run(&["gc"]));
    assert!(gc.contains("removed other-1.0-1-"), "{gc}");
}

#[test]
fn gc_keeps_what_environments_need_and_removes_the_rest() {
    let fx = Fixture::new();
    fx.dev_with_hello();
    assert_ok(&fx.run(&["taste", "other", "--", "true"]));
    assert_eq!(fx.store_entries().len(), 3, "{:?}", fx.store_entries());
    let gc = assert_ok(&fx.run(&["gc"]));
    let entries = fx.store_entries();
    assert_eq!(entries.len(), 2, "{gc}");
    assert!(entries[0].starts_with("envdata-1.0-1-") && entries[1].starts_with("hello-1.0-1-"));
    // A kept package still runs after the collection.
    assert_ok(&fx.run(&["run", "-e", "dev", "--", HELLO]));
    // A removed environment roots nothing.
    assert_ok(&fx.run(&["env", "remove", "dev"]));
    assert!(!fx.env_dir("dev").exists());
    assert_ok(&fx.run(&["gc"]));
    assert!(fx.store_entries().is_empty(), "{:?}", fx.store_entries());
}

/// An unprivileged caller uses the system store's trees in place.
#[test]
fn the_system_store_is_read_without_copying() {
    let fx = Fixture::new();
    let system = fx.dir.join("system-root");
    root_pak(["fetch"])
        .root(&system)
        .arg("--pakfile")
        .arg(fx.work.join("Pakfile"))
        .ok();
    std::fs::remove_file(fx.work.join("Pakfile.lock")).ok();
    let out = fx
        .pak(&["run", "--", HELLO, "shared"])
        .env("PAK_SYSTEM_ROOT", &system)
        .output()
        .unwrap();
    assert_eq!(assert_ok(&out), "greetings from envdata, args: shared\n");
    assert!(fx.store_entries().is_empty(), "{:?}", fx.store_entries());
}

fn unchanged(fx: &Fixture, env: &str) -> impl Fn() {
    let dir = fx.env_dir(env);
    let pakfile = std::fs::read(dir.join("Pakfile")).unwrap();
    let lock = std::fs::read(dir.join("Pakfile.lock")).ok();
    move || {
        assert_eq!(std::fs::read(dir.join("Pakfile")).unwrap(), pakfile);
        assert_eq!(std::fs::read(dir.join("Pakfile.lock")).ok(), lock);
    }
}

#[test]
fn a_missing_package_names_near_ones_and_changes_nothing() {
    let fx = Fixture::new();
    fx.dev_with_hello();
    let check = unchanged(&fx, "dev");
    let err = assert_fails(&fx.run(&["install", "-e", "dev", "helo"]));
    assert!(
        err.contains("\"helo\"") && err.contains("did you mean hello"),
        "{err}"
    );
    assert!(err.contains("environment dev"), "{err}");
    check();
    let err = assert_fails(&fx.run(&["install", "-e", "dev", "hello==9"]));
    assert!(err.contains("hello"), "{err}");
    check();
    // A failed first install --user leaves no user environment behind.
    let err = assert_fails(&fx.run(&["install", "--user", "helo"]));
    assert!(err.contains("did you mean hello"), "{err}");
    assert!(!fx.env_dir("user").exists());
}

#[test]
fn a_conflicting_requirement_is_explained_and_changes_nothing() {
    let fx = Fixture::new();
    fx.dev_with_hello();
    let check = unchanged(&fx, "dev");
    let err = assert_fails(&fx.run(&["install", "-e", "dev", "clash"]));
    assert!(err.contains("clash") && err.contains("hello"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    check();
    assert!(!fx.env_dir("dev").join("bin/clash").exists());
}

#[test]
fn a_broken_lock_is_named_and_left_alone() {
    let fx = Fixture::new();
    fx.dev_with_hello();
    let lock = fx.env_dir("dev").join("Pakfile.lock");
    std::fs::write(&lock, "format = 1\n[[package]]\nname = \"hello\"\n").unwrap();
    let check = unchanged(&fx, "dev");
    for args in [
        &["run", "-e", "dev", "--", "true"][..],
        &["install", "-e", "dev", "other"],
        &["gc"],
    ] {
        let err = assert_fails(&fx.run(args));
        assert!(
            err.contains(&lock.display().to_string()) && err.contains("broken"),
            "{args:?}: {err}"
        );
        check();
    }
}

#[test]
fn a_command_missing_from_the_environment_exits_127() {
    let fx = Fixture::new();
    fx.dev_with_hello();
    let out = fx.run(&["run", "-e", "dev", "--", "pak-envtest-nope"]);
    assert_eq!(out.status.code(), Some(127));
    let err = text(&out.stderr);
    assert!(
        err.contains("pak-envtest-nope: command not found in the environment")
            && err.contains("hello 1.0-1"),
        "{err}"
    );
}

#[test]
fn environments_that_do_not_exist_exist_already_or_have_bad_names() {
    let fx = Fixture::new();
    for args in [
        &["run", "-e", "nope", "--", "true"][..],
        &["env", "remove", "nope"],
        &["env", "enter", "nope"],
        &["install", "-e", "nope", "hello"],
    ] {
        let err = assert_fails(&fx.run(args));
        assert!(err.contains("no environment \"nope\""), "{args:?}: {err}");
    }
    assert_ok(&fx.run(&["env", "create", "dev"]));
    let check = unchanged(&fx, "dev");
    let err = assert_fails(&fx.run(&["env", "create", "dev"]));
    assert!(err.contains("already exists"), "{err}");
    check();
    for bad in ["../escape", "a/b", "..", ".hidden", ""] {
        let err = assert_fails(&fx.run(&["env", "create", bad]));
        assert!(
            err.contains("not a valid environment name"),
            "{bad:?}: {err}"
        );
        let err = assert_fails(&fx.run(&["run", "-e", bad, "--", "true"]));
        assert!(
            err.contains("not a valid environment name"),
            "{bad:?}: {err}"
        );
    }
    assert!(!fx.user_root().join("escape").exists());
    let names: Vec<_> = std::fs::read_dir(fx.user_root().join("envs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["dev"]);
}

#[test]
fn create_from_a_pakfile_copies_its_packages() {
    let fx = Fixture::new();
    let out = fx.run(&["env", "create", "proj", "--pakfile", "Pakfile"]);
    assert!(assert_ok(&out).contains("+ hello 1.0-1"));
    let text = read(&fx.env_dir("proj").join("Pakfile"));
    assert!(text.contains("hello = \"< 2\""), "{text}");
    assert_eq!(
        assert_ok(&fx.run(&["run", "-e", "proj", "--", HELLO])),
        "greetings from envdata, args: \n"
    );
    // Without --pakfile only the repositories are taken.
    assert_ok(&fx.run(&["env", "create", "bare"]));
    let text = read(&fx.env_dir("bare").join("Pakfile"));
    assert!(
        !text.contains("hello") && text.contains(&fx.repo.display().to_string()),
        "{text}"
    );
    let list = assert_ok(&fx.run(&["env", "list"]));
    assert!(
        list.contains("bare") && list.contains("(empty)") && list.contains("proj"),
        "{list}"
    );
}

#[test]
fn enter_starts_a_shell_inside_that_names_the_environment() {
    let fx = Fixture::new();
    fx.dev_with_hello();
    let mut child = fx
        .pak(&["env", "enter", "dev"])
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("echo \"$PAK_ENV|$PS1\"; {HELLO} inside; exit 5\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("dev|(dev) "), "{stdout}");
    assert!(
        stdout.ends_with("greetings from envdata, args: inside\n"),
        "{stdout}"
    );
}

/// Without -e or --user, install edits the Pakfile of the current
/// directory, the way `pak run` without -e uses it.
#[test]
fn install_without_an_environment_edits_the_project_pakfile() {
    let fx = Fixture::new();
    assert_ok(&fx.run(&["install", "other"]));
    let text = read(&fx.work.join("Pakfile"));
    assert!(
        text.starts_with("# the project's own Pakfile\n")
            && text.contains("hello = \"< 2\"\nother = \"*\"\n"),
        "{text}"
    );
    assert!(read(&fx.work.join("Pakfile.lock")).contains("name = \"other\""));
    assert_eq!(
        assert_ok(&fx.run(&[
            "run",
            "--",
            "sh",
            "-c",
            "pak-envtest-other && /bin/pak-envtest-other"
        ])),
        "other\nother\n"
    );
    assert!(
        !fx.user_root().join("envs").exists(),
        "no environment is made"
    );
    assert_ok(&fx.run(&["uninstall", "other"]));
    assert!(!read(&fx.work.join("Pakfile")).contains("other"));
    let out = fx.run(&["run", "--", "pak-envtest-other"]);
    assert_eq!(out.status.code(), Some(127));
}

/// Concurrent installs into one environment are serialised: neither
/// edit of the Pakfile is lost.
#[test]
fn concurrent_installs_keep_both_packages() {
    let fx = Fixture::new();
    assert_ok(&fx.run(&["env", "create", "dev"]));
    for _ in 0..3 {
        let a = fx.pak(&["install", "-e", "dev", "other"]).spawn().unwrap();
        let b = fx.pak(&["install", "-e", "dev", "hello"]).spawn().unwrap();
        assert_ok(&a.wait_with_output().unwrap());
        assert_ok(&b.wait_with_output().unwrap());
        let packages = read(&fx.env_dir("dev").join("Pakfile"));
        assert!(
            packages.contains("other = \"*\"") && packages.contains("hello = \"*\""),
            "{packages}"
        );
        assert_ok(&fx.run(&["uninstall", "-e", "dev", "other"]));
        assert_ok(&fx.run(&["uninstall", "-e", "dev", "hello"]));
    }
}
