//! `pak env`, `pak run`, `pak taste`, `pak install`, `pak uninstall`: user
//! environments (see `crate::env`).

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::Global;
use crate::env::sandbox::{SandboxError, describe_status};
use crate::env::{self, Env, Template};

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Create an environment. Without --pakfile it is empty, with the
    /// repositories of ./Pakfile, or else of /etc/pak/repositories.toml,
    /// or else of the image's /usr/lib/pak/repositories.toml
    Create { name: String },
    /// List the environments
    List,
    /// Delete an environment (its packages leave the store at the next `pak gc`)
    Remove { name: String },
    /// Start $SHELL inside an environment ($PAK_ENV names it)
    Enter { name: String },
}

/// Which Pakfile `pak install`/`pak uninstall` edit.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// This environment (default: the Pakfile of the current directory)
    #[arg(
        short = 'e',
        long = "env",
        value_name = "NAME",
        conflicts_with = "user"
    )]
    pub env: Option<String>,
    /// The `user` environment (created on first use), whose commands are on
    /// PATH in pak images
    #[arg(long)]
    pub user: bool,
}

pub fn command(g: &Global, cmd: EnvCommand) -> Result<()> {
    let root = g.root();
    match cmd {
        EnvCommand::Create { name } => {
            let template = if pakfile_given() {
                Template::Pakfile(g.pakfile.clone())
            } else {
                Template::Empty {
                    cwd_pakfile: g.pakfile.clone(),
                }
            };
            let (env, changes) = Env::create(&root, &name, &template)?;
            if !g.quiet {
                for c in &changes {
                    println!("{c}");
                }
                let summary = env.summary();
                println!(
                    "created environment {name} at {} ({} requested, {} locked)",
                    env.dir.display(),
                    count(summary.packages.len(), "package"),
                    summary.locked.unwrap_or(0)
                );
                println!(
                    "next: `pak install -e {name} PKG`, `pak run -e {name} -- CMD`, `pak env enter {name}`"
                );
            }
        }
        EnvCommand::List => {
            let summaries: Vec<_> = env::list(&root)?.iter().map(Env::summary).collect();
            if g.json {
                println!("{}", serde_json::to_string_pretty(&summaries)?);
            } else if summaries.is_empty() {
                if !g.quiet {
                    println!(
                        "no environments in {}; `pak env create NAME` makes one",
                        root.envs_dir().display()
                    );
                }
            } else {
                for s in summaries {
                    let packages: Vec<&str> = s.packages.keys().map(String::as_str).collect();
                    let state = match (&s.problem, s.locked) {
                        (Some(problem), _) => format!("broken: {problem}"),
                        (None, Some(n)) => format!("{} locked", count(n, "package")),
                        (None, None) => "not locked yet".to_string(),
                    };
                    println!(
                        "{:<16} {:<40} {state}",
                        s.name,
                        if packages.is_empty() {
                            "(empty)".to_string()
                        } else {
                            packages.join(", ")
                        }
                    );
                }
            }
        }
        EnvCommand::Remove { name } => {
            env::remove(&root, &name)?;
            if !g.quiet {
                println!("removed environment {name}; `pak gc` frees the packages only it used");
            }
        }
        EnvCommand::Enter { name } => {
            let env = Env::open(&root, &name)?;
            let prepared = env.prepare(g.lock_policy())?;
            let shell = std::env::var_os("SHELL")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "/bin/sh".into());
            let mut ps1 = OsString::from(format!("({name}) "));
            ps1.push(std::env::var_os("PS1").unwrap_or_else(|| "\\u@\\h:\\w\\$ ".into()));
            if !g.quiet {
                eprintln!(
                    "entering environment {name} ({}); `exit` leaves it",
                    describe_packages(&prepared.sandbox)
                );
            }
            // Debian's bash startup files put $debian_chroot in the prompt
            // they set, so the name shows even where PS1 is overridden.
            let code = exec(
                g,
                prepared,
                Some(&name),
                shell,
                Vec::new(),
                &[("PS1", ps1), ("debian_chroot", name.clone().into())],
            )?;
            std::process::exit(code.into());
        }
    }
    Ok(())
}

/// `pak run [-e NAME] -- CMD ARGS...`: becomes CMD inside the environment.
pub fn run(g: &Global, name: Option<String>, cmd: Vec<OsString>) -> Result<ExitCode> {
    let root = g.root();
    let (pakfile, what) = match &name {
        Some(name) => (
            Env::open(&root, name)?.pakfile_path(),
            format!("environment {name:?}"),
        ),
        None => (g.pakfile.clone(), g.pakfile.display().to_string()),
    };
    let prepared = env::prepare(&pakfile, &root, g.lock_policy()).with_context(|| {
        if name.is_some() {
            format!("cannot prepare {what}")
        } else {
            format!(
                "cannot prepare {what} (without -e, pak run uses the Pakfile of the current directory)"
            )
        }
    })?;
    if let Some((lock, changes)) = &prepared.wrote_lock
        && !g.quiet
    {
        for c in changes {
            eprintln!("pak: {c}");
        }
        eprintln!(
            "pak: wrote {} ({}); later runs reuse it",
            lock.display(),
            count(prepared.sandbox.lowers.len(), "package")
        );
    }
    let mut argv = cmd.into_iter();
    let program = argv.next().context("no command given after --")?;
    let code = exec(g, prepared, name.as_deref(), program, argv.collect(), &[])?;
    Ok(ExitCode::from(code))
}

/// `pak taste PKG [-- CMD]`: a throwaway environment; nothing is kept but
/// the store and download cache.
pub fn taste(g: &Global, spec: &str, cmd: Vec<OsString>) -> Result<ExitCode> {
    let root = g.root();
    let taste = env::Taste::new(&root, spec, &g.pakfile)?;
    let prepared = taste
        .prepare()
        .with_context(|| format!("cannot prepare a taste of {spec}"))?;
    let mut argv = cmd.into_iter();
    let (program, args) = match argv.next() {
        Some(program) => (program, argv.collect()),
        None => {
            if !g.quiet {
                eprintln!(
                    "tasting {spec} ({}); `exit` leaves and forgets it",
                    describe_packages(&prepared.sandbox)
                );
            }
            (
                std::env::var_os("SHELL")
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "/bin/sh".into()),
                Vec::new(),
            )
        }
    };
    let status = match taste.run(&prepared, &program, &args) {
        Ok(status) => status,
        Err(err) => {
            return Ok(ExitCode::from(sandbox_failure(
                &err,
                &format!("the taste of {spec}"),
            )));
        }
    };
    drop(taste);
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => {
            if !g.quiet {
                eprintln!("{}: {}", program.to_string_lossy(), describe_status(status));
            }
            ExitCode::from(128u8.wrapping_add(signal as u8))
        }
        _ => ExitCode::FAILURE,
    })
}

pub fn install(g: &Global, target: Target, spec: &str) -> Result<()> {
    let edit = env::install(&g.root(), &target.resolve(g), spec)?;
    report(g, &edit, &format!("installed {spec} into {}", edit.target));
    Ok(())
}

pub fn uninstall(g: &Global, target: Target, name: &str) -> Result<()> {
    let edit = env::uninstall(&g.root(), &target.resolve(g), name)?;
    report(
        g,
        &edit,
        &format!("uninstalled {name} from {}", edit.target),
    );
    Ok(())
}

impl Target {
    fn resolve(&self, g: &Global) -> env::Target {
        match (&self.env, self.user) {
            (_, true) => env::Target::User {
                cwd_pakfile: g.pakfile.clone(),
            },
            (Some(name), false) => env::Target::Env(name.clone()),
            (None, false) => env::Target::Pakfile(g.pakfile.clone()),
        }
    }
}

fn report(g: &Global, edit: &env::Edit, done: &str) {
    if g.quiet {
        return;
    }
    for c in &edit.changes {
        println!("{c}");
    }
    println!("{done}");
    if let Some((env, commands)) = &edit.env
        && !commands.is_empty()
    {
        println!(
            "commands in {}: {}",
            env.bin_dir().display(),
            commands.join(", ")
        );
    }
}

/// Replaces this process by `program` inside the prepared sandbox; returns
/// the exit code to use only when that fails.
fn exec(
    g: &Global,
    prepared: env::Prepared,
    name: Option<&str>,
    program: OsString,
    args: Vec<OsString>,
    extra: &[(&str, OsString)],
) -> Result<u8> {
    let err = env::exec(prepared, &g.root(), name, &program, &args, extra)?;
    Ok(sandbox_failure(
        &err,
        &name.map_or("the Pakfile's environment".to_string(), |n| {
            format!("environment {n}")
        }),
    ))
}

fn sandbox_failure(err: &SandboxError, env: &str) -> u8 {
    eprintln!("error: {err}");
    if let SandboxError::CommandNotFound { .. } = err {
        eprintln!(
            "hint: no package of {env} ships it; add one that does (`pak search TERM` finds it, `pak install [-e NAME] PKG` adds it)"
        );
    }
    err.exit_code()
}

fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn describe_packages(sandbox: &crate::env::sandbox::Sandbox) -> String {
    match sandbox.lowers.len() {
        0 => "no packages".to_string(),
        n => format!(
            "{}: {}",
            count(n, "package"),
            sandbox
                .lowers
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Whether `--pakfile` (or `PAKFILE`) was given, rather than defaulted:
/// `pak env create NAME --pakfile FILE` copies FILE's packages, while
/// without it only the current directory's repositories are taken.
fn pakfile_given() -> bool {
    use clap::CommandFactory;
    let matches = match super::Cli::command().try_get_matches_from(std::env::args_os()) {
        Ok(m) => m,
        Err(_) => return false,
    };
    let source = matches
        .subcommand_matches("env")
        .and_then(|m| m.subcommand_matches("create"))
        .and_then(|m| m.value_source("pakfile"));
    matches!(
        source,
        Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
    )
}
