//! `attic get-closure PATH [--include-outputs]`: the closure a push of
//! `PATH` would consider, one store path per line (as Attic's command of
//! that name prints it; `nix-store --query --requisites` does the work).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::nix_store::{closure, local_store_dir, resolve_path_argument};

/// Arguments of `attic get-closure`.
#[derive(Debug, Args)]
pub struct GetClosure {
    /// A store path, or a link to one such as `./result`.
    store_path: String,
    /// For derivations in the closure, include their outputs.
    #[arg(long)]
    include_outputs: bool,
}

pub async fn run(args: GetClosure) -> Result<ExitCode> {
    let store_dir = local_store_dir()?;
    let path = resolve_path_argument(&store_dir, &args.store_path)?;
    for member in closure(&path, args.include_outputs).await? {
        println!("{member}");
    }
    Ok(ExitCode::SUCCESS)
}
