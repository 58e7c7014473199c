//! Commands on a Pakfile project: init, lock, update, fetch, list, search.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::Global;
use crate::project::{GenerationAfter, LockOutcome, Project, Update};
use crate::sources::Sources;
use crate::spec::pakfile;
use crate::util::timings::{self, Step};

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
    crate::util::fsutil::write_atomic(&path, pakfile::STARTER.as_bytes())?;
    println!("wrote {}", display(&path));
    println!("next: `pak lock` to resolve it, `pak build` to make a disk image");
    Ok(())
}

/// "1 package", "16 packages".
pub(super) fn packages(n: usize) -> String {
    format!("{n} package{}", if n == 1 { "" } else { "s" })
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
            "{} is up to date ({})",
            display(&p.lock_path()),
            packages(out.lock.packages.len())
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
        "wrote {} ({})",
        display(&p.lock_path()),
        packages(out.lock.packages.len())
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
            "{} in the store at {}",
            packages(lock.packages.len()),
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
    let hits = crate::sources::repo::search(&cands, term);
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
    number: Option<u64>,
    after: Option<&str>,
    check: bool,
    timings: bool,
) -> Result<()> {
    if check && generation.is_some() {
        bail!("--check compares whole images; use it without --generation");
    }
    if generation.is_none() && (number.is_some() || after.is_some()) {
        bail!(
            "--number and --after apply to --generation; a new disk image always starts at generation 1"
        );
    }
    let p = project(g)?;
    let start = std::time::Instant::now();
    let started = std::time::SystemTime::now();
    // Numbered before anything is built: a channel that cannot be read
    // costs no build.
    let number = match (generation, number) {
        (Some(_), None) => {
            let after = after.map(GenerationAfter::parse).transpose()?;
            let (n, why) = p.next_generation(after.as_ref())?;
            if !g.quiet {
                println!("numbering it generation {n}: {why}");
            }
            n
        }
        (_, n) => n.unwrap_or(1),
    };
    timings::time(Step::Resolve, || lock_if_needed(g, &p))?;
    let built = match generation {
        Some(out) => crate::image::build_generation(&p, number, out)?,
        None => crate::image::build_image(&p, output)?,
    };
    p.record_generation(built.meta.number)?;
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
    report_pins(g, &p, &built);
    report_unconverted(g, &built, generation.unwrap_or(output))?;
    if timings {
        // Before --check, whose second build is not this one's time.
        print!("{}", timings::render(&timings::totals(), start.elapsed()));
    }
    if check {
        check_reproducible(g, &p, output, started)?;
    }
    Ok(())
}

/// The account ids the build gave and the lock now keeps (or, with
/// `--locked`, would).
fn report_pins(g: &Global, p: &Project, built: &crate::image::Built) {
    if g.quiet || built.pinned.is_empty() {
        return;
    }
    if !built.pins_written {
        println!(
            "{} does not pin these account ids, and --locked writes nothing; the image has them all the same (allocation is a function of lock, packages and Pakfile), but a build without --locked keeps them stable when more accounts come:",
            display(&p.lock_path())
        );
    }
    for c in &built.pinned {
        println!("{c}");
    }
    if built.pins_written {
        println!("wrote {} (account ids pinned)", display(&p.lock_path()));
    }
}

/// The maintainer-script steps pak did not turn into configuration: a
/// count per package on the terminal, every step (package, script, line,
/// command) in a file beside the image, and on the terminal with -v.
fn report_unconverted(g: &Global, built: &crate::image::Built, image: &Path) -> Result<()> {
    let steps = &built.unconverted;
    if steps.is_empty() {
        return Ok(());
    }
    let mut list = String::from(
        "# Steps of the packages' maintainer scripts that pak did not turn into\n# configuration. Add what the image needs to the Pakfile: [users], [groups],\n# [files], or a tmpfiles.d file under /etc/tmpfiles.d/ in [files].\n",
    );
    let mut per: Vec<(&str, usize)> = Vec::new();
    for (package, u) in steps {
        list.push_str(&format!("{package} {}:{}: {}\n", u.script, u.line, u.text));
        match per.last_mut() {
            Some((p, n)) if *p == package => *n += 1,
            _ => per.push((package, 1)),
        }
    }
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = image.with_file_name(format!("{name}.unconverted.txt"));
    crate::util::fsutil::write_atomic(&path, list.as_bytes())?;
    if g.quiet {
        return Ok(());
    }
    per.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = per
        .iter()
        .take(5)
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    let more = if per.len() > 5 {
        format!(", {} more packages", per.len() - 5)
    } else {
        String::new()
    };
    println!(
        "{} maintainer-script step{} of {} were not converted ({}{more}): see {}{}",
        steps.len(),
        if steps.len() == 1 { "" } else { "s" },
        packages(per.len()),
        shown.join(", "),
        display(&path),
        if g.verbose { "" } else { " or -v" }
    );
    if g.verbose {
        for line in list.lines().filter(|l| !l.starts_with('#')) {
            println!("  {line}");
        }
    }
    Ok(())
}

/// `--check`: the same lock, built again by another process that differs
/// from this one in everything a second machine would, must give the same
/// bytes. The library does it ([`crate::image::check::check`]); this renders.
fn check_reproducible(
    g: &Global,
    p: &Project,
    output: &Path,
    started: std::time::SystemTime,
) -> Result<()> {
    let report = crate::image::check::check(output, &p.pakfile_path, &p.root, started)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !g.quiet || !report.differences.is_empty() {
        println!("second build, from the Pakfile and lock the image carries, varied:");
        for v in &report.varied {
            println!("  {}: {} -> {}", v.what, v.first, v.second);
        }
        if g.verbose {
            println!("and kept:");
            for k in &report.kept {
                println!("  {k}");
            }
        }
    }
    if report.differences.is_empty() {
        if !g.quiet && !g.json {
            println!("reproducible: the second build is identical, bit for bit");
        }
        return Ok(());
    }
    if !g.json {
        for d in &report.differences {
            println!("  differs: {}", d.describe("first build", "second build"));
        }
    }
    match &report.other_pak {
        Some(o) => bail!("not reproducible; {}", o.explain()),
        None => bail!(
            "not reproducible: the second build differs first in {}",
            report.differences[0].describe("first build", "second build")
        ),
    }
}
