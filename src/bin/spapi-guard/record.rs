//! `record-of-processing`: the record the library builds from the policy
//! (src/processing_record.rs), printed as Markdown or JSON.
use std::process::ExitCode;

use spapi_guard::keyring::parse_instant;
use spapi_guard::processing_record::ProcessingRecord;

use crate::cli::{Context, Failure, RecordArgs, RecordFormat, Result};

pub fn record(ctx: &Context, args: &RecordArgs) -> Result<ExitCode> {
    let at = match &args.at {
        Some(date) => parse_instant(date, false).ok_or_else(|| Failure(format!("--at {date}: not a date; write YYYY-MM-DD")))?,
        None => ctx.now_ms,
    };
    let config = ctx.policy_bytes()?;
    let name = ctx.policy_name();
    let record = ProcessingRecord::build(&config, &name, at, args.catalog).map_err(|e| Failure(format!("{name}: configuration refused: {e}")))?;
    let text = match args.format {
        RecordFormat::Markdown => record.to_markdown(),
        RecordFormat::Json => record.to_json()? + "\n",
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).map_err(|e| Failure(format!("cannot write {}: {e}", path.display())))?;
            eprintln!("spapi-guard: record of processing of {name} written to {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
