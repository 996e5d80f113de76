//! Host services shared by the root and stream contexts: logging, security events, metrics and
//! the shared lockout state. Thin wrappers over proxy-wasm host calls; no policy logic.
use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MetricType, Status};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use crate::audit::SecurityEvent;
use crate::lockout::LockState;
use crate::metrics::write_stat_name;

/// Compare-and-swap attempts on the shared lockout state before giving up (logged).
const CAS_ATTEMPTS: usize = 32;

pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Milliseconds since the Unix epoch, from the host clock.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes a security event to Envoy's log as `spapi-guard event {json}`.
pub fn security(event: &SecurityEvent) {
    let level = match event.severity {
        "critical" | "high" => LogLevel::Error,
        "warning" => LogLevel::Warn,
        _ => LogLevel::Info,
    };
    log(level, &format!("spapi-guard event {}", event.to_json()));
}

thread_local! {
    /// Stat name → metric id, per VM (defining a metric takes a symbol-table lock in Envoy).
    static METRIC_IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
    /// The stat name being looked up (one buffer, no allocation per count).
    static NAME: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Adds `n` to a counter with labels.
pub fn count(metric: &str, labels: &[(&str, &str)], n: u64) {
    if n == 0 {
        return;
    }
    let id = NAME.with(|name| {
        let mut name = name.borrow_mut();
        write_stat_name(&mut name, metric, labels);
        METRIC_IDS.with(|ids| {
            if let Some(id) = ids.borrow().get(name.as_str()) {
                return Some(*id);
            }
            let id = hostcalls::define_metric(MetricType::Counter, &name).ok()?;
            ids.borrow_mut().insert(name.clone(), id);
            Some(id)
        })
    });
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, n as i64);
    }
}

fn lock_key(caller_id: &str) -> String {
    format!("spapi-guard.lockout.{caller_id}")
}

/// A caller's lockout state as all workers see it.
pub fn lock_state(caller_id: &str) -> LockState {
    let bytes = hostcalls::get_shared_data(&lock_key(caller_id)).ok().and_then(|(bytes, _)| bytes);
    LockState::decode(&bytes.unwrap_or_default())
}

/// Updates a caller's shared lockout state with compare-and-swap, so that each worker thread's
/// update counts exactly once. `update` may run several times; only its last result counts.
pub fn update_lock<T: Default>(caller_id: &str, update: impl Fn(&mut LockState, u64) -> T) -> T {
    let key = lock_key(caller_id);
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = hostcalls::get_shared_data(&key).unwrap_or((None, None));
        let mut state = LockState::decode(&bytes.unwrap_or_default());
        let result = update(&mut state, now_ms());
        match hostcalls::set_shared_data(&key, Some(&state.encode()), cas) {
            Ok(()) => return result,
            Err(Status::CasMismatch) => continue,
            Err(_) => break,
        }
    }
    log(LogLevel::Error, &format!("spapi-guard: could not update the lockout state of caller {caller_id}"));
    T::default()
}
