//! Test and benchmark entry to `pak::env::sandbox`, until `pak run` and `pak taste`
//! expose it to users. Internal: not installed, not a stable interface.
//!
//! usage: sandbox-run [--fork] [--idle-thread] [--tree DIR]... -- CMD [ARGS...]
//!
//! Without `--fork` the process becomes CMD (`Sandbox::exec`); with it, CMD
//! runs in a child (`Sandbox::run`) and its end is reported and mirrored:
//! same exit status, or the same signal raised on ourselves.
//! `--idle-thread` starts a thread first, as a multi-threaded caller would.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use pak::env::sandbox::{Sandbox, describe_status};

struct Args {
    fork: bool,
    idle_thread: bool,
    trees: Vec<OsString>,
    cmd: OsString,
    args: Vec<OsString>,
}

fn parse(mut raw: impl Iterator<Item = OsString>) -> Result<Args, String> {
    let mut fork = false;
    let mut idle_thread = false;
    let mut trees = Vec::new();
    loop {
        let arg = raw.next().ok_or("missing `-- CMD`")?;
        match arg.to_str() {
            Some("--fork") => fork = true,
            Some("--idle-thread") => idle_thread = true,
            Some("--tree") => trees.push(raw.next().ok_or("--tree needs a directory")?),
            Some("--") => break,
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let cmd = raw.next().ok_or("missing CMD after --")?;
    Ok(Args {
        fork,
        idle_thread,
        trees,
        cmd,
        args: raw.collect(),
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!(
                "sandbox-run: {message}\nusage: sandbox-run [--fork] [--idle-thread] [--tree DIR]... -- CMD [ARGS...]"
            );
            return ExitCode::from(2);
        }
    };
    if args.idle_thread {
        std::thread::spawn(|| {
            loop {
                std::thread::park();
            }
        });
    }
    let sandbox = Sandbox::from_paths(args.trees.iter().map(std::path::PathBuf::from));
    if !args.fork {
        let Err(err) = sandbox.exec(&args.cmd, &args.args);
        eprintln!("sandbox-run: {err}");
        return ExitCode::from(err.exit_code());
    }
    match sandbox.run(&args.cmd, &args.args) {
        Ok(status) => mirror(status, &args.cmd),
        Err(err) => {
            eprintln!("sandbox-run: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn mirror(status: std::process::ExitStatus, cmd: &OsString) -> ExitCode {
    if let Some(code) = status.code() {
        return ExitCode::from(code as u8);
    }
    eprintln!(
        "sandbox-run: {}: {}",
        cmd.to_string_lossy(),
        describe_status(status)
    );
    if let Some(signal) = status.signal() {
        // SAFETY: resetting a disposition and raising a signal on ourselves.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
    ExitCode::from(128 + status.signal().unwrap_or(0) as u8)
}
