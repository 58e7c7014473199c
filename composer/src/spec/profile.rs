//! Profiles: named package groups a Pakfile includes (`profiles = ["base"]`).
//!
//! A profile is `profiles/<name>.toml` with `[packages]` and optional
//! `include = [...]`. It is looked up in the `profiles/` directory beside the
//! Pakfile or in one of its parents (so `images/minimal/Pakfile` finds the
//! repository's `profiles/`), then among the profiles built into pak, so a
//! Pakfile made by `pak init` in an empty directory works too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    summary: String,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    packages: BTreeMap<String, String>,
}

/// The profiles shipped with pak, from this repository's `profiles/`.
const BUILTIN: &[(&str, &str)] = &[
    ("base", include_str!("../../../profiles/base.toml")),
    ("server", include_str!("../../../profiles/server.toml")),
    ("debug", include_str!("../../../profiles/debug.toml")),
];

/// The packages of the named profiles and everything they include. An
/// earlier profile's requirement wins over a later one's.
pub fn packages_of(names: &[String], pakfile_dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<String> = Vec::new();
    for name in names {
        collect(name, pakfile_dir, &mut stack, &mut out)?;
    }
    Ok(out)
}

fn collect(
    name: &str,
    dir: &Path,
    stack: &mut Vec<String>,
    out: &mut BTreeMap<String, String>,
) -> Result<()> {
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
        out.entry(pkg).or_insert(req);
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
