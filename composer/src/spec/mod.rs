//! What the user declares: the Pakfile, and the profiles it includes.

pub mod pakfile;
pub mod profile;
