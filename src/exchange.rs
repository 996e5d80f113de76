//! One request/response exchange through the filter, as an explicit state machine.
//!
//! Envoy calls the filter in phases: request headers → request body (chunks) → request trailers →
//! response headers → response body (chunks) → response trailers → log. Any phase after the first
//! may be missing (no body, no trailers, a reset, a local reply), and the last chunk of a body may
//! be followed by trailers instead of `end_of_stream`. Every phase of [`Exchange`] says what to do
//! next ([`Flow`]) from the state the earlier phases left, through a small [`HttpHost`] trait, so
//! the whole flow runs natively against a mock host ([`crate::testing::MockHost`]) as well as in
//! Envoy (`src/filter/`, which holds no decision logic).
//!
//! The rules that keep it fail-closed:
//! * A body the filter must see whole (an RDT request, a response with PII) is released only by
//!   the phase that ends it — the last body chunk *or* the trailers — after the check or rewrite.
//! * After a local reply no upstream byte follows, and a refused body is never released.
//! * A rewritten body is written only if it fits Envoy's buffer (`bufferLimitBytes`): writing past
//!   it makes Envoy answer from inside the host call and re-enter the VM (a crash).
//! * Whatever the exchange ends in — including a reset in the middle of a body — is audited once,
//!   with what really happened.
use std::rc::Rc;

use crate::access::{Caller, Decision, DenyReason, IdentitySource, RequestFacts, Verdict};
use crate::audit::{redacted_path_with, AuditEvent, DecisionIds, DecisionKind, Outcome, SecurityEvent};
use crate::canary::ChunkScanner;
use crate::detokenize::{detokenize_json, detokenize_target, DetokenizeError, Revealed};
use crate::download::{Download, Step};
use crate::drift::{DriftAction, DriftFindings, DriftKind};
use crate::fail_closed::{check_response_headers, FailReason};
use crate::guard::{FieldCounts, Guard};
use crate::keyring::ActiveKeys;
use crate::lockout::{LockState, Trigger};
use crate::pii::PerClass;
use crate::policy::ClassActions;
use crate::tokens::ValueKind;

/// The audit path of every download (the reference in the real path is never printed).
const DOCUMENT_AUDIT_PATH: &str = "/spapi-guard/v1/documents/{reference}";
/// The `operation` of a download's drift findings (events and metric labels): no catalog operation.
const DOCUMENTS_OPERATION: &str = "documents";
/// Reason of a request answered by a filter in front of spapi-guard.
const REFUSED_BEFORE: &str = "refused_before_spapi_guard";
/// Reason of an exchange that ended (reset, disconnect) before the body the filter held was whole.
const RESPONSE_INCOMPLETE: &str = "response_incomplete";
const REQUEST_INCOMPLETE: &str = "request_incomplete";
/// Reasons of an exchange Envoy answered itself because the SP-API gave no usable response.
const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
const UPSTREAM_UNAVAILABLE: &str = "upstream_unavailable";

/// Largest `createRestrictedDataToken` request body read (50 resources fit easily).
pub const MAX_RDT_BODY: usize = 64 * 1024;
/// Largest request body detokenized (a label purchase is a few KB).
pub const MAX_DETOKENIZE_BODY: usize = 1024 * 1024;
/// The proxy's own endpoint that turns tokens back into data for callers allowed to see them.
pub const REVEAL_PATH: &str = "/spapi-guard/v1/reveal";
/// Most tokens one reveal request may ask for.
pub const MAX_REVEAL_TOKENS: usize = 1000;

/// What the host does after a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Pass the phase on.
    Continue,
    /// Hold it: the body is being buffered, or a local reply replaces the stream.
    Pause,
}

/// Log levels the core uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// Services of the host that do not belong to one request: logging, metrics, the clock and the
/// lockout state every worker shares.
pub trait Host {
    fn log(&self, level: Level, message: &str);
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Adds `n` to a counter with labels.
    fn count(&self, metric: &str, labels: &[(&str, &str)], n: u64);
    /// Sets a gauge with labels.
    fn gauge(&self, metric: &str, labels: &[(&str, &str)], value: u64);
    /// A caller's lockout state as all workers see it.
    fn lock_state(&self, caller_id: &str) -> LockState;
    /// Updates a caller's lockout state atomically; `update` may run more than once.
    fn update_lock(&self, caller_id: &str, update: &dyn Fn(&mut LockState, u64) -> Trigger) -> Trigger;
    /// A value every worker shares (the report types learned, src/documents.rs); hosts without
    /// shared state have none.
    fn shared_get(&self, _key: &str) -> Option<Vec<u8>> {
        None
    }
    /// Sets a shared value (last writer wins).
    fn shared_set(&self, _key: &str, _value: &[u8]) {}
}

/// The per-request side of the host: headers, bodies, properties, local replies, the audit record.
/// Values are bytes: header values need not be UTF-8.
pub trait HttpHost: Host {
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    fn set_request_header(&mut self, name: &str, value: Option<&str>);
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    /// The names of every response header (lower-case, pseudo-headers included).
    fn response_header_names(&self) -> Vec<String>;
    fn set_response_header(&mut self, name: &str, value: Option<&str>);
    /// A property of the stream (`["connection", "tls_version"]`, `["request", "id"]`…).
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Up to `max` bytes of the request body the host holds (the buffered body, or the current
    /// chunk when it streams).
    fn request_body(&self, max: usize) -> Vec<u8>;
    /// Up to `max` bytes of the response body the host holds.
    fn response_body(&self, max: usize) -> Vec<u8>;
    /// Replaces the first `replaced` bytes of the held request body with `body`.
    fn set_request_body(&mut self, replaced: usize, body: &[u8]);
    /// Replaces the first `replaced` bytes of the held response body (all of it, as the filter
    /// uses it) with `body`.
    fn set_response_body(&mut self, replaced: usize, body: &[u8]);
    /// Answers the client locally; no upstream byte follows.
    fn send_reply(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    /// Stores the request's audit event for the access log.
    fn set_audit(&mut self, json: &str);
    /// Resets the stream after response bytes went out: the client sees an aborted transfer
    /// (HTTP/1.1: no final chunk; HTTP/2: RST_STREAM), never a clean end.
    fn reset_stream(&mut self);
}

/// Writes a security event to the host's log as `spapi-guard event {json}`.
pub fn security(host: &dyn Host, event: &SecurityEvent) {
    let level = match event.severity {
        "critical" | "high" => Level::Error,
        "warning" => Level::Warn,
        _ => Level::Info,
    };
    host.log(level, &format!("spapi-guard event {}", event.to_json()));
}

/// Answers a request that reached a VM without a configuration (Envoy refuses such a listener, so
/// this is a last line of defence): 503, nothing forwarded.
pub fn refuse_unconfigured(host: &mut dyn HttpHost) -> Flow {
    host.log(Level::Error, "spapi-guard: request refused: this VM has no configuration");
    let body = r#"{"errors":[{"code":"ServiceUnavailable","message":"spapi-guard is not configured.","details":"spapi-guard:not_configured"}]}"#;
    host.send_reply(503, &[("content-type", "application/json"), ("x-spapi-guard", "not_configured")], body.as_bytes());
    Flow::Pause
}

/// Where the request body stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestState {
    /// Headers not seen yet.
    Start,
    /// Forwarded as it arrives (scanned for canaries when the policy has some).
    Streaming,
    /// Held until whole: an RDT request whose resources must be checked.
    CheckingRdt,
    /// Held until whole: its tokens are turned back into data before it is forwarded.
    Detokenizing,
    /// Held until whole: a request to the reveal endpoint, answered by the filter itself.
    Revealing,
    /// Checked and released.
    Released,
}

/// Where the response stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResponseState {
    /// No response headers yet.
    Waiting,
    /// Passed on as it arrives.
    Streaming,
    /// Held until whole, then rewritten.
    Protecting,
    /// A report document, rewritten chunk by chunk as it streams (src/download.rs).
    Document,
    /// Rewritten (or found to need nothing) and released.
    Released,
}

/// Who answered the client, when it was not the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    None,
    /// A local reply sent while the request was decoded: it flows back through the filter.
    InRequest,
    /// A local reply that replaces the upstream response: no upstream byte may follow.
    InResponse,
}

/// One exchange: the state the phases share, and what the audit event reports.
pub struct Exchange {
    guard: Rc<Guard>,
    ids: Rc<DecisionIds>,
    request: RequestState,
    response: ResponseState,
    reply: Reply,
    /// Response headers have arrived (from the upstream or a local reply of another filter).
    response_started: bool,
    request_id: String,
    method: String,
    path: String,
    operation: Option<usize>,
    decision: Option<Decision>,
    /// The decision as the audit log reports it (updated if the response fails closed or is blocked).
    decision_kind: DecisionKind,
    tls_version: Option<String>,
    /// What each PII class becomes in the response.
    actions: ClassActions,
    outcome: Outcome,
    reason: Option<&'static str>,
    counts: FieldCounts,
    /// The key of each class in the response (when it was protected).
    keys: Option<ActiveKeys>,
    /// The classes the caller may reveal toward this request's destination.
    reveal: Option<PerClass<bool>>,
    /// Tokens turned back into data for this request.
    revealed: Revealed,
    upstream_status: Option<u32>,
    /// Size of the request body held so far (as the host last reported it).
    request_held: usize,
    /// Size of the response body held so far.
    response_held: usize,
    bytes_in: usize,
    bytes_out: usize,
    security_events: Vec<&'static str>,
    canaries: Vec<String>,
    /// PII the catalog's paths did not name, found in the response.
    drift: DriftFindings,
    /// A copy of a PII-free operation's response as it streams, for the drift scan at its end
    /// (`drift.scanPiiFreeOperations`); `None` when not scanning (or past `maxBodyBytes`).
    drift_copy: Option<Vec<u8>>,
    request_scanner: ChunkScanner,
    response_scanner: ChunkScanner,
    /// A report-document download (the proxy's documents endpoint).
    download: Option<Box<Download>>,
    /// `<scheme>://<authority>` the app called (the base of document pointers).
    base: Option<String>,
    /// A `getReport`/`getReports` response as it streams, for the report types it names.
    report_listing: Option<Vec<u8>>,
}

impl Exchange {
    pub fn new(guard: Rc<Guard>, ids: Rc<DecisionIds>) -> Exchange {
        let actions = *guard.policy.actions();
        Exchange {
            guard,
            ids,
            request: RequestState::Start,
            response: ResponseState::Waiting,
            reply: Reply::None,
            response_started: false,
            request_id: String::new(),
            method: String::new(),
            path: String::new(),
            operation: None,
            decision: None,
            decision_kind: DecisionKind::Allow,
            tls_version: None,
            actions,
            outcome: Outcome::Unmatched,
            reason: None,
            counts: FieldCounts::default(),
            keys: None,
            reveal: None,
            revealed: Revealed::default(),
            upstream_status: None,
            request_held: 0,
            response_held: 0,
            bytes_in: 0,
            bytes_out: 0,
            security_events: Vec::new(),
            canaries: Vec::new(),
            drift: DriftFindings::default(),
            drift_copy: None,
            request_scanner: ChunkScanner::default(),
            response_scanner: ChunkScanner::default(),
            download: None,
            base: None,
            report_listing: None,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Phases

    pub fn on_request_headers(&mut self, host: &mut dyn HttpHost, end_of_stream: bool) -> Flow {
        let guard = Rc::clone(&self.guard);
        self.request = RequestState::Streaming;
        // Only the filter may pick the document route, after its checks: a client's copy goes.
        host.set_request_header(crate::documents::ROUTE_HEADER, None);
        self.request_id = text(host.property(&["request", "id"])).unwrap_or_default();
        let method = text(host.request_header(":method")).unwrap_or_default();
        let path = text(host.request_header(":path")).unwrap_or_default();
        // The trusted identity header is read here and never forwarded.
        let header_identity = guard.access.identity_header.as_deref().and_then(|h| {
            let value = text(host.request_header(h));
            if value.is_some() {
                host.set_request_header(h, None);
            }
            value
        });
        self.tls_version = text(host.property(&["connection", "tls_version"]));
        // Certificate properties are read in the policy's order, up to the first one present:
        // each read is a host call, and the first present source decides anyway.
        let (mut uri_san, mut dns_san, mut subject, mut node_id) = (None, None, None, None);
        let present = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        for source in guard.access.identity_sources() {
            let found = match source {
                _ if self.tls_version.is_none() && !matches!(source, IdentitySource::Header | IdentitySource::Node) => false,
                IdentitySource::UriSan => {
                    uri_san = text(host.property(&["connection", "uri_san_peer_certificate"]));
                    present(&uri_san)
                }
                IdentitySource::DnsSan => {
                    dns_san = text(host.property(&["connection", "dns_san_peer_certificate"]));
                    present(&dns_san)
                }
                IdentitySource::Subject => {
                    subject = text(host.property(&["connection", "subject_peer_certificate"]));
                    present(&subject)
                }
                IdentitySource::Header => present(&header_identity),
                IdentitySource::Node => {
                    node_id = text(host.property(&["xds", "node", "id"]));
                    present(&node_id)
                }
            };
            if found {
                break;
            }
        }
        // Envoy's downstream remote address: the peer, or the client behind trusted proxies.
        let peer = text(host.property(&["source", "address"]));
        let facts = RequestFacts {
            tls_version: self.tls_version.as_deref(),
            uri_san: uri_san.as_deref(),
            dns_san: dns_san.as_deref(),
            subject: subject.as_deref(),
            header_identity: header_identity.as_deref(),
            node_id: node_id.as_deref(),
            peer_address: peer.as_deref(),
            path: &path,
        };
        self.method = method;
        self.operation = guard.catalog.route_index(&self.method, &path);
        let operation = self.operation.and_then(|i| guard.catalog.operations.get(i).map(|op| (i, op)));
        let now = host.now_ms();
        let mut decision = guard.access.decide(&facts, operation, &|caller| host.lock_state(&caller.id).is_locked(now));
        let reveal_endpoint = crate::uri::split(&path).path == REVEAL_PATH;
        if reveal_endpoint {
            reveal_decision(&guard, &mut decision, &self.method);
        }
        let document_reference = crate::uri::split(&path).path.strip_prefix(crate::documents::DOCUMENTS_PATH).map(str::to_string);
        if document_reference.is_some() {
            document_decision(&guard, &mut decision, &self.method);
        }
        let caller_actions = decision.caller.and_then(|c| guard.access.callers.get(c)).map(|c| c.actions);
        let denial = decision.enforced_denial();
        let needs_body_check = decision.needs_body_check;
        let enforcing = !decision.dry_run;
        if let (Verdict::Deny(reason), true) = (decision.verdict, decision.dry_run) {
            host.log(Level::Info, &format!("spapi-guard: dry-run: would deny ({})", reason.code()));
            self.reason = Some(reason.code());
            self.decision_kind = DecisionKind::DryRunDeny;
        }
        self.decision = Some(decision);
        self.path = path;
        let mut path_hits = guard.canaries.find(self.path.as_bytes());
        if !guard.canaries.is_empty() {
            // Also as Amazon reads it: a canary partly percent-encoded in the query (Envoy
            // normalizes the path's escapes, not the query's) is still found.
            if let Ok(target) = crate::uri::parse(&self.path) {
                for text in target.segments.iter().chain(target.query.iter().flat_map(|(n, v)| [n, v])) {
                    for hit in guard.canaries.find(text.as_bytes()) {
                        if !path_hits.contains(&hit) {
                            path_hits.push(hit);
                        }
                    }
                }
            }
        }
        if self.canaries_seen(host, path_hits) {
            return self.deny(host, DenyReason::CanaryBlocked);
        }
        if let Some(reason) = denial {
            return self.deny(host, reason);
        }
        if let Some(actions) = caller_actions {
            self.actions = actions;
        }
        self.outcome = match operation {
            Some((_, op)) if op.has_response_pii() => {
                // The filter reads only identity bodies: ask upstream not to compress.
                host.set_request_header("accept-encoding", None);
                Outcome::Protected
            }
            Some((_, op)) => {
                if guard.drift.scan_pii_free && !guard.upstreams.passes_unread(op.upstream) {
                    // Scanned as it streams (report only): the filter reads identity bodies only.
                    host.set_request_header("accept-encoding", None);
                    self.drift_copy = Some(Vec::new());
                }
                Outcome::PassedThrough
            }
            None => Outcome::Unmatched,
        };
        let allowed = self.decision.as_ref().is_some_and(|d| d.verdict == Verdict::Allow);
        let caller = self.decision.as_ref().and_then(|d| d.caller).and_then(|c| guard.access.callers.get(c));
        if let Some(sealed) = document_reference {
            return self.start_download(host, &sealed);
        }
        if operation.is_some_and(|(_, op)| op.id == crate::documents::GET_REPORT_DOCUMENT) {
            self.base = crate::documents::proxy_base(text(host.request_header(":scheme")).as_deref(), text(host.request_header(":authority")).as_deref());
        } else if allowed && crate::documents::lists_report_types(&self.method, &self.path) {
            // Read as it streams for the report types it names: identity bodies only.
            host.set_request_header("accept-encoding", None);
            self.report_listing = Some(Vec::new());
        }
        if reveal_endpoint {
            // Allowed by reveal_decision: answered by the filter once the body is whole. The
            // endpoint answers with plaintext itself, so dry-run never relaxes a denial here.
            if let Some(Verdict::Deny(reason)) = self.decision.as_ref().map(|d| d.verdict).filter(|_| !allowed) {
                return self.deny(host, reason);
            }
            self.outcome = Outcome::Revealed;
            self.reveal = caller.and_then(|c| c.reveal_classes(None)).copied();
            if end_of_stream {
                return self.deny(host, DenyReason::InvalidRevealRequest);
            }
            self.request = RequestState::Revealing;
            return Flow::Pause;
        }
        // Detokenization toward this operation, for a caller allowed to reveal there. A caller
        // without a grant here may send no token where data is expected (the path, the query, the
        // body of an operation that carries PII): it would reach Amazon instead of the data.
        // A path outside the catalog (passThroughPaths) is no operation: no grant reaches it (the
        // reveal endpoint's is for the endpoint alone).
        let grant = if allowed { self.operation.and_then(|op| caller.and_then(|c| c.reveal_classes(Some(op)))).copied() } else { None };
        // Envoy picked the cluster by its own route match: the request goes nowhere else than the
        // destination it was decided for (src/upstreams.rs).
        if self.wrong_destination(host, grant.is_some()) {
            return self.deny(host, DenyReason::DestinationMismatch);
        }
        if needs_body_check && enforcing {
            if end_of_stream {
                return self.deny(host, DenyReason::InvalidRdtRequest);
            }
            self.request = RequestState::CheckingRdt;
            return Flow::Pause;
        }
        // Tokens are plain ASCII (base64url and dots) and never need percent-encoding: one sent
        // encoded (`%73pgt1.…`) would pass by the token checks below and reach the upstream as a
        // token where it expects data. Refused like a token that does not open.
        if allowed && has_encoded_token(&self.path) {
            return self.refuse_token(host, &crate::tokens::TokenError::Forged);
        }
        let body_carries_pii = operation.is_some_and(|(_, op)| op.has_request_pii);
        let path_has_token = self.path.contains(crate::tokens::TOKEN_PREFIX);
        self.reveal = match grant {
            Some(classes) => Some(classes),
            None if allowed && (body_carries_pii || path_has_token) => Some(PerClass::splat(false)),
            None => None,
        };
        let Some(classes) = self.reveal else { return Flow::Continue };
        match detokenize_target(&guard.tokens, &classes, &self.path, host.now_ms(), &mut self.revealed) {
            Ok(Some(target)) => {
                // A plaintext stays within its segment: a dot segment, an empty one, or an encoded
                // slash or backslash (servers that decode before routing resolve them) would reach
                // another operation than the one decided, granted and audited.
                if crate::uri::parse(&target).is_err() || guard.catalog.route_index(&self.method, &target) != self.operation {
                    self.revealed = Revealed::default();
                    return self.deny(host, DenyReason::InvalidPath);
                }
                host.set_request_header(":path", Some(&target));
                // Envoy routes the changed path again, but xds.cluster_name still names the cluster
                // of the first route (tests/upstreams.rs a_path_changed_by_detokenization_…): this
                // re-read catches nothing; see docs/POLICY.md "Routes the filter cannot see".
                if self.wrong_destination(host, true) {
                    self.revealed = Revealed::default();
                    return self.deny(host, DenyReason::DestinationMismatch);
                }
            }
            Ok(None) => {}
            Err(e) => return self.refuse_detokenize(host, e),
        }
        if end_of_stream {
            self.count_revealed(host);
            return Flow::Continue;
        }
        self.request = RequestState::Detokenizing;
        Flow::Pause
    }

    pub fn on_request_body(&mut self, host: &mut dyn HttpHost, body_size: usize, end_of_stream: bool) -> Flow {
        match self.request {
            RequestState::Detokenizing | RequestState::Revealing => {
                self.request_held = body_size;
                if body_size > MAX_DETOKENIZE_BODY {
                    let reason = if self.request == RequestState::Revealing { DenyReason::InvalidRevealRequest } else { DenyReason::UnreadableRequestBody };
                    return self.deny(host, reason);
                }
                if !end_of_stream {
                    return Flow::Pause;
                }
                self.finish_held_request(host)
            }
            RequestState::CheckingRdt => {
                self.request_held = body_size;
                if body_size > MAX_RDT_BODY {
                    return self.deny(host, DenyReason::InvalidRdtRequest);
                }
                if !end_of_stream {
                    return Flow::Pause;
                }
                self.finish_rdt(host)
            }
            _ if self.reply != Reply::None => Flow::Pause,
            _ => {
                self.scan_streaming_chunk(host, body_size, false);
                Flow::Continue
            }
        }
    }

    /// Trailers end the request body: a held body is checked here, never passed on unchecked.
    pub fn on_request_trailers(&mut self, host: &mut dyn HttpHost) -> Flow {
        match self.request {
            RequestState::CheckingRdt => self.finish_rdt(host),
            RequestState::Detokenizing | RequestState::Revealing => self.finish_held_request(host),
            _ if self.reply != Reply::None => Flow::Pause,
            _ => Flow::Continue,
        }
    }

    pub fn on_response_headers(&mut self, host: &mut dyn HttpHost, end_of_stream: bool) -> Flow {
        match self.reply {
            // Our own local reply, flowing back through the filter.
            Reply::InRequest => return Flow::Continue,
            Reply::InResponse => return Flow::Pause,
            Reply::None => {}
        }
        self.response_started = true;
        // Envoy's own answer (route timeout, connection failure, upstream protocol error) is no
        // SP-API response: it carries no upstream byte, and auditing it as one that failed
        // closed would feed the fail-closed alarm with the upstream's outages.
        if let Some(details) = text(host.property(&["response", "code_details"])).filter(|d| !d.is_empty() && d != "via_upstream") {
            self.outcome = Outcome::UpstreamFailed;
            self.reason = Some(if details.contains("timeout") { UPSTREAM_TIMEOUT } else { UPSTREAM_UNAVAILABLE });
            self.response = ResponseState::Streaming;
            return Flow::Continue;
        }
        self.upstream_status = text(host.response_header(":status")).and_then(|s| s.trim().parse().ok());
        if self.download.is_some() {
            self.response = ResponseState::Document;
            let (status, now) = (self.upstream_status, host.now_ms());
            let step = self.download.as_mut().map_or(Step::Continue, |d| d.on_headers(host, status, end_of_stream, now));
            return self.document_step(host, step);
        }
        if self.outcome != Outcome::Protected {
            self.response = ResponseState::Streaming;
            if self.drift_copy.is_some() {
                let readable = check_response_headers(
                    text(host.response_header("content-type")).as_deref(),
                    text(host.response_header("content-encoding")).as_deref(),
                    text(host.response_header("content-length")).as_deref(),
                    self.guard.policy.max_body_bytes,
                );
                if readable.is_err() || end_of_stream {
                    self.drift_copy = None;
                }
            }
            return Flow::Continue;
        }
        if end_of_stream {
            // No body follows (204, HEAD): nothing to protect.
            self.response = ResponseState::Released;
            return Flow::Continue;
        }
        let checked = check_response_headers(
            text(host.response_header("content-type")).as_deref(),
            text(host.response_header("content-encoding")).as_deref(),
            text(host.response_header("content-length")).as_deref(),
            self.guard.policy.max_body_bytes,
        );
        if let Err(reason) = checked {
            return self.fail_closed(host, reason);
        }
        // Headers are held until the body is rewritten, so its length can be set.
        self.response = ResponseState::Protecting;
        Flow::Pause
    }

    pub fn on_response_body(&mut self, host: &mut dyn HttpHost, body_size: usize, end_of_stream: bool) -> Flow {
        match (self.reply, self.response) {
            (Reply::InRequest, _) => Flow::Continue,
            (Reply::InResponse, _) => Flow::Pause,
            (Reply::None, ResponseState::Protecting) => {
                self.response_held = body_size;
                self.bytes_in = body_size;
                if body_size > self.guard.policy.max_body_bytes {
                    return self.fail_closed(host, FailReason::BodyTooLarge);
                }
                if !end_of_stream {
                    return Flow::Pause;
                }
                self.finish_response(host)
            }
            (Reply::None, ResponseState::Streaming) => {
                // Streaming pass-through: counted, and scanned for canaries and drift if the
                // policy asks.
                self.bytes_in += body_size;
                self.bytes_out += body_size;
                self.scan_streaming_chunk(host, body_size, true);
                self.read_report_listing(host, body_size, end_of_stream);
                if end_of_stream {
                    self.finish_drift_scan(host);
                }
                Flow::Continue
            }
            (Reply::None, ResponseState::Document) => {
                let step = self.download.as_mut().map_or(Step::Continue, |d| d.on_body(host, body_size, end_of_stream));
                let hits = self.download.as_mut().map(|d| d.take_canary_hits()).unwrap_or_default();
                self.canaries_seen(host, hits.iter().map(String::as_str).collect());
                self.document_step(host, step)
            }
            // A body after a response that needed none (HEAD), or before any headers: nothing
            // the filter may release unseen.
            (Reply::None, ResponseState::Released) => Flow::Continue,
            (Reply::None, ResponseState::Waiting) => self.fail_closed(host, FailReason::InvalidJson),
        }
    }

    /// Trailers end the response body: a held body is rewritten here, never released raw.
    pub fn on_response_trailers(&mut self, host: &mut dyn HttpHost) -> Flow {
        match (self.reply, self.response) {
            (Reply::InRequest, _) => Flow::Continue,
            (Reply::InResponse, _) => Flow::Pause,
            (Reply::None, ResponseState::Protecting) => self.finish_response(host),
            (Reply::None, ResponseState::Streaming) => {
                self.read_report_listing(host, 0, true);
                self.finish_drift_scan(host);
                Flow::Continue
            }
            (Reply::None, ResponseState::Document) => {
                let step = self.download.as_mut().map_or(Step::Continue, |d| d.on_trailers());
                self.document_step(host, step)
            }
            (Reply::None, _) => Flow::Continue,
        }
    }

    /// The end of the exchange, however it ended: one audit event and the metrics.
    pub fn on_log(&mut self, host: &mut dyn HttpHost) {
        if self.decision.is_none() {
            // The request never reached this filter: a filter in front of it (authentication,
            // rate limit…) answered it. Still one audit event, saying so.
            self.decision_kind = DecisionKind::Deny;
            self.outcome = Outcome::Denied;
            self.reason = Some(REFUSED_BEFORE);
            self.request_id = text(host.property(&["request", "id"])).unwrap_or_default();
        } else if self.reply == Reply::None && matches!(self.request, RequestState::CheckingRdt | RequestState::Detokenizing | RequestState::Revealing) {
            // Reset before the RDT request was whole: it was never forwarded.
            self.outcome = Outcome::Aborted;
            self.reason = Some(REQUEST_INCOMPLETE);
        } else if self.reply == Reply::None && self.response == ResponseState::Protecting {
            // Reset before the response was whole: nothing of it was released.
            self.outcome = Outcome::Aborted;
            self.reason = Some(RESPONSE_INCOMPLETE);
        } else if self.reply == Reply::None && self.download.as_ref().is_some_and(|d| d.is_open()) && self.outcome == Outcome::Protected {
            // The client or the document host went away mid-document.
            self.outcome = Outcome::Aborted;
            self.reason = Some(RESPONSE_INCOMPLETE);
        }
        if let Some(download) = self.download.as_ref() {
            self.counts = download.counts();
            // Columns and elements no catalog entry names, read by the drift detectors.
            self.drift = download.drift();
            let (bytes_in, bytes_out) = download.bytes();
            (self.bytes_in, self.bytes_out) = (bytes_in as usize, bytes_out as usize);
            self.report_drift(host);
            // A document's values count toward the caller's PII volume like a response's.
            self.count_delivered_pii(host);
        }
        self.counts.add_revealed(&self.revealed);
        let started_ms = int(host.property(&["request", "time"])).map(|ns| (ns / 1_000_000) as u64);
        let now = host.now_ms();
        let operation = self.operation.and_then(|i| self.guard.catalog.operations.get(i));
        let identity = self.decision.as_ref().and_then(|d| d.identity.as_ref()).map(|(s, v)| format!("{}:{v}", s.as_str()));
        let decision_id = self.ids.next();
        let key_ids = self.key_ids();
        if self.request_id.is_empty() {
            // Envoy refused the request before assigning it an id: the decision id names it.
            self.request_id = decision_id.clone();
        }
        let event = AuditEvent {
            event: "request",
            schema: crate::audit::SCHEMA_VERSION,
            time: crate::audit::rfc3339_ms(started_ms.unwrap_or(now)),
            request_id: &self.request_id,
            decision_id: &decision_id,
            identity,
            known_caller: self.caller().is_some(),
            source_ip: self.decision.as_ref().and_then(|d| d.client_ip).map(|ip| ip.to_string()),
            tls_version: self.tls_version.as_deref(),
            operation: operation.map(|o| o.id.as_str()),
            api: operation.map(|o| o.api.as_str()),
            api_version: operation.map(|o| o.version.as_str()),
            upstream: operation.and_then(|o| o.upstream).and_then(|u| self.guard.upstreams.list.get(u)).map(|u| u.name.as_str()),
            method: &self.method,
            // A download's path is its reference: never printed.
            path: if self.download.is_some() { DOCUMENT_AUDIT_PATH.to_string() } else { redacted_path_with(&self.path, operation, self.guard.access.path_words()) },
            decision: self.decision_kind,
            outcome: self.outcome,
            reason: self.reason,
            status: int(host.property(&["response", "code"])).map(|c| c as u32),
            upstream_status: self.upstream_status,
            pii: AuditEvent::pii_from(&self.counts),
            key_id: key_ids.as_deref(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_ms: started_ms.map(|s| now.saturating_sub(s)),
            security_events: self.security_events.clone(),
            canaries: self.canaries.clone(),
            drift: AuditEvent::drift_from(&self.drift),
            document: self.download.as_ref().map(|d| d.audit()),
        };
        // Written to stdout by the access log (%FILTER_STATE(wasm.spapi_guard.audit:PLAIN)%).
        host.set_audit(&event.to_json());
        // Where a request was handled (its worker thread is in the log line's prefix).
        host.log(Level::Debug, &format!("spapi-guard: request {} decided {}", self.request_id, self.decision_kind.as_str()));
        self.count_metrics(host);
    }

    // -----------------------------------------------------------------------------------------
    // Steps

    /// Checks the whole RDT request body: forwarded only if every resource is allowed.
    fn finish_rdt(&mut self, host: &mut dyn HttpHost) -> Flow {
        let body = host.request_body(MAX_RDT_BODY + 1);
        if body.len() > MAX_RDT_BODY {
            return self.deny(host, DenyReason::InvalidRdtRequest);
        }
        let guard = Rc::clone(&self.guard);
        if self.canaries_seen(host, guard.canaries.find_in_json(&body)) {
            return self.deny(host, DenyReason::CanaryBlocked);
        }
        let Some(caller) = self.decision.as_ref().and_then(|d| d.caller) else {
            return self.deny(host, DenyReason::UnknownCaller);
        };
        match guard.access.check_rdt(caller, &guard.catalog, &body) {
            Ok(()) => {
                self.request = RequestState::Released;
                Flow::Continue
            }
            Err(reason) => self.deny(host, reason),
        }
    }

    /// A held request body is whole (end of stream or trailers): detokenized and forwarded, or
    /// answered by the reveal endpoint.
    fn finish_held_request(&mut self, host: &mut dyn HttpHost) -> Flow {
        let body = host.request_body(MAX_DETOKENIZE_BODY + 1);
        let Some(classes) = self.reveal else { return self.deny(host, DenyReason::DetokenizeNotAllowed) };
        if self.request == RequestState::Revealing {
            return self.answer_reveal(host, &classes, &body);
        }
        if body.len() > MAX_DETOKENIZE_BODY {
            return self.deny(host, DenyReason::UnreadableRequestBody);
        }
        let guard = Rc::clone(&self.guard);
        if self.canaries_seen(host, guard.canaries.find_in_json(&body)) {
            return self.deny(host, DenyReason::CanaryBlocked);
        }
        match detokenize_json(&guard.tokens, &classes, &body, host.now_ms(), &mut self.revealed) {
            Ok(Some(new_body)) => {
                host.set_request_body(body.len(), &new_body);
                host.set_request_header("content-length", Some(&new_body.len().to_string()));
            }
            Ok(None) => {}
            Err(e) => return self.refuse_detokenize(host, e),
        }
        self.request = RequestState::Released;
        self.count_revealed(host);
        Flow::Continue
    }

    /// The reveal endpoint: `{"tokens": [..]}` → `{"values": [..]}`, every token of a class the
    /// caller may reveal, or nothing at all.
    fn answer_reveal(&mut self, host: &mut dyn HttpHost, classes: &PerClass<bool>, body: &[u8]) -> Flow {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RevealRequest {
            tokens: Vec<String>,
        }
        let request: RevealRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(_) => return self.deny(host, DenyReason::InvalidRevealRequest),
        };
        if request.tokens.is_empty() || request.tokens.len() > MAX_REVEAL_TOKENS {
            return self.deny(host, DenyReason::InvalidRevealRequest);
        }
        let guard = Rc::clone(&self.guard);
        let mut values = Vec::with_capacity(body.len());
        values.extend_from_slice(b"{\"values\":[");
        let mut revealed = Revealed::default();
        for (i, token) in request.tokens.iter().enumerate() {
            let opened = match guard.tokens.open(token, host.now_ms()) {
                Ok(opened) => opened,
                Err(error) => return self.refuse_token(host, &error),
            };
            if !classes[opened.class] {
                return self.deny(host, DenyReason::DetokenizeNotAllowed);
            }
            revealed.counts[opened.class] = revealed.counts[opened.class].saturating_add(1);
            if i > 0 {
                values.push(b',');
            }
            match opened.kind {
                ValueKind::Text => crate::json_rewrite::write_json_string(&String::from_utf8_lossy(&opened.plaintext), &mut values),
                ValueKind::RawJson => values.extend_from_slice(&opened.plaintext),
            }
        }
        values.extend_from_slice(b"]}");
        self.revealed = revealed;
        self.count_revealed(host);
        self.outcome = Outcome::Revealed;
        self.request = RequestState::Released;
        self.bytes_out = values.len();
        self.reply = Reply::InRequest;
        let headers = [("content-type", "application/json"), ("cache-control", "no-store"), ("x-spapi-guard", "revealed")];
        host.send_reply(200, &headers, &values);
        Flow::Pause
    }

    /// Refuses a request whose tokens cannot be revealed where it goes: nothing is forwarded.
    fn refuse_detokenize(&mut self, host: &mut dyn HttpHost, error: DetokenizeError) -> Flow {
        let reason = match error {
            DetokenizeError::NotAllowed(_) => DenyReason::DetokenizeNotAllowed,
            DetokenizeError::InvalidToken => return self.refuse_token(host, &crate::tokens::TokenError::Forged),
            DetokenizeError::KeyExpired(index) => return self.refuse_token(host, &crate::key_status::expired(&self.guard, index)),
            DetokenizeError::NotJson => DenyReason::UnreadableRequestBody,
        };
        self.revealed = Revealed::default();
        self.deny(host, reason)
    }

    /// Refuses a request with a token that does not open: `token_expired` for a key past its
    /// `notAfter` (with its event), `invalid_token` otherwise; counted either way.
    fn refuse_token(&mut self, host: &mut dyn HttpHost, error: &crate::tokens::TokenError) -> Flow {
        crate::key_status::token_refused(host, error, Some(&self.request_id));
        self.revealed = Revealed::default();
        if matches!(error, crate::tokens::TokenError::Expired { .. }) {
            self.raise("token_expired");
            self.deny(host, DenyReason::TokenExpired)
        } else {
            self.deny(host, DenyReason::InvalidToken)
        }
    }

    /// Counts revealed values toward the caller's PII volume (the lockout's anomaly trigger).
    fn count_revealed(&mut self, host: &mut dyn HttpHost) {
        let n = u64::from(self.revealed.total());
        let Some(caller) = self.caller() else { return };
        let (id, limit, rules) = (caller.id.clone(), caller.max_pii_per_window, self.guard.access.lockout);
        if n == 0 || limit.is_none() {
            return;
        }
        let trigger = host.update_lock(&id, &|s, now| s.record_pii(now, n, limit, &rules));
        self.lockout_started(host, &id, trigger);
    }

    /// Rewrites the whole response body and releases it, or answers with an error instead.
    fn finish_response(&mut self, host: &mut dyn HttpHost) -> Flow {
        let guard = Rc::clone(&self.guard);
        let body = host.response_body(guard.policy.max_body_bytes + 1);
        self.bytes_in = body.len();
        if body.len() > guard.policy.max_body_bytes {
            return self.fail_closed(host, FailReason::BodyTooLarge);
        }
        if self.canaries_seen(host, guard.canaries.find(&body)) {
            return self.deny(host, DenyReason::CanaryBlocked);
        }
        let Some(op) = self.operation.and_then(|i| guard.catalog.operations.get(i)) else {
            return self.fail_closed(host, FailReason::InvalidJson);
        };
        if let Some(flow) = self.report_document_pointer(host, &body) {
            return flow;
        }
        if body.is_empty() {
            // Headers promised a body and none came (or the upstream sent an empty one): there
            // is nothing to protect.
            self.response = ResponseState::Released;
            host.set_response_header("content-length", Some("0"));
            return Flow::Continue;
        }
        match guard.protect_response_at(op, &body, &self.actions, host.now_ms()) {
            Ok(protected) => {
                self.counts = protected.counts;
                self.drift = protected.drift;
                self.report_drift(host);
                self.keys = Some(protected.keys);
                let length = match protected.body {
                    Some(new_body) => {
                        host.set_response_body(body.len(), &new_body);
                        new_body.len()
                    }
                    None => body.len(),
                };
                self.response = ResponseState::Released;
                self.bytes_out = length;
                host.set_response_header("content-length", Some(&length.to_string()));
                self.count_delivered_pii(host);
                Flow::Continue
            }
            Err(reason) => self.fail_closed(host, reason),
        }
    }

    /// Whether Envoy would send this request to another cluster than the destination the filter
    /// decided it for: the operation's upstream, or the SP-API (an SP-API cluster when `revealing`).
    fn wrong_destination(&self, host: &dyn HttpHost, revealing: bool) -> bool {
        let upstream = self.operation.and_then(|i| self.guard.catalog.operations.get(i)).and_then(|op| op.upstream);
        let cluster = text(host.property(&["xds", "cluster_name"]));
        self.guard.upstreams.check_destination(upstream, cluster.as_deref(), revealing).is_err()
    }

    /// Counts the PII the caller received toward its per-window limit.
    fn count_delivered_pii(&mut self, host: &mut dyn HttpHost) {
        let Some(caller) = self.caller() else { return };
        let (id, limit, rules) = (caller.id.clone(), caller.max_pii_per_window, self.guard.access.lockout);
        if limit.is_none() {
            return;
        }
        let delivered = u64::from(self.counts.delivered());
        let trigger = host.update_lock(&id, &|s, now| s.record_pii(now, delivered, limit, &rules));
        self.lockout_started(host, &id, trigger);
    }

    /// Answers the client with an SP-API-style error instead of the upstream response.
    fn fail_closed(&mut self, host: &mut dyn HttpHost, reason: FailReason) -> Flow {
        self.outcome = Outcome::FailClosed;
        self.decision_kind = DecisionKind::FailClosed;
        self.reason = Some(reason.code());
        self.raise("fail_closed");
        let mut event = SecurityEvent::new("fail_closed", "warning", host.now_ms());
        event.request_id = Some(&self.request_id);
        event.reason = Some(reason.code());
        security(host, &event);
        self.reply(host, reason.status(), reason.code(), reason.error_body(), None)
    }

    /// Answers a denied request locally and counts the denial toward the caller's lockout.
    fn deny(&mut self, host: &mut dyn HttpHost, reason: DenyReason) -> Flow {
        self.outcome = Outcome::Denied;
        self.decision_kind = if reason == DenyReason::LockedOut { DecisionKind::Lockout } else { DecisionKind::Deny };
        self.reason = Some(reason.code());
        let mut retry_after = None;
        if reason == DenyReason::LockedOut {
            let now = host.now_ms();
            retry_after = self.caller().map(|c| host.lock_state(&c.id).remaining_ms(now).div_ceil(1000).max(1).to_string());
        } else if let Some(caller) = self.caller() {
            let rules = self.guard.access.lockout;
            let id = caller.id.clone();
            let trigger = host.update_lock(&id, &|state, now| state.record_denial(now, &rules));
            self.lockout_started(host, &id, trigger);
        }
        self.reply(host, reason.status(), reason.code(), reason.error_body(), retry_after.as_deref())
    }

    /// Answers the client locally with an SP-API-style error; no upstream byte follows.
    fn reply(&mut self, host: &mut dyn HttpHost, status: u32, code: &str, body: String, retry_after: Option<&str>) -> Flow {
        self.bytes_out = body.len();
        self.reply = if self.response_started { Reply::InResponse } else { Reply::InRequest };
        let mut headers = vec![("content-type", "application/json"), ("x-spapi-guard", code)];
        if let Some(seconds) = retry_after {
            headers.push(("retry-after", seconds));
        }
        host.send_reply(status, &headers, body.as_bytes());
        Flow::Pause
    }

    /// Scans a body chunk that streams on: a canary in it is reported, not blocked; a response
    /// chunk is kept for the drift scan when the policy scans PII-free operations.
    fn scan_streaming_chunk(&mut self, host: &mut dyn HttpHost, body_size: usize, response: bool) {
        let copying = response && self.drift_copy.is_some();
        if self.guard.canaries.is_empty() && !copying {
            return;
        }
        let chunk = if response { host.response_body(body_size) } else { host.request_body(body_size) };
        if copying {
            let limit = self.guard.policy.max_body_bytes;
            if let Some(copy) = self.drift_copy.as_mut() {
                if copy.len() + chunk.len() > limit {
                    // Too large to scan whole: passed on unscanned, as any PII-free body.
                    self.drift_copy = None;
                } else {
                    copy.extend_from_slice(&chunk);
                }
            }
            if self.guard.canaries.is_empty() {
                return;
            }
        }
        let guard = Rc::clone(&self.guard);
        let scanner = if response { &mut self.response_scanner } else { &mut self.request_scanner };
        let hits = scanner.feed(&guard.canaries, &chunk);
        self.canaries_seen(host, hits);
    }

    /// The end of a PII-free response that streamed: the drift detectors read the copy (report
    /// only: its bytes are gone).
    fn finish_drift_scan(&mut self, host: &mut dyn HttpHost) {
        let Some(copy) = self.drift_copy.take() else { return };
        let guard = Rc::clone(&self.guard);
        let Some(op) = self.operation.and_then(|i| guard.catalog.operations.get(i)) else { return };
        if copy.is_empty() {
            return;
        }
        if let Some(found) = guard.scan_response(op, &copy) {
            self.drift = found;
            self.report_drift(host);
        }
    }

    /// One `schema_drift` security event per distinct finding (operation, path template, what
    /// found it, what was done), never a value.
    fn report_drift(&mut self, host: &dyn HttpHost) {
        if self.drift.is_empty() {
            return;
        }
        let operation =
            self.operation.and_then(|i| self.guard.catalog.operations.get(i)).map(|o| o.id.clone()).or_else(|| self.download.as_ref().map(|_| DOCUMENTS_OPERATION.to_string()));
        let caller = self.caller().map(|c| c.id.clone());
        for finding in self.drift.findings() {
            let severity = if finding.kind == DriftKind::ZeroMatch || finding.action == DriftAction::Reported { "high" } else { "warning" };
            let mut event = SecurityEvent::new("schema_drift", severity, host.now_ms());
            event.request_id = Some(&self.request_id);
            event.caller = caller.as_deref();
            event.operation = operation.as_deref();
            event.path = Some(&finding.path);
            event.reason = Some(finding.kind.as_str());
            event.detail = Some(finding.action.as_str());
            security(host, &event);
        }
        self.raise("schema_drift");
    }

    /// Records canaries seen; returns true if the policy blocks them.
    fn canaries_seen(&mut self, host: &dyn HttpHost, ids: Vec<&str>) -> bool {
        if ids.is_empty() {
            return false;
        }
        let caller = self.caller().map(|c| c.id.clone());
        for id in ids {
            if self.canaries.iter().any(|c| c == id) {
                continue;
            }
            let mut event = SecurityEvent::new("canary_hit", "critical", host.now_ms());
            event.request_id = Some(&self.request_id);
            event.caller = caller.as_deref();
            event.detail = Some(id);
            security(host, &event);
            self.canaries.push(id.to_string());
        }
        self.raise("canary_hit");
        self.guard.canaries.block
    }

    fn lockout_started(&mut self, host: &dyn HttpHost, caller_id: &str, trigger: Trigger) {
        if trigger == Trigger::None {
            return;
        }
        host.log(Level::Warn, &format!("spapi-guard: lockout started: caller {caller_id} ({})", trigger.as_str()));
        let mut event = SecurityEvent::new("lockout_started", "high", host.now_ms());
        event.caller = Some(caller_id);
        event.reason = Some(trigger.as_str());
        security(host, &event);
        host.count("spapi_guard_lockouts_total", &[("trigger", trigger.as_str())], 1);
        self.raise("lockout_started");
    }

    fn raise(&mut self, event: &'static str) {
        if !self.security_events.contains(&event) {
            self.security_events.push(event);
        }
    }

    fn caller(&self) -> Option<&Caller> {
        let index = self.decision.as_ref()?.caller?;
        self.guard.access.callers.get(index)
    }

    /// The ids of the keys that made this response's tokens and pseudonyms, comma-separated.
    fn key_ids(&self) -> Option<String> {
        let keys = self.keys?;
        let mut ids: Vec<&str> = Vec::new();
        for class in crate::pii::PiiClass::ALL {
            let used = self.counts.get(class, crate::policy::Action::Tokenize(crate::tokens::Mode::Deterministic)) + self.counts.get(class, crate::policy::Action::Hash) > 0;
            if let Some(index) = keys.get(class).filter(|_| used) {
                let id = self.guard.tokens.key_id(index);
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        (!ids.is_empty()).then(|| ids.join(","))
    }

    /// Counts the request in the metrics (once, from `on_log`).
    fn count_metrics(&self, host: &dyn HttpHost) {
        let operation = self.operation.and_then(|i| self.guard.catalog.operations.get(i)).map_or("none", |o| o.id.as_str());
        let decision = self.decision_kind.as_str();
        host.count("spapi_guard_requests_total", &[("operation", operation), ("decision", decision)], 1);
        let caller = match (self.caller(), self.decision.as_ref().and_then(|d| d.identity.as_ref())) {
            (Some(c), _) => c.id.as_str(),
            (None, Some(_)) => "unknown",
            (None, None) => "none",
        };
        host.count("spapi_guard_caller_requests_total", &[("caller", caller)], 1);
        let denied = matches!(self.decision_kind, DecisionKind::Deny | DecisionKind::DryRunDeny | DecisionKind::Lockout);
        if denied {
            host.count("spapi_guard_denials_total", &[("reason", self.reason.unwrap_or("unknown"))], 1);
            host.count("spapi_guard_caller_denials_total", &[("caller", caller)], 1);
        }
        if self.decision_kind == DecisionKind::FailClosed {
            host.count("spapi_guard_fail_closed_total", &[("reason", self.reason.unwrap_or("unknown"))], 1);
        }
        if self.outcome == Outcome::Aborted {
            host.count("spapi_guard_aborted_total", &[("reason", self.reason.unwrap_or("unknown"))], 1);
        }
        for (class, action, n) in self.counts.entries() {
            host.count("spapi_guard_pii_fields_total", &[("class", class.as_str()), ("action", action)], u64::from(n));
        }
        if let Some(keys) = self.keys {
            crate::key_status::count_tokens(host, &self.guard, &keys, &self.actions, &self.counts);
        }
        host.count("spapi_guard_caller_pii_fields_total", &[("caller", caller)], u64::from(self.counts.delivered()));
        for canary in &self.canaries {
            host.count("spapi_guard_canary_hits_total", &[("canary", canary)], 1);
        }
        self.count_drift(host, if self.download.is_some() { DOCUMENTS_OPERATION } else { operation });
        if let Some(document) = self.download.as_ref().map(|d| d.audit()) {
            // Label values stay bounded: report types of the built-in report catalog, else `other`.
            let catalog = crate::report::ReportCatalog::builtin().ok();
            let report_type = match document.report_type.as_deref() {
                None => "unknown",
                Some(t) if catalog.as_ref().is_some_and(|c| c.report(t).is_some()) => t,
                Some(_) => "other",
            };
            host.count("spapi_guard_documents_total", &[("report_type", report_type), ("format", document.format), ("result", document.result)], 1);
            host.count("spapi_guard_document_rows_total", &[("report_type", report_type)], document.rows);
        }
        host.count("spapi_guard_body_bytes_total", &[("direction", "upstream")], self.bytes_in as u64);
        host.count("spapi_guard_body_bytes_total", &[("direction", "downstream")], self.bytes_out as u64);
    }
}

impl Exchange {
    /// `spapi_guard_schema_drift_total{operation, kind, action, path}`: per distinct finding, and
    /// what exceeded [`crate::drift::MAX_FINDINGS`] under `path="other"` (as do paths past the VM's
    /// cap on path labels, [`crate::guard::MAX_DRIFT_LABELS`]).
    fn count_drift(&self, host: &dyn HttpHost, operation: &str) {
        let mut listed: Vec<(DriftKind, DriftAction, u32)> = Vec::new();
        for f in self.drift.findings() {
            let path = self.guard.drift_label(operation, &f.path);
            host.count(
                "spapi_guard_schema_drift_total",
                &[("operation", operation), ("kind", f.kind.as_str()), ("action", f.action.as_str()), ("path", &path)],
                u64::from(f.count),
            );
            match listed.iter_mut().find(|(k, a, _)| *k == f.kind && *a == f.action) {
                Some(entry) => entry.2 += f.count,
                None => listed.push((f.kind, f.action, f.count)),
            }
        }
        for (kind, action, n) in self.drift.entries() {
            let shown = listed.iter().find(|(k, a, _)| *k == kind && *a == action).map_or(0, |e| e.2);
            if n > shown {
                host.count(
                    "spapi_guard_schema_drift_total",
                    &[("operation", operation), ("kind", kind.as_str()), ("action", action.as_str()), ("path", "other")],
                    u64::from(n - shown),
                );
            }
        }
    }
}

/// The access decision on the documents endpoint, which is no catalog operation: a known caller
/// (every check before the operation's passed) whose roles grant documents, GET only.
fn document_decision(guard: &Guard, decision: &mut Decision, method: &str) {
    if decision.verdict != Verdict::Deny(DenyReason::UnknownOperation) {
        return;
    }
    let Some(caller) = decision.caller.and_then(|c| guard.access.callers.get(c)) else { return };
    decision.verdict = match (&caller.documents, method) {
        (Some(_), "GET") => Verdict::Allow,
        _ => Verdict::Deny(DenyReason::OperationNotAllowed),
    };
}

/// The access decision on the reveal endpoint, which is no catalog operation: allowed for a known
/// caller with a reveal grant on it (every check before the operation's passed), POST only.
fn reveal_decision(guard: &Guard, decision: &mut Decision, method: &str) {
    if decision.verdict != Verdict::Deny(DenyReason::UnknownOperation) {
        return;
    }
    let Some(caller) = decision.caller.and_then(|c| guard.access.callers.get(c)) else { return };
    decision.verdict = match (caller.reveal_classes(None), method) {
        (Some(_), "POST") => Verdict::Allow,
        (Some(_), _) => Verdict::Deny(DenyReason::InvalidRevealRequest),
        (None, _) => Verdict::Deny(DenyReason::OperationNotAllowed),
    };
}

/// A header or property value as text (lossy: values are compared, never echoed raw).
fn text(value: Option<Vec<u8>>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// An integer property (Envoy encodes them as 8 little-endian bytes).
fn int(value: Option<Vec<u8>>) -> Option<i64> {
    value.and_then(|b| b.get(..8).and_then(|s| s.try_into().ok()).map(i64::from_le_bytes))
}

/// Report documents (src/documents.rs, src/download.rs): the pointer in `getReportDocument`
/// responses, the report types learned from `getReport(s)`, and the download's phases.
impl Exchange {
    /// A GET of the documents endpoint, allowed by `document_decision`: the reference is opened
    /// and checked, and the request re-routed to the document host; or refused, audited.
    fn start_download(&mut self, host: &mut dyn HttpHost, sealed: &str) -> Flow {
        let guard = Rc::clone(&self.guard);
        let Some(caller) = self.decision.as_ref().and_then(|d| d.caller).and_then(|c| guard.access.callers.get(c)) else {
            return self.deny(host, DenyReason::UnknownCaller);
        };
        let now = host.now_ms();
        match Download::start(&guard, host, caller, self.actions, sealed, now) {
            Ok(download) => {
                self.outcome = Outcome::Protected;
                self.keys = Some(guard.tokens.active_keys(now));
                self.download = Some(Box::new(download));
                Flow::Continue
            }
            Err(refusal) => {
                self.outcome = Outcome::Denied;
                self.decision_kind = DecisionKind::Deny;
                self.reason = Some(refusal.code());
                let mut event = SecurityEvent::new("document_refused", "warning", now);
                event.request_id = Some(&self.request_id);
                event.caller = Some(&caller.id);
                event.reason = Some(refusal.code());
                security(host, &event);
                self.raise("document_refused");
                let rules = guard.access.lockout;
                let trigger = host.update_lock(&caller.id, &|state, now| state.record_denial(now, &rules));
                self.lockout_started(host, &caller.id, trigger);
                self.reply(host, refusal.status(), refusal.code(), refusal.error_body(), None)
            }
        }
    }

    /// Carries out what the download decided: a 502 before any byte, a reset after.
    fn document_step(&mut self, host: &mut dyn HttpHost, step: Step) -> Flow {
        match step {
            Step::Continue => Flow::Continue,
            Step::Pause => Flow::Pause,
            Step::Fail(code) => {
                self.document_failed(host, code, "refused");
                self.reply(host, 502, code, crate::download::failure_body(code), None)
            }
            Step::Reset(code) => {
                self.document_failed(host, code, "reset");
                self.outcome = Outcome::Reset;
                host.reset_stream();
                Flow::Pause
            }
        }
    }

    fn document_failed(&mut self, host: &mut dyn HttpHost, code: &'static str, how: &'static str) {
        self.outcome = Outcome::FailClosed;
        self.decision_kind = DecisionKind::FailClosed;
        self.reason = Some(code);
        self.raise("fail_closed");
        let mut event = SecurityEvent::new("fail_closed", "warning", host.now_ms());
        event.request_id = Some(&self.request_id);
        event.reason = Some(code);
        event.detail = Some(how);
        security(host, &event);
    }

    /// `getReportDocument` for a caller whose roles grant documents: `url` becomes the proxy's
    /// pointer. `None`: not such a response (an error body, another operation): protected as any.
    fn report_document_pointer(&mut self, host: &mut dyn HttpHost, body: &[u8]) -> Option<Flow> {
        let guard = Rc::clone(&self.guard);
        let op = self.operation.and_then(|i| guard.catalog.operations.get(i))?;
        let caller = self.caller().filter(|c| c.documents.is_some() && op.id == crate::documents::GET_REPORT_DOCUMENT)?;
        let caller_id = caller.id.clone();
        let now = host.now_ms();
        let report_type = crate::documents::document_id_of(&self.path)
            .and_then(|id| host.shared_get(&crate::documents::report_type_key(&id)).and_then(|slot| crate::documents::decode_report_type(&slot, &id, now)));
        let (map, reference) = match crate::documents::read_pointer(body, &guard.documents, &caller_id, report_type, now) {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(refusal) => {
                let code = refusal.code();
                self.document_failed(host, code, "refused");
                return Some(self.reply(host, 502, code, crate::download::failure_body(code), None));
            }
        };
        let Some(base) = self.base.clone() else {
            // No plain host[:port] to point back at (Envoy requires one: a guard, not a path).
            self.document_failed(host, "invalid_authority", "refused");
            return Some(self.reply(host, 502, "invalid_authority", crate::download::failure_body("invalid_authority"), None));
        };
        let Some(sealed) = reference.seal(&guard.tokens, now) else {
            return Some(self.fail_closed(host, FailReason::NoActiveKey));
        };
        let pointer = crate::documents::write_pointer(map, &base, &sealed);
        host.set_response_body(body.len(), &pointer);
        host.set_response_header("content-length", Some(&pointer.len().to_string()));
        self.response = ResponseState::Released;
        self.bytes_out = pointer.len();
        Some(Flow::Continue)
    }

    /// Keeps a `getReport(s)` response as it streams (up to [`crate::documents::MAX_REPORT_LISTING`])
    /// and, at its end, remembers each document's report type in shared data.
    fn read_report_listing(&mut self, host: &mut dyn HttpHost, body_size: usize, end_of_stream: bool) {
        let Some(listing) = self.report_listing.as_mut() else { return };
        if body_size > 0 {
            let chunk = host.response_body(body_size);
            if listing.len() + chunk.len() > crate::documents::MAX_REPORT_LISTING {
                self.report_listing = None;
                return;
            }
            listing.extend_from_slice(&chunk);
        }
        if !end_of_stream || self.upstream_status != Some(200) {
            return;
        }
        let now = host.now_ms();
        for (id, report_type) in crate::documents::report_types_in(listing) {
            host.shared_set(&crate::documents::report_type_key(&id), &crate::documents::encode_report_type(&id, &report_type, now));
        }
        self.report_listing = None;
    }
}

/// Whether the request target holds a token only once percent-decoded (more token prefixes in
/// its decoded form than in its raw form). A target that does not decode was refused before.
fn has_encoded_token(target: &str) -> bool {
    let prefix = crate::tokens::TOKEN_PREFIX;
    if !target.contains('%') {
        return false;
    }
    crate::uri::decode(target, false).is_ok_and(|decoded| decoded.matches(prefix).count() > target.matches(prefix).count())
}
