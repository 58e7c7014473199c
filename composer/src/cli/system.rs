//! `pak system ...`: argument handling over [`crate::system`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Global, SystemCommand};
use crate::system::{self, Incoming, PakDisk};

fn open(disk: Option<&Path>) -> Result<PakDisk> {
    match disk {
        Some(d) => PakDisk::open_image(d),
        None => PakDisk::open_live(),
    }
}

pub fn run(g: &Global, cmd: SystemCommand) -> Result<()> {
    match cmd {
        SystemCommand::Status { disk } => {
            let status = open(disk.as_deref())?.status()?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", system::render(&status));
            }
        }
        SystemCommand::Generations { disk } => {
            let status = open(disk.as_deref())?.status()?;
            let mut slots: Vec<_> = status
                .slots
                .iter()
                .filter(|s| s.generation.is_some())
                .collect();
            slots.sort_by_key(|s| std::cmp::Reverse(s.generation));
            if g.json {
                println!("{}", serde_json::to_string_pretty(&slots)?);
            } else {
                for s in slots {
                    let mark = if status.booted_slot == Some(s.slot) {
                        "*"
                    } else {
                        " "
                    };
                    println!(
                        "{mark} {:>4}  slot {}  {}",
                        s.generation.unwrap_or(0),
                        s.slot,
                        s.state
                    );
                }
            }
        }
        SystemCommand::Switch {
            disk,
            generation,
            force,
            reboot,
        } => {
            if reboot && disk.is_some() {
                bail!("--reboot is for the running system; a --disk image boots when you boot it");
            }
            let mut d = open(disk.as_deref())?;
            let done = match generation {
                Some(file) => {
                    let f = std::fs::File::open(&file)
                        .with_context(|| format!("cannot open {}", file.display()))?;
                    let mut incoming = Incoming::read(f, &file.display().to_string())?;
                    d.switch(&mut incoming, force)?
                }
                None => {
                    let p = super::project::project(g)?;
                    super::project::lock_if_needed(g, &p)?;
                    let number = d.newest_generation()? + 1;
                    let dir = p.root.dir().join("tmp");
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    let tmp = tempfile::Builder::new()
                        .prefix(".generation-")
                        .suffix(".sqfs")
                        .tempfile_in(&dir)?;
                    let built = crate::image::build_generation(&p, number, tmp.path())?;
                    if !g.quiet {
                        println!(
                            "built generation {number} of {} ({} packages)",
                            built.meta.system,
                            built.meta.packages.len()
                        );
                    }
                    let f = std::fs::File::open(tmp.path())?;
                    let mut incoming = Incoming::read(f, &format!("generation {number}"))?;
                    d.switch(&mut incoming, force)?
                }
            };
            if std::env::var_os("PAK_CUT_AFTER_OPS").is_some() {
                eprintln!("pak: device operations: {}", d.device().ops);
            }
            println!(
                "generation {} written to slot {} ({} MiB, sha256 {}); it boots next, with {}",
                done.generation,
                done.slot,
                done.image_size.div_ceil(1 << 20),
                &done.image_sha256[..16],
                done.entry
            );
            if reboot {
                reboot_now()?;
            } else if disk.is_none() {
                println!(
                    "reboot to use it; run `pak system mark-good` once it works (the image does this itself when its services are healthy)"
                );
            }
        }
        SystemCommand::Rollback { disk, reboot } => {
            if reboot && disk.is_some() {
                bail!("--reboot is for the running system");
            }
            println!("{}", open(disk.as_deref())?.rollback()?);
            if reboot {
                reboot_now()?;
            }
        }
        SystemCommand::MarkGood { disk } => println!("{}", open(disk.as_deref())?.mark_good()?),
        SystemCommand::Diff { disk, from, to } => {
            let d = open(disk.as_deref())?.diff(from, to)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", d.render());
            }
        }
        SystemCommand::Verify { disk } => {
            let mut bad = 0;
            for (entry, problem) in open(disk.as_deref())?.verify()? {
                match problem {
                    None => println!("ok   {entry}"),
                    Some(p) => {
                        bad += 1;
                        println!("BAD  {entry}: {p}");
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} loader entries would not boot what they name");
            }
        }
    }
    Ok(())
}

fn reboot_now() -> Result<()> {
    let path: PathBuf = ["/sbin/reboot", "/bin/reboot", "/usr/sbin/reboot"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("no reboot command on this system; reboot it yourself")?;
    let st = std::process::Command::new(path).status()?;
    if !st.success() {
        bail!("reboot failed ({st}); reboot yourself to use the new generation");
    }
    Ok(())
}
