//! Report documents (issue #10): a streaming rewriter for the documents `getReportDocument`
//! points at — gzip or identity; tab- or comma-delimited flat files, XML, JSON; PDF/ZIP refused —
//! that protects each customer value with the caller's action for its class, using the same token
//! engine as responses, and copies every other byte unchanged.
//!
//! The rewriter is pure (no proxy-wasm call): the filter keeps one per download stream, pushes
//! each body chunk in and sends what comes out; its memory stays flat whatever the document's
//! size (compressed input is inflated in slices, and only the value being protected, the flat-file
//! record being built or an XML markup construct is carried, each bounded by [`MAX_CARRY_BYTES`]).
//!
//! ```ignore
//! // At the response headers of a download (the filter's side, src/exchange.rs):
//! let mut doc = DocumentRewriter::new(guard.clone(), actions, report_type, Compression::Gzip, now_ms)?;
//! // Each body chunk: what comes out replaces the chunk (it may be empty: bytes carried).
//! let mut out = Vec::new();
//! doc.push(chunk, &mut out)?;
//! // End of stream: the rest, and what was done (audit: rows, counts, bytes).
//! let summary = doc.finish(&mut out)?;
//! // Any Err(e): reset the stream, audit e.code(); never send `out` of the failed call.
//! ```
//!
//! Output is always uncompressed: the proxy serves documents decompressed. Once [`push`] or
//! [`finish`] returned an error the stream is dead (the filter resets it: a client never gets a
//! clear byte nor a silently truncated document it could take for complete).
//!
//! [`push`]: DocumentRewriter::push
//! [`finish`]: DocumentRewriter::finish
use std::fmt;
use std::rc::Rc;

use crate::canary::ChunkScanner;
use crate::drift::DriftFindings;
use crate::fail_closed::FailReason;
use crate::guard::{FieldCounts, Guard};
use crate::policy::ClassActions;

mod columns;
mod delimited;
pub mod inflate;
mod protect;
mod xml;

pub use columns::{normalize, Column, ReportCatalog, ReportInfo};
use delimited::Delimited;
use inflate::Gunzip;
use protect::ValueProtector;
use xml::Xml;

/// The largest single value, header row or markup construct the rewriter carries between pushes:
/// past it the document is refused (`field_too_large`), never buffered without bound.
pub const MAX_CARRY_BYTES: usize = 1024 * 1024;

/// What a document is, once decompressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentFormat {
    /// A flat file: tab-separated (`b'\t'`) or comma-separated (`b','`, RFC 4180 quoting).
    Delimited { delimiter: u8 },
    /// An XML document (`GET_ORDER_REPORT_DATA_*`).
    Xml,
    /// A JSON document (`END_USER_DATA_REPORT`).
    Json,
    /// A PDF or ZIP document (Easy Ship documents, labels): cannot be tokenized.
    Binary,
    /// Nothing recognizable.
    Unknown,
}

impl DocumentFormat {
    /// The name used in audit events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentFormat::Delimited { delimiter: b'\t' } => "tsv",
            DocumentFormat::Delimited { .. } => "csv",
            DocumentFormat::Xml => "xml",
            DocumentFormat::Json => "json",
            DocumentFormat::Binary => "binary",
            DocumentFormat::Unknown => "unknown",
        }
    }
}

/// How the document arrives from the document host (`compressionAlgorithm` of
/// `getReportDocument`, or the response's `content-encoding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Identity,
    Gzip,
}

/// What the first bytes of a (decompressed) document say it is: PDF or ZIP magic → `Binary`;
/// `<` → `Xml`; `{` or `[` → `Json` (after a UTF-8 byte order mark and white space); else the
/// header line: a tab → tab-delimited, else a comma → comma-delimited; else `Unknown`.
pub fn sniff(first_bytes: &[u8]) -> DocumentFormat {
    let text = first_bytes.strip_prefix(BOM).unwrap_or(first_bytes);
    if text.starts_with(b"%PDF") || text.starts_with(b"PK\x03\x04") || text.starts_with(b"PK\x05\x06") {
        return DocumentFormat::Binary;
    }
    let significant = text.iter().position(|b| !matches!(b, b' ' | b'\r' | b'\n')).map_or(&[][..], |i| &text[i..]);
    match significant.first() {
        Some(b'<') => return DocumentFormat::Xml,
        Some(b'{' | b'[') => return DocumentFormat::Json,
        _ => {}
    }
    let line = &significant[..memchr::memchr(b'\n', significant).unwrap_or(significant.len())];
    if memchr::memchr(b'\t', line).is_some() {
        DocumentFormat::Delimited { delimiter: b'\t' }
    } else if memchr::memchr(b',', line).is_some() {
        DocumentFormat::Delimited { delimiter: b',' }
    } else {
        DocumentFormat::Unknown
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What the built-in catalog knows of a report type: whether Amazon lists it restricted, its
/// format (`tsv`, `csv`, `xml`, `json`, `pdf`), its documented columns. `None` for a type it
/// does not know (the rewriter treats those as restricted).
pub fn report_info(report_type: &str) -> Option<ReportInfo> {
    ReportCatalog::builtin().ok()?.report(report_type).cloned()
}

/// Why a document could not be rewritten. Carries no byte of the document: no PII in errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocumentError {
    /// A PDF or ZIP document (or a report type known to be one): values cannot be found in it.
    NotTokenizable,
    /// Not a format the rewriter reads.
    UnknownFormat,
    /// The gzip stream is corrupt, truncated, or its CRC-32 / length check failed.
    CorruptGzip,
    /// A flat file that does not parse (a quote that does not close, a row with another number
    /// of fields than the header).
    MalformedDelimited,
    /// An XML document that is not well-formed.
    MalformedXml,
    /// A JSON document that is not valid JSON.
    InvalidJson,
    /// A value, header row or markup construct past [`MAX_CARRY_BYTES`].
    FieldTooLarge,
    /// A JSON document past the policy's body limit (it cannot be streamed).
    DocumentTooLarge,
    /// A class to tokenize or hash has no active key.
    NoActiveKey,
    /// One push's decompressed output past [`MAX_OUTPUT_PER_PUSH`].
    OutputTooLarge,
    /// The built-in column catalog does not load (a build defect: unit tests load it).
    BuiltinCatalog,
    /// `push` or `finish` after an error, or after `finish`.
    Closed,
}

impl DocumentError {
    /// Stable reason code (audit events, metrics).
    pub fn code(&self) -> &'static str {
        match self {
            DocumentError::NotTokenizable => "not_tokenizable",
            DocumentError::UnknownFormat => "unknown_document_format",
            DocumentError::CorruptGzip => "corrupt_gzip",
            DocumentError::MalformedDelimited => "malformed_flat_file",
            DocumentError::MalformedXml => "malformed_xml",
            DocumentError::InvalidJson => "invalid_json",
            DocumentError::FieldTooLarge => "field_too_large",
            DocumentError::DocumentTooLarge => "document_too_large",
            DocumentError::NoActiveKey => "no_active_key",
            DocumentError::OutputTooLarge => "output_too_large",
            DocumentError::BuiltinCatalog => "report_catalog_invalid",
            DocumentError::Closed => "document_closed",
        }
    }
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// What was done to a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentSummary {
    pub format: DocumentFormat,
    /// The report type the rewriter was told (or `None`).
    pub report_type: Option<String>,
    /// Data rows: flat files, the records after the header (blank lines not counted); XML, the
    /// `Message` elements of the envelope; JSON, 0 (not counted).
    pub rows: u64,
    /// PII values by class and action.
    pub counts: FieldCounts,
    /// Bytes received (compressed, as pushed).
    pub bytes_in: u64,
    /// Bytes written (uncompressed, rewritten).
    pub bytes_out: u64,
    /// Flat-file columns the catalog does not know: protected because the report is restricted
    /// (or of an unknown type), else read by the drift detectors. A sign Amazon added columns.
    pub unknown_columns: u32,
    /// What the drift detectors found (columns and elements no catalog entry names).
    pub drift: DriftFindings,
}

/// Bytes of decompressed input one `push` may turn into before the document is refused
/// (`output_too_large`): a gzip "bomb" cannot grow one push's output without bound. Envoy hands
/// the filter at most the documents cluster's read size at a time (64 KiB; lint-envoy's
/// `document-buffer` allows 256 KiB): report text inflates 5–20×, so 16 MiB is far above any
/// real report and a bomb costs at most this (and the VM keeps what it once grew to).
pub const MAX_OUTPUT_PER_PUSH: usize = 16 * 1024 * 1024;

/// Bytes one `push` may write (tokens are longer than the values they replace: a bomb of tiny
/// values grows more in the rewrite than in the inflate).
fn max_written(max_inflated: usize) -> usize {
    2 * max_inflated
}

/// The object a JSON report of unknown type is wrapped in (see `Core::finish`).
const JSON_WRAP_OPEN: &[u8] = b"{\"document\":";
const JSON_WRAP_CLOSE: &[u8] = b"}";

/// Bytes held before the format is decided: the header line (or the first bytes of XML or
/// JSON) must be within them.
const SNIFF_BYTES: usize = 64 * 1024;

/// The document after decompression, as far as it is known.
enum Body {
    /// Not decided yet: the first bytes, held.
    Sniffing(Vec<u8>),
    Delimited(Delimited),
    Xml(Xml),
    /// Held whole (bounded by the policy's body limit), rewritten at the end.
    Json(Vec<u8>),
}

/// The format layer: what decompressed bytes become.
struct Core {
    body: Body,
    protector: ValueProtector,
    catalog: Rc<ReportCatalog>,
    report_type: Option<String>,
    restricted: bool,
    /// The format the catalog gives the report type (a one-column flat file has no delimiter
    /// to sniff).
    expected: DocumentFormat,
    format: DocumentFormat,
    now_ms: u64,
    /// Decompressed bytes of this push, and their bound.
    inflated: usize,
    max_inflated: usize,
    /// Where this push's output starts in `out` (the bound on what one push writes).
    out_start: usize,
    /// The policy's canary records, looked for in the decompressed text as it streams (a value
    /// split across chunks included), and the ids found and not yet taken.
    canary_scanner: ChunkScanner,
    canary_hits: Vec<String>,
}

/// One document being rewritten. Holds no borrowed data: the filter keeps it per stream.
pub struct DocumentRewriter {
    core: Core,
    compression: Compression,
    /// The inflater, once the input is known to be gzip (declared, or its magic bytes).
    gunzip: Option<Box<Gunzip>>,
    started: bool,
    bytes_in: u64,
    bytes_out: u64,
    closed: bool,
}

impl DocumentRewriter {
    /// A rewriter for one document of `report_type` (if known), applying `actions` per class
    /// (the caller's levels, as [`Guard::protect_response_with`] takes) with the keys active at
    /// `now_ms`. Refuses at once a report type known not to be tokenizable (`not_tokenizable`)
    /// and a class to tokenize without an active key (`no_active_key`).
    ///
    /// `compression` is what the pointer or the response declared; a document that starts with
    /// the gzip magic bytes is inflated whatever was declared.
    pub fn new(guard: Rc<Guard>, actions: ClassActions, report_type: Option<&str>, compression: Compression, now_ms: u64) -> Result<DocumentRewriter, DocumentError> {
        let catalog = ReportCatalog::builtin().map_err(|_| DocumentError::BuiltinCatalog)?;
        let info = report_type.and_then(|t| catalog.report(t));
        if info.is_some_and(|i| i.format == "pdf") {
            return Err(DocumentError::NotTokenizable);
        }
        // A report type the catalog does not know (or none) is treated as restricted.
        let restricted = info.is_none_or(|i| i.restricted);
        let expected = info.map_or(DocumentFormat::Unknown, |i| match i.format.as_str() {
            "tsv" => DocumentFormat::Delimited { delimiter: b'\t' },
            "csv" => DocumentFormat::Delimited { delimiter: b',' },
            _ => DocumentFormat::Unknown,
        });
        let protector = ValueProtector::new(guard, actions, now_ms)?;
        Ok(DocumentRewriter {
            core: Core {
                body: Body::Sniffing(Vec::new()),
                protector,
                catalog,
                report_type: report_type.map(str::to_string),
                restricted,
                expected,
                format: DocumentFormat::Unknown,
                now_ms,
                inflated: 0,
                max_inflated: MAX_OUTPUT_PER_PUSH,
                out_start: 0,
                canary_scanner: ChunkScanner::default(),
                canary_hits: Vec::new(),
            },
            compression,
            gunzip: None,
            started: false,
            bytes_in: 0,
            bytes_out: 0,
            closed: false,
        })
    }

    /// Rewrites as much of the document as can be decided, appending to `out`; bytes not yet
    /// decidable (a value or record split across chunks, an unfinished header row) are carried,
    /// bounded. On an error, what this call appended must not be sent (the stream is dead).
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DocumentError> {
        if self.closed {
            return Err(DocumentError::Closed);
        }
        let before = out.len();
        let result = self.push_inner(input, out);
        self.bytes_out += (out.len() - before) as u64;
        if result.is_err() {
            self.closed = true;
        }
        result
    }

    fn push_inner(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DocumentError> {
        self.bytes_in += input.len() as u64;
        if !self.started && !input.is_empty() {
            self.started = true;
            if self.compression == Compression::Gzip || input[0] == 0x1f {
                self.gunzip = Some(Box::default());
            }
        }
        self.core.inflated = 0;
        self.core.out_start = out.len();
        let core = &mut self.core;
        match &mut self.gunzip {
            Some(g) => g.push(input, &mut |slice| core.feed(slice, out)),
            None => core.feed(input, out),
        }
    }

    /// The ids of the canary records found in the document since the last call, each once (an id
    /// found again in a later push comes again: the exchange reports each canary once). They are
    /// found before the bytes that hold them are written to `out`.
    pub fn take_canary_hits(&mut self) -> Vec<String> {
        std::mem::take(&mut self.core.canary_hits)
    }

    /// The PII values protected so far (the summary's counts before `finish`): what an audit event
    /// and the PII-volume lockout count for a document that ends early (a reset, a disconnect).
    pub fn counts_so_far(&self) -> &FieldCounts {
        &self.core.protector.counts
    }

    /// What the drift detectors found so far (the summary's before `finish`).
    pub fn drift_so_far(&self) -> &DriftFindings {
        &self.core.protector.drift
    }

    /// The end of the document: flushes what was carried, verifies it is complete (the gzip
    /// CRC-32 and length, no open quote or element) and returns the summary.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<DocumentSummary, DocumentError> {
        if self.closed {
            return Err(DocumentError::Closed);
        }
        self.closed = true;
        if self.compression == Compression::Gzip && !self.started {
            // Declared gzip, and nothing came: not even a header.
            return Err(DocumentError::CorruptGzip);
        }
        if let Some(g) = &self.gunzip {
            g.finish()?;
        }
        let before = out.len();
        let rows = self.core.finish(out)?;
        self.bytes_out += (out.len() - before) as u64;
        Ok(DocumentSummary {
            format: self.core.format,
            report_type: self.core.report_type.clone(),
            rows,
            counts: self.core.protector.counts.clone(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            unknown_columns: match &self.core.body {
                Body::Delimited(d) => d.unknown_columns,
                _ => 0,
            },
            drift: self.core.protector.drift.clone(),
        })
    }

    /// Sets the bound of one push's decompressed output (tests).
    #[cfg(test)]
    fn set_max_output_per_push(&mut self, bytes: usize) {
        self.core.max_inflated = bytes;
    }

    /// The format, once the first bytes decided it (`Unknown` before).
    pub fn format(&self) -> DocumentFormat {
        self.core.format
    }

    /// Bytes carried between pushes right now (the memory test's probe): held values, the
    /// record being built, undecided first bytes, a JSON document.
    pub fn carry_len(&self) -> usize {
        match &self.core.body {
            Body::Sniffing(b) | Body::Json(b) => b.len(),
            Body::Delimited(d) => d.carry_len(),
            Body::Xml(x) => x.carry_len(),
        }
    }

    /// Bytes of heap the rewriter holds beyond its fixed parts (buffers' capacities and the
    /// token memo): what must stay flat over a document of any size.
    pub fn held_bytes(&self) -> usize {
        let body = match &self.core.body {
            Body::Sniffing(b) | Body::Json(b) => b.capacity(),
            Body::Delimited(d) => d.carry_capacity(),
            Body::Xml(x) => x.carry_len(),
        };
        body + self.core.protector.memo_bytes()
    }
}

impl Core {
    /// Decompressed bytes as they come: looked at for canaries, then rewritten.
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), DocumentError> {
        let canaries = &self.protector.guard().canaries;
        if !canaries.is_empty() {
            for id in self.canary_scanner.feed(canaries, data) {
                if !self.canary_hits.iter().any(|h| h == id) {
                    self.canary_hits.push(id.to_string());
                }
            }
        }
        self.push(data, out)?;
        if out.len() - self.out_start > max_written(self.max_inflated) {
            return Err(DocumentError::OutputTooLarge);
        }
        Ok(())
    }

    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), DocumentError> {
        self.inflated += data.len();
        if self.inflated > self.max_inflated {
            return Err(DocumentError::OutputTooLarge);
        }
        match &mut self.body {
            Body::Sniffing(held) => {
                held.extend_from_slice(data);
                // A line after the first significant byte (blank lines and a BOM say nothing).
                let text = held.strip_prefix(BOM).unwrap_or(held);
                let significant = text.iter().position(|b| !matches!(b, b' ' | b'\r' | b'\n'));
                let decided = significant.is_some_and(|i| memchr::memchr(b'\n', &text[i..]).is_some()) || held.len() >= SNIFF_BYTES;
                if decided {
                    let held = std::mem::take(held);
                    self.decide(&held, out)?;
                }
                Ok(())
            }
            Body::Delimited(d) => d.push(data, &mut self.protector, out),
            Body::Xml(x) => x.push(data, &mut self.protector, out),
            Body::Json(held) => {
                if held.len() + data.len() > self.protector.guard().policy.max_body_bytes {
                    return Err(DocumentError::DocumentTooLarge);
                }
                held.extend_from_slice(data);
                Ok(())
            }
        }
    }

    /// Decides the format from the first bytes, and rewrites them.
    fn decide(&mut self, first: &[u8], out: &mut Vec<u8>) -> Result<(), DocumentError> {
        self.format = match sniff(first) {
            DocumentFormat::Unknown => self.expected,
            sniffed => sniffed,
        };
        self.body = match self.format {
            DocumentFormat::Delimited { delimiter } => Body::Delimited(Delimited::new(delimiter, self.catalog.clone(), self.restricted, self.protector.detecting())),
            DocumentFormat::Xml => Body::Xml(Xml::new(self.catalog.clone(), self.protector.detecting())),
            DocumentFormat::Json => Body::Json(Vec::new()),
            DocumentFormat::Binary => return Err(DocumentError::NotTokenizable),
            DocumentFormat::Unknown => return Err(DocumentError::UnknownFormat),
        };
        self.push(first, out)
    }

    /// The end of the decompressed document; returns the rows.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<u64, DocumentError> {
        if let Body::Sniffing(held) = &mut self.body {
            if held.iter().all(u8::is_ascii_whitespace) {
                // An empty document (or white space): nothing to protect, passed as it is.
                out.extend_from_slice(held);
                return Ok(0);
            }
            let held = std::mem::take(held);
            self.decide(&held, out)?;
        }
        match &mut self.body {
            Body::Sniffing(_) => Ok(0),
            Body::Delimited(d) => {
                d.finish(&mut self.protector, out)?;
                Ok(d.rows)
            }
            Body::Xml(x) => {
                x.finish()?;
                Ok(x.rows)
            }
            Body::Json(held) => {
                let op = self.catalog.json_operation(self.report_type.as_deref()).ok_or(DocumentError::UnknownFormat)?;
                // A report of unknown type is one customer object: wrapped in one, so that values
                // at its top (an array's loose strings, nested arrays) are members of it too; the
                // wrapper's bytes come back unchanged and are taken off.
                let wrap = self.catalog.is_unknown_json(&op);
                let wrapped;
                let body: &[u8] = if wrap {
                    wrapped = [JSON_WRAP_OPEN, held.as_slice(), JSON_WRAP_CLOSE].concat();
                    &wrapped
                } else {
                    held
                };
                let guard = self.protector.guard();
                let protected = guard.protect_response_at(&op, body, self.protector.actions(), self.now_ms).map_err(|e| match e {
                    FailReason::BodyTooLarge => DocumentError::DocumentTooLarge,
                    FailReason::NoActiveKey => DocumentError::NoActiveKey,
                    _ => DocumentError::InvalidJson,
                })?;
                let rewritten = protected.body.as_deref().unwrap_or(body);
                let inner = if wrap { rewritten.strip_prefix(JSON_WRAP_OPEN).and_then(|r| r.strip_suffix(JSON_WRAP_CLOSE)).ok_or(DocumentError::InvalidJson)? } else { rewritten };
                out.extend_from_slice(inner);
                self.protector.counts = protected.counts;
                self.protector.drift = protected.drift;
                Ok(0)
            }
        }
    }
}

/// `data` as one gzip member (deflate at `level`, 0–10): for tests, benches and the fuzzer.
#[doc(hidden)]
pub fn gzip(data: &[u8], level: u8) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(data, level));
    let mut crc = inflate::Crc32::new();
    crc.update(data);
    out.extend_from_slice(&crc.value().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The tokens (`spgt1.…`) in `text`, in order: for tests and the fuzzer.
#[doc(hidden)]
pub fn find_tokens(text: &[u8]) -> Vec<&str> {
    let prefix = crate::tokens::TOKEN_PREFIX.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = memchr::memmem::find(&text[at..], prefix) {
        let start = at + i;
        let len = text[start..].iter().position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))).unwrap_or(text.len() - start);
        if let Ok(t) = std::str::from_utf8(&text[start..start + len]) {
            found.push(t);
        }
        at = start + len.max(1);
    }
    found
}

#[cfg(test)]
mod tests;
