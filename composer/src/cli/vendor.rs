//! `pak vendor DIR`: the locked packages into signed repositories of one's
//! own, and the `[[repository]]` entries that build the same lock from them.
//!
//! Everything printed is TOML (the summary as comments), so the output can
//! be pasted, or redirected, into a Pakfile as it is.

use std::path::Path;

use anyhow::Result;

use super::Global;
use crate::sources::vendor::KeyUsed;

pub fn run(g: &Global, dir: &Path, key: Option<&Path>) -> Result<()> {
    let p = super::project::project(g)?;
    let v = crate::sources::vendor::vendor(&p, dir, key)?;
    if !g.quiet {
        let total: usize = v.repos.iter().map(|(_, n)| n).sum();
        let signed = match &v.key {
            KeyUsed::Given { secret, .. } => format!("signed with {}", secret.display()),
            KeyUsed::InDir {
                public,
                generated: true,
            } => format!(
                "signed with a new key, {} (keep it secret) and {}",
                public.with_extension("key").display(),
                public.display()
            ),
            KeyUsed::InDir { public, .. } => {
                format!("signed with {}", public.with_extension("key").display())
            }
        };
        println!(
            "# vendored {total} packages into {} ({signed}):",
            v.dir.display()
        );
        for (name, n) in &v.repos {
            println!("#   {name}: {n} package{}", if *n == 1 { "" } else { "s" });
        }
        for s in &v.skipped {
            println!(
                "# not vendored: {} {} (repository {:?}) is the builder's own binary; the pak that builds puts itself in",
                s.name, s.version, s.source
            );
        }
        println!(
            "# The Pakfile's [[repository]] entries with a mirror for each vendored copy: put them in its place, and {} builds the same image from the copy, with no network (--offline):\n",
            p.lock_path().display()
        );
    }
    print!("{}", v.snippet(&p.pakfile)?);
    Ok(())
}
