//! The per-request context.
//!
//! 1. request headers — strip the trusted identity header (it goes no further), route to a catalog
//!    operation, decide access (denials answered locally: the upstream is never contacted), look
//!    for canaries in the path; for operations with response PII ask for an uncompressed body.
//! 2. request body — `createRestrictedDataToken`: buffered and checked resource by resource;
//!    others: scanned for canaries as they stream (when the policy lists canaries).
//! 3. response headers — check content type, encoding and declared length; hold the headers
//!    (needs `allow_on_headers_stop_iteration: true`) so the length can be set after the rewrite.
//! 4. response body — buffer to the end (refusing past `maxBodyBytes`), look for canaries, rewrite
//!    with the caller's access levels, set body and content-length; count delivered PII toward the
//!    caller's limit. Bodies that are not rewritten stream through (scanned for canaries if any).
//! 5. log — one audit event (filter state `wasm.spapi_guard.audit`, written by the access log),
//!    and the metrics of the request.
//!
//! Header values are read as bytes: the SDK's string getters panic on non-UTF-8 values, and a
//! panic takes the VM down.
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use std::rc::Rc;

use super::host::{count, lock_state, log, now_ms, security, update_lock};
use crate::access::{Caller, Decision, DenyReason, IdentitySource, RequestFacts, Verdict};
use crate::audit::{redacted_path, AuditEvent, DecisionIds, DecisionKind, Outcome, SecurityEvent};
use crate::canary::ChunkScanner;
use crate::fail_closed::{check_response_headers, FailReason};
use crate::guard::{FieldCounts, Guard};
use crate::lockout::Trigger;
use crate::policy::ClassActions;

/// Reason of a request answered by a filter in front of spapi-guard.
const REFUSED_BEFORE: &str = "refused_before_spapi_guard";

/// Largest `createRestrictedDataToken` request body read (50 resources fit easily).
const MAX_RDT_BODY: usize = 64 * 1024;

pub struct Stream {
    guard: Rc<Guard>,
    ids: Rc<DecisionIds>,
    method: String,
    path: String,
    operation: Option<usize>,
    decision: Option<Decision>,
    /// The decision as the audit log reports it (updated if the response fails closed or is blocked).
    decision_kind: DecisionKind,
    tls_version: Option<String>,
    /// What each PII class becomes in the response.
    actions: ClassActions,
    /// The request body is being buffered for the RDT check.
    checking_rdt: bool,
    /// The response body is being buffered for a rewrite.
    protecting: bool,
    outcome: Outcome,
    reason: Option<&'static str>,
    counts: FieldCounts,
    upstream_status: Option<u32>,
    bytes_in: usize,
    bytes_out: usize,
    security_events: Vec<&'static str>,
    canaries: Vec<String>,
    request_scanner: ChunkScanner,
    response_scanner: ChunkScanner,
}

impl Stream {
    pub fn new(guard: Rc<Guard>, ids: Rc<DecisionIds>) -> Self {
        let actions = *guard.policy.actions();
        Stream {
            guard,
            ids,
            method: String::new(),
            path: String::new(),
            operation: None,
            decision: None,
            decision_kind: DecisionKind::Allow,
            tls_version: None,
            actions,
            checking_rdt: false,
            protecting: false,
            outcome: Outcome::Unmatched,
            reason: None,
            counts: FieldCounts::default(),
            upstream_status: None,
            bytes_in: 0,
            bytes_out: 0,
            security_events: Vec::new(),
            canaries: Vec::new(),
            request_scanner: ChunkScanner::default(),
            response_scanner: ChunkScanner::default(),
        }
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        self.get_property(path.to_vec()).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn int_property(&self, path: &[&str]) -> Option<i64> {
        self.get_property(path.to_vec()).and_then(|b| b.get(..8).and_then(|s| s.try_into().ok()).map(i64::from_le_bytes))
    }

    fn request_header(&self, name: &str) -> Option<String> {
        self.get_http_request_header_bytes(name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.get_http_response_header_bytes(name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn caller(&self) -> Option<&Caller> {
        let index = self.decision.as_ref()?.caller?;
        self.guard.access.callers.get(index)
    }

    fn operation_id(&self) -> Option<&str> {
        self.operation.map(|i| self.guard.catalog.operations[i].id.as_str())
    }

    fn raise(&mut self, event: &'static str) {
        if !self.security_events.contains(&event) {
            self.security_events.push(event);
        }
    }

    /// Records canaries seen; returns true if the policy blocks them.
    fn canaries_seen(&mut self, ids: Vec<&str>) -> bool {
        if ids.is_empty() {
            return false;
        }
        let request_id = self.property(&["request", "id"]).unwrap_or_default();
        let caller = self.caller().map(|c| c.id.clone());
        for id in ids {
            if self.canaries.iter().any(|c| c == id) {
                continue;
            }
            let mut event = SecurityEvent::new("canary_hit", "critical", now_ms());
            event.request_id = Some(&request_id);
            event.caller = caller.as_deref();
            event.detail = Some(id);
            security(&event);
            self.canaries.push(id.to_string());
        }
        self.raise("canary_hit");
        self.guard.canaries.block
    }

    /// Answers the client with an SP-API-style error instead of the upstream response.
    fn fail_closed(&mut self, reason: FailReason) -> Action {
        self.protecting = false;
        self.outcome = Outcome::FailClosed;
        self.decision_kind = DecisionKind::FailClosed;
        self.reason = Some(reason.code());
        self.raise("fail_closed");
        let request_id = self.property(&["request", "id"]).unwrap_or_default();
        let mut event = SecurityEvent::new("fail_closed", "warning", now_ms());
        event.request_id = Some(&request_id);
        event.reason = Some(reason.code());
        security(&event);
        self.reply(reason.status(), reason.code(), reason.error_body(), None)
    }

    /// Answers the client locally with an SP-API-style error; no upstream byte follows.
    fn reply(&mut self, status: u32, code: &str, body: String, retry_after: Option<&str>) -> Action {
        self.bytes_out = body.len();
        let mut headers = vec![("content-type", "application/json"), ("x-spapi-guard", code)];
        if let Some(seconds) = retry_after {
            headers.push(("retry-after", seconds));
        }
        self.send_http_response(status, headers, Some(body.as_bytes()));
        Action::Pause
    }

    /// Scans a body chunk that streams on: a canary in it is reported, not blocked.
    fn scan_streaming_chunk(&mut self, body_size: usize, response: bool) {
        if self.guard.canaries.is_empty() {
            return;
        }
        let chunk = if response { self.get_http_response_body(0, body_size) } else { self.get_http_request_body(0, body_size) };
        let guard = Rc::clone(&self.guard);
        let scanner = if response { &mut self.response_scanner } else { &mut self.request_scanner };
        let hits = scanner.feed(&guard.canaries, &chunk.unwrap_or_default());
        self.canaries_seen(hits);
    }

    /// Answers a denied request locally and counts the denial toward the caller's lockout.
    fn deny(&mut self, reason: DenyReason) -> Action {
        self.outcome = Outcome::Denied;
        self.decision_kind = if reason == DenyReason::LockedOut { DecisionKind::Lockout } else { DecisionKind::Deny };
        self.reason = Some(reason.code());
        self.checking_rdt = false;
        self.protecting = false;
        let mut retry_after = None;
        if reason == DenyReason::LockedOut {
            retry_after = self.caller().map(|c| lock_state(&c.id).remaining_ms(now_ms()).div_ceil(1000).max(1).to_string());
        } else if let Some(caller) = self.caller() {
            let rules = self.guard.access.lockout;
            let id = caller.id.clone();
            let trigger = update_lock(&id, |state, now| state.record_denial(now, &rules));
            self.lockout_started(&id, trigger);
        }
        self.reply(reason.status(), reason.code(), reason.error_body(), retry_after.as_deref())
    }

    fn lockout_started(&mut self, caller_id: &str, trigger: Trigger) {
        if trigger == Trigger::None {
            return;
        }
        log(LogLevel::Warn, &format!("spapi-guard: lockout started: caller {caller_id} ({})", trigger.as_str()));
        let mut event = SecurityEvent::new("lockout_started", "high", now_ms());
        event.caller = Some(caller_id);
        event.reason = Some(trigger.as_str());
        security(&event);
        count("spapi_guard_lockouts_total", &[("trigger", trigger.as_str())], 1);
        self.raise("lockout_started");
    }

    /// Counts the request in the metrics (once, from `on_log`).
    fn count_metrics(&self) {
        let operation = self.operation_id().unwrap_or("none");
        let decision = self.decision_kind.as_str();
        count("spapi_guard_requests_total", &[("operation", operation), ("decision", decision)], 1);
        let caller = match (self.caller(), self.decision.as_ref().and_then(|d| d.identity.as_ref())) {
            (Some(c), _) => c.id.as_str(),
            (None, Some(_)) => "unknown",
            (None, None) => "none",
        };
        count("spapi_guard_caller_requests_total", &[("caller", caller)], 1);
        let denied = matches!(self.decision_kind, DecisionKind::Deny | DecisionKind::DryRunDeny | DecisionKind::Lockout);
        if denied {
            count("spapi_guard_denials_total", &[("reason", self.reason.unwrap_or("unknown"))], 1);
            count("spapi_guard_caller_denials_total", &[("caller", caller)], 1);
        }
        if self.decision_kind == DecisionKind::FailClosed {
            count("spapi_guard_fail_closed_total", &[("reason", self.reason.unwrap_or("unknown"))], 1);
        }
        for (class, action, n) in self.counts.entries() {
            count("spapi_guard_pii_fields_total", &[("class", class.as_str()), ("action", action)], u64::from(n));
        }
        count("spapi_guard_caller_pii_fields_total", &[("caller", caller)], u64::from(self.counts.delivered()));
        for canary in &self.canaries {
            count("spapi_guard_canary_hits_total", &[("canary", canary)], 1);
        }
        count("spapi_guard_body_bytes_total", &[("direction", "upstream")], self.bytes_in as u64);
        count("spapi_guard_body_bytes_total", &[("direction", "downstream")], self.bytes_out as u64);
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let guard = Rc::clone(&self.guard);
        let method = self.request_header(":method").unwrap_or_default();
        let path = self.request_header(":path").unwrap_or_default();
        // The trusted identity header is read here and never forwarded.
        let header_identity = guard.access.identity_header.as_deref().and_then(|h| {
            let value = self.request_header(h);
            if value.is_some() {
                self.set_http_request_header(h, None);
            }
            value
        });
        self.tls_version = self.property(&["connection", "tls_version"]);
        // Certificate properties are read in the policy's order, up to the first one present:
        // each read is a host call, and the first present source decides anyway.
        let (mut uri_san, mut dns_san, mut subject) = (None, None, None);
        let present = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        for source in guard.access.identity_sources() {
            let found = match source {
                _ if self.tls_version.is_none() && *source != IdentitySource::Header => false,
                IdentitySource::UriSan => {
                    uri_san = self.property(&["connection", "uri_san_peer_certificate"]);
                    present(&uri_san)
                }
                IdentitySource::DnsSan => {
                    dns_san = self.property(&["connection", "dns_san_peer_certificate"]);
                    present(&dns_san)
                }
                IdentitySource::Subject => {
                    subject = self.property(&["connection", "subject_peer_certificate"]);
                    present(&subject)
                }
                IdentitySource::Header => present(&header_identity),
            };
            if found {
                break;
            }
        }
        // Envoy's downstream remote address: the peer, or the client behind trusted proxies.
        let peer = self.property(&["source", "address"]);
        let facts = RequestFacts {
            tls_version: self.tls_version.as_deref(),
            uri_san: uri_san.as_deref(),
            dns_san: dns_san.as_deref(),
            subject: subject.as_deref(),
            header_identity: header_identity.as_deref(),
            peer_address: peer.as_deref(),
            path: &path,
        };
        self.method = method;
        self.operation = guard.catalog.route_index(&self.method, &path);
        let operation = self.operation.map(|i| (i, &guard.catalog.operations[i]));
        let decision = guard.access.decide(&facts, operation, &|caller| lock_state(&caller.id).is_locked(now_ms()));
        let caller_actions = decision.caller.map(|c| guard.access.callers[c].actions);
        let denial = decision.enforced_denial();
        let needs_body_check = decision.needs_body_check;
        let enforcing = !decision.dry_run;
        if let (Verdict::Deny(reason), true) = (decision.verdict, decision.dry_run) {
            log(LogLevel::Info, &format!("spapi-guard: dry-run: would deny ({})", reason.code()));
            self.reason = Some(reason.code());
            self.decision_kind = DecisionKind::DryRunDeny;
        }
        self.decision = Some(decision);
        self.path = path;
        let path_hits = guard.canaries.find(self.path.as_bytes());
        if self.canaries_seen(path_hits) {
            return self.deny(DenyReason::CanaryBlocked);
        }
        if let Some(reason) = denial {
            return self.deny(reason);
        }
        if let Some(actions) = caller_actions {
            self.actions = actions;
        }
        self.outcome = match operation {
            Some((_, op)) if op.has_response_pii() => {
                // The filter reads only identity bodies: ask upstream not to compress.
                self.set_http_request_header("accept-encoding", None);
                Outcome::Protected
            }
            Some(_) => Outcome::PassedThrough,
            None => Outcome::Unmatched,
        };
        if needs_body_check && enforcing {
            if end_of_stream {
                return self.deny(DenyReason::InvalidRdtRequest);
            }
            self.checking_rdt = true;
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.checking_rdt {
            if self.outcome != Outcome::Denied {
                self.scan_streaming_chunk(body_size, false);
            }
            return Action::Continue;
        }
        if body_size > MAX_RDT_BODY {
            return self.deny(DenyReason::InvalidRdtRequest);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.checking_rdt = false;
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let guard = Rc::clone(&self.guard);
        if self.canaries_seen(guard.canaries.find(&body)) {
            return self.deny(DenyReason::CanaryBlocked);
        }
        let Some(caller) = self.decision.as_ref().and_then(|d| d.caller) else {
            return self.deny(DenyReason::UnknownCaller);
        };
        match guard.access.check_rdt(caller, &guard.catalog, &body) {
            Ok(()) => Action::Continue,
            Err(reason) => self.deny(reason),
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if self.outcome == Outcome::Denied {
            // Our own local reply.
            return Action::Continue;
        }
        self.upstream_status = self.response_header(":status").and_then(|s| s.parse().ok());
        if self.outcome != Outcome::Protected {
            return Action::Continue;
        }
        let checked = check_response_headers(
            self.response_header("content-type").as_deref(),
            self.response_header("content-encoding").as_deref(),
            self.response_header("content-length").as_deref(),
            self.guard.policy.max_body_bytes,
        );
        if end_of_stream {
            // No body follows (204, HEAD): nothing to protect.
            return Action::Continue;
        }
        if let Err(reason) = checked {
            return self.fail_closed(reason);
        }
        self.protecting = true;
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.protecting {
            match self.outcome {
                // After a fail-closed reply no upstream byte may follow.
                Outcome::FailClosed => return Action::Pause,
                // A denial's own local reply flows.
                Outcome::Denied => return Action::Continue,
                _ => {}
            }
            // Streaming pass-through: counted, and scanned for canaries if the policy has any.
            self.bytes_in += body_size;
            self.bytes_out += body_size;
            self.scan_streaming_chunk(body_size, true);
            return Action::Continue;
        }
        self.bytes_in = body_size;
        if body_size > self.guard.policy.max_body_bytes {
            return self.fail_closed(FailReason::BodyTooLarge);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.protecting = false;
        let body = self.get_http_response_body(0, body_size).unwrap_or_default();
        let guard = Rc::clone(&self.guard);
        if self.canaries_seen(guard.canaries.find(&body)) {
            return self.deny(DenyReason::CanaryBlocked);
        }
        let Some(index) = self.operation else { return Action::Continue };
        match guard.protect_response_with(&guard.catalog.operations[index], &body, &self.actions) {
            Ok(protected) => {
                self.counts = protected.counts;
                let length = match protected.body {
                    Some(new_body) => {
                        self.set_http_response_body(0, body_size, &new_body);
                        new_body.len()
                    }
                    None => body.len(),
                };
                self.bytes_out = length;
                self.set_http_response_header("content-length", Some(&length.to_string()));
                if let Some(caller) = self.caller() {
                    let (id, limit, rules) = (caller.id.clone(), caller.max_pii_per_window, guard.access.lockout);
                    let delivered = u64::from(self.counts.delivered());
                    if limit.is_some() {
                        let trigger = update_lock(&id, |s, now| s.record_pii(now, delivered, limit, &rules));
                        self.lockout_started(&id, trigger);
                    }
                }
                Action::Continue
            }
            Err(reason) => self.fail_closed(reason),
        }
    }

    fn on_log(&mut self) {
        if self.decision.is_none() {
            // The request never reached this filter: a filter in front of it (authentication,
            // rate limit…) answered it. Still one audit event, saying so.
            self.decision_kind = DecisionKind::Deny;
            self.outcome = Outcome::Denied;
            self.reason = Some(REFUSED_BEFORE);
        }
        let request_id = self.property(&["request", "id"]).unwrap_or_default();
        let started_ms = self.int_property(&["request", "time"]).map(|ns| (ns / 1_000_000) as u64);
        let now = now_ms();
        let operation = self.operation.map(|i| &self.guard.catalog.operations[i]);
        let identity = self.decision.as_ref().and_then(|d| d.identity.as_ref()).map(|(s, v)| format!("{}:{v}", s.as_str()));
        let decision_id = self.ids.next();
        let event = AuditEvent {
            event: "request",
            schema: crate::audit::SCHEMA_VERSION,
            time: crate::audit::rfc3339_ms(started_ms.unwrap_or(now)),
            request_id: &request_id,
            decision_id: &decision_id,
            identity,
            known_caller: self.caller().is_some(),
            source_ip: self.decision.as_ref().and_then(|d| d.client_ip).map(|ip| ip.to_string()),
            tls_version: self.tls_version.as_deref(),
            operation: operation.map(|o| o.id.as_str()),
            api: operation.map(|o| o.api.as_str()),
            api_version: operation.map(|o| o.version.as_str()),
            method: &self.method,
            path: redacted_path(&self.path, operation),
            decision: self.decision_kind,
            outcome: self.outcome,
            reason: self.reason,
            status: self.int_property(&["response", "code"]).map(|c| c as u32),
            upstream_status: self.upstream_status,
            pii: AuditEvent::pii_from(&self.counts),
            key_id: self.counts.used_key().then(|| self.guard.tokens.active_key_id()),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_ms: started_ms.map(|s| now.saturating_sub(s)),
            security_events: self.security_events.clone(),
            canaries: self.canaries.clone(),
        };
        let json = event.to_json();
        // Written to stdout by the access log (%FILTER_STATE(wasm.spapi_guard.audit:PLAIN)%).
        self.set_property(vec!["spapi_guard.audit"], Some(json.as_bytes()));
        // Where a request was handled (its worker thread is in the log line's prefix).
        log(LogLevel::Debug, &format!("spapi-guard: request {request_id} decided {}", self.decision_kind.as_str()));
        self.count_metrics();
    }
}
