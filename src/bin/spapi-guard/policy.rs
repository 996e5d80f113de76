//! `lint` (the filter's configuration step, run here) and `catalog`.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::process::ExitCode;

use serde_json::json;

use spapi_guard::catalog::{Catalog, CatalogOverrides};
use spapi_guard::exchange::{Host, Level};
use spapi_guard::keyring::Schedule;
use spapi_guard::lifecycle;
use spapi_guard::lockout::{LockState, Trigger};
use spapi_guard::pii::PiiClass;
use spapi_guard::tokens::KEY_LEN;

use crate::cli::{fail, CatalogArgs, Context, Failure, LintArgs, Result};

/// The host of `lint`: the filter's log lines, collected; no metrics, no shared state.
struct LintHost {
    now: u64,
    lines: RefCell<Vec<(Level, String)>>,
}

impl Host for LintHost {
    fn log(&self, level: Level, message: &str) {
        self.lines.borrow_mut().push((level, message.to_string()));
    }
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn count(&self, _: &str, _: &[(&str, &str)], _: u64) {}
    fn gauge(&self, _: &str, _: &[(&str, &str)], _: u64) {}
    fn lock_state(&self, _: &str) -> LockState {
        LockState::default()
    }
    fn update_lock(&self, _: &str, _: &dyn Fn(&mut LockState, u64) -> Trigger) -> Trigger {
        Trigger::None
    }
}

pub fn lint(ctx: &Context, args: &LintArgs) -> Result<ExitCode> {
    let config = ctx.policy_bytes()?;
    // --without-keys: a placeholder key (random, one per variable) for each variable not set.
    let mut placeholders: BTreeMap<String, String> = BTreeMap::new();
    if args.without_keys {
        if let Ok(doc) = spapi_guard::policy_doc::parse_doc(&config) {
            if let Ok(schedule) = Schedule::from_doc(&doc.keys) {
                for key in schedule.keys().iter().filter(|k| ctx.var(&k.env).is_none()) {
                    let mut material = [0u8; KEY_LEN];
                    getrandom::fill(&mut material).map_err(|e| Failure(format!("the random source failed: {e}")))?;
                    placeholders.insert(key.env.clone(), material.iter().map(|b| format!("{b:02x}")).collect());
                }
            }
        }
    }
    let host = LintHost { now: ctx.now_ms, lines: RefCell::new(Vec::new()) };
    let loaded = lifecycle::configure(&host, &config, &|name| ctx.var(name).or_else(|| placeholders.get(name).cloned()));
    let mut warnings = 0;
    for (level, line) in host.lines.borrow().iter() {
        if line.starts_with("spapi-guard event ") {
            continue;
        }
        if *level == Level::Warn {
            warnings += 1;
        }
        println!("{line}");
    }
    if !placeholders.is_empty() {
        println!("spapi-guard: lint: keys not checked (--without-keys): {}", placeholders.keys().cloned().collect::<Vec<_>>().join(", "));
    }
    let name = ctx.policy_name();
    Ok(match (loaded, warnings) {
        (None, _) => {
            eprintln!("spapi-guard: {name}: refused; Envoy would not load it");
            ExitCode::from(1)
        }
        (Some(_), 0) => {
            eprintln!("spapi-guard: {name}: loads, no warnings");
            ExitCode::SUCCESS
        }
        (Some(_), n) => {
            eprintln!("spapi-guard: {name}: loads, {n} warning(s)");
            if args.strict {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
    })
}

pub fn catalog(ctx: &Context, args: &CatalogArgs) -> Result<ExitCode> {
    let only_class = match &args.class {
        Some(name) => Some(PiiClass::parse(name).ok_or_else(|| Failure(format!("--class {name}: not a PII class; use one of: {}", PiiClass::names())))?),
        None => None,
    };
    let use_policy = !args.builtin && ctx.policy_path.exists();
    let catalog = if use_policy {
        let doc = ctx.policy_doc()?;
        // With the operations of the policy's third-party upstreams (`carrier.createShipment`).
        spapi_guard::guard::policy_catalog(&doc).map_err(|e| Failure(format!("{}: configuration refused: {e}", ctx.policy_name())))?.0
    } else {
        Catalog::build(&CatalogOverrides::default()).map_err(|e| Failure(e.to_string()))?
    };
    let operations: Vec<_> = catalog.operations.iter().filter(|op| args.operation.as_deref().is_none_or(|text| op.id.contains(text))).collect();
    if operations.is_empty() {
        return fail(format!("no operation id contains {}", args.operation.as_deref().unwrap_or("")));
    }
    let mut per_class: BTreeMap<&str, usize> = BTreeMap::new();
    let mut paths = 0;
    let mut listed = Vec::new();
    let mut text = String::new();
    for op in operations {
        let rules: Vec<_> = op.response_rules.iter().filter(|r| only_class.is_none_or(|c| r.class == c)).collect();
        let query: Vec<_> = op.query_pii.iter().filter(|(_, c)| only_class.is_none_or(|only| *c == only)).collect();
        if only_class.is_some() && rules.is_empty() && query.is_empty() {
            continue;
        }
        text.push_str(&format!("{}  {} {}{}\n", op.id, op.method, op.path_template, if op.restricted { "  (restricted: RDT)" } else { "" }));
        for rule in &rules {
            *per_class.entry(rule.class.as_str()).or_default() += 1;
            paths += 1;
            text.push_str(&format!("  {:<13}{}\n", rule.class.as_str(), rule.jsonpath));
        }
        for (param, class) in &query {
            text.push_str(&format!("  {:<13}query parameter {param}\n", class.as_str()));
        }
        listed.push(json!({
            "id": op.id, "method": op.method, "path_template": op.path_template, "restricted": op.restricted,
            "response_pii": rules.iter().map(|r| json!({"class": r.class.as_str(), "jsonpath": r.jsonpath, "data_element": r.data_element})).collect::<Vec<_>>(),
            "query_pii": query.iter().map(|(p, c)| json!({"param": p, "class": c.as_str()})).collect::<Vec<_>>(),
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{text}");
    let counts: Vec<String> = per_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
    println!(
        "{} operation{}, {paths} response PII paths ({}){}",
        listed.len(),
        if listed.len() == 1 { "" } else { "s" },
        counts.join(", "),
        if use_policy { format!("; with the catalog section of {}", ctx.policy_name()) } else { "; the built-in catalog".to_string() }
    );
    Ok(ExitCode::SUCCESS)
}
