//! Target (b): request routing and the audit log's path, `Catalog::route_index` and
//! `audit::redacted_path_with`.
//!
//! Cases: a method (the operation's, case variants, junk) and a path built from a catalog
//! template — literal segments sometimes re-cased or percent-encoded, parameters filled with
//! markers (unique values) decorated with percent-encodings, dots, unicode, slashes — with
//! structural changes (doubled or trailing slashes, dot segments, extra segments, very long
//! segments), a query of PII parameters (names as written, re-cased or percent-encoded; marker
//! values, sometimes percent-encoded), known parameters with values in and out of their shape,
//! unknown names (markers among them), bad escapes and controls, odd separators and fragments.
//!
//! Invariants, from a reference reading of request targets written apart from src/uri.rs:
//! * no panic;
//! * a route is right: a target that is not one canonical path (no leading `/`, an empty, dot,
//!   encoded-slash or backslash segment, a control character raw or encoded, a raw space or
//!   non-ASCII character, a bad `%` escape or invalid UTF-8 in the path or the query, a fragment)
//!   routes nowhere; otherwise its decoded segments match the template (literal segments equal),
//!   with the same method, and no other matching template of the method is more specific (literal
//!   beats parameter, position by position); a path built from a template without changes is
//!   routed;
//! * the logged path is the allow list's: the operation's template, or outside the catalog each
//!   segment that decodes to a catalog or pass-through literal and `{redacted}` for the others
//!   (`/{…}` past 16); each query parameter's decoded name if the table of src/query_params.rs or
//!   the operation's `queryPii` has it, else `{redacted}`; its decoded value only where the
//!   parameter is not PII, its row applies to the operation and the value has the row's shape,
//!   else `{redacted}`; nothing of a fragment;
//! * no marker ever shows in the logged path, raw or percent-decoded (markers are no literal, no
//!   parameter name and no value shape);
//! * the logged path holds no character that could break or forge a log line (controls, quotes,
//!   backslashes, spaces, angle brackets).
use std::collections::BTreeSet;

use spapi_guard::audit::{redacted_path, redacted_path_with, PathWords};
use spapi_guard::catalog::{Catalog, CatalogOverrides, Operation};
use spapi_guard::query_params::{Scope, Shape, QUERY_PARAMS};

use crate::engine::{json_string, Failure, Outcome, Rng, Target};

pub struct RouterTarget {
    /// The built-in catalog, and the same with operations a policy adds whose templates overlap
    /// (the built-in ones never do, so "literal beats parameter" is exercised only there).
    worlds: Vec<World>,
}

struct World {
    catalog: Catalog,
    /// What the audit log may print of a path outside the catalog (`None`: the built-in words,
    /// `redacted_path`).
    words: Option<PathWords>,
    /// The same, as the model reads it: template literals and pass-through segments.
    model_words: BTreeSet<String>,
    /// Per operation: method, template segments (None for a parameter), PII query parameters.
    routes: Vec<Route>,
    literals: Vec<String>,
}

struct Route {
    method: String,
    segments: Vec<Option<String>>,
    query_pii: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub world: usize,
    pub method: String,
    pub path: String,
    /// The values planted (path parameters, PII query values, unknown query names).
    pub markers: Vec<String>,
    /// The operation the path was built from when nothing was changed that could unroute it
    /// (other than what the reference reading refuses).
    pub expect_route: Option<usize>,
}

/// Operations a policy may add, overlapping each other and a built-in template.
const OVERLAPPING: &str = r#"{"operations":[
    {"id":"custom-v1.getSpecialOrder","method":"GET","pathTemplate":"/orders/v0/orders/special","queryPii":[{"param":"contact","class":"email"}]},
    {"id":"custom-v1.getA","method":"GET","pathTemplate":"/custom/v1/{a}/items","queryPii":[{"param":"owner","class":"name"}]},
    {"id":"custom-v1.getB","method":"GET","pathTemplate":"/custom/v1/things/{b}"},
    {"id":"custom-v1.getC","method":"GET","pathTemplate":"/custom/v1/things/items"},
    {"id":"custom-v1.getD","method":"GET","pathTemplate":"/custom/v1/{a}/{b}/{c}","queryPii":[{"param":"BuyerEmail","class":"email"}]},
    {"id":"custom-v1.getE","method":"GET","pathTemplate":"/custom/v1/things/{b}/x"}
]}"#;

/// Pass-through prefixes of the second world (decoded segments, as `Access` keeps them).
const PASS_THROUGH_WORDS: [&str; 4] = ["catalog", "2022-04-01", "sellers", "fba"];

impl World {
    fn new(overrides: &CatalogOverrides, pass_through: &[&str], builtin_words: bool) -> World {
        let catalog = Catalog::build(overrides).expect("catalog");
        let routes: Vec<Route> = catalog
            .operations
            .iter()
            .map(|op| Route {
                method: op.method.clone(),
                segments: op.path_template.trim_start_matches('/').split('/').map(|s| if s.starts_with('{') { None } else { Some(s.to_string()) }).collect(),
                query_pii: op.query_pii.iter().map(|(p, _)| p.clone()).collect(),
            })
            .collect();
        let mut literals: Vec<String> = routes.iter().flat_map(|r| r.segments.iter().flatten().cloned()).collect();
        literals.sort();
        literals.dedup();
        let mut model_words: BTreeSet<String> = literals.iter().cloned().collect();
        model_words.extend(pass_through.iter().map(|s| s.to_string()));
        let words = (!builtin_words).then(|| PathWords::new(&catalog, pass_through.iter().copied()));
        World { catalog, words, model_words, routes, literals }
    }

    /// The reference router: every route of the highest specificity among those that match the
    /// decoded segments (any of them is a right answer); none for a target the reference reading
    /// refuses.
    fn reference_route(&self, method: &str, path: &str) -> Vec<usize> {
        let Ok(target) = ref_target(path) else { return Vec::new() };
        let parts = &target.segments;
        let matching: Vec<usize> = (0..self.routes.len())
            .filter(|&i| {
                let r = &self.routes[i];
                r.method == method
                    && r.segments.len() == parts.len()
                    && r.segments.iter().zip(parts).all(|(s, p)| match s {
                        Some(l) => l == p,
                        None => !p.is_empty(),
                    })
            })
            .collect();
        let specificity = |i: usize| self.routes[i].segments.iter().map(Option::is_some).collect::<Vec<bool>>();
        let Some(best) = matching.iter().map(|&i| specificity(i)).max() else { return Vec::new() };
        matching.into_iter().filter(|&i| specificity(i) == best).collect()
    }
}

impl RouterTarget {
    pub fn new() -> RouterTarget {
        let overlapping: CatalogOverrides = serde_json::from_str(OVERLAPPING).expect("overrides");
        RouterTarget { worlds: vec![World::new(&CatalogOverrides::default(), &[], true), World::new(&overlapping, &PASS_THROUGH_WORDS, false)] }
    }
}

// ---------------------------------------------------------------------------------------------
// The reference reading of a request target (docs/POLICY.md check 0, docs/DESIGN.md "One reading
// of paths and queries"), written apart from src/uri.rs.
// ---------------------------------------------------------------------------------------------

/// A request target, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefTarget {
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
}

/// Percent-decodes once (`+` a space when `plus`), refusing raw controls, spaces and non-ASCII,
/// bad escapes, invalid UTF-8 and decoded control characters.
pub fn ref_decode(raw: &str, plus: bool) -> Result<String, &'static str> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c if c < 0x20 || c == 0x7f => return Err("control character"),
            c if c == b' ' || c >= 0x80 => return Err("raw space or non-ASCII"),
            b'%' => {
                let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit)).ok_or("bad escape")?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).map_err(|_| "bad escape")?, 16).map_err(|_| "bad escape")?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).map_err(|_| "invalid UTF-8")?;
    if text.chars().any(char::is_control) {
        return Err("decoded control character");
    }
    Ok(text)
}

/// One path segment, decoded; refused where servers could read it two ways.
pub fn ref_segment(raw: &str) -> Result<String, &'static str> {
    if raw.is_empty() {
        return Err("empty segment");
    }
    let s = ref_decode(raw, false)?;
    if s.contains('/') {
        return Err("encoded slash");
    }
    if s.contains('\\') {
        return Err("backslash");
    }
    // `..;x` and `.. ` are `..` to some servers.
    let core = s.split(';').next().unwrap_or("").trim();
    if core.is_empty() {
        return Err("empty segment");
    }
    if core.chars().all(|c| c == '.') {
        return Err("dot segment");
    }
    Ok(s)
}

/// A whole request target: path and query decoded, or why it is not one canonical path.
pub fn ref_target(target: &str) -> Result<RefTarget, &'static str> {
    if target.contains('#') {
        return Err("fragment");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let rest = path.strip_prefix('/').ok_or("not absolute")?;
    let segments = rest.split('/').map(ref_segment).collect::<Result<Vec<_>, _>>()?;
    let mut pairs = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (n, v) = piece.split_once('=').unwrap_or((piece, ""));
        pairs.push((ref_decode(n, true)?, ref_decode(v, true)?));
    }
    Ok(RefTarget { segments, query: pairs })
}

// ---------------------------------------------------------------------------------------------
// The reference audit path
// ---------------------------------------------------------------------------------------------

/// What the log must print for one query value.
#[derive(Debug)]
enum Shown {
    Redacted,
    Value(String),
    /// A date-time in a less common spelling: printed or redacted (the model's date reader is
    /// looser than the filter's; a looser one still lets no PII through).
    Either(String),
}

/// Whether a row of the table applies to `op` (`None` outside the catalog).
fn covers(scope: &Scope, op: Option<&str>) -> bool {
    match scope {
        Scope::All => true,
        Scope::Operations(ids) => op.is_some_and(|o| ids.contains(&o)),
    }
}

/// Dates in the spellings the table's doc promises to print.
fn plain_date(v: &str) -> bool {
    const FORMS: [&str; 5] = ["dddd", "dddd-dd", "dddd-dd-dd", "dddd-dd-ddTdd:dd:ddZ", "dddd-dd-ddTdd:dd:dd.d-dd:dd"];
    let shape: String = v.chars().map(|c| if c.is_ascii_digit() { 'd' } else { c }).collect();
    if !FORMS.contains(&shape.as_str()) {
        return false;
    }
    let field = |from: usize| v.get(from..from + 2).and_then(|s| s.parse::<u32>().ok());
    let month_ok = field(5).is_none_or(|m| (1..=12).contains(&m));
    let day_ok = field(8).is_none_or(|d| (1..=28).contains(&d));
    let time_ok = v.len() < 19 || (field(11).is_some_and(|h| h < 24) && field(14).is_some_and(|m| m < 60) && field(17).is_some_and(|s| s < 60));
    month_ok && day_ok && time_ok
}

/// Looser than any date reader: only date characters, starting with a year.
fn date_like(v: &str) -> bool {
    v.len() <= 40 && v.len() >= 4 && v.as_bytes()[..4].iter().all(u8::is_ascii_digit) && v.bytes().all(|b| b.is_ascii_digit() || b"-+:.,TZ".contains(&b))
}

fn marketplace_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix('A') else { return false };
    (9..=15).contains(&rest.len())
        && rest.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && rest.bytes().any(|b| b.is_ascii_digit())
        && rest.bytes().any(|b| b.is_ascii_uppercase())
}

/// What the log prints for a value of a known, non-PII parameter.
fn shown_value(name: &str, value: &str, op: Option<&str>) -> Shown {
    let Some(row) = QUERY_PARAMS.iter().find(|r| r.name == name && covers(&r.scope, op)) else { return Shown::Redacted };
    let shown = match row.shape {
        Shape::DateTime if plain_date(value) => true,
        Shape::DateTime if date_like(value) => return Shown::Either(value.to_string()),
        Shape::DateTime => false,
        Shape::OneOf(values) => values.contains(&value),
        Shape::ListOf(values) => value.split(',').all(|v| values.contains(&v)),
        Shape::MarketplaceIds => value.split(',').count() <= 50 && value.split(',').all(marketplace_id),
        Shape::Integer(min, max) => {
            value.len() <= 10 && !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) && value.parse::<u64>().is_ok_and(|n| (min..=max).contains(&n))
        }
        Shape::Boolean => value == "true" || value == "false",
        Shape::CountryCode => value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase()),
        Shape::Hidden => false,
    };
    if shown {
        Shown::Value(value.to_string())
    } else {
        Shown::Redacted
    }
}

/// The logged path the model expects: the path part exactly, then per query piece its name and
/// what may be printed of its value (`None`: the piece has no `=`).
fn expected_log(path: &str, op: Option<&Operation>, words: &BTreeSet<String>) -> (String, Vec<(String, Option<Shown>)>) {
    const REDACTED: &str = "{redacted}";
    let before_fragment = path.split('#').next().unwrap_or("");
    let (path_part, query) = before_fragment.split_once('?').unwrap_or((before_fragment, ""));
    let logged_path = match op {
        Some(op) => op.path_template.clone(),
        None => match path_part.strip_prefix('/') {
            None => format!("/{REDACTED}"),
            Some(rest) => {
                let mut out = String::new();
                for (i, raw) in rest.split('/').enumerate() {
                    if i == 16 {
                        out.push_str("/{…}");
                        break;
                    }
                    out.push('/');
                    match ref_segment(raw) {
                        _ if raw.is_empty() => {}
                        Ok(word) if words.contains(&word) => out.push_str(&word),
                        _ => out.push_str(REDACTED),
                    }
                }
                out
            }
        },
    };
    let op_id = op.map(|o| o.id.as_str());
    let mut pieces = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let has_value = piece.contains('=');
        let (n, v) = piece.split_once('=').unwrap_or((piece, ""));
        let (Ok(name), Ok(value)) = (ref_decode(n, true), ref_decode(v, true)) else {
            pieces.push((REDACTED.to_string(), has_value.then_some(Shown::Redacted)));
            continue;
        };
        let pii = op.is_some_and(|o| o.query_pii.iter().any(|(p, _)| *p == name));
        let known = pii || QUERY_PARAMS.iter().any(|r| r.name == name);
        let shown = match (known, pii) {
            (true, false) => shown_value(&name, &value, op_id),
            _ => Shown::Redacted,
        };
        pieces.push((if known { name } else { REDACTED.to_string() }, has_value.then_some(shown)));
    }
    (logged_path, pieces)
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];
const ODD_METHODS: &[&str] = &["get", "Get", "post", "HEAD", "OPTIONS", "", " GET", "GET ", "G\u{0}ET", "CONNECT", "TRACE"];
const OTHER_PARAMS: &[&str] = &["MarketplaceIds", "CreatedAfter", "nextToken", "MaxResultsPerPage", "countryCode", "OrderStatuses", "includedData", "status", "x", ""];
/// Values that decode.
const OTHER_VALUES: &[&str] = &[
    "ATVPDKIKX0DER",
    "ATVPDKIKX0DER,A1F83G8C2ARO7P",
    "AJANEDOEXXXX",
    "A4155551234",
    "2024-01-01T00:00:00Z",
    "2024-12-20T00%3A00%3A00Z",
    "2020-02-15T14:00:00.5-08:00",
    "2020",
    "2020-11",
    "2024-01-01+jane",
    "2024-13-45",
    "100",
    "0",
    "101",
    "007",
    "US",
    "us",
    "Shipped,Unshipped",
    "Shipped,Jane",
    "BUYER",
    "BUYER,RECIPIENT",
    "buyer",
    "NEW",
    "",
    "a%20b",
    "%3Cscript%3E",
    "%22",
    "%C3%A9",
    "true",
];
/// Values that do not: raw controls, spaces, non-ASCII, bad escapes, encoded controls.
const BAD_VALUES: &[&str] = &["<script>", "\"", "a\nb", "%00", "\u{e9}", "a b", "%", "%zz", "%C3%28", "%0A"];
/// Parameters the log prints with their values, whatever the operation (`Scope::All` rows).
const SHOWN_EVERYWHERE: &[(&str, &str)] = &[("CreatedAfter", "2024-01-01T00:00:00Z"), ("MarketplaceIds", "ATVPDKIKX0DER"), ("MaxResultsPerPage", "50"), ("sortOrder", "ASC")];

fn marker(rng: &mut Rng) -> String {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::from("Pz");
    for _ in 0..10 {
        s.push(ALNUM[rng.below(ALNUM.len())] as char);
    }
    s
}

/// Percent-encodes some (or all) characters of `s` (non-ASCII ones as UTF-8 bytes).
fn percent_some(s: &str, rng: &mut Rng, all: bool) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if !c.is_ascii() || all || rng.chance(30) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let hex = if rng.chance(50) { format!("%{b:02X}") } else { format!("%{b:02x}") };
                out.push_str(&hex);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn recase(s: &str, rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => s.to_lowercase(),
        1 => s.to_uppercase(),
        _ => s.chars().map(|c| if rng.chance(50) { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect(),
    }
}

/// A value around a marker: the marker alone, decorated, or encoded.
fn decorate(m: &str, rng: &mut Rng) -> String {
    match rng.below(11) {
        0..=4 => m.to_string(),
        5 => format!("{m}.{}", rng.pick(&["json", "", ".", "x"])),
        6 => format!("{}{m}{}", rng.pick(&["%20", "-", "..", "\u{e9}", "+", "%2F", ":", "%5C", "%2e%2e"]), rng.pick(&["", "%", "%2", "~", ";x=1", "\u{1F600}", "%00"])),
        7 => percent_some(m, rng, true),
        8 => format!("{m}@example.com"),
        9 => percent_some(&format!("{m}\u{e9}\u{1F600}"), rng, false),
        _ => format!("{m}{}", "z".repeat(rng.small(5000))),
    }
}

/// Percent-decodes (`+` as a space when `plus`); invalid escapes stay as they are.
pub fn percent_decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if plus && b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Target for RouterTarget {
    type Case = Case;

    fn name(&self) -> &'static str {
        "router"
    }

    fn generate(&mut self, rng: &mut Rng) -> Case {
        let world_index = if rng.chance(70) { 0 } else { 1 };
        let world = &self.worlds[world_index];
        let op = if world_index == 1 && rng.chance(70) {
            // Mostly the added operations.
            rng.range(world.routes.len() - 6, world.routes.len() - 1)
        } else {
            rng.below(world.routes.len())
        };
        let route = &world.routes[op];
        let mut markers = Vec::new();
        let mut intact = true;
        let method = if rng.chance(85) {
            route.method.clone()
        } else {
            intact = false;
            if rng.chance(50) {
                rng.pick(METHODS).to_string()
            } else {
                rng.pick(ODD_METHODS).to_string()
            }
        };

        let mut segments: Vec<String> = Vec::new();
        if rng.chance(8) {
            // Not from a template: random segments, literals and markers.
            intact = false;
            for _ in 0..rng.range(0, 8) {
                segments.push(match rng.below(3) {
                    0 => rng.pick(&world.literals).clone(),
                    1 => {
                        let m = marker(rng);
                        markers.push(m.clone());
                        decorate(&m, rng)
                    }
                    _ => rng
                        .pick(&["", ".", "..", "...", "%2e", ".%2E%2e", "~", "{orderId}", "*", "..;x", ";x", "%20", "%2E%2E%20", "a%2Fb", "a\\b", "%5C", "%00", "\u{e9}"])
                        .to_string(),
                });
            }
        } else {
            for s in &route.segments {
                segments.push(match s {
                    Some(l) if rng.chance(6) => {
                        // Re-cased: another segment. Percent-encoded: the same, decoded once.
                        if rng.chance(50) {
                            intact = false;
                            recase(l, rng)
                        } else {
                            percent_some(l, rng, false)
                        }
                    }
                    Some(l) => l.clone(),
                    None => {
                        let m = marker(rng);
                        markers.push(m.clone());
                        let v = decorate(&m, rng);
                        if v.contains(['/', '?', '#']) {
                            intact = false;
                        }
                        v
                    }
                });
            }
        }
        if rng.chance(15) {
            intact = false;
            for _ in 0..rng.range(1, 3) {
                let at = rng.below(segments.len() + 1);
                match rng.below(7) {
                    6 if !segments.is_empty() => {
                        // A segment (a parameter, often) in a spelling servers read two ways.
                        let i = rng.below(segments.len());
                        segments[i] = rng.pick(&["...", ".%2E", "%2e%2E%2e", "..;x", ". ", "..%20", "%2E%09", ";", " ", "a%2fb", "a%5Cb"]).to_string();
                    }
                    0 => segments.insert(at, String::new()),
                    1 => segments.insert(at, ".".into()),
                    2 => segments.insert(at, "..".into()),
                    3 => segments.push(String::new()),
                    4 => segments.insert(at, "x".repeat(rng.range(1000, 70_000))),
                    _ => {
                        if !segments.is_empty() {
                            let i = rng.below(segments.len());
                            segments.remove(i);
                        }
                    }
                }
            }
        }
        let mut path = String::new();
        if rng.chance(2) {
            intact = false; // no leading slash
        } else {
            path.push('/');
        }
        path.push_str(&segments.join("/"));

        if rng.chance(70) {
            let mut pairs: Vec<String> = Vec::new();
            for _ in 0..rng.small(8) {
                let pii: Vec<&String> = route.query_pii.iter().collect();
                let pair = match rng.below(16) {
                    0..=4 if !pii.is_empty() => {
                        let name = rng.pick(&pii).as_str();
                        let name = match rng.below(10) {
                            0..=5 => name.to_string(),
                            6 | 7 => recase(name, rng),
                            _ => {
                                let all = rng.chance(30);
                                percent_some(name, rng, all)
                            }
                        };
                        let m = marker(rng);
                        markers.push(m.clone());
                        let value = match rng.below(4) {
                            0 => percent_some(&m, rng, true),
                            _ => decorate(&m, rng),
                        };
                        format!("{name}={value}")
                    }
                    5 => {
                        // A PII parameter of another operation (BuyerEmail on getOrder…): a
                        // known name, its value never printed.
                        format!("{}={}", rng.pick(&["BuyerEmail", "postalCode"]), rng.pick(OTHER_VALUES))
                    }
                    6 => rng.pick(&["", "=", "==", "a==b", "&", "noequals", "%", "%zz=1", "a=%"]).to_string(),
                    7 => {
                        // A name the table does not know: never printed, nor its value.
                        let m = marker(rng);
                        markers.push(m.clone());
                        let name = if rng.chance(30) { percent_some(&m, rng, false) } else { m };
                        format!("{name}={}", rng.pick(OTHER_VALUES))
                    }
                    8 => {
                        // A known name with a value out of its shape.
                        let m = marker(rng);
                        markers.push(m.clone());
                        format!("{}={}", rng.pick(OTHER_PARAMS), decorate(&m, rng))
                    }
                    9 | 10 => {
                        let (n, v) = *rng.pick(SHOWN_EVERYWHERE);
                        let n = if rng.chance(20) { percent_some(n, rng, false) } else { n.to_string() };
                        format!("{n}={v}")
                    }
                    11 => format!("{}={}", rng.pick(OTHER_PARAMS), rng.pick(BAD_VALUES)),
                    _ => format!("{}={}", rng.pick(OTHER_PARAMS), rng.pick(OTHER_VALUES)),
                };
                pairs.push(pair);
            }
            let sep = if rng.chance(90) { "&" } else { *rng.pick(&["&&", ";", "&amp;"]) };
            path.push('?');
            path.push_str(&pairs.join(sep));
            if rng.chance(3) {
                path.push_str(&"&a=b".repeat(rng.range(1000, 20_000)));
            }
        }
        if rng.chance(4) {
            path.push('#');
            path.push_str(["", "frag", "?BuyerEmail=x", "/../a"][rng.below(4)]);
        }
        Case { world: world_index, method, path, markers, expect_route: intact.then_some(op) }
    }

    fn check(&mut self, case: &Case) -> Result<Outcome, Failure> {
        let world = &self.worlds[case.world];
        let routed = world.catalog.route_index(&case.method, &case.path);
        let reference = ref_target(&case.path);
        let want = world.reference_route(&case.method, &case.path);
        let name_of = |i: usize| &world.catalog.operations[i].id;
        match (routed, &reference) {
            (Some(i), Err(why)) => return Err(Failure::new("invalid_path_routed", format!("routed to {} although the target is not one canonical path ({why})", name_of(i)))),
            (Some(i), _) if !want.contains(&i) => {
                return Err(Failure::new(
                    "wrong_route",
                    format!(
                        "routed to {} ({}), the reference router says {:?}",
                        name_of(i),
                        world.catalog.operations[i].path_template,
                        want.iter().map(|&w| name_of(w)).collect::<Vec<_>>()
                    ),
                ))
            }
            (None, _) if !want.is_empty() => return Err(Failure::new("not_routed", format!("the reference router says {}", name_of(want[0])))),
            _ => {}
        }
        if let (Some(op), None, Ok(_)) = (case.expect_route, routed, &reference) {
            return Err(Failure::new("template_path_not_routed", format!("a canonical path built from {} is not routed", world.catalog.operations[op].path_template)));
        }
        let operation = routed.map(|i| &world.catalog.operations[i]);
        let logged = match &world.words {
            None => redacted_path(&case.path, operation),
            Some(words) => redacted_path_with(&case.path, operation, words),
        };

        if let Some(c) = logged.chars().find(|c| c.is_control() || c.is_whitespace() || matches!(c, '"' | '\\' | '<' | '>' | '\'')) {
            return Err(Failure::new("unsafe_character_logged", format!("{c:?} in {}", json_string(&logged))));
        }
        let decoded_log = percent_decode(&logged, true);
        if let Some(m) = case.markers.iter().find(|m| logged.contains(m.as_str()) || decoded_log.contains(m.as_str())) {
            return Err(Failure::new("marker_logged", format!("marker {m} is logged: {}", json_string(&logged))));
        }

        // The allow list, exactly.
        let (want_path, want_pieces) = expected_log(&case.path, operation, &world.model_words);
        let wrong = |what: String| Failure::new("wrong_log_path", format!("{what}: logged {}", json_string(&logged)));
        let (logged_path, logged_query) = match logged.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (logged.as_str(), None),
        };
        if logged_path != want_path {
            return Err(wrong(format!("path {}, the allow list gives {}", json_string(logged_path), json_string(&want_path))));
        }
        let logged_pieces: Vec<&str> = logged_query.map(|q| q.split('&').collect()).unwrap_or_default();
        if logged_pieces.len() != want_pieces.len() {
            return Err(wrong(format!("{} query parameters, the allow list gives {}", logged_pieces.len(), want_pieces.len())));
        }
        for (got, (name, shown)) in logged_pieces.iter().zip(&want_pieces) {
            let ok = match shown {
                None => *got == name.as_str(),
                Some(Shown::Redacted) => *got == format!("{name}={{redacted}}"),
                Some(Shown::Value(v)) => *got == format!("{name}={v}"),
                Some(Shown::Either(v)) => *got == format!("{name}={v}") || *got == format!("{name}={{redacted}}"),
            };
            if !ok {
                return Err(wrong(format!("query parameter {}, the allow list gives {name} {shown:?}", json_string(got))));
            }
        }
        Ok(match (routed, &reference, logged_query) {
            (Some(_), _, Some(_)) => "routed_with_query",
            (Some(_), _, None) => "routed",
            (None, Err(_), _) => "refused_not_canonical",
            (None, Ok(_), _) => "unrouted",
        })
    }

    fn shrink(&self, case: &Case) -> Vec<Case> {
        let mut out = Vec::new();
        let with_path = |path: String| Case { path, expect_route: None, ..case.clone() };
        // Drop query pairs, then path segments, then runs of characters.
        if let Some((p, q)) = case.path.split_once('?') {
            out.push(with_path(p.to_string()));
            let pairs: Vec<&str> = q.split('&').collect();
            for i in 0..pairs.len() {
                let rest: Vec<&str> = pairs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, s)| *s).collect();
                out.push(with_path(format!("{p}?{}", rest.join("&"))));
            }
        }
        let chars: Vec<char> = case.path.chars().collect();
        let mut chunk = (chars.len() / 2).max(1);
        while out.len() < 800 {
            let mut at = 0;
            while at < chars.len() && out.len() < 800 {
                let end = (at + chunk).min(chars.len());
                out.push(with_path(chars[..at].iter().chain(&chars[end..]).collect()));
                at += chunk;
            }
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
        out
    }

    fn describe(&self, case: &Case) -> String {
        let world = &self.worlds[case.world];
        let reference = ref_target(&case.path).err().unwrap_or("canonical");
        format!(
            "{{\"catalog\":{},\"method\":{},\"path\":{},\"markers\":{},\"reference_reading\":{},\"routed\":{}}}",
            json_string(if case.world == 0 { "built-in" } else { "built-in + tests/fuzz/router.rs OVERLAPPING, PASS_THROUGH_WORDS" }),
            json_string(&case.method),
            json_string(&case.path),
            json_string(&case.markers.join(",")),
            json_string(reference),
            json_string(&format!("{:?}", world.catalog.route_index(&case.method, &case.path).map(|i| &world.catalog.operations[i].id)))
        )
    }
}
