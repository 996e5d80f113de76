//! The one parser of request targets (`:path`, query included): routing, access checks and the
//! audit log all read a request through it, so they all see what the SP-API will see.
//!
//! A target splits into path, query and fragment. Path segments and query names and values are
//! percent-decoded exactly once (`+` is a space in the query only). Refused, as [`UriError`]:
//!
//! * raw characters that have no place in a request target: controls, space, non-ASCII;
//! * `%` not followed by two hex digits; decoded bytes that are not UTF-8; decoded control
//!   characters (`%00`, `%0A`, `%7F`, C1 controls…);
//! * path segments that servers resolve differently: empty (`//`, a trailing `/`), dot segments
//!   (`.`, `..`, `%2E%2E`, also `..;x` and `.. ` that some servers reduce to `..`), an encoded slash
//!   (`%2F`), a backslash (raw or `%5C`);
//! * a fragment (`#…`): HTTP request targets carry none.
//!
//! Envoy's `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action` already stop
//! most of these in the shipped configuration; this module is the filter's own line of defence.
use std::borrow::Cow;
use std::fmt;

/// Why a request target is refused. No variant carries request data (no PII in messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A raw character that may not appear in a request target (space, non-ASCII).
    InvalidCharacter,
    /// A control character, raw or percent-encoded.
    ControlCharacter,
    /// `%` not followed by two hexadecimal digits.
    BadPercentEncoding,
    /// Percent-decoded bytes that are not UTF-8.
    InvalidUtf8,
    /// An empty path segment (`//`, a trailing `/`, a segment of only `;parameters` or spaces).
    EmptySegment,
    /// A `.` or `..` segment, in any spelling.
    DotSegment,
    /// `%2F` inside a path segment.
    EncodedSlash,
    /// `\` in a path segment, raw or as `%5C`.
    Backslash,
    /// A `#fragment`.
    Fragment,
}

impl UriError {
    pub fn as_str(self) -> &'static str {
        match self {
            UriError::NotAbsolute => "not_absolute",
            UriError::InvalidCharacter => "invalid_character",
            UriError::ControlCharacter => "control_character",
            UriError::BadPercentEncoding => "bad_percent_encoding",
            UriError::InvalidUtf8 => "invalid_utf8",
            UriError::EmptySegment => "empty_segment",
            UriError::DotSegment => "dot_segment",
            UriError::EncodedSlash => "encoded_slash",
            UriError::Backslash => "backslash",
            UriError::Fragment => "fragment",
        }
    }
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The raw (still encoded) parts of a request target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts<'a> {
    pub path: &'a str,
    /// After the first `?` (`Some("")` for a bare `?`).
    pub query: Option<&'a str>,
    /// After the first `#`.
    pub fragment: Option<&'a str>,
}

/// Splits a target into path, query and fragment; nothing is decoded or checked.
pub fn split(target: &str) -> Parts<'_> {
    let (rest, fragment) = match target.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (target, None),
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    Parts { path, query, fragment }
}

/// A decoded query parameter: `(name, value)`.
pub type QueryPair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// A request target, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The path's segments, decoded (`/a/b%20c` → `["a", "b c"]`).
    pub segments: Vec<Cow<'a, str>>,
    /// The query's `(name, value)` pairs in order, decoded; a pair without `=` has an empty value.
    pub query: Vec<QueryPair<'a>>,
}

/// Parses a request target (`/orders/v0/orders?CreatedAfter=…`).
pub fn parse(target: &str) -> Result<Target<'_>, UriError> {
    let parts = split(target);
    if parts.fragment.is_some() {
        return Err(UriError::Fragment);
    }
    Ok(Target { segments: path_segments(parts.path)?, query: query_pairs(parts.query.unwrap_or(""))? })
}

/// The decoded, checked segments of a path (no query).
pub fn path_segments(path: &str) -> Result<Vec<Cow<'_, str>>, UriError> {
    let rest = path.strip_prefix('/').ok_or(UriError::NotAbsolute)?;
    rest.split('/').map(segment).collect()
}

/// One raw path segment, decoded and checked.
pub fn segment(raw: &str) -> Result<Cow<'_, str>, UriError> {
    if raw.is_empty() {
        return Err(UriError::EmptySegment);
    }
    let decoded = decode(raw, false)?;
    if decoded.contains('/') {
        return Err(UriError::EncodedSlash);
    }
    if decoded.contains('\\') {
        return Err(UriError::Backslash);
    }
    // Some servers drop `;parameters` and surrounding spaces before resolving dot segments.
    let core = decoded.split(';').next().unwrap_or("").trim();
    if core.is_empty() {
        return Err(UriError::EmptySegment);
    }
    if core.bytes().all(|b| b == b'.') {
        return Err(UriError::DotSegment);
    }
    Ok(decoded)
}

/// The decoded `(name, value)` pairs of a raw query (without the `?`). Empty pieces (`a=1&&b=2`)
/// are skipped.
pub fn query_pairs(query: &str) -> Result<Vec<QueryPair<'_>>, UriError> {
    query.split('&').filter(|p| !p.is_empty()).map(query_pair).collect()
}

/// One raw `name=value` piece of a query, decoded (`+` is a space). Only the first `=` separates.
pub fn query_pair(piece: &str) -> Result<QueryPair<'_>, UriError> {
    let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
    Ok((decode(name, true)?, decode(value, true)?))
}

/// Percent-decodes `raw` once (and `+` as a space when `plus_is_space`), checking the raw
/// characters, the encoding, UTF-8 and that no control character results.
pub fn decode(raw: &str, plus_is_space: bool) -> Result<Cow<'_, str>, UriError> {
    let mut needs_decoding = false;
    for b in raw.bytes() {
        match b {
            0x00..=0x1f | 0x7f => return Err(UriError::ControlCharacter),
            b' ' | 0x80..=0xff => return Err(UriError::InvalidCharacter),
            b'%' => needs_decoding = true,
            b'+' if plus_is_space => needs_decoding = true,
            _ => {}
        }
    }
    if !needs_decoding {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex).ok_or(UriError::BadPercentEncoding)?;
                let lo = bytes.get(i + 2).copied().and_then(hex).ok_or(UriError::BadPercentEncoding)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).map_err(|_| UriError::InvalidUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(UriError::ControlCharacter);
    }
    Ok(Cow::Owned(text))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(path: &str) -> Result<Vec<String>, UriError> {
        path_segments(path).map(|s| s.into_iter().map(Cow::into_owned).collect())
    }

    fn pairs(query: &str) -> Result<Vec<(String, String)>, UriError> {
        query_pairs(query).map(|p| p.into_iter().map(|(n, v)| (n.into_owned(), v.into_owned())).collect())
    }

    #[test]
    fn splits_path_query_and_fragment() {
        assert_eq!(split("/a/b?x=1&y=2#f?g"), Parts { path: "/a/b", query: Some("x=1&y=2"), fragment: Some("f?g") });
        assert_eq!(split("/a?b?c"), Parts { path: "/a", query: Some("b?c"), fragment: None });
        assert_eq!(split("/a?"), Parts { path: "/a", query: Some(""), fragment: None });
        assert_eq!(split("/a"), Parts { path: "/a", query: None, fragment: None });
    }

    #[test]
    fn decodes_segments_once() {
        assert_eq!(segments("/orders/v0/%6Frders/902-1"), Ok(vec!["orders".into(), "v0".into(), "orders".into(), "902-1".into()]));
        assert_eq!(segments("/a/b%20c/d+e"), Ok(vec!["a".into(), "b c".into(), "d+e".into()]), "+ is a plus in paths");
        assert_eq!(segments("/a/%2541"), Ok(vec!["a".into(), "%41".into()]), "decoded once, not twice");
        assert_eq!(segments("/a/%C3%A9"), Ok(vec!["a".into(), "é".into()]));
        assert_eq!(segments("/orders/v0/orders/{orderId}"), Ok(vec!["orders".into(), "v0".into(), "orders".into(), "{orderId}".into()]));
        assert!(matches!(path_segments("/plain/path").expect("ok")[0], Cow::Borrowed(_)), "no copy without escapes");
    }

    #[test]
    fn refuses_path_tricks() {
        let cases = [
            ("orders/v0", UriError::NotAbsolute),
            ("", UriError::NotAbsolute),
            ("/", UriError::EmptySegment),
            ("/a//b", UriError::EmptySegment),
            ("/a/b/", UriError::EmptySegment),
            ("/a/;x/b", UriError::EmptySegment),
            ("/a/%20/b", UriError::EmptySegment),
            ("/orders/v0/orders/.", UriError::DotSegment),
            ("/a/../b", UriError::DotSegment),
            ("/a/%2E%2E/b", UriError::DotSegment),
            ("/a/.%2e/b", UriError::DotSegment),
            ("/catalog/..%3B/orders", UriError::DotSegment),
            ("/catalog/..;x/orders", UriError::DotSegment),
            ("/catalog/..%20/orders", UriError::DotSegment),
            ("/a/.../b", UriError::DotSegment),
            ("/a/x%2F..%2Fb", UriError::EncodedSlash),
            ("/a/x%2f", UriError::EncodedSlash),
            ("/catalog\\..\\orders", UriError::Backslash),
            ("/a/x%5C..", UriError::Backslash),
            ("/a/x%5c", UriError::Backslash),
            ("/a/1%00", UriError::ControlCharacter),
            ("/a/1%0A", UriError::ControlCharacter),
            ("/a/1%7f", UriError::ControlCharacter),
            ("/a/1%C2%85", UriError::ControlCharacter),
            ("/a/1\tb", UriError::ControlCharacter),
            ("/a/b c", UriError::InvalidCharacter),
            ("/a/é", UriError::InvalidCharacter),
            ("/a/%ZZ", UriError::BadPercentEncoding),
            ("/a/%4", UriError::BadPercentEncoding),
            ("/a/%", UriError::BadPercentEncoding),
            ("/a/%C3%28", UriError::InvalidUtf8),
            ("/a/%FF", UriError::InvalidUtf8),
        ];
        for (path, error) in cases {
            assert_eq!(segments(path), Err(error), "{path:?}");
        }
        assert_eq!(parse("/a/b#x").err(), Some(UriError::Fragment));
        assert_eq!(parse("/a/../b?x=1").err(), Some(UriError::DotSegment));
    }

    #[test]
    fn decodes_query_pairs() {
        assert_eq!(
            pairs("Buyer%45mail=jane%40example.com&x=a+b&&flag&e=&k=v=w"),
            Ok(
                vec![("BuyerEmail".into(), "jane@example.com".into()), ("x".into(), "a b".into()), ("flag".into(), "".into()), ("e".into(), "".into()), ("k".into(), "v=w".into()),]
            )
        );
        assert_eq!(pairs("BuyerEmail%3Djane=x"), Ok(vec![("BuyerEmail=jane".into(), "x".into())]), "an encoded = is part of the name");
        assert_eq!(pairs("a=%2B%2F%5C"), Ok(vec![("a".into(), "+/\\".into())]), "slashes are fine in values");
        assert_eq!(pairs(""), Ok(vec![]));
        for bad in ["a=%ZZ", "a=%0A", "a%00=1", "a=\u{7f}", "a=%C3%28", "a=b c"] {
            assert!(pairs(bad).is_err(), "{bad:?}");
        }
        let t = parse("/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER").expect("valid");
        assert_eq!(t.segments, ["orders", "v0", "orders"]);
        assert_eq!(t.query, [(Cow::Borrowed("MarketplaceIds"), Cow::Borrowed("ATVPDKIKX0DER"))]);
    }
}
