//! Per-caller lockout state, shared by all Envoy worker threads (the filter stores it in
//! proxy-wasm shared data and updates it with compare-and-swap; this module is the pure logic).
//!
//! Two triggers lock a caller for the cooldown:
//! * denied requests: more than `max_denials` within a sliding window (exact: the timestamps of
//!   the last `max_denials` denials are kept, so memory per caller is bounded);
//! * PII volume: more PII values delivered than the role's limit within a fixed window.
//!
//! Only callers listed in the policy get state, so the shared memory is bounded by the policy.

/// Lockout thresholds from the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockoutRules {
    pub max_denials: u32,
    pub window_ms: u64,
    pub cooldown_ms: u64,
}

/// What happened on an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Trigger {
    #[default]
    None,
    Denials,
    PiiVolume,
}

impl Trigger {
    /// The metric label and event reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::None => "none",
            Trigger::Denials => "denials",
            Trigger::PiiVolume => "pii_volume",
        }
    }
}

/// One caller's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockState {
    pub locked_until_ms: u64,
    /// Times of recent denials, oldest first (at most `max_denials`).
    pub denials: Vec<u64>,
    pub pii_window_start_ms: u64,
    pub pii_count: u64,
}

const FORMAT: u8 = 1;

impl LockState {
    /// Decodes stored state; anything unreadable counts as fresh state.
    pub fn decode(bytes: &[u8]) -> LockState {
        Self::try_decode(bytes).unwrap_or_default()
    }

    fn try_decode(bytes: &[u8]) -> Option<LockState> {
        let (&format, rest) = bytes.split_first()?;
        if format != FORMAT {
            return None;
        }
        let mut words = rest.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        let locked_until_ms = words.next()?;
        let pii_window_start_ms = words.next()?;
        let pii_count = words.next()?;
        let n = words.next()? as usize;
        let denials: Vec<u64> = words.by_ref().take(n).collect();
        (denials.len() == n).then_some(LockState { locked_until_ms, denials, pii_window_start_ms, pii_count })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 * (4 + self.denials.len()));
        out.push(FORMAT);
        for w in [self.locked_until_ms, self.pii_window_start_ms, self.pii_count, self.denials.len() as u64] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for d in &self.denials {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out
    }

    /// Whether the caller is locked at `now`.
    pub fn is_locked(&self, now_ms: u64) -> bool {
        now_ms < self.locked_until_ms
    }

    /// Milliseconds until the lock lifts.
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.locked_until_ms.saturating_sub(now_ms)
    }

    /// Clears a lock whose cooldown has passed; returns true if it did (the lockout just ended).
    pub fn end_expired(&mut self, now_ms: u64) -> bool {
        if self.locked_until_ms != 0 && now_ms >= self.locked_until_ms {
            self.locked_until_ms = 0;
            return true;
        }
        false
    }

    /// Records a denied request; locks when it is the `max_denials`-th within the window.
    pub fn record_denial(&mut self, now_ms: u64, rules: &LockoutRules) -> Trigger {
        if rules.max_denials == 0 {
            return Trigger::None;
        }
        let since = now_ms.saturating_sub(rules.window_ms);
        self.denials.retain(|&t| t > since);
        self.denials.push(now_ms);
        if self.denials.len() as u32 >= rules.max_denials {
            self.denials.clear();
            self.locked_until_ms = now_ms + rules.cooldown_ms;
            return Trigger::Denials;
        }
        Trigger::None
    }

    /// Records PII values delivered; locks when the window's total goes over `limit`.
    pub fn record_pii(&mut self, now_ms: u64, delivered: u64, limit: Option<u64>, rules: &LockoutRules) -> Trigger {
        let Some(limit) = limit else { return Trigger::None };
        if now_ms >= self.pii_window_start_ms + rules.window_ms {
            self.pii_window_start_ms = now_ms;
            self.pii_count = 0;
        }
        self.pii_count = self.pii_count.saturating_add(delivered);
        if self.pii_count > limit {
            self.pii_count = 0;
            self.pii_window_start_ms = now_ms;
            self.locked_until_ms = now_ms + rules.cooldown_ms;
            return Trigger::PiiVolume;
        }
        Trigger::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: LockoutRules = LockoutRules { max_denials: 3, window_ms: 1000, cooldown_ms: 5000 };

    #[test]
    fn locks_on_the_nth_denial_in_the_window_and_unlocks_after_cooldown() {
        let mut s = LockState::default();
        assert_eq!(s.record_denial(100, &RULES), Trigger::None);
        assert_eq!(s.record_denial(200, &RULES), Trigger::None);
        assert!(!s.is_locked(250));
        assert_eq!(s.record_denial(300, &RULES), Trigger::Denials);
        assert!(s.is_locked(301) && s.is_locked(5299));
        assert!(!s.is_locked(5300));
        assert!(!s.end_expired(5299));
        assert!(s.end_expired(5300));
        assert!(!s.end_expired(5301), "ends once");
    }

    #[test]
    fn old_denials_slide_out() {
        let mut s = LockState::default();
        s.record_denial(0, &RULES);
        s.record_denial(500, &RULES);
        assert_eq!(s.record_denial(1200, &RULES), Trigger::None, "the first denial is out of the window");
        assert_eq!(s.record_denial(1300, &RULES), Trigger::Denials);
    }

    #[test]
    fn pii_volume_over_limit_locks() {
        let mut s = LockState::default();
        assert_eq!(s.record_pii(0, 60, Some(100), &RULES), Trigger::None);
        assert_eq!(s.record_pii(10, 40, Some(100), &RULES), Trigger::None);
        assert_eq!(s.record_pii(20, 1, Some(100), &RULES), Trigger::PiiVolume);
        let mut t = LockState::default();
        t.record_pii(0, 90, Some(100), &RULES);
        assert_eq!(t.record_pii(1000, 90, Some(100), &RULES), Trigger::None, "a new window starts");
        assert_eq!(t.record_pii(0, 1_000_000, None, &RULES), Trigger::None);
    }

    #[test]
    fn encodes_and_survives_garbage() {
        let mut s = LockState::default();
        s.record_denial(7, &RULES);
        s.record_pii(9, 5, Some(100), &RULES);
        assert_eq!(LockState::decode(&s.encode()), s);
        assert_eq!(LockState::decode(b""), LockState::default());
        assert_eq!(LockState::decode(&[1, 2, 3]), LockState::default());
        let mut truncated = s.encode();
        truncated.pop();
        assert_eq!(LockState::decode(&truncated), LockState::default());
    }
}
