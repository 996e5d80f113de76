//! Canary records (DPP 2.6): values the seller plants in real data — an order id, a buyer email,
//! a name — that no legitimate workflow should touch. Any request or response carrying one raises
//! a critical event and metric, and can be blocked.
//!
//! Matching is a multi-pattern search (Aho-Corasick) over the raw bytes, for each value in its
//! plain, JSON-escaped and percent-encoded forms. Events and metrics name the canary's id, never its
//! value; error messages never repeat a value either.
use aho_corasick::AhoCorasick;
use serde::Deserialize;

use crate::config_error::ConfigError;

/// Shortest canary value accepted: shorter ones would match by chance.
pub const MIN_CANARY_LEN: usize = 8;
const MAX_CANARY_LEN: usize = 256;

/// The `canaries` section of a policy.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CanariesDoc {
    /// Refuse requests and responses that carry a canary (403 `canary_blocked`); otherwise only
    /// alert.
    #[serde(default)]
    pub block: bool,
    #[serde(default)]
    pub records: Vec<CanaryDoc>,
}

/// One canary record.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryDoc {
    /// Names the canary in events and metrics.
    pub id: String,
    /// The planted value.
    pub value: String,
}

/// The compiled canaries.
pub struct Canaries {
    pub block: bool,
    ids: Vec<String>,
    /// Pattern index → canary index.
    owner: Vec<usize>,
    matcher: Option<AhoCorasick>,
    longest: usize,
}

impl Canaries {
    pub fn build(doc: &CanariesDoc) -> Result<Canaries, ConfigError> {
        let mut ids: Vec<String> = Vec::new();
        let mut patterns: Vec<String> = Vec::new();
        let mut owner = Vec::new();
        for (i, record) in doc.records.iter().enumerate() {
            let at = format!("canaries.records[{i}]");
            if record.id.is_empty() || record.id.len() > 64 || !record.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(ConfigError::new(format!("{at}.id"), "must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.' (it names the canary in events and metrics)"));
            }
            if ids.contains(&record.id) {
                return Err(ConfigError::new(format!("{at}.id"), format!("'{}' is used twice; give each canary its own id", record.id)));
            }
            let len = record.value.chars().count();
            if !(MIN_CANARY_LEN..=MAX_CANARY_LEN).contains(&len) {
                return Err(ConfigError::new(
                    format!("{at}.value"),
                    format!("must be {MIN_CANARY_LEN} to {MAX_CANARY_LEN} characters long (shorter values match ordinary data by chance)"),
                ));
            }
            for form in forms(&record.value) {
                if !patterns.contains(&form) {
                    patterns.push(form);
                    owner.push(ids.len());
                }
            }
            ids.push(record.id.clone());
        }
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        let matcher = if patterns.is_empty() { None } else { Some(AhoCorasick::new(&patterns).map_err(|_| ConfigError::new("canaries.records", "could not be compiled"))?) };
        Ok(Canaries { block: doc.block, ids, owner, matcher, longest })
    }

    /// Whether any canary is configured.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// The ids of the canaries found in `haystack`, each once, in policy order.
    pub fn find(&self, haystack: &[u8]) -> Vec<&str> {
        let Some(matcher) = &self.matcher else { return Vec::new() };
        let mut hit = vec![false; self.ids.len()];
        for m in matcher.find_overlapping_iter(haystack) {
            hit[self.owner[m.pattern().as_usize()]] = true;
        }
        self.ids.iter().zip(hit).filter(|(_, h)| *h).map(|(id, _)| id.as_str()).collect()
    }

    /// The canaries in a JSON body as a JSON parser reads it: the raw bytes, and every member
    /// name and string decoded (a canary written with escapes, `902\u002d0000000…`, is the same
    /// value to the SP-API and every client). Bodies that are not JSON are searched raw.
    pub fn find_in_json(&self, body: &[u8]) -> Vec<&str> {
        let mut hits = self.find(body);
        if self.matcher.is_none() {
            return hits;
        }
        fn add<'c>(canaries: &'c Canaries, text: &str, hits: &mut Vec<&'c str>) {
            for id in canaries.find(text.as_bytes()) {
                if !hits.contains(&id) {
                    hits.push(id);
                }
            }
        }
        fn walk<'c>(canaries: &'c Canaries, value: &serde_json::Value, hits: &mut Vec<&'c str>) {
            match value {
                serde_json::Value::String(s) => add(canaries, s, hits),
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(canaries, v, hits)),
                serde_json::Value::Object(members) => {
                    for (name, v) in members {
                        add(canaries, name, hits);
                        walk(canaries, v, hits);
                    }
                }
                _ => {}
            }
        }
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
            walk(self, &value, &mut hits);
        }
        hits
    }

    /// How many bytes of one chunk to keep for the next, so a value split across chunks is found.
    pub fn overlap(&self) -> usize {
        self.longest.saturating_sub(1)
    }
}

/// The forms a value takes on the wire: as is, inside a JSON string, in a URL.
fn forms(value: &str) -> Vec<String> {
    let json = serde_json::to_string(value).unwrap_or_default();
    let json_inner = json.get(1..json.len().saturating_sub(1)).unwrap_or("").to_string();
    let ascii_json = value.chars().map(|c| if c.is_ascii() { c.to_string() } else { format!("\\u{:04x}", c as u32) }).collect::<String>();
    let percent = value.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect::<String>();
    let mut out = vec![value.to_string(), json_inner, ascii_json, percent.clone(), percent.to_lowercase()];
    out.dedup();
    out
}

/// Finds canaries in a body that arrives in chunks, carrying the tail of each chunk over.
#[derive(Default)]
pub struct ChunkScanner {
    carry: Vec<u8>,
}

impl ChunkScanner {
    /// Scans one chunk; returns the canary ids found (a value spanning chunks is found once).
    pub fn feed<'c>(&mut self, canaries: &'c Canaries, chunk: &[u8]) -> Vec<&'c str> {
        let mut window = std::mem::take(&mut self.carry);
        let carried = window.len();
        window.extend_from_slice(chunk);
        let hits = canaries.find(&window);
        let keep = canaries.overlap().min(window.len());
        self.carry = window[window.len() - keep..].to_vec();
        // A hit entirely inside the carried bytes was reported with the previous chunk.
        if carried > 0 && !hits.is_empty() {
            let before = canaries.find(&window[..carried]);
            return hits.into_iter().filter(|h| !before.contains(h)).collect();
        }
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canaries(block: bool) -> Canaries {
        let doc: CanariesDoc = serde_json::from_value(serde_json::json!({
            "block": block,
            "records": [
                {"id": "canary-order", "value": "902-0000000-1111111"},
                {"id": "canary-email", "value": "trap.buyer+x@example.com"},
                {"id": "canary-name", "value": "Zoë Canarybird"}
            ]
        }))
        .expect("doc");
        Canaries::build(&doc).expect("builds")
    }

    #[test]
    fn finds_plain_json_escaped_and_url_forms() {
        let c = canaries(false);
        assert_eq!(c.find(br#"{"AmazonOrderId":"902-0000000-1111111"}"#), ["canary-order"]);
        assert_eq!(c.find(b"/orders/v0/orders?BuyerEmail=trap.buyer%2Bx%40example.com"), ["canary-email"]);
        assert_eq!(c.find(br#"{"Name":"Zo\u00eb Canarybird"}"#), ["canary-name"]);
        assert_eq!(c.find("{\"Name\":\"Zoë Canarybird\"}".as_bytes()), ["canary-name"]);
        assert!(c.find(b"902-0000000-1111112 and nothing else").is_empty());
    }

    #[test]
    fn finds_values_json_escaped_any_way_in_bodies() {
        let c = canaries(true);
        let body = br#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/902\u002d0000000-1111111/address"}]}"#;
        assert!(c.find(body).is_empty(), "not in its fixed forms");
        assert_eq!(c.find_in_json(body), vec!["canary-order"]);
    }

    #[test]
    fn finds_values_split_across_chunks_once() {
        let c = canaries(true);
        let mut s = ChunkScanner::default();
        assert!(s.feed(&c, b"{\"id\":\"902-00000").is_empty());
        assert_eq!(s.feed(&c, b"00-1111111\",\"x\":1}"), ["canary-order"]);
        assert!(s.feed(&c, b"]}").is_empty(), "reported twice");
    }

    #[test]
    fn refuses_bad_records_without_echoing_values() {
        for (records, field) in [
            (serde_json::json!([{"id": "a", "value": "tiny1"}]), "canaries.records[0].value"),
            (serde_json::json!([{"id": "bad id", "value": "long enough value"}]), "canaries.records[0].id"),
            (serde_json::json!([{"id": "a", "value": "long enough value"}, {"id": "a", "value": "another long value"}]), "canaries.records[1].id"),
        ] {
            let doc: CanariesDoc = serde_json::from_value(serde_json::json!({"records": records})).expect("doc");
            let e = Canaries::build(&doc).err().expect("refused");
            assert_eq!(e.field, field);
            assert!(!e.message.contains("tiny1") && !e.message.contains("long enough"), "{e}");
        }
    }
}
