//! Dependency resolution with `resolvo` (a CDCL SAT solver).
//!
//! Model: every candidate is a solvable under its own name. A capability
//! `X` that packages provide becomes, per provider `P`, a *virtual*
//! solvable "X via P" under the name `X` that requires exactly `P`. So a
//! requirement on `X` is met by a package named `X` or by any provider; two
//! providers of `X` can both be installed (each for its own reasons), while
//! a name still gets one version. Conflicts are constraints on a name that
//! exclude the conflicting versions, except the declaring package's own
//! solvables: a package never conflicts with itself.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use resolvo::{
    Candidates, Condition, ConditionId, ConditionalRequirement, Dependencies, DependencyProvider,
    Interner, KnownDependencies, NameId, Problem, Requirement as RvRequirement, SolvableId, Solver,
    SolverCache, StringId, UnsolvableOrCancelled, VersionSetId, VersionSetUnionId,
};

use crate::packages::candidate::Candidate;
use crate::packages::requirement::{self, Dep, Range};
use crate::packages::version::Version;

/// FNV-1a: the universe hashes 60,000 short names, where SipHash's
/// DoS resistance buys nothing and costs a third of the build time.
#[derive(Default, Clone, Copy)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        self.0 = h;
    }
}

type FnvMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// Why the resolver found no set of packages. Callers branch on the kind
/// (an unknown name is worth a search; a conflict is not).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A root names nothing any repository offers.
    #[error("no repository offers a package named {name:?}, and no package provides it{}{} (`pak search` looks through the Pakfile's repositories)",
        if suggestions.is_empty() { "" } else { "; did you mean " },
        if suggestions.is_empty() { String::new() } else { format!("{}?", suggestions.join(", ")) })]
    Unknown {
        name: String,
        suggestions: Vec<String>,
    },
    /// A root requirement could not be parsed.
    #[error("{0}")]
    Invalid(String),
    /// No set of candidates satisfies everything: why, one sentence a line
    /// (see `explain`).
    #[error("the Pakfile's requirements cannot all be met together:\n  {}\nChange or remove one of the requirements named above, or add a repository that offers what is missing.", .0.join("\n  "))]
    Unsatisfiable(Vec<String>),
}

#[derive(Debug, Clone)]
enum SolvKind {
    /// Index into the candidate slice.
    Real(usize),
    /// Provided by this real solvable.
    Virtual(SolvableId),
}

#[derive(Debug, Clone)]
struct Solv<'a> {
    name: NameId,
    /// The version as written; parsed on first use, since most of a
    /// Debian-sized universe is never looked at.
    raw_version: Option<&'a str>,
    version: std::cell::OnceCell<Option<Version>>,
    kind: SolvKind,
}

impl Solv<'_> {
    fn version(&self) -> Option<&Version> {
        self.version
            .get_or_init(|| self.raw_version.and_then(|v| Version::parse(v).ok()))
            .as_ref()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum VsKind {
    Range(Range),
    /// Exactly this solvable (a virtual solvable's link to its provider).
    Exact(SolvableId),
    /// Everything except what the range matches, save `owner`'s own
    /// solvables (for conflicts).
    NotRange {
        range: Range,
        owner: SolvableId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Vs {
    name: NameId,
    kind: VsKind,
}

struct Universe<'a> {
    cands: &'a [Candidate],
    names: Vec<&'a str>,
    name_ids: FnvMap<&'a str, NameId>,
    solvs: Vec<Solv<'a>>,
    /// Solvables by name, flat: those of name `n` are
    /// `members[offsets[n]..offsets[n + 1]]`.
    offsets: Vec<u32>,
    members: Vec<SolvableId>,
    vs: RefCell<Vec<Vs>>,
    vs_ids: RefCell<HashMap<Vs, VersionSetId>>,
    unions: RefCell<Vec<Vec<VersionSetId>>>,
    strings: RefCell<Vec<String>>,
    prefer: HashMap<NameId, SolvableId>,
    /// Names the roots' own packages already satisfy (their names and
    /// what they provide): an alternative among these is tried first.
    satisfied_by_roots: std::collections::HashSet<String>,
    /// Packages the Pakfile names: preferred among providers of a capability.
    root_names: std::collections::HashSet<String>,
}

impl<'a> Universe<'a> {
    fn build(cands: &'a [Candidate], arch: &str, prefer: &BTreeMap<String, String>) -> Self {
        let mut u = Universe {
            cands,
            names: Vec::with_capacity(cands.len()),
            name_ids: FnvMap::with_capacity_and_hasher(cands.len() * 2, Default::default()),
            solvs: Vec::with_capacity(cands.len() * 2),
            offsets: Vec::new(),
            members: Vec::new(),
            vs: RefCell::default(),
            vs_ids: RefCell::default(),
            unions: RefCell::default(),
            strings: RefCell::default(),
            prefer: HashMap::new(),
            satisfied_by_roots: Default::default(),
            root_names: Default::default(),
        };
        for (i, c) in cands.iter().enumerate() {
            if c.info.arch != arch && c.info.arch != "any" {
                continue;
            }
            let name = u.intern_name(&c.info.name);
            let id = SolvableId(u.solvs.len() as u32);
            u.solvs.push(Solv {
                name,
                raw_version: Some(&c.info.version),
                version: Default::default(),
                kind: SolvKind::Real(i),
            });
            for p in &c.info.provides {
                // `name` or `name = version`, sliced without allocating.
                let p = p.trim();
                let pname = p
                    .split(|ch: char| ch.is_whitespace() || "=<>".contains(ch))
                    .next()
                    .unwrap_or("");
                if pname.is_empty() || pname == c.info.name {
                    continue;
                }
                let pver = p[pname.len()..]
                    .trim_start()
                    .strip_prefix('=')
                    .map(str::trim)
                    .filter(|v| !v.is_empty());
                let pn = u.intern_name(pname);
                u.solvs.push(Solv {
                    name: pn,
                    raw_version: pver,
                    version: Default::default(),
                    kind: SolvKind::Virtual(id),
                });
            }
        }
        // Group by name (a counting sort keeps candidate order within a
        // name). Repositories come in priority order: on a tie of name and
        // version only the first candidate is kept.
        let n = u.names.len();
        let mut counts = vec![0u32; n + 1];
        for s in &u.solvs {
            counts[s.name.0 as usize + 1] += 1;
        }
        for k in 1..=n {
            counts[k] += counts[k - 1];
        }
        let mut fill = counts.clone();
        let mut members = vec![SolvableId(0); u.solvs.len()];
        for (k, s) in u.solvs.iter().enumerate() {
            let slot = &mut fill[s.name.0 as usize];
            members[*slot as usize] = SolvableId(k as u32);
            *slot += 1;
        }
        let mut kept = Vec::with_capacity(members.len());
        let mut offsets = Vec::with_capacity(n + 1);
        for k in 0..n {
            offsets.push(kept.len() as u32);
            let group = &members[counts[k] as usize..counts[k + 1] as usize];
            let start = kept.len();
            for &sid in group {
                let s = &u.solvs[sid.0 as usize];
                let dup = matches!(s.kind, SolvKind::Real(_))
                    && kept[start..].iter().any(|o: &SolvableId| {
                        let o = &u.solvs[o.0 as usize];
                        matches!(o.kind, SolvKind::Real(_)) && o.raw_version == s.raw_version
                    });
                if !dup {
                    kept.push(sid);
                }
            }
        }
        offsets.push(kept.len() as u32);
        u.offsets = offsets;
        u.members = kept;
        for (name, version) in prefer {
            if let Some(&id) = u.name_ids.get(name.as_str())
                && let Some(&sid) = u.group(id).iter().find(|s| {
                    let s = &u.solvs[s.0 as usize];
                    matches!(s.kind, SolvKind::Real(_)) && s.raw_version == Some(version.as_str())
                })
            {
                u.prefer.insert(id, sid);
            }
        }
        u
    }

    /// The solvables of a name (empty for names nothing offers).
    fn group(&self, name: NameId) -> &[SolvableId] {
        let i = name.0 as usize;
        if i + 1 >= self.offsets.len() {
            return &[];
        }
        &self.members[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    fn intern_name(&mut self, name: &'a str) -> NameId {
        if let Some(id) = self.name_ids.get(name) {
            return *id;
        }
        let id = NameId(self.names.len() as u32);
        self.names.push(name);
        self.name_ids.insert(name, id);
        id
    }

    /// Names that appear only in requirements still need an id, with no
    /// candidates, so the solver can report them as missing.
    fn name_id(&self, name: &str) -> NameId {
        if let Some(id) = self.name_ids.get(name) {
            return *id;
        }
        // Interned lazily through the strings table: unknown names get ids
        // past the known ones.
        let mut strings = self.strings.borrow_mut();
        let key = format!("\0name:{name}");
        let pos = strings.iter().position(|s| *s == key).unwrap_or_else(|| {
            strings.push(key);
            strings.len() - 1
        });
        NameId((self.names.len() + pos) as u32)
    }

    fn name_str(&self, id: NameId) -> String {
        let i = id.0 as usize;
        if i < self.names.len() {
            return self.names[i].to_string();
        }
        self.strings.borrow()[i - self.names.len()]
            .trim_start_matches("\0name:")
            .to_string()
    }

    fn intern_vs(&self, vs: Vs) -> VersionSetId {
        if let Some(id) = self.vs_ids.borrow().get(&vs) {
            return *id;
        }
        let mut all = self.vs.borrow_mut();
        let id = VersionSetId(all.len() as u32);
        all.push(vs.clone());
        self.vs_ids.borrow_mut().insert(vs, id);
        id
    }

    fn intern_string(&self, s: String) -> StringId {
        let mut strings = self.strings.borrow_mut();
        strings.push(s);
        StringId((strings.len() - 1) as u32)
    }

    fn dep_vs(&self, dep: &Dep) -> VersionSetId {
        self.intern_vs(Vs {
            name: self.name_id(&dep.name),
            kind: VsKind::Range(dep.range.clone()),
        })
    }

    fn owner_of(&self, s: SolvableId) -> SolvableId {
        match self.solvs[s.0 as usize].kind {
            SolvKind::Real(_) => s,
            SolvKind::Virtual(p) => p,
        }
    }

    fn matches(&self, s: SolvableId, vs: &Vs) -> bool {
        let solv = &self.solvs[s.0 as usize];
        let in_range = |r: &Range| match solv.version() {
            Some(v) => r.contains(v),
            // An unversioned provide satisfies only unversioned requirements.
            None => r.is_any(),
        };
        match &vs.kind {
            VsKind::Range(r) => in_range(r),
            VsKind::Exact(x) => *x == s,
            VsKind::NotRange { range, owner } => self.owner_of(s) == *owner || !in_range(range),
        }
    }

    fn candidate_of(&self, s: SolvableId) -> Option<usize> {
        match self.solvs[s.0 as usize].kind {
            SolvKind::Real(i) => Some(i),
            SolvKind::Virtual(_) => None,
        }
    }
}

impl Interner for Universe<'_> {
    fn display_solvable(&self, s: SolvableId) -> impl fmt::Display + '_ {
        let solv = &self.solvs[s.0 as usize];
        match solv.kind {
            SolvKind::Real(i) => {
                format!("{} {}", self.cands[i].info.name, self.cands[i].info.version)
            }
            SolvKind::Virtual(p) => {
                let i = self.candidate_of(p).expect("providers are real");
                format!(
                    "{} (provided by {} {})",
                    self.name_str(solv.name),
                    self.cands[i].info.name,
                    self.cands[i].info.version
                )
            }
        }
    }

    fn display_name(&self, name: NameId) -> impl fmt::Display + '_ {
        self.name_str(name)
    }

    fn display_version_set(&self, vs: VersionSetId) -> impl fmt::Display + '_ {
        let v = self.vs.borrow()[vs.0 as usize].clone();
        match v.kind {
            VsKind::Range(r) => r.to_string(),
            VsKind::Exact(s) => format!("= {}", self.display_solvable(s)),
            VsKind::NotRange { range, .. } => format!("not {range}"),
        }
    }

    fn display_string(&self, s: StringId) -> impl fmt::Display + '_ {
        self.strings.borrow()[s.0 as usize].clone()
    }

    fn version_set_name(&self, vs: VersionSetId) -> NameId {
        self.vs.borrow()[vs.0 as usize].name
    }

    fn solvable_name(&self, s: SolvableId) -> NameId {
        self.solvs[s.0 as usize].name
    }

    fn version_sets_in_union(&self, u: VersionSetUnionId) -> impl Iterator<Item = VersionSetId> {
        self.unions.borrow()[u.0 as usize].clone().into_iter()
    }

    fn resolve_condition(&self, _: ConditionId) -> Condition {
        unreachable!("pak has no optional dependencies, so it never creates conditions")
    }
}

impl DependencyProvider for Universe<'_> {
    async fn filter_candidates(
        &self,
        cands: &[SolvableId],
        vs: VersionSetId,
        inverse: bool,
    ) -> Vec<SolvableId> {
        let vs = self.vs.borrow()[vs.0 as usize].clone();
        cands
            .iter()
            .copied()
            .filter(|s| self.matches(*s, &vs) != inverse)
            .collect()
    }

    async fn get_candidates(&self, name: NameId) -> Option<Candidates> {
        let list = self.group(name);
        if list.is_empty() {
            return None;
        }
        Some(Candidates {
            candidates: list.to_vec(),
            favored: self.prefer.get(&name).copied(),
            ..Default::default()
        })
    }

    async fn sort_candidates(&self, _: &SolverCache<Self>, solvables: &mut [SolvableId]) {
        // A package of the name itself first, newest first; then providers
        // the Pakfile names; then other providers, newest provided version
        // first, by provider name for determinism.
        let named = |s: &SolvableId| {
            let owner = self.owner_of(*s);
            self.candidate_of(owner)
                .is_some_and(|i| self.root_names.contains(&self.cands[i].info.name))
        };
        solvables.sort_by(|a, b| {
            let (sa, sb) = (&self.solvs[a.0 as usize], &self.solvs[b.0 as usize]);
            let real = |s: &Solv| matches!(s.kind, SolvKind::Real(_));
            real(sb)
                .cmp(&real(sa))
                .then_with(|| named(b).cmp(&named(a)))
                .then_with(|| sb.version().cmp(&sa.version()))
                .then_with(|| {
                    let (oa, ob) = (self.owner_of(*a), self.owner_of(*b));
                    let na = &self.cands[self.candidate_of(oa).unwrap_or(0)].info.name;
                    let nb = &self.cands[self.candidate_of(ob).unwrap_or(0)].info.name;
                    na.cmp(nb)
                })
                .then(a.0.cmp(&b.0))
        });
    }

    async fn get_dependencies(&self, s: SolvableId) -> Dependencies {
        let solv = &self.solvs[s.0 as usize];
        let i = match solv.kind {
            SolvKind::Virtual(p) => {
                let provider_name = self.solvs[p.0 as usize].name;
                let vs = self.intern_vs(Vs {
                    name: provider_name,
                    kind: VsKind::Exact(p),
                });
                return Dependencies::Known(KnownDependencies {
                    requirements: vec![ConditionalRequirement::from(vs)],
                    constrains: vec![],
                });
            }
            SolvKind::Real(i) => i,
        };
        let info = &self.cands[i].info;
        let mut requirements = Vec::new();
        for r in &info.requires {
            let req =
                match requirement::parse(r) {
                    Ok(req) => req,
                    Err(e) => {
                        return Dependencies::Unknown(self.intern_string(format!(
                            "{} has a malformed requirement: {e}",
                            info.name
                        )));
                    }
                };
            // "a | b" where b is already on its way in (a root provides it):
            // take b rather than pulling a in, as a person would.
            let mut alts: Vec<&Dep> = req.alternatives.iter().collect();
            alts.sort_by_key(|d| !self.satisfied_by_roots.contains(&d.name));
            let sets: Vec<VersionSetId> = alts.iter().map(|d| self.dep_vs(d)).collect();
            let rq = if sets.len() == 1 {
                RvRequirement::Single(sets[0])
            } else {
                let mut unions = self.unions.borrow_mut();
                unions.push(sets);
                RvRequirement::Union(VersionSetUnionId((unions.len() - 1) as u32))
            };
            requirements.push(ConditionalRequirement::from(rq));
        }
        let mut constrains = Vec::new();
        for c in &info.conflicts {
            // Each alternative of a conflict is a conflict of its own.
            let Ok(req) = requirement::parse(c) else {
                continue;
            };
            for d in req.alternatives {
                constrains.push(self.intern_vs(Vs {
                    name: self.name_id(&d.name),
                    kind: VsKind::NotRange {
                        range: d.range,
                        owner: s,
                    },
                }));
            }
        }
        Dependencies::Known(KnownDependencies {
            requirements,
            constrains,
        })
    }
}

/// Resolves `roots` (name → requirement text) against `cands` (in
/// repository priority order) for `arch`. `prefer` maps names to versions
/// to keep when they still fit (the current lock, for `pak update PKG`).
/// Returns indices into `cands`, sorted by package name.
pub fn resolve(
    cands: &[Candidate],
    arch: &str,
    roots: &[(String, String)],
    prefer: &BTreeMap<String, String>,
) -> Result<Vec<usize>, ResolveError> {
    let mut universe = Universe::build(cands, arch, prefer);
    for (name, _) in roots {
        universe.satisfied_by_roots.insert(name.clone());
        universe.root_names.insert(name.clone());
        for c in cands.iter().filter(|c| c.info.name == *name) {
            for p in &c.info.provides {
                if let Ok((n, _)) = requirement::parse_provide(p) {
                    universe.satisfied_by_roots.insert(n);
                }
            }
        }
    }
    let mut reqs = Vec::new();
    for (name, range) in roots {
        let dep = requirement::parse_root(name, range)
            .map_err(|e| ResolveError::Invalid(format!("[packages] {name}: {e:#}")))?;
        if universe.group(universe.name_id(&dep.name)).is_empty() {
            return Err(ResolveError::Unknown {
                name: dep.name.clone(),
                suggestions: near_names(&universe.names, &dep.name),
            });
        }
        reqs.push(ConditionalRequirement::from(universe.dep_vs(&dep)));
    }
    let mut solver = Solver::new(universe);
    match solver.solve(Problem::new().requirements(reqs)) {
        Ok(solution) => {
            let u = solver.provider();
            let mut out: Vec<usize> = solution
                .into_iter()
                .filter_map(|s| u.candidate_of(s))
                .collect();
            out.sort_by(|a, b| cands[*a].info.name.cmp(&cands[*b].info.name));
            Ok(out)
        }
        Err(UnsolvableOrCancelled::Unsolvable(conflict)) => {
            let graph = conflict.graph(&solver);
            Err(ResolveError::Unsatisfiable(super::explain::explain(
                &graph,
                solver.provider(),
            )))
        }
        Err(UnsolvableOrCancelled::Cancelled(_)) => Err(ResolveError::Unsatisfiable(vec![
            "resolution was cancelled".into(),
        ])),
    }
}

fn near_names(names: &[&str], want: &str) -> Vec<String> {
    let mut scored: Vec<(f64, &&str)> = names
        .iter()
        .map(|n| (strsim::jaro_winkler(n, want), n))
        // A short name is inside too many others to suggest them all.
        .filter(|(s, n)| *s > 0.85 || (want.len() >= 3 && n.contains(want)))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(3)
        .map(|(_, n)| n.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::pakinfo::PakInfo;

    fn cand(
        name: &str,
        version: &str,
        requires: &[&str],
        provides: &[&str],
        conflicts: &[&str],
    ) -> Candidate {
        Candidate {
            info: PakInfo {
                name: name.into(),
                version: version.into(),
                arch: "x86_64".into(),
                summary: String::new(),
                license: String::new(),
                requires: requires.iter().map(|s| s.to_string()).collect(),
                provides: provides.iter().map(|s| s.to_string()).collect(),
                conflicts: conflicts.iter().map(|s| s.to_string()).collect(),
                special_files: vec![],
                origin: None,
            },
            repo: "r".into(),
            location: format!("{name}.pak"),
            sha256: "00".repeat(32),
            size: 0,
            archive_date: None,
        }
    }

    fn names(cands: &[Candidate], chosen: &[usize]) -> Vec<String> {
        chosen
            .iter()
            .map(|i| format!("{}={}", cands[*i].info.name, cands[*i].info.version))
            .collect()
    }

    fn roots(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn picks_highest_and_follows_requires_and_provides() {
        let c = vec![
            cand("app", "1.0", &["lib >= 2", "cmd:sh"], &[], &[]),
            cand("app", "2.0", &["lib >= 3", "cmd:sh"], &[], &[]),
            cand("lib", "2.5", &[], &[], &[]),
            cand("lib", "3.1", &[], &[], &[]),
            cand("busybox", "1.35", &[], &["cmd:sh"], &[]),
        ];
        let got = resolve(&c, "x86_64", &roots(&[("app", "*")]), &BTreeMap::new()).unwrap();
        assert_eq!(names(&c, &got), ["app=2.0", "busybox=1.35", "lib=3.1"]);
        let chosen: Vec<&PakInfo> = got.iter().map(|i| &c[*i].info).collect();
        assert!(crate::lock::closure::check_closure(&chosen).is_empty());
    }

    #[test]
    fn prefer_keeps_locked_versions_and_alternatives_work() {
        let c = vec![
            cand("app", "1.0", &["a | b"], &[], &[]),
            cand("app", "2.0", &["a | b"], &[], &[]),
            cand("b", "1", &[], &[], &[]),
        ];
        let prefer = BTreeMap::from([("app".to_string(), "1.0".to_string())]);
        let got = resolve(&c, "x86_64", &roots(&[("app", "*")]), &prefer).unwrap();
        assert_eq!(names(&c, &got), ["app=1.0", "b=1"]);
    }

    #[test]
    fn alternatives_a_root_satisfies_come_first() {
        let c = vec![
            cand("kernel", "1", &["heavy-tool | light-tool"], &[], &[]),
            cand("heavy-tool", "1", &["dep"], &[], &[]),
            cand("dep", "1", &[], &[], &[]),
            cand("me", "1", &[], &["light-tool"], &[]),
            cand("alpha", "1", &[], &["light-tool"], &[]),
        ];
        let got = resolve(
            &c,
            "x86_64",
            &roots(&[("kernel", "*"), ("me", "*")]),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(names(&c, &got), ["kernel=1", "me=1"]);
    }

    #[test]
    fn conflicts_and_versioned_provides() {
        let c = vec![
            cand("web", "1", &["httpd >= 2"], &[], &[]),
            cand("old-httpd", "9", &[], &["httpd = 1"], &[]),
            cand("new-httpd", "1", &[], &["httpd = 2"], &["old-httpd"]),
            cand(
                "mta",
                "1",
                &[],
                &["mail-transport-agent"],
                &["mail-transport-agent"],
            ),
        ];
        let got = resolve(
            &c,
            "x86_64",
            &roots(&[("web", "*"), ("mail-transport-agent", "*")]),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            names(&c, &got),
            ["mta=1", "new-httpd=1", "web=1"],
            "a package never conflicts with itself"
        );
        let err = resolve(
            &c,
            "x86_64",
            &roots(&[("web", "*"), ("old-httpd", "*")]),
            &BTreeMap::new(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("new-httpd") && msg.contains("old-httpd"),
            "{msg}"
        );
    }

    #[test]
    fn unsatisfiable_chain_is_explained() {
        let c = vec![
            cand("a", "2.0", &["b >= 3"], &[], &[]),
            cand("b", "2.0", &[], &[], &[]),
        ];
        let msg = resolve(&c, "x86_64", &roots(&[("a", "*")]), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("a 2.0") && msg.contains("b >= 3"), "{msg}");
    }

    #[test]
    fn a_conflict_is_told_in_sentences_top_to_bottom() {
        let (u9, u11) = ("1.22.1-9+deb12u9", "1.22.1-9+deb12u11");
        let c = vec![
            cand("nginx", u11, &[&format!("nginx-common = {u11}")], &[], &[]),
            cand("nginx-common", u11, &[], &[], &[]),
            cand("nginx-common", u9, &[], &[], &[]),
        ];
        let err = resolve(
            &c,
            "x86_64",
            &roots(&[("nginx", "*"), ("nginx-common", &format!("= {u9}"))]),
            &BTreeMap::new(),
        )
        .unwrap_err();
        let ResolveError::Unsatisfiable(lines) = &err else {
            panic!("{err}")
        };
        eprintln!("{err}");
        assert_eq!(
            lines,
            &[
                format!("The Pakfile asks for nginx and nginx-common = {u9}."),
                format!(
                    "nginx {u11} needs nginx-common = {u11}, but only one version of nginx-common can be installed, and the Pakfile asks for nginx-common = {u9}."
                ),
                format!("So nginx {u11} cannot be installed."),
            ]
        );
    }

    #[test]
    fn a_chain_ends_in_what_nothing_offers() {
        let c = vec![
            cand("app", "1", &["lib >= 2"], &[], &[]),
            cand("app", "2", &["lib >= 3"], &[], &[]),
            cand("lib", "2", &["tool"], &[], &[]),
        ];
        let err = resolve(&c, "x86_64", &roots(&[("app", "*")]), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        eprintln!("{err}");
        assert!(err.contains("no repository offers tool"), "{err}");
        assert!(
            err.contains("So no version of app can be installed."),
            "{err}"
        );
    }

    #[test]
    fn unknown_names_get_suggestions() {
        let c = vec![cand("nginx", "1", &[], &[], &[])];
        let msg = resolve(&c, "x86_64", &roots(&[("ngnix", "*")]), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("did you mean nginx"), "{msg}");
    }
}
