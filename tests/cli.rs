//! What pak says, word for word: the change lists of `pak lock` and
//! `pak update`, `--locked` refusals, the main error messages, and
//! `pak system status | generations | diff` on a disk image, held by
//! snapshots in `tests/snapshots/` (review a change with `cargo insta
//! review`, or `INSTA_UPDATE=always` and `git diff`). What varies between
//! runs (temporary paths, sha256s, dates, sizes, pak's own version) is
//! redacted.
//!
//! Also pak's shell habits: completion scripts and manual pages.

mod common;
use common::{Package, Project, Ran, pak};

use std::path::Path;

/// A transcript of pak commands run in a project, as a user would see
/// them on a terminal: each command line, its stdout, then its stderr and
/// exit code when there are any.
struct Session<'a> {
    p: &'a Project,
    text: String,
}

impl<'a> Session<'a> {
    fn new(p: &'a Project) -> Session<'a> {
        Session {
            p,
            text: String::new(),
        }
    }

    fn record(&mut self, args: &[&str], ran: &Ran) {
        self.text.push_str(&format!("$ pak {}\n", args.join(" ")));
        self.text.push_str(&ran.stdout());
        let stderr = ran.stderr();
        if !stderr.is_empty() {
            self.text.push_str("--- stderr\n");
            self.text.push_str(&stderr);
        }
        if let Some(code) = ran.output.status.code().filter(|c| *c != 0) {
            self.text.push_str(&format!("--- exit {code}\n"));
        }
        self.text.push('\n');
    }

    /// Runs pak in the project, which must succeed.
    #[track_caller]
    fn ok(&mut self, args: &[&str]) {
        let ran = self.p.pak(args).run();
        self.record(args, &ran);
        ran.ok();
    }

    /// Runs pak in the project, which must fail.
    #[track_caller]
    fn fails(&mut self, args: &[&str]) {
        let ran = self.p.pak(args).run();
        self.record(args, &ran);
        ran.fails();
    }

    /// A note in the transcript on what the test did between commands.
    fn note(&mut self, what: &str) {
        self.text.push_str(&format!("# {what}\n"));
    }

    #[track_caller]
    fn snapshot(self, name: &str) {
        let settings = redactions(self.p.dir());
        settings.bind(|| insta::assert_snapshot!(name, self.text));
    }
}

/// Filters for what varies between runs and machines.
fn redactions(dir: &Path) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    for d in [dir.to_path_buf(), dir.canonicalize().unwrap()] {
        s.add_filter(&escape(&d.display().to_string()), "[DIR]");
    }
    s.add_filter(r"\b[0-9a-f]{64}\b", "[SHA256]");
    s.add_filter(r"\bsha256 [0-9a-f]{16}\b", "sha256 [SHA256-PREFIX]");
    // A generation's size follows the size of the pak binary inside it.
    s.add_filter(r"\b\d+(\.\d+)? (B|KiB|MiB|GiB)\b", "[SIZE]");
    s.add_filter(
        r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}( UTC|Z)?",
        "[DATE]",
    );
    s.add_filter(
        &format!(r"\bpak {}\b", escape(env!("CARGO_PKG_VERSION"))),
        "pak [VERSION]",
    );
    s
}

fn escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// a 1.0-1 and b 1.0-1 (needing a), signed; the Pakfile asks for a.
fn ab_project() -> Project {
    let p = Project::new();
    p.package("a", "1.0-1", &[]);
    p.package("b", "1.0-1", &["a"]);
    p.index();
    p.pakfile("a = \"*\"\n");
    p
}

#[test]
fn lock_and_update_print_every_change() {
    let p = ab_project();
    let mut s = Session::new(&p);
    s.ok(&["lock"]);
    s.ok(&["lock"]);
    p.package("a", "2.0-1", &[]);
    p.index();
    s.note("a 2.0-1 published");
    s.ok(&["lock"]);
    p.pakfile("a = \"*\"\nb = \"*\"\n");
    s.note("the Pakfile asks for b too");
    s.ok(&["fetch"]);
    s.ok(&["update", "a"]);
    s.ok(&["update"]);
    p.pakfile("a = \"< 2\"\n");
    s.note("the Pakfile pins a below 2 and no longer asks for b");
    s.ok(&["lock"]);
    s.snapshot("lock_and_update");
}

#[test]
fn locked_refusals() {
    let p = ab_project();
    let mut s = Session::new(&p);
    s.fails(&["--locked", "lock"]);
    s.ok(&["lock"]);
    p.pakfile("a = \"*\"\nb = \"*\"\n");
    s.note("the Pakfile asks for b too");
    s.fails(&["--locked", "fetch"]);
    s.fails(&["--locked", "build", "-o", "x.raw"]);
    p.pakfile("a = \">= 3\"\n");
    s.note("the Pakfile asks for what no repository has");
    s.fails(&["--locked", "lock"]);
    s.snapshot("locked_refusals");
}

#[test]
fn errors_in_the_pakfile() {
    let p = ab_project();
    let mut s = Session::new(&p);
    p.write(
        "Malformed",
        "[system]\nname = \"x\"\n\n[packages]\na = \"*\"\nb = >= 1\n",
    );
    s.fails(&["--pakfile", "Malformed", "lock"]);
    p.pakfile("aa = \"*\"\n");
    s.fails(&["lock"]);
    p.pakfile("a = \">= 3\"\n");
    s.fails(&["lock"]);
    p.pakfile("b = \"*\"\nc = \"*\"\n");
    s.fails(&["lock"]);
    s.fails(&["--pakfile", "Missing", "lock"]);
    p.package("c", "1.0-1", &["a >= 2"]);
    p.package("a", "2.0-1", &[]);
    p.index();
    p.pakfile("a = \"< 2\"\nc = \"*\"\n");
    s.note("c 1.0-1 (needs a >= 2) and a 2.0-1 published; the Pakfile pins a < 2");
    s.fails(&["lock"]);
    s.snapshot("pakfile_errors");
    assert!(!p.path("Pakfile.lock").exists(), "no lock on failure");
}

#[test]
fn errors_from_repositories_and_packages() {
    let p = ab_project();
    let mut s = Session::new(&p);
    s.ok(&["lock"]);
    let index = p.read("repo/index");

    p.write("repo/index", &index.replace("1.0-1", "1.0-2"));
    s.note("the index changed after it was signed");
    s.fails(&["update"]);
    p.write("repo/index", &index);

    p.pak(["repo", "index", "repo", "--key", "local.key"])
        .args(["--expires-in", "0"])
        .ok();
    s.note("the index expired");
    s.fails(&["update"]);
    p.index();

    let a = p.repo().join("a-1.0-1-any.pak");
    let bytes = std::fs::read(&a).unwrap();
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n / 2] ^= 0xff;
    std::fs::write(&a, &flipped).unwrap();
    s.note("a byte of a-1.0-1-any.pak flipped after indexing");
    s.fails(&["fetch"]);
    std::fs::write(p.path("corrupt.pak"), &flipped).unwrap();
    s.fails(&["pkg", "verify", "corrupt.pak"]);
    std::fs::write(p.path("truncated.pak"), &bytes[..n / 2]).unwrap();
    s.fails(&["pkg", "info", "truncated.pak"]);

    std::fs::remove_file(&a).unwrap();
    s.note("a-1.0-1-any.pak deleted from the repository, still indexed");
    s.fails(&["fetch"]);
    p.index();
    s.note("the repository indexed again, without a");
    s.fails(&["fetch"]);
    s.fails(&["--offline", "fetch"]);
    s.snapshot("repository_errors");
}

/// A project whose Pakfile builds a small bootable image from stand-in
/// packages (no Debian, no network): a kernel, a boot loader and `extra`.
fn image_project(extra: &[&str]) -> Project {
    let p = Project::new();
    p.add(&Package::kernel("kernel"));
    p.add(&Package::boot_loader("boot-loader"));
    p.add(&Package::new("greet", "1.0-1").file_mode(
        "usr/bin/greet",
        "#!/bin/sh\necho hello\n",
        0o755,
    ));
    p.add(&Package::new("greet", "1.1-1").file_mode(
        "usr/bin/greet",
        "#!/bin/sh\necho hello again\n",
        0o755,
    ));
    p.add(&Package::new("motd", "1.0-1").file("etc/motd", "hello\n"));
    p.index();
    // pak itself is the image's /init.
    let mut packages = "pak = \"*\"\nkernel = \"*\"\nboot-loader = \"*\"\n".to_string();
    for e in extra {
        packages.push_str(e);
        packages.push('\n');
    }
    p.pakfile_with(&packages, "\n[image]\nsize = \"512MiB\"\n");
    p
}

#[test]
fn system_status_generations_and_diff_on_a_disk() {
    let p = image_project(&["greet = \"< 1.1\"", "motd = \"*\""]);
    let mut s = Session::new(&p);
    p.ok(&["build", "-o", "disk.raw"]);
    s.ok(&["system", "status", "--disk", "disk.raw"]);
    s.ok(&["system", "generations", "--disk", "disk.raw"]);
    s.fails(&["system", "diff", "--disk", "disk.raw"]);

    p.pakfile_with(
        "pak = \"*\"\nkernel = \"*\"\nboot-loader = \"*\"\ngreet = \"*\"\n",
        "\n[image]\nsize = \"512MiB\"\n",
    );
    s.note("greet moves to 1.1-1, motd leaves the Pakfile");
    p.ok(&["update"]);
    s.fails(&["system", "switch", "--disk", "disk.raw"]);
    s.ok(&["system", "mark-good", "--disk", "disk.raw"]);
    s.ok(&["system", "switch", "--disk", "disk.raw"]);
    s.ok(&["system", "status", "--disk", "disk.raw"]);
    s.ok(&["system", "generations", "--disk", "disk.raw"]);
    s.ok(&["system", "diff", "--disk", "disk.raw"]);
    s.ok(&["system", "diff", "--disk", "disk.raw", "2", "1"]);
    s.fails(&["system", "diff", "--disk", "disk.raw", "1", "7"]);
    s.ok(&["system", "rollback", "--disk", "disk.raw"]);
    s.ok(&["system", "status", "--disk", "disk.raw"]);
    s.ok(&["system", "status", "--disk", "disk.raw", "--json"]);
    s.ok(&["system", "generations", "--disk", "disk.raw", "--json"]);
    s.snapshot("system_on_a_disk");
}

#[test]
fn bash_completion_registers_pak_and_knows_its_commands() {
    let script = pak(["completions", "bash"]).ok();
    assert!(script.contains("complete -F _pak"), "{script}");
    for word in ["system", "generations", "rollback", "vendor", "--locked"] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    // bash itself accepts the script and registers the function.
    let out = std::process::Command::new("bash")
        .args(["--norc", "-c", "source /dev/stdin && complete -p pak"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(script.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let registered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && registered.contains("_pak"),
        "{registered}"
    );
}

#[test]
fn zsh_and_fish_completions_know_the_subcommands() {
    let zsh = pak(["completions", "zsh"]).ok();
    assert!(zsh.starts_with("#compdef pak"), "{zsh}");
    let fish = pak(["completions", "fish"]).ok();
    assert!(fish.contains("complete -c pak"), "{fish}");
    for script in [&zsh, &fish] {
        for word in ["system", "mark-good", "import-deb", "offline"] {
            assert!(script.contains(word), "{word} missing from\n{script}");
        }
    }
    let e = pak(["completions", "tcsh"]).fails();
    assert!(e.contains("possible values: bash"), "{e}");
}

#[test]
fn the_manual_page_documents_pak() {
    let page = pak(["man"]).ok();
    assert!(page.contains(".TH PAK 1"), "{page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "{section} missing");
    }
    for word in ["pak\\-system(1)", "pak\\-lock(1)", "\\-\\-locked"] {
        assert!(page.contains(word), "{word} missing from\n{page}");
    }
    // man itself renders it, when this machine has it.
    if let Ok(mut child) = std::process::Command::new("man")
        .args(["-l", "-"])
        .env("MANWIDTH", "80")
        .env("MAN_KEEP_FORMATTING", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("system"),
            "man -l: {text}"
        );
    }
}

#[test]
fn man_dir_writes_a_page_per_command() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("man1");
    let listed = pak(["man", "--dir"]).arg(&dir).ok();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for page in ["pak.1", "pak-system.1", "pak-system-status.1", "pak-man.1"] {
        assert!(names.iter().any(|n| n == page), "{page} not in {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
    assert_eq!(listed.lines().count(), names.len(), "{listed}");
    let status = std::fs::read_to_string(dir.join("pak-system-status.1")).unwrap();
    assert!(
        status.contains(".TH PAK\\-SYSTEM\\-STATUS 1")
            || status.contains(".TH PAK-SYSTEM-STATUS 1"),
        "{status}"
    );
    assert!(status.contains("\\-\\-disk"), "{status}");
}

#[test]
fn help_lists_completions_and_man() {
    let help = pak(["--help"]).ok();
    for command in ["completions", "man"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "{command} missing from\n{help}"
        );
    }
}

/// An image needs pak itself as its initramfs `/init`: the error says what
/// to add, once.
#[test]
fn an_image_without_pak_says_what_to_add() {
    let p = Project::new();
    p.add(&Package::kernel("kernel"));
    p.add(&Package::boot_loader("boot-loader"));
    p.index();
    p.pakfile("kernel = \"*\"\nboot-loader = \"*\"\n");
    let err = p.fails(&["build", "-o", "x.raw"]);
    assert!(
        err.contains("add `pak = \"*\"` to [packages]")
            && err.matches("has no /usr/bin/pak").count() == 1,
        "{err}"
    );
    assert!(!p.path("x.raw").exists());
}
