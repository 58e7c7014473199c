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
