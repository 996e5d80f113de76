//! The Envoy (proxy-wasm) layer: adapts host callbacks to the pure core. It holds no policy
//! logic of its own; every decision is made by [`Guard`](crate::guard::Guard).
//!
//! Flow of a request to an operation with response PII:
//! 1. request headers — route to a catalog operation; ask upstream for an uncompressed body.
//! 2. response headers — check content type, encoding and declared length; hold the headers
//!    (needs `allow_on_headers_stop_iteration: true` in the plugin config) so that the
//!    content-length can be set after the rewrite, or a 502 sent instead.
//! 3. response body — buffer to the end (refusing past `maxBodyBytes`), rewrite, set the body
//!    and content-length.
//! 4. log — one audit event.
//!
//! Header values are read as bytes: the SDK's string getters panic on non-UTF-8 values, and a
//! panic takes the VM down.
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;

use crate::audit::{AuditEvent, Outcome};
use crate::fail_closed::{check_response_headers, FailReason};
use crate::guard::{FieldCounts, Guard};

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
                        "spapi-guard: configuration loaded: {} operations, active key id {}",
                        guard.catalog.operations.len(),
                        guard.tokens.active_key_id()
                    ),
                );
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
        Stream {
            guard,
            method: String::new(),
            operation: None,
            protecting: false,
            outcome: Outcome::Unmatched,
            reason: None,
            counts: FieldCounts::default(),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.get_http_response_header_bytes(name).map(|v| String::from_utf8_lossy(&v).into_owned())
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

    fn operation_id(&self) -> Option<&str> {
        self.operation.map(|i| self.guard.catalog.operations[i].id.as_str())
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let method = self.get_http_request_header_bytes(":method").unwrap_or_default();
        let path = self.get_http_request_header_bytes(":path").unwrap_or_default();
        self.method = String::from_utf8_lossy(&method).into_owned();
        let path = String::from_utf8_lossy(&path);
        self.operation = self.guard.catalog.route_index(&self.method, &path);
        match self.operation.map(|i| &self.guard.catalog.operations[i]) {
            Some(op) if op.has_response_pii() => {
                self.outcome = Outcome::Protected;
                // The filter reads only identity bodies: ask upstream not to compress.
                self.set_http_request_header("accept-encoding", None);
            }
            Some(_) => self.outcome = Outcome::PassedThrough,
            None => self.outcome = Outcome::Unmatched,
        }
        Action::Continue
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
        match guard.protect_response(&guard.catalog.operations[index], &body) {
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
                Action::Continue
            }
            Err(reason) => self.fail_closed(reason),
        }
    }

    fn on_log(&mut self) {
        let request_id = self.get_property(vec!["request", "id"]).unwrap_or_default();
        let request_id = String::from_utf8_lossy(&request_id);
        let status = self
            .get_property(vec!["response", "code"])
            .and_then(|b| b.get(..8).map(|s| s.try_into().map(i64::from_le_bytes).unwrap_or(0)))
            .map(|c| c as u32);
        let event = AuditEvent {
            event: "request",
            request_id: &request_id,
            operation: self.operation_id(),
            method: &self.method,
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
