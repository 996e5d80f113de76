//! The optimised rewrite path (one-pass walker, per-response token cache, in-place encryption)
//! against a reference path built from independent parts — jsonpath-rust on a DOM to find the PII,
//! a fresh `seal`/`hash` per value with no cache — on every Amazon fixture, byte for byte.
//! Native, no Envoy: runs with `cargo test`.
mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use spapi_guard::catalog::Operation;
use spapi_guard::guard::Guard;
use spapi_guard::pii::{PerClass, PiiClass};
use spapi_guard::policy::Action;
use spapi_guard::tokens::{Mode, TokenEngine, ValueKind};
use support::*;

const KEY: &str = "8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

/// Numbers tokenized too (an opt-in), so every PII value takes the token path compared here.
fn guard() -> Guard {
    let policy = r#"{"version":1,"keys":{"active":"k1","env":{"k1":"K1"}},"numbers":{"action":"tokenize"}}"#;
    Guard::load(policy.as_bytes(), &|_| Some(KEY.to_string())).expect("policy")
}

/// An engine with the same key that remembers nothing: every token computed afresh.
fn reference_engine() -> TokenEngine {
    let key: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&KEY[2 * i..2 * i + 2], 16).expect("hex")).collect();
    let mut keys = BTreeMap::new();
    keys.insert("k1".to_string(), key.try_into().expect("32 bytes"));
    TokenEngine::new(keys, "k1").expect("engine").with_recent_tokens(0)
}

/// The reference output of one value: a fresh token or pseudonym, no cache.
fn reference(engine: &TokenEngine, action: Action, class: PiiClass, kind: ValueKind, plaintext: &[u8]) -> String {
    let mut out = String::new();
    match action {
        Action::Tokenize(mode) => engine.seal_into(&engine.active_keys(0), class, mode, kind, plaintext, &mut Vec::new(), &mut out),
        Action::Hash => engine.hash_into(&engine.active_keys(0), class, kind, plaintext, &mut out),
        _ => unreachable!("only deterministic actions are compared byte for byte"),
    }
    out
}

/// Walks the fast output against the upstream: every byte outside a replaced value is the
/// upstream's, and every replaced value is exactly the reference output for the upstream value
/// it replaced. Returns how many values were replaced.
fn assert_same_as_reference(engine: &TokenEngine, op: &Operation, action: Action, upstream: &[u8], fast: &[u8], name: &str) -> usize {
    let prefix = match action {
        Action::Hash => "\"spgh2.",
        _ => "\"spgt1.",
    };
    let text = std::str::from_utf8(fast).expect("utf8");
    let (mut up, mut at, mut replaced) = (0usize, 0usize, 0usize);
    // The class of each replaced value, in document order, from the DOM reference.
    let dom: Value = serde_json::from_slice(upstream).expect("json");
    let classes: Vec<PiiClass> = reference_pii(op, &dom).iter().map(|p| p.class).collect();
    while let Some(offset) = text[at..].find(prefix) {
        let start = at + offset;
        assert_eq!(&fast[at..start], &upstream[up..up + (start - at)], "{name}: bytes differ before a replaced value");
        up += start - at;
        let end = start + 1 + text[start + 1..].find('"').expect("end") + 1;
        let mut values = serde_json::Deserializer::from_slice(&upstream[up..]).into_iter::<Value>();
        let original = values.next().expect("value").expect("valid");
        let consumed = values.byte_offset();
        let (kind, plaintext) = match &original {
            Value::String(s) => (ValueKind::Text, s.as_bytes().to_vec()),
            _ => (ValueKind::RawJson, upstream[up..up + consumed].to_vec()),
        };
        let got = &text[start + 1..end - 1];
        // The class is the one the token names; the reference recomputes it from the value.
        let class = got.split('.').nth(if action == Action::Hash { 2 } else { 3 }).and_then(PiiClass::parse).expect("class");
        assert!(classes.contains(&class), "{name}: a {class} value outside the catalog's paths");
        assert_eq!(got, reference(engine, action, class, kind, &plaintext), "{name}: fast path differs from the reference");
        up += consumed;
        at = end;
        replaced += 1;
    }
    assert_eq!(&fast[at..], &upstream[up..], "{name}: bytes differ after the last replaced value");
    assert_eq!(replaced, classes.len(), "{name}: replaced values vs PII values found by the DOM reference");
    replaced
}

#[test]
fn fast_path_equals_reference_on_every_fixture() {
    let g = guard();
    let reference = reference_engine();
    let mut total = 0;
    for action in [Action::Tokenize(Mode::Deterministic), Action::Hash] {
        let actions = PerClass::splat(action);
        for fx in response_fixtures() {
            let Some(op) = g.catalog.route(&fx.method, &fx.path) else { continue };
            let upstream = fx.body();
            if upstream.is_empty() {
                continue;
            }
            let fast = g.protect_response_with(op, &upstream, &actions).expect("protects");
            let fast = fast.body.unwrap_or_else(|| upstream.clone());
            total += assert_same_as_reference(&reference, op, action, &upstream, &fast, &fx.file);
        }
    }
    assert!(total > 800, "only {total} values compared");
}

/// The generated 100-order page (values repeated within it: the cache's case), when present.
#[test]
fn fast_path_equals_reference_on_a_page_with_repeated_values() {
    let g = guard();
    let reference = reference_engine();
    let dir = repo().join("target/e2e/fast-path");
    let ok = std::process::Command::new("python3").arg(repo().join("benches/gen_payloads.py")).arg(&dir).output().expect("python3");
    assert!(ok.status.success());
    let page = std::fs::read(dir.join("getOrders-100.json")).expect("page");
    let op = g.catalog.get("orders-v0.getOrders").expect("op");
    // Twice: the second pass is served by the engine's memory of recent tokens.
    for action in [Action::Tokenize(Mode::Deterministic), Action::Hash, Action::Tokenize(Mode::Deterministic)] {
        let fast = g.protect_response_with(op, &page, &PerClass::splat(action)).expect("protects").body.expect("changed");
        let n = assert_same_as_reference(&reference, op, action, &page, &fast, "getOrders-100");
        // 25 PII-looking values in each of the 100 orders, less CountryCode and AddressType (clear),
        // plus BuyerTaxInfo.TaxingRegion (a member the customer object's definition classifies).
        assert_eq!(n, 2400, "24 PII values in each of the 100 orders");
    }
}
