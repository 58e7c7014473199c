//! What a new environment's Pakfile says: the requirements and repositories
//! it starts from ([`Template`]), where an empty one finds repositories
//! (the current directory's Pakfile, else the system's list), and its text.
//! `pak env create`, `pak install --user` and `pak taste` all write one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::spec::edit::{repository_table, toml_key, toml_string};
use crate::spec::pakfile::{Pakfile, RepositorySpec};

/// Repositories for new environments on a system (an image) when the
/// current directory has no Pakfile: the administrator's list first, then
/// the one the image ships.
pub const SYSTEM_REPOSITORY_FILES: &[&str] = &[
    "/etc/pak/repositories.toml",
    "/usr/lib/pak/repositories.toml",
];

/// Where a new environment's packages and repositories come from.
#[derive(Debug, Clone)]
pub enum Template {
    /// Requirements and repositories of this Pakfile (profiles expanded).
    Pakfile(PathBuf),
    /// No packages; repositories from [`default_repositories`].
    Empty { cwd_pakfile: PathBuf },
}

impl Template {
    /// The new environment's requirements and repositories, and the file
    /// the repositories were taken from, if any.
    pub(super) fn contents(&self) -> Result<NewPakfile> {
        match self {
            Template::Pakfile(path) => {
                let from = Pakfile::load(path)?;
                let repos = absolute_repositories(&from.repository, &from.dir)
                    .with_context(|| format!("repositories of {}", path.display()))?;
                let origin = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                Ok((from.packages, repos, Some(origin)))
            }
            Template::Empty { cwd_pakfile } => {
                let (repos, origin) = default_repositories(cwd_pakfile)?;
                Ok((BTreeMap::new(), repos, origin))
            }
        }
    }
}

/// Requirements, repositories, and where the repositories came from.
pub(super) type NewPakfile = (
    BTreeMap<String, String>,
    Vec<RepositorySpec>,
    Option<PathBuf>,
);

/// The repositories of a new, empty environment: the Pakfile in the current
/// directory if there is one (a project's environment uses the project's
/// repositories), else the system's list (see [`SYSTEM_REPOSITORY_FILES`]),
/// else none. Returns where they came from.
pub fn default_repositories(cwd_pakfile: &Path) -> Result<(Vec<RepositorySpec>, Option<PathBuf>)> {
    if cwd_pakfile.is_file() {
        let p = Pakfile::load_unmerged(cwd_pakfile)?;
        let repos = absolute_repositories(&p.repository, &p.dir)
            .with_context(|| format!("repositories of {}", cwd_pakfile.display()))?;
        let origin = std::path::absolute(cwd_pakfile).unwrap_or_else(|_| cwd_pakfile.into());
        return Ok((repos, Some(origin)));
    }
    for file in SYSTEM_REPOSITORY_FILES {
        let path = Path::new(file);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let list: RepositoryList = toml::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid list of [[repository]] entries",
                path.display()
            )
        })?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let repos = absolute_repositories(&list.repository, dir)
            .with_context(|| format!("repositories of {}", path.display()))?;
        return Ok((repos, Some(path.to_path_buf())));
    }
    Ok((Vec::new(), None))
}

/// `/etc/pak/repositories.toml`: `[[repository]]` entries as in a Pakfile.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryList {
    #[serde(default)]
    repository: Vec<RepositorySpec>,
}

/// Repositories made independent of the file they came from: directory
/// URLs made absolute, key files replaced by the key text.
pub(super) fn absolute_repositories(
    repos: &[RepositorySpec],
    dir: &Path,
) -> Result<Vec<RepositorySpec>> {
    repos
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if let Some(url) = &r.url
                && !url.contains("://")
            {
                r.url = Some(dir.join(url).display().to_string());
            }
            if let Some(key) = &r.key {
                let public = crate::sources::key::PublicKey::from_pakfile_field(key, dir)
                    .with_context(|| format!("repository {:?}", r.name))?;
                r.key = Some(public.to_text());
            }
            Ok(r)
        })
        .collect()
}

pub(super) fn render_pakfile(
    name: &str,
    packages: &BTreeMap<String, String>,
    repositories: &[RepositorySpec],
    origin: Option<&Path>,
) -> String {
    let mut out = format!(
        "# pak environment {name:?}. `pak install -e {name} PKG` and `pak uninstall -e {name} PKG`\n# edit [packages] and keep the rest of this file, comments included.\n"
    );
    if let Some(origin) = origin {
        out.push_str(&format!(
            "# Repositories taken from {} when it was created.\n",
            origin.display()
        ));
    }
    out.push_str(&format!(
        "\n[system]\nname = {}\narch = {}\n\n[packages]\n",
        toml_string(name),
        toml_string(std::env::consts::ARCH)
    ));
    for (pkg, req) in packages {
        out.push_str(&format!("{} = {}\n", toml_key(pkg), toml_string(req)));
    }
    if repositories.is_empty() {
        out.push_str(
            "\n# No repository yet: add a [[repository]] (name, url, key) to install packages.\n",
        );
    }
    // Only where the packages come from: a snapshot or mirror serves the
    // project's lock, not this environment's.
    for r in repositories {
        out.push_str(&repository_table(
            &r.name,
            Some(r.kind),
            r.url.as_deref(),
            r.key.as_deref().map(str::trim_end),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::pakfile::RepoKind;

    /// The exact text of a new environment's Pakfile, as the README shows it.
    #[test]
    fn new_pakfile_bytes() {
        let packages = BTreeMap::from([
            ("greet".to_string(), "*".to_string()),
            ("g++".to_string(), ">= 12".to_string()),
        ]);
        let repositories = [
            RepositorySpec {
                name: "local".into(),
                kind: RepoKind::Pak,
                url: Some("/home/you/repo".into()),
                key: Some("pak public key 01\nAAAA\n".into()),
                snapshot: None,
                mirror: None,
            },
            RepositorySpec {
                name: "debian".into(),
                kind: RepoKind::Apt,
                url: None,
                key: None,
                snapshot: Some("https://snapshot.example".into()),
                mirror: None,
            },
        ];
        let text = render_pakfile(
            "tools",
            &packages,
            &repositories,
            Some(Path::new("/home/you/Pakfile")),
        );
        assert_eq!(
            text,
            format!(
                "# pak environment \"tools\". `pak install -e tools PKG` and `pak uninstall -e tools PKG`\n# edit [packages] and keep the rest of this file, comments included.\n# Repositories taken from /home/you/Pakfile when it was created.\n\n[system]\nname = \"tools\"\narch = \"{}\"\n\n[packages]\n\"g++\" = \">= 12\"\ngreet = \"*\"\n\n[[repository]]\nname = \"local\"\nkind = \"pak\"\nurl = \"/home/you/repo\"\nkey = \"\"\"\npak public key 01\nAAAA\"\"\"\n\n[[repository]]\nname = \"debian\"\nkind = \"apt\"\n",
                std::env::consts::ARCH
            )
        );
        let empty = render_pakfile("e", &BTreeMap::new(), &[], None);
        assert!(
            empty.ends_with("[packages]\n\n# No repository yet: add a [[repository]] (name, url, key) to install packages.\n"),
            "{empty}"
        );
    }
}
