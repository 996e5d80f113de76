//! Report documents through the proxy (issue #10), the pure part of the glue: the policy's
//! `documents` section and the roles' `documents` grants, the checks on Amazon's pre-signed URLs
//! (no open proxy, no SSRF), the sealed reference that replaces `getReportDocument`'s `url`, and
//! what the filter remembers of report types between requests.
//!
//! Flow (docs/DESIGN.md, "Report documents"): a `getReportDocument` response's `url` becomes
//! `<scheme>://<authority the app used>/spapi-guard/v1/documents/<reference>`; the reference is the
//! pre-signed URL, its expiry, the caller and what is known of the report, sealed by the proxy
//! ([`crate::tokens::TokenEngine::seal_reference`]: AES-256-GCM under the `document-reference`
//! HKDF sub-key of the ring key active for class `other`). A GET of that URL opens the reference,
//! checks caller, expiry, host and the caller's grant, and is re-routed by the filter to the
//! document host; the document streams back through [`crate::report::DocumentRewriter`].
use serde::{Deserialize, Serialize};

use crate::access::glob;
use crate::config_error::ConfigError;
use crate::tokens::{ReferenceError, TokenEngine};

/// The proxy's download endpoint; the reference follows.
pub const DOCUMENTS_PATH: &str = "/spapi-guard/v1/documents/";
/// Set by the filter on a checked download only: the Envoy route to the document hosts matches it.
/// Any client-sent copy is removed before the filter (header_mutation) and by the filter itself.
pub const ROUTE_HEADER: &str = "x-spapi-guard-document-route";
/// The catalog operation whose `url` becomes a pointer.
pub const GET_REPORT_DOCUMENT: &str = "reports-2021-06-30.getReportDocument";
/// Whether a request is `getReport` (`GET /reports/2021-06-30/reports/{reportId}`) or `getReports`
/// (`GET /reports/2021-06-30/reports`), whose responses say which report type a document is. They
/// carry no PII, so they are no catalog operations: they pass under `access.passThroughPaths`.
pub fn lists_report_types(method: &str, path: &str) -> bool {
    let Ok(target) = crate::uri::parse(path) else { return false };
    let s: Vec<&str> = target.segments.iter().map(|s| s.as_ref()).collect();
    method == "GET" && s.len() >= 3 && s.len() <= 4 && s[..3] == ["reports", "2021-06-30", "reports"]
}
/// Largest `getReport`/`getReports` response read for report types (larger: not learned).
pub const MAX_REPORT_LISTING: usize = 1024 * 1024;
/// Amazon: a report document's URL "expires after 5 minutes" (used when the URL does not say).
pub const DEFAULT_TTL_SECONDS: u64 = 300;
/// The longest a reference lives, whatever the URL says.
pub const MAX_TTL_SECONDS: u64 = 3600;
/// The shipped document hosts (Amazon's report documents are on S3 or CloudFront).
pub const DEFAULT_HOSTS: [&str; 3] = ["*.s3.amazonaws.com", "*.s3-external-1.amazonaws.com", "*.cloudfront.net"];
/// Slots of the report-type map in shared data (bounded: a slot is overwritten by a newer entry).
pub const REPORT_TYPE_SLOTS: u64 = 1024;
/// How long a learned report type is remembered.
pub const REPORT_TYPE_TTL_MS: u64 = 6 * 3600 * 1000;

/// The policy's `documents` section.
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DocumentsDoc {
    /// Host patterns the proxy may fetch documents from: `name`, `*.suffix`, optionally `:port`
    /// (default 443). Absent: [`DEFAULT_HOSTS`].
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    /// Life of a reference when Amazon's URL gives no expiry (default 300 s, at most 3600 s).
    #[serde(default)]
    pub reference_ttl_seconds: Option<u64>,
}

/// A role's `documents` grant.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DocumentGrantDoc {
    /// Report types (with `*` wildcards) the role may download; a document whose type the proxy
    /// did not learn matches only `*`.
    pub report_types: Vec<String>,
    /// PDF/ZIP documents cannot be tokenized: `refuse` (default) or `deliver` (as they are).
    #[serde(default)]
    pub binary_documents: Option<String>,
}

/// A compiled grant (the union of a caller's roles).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocumentGrant {
    pub report_types: Vec<String>,
    pub deliver_binary: bool,
}

impl DocumentGrant {
    /// Reads a role's grant; errors name `roles.<role>.documents…`.
    pub fn from_doc(doc: &DocumentGrantDoc, at: &str) -> Result<DocumentGrant, ConfigError> {
        if doc.report_types.is_empty() {
            return Err(ConfigError::new(format!("{at}.reportTypes"), "is empty; list report types like GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING, GET_FLAT_FILE_* or *"));
        }
        for (i, t) in doc.report_types.iter().enumerate() {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'*') {
                return Err(ConfigError::new(format!("{at}.reportTypes[{i}]"), format!("'{t}' is not a report type pattern; use upper-case letters, digits, '_' and '*'")));
            }
        }
        let deliver_binary = match doc.binary_documents.as_deref() {
            None | Some("refuse") => false,
            Some("deliver") => true,
            Some(other) => return Err(ConfigError::new(format!("{at}.binaryDocuments"), format!("'{other}' is not allowed; use refuse or deliver"))),
        };
        Ok(DocumentGrant { report_types: doc.report_types.clone(), deliver_binary })
    }

    /// Adds another role's grant (a caller gets the union of its roles).
    pub fn merge(&mut self, other: &DocumentGrant) {
        for t in &other.report_types {
            if !self.report_types.contains(t) {
                self.report_types.push(t.clone());
            }
        }
        self.deliver_binary |= other.deliver_binary;
    }

    /// Whether a document of this report type (`None`: not learned) may be downloaded.
    pub fn allows(&self, report_type: Option<&str>) -> bool {
        match report_type {
            Some(t) => self.report_types.iter().any(|p| glob(p, t)),
            None => self.report_types.iter().any(|p| p == "*"),
        }
    }
}

/// One allowed document host: an exact name or a `*.` suffix, and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower-case; for a wildcard, the suffix after `*` (starting with `.`).
    name: String,
    wildcard: bool,
    pub port: u16,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => (h, port_number(p).ok_or_else(|| format!("'{text}' has an invalid port; use 1–65535, or leave it out for 443"))?),
            None => (text, 443),
        };
        let (wildcard, name) = match host.strip_prefix('*') {
            Some(rest) if rest.starts_with('.') => (true, &rest[1..]),
            Some(_) => return Err(format!("'{text}': a wildcard must be a whole first label, like *.s3.amazonaws.com")),
            None => (false, host),
        };
        if !is_dns_name(name) {
            return Err(format!("'{text}' is not a DNS host name (IP literals, user info and other characters are refused)"));
        }
        if wildcard && !name.contains('.') {
            return Err(format!("'{text}' is too broad: a wildcard needs at least two labels after it"));
        }
        Ok(HostPattern { name: if wildcard { format!(".{name}") } else { name.to_string() }, wildcard, port })
    }

    pub fn matches(&self, host: &str, port: u16) -> bool {
        port == self.port
            && if self.wildcard { host.len() > self.name.len() && host.ends_with(&self.name) && !host[..host.len() - self.name.len()].contains('.') } else { host == self.name }
    }

    /// The Envoy virtual host domain that selects this pattern's documents (the filter writes
    /// `:authority` as `host` for port 443, `host:port` otherwise).
    pub fn envoy_domain(&self) -> String {
        let host = if self.wildcard { format!("*{}", self.name) } else { self.name.clone() };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// The compiled `documents` section.
#[derive(Clone, Debug)]
pub struct DocumentsPolicy {
    pub hosts: Vec<HostPattern>,
    pub reference_ttl_ms: u64,
}

impl Default for DocumentsPolicy {
    fn default() -> Self {
        DocumentsPolicy::from_doc(&DocumentsDoc::default()).unwrap_or(DocumentsPolicy { hosts: Vec::new(), reference_ttl_ms: DEFAULT_TTL_SECONDS * 1000 })
    }
}

impl DocumentsPolicy {
    pub fn from_doc(doc: &DocumentsDoc) -> Result<DocumentsPolicy, ConfigError> {
        let hosts = match &doc.hosts {
            Some(list) => {
                list.iter().enumerate().map(|(i, h)| HostPattern::parse(h).map_err(|m| ConfigError::new(format!("documents.hosts[{i}]"), m))).collect::<Result<Vec<_>, _>>()?
            }
            None => DEFAULT_HOSTS.iter().filter_map(|h| HostPattern::parse(h).ok()).collect(),
        };
        let ttl = doc.reference_ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
        if ttl == 0 || ttl > MAX_TTL_SECONDS {
            return Err(ConfigError::new("documents.referenceTtlSeconds", format!("must be between 1 and {MAX_TTL_SECONDS} (Amazon's URLs expire after 300 s)")));
        }
        Ok(DocumentsPolicy { hosts, reference_ttl_ms: ttl * 1000 })
    }

    pub fn allows(&self, url: &DocumentUrl) -> bool {
        self.hosts.iter().any(|p| p.matches(&url.host, url.port))
    }
}

/// Why a document URL or reference is refused. Codes are stable (responses, audit, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentRefusal {
    /// The reference does not open (altered, truncated, another proxy's): 400.
    InvalidReference,
    /// Past its expiry (Amazon's URL would be refused too): 410.
    ReferenceExpired,
    /// Sealed for another caller: 403.
    WrongCaller,
    /// The URL is not an https URL to a DNS host of the allow list: 403 (no open proxy).
    HostNotAllowed,
    /// The caller's roles grant no document downloads, or not of this report type: 403.
    NotAllowed,
}

impl DocumentRefusal {
    pub fn code(self) -> &'static str {
        match self {
            DocumentRefusal::InvalidReference => "invalid_document_reference",
            DocumentRefusal::ReferenceExpired => "document_reference_expired",
            DocumentRefusal::WrongCaller => "document_caller_mismatch",
            DocumentRefusal::HostNotAllowed => "document_host_not_allowed",
            DocumentRefusal::NotAllowed => "document_not_allowed",
        }
    }

    pub fn status(self) -> u32 {
        match self {
            DocumentRefusal::InvalidReference => 400,
            DocumentRefusal::ReferenceExpired => 410,
            _ => 403,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            DocumentRefusal::InvalidReference => "The document reference is not valid: request the document again with getReportDocument.",
            DocumentRefusal::ReferenceExpired => "The document reference has expired: request the document again with getReportDocument.",
            DocumentRefusal::WrongCaller => "The document reference was issued to another caller.",
            DocumentRefusal::HostNotAllowed => "The document is on a host outside spapi-guard's allow list (documents.hosts).",
            DocumentRefusal::NotAllowed => "The caller's roles do not grant downloads of this report document.",
        }
    }

    /// SP-API-style error body (no part of the reference or URL).
    pub fn error_body(self) -> String {
        let code = match self.status() {
            400 => "InvalidInput",
            410 => "Expired",
            _ => "Unauthorized",
        };
        format!(r#"{{"errors":[{{"code":"{code}","message":"{}","details":"spapi-guard:{}"}}]}}"#, self.message(), self.code())
    }
}

/// Amazon's pre-signed URL, checked: https, a DNS host name (no IP literal, no user info), a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentUrl {
    /// Lower-case.
    pub host: String,
    pub port: u16,
    /// Path and query, as in the URL.
    pub path: String,
    /// The URL's own expiry (X-Amz-Date + X-Amz-Expires, or Expires), if it says.
    pub expires_ms: Option<u64>,
}

impl DocumentUrl {
    pub fn parse(url: &str) -> Result<DocumentUrl, DocumentRefusal> {
        let refuse = DocumentRefusal::HostNotAllowed;
        let rest = url.strip_prefix("https://").ok_or(refuse)?;
        if rest.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#' || b == b'\\' || !b.is_ascii()) {
            return Err(refuse);
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') || authority.contains('[') {
            return Err(refuse);
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, port_number(p).ok_or(refuse)?),
            None => (authority, 443),
        };
        let host = host.to_ascii_lowercase();
        if !is_dns_name(&host) {
            return Err(refuse);
        }
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        let expires_ms = query_expiry(path.split_once('?').map_or("", |(_, q)| q));
        Ok(DocumentUrl { host, port, path, expires_ms })
    }

    /// The `:authority` the filter sends (and the Envoy route's domain matches).
    pub fn authority(&self) -> String {
        if self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The expiry a pre-signed URL's query states: SigV4 `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`) plus
/// `X-Amz-Expires` seconds, or CloudFront/SigV2 `Expires` (Unix seconds).
fn query_expiry(query: &str) -> Option<u64> {
    let (mut date, mut expires, mut epoch) = (None, None, None);
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            n if n.eq_ignore_ascii_case("X-Amz-Date") => date = amz_date(value),
            n if n.eq_ignore_ascii_case("X-Amz-Expires") => expires = value.parse::<u64>().ok(),
            "Expires" => epoch = value.parse::<u64>().ok(),
            _ => {}
        }
    }
    match (date, expires, epoch) {
        (Some(d), Some(e), _) => Some(d.saturating_add(e.saturating_mul(1000))),
        (_, _, Some(s)) => Some(s.saturating_mul(1000)),
        _ => None,
    }
}

fn amz_date(v: &str) -> Option<u64> {
    let b = v.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !v[..8].bytes().chain(v[9..15].bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    crate::keyring::parse_instant(&format!("{}-{}-{}T{}:{}:{}Z", &v[..4], &v[4..6], &v[6..8], &v[9..11], &v[11..13], &v[13..15]), false)
}

/// A DNS host name: letters, digits, `-` and `.`, labels of 1–63, not all-numeric at the end
/// (so no IPv4 literal in any spelling), 253 at most.
fn is_dns_name(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    host.len() <= 253
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        && labels.last().is_some_and(|l| !(l.bytes().all(|b| b.is_ascii_digit()) || (l.starts_with("0x") && l.len() > 2)))
}

/// A port in plain decimal (no sign, no leading zero), 1–65535.
fn port_number(text: &str) -> Option<u16> {
    (!text.is_empty() && !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
}

/// What a reference carries, sealed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Amazon's pre-signed URL.
    #[serde(rename = "u")]
    pub url: String,
    /// Until when it may be used (milliseconds since the Unix epoch).
    #[serde(rename = "e")]
    pub expires_ms: u64,
    /// The caller it was issued to.
    #[serde(rename = "c")]
    pub caller: String,
    /// The report type, if the proxy had learned it.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub report_type: Option<String>,
    /// `compressionAlgorithm: GZIP`: the document is a gzip stream.
    #[serde(rename = "z", default)]
    pub gzip: bool,
}

impl Reference {
    /// The sealed, URL-safe form; `None` if the ring has no key active for `other` now.
    pub fn seal(&self, tokens: &TokenEngine, now_ms: u64) -> Option<String> {
        let plaintext = serde_json::to_vec(self).ok()?;
        tokens.seal_reference(now_ms, &plaintext)
    }

    /// Opens a reference for `caller` at `now_ms`: it must open, be unexpired, and be this caller's.
    pub fn open(tokens: &TokenEngine, sealed: &str, caller: &str, now_ms: u64) -> Result<Reference, DocumentRefusal> {
        let plaintext = tokens.open_reference(sealed).map_err(|e| match e {
            ReferenceError::Malformed | ReferenceError::Forged => DocumentRefusal::InvalidReference,
        })?;
        let reference: Reference = serde_json::from_slice(&plaintext).map_err(|_| DocumentRefusal::InvalidReference)?;
        if now_ms > reference.expires_ms {
            return Err(DocumentRefusal::ReferenceExpired);
        }
        if reference.caller != caller {
            return Err(DocumentRefusal::WrongCaller);
        }
        Ok(reference)
    }
}

/// A `getReportDocument` body's members and the reference its `url` becomes.
pub type ParsedPointer = (serde_json::Map<String, serde_json::Value>, Reference);

/// Reads a `getReportDocument` body and builds the reference (`expires_ms` from the URL, capped at
/// `now + MAX_TTL`, or `now + policy TTL`). `Ok(None)`: the body has no `url` string (an error
/// body), handled as any response.
pub fn read_pointer(body: &[u8], policy: &DocumentsPolicy, caller: &str, report_type: Option<String>, now_ms: u64) -> Result<Option<ParsedPointer>, DocumentRefusal> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) else { return Ok(None) };
    let Some(url) = map.get("url").and_then(|u| u.as_str()) else { return Ok(None) };
    let parsed = DocumentUrl::parse(url)?;
    if !policy.allows(&parsed) {
        return Err(DocumentRefusal::HostNotAllowed);
    }
    let expires_ms = parsed.expires_ms.unwrap_or(now_ms.saturating_add(policy.reference_ttl_ms)).min(now_ms.saturating_add(MAX_TTL_SECONDS * 1000));
    let gzip = map.get("compressionAlgorithm").and_then(|c| c.as_str()).is_some_and(|c| c.eq_ignore_ascii_case("GZIP"));
    Ok(Some((map.clone(), Reference { url: url.to_string(), expires_ms, caller: caller.to_string(), report_type, gzip })))
}

/// Writes the pointer body: `url` → `<base>/spapi-guard/v1/documents/<sealed>`, no `compressionAlgorithm`.
pub fn write_pointer(mut map: serde_json::Map<String, serde_json::Value>, base: &str, sealed: &str) -> Vec<u8> {
    map.insert("url".to_string(), serde_json::Value::String(format!("{base}{DOCUMENTS_PATH}{sealed}")));
    map.remove("compressionAlgorithm");
    serde_json::to_vec(&map).unwrap_or_default()
}

/// `<scheme>://<authority>` of the request the app made (`https` unless it said `http`), `None`
/// when the authority is not a plain host[:port].
pub fn proxy_base(scheme: Option<&str>, authority: Option<&str>) -> Option<String> {
    let authority = authority?;
    let ok = !authority.is_empty() && authority.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'));
    let scheme = if scheme == Some("http") { "http" } else { "https" };
    ok.then(|| format!("{scheme}://{authority}"))
}

/// `reportDocumentId` → `reportType` pairs in a `getReport` or `getReports` response.
pub fn report_types_in(body: &[u8]) -> Vec<(String, String)> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return Vec::new() };
    let one = |v: &serde_json::Value| -> Option<(String, String)> {
        let id = v.get("reportDocumentId")?.as_str()?;
        let t = v.get("reportType")?.as_str()?;
        (is_document_id(id) && is_report_type(t)).then(|| (id.to_string(), t.to_string()))
    };
    match value.get("reports").and_then(|r| r.as_array()) {
        Some(list) => list.iter().filter_map(one).collect(),
        None => one(&value).into_iter().collect(),
    }
}

fn is_document_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_graphic())
}

fn is_report_type(t: &str) -> bool {
    !t.is_empty() && t.len() <= 120 && t.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// The shared-data key of a document id's slot (FNV-1a, [`REPORT_TYPE_SLOTS`] slots).
pub fn report_type_key(document_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in document_id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("spapi-guard.report-type.{}", h % REPORT_TYPE_SLOTS)
}

/// A slot's value: `<expires ms>\n<document id>\n<report type>`.
pub fn encode_report_type(document_id: &str, report_type: &str, now_ms: u64) -> Vec<u8> {
    format!("{}\n{document_id}\n{report_type}", now_ms.saturating_add(REPORT_TYPE_TTL_MS)).into_bytes()
}

/// The report type a slot holds for `document_id`, if it is that document's and not expired.
pub fn decode_report_type(slot: &[u8], document_id: &str, now_ms: u64) -> Option<String> {
    let text = std::str::from_utf8(slot).ok()?;
    let mut parts = text.splitn(3, '\n');
    let expires: u64 = parts.next()?.parse().ok()?;
    let (id, t) = (parts.next()?, parts.next()?);
    (id == document_id && now_ms <= expires && is_report_type(t)).then(|| t.to_string())
}

/// The document id of a `getReportDocument` path (`/reports/2021-06-30/documents/{id}`).
pub fn document_id_of(path: &str) -> Option<String> {
    let target = crate::uri::parse(path).ok()?;
    let last = target.segments.last()?;
    is_document_id(last).then(|| last.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const NOW: u64 = 1_800_000_000_000;

    fn engine(key: u8) -> TokenEngine {
        let mut keys = BTreeMap::new();
        keys.insert("k1".to_string(), [key; 32]);
        TokenEngine::new(keys, "k1").expect("engine")
    }

    fn reference() -> Reference {
        Reference {
            url: "https://bucket.s3.amazonaws.com/doc?X-Amz-Signature=abc".into(),
            expires_ms: NOW + 300_000,
            caller: "spiffe://a/order-sync".into(),
            report_type: Some("GET_X".into()),
            gzip: true,
        }
    }

    #[test]
    fn references_open_only_for_their_caller_before_expiry() {
        let e = engine(7);
        let sealed = reference().seal(&e, NOW).expect("sealed");
        assert!(sealed.starts_with("spgr1.k1.") && !sealed.contains("s3.amazonaws") && !sealed.contains("order-sync"));
        assert!(sealed.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'), "URL-safe");
        assert_eq!(Reference::open(&e, &sealed, "spiffe://a/order-sync", NOW), Ok(reference()));
        assert_eq!(Reference::open(&e, &sealed, "spiffe://a/analytics", NOW), Err(DocumentRefusal::WrongCaller));
        assert_eq!(Reference::open(&e, &sealed, "spiffe://a/order-sync", NOW + 300_001), Err(DocumentRefusal::ReferenceExpired));
        // Randomized: the same reference sealed twice differs.
        assert_ne!(sealed, reference().seal(&e, NOW).expect("sealed"));
    }

    #[test]
    fn tampered_truncated_and_foreign_references_are_refused() {
        let e = engine(7);
        let sealed = reference().seal(&e, NOW).expect("sealed");
        let caller = "spiffe://a/order-sync";
        for i in (0..sealed.len()).step_by(3) {
            let mut bytes = sealed.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).expect("ascii");
            assert_eq!(Reference::open(&e, &tampered, caller, NOW), Err(DocumentRefusal::InvalidReference), "byte {i}");
        }
        assert_eq!(Reference::open(&e, &sealed[..sealed.len() - 4], caller, NOW), Err(DocumentRefusal::InvalidReference));
        assert_eq!(Reference::open(&engine(8), &sealed, caller, NOW), Err(DocumentRefusal::InvalidReference), "another proxy's key");
        // A token of the same key never opens as a reference.
        let token = e.seal(NOW, crate::pii::PiiClass::Other, crate::tokens::Mode::Randomized, crate::tokens::ValueKind::Text, b"x").expect("token");
        assert_eq!(Reference::open(&e, &token, caller, NOW), Err(DocumentRefusal::InvalidReference));
        assert_eq!(Reference::open(&e, &token.replacen("spgt1.rs.", "spgr1.", 1).replacen(".other", "", 1), caller, NOW), Err(DocumentRefusal::InvalidReference));
    }

    #[test]
    fn urls_must_be_https_to_a_dns_name_on_the_allow_list() {
        let policy = DocumentsPolicy::from_doc(&DocumentsDoc { hosts: Some(vec!["*.s3.amazonaws.com".into(), "docs.example.test:8443".into()]), reference_ttl_seconds: None })
            .expect("policy");
        let ok = DocumentUrl::parse("https://Bucket.S3.amazonaws.com/a/b?X-Amz-Date=20261129T120000Z&X-Amz-Expires=300&X-Amz-Signature=x").expect("url");
        assert_eq!((ok.host.as_str(), ok.port, ok.path.as_str()), ("bucket.s3.amazonaws.com", 443, "/a/b?X-Amz-Date=20261129T120000Z&X-Amz-Expires=300&X-Amz-Signature=x"));
        assert_eq!(ok.expires_ms, crate::keyring::parse_instant("2026-11-29T12:05:00Z", false));
        assert!(policy.allows(&ok));
        assert_eq!(ok.authority(), "bucket.s3.amazonaws.com");
        let port = DocumentUrl::parse("https://docs.example.test:8443/r").expect("url");
        assert!(policy.allows(&port) && port.authority() == "docs.example.test:8443");
        for refused in [
            "http://bucket.s3.amazonaws.com/x",
            "https://user:pw@bucket.s3.amazonaws.com/x",
            "https://bucket.s3.amazonaws.com@evil.test/x",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://2130706433/x",
            "https://0x7f000001/x",
            "https://bucket.s3.amazonaws.com:99999/x",
            "https://bucket.s3.amazonaws.com/x y",
            "https://bucket.s3.amazonaws.com/x#frag",
            "https://bucket.s3.amazonaws.com\\@evil/x",
            "https://b%2e.s3.amazonaws.com/x",
            "https:///x",
        ] {
            assert!(DocumentUrl::parse(refused).is_err(), "{refused}");
        }
        for outside in [
            "https://s3.amazonaws.com/x",
            "https://a.b.s3.amazonaws.com/x",
            "https://bucket.s3.amazonaws.com.evil.test/x",
            "https://bucket.s3.amazonaws.com:444/x",
            "https://docs.example.test/r",
        ] {
            let url = DocumentUrl::parse(outside).expect("parses");
            assert!(!policy.allows(&url), "{outside}");
        }
        assert_eq!(DocumentUrl::parse("https://d.cloudfront.net/x?Expires=1800000000&Signature=s").expect("url").expires_ms, Some(1_800_000_000_000));
    }

    #[test]
    fn host_patterns_and_grants_are_checked_at_load() {
        for bad in ["*", "*.com", "*bucket.s3.amazonaws.com", "10.0.0.1", "host:0", "host:x", "a..b", "-a.b", "user@host.test"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(HostPattern::parse("*.s3.amazonaws.com").map(|p| p.envoy_domain()), Ok("*.s3.amazonaws.com".to_string()));
        assert_eq!(HostPattern::parse("localhost:8443").map(|p| p.envoy_domain()), Ok("localhost:8443".to_string()));
        let err = DocumentsPolicy::from_doc(&DocumentsDoc { hosts: Some(vec!["10.0.0.1".into()]), reference_ttl_seconds: None }).expect_err("refused");
        assert_eq!(err.field, "documents.hosts[0]");
        let grant = DocumentGrant::from_doc(&DocumentGrantDoc { report_types: vec!["GET_FLAT_FILE_*".into()], binary_documents: None }, "roles.r.documents").expect("grant");
        assert!(grant.allows(Some("GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING")) && !grant.allows(Some("SC_VAT_TAX_REPORT")) && !grant.allows(None));
        assert!(DocumentGrant::from_doc(&DocumentGrantDoc { report_types: vec!["get_x".into()], binary_documents: None }, "r").is_err());
        assert!(DocumentGrant::from_doc(&DocumentGrantDoc { report_types: vec!["*".into()], binary_documents: Some("maybe".into()) }, "r").is_err());
    }

    #[test]
    fn pointers_replace_the_url_and_drop_the_compression() {
        let policy = DocumentsPolicy::default();
        let body = br#"{"reportDocumentId":"amzn1.spdoc.1.4.na.x","url":"https://d34o8swod1owfl.cloudfront.net/doc","compressionAlgorithm":"GZIP"}"#;
        let (map, reference) = read_pointer(body, &policy, "c", None, NOW).expect("allowed").expect("pointer");
        assert!(reference.gzip && reference.expires_ms == NOW + 300_000);
        let out = write_pointer(map, "https://proxy.test:10000", "spgr1.k.abc");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v, serde_json::json!({"reportDocumentId":"amzn1.spdoc.1.4.na.x","url":"https://proxy.test:10000/spapi-guard/v1/documents/spgr1.k.abc"}));
        assert_eq!(read_pointer(br#"{"errors":[]}"#, &policy, "c", None, NOW), Ok(None));
        assert_eq!(read_pointer(br#"{"url":"https://evil.test/x"}"#, &policy, "c", None, NOW).map(|_| ()), Err(DocumentRefusal::HostNotAllowed));
    }

    #[test]
    fn report_types_are_learned_into_bounded_slots() {
        let got = report_types_in(
            br#"{"reports":[{"reportId":"1","reportType":"GET_A","reportDocumentId":"doc-1"},{"reportType":"GET_B"},{"reportType":"bad type","reportDocumentId":"d"}]}"#,
        );
        assert_eq!(got, vec![("doc-1".to_string(), "GET_A".to_string())]);
        assert_eq!(report_types_in(br#"{"reportType":"GET_C","reportDocumentId":"doc-2","processingStatus":"DONE"}"#), vec![("doc-2".to_string(), "GET_C".to_string())]);
        let slot = encode_report_type("doc-1", "GET_A", NOW);
        assert_eq!(decode_report_type(&slot, "doc-1", NOW + 1000), Some("GET_A".to_string()));
        assert_eq!(decode_report_type(&slot, "doc-9", NOW), None, "another document in the same slot");
        assert_eq!(decode_report_type(&slot, "doc-1", NOW + REPORT_TYPE_TTL_MS + 1), None, "expired");
        assert!(report_type_key("doc-1").starts_with("spapi-guard.report-type."));
        assert_eq!(document_id_of("/reports/2021-06-30/documents/amzn1.spdoc.1"), Some("amzn1.spdoc.1".to_string()));
        assert!(lists_report_types("GET", "/reports/2021-06-30/reports/123") && lists_report_types("GET", "/reports/2021-06-30/reports?reportTypes=GET_A"));
        assert!(!lists_report_types("POST", "/reports/2021-06-30/reports") && !lists_report_types("GET", "/reports/2021-06-30/reports/1/x"));
    }

    #[test]
    fn proxy_base_is_the_apps_scheme_and_authority() {
        assert_eq!(proxy_base(Some("https"), Some("sellingpartnerapi-eu.guard.internal:10000")).as_deref(), Some("https://sellingpartnerapi-eu.guard.internal:10000"));
        assert_eq!(proxy_base(Some("http"), Some("127.0.0.1:10000")).as_deref(), Some("http://127.0.0.1:10000"));
        assert_eq!(proxy_base(None, Some("a/b")), None);
        assert_eq!(proxy_base(None, None), None);
    }
}
