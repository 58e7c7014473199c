//! Why a sandbox could not start the command, in words that say what to do:
//! [`SandboxError`], and turning a step that failed between fork and exec
//! (reported as a bare stage and errno) into one, with what the parent
//! knows (the layout, the sysctls, the mounts) filled in.

use std::io;
use std::path::{Path, PathBuf};

use super::Layout;
use super::exec::{Failure, Isolation, Stage};
use super::layout::mount_points;

/// Why the sandbox could not start the command. Callers map [`exit_code`]
/// to the process exit status.
///
/// [`exit_code`]: SandboxError::exit_code
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "cannot read package tree {path}: {source}. Check that the directory exists and is readable (a store entry may be missing; `pak gc` or a failed fetch can cause this)."
    )]
    Tree { path: PathBuf, source: io::Error },
    #[error(
        "package tree {tree} provides /{dir}, which this system does not have; a read-only root cannot grow new top-level directories. Such files belong under /usr or /opt."
    )]
    NoSuchSystemDir { tree: PathBuf, dir: String },
    #[error(
        "{path} cannot be shown: {target} has mounts beneath it ({mounts}), so its subdirectories are overlaid one by one, and {reason}. Move those mounts, or run without them."
    )]
    Submounts {
        path: PathBuf,
        target: PathBuf,
        mounts: String,
        reason: &'static str,
    },
    #[error(
        "{count} package trees provide {target}, more than one overlay mount can stack (at most {max}); split the environment or use fewer packages."
    )]
    TooManyLayers {
        target: PathBuf,
        count: usize,
        max: usize,
    },
    #[error(
        "unprivileged user namespaces are disabled on this host ({sysctl} = {value}), and pak needs one to show packages without root. Enable them with `sysctl -w {sysctl}={fix}` (persist it in /etc/sysctl.d/), or run as root."
    )]
    UsernsDisabled {
        sysctl: &'static str,
        value: String,
        fix: &'static str,
    },
    #[error(
        "the kernel refused {step}: {source}. No sysctl forbids unprivileged user namespaces, so a container's seccomp profile or a security module is blocking them; allow unshare(CLONE_NEWUSER) for pak there, or run as root."
    )]
    UsernsRefused {
        step: &'static str,
        source: io::Error,
    },
    #[error(
        "cannot create a user namespace: the process already runs several threads and unshare(CLONE_NEWUSER) requires one. Call Sandbox::exec before starting threads, or use Sandbox::run."
    )]
    Threaded,
    #[error("cannot set up the sandbox, {step} failed: {source}")]
    Setup { step: String, source: io::Error },
    #[error("cannot mount the overlay over {target} (layers: {layers}): {source}.{hint}")]
    Overlay {
        target: PathBuf,
        layers: String,
        hint: String,
        source: io::Error,
    },
    #[error("{cmd}: command not found in the environment (packages: {packages})")]
    CommandNotFound { cmd: String, packages: String },
    #[error(
        "{cmd}: cannot run it: {source}. Check that the file is executable and its interpreter exists in the environment."
    )]
    CannotExecute { cmd: String, source: io::Error },
}

impl SandboxError {
    /// The shell's conventions, as `env` and `chroot` use them: 127 when the
    /// command does not exist, 126 when it cannot run, 125 when the sandbox
    /// itself failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            SandboxError::CommandNotFound { .. } => 127,
            SandboxError::CannotExecute { .. } => 126,
            _ => 125,
        }
    }
}

pub(super) fn setup(step: &str, source: io::Error) -> SandboxError {
    SandboxError::Setup {
        step: step.to_string(),
        source,
    }
}

/// What the parent knows about a sandbox, to explain a failed step.
pub(super) struct Context {
    pub(super) layout: Layout,
    pub(super) isolation: Isolation,
    pub(super) cmd: String,
    pub(super) packages: String,
}

impl Context {
    /// Turn a failed step into a message that names what to do.
    pub(super) fn explain(&self, failure: Failure) -> SandboxError {
        let layout = &self.layout;
        let source = io::Error::from_raw_os_error(failure.errno);
        if failure.stage == Stage::Exec {
            return self.exec_error(source);
        }
        let userns = matches!(self.isolation, Isolation::User { .. });
        let refused = matches!(
            failure.errno,
            libc::EPERM | libc::EACCES | libc::ENOSPC | libc::EUSERS
        );
        let step = match failure.stage {
            Stage::Unshare if userns => "creating a user namespace (unshare)",
            Stage::Unshare => "creating a mount namespace (unshare)",
            Stage::Setgroups => "writing /proc/self/setgroups",
            Stage::UidMap => "writing /proc/self/uid_map",
            Stage::GidMap => "writing /proc/self/gid_map",
            Stage::MakePrivate => "making mounts private",
            Stage::OpenLayer | Stage::Mount => "mounting an overlay",
            Stage::Exec => "running the command",
        };
        if failure.stage == Stage::Unshare && failure.errno == libc::EINVAL {
            return SandboxError::Threaded;
        }
        if userns && refused {
            if let Some(blocker) = userns_blocker(Path::new("/proc/sys")) {
                return blocker;
            }
            if failure.stage != Stage::Mount && failure.stage != Stage::OpenLayer {
                return SandboxError::UsernsRefused { step, source };
            }
        }
        let overlay = layout.overlays.get(failure.overlay as usize);
        match (failure.stage, overlay) {
            (Stage::OpenLayer, Some(overlay)) => {
                let layer = overlay
                    .layers
                    .get(failure.layer as usize)
                    .cloned()
                    .unwrap_or_default();
                SandboxError::Tree {
                    path: layer,
                    source,
                }
            }
            (Stage::Mount, Some(overlay)) => SandboxError::Overlay {
                target: overlay.target.clone(),
                layers: overlay
                    .layers
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                hint: overlay_hint(&overlay.target, failure.errno),
                source,
            },
            _ => setup(step, source),
        }
    }

    fn exec_error(&self, source: io::Error) -> SandboxError {
        match source.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => SandboxError::CommandNotFound {
                cmd: self.cmd.clone(),
                packages: self.packages.clone(),
            },
            _ => SandboxError::CannotExecute {
                cmd: self.cmd.clone(),
                source,
            },
        }
    }
}

/// Overlayfs answers EINVAL for several distinct problems; name the likely one.
fn overlay_hint(target: &Path, errno: i32) -> String {
    if errno != libc::EINVAL {
        return String::new();
    }
    let submounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| submounts_below(&info, target))
        .unwrap_or_default();
    if submounts.is_empty() {
        return " The kernel rejected the layers: check that every tree and the system directory are on filesystems overlayfs accepts as lower layers, and that no more than two overlays are stacked.".to_string();
    }
    format!(
        " {} has mounts beneath it ({}), which an unprivileged overlay cannot include; move those mounts elsewhere or run as root.",
        target.display(),
        submounts.join(", ")
    )
}

/// Mount points strictly below `target`, from /proc/self/mountinfo text.
fn submounts_below(mountinfo: &str, target: &Path) -> Vec<String> {
    let mut found: Vec<String> = mount_points(mountinfo)
        .into_iter()
        .filter(|point| point != target && point.starts_with(target))
        .map(|point| point.display().to_string())
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The sysctl that forbids unprivileged user namespaces, if one does.
/// `proc_sys` is `/proc/sys` except in tests.
fn userns_blocker(proc_sys: &Path) -> Option<SandboxError> {
    let read = |name: &str| {
        std::fs::read_to_string(proc_sys.join(name))
            .ok()
            .map(|v| v.trim().to_string())
    };
    let checks: [(&'static str, &str, &str, &'static str); 3] = [
        (
            "kernel.unprivileged_userns_clone",
            "kernel/unprivileged_userns_clone",
            "0",
            "1",
        ),
        (
            "user.max_user_namespaces",
            "user/max_user_namespaces",
            "0",
            "15000",
        ),
        (
            "kernel.apparmor_restrict_unprivileged_userns",
            "kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "0",
        ),
    ];
    checks.into_iter().find_map(|(sysctl, file, bad, fix)| {
        let value = read(file)?;
        (value == bad).then_some(SandboxError::UsernsDisabled { sysctl, value, fix })
    })
}

#[cfg(test)]
mod tests {
    use super::super::layout::tests::mkdirs;
    use super::*;

    #[test]
    fn each_userns_sysctl_is_named_with_its_fix() {
        let cases = [
            (
                "kernel/unprivileged_userns_clone",
                "0",
                "kernel.unprivileged_userns_clone=1",
            ),
            (
                "user/max_user_namespaces",
                "0",
                "user.max_user_namespaces=15000",
            ),
            (
                "kernel/apparmor_restrict_unprivileged_userns",
                "1",
                "kernel.apparmor_restrict_unprivileged_userns=0",
            ),
        ];
        for (file, value, fix) in cases {
            let sys = tempfile::tempdir().unwrap();
            mkdirs(sys.path(), &["kernel", "user"]);
            std::fs::write(sys.path().join("user/max_user_namespaces"), "15000\n").unwrap();
            std::fs::write(sys.path().join(file), format!("{value}\n")).unwrap();
            let message = userns_blocker(sys.path()).expect(file).to_string();
            assert!(message.contains(&format!("sysctl -w {fix}")), "{message}");
        }
        let sys = tempfile::tempdir().unwrap();
        mkdirs(sys.path(), &["kernel", "user"]);
        std::fs::write(sys.path().join("user/max_user_namespaces"), "15000\n").unwrap();
        std::fs::write(sys.path().join("kernel/unprivileged_userns_clone"), "1\n").unwrap();
        assert!(userns_blocker(sys.path()).is_none());
    }

    #[test]
    fn submounts_are_found_below_the_target_only() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
23 22 0:5 / /usr/local rw - tmpfs tmpfs rw
24 22 0:6 / /usr rw - tmpfs tmpfs rw
25 22 0:7 / /usrx rw - tmpfs tmpfs rw
";
        assert_eq!(submounts_below(info, Path::new("/usr")), vec!["/usr/local"]);
        assert!(submounts_below(info, Path::new("/etc")).is_empty());
    }
}
