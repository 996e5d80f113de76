//! Audit events (DPP 2.6) with no PII in them: one event per request, and security events
//! (configuration, keys, lockouts, canaries, fail-closed). Schema: `docs/audit-event.schema.json`.
//!
//! Never in an event: bodies, header values, query values that can carry PII, path parameters,
//! key material. Paths are logged by allow list: the operation's template, or outside the catalog
//! only the segments that are catalog or pass-through literals; query parameter names that SP-API
//! knows, and only values in their parameter's shape ([`crate::query_params`])
//! (`/orders/v0/orders?BuyerEmail={redacted}&CreatedAfter=2024-01-01`).
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use crate::catalog::{Catalog, Operation, BUILTIN_CATALOG};
use crate::drift::DriftFindings;
use crate::guard::FieldCounts;
use crate::{query_params, uri};

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
    /// The reveal endpoint answered with the plaintexts of the tokens asked for.
    Revealed,
    /// The SP-API gave no usable response (timeout, connection failure, protocol error): Envoy
    /// answered itself, and no upstream byte reached the client.
    UpstreamFailed,
    /// A report document failed after bytes of it had gone: the stream was reset, so the client
    /// sees an aborted transfer, never a clean end of a truncated file.
    Reset,
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
    /// The third-party upstream of the operation (absent for the SP-API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
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
    /// Security events this request raised (`canary_hit`, `lockout_started`, `fail_closed`,
    /// `schema_drift`).
    pub security_events: Vec<&'static str>,
    /// Ids of the canary records seen.
    pub canaries: Vec<String>,
    /// PII the catalog's paths did not name, by what found it and what was done:
    /// `{"member":{"protected":3},"name":{"reported":1}}` (src/drift.rs).
    pub drift: BTreeMap<&'static str, BTreeMap<&'static str, u32>>,
    /// A report-document download: report type, format, rows, bytes, result (src/download.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<crate::download::DocumentAudit>,
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

    /// Groups drift counts by kind for the event.
    pub fn drift_from(drift: &DriftFindings) -> BTreeMap<&'static str, BTreeMap<&'static str, u32>> {
        let mut out: BTreeMap<&'static str, BTreeMap<&'static str, u32>> = BTreeMap::new();
        for (kind, action, n) in drift.entries() {
            out.entry(kind.as_str()).or_default().insert(action.as_str(), n);
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
    /// The catalog operation (schema_drift).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<&'a str>,
    /// A JSON path template, never a value (schema_drift: `$.payload.Orders[*].BuyerInfo.X`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// The policy field at fault (config_rejected), the canary id (canary_hit), what was done
    /// (schema_drift: protected, reported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

impl<'a> SecurityEvent<'a> {
    pub fn new(event: &'static str, severity: &'static str, time_ms: u64) -> SecurityEvent<'a> {
        SecurityEvent {
            event,
            schema: SCHEMA_VERSION,
            time: rfc3339_ms(time_ms),
            severity,
            request_id: None,
            caller: None,
            operation: None,
            path: None,
            reason: None,
            detail: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"event":"security","error":"unserializable"}"#.to_string())
    }
}

/// The words a logged path outside the catalog may keep: the literal segments of every catalog
/// template (`orders`, `v0`, `address`…) and of `access.passThroughPaths`. Nothing a client
/// chose: any other segment can carry PII (`/orders/v0/jane%40example.com`).
#[derive(Debug, Default, Clone)]
pub struct PathWords {
    words: BTreeSet<String>,
}

impl PathWords {
    /// The literal segments of `catalog`'s templates and of the pass-through prefixes (decoded
    /// segments, as `Access` keeps them).
    pub fn new<'a>(catalog: &Catalog, pass_through: impl IntoIterator<Item = &'a str>) -> PathWords {
        let mut words: BTreeSet<String> = catalog.template_literals().map(str::to_string).collect();
        words.extend(pass_through.into_iter().map(str::to_string));
        PathWords { words }
    }

    /// The literal segments of the built-in catalog's templates (no policy: no pass-through).
    /// Read from the embedded catalog's `"pathTemplate"` strings once per VM, without parsing the
    /// whole document (a test holds it equal to [`PathWords::new`] of the built catalog).
    pub fn builtin() -> &'static PathWords {
        static BUILTIN: OnceLock<PathWords> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            let mut words = BTreeSet::new();
            for (_, rest) in BUILTIN_CATALOG.match_indices("\"pathTemplate\"").map(|(i, _)| BUILTIN_CATALOG.split_at(i + 14)) {
                let value = rest.trim_start().strip_prefix(':').map(str::trim_start).and_then(|v| v.strip_prefix('"'));
                let template = value.and_then(|v| v.split_once('"')).map_or("", |(t, _)| t);
                words.extend(template.split('/').filter(|s| !s.is_empty() && !s.starts_with('{')).map(str::to_string));
            }
            PathWords { words }
        })
    }

    pub fn contains(&self, word: &str) -> bool {
        self.words.contains(word)
    }
}

/// Segments printed of a path outside the catalog; the rest is `/{…}`.
pub const MAX_SEGMENTS: usize = 16;

/// The path to log, with the built-in catalog's words only ([`PathWords::builtin`]): prefer
/// [`redacted_path_with`] and `Access::path_words`, which also know the policy's pass-through
/// prefixes and operations.
pub fn redacted_path(path: &str, operation: Option<&Operation>) -> String {
    redacted_path_with(path, operation, PathWords::builtin())
}

/// The path to log, by allow list (no PII can get through):
///
/// * a catalog operation's path is its template (`/orders/v0/orders/{orderId}/address`); outside
///   the catalog each decoded segment is printed if it is one of `words`, else `{redacted}`;
/// * a query parameter's decoded name is printed if it is a known SP-API parameter
///   ([`query_params`]) or a `queryPii` parameter of the operation, else `{redacted}`; its decoded
///   value only if that parameter's row applies to the operation and the value has its shape
///   (dates, enumerations, marketplace ids, small integers), never for `queryPii` parameters;
/// * the fragment is never printed; what cannot be decoded is `{redacted}`.
pub fn redacted_path_with(path: &str, operation: Option<&Operation>, words: &PathWords) -> String {
    let parts = uri::split(path);
    let mut out = match operation {
        Some(op) => op.path_template.clone(),
        None => unknown_path(parts.path, words),
    };
    let operation_id = operation.map(|op| op.id.as_str());
    let mut first = true;
    for piece in parts.query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        out.push(if first { '?' } else { '&' });
        first = false;
        let has_value = piece.contains('=');
        let (name, value) = match uri::query_pair(piece) {
            Ok(pair) => pair,
            Err(_) => {
                out.push_str(REDACTED);
                if has_value {
                    out.push('=');
                    out.push_str(REDACTED);
                }
                continue;
            }
        };
        let pii = operation.is_some_and(|op| op.query_pii.iter().any(|(p, _)| *p == name));
        let known = pii || query_params::is_known_name(&name);
        out.push_str(if known { &name } else { REDACTED });
        if has_value {
            out.push('=');
            let show = known && !pii && query_params::loggable(&name, &value, operation_id);
            out.push_str(if show { &value } else { REDACTED });
        }
    }
    out
}

fn unknown_path(path: &str, words: &PathWords) -> String {
    let Some(rest) = path.strip_prefix('/') else { return format!("/{REDACTED}") };
    let mut out = String::with_capacity(path.len());
    for (i, raw) in rest.split('/').enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str("/{…}");
            break;
        }
        out.push('/');
        match uri::segment(raw) {
            Ok(word) if words.contains(&word) => out.push_str(&word),
            // An empty segment (`//`, a trailing `/`) carries nothing.
            Err(uri::UriError::EmptySegment) if raw.is_empty() => {}
            _ => out.push_str(REDACTED),
        }
    }
    out
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
        let odd = redacted_path("/orders/v0/orders?Created<script>=x", Some(orders));
        assert_eq!(odd, "/orders/v0/orders?{redacted}={redacted}");
    }

    #[test]
    fn query_names_and_values_are_logged_by_allow_list_only() {
        let c = Catalog::build(&CatalogOverrides::default()).expect("catalog");
        let orders = c.route("GET", "/orders/v0/orders").expect("op");
        let cases = [
            // Encoded names are decoded before they are looked up.
            ("Buyer%45mail=jane%40example.com", "BuyerEmail={redacted}"),
            ("%42uyerEmail=jane%40example.com", "BuyerEmail={redacted}"),
            // Names that are not SP-API parameter names are not printed, nor their values.
            ("BuyerEmail+=jane%40example.com", "{redacted}={redacted}"),
            ("BuyerEmail[]=jane%40example.com", "{redacted}={redacted}"),
            ("buyeremail=jane%40example.com", "{redacted}={redacted}"),
            ("BuyerEmail%3Djane%40example.com", "{redacted}"),
            ("jane%40example.com", "{redacted}"),
            ("keywords=jane", "{redacted}={redacted}"),
            // Known names print a value only in their shape.
            ("MarketplaceIds=jane%40example.com", "MarketplaceIds={redacted}"),
            ("MarketplaceIds=4155551234", "MarketplaceIds={redacted}"),
            ("OrderStatuses=Jane%20Doe", "OrderStatuses={redacted}"),
            ("CreatedAfter=TEST_CASE_200", "CreatedAfter={redacted}"),
            ("MaxResultsPerPage=4155551234", "MaxResultsPerPage={redacted}"),
            ("NextToken=2YgYW55IGNhcm5hbCBwbGVhc3VyZS4", "NextToken={redacted}"),
            ("SellerOrderId=jane", "SellerOrderId={redacted}"),
            ("x=%ZZjane", "{redacted}={redacted}"),
            // Parameters of other operations: the name is known, the value is not printed.
            ("status=NEW", "status={redacted}"),
            (
                "CreatedAfter=2024-12-20T00%3A00%3A00Z&MarketplaceIds=ATVPDKIKX0DER,A1F83G8C2ARO7P&OrderStatuses=Shipped,Unshipped&MaxResultsPerPage=50&IsISPU=false",
                "CreatedAfter=2024-12-20T00:00:00Z&MarketplaceIds=ATVPDKIKX0DER,A1F83G8C2ARO7P&OrderStatuses=Shipped,Unshipped&MaxResultsPerPage=50&IsISPU=false",
            ),
        ];
        for (query, logged) in cases {
            assert_eq!(redacted_path(&format!("/orders/v0/orders?{query}"), Some(orders)), format!("/orders/v0/orders?{logged}"), "{query}");
        }
        let search = c.route("GET", "/orders/2026-01-01/orders").expect("op");
        assert_eq!(
            redacted_path("/orders/2026-01-01/orders?includedData=BUYER,RECIPIENT&includedData=buyer&fulfilledBy=AMAZON", Some(search)),
            "/orders/2026-01-01/orders?includedData=BUYER,RECIPIENT&includedData={redacted}&fulfilledBy=AMAZON"
        );
    }

    #[test]
    fn paths_outside_the_catalog_keep_only_known_segments() {
        let words = PathWords::builtin();
        let cases = [
            ("/orders/v0/jane%40example.com", "/orders/v0/{redacted}"),
            ("/orders/v0/orders/jane%40example.com/x/address", "/orders/v0/orders/{redacted}/{redacted}/address"),
            ("/sellers/v1/jane%40example.com/x", "/{redacted}/v1/{redacted}/{redacted}"),
            ("/orders/v0/orders/", "/orders/v0/orders/"),
            ("/orders/v0/%6Frders/1", "/orders/v0/orders/{redacted}"),
            ("/a b/c", "/{redacted}/{redacted}"),
            ("/catalog/..%3B/orders/v0", "/{redacted}/{redacted}/orders/v0"),
            ("/x%2Forders", "/{redacted}"),
            ("jane", "/{redacted}"),
            ("", "/{redacted}"),
            ("/orders/v0/orders#jane", "/orders/v0/orders"),
            (
                "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&OrderStatuses=Shipped&q=jane",
                "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&OrderStatuses={redacted}&{redacted}={redacted}",
            ),
        ];
        for (path, logged) in cases {
            assert_eq!(redacted_path_with(path, None, words), logged, "{path}");
            assert_eq!(redacted_path(path, None), logged, "{path}");
        }
        let long = format!("/orders{}", "/v0".repeat(40));
        assert_eq!(redacted_path(&long, None), format!("/orders{}/{{…}}", "/v0".repeat(MAX_SEGMENTS - 1)));
        // With the policy's pass-through prefixes and added operations.
        let g = crate::guard::Guard::load(
            serde_json::json!({
                "version": 1,
                "keys": {"active": "k1", "env": {"k1": "K1"}},
                "access": {"passThroughPaths": ["/sellers/", "/catalog/2022-04-01/"]},
                "catalog": {"operations": [{"id": "custom-v1.getThing", "method": "GET", "pathTemplate": "/custom/v1/things/{id}"}]}
            })
            .to_string()
            .as_bytes(),
            &|_| Some("8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8".to_string()),
        )
        .expect("loads");
        let words = g.access.path_words();
        assert_eq!(redacted_path_with("/sellers/v1/jane%40example.com/x", None, words), "/sellers/v1/{redacted}/{redacted}");
        assert_eq!(redacted_path_with("/catalog/2022-04-01/items/jane?keywords=jane", None, words), "/catalog/2022-04-01/{redacted}/{redacted}?{redacted}={redacted}");
        assert_eq!(redacted_path_with("/custom/v1/jane", None, words), "/custom/v1/{redacted}");
        assert_eq!(redacted_path("/custom/v1/jane", None), "/{redacted}/v1/{redacted}", "the built-in catalog only");
    }

    #[test]
    fn builtin_words_are_the_built_catalogs_literals() {
        let c = Catalog::build(&CatalogOverrides::default()).expect("catalog");
        let built = PathWords::new(&c, []);
        assert_eq!(PathWords::builtin().words, built.words);
        assert!(built.words.len() > 60 && built.contains("orders") && !built.contains("{orderId}"));
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
