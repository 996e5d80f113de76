//! Target (c): the exchange state machine (src/exchange.rs) against `MockHost`, driven the way
//! Envoy drives a filter.
//!
//! Cases: a request from a caller of policies/default.json (order-sync, label-printer, analytics),
//! an unknown one or none, over TLS or not, from an allowed address or not, to a random catalog
//! operation (path parameters and PII query values are planted markers), a pass-through path, an
//! unknown path or a path that is not one canonical path; `createRestrictedDataToken` with random
//! resources (allowed or not for the caller, generic or specific paths, data elements valid or
//! not) and malformed bodies. The upstream answers with Amazon's fixture for the operation (or a
//! document built from nothing) with values planted at its PII paths, sometimes malformed, with
//! JSON or other headers. Every body comes in 0..n chunks split anywhere and ends by
//! `end_of_stream` or by trailers; a reset may stop the exchange at any callback (then `on_log`);
//! the upstream may answer before a streaming request body ends; local replies of the request
//! phase flow back through the response callbacks, and after one of the response phase the rest
//! of the upstream response is still offered; the caller may be locked out, or one denial from
//! it. Five policies: the shipped one, with canaries that block (the canary planted in paths and
//! bodies), with canaries that only report and a small `maxBodyBytes`, in dry-run, and in sidecar
//! mode (the caller is the proxy's node identity).
//!
//! Invariants:
//! * every planted value at a PII path leaves protected — never in clear in the bytes released
//!   to the client, raw or decoded, unless the caller's level for every PII rule on its way is
//!   `clear` — or the exchange is refused (a local reply, nothing of the upstream body released);
//!   a released protected body is the whole body rewritten with the caller's levels (tokens
//!   opened and compared with a separate rewrite), with a matching `content-length`;
//! * a request is refused exactly when the model of the policy says (invalid path, TLS, source
//!   address, identity, caller, lockout, operation, `includedData`, RDT resources — dry-run
//!   relaxing the access checks only), with its reason and status (and `retry-after` for a
//!   lockout, `lockout_started` for the denial that starts one); a refused request is never
//!   forwarded, an RDT request is forwarded only whole and only if every resource is allowed;
//! * a body the filter held is released by the phase that ends it, never before, never raw;
//! * the response fails closed exactly when the model says (encoding, length, type, size, JSON),
//!   a blocking canary refuses it, a streaming response passes byte for byte;
//! * exactly one audit event per exchange, valid against docs/audit-event.schema.json, its
//!   outcome, decision and reason consistent with what happened (`aborted` exactly when a body the
//!   filter held did not end), its counts those of the rewrite, status and sizes right, and the
//!   requests metric counted once with its decision;
//! * no planted value (path parameter, query value, request body, response body) in any log line,
//!   the audit event or a metric name of the mock host, raw or percent-decoded.
//!
//! The model reads policies/default.json, the catalog file and docs/audit-event.schema.json
//! itself; the filter's own functions are used only as references where another target checks
//! them (the rewriter for the released body and its counts, `redacted_path_with` for the path).
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde_json::{json, Value};
use spapi_guard::audit::{redacted_path_with, AuditEvent, DecisionIds};
use spapi_guard::exchange::{Exchange, Flow, Host, HttpHost, Level, MAX_DETOKENIZE_BODY, MAX_RDT_BODY};
use spapi_guard::guard::Guard;
use spapi_guard::lockout::{LockState, Trigger};
use spapi_guard::metrics::stat_name;
use spapi_guard::pii::{PerClass, PiiClass};
use spapi_guard::policy::{Action, ClassActions};
use spapi_guard::query_params::INCLUDED_DATA;
use spapi_guard::testing::{MockHost, SentReply};
use spapi_guard::tokens::{Mode, TOKEN_PREFIX};

use crate::engine::{json_string, Failure, Outcome, Rng, Target};
use crate::refjson::{self, Kind, Node};
use crate::rewriter::{self, OpInfo, PStep, Style, G};
use crate::router::{percent_decode, ref_target};

/// The clock the reference engine opens and seals at (MockHost::new's, 2027-01-15).
const NOW_MS: u64 = 1_800_000_000_000;

const KEY_HEX: &str = "8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
const RDT_ID: &str = "tokens-2021-03-01.createRestrictedDataToken";
const REQUEST_ID: &str = "3f1c8a52-1d47-4a4e-9a59-0c1f2a6b7d11";
/// Most resources an RDT request may name (docs/POLICY.md check 10; src/access.rs).
const RDT_MAX_RESOURCES: usize = 50;
const CANARY_ID: &str = "buyer-trap";
/// A canary value: a planted marker itself (never logged), 8+ characters.
const CANARY: &str = "MkCanaryTrap7x";
const SMALL_MAX_BODY: usize = 4096;

// ---------------------------------------------------------------------------------------------
// The model of the policy and the catalog, read from policies/default.json and the catalog file
// ---------------------------------------------------------------------------------------------

/// One catalog operation as the model reads it.
struct OpModel {
    id: String,
    method: String,
    segments: Vec<Option<String>>,
    restricted: bool,
    query_pii: Vec<String>,
    /// Index in the rewriter model's operations with PII (None: no response PII).
    info: Option<usize>,
}

/// A caller of the policy.
struct CallerModel {
    name: &'static str,
    id: String,
    operations: Vec<bool>,
    actions: ClassActions,
    /// The caller's own address list (`None`: any).
    allow: Option<Vec<&'static str>>,
}

/// One of the policies the target runs.
struct Variant {
    name: &'static str,
    guard: Rc<Guard>,
    dry_run: bool,
    /// Canaries block (Some(true)), report (Some(false)), or none.
    canary_block: Option<bool>,
    /// Sidecar mode: the caller is the proxy's node identity (order-sync's role), plaintext
    /// allowed, only 127.0.0.1.
    sidecar: bool,
    max_body: usize,
}

/// Who sends the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Caller(usize),
    /// A valid certificate the policy does not list.
    Intruder,
    /// No certificate.
    Anonymous,
}

const INTRUDER: &str = "spiffe://spapi-guard.demo/intruder";
/// The trusted identity header of policies/default.json (not an identity source there).
const IDENTITY_HEADER: &str = "x-spapi-guard-caller";
/// The proxy's node id in sidecar mode (a caller with order-sync's role).
const NODE_ID: &str = "order-sync-workload";
/// Source addresses: allowed for everyone, outside analytics' own list, outside the policy's list.
const SOURCES: [&str; 3] = ["127.0.0.1:40000", "127.0.0.2:40000", "10.9.8.7:1234"];

/// Minimal IPv4 CIDR membership for the model (the sources above are all IPv4).
fn in_cidr(address: &str, cidr: &str) -> bool {
    let ip = address.rsplit_once(':').map_or(address, |(a, _)| a);
    let Some((net, bits)) = cidr.split_once('/') else { return ip == cidr };
    let (Ok(bits), Some(a), Some(n)) = (bits.parse::<u32>(), v4(ip), v4(net)) else { return false };
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    a & mask == n & mask
}

fn v4(s: &str) -> Option<u32> {
    let parts: Vec<u32> = s.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    (parts.len() == 4).then(|| parts.iter().fold(0, |acc, p| acc << 8 | p))
}

/// `*` matches any run of characters (role operation patterns).
fn glob(pattern: &str, id: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == id,
        Some((head, tail)) => id.strip_prefix(head).is_some_and(|rest| (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))),
    }
}

/// The action of an access level (`none` removes), tokens with the class's configured mode.
fn level_action(level: &str, mode: Mode) -> Action {
    match level {
        "tokenize" => Action::Tokenize(mode),
        "clear" => Action::Clear,
        "hash" => Action::Hash,
        "redact" => Action::Redact,
        "none" => Action::Remove,
        other => panic!("policies/default.json: unknown level {other}"),
    }
}

fn class_mode(policy: &Value, class: PiiClass) -> Mode {
    let mode = policy["classes"][class.as_str()]["mode"].as_str().or(policy["defaults"]["mode"].as_str()).unwrap_or("deterministic");
    if mode == "randomized" {
        Mode::Randomized
    } else {
        Mode::Deterministic
    }
}

/// The policy's own class actions (what unknown callers get in dry-run).
fn policy_actions(policy: &Value) -> ClassActions {
    let mut actions = PerClass::splat(Action::Remove);
    for class in PiiClass::ALL {
        let action = policy["classes"][class.as_str()]["action"].as_str().or(policy["defaults"]["action"].as_str()).unwrap_or("tokenize");
        actions[class] = level_action(action, class_mode(policy, class));
    }
    actions
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// What the request path was built as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Built {
    /// From this catalog operation's template (canonical).
    Operation(usize),
    PassThrough,
    Unknown,
    /// Not one canonical path.
    Invalid,
}

/// One restricted resource of an RDT request, as generated.
#[derive(Clone, Debug)]
pub struct Resource {
    pub method: String,
    pub path: String,
    /// `Err(json)`: a `dataElements` that is not an array of strings.
    pub elements: Option<Result<Vec<String>, Value>>,
}

/// An RDT request body.
#[derive(Clone, Debug)]
pub struct Rdt {
    pub resources: Vec<Resource>,
    /// Malformed on purpose (duplicate keys, truncated, not an object…): invalid whatever it says.
    pub malformed: Option<&'static str>,
}

/// The upstream's response.
#[derive(Clone, Debug)]
pub struct Response {
    pub headers: Vec<(String, String)>,
    /// No body follows the headers.
    pub eos_at_headers: bool,
    pub chunks: Vec<Vec<u8>>,
    pub trailers: bool,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub variant: usize,
    pub who: Who,
    pub tls: bool,
    pub source: &'static str,
    pub method: String,
    pub path: String,
    pub built: Built,
    pub rdt: Option<Rdt>,
    pub request_chunks: Vec<Vec<u8>>,
    pub request_trailers: bool,
    /// The upstream answers after this many request body chunks (when the request streams).
    pub early_response: Option<usize>,
    pub response: Option<Response>,
    /// A request-phase local reply flows back in this many chunks (0: one) and with trailers.
    pub reply_chunks: usize,
    pub reply_trailers: bool,
    /// After a response-phase local reply, Envoy still offers the rest of the upstream response.
    pub offer_after_reply: bool,
    /// The exchange is reset after this many callbacks.
    pub reset_at: Option<usize>,
    /// The caller's lockout state before: 0 clear, 1 locked, 2 one denial from a lockout.
    pub lock: u8,
    /// The client sends the trusted identity header itself, naming order-sync.
    pub spoof_identity: bool,
    /// Every value planted: in the path, the query, the request body, the response body.
    pub markers: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// The target
// ---------------------------------------------------------------------------------------------

pub struct ExchangeTarget {
    variants: Vec<Variant>,
    ids: Rc<DecisionIds>,
    ops: Vec<OpModel>,
    infos: Vec<OpInfo>,
    dict: Vec<String>,
    callers: Vec<CallerModel>,
    /// What unknown callers get in dry-run.
    policy_actions: ClassActions,
    pass_through: Vec<Vec<String>>,
    /// Response fixtures of operations without PII, by operation index.
    other_fixtures: BTreeMap<usize, Vec<Vec<u8>>>,
    /// Request fixtures (`*.request.json`), by operation index.
    request_fixtures: BTreeMap<usize, Vec<Vec<u8>>>,
    /// docs/audit-event.schema.json
    schema: Value,
}

fn load_guard(policy: &Value) -> Rc<Guard> {
    let env = |name: &str| name.starts_with("SPAPI_GUARD_KEY_").then(|| KEY_HEX.to_string());
    Rc::new(Guard::load_at(policy.to_string().as_bytes(), &env, NOW_MS).unwrap_or_else(|e| panic!("fuzz policy: {e}")))
}

impl ExchangeTarget {
    pub fn new() -> ExchangeTarget {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let policy: Value = serde_json::from_slice(&std::fs::read(root.join("policies/default.json")).expect("default.json")).expect("policy");
        let mut canaries_block = policy.clone();
        canaries_block["canaries"] = json!({"block": true, "records": [{"id": CANARY_ID, "value": CANARY}]});
        let mut canaries_report = policy.clone();
        canaries_report["canaries"] = json!({"block": false, "records": [{"id": CANARY_ID, "value": CANARY}]});
        canaries_report["maxBodyBytes"] = json!(SMALL_MAX_BODY);
        let mut dry_run = policy.clone();
        dry_run["access"]["dryRun"] = json!(true);
        // As in tests/access.rs: a sidecar serving one app on loopback, the caller its workload.
        let mut sidecar = policy.clone();
        sidecar["access"]["identity"] = json!({"sources": ["node"]});
        sidecar["access"]["allowPlaintext"] = json!(true);
        sidecar["access"]["allowCidrs"] = json!(["127.0.0.1/32", "::1/128"]);
        sidecar["callers"] = json!([{"id": NODE_ID, "source": "node", "roles": ["order-sync"]}]);
        let default_max = policy["maxBodyBytes"].as_u64().expect("maxBodyBytes") as usize;
        let variants = vec![
            Variant { name: "policies/default.json", guard: load_guard(&policy), dry_run: false, canary_block: None, sidecar: false, max_body: default_max },
            Variant { name: "default + blocking canary", guard: load_guard(&canaries_block), dry_run: false, canary_block: Some(true), sidecar: false, max_body: default_max },
            Variant {
                name: "default + reporting canary + maxBodyBytes 4096",
                guard: load_guard(&canaries_report),
                dry_run: false,
                canary_block: Some(false),
                sidecar: false,
                max_body: SMALL_MAX_BODY,
            },
            Variant { name: "default + access.dryRun", guard: load_guard(&dry_run), dry_run: true, canary_block: None, sidecar: false, max_body: default_max },
            Variant { name: "default in sidecar mode (node identity)", guard: load_guard(&sidecar), dry_run: false, canary_block: None, sidecar: true, max_body: default_max },
        ];
        let guard = &variants[0].guard;
        let (infos, dict) = rewriter::catalog_model(guard);

        // The catalog's operations (method, template, restricted), from the catalog file.
        let file: Value = serde_json::from_str(spapi_guard::catalog::BUILTIN_CATALOG).expect("catalog");
        let mut ops = Vec::new();
        for (index, op) in file["operations"].as_array().expect("operations").iter().enumerate() {
            let id = op["id"].as_str().expect("id").to_string();
            assert_eq!(guard.catalog.operations[index].id, id, "the compiled catalog keeps the file's order");
            let template = op["pathTemplate"].as_str().expect("template");
            ops.push(OpModel {
                method: op["method"].as_str().expect("method").to_string(),
                segments: template.trim_start_matches('/').split('/').map(|s| if s.starts_with('{') { None } else { Some(s.to_string()) }).collect(),
                restricted: op["restricted"].as_bool().expect("restricted"),
                query_pii: op["queryPii"].as_array().map(|a| a.iter().filter_map(|q| q["param"].as_str().map(str::to_string)).collect()).unwrap_or_default(),
                info: infos.iter().position(|i| i.index == index),
                id,
            });
        }

        // The callers, from the policy's roles.
        let mut callers = Vec::new();
        for (name, caller) in [("order-sync", 0), ("label-printer", 1), ("analytics", 2)] {
            let doc = &policy["callers"][caller];
            let role = &policy["roles"][doc["roles"][0].as_str().expect("role")];
            assert_eq!(doc["roles"].as_array().map(Vec::len), Some(1), "one role per caller in the model");
            let allow_restricted = role["allowRestricted"].as_bool().unwrap_or(true);
            let patterns: Vec<&str> = role["operations"].as_array().expect("operations").iter().filter_map(Value::as_str).collect();
            let operations = ops.iter().map(|op| patterns.iter().any(|p| glob(p, &op.id)) && (allow_restricted || !op.restricted)).collect();
            let mut actions = PerClass::splat(Action::Remove);
            let pii = role["pii"].as_object().cloned().unwrap_or_default();
            for class in PiiClass::ALL {
                if let Some(level) = pii.get(class.as_str()).or(pii.get("*")).and_then(Value::as_str) {
                    actions[class] = level_action(level, class_mode(&policy, class));
                }
            }
            let allow = doc["allowCidrs"].as_array().map(|a| a.iter().filter_map(|c| c.as_str()).map(|c| &*Box::leak(c.to_string().into_boxed_str())).collect());
            callers.push(CallerModel { name, id: doc["id"].as_str().expect("id").to_string(), operations, actions, allow });
        }
        let pass_through = policy["access"]["passThroughPaths"]
            .as_array()
            .expect("passThroughPaths")
            .iter()
            .filter_map(Value::as_str)
            .map(|p| p.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect())
            .collect();

        let dir = root.join("tests/fixtures/spapi");
        let index: Value = serde_json::from_slice(&std::fs::read(dir.join("INDEX.json")).expect("INDEX.json")).expect("index");
        let mut other_fixtures: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
        let mut request_fixtures: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
        for entry in index.as_array().expect("index") {
            let (Some(method), Some(path), Some(name)) = (entry["method"].as_str(), entry["path"].as_str(), entry["file"].as_str()) else { continue };
            let Some(i) = guard.catalog.route_index(method, path) else { continue };
            let Ok(body) = std::fs::read(dir.join(name)) else { continue };
            if entry["kind"] == "request" {
                request_fixtures.entry(i).or_default().push(body);
            } else if ops[i].info.is_none() {
                other_fixtures.entry(i).or_default().push(body);
            }
        }
        let schema: Value = serde_json::from_slice(&std::fs::read(root.join("docs/audit-event.schema.json")).expect("schema")).expect("schema json");
        ExchangeTarget {
            policy_actions: policy_actions(&policy),
            variants,
            ids: Rc::new(DecisionIds::new()),
            ops,
            infos,
            dict,
            callers,
            pass_through,
            other_fixtures,
            request_fixtures,
            schema,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

fn marker(rng: &mut Rng) -> String {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::from("Qv");
    for _ in 0..12 {
        s.push(ALNUM[rng.below(ALNUM.len())] as char);
    }
    s
}

/// Percent-encodes some characters of `s` (all of them with `all`).
fn percent_some(s: &str, rng: &mut Rng, all: bool) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if !c.is_ascii() || all || rng.chance(25) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A path parameter around a planted marker: canonical (a valid segment) whatever the spelling.
fn parameter(m: &str, rng: &mut Rng) -> String {
    match rng.below(6) {
        0 | 1 => m.to_string(),
        2 => format!("902-{m}-1"),
        3 => {
            let all = rng.chance(30);
            percent_some(m, rng, all)
        }
        4 => format!("{m}%40example.com"),
        _ => percent_some(&format!("\u{e9}{m}"), rng, false),
    }
}

/// Spellings that make a segment non-canonical.
const BAD_SEGMENTS: &[&str] = &["..", ".", "%2e%2E", "..;x", "", "a%2Fb", "a%5Cb", "a\\b", "%ZZ", "a%00", "a%0A", "\u{e9}", "a b", "%C3%28"];

impl ExchangeTarget {
    fn rdt_index(&self) -> usize {
        self.ops.iter().position(|o| o.id == RDT_ID).expect("RDT operation")
    }

    /// A request path: (method, path, what it was built as).
    fn request_target(&self, rng: &mut Rng, who: Who, markers: &mut Vec<String>) -> (String, String, Built) {
        let kind = rng.below(100);
        if kind < 8 {
            let m = marker(rng);
            markers.push(m.clone());
            let path = match rng.below(3) {
                0 => format!("/catalog/2022-04-01/items/{m}"),
                1 => "/sellers/v1/marketplaceParticipations".to_string(),
                _ => format!("/fba/inventory/v1/summaries?details=true&sellerSkus={m}"),
            };
            return ("GET".into(), path, Built::PassThrough);
        }
        if kind < 13 {
            let m = marker(rng);
            markers.push(m.clone());
            let path = rng.pick(&["/foo/v1/", "/orders/v0/", "/catalogue/", "/tokens/2021-03-01/", "/orders/v0/orders/1/"]).to_string() + &m;
            return (rng.pick(&["GET", "POST"]).to_string(), path, Built::Unknown);
        }
        let allowed: Vec<usize> = match who {
            Who::Caller(c) => (0..self.ops.len()).filter(|&i| self.callers[c].operations[i]).collect(),
            _ => Vec::new(),
        };
        let index = if kind < 25 {
            self.rdt_index()
        } else if kind < 70 && !allowed.is_empty() {
            // Mostly what the caller may call (with PII, most of the time).
            let with_pii: Vec<usize> = allowed.iter().copied().filter(|&i| self.ops[i].info.is_some()).collect();
            if !with_pii.is_empty() && rng.chance(80) {
                *rng.pick(&with_pii)
            } else {
                *rng.pick(&allowed)
            }
        } else {
            rng.below(self.ops.len())
        };
        let op = &self.ops[index];
        let mut segments: Vec<String> = op
            .segments
            .iter()
            .map(|s| match s {
                Some(l) if rng.chance(5) => percent_some(l, rng, false),
                Some(l) => l.clone(),
                None => {
                    let m = marker(rng);
                    markers.push(m.clone());
                    parameter(&m, rng)
                }
            })
            .collect();
        let mut built = Built::Operation(index);
        if rng.chance(4) {
            let at = rng.below(segments.len());
            segments[at] = rng.pick(BAD_SEGMENTS).to_string();
            built = Built::Invalid;
        }
        let mut path = format!("/{}", segments.join("/"));
        let mut query: Vec<String> = Vec::new();
        for name in &op.query_pii {
            if rng.chance(70) {
                let m = marker(rng);
                markers.push(m.clone());
                let name = if rng.chance(20) { percent_some(name, rng, false) } else { name.clone() };
                let value = match rng.below(3) {
                    0 => format!("{m}%40example.com"),
                    1 => m.clone(),
                    _ => percent_some(&m, rng, true),
                };
                query.push(format!("{name}={value}"));
            }
        }
        if op.id.starts_with("orders-2026-01-01.") && rng.chance(60) {
            query
                .push(format!("includedData={}", rng.pick(&["BUYER", "RECIPIENT", "PROCEEDS", "PACKAGES", "TAX", "buyer", "BUYER,PROCEEDS", "PROCEEDS,PACKAGES", "*", "BUYER;x"])));
        }
        if rng.chance(40) {
            query.push(rng.pick(&["MarketplaceIds=ATVPDKIKX0DER", "CreatedAfter=2024-01-01T00%3A00%3A00Z", "MaxResultsPerPage=50", "nextToken=abc"]).to_string());
        }
        if rng.chance(15) {
            let m = marker(rng);
            markers.push(m.clone());
            query.push(format!("{m}={m}"));
        }
        if rng.chance(1) {
            query.push(rng.pick(&["x=%ZZ", "x=a%0Ab", "x=\u{e9}"]).to_string());
            built = Built::Invalid;
        }
        if rng.chance(1) {
            path.push_str("#frag");
            built = Built::Invalid;
        }
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        if !path.contains('#') && rng.chance(3) {
            // (Only with the blocking or reporting canary policies does it matter.)
            path = format!("{path}{}canary={CANARY}", if path.contains('?') { "&" } else { "?" });
            markers.push(CANARY.to_string());
        }
        let method = if rng.chance(95) { op.method.clone() } else { rng.pick(&["GET", "POST", "PUT", "DELETE"]).to_string() };
        (method, path, built)
    }

    /// A path for a restricted resource: generic (`{orderId}`) or specific, sometimes invalid.
    fn resource(&self, rng: &mut Rng, who: Who, markers: &mut Vec<String>) -> Resource {
        let candidates: Vec<usize> = match who {
            // Mostly what the label printer may ask for.
            Who::Caller(1) if rng.chance(60) => {
                self.ops.iter().enumerate().filter(|(_, o)| o.id == "orders-v0.getOrderAddress" || o.id == "merchant-fulfillment-v0.getShipment").map(|(i, _)| i).collect()
            }
            _ if rng.chance(60) => self.ops.iter().enumerate().filter(|(_, o)| o.restricted).map(|(i, _)| i).collect(),
            _ => (0..self.ops.len()).collect(),
        };
        let op = &self.ops[*rng.pick(&candidates)];
        let generic = rng.chance(50);
        let mut segments: Vec<String> = op
            .segments
            .iter()
            .map(|s| match s {
                Some(l) => l.clone(),
                None if generic => "{orderId}".to_string(),
                None => {
                    let m = marker(rng);
                    markers.push(m.clone());
                    m
                }
            })
            .collect();
        if rng.chance(6) {
            let at = rng.below(segments.len());
            segments[at] = rng.pick(BAD_SEGMENTS).to_string();
        }
        let path = if rng.chance(4) { format!("/unknown/v1/{}", segments.last().cloned().unwrap_or_default()) } else { format!("/{}", segments.join("/")) };
        let method = if rng.chance(92) { op.method.clone() } else { rng.pick(&["GET", "POST", "PUT", "DELETE", "get"]).to_string() };
        let own: BTreeSet<String> = op.info.map(|i| self.infos[i].rules.iter().filter_map(|r| r.data_element.clone()).collect()).unwrap_or_default();
        let own: Vec<String> = own.into_iter().collect();
        let elements = match rng.below(10) {
            0..=3 => None,
            4 => Some(Ok(Vec::new())),
            5..=7 if !own.is_empty() => Some(Ok((0..rng.range(1, 2)).map(|_| rng.pick(&own).clone()).collect())),
            8 => Some(Ok(vec![rng.pick(&["buyerInfo", "shippingAddress", "buyerTaxInformation", "bogus", "BuyerInfo", "includedData=BUYER"]).to_string()])),
            _ => Some(Err(rng.pick(&[json!("buyerInfo"), json!([1]), json!({"a": 1}), json!(null)]).clone())),
        };
        Resource { method, path, elements }
    }

    fn rdt(&self, rng: &mut Rng, who: Who, markers: &mut Vec<String>) -> (Rdt, Vec<u8>) {
        let n = match rng.below(20) {
            0 => 0,
            1 => RDT_MAX_RESOURCES + 1,
            _ => rng.range(1, 4),
        };
        let resources: Vec<Resource> = (0..n).map(|_| self.resource(rng, who, markers)).collect();
        let value = |r: &Resource| {
            let mut v = json!({"method": r.method, "path": r.path});
            match &r.elements {
                None => {}
                Some(Ok(list)) => v["dataElements"] = json!(list),
                Some(Err(other)) => v["dataElements"] = other.clone(),
            }
            v
        };
        let mut body = json!({"restrictedResources": resources.iter().map(value).collect::<Vec<_>>()}).to_string().into_bytes();
        let mut malformed = None;
        if rng.chance(12) && !resources.is_empty() {
            let text = String::from_utf8(body.clone()).expect("utf8");
            let (why, bad) = match rng.below(5) {
                0 => ("duplicate key", text.replacen("\"path\":", "\"path\":\"/orders/v0/orders/{orderId}/address\",\"path\":", 1)),
                1 => ("a key in two spellings", text.replacen("\"path\":", "\"Path\":\"/orders/v0/orders/{orderId}/address\",\"path\":", 1)),
                2 => ("truncated", text[..rng.range(1, text.len() - 1)].to_string()),
                3 => ("not an object", format!("[{text}]")),
                _ => ("no method", text.replacen("\"method\":", "\"verb\":", 1)),
            };
            malformed = Some(why);
            body = bad.into_bytes();
        }
        if rng.chance(5) {
            // Planted in the RDT body: checked (and blocked) when the body ends.
            let text = String::from_utf8(body).expect("utf8");
            body = text.replacen('{', &format!("{{\"note\":\"{CANARY}\","), 1).into_bytes();
            markers.push(CANARY.to_string());
        }
        (Rdt { resources, malformed }, body)
    }

    /// A response body for the operation: its fixture or a document from nothing, with values
    /// planted at its PII paths (markers), sometimes malformed.
    fn response_body(&self, rng: &mut Rng, built: Built, markers: &mut Vec<String>) -> Vec<u8> {
        let info = match built {
            Built::Operation(i) => self.ops[i].info.map(|k| &self.infos[k]),
            _ => None,
        };
        let Some(info) = info else {
            // No PII: a fixture of the operation, or some JSON; streamed as it is.
            let fixture = match built {
                Built::Operation(i) => self.other_fixtures.get(&i).map(|f| rng.pick(f).clone()),
                _ => None,
            };
            let mut body = fixture.unwrap_or_else(|| br#"{"payload":{"items":[{"asin":"B00X","quantity":3}],"nextToken":null}}"#.to_vec());
            if rng.chance(15) {
                // A canary in a streamed body: reported (wherever the chunks split it), not blocked.
                if let Some(at) = body.iter().position(|&b| b == b'{') {
                    body.splice(at + 1..at + 1, format!("\"note\":\"{CANARY}\",").bytes());
                    markers.push(CANARY.to_string());
                }
            }
            return body;
        };
        let dict = &self.dict;
        let mut doc = if !info.fixtures.is_empty() && rng.chance(70) {
            let fixture = rng.pick(&info.fixtures);
            rewriter::to_g(&refjson::parse(fixture, false).expect("fixture parses"), fixture)
        } else {
            G::Obj(Vec::new())
        };
        for _ in 0..rng.range(1, 6) {
            let rule = rng.pick(&info.rules);
            let leaf = if rule.number {
                let digits: String = (0..8).map(|_| char::from(b'0' + rng.below(10) as u8)).collect();
                let n = format!("{}{}.{digits}", if rng.chance(50) { "-" } else { "" }, rng.range(0, 179));
                markers.push(n.clone());
                G::Num(n)
            } else if rng.chance(4) {
                markers.push(CANARY.to_string());
                G::Str(CANARY.to_string())
            } else if rng.chance(3) {
                // A number where Amazon's model has a string (an upstream sending a phone or a
                // postal code as a number): all digits, so the check knows it.
                let n: String = (0..12).map(|i| char::from(b'0' + if i == 0 { rng.range(1, 9) } else { rng.below(10) } as u8)).collect();
                markers.push(n.clone());
                G::Num(n)
            } else {
                let core = rewriter::marker_core(rng);
                markers.push(core.clone());
                G::Str(match rng.below(5) {
                    0 => core,
                    1 => format!("{}{core}{}", rewriter::junk(rng, 4), rewriter::junk(rng, 4)),
                    2 => format!("{core}@example.com"),
                    3 => format!("Jane {core}"),
                    _ => format!("{core}\"\\/\u{e9}"),
                })
            };
            rewriter::plant(&mut doc, &rule.steps, leaf, rng, dict);
        }
        for _ in 0..rng.small(6) {
            rewriter::noise(&mut doc, rng, dict, 0);
        }
        let style = Style { ws: rng.below(4) as u8, escape: *rng.pick(&[0, 0, 0, 5, 50]), upper_hex: rng.chance(50), lone: if rng.chance(6) { 20 } else { 0 } };
        let mut body = Vec::new();
        rewriter::serialize(&doc, &mut body, &style, rng, 0);
        if rng.chance(8) {
            rewriter::mutate(&mut body, rng);
        }
        if rng.chance(3) {
            // Past the small policy's maxBodyBytes.
            let pad = " ".repeat(SMALL_MAX_BODY);
            let at = body.len().min(1);
            body.splice(at..at, pad.bytes());
        }
        body
    }
}

/// Splits `body` into 0..n chunks at random points (empty chunks included now and then).
fn chunks(body: &[u8], rng: &mut Rng) -> Vec<Vec<u8>> {
    if body.is_empty() {
        return if rng.chance(50) { Vec::new() } else { vec![Vec::new()] };
    }
    let n = match rng.below(10) {
        0..=3 => 1,
        4..=7 => rng.range(2, 4),
        _ => rng.range(5, 12),
    };
    let mut cuts: Vec<usize> = (1..n).map(|_| rng.below(body.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts.into_iter().chain([body.len()]) {
        out.push(body[at..c].to_vec());
        at = c;
    }
    out
}

impl Target for ExchangeTarget {
    type Case = Case;

    fn name(&self) -> &'static str {
        "exchange"
    }

    fn generate(&mut self, rng: &mut Rng) -> Case {
        let variant = *rng.pick(&[0, 0, 0, 1, 2, 3, 4]);
        let who = match rng.below(40) {
            0..=17 => Who::Caller(0),
            18..=27 => Who::Caller(1),
            28..=33 => Who::Caller(2),
            34..=37 => Who::Intruder,
            _ => Who::Anonymous,
        };
        let tls = rng.chance(96);
        let source = if rng.chance(90) { SOURCES[0] } else { *rng.pick(&SOURCES[1..]) };
        let mut markers = Vec::new();
        let (method, path, built) = self.request_target(rng, who, &mut markers);

        let is_rdt = built == Built::Operation(self.rdt_index());
        let (rdt, request_body) = if is_rdt && rng.chance(90) {
            let (rdt, body) = self.rdt(rng, who, &mut markers);
            (Some(rdt), body)
        } else if is_rdt {
            // No RDT request at all: refused when it ends.
            (None, rng.pick(&[&b""[..], b"{}", b"[]", b"not json", br#"{"restrictedResources":[]}"#, br#"{"restrictedResources":{}}"#]).to_vec())
        } else if method != "GET" && rng.chance(70) {
            let fixture = match built {
                Built::Operation(i) => self.request_fixtures.get(&i).map(|f| rng.pick(f).clone()),
                _ => None,
            };
            let m = if rng.chance(15) { CANARY.to_string() } else { marker(rng) };
            markers.push(m.clone());
            let mut body = fixture.unwrap_or_else(|| b"{}".to_vec());
            let note = format!("\"note\":\"{m}\"");
            if body.starts_with(b"{}") {
                body.splice(1..1, note.bytes());
            } else if let Some(at) = body.iter().position(|&b| b == b'{') {
                body.splice(at + 1..at + 1, format!("{note},").bytes());
            }
            (None, body)
        } else {
            (None, Vec::new())
        };
        let request_chunks = if request_body.is_empty() && !is_rdt && rng.chance(70) { Vec::new() } else { chunks(&request_body, rng) };
        let request_trailers = rng.chance(25);

        let response = if rng.chance(95) {
            let body = self.response_body(rng, built, &mut markers);
            let json_type = if rng.chance(92) {
                *rng.pick(&["application/json", "application/json", "application/json;charset=UTF-8", "Application/JSON", "application/vnd.x+json"])
            } else {
                *rng.pick(&[
                    "text/html",
                    "",
                    "application/jsonx",
                    "text/json",
                    "application/json; charset=ISO-8859-1",
                    "application/json; Charset=\"utf-8\"",
                    "application/json;charset=utf-16",
                ])
            };
            let mut headers = vec![(":status".to_string(), rng.pick(&["200", "200", "200", "400", "404", "500"]).to_string())];
            if !json_type.is_empty() {
                headers.push(("content-type".into(), json_type.into()));
            }
            match rng.below(20) {
                0 => headers.push(("content-encoding".into(), rng.pick(&["gzip", "br", "identity", " Identity "]).to_string())),
                1 => headers.push(("content-length".into(), rng.pick(&["abc", "99999999999", "-1", "0"]).to_string())),
                2..=7 => headers.push(("content-length".into(), body.len().to_string())),
                _ => {}
            }
            let eos_at_headers = rng.chance(5);
            let (mut chunks, trailers) = if eos_at_headers { (Vec::new(), false) } else { (chunks(&body, rng), rng.chance(25)) };
            if !eos_at_headers && chunks.is_empty() && !trailers {
                // Headers without end_of_stream: the body or trailers end the stream.
                chunks.push(Vec::new());
            }
            Some(Response { headers, eos_at_headers, chunks, trailers })
        } else {
            None
        };
        let early_response = (!request_chunks.is_empty() && rng.chance(5)).then(|| rng.below(request_chunks.len()));
        let reset_at = rng.chance(15).then(|| rng.below(2 + request_chunks.len() + response.as_ref().map_or(0, |r| r.chunks.len() + 2)));
        Case {
            variant,
            who,
            tls,
            source,
            method,
            path,
            built,
            rdt,
            request_chunks,
            request_trailers,
            early_response,
            response,
            reply_chunks: rng.below(3),
            reply_trailers: rng.chance(20),
            offer_after_reply: rng.chance(50),
            reset_at,
            lock: if rng.chance(90) { 0 } else { rng.range(1, 2) as u8 },
            spoof_identity: rng.chance(15),
            markers,
        }
    }

    fn check(&mut self, case: &Case) -> Result<Outcome, Failure> {
        let played = self.play(case);
        self.verify(case, &played)
    }

    fn shrink(&self, case: &Case) -> Vec<Case> {
        let mut out = Vec::new();
        if case.reset_at.is_some() {
            out.push(Case { reset_at: None, ..case.clone() });
        }
        if case.early_response.is_some() {
            out.push(Case { early_response: None, ..case.clone() });
        }
        if case.request_chunks.len() > 1 {
            out.push(Case { request_chunks: vec![case.request_chunks.concat()], early_response: None, ..case.clone() });
        }
        if case.request_trailers {
            out.push(Case { request_trailers: false, ..case.clone() });
        }
        if let Some(r) = &case.response {
            if r.chunks.len() > 1 {
                out.push(Case { response: Some(Response { chunks: vec![r.chunks.concat()], ..r.clone() }), ..case.clone() });
            }
            if r.trailers {
                out.push(Case { response: Some(Response { trailers: false, ..r.clone() }), ..case.clone() });
            }
            // Drop members of a JSON body one by one.
            let body = r.chunks.concat();
            if let Ok(tree) = refjson::parse(&body, true) {
                let mut cuts = Vec::new();
                member_cuts(&tree, &mut cuts);
                cuts.sort_by_key(|(a, b)| std::cmp::Reverse(b - a));
                for (a, b) in cuts.into_iter().take(200) {
                    let mut smaller = body.clone();
                    smaller.drain(a..b);
                    out.push(Case { response: Some(Response { chunks: vec![smaller], ..r.clone() }), ..case.clone() });
                }
            }
        }
        out
    }

    fn describe(&self, case: &Case) -> String {
        let who = match case.who {
            Who::Caller(i) => format!("{} ({})", self.callers[i].id, self.callers[i].name),
            Who::Intruder => INTRUDER.to_string(),
            Who::Anonymous => "(no certificate)".to_string(),
        };
        let text = |b: &[u8]| json_string(&String::from_utf8_lossy(b));
        let chunks = |c: &[Vec<u8>]| format!("[{}]", c.iter().map(|x| text(x)).collect::<Vec<_>>().join(","));
        let response = case.response.as_ref().map_or("null".to_string(), |r| {
            format!(
                "{{\"headers\":{},\"eos_at_headers\":{},\"chunks\":{},\"trailers\":{}}}",
                json_string(&format!("{:?}", r.headers)),
                r.eos_at_headers,
                chunks(&r.chunks),
                r.trailers
            )
        });
        format!(
            "{{\"policy\":{},\"caller\":{},\"tls\":{},\"source\":{},\"method\":{},\"path\":{},\"built\":{},\"request_chunks\":{},\"request_trailers\":{},\"early_response\":{:?},\"response\":{},\"reply_chunks\":{},\"reply_trailers\":{},\"offer_after_reply\":{},\"reset_at\":{},\"markers\":{}}}",
            json_string(self.variants[case.variant].name),
            json_string(&who),
            case.tls,
            json_string(case.source),
            json_string(&case.method),
            json_string(&case.path),
            json_string(&format!("{:?}", case.built)),
            chunks(&case.request_chunks),
            case.request_trailers,
            case.early_response.map_or(-1, |n| n as i64),
            response,
            case.reply_chunks,
            case.reply_trailers,
            case.offer_after_reply,
            case.reset_at.map_or("null".to_string(), |n| n.to_string()),
            json_string(&case.markers.join(","))
        )
    }
}

/// Byte ranges whose removal drops one object member (with a separator).
fn member_cuts(node: &Node, out: &mut Vec<(usize, usize)>) {
    match &node.kind {
        Kind::Obj(ms) => {
            for (i, m) in ms.iter().enumerate() {
                if i + 1 < ms.len() {
                    out.push((m.start, ms[i + 1].start));
                } else if i > 0 {
                    out.push((ms[i - 1].value.end, m.value.end));
                }
                member_cuts(&m.value, out);
            }
        }
        Kind::Arr(items) => items.iter().for_each(|n| member_cuts(n, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The host and the driver
// ---------------------------------------------------------------------------------------------

/// `MockHost`, counting the audit events the filter sets.
struct FuzzHost {
    mock: MockHost,
    audits: Vec<String>,
}

impl Host for FuzzHost {
    fn log(&self, level: Level, message: &str) {
        self.mock.log(level, message)
    }
    fn now_ms(&self) -> u64 {
        self.mock.now_ms()
    }
    fn count(&self, metric: &str, labels: &[(&str, &str)], n: u64) {
        self.mock.count(metric, labels, n)
    }
    fn lock_state(&self, caller_id: &str) -> LockState {
        self.mock.lock_state(caller_id)
    }
    fn update_lock(&self, caller_id: &str, update: &dyn Fn(&mut LockState, u64) -> Trigger) -> Trigger {
        self.mock.update_lock(caller_id, update)
    }
    fn gauge(&self, metric: &str, labels: &[(&str, &str)], value: u64) {
        self.mock.gauge(metric, labels, value)
    }
    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        self.mock.shared_get(key)
    }
    fn shared_set(&self, key: &str, value: &[u8]) {
        self.mock.shared_set(key, value)
    }
}

impl HttpHost for FuzzHost {
    fn set_request_body(&mut self, replaced: usize, body: &[u8]) {
        self.mock.set_request_body(replaced, body)
    }
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.mock.request_header(name)
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        self.mock.set_request_header(name, value)
    }
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.mock.response_header(name)
    }
    fn response_header_names(&self) -> Vec<String> {
        self.mock.response_header_names()
    }
    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        self.mock.set_response_header(name, value)
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.mock.property(path)
    }
    fn request_body(&self, max: usize) -> Vec<u8> {
        self.mock.request_body(max)
    }
    fn response_body(&self, max: usize) -> Vec<u8> {
        self.mock.response_body(max)
    }
    fn set_response_body(&mut self, replaced: usize, body: &[u8]) {
        self.mock.set_response_body(replaced, body)
    }
    fn send_reply(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.mock.send_reply(status, headers, body)
    }
    fn set_audit(&mut self, json: &str) {
        self.audits.push(json.to_string());
        self.mock.set_audit(json)
    }
    fn reset_stream(&mut self) {
        self.mock.reset_stream()
    }
}

/// What happened in one exchange, as the client, the upstream and the host saw it.
#[derive(Default)]
struct Run {
    /// Callbacks made before `on_log`.
    steps: usize,
    /// Stopped by a reset (the step budget).
    reset: bool,
    headers_seen: bool,
    /// What `on_request_headers` and the upstream's `on_response_headers` returned.
    request_headers_flow: Option<Flow>,
    response_headers_flow: Option<Flow>,
    request_reply: Option<SentReply>,
    /// The request's headers reached the upstream.
    contacted: bool,
    /// Request body bytes released to the upstream.
    request_released: Vec<u8>,
    /// The filter saw the end of the request (end_of_stream or trailers).
    request_ended: bool,
    /// The last request phase returned Pause (and no reply was sent).
    request_paused: bool,
    /// The upstream answered before the request body ended.
    early: bool,
    /// The request-phase reply as it flowed back: flows and the bytes released.
    reply_flows: Vec<Flow>,
    reply_delivered: Vec<u8>,
    response_started: bool,
    response_chunks_played: usize,
    response_reply: Option<SentReply>,
    headers_released: bool,
    /// Upstream body bytes released to the client.
    delivered: Vec<u8>,
    response_ended: bool,
    response_paused: bool,
    /// Flows of the upstream phases offered after a response-phase reply.
    after_reply: Vec<Flow>,
    /// A second local reply, or a body written, after the first reply.
    after_reply_acted: bool,
    /// The status the client got (the `response.code` property at `on_log`).
    status: Option<i64>,
}

fn step(run: &mut Run, budget: usize) -> Option<()> {
    if run.steps >= budget {
        run.reset = true;
        return None;
    }
    run.steps += 1;
    Some(())
}

impl ExchangeTarget {
    /// Plays the case the way Envoy would, then `on_log`.
    fn play(&self, case: &Case) -> (Run, FuzzHost) {
        let variant = &self.variants[case.variant];
        let mut ex = Exchange::new(Rc::clone(&variant.guard), Rc::clone(&self.ids));
        let identity = match case.who {
            Who::Caller(i) => Some(self.callers[i].id.as_str()),
            Who::Intruder => Some(INTRUDER),
            Who::Anonymous => None,
        };
        let mut mock = MockHost::new(&case.method, &case.path, identity);
        if !case.tls {
            mock.remove_property("connection.tls_version");
        }
        mock.set_property("source.address", case.source.as_bytes());
        if variant.sidecar {
            mock.set_property("xds.node.id", NODE_ID.as_bytes());
        }
        mock.add_request_header("accept-encoding", "gzip, br");
        if case.spoof_identity {
            mock.add_request_header(IDENTITY_HEADER, &self.callers[0].id);
        }
        let lock_id = match case.who {
            _ if variant.sidecar => Some(NODE_ID),
            Who::Caller(i) => Some(self.callers[i].id.as_str()),
            _ => None,
        };
        if let (Some(id), 1..) = (lock_id, case.lock) {
            let now = mock.now.get();
            let state = if case.lock == 1 {
                LockState { locked_until_ms: now + 90_000, ..LockState::default() }
            } else {
                LockState { denials: vec![now - 1_000; 9], ..LockState::default() }
            };
            mock.locks.borrow_mut().insert(id.to_string(), state);
        }
        let started_ns = mock.now.get() as i64 * 1_000_000 - 5_000_000;
        mock.set_property("request.time", &started_ns.to_le_bytes());
        let mut host = FuzzHost { mock, audits: Vec::new() };
        let mut run = Run::default();
        let _ = self.drive(case, &mut ex, &mut host, &mut run, case.reset_at.unwrap_or(usize::MAX));
        if let Some(code) = run.status {
            host.mock.set_property("response.code", &code.to_le_bytes());
        }
        ex.on_log(&mut host);
        (run, host)
    }

    fn drive(&self, case: &Case, ex: &mut Exchange, host: &mut FuzzHost, run: &mut Run, budget: usize) -> Option<()> {
        // The request.
        step(run, budget)?;
        run.headers_seen = true;
        let eos = case.request_chunks.is_empty() && !case.request_trailers;
        let flow = ex.on_request_headers(host, eos);
        run.request_headers_flow = Some(flow);
        if let Some(reply) = host.mock.reply.take() {
            return self.reply_flows_back(case, ex, host, run, reply, budget);
        }
        run.contacted = flow == Flow::Continue;
        run.request_paused = flow == Flow::Pause;
        run.request_ended = eos;
        let mut buffered: Vec<u8> = Vec::new();
        for (i, chunk) in case.request_chunks.iter().enumerate() {
            if case.early_response == Some(i) && run.contacted && !run.request_paused {
                run.early = true;
                break;
            }
            step(run, budget)?;
            let mut held = buffered.clone();
            held.extend_from_slice(chunk);
            host.mock.request_body = held.clone();
            let last = i + 1 == case.request_chunks.len() && !case.request_trailers;
            let flow = ex.on_request_body(host, held.len(), last);
            run.request_ended = last;
            if let Some(reply) = host.mock.reply.take() {
                return self.reply_flows_back(case, ex, host, run, reply, budget);
            }
            match flow {
                Flow::Pause => buffered = held,
                Flow::Continue => {
                    run.request_released.extend_from_slice(&held);
                    buffered.clear();
                    run.contacted = true;
                }
            }
            run.request_paused = flow == Flow::Pause;
            run.request_ended = last;
        }
        if case.request_trailers && !run.early {
            step(run, budget)?;
            host.mock.request_body = buffered.clone();
            let flow = ex.on_request_trailers(host);
            run.request_ended = true;
            if let Some(reply) = host.mock.reply.take() {
                return self.reply_flows_back(case, ex, host, run, reply, budget);
            }
            if flow == Flow::Continue {
                run.request_released.extend_from_slice(&buffered);
                run.contacted = true;
            }
            run.request_paused = flow == Flow::Pause;
            run.request_ended = true;
        }

        // The upstream's response.
        let Some(response) = case.response.as_ref().filter(|_| run.contacted) else { return Some(()) };
        step(run, budget)?;
        let headers: Vec<(&str, &str)> = response.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        host.mock.set_response_headers(&headers);
        run.response_started = true;
        let flow = ex.on_response_headers(host, response.eos_at_headers);
        run.response_headers_flow = Some(flow);
        if let Some(reply) = host.mock.reply.take() {
            run.status = Some(i64::from(reply.status));
            run.response_reply = Some(reply);
            return self.offer_after_reply(case, ex, host, run, 0);
        }
        run.headers_released = flow == Flow::Continue;
        run.response_paused = flow == Flow::Pause;
        run.response_ended = response.eos_at_headers;
        let mut buffered: Vec<u8> = Vec::new();
        for (i, chunk) in response.chunks.iter().enumerate() {
            step(run, budget)?;
            run.response_chunks_played = i + 1;
            let mut held = buffered.clone();
            held.extend_from_slice(chunk);
            host.mock.response_body = held;
            host.mock.response_body_set = false;
            let last = i + 1 == response.chunks.len() && !response.trailers;
            let size = host.mock.response_body.len();
            let flow = ex.on_response_body(host, size, last);
            if let Some(reply) = host.mock.reply.take() {
                run.status = Some(i64::from(reply.status));
                run.response_reply = Some(reply);
                return self.offer_after_reply(case, ex, host, run, i + 1);
            }
            let held = host.mock.response_body.clone();
            match flow {
                Flow::Pause => buffered = held,
                Flow::Continue => {
                    run.delivered.extend_from_slice(&held);
                    buffered.clear();
                    run.headers_released = true;
                }
            }
            run.response_paused = flow == Flow::Pause;
            run.response_ended = last;
        }
        if response.trailers {
            step(run, budget)?;
            host.mock.response_body = buffered;
            host.mock.response_body_set = false;
            let flow = ex.on_response_trailers(host);
            if let Some(reply) = host.mock.reply.take() {
                run.status = Some(i64::from(reply.status));
                run.response_reply = Some(reply);
                return self.offer_after_reply(case, ex, host, run, response.chunks.len());
            }
            if flow == Flow::Continue {
                let held = host.mock.response_body.clone();
                run.delivered.extend_from_slice(&held);
                run.headers_released = true;
            }
            run.response_paused = flow == Flow::Pause;
            run.response_ended = true;
        }
        if run.headers_released {
            run.status = response.headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse().ok());
        }
        Some(())
    }

    /// A local reply of the request phase goes back to the client through the response
    /// callbacks (Envoy runs it through the encoder filters).
    fn reply_flows_back(&self, case: &Case, ex: &mut Exchange, host: &mut FuzzHost, run: &mut Run, reply: SentReply, budget: usize) -> Option<()> {
        run.status = Some(i64::from(reply.status));
        run.request_reply = Some(reply.clone());
        run.request_paused = false;
        step(run, budget)?;
        let mut headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let status = reply.status.to_string();
        headers.push((":status", &status));
        host.mock.set_response_headers(&headers);
        let parts: Vec<&[u8]> = if reply.body.is_empty() { Vec::new() } else { reply.body.chunks(reply.body.len().div_ceil(case.reply_chunks + 1)).collect() };
        let eos = parts.is_empty() && !case.reply_trailers;
        run.reply_flows.push(ex.on_response_headers(host, eos));
        for (i, part) in parts.iter().enumerate() {
            step(run, budget)?;
            host.mock.response_body = part.to_vec();
            let last = i + 1 == parts.len() && !case.reply_trailers;
            let flow = ex.on_response_body(host, part.len(), last);
            run.reply_flows.push(flow);
            if flow == Flow::Continue {
                run.reply_delivered.extend_from_slice(&host.mock.response_body);
            }
        }
        if case.reply_trailers {
            step(run, budget)?;
            host.mock.response_body = Vec::new();
            run.reply_flows.push(ex.on_response_trailers(host));
        }
        if host.mock.reply.is_some() {
            run.after_reply_acted = true;
        }
        Some(())
    }

    /// After a response-phase reply Envoy may still offer the upstream's remaining body and
    /// trailers: none of it may pass, nothing else may be sent.
    fn offer_after_reply(&self, case: &Case, ex: &mut Exchange, host: &mut FuzzHost, run: &mut Run, from: usize) -> Option<()> {
        let Some(response) = case.response.as_ref().filter(|_| case.offer_after_reply) else { return Some(()) };
        let written = host.mock.response_body_set;
        for (i, chunk) in response.chunks.iter().enumerate().skip(from) {
            host.mock.response_body = chunk.clone();
            let last = i + 1 == response.chunks.len() && !response.trailers;
            run.after_reply.push(ex.on_response_body(host, chunk.len(), last));
        }
        if response.trailers {
            run.after_reply.push(ex.on_response_trailers(host));
        }
        if host.mock.reply.is_some() || (!written && host.mock.response_body_set) {
            run.after_reply_acted = true;
        }
        Some(())
    }
}

// ---------------------------------------------------------------------------------------------
// The model: what the filter must decide
// ---------------------------------------------------------------------------------------------

/// The model's decision on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decided {
    Deny(&'static str),
    /// Allowed; in dry-run, with the reason it would have been denied for.
    Allow(Option<&'static str>),
}

/// What the model expects of the request.
#[derive(Debug)]
struct RequestModel {
    /// The operation the target routes to.
    op: Option<usize>,
    at_headers: Decided,
    /// For an RDT request held for its check: the decision when its body ends.
    at_body_end: Option<Decided>,
    /// The actions applied to the response.
    actions: ClassActions,
}

/// What the model expects of the response, once its phases are played.
#[derive(Debug, PartialEq, Eq)]
enum ResponseModel {
    /// Passed on as it arrives.
    Stream,
    /// Refused at the headers (502 with this reason).
    FailAtHeaders(&'static str),
    /// Nothing to protect: no body follows the headers.
    NoBody,
    /// Held; refused with body_too_large when chunk `n` (0-based) arrives.
    TooLarge(usize),
    /// Held to the end, then: refused for a blocking canary, refused as not JSON, released empty,
    /// or released protected.
    Canary,
    InvalidJson,
    Empty,
    Protected,
}

const DENY_STATUS_400: [&str; 6] = ["invalid_path", "invalid_rdt_request", "invalid_token", "token_expired", "invalid_reveal_request", "unreadable_request_body"];

fn status_of(reason: &str) -> u32 {
    if DENY_STATUS_400.contains(&reason) {
        400
    } else if ["invalid_json", "unsupported_content_encoding", "unsupported_content_type", "unsupported_charset", "body_too_large"].contains(&reason) {
        502
    } else {
        403
    }
}

/// docs/POLICY.md: JSON is `application/json` or `application/<x>+json`, parameters ignored.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl ExchangeTarget {
    /// The model's router: decoded segments against the templates, literal beats parameter.
    fn route(&self, method: &str, segments: &[String]) -> Option<usize> {
        let matching = |i: &usize| {
            let op = &self.ops[*i];
            op.method == method
                && op.segments.len() == segments.len()
                && op.segments.iter().zip(segments).all(|(t, s)| match t {
                    Some(l) => l == s,
                    None => !s.is_empty(),
                })
        };
        (0..self.ops.len()).filter(matching).max_by_key(|&i| self.ops[i].segments.iter().map(Option::is_some).collect::<Vec<_>>())
    }

    fn rules_of(&self, op: usize) -> &[rewriter::Rule] {
        self.ops[op].info.map_or(&[], |i| &self.infos[i].rules)
    }

    /// Whether the caller gets any of these classes in some form (not removed).
    fn grants_any(actions: &ClassActions, classes: &[PiiClass]) -> bool {
        classes.iter().any(|&c| actions[c] != Action::Remove)
    }

    fn classes_of(&self, op: usize, element: Option<&str>) -> Vec<PiiClass> {
        self.rules_of(op).iter().filter(|r| element.is_none() || r.data_element.as_deref() == element).map(|r| r.class).collect()
    }

    /// The caller the filter should recognise (index in `callers`; in sidecar mode, order-sync's
    /// role under the node identity).
    fn caller_of(&self, case: &Case) -> Option<usize> {
        match case.who {
            _ if self.variants[case.variant].sidecar => Some(0),
            Who::Caller(i) if case.tls => Some(i),
            _ => None,
        }
    }

    fn request_model(&self, case: &Case) -> RequestModel {
        let variant = &self.variants[case.variant];
        let caller = self.caller_of(case).map(|i| &self.callers[i]);
        let target = ref_target(&case.path);
        let op = target.as_ref().ok().and_then(|t| self.route(&case.method, &t.segments));
        let actions = caller.map_or(self.policy_actions, |c| c.actions);
        let model = |at_headers, at_body_end| RequestModel { op, at_headers, at_body_end, actions };
        // A blocking canary in the path refuses the request first.
        if variant.canary_block == Some(true) && case.path.contains(CANARY) {
            return model(Decided::Deny("canary_blocked"), None);
        }
        let Ok(target) = target else { return model(Decided::Deny("invalid_path"), None) };
        let passes_through = op.is_none() && self.pass_through.iter().any(|p| p.len() <= target.segments.len() && p.iter().zip(&target.segments).all(|(a, b)| a == b));
        let access = (|| {
            if !case.tls && !variant.sidecar {
                return Some("tls_required");
            }
            if !in_cidr(case.source, if variant.sidecar { "127.0.0.1/32" } else { "127.0.0.0/8" }) {
                return Some("ip_not_allowed");
            }
            let caller = match case.who {
                _ if variant.sidecar => &self.callers[0],
                Who::Anonymous => return Some("unauthenticated"),
                Who::Intruder => return Some("unknown_caller"),
                Who::Caller(i) => &self.callers[i],
            };
            if caller.allow.as_ref().is_some_and(|l| !l.iter().any(|c| in_cidr(case.source, c))) {
                return Some("ip_not_allowed");
            }
            if case.lock == 1 {
                return Some("locked_out");
            }
            let Some(op) = op else { return (!passes_through).then_some("unknown_operation") };
            if !caller.operations[op] {
                return Some("operation_not_allowed");
            }
            // includedData of Orders 2026: a gate that unlocks PII needs some access to it; a value
            // that is not exactly one of Amazon's asks for every gate.
            for (_, value) in target.query.iter().filter(|(n, _)| n == "includedData") {
                for item in value.split(',').map(str::trim) {
                    let gates: Vec<String> = match INCLUDED_DATA.iter().find(|k| k.eq_ignore_ascii_case(item)) {
                        Some(k) => vec![format!("includedData={k}")],
                        None => self.rules_of(op).iter().filter_map(|r| r.data_element.clone()).filter(|d| d.starts_with("includedData=")).collect(),
                    };
                    for gate in gates {
                        let classes = self.classes_of(op, Some(&gate));
                        if !classes.is_empty() && !Self::grants_any(&caller.actions, &classes) {
                            return Some("data_element_not_allowed");
                        }
                    }
                }
            }
            None
        })();
        if variant.dry_run {
            // Dry-run relaxes the access checks, not the path's: unknown paths stay refused.
            if op.is_none() && !passes_through {
                return model(Decided::Deny("unknown_operation"), None);
            }
            // A request that would be denied is let through as it is (its verdict is a denial).
            if access.is_some() {
                return model(Decided::Allow(access), None);
            }
        } else if let Some(reason) = access {
            return model(Decided::Deny(reason), None);
        }
        // (In dry-run the RDT check is not enforced: the request goes on at its headers.)
        if !variant.dry_run && op.is_some_and(|o| self.ops[o].id == RDT_ID) {
            if case.request_chunks.is_empty() && !case.request_trailers {
                return model(Decided::Deny("invalid_rdt_request"), None);
            }
            let body = case.request_chunks.concat();
            let end = if body.len() > MAX_RDT_BODY {
                Decided::Deny("invalid_rdt_request")
            } else if variant.canary_block == Some(true) && canary_in_json(&body) {
                Decided::Deny("canary_blocked")
            } else {
                match (&case.rdt, caller) {
                    (Some(rdt), Some(caller)) => match self.rdt_verdict(caller, rdt) {
                        Ok(()) => Decided::Allow(None),
                        Err(reason) => Decided::Deny(reason),
                    },
                    // A body that is no RDT request at all (or none).
                    _ => Decided::Deny("invalid_rdt_request"),
                }
            };
            return model(Decided::Allow(None), Some(end));
        }
        // A request of an operation whose requests carry PII (or with a token in its path or
        // query), from an allowed caller, is held until its body ends: no caller of the policy has
        // a reveal grant, so a token in it is refused; anything else goes on as it came.
        let request_pii = op.is_some_and(|o| self.variants[case.variant].guard.catalog.operations[o].has_request_pii);
        let path_has_token = case.path.contains(TOKEN_PREFIX);
        let body_follows = !case.request_chunks.is_empty() || case.request_trailers;
        if (request_pii || path_has_token) && body_follows {
            let body = case.request_chunks.concat();
            let end = if body.len() > MAX_DETOKENIZE_BODY {
                Decided::Deny("unreadable_request_body")
            } else if variant.canary_block == Some(true) && canary_in_json(&body) {
                Decided::Deny("canary_blocked")
            } else if contains(&body, TOKEN_PREFIX.as_bytes()) {
                Decided::Deny("detokenize_not_allowed")
            } else {
                Decided::Allow(None)
            };
            return model(Decided::Allow(None), Some(end));
        }
        model(Decided::Allow(None), None)
    }

    /// The RDT check, resource by resource, in the filter's order of checks.
    fn rdt_verdict(&self, caller: &CallerModel, rdt: &Rdt) -> Result<(), &'static str> {
        if rdt.malformed.is_some() || rdt.resources.is_empty() || rdt.resources.len() > RDT_MAX_RESOURCES {
            return Err("invalid_rdt_request");
        }
        for r in &rdt.resources {
            let target = ref_target(&r.path).map_err(|_| "invalid_rdt_request")?;
            let op = self.route(&r.method, &target.segments).ok_or("rdt_resource_not_allowed")?;
            if !caller.operations[op] {
                return Err("rdt_resource_not_allowed");
            }
            let elements: Vec<String> = match &r.elements {
                None | Some(Err(Value::Null)) => Vec::new(),
                Some(Ok(list)) => list.clone(),
                Some(Err(_)) => return Err("invalid_rdt_request"),
            };
            if elements.is_empty() && !Self::grants_any(&caller.actions, &self.classes_of(op, None)) {
                return Err("rdt_resource_not_allowed");
            }
            for e in &elements {
                let classes = self.classes_of(op, Some(e));
                if classes.is_empty() {
                    return Err("invalid_rdt_request");
                }
                if !Self::grants_any(&caller.actions, &classes) {
                    return Err("rdt_resource_not_allowed");
                }
            }
        }
        Ok(())
    }

    fn response_model(&self, case: &Case, op: Option<usize>) -> ResponseModel {
        let variant = &self.variants[case.variant];
        let Some(response) = &case.response else { return ResponseModel::Stream };
        if op.and_then(|o| self.ops[o].info).is_none() {
            return ResponseModel::Stream;
        }
        if response.eos_at_headers {
            return ResponseModel::NoBody;
        }
        let header = |name: &str| response.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        if header("content-encoding").is_some_and(|e| !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity")) {
            return ResponseModel::FailAtHeaders("unsupported_content_encoding");
        }
        if let Some(length) = header("content-length") {
            match length.trim().parse::<u64>() {
                Ok(n) if n > variant.max_body as u64 => return ResponseModel::FailAtHeaders("body_too_large"),
                Ok(_) => {}
                Err(_) => return ResponseModel::FailAtHeaders("invalid_json"),
            }
        }
        // A charset other than UTF-8 is refused (whatever the media type).
        let other_charset = |ct: &str| {
            ct.split(';')
                .skip(1)
                .filter_map(|p| p.split_once('='))
                .any(|(n, v)| n.trim().eq_ignore_ascii_case("charset") && !["utf-8", "utf8"].contains(&v.trim().trim_matches('"').to_ascii_lowercase().as_str()))
        };
        if header("content-type").is_some_and(other_charset) {
            return ResponseModel::FailAtHeaders("unsupported_charset");
        }
        match header("content-type") {
            Some(ct) if is_json(ct) => {}
            None if header("content-length").is_some_and(|l| l.trim() == "0") => {}
            _ => return ResponseModel::FailAtHeaders("unsupported_content_type"),
        }
        let mut held = 0;
        for (i, chunk) in response.chunks.iter().enumerate() {
            held += chunk.len();
            if held > variant.max_body {
                return ResponseModel::TooLarge(i);
            }
        }
        let body = response.chunks.concat();
        if variant.canary_block == Some(true) && contains(&body, CANARY.as_bytes()) {
            ResponseModel::Canary
        } else if body.is_empty() {
            ResponseModel::Empty
        } else if refjson::parse(&body, true).is_err() {
            ResponseModel::InvalidJson
        } else {
            ResponseModel::Protected
        }
    }

    /// Markers of the upstream body the caller may see in clear: where no PII rule applies, or
    /// where every rule on the value's way is one the caller gets `clear`.
    fn clear_markers(&self, body: &[u8], op: usize, actions: &ClassActions, markers: &[String]) -> BTreeSet<String> {
        let mut clear = BTreeSet::new();
        let Ok(tree) = refjson::parse(body, true) else { return clear };
        let rules = self.rules_of(op);
        let mut texts: Vec<(String, bool)> = Vec::new();
        walk(&tree, body, rules, &(0..rules.len()).collect::<Vec<_>>(), 0, true, actions, &mut texts);
        for m in markers {
            if texts.iter().any(|(t, visible)| *visible && t.contains(m.as_str())) {
                clear.insert(m.clone());
            }
        }
        clear
    }
}

/// Collects every string, number and member name of a tree with whether it may show in clear.
#[allow(clippy::too_many_arguments)]
fn walk(node: &Node, doc: &[u8], rules: &[rewriter::Rule], alive: &[usize], depth: usize, clear_so_far: bool, actions: &ClassActions, out: &mut Vec<(String, bool)>) {
    let rule = if depth == 0 { None } else { alive.iter().copied().filter(|&p| rules[p].steps.len() == depth).min() };
    let clear = clear_so_far && rule.is_none_or(|r| actions[rules[r].class] == Action::Clear);
    let step = |name: Option<&str>| -> Vec<usize> {
        alive
            .iter()
            .copied()
            .filter(|&p| {
                rules[p].steps.get(depth).is_some_and(|s| match (s, name) {
                    (PStep::Wild, _) => true,
                    (PStep::Member(n), Some(k)) => n == k,
                    (PStep::Member(_), None) => false,
                })
            })
            .collect()
    };
    match &node.kind {
        Kind::Obj(ms) => {
            for m in ms {
                out.push((m.key.value.clone(), true));
                let name = if m.key.lone { String::from_utf8_lossy(m.raw_key(doc)).into_owned() } else { m.key.value.clone() };
                walk(&m.value, doc, rules, &step(Some(&name)), depth + 1, clear, actions, out);
            }
        }
        Kind::Arr(items) => {
            let child = step(None);
            items.iter().for_each(|n| walk(n, doc, rules, &child, depth + 1, clear, actions, out));
        }
        Kind::Str(t) => {
            out.push((t.value.clone(), clear));
            out.push((String::from_utf8_lossy(node.raw(doc)).into_owned(), clear));
        }
        _ => out.push((String::from_utf8_lossy(node.raw(doc)).into_owned(), clear)),
    }
}

/// A canary in a body as a JSON parser reads it (`Canaries::find_in_json`): the raw bytes, or a
/// member name or string decoded.
fn canary_in_json(body: &[u8]) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains(CANARY),
            Value::Array(items) => items.iter().any(walk),
            Value::Object(members) => members.iter().any(|(k, v)| k.contains(CANARY) || walk(v)),
            _ => false,
        }
    }
    contains(body, CANARY.as_bytes()) || serde_json::from_slice::<Value>(body).is_ok_and(|v| walk(&v))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

fn fail(kind: &str, message: String) -> Failure {
    Failure::new(kind, message)
}

fn reason_of(reply: &SentReply) -> String {
    reply.header("x-spapi-guard").unwrap_or("").to_string()
}

impl ExchangeTarget {
    fn verify(&self, case: &Case, (run, host): &(Run, FuzzHost)) -> Result<Outcome, Failure> {
        let request = self.request_model(case);
        let op = request.op;
        let response_model = self.response_model(case, op);

        // Exactly one audit event, set by on_log; valid against the schema.
        if host.audits.len() != 1 {
            return Err(fail("audit_events", format!("{} audit events in one exchange", host.audits.len())));
        }
        let event: Value = serde_json::from_str(&host.audits[0]).map_err(|e| fail("audit_not_json", format!("{e}: {}", host.audits[0])))?;
        let root = &self.schema;
        validate(&root["$defs"]["request"], root, &event, "$").map_err(|m| fail("audit_schema", format!("{m}: {event}")))?;

        // No planted value in a log line, the audit event, a metric name or a reply.
        let mut exposed: Vec<(&str, String)> = vec![("log", host.mock.log_text()), ("audit event", host.audits[0].clone())];
        exposed.push(("metric names", host.mock.counters.borrow().keys().cloned().collect::<Vec<_>>().join("\n")));
        for (what, reply) in [("request-phase reply", &run.request_reply), ("response-phase reply", &run.response_reply)] {
            if let Some(r) = reply {
                exposed.push((what, String::from_utf8_lossy(&r.body).into_owned()));
                exposed.push((what, r.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("\n")));
            }
        }
        for (what, text) in &exposed {
            let decoded = percent_decode(text, true);
            if let Some(m) = case.markers.iter().find(|m| text.contains(m.as_str()) || decoded.contains(m.as_str())) {
                return Err(fail("planted_value_exposed", format!("{m} in the {what}: {}", json_string(text))));
            }
        }

        let upstream_body = case.response.as_ref().map(|r| r.chunks.concat()).unwrap_or_default();
        // Whatever happened, no planted value leaves in clear unless the caller sees it clear.
        if let Some(op) = op.filter(|&o| self.ops[o].info.is_some()) {
            let clear = self.clear_markers(&upstream_body, op, &request.actions, &case.markers);
            let mut released = vec![run.delivered.clone()];
            if let Ok(tree) = refjson::parse(&run.delivered, true) {
                let mut texts = Vec::new();
                rewriter::all_text(&tree, &mut texts);
                released.extend(texts.into_iter().map(String::into_bytes));
            }
            for m in case.markers.iter().filter(|m| !clear.contains(*m)) {
                if released.iter().any(|r| contains(r, m.as_bytes())) {
                    return Err(fail("pii_in_clear", format!("planted value {m} released in clear to {:?}", case.who)));
                }
            }
        }

        // The request: refused exactly when the model says, never forwarded then.
        let headers_decision = request.at_headers;
        if let Some(reply) = &run.request_reply {
            if run.contacted || !run.request_released.is_empty() {
                return Err(fail("refused_request_forwarded", format!("refused with {} after {} body bytes reached the upstream", reason_of(reply), run.request_released.len())));
            }
            if run.reply_flows.iter().any(|f| *f != Flow::Continue) || (!run.reset && run.reply_delivered != reply.body) {
                return Err(fail("local_reply_held", format!("the local reply did not flow back: {:?}", run.reply_flows)));
            }
        }
        let rdt_held = request.at_body_end.is_some();
        if rdt_held && run.contacted && !(run.request_ended && request.at_body_end == Some(Decided::Allow(None))) {
            return Err(fail("rdt_forwarded_unchecked", format!("the RDT request reached the upstream (ended: {})", run.request_ended)));
        }
        if run.after_reply_acted {
            return Err(fail("acted_after_reply", "a second reply or a body written after the local reply".into()));
        }
        if run.headers_seen {
            let (expected, when) = match (headers_decision, request.at_body_end) {
                (Decided::Deny(r), _) => (Some(r), "headers"),
                (Decided::Allow(_), Some(Decided::Deny(r))) if run.request_ended => (Some(r), "end of the body"),
                _ => (None, ""),
            };
            match (expected, &run.request_reply) {
                (Some(r), None) => {
                    return Err(fail("not_refused", format!("the model refuses the request ({r}, at the {when}); it was not")));
                }
                (Some(r), Some(reply)) if reason_of(reply) != r || reply.status != status_of(r) => {
                    return Err(fail("wrong_refusal", format!("refused {} {}, the model says {} {r}", reply.status, reason_of(reply), status_of(r))));
                }
                (None, Some(reply)) => return Err(fail("refused_wrongly", format!("refused {} {}; the model allows it ({headers_decision:?})", reply.status, reason_of(reply)))),
                _ => {}
            }
        }
        // The identity header never reaches the upstream (where the policy names one); the
        // upstream is asked for an uncompressed body where the filter must read it.
        let header = |name: &str| host.mock.request_header_text(name);
        if run.headers_seen && !self.variants[case.variant].sidecar && header(IDENTITY_HEADER).is_some() {
            return Err(fail("identity_header_forwarded", format!("{IDENTITY_HEADER} left in the request")));
        }
        if run.contacted {
            let pii = op.is_some_and(|o| self.ops[o].info.is_some());
            if header("accept-encoding").is_some() == pii {
                return Err(fail(
                    "accept_encoding",
                    format!("accept-encoding {:?} forwarded for an operation {} response PII", header("accept-encoding"), if pii { "with" } else { "without" }),
                ));
            }
        }
        if let Some(reply) = &run.request_reply {
            let body: Value = serde_json::from_slice(&reply.body).map_err(|e| fail("reply_not_json", format!("{e}")))?;
            if body["errors"][0]["details"] != json!(format!("spapi-guard:{}", reason_of(reply))) || reply.header("content-type") != Some("application/json") {
                return Err(fail("reply_format", format!("{} reply: {body}", reason_of(reply))));
            }
        }
        if run.contacted && run.request_ended && !run.early && run.request_released != case.request_chunks.concat() {
            return Err(fail("request_body_changed", format!("{} bytes released, {} sent", run.request_released.len(), case.request_chunks.concat().len())));
        }
        // Only an RDT request or one held for detokenization is held; everything else goes on at
        // its headers.
        if run.request_reply.is_none() && request.at_body_end.is_none() && run.request_headers_flow == Some(Flow::Pause) {
            return Err(fail("request_held_needlessly", "a request that needs no body check was held at its headers".into()));
        }
        if !run.reset && run.request_ended && run.request_reply.is_none() && run.request_paused {
            return Err(fail("request_held_after_its_end", "the request ended, was not refused, and is still held".into()));
        }

        // The response.
        let played_response = run.response_started;
        if played_response {
            let reply_reason = run.response_reply.as_ref().map(reason_of);
            let expected_reply: Option<&str> = match &response_model {
                ResponseModel::FailAtHeaders(r) => Some(r),
                ResponseModel::TooLarge(n) if run.response_chunks_played > *n => Some("body_too_large"),
                ResponseModel::Canary if run.response_ended || run.response_reply.is_some() => Some("canary_blocked"),
                ResponseModel::InvalidJson if run.response_ended || run.response_reply.is_some() => Some("invalid_json"),
                _ => None,
            };
            if reply_reason.as_deref() != expected_reply {
                return Err(fail("wrong_response_outcome", format!("the response got {reply_reason:?}, the model says {expected_reply:?} ({response_model:?})")));
            }
            if let Some(reply) = &run.response_reply {
                if reply.status != status_of(&reason_of(reply)) {
                    return Err(fail("wrong_status", format!("{} for {}", reply.status, reason_of(reply))));
                }
                if !run.delivered.is_empty() || run.headers_released {
                    return Err(fail("upstream_bytes_before_refusal", format!("{} upstream bytes released before the refusal", run.delivered.len())));
                }
                if run.after_reply.contains(&Flow::Continue) {
                    return Err(fail("upstream_bytes_after_refusal", format!("upstream phases continued after the local reply: {:?}", run.after_reply)));
                }
            }
            // A body to protect is held from its headers on (its length is set when it is
            // rewritten); everything else goes on at its headers.
            let hold = !matches!(response_model, ResponseModel::Stream | ResponseModel::NoBody);
            if run.response_reply.is_none() && run.response_headers_flow.is_some_and(|f| (f == Flow::Pause) != hold) {
                return Err(fail("response_headers_flow", format!("response headers {:?} for {response_model:?}", run.response_headers_flow)));
            }
            match response_model {
                ResponseModel::Stream => {
                    let played: Vec<u8> = case.response.as_ref().map(|r| r.chunks[..run.response_chunks_played].concat()).unwrap_or_default();
                    if !run.headers_released || run.delivered != played {
                        return Err(fail("stream_changed", format!("a response without PII did not pass as it came: {} of {} bytes", run.delivered.len(), played.len())));
                    }
                }
                _ if run.response_reply.is_some() => {}
                ResponseModel::NoBody | ResponseModel::Empty if run.response_ended => {
                    if !run.headers_released || !run.delivered.is_empty() {
                        return Err(fail("empty_response", format!("headers released {}, {} bytes", run.headers_released, run.delivered.len())));
                    }
                }
                ResponseModel::Protected if run.response_ended => self.check_protected(case, run, host, &request, &upstream_body)?,
                _ => {
                    // Reset before the held body ended: nothing of it released.
                    if !run.reset || run.headers_released || !run.delivered.is_empty() {
                        return Err(fail(
                            "held_body_released",
                            format!("{:?}: headers released {}, {} bytes, reset {}", response_model, run.headers_released, run.delivered.len(), run.reset),
                        ));
                    }
                }
            }
        }
        self.check_audit(case, run, host, &event, &request, &response_model)
    }

    /// A released protected body: the whole body rewritten with the caller's levels.
    fn check_protected(&self, case: &Case, run: &Run, host: &FuzzHost, request: &RequestModel, body: &[u8]) -> Result<(), Failure> {
        let variant = &self.variants[case.variant];
        let Some(op) = request.op else { return Err(fail("model", "protected without an operation".into())) };
        let guard = &variant.guard;
        let reference =
            guard.protect_response_at(&guard.catalog.operations[op], body, &request.actions, host.mock.now_ms()).map_err(|e| fail("reference_refused", format!("{e:?}")))?;
        if !run.headers_released {
            return Err(fail("protected_body_held", "the body ended and was protected, but not released".into()));
        }
        let length = host.mock.response_header_text("content-length");
        if length != Some(run.delivered.len().to_string()) {
            return Err(fail("content_length", format!("content-length {length:?} for {} bytes released", run.delivered.len())));
        }
        match &reference.body {
            None if run.delivered != body => return Err(fail("released_body_differs", "a body without PII to change was changed".into())),
            None => {}
            Some(want) => {
                let got_tree = refjson::parse(&run.delivered, true).map_err(|e| fail("released_invalid_json", format!("{} at {}", e.what, e.offset)))?;
                let want_tree = refjson::parse(want, true).map_err(|e| fail("model", format!("reference output: {}", e.what)))?;
                same_document(&got_tree, &run.delivered, &want_tree, want, guard).map_err(|m| fail("released_body_differs", m))?;
            }
        }
        Ok(())
    }

    fn check_audit(&self, case: &Case, run: &Run, host: &FuzzHost, event: &Value, request: &RequestModel, response_model: &ResponseModel) -> Result<Outcome, Failure> {
        let variant = &self.variants[case.variant];
        let op = request.op;
        let field = |k: &str| event[k].as_str().unwrap_or("");
        let (outcome, decision, reason) = (field("outcome"), field("decision"), event["reason"].as_str());
        let wrong = |what: String| fail("audit_event", format!("{what}: {event}"));

        // Outcome, decision and reason: what happened.
        let would_deny = match request.at_headers {
            Decided::Allow(r) => r,
            Decided::Deny(_) => None,
        };
        let allowed_decision = |reason: Option<&str>| match would_deny {
            Some(r) => decision == "dry_run_deny" && reason == Some(r),
            None => decision == "allow" && reason.is_none(),
        };
        let (want_outcome, consistent): (&str, bool) = if !run.headers_seen {
            ("denied", decision == "deny" && reason == Some("refused_before_spapi_guard"))
        } else if let Some(reply) = &run.request_reply {
            let r = reason_of(reply);
            let retry_after = reply.header("retry-after").and_then(|s| s.parse::<u64>().ok());
            let lockout = r == "locked_out" && decision == "lockout" && retry_after.is_some_and(|s| (1..=90).contains(&s));
            ("denied", (lockout || (r != "locked_out" && decision == "deny")) && reason == Some(r.as_str()))
        } else if let Some(reply) = &run.response_reply {
            let r = reason_of(reply);
            if r == "canary_blocked" {
                ("denied", decision == "deny" && reason == Some("canary_blocked"))
            } else {
                ("fail_closed", decision == "fail_closed" && reason == Some(r.as_str()) && event["security_events"].as_array().is_some_and(|e| e.contains(&json!("fail_closed"))))
            }
        } else if run.request_paused {
            ("aborted", reason == Some("request_incomplete") && (decision == "allow" || (decision == "dry_run_deny" && would_deny.is_some())))
        } else if run.response_paused {
            ("aborted", reason == Some("response_incomplete") && (decision == "allow" || (decision == "dry_run_deny" && would_deny.is_some())))
        } else {
            let by_op = match op {
                Some(o) if self.ops[o].info.is_some() => "protected",
                Some(_) => "passed_through",
                None => "unmatched",
            };
            (by_op, allowed_decision(reason))
        };
        if outcome != want_outcome || !consistent {
            return Err(wrong(format!("outcome {outcome} decision {decision} reason {reason:?}; expected outcome {want_outcome} (would deny: {would_deny:?})")));
        }
        if outcome == "aborted" && !run.reset {
            return Err(wrong("aborted, but the exchange ran to its end".into()));
        }
        if decision == "dry_run_deny" && !variant.dry_run {
            return Err(wrong("dry_run_deny outside dry-run".into()));
        }

        // Who, what, where.
        let identity = match case.who {
            _ if !run.headers_seen => None,
            _ if variant.sidecar => Some(format!("node:{NODE_ID}")),
            _ if !case.tls => None,
            Who::Caller(i) => Some(format!("uri_san:{}", self.callers[i].id)),
            Who::Intruder => Some(format!("uri_san:{INTRUDER}")),
            Who::Anonymous => None,
        };
        if event["identity"].as_str().map(str::to_string) != identity {
            return Err(wrong(format!("identity, expected {identity:?}")));
        }
        let known = run.headers_seen && self.caller_of(case).is_some();
        if event["known_caller"] != json!(known) {
            return Err(wrong(format!("known_caller, expected {known}")));
        }
        let op_id = op.filter(|_| run.headers_seen).map(|o| self.ops[o].id.as_str());
        if event["operation"].as_str() != op_id {
            return Err(wrong(format!("operation, expected {op_id:?}")));
        }
        if run.headers_seen && event["method"] != json!(case.method) {
            return Err(wrong("method".into()));
        }
        let guard = &variant.guard;
        let logged_path = if run.headers_seen { redacted_path_with(&case.path, op.map(|o| &guard.catalog.operations[o]), guard.access.path_words()) } else { String::new() };
        if run.headers_seen && event["path"] != json!(logged_path) {
            return Err(wrong(format!("path, expected {logged_path}")));
        }
        if event["request_id"] != json!(REQUEST_ID) {
            return Err(wrong("request_id".into()));
        }
        if event["status"].as_i64() != run.status {
            return Err(wrong(format!("status, the client got {:?}", run.status)));
        }
        let upstream =
            if run.response_started { case.response.as_ref().and_then(|r| r.headers.iter().find(|(k, _)| k == ":status")).and_then(|(_, v)| v.parse::<i64>().ok()) } else { None };
        if event["upstream_status"].as_i64() != upstream {
            return Err(wrong(format!("upstream_status, expected {upstream:?}")));
        }
        if event["duration_ms"] != json!(5) {
            return Err(wrong("duration_ms".into()));
        }

        // What was done to the body: the rewrite's counts, the key, the sizes.
        let released_protected = *response_model == ResponseModel::Protected && run.response_ended && run.response_reply.is_none() && outcome == "protected";
        let body = case.response.as_ref().map(|r| r.chunks.concat()).unwrap_or_default();
        let (pii, key) = if released_protected {
            let counts = guard.protect_response_with(&guard.catalog.operations[op.unwrap_or(0)], &body, &request.actions).map(|p| p.counts).unwrap_or_default();
            (serde_json::to_value(AuditEvent::pii_from(&counts)).unwrap_or_default(), counts.used_key().then_some("demo-1"))
        } else {
            (json!({}), None)
        };
        if event["pii"] != pii {
            return Err(wrong(format!("pii counts, the rewrite's are {pii}")));
        }
        if event["key_id"].as_str() != key {
            return Err(wrong(format!("key_id, expected {key:?}")));
        }
        let (bytes_in, bytes_out) = (event["bytes_in"].as_u64().unwrap_or(u64::MAX) as usize, event["bytes_out"].as_u64().unwrap_or(u64::MAX) as usize);
        let reply = run.request_reply.as_ref().or(run.response_reply.as_ref());
        if let Some(reply) = reply {
            if bytes_out != reply.body.len() {
                return Err(wrong(format!("bytes_out, the reply has {}", reply.body.len())));
            }
        } else if released_protected && (bytes_in != body.len() || bytes_out != run.delivered.len()) {
            return Err(wrong(format!("bytes, {} in and {} out", body.len(), run.delivered.len())));
        } else if *response_model == ResponseModel::Stream && (bytes_in != run.delivered.len() || bytes_out != run.delivered.len()) {
            return Err(wrong(format!("bytes of a stream, {} passed", run.delivered.len())));
        }

        // Canaries: reported by id (never by value), only where one was planted.
        let canaries = event["canaries"].as_array().cloned().unwrap_or_default();
        let planted = case.markers.iter().any(|m| m == CANARY);
        if !canaries.is_empty() && (variant.canary_block.is_none() || !planted || canaries != vec![json!(CANARY_ID)]) {
            return Err(wrong("canaries reported".into()));
        }
        if variant.canary_block.is_some() && canaries.is_empty() {
            // Where the filter must have seen the canary: the path; a request body it read to its
            // end; a response body it streamed whole or read whole.
            let request_body = case.request_chunks.concat();
            let response_read = match response_model {
                ResponseModel::Stream => run.response_started && run.response_ended,
                ResponseModel::Protected | ResponseModel::InvalidJson | ResponseModel::Canary | ResponseModel::Empty => run.response_ended,
                _ => false,
            };
            let seen = [
                ("the path", run.headers_seen && case.path.contains(CANARY)),
                ("the request body", run.request_ended && !run.early && contains(&request_body, CANARY.as_bytes())),
                ("the response body", response_read && contains(&body, CANARY.as_bytes())),
            ];
            if let Some((where_, _)) = seen.iter().find(|(_, s)| *s) {
                return Err(wrong(format!("a canary in {where_} not reported")));
            }
        }
        let canary_hit = event["security_events"].as_array().is_some_and(|e| e.contains(&json!("canary_hit")));
        if canary_hit == canaries.is_empty() {
            return Err(wrong("canary_hit and canaries disagree".into()));
        }

        // A denial of a known caller one denial from the limit starts a lockout.
        let started = event["security_events"].as_array().is_some_and(|e| e.contains(&json!("lockout_started")));
        let expected = case.lock == 2 && decision == "deny" && self.caller_of(case).is_some() && run.headers_seen;
        if started != expected {
            return Err(wrong(format!("lockout_started {started}, expected {expected}")));
        }

        // The requests metric: once, with the decision.
        let requests = host.mock.counter(&stat_name("spapi_guard_requests_total", &[("operation", op_id.unwrap_or("none")), ("decision", decision)]));
        if requests != 1 {
            return Err(wrong(format!("spapi_guard_requests_total counted {requests} for this exchange")));
        }
        Ok(match (outcome, run.reset) {
            ("denied", _) if run.request_reply.is_some() => {
                const REFUSED: [&str; 13] = [
                    "refused:invalid_path",
                    "refused:tls_required",
                    "refused:ip_not_allowed",
                    "refused:unauthenticated",
                    "refused:unknown_caller",
                    "refused:unknown_operation",
                    "refused:operation_not_allowed",
                    "refused:data_element_not_allowed",
                    "refused:rdt_resource_not_allowed",
                    "refused:invalid_rdt_request",
                    "refused:canary_blocked",
                    "refused:locked_out",
                    "refused:ip_denied",
                ];
                REFUSED.iter().find(|r| reason == r.strip_prefix("refused:")).copied().unwrap_or("refused:other")
            }
            ("denied", _) => "denied_other",
            ("fail_closed", _) => "response_refused",
            ("aborted", _) => "aborted",
            ("protected", false) if released_protected => "protected_released",
            (_, true) => "reset_other",
            _ => "passed",
        })
    }
}

/// Two documents equal up to randomized tokens, which must open to the same value.
fn same_document(got: &Node, got_doc: &[u8], want: &Node, want_doc: &[u8], guard: &Guard) -> Result<(), String> {
    match (&got.kind, &want.kind) {
        (Kind::Obj(a), Kind::Obj(b)) => {
            if a.len() != b.len() {
                return Err(format!("object at {} has {} members, the rewrite {}", got.start, a.len(), b.len()));
            }
            for (x, y) in a.iter().zip(b) {
                if x.key != y.key {
                    return Err(format!("member {:?} at {}, the rewrite has {:?}", x.key.value, x.start, y.key.value));
                }
                same_document(&x.value, got_doc, &y.value, want_doc, guard)?;
            }
            Ok(())
        }
        (Kind::Arr(a), Kind::Arr(b)) if a.len() == b.len() => a.iter().zip(b).try_for_each(|(x, y)| same_document(x, got_doc, y, want_doc, guard)),
        (Kind::Str(x), Kind::Str(y)) if x == y => Ok(()),
        (Kind::Str(x), Kind::Str(y)) if x.value.starts_with("spgt1.r") && y.value.starts_with("spgt1.r") => {
            let (a, b) = (guard.tokens.open(&x.value, NOW_MS).map_err(|e| format!("{e}"))?, guard.tokens.open(&y.value, NOW_MS).map_err(|e| format!("{e}"))?);
            if a == b {
                Ok(())
            } else {
                Err(format!("randomized token at {} opens to another value than the rewrite's", got.start))
            }
        }
        _ if got.raw(got_doc) == want.raw(want_doc) => Ok(()),
        _ => Err(format!("value at {}..{} differs from the rewrite's", got.start, got.end)),
    }
}

// ---------------------------------------------------------------------------------------------
// docs/audit-event.schema.json, read by a validator of the keywords it uses
// ---------------------------------------------------------------------------------------------

fn pattern_matches(pattern: &str, s: &str) -> Result<bool, String> {
    Ok(match pattern {
        "^/" => s.starts_with('/'),
        "^[0-9a-f]{24}$" => s.len() == 24 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "^[A-Za-z0-9-]+\\.[A-Za-z0-9]+$" => s
            .split_once('.')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') && b.bytes().all(|c| c.is_ascii_alphanumeric())),
        // Key ids: one or more of [A-Za-z0-9_-]{1,32}, comma-separated.
        "^[A-Za-z0-9_-]{1,32}(,[A-Za-z0-9_-]{1,32})*$" => {
            s.split(',').all(|id| (1..=32).contains(&id.len()) && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
        }
        p if p.starts_with("^(") && p.ends_with("):") => p[2..p.len() - 2].split('|').any(|alt| s.strip_prefix(alt).is_some_and(|r| r.starts_with(':'))),
        other => return Err(format!("the schema uses a pattern this validator does not know: {other}")),
    })
}

fn date_time(s: &str) -> bool {
    let shape: String = s.chars().map(|c| if c.is_ascii_digit() { 'd' } else { c }).collect();
    shape == "dddd-dd-ddTdd:dd:dd.dddZ" || shape == "dddd-dd-ddTdd:dd:ddZ"
}

fn type_ok(name: &str, v: &Value) -> bool {
    match name {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// JSON Schema (2020-12) for the keywords docs/audit-event.schema.json uses in `request`.
fn validate(schema: &Value, root: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.strip_prefix("#/$defs/").ok_or_else(|| format!("unsupported $ref {r}"))?;
        return validate(&root["$defs"][name], root, v, at);
    }
    if let Some(c) = schema.get("const") {
        if v != c {
            return Err(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(v) {
            return Err(format!("{at}: {v} is not one of {}", Value::Array(values.clone())));
        }
    }
    match &schema["type"] {
        Value::String(t) if !type_ok(t, v) => return Err(format!("{at}: {v} is not of type {t}")),
        Value::Array(ts) if !ts.iter().any(|t| t.as_str().is_some_and(|t| type_ok(t, v))) => return Err(format!("{at}: {v} is not of type {}", Value::Array(ts.clone()))),
        _ => {}
    }
    if let (Some(p), Some(s)) = (schema["pattern"].as_str(), v.as_str()) {
        if !pattern_matches(p, s)? {
            return Err(format!("{at}: {s:?} does not match {p}"));
        }
    }
    if let (Some("date-time"), Some(s)) = (schema["format"].as_str(), v.as_str()) {
        if !date_time(s) {
            return Err(format!("{at}: {s:?} is not a date-time"));
        }
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), v.as_f64()) {
        if n < min {
            return Err(format!("{at}: {n} < {min}"));
        }
    }
    if let (Some(min), Some(s)) = (schema["minLength"].as_u64(), v.as_str()) {
        if (s.chars().count() as u64) < min {
            return Err(format!("{at}: shorter than {min}"));
        }
    }
    if let Some(object) = v.as_object() {
        for key in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !object.contains_key(key) {
                return Err(format!("{at}: {key} missing"));
            }
        }
        let properties = schema["properties"].as_object();
        for (key, value) in object {
            if let Some(names) = schema.get("propertyNames") {
                validate(names, root, &json!(key), &format!("{at} (name {key})"))?;
            }
            match properties.and_then(|p| p.get(key)) {
                Some(s) => validate(s, root, value, &format!("{at}.{key}"))?,
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => return Err(format!("{at}: {key} is not allowed")),
                    Value::Object(_) => validate(&schema["additionalProperties"], root, value, &format!("{at}.{key}"))?,
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), v.as_array()) {
        for (i, item) in array.iter().enumerate() {
            validate(items, root, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}
