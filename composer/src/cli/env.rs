//! `pak env`, `pak run`, `pak taste`, `pak install`, `pak uninstall`: user
//! environments (see `crate::env`).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
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
            let env = Env::open(&root, &name)?;
            let _guard = env.lock()?;
            env.remove()?;
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
    set_env(&root, Some("taste"), &[]);
    // Forked, not exec'd: the temporary Pakfile is removed once it ends.
    let status = match prepared.sandbox.run(&program, &args) {
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
    let root = g.root();
    let (name, req) = env::parse_spec(spec)?;
    let (env, created) = target_env(g, &target, true)?;
    let pakfile = env
        .as_ref()
        .map(Env::pakfile_path)
        .unwrap_or_else(|| g.pakfile.clone());
    let where_ = describe_target(env.as_ref(), &pakfile);
    let _guard = env.as_ref().map(Env::lock).transpose()?;
    let result = env::install(&pakfile, &root, &name, &req)
        .and_then(|edit| {
            if let Some(env) = &env {
                env.write_wrappers()?;
            }
            Ok(edit)
        })
        .with_context(|| format!("cannot install {spec} into {where_}; nothing was changed"));
    let edit = match result {
        Ok(edit) => edit,
        Err(err) => {
            if created && let Some(env) = &env {
                let _ = env.remove();
            }
            return Err(err);
        }
    };
    report(
        g,
        &edit,
        &format!("installed {spec} into {where_}"),
        env.as_ref(),
    );
    Ok(())
}

pub fn uninstall(g: &Global, target: Target, name: &str) -> Result<()> {
    let root = g.root();
    let (env, _) = target_env(g, &target, false)?;
    let pakfile = env
        .as_ref()
        .map(Env::pakfile_path)
        .unwrap_or_else(|| g.pakfile.clone());
    let where_ = describe_target(env.as_ref(), &pakfile);
    let _guard = env.as_ref().map(Env::lock).transpose()?;
    let edit = env::uninstall(&pakfile, &root, name)
        .and_then(|edit| {
            if let Some(env) = &env {
                env.write_wrappers()?;
            }
            Ok(edit)
        })
        .with_context(|| format!("cannot uninstall {name} from {where_}"))?;
    report(
        g,
        &edit,
        &format!("uninstalled {name} from {where_}"),
        env.as_ref(),
    );
    Ok(())
}

fn report(g: &Global, edit: &env::Edit, done: &str, env: Option<&Env>) {
    if g.quiet {
        return;
    }
    for c in &edit.changes {
        println!("{c}");
    }
    println!("{done}");
    if let Some(env) = env {
        let commands: Vec<String> = std::fs::read_dir(env.bin_dir())
            .map(|rd| {
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                names
            })
            .unwrap_or_default();
        if !commands.is_empty() {
            println!(
                "commands in {}: {}",
                env.bin_dir().display(),
                commands.join(", ")
            );
        }
    }
}

fn describe_target(env: Option<&Env>, pakfile: &std::path::Path) -> String {
    match env {
        Some(env) => format!("environment {}", env.name),
        None => pakfile.display().to_string(),
    }
}

/// The environment `-e`/`--user` name (the `user` one is created on first
/// install), or `None` for the Pakfile of the current directory.
fn target_env(g: &Global, target: &Target, create_user: bool) -> Result<(Option<Env>, bool)> {
    let root = g.root();
    if target.user {
        let env = Env::at(&root, env::USER_ENV)?;
        if env.pakfile_path().is_file() {
            return Ok((Some(env), false));
        }
        if !create_user {
            bail!(
                "there is no `user` environment yet (looked in {}); `pak install --user PKG` creates it",
                env.dir.display()
            );
        }
        let template = Template::Empty {
            cwd_pakfile: g.pakfile.clone(),
        };
        let (env, _) = Env::create(&root, env::USER_ENV, &template)?;
        return Ok((Some(env), true));
    }
    match &target.env {
        Some(name) => Ok((Some(Env::open(&root, name)?), false)),
        None => Ok((None, false)),
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
    // Fetching may have started threads (progress, downloads), and an
    // unprivileged user namespace needs a single-threaded caller; run
    // again from the start, which finds everything in the store now.
    if prepared.fetched
        && !rustix::process::geteuid().is_root()
        && threads() > 1
        && std::env::var_os(REEXEC_VAR).is_none()
    {
        let mut again = std::process::Command::new("/proc/self/exe");
        again
            .arg0(std::env::args_os().next().unwrap_or_else(|| "pak".into()))
            .args(std::env::args_os().skip(1))
            .env(REEXEC_VAR, "1");
        let err = again.exec();
        bail!("cannot run pak again after fetching: {err}");
    }
    set_env(&g.root(), name, extra);
    let err = match prepared.sandbox.exec(&program, &args) {
        Ok(never) => match never {},
        Err(err) => err,
    };
    Ok(sandbox_failure(
        &err,
        &name.map_or("the Pakfile's environment".to_string(), |n| {
            format!("environment {n}")
        }),
    ))
}

const REEXEC_VAR: &str = "PAK_RUN_REEXEC";

fn sandbox_failure(err: &SandboxError, env: &str) -> u8 {
    eprintln!("error: {err}");
    if let SandboxError::CommandNotFound { .. } = err {
        eprintln!(
            "hint: no package of {env} ships it; add one that does (`pak search TERM` finds it, `pak install [-e NAME] PKG` adds it)"
        );
    }
    err.exit_code()
}

/// What the command sees: `$PAK_ENV`, and a `PATH` without environment
/// wrappers (they would call `pak run` again instead of the command).
fn set_env(root: &crate::state::StateDir, name: Option<&str>, extra: &[(&str, OsString)]) {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let path = env::path_without_wrappers(root, &path);
    // SAFETY: pak is single-threaded here (checked above for the
    // unprivileged case; root may have idle worker threads that never read
    // the environment).
    unsafe {
        std::env::set_var("PATH", path);
        std::env::remove_var(REEXEC_VAR);
        if let Some(name) = name {
            std::env::set_var(env::ENV_VAR, name);
        }
        for (k, v) in extra {
            std::env::set_var(k, v);
        }
    }
}

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(1)
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
