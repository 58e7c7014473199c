//! The store: content-addressed package trees.
//!
//! `<root>/store/<name>-<version>-<sha256>/` holds `.PAKINFO`, `.BOM` and
//! the payload under `tree/`. The sha256 is the one the lock pins (of the
//! downloaded artifact), so a lock names its store entries directly.
//!
//! Extraction goes through [`package::walk`], writes into a temporary
//! directory inside the store and renames it into place: a crash leaves no
//! half entry, and a refused package leaves nothing at all. On disk, files
//! never keep setuid/setgid bits and ownership is the extracting user's; the
//! BOM stays the truth for both, and generations are built from it.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::packages::bom::{Bom, Entry, Kind};
use crate::packages::package::{self, Sink};
use crate::packages::pakinfo::PakInfo;
use crate::state::StateDir;

mod lock;
mod tree;
pub mod verify;

pub use lock::{Held, Mode};
use tree::remove_tree;

pub struct Store {
    dir: PathBuf,
    gcroots: PathBuf,
}

/// One extracted package.
#[derive(Debug, Clone)]
pub struct StoreEntry {
    pub key: String,
    pub dir: PathBuf,
}

impl StoreEntry {
    /// The package payload, laid out like a root.
    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }

    pub fn info(&self) -> Result<PakInfo> {
        let p = self.dir.join(package::INFO_NAME);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        PakInfo::from_toml(&text)
            .with_context(|| format!("{} is corrupt; `pak gc` and fetch again", p.display()))
    }

    pub fn bom(&self) -> Result<Bom> {
        let p = self.dir.join(package::BOM_NAME);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        Bom::parse(&text)
            .with_context(|| format!("{} is corrupt; `pak gc` and fetch again", p.display()))
    }
}

/// Prefix of an entry being extracted (or left by an extraction that died).
const EXTRACTING: &str = ".tmp-";
/// Prefix of an entry being deleted: renamed first, so a `pak gc` killed
/// halfway leaves no half entry under a key.
const DELETING: &str = ".gc-";

impl Store {
    pub fn open(root: &StateDir) -> Result<Store> {
        let dir = root.store_dir();
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create the store at {}; choose another with --root",
                dir.display()
            )
        })?;
        Ok(Store {
            dir,
            gcroots: root.gcroots_dir(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store-wide lock: shared to add or take entries, exclusive to
    /// delete them. Whoever has to wait says for whom.
    pub fn lock(&self, mode: Mode) -> Result<Held> {
        let dir = self.dir.display().to_string();
        lock::acquire(&self.dir.join(".lock"), mode, |pids| match mode {
            Mode::Shared => format!("waiting for {} to finish gc on {dir}", lock::who(pids)),
            Mode::Exclusive => format!(
                "waiting for {} using the store {dir} to finish before deleting from it",
                lock::who(pids)
            ),
        })
    }

    /// Takes `key`'s lock (held while it is extracted).
    fn lock_entry(&self, key: &str) -> Result<Held> {
        lock::acquire(&self.entry_lock_path(key), Mode::Exclusive, |pids| {
            format!(
                "waiting for {} to finish adding {key} to the store {}",
                lock::who(pids),
                self.dir.display()
            )
        })
    }

    fn entry_lock_path(&self, key: &str) -> PathBuf {
        self.dir.join(".locks").join(key_hash(key))
    }

    fn pending_dir(&self) -> PathBuf {
        self.dir.join(".pending")
    }

    /// The entry `key`, if the store holds it. Taking it marks it as used
    /// by this process, so `pak gc` keeps it until the process exits.
    pub fn get(&self, key: &str) -> Option<StoreEntry> {
        let entry = self.peek(key)?;
        // A store this process cannot lock is one it cannot change either
        // (another user's); nobody collecting it can be told, and the
        // entry is returned all the same.
        if let Ok(_lock) = self.lock(Mode::Shared) {
            lock::record_pending(&self.pending_dir(), key).ok()?;
            return self.peek(key);
        }
        Some(entry)
    }

    /// The entry `key` without marking it as used.
    fn peek(&self, key: &str) -> Option<StoreEntry> {
        let dir = self.dir.join(key);
        dir.join(package::BOM_NAME).is_file().then(|| StoreEntry {
            key: key.to_string(),
            dir,
        })
    }

    /// Extracts a package into the store under `key`, unless it is there.
    pub fn install(&self, pak: &Path, key: &str) -> Result<StoreEntry> {
        self.add_one(key, |dir| extract_pak(pak, dir))
    }

    /// Unpacks a `.deb` into the store under `key`, unless it is there:
    /// the same entry [`Store::install`] makes of its converted `.pak`.
    pub fn install_deb(&self, deb: &Path, key: &str) -> Result<StoreEntry> {
        self.add_one(key, |dir| crate::packages::deb::unpack(deb, dir))
    }

    fn add_one(
        &self,
        key: &str,
        fill: impl FnOnce(&Path) -> Result<(PakInfo, Bom)>,
    ) -> Result<StoreEntry> {
        let batch = self.batch(&[key.to_string()])?;
        if let Some(e) = batch.present(key) {
            return Ok(e);
        }
        let prepared = batch.prepare(key, fill)?;
        let mut made = batch.commit(vec![prepared])?;
        Ok(made.pop().expect("one entry was prepared"))
    }

    /// Starts adding `keys`: takes the store's shared lock, records the
    /// keys as this process's pending roots, and takes the lock of each key
    /// the store does not hold yet. Those are taken one after the other in
    /// key order, by every batch: two paks adding overlapping sets wait for
    /// one another and never deadlock.
    pub fn batch(&self, keys: &[String]) -> Result<Batch<'_>> {
        for key in keys {
            check_key(key)?;
        }
        let shared = self.lock(Mode::Shared)?;
        for key in keys {
            lock::record_pending(&self.pending_dir(), key)?;
        }
        let wanted: BTreeSet<&String> = keys.iter().filter(|k| self.peek(k).is_none()).collect();
        let mut locks = std::collections::BTreeMap::new();
        for key in wanted {
            let held = self.lock_entry(key)?;
            // Another pak may have extracted it while this one waited.
            if self.peek(key).is_none() {
                self.remove_leftovers_of(key)?;
                locks.insert(key.clone(), held);
            }
        }
        Ok(Batch {
            store: self,
            _shared: shared,
            locks,
        })
    }

    /// What an extraction of `key` killed earlier left: its temporary
    /// directory, and a directory under the key without a BOM. Only with
    /// `key`'s lock held, so none of it is another process's work.
    fn remove_leftovers_of(&self, key: &str) -> Result<()> {
        let prefix = format!("{EXTRACTING}{}-", key_hash(key));
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                remove_tree(&self.dir.join(&name))?;
            }
        }
        let dest = self.dir.join(key);
        if std::fs::symlink_metadata(&dest).is_ok() {
            self.delete(key)?;
        }
        Ok(())
    }

    /// Deletes the entry (or whatever is) under `name`: renamed away first,
    /// then removed.
    fn delete(&self, name: &str) -> Result<()> {
        let doomed = self.dir.join(format!("{DELETING}{}", key_hash(name)));
        if std::fs::symlink_metadata(&doomed).is_ok() {
            remove_tree(&doomed)?;
        }
        std::fs::rename(self.dir.join(name), &doomed)
            .with_context(|| format!("cannot remove {name} from {}", self.dir.display()))?;
        remove_tree(&doomed)
    }

    /// Every entry in the store, sorted by key.
    pub fn entries(&self) -> Result<Vec<StoreEntry>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Some(entry) = self.peek(&name) {
                out.push(entry);
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Which store entries ship `path` (an absolute path in an image).
    /// `/bin`, `/sbin`, `/lib`, `/lib64` and their `/usr` twins are the
    /// same on merged-/usr images, so either spelling finds the file.
    pub fn owns(&self, path: &str) -> Result<Vec<(StoreEntry, String)>> {
        let want = crate::packages::paths::canonical(path.trim_end_matches('/'));
        let mut out = Vec::new();
        for e in self.entries()? {
            for b in e.bom()?.entries {
                if matches!(b.kind, Kind::Dir) {
                    continue;
                }
                if crate::packages::paths::canonical(&b.path) == want {
                    out.push((e.clone(), b.path));
                }
            }
        }
        Ok(out)
    }

    /// Removes entries that no GC root and no running pak names; returns
    /// the removed keys. Only for [`crate::env::gc`]: environments' roots
    /// go stale when their locks are edited, and it registers them again
    /// before collecting.
    pub(crate) fn gc(&self) -> Result<Vec<String>> {
        let _lock = self.lock(Mode::Exclusive)?;
        let mut live = self.live_keys()?;
        live.extend(lock::live_pending(&self.pending_dir())?);
        let mut removed = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.starts_with(EXTRACTING) || name.starts_with(DELETING) {
                // Nobody extracts or deletes while this lock is held: these
                // are leftovers of a pak that was killed.
                remove_tree(&self.dir.join(&name))?;
            } else if !name.starts_with('.') && !live.contains(&name) {
                self.delete(&name)?;
                removed.push(name);
            }
        }
        self.remove_entry_locks()?;
        crate::util::fsutil::sync_dir(&self.dir)?;
        removed.sort();
        Ok(removed)
    }

    /// Entry locks are only held under the shared store lock, so with the
    /// exclusive one nobody holds (or has open) any of them.
    fn remove_entry_locks(&self) -> Result<()> {
        match std::fs::remove_dir_all(self.dir.join(".locks")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn live_keys(&self) -> Result<BTreeSet<String>> {
        let mut live = BTreeSet::new();
        let Ok(rd) = std::fs::read_dir(&self.gcroots) else {
            return Ok(live);
        };
        for e in rd {
            let text = std::fs::read_to_string(e?.path())?;
            live.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
        }
        Ok(live)
    }
}

/// Entries being added to the store (see [`Store::batch`]). Each is made
/// in a temporary directory of its own, which may be done on several
/// threads at once; [`Batch::commit`] makes them entries.
///
/// Why one sync for a whole batch is as safe as one per entry: an entry
/// is an entry once its directory is there under its key with a `.BOM`,
/// and `commit` renames the directories into place only after one
/// `syncfs` has made every file of every prepared entry durable. A power
/// cut before that rename leaves temporaries, which the key's next
/// extraction or `pak gc` removes; after it, whole entries. The renames
/// themselves are made durable by one sync of the store directory before
/// `commit` returns, so before any caller registers a GC root naming them.
/// Until then, the keys' locks stay held: nobody else extracts them, and
/// nobody removes the temporaries as leftovers.
pub struct Batch<'s> {
    store: &'s Store,
    _shared: Held,
    /// The keys this batch adds, with their locks.
    locks: std::collections::BTreeMap<String, Held>,
}

/// An entry made, not yet committed.
pub struct Prepared {
    key: String,
    dir: PathBuf,
}

impl Batch<'_> {
    /// The entry `key` if the store holds it (or another pak added it
    /// while this batch waited for its lock).
    pub fn present(&self, key: &str) -> Option<StoreEntry> {
        if self.locks.contains_key(key) {
            return None;
        }
        self.store.peek(key)
    }

    /// Makes the entry `key` in a temporary directory: `fill` writes the
    /// payload under `DIR/tree` and returns the metadata and BOM, which
    /// are written beside it.
    pub fn prepare(
        &self,
        key: &str,
        fill: impl FnOnce(&Path) -> Result<(PakInfo, Bom)>,
    ) -> Result<Prepared> {
        if !self.locks.contains_key(key) {
            bail!("{key} is not being added by this batch");
        }
        let dir = &self.store.dir;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{EXTRACTING}{}-", key_hash(key)))
            .tempdir_in(dir)
            .with_context(|| format!("cannot write in the store {}", dir.display()))?;
        let (info, bom) = fill(tmp.path())?;
        std::fs::write(tmp.path().join(package::INFO_NAME), info.to_toml())?;
        // The BOM last: an entry is one once its BOM is there.
        std::fs::write(tmp.path().join(package::BOM_NAME), bom.render())?;
        Ok(Prepared {
            key: key.to_string(),
            dir: tmp.keep(),
        })
    }

    /// Makes the prepared entries entries (see [`Batch`] for why one sync
    /// serves them all), in the order given.
    pub fn commit(self, prepared: Vec<Prepared>) -> Result<Vec<StoreEntry>> {
        let dir = &self.store.dir;
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        let synced = File::open(dir)
            .map_err(anyhow::Error::from)
            .and_then(|d| rustix::fs::syncfs(d).map_err(Into::into))
            .context("cannot sync the store");
        // On failure, dropping what was prepared removes it.
        synced?;
        let mut out = Vec::new();
        let mut failed = None;
        for mut p in prepared {
            let dest = dir.join(&p.key);
            match std::fs::rename(&p.dir, &dest) {
                Ok(()) => {
                    p.dir = PathBuf::new();
                    out.push(StoreEntry {
                        key: std::mem::take(&mut p.key),
                        dir: dest,
                    });
                }
                Err(e) => {
                    failed.get_or_insert(
                        anyhow::Error::from(e)
                            .context(format!("cannot move the package into {}", dest.display())),
                    );
                }
            }
        }
        crate::util::fsutil::sync_dir(dir)?;
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

impl Drop for Prepared {
    /// A prepared entry never committed (its batch failed) goes.
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = remove_tree(&self.dir);
        }
    }
}

/// Extracts a `.pak` into `dir/tree` through the validating walker.
pub fn extract_pak(pak: &Path, dir: &Path) -> Result<(PakInfo, Bom)> {
    let tree = dir.join("tree");
    std::fs::create_dir(&tree)?;
    let mut sink = Extract {
        tree: tree.clone(),
        dirs: Vec::new(),
    };
    let (info, bom) = package::walk(pak, &mut sink)?;
    // Directory modes last: a read-only directory must not stop its own
    // contents from being written.
    for (path, mode) in sink.dirs.iter().rev() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o1777))?;
    }
    Ok((info, bom))
}

/// Records that `name` (a lock, a generation, an environment) needs these
/// store entries, so `pak gc` keeps them.
pub fn register_root(root: &StateDir, name: &str, keys: &[String]) -> Result<()> {
    let file = root.gcroots_dir().join(root_file_name(name));
    let mut text = keys.join("\n");
    text.push('\n');
    crate::util::fsutil::write_atomic(&file, text.as_bytes())
}

pub fn remove_root(root: &StateDir, name: &str) -> Result<()> {
    match std::fs::remove_file(root.gcroots_dir().join(root_file_name(name))) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.contains('/') || key.starts_with('.') || key.is_empty() || key.len() > 255 {
        bail!("{key:?} is not a store key");
    }
    Ok(())
}

/// A key as a short file name, for its lock and temporaries (keys can be
/// as long as a file name may be).
fn key_hash(key: &str) -> String {
    crate::util::fsutil::sha256_hex(key.as_bytes())[..32].to_string()
}

/// Roots are named after what holds them (often a path); the file name is
/// a hash of that, so any name maps to one flat file.
fn root_file_name(name: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(name.as_bytes())[..16])
}

/// Writes validated entries below `tree`. The walker has already refused
/// anything unsafe; this side never follows a symlink (files are created
/// with O_NOFOLLOW|O_EXCL, parents are directories it made itself).
struct Extract {
    tree: PathBuf,
    dirs: Vec<(PathBuf, u32)>,
}

impl Sink for Extract {
    fn entry(&mut self, e: &Entry, content: Option<&mut dyn Read>) -> Result<()> {
        let dest = self.tree.join(&e.path);
        match &e.kind {
            Kind::Dir => {
                std::fs::create_dir(&dest)
                    .with_context(|| format!("cannot create {}", dest.display()))?;
                self.dirs.push((dest, e.mode));
            }
            Kind::File(_) => {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = File::options()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&dest)
                    .with_context(|| format!("cannot create {}", dest.display()))?;
                let reader = content.expect("files come with content");
                io::copy(reader, &mut f)?;
                f.flush()?;
                // setuid/setgid never reach the store's disk.
                f.set_permissions(std::fs::Permissions::from_mode(e.mode & 0o1777))?;
            }
            Kind::Symlink(target) => std::os::unix::fs::symlink(target, &dest)?,
            Kind::HardLink(target) => std::fs::hard_link(self.tree.join(target), &dest)?,
            // Device nodes and fifos live in the BOM only; the generation
            // writer creates them from it.
            Kind::CharDev { .. } | Kind::BlockDev { .. } | Kind::Fifo => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_pak(dir: &Path) -> PathBuf {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(
            src.path().join(".PAKINFO"),
            "name = \"t\"\nversion = \"1\"\narch = \"any\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(src.path().join("usr/bin")).unwrap();
        std::fs::write(src.path().join("usr/bin/t"), "x").unwrap();
        std::fs::create_dir(src.path().join("ro")).unwrap();
        std::fs::write(src.path().join("ro/f"), "y").unwrap();
        std::fs::set_permissions(
            src.path().join("ro"),
            std::fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        package::create_from_dir(src.path(), dir).unwrap()
    }

    #[test]
    fn install_owns_gc() {
        let root_dir = tempfile::tempdir().unwrap();
        let root = StateDir::new(root_dir.path());
        let out = tempfile::tempdir().unwrap();
        let pak = make_pak(out.path());
        let store = Store::open(&root).unwrap();
        let e = store.install(&pak, "t-1-abc").unwrap();
        assert_eq!(std::fs::read(e.tree().join("usr/bin/t")).unwrap(), b"x");
        assert_eq!(e.info().unwrap().name, "t");
        let again = store.install(&pak, "t-1-abc").unwrap();
        assert_eq!(again.dir, e.dir);
        let owners = store.owns("/usr/bin/t").unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            store.owns("/bin/t").unwrap().len(),
            1,
            "merged-/usr spelling"
        );
        register_root(&root, "lockA", &["t-1-abc".into()]).unwrap();
        assert!(store.gc().unwrap().is_empty());
        remove_root(&root, "lockA").unwrap();
        // Unrooted, but this process took it: kept while it runs.
        assert!(store.gc().unwrap().is_empty());
        // As if this process had exited.
        std::fs::remove_dir_all(store.pending_dir()).unwrap();
        assert_eq!(store.gc().unwrap(), vec!["t-1-abc".to_string()]);
        assert!(store.entries().unwrap().is_empty());
    }
}
