//! `pak publish`: adding a generation to a channel directory, changing its
//! rollout, halting and resuming it.
//!
//! Every write lands whole or not at all, in an order that keeps the
//! directory servable at every moment: a new generation file is copied to
//! a temporary name and renamed into place first, the metadata that names
//! it is renamed into place last, and only then are pruned files removed.
//! A host reading the channel mid-publish sees the old metadata, whose
//! files are all still there, or the new one, whose files all are.
//!
//! The metadata is not reproducible and need not be: its expiry is the
//! clock at publish time plus `--expires`. The generations it lists are
//! the byte-identical files `pak build` made.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::chunks::ChunkIndex;
use super::{Channel, ChannelError, ChannelGeneration, ChunkFile, FORMAT, METADATA};
use crate::sources::key::SecretKey;

/// What to change in a channel.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    /// A generation file to add.
    pub generation: Option<PathBuf>,
    /// The newest generation's rollout percentage (default: unchanged, 100
    /// for a new channel).
    pub rollout: Option<u32>,
    /// `Some(true)` halts, `Some(false)` resumes; `None` leaves it.
    pub halt: Option<bool>,
    /// Keep only this many generations, newest first.
    pub keep: Option<usize>,
    /// Seconds from now until hosts refuse the metadata.
    pub expires_in: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub channel: Channel,
    /// The generation added, if any.
    pub added: Option<ChannelGeneration>,
    /// Generation files (and their chunk indexes) removed by `keep`.
    pub pruned: Vec<String>,
}

/// `pak publish [GEN.sqfs] --channel DIR --key KEY ...`: adds the
/// generation, if given, and re-signs with a new version and expiry.
pub fn publish(dir: &Path, key: &SecretKey, what: &Publish) -> Result<Published> {
    if what.keep == Some(0) {
        return Err(ChannelError::KeepNone.into());
    }
    if let Some(r) = what.rollout.filter(|&r| r > 100) {
        return Err(ChannelError::Rollout(r).into());
    }
    let previous = read_own(dir, key)?;
    if previous.is_none() && what.generation.is_none() {
        return Err(ChannelError::NoChannel {
            dir: dir.display().to_string(),
        }
        .into());
    }
    let mut channel = previous.clone().unwrap_or(Channel {
        format: FORMAT,
        version: 0,
        expires: 0,
        rollout: 100,
        halted: false,
        newest: 0,
        generations: Vec::new(),
    });
    let added = match &what.generation {
        Some(file) => {
            let g = add_generation(dir, file, channel.newest)?;
            channel.newest = g.number;
            channel.generations.push(g.clone());
            Some(g)
        }
        None => None,
    };
    if let Some(r) = what.rollout {
        channel.rollout = r;
    } else if added.is_some() {
        // A new generation starts its own rollout; without --rollout it
        // goes to everyone, as before there were rollouts.
        channel.rollout = 100;
    }
    if let Some(h) = what.halt {
        channel.halted = h;
    }
    channel.generations.sort_by_key(|g| g.number);
    let mut pruned = Vec::new();
    if let Some(keep) = what.keep {
        let n = channel.generations.len().saturating_sub(keep);
        pruned = channel
            .generations
            .drain(..n)
            .flat_map(|g| std::iter::once(g.file).chain(g.chunks.map(|c| c.file)))
            .collect::<Vec<_>>();
    }
    channel.version += 1;
    channel.expires = super::now() + what.expires_in;
    let text = super::seal(&channel.to_toml(), key);
    // The metadata goes last: from here on hosts see the new generation.
    crate::util::fsutil::write_atomic(&dir.join(METADATA), text.as_bytes())?;
    for f in &pruned {
        let p = dir.join(f);
        if let Err(e) = std::fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(e).with_context(|| {
                format!(
                    "the channel no longer lists {f}, but it cannot be removed; remove {} yourself",
                    p.display()
                )
            });
        }
    }
    Ok(Published {
        channel,
        added,
        pruned,
    })
}

/// The channel already in `dir`, checked against the publisher's own key:
/// a channel signed by someone else is not silently taken over.
fn read_own(dir: &Path, key: &SecretKey) -> Result<Option<Channel>> {
    let path = dir.join(METADATA);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let channel = super::verify(&path.display().to_string(), &bytes, &key.public())
        .with_context(|| {
            format!(
                "refusing to publish over {}: sign with the channel's own key, or start a new channel directory",
                path.display()
            )
        })?;
    Ok(Some(channel))
}

/// Copies the generation `file` into `dir` under its channel name and
/// returns its entry; refuses a number not above `newest`.
fn add_generation(dir: &Path, file: &Path, newest: u64) -> Result<ChannelGeneration> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    // Reading it as a switch would checks its seal: a damaged file is
    // refused here, not by every host of the fleet.
    let incoming = crate::system::Incoming::read(f, &file.display().to_string())?;
    let meta = incoming.meta.clone();
    // Checked against the tree just now, as every host checks it again.
    let root_hash = incoming.verity.root_hash.clone();
    drop(incoming);
    if meta.number <= newest {
        return Err(ChannelError::NotNewer {
            number: meta.number,
            newest,
            next: newest + 1,
            channel: dir.display().to_string(),
        }
        .into());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = format!("{}-{}.sqfs", meta.system, meta.number);
    let mut src =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".publish-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", file.display()))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .with_context(|| format!("cannot write in {} (disk full?)", dir.display()))?;
        size += n as u64;
    }
    tmp.as_file().sync_all()?;
    use std::os::unix::fs::PermissionsExt;
    // Served to anyone: the web server must be able to read it.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(dir.join(&name))
        .with_context(|| format!("cannot write {}", dir.join(&name).display()))?;
    let chunks = write_chunks(dir, &dir.join(&name), &meta.system, meta.number)?;
    crate::util::fsutil::sync_dir(dir)?;
    Ok(ChannelGeneration {
        number: meta.number,
        file: name,
        sha256: hex::encode(hash.finalize()),
        size,
        system: meta.system,
        build_id: meta.build_id,
        kernel: meta.kernel_version,
        root_hash: Some(root_hash),
        chunks: Some(chunks),
        packages: meta.packages,
    })
}

/// Writes the chunk index of the generation file `file` beside it, as
/// the generation file is written: whole or not at all.
fn write_chunks(dir: &Path, file: &Path, system: &str, number: u64) -> Result<ChunkFile> {
    let mut f =
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let len = f.metadata()?.len();
    let index = ChunkIndex::of(&mut std::io::BufReader::new(&mut f), 0, len)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let bytes = index.to_bytes();
    let name = format!("{system}-{number}.chunks");
    crate::util::fsutil::write_atomic(&dir.join(&name), &bytes)?;
    use std::os::unix::fs::PermissionsExt;
    // Served to anyone, like the generation file.
    std::fs::set_permissions(dir.join(&name), std::fs::Permissions::from_mode(0o644))?;
    Ok(ChunkFile {
        file: name,
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as u64,
    })
}
