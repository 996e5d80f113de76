//! Target (b): request routing and the audit log's path, `Catalog::route_index` and
//! `audit::redacted_path`.
//!
//! Cases: a method (the operation's, case variants, junk) and a path built from a catalog
//! template — literal segments sometimes re-cased or percent-encoded, parameters filled with
//! markers (unique values) decorated with percent-encodings, dots, unicode, slashes — with
//! structural changes (doubled or trailing slashes, dot segments, extra segments, very long
//! segments), a query of PII parameters (names as written, re-cased or percent-encoded; marker
//! values, sometimes percent-encoded) and other parameters, odd separators and fragments.
//!
//! Invariants:
//! * no panic;
//! * a route is right: same method, the template matches the path (literal segments equal,
//!   parameters non-empty), and no other matching template of the method is more specific
//!   (literal beats parameter, position by position); a path built from a template without
//!   changes is routed;
//! * the logged path never shows a marker (raw or percent-decoded) that sits where the design
//!   says values are hidden: anywhere in the path of a routed request (the template is logged),
//!   past the third segment of an unrouted one, in any query value of an unrouted request, and in
//!   the value of a query parameter of the routed operation's PII parameters — the parameter
//!   named as the SP-API reads it: percent-decoded, case-insensitive;
//! * the logged path holds no character that could break or forge a log line (controls, quotes,
//!   backslashes, spaces, angle brackets).
use spapi_guard::audit::redacted_path;
use spapi_guard::catalog::{Catalog, CatalogOverrides};

use crate::engine::{json_string, Failure, Outcome, Rng, Target};

pub struct RouterTarget {
    /// The built-in catalog, and the same with operations a policy adds whose templates overlap
    /// (the built-in ones never do, so "literal beats parameter" is exercised only there).
    worlds: Vec<World>,
}

struct World {
    catalog: Catalog,
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
    /// The values planted (path parameters and PII query values).
    pub markers: Vec<String>,
    /// The operation the path was built from when nothing was changed that could unroute it.
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

impl World {
    fn new(overrides: &CatalogOverrides) -> World {
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
        World { catalog, routes, literals }
    }

    /// The reference router: every route of the highest specificity among those that match
    /// (any of them is a right answer).
    fn reference_route(&self, method: &str, path: &str) -> Vec<usize> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let Some(rest) = path.strip_prefix('/') else { return Vec::new() };
        let parts: Vec<&str> = rest.split('/').collect();
        let matching: Vec<usize> = (0..self.routes.len())
            .filter(|&i| {
                let r = &self.routes[i];
                r.method == method
                    && r.segments.len() == parts.len()
                    && r.segments.iter().zip(&parts).all(|(s, p)| match s {
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
        RouterTarget { worlds: vec![World::new(&CatalogOverrides::default()), World::new(&overlapping)] }
    }
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];
const ODD_METHODS: &[&str] = &["get", "Get", "post", "HEAD", "OPTIONS", "", " GET", "GET ", "G\u{0}ET", "CONNECT", "TRACE"];
const OTHER_PARAMS: &[&str] = &["MarketplaceIds", "CreatedAfter", "nextToken", "MaxResultsPerPage", "countryCode", "OrderStatuses", "x", ""];
const OTHER_VALUES: &[&str] = &["ATVPDKIKX0DER", "2024-01-01T00:00:00Z", "100", "US", "Shipped,Unshipped", "", "a%20b", "<script>", "\"", "a\nb", "%00", "\u{e9}"];

fn marker(rng: &mut Rng) -> String {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::from("Pz");
    for _ in 0..10 {
        s.push(ALNUM[rng.below(ALNUM.len())] as char);
    }
    s
}

/// Percent-encodes some (or all) characters of `s`.
fn percent_some(s: &str, rng: &mut Rng, all: bool) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii() && (all || rng.chance(30)) {
            let hex = if rng.chance(50) { format!("%{:02X}", c as u8) } else { format!("%{:02x}", c as u8) };
            out.push_str(&hex);
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
    match rng.below(10) {
        0..=4 => m.to_string(),
        5 => format!("{m}.{}", rng.pick(&["json", "", ".", "x"])),
        6 => format!("{}{m}{}", rng.pick(&["%20", "-", "..", "\u{e9}", "+", "%2F", ":"]), rng.pick(&["", "%", "%2", "~", ";x=1", "\u{1F600}"])),
        7 => percent_some(m, rng, true),
        8 => format!("{m}@example.com"),
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
                    _ => rng.pick(&["", ".", "..", "%2e", "~", "{orderId}", "*"]).to_string(),
                });
            }
        } else {
            for s in &route.segments {
                segments.push(match s {
                    Some(l) if rng.chance(6) => {
                        intact = false;
                        if rng.chance(50) {
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
                match rng.below(6) {
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
                let pair = match rng.below(10) {
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
                        // A PII parameter of another operation (BuyerEmail on getOrder…): not PII here.
                        format!("{}={}", rng.pick(&["BuyerEmail", "postalCode"]), rng.pick(OTHER_VALUES))
                    }
                    6 => rng.pick(&["", "=", "==", "a==b", "&", "noequals", "%", "%zz=1", "a=%"]).to_string(),
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
        let want = world.reference_route(&case.method, &case.path);
        match routed {
            Some(i) if !want.contains(&i) => {
                return Err(Failure::new(
                    "wrong_route",
                    format!(
                        "routed to {} ({}), the reference router says {:?}",
                        world.catalog.operations[i].id,
                        world.catalog.operations[i].path_template,
                        want.iter().map(|&w| &world.catalog.operations[w].id).collect::<Vec<_>>()
                    ),
                ))
            }
            None if !want.is_empty() => return Err(Failure::new("not_routed", format!("the reference router says {}", world.catalog.operations[want[0]].id))),
            _ => {}
        }
        if let (Some(op), None) = (case.expect_route, routed) {
            return Err(Failure::new("template_path_not_routed", format!("a path built from {} is not routed", world.catalog.operations[op].path_template)));
        }
        let operation = routed.map(|i| &world.catalog.operations[i]);
        let logged = redacted_path(&case.path, operation);

        if let Some(c) = logged.chars().find(|c| c.is_control() || c.is_whitespace() || matches!(c, '"' | '\\' | '<' | '>' | '\'')) {
            return Err(Failure::new("unsafe_character_logged", format!("{c:?} in {}", json_string(&logged))));
        }

        // Where each marker sits, as redacted_path's own split would see it (first '?'), and
        // whether the design hides it there.
        let (path_part, query) = match case.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (case.path.as_str(), None),
        };
        let decoded_log = percent_decode(&logged, false);
        for m in &case.markers {
            let shown = logged.contains(m.as_str()) || decoded_log.contains(m.as_str());
            if !shown || world.literals.iter().any(|l| l == m) {
                continue;
            }
            let mut hidden_here = Vec::new();
            for (i, segment) in path_part.split('/').skip(1).enumerate() {
                if percent_decode(segment, false).contains(m.as_str()) || segment.contains(m.as_str()) {
                    if operation.is_some() {
                        hidden_here.push(format!("path segment {} of a routed request (the template is logged)", i + 1));
                    } else if i >= 3 {
                        hidden_here.push(format!("path segment {} of an unrouted request (past the third)", i + 1));
                    }
                }
            }
            for pair in query.unwrap_or("").split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if !(value.contains(m.as_str()) || percent_decode(value, true).contains(m.as_str())) {
                    continue;
                }
                match operation {
                    None => hidden_here.push("a query value of an unrouted request".to_string()),
                    Some(op) => {
                        let read_as = percent_decode(name, true);
                        if let Some((p, _)) = op.query_pii.iter().find(|(p, _)| p.eq_ignore_ascii_case(&read_as)) {
                            let bug = if read_as != name { Some(crate::KNOWN_BUG_ENCODED_QUERY_NAME) } else { None };
                            let f = Failure::new(
                                "pii_query_value_logged",
                                format!("the value of {name:?} (read by the SP-API as {p}, a PII parameter of {}) is logged: {}", op.id, json_string(&logged)),
                            );
                            return Err(match bug {
                                Some(b) => f.known(b),
                                None => f,
                            });
                        }
                    }
                }
            }
            if let Some(where_) = hidden_here.first() {
                return Err(Failure::new("marker_logged", format!("marker {m} in {where_} is logged: {}", json_string(&logged))));
            }
        }
        Ok(match (routed, query) {
            (Some(_), Some(_)) => "routed_with_query",
            (Some(_), None) => "routed",
            (None, _) => "unrouted",
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
        format!(
            "{{\"catalog\":{},\"method\":{},\"path\":{},\"markers\":{},\"routed\":{}}}",
            json_string(if case.world == 0 { "built-in" } else { "built-in + tests/fuzz/router.rs OVERLAPPING" }),
            json_string(&case.method),
            json_string(&case.path),
            json_string(&case.markers.join(",")),
            json_string(&format!("{:?}", world.catalog.route_index(&case.method, &case.path).map(|i| &world.catalog.operations[i].id)))
        )
    }
}
