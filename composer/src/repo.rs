//! Signed pak repositories: a directory or URL holding `index`,
//! `index.sig` and the `.pak` files.
//!
//! The index is TOML: a format number, a monotonically increasing
//! `version`, an `expires` time (unix seconds) and every package with its
//! metadata, file name, size and sha256. pak refuses an index that is
//! unsigned, signed by another key, tampered with, expired, or older than
//! one it has already seen from that repository (a replay of old, perhaps
//! vulnerable, packages).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::candidate::Candidate;
use crate::key::{PublicKey, SecretKey};
use crate::pakfile::RepositorySpec;
use crate::pakinfo::PakInfo;
use crate::root::Root;

pub const INDEX: &str = "index";
pub const SIG: &str = "index.sig";
const INDEX_MAX: u64 = 256 << 20;
pub const DEFAULT_EXPIRY_DAYS: u64 = 30;

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
    pub file: String,
    pub sha256: String,
    pub size: u64,
    pub info: PakInfo,
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
        let info = crate::package::read_info(&path)?;
        let (size, sha256) = crate::package::hash_file(&path)?;
        packages.push(IndexEntry {
            file,
            sha256,
            size,
            info,
        });
    }
    let previous = std::fs::read_to_string(dir.join(INDEX))
        .ok()
        .and_then(|t| toml::from_str::<Index>(&t).ok());
    let version = match (version, &previous) {
        (Some(v), _) => v,
        (None, Some(p)) => p.version + 1,
        (None, None) => 1,
    };
    let index = Index {
        format: 1,
        version,
        expires: build_time() + expires_in_days * 86_400,
        packages,
    };
    let text = toml::to_string(&index)?;
    crate::fsutil::write_atomic(&dir.join(SIG), key.sign(text.as_bytes()).as_bytes())?;
    crate::fsutil::write_atomic(&dir.join(INDEX), text.as_bytes())?;
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
            crate::fetch::join(&self.base, location)
        }
    }

    /// Fetches and checks the index; returns its candidates.
    pub fn load(&self, root: &Root) -> Result<Vec<Candidate>> {
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
            })
            .collect())
    }

    pub fn load_index(&self, root: &Root) -> Result<Index> {
        let what = format!("repository {:?} ({})", self.name, self.base);
        let index_url = crate::fetch::join(&self.base, INDEX);
        let data = crate::fetch::get_bytes(&index_url, INDEX_MAX)
            .with_context(|| format!("{what}: cannot read its index"))?;
        let sig = crate::fetch::get_optional(&crate::fetch::join(&self.base, SIG), 4096)?.with_context(|| {
            format!("{what} has no index.sig: pak only reads signed repositories. Sign it with `pak repo index DIR --key KEY`")
        })?;
        let sig = String::from_utf8(sig).context("index.sig is not text")?;
        self.key
            .verify(&data, &sig)
            .with_context(|| format!("{what}: the index signature is bad"))?;
        let text = std::str::from_utf8(&data)
            .with_context(|| format!("{what}: the index is not UTF-8"))?;
        let index: Index =
            toml::from_str(text).with_context(|| format!("{what}: the index is malformed"))?;
        if index.format != 1 {
            bail!(
                "{what}: index format {} is newer than this pak understands; upgrade pak",
                index.format
            );
        }
        let t = now();
        if index.expires <= t {
            bail!(
                "{what}: the index expired on {} (it is now {}); the repository must be re-signed with `pak repo index`, or an attacker is replaying an old index",
                crate::timefmt::utc(index.expires),
                crate::timefmt::utc(t)
            );
        }
        self.check_not_older(root, index.version, &what)?;
        Ok(index)
    }

    /// Refuses an index older than the newest seen from this repository,
    /// then records the version.
    fn check_not_older(&self, root: &Root, version: u64, what: &str) -> Result<()> {
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
            crate::fsutil::write_atomic(&state, format!("{version}\n").as_bytes())?;
        }
        Ok(())
    }
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
            .then_with(|| crate::version::compare(&b.1.info.version, &a.1.info.version))
    });
    hits.into_iter().map(|(_, c)| c).collect()
}
