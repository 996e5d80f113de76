//! What a VM does outside requests: load its configuration (with the log lines, security events and
//! metrics that go with it) and end lockouts whose cooldown has passed.
use std::cell::Cell;

use crate::audit::SecurityEvent;
use crate::exchange::{security, Host, Level};
use crate::guard::Guard;
use crate::key_status;
use crate::lockout::Trigger;

/// Loads the policy at the host's time; `None` (logged, with the field at fault) makes Envoy
/// refuse the configuration.
pub fn configure(host: &dyn Host, config: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Option<Guard> {
    let now = host.now_ms();
    match Guard::load_at(config, env, now) {
        Ok(guard) => {
            let active = key_status::active_ids(&guard, now);
            host.log(
                Level::Info,
                &format!(
                    "spapi-guard: configuration loaded: {} operations, {} callers, {} canaries, active keys: {}{}",
                    guard.catalog.operations.len(),
                    guard.access.callers.len(),
                    if guard.canaries.is_empty() { "no" } else { "with" },
                    key_status::summary(&guard, now),
                    if guard.access.dry_run { ", access in DRY-RUN (not enforced)" } else { "" }
                ),
            );
            for warning in &guard.warnings {
                host.log(Level::Warn, &format!("spapi-guard: configuration warning: {warning}"));
            }
            if guard.access.callers.is_empty() {
                host.log(Level::Warn, "spapi-guard: the policy lists no callers: every request will be denied");
            }
            let mut event = SecurityEvent::new("config_loaded", "info", host.now_ms());
            event.detail = Some(&active);
            security(host, &event);
            host.count("spapi_guard_config_total", &[("result", "loaded")], 1);
            Some(guard)
        }
        Err(e) => {
            host.log(Level::Error, &format!("spapi-guard: configuration refused: {e}"));
            let mut event = SecurityEvent::new("config_rejected", "high", host.now_ms());
            event.detail = Some(&e.field);
            security(host, &event);
            if e.key_missing {
                let mut missing = SecurityEvent::new("key_missing", "critical", host.now_ms());
                missing.detail = Some(&e.field);
                security(host, &missing);
            }
            host.count("spapi_guard_config_total", &[("result", "rejected")], 1);
            None
        }
    }
}

/// Ends lockouts whose cooldown has passed; the compare-and-swap makes exactly one VM report it.
pub fn end_expired_lockouts(host: &dyn Host, guard: &Guard) {
    let now = host.now_ms();
    for caller in &guard.access.callers {
        // Read first: the compare-and-swap write happens only for a lock that has expired.
        let state = host.lock_state(&caller.id);
        if state.locked_until_ms == 0 || now < state.locked_until_ms {
            continue;
        }
        // The update may run more than once: only its last run counts.
        let ended = Cell::new(false);
        host.update_lock(&caller.id, &|state, now| {
            ended.set(state.end_expired(now));
            Trigger::None
        });
        if ended.get() {
            let mut event = SecurityEvent::new("lockout_ended", "info", host.now_ms());
            event.caller = Some(&caller.id);
            security(host, &event);
        }
    }
}
