//! pak: compose immutable, bootable system images from a declarative Pakfile.
//!
//! Data flows one way, and the modules follow it:
//! Pakfile → lock → store → generation → disk → boot → system.

pub mod candidate;
pub mod cli;
pub mod debian;
pub mod pakinfo;
pub mod root;
pub mod sandbox;
