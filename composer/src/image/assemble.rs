//! Assembling package trees into one root tree, in memory.
//!
//! The result is a description (path → node), not a directory: file
//! contents stay in the store and are read once, by the squashfs writer.
//! That keeps a build unprivileged (ownership and modes come from the
//! packages' BOMs, not from what the building user could write) and cheap.
//!
//! Images are merged-/usr: a package's `bin/x` lands at `usr/bin/x`, and
//! `/bin`, `/sbin`, `/lib`, `/lib64` are symlinks into `/usr`, as on Debian
//! since bookworm's successor and every current distribution.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::packages::paths::{MERGED, canonical};

/// What a package ships at one path, as its BOM says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkgEntry {
    /// Relative, `/`-separated, no leading `/` (e.g. `usr/bin/x`).
    pub path: String,
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// How the assembled root knows a regular file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A package's file in the store, with its sha256 (to tell equal files
    /// apart from conflicting ones without reading them).
    Stored {
        source: PathBuf,
        size: u64,
        sha256: String,
    },
    /// Bytes pak writes itself (configuration, its own description).
    Data(Vec<u8>),
}

/// What a path of the assembled root is; a hard link names the (already
/// canonical) path whose inode it shares.
pub type NodeKind = crate::packages::file::FileKind<Content>;

/// A file of bytes pak writes itself.
pub fn data(bytes: Vec<u8>) -> NodeKind {
    NodeKind::File(Content::Data(bytes))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The package that put it there (`pak` for pak's own files).
    pub owner: String,
}

/// The assembled root: canonical relative path → node. `BTreeMap` keeps
/// paths sorted, so every consumer sees one order.
#[derive(Debug, Default, Clone)]
pub struct RootTree {
    pub nodes: BTreeMap<String, Node>,
}

/// A relative symlink keeps pointing where it pointed when its own
/// directory moved (`lib/x/libfoo.so -> ../../usr/lib/...`): the target is
/// resolved from the link's original place, canonicalised, and made
/// relative to the link's new place.
fn retarget(orig_path: &str, new_path: &str, target: &str) -> String {
    if target.starts_with('/') || parent(orig_path) == parent(new_path) {
        return target.to_string();
    }
    let mut parts: Vec<&str> = parent(orig_path)
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let abs = canonical(&parts.join("/"));
    relative(parent(new_path), &abs)
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

fn relative(from_dir: &str, to: &str) -> String {
    let from: Vec<&str> = from_dir.split('/').filter(|s| !s.is_empty()).collect();
    let to_parts: Vec<&str> = to.split('/').filter(|s| !s.is_empty()).collect();
    let common = from
        .iter()
        .zip(&to_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let mut out: Vec<&str> = vec![".."; from.len() - common];
    out.extend(&to_parts[common..]);
    if out.is_empty() {
        ".".into()
    } else {
        out.join("/")
    }
}

impl RootTree {
    /// Adds one package's entries. Two packages may share directories and
    /// identical files or links; anything else at the same path is a
    /// conflict, reported with both package names.
    pub fn add_package(&mut self, package: &str, entries: &[PkgEntry]) -> Result<()> {
        let _timed = crate::util::timings::enter(crate::util::timings::Step::Assemble);
        for e in entries {
            let path = canonical(&e.path);
            if path.is_empty() {
                continue;
            }
            let kind = match &e.kind {
                NodeKind::Symlink(t) => NodeKind::Symlink(retarget(&e.path, &path, t)),
                NodeKind::HardLink(to) => NodeKind::HardLink(canonical(to)),
                other => other.clone(),
            };
            let node = Node {
                kind,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                owner: package.to_string(),
            };
            self.ensure_parents(&path, package);
            match self.nodes.get(&path) {
                None => {
                    self.nodes.insert(path, node);
                }
                Some(old) if same(old, &node) => {}
                // merged-/usr: a package's `bin/` directory meets the `usr/bin` directory.
                Some(old)
                    if matches!(old.kind, NodeKind::Dir) && matches!(node.kind, NodeKind::Dir) => {}
                Some(old) => bail!(
                    "packages {} and {} both ship /{path} with different content; they cannot be installed together (remove one from the Pakfile, or pin versions that agree)",
                    old.owner,
                    package
                ),
            }
        }
        Ok(())
    }

    /// Adds or replaces a node pak itself provides (configuration files,
    /// its own metadata): the Pakfile's word wins over a package default.
    pub fn put(&mut self, path: &str, kind: NodeKind, mode: u32, uid: u32, gid: u32) {
        let path = canonical(path);
        self.ensure_parents(&path, "pak");
        self.nodes.insert(
            path,
            Node {
                kind,
                mode,
                uid,
                gid,
                owner: "pak".into(),
            },
        );
    }

    /// Creates missing parent directories (root-owned, 0755). It climbs
    /// from the nearest parent and stops at the first one present, so a
    /// path whose parents exist (the usual case: a BOM lists directories
    /// first) costs one lookup, not one per level; a tree thousands of
    /// levels deep stays linear, not quadratic, in its path lengths.
    fn ensure_parents(&mut self, path: &str, owner: &str) {
        let mut missing = Vec::new();
        let mut cur = parent(path);
        while !cur.is_empty() && !self.nodes.contains_key(cur) {
            missing.push(cur);
            cur = parent(cur);
        }
        for dir in missing.into_iter().rev() {
            self.nodes.insert(
                dir.to_string(),
                Node {
                    kind: NodeKind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    owner: owner.to_string(),
                },
            );
        }
    }

    /// The merged-/usr links and the mount points /init and init need.
    pub fn add_skeleton(&mut self) {
        for (from, to) in MERGED {
            // Inserted as is: `canonical` would map the link's own path into /usr.
            let link = Node {
                kind: NodeKind::Symlink(to.to_string()),
                mode: 0o777,
                uid: 0,
                gid: 0,
                owner: "pak".into(),
            };
            self.nodes.insert(from.to_string(), link);
            self.put(to, NodeKind::Dir, 0o755, 0, 0);
        }
        for dir in [
            "proc",
            "sys",
            "dev",
            "run",
            "tmp",
            "var",
            "home",
            "etc",
            "root",
            "mnt",
            "srv",
            "usr/local",
        ] {
            if !matches!(self.nodes.get(dir).map(|n| &n.kind), Some(NodeKind::Dir)) {
                let mode = match dir {
                    "tmp" => 0o1777,
                    "root" => 0o700,
                    _ => 0o755,
                };
                self.put(dir, NodeKind::Dir, mode, 0, 0);
            }
        }
    }

    /// `/var` lives on the data partition, which hides whatever the image
    /// has there; what packages ship under `var/` moves to
    /// `usr/share/factory/var`, and boot copies what is missing into place.
    pub fn move_var_to_factory(&mut self) {
        let moved: Vec<(String, Node)> = self
            .nodes
            .range("var/".to_string()..)
            .take_while(|(p, _)| p.starts_with("var/"))
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect();
        for (path, _) in &moved {
            self.nodes.remove(path);
        }
        for (path, mut node) in moved {
            let new = format!("usr/share/factory/{path}");
            if let NodeKind::HardLink(to) = &node.kind
                && let Some(rest) = to.strip_prefix("var/")
            {
                node.kind = NodeKind::HardLink(format!("usr/share/factory/var/{rest}"));
            }
            self.ensure_parents(&new, "pak");
            self.nodes.insert(new, node);
        }
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(&canonical(path))
    }

    /// Follows symlinks (within the tree) to the node a path names.
    pub fn resolve(&self, path: &str) -> Option<(String, &Node)> {
        let mut cur = canonical(path);
        for _ in 0..40 {
            let node = self.nodes.get(&cur)?;
            match &node.kind {
                NodeKind::Symlink(t) => {
                    let joined = if t.starts_with('/') {
                        t.clone()
                    } else {
                        format!("{}/{t}", parent(&cur))
                    };
                    cur = normalize(&joined);
                }
                _ => return Some((cur, node)),
            }
        }
        None
    }
}

fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    canonical(&parts.join("/"))
}

fn same(a: &Node, b: &Node) -> bool {
    let kinds = match (&a.kind, &b.kind) {
        (
            NodeKind::File(Content::Stored { sha256: x, .. }),
            NodeKind::File(Content::Stored { sha256: y, .. }),
        ) => x == y,
        (x, y) => x == y,
    };
    kinds && a.mode == b.mode && a.uid == b.uid && a.gid == b.gid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, sha: &str) -> PkgEntry {
        PkgEntry {
            path: path.into(),
            kind: NodeKind::File(Content::Stored {
                source: PathBuf::from("/x"),
                size: 1,
                sha256: sha.into(),
            }),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    fn link(path: &str, target: &str) -> PkgEntry {
        PkgEntry {
            path: path.into(),
            kind: NodeKind::Symlink(target.into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn merged_usr_paths() {
        assert_eq!(canonical("bin/sh"), "usr/bin/sh");
        assert_eq!(canonical("/lib64/ld.so"), "usr/lib64/ld.so");
        assert_eq!(canonical("binx/a"), "binx/a");
        assert_eq!(canonical("usr/bin/a"), "usr/bin/a");
        assert_eq!(
            retarget("lib/x/libf.so", "usr/lib/x/libf.so", "libf.so.1"),
            "libf.so.1"
        );
        assert_eq!(
            retarget("sbin/foo", "usr/sbin/foo", "../usr/bin/foo"),
            "../bin/foo"
        );
        assert_eq!(
            retarget("sbin/foo", "usr/sbin/foo", "../bin/busybox"),
            "../bin/busybox"
        );
        assert_eq!(
            retarget("lib/a/b", "usr/lib/a/b", "/usr/lib/c"),
            "/usr/lib/c"
        );
    }

    #[test]
    fn shared_identical_files_are_fine_conflicts_are_named() {
        let mut t = RootTree::default();
        t.add_package("a", &[file("usr/share/x", "11"), link("bin/sh", "busybox")])
            .unwrap();
        t.add_package(
            "b",
            &[file("usr/share/x", "11"), file("usr/bin/other", "22")],
        )
        .unwrap();
        let err = t
            .add_package("c", &[file("bin/other", "33")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("packages b and c") && err.contains("/usr/bin/other"),
            "{err}"
        );
        assert!(matches!(t.get("usr").unwrap().kind, NodeKind::Dir));
        assert!(
            t.resolve("/bin/sh").is_none(),
            "dangling: busybox is not in the tree"
        );
        t.add_package("d", &[file("bin/busybox", "44")]).unwrap();
        assert_eq!(t.resolve("/bin/sh").unwrap().0, "usr/bin/busybox");
    }

    #[test]
    fn a_tree_thousands_deep_assembles_in_linear_time_on_a_small_stack() {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                let mut entries = Vec::new();
                let mut path = String::from("usr/share/deep");
                for _ in 0..5000 {
                    path.push_str("/d");
                    entries.push(PkgEntry {
                        path: path.clone(),
                        kind: NodeKind::Dir,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    });
                }
                // Only the bottom file: every parent is made for it.
                let mut t = RootTree::default();
                t.add_package("deep", &[file(&format!("{path}/bottom"), "1")])
                    .unwrap();
                assert_eq!(t.nodes.len(), 5000 + 4);
                let mut u = RootTree::default();
                u.add_package("deep", &entries).unwrap();
                u.add_package("deep", &[file(&format!("{path}/bottom"), "1")])
                    .unwrap();
                assert_eq!(
                    u.nodes.keys().collect::<Vec<_>>(),
                    t.nodes.keys().collect::<Vec<_>>()
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn skeleton_and_factory_var() {
        let mut t = RootTree::default();
        t.add_package("n", &[file("var/lib/n/state", "1"), file("usr/bin/n", "2")])
            .unwrap();
        t.add_skeleton();
        t.move_var_to_factory();
        assert!(t.get("usr/share/factory/var/lib/n/state").is_some());
        assert!(t.get("var/lib/n/state").is_none());
        assert!(matches!(t.get("var").unwrap().kind, NodeKind::Dir));
        assert_eq!(t.nodes["bin"].kind, NodeKind::Symlink("usr/bin".into()));
        assert_eq!(t.resolve("bin/n").unwrap().0, "usr/bin/n");
    }
}
