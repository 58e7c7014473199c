//! `pak verify IMAGE`: renders what [`crate::image::verify::verify`] found.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::Global;
use crate::image::verify::{ImageKind, Seeds, VerifyReport};
use crate::state::StateDir;

pub fn run(g: &Global, image: &Path) -> Result<ExitCode> {
    // With --root (or PAK_ROOT) the rebuild uses that store; otherwise a
    // scratch one, with copies of the caller's downloads.
    let (root, seeds) = match &g.root {
        Some(dir) => (Some(StateDir::new(dir)), vec![]),
        None => (None, vec![StateDir::default_for_user()]),
    };
    let report = crate::image::verify::verify(
        image,
        root,
        &Seeds {
            roots: seeds,
            project_dir: None,
        },
    )?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        render(g, &report);
    }
    Ok(if report.identical() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn render(g: &Global, r: &VerifyReport) {
    let what = match r.kind {
        ImageKind::Disk => "disk image",
        ImageKind::Generation => "generation file",
    };
    if r.identical() {
        println!(
            "identical: {} ({what}, generation {} of {}, {} packages) rebuilt from its own Pakfile and lock is the same, bit for bit",
            r.image.display(),
            r.generation,
            r.system,
            r.packages
        );
        if g.verbose {
            println!("rebuilt with the store at {}", r.root.display());
        }
        return;
    }
    println!(
        "differs: {} ({what}, generation {} of {}) is not what its own Pakfile and lock build",
        r.image.display(),
        r.generation,
        r.system
    );
    for d in &r.differences {
        println!("  {}", d.describe("image", "rebuild"));
    }
    if r.seal_broken {
        println!(
            "likely cause: the generation{} no longer matches the sha256 sealed behind it when it was written: the image was changed (damaged or tampered with) after it was built",
            if r.kind == ImageKind::Disk {
                " in slot a"
            } else {
                ""
            }
        );
    }
    if let Some(o) = &r.other_pak {
        println!("likely cause: {}", o.explain());
    }
}
