//! Fuzzing on stable Rust: a bounded, seeded random fuzzer (no libFuzzer, no nightly, no crate
//! beyond the project's). One test per target:
//!
//! * `fuzz_rewriter` — the response rewriter through `Guard::protect_response_with`
//!   (tests/fuzz/rewriter.rs);
//! * `fuzz_router` — `Catalog::route_index` and `audit::redacted_path_with` (tests/fuzz/router.rs);
//! * `fuzz_exchange` — the exchange state machine of src/exchange.rs against `MockHost`, with the
//!   phase orders Envoy produces, resets and local replies (tests/fuzz/exchange.rs);
//! * `fuzz_report` — the report document rewriter of src/report against a reference writer, at
//!   random chunk boundaries, gzip and mutations (tests/fuzz/report.rs).
//!
//! Knobs (environment):
//! * `FUZZ_SECONDS` — seconds per target (default 3: `make test`; `make fuzz` runs 300);
//! * `FUZZ_SEED` — the run's seed (default fixed, so `cargo test` is the same run every time);
//! * `FUZZ_REPLAY` — a case seed from a failure report: runs that one case;
//! * `FUZZ_STRICT=1` — known bugs (below) fail the run too.
//!
//! Each target prints one line: executions, exec/s, the seed, and what the cases did. On a
//! failure it minimizes the case, writes a reproducer to target/fuzz-failures/ and fails with the
//! seeds that replay it. Run: `cargo test --profile fuzz --test fuzz -- --nocapture`.
#[path = "fuzz/engine.rs"]
mod engine;
#[path = "fuzz/exchange.rs"]
mod exchange;
#[path = "fuzz/refjson.rs"]
mod refjson;
#[path = "fuzz/report.rs"]
mod report;
#[path = "fuzz/rewriter.rs"]
mod rewriter;
#[path = "fuzz/router.rs"]
mod router;

use engine::{Knobs, Target};

// ---------------------------------------------------------------------------------------------
// KNOWN BUGS: found by this fuzzer, reported, not fixed yet. The fuzzer counts and reports them
// without failing (FUZZ_STRICT=1 fails on them); each has an #[ignore]d test below that fails
// until it is fixed. When a bug is fixed: remove its constant and its `.known(..)` tag in the
// target, and drop the #[ignore].
// ---------------------------------------------------------------------------------------------

// (None open at the moment. Fixed: KNOWN_BUG_INTEGER_COARSENED_IN_CLEAR — see
// `a_number_at_a_string_typed_pii_path_is_tokenized_not_kept_in_clear` below;
// KNOWN_BUG_ARRAY_ELEMENTS_COUNTED_TWICE — see `an_array_at_a_pii_leaf_is_counted_once`.)

#[test]
fn fuzz_rewriter() {
    let mut target = rewriter::RewriterTarget::new();
    let report = engine::run(&mut target, &Knobs::from_env());
    assert!(report.execs > 0);
}

#[test]
fn fuzz_report() {
    let mut target = report::ReportTarget::new();
    let report = engine::run(&mut target, &Knobs::from_env());
    assert!(report.execs > 0);
}

#[test]
fn fuzz_router() {
    let mut target = router::RouterTarget::new();
    let report = engine::run(&mut target, &Knobs::from_env());
    assert!(report.execs > 0);
}

// ---------------------------------------------------------------------------------------------
// Target (c): the exchange state machine (tests/fuzz/exchange.rs). The plug point stays: any
// `Target` (or an `engine::FnTarget` of two closures) returned here runs with the same knobs,
// statistics, panic capture, minimizer and reproducer files as the other targets.
// ---------------------------------------------------------------------------------------------
fn exchange_target() -> Option<impl Target> {
    Some(exchange::ExchangeTarget::new())
}

#[test]
fn fuzz_exchange() {
    match exchange_target() {
        Some(mut target) => {
            let report = engine::run(&mut target, &Knobs::from_env());
            assert!(report.execs > 0);
        }
        None => println!("fuzz exchange: no target yet (plug point in tests/fuzz.rs, for src/exchange.rs)"),
    }
}

// ---------------------------------------------------------------------------------------------
// Reproducers of the known bugs: #[ignore]d until fixed (`cargo test --test fuzz -- --ignored`).
// ---------------------------------------------------------------------------------------------

/// Found by `fuzz_router` (fixed by src/uri.rs + `audit::redacted_path_with`): the SP-API reads
/// `%42uyerEmail` as `BuyerEmail` (query names are percent-decoded like values); the audit log
/// once matched names as written and logged the buyer's email (DPP 2.6). Kept as a regression test.
#[test]
fn percent_encoded_pii_query_names_do_not_log_the_value() {
    use spapi_guard::audit::redacted_path;
    use spapi_guard::catalog::{Catalog, CatalogOverrides};
    let catalog = Catalog::build(&CatalogOverrides::default()).expect("catalog");
    for (path, pii) in [
        ("/orders/v0/orders?%42uyerEmail=jane%40example.com&MarketplaceIds=ATVPDKIKX0DER", "jane"),
        ("/orders/v0/orders?Buyer%45mail=jane.doe", "jane"),
        ("/shipping/v2/accessPoints?postal%43ode=98101&countryCode=US", "98101"),
    ] {
        let op = catalog.route("GET", path).expect("routed");
        let logged = redacted_path(path, Some(op));
        assert!(!logged.contains(pii), "{} logs {pii}: {logged}", op.id);
    }
}

/// Found by `fuzz_rewriter` as KNOWN_BUG_INTEGER_COARSENED_IN_CLEAR (fixed in src/guard.rs): a
/// JSON number at a PII path was "coarsened" whatever Amazon's model says the member is, and
/// coarsening keeps an integer, so where the model has a string — a phone, a postal code — a
/// number the upstream sends passed in clear. Now a number is coarsened only where the model
/// declares a number; elsewhere it gets its class's action (a token of kind `j`). Kept as a
/// regression test.
#[test]
fn a_number_at_a_string_typed_pii_path_is_tokenized_not_kept_in_clear() {
    use spapi_guard::guard::Guard;
    let policy = r#"{"version":1,"keys":{"active":"k1","env":{"k1":"K1"}}}"#;
    let guard = Guard::load(policy.as_bytes(), &|_| Some("8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8".to_string())).expect("policy");
    let op = guard.catalog.route("GET", "/orders/v0/orders/902-3159896-1390916/address").expect("routed");
    let body = br#"{"payload":{"ShippingAddress":{"Name":"Jane Doe","Phone":4155551234,"PostalCode":48817,"AddressLine1":12.5}}}"#;
    let out = guard.protect_response(op, body).expect("protected");
    let text = String::from_utf8(out.body.expect("rewritten")).expect("utf8");
    for pii in ["4155551234", "48817", "12.5"] {
        assert!(!text.contains(pii), "{pii} in clear: {text}");
    }
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let phone = guard.tokens.open(v["payload"]["ShippingAddress"]["Phone"].as_str().expect("a token"), 0).expect("opens");
    assert_eq!((phone.plaintext.as_slice(), phone.kind), (&b"4155551234"[..], spapi_guard::tokens::ValueKind::RawJson));
    assert_eq!(out.counts.coarsened(spapi_guard::pii::PiiClass::Address), 0);
}

/// Found by `fuzz_rewriter` after the drift safety net as KNOWN_BUG_ARRAY_ELEMENTS_COUNTED_TWICE
/// (fixed in src/json_rewrite.rs and src/guard.rs: a container replaced as a whole forgets the
/// counts of its members): an array at a PII leaf path is tokenized as one value (one token of
/// kind `j`), but each element was also matched as "the object arriving as an array" and counted
/// before the whole array replaced it — the audit/metric counts said n+1 values for one.
#[test]
fn an_array_at_a_pii_leaf_is_counted_once() {
    use spapi_guard::guard::Guard;
    let policy = r#"{"version":1,"keys":{"active":"k1","env":{"k1":"K1"}}}"#;
    let guard = Guard::load(policy.as_bytes(), &|_| Some("8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8".to_string())).expect("policy");
    let op = guard.catalog.operations.iter().find(|o| o.id == "shipping-v1.getShipment").expect("op");
    let out = guard.protect_response(op, br#"{"payload":{"shipTo":{"addressLine1":["D","E"]}}}"#).expect("protected");
    assert_eq!(out.counts.get(spapi_guard::pii::PiiClass::Address, spapi_guard::policy::Action::Tokenize(spapi_guard::tokens::Mode::Deterministic)), 1);
}
