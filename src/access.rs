//! Caller access control (DPP 1.1–1.3, 1.5): who is calling, from where, over what, and what
//! they may do — decided before the SP-API is contacted. Default deny.
//!
//! Order of checks: the request target (one canonical path, [`crate::uri`]) → transport (TLS ≥ 1.2
//! unless plaintext is allowed) → source address (global deny and allow lists) → identity (the
//! first identity source present, in the policy's order) → caller (must be listed) → the caller's
//! own address list → lockout → operation (allowed by one of the caller's roles; paths outside the
//! catalog only under `passThroughPaths`, matched on whole decoded segments) → Orders
//! `includedData` → for `createRestrictedDataToken`, every requested resource (needs the body).
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::audit::PathWords;
use crate::catalog::{Catalog, Operation};
use crate::cidr::{canonical, Cidr};
use crate::config_error::ConfigError;
use crate::lockout::LockoutRules;
use crate::pii::{PerClass, PiiClass};
use crate::policy::{Action, ClassActions, Policy};
use crate::query_params::INCLUDED_DATA;
use crate::uri;

/// Operation id of the Tokens API call that issues Restricted Data Tokens.
pub const RDT_OPERATION: &str = "tokens-2021-03-01.createRestrictedDataToken";
/// The most resources one RDT request may name (Tokens API limit).
const RDT_MAX_RESOURCES: usize = 50;

/// Names that identify nobody in particular: refused as caller ids (DPP 1.2: no generic,
/// shared or default accounts).
const GENERIC_NAMES: &[&str] = &[
    "",
    "*",
    "default",
    "admin",
    "administrator",
    "root",
    "test",
    "shared",
    "anonymous",
    "guest",
    "user",
    "users",
    "service",
    "system",
    "any",
    "all",
    "everyone",
    "public",
    "nobody",
];

// ---------------------------------------------------------------------------------------------
// Policy sections

/// The `access` section of a policy.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessDoc {
    /// Compute and log decisions without enforcing them (like Envoy RBAC shadow rules).
    #[serde(default)]
    pub dry_run: bool,
    /// Accept requests that arrived without TLS (e.g. an app → sidecar hop on loopback).
    #[serde(default)]
    pub allow_plaintext: bool,
    #[serde(default)]
    pub identity: IdentityDoc,
    /// Proxies in front of Envoy that append to X-Forwarded-For; 0 uses the direct peer. Rendered
    /// into Envoy's connection manager (`use_remote_address`, `xff_num_trusted_hops`): Envoy
    /// computes the client address, the filter reads it.
    #[serde(default)]
    pub xff_trusted_hops: u32,
    /// Source addresses allowed at all (absent: any address).
    #[serde(default)]
    pub allow_cidrs: Option<Vec<String>>,
    /// Source addresses always refused.
    #[serde(default)]
    pub deny_cidrs: Vec<String>,
    /// Path prefixes outside the catalog (SP-API operations without PII) that listed callers may
    /// use; every other unknown path is denied.
    #[serde(default)]
    pub pass_through_paths: Vec<String>,
    #[serde(default)]
    pub lockout: LockoutDoc,
}

/// Where identities come from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityDoc {
    /// Sources in order: `uri_san`, `dns_san`, `subject`, `header`. The first present wins.
    #[serde(default = "default_sources")]
    pub sources: Vec<String>,
    /// Header set by a trusted authentication filter in front of spapi-guard (e.g. a jwt_authn
    /// claim). Always removed before the upstream; read only when `header` is a source.
    #[serde(default)]
    pub header: Option<String>,
}

impl Default for IdentityDoc {
    fn default() -> Self {
        IdentityDoc { sources: default_sources(), header: None }
    }
}

fn default_sources() -> Vec<String> {
    vec!["uri_san".into(), "dns_san".into(), "subject".into()]
}

/// Lockout thresholds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LockoutDoc {
    /// Denied requests within the window that lock a caller (0 disables this trigger).
    #[serde(default = "default_max_denials")]
    pub max_denials: u32,
    #[serde(default = "default_window")]
    pub window_seconds: u64,
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: u64,
}

impl Default for LockoutDoc {
    fn default() -> Self {
        LockoutDoc { max_denials: default_max_denials(), window_seconds: default_window(), cooldown_seconds: default_cooldown() }
    }
}

fn default_max_denials() -> u32 {
    10
}
fn default_window() -> u64 {
    60
}
fn default_cooldown() -> u64 {
    300
}

/// A role: what its callers may do.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoleDoc {
    /// Operation ids, with `*` wildcards (`orders-v0.*`, `*`).
    pub operations: Vec<String>,
    /// PII class (or `*`) → access level: `clear`, `tokenize`, `hash`, `redact`, `none`.
    /// Classes not listed get `none` (need to know).
    #[serde(default)]
    pub pii: BTreeMap<String, String>,
    /// PII values delivered per lockout window above which the caller is locked.
    #[serde(default)]
    pub max_pii_fields_per_window: Option<u64>,
    /// `false` excludes the operations Amazon lists as restricted (RDT required), even where a
    /// wildcard in `operations` matches them.
    #[serde(default = "yes")]
    pub allow_restricted: bool,
    #[serde(default)]
    pub dry_run: bool,
    /// Where this role may turn tokens back into data (detokenization toward the SP-API, the
    /// reveal endpoint): need to know, per class and operation.
    #[serde(default)]
    pub reveal: Vec<RevealDoc>,
    /// Which report documents the role may download through the proxy (src/documents.rs).
    #[serde(default)]
    pub documents: Option<crate::documents::DocumentGrantDoc>,
}

/// One reveal grant of a role.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevealDoc {
    /// PII classes (or `*`) whose tokens may be opened.
    pub classes: Vec<String>,
    /// Operation ids with `*` wildcards the plaintext may be sent to, and/or `spapi-guard.reveal`
    /// (the proxy's own reveal endpoint).
    #[serde(default)]
    pub operations: Vec<String>,
    /// Names of the policy's third-party upstreams the plaintext may be sent to (every operation
    /// of each).
    #[serde(default)]
    pub upstreams: Vec<String>,
}

/// The operation id of the proxy's reveal endpoint in reveal grants.
pub const REVEAL_OPERATION: &str = "spapi-guard.reveal";

fn yes() -> bool {
    true
}

/// One caller: a unique identity.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CallerDoc {
    pub id: String,
    /// Which identity source this id comes from (default `uri_san`).
    #[serde(default)]
    pub source: Option<String>,
    pub roles: Vec<String>,
    /// Addresses this caller may come from (absent: any address the global lists allow).
    #[serde(default)]
    pub allow_cidrs: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Compiled form

/// Where an identity came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    UriSan,
    DnsSan,
    Subject,
    Header,
    /// The proxy's own node id: a sidecar on the app's loopback, where the caller is the workload
    /// the proxy was deployed for (never anything the request says).
    Node,
}

impl IdentitySource {
    fn parse(s: &str) -> Option<IdentitySource> {
        Some(match s {
            "uri_san" => IdentitySource::UriSan,
            "dns_san" => IdentitySource::DnsSan,
            "subject" => IdentitySource::Subject,
            "header" => IdentitySource::Header,
            "node" => IdentitySource::Node,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::UriSan => "uri_san",
            IdentitySource::DnsSan => "dns_san",
            IdentitySource::Subject => "subject",
            IdentitySource::Header => "header",
            IdentitySource::Node => "node",
        }
    }
}

/// A compiled caller.
pub struct Caller {
    pub id: String,
    pub source: IdentitySource,
    allow: Option<Vec<Cidr>>,
    /// Allowed operations, by catalog index.
    operations: Vec<bool>,
    /// Access level per PII class (the most generous of the caller's roles).
    pub actions: ClassActions,
    /// PII values per lockout window (the largest of the roles' limits; none if no role sets one).
    pub max_pii_per_window: Option<u64>,
    pub dry_run: bool,
    /// Classes whose tokens this caller may reveal, per catalog operation index; the last entry
    /// is the reveal endpoint. Empty when no role grants a reveal.
    reveal: Vec<PerClass<bool>>,
    /// Report documents it may download (the union of its roles' grants); `None`: none.
    pub documents: Option<crate::documents::DocumentGrant>,
}

impl Caller {
    /// Whether this caller may call catalog operation `index` (its roles' wildcards expanded,
    /// restricted operations excluded where a role says so).
    pub fn may_call(&self, index: usize) -> bool {
        self.operations.get(index).copied().unwrap_or(false)
    }

    /// The classes this caller may reveal toward catalog operation `index` (`None`: the reveal
    /// endpoint), or `None` when it may reveal nothing there.
    pub fn reveal_classes(&self, operation: Option<usize>) -> Option<&PerClass<bool>> {
        let at = match operation {
            Some(i) => i,
            None => self.reveal.len().checked_sub(1)?,
        };
        self.reveal.get(at).filter(|classes| classes.values().any(|&b| b))
    }
}

/// The compiled access policy.
pub struct Access {
    pub dry_run: bool,
    allow_plaintext: bool,
    sources: Vec<IdentitySource>,
    /// The trusted identity header (lower-case), removed from every request before the upstream.
    pub identity_header: Option<String>,
    allow: Option<Vec<Cidr>>,
    deny: Vec<Cidr>,
    /// `access.passThroughPaths`, as decoded segments: a path passes if it starts with all of them.
    pass_through: Vec<Vec<String>>,
    path_words: PathWords,
    pub lockout: LockoutRules,
    pub callers: Vec<Caller>,
}

/// Why a request was denied. Codes are stable: they appear in responses, logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    TlsRequired,
    IpDenied,
    IpNotAllowed,
    Unauthenticated,
    UnknownCaller,
    LockedOut,
    UnknownOperation,
    OperationNotAllowed,
    DataElementNotAllowed,
    RdtResourceNotAllowed,
    InvalidRdtRequest,
    /// The request target is not one canonical path (dot, empty, encoded-slash or backslash
    /// segments, control characters, bad percent-encoding or UTF-8): refused whoever asks, dry-run
    /// or not.
    InvalidPath,
    /// The request or response carries a canary record and the policy blocks canaries.
    CanaryBlocked,
    /// The request carries a token of a class the caller may not reveal toward this operation.
    DetokenizeNotAllowed,
    /// The request carries a token that does not open: forged, truncated, or of a key not in the ring.
    InvalidToken,
    /// The request carries a token of a key past its `notAfter`: its retention is over.
    TokenExpired,
    /// A reveal request the endpoint cannot read.
    InvalidRevealRequest,
    /// A request body with tokens that cannot be detokenized: not JSON, or too large.
    UnreadableRequestBody,
    /// Envoy would send the request to another cluster than the destination it was decided for
    /// (src/upstreams.rs): an upstream's operation elsewhere than its cluster, an SP-API
    /// operation to a third party, tokens to be revealed toward no SP-API cluster.
    DestinationMismatch,
}

impl DenyReason {
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::TlsRequired => "tls_required",
            DenyReason::IpDenied => "ip_denied",
            DenyReason::IpNotAllowed => "ip_not_allowed",
            DenyReason::Unauthenticated => "unauthenticated",
            DenyReason::UnknownCaller => "unknown_caller",
            DenyReason::LockedOut => "locked_out",
            DenyReason::UnknownOperation => "unknown_operation",
            DenyReason::OperationNotAllowed => "operation_not_allowed",
            DenyReason::DataElementNotAllowed => "data_element_not_allowed",
            DenyReason::RdtResourceNotAllowed => "rdt_resource_not_allowed",
            DenyReason::InvalidRdtRequest => "invalid_rdt_request",
            DenyReason::InvalidPath => "invalid_path",
            DenyReason::CanaryBlocked => "canary_blocked",
            DenyReason::DetokenizeNotAllowed => "detokenize_not_allowed",
            DenyReason::InvalidToken => "invalid_token",
            DenyReason::TokenExpired => "token_expired",
            DenyReason::InvalidRevealRequest => "invalid_reveal_request",
            DenyReason::UnreadableRequestBody => "unreadable_request_body",
            DenyReason::DestinationMismatch => "destination_mismatch",
        }
    }

    /// Refusals that protect rather than decide access: dry-run (which relaxes access decisions
    /// only) never lets these through. A path that is not canonical, or that neither the catalog
    /// nor `passThroughPaths` knows, would reach the SP-API unprotected.
    pub fn is_protection(self) -> bool {
        matches!(self, DenyReason::InvalidPath | DenyReason::UnknownOperation | DenyReason::DestinationMismatch)
    }

    pub fn status(self) -> u32 {
        match self {
            // Not 429: every SP-API client retries a 429 (urllib3 honours its Retry-After), so a
            // locked-out app would sleep through its lockout and never learn of it. A 403 is
            // never retried; Retry-After still says when the lockout ends.
            DenyReason::LockedOut => 403,
            DenyReason::InvalidRdtRequest
            | DenyReason::InvalidPath
            | DenyReason::InvalidToken
            | DenyReason::TokenExpired
            | DenyReason::InvalidRevealRequest
            | DenyReason::UnreadableRequestBody => 400,
            _ => 403,
        }
    }

    /// The SP-API-style error body: a stable reason, no policy details.
    pub fn error_body(self) -> String {
        let (code, message) = match self {
            DenyReason::LockedOut => ("Unauthorized", "This caller is temporarily locked out after repeated denied or anomalous requests; see Retry-After."),
            DenyReason::InvalidRdtRequest => ("InvalidInput", "The Restricted Data Token request could not be read."),
            DenyReason::InvalidPath => ("InvalidInput", "The request path or query is not valid."),
            DenyReason::TlsRequired => ("Unauthorized", "Requests must use TLS 1.2 or later."),
            DenyReason::DetokenizeNotAllowed => ("Unauthorized", "The request carries a token this caller may not reveal toward this operation."),
            DenyReason::InvalidToken => ("InvalidInput", "The request carries a token that is not valid."),
            DenyReason::TokenExpired => ("InvalidInput", "The request carries a token whose key has expired: its retention period is over and it is no longer opened."),
            DenyReason::UnreadableRequestBody => ("InvalidInput", "The request body carries tokens but is not JSON, or is too large to detokenize."),
            DenyReason::InvalidRevealRequest => ("InvalidInput", "The reveal request could not be read; send a JSON object whose tokens member lists the tokens."),
            DenyReason::DestinationMismatch => ("Unauthorized", "The request would reach another destination than the one it was checked for."),
            _ => ("Unauthorized", "Access to requested resource is denied."),
        };
        format!(r#"{{"errors":[{{"code":"{code}","message":"{message}","details":"spapi-guard:{}"}}]}}"#, self.code())
    }
}

/// What the filter knows about a request when it decides.
#[derive(Default, Debug)]
pub struct RequestFacts<'a> {
    /// `TLSv1.2`, `TLSv1.3`…; `None` for plaintext.
    pub tls_version: Option<&'a str>,
    pub uri_san: Option<&'a str>,
    pub dns_san: Option<&'a str>,
    pub subject: Option<&'a str>,
    /// The value of the trusted identity header, if present.
    pub header_identity: Option<&'a str>,
    /// The proxy's own node id (`node.id` of Envoy's bootstrap, `--service-node`): the workload
    /// itself, for a sidecar that serves only its own app on loopback.
    pub node_id: Option<&'a str>,
    /// Envoy's downstream remote address, `ip:port` (the peer, or the client behind trusted
    /// proxies: see `AccessDoc::xff_trusted_hops`).
    pub peer_address: Option<&'a str>,
    /// `:path`, query included.
    pub path: &'a str,
}

/// The outcome of the access checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(DenyReason),
}

/// A decision, with what was learned on the way.
#[derive(Debug)]
pub struct Decision {
    /// The identity presented (source and value), whether or not it is a known caller.
    pub identity: Option<(IdentitySource, String)>,
    /// Index of the caller in [`Access::callers`].
    pub caller: Option<usize>,
    pub client_ip: Option<IpAddr>,
    pub verdict: Verdict,
    /// The verdict is only logged, not enforced (never the case for a protection denial:
    /// [`DenyReason::is_protection`]).
    pub dry_run: bool,
    /// Allowed so far, but the request body (an RDT request) must still be checked.
    pub needs_body_check: bool,
}

impl Decision {
    /// Whether the request is stopped. Dry-run lets access denials through, never protections
    /// ([`DenyReason::is_protection`]).
    pub fn enforced_denial(&self) -> Option<DenyReason> {
        match self.verdict {
            Verdict::Deny(reason) if !self.dry_run || reason.is_protection() => Some(reason),
            _ => None,
        }
    }
}

impl Access {
    /// Compiles the policy's access sections against the catalog. Errors name the field.
    pub fn build(doc: &AccessDoc, roles: &BTreeMap<String, RoleDoc>, callers: &[CallerDoc], catalog: &Catalog, policy: &Policy) -> Result<Access, ConfigError> {
        let mut sources = Vec::new();
        for (i, s) in doc.identity.sources.iter().enumerate() {
            let source = IdentitySource::parse(s).ok_or_else(|| {
                ConfigError::new(format!("access.identity.sources[{i}]"), format!("'{s}' is not an identity source; use uri_san, dns_san, subject, header or node"))
            })?;
            if sources.contains(&source) {
                return Err(ConfigError::new(format!("access.identity.sources[{i}]"), format!("'{s}' is listed twice")));
            }
            sources.push(source);
        }
        if sources.is_empty() {
            return Err(ConfigError::new("access.identity.sources", "is empty; list uri_san, dns_san, subject, header and/or node"));
        }
        let identity_header = match &doc.identity.header {
            Some(h) if is_header_name(h) => Some(h.to_ascii_lowercase()),
            Some(_) => return Err(ConfigError::new("access.identity.header", "must be an HTTP header name (letters, digits, '-')")),
            None => None,
        };
        if sources.contains(&IdentitySource::Header) && identity_header.is_none() {
            return Err(ConfigError::new("access.identity.header", "must name the trusted header when 'header' is an identity source"));
        }
        if doc.xff_trusted_hops > 10 {
            return Err(ConfigError::new("access.xffTrustedHops", "must be between 0 and 10"));
        }
        let allow = doc.allow_cidrs.as_ref().map(|l| cidrs(l, "access.allowCidrs")).transpose()?;
        let deny = cidrs(&doc.deny_cidrs, "access.denyCidrs")?;
        // A node identity names the workload the proxy serves, whoever sends the request: only
        // the app beside it (on loopback) may reach it.
        if sources.contains(&IdentitySource::Node) && doc.xff_trusted_hops > 0 {
            return Err(ConfigError::new(
                "access.xffTrustedHops",
                "must be 0 when 'node' is an identity source: with trusted hops the client address comes from X-Forwarded-For, so any client could claim loopback and be taken for this proxy's workload",
            ));
        }
        if sources.contains(&IdentitySource::Node) && !allow.as_ref().is_some_and(|l| !l.is_empty() && l.iter().all(Cidr::is_loopback)) {
            return Err(ConfigError::new(
                "access.allowCidrs",
                "must list only loopback addresses (127.0.0.1/32, ::1/128) when 'node' is an identity source: the node identity names this proxy's own workload, so only the app beside it may call it",
            ));
        }
        let mut pass_through = Vec::with_capacity(doc.pass_through_paths.len());
        for (i, p) in doc.pass_through_paths.iter().enumerate() {
            let segments = uri::path_segments(p.strip_suffix('/').unwrap_or(p)).map_err(|e| {
                ConfigError::new(format!("access.passThroughPaths[{i}]"), format!("'{p}' must be a path prefix of one or more whole segments, like /catalog/ ({e})"))
            })?;
            pass_through.push(segments.into_iter().map(Cow::into_owned).collect::<Vec<_>>());
        }
        let l = &doc.lockout;
        if l.window_seconds == 0 || l.cooldown_seconds == 0 {
            return Err(ConfigError::new("access.lockout", "windowSeconds and cooldownSeconds must be at least 1"));
        }
        let lockout = LockoutRules { max_denials: l.max_denials, window_ms: l.window_seconds * 1000, cooldown_ms: l.cooldown_seconds * 1000 };

        let compiled_roles = roles.iter().map(|(name, role)| compile_role(name, role, catalog, policy).map(|r| (name.as_str(), r))).collect::<Result<BTreeMap<_, _>, _>>()?;

        let mut compiled = Vec::with_capacity(callers.len());
        for (i, c) in callers.iter().enumerate() {
            let at = format!("callers[{i}]");
            if is_generic(&c.id) {
                return Err(ConfigError::new(format!("{at}.id"), format!("'{}' is a generic, shared or default name; give each caller its own identity (DPP 1.2)", c.id)));
            }
            let source = match &c.source {
                None => IdentitySource::UriSan,
                Some(s) => IdentitySource::parse(s)
                    .ok_or_else(|| ConfigError::new(format!("{at}.source"), format!("'{s}' is not an identity source; use uri_san, dns_san, subject, header or node")))?,
            };
            if !sources.contains(&source) {
                return Err(ConfigError::new(format!("{at}.source"), format!("{} is not in access.identity.sources, so this caller could never be identified", source.as_str())));
            }
            if let Some(j) = compiled.iter().position(|other: &Caller| other.id == c.id && other.source == source) {
                return Err(ConfigError::new(format!("{at}.id"), format!("'{}' is already callers[{j}]; each identity is one caller", c.id)));
            }
            if c.roles.is_empty() {
                return Err(ConfigError::new(format!("{at}.roles"), "is empty; give the caller at least one role"));
            }
            let mut caller = Caller {
                id: c.id.clone(),
                source,
                allow: c.allow_cidrs.as_ref().map(|l| cidrs(l, &format!("{at}.allowCidrs"))).transpose()?,
                operations: vec![false; catalog.operations.len()],
                actions: PerClass::splat(Action::Remove),
                max_pii_per_window: None,
                dry_run: false,
                reveal: Vec::new(),
                documents: None,
            };
            for (j, name) in c.roles.iter().enumerate() {
                let role =
                    compiled_roles.get(name.as_str()).ok_or_else(|| ConfigError::new(format!("{at}.roles[{j}]"), format!("'{name}' is not a role of the policy's roles")))?;
                for (k, allowed) in role.operations.iter().enumerate() {
                    caller.operations[k] |= allowed;
                }
                for class in PiiClass::ALL {
                    let (mine, theirs) = (caller.actions[class], role.actions[class]);
                    if theirs.exposure() > mine.exposure() {
                        caller.actions[class] = theirs;
                    }
                }
                caller.max_pii_per_window = match (caller.max_pii_per_window, role.max_pii) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                caller.dry_run |= role.dry_run;
                if let Some(grant) = &role.documents {
                    caller.documents.get_or_insert_with(Default::default).merge(grant);
                }
                if !role.reveal.is_empty() {
                    caller.reveal.resize(catalog.operations.len() + 1, PerClass::splat(false));
                    for (k, classes) in role.reveal.iter().enumerate() {
                        for (class, &granted) in classes.iter() {
                            if granted {
                                caller.reveal[k][class] = true;
                            }
                        }
                    }
                }
            }
            compiled.push(caller);
        }

        Ok(Access {
            dry_run: doc.dry_run,
            allow_plaintext: doc.allow_plaintext,
            sources,
            identity_header,
            allow,
            deny,
            path_words: PathWords::new(catalog, pass_through.iter().flatten().map(String::as_str)),
            pass_through,
            lockout,
            callers: compiled,
        })
    }

    /// Decides on a request. `operation` is the routed catalog operation; `is_locked` reads the
    /// shared lockout state of a listed caller.
    pub fn decide(&self, facts: &RequestFacts, operation: Option<(usize, &Operation)>, is_locked: &dyn Fn(&Caller) -> bool) -> Decision {
        let mut d =
            Decision { identity: self.identity(facts), caller: None, client_ip: self.client_ip(facts), verdict: Verdict::Allow, dry_run: self.dry_run, needs_body_check: false };
        d.caller = d.identity.as_ref().and_then(|(source, id)| self.callers.iter().position(|c| c.source == *source && &c.id == id));
        if let Some(c) = d.caller {
            d.dry_run |= self.callers[c].dry_run;
        }
        d.verdict = match self.check(facts, &d, operation, is_locked) {
            Ok(needs_body) => {
                d.needs_body_check = needs_body;
                Verdict::Allow
            }
            Err(reason) => Verdict::Deny(reason),
        };
        if d.dry_run {
            // Dry-run relaxes access decisions only: whatever the access checks said (an unknown
            // caller, say), a path that is invalid or unknown is still refused.
            if let Err(reason) = self.protect(facts, operation) {
                d.verdict = Verdict::Deny(reason);
                d.dry_run = false;
                d.needs_body_check = false;
            }
        }
        d
    }

    /// The checks no mode relaxes: one canonical path, and an operation of the catalog or a
    /// pass-through path.
    fn protect(&self, facts: &RequestFacts, operation: Option<(usize, &Operation)>) -> Result<(), DenyReason> {
        let target = uri::parse(facts.path).map_err(|_| DenyReason::InvalidPath)?;
        // The reveal endpoint is no catalog operation but a known path: its access decision
        // (src/exchange.rs reveal_decision) keeps the reason dry-run would have denied it for.
        let reveal_endpoint = uri::split(facts.path).path == crate::exchange::REVEAL_PATH;
        if operation.is_none() && !self.passes_through(&target.segments) && !reveal_endpoint {
            return Err(DenyReason::UnknownOperation);
        }
        Ok(())
    }

    fn check(&self, facts: &RequestFacts, d: &Decision, operation: Option<(usize, &Operation)>, is_locked: &dyn Fn(&Caller) -> bool) -> Result<bool, DenyReason> {
        // One canonical path, whoever asks: what the filter routes and checks is what Amazon sees.
        let target = uri::parse(facts.path).map_err(|_| DenyReason::InvalidPath)?;
        let tls_ok = matches!(facts.tls_version, Some("TLSv1.2" | "TLSv1.3"));
        let plaintext_ok = facts.tls_version.is_none() && self.allow_plaintext;
        if !(tls_ok || plaintext_ok) {
            return Err(DenyReason::TlsRequired);
        }
        let ip = d.client_ip.ok_or(DenyReason::IpNotAllowed)?;
        if self.deny.iter().any(|c| c.contains(ip)) {
            return Err(DenyReason::IpDenied);
        }
        if self.allow.as_ref().is_some_and(|l| !l.iter().any(|c| c.contains(ip))) {
            return Err(DenyReason::IpNotAllowed);
        }
        if d.identity.is_none() {
            return Err(DenyReason::Unauthenticated);
        }
        let caller = &self.callers[d.caller.ok_or(DenyReason::UnknownCaller)?];
        if caller.allow.as_ref().is_some_and(|l| !l.iter().any(|c| c.contains(ip))) {
            return Err(DenyReason::IpNotAllowed);
        }
        if is_locked(caller) {
            return Err(DenyReason::LockedOut);
        }
        let Some((index, op)) = operation else {
            return if self.passes_through(&target.segments) { Ok(false) } else { Err(DenyReason::UnknownOperation) };
        };
        if !caller.may_call(index) {
            return Err(DenyReason::OperationNotAllowed);
        }
        for gate in requested_included_data(&target.query, op) {
            // Values that unlock no PII field (PACKAGES, PROCEEDS…) need no PII access.
            let gated = op.classes_of(Some(&gate)).count() > 0;
            if gated && !grants_any(caller, op.classes_of(Some(&gate))) {
                return Err(DenyReason::DataElementNotAllowed);
            }
        }
        Ok(op.id == RDT_OPERATION)
    }

    /// Checks a `createRestrictedDataToken` request body: every restricted resource must be an
    /// operation the caller may use, with access to PII of the requested data elements.
    pub fn check_rdt(&self, caller: usize, catalog: &Catalog, body: &[u8]) -> Result<(), DenyReason> {
        let caller = self.callers.get(caller).ok_or(DenyReason::UnknownCaller)?;
        // Read strictly: a key twice in one object, or in two spellings (`path`, `Path`), is read
        // differently by different parsers (the last wins here, maybe the first at Amazon).
        let doc = strict_json(body).ok_or(DenyReason::InvalidRdtRequest)?;
        let resources = doc.get("restrictedResources").and_then(|r| r.as_array()).ok_or(DenyReason::InvalidRdtRequest)?;
        if resources.is_empty() || resources.len() > RDT_MAX_RESOURCES {
            return Err(DenyReason::InvalidRdtRequest);
        }
        for resource in resources {
            let method = resource.get("method").and_then(|m| m.as_str()).ok_or(DenyReason::InvalidRdtRequest)?;
            let path = resource.get("path").and_then(|p| p.as_str()).ok_or(DenyReason::InvalidRdtRequest)?;
            // The path rules of requests apply (generic `{orderId}` segments are ordinary segments).
            let target = uri::parse(path).map_err(|_| DenyReason::InvalidRdtRequest)?;
            let index = catalog.route_segments(method, &target.segments).ok_or(DenyReason::RdtResourceNotAllowed)?;
            let op = catalog.operations.get(index).ok_or(DenyReason::RdtResourceNotAllowed)?;
            if !caller.may_call(index) {
                return Err(DenyReason::RdtResourceNotAllowed);
            }
            let elements: Vec<&str> = match resource.get("dataElements") {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(serde_json::Value::Array(list)) => list.iter().map(|e| e.as_str().ok_or(DenyReason::InvalidRdtRequest)).collect::<Result<_, _>>()?,
                Some(_) => return Err(DenyReason::InvalidRdtRequest),
            };
            if elements.is_empty() && !grants_any(caller, op.classes_of(None)) {
                return Err(DenyReason::RdtResourceNotAllowed);
            }
            for element in elements {
                if op.classes_of(Some(element)).next().is_none() {
                    return Err(DenyReason::InvalidRdtRequest);
                }
                if !grants_any(caller, op.classes_of(Some(element))) {
                    return Err(DenyReason::RdtResourceNotAllowed);
                }
            }
        }
        Ok(())
    }

    /// Whether decoded path segments fall under one of `access.passThroughPaths`, whole segment by
    /// whole segment (`/catalog/` passes `/catalog/2022-04-01/items`, not `/catalogue/x`).
    fn passes_through(&self, segments: &[Cow<str>]) -> bool {
        self.pass_through.iter().any(|prefix| prefix.len() <= segments.len() && prefix.iter().zip(segments).all(|(p, s)| p == s))
    }

    /// The path segments the audit log may print outside the catalog: the catalog's template
    /// literals and the pass-through prefixes' segments (for [`crate::audit::redacted_path_with`]).
    pub fn path_words(&self) -> &PathWords {
        &self.path_words
    }

    /// The identity sources, in the order they are tried (the filter reads only what it needs).
    pub fn identity_sources(&self) -> &[IdentitySource] {
        &self.sources
    }

    fn identity(&self, facts: &RequestFacts) -> Option<(IdentitySource, String)> {
        self.sources.iter().find_map(|&source| {
            let value = match source {
                IdentitySource::UriSan => facts.uri_san,
                IdentitySource::DnsSan => facts.dns_san,
                IdentitySource::Subject => facts.subject,
                IdentitySource::Header => facts.header_identity,
                IdentitySource::Node => facts.node_id,
            };
            value.filter(|v| !v.is_empty()).map(|v| (source, v.to_string()))
        })
    }

    fn client_ip(&self, facts: &RequestFacts) -> Option<IpAddr> {
        facts.peer_address.and_then(parse_address)
    }
}

/// Whether the caller gets any of these classes in some form.
fn grants_any(caller: &Caller, mut classes: impl Iterator<Item = PiiClass>) -> bool {
    classes.any(|c| caller.actions[c] != Action::Remove)
}

struct CompiledRole {
    operations: Vec<bool>,
    /// Per catalog operation index (+ the reveal endpoint last): classes that may be revealed.
    reveal: Vec<PerClass<bool>>,
    actions: ClassActions,
    max_pii: Option<u64>,
    dry_run: bool,
    documents: Option<crate::documents::DocumentGrant>,
}

fn compile_role(name: &str, role: &RoleDoc, catalog: &Catalog, policy: &Policy) -> Result<CompiledRole, ConfigError> {
    let at = format!("roles.{name}");
    let mut operations = vec![false; catalog.operations.len()];
    for (i, pattern) in role.operations.iter().enumerate() {
        let mut matched = false;
        for (k, op) in catalog.operations.iter().enumerate() {
            if covers(pattern, op) {
                operations[k] = role.allow_restricted || !op.restricted;
                matched = true;
            }
        }
        if !matched {
            return Err(ConfigError::new(
                format!("{at}.operations[{i}]"),
                format!("'{pattern}' matches no operation of the catalog; use ids like orders-v0.getOrder or orders-v0.* (see policies/spapi-catalog.json)"),
            ));
        }
    }
    let mut actions = PerClass::splat(Action::Remove);
    if let Some(level) = role.pii.get("*") {
        let all = level_action(level, PiiClass::Other, policy).ok_or_else(|| bad_level(&at, "*", level))?;
        for class in PiiClass::ALL {
            actions[class] = level_action(level, class, policy).unwrap_or(all);
        }
    }
    for (key, level) in &role.pii {
        if key == "*" {
            continue;
        }
        let class =
            PiiClass::parse(key).ok_or_else(|| ConfigError::new(format!("{at}.pii.{key}"), format!("'{key}' is not a PII class; use one of {} or *", PiiClass::names())))?;
        actions[class] = level_action(level, class, policy).ok_or_else(|| bad_level(&at, key, level))?;
    }
    let reveal = compile_reveal(&at, &role.reveal, catalog)?;
    let documents = role.documents.as_ref().map(|d| crate::documents::DocumentGrant::from_doc(d, &format!("{at}.documents"))).transpose()?;
    Ok(CompiledRole { operations, actions, max_pii: role.max_pii_fields_per_window, dry_run: role.dry_run, reveal, documents })
}

/// Compiles a role's reveal grants: per operation (and the reveal endpoint, last), the classes.
fn compile_reveal(at: &str, grants: &[RevealDoc], catalog: &Catalog) -> Result<Vec<PerClass<bool>>, ConfigError> {
    if grants.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = vec![PerClass::splat(false); catalog.operations.len() + 1];
    for (g, grant) in grants.iter().enumerate() {
        let at = format!("{at}.reveal[{g}]");
        let mut classes = PerClass::splat(false);
        if grant.classes.is_empty() {
            return Err(ConfigError::new(format!("{at}.classes"), "is empty; list the PII classes whose tokens may be revealed"));
        }
        for (i, name) in grant.classes.iter().enumerate() {
            if name == "*" {
                classes = PerClass::splat(true);
            } else {
                let class = PiiClass::parse(name)
                    .ok_or_else(|| ConfigError::new(format!("{at}.classes[{i}]"), format!("'{name}' is not a PII class; use one of {} or *", PiiClass::names())))?;
                classes[class] = true;
            }
        }
        if grant.operations.is_empty() && grant.upstreams.is_empty() {
            return Err(ConfigError::new(format!("{at}.operations"), format!("is empty; list operation ids (shipping-v2.*) and/or {REVEAL_OPERATION}, or upstreams")));
        }
        for (i, name) in grant.upstreams.iter().enumerate() {
            let mut matched = false;
            for (k, op) in catalog.operations.iter().enumerate() {
                if op.upstream.is_some() && &op.api == name {
                    matched = true;
                    if let Some(slot) = out.get_mut(k) {
                        merge(slot, &classes);
                    }
                }
            }
            if !matched {
                return Err(ConfigError::new(format!("{at}.upstreams[{i}]"), format!("'{name}' is not an upstream of the policy; name one of the upstreams map")));
            }
        }
        for (i, pattern) in grant.operations.iter().enumerate() {
            let mut matched = false;
            if glob(pattern, REVEAL_OPERATION) {
                matched = true;
                if let Some(last) = out.last_mut() {
                    merge(last, &classes);
                }
            }
            for (k, op) in catalog.operations.iter().enumerate() {
                if covers(pattern, op) {
                    matched = true;
                    if let Some(slot) = out.get_mut(k) {
                        merge(slot, &classes);
                    }
                }
            }
            if !matched {
                return Err(ConfigError::new(
                    format!("{at}.operations[{i}]"),
                    format!("'{pattern}' matches no operation of the catalog nor {REVEAL_OPERATION}; use ids like shipping-v2.getRates or shipping-v2.*"),
                ));
            }
        }
    }
    Ok(out)
}

fn merge(into: &mut PerClass<bool>, classes: &PerClass<bool>) {
    for (class, &granted) in classes.iter() {
        if granted {
            into[class] = true;
        }
    }
}

/// An access level as an action; `tokenize` uses the class's configured token mode.
fn level_action(level: &str, class: PiiClass, policy: &Policy) -> Option<Action> {
    let mode = match policy.action(class) {
        Action::Tokenize(mode) => mode,
        _ => crate::tokens::Mode::Deterministic,
    };
    Action::parse(level, mode)
}

fn bad_level(at: &str, key: &str, level: &str) -> ConfigError {
    ConfigError::new(format!("{at}.pii.{key}"), format!("'{level}' is not an access level; use clear, tokenize, hash, redact or none"))
}

fn cidrs(list: &[String], at: &str) -> Result<Vec<Cidr>, ConfigError> {
    list.iter().enumerate().map(|(i, s)| s.parse::<Cidr>().map_err(|m| ConfigError::new(format!("{at}[{i}]"), m))).collect()
}

/// Whether an id is generic: the whole id, or its last component (the path of a SPIFFE id, a
/// DNS label, a subject's CN), is a name that identifies nobody.
fn is_generic(id: &str) -> bool {
    let lower = id.trim().to_ascii_lowercase();
    let cn = lower.split(',').find_map(|part| part.trim().strip_prefix("cn=")).unwrap_or(&lower);
    let last = cn.rsplit(['/', ':']).next().unwrap_or(cn);
    let first_label = last.split('.').next().unwrap_or(last);
    [lower.as_str(), cn, last, first_label].iter().any(|s| GENERIC_NAMES.contains(s))
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether an operation pattern of a role or a reveal grant covers `op`. A third-party upstream's
/// operations are covered only by patterns that name it (`carrier.*`, `carrier.createShipment`):
/// `*` or `shipping-*` never send data to a third party.
fn covers(pattern: &str, op: &Operation) -> bool {
    glob(pattern, &op.id) && (op.upstream.is_none() || pattern.strip_prefix(op.api.as_str()).is_some_and(|rest| rest.starts_with('.')))
}

/// `*` matches any run of characters.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else { return false };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

fn parse_address(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>().ok().or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip())).map(canonical)
}

/// The `includedData` gates (`includedData=BUYER`…) a request asks for, read the way Amazon could
/// read them: the decoded parameter name case-insensitively, a `[…]` suffix and spaces ignored;
/// values split on commas, trimmed, case-insensitive. A value that is not exactly a known one
/// (`BUYER;x`, `*`, empty) counts as asking for every gate of the operation: never ignored.
fn requested_included_data(query: &[uri::QueryPair], op: &Operation) -> Vec<String> {
    let mut gates = Vec::new();
    for (_, value) in query.iter().filter(|(name, _)| is_included_data(name)) {
        for item in value.split(',').map(str::trim) {
            match INCLUDED_DATA.iter().find(|known| known.eq_ignore_ascii_case(item)) {
                Some(known) => gates.push(format!("includedData={known}")),
                None => gates.extend(op.response_rules.iter().filter_map(|r| r.data_element.as_deref()).filter(|d| d.starts_with("includedData=")).map(str::to_string)),
            }
        }
    }
    gates.sort();
    gates.dedup();
    gates
}

/// A JSON document in which no object has a key twice, compared case-insensitively (Unicode
/// simple case folding); `None` if it has, or is not JSON. serde_json's recursion limit applies.
fn strict_json(body: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice::<StrictJson>(body).ok().map(|v| v.0)
}

struct StrictJson(serde_json::Value);

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value without duplicate keys")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictJson(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        let mut folded = std::collections::BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let fold: String = key.chars().flat_map(char::to_uppercase).flat_map(char::to_lowercase).collect();
            if !folded.insert(fold) {
                return Err(serde::de::Error::custom("duplicate key"));
            }
            let StrictJson(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
    }
}

/// `includedData`, `includeddata`, `includedData[]`, `includedData[0]`, ` includedData `…
fn is_included_data(name: &str) -> bool {
    let base = name.split_once('[').map_or(name, |(base, _)| base);
    base.trim().eq_ignore_ascii_case("includedData")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::Guard;
    use serde_json::{json, Value};

    const KEY: &str = "8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const SYNC: &str = "spiffe://test/order-sync";
    const LABELS: &str = "spiffe://test/label-printer";
    const ANALYTICS: &str = "spiffe://test/analytics";

    fn policy() -> Value {
        json!({
            "version": 1,
            "keys": {"active": "k1", "env": {"k1": "K1"}},
            "access": {
                "identity": {"sources": ["uri_san", "header"], "header": "x-caller"},
                "allowCidrs": ["127.0.0.0/8", "10.0.0.0/8"],
                "denyCidrs": ["10.9.0.0/16"],
                "passThroughPaths": ["/catalog/"]
            },
            "roles": {
                "sync": {"operations": ["*"], "pii": {"*": "tokenize"}},
                "labels": {"operations": ["orders-v0.getOrderAddress", "tokens-2021-03-01.createRestrictedDataToken"], "pii": {"address": "clear"}},
                "analytics": {"operations": ["orders-2026-01-01.*", "orders-v0.getOrders"], "allowRestricted": false, "dryRun": false}
            },
            "callers": [
                {"id": SYNC, "roles": ["sync"]},
                {"id": LABELS, "roles": ["labels"]},
                {"id": ANALYTICS, "roles": ["analytics"], "allowCidrs": ["127.0.0.1/32"]},
                {"id": "batch-job-7", "source": "header", "roles": ["labels"]}
            ]
        })
    }

    fn guard(p: &Value) -> Result<Guard, ConfigError> {
        Guard::load(p.to_string().as_bytes(), &|n| (n == "K1").then(|| KEY.to_string()))
    }

    fn facts<'a>(uri: Option<&'a str>, path: &'a str) -> RequestFacts<'a> {
        RequestFacts { tls_version: Some("TLSv1.3"), uri_san: uri, peer_address: Some("127.0.0.1:5555"), path, ..Default::default() }
    }

    fn decide(g: &Guard, f: &RequestFacts, method: &str) -> Decision {
        let op = g.catalog.route_index(method, f.path).map(|i| (i, &g.catalog.operations[i]));
        g.access.decide(f, op, &|_| false)
    }

    fn verdict(g: &Guard, f: &RequestFacts, method: &str) -> Verdict {
        decide(g, f, method).verdict
    }

    #[test]
    fn callers_get_their_operations_and_levels() {
        let g = guard(&policy()).expect("loads");
        let allow = Verdict::Allow;
        let deny = |r| Verdict::Deny(r);
        assert_eq!(verdict(&g, &facts(Some(SYNC), "/orders/v0/orders"), "GET"), allow);
        assert_eq!(verdict(&g, &facts(Some(LABELS), "/orders/v0/orders/1/address"), "GET"), allow);
        assert_eq!(verdict(&g, &facts(Some(LABELS), "/orders/v0/orders"), "GET"), deny(DenyReason::OperationNotAllowed));
        assert_eq!(verdict(&g, &facts(Some(ANALYTICS), "/orders/2026-01-01/orders"), "GET"), allow);
        assert_eq!(verdict(&g, &facts(Some(ANALYTICS), "/orders/v0/orders"), "GET"), deny(DenyReason::OperationNotAllowed), "restricted");
        assert_eq!(verdict(&g, &facts(Some("spiffe://test/intruder"), "/orders/v0/orders"), "GET"), deny(DenyReason::UnknownCaller));
        assert_eq!(verdict(&g, &facts(None, "/orders/v0/orders"), "GET"), deny(DenyReason::Unauthenticated));
        assert_eq!(verdict(&g, &facts(Some(SYNC), "/reports/2021-06-30/reports"), "GET"), deny(DenyReason::UnknownOperation));
        assert_eq!(verdict(&g, &facts(Some(SYNC), "/catalog/2022-04-01/items"), "GET"), allow);
        let labels = &g.access.callers[1];
        assert_eq!(labels.actions[PiiClass::Address], Action::Clear);
        assert_eq!(labels.actions[PiiClass::Name], Action::Remove, "unlisted classes: need to know");
        assert!(matches!(g.access.callers[0].actions[PiiClass::Email], Action::Tokenize(_)));
    }

    #[test]
    fn transport_and_addresses() {
        let g = guard(&policy()).expect("loads");
        let mut f = facts(Some(SYNC), "/orders/v0/orders");
        f.tls_version = None;
        assert_eq!(verdict(&g, &f, "GET"), Verdict::Deny(DenyReason::TlsRequired));
        f.tls_version = Some("TLSv1.1");
        assert_eq!(verdict(&g, &f, "GET"), Verdict::Deny(DenyReason::TlsRequired));
        let mut f = facts(Some(SYNC), "/orders/v0/orders");
        f.peer_address = Some("192.168.1.1:1");
        assert_eq!(verdict(&g, &f, "GET"), Verdict::Deny(DenyReason::IpNotAllowed));
        f.peer_address = Some("10.9.1.1:1");
        assert_eq!(verdict(&g, &f, "GET"), Verdict::Deny(DenyReason::IpDenied));
        f.peer_address = Some("[::ffff:10.1.1.1]:1");
        assert_eq!(verdict(&g, &f, "GET"), Verdict::Allow);
        let mut a = facts(Some(ANALYTICS), "/orders/2026-01-01/orders");
        a.peer_address = Some("127.0.0.2:9");
        assert_eq!(verdict(&g, &a, "GET"), Verdict::Deny(DenyReason::IpNotAllowed), "caller's own list");

        let mut p = policy();
        p["access"]["allowPlaintext"] = json!(true);
        let g = guard(&p).expect("loads");
        let mut f = facts(Some(SYNC), "/orders/v0/orders");
        f.tls_version = None;
        assert_eq!(verdict(&g, &f, "GET"), Verdict::Allow, "plaintext when allowed");
        f.peer_address = None;
        assert_eq!(verdict(&g, &f, "GET"), Verdict::Deny(DenyReason::IpNotAllowed), "no address: fail closed");
    }

    #[test]
    fn identity_sources_in_order() {
        let g = guard(&policy()).expect("loads");
        let mut f = facts(Some(ANALYTICS), "/orders/v0/orders/1/address");
        f.header_identity = Some("batch-job-7");
        assert_eq!(decide(&g, &f, "GET").caller, Some(2), "the certificate comes first");
        f.uri_san = None;
        let d = decide(&g, &f, "GET");
        assert_eq!((d.caller, d.verdict), (Some(3), Verdict::Allow));
        f.header_identity = Some(SYNC);
        assert_eq!(verdict(&g, &f, "GET"), Verdict::Deny(DenyReason::UnknownCaller), "a header cannot claim a certificate identity");
    }

    #[test]
    fn lockout_and_dry_run() {
        let g = guard(&policy()).expect("loads");
        let f = facts(Some(SYNC), "/orders/v0/orders");
        let op = g.catalog.route_index("GET", f.path).map(|i| (i, &g.catalog.operations[i]));
        assert_eq!(g.access.decide(&f, op, &|c| c.id == SYNC).verdict, Verdict::Deny(DenyReason::LockedOut));
        let mut p = policy();
        p["roles"]["labels"]["dryRun"] = json!(true);
        let g = guard(&p).expect("loads");
        let d = decide(&g, &facts(Some(LABELS), "/orders/v0/orders"), "GET");
        assert_eq!(d.verdict, Verdict::Deny(DenyReason::OperationNotAllowed));
        assert!(d.dry_run && d.enforced_denial().is_none());
        assert!(!decide(&g, &facts(Some(SYNC), "/x"), "GET").dry_run);
    }

    #[test]
    fn invalid_paths_are_refused_before_anything_else() {
        let g = guard(&policy()).expect("loads");
        for path in [
            "/orders/v0/orders/.",
            "/orders/v0/orders/./address",
            "/orders/v0/orders/",
            "/orders/v0/orders//address",
            "/catalog/../orders/v0/orders/1/address",
            "/catalog/%2E%2E/orders/v0/orders/1/address",
            "/catalog/..%3B/orders/v0/orders/1/address",
            "/catalog/..;/orders/v0/orders/1/address",
            "/catalog/x%2F..%2F..%2Forders/v0/orders/1/address",
            "/catalog/x%5C..%5Corders",
            "/catalog\\..\\orders/v0/orders/1/address",
            "/orders/v0/orders/1%0A/address",
            "/orders/v0/orders/%ZZ/address",
            "/orders/v0/orders/%C3%28/address",
            "/orders/v0/orders?BuyerEmail=a%ZZ",
            "/orders/v0/orders/1/address?x=%00",
            "/orders/v0/orders/1/address#x",
            "orders/v0/orders",
        ] {
            assert_eq!(verdict(&g, &facts(Some(SYNC), path), "GET"), Verdict::Deny(DenyReason::InvalidPath), "{path}");
        }
        let mut plaintext = facts(None, "/catalog/../orders/v0/orders/1/address");
        plaintext.tls_version = None;
        assert_eq!(verdict(&g, &plaintext, "GET"), Verdict::Deny(DenyReason::InvalidPath), "whoever asks");
        let reason = DenyReason::InvalidPath;
        assert_eq!((reason.code(), reason.status()), ("invalid_path", 400));
        let body: Value = serde_json::from_str(&reason.error_body()).expect("json");
        assert_eq!(body["errors"][0]["code"], "InvalidInput");
        assert_eq!(body["errors"][0]["details"], "spapi-guard:invalid_path");
    }

    #[test]
    fn pass_through_prefixes_match_whole_decoded_segments() {
        let mut p = policy();
        p["access"]["passThroughPaths"] = json!(["/catalog", "/fba/inventory/"]);
        let g = guard(&p).expect("loads");
        let allow = Verdict::Allow;
        let unknown = Verdict::Deny(DenyReason::UnknownOperation);
        assert_eq!(verdict(&g, &facts(Some(SYNC), "/catalog/2022-04-01/items?keywords=x"), "GET"), allow);
        assert_eq!(verdict(&g, &facts(Some(SYNC), "/%63atalog/2022-04-01/items"), "GET"), allow, "what Amazon sees");
        assert_eq!(verdict(&g, &facts(Some(SYNC), "/fba/inventory/v1/summaries"), "GET"), allow);
        assert_eq!(verdict(&g, &facts(Some(SYNC), "/catalogue/items"), "GET"), unknown, "not a whole segment");
        assert_eq!(verdict(&g, &facts(Some(SYNC), "/fba/inventoryx/v1"), "GET"), unknown);
        assert_eq!(verdict(&g, &facts(Some(SYNC), "/fba/outbound/2020-07-01/x/y/z"), "GET"), unknown);
        for bad in ["/", "/catalog/../orders/", "catalog/", "/a//b", "/x%2Fy/"] {
            let mut p = policy();
            p["access"]["passThroughPaths"] = json!(["/sellers/", bad]);
            let e = guard(&p).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(e.field, "access.passThroughPaths[1]", "{e}");
        }
    }

    #[test]
    fn dry_run_relaxes_access_decisions_never_protection() {
        let intruder = "spiffe://test/intruder";
        let mut global = policy();
        global["access"]["dryRun"] = json!(true);
        let mut role = policy();
        role["roles"]["labels"]["dryRun"] = json!(true);
        for (name, p, callers) in [("global", global, vec![Some(LABELS), Some(intruder), None]), ("role", role, vec![Some(LABELS)])] {
            let g = guard(&p).expect("loads");
            // Access decisions are only logged…
            let d = decide(&g, &facts(Some(LABELS), "/orders/v0/orders"), "GET");
            assert_eq!((d.verdict, d.dry_run, d.enforced_denial()), (Verdict::Deny(DenyReason::OperationNotAllowed), true, None), "{name}");
            // …but unknown operations and invalid paths are refused, whoever asks.
            for who in callers {
                let d = decide(&g, &facts(who, "/reports/2021-06-30/reports"), "GET");
                assert_eq!((d.verdict, d.dry_run), (Verdict::Deny(DenyReason::UnknownOperation), false), "{name} {who:?}");
                assert_eq!(d.enforced_denial(), Some(DenyReason::UnknownOperation), "{name} {who:?}");
                for path in ["/catalog/..%3B/orders/v0/orders/1/address", "/orders/v0/orders/./address", "/orders/v0/orders?x=%ZZ"] {
                    let d = decide(&g, &facts(who, path), "GET");
                    assert_eq!(d.enforced_denial(), Some(DenyReason::InvalidPath), "{name} {who:?} {path}");
                }
            }
        }
        // A pass-through path stays an access decision: relaxed in dry-run.
        let mut p = policy();
        p["access"]["dryRun"] = json!(true);
        let g = guard(&p).expect("loads");
        let d = decide(&g, &facts(Some(intruder), "/catalog/2022-04-01/items"), "GET");
        assert_eq!((d.verdict, d.enforced_denial()), (Verdict::Deny(DenyReason::UnknownCaller), None));
    }

    #[test]
    fn included_data_needs_access_to_its_classes() {
        let mut p = policy();
        p["roles"]["analytics"]["pii"] = json!({"address": "redact"});
        let g = guard(&p).expect("loads");
        let ok = facts(Some(ANALYTICS), "/orders/2026-01-01/orders?includedData=RECIPIENT");
        assert_eq!(verdict(&g, &ok, "GET"), Verdict::Allow);
        let bad = facts(Some(ANALYTICS), "/orders/2026-01-01/orders?createdAfter=x&includedData=RECIPIENT%2CBUYER");
        assert_eq!(verdict(&g, &bad, "GET"), Verdict::Deny(DenyReason::DataElementNotAllowed));
        let sync = facts(Some(SYNC), "/orders/2026-01-01/orders?includedData=BUYER,RECIPIENT");
        assert_eq!(verdict(&g, &sync, "GET"), Verdict::Allow);
        let no_pii = facts(Some(ANALYTICS), "/orders/2026-01-01/orders?includedData=PACKAGES,PROCEEDS");
        assert_eq!(verdict(&g, &no_pii, "GET"), Verdict::Allow);
    }

    #[test]
    fn included_data_is_read_as_amazon_reads_it() {
        let mut p = policy();
        p["roles"]["analytics"]["pii"] = json!({"address": "redact"});
        let g = guard(&p).expect("loads");
        let denied = [
            "includedData=buyer",
            "includedData=BUYER%20",
            "includedData=+BUYER",
            "includedData=RECIPIENT,%20buyer",
            "includeddata=BUYER",
            "INCLUDEDDATA=RECIPIENT,BUYER",
            "include%64Data=BUYER",
            "includedData[]=BUYER",
            "includedData%5B%5D=BUYER",
            "includedData[0]=BUYER",
            "includedData%20=BUYER",
            "includedData=RECIPIENT&includedData=BUYER",
            "includedData=RECIPIENT%2CBUYER",
            // Not exactly a known value: as if every gated value were asked for.
            "includedData=BUYER;x",
            "includedData=BUYERS",
            "includedData=*",
            "includedData=",
            "includedData",
            "includedData=RECIPIENT,",
        ];
        for path in ["/orders/2026-01-01/orders", "/orders/2026-01-01/orders/1"] {
            for query in denied {
                let target = format!("{path}?{query}");
                assert_eq!(verdict(&g, &facts(Some(ANALYTICS), &target), "GET"), Verdict::Deny(DenyReason::DataElementNotAllowed), "{target}");
            }
            for query in [
                "includedData=RECIPIENT",
                "includedData=recipient",
                "includedData=%20Recipient%20,packages",
                "includedData[]=RECIPIENT",
                "includedData=PACKAGES,PROCEEDS",
                "createdAfter=2024-01-01",
            ] {
                let target = format!("{path}?{query}");
                assert_eq!(verdict(&g, &facts(Some(ANALYTICS), &target), "GET"), Verdict::Allow, "{target}");
            }
        }
        // A caller with access to every gated class may ask for anything, known or not.
        assert_eq!(verdict(&g, &facts(Some(SYNC), "/orders/2026-01-01/orders?includedData=buyer;x"), "GET"), Verdict::Allow);
    }

    #[test]
    fn rdt_requests_are_checked_per_resource() {
        let g = guard(&policy()).expect("loads");
        let f = facts(Some(LABELS), "/tokens/2021-03-01/restrictedDataToken");
        let d = decide(&g, &f, "POST");
        assert_eq!((d.verdict, d.needs_body_check), (Verdict::Allow, true));
        let labels = d.caller.expect("caller");
        let rdt = |resources: Value| g.access.check_rdt(labels, &g.catalog, json!({"restrictedResources": resources}).to_string().as_bytes());
        assert_eq!(rdt(json!([{"method": "GET", "path": "/orders/v0/orders/{orderId}/address", "dataElements": ["shippingAddress"]}])), Ok(()));
        assert_eq!(rdt(json!([{"method": "GET", "path": "/orders/v0/orders/123-4/address"}])), Ok(()));
        assert_eq!(
            rdt(json!([{"method": "GET", "path": "/orders/v0/orders/1/address"}, {"method": "GET", "path": "/orders/v0/orders", "dataElements": ["buyerInfo"]}])),
            Err(DenyReason::RdtResourceNotAllowed)
        );
        assert_eq!(rdt(json!([{"method": "GET", "path": "/orders/v0/orders/1/buyerInfo"}])), Err(DenyReason::RdtResourceNotAllowed));
        assert_eq!(rdt(json!([{"method": "GET", "path": "/nowhere"}])), Err(DenyReason::RdtResourceNotAllowed));
        assert_eq!(rdt(json!([{"method": "GET", "path": "/orders/v0/orders/1/address", "dataElements": ["colour"]}])), Err(DenyReason::InvalidRdtRequest));
        assert_eq!(rdt(json!([])), Err(DenyReason::InvalidRdtRequest));
        assert_eq!(g.access.check_rdt(labels, &g.catalog, b"{not json"), Err(DenyReason::InvalidRdtRequest));
        let sync = decide(&g, &facts(Some(SYNC), "/tokens/2021-03-01/restrictedDataToken"), "POST").caller.expect("caller");
        let body = json!({"restrictedResources": [{"method": "GET", "path": "/orders/v0/orders", "dataElements": ["buyerInfo", "shippingAddress"]}]});
        assert_eq!(g.access.check_rdt(sync, &g.catalog, body.to_string().as_bytes()), Ok(()));
    }

    #[test]
    fn rdt_bodies_with_duplicate_or_case_variant_keys_or_invalid_paths_are_refused() {
        let g = guard(&policy()).expect("loads");
        let labels = decide(&g, &facts(Some(LABELS), "/tokens/2021-03-01/restrictedDataToken"), "POST").caller.expect("caller");
        let check = |body: &str| g.access.check_rdt(labels, &g.catalog, body.as_bytes());
        let address = r#"{"method":"GET","path":"/orders/v0/orders/1/address"}"#;
        assert_eq!(check(&format!(r#"{{"restrictedResources":[{address}]}}"#)), Ok(()));
        // Each body asks first for what label-printer may not have, then repeats a key (or a
        // case variant of it) with what it may have: a reader where the last key wins sees only
        // the allowed part, another reader the forbidden one.
        let smuggled = [
            format!(r#"{{"restrictedResources":[{{"method":"GET","path":"/orders/v0/orders","dataElements":["buyerInfo"]}}],"restrictedResources":[{address}]}}"#),
            format!(r#"{{"RestrictedResources":[{{"method":"GET","path":"/orders/v0/orders"}}],"restrictedResources":[{address}]}}"#),
            r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/1/buyerInfo","path":"/orders/v0/orders/1/address"}]}"#.to_string(),
            r#"{"restrictedResources":[{"method":"GET","Path":"/orders/v0/orders/1/buyerInfo","path":"/orders/v0/orders/1/address"}]}"#.to_string(),
            r#"{"restrictedResources":[{"method":"GET","pa\u0074h":"/orders/v0/orders/1/buyerInfo","path":"/orders/v0/orders/1/address"}]}"#.to_string(),
            r#"{"restrictedResources":[{"METHOD":"DELETE","method":"GET","path":"/orders/v0/orders/1/address"}]}"#.to_string(),
            r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/1/address","dataElements":["buyerInfo"],"dataelements":[]}]}"#.to_string(),
            format!(r#"{{"targetApplication":"amzn1.sp.solution.a","targetApplication":"amzn1.sp.solution.b","restrictedResources":[{address}]}}"#),
            format!(r#"{{"restrictedResources":[{address}],"extra":{{"deep":[{{"k":1,"K":2}}]}}}}"#),
            // A lone case variant is not the key Amazon documents.
            format!(r#"{{"RestrictedResources":[{address}]}}"#),
        ];
        for body in &smuggled {
            assert_eq!(check(body), Err(DenyReason::InvalidRdtRequest), "{body}");
        }
        // Resource paths follow the request path rules (generic templates stay fine).
        assert_eq!(check(r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/{orderId}/address"}]}"#), Ok(()));
        for path in [
            "/orders/v0/orders/1/../1/address",
            "/orders/v0/orders/./address",
            "/orders/v0/orders/1%2Faddress",
            "/orders/v0/orders/1/address/",
            "/orders/v0/orders//address",
            "/orders/v0/orders/%ZZ/address",
            "/orders/v0/orders/1\\x/address",
            "/orders/v0/orders/1/address#x",
            "orders/v0/orders/1/address",
        ] {
            let body = json!({"restrictedResources": [{"method": "GET", "path": path}]}).to_string();
            assert_eq!(check(&body), Err(DenyReason::InvalidRdtRequest), "{path}");
        }
    }

    #[test]
    fn invalid_access_policies_name_the_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("/callers/1/id", json!(SYNC), "callers[1].id"),
            ("/callers/0/id", json!("spiffe://test/admin"), "callers[0].id"),
            ("/callers/0/id", json!("CN=default,O=Acme"), "callers[0].id"),
            ("/callers/0/id", json!("*"), "callers[0].id"),
            ("/callers/0/id", json!(""), "callers[0].id"),
            ("/callers/0/roles", json!(["nope"]), "callers[0].roles[0]"),
            ("/callers/0/roles", json!([]), "callers[0].roles"),
            ("/callers/2/allowCidrs", json!(["10.0.0.0/33"]), "callers[2].allowCidrs[0]"),
            ("/callers/3/source", json!("dns_san"), "callers[3].source"),
            ("/roles/sync/operations", json!(["orders-v9.*"]), "roles.sync.operations[0]"),
            ("/roles/sync/pii", json!({"shoe": "clear"}), "roles.sync.pii.shoe"),
            ("/roles/sync/pii", json!({"email": "peek"}), "roles.sync.pii.email"),
            ("/access/denyCidrs", json!(["1.2.3.4/8"]), "access.denyCidrs[0]"),
            ("/access/identity/sources", json!(["uri_san", "cookie"]), "access.identity.sources[1]"),
            ("/access/identity/header", json!("bad header"), "access.identity.header"),
            ("/access/passThroughPaths", json!(["catalog"]), "access.passThroughPaths[0]"),
        ];
        for (pointer, value, field) in cases {
            let mut p = policy();
            *p.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer}")) = value;
            let e = guard(&p).err().unwrap_or_else(|| panic!("{pointer} accepted"));
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn node_identity_is_the_sidecars_own_workload_on_loopback_only() {
        let mut p = policy();
        p["access"]["identity"]["sources"] = json!(["node"]);
        p["access"]["allowPlaintext"] = json!(true);
        p["callers"] = json!([{"id": "order-sync-workload", "source": "node", "roles": ["sync"]}]);
        let e = guard(&p).err().expect("refused without a loopback allow list");
        assert_eq!(e.field, "access.allowCidrs");
        p["access"]["allowCidrs"] = json!(["127.0.0.1/32", "::1/128"]);
        let g = guard(&p).expect("loads");
        let mut f = facts(None, "/orders/v0/orders/1/address");
        f.tls_version = None;
        f.node_id = Some("order-sync-workload");
        assert_eq!(verdict(&g, &f, "GET"), Verdict::Allow);
        f.node_id = Some("another-workload");
        assert_eq!(verdict(&g, &f, "GET"), Verdict::Deny(DenyReason::UnknownCaller));
        p["access"]["allowCidrs"] = json!(["127.0.0.0/8", "10.0.0.0/8"]);
        assert!(guard(&p).is_err());
        p["access"]["allowCidrs"] = json!(["127.0.0.1/32"]);
        p["access"]["xffTrustedHops"] = json!(1);
        assert_eq!(guard(&p).err().map(|e| e.field), Some("access.xffTrustedHops".to_string()));
    }

    #[test]
    fn globs_and_generic_names() {
        assert!(glob("orders-v0.*", "orders-v0.getOrder") && glob("*", "x") && glob("*.getOrder", "orders-v0.getOrder"));
        assert!(!glob("orders-v0.*", "orders-2026-01-01.getOrder"));
        for generic in ["admin", "spiffe://acme/ns/prod/sa/default", "CN=root,O=x", "test.example.com", "shared", "dns:service"] {
            assert!(is_generic(generic), "{generic}");
        }
        for specific in ["spiffe://acme/ns/prod/sa/order-sync", "CN=label-printer,O=Acme", "reporting.acme.example"] {
            assert!(!is_generic(specific), "{specific}");
        }
    }
}
