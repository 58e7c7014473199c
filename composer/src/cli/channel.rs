//! `pak publish` and `pak channel show`: words over [`crate::channel`].

use std::path::Path;

use anyhow::{Context, Result};

use super::Global;
use crate::channel::{Channel, Publish};
use crate::sources::key::{PublicKey, SecretKey};

pub fn publish(g: &Global, dir: &Path, key: &Path, what: Publish) -> Result<()> {
    let key = SecretKey::read(key)?;
    let done = crate::channel::publish(dir, &key, &what)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
        return Ok(());
    }
    if let Some(a) = &done.added {
        println!(
            "published generation {} of {} ({} MiB, sha256 {}) as {}",
            a.number,
            a.system,
            a.size.div_ceil(1 << 20),
            &a.sha256[..16],
            dir.join(&a.file).display()
        );
    }
    for f in &done.pruned {
        println!("removed {f}");
    }
    print!("{}", render(&done.channel, None));
    Ok(())
}

pub fn show(g: &Global, url: &str, key: Option<&Path>) -> Result<()> {
    let (channel, signer) = match key {
        Some(k) => {
            let text = std::fs::read_to_string(k)
                .with_context(|| format!("cannot read the key {}", k.display()))?;
            let key = PublicKey::parse(&text).with_context(|| format!("{}", k.display()))?;
            let c = crate::channel::fetch(url, &key)?;
            (c, format!("verified, key {}", key.id()))
        }
        None => {
            let (c, id) = crate::channel::fetch_unverified(url)?;
            (c, format!("NOT verified (no --key), signed by key {id}"))
        }
    };
    if g.json {
        println!("{}", serde_json::to_string_pretty(&channel)?);
    } else {
        print!("{}", render(&channel, Some(&signer)));
    }
    Ok(())
}

fn render(c: &Channel, signer: Option<&str>) -> String {
    let mut out = format!(
        "channel version {}, expires {}{}\n",
        c.version,
        crate::util::timefmt::utc(c.expires),
        if c.expires <= crate::channel::now() {
            " (EXPIRED: hosts refuse it)"
        } else {
            ""
        }
    );
    if let Some(s) = signer {
        out.push_str(&format!("signature: {s}\n"));
    }
    let newest = c.newest_generation().map(|g| g.number);
    out.push_str(&match (c.halted, newest) {
        (true, _) => "rollout: HALTED (hosts update to nothing; `pak publish --resume`)\n".into(),
        (false, Some(n)) => format!("rollout: generation {n} to {}% of hosts\n", c.rollout),
        (false, None) => "rollout: no generations\n".into(),
    });
    for g in c.generations.iter().rev() {
        out.push_str(&format!(
            "  {:>4}  {}  {} MiB  kernel {}  {} packages  {}{}{}\n",
            g.number,
            g.system,
            g.size.div_ceil(1 << 20),
            g.kernel,
            g.packages.len(),
            g.root_hash
                .as_ref()
                .map(|r| format!("root {}…  ", r.chars().take(12).collect::<String>()))
                .unwrap_or_default(),
            g.file,
            g.chunks
                .as_ref()
                .map(|c| format!(" + {} (delta index)", c.file))
                .unwrap_or_default()
        ));
    }
    out
}
