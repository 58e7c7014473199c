//! Why no set of packages fits: sentences a person reads top to bottom,
//! in the manner of PubGrub's reports ("nginx 1.22.1-9+deb12u11 needs
//! nginx-common = 1.22.1-9+deb12u11, but only one version of nginx-common
//! can be installed, and the Pakfile asks for nginx-common =
//! 1.22.1-9+deb12u9").
//!
//! The solver (resolvo) hands over its conflict as a graph: the Pakfile's
//! requirements lead from a root to candidates, candidates' requirements to
//! other candidates (or to a node standing for "nothing offers this"), and
//! conflict edges leave every candidate that cannot go in beside another.
//! resolvo renders it as a tree of `├─` lines that repeats names; here each
//! fact is one sentence, said once, deepest facts first so every sentence
//! rests on ones already read.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use petgraph::Direction;
use petgraph::graph::NodeIndex;
use petgraph::visit::{DfsPostOrder, EdgeRef};
use resolvo::conflict::{ConflictCause, ConflictEdge, ConflictGraph, ConflictNode};
use resolvo::{Interner, Requirement};

/// How many versions of one package are named one by one before the rest
/// are summed up.
const SHOWN_VERSIONS: usize = 3;

/// The explanation, one sentence a line.
pub fn explain<I: Interner>(graph: &ConflictGraph, interner: &I) -> Vec<String> {
    let mut e = Explainer {
        graph,
        interner,
        installable: installable(graph),
        said: Vec::new(),
        explained: BTreeSet::new(),
    };
    let roots = e.requirements(graph.root_node);
    let asked: Vec<String> = roots.keys().map(|r| e.requirement(r)).collect();
    e.said
        .push(format!("The Pakfile asks for {}.", join(&asked)));
    let mut failing = Vec::new();
    for (req, targets) in &roots {
        if !targets.iter().any(|t| e.installable.contains(t)) {
            failing.push(e.why_not(req, targets, 0));
        }
    }
    for conclusion in failing {
        // A requirement nothing offers needs no "so": it is the reason.
        e.said.push(match conclusion.strip_prefix("no repository") {
            Some(rest) => format!("But no repository{rest}."),
            None => format!("So {conclusion}."),
        });
    }
    e.said
}

struct Explainer<'a, I: Interner> {
    graph: &'a ConflictGraph,
    interner: &'a I,
    installable: HashSet<NodeIndex>,
    said: Vec<String>,
    /// Candidates whose failure has been told already.
    explained: BTreeSet<NodeIndex>,
}

impl<I: Interner> Explainer<'_, I> {
    /// A node's requirements, each with its candidates, in a stable order.
    fn requirements(&self, node: NodeIndex) -> BTreeMap<Requirement, Vec<NodeIndex>> {
        let mut out: BTreeMap<Requirement, Vec<NodeIndex>> = BTreeMap::new();
        for e in self.graph.graph.edges_directed(node, Direction::Outgoing) {
            if let ConflictEdge::Requires(req) = e.weight() {
                out.entry(*req).or_default().push(e.target());
            }
        }
        for targets in out.values_mut() {
            targets.sort();
        }
        out
    }

    fn requirement(&self, req: &Requirement) -> String {
        let text = req.display(self.interner).to_string();
        // "nginx *" reads better as "nginx".
        text.strip_suffix(" *").map(str::to_string).unwrap_or(text)
    }

    fn candidate(&self, node: NodeIndex) -> String {
        match self.graph.graph[node] {
            ConflictNode::Solvable(s) => match s.solvable() {
                Some(s) => self.interner.display_solvable(s).to_string(),
                None => "the Pakfile".into(),
            },
            ConflictNode::UnresolvedDependency => "nothing".into(),
            ConflictNode::Excluded(why) => self.interner.display_string(why).to_string(),
        }
    }

    fn name(&self, node: NodeIndex) -> Option<String> {
        match self.graph.graph[node] {
            ConflictNode::Solvable(s) => s.solvable().map(|s| {
                self.interner
                    .display_name(self.interner.solvable_name(s))
                    .to_string()
            }),
            _ => None,
        }
    }

    /// Who asks for `node`: "the Pakfile asks for R", "a 1 needs R".
    fn wanted_by(&self, node: NodeIndex) -> Vec<String> {
        let mut out = BTreeSet::new();
        for e in self.graph.graph.edges_directed(node, Direction::Incoming) {
            if let ConflictEdge::Requires(req) = e.weight() {
                let req = self.requirement(req);
                out.insert(if e.source() == self.graph.root_node {
                    format!("the Pakfile asks for {req}")
                } else {
                    format!("{} needs {req}", self.candidate(e.source()))
                });
            }
        }
        out.into_iter().collect()
    }

    /// Says why no candidate of `req` can go in; returns the conclusion
    /// ("no version of nginx fits nginx *") for the caller's sentence.
    fn why_not(&mut self, req: &Requirement, targets: &[NodeIndex], depth: usize) -> String {
        let wanted = self.requirement(req);
        let real: Vec<NodeIndex> = targets
            .iter()
            .copied()
            .filter(|t| matches!(self.graph.graph[*t], ConflictNode::Solvable(_)))
            .collect();
        if real.is_empty() {
            return format!("no repository offers {wanted}");
        }
        // One candidate that clashes with something: say so in the same
        // sentence ("…, but only one version of X can be installed, …").
        if let [c] = real[..]
            && !self.explained.contains(&c)
            && let Some(clash) = self.clash(c)
        {
            self.explained.insert(c);
            return clash;
        }
        let mut told = 0;
        for &c in &real {
            if self.explained.contains(&c) {
                continue;
            }
            if told == SHOWN_VERSIONS {
                let rest = real.iter().filter(|c| !self.explained.contains(c)).count();
                self.said.push(format!(
                    "The {rest} other candidates for {wanted} cannot go in either, for reasons of the same kinds."
                ));
                break;
            }
            self.explained.insert(c);
            let sentence = self.why_candidate_not(c, depth);
            self.said.push(sentence);
            told += 1;
        }
        let names: BTreeSet<String> = real.iter().filter_map(|c| self.name(*c)).collect();
        match names.iter().next() {
            Some(_) if real.len() == 1 => {
                format!("{} cannot be installed", self.candidate(real[0]))
            }
            Some(name) if names.len() == 1 => format!("no version of {name} can be installed"),
            _ => format!("nothing that provides {wanted} can be installed"),
        }
    }

    /// The clause saying what `c` clashes with, if it is in conflict
    /// itself: "only one version of X can be installed, and the Pakfile
    /// asks for X = 1".
    fn clash(&self, c: NodeIndex) -> Option<String> {
        let (cause, other) = self
            .graph
            .graph
            .edges_directed(c, Direction::Outgoing)
            .filter_map(|e| match e.weight() {
                ConflictEdge::Conflict(cause) => Some((*cause, e.target())),
                ConflictEdge::Requires(_) => None,
            })
            .min_by_key(|(_, other)| *other)?;
        let me = self.candidate(c);
        let others = self.wanted_by(other);
        let because = if others.is_empty() {
            String::new()
        } else {
            format!(", and {}", join(&others))
        };
        Some(match cause {
            ConflictCause::ForbidMultipleInstances => format!(
                "only one version of {} can be installed{because}",
                self.name(c).unwrap_or_default()
            ),
            ConflictCause::Constrains(vs) => format!(
                "{me} cannot go in beside {}, which allows only {} {}{because}",
                self.candidate(other),
                self.interner
                    .display_name(self.interner.version_set_name(vs)),
                self.interner.display_version_set(vs)
            ),
            ConflictCause::Locked(_) => format!("{me} is not the locked version{because}"),
            ConflictCause::Excluded => format!("{me} is excluded{because}"),
        })
    }

    /// One sentence: why candidate `c` cannot go in.
    fn why_candidate_not(&mut self, c: NodeIndex, depth: usize) -> String {
        let me = self.candidate(c);
        if let Some(clash) = self.clash(c) {
            return if clash.starts_with(&me) {
                format!("{clash}.")
            } else {
                format!("{me} cannot go in: {clash}.")
            };
        }
        // Not in conflict itself: one of its requirements cannot be met.
        let reqs = self.requirements(c);
        for (req, targets) in &reqs {
            if targets.iter().any(|t| self.installable.contains(t)) {
                continue;
            }
            let wanted = self.requirement(req);
            if depth > 16 {
                return format!("{me} needs {wanted}, which cannot be met either.");
            }
            let why = self.why_not(req, targets, depth + 1);
            return format!("{me} needs {wanted}, but {why}.");
        }
        format!("{me} cannot go in beside the rest.")
    }
}

/// resolvo's own definition: a node is installable if it has no outgoing
/// conflict and every requirement has an installable candidate (computed
/// bottom up).
fn installable(graph: &ConflictGraph) -> HashSet<NodeIndex> {
    let g = &graph.graph;
    let mut ok = HashSet::new();
    let mut dfs = DfsPostOrder::new(g, graph.root_node);
    'nodes: while let Some(n) = dfs.next(g) {
        if graph.unresolved_node == Some(n) {
            continue;
        }
        let mut reqs: BTreeMap<Requirement, bool> = BTreeMap::new();
        for e in g.edges_directed(n, Direction::Incoming) {
            if matches!(e.weight(), ConflictEdge::Conflict(ConflictCause::Excluded)) {
                continue 'nodes;
            }
        }
        for e in g.edges_directed(n, Direction::Outgoing) {
            match e.weight() {
                ConflictEdge::Conflict(_) => continue 'nodes,
                ConflictEdge::Requires(r) => {
                    *reqs.entry(*r).or_default() |= ok.contains(&e.target());
                }
            }
        }
        if reqs.values().all(|met| *met) {
            ok.insert(n);
        }
    }
    ok
}

/// "a", "a and b", "a, b and c".
fn join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}
