//! Token engine: turns a PII value into a self-describing, versioned AES-256-GCM token and back.
//!
//! Token format (all characters URL- and JSON-safe, nothing to escape):
//!
//! ```text
//! spgt1.<mode><kind>.<key id>.<class>.<base64url(nonce ‖ ciphertext ‖ tag)>
//! ```
//!
//! * `spgt1` — magic and format version; no real SP-API value starts like this.
//! * `mode` — `d` deterministic, `r` randomized. `kind` — `s` the plaintext is a JSON string's
//!   decoded text, `j` it is the raw text of another JSON value (a number, an object…).
//! * everything before the last dot (the *header*) is the AEAD's associated data, so a token cannot
//!   be replayed under another class, key id, mode or kind: any change fails authentication.
//!
//! Keys: each 256-bit master key of the ring is expanded with HKDF-SHA256 into independent
//! sub-keys, one per job (encryption, deterministic nonce, keyed hash). Key schedules are computed
//! once, when the configuration loads.
//!
//! Nonces:
//! * deterministic — a synthetic IV: `HMAC-SHA256(k_siv, header ‖ 0x00 ‖ plaintext)[..12]`, the
//!   synthetic-IV idea of SIV (RFC 5297: the IV is a PRF of the associated data and the plaintext)
//!   with HMAC-SHA256 as the PRF and AES-256-GCM as the cipher, under independent sub-keys. Equal
//!   plaintexts under the same header give equal tokens (and only that is revealed); distinct
//!   plaintexts share a nonce only with probability ≈ n²/2⁹⁷ for n distinct values.
//! * randomized — each VM draws a random 96-bit starting point from getrandom once and counts up
//!   from it (one getrandom call per VM, not per field). Two VMs' sequences overlap with
//!   probability ≤ n·T/2⁹⁶ for n VMs and T tokens per key; keep T below 2³² per key (rotate keys
//!   well before that) and the risk stays below 2⁻⁴⁰ for a million VM starts.
//!
//! Time: the ring's keys have a life ([`crate::keyring::Schedule`]). A token is made with the key
//! active for its class at the instant the caller passes in ([`TokenEngine::active_keys`]), and
//! opens only until its key's `notAfter` ([`TokenEngine::open`] takes the instant too). The engine
//! never reads a clock.
use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use crate::keyring::{ActiveKeys, KeyMeta, Schedule};
use crate::pii::PiiClass;

/// Magic prefix of a token; also the format version.
pub const TOKEN_PREFIX: &str = "spgt1.";
/// Magic prefix of a keyed hash pseudonym (irreversible).
/// Version 2 binds the value's kind: `"123"` and `123` are different values and hash apart.
pub const HASH_PREFIX: &str = "spgh2.";
/// Bytes of a master key.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes of a keyed-hash pseudonym before encoding (128 bits).
const HASH_LEN: usize = 16;
const HKDF_SALT: &[u8] = b"spapi-guard/v1";
/// Bytes of a key fingerprint (128 bits).
const FINGERPRINT_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// Deterministic or randomized tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Deterministic,
    Randomized,
}

impl Mode {
    /// The policy's name of the mode (metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Deterministic => "deterministic",
            Mode::Randomized => "randomized",
        }
    }

    fn flag(self) -> char {
        match self {
            Mode::Deterministic => 'd',
            Mode::Randomized => 'r',
        }
    }
}

/// What the plaintext of a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// The decoded text of a JSON string.
    Text,
    /// The raw JSON text of a non-string value (number, object, array).
    RawJson,
}

impl ValueKind {
    fn flag(self) -> char {
        match self {
            ValueKind::Text => 's',
            ValueKind::RawJson => 'j',
        }
    }
}

/// Why a token could not be opened. Carries no part of the token or plaintext.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not of the `spgt1.` form.
    Malformed,
    /// The key id is not in the ring (never was, or was deleted: crypto-shredded).
    UnknownKey,
    /// Authentication failed: the token was altered or presented as another class.
    Forged,
    /// Its key is past its `notAfter`: refused, even though the material is still present.
    Expired {
        key_id: String,
        /// The key's `notAfter` as the policy writes it.
        not_after: String,
    },
}

impl TokenError {
    /// Stable reason code (events, metrics, error bodies).
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed_token",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Forged => "forged_token",
            TokenError::Expired { .. } => "token_expired",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed => f.write_str("malformed token"),
            TokenError::UnknownKey => f.write_str("token names a key id that is not in the key ring"),
            TokenError::Forged => f.write_str("token failed authentication"),
            TokenError::Expired { key_id, not_after } => write!(f, "token_expired: key {key_id} expired after {not_after} (its notAfter): its tokens are no longer opened"),
        }
    }
}

/// An opened token.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    pub class: PiiClass,
    pub mode: Mode,
    pub kind: ValueKind,
    pub key_id: String,
    pub plaintext: Vec<u8>,
}

/// One master key, expanded into its sub-keys.
struct KeySchedule {
    aead: Aes256Gcm,
    siv: HmacSha256,
    hash: HmacSha256,
    /// Seals the proxy's own document references (src/documents.rs): a sub-key of its own
    /// purpose, so a reference never opens as a token nor a token as a reference.
    reference: Aes256Gcm,
}

impl KeySchedule {
    fn new(master: &[u8; KEY_LEN]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), master);
        let mut enc = [0u8; KEY_LEN];
        let mut siv = [0u8; KEY_LEN];
        let mut hash = [0u8; KEY_LEN];
        let mut reference = [0u8; KEY_LEN];
        // HKDF-Expand cannot fail for 32-byte outputs (limit is 255 × 32 bytes).
        let _ = hk.expand(b"aes-256-gcm", &mut enc);
        let _ = hk.expand(b"siv-nonce", &mut siv);
        let _ = hk.expand(b"keyed-hash", &mut hash);
        let _ = hk.expand(b"document-reference", &mut reference);
        // HMAC takes keys of any length: `new_from_slice` cannot fail here.
        #[allow(clippy::unreachable)]
        let schedule = KeySchedule {
            aead: Aes256Gcm::new((&enc).into()),
            siv: <HmacSha256 as Mac>::new_from_slice(&siv).unwrap_or_else(|_| unreachable!()),
            hash: <HmacSha256 as Mac>::new_from_slice(&hash).unwrap_or_else(|_| unreachable!()),
            reference: Aes256Gcm::new((&reference).into()),
        };
        reference.fill(0);
        enc.fill(0);
        siv.fill(0);
        hash.fill(0);
        schedule
    }
}

/// The counter-based nonce source of randomized mode (see the module comment).
struct NonceCounter {
    next: Cell<u128>,
}

impl NonceCounter {
    fn new() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 16];
        getrandom::fill(&mut seed)?;
        Ok(NonceCounter { next: Cell::new(u128::from_le_bytes(seed) & NONCE_MASK) })
    }

    fn take(&self) -> [u8; NONCE_LEN] {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1) & NONCE_MASK);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&n.to_le_bytes()[..NONCE_LEN]);
        nonce
    }
}

const NONCE_MASK: u128 = (1u128 << 96) - 1;

/// A key ring: the keys' sub-keys by ring index, and the schedule that says which key is active
/// for which class when, and until when each key's tokens open.
pub struct TokenEngine {
    keys: Vec<KeySchedule>,
    schedule: Schedule,
    fingerprints: Vec<String>,
    nonces: NonceCounter,
    recent: RecentTokens,
}

/// Deterministic tokens made recently by this VM, keyed by their synthetic IV's full HMAC output
/// (a keyed PRF of header and plaintext: no plaintext is kept). Sellers poll the same recent orders
/// again and again; a value seen before skips AES-GCM. Bounded: cleared when full.
struct RecentTokens {
    map: std::cell::RefCell<std::collections::HashMap<[u8; 32], Box<str>>>,
    capacity: usize,
}

/// Default number of remembered deterministic tokens per VM (~1 MiB).
pub const RECENT_TOKENS: usize = 8192;

/// The fingerprint of a key: `HKDF-SHA256(salt, key, info = "key-fingerprint")`, 128 bits, in hex.
/// It names the material (to match a key in a secret store, or in a deletion record, to the one the
/// ring lists) without revealing it or anything derived from it for tokens.
pub fn fingerprint(material: &[u8; KEY_LEN]) -> String {
    let mut out = [0u8; FINGERPRINT_LEN];
    let _ = Hkdf::<Sha256>::new(Some(HKDF_SALT), material).expand(b"key-fingerprint", &mut out);
    out.iter().map(|b| format!("{b:02x}")).collect()
}

impl TokenEngine {
    /// A ring of undated keys (the policy's short form): `active` makes every class's tokens,
    /// every key opens its tokens forever.
    pub fn new(keys: BTreeMap<String, [u8; KEY_LEN]>, active: &str) -> Result<Self, String> {
        let schedule = Schedule::short_form(keys.keys().map(String::as_str), active).map_err(|e| e.message)?;
        TokenEngine::from_ring(schedule, keys.into_values().collect())
    }

    /// The engine of a ring: `materials` by ring index.
    pub fn from_ring(schedule: Schedule, materials: Vec<[u8; KEY_LEN]>) -> Result<Self, String> {
        if schedule.keys().len() != materials.len() {
            return Err("the key ring and its material differ in length".to_string());
        }
        let keys = materials.iter().map(KeySchedule::new).collect();
        let fingerprints = materials.iter().map(fingerprint).collect();
        let nonces = NonceCounter::new().map_err(|_| "the random source (getrandom) failed".to_string())?;
        let recent = RecentTokens { map: Default::default(), capacity: RECENT_TOKENS };
        Ok(TokenEngine { keys, schedule, fingerprints, nonces, recent })
    }

    /// Sets how many deterministic tokens the engine remembers (0: none, every token computed).
    pub fn with_recent_tokens(mut self, capacity: usize) -> Self {
        self.recent.capacity = capacity;
        self
    }

    /// The ring's lifecycle: keys, classes, dates.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The keys that make each class's new tokens at `now_ms` (milliseconds since the Unix epoch).
    pub fn active_keys(&self, now_ms: u64) -> ActiveKeys {
        self.schedule.active_keys(now_ms)
    }

    /// The id of the key at ring index `index`.
    pub fn key_id(&self, index: usize) -> &str {
        self.schedule.keys().get(index).map_or("", |k| k.id.as_str())
    }

    /// The fingerprint ([`fingerprint`]) of the key at ring index `index`.
    pub fn fingerprint(&self, index: usize) -> &str {
        self.fingerprints.get(index).map_or("", String::as_str)
    }

    /// Writes the token for `plaintext` to `out` (appending, no quotes), made with the key `keys`
    /// names for `class`. `scratch` is a reusable buffer (no allocation per token once it has grown).
    /// Writes nothing if no key is active for the class: callers check [`ActiveKeys`] first
    /// (`Guard` refuses such a body before rewriting it).
    // The hot path: every part of the token is an argument, so nothing is allocated or bundled.
    #[allow(clippy::too_many_arguments)]
    pub fn seal_into(&self, keys: &ActiveKeys, class: PiiClass, mode: Mode, kind: ValueKind, plaintext: &[u8], scratch: &mut Vec<u8>, out: &mut String) {
        self.seal_with(keys, class, mode, kind, plaintext, scratch, out, true);
    }

    /// [`Self::seal_into`] for a value that will not come back through this VM's responses (a
    /// report document's, which has a memo of its own): the recent tokens are neither read nor
    /// filled, so a document's millions of one-off values neither pay for them nor push out the
    /// tokens of the orders sellers poll again and again.
    #[allow(clippy::too_many_arguments)]
    pub fn seal_once_into(&self, keys: &ActiveKeys, class: PiiClass, mode: Mode, kind: ValueKind, plaintext: &[u8], scratch: &mut Vec<u8>, out: &mut String) {
        self.seal_with(keys, class, mode, kind, plaintext, scratch, out, false);
    }

    #[allow(clippy::too_many_arguments)]
    fn seal_with(&self, keys: &ActiveKeys, class: PiiClass, mode: Mode, kind: ValueKind, plaintext: &[u8], scratch: &mut Vec<u8>, out: &mut String, remember: bool) {
        let Some((key, schedule)) = self.key_for(keys, class) else { return };
        let header_start = out.len();
        write_header(out, mode, kind, &key.id, class);
        let mut siv = None;
        let nonce = match mode {
            Mode::Randomized => self.nonces.take(),
            Mode::Deterministic => {
                let mut mac = schedule.siv.clone();
                mac.update(&out.as_bytes()[header_start..]);
                mac.update(&[0]);
                mac.update(plaintext);
                let tag: [u8; 32] = mac.finalize().into_bytes().into();
                if remember {
                    if let Some(token) = self.recent.map.borrow().get(&tag) {
                        out.truncate(header_start);
                        out.push_str(token);
                        return;
                    }
                }
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&tag[..NONCE_LEN]);
                siv = Some(tag);
                nonce
            }
        };
        // nonce ‖ ciphertext ‖ tag, encrypted in place.
        scratch.clear();
        scratch.extend_from_slice(&nonce);
        scratch.extend_from_slice(plaintext);
        let aad = &out.as_bytes()[header_start..];
        // AES-GCM encryption only fails for plaintexts over 64 GiB, far above any body limit.
        if let Ok(tag) = schedule.aead.encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut scratch[NONCE_LEN..]) {
            scratch.extend_from_slice(&tag);
        }
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&scratch[..], out);
        if let Some(tag) = siv.filter(|_| remember && self.recent.capacity > 0) {
            let mut recent = self.recent.map.borrow_mut();
            if recent.len() >= self.recent.capacity {
                recent.clear();
            }
            recent.insert(tag, out[header_start..].into());
        }
    }

    fn key_for(&self, keys: &ActiveKeys, class: PiiClass) -> Option<(&KeyMeta, &KeySchedule)> {
        let index = keys.get(class)?;
        Some((self.schedule.keys().get(index)?, self.keys.get(index)?))
    }

    /// The token of `plaintext` made with the key active for `class` at `now_ms`; `None` if no
    /// key is.
    pub fn seal(&self, now_ms: u64, class: PiiClass, mode: Mode, kind: ValueKind, plaintext: &[u8]) -> Option<String> {
        let keys = self.active_keys(now_ms);
        keys.get(class)?;
        let mut out = String::new();
        self.seal_into(&keys, class, mode, kind, plaintext, &mut Vec::new(), &mut out);
        Some(out)
    }

    /// Opens a token made by any key of the ring whose `notAfter` has not passed at `now_ms`.
    pub fn open(&self, token: &str, now_ms: u64) -> Result<Opened, TokenError> {
        let body = token.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
        let (header_rest, data) = body.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = header_rest.split('.');
        let flags = parts.next().ok_or(TokenError::Malformed)?.as_bytes();
        let key_id = parts.next().ok_or(TokenError::Malformed)?;
        let class = parts.next().and_then(PiiClass::parse).ok_or(TokenError::Malformed)?;
        if parts.next().is_some() || flags.len() != 2 {
            return Err(TokenError::Malformed);
        }
        let mode = match flags[0] {
            b'd' => Mode::Deterministic,
            b'r' => Mode::Randomized,
            _ => return Err(TokenError::Malformed),
        };
        let kind = match flags[1] {
            b's' => ValueKind::Text,
            b'j' => ValueKind::RawJson,
            _ => return Err(TokenError::Malformed),
        };
        let raw = URL_SAFE_NO_PAD.decode(data).map_err(|_| TokenError::Malformed)?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(TokenError::Malformed);
        }
        let index = self.schedule.find(key_id).ok_or(TokenError::UnknownKey)?;
        let (meta, schedule) = (&self.schedule.keys()[index], self.keys.get(index).ok_or(TokenError::UnknownKey)?);
        if now_ms > meta.not_after_ms {
            // Retention is over: refused before any decryption, though the material is present.
            let not_after = meta.dates.as_ref().map_or_else(String::new, |d| d.not_after.clone());
            return Err(TokenError::Expired { key_id: key_id.to_string(), not_after });
        }
        let aad = &token.as_bytes()[..token.len() - data.len() - 1];
        let plaintext = schedule.aead.decrypt(Nonce::from_slice(&raw[..NONCE_LEN]), Payload { msg: &raw[NONCE_LEN..], aad }).map_err(|_| TokenError::Forged)?;
        Ok(Opened { class, mode, kind, key_id: key_id.to_string(), plaintext })
    }

    /// Writes the keyed, irreversible pseudonym of `plaintext` to `out`, with the key `keys` names
    /// for `class` (nothing if none):
    /// `spgh2.<key id>.<class>.<base64url(HMAC-SHA256(k_hash, class ‖ 0x00 ‖ kind ‖ 0x00 ‖ plaintext)[..16])>`
    /// with `kind` the token kind flag (`s` a string's text, `j` another JSON value's raw text).
    pub fn hash_into(&self, keys: &ActiveKeys, class: PiiClass, kind: ValueKind, plaintext: &[u8], out: &mut String) {
        let Some((key, schedule)) = self.key_for(keys, class) else { return };
        let mut mac = schedule.hash.clone();
        mac.update(class.as_str().as_bytes());
        mac.update(&[0]);
        let mut flag = [0u8; 4];
        mac.update(kind.flag().encode_utf8(&mut flag).as_bytes());
        mac.update(&[0]);
        mac.update(plaintext);
        let digest = mac.finalize().into_bytes();
        out.push_str(HASH_PREFIX);
        out.push_str(&key.id);
        out.push('.');
        out.push_str(class.as_str());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&digest[..HASH_LEN], out);
    }
}

/// Magic prefix of a sealed document reference (src/documents.rs); also its format version.
pub const REFERENCE_PREFIX: &str = "spgr1.";

/// Why a document reference could not be opened. Carries nothing of the reference.
#[derive(Debug, PartialEq, Eq)]
pub enum ReferenceError {
    /// Not of the `spgr1.` form, or its key is not in the ring.
    Malformed,
    /// Authentication failed: altered, or sealed by another proxy.
    Forged,
}

impl TokenEngine {
    /// Seals `plaintext` as a document reference with the `document-reference` sub-key of the key
    /// active for class `other` at `now_ms`:
    /// `spgr1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`, the part before the last dot bound
    /// as associated data; randomized nonces. `None` if no key is active for `other`.
    pub fn seal_reference(&self, now_ms: u64, plaintext: &[u8]) -> Option<String> {
        let keys = self.active_keys(now_ms);
        let (key, schedule) = self.key_for(&keys, PiiClass::Other)?;
        let mut out = String::with_capacity(REFERENCE_PREFIX.len() + key.id.len() + 1 + (plaintext.len() + NONCE_LEN + TAG_LEN) * 4 / 3 + 4);
        out.push_str(REFERENCE_PREFIX);
        out.push_str(&key.id);
        let nonce = self.nonces.take();
        let mut sealed = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plaintext);
        let tag = schedule.reference.encrypt_in_place_detached(Nonce::from_slice(&nonce), out.as_bytes(), &mut sealed[NONCE_LEN..]).ok()?;
        sealed.extend_from_slice(&tag);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&sealed, &mut out);
        Some(out)
    }

    /// Opens a reference sealed by [`seal_reference`](Self::seal_reference) under any key of the
    /// ring (a reference lives minutes; its own expiry is checked by the caller).
    pub fn open_reference(&self, reference: &str) -> Result<Vec<u8>, ReferenceError> {
        let body = reference.strip_prefix(REFERENCE_PREFIX).ok_or(ReferenceError::Malformed)?;
        let (key_id, data) = body.rsplit_once('.').ok_or(ReferenceError::Malformed)?;
        let index = self.schedule.find(key_id).ok_or(ReferenceError::Malformed)?;
        let schedule = self.keys.get(index).ok_or(ReferenceError::Malformed)?;
        let raw = URL_SAFE_NO_PAD.decode(data).map_err(|_| ReferenceError::Malformed)?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(ReferenceError::Malformed);
        }
        let aad = &reference.as_bytes()[..reference.len() - data.len() - 1];
        schedule.reference.decrypt(Nonce::from_slice(&raw[..NONCE_LEN]), Payload { msg: &raw[NONCE_LEN..], aad }).map_err(|_| ReferenceError::Forged)
    }
}

fn write_header(out: &mut String, mode: Mode, kind: ValueKind, key_id: &str, class: PiiClass) {
    out.push_str(TOKEN_PREFIX);
    out.push(mode.flag());
    out.push(kind.flag());
    out.push('.');
    out.push_str(key_id);
    out.push('.');
    out.push_str(class.as_str());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::{parse_instant, KeyState, KeysDoc};

    /// Any instant: the short-form ring has no dates.
    const NOW: u64 = 1_800_000_000_000;

    fn engine() -> TokenEngine {
        let mut keys = BTreeMap::new();
        keys.insert("k1".to_string(), [7u8; KEY_LEN]);
        keys.insert("k0".to_string(), [9u8; KEY_LEN]);
        TokenEngine::new(keys, "k1").expect("engine")
    }

    fn seal(e: &TokenEngine, class: PiiClass, mode: Mode, kind: ValueKind, plaintext: &[u8]) -> String {
        e.seal(NOW, class, mode, kind, plaintext).expect("a key is active")
    }

    #[test]
    fn round_trip_both_modes_and_kinds() {
        let e = engine();
        for mode in [Mode::Deterministic, Mode::Randomized] {
            for kind in [ValueKind::Text, ValueKind::RawJson] {
                let t = seal(&e, PiiClass::Email, mode, kind, b"jane@example.com");
                let o = e.open(&t, NOW).expect("opens");
                assert_eq!(o.plaintext, b"jane@example.com");
                assert_eq!((o.class, o.mode, o.kind, o.key_id.as_str()), (PiiClass::Email, mode, kind, "k1"));
            }
        }
    }

    #[test]
    fn deterministic_is_stable_randomized_is_not() {
        let e = engine();
        let a = seal(&e, PiiClass::Name, Mode::Deterministic, ValueKind::Text, b"Jane Doe");
        let b = seal(&engine(), PiiClass::Name, Mode::Deterministic, ValueKind::Text, b"Jane Doe");
        assert_eq!(a, b, "same key, same value → same token, across engine instances");
        let r1 = seal(&e, PiiClass::Name, Mode::Randomized, ValueKind::Text, b"Jane Doe");
        let r2 = seal(&e, PiiClass::Name, Mode::Randomized, ValueKind::Text, b"Jane Doe");
        assert_ne!(r1, r2);
        assert_ne!(a, seal(&e, PiiClass::Address, Mode::Deterministic, ValueKind::Text, b"Jane Doe"));
    }

    #[test]
    fn remembered_tokens_equal_computed_ones_and_stay_bounded() {
        let remembering = engine().with_recent_tokens(4);
        let computing = engine().with_recent_tokens(0);
        for round in 0..3 {
            for i in 0..10 {
                let value = format!("buyer-{i}@example.com");
                let a = seal(&remembering, PiiClass::Email, Mode::Deterministic, ValueKind::Text, value.as_bytes());
                let b = seal(&computing, PiiClass::Email, Mode::Deterministic, ValueKind::Text, value.as_bytes());
                assert_eq!(a, b, "round {round}, value {i}");
                assert!(remembering.recent.map.borrow().len() <= 4);
            }
        }
        // A remembered token is class- and kind-specific.
        let name = seal(&remembering, PiiClass::Name, Mode::Deterministic, ValueKind::Text, b"buyer-9@example.com");
        assert_eq!(remembering.open(&name, NOW).expect("opens").class, PiiClass::Name);
    }

    #[test]
    fn one_off_values_are_sealed_alike_and_not_remembered() {
        let e = engine().with_recent_tokens(16);
        let keys = e.active_keys(NOW);
        let (mut scratch, mut once) = (Vec::new(), String::new());
        e.seal_once_into(&keys, PiiClass::Name, Mode::Deterministic, ValueKind::Text, b"Jane Doe", &mut scratch, &mut once);
        assert!(e.recent.map.borrow().is_empty(), "a document's value stays out of the recent tokens");
        assert_eq!(Some(once.clone()), e.seal(NOW, PiiClass::Name, Mode::Deterministic, ValueKind::Text, b"Jane Doe"));
        assert_eq!(e.recent.map.borrow().len(), 1);
        let mut again = String::new();
        e.seal_once_into(&keys, PiiClass::Name, Mode::Deterministic, ValueKind::Text, b"Jane Doe", &mut scratch, &mut again);
        assert_eq!(again, once);
    }

    #[test]
    fn tampering_and_class_swap_fail() {
        let e = engine();
        let t = seal(&e, PiiClass::Phone, Mode::Deterministic, ValueKind::Text, b"+1 555 0100");
        // One character changed anywhere in the token.
        for i in 0..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).expect("ascii");
            assert!(e.open(&changed, NOW).is_err(), "changed at {i} still opened");
        }
        let swapped = t.replacen(".phone.", ".email.", 1);
        assert_eq!(e.open(&swapped, NOW), Err(TokenError::Forged));
        let rekeyed = t.replacen(".k1.", ".k0.", 1);
        assert_eq!(e.open(&rekeyed, NOW), Err(TokenError::Forged));
        assert_eq!(e.open(&t.replacen(".k1.", ".k9.", 1), NOW), Err(TokenError::UnknownKey));
        assert_eq!(e.open("Jane Doe", NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn tokens_are_url_and_json_safe() {
        let e = engine();
        let t = seal(&e, PiiClass::GiftMessage, Mode::Randomized, ValueKind::Text, "Héllo \"x\" / ?&".as_bytes());
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "{t}");
    }

    /// A dated ring: monthly keys k-oct, k-nov for every class but tax ids, a yearly key for them.
    fn dated() -> TokenEngine {
        let doc: KeysDoc = serde_json::from_str(
            r#"{"ring":[
                {"id":"k-oct","env":"A","classes":["name","email","phone","address","gift_message","company","other"],"created":"2026-09-20","activeFrom":"2026-10-01","notAfter":"2026-11-30"},
                {"id":"k-nov","env":"B","classes":["name","email","phone","address","gift_message","company","other"],"created":"2026-10-20","activeFrom":"2026-11-01","notAfter":"2026-12-31"},
                {"id":"tax-2026","env":"C","classes":["tax_id"],"created":"2025-12-01","activeFrom":"2026-01-01","notAfter":"2036-12-31"}]}"#,
        )
        .expect("doc");
        let schedule = Schedule::from_doc(&doc).expect("valid ring");
        TokenEngine::from_ring(schedule, vec![[1u8; KEY_LEN], [2u8; KEY_LEN], [3u8; KEY_LEN]]).expect("engine")
    }

    fn day(text: &str) -> u64 {
        parse_instant(text, false).expect("date")
    }

    #[test]
    fn tokens_are_made_with_the_key_active_for_their_class_at_the_instant_given() {
        let e = dated();
        let email_oct = e.seal(day("2026-10-15"), PiiClass::Email, Mode::Deterministic, ValueKind::Text, b"jane@example.com").expect("sealed");
        let email_nov = e.seal(day("2026-11-15"), PiiClass::Email, Mode::Deterministic, ValueKind::Text, b"jane@example.com").expect("sealed");
        let tax_nov = e.seal(day("2026-11-15"), PiiClass::TaxId, Mode::Deterministic, ValueKind::Text, b"DE123456789").expect("sealed");
        assert!(email_oct.starts_with("spgt1.ds.k-oct.email."), "{email_oct}");
        assert!(email_nov.starts_with("spgt1.ds.k-nov.email."), "{email_nov}");
        assert!(tax_nov.starts_with("spgt1.ds.tax-2026.tax_id."), "{tax_nov}");
        // A deterministic token changes with the key: joins across a rotation need both tokens.
        assert_ne!(email_oct, email_nov);
        // Keyed hashes follow the class's key too.
        let keys = e.active_keys(day("2026-11-15"));
        let mut hashed = String::new();
        e.hash_into(&keys, PiiClass::TaxId, ValueKind::Text, b"DE123456789", &mut hashed);
        assert!(hashed.starts_with("spgh2.tax-2026.tax_id."), "{hashed}");
        // Before any key of the class, nothing is made.
        assert_eq!(e.seal(day("2026-09-15"), PiiClass::Email, Mode::Deterministic, ValueKind::Text, b"x"), None);
        let mut out = String::new();
        e.seal_into(&e.active_keys(day("2026-09-15")), PiiClass::Email, Mode::Randomized, ValueKind::Text, b"x", &mut Vec::new(), &mut out);
        assert_eq!(out, "", "no key, no token, and never the value");
        // Both monthly keys open their tokens in November.
        assert_eq!(e.open(&email_oct, day("2026-11-15")).expect("October's key still reads").plaintext, b"jane@example.com");
        assert_eq!(e.open(&email_nov, day("2026-11-15")).expect("opens").key_id, "k-nov");
        assert_eq!(e.schedule().state(0, day("2026-11-15")), KeyState::Readable);
    }

    #[test]
    fn tokens_of_an_expired_key_are_refused_though_the_material_is_present() {
        let e = dated();
        let token = e.seal(day("2026-10-15"), PiiClass::Address, Mode::Randomized, ValueKind::Text, b"1 Main St").expect("sealed");
        let last_moment = parse_instant("2026-11-30", true).expect("day");
        assert!(e.open(&token, last_moment).is_ok(), "notAfter is the last day its tokens open");
        let refused = e.open(&token, last_moment + 1).expect_err("expired");
        assert_eq!(refused, TokenError::Expired { key_id: "k-oct".into(), not_after: "2026-11-30".into() });
        assert_eq!(refused.code(), "token_expired");
        assert!(!refused.to_string().contains("Main"));
        // A forged token of the expired key is refused the same way: nothing is decrypted.
        assert_eq!(e.open(&token.replacen(".address.", ".name.", 1), last_moment + 1).map_err(|e| e.code()), Err("token_expired"));
    }

    #[test]
    fn fingerprints_name_the_key_without_revealing_it() {
        let mut key = [0u8; KEY_LEN];
        for (i, b) in key.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(fingerprint(&key), FINGERPRINT_VECTOR);
        assert_ne!(fingerprint(&[1u8; KEY_LEN]), fingerprint(&[2u8; KEY_LEN]));
        let e = dated();
        assert_eq!(e.fingerprint(1), fingerprint(&[2u8; KEY_LEN]));
        assert_eq!(e.key_id(2), "tax-2026");
    }

    /// Known-answer vector: pins the deterministic construction (HKDF sub-keys, SIV nonce, AAD =
    /// header) so that a change to any part of it is caught. Documented in docs/TOKENS.md.
    #[test]
    fn deterministic_test_vector() {
        let mut keys = BTreeMap::new();
        let mut key = [0u8; KEY_LEN];
        for (i, b) in key.iter_mut().enumerate() {
            *b = i as u8;
        }
        keys.insert("test".to_string(), key);
        let e = TokenEngine::new(keys, "test").expect("engine");
        let t = seal(&e, PiiClass::Email, Mode::Deterministic, ValueKind::Text, b"buyer@example.com");
        assert_eq!(t, DETERMINISTIC_VECTOR);
        let h = {
            let mut s = String::new();
            e.hash_into(&e.active_keys(NOW), PiiClass::Email, ValueKind::Text, b"buyer@example.com", &mut s);
            s
        };
        assert_eq!(h, HASH_VECTOR);
    }

    const DETERMINISTIC_VECTOR: &str = "spgt1.ds.test.email.BDyT4ou2lghHKe48H_G8Z1cQfvBj5WuvPvmwuOJt9HntKo_-rS6zFV1JsHWC";
    const HASH_VECTOR: &str = "spgh2.test.email.RGA7Fojk9L91zuxZbD9bJg";
    const FINGERPRINT_VECTOR: &str = "2198ebf492885c3e478e045726b45578";

    #[test]
    fn hash_is_keyed_and_class_bound() {
        let e = engine();
        let keys = e.active_keys(NOW);
        let mut a = String::new();
        let mut b = String::new();
        e.hash_into(&keys, PiiClass::Email, ValueKind::Text, b"x@example.com", &mut a);
        e.hash_into(&keys, PiiClass::Name, ValueKind::Text, b"x@example.com", &mut b);
        assert!(a.starts_with("spgh2.k1.email."));
        assert_ne!(a[15..], b[14..]);
        // The string "123" and the number 123 are different values.
        let (mut text, mut number) = (String::new(), String::new());
        e.hash_into(&keys, PiiClass::Other, ValueKind::Text, b"123", &mut text);
        e.hash_into(&keys, PiiClass::Other, ValueKind::RawJson, b"123", &mut number);
        assert_ne!(text, number);
    }
}
