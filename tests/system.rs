//! `pak system` on disk images, without booting: switch, rollback,
//! mark-good, their refusals, and the crash-safety proof — a switch (and a
//! rollback, and a mark-good) cut after every single write and flush, each
//! cut checked to leave a disk that boots a complete, good generation.
//!
//! The fixtures are small synthetic generations built with pak's own
//! writers, so each cut point costs milliseconds; the QEMU tests in
//! `e2e_system.rs` boot real ones.

mod common;

use common::patterned;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use pak::image::generation::{self, GenerationMeta, PackageRef, Written};
use pak::image::squashfs::{self, Entry, Kind, Source, Tree};
use pak::system::{CutAfter, Incoming, PakDisk, Rollback, SlotState};
use pak_boot::bls::State;
use pak_boot::disk::{Slot, SlotBoot};

const MIB: u64 = 1 << 20;

/// A disk in memory whose copies share the unchanged blocks, so a few
/// thousand cut points do not copy 120 MiB each.
#[derive(Clone)]
struct CowDisk {
    base: std::sync::Arc<Vec<u8>>,
    blocks: std::collections::HashMap<u64, Vec<u8>>,
    pos: u64,
}

const BLOCK: u64 = 4096;

impl CowDisk {
    fn new(bytes: &[u8]) -> Self {
        CowDisk {
            base: std::sync::Arc::new(bytes.to_vec()),
            blocks: Default::default(),
            pos: 0,
        }
    }
    fn block(&self, b: u64) -> &[u8] {
        match self.blocks.get(&b) {
            Some(v) => v,
            None => &self.base[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize],
        }
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = (*self.base).clone();
        for (b, v) in &self.blocks {
            out[(*b * BLOCK) as usize..((*b + 1) * BLOCK) as usize].copy_from_slice(v);
        }
        out
    }
}

impl std::io::Read for CowDisk {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let len = self.base.len() as u64;
        if self.pos >= len {
            return Ok(0);
        }
        let b = self.pos / BLOCK;
        let off = (self.pos % BLOCK) as usize;
        let n = buf.len().min(BLOCK as usize - off);
        buf[..n].copy_from_slice(&self.block(b)[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Write for CowDisk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let b = self.pos / BLOCK;
        let off = (self.pos % BLOCK) as usize;
        let n = buf.len().min(BLOCK as usize - off);
        let mut blk = self.block(b).to_vec();
        blk[off..off + n].copy_from_slice(&buf[..n]);
        self.blocks.insert(b, blk);
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for CowDisk {
    fn seek(&mut self, p: std::io::SeekFrom) -> std::io::Result<u64> {
        self.pos = match p {
            std::io::SeekFrom::Start(n) => n,
            std::io::SeekFrom::End(d) => (self.base.len() as i64 + d) as u64,
            std::io::SeekFrom::Current(d) => (self.pos as i64 + d) as u64,
        };
        Ok(self.pos)
    }
}

impl pak::system::Device for CowDisk {}

struct Gen {
    meta: GenerationMeta,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    /// The sealed generation file.
    file: Vec<u8>,
}

fn dir_entry() -> Entry {
    Entry {
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        xattrs: vec![],
    }
}

fn file_entry(bytes: Vec<u8>) -> Entry {
    Entry {
        kind: Kind::File(Source::Bytes(bytes)),
        mode: 0o644,
        uid: 0,
        gid: 0,
        xattrs: vec![],
    }
}

/// A generation with a tiny fake kernel and initrd (boot files are only
/// copied, never run, here) and `extra` packages in its description.
fn generation(dir: &Path, number: u64, extra: &[&str]) -> Gen {
    let kernel = patterned(20_000 + number as usize * 512, number);
    let initrd = patterned(30_000 + number as usize * 256, number + 100);
    let mut packages = vec![PackageRef {
        name: "base".into(),
        version: "1".into(),
        sha256: "00".repeat(32),
    }];
    for p in extra {
        packages.push(PackageRef {
            name: p.to_string(),
            version: format!("{number}.0"),
            sha256: format!("{number:02}").repeat(32),
        });
    }
    let meta = common::stand_in_meta(number, packages);
    let mut t = Tree::default();
    for d in ["", "boot", "usr", "usr/lib", "usr/lib/pak", "etc"] {
        t.entries.insert(d.into(), dir_entry());
    }
    t.entries
        .insert("boot/vmlinuz-6.1".into(), file_entry(kernel.clone()));
    t.entries
        .insert(generation::INITRD_FILE.into(), file_entry(initrd.clone()));
    t.entries.insert(
        generation::META_FILE.into(),
        file_entry(meta.to_toml().into_bytes()),
    );
    t.entries.insert(
        "etc/motd".into(),
        file_entry(format!("generation {number}\n").into_bytes()),
    );
    let path = dir.join(format!("gen{number}.sqfs"));
    squashfs::write(&t, &path, &squashfs::Options::default()).unwrap();
    generation::seal(&path).unwrap();
    Gen {
        meta,
        kernel,
        initrd,
        file: std::fs::read(&path).unwrap(),
    }
}

/// A disk whose slot a holds `g`, its entry marked good.
fn disk_with(dir: &Path, g: &Gen) -> Vec<u8> {
    let layout = pak::disk::Layout::new(Some(120 * MIB), Some(40 * MIB), Some(4 * MIB)).unwrap();
    let gen_path = dir.join("slot-a.sqfs");
    std::fs::write(&gen_path, &g.file).unwrap();
    let mut m = g.meta.clone();
    m.written = Some(Written::of(
        &pak::util::fsutil::sha256_hex(&g.file),
        g.file.len() as u64,
        &g.kernel,
        &g.initrd,
    ));
    let description = m.to_toml();
    // What `pak build` puts on the ESP, its entry already marked good.
    let boot = SlotBoot {
        slot: Slot::A,
        generation: 1,
        system: "test",
        cmdline: "console=ttyS0",
        tries: None,
        priority: 1,
        kernel: &g.kernel,
        initrd: &g.initrd,
        description: description.as_bytes(),
    };
    let files = pak_boot::disk::new_esp(b"MZ loader", &boot);
    let img = dir.join("disk.raw");
    pak::disk::create(&img, &layout, &files, &gen_path, "test").unwrap();
    std::fs::read(&img).unwrap()
}

fn open(bytes: Vec<u8>) -> MemDisk {
    PakDisk::open(Cursor::new(bytes), "test disk", None).unwrap()
}

fn incoming(g: &Gen) -> Incoming<Cursor<Vec<u8>>> {
    Incoming::read(Cursor::new(g.file.clone()), "gen.sqfs").unwrap()
}

/// What must hold after any cut: the entry systemd-boot picks boots a
/// complete generation (its kernel, initrd and slot match their sha256),
/// and a complete generation marked good is among the entries. Returns the
/// generation that boots.
fn check_boots<D: pak::system::Device>(d: &mut PakDisk<D>, cut: &str) -> u64 {
    let report = d.verify().unwrap_or_else(|e| panic!("{cut}: {e:#}"));
    let (first, problem) = report
        .first()
        .unwrap_or_else(|| panic!("{cut}: no loader entry left"));
    assert!(
        problem.is_none(),
        "{cut}: the default entry {first} would not boot: {problem:?}"
    );
    assert!(
        report
            .iter()
            .any(|(name, p)| p.is_none() && name.state() == State::Good),
        "{cut}: no good generation to fall back to: {report:?}"
    );
    let status = d.status().unwrap();
    status.booted_generation.unwrap()
}

fn esp_fsck(dir: &Path, bytes: &[u8]) -> Option<String> {
    if Command::new("fsck.fat").arg("--help").output().is_err() {
        return None;
    }
    // The ESP starts at 1 MiB and is 40 MiB long in these disks.
    let esp = dir.join("esp.img");
    std::fs::write(&esp, &bytes[MIB as usize..(41 * MIB) as usize]).unwrap();
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(&esp)
        .output()
        .unwrap();
    (!out.status.success()).then(|| {
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    })
}

#[test]
fn switch_rollback_and_mark_good_on_a_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let g1 = generation(tmp.path(), 1, &[]);
    let g2 = generation(tmp.path(), 2, &["hello"]);
    let mut d = open(disk_with(tmp.path(), &g1));
    let s = d.switch(&mut incoming(&g2), false).unwrap();
    assert_eq!((s.slot, s.generation), (Slot::B, 2));
    assert_eq!(s.entry, "pak-b-2+3.conf");
    let st = d.status().unwrap();
    assert_eq!(st.default_entry.as_deref(), Some("pak-b-2+3.conf"));
    assert_eq!(st.slot(Slot::A).state, SlotState::Good);
    assert_eq!(st.slot(Slot::B).state, SlotState::Pending);
    let diff = d.diff(Some(1), Some(2)).unwrap();
    assert_eq!(diff.added, vec![("hello".to_string(), "2.0".to_string())]);
    assert!(diff.removed.is_empty() && diff.changed.is_empty());

    // Not marked good: no further switch over the only fallback, and no
    // rollback onto an unproven generation from the other side.
    let err = format!("{:#}", d.switch(&mut incoming(&g2), false).unwrap_err());
    assert!(err.contains("not marked good"), "{err}");
    d.mark_good().unwrap();
    assert_eq!(d.status().unwrap().booted_good, Some(true));
    let err = format!("{:#}", d.switch(&mut incoming(&g2), false).unwrap_err());
    assert!(err.contains("not newer than generation 2"), "{err}");

    assert_eq!(
        d.rollback().unwrap(),
        Rollback::Done {
            slot: Slot::A,
            generation: 1
        }
    );
    let st = d.status().unwrap();
    assert_eq!(st.default_entry.as_deref(), Some("pak-a-1.conf"));
    assert_eq!(st.booted_slot, Some(Slot::A));
    // Rolled back to 1; a new generation 3 goes to slot b, over 2.
    let g3 = generation(tmp.path(), 3, &["hello", "jq"]);
    let s = d.switch(&mut incoming(&g3), false).unwrap();
    assert_eq!((s.slot, s.generation), (Slot::B, 3));
    let bytes = d.into_device().into_inner();
    assert_eq!(
        check_boots(&mut open(bytes.clone()), "after switching to 3"),
        3
    );
    if let Some(errors) = esp_fsck(tmp.path(), &bytes) {
        panic!("fsck.fat finds errors on the ESP after the edits:\n{errors}");
    }
}

#[test]
fn automatic_fallback_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let g1 = generation(tmp.path(), 1, &[]);
    let g2 = generation(tmp.path(), 2, &[]);
    let mut d = open(disk_with(tmp.path(), &g1));
    d.switch(&mut incoming(&g2), false).unwrap();
    let mut bytes = d.into_device().into_inner();
    // What systemd-boot does over three failed boots: count down by renaming.
    for (from, to) in [
        ("pak-b-2+3.conf", "pak-b-2+2-1.conf"),
        ("pak-b-2+2-1.conf", "pak-b-2+1-2.conf"),
        ("pak-b-2+1-2.conf", "pak-b-2+0-3.conf"),
    ] {
        let parts = pak::disk::gpt::read(&mut Cursor::new(&bytes)).unwrap();
        let mut v = pak::disk::fat::Volume::open(Cursor::new(bytes), parts[0].offset()).unwrap();
        v.rename(
            &format!("loader/entries/{from}"),
            &format!("loader/entries/{to}"),
        )
        .unwrap();
        bytes = v.into_inner().into_inner();
    }
    // The machine is back on generation 1 (live it would know from the
    // kernel command line).
    let mut d = PakDisk::open(Cursor::new(bytes.clone()), "test disk", Some((Slot::A, 1))).unwrap();
    let st = d.status().unwrap();
    assert_eq!(st.slot(Slot::B).state, SlotState::Bad);
    let r = st.rolled_back.clone().expect("the fallback is reported");
    assert_eq!(
        (r.failed_slot, r.failed_generation, r.tries),
        (Slot::B, 2, 3)
    );
    assert_eq!((r.running_slot, r.running_generation), (Slot::A, 1));
    // In words, from the command line (a disk image boots what it would
    // fall back to, the same).
    let img = tmp.path().join("fell-back.raw");
    std::fs::write(&img, &bytes).unwrap();
    let out = pak_cli(&["system", "status", "--disk", img.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rolled back: generation 2 (slot b) failed to boot 3 times"),
        "{text}"
    );
    let err = format!("{:#}", d.rollback().unwrap_err());
    assert!(err.contains("marked bad"), "{err}");
}

/// The ESP of `bytes` (a disk made by `disk_with`), to look at or edit.
fn esp_of(bytes: Vec<u8>) -> pak::disk::fat::Volume<Cursor<Vec<u8>>> {
    let parts = pak::disk::gpt::read(&mut Cursor::new(&bytes)).unwrap();
    pak::disk::fat::Volume::open(Cursor::new(bytes), parts[0].offset()).unwrap()
}

#[test]
fn a_switch_puts_the_files_a_build_does_on_the_esp() {
    let tmp = tempfile::tempdir().unwrap();
    let g1 = generation(tmp.path(), 1, &[]);
    let g2 = generation(tmp.path(), 2, &[]);
    let mut d = open(disk_with(tmp.path(), &g1));
    d.switch(&mut incoming(&g2), false).unwrap();
    let mut esp = esp_of(d.into_device().into_inner());
    let mut names = |dir: &str| {
        let mut v: Vec<String> = esp.list(dir).unwrap().into_iter().map(|e| e.name).collect();
        v.sort();
        v
    };
    // Slot a as `pak build` wrote it (through `new_esp`), slot b as the
    // switch did (through `SlotBoot::files`).
    assert_eq!(names("pak/a"), names("pak/b"));
    assert_eq!(names("pak/b"), ["generation.toml", "initrd", "vmlinuz"]);
    assert_eq!(names("loader/entries"), ["pak-a-1.conf", "pak-b-2+3.conf"]);
}

#[test]
fn a_corrupt_slot_description_is_reported_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let g1 = generation(tmp.path(), 1, &[]);
    let g2 = generation(tmp.path(), 2, &["hello"]);
    let mut d = open(disk_with(tmp.path(), &g1));
    d.switch(&mut incoming(&g2), false).unwrap();
    let good = d.into_device().into_inner();
    let mut esp = esp_of(good.clone());
    esp.remove("pak/b/generation.toml").unwrap();
    esp.create("pak/b/generation.toml", b"number = \"two\"\n")
        .unwrap();
    let bytes = esp.into_inner().into_inner();

    // Status still shows both slots, and says what is wrong with b's.
    let mut d = open(bytes.clone());
    let st = d.status().unwrap();
    let a = st.slot(Slot::A);
    assert_eq!(
        (a.system.as_deref(), a.description_error.as_ref()),
        (Some("test"), None)
    );
    let b = st.slot(Slot::B);
    assert_eq!(
        (b.state, b.generation, b.system.as_ref()),
        (SlotState::Pending, Some(2), None)
    );
    let err = b
        .description_error
        .clone()
        .expect("the corrupt file is reported");
    assert!(
        err.contains("pak/b/generation.toml") && err.contains("corrupt"),
        "{err}"
    );
    // What needs the description fails, naming it.
    let err = format!("{:#}", d.diff(Some(1), Some(2)).unwrap_err());
    assert!(err.contains("pak/b/generation.toml"), "{err}");
    let (_, problem) = &d.verify().unwrap()[0];
    let problem = problem.clone().expect("the entry cannot be verified");
    assert!(problem.contains("pak/b/generation.toml"), "{problem}");

    // The command line says it in words, and in JSON only when it happens.
    let img = tmp.path().join("corrupt.raw");
    std::fs::write(&img, &bytes).unwrap();
    let out = pak_cli(&["system", "status", "--disk", img.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("slot a: good, generation 1 (test, 1 packages)\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "slot b: pending, generation 2, 3 tries left, 0 done (its description is unreadable: "
        ),
        "{text}"
    );
    let json = |img: &Path| {
        let out = pak_cli(
            &[
                "system",
                "status",
                "--disk",
                img.to_str().unwrap(),
                "--json",
            ],
            None,
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert!(json(&img)["slots"][1]["description_error"].is_string());
    std::fs::write(&img, &good).unwrap();
    assert!(json(&img)["slots"][1].get("description_error").is_none());
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let g1 = generation(tmp.path(), 1, &[]);
    let g2 = generation(tmp.path(), 2, &[]);
    let base = disk_with(tmp.path(), &g1);

    // A corrupt generation file: one flipped byte inside the squashfs.
    let mut bad = g2.file.clone();
    let at = bad.len() / 3;
    bad[at] ^= 0x40;
    let err = match Incoming::read(Cursor::new(bad), "gen2.sqfs") {
        Ok(_) => panic!("a corrupt generation was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("gen2.sqfs"), "{err}");
    // Truncated, and not a generation at all.
    assert!(Incoming::read(Cursor::new(g2.file[..g2.file.len() - 4096].to_vec()), "t").is_err());
    let err = match Incoming::read(Cursor::new(vec![0u8; 8192]), "zeros.bin") {
        Ok(_) => panic!("zeros accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("not a pak generation file"), "{err}");

    // A generation larger than the slot.
    let mut t = Tree::default();
    for d in ["", "boot", "usr", "usr/lib", "usr/lib/pak"] {
        t.entries.insert(d.into(), dir_entry());
    }
    let mut meta = g2.meta.clone();
    meta.number = 5;
    t.entries
        .insert("boot/vmlinuz-6.1".into(), file_entry(g2.kernel.clone()));
    t.entries.insert(
        generation::INITRD_FILE.into(),
        file_entry(g2.initrd.clone()),
    );
    t.entries.insert(
        generation::META_FILE.into(),
        file_entry(meta.to_toml().into_bytes()),
    );
    t.entries
        .insert("big".into(), file_entry(patterned(6 * MIB as usize, 9)));
    let big = tmp.path().join("big.sqfs");
    squashfs::write(&t, &big, &squashfs::Options::default()).unwrap();
    generation::seal(&big).unwrap();
    let mut d = open(base.clone());
    let mut inc = Incoming::read(std::fs::File::open(&big).unwrap(), "big.sqfs").unwrap();
    let err = format!("{:#}", d.switch(&mut inc, false).unwrap_err());
    assert!(err.contains("no space in slot b"), "{err}");
    assert!(
        d.into_device().into_inner() == base,
        "the refused switch changed the disk"
    );

    // Not a pak disk: no partition table, or one without the slots.
    let err = match PakDisk::open(Cursor::new(vec![0u8; 4 * MIB as usize]), "blank.raw", None) {
        Ok(_) => panic!("a blank disk opened"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("blank.raw is not a pak disk"), "{err}");

    // An ESP without room for the boot files.
    let mut d = open(base.clone());
    let parts = pak::disk::gpt::read(&mut Cursor::new(&base)).unwrap();
    let bytes = d.into_device().into_inner();
    let mut v = pak::disk::fat::Volume::open(Cursor::new(bytes), parts[0].offset()).unwrap();
    let free = v.free_bytes().unwrap();
    v.create("filler", &vec![1u8; (free - 16 * 1024) as usize])
        .unwrap();
    let full = v.into_inner().into_inner();
    d = open(full.clone());
    let err = format!("{:#}", d.switch(&mut incoming(&g2), false).unwrap_err());
    assert!(err.contains("the ESP has no room"), "{err}");
    assert!(d.into_device().into_inner() == full);
}

/// Runs `op` over `base` cut after every possible number of writes and
/// flushes; checks each result boots a good generation, and that a retry
/// after the cut completes. Returns (cut points, generations booted).
type MemDisk = PakDisk<Cursor<Vec<u8>>>;

fn cut_everywhere(
    dir: &Path,
    base: &[u8],
    op: &dyn Fn(&mut PakDisk<CutAfter<CowDisk>>) -> anyhow::Result<()>,
    retry: &dyn Fn(&mut MemDisk) -> anyhow::Result<()>,
) -> (u64, Vec<u64>) {
    let base = CowDisk::new(base);
    // The whole operation's length, uncut.
    let mut d = PakDisk::open(CutAfter::new(base.clone(), u64::MAX), "t", None).unwrap();
    op(&mut d).unwrap();
    let total = d.into_device().ops;
    assert!(total > 2, "only {total} operations");
    let mut booted = Vec::new();
    for n in 0..=total {
        let mut d = PakDisk::open(CutAfter::new(base.clone(), n), "t", None).unwrap();
        let res = op(&mut d);
        assert_eq!(res.is_ok(), n == total, "cut after {n} of {total}: {res:?}");
        let disk = d.into_device().into_inner();
        let cut = format!("cut after {n} of {total} operations");
        let mut after = PakDisk::open(disk.clone(), "t", None).unwrap();
        booted.push(check_boots(&mut after, &cut));
        // Every 32nd cut: finishing the job afterwards works and leaves a
        // clean ESP.
        if n % 32 == 0 && n < total {
            let mut d = open(disk.bytes());
            retry(&mut d).unwrap_or_else(|e| panic!("{cut}, then again: {e:#}"));
            let bytes = d.into_device().into_inner();
            check_boots(&mut open(bytes.clone()), &format!("{cut}, then again"));
            if let Some(errors) = esp_fsck(dir, &bytes) {
                panic!("{cut}, then again: fsck.fat finds errors:\n{errors}");
            }
        }
    }
    (total + 1, booted)
}

/// What an operator does after a cut switch: switch again, unless the new
/// generation already boots next (then only tidy the ESP).
fn finish_switch(d: &mut MemDisk, g: &Gen) -> anyhow::Result<()> {
    if d.status()?.booted_generation == Some(g.meta.number) {
        d.repair()?;
        return Ok(());
    }
    d.switch(&mut incoming(g), false).map(|_| ())
}

/// `booted` starts at `from` and changes to `to` once, at one write.
fn assert_once(booted: &[u64], from: u64, to: u64) {
    let k = booted
        .iter()
        .position(|g| *g != from)
        .unwrap_or(booted.len());
    assert!(k > 0 && k < booted.len(), "{booted:?}");
    assert!(booted[k..].iter().all(|g| *g == to), "{booted:?}");
}

#[test]
fn a_cut_at_any_write_of_a_switch_leaves_a_bootable_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let g1 = generation(tmp.path(), 1, &[]);
    let g2 = generation(tmp.path(), 2, &["hello"]);
    let base = disk_with(tmp.path(), &g1);
    let (points, booted) = cut_everywhere(
        tmp.path(),
        &base,
        &|d| d.switch(&mut incoming(&g2), false).map(|_| ()),
        &|d| finish_switch(d, &g2),
    );
    // Generation 1 until the entry's directory slot is written, then 2.
    assert_once(&booted, 1, 2);
    eprintln!("switch: {points} cut points, each leaves a bootable disk");

    // The same over a disk whose slot b already holds an older good
    // generation (the usual case: the switch overwrites the previous one).
    let mut d = open(base.clone());
    d.switch(&mut incoming(&g2), false).unwrap();
    d.mark_good().unwrap();
    let with_b = d.into_device().into_inner();
    let g3 = generation(tmp.path(), 3, &["hello", "jq"]);
    let mut d = PakDisk::open(Cursor::new(with_b), "t", Some((Slot::B, 2))).unwrap();
    // From generation 2 in slot b, the switch goes to slot a.
    let st = d.status().unwrap();
    assert_eq!(st.booted_slot, Some(Slot::B));
    let before = d.into_device().into_inner();
    let (points2, booted) = cut_everywhere(
        tmp.path(),
        &before,
        &|d| d.switch(&mut incoming(&g3), false).map(|_| ()),
        &|d| finish_switch(d, &g3),
    );
    assert_once(&booted, 2, 3);
    eprintln!("switch over an old slot: {points2} cut points");
}

#[test]
fn a_cut_during_rollback_or_mark_good_leaves_a_bootable_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let g1 = generation(tmp.path(), 1, &[]);
    let g2 = generation(tmp.path(), 2, &[]);
    let mut d = open(disk_with(tmp.path(), &g1));
    d.switch(&mut incoming(&g2), false).unwrap();
    let pending = d.into_device().into_inner();
    let (points, booted) =
        cut_everywhere(tmp.path(), &pending, &|d| d.mark_good().map(|_| ()), &|d| {
            d.mark_good().map(|_| ())
        });
    assert!(booted.iter().all(|g| *g == 2), "{booted:?}");
    eprintln!("mark-good: {points} cut points");

    let mut d = open(pending);
    d.mark_good().unwrap();
    let both_good = d.into_device().into_inner();
    let (points, booted) = cut_everywhere(
        tmp.path(),
        &both_good,
        &|d| d.rollback().map(|_| ()),
        &|d| d.rollback().map(|_| ()),
    );
    assert_once(&booted, 2, 1);
    eprintln!("rollback: {points} cut points");
}

/// `pak ARGS`, cut after `cut` device operations if given.
fn pak_cli(args: &[&str], cut: Option<&str>) -> std::process::Output {
    let mut c = common::pak(args);
    if let Some(n) = cut {
        c = c.env("PAK_CUT_AFTER_OPS", n);
    }
    c.command().output().unwrap()
}

/// The CLI on a real image file: the same code, and `PAK_CUT_AFTER_OPS`
/// reaches it.
#[test]
fn the_command_line_switches_a_disk_image() {
    let tmp = tempfile::tempdir().unwrap();
    let g1 = generation(tmp.path(), 1, &[]);
    let g2 = generation(tmp.path(), 2, &["hello"]);
    let img = tmp.path().join("disk.raw");
    std::fs::write(&img, disk_with(tmp.path(), &g1)).unwrap();
    let sqfs = tmp.path().join("g2.sqfs");
    std::fs::write(&sqfs, &g2.file).unwrap();
    let pak = pak_cli;
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    let before = std::fs::read(&img).unwrap();
    let out = pak(
        &["system", "switch", "--disk", &s(&img), &s(&sqfs)],
        Some("20"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("power cut"));
    assert_ne!(
        std::fs::read(&img).unwrap(),
        before,
        "the cut run wrote nothing"
    );
    assert_eq!(
        check_boots(&mut open(std::fs::read(&img).unwrap()), "CLI cut"),
        1
    );
    let out = pak(&["system", "switch", "--disk", &s(&img), &s(&sqfs)], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("generation 2 written to slot b"), "{text}");
    let out = pak(&["system", "status", "--disk", &s(&img), "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["default_entry"], "pak-b-2+3.conf");
    let out = pak(&["system", "diff", "--disk", &s(&img), "1", "2"], None);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "generation 1 -> 2\n+ hello 2.0\n"
    );
    let out = pak(&["system", "verify", "--disk", &s(&img)], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = pak(&["system", "rollback", "--disk", &s(&img)], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("generation 1 (slot a) boots next"));
    // Now 2 (pending) is the other slot: no rolling onto it.
    let out = pak(&["system", "rollback", "--disk", &s(&img)], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("never marked good"));
    // Live commands off a pak system say so.
    let out = pak(&["system", "status"], None);
    assert!(!out.status.success());
}
