//! Tokens back to data where a job needs it, end to end through a real Envoy: a label workflow
//! (tokenized ship-to address → Shipping API with the real address), a search by buyer email, and
//! the reveal endpoint — each with its refusals, and nothing of it in what Envoy prints.
mod support;

use serde_json::{json, Value};
use support::*;

const ADDRESS: &str = "orders-v0_getOrderAddress_1.json";
const SYNC: &str = "order-sync";

/// The demo policy with reveal grants: order-sync may send addresses and names to the Shipping
/// API and search orders by email; label-printer may use the reveal endpoint for addresses.
fn options(name: &'static str, key: &[u8; 32]) -> Options {
    let mut opts = Options::new(name, key);
    let p = &mut opts.policy;
    p["roles"]["order-sync"]["reveal"] = json!([
        {"classes": ["address", "name"], "operations": ["shipping-v2.getRates", "shipping-v2.directPurchaseShipment"]},
        {"classes": ["email"], "operations": ["orders-v0.getOrders"]}
    ]);
    p["roles"]["label-printer"]["operations"] = json!(["orders-v0.getOrderAddress", "shipping-v2.getRates"]);
    p["roles"]["label-printer"]["reveal"] = json!([{"classes": ["address"], "operations": ["spapi-guard.reveal"]}]);
    let rates = br#"{"payload":{"requestToken":"amzn1.rq.1","rates":[]}}"#.to_vec();
    opts.fixture_dirs.push(fixture_dir(name, &[("rates.json", "POST", "/shipping/v2/shipments/rates", 200, json!({}), false, rates)]));
    opts
}

#[test]
fn a_label_is_bought_with_the_real_address_from_tokens_and_only_by_callers_allowed_to() {
    let key = random_key();
    let stack = Stack::start(options("reveal-labels", &key));
    let fx = fixture(ADDRESS);
    let upstream: Value = serde_json::from_slice(&fx.body()).expect("fixture");
    let tokenized = stack.play(&fx).json();
    let addr = &tokenized["payload"]["ShippingAddress"];
    assert!(addr["Name"].as_str().is_some_and(|n| n.starts_with("spgt1.")), "{addr}");
    // The app builds its getRates request from what it stored: tokens.
    let body = json!({"shipTo": {"name": addr["Name"], "addressLine1": addr["AddressLine1"], "city": addr["City"],
        "stateOrRegion": addr["StateOrRegion"], "postalCode": addr["PostalCode"], "countryCode": addr["CountryCode"]},
        "shipFrom": {"name": "Seller Warehouse", "addressLine1": "1 Dock Rd", "city": "Reno", "postalCode": "89501", "countryCode": "US"},
        "note": format!("deliver to {} at the back door", addr["Name"].as_str().unwrap_or_default())})
    .to_string();
    let r = stack.send(Client::Cert(SYNC), "POST", "/shipping/v2/shipments/rates", &[("x-mock-fixture", "rates.json")], None, Some(&body)).expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    let calls = stack.mock_calls();
    let call = calls.iter().rev().find(|c| c["path"] == "/shipping/v2/shipments/rates").expect("forwarded");
    let received: Value = serde_json::from_str(call["body"].as_str().expect("body")).expect("json");
    let want = &upstream["payload"]["ShippingAddress"];
    for (ours, theirs) in [("name", "Name"), ("addressLine1", "AddressLine1"), ("city", "City"), ("stateOrRegion", "StateOrRegion"), ("postalCode", "PostalCode")] {
        assert_eq!(received["shipTo"][ours], want[theirs], "{ours}: the upstream got {}", received["shipTo"][ours]);
    }
    assert_eq!(received["note"], format!("deliver to {} at the back door", want["Name"].as_str().unwrap_or_default()));
    let sent = call["body"].as_str().unwrap_or_default().len().to_string();
    assert_eq!(call["headers"]["content-length"].as_str(), Some(sent.as_str()), "content-length of the rewritten body");

    // label-printer may call getRates but has no reveal grant toward it: 403, nothing forwarded.
    let before = stack.mock_calls().len();
    let r = stack.send(Client::Cert("label-printer"), "POST", "/shipping/v2/shipments/rates", &[("x-mock-fixture", "rates.json")], None, Some(&body)).expect("curl");
    assert_eq!((r.status, r.header("x-spapi-guard")), (403, Some("detokenize_not_allowed")));
    assert_eq!(stack.mock_calls().len(), before, "the upstream received a request it should not have");
    // A forged token: 400, nothing forwarded.
    let forged = body.replace(".name.", ".address.");
    let r = stack.send(Client::Cert(SYNC), "POST", "/shipping/v2/shipments/rates", &[("x-mock-fixture", "rates.json")], None, Some(&forged)).expect("curl");
    assert_eq!((r.status, r.header("x-spapi-guard")), (400, Some("invalid_token")));
    assert_eq!(stack.mock_calls().len(), before);

    // Over HTTP/2, the body in several frames and ended by trailers: the same plaintext arrives.
    let h2 = stack.h2(&H2Request::new(Client::Cert(SYNC), "POST", "/shipping/v2/shipments/rates")
        .header("x-mock-fixture", "rates.json")
        .header("content-type", "application/json")
        .body(body.as_bytes())
        .chunks(3)
        .trailer("x-end", "1"));
    assert_eq!(h2.status, Some(200), "{h2:?}");
    let calls = stack.mock_calls();
    let call = calls.iter().rev().find(|c| c["path"] == "/shipping/v2/shipments/rates").expect("forwarded");
    let received: Value = serde_json::from_str(call["body"].as_str().expect("body")).expect("json");
    assert_eq!(received["shipTo"]["name"], want["Name"]);

    let events = stack.wait_for_audit_events(6);
    let revealed: Vec<&Value> = events.iter().filter(|e| e["operation"] == "shipping-v2.getRates" && e["decision"] == "allow").collect();
    assert_eq!(revealed.len(), 2);
    assert!(revealed.iter().all(|e| e["pii"]["name"]["revealed"] == 2 && e["pii"]["address"]["revealed"] == 4), "{revealed:?}");
    let op = spapi_guard::catalog::Catalog::build(&Default::default()).expect("catalog");
    let op = op.get("orders-v0.getOrderAddress").expect("op");
    assert_nothing_printed_holds(&stack, &distinctive_pii(op, &upstream), "label workflow");
}

#[test]
fn a_search_by_email_token_reaches_amazon_as_the_email_and_the_log_as_redacted() {
    let key = random_key();
    let stack = Stack::start(options("reveal-email", &key));
    let email = engine(&key)
        .seal(now_ms(), spapi_guard::pii::PiiClass::Email, spapi_guard::tokens::Mode::Deterministic, spapi_guard::tokens::ValueKind::Text, b"jane+1@example.com")
        .expect("sealed");
    let orders = fixture("orders-v0_getOrders_1.json");
    let path = format!("/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&BuyerEmail={email}");
    let r = stack.send(Client::Cert(SYNC), "GET", &path, &[("x-mock-fixture", &orders.file)], None, None).expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    let calls = stack.mock_calls();
    assert_eq!(calls.last().map(|c| c["path"].clone()), Some(json!("/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&BuyerEmail=jane%2B1%40example.com")));
    let events = stack.wait_for_audit_events(1);
    assert_eq!(events[0]["path"], "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&BuyerEmail={redacted}");
    assert_eq!(events[0]["pii"]["email"]["revealed"], 1);
    // The token percent-encoded (in the query Envoy does not decode it): refused, nothing forwarded.
    let encoded = path.replace("BuyerEmail=spgt1.", "BuyerEmail=%73pgt1.");
    let before = stack.mock_calls().len();
    let r = stack.send(Client::Cert(SYNC), "GET", &encoded, &[("x-mock-fixture", &orders.file)], None, None).expect("curl");
    assert_eq!((r.status, r.header("x-spapi-guard")), (400, Some("invalid_token")), "{}", r.text());
    assert_eq!(stack.mock_calls().len(), before, "an encoded token was forwarded");
    let printed = stack.envoy_output();
    assert!(!printed.contains("jane+1") && !printed.contains("jane%2B1"), "the email reached Envoy's output");
}

#[test]
fn the_reveal_endpoint_answers_granted_callers_only() {
    let key = random_key();
    let stack = Stack::start(options("reveal-endpoint", &key));
    let fx = fixture(ADDRESS);
    let tokenized = stack.play(&fx).json();
    let addr = &tokenized["payload"]["ShippingAddress"];
    let ask = |client: Client, tokens: Vec<&Value>| {
        let body = json!({ "tokens": tokens }).to_string();
        stack.send(client, "POST", "/spapi-guard/v1/reveal", &[], None, Some(&body)).expect("curl")
    };
    let r = ask(Client::Cert("label-printer"), vec![&addr["City"], &addr["PostalCode"]]);
    assert_eq!((r.status, r.header("cache-control")), (200, Some("no-store")), "{}", r.text());
    assert_eq!(r.json(), json!({"values": ["Canton", "48817"]}));
    // A name is not in label-printer's grant; order-sync has no grant on the endpoint; an
    // intruder is unknown; a forged token is refused.
    assert_eq!(ask(Client::Cert("label-printer"), vec![&addr["Name"]]).header("x-spapi-guard"), Some("detokenize_not_allowed"));
    assert_eq!(ask(Client::Cert(SYNC), vec![&addr["City"]]).header("x-spapi-guard"), Some("operation_not_allowed"));
    assert_eq!(ask(Client::Cert("intruder"), vec![&addr["City"]]).header("x-spapi-guard"), Some("unknown_caller"));
    let forged = json!(addr["City"].as_str().unwrap_or_default().replace(".address.", ".name."));
    assert_eq!(ask(Client::Cert("label-printer"), vec![&forged]).status, 400);
    assert!(stack.mock_calls().iter().all(|c| c["path"] != "/spapi-guard/v1/reveal"), "the endpoint was forwarded upstream");
    let events = stack.wait_for_audit_events(6);
    let answered: Vec<&Value> = events.iter().filter(|e| e["outcome"] == "revealed").collect();
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0]["pii"], json!({"address": {"revealed": 2}}));
    let printed = stack.envoy_output();
    assert!(!printed.contains("Canton") && !printed.contains("48817"), "a revealed value reached Envoy's output");
}
