//! Request paths and queries end to end, through a real Envoy: the inputs of an attacker's review
//! that Envoy lets reach the filter (its `normalize_path`, `merge_slashes` and escaped-slash
//! rejection stop the others first). The filter must refuse path tricks itself, read queries the
//! way Amazon can, keep PII out of the audit log, and keep protecting in dry-run.
mod support;

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

use serde_json::{json, Value};
use support::*;

/// A response as the client saw it.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn reason(&self) -> Option<&str> {
        self.header("x-spapi-guard")
    }
}

/// Sends `target` exactly as written (curl `--path-as-is`, no URL globbing) over mTLS as `caller`.
fn send(stack: &Stack, caller: &str, method: &str, target: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let certs = certs();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "--http1.1", "-i", "--path-as-is", "--globoff", "--max-time", "30", "-X", method])
        .arg("--cacert")
        .arg(certs.join("ca.crt"))
        .arg("--cert")
        .arg(certs.join(format!("{caller}.crt")))
        .arg("--key")
        .arg(certs.join(format!("{caller}.key")));
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    if let Some(b) = body {
        cmd.args(["--data-binary", b, "-H", "content-type: application/json"]);
    }
    let out = cmd.arg(format!("https://127.0.0.1:{}{target}", stack.port)).output().expect("curl");
    assert!(out.status.success(), "curl {target}: {}", String::from_utf8_lossy(&out.stderr));
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers = lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))).collect();
    Reply { status, headers, body: body.to_string() }
}

/// A stack with the shipped policy, lockout off (these tests send many refused requests).
fn stack(name: &'static str, edit: impl FnOnce(&mut Value)) -> Stack {
    let key = random_key();
    let mut opts = Options::new(name, &key);
    opts.policy["access"]["lockout"]["maxDenials"] = json!(0);
    edit(&mut opts.policy);
    Stack::start(opts)
}

/// The audit event of the request that got `reply`.
fn event_of<'e>(events: &'e [Value], reply: &Reply) -> &'e Value {
    let id = reply.header("x-request-id").expect("request id");
    events.iter().find(|e| e["request_id"] == id).unwrap_or_else(|| panic!("no audit event for request {id}"))
}

/// Validates events against docs/audit-event.schema.json.
fn assert_schema_valid(stack: &Stack, events: &[Value]) {
    let file = stack.dir.join("events.jsonl");
    fs::write(&file, events.iter().map(Value::to_string).collect::<Vec<_>>().join("\n") + "\n").expect("write");
    let out = Command::new(repo().join(".venv/bin/python")).arg(repo().join("tests/validate_events.py")).arg(&file).output().expect("python");
    assert!(out.status.success(), "schema: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn path_tricks_that_reach_the_filter_are_refused_and_never_forwarded() {
    let stack = stack("paths-tricks", |_| {});
    let address = "orders-v0_getOrderAddress_1.json";
    // Each reached the filter, and was routed or passed through, before the fix.
    let tricks = [
        // A pass-through prefix matched as raw text; some servers read `..;` as `..`.
        "/catalog/..%3B/orders/v0/orders/902-3159896-1390916/address",
        // Control characters, bad percent-encoding and UTF-8 in a path parameter.
        "/orders/v0/orders/902-3159896-1390916%0A/address",
        "/orders/v0/orders/%ZZ/address",
        "/orders/v0/orders/%C3%28/address",
        // Envoy resolves the dot segment and leaves an empty one.
        "/orders/v0/orders/.",
        "/orders/v0/orders/",
        // Queries that cannot be decoded one way only.
        "/orders/v0/orders?BuyerEmail=a%ZZ",
        "/orders/v0/orders/902-3159896-1390916/address?x=%00",
    ];
    let mut replies = Vec::new();
    for target in tricks {
        let calls = stack.mock_calls().len();
        let reply = send(&stack, "order-sync", "GET", target, &[("x-mock-fixture", address)], None);
        assert_eq!((reply.status, reply.reason()), (400, Some("invalid_path")), "{target}: {}", reply.body);
        let body: Value = serde_json::from_str(&reply.body).expect("json error");
        assert_eq!(body["errors"][0]["code"], "InvalidInput", "{target}");
        assert_eq!(body["errors"][0]["details"], "spapi-guard:invalid_path", "{target}");
        assert_eq!(stack.mock_calls().len(), calls, "{target} reached the upstream");
        replies.push(reply);
    }
    // Envoy's own layer, for the record: escaped slashes and backslashes are refused before the
    // filter, and dot segments resolved, so what the filter routes is what the upstream gets.
    for target in ["/catalog/x%2F..%2F..%2Forders/v0/orders/1/address", "/catalog/x%5C..%5Corders/v0/orders/1/address"] {
        assert_eq!(send(&stack, "order-sync", "GET", target, &[], None).status, 400, "{target}");
    }
    let resolved = ["/catalog/%2E%2E/orders/v0/orders/902-3159896-1390916/address", "/catalog/..;x/orders/v0/orders/902-3159896-1390916/address"];
    for target in resolved {
        let reply = send(&stack, "order-sync", "GET", target, &[("x-mock-fixture", address)], None);
        assert_eq!(reply.status, 200, "{target}");
        assert!(reply.body.contains("spgt1."), "{target}: the resolved path is protected: {}", reply.body);
        assert_eq!(stack.mock_calls().last().expect("a call")["path"], "/orders/v0/orders/902-3159896-1390916/address", "{target}");
    }

    let events = stack.wait_for_audit_events(tricks.len() + 2 + resolved.len());
    for (target, reply) in tricks.iter().zip(&replies) {
        let e = event_of(&events, reply);
        assert_eq!((e["decision"].as_str(), e["reason"].as_str(), e["status"].as_u64()), (Some("deny"), Some("invalid_path"), Some(400)), "{target}");
        assert!(e["operation"].is_null(), "{target}");
    }
    let logged = event_of(&events, &replies[0])["path"].as_str().expect("path").to_string();
    assert!(logged.ends_with("/{redacted}/orders/v0/orders/{redacted}/address") && !logged.contains(".."), "{logged}");
    // (The two requests Envoy refused have no request id, which the schema requires: see the
    // events of requests refused before spapi-guard. Only the filter's decisions are checked.)
    let decided: Vec<Value> = events.iter().filter(|e| e["reason"] != "refused_before_spapi_guard").cloned().collect();
    assert_eq!(decided.len(), tricks.len() + resolved.len());
    assert_schema_valid(&stack, &decided);
}

#[test]
fn the_audit_log_prints_no_pii_from_paths_or_queries() {
    let stack = stack("paths-audit", |_| {});
    let orders = [("x-mock-fixture", "orders-v0_getOrders_1.json")];
    // Every value is a distinct address, so any trace of one in Envoy's output is found.
    let cases: [(&str, &str); 7] = [
        ("Buyer%45mail=jane.one%40example.com", "BuyerEmail={redacted}"),
        ("%42uyerEmail=jane.two%40example.com", "BuyerEmail={redacted}"),
        ("BuyerEmail+=jane.three%40example.com", "{redacted}={redacted}"),
        ("BuyerEmail[]=jane.four%40example.com", "{redacted}={redacted}"),
        ("BuyerEmail%3Djane.five%40example.com", "{redacted}"),
        ("MarketplaceIds=jane.six%40example.com", "MarketplaceIds={redacted}"),
        (
            "CreatedAfter=2024-12-20T00%3A00%3A00Z&OrderStatuses=Shipped&SellerOrderId=jane.seven",
            "CreatedAfter=2024-12-20T00:00:00Z&OrderStatuses=Shipped&SellerOrderId={redacted}",
        ),
    ];
    let mut replies = Vec::new();
    for (query, _) in cases {
        let reply = send(&stack, "order-sync", "GET", &format!("/orders/v0/orders?{query}&MarketplaceIds=ATVPDKIKX0DER"), &orders, None);
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        replies.push(reply);
    }
    // Outside the catalog: an unknown path (refused) and a pass-through one (forwarded).
    let unknown = send(&stack, "order-sync", "GET", "/orders/v0/jane.eight%40example.com", &[], None);
    assert_eq!((unknown.status, unknown.reason()), (403, Some("unknown_operation")));
    let passed = send(&stack, "order-sync", "GET", "/sellers/v1/jane.nine%40example.com/x?keywords=jane.ten", &[], None);
    assert_eq!(passed.status, 404, "the mock knows no such path");

    let events = stack.wait_for_audit_events(cases.len() + 2);
    for ((query, logged), reply) in cases.iter().zip(&replies) {
        assert_eq!(event_of(&events, reply)["path"], format!("/orders/v0/orders?{logged}&MarketplaceIds=ATVPDKIKX0DER"), "{query}");
    }
    assert_eq!(event_of(&events, &unknown)["path"], "/orders/v0/{redacted}");
    let passed_path = event_of(&events, &passed)["path"].as_str().expect("path").to_string();
    assert!(passed_path.ends_with("/v1/{redacted}/{redacted}?{redacted}={redacted}"), "{passed_path}");
    assert_schema_valid(&stack, &events);

    // Nothing Envoy printed holds any of the values, decoded or not.
    let printed = stack.envoy_output();
    for n in ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"] {
        assert!(!printed.contains(&format!("jane.{n}")), "jane.{n} is in Envoy's output");
    }
}

#[test]
fn included_data_and_rdt_bodies_are_read_the_way_amazon_can() {
    let stack = stack("paths-included-data", |_| {});
    let search = [("x-mock-fixture", "orders-2026-01-01_searchOrders_1.json")];
    // analytics may search orders but has no access to any PII class.
    for query in ["includedData=buyer", "includedData=BUYER%20", "includeddata=BUYER", "includedData[]=BUYER", "includedData=BUYER;x", "includedData=RECIPIENT,%20buyer"] {
        let calls = stack.mock_calls().len();
        let reply = send(&stack, "analytics", "GET", &format!("/orders/2026-01-01/orders?createdAfter=2024-01-01&{query}"), &search, None);
        assert_eq!((reply.status, reply.reason()), (403, Some("data_element_not_allowed")), "{query}: {}", reply.body);
        assert_eq!(stack.mock_calls().len(), calls, "{query} reached the upstream");
    }
    let fine = send(&stack, "analytics", "GET", "/orders/2026-01-01/orders?createdAfter=2024-01-01&includedData=packages,PROCEEDS", &search, None);
    assert_eq!(fine.status, 200, "{}", fine.body);

    // An RDT request that repeats a key: the allowed resource last (where serde_json looks), the
    // forbidden one first.
    let rdt = [("x-mock-fixture", "tokens-2021-03-01_createRestrictedDataToken_1.json")];
    let smuggled = [
        r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders","dataElements":["buyerInfo"]}],"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/1/address","dataElements":["shippingAddress"]}]}"#,
        r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/1/buyerInfo","Path":"/orders/v0/orders/1/address"}]}"#,
        r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/1/../1/address"}]}"#,
    ];
    for body in smuggled {
        let calls = stack.mock_calls().len();
        let reply = send(&stack, "label-printer", "POST", "/tokens/2021-03-01/restrictedDataToken", &rdt, Some(body));
        assert_eq!((reply.status, reply.reason()), (400, Some("invalid_rdt_request")), "{body}: {}", reply.body);
        assert_eq!(stack.mock_calls().len(), calls, "{body} reached the upstream");
    }
    let honest = r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/1/address","dataElements":["shippingAddress"]}]}"#;
    assert_eq!(send(&stack, "label-printer", "POST", "/tokens/2021-03-01/restrictedDataToken", &rdt, Some(honest)).status, 200);
}

#[test]
fn dry_run_still_refuses_unknown_operations_and_invalid_paths() {
    let fixture = [("x-mock-fixture", "orders-v0_getOrders_1.json")];
    let global = stack("paths-dry-run", |p| p["access"]["dryRun"] = json!(true));
    let role = stack("paths-dry-run-role", |p| p["roles"]["label-printer"]["dryRun"] = json!(true));
    for (stack, callers) in [(&global, vec!["order-sync", "intruder", "analytics"]), (&role, vec!["label-printer"])] {
        for caller in callers {
            let calls = stack.mock_calls().len();
            let unknown = send(stack, caller, "GET", "/reports/2021-06-30/reports", &fixture, None);
            assert_eq!((unknown.status, unknown.reason()), (403, Some("unknown_operation")), "{caller}: {}", unknown.body);
            let invalid = send(stack, caller, "GET", "/catalog/..%3B/orders/v0/orders/1/address", &fixture, None);
            assert_eq!((invalid.status, invalid.reason()), (400, Some("invalid_path")), "{caller}: {}", invalid.body);
            assert_eq!(stack.mock_calls().len(), calls, "{caller}: dry-run forwarded an unprotected request");
        }
    }
    // Access decisions are still only recorded: analytics may not call getOrders, an intruder
    // nothing, and both get through with their would-be denial in the audit log.
    let analytics = send(&global, "analytics", "GET", "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER", &fixture, None);
    assert_eq!(analytics.status, 200, "{}", analytics.body);
    let events = global.wait_for_audit_events(7);
    let decisions: BTreeSet<(&str, &str)> = events.iter().map(|e| (e["decision"].as_str().expect("decision"), e["reason"].as_str().expect("reason"))).collect();
    let expected = [("deny", "unknown_operation"), ("deny", "invalid_path"), ("dry_run_deny", "operation_not_allowed")];
    assert_eq!(decisions, expected.into_iter().collect());
    assert_schema_valid(&global, &events);
}
