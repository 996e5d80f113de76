//! Fail-open edges through a real Envoy: request and response trailers, a body whose tokenized
//! form outgrows Envoy's buffers, an upstream that dies mid-body, and the request id of
//! fail-closed security events.
//! Run with `cargo test --test trailers -- --test-threads 2` after `make wasm` and `make envoy`.
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use jsonpath_rust::query::js_path;
use serde_json::{json, Value};
use spapi_guard::catalog::{Catalog, CatalogOverrides, Operation};
use spapi_guard::pii::PiiClass;
use spapi_guard::tokens::{Mode, TokenEngine, ValueKind, KEY_LEN, TOKEN_PREFIX};
use support::*;

const LABEL_PRINTER: &str = "label-printer";
const RDT_PATH: &str = "/tokens/2021-03-01/restrictedDataToken";
const RDT_FIXTURE: &str = "tokens-2021-03-01_createRestrictedDataToken_1.json";
/// Buyer info: not among label-printer's rights (addresses only).
const RDT_BUYER_INFO: &str = r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/902-3159896-1390916/buyerInfo"}]}"#;
/// The shipping address: label-printer may have it.
const RDT_ADDRESS: &str = r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/902-3159896-1390916/address"}]}"#;
/// getOrderAddress with a name and an address (Amazon's example).
const ADDRESS_FIXTURE: &str = "orders-v0_getOrderAddress_1.json";
const ADDRESS_PATH: &str = "/orders/v0/orders/902-3159896-1390916/address";

fn catalog() -> Catalog {
    Catalog::build(&CatalogOverrides::default()).expect("catalog")
}

fn address_operation(catalog: &Catalog) -> &Operation {
    catalog.route("GET", ADDRESS_PATH).expect("getOrderAddress")
}

/// A fixture folder for the mock: `(file, INDEX entry fields, body)`.
fn fixture_folder(name: &str, entries: &[(&str, Value, &[u8])]) -> PathBuf {
    let dir = stack_dir(name);
    let mut index = Vec::new();
    for (file, fields, body) in entries {
        std::fs::write(dir.join(file), body).expect("write fixture");
        let mut entry = json!({"file": file, "query": "", "status": 200});
        for (k, v) in fields.as_object().expect("entry fields") {
            entry[k] = v.clone();
        }
        index.push(entry);
    }
    std::fs::write(dir.join("INDEX.json"), serde_json::to_vec(&index).expect("json")).expect("write index");
    dir
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.chars().count() > 400 {
        format!("{}…", text.chars().take(400).collect::<String>())
    } else {
        text.into_owned()
    }
}

/// The audit event with this request id (waiting for `n` events first).
fn audit_event_of(stack: &Stack, request_id: &str, n: usize) -> Value {
    let events = stack.wait_for_audit_events(n);
    events.into_iter().find(|e| e["request_id"] == request_id).unwrap_or_else(|| panic!("no audit event with request_id {request_id} ({})", stack.dir.display()))
}

/// The last `n` characters of what Envoy printed, for a failure message.
fn output_tail(stack: &Stack, n: usize) -> String {
    let out = stack.envoy_output();
    let chars: Vec<char> = out.chars().collect();
    chars[chars.len().saturating_sub(n)..].iter().collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Request trailers must not skip the Restricted Data Token check.

fn rdt_request<'a>(body: &str) -> H2Request<'a> {
    H2Request::new(Client::Cert(LABEL_PRINTER), "POST", RDT_PATH).header("content-type", "application/json").header("x-mock-fixture", RDT_FIXTURE).body(body.as_bytes().to_vec())
}

/// Asserts the RDT request was denied before the upstream: 403 `rdt_resource_not_allowed`, no
/// mock call, audit decision `deny`.
fn assert_rdt_denied(stack: &Stack, what: &str, resp: &H2Response, calls_before: usize, events_so_far: usize) {
    let calls = stack.mock_calls();
    assert_eq!(
        (resp.status, resp.header("x-spapi-guard")),
        (Some(403), Some("rdt_resource_not_allowed")),
        "{what}: the RDT check was skipped: status {:?}, body {}, error {:?}; the mock got {} request(s): {:?}",
        resp.status,
        excerpt(&resp.body),
        resp.error,
        calls.len() - calls_before,
        &calls[calls_before..]
    );
    assert_eq!(resp.error, None, "{what}");
    assert_eq!(calls.len(), calls_before, "{what}: the denied RDT request reached the upstream: {:?}", &calls[calls_before..]);
    let id = resp.header("x-request-id").expect("x-request-id");
    let event = audit_event_of(stack, id, events_so_far);
    assert_eq!(
        (event["decision"].as_str(), event["outcome"].as_str(), event["reason"].as_str()),
        (Some("deny"), Some("denied"), Some("rdt_resource_not_allowed")),
        "{what}: audit event {event}"
    );
}

#[test]
fn rdt_request_with_trailers_is_still_checked() {
    let key = random_key();
    let stack = Stack::start(Options::new("rdt-trailers", &key));

    // Control: over HTTP/2 (TLS; Envoy's listener sets no ALPN list, it detects the h2 preface)
    // without trailers, the RDT check denies buyer info to label-printer.
    let plain = stack.h2(&rdt_request(RDT_BUYER_INFO));
    assert_rdt_denied(&stack, "RDT over HTTP/2 without trailers", &plain, 0, 1);

    // An allowed RDT request ending in trailers is still forwarded and answered.
    let allowed = stack.h2(&rdt_request(RDT_ADDRESS).trailer("x-foo", "bar"));
    assert_eq!((allowed.status, allowed.error.as_deref()), (Some(200), None), "allowed RDT with trailers: {}", excerpt(&allowed.body));
    assert_eq!(allowed.body, fixture(RDT_FIXTURE).body(), "allowed RDT with trailers: the upstream's answer");
    assert_eq!(stack.mock_calls().len(), 1, "allowed RDT with trailers: forwarded once");
    let event = audit_event_of(&stack, allowed.header("x-request-id").expect("x-request-id"), 2);
    assert_eq!(event["decision"], "allow", "{event}");

    // The denied body followed by a trailer: the check must still run.
    let with_trailer = stack.h2(&rdt_request(RDT_BUYER_INFO).trailer("x-foo", "bar"));
    assert_rdt_denied(&stack, "RDT for buyer info ending in a trailer", &with_trailer, 1, 3);
    assert_nothing_printed_holds(&stack, &BTreeSet::from(["902-3159896-1390916/buyerInfo".to_string()]), "RDT with trailers");
}

#[test]
fn rdt_request_in_several_data_frames_then_trailers_is_still_checked() {
    let key = random_key();
    let stack = Stack::start(Options::new("rdt-frames-trailers", &key));

    // Control: the body in 4 DATA frames, the last one ending the stream.
    let frames = stack.h2(&rdt_request(RDT_BUYER_INFO).chunks(4));
    assert_rdt_denied(&stack, "RDT in 4 DATA frames", &frames, 0, 1);

    // The allowed resources in 4 DATA frames then trailers: forwarded.
    let allowed = stack.h2(&rdt_request(RDT_ADDRESS).chunks(4).trailer("x-foo", "bar").trailer("x-checksum", "0"));
    assert_eq!((allowed.status, allowed.error.as_deref()), (Some(200), None), "allowed RDT, 4 frames + trailers: {}", excerpt(&allowed.body));
    assert_eq!(stack.mock_calls().len(), 1);

    // Buyer info in 4 DATA frames, then trailers.
    let with_trailers = stack.h2(&rdt_request(RDT_BUYER_INFO).chunks(4).trailer("x-foo", "bar").trailer("x-checksum", "0"));
    assert_rdt_denied(&stack, "RDT for buyer info in 4 DATA frames + trailers", &with_trailers, 1, 3);
    assert_nothing_printed_holds(&stack, &BTreeSet::from(["902-3159896-1390916/buyerInfo".to_string()]), "RDT in frames with trailers");
}

// ---------------------------------------------------------------------------------------------
// 2. Response trailers must not release the raw body.

/// Replaces every token by `<class>` after checking that it opens.
fn mask_tokens(v: &mut Value, engine: &TokenEngine) {
    match v {
        Value::String(s) if s.starts_with(TOKEN_PREFIX) => {
            let opened = engine.open(s, now_ms()).unwrap_or_else(|e| panic!("a token does not open: {e}"));
            *v = json!(format!("<{}>", opened.class));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| mask_tokens(x, engine)),
        Value::Object(m) => m.values_mut().for_each(|x| mask_tokens(x, engine)),
        _ => {}
    }
}

/// Every PII value of `upstream` at the catalog paths of `op`, as it would appear in clear:
/// the JSON text of strings (quoted) and numbers.
fn pii_needles(op: &Operation, upstream: &Value) -> Vec<String> {
    reference_pii(op, upstream).iter().map(|p| serde_json::to_string(&p.value).expect("json")).collect()
}

/// Checks what a client received for the fixture `upstream` against `reference` (the same
/// fixture through the same Envoy without trailers): no PII in clear, the same JSON with tokens
/// at the same places, each token opening to the upstream value, the same bytes.
fn assert_tokenized_as_reference(what: &str, op: &Operation, upstream: &[u8], reference: &[u8], got: &[u8], engine: &TokenEngine) {
    let up: Value = serde_json::from_slice(upstream).expect("fixture json");
    let text = String::from_utf8_lossy(got);
    let leaked: Vec<String> = pii_needles(op, &up).into_iter().filter(|n| text.contains(n.as_str())).collect();
    assert!(leaked.is_empty(), "{what}: the client received PII in clear {leaked:?}; body: {}", excerpt(got));
    let got_json: Value = serde_json::from_slice(got).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", excerpt(got)));
    for p in reference_pii(op, &up) {
        let at = js_path(&p.location, &got_json).expect("query");
        if p.value.is_number() {
            // Numbers stay numbers, coarsened (docs/POLICY.md, "Schema-faithful protection").
            let mut coarse = Vec::new();
            spapi_guard::schema::coarsen(&p.value.to_string(), 1, &mut coarse);
            let want: Value = serde_json::from_slice(&coarse).expect("number");
            assert_eq!(at.first().map(|h| h.clone().val().clone()), Some(want), "{what}: {}", p.location);
            continue;
        }
        let token = at.first().and_then(|h| h.clone().val().as_str().map(str::to_string));
        let token = token.unwrap_or_else(|| panic!("{what}: no token at {}: {}", p.location, excerpt(got)));
        let opened = engine.open(&token, now_ms()).unwrap_or_else(|e| panic!("{what}: {} does not open: {e}", p.location));
        assert_eq!(opened.class, p.class, "{what}: {}", p.location);
        let expected = match &p.value {
            Value::String(s) => s.as_bytes().to_vec(),
            v => v.to_string().into_bytes(),
        };
        assert_eq!(opened.plaintext, expected, "{what}: {}", p.location);
    }
    let (mut a, mut b) = (got_json, serde_json::from_slice::<Value>(reference).expect("reference json"));
    mask_tokens(&mut a, engine);
    mask_tokens(&mut b, engine);
    assert_eq!(a, b, "{what}: not the shape of the response without trailers");
    assert_eq!(got, reference, "{what}: not the bytes of the response without trailers (deterministic tokens)");
}

/// getOrderAddress answered with the Amazon body plus trailers, over `upstream`; read by curl
/// (HTTP/1.1) and by the HTTP/2 client; each must be tokenized as without trailers.
fn response_trailers_case(name: &'static str, upstream: UpstreamProtocol) {
    let key = random_key();
    let engine = engine(&key);
    let catalog = catalog();
    let op = address_operation(&catalog);
    let fx = fixture(ADDRESS_FIXTURE);
    let body = fx.body();
    let trailers = json!({"x-amzn-checksum": "c2hhMjU2", "x-foo": "bar"});
    let dir = fixture_folder("trailer-fixtures", &[("address-trailers.json", json!({"method": "GET", "path": ADDRESS_PATH, "trailers": trailers}), &body)]);
    let mut opts = Options::new(name, &key);
    opts.fixture_dirs.push(dir);
    opts.upstream_protocol = upstream;
    let stack = Stack::start(opts);

    // The same fixture without trailers, through the same Envoy and upstream protocol.
    let reference = stack.play(&fx);
    assert_eq!(reference.status, 200, "reference: {}", reference.text());
    assert_tokenized_as_reference(&format!("{name}: reference without trailers"), op, &body, &reference.body, &reference.body, &engine);

    let h1 = stack.request("GET", ADDRESS_PATH, &[("x-mock-fixture", "address-trailers.json")]);
    let h2 = stack.h2(&H2Request::new(Client::Cert(ORDER_SYNC), "GET", ADDRESS_PATH).header("x-mock-fixture", "address-trailers.json"));
    let events = stack.wait_for_audit_events(3);
    let h1_event = events.iter().find(|e| Some(e["request_id"].as_str().unwrap_or("")) == h1.header("x-request-id")).cloned();
    let h2_event = events.iter().find(|e| Some(e["request_id"].as_str().unwrap_or("")) == h2.header("x-request-id")).cloned();
    let clients = [("HTTP/1.1 client", Some(h1.status), &h1.body, h1_event), ("HTTP/2 client", h2.status, &h2.body, h2_event)];
    // First what both clients got, in one message.
    let up: Value = serde_json::from_slice(&body).expect("json");
    let leaks: Vec<String> = clients
        .iter()
        .filter_map(|(client, status, got, event)| {
            let text = String::from_utf8_lossy(got);
            let leaked: Vec<String> = pii_needles(op, &up).into_iter().filter(|n| text.contains(n.as_str())).collect();
            let audit = event.as_ref().map(|e| format!("outcome {} pii {}", e["outcome"], e["pii"])).unwrap_or_default();
            (!leaked.is_empty()).then(|| format!("{client}: status {status:?}, PII in clear {leaked:?}, body {}; audit: {audit}", excerpt(got)))
        })
        .collect();
    assert!(leaks.is_empty(), "{name}: a response with trailers reached the client untokenized:\n{}", leaks.join("\n"));
    for (client, status, body_got, event) in clients {
        let what = format!("{name}, {client}, response with trailers");
        assert_eq!(status, Some(200), "{what}: {}", excerpt(body_got));
        let event = event.unwrap_or_else(|| panic!("{what}: no audit event"));
        assert_tokenized_as_reference(&what, op, &body, &reference.body, body_got, &engine);
        assert_eq!(event["outcome"], "protected", "{what}: {event}");
        let pii = event["pii"].as_object().expect("pii");
        assert!(!pii.is_empty(), "{what}: the audit event counts no PII: {event}");
        assert_eq!(event["pii"], events[0]["pii"], "{what}: PII counts differ from the response without trailers");
    }
    assert_eq!(h2.error, None);
    assert_nothing_printed_holds(&stack, &distinctive_pii(op, &serde_json::from_slice(&body).expect("json")), name);
}

#[test]
fn response_trailers_over_an_http2_upstream_do_not_release_the_raw_body() {
    response_trailers_case("resp-trailers-h2", UpstreamProtocol::H2);
}

#[test]
fn response_trailers_over_an_http1_chunked_upstream_do_not_release_the_raw_body() {
    response_trailers_case("resp-trailers-h1", UpstreamProtocol::H1Trailers);
}

// ---------------------------------------------------------------------------------------------
// 3. A body whose tokenized form outgrows Envoy's buffer.

/// Bytes a one-letter string value gains as a deterministic token of `class`.
fn token_growth(engine: &TokenEngine, class: PiiClass) -> usize {
    engine.seal(now_ms(), class, Mode::Deterministic, ValueKind::Text, b"a").expect("a key is active").len() + 2 - 3
}

/// A getOrders (orders-v0) page of at most `limit` bytes: `first` (an order with distinctive
/// PII), then as many orders of one-letter PII values of the deterministic classes as fit.
/// Returns the body and the size of its tokenized form.
fn short_pii_orders(limit: usize, first: &Value, engine: &TokenEngine) -> (Vec<u8>, usize) {
    let fields: [(&str, &[(&str, PiiClass)]); 2] = [
        (
            "ShippingAddress",
            &[
                ("Name", PiiClass::Name),
                ("City", PiiClass::Address),
                ("Phone", PiiClass::Phone),
                ("County", PiiClass::Address),
                ("District", PiiClass::Address),
                ("PostalCode", PiiClass::Address),
                ("AddressLine1", PiiClass::Address),
                ("AddressType", PiiClass::Address),
                ("CompanyName", PiiClass::Company),
            ],
        ),
        ("BuyerInfo", &[("BuyerEmail", PiiClass::Email), ("BuyerName", PiiClass::Name), ("BuyerCounty", PiiClass::Address)]),
    ];
    let mut objects = Vec::new();
    let mut growth = 0;
    for (object, values) in fields {
        let members: Vec<String> = values.iter().map(|(k, _)| format!("\"{k}\":\"a\"")).collect();
        growth += values.iter().map(|(_, c)| token_growth(engine, *c)).sum::<usize>();
        objects.push(format!("\"{object}\":{{{}}}", members.join(",")));
    }
    let order = format!("{{{}}}", objects.join(","));
    let mut body = format!("{{\"payload\":{{\"CreatedBefore\":\"2020-01-02T00:00:00Z\",\"Orders\":[{first}");
    let tail = "]}}";
    let mut n = 0;
    while body.len() + 1 + order.len() + tail.len() <= limit {
        body.push(',');
        body.push_str(&order);
        n += 1;
    }
    body.push_str(tail);
    let tokenized = body.len() + n * growth;
    (body.into_bytes(), tokenized)
}

/// A getFulfillmentOrder (FBA outbound 2020-07-01) answer of at most `limit` bytes whose
/// `notificationEmails` list holds one-letter emails: each 4 bytes (`"a",`) becomes a token of
/// ~64. Returns the body and the size of its tokenized form.
fn short_pii_notification_emails(limit: usize, order: &Value, engine: &TokenEngine) -> (Vec<u8>, usize) {
    let mut head = serde_json::to_string(&json!({"payload": {"fulfillmentOrder": order, "fulfillmentOrderItems": []}})).expect("json");
    // Open the (last) notificationEmails array to append to it.
    let marker = "\"notificationEmails\":[\"zebulon.quartermaine@example.org\"]";
    let at = head.find(marker).expect("notificationEmails in the order");
    let rest = head.split_off(at + marker.len() - 1);
    let mut body = head;
    let mut n = 0;
    while body.len() + 4 + rest.len() <= limit {
        body.push_str(",\"a\"");
        n += 1;
    }
    body.push_str(&rest);
    let tokenized = body.len() + n * token_growth(engine, PiiClass::Email);
    (body.into_bytes(), tokenized)
}

const ZEBULON: [&str; 5] = ["Zebulon Quartermaine", "77 Sunken Meadow Road", "Ravenscourt", "zebulon.quartermaine@example.org", "Quartermaine Holdings"];

/// Starts Envoy with the mock serving `entries` (file, path, query, body).
fn huge_stack(name: &'static str, key: &[u8; KEY_LEN], entries: &[(&str, &str, &str, &[u8])]) -> Stack {
    let entries: Vec<(&str, Value, &[u8])> = entries.iter().map(|(file, path, query, body)| (*file, json!({"method": "GET", "path": path, "query": query}), *body)).collect();
    let dir = fixture_folder(&format!("{name}-fixtures"), &entries);
    let mut opts = Options::new(name, key);
    opts.fixture_dirs.push(dir);
    Stack::start(opts)
}

/// Envoy must still run and be ready; else the failure shows how it ended.
fn assert_envoy_alive(stack: &mut Stack, what: &str) {
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = stack.envoy_exit() {
        panic!("{what}: Envoy died ({status}); its output ends:\n{}", output_tail(stack, 2500));
    }
    assert!(stack.is_ready(), "{what}: Envoy's /ready is not 200");
}

/// After the big request: Envoy serves the next normal request, tokenized.
fn assert_next_request_is_served(stack: &Stack, engine: &TokenEngine, what: &str) {
    let catalog = catalog();
    let fx = fixture(ADDRESS_FIXTURE);
    let next = stack.play(&fx);
    assert_eq!(next.status, 200, "{what}: the next request: {}", next.text());
    let reference = next.body.clone();
    assert_tokenized_as_reference(&format!("{what}: the next request"), address_operation(&catalog), &fx.body(), &reference, &next.body, engine);
}

#[test]
fn tokens_outgrowing_every_buffer_fail_closed_and_envoy_survives() {
    let key = random_key();
    let engine = engine(&key);
    let max_body = default_policy()["maxBodyBytes"].as_u64().expect("maxBodyBytes") as usize;
    let order = json!({
        "sellerFulfillmentOrderId": "ZQ-0001", "marketplaceId": "ATVPDKIKX0DER", "displayableOrderId": "ZQ-0001",
        "displayableOrderDate": "2020-01-09T19:46:45Z", "shippingSpeedCategory": "Standard",
        "destinationAddress": {"name": ZEBULON[0], "addressLine1": ZEBULON[1], "city": ZEBULON[2], "stateOrRegion": "MI", "countryCode": "US", "postalCode": "48084"},
        "notificationEmails": [ZEBULON[3]]
    });
    let (body, tokenized) = short_pii_notification_emails(max_body - 1024, &order, &engine);
    assert!(body.len() > max_body - 2048 && body.len() < max_body, "{}", body.len());
    assert!(tokenized > 10 * body.len() && tokenized > 64 << 20, "tokenized {tokenized} bytes from {}", body.len());
    let path = "/fba/outbound/2020-07-01/fulfillmentOrders/ZQ-0001";
    let mut stack = huge_stack("huge-emails", &key, &[("huge-emails.json", path, "", &body)]);
    drop(body);

    let resp = stack.send(Client::Cert(ORDER_SYNC), "GET", path, &[("x-mock-fixture", "huge-emails.json")], None, None);
    assert_envoy_alive(&mut stack, &format!("a {tokenized}-byte tokenized body (> 10x its 8 MiB upstream body)"));
    let resp = resp.unwrap_or_else(|e| panic!("the client got no response ({e}); Envoy's output ends:\n{}", output_tail(&stack, 2500)));
    assert_eq!((resp.status, resp.header("x-spapi-guard")), (502, Some("body_too_large")), "{}", excerpt(&resp.body));
    let err = resp.json();
    assert_eq!((err["errors"][0]["code"].as_str(), err["errors"][0]["details"].as_str()), (Some("PiiProtectionFailed"), Some("spapi-guard:body_too_large")));
    assert!(!ZEBULON.iter().any(|z| resp.text().contains(z)), "PII in the error body");
    let event = audit_event_of(&stack, resp.header("x-request-id").expect("x-request-id"), 1);
    assert_eq!((event["outcome"].as_str(), event["reason"].as_str()), (Some("fail_closed"), Some("body_too_large")), "{event}");
    assert_next_request_is_served(&stack, &engine, "after the oversized tokenized body");
    assert_nothing_printed_holds(&stack, &ZEBULON.iter().map(|s| s.to_string()).collect(), "oversized tokenized body");
}

#[test]
fn a_getorders_page_of_short_pii_does_not_crash_envoy() {
    let key = random_key();
    let engine = engine(&key);
    let max_body = default_policy()["maxBodyBytes"].as_u64().expect("maxBodyBytes") as usize;
    let first = json!({
        "AmazonOrderId": "902-1845936-5435065",
        "ShippingAddress": {"Name": ZEBULON[0], "AddressLine1": ZEBULON[1], "City": ZEBULON[2], "CompanyName": ZEBULON[4]},
        "BuyerInfo": {"BuyerEmail": ZEBULON[3], "BuyerName": ZEBULON[0]}
    });
    let (body, tokenized) = short_pii_orders(max_body - 1024, &first, &engine);
    assert!(body.len() > max_body - 2048 && body.len() < max_body, "{}", body.len());
    // The most PII per byte a getOrders page carries (11-byte members): ~4.3x, ~36 MiB, more than
    // twice the listener's 16 MiB buffer limit.
    assert!(tokenized > 4 * body.len() && tokenized > 32 << 20, "tokenized {tokenized} bytes from {}", body.len());
    let path = "/orders/v0/orders";
    let query = "MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2020-01-01";
    let mut stack = huge_stack("huge-orders", &key, &[("huge-orders.json", path, query, &body)]);
    drop(body);

    let resp = stack.send(Client::Cert(ORDER_SYNC), "GET", &format!("{path}?{query}"), &[("x-mock-fixture", "huge-orders.json")], None, None);
    assert_envoy_alive(&mut stack, &format!("a getOrders page tokenized to {tokenized} bytes ({:.1}x)", tokenized as f64 / (max_body - 1024) as f64));
    let resp = resp.unwrap_or_else(|e| panic!("the client got no response ({e}); Envoy's output ends:\n{}", output_tail(&stack, 2500)));
    let event = audit_event_of(&stack, resp.header("x-request-id").expect("x-request-id"), 1);
    assert!(!ZEBULON.iter().any(|z| resp.text().contains(z)), "PII in clear reached the client");
    // Either refused (the listener's buffer cannot hold it), or delivered whole and tokenized
    // (if a fix streams it or a larger buffer holds it).
    if resp.status == 200 {
        let got = resp.json();
        assert_eq!(resp.body.len(), tokenized, "the delivered body is not the whole tokenized page");
        let first = &got["payload"]["Orders"][0];
        assert_eq!(engine.open(first["ShippingAddress"]["Name"].as_str().expect("token"), now_ms()).expect("opens").plaintext, ZEBULON[0].as_bytes());
        assert_eq!(event["outcome"], "protected", "{event}");
    } else {
        assert_eq!((resp.status, resp.header("x-spapi-guard")), (502, Some("body_too_large")), "{}", excerpt(&resp.body));
        assert_eq!(resp.json()["errors"][0]["details"], "spapi-guard:body_too_large");
        assert_eq!((event["outcome"].as_str(), event["reason"].as_str()), (Some("fail_closed"), Some("body_too_large")), "{event}");
    }
    assert_next_request_is_served(&stack, &engine, "after the getOrders page");
    assert_nothing_printed_holds(&stack, &ZEBULON.iter().map(|s| s.to_string()).collect(), "getOrders page of short PII");
}

// ---------------------------------------------------------------------------------------------
// 4. An upstream that dies mid-body.

/// getOrderAddress whose upstream declares the whole body's length, sends part of it (the name,
/// first address line and city) and closes the connection; read by curl and the HTTP/2 client.
fn upstream_reset_case(name: &'static str, upstream: UpstreamProtocol) {
    let key = random_key();
    let catalog = catalog();
    let op = address_operation(&catalog);
    let body = fixture(ADDRESS_FIXTURE).body();
    let up: Value = serde_json::from_slice(&body).expect("json");
    let cut = String::from_utf8_lossy(&body).find("\"StateOrRegion\"").expect("StateOrRegion");
    let sent = String::from_utf8_lossy(&body[..cut]).into_owned();
    let sent_pii: Vec<String> = pii_needles(op, &up).into_iter().filter(|n| sent.contains(n.as_str())).collect();
    assert!(sent_pii.len() >= 3, "{sent_pii:?}");
    let mut pii = distinctive_pii(op, &up);
    pii.extend(sent_pii.iter().map(|n| n.trim_matches('"').to_string()).filter(|s| s.len() >= 4));
    let dir = fixture_folder(&format!("{name}-fixtures"), &[("address-cut.json", json!({"method": "GET", "path": ADDRESS_PATH, "close_after": cut}), &body)]);
    let mut opts = Options::new(name, &key);
    opts.fixture_dirs.push(dir);
    opts.upstream_protocol = upstream;
    let stack = Stack::start(opts);

    let h1 = stack.send(Client::Cert(ORDER_SYNC), "GET", ADDRESS_PATH, &[("x-mock-fixture", "address-cut.json")], None, None);
    let h2 = stack.h2(&H2Request::new(Client::Cert(ORDER_SYNC), "GET", ADDRESS_PATH).header("x-mock-fixture", "address-cut.json"));
    let seen = [
        (
            "HTTP/1.1 client",
            h1.as_ref().ok().and_then(|r| r.header("x-request-id").map(str::to_string)),
            match &h1 {
                Ok(r) => format!("status {} body {}", r.status, r.text()),
                Err(e) => format!("curl error: {}", e.trim()),
            },
        ),
        ("HTTP/2 client", h2.header("x-request-id").map(str::to_string), format!("status {:?} error {:?} body {}", h2.status, h2.error, h2.text())),
    ];
    for (client, _, got) in &seen {
        let leaked: Vec<&String> = sent_pii.iter().filter(|n| got.contains(n.as_str()) || got.contains(n.trim_matches('"'))).collect();
        assert!(leaked.is_empty(), "{name}, {client}: PII of the partial body reached the client: {leaked:?} in {got}");
    }
    let events = stack.wait_for_audit_events(2);
    assert_eq!(events.len(), 2, "{name}: {events:?}");
    // Requests were sent one after the other: events in order (or by request id when the client saw one).
    let wrong: Vec<String> = events
        .iter()
        .zip(&seen)
        .filter_map(|(event, (client, id, got))| {
            let event = id.as_ref().and_then(|id| events.iter().find(|e| e["request_id"] == id.as_str())).unwrap_or(event);
            let pair = (event["outcome"].as_str(), event["reason"].as_str());
            (pair != (Some("aborted"), Some("response_incomplete"))).then(|| format!("{client} (client saw: {got}): audit event {event}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{name}: not audited as outcome \"aborted\", reason \"response_incomplete\":\n{}", wrong.join("\n"));
    assert_nothing_printed_holds(&stack, &pii, name);
}

#[test]
fn an_http1_upstream_reset_mid_body_is_audited_as_aborted() {
    upstream_reset_case("cut-h1", UpstreamProtocol::H1);
}

#[test]
fn an_http2_upstream_reset_mid_body_is_audited_as_aborted() {
    upstream_reset_case("cut-h2", UpstreamProtocol::H2);
}

// ---------------------------------------------------------------------------------------------
// 5. The request id of fail-closed security events.

#[test]
fn fail_closed_security_events_carry_the_request_id() {
    let key = random_key();
    let catalog = catalog();
    let op = address_operation(&catalog);
    let body = fixture(ADDRESS_FIXTURE).body();
    let truncated = &body[..body.len() - 5];
    let dir = fixture_folder(
        "fc-id-fixtures",
        &[
            ("fc-invalid.json", json!({"method": "GET", "path": "/orders/v0/orders/FC-INVALID/address"}), truncated),
            ("fc-gzip.json", json!({"method": "GET", "path": "/orders/v0/orders/FC-GZIP/address", "headers": {"content-encoding": "gzip"}}), &body),
        ],
    );
    let mut opts = Options::new("fc-request-id", &key);
    opts.fixture_dirs.push(dir);
    let stack = Stack::start(opts);
    let mut ids = Vec::new();
    for (case, reason) in [("fc-invalid", "invalid_json"), ("fc-gzip", "unsupported_content_encoding")] {
        let resp = stack.request("GET", &format!("/orders/v0/orders/{}/address", case.to_uppercase()), &[("x-mock-fixture", &format!("{case}.json"))]);
        assert_eq!((resp.status, resp.header("x-spapi-guard")), (502, Some(reason)), "{case}: {}", resp.text());
        ids.push((case, reason, resp.header("x-request-id").expect("x-request-id").to_string()));
    }
    let audit = stack.wait_for_audit_events(2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut security = stack.security_events();
    while security.iter().filter(|e| e["event"] == "fail_closed").count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        security = stack.security_events();
    }
    let fail_closed: Vec<&Value> = security.iter().filter(|e| e["event"] == "fail_closed").collect();
    assert_eq!(fail_closed.len(), 2, "{security:?}");
    for (case, reason, header_id) in &ids {
        let event = audit.iter().find(|e| e["request_id"] == header_id.as_str()).unwrap_or_else(|| panic!("{case}: no audit event"));
        assert_eq!((event["outcome"].as_str(), event["reason"].as_str()), (Some("fail_closed"), Some(*reason)), "{event}");
        let sec: Vec<&&Value> = fail_closed.iter().filter(|e| e["reason"] == *reason).collect();
        assert_eq!(sec.len(), 1, "{case}: {fail_closed:?}");
        let id = sec[0]["request_id"].as_str().unwrap_or_default();
        assert!(!id.is_empty(), "{case}: the fail_closed security event has request_id {:?}: {}", sec[0]["request_id"], sec[0]);
        assert_eq!(id, header_id, "{case}: the fail_closed event's request_id is not that of the request's audit event {event}");
    }
    assert_nothing_printed_holds(&stack, &distinctive_pii(op, &serde_json::from_slice(&body).expect("json")), "fail-closed request ids");
}
