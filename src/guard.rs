//! The loaded configuration and what it does to a body: the one object the Envoy layer holds.
use std::collections::HashMap;
use std::fmt;

use crate::access::{Access, RoleDoc};
use crate::canary::Canaries;
use crate::catalog::{Catalog, FieldRule, Operation, UpstreamOperations};
use crate::config_error::ConfigError;
use crate::drift::{looks_like_pii_key, member_class, worth_a_look, DriftAction, DriftFindings, DriftKind, DriftPolicy};
use crate::fail_closed::FailReason;
use crate::json_rewrite::{rewrite, write_json_string, Edit, FieldHandler, MatchedValue, RewriteError, Site};
use crate::keyring::{self, ActiveKeys};
use crate::pii::{PerClass, PiiClass};
use crate::policy::{Action, ClassActions, NumberAction, Policy, DEFAULT_NUMBER_DECIMALS};
use crate::policy_doc::parse_doc;
use crate::schema::{coarsen, empty_like, is_number_text, FieldSchema};
use crate::tokens::{Mode, TokenEngine, ValueKind};
use crate::upstreams::Upstreams;
use std::collections::BTreeMap;

/// Everything a VM needs to protect traffic, built once per configuration.
pub struct Guard {
    pub policy: Policy,
    pub catalog: Catalog,
    pub access: Access,
    pub canaries: Canaries,
    pub tokens: TokenEngine,
    /// What the policy does that some clients will not read, each naming the field and the fix
    /// (logged at load; the policy still loads).
    pub warnings: Vec<String>,
    /// What the drift detectors do (the policy's `drift` section).
    pub drift: DriftPolicy,
    /// The approved third-party upstreams and the clusters that lead to the SP-API.
    pub upstreams: Upstreams,
    /// (operation, path template) label pairs of `spapi_guard_schema_drift_total` this VM has
    /// used: bounded by [`MAX_DRIFT_LABELS`], so an upstream cannot grow Envoy's stats at will.
    drift_labels: std::cell::RefCell<std::collections::BTreeSet<(String, String)>>,
    /// Report documents: the allowed document hosts (src/documents.rs).
    pub documents: crate::documents::DocumentsPolicy,
    /// The instant the policy was loaded at (milliseconds since the Unix epoch; 0 from [`Guard::load`]).
    pub loaded_at_ms: u64,
}

/// Distinct path labels of the drift metric per VM; later ones are counted as `other`.
pub const MAX_DRIFT_LABELS: usize = 256;

impl Guard {
    /// Loads a policy document without a clock: the key ring's dates are checked against each
    /// other, not against the current time (see [`Guard::load_at`]). `env` reads a variable of the
    /// VM's environment.
    pub fn load(config: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Guard, ConfigError> {
        Guard::build(config, env, None)
    }

    /// Loads a policy document at `now_ms` (the filter's host clock): also refuses a key ring that
    /// leaves a PII class without an active key now or later, and warns of expired keys.
    pub fn load_at(config: &[u8], env: &dyn Fn(&str) -> Option<String>, now_ms: u64) -> Result<Guard, ConfigError> {
        Guard::build(config, env, Some(now_ms))
    }

    fn build(config: &[u8], env: &dyn Fn(&str) -> Option<String>, now_ms: Option<u64>) -> Result<Guard, ConfigError> {
        let doc = parse_doc(config)?;
        let policy = Policy::from_doc(&doc)?;
        let (catalog, upstreams) = policy_catalog(&doc)?;
        let access = Access::build(&doc.access, &doc.roles, &doc.callers, &catalog, &policy)?;
        let canaries = Canaries::build(&doc.canaries)?;
        let ring = keyring::load(&doc.keys, env)?;
        let mut warnings = schema_warnings(&doc.roles, &policy, &catalog);
        warnings.extend(ring.schedule.warnings());
        if let Some(now) = now_ms {
            warnings.extend(ring.schedule.check_at(now)?);
        }
        let tokens = TokenEngine::from_ring(ring.schedule, ring.materials).map_err(|m| ConfigError::new("keys", m))?;
        let drift = crate::policy_doc::drift_policy(&doc.drift)?;
        let documents = crate::documents::DocumentsPolicy::from_doc(&doc.documents)?;
        Ok(Guard { policy, catalog, access, canaries, tokens, warnings, drift, upstreams, documents, drift_labels: Default::default(), loaded_at_ms: now_ms.unwrap_or(0) })
    }

    /// The `path` label for a drift finding: the template, or `other` once this VM has used
    /// [`MAX_DRIFT_LABELS`] of them.
    pub fn drift_label(&self, operation: &str, path: &str) -> String {
        let mut labels = self.drift_labels.borrow_mut();
        let key = (operation.to_string(), path.to_string());
        if labels.contains(&key) || labels.len() < MAX_DRIFT_LABELS {
            labels.insert(key);
            path.to_string()
        } else {
            "other".to_string()
        }
    }

    /// Rewrites a response body of `op` with the policy's class actions, at the load time.
    pub fn protect_response(&self, op: &Operation, body: &[u8]) -> Result<Protected, FailReason> {
        self.protect_response_with(op, body, self.policy.actions())
    }

    /// Rewrites a response body of `op`, applying `actions` per class (a caller's access levels),
    /// with the keys active at the load time.
    pub fn protect_response_with(&self, op: &Operation, body: &[u8], actions: &ClassActions) -> Result<Protected, FailReason> {
        self.protect_response_at(op, body, actions, self.loaded_at_ms)
    }

    /// Rewrites a response body of `op`, applying `actions` per class, with the keys active for
    /// each class at `now_ms`. `Ok` with `body: None` means the body passes unchanged (no PII value
    /// in it). A class to tokenize or hash without an active key fails closed (`no_active_key`).
    pub fn protect_response_at(&self, op: &Operation, body: &[u8], actions: &ClassActions, now_ms: u64) -> Result<Protected, FailReason> {
        if body.len() > self.policy.max_body_bytes {
            return Err(FailReason::BodyTooLarge);
        }
        let keys = self.tokens.active_keys(now_ms);
        if actions.iter().any(|(class, action)| matches!(action, Action::Tokenize(_) | Action::Hash) && keys.get(class).is_none()) {
            return Err(FailReason::NoActiveKey);
        }
        let mut protector = Protector::new(self, op, actions, keys, false);
        let result = rewrite(body, &op.response_matcher, &mut protector);
        protector.finish();
        match result {
            // Envoy answers a body past its buffer limit from inside the write, re-entering the
            // VM: a body that grew too much is refused before it is written.
            Ok(Some(body)) if body.len() > self.policy.max_rewritten_bytes() => Err(FailReason::BodyTooLarge),
            Ok(body) => Ok(Protected { body, counts: protector.counts, drift: protector.drift, keys }),
            Err(RewriteError::InvalidJson { .. }) => Err(FailReason::InvalidJson),
            Err(RewriteError::Handler(never)) => match never {},
        }
    }

    /// Scans a whole response body of `op` with the drift detectors, reporting only: for
    /// operations the catalog lists without PII, whose bytes already went to the client
    /// (`drift.scanPiiFree`). `None` if the body is not JSON the walker reads.
    pub fn scan_response(&self, op: &Operation, body: &[u8]) -> Option<DriftFindings> {
        let actions = self.policy.actions();
        // (Report only: nothing is sealed, the keys are not used.)
        let mut scanner = Protector::new(self, op, actions, self.tokens.active_keys(self.loaded_at_ms), true);
        let result = rewrite(body, &op.response_matcher, &mut scanner);
        scanner.finish();
        result.ok().map(|_| scanner.drift)
    }
}

/// The policy's catalog — the built-in one, its overrides, and the operations of its third-party
/// upstreams (`<name>.<id>`) — with the compiled upstreams. The filter and the command line use
/// it alike.
pub fn policy_catalog(doc: &crate::policy_doc::PolicyDoc) -> Result<(Catalog, Upstreams), ConfigError> {
    let upstreams = Upstreams::build(&doc.upstreams, doc.spapi_clusters.as_deref(), &doc.access.pass_through_paths)?;
    let operations: Vec<UpstreamOperations> = upstreams
        .list
        .iter()
        .filter_map(|u| {
            let operations = &doc.upstreams.get(&u.name)?.operations;
            Some(UpstreamOperations { name: &u.name, prefix: &u.prefix, segments: &u.segments, operations })
        })
        .collect();
    let catalog = Catalog::build_with_upstreams(&doc.catalog, &operations)?;
    Ok((catalog, upstreams))
}

/// Where the policy's choices meet what Amazon's models promise clients (src/schema.rs): numbers
/// opted into tokens, tokens longer than a member's maxLength, required members of classes a role
/// may not see (returned empty, never removed). Each names the policy field and the fix.
fn schema_warnings(roles: &BTreeMap<String, RoleDoc>, policy: &Policy, catalog: &Catalog) -> Vec<String> {
    let rules = || catalog.operations.iter().flat_map(|op| op.response_rules.iter().map(move |r| (op, r)));
    let example = |pred: &dyn Fn(&FieldRule) -> bool| -> (usize, String) {
        let matching: Vec<_> = rules().filter(|(_, r)| pred(r)).collect();
        let first = matching.first().map(|(op, r)| format!("{} {}", op.id, r.jsonpath)).unwrap_or_default();
        (matching.len(), first)
    };
    let mut out = Vec::new();
    if policy.numbers == NumberAction::Tokenize {
        let (n, first) = example(&|r| r.schema.as_ref().is_some_and(FieldSchema::is_number));
        out.push(format!(
            "numbers.action: tokenize writes strings where the SP-API models declare numbers ({n} fields, e.g. {first}): the official Python SDK fails the whole response, the official JS SDK turns the value into null, typed clients break; use coarsen (the default) or null"
        ));
    }
    for class in PiiClass::ALL {
        if !matches!(policy.action(class), Action::Tokenize(_) | Action::Hash) {
            continue;
        }
        let (n, first) = example(&|r| r.class == class && r.schema.as_ref().is_some_and(FieldSchema::too_short_for_tokens));
        if n > 0 {
            out.push(format!(
                "classes.{class}: tokens are longer than the maxLength the SP-API models set for {n} {class} fields (e.g. {first}); clients that check lengths (the official Python SDK) refuse them: give roles whose clients read these operations redact or clear for {class}"
            ));
        }
    }
    for (name, role) in roles {
        let star = role.pii.get("*").map(String::as_str);
        let hidden: Vec<PiiClass> = PiiClass::ALL.into_iter().filter(|c| role.pii.get(c.as_str()).map(String::as_str).or(star).unwrap_or("none") == "none").collect();
        let (n, first) = example(&|r| hidden.contains(&r.class) && r.schema.as_ref().is_some_and(|f| f.required));
        if n > 0 {
            let classes: Vec<&str> = hidden.iter().map(|c| c.as_str()).collect();
            out.push(format!(
                "roles.{name}.pii: {} is none, and the SP-API models require {n} such fields (e.g. {first}): they are returned empty (\"\", 0, [] or {{}}), not removed, so clients still parse them; grant redact to return a mask instead",
                classes.join(", ")
            ));
        }
    }
    out
}

/// A protected body and what was done to it.
#[derive(Debug)]
pub struct Protected {
    /// The rewritten body, or `None` when nothing had to change.
    pub body: Option<Vec<u8>>,
    pub counts: FieldCounts,
    /// PII the catalog's paths did not name: found by the allow list or the detectors.
    pub drift: DriftFindings,
    /// The key that made each class's tokens and pseudonyms.
    pub keys: ActiveKeys,
}

/// PII values seen, by class and by what was done with them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldCounts {
    counts: PerClass<[u32; ACTIONS]>,
}

/// Slots per class: the five actions, then numbers coarsened, then tokens revealed.
const ACTIONS: usize = 7;
/// The slot of numbers coarsened instead of tokenized (src/schema.rs).
const COARSENED: usize = 5;
/// The slot of tokens turned back into plaintext for the caller (src/detokenize.rs).
const REVEALED: usize = 6;
const REMOVED: usize = 4;

fn action_slot(action: Action) -> usize {
    match action {
        Action::Tokenize(_) => 0,
        Action::Hash => 1,
        Action::Redact => 2,
        Action::Clear => 3,
        Action::Remove => 4,
    }
}

impl FieldCounts {
    /// Counts one value of `class` that got `action`.
    pub(crate) fn add(&mut self, class: PiiClass, action: Action) {
        let slot = &mut self.counts[class][action_slot(action)];
        *slot = slot.saturating_add(1);
    }

    fn add_treatment(&mut self, class: PiiClass, slot: usize) {
        if let Some(n) = self.counts[class].get_mut(slot) {
            *n = n.saturating_add(1);
        }
    }

    /// Takes away what was counted between `from` and `to` (two earlier states of these counts).
    fn forget(&mut self, from: &FieldCounts, to: &FieldCounts) {
        for class in PiiClass::ALL {
            for slot in 0..ACTIONS {
                let added = to.counts[class][slot].saturating_sub(from.counts[class][slot]);
                self.counts[class][slot] = self.counts[class][slot].saturating_sub(added);
            }
        }
    }

    /// Adds tokens of each class revealed to the caller.
    pub fn add_revealed(&mut self, revealed: &crate::detokenize::Revealed) {
        for (class, &n) in revealed.counts.iter() {
            let slot = &mut self.counts[class][REVEALED];
            *slot = slot.saturating_add(n);
        }
    }

    /// How many numbers of `class` were coarsened.
    pub fn coarsened(&self, class: PiiClass) -> u32 {
        self.counts[class][COARSENED]
    }

    /// How many values of `class` got `action`'s treatment (the mode of tokenize is ignored).
    pub fn get(&self, class: PiiClass, action: Action) -> u32 {
        self.counts[class][action_slot(action)]
    }

    /// All values seen.
    pub fn total(&self) -> u32 {
        self.counts.values().flatten().sum()
    }

    /// Whether any value was tokenized or hashed, i.e. the active key was used.
    pub fn used_key(&self) -> bool {
        self.counts.values().any(|c| c[action_slot(Action::Tokenize(Mode::Deterministic))] > 0 || c[action_slot(Action::Hash)] > 0)
    }

    /// Values the caller received in some form (every action but removal).
    pub fn delivered(&self) -> u32 {
        self.counts.values().map(|c| c.iter().sum::<u32>() - c[REMOVED]).sum()
    }

    /// Non-zero counts as (class, action name, count).
    pub fn entries(&self) -> impl Iterator<Item = (PiiClass, &'static str, u32)> + '_ {
        const NAMES: [&str; ACTIONS] = ["tokenized", "hashed", "redacted", "clear", "removed", "coarsened", "revealed"];
        PiiClass::ALL.into_iter().flat_map(move |class| {
            (0..ACTIONS).filter_map(move |a| {
                let n = self.counts[class][a];
                (n > 0).then_some((class, NAMES[a], n))
            })
        })
    }
}

/// The enum with no values: protecting a well-formed value cannot fail.
pub enum Never {}

impl fmt::Display for Never {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

/// Applies the policy's action to each PII value the rewriter finds, and runs the drift detectors
/// over the strings no rule selected.
struct Protector<'g> {
    guard: &'g Guard,
    /// The key of each class, at the time of the response.
    keys: ActiveKeys,
    actions: &'g ClassActions,
    op: &'g Operation,
    counts: FieldCounts,
    /// The counts when each matched container still being walked was entered (a stack:
    /// [`FieldHandler::mark`]).
    marks: Vec<FieldCounts>,
    drift: DriftFindings,
    /// Values a rule selected (the zero-match alarm fires when none was).
    matched: u32,
    /// The path template of the first unmatched string under a key that looks like PII.
    pii_key: Option<String>,
    /// Whether unmatched strings are scanned.
    scan: bool,
    /// Report only, change nothing (a PII-free operation's body, already sent).
    report_only: bool,
    /// The token or pseudonym being written.
    token: String,
    /// Reusable encryption buffer.
    buffer: Vec<u8>,
    /// Reusable cache key: action, class, kind, then the plaintext.
    key: Vec<u8>,
    /// Deterministic outputs already computed in this body: values repeated within a page
    /// (country, state, city…) are encrypted once.
    repeated: HashMap<Vec<u8>, Box<str>>,
}

impl<'g> Protector<'g> {
    fn new(guard: &'g Guard, op: &'g Operation, actions: &'g ClassActions, keys: ActiveKeys, report_only: bool) -> Protector<'g> {
        Protector {
            guard,
            keys,
            actions,
            op,
            counts: FieldCounts::default(),
            marks: Vec::new(),
            drift: DriftFindings::default(),
            matched: 0,
            pii_key: None,
            scan: guard.drift.any_detector() || guard.drift.zero_match,
            report_only,
            token: String::new(),
            buffer: Vec::new(),
            key: Vec::new(),
            repeated: HashMap::new(),
        }
    }

    /// After the walk: the zero-match alarm.
    fn finish(&mut self) {
        if self.matched == 0 && self.guard.drift.zero_match && !self.report_only {
            if let Some(path) = self.pii_key.take() {
                self.drift.add(DriftKind::ZeroMatch, DriftAction::Reported, || path);
            }
        }
    }

    /// Applies `class`'s action to one value. `model_number`: Amazon's model declares a number
    /// here (it may be coarsened); `required`: the member may not be removed (its type's empty
    /// value instead).
    fn protect(&mut self, class: PiiClass, model_number: bool, required: bool, value: MatchedValue<'_>, out: &mut Vec<u8>) -> Edit {
        let action = self.actions[class];
        let (plaintext, kind): (&[u8], ValueKind) = match &value {
            // An empty string carries no PII; keeping it keeps "was it empty" answerable.
            MatchedValue::Text(t) if t.is_empty() && action != Action::Remove => return Edit::Keep,
            MatchedValue::Text(t) => (t.as_bytes(), ValueKind::Text),
            MatchedValue::Raw(r) => (r.as_bytes(), ValueKind::RawJson),
        };
        // Schema-faithful (src/schema.rs): a number the model declares a number stays a number
        // unless the policy opts in… A number where the model expects text, or where no model
        // says anything (a member Amazon added, a detector's find), is no coordinate: a phone or
        // postal code sent as digits is protected like any other value.
        if kind == ValueKind::RawJson && model_number && is_number_text(&String::from_utf8_lossy(plaintext)) {
            let numbers = self.guard.policy.numbers;
            match action {
                Action::Tokenize(_) | Action::Hash | Action::Redact if numbers != NumberAction::Tokenize => {
                    if numbers == NumberAction::Null && !required {
                        self.counts.add(class, Action::Redact);
                        out.extend_from_slice(b"null");
                    } else {
                        // A required number is never null: coarsened to the default instead.
                        let decimals = if let NumberAction::Coarsen(d) = numbers { d } else { DEFAULT_NUMBER_DECIMALS };
                        self.counts.add_treatment(class, COARSENED);
                        coarsen(&String::from_utf8_lossy(plaintext), decimals, out);
                    }
                    return Edit::Replaced;
                }
                _ => {}
            }
        }
        // …and a required member is never removed: the caller gets its type's empty value.
        if action == Action::Remove && required {
            self.counts.add(class, action);
            out.extend_from_slice(match kind {
                ValueKind::Text => b"\"\"",
                ValueKind::RawJson => empty_like(plaintext),
            });
            return Edit::Replaced;
        }
        self.counts.add(class, action);
        let deterministic = matches!(action, Action::Tokenize(Mode::Deterministic) | Action::Hash);
        if deterministic {
            self.key.clear();
            self.key.extend_from_slice(&[action_slot(action) as u8, class.index() as u8, kind as u8]);
            self.key.extend_from_slice(plaintext);
            if let Some(token) = self.repeated.get(self.key.as_slice()) {
                out.push(b'"');
                out.extend_from_slice(token.as_bytes());
                out.push(b'"');
                return Edit::Replaced;
            }
        }
        self.token.clear();
        match action {
            Action::Clear => return Edit::Keep,
            Action::Remove => return Edit::Remove,
            Action::Tokenize(mode) => self.guard.tokens.seal_into(&self.keys, class, mode, kind, plaintext, &mut self.buffer, &mut self.token),
            Action::Hash => self.guard.tokens.hash_into(&self.keys, class, kind, plaintext, &mut self.token),
            Action::Redact => match kind {
                ValueKind::Text => {
                    write_json_string(&self.guard.policy.redact_mask, out);
                    return Edit::Replaced;
                }
                // A string that is no text (a lone surrogate) stays a string.
                ValueKind::RawJson if plaintext.first() == Some(&b'"') => {
                    write_json_string(&self.guard.policy.redact_mask, out);
                    return Edit::Replaced;
                }
                ValueKind::RawJson => {
                    out.extend_from_slice(b"null");
                    return Edit::Replaced;
                }
            },
        }
        // Tokens and pseudonyms are URL-safe ASCII: nothing to escape.
        out.push(b'"');
        out.extend_from_slice(self.token.as_bytes());
        out.push(b'"');
        if deterministic {
            self.repeated.insert(self.key.clone(), self.token.as_str().into());
        }
        Edit::Replaced
    }
}

impl FieldHandler for Protector<'_> {
    type Error = Never;

    fn replace(&mut self, rule: u32, value: MatchedValue<'_>, site: &Site<'_>, out: &mut Vec<u8>) -> Result<Edit, Never> {
        self.matched = self.matched.saturating_add(1);
        if self.report_only {
            return Ok(Edit::Keep);
        }
        if let Some(rule) = self.op.response_rules.get(rule as usize) {
            let required = rule.schema.as_ref().is_some_and(|f| f.required);
            let model_number = rule.schema.as_ref().is_some_and(FieldSchema::is_number);
            return Ok(self.protect(rule.class, model_number, required, value, out));
        }
        let Some(catch_all) = self.op.catch_all(rule) else { return Ok(Edit::Keep) };
        // A member of a customer object that no rule names: Amazon added it. Every scalar in it
        // is protected one by one (a nested object or array keeps its shape).
        let class = match &value {
            MatchedValue::Raw(raw) if raw.starts_with(['{', '[']) => return Ok(Edit::Keep),
            MatchedValue::Text(t) if t.is_empty() => return Ok(Edit::Keep),
            MatchedValue::Text(t) => member_class(site.key().as_deref(), Some(t), catch_all.class),
            MatchedValue::Raw(_) => member_class(site.key().as_deref(), None, catch_all.class),
        };
        self.drift.add(DriftKind::Member, DriftAction::Protected, || site.template());
        // Not in Amazon's model: nothing requires it (the caller may lose it) or makes it a number.
        Ok(self.protect(class, false, false, value, out))
    }

    fn mark(&mut self) -> usize {
        self.marks.push(self.counts.clone());
        self.marks.len() - 1
    }

    /// A container replaced as a whole is one value: its members, counted while they were walked,
    /// are not in the output (one token, one mask, or nothing stands for all of them).
    fn settle(&mut self, before: usize, members: usize, whole: bool) {
        if whole {
            if let (Some(from), Some(to)) = (self.marks.get(before), self.marks.get(members)) {
                self.counts.forget(from, to);
            }
        }
        self.marks.truncate(before);
    }

    fn unmatched(&mut self, value: &str, site: &Site<'_>, out: &mut Vec<u8>) -> Result<Edit, Never> {
        let policy = &self.guard.drift;
        if self.matched == 0 && self.pii_key.is_none() && policy.zero_match && site.key().as_deref().is_some_and(looks_like_pii_key) {
            self.pii_key = Some(site.template());
        }
        // Most strings are refused by their bytes alone, before any member name is read.
        if !worth_a_look(value) {
            return Ok(Edit::Keep);
        }
        let (key, parent) = (site.key(), site.parent_key());
        let Some(kind) = policy.judge(key.as_deref(), parent.as_deref(), value, self.report_only, &mut self.drift, || site.template()) else { return Ok(Edit::Keep) };
        // Where the model says nothing, a value the caller may not see is emptied, not removed.
        Ok(self.protect(kind.class(), false, true, MatchedValue::Text(std::borrow::Cow::Borrowed(value)), out))
    }

    fn scans(&self) -> bool {
        self.scan
    }

    fn wants(&self, raw: &str) -> bool {
        // Until a rule matches, every string's member name counts for the zero-match alarm;
        // after, only strings a detector could take. (An escape could hide an `@` or a digit:
        // such strings are always looked at.)
        (self.matched == 0 && self.guard.drift.zero_match) || raw.contains('\\') || worth_a_look(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{DriftAction, DriftKind};

    const KEY_HEX: &str = "8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    fn guard_result(extra: &str) -> Result<Guard, ConfigError> {
        let config = format!(r#"{{"version":1,"keys":{{"active":"k1","env":{{"k1":"SPAPI_GUARD_KEY_K1"}}}}{extra}}}"#);
        Guard::load(config.as_bytes(), &|name| (name == "SPAPI_GUARD_KEY_K1").then(|| KEY_HEX.to_string()))
    }

    fn guard(extra: &str) -> Guard {
        guard_result(extra).expect("loads")
    }

    #[test]
    fn tokenizes_catalog_fields_of_get_order_address() {
        let g = guard("");
        let op = g.catalog.route("GET", "/orders/v0/orders/1/address").expect("op");
        let body = br#"{"payload":{"AmazonOrderId":"1","ShippingAddress":{"Name":"Jane Doe","City":"Seattle","ExtendedFields":{"GeoCoordinates":{"Latitude":47.6062}}}}}"#;
        let out = g.protect_response(op, body).expect("protected");
        let text = String::from_utf8(out.body.expect("changed")).expect("utf8");
        assert!(!text.contains("Jane Doe") && !text.contains("Seattle"), "{text}");
        assert!(text.contains(r#""AmazonOrderId":"1""#));
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let name = v["payload"]["ShippingAddress"]["Name"].as_str().expect("token");
        assert_eq!(g.tokens.open(name, 0).expect("opens").plaintext, b"Jane Doe");
        // A coordinate stays a number, coarsened to one decimal (about 11 km).
        assert_eq!(v["payload"]["ShippingAddress"]["ExtendedFields"]["GeoCoordinates"]["Latitude"], serde_json::json!(47.6));
        assert_eq!(out.counts.get(PiiClass::Name, Action::Tokenize(Mode::Deterministic)), 1);
        assert_eq!(out.counts.coarsened(PiiClass::Address), 1);
        assert_eq!(out.counts.total(), 3);
    }

    #[test]
    fn class_actions_apply() {
        let g = guard(r#","classes":{"name":{"action":"redact"},"address":{"action":"clear"},"phone":{"action":"hash"}}"#);
        let op = g.catalog.route("GET", "/orders/v0/orders/1/address").expect("op");
        let body = br#"{"payload":{"ShippingAddress":{"Name":"Jane","City":"Seattle","Phone":"+1 555","ExtendedFields":{"GeoCoordinates":{"Latitude":1.5}}}}}"#;
        let out = g.protect_response(op, body).expect("protected");
        let v: serde_json::Value = serde_json::from_slice(&out.body.expect("changed")).expect("json");
        let a = &v["payload"]["ShippingAddress"];
        assert_eq!(a["Name"], "REDACTED");
        assert_eq!(a["City"], "Seattle");
        assert!(a["Phone"].as_str().expect("hash").starts_with("spgh2.k1.phone."));
        assert_eq!(out.counts.get(PiiClass::Address, Action::Clear), 2);
        assert!(out.counts.used_key(), "hashed phone");
    }

    /// The example of the policy reference loads, so the reference stays true to the code.
    #[test]
    fn policy_reference_example_loads() {
        let doc = include_str!("../docs/POLICY.md");
        let example = doc.split("```json").nth(1).and_then(|s| s.split("```").next()).expect("example block");
        // A key of its own per variable (the ring refuses one key under two ids).
        let env = |name: &str| name.starts_with("SPAPI_GUARD_KEY_").then(|| format!("{:08x}{}", name.bytes().map(u32::from).sum::<u32>(), &KEY_HEX[8..]));
        let g = Guard::load(example.as_bytes(), &env).unwrap_or_else(|e| panic!("docs/POLICY.md example: {e}"));
        assert!(g.catalog.get("my-api-v1.getThing").is_some());
        assert_eq!(g.policy.action(PiiClass::Other), Action::Redact);
        // The access control example is a fragment of a policy.
        let fragment = doc.split("```json").nth(2).and_then(|s| s.split("```").next()).expect("access example");
        let policy = format!(r#"{{"version":1,"keys":{{"active":"k1","env":{{"k1":"SPAPI_GUARD_KEY_K1"}}}},{fragment}}}"#);
        let g = Guard::load(policy.as_bytes(), &env).unwrap_or_else(|e| panic!("docs/POLICY.md access example: {e}"));
        assert_eq!(g.access.callers.len(), 2);
    }

    #[test]
    fn caller_actions_remove_fields() {
        let g = guard("");
        let op = g.catalog.route("GET", "/orders/v0/orders/1/address").expect("op");
        let mut actions = *g.policy.actions();
        actions[PiiClass::Name] = Action::Remove;
        actions[PiiClass::Address] = Action::Clear;
        let body = br#"{"payload":{"ShippingAddress":{"Name":"Jane","City":"Seattle"}}}"#;
        let out = g.protect_response_with(op, body, &actions).expect("protected");
        assert_eq!(out.body.as_deref(), Some(&br#"{"payload":{"ShippingAddress":{"City":"Seattle"}}}"#[..]));
        assert_eq!(out.counts.get(PiiClass::Name, Action::Remove), 1);
        assert_eq!(out.counts.delivered(), 1);
        assert!(!out.counts.used_key(), "clear and removed values use no key");
    }

    #[test]
    fn refuses_a_rewrite_that_outgrows_the_buffer() {
        // maxBodyBytes × 3 fits the buffer, but one-letter emails grow ~30× into tokens.
        let g = guard(r#","maxBodyBytes":40000,"bufferLimitBytes":131072"#);
        let op = g.catalog.route("GET", "/orders/v0/orders").expect("op");
        let page = |n: usize| {
            let orders: Vec<&str> = (0..n).map(|_| r#"{"BuyerInfo":{"BuyerEmail":"a","BuyerName":"b"}}"#).collect();
            format!(r#"{{"payload":{{"Orders":[{}]}}}}"#, orders.join(","))
        };
        let small = g.protect_response(op, page(100).as_bytes()).expect("fits");
        assert!(small.body.expect("rewritten").len() < g.policy.max_rewritten_bytes());
        let big = page(800);
        assert!(big.len() < 40000);
        assert_eq!(g.protect_response(op, big.as_bytes()).err(), Some(FailReason::BodyTooLarge));
    }

    #[test]
    fn a_lone_surrogate_is_tokenized_losslessly_not_refused() {
        let g = guard("");
        let op = g.catalog.route("GET", "/orders/v0/orders/1/address").expect("op");
        let body = br#"{"payload":{"ShippingAddress":{"Name":"Jane\ud800","City":"x\udc00y"}}}"#;
        let out = g.protect_response(op, body).expect("protected");
        let text = String::from_utf8(out.body.expect("changed")).expect("utf8");
        assert!(!text.contains("Jane"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let opened = g.tokens.open(v["payload"]["ShippingAddress"]["Name"].as_str().expect("token"), 0).expect("opens");
        assert_eq!((opened.plaintext.as_slice(), opened.kind), (&br#""Jane\ud800""#[..], ValueKind::RawJson));
        let g = guard(r#","classes":{"name":{"action":"redact"}}"#);
        let out = g.protect_response(op, body).expect("protected");
        let v: serde_json::Value = serde_json::from_slice(&out.body.expect("changed")).expect("json");
        assert_eq!(v["payload"]["ShippingAddress"]["Name"], "REDACTED", "a string stays a string");
    }

    #[test]
    fn protection_keeps_the_schema_of_amazons_models() {
        let g = guard("");
        let op = g.catalog.route("GET", "/orders/v0/orders/1/address").expect("op");
        let body = br#"{"payload":{"ShippingAddress":{"Name":"Jane","CountryCode":"US","AddressType":"Residential","ExtendedFields":{"GeoCoordinates":{"Latitude":37.42678611,"Longitude":-122.08060321}}}}}"#;
        let v: serde_json::Value = serde_json::from_slice(&g.protect_response(op, body).expect("ok").body.expect("changed")).expect("json");
        let a = &v["payload"]["ShippingAddress"];
        // Enumerations and country codes are not PII on their own: clear and valid.
        assert_eq!((a["CountryCode"].as_str(), a["AddressType"].as_str()), (Some("US"), Some("Residential")));
        // Numbers stay numbers, coarsened.
        assert_eq!(a["ExtendedFields"]["GeoCoordinates"]["Latitude"], serde_json::json!(37.4));
        assert_eq!(a["ExtendedFields"]["GeoCoordinates"]["Longitude"], serde_json::json!(-122.1));
        // Or null, by the policy; or tokens, by explicit opt-in (with a warning).
        let null = guard(r#","numbers":{"action":"null"}"#);
        let v: serde_json::Value = serde_json::from_slice(&null.protect_response(op, body).expect("ok").body.expect("changed")).expect("json");
        assert_eq!(v["payload"]["ShippingAddress"]["ExtendedFields"]["GeoCoordinates"]["Latitude"], serde_json::Value::Null);
        let tokens = guard(r#","numbers":{"action":"tokenize"}"#);
        let v: serde_json::Value = serde_json::from_slice(&tokens.protect_response(op, body).expect("ok").body.expect("changed")).expect("json");
        assert!(v["payload"]["ShippingAddress"]["ExtendedFields"]["GeoCoordinates"]["Latitude"].is_string());
        assert!(tokens.warnings.iter().any(|w| w.starts_with("numbers.action: tokenize") && w.contains("use coarsen")), "{:?}", tokens.warnings);
        assert!(!g.warnings.iter().any(|w| w.starts_with("numbers.action")));
    }

    #[test]
    fn numbers_where_the_model_expects_text_are_tokenized_not_coarsened() {
        let g = guard("");
        let op = g.catalog.route("GET", "/orders/v0/orders/1/address").expect("op");
        let body = br#"{"payload":{"ShippingAddress":{"Phone":2065550123,"PostalCode":98101,"AddressLine1":4.2e3}}}"#;
        let out = g.protect_response(op, body).expect("ok");
        let text = String::from_utf8(out.body.expect("changed")).expect("utf8");
        for clear in ["2065550123", "98101", "4.2e3", "4200"] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let phone = g.tokens.open(v["payload"]["ShippingAddress"]["Phone"].as_str().expect("token"), 0).expect("opens");
        assert_eq!((phone.plaintext.as_slice(), phone.kind), (&b"2065550123"[..], ValueKind::RawJson));
        assert_eq!(out.counts.coarsened(PiiClass::Address), 0);
    }

    #[test]
    fn required_members_are_emptied_never_removed() {
        let g = guard("");
        let op = g.catalog.route("GET", "/mfn/v0/shipments/S1").expect("op");
        let mut actions = *g.policy.actions();
        actions[PiiClass::Name] = Action::Remove;
        let body = br#"{"payload":{"ShipToAddress":{"Name":"Jane","City":"Canton"}}}"#;
        let out = g.protect_response_with(op, body, &actions).expect("ok");
        let v: serde_json::Value = serde_json::from_slice(&out.body.expect("changed")).expect("json");
        let a = &v["payload"]["ShipToAddress"];
        assert_eq!(a["Name"], "", "required by the model: emptied");
        assert!(a["City"].as_str().is_some_and(|c| c.starts_with("spgt1.")));
        assert_eq!(out.counts.get(PiiClass::Name, Action::Remove), 1);
    }

    #[test]
    fn schema_conflicts_are_refused_or_warned_naming_the_field() {
        // A policy cannot make an enumeration PII.
        let env = |name: &str| (name == "SPAPI_GUARD_KEY_K1").then(|| KEY_HEX.to_string());
        let config = r#"{"version":1,"keys":{"active":"k1","env":{"k1":"SPAPI_GUARD_KEY_K1"}},"catalog":{"extend":{"orders-v0.getOrderAddress":{"responsePii":[{"jsonpath":"$.payload.ShippingAddress.AddressType","class":"address"}]}}}}"#;
        let e = Guard::load(config.as_bytes(), &env).err().expect("refused");
        assert_eq!(e.field, "catalog.extend.orders-v0.getOrderAddress.responsePii[0].jsonpath");
        assert!(e.message.contains("enumeration (Residential, Commercial)") && e.message.contains("remove this entry"), "{e}");
        // Tokens longer than a member's maxLength, and required members of hidden classes, warn.
        let g = guard(
            r#","roles":{"labels":{"operations":["merchant-fulfillment-v0.getShipment"],"pii":{"address":"clear"}}},"callers":[{"id":"spiffe://x/labels","roles":["labels"]}]"#,
        );
        assert!(g.warnings.iter().any(|w| w.starts_with("classes.name: tokens are longer than the maxLength") && w.contains("e.g. merchant-fulfillment-v0.")), "{:?}", g.warnings);
        assert!(g.warnings.iter().any(|w| w.starts_with("roles.labels.pii: name") && w.contains("returned empty")), "{:?}", g.warnings);
        let bad = guard_result(r#","numbers":{"action":"round"}"#).err().expect("refused");
        assert_eq!(bad.field, "numbers.action");
        let bad = guard_result(r#","numbers":{"action":"null","decimals":2}"#).err().expect("refused");
        assert_eq!(bad.field, "numbers.decimals");
    }

    #[test]
    fn fails_closed_on_bad_bodies() {
        let g = guard(r#","maxBodyBytes":1024"#);
        let op = g.catalog.route("GET", "/orders/v0/orders/1/address").expect("op");
        assert_eq!(g.protect_response(op, b"{\"payload\":").err(), Some(FailReason::InvalidJson));
        assert_eq!(g.protect_response(op, &[b' '; 1025]).err(), Some(FailReason::BodyTooLarge));
    }

    /// Protects `body` as `op` would, and returns it as JSON with each token replaced by its
    /// class (`<email>`), plus what drift found.
    fn protect_classes(g: &Guard, method: &str, path: &str, body: &str) -> (serde_json::Value, DriftFindings) {
        let op = g.catalog.route(method, path).expect("op");
        let out = g.protect_response(op, body.as_bytes()).expect("protected");
        let text = String::from_utf8(out.body.unwrap_or_else(|| body.as_bytes().to_vec())).expect("utf8");
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
        fn classes(v: &mut serde_json::Value, g: &Guard) {
            match v {
                serde_json::Value::String(s) if s.starts_with("spgt1.") => {
                    let class = g.tokens.open(s, g.loaded_at_ms).expect("opens").class;
                    *s = format!("<{class}>");
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(|x| classes(x, g)),
                serde_json::Value::Object(m) => m.values_mut().for_each(|x| classes(x, g)),
                _ => {}
            }
        }
        classes(&mut v, g);
        (v, out.drift)
    }

    #[test]
    fn members_of_customer_objects_that_no_path_names_are_protected_by_name_value_or_object_class() {
        let g = guard("");
        let body = r#"{"payload":{"AmazonOrderId":"902-3159896-1390916","BuyerInfo":{"BuyerEmail":"a@example.com","BuyerPhone":"4155551234","Contact":"jane.doe@example.com",
            "Alternate":{"Line":"Flat 2","Floors":3,"Verified":true,"Lat":47.6062},"BuyerTaxInfo":{"TaxingRegion":"WA","TaxClassifications":[{"Name":"VATNumber","Value":"X1"}]},"Nickname":"Janie"},
            "ShippingAddress":{"Name":"Jane","CountryCode":"US","AddressType":"Residential","DeliveryCode":"4455"}}}"#;
        let (v, drift) = protect_classes(&g, "GET", "/orders/v0/orders/902-3159896-1390916", body);
        let b = &v["payload"]["BuyerInfo"];
        assert_eq!(b["BuyerEmail"], "<email>");
        assert_eq!(b["BuyerPhone"], "<phone>", "a new member: its name says phone");
        assert_eq!(b["Contact"], "<email>", "its value says email");
        assert_eq!(b["Nickname"], "<other>", "nothing says: the object's class");
        assert_eq!(b["Alternate"]["Line"], "<address>", "nested, by name");
        // No model says these are numbers (a phone could come as digits): tokens, like any value.
        assert_eq!(b["Alternate"]["Floors"], "<other>");
        assert_eq!(b["Alternate"]["Lat"], "<other>");
        assert_eq!(b["Alternate"]["Verified"], true);
        assert_eq!(b["BuyerTaxInfo"]["TaxingRegion"], "<address>", "classified by the definition now");
        assert_eq!(b["BuyerTaxInfo"]["TaxClassifications"][0]["Name"], "VATNumber", "a label, clear");
        assert_eq!(b["BuyerTaxInfo"]["TaxClassifications"][0]["Value"], "<tax_id>");
        let a = &v["payload"]["ShippingAddress"];
        assert_eq!((a["CountryCode"].as_str(), a["AddressType"].as_str()), (Some("US"), Some("Residential")), "clear and valid");
        assert_eq!(a["DeliveryCode"], "<address>");
        assert_eq!(v["payload"]["AmazonOrderId"], "902-3159896-1390916", "not a customer object's member");
        assert_eq!(drift.count(DriftKind::Member, DriftAction::Protected), 7, "the booleans are not counted: they carry nothing");
        assert!(drift.findings().iter().any(|f| f.path == "$.payload.BuyerInfo.Alternate.Floors"), "{:?}", drift.findings());
    }

    #[test]
    fn shapes_drift_keys_in_any_case_objects_as_arrays_bodies_unwrapped() {
        let g = guard("");
        let (v, _) = protect_classes(&g, "GET", "/orders/v0/orders/1/address", r#"{"payload":{"shippingAddress":[{"name":"Jane","countryCode":"US"},{"NAME":"Joe","city":"X"}]}}"#);
        let a = &v["payload"]["shippingAddress"];
        assert_eq!(
            (a[0]["name"].as_str(), a[0]["countryCode"].as_str(), a[1]["NAME"].as_str(), a[1]["city"].as_str()),
            (Some("<name>"), Some("US"), Some("<name>"), Some("<address>"))
        );
        let tracking = r#"{"trackingId":"89108749065090","eventHistory":[{"eventCode":"Delivered","location":{"city":"San Bernardino","countryCode":"US","stateOrRegion":"CA","postalCode":"92404"}}]}"#;
        let (v, _) = protect_classes(&g, "GET", "/shipping/v1/tracking/89108749065090", tracking);
        let l = &v["eventHistory"][0]["location"];
        assert_eq!((l["city"].as_str(), l["postalCode"].as_str(), l["countryCode"].as_str()), (Some("<address>"), Some("<address>"), Some("US")));
        assert_eq!(v["trackingId"], "89108749065090");
    }

    #[test]
    fn detectors_tokenize_emails_and_phones_and_report_the_rest_outside_quiet_subtrees() {
        let g = guard("");
        let body = r#"{"payload":{"Orders":[{"AmazonOrderId":"902-3159896-1390916","PurchaseDate":"2020-01-01T00:00:00Z","SellerNote":"call +1 206 555 0100",
            "Relay":"2c6m0kt2@marketplace.amazon.com","Helpdesk":"+44 20 7946 0958","Gate":"1 Cross St","recipientName":"Jane Doe","shop":{"name":"Corner Shop"},"OrderTotal":{"Amount":"1234567.89"},
            "DefaultShipFromLocationAddress":{"Name":"Seller Inc","Phone":"+1 206 555 0199","Email":"shop@example.com"}}]}}"#;
        let (v, drift) = protect_classes(&g, "GET", "/orders/v0/orders", body);
        let o = &v["payload"]["Orders"][0];
        assert_eq!(o["Relay"], "<email>");
        assert_eq!(o["Helpdesk"], "<phone>");
        assert_eq!(o["SellerNote"], "call +1 206 555 0100", "a phone inside text is not a phone-shaped string");
        assert_eq!((o["Gate"].as_str(), o["recipientName"].as_str()), (Some("1 Cross St"), Some("Jane Doe")), "reported, not changed");
        assert_eq!((o["AmazonOrderId"].as_str(), o["OrderTotal"]["Amount"].as_str()), (Some("902-3159896-1390916"), Some("1234567.89")));
        let seller = &o["DefaultShipFromLocationAddress"];
        assert_eq!((seller["Phone"].as_str(), seller["Email"].as_str()), (Some("+1 206 555 0199"), Some("shop@example.com")), "the seller's: not scanned");
        let found: Vec<String> = drift.findings().iter().map(|f| format!("{} {} {}", f.kind.as_str(), f.action.as_str(), f.path)).collect();
        assert_eq!(
            found,
            [
                "email protected $.payload.Orders[*].Relay",
                "phone protected $.payload.Orders[*].Helpdesk",
                "address reported $.payload.Orders[*].Gate",
                "name reported $.payload.Orders[*].recipientName",
                // No catalog path matched (this page has no buyer or address), yet a key looks
                // like PII: the shape may have changed.
                "zero_match reported $.payload.Orders[*].recipientName"
            ]
        );
        // A caller that may not see phones gets an empty string where the model says nothing.
        let op = g.catalog.route("GET", "/orders/v0/orders").expect("op");
        let mut actions = *g.policy.actions();
        actions[PiiClass::Phone] = Action::Remove;
        let out = g.protect_response_with(op, body.as_bytes(), &actions).expect("ok");
        let v: serde_json::Value = serde_json::from_slice(&out.body.expect("changed")).expect("json");
        assert_eq!(v["payload"]["Orders"][0]["Helpdesk"], "");
        // Policy: every detector tokenizes, or none runs.
        let all = guard(r#","drift":{"detectors":{"address":"tokenize","name":"tokenize"}}"#);
        let (v, _) = protect_classes(&all, "GET", "/orders/v0/orders", body);
        assert_eq!((v["payload"]["Orders"][0]["Gate"].as_str(), v["payload"]["Orders"][0]["recipientName"].as_str()), (Some("<address>"), Some("<name>")));
        let none = guard(r#","drift":{"detectors":{"email":"off","phone":"off","address":"off","name":"off"},"zeroMatchAlarm":false}"#);
        let (v, drift) = protect_classes(&none, "GET", "/orders/v0/orders", body);
        assert_eq!(v["payload"]["Orders"][0]["Relay"], "2c6m0kt2@marketplace.amazon.com");
        assert!(drift.is_empty());
    }

    #[test]
    fn a_pii_response_where_nothing_matched_but_keys_look_like_pii_raises_the_alarm() {
        let g = guard("");
        let (_, drift) = protect_classes(&g, "GET", "/orders/v0/orders/1/address", r#"{"data":{"recipient":{"fullName":"jane","zip":"98101"}}}"#);
        assert_eq!(drift.findings().iter().map(|f| (f.kind, f.path.as_str())).collect::<Vec<_>>(), [(DriftKind::ZeroMatch, "$.data.recipient.fullName")]);
        for quiet in [r#"{"errors":[{"code":"NotFound","message":"No order"}]}"#, r#"{"payload":{"AmazonOrderId":"1","ShippingAddress":{"Name":"Jane"}}}"#] {
            let (_, drift) = protect_classes(&g, "GET", "/orders/v0/orders/1/address", quiet);
            assert!(drift.is_empty(), "{quiet}: {:?}", drift.findings());
        }
        let off = guard(r#","drift":{"zeroMatchAlarm":false}"#);
        let (_, drift) = protect_classes(&off, "GET", "/orders/v0/orders/1/address", r#"{"data":{"recipient":{"fullName":"jane"}}}"#);
        assert!(drift.is_empty());
    }

    #[test]
    fn pii_free_operations_are_scanned_report_only() {
        let g = guard(r#","drift":{"scanPiiFreeOperations":true}"#);
        let op = g.catalog.route("POST", "/tokens/2021-03-01/restrictedDataToken").expect("op");
        assert!(!op.has_response_pii());
        let found = g.scan_response(op, br#"{"restrictedDataToken":"Atz.sprdt|x","note":"jane@example.com"}"#).expect("json");
        assert_eq!(found.count(DriftKind::Email, DriftAction::Reported), 1);
        assert_eq!(found.count(DriftKind::Email, DriftAction::Protected), 0);
        assert!(g.scan_response(op, b"{not json").is_none());
    }

    #[test]
    fn the_policy_extends_customer_objects_and_their_non_pii_members() {
        let g = guard(
            r#","catalog":{"customerObjects":{"orders-v0.Address":{"class":"other","nonPiiMembers":["DeliveryCode"]}},
                "extend":{"orders-v0.getOrder":{"customerObjects":[{"jsonpath":"$.payload.AutomatedShippingSettings","class":"name","nonPiiMembers":["HasAutomatedShippingSettings"]},
                                                                  {"jsonpath":"$.payload.MarketplaceTaxInfo2","object":"orders-v0.Address"}]}},
                "exclude":{"orders-v0.getOrder":["$.payload.BuyerInfo.BuyerTaxInfo.TaxingRegion"]}}"#,
        );
        let body = r#"{"payload":{"ShippingAddress":{"DeliveryCode":"4455","Other":"x"},"AutomatedShippingSettings":{"HasAutomatedShippingSettings":"true","Note":"y"},
            "MarketplaceTaxInfo2":{"Name":"Jane"},"BuyerInfo":{"BuyerTaxInfo":{"TaxingRegion":"WA"}}}}"#;
        let (v, _) = protect_classes(&g, "GET", "/orders/v0/orders/1", body);
        let p = &v["payload"];
        assert_eq!((p["ShippingAddress"]["DeliveryCode"].as_str(), p["ShippingAddress"]["Other"].as_str()), (Some("4455"), Some("<other>")));
        assert_eq!((p["AutomatedShippingSettings"]["HasAutomatedShippingSettings"].as_str(), p["AutomatedShippingSettings"]["Note"].as_str()), (Some("true"), Some("<name>")));
        assert_eq!(p["MarketplaceTaxInfo2"]["Name"], "<name>", "a built-in object placed elsewhere");
        assert_eq!(p["BuyerInfo"]["BuyerTaxInfo"]["TaxingRegion"], "WA", "excluded");
        let bad = [
            (r#","catalog":{"customerObjects":{"orders-v0.Nope":{}}}"#, "catalog.customerObjects.orders-v0.Nope"),
            (r#","catalog":{"customerObjects":{"orders-v0.Address":{"class":"shoe"}}}"#, "catalog.customerObjects.orders-v0.Address.class"),
            (r#","catalog":{"extend":{"orders-v0.getOrder":{"customerObjects":[{"jsonpath":"$.payload.X"}]}}}"#, "catalog.extend.orders-v0.getOrder.customerObjects[0].class"),
            (
                r#","catalog":{"extend":{"orders-v0.getOrder":{"customerObjects":[{"jsonpath":"$.payload.X","object":"x.Y"}]}}}"#,
                "catalog.extend.orders-v0.getOrder.customerObjects[0].object",
            ),
            (
                r#","catalog":{"extend":{"orders-v0.getOrder":{"customerObjects":[{"jsonpath":"$..X","class":"name"}]}}}"#,
                "catalog.extend.orders-v0.getOrder.customerObjects[0].jsonpath",
            ),
            (
                r#","catalog":{"extend":{"orders-v0.getOrder":{"customerObjects":[{"jsonpath":"$.payload.DefaultShipFromLocationAddress","class":"name"}]}}}"#,
                "catalog.extend.orders-v0.getOrder.customerObjects[0].jsonpath",
            ),
            (r#","catalog":{"exclude":{"orders-v0.getOrder":["$.payload.BuyerInfo.Nope.Deeper"]}}"#, "catalog.exclude.orders-v0.getOrder[0]"),
        ];
        for (extra, field) in bad {
            let e = guard_result(extra).err().expect("refused");
            assert_eq!(e.field, field, "{e}");
        }
    }
}
