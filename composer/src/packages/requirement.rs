//! Requirements: `NAME [OP VERSION][, OP VERSION]...`, alternatives joined
//! by `|`, and provides (`NAME [= VERSION]`).
//!
//! Names may be capabilities (`cmd:sh`, `lib:libssl.so.3`): to the resolver
//! they are names like any other, met by a package of that name or one that
//! provides it.

use std::cmp::Ordering;
use std::fmt;

use anyhow::{Result, bail};

use crate::packages::version::Version;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Ge,
    Le,
    Gt,
    Lt,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "=" | "==" => Op::Eq,
            ">=" => Op::Ge,
            "<=" => Op::Le,
            ">" => Op::Gt,
            "<" => Op::Lt,
            _ => return None,
        })
    }

    pub fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord == Ordering::Equal,
            Op::Ge => ord != Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Lt => ord == Ordering::Less,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Lt => "<",
        })
    }
}

/// A version constraint: all of its clauses must hold. Empty means any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Range {
    pub clauses: Vec<(Op, Version)>,
}

impl Range {
    pub fn any() -> Self {
        Range::default()
    }

    /// Parses `*`, `>= 1.0`, `>= 1, < 2`, `1.0` (meaning `= 1.0`).
    pub fn parse(s: &str) -> Result<Range> {
        let s = s.trim();
        if s.is_empty() || s == "*" {
            return Ok(Range::any());
        }
        let mut clauses = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let op_len = part
                .find(|c: char| !matches!(c, '<' | '>' | '='))
                .unwrap_or(part.len());
            let (op, ver) = part.split_at(op_len);
            let op = if op.is_empty() {
                Op::Eq
            } else {
                Op::parse(op).ok_or_else(|| {
                    anyhow::anyhow!("{op:?} in {s:?} is not a comparison; use one of = >= <= > <")
                })?
            };
            let ver = Version::parse(ver.trim()).map_err(|e| anyhow::anyhow!("in {s:?}: {e}"))?;
            clauses.push((op, ver));
        }
        Ok(Range { clauses })
    }

    pub fn contains(&self, v: &Version) -> bool {
        self.clauses.iter().all(|(op, want)| op.holds(v.cmp(want)))
    }

    pub fn is_any(&self) -> bool {
        self.clauses.is_empty()
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.clauses.is_empty() {
            return f.write_str("*");
        }
        let parts: Vec<String> = self
            .clauses
            .iter()
            .map(|(o, v)| format!("{o} {v}"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// One alternative of a requirement: a name and the versions acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dep {
    pub name: String,
    pub range: Range,
}

impl Dep {
    /// Whether the package is, or provides, a version this accepts. An
    /// unversioned provide satisfies only an unversioned requirement.
    pub fn satisfied_by(&self, info: &crate::packages::pakinfo::PakInfo) -> bool {
        (info.name == self.name
            && crate::packages::version::Version::parse(&info.version)
                .is_ok_and(|v| self.range.contains(&v)))
            || info.provides.iter().any(|p| {
                parse_provide(p).is_ok_and(|(n, v)| {
                    n == self.name
                        && match v {
                            Some(v) => self.range.contains(&v),
                            None => self.range.is_any(),
                        }
                })
            })
    }
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.range.is_any() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{} {}", self.name, self.range)
        }
    }
}

/// A requirement: any one of its alternatives satisfies it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub alternatives: Vec<Dep>,
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.alternatives.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(" | "))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_' | ':' | '/' | '@')
        })
}

/// Parses `name [range]`.
pub fn parse_dep(s: &str) -> Result<Dep> {
    let s = s.trim();
    let split = s
        .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '='))
        .unwrap_or(s.len());
    let (name, rest) = s.split_at(split);
    if !valid_name(name) {
        bail!("{s:?} does not start with a package name (letters, digits and . + - _ : / @)");
    }
    Ok(Dep {
        name: name.to_string(),
        range: Range::parse(rest)?,
    })
}

/// Parses `a >= 1 | b`.
pub fn parse(s: &str) -> Result<Requirement> {
    let alternatives = s.split('|').map(parse_dep).collect::<Result<Vec<_>>>()?;
    Ok(Requirement { alternatives })
}

/// A Pakfile entry: name and requirement text.
pub fn parse_root(name: &str, range: &str) -> Result<Dep> {
    if !valid_name(name) {
        bail!("{name:?} is not a valid package name");
    }
    Ok(Dep {
        name: name.to_string(),
        range: Range::parse(range)?,
    })
}

/// A provides entry: `name` or `name = version`.
pub fn parse_provide(s: &str) -> Result<(String, Option<Version>)> {
    let dep = parse_dep(s)?;
    match dep.range.clauses.as_slice() {
        [] => Ok((dep.name, None)),
        [(Op::Eq, v)] => Ok((dep.name, Some(v.clone()))),
        _ => bail!("provides {s:?} may only name a version with `=`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn parses_forms() {
        let r = parse("busybox >= 1.30").unwrap();
        assert_eq!(r.alternatives[0].name, "busybox");
        assert!(r.alternatives[0].range.contains(&v("1:1.35.0-4")));
        assert!(!r.alternatives[0].range.contains(&v("1.29")));
        let r = parse("a>=1, <2 | cmd:sh").unwrap();
        assert_eq!(r.to_string(), "a >= 1, < 2 | cmd:sh");
        assert!(r.alternatives[0].range.contains(&v("1.5")));
        assert!(!r.alternatives[0].range.contains(&v("2")));
        assert!(
            parse("lib:libssl.so.3").unwrap().alternatives[0]
                .range
                .is_any()
        );
        assert_eq!(Range::parse("1.0").unwrap().clauses[0].0, Op::Eq);
        assert!(Range::parse("*").unwrap().is_any());
    }

    #[test]
    fn errors_name_the_input() {
        assert!(parse(">= 1").unwrap_err().to_string().contains(">= 1"));
        assert!(parse("a => 1").unwrap_err().to_string().contains("=>"));
        assert!(parse("a >= ").is_err());
        assert!(parse_provide("x >= 1").is_err());
        assert_eq!(parse_provide("httpd-cgi = 1").unwrap().1, Some(v("1")));
    }
}
