//! `/etc/ld.so.cache`, as `ldconfig` would write it (glibc's format
//! "glibc-ld.so.cache1.1"), computed from the assembled root.
//!
//! Debian's dynamic linker also searches its multiarch directories without
//! a cache; the cache makes lookups fast and covers the directories that
//! packages add in `/etc/ld.so.conf.d`.

use std::cmp::Ordering;

use crate::image::assemble::{Content, NodeKind, RootTree};

const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
/// libc6 library, x86-64.
const FLAG_X86_64_LIBC6: i32 = 0x0303;
const ENDIAN_LITTLE: u8 = 2;
const HEADER: usize = 48;
const ENTRY: usize = 24;

/// glibc's `_dl_cache_libcmp`: runs of digits compare as numbers.
fn libcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() {
        if a[i].is_ascii_digit() {
            if j < b.len() && b[j].is_ascii_digit() {
                let (mut v1, mut v2) = (0u64, 0u64);
                while i < a.len() && a[i].is_ascii_digit() {
                    v1 = v1 * 10 + (a[i] - b'0') as u64;
                    i += 1;
                }
                while j < b.len() && b[j].is_ascii_digit() {
                    v2 = v2 * 10 + (b[j] - b'0') as u64;
                    j += 1;
                }
                if v1 != v2 {
                    return v1.cmp(&v2);
                }
            } else {
                return Ordering::Greater;
            }
        } else if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        } else if j >= b.len() || a[i] != b[j] {
            return a[i].cmp(b.get(j).unwrap_or(&0));
        } else {
            i += 1;
            j += 1;
        }
    }
    0u8.cmp(b.get(j).unwrap_or(&0))
}

/// The library directories: the multiarch defaults plus what
/// `/etc/ld.so.conf.d/*.conf` in the image names.
fn directories(tree: &RootTree) -> Vec<String> {
    let mut dirs = vec![
        "usr/lib/x86_64-linux-gnu".to_string(),
        "usr/lib".to_string(),
        "usr/lib64".to_string(),
    ];
    for (path, node) in tree.nodes.range("etc/ld.so.conf.d/".to_string()..) {
        if !path.starts_with("etc/ld.so.conf.d/") {
            break;
        }
        let text = match &node.kind {
            NodeKind::File(Content::Stored { source, .. }) => {
                std::fs::read_to_string(source).unwrap_or_default()
            }
            NodeKind::File(Content::Data(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => continue,
        };
        for line in text.lines().map(str::trim).filter(|l| l.starts_with('/')) {
            let d = crate::packages::paths::canonical(line.trim_end_matches('/'));
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    dirs
}

/// The cache for this root, or `None` when it has no C library.
pub fn build(tree: &RootTree) -> Option<Vec<u8>> {
    tree.resolve("usr/lib/x86_64-linux-gnu/libc.so.6")?;
    let mut libs: Vec<(String, String)> = Vec::new();
    for dir in directories(tree) {
        let prefix = format!("{dir}/");
        for (path, _) in tree.nodes.range(prefix.clone()..) {
            let Some(name) = path.strip_prefix(&prefix) else {
                break;
            };
            if name.contains('/') || !name.starts_with("lib") || !name.contains(".so.") {
                continue;
            }
            if matches!(tree.resolve(path), Some((_, n)) if matches!(n.kind, NodeKind::File(Content::Stored { .. }) | NodeKind::File(Content::Data(_))))
            {
                libs.push((name.to_string(), format!("/{path}")));
            }
        }
    }
    // ld.so binary-searches entries sorted descending by libcmp; the first
    // directory's copy of a name wins, as with ldconfig.
    let mut seen = std::collections::HashSet::new();
    libs.retain(|(n, _)| seen.insert(n.clone()));
    libs.sort_by(|a, b| libcmp(&b.0, &a.0).then_with(|| a.1.cmp(&b.1)));

    let strings_start = HEADER + ENTRY * libs.len();
    let mut strings = Vec::new();
    let mut entries = Vec::new();
    for (key, value) in &libs {
        let k = strings_start + strings.len();
        strings.extend(key.as_bytes());
        strings.push(0);
        let v = strings_start + strings.len();
        strings.extend(value.as_bytes());
        strings.push(0);
        entries.extend(FLAG_X86_64_LIBC6.to_le_bytes());
        entries.extend((k as u32).to_le_bytes());
        entries.extend((v as u32).to_le_bytes());
        entries.extend(0u32.to_le_bytes());
        entries.extend(0u64.to_le_bytes());
    }
    let mut out = Vec::with_capacity(strings_start + strings.len());
    out.extend(MAGIC);
    out.extend((libs.len() as u32).to_le_bytes());
    out.extend((strings.len() as u32).to_le_bytes());
    out.push(ENDIAN_LITTLE);
    out.extend([0u8; 3]);
    out.extend(0u32.to_le_bytes());
    out.extend([0u8; 12]);
    debug_assert_eq!(out.len(), HEADER);
    out.extend(entries);
    out.extend(strings);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::assemble::PkgEntry;
    use std::path::PathBuf;

    fn file(path: &str) -> PkgEntry {
        PkgEntry {
            path: path.into(),
            kind: NodeKind::File(Content::Stored {
                source: PathBuf::from("/dev/null"),
                size: 0,
                sha256: path.into(),
            }),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn order_is_glibcs() {
        assert_eq!(libcmp("libc.so.10", "libc.so.9"), Ordering::Greater);
        assert_eq!(libcmp("libc.so.6", "libc.so.6"), Ordering::Equal);
        assert_eq!(libcmp("liba.so", "libb.so"), Ordering::Less);
    }

    #[test]
    fn ldconfig_reads_it() {
        let mut t = RootTree::default();
        t.add_package(
            "libc6",
            &[
                file("lib/x86_64-linux-gnu/libc.so.6"),
                file("usr/lib/x86_64-linux-gnu/libz.so.1.2.13"),
                file("opt/x/lib/libx.so.2"),
            ],
        )
        .unwrap();
        t.put(
            "usr/lib/x86_64-linux-gnu/libz.so.1",
            NodeKind::Symlink("libz.so.1.2.13".into()),
            0o777,
            0,
            0,
        );
        t.put(
            "etc/ld.so.conf.d/x.conf",
            crate::image::assemble::data(b"/opt/x/lib\n".to_vec()),
            0o644,
            0,
            0,
        );
        let cache = build(&t).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ld.so.cache");
        std::fs::write(&p, &cache).unwrap();
        let Ok(out) = std::process::Command::new("/sbin/ldconfig")
            .arg("-p")
            .arg("-C")
            .arg(&p)
            .output()
        else {
            eprintln!("no ldconfig on this host; skipping the cross-check");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("4 libs found in cache"), "{text}");
        assert!(
            text.contains("libz.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libz.so.1"),
            "{text}"
        );
        assert!(
            text.contains("libx.so.2 (libc6,x86-64) => /opt/x/lib/libx.so.2"),
            "{text}"
        );
    }
}
