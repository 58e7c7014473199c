//! Where pak keeps its state: the store, seen repository indexes, locks.
//!
//! root: [`SYSTEM_ROOT`]; others: `$XDG_DATA_HOME/pak` (or
//! `~/.local/share/pak`). `--root` overrides both.

use std::path::{Path, PathBuf};

/// root's state, which is also the system's: images keep it on their data
/// partition, and unprivileged callers read package trees from its store.
pub const SYSTEM_ROOT: &str = "/var/lib/pak";

/// Where unprivileged callers look for the system's state instead of
/// [`SYSTEM_ROOT`] (tests, and hosts that keep it elsewhere).
pub const SYSTEM_ROOT_VAR: &str = "PAK_SYSTEM_ROOT";

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateDir { dir: dir.into() }
    }

    /// The default root for the calling user.
    pub fn default_for_user() -> Self {
        if rustix::process::geteuid().is_root() {
            return StateDir::new(SYSTEM_ROOT);
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from(".pak-data"));
        StateDir::new(data.join("pak"))
    }

    /// The system's state as other users find it: [`SYSTEM_ROOT`], or
    /// `$PAK_SYSTEM_ROOT` when set. root's own default does not follow the
    /// variable: it names where to look, not where root writes.
    pub fn system_shared() -> Self {
        let dir = std::env::var_os(SYSTEM_ROOT_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SYSTEM_ROOT));
        StateDir::new(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Content-addressed package trees: `store/<name>-<version>-<sha256>/`.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// Downloaded package files, by sha256, so a rebuild needs no network.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// Per-repository state such as the highest index version seen.
    pub fn repos_dir(&self) -> PathBuf {
        self.dir.join("repos")
    }

    /// Registered GC roots (locks, generations, environments).
    pub fn gcroots_dir(&self) -> PathBuf {
        self.dir.join("gcroots")
    }

    /// User environments.
    pub fn envs_dir(&self) -> PathBuf {
        self.dir.join("envs")
    }
}
