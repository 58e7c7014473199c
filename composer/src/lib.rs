//! pak: compose immutable, bootable system images from a declarative Pakfile.
//!
//! Data flows one way, and the modules are declared in its order; each
//! uses only those above it:
//!
//! ```text
//! spec ─▶ lock ◀─ sources ◀─ packages      (Pakfile → Pakfile.lock)
//!           │
//!           ▼
//!         store ─▶ image ─▶ disk ─▶ system   (lock → generation → disk → host)
//!                                    env, vm beside them; cli on top
//! ```
//!
//! - `spec`: what the user declares (Pakfile, profiles).
//! - `packages`: one package (metadata, BOM, archive, versions, `.deb`s).
//! - `sources`: where packages come from (signed repositories, apt, keys,
//!   downloads, pak itself, vendored copies).
//! - `lock`: the resolver and the lock it writes.
//! - `state`: where pak keeps its state; `store`: extracted packages.
//! - `project`: a Pakfile with its lock, tying the above together.
//! - `image`: from locked packages to a generation (assembly, configuration,
//!   initramfs, squashfs) and a disk image; rebuilding one to verify it.
//! - `disk`: GPT and FAT, the disk image's layout.
//! - `system`: the host lifecycle on a pak disk (status, switch, rollback).
//! - `env`: user environments and their sandbox.
//! - `vm`: QEMU and the scripted test driver.
//! - `cli`: parses arguments, calls the library, renders what it returns.
//!
//! The disk contract shared with `/init` lives in the `pak_boot` crate.

pub mod util;

pub mod spec;

pub mod packages;

pub mod sources;

pub mod lock;

pub mod state;

pub mod store;

pub mod project;

pub mod image;

pub mod sign;

pub mod disk;

pub mod system;

pub mod channel;

pub mod env;

pub mod vm;

pub mod cli;

#[doc(hidden)]
pub mod fuzzing;
