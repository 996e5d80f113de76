//! Audit log, metrics and canaries end to end (DPP 2.6), through a real Envoy.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Command;

use serde_json::{json, Value};
use spapi_guard::catalog::{Catalog, CatalogOverrides};
use spapi_guard::metrics::METRICS;
use spapi_guard::pii::PiiClass;
use support::*;

/// Bodies the filter must refuse, each carrying real PII of the Amazon fixtures.
fn fail_closed_fixtures(name: &str) -> std::path::PathBuf {
    let body = fixture("orders-v0_getOrderAddress_1.json").body();
    let truncated = body[..body.len() - 5].to_vec();
    fixture_dir(
        name,
        &[
            ("fc-invalid", "GET", "/orders/v0/orders/FC-INVALID/address", 200, json!({}), false, truncated),
            ("fc-gzip", "GET", "/orders/v0/orders/FC-GZIP/address", 200, json!({"content-encoding": "gzip"}), false, body),
        ],
    )
}

/// Every PII string of every Amazon fixture that is distinctive enough to look for in logs.
fn fixture_pii_strings() -> BTreeSet<String> {
    let catalog = Catalog::build(&CatalogOverrides::default()).expect("catalog");
    // Query values of non-PII parameters (CreatedAfter=TEST_CASE_200…) are logged by design; a PII
    // field of some example that holds the same text is not a leak.
    let query_values: BTreeSet<String> =
        response_fixtures().iter().flat_map(|f| f.query.split('&').filter_map(|p| p.split_once('=').map(|(_, v)| v.to_string())).collect::<Vec<_>>()).collect();
    let mut out = BTreeSet::new();
    for fx in response_fixtures() {
        let Some(op) = catalog.route(&fx.method, &fx.path) else { continue };
        let Ok(body) = serde_json::from_slice::<Value>(&fx.body()) else { continue };
        for p in reference_pii(op, &body) {
            if let Value::String(s) = p.value {
                let letters = s.chars().any(char::is_alphabetic);
                let digits = s.chars().filter(char::is_ascii_digit).count();
                // (Amazon's examples give one customer the name "Amazon", which the filter's own
                // messages name too: "Amazon's SDKs".)
                if ((letters && s.chars().count() >= 4) || digits >= 8) && !query_values.contains(&s) && s != "Amazon" {
                    out.insert(s);
                }
            }
        }
    }
    out
}

#[test]
fn everything_envoy_prints_is_free_of_pii_and_keys_and_every_request_is_audited() {
    let key = random_key();
    let mut opts = Options::new("no-pii-anywhere", &key);
    opts.fixture_dirs.push(fail_closed_fixtures("no-pii-fixtures"));
    opts.policy["access"]["lockout"] = json!({"maxDenials": 3, "windowSeconds": 60, "cooldownSeconds": 60});
    opts.policy["canaries"] = json!({"records": [{"id": "buyer-trap", "value": "Michigan address"}]});
    let stack = Stack::start(opts);
    let fixtures = response_fixtures();
    let mut sent = 0;

    // Allowed and denied callers over every fixture.
    for caller in ["order-sync", "label-printer"] {
        for fx in &fixtures {
            stack.play_as(Client::Cert(caller), fx);
            sent += 1;
        }
    }
    for fx in fixtures.iter().take(5) {
        stack.play_as(Client::Cert("intruder"), fx);
        stack.play_as(Client::NoCert, fx);
        stack.play_as(Client::Plaintext, fx);
        sent += 3;
    }
    // Fail-closed bodies carrying PII.
    for case in ["fc-invalid", "fc-gzip"] {
        let resp = stack.request("GET", &format!("/orders/v0/orders/{}/address", case.to_uppercase()), &[("x-mock-fixture", case)]);
        assert_eq!(resp.status, 502);
        sent += 1;
    }
    // A lockout: analytics denied three times, then locked.
    let orders = fixture("orders-v0_getOrders_1.json");
    for _ in 0..3 {
        assert_eq!(stack.play_as(Client::Cert("analytics"), &orders).status, 403);
        sent += 1;
    }
    assert_eq!(stack.play_as(Client::Cert("analytics"), &fixture("orders-2026-01-01_searchOrders_1.json")).status, 403);
    sent += 1;
    // A buyer email in a query string (getOrders BuyerEmail): the redacted path hides it.
    let email = "jane.buyer.querytest@example.com";
    let with_email = stack.request("GET", &format!("/orders/v0/orders?BuyerEmail={}&MarketplaceIds=ATVPDKIKX0DER", email.replace('@', "%40")), &[("x-mock-fixture", &orders.file)]);
    assert_eq!(with_email.status, 200);
    sent += 1;

    // Exactly one audit event per request, every line JSON, all valid against the schema.
    let events = stack.wait_for_audit_events(sent);
    assert_eq!(events.len(), sent, "audit events vs requests");
    assert!(events.iter().all(|e| e["event"] == "request"), "a request the filter did not audit");
    let decision_ids: BTreeSet<&str> = events.iter().map(|e| e["decision_id"].as_str().expect("id")).collect();
    assert_eq!(decision_ids.len(), sent, "decision ids are unique");
    let decisions: BTreeSet<&str> = events.iter().map(|e| e["decision"].as_str().expect("decision")).collect();
    assert_eq!(decisions, ["allow", "deny", "fail_closed", "lockout"].into_iter().collect());
    let request_id = with_email.header("x-request-id").expect("request id");
    let event = events.iter().find(|e| e["request_id"] == request_id).expect("the BuyerEmail request's event");
    assert_eq!(event["path"], "/orders/v0/orders?BuyerEmail={redacted}&MarketplaceIds=ATVPDKIKX0DER");
    assert!(events.iter().any(|e| e["canaries"] == json!(["buyer-trap"])));
    let security = stack.wait_for_security_event("canary_hit");
    let kinds: BTreeSet<&str> = security.iter().map(|e| e["event"].as_str().expect("event")).collect();
    for kind in ["config_loaded", "lockout_started", "canary_hit", "fail_closed"] {
        assert!(kinds.contains(kind), "no {kind} event: {kinds:?}");
    }
    let lines: Vec<String> = events.iter().chain(security.iter()).map(Value::to_string).collect();
    let events_file = stack.dir.join("events.jsonl");
    fs::write(&events_file, lines.join("\n") + "\n").expect("write");
    let validated = Command::new(repo().join(".venv/bin/python")).arg(repo().join("tests/validate_events.py")).arg(&events_file).output().expect("python");
    assert!(validated.status.success(), "schema: {}", String::from_utf8_lossy(&validated.stdout));

    // Everything Envoy printed: stdout (audit log), stderr (its log and the filter's), admin stats.
    let mut printed = stack.envoy_output();
    printed.push_str(&stack.stats());
    printed.push_str(&String::from_utf8_lossy(&curl(stack.admin_port, "GET", "/stats/prometheus", &[]).body));
    printed.push_str(&String::from_utf8_lossy(&curl(stack.admin_port, "GET", "/config_dump?mask=static_resources", &[]).body));
    let pii = fixture_pii_strings();
    assert!(pii.len() > 120, "only {} PII strings to look for", pii.len());
    let leaked: Vec<&String> = pii.iter().filter(|v| printed.contains(v.as_str())).collect();
    assert!(leaked.is_empty(), "PII in Envoy's output: {leaked:?}");
    for secret in [email.to_string(), "Michigan address".to_string(), key_b64(&key), key.iter().map(|b| format!("{b:02x}")).collect()] {
        assert!(!printed.contains(&secret), "found in Envoy's output: a PII value, the canary or key material");
    }
}

#[test]
fn metrics_equal_the_traffic_sent() {
    let key = random_key();
    let mut opts = Options::new("metrics", &key);
    opts.fixture_dirs.push(fail_closed_fixtures("metrics-fixtures"));
    let stack = Stack::start(opts);
    let address = fixture("orders-v0_getOrderAddress_1.json");
    let orders = fixture("orders-v0_getOrders_1.json");
    let rdt = fixture("tokens-2021-03-01_createRestrictedDataToken_1.json");
    for _ in 0..3 {
        assert_eq!(stack.play_as(Client::Cert("order-sync"), &address).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(stack.play_as(Client::Cert("label-printer"), &address).status, 200);
        assert_eq!(stack.play_as(Client::Cert("analytics"), &orders).status, 403);
    }
    assert_eq!(stack.play_as(Client::Cert("intruder"), &address).status, 403);
    assert_eq!(stack.play_as(Client::Cert("order-sync"), &rdt).status, 200);
    assert_eq!(stack.request("GET", "/orders/v0/orders/FC-GZIP/address", &[("x-mock-fixture", "fc-gzip")]).status, 502);
    let events = stack.wait_for_audit_events(10);
    assert_eq!(events.len(), 10);

    let sync = "spiffe://spapi-guard.demo/order-sync";
    let labels = "spiffe://spapi-guard.demo/label-printer";
    let analytics = "spiffe://spapi-guard.demo/analytics";
    // policies/default.json: demo-1 serves every class until 2030-12-31 (its last second's end).
    let demo_key_end = spapi_guard::keyring::parse_instant("2031-01-01", false).expect("date") / 1000;
    let expected: BTreeMap<String, u64> = [
        (r#"spapi_guard_requests_total{operation="orders-v0.getOrderAddress",decision="allow"}"#.to_string(), 5),
        (r#"spapi_guard_requests_total{operation="orders-v0.getOrderAddress",decision="deny"}"#.to_string(), 1),
        (r#"spapi_guard_requests_total{operation="orders-v0.getOrderAddress",decision="fail_closed"}"#.to_string(), 1),
        (r#"spapi_guard_requests_total{operation="orders-v0.getOrders",decision="deny"}"#.to_string(), 2),
        (r#"spapi_guard_requests_total{operation="tokens-2021-03-01.createRestrictedDataToken",decision="allow"}"#.to_string(), 1),
        (r#"spapi_guard_denials_total{reason="operation_not_allowed"}"#.to_string(), 2),
        (r#"spapi_guard_denials_total{reason="unknown_caller"}"#.to_string(), 1),
        (format!(r#"spapi_guard_caller_requests_total{{caller="{sync}"}}"#), 5),
        (format!(r#"spapi_guard_caller_requests_total{{caller="{labels}"}}"#), 2),
        (format!(r#"spapi_guard_caller_requests_total{{caller="{analytics}"}}"#), 2),
        (r#"spapi_guard_caller_requests_total{caller="unknown"}"#.to_string(), 1),
        (format!(r#"spapi_guard_caller_denials_total{{caller="{analytics}"}}"#), 2),
        (r#"spapi_guard_caller_denials_total{caller="unknown"}"#.to_string(), 1),
        // Per address response: 6 address strings tokenized, 2 coordinates coarsened, 1 name;
        // CountryCode is not PII on its own (clear, not counted).
        (format!(r#"spapi_guard_caller_pii_fields_total{{caller="{sync}"}}"#), 27),
        (format!(r#"spapi_guard_caller_pii_fields_total{{caller="{labels}"}}"#), 16),
        (r#"spapi_guard_pii_fields_total{action="tokenized",class="address"}"#.to_string(), 18),
        (r#"spapi_guard_pii_fields_total{action="coarsened",class="address"}"#.to_string(), 6),
        (r#"spapi_guard_pii_fields_total{action="tokenized",class="name"}"#.to_string(), 3),
        (r#"spapi_guard_pii_fields_total{action="clear",class="address"}"#.to_string(), 16),
        (r#"spapi_guard_pii_fields_total{action="removed",class="name"}"#.to_string(), 2),
        (r#"spapi_guard_fail_closed_total{reason="unsupported_content_encoding"}"#.to_string(), 1),
        (r#"spapi_guard_config_total{result="loaded"}"#.to_string(), 3),
        // The key ring's gauges (src/key_status.rs).
        (r#"spapi_guard_key_info{key_id="demo-1",state="active"}"#.to_string(), 1),
        (r#"spapi_guard_key_info{key_id="demo-1",state="pending"}"#.to_string(), 0),
        (r#"spapi_guard_key_info{key_id="demo-1",state="readable"}"#.to_string(), 0),
        (r#"spapi_guard_key_info{key_id="demo-1",state="expired"}"#.to_string(), 0),
    ]
    .into_iter()
    .chain(PiiClass::ALL.map(|class| (format!(r#"spapi_guard_key_active_until_seconds{{class="{class}"}}"#), demo_key_end)))
    .collect();
    // The demo key makes every token (all classes deterministic here): tokens per key = tokenized values.
    let tokenized = expected.iter().filter(|(k, _)| k.starts_with(r#"spapi_guard_pii_fields_total{action="tokenized""#)).map(|(_, v)| v).sum();
    let mut expected = expected;
    expected.insert(r#"spapi_guard_key_tokens_total{key_id="demo-1",mode="deterministic"}"#.to_string(), tokenized);
    let mut metrics = stack.metrics();
    let bytes_in = metrics.remove(r#"spapi_guard_body_bytes_total{direction="upstream"}"#).expect("bytes in");
    let bytes_out = metrics.remove(r#"spapi_guard_body_bytes_total{direction="downstream"}"#).expect("bytes out");
    // Envoy lists label pairs in its own order: compare as sets of (name, labels).
    let normalize = |m: &BTreeMap<String, u64>| -> BTreeMap<(String, BTreeSet<String>), u64> {
        m.iter()
            .map(|(k, v)| {
                let (name, labels) = k.split_once('{').expect("labels");
                let labels = labels.trim_end_matches('}').split("\",").map(|l| l.trim_end_matches('"').to_string()).collect();
                ((name.to_string(), labels), *v)
            })
            .collect()
    };
    assert_eq!(normalize(&metrics), normalize(&expected));
    let sum = |field: &str| events.iter().map(|e| e[field].as_u64().expect("bytes")).sum::<u64>();
    assert_eq!((bytes_in, bytes_out), (sum("bytes_in"), sum("bytes_out")), "body bytes = the audit log's");
    let upstream_address_bytes = address.body().len() as u64;
    assert!(events.iter().filter(|e| e["decision"] == "allow" && e["operation"] == "orders-v0.getOrderAddress").all(|e| e["bytes_in"] == upstream_address_bytes));

    // Every metric the alert rules use is one the filter emits (and this traffic produced).
    let rules = fs::read_to_string(repo().join("monitoring/alerts.yml")).expect("alerts.yml");
    let used: BTreeSet<&str> = rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("spapi_guard_")).collect();
    assert!(used.len() >= 7, "{used:?}");
    let emitted: BTreeSet<&str> = METRICS.iter().map(|m| m.name).collect();
    for metric in &used {
        assert!(emitted.contains(metric), "alerts.yml uses {metric}, which the filter does not emit");
    }
    let scraped: BTreeSet<String> = stack.metrics().keys().map(|k| k.split('{').next().unwrap_or("").to_string()).collect();
    // (Canaries and lockouts have their own tests; drift is scraped in tests/drift.rs.)
    for metric in used.iter().filter(|m| !["spapi_guard_canary_hits_total", "spapi_guard_lockouts_total", "spapi_guard_schema_drift_total"].contains(m)) {
        let rejected_only = *metric == "spapi_guard_config_total";
        assert!(rejected_only || scraped.contains(*metric), "{metric} is not on /stats/prometheus");
    }
}

#[test]
fn canary_records_raise_an_event_and_a_metric_and_can_block() {
    let key = random_key();
    let address = fixture("orders-v0_getOrderAddress_1.json");
    // "Michigan address" is the buyer name in this response only (it is tokenized on the way out,
    // so the scan reads the upstream body).
    let canaries = json!({"records": [{"id": "buyer-trap", "value": "Michigan address"}]});
    let mut opts = Options::new("canary-alert", &key);
    opts.policy["canaries"] = canaries.clone();
    let stack = Stack::start(opts);
    let resp = stack.play(&address);
    assert_eq!(resp.status, 200, "alert-only mode passes the response");
    assert!(!resp.text().contains("Michigan address"));
    let events = stack.wait_for_audit_events(1);
    assert_eq!(events[0]["canaries"], json!(["buyer-trap"]));
    assert_eq!(events[0]["security_events"], json!(["canary_hit"]));
    let security = stack.wait_for_security_event("canary_hit");
    let hit = security.iter().find(|e| e["event"] == "canary_hit").expect("canary event");
    assert_eq!((hit["severity"].as_str(), hit["detail"].as_str()), (Some("critical"), Some("buyer-trap")));
    assert_eq!(hit["caller"], "spiffe://spapi-guard.demo/order-sync");
    assert_eq!(stack.metrics().get(r#"spapi_guard_canary_hits_total{canary="buyer-trap"}"#), Some(&1));
    // A response without the canary raises nothing.
    stack.play(&fixture("orders-v0_getOrderAddress_2.json"));
    stack.wait_for_audit_events(2);
    assert_eq!(stack.metrics().get(r#"spapi_guard_canary_hits_total{canary="buyer-trap"}"#), Some(&1));

    // Blocking: the response is replaced by an error; a canary in the path never reaches Amazon.
    let mut opts = Options::new("canary-block", &key);
    opts.policy["canaries"] = json!({"block": true, "records": [
        {"id": "buyer-trap", "value": "Michigan address"},
        {"id": "order-trap", "value": "999-0000000-1234567"}
    ]});
    let stack = Stack::start(opts);
    let blocked = stack.play(&address);
    assert_eq!((blocked.status, blocked.header("x-spapi-guard")), (403, Some("canary_blocked")));
    assert!(!blocked.text().contains("spgt1.") && !blocked.text().contains("Canton"));
    let calls_before = stack.mock_calls().len();
    let in_path = stack.request("GET", "/orders/v0/orders/999-0000000-1234567/address", &[("x-mock-fixture", &address.file)]);
    assert_eq!((in_path.status, in_path.header("x-spapi-guard")), (403, Some("canary_blocked")));
    assert_eq!(stack.mock_calls().len(), calls_before, "the canary request reached the upstream");
    // Metrics are counted when a request is logged, just after its response: wait for both.
    stack.wait_for_audit_events(2);
    let metrics = stack.metrics();
    assert_eq!(metrics.get(r#"spapi_guard_canary_hits_total{canary="buyer-trap"}"#), Some(&1));
    assert_eq!(metrics.get(r#"spapi_guard_canary_hits_total{canary="order-trap"}"#), Some(&1));
    assert_eq!(metrics.get(r#"spapi_guard_denials_total{reason="canary_blocked"}"#), Some(&2));
}

/// Request ids in the audit log are Envoy's own: a client-sent `x-request-id` (which could carry
/// PII, or forge another request's id) never becomes one — neither for requests the filter audits
/// nor for requests Envoy refuses before any filter runs (the `request_unaudited` line).
#[test]
fn request_ids_are_envoys_never_the_clients() {
    let stack = Stack::start(Options::new("request-ids", &random_key()));
    let forged = "jane@example.com";
    let r = stack.request("GET", "/orders/v0/orders/902-3159896-1390916/address", &[("x-request-id", forged)]);
    assert_eq!(r.status, 200);
    assert_ne!(r.header("x-request-id"), Some(forged), "Envoy kept the client's request id");
    // A request Envoy refuses itself (a malformed header name), with a forged id, in plaintext.
    let script = format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {}), timeout=5)\n\
         s.sendall(b'GET /orders/v0/orders HTTP/1.1\\r\\nHost: x\\r\\nx-request-id: {forged}\\r\\nx-big: ' + b'a' * 70000 + b'\\r\\n\\r\\n')\n\
         print(s.recv(4096)[:12])",
        stack.port
    );
    let out = Command::new("python3").arg("-c").arg(&script).output().expect("python3");
    assert!(String::from_utf8_lossy(&out.stdout).contains("431"), "{out:?}");
    let events = stack.wait_for_audit_events(2);
    let text = fs::read_to_string(stack.dir.join("envoy.stdout")).expect("stdout");
    assert!(!text.contains(forged), "a client's x-request-id reached the audit log:\n{text}");
    assert!(events.iter().all(|e| e["request_id"].as_str().is_some_and(|id| !id.is_empty())), "{events:?}");
}
