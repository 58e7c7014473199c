//! Checks of a set of packages already chosen (a lock), without any
//! repository: is every requirement met within the set, does any conflict
//! hold, and does anything stand in it that nothing needs. `pak lock`
//! decides by them whether a lock still fits its Pakfile.

use std::collections::HashMap;

use crate::packages::requirement::{self, Dep};
use crate::packages::version::Version;

/// The chosen packages nothing needs: not reached from `roots` through
/// requirements (any package satisfying an alternative counts as reached).
/// A lock holding one is stale: its Pakfile no longer asks for it.
pub fn unneeded<'a>(
    chosen: &[&'a crate::packages::pakinfo::PakInfo],
    roots: &[Dep],
) -> Vec<&'a crate::packages::pakinfo::PakInfo> {
    let mut reached = vec![false; chosen.len()];
    let mut queue: Vec<Dep> = roots.to_vec();
    while let Some(d) = queue.pop() {
        for (i, info) in chosen.iter().enumerate() {
            if !reached[i] && d.satisfied_by(info) {
                reached[i] = true;
                for r in &info.requires {
                    if let Ok(req) = requirement::parse(r) {
                        queue.extend(req.alternatives);
                    }
                }
            }
        }
    }
    chosen
        .iter()
        .zip(reached)
        .filter(|(_, r)| !r)
        .map(|(i, _)| *i)
        .collect()
}

/// Checks a set of chosen packages: every requirement met within the set,
/// no conflict holds, one version per name. Returns the problems found.
pub fn check_closure(chosen: &[&crate::packages::pakinfo::PakInfo]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_name: HashMap<String, Vec<(&crate::packages::pakinfo::PakInfo, Option<Version>)>> =
        HashMap::new();
    for info in chosen {
        by_name
            .entry(info.name.clone())
            .or_default()
            .push((info, Version::parse(&info.version).ok()));
        for p in &info.provides {
            if let Ok((n, v)) = requirement::parse_provide(p) {
                by_name.entry(n).or_default().push((info, v));
            }
        }
    }
    let mut names = std::collections::HashSet::new();
    for info in chosen {
        if !names.insert(&info.name) {
            problems.push(format!("{} is chosen in more than one version", info.name));
        }
    }
    let satisfied = |d: &Dep| {
        by_name.get(d.name.as_str()).is_some_and(|list| {
            list.iter().any(|(_, v)| match v {
                Some(v) => d.range.contains(v),
                None => d.range.is_any(),
            })
        })
    };
    for info in chosen {
        for r in &info.requires {
            match requirement::parse(r) {
                Ok(req) if req.alternatives.iter().any(satisfied) => {}
                Ok(_) => problems.push(format!(
                    "{} {} requires {r}, which nothing chosen satisfies",
                    info.name, info.version
                )),
                Err(e) => problems.push(format!("{}: {e}", info.name)),
            }
        }
        for c in &info.conflicts {
            let Ok(req) = requirement::parse(c) else {
                continue;
            };
            for d in &req.alternatives {
                let hit = by_name.get(d.name.as_str()).is_some_and(|list| {
                    list.iter().any(|(other, v)| {
                        other.name != info.name
                            && match v {
                                Some(v) => d.range.contains(v),
                                None => d.range.is_any(),
                            }
                    })
                });
                if hit {
                    problems.push(format!(
                        "{} {} conflicts with {d}, which is chosen",
                        info.name, info.version
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::pakinfo::PakInfo;

    fn info(name: &str, requires: &[&str], conflicts: &[&str]) -> PakInfo {
        PakInfo {
            name: name.into(),
            version: "1".into(),
            arch: "x86_64".into(),
            summary: String::new(),
            license: String::new(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
            provides: vec![],
            conflicts: conflicts.iter().map(|s| s.to_string()).collect(),
            special_files: vec![],
            origin: None,
        }
    }

    #[test]
    fn closure_check_finds_problems() {
        let a = info("a", &["b"], &["c"]);
        let c = info("c", &[], &[]);
        let problems = check_closure(&[&a, &c]);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn what_nothing_needs_is_found() {
        let a = info("a", &["b"], &[]);
        let b = info("b", &[], &[]);
        let c = info("c", &[], &[]);
        let roots = [requirement::parse_dep("a").unwrap()];
        let extra: Vec<&str> = unneeded(&[&a, &b, &c], &roots)
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(extra, ["c"]);
    }
}
