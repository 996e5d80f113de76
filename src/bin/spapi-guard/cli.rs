//! Arguments (clap, derive) and what every subcommand shares: the policy file, the environment,
//! the clock, errors.
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};

use spapi_guard::keyring::parse_instant;
use spapi_guard::policy_doc::{parse_doc, PolicyDoc};

#[derive(Parser)]
#[command(
    name = "spapi-guard",
    version,
    about = "Operate spapi-guard: keys, tokens, policies, the SP-API catalog, the record of processing",
    long_about = "Operate spapi-guard: keys (generate, inventory, crypto-shred), tokens (data-subject lookups, \
                  detokenization for key holders), policies (lint with the filter's own loader, the record of processing) and the SP-API catalog.\n\n\
                  Key variables are read from the environment, as Envoy passes them to the filter, or from --env-file. \
                  SPAPI_GUARD_NOW=YYYY-MM-DD (or YYYY-MM-DDTHH:MM:SSZ) runs a subcommand as of that time instead of the system clock."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct Global {
    /// The policy (the filter's configuration).
    #[arg(long, global = true, default_value = "policies/default.json", value_name = "FILE")]
    pub policy: PathBuf,
    /// KEY=VALUE lines (a .env file) read before the process environment.
    #[arg(long, global = true, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate a 256-bit key, printed once (base64) for your secret store.
    Keygen(KeygenArgs),
    /// The key ring's inventory: ids, classes, dates, fingerprints, states; `keys shred ID` deletes one.
    Keys(KeysArgs),
    /// A value's deterministic token (or keyed hash) as the filter makes it: the data-subject lookup.
    Tokenize(TokenizeArgs),
    /// Tokens on stdin (one per line) to their values, for operators holding the keys.
    Detokenize(DetokenizeArgs),
    /// Check a policy with the filter's own loader: its refusals and warnings, word for word.
    Lint(LintArgs),
    /// The SP-API operations the filter knows, their PII paths and classes (with the policy's changes).
    Catalog(CatalogArgs),
    /// The record of processing (GDPR art. 30, DPP): per caller, operations, PII forms, reveals, limits.
    RecordOfProcessing(RecordArgs),
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Also print a keys.ring entry for this key id (to stderr).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
}

#[derive(Args)]
pub struct KeysArgs {
    /// The deletion records (JSON lines) `keys shred` appends to; their keys show as deleted.
    #[arg(long, global = true, default_value = "key-deletions.jsonl", value_name = "FILE")]
    pub records: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<KeysAction>,
}

#[derive(Subcommand)]
pub enum KeysAction {
    /// Record the deletion of a key (crypto-shredding) and say what to remove where.
    Shred(ShredArgs),
}

#[derive(Args)]
pub struct ShredArgs {
    /// The key id.
    pub id: String,
    /// Who signs the deletion off (name and contact).
    #[arg(long, value_name = "WHO")]
    pub by: String,
    /// Who approved it, if not the same person.
    #[arg(long, value_name = "WHO")]
    pub approved_by: Option<String>,
    /// Why (retention ended, data-subject request, incident…).
    #[arg(long, default_value = "retention period ended")]
    pub reason: String,
    /// Delete a key whose tokens are still in their retention period (before notAfter).
    #[arg(long)]
    pub force: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// A token (spgt1.…), as the policy's deterministic tokenize makes it.
    Token,
    /// A keyed hash (spgh2.…), as the hash action makes it.
    Hash,
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// The PII class (name, email, phone, address, tax_id, gift_message, company, other).
    #[arg(long)]
    pub class: String,
    /// Token or keyed hash (default: what the policy does with the class).
    #[arg(long = "as", value_enum, value_name = "KIND")]
    pub output: Option<Output>,
    /// One line per key of the class that can still be read, active key first: rows stored before a rotation hold the older key's token.
    #[arg(long)]
    pub all: bool,
    /// The values are raw JSON (a number, an object), as the filter tokenizes non-string values.
    #[arg(long)]
    pub raw_json: bool,
    /// The values (default: one per line on stdin).
    pub values: Vec<String>,
}

#[derive(Args)]
pub struct DetokenizeArgs {
    /// JSON lines out ({"line", "class", "key_id", "value"} or {"line", "error", "message"}).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct LintArgs {
    /// Check everything but the key material: variables that are not set get a placeholder key.
    #[arg(long)]
    pub without_keys: bool,
    /// Exit with status 2 on warnings too.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args)]
pub struct CatalogArgs {
    /// Only operations whose id contains this text.
    #[arg(long, value_name = "TEXT")]
    pub operation: Option<String>,
    /// Only PII paths of this class.
    #[arg(long)]
    pub class: Option<String>,
    /// The built-in catalog alone, without the policy's catalog section.
    #[arg(long)]
    pub builtin: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RecordFormat {
    /// For auditors: a header with the policy's digest and date, tables per caller.
    Markdown,
    /// Stable, documented in docs/processing-record.schema.json.
    Json,
}

#[derive(Args)]
pub struct RecordArgs {
    #[arg(long, value_enum, default_value = "markdown")]
    pub format: RecordFormat,
    /// Also list every PII path of the operations callers may call.
    #[arg(long)]
    pub catalog: bool,
    /// The day the record describes: key states, active keys (YYYY-MM-DD, default today, UTC).
    #[arg(long, value_name = "DATE")]
    pub at: Option<String>,
    /// Write the record to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// A failure to report (`spapi-guard: error: …`, exit status 1).
#[derive(Debug)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

pub fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(Failure(message.into()))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = match Context::new(&cli.global) {
        Ok(ctx) => ctx,
        Err(e) => return report(e),
    };
    let result = match &cli.command {
        Command::Keygen(args) => crate::keys::keygen(&ctx, args),
        Command::Keys(args) => match &args.action {
            None => crate::keys::inventory(&ctx, args),
            Some(KeysAction::Shred(shred)) => crate::keys::shred(&ctx, args, shred),
        },
        Command::Tokenize(args) => crate::tokens::tokenize(&ctx, args),
        Command::Detokenize(args) => crate::tokens::detokenize(&ctx, args),
        Command::Lint(args) => crate::policy::lint(&ctx, args),
        Command::Catalog(args) => crate::policy::catalog(&ctx, args),
        Command::RecordOfProcessing(args) => crate::record::record(&ctx, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => report(e),
    }
}

fn report(e: Failure) -> ExitCode {
    eprintln!("spapi-guard: error: {e}");
    ExitCode::from(1)
}

/// What the subcommands share: the policy's path, the variables of --env-file, the clock.
pub struct Context {
    pub policy_path: PathBuf,
    file_env: BTreeMap<String, String>,
    pub now_ms: u64,
    /// The clock comes from [`CLOCK_VAR`], not the system.
    pub clock_set: bool,
}

/// Runs the command line as of another time: what `keys`, `lint`, `tokenize` would say on a day
/// (a ring checked ahead of a rotation), and the README's examples, reproducibly.
pub const CLOCK_VAR: &str = "SPAPI_GUARD_NOW";

/// The clock: the system's, or [`CLOCK_VAR`] (`YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ`, UTC).
fn clock_ms() -> Result<u64> {
    match std::env::var(CLOCK_VAR) {
        Ok(text) => parse_instant(text.trim(), false)
            .ok_or_else(|| Failure(format!("{CLOCK_VAR}={text}: not a time; write YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC), or unset it to use the system clock"))),
        Err(_) => Ok(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)),
    }
}

impl Context {
    fn new(global: &Global) -> Result<Context> {
        let file_env = match &global.env_file {
            Some(path) => read_env_file(path)?,
            None => BTreeMap::new(),
        };
        Ok(Context { policy_path: global.policy.clone(), file_env, now_ms: clock_ms()?, clock_set: std::env::var_os(CLOCK_VAR).is_some() })
    }

    /// The policy's bytes.
    pub fn policy_bytes(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.policy_path).map_err(|e| Failure(format!("cannot read the policy {}: {e}; pass --policy FILE", self.policy_path.display())))
    }

    /// The policy document, parsed with the filter's parser.
    pub fn policy_doc(&self) -> Result<PolicyDoc> {
        parse_doc(&self.policy_bytes()?).map_err(|e| Failure(format!("{}: configuration refused: {e}", self.policy_path.display())))
    }

    /// A variable: from --env-file, else the process environment.
    pub fn var(&self, name: &str) -> Option<String> {
        self.file_env.get(name).cloned().or_else(|| std::env::var(name).ok())
    }

    pub fn policy_name(&self) -> String {
        self.policy_path.display().to_string()
    }
}

fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure(format!("cannot read --env-file {}: {e}", path.display())))?;
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((name, value)) = line.split_once('=') {
            let value = value.trim();
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\''))).unwrap_or(value);
            vars.insert(name.trim().to_string(), value.to_string());
        }
    }
    Ok(vars)
}
