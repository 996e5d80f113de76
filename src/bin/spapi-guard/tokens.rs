//! `tokenize` (the data-subject lookup) and `detokenize` (for operators holding the keys), with
//! the filter's token engine loaded by the filter's loader.
use std::io::{BufRead, Write};
use std::process::ExitCode;

use serde_json::json;

use spapi_guard::guard::Guard;
use spapi_guard::keyring::KeyState;
use spapi_guard::pii::PiiClass;
use spapi_guard::policy::Action;
use spapi_guard::tokens::{Mode, ValueKind, HASH_PREFIX};

use crate::cli::{fail, Context, DetokenizeArgs, Failure, Output, Result, TokenizeArgs};

/// The policy and its keys, as the filter loads them (the dates are checked against each other;
/// tokens are made and opened at the current time).
fn load(ctx: &Context) -> Result<Guard> {
    Guard::load(&ctx.policy_bytes()?, &|name| ctx.var(name)).map_err(|e| Failure(format!("{}: configuration refused: {e}", ctx.policy_name())))
}

pub fn tokenize(ctx: &Context, args: &TokenizeArgs) -> Result<ExitCode> {
    let Some(class) = PiiClass::parse(&args.class) else { return fail(format!("--class {}: not a PII class; use one of: {}", args.class, PiiClass::names())) };
    let guard = load(ctx)?;
    let output = match (args.output, guard.policy.action(class)) {
        (Some(output), _) => output,
        (None, Action::Tokenize(Mode::Deterministic)) => Output::Token,
        (None, Action::Hash) => Output::Hash,
        (None, Action::Tokenize(Mode::Randomized)) => {
            return fail(format!(
                "{class} is tokenized randomized (classes.{class}.mode): equal values give different tokens, so no value can be looked up by its token; find the rows by another column (the order id)"
            ))
        }
        (None, other) => {
            return fail(format!(
                "the policy's action for {class} is {} (classes.{class}.action): applications hold no token of it; for a role granted tokenize or hash, pass --as token or --as hash",
                other.name()
            ))
        }
    };
    let now = ctx.now_ms;
    let schedule = guard.tokens.schedule();
    let active = guard.tokens.active_keys(now);
    let mut keys: Vec<usize> = Vec::new();
    match active.get(class) {
        Some(index) => keys.push(index),
        None if !args.all => return fail(format!("no key is active for {class} now (see spapi-guard keys); pass --all for the tokens of the keys that can still be read")),
        None => {}
    }
    if args.all {
        // Every key that made tokens of the class and whose tokens still open, newest first.
        let mut older: Vec<usize> = (0..schedule.keys().len())
            .filter(|&i| !keys.contains(&i) && schedule.keys()[i].classes[class] && matches!(schedule.state(i, now), KeyState::Readable | KeyState::Active))
            .collect();
        older.sort_by_key(|&i| std::cmp::Reverse(schedule.keys()[i].active_from_ms));
        keys.extend(older);
    }
    let values: Vec<String> = if args.values.is_empty() {
        std::io::stdin().lock().lines().collect::<std::io::Result<Vec<String>>>()?.into_iter().map(|l| l.trim_end_matches('\r').to_string()).collect()
    } else {
        args.values.clone()
    };
    let kind = if args.raw_json { ValueKind::RawJson } else { ValueKind::Text };
    let mut out = std::io::stdout().lock();
    for value in &values {
        if args.raw_json && serde_json::from_str::<serde_json::Value>(value).is_err() {
            return fail("--raw-json: a value is not JSON");
        }
        for &index in &keys {
            let with = active.with(class, index);
            let mut token = String::new();
            match output {
                Output::Token => guard.tokens.seal_into(&with, class, Mode::Deterministic, kind, value.as_bytes(), &mut Vec::new(), &mut token),
                Output::Hash => guard.tokens.hash_into(&with, class, kind, value.as_bytes(), &mut token),
            }
            writeln!(out, "{token}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn detokenize(ctx: &Context, args: &DetokenizeArgs) -> Result<ExitCode> {
    let guard = load(ctx)?;
    let now = ctx.now_ms;
    let (mut opened, mut refused) = (0usize, Vec::new());
    let mut out = std::io::stdout().lock();
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        let token = line.trim();
        if token.is_empty() {
            continue;
        }
        let number = n + 1;
        let result = if token.starts_with(HASH_PREFIX) {
            Err(("irreversible_hash", "a keyed hash (spgh2.) cannot be opened by anyone: look values up with spapi-guard tokenize --as hash".to_string()))
        } else {
            guard.tokens.open(token, now).map_err(|e| (e.code(), e.to_string()))
        };
        match result {
            Ok(o) => {
                opened += 1;
                let value = String::from_utf8_lossy(&o.plaintext).into_owned();
                if args.json {
                    let raw = o.kind == ValueKind::RawJson;
                    writeln!(out, "{}", json!({"line": number, "class": o.class.as_str(), "key_id": o.key_id, "raw_json": raw, "value": value}))?;
                } else {
                    writeln!(out, "{value}")?;
                }
            }
            Err((code, message)) => {
                refused.push(code);
                if args.json {
                    writeln!(out, "{}", json!({"line": number, "error": code, "message": message}))?;
                } else {
                    // An empty line keeps the output aligned with the input.
                    writeln!(out)?;
                    eprintln!("spapi-guard: line {number}: {message}");
                }
            }
        }
    }
    out.flush()?;
    let expired = refused.iter().filter(|c| **c == "token_expired").count();
    eprintln!("spapi-guard: {opened} opened, {} refused ({expired} of expired keys)", refused.len());
    Ok(if refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
