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
    /// The response could not be protected: the client got an error instead.
    FailClosed,
}

/// The audit event of one request.
#[derive(Serialize, Debug)]
pub struct AuditEvent<'a> {
    pub event: &'static str,
    pub request_id: &'a str,
    pub operation: Option<&'a str>,
    pub method: &'a str,
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
