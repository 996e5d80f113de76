//! End to end through a real Envoy: mock SP-API → Envoy → spapi-guard → curl.
//! Run with `make test` (it builds the filter and installs Envoy first).
mod support;

use std::collections::{BTreeMap, BTreeSet};

use jsonpath_rust::query::js_path;
use serde_json::{json, Value};
use spapi_guard::catalog::{Catalog, CatalogOverrides, Operation};
use spapi_guard::pii::PiiClass;
use spapi_guard::tokens::{Mode, TokenEngine, ValueKind, TOKEN_PREFIX};
use support::*;

/// Checks that `response` is `upstream` with exactly the reference PII values replaced by tokens
/// that open to them: every other byte identical, every token at a PII location, of its class.
/// The reference (tests/support `reference_pii`) knows the catalog's paths, its customer objects,
/// bodies without the `payload` wrapper and the default detectors; it is a DOM walk, independent
/// of the filter's automaton.
fn assert_tokenized(name: &str, op: &Operation, upstream: &[u8], response: &[u8], engine: &TokenEngine) -> usize {
    let up: Value = serde_json::from_slice(upstream).expect("fixture json");
    let resp: Value = serde_json::from_slice(response).unwrap_or_else(|e| panic!("{name}: response not JSON: {e}"));
    let pii = reference_pii(op, &up);

    // 1. At every PII location there is a token of the right class that opens to the value.
    for p in &pii {
        let got = js_path(&p.location, &resp).expect("query");
        let token = got.first().and_then(|g| g.clone().val().as_str().map(str::to_string));
        let token = token.unwrap_or_else(|| panic!("{name}: {} is not a token", p.location));
        let opened = engine.open(&token, now_ms()).unwrap_or_else(|e| panic!("{name}: {} token does not open: {e}", p.location));
        assert_eq!(opened.class, p.class, "{name}: {}", p.location);
        match (&p.value, opened.kind) {
            (Value::String(s), ValueKind::Text) => assert_eq!(opened.plaintext, s.as_bytes(), "{name}: {}", p.location),
            (v, ValueKind::RawJson) => assert_eq!(&serde_json::from_slice::<Value>(&opened.plaintext).expect("raw json"), v),
            (v, k) => panic!("{name}: {} holds {v} but the token kind is {k:?}", p.location),
        }
    }

    // 2. Byte-faithful: walking the response, every byte outside a token equals the upstream's,
    //    and each token stands exactly where one upstream JSON value stood and opens to its text.
    let text = std::str::from_utf8(response).expect("utf8");
    let mut up_pos = 0;
    let mut resp_pos = 0;
    let mut tokens = 0;
    while let Some(offset) = text[resp_pos..].find(&format!("\"{TOKEN_PREFIX}")) {
        let start = resp_pos + offset;
        assert_eq!(&response[resp_pos..start], &upstream[up_pos..up_pos + (start - resp_pos)], "{name}: bytes differ before a token");
        up_pos += start - resp_pos;
        let end = start + 1 + text[start + 1..].find('"').expect("token end") + 1;
        let token = &text[start + 1..end - 1];
        let opened = engine.open(token, now_ms()).expect("token opens");
        let mut values = serde_json::Deserializer::from_slice(&upstream[up_pos..]).into_iter::<Value>();
        let original = values.next().expect("a value").expect("valid");
        let consumed = values.byte_offset();
        match opened.kind {
            ValueKind::Text => assert_eq!(original, Value::String(String::from_utf8(opened.plaintext).expect("utf8"))),
            ValueKind::RawJson => assert_eq!(&upstream[up_pos..up_pos + consumed], opened.plaintext.as_slice(), "{name}: raw value"),
        }
        up_pos += consumed;
        resp_pos = end;
        tokens += 1;
    }
    assert_eq!(&response[resp_pos..], &upstream[up_pos..], "{name}: bytes differ after the last token");
    assert_eq!(tokens, pii.len(), "{name}: tokens in the response vs PII values in the catalog paths");

    // 3. No PII string appears anywhere in the response, except where the same text stands at a
    //    non-PII location of the upstream (a seller's own country code, say).
    let up_text = String::from_utf8_lossy(upstream);
    for p in &pii {
        let Value::String(_) = &p.value else { continue };
        let needle = serde_json::to_string(&p.value).expect("json");
        let in_pii = pii.iter().filter(|q| q.value == p.value).count();
        let allowed = up_text.matches(&needle).count().saturating_sub(in_pii);
        assert_eq!(text.matches(&needle).count(), allowed, "{name}: a PII value leaked at {}", p.location);
    }
    tokens
}

fn builtin_catalog() -> Catalog {
    Catalog::build(&CatalogOverrides::default()).expect("catalog")
}

#[test]
fn every_response_fixture_is_tokenized_byte_for_byte() {
    let key = random_key();
    let engine = engine(&key);
    // Numbers tokenized too (the opt-in), so that every catalog value is a token this walk can
    // open; the default (coordinates coarsened, still numbers) is checked value by value in
    // tests/access.rs and by the real clients in tests/clients.rs.
    let mut opts = Options::new("fixtures", &key);
    opts.policy["numbers"] = json!({"action": "tokenize"});
    let stack = Stack::start(opts);
    let catalog = builtin_catalog();
    let fixtures = response_fixtures();
    let mut operations = BTreeSet::new();
    let mut total_tokens = 0;
    for fx in &fixtures {
        let op = catalog.route(&fx.method, &fx.path).unwrap_or_else(|| panic!("{}: no catalog operation", fx.file));
        operations.insert(op.id.clone());
        let resp = stack.play(fx);
        if let Some(reason) = resp.header("x-spapi-guard") {
            // Amazon's example of an invalid RDT request (empty method, unknown path): refused
            // by the filter before Amazon would refuse it.
            assert_eq!((fx.file.as_str(), reason), ("tokens-2021-03-01_createRestrictedDataToken_3.json", "rdt_resource_not_allowed"));
            continue;
        }
        assert_eq!(resp.status, fx.status(), "{}: status; body {}", fx.file, resp.text());
        let upstream = fx.body();
        if fx.status() == 204 {
            assert!(resp.body.is_empty(), "{}", fx.file);
            continue;
        }
        assert_eq!(resp.header("content-length"), Some(resp.body.len().to_string().as_str()), "{}", fx.file);
        total_tokens += assert_tokenized(&fx.file, op, &upstream, &resp.body, &engine);
    }
    assert!(fixtures.len() >= 190, "{}", fixtures.len());
    assert!(operations.len() >= 60, "fixtures cover {} operations", operations.len());
    assert!(total_tokens > 400, "only {total_tokens} tokens: are the fixtures PII-bearing?");

    // Clients asking for compressed bodies: the filter asks upstream for identity instead.
    let fx = fixtures.iter().find(|f| f.file == "orders-v0_getOrderAddress_1.json").expect("fixture");
    let resp = stack.request(&fx.method, &fx.url(), &[("x-mock-fixture", &fx.file), ("accept-encoding", "gzip, br")]);
    assert_eq!(resp.status, 200);
    let last_call = stack.mock_calls().pop().expect("a call");
    assert_eq!(last_call["headers"].get("accept-encoding"), None, "accept-encoding reached the upstream");

    // One audit event per request, without PII or paths.
    let events = stack.wait_for_audit_events(fixtures.len() + 1);
    assert_eq!(events.len(), fixtures.len() + 1);
    let output = stack.envoy_output();
    assert!(!output.contains("panicked"), "the filter panicked");
    // Paths are logged as templates: no path parameter reaches the log.
    for fx in &fixtures {
        let op = catalog.route(&fx.method, &fx.path).expect("op");
        if fx.path != op.path_template {
            assert!(!output.contains(&fx.path), "a concrete request path is in Envoy's output: {}", fx.path);
        }
    }
}

#[test]
fn deterministic_tokens_repeat_across_requests_and_vms_randomized_do_not() {
    let key = random_key();
    let engine = engine(&key);
    let a = Stack::start(Options::new("det-a", &key));
    let b = Stack::start(Options::new("det-b", &key));
    let fx = fixture("orders-2026-01-01_searchOrders_1.json");
    let first = a.play(&fx).json();
    let second = a.play(&fx).json();
    let other_vm = b.play(&fx).json();
    let email = |v: &Value| v["orders"][0]["buyer"]["buyerEmail"].as_str().expect("token").to_string();
    let gift = |v: &Value| v["orders"][0]["orderItems"][0]["fulfillment"]["packing"]["giftOption"]["giftMessage"].as_str().expect("token").to_string();
    // Default policy: email deterministic, gift_message randomized.
    assert_eq!(email(&first), email(&second));
    assert_eq!(email(&first), email(&other_vm), "another Envoy process, same key: same token");
    assert_eq!(engine.open(&email(&first), now_ms()).expect("opens").mode, Mode::Deterministic);
    assert_ne!(gift(&first), gift(&second));
    assert_ne!(gift(&first), gift(&other_vm));
    assert_eq!(engine.open(&gift(&first), now_ms()).expect("opens").plaintext, engine.open(&gift(&second), now_ms()).expect("opens").plaintext);

    // A token changed by one character, or presented as another class, does not open.
    let token = email(&first);
    let last = token.len() - 1;
    let flipped = format!("{}{}", &token[..last], if token.ends_with('A') { "B" } else { "A" });
    assert!(engine.open(&flipped, now_ms()).is_err());
    assert!(engine.open(&token.replacen(".email.", ".name.", 1), now_ms()).is_err());
    // A different key opens nothing.
    assert!(support::engine(&random_key()).open(&token, now_ms()).is_err());
}

#[test]
fn class_actions_redact_hash_clear_and_randomize() {
    let key = random_key();
    let engine = engine(&key);
    let mut opts = Options::new("actions", &key);
    // The caller's role decides the action per class; the class settings give the token mode.
    opts.policy["classes"]["phone"] = json!({"action": "tokenize", "mode": "randomized"});
    opts.policy["roles"]["order-sync"]["pii"] = json!({
        "*": "tokenize",
        "name": "redact",
        "email": "hash",
        "address": "clear"
    });
    opts.policy["redactMask"] = json!("[hidden]");
    opts.policy["catalog"] = json!({
        "extend": {"orders-v0.getOrderAddress": {"responsePii": [{"jsonpath": "$.payload.AmazonOrderId", "class": "other"}]}},
        "exclude": {"orders-v0.getOrderAddress": ["$.payload.ShippingAddress.CountryCode"]}
    });
    let stack = Stack::start(opts);
    let fx = fixture("orders-2026-01-01_searchOrders_1.json");
    let up: Value = serde_json::from_slice(&fx.body()).expect("json");
    let got = stack.play(&fx).json();
    let (u, g) = (&up["orders"][0], &got["orders"][0]);
    assert_eq!(g["buyer"]["buyerName"], "[hidden]");
    let hashed = g["buyer"]["buyerEmail"].as_str().expect("hash");
    assert!(hashed.starts_with(&format!("spgh2.{KEY_ID}.email.")), "{hashed}");
    assert_eq!(stack.play(&fx).json()["orders"][0]["buyer"]["buyerEmail"], hashed, "hash is stable");
    assert_eq!(g["recipient"]["deliveryAddress"]["city"], u["recipient"]["deliveryAddress"]["city"], "address in clear");
    let phone = g["recipient"]["deliveryAddress"]["phone"].as_str().expect("token");
    let opened = engine.open(phone, now_ms()).expect("opens");
    assert_eq!(opened.mode, Mode::Randomized);
    assert_eq!(opened.plaintext, u["recipient"]["deliveryAddress"]["phone"].as_str().expect("phone").as_bytes());
    // Catalog overrides from the policy: an added field is protected, an excluded one is not.
    let fx = fixture("orders-v0_getOrderAddress_1.json");
    let address = stack.play(&fx).json();
    let order_id = address["payload"]["AmazonOrderId"].as_str().expect("token");
    assert_eq!(engine.open(order_id, now_ms()).expect("opens").class, PiiClass::Other);
    assert_eq!(address["payload"]["ShippingAddress"]["CountryCode"], "US");
    let events = stack.wait_for_audit_events(3);
    assert_eq!(events[0]["pii"]["name"]["redacted"], 2, "{}", events[0]);
    assert_eq!(events[0]["pii"]["address"]["clear"].as_u64().map(|n| n > 0), Some(true));
}

#[test]
fn operations_without_pii_pass_unchanged_and_unbuffered() {
    let key = random_key();
    // 20 MiB: more than the listener's 16 MiB buffer limit, so it passes only if nobody buffers it.
    let big: Vec<u8> = {
        let mut s = String::from("{\"items\":[");
        while s.len() < 20 * 1024 * 1024 {
            s.push_str("{\"asin\":\"B000000000\",\"note\":\"0.00\"},");
        }
        s.push_str("{}]}");
        s.into_bytes()
    };
    let dir = fixture_dir(
        "nopii-fixtures",
        &[
            ("rdt.json", "POST", "/tokens/2021-03-01/restrictedDataToken", 200, json!({}), false, big.clone()),
            ("catalog.json", "GET", "/catalog/2022-04-01/items", 200, json!({}), true, big.clone()),
        ],
    );
    let mut opts = Options::new("nopii", &key);
    opts.fixture_dirs.push(dir);
    let stack = Stack::start(opts);
    let rdt_request = r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/{orderId}/address"}]}"#;
    let rdt = stack.send(Client::Cert(ORDER_SYNC), "POST", "/tokens/2021-03-01/restrictedDataToken", &[("x-mock-fixture", "rdt.json")], None, Some(rdt_request)).expect("curl");
    assert_eq!(rdt.status, 200);
    assert!(rdt.body == big, "catalog operation without response PII: body changed");
    let unknown = stack.request("GET", "/catalog/2022-04-01/items", &[("x-mock-fixture", "catalog.json")]);
    assert_eq!(unknown.status, 200);
    assert!(unknown.body == big, "path outside the catalog: body changed");
    // A small one from Amazon's examples too, headers and all.
    let fx = fixture("tokens-2021-03-01_createRestrictedDataToken_1.json");
    let resp = stack.play(&fx);
    assert_eq!(resp.body, fx.body());
    let events = stack.wait_for_audit_events(3);
    let outcomes: Vec<&str> = events.iter().map(|e| e["outcome"].as_str().expect("outcome")).collect();
    assert_eq!(outcomes, ["passed_through", "unmatched", "passed_through"]);
}

#[test]
fn unprocessable_responses_fail_closed_with_no_upstream_bytes() {
    let key = random_key();
    let secret = "Jane Q. Failclosed";
    let pii_body = format!(r#"{{"payload":{{"ShippingAddress":{{"Name":"{secret}","City":"Springfield"}}}}}}"#).into_bytes();
    let oversize = {
        let mut s = format!(r#"{{"payload":{{"ShippingAddress":{{"Name":"{secret}"}},"pad":""#);
        s.push_str(&"x".repeat(9 * 1024 * 1024));
        s.push_str("\"}}");
        s.into_bytes()
    };
    let mut invalid = pii_body.clone();
    invalid.truncate(invalid.len() - 3);
    let path = |case: &str| format!("/orders/v0/orders/{case}/address");
    let cases: Vec<(&str, Value, bool, Vec<u8>, &str)> = vec![
        ("invalid-json", json!({}), false, invalid, "invalid_json"),
        ("trailing-garbage", json!({}), false, [pii_body.as_slice(), b"x"].concat(), "invalid_json"),
        ("gzip", json!({"content-encoding": "gzip"}), false, pii_body.clone(), "unsupported_content_encoding"),
        ("html", json!({"content-type": "text/html"}), false, pii_body.clone(), "unsupported_content_type"),
        ("no-type", json!({"content-type": ""}), false, pii_body.clone(), "unsupported_content_type"),
        // A charset other than UTF-8: a client decoding by it would read other members.
        ("latin1-type", json!({"content-type": "application/json; charset=\u{ff}"}), false, pii_body.clone(), "unsupported_charset"),
        ("utf8-type", json!({"content-type": "application/json; charset=utf-8"}), false, pii_body.clone(), "ok"),
        ("oversize", json!({}), false, oversize.clone(), "body_too_large"),
        ("oversize-chunked", json!({}), true, oversize, "body_too_large"),
        ("invalid-chunked", json!({}), true, pii_body[..pii_body.len() - 1].to_vec(), "invalid_json"),
    ];
    let entries: Vec<_> = cases.iter().map(|(case, headers, chunked, body, _)| (*case, "GET", path(case), 200u16, headers.clone(), *chunked, body.clone())).collect();
    let entries: Vec<_> = entries.iter().map(|(c, m, p, s, h, ch, b)| (*c, *m, p.as_str(), *s, h.clone(), *ch, b.clone())).collect();
    let dir = fixture_dir("failclosed-fixtures", &entries);
    let mut opts = Options::new("failclosed", &key);
    opts.fixture_dirs.push(dir);
    let stack = Stack::start(opts);
    for (case, _, _, _, reason) in &cases {
        let resp = stack.request("GET", &path(case), &[("x-mock-fixture", case)]);
        if *reason == "ok" {
            assert_eq!(resp.status, 200, "{case}: {}", resp.text());
            assert!(!resp.text().contains(secret), "{case}: PII passed");
            continue;
        }
        assert_eq!(resp.status, 502, "{case}: {}", resp.text());
        let body = resp.json();
        assert_eq!(body["errors"][0]["code"], "PiiProtectionFailed", "{case}");
        assert_eq!(body["errors"][0]["details"], format!("spapi-guard:{reason}"), "{case}");
        assert!(!resp.text().contains(secret) && !resp.text().contains("Springfield"), "{case}: upstream bytes reached the client");
        assert_eq!(resp.header("content-type"), Some("application/json"));
    }
    let events = stack.wait_for_audit_events(cases.len());
    let failed: BTreeMap<&str, usize> = events.iter().filter(|e| e["outcome"] == "fail_closed").fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e["reason"].as_str().expect("reason")).or_default() += 1;
        m
    });
    assert_eq!(failed.values().sum::<usize>(), cases.len() - 1, "{failed:?}");
    // The VM survived all of it.
    let fx = fixture("orders-v0_getOrderAddress_1.json");
    assert_eq!(stack.play(&fx).status, 200);
    let output = stack.envoy_output();
    assert!(!output.contains(secret) && !output.contains("panicked"), "Envoy output holds PII or a panic");
}

#[test]
fn envoy_refuses_bad_configuration_and_names_the_problem() {
    let key = random_key();
    let good_env = || vec![(KEY_VAR.to_string(), key_b64(&key))];
    let short_key = key_b64(&random_key())[..24].to_string();

    let missing = expect_refusal("refuse-missing-key", default_policy(), vec![]);
    assert!(missing.log.contains("keys.ring[0].env: environment variable SPAPI_GUARD_KEY_DEMO_1 is not set"), "{}", missing.log);

    let short = expect_refusal("refuse-short-key", default_policy(), vec![(KEY_VAR.into(), short_key.clone())]);
    assert!(short.log.contains("keys.ring[0].env: SPAPI_GUARD_KEY_DEMO_1 holds a 144-bit key"), "{}", short.log);
    assert!(!short.log.contains(&short_key), "key material in the log");

    let mut unknown = default_policy();
    unknown["tokenise"] = json!(true);
    let r = expect_refusal("refuse-unknown-field", unknown, good_env());
    assert!(r.log.contains("configuration refused: tokenise: unknown field `tokenise`"), "{}", r.log);

    let mut bad_path = default_policy();
    bad_path["catalog"] = json!({"extend": {"orders-v0.getOrder": {"responsePii": [{"jsonpath": "$.payload[?(@.x", "class": "name"}]}}});
    let r = expect_refusal("refuse-jsonpath", bad_path, good_env());
    assert!(r.log.contains("catalog.extend.orders-v0.getOrder.responsePii[0].jsonpath: '$.payload[?(@.x' is not valid JSONPath"), "{}", r.log);

    let mut inline = default_policy();
    let material = key_b64(&key);
    inline["keys"]["ring"][0]["env"] = json!(material);
    let r = expect_refusal("refuse-inline-key", inline, good_env());
    assert!(r.log.contains("keys.ring[0].env: must be the NAME of an environment variable"), "{}", r.log);

    for log in [&missing.log, &short.log, &r.log] {
        assert!(!log.contains(&material), "key material in Envoy's output");
    }
}
