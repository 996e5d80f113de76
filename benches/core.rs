//! Microbenchmarks of the native core (`make bench`, or `cargo bench --bench core`): the cost of
//! one PII value per action and mode, body-rewrite throughput with and without crypto, and the
//! request side: detokenizing a label purchase's body.
//!
//! Native code uses AES-NI and SHA extensions where the CPU has them; inside Envoy's V8 the same
//! code runs without them (software AES, ~2–3× slower per value). The split measured through Envoy
//! (benches/run_bench.py, "Where the time goes") is the one to read for the filter; these numbers
//! show the shape (crypto vs walking) and catch regressions in the core.
use std::hint::black_box;
use std::time::{Duration, Instant};

use spapi_guard::detokenize::{detokenize_json, Revealed};
use spapi_guard::guard::Guard;
use spapi_guard::json_rewrite::write_json_string;
use spapi_guard::pii::{PerClass, PiiClass};
use spapi_guard::policy::Action;
use spapi_guard::tokens::{Mode, TokenEngine, ValueKind};

const KEY: &str = "8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

/// `remember`: whether the token engine keeps recent deterministic tokens (as in production).
fn guard(remember: bool) -> Guard {
    let policy = r#"{"version":1,"keys":{"active":"k1","env":{"k1":"K1"}},"classes":{"gift_message":{"mode":"randomized"},"other":{"mode":"randomized"}}}"#;
    let mut g = Guard::load(policy.as_bytes(), &|_| Some(KEY.to_string())).expect("policy");
    if !remember {
        let key: [u8; 32] = std::array::from_fn(|i| u8::from_str_radix(&KEY[2 * i..2 * i + 2], 16).unwrap_or(0));
        let engine = TokenEngine::new([("k1".to_string(), key)].into_iter().collect(), "k1").expect("engine");
        g.tokens = engine.with_recent_tokens(0);
    }
    g
}

/// Runs `f` repeatedly for about `budget`, returns nanoseconds per call (median of 5 batches).
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calibrate = 0u64;
    while start.elapsed() < budget / 10 {
        f();
        calibrate += 1;
    }
    let per_batch = (calibrate.max(1) * 2).max(1);
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / per_batch as f64
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[2]
}

fn main() {
    let budget = Duration::from_millis(400);
    // Per value: computed every time (nothing remembered), the cost of a value not seen before.
    let g = guard(false);
    let keys = g.tokens.active_keys(0);
    let value = b"Jane Q. Buyer-Example";
    let mut scratch = Vec::new();
    let mut out = String::new();
    println!("## Cost per PII value (native, {}-byte value)\n", value.len());
    println!("| action | ns per value |\n|---|---:|");
    type Case<'a> = (&'static str, Box<dyn Fn(&mut Vec<u8>, &mut String) + 'a>);
    let cases: [Case; 4] = [
        ("tokenize, deterministic (HMAC-SHA256 SIV + AES-256-GCM)", Box::new(|s, o| g.tokens.seal_into(&keys, PiiClass::Name, Mode::Deterministic, ValueKind::Text, value, s, o))),
        ("tokenize, randomized (AES-256-GCM)", Box::new(|s, o| g.tokens.seal_into(&keys, PiiClass::Name, Mode::Randomized, ValueKind::Text, value, s, o))),
        ("hash (HMAC-SHA256)", Box::new(|_, o| g.tokens.hash_into(&keys, PiiClass::Name, ValueKind::Text, value, o))),
        (
            "redact",
            Box::new(|_, o| {
                let mut v = Vec::new();
                write_json_string("REDACTED", &mut v);
                o.push_str(std::str::from_utf8(&v).unwrap_or(""));
            }),
        ),
    ];
    for (name, f) in &cases {
        let ns = time_per_call(budget, || {
            out.clear();
            f(&mut scratch, &mut out);
            black_box(&out);
        });
        println!("| {name} | {ns:.0} |");
    }

    // `cargo bench` passes `--bench`; the first other argument, if any, is the page to rewrite.
    let path = std::env::args().skip(1).find(|a| !a.starts_with("--")).unwrap_or_else(|| "target/bench/fixtures/getOrders-100.json".to_string());
    let Ok(body) = std::fs::read(&path) else {
        println!("\n(no {path}: run `make bench`, which generates it)");
        return;
    };
    let op = g.catalog.get("orders-v0.getOrders").expect("op");
    let mb = body.len() as f64 / 1e6;
    println!("\n## Rewriting the 100-order getOrders page ({:.0} KB, native)\n", body.len() as f64 / 1024.0);
    println!("| what | µs per page | MB/s |\n|---|---:|---:|");
    let row = |name: &str, ns: f64| println!("| {name} | {:.0} | {:.0} |", ns / 1000.0, mb / (ns / 1e9));
    let warm = guard(true);
    for (name, action, engine) in [
        ("walk + validate only (every class clear)", Some(Action::Clear), &g),
        ("rewrite without crypto (every class redacted)", Some(Action::Redact), &g),
        ("rewrite + HMAC-SHA256 (every class hashed)", Some(Action::Hash), &g),
        ("rewrite + tokenize (default policy), page never seen before", None, &g),
        ("rewrite + tokenize (default policy), page seen before (recent tokens remembered)", None, &warm),
    ] {
        let actions = match action {
            Some(a) => PerClass::splat(a),
            None => *g.policy.actions(),
        };
        let ns = time_per_call(budget * 2, || {
            black_box(engine.protect_response_with(op, &body, &actions).ok());
        });
        row(name, ns);
    }
    let ns = time_per_call(budget, || {
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        black_box(serde_json::to_vec(&v).ok());
    });
    row("for comparison: serde_json DOM parse + serialize, no PII work", ns);
    detokenize_request(&g, budget, &path);
}

/// The request side (issue #11): a Shipping v2 directPurchaseShipment body whose ship-to holds 10
/// tokens (benches/gen_payloads.py), back to plaintext as spapi-guard forwards it.
fn detokenize_request(g: &Guard, budget: Duration, page: &str) {
    let path = std::path::Path::new(page).with_file_name("directPurchaseShipment.request.json");
    let Some(mut body) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()) else {
        println!("\n(no {}: run `make bench`, which generates it)", path.display());
        return;
    };
    let members = [
        ("name", PiiClass::Name),
        ("companyName", PiiClass::Company),
        ("addressLine1", PiiClass::Address),
        ("addressLine2", PiiClass::Address),
        ("addressLine3", PiiClass::Address),
        ("city", PiiClass::Address),
        ("stateOrRegion", PiiClass::Address),
        ("postalCode", PiiClass::Address),
        ("phoneNumber", PiiClass::Phone),
        ("email", PiiClass::Email),
    ];
    for (member, class) in members {
        let value = body["shipTo"][member].as_str().unwrap_or_default().to_string();
        let token = g.tokens.seal(0, class, Mode::Deterministic, ValueKind::Text, value.as_bytes()).expect("sealed");
        body["shipTo"][member] = serde_json::Value::String(token);
    }
    let body = serde_json::to_vec(&body).expect("json");
    let allowed = PerClass::splat(true);
    let ns = time_per_call(budget, || {
        let mut revealed = Revealed::default();
        black_box(detokenize_json(&g.tokens, &allowed, &body, 0, &mut revealed).ok());
    });
    println!("\n## Detokenizing a request body (native)\n");
    println!("| what | µs per body |\n|---|---:|");
    println!("| directPurchaseShipment, {} bytes, 10 tokens → plaintext | {:.1} |", body.len(), ns / 1000.0);
}
