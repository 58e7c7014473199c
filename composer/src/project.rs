//! A Pakfile with its lock: resolving, updating and fetching.
//!
//! A lock is a contract, and only three things change it: `pak lock` when
//! there is none, `pak update [PKG]`, and an edited Pakfile that the lock no
//! longer fits. Every change is returned as a list of [`Change`]s for the
//! command to print; `--locked` ([`LockPolicy::Frozen`]) turns any change
//! into an error and writes nothing.
//!
//! A lock that still fits its Pakfile is used as it is, with no network.
//! When the Pakfile changed, only what the change needs moves: every
//! locked package is offered to the resolver as a candidate of its own,
//! from the lock, first, so it stays exactly as locked even when its
//! repository has since dropped that version (Debian's security archive
//! does within days). Whether it can still be downloaded is the fetch's
//! business, which says so clearly.
//!
//! Generation numbers are not typed by hand: a build takes the number after
//! where the generation will go ([`GenerationAfter`]), or after the newest
//! pak built from this Pakfile. That last number is kept in the project's
//! record under the pak root ([`Project::record_path`]), not in the lock:
//! the lock says what the system is made of, is committed and shared by
//! every machine that builds it, and travels inside the image it builds;
//! a build counter in it would change the lock (and the image's bytes) at
//! every build and make `--locked` refuse every second build. Where a
//! generation goes is a fact about this builder's history, so it lives
//! with the builder's store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::lock::resolve;
use crate::lock::{Change, Lock, LockedPackage};
use crate::packages::candidate::Candidate;
use crate::packages::pakinfo::PakInfo;
use crate::packages::requirement;
use crate::sources::Sources;
use crate::spec::pakfile::Pakfile;
use crate::state::StateDir;
use crate::store::{self, Store, StoreEntry};

/// Where a generation will be published or switched to, and so what its
/// number must come after (`pak build --generation --after`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerationAfter {
    /// A channel: a directory, `file://` or `http(s)://` URL; after its
    /// `newest`, which pruning never lowers.
    Channel(String),
    /// A disk image: after the newest generation either slot holds.
    Disk(PathBuf),
}

impl GenerationAfter {
    /// A URL or a channel directory is a channel; a file is a disk image.
    pub fn parse(s: &str) -> Result<GenerationAfter> {
        if ["http://", "https://", "file://"]
            .iter()
            .any(|p| s.starts_with(p))
        {
            return Ok(GenerationAfter::Channel(s.to_string()));
        }
        let p = Path::new(s);
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => Ok(GenerationAfter::Channel(s.to_string())),
            Ok(_) => Ok(GenerationAfter::Disk(p.to_path_buf())),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "--after {s}: no such channel directory or disk image; give a channel (directory or URL), a disk image, or --number N"
                )
            }),
        }
    }

    /// The newest generation number there.
    pub fn newest(&self) -> Result<u64> {
        match self {
            GenerationAfter::Channel(url) => {
                let local = !url.contains("://");
                if local && !Path::new(url).join(crate::channel::METADATA).exists() {
                    bail!(
                        "--after {url}: nothing is published there yet (no {}); for a channel's first generation give --after DISK_IMAGE or --number N",
                        crate::channel::METADATA
                    );
                }
                // Unverified on purpose: a number is no reason to trust
                // anything, and `pak publish` checks the signature with
                // its own key before it adds the generation.
                let (channel, _) = crate::channel::fetch_unverified(url)
                    .with_context(|| format!("--after {url}"))?;
                Ok(channel.newest)
            }
            GenerationAfter::Disk(img) => {
                let status = crate::system::PakDisk::open_image(img, None)
                    .and_then(|mut d| d.status())
                    .with_context(|| format!("--after {}", img.display()))?;
                status
                    .slots
                    .iter()
                    .filter_map(|s| s.generation)
                    .max()
                    .with_context(|| {
                        format!(
                            "--after {}: the disk holds no generation; give --number N",
                            img.display()
                        )
                    })
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            GenerationAfter::Channel(url) => format!("the channel {url}"),
            GenerationAfter::Disk(img) => format!("the disk {}", img.display()),
        }
    }
}

/// What pak remembers of the builds of one Pakfile.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct BuildRecord {
    /// The Pakfile, for whoever reads the directory.
    pakfile: String,
    /// The highest generation number built from it.
    generation: u64,
}

pub struct Project {
    pub pakfile_path: PathBuf,
    pub pakfile: Pakfile,
    pub root: StateDir,
    pub policy: LockPolicy,
}

/// May this command change the lock?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockPolicy {
    /// Write it when there is none or the Pakfile changed, and report how.
    #[default]
    Update,
    /// `--locked`: the lock must exist and fit; any change is an error.
    Frozen,
}

/// What to re-resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Keep the lock if it still satisfies the Pakfile.
    IfNeeded,
    /// Re-resolve everything to the newest versions.
    All,
    /// Re-resolve this package (and what it needs); keep the rest.
    Only(String),
}

#[derive(Debug)]
pub struct LockOutcome {
    pub lock: Lock,
    /// Whether the lock file was (re)written.
    pub written: bool,
    pub changes: Vec<Change>,
    /// Why an existing lock had to change (empty for `pak update`, or
    /// when nothing changed).
    pub reasons: Vec<String>,
    /// Whether there was no lock before.
    pub first: bool,
}

impl Project {
    pub fn open(pakfile_path: &Path, root: StateDir) -> Result<Project> {
        let pakfile = Pakfile::load(pakfile_path)?;
        Ok(Project {
            pakfile_path: pakfile_path.to_path_buf(),
            pakfile,
            root,
            policy: LockPolicy::default(),
        })
    }

    pub fn with_policy(mut self, policy: LockPolicy) -> Project {
        self.policy = policy;
        self
    }

    /// `ROOT/projects/<hash of the Pakfile's path>.toml`: keyed by path,
    /// since two checkouts of one project are two builders, each with its
    /// own numbers (`--after` reconciles them with where they publish).
    pub fn record_path(&self) -> PathBuf {
        let abs = std::fs::canonicalize(&self.pakfile_path)
            .or_else(|_| std::path::absolute(&self.pakfile_path))
            .unwrap_or_else(|_| self.pakfile_path.clone());
        let h = crate::util::fsutil::sha256_hex(abs.to_string_lossy().as_bytes());
        self.root
            .dir()
            .join("projects")
            .join(format!("{}.toml", &h[..16]))
    }

    /// The highest generation number built from this Pakfile, if any.
    pub fn recorded_generation(&self) -> Result<Option<u64>> {
        let path = self.record_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let r: BuildRecord = toml::from_str(&text).with_context(|| {
            format!(
                "{} is corrupt; remove it, and number the next generation with --after or --number",
                path.display()
            )
        })?;
        Ok(Some(r.generation))
    }

    /// Records that generation `number` was built; the record only grows.
    pub fn record_generation(&self, number: u64) -> Result<()> {
        if self.recorded_generation()?.is_some_and(|n| n >= number) {
            return Ok(());
        }
        let abs = std::path::absolute(&self.pakfile_path).unwrap_or(self.pakfile_path.clone());
        let r = BuildRecord {
            pakfile: abs.display().to_string(),
            generation: number,
        };
        let path = self.record_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        crate::util::fsutil::write_atomic(&path, toml::to_string(&r)?.as_bytes())
    }

    /// The number for the next generation: after `after`'s newest, else
    /// after the newest recorded, else 1. Returns it and why.
    pub fn next_generation(&self, after: Option<&GenerationAfter>) -> Result<(u64, String)> {
        if let Some(a) = after {
            let n = a.newest()?;
            return Ok((n + 1, format!("{} has generation {n}", a.describe())));
        }
        Ok(match self.recorded_generation()? {
            Some(n) => (
                n + 1,
                format!(
                    "the newest pak built from {} is generation {n}",
                    self.pakfile_path.display()
                ),
            ),
            None => (
                1,
                format!(
                    "pak has built no generation from {} yet",
                    self.pakfile_path.display()
                ),
            ),
        })
    }

    pub fn lock_path(&self) -> PathBuf {
        Lock::path_for(&self.pakfile_path)
    }

    pub fn read_lock(&self) -> Result<Option<Lock>> {
        Lock::read(&self.lock_path())
    }

    /// `pak lock` / `pak update`, and what build, fetch and run do first.
    pub fn lock(&self, update: Update) -> Result<LockOutcome> {
        let current = self.read_lock()?;
        let reasons = match (&update, &current) {
            (Update::IfNeeded, Some(lock)) => {
                let why = self.unsatisfied(lock);
                if why.is_empty() {
                    return Ok(LockOutcome {
                        lock: lock.clone(),
                        written: false,
                        changes: Vec::new(),
                        reasons: Vec::new(),
                        first: false,
                    });
                }
                why
            }
            (Update::IfNeeded, None) => vec![format!("there is no {} yet", self.lock_name())],
            _ => Vec::new(),
        };
        if let (Update::Only(name), Some(lock)) = (&update, &current)
            && lock.get(name).is_none()
        {
            bail!(
                "{name} is not in {}; `pak update` without a name re-resolves everything",
                self.lock_path().display()
            );
        }
        let mut lock = match self.resolve(&update, current.as_ref()) {
            Ok(lock) => lock,
            Err(e) if self.policy == LockPolicy::Frozen => {
                return Err(e.context(format!(
                    "{} does not fit the Pakfile, and no lock could (--locked or not): fix the Pakfile as the reasons below say, then run `pak lock` and commit the new lock; nothing was written",
                    self.lock_path().display()
                )));
            }
            Err(e) => return Err(e),
        };
        if let Some(current) = &current {
            lock.keep_archive_dates(current);
            // Ids, once given, stay whatever the packages do (see
            // `image::accounts`); `pak update` included.
            lock.accounts = current.accounts.clone();
        }
        let changes = lock.changes_from(current.as_ref());
        if current.as_ref() == Some(&lock) {
            return Ok(LockOutcome {
                lock,
                written: false,
                changes,
                reasons: Vec::new(),
                first: false,
            });
        }
        if self.policy == LockPolicy::Frozen {
            bail!(self.frozen_message(&changes, &reasons));
        }
        lock.write(&self.lock_path())?;
        Ok(LockOutcome {
            lock,
            written: true,
            changes,
            reasons,
            first: current.is_none(),
        })
    }

    fn lock_name(&self) -> String {
        self.lock_path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn frozen_message(&self, changes: &[Change], reasons: &[String]) -> String {
        let mut m = format!(
            "{} would have to change, and --locked forbids it; nothing was written",
            self.lock_path().display()
        );
        for r in reasons {
            m.push_str(&format!("\n  because {r}"));
        }
        for c in changes {
            m.push_str(&format!("\n  {c}"));
        }
        m.push_str("\nrun `pak lock` (or the command without --locked) and commit the new lock");
        m
    }

    /// Resolves anew. Except for `pak update` of everything, locked
    /// packages come first as candidates of their own (see the module
    /// header), and are preferred.
    fn resolve(&self, update: &Update, current: Option<&Lock>) -> Result<Lock> {
        let keep: Vec<&LockedPackage> = match (update, current) {
            (Update::All, _) | (_, None) => Vec::new(),
            (Update::Only(name), Some(lock)) => {
                lock.packages.iter().filter(|p| p.name != *name).collect()
            }
            (Update::IfNeeded, Some(lock)) => lock.packages.iter().collect(),
        };
        let named = self.repository_names();
        let mut cands: Vec<Candidate> = keep
            .iter()
            .filter(|p| named.contains(&p.source.as_str()))
            .map(|p| {
                let mut c = p.to_candidate();
                if p.is_builder() {
                    // Older locks pinned pak's bytes; its version is kept.
                    c.sha256.clear();
                    c.size = 0;
                }
                c
            })
            .collect();
        let prefer: BTreeMap<String, String> = keep
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect();
        let sources = Sources::from_pakfile(&self.pakfile)?;
        cands.extend(sources.candidates(&self.root)?);
        let chosen = resolve::resolve(
            &cands,
            &self.pakfile.system.arch,
            &self.pakfile.requirements(),
            &prefer,
        )?;
        Ok(Lock::new(
            chosen
                .iter()
                .map(|i| LockedPackage::from_candidate(&cands[*i]))
                .collect(),
        ))
    }

    /// The repositories a lock may name: the Pakfile's, and pak's own.
    fn repository_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .pakfile
            .repository
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        names.push(crate::sources::selfpkg::REPO);
        names
    }

    /// Why the lock no longer fits the Pakfile (empty when it does).
    pub fn unsatisfied(&self, lock: &Lock) -> Vec<String> {
        let mut why = Vec::new();
        let infos: Vec<PakInfo> = lock
            .packages
            .iter()
            .map(|p| p.to_candidate().info)
            .collect();
        let mut roots = Vec::new();
        for (name, range) in self.pakfile.requirements() {
            match requirement::parse_root(&name, &range) {
                Ok(dep) if infos.iter().any(|i| dep.satisfied_by(i)) => roots.push(dep),
                Ok(dep) => why.push(format!("nothing locked satisfies {dep}")),
                Err(e) => why.push(format!("[packages] {name}: {e}")),
            }
        }
        let refs: Vec<&PakInfo> = infos.iter().collect();
        why.extend(crate::lock::closure::check_closure(&refs));
        if why.is_empty() {
            for p in crate::lock::closure::unneeded(&refs, &roots) {
                why.push(format!("nothing needs {} any more", p.name));
            }
        }
        let repos = self.repository_names();
        for p in &lock.packages {
            if p.is_builder() && !p.sha256.is_empty() {
                why.push(format!(
                    "it pins the {} binary by sha256, as older versions of pak did; pak is now pinned by version",
                    p.name
                ));
            }
            if !repos.contains(&p.source.as_str()) {
                why.push(format!(
                    "{} comes from repository {:?}, which the Pakfile no longer names",
                    p.name, p.source
                ));
            }
        }
        why
    }

    /// Writes the account ids a build allocated (`built`: the lock the
    /// generation carries) into the lock file, when the policy allows.
    /// Returns the new pins, and whether they were written: with
    /// `--locked` they are not (the build used them all the same, so the
    /// image is what a build that writes them makes; the lock file only
    /// lacks what keeps them stable once more accounts come).
    pub fn pin_accounts(&self, built: &Lock) -> Result<(Vec<Change>, bool)> {
        let Some(mut current) = self.read_lock()? else {
            bail!(
                "{} disappeared during the build; run the build again",
                self.lock_path().display()
            );
        };
        if current.accounts == built.accounts {
            return Ok((Vec::new(), false));
        }
        let before = current.clone();
        current.accounts = built.accounts.clone();
        let changes = current.changes_from(Some(&before));
        if self.policy == LockPolicy::Frozen {
            return Ok((changes, false));
        }
        current.write(&self.lock_path())?;
        Ok((changes, true))
    }

    /// Refuses a lock whose pak is not this pak's version (see `lock`).
    pub fn check_builder(&self, lock: &Lock) -> Result<()> {
        match lock.packages.iter().find(|p| p.is_builder()) {
            Some(p) => crate::sources::selfpkg::check_version(&p.version, &self.lock_path()),
            None => Ok(()),
        }
    }

    /// Locks if needed, then fetches every locked package into the store.
    pub fn fetch(&self) -> Result<(Lock, Vec<(LockedPackage, StoreEntry)>)> {
        let lock = self.lock(Update::IfNeeded)?.lock;
        self.check_builder(&lock)?;
        let store = Store::open(&self.root)?;
        let sources = Sources::from_pakfile(&self.pakfile)?;
        let _timed = crate::util::timings::enter(crate::util::timings::Step::Fetch);
        let bar = crate::util::progress::items(lock.packages.len() as u64, "fetch and extract");
        let entries = sources.fetch_all(&lock.packages, &self.root, &store, &|| bar.inc(1));
        bar.finish_and_clear();
        let out: Vec<_> = lock.packages.iter().cloned().zip(entries?).collect();
        let keys: Vec<String> = lock.packages.iter().map(LockedPackage::store_key).collect();
        let abs = std::path::absolute(self.lock_path()).unwrap_or_else(|_| self.lock_path());
        store::register_root(&self.root, &format!("lock:{}", abs.display()), &keys)
            .context("cannot record the lock as a GC root")?;
        Ok((lock, out))
    }
}
