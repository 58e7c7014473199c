//! pak's squashfs writer, checked from the outside: unsquashfs lists and
//! extracts it, the kernel mounts it, and both match the source tree.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use pak::image::squashfs::{self, Options, Tree};

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `diff -r`, minus its notes on special files it cannot compare when
/// both sides have the same type (fifo/fifo, device/device).
fn diff(a: &Path, b: &Path) -> String {
    let (_, out) = sh(&format!(
        "diff -r --no-dereference {} {}",
        a.display(),
        b.display()
    ));
    out.lines()
        .filter(|l| {
            let same_type = l
                .split_once(" is a ")
                .and_then(|(_, rest)| rest.split_once(" while file "))
                .is_some_and(|(t1, rest)| {
                    rest.split_once(" is a ").is_some_and(|(_, t2)| t1 == t2)
                });
            !same_type
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn sample(dir: &Path) {
    let w = |p: &str, data: &[u8]| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    w("a/b/c/deep.txt", b"deep\n");
    w("empty-file", b"");
    w("one-block", &vec![7u8; 128 * 1024]);
    let big: Vec<u8> = (0..1_000_003u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    w("multi-block.bin", &big);
    w("sparse", &vec![0u8; 3 * 128 * 1024 + 5]);
    for i in 0..300 {
        w(
            &format!("many/file-{i:03}"),
            format!("small file {i}\n").as_bytes(),
        );
    }
    std::os::unix::fs::symlink("a/b/c/deep.txt", dir.join("link")).unwrap();
    std::os::unix::fs::symlink("../../nowhere", dir.join("a/dangling")).unwrap();
    std::fs::hard_link(dir.join("a/b/c/deep.txt"), dir.join("hard")).unwrap();
    w("suid", b"#!/bin/sh\n");
    std::fs::set_permissions(dir.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    w("owned", b"x");
    std::os::unix::fs::chown(dir.join("owned"), Some(1234), Some(5678)).unwrap();
    assert!(
        sh(&format!(
            "mknod {} c 1 3 && mkfifo {}",
            dir.join("null").display(),
            dir.join("fifo").display()
        ))
        .0
    );
    let (ok, _) = sh(&format!(
        "setfattr -n user.test -v hello {}",
        dir.join("owned").display()
    ));
    assert!(ok, "setfattr (package attr) is needed");
    assert!(
        sh(&format!(
            "setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= {}",
            dir.join("suid").display()
        ))
        .0
    );
}

#[test]
fn matches_the_reference_tools_and_the_kernel() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    sample(&src);
    let tree = Tree::from_dir(&src).unwrap();
    let img = work.path().join("img.sqfs");
    let opts = Options {
        mtime: 1_700_000_000,
        ..Options::default()
    };
    squashfs::write(&tree, &img, &opts).unwrap();

    let (ok, listing) = sh(&format!("unsquashfs -lln {}", img.display()));
    assert!(ok, "{listing}");
    assert!(
        listing.contains("1234/5678") && listing.contains("-rwsr-xr-x"),
        "{listing}"
    );
    assert!(listing.contains("squashfs-root/many/file-299"), "{listing}");
    assert!(
        listing.contains("crw-r--r-- 0/0") && listing.contains("squashfs-root/null"),
        "{listing}"
    );

    let out = work.path().join("out");
    let (ok, msg) = sh(&format!(
        "unsquashfs -no-xattrs -d {} {}",
        out.display(),
        img.display()
    ));
    assert!(ok, "{msg}");
    let d = diff(&src, &out);
    assert!(d.is_empty(), "unsquashfs output differs:\n{d}");

    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (ok, msg) = sh(&format!(
        "mount -o loop,ro -t squashfs {} {}",
        img.display(),
        mnt.display()
    ));
    assert!(ok, "kernel mount failed: {msg}");
    let checks = (|| {
        let d = diff(&src, &mnt);
        assert!(d.is_empty(), "kernel view differs:\n{d}");
        let (ok, ls) = sh(&format!("ls -la {}", mnt.join("a/b").display()));
        assert!(
            ok && ls.contains(" ..\n")
                || ls.contains(" ..\r\n")
                || ls.lines().any(|l| l.ends_with(" ..")),
            "{ls}"
        );
        assert_eq!(std::fs::metadata(mnt.join("hard")).unwrap().nlink(), 2);
        assert_eq!(
            std::fs::metadata(mnt.join("a")).unwrap().nlink(),
            3,
            "2 + one subdirectory"
        );
        let (ok, attrs) = sh(&format!(
            "getfattr -d -m - {} {}",
            mnt.join("owned").display(),
            mnt.join("suid").display()
        ));
        assert!(
            ok && attrs.contains("user.test=\"hello\"") && attrs.contains("security.capability"),
            "{attrs}"
        );
        assert_eq!(
            std::fs::metadata(mnt.join("sparse")).unwrap().len(),
            3 * 128 * 1024 + 5
        );
        assert_eq!(
            std::fs::metadata(mnt.join("multi-block.bin"))
                .unwrap()
                .mtime(),
            1_700_000_000
        );
    })
    .let_unwind();
    sh(&format!("umount {}", mnt.display()));
    checks.unwrap();
}

trait LetUnwind {
    fn let_unwind(self) -> std::thread::Result<()>;
}

impl<F: FnOnce() + std::panic::UnwindSafe> LetUnwind for F {
    fn let_unwind(self) -> std::thread::Result<()> {
        std::panic::catch_unwind(self)
    }
}

#[test]
fn reproducible_across_threads_and_cache() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    sample(&src);
    let tree = Tree::from_dir(&src).unwrap();
    let cache = work.path().join("cache");
    let build = |name: &str, threads: usize, cache: Option<&Path>| {
        let p = work.path().join(name);
        let opts = Options {
            threads,
            cache: cache.map(Path::to_path_buf),
            ..Options::default()
        };
        let stats = squashfs::write(&tree, &p, &opts).unwrap();
        (std::fs::read(p).unwrap(), stats)
    };
    let (one, _) = build("1", 1, None);
    let (two, _) = build("2", 2, None);
    assert!(one == two, "thread count changed the bytes");
    let (cold, s1) = build("3", 2, Some(&cache));
    let (warm, s2) = build("4", 2, Some(&cache));
    assert!(one == cold && cold == warm, "the cache changed the bytes");
    assert_eq!(s1.cached_blocks, 0);
    assert!(
        s2.cached_blocks > 0 && s2.cached_blocks >= s2.data_blocks,
        "warm build reuses blocks: {s2:?}"
    );
}

/// Many blocks compressed at once on many threads: every cache entry must
/// hold its own block. (Threads once shared one temporary file name per
/// process, so one block's bytes could land under another's key, and the
/// next build from that cache wrote a corrupt image.)
#[test]
fn a_cache_filled_in_parallel_or_damaged_never_changes_the_bytes() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 48 MiB of distinct, poorly compressible blocks (xorshift noise).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = vec![0u8; 48 << 20];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(src.join("noise"), &data).unwrap();
    let tree = Tree::from_dir(&src).unwrap();
    let cache = work.path().join("cache");
    let build = |name: &str, cache: Option<&Path>| {
        let p = work.path().join(name);
        let opts = Options {
            threads: 8,
            cache: cache.map(Path::to_path_buf),
            ..Options::default()
        };
        squashfs::write(&tree, &p, &opts).unwrap();
        std::fs::read(p).unwrap()
    };
    let plain = build("plain", None);
    assert!(
        build("cold", Some(&cache)) == plain,
        "a cold cache changed the bytes"
    );
    assert!(
        build("warm", Some(&cache)) == plain,
        "a cache filled in parallel changed the bytes"
    );
    // A damaged cache (a truncated entry, another block's bytes) is noticed
    // and the block compressed again.
    let mut entries: Vec<_> = walk(&cache);
    entries.sort();
    assert!(entries.len() > 300, "{} cache entries", entries.len());
    std::fs::write(&entries[0], b"garbage").unwrap();
    std::fs::copy(&entries[2], &entries[1]).unwrap();
    assert!(
        build("damaged", Some(&cache)) == plain,
        "a damaged cache changed the bytes"
    );

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
