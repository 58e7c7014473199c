//! Commands on a Pakfile project: init, lock, update, fetch, build, list, search.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::pakfile;

/// `pak init [DIR]`: a commented starter Pakfile that builds as it is.
pub fn init(dir: Option<PathBuf>) -> Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("Pakfile");
    if path.exists() {
        bail!(
            "{} already exists; pak init does not overwrite it",
            path.display()
        );
    }
    crate::fsutil::write_atomic(&path, pakfile::STARTER.as_bytes())?;
    println!("wrote {}", display(&path));
    println!("next: `pak lock` to resolve it, `pak build` to make a disk image");
    Ok(())
}

fn display(p: &Path) -> String {
    p.strip_prefix("./").unwrap_or(p).display().to_string()
}
