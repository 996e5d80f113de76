//! Schema drift end to end, through a real Envoy: responses shaped the way Amazon evolves its
//! APIs, built from Amazon's model fixtures and from the catalog's own paths, with new members
//! planted inside every kind of customer object, objects turned into arrays, bodies without the
//! `payload` wrapper and keys in another case. No planted value, and no PII value of the fixture,
//! may reach the client in clear; drift is reported by path template, never by value.
mod support;

use std::collections::BTreeSet;

use jsonpath_rust::query::js_path;
use serde_json::{json, Map, Value};
use spapi_guard::catalog::{Catalog, CatalogOverrides, Operation};
use support::*;

/// Every planted value contains this: it is in no fixture, and tokens (base64url of ciphertext)
/// cannot contain it.
const MARK: &str = "zqdrift";

/// Plants distinctive PII values and remembers them.
#[derive(Default)]
struct Planter {
    n: usize,
    planted: Vec<String>,
}

impl Planter {
    fn text(&mut self, shape: &str) -> String {
        self.n += 1;
        let v = match shape {
            "email" => format!("{MARK}.{}@example.com", self.n),
            "phone" => format!("+1 206 555 {:04} ({MARK})", self.n),
            "number" => format!("{}.{:04}", 90000 + self.n, self.n),
            _ => format!("{shape} {MARK} {}", self.n),
        };
        self.planted.push(v.clone());
        v
    }

    /// New members Amazon could add to a customer object: a contact of each kind, a nested
    /// object with an array, a number.
    fn members(&mut self, object: &mut Map<String, Value>) {
        object.insert("driftContactEmail".into(), json!(self.text("email")));
        object.insert("DriftPhone2".into(), json!(self.text("phone")));
        object.insert("driftNote".into(), json!(self.text("Jane Doe note")));
        let nested = json!({"line": self.text("1 Cross St"), "others": [self.text("Joe Doe"), {"who": self.text("Ann Doe")}]});
        object.insert("DriftExtra".into(), nested);
        let number: f64 = self.text("number").parse().expect("number");
        object.insert("driftFloor".into(), json!(number));
    }
}

/// `$['a'][0]['b']` → the value there.
fn at_mut<'a>(value: &'a mut Value, location: &str) -> Option<&'a mut Value> {
    let mut rest = location.strip_prefix('$')?;
    let mut current = value;
    while !rest.is_empty() {
        rest = rest.strip_prefix('[')?;
        let end = match rest.strip_prefix('\'') {
            Some(quoted) => quoted.find("']")? + 2,
            None => rest.find(']')?,
        };
        let step = &rest[..end];
        current = match step.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            Some(key) => current.get_mut(key)?,
            None => current.get_mut(step.parse::<usize>().ok()?)?,
        };
        rest = &rest[end + 1..];
    }
    Some(current)
}

/// `$.payload.a.b` → `$.a.b` for an operation whose bodies may come without the wrapper.
fn paths_of(op: &Operation, jsonpath: &str) -> Vec<String> {
    let mut out = vec![jsonpath.to_string()];
    if let Some(rest) = op.also_unwrapped.as_deref().and_then(|w| jsonpath.strip_prefix(&format!("$.{w}"))) {
        if rest.is_empty() || rest.starts_with('.') || rest.starts_with('[') {
            out.push(format!("${rest}"));
        }
    }
    out
}

/// Locations of the customer objects of `op` in `body`, deepest first.
fn object_locations(op: &Operation, body: &Value) -> Vec<String> {
    let mut found: BTreeSet<String> = BTreeSet::new();
    for object in &op.objects {
        for path in paths_of(op, &object.jsonpath) {
            found.extend(js_path(&path, body).expect("query").into_iter().map(|h| h.path()));
        }
    }
    let mut v: Vec<String> = found.into_iter().collect();
    v.sort_by_key(|l| std::cmp::Reverse(l.len()));
    v
}

/// Plants new members in every customer object of `body` (an object, or each object of an array).
fn plant(op: &Operation, body: &mut Value, planter: &mut Planter) -> usize {
    let mut n = 0;
    for location in object_locations(op, body) {
        match at_mut(body, &location) {
            Some(Value::Object(m)) => {
                planter.members(m);
                n += 1;
            }
            Some(Value::Array(items)) => {
                for item in items.iter_mut() {
                    if let Value::Object(m) = item {
                        planter.members(m);
                        n += 1;
                    }
                }
            }
            _ => {}
        }
    }
    n
}

/// Turns every customer object of `body` into an array holding it (deepest first, so the
/// locations of the others stay valid).
fn objects_to_arrays(op: &Operation, body: &mut Value) {
    for location in object_locations(op, body) {
        if let Some(v) = at_mut(body, &location) {
            if v.is_object() {
                *v = Value::Array(vec![v.take()]);
            }
        }
    }
}

/// Every key with its first letter's case flipped (`payload` → `Payload`, `ShippingAddress` →
/// `shippingAddress`).
fn flip_case(value: &mut Value) {
    match value {
        Value::Object(m) => {
            let old = std::mem::take(m);
            for (k, mut v) in old {
                flip_case(&mut v);
                let mut chars = k.chars();
                let flipped = match chars.next() {
                    Some(c) if c.is_uppercase() => c.to_lowercase().chain(chars).collect(),
                    Some(c) => c.to_uppercase().chain(chars).collect(),
                    None => k,
                };
                m.insert(flipped, v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(flip_case),
        _ => {}
    }
}

/// A body holding an empty object at every customer-object path of `op` (arrays of one element
/// where the path has `[*]`).
fn synthesized(op: &Operation) -> Value {
    let mut body = json!({});
    for object in &op.objects {
        let mut current = &mut body;
        let path = object.jsonpath.strip_prefix('$').expect("jsonpath");
        let steps: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
        for step in steps {
            let (name, arrays) = (step.trim_end_matches("[*]"), step.matches("[*]").count());
            let Value::Object(m) = current else { break };
            let mut slot = m.entry(name.to_string()).or_insert_with(|| json!({}));
            for _ in 0..arrays {
                if !slot.is_array() {
                    *slot = json!([{}]);
                }
                slot = &mut slot[0];
            }
            current = slot;
        }
    }
    body
}

/// The PII strings of a fixture, as JSON strings (quoted), that appear in it only where the
/// catalog says PII is (so any copy of them in a response is a leak).
fn fixture_needles(op: &Operation, body: &Value, raw: &str) -> Vec<String> {
    let pii = catalog_pii(op, body);
    pii.iter()
        .filter_map(|p| p.value.as_str())
        .filter(|s| s.chars().count() >= 4)
        .map(|s| serde_json::to_string(s).expect("json"))
        .filter(|needle| raw.matches(needle.as_str()).count() == pii.iter().filter(|q| serde_json::to_string(&q.value).ok().as_ref() == Some(needle)).count())
        .collect()
}

/// The keys and array lengths of a document, for "same shape" (values may be tokens).
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        _ => Value::Null,
    }
}

struct Case {
    name: String,
    method: String,
    url: String,
    request_body: Option<String>,
    body: Vec<u8>,
    needles: Vec<String>,
}

#[test]
fn no_planted_value_reaches_the_client_in_clear_whatever_the_shape() {
    let key = random_key();
    let catalog = Catalog::build(&CatalogOverrides::default()).expect("catalog");
    let mut planter = Planter::default();
    let mut cases: Vec<Case> = Vec::new();
    let mut kinds_planted: BTreeSet<String> = BTreeSet::new();

    // 1. Amazon's fixtures, with new members in their customer objects, in every shape.
    for fx in response_fixtures() {
        let Some(op) = catalog.route(&fx.method, &fx.path) else { continue };
        if op.objects.is_empty() || !(200..300).contains(&fx.status()) {
            continue;
        }
        let raw = fx.body();
        let Ok(original) = serde_json::from_slice::<Value>(&raw) else { continue };
        let needles = fixture_needles(op, &original, &String::from_utf8_lossy(&raw));
        let mut planted = original.clone();
        if plant(op, &mut planted, &mut planter) == 0 {
            continue;
        }
        for object in &op.objects {
            if paths_of(op, &object.jsonpath).iter().any(|p| !js_path(p, &original).expect("query").is_empty()) {
                kinds_planted.insert(object.object.clone());
            }
        }
        let mut variants = vec![("members", planted.clone())];
        let mut arrays = planted.clone();
        objects_to_arrays(op, &mut arrays);
        variants.push(("arrays", arrays));
        let mut case = planted.clone();
        flip_case(&mut case);
        variants.push(("case", case));
        if let (Some(w), Some(inner)) = (op.also_unwrapped.as_deref(), planted.get("payload")) {
            if w == "payload" {
                variants.push(("unwrapped", inner.clone()));
            }
        }
        for (variant, body) in variants {
            cases.push(Case {
                name: format!("{}:{variant}", fx.file),
                method: fx.method.clone(),
                url: fx.url(),
                request_body: fx.request_body(),
                body: serde_json::to_vec(&body).expect("json"),
                needles: needles.clone(),
            });
        }
    }

    // 2. Every operation's customer objects at every place the catalog puts them, built from the
    //    paths (for the models whose examples are not shipped: Shipping v2, External Fulfillment).
    for op in catalog.operations.iter().filter(|o| !o.objects.is_empty()) {
        let mut body = synthesized(op);
        plant(op, &mut body, &mut planter);
        kinds_planted.extend(op.objects.iter().map(|o| o.object.clone()));
        let mut variants = vec![("members", body.clone())];
        let mut arrays = body.clone();
        objects_to_arrays(op, &mut arrays);
        variants.push(("arrays", arrays));
        let mut case = body.clone();
        flip_case(&mut case);
        variants.push(("case", case));
        if let Some(inner) = op.also_unwrapped.as_deref().and_then(|w| body.get(w)) {
            variants.push(("unwrapped", inner.clone()));
        }
        let url = op.path_template.split('/').map(|s| if s.starts_with('{') { "DRIFT1" } else { s }).collect::<Vec<_>>().join("/");
        let request_body = (op.method != "GET" && op.method != "DELETE").then(|| "{}".to_string());
        for (variant, body) in variants {
            cases.push(Case {
                name: format!("{}:{variant}", op.id),
                method: op.method.clone(),
                url: url.clone(),
                request_body: request_body.clone(),
                body: serde_json::to_vec(&body).expect("json"),
                needles: vec![],
            });
        }
    }
    let every_kind: BTreeSet<String> = catalog.operations.iter().flat_map(|o| o.objects.iter().map(|i| i.object.clone())).collect();
    assert_eq!(kinds_planted, every_kind, "every kind of customer object gets new members");
    assert!(every_kind.len() >= 50, "{} kinds", every_kind.len());

    let entries: Vec<(String, Vec<u8>)> = cases.iter().enumerate().map(|(i, c)| (format!("drift-{i}.json"), c.body.clone())).collect();
    let fixture_entries: Vec<FixtureEntry> = entries.iter().map(|(file, body)| (file.as_str(), "GET", "/drift", 200u16, json!({}), false, body.clone())).collect();
    let dir = fixture_dir("drift-fixtures", &fixture_entries);
    let mut opts = Options::new("drift", &key);
    opts.fixture_dirs.push(dir);
    opts.concurrency = 2;
    let stack = Stack::start(opts);
    let mut protected_members = 0u64;
    for (case, (file, _)) in cases.iter().zip(&entries) {
        let resp = stack.send(Client::Cert(ORDER_SYNC), &case.method, &case.url, &[("x-mock-fixture", file)], None, case.request_body.as_deref()).expect("curl");
        assert_eq!(resp.status, 200, "{}: {}", case.name, resp.text());
        let text = resp.text();
        let leaked: Vec<&String> = planter.planted.iter().chain(&case.needles).filter(|v| text.contains(v.as_str())).collect();
        assert!(leaked.is_empty(), "{}: in clear: {leaked:?}\n{text}", case.name);
        let got: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", case.name));
        let sent: Value = serde_json::from_slice(&case.body).expect("json");
        assert_eq!(shape(&got), shape(&sent), "{}: members and elements kept", case.name);
    }
    let events = stack.wait_for_audit_events(cases.len());
    for e in &events {
        protected_members += e["drift"]["member"]["protected"].as_u64().unwrap_or(0);
    }
    assert!(protected_members >= planter.planted.len() as u64 / 2, "{protected_members} members reported protected");
    // Nothing Envoy printed holds a planted value: events and metrics name path templates.
    let mut printed = stack.envoy_output();
    printed.push_str(&String::from_utf8_lossy(&curl(stack.admin_port, "GET", "/stats/prometheus", &[]).body));
    assert!(!printed.contains(MARK), "a planted value in Envoy's output");
    assert!(!printed.contains("panicked"));
    println!("{} responses, {} planted values, {} kinds of customer object", cases.len(), planter.planted.len(), every_kind.len());
}

#[test]
fn drift_is_reported_as_events_metrics_and_audit_counts_and_raises_the_alarm_metric() {
    let key = random_key();
    let body = json!({"payload": {"Orders": [{
        "AmazonOrderId": "902-3159896-1390916",
        "BuyerInfo": {"BuyerEmail": "buyer@example.com", "BuyerPhoneNew": "+1 206 555 0123"},
        "GiftNote": {"recipientName": "Janet Zqplanted"},
        "Concierge": "zqplanted@marketplace.amazon.com"
    }]}});
    let zero = json!({"data": {"recipient": {"fullName": "Zq Unmatched", "postalCode": "98101"}}});
    let free = json!({"payload": {"accessPointsMap": {"HELIX": [{"accessPointId": "AP1", "note": "zqfree@example.com"}]}}});
    let dir = fixture_dir(
        "drift-report-fixtures",
        &[
            ("orders.json", "GET", "/orders/v0/orders", 200, json!({}), false, serde_json::to_vec(&body).expect("json")),
            ("zero.json", "GET", "/orders/v0/orders/1/address", 200, json!({}), false, serde_json::to_vec(&zero).expect("json")),
            ("free.json", "GET", "/shipping/v2/accessPoints", 200, json!({}), false, serde_json::to_vec(&free).expect("json")),
        ],
    );
    let mut opts = Options::new("drift-report", &key);
    opts.fixture_dirs.push(dir);
    opts.policy["drift"] = json!({"scanPiiFreeOperations": true});
    let stack = Stack::start(opts);
    let orders = stack.request("GET", "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER", &[("x-mock-fixture", "orders.json")]);
    assert_eq!(orders.status, 200);
    let text = orders.text();
    for planted in ["+1 206 555 0123", "zqplanted@marketplace.amazon.com"] {
        assert!(!text.contains(planted), "{planted} in clear");
    }
    assert!(text.contains("Janet Zqplanted"), "a name is reported, not changed, by default");
    let zero_resp = stack.request("GET", "/orders/v0/orders/1/address", &[("x-mock-fixture", "zero.json")]);
    assert_eq!(zero_resp.status, 200);
    let free_resp = stack.request("GET", "/shipping/v2/accessPoints?countryCode=US", &[("x-mock-fixture", "free.json")]);
    assert_eq!(free_resp.json(), free, "a PII-free operation's body streams unchanged");

    let events = stack.wait_for_audit_events(3);
    assert_eq!(events[0]["drift"], json!({"member": {"protected": 1}, "email": {"protected": 1}, "name": {"reported": 1}}));
    assert_eq!(events[1]["drift"], json!({"name": {"reported": 1}, "zero_match": {"reported": 1}}));
    assert_eq!(events[2]["drift"], json!({"email": {"reported": 1}}));
    assert!(events.iter().all(|e| e["security_events"].as_array().is_some_and(|a| a.contains(&json!("schema_drift")))));
    let drift: Vec<Value> = stack.wait_for_security_event("schema_drift").into_iter().filter(|e| e["event"] == "schema_drift").collect();
    let seen: BTreeSet<(String, String, String, String)> = drift
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (s("operation"), s("reason"), s("detail"), s("path"))
        })
        .collect();
    let want: BTreeSet<(String, String, String, String)> = [
        ("orders-v0.getOrders", "member", "protected", "$.payload.Orders[*].BuyerInfo.BuyerPhoneNew"),
        ("orders-v0.getOrders", "email", "protected", "$.payload.Orders[*].Concierge"),
        ("orders-v0.getOrders", "name", "reported", "$.payload.Orders[*].GiftNote.recipientName"),
        ("orders-v0.getOrderAddress", "name", "reported", "$.data.recipient.fullName"),
        ("orders-v0.getOrderAddress", "zero_match", "reported", "$.data.recipient.fullName"),
        ("shipping-v2.getAccessPoints", "email", "reported", "$.payload.accessPointsMap.HELIX[*].note"),
    ]
    .into_iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
    .collect();
    assert_eq!(seen, want);
    // The metric, with the path template as a label, as Prometheus reads it.
    let metrics = stack.metrics();
    let metric = |op: &str, kind: &str, action: &str, path: &str| {
        metrics
            .iter()
            .find(|(k, _)| {
                k.starts_with("spapi_guard_schema_drift_total{")
                    && [format!("operation=\"{op}\""), format!("kind=\"{kind}\""), format!("action=\"{action}\""), format!("path=\"{path}\"")]
                        .iter()
                        .all(|l| k.contains(l.as_str()))
            })
            .map(|(_, v)| *v)
    };
    assert_eq!(metric("orders-v0.getOrders", "member", "protected", "$.payload.Orders[*].BuyerInfo.BuyerPhoneNew"), Some(1), "{metrics:?}");
    assert_eq!(metric("orders-v0.getOrderAddress", "zero_match", "reported", "$.data.recipient.fullName"), Some(1));
    assert_eq!(metric("shipping-v2.getAccessPoints", "email", "reported", "$.payload.accessPointsMap.HELIX[*].note"), Some(1));
    let printed = stack.envoy_output();
    for value in ["+1 206 555 0123", "zqplanted", "Zqplanted", "Zq Unmatched", "zqfree"] {
        assert!(!printed.contains(value), "{value} in Envoy's output");
    }
}
