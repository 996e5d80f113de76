//! Tokens back to data on the way out: for a caller allowed to reveal a class toward an
//! operation, every spapi-guard token in the request — in the path and query, and in a JSON body,
//! whole strings or embedded in longer text — is replaced by its plaintext before the upstream
//! sees it. Fail-closed: one token the caller may not reveal there, or one that does not open
//! (forged, truncated, unknown key, or of a key past its `notAfter`), and nothing is forwarded.
//!
//! Tokens are URL- and JSON-safe ASCII (docs/TOKENS.md), so they appear verbatim wherever an
//! application put them: no decoding is needed to find them, and any text starting like a token
//! must be one.
use crate::json_rewrite::{rewrite, write_json_string, Edit, FieldHandler, MatchedValue, Site};
use crate::path_matcher::PathMatcher;
use crate::pii::{PerClass, PiiClass};
use crate::tokens::{TokenEngine, TokenError, ValueKind, TOKEN_PREFIX};

/// Why a request could not be detokenized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetokenizeError {
    /// A token of a class the caller may not reveal here.
    NotAllowed(PiiClass),
    /// Text that starts like a token but does not open.
    InvalidToken,
    /// A token of the ring key at this index, past its `notAfter` (src/keyring.rs).
    KeyExpired(usize),
    /// A body with tokens that is not valid JSON (the only body format detokenized).
    NotJson,
}

/// What was revealed: values by class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Revealed {
    pub counts: PerClass<u32>,
}

impl Revealed {
    pub fn total(&self) -> u32 {
        self.counts.values().sum()
    }

    fn add(&mut self, class: PiiClass) {
        self.counts[class] = self.counts[class].saturating_add(1);
    }
}

/// One opened token: where it stood and what it holds.
struct Found {
    start: usize,
    end: usize,
    kind: ValueKind,
    plaintext: Vec<u8>,
}

/// The length of the token starting at `text[0]` (which starts with the prefix): the prefix, the
/// flags, key id and class separated by dots, then the base64url data.
fn token_len(text: &[u8]) -> usize {
    let mut dots = 0;
    let mut len = TOKEN_PREFIX.len();
    for &b in &text[TOKEN_PREFIX.len().min(text.len())..] {
        match b {
            b'.' if dots < 3 => dots += 1,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
            _ => break,
        }
        len += 1;
    }
    len
}

/// Finds and opens every token in `text` at `now_ms`, checking each against `allowed`.
fn open_all(engine: &TokenEngine, allowed: &PerClass<bool>, text: &[u8], now_ms: u64, revealed: &mut Revealed) -> Result<Vec<Found>, DetokenizeError> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = memchr::memmem::find(&text[at..], TOKEN_PREFIX.as_bytes()) {
        let start = at + offset;
        let end = start + token_len(&text[start..]);
        let token = std::str::from_utf8(&text[start..end]).map_err(|_| DetokenizeError::InvalidToken)?;
        let opened = engine.open(token, now_ms).map_err(|e| match e {
            TokenError::Expired { key_id, .. } => engine.schedule().find(&key_id).map_or(DetokenizeError::InvalidToken, DetokenizeError::KeyExpired),
            _ => DetokenizeError::InvalidToken,
        })?;
        if !allowed[opened.class] {
            return Err(DetokenizeError::NotAllowed(opened.class));
        }
        revealed.add(opened.class);
        found.push(Found { start, end, kind: opened.kind, plaintext: opened.plaintext });
        at = end;
    }
    Ok(found)
}

/// Detokenizes a request target (`/path?query`): each token becomes its plaintext,
/// percent-encoded. `Ok(None)`: no token in it.
pub fn detokenize_target(engine: &TokenEngine, allowed: &PerClass<bool>, target: &str, now_ms: u64, revealed: &mut Revealed) -> Result<Option<String>, DetokenizeError> {
    let bytes = target.as_bytes();
    let found = open_all(engine, allowed, bytes, now_ms, revealed)?;
    if found.is_empty() {
        return Ok(None);
    }
    let mut out = String::with_capacity(target.len());
    let mut copied = 0;
    for f in &found {
        out.push_str(target.get(copied..f.start).unwrap_or_default());
        percent_encode(&f.plaintext, &mut out);
        copied = f.end;
    }
    out.push_str(target.get(copied..).unwrap_or_default());
    Ok(Some(out))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// Validates a body with the response rewriter's own JSON rules (no value selected).
struct Validate;

impl FieldHandler for Validate {
    type Error = std::convert::Infallible;

    fn replace(&mut self, _: u32, _: MatchedValue<'_>, _: &Site<'_>, _: &mut Vec<u8>) -> Result<Edit, Self::Error> {
        Ok(Edit::Keep)
    }
}

/// Detokenizes a JSON request body: a token that is a whole string becomes that value (a string,
/// or for a token of another JSON value — a number — that value itself), a token inside longer
/// text becomes its text, JSON-escaped. `Ok(None)`: no token in it.
pub fn detokenize_json(engine: &TokenEngine, allowed: &PerClass<bool>, body: &[u8], now_ms: u64, revealed: &mut Revealed) -> Result<Option<Vec<u8>>, DetokenizeError> {
    if memchr::memmem::find(body, TOKEN_PREFIX.as_bytes()).is_none() {
        return Ok(None);
    }
    // The same strict reading as responses: a token can then only stand inside a string (a token
    // has no quote or backslash, and no other JSON value starts with its letters).
    let none = PathMatcher::compile(std::iter::empty(), std::iter::empty(), std::iter::empty()).map_err(|_| DetokenizeError::NotJson)?;
    rewrite(body, &none, &mut Validate).map_err(|_| DetokenizeError::NotJson)?;
    let found = open_all(engine, allowed, body, now_ms, revealed)?;
    let mut out = Vec::with_capacity(body.len() + body.len() / 4);
    let mut copied = 0;
    let mut text = Vec::new();
    for f in &found {
        let whole_string = f.start > 0 && body.get(f.start - 1) == Some(&b'"') && body.get(f.end) == Some(&b'"');
        let is_member_name = body.get(f.end + 1..).and_then(|rest| rest.iter().find(|b| !b.is_ascii_whitespace())) == Some(&b':');
        if f.kind == ValueKind::RawJson && whole_string && !is_member_name {
            // `"spgt1.dj…"` → `47.6062`: the value as it was, quotes and all.
            out.extend_from_slice(body.get(copied..f.start - 1).unwrap_or_default());
            out.extend_from_slice(&f.plaintext);
            copied = f.end + 1;
            continue;
        }
        out.extend_from_slice(body.get(copied..f.start).unwrap_or_default());
        text.clear();
        write_json_string(&String::from_utf8_lossy(&f.plaintext), &mut text);
        // Without its quotes: it stands inside the string the token stood in.
        out.extend_from_slice(text.get(1..text.len().saturating_sub(1)).unwrap_or_default());
        copied = f.end;
    }
    out.extend_from_slice(body.get(copied..).unwrap_or_default());
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::Mode;
    use std::collections::BTreeMap;

    fn engine() -> TokenEngine {
        let mut keys = BTreeMap::new();
        keys.insert("k1".to_string(), [7u8; 32]);
        TokenEngine::new(keys, "k1").expect("engine")
    }

    /// Any instant: the short-form ring has no dates.
    const NOW: u64 = 1_800_000_000_000;

    fn all() -> PerClass<bool> {
        PerClass::splat(true)
    }

    #[test]
    fn query_and_path_tokens_become_percent_encoded_plaintext() {
        let e = engine();
        let email = e.seal(NOW, PiiClass::Email, Mode::Deterministic, ValueKind::Text, b"jane+1@example.com").expect("sealed");
        let mut r = Revealed::default();
        let out = detokenize_target(&e, &all(), &format!("/orders/v0/orders?BuyerEmail={email}&MarketplaceIds=ATVPDKIKX0DER"), NOW, &mut r).expect("ok");
        assert_eq!(out.as_deref(), Some("/orders/v0/orders?BuyerEmail=jane%2B1%40example.com&MarketplaceIds=ATVPDKIKX0DER"));
        assert_eq!(r.counts[PiiClass::Email], 1);
        assert_eq!(detokenize_target(&e, &all(), "/orders/v0/orders?x=1", NOW, &mut r), Ok(None));
    }

    #[test]
    fn json_tokens_become_values_whole_or_embedded() {
        let e = engine();
        let name = e.seal(NOW, PiiClass::Name, Mode::Randomized, ValueKind::Text, "Jane \"J\" Doe\n".as_bytes()).expect("sealed");
        let lat = e.seal(NOW, PiiClass::Address, Mode::Deterministic, ValueKind::RawJson, b"47.6062").expect("sealed");
        let body = format!(r#"{{"shipTo":{{"name":"{name}","note":"for {name} please","lat":"{lat}"}}}}"#);
        let mut r = Revealed::default();
        let out = detokenize_json(&e, &all(), body.as_bytes(), NOW, &mut r).expect("ok").expect("changed");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["shipTo"]["name"], "Jane \"J\" Doe\n");
        assert_eq!(v["shipTo"]["note"], "for Jane \"J\" Doe\n please");
        assert_eq!(v["shipTo"]["lat"], serde_json::json!(47.6062));
        assert_eq!((r.counts[PiiClass::Name], r.counts[PiiClass::Address]), (2, 1));
    }

    #[test]
    fn refuses_tokens_not_allowed_forged_truncated_or_unknown_key() {
        let e = engine();
        let name = e.seal(NOW, PiiClass::Name, Mode::Deterministic, ValueKind::Text, b"Jane").expect("sealed");
        let mut only_address = PerClass::splat(false);
        only_address[PiiClass::Address] = true;
        let mut r = Revealed::default();
        let body = format!(r#"{{"name":"{name}"}}"#);
        assert_eq!(detokenize_json(&e, &only_address, body.as_bytes(), NOW, &mut r), Err(DetokenizeError::NotAllowed(PiiClass::Name)));
        let truncated = format!(r#"{{"name":"{}"}}"#, &name[..name.len() - 4]);
        assert_eq!(detokenize_json(&e, &all(), truncated.as_bytes(), NOW, &mut r), Err(DetokenizeError::InvalidToken));
        let swapped = name.replace(".name.", ".address.");
        assert_eq!(detokenize_target(&e, &all(), &format!("/x?a={swapped}"), NOW, &mut r), Err(DetokenizeError::InvalidToken));
        let unknown = name.replace(".k1.", ".k9.");
        assert_eq!(detokenize_target(&e, &all(), &format!("/x/{unknown}"), NOW, &mut r), Err(DetokenizeError::InvalidToken));
        assert_eq!(detokenize_target(&e, &all(), "/x?a=spgt1.nonsense", NOW, &mut r), Err(DetokenizeError::InvalidToken));
        assert_eq!(detokenize_json(&e, &all(), format!("name={name}").as_bytes(), NOW, &mut r), Err(DetokenizeError::NotJson));
    }

    #[test]
    fn refuses_tokens_of_a_key_past_its_not_after() {
        let doc: crate::keyring::KeysDoc = serde_json::from_str(
            r#"{"ring":[
                {"id":"old","env":"A","classes":["name","email","phone","address","tax_id","gift_message","company","other"],"created":"2026-01-01","activeFrom":"2026-01-01","notAfter":"2026-06-30"},
                {"id":"new","env":"B","classes":["name","email","phone","address","tax_id","gift_message","company","other"],"created":"2026-06-01","activeFrom":"2026-06-01","notAfter":"2027-06-30"}]}"#,
        )
        .expect("doc");
        let e = TokenEngine::from_ring(crate::keyring::Schedule::from_doc(&doc).expect("ring"), vec![[1u8; 32], [2u8; 32]]).expect("engine");
        let day = |d: &str| crate::keyring::parse_instant(d, false).expect("date");
        let old = e.seal(day("2026-03-01"), PiiClass::Email, Mode::Deterministic, ValueKind::Text, b"jane@example.com").expect("sealed");
        let mut r = Revealed::default();
        let target = format!("/orders/v0/orders?BuyerEmail={old}");
        assert!(detokenize_target(&e, &all(), &target, day("2026-06-30"), &mut r).is_ok(), "still within notAfter");
        assert_eq!(detokenize_target(&e, &all(), &target, day("2026-07-01"), &mut r), Err(DetokenizeError::KeyExpired(0)));
        let body = format!(r#"{{"buyer":"{old}"}}"#);
        assert_eq!(detokenize_json(&e, &all(), body.as_bytes(), day("2026-07-01"), &mut r), Err(DetokenizeError::KeyExpired(0)));
    }
}
