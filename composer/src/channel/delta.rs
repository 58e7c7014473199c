//! Seeded assembly: a generation file made from the chunks a host already
//! has (its slots, an earlier interrupted run) and the rest fetched with
//! HTTP `Range` requests on the generation file itself.
//!
//! Chunks are fetched from the full `.sqfs` rather than served as files of
//! their own: the channel stays one file per generation (plus its small
//! index) that any web server, CDN or bucket serves, plain downloads keep
//! working, and adjacent missing chunks go out as one request instead of
//! hundreds. Each request is a single range, so the bytes on the wire are
//! the bytes planned (no multipart framing).
//!
//! Every chunk, whether read from a seed, found in the cache or fetched,
//! is checked against its sha256 from the signed index before it is kept;
//! a fetched chunk that is corrupt or short is refused and fetched again,
//! and a seed whose bytes do not match only contributes what does. The
//! caller checks the sha256 of the whole file before it is used.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::chunks::{self, Chunk, ChunkIndex};

/// Adjacent missing chunks are fetched together, up to this many bytes a
/// request: large enough that request overhead vanishes, small enough
/// that the requests spread over the workers.
const RANGE_MAX: u64 = 4 << 20;
/// Requests in flight at once.
const WORKERS: usize = 4;
/// Attempts for one range before the update gives up (it resumes later).
const ATTEMPTS: usize = 3;

/// A region of a device that may hold an older generation: a slot.
#[derive(Debug, Clone)]
pub struct Seed {
    /// What to call it in messages ("slot a").
    pub name: String,
    pub offset: u64,
    pub len: u64,
}

/// Where a generation's bytes came from.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Assembly {
    /// The generation file.
    pub size: u64,
    /// The chunk index, fetched first.
    pub index_bytes: u64,
    /// Already in the cache from an interrupted run.
    pub from_cache: u64,
    /// Read from the slots.
    pub from_seeds: u64,
    /// Planned: the bytes of the chunks no seed held.
    pub to_fetch: u64,
    /// Received over the network (more than planned only when a chunk was
    /// refused and fetched again).
    pub fetched: u64,
    pub requests: u64,
    /// Chunks refused as corrupt or short, then fetched again.
    pub refused: u64,
}

/// Fills `out` (created or resumed) with the file `index` describes:
/// chunks already there are kept, then chunks found in `seeds` on `dev`,
/// then the rest fetched from `url`. `plan` is called once the bytes to
/// fetch are known, before any is fetched.
pub fn assemble<D: Read + Seek>(
    dev: &mut D,
    seeds: &[Seed],
    index: &ChunkIndex,
    url: &str,
    out: &Path,
    plan: impl FnOnce(&Assembly),
) -> Result<Assembly> {
    let mut done = Assembly {
        size: index.size,
        ..Assembly::default()
    };
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let mut have = vec![false; index.chunks.len()];
    let had = file.metadata()?.len();
    if had > 0 {
        let mut r = std::io::BufReader::with_capacity(1 << 20, &file);
        for (i, c) in index.chunks.iter().enumerate() {
            if c.end() > had {
                break;
            }
            if read_chunk(&mut r, c.offset, c).is_some() {
                have[i] = true;
                done.from_cache += u64::from(c.len);
            }
        }
    }

    let mut wanted: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
    for (i, c) in index.chunks.iter().enumerate() {
        if !have[i] {
            wanted.entry(c.sha256).or_default().push(i);
        }
    }
    for seed in seeds {
        if wanted.is_empty() {
            break;
        }
        done.from_seeds += from_seed(dev, seed, index, &mut wanted, &mut have, &file, out)?;
    }

    let missing: Vec<usize> = (0..have.len()).filter(|&i| !have[i]).collect();
    let ranges = coalesce(&index.chunks, &missing);
    done.to_fetch = missing
        .iter()
        .map(|&i| u64::from(index.chunks[i].len))
        .sum();
    plan(&done);
    if !ranges.is_empty() {
        fetch_all(url, &index.chunks, ranges, &file, out, &mut done)?;
    }
    // Grown only by the chunks written, so the file's length says how far
    // an interrupted run got; complete, it is the generation's.
    file.set_len(index.size)
        .with_context(|| format!("cannot write {} (disk full?)", out.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot write {} (disk full?)", out.display()))?;
    Ok(done)
}

/// Reads the chunk `c` at `at` of `r`; `None` when it cannot be read or
/// its bytes do not match.
fn read_chunk<R: Read + Seek>(r: &mut R, at: u64, c: &Chunk) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; c.len as usize];
    r.seek(SeekFrom::Start(at)).ok()?;
    r.read_exact(&mut buf).ok()?;
    (<[u8; 32]>::from(Sha256::digest(&buf)) == c.sha256).then_some(buf)
}

/// Copies every wanted chunk that `seed` holds into `file`; returns the
/// bytes copied. The seed is cut as the publisher cut the generation, so
/// unchanged squashfs blocks are found wherever they moved.
fn from_seed<D: Read + Seek>(
    dev: &mut D,
    seed: &Seed,
    index: &ChunkIndex,
    wanted: &mut HashMap<[u8; 32], Vec<usize>>,
    have: &mut [bool],
    file: &File,
    out: &Path,
) -> Result<u64> {
    let cuts = chunks::cut(dev, seed.offset, seed.len);
    let mut copied = 0u64;
    let mut buf = Vec::new();
    let mut r = std::io::BufReader::with_capacity(1 << 20, &mut *dev);
    r.seek(SeekFrom::Start(seed.offset))
        .with_context(|| format!("cannot read {}", seed.name))?;
    for (_, n) in cuts {
        buf.resize(n as usize, 0);
        if r.read_exact(&mut buf).is_err() {
            // A short device: what was read so far still counts.
            break;
        }
        let h: [u8; 32] = Sha256::digest(&buf).into();
        let Some(targets) = wanted.remove(&h) else {
            continue;
        };
        for i in targets {
            let c = &index.chunks[i];
            file.write_all_at(&buf, c.offset)
                .with_context(|| format!("cannot write {} (disk full?)", out.display()))?;
            have[i] = true;
            copied += u64::from(c.len);
        }
    }
    Ok(copied)
}

/// Runs of adjacent chunks among `missing` (sorted), each at most
/// [`RANGE_MAX`] bytes unless one chunk is larger: (first, last + 1).
fn coalesce(chunks: &[Chunk], missing: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &i in missing {
        if let Some(last) = out.last_mut()
            && last.1 == i
            && chunks[i].end() - chunks[last.0].offset <= RANGE_MAX
        {
            last.1 = i + 1;
            continue;
        }
        out.push((i, i + 1));
    }
    out
}

/// Fetches the chunk runs `ranges` on [`WORKERS`] threads into `file`.
fn fetch_all(
    url: &str,
    chunks: &[Chunk],
    ranges: Vec<(usize, usize)>,
    file: &File,
    out: &Path,
    done: &mut Assembly,
) -> Result<()> {
    let bar = crate::util::progress::bytes(
        done.to_fetch,
        &format!("fetching {} of {}", mib(done.to_fetch), mib(done.size)),
    );
    let queue = Mutex::new(ranges.into_iter().collect::<VecDeque<_>>());
    let stats = Mutex::new((0u64, 0u64, 0u64));
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                loop {
                    let Some((a, b)) = queue.lock().expect("queue").pop_front() else {
                        return;
                    };
                    let run = &chunks[a..b];
                    let r = fetch_run(url, run, file, out, &|n| bar.inc(n));
                    let mut st = stats.lock().expect("stats");
                    st.0 += r.received;
                    st.1 += r.requests;
                    st.2 += r.refused;
                    drop(st);
                    if let Some(e) = r.error {
                        errors.lock().expect("errors").push(e);
                        // Others stop taking work: the run resumes later.
                        queue.lock().expect("queue").clear();
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    let (received, requests, refused) = *stats.lock().expect("stats");
    done.fetched = received;
    done.requests = requests;
    done.refused = refused;
    if let Some(e) = errors.into_inner().expect("errors").into_iter().next() {
        return Err(e);
    }
    Ok(())
}

/// Bytes for people: `12.3 MiB`.
pub fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
}

struct RunResult {
    received: u64,
    requests: u64,
    refused: u64,
    error: Option<anyhow::Error>,
}

/// Fetches one run of adjacent chunks, checking each; a refused chunk
/// is fetched again, alone, up to [`ATTEMPTS`] times.
fn fetch_run(
    url: &str,
    run: &[Chunk],
    file: &File,
    out: &Path,
    progress: &dyn Fn(u64),
) -> RunResult {
    let mut res = RunResult {
        received: 0,
        requests: 0,
        refused: 0,
        error: None,
    };
    let mut todo: Vec<&[Chunk]> = vec![run];
    for attempt in 1..=ATTEMPTS {
        let mut again: Vec<&[Chunk]> = Vec::new();
        for part in todo {
            let from = part[0].offset;
            let to = part[part.len() - 1].end();
            res.requests += 1;
            let bytes = match get_range(url, from, to) {
                Ok(b) => b,
                Err(e) if attempt == ATTEMPTS => {
                    res.error = Some(e);
                    return res;
                }
                Err(_) => {
                    again.push(part);
                    continue;
                }
            };
            res.received += bytes.len() as u64;
            for (k, c) in part.iter().enumerate() {
                let lo = (c.offset - from) as usize;
                let hi = (c.end() - from) as usize;
                let good = bytes
                    .get(lo..hi)
                    .filter(|b| <[u8; 32]>::from(Sha256::digest(b)) == c.sha256);
                match good {
                    Some(b) => {
                        if let Err(e) = file.write_all_at(b, c.offset) {
                            res.error =
                                Some(anyhow::Error::new(e).context(format!(
                                    "cannot write {} (disk full?)",
                                    out.display()
                                )));
                            return res;
                        }
                        progress(u64::from(c.len));
                    }
                    None => {
                        res.refused += 1;
                        again.push(&part[k..=k]);
                    }
                }
            }
        }
        if again.is_empty() {
            return res;
        }
        todo = again;
    }
    let c = todo_first(run, file);
    res.error = Some(anyhow::anyhow!(
        "{url}: the chunk at bytes {}..{} does not match the signed chunk index after {ATTEMPTS} attempts (corrupt or short on the server); nothing was written to the disk's slots; run again to resume once the server is fixed (the chunks already checked are kept)",
        c.offset,
        c.end()
    ));
    res
}

/// The first chunk of `run` not yet in `file` as it should be.
fn todo_first<'a>(run: &'a [Chunk], file: &File) -> &'a Chunk {
    run.iter()
        .find(|c| {
            let mut buf = vec![0u8; c.len as usize];
            file.read_exact_at(&mut buf, c.offset).is_err()
                || <[u8; 32]>::from(Sha256::digest(&buf)) != c.sha256
        })
        .unwrap_or(&run[0])
}

/// Bytes `from..to` of `url`: one HTTP `Range` request (the answer must
/// be exactly that range), or a read of a local file.
fn get_range(url: &str, from: u64, to: u64) -> Result<Vec<u8>> {
    use crate::sources::fetch::{Network, is_remote, network};
    let want = (to - from) as usize;
    if !is_remote(url) {
        let path = url.strip_prefix("file://").unwrap_or(url);
        let f = File::open(path).with_context(|| format!("cannot open {path}"))?;
        let mut buf = vec![0u8; want];
        let n = f.read_at(&mut buf, from)?;
        buf.truncate(n);
        return Ok(buf);
    }
    if network() == Network::Offline {
        bail!("{url}: the network is off (--offline); an update needs it");
    }
    let resp = ureq::get(url)
        .header("Range", format!("bytes={from}-{}", to - 1))
        .call()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot fetch bytes {from}..{to} of {url}: {e}; run again to resume (the chunks already fetched are kept)"
            )
        })?;
    if resp.status().as_u16() != 206 {
        bail!(
            "{url} answered HTTP {} to a Range request: the server must serve byte ranges (any static web server does)",
            resp.status().as_u16()
        );
    }
    let mut buf = Vec::with_capacity(want);
    resp.into_body()
        .into_reader()
        .take(want as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| {
            format!(
                "the download of bytes {from}..{to} of {url} was interrupted; run again to resume (the chunks already fetched are kept)"
            )
        })?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_of(data: &[u8]) -> ChunkIndex {
        ChunkIndex::of(&mut std::io::Cursor::new(data), 0, data.len() as u64).unwrap()
    }

    #[test]
    fn seeds_and_cache_supply_what_they_hold_and_the_rest_is_fetched() {
        let d = tempfile::tempdir().unwrap();
        // Fixed 64 KiB pieces: 5 chunks, the last short.
        let new: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let served = d.path().join("gen.sqfs");
        std::fs::write(&served, &new).unwrap();
        let index = index_of(&new);
        // The disk: a seed holding chunks 0 and 2 at their places, 1 corrupt.
        let mut disk = vec![0u8; 1 << 20];
        disk[4096..4096 + 200_000].copy_from_slice(&new[..200_000]);
        disk[4096 + 70_000] ^= 1;
        let seed = Seed {
            name: "slot a".into(),
            offset: 4096,
            len: 200_000,
        };
        let out = d.path().join("out");
        let mut planned = None;
        let a = assemble(
            &mut std::io::Cursor::new(&disk),
            &[seed],
            &index,
            served.to_str().unwrap(),
            &out,
            |p| planned = Some(p.to_fetch),
        )
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), new);
        assert_eq!(a.from_seeds, 2 * chunks::TAIL_PIECE);
        assert_eq!(a.to_fetch, 300_000 - 2 * chunks::TAIL_PIECE);
        assert_eq!(planned, Some(a.to_fetch));
        assert_eq!(a.fetched, a.to_fetch);
        assert_eq!(a.requests, 2, "chunk 1, then chunks 3 and 4 together");

        // Again: everything is in the cache already.
        let b = assemble(
            &mut std::io::Cursor::new(Vec::new()),
            &[],
            &index,
            served.to_str().unwrap(),
            &out,
            |_| {},
        )
        .unwrap();
        assert_eq!((b.from_cache, b.fetched), (300_000, 0));
    }

    #[test]
    fn a_corrupt_served_chunk_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let new: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
        let index = index_of(&new);
        let mut bad = new.clone();
        bad[80_000] ^= 0xFF;
        let served = d.path().join("gen.sqfs");
        std::fs::write(&served, &bad).unwrap();
        let out = d.path().join("out");
        let e = assemble(
            &mut std::io::Cursor::new(Vec::new()),
            &[],
            &index,
            served.to_str().unwrap(),
            &out,
            |_| {},
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("bytes 65536..100000"), "{e:#}");
        // The good first chunk is kept; a fixed server completes the file.
        std::fs::write(&served, &new).unwrap();
        let a = assemble(
            &mut std::io::Cursor::new(Vec::new()),
            &[],
            &index,
            served.to_str().unwrap(),
            &out,
            |_| {},
        )
        .unwrap();
        assert_eq!(a.from_cache, 65_536);
        assert_eq!(std::fs::read(&out).unwrap(), new);

        // A short file: what it has is kept, the rest named and refused.
        let out = d.path().join("short");
        std::fs::write(&served, &new[..70_000]).unwrap();
        let e = assemble(
            &mut std::io::Cursor::new(Vec::new()),
            &[],
            &index,
            served.to_str().unwrap(),
            &out,
            |_| {},
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("bytes 65536..100000"), "{e:#}");
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 65_536);
    }
}
