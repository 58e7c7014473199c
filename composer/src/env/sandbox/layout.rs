//! Which overlays to mount: from the trees' top-level directories and the
//! host's own layout and mounts to a list of targets and layers. Pure
//! planning over the file system, so it is tested without privileges and
//! runs before anything is forked.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use super::{Lower, SandboxError};

/// Top-level directories that hold the machine's state or kernel interfaces.
/// Overlaying them would hide the live contents or make them read-only.
const RUNTIME_DIRS: &[&str] = &[
    "boot",
    "dev",
    "home",
    "lost+found",
    "media",
    "mnt",
    "proc",
    "root",
    "run",
    "srv",
    "sys",
    "tmp",
    "var",
];

/// One overlay mounted in place over a host directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The host directory covered, e.g. `/usr`; also the lowest layer.
    pub target: PathBuf,
    /// Tree directories stacked over it, topmost first.
    pub layers: Vec<PathBuf>,
}

/// What the sandbox will mount, in mount order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub overlays: Vec<Overlay>,
    /// Tree directories left out because they hold runtime state (`var`, `run`, ...).
    pub skipped: Vec<PathBuf>,
}

/// Decide which overlays to mount. `host_root` is `/` and `mounts` this
/// namespace's mount points, except in tests.
pub(super) fn plan_layout(
    lowers: &[Lower],
    host_root: &Path,
    mounts: &[PathBuf],
) -> Result<Layout, SandboxError> {
    let mut wanted: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for lower in lowers {
        let tree = std::path::absolute(&lower.path).map_err(|source| SandboxError::Tree {
            path: lower.path.clone(),
            source,
        })?;
        for dir in top_level_dirs(&tree)? {
            let layer = tree.join(&dir);
            if RUNTIME_DIRS.contains(&dir.as_str()) {
                skipped.push(layer);
                continue;
            }
            let target = host_target(host_root, &tree, &dir)?;
            wanted.entry(target).or_default().push(layer);
        }
    }
    // BTreeMap orders paths component-wise, so `/usr` is mounted before
    // `/usr/bin` and the second overlay stacks on the first.
    let mut placed: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for (target, layers) in wanted {
        place(target, layers, host_root, mounts, &mut placed)?;
    }
    let overlays = placed
        .into_iter()
        .map(|(target, mut layers)| {
            layers.reverse();
            Overlay { target, layers }
        })
        .collect();
    Ok(Layout { overlays, skipped })
}

/// Assign `layers` (bottom first) to overlays. An overlay takes the
/// directory it covers without the mounts beneath it: inside a user
/// namespace the kernel refuses it outright, and as root it would hide them.
/// So a directory with mounts below is covered one subdirectory at a time.
fn place(
    target: PathBuf,
    layers: Vec<PathBuf>,
    host_root: &Path,
    mounts: &[PathBuf],
    placed: &mut BTreeMap<PathBuf, Vec<PathBuf>>,
) -> Result<(), SandboxError> {
    let below: Vec<&PathBuf> = mounts
        .iter()
        .filter(|m| *m != &target && m.starts_with(&target))
        .collect();
    if below.is_empty() {
        placed.entry(target).or_default().extend(layers);
        return Ok(());
    }
    let refuse = |path: PathBuf, reason: &'static str| SandboxError::Submounts {
        path,
        target: target.clone(),
        mounts: below
            .iter()
            .map(|m| m.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        reason,
    };
    let mut children: BTreeMap<OsString, Vec<PathBuf>> = BTreeMap::new();
    for layer in layers {
        for entry in sorted_entries(&layer)? {
            let path = layer.join(&entry);
            let is_dir = std::fs::symlink_metadata(&path)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if !is_dir {
                return Err(refuse(path, "only directories can be overlaid one by one"));
            }
            children.entry(entry).or_default().push(path);
        }
    }
    for (name, layers) in children {
        let child = target.join(&name);
        let relative = child.strip_prefix("/").unwrap_or(&child);
        let host_has_it = std::fs::symlink_metadata(host_root.join(relative))
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if !host_has_it {
            return Err(refuse(
                layers[0].clone(),
                "the system has no such directory to cover",
            ));
        }
        place(child, layers, host_root, mounts, placed)?;
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<OsString>, SandboxError> {
    let tree_err = |source| SandboxError::Tree {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = std::fs::read_dir(dir)
        .map_err(tree_err)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(tree_err)?;
    names.sort();
    Ok(names)
}

/// Mount points from /proc/self/mountinfo text, with the kernel's octal
/// escapes (`\040` for a space) undone.
pub(super) fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape_octal(field))))
        .collect()
}

fn unescape_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match escape {
            Some(digits) => {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

pub(super) fn current_mount_points() -> Vec<PathBuf> {
    // Unreadable mountinfo (no /proc) leaves the kernel to report conflicts.
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| mount_points(&info))
        .unwrap_or_default()
}

/// The tree's real top-level directories, sorted. Dot entries (`.PAKINFO`)
/// and top-level files or symlinks are packaging metadata, not content.
fn top_level_dirs(tree: &Path) -> Result<Vec<String>, SandboxError> {
    let tree_err = |source| SandboxError::Tree {
        path: tree.to_path_buf(),
        source,
    };
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(tree).map_err(tree_err)? {
        let entry = entry.map_err(tree_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !entry.file_type().map_err(tree_err)?.is_dir() {
            continue;
        }
        dirs.push(name.to_string());
    }
    dirs.sort();
    Ok(dirs)
}

/// Where the tree's top-level `dir` goes: the host's `/dir`, or where the
/// host's `/dir` symlink points (merged /usr).
fn host_target(host_root: &Path, tree: &Path, dir: &str) -> Result<PathBuf, SandboxError> {
    let missing = || SandboxError::NoSuchSystemDir {
        tree: tree.to_path_buf(),
        dir: dir.to_string(),
    };
    let host = host_root.join(dir);
    let meta = std::fs::symlink_metadata(&host).map_err(|_| missing())?;
    if meta.is_dir() {
        return Ok(Path::new("/").join(dir));
    }
    if !meta.file_type().is_symlink() {
        return Err(missing());
    }
    let link = std::fs::read_link(&host).map_err(|_| missing())?;
    let target = normalize_in_root(&link).ok_or_else(missing)?;
    let relative = target.strip_prefix("/").unwrap_or(&target);
    match std::fs::symlink_metadata(host_root.join(relative)) {
        Ok(meta) if meta.is_dir() => Ok(target),
        _ => Err(missing()),
    }
}

/// A top-level symlink's target as an absolute path, resolved against `/`.
fn normalize_in_root(link: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for component in link.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::Prefix(_) => return None,
        }
    }
    (out != Path::new("/")).then_some(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    pub(in crate::env::sandbox) fn mkdirs(root: &Path, dirs: &[&str]) {
        for dir in dirs {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
    }

    /// A merged-/usr host: /bin -> usr/bin, /lib64 -> /usr/lib64 (absolute).
    fn fake_host() -> tempfile::TempDir {
        let host = tempfile::tempdir().unwrap();
        mkdirs(
            host.path(),
            &["usr/bin", "usr/lib64", "usr/sbin", "etc", "opt", "var"],
        );
        symlink("usr/bin", host.path().join("bin")).unwrap();
        symlink("/usr/lib64", host.path().join("lib64")).unwrap();
        symlink("usr/nowhere", host.path().join("dangling")).unwrap();
        host
    }

    #[test]
    fn later_trees_stack_on_top_and_bin_folds_into_usr() {
        let host = fake_host();
        let trees = tempfile::tempdir().unwrap();
        let a = trees.path().join("a");
        let b = trees.path().join("b");
        mkdirs(&a, &["usr/bin", "etc/a", "bin", "var/lib/a"]);
        mkdirs(&b, &["usr/share", "lib64", ".meta"]);
        std::fs::write(a.join(".PAKINFO"), "x").unwrap();
        std::fs::write(b.join("README"), "x").unwrap();
        let layout = plan_layout(&[Lower::new(&a), Lower::new(&b)], host.path(), &[]).unwrap();
        let overlay = |target: &str, layers: Vec<PathBuf>| Overlay {
            target: PathBuf::from(target),
            layers,
        };
        assert_eq!(
            layout.overlays,
            vec![
                overlay("/etc", vec![a.join("etc")]),
                overlay("/usr", vec![b.join("usr"), a.join("usr")]),
                overlay("/usr/bin", vec![a.join("bin")]),
                overlay("/usr/lib64", vec![b.join("lib64")]),
            ]
        );
        assert_eq!(layout.skipped, vec![a.join("var")]);
    }

    #[test]
    fn a_directory_the_host_lacks_is_refused_by_name() {
        let host = fake_host();
        let trees = tempfile::tempdir().unwrap();
        mkdirs(trees.path(), &["t/nix/store", "u/dangling"]);
        for (tree, dir) in [("t", "nix"), ("u", "dangling")] {
            let err =
                plan_layout(&[Lower::new(trees.path().join(tree))], host.path(), &[]).unwrap_err();
            let message = err.to_string();
            assert!(message.contains(&format!("provides /{dir}")), "{message}");
            assert_eq!(err.exit_code(), 125);
        }
    }

    #[test]
    fn a_missing_tree_is_named() {
        let err =
            plan_layout(&[Lower::new("/nonexistent/pak-tree")], Path::new("/"), &[]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pak-tree"), "{err}");
    }

    #[test]
    fn symlink_targets_resolve_against_the_root() {
        assert_eq!(
            normalize_in_root(Path::new("usr/bin")),
            Some("/usr/bin".into())
        );
        assert_eq!(
            normalize_in_root(Path::new("/usr/lib64")),
            Some("/usr/lib64".into())
        );
        assert_eq!(
            normalize_in_root(Path::new("../../usr/./sbin")),
            Some("/usr/sbin".into())
        );
        assert_eq!(normalize_in_root(Path::new("..")), None);
    }

    #[test]
    fn a_directory_with_mounts_below_is_covered_subdirectory_by_subdirectory() {
        let host = fake_host();
        mkdirs(host.path(), &["usr/local", "usr/share"]);
        let trees = tempfile::tempdir().unwrap();
        let a = trees.path().join("a");
        mkdirs(
            &a,
            &["usr/bin", "usr/share/doc", "usr/local/lib", "bin", "etc"],
        );
        let mounts = [PathBuf::from("/"), PathBuf::from("/usr/local")];
        let layout = plan_layout(&[Lower::new(&a)], host.path(), &mounts).unwrap();
        let targets: Vec<_> = layout.overlays.iter().map(|o| o.target.clone()).collect();
        assert_eq!(
            targets,
            ["/etc", "/usr/bin", "/usr/local", "/usr/share"].map(PathBuf::from)
        );
        // The fold joins the split overlay of /usr/bin, above usr/bin.
        assert_eq!(
            layout.overlays[1].layers,
            [a.join("bin"), a.join("usr/bin")]
        );
    }

    #[test]
    fn what_cannot_be_split_around_a_mount_is_refused_by_name() {
        let host = fake_host();
        mkdirs(host.path(), &["usr/local"]);
        let trees = tempfile::tempdir().unwrap();
        let files = trees.path().join("files");
        mkdirs(&files, &["usr"]);
        std::fs::write(files.join("usr/stray"), "x").unwrap();
        let newdir = trees.path().join("newdir");
        mkdirs(&newdir, &["usr/games"]);
        let mounts = [PathBuf::from("/usr/local")];
        for (tree, path, reason) in [
            (&files, files.join("usr/stray"), "only directories"),
            (&newdir, newdir.join("usr/games"), "no such directory"),
        ] {
            let err = plan_layout(&[Lower::new(tree)], host.path(), &mounts).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with(&path.display().to_string()),
                "{message}"
            );
            assert!(
                message.contains("/usr has mounts beneath it (/usr/local)"),
                "{message}"
            );
            assert!(message.contains(reason), "{message}");
        }
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        let info = "36 35 98:0 / /mnt/with\\040space rw - ext3 /dev/root rw\n\
                    37 35 98:0 / /plain\\ rw - ext3 /dev/root rw\n";
        assert_eq!(
            mount_points(info),
            [PathBuf::from("/mnt/with space"), PathBuf::from("/plain\\")]
        );
    }
}
