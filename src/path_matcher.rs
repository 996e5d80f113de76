//! Compiles an operation's field paths into a deterministic automaton over JSON locations.
//!
//! The body rewriter walks a response once, byte by byte; at each value it needs to know, in O(1),
//! whether some PII path can still match below it and whether a path ends here. The paths form a
//! tree with wildcards, so they are compiled like a regular expression: a trie (the NFA) and its
//! subset construction (the DFA). A location is then one `u32` state, and a subtree no path can
//! reach is `DEAD`, which the rewriter walks without looking anything up.
use std::collections::{BTreeSet, HashMap};

use crate::field_path::{FieldPath, Step};

/// A state of the automaton: where the walker is, relative to the compiled paths.
pub type State = u32;
/// No compiled path can match at or below this location.
pub const DEAD: State = u32::MAX;

#[derive(Default)]
struct NfaNode {
    members: HashMap<String, usize>,
    wildcard: Option<usize>,
    rule: Option<usize>,
    protected: bool,
}

struct DfaState {
    /// Transitions on member names, sorted by name; names not listed go to `wildcard`.
    members: Vec<(Box<str>, State)>,
    /// Array elements, and members whose name is not in `members`.
    wildcard: State,
    /// The rule of the path that ends here (lowest index wins where several do).
    rule: Option<u32>,
}

/// The compiled field paths of one operation.
pub struct PathMatcher {
    states: Vec<DfaState>,
}

/// A path that both a PII rule and a protected (non-customer) path reach.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict {
    pub rule: usize,
}

impl PathMatcher {
    /// Compiles `rules` (path → rule index, in priority order) and checks that none of them can
    /// reach a location that a `protected` path names.
    pub fn compile<'a>(rules: impl IntoIterator<Item = &'a FieldPath>, protected: impl IntoIterator<Item = &'a FieldPath>) -> Result<PathMatcher, Conflict> {
        let mut nfa = vec![NfaNode::default()];
        for (index, path) in rules.into_iter().enumerate() {
            let end = insert(&mut nfa, path);
            nfa[end].rule.get_or_insert(index);
        }
        for path in protected {
            let end = insert(&mut nfa, path);
            nfa[end].protected = true;
        }

        let mut ids: HashMap<BTreeSet<usize>, State> = HashMap::new();
        let mut sets: Vec<BTreeSet<usize>> = Vec::new();
        let mut states: Vec<DfaState> = Vec::new();
        let start: BTreeSet<usize> = [0].into_iter().collect();
        ids.insert(start.clone(), 0);
        sets.push(start);
        let mut next = 0;
        while next < sets.len() {
            let set = sets[next].clone();
            next += 1;
            let rule = set.iter().filter_map(|&n| nfa[n].rule).min();
            if let Some(rule) = rule {
                if set.iter().any(|&n| nfa[n].protected) {
                    return Err(Conflict { rule });
                }
            }
            let wildcard_set: BTreeSet<usize> = set.iter().filter_map(|&n| nfa[n].wildcard).collect();
            let names: BTreeSet<&String> = set.iter().flat_map(|&n| nfa[n].members.keys()).collect();
            let mut members = Vec::with_capacity(names.len());
            for name in names {
                let mut target = wildcard_set.clone();
                target.extend(set.iter().filter_map(|&n| nfa[n].members.get(name).copied()));
                members.push((name.clone().into_boxed_str(), intern(target, &mut ids, &mut sets)));
            }
            let wildcard = intern(wildcard_set, &mut ids, &mut sets);
            states.push(DfaState { members, wildcard, rule: rule.map(|r| r as u32) });
        }
        Ok(PathMatcher { states })
    }

    /// The state at the document root.
    pub fn root(&self) -> State {
        0
    }

    /// The state of member `name` of an object at `state`.
    #[inline]
    pub fn member(&self, state: State, name: &str) -> State {
        if state == DEAD {
            return DEAD;
        }
        let s = &self.states[state as usize];
        match s.members.binary_search_by(|(n, _)| (**n).cmp(name)) {
            Ok(i) => s.members[i].1,
            Err(_) => s.wildcard,
        }
    }

    /// The state of the elements of an array at `state`.
    #[inline]
    pub fn element(&self, state: State) -> State {
        if state == DEAD {
            return DEAD;
        }
        self.states[state as usize].wildcard
    }

    /// The rule of the path that ends at `state`, if any.
    #[inline]
    pub fn rule(&self, state: State) -> Option<u32> {
        if state == DEAD {
            return None;
        }
        self.states[state as usize].rule
    }

    /// Whether no path can match anywhere (an operation without response PII).
    pub fn is_empty(&self) -> bool {
        self.states.len() == 1 && self.states[0].members.is_empty() && self.states[0].wildcard == DEAD
    }
}

fn insert(nfa: &mut Vec<NfaNode>, path: &FieldPath) -> usize {
    let mut node = 0;
    for step in &path.steps {
        let existing = match step {
            Step::Member(name) => nfa[node].members.get(name).copied(),
            Step::Wildcard => nfa[node].wildcard,
        };
        node = match existing {
            Some(n) => n,
            None => {
                nfa.push(NfaNode::default());
                let n = nfa.len() - 1;
                match step {
                    Step::Member(name) => {
                        nfa[node].members.insert(name.clone(), n);
                    }
                    Step::Wildcard => nfa[node].wildcard = Some(n),
                }
                n
            }
        };
    }
    node
}

fn intern(set: BTreeSet<usize>, ids: &mut HashMap<BTreeSet<usize>, State>, sets: &mut Vec<BTreeSet<usize>>) -> State {
    if set.is_empty() {
        return DEAD;
    }
    if let Some(&id) = ids.get(&set) {
        return id;
    }
    let id = sets.len() as State;
    ids.insert(set.clone(), id);
    sets.push(set);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(texts: &[&str]) -> Vec<FieldPath> {
        texts.iter().map(|t| FieldPath::parse(t).expect("path")).collect()
    }

    #[test]
    fn follows_members_wildcards_and_priorities() {
        let rules = paths(&["$.a[*].name", "$.a[*].*", "$.b.c"]);
        let m = PathMatcher::compile(&rules, &[]).expect("compiles");
        let a = m.member(m.root(), "a");
        let el = m.element(a);
        assert_eq!(m.rule(m.member(el, "name")), Some(0), "the earlier, named rule wins");
        assert_eq!(m.rule(m.member(el, "city")), Some(1));
        assert_eq!(m.member(m.root(), "x"), DEAD);
        assert_eq!(m.rule(m.member(m.member(m.root(), "b"), "c")), Some(2));
        assert_eq!(m.element(m.member(m.root(), "b")), DEAD);
    }

    #[test]
    fn refuses_rules_on_protected_locations() {
        let rules = paths(&["$.orders[*].*"]);
        let protected = paths(&["$.orders[*].shipFrom"]);
        assert_eq!(PathMatcher::compile(&rules, &protected).err(), Some(Conflict { rule: 0 }));
        let ok = paths(&["$.orders[*].shipTo"]);
        assert!(PathMatcher::compile(&ok, &protected).is_ok());
    }

    #[test]
    fn empty_matcher() {
        let m = PathMatcher::compile(&[], &[]).expect("compiles");
        assert!(m.is_empty());
        assert_eq!(m.member(m.root(), "a"), DEAD);
    }
}
