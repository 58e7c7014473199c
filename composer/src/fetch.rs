//! Getting bytes from a repository: a local path, `file://` or `http(s)://`.
//!
//! Downloads stream into a temporary file beside the destination while
//! hashing, and are renamed into place only when size and sha256 agree with
//! what a signed index (or apt's verified index) promised: a corrupt or
//! hostile download never lands.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Opens a URL or path for reading.
fn open(url: &str) -> Result<(Box<dyn Read>, Option<u64>)> {
    if url.starts_with("http://") || url.starts_with("https://") {
        let resp = ureq::get(url).call().map_err(|e| match e {
            ureq::Error::StatusCode(code) => anyhow::anyhow!("{url} answered HTTP {code}"),
            other => anyhow::anyhow!("cannot reach {url}: {other}; check the URL and the network"),
        })?;
        let len = resp.body().content_length();
        return Ok((Box::new(resp.into_body().into_reader()), len));
    }
    let path = local_path(url);
    let f =
        std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
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
    if (!url.contains("://") || url.starts_with("file://")) && !local_path(url).exists() {
        return Ok(None);
    }
    match get_bytes(url, limit) {
        Err(e) if e.to_string().contains("HTTP 404") => Ok(None),
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
    let mut tmp = tempfile::Builder::new().prefix(".dl-").tempfile_in(dir)?;
    let bar = crate::progress::bytes(len.unwrap_or(size), &format!("fetch {}", short(url)));
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
    }
}
