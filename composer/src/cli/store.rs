//! `pak store verify` and `pak store repair`.

use std::process::ExitCode;

use anyhow::Result;

use super::Global;
use crate::store::Store;

pub fn verify(g: &Global) -> Result<ExitCode> {
    let store = Store::open(&g.root())?;
    let report = store.verify()?;
    for d in &report.damaged {
        for p in &d.problems {
            println!("{}: {p}", d.key);
        }
    }
    if !report.leftovers.is_empty() && !g.quiet {
        println!(
            "{} leftovers of interrupted pak commands (not entries; `pak gc` or `pak store repair` removes them)",
            report.leftovers.len()
        );
    }
    if report.is_clean() {
        if !g.quiet {
            println!(
                "{} store entries in {} match their BOMs",
                report.checked,
                store.dir().display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let problems: usize = report.damaged.iter().map(|d| d.problems.len()).sum();
    eprintln!(
        "error: {} of {} store entries in {} are damaged ({problems} problems); `pak store repair` removes them and extracts them again from the download cache",
        report.damaged.len(),
        report.checked,
        store.dir().display()
    );
    Ok(ExitCode::FAILURE)
}

pub fn repair(g: &Global) -> Result<()> {
    let root = g.root();
    let store = Store::open(&root)?;
    let done = store.repair(&root)?;
    if g.quiet {
        return Ok(());
    }
    for d in &done.removed {
        println!("removed {} ({} problems)", d.key, d.problems.len());
    }
    for name in &done.leftovers {
        println!("removed the leftover {name}");
    }
    for key in &done.refetched {
        println!("extracted {key} again from the download cache");
    }
    for key in &done.not_cached {
        println!(
            "{key} is not in the download cache: the next `pak fetch` (or build, install, run) that needs it downloads it"
        );
    }
    if done.removed.is_empty() && done.leftovers.is_empty() {
        println!("nothing to repair in {}", store.dir().display());
    }
    Ok(())
}
