//! Shell habits: completion scripts and manual pages, generated from the
//! same clap definition that parses the command line, so they cannot drift
//! from it. Printed to stdout (or written to a directory) so a package
//! build or a user's dotfiles can capture them without running anything
//! else.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

/// The completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "pak", &mut out);
    print(&out)
}

/// Writes `bytes` to stdout; a reader that stopped early (`| head`) is no
/// error.
fn print(bytes: &[u8]) -> anyhow::Result<()> {
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

/// The page of `cmd`, titled in capitals as manual pages are; every page
/// names pak's version in its footer (clap knows it only for the top one).
fn page(cmd: clap::Command) -> clap_mangen::Man {
    let title = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_uppercase();
    clap_mangen::Man::new(cmd)
        .title(title)
        .source(format!("pak {}", env!("CARGO_PKG_VERSION")))
}

/// pak(1) on stdout, or, with `dir`, one page per command (pak.1,
/// pak-system.1, pak-system-status.1, ...) written into `dir`, their names
/// printed.
pub fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let Some(dir) = dir else {
        let mut out = Vec::new();
        page(Cli::command())
            .render(&mut out)
            .context("cannot render the manual page")?;
        return print(&out);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // clap names subcommand pages after their full path (pak-system-status)
    // only once the command is built.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, dir, &mut written)?;
    written.sort();
    for name in written {
        println!("{}", dir.join(name).display());
    }
    Ok(())
}

fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<String>) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    let path = page(cmd.clone())
        .generate_to(dir)
        .with_context(|| format!("cannot write a manual page into {}", dir.display()))?;
    written.push(path.file_name().unwrap().to_string_lossy().into_owned());
    Ok(())
}
