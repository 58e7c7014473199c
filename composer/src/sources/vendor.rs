//! `pak vendor DIR`: every locked package into signed pak repositories of
//! one's own, so that the same lock builds when none of its repositories
//! can be reached, or when they have dropped what it pins.
//!
//! A vendored copy keeps each package's identity. For each repository the
//! lock takes packages from, `DIR/<repository>/` holds the artifacts exactly
//! as they were downloaded (the `.pak`, or the `.deb` of an apt repository)
//! at the lock's own `location`, and a signed index listing them with their
//! metadata (`format = "deb"` for Debian packages, converted when fetched
//! like the apt kind's). The copy is used as each repository's `mirror`:
//! the printed `[[repository]]` entries are the Pakfile's own with a
//! `mirror` line added. A locked package is then fetched from the mirror by
//! its location and checked against the lock's sha256, so the lock stays
//! valid as it is and `pak build --offline` makes the same image; and since
//! an image records its repositories but never where they were mirrored
//! (see `sysconfig::embedded`), it is the same image bit for bit. The
//! copies are also signed repositories in their own right, for a Pakfile
//! that resolves against them alone.
//!
//! pak itself (repository `pak`) is never vendored: the binary that builds
//! is the one that goes in.
//!
//! Nothing is written until every artifact is at hand (from the download
//! cache, or downloaded into it), and each repository is staged in DIR and
//! renamed into place, so a failure leaves DIR as it was.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::lock::LockedPackage;
use crate::packages::pakinfo::PakInfo;
use crate::project::{Project, Update};
use crate::sources::Sources;
use crate::sources::key::{PublicKey, SecretKey};
use crate::sources::repo::{Format, INDEX, IndexEntry};

/// The key file names `pak vendor` generates in DIR when given no key.
pub const KEY_NAME: &str = "vendor";

/// What `pak vendor` wrote.
#[derive(Debug)]
pub struct Vendored {
    /// DIR, absolute.
    pub dir: PathBuf,
    /// Each repository written: its name and how many packages it holds.
    pub repos: Vec<(String, usize)>,
    pub key: KeyUsed,
    /// Locked packages that are not vendored (pak itself).
    pub skipped: Vec<LockedPackage>,
}

/// The key the indexes are signed with.
#[derive(Debug)]
pub enum KeyUsed {
    /// `--key FILE`: its public half goes into the snippet as text.
    Given { secret: PathBuf, public: PublicKey },
    /// DIR/vendor.key, made now or by an earlier `pak vendor`.
    InDir { public: PathBuf, generated: bool },
}

/// One package to vendor: its lock entry, artifact and index metadata.
struct Item {
    locked: LockedPackage,
    path: PathBuf,
    format: Format,
    info: PakInfo,
}

pub fn vendor(project: &Project, dir: &Path, key: Option<&Path>) -> Result<Vendored> {
    // A key that cannot be read fails before anything is downloaded.
    let given = key
        .map(|path| SecretKey::read(path).map(|secret| (path, secret)))
        .transpose()?;
    let lock = project.lock(Update::IfNeeded)?.lock;
    let dir = std::path::absolute(dir)
        .with_context(|| format!("cannot make {} absolute", dir.display()))?;
    let sources = Sources::from_pakfile(&project.pakfile)?;
    let mut groups: BTreeMap<String, Vec<Item>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for p in &lock.packages {
        if p.source == crate::sources::selfpkg::REPO {
            skipped.push(p.clone());
            continue;
        }
        check_repo_name(&p.source)?;
        check_location(p)?;
        let target = dir.join(&p.source);
        if target.exists() && !target.join(INDEX).is_file() {
            bail!(
                "{} exists and is not a pak repository; pak vendor replaces only repositories it wrote. Remove it or choose another DIR",
                target.display()
            );
        }
        let artifact = sources
            .artifact(p, &project.root)
            .with_context(|| format!("cannot vendor {} {}", p.name, p.version))?;
        let info = match artifact.format {
            Format::Pak => {
                let info = crate::packages::package::read_info(&artifact.path)?;
                if info.name != p.name || info.version != p.version {
                    bail!(
                        "{}: holds {} {}, but the lock says {} {}",
                        artifact.path.display(),
                        info.name,
                        info.version,
                        p.name,
                        p.version
                    );
                }
                info
            }
            // What the lock knows of it is what resolving needs, and is
            // what apt's index gave when it was locked.
            Format::Deb => p.to_candidate().info,
        };
        groups.entry(p.source.clone()).or_default().push(Item {
            locked: p.clone(),
            path: artifact.path,
            format: artifact.format,
            info,
        });
    }
    if groups.is_empty() {
        bail!(
            "the lock holds no package to vendor (only pak itself, which is the building binary)"
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (secret, key) = match given {
        Some((path, secret)) => {
            let public = secret.public();
            let secret_path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            (
                secret,
                KeyUsed::Given {
                    secret: secret_path,
                    public,
                },
            )
        }
        None => key_in_dir(&dir)?,
    };
    let mut repos = Vec::new();
    for (name, items) in groups {
        write_repository(&dir, &name, &items, &secret)?;
        repos.push((name, items.len()));
    }
    Ok(Vendored {
        dir,
        repos,
        key,
        skipped,
    })
}

/// A repository name becomes a directory of DIR.
fn check_repo_name(name: &str) -> Result<()> {
    let key_file = |ext: &str| name == format!("{KEY_NAME}.{ext}");
    if name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.contains('\0')
        || key_file("key")
        || key_file("pub")
    {
        bail!(
            "repository {name:?} cannot be vendored under that name (it becomes a directory of DIR); rename it in the Pakfile and run `pak update`"
        );
    }
    Ok(())
}

/// The artifact is kept at the lock's location below its repository, which
/// must therefore be a plain relative path.
fn check_location(p: &LockedPackage) -> Result<()> {
    let l = &p.location;
    if l.is_empty()
        || l.contains("://")
        || l.starts_with('/')
        || l.contains('\0')
        || l.split('/').any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!(
            "{} {} is locked at {l:?}, which is not a path inside its repository, so a vendored copy cannot keep that location; `pak update {}` may lock it from a plain repository",
            p.name,
            p.version,
            p.name
        );
    }
    Ok(())
}

/// DIR/vendor.key, generated (with vendor.pub) the first time.
fn key_in_dir(dir: &Path) -> Result<(SecretKey, KeyUsed)> {
    let name = dir.join(KEY_NAME);
    let (secret_path, public_path) = (name.with_extension("key"), name.with_extension("pub"));
    let generated = !secret_path.exists();
    if generated {
        crate::sources::key::generate_files(&name)?;
    }
    let secret = SecretKey::read(&secret_path)?;
    let text = std::fs::read_to_string(&public_path).with_context(|| {
        format!(
            "cannot read {} beside {}; restore it, or pass --key",
            public_path.display(),
            secret_path.display()
        )
    })?;
    if PublicKey::parse(&text)
        .with_context(|| format!("{} is not a pak public key", public_path.display()))?
        .id()
        != secret.public().id()
    {
        bail!(
            "{} is not the public half of {}; restore the pair, or pass --key",
            public_path.display(),
            secret_path.display()
        );
    }
    Ok((
        secret,
        KeyUsed::InDir {
            public: public_path,
            generated,
        },
    ))
}

/// Writes DIR/<name> from scratch beside it, then swaps it in.
fn write_repository(dir: &Path, name: &str, items: &[Item], key: &SecretKey) -> Result<()> {
    let target = dir.join(name);
    let staging = tempfile::Builder::new()
        .prefix(".vendor-")
        .tempdir_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let stage = staging.path().join("new");
    let mut entries = Vec::new();
    for item in items {
        let p = &item.locked;
        let dest = stage.join(&p.location);
        let parent = dest.parent().expect("a location has a file name");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        std::fs::copy(&item.path, &dest).with_context(|| {
            format!("cannot copy {} to {}", item.path.display(), dest.display())
        })?;
        let (size, sha256) = crate::packages::package::hash_file(&dest)?;
        if sha256 != p.sha256 {
            bail!(
                "{} changed while it was copied (sha256 {sha256}, locked {}); nothing was replaced",
                item.path.display(),
                p.sha256
            );
        }
        entries.push(IndexEntry {
            file: p.location.clone(),
            sha256,
            size,
            format: (item.format != Format::Pak).then_some(item.format),
            archive_date: p.archive_date.clone(),
            info: item.info.clone(),
        });
    }
    // The next version of the index already there, so that hosts that have
    // seen it accept this one.
    let version = std::fs::read_to_string(target.join(INDEX))
        .ok()
        .and_then(|t| toml::from_str::<crate::sources::repo::Index>(&t).ok())
        .map_or(1, |i| i.version + 1);
    crate::sources::repo::sign_index(
        &stage,
        key,
        entries,
        crate::sources::repo::DEFAULT_EXPIRY_DAYS,
        Some(version),
    )?;
    fix_modes(&stage)?;
    if target.exists() {
        std::fs::rename(&target, staging.path().join("old"))
            .with_context(|| format!("cannot move {} aside", target.display()))?;
    }
    std::fs::rename(&stage, &target)
        .with_context(|| format!("cannot move the new repository to {}", target.display()))?;
    crate::util::fsutil::sync_dir(dir)?;
    Ok(())
}

/// Readable by everyone whatever the umask: a vendored copy is meant to be
/// committed, copied and served.
fn fix_modes(dir: &Path) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644))?;
            }
        }
    }
    Ok(())
}

impl Vendored {
    /// The Pakfile's `[[repository]]` entries as they are, each repository
    /// that was vendored with a `mirror` line pointing at its copy (a path
    /// relative to the Pakfile's directory when DIR is below it). Keeping
    /// the entries keeps the image: repositories' URLs and keys are part
    /// of what an image records, a mirror is not.
    pub fn snippet(&self, pakfile: &crate::spec::pakfile::Pakfile) -> Result<String> {
        let shown = |p: &Path| -> String {
            p.strip_prefix(&pakfile.dir)
                .unwrap_or(p)
                .display()
                .to_string()
        };
        #[derive(serde::Serialize)]
        struct Repositories<'a> {
            repository: &'a [crate::spec::pakfile::RepositorySpec],
        }
        let mut repository = pakfile.repository.clone();
        for r in &mut repository {
            if self.repos.iter().any(|(name, _)| *name == r.name) {
                r.mirror = Some(shown(&self.dir.join(&r.name)));
            }
        }
        toml::to_string(&Repositories {
            repository: &repository,
        })
        .context("cannot write the [[repository]] entries")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked(location: &str) -> LockedPackage {
        LockedPackage {
            name: "a".into(),
            version: "1".into(),
            arch: "x86_64".into(),
            sha256: "ab".repeat(32),
            size: 1,
            source: "r".into(),
            location: location.into(),
            requires: vec![],
            provides: vec![],
            conflicts: vec![],
            archive_date: None,
        }
    }

    #[test]
    fn names_and_locations_must_stay_inside_dir() {
        for good in ["debian", "local-2"] {
            check_repo_name(good).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "vendor.key", "vendor.pub"] {
            assert!(check_repo_name(bad).is_err(), "{bad:?}");
        }
        check_location(&locked("a-1-x86_64.pak")).unwrap();
        check_location(&locked("bookworm/pool/main/a/a_1_amd64.deb")).unwrap();
        for bad in ["", "/etc/passwd", "../a.pak", "a//b.pak", "https://h/a.pak"] {
            let err = check_location(&locked(bad)).unwrap_err();
            assert!(err.to_string().contains("pak update a"), "{err}");
        }
    }

    #[test]
    fn snippet_keeps_the_repositories_and_adds_mirrors_relative_to_the_pakfile() {
        let v = Vendored {
            dir: PathBuf::from("/p/vendor"),
            repos: vec![("debian".into(), 2), ("local".into(), 1)],
            key: KeyUsed::InDir {
                public: PathBuf::from("/p/vendor/vendor.pub"),
                generated: true,
            },
            skipped: vec![],
        };
        let mut pakfile = crate::spec::pakfile::Pakfile::parse(
            "[[repository]]\nname = \"debian\"\nkind = \"apt\"\n\n[[repository]]\nname = \"local\"\nurl = \"https://example.org/repo\"\nkey = \"local.pub\"\n\n[[repository]]\nname = \"unused\"\nurl = \"other\"\nkey = \"local.pub\"\n",
        )
        .unwrap();
        pakfile.dir = PathBuf::from("/p");
        let text = v.snippet(&pakfile).unwrap();
        let parsed = crate::spec::pakfile::Pakfile::parse(&text).unwrap();
        let mirrors: Vec<_> = parsed
            .repository
            .iter()
            .map(|r| (r.name.as_str(), r.url.as_deref(), r.mirror.as_deref()))
            .collect();
        assert_eq!(
            mirrors,
            [
                ("debian", None, Some("vendor/debian")),
                (
                    "local",
                    Some("https://example.org/repo"),
                    Some("vendor/local")
                ),
                ("unused", Some("other"), None),
            ]
        );
        pakfile.dir = PathBuf::from("/q");
        assert!(
            v.snippet(&pakfile)
                .unwrap()
                .contains("mirror = \"/p/vendor/debian\"")
        );
    }
}
