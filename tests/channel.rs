//! Update channels without booting: `pak publish`, `pak channel show`, and
//! `pak system update --disk` from a channel directory and over HTTP, with
//! every refusal (tampered, wrong key, expired, replayed) writing nothing
//! to the disk, its update state or the download cache.

mod common;

use common::{StandInGen as Gen, patterned};

use std::path::{Path, PathBuf};

use common::{Package, Project};

use pak::channel::{Channel, ChannelError};
use pak::image::generation::{self, PackageRef};
use pak::image::squashfs::{self, Entry, Kind, Source, Tree};
use pak::sources::key::SecretKey;

const MIB: u64 = 1 << 20;

fn entry(kind: Kind, mode: u32) -> Entry {
    Entry {
        kind,
        mode,
        uid: 0,
        gid: 0,
        xattrs: vec![],
    }
}

/// A small sealed generation with a fake kernel and initrd (copied, never
/// run here); `etc` holds what `etc_files` says.
fn generation(dir: &Path, number: u64, etc_files: &[(&str, &str)]) -> Gen {
    let kernel = patterned(20_000 + number as usize * 512, number);
    let initrd = patterned(30_000 + number as usize * 256, number + 100);
    let meta = common::stand_in_meta(
        number,
        vec![PackageRef {
            name: "base".into(),
            version: format!("{number}.0"),
            sha256: "00".repeat(32),
        }],
    );
    let mut t = Tree::default();
    for d in [
        "",
        "boot",
        "usr",
        "usr/lib",
        "usr/lib/pak",
        "etc",
        "etc/pak",
    ] {
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
    // Some bulk, so a download has something to be cut in.
    t.entries
        .insert("usr/lib/bulk".into(), file(patterned(3 << 20, number + 7)));
    for (p, text) in etc_files {
        t.entries
            .insert(format!("etc/{p}"), file(text.as_bytes().to_vec()));
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
    let layout = pak::disk::Layout::new(Some(120 * MIB), Some(40 * MIB), Some(4 * MIB)).unwrap();
    common::stand_in_disk(dir, g, &layout)
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
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

    fn publish(&self, extra: &[&str]) -> common::Ran {
        let mut args = vec![
            "publish".to_string(),
            "--channel".into(),
            s(&self.channel),
            "--key".into(),
            s(&self.key),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        common::pak(args).run()
    }

    fn update(&self, img: &Path, url: &str, extra: &[&str]) -> common::Ran {
        let mut args = vec![
            "system".to_string(),
            "update".into(),
            "--disk".into(),
            s(img),
            "--channel".into(),
            url.into(),
            "--key".into(),
            s(&self.public),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        common::pak(args).root(&self.root).run()
    }

    fn metadata(&self) -> String {
        std::fs::read_to_string(self.channel.join("channel.toml")).unwrap()
    }

    fn parsed(&self) -> Channel {
        let key = SecretKey::read(&self.key).unwrap();
        pak::channel::verify("c", self.metadata().as_bytes(), &key.public()).unwrap()
    }
}

#[test]
fn publish_show_keep_halt_and_their_refusals() {
    let f = Fixture::new();
    let g1 = generation(&f.dir, 1, &[]);
    let g2 = generation(&f.dir, 2, &[]);
    let g3 = generation(&f.dir, 3, &[]);

    // Nothing to halt before there is a channel.
    let err = f.publish(&["--halt"]).fails();
    assert!(err.contains("no channel yet"), "{err}");
    assert!(!f.channel.join("channel.toml").exists());

    f.publish(&[&s(&g1.path)]).ok();
    let out = f.publish(&[&s(&g2.path), "--rollout", "10"]).ok();
    assert!(out.contains("published generation 2 of test"), "{out}");
    let c = f.parsed();
    assert_eq!((c.version, c.rollout, c.newest), (2, 10, 2));
    assert_eq!(c.generations.len(), 2);
    let g = &c.generations[1];
    assert_eq!(g.file, "test-2.sqfs");
    assert_eq!(g.kernel, "6.1");
    assert_eq!(g.packages[0].version, "2.0");
    assert_eq!(
        g.sha256,
        pak::util::fsutil::sha256_hex(&std::fs::read(&g2.path).unwrap())
    );
    let root = pak::image::verity::root_hash_of(&g2.path).unwrap();
    assert_eq!(
        g.root_hash.as_deref(),
        Some(root.as_str()),
        "the root hash is published"
    );
    assert!(f.metadata().contains(&format!("root_hash = \"{root}\"")));
    assert_eq!(c.rollout_of(1), 100, "older generations are fully out");
    // Its chunk index is beside it, covered by the signature through its
    // sha256, and describes the file.
    let chunks = g.chunks.as_ref().unwrap();
    assert_eq!(chunks.file, "test-2.chunks");
    let index = std::fs::read(f.channel.join(&chunks.file)).unwrap();
    assert_eq!(chunks.sha256, pak::util::fsutil::sha256_hex(&index));
    assert_eq!(chunks.size, index.len() as u64);
    let parsed = pak::channel::chunks::ChunkIndex::parse(&index, g.size, "i").unwrap();
    assert!(parsed.chunks.len() > 20, "cut at squashfs blocks");
    assert!(c.expires > pak::channel::now() + 6 * 86_400);

    // A number the channel has, or has passed, is refused; nothing changes.
    let before = f.metadata();
    for g in [&g1, &g2] {
        let err = f.publish(&[&s(&g.path)]).fails();
        assert!(err.contains("not newer than generation 2"), "{err}");
    }
    // Another key does not take the channel over.
    common::pak(["key", "generate", &s(&f.dir.join("other"))]).ok();
    let err = common::pak([
        "publish",
        &s(&g3.path),
        "--channel",
        &s(&f.channel),
        "--key",
        &s(&f.dir.join("other.key")),
    ])
    .fails();
    assert!(err.contains("signed by key"), "{err}");
    // A damaged generation file is refused before it reaches any host.
    let broken = f.dir.join("broken.sqfs");
    let mut b = std::fs::read(&g3.path).unwrap();
    let n = b.len();
    b[n / 2] ^= 1;
    std::fs::write(&broken, b).unwrap();
    let err = f.publish(&[&s(&broken)]).fails();
    assert!(err.contains("corrupt"), "{err}");
    let err = f.publish(&["--rollout", "101"]).fails();
    assert!(err.contains("0 to 100"), "{err}");
    let err = f.publish(&["--expires", "soon"]).fails();
    assert!(err.contains("not a duration"), "{err}");
    assert_eq!(f.metadata(), before, "refusals change nothing");
    assert!(!f.channel.join("test-3.sqfs").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&f.channel)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // --keep prunes the oldest file after the metadata stops naming it.
    let out = f.publish(&[&s(&g3.path), "--keep", "2"]).ok();
    assert!(out.contains("removed test-1.sqfs"), "{out}");
    assert!(out.contains("removed test-1.chunks"), "{out}");
    assert!(!f.channel.join("test-1.sqfs").exists());
    assert!(!f.channel.join("test-1.chunks").exists());
    let c = f.parsed();
    assert_eq!(
        c.generations.iter().map(|g| g.number).collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!((c.version, c.rollout), (3, 100));

    f.publish(&["--halt"]).ok();
    assert!(f.parsed().halted);
    let out = common::pak(["channel", "show", &s(&f.channel), "--key", &s(&f.public)]).ok();
    assert!(out.contains("HALTED"), "{out}");
    let root3 = pak::image::verity::root_hash_of(&g3.path).unwrap();
    assert!(out.contains(&format!("root {}…", &root3[..12])), "{out}");
    assert!(
        out.contains("test-3.sqfs + test-3.chunks (delta index)"),
        "{out}"
    );
    assert!(out.contains("verified, key"), "{out}");
    f.publish(&["--resume", "--rollout", "50"]).ok();
    let c = f.parsed();
    assert_eq!((c.version, c.halted, c.rollout), (5, false, 50));
    let out = common::pak(["channel", "show", &format!("file://{}", s(&f.channel))]).ok();
    assert!(out.contains("NOT verified"), "{out}");
    assert!(out.contains("generation 3 to 50% of hosts"), "{out}");
    let json = common::pak([
        "channel",
        "show",
        &s(&f.channel),
        "--key",
        &s(&f.public),
        "--json",
    ])
    .ok();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["version"], 5);
    assert_eq!(v["generation"][1]["number"], 3);
    let err = common::pak([
        "channel",
        "show",
        &s(&f.channel),
        "--key",
        &s(&f.dir.join("other.pub")),
    ])
    .fails();
    assert!(err.contains("not by the trusted key"), "{err}");
}

/// Everything a refused update could have written.
fn snapshot(img: &Path, root: &Path) -> (Vec<u8>, Vec<String>) {
    let mut cached = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root.join("cache/update")) {
        cached = rd
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
    }
    (std::fs::read(img).unwrap(), cached)
}

fn status(img: &Path) -> serde_json::Value {
    let out = common::pak(["system", "status", "--disk", &s(img), "--json"]).ok();
    serde_json::from_str(&out).unwrap()
}

#[test]
fn update_a_disk_from_a_channel_and_refuse_what_is_not_trustworthy() {
    let f = Fixture::new();
    let g1 = generation(&f.dir, 1, &[]);
    let g2 = generation(&f.dir, 2, &[]);
    let img = disk_with(&f.dir, &g1);
    let url = s(&f.channel);

    f.publish(&[&s(&g1.path)]).ok();
    let out = f.update(&img, &url, &[]).ok();
    assert!(out.contains("up to date"), "{out}");

    f.publish(&[&s(&g2.path), "--rollout", "0"]).ok();
    let v2 = f.metadata();
    let out = f.update(&img, &url, &[]).ok();
    assert!(out.contains("not in the rollout of generation 2"), "{out}");
    assert!(out.contains("up to date"), "{out}");
    f.publish(&["--rollout", "100", "--halt"]).ok();
    let out = f.update(&img, &url, &[]).ok();
    assert!(out.contains("halted"), "{out}");
    f.publish(&["--resume"]).ok();

    // --check reports and writes nothing.
    let before = snapshot(&img, &f.root);
    let out = f.update(&img, &url, &["--check"]).ok();
    assert!(out.contains("generation 2 is available"), "{out}");
    assert!(snapshot(&img, &f.root) == before, "--check wrote something");

    // Refusals: each leaves disk, state and cache as they were.
    let good = f.metadata();
    let refuse = |text: &str, why: &str| {
        std::fs::write(f.channel.join("channel.toml"), text).unwrap();
        let before = snapshot(&img, &f.root);
        let err = f.update(&img, &url, &[]).fails();
        assert!(err.contains(why), "{why}: {err}");
        assert!(
            snapshot(&img, &f.root) == before,
            "{why}: something was written"
        );
        std::fs::write(f.channel.join("channel.toml"), &good).unwrap();
    };
    refuse(&good.replace("rollout = 100", "rollout = 99"), "tampered");
    let other = SecretKey::generate().unwrap();
    let body = good.splitn(3, '\n').nth(2).unwrap();
    refuse(&pak::channel::seal(body, &other), "not by the trusted key");
    refuse(body, "is not signed channel metadata");
    let key = SecretKey::read(&f.key).unwrap();
    let mut expired = f.parsed();
    expired.expires = pak::channel::now() - 60;
    refuse(&pak::channel::seal(&expired.to_toml(), &key), "expired on");

    let out = f.update(&img, &url, &[]).ok();
    assert!(out.contains("generation 2 written to slot b"), "{out}");
    let st = status(&img);
    assert_eq!(st["default_entry"], "pak-b-2+3.conf");
    assert!(
        std::fs::read_dir(f.root.join("cache/update"))
            .unwrap()
            .next()
            .is_none(),
        "the download is removed once written"
    );
    // On an image, what boots next counts as booted: nothing more to do.
    let out = f.update(&img, &url, &[]).ok();
    assert!(out.contains("up to date: generation 2"), "{out}");

    // The version it accepted is on the disk's ESP now: an older one is a
    // replay, though its signature is good and it has not expired.
    let mut state = pak::system::PakDisk::open_image(&img, None).unwrap();
    let rec = state
        .read_update_state(&pak::system::update::StateAt::Esp)
        .unwrap();
    drop(state);
    assert_eq!(
        rec.seen.values().copied().collect::<Vec<_>>(),
        [f.parsed().version]
    );
    refuse(&v2, "older than version");

    // Signed, but naming another root than its file's: refused before the
    // switch writes anything (the update record on the ESP says why).
    let g3 = generation(&f.dir, 3, &[]);
    f.publish(&[&s(&g3.path)]).ok();
    let mut other_root = f.parsed();
    other_root.generations.last_mut().unwrap().root_hash = Some("00".repeat(32));
    std::fs::write(
        f.channel.join("channel.toml"),
        pak::channel::seal(&other_root.to_toml(), &key),
    )
    .unwrap();
    common::pak(["system", "mark-good", "--disk", &s(&img)]).ok();
    let before = status(&img);
    let err = f.update(&img, &url, &[]).fails();
    assert!(
        err.contains("generation 3") && err.contains("but the signed channel metadata says 0000"),
        "{err}"
    );
    let after = status(&img);
    assert_eq!(after["slots"], before["slots"], "a slot was written");
    assert_eq!(after["default_entry"], "pak-b-2.conf");
    assert_eq!(
        snapshot(&img, &f.root).1,
        Vec::<String>::new(),
        "the download is discarded"
    );
    let replay = pak::channel::verify("c", v2.as_bytes(), &key.public()).unwrap();
    assert!(replay.version < f.parsed().version);
    assert!(matches!(
        pak::channel::check_fresh(
            "c",
            &replay,
            0,
            rec.seen.values().next().copied().unwrap(),
            "s"
        ),
        Err(ChannelError::Replayed { .. })
    ));
}

#[test]
fn a_disk_image_names_its_channel_in_etc_pak_update_toml() {
    let f = Fixture::new();
    let public = std::fs::read_to_string(&f.public).unwrap();
    let conf = format!(
        "channel = \"file://{}\"\nkey = \"channel.pub\"\n",
        s(&f.channel)
    );
    let g1 = generation(
        &f.dir,
        1,
        &[("pak/update.toml", &conf), ("pak/channel.pub", &public)],
    );
    let g2 = generation(
        &f.dir,
        2,
        &[("pak/update.toml", &conf), ("pak/channel.pub", &public)],
    );
    let img = disk_with(&f.dir, &g1);
    f.publish(&[&s(&g2.path)]).ok();
    let out = common::pak(["system", "update", "--disk", &s(&img), "--check", "--json"])
        .root(&f.root)
        .ok();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["action"]["kind"], "available");
    assert_eq!(v["action"]["generation"], 2);

    // Status names the channel and what the last update found: --check
    // recorded nothing.
    let st = common::pak(["system", "status", "--disk", &s(&img)])
        .root(&f.root)
        .ok();
    assert!(
        st.contains(&format!(
            "updates: channel file://{} (from /etc/pak/update.toml in the generation",
            s(&f.channel)
        )) && st.contains("last check: never"),
        "{st}"
    );
    // A download cut short (the server's file is short) is pending.
    let served = f.channel.join("test-2.sqfs");
    let whole = std::fs::read(&served).unwrap();
    std::fs::write(&served, &whole[..whole.len() / 2]).unwrap();
    let err = common::pak(["system", "update", "--disk", &s(&img)])
        .root(&f.root)
        .fails();
    assert!(err.contains("resume"), "{err}");
    let st = common::pak(["system", "status", "--disk", &s(&img)])
        .root(&f.root)
        .ok();
    assert!(
        st.contains("(metadata version 1, newest generation 2): generation 2 did not install")
            && st.contains(
                "pending: generation 2 downloaded 1 of 4 MiB; `pak system update` resumes it"
            ),
        "{st}"
    );
    std::fs::write(&served, &whole).unwrap();
    common::pak(["system", "update", "--disk", &s(&img)])
        .root(&f.root)
        .ok();
    let st = common::pak(["system", "status", "--disk", &s(&img), "--json"])
        .root(&f.root)
        .ok();
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    let u = &v["update"];
    assert_eq!(u["channel"], format!("file://{}", s(&f.channel)), "{st}");
    assert_eq!(u["last_found"]["outcome"]["kind"], "installed", "{st}");
    assert_eq!(u["last_found"]["outcome"]["generation"], 2, "{st}");
    assert!(u["last_check"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(u["failed"], serde_json::json!([]), "{st}");
    assert!(u["pending"].is_null(), "a disk boots what is next: {st}");
    let g0 = generation(&f.dir, 5, &[]);
    let bare = disk_with(&f.dir, &g0);
    let err = common::pak(["system", "update", "--disk", &s(&bare)])
        .root(&f.root)
        .fails();
    assert!(
        err.contains("/etc/pak/update.toml in the generation"),
        "{err}"
    );
}

/// A download cut midway resumes where it stopped, with a Range request.
#[test]
fn an_interrupted_download_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("big");
    let bytes = patterned(1 << 20, 9);
    std::fs::write(&src, &bytes).unwrap();
    let partial = tmp.path().join("cache/x.partial");
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, &bytes[..300_000]).unwrap();
    pak::sources::fetch::download_resumable(&s(&src), &partial, bytes.len() as u64, "x").unwrap();
    assert!(std::fs::read(&partial).unwrap() == bytes);
    // A partial longer than the file starts over.
    std::fs::write(&partial, vec![0u8; (1 << 20) + 5]).unwrap();
    pak::sources::fetch::download_resumable(&s(&src), &partial, bytes.len() as u64, "x").unwrap();
    assert!(std::fs::read(&partial).unwrap() == bytes);
    // A file shorter than promised is reported, to be resumed later.
    let err = pak::sources::fetch::download_resumable(
        &s(&src),
        &tmp.path().join("cache/y.partial"),
        bytes.len() as u64 + 10,
        "y",
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("resume"), "{err:#}");
}

/// A project that builds a small bootable image from stand-in packages
/// (no Debian, no network).
fn image_project() -> Project {
    let p = Project::new();
    p.add(&Package::kernel("kernel"));
    p.add(&Package::boot_loader("boot-loader"));
    p.add(&Package::new("motd", "1.0-1").file("etc/motd", "hello\n"));
    p.index();
    p.pakfile_with(
        "pak = \"*\"\nkernel = \"*\"\nboot-loader = \"*\"\nmotd = \"*\"\n",
        "\n[image]\nsize = \"512MiB\"\n",
    );
    p
}

/// The number a generation file says it has.
fn number_of(path: &Path) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    pak::system::Incoming::read(f, "g").unwrap().meta.number
}

/// `pak build --generation` numbers the generation itself: after the
/// newest pak built from the Pakfile, after a disk image's newest, after
/// a channel's newest (which `--keep` never lowers); `--number` still
/// says it outright, and `pak publish` refuses a number already passed.
#[test]
fn build_numbers_a_generation_after_where_it_goes() {
    let p = image_project();
    let f = Fixture::new();
    let build = |file: &str, extra: &[&str]| {
        let mut args = vec!["build", "--generation", file];
        args.extend_from_slice(extra);
        p.ok(&args)
    };

    // Nothing built yet: the first generation is 1.
    let out = build("first.sqfs", &[]);
    assert!(
        out.contains("numbering it generation 1: pak has built no generation"),
        "{out}"
    );
    assert_eq!(number_of(&p.path("first.sqfs")), 1);
    p.ok(&["build", "-o", "disk.raw"]);
    let out = build("g2.sqfs", &[]);
    assert!(
        out.contains(
            "numbering it generation 2: the newest pak built from Pakfile is generation 1"
        ),
        "{out}"
    );
    assert_eq!(number_of(&p.path("g2.sqfs")), 2);
    build("g3.sqfs", &[]);
    assert_eq!(number_of(&p.path("g3.sqfs")), 3);
    // The record is the builder's, under its root, and not in the lock.
    let records: Vec<_> = std::fs::read_dir(p.path("root/projects"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        records.len() == 1 && records[0].contains("generation = 3"),
        "{records:?}"
    );
    let lock = std::fs::read_to_string(p.path("Pakfile.lock")).unwrap();
    assert!(!lock.contains("generation"), "{lock}");

    // After a disk: its newest generation, whatever the record says.
    let out = build("d.sqfs", &["--after", "disk.raw"]);
    assert!(out.contains("the disk disk.raw has generation 1"), "{out}");
    assert_eq!(number_of(&p.path("d.sqfs")), 2);

    // After a channel: its newest, also when pruned away.
    let chan = s(&f.channel);
    let err = p.fails(&["build", "--generation", "c.sqfs", "--after", &chan]);
    assert!(
        err.contains("no such channel directory or disk image"),
        "{err}"
    );
    std::fs::create_dir_all(&f.channel).unwrap();
    let err = p.fails(&["build", "--generation", "c.sqfs", "--after", &chan]);
    assert!(err.contains("nothing is published there yet"), "{err}");
    assert!(!p.path("c.sqfs").exists(), "a refusal builds nothing");
    f.publish(&[&s(&p.path("g3.sqfs")), "--keep", "1"]).ok();
    let err = f.publish(&[&s(&p.path("g2.sqfs"))]).fails();
    assert!(
        err.contains("not newer than generation 3") && err.contains(&format!("--after {chan}")),
        "{err}"
    );
    let out = build("c.sqfs", &["--after", &chan]);
    assert!(out.contains("has generation 3"), "{out}");
    f.publish(&[&s(&p.path("c.sqfs")), "--keep", "1"]).ok();
    assert_eq!(f.parsed().generations.len(), 1);
    let url = format!("file://{chan}");
    build("c5.sqfs", &["--after", &url]);
    assert_eq!(number_of(&p.path("c5.sqfs")), 5);

    // --number says it outright; it does not go with --after, nor without
    // --generation.
    build("n9.sqfs", &["--number", "9"]);
    assert_eq!(number_of(&p.path("n9.sqfs")), 9);
    let err = p.fails(&[
        "build",
        "--generation",
        "x.sqfs",
        "--number",
        "2",
        "--after",
        &chan,
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = p.fails(&["build", "-o", "x.raw", "--after", &chan]);
    assert!(err.contains("--generation"), "{err}");
    // The record only grows: a new disk image is generation 1 again, the
    // next generation still comes after 9.
    p.ok(&["build", "-o", "disk2.raw"]);
    let out = build("g10.sqfs", &[]);
    assert!(out.contains("numbering it generation 10"), "{out}");
}
