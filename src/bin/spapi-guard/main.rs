//! `spapi-guard`: the command line of the filter's operators. A native binary of the same crate:
//! every subcommand runs the library's own code (the policy loader, the key ring, the token
//! engine, the catalog), never a second implementation. It is not part of the Wasm module: the
//! library is what `make wasm` builds, and clap is a native-only dependency.
//!
//! Reads the policy (`--policy`) and the key variables it names from the environment (or
//! `--env-file`), as Envoy passes them to the filter. Nothing here prints key material except
//! `keygen`, once, by design.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[cfg(not(target_arch = "wasm32"))]
mod cli;
#[cfg(not(target_arch = "wasm32"))]
mod keys;
#[cfg(not(target_arch = "wasm32"))]
mod policy;
#[cfg(not(target_arch = "wasm32"))]
mod record;
#[cfg(not(target_arch = "wasm32"))]
mod tokens;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

/// The command line is native only; a wasm32 build of every target gets this empty program.
#[cfg(target_arch = "wasm32")]
fn main() {}
