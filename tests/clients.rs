//! Real SP-API clients through spapi-guard: Amazon's official Python and JS SDKs, the community
//! python-amazon-sp-api and the typed @sp-api-sdk packages, each running its own calls (one
//! script per client under tests/clients/) against a real Envoy with the filter, mTLS and the
//! default policy, in front of the mock SP-API. Run with `make test-clients` (it builds the
//! filter, installs Envoy and the pinned clients into ignored folders first).
//!
//! Every fixture of getOrders, getOrder, getOrderAddress, getOrderBuyerInfo, getOrderItems,
//! getOrderItemsBuyerInfo, getOrderRegulatedInfo (Orders v0) and searchOrders, getOrder (Orders
//! 2026-01-01) is played twice per client: straight from the mock
//! (plain HTTP: how the client reads Amazon's own example) and through spapi-guard as the
//! `order-sync` caller. Through spapi-guard the client must deserialize what it deserialized
//! straight, with every member kept and of the same JSON type (a number stays a number), and every
//! enum-typed PII member one of its values (policies/spapi-schema-facts.json: a schema enum, or
//! the values an Orders 2026 member's description lists); an error fixture
//! must give the same error. The Orders 2026 fixtures are also played as `analytics` (PII
//! removed): the client must still deserialize them. Then the refusals: an unknown caller (403),
//! `analytics` on a restricted operation (403), an upstream body that is not JSON (502), and
//! `analytics` locked out after repeated denials (403 locked_out): each must surface as the client's error
//! type with its status, within the case's time limit.
//!
//! The LWA token exchange of every client goes to a stand-in (`POST /auth/o2/token` on the mock,
//! tests/clients/fixtures); how each client is pointed at it, at spapi-guard and given its client
//! certificate is at the top of its script and in docs/CLIENTS.md. Each test prints a table of
//! its cases and leaves the cases, the results and the report in target/e2e/clients-*/.
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Seconds one case may take (a client that sleeps through a lockout is cut off here).
const CASE_TIMEOUT_S: u64 = 15;

/// The operations of the issue, by the name the scripts use → catalog operation id.
const OPERATIONS: [(&str, &str); 9] = [
    ("v0.getOrders", "orders-v0.getOrders"),
    ("v0.getOrder", "orders-v0.getOrder"),
    ("v0.getOrderAddress", "orders-v0.getOrderAddress"),
    ("v0.getOrderBuyerInfo", "orders-v0.getOrderBuyerInfo"),
    // The other Orders v0 reads with customer data, beyond the list.
    ("v0.getOrderItems", "orders-v0.getOrderItems"),
    ("v0.getOrderItemsBuyerInfo", "orders-v0.getOrderItemsBuyerInfo"),
    ("v0.getOrderRegulatedInfo", "orders-v0.getOrderRegulatedInfo"),
    ("2026.searchOrders", "orders-2026-01-01.searchOrders"),
    ("2026.getOrder", "orders-2026-01-01.getOrder"),
];

struct ClientUnderTest {
    name: &'static str,
    /// The interpreter and the script (relative to tests/clients).
    program: PathBuf,
    script: &'static str,
    /// How the client's own error type is named (the class of the errors it raises for a status).
    error_class: &'static str,
    /// Statuses this client cannot report (its error object has none for them).
    statusless: &'static [u16],
}

fn python() -> PathBuf {
    let p = repo().join(".venv-clients/bin/python");
    assert!(p.exists(), "{} is missing: run `make test-clients` (it installs the clients)", p.display());
    p
}

fn node() -> PathBuf {
    assert!(repo().join("tests/clients/node_modules/@sp-api-sdk/auth").exists(), "tests/clients/node_modules is missing: run `make test-clients` (it installs the clients)");
    PathBuf::from("node")
}

/// The case list every client runs, in order (the lockout last: it locks `analytics`).
fn cases() -> Vec<Value> {
    let mut cases = Vec::new();
    let ops: BTreeMap<&str, &str> = OPERATIONS.iter().map(|(name, id)| (*id, *name)).collect();
    let fixtures: Vec<Fixture> = response_fixtures().into_iter().filter(|f| ops.contains_key(format!("{}.{}", op_prefix(&f.file), op_name(&f.file)).as_str())).collect();
    let case = |id: String, via: &str, caller: &str, op: &str, fx: &Fixture, expect: Value| {
        let query: BTreeMap<String, String> = url_query(&fx.query);
        json!({"id": id, "via": via, "caller": caller, "op": op, "orderId": order_id(&fx.path), "query": query,
               "fixture": fx.file, "status": fx.status(), "expect": expect})
    };
    for fx in &fixtures {
        let op = ops[format!("{}.{}", op_prefix(&fx.file), op_name(&fx.file)).as_str()];
        cases.push(case(format!("{}@direct", fx.file), "direct", ORDER_SYNC, op, fx, json!("baseline")));
        cases.push(case(format!("{}@guard", fx.file), "guard", ORDER_SYNC, op, fx, json!("as_direct")));
    }
    for fx in fixtures.iter().filter(|f| f.file.starts_with("orders-2026-01-01_")) {
        let op = ops[format!("{}.{}", op_prefix(&fx.file), op_name(&fx.file)).as_str()];
        // Without `includedData`: asking for PII classes it has no access to is refused (403
        // data_element_not_allowed, a denial toward its lockout). The mock plays the whole
        // example anyway, so the filter removes its PII.
        let mut c = case(format!("{}@analytics", fx.file), "guard", "analytics", op, fx, json!("as_direct_pii_removed"));
        c["query"].as_object_mut().expect("query").remove("includedData");
        cases.push(c);
    }
    let get_order = fixture("orders-v0_getOrder_1.json");
    let get_orders = fixture("orders-v0_getOrders_1.json");
    let search = fixture("orders-2026-01-01_searchOrders_1.json");
    cases.push(case("403 unknown caller".into(), "guard", "intruder", "v0.getOrder", &get_order, json!({"status": 403, "code": "Unauthorized"})));
    cases.push(case("403 restricted operation".into(), "guard", "analytics", "v0.getOrders", &get_orders, json!({"status": 403, "code": "Unauthorized"})));
    let mut invalid = case("502 invalid JSON".into(), "guard", ORDER_SYNC, "v0.getOrder", &get_order, json!({"status": 502, "code": "PiiProtectionFailed"}));
    invalid["orderId"] = json!("502-0000000-0000000");
    invalid["fixture"] = json!("invalid-json.json");
    cases.push(invalid);
    // The default policy locks a caller after 10 denials in 60 s: 9 more, then any request.
    for n in 2..=10 {
        cases.push(case(format!("lockout: denial {n}"), "guard", "analytics", "v0.getOrders", &get_orders, json!({"status": 403, "code": "Unauthorized"})));
    }
    // A lockout is a 403 (with Retry-After): no client's retry logic sleeps through it.
    cases.push(case(
        "lockout: 403 locked_out".into(),
        "guard",
        "analytics",
        "2026.searchOrders",
        &search,
        json!({"status": 403, "code": "Unauthorized", "details": "spapi-guard:locked_out"}),
    ));
    cases
}

/// `orders-v0_getOrderAddress_1.json` → ("orders-v0", "getOrderAddress").
fn op_prefix(file: &str) -> &str {
    file.split('_').next().unwrap_or("")
}

fn op_name(file: &str) -> &str {
    file.split('_').nth(1).unwrap_or("")
}

fn order_id(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/orders/v0/orders/").or_else(|| path.strip_prefix("/orders/2026-01-01/orders/"))?;
    Some(rest.split('/').next()?.to_string())
}

fn url_query(query: &str) -> BTreeMap<String, String> {
    query.split('&').filter(|p| !p.is_empty()).filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_string(), v.replace("%3A", ":").replace("%2C", ","))).collect()
}

/// policies/spapi-schema-facts.json: operation id → JSONPath → facts.
fn schema_facts() -> Value {
    let text = fs::read_to_string(repo().join("policies/spapi-schema-facts.json")).expect("policies/spapi-schema-facts.json");
    serde_json::from_str(&text).expect("facts json")
}

/// One step of a catalog JSONPath: a member (matched ignoring the case of its first letter, as
/// the JS SDK's models rename `AddressType` to `addressType`) or every element / member.
enum Step {
    Member(String),
    Any,
}

fn steps(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut rest = path.strip_prefix('$').expect("jsonpath");
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[*]").or_else(|| rest.strip_prefix(".*")) {
            out.push(Step::Any);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']").expect("quoted member");
            out.push(Step::Member(r[..end].to_string()));
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            out.push(Step::Member(r[..end].to_string()));
            rest = &r[end..];
        } else {
            panic!("unsupported jsonpath {path}");
        }
    }
    out
}

fn same_member(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.chars(), b.chars());
    match (x.next(), y.next()) {
        (Some(p), Some(q)) => p.eq_ignore_ascii_case(&q) && x.as_str() == y.as_str(),
        _ => a == b,
    }
}

/// Every value at `path` in `v`, with its location.
fn select<'v>(v: &'v Value, path: &[Step], at: String, out: &mut Vec<(String, &'v Value)>) {
    let Some((first, rest)) = path.split_first() else {
        out.push((at, v));
        return;
    };
    match (first, v) {
        (Step::Member(name), Value::Object(m)) => {
            if let Some((k, child)) = m.iter().find(|(k, _)| same_member(k, name)) {
                select(child, rest, format!("{at}.{k}"), out);
            }
        }
        (Step::Any, Value::Array(a)) => a.iter().enumerate().for_each(|(i, c)| select(c, rest, format!("{at}[{i}]"), out)),
        (Step::Any, Value::Object(m)) => m.iter().for_each(|(k, c)| select(c, rest, format!("{at}.{k}"), out)),
        _ => {}
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(s) if s == "NaN" => "NaN",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}…\"", &s[..32])
    } else {
        s
    }
}

/// Differences between the client's view straight from the mock (`direct`) and through
/// spapi-guard (`guard`): members removed (unless `removal_ok`), JSON types changed.
fn compare(direct: &Value, guard: &Value, at: &str, removal_ok: bool, out: &mut Vec<String>) {
    match (direct, guard) {
        (Value::Object(d), Value::Object(g)) => {
            for (k, dv) in d {
                match g.get(k) {
                    Some(gv) => compare(dv, gv, &format!("{at}.{k}"), removal_ok, out),
                    None if removal_ok || dv.is_null() => {}
                    None => out.push(format!("{at}.{k}: member removed (was {})", short(dv))),
                }
            }
        }
        (Value::Array(d), Value::Array(g)) => {
            if d.len() != g.len() && !removal_ok {
                out.push(format!("{at}: {} elements, {} straight from Amazon", g.len(), d.len()));
            }
            for (i, (dv, gv)) in d.iter().zip(g).enumerate() {
                compare(dv, gv, &format!("{at}[{i}]"), removal_ok, out);
            }
        }
        (d, g) if kind(d) != kind(g) && !(removal_ok && g.is_null()) => {
            out.push(format!("{at}: {} became {} ({} → {})", kind(d), kind(g), short(d), short(g)));
        }
        _ => {}
    }
}

/// Enum-typed (or documented-values) and number-typed PII members of `op` that the client's
/// view breaks.
fn check_schema(facts: &Value, op_id: &str, data: &Value, out: &mut Vec<String>) {
    let Some(paths) = facts["operations"][op_id].as_object() else { return };
    for (path, f) in paths {
        let mut hits = Vec::new();
        select(data, &steps(path), "$".into(), &mut hits);
        for (location, v) in hits {
            if v.is_null() {
                continue;
            }
            if let Some(values) = f["enum"].as_array() {
                if !values.contains(v) {
                    out.push(format!("{location}: {} is not one of its enum values {}", short(v), Value::Array(values.clone())));
                }
            }
            // The 2026-01-01 models list such values in the member's description instead.
            if let Some(values) = f["documentedValues"].as_array() {
                if !values.contains(v) {
                    out.push(format!("{location}: {} is not one of its documented values {}", short(v), Value::Array(values.clone())));
                }
            }
            let reported = out.iter().any(|p| p.starts_with(&format!("{location}: ")));
            if matches!(f["type"].as_str(), Some("number" | "integer")) && !v.is_number() && !reported {
                out.push(format!("{location}: schema type {} but the client holds {} ({})", f["type"].as_str().unwrap_or(""), kind(v), short(v)));
            }
        }
    }
}

/// Runs one client's script against a fresh stack and checks every case; panics with the list
/// of failed cases.
fn run_client(client: ClientUnderTest) {
    let key = random_key();
    let mut opts = Options::new("clients", &key);
    opts.fixture_dirs.push(repo().join("tests/clients/fixtures"));
    let stack = Stack::start(opts);
    let cases = cases();
    let config = json!({
        "guard": format!("https://127.0.0.1:{}", stack.port),
        "direct": format!("http://127.0.0.1:{}", stack.mock_port),
        "lwa": format!("http://127.0.0.1:{}/auth/o2/token", stack.mock_port),
        "tls": certs(),
        "timeout_s": CASE_TIMEOUT_S,
        "cases": cases,
    });
    let dir = stack.dir.join(client.name);
    fs::create_dir_all(&dir).expect("mkdir");
    let (cases_file, results_file) = (dir.join("cases.json"), dir.join("results.json"));
    fs::write(&cases_file, serde_json::to_vec_pretty(&config).expect("json")).expect("write cases");

    let started = Instant::now();
    let mut child = Command::new(&client.program)
        .arg(client.script)
        .arg(&cases_file)
        .arg(&results_file)
        .current_dir(repo().join("tests/clients"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("script.stdout")).expect("log"))
        .stderr(fs::File::create(dir.join("script.stderr")).expect("log"))
        .spawn()
        .expect("spawn client script");
    // Every case is bounded by CASE_TIMEOUT_S; the whole script by all of them plus start-up.
    let limit = Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}: the script ran over {limit:?}; see {}", client.name, dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = fs::read_to_string(dir.join("script.stderr")).unwrap_or_default();
    assert!(status.success(), "{}: the script failed ({status}):\n{stderr}", client.name);
    let results: Vec<Value> = serde_json::from_slice(&fs::read(&results_file).expect("results")).expect("results json");
    let results: BTreeMap<String, Value> = results.into_iter().map(|r| (r["id"].as_str().expect("id").to_string(), r)).collect();

    let facts = schema_facts();
    let op_ids: BTreeMap<&str, &str> = OPERATIONS.iter().copied().collect();
    let mut report = Vec::new();
    let mut failed = 0;
    let mut notes = Vec::new();
    for case in &cases {
        let id = case["id"].as_str().expect("id");
        let r = results.get(id).unwrap_or_else(|| panic!("{}: no result for {id}", client.name));
        let mut problems = Vec::new();
        let error = || {
            let text = r["error"].as_str().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
            let text: String = text.chars().take(400).collect();
            format!("{}: {text}", r["error_class"].as_str().unwrap_or("?"))
        };
        match &case["expect"] {
            Value::String(e) if e == "baseline" => {
                let expected_ok = case["status"] == 200;
                if r["ok"].as_bool() != Some(expected_ok) {
                    notes.push(format!("{id}: straight from the mock the client gives ok={} ({})", r["ok"], error()));
                }
            }
            Value::String(e) => {
                let file = case["fixture"].as_str().expect("fixture");
                let direct = &results[&format!("{file}@direct")];
                let op_id = op_ids[case["op"].as_str().expect("op")];
                let removal_ok = e == "as_direct_pii_removed";
                match (direct["ok"].as_bool(), r["ok"].as_bool()) {
                    (Some(true), Some(true)) => {
                        compare(&direct["data"], &r["data"], "$", removal_ok, &mut problems);
                        check_schema(&facts, op_id, &r["data"], &mut problems);
                    }
                    (Some(true), _) => problems.push(format!("error through spapi-guard: {}", error())),
                    (_, Some(true)) => problems.push(format!("succeeds through spapi-guard but not straight: {}", r["data"])),
                    _ => {
                        if (&direct["status"], &direct["error_class"]) != (&r["status"], &r["error_class"]) {
                            problems.push(format!(
                                "a different error through spapi-guard: {} (straight: {} {})",
                                error(),
                                direct["status"],
                                direct["error_class"].as_str().unwrap_or("")
                            ));
                        }
                    }
                }
            }
            expect => {
                let status = expect["status"].as_u64().expect("status") as u16;
                if r["ok"].as_bool() == Some(true) {
                    problems.push(format!("expected an error {status}, got a response: {}", short(&r["data"])));
                } else if r["error_class"] == "CaseTimeout" {
                    let retries = r["retries"].as_array().map(|a| a.len()).unwrap_or(0);
                    problems.push(format!(
                        "no error within {CASE_TIMEOUT_S} s: the client kept waiting{}",
                        if retries > 0 { format!(" ({retries} retries scheduled, delays {} ms)", r["retries"]) } else { String::new() }
                    ));
                } else if !r["error_class"].as_str().unwrap_or("").starts_with(client.error_class) {
                    problems.push(format!("not the client's error type ({}): {}", client.error_class, error()));
                } else {
                    if r["status"].as_u64() != Some(status as u64) && !(r["status"].is_null() && client.statusless.contains(&status)) {
                        problems.push(format!("status {} instead of {status}: {}", r["status"], error()));
                    }
                    if r["status"].is_null() && client.statusless.contains(&status) {
                        notes.push(format!("{id}: the client's error has no status for {status} (its error code is the only clue)"));
                    }
                    if r["error_code"] != expect["code"] {
                        problems.push(format!("error code {} instead of {}", r["error_code"], expect["code"]));
                    }
                }
            }
        }
        let verdict = if problems.is_empty() { "ok" } else { "FAIL" };
        if !problems.is_empty() {
            failed += 1;
        }
        report.push(json!({"case": id, "verdict": verdict, "ms": r["ms"], "problems": problems}));
    }
    let summary = json!({"client": client.name, "cases": report.len(), "failed": failed, "notes": notes, "report": report});
    fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&summary).expect("json")).expect("write report");

    let mut text =
        format!("{} — {} cases, {} failed, {:.1} s (report: {})\n", client.name, report.len(), failed, started.elapsed().as_secs_f64(), dir.join("report.json").display());
    for line in &report {
        if line["verdict"] == "ok" {
            continue;
        }
        text.push_str(&format!("  FAIL {}\n", line["case"].as_str().unwrap_or("")));
        for p in line["problems"].as_array().into_iter().flatten() {
            text.push_str(&format!("       {}\n", p.as_str().unwrap_or("")));
        }
    }
    for n in &notes {
        text.push_str(&format!("  note {n}\n"));
    }
    eprintln!("{text}");
    assert_eq!(failed, 0, "{text}");
}

#[test]
fn amazon_official_python_sdk() {
    run_client(ClientUnderTest { name: "amzn-sp-api", program: python(), script: "amzn_sp_api.py", error_class: "ApiException", statusless: &[] });
}

#[test]
fn amazon_official_js_sdk() {
    run_client(ClientUnderTest { name: "amazon-sp-api-sdk-js", program: node(), script: "amazon-sp-api-sdk-js.mjs", error_class: "Error", statusless: &[] });
}

#[test]
fn python_amazon_sp_api() {
    run_client(ClientUnderTest {
        name: "python-amazon-sp-api",
        program: python(),
        script: "python_amazon_sp_api.py",
        error_class: "SellingApi",
        // Statuses outside its table raise the generic SellingApiException, whose code is 999.
        statusless: &[502],
    });
}

#[test]
fn sp_api_sdk() {
    run_client(ClientUnderTest { name: "sp-api-sdk", program: node(), script: "sp-api-sdk.mjs", error_class: "SellingPartnerApiError", statusless: &[] });
}
