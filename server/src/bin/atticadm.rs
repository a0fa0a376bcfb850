//! `atticadm`: administration. Reads the same config as `atticd` (creating
//! the default one if this is the first command ever run).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use attic_token::{
    Attenuation, CacheNamePattern, Permission, RootKey, Token, TokenSpec, attenuate,
};
use clap::{Parser, Subcommand};
use server::setup;

/// Administer an atticd server.
#[derive(Debug, Parser)]
#[command(name = "atticadm", version)]
struct Options {
    /// Config file [default: $XDG_CONFIG_HOME/attic/server.toml].
    #[arg(short = 'f', long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Variants are named after the subcommands they parse.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Print a new token granting permissions on cache-name patterns (`*` matches any run of characters).
    MakeToken(MakeToken),
    /// Revoke a token, and every token attenuated from it.
    RevokeToken {
        /// The token.
        token: String,
        /// Data directory of the embedded database [default: $XDG_DATA_HOME/attic].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Narrow a token offline: fewer caches, fewer permissions, an earlier expiry.
    /// Needs no key; anyone holding a token can do this.
    AttenuateToken {
        /// The token to narrow.
        token: String,
        /// Keep only caches matching one of these patterns.
        #[arg(long = "cache")]
        caches: Vec<CacheNamePattern>,
        /// Keep only these permissions.
        #[arg(long = "permission")]
        permissions: Vec<Permission>,
        /// Expire after this long at the latest (e.g. `1h`, `7d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        validity: Option<Duration>,
    },
}

#[derive(Debug, clap::Args)]
struct MakeToken {
    /// Who the token is for; recorded as the uploader of what it pushes.
    #[arg(long)]
    sub: String,
    /// How long it works, e.g. `1d`, `6months`, `1y`.
    #[arg(long, value_parser = humantime::parse_duration)]
    validity: Duration,
    /// Caches it may pull from.
    #[arg(long, value_name = "PATTERN")]
    pull: Vec<CacheNamePattern>,
    /// Caches it may push to.
    #[arg(long, value_name = "PATTERN")]
    push: Vec<CacheNamePattern>,
    /// Caches it may delete paths from.
    #[arg(long, value_name = "PATTERN")]
    delete: Vec<CacheNamePattern>,
    /// Cache names it may create.
    #[arg(long, value_name = "PATTERN")]
    create_cache: Vec<CacheNamePattern>,
    /// Caches it may configure.
    #[arg(long, value_name = "PATTERN")]
    configure_cache: Vec<CacheNamePattern>,
    /// Caches whose retention period it may change.
    #[arg(long, value_name = "PATTERN")]
    configure_cache_retention: Vec<CacheNamePattern>,
    /// Caches it may destroy.
    #[arg(long, value_name = "PATTERN")]
    destroy_cache: Vec<CacheNamePattern>,
}

impl MakeToken {
    fn grants(&self) -> Vec<(CacheNamePattern, Permission)> {
        let lists = [
            (&self.pull, Permission::Pull),
            (&self.push, Permission::Push),
            (&self.delete, Permission::Delete),
            (&self.create_cache, Permission::CreateCache),
            (&self.configure_cache, Permission::ConfigureCache),
            (
                &self.configure_cache_retention,
                Permission::ConfigureCacheRetention,
            ),
            (&self.destroy_cache, Permission::DestroyCache),
        ];
        lists
            .into_iter()
            .flat_map(|(patterns, permission)| {
                patterns.iter().map(move |p| (p.clone(), permission))
            })
            .collect()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = Options::parse();
    match options.command {
        Command::MakeToken(args) => {
            let loaded = setup::load_or_create_config(options.config.as_deref())?;
            let root = RootKey::parse(&loaded.config.token_root_key)?;
            let grants = args.grants();
            if grants.is_empty() {
                anyhow::bail!(
                    "the token would grant nothing: give at least one of --pull, --push, --delete, --create-cache, --configure-cache, --configure-cache-retention, --destroy-cache"
                );
            }
            let spec = TokenSpec {
                subject: args.sub,
                expires_at: Some(SystemTime::now() + args.validity),
                grants,
            };
            println!("{}", spec.sign(&root)?.to_base64()?);
        }
        Command::RevokeToken { token, data_dir } => {
            let loaded = setup::load_or_create_config(options.config.as_deref())?;
            let root = RootKey::parse(&loaded.config.token_root_key)?;
            let token = Token::parse(&token, &root.public())
                .context("the token is not valid for this server")?;
            let data_dir = match data_dir {
                Some(dir) => dir,
                None => setup::default_data_dir()?,
            };
            let database = setup::open_database(&loaded.config, &data_dir, true).await?;
            database.revoke(&token.revocation_ids()).await?;
            eprintln!(
                "revoked {} (and every token attenuated from it)",
                token.subject().unwrap_or_default()
            );
        }
        Command::AttenuateToken {
            token,
            caches,
            permissions,
            validity,
        } => {
            let attenuation = Attenuation {
                caches: (!caches.is_empty()).then_some(caches),
                permissions: (!permissions.is_empty()).then_some(permissions),
                expires_at: validity.map(|v| SystemTime::now() + v),
            };
            println!("{}", attenuate(&token, &attenuation)?);
        }
    }
    Ok(())
}
