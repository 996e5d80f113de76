//! Audit events (DPP 2.6) with no PII in them: one event per request, and security events
//! (configuration, keys, lockouts, canaries, fail-closed). Schema: `docs/audit-event.schema.json`.
//!
//! Never in an event: bodies, header values, query values that can carry PII, path parameters,
//! key material. Paths are logged as the operation's template with PII query values replaced
//! (`/orders/v0/orders?BuyerEmail={redacted}&CreatedAfter=2024-01-01`).
use serde::Serialize;
use std::collections::BTreeMap;

use crate::catalog::Operation;
use crate::guard::FieldCounts;

/// Schema version of the events.
pub const SCHEMA_VERSION: u32 = 1;
/// Placeholder for a redacted value.
pub const REDACTED: &str = "{redacted}";

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
    /// The exchange ended (a reset, a disconnect) while the filter held a body it had not finished
    /// checking or rewriting: nothing of that body was released.
    Aborted,
}

/// The decision on a request.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Allow,
    Deny,
    /// Would have been denied; dry-run let it through.
    DryRunDeny,
    /// Denied because the caller is locked.
    Lockout,
    /// Allowed, but the response could not be protected and was replaced by an error.
    FailClosed,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Allow => "allow",
            DecisionKind::Deny => "deny",
            DecisionKind::DryRunDeny => "dry_run_deny",
            DecisionKind::Lockout => "lockout",
            DecisionKind::FailClosed => "fail_closed",
        }
    }
}

/// The audit event of one request.
#[derive(Serialize, Debug)]
pub struct AuditEvent<'a> {
    pub event: &'static str,
    pub schema: u32,
    /// RFC 3339, UTC, milliseconds: when the request started.
    pub time: String,
    pub request_id: &'a str,
    /// Unique id of this decision.
    pub decision_id: &'a str,
    /// The identity presented, `<source>:<value>` (`uri_san:spiffe://…`); service identities,
    /// not customer data.
    pub identity: Option<String>,
    /// Whether the identity is a caller of the policy.
    pub known_caller: bool,
    pub source_ip: Option<String>,
    pub tls_version: Option<&'a str>,
    pub operation: Option<&'a str>,
    pub api: Option<&'a str>,
    pub api_version: Option<&'a str>,
    pub method: &'a str,
    /// The path as the operation's template, PII query values replaced.
    pub path: String,
    pub decision: DecisionKind,
    pub outcome: Outcome,
    pub reason: Option<&'static str>,
    /// The status the client got.
    pub status: Option<u32>,
    /// The status the SP-API answered (none when it was not contacted).
    pub upstream_status: Option<u32>,
    /// PII values by class, then by action: `{"email":{"tokenized":2}}`.
    pub pii: BTreeMap<&'static str, BTreeMap<&'static str, u32>>,
    /// The key that made tokens or pseudonyms in this response.
    pub key_id: Option<&'a str>,
    /// Response body bytes received from the SP-API, and sent to the client.
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration_ms: Option<u64>,
    /// Security events this request raised (`canary_hit`, `lockout_started`, `fail_closed`).
    pub security_events: Vec<&'static str>,
    /// Ids of the canary records seen.
    pub canaries: Vec<String>,
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

/// A security event, not tied to the response of one request.
#[derive(Serialize, Debug)]
pub struct SecurityEvent<'a> {
    pub event: &'static str,
    pub schema: u32,
    pub time: String,
    /// `critical`, `high`, `warning` or `info`.
    pub severity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// The policy field at fault (config_rejected) or the canary id (canary_hit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

impl<'a> SecurityEvent<'a> {
    pub fn new(event: &'static str, severity: &'static str, time_ms: u64) -> SecurityEvent<'a> {
        SecurityEvent { event, schema: SCHEMA_VERSION, time: rfc3339_ms(time_ms), severity, request_id: None, caller: None, reason: None, detail: None }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"event":"security","error":"unserializable"}"#.to_string())
    }
}

/// The path to log: the operation's template (path parameters hidden) with the query values of
/// its PII parameters replaced. Outside the catalog: the first three segments and no query values.
pub fn redacted_path(path: &str, operation: Option<&Operation>) -> String {
    let (path_part, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut out = match operation {
        Some(op) => op.path_template.clone(),
        None => {
            let segments: Vec<&str> = path_part.split('/').skip(1).collect();
            let mut kept = String::new();
            for s in segments.iter().take(3) {
                kept.push('/');
                kept.push_str(&safe_segment(s));
            }
            if segments.len() > 3 {
                kept.push_str("/{…}");
            }
            if kept.is_empty() {
                kept.push('/');
            }
            kept
        }
    };
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            out.push_str(&safe_segment(name));
            out.push('=');
            let pii = match operation {
                Some(op) => op.query_pii.iter().any(|(p, _)| p.eq_ignore_ascii_case(name)),
                None => true,
            };
            if pii {
                out.push_str(REDACTED);
            } else {
                out.push_str(&safe_segment(value));
            }
        }
    }
    out
}

/// A path segment or query part kept only if it is short, plain ASCII; otherwise redacted.
fn safe_segment(s: &str) -> String {
    if s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.,:%+".contains(&b)) {
        s.to_string()
    } else {
        REDACTED.to_string()
    }
}

/// `2026-11-29T12:34:56.789Z` from milliseconds since the Unix epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// Unique decision ids: a random per-VM prefix and a counter.
pub struct DecisionIds {
    prefix: u64,
    next: std::cell::Cell<u64>,
}

impl DecisionIds {
    pub fn new() -> DecisionIds {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        DecisionIds { prefix: u64::from_le_bytes(seed), next: std::cell::Cell::new(0) }
    }

    pub fn next(&self) -> String {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        format!("{:016x}{:08x}", self.prefix, n)
    }
}

impl Default for DecisionIds {
    fn default() -> Self {
        DecisionIds::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, CatalogOverrides};

    #[test]
    fn paths_hide_parameters_and_pii_query_values() {
        let c = Catalog::build(&CatalogOverrides::default()).expect("catalog");
        let orders = c.route("GET", "/orders/v0/orders").expect("op");
        assert_eq!(
            redacted_path("/orders/v0/orders?BuyerEmail=jane%40example.com&CreatedAfter=2024-01-01&MarketplaceIds=ATVPDKIKX0DER", Some(orders)),
            "/orders/v0/orders?BuyerEmail={redacted}&CreatedAfter=2024-01-01&MarketplaceIds=ATVPDKIKX0DER"
        );
        let address = c.route("GET", "/orders/v0/orders/902-1/address").expect("op");
        assert_eq!(redacted_path("/orders/v0/orders/902-1/address", Some(address)), "/orders/v0/orders/{orderId}/address");
        let points = c.route("GET", "/shipping/v2/accessPoints").expect("op");
        assert_eq!(redacted_path("/shipping/v2/accessPoints?postalCode=98101&countryCode=US", Some(points)), "/shipping/v2/accessPoints?postalCode={redacted}&countryCode=US");
        assert_eq!(redacted_path("/catalog/2022-04-01/items/B00X/x?keywords=jane", None), "/catalog/2022-04-01/items/{…}?keywords={redacted}");
        assert_eq!(redacted_path("/a b/c", None), "/{redacted}/c");
        let odd = redacted_path("/orders/v0/orders?Created<script>=x", Some(orders));
        assert!(!odd.contains('<'), "{odd}");
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_948_496_789), "2026-11-29T10:34:56.789Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn decision_ids_are_unique() {
        let ids = DecisionIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
    }
}
