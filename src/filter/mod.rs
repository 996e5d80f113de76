//! The Envoy (proxy-wasm) layer: adapts host callbacks to the pure core. It holds no policy
//! logic of its own; every decision is made by [`Guard`](crate::guard::Guard) and
//! [`Access`](crate::access::Access).
//!
//! * `mod.rs` — the root context: loads the policy per VM, ends expired lockouts on a timer.
//! * `stream.rs` — the per-request context (see its comment for the request flow).
//! * `host.rs` — logging, security events, metrics, shared lockout state.
mod host;
mod stream;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::rc::Rc;
use std::time::Duration;

use crate::audit::{DecisionIds, SecurityEvent};
use crate::guard::Guard;
use host::{count, lock_state, log, now_ms, security, update_lock};
use stream::Stream;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { guard: None, ids: Rc::new(DecisionIds::new()) }) });
}}

struct Root {
    guard: Option<Rc<Guard>>,
    ids: Rc<DecisionIds>,
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
                        "spapi-guard: configuration loaded: {} operations, {} callers, {} canaries, active key id {}{}",
                        guard.catalog.operations.len(),
                        guard.access.callers.len(),
                        if guard.canaries.is_empty() { "no" } else { "with" },
                        guard.tokens.active_key_id(),
                        if guard.access.dry_run { ", access in DRY-RUN (not enforced)" } else { "" }
                    ),
                );
                if guard.access.callers.is_empty() {
                    log(LogLevel::Warn, "spapi-guard: the policy lists no callers: every request will be denied");
                }
                let mut event = SecurityEvent::new("config_loaded", "info", now_ms());
                event.detail = Some(guard.tokens.active_key_id());
                security(&event);
                count("spapi_guard_config_total", &[("result", "loaded")], 1);
                if !guard.access.callers.is_empty() {
                    self.set_tick_period(Duration::from_secs(1));
                }
                self.guard = Some(Rc::new(guard));
                true
            }
            Err(e) => {
                // Returning false makes Envoy refuse the configuration (bootstrap or LDS update).
                log(LogLevel::Error, &format!("spapi-guard: configuration refused: {e}"));
                let mut event = SecurityEvent::new("config_rejected", "high", now_ms());
                event.detail = Some(&e.field);
                security(&event);
                if e.key_missing {
                    let mut missing = SecurityEvent::new("key_missing", "critical", now_ms());
                    missing.detail = Some(&e.field);
                    security(&missing);
                }
                count("spapi_guard_config_total", &[("result", "rejected")], 1);
                false
            }
        }
    }

    /// Ends lockouts whose cooldown has passed; the compare-and-swap makes exactly one VM report it.
    fn on_tick(&mut self) {
        let Some(guard) = self.guard.as_ref() else { return };
        let now = now_ms();
        for caller in &guard.access.callers {
            // Read first: the compare-and-swap write happens only for a lock that has expired.
            let state = lock_state(&caller.id);
            if state.locked_until_ms == 0 || now < state.locked_until_ms {
                continue;
            }
            if update_lock(&caller.id, |state, now| state.end_expired(now)) {
                let mut event = SecurityEvent::new("lockout_ended", "info", now_ms());
                event.caller = Some(&caller.id);
                security(&event);
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let guard = self.guard.clone()?;
        Some(Box::new(Stream::new(guard, Rc::clone(&self.ids))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
