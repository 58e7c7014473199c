//! Profiles: named building blocks a Pakfile includes (`profiles = ["base"]`).
//!
//! A profile is `profiles/<name>.toml` with `[packages]`, optional
//! `include = [...]`, and optionally the `[services]` and `[files]` that make
//! those packages work (the `ssh` profile's sshd and its configuration):
//! what a Debian maintainer script would have set up, written down once. It is looked up in the `profiles/` directory beside the
//! Pakfile or in one of its parents (so `images/minimal/Pakfile` finds the
//! repository's `profiles/`), then among the profiles built into pak, so a
//! Pakfile made by `pak init` in an empty directory works too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::spec::pakfile::{FileSpec, Service};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    summary: String,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    packages: BTreeMap<String, String>,
    #[serde(default)]
    services: BTreeMap<String, Service>,
    /// Inline content only: a profile has no directory of its own to
    /// resolve a `source` against once it is built into pak.
    #[serde(default)]
    files: BTreeMap<String, FileSpec>,
}

/// What a list of profiles adds to a Pakfile.
#[derive(Debug, Default)]
pub struct Expanded {
    pub packages: BTreeMap<String, String>,
    pub services: BTreeMap<String, Service>,
    pub files: BTreeMap<String, FileSpec>,
}

/// Everything the named profiles (and the profiles they include) add. An
/// earlier profile's entry wins over a later one's.
pub fn expand(names: &[String], pakfile_dir: &Path) -> Result<Expanded> {
    let mut out = Expanded::default();
    let mut stack: Vec<String> = Vec::new();
    for name in names {
        collect(name, pakfile_dir, &mut stack, &mut out)?;
    }
    Ok(out)
}

/// The profiles shipped with pak, from this repository's `profiles/`.
const BUILTIN: &[(&str, &str)] = &[
    ("base", include_str!("../../../profiles/base.toml")),
    ("server", include_str!("../../../profiles/server.toml")),
    ("debug", include_str!("../../../profiles/debug.toml")),
    ("ssh", include_str!("../../../profiles/ssh.toml")),
    ("systemd", include_str!("../../../profiles/systemd.toml")),
];

/// The packages of the named profiles and everything they include. An
/// earlier profile's requirement wins over a later one's.
pub fn packages_of(names: &[String], pakfile_dir: &Path) -> Result<BTreeMap<String, String>> {
    Ok(expand(names, pakfile_dir)?.packages)
}

fn collect(name: &str, dir: &Path, stack: &mut Vec<String>, out: &mut Expanded) -> Result<()> {
    if stack.iter().any(|n| n == name) {
        bail!(
            "profile {name:?} includes itself (through {})",
            stack.join(" → ")
        );
    }
    let (text, origin) = find(name, dir)?;
    let profile: ProfileFile = toml::from_str(&text)
        .with_context(|| format!("profile {name:?} ({origin}) is not valid"))?;
    let _ = profile.summary;
    for (pkg, req) in profile.packages {
        out.packages.entry(pkg).or_insert(req);
    }
    for (svc, spec) in profile.services {
        out.services.entry(svc).or_insert(spec);
    }
    for (path, spec) in profile.files {
        if let FileSpec::Full(e) = &spec
            && e.source.is_some()
        {
            bail!(
                "profile {name:?} ({origin}): [files] {path:?} has a `source`; a profile's files give their `content` inline"
            );
        }
        out.files.entry(path).or_insert(spec);
    }
    stack.push(name.to_string());
    for inc in &profile.include {
        collect(inc, dir, stack, out)?;
    }
    stack.pop();
    Ok(())
}

fn find(name: &str, dir: &Path) -> Result<(String, String)> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!("{name:?} is not a profile name; profiles are named like \"base\"");
    }
    for ancestor in dir.ancestors() {
        let path: PathBuf = ancestor.join("profiles").join(format!("{name}.toml"));
        if path.is_file() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Ok((text, path.display().to_string()));
        }
    }
    if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) {
        return Ok((text.to_string(), "built into pak".into()));
    }
    let known: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
    bail!(
        "no profile named {name:?}: looked for profiles/{name}.toml beside the Pakfile and in its parent directories, and among the built-in profiles ({})",
        known.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse() {
        for (name, text) in BUILTIN {
            toml::from_str::<ProfileFile>(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn local_overrides_builtin_and_includes_nest() {
        let dir = tempfile::tempdir().unwrap();
        let prof = dir.path().join("profiles");
        std::fs::create_dir(&prof).unwrap();
        std::fs::write(
            prof.join("a.toml"),
            "include = [\"b\"]\n[packages]\nx = \">= 1\"\n",
        )
        .unwrap();
        std::fs::write(prof.join("b.toml"), "[packages]\nx = \"*\"\ny = \"*\"\n").unwrap();
        std::fs::write(prof.join("loop.toml"), "include = [\"loop\"]\n").unwrap();
        let sub = dir.path().join("images/one");
        std::fs::create_dir_all(&sub).unwrap();
        let got = packages_of(&["a".into()], &sub).unwrap();
        assert_eq!(got["x"], ">= 1");
        assert_eq!(got["y"], "*");
        let err = packages_of(&["loop".into()], &sub).unwrap_err();
        assert!(err.to_string().contains("includes itself"));
        let err = packages_of(&["nope".into()], &sub).unwrap_err();
        assert!(err.to_string().contains("base"), "{err}");
    }
}
