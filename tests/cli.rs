//! The `spapi-guard` command line, run as a program: keygen, the key inventory and the shred
//! record, tokenize (equal to the filter's tokens), detokenize (expired keys refused), lint (the
//! filter's messages), catalog, record-of-processing (the filter's compiled grants, schema-valid
//! JSON), and the README's examples (scripts/readme-cli-examples.sh) against what the program
//! prints. Policies and keys are generated per test under target/cli-tests/.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::Digest as _;
use spapi_guard::guard::Guard;
use spapi_guard::keyring::display_instant;
use spapi_guard::pii::PiiClass;
use spapi_guard::tokens::{fingerprint, Mode, ValueKind, KEY_LEN};

const DAY: u64 = 86_400_000;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).expect("clock")
}

/// A date `days` from today (negative: in the past), as a policy writes it.
fn day(days: i64) -> String {
    let today = now_ms() / DAY * DAY;
    display_instant(today.saturating_add_signed(days * DAY as i64))
}

fn random_key() -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    getrandom::fill(&mut k).expect("random");
    k
}

/// A folder of its own for one test.
fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cli-tests").join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// A ring key: id, classes, created/activeFrom/notAfter in days from today.
struct Key {
    id: &'static str,
    classes: Vec<&'static str>,
    from: i64,
    until: i64,
    material: [u8; KEY_LEN],
}

impl Key {
    fn new(id: &'static str, classes: &[&'static str], from: i64, until: i64) -> Key {
        Key { id, classes: classes.to_vec(), from, until, material: random_key() }
    }
    fn var(&self) -> String {
        format!("SPAPI_GUARD_KEY_{}", self.id.to_uppercase().replace('-', "_"))
    }
}

const EVERY: [&str; 8] = ["name", "email", "phone", "address", "tax_id", "gift_message", "company", "other"];

/// The default policy with these keys; writes it and an env file to `dir`.
fn setup(dir: &Path, keys: &[&Key]) -> (PathBuf, PathBuf) {
    let mut policy: Value = serde_json::from_str(include_str!("../policies/default.json")).expect("policy");
    let ring: Vec<Value> =
        keys.iter().map(|k| json!({"id": k.id, "env": k.var(), "classes": k.classes, "created": day(k.from - 1), "activeFrom": day(k.from), "notAfter": day(k.until)})).collect();
    policy["keys"] = json!({ "ring": ring });
    let policy_file = dir.join("policy.json");
    std::fs::write(&policy_file, serde_json::to_vec_pretty(&policy).expect("json")).expect("write");
    let env_file = dir.join("keys.env");
    let env: String = keys.iter().map(|k| format!("{}={}\n", k.var(), STANDARD.encode(k.material))).collect();
    std::fs::write(&env_file, env).expect("write");
    (policy_file, env_file)
}

struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

/// Runs the command line in `dir` with `args`, `stdin`, and no key variables of its own.
fn run(dir: &Path, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spapi-guard"))
        .current_dir(dir)
        .args(args)
        .env_remove("SPAPI_GUARD_KEY_DEMO_1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spapi-guard");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    Run { status: out.status.code().unwrap_or(-1), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

fn guard(policy: &Path, keys: &[&Key]) -> Guard {
    let env = |name: &str| keys.iter().find(|k| k.var() == name).map(|k| STANDARD.encode(k.material));
    Guard::load(&std::fs::read(policy).expect("policy"), &env).expect("loads")
}

#[test]
fn keygen_prints_a_new_256_bit_key_once_with_its_fingerprint() {
    let dir = workdir("keygen");
    let a = run(&dir, &["keygen", "--id", "addr-2026-12"], "");
    let b = run(&dir, &["keygen"], "");
    assert_eq!((a.status, b.status), (0, 0));
    let key: [u8; KEY_LEN] = STANDARD.decode(a.stdout.trim()).expect("base64").try_into().expect("256 bits");
    assert_eq!(a.stdout.lines().count(), 1, "stdout is the key alone: {}", a.stdout);
    assert_ne!(a.stdout, b.stdout);
    assert!(a.stderr.contains(&format!("fingerprint {}", fingerprint(&key))), "{}", a.stderr);
    assert!(a.stderr.contains(r#""env": "SPAPI_GUARD_KEY_ADDR_2026_12""#), "{}", a.stderr);
    assert!(!a.stderr.contains(a.stdout.trim()), "the key is printed once");
}

#[test]
fn tokenize_gives_the_filters_token_for_the_same_value() {
    let dir = workdir("tokenize");
    let (old, new) = (Key::new("k-old", &EVERY, -40, 30), Key::new("k-new", &EVERY, -10, 90));
    let (policy, env) = setup(&dir, &[&old, &new]);
    let (p, e) = (policy.to_str().expect("path"), env.to_str().expect("path"));
    // The filter's token: the getOrderAddress fixture protected by the Guard at the current time.
    let g = guard(&policy, &[&old, &new]);
    let op = g.catalog.route("GET", "/orders/v0/orders/1/address").expect("operation");
    let fixture = include_bytes!("fixtures/spapi/orders-v0_getOrderAddress_1.json");
    let actions = *g.policy.actions();
    let protected = g.protect_response_at(op, fixture, &actions, now_ms()).expect("protected").body.expect("rewritten");
    let v: Value = serde_json::from_slice(&protected).expect("json");
    let filter_token = v["payload"]["ShippingAddress"]["Name"].as_str().expect("token");
    let cli = run(&dir, &["--policy", p, "--env-file", e, "tokenize", "--class", "name", "Michigan address"], "");
    assert_eq!((cli.status, cli.stdout.trim()), (0, filter_token), "{}", cli.stderr);
    // From stdin, one value per line.
    let stdin = run(&dir, &["--policy", p, "--env-file", e, "tokenize", "--class", "name"], "Michigan address\n");
    assert_eq!(stdin.stdout.trim(), filter_token);
    // --all: the token under every key whose tokens still open, active key first (a row stored
    // before the rotation holds k-old's token).
    let all = run(&dir, &["--policy", p, "--env-file", e, "tokenize", "--class", "name", "--all", "Michigan address"], "");
    let lines: Vec<&str> = all.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", all.stdout);
    assert_eq!(lines[0], filter_token);
    let then = now_ms() - 20 * DAY;
    assert_eq!(Some(lines[1].to_string()), g.tokens.seal(then, PiiClass::Name, Mode::Deterministic, ValueKind::Text, b"Michigan address"));
    // Keyed hashes for classes (or roles) that hash.
    let hash = run(&dir, &["--policy", p, "--env-file", e, "tokenize", "--class", "email", "--as", "hash", "jane@example.com"], "");
    let mut expected = String::new();
    g.tokens.hash_into(&g.tokens.active_keys(now_ms()), PiiClass::Email, ValueKind::Text, b"jane@example.com", &mut expected);
    assert_eq!(hash.stdout.trim(), expected);
    // Randomized classes have nothing to look up.
    let random = run(&dir, &["--policy", p, "--env-file", e, "tokenize", "--class", "gift_message", "Happy birthday"], "");
    assert_eq!(random.status, 1);
    assert!(random.stderr.contains("gift_message is tokenized randomized (classes.gift_message.mode)"), "{}", random.stderr);
}

#[test]
fn detokenize_opens_tokens_and_refuses_those_of_expired_keys() {
    let dir = workdir("detokenize");
    let (old, new) = (Key::new("k-old", &EVERY, -60, -1), Key::new("k-new", &EVERY, -30, 60));
    let (policy, env) = setup(&dir, &[&old, &new]);
    let (p, e) = (policy.to_str().expect("path"), env.to_str().expect("path"));
    let g = guard(&policy, &[&old, &new]);
    let then = now_ms() - 45 * DAY;
    let old_token = g.tokens.seal(then, PiiClass::Email, Mode::Randomized, ValueKind::Text, b"old@example.com").expect("k-old was active");
    let new_token = g.tokens.seal(now_ms(), PiiClass::Email, Mode::Randomized, ValueKind::Text, b"new@example.com").expect("k-new is active");
    assert!(old_token.contains(".k-old.") && new_token.contains(".k-new."));
    let input = format!("{new_token}\n{old_token}\nspgh2.k-new.email.AAAAAAAAAAAAAAAAAAAAAA\n{}\n", new_token.replacen(".email.", ".name.", 1));
    let plain = run(&dir, &["--policy", p, "--env-file", e, "detokenize"], &input);
    assert_eq!(plain.status, 1, "a refused token fails the run");
    assert_eq!(plain.stdout, "new@example.com\n\n\n\n", "one output line per input line");
    assert!(plain.stderr.contains(&format!("line 2: token_expired: key k-old expired after {} (its notAfter)", day(-1))), "{}", plain.stderr);
    assert!(plain.stderr.contains("line 3: a keyed hash (spgh2.) cannot be opened"), "{}", plain.stderr);
    assert!(!plain.stderr.contains("old@example.com"));
    let json = run(&dir, &["--policy", p, "--env-file", e, "detokenize", "--json"], &input);
    let lines: Vec<Value> = json.stdout.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines[0], json!({"line": 1, "class": "email", "key_id": "k-new", "raw_json": false, "value": "new@example.com"}));
    let codes: Vec<&str> = lines[1..].iter().map(|l| l["error"].as_str().expect("error")).collect();
    assert_eq!(codes, ["token_expired", "irreversible_hash", "forged_token"]);
    // The filter's engine refuses the same token the same way (src/tokens.rs): one implementation.
    assert_eq!(g.tokens.open(&old_token, now_ms()).map_err(|e| e.code()).err(), Some("token_expired"));
}

#[test]
fn the_inventory_shows_each_keys_state_and_shred_writes_the_deletion_record() {
    let dir = workdir("inventory");
    let expired = Key::new("k-2026-08", &["address"], -120, -2);
    let readable = Key::new("k-2026-09", &["address"], -60, 30);
    let active = Key::new("k-2026-10", &["address"], -20, 100);
    let pending = Key::new("k-2026-11", &["address"], 10, 160);
    let tax = Key::new("tax-2026", &["name", "email", "phone", "tax_id", "gift_message", "company", "other"], -300, 3000);
    let all = [&expired, &readable, &active, &pending, &tax];
    let (policy, env) = setup(&dir, &all);
    let (p, e) = (policy.to_str().expect("path"), env.to_str().expect("path"));
    // A token k-2026-08 made while it was active (for the deletion check below).
    let shredded_token = guard(&policy, &all).tokens.seal(now_ms() - 100 * DAY, PiiClass::Address, Mode::Deterministic, ValueKind::Text, b"1 Main St").expect("active then");
    assert!(shredded_token.contains(".k-2026-08."));
    let inventory = run(&dir, &["--policy", p, "--env-file", e, "keys"], "");
    assert_eq!(inventory.status, 0, "{}", inventory.stderr);
    let row = |out: &str, id: &str| out.lines().find(|l| l.starts_with(&format!("{id} "))).unwrap_or_else(|| panic!("no row {id} in\n{out}")).to_string();
    assert!(row(&inventory.stdout, "k-2026-08").contains("expired — delete now"), "{}", inventory.stdout);
    assert!(row(&inventory.stdout, "k-2026-09").contains("readable"));
    assert!(row(&inventory.stdout, "k-2026-10").contains(" active "));
    assert!(row(&inventory.stdout, "k-2026-11").contains("pending"));
    for key in all {
        assert!(row(&inventory.stdout, key.id).contains(&fingerprint(&key.material)), "{}", inventory.stdout);
        assert!(!inventory.stdout.contains(&STANDARD.encode(key.material)), "material in the inventory");
    }
    let dates = row(&inventory.stdout, "k-2026-08");
    assert!(dates.contains(&day(-121)) && dates.contains(&day(-120)) && dates.contains(&day(-2)), "{}", inventory.stdout);
    assert!(inventory.stdout.contains("! k-2026-08: past its notAfter: its tokens are refused; delete it: spapi-guard keys shred k-2026-08"), "{}", inventory.stdout);
    assert!(inventory.stdout.contains(&format!("address: active keys until {}", day(160))), "{}", inventory.stdout);

    // An active key cannot be shredded; a readable one only with --force.
    let refused = run(&dir, &["--policy", p, "--env-file", e, "keys", "shred", "k-2026-10", "--by", "Jane Operator"], "");
    assert_eq!(refused.status, 1);
    assert!(refused.stderr.contains("key k-2026-10 is active (it makes the new tokens of address)"), "{}", refused.stderr);
    let early = run(&dir, &["--policy", p, "--env-file", e, "keys", "shred", "k-2026-09", "--by", "Jane Operator"], "");
    assert!(early.status == 1 && early.stderr.contains(&format!("in their retention period until {}", day(30))), "{}", early.stderr);

    // The expired key: the record, and what to remove where.
    let shred = run(&dir, &["--policy", p, "--env-file", e, "keys", "shred", "k-2026-08", "--by", "Jane Operator <jane@example.com>", "--approved-by", "DPO"], "");
    assert_eq!(shred.status, 0, "{}", shred.stderr);
    let records = std::fs::read_to_string(dir.join("key-deletions.jsonl")).expect("records");
    let record: Value = serde_json::from_str(records.lines().next().expect("one record")).expect("json");
    assert_eq!(record["record"], "spapi-guard key deletion");
    assert_eq!(record["key_id"], "k-2026-08");
    assert_eq!(record["fingerprint"], fingerprint(&expired.material));
    assert_eq!(record["classes"], json!(["address"]));
    assert_eq!((record["created"].as_str(), record["active_from"].as_str(), record["not_after"].as_str()), (Some(&*day(-121)), Some(&*day(-120)), Some(&*day(-2))));
    assert_eq!((record["deleted_by"].as_str(), record["approved_by"].as_str()), (Some("Jane Operator <jane@example.com>"), Some("DPO")));
    assert_eq!(record["state_when_deleted"], "expired");
    assert_eq!(record["variable"], "SPAPI_GUARD_KEY_K_2026_08");
    assert_eq!(record["previous_record_sha256"], Value::Null);
    assert!(record["deleted_at"].as_str().is_some_and(|t| t.starts_with(&day(0))));
    assert!(!records.contains(&STANDARD.encode(expired.material)));
    assert!(shred.stdout.contains("Remove keys.ring[0] (id k-2026-08)") && shred.stdout.contains("stop passing SPAPI_GUARD_KEY_K_2026_08 to Envoy"), "{}", shred.stdout);
    assert!(shred.stdout.contains("Delete the secret SPAPI_GUARD_KEY_K_2026_08 from your secret store"), "{}", shred.stdout);

    // Still in the policy: flagged. Removed from the policy: listed as deleted, from the record.
    let flagged = run(&dir, &["--policy", p, "--env-file", e, "keys"], "");
    assert!(row(&flagged.stdout, "k-2026-08").contains("deleted — still in the policy"), "{}", flagged.stdout);
    assert!(flagged.stdout.contains("its material is still in the environment (SPAPI_GUARD_KEY_K_2026_08)"), "{}", flagged.stdout);
    let (policy, env) = setup(&dir, &[&readable, &active, &pending, &tax]);
    let (p, e) = (policy.to_str().expect("path"), env.to_str().expect("path"));
    let after = run(&dir, &["--policy", p, "--env-file", e, "keys"], "");
    assert!(row(&after.stdout, "k-2026-08").contains(&format!("deleted {}", day(0))), "{}", after.stdout);
    assert!(row(&after.stdout, "k-2026-08").contains(&fingerprint(&expired.material)));
    // Deleted: its tokens open nowhere (here: the command line with the new ring).
    let gone = run(&dir, &["--policy", p, "--env-file", e, "detokenize", "--json"], &shredded_token);
    assert!(gone.status == 1 && gone.stdout.contains(r#""error":"unknown_key""#), "{}", gone.stdout);
    let listed: Value = serde_json::from_str(&run(&dir, &["--policy", p, "--env-file", e, "keys", "--json"], "").stdout).expect("json");
    let states: Vec<(&str, &str)> = listed.as_array().expect("array").iter().map(|k| (k["id"].as_str().unwrap_or(""), k["state"].as_str().unwrap_or(""))).collect();
    assert_eq!(states, [("k-2026-09", "readable"), ("k-2026-10", "active"), ("k-2026-11", "pending"), ("tax-2026", "active"), ("k-2026-08", "deleted")]);

    // A second record chains to the first; editing the file is detected.
    let second = run(&dir, &["--policy", p, "--env-file", e, "keys", "shred", "k-2026-09", "--by", "Jane Operator", "--force", "--reason", "incident 42"], "");
    assert_eq!(second.status, 0, "{}", second.stderr);
    let records = std::fs::read_to_string(dir.join("key-deletions.jsonl")).expect("records");
    let lines: Vec<&str> = records.lines().collect();
    let second: Value = serde_json::from_str(lines[1]).expect("json");
    assert_eq!(second["previous_record_sha256"].as_str().map(str::len), Some(64));
    std::fs::write(dir.join("key-deletions.jsonl"), records.replace("Jane Operator <jane@example.com>", "Somebody Else")).expect("tamper");
    let tampered = run(&dir, &["--policy", p, "--env-file", e, "keys"], "");
    assert!(tampered.status == 1 && tampered.stderr.contains("record 2 does not follow record 1: the file was edited"), "{}", tampered.stderr);
}

#[test]
fn lint_prints_the_filters_own_refusals_and_warnings() {
    let dir = workdir("lint");
    let (a, b) = (Key::new("k1", &EVERY, -10, 60), Key::new("k2", &["address"], -10, 60));
    let (policy, env) = setup(&dir, &[&a, &b]);
    let (p, e) = (policy.to_str().expect("path"), env.to_str().expect("path"));
    let refused = run(&dir, &["--policy", p, "--env-file", e, "lint"], "");
    assert_eq!(refused.status, 1);
    assert!(
        refused.stdout.contains(&format!("spapi-guard: configuration refused: keys.ring[1].activeFrom: {} is also the activeFrom of keys.ring[0] (k1) for address", day(-10))),
        "{}",
        refused.stdout
    );
    let (expired, current) = (Key::new("k-old", &EVERY, -90, -3), Key::new("k-new", &EVERY, -30, 20));
    let (policy, env) = setup(&dir, &[&expired, &current]);
    let (p, e) = (policy.to_str().expect("path"), env.to_str().expect("path"));
    let warned = run(&dir, &["--policy", p, "--env-file", e, "lint"], "");
    assert_eq!(warned.status, 0, "{}{}", warned.stdout, warned.stderr);
    assert!(warned.stdout.contains("active keys: k-new for every class"), "{}", warned.stdout);
    assert!(warned.stdout.contains(&format!("spapi-guard: configuration warning: keys.ring[0].notAfter: key k-old expired on {}", day(-3))), "{}", warned.stdout);
    assert!(
        warned.stdout.contains(&format!(
            "configuration warning: keys.ring: no key is active for name, email, phone, address, tax_id, gift_message, company, other after {} (in 20 days)",
            day(20)
        )),
        "{}",
        warned.stdout
    );
    assert_eq!(run(&dir, &["--policy", p, "--env-file", e, "lint", "--strict"], "").status, 2);
    // Without the keys: the variables are reported, the rest checked.
    let missing = run(&dir, &["--policy", p, "lint"], "");
    assert!(missing.status == 1 && missing.stdout.contains("keys.ring[0].env: environment variable SPAPI_GUARD_KEY_K_OLD is not set"), "{}", missing.stdout);
    let without = run(&dir, &["--policy", p, "lint", "--without-keys"], "");
    assert_eq!(without.status, 0, "{}", without.stdout);
    assert!(without.stdout.contains("keys not checked (--without-keys): SPAPI_GUARD_KEY_K_NEW, SPAPI_GUARD_KEY_K_OLD"), "{}", without.stdout);
}

#[test]
fn catalog_lists_operations_pii_paths_and_classes() {
    let dir = workdir("catalog");
    let repo = env!("CARGO_MANIFEST_DIR");
    let policy = format!("{repo}/policies/default.json");
    let out = run(&dir, &["--policy", &policy, "catalog", "--operation", "orders-v0.getOrderAddress"], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("orders-v0.getOrderAddress  GET /orders/v0/orders/{orderId}/address  (restricted: RDT)\n"), "{}", out.stdout);
    assert!(out.stdout.contains("  name         $.payload.ShippingAddress.Name\n"), "{}", out.stdout);
    let all: Value = serde_json::from_str(&run(&dir, &["--policy", &policy, "catalog", "--json"], "").stdout).expect("json");
    let g = Guard::load(&std::fs::read(&policy).expect("policy"), &|_| Some(STANDARD.encode(random_key()))).expect("loads");
    assert_eq!(all.as_array().map(Vec::len), Some(g.catalog.operations.len()), "every operation of the filter's catalog");
    let emails = run(&dir, &["--policy", &policy, "catalog", "--class", "email"], "");
    assert!(emails.stdout.contains("orders-v0.getOrders") && emails.stdout.contains("query parameter BuyerEmail"), "{}", emails.stdout);
    assert!(!emails.stdout.contains("  name "), "{}", emails.stdout);
}

#[test]
fn catalog_and_lint_read_the_policys_third_party_upstreams() {
    let dir = workdir("catalog-upstreams");
    let mut policy: Value = serde_json::from_str(include_str!("../policies/default.json")).expect("policy");
    policy["upstreams"] = json!({"carrier": {"routePrefix": "/upstreams/carrier/", "address": {"host": "api.carrier.example", "port": 443},
        "tls": {"caFile": "/etc/spapi-guard/carrier-ca.pem"},
        "operations": [{"id": "createShipment", "method": "POST", "pathTemplate": "/v1/shipments", "responsePii": [{"jsonpath": "$.label.shipTo.name", "class": "name"}]}]}});
    let file = dir.join("policy.json");
    std::fs::write(&file, policy.to_string()).expect("write");
    let file = file.display().to_string();
    let out = run(&dir, &["--policy", &file, "catalog", "--operation", "carrier."], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("carrier.createShipment  POST /upstreams/carrier/v1/shipments"), "{}", out.stdout);
    assert!(out.stdout.contains("$.label.shipTo.name"), "{}", out.stdout);
    policy["upstreams"]["carrier"]["routePrefix"] = json!("/orders/v0/");
    std::fs::write(dir.join("policy.json"), policy.to_string()).expect("write");
    let lint = run(&dir, &["--policy", &file, "lint", "--without-keys"], "");
    assert_ne!(lint.status, 0);
    assert!(lint.stdout.contains("upstreams.carrier.routePrefix: '/orders/v0/' is also where"), "{}{}", lint.stdout, lint.stderr);
}

/// Validates one JSON document against a schema of docs/ with the Python validator the audit tests use.
fn assert_schema_valid(dir: &Path, doc: &Value, schema: &str) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = dir.join("doc.jsonl");
    std::fs::write(&file, format!("{doc}\n")).expect("write");
    let out = Command::new(repo.join(".venv/bin/python")).arg(repo.join("tests/validate_events.py")).arg(&file).arg(repo.join(schema)).output().expect("python");
    assert!(out.status.success(), "{schema}: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn record_of_processing_describes_each_caller_in_markdown_and_json() {
    let dir = workdir("record");
    let repo = env!("CARGO_MANIFEST_DIR");
    for name in ["default", "production.example"] {
        let policy = format!("{repo}/policies/{name}.json");
        let bytes = std::fs::read(&policy).expect("policy");
        // No key variable is set: the record needs none.
        let json = run(&dir, &["--policy", &policy, "record-of-processing", "--format", "json", "--at", "2026-11-29"], "");
        assert_eq!(json.status, 0, "{name}: {}", json.stderr);
        let record: Value = serde_json::from_str(&json.stdout).expect("json");
        assert_schema_valid(&dir, &record, "docs/processing-record.schema.json");
        let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!((record["policy"]["sha256"].as_str(), record["as_of"].as_str()), (Some(&*digest), Some("2026-11-29")));
        // Each caller's operations are exactly those the filter lets it call.
        let g = Guard::load(&bytes, &|_| Some(STANDARD.encode(random_key()))).expect("loads");
        let callers = record["callers"].as_array().expect("callers");
        assert_eq!(callers.len(), g.access.callers.len());
        for (entry, caller) in callers.iter().zip(&g.access.callers) {
            assert_eq!(entry["id"], caller.id.as_str());
            let listed: Vec<&str> = entry["operations"].as_array().expect("ops").iter().map(|o| o["id"].as_str().expect("id")).collect();
            let allowed: Vec<&str> = g.catalog.operations.iter().enumerate().filter(|(i, _)| caller.may_call(*i)).map(|(_, op)| op.id.as_str()).collect();
            assert_eq!(listed, allowed, "{name}: {}", caller.id);
            for (class, action) in caller.actions.iter() {
                let form = entry["pii"].as_array().expect("pii").iter().find(|p| p["class"] == class.as_str()).expect("every class");
                assert_eq!(form["form"], action.name(), "{name}: {} {class}", caller.id);
            }
        }
        // The analytics role excludes restricted operations though its wildcards match them.
        let analytics = callers.iter().find(|c| c["roles"] == json!(["analytics"])).expect("analytics");
        let ops = analytics["operations"].as_array().expect("ops");
        assert!(!ops.is_empty() && ops.iter().all(|o| o["restricted"] == false), "{ops:?}");

        let md = run(&dir, &["--policy", &policy, "record-of-processing", "--at", "2026-11-29"], "");
        assert_eq!(md.status, 0, "{}", md.stderr);
        assert!(md.stdout.starts_with("# Record of processing: spapi-guard\n"), "{}", md.stdout);
        assert!(md.stdout.contains(&format!("| Policy SHA-256 | `{digest}` |")));
        for caller in &g.access.callers {
            assert!(md.stdout.contains(&format!("## Caller `{}`", caller.id)), "{name}: no section for {}", caller.id);
        }
        assert!(
            md.stdout
                .contains("| `orders-v0.getOrderAddress` | GET `/orders/v0/orders/{orderId}/address` | yes (RDT) | — | removed: name, phone, company, other; clear: address |"),
            "{}",
            md.stdout
        );
        let key = g.tokens.schedule().keys()[0].id.clone();
        assert!(
            md.stdout.contains(&format!(
                "| {key} | `SPAPI_GUARD_KEY_{}` | name, email, phone, address, tax_id, gift_message, company, other | 2026-01-01 | 2026-01-01 | 2030-12-31 | active |",
                key.to_uppercase().replace('-', "_")
            )),
            "{}",
            md.stdout
        );
    }
    // -o writes the file; --catalog adds the paths.
    let out = dir.join("record.json");
    let written =
        run(&dir, &["--policy", &format!("{repo}/policies/default.json"), "record-of-processing", "--format", "json", "--catalog", "-o", out.to_str().expect("path")], "");
    assert!(written.status == 0 && written.stdout.is_empty() && written.stderr.contains("written to"), "{}", written.stderr);
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("written")).expect("json");
    assert!(record["catalog"].as_array().is_some_and(|c| c.iter().any(|op| op["paths"].as_array().is_some_and(|p| p.iter().any(|p| p["jsonpath"] == "$.payload.BuyerEmail")))));
    assert_schema_valid(&dir, &record, "docs/processing-record.schema.json");
}

#[test]
fn record_of_processing_refuses_a_bad_policy_naming_the_field() {
    let dir = workdir("record-refused");
    let mut policy: Value = serde_json::from_str(include_str!("../policies/default.json")).expect("policy");
    policy["roles"]["analytics"]["operations"] = json!(["orders-v0.*", "order-v0.getOrder"]);
    let file = dir.join("bad.json");
    std::fs::write(&file, policy.to_string()).expect("write");
    for format in ["markdown", "json"] {
        let out = run(&dir, &["--policy", "bad.json", "record-of-processing", "--format", format], "");
        assert_eq!((out.status, out.stdout.as_str()), (1, ""), "{format}");
        assert!(out.stderr.contains("bad.json: configuration refused: roles.analytics.operations[1]: 'order-v0.getOrder' matches no operation of the catalog"), "{}", out.stderr);
    }
    let date = run(&dir, &["record-of-processing", "--at", "29.11.2026"], "");
    assert!(date.status == 1 && date.stderr.contains("--at 29.11.2026: not a date; write YYYY-MM-DD"), "{}", date.stderr);
}

/// The code blocks of the README's "The command line" section that show a command.
fn command_blocks(markdown: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in markdown.lines() {
        match (&mut current, line.starts_with("```")) {
            (None, true) => current = Some(Vec::new()),
            (Some(_), true) => blocks.extend(current.take().filter(|b| b.first().is_some_and(|l| l.starts_with("$ spapi-guard ")))),
            (Some(block), false) => block.push(line.to_string()),
            (None, false) => {}
        }
    }
    blocks
}

/// A Markdown section: the lines after `heading` up to the next heading of its level outside code blocks.
fn section(markdown: &str, heading: &str) -> String {
    let level = heading.split(' ').next().unwrap_or("##").to_string() + " ";
    let mut lines = markdown.lines().skip_while(|l| *l != heading).skip(1);
    let mut fenced = false;
    let mut out = String::new();
    for line in lines.by_ref() {
        fenced ^= line.starts_with("```");
        if !fenced && line.starts_with(&level) {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(!out.is_empty(), "no section {heading}");
    out
}

/// Whether `shown` is `actual` with runs of lines left out where `shown` has a line `…`.
fn matches_with_elisions(shown: &[String], actual: &[String]) -> bool {
    match shown.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "…" => (0..=actual.len()).any(|skip| matches_with_elisions(rest, &actual[skip..])),
        Some((first, rest)) => actual.first() == Some(first) && matches_with_elisions(rest, &actual[1..]),
    }
}

#[test]
fn the_readme_shows_what_the_command_line_prints() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = workdir("readme");
    let out = Command::new("bash").arg(repo.join("scripts/readme-cli-examples.sh")).arg(env!("CARGO_BIN_EXE_spapi-guard")).arg(&dir).output().expect("bash");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let actual = command_blocks(&String::from_utf8_lossy(&out.stdout));
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("README");
    let shown = command_blocks(&section(&readme, "## The command line"));
    let commands = |blocks: &[Vec<String>]| blocks.iter().map(|b| b[0].clone()).collect::<Vec<_>>();
    assert_eq!(commands(&shown), commands(&actual), "the README shows other commands than scripts/readme-cli-examples.sh runs");
    for (shown, actual) in shown.iter().zip(&actual) {
        assert!(
            matches_with_elisions(shown, actual),
            "README block `{}` differs from what the command line prints; paste this from `bash scripts/readme-cli-examples.sh`:\n{}",
            shown[0],
            actual.join("\n")
        );
    }
    // Every subcommand is shown.
    for sub in ["keygen", "keys", "keys shred", "tokenize", "detokenize", "lint", "catalog", "record-of-processing"] {
        assert!(shown.iter().flatten().any(|l| l.starts_with(&format!("$ spapi-guard {sub} "))), "no example of {sub}");
    }
}
