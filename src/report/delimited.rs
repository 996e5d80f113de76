//! Tab- and comma-delimited reports (Amazon's flat files).
//!
//! The header row names the columns; the catalog (src/report/columns.rs) says which hold
//! customer data and their class. Each record is parsed byte by byte as it streams and written
//! to a row buffer: clear fields are copied as they are, protected fields are held until they
//! end and replaced by what the caller's action gives. A record goes out only once it ended
//! with as many fields as the header has: a malformed record (a missing or extra delimiter,
//! which would shift customer values into clear columns) is refused before any of it is sent.
//!
//! * Comma-separated: RFC 4180 quoting (quoted fields, doubled quotes, delimiters and line
//!   breaks inside quotes), strictly: a quote inside an unquoted field, or text after a closing
//!   quote other than a delimiter or line end, is refused — read leniently, a damaged quoted
//!   value could split into a clear column and keep the record's field count.
//! * Tab-separated: no quoting (Amazon's flat files and IANA `text/tab-separated-values` have
//!   none): a quote is a literal character, a field ends at a tab or line end.
//! * Line ends (LF or CRLF) and a byte order mark are kept as they are; an empty line passes.
//! * The header row goes out with the first data row, once that row has as many fields: a header
//!   that swallowed a data row is refused. A document of a header alone, or with one column, is
//!   accepted only if the catalog lists every name as it is (restricted reports).
//! * A column the catalog does not know (Amazon added it): in a restricted report (or one of an
//!   unknown type) every value is protected, as the class its name suggests; in a report Amazon
//!   does not list restricted, each value is read by the drift detectors (an email address, a
//!   phone number, an address line, a person's name under a name-like column) and protected or
//!   reported as the policy's `drift` section says: the safety net for PII the catalog cannot
//!   name.
use std::rc::Rc;

use super::columns::{Column, ReportCatalog};
use super::protect::{Outcome, ValueProtector};
use super::{DocumentError, MAX_CARRY_BYTES};
use crate::pii::PiiClass;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before a field's first byte.
    FieldStart,
    Unquoted,
    /// Inside quotes.
    Quoted,
    /// A quote inside a quoted field: a doubled quote or the closing one.
    QuoteInQuoted,
    /// A CR after a closing quote: a LF must follow.
    CrAfterQuote,
}

/// What is done with a column's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    Clear,
    Protect(PiiClass),
    /// Read by the drift detectors (an index into `detect_names`).
    Detect(usize),
}

/// The flat-file rewriter.
pub struct Delimited {
    delimiter: u8,
    quoting: bool,
    catalog: Rc<ReportCatalog>,
    restricted: bool,
    /// The policy runs drift detectors: unknown columns of a report that is not restricted are
    /// read by them.
    detecting: bool,
    /// What each column is; `None` while the header row is read.
    columns: Option<Vec<Col>>,
    /// The names of the columns the drift detectors read (normalized: lowercase words and `-`).
    detect_names: Vec<Box<str>>,
    /// The header's names, while it is read.
    names: Vec<Vec<u8>>,
    state: State,
    /// The current field's index in its record.
    col: usize,
    /// The current field's class, if protected.
    class: Option<PiiClass>,
    /// The current field's column, if the drift detectors read it.
    detect: Option<usize>,
    /// The current field is held (a protected value or a header name).
    capture: bool,
    /// The current field's bytes go to the row as they come (clear fields and header names).
    emit: bool,
    quoted: bool,
    /// Content bytes of the current field, and its last one.
    field_len: usize,
    last: u8,
    /// A CR that ended a protected quoted field, written after its replacement.
    pending_cr: bool,
    /// The held field (decoded: no quotes, doubled quotes single).
    value: Vec<u8>,
    /// The current record's output, sent when the record is complete and well-formed.
    row: Vec<u8>,
    /// Input bytes of the current record (the bound).
    record_len: usize,
    /// The header row is held until the first data row ends with as many fields: a header that
    /// swallowed a data row (a lost line end) is refused, not sent.
    header_pending: bool,
    /// Header names the catalog does not list as they are (unknown, or known by a prefix only).
    inexact_names: u32,
    pub rows: u64,
    /// Columns the catalog did not know: protected (restricted reports) or read by the drift
    /// detectors.
    pub unknown_columns: u32,
}

impl Delimited {
    pub fn new(delimiter: u8, catalog: Rc<ReportCatalog>, restricted: bool, detecting: bool) -> Delimited {
        Delimited {
            delimiter,
            quoting: delimiter != b'\t',
            catalog,
            restricted,
            detecting,
            columns: None,
            detect_names: Vec::new(),
            names: Vec::new(),
            state: State::FieldStart,
            col: 0,
            class: None,
            detect: None,
            capture: false,
            emit: true,
            quoted: false,
            field_len: 0,
            last: 0,
            pending_cr: false,
            value: Vec::new(),
            row: Vec::new(),
            record_len: 0,
            header_pending: false,
            inexact_names: 0,
            rows: 0,
            unknown_columns: 0,
        }
    }

    /// Bytes carried (the row being built and the held value).
    pub fn carry_len(&self) -> usize {
        self.row.len() + self.value.len() + self.names.iter().map(Vec::len).sum::<usize>()
    }

    /// Capacity held between pushes (the memory test's probe).
    pub fn carry_capacity(&self) -> usize {
        self.row.capacity() + self.value.capacity()
    }

    fn start_field(&mut self) {
        // A field past the header's count is protected (the record is refused at its end).
        let col = self.columns.as_ref().map(|cols| cols.get(self.col).copied().unwrap_or(Col::Protect(PiiClass::Other)));
        (self.class, self.detect) = match col {
            Some(Col::Protect(class)) => (Some(class), None),
            Some(Col::Detect(i)) => (None, Some(i)),
            Some(Col::Clear) | None => (None, None),
        };
        let header = self.columns.is_none();
        let held = self.class.is_some() || self.detect.is_some();
        self.capture = header || held;
        self.emit = header || !held;
        self.quoted = false;
        self.field_len = 0;
        self.pending_cr = false;
        self.value.clear();
    }

    /// Field content: to the row, to the held value, or both.
    fn content(&mut self, bytes: &[u8]) -> Result<(), DocumentError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.record_len += bytes.len();
        if self.record_len > MAX_CARRY_BYTES {
            return Err(DocumentError::FieldTooLarge);
        }
        self.field_len += bytes.len();
        self.last = bytes[bytes.len() - 1];
        if self.emit {
            self.row.extend_from_slice(bytes);
        }
        if self.capture {
            self.value.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// Markup (quotes, a CR after a closing quote): to the row unless the field is held.
    fn markup(&mut self, byte: u8) -> Result<(), DocumentError> {
        self.record_len += 1;
        if self.record_len > MAX_CARRY_BYTES {
            return Err(DocumentError::FieldTooLarge);
        }
        if self.emit {
            self.row.push(byte);
        }
        Ok(())
    }

    pub fn push(&mut self, mut data: &[u8], protector: &mut ValueProtector, out: &mut Vec<u8>) -> Result<(), DocumentError> {
        while let Some(&first) = data.first() {
            match self.state {
                State::FieldStart => {
                    self.start_field();
                    if self.quoting && first == b'"' {
                        self.quoted = true;
                        self.markup(b'"')?;
                        self.state = State::Quoted;
                        data = &data[1..];
                    } else {
                        self.state = State::Unquoted;
                    }
                }
                State::Unquoted => match memchr::memchr3(self.delimiter, b'\n', if self.quoting { b'"' } else { b'\n' }, data) {
                    // RFC 4180: no quote inside an unquoted field. (A lenient reading would let a
                    // damaged quoted value split into clear columns.)
                    Some(end) if data[end] == b'"' => return Err(DocumentError::MalformedDelimited),
                    Some(end) => {
                        self.content(&data[..end])?;
                        let term = data[end];
                        data = &data[end + 1..];
                        self.end_field(Some(term), protector, out)?;
                    }
                    None => {
                        self.content(data)?;
                        data = &[];
                    }
                },
                State::Quoted => match memchr::memchr(b'"', data) {
                    Some(end) => {
                        self.content(&data[..end])?;
                        self.markup(b'"')?;
                        self.state = State::QuoteInQuoted;
                        data = &data[end + 1..];
                    }
                    None => {
                        self.content(data)?;
                        data = &[];
                    }
                },
                State::QuoteInQuoted => {
                    data = &data[1..];
                    match first {
                        b'"' => {
                            // A doubled quote: one quote of content (the row has the first).
                            self.content(b"\"")?;
                            self.state = State::Quoted;
                        }
                        b'\r' => {
                            self.pending_cr = true;
                            self.state = State::CrAfterQuote;
                        }
                        b if b == self.delimiter || b == b'\n' => self.end_field(Some(b), protector, out)?,
                        _ => return Err(DocumentError::MalformedDelimited),
                    }
                }
                State::CrAfterQuote => {
                    if first != b'\n' {
                        return Err(DocumentError::MalformedDelimited);
                    }
                    data = &data[1..];
                    self.end_field(Some(b'\n'), protector, out)?;
                }
            }
        }
        Ok(())
    }

    /// The end of a field: `term` is the delimiter or LF that ended it (`None`: end of input).
    fn end_field(&mut self, term: Option<u8>, protector: &mut ValueProtector, out: &mut Vec<u8>) -> Result<(), DocumentError> {
        // An unquoted field's CR before the LF (or the end) is the line end's, not the value's.
        // (A field emitted as it came has its CR in the row already.)
        let mut cr = self.pending_cr;
        if matches!(term, Some(b'\n') | None) && !self.quoted && self.field_len > 0 && self.last == b'\r' {
            if self.capture {
                self.value.pop();
            }
            cr |= !self.emit;
            self.field_len -= 1;
        }
        if self.columns.is_none() {
            self.names.push(std::mem::take(&mut self.value));
        } else if let (Some(class), false) = (self.class, self.emit) {
            self.write_protected(class, protector);
        } else if let Some(i) = self.detect {
            let name = self.detect_names.get(i).map_or("*", |n| n.as_ref());
            match protector.detect(name, None, &self.value, || format!("column/{name}")) {
                Some(class) => self.write_protected(class, protector),
                None => self.write_kept(),
            }
        }
        if cr {
            self.row.push(b'\r');
        }
        if let Some(t) = term {
            self.row.push(t);
        }
        self.state = State::FieldStart;
        if term == Some(self.delimiter) {
            self.col += 1;
            return Ok(());
        }
        self.end_record(out)
    }

    /// The held field as it came: a quoted field's encoding is canonical (RFC 4180), so quoting
    /// the decoded value again gives the original bytes.
    fn write_kept(&mut self) {
        if self.quoted {
            quote_into(&self.value, &mut self.row);
        } else {
            self.row.extend_from_slice(&self.value);
        }
    }

    fn write_protected(&mut self, class: PiiClass, protector: &mut ValueProtector) {
        let quoted = self.quoted;
        match protector.apply(class, &self.value) {
            Outcome::Keep => self.write_kept(),
            Outcome::Empty if quoted => self.row.extend_from_slice(b"\"\""),
            Outcome::Empty => {}
            Outcome::Token(t) if quoted => {
                self.row.push(b'"');
                self.row.extend_from_slice(t.as_bytes());
                self.row.push(b'"');
            }
            Outcome::Token(t) => self.row.extend_from_slice(t.as_bytes()),
            // A policy's mask has no control characters; in a comma-separated file it is
            // quoted where it must be.
            Outcome::Mask(mask) if self.quoting && (quoted || mask.bytes().any(|b| b == self.delimiter || b == b'"')) => quote_into(mask.as_bytes(), &mut self.row),
            Outcome::Mask(mask) => self.row.extend_from_slice(mask.as_bytes()),
        }
    }

    fn end_record(&mut self, out: &mut Vec<u8>) -> Result<(), DocumentError> {
        let fields = self.col + 1;
        let empty_line = fields == 1 && !self.quoted && self.field_len == 0;
        match &self.columns {
            None => {
                let names = std::mem::take(&mut self.names);
                let mut columns = Vec::with_capacity(names.len());
                for (i, raw) in names.iter().enumerate() {
                    let raw = if i == 0 { raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw) } else { raw };
                    let name = String::from_utf8_lossy(raw);
                    self.inexact_names += u32::from(!self.catalog.knows(name.trim()));
                    columns.push(match self.catalog.column(name.trim()) {
                        Column::Pii(class) => Col::Protect(class),
                        Column::Clear => Col::Clear,
                        Column::Unknown(class) if self.restricted => {
                            self.unknown_columns += 1;
                            Col::Protect(class)
                        }
                        Column::Unknown(_) if self.detecting => {
                            self.unknown_columns += 1;
                            self.detect_names.push(column_label(name.trim()));
                            Col::Detect(self.detect_names.len() - 1)
                        }
                        Column::Unknown(_) => Col::Clear,
                    });
                }
                // One column: no field count to tell a header from a header that swallowed a row.
                if self.restricted && columns.len() == 1 && self.inexact_names > 0 {
                    return Err(DocumentError::MalformedDelimited);
                }
                self.columns = Some(columns);
                self.header_pending = true;
            }
            Some(_) if empty_line => {}
            Some(cols) if fields != cols.len() => return Err(DocumentError::MalformedDelimited),
            Some(_) => {
                self.rows += 1;
                self.header_pending = false;
            }
        }
        if !self.header_pending {
            out.extend_from_slice(&self.row);
            self.row.clear();
        }
        self.col = 0;
        self.record_len = 0;
        Ok(())
    }

    /// The end of the document: the last record may lack its line end; an open quote is refused.
    /// A header with no data row is sent only if the catalog lists every name as it is (in a
    /// restricted report): a header that swallowed a data row (a lost line end) is not sent.
    pub fn finish(&mut self, protector: &mut ValueProtector, out: &mut Vec<u8>) -> Result<(), DocumentError> {
        match self.state {
            State::Quoted | State::CrAfterQuote => return Err(DocumentError::MalformedDelimited),
            // Nothing since the last line end.
            State::FieldStart if self.col == 0 => {}
            State::FieldStart => {
                self.start_field();
                self.end_field(None, protector, out)?;
            }
            State::Unquoted | State::QuoteInQuoted => self.end_field(None, protector, out)?,
        }
        if self.header_pending {
            if self.restricted && self.inexact_names > 0 {
                return Err(DocumentError::MalformedDelimited);
            }
            out.extend_from_slice(&self.row);
            self.row.clear();
        }
        Ok(())
    }
}

/// A column's name as drift findings and metrics show it: the catalog's normalized form
/// (lowercase words joined by `-`), ASCII, at most 64 bytes, else `*` (a name is Amazon's, never a
/// value; the bound keeps labels short).
fn column_label(name: &str) -> Box<str> {
    let n = super::columns::normalize(name);
    if n.is_empty() || n.len() > 64 || !n.is_ascii() {
        return "*".into();
    }
    n.into()
}

/// `value` as a quoted field: in quotes, quotes doubled.
fn quote_into(value: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for part in value.split(|&b| b == b'"').enumerate() {
        if part.0 > 0 {
            out.extend_from_slice(b"\"\"");
        }
        out.extend_from_slice(part.1);
    }
    out.push(b'"');
}
