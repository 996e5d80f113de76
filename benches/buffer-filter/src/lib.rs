//! Buffers every response body to the end and writes it back unchanged — or, with the plugin
//! configuration `noop`, does nothing at all (the cost of merely having a Wasm filter).
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { noop: false }) });
}}

struct Root {
    noop: bool,
}
impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.noop = self.get_plugin_configuration().is_some_and(|c| c == b"noop");
        true
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        if self.noop {
            return Some(Box::new(Noop));
        }
        Some(Box::new(Buffer))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Buffer;
impl Context for Buffer {}
impl HttpContext for Buffer {
    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_response_body(0, body_size) {
            self.set_http_response_body(0, body_size, &body);
        }
        Action::Continue
    }
}

struct Noop;
impl Context for Noop {}
impl HttpContext for Noop {}
