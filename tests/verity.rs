//! dm-verity roots without booting: the tree pak writes behind every
//! generation is the one the kernel's dm-verity (and `veritysetup`, which
//! only checks here) computes; the same input gives the same bytes; a
//! generation file whose tree or data was changed is refused by `switch`
//! with the disk unchanged; `pak system verify` names a changed block in a
//! slot. `e2e_verity.rs` boots one.

mod common;

use common::{StandInGen as Gen, patterned};

use std::path::{Path, PathBuf};
use std::process::Command;

use pak::image::generation;
use pak::image::squashfs::{self, Entry, Kind, Source, Tree};
use pak::image::verity;

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;

fn entry(kind: Kind) -> Entry {
    Entry {
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        xattrs: vec![],
    }
}

/// A generation whose squashfs is large enough (over 128 data blocks) for
/// a tree of two levels: incompressible content.
fn generation(dir: &Path, number: u64) -> Gen {
    let kernel = patterned(20_000, number);
    let initrd = patterned(30_000, number + 100);
    let meta = common::stand_in_meta(number, vec![]);
    let mut t = Tree::default();
    for d in ["", "boot", "usr", "usr/lib", "usr/lib/pak", "srv"] {
        let mut e = entry(Kind::Dir);
        e.mode = 0o755;
        t.entries.insert(d.into(), e);
    }
    let file = |b: Vec<u8>| entry(Kind::File(Source::Bytes(b)));
    t.entries
        .insert("boot/vmlinuz-6.1".into(), file(kernel.clone()));
    t.entries
        .insert(generation::INITRD_FILE.into(), file(initrd.clone()));
    t.entries.insert(
        generation::META_FILE.into(),
        file(meta.to_toml().into_bytes()),
    );
    t.entries
        .insert("srv/blob".into(), file(patterned(800_000, number + 7)));
    let path = dir.join(format!("gen{number}.sqfs"));
    squashfs::write(&t, &path, &squashfs::Options::default()).unwrap();
    generation::seal(&path).unwrap();
    Gen {
        meta,
        kernel,
        initrd,
        path,
    }
}

fn layout() -> pak::disk::Layout {
    pak::disk::Layout::new(Some(120 * MIB), Some(40 * MIB), Some(4 * MIB)).unwrap()
}

/// A disk whose slot a holds `g`, its entry marked good, as `pak build`
/// writes it: the root hash in the entry and the description.
fn disk_with(dir: &Path, g: &Gen) -> PathBuf {
    common::stand_in_disk(dir, g, &layout())
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn sha256_of(p: &Path) -> String {
    pak::util::fsutil::sha256_hex(&std::fs::read(p).unwrap())
}

fn flip(path: &Path, at: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[at as usize] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

/// `veritysetup verify` over the generation file, with the geometry the
/// loader entry gives the kernel.
fn veritysetup_verify(path: &Path, v: &pak_boot::verity::Verity) -> std::process::Output {
    Command::new("veritysetup")
        .args([
            "verify",
            "--no-superblock",
            "--format=1",
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
        ])
        .arg(format!("--data-blocks={}", v.data_blocks))
        .arg(format!("--hash-offset={}", v.data_blocks * BLOCK))
        .arg(format!("--salt={}", v.salt))
        .arg(path)
        .arg(path)
        .arg(&v.root_hash)
        .output()
        .expect("veritysetup (Debian's cryptsetup-bin, in tools/packages.txt) must be installed")
}

#[test]
fn veritysetup_accepts_the_tree_and_refuses_a_changed_block() {
    let tmp = tempfile::tempdir().unwrap();
    let g = generation(tmp.path(), 1);
    let v = verity::root_of(&g.path).unwrap();
    assert!(
        v.data_blocks > 128,
        "two tree levels: {} blocks",
        v.data_blocks
    );
    let out = veritysetup_verify(&g.path, &v);
    assert!(
        out.status.success(),
        "veritysetup refused pak's tree: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The salt and data block count are what veritysetup checked against:
    // a different root or a changed data block fails it.
    flip(&g.path, 150 * BLOCK + 9);
    assert!(!veritysetup_verify(&g.path, &v).status.success());
}

#[test]
fn the_same_input_gives_the_same_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ga = generation(a.path(), 3);
    let gb = generation(b.path(), 3);
    assert_eq!(sha256_of(&ga.path), sha256_of(&gb.path));
    let root = verity::root_hash_of(&ga.path).unwrap();
    assert_eq!(root.len(), 64);
    // Sealing again (a rebuild over the same file) gives the same bytes.
    generation::seal(&ga.path).unwrap();
    assert_eq!(sha256_of(&ga.path), sha256_of(&gb.path));
    // Another generation gets another salt, so another root.
    let other = generation(a.path(), 4);
    let (v3, v4) = (
        verity::root_of(&ga.path).unwrap(),
        verity::root_of(&other.path).unwrap(),
    );
    assert_ne!(v3.salt, v4.salt);
    assert_ne!(v3.root_hash, v4.root_hash);
}

#[test]
fn switch_refuses_a_changed_tree_or_data_block_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let g1 = generation(tmp.path(), 1);
    let g2 = generation(tmp.path(), 2);
    let img = disk_with(tmp.path(), &g1);
    let before = sha256_of(&img);
    let v = verity::root_of(&g2.path).unwrap();
    let pristine = std::fs::read(&g2.path).unwrap();
    let tree_at = v.data_blocks * BLOCK;
    for (what, at, says) in [
        (
            "a hash tree block",
            tree_at + BLOCK + 40,
            "hash tree does not match its content",
        ),
        (
            "the root hash in the trailer",
            pristine.len() as u64 - BLOCK + 50,
            "hash tree does not match its content",
        ),
        (
            "a data block",
            100 * BLOCK + 3,
            "does not match the sha256 sealed into it",
        ),
    ] {
        std::fs::write(&g2.path, &pristine).unwrap();
        flip(&g2.path, at);
        let err = common::pak(["system", "switch", "--disk", &s(&img), &s(&g2.path)]).fails();
        assert!(err.contains(says), "{what}: {err}");
        assert_eq!(sha256_of(&img), before, "{what}: the disk was written");
    }
    // Cut inside its tree: incomplete, not old.
    std::fs::write(&g2.path, &pristine[..pristine.len() - 5000]).unwrap();
    let err = common::pak(["system", "switch", "--disk", &s(&img), &s(&g2.path)]).fails();
    assert!(err.contains("inside its dm-verity hash tree"), "{err}");
    assert_eq!(sha256_of(&img), before);
    // A file from a pak before verity roots: the squashfs and seal alone.
    std::fs::write(&g2.path, &pristine[..(v.data_blocks * BLOCK) as usize]).unwrap();
    let err = common::pak(["system", "switch", "--disk", &s(&img), &s(&g2.path)]).fails();
    assert!(
        err.contains("no dm-verity hash tree") && err.contains("pak build --generation"),
        "{err}"
    );
    assert_eq!(sha256_of(&img), before);
}

#[test]
fn verify_names_a_changed_block_in_a_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let g1 = generation(tmp.path(), 1);
    let g2 = generation(tmp.path(), 2);
    let img = disk_with(tmp.path(), &g1);
    common::pak(["system", "switch", "--disk", &s(&img), &s(&g2.path)]).ok();
    let v = verity::root_of(&g2.path).unwrap();
    // The entry passes the root to /init.
    let disk = std::fs::read(&img).unwrap();
    let words = v.cmdline();
    assert!(
        disk.windows(words.len()).any(|w| w == words.as_bytes()),
        "no entry carries {words}"
    );
    let out = common::pak(["system", "verify", "--disk", &s(&img)]).ok();
    assert!(out.contains("ok   pak-b-2+3.conf"), "{out}");
    assert!(out.contains("ok   pak-a-1.conf"), "{out}");

    // A rollback writes slot a's entry again, from its description: with
    // its root, or verify would refuse an entry that mounts the slot
    // unchecked.
    common::pak(["system", "rollback", "--disk", &s(&img)]).ok();
    let out = common::pak(["system", "verify", "--disk", &s(&img)]).ok();
    assert!(out.starts_with("ok   pak-a-1.conf"), "{out}");

    let slot_b = layout().partitions("test")[2].offset();
    flip(&img, slot_b + 77 * BLOCK + 1000);
    let failed = |img: &Path| {
        let r = common::pak(["system", "verify", "--disk", &s(img)]).run();
        assert!(!r.success(), "verify passed a changed slot: {}", r.text());
        r.text()
    };
    let err = failed(&img);
    assert!(
        err.contains(
            "BAD  pak-b-2+3.conf: slot b: data block 77 does not match its dm-verity hash"
        ),
        "{err}"
    );
    assert!(err.contains("ok   pak-a-1.conf"), "{err}");
    flip(&img, slot_b + 77 * BLOCK + 1000);
    // A damaged tree is told apart from damaged data.
    flip(&img, slot_b + v.data_blocks * BLOCK + 2 * BLOCK + 5);
    let err = failed(&img);
    assert!(
        err.contains("slot b: its dm-verity hash tree is damaged at hash block 2"),
        "{err}"
    );
}

/// A project of stand-in packages (no Debian, no network) whose kernel is
/// `kernel`, with `image` as its [image] table.
fn project(kernel: &common::Package, image: &str) -> common::Project {
    let p = common::Project::new();
    p.add(kernel);
    p.add(&common::Package::boot_loader("boot-loader"));
    p.index();
    p.pakfile_with(
        "pak = \"*\"\nkernel = \"*\"\nboot-loader = \"*\"\n",
        &format!("\n[image]\n{image}"),
    );
    p
}

#[test]
fn a_kernel_without_dm_verity_is_a_build_error_naming_it() {
    let modules = "usr/lib/modules/1.0-test";
    let kernel = common::Package::new("kernel", "1.0-1")
        .arch("x86_64")
        .file("boot/vmlinuz-1.0-test", "a stand-in kernel")
        .file(
            &format!("{modules}/kernel/drivers/misc/dummy.ko"),
            common::fake_module(),
        )
        .file(
            &format!("{modules}/modules.builtin"),
            "kernel/fs/squashfs/squashfs.ko\nkernel/fs/overlayfs/overlay.ko\nkernel/fs/ext4/ext4.ko\n",
        );
    let p = project(&kernel, "size = \"512MiB\"\n");
    let err = p.fails(&["build", "-o", "disk.raw"]);
    assert!(
        err.contains("kernel package kernel 1.0-1")
            && err.contains("kernel 1.0-test has no dm-verity module")
            && err.contains("CONFIG_DM_VERITY"),
        "{err}"
    );
    assert!(!p.path("disk.raw").exists());
}

#[test]
fn a_generation_too_large_for_its_slot_with_its_tree_names_the_sizes() {
    let p = project(&common::Package::kernel("kernel"), "slot_size = \"1MiB\"\n");
    let err = p.fails(&["build", "-o", "disk.raw"]);
    assert!(
        err.contains("dm-verity hash tree")
            && err.contains("a slot holds 1 MiB")
            && err.contains("raise [image] slot_size"),
        "{err}"
    );
    assert!(!p.path("disk.raw").exists());
}
