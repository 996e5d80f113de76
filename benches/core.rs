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
use spapi_guard::report::{gzip, inflate::Gunzip, Compression, DocumentRewriter};
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

    report_documents(budget);

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

/// A GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING document of about `bytes`: one buyer per row
/// (names, emails, phones, addresses new each row), cities and states from a short list.
fn order_report(bytes: usize) -> Vec<u8> {
    let mut doc = b"order-id\torder-item-id\tpurchase-date\tpayments-date\tbuyer-email\tbuyer-name\tbuyer-phone-number\tsku\tproduct-name\tquantity-purchased\tship-service-level\trecipient-name\tship-address-1\tship-address-2\tship-city\tship-state\tship-postal-code\tship-country\n".to_vec();
    const CITIES: [&str; 6] = ["Seattle", "Portland", "Austin", "Denver", "Boston", "Chicago"];
    let mut i = 0usize;
    while doc.len() < bytes {
        let city = CITIES[i % CITIES.len()];
        doc.extend_from_slice(
            format!(
                "111-{i:07}-{:07}\t{:014}\t2026-11-01T10:00:00+00:00\t2026-11-01T10:05:00+00:00\tbuyer{i}@marketplace.example\tJane Buyer {i}\t+1 206-555-{:04}\tSKU-{:05}\tWidget with a long product title, 12 pack\t1\tStandard\tJane Buyer {i}\t{} Main Street\tApt {}\t{city}\tWA\t{:05}\tUS\n",
                i * 7 % 10_000_000,
                i,
                i % 10_000,
                i % 5000,
                i % 9000 + 1,
                i % 300,
                98000 + i % 999
            )
            .as_bytes(),
        );
        i += 1;
    }
    doc
}

/// Report documents: MB/s of uncompressed TSV text, with inflate, parse and crypto apart.
fn report_documents(budget: Duration) {
    let doc = order_report(8 << 20);
    let gz = gzip(&doc, 6);
    let mb = doc.len() as f64 / 1e6;
    println!("\n## Report documents: an order report (TSV, {:.1} MB, {:.1} MB gzip, native)\n", mb, gz.len() as f64 / 1e6);
    println!("MB/s of uncompressed report text; documents pushed in 64 KiB chunks as a stream brings them.\n");
    println!("| what | ms per document | MB/s |\n|---|---:|---:|");
    let row = |name: &str, ns: f64| println!("| {name} | {:.1} | {:.0} |", ns / 1e6, mb / (ns / 1e9));
    let ns = time_per_call(budget * 2, || {
        let mut g = Gunzip::new();
        let mut n = 0usize;
        for chunk in gz.chunks(64 * 1024) {
            let _ = g.push(chunk, &mut |s| {
                n += s.len();
                Ok(())
            });
        }
        black_box(n);
    });
    row("inflate only (gzip → text, CRC-32 checked)", ns);
    let rewrite = |input: &[u8], compression: Compression, actions: PerClass<Action>| {
        let mut r = DocumentRewriter::new(std::rc::Rc::new(guard(true)), actions, Some("GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING"), compression, 0).expect("rewriter");
        let mut out = Vec::with_capacity(1 << 20);
        for chunk in input.chunks(64 * 1024) {
            r.push(chunk, &mut out).expect("push");
            out.clear();
        }
        black_box(r.finish(&mut out).expect("finish"));
    };
    let default = *guard(true).policy.actions();
    for (name, input, compression, actions) in [
        ("parse only (every class clear)", &doc, Compression::Identity, PerClass::splat(Action::Clear)),
        ("parse + replace, no crypto (every class redacted)", &doc, Compression::Identity, PerClass::splat(Action::Redact)),
        ("parse + tokenize (default policy)", &doc, Compression::Identity, default),
        ("inflate + parse + tokenize (default policy)", &gz, Compression::Gzip, default),
    ] {
        let ns = time_per_call(budget * 2, || rewrite(input, compression, actions));
        row(name, ns);
    }
}
