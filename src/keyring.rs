//! The key ring: which keys exist, which PII classes each serves and when (the policy's `keys`),
//! and their material, read from environment variables Envoy passes into the VM.
//!
//! Every key has a life (`keys.ring`): it is `created`, makes the new tokens of its classes from
//! `activeFrom` until the next key of the class takes over, and its tokens open until `notAfter`
//! (the last day); after that they are refused even while the material is still present, and
//! deleting the material deletes every token it made, wherever it was copied (crypto-shredding,
//! docs/DPP.md). The short form (`keys.active` + `keys.env`) is one active key for every class and
//! keys without dates: tokens that never expire.
//!
//! Everything about time here is pure: the instant is passed in (the filter's is the host clock).
//! The policy names variables, never key material. Each variable holds one 256-bit key, as 64 hex
//! digits or standard base64 (44 characters). Error messages name the policy field and the
//! variable, and say what is wrong with its length or encoding, never what it holds.
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::config_error::ConfigError;
use crate::pii::{PerClass, PiiClass};
use crate::tokens::KEY_LEN;

/// Days before the end of a class's active keys from which loading the policy warns.
pub const COVERAGE_WARNING_DAYS: u64 = 30;
const DAY_MS: u64 = 86_400_000;

/// The `keys` section of a policy: `ring` (keys with a life), or the short form `active` + `env`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct KeysDoc {
    /// Keys with their classes and dates.
    #[serde(default)]
    pub ring: Option<Vec<RingEntryDoc>>,
    /// Short form: the key id new tokens of every class are made with.
    #[serde(default)]
    pub active: Option<String>,
    /// Short form: key id → name of the environment variable that holds the key.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
}

/// One key of `keys.ring`.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RingEntryDoc {
    /// Written into every token it makes.
    pub id: String,
    /// The environment variable that holds it.
    pub env: String,
    /// The PII classes whose new tokens it makes while active.
    pub classes: Vec<String>,
    /// When it was generated (`YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ`, UTC).
    pub created: String,
    /// From when it makes the new tokens of its classes (until a later key of the class takes over).
    pub active_from: String,
    /// The last day (or instant) its tokens may be opened.
    pub not_after: String,
}

/// The dates of a ring key, as written and as instants (milliseconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyDates {
    pub created: String,
    pub active_from: String,
    pub not_after: String,
    pub created_ms: u64,
}

/// One key of the ring, without its material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMeta {
    pub id: String,
    /// The environment variable that holds its material.
    pub env: String,
    /// The policy field that describes it (`keys.ring[1]`, `keys.env.k1`), for messages.
    pub field: String,
    /// The classes it makes tokens for while active.
    pub classes: PerClass<bool>,
    /// First millisecond it makes tokens; `None`: never (a short-form key that is not `active`).
    pub active_from_ms: Option<u64>,
    /// Last millisecond its tokens open; `u64::MAX` for the short form (no limit).
    pub not_after_ms: u64,
    /// `None` in the short form.
    pub dates: Option<KeyDates>,
}

impl KeyMeta {
    /// The policy field of the variable, for messages about the material.
    pub fn env_field(&self) -> String {
        if self.dates.is_some() {
            format!("{}.env", self.field)
        } else {
            self.field.clone()
        }
    }

    /// The classes it serves, in [`PiiClass::ALL`] order.
    pub fn class_list(&self) -> Vec<PiiClass> {
        self.classes.iter().filter(|(_, &on)| on).map(|(c, _)| c).collect()
    }
}

/// Where a key is in its life at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyState {
    /// Listed ahead of its `activeFrom`: makes nothing yet.
    Pending,
    /// Makes the new tokens of at least one class.
    Active,
    /// Succeeded by a newer key: opens its tokens, makes none.
    Readable,
    /// Past `notAfter`: its tokens are refused; the key must be deleted.
    Expired,
}

impl KeyState {
    pub const ALL: [KeyState; 4] = [KeyState::Pending, KeyState::Active, KeyState::Readable, KeyState::Expired];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Readable => "readable",
            KeyState::Expired => "expired",
        }
    }
}

/// The key each class's new tokens are made with at one instant (an index of the ring), if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ActiveKeys(PerClass<Option<u16>>);

impl ActiveKeys {
    /// The ring index of the key active for `class`.
    pub fn get(&self, class: PiiClass) -> Option<usize> {
        self.0[class].map(usize::from)
    }

    /// These keys with key `index` for `class` (the tokens an older key made: data-subject lookups).
    pub fn with(mut self, class: PiiClass, index: usize) -> ActiveKeys {
        self.0[class] = u16::try_from(index).ok();
        self
    }
}

/// The validated lifecycle of every key of the ring.
#[derive(Clone, Debug)]
pub struct Schedule {
    keys: Vec<KeyMeta>,
}

impl Schedule {
    /// Reads and checks the `keys` section (everything that does not depend on the current time).
    pub fn from_doc(doc: &KeysDoc) -> Result<Schedule, ConfigError> {
        match (&doc.ring, &doc.active, &doc.env) {
            (Some(ring), None, None) => Schedule::from_ring(ring),
            (None, Some(active), Some(env)) => Schedule::from_short_form(active, env),
            (None, None, None) => Err(ConfigError::new("keys", "names no key; list them in keys.ring (see docs/POLICY.md#keys)")),
            (Some(_), _, _) => Err(ConfigError::new(
                "keys",
                "has both keys.ring and the short form (keys.active, keys.env); keep keys.ring (keys with dates) and move the short form's keys into it",
            )),
            (None, None, Some(_)) => Err(ConfigError::new("keys.active", "is missing: name the key id of keys.env that makes new tokens")),
            (None, Some(_), None) => Err(ConfigError::new("keys.env", "is missing: map each key id to the environment variable that holds it")),
        }
    }

    /// The short form: one active key for every class, other keys readable, no dates.
    pub fn short_form<'a>(ids: impl IntoIterator<Item = &'a str>, active: &str) -> Result<Schedule, ConfigError> {
        let env: BTreeMap<String, String> = ids.into_iter().map(|id| (id.to_string(), String::new())).collect();
        Schedule::from_short_form(active, &env)
    }

    fn from_short_form(active: &str, env: &BTreeMap<String, String>) -> Result<Schedule, ConfigError> {
        if env.is_empty() {
            return Err(ConfigError::new("keys.env", "names no key; map a key id to an environment variable, e.g. {\"k1\": \"SPAPI_GUARD_KEY_K1\"}"));
        }
        let mut keys = Vec::new();
        for (id, var) in env {
            let field = format!("keys.env.{id}");
            check_key_id(id).map_err(|m| ConfigError::new(&field, m))?;
            if !var.is_empty() && !is_env_name(var) {
                // The value might be a key pasted in by mistake: never repeat it.
                return Err(ConfigError::new(&field, "must be the NAME of an environment variable (A-Z, 0-9, _), not key material; keep keys out of the policy"));
            }
            keys.push(KeyMeta {
                id: id.clone(),
                env: var.clone(),
                field,
                classes: PerClass::splat(true),
                active_from_ms: (id == active).then_some(0),
                not_after_ms: u64::MAX,
                dates: None,
            });
        }
        if !env.contains_key(active) {
            return Err(ConfigError::new("keys.active", format!("'{active}' is not a key id of keys.env; name one of: {}", env.keys().cloned().collect::<Vec<_>>().join(", "))));
        }
        Ok(Schedule { keys })
    }

    fn from_ring(ring: &[RingEntryDoc]) -> Result<Schedule, ConfigError> {
        if ring.is_empty() {
            return Err(ConfigError::new("keys.ring", "lists no key; add one (see docs/POLICY.md#keys)"));
        }
        if ring.len() > usize::from(u16::MAX) {
            return Err(ConfigError::new("keys.ring", "lists too many keys; delete the expired ones"));
        }
        let mut keys: Vec<KeyMeta> = Vec::with_capacity(ring.len());
        for (i, entry) in ring.iter().enumerate() {
            let at = format!("keys.ring[{i}]");
            check_key_id(&entry.id).map_err(|m| ConfigError::new(format!("{at}.id"), m))?;
            if let Some(other) = keys.iter().find(|k| k.id == entry.id) {
                return Err(ConfigError::new(format!("{at}.id"), format!("'{}' is also the id of {}; every key needs its own id", entry.id, other.field)));
            }
            if !is_env_name(&entry.env) {
                return Err(ConfigError::new(format!("{at}.env"), "must be the NAME of an environment variable (A-Z, 0-9, _), not key material; keep keys out of the policy"));
            }
            if let Some(other) = keys.iter().find(|k| k.env == entry.env) {
                return Err(ConfigError::new(
                    format!("{at}.env"),
                    format!("{} is also the variable of {} ({}); every key id needs its own key, or deleting one would delete the other", entry.env, other.field, other.id),
                ));
            }
            let mut classes = PerClass::splat(false);
            if entry.classes.is_empty() {
                return Err(ConfigError::new(format!("{at}.classes"), format!("lists no class; name the PII classes this key makes tokens for ({})", PiiClass::names())));
            }
            for (j, name) in entry.classes.iter().enumerate() {
                let field = format!("{at}.classes[{j}]");
                let class = PiiClass::parse(name).ok_or_else(|| ConfigError::new(&field, format!("'{name}' is not a PII class; use one of: {}", PiiClass::names())))?;
                if classes[class] {
                    return Err(ConfigError::new(&field, format!("{name} is listed twice")));
                }
                classes[class] = true;
            }
            let date = |name: &str, text: &str, end_of_day: bool| {
                parse_instant(text, end_of_day)
                    .ok_or_else(|| ConfigError::new(format!("{at}.{name}"), format!("'{text}' is not a date; write YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)")))
            };
            let created_ms = date("created", &entry.created, false)?;
            let active_from_ms = date("activeFrom", &entry.active_from, false)?;
            let not_after_ms = date("notAfter", &entry.not_after, true)?;
            if created_ms > active_from_ms {
                return Err(ConfigError::new(
                    format!("{at}.created"),
                    format!("{} is after activeFrom {}; a key is created before it becomes active", entry.created, entry.active_from),
                ));
            }
            if not_after_ms < active_from_ms {
                return Err(ConfigError::new(
                    format!("{at}.notAfter"),
                    format!(
                        "{} is before activeFrom {}; notAfter is the last day this key's tokens may be opened: set it after activeFrom (the active period plus the retention)",
                        entry.not_after, entry.active_from
                    ),
                ));
            }
            for other in &keys {
                let shared: Vec<&str> = PiiClass::ALL.into_iter().filter(|&c| classes[c] && other.classes[c]).map(PiiClass::as_str).collect();
                if !shared.is_empty() && other.active_from_ms == Some(active_from_ms) {
                    return Err(ConfigError::new(
                        format!("{at}.activeFrom"),
                        format!(
                            "{} is also the activeFrom of {} ({}) for {}: one class takes one key at a time; make one of them active later",
                            entry.active_from,
                            other.field,
                            other.id,
                            shared.join(", ")
                        ),
                    ));
                }
            }
            keys.push(KeyMeta {
                id: entry.id.clone(),
                env: entry.env.clone(),
                field: at,
                classes,
                active_from_ms: Some(active_from_ms),
                not_after_ms,
                dates: Some(KeyDates { created: entry.created.clone(), active_from: entry.active_from.clone(), not_after: entry.not_after.clone(), created_ms }),
            });
        }
        Ok(Schedule { keys })
    }

    /// The keys, in the policy's order (ring indexes).
    pub fn keys(&self) -> &[KeyMeta] {
        &self.keys
    }

    /// The ring index of a key id.
    pub fn find(&self, id: &str) -> Option<usize> {
        self.keys.iter().position(|k| k.id == id)
    }

    /// Whether the ring is the short form (no dates).
    pub fn is_short_form(&self) -> bool {
        self.keys.iter().all(|k| k.dates.is_none())
    }

    /// The key that makes the new tokens of `class` at `now`: of the keys serving the class that
    /// have started, the latest; none if that one is past its `notAfter` (an older key never
    /// becomes active again).
    pub fn active_at(&self, class: PiiClass, now: u64) -> Option<usize> {
        let (index, key) = self
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.classes[class] && k.active_from_ms.is_some_and(|from| from <= now))
            // Equal starts are refused at load; the first listed wins all the same.
            .max_by(|(i, a), (j, b)| a.active_from_ms.cmp(&b.active_from_ms).then(j.cmp(i)))?;
        (now <= key.not_after_ms).then_some(index)
    }

    /// The key of every class at `now`.
    pub fn active_keys(&self, now: u64) -> ActiveKeys {
        let mut keys = ActiveKeys::default();
        for class in PiiClass::ALL {
            keys.0[class] = self.active_at(class, now).and_then(|i| u16::try_from(i).ok());
        }
        keys
    }

    /// Where key `index` is in its life at `now`.
    pub fn state(&self, index: usize, now: u64) -> KeyState {
        let Some(key) = self.keys.get(index) else { return KeyState::Expired };
        if now > key.not_after_ms {
            KeyState::Expired
        } else if PiiClass::ALL.into_iter().any(|c| self.active_at(c, now) == Some(index)) {
            KeyState::Active
        } else if key.active_from_ms.is_some_and(|from| now < from) {
            KeyState::Pending
        } else {
            KeyState::Readable
        }
    }

    /// The last millisecond of the unbroken run of active keys `class` has from `now` (keys
    /// taking over from each other); `None` if no key is active for it now.
    pub fn active_until(&self, class: PiiClass, now: u64) -> Option<u64> {
        let mut current = self.active_at(class, now)?;
        loop {
            let key = &self.keys[current];
            match self.successor(class, current) {
                Some(next) if self.keys[next].active_from_ms.is_some_and(|from| from <= key.not_after_ms.saturating_add(1)) => current = next,
                _ => return Some(key.not_after_ms),
            }
        }
    }

    /// The key of `class` that takes over from key `index` (the next later start).
    fn successor(&self, class: PiiClass, index: usize) -> Option<usize> {
        let from = self.keys[index].active_from_ms?;
        self.keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.classes[class] && k.active_from_ms.is_some_and(|f| f > from))
            .min_by(|(i, a), (j, b)| a.active_from_ms.cmp(&b.active_from_ms).then(i.cmp(j)))
            .map(|(i, _)| i)
    }

    /// The checks that depend on the time the policy is loaded at: every class has an active key
    /// now and no gap ahead (refused, naming the field); expired keys and classes whose keys end
    /// soon are warnings (the policy loads).
    pub fn check_at(&self, now: u64) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        if self.is_short_form() {
            return Ok(warnings);
        }
        let mut ending: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        for class in PiiClass::ALL {
            let Some(until) = self.active_until(class, now) else {
                let next = self.keys.iter().filter(|k| k.classes[class] && k.active_from_ms.is_some_and(|f| f > now)).min_by_key(|k| k.active_from_ms);
                let hint = match next {
                    Some(k) => format!("the first, {} ({}), becomes active on {}", k.field, k.id, k.dates.as_ref().map_or("?", |d| &d.active_from)),
                    None => "add a key that lists it in classes, with an activeFrom on or before today".to_string(),
                };
                return Err(ConfigError::new("keys.ring", format!("no key is active for {class} on {}: every class needs an active key; {hint}", display_instant(now))));
            };
            // A later key that starts after the run ends leaves the class without a key between.
            if let Some(gap) = self.keys.iter().filter(|k| k.classes[class] && k.active_from_ms.is_some_and(|f| f > until)).min_by_key(|k| k.active_from_ms) {
                return Err(ConfigError::new(
                    format!("{}.activeFrom", gap.field),
                    format!(
                        "{class} has no active key from {} until {} ({}) starts: make it active by then, or extend the notAfter of the key before",
                        display_instant(until.saturating_add(1)),
                        gap.dates.as_ref().map_or("?", |d| &d.active_from),
                        gap.id
                    ),
                ));
            }
            if until.saturating_sub(now) < COVERAGE_WARNING_DAYS * DAY_MS {
                ending.entry(until).or_default().push(class.as_str());
            }
        }
        for key in &self.keys {
            if now > key.not_after_ms {
                warnings.push(format!(
                    "{}.notAfter: key {} expired on {}: its tokens are refused; delete it now (spapi-guard keys shred {}), then remove this entry and {} from Envoy's environment",
                    key.field,
                    key.id,
                    key.dates.as_ref().map_or("?", |d| &d.not_after),
                    key.id,
                    key.env
                ));
            }
        }
        for (until, classes) in ending {
            let days = until.saturating_sub(now) / DAY_MS;
            warnings.push(format!(
                "keys.ring: no key is active for {} after {} (in {days} days): add the next key now, with an activeFrom on or before then (docs/POLICY.md#rotation)",
                classes.join(", "),
                display_instant(until)
            ));
        }
        Ok(warnings)
    }

    /// Time-independent warnings.
    pub fn warnings(&self) -> Vec<String> {
        if self.is_short_form() {
            vec!["keys: the short form (keys.active, keys.env) has no dates: its tokens never expire; list the keys in keys.ring with classes, activeFrom and notAfter to enforce retention (docs/POLICY.md#keys)".to_string()]
        } else {
            Vec::new()
        }
    }
}

/// The ring with every key's material.
pub struct KeyRing {
    pub schedule: Schedule,
    /// Material, by ring index.
    pub materials: Vec<[u8; KEY_LEN]>,
}

/// Never prints material.
impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("schedule", &self.schedule).field("materials", &format_args!("[{} keys, not shown]", self.materials.len())).finish()
    }
}

/// Reads every key the policy names. `env` looks a variable up (std::env::var in the VM).
pub fn load(doc: &KeysDoc, env: &dyn Fn(&str) -> Option<String>) -> Result<KeyRing, ConfigError> {
    let schedule = Schedule::from_doc(doc)?;
    let mut materials: Vec<[u8; KEY_LEN]> = Vec::with_capacity(schedule.keys.len());
    for key in &schedule.keys {
        let material = read_material(key, env)?;
        if let Some(i) = materials.iter().position(|m| *m == material) {
            let other = &schedule.keys[i];
            return Err(ConfigError::new(
                key.env_field(),
                format!("{} holds the same key as {} ({}); every key id needs its own key, or deleting one would delete the other", key.env, other.env, other.id),
            ));
        }
        materials.push(material);
    }
    Ok(KeyRing { schedule, materials })
}

/// Reads one key's material from its variable.
pub fn read_material(key: &KeyMeta, env: &dyn Fn(&str) -> Option<String>) -> Result<[u8; KEY_LEN], ConfigError> {
    let at = key.env_field();
    let var = &key.env;
    let value = env(var).ok_or_else(|| {
        ConfigError::key_missing(
            &at,
            format!("environment variable {var} is not set in the Wasm VM; export it to Envoy and list it in vm_config.environment_variables.host_env_keys"),
        )
    })?;
    decode_key(value.trim()).map_err(|m| ConfigError::new(&at, format!("{var} {m}")))
}

fn decode_key(value: &str) -> Result<[u8; KEY_LEN], String> {
    if value.is_empty() {
        return Err("is empty; it must hold a 256-bit key (generate one with: spapi-guard keygen, or openssl rand -base64 32)".into());
    }
    let bytes = if value.len() == 2 * KEY_LEN && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..KEY_LEN).map(|i| u8::from_str_radix(&value[2 * i..2 * i + 2], 16).unwrap_or(0)).collect::<Vec<u8>>()
    } else if value.bytes().all(|b| b.is_ascii_hexdigit()) && !value.is_empty() && value.len().is_multiple_of(2) && value.len() < 2 * KEY_LEN {
        return Err(format!("holds a {}-bit key; spapi-guard needs 256-bit keys (64 hex digits or 44 base64 characters)", value.len() * 4));
    } else {
        STANDARD.decode(value).map_err(|_| format!("is not a key: expected 64 hex digits or 44 base64 characters, found {} characters that are neither", value.len()))?
    };
    if bytes.len() != KEY_LEN {
        return Err(format!("holds a {}-bit key; spapi-guard needs 256-bit keys (generate one with: spapi-guard keygen)", bytes.len() * 8));
    }
    if bytes.iter().all(|&b| b == bytes[0]) {
        return Err("holds a key whose bytes are all equal; generate a random key (spapi-guard keygen)".into());
    }
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&bytes);
    Ok(key)
}

fn check_key_id(id: &str) -> Result<(), String> {
    if !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        Ok(())
    } else {
        Err("key ids are 1 to 32 characters of A-Z, a-z, 0-9, '-' and '_' (they are written into every token)".into())
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty() && !s.as_bytes()[0].is_ascii_digit() && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Milliseconds since the Unix epoch of `YYYY-MM-DD` (the day's first millisecond, or with
/// `end_of_day` its last: `notAfter` names the last day) or of `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn parse_instant(text: &str, end_of_day: bool) -> Option<u64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = b.get(range)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
    };
    if b.len() != 10 && b.len() != 20 {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[4] != b'-' || b[7] != b'-' || !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Some(days * DAY_MS + if end_of_day { DAY_MS - 1 } else { 0 });
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z' || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let ms = (days * 86_400 + hour * 3600 + minute * 60 + second) * 1000;
    // An instant's last millisecond, so that `notAfter: …T12:00:00Z` still opens at 12:00:00.500.
    Some(if end_of_day { ms + 999 } else { ms })
}

/// An instant as a policy would write it: the date for a day's first or last millisecond, else
/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn display_instant(ms: u64) -> String {
    let full = crate::audit::rfc3339_ms(ms);
    let day_ms = ms % DAY_MS;
    if day_ms == 0 || day_ms == DAY_MS - 1 {
        full[..10].to_string()
    } else {
        format!("{}Z", &full[..19])
    }
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm; years ≥ 1970 only).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const HEX2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    fn doc(json: &str) -> KeysDoc {
        serde_json::from_str(json).expect("doc")
    }

    fn env_with(value: &'static str) -> impl Fn(&str) -> Option<String> {
        move |name| (name == "K1").then(|| value.to_string())
    }

    fn at(text: &str) -> u64 {
        parse_instant(text, false).expect("instant")
    }

    /// A ring of `(id, classes, activeFrom, notAfter)`, created a day before its first activeFrom.
    fn ring(entries: &[(&str, &str, &str, &str)]) -> Result<Schedule, ConfigError> {
        let ring: Vec<serde_json::Value> = entries
            .iter()
            .map(|(id, classes, from, until)| {
                serde_json::json!({"id": id, "env": format!("K_{}", id.to_uppercase().replace('-', "_")), "classes": classes.split(',').collect::<Vec<_>>(),
                    "created": "2020-01-01", "activeFrom": from, "notAfter": until})
            })
            .collect();
        Schedule::from_doc(&doc(&serde_json::json!({ "ring": ring }).to_string()))
    }

    const ALL: &str = "name,email,phone,address,tax_id,gift_message,company,other";
    const NOT_TAX: &str = "name,email,phone,address,gift_message,company,other";

    #[test]
    fn loads_hex_and_base64() {
        let d = doc(r#"{"active":"k1","env":{"k1":"K1"}}"#);
        let a = load(&d, &env_with(HEX)).expect("hex");
        let b = load(&d, &env_with(B64)).expect("base64");
        assert_eq!(a.materials[0], b.materials[0]);
        assert_eq!(a.materials[0][31], 31);
    }

    #[test]
    fn refuses_and_never_echoes_material() {
        let d = doc(r#"{"active":"k1","env":{"k1":"K1"}}"#);
        let cases: [(&'static str, &str); 5] = [
            ("00112233445566778899aabbccddeeff", "128-bit"),
            ("c2VjcmV0LWtleS0xMjM=", "bit key"),
            ("not a key at all!!", "neither"),
            ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "all equal"),
            ("", "is empty"),
        ];
        for (value, expected) in cases {
            let e = load(&d, &env_with(value)).expect_err("refused");
            assert_eq!(e.field, "keys.env.k1");
            assert!(e.message.contains(expected), "{e}");
            assert!(value.is_empty() || !e.to_string().contains(value), "echoed material: {e}");
        }
        let missing = load(&d, &|_: &str| None).expect_err("refused");
        assert!(missing.message.contains("K1 is not set"), "{missing}");
    }

    #[test]
    fn refuses_inline_keys_bad_ids_and_unknown_active() {
        let inline = load(&doc(&format!(r#"{{"active":"k1","env":{{"k1":"{B64}"}}}}"#)), &env_with(HEX)).expect_err("refused");
        assert!(!inline.to_string().contains(B64));
        assert!(load(&doc(r#"{"active":"k.1","env":{"k.1":"K1"}}"#), &env_with(HEX)).is_err());
        let e = load(&doc(r#"{"active":"k2","env":{"k1":"K1"}}"#), &env_with(HEX)).expect_err("refused");
        assert_eq!(e.field, "keys.active");
        assert_eq!(load(&doc(r#"{"active":"k1","env":{}}"#), &env_with(HEX)).expect_err("refused").field, "keys.env");
    }

    #[test]
    fn the_short_form_is_one_active_key_for_every_class_forever() {
        let s = Schedule::from_doc(&doc(r#"{"active":"k2","env":{"k1":"K1","k2":"K2"}}"#)).expect("valid");
        for now in [0, at("2026-11-29"), u64::MAX] {
            assert!(PiiClass::ALL.into_iter().all(|c| s.active_at(c, now) == s.find("k2")));
            assert_eq!(s.state(0, now), KeyState::Readable);
            assert_eq!(s.state(1, now), KeyState::Active);
        }
        assert_eq!(s.check_at(at("2026-11-29")), Ok(vec![]));
        assert!(s.warnings()[0].starts_with("keys: the short form"));
    }

    #[test]
    fn each_class_gets_the_key_active_now_for_it() {
        // Monthly keys for everything but tax ids; a yearly key for tax ids.
        let s = ring(&[
            ("m-2026-10", NOT_TAX, "2026-10-01", "2026-12-31"),
            ("m-2026-11", NOT_TAX, "2026-11-01", "2027-01-31"),
            ("tax-2026", "tax_id", "2026-01-01", "2036-12-31"),
            ("m-2026-12", NOT_TAX, "2026-12-01", "2027-02-28"),
        ])
        .expect("valid");
        let (oct, nov, tax, dec) = (Some(0), Some(1), Some(2), Some(3));
        let on = |t: &str, c: PiiClass| s.active_at(c, at(t));
        assert_eq!(on("2026-10-15", PiiClass::Address), oct);
        assert_eq!(on("2026-11-01", PiiClass::Address), nov);
        assert_eq!(on("2026-11-30T23:59:59Z", PiiClass::Email), nov);
        assert_eq!(on("2026-12-01", PiiClass::Email), dec);
        assert_eq!(on("2026-11-15", PiiClass::TaxId), tax);
        assert_eq!(on("2030-06-01", PiiClass::TaxId), tax);
        // Before the first key, and after the last one's notAfter: none (never an older key).
        assert_eq!(on("2026-09-30", PiiClass::Name), None);
        assert_eq!(on("2027-03-01", PiiClass::Name), None);
        let keys = s.active_keys(at("2026-11-15"));
        assert_eq!((keys.get(PiiClass::Name), keys.get(PiiClass::TaxId)), (Some(1), Some(2)));
        // States on 2026-11-15: October's key reads its tokens, December's waits.
        let now = at("2026-11-15");
        let states: Vec<KeyState> = (0..4).map(|i| s.state(i, now)).collect();
        assert_eq!(states, [KeyState::Readable, KeyState::Active, KeyState::Active, KeyState::Pending]);
        // notAfter is the last day: still open on its last millisecond, expired after it.
        assert_eq!(s.state(0, parse_instant("2026-12-31", true).expect("day")), KeyState::Readable);
        assert_eq!(s.state(0, at("2027-01-01")), KeyState::Expired);
        // Coverage runs through the chain of keys to the last notAfter.
        assert_eq!(s.active_until(PiiClass::Address, now), parse_instant("2027-02-28", true));
        assert_eq!(s.active_until(PiiClass::TaxId, now), parse_instant("2036-12-31", true));
    }

    #[test]
    fn invalid_rings_are_refused_naming_the_field() {
        let e = |entries: &[(&str, &str, &str, &str)]| ring(entries).expect_err("refused");
        let r = e(&[("k1", ALL, "2026-11-01", "2026-10-31")]);
        assert_eq!(r.field, "keys.ring[0].notAfter");
        assert!(r.message.contains("before activeFrom 2026-11-01"), "{r}");
        let r = e(&[("k1", ALL, "2026-11-01", "2027-01-31"), ("k2", "address,email", "2026-11-01", "2027-02-28")]);
        assert_eq!(r.field, "keys.ring[1].activeFrom");
        assert!(r.message.contains("keys.ring[0] (k1) for email, address"), "{r}");
        assert_eq!(e(&[("k1", "name,shoe", "2026-11-01", "2027-01-31")]).field, "keys.ring[0].classes[1]");
        assert_eq!(e(&[("k1", "name,name", "2026-11-01", "2027-01-31")]).field, "keys.ring[0].classes[1]");
        assert_eq!(e(&[("k1", ALL, "2026-11-31", "2027-01-31")]).field, "keys.ring[0].activeFrom");
        assert_eq!(e(&[("k1", ALL, "2026-11-01", "31/01/2027")]).field, "keys.ring[0].notAfter");
        assert_eq!(e(&[("k1", ALL, "2026-11-01", "2027-01-31"), ("k1", ALL, "2026-12-01", "2027-01-31")]).field, "keys.ring[1].id");
        let created = Schedule::from_doc(&doc(r#"{"ring":[{"id":"k1","env":"K1","classes":["name"],"created":"2026-12-01","activeFrom":"2026-11-01","notAfter":"2027-01-31"}]}"#));
        assert_eq!(created.expect_err("refused").field, "keys.ring[0].created");
        let shared_var = Schedule::from_doc(&doc(r#"{"ring":[{"id":"a","env":"K1","classes":["name"],"created":"2026-11-01","activeFrom":"2026-11-01","notAfter":"2027-01-31"},
                        {"id":"b","env":"K1","classes":["email"],"created":"2026-11-01","activeFrom":"2026-11-01","notAfter":"2027-01-31"}]}"#));
        assert_eq!(shared_var.expect_err("refused").field, "keys.ring[1].env");
        let both = Schedule::from_doc(&doc(r#"{"ring":[],"active":"k1","env":{"k1":"K1"}}"#)).expect_err("refused");
        assert_eq!(both.field, "keys");
        assert_eq!(Schedule::from_doc(&doc(r#"{"ring":[]}"#)).expect_err("refused").field, "keys.ring");
        assert_eq!(Schedule::from_doc(&doc(r#"{}"#)).expect_err("refused").field, "keys");
        let missing = serde_path_to_error::deserialize::<_, KeysDoc>(&mut serde_json::Deserializer::from_str(
            r#"{"ring":[{"id":"k1","env":"K1","classes":["name"],"created":"2026-11-01","activeFrom":"2026-11-01"}]}"#,
        ));
        let missing = missing.expect_err("refused");
        assert!(missing.to_string().contains("missing field `notAfter`"), "{missing}");
        // Inline material in `env` is refused without being echoed.
        let inline = Schedule::from_doc(&doc(&format!(
            r#"{{"ring":[{{"id":"k1","env":"{B64}","classes":["name"],"created":"2026-11-01","activeFrom":"2026-11-01","notAfter":"2027-01-31"}}]}}"#
        )));
        let inline = inline.expect_err("refused");
        assert_eq!(inline.field, "keys.ring[0].env");
        assert!(!inline.to_string().contains(B64));
    }

    #[test]
    fn rings_that_leave_a_class_without_a_key_are_refused_at_load_time() {
        let now = at("2026-11-15");
        // Tax ids have no key at all.
        let r = ring(&[("k1", NOT_TAX, "2026-11-01", "2027-01-31")]).expect("structurally valid").check_at(now).expect_err("refused");
        assert_eq!(r.field, "keys.ring");
        assert!(r.message.contains("no key is active for tax_id on 2026-11-15"), "{r}");
        // The only key of a class starts later.
        let r = ring(&[("k1", NOT_TAX, "2026-11-01", "2027-01-31"), ("t1", "tax_id", "2026-12-01", "2030-01-31")]).expect("valid").check_at(now).expect_err("refused");
        assert!(r.message.contains("the first, keys.ring[1] (t1), becomes active on 2026-12-01"), "{r}");
        // A gap ahead: the next key starts after the current one's notAfter.
        let r = ring(&[("k1", ALL, "2026-11-01", "2026-11-30"), ("k2", ALL, "2026-12-05", "2027-01-31")]).expect("valid").check_at(now).expect_err("refused");
        assert_eq!(r.field, "keys.ring[1].activeFrom");
        assert!(r.message.contains("no active key from 2026-12-01 until 2026-12-05 (k2) starts"), "{r}");
        // A gap in the past is history: no refusal.
        let ok = ring(&[("k0", ALL, "2026-09-01", "2026-09-30"), ("k1", ALL, "2026-10-05", "2027-12-31")]).expect("valid");
        let warnings = ok.check_at(now).expect("loads");
        assert!(warnings.iter().any(|w| w.starts_with("keys.ring[0].notAfter: key k0 expired on 2026-09-30") && w.contains("keys shred k0")), "{warnings:?}");
    }

    #[test]
    fn keys_ending_soon_warn() {
        let s = ring(&[("k1", NOT_TAX, "2026-11-01", "2026-12-10"), ("t1", "tax_id", "2026-01-01", "2036-12-31")]).expect("valid");
        let w = s.check_at(at("2026-11-29")).expect("loads");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("keys.ring: no key is active for name, email, phone, address, gift_message, company, other after 2026-12-10 (in 11 days)"), "{w:?}");
        let s = ring(&[("k1", ALL, "2026-11-01", "2027-06-30")]).expect("valid");
        assert_eq!(s.check_at(at("2026-11-29")), Ok(vec![]));
    }

    #[test]
    fn the_same_material_under_two_ids_is_refused() {
        let d = doc(r#"{"active":"k1","env":{"k1":"K1","k2":"K2"}}"#);
        let e = load(&d, &|name: &str| Some(if name == "K1" { HEX } else { B64 }.to_string())).expect_err("refused");
        assert_eq!(e.field, "keys.env.k2");
        assert!(e.message.contains("holds the same key as K1 (k1)"), "{e}");
        assert!(load(&d, &|name: &str| Some(if name == "K1" { HEX } else { HEX2 }.to_string())).is_ok());
    }

    #[test]
    fn dates_parse_and_display() {
        assert_eq!(parse_instant("1970-01-01", false), Some(0));
        assert_eq!(parse_instant("1970-01-01", true), Some(DAY_MS - 1));
        assert_eq!(parse_instant("2026-11-29T12:34:56Z", false), Some(1_795_955_696_000));
        assert_eq!(crate::audit::rfc3339_ms(at("2024-02-29")), "2024-02-29T00:00:00.000Z");
        for bad in ["2026-02-29", "2026-13-01", "2026-1-01", "2026-11-29T24:00:00Z", "2026-11-29 12:00:00Z", "2026-11-29T12:00:00", "1969-12-31", "+2026-11-29"] {
            assert_eq!(parse_instant(bad, false), None, "{bad}");
        }
        assert_eq!(display_instant(at("2026-11-29")), "2026-11-29");
        assert_eq!(display_instant(parse_instant("2026-11-29", true).expect("day")), "2026-11-29");
        assert_eq!(display_instant(at("2026-11-29T12:34:56Z")), "2026-11-29T12:34:56Z");
    }
}
