//! Delta updates over real HTTP, without booting: a disk image updated by
//! `pak system update --disk` from a channel served by Debian's nginx on
//! the host, whose access log counts the bytes sent.
//!
//! - the bytes on the wire are the bytes the plan said (within 1%), a
//!   small part of the generation;
//! - a flipped byte in the served generation is refused, nothing is
//!   written, and the update completes from a good copy, fetching only
//!   what the refused run had not already checked;
//! - a host whose slots are corrupt (a damaged block in one, an
//!   overwritten superblock in the other) still converges, fetching what
//!   it can no longer reuse.

mod common;

use common::{Nginx, StandInGen as Gen, patterned};

use std::path::{Path, PathBuf};

use pak::channel::chunks::ChunkIndex;
use pak::image::generation::{self, PackageRef};
use pak::image::squashfs::{self, Entry, Kind, Source, Tree};
use pak_boot::disk::Slot;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn entry(kind: Kind, mode: u32) -> Entry {
    Entry {
        kind,
        mode,
        uid: 0,
        gid: 0,
        xattrs: vec![],
    }
}

/// A sealed generation shaped like a real one: 24 large files (many
/// blocks each) and 300 small ones (fragments). `number` changes the
/// description; `change` is a file whose content differs, `extra` a file
/// only this generation has.
fn generation(dir: &Path, number: u64, change: Option<usize>, extra: bool) -> Gen {
    let kernel = patterned(20_000, 1);
    let initrd = patterned(30_000, 2);
    let meta = common::stand_in_meta(
        number,
        vec![PackageRef {
            name: "base".into(),
            version: format!("{number}.0"),
            sha256: "00".repeat(32),
        }],
    );
    let mut t = Tree::default();
    for d in ["", "boot", "usr", "usr/lib", "usr/lib/pak", "usr/share"] {
        t.entries.insert(d.into(), entry(Kind::Dir, 0o755));
    }
    let file = |b: Vec<u8>| entry(Kind::File(Source::Bytes(b)), 0o644);
    t.entries
        .insert("boot/vmlinuz-6.1".into(), file(kernel.clone()));
    t.entries
        .insert(generation::INITRD_FILE.into(), file(initrd.clone()));
    t.entries.insert(
        generation::META_FILE.into(),
        file(meta.to_toml().into_bytes()),
    );
    for i in 0..24 {
        let seed = if change == Some(i) { 1000 + number } else { 10 };
        t.entries.insert(
            format!("usr/lib/big{i:02}"),
            file(patterned(300_000 + i * 1000, seed + i as u64)),
        );
    }
    for i in 0..300 {
        let text = format!("small file {i}\n").repeat(10 + i % 50);
        t.entries
            .insert(format!("usr/share/f{i:03}"), file(text.into_bytes()));
    }
    if extra {
        t.entries.insert(
            "usr/lib/big05a".into(),
            file(patterned(200_000, 77 + number)),
        );
    }
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

/// A disk image whose slot a holds `g`, marked good; slot b is empty.
fn disk_with(dir: &Path, g: &Gen) -> PathBuf {
    let layout = pak::disk::Layout::new(Some(200 * MIB), Some(40 * MIB), Some(16 * MIB)).unwrap();
    common::stand_in_disk(dir, g, &layout)
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    channel: PathBuf,
    key: PathBuf,
    public: PathBuf,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        common::pak(["key", "generate", &s(&dir.join("channel"))]).ok();
        Fixture {
            channel: dir.join("chan"),
            key: dir.join("channel.key"),
            public: dir.join("channel.pub"),
            root: dir.join("root"),
            dir,
            _tmp: tmp,
        }
    }

    fn publish(&self, g: &Gen) {
        common::pak([
            "publish",
            &s(&g.path),
            "--channel",
            &s(&self.channel),
            "--key",
            &s(&self.key),
        ])
        .ok();
    }

    fn update(&self, img: &Path, url: &str) -> common::Ran {
        common::pak([
            "system",
            "update",
            "--disk",
            &s(img),
            "--channel",
            url,
            "--key",
            &s(&self.public),
            "--json",
        ])
        .root(&self.root)
        .env("PAK_NO_PROGRESS", "1")
        .run()
    }

    fn mark_good(&self, img: &Path) {
        let mut d = pak::system::PakDisk::open_image(img, None).unwrap();
        d.mark_good().unwrap();
    }
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// What the plan said would go over the wire: the index and the chunks.
fn planned(report: &serde_json::Value) -> u64 {
    let d = &report["delta"];
    d["to_fetch"].as_u64().unwrap() + d["index_bytes"].as_u64().unwrap()
}

fn slot_offset(img: &Path, slot: Slot) -> u64 {
    let mut f = std::fs::File::open(img).unwrap();
    pak::disk::gpt::read(&mut f)
        .unwrap()
        .into_iter()
        .find(|p| p.label == slot.label())
        .unwrap()
        .offset()
}

fn within_1_percent(got: u64, want: u64) -> bool {
    got.abs_diff(want) * 100 <= want
}

#[test]
fn an_update_fetches_what_the_plan_predicted() {
    let f = Fixture::new();
    let g1 = generation(&f.dir, 1, None, false);
    let g2 = generation(&f.dir, 2, Some(7), true);
    let img = disk_with(&f.dir, &g1);
    f.publish(&g1);
    f.publish(&g2);
    let nginx = Nginx::start(&f.dir.join("nginx"), &f.channel, common::free_port(), "0");

    // An index the signed metadata does not name is refused first.
    let index = f.channel.join("test-2.chunks");
    let good = std::fs::read(&index).unwrap();
    let mut bad = good.clone();
    bad[30] ^= 1;
    std::fs::write(&index, &bad).unwrap();
    let err = f.update(&img, &nginx.url()).fails();
    assert!(
        err.contains("is not the one the signed channel metadata names"),
        "{err}"
    );
    std::fs::write(&index, &good).unwrap();
    nginx.take();

    let r = json(&f.update(&img, &nginx.url()).ok());
    assert_eq!(r["action"]["kind"], "switched", "{r}");
    let (sent, log) = nginx.take();
    let plan = planned(&r);
    let size = std::fs::metadata(&g2.path).unwrap().len();
    assert!(
        within_1_percent(sent, plan),
        "nginx sent {sent} bytes, the plan said {plan}:\n{}",
        log.join("\n")
    );
    // One changed file, one added, the tables: a small part of the whole;
    // the dm-verity tree is computed here, not fetched.
    assert!(plan * 5 < size, "{plan} of {size}");
    assert!(r["delta"]["derived"].as_u64().unwrap() > 4096, "{r}");
    assert!(
        log.iter()
            .filter(|l| l.starts_with("/test-2.sqfs "))
            .all(|l| l.contains(" 206 ")),
        "chunks come by Range requests:\n{}",
        log.join("\n")
    );
    // What was written is the generation, whole.
    let bytes = std::fs::read(&g2.path).unwrap();
    let mut disk = std::fs::File::open(&img).unwrap();
    let mut slot = vec![0u8; bytes.len()];
    use std::io::{Read, Seek, SeekFrom};
    disk.seek(SeekFrom::Start(slot_offset(&img, Slot::B)))
        .unwrap();
    disk.read_exact(&mut slot).unwrap();
    assert!(slot == bytes, "slot b holds generation 2");
}

#[test]
fn a_flipped_byte_in_a_served_chunk_is_refused() {
    let f = Fixture::new();
    let g1 = generation(&f.dir, 1, None, false);
    let g2 = generation(&f.dir, 2, Some(3), false);
    let img = disk_with(&f.dir, &g1);
    f.publish(&g1);
    f.publish(&g2);
    let nginx = Nginx::start(&f.dir.join("nginx"), &f.channel, common::free_port(), "0");

    // Flip a byte of a chunk the host must fetch: inside the changed file.
    let served = f.channel.join("test-2.sqfs");
    let good = std::fs::read(&served).unwrap();
    let index = |p: &Path| {
        let len = std::fs::metadata(p).unwrap().len();
        ChunkIndex::of(&mut std::fs::File::open(p).unwrap(), 0, len).unwrap()
    };
    let old: Vec<[u8; 32]> = index(&g1.path).chunks.iter().map(|c| c.sha256).collect();
    let at = index(&served)
        .chunks
        .iter()
        .find(|c| c.len > 100_000 && !old.contains(&c.sha256))
        .unwrap()
        .offset as usize
        + 1000;
    let mut bad = good.clone();
    bad[at] ^= 0x40;
    std::fs::write(&served, &bad).unwrap();

    // Only the update state on the ESP records the failure: no slot and
    // no boot entry changes.
    let slots = |img: &Path| {
        let d = std::fs::read(img).unwrap();
        let a = slot_offset(img, Slot::A) as usize;
        let b = slot_offset(img, Slot::B) as usize;
        (
            d[a..a + 16 * MIB as usize].to_vec(),
            d[b..b + 16 * MIB as usize].to_vec(),
        )
    };
    let before = slots(&img);
    let err = f.update(&img, &nginx.url()).fails();
    assert!(
        err.contains("does not match the signed chunk index"),
        "{err}"
    );
    assert!(slots(&img) == before, "no slot written");
    let st = json(&common::pak(["system", "status", "--disk", &s(&img), "--json"]).ok());
    assert_eq!(st["default_entry"], "pak-a-1.conf", "{st}");
    let (refused_run, _) = nginx.take();

    // The good copy is back: the update completes, fetching only what the
    // refused run had not checked already.
    std::fs::write(&served, &good).unwrap();
    let r = json(&f.update(&img, &nginx.url()).ok());
    assert_eq!(r["action"]["kind"], "switched", "{r}");
    let (sent, _) = nginx.take();
    let d = &r["delta"];
    assert!(d["from_cache"].as_u64().unwrap() > 0, "{r}");
    assert!(within_1_percent(sent, planned(&r)), "{sent}: {r}");
    assert!(sent < refused_run, "{sent} after {refused_run}");
}

#[test]
fn a_host_with_corrupt_slots_still_converges() {
    let f = Fixture::new();
    let g1 = generation(&f.dir, 1, None, false);
    let g2 = generation(&f.dir, 2, Some(1), false);
    let g3 = generation(&f.dir, 3, Some(2), false);
    let img = disk_with(&f.dir, &g1);
    f.publish(&g1);
    f.publish(&g2);
    let nginx = Nginx::start(&f.dir.join("nginx"), &f.channel, common::free_port(), "0");
    // Slot b is empty: slot a is the only seed.
    let r = json(&f.update(&img, &nginx.url()).ok());
    let clean = planned(&r);
    nginx.take();
    f.mark_good(&img);

    // Generation 2 in slot b gets a damaged block (as a failing disk
    // would), slot a's superblock is overwritten: neither is trusted
    // where it does not match.
    f.publish(&g3);
    use std::os::unix::fs::FileExt;
    let disk = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    let b = slot_offset(&img, Slot::B);
    for k in 0..8u64 {
        disk.write_all_at(&[0x55; 512], b + 200_000 + k * 300_000)
            .unwrap();
    }
    disk.write_all_at(&[0u8; 4096], slot_offset(&img, Slot::A))
        .unwrap();
    drop(disk);

    let r = json(&f.update(&img, &nginx.url()).ok());
    assert_eq!(r["action"]["kind"], "switched", "{r}");
    assert_eq!(r["action"]["generation"], 3, "{r}");
    let (sent, _) = nginx.take();
    assert!(within_1_percent(sent, planned(&r)), "{sent}: {r}");
    // What the damaged slots no longer hold was fetched, not copied.
    assert!(planned(&r) > clean + 300_000, "{r} after {clean}");
    let bytes = std::fs::read(&g3.path).unwrap();
    let mut slot = vec![0u8; bytes.len()];
    std::fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut slot, slot_offset(&img, Slot::A))
        .unwrap();
    assert!(slot == bytes, "slot a holds generation 3");
}
