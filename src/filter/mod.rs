//! The Envoy (proxy-wasm) layer: adapts host callbacks to the pure core. It holds no policy
//! logic of its own; every decision is made by [`Guard`](crate::guard::Guard) and
//! [`Access`](crate::access::Access).
//!
//! Flow of a request:
//! 1. request headers — strip the trusted identity header (it goes no further), route to a catalog
//!    operation, decide access (denials answered locally: the upstream is never contacted); for
//!    operations with response PII ask upstream for an uncompressed body.
//! 2. request body — only for `createRestrictedDataToken`: buffered and checked resource by resource.
//! 3. response headers — check content type, encoding and declared length; hold the headers
//!    (needs `allow_on_headers_stop_iteration: true`) so the length can be set after the rewrite.
//! 4. response body — buffer to the end (refusing past `maxBodyBytes`), rewrite with the caller's
//!    access levels, set body and content-length; count delivered PII toward the caller's limit.
//! 5. log — one audit event.
//!
//! Header values are read as bytes: the SDK's string getters panic on non-UTF-8 values, and a
//! panic takes the VM down.
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use crate::access::{Caller, Decision, DenyReason, RequestFacts, Verdict};
use crate::audit::{AuditEvent, DecisionKind, Outcome};
use crate::fail_closed::{check_response_headers, FailReason};
use crate::guard::{FieldCounts, Guard};
use crate::lockout::{LockState, Trigger};
use crate::policy::ClassActions;

/// Largest `createRestrictedDataToken` request body read (50 resources fit easily).
const MAX_RDT_BODY: usize = 64 * 1024;
/// Compare-and-swap attempts on the shared lockout state before giving up (logged).
const CAS_ATTEMPTS: usize = 32;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { guard: None }) });
}}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

struct Root {
    guard: Option<Rc<Guard>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match Guard::load(&config, &|name| std::env::var(name).ok()) {
            Ok(guard) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "spapi-guard: configuration loaded: {} operations, {} callers, active key id {}{}",
                        guard.catalog.operations.len(),
                        guard.access.callers.len(),
                        guard.tokens.active_key_id(),
                        if guard.access.dry_run { ", access in DRY-RUN (not enforced)" } else { "" }
                    ),
                );
                if guard.access.callers.is_empty() {
                    log(LogLevel::Warn, "spapi-guard: the policy lists no callers: every request will be denied");
                }
                self.guard = Some(Rc::new(guard));
                true
            }
            Err(e) => {
                // Returning false makes Envoy refuse the configuration (bootstrap or LDS update).
                log(LogLevel::Error, &format!("spapi-guard: configuration refused: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let guard = self.guard.clone()?;
        Some(Box::new(Stream::new(guard)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Per-request state.
struct Stream {
    guard: Rc<Guard>,
    method: String,
    operation: Option<usize>,
    decision: Option<Decision>,
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
    bytes_in: usize,
    bytes_out: usize,
}

impl Stream {
    fn new(guard: Rc<Guard>) -> Self {
        let actions = *guard.policy.actions();
        Stream {
            guard,
            method: String::new(),
            operation: None,
            decision: None,
            tls_version: None,
            actions,
            checking_rdt: false,
            protecting: false,
            outcome: Outcome::Unmatched,
            reason: None,
            counts: FieldCounts::default(),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        self.get_property(path.to_vec()).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn request_header(&self, name: &str) -> Option<String> {
        self.get_http_request_header_bytes(name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.get_http_response_header_bytes(name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn now_ms(&self) -> u64 {
        self.get_current_time().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    fn caller(&self) -> Option<&Caller> {
        let index = self.decision.as_ref()?.caller?;
        self.guard.access.callers.get(index)
    }

    fn operation_id(&self) -> Option<&str> {
        self.operation.map(|i| self.guard.catalog.operations[i].id.as_str())
    }

    /// Answers the client with an SP-API-style error instead of the upstream response.
    fn fail_closed(&mut self, reason: FailReason) -> Action {
        self.protecting = false;
        self.outcome = Outcome::FailClosed;
        self.reason = Some(reason.code());
        let body = reason.error_body();
        self.bytes_out = body.len();
        log(LogLevel::Warn, &format!("spapi-guard: fail closed: {} ({})", reason.code(), self.operation_id().unwrap_or("-")));
        self.send_http_response(
            reason.status(),
            vec![("content-type", "application/json"), ("x-spapi-guard", reason.code())],
            Some(body.as_bytes()),
        );
        Action::Pause
    }

    /// Answers a denied request locally and counts the denial toward the caller's lockout.
    fn deny(&mut self, reason: DenyReason) -> Action {
        self.outcome = Outcome::Denied;
        self.reason = Some(reason.code());
        self.checking_rdt = false;
        let mut retry_after = None;
        if reason == DenyReason::LockedOut {
            retry_after = self.caller().map(|c| self.lock_state(c).remaining_ms(self.now_ms()).div_ceil(1000).max(1).to_string());
        } else if let Some(caller) = self.caller() {
            let rules = self.guard.access.lockout;
            let id = caller.id.clone();
            if self.update_lock(&id, |state, now| state.record_denial(now, &rules)) == Trigger::Denials {
                log(LogLevel::Warn, &format!("spapi-guard: lockout started: caller {id} after {} denied requests", rules.max_denials));
            }
        }
        let body = reason.error_body();
        self.bytes_out = body.len();
        let mut headers = vec![("content-type", "application/json"), ("x-spapi-guard", reason.code())];
        if let Some(seconds) = retry_after.as_deref() {
            headers.push(("retry-after", seconds));
        }
        self.send_http_response(reason.status(), headers, Some(body.as_bytes()));
        Action::Pause
    }

    fn lock_key(id: &str) -> String {
        format!("spapi-guard.lockout.{id}")
    }

    fn lock_state(&self, caller: &Caller) -> LockState {
        LockState::decode(&self.get_shared_data(&Self::lock_key(&caller.id)).0.unwrap_or_default())
    }

    /// Updates a caller's shared lockout state with compare-and-swap, so that every worker
    /// thread's update counts exactly once.
    fn update_lock(&self, id: &str, update: impl Fn(&mut LockState, u64) -> Trigger) -> Trigger {
        let key = Self::lock_key(id);
        for _ in 0..CAS_ATTEMPTS {
            let (bytes, cas) = self.get_shared_data(&key);
            let mut state = LockState::decode(&bytes.unwrap_or_default());
            let trigger = update(&mut state, self.now_ms());
            match self.set_shared_data(&key, Some(&state.encode()), cas) {
                Ok(()) => return trigger,
                Err(Status::CasMismatch) => continue,
                Err(_) => break,
            }
        }
        log(LogLevel::Error, &format!("spapi-guard: could not update the lockout state of caller {id}"));
        Trigger::None
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
            self.set_http_request_header(h, None);
            value
        });
        self.tls_version = self.property(&["connection", "tls_version"]);
        let uri_san = self.property(&["connection", "uri_san_peer_certificate"]);
        let dns_san = self.property(&["connection", "dns_san_peer_certificate"]);
        let subject = self.property(&["connection", "subject_peer_certificate"]);
        let peer = self.property(&["source", "address"]);
        let xff = self.request_header("x-forwarded-for");
        let facts = RequestFacts {
            tls_version: self.tls_version.as_deref(),
            uri_san: uri_san.as_deref(),
            dns_san: dns_san.as_deref(),
            subject: subject.as_deref(),
            header_identity: header_identity.as_deref(),
            peer_address: peer.as_deref(),
            x_forwarded_for: xff.as_deref(),
            path: &path,
        };
        self.method = method;
        self.operation = guard.catalog.route_index(&self.method, &path);
        let operation = self.operation.map(|i| (i, &guard.catalog.operations[i]));
        let decision = guard.access.decide(&facts, operation, &|caller| self.lock_state(caller).is_locked(self.now_ms()));
        let caller_actions = decision.caller.map(|c| guard.access.callers[c].actions);
        let denial = decision.enforced_denial();
        let needs_body_check = decision.needs_body_check;
        if let (Verdict::Deny(reason), true) = (decision.verdict, decision.dry_run) {
            log(LogLevel::Info, &format!("spapi-guard: dry-run: would deny ({})", reason.code()));
            self.reason = Some(reason.code());
        }
        self.decision = Some(decision);
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
        let enforcing = self.decision.as_ref().is_some_and(|d| !d.dry_run);
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
        let Some(caller) = self.decision.as_ref().and_then(|d| d.caller) else {
            return self.deny(DenyReason::UnknownCaller);
        };
        let guard = Rc::clone(&self.guard);
        match guard.access.check_rdt(caller, &guard.catalog, &body) {
            Ok(()) => Action::Continue,
            Err(reason) => self.deny(reason),
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
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
            // After a fail-closed reply no upstream byte may follow. (A denial's own local reply
            // also passes through here and must flow.)
            if self.outcome == Outcome::FailClosed {
                return Action::Pause;
            }
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
        let Some(index) = self.operation else { return Action::Continue };
        let guard = Rc::clone(&self.guard);
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
                    if limit.is_some()
                        && self.update_lock(&id, |s, now| s.record_pii(now, delivered, limit, &rules)) == Trigger::PiiVolume
                    {
                        log(LogLevel::Warn, &format!("spapi-guard: lockout started: caller {id} over its PII volume limit"));
                    }
                }
                Action::Continue
            }
            Err(reason) => self.fail_closed(reason),
        }
    }

    fn on_log(&mut self) {
        let request_id = self.property(&["request", "id"]).unwrap_or_default();
        let status = self
            .get_property(vec!["response", "code"])
            .and_then(|b| b.get(..8).and_then(|s| s.try_into().ok()).map(i64::from_le_bytes))
            .map(|c| c as u32);
        let decision = match self.decision.as_ref() {
            Some(d) => match (d.verdict, d.dry_run) {
                (Verdict::Allow, _) => DecisionKind::Allow,
                (Verdict::Deny(_), true) => DecisionKind::DryRunDeny,
                (Verdict::Deny(DenyReason::LockedOut), false) => DecisionKind::Lockout,
                (Verdict::Deny(_), false) => DecisionKind::Deny,
            },
            None => DecisionKind::Deny,
        };
        let identity = self.decision.as_ref().and_then(|d| d.identity.as_ref()).map(|(s, v)| format!("{}:{v}", s.as_str()));
        let event = AuditEvent {
            event: "request",
            request_id: &request_id,
            identity,
            known_caller: self.caller().is_some(),
            source_ip: self.decision.as_ref().and_then(|d| d.client_ip).map(|ip| ip.to_string()),
            tls_version: self.tls_version.as_deref(),
            operation: self.operation_id(),
            method: &self.method,
            decision,
            outcome: self.outcome,
            reason: self.reason,
            status,
            pii: AuditEvent::pii_from(&self.counts),
            key_id: (self.counts.total() > 0).then(|| self.guard.tokens.active_key_id()),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        };
        log(LogLevel::Info, &format!("spapi-guard audit {}", event.to_json()));
    }
}
