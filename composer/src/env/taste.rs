//! `pak taste`: a throwaway environment. Its Pakfile lives in a temporary
//! directory that goes with the [`Taste`] guard, as does its GC root; what
//! it fetched stays in the store and download cache until `pak gc`.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::ExitStatus;

use anyhow::{Context, Result, bail};

use super::install::parse_spec;
use super::launch;
use super::prepare::{self, Prepared};
use super::sandbox::SandboxError;
use super::template::{SYSTEM_REPOSITORY_FILES, default_repositories, render_pakfile};
use crate::lock::Lock;
use crate::project::LockPolicy;
use crate::state::StateDir;
use crate::store;

/// Creates a throwaway environment for `pak taste`: a Pakfile asking for
/// `spec`, in a temporary directory that is deleted with the returned guard.
pub struct Taste {
    dir: tempfile::TempDir,
    root: StateDir,
}

impl Taste {
    pub fn new(root: &StateDir, spec: &str, cwd_pakfile: &Path) -> Result<Taste> {
        let (name, req) = parse_spec(spec)?;
        let (repos, origin) = default_repositories(cwd_pakfile)?;
        if repos.is_empty() {
            bail!(
                "no repository to take {name} from: run `pak taste` beside a Pakfile that names repositories, or list them in {}",
                SYSTEM_REPOSITORY_FILES[0]
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("pak-taste-")
            .tempdir()
            .context("cannot create a temporary directory for pak taste")?;
        let packages = BTreeMap::from([(name, req)]);
        let text = render_pakfile("taste", &packages, &repos, origin.as_deref());
        crate::util::fsutil::write_atomic(&dir.path().join("Pakfile"), text.as_bytes())?;
        Ok(Taste {
            dir,
            root: root.clone(),
        })
    }

    pub fn prepare(&self) -> Result<Prepared> {
        prepare::prepare(
            &self.dir.path().join("Pakfile"),
            &self.root,
            LockPolicy::Update,
        )
    }

    /// Runs `program` in the prepared taste, in a child rather than in
    /// place of pak: this guard must outlive it to delete the temporary
    /// Pakfile. `$PAK_ENV` is `taste`.
    pub fn run(
        &self,
        prepared: &Prepared,
        program: &OsStr,
        args: &[OsString],
    ) -> Result<ExitStatus, SandboxError> {
        launch::set_env(&self.root, Some("taste"), &[]);
        prepared.sandbox.run(program, args)
    }
}

impl Drop for Taste {
    fn drop(&mut self) {
        let lock = Lock::path_for(&self.dir.path().join("Pakfile"));
        let _ = store::remove_root(&self.root, &prepare::lock_root_name(&lock));
    }
}
