//! Build products remembered by what they are made of, so an unchanged
//! rebuild does not make them again.
//!
//! Two products of `pak build` are kept in `<root>/cache/build/`:
//!
//! - the boot files made from the kernel package: the initramfs and
//!   depmod's `modules.dep` and `modules.alias` ([`BootFiles`]), keyed by
//!   the kernel package's store key, the modules directory, and the
//!   sha256 of the `/init` program;
//! - the sealed generation (squashfs, seal, dm-verity tree, trailer),
//!   keyed by everything the squashfs writer reads: every path of the tree
//!   with its mode, owner, xattrs and kind, each regular file by the sha256
//!   of its bytes (a store file by the one its package's BOM records and its
//!   extraction checked), and the writer's settings that shape the bytes.
//!
//! Every key also names the running pak binary by its sha256 (which the
//! lock's pak package needs anyway), not only its version: a binary whose
//! code changed under the same version number must not be served another
//! binary's output. What a key names is exactly what the product is
//! computed from, so a remembered product is the bytes the build would
//! make; nothing of the cache's own history (when or in what order entries
//! were made) reaches an output.
//!
//! An entry is checked before it is used: the boot files carry their own
//! sha256, a generation's is compared while it is copied out (that sha256
//! is the one the ESP's description records, so checking costs nothing
//! extra). A damaged or truncated entry is removed and the product made
//! again; a cache that cannot be written only costs time next build. The
//! newest few entries are kept, the rest removed.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::image::squashfs;

/// Generations kept: a few images built in turn from one root (e.g.
/// `images/minimal` and `images/server`) all stay warm.
const KEEP_GENERATIONS: usize = 4;
const KEEP_BOOT_FILES: usize = 8;

const GENERATION: &str = "gen";
const GENERATION_META: &str = "gen.toml";
const BOOT_FILES: &str = "boot";
const BOOT_MAGIC: &[u8; 8] = b"PAKBOOT1";

/// A sha256 over length-prefixed fields, so no two sequences of fields
/// hash alike.
pub struct KeyBuilder(Sha256);

/// The hex name of a remembered product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl KeyBuilder {
    /// A key for products of kind `what`, made by the running pak binary;
    /// `None` when that binary cannot be read (nothing is remembered then).
    pub fn new(what: &str) -> Option<KeyBuilder> {
        let pak = crate::sources::selfpkg::sha256();
        if pak.is_empty() {
            return None;
        }
        let mut k = KeyBuilder(Sha256::new());
        k.field(b"pak build memo 1");
        k.field(what.as_bytes());
        k.field(pak.as_bytes());
        Some(k)
    }

    pub fn field(&mut self, bytes: &[u8]) -> &mut KeyBuilder {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub fn finish(self) -> Key {
        Key(hex::encode(self.0.finalize()))
    }
}

/// The key of the sealed generation that `squashfs::write` and
/// `generation::seal` make of `tree` with `opts`. `digest` gives the
/// sha256 of a file the tree takes from the store.
pub fn generation_key(
    tree: &squashfs::Tree,
    opts: &squashfs::Options,
    digest: impl Fn(&Path) -> Option<String>,
) -> Option<Key> {
    let mut k = KeyBuilder::new("sealed generation")?;
    // The cache and the thread count do not change the bytes (the writer
    // promises so, and its tests check it); everything else may.
    let settings = squashfs::Options {
        cache: None,
        threads: 0,
        ..opts.clone()
    };
    k.field(format!("{settings:?}").as_bytes());
    for (path, e) in &tree.entries {
        let mut content = None;
        let kind = e.kind.map_ref(|s| match s {
            squashfs::Source::Path(p) => {
                content = digest(p);
                "stored"
            }
            squashfs::Source::Bytes(b) => {
                content = Some(crate::util::fsutil::sha256_hex(b));
                "bytes"
            }
        });
        if matches!(e.kind, squashfs::Kind::File(_)) && content.is_none() {
            return None;
        }
        k.field(path.as_bytes());
        k.field(
            format!(
                "{kind:?} {} {:o} {} {} {:?}",
                content.unwrap_or_default(),
                e.mode,
                e.uid,
                e.gid,
                e.xattrs
            )
            .as_bytes(),
        );
    }
    Some(k.finish())
}

/// The boot files made from a kernel package for an `/init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub initrd: Vec<u8>,
    /// depmod's files, by name.
    pub depmod: Vec<(String, Vec<u8>)>,
}

impl BootFiles {
    /// `magic | sha256 of the rest | initrd | each depmod file`, every
    /// piece length-prefixed.
    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let mut put = |b: &[u8]| {
            body.extend_from_slice(&(b.len() as u64).to_le_bytes());
            body.extend_from_slice(b);
        };
        put(&self.initrd);
        for (name, bytes) in &self.depmod {
            put(name.as_bytes());
            put(bytes);
        }
        let mut out = BOOT_MAGIC.to_vec();
        out.extend_from_slice(&Sha256::digest(&body));
        out.extend_from_slice(&body);
        out
    }

    /// `None` for anything [`BootFiles::encode`] did not write.
    fn decode(bytes: &[u8]) -> Option<BootFiles> {
        let body = bytes.strip_prefix(BOOT_MAGIC)?;
        let (sum, mut body) = body.split_at_checked(32)?;
        if Sha256::digest(body)[..] != *sum {
            return None;
        }
        let mut take = || -> Option<Vec<u8>> {
            let (len, rest) = body.split_at_checked(8)?;
            let len = usize::try_from(u64::from_le_bytes(len.try_into().ok()?)).ok()?;
            let (piece, rest) = rest.split_at_checked(len)?;
            body = rest;
            Some(piece.to_vec())
        };
        let initrd = take()?;
        let mut depmod = Vec::new();
        while let Some(name) = take() {
            depmod.push((String::from_utf8(name).ok()?, take()?));
        }
        Some(BootFiles { initrd, depmod })
    }
}

/// What is known of a generation file without reading it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationFile {
    /// Of the whole file: squashfs, seal, tree and trailer.
    pub sha256: String,
    pub size: u64,
    pub verity: pak_boot::verity::Verity,
    /// The squashfs writer's figures, as when it was written.
    pub bytes: u64,
    pub inodes: u32,
    pub data_blocks: u64,
    pub fragments: u32,
}

/// The remembered products of one root.
pub struct Memo {
    dir: PathBuf,
}

impl Memo {
    pub fn new(cache_dir: &Path) -> Memo {
        Memo {
            dir: cache_dir.join("build"),
        }
    }

    fn path(&self, key: &Key, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", key.0))
    }

    pub fn boot_files(&self, key: &Key) -> Option<BootFiles> {
        let p = self.path(key, BOOT_FILES);
        let bytes = std::fs::read(&p).ok()?;
        let found = BootFiles::decode(&bytes);
        match &found {
            Some(_) => touch(&p),
            None => {
                let _ = std::fs::remove_file(&p);
            }
        }
        found
    }

    pub fn keep_boot_files(&self, key: &Key, files: &BootFiles) {
        let p = self.path(key, BOOT_FILES);
        if self.write(&p, |f| f.write_all(&files.encode())).is_ok() {
            self.evict(BOOT_FILES, KEEP_BOOT_FILES);
        }
    }

    /// The generation remembered under `key`, checked against its record
    /// (read whole and hashed) and open at its start: `None` (and the
    /// entry removed) if there is none or it is not what was remembered.
    /// The open file stays whole whatever another build does to the
    /// cache meanwhile (entries are replaced or removed, never changed).
    pub fn generation(&self, key: &Key) -> Option<(File, PathBuf, GenerationFile)> {
        let (meta_path, gen_path) = (self.path(key, GENERATION_META), self.path(key, GENERATION));
        let meta = std::fs::read_to_string(&meta_path)
            .ok()
            .and_then(|t| toml::from_str::<GenerationFile>(&t).ok())?;
        let mut file = File::open(&gen_path).ok()?;
        let mut hash = Sha256::new();
        let size = std::io::copy(&mut file, &mut hash).ok();
        if size != Some(meta.size) || hex::encode(hash.finalize()) != meta.sha256 {
            let _ = std::fs::remove_file(&gen_path);
            let _ = std::fs::remove_file(&meta_path);
            return None;
        }
        file.seek(SeekFrom::Start(0)).ok()?;
        touch(&gen_path);
        Some((file, gen_path, meta))
    }

    /// Remembers the generation file at `path`, described by `meta`.
    pub fn keep_generation(&self, key: &Key, path: &Path, meta: &GenerationFile) {
        let kept = self
            .write(&self.path(key, GENERATION), |f| {
                std::io::copy(&mut File::open(path)?, f).map(drop)
            })
            .and_then(|()| {
                let text = toml::to_string(meta).expect("GenerationFile always serialises");
                self.write(&self.path(key, GENERATION_META), |f| {
                    f.write_all(text.as_bytes())
                })
            });
        if kept.is_ok() {
            self.evict(GENERATION, KEEP_GENERATIONS);
        }
    }

    /// Writes a file of the cache whole or not at all: several builds
    /// may share a root.
    fn write(
        &self,
        p: &Path,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)?;
        fill(tmp.as_file_mut())?;
        tmp.persist(p).map_err(|e| e.error)?;
        Ok(())
    }

    /// Removes all but the `keep` most recently used entries of a kind
    /// (a generation with its description).
    fn evict(&self, ext: &str, keep: usize) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let suffix = format!(".{ext}");
        let mut found: Vec<(std::time::SystemTime, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        found.sort();
        let drop = found.len().saturating_sub(keep);
        for (_, p) in found.into_iter().take(drop) {
            let _ = std::fs::remove_file(&p);
            if ext == GENERATION {
                let _ = std::fs::remove_file(p.with_extension(GENERATION_META));
            }
        }
    }
}

/// Marks an entry as just used, so eviction keeps it.
fn touch(p: &Path) {
    if let Ok(f) = File::options().write(true).open(p) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        let mut k = KeyBuilder::new("test").expect("the test binary is readable");
        k.field(s.as_bytes());
        k.finish()
    }

    #[test]
    fn fields_are_delimited() {
        let two = |a: &str, b: &str| {
            let mut k = KeyBuilder::new("test").unwrap();
            k.field(a.as_bytes()).field(b.as_bytes());
            k.finish()
        };
        assert_ne!(two("ab", "c"), two("a", "bc"));
        assert_eq!(two("a", "bc"), two("a", "bc"));
    }

    #[test]
    fn every_input_of_the_writer_is_in_the_generation_key() {
        use squashfs::{Entry, Kind, Source, Tree};
        let entry = |kind: Kind| Entry {
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        };
        let mut base = Tree::default();
        base.entries.insert(String::new(), entry(Kind::Dir));
        base.entries.insert(
            "bin".into(),
            entry(Kind::File(Source::Path("/store/x/tree/bin".into()))),
        );
        base.entries.insert(
            "etc".into(),
            entry(Kind::File(Source::Bytes(b"a".to_vec()))),
        );
        base.entries
            .insert("sh".into(), entry(Kind::Symlink("bin".into())));
        let opts = squashfs::Options::default();
        let digest = |_: &Path| Some("d1".to_string());
        let k = |t: &Tree, o: &squashfs::Options, d: &dyn Fn(&Path) -> Option<String>| {
            generation_key(t, o, d).unwrap()
        };
        let same = k(&base, &opts, &digest);
        assert_eq!(k(&base.clone(), &opts, &digest), same);
        // Settings that do not shape the bytes do not change the key.
        let other_cache = squashfs::Options {
            cache: Some("/elsewhere".into()),
            threads: 7,
            ..opts.clone()
        };
        assert_eq!(k(&base, &other_cache, &digest), same);

        let mut changed: Vec<Key> = Vec::new();
        let edit = |f: &dyn Fn(&mut Tree)| {
            let mut t = base.clone();
            f(&mut t);
            k(&t, &opts, &digest)
        };
        changed.push(k(&base, &opts, &|_: &Path| Some("d2".to_string())));
        changed.push(edit(&|t| {
            t.entries.get_mut("etc").unwrap().kind = Kind::File(Source::Bytes(b"b".to_vec()))
        }));
        changed.push(edit(&|t| t.entries.get_mut("bin").unwrap().mode = 0o755));
        changed.push(edit(&|t| t.entries.get_mut("bin").unwrap().uid = 1));
        changed.push(edit(&|t| t.entries.get_mut("bin").unwrap().gid = 1));
        changed.push(edit(&|t| {
            t.entries.get_mut("bin").unwrap().xattrs = vec![("user.a".into(), vec![1])]
        }));
        changed.push(edit(&|t| {
            t.entries.get_mut("sh").unwrap().kind = Kind::Symlink("etc".into())
        }));
        changed.push(edit(&|t| {
            t.entries.get_mut("sh").unwrap().kind = Kind::HardLink("bin".into())
        }));
        changed.push(edit(&|t| {
            let e = t.entries.remove("sh").unwrap();
            t.entries.insert("sh2".into(), e);
        }));
        for o in [
            squashfs::Options {
                mtime: 1,
                ..opts.clone()
            },
            squashfs::Options {
                level: 3,
                ..opts.clone()
            },
            squashfs::Options {
                block_size: 4096,
                ..opts.clone()
            },
        ] {
            changed.push(k(&base, &o, &digest));
        }
        for (i, c) in changed.iter().enumerate() {
            assert_ne!(*c, same, "change {i} kept the key");
        }
        // A stored file whose sha256 is unknown: nothing is remembered.
        assert!(generation_key(&base, &opts, |_| None).is_none());
    }

    #[test]
    fn boot_files_round_trip_and_damage_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let memo = Memo::new(dir.path());
        let files = BootFiles {
            initrd: vec![7; 5000],
            depmod: vec![
                ("modules.dep".into(), b"a.ko:\n".to_vec()),
                ("modules.alias".into(), Vec::new()),
            ],
        };
        assert_eq!(memo.boot_files(&key("k")), None);
        memo.keep_boot_files(&key("k"), &files);
        assert_eq!(memo.boot_files(&key("k")), Some(files.clone()));
        assert_eq!(memo.boot_files(&key("other")), None);
        let p = memo.path(&key("k"), BOOT_FILES);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(memo.boot_files(&key("k")), None);
        assert!(!p.exists(), "a damaged entry is removed");
    }

    #[test]
    fn a_generation_is_restored_only_as_it_was_kept() {
        let dir = tempfile::tempdir().unwrap();
        let memo = Memo::new(&dir.path().join("cache"));
        let src = dir.path().join("gen");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &bytes).unwrap();
        let meta = GenerationFile {
            sha256: crate::util::fsutil::sha256_hex(&bytes),
            size: bytes.len() as u64,
            verity: pak_boot::verity::Verity {
                root_hash: "00".repeat(32),
                salt: "11".repeat(32),
                data_blocks: 3,
            },
            bytes: 1,
            inodes: 2,
            data_blocks: 3,
            fragments: 4,
        };
        assert!(memo.generation(&key("g")).is_none());
        memo.keep_generation(&key("g"), &src, &meta);
        let (mut f, _, found) = memo.generation(&key("g")).unwrap();
        assert_eq!(found, meta);
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut read).unwrap();
        assert_eq!(read, bytes);
        // A changed byte in the cache: not served, and forgotten.
        let cached = memo.path(&key("g"), GENERATION);
        let mut damaged = bytes.clone();
        damaged[2_000_000] ^= 1;
        std::fs::write(&cached, &damaged).unwrap();
        assert!(memo.generation(&key("g")).is_none());
        assert!(!cached.exists());
    }

    #[test]
    fn only_the_newest_generations_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let memo = Memo::new(dir.path());
        let src = dir.path().join("gen");
        std::fs::write(&src, b"x").unwrap();
        let meta = GenerationFile {
            sha256: crate::util::fsutil::sha256_hex(b"x"),
            size: 1,
            verity: pak_boot::verity::Verity {
                root_hash: String::new(),
                salt: String::new(),
                data_blocks: 1,
            },
            bytes: 0,
            inodes: 0,
            data_blocks: 0,
            fragments: 0,
        };
        let old = std::time::SystemTime::UNIX_EPOCH;
        for i in 0..KEEP_GENERATIONS + 2 {
            memo.keep_generation(&key(&i.to_string()), &src, &meta);
            // Older than anything kept later, whatever the clock's grain.
            File::options()
                .write(true)
                .open(memo.path(&key(&i.to_string()), GENERATION))
                .unwrap()
                .set_modified(old + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        for i in 0..2 {
            assert!(
                memo.generation(&key(&i.to_string())).is_none(),
                "{i} was evicted"
            );
        }
        for i in 2..KEEP_GENERATIONS + 2 {
            assert!(memo.generation(&key(&i.to_string())).is_some());
        }
        assert!(!memo.path(&key("0"), GENERATION_META).exists());
    }
}
