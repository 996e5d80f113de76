//! A mock of the Envoy host for native tests of the request flow (`tests/exchange.rs`, the fuzz
//! harness): headers, bodies, properties and the shared lockout state in memory, and a record of
//! everything the filter did to them. It behaves as Envoy does where the flow depends on it:
//! a paused body accumulates, a local reply ends the exchange, headers are case-insensitive.
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::exchange::{Host, HttpHost, Level};
use crate::lockout::{LockState, Trigger};

/// A local reply the filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl SentReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The host of one exchange (and the shared services of its VM).
#[derive(Default)]
pub struct MockHost {
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub response_headers: Vec<(String, Vec<u8>)>,
    pub properties: HashMap<String, Vec<u8>>,
    /// The request body the host holds: the buffered body, or the current chunk.
    pub request_body: Vec<u8>,
    /// The response body the host holds.
    pub response_body: Vec<u8>,
    /// Whether the request body was replaced by the filter.
    pub request_body_set: bool,
    /// Whether the response body was replaced by the filter.
    pub response_body_set: bool,
    pub reply: Option<SentReply>,
    pub audit: Option<String>,
    pub logs: RefCell<Vec<(Level, String)>>,
    pub counters: RefCell<HashMap<String, u64>>,
    pub gauges: RefCell<HashMap<String, u64>>,
    pub locks: RefCell<HashMap<String, LockState>>,
    pub now: Cell<u64>,
    /// Proxy-wasm shared data (every worker's), e.g. the report types learned.
    pub shared: RefCell<HashMap<String, Vec<u8>>>,
    /// Whether the filter reset the stream.
    pub reset: bool,
}

impl MockHost {
    /// A host for a request from `127.0.0.1` over TLS 1.3 with this SPIFFE id (if any), routed by
    /// Envoy to the demo's SP-API cluster `spapi` (`xds.cluster_name`).
    pub fn new(method: &str, path: &str, spiffe_id: Option<&str>) -> MockHost {
        let mut host = MockHost { now: Cell::new(1_800_000_000_000), ..MockHost::default() };
        host.request_headers = vec![(":method".into(), method.into()), (":path".into(), path.into())];
        host.set_property("connection.tls_version", b"TLSv1.3");
        host.set_property("source.address", b"127.0.0.1:40000");
        host.set_property("request.id", b"3f1c8a52-1d47-4a4e-9a59-0c1f2a6b7d11");
        host.set_property("xds.cluster_name", b"spapi");
        if let Some(id) = spiffe_id {
            host.set_property("connection.uri_san_peer_certificate", id.as_bytes());
        }
        host
    }

    pub fn set_property(&mut self, path: &str, value: &[u8]) {
        self.properties.insert(path.to_string(), value.to_vec());
    }

    pub fn remove_property(&mut self, path: &str) {
        self.properties.remove(path);
    }

    pub fn add_request_header(&mut self, name: &str, value: &str) {
        self.request_headers.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
    }

    pub fn set_response_headers(&mut self, headers: &[(&str, &str)]) {
        self.response_headers = headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())).collect();
    }

    pub fn request_header_text(&self, name: &str) -> Option<String> {
        find(&self.request_headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn response_header_text(&self, name: &str) -> Option<String> {
        find(&self.response_headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every line the filter logged, joined.
    pub fn log_text(&self) -> String {
        self.logs.borrow().iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// The security events logged (`spapi-guard event {json}`).
    pub fn security_events(&self) -> Vec<serde_json::Value> {
        self.logs.borrow().iter().filter_map(|(_, m)| m.strip_prefix("spapi-guard event ")).filter_map(|json| serde_json::from_str(json).ok()).collect()
    }

    /// The audit event, parsed.
    pub fn audit_event(&self) -> Option<serde_json::Value> {
        self.audit.as_deref().and_then(|a| serde_json::from_str(a).ok())
    }

    /// A counter's value by its stat name (see `metrics::stat_name`).
    pub fn counter(&self, stat_name: &str) -> u64 {
        self.counters.borrow().get(stat_name).copied().unwrap_or(0)
    }

    /// A gauge's value by its stat name (0 if never set).
    pub fn gauge_value(&self, stat_name: &str) -> u64 {
        self.gauges.borrow().get(stat_name).copied().unwrap_or(0)
    }
}

fn find<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a Vec<u8>> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

fn set(headers: &mut Vec<(String, Vec<u8>)>, name: &str, value: Option<&str>) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    if let Some(v) = value {
        headers.push((name.to_ascii_lowercase(), v.as_bytes().to_vec()));
    }
}

impl Host for MockHost {
    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn now_ms(&self) -> u64 {
        self.now.get()
    }

    fn count(&self, metric: &str, labels: &[(&str, &str)], n: u64) {
        *self.counters.borrow_mut().entry(crate::metrics::stat_name(metric, labels)).or_insert(0) += n;
    }

    fn gauge(&self, metric: &str, labels: &[(&str, &str)], value: u64) {
        self.gauges.borrow_mut().insert(crate::metrics::stat_name(metric, labels), value);
    }

    fn lock_state(&self, caller_id: &str) -> LockState {
        self.locks.borrow().get(caller_id).cloned().unwrap_or_default()
    }

    fn update_lock(&self, caller_id: &str, update: &dyn Fn(&mut LockState, u64) -> Trigger) -> Trigger {
        let mut locks = self.locks.borrow_mut();
        let state = locks.entry(caller_id.to_string()).or_default();
        update(state, self.now.get())
    }

    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.borrow().get(key).cloned()
    }

    fn shared_set(&self, key: &str, value: &[u8]) {
        self.shared.borrow_mut().insert(key.to_string(), value.to_vec());
    }
}

impl HttpHost for MockHost {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        find(&self.request_headers, name).cloned()
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        set(&mut self.request_headers, name, value);
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        find(&self.response_headers, name).cloned()
    }

    fn response_header_names(&self) -> Vec<String> {
        self.response_headers.iter().map(|(k, _)| k.clone()).collect()
    }

    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        set(&mut self.response_headers, name, value);
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.properties.get(&path.join(".")).cloned()
    }

    fn request_body(&self, max: usize) -> Vec<u8> {
        self.request_body[..max.min(self.request_body.len())].to_vec()
    }

    fn response_body(&self, max: usize) -> Vec<u8> {
        self.response_body[..max.min(self.response_body.len())].to_vec()
    }

    fn set_request_body(&mut self, replaced: usize, body: &[u8]) {
        let rest = self.request_body.split_off(replaced.min(self.request_body.len()));
        self.request_body = body.to_vec();
        self.request_body.extend_from_slice(&rest);
        self.request_body_set = true;
    }

    fn set_response_body(&mut self, replaced: usize, body: &[u8]) {
        // Envoy drains `replaced` bytes from the front and puts the new body there.
        let rest = self.response_body.split_off(replaced.min(self.response_body.len()));
        self.response_body = body.to_vec();
        self.response_body.extend_from_slice(&rest);
        self.response_body_set = true;
    }

    fn send_reply(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.reply = Some(SentReply { status, headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), body: body.to_vec() });
    }

    fn set_audit(&mut self, json: &str) {
        self.audit = Some(json.to_string());
    }

    fn reset_stream(&mut self) {
        self.reset = true;
    }
}
