//! Commands on a Pakfile project: init, lock, update, fetch, list, search.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::Global;
use crate::pakfile;
use crate::project::{LockOutcome, Project, Update};
use crate::sources::Sources;

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

pub(super) fn project(g: &Global) -> Result<Project> {
    Ok(Project::open(&g.pakfile, g.root())?.with_policy(g.lock_policy()))
}

/// Prints what a lock step did: every change, and why the lock moved.
fn report_lock(g: &Global, p: &Project, out: &LockOutcome, quiet_if_unchanged: bool) {
    if g.quiet || (quiet_if_unchanged && !out.written) {
        return;
    }
    if !out.written {
        println!(
            "{} is up to date ({} packages)",
            display(&p.lock_path()),
            out.lock.packages.len()
        );
        return;
    }
    if !out.reasons.is_empty() && !out.first {
        println!(
            "{} no longer fits {}: {}",
            display(&p.lock_path()),
            display(&p.pakfile_path),
            out.reasons.join("; ")
        );
    }
    for c in &out.changes {
        println!("{c}");
    }
    println!(
        "wrote {} ({} packages)",
        display(&p.lock_path()),
        out.lock.packages.len()
    );
}

pub fn lock(g: &Global, update: Update) -> Result<()> {
    let p = project(g)?;
    let out = p.lock(update)?;
    report_lock(g, &p, &out, false);
    Ok(())
}

/// What `build` and `fetch` do first: lock when needed, saying so.
pub(super) fn lock_if_needed(g: &Global, p: &Project) -> Result<()> {
    let out = p.lock(Update::IfNeeded)?;
    report_lock(g, p, &out, true);
    Ok(())
}

pub fn fetch(g: &Global) -> Result<()> {
    let p = project(g)?;
    lock_if_needed(g, &p)?;
    let (lock, entries) = p.fetch()?;
    if !g.quiet {
        println!(
            "{} packages in the store at {}",
            lock.packages.len(),
            p.root.store_dir().display()
        );
        if g.verbose {
            for (_, e) in entries {
                println!("  {}", e.dir.display());
            }
        }
    }
    Ok(())
}

pub fn list(g: &Global) -> Result<()> {
    let p = project(g)?;
    let Some(lock) = p.read_lock()? else {
        bail!(
            "{} does not exist yet; run `pak lock`",
            p.lock_path().display()
        );
    };
    if g.json {
        let v: Vec<_> = lock
            .packages
            .iter()
            .map(|p| serde_json::json!({"name": p.name, "version": p.version, "arch": p.arch, "sha256": p.sha256, "source": p.source}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let w = lock
        .packages
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(0);
    for p in &lock.packages {
        println!("{:w$}  {}  ({})", p.name, p.version, p.source);
    }
    Ok(())
}

pub fn search(g: &Global, term: &str) -> Result<()> {
    let p = project(g)?;
    let cands = Sources::from_pakfile(&p.pakfile)?.candidates(&p.root)?;
    let hits = crate::repo::search(&cands, term);
    if hits.is_empty() {
        bail!("nothing in the Pakfile's repositories matches {term:?}");
    }
    if g.json {
        let v: Vec<_> = hits
            .iter()
            .map(|c| serde_json::json!({"name": c.info.name, "version": c.info.version, "repository": c.repo, "summary": c.info.summary}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for c in hits.iter().take(if g.verbose { usize::MAX } else { 50 }) {
        println!(
            "{} {} [{}]  {}",
            c.info.name, c.info.version, c.repo, c.info.summary
        );
    }
    if hits.len() > 50 && !g.verbose {
        println!("... and {} more (-v shows all)", hits.len() - 50);
    }
    Ok(())
}

pub fn build(
    g: &Global,
    output: &Path,
    generation: Option<&Path>,
    number: u64,
    check: bool,
) -> Result<()> {
    let p = project(g)?;
    let start = std::time::Instant::now();
    if number != 1 && generation.is_none() {
        bail!("--number applies to --generation; a new disk image always starts at generation 1");
    }
    lock_if_needed(g, &p)?;
    let built = match generation {
        Some(out) => crate::image::build_generation(&p, number, out)?,
        None => crate::image::build_image(&p, output)?,
    };
    if !g.quiet {
        let what = generation.unwrap_or(output);
        println!(
            "built generation {} of {} ({} packages, kernel {}) into {} in {:.1}s",
            built.meta.number,
            built.meta.system,
            built.meta.packages.len(),
            built.meta.kernel_version,
            what.display(),
            start.elapsed().as_secs_f64()
        );
        if g.verbose {
            println!(
                "squashfs: {} bytes, {} inodes, {} of {} data blocks from the cache",
                built.stats.bytes,
                built.stats.inodes,
                built.stats.cached_blocks,
                built.stats.data_blocks
            );
        }
    }
    if check {
        if generation.is_some() {
            bail!("--check compares whole images; use it without --generation");
        }
        check_reproducible(g, output)?;
    }
    Ok(())
}

/// `--check`: the same lock, built again somewhere else entirely, must give
/// the same bytes.
fn check_reproducible(g: &Global, output: &Path) -> Result<()> {
    let p = project(g)?;
    let scratch = tempfile::tempdir()?;
    let other_root = crate::root::Root::new(scratch.path().join("root"));
    let again = scratch.path().join("again.raw");
    let pakfile = std::path::absolute(&p.pakfile_path)?;
    let here = std::env::current_dir()?;
    std::env::set_current_dir(scratch.path())?;
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let res =
        Project::open(&pakfile, other_root).and_then(|q| crate::image::build_image(&q, &again));
    rustix::process::umask(old);
    std::env::set_current_dir(here)?;
    res?;
    match crate::image::first_difference(output, &again)? {
        None => {
            println!(
                "reproducible: a second build with another store root, umask and working directory is identical"
            );
            Ok(())
        }
        Some(place) => bail!("not reproducible: a second build differs first in {place}"),
    }
}
