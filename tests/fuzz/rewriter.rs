//! Target (a): the response rewriter, through `Guard::protect_response_with`.
//!
//! Cases: JSON documents shaped like the responses of the catalog's PII operations — Amazon's
//! fixtures (tests/fixtures/spapi) or an empty object as the seed, values planted at the
//! operation's PII paths (markers: unique strings, numbers, containers holding them) and at its
//! non-customer paths (decoys), noise members named from the catalog's paths, random whitespace,
//! `\u` escapes, unicode and lone surrogates; then, for some, truncations, byte flips, insertions,
//! deletions, duplications and nesting near the depth limit. Per-class actions are random.
//!
//! Oracle: a model built from a reference parser (refjson) and a reference path matcher, both
//! written apart from the rewriter, that says what the rewriter must do:
//! * refuse (`InvalidJson`) exactly the bodies that are not JSON, or that hold a lone surrogate
//!   where the rewriter decodes (a PII value, a member name in a subtree a path can reach);
//!   `BodyTooLarge` exactly above `maxBodyBytes`;
//! * otherwise: output valid JSON (refjson, and serde_json too), every subtree without PII byte
//!   for byte the input's, every PII value treated by its class's action — a token that opens
//!   to exactly that value (its text, or its raw JSON) with its class, mode and kind, the exact
//!   deterministic token and pseudonym of a cache-free engine, the mask, `null`, or removal — the
//!   bytes between replaced values unchanged, the counts exact, and no marker that the model
//!   does not keep visible anywhere in the output, raw or decoded.
use std::collections::BTreeMap;

use spapi_guard::catalog::BUILTIN_CATALOG;
use spapi_guard::fail_closed::FailReason;
use spapi_guard::field_path::{FieldPath, Step};
use spapi_guard::guard::Guard;
use spapi_guard::pii::PiiClass;
use spapi_guard::policy::Action;
use spapi_guard::tokens::{Mode, TokenEngine, ValueKind};

use crate::engine::{byte_deletions, json_string, rust_bytes, Failure, Outcome, Rng, Target};
use crate::refjson::{self, Kind, Node, Text};

const KEY_HEX: &str = "8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

/// A step of a path: a member name or a wildcard (array element or any member).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PStep {
    Member(String),
    Wild,
}

fn steps_of(jsonpath: &str) -> Vec<PStep> {
    FieldPath::parse(jsonpath)
        .unwrap_or_else(|e| panic!("catalog path {jsonpath}: {e}"))
        .steps
        .into_iter()
        .map(|s| match s {
            Step::Member(n) => PStep::Member(n),
            Step::Wildcard => PStep::Wild,
        })
        .collect()
}

pub struct OpInfo {
    /// Index in the catalog's operations.
    pub index: usize,
    pub id: String,
    /// PII rules in priority order: path, class.
    pub rules: Vec<(Vec<PStep>, PiiClass)>,
    /// Non-customer paths (seller, vendor, carrier addresses).
    pub protected: Vec<Vec<PStep>>,
    pub fixtures: Vec<Vec<u8>>,
}

pub struct RewriterTarget {
    guard: Guard,
    /// The same policy with the smallest `maxBodyBytes` (1024).
    small: Guard,
    /// The same key, no token memory: the reference for deterministic tokens and pseudonyms.
    reference: TokenEngine,
    pub ops: Vec<OpInfo>,
    dict: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub op: usize,
    pub actions: [Action; 8],
    pub small_limit: bool,
    pub body: Vec<u8>,
    /// Every value planted (string cores and number texts): none may show unless the model keeps it.
    pub markers: Vec<String>,
}

fn guard_with(extra: &str) -> Guard {
    let policy = format!(r#"{{"version":1,"keys":{{"active":"k1","env":{{"k1":"K1"}}}}{extra}}}"#);
    Guard::load(policy.as_bytes(), &|_| Some(KEY_HEX.to_string())).expect("fuzz policy loads")
}

impl RewriterTarget {
    pub fn new() -> RewriterTarget {
        let guard = guard_with("");
        let small = guard_with(r#","maxBodyBytes":1024"#);
        let key: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&KEY_HEX[2 * i..2 * i + 2], 16).expect("hex")).collect();
        let mut keys = BTreeMap::new();
        keys.insert("k1".to_string(), key.try_into().expect("32 bytes"));
        let reference = TokenEngine::new(keys, "k1").expect("engine").with_recent_tokens(0);

        let file: serde_json::Value = serde_json::from_str(BUILTIN_CATALOG).expect("catalog");
        let mut protected_of: BTreeMap<String, Vec<Vec<PStep>>> = BTreeMap::new();
        for op in file["operations"].as_array().expect("operations") {
            let paths = op["nonCustomerPaths"].as_array().map(|a| a.iter().filter_map(|p| p["jsonpath"].as_str()).map(steps_of).collect()).unwrap_or_default();
            protected_of.insert(op["id"].as_str().expect("id").to_string(), paths);
        }
        let mut ops: Vec<OpInfo> = guard
            .catalog
            .operations
            .iter()
            .enumerate()
            .filter(|(_, op)| op.has_response_pii())
            .map(|(index, op)| OpInfo {
                index,
                id: op.id.clone(),
                rules: op.response_rules.iter().map(|r| (steps_of(&r.jsonpath), r.class)).collect(),
                protected: protected_of.get(&op.id).cloned().unwrap_or_default(),
                fixtures: Vec::new(),
            })
            .collect();

        // Amazon's response fixtures, by the operation they route to.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spapi");
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("INDEX.json")).expect("INDEX.json")).expect("index");
        let mut dict: Vec<String> = Vec::new();
        for entry in index.as_array().expect("index entries") {
            if entry["kind"] != "response" {
                continue;
            }
            let (Some(method), Some(path), Some(file)) = (entry["method"].as_str(), entry["path"].as_str(), entry["file"].as_str()) else { continue };
            let Some(i) = guard.catalog.route_index(method, path) else { continue };
            let Some(info) = ops.iter_mut().find(|o| o.index == i) else { continue };
            let body = std::fs::read(dir.join(file)).expect("fixture");
            if let Ok(tree) = refjson::parse(&body, false) {
                collect_keys(&tree, &mut dict);
                info.fixtures.push(body);
            }
        }
        for info in &ops {
            for (steps, _) in &info.rules {
                dict.extend(steps.iter().filter_map(|s| match s {
                    PStep::Member(n) => Some(n.clone()),
                    PStep::Wild => None,
                }));
            }
        }
        dict.sort();
        dict.dedup();
        RewriterTarget { guard, small, reference, ops, dict }
    }
}

fn collect_keys(node: &Node, out: &mut Vec<String>) {
    match &node.kind {
        Kind::Obj(members) => {
            for m in members {
                out.push(m.key.value.clone());
                collect_keys(&m.value, out);
            }
        }
        Kind::Arr(items) => items.iter().for_each(|n| collect_keys(n, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

/// A document being generated.
#[derive(Clone, Debug)]
enum G {
    Obj(Vec<(String, G)>),
    Arr(Vec<G>),
    Str(String),
    Num(String),
    Lit(&'static str),
}

fn to_g(node: &Node, doc: &[u8]) -> G {
    match &node.kind {
        Kind::Obj(ms) => G::Obj(ms.iter().map(|m| (m.key.value.clone(), to_g(&m.value, doc))).collect()),
        Kind::Arr(items) => G::Arr(items.iter().map(|n| to_g(n, doc)).collect()),
        Kind::Str(t) => G::Str(t.value.clone()),
        Kind::Num => G::Num(String::from_utf8_lossy(node.raw(doc)).into_owned()),
        Kind::Lit => G::Lit(match node.raw(doc) {
            b"true" => "true",
            b"false" => "false",
            _ => "null",
        }),
    }
}

const WORDS: &[&str] = &[
    "Seattle",
    "US",
    "WA",
    "98101",
    "Standard",
    "Shipped",
    "Unshipped",
    "2024-01-01T00:00:00Z",
    "ATVPDKIKX0DER",
    "x",
    "",
    "USD",
    "12.99",
    "Residential",
    "FBA",
    "MFN",
    "true",
    "null",
    "{}",
    "[]",
    "\"",
    "\\",
    "/",
    "a/b",
    "payload",
    "Name",
    "spgt1.",
    "spgt1.ds.k1.name.AAAA",
    "REDACTED",
];

const LITERALS: [&str; 3] = ["true", "false", "null"];

fn rand_char(rng: &mut Rng) -> char {
    let c = match rng.below(14) {
        0..=4 => rng.range(0x20, 0x7e) as u32,
        5 => rng.range(0, 0x1f) as u32,
        6 => rng.range(0xa0, 0xff) as u32,
        7 => rng.range(0x370, 0x3ff) as u32,
        8 => rng.range(0x4e00, 0x9fff) as u32,
        9 => rng.range(0x1f300, 0x1faff) as u32,
        10 => *rng.pick(&[0x2028, 0x2029, 0xfeff, 0xfffd, 0xffff, 0x10ffff, 0xe000, 0x7f, 0x85, 0x200b]),
        11 => *rng.pick(&['"' as u32, '\\' as u32, '/' as u32, '\'' as u32]),
        12 => rng.range(0x10000, 0x10ffff) as u32,
        _ => rng.range(0x800, 0xd7ff) as u32,
    };
    char::from_u32(c).unwrap_or('\u{fffd}')
}

fn junk(rng: &mut Rng, max: usize) -> String {
    (0..rng.small(max)).map(|_| rand_char(rng)).collect()
}

fn filler_string(rng: &mut Rng) -> String {
    if rng.chance(60) {
        rng.pick(WORDS).to_string()
    } else {
        junk(rng, 24)
    }
}

fn filler_number(rng: &mut Rng) -> String {
    rng.pick(&["0", "-0", "1", "-1", "1.5", "0.00", "1e10", "1E-7", "-2.5e+3", "12345678901234567890", "3.14159", "100"]).to_string()
}

fn filler(rng: &mut Rng, depth: usize, dict: &[String]) -> G {
    match rng.below(if depth > 3 { 5 } else { 8 }) {
        0 | 1 => G::Str(filler_string(rng)),
        2 => G::Num(filler_number(rng)),
        3 => G::Lit(LITERALS[rng.below(3)]),
        4 => G::Str(String::new()),
        5 | 6 => G::Obj((0..rng.small(4)).map(|_| (member_name(rng, dict), filler(rng, depth + 1, dict))).collect()),
        _ => G::Arr((0..rng.small(4)).map(|_| filler(rng, depth + 1, dict)).collect()),
    }
}

fn member_name(rng: &mut Rng, dict: &[String]) -> String {
    match rng.below(10) {
        0..=6 => rng.pick(dict).clone(),
        7 => junk(rng, 8),
        8 => String::new(),
        _ => {
            // A catalog name with its case changed: not the same member.
            let n = rng.pick(dict);
            if rng.chance(50) {
                n.to_lowercase()
            } else {
                n.to_uppercase()
            }
        }
    }
}

fn marker_core(rng: &mut Rng) -> String {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::from("Mk");
    for _ in 0..12 {
        s.push(ALNUM[rng.below(ALNUM.len())] as char);
    }
    s
}

fn marker_number(rng: &mut Rng) -> String {
    let digits: String = (0..12).map(|i| char::from(b'0' + if i == 0 { rng.range(1, 9) } else { rng.below(10) } as u8)).collect();
    match rng.below(5) {
        0 => digits,
        1 => format!("-{digits}"),
        2 => format!("{}.{}", &digits[..3], &digits[3..]),
        3 => format!("{}.{}E+{}", &digits[..1], &digits[1..], rng.below(300)),
        _ => format!("-0.{digits}e-{}", rng.below(9)),
    }
}

/// A value to plant at a PII path; its markers are added to `markers`.
fn pii_value(rng: &mut Rng, markers: &mut Vec<String>, depth: usize) -> G {
    match rng.below(20) {
        0..=10 => {
            let core = marker_core(rng);
            markers.push(core.clone());
            let s = match rng.below(6) {
                0 => core,
                1 => format!("{}{core}{}", junk(rng, 6), junk(rng, 6)),
                2 => format!("{core}@example.com"),
                3 => format!("{} {core}", rng.pick(WORDS)),
                4 => format!("{}{core}{}", "x".repeat(rng.small(20_000)), junk(rng, 4)),
                _ => format!("{core}{}", junk(rng, 3)),
            };
            G::Str(s)
        }
        11..=13 => {
            let n = marker_number(rng);
            markers.push(n.clone());
            G::Num(n)
        }
        14 | 15 if depth < 100 => {
            // A container holding markers (PII as an object: address blocks, attribute maps).
            let mut members = Vec::new();
            for _ in 0..rng.range(1, 3) {
                let v = pii_value(rng, markers, depth + 1);
                members.push((rng.pick(&["Name", "AddressLine1", "value", "x", ""]).to_string(), v));
            }
            if rng.chance(50) {
                G::Obj(members)
            } else {
                G::Arr(members.into_iter().map(|(_, v)| v).collect())
            }
        }
        16 => G::Str(String::new()),
        17 => G::Lit(LITERALS[rng.below(3)]),
        _ => G::Str(filler_string(rng)),
    }
}

/// Plants `leaf` at a location `steps` selects, building what is missing on the way.
fn plant(g: &mut G, steps: &[PStep], leaf: G, rng: &mut Rng, dict: &[String]) {
    let Some((first, rest)) = steps.split_first() else {
        *g = leaf;
        return;
    };
    match first {
        PStep::Member(name) => {
            if !matches!(g, G::Obj(_)) {
                *g = G::Obj(Vec::new());
            }
            let G::Obj(members) = g else { unreachable!() };
            let existing: Vec<usize> = members.iter().enumerate().filter(|(_, (k, _))| k == name).map(|(i, _)| i).collect();
            let i = if existing.is_empty() || rng.chance(3) {
                // (Now and then a second member of the same name: duplicate keys.)
                let at = rng.below(members.len() + 1);
                members.insert(at, (name.clone(), G::Lit("null")));
                at
            } else {
                existing[rng.below(existing.len())]
            };
            plant(&mut members[i].1, rest, leaf, rng, dict);
        }
        PStep::Wild => {
            if !matches!(g, G::Obj(_) | G::Arr(_)) {
                *g = if rng.chance(80) { G::Arr(Vec::new()) } else { G::Obj(Vec::new()) };
            }
            match g {
                G::Arr(items) => {
                    let i = if items.is_empty() || rng.chance(40) {
                        let at = rng.below(items.len() + 1);
                        items.insert(at, G::Lit("null"));
                        at
                    } else {
                        rng.below(items.len())
                    };
                    plant(&mut items[i], rest, leaf, rng, dict);
                }
                G::Obj(members) => {
                    let i = if members.is_empty() || rng.chance(40) {
                        let at = rng.below(members.len() + 1);
                        members.insert(at, (member_name(rng, dict), G::Lit("null")));
                        at
                    } else {
                        rng.below(members.len())
                    };
                    plant(&mut members[i].1, rest, leaf, rng, dict);
                }
                _ => unreachable!(),
            }
        }
    }
}

/// Adds noise somewhere along a random walk down the tree.
fn noise(g: &mut G, rng: &mut Rng, dict: &[String], depth: usize) {
    match g {
        G::Obj(members) => {
            if members.is_empty() || rng.chance(30) {
                let at = rng.below(members.len() + 1);
                members.insert(at, (member_name(rng, dict), filler(rng, depth + 1, dict)));
            } else {
                let i = rng.below(members.len());
                noise(&mut members[i].1, rng, dict, depth + 1);
            }
        }
        G::Arr(items) => {
            if items.is_empty() || rng.chance(30) {
                let at = rng.below(items.len() + 1);
                items.insert(at, filler(rng, depth + 1, dict));
            } else {
                let i = rng.below(items.len());
                noise(&mut items[i], rng, dict, depth + 1);
            }
        }
        _ => {
            if rng.chance(30) {
                *g = filler(rng, depth, dict);
            }
        }
    }
}

/// How a document is written.
struct Style {
    /// 0 none, 1 one space, 2 pretty, 3 random runs.
    ws: u8,
    /// Percent of characters written as `\u` escapes.
    escape: u32,
    upper_hex: bool,
    /// Percent of strings that get a lone surrogate escape.
    lone: u32,
}

fn write_ws(out: &mut Vec<u8>, style: &Style, rng: &mut Rng, depth: usize) {
    match style.ws {
        0 => {}
        1 => out.push(b' '),
        2 => {
            out.push(b'\n');
            out.extend(std::iter::repeat_n(b' ', 2 * depth.min(40)));
        }
        _ => {
            for _ in 0..rng.small(4) {
                out.push(*rng.pick(b" \t\n\r"));
            }
        }
    }
}

fn write_u(out: &mut Vec<u8>, unit: u32, style: &Style) {
    let s = if style.upper_hex { format!("\\u{unit:04X}") } else { format!("\\u{unit:04x}") };
    out.extend_from_slice(s.as_bytes());
}

fn write_str(out: &mut Vec<u8>, s: &str, style: &Style, rng: &mut Rng) {
    out.push(b'"');
    let lone_at = if style.lone > 0 && rng.chance(style.lone) { Some(rng.below(s.chars().count() + 1)) } else { None };
    for (i, c) in s.chars().enumerate() {
        if lone_at == Some(i) {
            write_lone(out, rng, style);
        }
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' if rng.chance(50) => out.extend_from_slice(b"\\n"),
            '\t' if rng.chance(50) => out.extend_from_slice(b"\\t"),
            '\u{8}' if rng.chance(50) => out.extend_from_slice(b"\\b"),
            '\u{c}' if rng.chance(50) => out.extend_from_slice(b"\\f"),
            '\r' if rng.chance(50) => out.extend_from_slice(b"\\r"),
            '/' if rng.chance(style.escape) => out.extend_from_slice(b"\\/"),
            c if (c as u32) < 0x20 || rng.chance(style.escape) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write_u(out, *unit as u32, style);
                }
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    if lone_at == Some(s.chars().count()) {
        write_lone(out, rng, style);
    }
    out.push(b'"');
}

fn write_lone(out: &mut Vec<u8>, rng: &mut Rng, style: &Style) {
    match rng.below(4) {
        0 => write_u(out, rng.range(0xd800, 0xdbff) as u32, style),
        1 => write_u(out, rng.range(0xdc00, 0xdfff) as u32, style),
        2 => {
            // A high surrogate followed by an escape that is not a low one.
            write_u(out, 0xd83d, style);
            write_u(out, 0x0041, style);
        }
        _ => {
            // Reversed pair.
            write_u(out, 0xde00, style);
            write_u(out, 0xd83d, style);
        }
    }
}

fn serialize(g: &G, out: &mut Vec<u8>, style: &Style, rng: &mut Rng, depth: usize) {
    match g {
        G::Obj(members) => {
            out.push(b'{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_ws(out, style, rng, depth + 1);
                write_str(out, k, style, rng);
                if style.ws == 3 {
                    write_ws(out, style, rng, depth + 1);
                }
                out.push(b':');
                if style.ws != 0 {
                    write_ws(out, style, rng, depth + 1);
                }
                serialize(v, out, style, rng, depth + 1);
            }
            if !members.is_empty() {
                write_ws(out, style, rng, depth);
            }
            out.push(b'}');
        }
        G::Arr(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_ws(out, style, rng, depth + 1);
                serialize(v, out, style, rng, depth + 1);
            }
            if !items.is_empty() {
                write_ws(out, style, rng, depth);
            }
            out.push(b']');
        }
        G::Str(s) => write_str(out, s, style, rng),
        G::Num(n) => out.extend_from_slice(n.as_bytes()),
        G::Lit(l) => out.extend_from_slice(l.as_bytes()),
    }
}

const INTERESTING: &[u8] = b"\"\\{}[],: \x00\x1f\x7f\x80\xc0\xff0-eun";
const SNIPPETS: &[&[u8]] = &[
    b"\\u0000",
    b"\\ud800",
    b"\\udc00",
    b",",
    b"\"",
    b"{}",
    b"[]",
    b"\"Name\":\"MkInserted00000\",",
    b"\xef\xbb\xbf",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xf4\x90\x80\x80",
    b"1e999",
    b"-",
    b"01",
    b"\\",
    b"\\u00",
    b"//",
    b"/*c*/",
    b"NaN",
    b"\t\r\n",
];

fn mutate(body: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..rng.range(1, 3) {
        let len = body.len();
        match rng.below(8) {
            0 if len > 0 => body.truncate(rng.below(len)),
            1 if len > 0 => {
                let i = rng.below(len);
                body[i] ^= 1 << rng.below(8);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                body[i] = *rng.pick(INTERESTING);
            }
            3 => {
                let at = rng.below(len + 1);
                let snippet = *rng.pick(SNIPPETS);
                body.splice(at..at, snippet.iter().copied());
            }
            4 if len > 0 => {
                let from = rng.below(len);
                let to = (from + rng.small(64)).min(len);
                body.drain(from..to);
            }
            5 if len > 0 => {
                let from = rng.below(len);
                let to = (from + rng.small(64)).min(len);
                let copy = body[from..to].to_vec();
                let at = rng.below(body.len() + 1);
                body.splice(at..at, copy);
            }
            6 => {
                // Nesting near the depth limit.
                let n = rng.range(120, 130);
                let mut wrapped = vec![b'['; n];
                wrapped.append(body);
                wrapped.extend(std::iter::repeat_n(b']', n));
                *body = wrapped;
            }
            _ => {
                let at = rng.below(len + 1);
                body.insert(at, *rng.pick(INTERESTING));
            }
        }
    }
}

fn random_actions(rng: &mut Rng) -> [Action; 8] {
    const ALL: [Action; 8] = [
        Action::Tokenize(Mode::Deterministic),
        Action::Tokenize(Mode::Deterministic),
        Action::Tokenize(Mode::Deterministic),
        Action::Tokenize(Mode::Randomized),
        Action::Hash,
        Action::Redact,
        Action::Clear,
        Action::Remove,
    ];
    match rng.below(20) {
        0..=7 => [Action::Tokenize(Mode::Deterministic); 8],
        8..=10 => [Action::Tokenize(Mode::Randomized); 8],
        11 => [*rng.pick(&ALL[4..]); 8],
        _ => std::array::from_fn(|_| *rng.pick(&ALL)),
    }
}

impl Target for RewriterTarget {
    type Case = Case;

    fn name(&self) -> &'static str {
        "rewriter"
    }

    fn generate(&mut self, rng: &mut Rng) -> Case {
        let with_fixture: Vec<usize> = (0..self.ops.len()).filter(|&i| !self.ops[i].fixtures.is_empty()).collect();
        let op = if rng.chance(50) && !with_fixture.is_empty() { *rng.pick(&with_fixture) } else { rng.below(self.ops.len()) };
        let info = &self.ops[op];
        let dict = &self.dict;
        let mut markers = Vec::new();
        let mut doc = if !info.fixtures.is_empty() && rng.chance(60) {
            let fixture = rng.pick(&info.fixtures);
            to_g(&refjson::parse(fixture, false).expect("fixture parses"), fixture)
        } else {
            G::Obj(Vec::new())
        };
        let verbatim = matches!(doc, G::Obj(ref m) if !m.is_empty()) && rng.chance(10);
        if !verbatim {
            for _ in 0..rng.range(1, 10) {
                let (steps, _) = rng.pick(&info.rules);
                let leaf = pii_value(rng, &mut markers, steps.len());
                plant(&mut doc, steps, leaf, rng, dict);
            }
            if !info.protected.is_empty() && rng.chance(30) {
                // A decoy at a non-customer path: not PII, kept as it is.
                let steps = rng.pick(&info.protected).clone();
                let core = format!("Decoy{}", marker_core(rng));
                markers.push(core.clone());
                plant(&mut doc, &steps, G::Str(core), rng, dict);
            }
            for _ in 0..rng.small(12) {
                noise(&mut doc, rng, dict, 0);
            }
        }
        let style =
            Style { ws: rng.below(4) as u8, escape: *rng.pick(&[0, 0, 2, 10, 50, 100]), upper_hex: rng.chance(50), lone: if rng.chance(8) { *rng.pick(&[5, 30]) } else { 0 } };
        let mut body = Vec::new();
        if rng.chance(10) {
            write_ws(&mut body, &Style { ws: 3, ..style }, rng, 0);
        }
        serialize(&doc, &mut body, &style, rng, 0);
        if rng.chance(10) {
            write_ws(&mut body, &Style { ws: 3, ..style }, rng, 0);
        }
        if rng.chance(25) {
            mutate(&mut body, rng);
        }
        Case { op, actions: random_actions(rng), small_limit: rng.chance(5), body, markers }
    }

    fn check(&mut self, case: &Case) -> Result<Outcome, Failure> {
        let info = &self.ops[case.op];
        let guard = if case.small_limit { &self.small } else { &self.guard };
        let op = &guard.catalog.operations[info.index];
        let result = guard.protect_response_with(op, &case.body, &case.actions);

        if case.body.len() > guard.policy.max_body_bytes {
            return match result {
                Err(FailReason::BodyTooLarge) => Ok("refused_too_large"),
                other => {
                    Err(Failure::new("too_large_not_refused", format!("{} bytes > maxBodyBytes {}: {:?}", case.body.len(), guard.policy.max_body_bytes, other.map(|p| p.counts))))
                }
            };
        }
        if let Err(FailReason::BodyTooLarge) = result {
            return Err(Failure::new("refused_too_large_wrongly", format!("{} bytes <= maxBodyBytes", case.body.len())));
        }

        let (tree, lenient) = match refjson::parse(&case.body, false) {
            Ok(t) => (t, false),
            Err(e) => match refjson::parse(&case.body, true) {
                Ok(t) if e.what == "lone surrogate" => (t, true),
                _ => {
                    return match result {
                        Err(FailReason::InvalidJson) => Ok("refused_invalid"),
                        Err(other) => Err(Failure::new("wrong_refusal", format!("invalid JSON ({} at {}) refused as {other:?}", e.what, e.offset))),
                        Ok(p) => Err(Failure::new(
                            "accepted_invalid_json",
                            format!("the reference parser refuses it ({} at byte {}) but the rewriter accepted it ({} PII values)", e.what, e.offset, p.counts.total()),
                        )),
                    };
                }
            },
        };

        let paths: Vec<&[PStep]> = info.rules.iter().map(|(s, _)| s.as_slice()).chain(info.protected.iter().map(Vec::as_slice)).collect();
        let model = Model { rules: &info.rules, paths: &paths, actions: &case.actions, doc: &case.body };
        let root_alive: Vec<usize> = (0..paths.len()).collect();
        if lenient {
            if let Some(at) = model.decoded_lone(&tree, &root_alive, 0) {
                return match result {
                    Err(FailReason::InvalidJson) => Ok("refused_lone_surrogate"),
                    Err(other) => Err(Failure::new("wrong_refusal", format!("lone surrogate refused as {other:?}"))),
                    Ok(_) => Err(Failure::new("accepted_lone_surrogate_where_decoded", format!("a lone surrogate at byte {at}, where the rewriter decodes, was accepted"))),
                };
            }
        }
        let protected = match result {
            Ok(p) => p,
            Err(e) => {
                return Err(Failure::new(
                    "refused_valid_json",
                    format!("valid JSON (per the reference parser{}) refused: {e:?}", if lenient { ", lone surrogates only where not decoded" } else { "" }),
                ))
            }
        };

        let mut counts = [[0u32; 5]; 8];
        let mut removed = false;
        let expected = model.eval(&tree, &root_alive, 0, &mut counts, &mut removed).ok_or_else(|| Failure::new("model", "the root cannot be removed"))?;

        for class in PiiClass::ALL {
            for (slot, action) in [Action::Tokenize(Mode::Deterministic), Action::Hash, Action::Redact, Action::Clear, Action::Remove].into_iter().enumerate() {
                let (got, want) = (protected.counts.get(class, action), counts[class.index()][slot]);
                if got != want {
                    return Err(Failure::new("counts", format!("{class} {}: counted {got}, the model says {want}", action.name())));
                }
            }
        }

        let unchanged = matches!(expected, Exp::Keep(_));
        let output: &[u8] = match &protected.body {
            Some(b) => b,
            None if unchanged => &case.body,
            None => return Err(Failure::new("pii_passed_unchanged", "the rewriter returned the body unchanged, the model replaces PII in it")),
        };
        let out_tree = refjson::parse(output, lenient).map_err(|e| Failure::new("output_invalid_json", format!("output: {} at byte {}", e.what, e.offset)))?;
        // A third parser: what serde_json reads in the input it must read in the output. (It
        // refuses some valid JSON the rewriter rightly passes on: 128 nested containers — it
        // stops at 127 — numbers beyond f64, lone surrogates. Those cases are counted apart.)
        let serde_reads_input = serde_json::from_slice::<serde_json::Value>(&case.body).is_ok();
        if serde_reads_input {
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(output) {
                return Err(Failure::new("output_rejected_by_serde_json", format!("serde_json reads the input, not the output: {e}")));
            }
        }

        let mut replaced = Vec::new();
        self.compare(&expected, &out_tree, &case.body, output, &mut replaced)?;
        if !removed {
            // Every byte outside the replaced values is the input's.
            let (mut at_in, mut at_out) = (0, 0);
            for (i, o) in &replaced {
                if case.body[at_in..i.0] != output[at_out..o.0] {
                    return Err(Failure::new("bytes_changed", format!("bytes differ between input {at_in}..{} and output {at_out}..{}", i.0, o.0)));
                }
                (at_in, at_out) = (i.1, o.1);
            }
            if case.body[at_in..] != output[at_out..] {
                return Err(Failure::new("bytes_changed", "bytes differ after the last replaced value"));
            }
        }

        // No planted value shows unless the model keeps it visible (clear actions, decoys).
        let mut visible = Vec::new();
        visible_text(&expected, &case.body, &mut visible);
        let mut out_texts = Vec::new();
        all_text(&out_tree, &mut out_texts);
        for marker in &case.markers {
            if visible.iter().any(|v| v.contains(marker.as_str())) {
                continue;
            }
            let raw = output.windows(marker.len()).any(|w| w == marker.as_bytes());
            if raw || out_texts.iter().any(|t| t.contains(marker.as_str())) {
                return Err(Failure::new("pii_in_clear", format!("planted value {marker} appears in the output")));
            }
        }

        Ok(match (lenient, unchanged, removed) {
            (true, _, _) => "accepted_lone_surrogate_outside_pii",
            _ if !serde_reads_input => "accepted_beyond_serde_json_limits",
            (_, true, _) => "unchanged",
            (_, _, true) => "changed_with_removals",
            _ => "changed",
        })
    }

    fn shrink(&self, case: &Case) -> Vec<Case> {
        let with_body = |body: Vec<u8>| Case { body, ..case.clone() };
        let mut out = Vec::new();
        if case.actions != [Action::Tokenize(Mode::Deterministic); 8] {
            out.push(Case { actions: [Action::Tokenize(Mode::Deterministic); 8], ..case.clone() });
        }
        if let Ok(tree) = refjson::parse(&case.body, true) {
            let mut cuts = Vec::new();
            removals(&tree, &mut cuts);
            // Larger cuts first.
            cuts.sort_by_key(|(a, b)| std::cmp::Reverse(b - a));
            for (a, b) in cuts.into_iter().take(400) {
                let mut body = case.body.clone();
                body.drain(a..b);
                out.push(with_body(body));
            }
            let minified = minify(&case.body);
            if minified.len() < case.body.len() {
                out.push(with_body(minified));
            }
        }
        out.extend(byte_deletions(&case.body, 600).into_iter().map(with_body));
        out
    }

    fn describe(&self, case: &Case) -> String {
        let actions: Vec<String> = PiiClass::ALL.iter().map(|c| format!("{}:{:?}", c, case.actions[c.index()])).collect();
        format!(
            "{{\"operation\":{},\"actions\":{},\"maxBodyBytes\":{},\"body\":{},\"body_rust\":{}}}",
            json_string(&self.ops[case.op].id),
            json_string(&actions.join(", ")),
            if case.small_limit { 1024 } else { self.guard.policy.max_body_bytes },
            json_string(&String::from_utf8_lossy(&case.body)),
            json_string(&rust_bytes(&case.body))
        )
    }
}

/// Byte ranges whose removal drops one member or element with its separator.
fn removals(node: &Node, out: &mut Vec<(usize, usize)>) {
    match &node.kind {
        Kind::Obj(ms) => {
            let spans: Vec<(usize, usize)> = ms.iter().map(|m| (m.start, m.value.end)).collect();
            separated(&spans, out);
            ms.iter().for_each(|m| removals(&m.value, out));
        }
        Kind::Arr(items) => {
            let spans: Vec<(usize, usize)> = items.iter().map(|n| (n.start, n.end)).collect();
            separated(&spans, out);
            items.iter().for_each(|n| removals(n, out));
        }
        _ => {}
    }
}

fn separated(spans: &[(usize, usize)], out: &mut Vec<(usize, usize)>) {
    for (i, &(a, b)) in spans.iter().enumerate() {
        if i + 1 < spans.len() {
            out.push((a, spans[i + 1].0));
        } else if i > 0 {
            out.push((spans[i - 1].1, b));
        } else {
            out.push((a, b));
        }
    }
}

/// The body without whitespace outside strings.
fn minify(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
            in_string = b == b'"';
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The model: what the rewriter must do with a parsed document
// ---------------------------------------------------------------------------------------------

/// A replaced value: its byte range in the input, then in the output.
type Replaced = ((usize, usize), (usize, usize));

/// The expected output, mirroring the input tree.
enum Exp<'a> {
    /// The subtree, byte for byte.
    Keep(&'a Node),
    Obj(Vec<(&'a Text, Exp<'a>)>),
    Arr(Vec<Exp<'a>>),
    Token {
        node: &'a Node,
        class: PiiClass,
        mode: Mode,
        kind: ValueKind,
        plain: Vec<u8>,
    },
    Hash {
        node: &'a Node,
        class: PiiClass,
        plain: Vec<u8>,
    },
    Mask {
        node: &'a Node,
    },
    Null {
        node: &'a Node,
    },
}

struct Model<'a> {
    rules: &'a [(Vec<PStep>, PiiClass)],
    /// Rule paths, then non-customer paths: together they decide where the rewriter decodes names.
    paths: &'a [&'a [PStep]],
    actions: &'a [Action; 8],
    doc: &'a [u8],
}

enum Loc<'a> {
    Key(&'a str),
    Index,
}

impl Model<'_> {
    /// The paths still alive one step below `alive` (at `depth`).
    fn step(&self, alive: &[usize], depth: usize, loc: &Loc) -> Vec<usize> {
        alive
            .iter()
            .copied()
            .filter(|&p| {
                self.paths[p].get(depth).is_some_and(|s| match (s, loc) {
                    (PStep::Wild, _) => true,
                    (PStep::Member(n), Loc::Key(k)) => n == k,
                    (PStep::Member(_), Loc::Index) => false,
                })
            })
            .collect()
    }

    /// The rule of the location `alive` reached at `depth` steps: the first rule ending there.
    fn rule(&self, alive: &[usize], depth: usize) -> Option<PiiClass> {
        alive.iter().copied().filter(|&p| p < self.rules.len() && self.rules[p].0.len() == depth).min().map(|p| self.rules[p].1)
    }

    /// Where the rewriter must meet (and refuse) a lone surrogate: a member name of an object a
    /// path can reach, or a string value at a PII path. Returns its offset.
    fn decoded_lone(&self, node: &Node, alive: &[usize], depth: usize) -> Option<usize> {
        if depth > 0 && self.rule(alive, depth).is_some() {
            if let Kind::Str(t) = &node.kind {
                if t.lone {
                    return Some(node.start);
                }
            }
        }
        match &node.kind {
            Kind::Obj(ms) => ms.iter().find_map(|m| {
                if !alive.is_empty() && m.key.lone {
                    return Some(m.start);
                }
                self.decoded_lone(&m.value, &self.step(alive, depth, &Loc::Key(&m.key.value)), depth + 1)
            }),
            Kind::Arr(items) => {
                let child = self.step(alive, depth, &Loc::Index);
                items.iter().find_map(|n| self.decoded_lone(n, &child, depth + 1))
            }
            _ => None,
        }
    }

    /// The expected output of `node` (None: removed), counting what the handler sees.
    fn eval<'n>(&self, node: &'n Node, alive: &[usize], depth: usize, counts: &mut [[u32; 5]; 8], removed: &mut bool) -> Option<Exp<'n>> {
        let class = if depth == 0 { None } else { self.rule(alive, depth) };
        let inner = match &node.kind {
            Kind::Obj(ms) => {
                let mut children = Vec::with_capacity(ms.len());
                let mut edited = false;
                for m in ms {
                    let child = self.step(alive, depth, &Loc::Key(&m.key.value));
                    match self.eval(&m.value, &child, depth + 1, counts, removed) {
                        Some(e) => {
                            edited |= !matches!(e, Exp::Keep(_));
                            children.push((&m.key, e));
                        }
                        None => edited = true,
                    }
                }
                if edited {
                    Exp::Obj(children)
                } else {
                    Exp::Keep(node)
                }
            }
            Kind::Arr(items) => {
                let child = self.step(alive, depth, &Loc::Index);
                let mut children = Vec::with_capacity(items.len());
                let mut edited = false;
                for n in items {
                    match self.eval(n, &child, depth + 1, counts, removed) {
                        Some(e) => {
                            edited |= !matches!(e, Exp::Keep(_));
                            children.push(e);
                        }
                        None => edited = true,
                    }
                }
                if edited {
                    Exp::Arr(children)
                } else {
                    Exp::Keep(node)
                }
            }
            _ => Exp::Keep(node),
        };
        let Some(class) = class else { return Some(inner) };
        let action = self.actions[class.index()];
        let (kind, plain) = match &node.kind {
            // Literals carry no PII.
            Kind::Lit => return Some(inner),
            // An empty string carries none either, unless the field is removed.
            Kind::Str(t) if t.value.is_empty() && action != Action::Remove => return Some(inner),
            Kind::Str(t) => (ValueKind::Text, t.value.as_bytes().to_vec()),
            _ => (ValueKind::RawJson, node.raw(self.doc).to_vec()),
        };
        let slot = match action {
            Action::Tokenize(_) => 0,
            Action::Hash => 1,
            Action::Redact => 2,
            Action::Clear => 3,
            Action::Remove => 4,
        };
        counts[class.index()][slot] += 1;
        Some(match action {
            Action::Clear => inner,
            Action::Remove => {
                *removed = true;
                return None;
            }
            Action::Tokenize(mode) => Exp::Token { node, class, mode, kind, plain },
            Action::Hash => Exp::Hash { node, class, plain },
            Action::Redact if kind == ValueKind::Text => Exp::Mask { node },
            Action::Redact => Exp::Null { node },
        })
    }
}

impl RewriterTarget {
    /// Checks the output tree against the model; collects (input span, output span) of each
    /// replaced value.
    fn compare(&self, exp: &Exp, out: &Node, input: &[u8], output: &[u8], replaced: &mut Vec<Replaced>) -> Result<(), Failure> {
        let at = |what: &str| Failure::new("wrong_output", format!("{what} (output bytes {}..{})", out.start, out.end));
        let out_str = || match &out.kind {
            Kind::Str(t) => Ok(t.value.as_str()),
            _ => Err(at("expected a string here")),
        };
        match exp {
            Exp::Keep(n) => {
                if n.raw(input) != out.raw(output) {
                    return Err(Failure::new("kept_value_changed", format!("input {}..{} changed in output {}..{}", n.start, n.end, out.start, out.end)));
                }
            }
            Exp::Obj(children) => {
                let Kind::Obj(ms) = &out.kind else { return Err(at("expected an object")) };
                if ms.len() != children.len() {
                    return Err(at(&format!("object with {} members, expected {}", ms.len(), children.len())));
                }
                for ((key, e), m) in children.iter().zip(ms) {
                    if &m.key != *key {
                        return Err(at(&format!("member {:?}, expected {:?}", m.key.value, key.value)));
                    }
                    self.compare(e, &m.value, input, output, replaced)?;
                }
            }
            Exp::Arr(children) => {
                let Kind::Arr(items) = &out.kind else { return Err(at("expected an array")) };
                if items.len() != children.len() {
                    return Err(at(&format!("array of {} elements, expected {}", items.len(), children.len())));
                }
                for (e, n) in children.iter().zip(items) {
                    self.compare(e, n, input, output, replaced)?;
                }
            }
            Exp::Token { node, class, mode, kind, plain } => {
                let token = out_str()?;
                let opened = self.guard.tokens.open(token, 0).map_err(|e| Failure::new("token_does_not_open", format!("{token}: {e}")))?;
                if opened.class != *class || opened.mode != *mode || opened.kind != *kind || &opened.plaintext != plain {
                    return Err(Failure::new(
                        "token_opens_to_other_value",
                        format!(
                            "token at output {}..{} opens to {:?}/{:?}/{:?} {:?}, expected {class:?}/{mode:?}/{kind:?} {:?}",
                            out.start,
                            out.end,
                            opened.class,
                            opened.mode,
                            opened.kind,
                            String::from_utf8_lossy(&opened.plaintext),
                            String::from_utf8_lossy(plain)
                        ),
                    ));
                }
                if *mode == Mode::Deterministic {
                    let want = self.reference.seal(0, *class, *mode, *kind, plain).unwrap_or_default();
                    if token != want {
                        return Err(Failure::new("deterministic_token_differs", format!("{token} != reference {want}")));
                    }
                }
                replaced.push(((node.start, node.end), (out.start, out.end)));
            }
            Exp::Hash { node, class, plain } => {
                let mut want = String::new();
                self.reference.hash_into(*class, plain, &mut want);
                if out_str()? != want {
                    return Err(Failure::new("pseudonym_differs", format!("{} != reference {want}", out_str()?)));
                }
                replaced.push(((node.start, node.end), (out.start, out.end)));
            }
            Exp::Mask { node } => {
                if out_str()? != self.guard.policy.redact_mask {
                    return Err(at("expected the redaction mask"));
                }
                replaced.push(((node.start, node.end), (out.start, out.end)));
            }
            Exp::Null { node } => {
                if !matches!(out.kind, Kind::Lit) || out.raw(output) != b"null" {
                    return Err(at("expected null for a redacted non-string value"));
                }
                replaced.push(((node.start, node.end), (out.start, out.end)));
            }
        }
        Ok(())
    }
}

/// The text the expected output keeps: raw bytes and decoded strings of kept subtrees, and names.
fn visible_text(exp: &Exp, doc: &[u8], out: &mut Vec<String>) {
    match exp {
        Exp::Keep(n) => {
            out.push(String::from_utf8_lossy(n.raw(doc)).into_owned());
            all_text(n, out);
        }
        Exp::Obj(children) => {
            for (k, e) in children {
                out.push(k.value.clone());
                visible_text(e, doc, out);
            }
        }
        Exp::Arr(children) => children.iter().for_each(|e| visible_text(e, doc, out)),
        _ => {}
    }
}

/// Every decoded string and member name of a tree.
fn all_text(node: &Node, out: &mut Vec<String>) {
    match &node.kind {
        Kind::Obj(ms) => {
            for m in ms {
                out.push(m.key.value.clone());
                all_text(&m.value, out);
            }
        }
        Kind::Arr(items) => items.iter().for_each(|n| all_text(n, out)),
        Kind::Str(t) => out.push(t.value.clone()),
        _ => {}
    }
}
