//! The repositories a Pakfile names, as one ordered source of packages:
//! candidates for the resolver, and locked packages fetched into the store.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::apt::{self, AptHost};
use crate::candidate::Candidate;
use crate::lock::LockedPackage;
use crate::pakfile::Pakfile;
use crate::repo::Repository;
use crate::root::Root;
use crate::store::{Store, StoreEntry};

pub enum Source {
    Pak(Repository),
    Apt {
        name: String,
        host: AptHost,
    },
    /// The running pak itself (see `selfpkg`), always last.
    Builtin,
}

impl Source {
    pub fn name(&self) -> &str {
        match self {
            Source::Pak(r) => &r.name,
            Source::Apt { name, .. } => name,
            Source::Builtin => crate::selfpkg::REPO,
        }
    }
}

pub struct Sources {
    list: Vec<Source>,
}

impl Sources {
    pub fn from_pakfile(p: &Pakfile) -> Result<Sources> {
        let mut list = Vec::new();
        for spec in &p.repository {
            list.push(match spec.kind.as_str() {
                "apt" => Source::Apt {
                    name: spec.name.clone(),
                    host: AptHost::system(),
                },
                _ => Source::Pak(Repository::from_spec(spec, &p.dir)?),
            });
        }
        list.push(Source::Builtin);
        Ok(Sources { list })
    }

    /// Every candidate of every repository, in the Pakfile's order.
    pub fn candidates(&self, root: &Root) -> Result<Vec<Candidate>> {
        if self.list.len() == 1 {
            bail!(
                "the Pakfile names no repository; add a [[repository]] (see `pak init` for examples)"
            );
        }
        let mut out = Vec::new();
        for s in &self.list {
            match s {
                Source::Pak(r) => out.extend(r.load(root)?),
                Source::Apt { name, host } => out.extend(apt::load_from(host, name, root)?),
                Source::Builtin => out.push(crate::selfpkg::candidate()?),
            }
        }
        Ok(out)
    }

    fn get(&self, name: &str) -> Result<&Source> {
        self.list.iter().find(|s| s.name() == name).with_context(|| {
            format!("the lock takes packages from repository {name:?}, which the Pakfile no longer names; run `pak update`")
        })
    }

    /// Makes a locked package available in the store: from the store if it
    /// is there, else from the download cache, else downloaded. Nothing
    /// unverified reaches the store.
    pub fn fetch(&self, p: &LockedPackage, root: &Root, store: &Store) -> Result<StoreEntry> {
        let key = p.store_key();
        if let Some(e) = store.get(&key) {
            return Ok(e);
        }
        let source = self.get(&p.source)?;
        let what = format!(
            "package {} {} from repository {:?}",
            p.name, p.version, p.source
        );
        if let Source::Builtin = source {
            let tmp = tempfile::tempdir_in(store.dir()).context("cannot package pak itself")?;
            let pak = crate::selfpkg::write_package(&p.sha256, tmp.path())?;
            return store.install(&pak, &key);
        }
        let ext = if matches!(source, Source::Apt { .. }) {
            "deb"
        } else {
            "pak"
        };
        let cached: PathBuf = root
            .cache_dir()
            .join("pkgs")
            .join(format!("{}.{ext}", p.sha256));
        let cache_ok = cached.is_file()
            && crate::package::hash_file(&cached)
                .map(|(_, h)| h == p.sha256)
                .unwrap_or(false);
        if !cache_ok {
            let url = match source {
                Source::Pak(r) => r.url_of(&p.location),
                Source::Apt { host, .. } => apt::url_for(host, &p.location)?,
                Source::Builtin => unreachable!("handled above"),
            };
            crate::fetch::download_verified(&url, &cached, &p.sha256, p.size, &what)?;
        }
        let entry = match source {
            Source::Pak(_) => {
                let info = crate::package::read_info(&cached)?;
                if info.name != p.name || info.version != p.version {
                    bail!(
                        "{what}: the file holds {} {} instead",
                        info.name,
                        info.version
                    );
                }
                store.install(&cached, &key)
            }
            Source::Builtin => unreachable!("handled above"),
            Source::Apt { .. } => {
                let tmp =
                    tempfile::tempdir_in(root.cache_dir()).context("cannot convert the .deb")?;
                let pak = crate::deb::import(&cached, tmp.path())?;
                store.install(&pak, &key)
            }
        };
        entry.with_context(|| format!("cannot add {what} to the store"))
    }
}
