//! One package: its metadata, bill of materials, archive format, versions
//! and requirements, and the conversion of Debian `.deb`s.

pub mod bom;
pub mod candidate;
pub mod deb;
pub mod debian;
pub mod file;
pub mod maintscript;
pub mod package;
pub mod pakinfo;
pub mod paths;
pub mod requirement;
pub mod version;
