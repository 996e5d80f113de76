//! The policy document: one JSON document, passed as the plugin configuration in the Envoy YAML.
//! Reference: `docs/POLICY.md`. Anything unknown or invalid is refused with the field's path.
//!
//! This module reads every section (it knows them all); the sections' own modules know nothing of
//! the document, so no module depends back on this one.
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::access::{AccessDoc, CallerDoc, RoleDoc};
use crate::canary::CanariesDoc;
use crate::catalog::{parse_class, CatalogOverrides};
use crate::config_error::ConfigError;
use crate::drift::{DetectorAction, DriftKind, DriftPolicy};
use crate::keyring::KeysDoc;
use crate::pii::PerClass;
use crate::policy::*;
use crate::tokens::Mode;
use crate::upstreams::UpstreamDoc;

/// The policy document as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDoc {
    pub version: u32,
    pub keys: KeysDoc,
    #[serde(default)]
    pub defaults: ClassRuleDoc,
    #[serde(default)]
    pub classes: BTreeMap<String, ClassRuleDoc>,
    #[serde(default)]
    pub redact_mask: Option<String>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub buffer_limit_bytes: Option<u64>,
    /// What PII values that are JSON numbers (geo-coordinates) become.
    #[serde(default)]
    pub numbers: NumbersDoc,
    #[serde(default)]
    pub catalog: CatalogOverrides,
    #[serde(default)]
    pub access: AccessDoc,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleDoc>,
    #[serde(default)]
    pub callers: Vec<CallerDoc>,
    #[serde(default)]
    pub canaries: CanariesDoc,
    /// PII the catalog does not name: detectors, the zero-match alarm, PII-free operations.
    #[serde(default)]
    pub drift: DriftDoc,
    /// Approved third-party upstreams, by name (src/upstreams.rs).
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamDoc>,
    /// Envoy clusters (with `*` wildcards) that lead to the SP-API (default `spapi`, `spapi-*`).
    #[serde(default)]
    pub spapi_clusters: Option<Vec<String>>,
    /// Report documents through the proxy: the document hosts allowed (docs/POLICY.md, "Report documents").
    #[serde(default)]
    pub documents: crate::documents::DocumentsDoc,
}

/// The `drift` section (docs/POLICY.md, "Drift").
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DriftDoc {
    /// Detector → `tokenize`, `report` or `off` (email, phone, address, name).
    #[serde(default)]
    pub detectors: BTreeMap<String, String>,
    /// Scan responses of operations the catalog lists without PII (report only).
    #[serde(default)]
    pub scan_pii_free_operations: Option<bool>,
    /// Report PII responses in which nothing matched but keys look like PII.
    #[serde(default)]
    pub zero_match_alarm: Option<bool>,
}

/// Reads the `drift` section. Errors name the field.
pub fn drift_policy(doc: &DriftDoc) -> Result<DriftPolicy, ConfigError> {
    let mut policy = DriftPolicy::default();
    for (name, action) in &doc.detectors {
        let at = format!("drift.detectors.{name}");
        let kind =
            DriftKind::DETECTORS.into_iter().find(|k| k.as_str() == name).ok_or_else(|| ConfigError::new(at.clone(), "is not a detector; use email, phone, address or name"))?;
        let action = DetectorAction::parse(action).ok_or_else(|| ConfigError::new(at, format!("'{action}' is not a detector action; use tokenize, report or off")))?;
        policy.set(kind, action);
    }
    if let Some(on) = doc.scan_pii_free_operations {
        policy.scan_pii_free = on;
    }
    if let Some(on) = doc.zero_match_alarm {
        policy.zero_match = on;
    }
    Ok(policy)
}

/// The `numbers` section: PII values that are JSON numbers stay numbers unless the policy opts in.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct NumbersDoc {
    /// `coarsen` (default), `null` or `tokenize`.
    pub action: Option<String>,
    /// Decimal places kept by `coarsen` (0–6, default 1: about 11 km for a coordinate).
    pub decimals: Option<u8>,
}

/// What happens to the values of a PII class.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ClassRuleDoc {
    /// `tokenize` (default), `redact`, `hash` or `clear`.
    pub action: Option<String>,
    /// `deterministic` (default) or `randomized`; only with `tokenize`.
    pub mode: Option<String>,
}

impl Policy {
    /// Reads the document's own settings. Errors name the field.
    pub fn from_doc(doc: &PolicyDoc) -> Result<Policy, ConfigError> {
        if doc.version != POLICY_VERSION {
            return Err(ConfigError::new("version", format!("this build reads policy version {POLICY_VERSION}; set \"version\": {POLICY_VERSION}")));
        }
        let default = action(&doc.defaults, Action::Tokenize(Mode::Deterministic), "defaults")?;
        let mut actions = PerClass::splat(default);
        for (name, rule) in &doc.classes {
            let class = parse_class(name).map_err(|m| ConfigError::new(format!("classes.{name}"), m))?;
            actions[class] = action(rule, default, &format!("classes.{name}"))?;
        }
        let redact_mask = doc.redact_mask.clone().unwrap_or_else(|| DEFAULT_REDACT_MASK.to_string());
        if redact_mask.is_empty() || redact_mask.len() > 64 || redact_mask.chars().any(char::is_control) {
            return Err(ConfigError::new("redactMask", "must be 1 to 64 printable characters"));
        }
        let max_body_bytes = doc.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if !(1024..=MAX_BODY_BYTES_CEILING).contains(&max_body_bytes) {
            return Err(ConfigError::new("maxBodyBytes", format!("must be between 1024 and {MAX_BODY_BYTES_CEILING}")));
        }
        let buffer_limit_bytes = doc.buffer_limit_bytes.unwrap_or(DEFAULT_BUFFER_LIMIT_BYTES);
        if !(64 * 1024..=BUFFER_LIMIT_CEILING).contains(&buffer_limit_bytes) {
            return Err(ConfigError::new("bufferLimitBytes", format!("must be between 65536 and {BUFFER_LIMIT_CEILING}")));
        }
        if max_body_bytes.saturating_mul(EXPECTED_GROWTH) > buffer_limit_bytes {
            return Err(ConfigError::new(
                "maxBodyBytes",
                format!(
                    "{max_body_bytes} bytes can grow to {} when tokenized (×{EXPECTED_GROWTH}), over bufferLimitBytes {buffer_limit_bytes}; lower maxBodyBytes to at most {} or raise bufferLimitBytes to at least {}",
                    max_body_bytes.saturating_mul(EXPECTED_GROWTH),
                    buffer_limit_bytes / EXPECTED_GROWTH,
                    max_body_bytes.saturating_mul(EXPECTED_GROWTH)
                ),
            ));
        }
        let numbers = match doc.numbers.action.as_deref() {
            None | Some("coarsen") => {
                let decimals = doc.numbers.decimals.unwrap_or(DEFAULT_NUMBER_DECIMALS);
                if decimals > 6 {
                    return Err(ConfigError::new("numbers.decimals", "must be 0 to 6 (1 keeps a coordinate to about 11 km)"));
                }
                NumberAction::Coarsen(decimals)
            }
            Some(other) if doc.numbers.decimals.is_some() => return Err(ConfigError::new("numbers.decimals", format!("applies only to action coarsen, not {other}; remove it"))),
            Some("null") => NumberAction::Null,
            Some("tokenize") => NumberAction::Tokenize,
            Some(other) => return Err(ConfigError::new("numbers.action", format!("'{other}' is not a number action; use coarsen (default), null or tokenize"))),
        };
        Ok(Policy { actions, redact_mask, max_body_bytes: max_body_bytes as usize, buffer_limit_bytes: buffer_limit_bytes as usize, numbers })
    }

    /// The largest rewritten body that fits Envoy's buffer.
    pub fn max_rewritten_bytes(&self) -> usize {
        self.buffer_limit_bytes.saturating_sub(BUFFER_HEADROOM_BYTES.min(self.buffer_limit_bytes / 16))
    }
}

fn action(rule: &ClassRuleDoc, inherited: Action, at: &str) -> Result<Action, ConfigError> {
    let mode = match rule.mode.as_deref() {
        None => None,
        Some("deterministic") => Some(Mode::Deterministic),
        Some("randomized") => Some(Mode::Randomized),
        Some(other) => return Err(ConfigError::new(format!("{at}.mode"), format!("'{other}' is not a mode; use deterministic or randomized"))),
    };
    let inherited_mode = match inherited {
        Action::Tokenize(m) => m,
        _ => Mode::Deterministic,
    };
    let action = match rule.action.as_deref() {
        None => match (inherited, mode) {
            (Action::Tokenize(_), Some(m)) => Action::Tokenize(m),
            (a, _) => a,
        },
        Some(name) => Action::parse(name, mode.unwrap_or(inherited_mode))
            .ok_or_else(|| ConfigError::new(format!("{at}.action"), format!("'{name}' is not an action; use tokenize, redact, hash, clear or none")))?,
    };
    if mode.is_some() && !matches!(action, Action::Tokenize(_)) {
        return Err(ConfigError::new(format!("{at}.mode"), "applies only to action tokenize; remove it"));
    }
    Ok(action)
}

/// Parses a policy document, naming the field of the first error (`keys.env`, `classes.email.mode`).
pub fn parse_doc(config: &[u8]) -> Result<PolicyDoc, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(config);
    let doc = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." || field == "?" { "(policy)".to_string() } else { field };
        ConfigError::new(field, format!("{}; see docs/POLICY.md", e.inner()))
    })?;
    de.end().map_err(|e| ConfigError::new("(policy)", format!("{e}")))?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::PiiClass;

    fn policy(json: &str) -> Result<Policy, ConfigError> {
        Policy::from_doc(&parse_doc(json.as_bytes())?)
    }

    const KEYS: &str = r#""keys":{"active":"k1","env":{"k1":"K1"}}"#;

    #[test]
    fn defaults_and_overrides() {
        let p = policy(&format!(r#"{{"version":1,{KEYS},"classes":{{"address":{{"mode":"randomized"}},"phone":{{"action":"redact"}}}}}}"#)).expect("valid");
        assert_eq!(p.action(PiiClass::Email), Action::Tokenize(Mode::Deterministic));
        assert_eq!(p.action(PiiClass::Address), Action::Tokenize(Mode::Randomized));
        assert_eq!(p.action(PiiClass::Phone), Action::Redact);
        assert_eq!(p.max_body_bytes, DEFAULT_MAX_BODY_BYTES as usize);
        let q = policy(&format!(r#"{{"version":1,{KEYS},"defaults":{{"action":"tokenize","mode":"randomized"}},"classes":{{"name":{{"action":"hash"}}}}}}"#)).expect("valid");
        assert_eq!(q.action(PiiClass::Email), Action::Tokenize(Mode::Randomized));
        assert_eq!(q.action(PiiClass::Name), Action::Hash);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (format!(r#"{{"version":1,{KEYS},"colour":1}}"#), "colour", "unknown field `colour`"),
            (format!(r#"{{"version":1,{KEYS},"classes":{{"email":{{"acton":"clear"}}}}}}"#), "classes.email.acton", "unknown field `acton`"),
            (format!(r#"{{"version":1,{KEYS},"classes":{{"shoe":{{}}}}}}"#), "classes.shoe", "not a PII class"),
            (format!(r#"{{"version":1,{KEYS},"classes":{{"email":{{"mode":"sometimes"}}}}}}"#), "classes.email.mode", "not a mode"),
            (format!(r#"{{"version":1,{KEYS},"classes":{{"email":{{"action":"encrypt"}}}}}}"#), "classes.email.action", "not an action"),
            (format!(r#"{{"version":1,{KEYS},"classes":{{"email":{{"action":"hash","mode":"randomized"}}}}}}"#), "classes.email.mode", "only"),
            (format!(r#"{{"version":2,{KEYS}}}"#), "version", "policy version 1"),
            (format!(r#"{{"version":1,{KEYS},"maxBodyBytes":10}}"#), "maxBodyBytes", "between"),
            (format!(r#"{{"version":1,{KEYS},"redactMask":""}}"#), "redactMask", "printable"),
            (format!(r#"{{"version":1,{KEYS},"maxBodyBytes":16777216}}"#), "maxBodyBytes", "lower maxBodyBytes to at most 11184810 or raise bufferLimitBytes to at least 50331648"),
            (format!(r#"{{"version":1,{KEYS},"bufferLimitBytes":1000}}"#), "bufferLimitBytes", "between"),
            (r#"{"version":1}"#.to_string(), "(policy)", "missing field `keys`"),
            (format!(r#"{{"version":1,{KEYS},"keys2":{{}}}}"#), "keys2", "unknown field"),
            (r#"{"version":1,"keys":{"active":"k1","env":{"k1":"K1"},"material":"x"}}"#.to_string(), "keys.material", "unknown field `material`"),
            ("{not json".to_string(), "(policy)", "key must be a string"),
            (format!(r#"{{"version":1,{KEYS},"drift":{{"scanPiiFree":true}}}}"#), "drift.scanPiiFree", "unknown field"),
        ];
        for (json, field, text) in cases {
            let e = policy(&json).expect_err("refused");
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(text), "{e}");
        }
    }

    #[test]
    fn drift_section() {
        let drift = |json: &str| drift_policy(&parse_doc(format!(r#"{{"version":1,{KEYS},"drift":{json}}}"#).as_bytes()).expect("parses").drift);
        let d = drift("{}").expect("valid");
        assert_eq!(d, DriftPolicy::default());
        assert_eq!((d.action(DriftKind::Email), d.action(DriftKind::Phone)), (DetectorAction::Tokenize, DetectorAction::Tokenize));
        assert_eq!((d.action(DriftKind::Address), d.action(DriftKind::Name)), (DetectorAction::Report, DetectorAction::Report));
        assert!(d.zero_match && !d.scan_pii_free);
        let d = drift(r#"{"detectors":{"name":"tokenize","email":"off"},"scanPiiFreeOperations":true,"zeroMatchAlarm":false}"#).expect("valid");
        assert_eq!((d.action(DriftKind::Name), d.action(DriftKind::Email)), (DetectorAction::Tokenize, DetectorAction::Off));
        assert!(!d.zero_match && d.scan_pii_free);
        let e = drift(r#"{"detectors":{"ssn":"report"}}"#).expect_err("refused");
        assert_eq!(e.field, "drift.detectors.ssn");
        let e = drift(r#"{"detectors":{"phone":"mask"}}"#).expect_err("refused");
        assert_eq!(e.field, "drift.detectors.phone");
    }
}
