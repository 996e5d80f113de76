//! The Envoy host: every proxy-wasm host call the filter makes goes through here, and every error
//! a call reports is handled (a missing value is `None`, a failed write is logged) — the SDK's
//! convenience getters unwrap internally, and a panic takes the VM down.
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use crate::exchange::{Host, HttpHost, Level};
use crate::lockout::{LockState, Trigger};
use crate::metrics::write_stat_name;

/// Compare-and-swap attempts on the shared lockout state before giving up (logged).
const CAS_ATTEMPTS: usize = 32;

/// The host as the root context and every stream context see it.
pub struct Envoy;

/// The plugin configuration (the policy document); empty if the host has none.
pub fn plugin_configuration() -> Vec<u8> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default()
}

/// Asks the host to call `on_tick` every `period`.
pub fn set_tick_period(period: std::time::Duration) {
    if hostcalls::set_tick_period(period).is_err() {
        log(Level::Error, "spapi-guard: could not start the lockout timer");
    }
}

pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    };
    let _ = hostcalls::log(level, message);
}

thread_local! {
    /// Stat name → metric id, per VM (defining a metric takes a symbol-table lock in Envoy).
    static METRIC_IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
    /// The stat name being looked up (one buffer, no allocation per count).
    static NAME: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The id of a metric, defined on first use (counter and gauge names never coincide).
fn metric_id(kind: MetricType, metric: &str, labels: &[(&str, &str)]) -> Option<u32> {
    NAME.with(|name| {
        let mut name = name.borrow_mut();
        write_stat_name(&mut name, metric, labels);
        METRIC_IDS.with(|ids| {
            if let Some(id) = ids.borrow().get(name.as_str()) {
                return Some(*id);
            }
            let id = hostcalls::define_metric(kind, &name).ok()?;
            ids.borrow_mut().insert(name.clone(), id);
            Some(id)
        })
    })
}

fn lock_key(caller_id: &str) -> String {
    format!("spapi-guard.lockout.{caller_id}")
}

impl Host for Envoy {
    fn log(&self, level: Level, message: &str) {
        log(level, message);
    }

    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    fn count(&self, metric: &str, labels: &[(&str, &str)], n: u64) {
        if n == 0 {
            return;
        }
        if let Some(id) = metric_id(MetricType::Counter, metric, labels) {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn gauge(&self, metric: &str, labels: &[(&str, &str)], value: u64) {
        if let Some(id) = metric_id(MetricType::Gauge, metric, labels) {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    fn lock_state(&self, caller_id: &str) -> LockState {
        let bytes = hostcalls::get_shared_data(&lock_key(caller_id)).ok().and_then(|(bytes, _)| bytes);
        LockState::decode(&bytes.unwrap_or_default())
    }

    /// Compare-and-swap, so that each worker thread's update counts exactly once.
    fn update_lock(&self, caller_id: &str, update: &dyn Fn(&mut LockState, u64) -> Trigger) -> Trigger {
        let key = lock_key(caller_id);
        for _ in 0..CAS_ATTEMPTS {
            let (bytes, cas) = hostcalls::get_shared_data(&key).unwrap_or((None, None));
            let mut state = LockState::decode(&bytes.unwrap_or_default());
            let result = update(&mut state, self.now_ms());
            match hostcalls::set_shared_data(&key, Some(&state.encode()), cas) {
                Ok(()) => return result,
                Err(Status::CasMismatch) => continue,
                Err(_) => break,
            }
        }
        log(Level::Error, &format!("spapi-guard: could not update the lockout state of caller {caller_id}"));
        Trigger::None
    }

    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        hostcalls::get_shared_data(key).ok().and_then(|(bytes, _)| bytes)
    }

    fn shared_set(&self, key: &str, value: &[u8]) {
        if hostcalls::set_shared_data(key, Some(value), None).is_err() {
            log(Level::Warn, "spapi-guard: could not store a shared value");
        }
    }
}

impl HttpHost for Envoy {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        if hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value).is_err() {
            log(Level::Error, &format!("spapi-guard: could not set request header {name}"));
        }
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok().flatten()
    }

    fn response_header_names(&self) -> Vec<String> {
        // Envoy's codecs admit only token characters in header names, so the SDK's UTF-8 decoding
        // of the names cannot fail; values (any bytes) are not decoded.
        hostcalls::get_map_bytes(MapType::HttpResponseHeaders).map(|map| map.into_iter().map(|(name, _)| name).collect()).unwrap_or_default()
    }

    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        if hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value).is_err() {
            log(Level::Error, &format!("spapi-guard: could not set response header {name}"));
        }
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn request_body(&self, max: usize) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, max).ok().flatten().unwrap_or_default()
    }

    fn response_body(&self, max: usize) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, max).ok().flatten().unwrap_or_default()
    }

    fn set_request_body(&mut self, replaced: usize, body: &[u8]) {
        if hostcalls::set_buffer(BufferType::HttpRequestBody, 0, replaced, body).is_err() {
            log(Level::Error, "spapi-guard: could not replace the request body");
        }
    }

    fn set_response_body(&mut self, replaced: usize, body: &[u8]) {
        if hostcalls::set_buffer(BufferType::HttpResponseBody, 0, replaced, body).is_err() {
            log(Level::Error, "spapi-guard: could not replace the response body");
        }
    }

    fn send_reply(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        if hostcalls::send_http_response(status, headers.to_vec(), Some(body)).is_err() {
            log(Level::Error, "spapi-guard: could not send a local reply");
        }
    }

    fn set_audit(&mut self, json: &str) {
        let _ = hostcalls::set_property(vec!["spapi_guard.audit"], Some(json.as_bytes()));
    }

    fn reset_stream(&mut self) {
        // proxy_close_stream(HttpResponse): Envoy resets the stream (HTTP/1.1: the connection
        // closes without the final chunk; HTTP/2: RST_STREAM).
        if hostcalls::reset_http_response().is_err() {
            log(Level::Error, "spapi-guard: could not reset the response stream");
        }
    }
}
