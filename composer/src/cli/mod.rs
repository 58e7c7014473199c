//! The command line: a thin layer that parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::root::Root;

mod project;

#[derive(Debug, Parser)]
#[command(
    name = "pak",
    version,
    about = "Compose immutable, bootable system images from a Pakfile"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct Global {
    /// Store and state root (default: /var/lib/pak for root, the XDG data dir otherwise)
    #[arg(long, global = true, env = "PAK_ROOT")]
    pub root: Option<PathBuf>,
    /// The Pakfile to use
    #[arg(long, global = true, env = "PAKFILE", default_value = "Pakfile")]
    pub pakfile: PathBuf,
    /// More output
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Less output
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Machine-readable output where a command lists or reports
    #[arg(long, global = true)]
    pub json: bool,
}

impl Global {
    pub fn root(&self) -> Root {
        match &self.root {
            Some(dir) => Root::new(dir),
            None => Root::default_for_user(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter Pakfile
    Init {
        /// Directory to create it in (default: the current one)
        dir: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init { dir } => project::init(dir)?,
    }
    Ok(ExitCode::SUCCESS)
}
