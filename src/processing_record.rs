//! The record of processing (GDPR art. 30, Amazon DPP 1.2, 1.3, 2.1, 2.4–2.6): what the policy
//! lets each caller do with customer PII, read from the policy by the filter's own loader
//! ([`Guard::load_at`]) — no second reading of the policy's semantics. Roles are merged, wildcards
//! expanded against the catalog, restricted operations excluded, levels and reveal grants compiled
//! exactly as the filter enforces them; this module only reports the compiled result.
//!
//! Two renderings of one [`ProcessingRecord`]: JSON (stable, `docs/processing-record.schema.json`)
//! and Markdown for auditors. `spapi-guard record-of-processing` prints them.
//!
//! Key material is not part of the record: the loader is given a stand-in for every key variable
//! (derived from the variable's name), so the record can be made where no key is held.
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::access::REVEAL_OPERATION;
use crate::catalog::Operation;
use crate::config_error::ConfigError;
use crate::drift::{DetectorAction, DriftKind};
use crate::exchange::REVEAL_PATH;
use crate::guard::Guard;
use crate::keyring::display_instant;
use crate::pii::{PerClass, PiiClass};
use crate::policy::{Action, NumberAction};
use crate::policy_doc::parse_doc;
use crate::tokens::Mode;

/// Version of the JSON form; a change that is not an addition of optional members raises it.
pub const RECORD_SCHEMA: u32 = 1;

/// The record: policy-wide facts, then one entry per caller.
#[derive(Serialize, Debug)]
pub struct ProcessingRecord {
    pub record: &'static str,
    pub schema: u32,
    pub generated_by: String,
    /// The day the record describes (key states, active keys): `YYYY-MM-DD`.
    pub as_of: String,
    pub policy: PolicySource,
    pub settings: Settings,
    /// What each class becomes where no caller decides (dry-run of an unknown caller), its token
    /// mode, and its keys.
    pub classes: Vec<ClassEntry>,
    pub keys: Vec<KeyEntry>,
    pub audit: AuditSettings,
    pub callers: Vec<CallerEntry>,
    /// With `--catalog`: the PII paths of every operation some caller may call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<Vec<CatalogEntry>>,
    /// The loader's warnings, word for word (the policy loads).
    pub warnings: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct PolicySource {
    /// The file name as given.
    pub file: String,
    /// SHA-256 of the policy's bytes: which policy this record describes.
    pub sha256: String,
    pub version: u32,
}

#[derive(Serialize, Debug)]
pub struct Settings {
    /// `access.dryRun`: access decisions logged, not enforced.
    pub dry_run: bool,
    pub allow_plaintext: bool,
    pub identity_sources: Vec<&'static str>,
    pub identity_header: Option<String>,
    pub xff_trusted_hops: u32,
    /// `None`: any source address (but `deny_cidrs`).
    pub allow_cidrs: Option<Vec<String>>,
    pub deny_cidrs: Vec<String>,
    /// Paths outside the catalog that listed callers may use: not PII operations, not protected.
    pub pass_through_paths: Vec<String>,
    pub lockout: Lockout,
    pub max_body_bytes: usize,
    pub buffer_limit_bytes: usize,
    pub numbers: Numbers,
}

#[derive(Serialize, Debug, Clone, Copy)]
pub struct Lockout {
    pub max_denials: u32,
    pub window_seconds: u64,
    pub cooldown_seconds: u64,
}

/// What PII values that are JSON numbers (geo-coordinates) become when their class is tokenized,
/// hashed or redacted.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbers {
    /// `coarsened`, `null` or `tokenized`.
    pub form: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decimals: Option<u8>,
}

#[derive(Serialize, Debug)]
pub struct ClassEntry {
    pub class: &'static str,
    /// The policy's action for the class (`classes.<class>`, else `defaults`).
    pub default_form: Form,
    /// The key making its tokens on `as_of`, if any.
    pub active_key: Option<String>,
    /// The last day its tokens open: the end of the run of keys active from `as_of` (`None` for
    /// the short form: tokens never expire).
    pub tokens_open_until: Option<String>,
}

/// One form a PII value takes.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Form {
    /// `clear`, `tokenized`, `hashed`, `redacted` or `removed`.
    pub form: &'static str,
    /// With `tokenized`: `deterministic` or `randomized`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
}

impl Form {
    fn of(action: Action) -> Form {
        let mode = match action {
            Action::Tokenize(Mode::Deterministic) => Some("deterministic"),
            Action::Tokenize(Mode::Randomized) => Some("randomized"),
            _ => None,
        };
        Form { form: action.name(), mode }
    }

    /// `tokenized (deterministic)`, `clear`…
    pub fn label(&self) -> String {
        match self.mode {
            Some(mode) => format!("{} ({mode})", self.form),
            None => self.form.to_string(),
        }
    }
}

#[derive(Serialize, Debug)]
pub struct KeyEntry {
    pub id: String,
    /// The environment variable Envoy reads it from (never the key).
    pub variable: String,
    pub classes: Vec<&'static str>,
    pub created: Option<String>,
    pub active_from: Option<String>,
    /// Retention: its tokens are refused after this day.
    pub not_after: Option<String>,
    /// `pending`, `active`, `readable` or `expired` on `as_of`.
    pub state: &'static str,
}

#[derive(Serialize, Debug)]
pub struct AuditSettings {
    /// The audit log and security events are always on; what the policy tunes is below.
    pub audit_log: &'static str,
    pub canaries: Canaries,
    pub drift: Drift,
}

#[derive(Serialize, Debug)]
pub struct Canaries {
    /// Canary ids (never their values).
    pub ids: Vec<String>,
    /// Requests and responses carrying one are refused (else alerted only).
    pub block: bool,
}

#[derive(Serialize, Debug)]
pub struct Drift {
    /// Detector (`email`, `phone`, `address`, `name`) → `tokenize`, `report` or `off`.
    pub detectors: Vec<Detector>,
    pub zero_match_alarm: bool,
    pub scan_pii_free_operations: bool,
}

#[derive(Serialize, Debug)]
pub struct Detector {
    pub detector: &'static str,
    pub action: &'static str,
}

#[derive(Serialize, Debug)]
pub struct CallerEntry {
    pub id: String,
    pub identity_source: &'static str,
    pub roles: Vec<String>,
    /// `None`: any address the global lists allow.
    pub allow_cidrs: Option<Vec<String>>,
    /// Its decisions are logged, not enforced (`access.dryRun` or a role's `dryRun`).
    pub dry_run: bool,
    /// The form of each class in every response it gets (the most generous of its roles).
    pub pii: Vec<ClassForm>,
    pub lockout: CallerLockout,
    pub operations: Vec<OperationEntry>,
    /// Where it may turn tokens back into data: grants with the same classes grouped.
    pub reveal: Vec<RevealGrant>,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassForm {
    pub class: &'static str,
    #[serde(flatten)]
    pub form: Form,
}

#[derive(Serialize, Debug)]
pub struct CallerLockout {
    #[serde(flatten)]
    pub denials: Lockout,
    /// PII values delivered per window above which it is locked (`None`: no volume limit).
    pub max_pii_fields_per_window: Option<u64>,
}

#[derive(Serialize, Debug)]
pub struct OperationEntry {
    pub id: String,
    pub method: String,
    pub path: String,
    /// Amazon lists it as restricted (a Restricted Data Token is needed).
    pub restricted: bool,
    /// Its request bodies carry customer PII (Amazon's models): data the application sends.
    pub request_body_pii: bool,
    /// Query parameters that carry customer PII.
    pub query_pii: Vec<QueryPii>,
    /// The classes its responses carry, in the form this caller gets them.
    pub receives: Vec<Received>,
}

#[derive(Serialize, Debug)]
pub struct QueryPii {
    pub param: String,
    pub class: &'static str,
}

#[derive(Serialize, Debug)]
pub struct Received {
    pub class: &'static str,
    #[serde(flatten)]
    pub form: Form,
    /// Catalog paths of the class (customer objects also protect members no path names).
    pub paths: usize,
    /// The class's values that are numbers in Amazon's model, where they differ from `form`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numbers: Option<Numbers>,
}

#[derive(Serialize, Debug)]
pub struct RevealGrant {
    pub classes: Vec<&'static str>,
    pub destinations: Vec<Destination>,
}

/// Where plaintext may go. Kinds: a catalog `operation` (the SP-API), the proxy's reveal
/// `endpoint`, a named third-party `upstream`.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub kind: DestinationKind,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    Operation,
    Endpoint,
    /// A named third-party upstream (the policy's `upstreams`).
    Upstream,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Operation => "operation",
            DestinationKind::Endpoint => "endpoint",
            DestinationKind::Upstream => "upstream",
        }
    }
}

#[derive(Serialize, Debug)]
pub struct CatalogEntry {
    pub id: String,
    pub paths: Vec<CatalogPath>,
}

#[derive(Serialize, Debug)]
pub struct CatalogPath {
    pub class: &'static str,
    pub jsonpath: String,
    /// `path` (a catalog path), `member` (a customer object's classified member) or
    /// `customer_object` (every member of the object at this path, new ones included).
    pub kind: &'static str,
}

/// A stand-in for a key variable: the record needs no key, the loader wants one per variable.
fn stand_in_key(variable: &str) -> String {
    let digest = Sha256::digest(format!("spapi-guard record-of-processing stand-in {variable}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn number_form(numbers: NumberAction) -> Numbers {
    match numbers {
        NumberAction::Coarsen(d) => Numbers { form: "coarsened", decimals: Some(d) },
        NumberAction::Null => Numbers { form: "null", decimals: None },
        NumberAction::Tokenize => Numbers { form: "tokenized", decimals: None },
    }
}

fn detector_action(action: DetectorAction) -> &'static str {
    match action {
        DetectorAction::Tokenize => "tokenize",
        DetectorAction::Report => "report",
        DetectorAction::Off => "off",
    }
}

impl ProcessingRecord {
    /// Loads the policy with the filter's loader at `now_ms` (refusing what the filter refuses,
    /// naming the field) and records it. `file` names the policy in the record; `with_catalog`
    /// adds every PII path of the operations callers may call.
    pub fn build(config: &[u8], file: &str, now_ms: u64, with_catalog: bool) -> Result<ProcessingRecord, ConfigError> {
        let doc = parse_doc(config)?;
        let guard = Guard::load_at(config, &|name| Some(stand_in_key(name)), now_ms)?;
        let access = &guard.access;
        let schedule = guard.tokens.schedule();
        let numbers = number_form(guard.policy.numbers);
        let rules = access.lockout;
        let lockout = Lockout { max_denials: rules.max_denials, window_seconds: rules.window_ms / 1000, cooldown_seconds: rules.cooldown_ms / 1000 };
        let settings = Settings {
            dry_run: access.dry_run,
            allow_plaintext: doc.access.allow_plaintext,
            identity_sources: access.identity_sources().iter().map(|s| s.as_str()).collect(),
            identity_header: access.identity_header.clone(),
            xff_trusted_hops: doc.access.xff_trusted_hops,
            allow_cidrs: doc.access.allow_cidrs.clone(),
            deny_cidrs: doc.access.deny_cidrs.clone(),
            pass_through_paths: doc.access.pass_through_paths.clone(),
            lockout,
            max_body_bytes: guard.policy.max_body_bytes,
            buffer_limit_bytes: guard.policy.buffer_limit_bytes,
            numbers,
        };
        let classes = PiiClass::ALL
            .into_iter()
            .map(|class| {
                let active = schedule.active_at(class, now_ms);
                let until = schedule.active_until(class, now_ms).filter(|&ms| ms != u64::MAX).map(display_instant);
                ClassEntry {
                    class: class.as_str(),
                    default_form: Form::of(guard.policy.action(class)),
                    active_key: active.map(|i| guard.tokens.key_id(i).to_string()),
                    tokens_open_until: until,
                }
            })
            .collect();
        let keys = schedule
            .keys()
            .iter()
            .enumerate()
            .map(|(i, k)| KeyEntry {
                id: k.id.clone(),
                variable: k.env.clone(),
                classes: k.class_list().into_iter().map(PiiClass::as_str).collect(),
                created: k.dates.as_ref().map(|d| d.created.clone()),
                active_from: k.dates.as_ref().map(|d| d.active_from.clone()),
                not_after: k.dates.as_ref().map(|d| d.not_after.clone()),
                state: schedule.state(i, now_ms).as_str(),
            })
            .collect();
        let audit = AuditSettings {
            audit_log: "one event per request (Envoy's access log) and security events (Envoy's log), without PII; docs/audit-event.schema.json",
            canaries: Canaries { ids: doc.canaries.records.iter().map(|r| r.id.clone()).collect(), block: guard.canaries.block },
            drift: Drift {
                detectors: DriftKind::DETECTORS.into_iter().map(|k| Detector { detector: k.as_str(), action: detector_action(guard.drift.action(k)) }).collect(),
                zero_match_alarm: guard.drift.zero_match,
                scan_pii_free_operations: guard.drift.scan_pii_free,
            },
        };
        let mut callers = Vec::with_capacity(access.callers.len());
        let mut called = vec![false; guard.catalog.operations.len()];
        // Compiled callers are in the policy's order: doc.callers[i] is access.callers[i].
        for (caller, caller_doc) in access.callers.iter().zip(&doc.callers) {
            let mut operations = Vec::new();
            for (index, op) in guard.catalog.operations.iter().enumerate().filter(|(i, _)| caller.may_call(*i)) {
                called[index] = true;
                operations.push(operation_entry(op, &caller.actions, numbers));
            }
            let mut destinations: Vec<(PerClass<bool>, Destination)> = guard
                .catalog
                .operations
                .iter()
                .enumerate()
                .filter_map(|(i, op)| caller.reveal_classes(Some(i)).map(|c| (*c, Destination { kind: DestinationKind::Operation, name: op.id.clone(), path: None })))
                .collect();
            if let Some(c) = caller.reveal_classes(None) {
                destinations.push((*c, Destination { kind: DestinationKind::Endpoint, name: REVEAL_OPERATION.to_string(), path: Some(REVEAL_PATH.to_string()) }));
            }
            callers.push(CallerEntry {
                id: caller.id.clone(),
                identity_source: caller.source.as_str(),
                roles: caller_doc.roles.clone(),
                allow_cidrs: caller_doc.allow_cidrs.clone(),
                dry_run: caller.dry_run || access.dry_run,
                pii: caller.actions.iter().map(|(class, &action)| ClassForm { class: class.as_str(), form: Form::of(action) }).collect(),
                lockout: CallerLockout { denials: lockout, max_pii_fields_per_window: caller.max_pii_per_window },
                operations,
                reveal: group_grants(destinations),
            });
        }
        let catalog = with_catalog.then(|| guard.catalog.operations.iter().zip(&called).filter(|(_, &c)| c).map(|(op, _)| catalog_entry(op)).collect());
        Ok(ProcessingRecord {
            record: "spapi-guard record of processing",
            schema: RECORD_SCHEMA,
            generated_by: format!("spapi-guard {}", env!("CARGO_PKG_VERSION")),
            as_of: display_instant(now_ms - now_ms % 86_400_000),
            policy: PolicySource { file: file.to_string(), sha256: hex_sha256(config), version: doc.version },
            settings,
            classes,
            keys,
            audit,
            callers,
            catalog,
            warnings: guard.warnings.clone(),
        })
    }

    /// The JSON form (`docs/processing-record.schema.json`), pretty-printed.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// The Markdown form, for auditors: a header naming the policy, the policy-wide facts, then a
    /// section per caller.
    pub fn to_markdown(&self) -> String {
        let mut md = Markdown::default();
        md.line("# Record of processing: spapi-guard");
        md.blank();
        md.line("| | |");
        md.line("|---|---|");
        md.line(&format!("| Policy | `{}` (version {}) |", cell(&self.policy.file), self.policy.version));
        md.line(&format!("| Policy SHA-256 | `{}` |", self.policy.sha256));
        md.line(&format!("| As of | {} (key states and active keys on this day) |", self.as_of));
        md.line(&format!("| Generated by | {}, from the policy by the filter's own loader |", self.generated_by));
        md.line(&format!("| Callers | {} |", self.callers.len()));
        md.blank();
        md.line(
            "What spapi-guard lets each caller do with the customer PII of Amazon's Selling Partner API: the operations it may call, \
             the form in which it receives each class of PII, where it may turn tokens back into data, and the limits that lock it out. \
             Evidence for Amazon's Data Protection Policy (1.2, 1.3, 2.1, 2.4, 2.5, 2.6; docs/DPP.md) and the record of processing \
             activities of GDPR art. 30. Forms: `clear` (as Amazon sent it), `tokenized` (AES-256-GCM token; deterministic: equal values \
             give equal tokens), `hashed` (keyed pseudonym, irreversible), `redacted` (a mask), `removed` (the member is removed; a member \
             Amazon's model requires is emptied).",
        );
        if !self.warnings.is_empty() {
            md.blank();
            md.line("Loader warnings (the policy loads):");
            md.blank();
            for w in &self.warnings {
                md.line(&format!("- {}", cell(w)));
            }
        }
        md.blank();
        md.line("## Summary");
        md.blank();
        md.line("| caller | roles | operations (restricted) | PII received | may reveal |");
        md.line("|---|---|---|---|---|");
        for c in &self.callers {
            let restricted = c.operations.iter().filter(|o| o.restricted).count();
            let reveal: Vec<String> = c.reveal.iter().map(|g| format!("{} → {} destination(s)", g.classes.join(", "), g.destinations.len())).collect();
            md.line(&format!(
                "| `{}`{} | {} | {} ({restricted}) | {} | {} |",
                cell(&c.id),
                if c.dry_run { " (dry run)" } else { "" },
                c.roles.join(", "),
                c.operations.len(),
                grouped(c.pii.iter().filter(|p| p.form.form != "removed").map(|p| (p.form.label(), p.class))).unwrap_or_else(|| "none".to_string()),
                if reveal.is_empty() { "nothing".to_string() } else { reveal.join("; ") }
            ));
        }
        self.policy_wide(&mut md);
        for c in &self.callers {
            caller_section(&mut md, c, &self.settings);
        }
        if let Some(catalog) = &self.catalog {
            md.blank();
            md.line("## Catalog: PII paths of the operations above");
            md.blank();
            md.line("`path`: a catalog path; `member`: a member a customer object's definition classifies; `customer_object`: every member of the object at that path, members Amazon adds later included.");
            for entry in catalog {
                md.blank();
                md.line(&format!("### `{}`", entry.id));
                md.blank();
                md.line("| class | JSONPath | kind |");
                md.line("|---|---|---|");
                for p in &entry.paths {
                    md.line(&format!("| {} | `{}` | {} |", p.class, cell(&p.jsonpath), p.kind));
                }
            }
        }
        md.0
    }

    fn policy_wide(&self, md: &mut Markdown) {
        let s = &self.settings;
        md.blank();
        md.line("## Policy-wide");
        md.blank();
        md.line("### PII classes, token modes and retention");
        md.blank();
        md.line("| class | policy action (where no caller decides) | active key | tokens open until |");
        md.line("|---|---|---|---|");
        for c in &self.classes {
            md.line(&format!(
                "| {} | {} | {} | {} |",
                c.class,
                c.default_form.label(),
                c.active_key.as_deref().unwrap_or("none"),
                c.tokens_open_until.as_deref().unwrap_or("no end (keys without dates)")
            ));
        }
        md.blank();
        md.line("### Keys");
        md.blank();
        md.line(&format!("| key | variable | classes | created | active from | not after (retention) | state on {} |", self.as_of));
        md.line("|---|---|---|---|---|---|---|");
        for k in &self.keys {
            let dash = |d: &Option<String>| d.clone().unwrap_or_else(|| "—".to_string());
            md.line(&format!(
                "| {} | `{}` | {} | {} | {} | {} | {} |",
                k.id,
                k.variable,
                k.classes.join(", "),
                dash(&k.created),
                dash(&k.active_from),
                dash(&k.not_after),
                k.state
            ));
        }
        md.blank();
        md.line("### Access");
        md.blank();
        md.line(&format!("- Enforcement: {}", if s.dry_run { "**dry run** (decisions logged, not enforced)" } else { "enforced" }));
        md.line(&format!("- Transport: {}", if s.allow_plaintext { "TLS 1.2+, or plaintext (allowed by the policy)" } else { "TLS 1.2+ only" }));
        let header = s.identity_header.as_deref().map(|h| format!(" (header `{h}`)")).unwrap_or_default();
        md.line(&format!("- Identity sources, in order: {}{header}", s.identity_sources.join(", ")));
        md.line(&format!("- Trusted proxy hops (X-Forwarded-For): {}", s.xff_trusted_hops));
        md.line(&format!("- Source addresses allowed: {}", s.allow_cidrs.as_ref().map_or("any".to_string(), |l| list_or_none(l))));
        md.line(&format!("- Source addresses denied: {}", list_or_none(&s.deny_cidrs)));
        md.line(&format!("- Paths outside the catalog passed through (no PII in them, not rewritten): {}", list_or_none(&s.pass_through_paths)));
        md.line(&format!(
            "- Lockout: {} denied requests within {} s lock a caller for {} s{}",
            s.lockout.max_denials,
            s.lockout.window_seconds,
            s.lockout.cooldown_seconds,
            if s.lockout.max_denials == 0 { " (denial trigger off)" } else { "" }
        ));
        md.blank();
        md.line("### Protection");
        md.blank();
        md.line(&format!("- Numbers at PII paths (geo-coordinates) of tokenized, hashed or redacted classes: {}", numbers_label(s.numbers)));
        md.line(&format!(
            "- Largest response body protected: {} bytes (`maxBodyBytes`; larger ones are refused, 502); Envoy's buffer {} bytes",
            s.max_body_bytes, s.buffer_limit_bytes
        ));
        let d = &self.audit.drift;
        let detectors: Vec<String> = d.detectors.iter().map(|x| format!("{} {}", x.detector, x.action)).collect();
        md.line(&format!("- Drift detectors (PII the catalog does not name): {}", detectors.join(", ")));
        md.line(&format!(
            "- Zero-match alarm: {}; PII-free operations scanned: {}",
            if d.zero_match_alarm { "on" } else { "off" },
            if d.scan_pii_free_operations { "yes" } else { "no" }
        ));
        md.blank();
        md.line("### Audit and alarms");
        md.blank();
        md.line(&format!("- Audit: {}", self.audit.audit_log));
        let canaries = &self.audit.canaries;
        md.line(&format!(
            "- Canary records: {}{}",
            if canaries.ids.is_empty() { "none".to_string() } else { canaries.ids.join(", ") },
            if canaries.ids.is_empty() {
                ""
            } else if canaries.block {
                " (requests and responses carrying one are refused)"
            } else {
                " (alerted, not blocked)"
            }
        ));
        md.line("- Alarms: Prometheus rules in monitoring/alerts.yml (unauthorized bursts, lockouts, PII volume, PII in clear, canaries, fail-closed, drift, keys)");
    }
}

/// One caller's section.
fn caller_section(md: &mut Markdown, c: &CallerEntry, settings: &Settings) {
    md.blank();
    md.line(&format!("## Caller `{}`", cell(&c.id)));
    md.blank();
    md.line("| | |");
    md.line("|---|---|");
    md.line(&format!("| Identity | `{}` from {} |", cell(&c.id), c.identity_source));
    md.line(&format!("| Roles | {} |", c.roles.join(", ")));
    let global = settings.allow_cidrs.as_ref().map_or("any".to_string(), |l| list_or_none(l));
    md.line(&format!("| Source addresses | {} |", c.allow_cidrs.as_ref().map_or(format!("those allowed to every caller ({global})"), |l| list_or_none(l))));
    md.line(&format!("| Enforcement | {} |", if c.dry_run { "**dry run** (decisions logged, not enforced)" } else { "enforced" }));
    let l = &c.lockout;
    md.line(&format!(
        "| Lockout | {} denied requests in {} s; {} → locked for {} s |",
        l.denials.max_denials,
        l.denials.window_seconds,
        l.max_pii_fields_per_window.map_or("no PII volume limit".to_string(), |n| format!("more than {n} PII values in {} s", l.denials.window_seconds)),
        l.denials.cooldown_seconds
    ));
    md.line(&format!("| PII in responses | {} |", grouped(c.pii.iter().map(|p| (p.form.label(), p.class))).unwrap_or_default()));
    md.blank();
    let restricted = c.operations.iter().filter(|o| o.restricted).count();
    md.line(&format!("### Operations ({}, {restricted} restricted)", c.operations.len()));
    md.blank();
    if c.operations.is_empty() {
        md.line("None.");
    } else {
        md.line("| operation | request | restricted | customer data sent | PII received, in this form |");
        md.line("|---|---|---|---|---|");
        for o in &c.operations {
            let mut sent: Vec<String> = o.query_pii.iter().map(|q| format!("query {} ({})", q.param, q.class)).collect();
            if o.request_body_pii {
                sent.push("body".to_string());
            }
            let sent = if sent.is_empty() { "—".to_string() } else { sent.join(", ") };
            let mut received = grouped(o.receives.iter().map(|r| (r.form.label(), r.class))).unwrap_or_else(|| "—".to_string());
            let numbers: Vec<&str> = o.receives.iter().filter(|r| r.numbers.is_some()).map(|r| r.class).collect();
            if let Some(n) = o.receives.iter().find_map(|r| r.numbers) {
                received.push_str(&format!("; numbers of {}: {}", numbers.join(", "), numbers_label(n)));
            }
            md.line(&format!("| `{}` | {} `{}` | {} | {} | {} |", o.id, o.method, cell(&o.path), if o.restricted { "yes (RDT)" } else { "no" }, sent, received));
        }
    }
    md.blank();
    md.line("### May reveal (tokens back to data)");
    md.blank();
    if c.reveal.is_empty() {
        md.line("Nothing: every request carrying a token is refused (`detokenize_not_allowed`) and never forwarded.");
    } else {
        md.line("| classes | destinations |");
        md.line("|---|---|");
        for g in &c.reveal {
            let to: Vec<String> = g
                .destinations
                .iter()
                .map(|d| match &d.path {
                    Some(path) => format!("{} `{}` (`{}`)", d.kind.as_str(), d.name, path),
                    None => format!("{} `{}`", d.kind.as_str(), d.name),
                })
                .collect();
            md.line(&format!("| {} | {} |", g.classes.join(", "), to.join(", ")));
        }
    }
}

/// `form: class, class; form: class`, forms in first-seen order; `None` if empty.
fn grouped<'a>(items: impl Iterator<Item = (String, &'a str)>) -> Option<String> {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for (form, class) in items {
        match groups.iter_mut().find(|(f, _)| *f == form) {
            Some((_, classes)) => classes.push(class),
            None => groups.push((form, vec![class])),
        }
    }
    (!groups.is_empty()).then(|| groups.iter().map(|(f, classes)| format!("{f}: {}", classes.join(", "))).collect::<Vec<_>>().join("; "))
}

fn numbers_label(n: Numbers) -> String {
    match n.decimals {
        Some(d) => format!("{} to {d} decimal place(s)", n.form),
        None => n.form.to_string(),
    }
}

fn list_or_none(list: &[String]) -> String {
    if list.is_empty() {
        "none".to_string()
    } else {
        list.iter().map(|s| format!("`{}`", cell(s))).collect::<Vec<_>>().join(", ")
    }
}

/// Text safe in a table cell: pipes escaped, no line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[derive(Default)]
struct Markdown(String);

impl Markdown {
    fn line(&mut self, text: &str) {
        self.0.push_str(text);
        self.0.push('\n');
    }
    fn blank(&mut self) {
        self.0.push('\n');
    }
}

/// One operation a caller may call, with what its responses carry in the caller's forms.
fn operation_entry(op: &Operation, actions: &PerClass<Action>, numbers: Numbers) -> OperationEntry {
    let mut paths: PerClass<usize> = PerClass::splat(0);
    let mut present: PerClass<bool> = PerClass::splat(false);
    let mut has_number: PerClass<bool> = PerClass::splat(false);
    for rule in &op.response_rules {
        paths[rule.class] += 1;
        present[rule.class] = true;
        has_number[rule.class] |= rule.schema.as_ref().is_some_and(|s| s.is_number());
    }
    for catch_all in &op.catch_alls {
        present[catch_all.class] = true;
    }
    let receives = PiiClass::ALL
        .into_iter()
        .filter(|&c| present[c])
        .map(|class| {
            let action = actions[class];
            // Numbers follow `numbers` where the class is tokenized, hashed or redacted (src/guard.rs).
            let numbers_differ = has_number[class] && matches!(action, Action::Tokenize(_) | Action::Hash | Action::Redact) && numbers.form != "tokenized";
            Received { class: class.as_str(), form: Form::of(action), paths: paths[class], numbers: numbers_differ.then_some(numbers) }
        })
        .collect();
    OperationEntry {
        id: op.id.clone(),
        method: op.method.clone(),
        path: op.path_template.clone(),
        restricted: op.restricted,
        request_body_pii: op.has_request_pii,
        query_pii: op.query_pii.iter().map(|(param, class)| QueryPii { param: param.clone(), class: class.as_str() }).collect(),
        receives,
    }
}

/// Groups destinations with the same classes into one grant, in first-seen order.
fn group_grants(destinations: Vec<(PerClass<bool>, Destination)>) -> Vec<RevealGrant> {
    let mut groups: Vec<(PerClass<bool>, Vec<Destination>)> = Vec::new();
    for (classes, destination) in destinations {
        match groups.iter_mut().find(|(c, _)| *c == classes) {
            Some((_, list)) => list.push(destination),
            None => groups.push((classes, vec![destination])),
        }
    }
    groups.into_iter().map(|(classes, destinations)| RevealGrant { classes: classes.iter().filter(|(_, &on)| on).map(|(c, _)| c.as_str()).collect(), destinations }).collect()
}

fn catalog_entry(op: &Operation) -> CatalogEntry {
    let mut paths: Vec<CatalogPath> = op
        .response_rules
        .iter()
        .map(|r| CatalogPath { class: r.class.as_str(), jsonpath: r.jsonpath.clone(), kind: if r.kind == crate::catalog::RuleKind::Catalog { "path" } else { "member" } })
        .collect();
    for object in &op.objects {
        if let Some(catch_all) = op.catch_alls.get(object.catch_all) {
            paths.push(CatalogPath { class: catch_all.class.as_str(), jsonpath: object.jsonpath.clone(), kind: "customer_object" });
        }
    }
    CatalogEntry { id: op.id.clone(), paths }
}
