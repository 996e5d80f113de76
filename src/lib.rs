//! spapi-guard: an Envoy Wasm filter that tokenizes customer PII in Amazon SP-API responses.
//!
//! Layout: a pure core (no proxy-wasm calls, unit-tested natively) and a thin `filter` layer that
//! adapts it to the Envoy host (compiled only for wasm32).
//!
//! * [`policy_doc`] — the policy document as written: parsed, validated, every error naming its field.
//! * [`policy`], [`keyring`], [`catalog`] — configuration: what to do, with which keys, where.
//! * [`uri`], [`router`], [`field_path`], [`path_matcher`] — request target → decoded segments and
//!   query pairs → operation; JSONPath → automaton.
//! * [`json_rewrite`] — byte-faithful, validating one-pass body rewriting.
//! * [`tokens`] — the AES-256-GCM token engine.
//! * [`guard`] — the loaded configuration applied to a body.
//! * [`exchange`] — one request/response exchange as a state machine over a host trait: every
//!   decision of the filter, testable natively ([`testing::MockHost`]).
//! * [`lifecycle`] — configuration loading and lockout timers of a VM; [`key_status`] — the key
//!   ring's gauges and events.
//! * [`processing_record`] — the record of processing (GDPR art. 30): the compiled policy, per caller.
//! * [`fail_closed`] — what the client gets when a body cannot be protected.
//! * [`upstreams`] — approved third-party upstreams, and the binding of each request to the
//!   cluster Envoy sends it to.
//! * [`report`] — report documents: streamed, decompressed and rewritten with flat memory.
// A panic in the VM takes the filter down: input-driven code never unwraps (enforced here, for
// everything but unit tests; `.ci/run` runs clippy on the native and the wasm32 build).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::todo, clippy::unimplemented))]

pub mod access;
pub mod audit;
pub mod canary;
pub mod catalog;
pub mod cidr;
pub mod config_error;
pub mod detokenize;
pub mod documents;
pub mod download;
pub mod drift;
pub mod exchange;
pub mod fail_closed;
pub mod field_path;
pub mod guard;
pub mod json_rewrite;
pub mod key_status;
pub mod keyring;
pub mod lifecycle;
pub mod lockout;
pub mod metrics;
pub mod path_matcher;
pub mod pii;
pub mod policy;
pub mod policy_doc;
pub mod processing_record;
pub mod query_params;
pub mod report;
pub mod router;
pub mod schema;
#[doc(hidden)]
pub mod testing;
pub mod tokens;
pub mod upstreams;
pub mod uri;

#[cfg(target_arch = "wasm32")]
mod filter;
