//! Versions, compared in dpkg order: `[epoch:]upstream[-revision]`.
//!
//! The algorithm is dpkg's `verrevcmp`: alternate non-digit and digit runs;
//! in non-digit runs `~` sorts before everything (even the end of the
//! string), letters before non-letters; digit runs compare numerically.

use std::cmp::Ordering;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub epoch: u64,
    pub upstream: String,
    pub revision: String,
    raw: String,
}

impl Version {
    pub fn parse(s: &str) -> Result<Version, String> {
        let raw = s.trim();
        if raw.is_empty() {
            return Err("empty version".into());
        }
        if raw.chars().any(char::is_whitespace) {
            return Err(format!("version {raw:?} contains white space"));
        }
        let (epoch, rest) = match raw.split_once(':') {
            Some((e, rest)) => (
                e.parse::<u64>()
                    .map_err(|_| format!("version {raw:?} has a non-numeric epoch {e:?}"))?,
                rest,
            ),
            None => (0, raw),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        if upstream.is_empty() {
            return Err(format!("version {raw:?} has an empty upstream part"));
        }
        Ok(Version {
            epoch,
            upstream: upstream.into(),
            revision: revision.into(),
            raw: raw.into(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(&self.upstream, &other.upstream))
            .then_with(|| verrevcmp(&self.revision, &other.revision))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two version strings in dpkg order; unparsable strings compare
/// as plain strings so that sorting never panics.
pub fn compare(a: &str, b: &str) -> Ordering {
    match (Version::parse(a), Version::parse(b)) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        _ => a.cmp(b),
    }
}

fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let mut first_diff = 0;
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied());
            let bc = order(b.get(j).copied());
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == 0 {
                first_diff = a[i] as i32 - b[j] as i32;
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != 0 {
            return first_diff.cmp(&0);
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAIRS: &[(&str, &str, Ordering)] = &[
        ("1.0", "1.0", Ordering::Equal),
        ("1.0", "1.1", Ordering::Less),
        ("1.10", "1.9", Ordering::Greater),
        ("1.0~rc1", "1.0", Ordering::Less),
        ("1.0~rc1", "1.0~rc2", Ordering::Less),
        ("1.0~~", "1.0~", Ordering::Less),
        ("1:0.1", "2.0", Ordering::Greater),
        ("1.0-1", "1.0-2", Ordering::Less),
        ("1.0-1", "1.0", Ordering::Greater),
        ("1.0a", "1.0", Ordering::Greater),
        ("1.0a", "1.0.", Ordering::Less),
        ("1.0+b1", "1.0", Ordering::Greater),
        ("2.36-9+deb12u14", "2.36-9+deb12u4", Ordering::Greater),
        ("1.22.1-9+deb12u11", "1.22.1-9+deb12u11.1~", Ordering::Less),
        ("00.1", "0.1", Ordering::Equal),
        ("1.2.3-a-b", "1.2.3-a-c", Ordering::Less),
    ];

    #[test]
    fn known_pairs() {
        for (a, b, want) in PAIRS {
            assert_eq!(compare(a, b), *want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn agrees_with_dpkg() {
        if std::process::Command::new("dpkg")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("dpkg not installed; skipping the cross-check");
            return;
        }
        for (a, b, want) in PAIRS {
            let op = match want {
                Ordering::Less => "lt",
                Ordering::Equal => "eq",
                Ordering::Greater => "gt",
            };
            let ok = std::process::Command::new("dpkg")
                .args(["--compare-versions", a, op, b])
                .status()
                .unwrap()
                .success();
            assert!(ok, "dpkg disagrees: {a} {op} {b}");
        }
    }

    #[test]
    fn malformed() {
        assert!(Version::parse("").is_err());
        assert!(Version::parse("x:1").is_err());
        assert!(Version::parse("1 2").is_err());
        assert_eq!(Version::parse("1:2.0-3").unwrap().revision, "3");
    }
}
