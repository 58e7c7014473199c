//! A package some repository offers: its metadata and where to get it.
//!
//! Repositories (signed pak indexes, Debian archives) produce candidates;
//! the resolver chooses among them; the lock records the chosen ones.

use crate::packages::pakinfo::PakInfo;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub info: PakInfo,
    /// Name of the repository in the Pakfile that offers it.
    pub repo: String,
    /// Where to download it, absolute (`file://`, `http(s)://`) or relative
    /// to the repository's base.
    pub location: String,
    /// sha256 of the downloaded artifact (a `.pak`, or a `.deb` for apt
    /// repositories). It names the store entry and is what the lock pins.
    pub sha256: String,
    pub size: u64,
    /// For Debian packages: when the archive listed it, as a snapshot
    /// timestamp (`20240610T000000Z`, the `Date:` of the suite's Release
    /// file), so a version the mirror has dropped can still be found in an
    /// archive snapshot. `None` for pak packages.
    pub archive_date: Option<String>,
}
