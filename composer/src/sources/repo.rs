//! Signed pak repositories: a directory or URL holding `index`,
//! `index.sig` and the `.pak` files.
//!
//! The index is TOML: a format number, a monotonically increasing
//! `version`, an `expires` time (unix seconds) and every package with its
//! metadata, file name, size and sha256. pak refuses an index that is
//! unsigned, signed by another key, tampered with, expired, or older than
//! one it has already seen from that repository (a replay of old, perhaps
//! vulnerable, packages).
//!
//! An entry's file is a `.pak`, or, with `format = "deb"`, a Debian package
//! kept exactly as the archive served it (what `pak vendor` writes, so that
//! a lock's sha256 and location stay valid); it is converted like the apt
//! kind's. Such an index says `format = 2`, so that an older pak refuses it
//! by asking for an upgrade instead of misreading it.
//!
//! Fetching a locked package reads the index too, with its signature
//! checked but not its age: the lock pins the artifact's sha256, so an old
//! index cannot smuggle anything in, and the index only answers whether the
//! repository still offers that artifact and in which format.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::packages::candidate::Candidate;
use crate::packages::pakinfo::PakInfo;
use crate::sources::key::{PublicKey, SecretKey};
use crate::spec::pakfile::RepositorySpec;
use crate::state::StateDir;

pub const INDEX: &str = "index";
pub const SIG: &str = "index.sig";
const INDEX_MAX: u64 = 256 << 20;
pub const DEFAULT_EXPIRY_DAYS: u64 = 30;
/// The index format of a repository of `.pak` files only.
const FORMAT_PAK: u32 = 1;
/// The index format once an entry has a `format` of its own.
const FORMAT_ARTIFACTS: u32 = 2;

/// What an index entry's file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Pak,
    /// A Debian `.deb`, converted with `deb::import` when fetched.
    Deb,
}

impl Format {
    /// The extension of its files in the download cache.
    pub fn ext(self) -> &'static str {
        match self {
            Format::Pak => "pak",
            Format::Deb => "deb",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    pub version: u64,
    /// Unix seconds after which the index is refused.
    pub expires: u64,
    #[serde(default, rename = "package")]
    pub packages: Vec<IndexEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    /// Relative to the repository (may name a subdirectory).
    pub file: String,
    pub sha256: String,
    pub size: u64,
    /// `None` for a `.pak`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// For Debian packages: the archive date their lock records (see
    /// `LockedPackage::archive_date`), kept so that re-locking from a
    /// vendored copy gives the same lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_date: Option<String>,
    pub info: PakInfo,
}

impl IndexEntry {
    pub fn format(&self) -> Format {
        self.format.unwrap_or(Format::Pak)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `SOURCE_DATE_EPOCH` when set (reproducible indexes), else the clock.
fn build_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(now)
}

/// `pak repo index DIR --key K`: indexes every `*.pak` in DIR and signs.
/// The version is one more than the index already there, unless given.
/// Entries of other formats (a vendored repository's `.deb`s) are kept from
/// the index already there while their files still match it.
pub fn write_index(
    dir: &Path,
    key: &SecretKey,
    expires_in_days: u64,
    version: Option<u64>,
) -> Result<Index> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pak"))
        .collect();
    files.sort();
    let mut packages = Vec::new();
    for file in files {
        let path = dir.join(&file);
        let info = crate::packages::package::read_info(&path)?;
        let (size, sha256) = crate::packages::package::hash_file(&path)?;
        packages.push(IndexEntry {
            file,
            sha256,
            size,
            format: None,
            archive_date: None,
            info,
        });
    }
    for e in previous_index(dir).map(|p| p.packages).unwrap_or_default() {
        if e.format() == Format::Pak {
            continue;
        }
        let path = dir.join(&e.file);
        let (size, sha256) = crate::packages::package::hash_file(&path).with_context(|| {
            format!(
                "the index lists {} ({} {}), which is missing; restore it or vendor again",
                e.file, e.info.name, e.info.version
            )
        })?;
        if (size, sha256.as_str()) != (e.size, e.sha256.as_str()) {
            bail!(
                "{} ({} {}) no longer matches its index entry (sha256 {sha256}, index {}); restore it or vendor again",
                path.display(),
                e.info.name,
                e.info.version,
                e.sha256
            );
        }
        packages.push(e);
    }
    sign_index(dir, key, packages, expires_in_days, version)
}

fn previous_index(dir: &Path) -> Option<Index> {
    std::fs::read_to_string(dir.join(INDEX))
        .ok()
        .and_then(|t| toml::from_str::<Index>(&t).ok())
}

/// Writes and signs DIR's index for `packages` (sorted by file here). The
/// version is one more than the index already in DIR, unless given; the
/// only time in it is the expiry, from `SOURCE_DATE_EPOCH` when set.
pub fn sign_index(
    dir: &Path,
    key: &SecretKey,
    mut packages: Vec<IndexEntry>,
    expires_in_days: u64,
    version: Option<u64>,
) -> Result<Index> {
    packages.sort_by(|a, b| a.file.cmp(&b.file));
    if let Some(w) = packages.windows(2).find(|w| w[0].file == w[1].file) {
        bail!("{} would be listed twice in the index", w[0].file);
    }
    let version = match (version, previous_index(dir)) {
        (Some(v), _) => v,
        (None, Some(p)) => p.version + 1,
        (None, None) => 1,
    };
    let format = if packages.iter().all(|e| e.format() == Format::Pak) {
        FORMAT_PAK
    } else {
        FORMAT_ARTIFACTS
    };
    let index = Index {
        format,
        version,
        expires: build_time() + expires_in_days * 86_400,
        packages,
    };
    let text = toml::to_string(&index)?;
    crate::util::fsutil::write_atomic(&dir.join(SIG), key.sign(text.as_bytes()).as_bytes())?;
    crate::util::fsutil::write_atomic(&dir.join(INDEX), text.as_bytes())?;
    Ok(index)
}

/// A repository of a Pakfile, ready to read.
pub struct Repository {
    pub name: String,
    /// A URL or an absolute directory path.
    pub base: String,
    pub key: PublicKey,
}

impl Repository {
    pub fn from_spec(spec: &RepositorySpec, pakfile_dir: &Path) -> Result<Repository> {
        let url = spec
            .url
            .as_deref()
            .context("a pak repository needs a url")?;
        let base = if url.contains("://") {
            url.to_string()
        } else {
            pakfile_dir.join(url).display().to_string()
        };
        let key = PublicKey::from_pakfile_field(
            spec.key
                .as_deref()
                .context("a pak repository needs a key")?,
            pakfile_dir,
        )
        .with_context(|| format!("repository {:?}", spec.name))?;
        Ok(Repository {
            name: spec.name.clone(),
            base,
            key,
        })
    }

    pub fn url_of(&self, location: &str) -> String {
        if location.contains("://") {
            location.to_string()
        } else {
            crate::sources::fetch::join(&self.base, location)
        }
    }

    /// Fetches and checks the index; returns its candidates.
    pub fn load(&self, root: &StateDir) -> Result<Vec<Candidate>> {
        let index = self.load_index(root)?;
        Ok(index
            .packages
            .into_iter()
            .map(|e| Candidate {
                info: e.info,
                repo: self.name.clone(),
                location: e.file,
                sha256: e.sha256,
                size: e.size,
                archive_date: e.archive_date,
            })
            .collect())
    }

    fn what(&self) -> String {
        format!("repository {:?} ({})", self.name, self.base)
    }

    /// Fetches and checks the index: signature, format, expiry, and no
    /// rollback to an older version than already seen.
    pub fn load_index(&self, root: &StateDir) -> Result<Index> {
        let index = self.read_signed_index()?;
        let what = self.what();
        let t = now();
        if index.expires <= t {
            bail!(
                "{what}: the index expired on {} (it is now {}); the repository must be re-signed with `pak repo index`, or an attacker is replaying an old index",
                crate::util::timefmt::utc(index.expires),
                crate::util::timefmt::utc(t)
            );
        }
        self.check_not_older(root, index.version, &what)?;
        Ok(index)
    }

    /// The index as the fetch of a locked package reads it: signed by the
    /// repository's key, of any age (see the module's header).
    pub fn index_for_fetch(&self) -> Result<Index> {
        self.read_signed_index()
    }

    fn read_signed_index(&self) -> Result<Index> {
        let what = self.what();
        let index_url = crate::sources::fetch::join(&self.base, INDEX);
        let data = crate::sources::fetch::get_bytes(&index_url, INDEX_MAX)
            .with_context(|| format!("{what}: cannot read its index"))?;
        let sig = crate::sources::fetch::get_optional(&crate::sources::fetch::join(&self.base, SIG), 4096)?.with_context(|| {
            format!("{what} has no index.sig: pak only reads signed repositories. Sign it with `pak repo index DIR --key KEY`")
        })?;
        parse_signed_index(&what, &self.key, &data, sig)
    }

    /// Refuses an index older than the newest seen from this repository,
    /// then records the version.
    fn check_not_older(&self, root: &StateDir, version: u64, what: &str) -> Result<()> {
        use sha2::Digest;
        let id =
            hex::encode(&sha2::Sha256::digest(format!("{}\0{}", self.key.id(), self.base))[..12]);
        let state = root.repos_dir().join(format!("{id}.version"));
        let seen: u64 = std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if version < seen {
            bail!(
                "{what}: its index is version {version}, older than version {seen} already seen; refusing a rollback to old packages. If the repository was rebuilt on purpose, remove {}",
                state.display()
            );
        }
        if version > seen {
            crate::util::fsutil::write_atomic(&state, format!("{version}\n").as_bytes())?;
        }
        Ok(())
    }
}

/// Checks an index's signature against `key`, then parses it; `what`
/// names the repository in errors.
pub fn parse_signed_index(what: &str, key: &PublicKey, data: &[u8], sig: Vec<u8>) -> Result<Index> {
    let sig = String::from_utf8(sig).context("index.sig is not text")?;
    key.verify(data, &sig)
        .with_context(|| format!("{what}: the index signature is bad"))?;
    let text =
        std::str::from_utf8(data).with_context(|| format!("{what}: the index is not UTF-8"))?;
    let index: Index =
        toml::from_str(text).with_context(|| format!("{what}: the index is malformed"))?;
    if !(FORMAT_PAK..=FORMAT_ARTIFACTS).contains(&index.format) {
        bail!(
            "{what}: index format {} is newer than this pak understands; upgrade pak",
            index.format
        );
    }
    Ok(index)
}

/// Ranks candidates for `pak search`: exact name, prefix, substring of the
/// name, then matches in provides or summary.
pub fn search<'a>(cands: &'a [Candidate], term: &str) -> Vec<&'a Candidate> {
    let t = term.to_lowercase();
    let mut hits: Vec<(u8, &Candidate)> = cands
        .iter()
        .filter_map(|c| {
            let name = c.info.name.to_lowercase();
            let rank = if name == t {
                0
            } else if name.starts_with(&t) {
                1
            } else if name.contains(&t) {
                2
            } else if c
                .info
                .provides
                .iter()
                .any(|p| p.to_lowercase().contains(&t))
            {
                3
            } else if c.info.summary.to_lowercase().contains(&t) {
                4
            } else {
                return None;
            };
            Some((rank, c))
        })
        .collect();
    hits.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.info.name.cmp(&b.1.info.name))
            .then_with(|| crate::packages::version::compare(&b.1.info.version, &a.1.info.version))
    });
    hits.into_iter().map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb_entry(dir: &Path, file: &str, bytes: &[u8]) -> IndexEntry {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        IndexEntry {
            file: file.into(),
            sha256: crate::util::fsutil::sha256_hex(bytes),
            size: bytes.len() as u64,
            format: Some(Format::Deb),
            archive_date: Some("20230610T091320Z".into()),
            info: PakInfo::from_toml("name = \"k\"\nversion = \"1\"\narch = \"x86_64\"\n").unwrap(),
        }
    }

    #[test]
    fn debian_entries_survive_reindexing_and_fetch_ignores_expiry() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("repo");
        let key = SecretKey::generate().unwrap();
        let deb = deb_entry(&dir, "bookworm/pool/k_1.deb", b"a deb");
        let first = sign_index(&dir, &key, vec![deb.clone()], 1, None).unwrap();
        assert_eq!((first.format, first.version), (FORMAT_ARTIFACTS, 1));

        let src = d.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join(".PAKINFO"),
            "name = \"p\"\nversion = \"1\"\narch = \"any\"\n",
        )
        .unwrap();
        crate::packages::package::create_from_dir(&src, &dir).unwrap();
        // `pak repo index` on a vendored repository keeps its .deb entries.
        let again = write_index(&dir, &key, 1, None).unwrap();
        assert_eq!(again.version, 2);
        let files: Vec<&str> = again.packages.iter().map(|e| e.file.as_str()).collect();
        assert_eq!(files, ["bookworm/pool/k_1.deb", "p-1-any.pak"]);
        assert_eq!(again.packages[0], deb);

        let repo = Repository {
            name: "v".into(),
            base: dir.display().to_string(),
            key: key.public(),
        };
        let root = StateDir::new(d.path().join("root"));
        let cands = repo.load(&root).unwrap();
        assert_eq!(cands[0].archive_date.as_deref(), Some("20230610T091320Z"));

        // Expired: refused for resolving, still read for fetching a pinned
        // artifact; a bad signature is refused by both.
        sign_index(&dir, &key, again.packages.clone(), 0, Some(3)).unwrap();
        let err = repo.load_index(&root).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        assert_eq!(repo.index_for_fetch().unwrap().packages.len(), 2);
        let other = Repository {
            key: SecretKey::generate().unwrap().public(),
            ..repo
        };
        assert!(other.index_for_fetch().is_err());

        // A vendored file that changed is not silently re-signed.
        std::fs::write(dir.join("bookworm/pool/k_1.deb"), b"another deb").unwrap();
        let err = write_index(&dir, &key, 1, None).unwrap_err();
        assert!(err.to_string().contains("no longer matches"), "{err}");
    }
}
