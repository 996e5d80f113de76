//! The request flow, natively: the exchange state machine driven through every phase order Envoy
//! can produce — bodies in one or many chunks (split at every byte), bodies ended by trailers
//! instead of `end_of_stream`, local replies, resets — against a mock host that buffers what a
//! paused phase holds, as Envoy does. The real-Envoy suites (tests/e2e.rs, tests/trailers.rs…)
//! remain the last word; these cover the orders only Envoy's protocol corners produce, quickly.
use std::rc::Rc;

use serde_json::{json, Value};
use spapi_guard::audit::DecisionIds;
use spapi_guard::exchange::{Exchange, Flow, MAX_RDT_BODY};
use spapi_guard::guard::Guard;
use spapi_guard::metrics::stat_name;
use spapi_guard::testing::{MockHost, SentReply};

const KEY_HEX: &str = "8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
const ORDER_SYNC: &str = "spiffe://spapi-guard.demo/order-sync";
const LABEL_PRINTER: &str = "spiffe://spapi-guard.demo/label-printer";
const ADDRESS_PATH: &str = "/orders/v0/orders/902-3159896-1390916/address";
const RDT_PATH: &str = "/tokens/2021-03-01/restrictedDataToken";

fn default_policy() -> Value {
    serde_json::from_str(include_str!("../policies/default.json")).expect("policy")
}

fn guard_with(policy: Value) -> Rc<Guard> {
    let env = |name: &str| name.starts_with("SPAPI_GUARD_KEY_").then(|| KEY_HEX.to_string());
    Rc::new(Guard::load(policy.to_string().as_bytes(), &env).expect("policy loads"))
}

fn guard() -> Rc<Guard> {
    guard_with(default_policy())
}

fn address_fixture() -> Vec<u8> {
    include_bytes!("fixtures/spapi/orders-v0_getOrderAddress_1.json").to_vec()
}

/// PII values of the address fixture that must never reach the client in clear.
const ADDRESS_PII: &[&str] = &["Michigan address", "1 cross st", "Canton", "48817", "37.42678611", "Cross St"];

/// What the client and the upstream saw of one exchange.
#[derive(Debug, Default)]
struct Seen {
    /// The request reached the upstream (its headers, and its body if any, were released).
    forwarded: bool,
    /// The local reply, if the filter answered instead.
    reply: Option<SentReply>,
    /// The response body bytes released to the client (upstream response only).
    delivered: Vec<u8>,
    /// Whether the response headers were released.
    headers_released: bool,
}

/// Drives one phase of a body the way Envoy does: a paused chunk stays buffered and the next
/// callback reports the whole buffer; a continued chunk (and everything buffered) moves on.
struct BodyPump {
    buffered: Vec<u8>,
    released: Vec<u8>,
}

impl BodyPump {
    fn new() -> BodyPump {
        BodyPump { buffered: Vec::new(), released: Vec::new() }
    }

    fn after(&mut self, flow: Flow, held: Vec<u8>) {
        match flow {
            Flow::Pause => self.buffered = held,
            Flow::Continue => {
                self.released.extend_from_slice(&held);
                self.buffered.clear();
            }
        }
    }
}

struct Exchange1 {
    ex: Exchange,
    host: MockHost,
    seen: Seen,
}

impl Exchange1 {
    fn new(guard: Rc<Guard>, method: &str, path: &str, caller: Option<&str>) -> Exchange1 {
        Exchange1 { ex: Exchange::new(guard, Rc::new(DecisionIds::new())), host: MockHost::new(method, path, caller), seen: Seen::default() }
    }

    /// Whether the filter has just answered locally (the host then ends the exchange).
    fn replied(&mut self) -> bool {
        match self.host.reply.take() {
            Some(reply) => {
                self.seen.reply = Some(reply);
                true
            }
            None => false,
        }
    }

    /// The request: headers, then `chunks` of body, then trailers if asked.
    fn request(&mut self, chunks: &[&[u8]], trailers: bool) {
        let eos = chunks.is_empty() && !trailers;
        let mut flow = self.ex.on_request_headers(&mut self.host, eos);
        if self.replied() {
            return;
        }
        let mut pump = BodyPump::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut held = pump.buffered.clone();
            held.extend_from_slice(chunk);
            self.host.request_body = held.clone();
            let last = i + 1 == chunks.len() && !trailers;
            let body_flow = self.ex.on_request_body(&mut self.host, held.len(), last);
            if self.replied() {
                return;
            }
            pump.after(body_flow, held);
            flow = body_flow;
        }
        if trailers {
            self.host.request_body = pump.buffered.clone();
            flow = self.ex.on_request_trailers(&mut self.host);
            if self.replied() {
                return;
            }
        }
        self.seen.forwarded = flow == Flow::Continue;
    }

    /// The upstream's response: headers, `chunks` of body, trailers if asked. Call only if the
    /// request was forwarded (or to play a local reply through the encode path).
    fn respond(&mut self, headers: &[(&str, &str)], chunks: &[&[u8]], trailers: bool) {
        self.host.set_response_headers(headers);
        let eos = chunks.is_empty() && !trailers;
        let flow = self.ex.on_response_headers(&mut self.host, eos);
        let mut headers_flow = flow;
        if self.replied() {
            return;
        }
        let mut pump = BodyPump::new();
        let mut last_flow = flow;
        for (i, chunk) in chunks.iter().enumerate() {
            let mut held = pump.buffered.clone();
            held.extend_from_slice(chunk);
            self.host.response_body = held.clone();
            self.host.response_body_set = false;
            let last = i + 1 == chunks.len() && !trailers;
            let body_flow = self.ex.on_response_body(&mut self.host, held.len(), last);
            if self.replied() {
                return;
            }
            let held = self.host.response_body.clone();
            pump.after(body_flow, held);
            last_flow = body_flow;
            if body_flow == Flow::Continue {
                headers_flow = Flow::Continue;
            }
        }
        if trailers {
            self.host.response_body = pump.buffered.clone();
            let trailer_flow = self.ex.on_response_trailers(&mut self.host);
            if self.replied() {
                return;
            }
            let held = self.host.response_body.clone();
            pump.after(trailer_flow, held);
            last_flow = trailer_flow;
            if trailer_flow == Flow::Continue {
                headers_flow = Flow::Continue;
            }
        }
        self.seen.headers_released = headers_flow == Flow::Continue || last_flow == Flow::Continue;
        self.seen.delivered = pump.released;
    }

    fn log(&mut self, status: Option<i64>) -> Value {
        if let Some(code) = status {
            self.host.set_property("response.code", &code.to_le_bytes());
        }
        self.ex.on_log(&mut self.host);
        self.host.audit_event().expect("one audit event")
    }
}

const JSON_HEADERS: &[(&str, &str)] = &[(":status", "200"), ("content-type", "application/json")];

fn no_pii(bytes: &[u8], values: &[&str]) {
    let text = String::from_utf8_lossy(bytes);
    for v in values {
        assert!(!text.contains(v), "{v} leaked in: {text}");
    }
}

/// The protected body of the address fixture, in one chunk with end_of_stream.
fn reference_address_body(guard: &Rc<Guard>) -> Vec<u8> {
    let mut x = Exchange1::new(Rc::clone(guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
    x.request(&[], false);
    assert!(x.seen.forwarded);
    x.respond(JSON_HEADERS, &[&address_fixture()], false);
    assert!(x.seen.headers_released);
    x.seen.delivered
}

#[test]
fn a_protected_body_split_at_every_byte_leaves_the_same_and_protected() {
    let guard = guard();
    let reference = reference_address_body(&guard);
    no_pii(&reference, ADDRESS_PII);
    let body = address_fixture();
    for trailers in [false, true] {
        for split in 0..=body.len() {
            let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
            x.request(&[], false);
            let (a, b) = body.split_at(split);
            x.respond(JSON_HEADERS, &[a, b], trailers);
            assert!(x.seen.reply.is_none(), "split {split}: {:?}", x.seen.reply);
            assert_eq!(x.seen.delivered, reference, "split {split}, trailers {trailers}");
            assert_eq!(x.host.response_header_text("content-length"), Some(reference.len().to_string()));
            let event = x.log(Some(200));
            assert_eq!(event["outcome"], "protected");
            assert!(event["pii"]["name"]["tokenized"].as_u64().unwrap_or(0) >= 1, "{event}");
        }
    }
}

#[test]
fn a_body_in_many_chunks_or_only_trailers_is_protected() {
    let guard = guard();
    let reference = reference_address_body(&guard);
    let body = address_fixture();
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    for trailers in [false, true] {
        let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
        x.request(&[], false);
        x.respond(JSON_HEADERS, &bytes, trailers);
        assert_eq!(x.seen.delivered, reference);
    }
    // Headers, then trailers with no body at all: nothing to protect, nothing raw released.
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
    x.request(&[], false);
    x.respond(JSON_HEADERS, &[], true);
    assert!(x.seen.delivered.is_empty());
    assert_eq!(x.host.response_header_text("content-length").as_deref(), Some("0"));
}

#[test]
fn response_trailers_never_release_a_raw_body() {
    // The finding: a body followed by trailers reached the client untokenized.
    let guard = guard();
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
    x.request(&[], false);
    x.respond(JSON_HEADERS, &[&address_fixture()], true);
    no_pii(&x.seen.delivered, ADDRESS_PII);
    let v: Value = serde_json::from_slice(&x.seen.delivered).expect("json");
    let name = v["payload"]["ShippingAddress"]["Name"].as_str().expect("token");
    assert_eq!(guard.tokens.open(name, x.host.now.get()).expect("opens").plaintext, b"Michigan address");
    let event = x.log(Some(200));
    assert_eq!((event["outcome"].as_str(), event["reason"].as_str()), (Some("protected"), None));
    assert_ne!(event["pii"], json!({}));
}

fn rdt_body(path: &str) -> Vec<u8> {
    json!({"restrictedResources": [{"method": "GET", "path": path}]}).to_string().into_bytes()
}

#[test]
fn request_trailers_never_skip_the_rdt_check() {
    let guard = guard();
    let denied = rdt_body("/orders/v0/orders/902-3159896-1390916/buyerInfo");
    let allowed = rdt_body(ADDRESS_PATH);
    for trailers in [false, true] {
        for chunks in [1usize, 3] {
            let split = |b: &[u8]| -> Vec<Vec<u8>> { b.chunks(b.len().div_ceil(chunks)).map(<[u8]>::to_vec).collect() };
            let parts = split(&denied);
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let mut x = Exchange1::new(Rc::clone(&guard), "POST", RDT_PATH, Some(LABEL_PRINTER));
            x.request(&refs, trailers);
            let reply = x.seen.reply.clone().unwrap_or_else(|| panic!("trailers {trailers}, {chunks} chunks: forwarded"));
            assert_eq!((reply.status, reply.header("x-spapi-guard")), (403, Some("rdt_resource_not_allowed")));
            assert!(!x.seen.forwarded);
            // The local reply flows back through the filter.
            x.respond(&[(":status", "403"), ("content-type", "application/json")], &[&reply.body], false);
            assert_eq!(x.seen.delivered, reply.body);
            let event = x.log(Some(403));
            assert_eq!((event["decision"].as_str(), event["reason"].as_str()), (Some("deny"), Some("rdt_resource_not_allowed")));

            let parts = split(&allowed);
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let mut x = Exchange1::new(Rc::clone(&guard), "POST", RDT_PATH, Some(LABEL_PRINTER));
            x.request(&refs, trailers);
            assert!(x.seen.forwarded && x.seen.reply.is_none(), "trailers {trailers}, {chunks} chunks: {:?}", x.seen.reply);
        }
    }
}

#[test]
fn an_rdt_request_without_a_body_or_too_large_is_refused() {
    let guard = guard();
    let mut x = Exchange1::new(Rc::clone(&guard), "POST", RDT_PATH, Some(LABEL_PRINTER));
    x.request(&[], false);
    assert_eq!(x.seen.reply.as_ref().map(|r| r.status), Some(400));
    // Headers, then trailers only.
    let mut x = Exchange1::new(Rc::clone(&guard), "POST", RDT_PATH, Some(LABEL_PRINTER));
    x.request(&[], true);
    assert_eq!(x.seen.reply.as_ref().map(|r| (r.status, r.header("x-spapi-guard").map(str::to_string))), Some((400, Some("invalid_rdt_request".into()))));
    let big = vec![b' '; MAX_RDT_BODY + 1];
    let mut x = Exchange1::new(Rc::clone(&guard), "POST", RDT_PATH, Some(LABEL_PRINTER));
    x.request(&[&big[..10], &big[10..]], true);
    assert_eq!(x.seen.reply.as_ref().map(|r| r.status), Some(400));
}

#[test]
fn resets_mid_body_are_audited_as_aborted() {
    let guard = guard();
    // The upstream goes away after half the body: nothing was released.
    let body = address_fixture();
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
    x.request(&[], false);
    x.host.set_response_headers(JSON_HEADERS);
    assert_eq!(x.ex.on_response_headers(&mut x.host, false), Flow::Pause);
    x.host.response_body = body[..body.len() / 2].to_vec();
    assert_eq!(x.ex.on_response_body(&mut x.host, body.len() / 2, false), Flow::Pause);
    let event = x.log(None);
    assert_eq!((event["outcome"].as_str(), event["reason"].as_str()), (Some("aborted"), Some("response_incomplete")));
    assert_eq!(x.host.counter(&stat_name("spapi_guard_aborted_total", &[("reason", "response_incomplete")])), 1);
    // An RDT request whose body never ends: never forwarded, audited as aborted.
    let mut x = Exchange1::new(Rc::clone(&guard), "POST", RDT_PATH, Some(LABEL_PRINTER));
    assert_eq!(x.ex.on_request_headers(&mut x.host, false), Flow::Pause);
    x.host.request_body = b"{\"restrictedRes".to_vec();
    assert_eq!(x.ex.on_request_body(&mut x.host, 15, false), Flow::Pause);
    let event = x.log(None);
    assert_eq!((event["outcome"].as_str(), event["reason"].as_str()), (Some("aborted"), Some("request_incomplete")));
    // A reset before any response: the request was forwarded, no body was held.
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
    x.request(&[], false);
    let event = x.log(Some(503));
    assert_eq!(event["outcome"], "protected");
    assert_eq!(event["upstream_status"], Value::Null);
}

#[test]
fn fail_closed_replies_and_no_upstream_byte_follows() {
    let guard = guard();
    type Case = (Vec<(&'static str, &'static str)>, Vec<u8>, &'static str);
    let cases: Vec<Case> = vec![
        (JSON_HEADERS.to_vec(), b"{\"payload\":{\"ShippingAddress\":{\"Name\":\"Jane Doe\"".to_vec(), "invalid_json"),
        (vec![(":status", "200"), ("content-type", "application/json"), ("content-encoding", "gzip")], b"\x1f\x8b".to_vec(), "unsupported_content_encoding"),
        (vec![(":status", "200"), ("content-type", "text/html")], b"<p>Jane Doe</p>".to_vec(), "unsupported_content_type"),
    ];
    for trailers in [false, true] {
        for (headers, body, code) in &cases {
            let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
            x.request(&[], false);
            x.respond(headers, &[body], trailers);
            let reply = x.seen.reply.clone().expect("fail-closed reply");
            assert_eq!((reply.status, reply.header("x-spapi-guard")), (502, Some(*code)));
            assert!(x.seen.delivered.is_empty());
            no_pii(&reply.body, &["Jane Doe"]);
            // Whatever Envoy still delivers of the upstream response is held.
            assert_eq!(x.ex.on_response_body(&mut x.host, 5, true), Flow::Pause);
            assert_eq!(x.ex.on_response_trailers(&mut x.host), Flow::Pause);
            let event = x.log(Some(502));
            assert_eq!((event["outcome"].as_str(), event["reason"].as_str()), (Some("fail_closed"), Some(*code)));
            // The security event names the request.
            let security = x.host.security_events();
            let fail = security.iter().find(|e| e["event"] == "fail_closed").expect("fail_closed event");
            assert_eq!(fail["request_id"], event["request_id"]);
            assert_ne!(fail["request_id"], "");
            no_pii(x.host.log_text().as_bytes(), &["Jane Doe"]);
        }
    }
}

#[test]
fn a_rewrite_that_outgrows_envoys_buffer_is_refused_not_written() {
    let mut policy = default_policy();
    policy["maxBodyBytes"] = json!(200_000);
    policy["bufferLimitBytes"] = json!(600_000);
    let guard = guard_with(policy);
    let orders: Vec<&str> = (0..4000).map(|_| r#"{"BuyerInfo":{"BuyerEmail":"a","BuyerName":"b"}}"#).collect();
    let body = format!(r#"{{"payload":{{"Orders":[{}]}}}}"#, orders.join(","));
    assert!(body.len() < 200_000);
    for trailers in [false, true] {
        let mut x = Exchange1::new(Rc::clone(&guard), "GET", "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER", Some(ORDER_SYNC));
        x.request(&[], false);
        x.respond(JSON_HEADERS, &[body.as_bytes()], trailers);
        let reply = x.seen.reply.clone().expect("refused");
        assert_eq!((reply.status, reply.header("x-spapi-guard")), (502, Some("body_too_large")));
        assert!(!x.host.response_body_set, "the oversize body was never written to Envoy");
        let event = x.log(Some(502));
        assert_eq!(event["reason"], "body_too_large");
    }
}

#[test]
fn oversize_bodies_are_refused_while_they_arrive() {
    let mut policy = default_policy();
    policy["maxBodyBytes"] = json!(2048);
    let guard = guard_with(policy);
    let body = vec![b' '; 3000];
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
    x.request(&[], false);
    x.respond(JSON_HEADERS, &[&body[..1500], &body[1500..]], true);
    assert_eq!(x.seen.reply.as_ref().map(|r| r.status), Some(502));
    // A declared length over the limit is refused at the headers.
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
    x.request(&[], false);
    x.respond(&[(":status", "200"), ("content-type", "application/json"), ("content-length", "3000")], &[&body], false);
    assert_eq!(x.seen.reply.as_ref().and_then(|r| r.header("x-spapi-guard").map(str::to_string)), Some("body_too_large".into()));
}

#[test]
fn denials_reply_locally_and_their_reply_flows_back() {
    let guard = guard();
    // An unknown caller; the local reply then goes through the encode path with trailers even.
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some("spiffe://spapi-guard.demo/intruder"));
    x.request(&[b"ignored"], true);
    let reply = x.seen.reply.clone().expect("denied");
    assert_eq!(reply.status, 403);
    x.respond(&[(":status", "403"), ("content-type", "application/json")], &[&reply.body], true);
    assert_eq!(x.seen.delivered, reply.body);
    let event = x.log(Some(403));
    assert_eq!((event["decision"].as_str(), event["reason"].as_str()), (Some("deny"), Some("unknown_caller")));
    // The analytics role may not read addresses (PII "none") but may call getOrderAddress? It
    // is not in its operations: denied.
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some("spiffe://spapi-guard.demo/analytics"));
    x.request(&[], false);
    assert_eq!(x.seen.reply.as_ref().map(|r| r.status), Some(403));
}

#[test]
fn pass_through_and_unprotected_responses_stream_in_chunks() {
    let guard = guard();
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", "/catalog/2022-04-01/items/B00X", Some(ORDER_SYNC));
    x.request(&[], false);
    assert!(x.seen.forwarded);
    x.respond(JSON_HEADERS, &[b"{\"a\":", b"1}"], true);
    assert_eq!(x.seen.delivered, b"{\"a\":1}");
    let event = x.log(Some(200));
    assert_eq!(event["outcome"], "unmatched");
    assert_eq!(event["bytes_out"], 7);
}

#[test]
fn envoys_own_replies_are_no_sp_api_responses() {
    let guard = guard();
    for (details, reason) in [("upstream_response_timeout", "upstream_timeout"), ("upstream_reset_before_response_started{connection_failure}", "upstream_unavailable")] {
        let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
        x.request(&[], false);
        x.host.set_property("response.code_details", details.as_bytes());
        x.respond(&[(":status", "504"), ("content-type", "text/plain")], &[b"upstream request timeout"], false);
        assert!(x.seen.reply.is_none(), "not replaced by a fail-closed error");
        assert_eq!(x.seen.delivered, b"upstream request timeout");
        let event = x.log(Some(504));
        assert_eq!((event["outcome"].as_str(), event["reason"].as_str(), event["decision"].as_str()), (Some("upstream_failed"), Some(reason), Some("allow")));
        assert_eq!(event["upstream_status"], Value::Null);
        assert!(x.host.security_events().iter().all(|e| e["event"] != "fail_closed"));
    }
    // A response Envoy forwards from the upstream says so, and is checked as always.
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
    x.request(&[], false);
    x.host.set_property("response.code_details", b"via_upstream");
    x.respond(&[(":status", "200"), ("content-type", "text/plain")], &[b"Jane Doe"], false);
    assert_eq!(x.seen.reply.as_ref().map(|r| r.status), Some(502));
}

#[test]
fn responses_without_a_body_pass() {
    let guard = guard();
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
    x.request(&[], false);
    x.respond(&[(":status", "204")], &[], false);
    assert!(x.seen.headers_released && x.seen.reply.is_none());
}

#[test]
fn the_identity_header_is_read_once_and_never_forwarded() {
    let mut policy = default_policy();
    policy["access"]["identity"]["sources"] = json!(["header"]);
    policy["callers"] = json!([{"id": ORDER_SYNC, "source": "header", "roles": ["order-sync"]}]);
    let guard = guard_with(policy);
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, None);
    x.host.add_request_header("x-spapi-guard-caller", ORDER_SYNC);
    x.request(&[], false);
    assert!(x.seen.forwarded);
    assert_eq!(x.host.request_header_text("x-spapi-guard-caller"), None);
    // And compression is turned off for a body the filter must read.
    assert_eq!(x.host.request_header_text("accept-encoding"), None);
}

#[test]
fn a_request_the_filter_never_saw_is_still_audited() {
    let guard = guard();
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
    let event = x.log(Some(401));
    assert_eq!((event["decision"].as_str(), event["reason"].as_str()), (Some("deny"), Some("refused_before_spapi_guard")));
    assert_eq!(event["request_id"], "3f1c8a52-1d47-4a4e-9a59-0c1f2a6b7d11");
}

#[test]
fn canaries_partly_percent_encoded_in_the_query_are_found() {
    let mut policy = default_policy();
    policy["canaries"] = json!({"block": true, "records": [{"id": "c1", "value": "canary@example.com"}]});
    let guard = guard_with(policy);
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", "/orders/v0/orders?BuyerEmail=canary%40exampl%65.com&MarketplaceIds=ATVPDKIKX0DER", Some(ORDER_SYNC));
    x.request(&[], false);
    assert_eq!(x.seen.reply.as_ref().and_then(|r| r.header("x-spapi-guard").map(str::to_string)), Some("canary_blocked".into()));
}

#[test]
fn canaries_in_a_response_block_it() {
    let mut policy = default_policy();
    policy["canaries"] = json!({"block": true, "records": [{"id": "c1", "value": "Canary McCanaryface"}]});
    let guard = guard_with(policy);
    let body = br#"{"payload":{"ShippingAddress":{"Name":"Canary McCanaryface"}}}"#;
    for trailers in [false, true] {
        let mut x = Exchange1::new(Rc::clone(&guard), "GET", ADDRESS_PATH, Some(ORDER_SYNC));
        x.request(&[], false);
        x.respond(JSON_HEADERS, &[&body[..20], &body[20..]], trailers);
        assert_eq!(x.seen.reply.as_ref().and_then(|r| r.header("x-spapi-guard").map(str::to_string)), Some("canary_blocked".into()));
        assert!(x.seen.delivered.is_empty());
    }
}

/// Drift found in a protected response: planted PII protected, reported as `schema_drift` events
/// with the operation and path templates (never values), counted in the metric and the audit event.
#[test]
fn drift_is_protected_and_reported_by_path_template_never_by_value() {
    let guard = guard();
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", "/orders/v0/orders/902-3159896-1390916", Some(ORDER_SYNC));
    x.request(&[], false);
    assert!(x.seen.forwarded);
    let body = br#"{"payload":{"AmazonOrderId":"902-3159896-1390916","buyerInfo":{"buyerEmail":"jane.planted@example.com","BuyerMobile":"4155550123"},
        "Concierge":"+44 20 7946 0958","recipientName":"Janet Planted"}}"#;
    x.respond(JSON_HEADERS, &[&body[..40], &body[40..]], false);
    no_pii(&x.seen.delivered, &["jane.planted@example.com", "4155550123", "7946 0958"]);
    let events: Vec<Value> = x.host.security_events().into_iter().filter(|e| e["event"] == "schema_drift").collect();
    let seen: Vec<(String, String, String)> =
        events.iter().map(|e| (e["reason"].as_str().unwrap_or("").into(), e["detail"].as_str().unwrap_or("").into(), e["path"].as_str().unwrap_or("").into())).collect();
    let want = [("member", "protected", "$.payload.buyerInfo.BuyerMobile"), ("phone", "protected", "$.payload.Concierge"), ("name", "reported", "$.payload.recipientName")];
    assert_eq!(seen, want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())));
    for e in &events {
        assert_eq!(e["operation"], "orders-v0.getOrder");
        assert_eq!(e["caller"], ORDER_SYNC);
    }
    let printed = x.host.log_text();
    no_pii(printed.as_bytes(), &["planted", "4155550123", "7946", "Janet"]);
    let audit = x.log(Some(200));
    assert_eq!(audit["drift"], json!({"member": {"protected": 1}, "phone": {"protected": 1}, "name": {"reported": 1}}));
    assert!(audit["security_events"].as_array().is_some_and(|a| a.contains(&json!("schema_drift"))));
    let metric = |kind: &str, action: &str, path: &str| {
        x.host.counter(&stat_name("spapi_guard_schema_drift_total", &[("operation", "orders-v0.getOrder"), ("kind", kind), ("action", action), ("path", path)]))
    };
    assert_eq!(metric("member", "protected", "$.payload.buyerInfo.BuyerMobile"), 1);
    assert_eq!(metric("phone", "protected", "$.payload.Concierge"), 1);
    assert_eq!(metric("name", "reported", "$.payload.recipientName"), 1);
    // The planted email sat at a catalogued path, only in another case: protected, not drift.
    assert_eq!(audit["pii"]["email"]["tokenized"], 1);
}

/// Operations the catalog lists without PII stream unchanged; with `drift.scanPiiFreeOperations`
/// their bodies are also scanned as they pass (report only), split however they arrive.
#[test]
fn pii_free_responses_stream_and_are_scanned_only_when_the_policy_asks() {
    let path = "/shipping/v2/accessPoints?accessPointTypes=HELIX&countryCode=US&postalCode=EC4M7RF";
    let body =
        br#"{"payload":{"accessPointsMap":{"HELIX":[{"accessPointId":"AP1","name":"Corner Shop","assistanceType":"STAFF_ASSISTED","note":"ask for jane.planted@example.com"}]}}}"#;
    for scan in [false, true] {
        let mut policy = default_policy();
        policy["drift"] = json!({"scanPiiFreeOperations": scan});
        let guard = guard_with(policy);
        let mut x = Exchange1::new(Rc::clone(&guard), "GET", path, Some(ORDER_SYNC));
        x.host.add_request_header("accept-encoding", "gzip");
        x.request(&[], false);
        assert!(x.seen.forwarded);
        assert_eq!(x.host.request_header_text("accept-encoding").is_none(), scan, "identity bodies are asked for only to scan them");
        let chunks: Vec<&[u8]> = body.chunks(17).collect();
        x.respond(JSON_HEADERS, &chunks, false);
        assert_eq!(x.seen.delivered, body.to_vec(), "streamed unchanged");
        let drift: Vec<Value> = x.host.security_events().into_iter().filter(|e| e["event"] == "schema_drift").collect();
        let audit = x.log(Some(200));
        assert_eq!(audit["outcome"], "passed_through");
        if scan {
            assert_eq!(drift.len(), 1, "{drift:?}");
            assert_eq!(
                (drift[0]["reason"].as_str(), drift[0]["detail"].as_str(), drift[0]["path"].as_str()),
                (Some("email"), Some("reported"), Some("$.payload.accessPointsMap.HELIX[*].note"))
            );
            assert_eq!(audit["drift"], json!({"email": {"reported": 1}}));
        } else {
            assert!(drift.is_empty());
            assert_eq!(audit["drift"], json!({}));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens back to data: detokenization toward approved operations, and the reveal endpoint.

const RATES_PATH: &str = "/shipping/v2/shipments/rates";

/// The default policy with reveal grants: label-printer may send addresses and names to the
/// Shipping API and read them from the reveal endpoint; order-sync may search orders by email.
fn reveal_policy() -> Value {
    let mut p = default_policy();
    p["roles"]["label-printer"]["operations"] = json!(["orders-v0.getOrderAddress", "shipping-v2.getRates", "tokens-2021-03-01.createRestrictedDataToken"]);
    p["roles"]["label-printer"]["reveal"] = json!([{"classes": ["address", "name"], "operations": ["shipping-v2.getRates", "spapi-guard.reveal"]}]);
    p["roles"]["label-printer"]["maxPiiFieldsPerWindow"] = json!(20);
    p["roles"]["order-sync"]["reveal"] = json!([{"classes": ["email"], "operations": ["orders-v0.getOrders"]}]);
    p
}

fn seal(guard: &Guard, class: spapi_guard::pii::PiiClass, value: &str) -> String {
    guard.tokens.seal(MOCK_NOW, class, spapi_guard::tokens::Mode::Deterministic, spapi_guard::tokens::ValueKind::Text, value.as_bytes()).expect("a key is active")
}

/// MockHost::new's clock (2027-01-15): the default policy's key is active then.
const MOCK_NOW: u64 = 1_800_000_000_000;

#[test]
fn tokens_in_a_body_become_data_toward_an_approved_operation_in_any_chunking() {
    use spapi_guard::pii::PiiClass;
    let guard = guard_with(reveal_policy());
    let (name, city) = (seal(&guard, PiiClass::Name, "Jane \"JD\" Doe"), seal(&guard, PiiClass::Address, "Canton"));
    let body = format!(r#"{{"shipTo":{{"name":"{name}","city":"{city}","addressLine1":"c/o {name}"}},"shipFrom":{{"name":"Acme"}}}}"#);
    let want = r#"{"shipTo":{"name":"Jane \"JD\" Doe","city":"Canton","addressLine1":"c/o Jane \"JD\" Doe"},"shipFrom":{"name":"Acme"}}"#;
    for trailers in [false, true] {
        for split in [1, body.len() / 2, body.len() - 1] {
            let mut x = Exchange1::new(Rc::clone(&guard), "POST", RATES_PATH, Some(LABEL_PRINTER));
            x.request(&[&body.as_bytes()[..split], &body.as_bytes()[split..]], trailers);
            assert!(x.seen.forwarded, "{:?}", x.seen.reply);
            assert_eq!(String::from_utf8_lossy(&x.host.request_body), want);
            assert_eq!(x.host.request_header_text("content-length"), Some(want.len().to_string()));
            x.respond(JSON_HEADERS, &[b"{}"], false);
            let event = x.log(Some(200));
            assert_eq!(event["pii"]["name"]["revealed"], 2, "{event}");
            assert_eq!(event["pii"]["address"]["revealed"], 1);
            no_pii(x.host.log_text().as_bytes(), &["Jane", "Canton"]);
            no_pii(x.host.audit.as_deref().unwrap_or_default().as_bytes(), &["Jane", "Canton"]);
        }
    }
}

#[test]
fn tokens_that_may_not_be_revealed_there_stop_the_request() {
    use spapi_guard::pii::PiiClass;
    let guard = guard_with(reveal_policy());
    let email = seal(&guard, PiiClass::Email, "jane@example.com");
    let name = seal(&guard, PiiClass::Name, "Jane");
    let cases = [
        // A class outside the grant.
        (format!(r#"{{"shipTo":{{"email":"{email}"}}}}"#), 403, "detokenize_not_allowed"),
        // Forged, truncated, another key.
        (format!(r#"{{"shipTo":{{"name":"{}"}}}}"#, name.replace(".name.", ".address.")), 400, "invalid_token"),
        (format!(r#"{{"shipTo":{{"name":"{}"}}}}"#, &name[..name.len() - 3]), 400, "invalid_token"),
        (format!(r#"{{"shipTo":{{"name":"{}"}}}}"#, name.replace(".demo-1.", ".other.")), 400, "invalid_token"),
        // Not JSON.
        (format!("name={name}"), 400, "unreadable_request_body"),
    ];
    for (body, status, code) in cases {
        for trailers in [false, true] {
            let mut x = Exchange1::new(Rc::clone(&guard), "POST", RATES_PATH, Some(LABEL_PRINTER));
            x.request(&[body.as_bytes()], trailers);
            let reply = x.seen.reply.clone().unwrap_or_else(|| panic!("{code}: forwarded"));
            assert_eq!((reply.status, reply.header("x-spapi-guard")), (status, Some(code)), "{body}");
            assert!(!x.seen.forwarded && !x.host.request_body_set);
        }
    }
    // A caller without a reveal grant there may not send tokens where Amazon expects data
    // (the upstream would get a token instead of the address): refused, nothing forwarded.
    let body = format!(r#"{{"shipTo":{{"name":"{name}"}}}}"#);
    let mut x = Exchange1::new(Rc::clone(&guard), "POST", RATES_PATH, Some(ORDER_SYNC));
    x.request(&[body.as_bytes()], false);
    assert_eq!(x.seen.reply.as_ref().map(|r| r.status), Some(403));
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", &format!("/orders/v0/orders/{name}/address"), Some(LABEL_PRINTER));
    x.request(&[], false);
    assert_eq!(x.seen.reply.as_ref().and_then(|r| r.header("x-spapi-guard").map(str::to_string)), Some("detokenize_not_allowed".into()));
    // Its plain data passes unchanged.
    let mut x = Exchange1::new(Rc::clone(&guard), "POST", RATES_PATH, Some(ORDER_SYNC));
    x.request(&[br#"{"shipTo":{"name":"Jane"}}"#], true);
    assert!(x.seen.forwarded && !x.host.request_body_set);
}

#[test]
fn a_token_in_the_query_becomes_data_and_the_audit_log_still_hides_it() {
    use spapi_guard::pii::PiiClass;
    let guard = guard_with(reveal_policy());
    let email = seal(&guard, PiiClass::Email, "jane+1@example.com");
    let path = format!("/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&BuyerEmail={email}");
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", &path, Some(ORDER_SYNC));
    x.request(&[], false);
    assert!(x.seen.forwarded);
    assert_eq!(x.host.request_header_text(":path").as_deref(), Some("/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&BuyerEmail=jane%2B1%40example.com"));
    x.respond(JSON_HEADERS, &[b"{\"payload\":{\"Orders\":[]}}"], false);
    let event = x.log(Some(200));
    assert_eq!(event["path"], "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&BuyerEmail={redacted}");
    assert_eq!(event["pii"]["email"]["revealed"], 1);
    // The same token percent-encoded (tokens never need it): refused, never forwarded as a token
    // where Amazon expects the email; also for a caller without a grant.
    let encoded = path.replace("BuyerEmail=spgt1.", "BuyerEmail=%73pgt1.");
    let catalog = format!("/catalog/2022-04-01/items?keywords=s%70gt1.{}", email.trim_start_matches("spgt1."));
    for (caller, target) in [(ORDER_SYNC, &encoded), (LABEL_PRINTER, &catalog)] {
        let mut x = Exchange1::new(Rc::clone(&guard), "GET", target, Some(caller));
        x.request(&[], false);
        assert!(!x.seen.forwarded, "{caller}");
        assert_eq!(x.seen.reply.as_ref().map(|r| (r.status, r.header("x-spapi-guard").map(str::to_string))), Some((400, Some("invalid_token".into()))), "{caller}");
    }
    // label-printer may not reveal emails toward getOrders (no grant there): forwarded as it is.
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", &path, Some("spiffe://spapi-guard.demo/analytics"));
    x.request(&[], false);
    assert_eq!(x.seen.reply.as_ref().map(|r| r.status), Some(403), "analytics may not call getOrders");
}

fn reveal(guard: &Rc<Guard>, caller: &str, method: &str, body: &str) -> Exchange1 {
    let mut x = Exchange1::new(Rc::clone(guard), method, "/spapi-guard/v1/reveal", Some(caller));
    x.request(&[body.as_bytes()], false);
    x
}

#[test]
fn the_reveal_endpoint_answers_allowed_callers_and_refuses_the_rest() {
    use spapi_guard::pii::PiiClass;
    let guard = guard_with(reveal_policy());
    let (name, city, email) = (seal(&guard, PiiClass::Name, "Jane"), seal(&guard, PiiClass::Address, "Canton"), seal(&guard, PiiClass::Email, "j@example.com"));
    let lat = guard.tokens.seal(MOCK_NOW, PiiClass::Address, spapi_guard::tokens::Mode::Randomized, spapi_guard::tokens::ValueKind::RawJson, b"47.6062").expect("a key is active");
    let mut x = reveal(&guard, LABEL_PRINTER, "POST", &json!({"tokens": [name, city, lat]}).to_string());
    let reply = x.seen.reply.clone().expect("answered by the filter");
    assert_eq!((reply.status, reply.header("cache-control")), (200, Some("no-store")));
    let v: Value = serde_json::from_slice(&reply.body).expect("json");
    assert_eq!(v, json!({"values": ["Jane", "Canton", 47.6062]}));
    assert!(!x.seen.forwarded);
    x.respond(&[(":status", "200"), ("content-type", "application/json")], &[&reply.body], false);
    let event = x.log(Some(200));
    assert_eq!((event["decision"].as_str(), event["outcome"].as_str()), (Some("allow"), Some("revealed")));
    assert_eq!(event["pii"], json!({"address": {"revealed": 2}, "name": {"revealed": 1}}));
    no_pii(x.host.audit.as_deref().unwrap_or_default().as_bytes(), &["Jane", "Canton", "47.6"]);

    let refused = |x: &Exchange1| x.seen.reply.as_ref().map(|r| (r.status, r.header("x-spapi-guard").map(str::to_string)));
    // A class outside the grant, a forged token, a bad request, GET, and a caller without a grant.
    assert_eq!(refused(&reveal(&guard, LABEL_PRINTER, "POST", &json!({"tokens": [email]}).to_string())), Some((403, Some("detokenize_not_allowed".into()))));
    assert_eq!(refused(&reveal(&guard, LABEL_PRINTER, "POST", &json!({"tokens": [name.replace(".name.", ".address.")]}).to_string())), Some((400, Some("invalid_token".into()))));
    assert_eq!(refused(&reveal(&guard, LABEL_PRINTER, "POST", r#"{"tokens": "x"}"#)), Some((400, Some("invalid_reveal_request".into()))));
    assert_eq!(refused(&reveal(&guard, LABEL_PRINTER, "POST", r#"{"tokens": [], "more": 1}"#)), Some((400, Some("invalid_reveal_request".into()))));
    assert_eq!(refused(&reveal(&guard, ORDER_SYNC, "POST", &json!({"tokens": [name]}).to_string())), Some((403, Some("operation_not_allowed".into()))));
    assert_eq!(refused(&reveal(&guard, "spiffe://spapi-guard.demo/intruder", "POST", &json!({"tokens": [name]}).to_string())), Some((403, Some("unknown_caller".into()))));
    let mut get = Exchange1::new(Rc::clone(&guard), "GET", "/spapi-guard/v1/reveal", Some(LABEL_PRINTER));
    get.request(&[], false);
    assert_eq!(refused(&get), Some((400, Some("invalid_reveal_request".into()))));
}

#[test]
fn revealed_values_count_toward_the_lockout() {
    use spapi_guard::pii::PiiClass;
    let guard = guard_with(reveal_policy());
    let tokens: Vec<String> = (0..15).map(|i| seal(&guard, PiiClass::Name, &format!("buyer {i}"))).collect();
    let body = json!({"tokens": tokens}).to_string();
    let mut host_locks = None;
    for round in 0..2 {
        let mut x = Exchange1::new(Rc::clone(&guard), "POST", "/spapi-guard/v1/reveal", Some(LABEL_PRINTER));
        if let Some(locks) = host_locks.take() {
            x.host.locks = locks;
        }
        x.request(&[body.as_bytes()], false);
        assert_eq!(x.seen.reply.as_ref().map(|r| r.status), Some(200), "round {round}");
        let _ = x.log(Some(200));
        host_locks = Some(std::mem::take(&mut x.host.locks));
    }
    // 30 values in the window, over the role's 20: the next request finds the caller locked.
    let mut x = Exchange1::new(Rc::clone(&guard), "POST", "/spapi-guard/v1/reveal", Some(LABEL_PRINTER));
    x.host.locks = host_locks.expect("state");
    x.request(&[body.as_bytes()], false);
    assert_eq!(x.seen.reply.as_ref().and_then(|r| r.header("x-spapi-guard").map(str::to_string)), Some("locked_out".into()));
}

// Approved third-party upstreams: plaintext only toward a named upstream, through its cluster.

const SHIPMENTS: &str = "/upstreams/carrier/v1/shipments";

/// The reveal policy with two upstreams: a carrier whose responses are protected by its own
/// operations, and a mailer whose responses pass. label-printer may send addresses and names to
/// the carrier; order-sync may call the carrier (named explicitly: its `*` does not reach a third
/// party) but reveal nothing there.
fn upstream_policy() -> Value {
    let mut p = reveal_policy();
    p["upstreams"] = json!({
        "carrier": {
            "routePrefix": "/upstreams/carrier/",
            "address": {"host": "api.carrier.example", "port": 443},
            "tls": {"caFile": "/etc/spapi-guard/carrier-ca.pem"},
            "operations": [
                {"id": "createShipment", "method": "POST", "pathTemplate": "/v1/shipments",
                 "customerObjects": [{"jsonpath": "$.label.shipTo", "class": "address"}]},
                {"id": "getTracking", "method": "GET", "pathTemplate": "/v1/tracking/{trackingId}"}
            ]
        },
        "mailer": {
            "routePrefix": "/upstreams/mailer/",
            "address": {"host": "api.mailer.example", "port": 443},
            "tls": {"caFile": "/etc/spapi-guard/mailer-ca.pem"},
            "responses": "pass",
            "operations": [{"id": "send", "method": "POST", "pathTemplate": "/v3/mail/send"}]
        }
    });
    p["roles"]["label-printer"]["operations"].as_array_mut().expect("list").push(json!("carrier.*"));
    p["roles"]["label-printer"]["reveal"].as_array_mut().expect("list").push(json!({"classes": ["address", "name"], "upstreams": ["carrier"]}));
    p["roles"]["order-sync"]["operations"] = json!(["*", "carrier.*", "mailer.send"]);
    p
}

fn to_upstream(guard: &Rc<Guard>, caller: &str, method: &str, path: &str, cluster: Option<&str>) -> Exchange1 {
    let mut x = Exchange1::new(Rc::clone(guard), method, path, Some(caller));
    match cluster {
        Some(c) => x.host.set_property("xds.cluster_name", c.as_bytes()),
        None => x.host.remove_property("xds.cluster_name"),
    }
    x
}

fn refusal(x: &Exchange1) -> Option<(u32, Option<String>)> {
    x.seen.reply.as_ref().map(|r| (r.status, r.header("x-spapi-guard").map(str::to_string)))
}

#[test]
fn a_named_upstream_gets_plaintext_through_its_own_cluster_only() {
    use spapi_guard::pii::PiiClass;
    let guard = guard_with(upstream_policy());
    let (name, city) = (seal(&guard, PiiClass::Name, "Jane Doe"), seal(&guard, PiiClass::Address, "Canton"));
    let body = format!(r#"{{"shipTo":{{"name":"{name}","city":"{city}"}},"service":"ground"}}"#);
    let want = r#"{"shipTo":{"name":"Jane Doe","city":"Canton"},"service":"ground"}"#;
    for trailers in [false, true] {
        let mut x = to_upstream(&guard, LABEL_PRINTER, "POST", SHIPMENTS, Some("upstream_carrier"));
        x.request(&[&body.as_bytes()[..7], &body.as_bytes()[7..]], trailers);
        assert!(x.seen.forwarded, "{:?}", x.seen.reply);
        assert_eq!(String::from_utf8_lossy(&x.host.request_body), want);
        x.respond(JSON_HEADERS, &[br#"{"shipmentId":"S1"}"#], false);
        let event = x.log(Some(200));
        assert_eq!((event["operation"].as_str(), event["upstream"].as_str(), event["api"].as_str()), (Some("carrier.createShipment"), Some("carrier"), Some("carrier")));
        assert_eq!(event["path"], SHIPMENTS);
        assert_eq!((event["pii"]["name"]["revealed"].as_u64(), event["pii"]["address"]["revealed"].as_u64()), (Some(1), Some(1)));
        no_pii(x.host.log_text().as_bytes(), &["Jane", "Canton"]);
        no_pii(x.host.audit.as_deref().unwrap_or_default().as_bytes(), &["Jane", "Canton"]);
    }
    // Envoy would send it elsewhere — another virtual host's catch-all (a Host header of another
    // name), a percent-encoded prefix Envoy's route did not match, no route at all: refused,
    // nothing forwarded, nothing opened.
    for (path, cluster) in
        [(SHIPMENTS, Some("spapi")), (SHIPMENTS, Some("spapi-eu")), (SHIPMENTS, None), ("/upstreams/%63arrier/v1/shipments", Some("spapi")), (SHIPMENTS, Some("upstream_mailer"))]
    {
        let mut x = to_upstream(&guard, LABEL_PRINTER, "POST", path, cluster);
        x.request(&[body.as_bytes()], false);
        assert_eq!(refusal(&x), Some((403, Some("destination_mismatch".into()))), "{path} {cluster:?}");
        assert!(!x.seen.forwarded && !x.host.request_body_set);
        let event = x.log(Some(403));
        assert!(event["pii"].get("name").is_none(), "{event}");
    }
    // The percent-encoded prefix, where Envoy's route did decode it, is the carrier's operation.
    let mut x = to_upstream(&guard, LABEL_PRINTER, "POST", "/upstreams/%63arrier/v1/shipments", Some("upstream_carrier"));
    x.request(&[body.as_bytes()], false);
    assert!(x.seen.forwarded && String::from_utf8_lossy(&x.host.request_body) == want);
}

#[test]
fn sp_api_requests_never_reach_an_upstreams_cluster() {
    use spapi_guard::pii::PiiClass;
    let guard = guard_with(upstream_policy());
    let name = seal(&guard, PiiClass::Name, "Jane Doe");
    let body = format!(r#"{{"shipTo":{{"name":"{name}"}}}}"#);
    // With a reveal grant toward getRates: only an SP-API cluster.
    for cluster in [Some("upstream_carrier"), Some("internal-api"), None] {
        let mut x = to_upstream(&guard, LABEL_PRINTER, "POST", RATES_PATH, cluster);
        x.request(&[body.as_bytes()], false);
        assert_eq!(refusal(&x), Some((403, Some("destination_mismatch".into()))), "{cluster:?}");
    }
    // Without one: anywhere but an upstream's cluster (no plaintext can be in it).
    let mut x = to_upstream(&guard, ORDER_SYNC, "GET", ADDRESS_PATH, Some("upstream_carrier"));
    x.request(&[], false);
    assert_eq!(refusal(&x), Some((403, Some("destination_mismatch".into()))));
    let mut x = to_upstream(&guard, ORDER_SYNC, "GET", ADDRESS_PATH, None);
    x.request(&[], false);
    assert!(x.seen.forwarded, "no route: Envoy answers itself");
    // The production clusters are SP-API clusters.
    let mut x = to_upstream(&guard, LABEL_PRINTER, "POST", RATES_PATH, Some("spapi-sandbox-fe"));
    x.request(&[body.as_bytes()], false);
    assert!(x.seen.forwarded, "{:?}", x.seen.reply);
}

#[test]
fn upstream_calls_need_a_role_naming_the_upstream_and_a_grant_to_carry_tokens() {
    use spapi_guard::pii::PiiClass;
    let guard = guard_with(upstream_policy());
    let name = seal(&guard, PiiClass::Name, "Jane Doe");
    let body = format!(r#"{{"shipTo":{{"name":"{name}"}}}}"#);
    // analytics has orders-v0.* only; its roles name no upstream.
    let mut x = to_upstream(&guard, "spiffe://spapi-guard.demo/analytics", "POST", SHIPMENTS, Some("upstream_carrier"));
    x.request(&[body.as_bytes()], false);
    assert_eq!(refusal(&x), Some((403, Some("operation_not_allowed".into()))));
    // order-sync may call the carrier but reveal nothing there: its tokens stop the request.
    let mut x = to_upstream(&guard, ORDER_SYNC, "POST", SHIPMENTS, Some("upstream_carrier"));
    x.request(&[body.as_bytes()], true);
    assert_eq!(refusal(&x), Some((403, Some("detokenize_not_allowed".into()))));
    assert!(!x.seen.forwarded && !x.host.request_body_set);
    // Plain data passes; a path under the prefix that is no operation of the carrier does not.
    let mut x = to_upstream(&guard, ORDER_SYNC, "POST", SHIPMENTS, Some("upstream_carrier"));
    x.request(&[br#"{"shipTo":{"name":"Acme Returns"}}"#], false);
    assert!(x.seen.forwarded && !x.host.request_body_set);
    let mut x = to_upstream(&guard, ORDER_SYNC, "GET", "/upstreams/carrier/v1/admin", Some("upstream_carrier"));
    x.request(&[], false);
    assert_eq!(refusal(&x), Some((403, Some("unknown_operation".into()))));
    // A `*` role alone never reaches a third party.
    let mut p = upstream_policy();
    p["roles"]["order-sync"]["operations"] = json!(["*"]);
    let star = guard_with(p);
    let mut x = to_upstream(&star, ORDER_SYNC, "GET", "/upstreams/carrier/v1/tracking/1Z", Some("upstream_carrier"));
    x.request(&[], false);
    assert_eq!(refusal(&x), Some((403, Some("operation_not_allowed".into()))));
}

#[test]
fn upstream_responses_are_protected_by_their_catalog_or_passed_as_configured() {
    let guard = guard_with(upstream_policy());
    let response = br#"{"shipmentId":"S1","label":{"shipTo":{"name":"Jane Doe","line1":"1 Cross St","phone":"+1 734 555 0100"}}}"#;
    let mut x = to_upstream(&guard, ORDER_SYNC, "POST", SHIPMENTS, Some("upstream_carrier"));
    x.request(&[b"{}"], false);
    x.respond(JSON_HEADERS, &[&response[..20], &response[20..]], false);
    assert!(x.seen.headers_released);
    no_pii(&x.seen.delivered, &["Jane", "Cross St", "555"]);
    let delivered: Value = serde_json::from_slice(&x.seen.delivered).expect("json");
    assert_eq!(delivered["shipmentId"], "S1");
    assert!(delivered["label"]["shipTo"]["name"].as_str().is_some_and(|t| t.starts_with("spgt1.")), "{delivered}");
    let event = x.log(Some(200));
    assert_eq!(event["outcome"], "protected");
    // Not JSON: fails closed like an SP-API response.
    let mut x = to_upstream(&guard, ORDER_SYNC, "POST", SHIPMENTS, Some("upstream_carrier"));
    x.request(&[b"{}"], false);
    x.respond(&[(":status", "200"), ("content-type", "text/plain")], &[b"Jane Doe"], false);
    assert_eq!(refusal(&x).map(|r| r.0), Some(502));
    // The mailer's responses pass unread, even with the drift scan of PII-free operations on.
    let mut p = upstream_policy();
    p["drift"] = json!({"scanPiiFreeOperations": true});
    let guard = guard_with(p);
    let mut x = to_upstream(&guard, ORDER_SYNC, "POST", "/upstreams/mailer/v3/mail/send", Some("upstream_mailer"));
    x.request(&[br#"{"to":"ops@seller.example"}"#], false);
    assert!(x.seen.forwarded);
    x.respond(JSON_HEADERS, &[br#"{"echo":"jane@example.com"}"#], false);
    assert_eq!(x.seen.delivered, br#"{"echo":"jane@example.com"}"#.to_vec());
    assert_eq!(x.log(Some(200))["outcome"], "passed_through");
}

#[test]
fn upstream_policies_are_refused_naming_the_field() {
    let env = |name: &str| name.starts_with("SPAPI_GUARD_KEY_").then(|| KEY_HEX.to_string());
    let refused = |p: Value| Guard::load(p.to_string().as_bytes(), &env).err().expect("refused");
    let mut p = upstream_policy();
    p["upstreams"]["carrier"]["routePrefix"] = json!("/orders/");
    let e = refused(p);
    assert!(e.field == "upstreams.carrier.routePrefix" && e.message.contains("leads to the SP-API"), "{e}");
    let mut p = upstream_policy();
    p["upstreams"]["carrier"]["routePrefix"] = json!("/catalog/upstreams/");
    let e = refused(p);
    assert!(e.field == "upstreams.carrier.routePrefix" && e.message.contains("passThroughPaths"), "{e}");
    let mut p = upstream_policy();
    p["roles"]["label-printer"]["reveal"][1]["upstreams"] = json!(["courier"]);
    let e = refused(p);
    assert_eq!(e.field, "roles.label-printer.reveal[1].upstreams[0]", "{e}");
    let mut p = upstream_policy();
    p["upstreams"]["orders-v0"] = p["upstreams"]["mailer"].clone();
    p["upstreams"]["orders-v0"]["routePrefix"] = json!("/upstreams/o/");
    let e = refused(p);
    assert!(e.field == "upstreams.orders-v0" && e.message.contains("another name"), "{e}");
    let mut p = upstream_policy();
    p["upstreams"]["carrier"]["tls"] = json!({"serverName": "api.carrier.example"});
    let e = refused(p);
    assert_eq!(e.field, "upstreams.carrier.tls", "{e}");
    let mut p = upstream_policy();
    p["upstreams"]["carrier"]["tls"]["verify"] = json!(false);
    let e = refused(p);
    assert_eq!(e.field, "upstreams.carrier.tls.verify", "{e}");
    let mut p = upstream_policy();
    p["upstreams"]["carrier"]["operations"][0]["pathTemplate"] = json!("v1/shipments");
    let e = refused(p);
    assert_eq!(e.field, "upstreams.carrier.operations[0].pathTemplate", "{e}");
}

#[test]
fn a_detokenized_path_stays_one_canonical_path_of_the_same_operation() {
    // A plaintext revealed into a path segment that is a dot segment, empty, or holds a slash or
    // a backslash (percent-encoded, which servers that decode before routing resolve as one)
    // would reach another operation than the one decided, granted and audited: refused, nothing
    // forwarded. Envoy normalizes the path before the filter, never after its rewrite.
    use spapi_guard::pii::PiiClass;
    let guard = guard_with(upstream_policy());
    for plain in ["..", ".", "", "../../admin", "a/b", "a\\b", ".. "] {
        let token = seal(&guard, PiiClass::Address, plain);
        let mut x = to_upstream(&guard, LABEL_PRINTER, "GET", &format!("/upstreams/carrier/v1/tracking/{token}"), Some("upstream_carrier"));
        x.request(&[], false);
        assert_eq!(refusal(&x), Some((400, Some("invalid_path".into()))), "{plain:?}");
        assert!(!x.seen.forwarded, "{plain:?}");
        let event = x.log(Some(400));
        assert!(event["pii"].get("address").is_none(), "{event}");
    }
    // In the query a plaintext may hold any character: percent-encoded, the path stays the same.
    let token = seal(&guard, PiiClass::Address, "../../a/b?c#d");
    let mut x = to_upstream(&guard, LABEL_PRINTER, "GET", &format!("/upstreams/carrier/v1/tracking/1Z?ref={token}"), Some("upstream_carrier"));
    x.request(&[], false);
    assert!(x.seen.forwarded, "{:?}", x.seen.reply);
    assert_eq!(x.host.request_header_text(":path").as_deref(), Some("/upstreams/carrier/v1/tracking/1Z?ref=..%2F..%2Fa%2Fb%3Fc%23d"));
    // A dot inside a segment is a character like any other.
    let token = seal(&guard, PiiClass::Address, "1Z.999");
    let mut x = to_upstream(&guard, LABEL_PRINTER, "GET", &format!("/upstreams/carrier/v1/tracking/{token}"), Some("upstream_carrier"));
    x.request(&[], false);
    assert_eq!(x.host.request_header_text(":path").as_deref(), Some("/upstreams/carrier/v1/tracking/1Z.999"));
}

#[test]
fn dry_run_never_reveals_to_a_caller_it_would_deny() {
    // Dry-run relaxes access decisions so they can be tried out; it must not turn a denied
    // caller's tokens into data. Toward an operation it already does not (tokens are forwarded
    // as they are); the reveal endpoint answers with plaintext itself, so it refuses.
    use spapi_guard::pii::PiiClass;
    let mut policy = upstream_policy();
    policy["access"]["dryRun"] = json!(true);
    let guard = guard_with(policy);
    let name = seal(&guard, PiiClass::Name, "Jane Doe");
    let body = json!({"tokens": [name]}).to_string();
    // From an address outside the allow list: would be denied (ip_not_allowed).
    let mut x = Exchange1::new(Rc::clone(&guard), "POST", "/spapi-guard/v1/reveal", Some(LABEL_PRINTER));
    x.host.set_property("source.address", b"10.9.9.9:40000");
    x.request(&[body.as_bytes()], false);
    let reply = x.seen.reply.clone().expect("answered by the filter");
    assert_eq!((reply.status, reply.header("x-spapi-guard")), (403, Some("ip_not_allowed")));
    no_pii(&reply.body, &["Jane"]);
    // The same caller toward the carrier: forwarded in dry-run, with the token, never the name.
    let shipment = format!(r#"{{"shipTo":{{"name":"{name}"}}}}"#);
    let mut x = to_upstream(&guard, LABEL_PRINTER, "POST", SHIPMENTS, Some("upstream_carrier"));
    x.host.set_property("source.address", b"10.9.9.9:40000");
    x.request(&[shipment.as_bytes()], false);
    no_pii(&x.host.request_body, &["Jane"]);
    // Allowed, it reads the value.
    let mut x = Exchange1::new(Rc::clone(&guard), "POST", "/spapi-guard/v1/reveal", Some(LABEL_PRINTER));
    x.request(&[body.as_bytes()], false);
    assert_eq!(x.seen.reply.as_ref().map(|r| (r.status, r.body.clone())), Some((200, br#"{"values":["Jane Doe"]}"#.to_vec())));
}

#[test]
fn a_path_outside_the_catalog_is_never_detokenized() {
    // passThroughPaths lead to SP-API operations the catalog does not know: no grant names them.
    // The reveal endpoint's grant (label-printer's `spapi-guard.reveal`) is for the endpoint alone,
    // never a licence to send plaintext to any pass-through path.
    use spapi_guard::pii::PiiClass;
    let guard = guard_with(reveal_policy());
    let name = seal(&guard, PiiClass::Name, "Jane Doe");
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", &format!("/catalog/2022-04-01/items?keywords={name}"), Some(LABEL_PRINTER));
    x.request(&[], false);
    assert_eq!(refusal(&x), Some((403, Some("detokenize_not_allowed".into()))));
    assert!(!x.seen.forwarded);
    no_pii(x.host.request_header_text(":path").unwrap_or_default().as_bytes(), &["Jane"]);
    // Its tokens in a body stream on as they are: the SP-API gets tokens, never the name.
    let body = format!(r#"{{"note":"{name}"}}"#);
    let mut x = Exchange1::new(Rc::clone(&guard), "POST", "/catalog/2022-04-01/items", Some(LABEL_PRINTER));
    x.request(&[body.as_bytes()], false);
    no_pii(&x.host.request_body, &["Jane"]);
}

// ---------------------------------------------------------------------------------------------
// Report documents (src/documents.rs, src/download.rs)

const DOC_ID: &str = "amzn1.spdoc.1.4.na.doc-1";
const DOC_URL: &str = "https://bucket.s3.amazonaws.com/doc-1?X-Amz-Date=20270115T080000Z&X-Amz-Expires=300&X-Amz-Signature=abc";
const FLAT_TYPE: &str = "GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING";

fn documents_policy() -> Value {
    let mut policy = default_policy();
    // getReport(s) pass through (they carry no PII); the filter learns report types from them.
    policy["access"]["passThroughPaths"].as_array_mut().expect("list").push(json!("/reports/"));
    policy["roles"]["order-sync"]["documents"] = json!({"reportTypes": ["*"]});
    policy["roles"]["label-printer"]["documents"] = json!({"reportTypes": ["GET_FLAT_FILE_*"]});
    policy
}

/// getReport (the report type is learned into shared data), then getReportDocument: the pointer's
/// path on the proxy, and the shared data for the next exchange.
fn document_pointer(guard: &Rc<Guard>, caller: &str, now: u64, gzip: bool) -> (Value, String, std::cell::RefCell<std::collections::HashMap<String, Vec<u8>>>) {
    let mut report = Exchange1::new(Rc::clone(guard), "GET", "/reports/2021-06-30/reports/r1", Some(caller));
    report.host.now.set(now);
    report.request(&[], false);
    let listing = json!({"reportId": "r1", "reportType": FLAT_TYPE, "processingStatus": "DONE", "reportDocumentId": DOC_ID}).to_string();
    let (a, b) = listing.as_bytes().split_at(10);
    report.respond(JSON_HEADERS, &[a, b], false);
    assert_eq!(report.seen.delivered, listing.as_bytes(), "getReport streams unchanged");
    let mut x = Exchange1::new(Rc::clone(guard), "GET", &format!("/reports/2021-06-30/documents/{DOC_ID}"), Some(caller));
    x.host.now.set(now);
    x.host.shared = report.host.shared;
    x.host.add_request_header(":authority", "proxy.internal:10000");
    x.host.add_request_header(":scheme", "https");
    x.request(&[], false);
    let mut body = json!({"reportDocumentId": DOC_ID, "url": DOC_URL});
    if gzip {
        body["compressionAlgorithm"] = json!("GZIP");
    }
    let body = body.to_string();
    x.respond(JSON_HEADERS, &[body.as_bytes()], false);
    let pointer: Value = serde_json::from_slice(&x.seen.delivered).expect("json");
    let url = pointer["url"].as_str().expect("url").to_string();
    let path = url.strip_prefix("https://proxy.internal:10000").expect("the app's scheme and authority").to_string();
    x.log(Some(200));
    (pointer, path, x.host.shared)
}

fn download(guard: &Rc<Guard>, caller: &str, path: &str, now: u64) -> Exchange1 {
    let mut x = Exchange1::new(Rc::clone(guard), "GET", path, Some(caller));
    x.host.now.set(now);
    x.host.add_request_header("authorization", "Bearer app-token");
    x.host.add_request_header("x-amz-access-token", "Atza|lwa");
    x.host.add_request_header("range", "bytes=0-10");
    x.request(&[], false);
    x
}

const NOW_2027: u64 = 1_800_000_000_000; // 2027-01-15T08:00:00Z

#[test]
fn get_report_document_gets_a_sealed_pointer_that_reroutes_its_download() {
    let guard = guard_with(documents_policy());
    let (pointer, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, true);
    assert!(pointer.get("compressionAlgorithm").is_none(), "{pointer}");
    assert_eq!(pointer["reportDocumentId"], json!(DOC_ID));
    assert!(path.starts_with("/spapi-guard/v1/documents/spgr1.demo-1.") && !path.contains("s3.amazonaws") && !path.contains("Signature"), "{path}");
    let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
    assert!(x.seen.forwarded && x.seen.reply.is_none());
    assert_eq!(x.host.request_header_text(":authority").as_deref(), Some("bucket.s3.amazonaws.com"));
    assert_eq!(x.host.request_header_text(":path").as_deref(), Some("/doc-1?X-Amz-Date=20270115T080000Z&X-Amz-Expires=300&X-Amz-Signature=abc"));
    assert_eq!(x.host.request_header_text("x-spapi-guard-document-route").as_deref(), Some("1"));
    for h in ["authorization", "x-amz-access-token", "range"] {
        assert!(x.host.request_header_text(h).is_none(), "{h} is never sent to the document host");
    }
    let event = x.log(Some(200));
    assert_eq!(event["path"], json!("/spapi-guard/v1/documents/{reference}"));
    assert_eq!(event["document"]["report_type"], json!(FLAT_TYPE), "learned from getReport");
    assert!(!x.host.log_text().contains("spgr1.") && !event.to_string().contains("spgr1."));
}

#[test]
fn a_client_cannot_choose_the_document_route() {
    let guard = guard_with(documents_policy());
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", "/catalog/2022-04-01/items/B0", Some(ORDER_SYNC));
    x.host.add_request_header("x-spapi-guard-document-route", "1");
    x.request(&[], false);
    assert!(x.seen.forwarded);
    assert!(x.host.request_header_text("x-spapi-guard-document-route").is_none(), "removed before anything else");
}

#[test]
fn document_references_are_refused_to_others_when_expired_or_tampered() {
    let guard = guard_with(documents_policy());
    let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, false);
    let refused = |caller: &str, path: &str, now: u64| -> (u32, String) {
        let mut x = download(&guard, caller, path, now);
        assert!(!x.seen.forwarded);
        let reply = x.seen.reply.clone().expect("refused locally");
        let event = x.log(Some(i64::from(reply.status)));
        assert_eq!(event["decision"], json!("deny"));
        (reply.status, reply.header("x-spapi-guard").unwrap_or_default().to_string())
    };
    assert_eq!(refused(LABEL_PRINTER, &path, NOW_2027), (403, "document_caller_mismatch".to_string()));
    // The URL says X-Amz-Date 2027-01-15T08:00:00Z + 300 s.
    assert_eq!(refused(ORDER_SYNC, &path, NOW_2027 + 301_000), (410, "document_reference_expired".to_string()));
    let mut tampered = path.clone().into_bytes();
    let at = tampered.len() - 3;
    tampered[at] ^= 1;
    assert_eq!(refused(ORDER_SYNC, std::str::from_utf8(&tampered).expect("ascii"), NOW_2027), (400, "invalid_document_reference".to_string()));
    let analytics = "spiffe://spapi-guard.demo/analytics";
    assert_eq!(refused(analytics, &path, NOW_2027).0, 403, "no documents grant");
    let mut post = Exchange1::new(Rc::clone(&guard), "POST", &path, Some(ORDER_SYNC));
    post.request(&[b"{}"], false);
    assert!(!post.seen.forwarded && post.seen.reply.as_ref().is_some_and(|r| r.status == 403));
}

/// The identity skeleton of the rewriter and the real one agree on this: a document in any chunking
/// comes out as one stream, headers released with the first bytes, no content-length.
#[test]
fn documents_stream_in_chunks_of_every_size() {
    let guard = guard_with(documents_policy());
    let plain = b"order-id\tbuyer-email\tsku\n123-1\tjane@example.com\tSKU-1\n123-2\tjoe@example.com\tSKU-2\n".to_vec();
    for (gzip, doc) in [(false, plain.clone()), (true, gzip_bytes(&plain))] {
        stream_in_every_chunking(&guard, gzip, &doc, &plain);
    }
}

fn stream_in_every_chunking(guard: &Rc<Guard>, gzip: bool, doc: &[u8], plain: &[u8]) {
    let guard = Rc::clone(guard);
    let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, gzip);
    let headers: &[(&str, &str)] = &[(":status", "200"), ("content-type", "text/plain"), ("content-length", "51"), ("etag", "\"x\"")];
    let mut reference: Option<Vec<u8>> = None;
    for size in 1..=doc.len() {
        let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
        let chunks: Vec<&[u8]> = doc.chunks(size).collect();
        x.respond(headers, &chunks, false);
        assert!(x.seen.reply.is_none() && x.seen.headers_released && !x.host.reset, "size {size}");
        assert!(x.host.response_header_text("content-length").is_none() && x.host.response_header_text("etag").is_none());
        assert_eq!(x.host.response_header_text("cache-control").as_deref(), Some("no-store"));
        match &reference {
            None => reference = Some(x.seen.delivered.clone()),
            Some(r) => assert_eq!(&x.seen.delivered, r, "size {size}: the same stream in any chunking"),
        }
        no_pii(&x.seen.delivered, &["jane@example.com", "joe@example.com"]);
        let event = x.log(Some(200));
        assert_eq!(event["document"]["result"], json!("complete"), "size {size}");
        assert_eq!(event["outcome"], json!("protected"));
        assert_eq!(event["document"]["rows"], json!(2));
        assert_eq!(event["pii"]["email"]["tokenized"], json!(2), "{event}");
    }
    // Every other byte unchanged: the tokens open to the originals in place.
    let out = String::from_utf8(reference.unwrap_or_default()).expect("utf-8");
    let restored: Vec<String> =
        out.split('\n').map(|line| line.split('\t').map(|f| if f.starts_with("spgt1.") { open(&guard, f) } else { f.to_string() }).collect::<Vec<_>>().join("\t")).collect();
    assert_eq!(restored.join("\n").as_bytes(), plain);
}

fn open(guard: &Guard, token: &str) -> String {
    String::from_utf8(guard.tokens.open(token, NOW_2027).expect("opens").plaintext).expect("utf-8")
}

/// A gzip member of `data` (miniz_oxide's deflate, the CRC-32 by hand).
fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(data, 6));
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The document host's own response headers are no part of the document the proxy checked: user
/// metadata, a file name, cookies, a redirect target, announced trailers could carry a buyer's
/// data or the pre-signed URL. Only what describes the rewritten stream reaches the client.
#[test]
fn a_document_hosts_headers_do_not_reach_the_client() {
    let doc: &[u8] = b"order-id\tbuyer-email\n123-1\tjane@example.com\n";
    let hostile: &[(&str, &str)] = &[
        (":status", "200"),
        ("content-type", "text/tab-separated-values"),
        ("content-length", "46"),
        ("date", "Fri, 15 Jan 2027 08:00:00 GMT"),
        ("last-modified", "Fri, 15 Jan 2027 07:00:00 GMT"),
        ("x-amz-request-id", "4442587FB7D0A2F9"),
        ("x-amz-meta-buyer", "jane@example.com"),
        ("X-Amz-Meta-Ship-To", "Jane Doe"),
        ("content-disposition", "attachment; filename=\"jane@example.com.tsv\""),
        ("set-cookie", "session=abc"),
        ("location", "https://bucket.s3.amazonaws.com/doc-1?X-Amz-Signature=abc"),
        ("trailer", "x-buyer"),
        ("x-amz-version-id", "v1"),
    ];
    for delivers_binary in [false, true] {
        let mut policy = documents_policy();
        if delivers_binary {
            policy["roles"]["order-sync"]["documents"]["binaryDocuments"] = json!("deliver");
        }
        let guard = guard_with(policy);
        let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, false);
        for body in [doc, b"%PDF-1.7 jane@example.com"] {
            let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
            x.respond(hostile, &[body], false);
            if x.seen.reply.is_some() {
                assert!(!delivers_binary && body.starts_with(b"%PDF"), "only a PDF for a role that refuses them");
                continue;
            }
            let names: Vec<&str> = x.host.response_headers.iter().map(|(k, _)| k.as_str()).collect();
            for name in &names {
                assert!(
                    [":status", "content-type", "date", "last-modified", "x-amz-request-id", "cache-control", "content-length"].contains(name),
                    "{name} from the document host reached the client ({names:?})"
                );
            }
            assert!(!names.contains(&"content-length") || body.starts_with(b"%PDF"), "a rewritten document has no length: {names:?}");
            assert_eq!(x.host.response_header_text("content-type").as_deref(), Some("text/tab-separated-values"));
        }
    }
}

#[test]
fn a_document_host_error_is_a_502_with_a_code_never_its_body() {
    let guard = guard_with(documents_policy());
    let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, false);
    let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
    x.respond(&[(":status", "403"), ("content-type", "application/xml")], &[b"<Error><Key>doc-1</Key></Error>"], false);
    let reply = x.seen.reply.clone().expect("502");
    assert_eq!((reply.status, reply.header("x-spapi-guard")), (502, Some("document_host_error")));
    assert!(x.seen.delivered.is_empty() && !String::from_utf8_lossy(&reply.body).contains("<Key>"));
    let event = x.log(Some(502));
    assert_eq!((event["outcome"].as_str(), event["document"]["result"].as_str()), (Some("fail_closed"), Some("refused")));
}

#[test]
fn an_uncompressed_document_without_a_length_is_refused_a_gzip_one_checks_itself() {
    let guard = guard_with(documents_policy());
    let doc = b"order-id\tbuyer-email\n1\ta@example.com\n".to_vec();
    // No content-length, not chunked: only the connection's close would end it, and a cut after a
    // complete record would look whole.
    let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, false);
    let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
    x.respond(&[(":status", "200"), ("content-type", "text/plain")], &[&doc], false);
    let reply = x.seen.reply.clone().expect("refused");
    assert_eq!((reply.status, reply.header("x-spapi-guard")), (502, Some("document_length_unknown")));
    assert!(x.seen.delivered.is_empty());
    // gzip carries its own length and CRC-32: accepted without a header length.
    let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, true);
    let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
    x.respond(&[(":status", "200"), ("content-type", "text/plain")], &[&gzip_bytes(&doc)], false);
    assert!(x.seen.reply.is_none() && !x.host.reset);
    assert_eq!(x.log(Some(200))["document"]["result"], json!("complete"));
}

#[test]
fn a_document_failing_after_bytes_went_is_reset_and_audited() {
    let guard = guard_with(documents_policy());
    let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, true);
    // compressionAlgorithm GZIP: a gzip stream whose first bytes are fine and the rest is not.
    let mut gz = Vec::new();
    {
        // A stored (uncompressed) deflate block: header row and rows in clear inside gzip framing.
        let rows = "order-id\tsku\n".to_string() + &"123-1\tSKU-1\n".repeat(400);
        gz.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        let data = rows.as_bytes();
        gz.push(0); // BFINAL=0, BTYPE=00 (stored)
        gz.extend_from_slice(&(data.len() as u16).to_le_bytes());
        gz.extend_from_slice(&(!(data.len() as u16)).to_le_bytes());
        gz.extend_from_slice(data);
        gz.extend_from_slice(&[0xff; 64]); // then garbage: an invalid block type
    }
    let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
    let (a, b) = gz.split_at(gz.len() - 64);
    x.respond(&[(":status", "200"), ("content-type", "text/plain")], &[a, b], false);
    assert!(x.host.reset, "reset, not a clean end");
    assert!(!x.seen.delivered.is_empty(), "bytes went before the failure");
    let event = x.log(Some(200));
    assert_eq!(event["outcome"], json!("reset"));
    assert_eq!(event["document"]["result"], json!("reset"));
    assert!(x.host.security_events().iter().any(|e| e["event"] == json!("fail_closed") && e["detail"] == json!("reset")));
}

#[test]
fn pdf_and_zip_documents_are_delivered_as_they_are_or_refused_per_role() {
    let mut policy = documents_policy();
    policy["roles"]["order-sync"]["documents"] = json!({"reportTypes": ["*"], "binaryDocuments": "deliver"});
    let guard = guard_with(policy);
    let pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n".to_vec();
    let zip = gzip_bytes(b"PK\x03\x04 a zip of labels, gzip-compressed on the way");
    for (gzip, doc) in [(false, pdf.clone()), (true, zip)] {
        for size in [1, 3, doc.len()] {
            let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, gzip);
            let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
            let chunks: Vec<&[u8]> = doc.chunks(size).collect();
            x.respond(&[(":status", "200"), ("content-type", "application/pdf"), ("content-length", &doc.len().to_string())], &chunks, false);
            assert!(x.seen.reply.is_none() && !x.host.reset, "gzip {gzip} size {size}");
            assert_eq!(x.seen.delivered, doc, "gzip {gzip} size {size}: as received");
            assert_eq!(x.host.response_header_text("content-encoding").as_deref(), gzip.then_some("gzip"));
            let event = x.log(Some(200));
            assert_eq!((event["document"]["result"].as_str(), event["document"]["format"].as_str()), (Some("binary"), Some("binary")));
        }
    }
    // The default: refused, before any byte.
    let guard = guard_with(documents_policy());
    let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, false);
    let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
    x.respond(&[(":status", "200"), ("content-type", "application/pdf"), ("content-length", &pdf.len().to_string())], &[&pdf[..2], &pdf[2..]], false);
    let reply = x.seen.reply.clone().expect("refused");
    assert_eq!((reply.status, reply.header("x-spapi-guard")), (502, Some("not_tokenizable")));
    assert!(x.seen.delivered.is_empty());
}

#[test]
fn document_values_count_toward_the_pii_volume_lockout() {
    let mut policy = documents_policy();
    policy["roles"]["order-sync"]["maxPiiFieldsPerWindow"] = json!(3);
    let guard = guard_with(policy);
    let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, false);
    let doc = b"order-id\tbuyer-email\n1\ta@example.com\n2\tb@example.com\n3\tc@example.com\n4\td@example.com\n".to_vec();
    let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
    x.respond(&[(":status", "200"), ("content-type", "text/plain"), ("content-length", &doc.len().to_string())], &[&doc], false);
    let event = x.log(Some(200));
    assert_eq!(event["pii"]["email"]["tokenized"], json!(4));
    assert!(event["security_events"].as_array().is_some_and(|e| e.contains(&json!("lockout_started"))), "{event}");
}

#[test]
fn a_canary_record_in_a_document_raises_the_alarm_and_blocks_it_when_the_policy_says_so() {
    let canary_row = "111-0000001-7777777\tcanary.buyer@example.com\n";
    let doc = "order-id\tbuyer-email\n".to_string() + &"111-1\ta@example.com\n".repeat(50) + canary_row + "111-3\tc@example.com\n";
    for block in [false, true] {
        let mut policy = documents_policy();
        policy["canaries"] = json!({"block": block, "records": [{"id": "canary-order", "value": "111-0000001-7777777"}]});
        let guard = guard_with(policy);
        let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, false);
        let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
        // The canary arrives in the second chunk: the first one has gone out already.
        let at = doc.find(canary_row).expect("row") + 5;
        x.respond(&[(":status", "200"), ("content-type", "text/plain"), ("content-length", &doc.len().to_string())], &[&doc.as_bytes()[..at], &doc.as_bytes()[at..]], false);
        let hits: Vec<Value> = x.host.security_events().into_iter().filter(|e| e["event"] == json!("canary_hit")).collect();
        assert_eq!(hits.len(), 1, "block {block}: {hits:?}");
        assert_eq!(hits[0]["detail"], json!("canary-order"));
        let delivered = String::from_utf8_lossy(&x.seen.delivered).into_owned();
        let event = x.log(Some(200));
        assert_eq!(event["canaries"], json!(["canary-order"]), "{event}");
        if block {
            assert!(x.host.reset, "blocked mid-stream: reset");
            assert!(!delivered.contains("7777777"), "the chunk holding the canary never goes out");
            assert_eq!((event["outcome"].as_str(), event["reason"].as_str()), (Some("reset"), Some("canary_blocked")), "{event}");
        } else {
            // Alert only: the document completes (its customer values tokenized as always).
            assert!(!x.host.reset && delivered.contains("111-0000001-7777777") && !delivered.contains("c@example.com"));
            assert_eq!(event["document"]["result"], json!("complete"));
        }
    }
}

#[test]
fn trailers_end_a_document_and_a_remainder_they_would_cut_resets_it() {
    let guard = guard_with(documents_policy());
    let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, false);
    let whole = b"order-id\tbuyer-email\n1\ta@example.com\n".to_vec();
    let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
    x.respond(&[(":status", "200"), ("content-type", "text/plain"), ("transfer-encoding", "chunked")], &[&whole], true);
    assert!(!x.host.reset && x.seen.reply.is_none());
    no_pii(&x.seen.delivered, &["a@example.com"]);
    assert_eq!(x.log(Some(200))["document"]["result"], json!("complete"));
    // The last row has no line end: the rewriter still holds it when the trailers come, and
    // trailers cannot carry body bytes: reset, never a document silently missing its last row.
    let cut = b"order-id\tbuyer-email\n1\ta@example.com\n2\tb@example.com".to_vec();
    let mut x = download(&guard, ORDER_SYNC, &path, NOW_2027);
    x.respond(&[(":status", "200"), ("content-type", "text/plain"), ("transfer-encoding", "chunked")], &[&cut], true);
    assert!(x.host.reset, "reset");
    no_pii(&x.seen.delivered, &["a@example.com", "b@example.com"]);
    let event = x.log(Some(200));
    assert_eq!((event["outcome"].as_str(), event["reason"].as_str()), (Some("reset"), Some("document_trailers")));
    // The values protected before the reset are counted (audit, PII-volume lockout), not
    // forgotten: the one that went, and the one the trailers cut (protected, never sent).
    assert_eq!(event["pii"]["email"]["tokenized"], json!(2), "{event}");
}

#[test]
fn case_percent_and_segment_variants_of_the_documents_path_are_refused() {
    let guard = guard_with(documents_policy());
    let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, false);
    let reference = path.rsplit('/').next().expect("reference").to_string();
    for (variant, status) in [
        (format!("/spapi-guard/v1/Documents/{reference}"), 403),
        (format!("/SPAPI-GUARD/v1/documents/{reference}"), 403),
        (format!("/spapi-guard/v1/documents/%73{}", &reference[1..]), 400),
        (format!("/spapi-guard/v1/documents/{reference}/x"), 400),
        (format!("/spapi-guard/v1/documents//{reference}"), 400),
        ("/spapi-guard/v1/documents/".to_string(), 400),
    ] {
        let x = download(&guard, ORDER_SYNC, &variant, NOW_2027);
        assert!(!x.seen.forwarded, "{variant}");
        assert_eq!(x.seen.reply.as_ref().map(|r| r.status), Some(status), "{variant}");
        assert!(x.host.request_header_text("x-spapi-guard-document-route").is_none());
    }
    // The query is no part of the reference.
    let x = download(&guard, ORDER_SYNC, &format!("{path}?x=1"), NOW_2027);
    assert!(x.seen.forwarded, "a query after the reference is ignored");
}

#[test]
fn a_grant_covers_only_its_report_types_and_unlearned_types_only_with_a_star() {
    let mut policy = documents_policy();
    policy["roles"]["order-sync"]["documents"] = json!({"reportTypes": ["SC_VAT_TAX_REPORT", "GET_FLAT_FILE_*"]});
    let guard = guard_with(policy);
    // Learned as GET_FLAT_FILE_…: covered by the wildcard.
    let (_, path, _) = document_pointer(&guard, ORDER_SYNC, NOW_2027, false);
    assert!(download(&guard, ORDER_SYNC, &path, NOW_2027).seen.forwarded);
    // The same document, its type never learned (no getReport first): only `*` covers it.
    let mut x = Exchange1::new(Rc::clone(&guard), "GET", &format!("/reports/2021-06-30/documents/{DOC_ID}"), Some(ORDER_SYNC));
    x.host.now.set(NOW_2027);
    x.host.add_request_header(":authority", "proxy.internal:10000");
    x.request(&[], false);
    x.respond(JSON_HEADERS, &[json!({"reportDocumentId": DOC_ID, "url": DOC_URL}).to_string().as_bytes()], false);
    let pointer: Value = serde_json::from_slice(&x.seen.delivered).expect("json");
    let unlearned = pointer["url"].as_str().expect("url").strip_prefix("https://proxy.internal:10000").expect("pointer").to_string();
    let refused = download(&guard, ORDER_SYNC, &unlearned, NOW_2027);
    let reply = refused.seen.reply.expect("refused");
    assert_eq!((reply.status, reply.header("x-spapi-guard")), (403, Some("document_not_allowed")));
}
