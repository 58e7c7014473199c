//! What the user declares: the Pakfile, and the profiles it includes.

pub mod edit;
pub mod network;
pub mod pakfile;
pub mod profile;
pub mod update;
