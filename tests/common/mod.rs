//! What several integration tests share: where the workspace and the e2e
//! store are, and an unprivileged user to run pak as.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a QEMU boot (TCG, on a loaded machine) may take.
pub const BOOT: Duration = Duration::from_secs(240);

/// The workspace's top directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One store for every e2e test of this run: Debian packages download once.
pub fn e2e_store() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-root")
}

#[derive(Debug, Clone, Copy)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Who pak runs as in a test: `name` (created if missing) when we are
/// root, else ourselves.
pub fn test_user(name: &str) -> User {
    static USER: OnceLock<User> = OnceLock::new();
    *USER.get_or_init(|| {
        if !is_root() {
            return User {
                uid: rustix::process::getuid().as_raw(),
                gid: rustix::process::getgid().as_raw(),
            };
        }
        let id = |flag: &str| {
            Command::new("id")
                .args([flag, name])
                .stderr(Stdio::null())
                .output()
                .expect("run id")
        };
        if !id("-u").status.success() {
            let status = Command::new("useradd")
                .args(["-m", name])
                .status()
                .expect("run useradd");
            // Another test binary may have created it meanwhile.
            assert!(
                status.success() || id("-u").status.success(),
                "useradd -m {name} failed"
            );
        }
        let number = |flag: &str| -> u32 {
            String::from_utf8(id(flag).stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        User {
            uid: number("-u"),
            gid: number("-g"),
        }
    })
}

/// Runs pak with `args` (store: [`e2e_store`]), which must succeed; its stdout.
pub fn pak_e2e<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let res = Command::new(env!("CARGO_BIN_EXE_pak"))
        .arg("--root")
        .arg(e2e_store())
        .args(args)
        .env("PAK_NO_PROGRESS", "1")
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "pak {args:?}: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    String::from_utf8_lossy(&res.stdout).into_owned()
}

/// A test machine for `image`, with `drives` attached read-only.
pub fn vm(image: &Path, drives: &[&Path]) -> pak::vm::qemu::VmConfig {
    pak::vm::qemu::VmConfig {
        image: image.to_path_buf(),
        memory_mib: 1024,
        snapshot: false,
        interactive: false,
        drives: drives.iter().map(|d| d.to_path_buf()).collect(),
    }
}

/// Runs `program` as `user` when we are root; setpriv execs, so the pid
/// stays the same.
pub fn as_user(program: &Path, user: User) -> Command {
    if !is_root() {
        return Command::new(program);
    }
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--init-groups", "--"])
        .arg(program);
    command
}

/// `program`, copied where any user may run it. Tests run pak as an
/// unprivileged user, and a checkout may sit under a directory others
/// cannot enter (root's home is mode 700), where the build's own binary is
/// out of their reach. The copy is named by its sha256, so runs of the same
/// build share it, and it is checked to be ours before it is trusted.
pub fn runnable_by_all(program: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let bytes = std::fs::read(program).unwrap();
    let sha = pak::util::fsutil::sha256_hex(&bytes);
    let top = Path::new("/tmp/pak-test-bin");
    let dir = top.join(&sha[..16]);
    let name = program.file_name().unwrap();
    let copy = dir.join(name);
    let me = rustix::process::geteuid().as_raw();
    for d in [top, dir.as_path()] {
        match std::fs::create_dir(d) {
            Ok(()) => chmod(d, 0o755),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("cannot create {}: {e}", d.display()),
        }
        let m = std::fs::symlink_metadata(d).unwrap();
        assert!(
            m.is_dir() && m.uid() == me && m.mode() & 0o022 == 0,
            "{} is not a directory only we can write",
            d.display()
        );
    }
    if std::fs::read(&copy).ok().as_deref() != Some(bytes.as_slice()) {
        // Written beside and renamed: several test binaries may race here.
        let tmp = tempfile::NamedTempFile::new_in(&dir).unwrap();
        std::fs::write(tmp.path(), &bytes).unwrap();
        chmod(tmp.path(), 0o755);
        tmp.persist(&copy).unwrap();
    }
    copy
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A project directory with a signed local repository (`repo/`, key
/// `local`), its own store root, and a Pakfile naming that repository;
/// pak runs in it as a user would.
pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        let p = Project {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(p.repo()).unwrap();
        p.ok(&["key", "generate", "local"]);
        p
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn repo(&self) -> PathBuf {
        self.dir().join("repo")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pak"));
        c.current_dir(self.dir())
            .arg("--root")
            .arg(self.dir().join("root"))
            .args(args)
            .env("PAK_NO_PROGRESS", "1")
            .env_remove("PAKFILE");
        c
    }

    /// Runs pak, which must succeed; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "pak {args:?} failed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs pak, which must fail; its stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            !out.status.success(),
            "pak {args:?} should have failed\nstdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `pak pkg create` of NAME VERSION (arch any) into the repository,
    /// shipping `/usr/share/NAME/VERSION`.
    pub fn package(&self, name: &str, version: &str, requires: &[&str]) {
        let src = self.dir().join(format!("src-{name}-{version}"));
        let file = src.join("usr/share").join(name).join(version);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, format!("{name} {version}\n")).unwrap();
        let requires: Vec<String> = requires.iter().map(|r| format!("{r:?}")).collect();
        std::fs::write(
            src.join(".PAKINFO"),
            format!(
                "name = \"{name}\"\nversion = \"{version}\"\narch = \"any\"\nrequires = [{}]\n",
                requires.join(", ")
            ),
        )
        .unwrap();
        let (src, repo) = (src.display().to_string(), self.repo().display().to_string());
        self.ok(&["pkg", "create", &src, "-o", &repo]);
    }

    /// Signs the repository's index anew.
    pub fn index(&self) {
        self.ok(&["repo", "index", "repo", "--key", "local.key"]);
    }

    /// Writes the Pakfile with these `[packages]` lines.
    pub fn pakfile(&self, packages: &str) {
        std::fs::write(
            self.dir().join("Pakfile"),
            format!(
                "[system]\nname = \"test\"\narch = \"x86_64\"\n\n[packages]\n{packages}\n[[repository]]\nname = \"local\"\nurl = \"repo\"\nkey = \"local.pub\"\n"
            ),
        )
        .unwrap();
    }
}
