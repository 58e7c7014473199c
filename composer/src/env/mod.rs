//! User environments: "a virtualenv for system packages".
//!
//! An environment is a Pakfile and its lock kept under `<root>/envs/NAME/`
//! (`~/.local/share/pak/envs/NAME` for users, `/var/lib/pak/envs/NAME` for
//! root, which inside an image is on the writable data partition). Its
//! packages are shown over the read-only system by [`sandbox`]; nothing
//! is ever written to the system itself.
//!
//! * `pak run` with no environment uses the Pakfile of the current directory
//!   the same way, with its lock written beside it on first use.
//! * A warm run reads the Pakfile and the lock and checks the store: it
//!   neither resolves nor touches the network while the lock still fits.
//! * An unprivileged caller also reads package trees from the system store
//!   (`/var/lib/pak/store`) when it holds them, so nothing is copied twice.
//! * Each environment gets `bin/`, one small wrapper script per command its
//!   packages ship, so putting `envs/user/bin` on `PATH` makes the `user`
//!   environment's commands plain commands (`pak install --user`).
//! * Every environment's lock is a GC root: `pak gc` ([`gc`]) keeps what it
//!   needs.
//!
//! The parts, in the order a command meets them: `registry` (which
//! environments exist; create, list, remove, gc), `template` (a new one's
//! Pakfile), `install` (`pak install`/`pak uninstall` transactions),
//! `prepare` (lock and fetch for a run), `wrappers` (`bin/`), `launch`
//! (pak becoming the command), `taste` (throwaway environments) and
//! [`sandbox`] (the namespaces and overlays). Callers use the names
//! re-exported here.

pub mod sandbox;

mod install;
mod launch;
mod prepare;
mod registry;
mod taste;
mod template;
mod wrappers;

pub use install::{Edit, Target, install, uninstall};
pub use launch::{ENV_VAR, exec};
pub use prepare::{Prepared, prepare};
pub use registry::{Env, EnvSummary, USER_ENV, gc, list, remove};
pub use taste::Taste;
pub use template::Template;
