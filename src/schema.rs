//! What Amazon's API models say about a PII value — its JSON type, enumeration, whether its
//! object requires it — and what that means for protecting it without breaking clients.
//!
//! Amazon's SDKs deserialize responses against these models: the official Python SDK fails a whole
//! response on a number that arrives as a string (`could not convert string to float`) or an enum
//! member outside its values, and on a required member that is missing; the JS SDK turns such a
//! number into `NaN`/`null`. So protection is schema-faithful (docs/POLICY.md, "Schema-faithful
//! protection"):
//! * a number stays a number — coarsened (default), or `null`, or (opt-in) a token;
//! * enumerations are not personal data on their own (an address type, a country code): the
//!   catalog leaves them clear, and a policy cannot make them PII;
//! * a required member is never removed: a caller without access gets its type's empty value.
//!
//! The facts come from `policies/spapi-schema-facts.json` (scripts/spapi-schema-facts.py), merged
//! into the catalog by scripts/merge-schema-facts.py.
use serde::Deserialize;

/// Member names that are never personal data on their own, in any customer object: a country or
/// an address type says nothing about who the buyer is, and apps compute tax, carrier and
/// marketplace logic from them. Matched case-sensitively on the last member of a catalog path.
pub const NON_PII_MEMBERS: &[&str] = &["CountryCode", "countryCode", "AddressType", "addressType"];

/// Longest maxLength a token cannot fit (tokens are ~60–100 characters).
pub const TOKEN_MIN_LENGTH: u32 = 60;

/// The JSON type Amazon's model gives a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    /// `map<...>`, `array<...>` and untyped members: whatever arrives.
    #[serde(other)]
    Any,
}

/// The schema facts of one catalog path (the `schema` of a catalog `responsePii` entry).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldSchema {
    #[serde(rename = "type", deserialize_with = "json_type")]
    pub json_type: JsonType,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub nullable: Option<bool>,
    /// The model's enumeration, or the values its description lists.
    #[serde(default, rename = "enum")]
    pub values: Option<Vec<String>>,
    #[serde(default)]
    pub max_length: Option<u32>,
}

fn json_type<'de, D: serde::Deserializer<'de>>(d: D) -> Result<JsonType, D::Error> {
    // The facts write compound types as `array<string>`, `map<any>`.
    let name = String::deserialize(d)?;
    Ok(match name.as_str() {
        "string" => JsonType::String,
        "number" => JsonType::Number,
        "integer" => JsonType::Integer,
        "boolean" => JsonType::Boolean,
        "object" => JsonType::Object,
        "array" => JsonType::Array,
        _ => JsonType::Any,
    })
}

impl FieldSchema {
    /// Whether the value is an enumeration member (not personal data on its own).
    pub fn is_enum(&self) -> bool {
        self.values.as_ref().is_some_and(|v| !v.is_empty())
    }

    /// Whether the value is a JSON number.
    pub fn is_number(&self) -> bool {
        matches!(self.json_type, JsonType::Number | JsonType::Integer)
    }

    /// Whether a token would not fit the model's length limit.
    pub fn too_short_for_tokens(&self) -> bool {
        self.max_length.is_some_and(|m| m < TOKEN_MIN_LENGTH)
    }
}

/// Whether a catalog path ends in a member that is never PII on its own ([`NON_PII_MEMBERS`]).
pub fn is_non_pii_member(jsonpath: &str) -> bool {
    let last = jsonpath.rsplit(['.', '[']).next().unwrap_or("");
    let last = last.trim_end_matches(']').trim_matches(['\'', '"']);
    NON_PII_MEMBERS.contains(&last)
}

/// The empty value of a JSON value's type, written for a required member a caller may not see:
/// `""`, `0`, `false`, `[]` or `{}`, chosen from the value itself (`raw` is its JSON text).
pub fn empty_like(raw: &[u8]) -> &'static [u8] {
    match raw.first() {
        Some(b'"') => b"\"\"",
        Some(b'[') => b"[]",
        Some(b'{') => b"{}",
        Some(b't' | b'f') => b"false",
        Some(b'-' | b'0'..=b'9') => b"0",
        _ => b"null",
    }
}

/// Whether a value's raw JSON text is a number.
pub fn is_number_text(raw: &str) -> bool {
    matches!(raw.as_bytes().first(), Some(b'-' | b'0'..=b'9'))
}

/// Rounds a JSON number to `decimals` places, written as a JSON number (`47.6062` → `47.6`).
/// Integers stay integers; anything unreadable becomes `0` (never the original digits).
pub fn coarsen(raw: &str, decimals: u8, out: &mut Vec<u8>) {
    let Ok(value) = raw.parse::<f64>() else {
        out.push(b'0');
        return;
    };
    if !value.is_finite() {
        out.push(b'0');
        return;
    }
    let integer = !raw.contains(['.', 'e', 'E']);
    let text = if integer {
        // An integer stays an integer (clients may parse it as one).
        format!("{}", value.round() as i64)
    } else {
        let text = format!("{value:.prec$}", prec = usize::from(decimals));
        // `-0.0` and `-0` read oddly: a coarsened zero has no sign.
        if text.trim_start_matches('-').trim_matches(['0', '.']).is_empty() {
            text.trim_start_matches('-').to_string()
        } else {
            text
        }
    };
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coarse(raw: &str, d: u8) -> String {
        let mut out = Vec::new();
        coarsen(raw, d, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn coarsening_keeps_a_number() {
        assert_eq!(coarse("37.42678611", 1), "37.4");
        assert_eq!(coarse("-122.08060321", 1), "-122.1");
        assert_eq!(coarse("-0.04", 1), "0.0");
        assert_eq!(coarse("47.60621", 0), "48");
        assert_eq!(coarse("1e2", 1), "100.0");
        assert_eq!(coarse("12", 1), "12");
        for s in ["37.4", "-122.1", "0.0", "48", "100.0", "12"] {
            assert!(serde_json::from_str::<f64>(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn empty_values_keep_the_type() {
        assert_eq!(empty_like(b"\"Jane\""), b"\"\"");
        assert_eq!(empty_like(b"12.5"), b"0");
        assert_eq!(empty_like(b"[1]"), b"[]");
        assert_eq!(empty_like(b"{\"a\":1}"), b"{}");
    }

    #[test]
    fn non_pii_members_by_name() {
        assert!(is_non_pii_member("$.payload.ShippingAddress.CountryCode"));
        assert!(is_non_pii_member("$.orders[*].recipient.deliveryAddress.addressType"));
        assert!(!is_non_pii_member("$.payload.ShippingAddress.City"));
        assert!(!is_non_pii_member("$.payload.CountryCodeOfOrigin"));
    }

    #[test]
    fn facts_read_from_the_catalog_format() {
        let f: FieldSchema = serde_json::from_str(r#"{"type":"array<string>","required":true,"maxLength":30}"#).expect("facts");
        assert_eq!(f.json_type, JsonType::Any);
        assert!(f.required && f.too_short_for_tokens() && !f.is_enum());
        let e: FieldSchema = serde_json::from_str(r#"{"type":"string","required":false,"enum":["Residential","Commercial"]}"#).expect("facts");
        assert!(e.is_enum());
    }
}
