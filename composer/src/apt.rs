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
//! Parsing 60,000 stanzas takes a noticeable fraction of a second, so the
//! parsed candidates are cached under the pak root, keyed by the list files'
//! names, sizes and modification times; a changed list invalidates it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::candidate::Candidate;
use crate::pakinfo::PakInfo;
use crate::root::Root;

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
}

fn parse_deb822_sources(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for st in crate::debian::parse_stanzas(text) {
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

fn read_list(path: &Path) -> Result<String> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut text = String::new();
    let res = match ext {
        "lz4" => lz4_flex::frame::FrameDecoder::new(&raw[..]).read_to_string(&mut text),
        "gz" => flate2::read::GzDecoder::new(&raw[..]).read_to_string(&mut text),
        "xz" => xz2::read::XzDecoder::new(&raw[..]).read_to_string(&mut text),
        "zst" => zstd::Decoder::new(&raw[..])?.read_to_string(&mut text),
        _ => {
            text = String::from_utf8(raw).map_err(|_| std::io::Error::other("not UTF-8"))?;
            Ok(0)
        }
    };
    res.with_context(|| format!("{} is corrupt; run `apt-get update`", path.display()))?;
    Ok(text)
}

/// Parses one `Packages` index into candidates. Only the fields pak uses
/// are looked at; the mapping to pak metadata is `debian`'s, shared with
/// `.deb` import.
pub fn parse_packages(text: &str, repo: &str, suite: &str) -> Vec<Candidate> {
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
        let Some(info) = crate::debian::fields_to_pakinfo(|k| f.get(k).copied()) else {
            continue;
        };
        out.push(Candidate {
            info,
            repo: repo.to_string(),
            location: format!("{suite}/{file}"),
            sha256: sha.to_string(),
            size: f.get("Size").and_then(|s| s.parse().ok()).unwrap_or(0),
        });
    }
    out
}

/// All candidates the host's apt knows, in source order (so that, for the
/// same name and version, the first source wins).
pub fn load(repo: &str, root: &Root) -> Result<Vec<Candidate>> {
    load_from(&AptHost::system(), repo, root)
}

pub fn load_from(host: &AptHost, repo: &str, root: &Root) -> Result<Vec<Candidate>> {
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
    for s in &sources {
        for arch in ARCHES {
            if let Some(p) = host.list_file(s, arch) {
                lists.push((s.clone(), p));
            }
        }
    }
    if lists.is_empty() {
        bail!(
            "repository {repo:?} (kind apt): apt has no package lists in {} for its sources; run `apt-get update` first",
            host.lists.display()
        );
    }
    let key = cache_key(repo, &lists)?;
    let cache = root.cache_dir().join("apt").join(format!("{key}.bin"));
    if let Ok(bytes) = std::fs::read(&cache)
        && let Some(c) = decode_chunks(&bytes)
    {
        return Ok(c);
    }
    let mut out = Vec::new();
    for (s, p) in &lists {
        out.extend(parse_packages(&read_list(p)?, repo, &s.suite));
    }
    // A cache that cannot be written only costs time next run.
    if std::fs::create_dir_all(cache.parent().expect("has parent")).is_ok() {
        let _ = crate::fsutil::write_atomic(&cache, &encode_chunks(&out));
    }
    Ok(out)
}

fn cache_key(repo: &str, lists: &[(Source, PathBuf)]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"pak-apt-cache-3\0");
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
        let (name, version, arch, summary, repo, location, sha256) = (
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
        });
    }
    (pos == b.len()).then_some(out)
}

/// The URL of a candidate's `.deb` on this host's mirror for its suite.
pub fn url_for(host: &AptHost, location: &str) -> Result<String> {
    let (suite, file) = location
        .split_once('/')
        .with_context(|| format!("{location:?} is not an apt location (SUITE/pool/...)"))?;
    let sources = host.sources()?;
    let src = sources.iter().find(|s| s.suite == suite).with_context(|| {
        format!("no source in this host's apt configuration serves the suite {suite:?} needed for {file}; add it to apt's sources, or run `pak update`")
    })?;
    Ok(format!("{}/{file}", src.uri.trim_end_matches('/')))
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
    crate::fetch::download_verified(&url, dest, sha256, size, location)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = parse_packages(text, "debian", "bookworm");
        assert_eq!(c.len(), 1);
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
        assert!(
            url_for(&host, "trixie/pool/x.deb")
                .unwrap_err()
                .to_string()
                .contains("trixie")
        );
        let root = crate::root::Root::new(dir.path().join("root"));
        assert!(
            load_from(&host, "debian", &root)
                .unwrap_err()
                .to_string()
                .contains("apt-get update")
        );
    }
}
