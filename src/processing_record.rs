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
            let mut destinations: Vec<(PerClass<bool>, Destination)> = Vec::new();
            for (i, op) in guard.catalog.operations.iter().enumerate() {
                let Some(classes) = caller.reveal_classes(Some(i)) else { continue };
                // A grant toward a third party covers all its operations: one destination, the
                // upstream by name and where it is (the recipient an auditor asks for).
                let destination = match op.upstream.and_then(|u| guard.upstreams.list.get(u)) {
                    Some(u) => Destination { kind: DestinationKind::Upstream, name: u.name.clone(), path: Some(format!("{}/ -> https://{}:{}", u.prefix, u.server_name, u.port)) },
                    None => Destination { kind: DestinationKind::Operation, name: op.id.clone(), path: None },
                };
                if !destinations.iter().any(|(c, d)| c == classes && *d == destination) {
                    destinations.push((*classes, destination));
                }
            }
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
    let triggers = match l.max_pii_fields_per_window {
        Some(n) => format!("{} denied requests or more than {n} PII values", l.denials.max_denials),
        None => format!("{} denied requests (no PII volume limit)", l.denials.max_denials),
    };
    md.line(&format!("| Lockout | locked for {} s after {triggers} within {} s |", l.denials.cooldown_seconds, l.denials.window_seconds));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::parse_instant;
    use serde_json::{json, Value};

    /// A policy with a ring of three keys, roles that merge, a wildcard without restricted
    /// operations, reveal grants, a dry-run role, a canary and hashed/redacted classes.
    fn policy() -> Value {
        json!({
            "version": 1,
            "keys": { "ring": [
                { "id": "2026-10", "env": "K_2026_10", "classes": ["name", "email", "phone", "address", "gift_message", "company", "other"],
                  "created": "2026-09-25", "activeFrom": "2026-10-01", "notAfter": "2026-12-15" },
                { "id": "2026-11", "env": "K_2026_11", "classes": ["name", "email", "phone", "address", "gift_message", "company", "other"],
                  "created": "2026-10-25", "activeFrom": "2026-11-01", "notAfter": "2027-01-15" },
                { "id": "2026-12", "env": "K_2026_12", "classes": ["name", "email", "phone", "address", "gift_message", "company", "other"],
                  "created": "2026-11-25", "activeFrom": "2026-12-01", "notAfter": "2027-02-15" },
                { "id": "tax-2026", "env": "K_TAX", "classes": ["tax_id"], "created": "2025-12-15", "activeFrom": "2026-01-01", "notAfter": "2036-12-31" }
            ]},
            "classes": { "gift_message": { "mode": "randomized" }, "phone": { "action": "hash" } },
            "numbers": { "action": "null" },
            "access": {
                "identity": { "sources": ["uri_san", "header"], "header": "x-caller" },
                "allowCidrs": ["10.0.0.0/8"],
                "lockout": { "maxDenials": 5, "windowSeconds": 30, "cooldownSeconds": 600 }
            },
            "roles": {
                "reader": { "operations": ["orders-v0.*"], "allowRestricted": false, "pii": { "*": "redact" } },
                "shipper": { "operations": ["orders-v0.getOrderAddress", "shipping-v2.*"], "pii": { "address": "clear", "name": "tokenize" },
                             "maxPiiFieldsPerWindow": 500,
                             "reveal": [ { "classes": ["address", "name"], "operations": ["shipping-v2.getRates", "shipping-v2.purchaseShipment"] },
                                         { "classes": ["address"], "operations": ["spapi-guard.reveal"] } ] },
                "trial": { "operations": ["orders-v0.getOrder"], "pii": { "email": "hash" }, "dryRun": true }
            },
            "callers": [
                { "id": "spiffe://acme/labels", "roles": ["reader", "shipper"], "allowCidrs": ["10.1.0.0/16"] },
                { "id": "reports|team", "source": "header", "roles": ["trial"] }
            ],
            "canaries": { "block": true, "records": [ { "id": "canary-1", "value": "jane.canary@example.com" } ] }
        })
    }

    fn record_of(policy: &Value, date: &str) -> Result<ProcessingRecord, ConfigError> {
        let now = parse_instant(date, false).expect("date");
        ProcessingRecord::build(policy.to_string().as_bytes(), "acme.json", now, true)
    }

    fn json_of(record: &ProcessingRecord) -> Value {
        serde_json::from_str(&record.to_json().expect("json")).expect("parses")
    }

    fn operation<'a>(caller: &'a Value, id: &str) -> &'a Value {
        caller["operations"].as_array().expect("list").iter().find(|o| o["id"] == id).unwrap_or_else(|| panic!("{id} not listed"))
    }

    fn form_of<'a>(op: &'a Value, class: &str) -> &'a Value {
        op["receives"].as_array().expect("list").iter().find(|r| r["class"] == class).unwrap_or_else(|| panic!("{class} not received"))
    }

    #[test]
    fn operations_are_the_compiled_grants_wildcards_expanded_restricted_excluded() {
        let record = record_of(&policy(), "2026-11-29").expect("loads");
        let guard = Guard::load(policy().to_string().as_bytes(), &|n| Some(stand_in_key(n))).expect("loads");
        let v = json_of(&record);
        let labels = &v["callers"][0];
        let ids: Vec<&str> = labels["operations"].as_array().expect("list").iter().map(|o| o["id"].as_str().expect("id")).collect();
        // Exactly what the filter lets the caller call, in catalog order.
        let expected: Vec<&str> = guard.catalog.operations.iter().enumerate().filter(|(i, _)| guard.access.callers[0].may_call(*i)).map(|(_, op)| op.id.as_str()).collect();
        assert_eq!(ids, expected);
        // reader's orders-v0.* without restricted ones, shipper's restricted getOrderAddress granted by name.
        assert!(ids.contains(&"orders-v0.updateVerificationStatus") && ids.contains(&"orders-v0.getOrderAddress"));
        assert!(!ids.contains(&"orders-v0.getOrder") && !ids.contains(&"orders-v0.getOrderBuyerInfo"), "{ids:?}");
        let shipping = guard.catalog.operations.iter().filter(|op| op.id.starts_with("shipping-v2.")).count();
        assert_eq!(ids.iter().filter(|id| id.starts_with("shipping-v2.")).count(), shipping);
        assert_eq!(operation(labels, "orders-v0.getOrderAddress")["restricted"], true);
        assert_eq!(operation(labels, "orders-v0.updateVerificationStatus")["request_body_pii"], true);
        assert_eq!(operation(&v["callers"][0], "shipping-v2.getAccessPoints")["query_pii"], json!([{"param": "postalCode", "class": "address"}]));
    }

    #[test]
    fn each_class_is_recorded_in_the_form_the_caller_gets_it() {
        let v = json_of(&record_of(&policy(), "2026-11-29").expect("loads"));
        let labels = &v["callers"][0];
        // Roles merged, the most generous level wins: address clear (shipper) over redact (reader),
        // name tokenize over redact; phone redact, the rest redact from reader's *.
        let pii: Vec<(String, String)> =
            labels["pii"].as_array().expect("list").iter().map(|p| (p["class"].as_str().expect("c").into(), p["form"].as_str().expect("f").into())).collect();
        assert!(pii.contains(&("address".into(), "clear".into())) && pii.contains(&("name".into(), "tokenized".into())), "{pii:?}");
        assert!(pii.contains(&("email".into(), "redacted".into())) && pii.contains(&("tax_id".into(), "redacted".into())), "{pii:?}");
        let address_op = operation(labels, "orders-v0.getOrderAddress");
        assert_eq!(form_of(address_op, "address")["form"], "clear");
        // A clear class keeps its numbers; a redacted one has them as the policy says (null).
        assert!(form_of(address_op, "address").get("numbers").is_none());
        assert_eq!(form_of(address_op, "name")["form"], "tokenized");
        assert_eq!(form_of(address_op, "name")["mode"], "deterministic");
        assert!(form_of(address_op, "address")["paths"].as_u64().expect("n") > 0);
        let trial = &v["callers"][1];
        assert_eq!(trial["dry_run"], true);
        assert_eq!(trial["identity_source"], "header");
        let get_order = operation(trial, "orders-v0.getOrder");
        assert_eq!(form_of(get_order, "email")["form"], "hashed");
        assert_eq!(form_of(get_order, "address")["form"], "removed");
        // The policy's own actions (where no caller decides): phone hashed, gift messages randomized.
        let classes = v["classes"].as_array().expect("list");
        assert!(classes.iter().any(|c| c["class"] == "phone" && c["default_form"] == json!({"form": "hashed"})));
        assert!(classes.iter().any(|c| c["class"] == "gift_message" && c["default_form"] == json!({"form": "tokenized", "mode": "randomized"})));
        assert_eq!(v["settings"]["numbers"], json!({"form": "null"}));
    }

    #[test]
    fn numbers_are_recorded_where_a_protected_class_has_model_numbers() {
        let mut p = policy();
        p["numbers"] = json!({ "action": "coarsen", "decimals": 2 });
        p["roles"]["trial"]["pii"] = json!({ "address": "tokenize" });
        let v = json_of(&record_of(&p, "2026-11-29").expect("loads"));
        let get_order = operation(&v["callers"][1], "orders-v0.getOrder");
        assert_eq!(form_of(get_order, "address")["numbers"], json!({"form": "coarsened", "decimals": 2}));
        assert!(form_of(get_order, "email").get("numbers").is_none(), "emails are no numbers");
    }

    #[test]
    fn reveal_grants_list_destinations_by_kind() {
        let v = json_of(&record_of(&policy(), "2026-11-29").expect("loads"));
        assert_eq!(
            v["callers"][0]["reveal"],
            json!([
                { "classes": ["name", "address"], "destinations": [
                    { "kind": "operation", "name": "shipping-v2.getRates" }, { "kind": "operation", "name": "shipping-v2.purchaseShipment" } ] },
                { "classes": ["address"], "destinations": [ { "kind": "endpoint", "name": "spapi-guard.reveal", "path": "/spapi-guard/v1/reveal" } ] }
            ])
        );
        assert_eq!(v["callers"][1]["reveal"], json!([]));
    }

    #[test]
    fn a_grant_toward_a_named_upstream_is_one_upstream_destination_with_where_it_leads() {
        let mut p = policy();
        p["upstreams"] = json!({"carrier": {"routePrefix": "/upstreams/carrier/", "address": {"host": "api.carrier.example", "port": 443},
            "tls": {"caFile": "/etc/spapi-guard/carrier-ca.pem"},
            "operations": [{"id": "createShipment", "method": "POST", "pathTemplate": "/v1/shipments"},
                           {"id": "getTracking", "method": "GET", "pathTemplate": "/v1/tracking/{id}"}]}});
        p["roles"]["shipper"]["operations"] = json!(["orders-v0.getOrderAddress", "carrier.*"]);
        p["roles"]["shipper"]["reveal"] = json!([{ "classes": ["address"], "upstreams": ["carrier"] }]);
        let v = json_of(&record_of(&p, "2026-11-29").expect("loads"));
        assert_eq!(
            v["callers"][0]["reveal"],
            json!([{ "classes": ["address"], "destinations": [
                { "kind": "upstream", "name": "carrier", "path": "/upstreams/carrier/ -> https://api.carrier.example:443" } ] }])
        );
        assert!(v["callers"][0]["operations"].as_array().expect("ops").iter().any(|o| o["id"] == "carrier.createShipment"));
    }

    #[test]
    fn keys_classes_retention_and_limits_as_of_the_day() {
        let v = json_of(&record_of(&policy(), "2026-11-29").expect("loads"));
        let states: Vec<(&str, &str)> = v["keys"].as_array().expect("list").iter().map(|k| (k["id"].as_str().expect("id"), k["state"].as_str().expect("s"))).collect();
        assert_eq!(states, [("2026-10", "readable"), ("2026-11", "active"), ("2026-12", "pending"), ("tax-2026", "active")]);
        let classes = v["classes"].as_array().expect("list");
        let name = classes.iter().find(|c| c["class"] == "name").expect("name");
        assert_eq!((&name["active_key"], &name["tokens_open_until"]), (&json!("2026-11"), &json!("2027-02-15")));
        let tax = classes.iter().find(|c| c["class"] == "tax_id").expect("tax");
        assert_eq!(tax["tokens_open_until"], "2036-12-31");
        // A month later the next key is active.
        let later = json_of(&record_of(&policy(), "2026-12-20").expect("loads"));
        assert_eq!(later["keys"][0]["state"], "expired");
        assert_eq!(later["as_of"], "2026-12-20");
        let labels = &v["callers"][0];
        assert_eq!(labels["lockout"], json!({"max_denials": 5, "window_seconds": 30, "cooldown_seconds": 600, "max_pii_fields_per_window": 500}));
        assert_eq!(labels["allow_cidrs"], json!(["10.1.0.0/16"]));
        assert_eq!(v["callers"][1]["allow_cidrs"], Value::Null);
        assert_eq!(v["audit"]["canaries"], json!({"ids": ["canary-1"], "block": true}));
        assert_eq!(v["settings"]["identity_sources"], json!(["uri_san", "header"]));
    }

    #[test]
    fn no_key_material_nor_canary_value_is_recorded() {
        let record = record_of(&policy(), "2026-11-29").expect("loads");
        let (json, md) = (record.to_json().expect("json"), record.to_markdown());
        for text in [&json, &md] {
            assert!(!text.contains("jane.canary"), "a canary value was recorded");
            for var in ["K_2026_10", "K_2026_11", "K_2026_12", "K_TAX"] {
                assert!(!text.contains(&stand_in_key(var)), "a stand-in key was recorded");
            }
        }
    }

    #[test]
    fn a_policy_the_filter_refuses_is_refused_naming_the_field() {
        let mut p = policy();
        p["roles"]["reader"]["operations"] = json!(["orderz-v0.*"]);
        let e = record_of(&p, "2026-11-29").expect_err("refused");
        assert_eq!(e.field, "roles.reader.operations[0]");
        let mut p = policy();
        p["callers"][0]["roles"] = json!(["nobody"]);
        assert_eq!(record_of(&p, "2026-11-29").expect_err("refused").field, "callers[0].roles[0]");
        // Refused as of a day on which no key is active, as the filter refuses it then.
        let e = record_of(&policy(), "2027-03-01").expect_err("refused");
        assert_eq!(e.field, "keys.ring");
    }

    #[test]
    fn the_markdown_names_the_policy_and_has_a_section_per_caller() {
        let record = record_of(&policy(), "2026-11-29").expect("loads");
        let md = record.to_markdown();
        assert!(md.starts_with("# Record of processing: spapi-guard\n"));
        assert!(md.contains(&format!("| Policy SHA-256 | `{}` |", hex_sha256(policy().to_string().as_bytes()))));
        assert!(md.contains("| As of | 2026-11-29"));
        assert!(md.contains("## Caller `spiffe://acme/labels`"));
        // A pipe in an id does not break the tables.
        assert!(md.contains("## Caller `reports\\|team`") && !md.contains("reports|team"));
        assert!(md.contains("| name, address | operation `shipping-v2.getRates`, operation `shipping-v2.purchaseShipment` |"), "{md}");
        assert!(md.contains("endpoint `spapi-guard.reveal` (`/spapi-guard/v1/reveal`)"));
        assert!(md.contains("| `orders-v0.getOrderAddress` | GET `/orders/v0/orders/{orderId}/address` | yes (RDT) |"));
        assert!(md.contains("**dry run**"));
        assert!(md.contains("## Catalog: PII paths of the operations above"));
        // Every table row has as many cells as its header.
        let mut columns = 0;
        for line in md.lines() {
            if line.starts_with("|---") {
                continue;
            }
            if line.starts_with('|') {
                let cells = line.replace("\\|", "").matches('|').count();
                if columns == 0 {
                    columns = cells;
                }
                assert_eq!(cells, columns, "{line}");
            } else {
                columns = 0;
            }
        }
    }
}
