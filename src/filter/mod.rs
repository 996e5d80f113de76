//! The Envoy (proxy-wasm) layer: adapts host callbacks to the pure core. It holds no decision
//! logic of its own: configuration and lockout timers are [`crate::lifecycle`], each request is an
//! [`Exchange`](crate::exchange::Exchange).
//!
//! * `mod.rs` — the root context: loads the policy per VM, ends expired lockouts on a timer.
//! * `stream.rs` — the per-request context, one callback per phase of the exchange.
//! * `host.rs` — every host call, with its errors handled.
mod host;
mod stream;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::rc::Rc;
use std::time::Duration;

use crate::audit::DecisionIds;
use crate::exchange::{Exchange, Level};
use crate::guard::Guard;
use crate::key_status::KeyWatch;
use crate::lifecycle;
use host::Envoy;
use stream::Stream;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // A panic is a bug: say where, never what (its message could quote request data). The VM is
    // then reloaded by Envoy's FAIL_RELOAD policy.
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        host::log(Level::Error, &format!("spapi-guard: panic at {at}; the VM will be reloaded"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { guard: None, keys: None, ids: Rc::new(DecisionIds::new()) }) });
}}

struct Root {
    guard: Option<Rc<Guard>>,
    /// The key ring's states, checked every tick (keys activate and expire by the clock).
    keys: Option<KeyWatch>,
    ids: Rc<DecisionIds>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = host::plugin_configuration();
        // Returning false makes Envoy refuse the configuration (bootstrap or LDS update).
        let Some(guard) = lifecycle::configure(&Envoy, &config, &|name| std::env::var(name).ok()) else { return false };
        self.keys = Some(KeyWatch::start(&Envoy, &guard));
        // The timer ends lockouts and follows the keys' states (they change by the clock).
        host::set_tick_period(Duration::from_secs(1));
        self.guard = Some(Rc::new(guard));
        true
    }

    fn on_tick(&mut self) {
        if let Some(guard) = self.guard.as_ref() {
            lifecycle::end_expired_lockouts(&Envoy, guard);
            if let Some(keys) = self.keys.as_mut() {
                keys.tick(&Envoy, guard);
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a configuration Envoy never starts the listener; should it happen anyway, the
        // exchange refuses every request (the SDK would panic on `None`).
        Some(Box::new(Stream::new(self.guard.clone().map(|g| Exchange::new(g, Rc::clone(&self.ids))))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
