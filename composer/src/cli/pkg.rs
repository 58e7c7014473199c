//! `pak pkg`, `pak key`, `pak repo`, `pak owns`, `pak gc`: packages, keys,
//! repositories and the store.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::Global;
use crate::store::Store;

pub fn create(dir: &Path, out: Option<PathBuf>) -> Result<()> {
    let path =
        crate::packages::package::create_from_dir(dir, &out.unwrap_or_else(|| PathBuf::from(".")))?;
    println!("{}", path.display());
    Ok(())
}

pub fn info(g: &Global, file: &Path) -> Result<()> {
    let info = crate::packages::package::read_info(file)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", info.to_toml());
    }
    Ok(())
}

pub fn verify(g: &Global, file: &Path) -> Result<()> {
    let v = crate::packages::package::verify(file)?;
    if !g.quiet {
        println!(
            "{}: {} {} is intact ({} entries, {} bytes of files)",
            file.display(),
            v.info.name,
            v.info.version,
            v.entries,
            v.payload_bytes
        );
    }
    Ok(())
}

pub fn import_deb(g: &Global, deb: &Path, out: Option<PathBuf>) -> Result<()> {
    let path = crate::packages::deb::import(deb, &out.unwrap_or_else(|| PathBuf::from(".")))?;
    let info = crate::packages::package::read_info(&path)?;
    println!("{}", path.display());
    if let Some(origin) = &info.origin
        && !origin.scripts_not_run.is_empty()
        && !g.quiet
    {
        eprintln!(
            "note: maintainer scripts not run: {} (pak performs the steps it supports declaratively when it assembles an image)",
            origin.scripts_not_run.join(", ")
        );
    }
    Ok(())
}

pub fn key_generate(name: &Path) -> Result<()> {
    let (secret, public) = crate::sources::key::generate_files(name)?;
    println!(
        "wrote {} (keep it secret) and {}",
        secret.display(),
        public.display()
    );
    Ok(())
}

pub fn secure_boot_key_generate(name: &Path) -> Result<()> {
    let f = crate::sign::key::generate_files(name)?;
    println!(
        "wrote {} (RSA-2048, keep it secret), its certificate {} and the same in DER, {}, for firmware set-up menus",
        f.key.display(),
        f.cert_pem.display(),
        f.cert_der.display()
    );
    Ok(())
}

pub fn repo_index(
    dir: &Path,
    key: &Path,
    expires_in_days: u64,
    version: Option<u64>,
) -> Result<()> {
    let key = crate::sources::key::SecretKey::read(key)?;
    let index = crate::sources::repo::write_index(dir, &key, expires_in_days, version)?;
    println!(
        "indexed {} packages in {} (version {}, expires {})",
        index.packages.len(),
        dir.display(),
        index.version,
        crate::util::timefmt::utc(index.expires)
    );
    Ok(())
}

pub fn owns(g: &Global, path: &str) -> Result<()> {
    let store = Store::open(&g.root())?;
    let owners = store.owns(path)?;
    if owners.is_empty() {
        anyhow::bail!(
            "no package in the store at {} ships {path}",
            store.dir().display()
        );
    }
    for (e, p) in owners {
        let info = e.info()?;
        println!("{} {} ships /{p}", info.name, info.version);
    }
    Ok(())
}

pub fn gc(g: &Global) -> Result<()> {
    // Leftovers first: a broken environment lock stops the store's
    // collection, and should not keep a dead download's bytes around.
    let leftovers = crate::util::leftovers::collect_root(&g.root(), &build_dirs(g))?;
    let removed = crate::env::gc(&g.root())?;
    if !g.quiet {
        for l in &leftovers {
            // `./.gen-1.sqfs` reads better as `.gen-1.sqfs`.
            let shown = l.path.strip_prefix(".").unwrap_or(&l.path);
            println!("removed {} ({})", shown.display(), l.kind.what());
        }
        if !leftovers.is_empty() {
            println!("{} leftover temporaries removed", leftovers.len());
        }
        for r in &removed {
            println!("removed {r}");
        }
        println!("{} store entries removed", removed.len());
    }
    Ok(())
}

/// Where `pak build` puts its output and its temporaries unless told
/// otherwise: the working directory (`-o image.raw`) and the Pakfile's.
/// Only with a Pakfile: elsewhere no build ran.
fn build_dirs(g: &Global) -> Vec<PathBuf> {
    if !g.pakfile.is_file() {
        return Vec::new();
    }
    let mut dirs = vec![PathBuf::from(".")];
    let own = g.pakfile.parent().unwrap_or(Path::new(""));
    if !own.as_os_str().is_empty() {
        let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
        if !same(own, Path::new(".")) {
            dirs.push(own.to_path_buf());
        }
    }
    dirs
}
