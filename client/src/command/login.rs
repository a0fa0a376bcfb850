//! `attic login NAME URL [TOKEN] [--set-default]`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::config::{ClientConfig, config_path};

/// Arguments of `attic login`.
#[derive(Debug, Args)]
pub struct Login {
    /// A name for the server, used as `NAME:cache`.
    name: String,
    /// The server's URL, e.g. `https://cache.example.com/`.
    url: String,
    /// A token from `atticadm make-token` (omit for public caches).
    token: Option<String>,
    /// Make this the server bare cache names refer to.
    #[arg(long)]
    set_default: bool,
}

pub fn run(args: Login) -> Result<ExitCode> {
    let mut config = ClientConfig::load()?;
    config.login(&args.name, &args.url, args.token, args.set_default)?;
    config.save()?;
    let default = config.default_server.as_deref() == Some(args.name.as_str());
    eprintln!(
        "saved server {} in {}{}",
        args.name,
        config_path()?.display(),
        if default { " (the default server)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
