//! Byte-faithful JSON rewriting: one validating pass over a body that replaces the values the
//! path matcher selects and copies every other byte unchanged.
//!
//! Why not a DOM: a serde_json round-trip re-formats numbers and costs ~1 ms per 100 KB in Wasm
//! (`docs/DESIGN.md`). This walker touches only matched values, allocates nothing for the rest,
//! and is a strict RFC 8259 validator, so the structure it sees is the structure any client's
//! parser sees: a body it cannot parse is refused (fail closed), never passed on half-read.
//! Request bodies (detokenization) use the same walker with another [`FieldHandler`].
use std::borrow::Cow;
use std::fmt;

use crate::drift::{template, Seg};
use crate::path_matcher::{PathMatcher, State, DEAD, QUIET};

/// Deepest nesting accepted (serde_json's default limit too).
pub const MAX_DEPTH: usize = 128;

/// A value the matcher selected.
#[derive(Debug, PartialEq, Eq)]
pub enum MatchedValue<'a> {
    /// A JSON string, decoded.
    Text(Cow<'a, str>),
    /// The raw JSON text of a number, object or array.
    Raw(&'a str),
}

/// What a handler did with a selected value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Keep the value as it is (the handler wrote nothing).
    Keep,
    /// The handler wrote the replacement JSON text.
    Replaced,
    /// Remove the value: the whole object member, or the array element, with its separator.
    Remove,
}

/// Where a value sits: the path from the root (member names as byte ranges of the body, array
/// elements), for the member name a value is under and for path templates in reports.
pub struct Site<'a> {
    text: &'a str,
    path: &'a [Seg],
}

impl<'a> Site<'a> {
    pub fn new(text: &'a str, path: &'a [Seg]) -> Site<'a> {
        Site { text, path }
    }

    /// The name of the member the value is (or, for an array element, the array is) under,
    /// decoded; `None` at the root.
    pub fn key(&self) -> Option<Cow<'a, str>> {
        let (start, end) = self.path.iter().rev().find_map(|seg| match *seg {
            Seg::Member { start, end } => Some((start as usize, end as usize)),
            Seg::Element => None,
        })?;
        let raw = self.text.get(start..end)?;
        if raw.contains('\\') {
            Some(Cow::Owned(unescape(raw).unwrap_or_default()))
        } else {
            Some(Cow::Borrowed(raw))
        }
    }

    /// The name of the member above [`key`](Self::key)'s (`shipTo` for `$.shipTo.name`).
    pub fn parent_key(&self) -> Option<Cow<'a, str>> {
        let mut members = self.path.iter().rev().filter_map(|seg| match *seg {
            Seg::Member { start, end } => Some((start as usize, end as usize)),
            Seg::Element => None,
        });
        let (start, end) = members.nth(1)?;
        let raw = self.text.get(start..end)?;
        if raw.contains('\\') {
            Some(Cow::Owned(unescape(raw).unwrap_or_default()))
        } else {
            Some(Cow::Borrowed(raw))
        }
    }

    /// The JSON path template of the location (`$.payload.Orders[*].BuyerInfo.BuyerEmail`).
    pub fn template(&self) -> String {
        template(self.text, self.path)
    }

    /// The path's steps.
    pub fn path(&self) -> &[Seg] {
        self.path
    }
}

/// Decides what replaces each selected value.
pub trait FieldHandler {
    type Error;
    /// Either writes the JSON text that replaces `value` to `out` and returns `Replaced`, or
    /// writes nothing and returns `Keep` or `Remove`.
    fn replace(&mut self, rule: u32, value: MatchedValue<'_>, site: &Site<'_>, out: &mut Vec<u8>) -> Result<Edit, Self::Error>;

    /// A string no rule selected, outside quiet (non-customer) subtrees, decoded — when
    /// [`scans`](Self::scans) says so (the drift detectors). The same answers as `replace`.
    fn unmatched(&mut self, _value: &str, _site: &Site<'_>, _out: &mut Vec<u8>) -> Result<Edit, Self::Error> {
        Ok(Edit::Keep)
    }

    /// A container a rule selected is about to be walked — its members first, then the container
    /// itself: returns a mark of what the handler has recorded so far (counts).
    fn mark(&mut self) -> usize {
        0
    }

    /// After such a container was handed over: `whole` if it was replaced or removed as a whole,
    /// so that what was recorded for its members, between the marks `before` (taken before them)
    /// and `members` (after them, before the container), describes nothing in the output and is
    /// forgotten. Marks after `before` are released either way.
    fn settle(&mut self, _before: usize, _members: usize, _whole: bool) {}

    /// Whether the walker hands unmatched strings to [`unmatched`](Self::unmatched).
    fn scans(&self) -> bool {
        false
    }

    /// A quick look at an unmatched string's raw JSON text (escapes not decoded) before the
    /// walker decodes it and calls [`unmatched`](Self::unmatched): `false` skips it.
    fn wants(&self, _raw: &str) -> bool {
        true
    }
}

/// Why a body could not be rewritten.
#[derive(Debug, PartialEq, Eq)]
pub enum RewriteError<E> {
    /// Not valid JSON; `offset` is the byte where parsing stopped. No content is carried.
    InvalidJson { offset: usize, what: &'static str },
    /// The handler refused a value.
    Handler(E),
}

impl<E: fmt::Display> fmt::Display for RewriteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RewriteError::InvalidJson { offset, what } => write!(f, "invalid JSON at byte {offset}: {what}"),
            RewriteError::Handler(e) => e.fmt(f),
        }
    }
}

/// Rewrites `body`. Returns `Ok(None)` when no value was replaced (the body stands as it is).
pub fn rewrite<H: FieldHandler>(body: &[u8], matcher: &PathMatcher, handler: &mut H) -> Result<Option<Vec<u8>>, RewriteError<H::Error>> {
    let text = std::str::from_utf8(body).map_err(|e| RewriteError::InvalidJson { offset: e.valid_up_to(), what: "not UTF-8" })?;
    let scans = handler.scans();
    let mut walker =
        Walker { text, bytes: body, pos: 0, matcher, handler, out: None, copied: 0, scratch: String::new(), replacement: Vec::new(), path: Vec::with_capacity(16), scans };
    walker.skip_ws();
    // A path cannot select the root (`$` alone is refused), so the root is never removed.
    walker.value(matcher.root(), 0)?;
    walker.skip_ws();
    if walker.pos != body.len() {
        return Err(walker.invalid("trailing characters after the JSON value"));
    }
    Ok(walker.out.map(|mut out| {
        out.extend_from_slice(&body[walker.copied..]);
        out
    }))
}

struct Walker<'a, 'm, H> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    matcher: &'m PathMatcher,
    handler: &'m mut H,
    /// The rewritten body so far; allocated at the first replacement.
    out: Option<Vec<u8>>,
    /// Bytes of `bytes` already accounted for in `out`.
    copied: usize,
    /// Reused buffer for member names that contain escapes.
    scratch: String,
    /// Reused buffer for a replacement being written.
    replacement: Vec<u8>,
    /// Where the walker is: the members and elements from the root.
    path: Vec<Seg>,
    /// Whether unmatched strings go to the handler.
    scans: bool,
}

impl<'a, H: FieldHandler> Walker<'a, '_, H> {
    fn invalid(&self, what: &'static str) -> RewriteError<H::Error> {
        RewriteError::InvalidJson { offset: self.pos, what }
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Walks one value; returns whether the handler asked to remove it from its container.
    fn value(&mut self, state: State, depth: usize) -> Result<bool, RewriteError<H::Error>> {
        let rule = self.matcher.rule(state);
        let start = self.pos;
        let mut remove = false;
        match self.peek() {
            Some(b'"') => {
                let has_escape = self.string()?;
                if let Some(rule) = rule {
                    let inner = &self.text[start + 1..self.pos - 1];
                    let value = match has_escape.then(|| unescape(inner)) {
                        None => MatchedValue::Text(Cow::Borrowed(inner)),
                        Some(Some(decoded)) => MatchedValue::Text(Cow::Owned(decoded)),
                        // A lone UTF-16 surrogate is valid JSON but no text: the value is handed
                        // on as its raw JSON text (quotes included), losslessly.
                        Some(None) => MatchedValue::Raw(&self.text[start..self.pos]),
                    };
                    remove = self.replace(Some(rule), start, value)?;
                } else if self.scans && state != QUIET && self.pos - start > 2 && self.handler.wants(&self.text[start + 1..self.pos - 1]) {
                    let inner = &self.text[start + 1..self.pos - 1];
                    let decoded = if has_escape { unescape(inner).map(Cow::Owned) } else { Some(Cow::Borrowed(inner)) };
                    // (A lone surrogate is no text: nothing to detect in it.)
                    if let Some(text) = decoded {
                        remove = self.replace(None, start, MatchedValue::Text(text))?;
                    }
                }
            }
            Some(open @ (b'{' | b'[')) => {
                // Paths below a matched container are still followed: if the handler keeps the
                // container (e.g. `clear`), the fields inside it still get their own treatment.
                let before = (self.out.as_ref().map_or(0, Vec::len), self.copied);
                let mark = rule.map(|_| self.handler.mark());
                if open == b'{' {
                    self.object(state, depth)?;
                } else {
                    self.array(state, depth)?;
                }
                if let (Some(rule), Some(mark)) = (rule, mark) {
                    let members = self.handler.mark();
                    let edit = self.replace_container(rule, start, before)?;
                    self.handler.settle(mark, members, edit != Edit::Keep);
                    remove = edit == Edit::Remove;
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                if let Some(rule) = rule {
                    remove = self.replace(Some(rule), start, MatchedValue::Raw(&self.text[start..self.pos]))?;
                }
            }
            // Literals carry no PII: kept as they are even where a path matches.
            Some(b't') => self.literal(b"true")?,
            Some(b'f') => self.literal(b"false")?,
            Some(b'n') => self.literal(b"null")?,
            Some(_) => return Err(self.invalid("unexpected character")),
            None => return Err(self.invalid("unexpected end of body")),
        }
        Ok(remove)
    }

    fn output(out: &mut Option<Vec<u8>>, body_len: usize) -> &mut Vec<u8> {
        out.get_or_insert_with(|| Vec::with_capacity(body_len + body_len / 2))
    }

    /// Hands the value `start..self.pos` to the handler (as matched by `rule`, or unmatched);
    /// returns whether to remove it.
    fn replace(&mut self, rule: Option<u32>, start: usize, value: MatchedValue<'_>) -> Result<bool, RewriteError<H::Error>> {
        // The handler writes into a separate buffer: the body is copied into the output only when
        // something is replaced (a kept value costs nothing, however many there are).
        let mut replacement = std::mem::take(&mut self.replacement);
        replacement.clear();
        let site = Site { text: self.text, path: &self.path };
        let edit = match (rule, &value) {
            (Some(rule), _) => self.handler.replace(rule, value, &site, &mut replacement),
            (None, MatchedValue::Text(text)) => self.handler.unmatched(text, &site, &mut replacement),
            (None, MatchedValue::Raw(_)) => Ok(Edit::Keep),
        }
        .map_err(RewriteError::Handler);
        let result = match edit {
            Ok(Edit::Replaced) => {
                let (copied, end, bytes) = (self.copied, self.pos, self.bytes);
                let out = Self::output(&mut self.out, bytes.len());
                out.extend_from_slice(&bytes[copied..start]);
                out.extend_from_slice(&replacement);
                self.copied = end;
                Ok(false)
            }
            Ok(edit) => Ok(edit == Edit::Remove),
            Err(e) => Err(e),
        };
        self.replacement = replacement;
        result
    }

    /// Hands a whole container `start..self.pos` (as its original text) to the handler. If the
    /// handler replaces or removes it, the edits made inside it are rolled back first.
    fn replace_container(&mut self, rule: u32, start: usize, before: (usize, usize)) -> Result<Edit, RewriteError<H::Error>> {
        let mut replacement = Vec::new();
        let value = MatchedValue::Raw(&self.text[start..self.pos]);
        let site = Site { text: self.text, path: &self.path };
        let edit = self.handler.replace(rule, value, &site, &mut replacement).map_err(RewriteError::Handler)?;
        // (Containers are rare at PII paths: a fresh buffer is fine here.)
        if edit == Edit::Keep {
            return Ok(edit);
        }
        let (out_len, copied) = before;
        if let Some(out) = self.out.as_mut() {
            out.truncate(out_len);
        }
        self.copied = copied;
        if edit == Edit::Remove {
            return Ok(edit);
        }
        let (bytes, end) = (self.bytes, self.pos);
        let out = Self::output(&mut self.out, bytes.len());
        out.extend_from_slice(&bytes[copied..start]);
        out.extend_from_slice(&replacement);
        self.copied = end;
        Ok(edit)
    }

    /// Drops `from..to` from the output (everything before `from` is copied first). A part of
    /// the range that an earlier cut already dropped is skipped.
    fn cut(&mut self, from: usize, to: usize) {
        let (copied, bytes) = (self.copied, self.bytes);
        let from = from.max(copied);
        Self::output(&mut self.out, bytes.len()).extend_from_slice(&bytes[copied..from]);
        self.copied = to;
    }

    /// Finishes one entry of an object or array: consumes the `,` or the closing `close` after
    /// it, and if the entry is to be removed, drops it with one separator so the JSON stays valid.
    /// Returns whether more entries follow.
    fn end_entry(&mut self, remove: bool, entry_start: usize, entries: &mut Entries, close: u8) -> Result<bool, RewriteError<H::Error>> {
        let value_end = self.pos;
        self.skip_ws();
        let more = match self.peek() {
            Some(b',') => true,
            Some(b) if b == close => false,
            _ => return Err(self.invalid(if close == b'}' { "expected ',' or '}'" } else { "expected ',' or ']'" })),
        };
        if remove {
            if let Some(previous_end) = entries.kept_end {
                // `, entry`: the separator before it goes with it.
                self.cut(previous_end, value_end);
            }
        }
        self.pos += 1;
        if more {
            self.skip_ws();
        }
        if remove && entries.kept_end.is_none() {
            // Nothing kept before it: `entry, ` goes, up to the next entry (or the end).
            self.cut(entry_start, if more { self.pos } else { value_end });
        }
        if !remove {
            entries.kept_end = Some(value_end);
        }
        Ok(more)
    }

    fn object(&mut self, state: State, depth: usize) -> Result<(), RewriteError<H::Error>> {
        if depth >= MAX_DEPTH {
            return Err(self.invalid("nested too deeply"));
        }
        self.pos += 1; // '{'
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        let mut entries = Entries::default();
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.invalid("expected a member name"));
            }
            let member_start = self.pos;
            let name_start = self.pos + 1;
            let has_escape = self.string()?;
            let name_end = self.pos - 1;
            let child = if state == DEAD || state == QUIET {
                state
            } else if has_escape {
                // The same surrogate rule for names: one that is no text is matched as its raw JSON
                // text (which no catalog name equals).
                let raw_name = &self.text[name_start..self.pos - 1];
                let name = unescape(raw_name).unwrap_or_else(|| raw_name.to_string());
                self.scratch = name;
                self.matcher.member(state, &self.scratch)
            } else {
                self.matcher.member(state, &self.text[name_start..self.pos - 1])
            };
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.invalid("expected ':'"));
            }
            self.pos += 1;
            self.skip_ws();
            // (Bodies are at most a few MiB: byte offsets fit in u32; `maxBodyBytes` ≤ 64 MiB.)
            self.path.push(Seg::Member { start: name_start as u32, end: name_end as u32 });
            let remove = self.value(child, depth + 1);
            self.path.pop();
            if !self.end_entry(remove?, member_start, &mut entries, b'}')? {
                return Ok(());
            }
        }
    }

    fn array(&mut self, state: State, depth: usize) -> Result<(), RewriteError<H::Error>> {
        if depth >= MAX_DEPTH {
            return Err(self.invalid("nested too deeply"));
        }
        self.pos += 1; // '['
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        let child = self.matcher.element(state);
        let mut entries = Entries::default();
        loop {
            let element_start = self.pos;
            self.path.push(Seg::Element);
            let remove = self.value(child, depth + 1);
            self.path.pop();
            if !self.end_entry(remove?, element_start, &mut entries, b']')? {
                return Ok(());
            }
        }
    }

    /// Consumes a string starting at its opening quote; returns whether it contains escapes.
    fn string(&mut self) -> Result<bool, RewriteError<H::Error>> {
        self.pos += 1; // opening quote
        let mut has_escape = false;
        loop {
            // Jump over the plain run (SIMD memchr), then check it holds no control character.
            let run = memchr::memchr2(b'"', b'\\', &self.bytes[self.pos..]).unwrap_or(self.bytes.len() - self.pos);
            if let Some(bad) = self.bytes[self.pos..self.pos + run].iter().position(|&b| b < 0x20) {
                self.pos += bad;
                return Err(self.invalid("control character in string"));
            }
            self.pos += run;
            let b = *self.bytes.get(self.pos).ok_or_else(|| self.invalid("unterminated string"))?;
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(has_escape);
                }
                b'\\' => {
                    has_escape = true;
                    match self.bytes.get(self.pos + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 2,
                        Some(b'u') => {
                            let hex = self.bytes.get(self.pos + 2..self.pos + 6).ok_or_else(|| self.invalid("bad escape"))?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(self.invalid("bad escape"));
                            }
                            self.pos += 6;
                        }
                        _ => return Err(self.invalid("bad escape")),
                    }
                }
                0x00..=0x1f => return Err(self.invalid("control character in string")),
                _ => self.pos += 1,
            }
        }
    }

    fn number(&mut self) -> Result<(), RewriteError<H::Error>> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.invalid("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.invalid("bad number"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.invalid("bad number"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), RewriteError<H::Error>> {
        if self.bytes.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.invalid("bad literal"))
        }
    }
}

/// What happened to the entries of one object or array so far.
#[derive(Default)]
struct Entries {
    /// Where the last kept entry's value ended.
    kept_end: Option<usize>,
}

/// Decodes the inside of a JSON string whose escapes were already checked. `None` for a lone
/// UTF-16 surrogate, which no valid text contains.
pub fn unescape(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '/' => out.push('/'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hi = hex4(&mut chars)?;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let lo = hex4(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                out.push(char::from_u32(code)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let mut v = 0;
    for _ in 0..4 {
        v = v * 16 + chars.next()?.to_digit(16)?;
    }
    Some(v)
}

/// Appends `s` to `out` as a JSON string literal (quotes included).
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{:04x}", b).as_bytes()),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field_path::FieldPath;

    /// Replaces every selected value with `"<rule>:<kind>:<text>"`.
    struct Tag;
    impl FieldHandler for Tag {
        type Error = String;
        fn replace(&mut self, rule: u32, value: MatchedValue<'_>, _: &Site<'_>, out: &mut Vec<u8>) -> Result<Edit, String> {
            let s = match value {
                MatchedValue::Text(t) if t == "DROP" => return Ok(Edit::Remove),
                MatchedValue::Text(t) if t == "KEEP" => return Ok(Edit::Keep),
                MatchedValue::Text(t) => format!("{rule}:s:{t}"),
                MatchedValue::Raw(r) => format!("{rule}:j:{r}"),
            };
            write_json_string(&s, out);
            Ok(Edit::Replaced)
        }
    }

    fn matcher(paths: &[&str]) -> PathMatcher {
        let p: Vec<FieldPath> = paths.iter().map(|t| FieldPath::parse(t).expect("path")).collect();
        PathMatcher::compile(p.iter().enumerate(), [], &[]).expect("compiles")
    }

    fn run(paths: &[&str], body: &str) -> Result<String, RewriteError<String>> {
        let m = matcher(paths);
        let out = rewrite(body.as_bytes(), &m, &mut Tag)?;
        Ok(out.map(|o| String::from_utf8(o).expect("utf8")).unwrap_or_else(|| body.to_string()))
    }

    #[test]
    fn replaces_only_selected_values_and_keeps_every_other_byte() {
        let body = "{ \"a\" : [ {\"n\":\"Jo\\u00e9\", \"x\": 0.00 }, {\"n\" :\"B\"} ],\n\"geo\":{\"lat\":-1.50E+2},\"n\":\"keep\" }";
        let got = run(&["$.a[*].n", "$.geo.lat"], body).expect("rewrites");
        assert_eq!(got, "{ \"a\" : [ {\"n\":\"0:s:Joé\", \"x\": 0.00 }, {\"n\" :\"0:s:B\"} ],\n\"geo\":{\"lat\":\"1:j:-1.50E+2\"},\"n\":\"keep\" }");
    }

    #[test]
    fn untouched_body_is_not_copied() {
        let m = matcher(&["$.nothing"]);
        assert_eq!(rewrite(b"{\"a\":1}", &m, &mut Tag), Ok(None));
    }

    #[test]
    fn removes_members_and_elements_keeping_valid_json() {
        let cases = [
            (r#"{"a":"DROP","b":1}"#, r#"{"b":1}"#),
            (r#"{"b":1,"a":"DROP"}"#, r#"{"b":1}"#),
            (r#"{"a":"DROP"}"#, r#"{}"#),
            (r#"{ "x" : { "a" : "DROP" , "b" : "DROP" , "c" : 3 } }"#, r#"{ "x" : { "c" : "3:j:3" } }"#),
            (r#"{"x":{"a":"DROP","c":"v","b":"DROP"}}"#, r#"{"x":{"c":"3:s:v"}}"#),
            (r#"{"x":{"b":"KEEP","a":"DROP","c":"DROP","d":2}}"#, r#"{"x":{"b":"KEEP","d":2}}"#),
            (r#"{"l":["DROP","KEEP","DROP","y","DROP"]}"#, r#"{"l":["KEEP","4:s:y"]}"#),
            (r#"{"l":["DROP","DROP"]}"#, r#"{"l":[]}"#),
            (r#"{"l":[ "DROP" , "KEEP" ]}"#, r#"{"l":[ "KEEP" ]}"#),
        ];
        for (body, want) in cases {
            let got = run(&["$.a", "$.x.a", "$.x.b", "$.x.c", "$.l[*]"], body).expect("rewrites");
            assert_eq!(got, want, "{body}");
            serde_json::from_str::<serde_json::Value>(&got).expect("valid JSON");
        }
    }

    /// Keeps everything but removes strings equal to "DROP".
    struct Dropper;
    impl FieldHandler for Dropper {
        type Error = String;
        fn replace(&mut self, _: u32, value: MatchedValue<'_>, _: &Site<'_>, _: &mut Vec<u8>) -> Result<Edit, String> {
            Ok(if value == MatchedValue::Text(Cow::Borrowed("DROP")) { Edit::Remove } else { Edit::Keep })
        }
    }

    /// A small deterministic PRNG (xorshift) for the property test below.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
        fn ws(&mut self) -> &'static str {
            [" ", "", "\n  ", ""][self.next(4) as usize]
        }
    }

    fn random_json(rng: &mut Rng, depth: u32, out: &mut String) {
        match if depth > 3 { 2 } else { rng.next(4) } {
            0 => {
                out.push('{');
                for i in 0..rng.next(5) {
                    if i > 0 {
                        out.push_str(rng.ws());
                        out.push(',');
                    }
                    out.push_str(rng.ws());
                    out.push_str(&format!("\"k{i}\""));
                    out.push_str(rng.ws());
                    out.push(':');
                    out.push_str(rng.ws());
                    random_json(rng, depth + 1, out);
                }
                out.push_str(rng.ws());
                out.push('}');
            }
            1 => {
                out.push('[');
                for i in 0..rng.next(5) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(rng.ws());
                    random_json(rng, depth + 1, out);
                    out.push_str(rng.ws());
                }
                out.push(']');
            }
            _ => out.push_str(["\"DROP\"", "\"DROP\"", "\"v\"", "1.50", "null"][rng.next(5) as usize]),
        }
    }

    fn without_drops(v: &serde_json::Value, depth: u32) -> serde_json::Value {
        use serde_json::Value;
        let dropped = |x: &Value| depth < 3 && x == "DROP";
        match v {
            Value::Object(m) => Value::Object(m.iter().filter(|(_, x)| !dropped(x)).map(|(k, x)| (k.clone(), without_drops(x, depth + 1))).collect()),
            Value::Array(a) => Value::Array(a.iter().filter(|x| !dropped(x)).map(|x| without_drops(x, depth + 1)).collect()),
            other => other.clone(),
        }
    }

    /// Removal keeps any document valid and removes exactly the selected entries.
    #[test]
    fn removal_property_on_random_documents() {
        let m = matcher(&["$.*", "$.*.*", "$.*.*.*"]);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let mut doc = String::from("{\"root\":");
            random_json(&mut rng, 1, &mut doc);
            doc.push('}');
            let doc = doc.replacen("{\"root\":", "{\"r\":", 1);
            let out = rewrite(doc.as_bytes(), &m, &mut Dropper).expect("valid input");
            let out = out.map(|o| String::from_utf8(o).expect("utf8")).unwrap_or_else(|| doc.clone());
            let got: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {doc} -> {out}"));
            let want = without_drops(&serde_json::from_str(&doc).expect("input"), 0);
            assert_eq!(got, want, "{doc} -> {out}");
        }
    }

    /// Kept values cost no copy: a body whose selected values are all kept is not copied at all
    /// (an earlier version copied the body up to each kept value: quadratic on large pages).
    #[test]
    fn kept_values_do_not_copy_the_body() {
        let m = matcher(&["$.l[*]"]);
        let body = format!("{{\"l\":[{}\"KEEP\"]}}", "\"KEEP\",".repeat(1000));
        assert_eq!(rewrite(body.as_bytes(), &m, &mut Dropper), Ok(None));
    }

    #[test]
    fn whole_objects_and_maps() {
        let got = run(&["$.attrs.*"], r#"{"attrs":{"k":{"x":[1,2]},"j":"v","z":null}}"#).expect("rewrites");
        assert_eq!(got, r#"{"attrs":{"k":"0:j:{\"x\":[1,2]}","j":"0:s:v","z":null}}"#);
    }

    /// Records where every value is and what the walker hands over.
    #[derive(Default)]
    struct Recorder {
        seen: Vec<String>,
    }
    impl FieldHandler for Recorder {
        type Error = String;
        fn replace(&mut self, rule: u32, value: MatchedValue<'_>, site: &Site<'_>, _: &mut Vec<u8>) -> Result<Edit, String> {
            let v = match value {
                MatchedValue::Text(t) => t.into_owned(),
                MatchedValue::Raw(r) => r.to_string(),
            };
            self.seen.push(format!("rule {rule} {} key={:?} {v}", site.template(), site.key()));
            Ok(Edit::Keep)
        }
        fn unmatched(&mut self, value: &str, site: &Site<'_>, out: &mut Vec<u8>) -> Result<Edit, String> {
            self.seen.push(format!("scan {} key={:?} {value}", site.template(), site.key()));
            if value == "secret@example.com" {
                write_json_string("X", out);
                return Ok(Edit::Replaced);
            }
            Ok(Edit::Keep)
        }
        fn scans(&self) -> bool {
            true
        }
    }

    #[test]
    fn unmatched_strings_are_scanned_with_their_site_except_in_quiet_subtrees() {
        let rules: Vec<FieldPath> = ["$.a[*].n"].iter().map(|t| FieldPath::parse(t).expect("path")).collect();
        let quiet: Vec<FieldPath> = ["$.seller"].iter().map(|t| FieldPath::parse(t).expect("path")).collect();
        let m = PathMatcher::compile(rules.iter().enumerate(), [], &quiet).expect("compiles");
        let body = r#"{"a":[{"n":"Jo","m":"secret@example.com"}],"seller":{"email":"shop@example.com"},"l\u0069st":[["x\u0079z"]],"e":"","k":7}"#;
        let mut r = Recorder::default();
        let out = rewrite(body.as_bytes(), &m, &mut r).expect("walks").expect("changed");
        assert_eq!(
            r.seen,
            [r#"rule 0 $.a[*].n key=Some("n") Jo"#, r#"scan $.a[*].m key=Some("m") secret@example.com"#, r#"scan $.*[*][*] key=Some("list") xyz"#,],
            "the quiet seller, empty strings and numbers are not scanned; an escaped name prints as *"
        );
        assert_eq!(String::from_utf8(out).expect("utf8"), body.replace("\"secret@example.com\"", "\"X\""));
    }

    #[test]
    fn escaped_member_names_match() {
        let got = run(&["$.name"], r#"{"n\u0061me":"x"}"#).expect("rewrites");
        assert_eq!(got, r#"{"n\u0061me":"0:s:x"}"#);
    }

    #[test]
    fn refuses_invalid_json() {
        let bad = [
            "",
            "{",
            "{\"a\":}",
            "{\"a\":1,}",
            "[1,]",
            "{\"a\" 1}",
            "{'a':1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":tru}",
            "{\"a\":\"x\ny\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{} {}",
            "{\"a\":1}x",
            "\u{feff}{}",
            "{\"a\":NaN}",
            "[\"\\ud8\"]",
        ];
        for b in bad {
            let r = run(&["$.a", "$[*]"], b);
            assert!(matches!(r, Err(RewriteError::InvalidJson { .. })), "accepted {b:?}: {r:?}");
        }
        assert!(matches!(rewrite(b"{\"a\":\"\xff\"}", &matcher(&["$.b"]), &mut Tag), Err(RewriteError::InvalidJson { .. })));
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing() {
        let deep = "[".repeat(100_000);
        assert!(matches!(run(&["$.a"], &deep), Err(RewriteError::InvalidJson { what: "nested too deeply", .. })));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(run(&["$.a"], &ok).is_ok());
    }

    #[test]
    fn json_string_writer_escapes() {
        let mut out = Vec::new();
        write_json_string("a\"b\\c\n\u{1}é", &mut out);
        assert_eq!(String::from_utf8(out).expect("utf8"), "\"a\\\"b\\\\c\\n\\u0001é\"");
    }
}
