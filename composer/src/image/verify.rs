//! Reproducibility, checked: `pak verify IMAGE` rebuilds an image from
//! what its own generation carries (`/usr/lib/pak/Pakfile.lock` and the
//! self-contained `/usr/lib/pak/Pakfile`) and compares the two byte for
//! byte; `pak build --check` builds a second time in another environment
//! (another user, store, directories, umask, time zone, locale, CPU count,
//! later on the clock) and compares.
//!
//! Both answer with data, what was varied and where the images differ
//! (the partition, the byte, what lies there, and the first differing file
//! inside it), for the command line to render.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::image::compare::{self, Difference};
use crate::image::generation::{self, GenerationMeta};
use crate::image::squashfs::Reader;
use crate::image::{self, Inputs};
use crate::lock::Lock;
use crate::project::Project;
use crate::spec::pakfile::Pakfile;
use crate::state::StateDir;

/// What a generation carries to be rebuilt.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub meta: GenerationMeta,
    pub lock: Lock,
    pub lock_text: String,
    pub pakfile_text: String,
    /// `Pakfile.files/<sha256>` beside the Pakfile: (name, bytes).
    pub files: Vec<(String, Vec<u8>)>,
    /// The sha256 of the image's `/usr/bin/pak`, the binary that built it.
    pub pak_sha256: Option<String>,
    /// The timestamp of every inode (`SOURCE_DATE_EPOCH` of the build).
    pub mtime: u32,
    /// Whether the generation still matches the sha256 sealed behind it
    /// when it was written: if not, it changed after the build.
    pub sealed: bool,
}

/// A disk image from `pak build -o`, or a generation file from
/// `pak build --generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    Disk,
    Generation,
}

/// Reads what `image`'s generation (slot a of a disk) carries to be
/// rebuilt.
pub fn read_embedded(image: &Path) -> Result<(ImageKind, Embedded)> {
    let open =
        || std::fs::File::open(image).with_context(|| format!("cannot open {}", image.display()));
    // A damaged partition table is an error, not a reason to read the disk
    // as a generation file.
    let table = crate::disk::gpt::probe(&mut open()?)
        .with_context(|| format!("{}: its partition table is damaged", image.display()))?;
    let (kind, base) = match table {
        Some(parts) => {
            let root_a = pak_boot::disk::Slot::A.label();
            let slot = parts.iter().find(|p| p.label == root_a).with_context(|| {
                format!(
                    "{} has a partition table but no {root_a} partition: it is not a disk made by `pak build`",
                    image.display()
                )
            })?;
            (ImageKind::Disk, slot.offset())
        }
        None => (ImageKind::Generation, 0),
    };
    let mut r = Reader::open(open()?, base).with_context(|| match kind {
        ImageKind::Disk => format!("{}: slot a holds no readable generation", image.display()),
        ImageKind::Generation => format!(
            "{} is neither a pak disk image (no partition table) nor a generation file",
            image.display()
        ),
    })?;
    let text = |r: &mut Reader<std::fs::File>, path: &str, what: &str| -> Result<String> {
        let bytes = r.read(path).with_context(|| {
            format!(
                "{}: its generation has no /{path}, so it cannot be rebuilt: {what}",
                image.display()
            )
        })?;
        String::from_utf8(bytes)
            .with_context(|| format!("{}: /{path} is not text", image.display()))
    };
    let meta_text = text(&mut r, generation::META_FILE, "it is not a pak generation")?;
    let meta = GenerationMeta::parse(&meta_text).with_context(|| {
        format!(
            "{}: /{} is malformed",
            image.display(),
            generation::META_FILE
        )
    })?;
    let lock_text = text(&mut r, generation::LOCK_FILE, "it is not a pak generation")?;
    let lock = Lock::parse(&lock_text).with_context(|| {
        format!(
            "{}: its /{} is malformed",
            image.display(),
            generation::LOCK_FILE
        )
    })?;
    let pakfile_text = text(
        &mut r,
        generation::PAKFILE_FILE,
        "it was built by a pak that did not yet record its Pakfile there; rebuild it with this pak (`pak build`), then verify",
    )?;
    let mut files = Vec::new();
    if r.stat(generation::PAKFILE_FILES_DIR)?.is_some() {
        for name in r.list(generation::PAKFILE_FILES_DIR)? {
            let bytes = r.read(&format!("{}/{name}", generation::PAKFILE_FILES_DIR))?;
            if crate::util::fsutil::sha256_hex(&bytes) != name {
                bail!(
                    "{}: /{}/{name} does not hold the content its name (a sha256) promises: the image is damaged",
                    image.display(),
                    generation::PAKFILE_FILES_DIR
                );
            }
            files.push((
                format!("{}/{name}", crate::image::sysconfig::EMBEDDED_FILES_DIR),
                bytes,
            ));
        }
    }
    let pak_sha256 = r
        .read("usr/bin/pak")
        .ok()
        .map(|b| crate::util::fsutil::sha256_hex(&b));
    let sealed = generation::seal_intact(&mut open()?, base).unwrap_or(false);
    Ok((
        kind,
        Embedded {
            sealed,
            meta,
            lock,
            lock_text,
            pakfile_text,
            files,
            pak_sha256,
            mtime: r.mtime(),
        },
    ))
}

/// Writes the embedded Pakfile, its lock and the files beside it into
/// `dir`, as a project; returns the Pakfile's path.
pub fn write_project(e: &Embedded, dir: &Path) -> Result<PathBuf> {
    let files_dir = dir.join(crate::image::sysconfig::EMBEDDED_FILES_DIR);
    std::fs::create_dir_all(&files_dir)
        .with_context(|| format!("cannot create {}", files_dir.display()))?;
    let pakfile = dir.join("Pakfile");
    std::fs::write(&pakfile, &e.pakfile_text)?;
    std::fs::write(Lock::path_for(&pakfile), &e.lock_text)?;
    for (name, bytes) in &e.files {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(pakfile)
}

/// The sha256 of the running pak binary.
fn running_pak() -> Result<String> {
    Ok(crate::packages::package::hash_file(&crate::sources::selfpkg::exe()?)?.1)
}

/// The image was built by another pak binary than the one running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OtherPak {
    pub image: String,
    pub running: String,
}

impl OtherPak {
    /// Only for an image whose seal holds: in a damaged one, /usr/bin/pak
    /// may be what was damaged.
    pub(super) fn of(e: &Embedded) -> Result<Option<OtherPak>> {
        let running = running_pak()?;
        Ok(e.pak_sha256
            .as_ref()
            .filter(|_| e.sealed)
            .filter(|s| **s != running)
            .map(|image| OtherPak {
                image: image.clone(),
                running,
            }))
    }

    pub fn explain(&self) -> String {
        format!(
            "the image was built by a different pak binary (its /usr/bin/pak has sha256 {}, this pak {}). pak puts its own binary into every image (as /usr/bin/pak and as the initramfs /init), so that alone makes the bytes differ: verify with the pak that built the image",
            short(&self.image),
            short(&self.running)
        )
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(16)]
}

/// Where the packages of a rebuild come from, besides their repositories.
pub struct Seeds<'a> {
    /// Roots whose download caches (`cache/pkgs/<sha256>.<ext>`) are copied
    /// from, by sha256.
    pub roots: Vec<StateDir>,
    /// The directory of the Pakfile that built the image, when known: a
    /// repository given as a relative directory is found from there.
    pub project_dir: Option<&'a Path>,
}

/// Makes every locked package's download available to a build in `root`:
/// already in its store or cache, copied from a seed, or downloadable from
/// its repository. Names every package that is none of these, and how to
/// get it.
pub(super) fn seed_downloads(
    pakfile: &Pakfile,
    lock: &Lock,
    root: &StateDir,
    seeds: &Seeds,
) -> Result<()> {
    let store = root.store_dir();
    let cache = root.cache_dir().join("pkgs");
    let mut missing = Vec::new();
    for p in &lock.packages {
        if p.is_builder() || store.join(p.store_key()).is_dir() {
            continue;
        }
        let Some(repo) = pakfile.repository.iter().find(|r| r.name == p.source) else {
            bail!(
                "the lock takes {} {} from repository {:?}, which its Pakfile does not name: the image's description is inconsistent",
                p.name,
                p.version,
                p.source
            );
        };
        // A pak repository may also serve a Debian package as it is (a
        // vendored one); the cache keeps each by its own extension.
        let exts: &[&str] = if repo.kind == crate::spec::pakfile::RepoKind::Apt {
            &["deb"]
        } else {
            &["pak", "deb"]
        };
        let cached = |dir: &Path, ext: &str| dir.join(format!("{}.{ext}", p.sha256));
        if exts.iter().any(|e| cached(&cache, e).is_file()) {
            continue;
        }
        let mut candidates: Vec<(PathBuf, &str)> = Vec::new();
        for s in &seeds.roots {
            for e in exts {
                candidates.push((cached(&s.cache_dir().join("pkgs"), e), e));
            }
        }
        let url = repo.url.as_deref().unwrap_or("");
        let remote = repo.kind == crate::spec::pakfile::RepoKind::Apt
            || crate::sources::fetch::is_remote(url)
            || crate::sources::fetch::is_remote(&p.location);
        if !remote {
            let dir = Path::new(url.strip_prefix("file://").unwrap_or(url));
            let ext = if p.location.ends_with(".deb") {
                "deb"
            } else {
                "pak"
            };
            if dir.is_absolute() {
                candidates.push((dir.join(&p.location), ext));
            } else if let Some(project) = seeds.project_dir {
                candidates.push((project.join(dir).join(&p.location), ext));
            }
        }
        match candidates.iter().find(|(c, _)| c.is_file()) {
            Some((from, ext)) => {
                let target = cached(&cache, ext);
                std::fs::create_dir_all(&cache)
                    .with_context(|| format!("cannot create {}", cache.display()))?;
                // A copy, never a link: the build may not change the
                // caller's files, and it checks the sha256 before use.
                std::fs::copy(from, &target).with_context(|| {
                    format!("cannot copy {} to {}", from.display(), target.display())
                })?;
            }
            None if remote => {}
            None => missing.push(format!(
                "{} {} (sha256 {}) from repository {:?}, a local directory ({url:?}; a relative one means relative to the Pakfile that built the image)",
                p.name, p.version, p.sha256, p.source
            )),
        }
    }
    if !missing.is_empty() {
        let looked: Vec<String> = seeds
            .roots
            .iter()
            .map(|r| r.cache_dir().join("pkgs").display().to_string())
            .collect();
        bail!(
            "cannot rebuild: these locked packages come from a local directory that cannot be found from here, and no download cache holds them{}:\n  {}\nrun `pak fetch` in the project that built the image (it keeps every download in <root>/cache/pkgs), or pass that project's store with --root, then try again",
            if looked.is_empty() {
                String::new()
            } else {
                format!(" (looked in {})", looked.join(", "))
            },
            missing.join("\n  ")
        );
    }
    Ok(())
}

/// What `pak verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub image: PathBuf,
    pub kind: ImageKind,
    pub system: String,
    pub generation: u64,
    pub packages: usize,
    /// The store root the rebuild used.
    pub root: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_pak: Option<OtherPak>,
    /// The generation no longer matches the sha256 sealed behind it: it
    /// was changed after `pak build` wrote it.
    pub seal_broken: bool,
    /// Empty when the rebuild is identical.
    pub differences: Vec<Difference>,
}

impl VerifyReport {
    pub fn identical(&self) -> bool {
        self.differences.is_empty()
    }
}

/// `pak verify IMAGE`: rebuilds the image from its own lock and Pakfile, in
/// `root` (the caller's `--root`) or else in a scratch root whose download
/// cache is seeded from `seeds`, and compares. The image is only read.
pub fn verify(image: &Path, root: Option<StateDir>, seeds: &Seeds) -> Result<VerifyReport> {
    let (kind, e) = read_embedded(image)?;
    if kind == ImageKind::Disk && e.meta.number != 1 {
        bail!(
            "slot a of {} holds generation {}, not the generation 1 that `pak build` writes: the disk was switched since it was built. Verify a generation file instead (`pak verify GENERATION.sqfs`)",
            image.display(),
            e.meta.number
        );
    }
    let scratch = tempfile::Builder::new()
        .prefix("pak-verify-")
        .tempdir()
        .context("cannot make a scratch directory for the rebuild")?;
    let pakfile = write_project(&e, &scratch.path().join("project"))?;
    let root = root.unwrap_or_else(|| StateDir::new(scratch.path().join("root")));
    let project = Project::open(&pakfile, root.clone()).with_context(|| {
        format!(
            "{}: the Pakfile it carries cannot be read by this pak",
            image.display()
        )
    })?;
    seed_downloads(&project.pakfile, &e.lock, &root, seeds)?;
    let other_pak = OtherPak::of(&e)?;
    let again = scratch.path().join(match kind {
        ImageKind::Disk => "again.raw",
        ImageKind::Generation => "again.sqfs",
    });
    let built = Inputs::exactly(&project, e.lock.clone(), e.mtime).and_then(|inputs| match kind {
        ImageKind::Disk => image::image_from(&project, &inputs, &again),
        ImageKind::Generation => image::generation_from(&project, &inputs, e.meta.number, &again),
    });
    if let Err(err) = built {
        return Err(match &other_pak {
            Some(o) => err.context(format!(
                "cannot rebuild {}; {}",
                image.display(),
                o.explain()
            )),
            None => err.context(format!("cannot rebuild {}", image.display())),
        });
    }
    let differences = compare::differences(image, &again)?;
    Ok(VerifyReport {
        image: image.to_path_buf(),
        kind,
        system: e.meta.system.clone(),
        generation: e.meta.number,
        packages: e.lock.packages.len(),
        root: root.dir().to_path_buf(),
        other_pak,
        seal_broken: !e.sealed,
        differences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockedPackage;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_damaged_partition_table_is_named_not_read_as_a_generation() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x.raw");
        let mut bytes = vec![0u8; 64 << 10];
        bytes[512..520].copy_from_slice(b"EFI PART");
        std::fs::write(&img, &bytes).unwrap();
        let err = format!("{:#}", read_embedded(&img).unwrap_err());
        assert!(err.contains("its partition table is damaged"), "{err}");
    }

    fn locked(name: &str, source: &str, sha: &str) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: "1.0-1".into(),
            arch: "x86_64".into(),
            sha256: sha.into(),
            size: 4,
            source: source.into(),
            location: format!("{name}-1.0-1-x86_64.pak"),
            requires: vec![],
            provides: vec![],
            conflicts: vec![],
            archive_date: None,
        }
    }

    #[test]
    fn packages_of_a_relative_directory_come_from_a_cache_or_are_named() {
        let d = tempfile::tempdir().unwrap();
        let public = crate::sources::key::SecretKey::generate()
            .unwrap()
            .public()
            .to_text();
        let pakfile = Pakfile::parse(&format!(
            "[[repository]]\nname = \"local\"\nurl = \"repo\"\nkey = \"\"\"\n{public}\"\"\"\n[[repository]]\nname = \"debian\"\nkind = \"apt\"\n"
        ))
        .unwrap();
        let greet = locked("greet", "local", &"ab".repeat(32));
        let lock = Lock::new(vec![
            greet.clone(),
            locked("busybox", "debian", &"cd".repeat(32)),
            locked("pak", crate::sources::selfpkg::REPO, &"ef".repeat(32)),
        ]);
        let root = StateDir::new(d.path().join("scratch"));
        let err = seed_downloads(
            &pakfile,
            &lock,
            &root,
            &Seeds {
                roots: vec![StateDir::new(d.path().join("empty"))],
                project_dir: None,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("greet 1.0-1")
                && err.contains("\"local\"")
                && err.contains("pak fetch")
                && err.contains("--root")
                && !err.contains("busybox"),
            "only the unreachable package is named, with what to do: {err}"
        );
        assert!(!root.dir().exists(), "nothing was written: {err}");

        // From a download cache, by sha256: copied, the original kept.
        let seed = StateDir::new(d.path().join("seed"));
        let cached = seed
            .cache_dir()
            .join("pkgs")
            .join(format!("{}.pak", greet.sha256));
        std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
        std::fs::write(&cached, b"greet").unwrap();
        let seeds = Seeds {
            roots: vec![seed.clone()],
            project_dir: None,
        };
        seed_downloads(&pakfile, &lock, &root, &seeds).unwrap();
        let copy = root
            .cache_dir()
            .join("pkgs")
            .join(format!("{}.pak", greet.sha256));
        assert_eq!(std::fs::read(&copy).unwrap(), b"greet");
        assert_ne!(
            std::fs::metadata(&copy).unwrap().ino(),
            std::fs::metadata(&cached).unwrap().ino(),
            "a copy, not a link"
        );

        // From the directory the Pakfile names, when its project is known.
        let other = StateDir::new(d.path().join("other"));
        let project = d.path().join("project");
        std::fs::create_dir_all(project.join("repo")).unwrap();
        std::fs::write(project.join("repo").join(&greet.location), b"from repo").unwrap();
        seed_downloads(
            &pakfile,
            &lock,
            &other,
            &Seeds {
                roots: vec![],
                project_dir: Some(&project),
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::read(
                other
                    .cache_dir()
                    .join("pkgs")
                    .join(format!("{}.pak", greet.sha256))
            )
            .unwrap(),
            b"from repo"
        );
    }
}
