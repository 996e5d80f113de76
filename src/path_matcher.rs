//! Compiles an operation's field paths into a deterministic automaton over JSON locations.
//!
//! The body rewriter walks a response once, byte by byte; at each value it needs to know, in O(1),
//! whether some PII path can still match below it and whether a path ends here. The paths form a
//! tree with wildcards, so they are compiled like a regular expression: a trie (the NFA) and its
//! subset construction (the DFA). A location is then one `u32` state; a subtree no path can reach
//! is `DEAD` (walked without lookups) and a subtree of non-customer data (a seller's address) is
//! `QUIET` (walked without lookups and without the drift detectors).
//!
//! What the automaton tolerates, because Amazon's responses drift (docs/POLICY.md, "Drift"):
//! * **member names in any case**: `shippingAddress` matches a path naming `ShippingAddress`
//!   (protecting more is safe, protecting less is a leak);
//! * **an object that arrives as an array of such objects**: the elements of an array found where
//!   a path expects an object are matched as that object (`"ShippingAddress":[{"Name":…}]`);
//! * **customer objects** ([`ObjectSpec`]): every member of the object at a path — including
//!   members no path names and everything nested in them — matches a catch-all rule, except the
//!   members on the object's list (non-PII members, and nested objects with rules of their own).
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::field_path::{FieldPath, Step};

/// A state of the automaton: where the walker is, relative to the compiled paths.
pub type State = u32;
/// No compiled path can match at or below this location (the drift detectors still look).
pub const DEAD: State = u32::MAX;
/// A non-customer subtree (seller, vendor, Amazon or carrier data): nothing matches and nothing
/// is scanned at or below it.
pub const QUIET: State = u32::MAX - 1;

/// A customer object at a path: every member matches `catch_all` unless listed in `except`.
pub struct ObjectSpec<'a> {
    pub path: &'a FieldPath,
    /// The rule index of the object's catch-all (a rule like any other: lower indices win).
    pub catch_all: usize,
    /// Member names (any case) the catch-all does not reach.
    pub except: Vec<String>,
}

#[derive(Default)]
struct NfaNode {
    /// Named children, by lowercase name.
    members: BTreeMap<String, usize>,
    wildcard: Option<usize>,
    /// A customer object's catch-all: every member not in `except`.
    others: Option<usize>,
    except: BTreeSet<String>,
    rule: Option<usize>,
    quiet: bool,
}

impl NfaNode {
    /// Whether an object is expected here (its elements are matched as this object if an array
    /// arrives instead).
    fn expects_object(&self) -> bool {
        !self.members.is_empty() || self.others.is_some()
    }
}

struct DfaState {
    /// Transitions on lowercase member names, sorted by [`fold_hash`]; names not listed go to
    /// `other`.
    members: Vec<(u64, Box<str>, State)>,
    /// A quick refusal for names no transition has: a bit per name length (63 for longer) and a
    /// bit per first byte (lowercased, modulo 64). Most member names of a response are looked up
    /// in states that have no transition for them.
    lengths: u64,
    firsts: u64,
    other: State,
    /// The elements of an array at this location.
    element: State,
    /// The rule that matches here (lowest index wins where several do).
    rule: Option<u32>,
}

/// The compiled field paths of one operation.
pub struct PathMatcher {
    states: Vec<DfaState>,
}

/// A rule that can match inside a quiet (non-customer) subtree.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict {
    pub rule: usize,
}

impl PathMatcher {
    /// Compiles `rules` (rule index and path; lower indices win where several match; one rule may
    /// have several paths), customer `objects` and `quiet` subtrees; refuses a rule that can match
    /// at or below a quiet location.
    pub fn compile<'a>(
        rules: impl IntoIterator<Item = (usize, &'a FieldPath)>,
        objects: impl IntoIterator<Item = ObjectSpec<'a>>,
        quiet: impl IntoIterator<Item = &'a FieldPath>,
    ) -> Result<PathMatcher, Conflict> {
        let mut nfa = vec![NfaNode::default()];
        for (index, path) in rules {
            let end = insert(&mut nfa, path);
            let rule = nfa[end].rule.get_or_insert(index);
            *rule = (*rule).min(index);
        }
        let mut catch_alls: HashMap<usize, usize> = HashMap::new();
        for object in objects {
            let node = *catch_alls.entry(object.catch_all).or_insert_with(|| {
                // Every member, element and descendant of the catch-all matches it too.
                nfa.push(NfaNode { rule: Some(object.catch_all), ..NfaNode::default() });
                let n = nfa.len() - 1;
                nfa[n].wildcard = Some(n);
                n
            });
            let at = insert(&mut nfa, object.path);
            nfa[at].others = Some(node);
            nfa[at].except.extend(object.except.iter().map(|m| m.to_ascii_lowercase()));
        }
        for path in quiet {
            let at = insert(&mut nfa, path);
            nfa[at].quiet = true;
            // Quiet all the way down: a rule that reaches anywhere below is a conflict.
            nfa[at].wildcard = Some(at);
        }

        let mut ids: HashMap<BTreeSet<usize>, State> = HashMap::new();
        let mut sets: Vec<BTreeSet<usize>> = Vec::new();
        let mut states: Vec<DfaState> = Vec::new();
        let mut quiet_states: Vec<bool> = Vec::new();
        let start: BTreeSet<usize> = [0].into_iter().collect();
        ids.insert(start.clone(), 0);
        sets.push(start);
        let mut next = 0;
        while next < sets.len() {
            let set = sets[next].clone();
            next += 1;
            let rule = set.iter().filter_map(|&n| nfa[n].rule).min();
            let quiet = set.iter().any(|&n| nfa[n].quiet);
            if let (Some(rule), true) = (rule, quiet) {
                return Err(Conflict { rule });
            }
            let mut other: BTreeSet<usize> = BTreeSet::new();
            let mut element: BTreeSet<usize> = BTreeSet::new();
            let mut names: BTreeSet<&str> = BTreeSet::new();
            for &n in &set {
                let node = &nfa[n];
                other.extend(node.wildcard);
                other.extend(node.others);
                element.extend(node.wildcard);
                if node.expects_object() {
                    element.insert(n);
                }
                names.extend(node.members.keys().map(String::as_str));
                if node.others.is_some() {
                    names.extend(node.except.iter().map(String::as_str));
                }
            }
            let mut members = Vec::with_capacity(names.len());
            for name in names {
                let mut target = BTreeSet::new();
                for &n in &set {
                    let node = &nfa[n];
                    target.extend(node.members.get(name).copied());
                    target.extend(node.wildcard);
                    if !node.except.contains(name) {
                        target.extend(node.others);
                    }
                }
                members.push((fold_hash(name), name.to_string().into_boxed_str(), intern(target, &mut ids, &mut sets)));
            }
            let other = intern(other, &mut ids, &mut sets);
            let element = intern(element, &mut ids, &mut sets);
            members.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let lengths = members.iter().fold(0u64, |m, (_, n, _)| m | length_bit(n.len()));
            let firsts = members.iter().fold(0u64, |m, (_, n, _)| m | first_bit(n.as_bytes().first().copied()));
            states.push(DfaState { members, lengths, firsts, other, element, rule: rule.map(|r| r as u32) });
            quiet_states.push(quiet);
        }
        // Transitions into a quiet state go to QUIET: the walker stops looking there.
        let quiet_of = |s: State| if s != DEAD && quiet_states.get(s as usize).copied().unwrap_or(false) { QUIET } else { s };
        for state in &mut states {
            state.other = quiet_of(state.other);
            state.element = quiet_of(state.element);
            for (_, _, t) in &mut state.members {
                *t = quiet_of(*t);
            }
        }
        Ok(PathMatcher { states })
    }

    /// The state at the document root.
    pub fn root(&self) -> State {
        0
    }

    /// The state of member `name` (any case) of an object at `state`.
    #[inline]
    pub fn member(&self, state: State, name: &str) -> State {
        let Some(s) = self.states.get(state as usize) else { return state };
        if s.lengths & length_bit(name.len()) == 0 || s.firsts & first_bit(name.as_bytes().first().map(u8::to_ascii_lowercase)) == 0 {
            return s.other;
        }
        // One hash of the case-folded name, a binary search over integers, one comparison.
        let hash = fold_hash(name);
        let first = s.members.partition_point(|(h, _, _)| *h < hash);
        for (h, stored, target) in &s.members[first..] {
            if *h != hash {
                break;
            }
            if stored.len() == name.len() && stored.bytes().zip(name.bytes()).all(|(a, b)| a == b.to_ascii_lowercase()) {
                return *target;
            }
        }
        s.other
    }

    /// The state of the elements of an array at `state`.
    #[inline]
    pub fn element(&self, state: State) -> State {
        match self.states.get(state as usize) {
            Some(s) => s.element,
            None => state,
        }
    }

    /// The rule of the path that ends at `state`, if any.
    #[inline]
    pub fn rule(&self, state: State) -> Option<u32> {
        self.states.get(state as usize).and_then(|s| s.rule)
    }

    /// Whether no path can match anywhere (an operation without response PII).
    pub fn is_empty(&self) -> bool {
        self.states.len() == 1 && self.states[0].members.is_empty() && self.states[0].other == DEAD && self.states[0].element == DEAD
    }
}

#[inline]
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

#[inline]
fn first_bit(first: Option<u8>) -> u64 {
    first.map_or(1, |b| 1 << (b & 63))
}

/// A hash of a member name that ignores ASCII case: 8 bytes at a time, each byte with its `0x20`
/// bit set (`A`→`a`; other bytes change too, the same way on both sides, and a match is confirmed
/// byte by byte).
#[inline]
fn fold_hash(name: &str) -> u64 {
    let b = name.as_bytes();
    let mut hash = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        hash = (hash.rotate_left(23) ^ (u64::from_le_bytes(word) | 0x2020_2020_2020_2020)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        for byte in &mut word[..rest.len()] {
            *byte |= 0x20;
        }
        hash = (hash.rotate_left(23) ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    hash ^ (hash >> 29)
}

fn insert(nfa: &mut Vec<NfaNode>, path: &FieldPath) -> usize {
    let mut node = 0;
    for step in &path.steps {
        let existing = match step {
            Step::Member(name) => nfa[node].members.get(&name.to_ascii_lowercase()).copied(),
            Step::Wildcard => nfa[node].wildcard,
        };
        node = match existing {
            Some(n) => n,
            None => {
                nfa.push(NfaNode::default());
                let n = nfa.len() - 1;
                match step {
                    Step::Member(name) => {
                        nfa[node].members.insert(name.to_ascii_lowercase(), n);
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

    fn rules_only(texts: &[&str]) -> PathMatcher {
        PathMatcher::compile(paths(texts).iter().enumerate(), [], &[]).expect("compiles")
    }

    fn walk(m: &PathMatcher, steps: &[&str]) -> State {
        steps.iter().fold(m.root(), |s, step| if *step == "[]" { m.element(s) } else { m.member(s, step) })
    }

    #[test]
    fn follows_members_wildcards_and_priorities() {
        let m = rules_only(&["$.a[*].name", "$.a[*].*", "$.b.c"]);
        let a = m.member(m.root(), "a");
        let el = m.element(a);
        assert_eq!(m.rule(m.member(el, "name")), Some(0), "the earlier, named rule wins");
        assert_eq!(m.rule(m.member(el, "city")), Some(1));
        assert_eq!(m.member(m.root(), "x"), DEAD);
        assert_eq!(m.rule(m.member(m.member(m.root(), "b"), "c")), Some(2));
        assert_eq!(m.rule(m.element(m.member(m.root(), "b"))), None, "b expects an object: its array's elements are b");
    }

    #[test]
    fn member_names_match_in_any_case() {
        let m = rules_only(&["$.payload.ShippingAddress.Name"]);
        for spelling in [["payload", "ShippingAddress", "Name"], ["Payload", "shippingAddress", "name"], ["PAYLOAD", "SHIPPINGADDRESS", "NAME"]] {
            assert_eq!(m.rule(walk(&m, &spelling)), Some(0), "{spelling:?}");
        }
        assert_eq!(walk(&m, &["payload", "ShippingAddresses"]), DEAD);
    }

    #[test]
    fn an_object_that_arrives_as_an_array_is_matched_element_by_element() {
        let m = rules_only(&["$.payload.ShippingAddress.Name", "$.payload.Orders[*].BuyerInfo.BuyerEmail"]);
        assert_eq!(m.rule(walk(&m, &["payload", "ShippingAddress", "[]", "Name"])), Some(0));
        assert_eq!(m.rule(walk(&m, &["payload", "ShippingAddress", "[]", "[]", "Name"])), Some(0), "nested arrays too");
        assert_eq!(m.rule(walk(&m, &["payload", "Orders", "[]", "BuyerInfo", "[]", "BuyerEmail"])), Some(1));
        assert_eq!(m.rule(walk(&m, &["[]", "payload", "ShippingAddress", "Name"])), Some(0), "a body that is an array of bodies");
    }

    #[test]
    fn customer_objects_match_every_member_but_their_exceptions() {
        let rules = paths(&["$.p.Address.Name", "$.p.Address.Geo.Lat"]);
        let objects = paths(&["$.p.Address", "$.p.Address.Geo"]);
        let specs =
            vec![ObjectSpec { path: &objects[0], catch_all: 2, except: vec!["CountryCode".into(), "Geo".into()] }, ObjectSpec { path: &objects[1], catch_all: 3, except: vec![] }];
        let m = PathMatcher::compile(rules.iter().enumerate(), specs, &[]).expect("compiles");
        assert_eq!(m.rule(walk(&m, &["p", "Address", "Name"])), Some(0), "a named rule wins over the catch-all");
        assert_eq!(m.rule(walk(&m, &["p", "Address", "Email2"])), Some(2), "a member no path names");
        assert_eq!(m.rule(walk(&m, &["p", "Address", "Contact", "Phones", "[]", "Number"])), Some(2), "and all below it");
        assert_eq!(m.rule(walk(&m, &["p", "Address", "countrycode"])), None, "an exception, in any case");
        assert_eq!(walk(&m, &["p", "Address", "CountryCode", "x"]), DEAD);
        assert_eq!(m.rule(walk(&m, &["p", "Address", "Geo", "Lat"])), Some(1));
        assert_eq!(m.rule(walk(&m, &["p", "Address", "Geo", "Alt"])), Some(3), "the nested object's own catch-all");
        assert_eq!(m.rule(walk(&m, &["p", "Address", "[]", "Email2"])), Some(2), "an object as an array");
        assert_eq!(m.rule(walk(&m, &["p", "Other"])), None);
    }

    #[test]
    fn quiet_subtrees_stop_matching_and_refuse_rules_inside() {
        let quiet = paths(&["$.orders[*].shipFrom"]);
        let m = PathMatcher::compile(paths(&["$.orders[*].shipTo.name"]).iter().enumerate(), [], &quiet).expect("compiles");
        assert_eq!(walk(&m, &["orders", "[]", "shipFrom"]), QUIET);
        assert_eq!(walk(&m, &["orders", "[]", "ShipFrom", "name"]), QUIET);
        assert_eq!(m.rule(walk(&m, &["orders", "[]", "shipTo", "name"])), Some(0));
        for bad in [&["$.orders[*].*"][..], &["$.orders[*].shipFrom.name"], &["$.orders[*].SHIPFROM.x.y"]] {
            assert_eq!(PathMatcher::compile(paths(bad).iter().enumerate(), [], &quiet).err(), Some(Conflict { rule: 0 }), "{bad:?}");
        }
    }

    #[test]
    fn empty_matcher() {
        let m = rules_only(&[]);
        assert!(m.is_empty());
        assert_eq!(m.member(m.root(), "a"), DEAD);
    }
}
