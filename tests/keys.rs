//! Keys with a life, through the filter's own code paths natively (the exchange state machine and
//! the VM lifecycle against the mock host): each class's tokens made with the key active for it at
//! the host's time, rotation by the clock, expired keys' tokens refused, a class without a key
//! failing closed, invalid rings refused naming the field. tests/rotation.rs does the same through
//! a real Envoy.
use std::rc::Rc;

use serde_json::{json, Value};
use spapi_guard::audit::DecisionIds;
use spapi_guard::exchange::{Exchange, Flow};
use spapi_guard::guard::Guard;
use spapi_guard::key_status::{self, KeyWatch};
use spapi_guard::keyring::parse_instant;
use spapi_guard::lifecycle;
use spapi_guard::metrics::stat_name;
use spapi_guard::testing::MockHost;
use spapi_guard::tokens::TokenError;

const ORDER_SYNC: &str = "spiffe://spapi-guard.demo/order-sync";
const ADDRESS_PATH: &str = "/orders/v0/orders/902-3159896-1390916/address";
const JSON_HEADERS: &[(&str, &str)] = &[(":status", "200"), ("content-type", "application/json")];
const ALL_BUT_ADDRESS: [&str; 7] = ["name", "email", "phone", "tax_id", "gift_message", "company", "other"];

fn day(text: &str) -> u64 {
    parse_instant(text, false).expect("date")
}

/// A key per variable name, all different.
fn env(name: &str) -> Option<String> {
    name.starts_with("SPAPI_GUARD_KEY_").then(|| format!("{:08x}8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4", name.bytes().map(u32::from).sum::<u32>() * 7919))
}

/// The default policy with this ring.
fn policy(ring: Value) -> String {
    let mut policy: Value = serde_json::from_str(include_str!("../policies/default.json")).expect("policy");
    policy["keys"] = json!({ "ring": ring });
    policy.to_string()
}

fn entry(id: &str, classes: &[&str], from: &str, not_after: &str) -> Value {
    let var = format!("SPAPI_GUARD_KEY_{}", id.to_uppercase().replace('-', "_"));
    json!({"id": id, "env": var, "classes": classes, "created": "2026-01-01", "activeFrom": from, "notAfter": not_after})
}

/// Addresses on monthly keys (November, then December); everything else on a yearly key.
fn monthly_ring() -> Value {
    json!([
        entry("addr-2026-11", &["address"], "2026-11-01", "2027-01-31"),
        entry("addr-2026-12", &["address"], "2026-12-01", "2027-02-28"),
        entry("pii-2026", &ALL_BUT_ADDRESS, "2026-01-01", "2027-12-31"),
    ])
}

fn load(ring: Value, now: u64) -> Rc<Guard> {
    Rc::new(Guard::load_at(policy(ring).as_bytes(), &env, now).unwrap_or_else(|e| panic!("policy refused: {e}")))
}

/// One getOrderAddress exchange at `now`: what the client got, the audit event and the host.
fn exchange(guard: &Rc<Guard>, now: u64) -> (Option<Value>, Value, MockHost) {
    let mut host = MockHost::new("GET", ADDRESS_PATH, Some(ORDER_SYNC));
    host.now.set(now);
    let mut ex = Exchange::new(Rc::clone(guard), Rc::new(DecisionIds::new()));
    assert_eq!(ex.on_request_headers(&mut host, true), Flow::Continue, "the request is allowed");
    host.set_response_headers(JSON_HEADERS);
    assert_eq!(ex.on_response_headers(&mut host, false), Flow::Pause);
    host.response_body = include_bytes!("fixtures/spapi/orders-v0_getOrderAddress_1.json").to_vec();
    let size = host.response_body.len();
    ex.on_response_body(&mut host, size, true);
    let delivered = match host.reply.take() {
        Some(reply) => {
            host.set_property("response.code", &i64::from(reply.status).to_le_bytes());
            assert!(!String::from_utf8_lossy(&reply.body).contains("Michigan address"));
            None
        }
        None => {
            host.set_property("response.code", &200i64.to_le_bytes());
            Some(serde_json::from_slice(&host.response_body).expect("json"))
        }
    };
    ex.on_log(&mut host);
    let audit = host.audit_event().expect("audit event");
    (delivered, audit, host)
}

fn shipping(v: &Value, member: &str) -> String {
    v["payload"]["ShippingAddress"][member].as_str().unwrap_or_else(|| panic!("{member}: not a string in {v}")).to_string()
}

#[test]
fn each_class_is_tokenized_with_the_key_active_for_it_and_counted_per_key() {
    let now = day("2026-11-15");
    let guard = load(monthly_ring(), now);
    let (body, audit, host) = exchange(&guard, now);
    let body = body.expect("protected");
    let (name, city) = (shipping(&body, "Name"), shipping(&body, "City"));
    assert!(name.starts_with("spgt1.ds.pii-2026.name."), "{name}");
    assert!(city.starts_with("spgt1.ds.addr-2026-11.address."), "{city}");
    assert_eq!(guard.tokens.open(&city, now).expect("opens").plaintext, b"Canton");
    assert_eq!(audit["key_id"], "pii-2026,addr-2026-11");
    let tokens = |id: &str| host.counter(&stat_name(key_status::KEY_TOKENS, &[("key_id", id), ("mode", "deterministic")]));
    let address_values = audit["pii"]["address"]["tokenized"].as_u64().expect("address count");
    assert_eq!(tokens("addr-2026-11"), address_values);
    assert_eq!(tokens("pii-2026"), audit["pii"]["name"]["tokenized"].as_u64().expect("name count"));
    assert_eq!(tokens("addr-2026-12"), 0);
}

#[test]
fn keys_rotate_by_the_clock_and_old_tokens_open_until_their_not_after() {
    let nov = day("2026-11-15");
    let guard = load(monthly_ring(), nov);
    let host = MockHost::default();
    host.now.set(nov);
    let mut watch = KeyWatch::start(&host, &guard);
    let (before, _, _) = exchange(&guard, nov);
    let old_city = shipping(&before.expect("protected"), "City");
    // December 1st: the same VM, the same configuration, the December key makes address tokens.
    let dec = day("2026-12-01");
    host.now.set(dec);
    watch.tick(&host, &guard);
    let (after, audit, _) = exchange(&guard, dec);
    let new_city = shipping(&after.expect("protected"), "City");
    assert!(new_city.starts_with("spgt1.ds.addr-2026-12.address."), "{new_city}");
    assert_ne!(old_city, new_city, "a deterministic token changes with its key");
    assert_eq!(audit["key_id"], "pii-2026,addr-2026-12");
    assert_eq!(guard.tokens.open(&old_city, dec).expect("November's key still reads").plaintext, b"Canton");
    assert!(host.security_events().iter().any(|e| e["event"] == "key_activated" && e["detail"] == "addr-2026-12"));
    let info = |id: &str, state: &str| host.gauge_value(&stat_name(key_status::KEY_INFO, &[("key_id", id), ("state", state)]));
    assert_eq!((info("addr-2026-11", "readable"), info("addr-2026-12", "active"), info("pii-2026", "active")), (1, 1, 1));
    // February 1st: November's key is past its notAfter: its tokens are refused, its material
    // still loaded. The filter reports it (gauge, event) and every refusal (metric, event).
    let feb = day("2027-02-01");
    host.now.set(feb);
    watch.tick(&host, &guard);
    let refused = guard.tokens.open(&old_city, feb).expect_err("expired");
    assert_eq!(refused, TokenError::Expired { key_id: "addr-2026-11".into(), not_after: "2027-01-31".into() });
    key_status::token_refused(&host, &refused, Some("req-1"));
    assert_eq!(info("addr-2026-11", "expired"), 1);
    assert_eq!(host.counter(&stat_name(key_status::TOKEN_REFUSALS, &[("reason", "token_expired")])), 1);
    let events = host.security_events();
    assert!(events.iter().any(|e| e["event"] == "key_expired" && e["detail"] == "addr-2026-11"), "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "token_expired" && e["detail"] == "addr-2026-11"), "{events:?}");
    assert!(!host.log_text().contains("Canton"));
}

#[test]
fn a_class_left_without_an_active_key_fails_closed() {
    let nov = day("2026-11-15");
    let guard = load(monthly_ring(), nov);
    // March 2027: both address keys are past their notAfter; the yearly key still serves the rest.
    let (body, audit, host) = exchange(&guard, day("2027-03-01"));
    assert_eq!(body, None, "nothing of the upstream body was released");
    assert_eq!((audit["decision"].as_str(), audit["reason"].as_str(), audit["status"].as_u64()), (Some("fail_closed"), Some("no_active_key"), Some(502)));
    assert_eq!(host.counter(&stat_name("spapi_guard_fail_closed_total", &[("reason", "no_active_key")])), 1);
}

#[test]
fn invalid_rings_are_refused_by_the_filter_naming_the_field() {
    let now = day("2026-11-15");
    let cases = [
        (
            json!([entry("k1", &["name", "email", "phone", "address", "tax_id", "gift_message", "company"], "2026-11-01", "2027-01-31")]),
            "keys.ring",
            "no key is active for other on 2026-11-15",
        ),
        (
            json!([entry("k1", &ALL_BUT_ADDRESS, "2026-11-01", "2026-10-31"), entry("k2", &["address"], "2026-11-01", "2027-01-31")]),
            "keys.ring[0].notAfter",
            "is before activeFrom 2026-11-01",
        ),
        (
            json!([
                entry("k1", &ALL_BUT_ADDRESS, "2026-11-01", "2027-01-31"),
                entry("k2", &["address"], "2026-11-01", "2027-01-31"),
                entry("k3", &["address", "name"], "2026-11-01", "2027-01-31")
            ]),
            "keys.ring[2].activeFrom",
            "is also the activeFrom of keys.ring[0] (k1) for name",
        ),
        (
            json!([
                entry("k1", &ALL_BUT_ADDRESS, "2026-11-01", "2027-01-31"),
                entry("k2", &["address"], "2026-11-01", "2026-11-30"),
                entry("k3", &["address"], "2026-12-10", "2027-01-31")
            ]),
            "keys.ring[2].activeFrom",
            "address has no active key from 2026-12-01 until 2026-12-10",
        ),
    ];
    for (ring, field, message) in cases {
        let host = MockHost::default();
        host.now.set(now);
        assert!(lifecycle::configure(&host, policy(ring).as_bytes(), &env).is_none(), "{field} accepted");
        let log = host.log_text();
        assert!(log.contains(&format!("spapi-guard: configuration refused: {field}: ")) && log.contains(message), "{field}: {log}");
        let rejected = host.security_events().into_iter().find(|e| e["event"] == "config_rejected").expect("config_rejected event");
        assert_eq!(rejected["detail"], field);
    }
}

#[test]
fn the_loaded_configuration_says_which_key_serves_which_class() {
    let host = MockHost::default();
    host.now.set(day("2026-11-15"));
    let guard = lifecycle::configure(&host, policy(monthly_ring()).as_bytes(), &env).expect("loads");
    assert!(
        host.log_text().contains("active keys: pii-2026 for name, email, phone, tax_id, gift_message, company, other, tokens open until 2027-12-31; addr-2026-11 for address, tokens open until 2027-01-31"),
        "{}",
        host.log_text()
    );
    let loaded = host.security_events().into_iter().find(|e| e["event"] == "config_loaded").expect("event");
    assert_eq!(loaded["detail"], "pii-2026,addr-2026-11");
    assert!(!guard.warnings.iter().any(|w| w.starts_with("keys")), "{:?}", guard.warnings);
}

/// A request through the exchange at `now`, with a body (the reveal endpoint, a detokenized
/// request): the local reply if the filter answered, whether the request went upstream, the audit
/// event and the host.
fn send(guard: &Rc<Guard>, caller: &str, method: &str, path: &str, body: Option<&str>, now: u64) -> (Option<spapi_guard::testing::SentReply>, bool, Value, MockHost) {
    let mut host = MockHost::new(method, path, Some(caller));
    host.now.set(now);
    let mut ex = Exchange::new(Rc::clone(guard), Rc::new(DecisionIds::new()));
    let mut flow = ex.on_request_headers(&mut host, body.is_none());
    if let (Some(body), None) = (body, host.reply.as_ref()) {
        host.add_request_header("content-type", "application/json");
        host.request_body = body.as_bytes().to_vec();
        flow = ex.on_request_body(&mut host, body.len(), true);
    }
    let reply = host.reply.take();
    let status = reply.as_ref().map_or(200, |r| i64::from(r.status));
    host.set_property("response.code", &status.to_le_bytes());
    ex.on_log(&mut host);
    let audit = host.audit_event().expect("audit event");
    (reply, flow == Flow::Continue, audit, host)
}

#[test]
fn the_filter_refuses_tokens_of_an_expired_key_when_revealing_or_detokenizing() {
    let every = ["name", "email", "phone", "address", "tax_id", "gift_message", "company", "other"];
    let ring = json!([entry("old", &every, "2026-01-01", "2026-06-30"), entry("new", &every, "2026-06-01", "2027-12-31")]);
    let mut policy: Value = serde_json::from_str(&policy(ring)).expect("json");
    policy["roles"]["label-printer"]["reveal"] = json!([{"classes": ["address"], "operations": ["spapi-guard.reveal"]}]);
    policy["roles"]["order-sync"]["reveal"] = json!([{"classes": ["email"], "operations": ["orders-v0.getOrders"]}]);
    let now = day("2026-11-15");
    let guard = Rc::new(Guard::load_at(policy.to_string().as_bytes(), &env, now).expect("loads, with a warning"));
    assert!(guard.warnings.iter().any(|w| w.starts_with("keys.ring[0].notAfter: key old expired on 2026-06-30")), "{:?}", guard.warnings);
    let seal = |at: u64, class, value: &str| {
        guard.tokens.seal(at, class, spapi_guard::tokens::Mode::Deterministic, spapi_guard::tokens::ValueKind::Text, value.as_bytes()).expect("sealed")
    };
    use spapi_guard::pii::PiiClass;
    let (old_city, new_city) = (seal(day("2026-03-01"), PiiClass::Address, "Canton"), seal(now, PiiClass::Address, "Canton"));
    let old_email = seal(day("2026-03-01"), PiiClass::Email, "jane@example.com");
    const LABEL_PRINTER: &str = "spiffe://spapi-guard.demo/label-printer";

    // The reveal endpoint: the current key's token opens, the expired key's is refused.
    let (reply, _, _, _) = send(&guard, LABEL_PRINTER, "POST", "/spapi-guard/v1/reveal", Some(&json!({"tokens": [new_city]}).to_string()), now);
    let reply = reply.expect("answered");
    assert_eq!((reply.status, String::from_utf8_lossy(&reply.body).into_owned()), (200, r#"{"values":["Canton"]}"#.to_string()));
    let (reply, _, audit, host) = send(&guard, LABEL_PRINTER, "POST", "/spapi-guard/v1/reveal", Some(&json!({"tokens": [new_city, old_city]}).to_string()), now);
    let reply = reply.expect("refused");
    assert_eq!((reply.status, reply.header("x-spapi-guard")), (400, Some("token_expired")));
    assert!(String::from_utf8_lossy(&reply.body).contains("its retention period is over") && !String::from_utf8_lossy(&reply.body).contains("Canton"));
    assert_eq!((audit["reason"].as_str(), audit["security_events"].clone()), (Some("token_expired"), json!(["token_expired"])));
    let events = host.security_events();
    let expired = events.iter().find(|e| e["event"] == "token_expired").expect("token_expired event");
    assert_eq!((expired["detail"].as_str(), expired["severity"].as_str()), (Some("old"), Some("warning")));
    assert_eq!(host.counter(&stat_name(key_status::TOKEN_REFUSALS, &[("reason", "token_expired")])), 1);
    assert!(!host.log_text().contains("Canton"));

    // Detokenization toward an operation: refused before anything goes upstream.
    let path = format!("/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&BuyerEmail={old_email}");
    let (reply, forwarded, audit, _) = send(&guard, ORDER_SYNC, "GET", &path, None, now);
    assert!(!forwarded, "a request with an expired token went upstream");
    assert_eq!(reply.map(|r| (r.status, r.header("x-spapi-guard").map(str::to_string))), Some((400, Some("token_expired".to_string()))));
    assert_eq!(audit["reason"], "token_expired");
    // Before its notAfter, the same token was revealed.
    let (_, forwarded, audit, _) = send(&guard, ORDER_SYNC, "GET", &path, None, day("2026-06-15"));
    assert!(forwarded);
    assert_eq!(audit["pii"]["email"]["revealed"], 1);
}
