//! Loads the key ring from environment variables that Envoy passes into the VM.
//!
//! The policy names variables, never key material. Each variable holds one 256-bit key, as 64
//! hex digits or standard base64 (44 characters). Error messages name the key id and the variable,
//! and say what is wrong with its length or encoding, never what it holds.
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::config_error::ConfigError;
use crate::tokens::KEY_LEN;

/// The `keys` section of a policy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysDoc {
    /// The key id new tokens are made with.
    pub active: String,
    /// Key id → name of the environment variable that holds the key.
    pub env: BTreeMap<String, String>,
}

/// Key id → key, plus the active id.
pub struct KeyRing {
    pub keys: BTreeMap<String, [u8; KEY_LEN]>,
    pub active: String,
}

/// Reads every key the policy names. `env` looks a variable up (std::env::var in the VM).
pub fn load(doc: &KeysDoc, env: &dyn Fn(&str) -> Option<String>) -> Result<KeyRing, ConfigError> {
    if doc.env.is_empty() {
        return Err(ConfigError::new("keys.env", "names no key; map a key id to an environment variable, e.g. {\"k1\": \"SPAPI_GUARD_KEY_K1\"}"));
    }
    let mut keys = BTreeMap::new();
    for (id, var) in &doc.env {
        let at = format!("keys.env.{id}");
        check_key_id(id).map_err(|m| ConfigError::new(&at, m))?;
        if !is_env_name(var) {
            // The value might be a key pasted in by mistake: never repeat it.
            return Err(ConfigError::new(&at, "must be the NAME of an environment variable (A-Z, 0-9, _), not key material; keep keys out of the policy"));
        }
        let value = env(var).ok_or_else(|| {
            ConfigError::key_missing(
                &at,
                format!("environment variable {var} is not set in the Wasm VM; export it to Envoy and list it in vm_config.environment_variables.host_env_keys"),
            )
        })?;
        keys.insert(id.clone(), decode_key(value.trim()).map_err(|m| ConfigError::new(&at, format!("{var} {m}")))?);
    }
    if !keys.contains_key(&doc.active) {
        return Err(ConfigError::new(
            "keys.active",
            format!("'{}' is not a key id of keys.env; name one of: {}", doc.active, doc.env.keys().cloned().collect::<Vec<_>>().join(", ")),
        ));
    }
    Ok(KeyRing { keys, active: doc.active.clone() })
}

fn decode_key(value: &str) -> Result<[u8; KEY_LEN], String> {
    if value.is_empty() {
        return Err("is empty; it must hold a 256-bit key (generate one with: openssl rand -base64 32)".into());
    }
    let bytes = if value.len() == 2 * KEY_LEN && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..KEY_LEN).map(|i| u8::from_str_radix(&value[2 * i..2 * i + 2], 16).unwrap_or(0)).collect::<Vec<u8>>()
    } else if value.bytes().all(|b| b.is_ascii_hexdigit()) && !value.is_empty() && value.len().is_multiple_of(2) && value.len() < 2 * KEY_LEN {
        return Err(format!("holds a {}-bit key; spapi-guard needs 256-bit keys (64 hex digits or 44 base64 characters)", value.len() * 4));
    } else {
        STANDARD.decode(value).map_err(|_| format!("is not a key: expected 64 hex digits or 44 base64 characters, found {} characters that are neither", value.len()))?
    };
    if bytes.len() != KEY_LEN {
        return Err(format!("holds a {}-bit key; spapi-guard needs 256-bit keys (generate one with: openssl rand -base64 32)", bytes.len() * 8));
    }
    if bytes.iter().all(|&b| b == bytes[0]) {
        return Err("holds a key whose bytes are all equal; generate a random key (openssl rand -base64 32)".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn doc(json: &str) -> KeysDoc {
        serde_json::from_str(json).expect("doc")
    }

    fn env_with(value: &'static str) -> impl Fn(&str) -> Option<String> {
        move |name| (name == "K1").then(|| value.to_string())
    }

    #[test]
    fn loads_hex_and_base64() {
        let d = doc(r#"{"active":"k1","env":{"k1":"K1"}}"#);
        let a = load(&d, &env_with(HEX)).expect("hex");
        let b = load(&d, &env_with(B64)).expect("base64");
        assert_eq!(a.keys["k1"], b.keys["k1"]);
        assert_eq!(a.keys["k1"][31], 31);
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
            let e = load(&d, &env_with(value)).err().expect("refused");
            assert_eq!(e.field, "keys.env.k1");
            assert!(e.message.contains(expected), "{e}");
            assert!(value.is_empty() || !e.to_string().contains(value), "echoed material: {e}");
        }
        let missing = load(&d, &|_: &str| None).err().expect("refused");
        assert!(missing.message.contains("K1 is not set"), "{missing}");
    }

    #[test]
    fn refuses_inline_keys_bad_ids_and_unknown_active() {
        let inline = load(&doc(&format!(r#"{{"active":"k1","env":{{"k1":"{B64}"}}}}"#)), &env_with(HEX)).err().expect("refused");
        assert!(!inline.to_string().contains(B64));
        assert!(load(&doc(r#"{"active":"k.1","env":{"k.1":"K1"}}"#), &env_with(HEX)).is_err());
        let e = load(&doc(r#"{"active":"k2","env":{"k1":"K1"}}"#), &env_with(HEX)).err().expect("refused");
        assert_eq!(e.field, "keys.active");
        assert_eq!(load(&doc(r#"{"active":"k1","env":{}}"#), &env_with(HEX)).err().expect("refused").field, "keys.env");
    }
}
