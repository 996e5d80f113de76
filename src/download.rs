//! One report-document download through the proxy: the request side (open the reference, check
//! the caller and the host, point the request at the document host) and the response side (stream
//! the document through [`DocumentRewriter`] chunk by chunk; fail closed — a 502 before the first
//! byte, a reset after it). Driven by [`crate::exchange::Exchange`] over the same [`HttpHost`].
//!
//! Nothing of the reference or of Amazon's URL is ever logged: refusals carry stable codes only.
use std::rc::Rc;

use crate::access::Caller;
use crate::documents::{DocumentRefusal, DocumentUrl, Reference, ROUTE_HEADER};
use crate::drift::DriftFindings;
use crate::exchange::HttpHost;
use crate::guard::{FieldCounts, Guard};
use crate::policy::ClassActions;
use crate::report::{sniff, Compression, DocumentError, DocumentFormat, DocumentRewriter, DocumentSummary};

/// Request headers never sent to the document host: credentials meant for the SP-API or the
/// proxy, and conditions that would cut the document (a range cannot be rewritten).
const STRIPPED_REQUEST_HEADERS: [&str; 10] =
    ["authorization", "x-amz-access-token", "cookie", "range", "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "accept-encoding"];
/// The document host's response headers that reach the client (with the pseudo-headers); every
/// other one is removed. The host's headers are no part of the document the proxy checked: user
/// metadata (`x-amz-meta-*`), a `content-disposition` file name, cookies, a `location` or a
/// `trailer` announcement could carry a buyer's data or the pre-signed URL.
const KEPT_RESPONSE_HEADERS: [&str; 4] = ["content-type", "date", "last-modified", "x-amz-request-id"];
/// Also kept for a PDF/ZIP document passed as it is: they still describe its bytes.
const KEPT_BINARY_HEADERS: [&str; 2] = ["content-length", "content-encoding"];

/// What the exchange does after a phase of the download.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    Pause,
    /// Nothing has reached the client yet: answer 502 with this reason code.
    Fail(&'static str),
    /// Bytes have gone: reset the stream (the client must not take a truncated file for whole).
    Reset(&'static str),
}

/// How the document is being passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Response headers not seen yet.
    Waiting,
    /// Rewritten chunk by chunk; `released` once the headers went to the client.
    Rewriting { released: bool },
    /// A PDF/ZIP document a role may receive as it is.
    Binary,
    /// Finished or failed: nothing more to do.
    Done,
}

/// What the audit event says about a document.
#[derive(serde::Serialize, Debug, Clone, PartialEq, Eq)]
pub struct DocumentAudit {
    pub report_type: Option<String>,
    pub format: &'static str,
    pub rows: u64,
    /// Columns a restricted report had that the report catalog does not list (protected): a sign
    /// Amazon added columns.
    pub unknown_columns: u32,
    /// Bytes from the document host (compressed, as received) and to the client.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `complete`, `refused` (before any byte), `reset` (after some), `aborted` (the client or the
    /// host went away), `binary` (a PDF/ZIP delivered as it is).
    pub result: &'static str,
}

pub struct Download {
    guard: Rc<Guard>,
    actions: ClassActions,
    reference: Reference,
    deliver_binary: bool,
    rewriter: Option<DocumentRewriter>,
    mode: Mode,
    out: Vec<u8>,
    summary: Option<DocumentSummary>,
    format: DocumentFormat,
    bytes_in: u64,
    bytes_out: u64,
    result: &'static str,
    compression: Compression,
    /// What the rewriter consumed while the headers were held and nothing came out yet (a role
    /// that receives PDF/ZIP documents gets it back if the document turns out to be one; bounded
    /// by the rewriter's own carry limit).
    held: Vec<u8>,
    /// Canary records found in the document, not yet reported.
    canary_hits: Vec<String>,
}

impl Download {
    /// Opens the reference of `sealed` for `caller` and checks it: unexpired, this caller's, a host
    /// of the allow list, a report type the caller's roles grant. Then points the request at the
    /// document host (`:authority`, `:path`, the route header) without the caller's credentials.
    pub fn start(guard: &Rc<Guard>, host: &mut dyn HttpHost, caller: &Caller, actions: ClassActions, sealed: &str, now_ms: u64) -> Result<Download, DocumentRefusal> {
        let grant = caller.documents.as_ref().ok_or(DocumentRefusal::NotAllowed)?;
        let reference = Reference::open(&guard.tokens, sealed, &caller.id, now_ms)?;
        let url = DocumentUrl::parse(&reference.url)?;
        if !guard.documents.allows(&url) {
            return Err(DocumentRefusal::HostNotAllowed);
        }
        if !grant.allows(reference.report_type.as_deref()) {
            return Err(DocumentRefusal::NotAllowed);
        }
        for name in STRIPPED_REQUEST_HEADERS {
            host.set_request_header(name, None);
        }
        host.set_request_header(":authority", Some(&url.authority()));
        host.set_request_header(":path", Some(&url.path));
        // Envoy re-selects the route after a filter changes request headers: this header (which
        // no client can send: it is removed before the filter and by it) picks the document route.
        host.set_request_header(ROUTE_HEADER, Some("1"));
        Ok(Download {
            guard: Rc::clone(guard),
            actions,
            deliver_binary: grant.deliver_binary,
            reference,
            rewriter: None,
            mode: Mode::Waiting,
            out: Vec::new(),
            summary: None,
            format: DocumentFormat::Unknown,
            bytes_in: 0,
            bytes_out: 0,
            result: "aborted",
            compression: Compression::Identity,
            held: Vec::new(),
            canary_hits: Vec::new(),
        })
    }

    pub fn report_type(&self) -> Option<&str> {
        self.reference.report_type.as_deref()
    }

    /// The document host's response headers: 200 with identity or gzip bytes, else a 502.
    pub fn on_headers(&mut self, host: &mut dyn HttpHost, status: Option<u32>, end_of_stream: bool, now_ms: u64) -> Step {
        if status != Some(200) {
            // Amazon's error bodies (an expired signature…) echo the request: never passed on.
            return self.refuse("document_host_error");
        }
        let encoding = host.response_header("content-encoding").map(|v| String::from_utf8_lossy(&v).trim().to_ascii_lowercase());
        let gzip_encoded = match encoding.as_deref() {
            None | Some("") | Some("identity") => false,
            Some("gzip") | Some("x-gzip") => true,
            Some(_) => return self.refuse("unsupported_content_encoding"),
        };
        // compressionAlgorithm GZIP and Content-Encoding: gzip describe one compression.
        let compression = if gzip_encoded || self.reference.gzip { Compression::Gzip } else { Compression::Identity };
        self.compression = compression;
        // An uncompressed document whose end only the connection's close marks (no length, not
        // chunked: HTTP/1.0 style) cannot be told from one cut right after a complete record;
        // a gzip document can (its CRC-32 and length). Amazon's hosts always send a length.
        let delimited = host.response_header("content-length").is_some() || host.response_header("transfer-encoding").is_some();
        if compression == Compression::Identity && !delimited {
            return self.refuse("document_length_unknown");
        }
        match DocumentRewriter::new(Rc::clone(&self.guard), self.actions, self.reference.report_type.as_deref(), compression, now_ms) {
            Ok(rewriter) => self.rewriter = Some(rewriter),
            Err(DocumentError::NotTokenizable) if self.deliver_binary => {
                keep_only(host, &KEPT_BINARY_HEADERS);
                return self.binary(host, compression);
            }
            Err(e) => return self.refuse(e.code()),
        }
        // Rewritten: no length, no encoding, no validator of the upstream's bytes either.
        keep_only(host, &[]);
        host.set_response_header("cache-control", Some("no-store"));
        self.mode = Mode::Rewriting { released: false };
        if end_of_stream {
            // No body at all: an empty document is no report.
            return self.refuse("unknown_document_format");
        }
        // Headers are held until the first rewritten bytes exist (or the document fails: a 502).
        Step::Pause
    }

    /// One chunk of the document: rewritten and sent on, or the exchange fails closed.
    pub fn on_body(&mut self, host: &mut dyn HttpHost, body_size: usize, end_of_stream: bool) -> Step {
        match self.mode {
            Mode::Binary => {
                self.bytes_in += body_size as u64;
                self.bytes_out += body_size as u64;
                if end_of_stream {
                    self.mode = Mode::Done;
                    self.result = "binary";
                }
                return Step::Continue;
            }
            Mode::Rewriting { .. } => {}
            Mode::Waiting | Mode::Done => return Step::Pause,
        }
        let chunk = host.response_body(body_size);
        self.bytes_in += chunk.len() as u64;
        if self.format == DocumentFormat::Unknown {
            self.format = sniff(&chunk);
        }
        let Some(rewriter) = self.rewriter.as_mut() else { return self.fail("document_closed") };
        self.out.clear();
        let mut result = rewriter.push(&chunk, &mut self.out);
        if result.is_ok() && end_of_stream {
            result = rewriter.finish(&mut self.out).map(|summary| {
                self.summary = Some(summary);
            });
        }
        // A canary record in this chunk: reported by the exchange; with `canaries.block` the
        // document ends here, before the chunk that holds it goes out.
        let hits = rewriter.take_canary_hits();
        let blocked = !hits.is_empty() && self.guard.canaries.block;
        self.canary_hits.extend(hits);
        if blocked {
            return self.fail("canary_blocked");
        }
        if let Err(e) = result {
            if e == DocumentError::NotTokenizable && self.deliver_binary && self.mode == (Mode::Rewriting { released: false }) {
                // Sniffed as PDF/ZIP before any byte went: this role receives such documents as
                // they are — what the rewriter held, then this chunk.
                let mut raw = std::mem::take(&mut self.held);
                raw.extend_from_slice(&chunk);
                host.set_response_body(chunk.len(), &raw);
                self.bytes_out += raw.len() as u64;
                let compression = self.compression;
                let step = self.binary(host, compression);
                return if end_of_stream { self.on_body_binary_end(true) } else { step };
            }
            return self.fail(e.code());
        }
        host.set_response_body(chunk.len(), &self.out);
        self.bytes_out += self.out.len() as u64;
        if end_of_stream {
            self.mode = Mode::Done;
            self.result = "complete";
            return Step::Continue;
        }
        if self.out.is_empty() && self.mode == (Mode::Rewriting { released: false }) {
            // Nothing decided yet (a header row split across chunks): keep the headers, so a
            // document that fails now still gets a 502 (the drained chunk lives in the rewriter).
            if self.deliver_binary {
                self.held.extend_from_slice(&chunk);
            }
            return Step::Pause;
        }
        self.held = Vec::new();
        self.mode = Mode::Rewriting { released: true };
        Step::Continue
    }

    fn on_body_binary_end(&mut self, end_of_stream: bool) -> Step {
        if end_of_stream {
            self.mode = Mode::Done;
            self.result = "binary";
        }
        Step::Continue
    }

    /// Trailers end the document: what the rewriter still carries cannot be sent any more in
    /// this phase, so a document with a remainder is reset rather than cut.
    pub fn on_trailers(&mut self) -> Step {
        if self.mode == Mode::Binary {
            self.mode = Mode::Done;
            self.result = "binary";
            return Step::Continue;
        }
        let Mode::Rewriting { .. } = self.mode else { return Step::Continue };
        let Some(rewriter) = self.rewriter.as_mut() else { return self.fail("document_closed") };
        self.out.clear();
        match rewriter.finish(&mut self.out) {
            Ok(summary) if self.out.is_empty() => {
                self.summary = Some(summary);
                self.mode = Mode::Done;
                self.result = "complete";
                Step::Continue
            }
            Ok(_) => self.fail("document_trailers"),
            Err(e) => self.fail(e.code()),
        }
    }

    /// The document stream ended before its end (reset, disconnect): not complete.
    pub fn is_open(&self) -> bool {
        !matches!(self.mode, Mode::Done)
    }

    fn binary(&mut self, host: &mut dyn HttpHost, compression: Compression) -> Step {
        // Delivered as received: a gzip body keeps (or gets) its content-encoding.
        if compression == Compression::Gzip {
            host.set_response_header("content-encoding", Some("gzip"));
        }
        host.set_response_header("cache-control", Some("no-store"));
        self.mode = Mode::Binary;
        self.format = DocumentFormat::Binary;
        Step::Continue
    }

    fn refuse(&mut self, code: &'static str) -> Step {
        self.mode = Mode::Done;
        self.result = "refused";
        Step::Fail(code)
    }

    fn fail(&mut self, code: &'static str) -> Step {
        match self.mode {
            Mode::Rewriting { released: false } | Mode::Waiting => self.refuse(code),
            _ => {
                self.mode = Mode::Done;
                self.result = "reset";
                Step::Reset(code)
            }
        }
    }

    /// PII values protected in the document: all of them once it completed; for one that ended
    /// early (reset, disconnect), those protected until then — counted, not forgotten, by the
    /// audit event and the PII-volume lockout (the failing chunk's included: never fewer than went).
    pub fn counts(&self) -> FieldCounts {
        match (&self.summary, &self.rewriter) {
            (Some(summary), _) => summary.counts.clone(),
            (None, Some(rewriter)) => rewriter.counts_so_far().clone(),
            (None, None) => FieldCounts::default(),
        }
    }

    /// The canary records found since the last call (the exchange reports them as they come).
    pub fn take_canary_hits(&mut self) -> Vec<String> {
        std::mem::take(&mut self.canary_hits)
    }

    /// What the drift detectors found in the document (so far, for one that ended early).
    pub fn drift(&self) -> DriftFindings {
        match (&self.summary, &self.rewriter) {
            (Some(summary), _) => summary.drift.clone(),
            (None, Some(rewriter)) => rewriter.drift_so_far().clone(),
            (None, None) => DriftFindings::default(),
        }
    }

    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_in, self.bytes_out)
    }

    pub fn audit(&self) -> DocumentAudit {
        let format = self.summary.as_ref().map_or(self.format, |s| s.format);
        DocumentAudit {
            report_type: self.reference.report_type.clone(),
            format: format.as_str(),
            rows: self.summary.as_ref().map_or(0, |s| s.rows),
            unknown_columns: self.summary.as_ref().map_or(0, |s| s.unknown_columns),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            result: if self.is_open() && self.result == "aborted" { "aborted" } else { self.result },
        }
    }
}

/// Removes every response header but the pseudo-headers, [`KEPT_RESPONSE_HEADERS`] and `also`.
fn keep_only(host: &mut dyn HttpHost, also: &[&str]) {
    for name in host.response_header_names() {
        let lower = name.to_ascii_lowercase();
        if !lower.starts_with(':') && !KEPT_RESPONSE_HEADERS.contains(&lower.as_str()) && !also.contains(&lower.as_str()) {
            host.set_response_header(&name, None);
        }
    }
}

/// The SP-API-style error body of a document that could not be protected (no byte of it).
pub fn failure_body(code: &str) -> String {
    format!(r#"{{"errors":[{{"code":"PiiProtectionFailed","message":"The report document could not be protected, so it was not delivered.","details":"spapi-guard:{code}"}}]}}"#)
}
