//! Fuzzing on stable Rust: a bounded, seeded random fuzzer (no libFuzzer, no nightly, no crate
//! beyond the project's). One test per target:
//!
//! * `fuzz_rewriter` — the response rewriter through `Guard::protect_response_with`
//!   (tests/fuzz/rewriter.rs);
//! * `fuzz_router` — `Catalog::route_index` and `audit::redacted_path` (tests/fuzz/router.rs);
//! * `fuzz_exchange` — the exchange state machine: a plug point, below, for src/exchange.rs.
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
#[path = "fuzz/refjson.rs"]
mod refjson;
#[path = "fuzz/rewriter.rs"]
mod rewriter;
#[path = "fuzz/router.rs"]
mod router;

use engine::{Failure, FnTarget, Knobs, Outcome, Rng, Target};

// ---------------------------------------------------------------------------------------------
// KNOWN BUGS: found by this fuzzer, reported, not fixed yet. The fuzzer counts and reports them
// without failing (FUZZ_STRICT=1 fails on them); each has an #[ignore]d test below that fails
// until it is fixed. When a bug is fixed: remove its constant and its `.known(..)` tag in the
// target, and drop the #[ignore].
// ---------------------------------------------------------------------------------------------

/// `audit::redacted_path` compares query parameter names as written; the SP-API reads them
/// percent-decoded, so `%42uyerEmail=jane@example.com` puts the buyer's email in the audit log.
pub const KNOWN_BUG_ENCODED_QUERY_NAME: &str = "redacted_path: percent-encoded PII query parameter names log the value";

#[test]
fn fuzz_rewriter() {
    let mut target = rewriter::RewriterTarget::new();
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
// Target (c): THE EXCHANGE STATE MACHINE — PLUG POINT (src/exchange.rs is being written).
//
// Return the target here, either a `Target` implementation (with `shrink` for minimized
// reproducers) or two closures:
//
//     Some(FnTarget::new(
//         "exchange",
//         |rng: &mut Rng| random_events(rng),                // a Vec of events, say
//         |events: &Vec<Event>| -> Result<Outcome, Failure> { // drive the machine, check
//             ...; Ok("completed")                           // invariants after each step
//         },
//     ))
//
// `fuzz_exchange` then runs it with the same knobs, statistics, panic capture, minimizer and
// reproducer files as the other targets (and `make test` / `make fuzz` pick it up).
// ---------------------------------------------------------------------------------------------
fn exchange_target() -> Option<impl Target> {
    None::<FnTarget<(), fn(&mut Rng), fn(&()) -> Result<Outcome, Failure>>>
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

/// KNOWN_BUG_ENCODED_QUERY_NAME, found by `fuzz_router`. The SP-API reads `%42uyerEmail` as
/// `BuyerEmail` (query names are percent-decoded like values), but `redacted_path` matches the
/// name as written, so the buyer's email is written to the audit log (DPP 2.6).
#[test]
#[ignore = "known bug: redacted_path logs PII query values under percent-encoded names"]
fn known_bug_percent_encoded_pii_query_name_logs_the_value() {
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
        // Today: "/orders/v0/orders?%42uyerEmail=jane%40example.com&MarketplaceIds=ATVPDKIKX0DER".
        assert!(!logged.contains(pii), "{} logs {pii}: {logged}", op.id);
    }
}
