//! The `apt` repository kind: Debian's archive through the host's apt.
//!
//! Sources come from the host's apt configuration (deb822 `*.sources` and
//! one-line `*.list` files); package lists are the `Packages` indexes apt
//! has already downloaded and verified against the archive's signed
//! `InRelease` (`apt-get update` refreshes them). pak adds no trust of its
//! own here: it relies on apt's verification of the indexes, and checks
//! every downloaded `.deb` against the sha256 the index gives.
//!
//! A candidate's location is `SUITE/Filename` (`bookworm/pool/main/...`):
//! locks name no mirror, and the building host's own mirror for that suite
//! is used to fetch.
//!
//! Mirrors keep only current versions; Debian's security archive drops a
//! superseded version within days. So a candidate also records when the
//! archive listed it: the `Date:` of the suite's `InRelease`/`Release` file
//! apt holds, as a snapshot timestamp (`20240610T091320Z`). A repository
//! with a `snapshot` base fetches a version the mirror dropped from
//! `<snapshot>/<archive>/<timestamp>/pool/...`, the layout of Debian's
//! snapshot archive, `<archive>` being the last path component of the
//! source's URI (`debian`, `debian-security`).
//!
//! Parsing 60,000 stanzas takes a noticeable fraction of a second, so the
//! parsed candidates are cached under the pak root, keyed by the list files'
//! names, sizes and modification times; a changed list invalidates it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::packages::candidate::Candidate;
use crate::packages::pakinfo::PakInfo;
use crate::state::StateDir;

const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
const SOURCES_LIST: &str = "/etc/apt/sources.list";
const LISTS_DIR: &str = "/var/lib/apt/lists";
const ARCHES: &[&str] = &["amd64", "all"];

/// One `deb URI SUITE COMPONENT` line of the host's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub suite: String,
    pub component: String,
}

/// Where apt looks: overridable so tests and other hosts can point
/// elsewhere (`PAK_APT_ROOT` prefixes both directories).
#[derive(Debug, Clone)]
pub struct AptHost {
    pub sources: Vec<PathBuf>,
    pub lists: PathBuf,
}

impl AptHost {
    pub fn system() -> AptHost {
        let prefix = std::env::var_os("PAK_APT_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        let rel = |p: &str| prefix.join(p.trim_start_matches('/'));
        let mut sources = vec![rel(SOURCES_LIST)];
        if let Ok(rd) = std::fs::read_dir(rel(SOURCES_DIR)) {
            let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            sources.extend(files);
        }
        AptHost {
            sources,
            lists: rel(LISTS_DIR),
        }
    }

    /// Every binary source, in configuration order.
    pub fn sources(&self) -> Result<Vec<Source>> {
        let mut out = Vec::new();
        for file in &self.sources {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            if name.ends_with(".sources") {
                out.extend(parse_deb822_sources(&text));
            } else if name.ends_with(".list") {
                out.extend(parse_one_line_sources(&text));
            }
        }
        Ok(out)
    }

    /// The `Packages` index apt holds for a source, if any.
    fn list_file(&self, s: &Source, arch: &str) -> Option<PathBuf> {
        let base = list_file_name(&format!(
            "{}/dists/{}/{}/binary-{arch}/Packages",
            s.uri.trim_end_matches('/'),
            s.suite,
            s.component
        ));
        ["", ".lz4", ".gz", ".xz", ".zst"]
            .iter()
            .map(|ext| self.lists.join(format!("{base}{ext}")))
            .find(|p| p.is_file())
    }

    /// The suite's `InRelease` (or `Release`) file apt holds, if any.
    fn release_file(&self, s: &Source) -> Option<PathBuf> {
        ["InRelease", "Release"]
            .iter()
            .map(|f| {
                self.lists.join(list_file_name(&format!(
                    "{}/dists/{}/{f}",
                    s.uri.trim_end_matches('/'),
                    s.suite
                )))
            })
            .find(|p| p.is_file())
    }

    /// The source of this host that serves the suite of `location`
    /// (`SUITE/pool/...`), and the path below the archive root.
    fn source_for<'a>(&self, location: &'a str) -> Result<(Source, &'a str)> {
        let (suite, file) = location
            .split_once('/')
            .with_context(|| format!("{location:?} is not an apt location (SUITE/pool/...)"))?;
        let src = self.sources()?.into_iter().find(|s| s.suite == suite).with_context(|| {
            format!("no source in this host's apt configuration serves the suite {suite:?} needed for {file}; add it to apt's sources, or run `pak update`")
        })?;
        Ok((src, file))
    }
}

/// The `Date:` of a Release file as a snapshot timestamp; `Ok(None)` when
/// it has none.
fn release_date(path: &Path) -> Result<Option<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let Some(date) = text
        .lines()
        .take_while(|l| !l.starts_with("-----BEGIN PGP SIGNATURE"))
        .find_map(|l| l.strip_prefix("Date:"))
    else {
        return Ok(None);
    };
    snapshot_timestamp(date.trim()).map(Some).with_context(|| {
        format!(
            "{}: its Date {:?} is not a date such as \"Sat, 10 Jun 2023 09:13:20 UTC\"; run `apt-get update`",
            path.display(),
            date.trim()
        )
    })
}

/// An RFC 2822 date as Release files write it (`Sat, 10 Jun 2023 09:13:20
/// UTC`) as a snapshot timestamp (`20230610T091320Z`), in UTC.
pub fn snapshot_timestamp(date: &str) -> Result<String> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let mut w: Vec<&str> = date.split_whitespace().collect();
    if w.first().is_some_and(|d| d.ends_with(',')) {
        w.remove(0);
    }
    let [day, month, year, time, zone] = w[..] else {
        bail!("expected DAY MONTH YEAR HH:MM:SS ZONE");
    };
    let num = |s: &str, max: i64| -> Result<i64> {
        s.parse::<i64>()
            .ok()
            .filter(|v| (0..=max).contains(v))
            .with_context(|| format!("{s:?} is out of range"))
    };
    let day = num(day, 31)?;
    let month = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(month))
        .with_context(|| format!("{month:?} is not a month"))? as i64
        + 1;
    let year = num(year, 9999)?;
    let hms: Vec<&str> = time.split(':').collect();
    let [h, m, sec] = hms[..] else {
        bail!("{time:?} is not HH:MM:SS");
    };
    let (h, m, sec) = (num(h, 23)?, num(m, 59)?, num(sec, 60)?);
    let offset = match zone {
        "UTC" | "GMT" | "UT" | "Z" => 0,
        z if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let v = num(&z[1..3], 23)? * 3600 + num(&z[3..5], 59)? * 60;
            if z.starts_with('-') { -v } else { v }
        }
        z => bail!("time zone {z:?} is not understood"),
    };
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + m * 60 + sec - offset)
        .context("the date is before 1970")?;
    // `YYYY-MM-DD HH:MM:SS UTC` → `YYYYMMDDTHHMMSSZ`.
    let utc = crate::util::timefmt::utc(secs).replace(['-', ':'], "");
    let (d, t) = utc
        .trim_end_matches(" UTC")
        .split_once(' ')
        .expect("timefmt::utc has a space");
    Ok(format!("{d}T{t}Z"))
}

fn parse_deb822_sources(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for st in crate::packages::debian::parse_stanzas(text) {
        if st
            .get("Enabled")
            .is_some_and(|v| v.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        if !st
            .get("Types")
            .unwrap_or("")
            .split_whitespace()
            .any(|t| t == "deb")
        {
            continue;
        }
        let uris: Vec<&str> = st.get("URIs").unwrap_or("").split_whitespace().collect();
        let suites: Vec<&str> = st.get("Suites").unwrap_or("").split_whitespace().collect();
        let comps: Vec<&str> = st
            .get("Components")
            .unwrap_or("")
            .split_whitespace()
            .collect();
        for u in &uris {
            for s in &suites {
                for c in &comps {
                    out.push(Source {
                        uri: u.to_string(),
                        suite: s.to_string(),
                        component: c.to_string(),
                    });
                }
            }
        }
    }
    out
}

fn parse_one_line_sources(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            while !rest.is_empty() {
                let w = rest.remove(0);
                if w.ends_with(']') {
                    break;
                }
            }
        }
        if rest.len() < 3 {
            continue;
        }
        for c in &rest[2..] {
            out.push(Source {
                uri: rest[0].into(),
                suite: rest[1].into(),
                component: c.to_string(),
            });
        }
    }
    out
}

/// apt's `URItoFileName`: the scheme dropped, `_` escaped, `/` turned to `_`.
fn list_file_name(uri: &str) -> String {
    let no_scheme = uri.split_once("://").map(|(_, r)| r).unwrap_or(uri);
    let mut out = String::new();
    for ch in no_scheme.chars() {
        match ch {
            '_' => out.push_str("%5f"),
            '/' => out.push('_'),
            c => out.push(c),
        }
    }
    out
}

/// The most a `Packages` list may hold once decompressed. Debian's
/// largest (bookworm main, amd64) is about 90 MiB; a list many times that
/// is damage or a decompression bomb, refused before it is held in memory.
const LIST_LIMIT: u64 = 512 << 20;

fn read_list(path: &Path) -> Result<String> {
    read_list_within(path, LIST_LIMIT)
}

fn read_list_within(path: &Path, limit: u64) -> Result<String> {
    let too_large = || {
        anyhow::anyhow!(
            "{} holds more than {} MiB once decompressed, more than any Debian package list: it is damaged or not a list; run `apt-get update`",
            path.display(),
            limit >> 20
        )
    };
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    if file.metadata()?.len() > limit {
        return Err(too_large());
    }
    let raw = std::io::BufReader::new(file);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let decoder: Box<dyn Read> = match ext {
        "lz4" => Box::new(lz4_flex::frame::FrameDecoder::new(raw)),
        "gz" => Box::new(flate2::read::GzDecoder::new(raw)),
        "xz" => Box::new(liblzma::read::XzDecoder::new(raw)),
        "zst" => Box::new(zstd::Decoder::new(raw)?),
        _ => Box::new(raw),
    };
    // One byte past the limit tells a list at the limit from a larger one.
    let mut bytes = Vec::new();
    decoder
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{} is corrupt; run `apt-get update`", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!(
            "{} is corrupt (not UTF-8); run `apt-get update`",
            path.display()
        )
    })
}

/// Parses one `Packages` index into candidates. Only the fields pak uses
/// are looked at; the mapping to pak metadata is `debian`'s, shared with
/// `.deb` import.
pub fn parse_packages(
    text: &str,
    repo: &str,
    suite: &str,
    archive_date: Option<&str>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut f: BTreeMap<&str, &str> = BTreeMap::new();
        for line in block.lines() {
            if line.starts_with(' ') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k {
                    "Package" | "Version" | "Architecture" | "Depends" | "Pre-Depends"
                    | "Provides" | "Conflicts" | "Breaks" | "Filename" | "Size" | "SHA256"
                    | "Description" => {
                        f.insert(k, v.trim());
                    }
                    _ => {}
                }
            }
        }
        let (Some(file), Some(sha)) = (f.get("Filename"), f.get("SHA256")) else {
            continue;
        };
        // The index copy carries no origin: 60,000 of these are loaded, and
        // the .deb's own metadata records it once imported.
        let Some(info) = crate::packages::debian::fields_to_pakinfo(|k| f.get(k).copied()) else {
            continue;
        };
        out.push(Candidate {
            info,
            repo: repo.to_string(),
            location: format!("{suite}/{file}"),
            sha256: sha.to_string(),
            size: f.get("Size").and_then(|s| s.parse().ok()).unwrap_or(0),
            archive_date: archive_date.map(str::to_string),
        });
    }
    out
}

/// All candidates the host's apt knows, in source order (so that, for the
/// same name and version, the first source wins).
pub fn load(repo: &str, root: &StateDir) -> Result<Vec<Candidate>> {
    load_from(&AptHost::system(), repo, root)
}

pub fn load_from(host: &AptHost, repo: &str, root: &StateDir) -> Result<Vec<Candidate>> {
    let sources = host.sources()?;
    if sources.is_empty() {
        bail!(
            "repository {repo:?} (kind apt) found no Debian sources in this host's apt configuration ({}); configure apt or remove the repository",
            host.sources
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut lists = Vec::new();
    let mut releases = Vec::new();
    for s in &sources {
        for arch in ARCHES {
            if let Some(p) = host.list_file(s, arch) {
                lists.push((s.clone(), p));
            }
        }
        if let Some(r) = host.release_file(s) {
            releases.push((s.clone(), r));
        }
    }
    if lists.is_empty() {
        bail!(
            "repository {repo:?} (kind apt): apt has no package lists in {} for its sources; run `apt-get update` first",
            host.lists.display()
        );
    }
    // A new Release (a new Date) with unchanged package lists happens at
    // every archive run: it must refresh the cached dates too.
    let key = cache_key(repo, lists.iter().chain(&releases))?;
    let cache = root.cache_dir().join("apt").join(format!("{key}.bin"));
    if let Ok(bytes) = std::fs::read(&cache)
        && let Some(c) = decode_chunks(&bytes)
    {
        return Ok(c);
    }
    let mut dates = BTreeMap::new();
    for (s, r) in &releases {
        dates.insert((&s.uri, &s.suite), release_date(r)?);
    }
    let mut out = Vec::new();
    for (s, p) in &lists {
        let date = dates.get(&(&s.uri, &s.suite)).cloned().flatten();
        out.extend(parse_packages(
            &read_list(p)?,
            repo,
            &s.suite,
            date.as_deref(),
        ));
    }
    // A cache that cannot be written only costs time next run.
    if std::fs::create_dir_all(cache.parent().expect("has parent")).is_ok() {
        let _ = crate::util::fsutil::write_atomic(&cache, &encode_chunks(&out));
    }
    Ok(out)
}

fn cache_key<'a>(repo: &str, lists: impl Iterator<Item = &'a (Source, PathBuf)>) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"pak-apt-cache-4\0");
    h.update(repo.as_bytes());
    for (s, p) in lists {
        let md = std::fs::metadata(p)?;
        let mtime = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        h.update(format!(
            "{}\0{}\0{}\0{}\0{}\0",
            s.suite,
            p.display(),
            md.len(),
            mtime.as_secs(),
            mtime.subsec_nanos()
        ));
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

const CHUNKS: usize = 16;

/// The cache is cut in chunks that decode in parallel: decoding is one
/// allocation per string, and 60,000 candidates are a million strings.
fn encode_chunks(cands: &[Candidate]) -> Vec<u8> {
    let per = cands.len().div_ceil(CHUNKS).max(1);
    let parts: Vec<Vec<u8>> = cands.chunks(per).map(encode).collect();
    let mut out = Vec::new();
    out.extend((parts.len() as u32).to_le_bytes());
    for p in &parts {
        out.extend((p.len() as u64).to_le_bytes());
    }
    for p in parts {
        out.extend(p);
    }
    out
}

fn decode_chunks(b: &[u8]) -> Option<Vec<Candidate>> {
    use rayon::prelude::*;
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let mut pos = 4 + 8 * n;
    let mut slices = Vec::with_capacity(n);
    for k in 0..n {
        let len = u64::from_le_bytes(b.get(4 + 8 * k..12 + 8 * k)?.try_into().ok()?) as usize;
        slices.push(b.get(pos..pos + len)?);
        pos += len;
    }
    if pos != b.len() {
        return None;
    }
    let parts: Option<Vec<Vec<Candidate>>> = slices.par_iter().map(|s| decode(s)).collect();
    Some(parts?.into_iter().flatten().collect())
}

// A plain length-prefixed encoding: decoding 60k candidates must be fast,
// and the format only ever meets the pak that wrote it (the key has a version).
fn encode(cands: &[Candidate]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cands.len() * 256);
    let s = |out: &mut Vec<u8>, v: &str| {
        out.extend((v.len() as u32).to_le_bytes());
        out.extend(v.as_bytes());
    };
    let l = |out: &mut Vec<u8>, v: &[String]| {
        out.extend((v.len() as u32).to_le_bytes());
        for x in v {
            s(out, x);
        }
    };
    out.extend((cands.len() as u32).to_le_bytes());
    for c in cands {
        for v in [
            &c.info.name,
            &c.info.version,
            &c.info.arch,
            &c.info.summary,
            &c.repo,
            &c.location,
            &c.sha256,
            c.archive_date.as_deref().unwrap_or_default(),
        ] {
            s(&mut out, v);
        }
        out.extend(c.size.to_le_bytes());
        l(&mut out, &c.info.requires);
        l(&mut out, &c.info.provides);
        l(&mut out, &c.info.conflicts);
    }
    out
}

fn decode(b: &[u8]) -> Option<Vec<Candidate>> {
    let mut pos = 0usize;
    let u32_at = |pos: &mut usize| -> Option<u32> {
        let v = u32::from_le_bytes(b.get(*pos..*pos + 4)?.try_into().ok()?);
        *pos += 4;
        Some(v)
    };
    let str_at = |pos: &mut usize| -> Option<String> {
        let n = u32_at(pos)? as usize;
        let v = std::str::from_utf8(b.get(*pos..*pos + n)?)
            .ok()?
            .to_string();
        *pos += n;
        Some(v)
    };
    let list_at = |pos: &mut usize| -> Option<Vec<String>> {
        (0..u32_at(pos)?).map(|_| str_at(pos)).collect()
    };
    let n = u32_at(&mut pos)?;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let (name, version, arch, summary, repo, location, sha256, date) = (
            str_at(&mut pos)?,
            str_at(&mut pos)?,
            str_at(&mut pos)?,
            str_at(&mut pos)?,
            str_at(&mut pos)?,
            str_at(&mut pos)?,
            str_at(&mut pos)?,
            str_at(&mut pos)?,
        );
        let size = u64::from_le_bytes(b.get(pos..pos + 8)?.try_into().ok()?);
        pos += 8;
        let (requires, provides, conflicts) =
            (list_at(&mut pos)?, list_at(&mut pos)?, list_at(&mut pos)?);
        out.push(Candidate {
            info: PakInfo {
                name,
                version,
                arch,
                summary,
                license: String::new(),
                requires,
                provides,
                conflicts,
                special_files: Vec::new(),
                origin: None,
            },
            repo,
            location,
            sha256,
            size,
            archive_date: (!date.is_empty()).then_some(date),
        });
    }
    (pos == b.len()).then_some(out)
}

/// The URL of a candidate's `.deb` on this host's mirror for its suite.
pub fn url_for(host: &AptHost, location: &str) -> Result<String> {
    let (src, file) = host.source_for(location)?;
    Ok(format!("{}/{file}", src.uri.trim_end_matches('/')))
}

/// The URL of a candidate's `.deb` in an archive snapshot taken at `date`
/// (`<snapshot>/<archive>/<date>/pool/...`).
pub fn snapshot_url(host: &AptHost, snapshot: &str, location: &str, date: &str) -> Result<String> {
    let (src, file) = host.source_for(location)?;
    let path = src
        .uri
        .split_once("://")
        .map_or(src.uri.as_str(), |(_, rest)| rest)
        .trim_end_matches('/');
    let archive = path
        .split_once('/')
        .and_then(|(_, p)| p.rsplit('/').next())
        .filter(|a| !a.is_empty())
        .with_context(|| {
            format!(
                "the apt source {} has no path, so there is no archive name (such as debian) to look for in the snapshot {snapshot}",
                src.uri
            )
        })?;
    Ok(crate::sources::fetch::join(
        snapshot,
        &format!("{archive}/{date}/{file}"),
    ))
}

/// Downloads a `.deb`, checking size and sha256, to `dest` (atomically).
pub fn download(
    host: &AptHost,
    location: &str,
    sha256: &str,
    size: u64,
    dest: &Path,
) -> Result<()> {
    let url = url_for(host, location)?;
    crate::sources::fetch::download_verified(&url, dest, sha256, size, location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_that_decompresses_past_the_limit_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x_Packages.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // 64 MiB of zeros: a few hundred KiB compressed.
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            std::io::Write::write_all(&mut gz, &zeros).unwrap();
        }
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let err = read_list_within(&path, 8 << 20).unwrap_err().to_string();
        assert!(err.contains("more than 8 MiB once decompressed"), "{err}");
        let ok = dir.path().join("y_Packages");
        std::fs::write(&ok, "Package: a\nVersion: 1\n").unwrap();
        assert_eq!(
            read_list_within(&ok, 8 << 20).unwrap(),
            "Package: a\nVersion: 1\n"
        );
    }

    #[test]
    fn sources_both_syntaxes() {
        let s = parse_deb822_sources(
            "Types: deb deb-src\nURIs: http://m/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nEnabled: no\nURIs: http://x\nSuites: a\nComponents: b\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].suite, "bookworm-updates");
        let s = parse_one_line_sources(
            "deb [arch=amd64 signed-by=/k] http://m/d bookworm main contrib # c\ndeb-src http://m bookworm main\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].uri, "http://m/d");
        assert_eq!(
            list_file_name("http://deb.example/debian/dists/bookworm/main/binary-amd64/Packages"),
            "deb.example_debian_dists_bookworm_main_binary-amd64_Packages"
        );
        assert_eq!(
            list_file_name("https://h/node_20.x/dists"),
            "h_node%5f20.x_dists"
        );
    }

    #[test]
    fn packages_and_cache_roundtrip() {
        let text = "Package: nginx\nVersion: 1.22.1-9\nArchitecture: amd64\nDepends: libc6 (>= 2.34), nginx-common (= 1.22.1-9)\nBreaks: x (<< 1)\nProvides: httpd\nDescription: small\nFilename: pool/main/n/nginx/nginx_1.22.1-9_amd64.deb\nSize: 10\nSHA256: abc\n\nPackage: broken\n";
        let c = parse_packages(text, "debian", "bookworm", Some("20230610T091320Z"));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].archive_date.as_deref(), Some("20230610T091320Z"));
        assert_eq!(
            c[0].location,
            "bookworm/pool/main/n/nginx/nginx_1.22.1-9_amd64.deb"
        );
        assert_eq!(
            c[0].info.requires,
            vec!["libc6 >= 2.34", "nginx-common = 1.22.1-9"]
        );
        assert_eq!(c[0].info.conflicts, vec!["x < 1"]);
        assert_eq!(decode(&encode(&c)).unwrap(), c);
        assert!(decode(&encode(&c)[..10]).is_none());
        let undated = parse_packages(text, "debian", "bookworm", None);
        assert_eq!(decode(&encode(&undated)).unwrap(), undated);
        let many: Vec<Candidate> = (0..40).map(|_| c[0].clone()).collect();
        assert_eq!(decode_chunks(&encode_chunks(&many)).unwrap(), many);
        assert!(decode_chunks(&encode_chunks(&many)[..100]).is_none());
    }

    #[test]
    fn location_maps_to_the_hosts_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("debian.sources");
        std::fs::write(
            &f,
            "Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm\nComponents: main\n",
        )
        .unwrap();
        let host = AptHost {
            sources: vec![f],
            lists: dir.path().to_path_buf(),
        };
        assert_eq!(
            url_for(&host, "bookworm/pool/x.deb").unwrap(),
            "http://mirror.test/debian/pool/x.deb"
        );
        assert_eq!(
            snapshot_url(
                &host,
                "http://snap.test/archive/",
                "bookworm/pool/x.deb",
                "20230610T091320Z"
            )
            .unwrap(),
            "http://snap.test/archive/debian/20230610T091320Z/pool/x.deb"
        );
        assert!(
            url_for(&host, "trixie/pool/x.deb")
                .unwrap_err()
                .to_string()
                .contains("trixie")
        );
        let root = crate::state::StateDir::new(dir.path().join("root"));
        assert!(
            load_from(&host, "debian", &root)
                .unwrap_err()
                .to_string()
                .contains("apt-get update")
        );
    }

    #[test]
    fn release_dates_become_snapshot_timestamps() {
        assert_eq!(
            snapshot_timestamp("Sat, 10 Jun 2023 09:13:20 UTC").unwrap(),
            "20230610T091320Z"
        );
        assert_eq!(
            snapshot_timestamp("Thu, 29 Feb 2024 23:30:00 -0100").unwrap(),
            "20240301T003000Z"
        );
        assert_eq!(
            snapshot_timestamp("1 Jan 2000 00:00:00 +0200").unwrap(),
            "19991231T220000Z"
        );
        for bad in [
            "",
            "Sat, 10 Jun 2023",
            "Sat, 10 Jux 2023 09:13:20 UTC",
            "Sat, 10 Jun 2023 25:13:20 UTC",
            "Sat, 10 Jun 2023 09:13:20 CEST",
        ] {
            assert!(snapshot_timestamp(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("InRelease");
        std::fs::write(
            &f,
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nDate: Sat, 10 Jun 2023 09:13:20 UTC\nSHA256:\n abc 1 main/x\n-----BEGIN PGP SIGNATURE-----\nDate: x\n",
        )
        .unwrap();
        assert_eq!(
            release_date(&f).unwrap().as_deref(),
            Some("20230610T091320Z")
        );
        std::fs::write(&f, "Origin: Debian\n").unwrap();
        assert_eq!(release_date(&f).unwrap(), None);
        std::fs::write(&f, "Date: yesterday\n").unwrap();
        assert!(format!("{:#}", release_date(&f).unwrap_err()).contains("apt-get update"));
    }
}
