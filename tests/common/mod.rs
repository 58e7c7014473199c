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
pub fn vm(image: &Path, drives: &[&Path]) -> pak::qemu::VmConfig {
    pak::qemu::VmConfig {
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

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
