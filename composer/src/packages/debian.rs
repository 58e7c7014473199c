//! Debian's control-file syntax (deb822) and its mapping to pak metadata.
//!
//! Used both for a `.deb`'s own `control` file and for the stanzas of an
//! archive's `Packages` index, so that a package resolved from the index and
//! the same package imported from its `.deb` get identical metadata.

use crate::packages::pakinfo::{Origin, PakInfo};

/// One stanza: fields in file order, continuation lines joined with `\n`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stanza {
    fields: Vec<(String, String)>,
}

impl Stanza {
    /// Field names are case-insensitive in deb822.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Parses every stanza of a deb822 text. Malformed lines are skipped rather
/// than fatal: a `Packages` index is produced by Debian and verified by apt,
/// and one odd field must not make 60,000 packages unusable.
pub fn parse_stanzas(text: &str) -> Vec<Stanza> {
    let mut out = Vec::new();
    let mut cur = Stanza::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, v)) = cur.fields.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.fields
                .push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    out
}

/// Debian architecture name to pak's.
pub fn map_arch(arch: &str) -> String {
    match arch {
        "amd64" => "x86_64".into(),
        "all" => "any".into(),
        "arm64" => "aarch64".into(),
        other => other.into(),
    }
}

/// Converts one Debian relationship field (`Depends`, `Conflicts`, ...) to
/// pak requirement strings: `a (>= 1) | b (<< 2)` becomes `a >= 1 | b < 2`.
/// Architecture qualifiers (`:any`, `:native`) are dropped: a pak system has
/// one architecture. Build-profile and arch restrictions (`[...]`, `<...>`)
/// only appear in source packages and are dropped too.
pub fn map_relations(field: &str) -> Vec<String> {
    field
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|group| {
            group
                .split('|')
                .map(|alt| map_relation(alt.trim()))
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn map_relation(rel: &str) -> String {
    let rel = strip_bracketed(rel, '[', ']');
    let rel = strip_bracketed(&rel, '<', '>');
    let (name, constraint) = match rel.split_once('(') {
        Some((n, c)) => (n.trim(), Some(c.trim_end().trim_end_matches(')').trim())),
        None => (rel.trim(), None),
    };
    let name = name.split(':').next().unwrap_or(name);
    match constraint {
        None => name.to_string(),
        Some(c) => {
            let (op, ver) = split_op(c);
            format!("{name} {op} {}", ver.trim())
        }
    }
}

/// `<` and `>` alone are the deprecated spellings of `<=` and `>=`.
fn split_op(c: &str) -> (&'static str, &str) {
    for (deb, pak) in [
        ("<<", "<"),
        (">>", ">"),
        ("<=", "<="),
        (">=", ">="),
        ("=", "="),
        ("<", "<="),
        (">", ">="),
    ] {
        if let Some(rest) = c.strip_prefix(deb) {
            return (pak, rest);
        }
    }
    ("=", c)
}

/// Removes `[..]` or `<..>` groups; a `<` inside `( .. )` is an operator and kept.
fn strip_bracketed(s: &str, open: char, close: char) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth_paren = 0;
    let mut skipping = false;
    for ch in s.chars() {
        match ch {
            '(' => depth_paren += 1,
            ')' => depth_paren -= 1,
            _ => {}
        }
        if depth_paren == 0 && ch == open {
            skipping = true;
            continue;
        }
        if skipping {
            if ch == close {
                skipping = false;
            }
            continue;
        }
        out.push(ch);
    }
    out
}

/// Maps a binary package's control fields to pak metadata, without an
/// origin. `field` looks a field up (a parsed stanza, or the fields of a
/// `Packages` index entry): the one mapping both `.deb` import and the apt
/// index use, so a package resolved from the index and imported from its
/// `.deb` agree.
pub fn fields_to_pakinfo<'a>(field: impl Fn(&str) -> Option<&'a str>) -> Option<PakInfo> {
    let rel = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .filter_map(|n| field(n))
            .flat_map(map_relations)
            .collect()
    };
    Some(PakInfo {
        name: field("Package")?.to_string(),
        version: field("Version")?.to_string(),
        arch: map_arch(field("Architecture").unwrap_or("all")),
        summary: field("Description")
            .and_then(|d| d.lines().next())
            .unwrap_or_default()
            .to_string(),
        license: String::new(),
        requires: rel(&["Pre-Depends", "Depends"]),
        provides: rel(&["Provides"]),
        conflicts: rel(&["Conflicts", "Breaks"]),
        special_files: Vec::new(),
        origin: None,
    })
}

/// Maps a `.deb`'s control stanza to pak metadata. `deb_sha256` is the
/// hash of the `.deb`.
pub fn to_pakinfo(
    stanza: &Stanza,
    deb_sha256: &str,
    scripts_not_run: Vec<String>,
) -> Option<PakInfo> {
    let mut info = fields_to_pakinfo(|k| stanza.get(k))?;
    info.origin = Some(Origin {
        kind: "deb".into(),
        sha256: deb_sha256.to_string(),
        scripts_not_run,
        scripts: Default::default(),
    });
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_map_to_pak_syntax() {
        assert_eq!(
            map_relations("libc6 (>= 2.34), libfoo:any | libbar (<< 2.0~rc1) , perl:native"),
            vec!["libc6 >= 2.34", "libfoo | libbar < 2.0~rc1", "perl"]
        );
        assert_eq!(
            map_relations("a (>> 1), b (= 1:2-3), c (<= 4), d (< 5)"),
            vec!["a > 1", "b = 1:2-3", "c <= 4", "d <= 5"]
        );
        assert_eq!(
            map_relations("foo [amd64] <!nocheck>, bar"),
            vec!["foo", "bar"]
        );
    }

    #[test]
    fn stanzas_and_pakinfo() {
        let text = "Package: nginx\nVersion: 1.22.1-9\nArchitecture: amd64\nPre-Depends: dpkg (>= 1.15)\nDepends: nginx-core (<< 1.22.1-9.1~) | nginx-light\nBreaks: old (<< 1)\nConflicts: other\nProvides: httpd, httpd-cgi (= 1)\nDescription: small, powerful\n more text\n .\n\nPackage: b\nVersion: 1\n";
        let st = parse_stanzas(text);
        assert_eq!(st.len(), 2);
        assert_eq!(
            st[0].get("description"),
            Some("small, powerful\nmore text\n.")
        );
        let info = to_pakinfo(&st[0], "ab", vec!["postinst".into()]).unwrap();
        assert_eq!(info.arch, "x86_64");
        assert_eq!(
            info.requires,
            vec!["dpkg >= 1.15", "nginx-core < 1.22.1-9.1~ | nginx-light"]
        );
        assert_eq!(info.conflicts, vec!["other", "old < 1"]);
        assert_eq!(info.provides, vec!["httpd", "httpd-cgi = 1"]);
        assert_eq!(info.summary, "small, powerful");
        assert_eq!(to_pakinfo(&st[1], "", vec![]).unwrap().arch, "any");
    }
}
