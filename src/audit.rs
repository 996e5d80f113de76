//! One audit event per request, with no PII in it: which operation, what was decided, what was
//! done to how many PII values of which class. Never bodies, paths, query strings or header values
//! (a path or query can itself carry PII, e.g. getOrders `BuyerEmail`).
use serde::Serialize;
use std::collections::BTreeMap;

use crate::guard::FieldCounts;

/// How a request ended, as far as spapi-guard is concerned.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A catalog operation whose response was checked and protected.
    Protected,
    /// A catalog operation without response PII: passed unbuffered.
    PassedThrough,
    /// A path the catalog does not know: passed unbuffered.
    Unmatched,
    /// Denied before the upstream was contacted.
    Denied,
    /// The response could not be protected: the client got an error instead.
    FailClosed,
}

/// The access decision on a request.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Allow,
    Deny,
    /// Would have been denied; dry-run let it through.
    DryRunDeny,
    /// Denied because the caller is locked.
    Lockout,
}

/// The audit event of one request.
#[derive(Serialize, Debug)]
pub struct AuditEvent<'a> {
    pub event: &'static str,
    pub request_id: &'a str,
    /// The identity presented, as `<source>:<value>` (`uri_san:spiffe://…`); service identities,
    /// not customer data.
    pub identity: Option<String>,
    /// Whether the identity is a caller of the policy.
    pub known_caller: bool,
    pub source_ip: Option<String>,
    pub tls_version: Option<&'a str>,
    pub operation: Option<&'a str>,
    pub method: &'a str,
    pub decision: DecisionKind,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub status: Option<u32>,
    /// PII values by class, then by action: `{"email":{"tokenized":2}}`.
    pub pii: BTreeMap<&'static str, BTreeMap<&'static str, u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<&'a str>,
    pub bytes_in: usize,
    pub bytes_out: usize,
}

impl AuditEvent<'_> {
    /// Groups counts by class for the event.
    pub fn pii_from(counts: &FieldCounts) -> BTreeMap<&'static str, BTreeMap<&'static str, u32>> {
        let mut out: BTreeMap<&'static str, BTreeMap<&'static str, u32>> = BTreeMap::new();
        for (class, action, n) in counts.entries() {
            out.entry(class.as_str()).or_default().insert(action, n);
        }
        out
    }

    /// The event as one JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"event":"request","error":"unserializable"}"#.to_string())
    }
}
