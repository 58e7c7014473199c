//! `.PAKINFO`: the metadata every package carries, whatever its source.
//!
//! Requirement strings are kept as written here; `requirement` parses them.
//! Keeping the raw strings means a package round-trips byte for byte.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PakInfo {
    pub name: String,
    /// Compared in dpkg order.
    pub version: String,
    /// `x86_64` or `any`.
    pub arch: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license: String,
    /// `NAME [OP VERSION]`, `a | b` for alternatives, comma-joined ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Virtual capabilities, optionally `= VERSION`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provides: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// Paths (relative to the package root) of device nodes and setuid/setgid
    /// files the package is allowed to ship; extraction refuses all others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub special_files: Vec<String>,
    /// Where the package came from when it was converted (e.g. a Debian
    /// `.deb`), and what the conversion could not carry over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// `deb` for Debian packages.
    pub kind: String,
    /// sha256 of the original artifact.
    pub sha256: String,
    /// Maintainer scripts present in the original and not run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts_not_run: Vec<String>,
    /// Their text (lossy UTF-8), by name: what pak reads to turn their
    /// effects (system accounts, directories) into configuration when it
    /// assembles a generation, and to say which steps it did not. Kept in
    /// the metadata rather than the payload so nothing of it lands in an
    /// image, and every store entry answers for its own package.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scripts: BTreeMap<String, String>,
}

impl PakInfo {
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("PakInfo always serialises")
    }

    /// `NAME-VERSION-ARCH.pak`; `:` (epochs) is not portable in file names.
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}-{}.pak",
            self.name,
            self.version.replace(':', "_"),
            self.arch
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_file_name() {
        let text = r#"
name = "hello"
version = "1:1.0-1"
arch = "x86_64"
requires = ["busybox >= 1.30", "cmd:sh"]
provides = ["cmd:hello"]
"#;
        let info = PakInfo::from_toml(text).unwrap();
        assert_eq!(info.file_name(), "hello-1_1.0-1-x86_64.pak");
        assert_eq!(PakInfo::from_toml(&info.to_toml()).unwrap(), info);
    }

    #[test]
    fn unknown_field_is_refused() {
        let err = PakInfo::from_toml("name='a'\nversion='1'\narch='any'\nfoo=1").unwrap_err();
        assert!(err.to_string().contains("foo"), "{err}");
    }
}
