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

use crate::path_matcher::{PathMatcher, State, DEAD};

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

/// Decides what replaces each selected value.
pub trait FieldHandler {
    type Error;
    /// Writes the JSON text that replaces `value` to `out` and returns true, or returns false to
    /// keep the value as it is (writing nothing).
    fn replace(&mut self, rule: u32, value: MatchedValue<'_>, out: &mut Vec<u8>) -> Result<bool, Self::Error>;
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
pub fn rewrite<H: FieldHandler>(
    body: &[u8],
    matcher: &PathMatcher,
    handler: &mut H,
) -> Result<Option<Vec<u8>>, RewriteError<H::Error>> {
    let text = std::str::from_utf8(body)
        .map_err(|e| RewriteError::InvalidJson { offset: e.valid_up_to(), what: "not UTF-8" })?;
    let mut walker = Walker { text, bytes: body, pos: 0, matcher, handler, out: None, copied: 0, scratch: String::new() };
    walker.skip_ws();
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

    fn value(&mut self, state: State, depth: usize) -> Result<(), RewriteError<H::Error>> {
        let rule = self.matcher.rule(state);
        let start = self.pos;
        match self.peek() {
            Some(b'"') => {
                let has_escape = self.string()?;
                if let Some(rule) = rule {
                    let inner = &self.text[start + 1..self.pos - 1];
                    let decoded = if has_escape { Cow::Owned(unescape(inner).ok_or_else(|| self.invalid("bad escape"))?) } else { Cow::Borrowed(inner) };
                    self.replace(rule, start, MatchedValue::Text(decoded))?;
                }
            }
            Some(b'{') => {
                self.object(if rule.is_some() { DEAD } else { state }, depth)?;
                if let Some(rule) = rule {
                    self.replace(rule, start, MatchedValue::Raw(&self.text[start..self.pos]))?;
                }
            }
            Some(b'[') => {
                self.array(if rule.is_some() { DEAD } else { state }, depth)?;
                if let Some(rule) = rule {
                    self.replace(rule, start, MatchedValue::Raw(&self.text[start..self.pos]))?;
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                if let Some(rule) = rule {
                    self.replace(rule, start, MatchedValue::Raw(&self.text[start..self.pos]))?;
                }
            }
            // Literals carry no PII: kept as they are even where a path matches.
            Some(b't') => self.literal(b"true")?,
            Some(b'f') => self.literal(b"false")?,
            Some(b'n') => self.literal(b"null")?,
            Some(_) => return Err(self.invalid("unexpected character")),
            None => return Err(self.invalid("unexpected end of body")),
        }
        Ok(())
    }

    /// Hands the value `start..self.pos` to the handler.
    fn replace(&mut self, rule: u32, start: usize, value: MatchedValue<'_>) -> Result<(), RewriteError<H::Error>> {
        let out = self.out.get_or_insert_with(|| Vec::with_capacity(self.bytes.len() + self.bytes.len() / 2));
        let mark = out.len();
        out.extend_from_slice(&self.bytes[self.copied..start]);
        match self.handler.replace(rule, value, out) {
            Ok(true) => {
                self.copied = self.pos;
                Ok(())
            }
            Ok(false) => {
                out.truncate(mark);
                Ok(())
            }
            Err(e) => Err(RewriteError::Handler(e)),
        }
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
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.invalid("expected a member name"));
            }
            let name_start = self.pos + 1;
            let has_escape = self.string()?;
            let child = if state == DEAD {
                DEAD
            } else if has_escape {
                let name = unescape(&self.text[name_start..self.pos - 1]).ok_or_else(|| self.invalid("bad escape"))?;
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
            self.value(child, depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.invalid("expected ',' or '}'")),
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
        loop {
            self.value(child, depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.invalid("expected ',' or ']'")),
            }
        }
    }

    /// Consumes a string starting at its opening quote; returns whether it contains escapes.
    fn string(&mut self) -> Result<bool, RewriteError<H::Error>> {
        self.pos += 1; // opening quote
        let mut has_escape = false;
        loop {
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
        fn replace(&mut self, rule: u32, value: MatchedValue<'_>, out: &mut Vec<u8>) -> Result<bool, String> {
            let s = match value {
                MatchedValue::Text(t) => format!("{rule}:s:{t}"),
                MatchedValue::Raw(r) => format!("{rule}:j:{r}"),
            };
            write_json_string(&s, out);
            Ok(true)
        }
    }

    fn matcher(paths: &[&str]) -> PathMatcher {
        let p: Vec<FieldPath> = paths.iter().map(|t| FieldPath::parse(t).expect("path")).collect();
        PathMatcher::compile(&p, &[]).expect("compiles")
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
    fn whole_objects_and_maps() {
        let got = run(&["$.attrs.*"], r#"{"attrs":{"k":{"x":[1,2]},"j":"v","z":null}}"#).expect("rewrites");
        assert_eq!(got, r#"{"attrs":{"k":"0:j:{\"x\":[1,2]}","j":"0:s:v","z":null}}"#);
    }

    #[test]
    fn escaped_member_names_match() {
        let got = run(&["$.name"], r#"{"n\u0061me":"x"}"#).expect("rewrites");
        assert_eq!(got, r#"{"n\u0061me":"0:s:x"}"#);
    }

    #[test]
    fn refuses_invalid_json() {
        let bad = [
            "", "{", "{\"a\":}", "{\"a\":1,}", "[1,]", "{\"a\" 1}", "{'a':1}", "{\"a\":01}", "{\"a\":1.}",
            "{\"a\":-}", "{\"a\":tru}", "{\"a\":\"x\ny\"}", "{\"a\":\"\\x\"}", "{\"a\":\"\\u12\"}", "{} {}",
            "{\"a\":1}x", "\u{feff}{}", "{\"a\":NaN}", "[\"\\ud800\"]",
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
