//! The repositories a Pakfile names, as one ordered source of packages:
//! candidates for the resolver, and locked packages fetched into the store.
//!
//! A locked package comes from the store, else from the download cache
//! (`<root>/cache/pkgs/<sha256>.<ext>`, the artifact as downloaded), else
//! from its repository. A repository that no longer has it (the file is
//! gone, or a pak repository's signed index no longer lists it) is an error
//! that names the package and the ways out; an apt repository with a
//! `snapshot` base first asks the archive snapshot of the lock's
//! `archive_date`, and only for that exact version. Under `--offline`
//! nothing is downloaded, and the error says what is missing.

pub mod apt;
pub mod fetch;
pub mod key;
pub mod repo;
pub mod selfpkg;
pub mod vendor;

use crate::util::timings::{Step, time};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};

use crate::lock::LockedPackage;
use crate::packages::candidate::Candidate;
use crate::spec::pakfile::{Pakfile, RepoKind};
use crate::state::StateDir;
use crate::store::{Batch, Prepared, Store, StoreEntry};
use apt::AptHost;
use fetch::Network;
use repo::{Format, Index, Repository};

pub enum Source {
    Pak {
        repo: Repository,
        /// Read once, by the first fetch that needs it.
        index: OnceLock<Index>,
        /// The `mirror` (a vendored copy), resolved against the Pakfile's directory.
        mirror: Option<String>,
    },
    Apt {
        name: String,
        host: AptHost,
        /// The `snapshot` base, resolved against the Pakfile's directory.
        snapshot: Option<String>,
        mirror: Option<String>,
    },
    /// The running pak itself (see `selfpkg`), always last.
    Builtin,
}

impl Source {
    pub fn name(&self) -> &str {
        match self {
            Source::Pak { repo, .. } => &repo.name,
            Source::Apt { name, .. } => name,
            Source::Builtin => crate::sources::selfpkg::REPO,
        }
    }
}

/// A locked package's store entry, found or made.
enum Made {
    Present(StoreEntry),
    Prepared(Prepared),
}

/// A locked package's artifact in the download cache, its sha256 checked.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub path: PathBuf,
    pub format: Format,
}

pub struct Sources {
    list: Vec<Source>,
}

/// A path written in the Pakfile, or a URL.
fn resolve_url(url: &str, pakfile_dir: &Path) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        pakfile_dir.join(url).display().to_string()
    }
}

impl Sources {
    pub fn from_pakfile(p: &Pakfile) -> Result<Sources> {
        let mut list = Vec::new();
        for spec in &p.repository {
            list.push(match spec.kind {
                RepoKind::Apt => Source::Apt {
                    name: spec.name.clone(),
                    host: AptHost::system(),
                    snapshot: spec.snapshot.as_deref().map(|s| resolve_url(s, &p.dir)),
                    mirror: spec.mirror.as_deref().map(|s| resolve_url(s, &p.dir)),
                },
                RepoKind::Pak => Source::Pak {
                    repo: Repository::from_spec(spec, &p.dir)?,
                    index: OnceLock::new(),
                    mirror: spec.mirror.as_deref().map(|s| resolve_url(s, &p.dir)),
                },
            });
        }
        list.push(Source::Builtin);
        Ok(Sources { list })
    }

    /// Every candidate of every repository, in the Pakfile's order.
    pub fn candidates(&self, root: &StateDir) -> Result<Vec<Candidate>> {
        if self.list.len() == 1 {
            bail!(
                "the Pakfile names no repository; add a [[repository]] (see `pak init` for examples)"
            );
        }
        let mut out = Vec::new();
        for s in &self.list {
            match s {
                Source::Pak { repo, .. } => out.extend(repo.load(root)?),
                Source::Apt { name, host, .. } => out.extend(apt::load_from(host, name, root)?),
                Source::Builtin => out.push(crate::sources::selfpkg::candidate()?),
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
    pub fn fetch(&self, p: &LockedPackage, root: &StateDir, store: &Store) -> Result<StoreEntry> {
        let mut got = self.fetch_all(std::slice::from_ref(p), root, store, &|| {})?;
        Ok(got.pop().expect("one package asked, one entry"))
    }

    /// [`Sources::fetch`] for many packages, on as many threads as the
    /// machine has cores; the entries come back in the order of
    /// `packages`, and `done` is called as each is ready. After a failure
    /// no further package is started; what was made is kept, and the
    /// error of the first failed package in `packages`' order is returned.
    pub fn fetch_all(
        &self,
        packages: &[LockedPackage],
        root: &StateDir,
        store: &Store,
        done: &(dyn Fn() + Sync),
    ) -> Result<Vec<StoreEntry>> {
        let keys: Vec<String> = packages.iter().map(LockedPackage::store_key).collect();
        let batch = store.batch(&keys)?;
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let results: Vec<std::sync::Mutex<Option<Result<Made>>>> =
            packages.iter().map(|_| Default::default()).collect();
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(packages.len());
        let work = || {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= packages.len() || failed.load(Ordering::Relaxed) {
                    return;
                }
                let made = self.make(&packages[i], &keys[i], root, &batch);
                if made.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(made);
                done();
            }
        };
        if workers <= 1 {
            work();
        } else {
            std::thread::scope(|s| {
                for _ in 0..workers {
                    s.spawn(work);
                }
            });
        }
        let mut first_error = None;
        let mut prepared = Vec::new();
        let mut slots = Vec::new();
        for r in results {
            match r.into_inner().unwrap_or_else(|e| e.into_inner()) {
                Some(Ok(Made::Present(e))) => slots.push(Some(e)),
                Some(Ok(Made::Prepared(p))) => {
                    prepared.push(p);
                    slots.push(None);
                }
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                    slots.push(None);
                }
                None => slots.push(None),
            }
        }
        // What was made is committed even when another package failed:
        // the next run need not make it again.
        let mut committed = batch.commit(prepared)?.into_iter();
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(slots
            .into_iter()
            .map(|s| s.unwrap_or_else(|| committed.next().expect("one entry per prepared package")))
            .collect())
    }

    /// The entry of one locked package: in the store already, or made in
    /// `batch` from its artifact.
    fn make(&self, p: &LockedPackage, key: &str, root: &StateDir, batch: &Batch) -> Result<Made> {
        if let Some(e) = batch.present(key) {
            return Ok(Made::Present(e));
        }
        let source = self.get(&p.source)?;
        let what = describe(p);
        if let Source::Builtin = source {
            // In the cache, not the store: only extractions make temporaries there.
            std::fs::create_dir_all(root.cache_dir())?;
            let tmp =
                tempfile::tempdir_in(root.cache_dir()).context("cannot package pak itself")?;
            let pak = crate::sources::selfpkg::write_package(&p.sha256, tmp.path())?;
            return time(Step::Extract, || {
                batch.prepare(key, |dir| crate::store::extract_pak(&pak, dir))
            })
            .map(Made::Prepared);
        }
        let artifact = self.artifact(p, root)?;
        let prepared = match artifact.format {
            Format::Pak => {
                let info = crate::packages::package::read_info(&artifact.path)?;
                if info.name != p.name || info.version != p.version {
                    bail!(
                        "{what}: the file holds {} {} instead",
                        info.name,
                        info.version
                    );
                }
                time(Step::Extract, || {
                    batch.prepare(key, |dir| crate::store::extract_pak(&artifact.path, dir))
                })
            }
            Format::Deb => {
                batch.prepare(key, |dir| crate::packages::deb::unpack(&artifact.path, dir))
            }
        };
        prepared
            .map(Made::Prepared)
            .with_context(|| format!("cannot add {what} to the store"))
    }

    /// The artifact of a locked package exactly as its repository serves it
    /// (a `.pak`, or a `.deb`), from the download cache or downloaded into
    /// it.
    pub fn artifact(&self, p: &LockedPackage, root: &StateDir) -> Result<Artifact> {
        let source = self.get(&p.source)?;
        let formats: &[Format] = match source {
            Source::Apt { .. } => &[Format::Deb],
            Source::Pak { .. } => &[Format::Pak, Format::Deb],
            Source::Builtin => bail!(
                "{} comes from the running pak itself, which is not downloaded",
                describe(p)
            ),
        };
        let cache = root.cache_dir().join("pkgs");
        for &format in formats {
            let path = cache.join(format!("{}.{}", p.sha256, format.ext()));
            if path.is_file()
                && crate::packages::package::hash_file(&path).is_ok_and(|(_, h)| h == p.sha256)
            {
                return Ok(Artifact { path, format });
            }
        }
        let mirror = match source {
            Source::Pak { mirror, .. } | Source::Apt { mirror, .. } => mirror.as_deref(),
            Source::Builtin => None,
        };
        if let Some(base) = mirror
            && let Some(found) = from_mirror(p, base, &cache)?
        {
            return Ok(found);
        }
        match source {
            Source::Pak { repo, index, .. } => from_pak(p, repo, index, &cache),
            Source::Apt { host, snapshot, .. } => from_apt(p, host, snapshot.as_deref(), &cache),
            Source::Builtin => unreachable!("refused above"),
        }
    }
}

fn describe(p: &LockedPackage) -> String {
    format!(
        "package {} {} from repository {:?}",
        p.name, p.version, p.source
    )
}

/// With `--offline`, a package that would need any of `urls` from the
/// network is an error naming it.
fn refuse_offline(p: &LockedPackage, urls: &[&str]) -> Result<()> {
    if fetch::network() == Network::Offline
        && let Some(url) = urls.iter().find(|u| fetch::is_remote(u))
    {
        bail!(
            "{} is in neither the store nor the download cache, and --offline is on: pak uses no network, so it does not fetch {url}. Run without --offline to download it, or build from a vendored copy (`pak vendor DIR`)",
            describe(p)
        );
    }
    Ok(())
}

/// Which repository kind a vanished package came from, for the ways out.
enum Kind {
    Pak,
    /// Whether the repository has a `snapshot` base (which was asked, when
    /// the lock has an archive date).
    Apt {
        snapshot: bool,
    },
}

/// The error for a locked package its repository no longer has.
fn vanished(p: &LockedPackage, kind: Kind, why: &str) -> anyhow::Error {
    let mut ways = vec![
        format!(
            "`pak update {}` locks a version the repository offers now (the image changes)",
            p.name
        ),
        "a vendored copy: `pak vendor DIR`, run where pak's download cache still holds this package, writes signed repositories that build this same lock".to_string(),
    ];
    if let Kind::Apt { snapshot } = kind {
        ways.push(match (&p.archive_date, snapshot) {
            (None, _) => "an archive snapshot cannot be asked: the lock records no `archive_date` for this package (pak records one when apt's lists hold a dated Release file)".to_string(),
            (Some(date), true) => format!(
                "the repository's `snapshot` did not have it either: check that it is laid out like Debian's snapshot archive, URL/<archive>/{date}/pool/..."
            ),
            (Some(date), false) => format!(
                "an archive snapshot: `snapshot = \"URL\"` on [[repository]] {:?} fetches exactly this version from URL/<archive>/{date}/pool/..., the layout of Debian's snapshot archive",
                p.source
            ),
        });
    }
    anyhow::anyhow!(
        "{} can no longer be downloaded: {why}.\nWays out:\n  - {}.",
        describe(p),
        ways.join(";\n  - ")
    )
}

/// A locked package from its repository's `mirror`: the artifact at its
/// lock location below the mirror, checked against the lock's sha256 (the
/// lock is the trust here; the mirror's own index is not read). `None` when
/// the mirror does not have it, or is remote and pak is `--offline`: the
/// repository itself is asked next, and reports what is missing.
fn from_mirror(p: &LockedPackage, base: &str, cache: &Path) -> Result<Option<Artifact>> {
    if fetch::network() == Network::Offline && fetch::is_remote(base) {
        return Ok(None);
    }
    let format = if p.location.ends_with(".deb") {
        Format::Deb
    } else {
        Format::Pak
    };
    let path = cache.join(format!("{}.{}", p.sha256, format.ext()));
    let url = fetch::join(base, &p.location);
    match fetch::download_verified(&url, &path, &p.sha256, p.size, &describe(p)) {
        Ok(()) => Ok(Some(Artifact { path, format })),
        Err(e) if fetch::is_not_found(&e) => Ok(None),
        Err(e) => Err(e.context(format!("the mirror {base} of repository {:?}", p.source))),
    }
}

fn from_pak(
    p: &LockedPackage,
    repo: &Repository,
    index: &OnceLock<Index>,
    cache: &Path,
) -> Result<Artifact> {
    let url = repo.url_of(&p.location);
    refuse_offline(p, &[&repo.base, &url])?;
    let index = match index.get() {
        Some(i) => i,
        None => {
            let read = repo.index_for_fetch().map_err(|e| {
                if fetch::is_not_found(&e) {
                    vanished(
                        p,
                        Kind::Pak,
                        &format!("the repository has no index any more ({})", e.root_cause()),
                    )
                } else {
                    e.context(format!(
                        "cannot check that repository {:?} still offers {} {}",
                        p.source, p.name, p.version
                    ))
                }
            })?;
            index.get_or_init(|| read)
        }
    };
    let Some(entry) = index
        .packages
        .iter()
        .find(|e| e.file == p.location && e.sha256 == p.sha256)
    else {
        let why = match index.packages.iter().find(|e| e.file == p.location) {
            Some(e) => format!(
                "the repository's index lists {} with sha256 {}, not the locked {}: it was rebuilt",
                p.location, e.sha256, p.sha256
            ),
            None => format!("the repository's index no longer lists {}", p.location),
        };
        return Err(vanished(p, Kind::Pak, &why));
    };
    let format = entry.format();
    let path = cache.join(format!("{}.{}", p.sha256, format.ext()));
    match fetch::download_verified(&url, &path, &p.sha256, p.size, &describe(p)) {
        Ok(()) => Ok(Artifact { path, format }),
        Err(e) if fetch::is_not_found(&e) => Err(vanished(
            p,
            Kind::Pak,
            &format!(
                "the repository's index still lists it, but {}: the repository is broken",
                e.root_cause()
            ),
        )),
        Err(e) => Err(e),
    }
}

fn from_apt(
    p: &LockedPackage,
    host: &AptHost,
    snapshot: Option<&str>,
    cache: &Path,
) -> Result<Artifact> {
    let url = apt::url_for(host, &p.location)?;
    refuse_offline(p, &[&url])?;
    let path = cache.join(format!("{}.{}", p.sha256, Format::Deb.ext()));
    let done = || Artifact {
        path: path.clone(),
        format: Format::Deb,
    };
    let mirror = match fetch::download_verified(&url, &path, &p.sha256, p.size, &describe(p)) {
        Ok(()) => return Ok(done()),
        Err(e) if fetch::is_not_found(&e) => {
            format!("the mirror no longer has it ({})", e.root_cause())
        }
        Err(e) => return Err(e),
    };
    let (Some(base), Some(date)) = (snapshot, &p.archive_date) else {
        return Err(vanished(
            p,
            Kind::Apt {
                snapshot: snapshot.is_some(),
            },
            &mirror,
        ));
    };
    let snap = apt::snapshot_url(host, base, &p.location, date)?;
    refuse_offline(p, &[&snap])?;
    match fetch::download_verified(&snap, &path, &p.sha256, p.size, &describe(p)) {
        Ok(()) => Ok(done()),
        Err(e) if fetch::is_not_found(&e) => Err(vanished(
            p,
            Kind::Apt { snapshot: true },
            &format!("{mirror}, nor does the snapshot ({})", e.root_cause()),
        )),
        Err(e) => Err(e.context(format!("{mirror}; its snapshot copy failed"))),
    }
}
