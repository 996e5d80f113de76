//! Approved third-party upstreams, end to end through a real Envoy: a mock carrier served over TLS
//! (tests/fake_amazon.py with a certificate for `carrier.test` from its own test CA,
//! tests/gen-amazon-certs.sh) that records what it receives. A named upstream receives plaintext;
//! an unnamed host (the mock SP-API, any other path, a route Envoy would take elsewhere) never
//! does; the carrier's responses are protected by its own catalog.
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const ADDRESS: &str = "orders-v0_getOrderAddress_1.json";
const SHIPMENTS: &str = "/upstreams/carrier/v1/shipments";
/// What the carrier answers a shipment: the label's ship-to address (customer data).
const CARRIER_REPLY: &[u8] = br#"{"shipmentId":"S-1","trackingId":"1Z999","label":{"shipTo":{"name":"Ada Lovelace","addressLine1":"12 Analytical Row","city":"Marylebone"}}}"#;

/// The test PKI (shared with tests/production.rs's script), made once per test run.
fn pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo().join("target/e2e/upstream-certs");
        let _ = fs::remove_dir_all(&dir);
        let ok = Command::new("bash").arg(repo().join("tests/gen-amazon-certs.sh")).arg(&dir).stdout(Stdio::null()).status().expect("bash");
        assert!(ok.success(), "gen-amazon-certs.sh failed");
        dir
    })
}

/// The mock carrier: HTTPS on a loopback port, recording each request and the body it carried.
struct Carrier {
    child: Child,
    events: PathBuf,
    port: u16,
}

impl Carrier {
    /// `cert`: `carrier` (from the carrier's CA) or `carrier-other-ca` (a CA its caFile lacks).
    fn start(name: &'static str, cert: &str) -> Carrier {
        let port = free_port();
        let fixtures = fixture_dir(
            name,
            &[
                ("shipment.json", "POST", "/v1/shipments", 200, json!({"content-type": "application/json"}), false, CARRIER_REPLY.to_vec()),
                ("tracking.json", "GET", "/v1/tracking/1Z999", 200, json!({"content-type": "application/json"}), false, br#"{"status":"in transit"}"#.to_vec()),
            ],
        );
        let events = fixtures.join("carrier-events.jsonl");
        let child = Command::new("python3")
            .arg(repo().join("tests/fake_amazon.py"))
            .args(["serve", "--port", &port.to_string()])
            .arg("--events")
            .arg(&events)
            .arg("--cert")
            .arg(pki().join(format!("{cert}.crt")))
            .arg("--key")
            .arg(pki().join(format!("{cert}.key")))
            .arg(&fixtures)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("fake_amazon.py");
        let carrier = Carrier { child, events, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !carrier.events().iter().any(|e| e["event"] == "listening") {
            assert!(Instant::now() < deadline, "the mock carrier did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        carrier
    }

    fn events(&self) -> Vec<Value> {
        fs::read_to_string(&self.events).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// What the carrier received: (path, body) of each request it answered.
    fn received(&self) -> Vec<(String, String)> {
        self.events().iter().filter(|e| e["event"] == "received").map(|e| (e["path"].as_str().unwrap_or("").to_string(), e["body"].as_str().unwrap_or("").to_string())).collect()
    }

    /// Everything the carrier recorded, as text (to look for values).
    fn log(&self) -> String {
        fs::read_to_string(&self.events).unwrap_or_default()
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo policy with the carrier as an approved upstream: order-sync may send addresses and
/// names to it (its `*` alone would not reach it: `carrier.*` names it); label-printer may call
/// it without a reveal grant; analytics may not call it.
fn options(name: &'static str, key: &[u8; 32], carrier: &Carrier) -> Options {
    let mut opts = Options::new(name, key);
    let p = &mut opts.policy;
    p["upstreams"] = json!({"carrier": {
        "routePrefix": "/upstreams/carrier/",
        "address": {"host": "127.0.0.1", "port": carrier.port},
        "tls": {"caFile": pki().join("carrier-ca.crt").display().to_string(), "serverName": "carrier.test"},
        "operations": [
            {"id": "createShipment", "method": "POST", "pathTemplate": "/v1/shipments",
             "customerObjects": [{"jsonpath": "$.label.shipTo", "class": "address"}]},
            {"id": "getTracking", "method": "GET", "pathTemplate": "/v1/tracking/{trackingId}"}
        ]
    }});
    p["roles"]["order-sync"]["operations"] = json!(["*", "carrier.*"]);
    p["roles"]["order-sync"]["reveal"] = json!([{"classes": ["address", "name"], "upstreams": ["carrier"]}]);
    p["roles"]["label-printer"]["operations"].as_array_mut().expect("list").push(json!("carrier.*"));
    opts
}

/// A shipment request built from what the app stored: the tokenized ship-to address.
fn shipment_from(addr: &Value) -> String {
    json!({"shipTo": {"name": addr["Name"], "addressLine1": addr["AddressLine1"], "city": addr["City"], "postalCode": addr["PostalCode"], "countryCode": addr["CountryCode"]},
           "service": "ground", "note": format!("for {}", addr["Name"].as_str().unwrap_or_default())})
    .to_string()
}

#[test]
fn a_named_upstream_receives_the_plaintext_and_a_caller_without_the_grant_sends_nothing() {
    let key = random_key();
    let carrier = Carrier::start("upstream-carrier", "carrier");
    let stack = Stack::start(options("upstreams-label", &key, &carrier));
    let fx = fixture(ADDRESS);
    let upstream: Value = serde_json::from_slice(&fx.body()).expect("fixture");
    let want = &upstream["payload"]["ShippingAddress"];
    let tokenized = stack.play(&fx).json();
    let addr = &tokenized["payload"]["ShippingAddress"];
    assert!(addr["Name"].as_str().is_some_and(|n| n.starts_with("spgt1.")), "{addr}");
    let body = shipment_from(addr);

    let r = stack.send(Client::Cert(ORDER_SYNC), "POST", SHIPMENTS, &[("content-type", "application/json")], None, Some(&body)).expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    let received = carrier.received();
    let (path, sent) = received.last().expect("the carrier received the shipment");
    assert_eq!(path, "/v1/shipments", "the prefix is rewritten to /");
    let sent: Value = serde_json::from_str(sent).expect("json");
    for (ours, theirs) in [("name", "Name"), ("addressLine1", "AddressLine1"), ("city", "City"), ("postalCode", "PostalCode")] {
        assert_eq!(sent["shipTo"][ours], want[theirs], "{ours}: the carrier got {}", sent["shipTo"][ours]);
    }
    assert_eq!(sent["note"], format!("for {}", want["Name"].as_str().unwrap_or_default()));
    let request = carrier.events().into_iter().rfind(|e| e["event"] == "request").expect("request");
    assert_eq!((request["sni"].as_str(), request["headers"]["host"].as_str()), (Some("carrier.test"), Some("carrier.test")));
    // The carrier's answer is protected by its catalog: order-sync gets tokens, never the names.
    let answer = r.json();
    assert_eq!(answer["shipmentId"], "S-1");
    for member in ["name", "addressLine1", "city"] {
        assert!(answer["label"]["shipTo"][member].as_str().is_some_and(|t| t.starts_with("spgt1.")), "{member}: {answer}");
    }

    // label-printer may call the carrier but not reveal there: 403, the carrier gets nothing.
    let before = carrier.received().len();
    let r = stack.send(Client::Cert("label-printer"), "POST", SHIPMENTS, &[("content-type", "application/json")], None, Some(&body)).expect("curl");
    assert_eq!((r.status, r.header("x-spapi-guard")), (403, Some("detokenize_not_allowed")));
    // analytics may not call it at all; a forged token is refused.
    let r = stack.send(Client::Cert("analytics"), "POST", SHIPMENTS, &[], None, Some(&body)).expect("curl");
    assert_eq!((r.status, r.header("x-spapi-guard")), (403, Some("operation_not_allowed")));
    let r = stack.send(Client::Cert(ORDER_SYNC), "POST", SHIPMENTS, &[], None, Some(&body.replace(".name.", ".address."))).expect("curl");
    assert_eq!((r.status, r.header("x-spapi-guard")), (400, Some("invalid_token")));
    assert_eq!(carrier.received().len(), before, "the carrier received a request it should not have");

    // HTTP/2, the body in several frames and ended by trailers: the same plaintext arrives.
    let h2 =
        stack.h2(&H2Request::new(Client::Cert(ORDER_SYNC), "POST", SHIPMENTS).header("content-type", "application/json").body(body.as_bytes()).chunks(4).trailer("x-end", "1"));
    assert_eq!(h2.status, Some(200), "{h2:?}");
    let (_, sent) = carrier.received().pop().expect("h2 shipment");
    let sent: Value = serde_json::from_str(&sent).expect("json");
    assert_eq!(sent["shipTo"]["name"], want["Name"]);

    let events = stack.wait_for_audit_events(6);
    let shipped: Vec<&Value> = events.iter().filter(|e| e["operation"] == "carrier.createShipment" && e["decision"] == "allow").collect();
    assert_eq!(shipped.len(), 2, "{events:?}");
    for e in &shipped {
        assert_eq!((e["upstream"].as_str(), e["path"].as_str(), e["outcome"].as_str()), (Some("carrier"), Some(SHIPMENTS), Some("protected")), "{e}");
        assert_eq!((e["pii"]["name"]["revealed"].as_u64(), e["pii"]["address"]["revealed"].as_u64()), (Some(2), Some(3)), "{e}");
    }
    // Nothing of it in what Envoy printed; the mock SP-API never saw the plaintext.
    let mut pii = distinctive_pii(spapi_guard::catalog::Catalog::build(&Default::default()).expect("catalog").get("orders-v0.getOrderAddress").expect("op"), &upstream);
    pii.extend(["Ada Lovelace", "Analytical Row", "Marylebone"].map(String::from));
    assert_nothing_printed_holds(&stack, &pii, "carrier workflow");
    let mock = serde_json::to_string(&stack.mock_calls()).expect("json");
    assert!(!mock.contains(want["Name"].as_str().unwrap_or("?")), "the SP-API mock received the plaintext");

    // A token in the path: the filter rewrites :path, Envoy selects the route again, and the
    // request still goes to the carrier's cluster only (the filter re-reads xds.cluster_name).
    let city = addr["City"].as_str().expect("tokenized city");
    let r = stack.send(Client::Cert(ORDER_SYNC), "GET", &format!("/upstreams/carrier/v1/tracking/{city}"), &[], None, None).expect("curl");
    // (The carrier, a fixture server, has no tracking fixture: it answers 404 after recording.)
    assert_eq!(r.status, 404, "{}", r.text());
    let (path, _) = carrier.received().pop().expect("the tracking request");
    let plain = want["City"].as_str().expect("city");
    let encoded: String = plain.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
    assert!(path == format!("/v1/tracking/{plain}") || path == format!("/v1/tracking/{encoded}"), "the carrier got {path}");
}

#[test]
fn an_unnamed_host_or_path_never_receives_plaintext() {
    let key = random_key();
    let carrier = Carrier::start("upstream-unnamed", "carrier");
    let stack = Stack::start(options("upstreams-unnamed", &key, &carrier));
    let fx = fixture(ADDRESS);
    let upstream: Value = serde_json::from_slice(&fx.body()).expect("fixture");
    let name = upstream["payload"]["ShippingAddress"]["Name"].as_str().expect("name").to_string();
    let tokenized = stack.play(&fx).json();
    let body = shipment_from(&tokenized["payload"]["ShippingAddress"]);
    let plaintext_reached = |what: &str| {
        let mock = serde_json::to_string(&stack.mock_calls()).expect("json");
        assert!(!mock.contains(&name), "{what}: the mock SP-API received the plaintext");
    };
    // Paths outside the prefix, in other spellings and cases: refused, never detokenized.
    for path in
        ["/upstreams/carrierx/v1/shipments", "/Upstreams/carrier/v1/shipments", "/carrier/v1/shipments", "/upstreams/carrier", "/upstreams/carrier/v1/shipments/..%2F..%2Fx"]
    {
        let r = stack.send(Client::Cert(ORDER_SYNC), "POST", path, &[], None, Some(&body)).expect("curl");
        assert!(matches!(r.status, 400 | 403 | 404), "{path}: {} {}", r.status, r.text());
        plaintext_reached(path);
    }
    // A percent-encoded prefix: whatever Envoy's route makes of it, plaintext goes to the carrier
    // or nowhere.
    let before = carrier.received().len();
    let r = stack.send(Client::Cert(ORDER_SYNC), "POST", "/upstreams/%63arrier/v1/shipments", &[], None, Some(&body)).expect("curl");
    match r.status {
        200 => assert_eq!(carrier.received().len(), before + 1),
        _ => assert_eq!((r.status, r.header("x-spapi-guard")), (403, Some("destination_mismatch")), "{}", r.text()),
    }
    plaintext_reached("percent-encoded prefix");
    // Another host name: the route is the carrier's in every virtual host.
    let r = stack.send(Client::Cert(ORDER_SYNC), "POST", SHIPMENTS, &[("host", "sellingpartnerapi-na.evil.example")], None, Some(&body)).expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    let h2 = stack.h2(&H2Request::new(Client::Cert(ORDER_SYNC), "POST", "/upstreams/carrierx/v1/shipments").body(body.as_bytes()).chunks(2));
    assert_eq!(h2.status, Some(403), "{h2:?}");
    plaintext_reached("other host names");
    let events = stack.wait_for_audit_events(10);
    assert!(events.iter().all(|e| e["path"].as_str().is_some_and(|p| !p.contains("spgt1."))), "a token in an audit path");
}

#[test]
fn requests_go_only_to_the_cluster_they_were_decided_for() {
    // An Envoy config whose routes disagree with the policy: the carrier's prefix led to the
    // SP-API cluster, and the Shipping API to the carrier's cluster. The filter reads the cluster
    // Envoy selected (xds.cluster_name) and refuses both: nothing reaches either side.
    let key = random_key();
    let carrier = Carrier::start("upstream-bound", "carrier");
    let mut opts = options("upstreams-bound", &key, &carrier);
    opts.policy["roles"]["order-sync"]["reveal"].as_array_mut().expect("list").push(json!({"classes": ["address", "name"], "operations": ["shipping-v2.getRates"]}));
    opts.config_edit = Some(Box::new(|text: String| {
        let swapped = text.replacen("route: { cluster: upstream_carrier,", "route: { cluster: spapi,", 1);
        let shipping = "              - match: { prefix: \"/shipping/\" }\n                route: { cluster: upstream_carrier, timeout: 30s }\n";
        let anchor = "              - match: { prefix: \"/\" }\n                route: { cluster: spapi, timeout: 30s }\n";
        assert!(swapped.contains(anchor), "the demo route moved");
        swapped.replacen(anchor, &format!("{shipping}{anchor}"), 1)
    }));
    let stack = Stack::start(opts);
    let tokenized = stack.play(&fixture(ADDRESS)).json();
    let body = shipment_from(&tokenized["payload"]["ShippingAddress"]);
    let calls = stack.mock_calls().len();
    let r = stack.send(Client::Cert(ORDER_SYNC), "POST", SHIPMENTS, &[], None, Some(&body)).expect("curl");
    assert_eq!((r.status, r.header("x-spapi-guard")), (403, Some("destination_mismatch")), "{}", r.text());
    let r = stack.send(Client::Cert(ORDER_SYNC), "POST", "/shipping/v2/shipments/rates", &[], None, Some(&body)).expect("curl");
    assert_eq!((r.status, r.header("x-spapi-guard")), (403, Some("destination_mismatch")), "{}", r.text());
    assert_eq!(stack.mock_calls().len(), calls, "the SP-API mock received a request");
    assert!(carrier.received().is_empty(), "the carrier received a request");
    let events = stack.wait_for_audit_events(3);
    assert_eq!(events.iter().filter(|e| e["reason"] == "destination_mismatch").count(), 2, "{events:?}");
}

#[test]
fn the_carriers_certificate_is_verified_against_its_own_ca() {
    // A server for carrier.test whose certificate comes from a CA the carrier's caFile does not
    // hold (it is trusted for nothing here): the handshake fails, no byte of the request leaves.
    let key = random_key();
    let carrier = Carrier::start("upstream-other-ca", "carrier-other-ca");
    let stack = Stack::start(options("upstreams-other-ca", &key, &carrier));
    let tokenized = stack.play(&fixture(ADDRESS)).json();
    let body = shipment_from(&tokenized["payload"]["ShippingAddress"]);
    let r = stack.send(Client::Cert(ORDER_SYNC), "POST", SHIPMENTS, &[], None, Some(&body)).expect("curl");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(carrier.events().iter().any(|e| e["event"] == "handshake" && e["ok"] == false), "{}", carrier.log());
    assert!(carrier.received().is_empty() && !carrier.log().contains("\"request\""), "{}", carrier.log());
    let events = stack.wait_for_audit_events(2);
    let failed = events.iter().find(|e| e["operation"] == "carrier.createShipment").expect("audited");
    assert_eq!((failed["outcome"].as_str(), failed["upstream"].as_str()), (Some("upstream_failed"), Some("carrier")), "{failed}");
}
