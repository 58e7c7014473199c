//! pak: compose immutable, bootable system images from a declarative Pakfile.
//!
//! Data flows one way, and the modules follow it:
//! Pakfile → lock → store → generation → disk → boot → system.

pub mod apt;
pub mod assemble;
pub mod bom;
pub mod candidate;
pub mod cli;
pub mod cpio;
pub mod deb;
pub mod debian;
pub mod disk;
pub mod env;
pub mod fat;
pub mod fetch;
pub mod fsutil;
pub mod generation;
pub mod gpt;
pub mod image;
pub mod initramfs;
pub mod key;
pub mod kmod;
pub mod ldcache;
pub mod lock;
pub mod package;
pub mod pakfile;
pub mod pakinfo;
pub mod profile;
pub mod progress;
pub mod project;
pub mod qemu;
pub mod repo;
pub mod requirement;
pub mod resolve;
pub mod root;
pub mod sandbox;
pub mod selfpkg;
pub mod sources;
pub mod squashfs;
pub mod store;
pub mod sysconfig;
pub mod system;
pub mod timefmt;
pub mod vendor;
pub mod verify;
pub mod version;
pub mod vmtest;
