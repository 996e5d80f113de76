//! XML reports (`GET_ORDER_REPORT_DATA_*`): a small streaming reader of its own, byte-faithful —
//! only the text of customer elements changes.
//!
//! Why not quick-xml: it would add a crate for what is a few states here, and writing the
//! document back byte for byte (attribute quoting, white space in tags, entity spelling) is
//! simpler when nothing is re-serialized: every byte outside a protected text run is copied.
//!
//! * Element paths from the catalog (`BillingData/BuyerEmailAddress`, any case, matched at the
//!   end of the element's path) name customer elements; inside a container
//!   (`FulfillmentData/Address`) every element is customer data but the listed clear ones, with
//!   the class its name says, else the container's; elements nested in a customer element are
//!   its class.
//! * A protected text run — text and CDATA sections up to the next tag, comment or processing
//!   instruction — is decoded (the five predefined entities, character references) and replaced
//!   as one value; a token needs no escaping, a mask is escaped. Attribute values of customer
//!   elements are protected the same way (class from the attribute's name, else the element's;
//!   namespace declarations excepted).
//! * Text of an element no catalog entry names (Amazon added it) is read by the drift detectors
//!   when the policy runs them (an email address, a phone number, an address line, a person's
//!   name under a name-like element), held for that up to [`DETECT_RUN_BYTES`] (a longer run is
//!   no single value a detector reads: it passes), and protected or reported as the policy's
//!   `drift` section says; undecodable entities there leave the run as it came.
//! * Refused (`malformed_xml`): a tag that does not close, an end tag that does not match, text
//!   outside the root element, a second root, an unknown entity in a protected run, a DOCTYPE
//!   with an internal subset (entity declarations could hide values), and the end of input
//!   inside the root element.
use std::rc::Rc;

use super::columns::ReportCatalog;
use super::protect::{Outcome, ValueProtector};
use super::{DocumentError, MAX_CARRY_BYTES};
use crate::drift::class_from_key;
use crate::pii::PiiClass;

/// Elements nested deeper than this are refused (a bounded stack).
const MAX_DEPTH: usize = 256;

/// Raw bytes of a text run held for the drift detectors (they read values up to 2,048 bytes; an
/// entity-encoded value may be longer raw).
pub const DETECT_RUN_BYTES: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Undecided,
    Tag,
    EndTag,
    Comment,
    Cdata,
    Pi,
    Decl,
}

struct Elem {
    /// The name as written (end tags must match it exactly).
    name: Box<[u8]>,
    /// The lowercase name (catalog paths match in any case).
    lower: Box<str>,
    class: Option<PiiClass>,
    /// The customer container this element is in (an index into the catalog's containers).
    container: Option<usize>,
}

pub struct Xml {
    catalog: Rc<ReportCatalog>,
    stack: Vec<Elem>,
    in_markup: bool,
    kind: Kind,
    /// The markup construct being read, from its `<`.
    markup: Vec<u8>,
    /// The quote an attribute value is in (0: none).
    quote: u8,
    /// A protected run (or one held for the drift detectors): its original bytes, its text not yet
    /// decoded, its decoded value.
    run_raw: Vec<u8>,
    text_raw: Vec<u8>,
    value: Vec<u8>,
    /// The policy runs drift detectors: text of elements no catalog entry names is read by them.
    detecting: bool,
    /// The run held for the detectors outgrew [`DETECT_RUN_BYTES`] and went out as it came; the
    /// rest of it passes.
    run_spilled: bool,
    /// The run held for the detectors has an entity that does not decode: kept as it came.
    run_undecodable: bool,
    root_seen: bool,
    /// Bytes seen (for the byte order mark at the start).
    seen: u64,
    pub rows: u64,
}

impl Xml {
    pub fn new(catalog: Rc<ReportCatalog>, detecting: bool) -> Xml {
        Xml {
            catalog,
            stack: Vec::new(),
            in_markup: false,
            kind: Kind::Undecided,
            markup: Vec::new(),
            quote: 0,
            run_raw: Vec::new(),
            text_raw: Vec::new(),
            value: Vec::new(),
            detecting,
            run_spilled: false,
            run_undecodable: false,
            root_seen: false,
            seen: 0,
            rows: 0,
        }
    }

    pub fn carry_len(&self) -> usize {
        self.markup.len() + self.run_raw.len() + self.text_raw.len() + self.value.len()
    }

    fn protecting(&self) -> Option<PiiClass> {
        self.stack.last().and_then(|e| e.class)
    }

    /// Whether text here is held for the drift detectors (inside an element no entry names).
    fn detect_holding(&self) -> bool {
        self.detecting && !self.run_spilled && self.stack.last().is_some_and(|e| e.class.is_none())
    }

    /// A run held for the detectors that outgrew them: out as it came, and the rest passes.
    fn spill(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.run_raw);
        out.extend_from_slice(&self.text_raw);
        self.run_raw.clear();
        self.text_raw.clear();
        self.value.clear();
        self.run_spilled = true;
    }

    pub fn push(&mut self, mut data: &[u8], protector: &mut ValueProtector, out: &mut Vec<u8>) -> Result<(), DocumentError> {
        if self.seen == 0 && data.starts_with(b"\xEF\xBB\xBF") {
            out.extend_from_slice(&data[..3]);
            data = &data[3..];
        }
        self.seen += data.len() as u64;
        while !data.is_empty() {
            if self.in_markup {
                let (used, complete) = self.scan_markup(data)?;
                data = &data[used..];
                if complete {
                    self.in_markup = false;
                    self.on_markup(protector, out)?;
                }
                continue;
            }
            let end = memchr::memchr(b'<', data);
            let text = &data[..end.unwrap_or(data.len())];
            if self.protecting().is_some() {
                self.text_raw.extend_from_slice(text);
                if self.text_raw.len() + self.run_raw.len() > MAX_CARRY_BYTES {
                    return Err(DocumentError::FieldTooLarge);
                }
            } else if self.detect_holding() {
                self.text_raw.extend_from_slice(text);
                if self.text_raw.len() + self.run_raw.len() > DETECT_RUN_BYTES {
                    self.spill(out);
                }
            } else {
                if self.stack.is_empty() && !text.iter().all(u8::is_ascii_whitespace) {
                    return Err(DocumentError::MalformedXml);
                }
                out.extend_from_slice(text);
            }
            match end {
                Some(e) => {
                    self.end_text()?;
                    self.in_markup = true;
                    self.kind = Kind::Undecided;
                    self.quote = 0;
                    self.markup.clear();
                    self.markup.push(b'<');
                    data = &data[e + 1..];
                }
                None => data = &[],
            }
        }
        Ok(())
    }

    /// A text run ended (at a `<`): a protected one is decoded into the value.
    fn end_text(&mut self) -> Result<(), DocumentError> {
        if self.text_raw.is_empty() {
            return Ok(());
        }
        if self.protecting().is_some() {
            decode_entities(&self.text_raw, &mut self.value)?;
        } else if decode_entities(&self.text_raw, &mut self.value).is_err() {
            // Held for the detectors only: what this filter cannot decode passes as it came (as
            // all text outside customer elements does).
            self.run_undecodable = true;
        }
        self.run_raw.extend_from_slice(&self.text_raw);
        self.text_raw.clear();
        Ok(())
    }

    /// Reads markup bytes; returns the bytes used and whether the construct is complete.
    fn scan_markup(&mut self, data: &[u8]) -> Result<(usize, bool), DocumentError> {
        for (i, &b) in data.iter().enumerate() {
            self.markup.push(b);
            if self.markup.len() > MAX_CARRY_BYTES {
                return Err(DocumentError::FieldTooLarge);
            }
            if self.kind == Kind::Undecided {
                self.kind = classify(&self.markup);
            }
            let m = &self.markup;
            let done = match self.kind {
                Kind::Undecided => false,
                // `--` inside a comment is not XML: a comment that swallows elements (a lost
                // `>`) is refused, never passed on with the values in it.
                Kind::Comment if m.len() > 6 && m[..m.len() - 1].ends_with(b"--") && b != b'>' => return Err(DocumentError::MalformedXml),
                Kind::Comment => m.len() >= 7 && m.ends_with(b"-->"),
                Kind::Cdata => m.len() >= 12 && m.ends_with(b"]]>"),
                Kind::Pi => m.len() >= 4 && m.ends_with(b"?>"),
                Kind::Decl if b == b'[' => return Err(DocumentError::MalformedXml),
                Kind::Decl => b == b'>',
                Kind::Tag | Kind::EndTag => match (self.quote, b) {
                    (0, b'"' | b'\'') => {
                        self.quote = b;
                        false
                    }
                    (0, b'>') => true,
                    (0, b'<') => return Err(DocumentError::MalformedXml),
                    (q, _) if q == b => {
                        self.quote = 0;
                        false
                    }
                    _ => false,
                },
            };
            if done {
                return Ok((i + 1, true));
            }
        }
        Ok((data.len(), false))
    }

    fn on_markup(&mut self, protector: &mut ValueProtector, out: &mut Vec<u8>) -> Result<(), DocumentError> {
        match self.kind {
            Kind::Cdata if self.stack.is_empty() => return Err(DocumentError::MalformedXml),
            Kind::Cdata if self.protecting().is_some() || self.detect_holding() => {
                let m = &self.markup;
                self.value.extend_from_slice(&m[9..m.len() - 3]);
                self.run_raw.extend_from_slice(m);
                if self.protecting().is_some() && self.run_raw.len() > MAX_CARRY_BYTES {
                    return Err(DocumentError::FieldTooLarge);
                }
                if self.protecting().is_none() && self.run_raw.len() > DETECT_RUN_BYTES {
                    self.spill(out);
                }
                return Ok(());
            }
            Kind::Tag => {
                self.flush_run(protector, out);
                if let Some(class) = self.start_tag()? {
                    return self.write_start_tag(class, protector, out);
                }
            }
            Kind::EndTag => {
                self.flush_run(protector, out);
                self.end_tag()?;
            }
            Kind::Decl if self.root_seen => return Err(DocumentError::MalformedXml),
            _ => self.flush_run(protector, out),
        }
        out.extend_from_slice(&self.markup);
        Ok(())
    }

    /// Replaces the protected run with what the caller's action gives.
    fn flush_run(&mut self, protector: &mut ValueProtector, out: &mut Vec<u8>) {
        let held = !self.run_raw.is_empty();
        let class = match self.protecting() {
            Some(class) => Some(class),
            None if held && !self.run_undecodable => {
                let (key, parent) = self.element_names();
                let stack = &self.stack;
                protector.detect(&key, parent.as_deref(), &self.value, || element_path(stack))
            }
            None => None,
        };
        if held {
            match class.map(|c| protector.apply(c, &self.value)) {
                None | Some(Outcome::Keep) => out.extend_from_slice(&self.run_raw),
                Some(Outcome::Empty) => {}
                Some(Outcome::Token(t)) => out.extend_from_slice(t.as_bytes()),
                Some(Outcome::Mask(mask)) => escape_into(mask, out),
            }
        }
        self.run_raw.clear();
        self.value.clear();
        self.run_spilled = false;
        self.run_undecodable = false;
    }

    /// The current element's name and its parent's, as written (the detectors' member names:
    /// `RecipientName` reads as two words, `recipientname` as one).
    fn element_names(&self) -> (String, Option<String>) {
        // The local name, as the catalog matches (a namespace prefix is no word of the name).
        let name = |e: &Elem| String::from_utf8_lossy(local_name(&e.name)).into_owned();
        let key = self.stack.last().map(name).unwrap_or_default();
        let parent = self.stack.len().checked_sub(2).and_then(|i| self.stack.get(i)).map(name);
        (key, parent)
    }

    /// Reads a start tag; returns the element's class (its attribute values are protected too).
    fn start_tag(&mut self) -> Result<Option<PiiClass>, DocumentError> {
        let m = &self.markup;
        let self_closing = m.ends_with(b"/>");
        let body = &m[1..m.len() - if self_closing { 2 } else { 1 }];
        let name_len = body.iter().position(|b| b.is_ascii_whitespace()).unwrap_or(body.len());
        let name = &body[..name_len];
        if !is_name(name) || !attributes_are_well_formed(&body[name_len..]) {
            return Err(DocumentError::MalformedXml);
        }
        if self.stack.is_empty() {
            if self.root_seen {
                return Err(DocumentError::MalformedXml);
            }
            self.root_seen = true;
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(DocumentError::MalformedXml);
        }
        // Matched by the local name: a namespace prefix hides no customer element.
        let lower: Box<str> = String::from_utf8_lossy(local_name(name)).to_ascii_lowercase().into();
        let (class, container) = self.classify_element(&lower);
        if self_closing {
            if self.stack.len() == 1 && lower.as_ref() == "message" {
                self.rows += 1;
            }
            return Ok(class);
        }
        self.stack.push(Elem { name: name.into(), lower, class, container });
        Ok(class)
    }

    /// Writes a customer element's start tag with each attribute value protected (namespace
    /// declarations excepted), every other byte as it came.
    fn write_start_tag(&self, class: PiiClass, protector: &mut ValueProtector, out: &mut Vec<u8>) -> Result<(), DocumentError> {
        let m = &self.markup;
        let name_end = m.iter().position(|b| b.is_ascii_whitespace() || *b == b'/' || *b == b'>').unwrap_or(m.len());
        let Some(attrs) = attributes(&m[name_end..m.len() - if m.ends_with(b"/>") { 2 } else { 1 }]) else { return Err(DocumentError::MalformedXml) };
        let mut copied = 0;
        let mut value = Vec::new();
        for a in attrs {
            if a.name == b"xmlns" || a.name.starts_with(b"xmlns:") {
                continue;
            }
            let range = name_end + a.value.start..name_end + a.value.end;
            out.extend_from_slice(&m[copied..range.start]);
            value.clear();
            decode_entities(&m[range.clone()], &mut value)?;
            let class = class_from_key(&String::from_utf8_lossy(a.name)).unwrap_or(class);
            match protector.apply(class, &value) {
                Outcome::Keep => out.extend_from_slice(&m[range.clone()]),
                Outcome::Empty => {}
                Outcome::Token(t) => out.extend_from_slice(t.as_bytes()),
                Outcome::Mask(mask) => escape_into(mask, out),
            }
            copied = range.end;
        }
        out.extend_from_slice(&m[copied..]);
        Ok(())
    }

    /// The class of a new element `lower` under the current stack, and its container.
    fn classify_element(&self, lower: &str) -> (Option<PiiClass>, Option<usize>) {
        let ends_with = |path: &[String]| -> bool {
            let Some((last, parents)) = path.split_last() else { return false };
            if last != lower || parents.len() > self.stack.len() {
                return false;
            }
            self.stack[self.stack.len() - parents.len()..].iter().zip(parents).all(|(e, p)| e.lower.as_ref() == p)
        };
        let cat = &self.catalog;
        let parent = self.stack.last();
        let rule = cat.xml_rules.iter().filter(|r| ends_with(&r.path)).max_by_key(|r| r.path.len()).map(|r| r.class);
        if let Some(i) = cat.xml_containers.iter().position(|c| ends_with(&c.path)) {
            return (Some(rule.unwrap_or(cat.xml_containers[i].class)), Some(i));
        }
        let container = parent.and_then(|p| p.container);
        if rule.is_some() {
            return (rule, container);
        }
        if let Some(c) = container.and_then(|i| cat.xml_containers.get(i)) {
            if c.clear.iter().any(|n| n == lower) {
                return (None, container);
            }
            return (Some(class_from_key(lower).unwrap_or(c.class)), container);
        }
        (parent.and_then(|p| p.class), None)
    }

    fn end_tag(&mut self) -> Result<(), DocumentError> {
        let m = &self.markup;
        let name = m[2..m.len() - 1].trim_ascii_end();
        match self.stack.pop() {
            Some(e) if *e.name == *name => {
                if self.stack.len() == 1 && e.lower.as_ref() == "message" {
                    self.rows += 1;
                }
                Ok(())
            }
            _ => Err(DocumentError::MalformedXml),
        }
    }

    /// The end of the document: the root element closed, no construct open.
    pub fn finish(&mut self) -> Result<(), DocumentError> {
        if self.in_markup || !self.stack.is_empty() || !self.root_seen {
            return Err(DocumentError::MalformedXml);
        }
        Ok(())
    }
}

/// An element's name without its namespace prefix (`ns:BuyerName` → `BuyerName`).
fn local_name(name: &[u8]) -> &[u8] {
    name.iter().rposition(|b| *b == b':').map_or(name, |i| &name[i + 1..])
}

/// Where a drift finding sits: the element path (lowercase names), its last four elements at
/// most (after `*` if deeper), `*` if that is still long (names are Amazon's, never values;
/// labels stay short).
fn element_path(stack: &[Elem]) -> String {
    let from = stack.len().saturating_sub(4);
    let mut path = String::from(if from > 0 { "*" } else { "" });
    for e in &stack[from..] {
        path.push('/');
        path.push_str(&e.lower);
    }
    if path.len() > 160 {
        return "*".to_string();
    }
    path
}

fn is_name(name: &[u8]) -> bool {
    !name.is_empty() && !matches!(name[0], b'0'..=b'9' | b'-' | b'.') && !name.iter().any(|b| matches!(b, b'/' | b'=' | b'"' | b'\'' | b'<' | b'>' | b'&'))
}

/// `(S name S? = S? ("…" | '…'))* S?`: text that lost its element's `>` is no attribute list
/// (attribute values stay as they are: no customer data is defined in attributes).
fn attributes_are_well_formed(rest: &[u8]) -> bool {
    attributes(rest).is_some()
}

/// One attribute of a start tag: its name, and its value's position (between the quotes).
struct Attribute<'a> {
    name: &'a [u8],
    value: std::ops::Range<usize>,
}

/// The attributes of `rest` (a start tag after its name), `None` if they are not well-formed.
fn attributes(rest: &[u8]) -> Option<Vec<Attribute<'_>>> {
    let mut found = Vec::new();
    let mut at = 0;
    loop {
        let tail = &rest[at..];
        let trimmed = tail.trim_ascii_start();
        if trimmed.is_empty() {
            return Some(found);
        }
        if trimmed.len() == tail.len() {
            return None; // no white space before the attribute
        }
        let start = rest.len() - trimmed.len();
        let eq = memchr::memchr(b'=', trimmed)?;
        let name = trimmed[..eq].trim_ascii_end();
        if !is_name(name) {
            return None;
        }
        let after_eq = &trimmed[eq + 1..];
        let value = after_eq.trim_ascii_start();
        let (&quote, inner) = value.split_first().filter(|(q, _)| matches!(q, b'"' | b'\''))?;
        let end = memchr::memchr(quote, inner)?;
        if inner[..end].contains(&b'<') {
            return None;
        }
        let value_start = start + eq + 1 + (after_eq.len() - value.len()) + 1;
        found.push(Attribute { name, value: value_start..value_start + end });
        at = value_start + end + 1;
    }
}

/// What kind of construct the markup read so far is, once its first bytes say.
fn classify(m: &[u8]) -> Kind {
    const COMMENT: &[u8] = b"<!--";
    const CDATA: &[u8] = b"<![CDATA[";
    match m.get(1) {
        None => Kind::Undecided,
        Some(b'?') => Kind::Pi,
        Some(b'/') => Kind::EndTag,
        Some(b'!') => {
            if m.len() >= COMMENT.len() && m.starts_with(COMMENT) {
                Kind::Comment
            } else if m.len() >= CDATA.len() && m.starts_with(CDATA) {
                Kind::Cdata
            } else if COMMENT.starts_with(m) || CDATA.starts_with(m) {
                Kind::Undecided
            } else {
                Kind::Decl
            }
        }
        Some(_) => Kind::Tag,
    }
}

/// Decodes XML text: the five predefined entities and character references.
fn decode_entities(raw: &[u8], out: &mut Vec<u8>) -> Result<(), DocumentError> {
    let mut rest = raw;
    while let Some(amp) = memchr::memchr(b'&', rest) {
        out.extend_from_slice(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = memchr::memchr(b';', after).filter(|&s| s <= 10).ok_or(DocumentError::MalformedXml)?;
        let entity = &after[..semi];
        let ch = match entity {
            b"lt" => '<',
            b"gt" => '>',
            b"amp" => '&',
            b"quot" => '"',
            b"apos" => '\'',
            _ => {
                let number = std::str::from_utf8(entity).ok().and_then(|e| e.strip_prefix('#'));
                let code = number.and_then(|n| match n.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => n.parse::<u32>().ok(),
                });
                code.filter(|&c| c != 0).and_then(char::from_u32).ok_or(DocumentError::MalformedXml)?
            }
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        rest = &after[semi + 1..];
    }
    out.extend_from_slice(rest);
    Ok(())
}

/// A mask as XML text (or an attribute value).
fn escape_into(text: &str, out: &mut Vec<u8>) {
    for b in text.bytes() {
        match b {
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'&' => out.extend_from_slice(b"&amp;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\'' => out.extend_from_slice(b"&apos;"),
            _ => out.push(b),
        }
    }
}
