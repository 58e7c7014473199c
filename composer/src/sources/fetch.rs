//! Getting bytes from a repository: a local path, `file://` or `http(s)://`.
//!
//! Downloads stream into a temporary file beside the destination while
//! hashing, and are renamed into place only when size and sha256 agree with
//! what a signed index (or apt's verified index) promised: a corrupt or
//! hostile download never lands. The temporary (`.dl-*`) is flock-held
//! while it is written, so `pak gc` removes it only once its pak is dead
//! (`util::leftovers`).
//!
//! Every byte pak takes from the network passes through [`open`], so this is
//! where `--offline` is enforced: with [`Network::Offline`] set, an
//! `http(s)://` URL is refused with [`FetchError::Offline`] before any
//! connection, whoever asked for it (an index, a package, a snapshot).
//! The setting is one process-wide switch, set once by the command line,
//! rather than a parameter: the network is reached from several layers
//! (projects, environments, repositories, apt) and a parameter threaded
//! through all of them could be forgotten on one path, which is exactly the
//! promise `--offline` makes ("no network at all") broken. Local
//! directories and `file://` are not network and keep working.
//!
//! A missing file (HTTP 404 or 410, or no such local file) is
//! [`FetchError::NotFound`], so callers can tell "gone" from "unreachable".

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::util::leftovers::{self, Temporary};

/// Whether pak may use the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    #[default]
    Online,
    /// `--offline`: local directories, `file://`, the download cache and the
    /// store only.
    Offline,
}

static OFFLINE: AtomicBool = AtomicBool::new(false);

/// Sets the process's network policy (the command line does, once).
pub fn set_network(n: Network) {
    OFFLINE.store(n == Network::Offline, Ordering::SeqCst);
}

pub fn network() -> Network {
    if OFFLINE.load(Ordering::SeqCst) {
        Network::Offline
    } else {
        Network::Online
    }
}

/// Whether fetching `url` needs the network.
pub fn is_remote(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} does not exist ({why})")]
    NotFound { url: String, why: String },
    #[error("--offline is on: pak uses no network, so it does not fetch {url}")]
    Offline { url: String },
}

/// Whether `err` (or what it wraps) says the file does not exist.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| matches!(e.downcast_ref(), Some(FetchError::NotFound { .. })))
}

/// Whether `err` (or what it wraps) is a refusal by `--offline`.
pub fn is_offline(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| matches!(e.downcast_ref(), Some(FetchError::Offline { .. })))
}

/// Refuses a remote URL under `network`; the one check every open makes.
fn allowed(url: &str, network: Network) -> Result<(), FetchError> {
    if network == Network::Offline && is_remote(url) {
        return Err(FetchError::Offline { url: url.into() });
    }
    Ok(())
}

/// Opens a URL or path for reading.
fn open(url: &str) -> Result<(Box<dyn Read>, Option<u64>)> {
    allowed(url, network())?;
    if is_remote(url) {
        let resp = ureq::get(url).call().map_err(|e| match e {
            ureq::Error::StatusCode(code @ (404 | 410)) => FetchError::NotFound {
                url: url.into(),
                why: format!("HTTP {code}"),
            }
            .into(),
            ureq::Error::StatusCode(code) => anyhow::anyhow!("{url} answered HTTP {code}"),
            other => anyhow::anyhow!("cannot reach {url}: {other}; check the URL and the network"),
        })?;
        let len = resp.body().content_length();
        return Ok((Box::new(resp.into_body().into_reader()), len));
    }
    let path = local_path(url);
    let f = match std::fs::File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FetchError::NotFound {
                url: path.display().to_string(),
                why: "no such file".into(),
            }
            .into());
        }
        other => other.with_context(|| format!("cannot open {}", path.display()))?,
    };
    let len = f.metadata().ok().map(|m| m.len());
    Ok((Box::new(f), len))
}

fn local_path(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("file://").unwrap_or(url))
}

/// Joins a repository base and a relative location.
pub fn join(base: &str, rel: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        rel.trim_start_matches('/')
    )
}

/// Reads a small file whole, refusing more than `limit` bytes.
pub fn get_bytes(url: &str, limit: u64) -> Result<Vec<u8>> {
    let (r, _) = open(url)?;
    let mut buf = Vec::new();
    r.take(limit + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {url}"))?;
    if buf.len() as u64 > limit {
        bail!("{url} is larger than {limit} bytes; refusing it");
    }
    Ok(buf)
}

/// Like [`get_bytes`], but `Ok(None)` when the file does not exist.
pub fn get_optional(url: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    match get_bytes(url, limit) {
        Err(e) if is_not_found(&e) => Ok(None),
        other => other.map(Some),
    }
}

/// Downloads `url` to `dest`, checking size and sha256; what is named in
/// errors is `what` (e.g. "package nginx from repository debian").
pub fn download_verified(
    url: &str,
    dest: &Path,
    sha256: &str,
    size: u64,
    what: &str,
) -> Result<()> {
    let (mut r, len) = open(url).with_context(|| format!("cannot download {what}"))?;
    let dir = dest.parent().context("destination has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Held for its life: `pak gc` removes a `.dl-*` only when its pak died.
    let (mut tmp, _held) = leftovers::held(
        || {
            tempfile::Builder::new()
                .prefix(Temporary::Download.prefix())
                .tempfile_in(dir)
        },
        |t| Ok((t.as_file().try_clone()?, t.path().to_path_buf())),
    )
    .with_context(|| format!("cannot write in {}", dir.display()))?;
    let bar = crate::util::progress::bytes(len.unwrap_or(size), &format!("fetch {}", short(url)));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .with_context(|| format!("the download of {url} was interrupted"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if size > 0 && total > size {
            bail!(
                "{what}: {url} is larger than the {size} bytes its index declares; refused, nothing kept"
            );
        }
        h.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .with_context(|| format!("cannot write {} (disk full?)", dir.display()))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let got = hex::encode(h.finalize());
    if got != sha256 {
        bail!(
            "{what}: sha256 of {url} is {got}, its index says {sha256}; the repository or the download is corrupt. Nothing was kept"
        );
    }
    if size > 0 && total != size {
        bail!("{what}: {url} is {total} bytes, its index says {size}; nothing was kept");
    }
    tmp.as_file().sync_all()?;
    tmp.persist(dest)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(())
}

/// Downloads `url` (`size` bytes long) into `partial`, continuing after
/// the bytes an interrupted run left there: over HTTP with a Range request
/// (a server that ignores it sends everything, and `partial` starts over),
/// from a path by seeking. Checks only the length; the caller checks the
/// sha256 of the whole before using it. The progress bar says `label`.
pub fn download_resumable(url: &str, partial: &Path, size: u64, label: &str) -> Result<()> {
    allowed(url, network())?;
    let dir = partial.parent().context("destination has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = std::fs::File::options()
        .create(true)
        .append(true)
        .open(partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let mut have = out.metadata()?.len();
    if have > size {
        out.set_len(0)?;
        have = 0;
    }
    if have == size {
        return Ok(());
    }
    let mut body: Box<dyn Read> = if is_remote(url) {
        let resp = ureq::get(url)
            .header("Range", format!("bytes={have}-"))
            .call()
            .map_err(|e| match e {
                ureq::Error::StatusCode(code @ (404 | 410)) => FetchError::NotFound {
                    url: url.into(),
                    why: format!("HTTP {code}"),
                }
                .into(),
                ureq::Error::StatusCode(code) => anyhow::anyhow!("{url} answered HTTP {code}"),
                other => {
                    anyhow::anyhow!("cannot reach {url}: {other}; check the URL and the network")
                }
            })?;
        if resp.status().as_u16() != 206 && have > 0 {
            out.set_len(0)?;
            have = 0;
        }
        Box::new(resp.into_body().into_reader())
    } else {
        use std::io::Seek;
        let path = local_path(url);
        let mut f = match std::fs::File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FetchError::NotFound {
                    url: path.display().to_string(),
                    why: "no such file".into(),
                }
                .into());
            }
            other => other.with_context(|| format!("cannot open {}", path.display()))?,
        };
        f.seek(std::io::SeekFrom::Start(have))?;
        Box::new(f)
    };
    let bar = crate::util::progress::bytes(size, label);
    bar.set_position(have);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = have;
    loop {
        let n = body.read(&mut buf).with_context(|| {
            format!("the download of {url} was interrupted at byte {total} of {size}; run again to resume it")
        })?;
        if n == 0 {
            break;
        }
        if total + n as u64 > size {
            bail!("{url} is larger than the {size} bytes it should be; refused");
        }
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write {} (disk full?)", partial.display()))?;
        total += n as u64;
        bar.set_position(total);
    }
    bar.finish_and_clear();
    out.sync_all()?;
    if total != size {
        bail!("the download of {url} ended at byte {total} of {size}; run again to resume it");
    }
    Ok(())
}

fn short(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_download_from_a_path() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a.pak");
        std::fs::write(&src, b"hello").unwrap();
        let sha = hex::encode(Sha256::digest(b"hello"));
        let dest = d.path().join("cache/a");
        download_verified(src.to_str().unwrap(), &dest, &sha, 5, "a").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        let bad = d.path().join("cache/b");
        let err = download_verified(
            &format!("file://{}", src.display()),
            &bad,
            &"0".repeat(64),
            5,
            "b",
        )
        .unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert!(!bad.exists());
        assert_eq!(
            std::fs::read_dir(d.path().join("cache")).unwrap().count(),
            1,
            "no temporary left"
        );
        assert!(
            get_optional(d.path().join("nope").to_str().unwrap(), 10)
                .unwrap()
                .is_none()
        );
        assert!(get_bytes(src.to_str().unwrap(), 2).is_err());
        let gone = download_verified(
            d.path().join("gone.pak").to_str().unwrap(),
            &d.path().join("cache/c"),
            &sha,
            5,
            "c",
        )
        .unwrap_err();
        assert!(is_not_found(&gone), "{gone:#}");
        assert!(!is_offline(&gone));
    }

    #[test]
    fn offline_refuses_the_network_only() {
        let err = allowed("https://example.invalid/x.pak", Network::Offline).unwrap_err();
        assert!(err.to_string().contains("--offline"), "{err}");
        assert!(allowed("http://example.invalid/index", Network::Offline).is_err());
        assert!(allowed("file:///srv/repo/index", Network::Offline).is_ok());
        assert!(allowed("/srv/repo/index", Network::Offline).is_ok());
        assert!(allowed("https://example.invalid/x.pak", Network::Online).is_ok());
        assert!(is_offline(
            &anyhow::Error::from(err).context("cannot read the index")
        ));
    }
}
