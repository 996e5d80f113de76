//! Caller access control end to end: a real Envoy with mTLS, the demo callers' certificates,
//! and the mock SP-API recording what reached it.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use jsonpath_rust::query::js_path;
use serde_json::{json, Value};
use spapi_guard::catalog::{Catalog, CatalogOverrides, Operation};
use spapi_guard::pii::PiiClass;
use spapi_guard::tokens::TokenEngine;
use support::*;

/// What a caller's role gives it of a PII class.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Level {
    Clear,
    Tokenize,
    None,
}

fn catalog() -> Catalog {
    Catalog::build(&CatalogOverrides::default()).expect("catalog")
}

/// One step of a normalized JSONPath (`$['a'][0]`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Key(String),
    Index(usize),
}

fn parse_location(location: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut rest = location.strip_prefix('$').expect("normalized path");
    while let Some(r) = rest.strip_prefix('[') {
        if let Some(r) = r.strip_prefix('\'') {
            let end = r.find("']").expect("quoted key");
            steps.push(Step::Key(r[..end].replace("\\'", "'")));
            rest = &r[end + 2..];
        } else {
            let end = r.find(']').expect("index");
            steps.push(Step::Index(r[..end].parse().expect("number")));
            rest = &r[end + 1..];
        }
    }
    assert!(rest.is_empty(), "unparsed: {location}");
    steps
}

fn at_mut<'v>(root: &'v mut Value, steps: &[Step]) -> Option<&'v mut Value> {
    steps.iter().try_fold(root, |v, s| match s {
        Step::Key(k) => v.get_mut(k.as_str()),
        Step::Index(i) => v.get_mut(*i),
    })
}

/// Replaces tokens and keyed hashes by a placeholder, opening each token to check its class.
fn mask_tokens(v: &mut Value, engine: &TokenEngine, allowed: &dyn Fn(PiiClass) -> bool) {
    match v {
        Value::String(s) if s.starts_with("spgt1.") => {
            let opened = engine.open(s, now_ms()).expect("token opens");
            assert!(allowed(opened.class), "a {} token for a caller without tokenize access to it", opened.class);
            *v = json!("<T>");
        }
        Value::Array(a) => a.iter_mut().for_each(|x| mask_tokens(x, engine, allowed)),
        Value::Object(m) => m.values_mut().for_each(|x| mask_tokens(x, engine, allowed)),
        _ => {}
    }
}

/// Checks that `response` is `upstream` with each PII value treated per the caller's level:
/// clear → unchanged, tokenize → a token of its class (a number: coarsened to one decimal), none →
/// removed (a member Amazon's model requires: its type's empty value); everything else equal.
fn assert_levels(name: &str, op: &Operation, upstream: &[u8], response: &Value, level: &dyn Fn(PiiClass) -> Level, engine: &TokenEngine) {
    let mut expected: Value = serde_json::from_slice(upstream).expect("fixture json");
    let original = expected.clone();
    let mut removals = Vec::new();
    for rule in &op.response_rules {
        for hit in js_path(&rule.jsonpath, &original).expect("query") {
            let location = hit.clone().path();
            let value = hit.val();
            // Literals are never PII; an empty string is kept unless the field is removed.
            if matches!(value, Value::Null | Value::Bool(_)) || (*value == json!("") && level(rule.class) != Level::None) {
                continue;
            }
            let steps = parse_location(&location);
            let required = rule.schema.as_ref().is_some_and(|f| f.required);
            match level(rule.class) {
                Level::Clear => {}
                Level::Tokenize if value.is_number() => {
                    let mut coarse = Vec::new();
                    spapi_guard::schema::coarsen(&value.to_string(), 1, &mut coarse);
                    *at_mut(&mut expected, &steps).expect("location") = serde_json::from_slice(&coarse).expect("number");
                }
                Level::Tokenize => *at_mut(&mut expected, &steps).expect("location") = json!("<T>"),
                Level::None if required => {
                    let empty = spapi_guard::schema::empty_like(value.to_string().as_bytes());
                    *at_mut(&mut expected, &steps).expect("location") = serde_json::from_slice(empty).expect("empty value");
                }
                Level::None => removals.push(steps),
            }
        }
    }
    // Deepest and last first, so earlier array indices stay valid.
    removals.sort();
    removals.dedup();
    for steps in removals.iter().rev() {
        let (last, parent) = steps.split_last().expect("non-empty");
        match (at_mut(&mut expected, parent).expect("parent"), last) {
            (Value::Object(m), Step::Key(k)) => {
                m.remove(k);
            }
            (Value::Array(a), Step::Index(i)) => {
                a.remove(*i);
            }
            _ => panic!("{name}: bad location"),
        }
    }
    let mut actual = response.clone();
    mask_tokens(&mut actual, engine, &|c| level(c) == Level::Tokenize);
    assert_eq!(actual, expected, "{name}: response differs from the caller's view of the upstream");
}

const OPS: [(&str, &str); 7] = [
    ("getOrders", "orders-v0_getOrders_1.json"),
    ("getOrderAddress", "orders-v0_getOrderAddress_1.json"),
    ("getOrderBuyerInfo", "orders-v0_getOrderBuyerInfo_1.json"),
    ("searchOrders", "orders-2026-01-01_searchOrders_1.json"),
    ("mfn.getShipment", "merchant-fulfillment-v0_getShipment_1.json"),
    ("mcf.getFulfillmentOrder", "fulfillment-outbound-2020-07-01_getFulfillmentOrder_1.json"),
    ("createRestrictedDataToken", "tokens-2021-03-01_createRestrictedDataToken_1.json"),
];

#[test]
fn each_demo_caller_gets_exactly_its_rights() {
    let key = random_key();
    let engine = engine(&key);
    let stack = Stack::start(Options::new("matrix", &key));
    let catalog = catalog();
    type Rights = (&'static str, &'static [&'static str], fn(PiiClass) -> Level);
    let callers: [Rights; 3] = [
        ("order-sync", &["getOrders", "getOrderAddress", "getOrderBuyerInfo", "searchOrders", "mfn.getShipment", "mcf.getFulfillmentOrder", "createRestrictedDataToken"], |_| {
            Level::Tokenize
        }),
        ("label-printer", &["getOrderAddress", "mfn.getShipment", "createRestrictedDataToken"], |c| if c == PiiClass::Address { Level::Clear } else { Level::None }),
        ("analytics", &["searchOrders", "mcf.getFulfillmentOrder"], |_| Level::None),
    ];
    for (caller, allowed, level) in callers {
        for (name, file) in OPS {
            let fx = fixture(file);
            let calls_before = stack.mock_calls().len();
            let resp = stack.play_as(Client::Cert(caller), &fx);
            let calls_after = stack.mock_calls().len();
            let case = format!("{caller} × {name}");
            if allowed.contains(&name) {
                assert_eq!(resp.status, 200, "{case}: {}", resp.text());
                assert_eq!(calls_after, calls_before + 1, "{case}: upstream not called once");
                let op = catalog.route(&fx.method, &fx.path).expect("op");
                assert_levels(&case, op, &fx.body(), &resp.json(), &level, &engine);
            } else {
                assert_eq!(resp.status, 403, "{case}: {}", resp.text());
                assert_eq!(resp.json()["errors"][0]["details"], "spapi-guard:operation_not_allowed", "{case}");
                assert_eq!(calls_after, calls_before, "{case}: the upstream was called for a denied request");
            }
        }
    }
    // RDT requests are checked resource by resource against the caller's rights.
    let rdt = fixture("tokens-2021-03-01_createRestrictedDataToken_1.json");
    let ask = |caller: &str, body: &str| stack.send(Client::Cert(caller), "POST", &rdt.url(), &[("x-mock-fixture", &rdt.file)], None, Some(body)).expect("curl");
    let buyer_info = r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders","dataElements":["buyerInfo"]}]}"#;
    let calls_before = stack.mock_calls().len();
    let denied = ask("label-printer", buyer_info);
    assert_eq!((denied.status, denied.header("x-spapi-guard")), (403, Some("rdt_resource_not_allowed")));
    let address = r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/123-1234567-1234567/address","dataElements":["shippingAddress"]}]}"#;
    assert_eq!(ask("label-printer", address).status, 200);
    assert_eq!(ask("order-sync", buyer_info).status, 200);
    assert_eq!(ask("order-sync", "not json").status, 400);
    assert_eq!(stack.mock_calls().len(), calls_before + 2, "denied RDT requests reached the upstream");
}

#[test]
fn unknown_uncertified_plaintext_and_outside_callers_are_refused() {
    let key = random_key();
    let stack = Stack::start(Options::new("refused", &key));
    let fx = fixture("orders-v0_getOrderAddress_1.json");
    let get = |client: Client, from: Option<&str>| stack.send(client, &fx.method, &fx.url(), &[("x-mock-fixture", &fx.file)], from, None);
    let cases: [(&str, Client, Option<&str>, &str); 4] = [
        ("a certificate the policy does not know", Client::Cert("intruder"), None, "unknown_caller"),
        ("no client certificate", Client::NoCert, None, "unauthenticated"),
        ("no TLS", Client::Plaintext, None, "tls_required"),
        ("a source address outside the caller's allow list", Client::Cert("analytics"), Some("127.0.0.2"), "ip_not_allowed"),
    ];
    for (what, client, from, reason) in cases {
        let resp = get(client, from).expect("curl");
        assert_eq!(resp.status, 403, "{what}: {}", resp.text());
        assert_eq!(resp.header("x-spapi-guard"), Some(reason), "{what}");
        assert_eq!(resp.json()["errors"][0]["code"], "Unauthorized", "{what}");
    }
    // A certificate from a CA Envoy does not trust fails the TLS handshake.
    assert!(get(Client::Rogue, None).is_err(), "a rogue certificate was accepted");
    assert!(stack.mock_calls().is_empty(), "the upstream was called for a refused request");
    // The same analytics certificate from 127.0.0.1 is fine (searchOrders is one of its operations).
    let search = fixture("orders-2026-01-01_searchOrders_1.json");
    assert_eq!(stack.play_as(Client::Cert("analytics"), &search).status, 200);
    let events = stack.wait_for_audit_events(5);
    let reasons: BTreeSet<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(reasons, ["ip_not_allowed", "tls_required", "unauthenticated", "unknown_caller"].into_iter().collect());
}

#[test]
fn client_addresses_from_x_forwarded_for_only_with_trusted_hops() {
    let key = random_key();
    let search = fixture("orders-2026-01-01_searchOrders_1.json");
    let as_analytics = |stack: &Stack, xff: &str| {
        stack.send(Client::Cert("analytics"), "GET", &search.url(), &[("x-mock-fixture", &search.file), ("x-forwarded-for", xff)], None, None).expect("curl")
    };
    // Default: the direct peer (127.0.0.1) counts; X-Forwarded-For is ignored.
    let stack = Stack::start(Options::new("xff-off", &key));
    assert_eq!(as_analytics(&stack, "203.0.113.7").status, 200);
    // One trusted hop: the rightmost entry is the client, and analytics may only come from 127.0.0.1.
    let mut opts = Options::new("xff-on", &key);
    opts.policy["access"]["xffTrustedHops"] = json!(1);
    let stack = Stack::start(opts);
    let outside = as_analytics(&stack, "127.0.0.1, 203.0.113.7");
    assert_eq!((outside.status, outside.header("x-spapi-guard")), (403, Some("ip_not_allowed")));
    assert_eq!(as_analytics(&stack, "203.0.113.7, 127.0.0.1").status, 200);
    let events = stack.wait_for_audit_events(2);
    assert_eq!(events[0]["source_ip"], "203.0.113.7");
}

#[test]
fn spoofed_identity_headers_are_ignored_and_stripped() {
    let key = random_key();
    let stack = Stack::start(Options::new("spoof", &key));
    let orders = fixture("orders-v0_getOrders_1.json");
    let spoof = ("x-spapi-guard-caller", "spiffe://spapi-guard.demo/order-sync");
    let resp = stack.send(Client::Cert("analytics"), "GET", &orders.url(), &[("x-mock-fixture", &orders.file), spoof], None, None).expect("curl");
    assert_eq!((resp.status, resp.header("x-spapi-guard")), (403, Some("operation_not_allowed")), "the header was believed");
    let resp = stack.send(Client::Plaintext, "GET", &orders.url(), &[("x-mock-fixture", &orders.file), spoof], None, None).expect("curl");
    assert_eq!(resp.status, 403);
    assert!(stack.mock_calls().is_empty());
    let ok = stack.send(Client::Cert("order-sync"), "GET", &orders.url(), &[("x-mock-fixture", &orders.file), spoof], None, None).expect("curl");
    assert_eq!(ok.status, 200);
    let call = stack.mock_calls().pop().expect("a call");
    assert_eq!(call["headers"].get("x-spapi-guard-caller"), None, "the identity header reached the upstream");

    // With header identities enabled, the renderer strips client copies before any filter can
    // read them: only a trusted filter placed after the strip could set the header.
    let mut opts = Options::new("spoof-header", &key);
    opts.policy["access"]["identity"]["sources"] = json!(["uri_san", "header"]);
    opts.policy["access"]["allowPlaintext"] = json!(true);
    opts.policy["callers"].as_array_mut().expect("callers").push(json!({"id": "batch-job", "source": "header", "roles": ["order-sync"]}));
    let header_stack = Stack::start(opts);
    let resp = header_stack.send(Client::Plaintext, "GET", &orders.url(), &[("x-mock-fixture", &orders.file), ("x-spapi-guard-caller", "batch-job")], None, None).expect("curl");
    assert_eq!((resp.status, resp.header("x-spapi-guard")), (403, Some("unauthenticated")), "a client-set identity header was believed");
}

/// Sidecar mode: the proxy serves only the app beside it, on loopback and without a client
/// certificate; the caller is the workload the proxy was deployed for (its node id, from Envoy's
/// `--service-node` / bootstrap `node.id`), never anything the request says.
#[test]
fn a_sidecar_knows_its_caller_from_its_own_node_identity() {
    let key = random_key();
    let mut opts = Options::new("node-identity", &key);
    opts.policy["access"]["identity"] = json!({"sources": ["node"]});
    opts.policy["access"]["allowPlaintext"] = json!(true);
    opts.policy["access"]["allowCidrs"] = json!(["127.0.0.1/32", "::1/128"]);
    opts.policy["callers"] = json!([{"id": "order-sync-workload", "source": "node", "roles": ["order-sync"]}]);
    opts.envoy_args = vec!["--service-node".into(), "order-sync-workload".into()];
    let stack = Stack::start(opts);
    let address = fixture("orders-v0_getOrderAddress_1.json");
    let spoof = ("x-spapi-guard-caller", "spiffe://spapi-guard.demo/analytics");
    let resp = stack.send(Client::Plaintext, "GET", &address.url(), &[("x-mock-fixture", &address.file), spoof], None, None).expect("curl");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let text = resp.text();
    assert!(text.contains("spgt1.") && !text.contains("Michigan address"), "{text}");
    let events = stack.wait_for_audit_events(1);
    assert_eq!(events[0]["identity"], "node:order-sync-workload");
    // From another loopback address outside the allow list: refused.
    let outside = stack.send(Client::Plaintext, "GET", &address.url(), &[("x-mock-fixture", &address.file)], Some("127.0.0.2"), None).expect("curl");
    assert_eq!((outside.status, outside.header("x-spapi-guard")), (403, Some("ip_not_allowed")));
}

#[test]
fn header_identities_come_only_from_the_trusted_authentication_filter() {
    // Envoy's jwt_authn verifies a JWT and forwards its `sub` claim in the identity header; the
    // renderer's strip filter, placed before it, removes any client-sent copy.
    let out = Command::new(repo().join(".venv/bin/python"))
        .args([repo().join("tests/make_jwt.py").to_str().expect("path"), "https://idp.test", "batch-job", "someone-else"])
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made: Value = serde_json::from_slice(&out.stdout).expect("json");
    let jwks = made["jwks"].as_str().expect("jwks").replace('\'', "''");
    let key = random_key();
    let mut opts = Options::new("jwt-identity", &key);
    opts.policy["access"]["identity"]["sources"] = json!(["uri_san", "header"]);
    opts.policy["access"]["allowPlaintext"] = json!(true);
    opts.policy["callers"].as_array_mut().expect("callers").push(json!({"id": "batch-job", "source": "header", "roles": ["label-printer"]}));
    opts.auth_filter = Some(format!(
        r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                idp:
                  issuer: https://idp.test
                  local_jwks: {{ inline_string: '{jwks}' }}
                  claim_to_headers: [{{ header_name: x-spapi-guard-caller, claim_name: sub }}]
              rules:
              - match: {{ prefix: "/" }}
                requires: {{ requires_any: {{ requirements: [{{ provider_name: idp }}, {{ allow_missing: {{}} }}] }} }}
"#
    ));
    let stack = Stack::start(opts);
    let address = fixture("orders-v0_getOrderAddress_1.json");
    let bearer = |sub: &str| format!("Bearer {}", made["tokens"][sub].as_str().expect("token"));
    let get = |headers: &[(&str, &str)]| {
        let mut all = vec![("x-mock-fixture", address.file.as_str())];
        all.extend_from_slice(headers);
        stack.send(Client::Plaintext, "GET", &address.url(), &all, None, None).expect("curl")
    };
    // A valid JWT: the caller is its subject, with that caller's rights (address in clear, name removed).
    let ok = get(&[("authorization", &bearer("batch-job"))]);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["payload"]["ShippingAddress"]["City"], "Canton");
    assert!(ok.json()["payload"]["ShippingAddress"].get("Name").is_none());
    let call = stack.mock_calls().pop().expect("a call");
    assert_eq!(call["headers"].get("x-spapi-guard-caller"), None, "the identity header reached the upstream");
    // No JWT, only a client-set header: stripped, so no identity.
    let spoofed = get(&[("x-spapi-guard-caller", "batch-job")]);
    assert_eq!((spoofed.status, spoofed.header("x-spapi-guard")), (403, Some("unauthenticated")));
    // A JWT for someone else plus a spoofed header: the JWT's subject counts, and it is unknown.
    let other = get(&[("authorization", &bearer("someone-else")), ("x-spapi-guard-caller", "batch-job")]);
    assert_eq!((other.status, other.header("x-spapi-guard")), (403, Some("unknown_caller")));
    // A forged JWT is refused by jwt_authn itself.
    let forged = bearer("batch-job").replace("eyJ", "eyK");
    assert_eq!(get(&[("authorization", &forged)]).status, 401);
    // Every attempt is in the audit log, the one refused by jwt_authn too.
    let events = stack.wait_for_audit_events(4);
    let seen: Vec<(&str, Option<&str>, u64)> =
        events.iter().map(|e| (e["decision"].as_str().expect("decision"), e["reason"].as_str(), e["status"].as_u64().expect("status"))).collect();
    assert_eq!(seen, [("allow", None, 200), ("deny", Some("unauthenticated"), 403), ("deny", Some("unknown_caller"), 403), ("deny", Some("refused_before_spapi_guard"), 401)]);
    assert_eq!(events[0]["identity"], "header:batch-job");
}

/// Drives `tests/conn_client.py`: persistent connections, one request at a time.
struct Connections {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Connections {
    fn new(stack: &Stack, caller: &str) -> Connections {
        let mut child = Command::new("python3")
            .arg(repo().join("tests/conn_client.py"))
            .arg(stack.port.to_string())
            .arg(certs())
            .arg(caller)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Connections { child, out }
    }

    fn call(&mut self, line: &str) -> Vec<String> {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write");
        stdin.flush().expect("flush");
        let mut reply = String::new();
        self.out.read_line(&mut reply).expect("read");
        assert!(!reply.is_empty(), "conn_client.py exited on: {line}");
        reply.split_whitespace().map(str::to_string).collect()
    }

    fn open(&mut self) -> usize {
        self.call("open")[0].parse().expect("index")
    }

    /// (status, request id, reason)
    fn get(&mut self, conn: usize, path: &str, fixture: &str) -> (u16, String, String) {
        let r = self.call(&format!("req {conn} GET {path} {fixture}"));
        (r[0].parse().expect("status"), r[1].clone(), r[2].clone())
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Envoy worker thread of each of these requests, from the filter's debug line
/// (`--component-log-level wasm:debug`): `[time][thread][debug][wasm] … spapi-guard: request <id>
/// decided <decision>`. Waits (up to 10 s) until every request has its line.
fn worker_of_requests(stack: &Stack, ids: &[&String]) -> BTreeMap<String, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let workers: BTreeMap<String, String> = stack
            .envoy_output()
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once("spapi-guard: request ")?;
                let thread = l.split("][").nth(1)?.to_string();
                Some((rest.split_whitespace().next()?.to_string(), thread))
            })
            .collect();
        if ids.iter().all(|id| workers.contains_key(*id)) || std::time::Instant::now() > deadline {
            return workers;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn lockout_after_exactly_n_denials_across_workers_then_cooldown() {
    let key = random_key();
    let mut opts = Options::new("lockout", &key);
    opts.concurrency = 2;
    opts.envoy_args = vec!["--component-log-level".into(), "wasm:debug".into()];
    opts.policy["access"]["lockout"] = json!({"maxDenials": 4, "windowSeconds": 60, "cooldownSeconds": 3});
    opts.policy["roles"]["label-printer"]["maxPiiFieldsPerWindow"] = json!(15);
    let stack = Stack::start(opts);
    let search = fixture("orders-2026-01-01_searchOrders_1.json");
    let orders = fixture("orders-v0_getOrders_1.json");

    // Four persistent connections: Envoy's exact balance puts two on each worker.
    let mut analytics = Connections::new(&stack, "analytics");
    let conns: Vec<usize> = (0..4).map(|_| analytics.open()).collect();
    let probes: Vec<(usize, String)> = conns
        .iter()
        .map(|&c| {
            let (status, id, _) = analytics.get(c, &search.url(), &search.file);
            assert_eq!(status, 200);
            (c, id)
        })
        .collect();
    let workers = worker_of_requests(&stack, &probes.iter().map(|(_, id)| id).collect::<Vec<_>>());
    let a = probes[0].0;
    let worker_a = &workers[&probes[0].1];
    let b = probes.iter().find(|(_, id)| &workers[id] != worker_a).map(|(c, _)| *c).expect("connections on two workers");

    // N-1 denials, alternating workers: not locked yet.
    let mut denial_ids = Vec::new();
    for (i, conn) in [a, b, a].into_iter().enumerate() {
        let (status, id, reason) = analytics.get(conn, &orders.url(), &orders.file);
        assert_eq!((status, reason.as_str()), (403, "operation_not_allowed"), "denial {}", i + 1);
        denial_ids.push(id);
    }
    assert_eq!(analytics.get(b, &search.url(), &search.file).0, 200, "locked before the Nth denial");
    // The Nth denial locks: every request after it, on either worker, gets 403 locked_out.
    let (status, id, _) = analytics.get(b, &orders.url(), &orders.file);
    assert_eq!(status, 403);
    denial_ids.push(id);
    for conn in [a, b] {
        let (status, _, reason) = analytics.get(conn, &search.url(), &search.file);
        assert_eq!((status, reason.as_str()), (403, "locked_out"));
    }
    let workers = worker_of_requests(&stack, &denial_ids.iter().collect::<Vec<_>>());
    let denial_workers: BTreeSet<&String> = denial_ids.iter().map(|id| &workers[id]).collect();
    assert_eq!(denial_workers.len(), 2, "the denials were not spread over both workers");
    // Other callers are not affected.
    assert_eq!(stack.play_as(Client::Cert("order-sync"), &search).status, 200);

    // After the cooldown the caller is unlocked.
    std::thread::sleep(Duration::from_millis(3300));
    assert_eq!(analytics.get(a, &search.url(), &search.file).0, 200, "still locked after the cooldown");

    // Second trigger: PII volume. label-printer may receive 15 PII values per window; each
    // getOrderAddress delivers 9 (address in clear; the name is removed and does not count).
    let address = fixture("orders-v0_getOrderAddress_1.json");
    assert_eq!(stack.play_as(Client::Cert("label-printer"), &address).status, 200);
    assert_eq!(stack.play_as(Client::Cert("label-printer"), &address).status, 200);
    let locked = stack.play_as(Client::Cert("label-printer"), &address);
    assert_eq!((locked.status, locked.header("x-spapi-guard")), (403, Some("locked_out")));
    assert!(locked.header("retry-after").is_some());
    let log = stack.envoy_output();
    assert!(log.contains("lockout started: caller spiffe://spapi-guard.demo/analytics (denials)"), "{log}");
    assert!(log.contains("lockout started: caller spiffe://spapi-guard.demo/label-printer (pii_volume)"));
    // The end of a lockout is noticed by a one-second timer.
    let events = stack.wait_for_security_event("lockout_ended");
    let started: Vec<(&str, &str)> =
        events.iter().filter(|e| e["event"] == "lockout_started").map(|e| (e["caller"].as_str().expect("caller"), e["reason"].as_str().expect("reason"))).collect();
    assert_eq!(started, [("spiffe://spapi-guard.demo/analytics", "denials"), ("spiffe://spapi-guard.demo/label-printer", "pii_volume")]);
    let ended: Vec<&str> = events.iter().filter(|e| e["event"] == "lockout_ended").map(|e| e["caller"].as_str().expect("caller")).collect();
    assert_eq!(ended, ["spiffe://spapi-guard.demo/analytics"], "the cooldown's end is reported once");
    let metrics = stack.metrics();
    assert_eq!(metrics.get(r#"spapi_guard_lockouts_total{trigger="denials"}"#), Some(&1));
    assert_eq!(metrics.get(r#"spapi_guard_lockouts_total{trigger="pii_volume"}"#), Some(&1));
}

#[test]
fn dry_run_lets_traffic_through_and_records_would_be_denials() {
    let key = random_key();
    let mut opts = Options::new("dryrun", &key);
    opts.policy["access"]["dryRun"] = json!(true);
    let stack = Stack::start(opts);
    let orders = fixture("orders-v0_getOrders_1.json");
    let analytics = stack.play_as(Client::Cert("analytics"), &orders);
    assert_eq!(analytics.status, 200, "{}", analytics.text());
    let intruder = stack.play_as(Client::Cert("intruder"), &orders);
    assert_eq!(intruder.status, 200);
    assert!(intruder.text().contains("spgt1."), "an unknown caller in dry-run gets the policy's class actions");
    let events = stack.wait_for_audit_events(2);
    let decisions: Vec<(&str, &str)> = events.iter().map(|e| (e["decision"].as_str().expect("d"), e["reason"].as_str().expect("r"))).collect();
    assert_eq!(decisions, [("dry_run_deny", "operation_not_allowed"), ("dry_run_deny", "unknown_caller")]);

    // Per role: only the dry-run role's callers pass.
    let mut opts = Options::new("dryrun-role", &key);
    opts.policy["roles"]["label-printer"]["dryRun"] = json!(true);
    let stack = Stack::start(opts);
    assert_eq!(stack.play_as(Client::Cert("label-printer"), &orders).status, 200);
    assert_eq!(stack.play_as(Client::Cert("analytics"), &orders).status, 403);
}

#[test]
fn invalid_access_policies_are_refused_at_load() {
    let key = random_key();
    let env = || vec![(KEY_VAR.to_string(), key_b64(&key))];
    let cases: [(&str, &str, Value, &str); 5] = [
        ("duplicate", "/callers/1/id", json!("spiffe://spapi-guard.demo/order-sync"), "callers[1].id: 'spiffe://spapi-guard.demo/order-sync' is already callers[0]"),
        ("generic", "/callers/0/id", json!("spiffe://spapi-guard.demo/admin"), "callers[0].id: 'spiffe://spapi-guard.demo/admin' is a generic, shared or default name"),
        ("unknown-op", "/roles/analytics/operations", json!(["orders-v0.getOrderz"]), "roles.analytics.operations[0]: 'orders-v0.getOrderz' matches no operation"),
        ("bad-cidr", "/access/allowCidrs", json!(["10.0.0.0/40"]), "access.allowCidrs[0]: '10.0.0.0/40' has a prefix length outside"),
        ("unknown-class", "/roles/analytics/pii", json!({"shoe_size": "clear"}), "roles.analytics.pii.shoe_size: 'shoe_size' is not a PII class"),
    ];
    for (name, pointer, value, message) in cases {
        let mut policy = default_policy();
        *policy.pointer_mut(pointer).expect("pointer") = value;
        let refused = expect_refusal(Box::leak(format!("refuse-{name}").into_boxed_str()), policy, env());
        assert!(refused.log.contains(message), "{name}: {}", refused.log);
    }
}
