//! Key rotation through a real Envoy, under load: the ring [demo-1] becomes [demo-1, k2] by an
//! Envoy hot restart (the new key's variable is in the new process's environment) while clients
//! keep sending requests; k2 is added ahead of its activeFrom and takes over by the clock, with
//! no further change. No request fails, tokens made under demo-1 before the change still open
//! after it (the command line, with the new ring), and the command line's token of a value is the
//! filter's. docs/POLICY.md#rotation describes the procedure this runs.
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use spapi_guard::keyring::display_instant;
use support::*;

const K2_VAR: &str = "SPAPI_GUARD_KEY_K2";
const EVERY: [&str; 8] = ["name", "email", "phone", "address", "tax_id", "gift_message", "company", "other"];

/// One request of the load: when it was sent and answered, and what came back.
struct Outcome {
    sent_ms: u64,
    done_ms: u64,
    result: Result<(u16, String), String>,
}

/// The key id of the buyer name's token in a getOrderAddress response ("" if there is none).
fn name_key(body: &Value) -> String {
    body["payload"]["ShippingAddress"]["Name"].as_str().and_then(|t| t.split('.').nth(2)).unwrap_or("").to_string()
}

fn name_token(body: &Value) -> String {
    body["payload"]["ShippingAddress"]["Name"].as_str().expect("a token").to_string()
}

/// Runs the command line with these arguments and stdin; (status, stdout, stderr).
fn cli(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spapi-guard"))
        .args(args)
        .env_remove(KEY_VAR)
        .env_remove(K2_VAR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spapi-guard");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin");
    let out = child.wait_with_output().expect("wait");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_ring_change_under_load_drops_no_request_and_old_tokens_still_open() {
    let (k1, k2) = (random_key(), random_key());
    let mut opts = Options::new("rotation", &k1);
    opts.hot_restart = true;
    let mut stack = Stack::start(opts);
    let fixture = fixture("orders-v0_getOrderAddress_1.json");
    let before = stack.play(&fixture);
    assert_eq!(before.status, 200, "{}", before.text());
    let old_token = name_token(&before.json());
    assert!(old_token.starts_with("spgt1.ds.demo-1.name."), "{old_token}");

    // Clients: three threads sending getOrderAddress requests back to back, each on a new
    // connection, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let port = stack.port;
    let url = fixture.url();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, outcomes, url, file) = (Arc::clone(&stop), Arc::clone(&outcomes), url.clone(), fixture.file.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let sent_ms = now_ms();
                    let result = send_to(port, Client::Cert(ORDER_SYNC), "GET", &url, &[("x-mock-fixture", &file)], None, None).map(|r| {
                        let key = serde_json::from_slice::<Value>(&r.body).map(|v| name_key(&v)).unwrap_or_default();
                        (r.status, key)
                    });
                    outcomes.lock().expect("lock").push(Outcome { sent_ms, done_ms: now_ms(), result });
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));

    // The change: k2 is added ahead of time, active a few seconds after the new Envoy starts;
    // its material reaches the new Envoy only (the new process's environment).
    let active_from_ms = (now_ms() / 1000 + 12) * 1000;
    let mut policy = default_policy();
    let ring = policy["keys"]["ring"].as_array_mut().expect("the shipped policy has a keys.ring");
    ring.push(json!({"id": "k2", "env": K2_VAR, "classes": EVERY, "created": display_instant(now_ms() / 86_400_000 * 86_400_000),
                     "activeFrom": display_instant(active_from_ms), "notAfter": "2031-06-30"}));
    let env = vec![(KEY_VAR.to_string(), key_b64(&k1)), (K2_VAR.to_string(), key_b64(&k2))];
    let restart_began = now_ms();
    stack.hot_restart(&policy, &env).unwrap_or_else(|r| panic!("the new Envoy did not start:\n{}", r.log));
    let restarted = now_ms();
    // Added ahead of time: listed, not yet making tokens (checked if the scrape ended before
    // activeFrom: on a loaded machine the restart alone can take most of the margin).
    let metrics = stack.metrics();
    if now_ms() + 500 < active_from_ms {
        assert_eq!(metrics.get(r#"spapi_guard_key_info{key_id="k2",state="pending"}"#), Some(&1), "{metrics:?}");
        assert_eq!(metrics.get(r#"spapi_guard_key_info{key_id="demo-1",state="active"}"#), Some(&1), "{metrics:?}");
    }
    // The switch by the clock, still under load.
    while now_ms() < active_from_ms + 3000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("client thread");
    }

    // Zero failed requests: every one answered 200 with the buyer name tokenized.
    let outcomes = outcomes.lock().expect("lock");
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match &o.result {
            Ok((200, key)) if !key.is_empty() => None,
            Ok((status, _)) => Some(format!("status {status} at {}", display_instant(o.sent_ms))),
            Err(e) => Some(format!("{e} at {}", display_instant(o.sent_ms))),
        })
        .collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), outcomes.len());
    let during = outcomes.iter().filter(|o| o.done_ms >= restart_began && o.sent_ms <= restarted).count();
    assert!(outcomes.len() >= 30 && during >= 3, "too little load: {} requests, {during} during the restart", outcomes.len());
    let switched = outcomes.iter().filter(|o| o.sent_ms > active_from_ms).count();
    println!("{} requests, none failed: {during} during the hot restart ({} ms), {switched} after k2's activeFrom", outcomes.len(), restarted - restart_began);
    // Before k2's activeFrom every token is demo-1's; after it every token is k2's.
    for o in outcomes.iter() {
        let key = o.result.as_ref().map(|(_, k)| k.as_str()).unwrap_or("");
        if o.done_ms < active_from_ms {
            assert_eq!(key, "demo-1", "answered at {} before k2's activeFrom", o.done_ms);
        } else if o.sent_ms > active_from_ms {
            assert_eq!(key, "k2", "sent at {} after k2's activeFrom", o.sent_ms);
        }
    }
    assert!(outcomes.iter().any(|o| o.sent_ms > active_from_ms), "no request after the switch");

    // The new Envoy: k2 active, demo-1 readable, the switch reported.
    let after = stack.play(&fixture);
    let new_token = name_token(&after.json());
    assert!(new_token.starts_with("spgt1.ds.k2.name."), "{new_token}");
    let metrics = stack.metrics();
    assert_eq!(metrics.get(r#"spapi_guard_key_info{key_id="k2",state="active"}"#), Some(&1), "{metrics:?}");
    assert_eq!(metrics.get(r#"spapi_guard_key_info{key_id="demo-1",state="readable"}"#), Some(&1), "{metrics:?}");
    assert_eq!(metrics.get(r#"spapi_guard_key_info{key_id="demo-1",state="active"}"#), Some(&0), "{metrics:?}");
    assert!(metrics.get(r#"spapi_guard_key_tokens_total{key_id="k2",mode="deterministic"}"#).is_some_and(|n| *n > 0), "{metrics:?}");
    let events = stack.wait_for_security_event("key_activated");
    assert!(events.iter().any(|e| e["event"] == "key_activated" && e["detail"] == "k2"), "{events:?}");
    let audit = stack.audit_events();
    assert_eq!(audit.last().map(|e| e["key_id"].clone()), Some(json!("k2")));

    // Tokens made under demo-1 before the change open after it, with the new ring; the command
    // line's token of the value is the filter's, and --all finds the row stored before the change.
    let policy_file = stack.dir.join("epoch-1/policy.json");
    let env_file = stack.dir.join("keys.env");
    std::fs::write(&env_file, format!("{KEY_VAR}={}\n{K2_VAR}={}\n", key_b64(&k1), key_b64(&k2))).expect("env file");
    let (p, e) = (policy_file.to_str().expect("path"), env_file.to_str().expect("path"));
    let (status, opened, stderr) = cli(&["--policy", p, "--env-file", e, "detokenize"], &format!("{old_token}\n{new_token}\n"));
    assert_eq!((status, opened.as_str()), (0, "Michigan address\nMichigan address\n"), "{stderr}");
    let (status, tokens, stderr) = cli(&["--policy", p, "--env-file", e, "tokenize", "--class", "name", "--all", "Michigan address"], "");
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(tokens, format!("{new_token}\n{old_token}\n"), "the filter's token under k2, then the one stored before the rotation");
    assert!(!stack.envoy_output().contains(&key_b64(&k2)), "key material in Envoy's output");
}

#[test]
fn envoy_refuses_an_invalid_ring_naming_the_field() {
    let key = random_key();
    let mut policy = default_policy();
    let mut second = policy["keys"]["ring"][0].clone();
    second["id"] = json!("demo-2");
    second["env"] = json!("SPAPI_GUARD_KEY_DEMO_2");
    second["classes"] = json!(["address"]);
    policy["keys"]["ring"].as_array_mut().expect("ring").push(second);
    let env = vec![(KEY_VAR.to_string(), key_b64(&key)), ("SPAPI_GUARD_KEY_DEMO_2".to_string(), key_b64(&random_key()))];
    let refused = expect_refusal("refuse-overlapping-ring", policy, env);
    assert!(refused.log.contains("configuration refused: keys.ring[1].activeFrom: 2026-01-01 is also the activeFrom of keys.ring[0] (demo-1) for address"), "{}", refused.log);
    let mut policy = default_policy();
    policy["keys"]["ring"][0]["notAfter"] = json!("2025-12-31");
    let refused = expect_refusal("refuse-not-after", policy, vec![(KEY_VAR.to_string(), key_b64(&key))]);
    assert!(refused.log.contains("configuration refused: keys.ring[0].notAfter: 2025-12-31 is before activeFrom 2026-01-01"), "{}", refused.log);
}

#[test]
fn tokens_of_an_expired_key_are_refused_by_the_filter_while_its_material_is_loaded() {
    // Ring: "old" (every class, expired yesterday) and "new" (active); both keys in Envoy.
    let (old_key, new_key) = (random_key(), random_key());
    let day = |offset: i64| display_instant((now_ms() / 86_400_000).saturating_add_signed(offset) * 86_400_000);
    let mut opts = Options::new("expired-key", &old_key);
    opts.policy["keys"] = json!({"ring": [
        {"id": "old", "env": KEY_VAR, "classes": EVERY, "created": day(-90), "activeFrom": day(-90), "notAfter": day(-1)},
        {"id": "new", "env": K2_VAR, "classes": EVERY, "created": day(-30), "activeFrom": day(-30), "notAfter": day(300)}]});
    opts.policy["roles"]["label-printer"]["reveal"] = json!([{"classes": ["address"], "operations": ["spapi-guard.reveal"]}]);
    opts.env.push((K2_VAR.to_string(), key_b64(&new_key)));
    let policy = opts.policy.clone();
    let stack = Stack::start(opts);
    // A token the old key made while it was active, and today's.
    let env = |name: &str| [(KEY_VAR, &old_key), (K2_VAR, &new_key)].iter().find(|(v, _)| *v == name).map(|(_, k)| key_b64(k));
    let guard = spapi_guard::guard::Guard::load(policy.to_string().as_bytes(), &env).expect("policy");
    let seal = |at: u64| {
        guard.tokens.seal(at, spapi_guard::pii::PiiClass::Address, spapi_guard::tokens::Mode::Deterministic, spapi_guard::tokens::ValueKind::Text, b"Canton").expect("sealed")
    };
    let (old_token, new_token) = (seal(now_ms() - 60 * 86_400_000), seal(now_ms()));
    assert!(old_token.contains(".old.") && new_token.contains(".new."));
    let reveal = |tokens: &[&str]| {
        let body = json!({ "tokens": tokens }).to_string();
        stack.send(Client::Cert("label-printer"), "POST", "/spapi-guard/v1/reveal", &[], None, Some(&body)).expect("curl")
    };
    let r = reveal(&[&new_token]);
    assert_eq!((r.status, r.json()), (200, json!({"values": ["Canton"]})));
    let r = reveal(&[&old_token]);
    assert_eq!((r.status, r.header("x-spapi-guard")), (400, Some("token_expired")), "{}", r.text());
    assert!(!r.text().contains("Canton"));
    // Reported: the key as expired from the start (gauge, event), the refusal (event, metric, audit).
    let events = stack.wait_for_security_event("token_expired");
    assert!(events.iter().any(|e| e["event"] == "key_expired" && e["detail"] == "old"), "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "token_expired" && e["detail"] == "old"), "{events:?}");
    let metrics = stack.metrics();
    assert_eq!(metrics.get(r#"spapi_guard_key_info{key_id="old",state="expired"}"#), Some(&1), "{metrics:?}");
    assert_eq!(metrics.get(r#"spapi_guard_token_refusals_total{reason="token_expired"}"#), Some(&1), "{metrics:?}");
    let audit = stack.wait_for_audit_events(2);
    assert_eq!((audit[1]["reason"].as_str(), audit[1]["security_events"].clone()), (Some("token_expired"), json!(["token_expired"])));
    assert!(stack.envoy_output().contains("configuration warning: keys.ring[0].notAfter: key old expired on"));
    assert!(!stack.envoy_output().contains("Canton"));
}
