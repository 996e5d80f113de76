//! Fail-closed outcomes: why a response could not be protected, and the SP-API-style error that
//! replaces it. Messages are fixed strings: nothing from the upstream body or headers is echoed.

/// Why the filter refused to pass a response on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The body is not valid JSON.
    InvalidJson,
    /// `content-encoding` other than identity (gzip, br…): the filter cannot see the fields.
    UnsupportedEncoding,
    /// The content type is not JSON.
    UnsupportedContentType,
    /// The body is larger than `maxBodyBytes`.
    BodyTooLarge,
    /// A `charset` other than UTF-8: the filter would read other members than the client.
    UnsupportedCharset,
    /// A PII class to tokenize or hash has no active key (the ring's keys ended, see
    /// `spapi-guard keys`): nothing can protect it.
    NoActiveKey,
}

impl FailReason {
    /// Stable reason code, used in the audit log, metrics and the `details` of the error.
    pub fn code(self) -> &'static str {
        match self {
            FailReason::InvalidJson => "invalid_json",
            FailReason::UnsupportedEncoding => "unsupported_content_encoding",
            FailReason::UnsupportedContentType => "unsupported_content_type",
            FailReason::BodyTooLarge => "body_too_large",
            FailReason::UnsupportedCharset => "unsupported_charset",
            FailReason::NoActiveKey => "no_active_key",
        }
    }

    fn message(self) -> &'static str {
        match self {
            FailReason::InvalidJson => "The SP-API response could not be parsed as JSON, so its customer data could not be protected.",
            FailReason::UnsupportedEncoding => "The SP-API response is compressed with an encoding spapi-guard does not read; send requests without Accept-Encoding.",
            FailReason::UnsupportedContentType => "The SP-API response is not JSON, so its customer data could not be protected.",
            FailReason::BodyTooLarge => "The SP-API response is larger than the policy's maxBodyBytes; request a smaller page.",
            FailReason::UnsupportedCharset => "The SP-API response declares a character set other than UTF-8, so its customer data could not be protected.",
            FailReason::NoActiveKey => "spapi-guard has no active key for a class of customer data in this response, so it could not be protected.",
        }
    }

    /// The HTTP status the client gets.
    pub fn status(self) -> u32 {
        502
    }

    /// The SP-API-style error body the client gets instead of the upstream's.
    pub fn error_body(self) -> String {
        format!(r#"{{"errors":[{{"code":"PiiProtectionFailed","message":"{}","details":"spapi-guard:{}"}}]}}"#, self.message(), self.code())
    }
}

/// Checks the response headers of an operation whose body the filter must rewrite.
/// `content_length` is the declared length, when there is one.
pub fn check_response_headers(content_type: Option<&str>, content_encoding: Option<&str>, content_length: Option<&str>, max_body_bytes: usize) -> Result<(), FailReason> {
    if let Some(encoding) = content_encoding {
        let encoding = encoding.trim();
        if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
            return Err(FailReason::UnsupportedEncoding);
        }
    }
    if let Some(length) = content_length {
        match length.trim().parse::<u64>() {
            Ok(n) if n > max_body_bytes as u64 => return Err(FailReason::BodyTooLarge),
            Ok(_) => {}
            Err(_) => return Err(FailReason::InvalidJson),
        }
    }
    if content_type.is_some_and(|ct| !utf8_charset(ct)) {
        return Err(FailReason::UnsupportedCharset);
    }
    match content_type {
        Some(ct) if is_json(ct) => Ok(()),
        // An empty body needs no content type; a body without one is refused when it arrives.
        None if content_length.is_some_and(|l| l.trim() == "0") => Ok(()),
        _ => Err(FailReason::UnsupportedContentType),
    }
}

/// Whether a content type's `charset` parameter, if any, is UTF-8 (JSON's only encoding, RFC 8259):
/// a client that decodes by another declared charset (UTF-7, UTF-16) reads members the filter
/// never saw.
fn utf8_charset(content_type: &str) -> bool {
    content_type.split(';').skip(1).all(|param| {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        !name.trim().eq_ignore_ascii_case("charset") || matches!(value.trim().trim_matches('"').to_ascii_lowercase().as_str(), "utf-8" | "utf8")
    })
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_json_identity_within_limit() {
        assert_eq!(check_response_headers(Some("application/json"), None, Some("10"), 100), Ok(()));
        assert_eq!(check_response_headers(Some("application/json; charset=UTF-8"), Some("identity"), None, 100), Ok(()));
        assert_eq!(check_response_headers(Some("application/problem+json"), None, None, 100), Ok(()));
        assert_eq!(check_response_headers(None, None, Some("0"), 100), Ok(()));
    }

    #[test]
    fn refuses_the_rest() {
        assert_eq!(check_response_headers(Some("application/json"), Some("gzip"), None, 100), Err(FailReason::UnsupportedEncoding));
        assert_eq!(check_response_headers(Some("text/html"), None, None, 100), Err(FailReason::UnsupportedContentType));
        assert_eq!(check_response_headers(None, None, None, 100), Err(FailReason::UnsupportedContentType));
        assert_eq!(check_response_headers(Some("application/json"), None, Some("101"), 100), Err(FailReason::BodyTooLarge));
        assert_eq!(check_response_headers(Some("application/jsonx"), None, None, 100), Err(FailReason::UnsupportedContentType));
        assert_eq!(check_response_headers(Some("application/json; charset=utf-7"), None, None, 100), Err(FailReason::UnsupportedCharset));
        assert_eq!(check_response_headers(Some("application/json;Charset=\"UTF-16\""), None, None, 100), Err(FailReason::UnsupportedCharset));
        assert_eq!(check_response_headers(Some("application/json; charset=\"UTF-8\""), None, None, 100), Ok(()));
    }

    #[test]
    fn error_bodies_are_sp_api_style_json() {
        for r in [
            FailReason::InvalidJson,
            FailReason::UnsupportedEncoding,
            FailReason::UnsupportedContentType,
            FailReason::BodyTooLarge,
            FailReason::UnsupportedCharset,
            FailReason::NoActiveKey,
        ] {
            let v: serde_json::Value = serde_json::from_str(&r.error_body()).expect("json");
            assert_eq!(v["errors"][0]["code"], "PiiProtectionFailed");
            assert_eq!(v["errors"][0]["details"], format!("spapi-guard:{}", r.code()));
        }
    }
}
