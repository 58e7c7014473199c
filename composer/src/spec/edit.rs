//! Writing Pakfile text, as opposed to reading it (`pakfile.rs`): pak edits
//! Pakfiles people also edit by hand (`pak install`), and writes new ones
//! and repository lists (`pak env create`, an image's
//! `/usr/lib/pak/repositories.toml`). Everything here works on text so that
//! comments and layout survive, and checks its result by parsing it.

use anyhow::{Context, Result, bail};

use crate::spec::pakfile::{Pakfile, RepoKind};

/// `s` as a TOML string. Text with newlines (a key) becomes a `"""` string.
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `name` as a TOML key: bare when TOML allows it, else quoted.
pub fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        name.to_string()
    } else {
        toml_string(name)
    }
}

/// One `[[repository]]` table, preceded by a blank line. Only the fields
/// given are written, in this order; `key` is the key's text, written as
/// given (an image's list keeps its final newline, an environment's
/// Pakfile does not: both are shipped bytes, so each caller keeps its own).
pub fn repository_table(
    name: &str,
    kind: Option<RepoKind>,
    url: Option<&str>,
    key: Option<&str>,
) -> String {
    let mut out = format!("\n[[repository]]\nname = {}\n", toml_string(name));
    if let Some(kind) = kind {
        out.push_str(&format!("kind = {}\n", toml_string(kind.as_str())));
    }
    if let Some(url) = url {
        out.push_str(&format!("url = {}\n", toml_string(url)));
    }
    if let Some(key) = key {
        out.push_str(&format!("key = {}\n", toml_string(key)));
    }
    out
}

/// Sets or removes one requirement in the text of a Pakfile, touching no
/// other line, so comments and layout survive. The result is checked by
/// parsing it: any layout this does not understand is an error, not a guess.
pub fn edit_packages(text: &str, name: &str, req: Option<&str>) -> Result<String> {
    let before = Pakfile::parse(text)?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let header = lines.iter().position(|l| is_header(l, "packages"));
    let new_line = req.map(|r| format!("{} = {}", toml_key(name), toml_string(r)));
    match header {
        Some(h) => {
            let end = (h + 1..lines.len())
                .find(|&i| lines[i].trim_start().starts_with('['))
                .unwrap_or(lines.len());
            let existing = (h + 1..end).find(|&i| line_key(&lines[i]).as_deref() == Some(name));
            match (existing, new_line) {
                (Some(i), Some(line)) => lines[i] = line,
                (Some(i), None) => {
                    lines.remove(i);
                }
                (None, Some(line)) => {
                    // After the last requirement; in a section with none,
                    // after its leading comments, which describe it.
                    let last_key = (h + 1..end).rev().find(|&i| line_key(&lines[i]).is_some());
                    let last_text = (h + 1..end).rev().find(|&i| !lines[i].trim().is_empty());
                    lines.insert(last_key.or(last_text).unwrap_or(h) + 1, line);
                }
                (None, None) => {}
            }
        }
        None => {
            if let Some(line) = new_line {
                if lines.last().is_some_and(|l| !l.trim().is_empty()) {
                    lines.push(String::new());
                }
                lines.push("[packages]".into());
                lines.push(line);
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    let after = Pakfile::parse(&out).context("the edited Pakfile would not parse")?;
    let mut expected = before.packages.clone();
    match req {
        Some(r) => {
            expected.insert(name.to_string(), r.to_string());
        }
        None => {
            expected.remove(name);
        }
    }
    if after.packages != expected || after.repository != before.repository {
        bail!("its layout is unusual (e.g. an inline `packages = {{...}}` table); edit it by hand");
    }
    Ok(out)
}

fn is_header(line: &str, table: &str) -> bool {
    let code = line.split('#').next().unwrap_or("").trim();
    code.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .is_some_and(|s| s.trim() == table)
}

/// The key of a `key = value` line (bare or quoted), if it is one.
fn line_key(line: &str) -> Option<String> {
    let t = line.trim_start();
    let (key, rest) = if let Some(q) = t.strip_prefix('"') {
        let end = q.find('"')?;
        (q[..end].to_string(), &q[end + 1..])
    } else if let Some(q) = t.strip_prefix('\'') {
        let end = q.find('\'')?;
        (q[..end].to_string(), &q[end + 1..])
    } else {
        let end = t
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(t.len());
        if end == 0 {
            return None;
        }
        (t[..end].to_string(), &t[end..])
    };
    rest.trim_start().starts_with('=').then_some(key)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const PAKFILE: &str = "# my env\n[system]\nname = \"x\"\n\n[packages]\n# tools I like\njq = \"*\" # json\n\"g++\" = \">= 12\"\n\n[[repository]]\nname = \"debian\"\nkind = \"apt\"\n";

    #[test]
    fn install_edits_keep_comments() {
        let added = edit_packages(PAKFILE, "hello", Some("= 1.0")).unwrap();
        assert!(
            added.contains(
                "# tools I like\njq = \"*\" # json\n\"g++\" = \">= 12\"\nhello = \"= 1.0\"\n"
            ),
            "{added}"
        );
        assert!(added.starts_with("# my env\n"));
        let changed = edit_packages(&added, "jq", Some(">= 1.7")).unwrap();
        assert!(changed.contains("jq = \">= 1.7\"\n"), "{changed}");
        let removed = edit_packages(&changed, "g++", None).unwrap();
        assert!(!removed.contains("g++"), "{removed}");
        assert!(removed.contains("# tools I like"));
        assert_eq!(
            Pakfile::parse(&removed).unwrap().packages,
            BTreeMap::from([
                ("jq".to_string(), ">= 1.7".to_string()),
                ("hello".to_string(), "= 1.0".to_string())
            ])
        );
    }

    #[test]
    fn install_into_a_pakfile_without_packages() {
        let text = "[system]\nname = \"x\"\n";
        let out = edit_packages(text, "jq", Some("*")).unwrap();
        assert_eq!(out, "[system]\nname = \"x\"\n\n[packages]\njq = \"*\"\n");
        assert!(edit_packages("packages = { a = \"*\" }\n", "jq", Some("*")).is_err());
    }

    #[test]
    fn repository_tables_write_only_what_is_given() {
        assert_eq!(
            repository_table("web", None, Some("https://x"), Some("k 1\nAB\n")),
            "\n[[repository]]\nname = \"web\"\nurl = \"https://x\"\nkey = \"\"\"\nk 1\nAB\n\"\"\"\n"
        );
        assert_eq!(
            repository_table("debian", Some(RepoKind::Apt), None, None),
            "\n[[repository]]\nname = \"debian\"\nkind = \"apt\"\n"
        );
    }
}
