//! The per-request context: each proxy-wasm callback hands its phase to the exchange state
//! machine ([`crate::exchange::Exchange`]), which decides; this file only adapts the types.
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::host::Envoy;
use crate::exchange::{refuse_unconfigured, Exchange, Flow};

pub struct Stream {
    /// `None` only if the VM has no configuration (see `Root::create_http_context`).
    exchange: Option<Exchange>,
}

impl Stream {
    pub fn new(exchange: Option<Exchange>) -> Self {
        Stream { exchange }
    }

    /// Runs a phase on the exchange; without one, every phase is held (the request was refused).
    fn run(&mut self, phase: impl FnOnce(&mut Exchange, &mut Envoy) -> Flow) -> Action {
        match self.exchange.as_mut() {
            Some(exchange) => action(phase(exchange, &mut Envoy)),
            None => Action::Pause,
        }
    }
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        match self.exchange.as_mut() {
            Some(exchange) => action(exchange.on_request_headers(&mut Envoy, end_of_stream)),
            None => action(refuse_unconfigured(&mut Envoy)),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.run(|e, h| e.on_request_body(h, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        self.run(|e, h| e.on_request_trailers(h))
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        match self.exchange {
            Some(_) => self.run(|e, h| e.on_response_headers(h, end_of_stream)),
            // The local reply of refuse_unconfigured.
            None => Action::Continue,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.exchange {
            Some(_) => self.run(|e, h| e.on_response_body(h, body_size, end_of_stream)),
            None => Action::Continue,
        }
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        self.run(|e, h| e.on_response_trailers(h))
    }

    fn on_log(&mut self) {
        if let Some(exchange) = self.exchange.as_mut() {
            exchange.on_log(&mut Envoy);
        }
    }
}
