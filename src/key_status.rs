//! The key ring as operators see it, over the [`Host`] trait: a gauge per key and state, the
//! instant each class's active keys run out, security events when a key becomes active or
//! expires, tokens counted per key (randomized nonces are bounded per key, docs/TOKENS.md), and
//! refused tokens. Metrics and events carry key ids and class names, never material.
use crate::audit::SecurityEvent;
use crate::exchange::{security, Host, Level};
use crate::guard::{FieldCounts, Guard};
use crate::keyring::{display_instant, ActiveKeys, KeyState};
use crate::pii::PiiClass;
use crate::policy::{Action, ClassActions};
use crate::tokens::{Mode, TokenError};

/// `spapi_guard_key_info{key_id,state}`: 1 for the key's state, 0 for the others.
pub const KEY_INFO: &str = "spapi_guard_key_info";
/// `spapi_guard_key_active_until_seconds{class}`: when the class's run of active keys ends.
pub const ACTIVE_UNTIL: &str = "spapi_guard_key_active_until_seconds";
/// `spapi_guard_key_tokens_total{key_id,mode}`: tokens made per key and mode.
pub const KEY_TOKENS: &str = "spapi_guard_key_tokens_total";
/// `spapi_guard_token_refusals_total{reason}`: tokens refused when opened.
pub const TOKEN_REFUSALS: &str = "spapi_guard_token_refusals_total";
/// 9999-12-31T23:59:59Z: the end of keys without dates (the short form), as a gauge can say it.
const NO_END_SECONDS: u64 = 253_402_300_799;

/// Watches the ring of one VM's configuration: reports it when loaded, and every change of a
/// key's state (checked on the VM's timer) as it happens.
pub struct KeyWatch {
    states: Vec<KeyState>,
    active: ActiveKeys,
}

impl KeyWatch {
    /// Reports the ring as loaded: every gauge, and an event for each key already expired.
    pub fn start(host: &dyn Host, guard: &Guard) -> KeyWatch {
        let now = host.now_ms();
        let watch = KeyWatch { states: states(guard, now), active: guard.tokens.active_keys(now) };
        for (index, state) in watch.states.iter().enumerate() {
            set_info(host, guard, index, *state);
            if *state == KeyState::Expired {
                key_event(host, guard, index, "key_expired", "high", now);
            }
        }
        set_active_until(host, guard, now);
        watch
    }

    /// Reports what changed since the last check: a key that became active or expired, a class
    /// left without an active key.
    pub fn tick(&mut self, host: &dyn Host, guard: &Guard) {
        let now = host.now_ms();
        let states = states(guard, now);
        let active = guard.tokens.active_keys(now);
        if states == self.states && active == self.active {
            return;
        }
        for (index, (&before, &after)) in self.states.iter().zip(&states).enumerate() {
            if before == after {
                continue;
            }
            set_info(host, guard, index, after);
            host.log(Level::Info, &format!("spapi-guard: key {} is now {} (was {})", guard.tokens.key_id(index), after.as_str(), before.as_str()));
            match after {
                KeyState::Active => key_event(host, guard, index, "key_activated", "info", now),
                KeyState::Expired => key_event(host, guard, index, "key_expired", "high", now),
                KeyState::Pending | KeyState::Readable => {}
            }
        }
        for class in PiiClass::ALL {
            if self.active.get(class).is_some() && active.get(class).is_none() {
                host.log(Level::Error, &format!("spapi-guard: no key is active for {class}: its responses fail closed (no_active_key) until a key is added"));
                let mut event = SecurityEvent::new("no_active_key", "critical", now);
                event.detail = Some(class.as_str());
                security(host, &event);
            }
        }
        set_active_until(host, guard, now);
        self.states = states;
        self.active = active;
    }
}

fn states(guard: &Guard, now: u64) -> Vec<KeyState> {
    let schedule = guard.tokens.schedule();
    (0..schedule.keys().len()).map(|i| schedule.state(i, now)).collect()
}

fn set_info(host: &dyn Host, guard: &Guard, index: usize, current: KeyState) {
    let id = guard.tokens.key_id(index);
    for state in KeyState::ALL {
        host.gauge(KEY_INFO, &[("key_id", id), ("state", state.as_str())], u64::from(state == current));
    }
}

fn set_active_until(host: &dyn Host, guard: &Guard, now: u64) {
    for class in PiiClass::ALL {
        let seconds = match guard.tokens.schedule().active_until(class, now) {
            None => 0,
            Some(u64::MAX) => NO_END_SECONDS,
            Some(ms) => ms / 1000 + 1,
        };
        host.gauge(ACTIVE_UNTIL, &[("class", class.as_str())], seconds);
    }
}

fn key_event(host: &dyn Host, guard: &Guard, index: usize, kind: &'static str, severity: &'static str, now: u64) {
    let mut event = SecurityEvent::new(kind, severity, now);
    event.detail = Some(guard.tokens.key_id(index));
    if kind == "key_expired" {
        event.reason = Some("not_after_passed");
    }
    security(host, &event);
}

/// Counts the tokens of one response per key and mode (`spapi_guard_key_tokens_total`).
pub fn count_tokens(host: &dyn Host, guard: &Guard, keys: &ActiveKeys, actions: &ClassActions, counts: &FieldCounts) {
    let mut per_key: Vec<(usize, Mode, u64)> = Vec::new();
    for class in PiiClass::ALL {
        let (Action::Tokenize(mode), Some(index)) = (actions[class], keys.get(class)) else { continue };
        let n = u64::from(counts.get(class, Action::Tokenize(mode)));
        if n == 0 {
            continue;
        }
        match per_key.iter_mut().find(|(i, m, _)| *i == index && *m == mode) {
            Some(entry) => entry.2 += n,
            None => per_key.push((index, mode, n)),
        }
    }
    for (index, mode, n) in per_key {
        host.count(KEY_TOKENS, &[("key_id", guard.tokens.key_id(index)), ("mode", mode.as_str())], n);
    }
}

/// Reports a token the filter refused to open (request-side detokenization, the reveal endpoint):
/// the metric (`token_expired`, or `invalid_token` for the rest: forged, malformed, unknown key),
/// and for a token of an expired key the `token_expired` security event.
pub fn token_refused(host: &dyn Host, error: &TokenError, request_id: Option<&str>) {
    let reason = if matches!(error, TokenError::Expired { .. }) { "token_expired" } else { "invalid_token" };
    host.count(TOKEN_REFUSALS, &[("reason", reason)], 1);
    if let TokenError::Expired { key_id, .. } = error {
        let mut event = SecurityEvent::new("token_expired", "warning", host.now_ms());
        event.request_id = request_id;
        event.detail = Some(key_id);
        security(host, &event);
    }
}

/// The refusal of a token of the ring key at `index`, past its `notAfter`.
pub fn expired(guard: &Guard, index: usize) -> TokenError {
    let key = guard.tokens.schedule().keys().get(index);
    TokenError::Expired { key_id: guard.tokens.key_id(index).to_string(), not_after: key.and_then(|k| k.dates.as_ref()).map_or_else(String::new, |d| d.not_after.clone()) }
}

/// The active keys at `now` in words, for the log: `k-nov for name, email…; tax-2026 for tax_id`.
pub fn summary(guard: &Guard, now: u64) -> String {
    let keys = guard.tokens.active_keys(now);
    let mut parts: Vec<(usize, Vec<&str>)> = Vec::new();
    for class in PiiClass::ALL {
        let Some(index) = keys.get(class) else { continue };
        match parts.iter_mut().find(|(i, _)| *i == index) {
            Some((_, classes)) => classes.push(class.as_str()),
            None => parts.push((index, vec![class.as_str()])),
        }
    }
    let text: Vec<String> = parts
        .iter()
        .map(|(index, classes)| {
            let key = &guard.tokens.schedule().keys()[*index];
            let until = if key.not_after_ms == u64::MAX { String::new() } else { format!(", tokens open until {}", display_instant(key.not_after_ms)) };
            let classes = if classes.len() == PiiClass::ALL.len() { "every class".to_string() } else { classes.join(", ") };
            format!("{} for {classes}{until}", guard.tokens.key_id(*index))
        })
        .collect();
    text.join("; ")
}

/// The ids of the keys active at `now`, comma-separated (the `config_loaded` event's detail).
pub fn active_ids(guard: &Guard, now: u64) -> String {
    let keys = guard.tokens.active_keys(now);
    let mut ids: Vec<&str> = Vec::new();
    for class in PiiClass::ALL {
        if let Some(id) = keys.get(class).map(|i| guard.tokens.key_id(i)) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::parse_instant;
    use crate::metrics::stat_name;
    use crate::testing::MockHost;

    const KEY_A: &str = "8f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const KEY_B: &str = "0f4c1a2b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    fn guard(now: u64) -> Guard {
        let policy = r#"{"version":1,"keys":{"ring":[
            {"id":"k1","env":"K_A","classes":["name","email","phone","address","tax_id","gift_message","company","other"],"created":"2026-10-01","activeFrom":"2026-10-01","notAfter":"2026-12-31T00:00:10Z"},
            {"id":"k2","env":"K_B","classes":["name","email","phone","address","tax_id","gift_message","company","other"],"created":"2026-11-01","activeFrom":"2026-12-01","notAfter":"2027-03-31"}]}}"#;
        Guard::load_at(policy.as_bytes(), &|n| Some(if n == "K_A" { KEY_A } else { KEY_B }.to_string()), now).expect("loads")
    }

    fn info(host: &MockHost, id: &str, state: &str) -> u64 {
        host.gauge_value(&stat_name(KEY_INFO, &[("key_id", id), ("state", state)]))
    }

    #[test]
    fn gauges_and_events_follow_each_key_through_its_life() {
        let host = MockHost::default();
        let nov = parse_instant("2026-11-15", false).expect("date");
        host.now.set(nov);
        let g = guard(nov);
        let mut watch = KeyWatch::start(&host, &g);
        assert_eq!((info(&host, "k1", "active"), info(&host, "k1", "readable"), info(&host, "k2", "pending")), (1, 0, 1));
        assert_eq!(host.gauge_value(&stat_name(ACTIVE_UNTIL, &[("class", "tax_id")])), parse_instant("2027-03-31", true).expect("date") / 1000 + 1);
        assert!(host.security_events().is_empty());
        // December: k2 takes over, k1 stays readable.
        host.now.set(parse_instant("2026-12-01", false).expect("date"));
        watch.tick(&host, &g);
        assert_eq!((info(&host, "k1", "active"), info(&host, "k1", "readable"), info(&host, "k2", "active"), info(&host, "k2", "pending")), (0, 1, 1, 0));
        // Past k1's notAfter: expired, with an event.
        host.now.set(parse_instant("2026-12-31T00:00:11Z", false).expect("date"));
        watch.tick(&host, &g);
        assert_eq!((info(&host, "k1", "expired"), info(&host, "k1", "readable")), (1, 0));
        let events = host.security_events();
        let kinds: Vec<(&str, &str)> = events.iter().map(|e| (e["event"].as_str().unwrap_or(""), e["detail"].as_str().unwrap_or(""))).collect();
        assert_eq!(kinds, [("key_activated", "k2"), ("key_expired", "k1")]);
        // After k2's notAfter no key is left: a critical event per class.
        host.now.set(parse_instant("2027-04-01", false).expect("date"));
        watch.tick(&host, &g);
        assert_eq!(host.security_events().iter().filter(|e| e["event"] == "no_active_key" && e["severity"] == "critical").count(), 8);
        assert_eq!(host.gauge_value(&stat_name(ACTIVE_UNTIL, &[("class", "name")])), 0);
        // Nothing changes, nothing is reported again.
        let before = host.logs.borrow().len();
        watch.tick(&host, &g);
        assert_eq!(host.logs.borrow().len(), before);
    }

    #[test]
    fn a_ring_loaded_with_an_expired_key_reports_it_at_once() {
        let host = MockHost::default();
        let jan = parse_instant("2027-01-05", false).expect("date");
        host.now.set(jan);
        let g = guard(jan);
        assert!(g.warnings.iter().any(|w| w.starts_with("keys.ring[0].notAfter: key k1 expired on 2026-12-31T00:00:10Z")), "{:?}", g.warnings);
        KeyWatch::start(&host, &g);
        assert_eq!(info(&host, "k1", "expired"), 1);
        let events = host.security_events();
        assert_eq!(events[0]["event"], "key_expired");
        assert_eq!(events[0]["detail"], "k1");
        assert_eq!(summary(&g, jan), "k2 for every class, tokens open until 2027-03-31");
    }

    #[test]
    fn refused_tokens_are_counted_and_expired_ones_raise_an_event() {
        let host = MockHost::default();
        let nov = parse_instant("2026-11-15", false).expect("date");
        let g = guard(nov);
        let token = g.tokens.seal(nov, PiiClass::Email, Mode::Deterministic, crate::tokens::ValueKind::Text, b"jane@example.com").expect("sealed");
        let later = parse_instant("2027-01-02", false).expect("date");
        host.now.set(later);
        let refused = g.tokens.open(&token, host.now_ms()).expect_err("k1 expired");
        token_refused(&host, &refused, Some("req-1"));
        token_refused(&host, &TokenError::Forged, None);
        assert_eq!(host.counter(&stat_name(TOKEN_REFUSALS, &[("reason", "token_expired")])), 1);
        assert_eq!(host.counter(&stat_name(TOKEN_REFUSALS, &[("reason", "invalid_token")])), 1);
        let events = host.security_events();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0]["event"].as_str(), events[0]["detail"].as_str(), events[0]["request_id"].as_str()), (Some("token_expired"), Some("k1"), Some("req-1")));
        assert!(!host.log_text().contains("jane"));
    }
}
