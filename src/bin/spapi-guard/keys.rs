//! `keygen`, `keys` (the inventory) and `keys shred` (crypto-shredding, with its record).
use std::io::Write;
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use spapi_guard::audit::rfc3339_ms;
use spapi_guard::keyring::{display_instant, read_material, KeyMeta, KeyState, Schedule};
use spapi_guard::pii::PiiClass;
use spapi_guard::tokens::{fingerprint, KEY_LEN};

use crate::cli::{fail, Context, Failure, KeygenArgs, KeysArgs, Result, ShredArgs};

/// What a deletion record is (its `record` member).
const RECORD_KIND: &str = "spapi-guard key deletion";

pub fn keygen(ctx: &Context, args: &KeygenArgs) -> Result<ExitCode> {
    let mut key = [0u8; KEY_LEN];
    // The loader refuses keys whose bytes are all equal; a random key never is, but check.
    while key.iter().all(|&b| b == key[0]) {
        getrandom::fill(&mut key).map_err(|e| Failure(format!("the random source failed: {e}")))?;
    }
    println!("{}", STANDARD.encode(key));
    eprintln!("spapi-guard: a new 256-bit key, fingerprint {}.", fingerprint(&key));
    eprintln!("Store it in your secret store now: it is printed once and saved nowhere. Give Envoy the variable, never the policy.");
    if let Some(id) = &args.id {
        let var: String = format!("SPAPI_GUARD_KEY_{id}").to_ascii_uppercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let today = display_instant(ctx.now_ms / 86_400_000 * 86_400_000);
        let id = serde_json::to_string(id)?;
        eprintln!(r#"keys.ring entry: {{"id": {id}, "env": "{var}", "classes": [...], "created": "{today}", "activeFrom": "YYYY-MM-DD", "notAfter": "YYYY-MM-DD"}}"#);
    }
    Ok(ExitCode::SUCCESS)
}

/// One row of the inventory.
struct Row {
    id: String,
    classes: String,
    created: String,
    active_from: String,
    not_after: String,
    fingerprint: String,
    state: String,
    /// For --json.
    json: Value,
}

fn classes_text(classes: &[PiiClass]) -> String {
    let missing: Vec<&str> = PiiClass::ALL.into_iter().filter(|c| !classes.contains(c)).map(PiiClass::as_str).collect();
    match missing.len() {
        0 => "every class".to_string(),
        1 | 2 => format!("all but {}", missing.join(",")),
        _ => classes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(","),
    }
}

fn state_text(state: KeyState) -> &'static str {
    match state {
        KeyState::Pending => "pending",
        KeyState::Active => "active",
        KeyState::Readable => "readable",
        KeyState::Expired => "expired — delete now",
    }
}

/// The deletion records of the file (one JSON object per line), with the file's lines.
fn read_records(ctx: &Context, path: &std::path::Path) -> Result<Vec<(Value, String)>> {
    let _ = ctx;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return fail(format!("cannot read the deletion records {}: {e}", path.display())),
    };
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line).map_err(|e| Failure(format!("{} line {}: not a deletion record: {e}", path.display(), n + 1)))?;
        if value["record"] != RECORD_KIND {
            return fail(format!("{} line {}: not a deletion record", path.display(), n + 1));
        }
        records.push((value, line.to_string()));
    }
    Ok(records)
}

/// Checks the chain of record hashes: each record names the SHA-256 of the line before it.
fn check_chain(path: &std::path::Path, records: &[(Value, String)]) -> Result<()> {
    let mut previous: Option<String> = None;
    for (i, (value, line)) in records.iter().enumerate() {
        if value["previous_record_sha256"].as_str().map(str::to_string) != previous {
            return fail(format!("{}: record {} does not follow record {}: the file was edited; restore it from your audit store", path.display(), i + 1, i));
        }
        previous = Some(sha256_hex(line.as_bytes()));
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn inventory(ctx: &Context, args: &KeysArgs) -> Result<ExitCode> {
    let doc = ctx.policy_doc()?;
    let schedule = Schedule::from_doc(&doc.keys).map_err(|e| Failure(format!("{}: configuration refused: {e}", ctx.policy_name())))?;
    let records = read_records(ctx, &args.records)?;
    check_chain(&args.records, &records)?;
    let now = ctx.now_ms;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (index, key) in schedule.keys().iter().enumerate() {
        let deleted = records.iter().rev().find(|(r, _)| r["key_id"] == key.id.as_str());
        let material = read_material(key, &|name| ctx.var(name));
        let fp = match &material {
            Ok(material) => fingerprint(material),
            Err(_) => format!("({} not set)", key.env),
        };
        let state = schedule.state(index, now);
        let mut state_words = state_text(state).to_string();
        if let Some((record, _)) = deleted {
            state_words = "deleted — still in the policy".to_string();
            notes.push(format!("{}: deleted on {} but still in {} as {}: remove the entry", key.id, record["deleted_at"].as_str().unwrap_or("?"), ctx.policy_name(), key.field));
            if material.is_ok() {
                notes.push(format!("{}: its material is still in the environment ({}): delete it from the secret store", key.id, key.env));
            }
        } else if state == KeyState::Expired {
            notes.push(format!("{}: past its notAfter: its tokens are refused; delete it: spapi-guard keys shred {} --by \"<name>\"", key.id, key.id));
        }
        let classes = key.class_list();
        let dates = key.dates.as_ref();
        rows.push(Row {
            id: key.id.clone(),
            classes: classes_text(&classes),
            created: dates.map_or("-".into(), |d| d.created.clone()),
            active_from: dates.map_or(if key.active_from_ms.is_some() { "(active)" } else { "-" }.into(), |d| d.active_from.clone()),
            not_after: dates.map_or("-".into(), |d| d.not_after.clone()),
            fingerprint: fp.clone(),
            state: state_words.clone(),
            json: json!({
                "id": key.id, "env": key.env, "classes": classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "created": dates.map(|d| &d.created), "active_from": dates.map(|d| &d.active_from), "not_after": dates.map(|d| &d.not_after),
                "fingerprint": material.as_ref().ok().map(fingerprint), "state": if deleted.is_some() { "deleted" } else { state.as_str() },
            }),
        });
    }
    // Keys deleted and gone from the policy: from the records.
    for (record, _) in &records {
        let id = record["key_id"].as_str().unwrap_or("?");
        if schedule.find(id).is_some() || rows.iter().any(|r| r.id == id) {
            continue;
        }
        let text = |name: &str| record[name].as_str().unwrap_or("-").to_string();
        let classes: Vec<PiiClass> = record["classes"].as_array().map(|a| a.iter().filter_map(|c| c.as_str().and_then(PiiClass::parse)).collect()).unwrap_or_default();
        let deleted_on = text("deleted_at").get(..10).unwrap_or("?").to_string();
        rows.push(Row {
            id: id.to_string(),
            classes: classes_text(&classes),
            created: text("created"),
            active_from: text("active_from"),
            not_after: text("not_after"),
            fingerprint: text("fingerprint"),
            state: format!("deleted {deleted_on}"),
            json: json!({"id": id, "classes": record["classes"], "created": record["created"], "active_from": record["active_from"], "not_after": record["not_after"],
                          "fingerprint": record["fingerprint"], "state": "deleted", "deleted_at": record["deleted_at"], "deleted_by": record["deleted_by"]}),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows.iter().map(|r| &r.json).collect::<Vec<_>>())?);
        return Ok(ExitCode::SUCCESS);
    }
    print_table(&rows);
    println!();
    println!("{}", coverage(&schedule, now));
    for note in notes {
        println!("! {note}");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[Row]) {
    let header = ["ID", "STATE", "CLASSES", "CREATED", "ACTIVE FROM", "NOT AFTER", "FINGERPRINT"];
    let cells: Vec<[&str; 7]> = rows.iter().map(|r| [&*r.id, &*r.state, &*r.classes, &*r.created, &*r.active_from, &*r.not_after, &*r.fingerprint]).collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        out
    };
    println!("{}", line(header));
    for row in cells {
        println!("{}", line(row));
    }
}

/// Until when each class has an active key, grouped.
fn coverage(schedule: &Schedule, now: u64) -> String {
    let mut ends: Vec<(Option<u64>, Vec<&str>)> = Vec::new();
    for class in PiiClass::ALL {
        let until = schedule.active_until(class, now);
        match ends.iter_mut().find(|(u, _)| *u == until) {
            Some((_, classes)) => classes.push(class.as_str()),
            None => ends.push((until, vec![class.as_str()])),
        }
    }
    let lines: Vec<String> = ends
        .into_iter()
        .map(|(until, classes)| {
            let classes = if classes.len() == PiiClass::ALL.len() { "every class".to_string() } else { classes.join(", ") };
            match until {
                None => format!("{classes}: NO ACTIVE KEY (responses fail closed): add a key now"),
                Some(u64::MAX) => format!("{classes}: an active key without dates"),
                Some(until) => format!("{classes}: active keys until {} (in {} days)", display_instant(until), until.saturating_sub(now) / 86_400_000),
            }
        })
        .collect();
    lines.join("\n")
}

/// A deletion record, one JSON line of the records file (members in this order).
#[derive(serde::Serialize)]
struct DeletionRecord<'a> {
    record: &'static str,
    version: u32,
    key_id: &'a str,
    fingerprint: String,
    classes: Vec<&'static str>,
    created: Option<&'a str>,
    active_from: Option<&'a str>,
    not_after: Option<&'a str>,
    state_when_deleted: &'static str,
    deleted_at: String,
    deleted_by: &'a str,
    approved_by: Option<&'a str>,
    reason: &'a str,
    policy: String,
    variable: &'a str,
    previous_record_sha256: Option<String>,
}

pub fn shred(ctx: &Context, keys: &KeysArgs, args: &ShredArgs) -> Result<ExitCode> {
    let doc = ctx.policy_doc()?;
    let schedule = Schedule::from_doc(&doc.keys).map_err(|e| Failure(format!("{}: configuration refused: {e}", ctx.policy_name())))?;
    let records = read_records(ctx, &keys.records)?;
    check_chain(&keys.records, &records)?;
    if args.by.trim().is_empty() {
        return fail("--by must name who signs the deletion off");
    }
    let Some(index) = schedule.find(&args.id) else {
        if records.iter().any(|(r, _)| r["key_id"] == args.id.as_str()) {
            return fail(format!("key {} is already deleted (see {})", args.id, keys.records.display()));
        }
        return fail(format!("{} has no key {}; its keys: {}", ctx.policy_name(), args.id, schedule.keys().iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(", ")));
    };
    let key: &KeyMeta = &schedule.keys()[index];
    if records.iter().any(|(r, _)| r["key_id"] == args.id.as_str()) {
        return fail(format!(
            "key {} already has a deletion record in {}: finish its deletion (remove {} from the policy and {} from the secret store)",
            key.id,
            keys.records.display(),
            key.field,
            key.env
        ));
    }
    let now = ctx.now_ms;
    if ctx.clock_set {
        eprintln!("spapi-guard: {} is set: the deletion record carries that time, not the system's", crate::cli::CLOCK_VAR);
    }
    let state = schedule.state(index, now);
    match state {
        KeyState::Active => {
            let classes: Vec<&str> = PiiClass::ALL.into_iter().filter(|&c| schedule.active_at(c, now) == Some(index)).map(PiiClass::as_str).collect();
            return fail(format!(
                "key {} is active (it makes the new tokens of {}): a key is deleted once a successor has taken its classes over, after its notAfter (earlier with --force)",
                key.id,
                classes.join(", ")
            ));
        }
        KeyState::Readable if !args.force => {
            return fail(format!(
                "key {}'s tokens are in their retention period until {} (its notAfter): deleting it now makes them unreadable early; pass --force if that is the intent (a deletion request, an incident)",
                key.id,
                key.dates.as_ref().map_or("?", |d| &d.not_after)
            ));
        }
        KeyState::Pending | KeyState::Readable | KeyState::Expired => {}
    }
    if schedule.is_short_form() {
        return fail("the short form of keys (keys.active, keys.env) has no dates to record; move the keys into keys.ring first (docs/POLICY.md#keys)");
    }
    let material = read_material(key, &|name| ctx.var(name)).map_err(|e| {
        Failure(format!("{e}; the fingerprint of the key to delete is part of the record: run this where {} is set (or use --env-file), before deleting the secret", key.env))
    })?;
    let dates = key.dates.as_ref();
    let previous = records.last().map(|(_, line)| sha256_hex(line.as_bytes()));
    let record = DeletionRecord {
        record: RECORD_KIND,
        version: 1,
        key_id: &key.id,
        fingerprint: fingerprint(&material),
        classes: key.class_list().iter().map(|c| c.as_str()).collect(),
        created: dates.map(|d| d.created.as_str()),
        active_from: dates.map(|d| d.active_from.as_str()),
        not_after: dates.map(|d| d.not_after.as_str()),
        state_when_deleted: state.as_str(),
        deleted_at: format!("{}Z", &rfc3339_ms(now)[..19]),
        deleted_by: args.by.trim(),
        approved_by: args.approved_by.as_deref().map(str::trim),
        reason: &args.reason,
        policy: ctx.policy_name(),
        variable: &key.env,
        previous_record_sha256: previous,
    };
    let line = serde_json::to_string(&record)?;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&keys.records).map_err(|e| Failure(format!("cannot write {}: {e}", keys.records.display())))?;
    writeln!(file, "{line}").map_err(|e| Failure(format!("cannot write {}: {e}", keys.records.display())))?;
    file.sync_all().map_err(|e| Failure(format!("cannot write {}: {e}", keys.records.display())))?;
    let records_path = keys.records.display();
    println!("Deletion record of key {} appended to {records_path} (record sha256 {}):", key.id, sha256_hex(line.as_bytes()));
    println!("{}", serde_json::to_string_pretty(&record)?);
    println!();
    println!("Now delete it, in this order: every token {} made becomes unreadable, in every copy (databases, backups, exports, logs).", key.id);
    println!("  1. Remove {} (id {}) from {} and stop passing {} to Envoy (docker-compose environment:, the Deployment's env,", key.field, key.id, ctx.policy_name(), key.env);
    println!("     .env files, CI variables); roll both out together (docs/POLICY.md#rotation). Envoy then no longer holds the key.");
    println!("  2. Delete the secret {} from your secret store, with every version and backup of it:", key.env);
    println!("       Kubernetes:  kubectl patch secret spapi-guard-keys --type=json -p '[{{\"op\":\"remove\",\"path\":\"/data/{}\"}}]'", key.env);
    println!("       AWS:         aws secretsmanager delete-secret --secret-id <its id> --force-delete-without-recovery");
    println!("       Vault (kv2): vault kv metadata delete <its path>");
    println!(
        "  3. Check: spapi-guard keys --policy {} --records {records_path} lists {} as deleted, and no environment holds a key with fingerprint {}.",
        ctx.policy_name(),
        key.id,
        fingerprint(&material)
    );
    println!("Keep {records_path} with your audit logs (DPP 2.6: tamper-evident storage); each record names the SHA-256 of the one before.");
    Ok(ExitCode::SUCCESS)
}
