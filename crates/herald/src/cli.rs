//! The `herald` command line: `serve` (the default), `genconfig`, `gentoken`,
//! `checktoken`, `gensubtoken`, `checksubtoken`, `checkconfig` and
//! `version`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::auth::{now_unix, sign_hs256, TokenError};
use crate::config::{self, Config, Overrides};
use crate::node::Tokens;
use crate::server::Server;

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version,
    about = "Real-time messaging server (Centrifugo protocol v2 compatible)"
)]
pub struct Cli {
    /// Configuration file (JSON, YAML or TOML).
    #[arg(short = 'c', long = "config", global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Write a new configuration file with fresh secrets.
    Genconfig {
        /// Where to write it; refuses to overwrite unless --force.
        #[arg(short = 'o', long = "output", default_value = "config.json")]
        output: PathBuf,
        #[arg(long)]
        force: bool,
        /// A browser origin allowed to connect (`https://app.example.com`,
        /// `http://localhost:3000`); repeat for several.
        #[arg(long = "allowed-origin", value_name = "URL")]
        allowed_origins: Vec<String>,
    },
    /// Print a connection token signed with the configured HMAC secret.
    Gentoken {
        #[arg(short = 'u', long = "user")]
        user: String,
        /// Lifetime in seconds; 0 for a token that never expires.
        #[arg(short = 't', long = "ttl", default_value_t = 7 * 24 * 3600)]
        ttl: i64,
    },
    /// Verify a connection token against the configuration.
    Checktoken { token: String },
    /// Print a subscription token for a user and channel, signed with the
    /// HMAC secret subscription tokens are verified with.
    Gensubtoken {
        #[arg(short = 'u', long = "user", default_value = "")]
        user: String,
        #[arg(short = 's', long = "channel")]
        channel: String,
        /// Lifetime in seconds; 0 or less for a token that never expires.
        #[arg(short = 't', long = "ttl", default_value_t = 7 * 24 * 3600)]
        ttl: i64,
    },
    /// Verify a subscription token against the configuration.
    Checksubtoken { token: String },
    /// Load and validate the configuration, printing warnings.
    Checkconfig,
    /// Print the version.
    Version,
}

#[derive(Args, Debug, Default, Clone)]
struct ServeArgs {
    /// Port to listen on (0 picks a free one).
    #[arg(short = 'p', long)]
    port: Option<u16>,
    /// Address to listen on.
    #[arg(short = 'a', long)]
    address: Option<String>,
    /// Directory for embedded storage.
    #[arg(long = "data-dir")]
    data_dir: Option<String>,
    /// Insecure development mode: anonymous connections, every channel open,
    /// API without key, demo page at `/`.
    #[arg(long)]
    dev: bool,
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            // Not eprintln!: a closed stderr must not turn the exit into a panic.
            let _ = writeln!(
                std::io::stderr(),
                "error: {}",
                crate::report::Chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg_path = cli.config.as_deref();
    match cli.command {
        None => serve(cfg_path, cli.serve),
        Some(Command::Serve(args)) => serve(cfg_path, args),
        Some(Command::Genconfig {
            output,
            force,
            allowed_origins,
        }) => genconfig(&output, force, &allowed_origins),
        Some(Command::Gentoken { user, ttl }) => {
            let config = load(cfg_path)?;
            let token = &config.client.token;
            let secret = &token.hmac_secret_key;
            if secret.is_empty() {
                bail!("client.token.hmac_secret_key is not set; run `herald genconfig` or set HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY");
            }
            let claims = claims(&token.user_id_claim, &user, ttl, None);
            println!("{}", sign_hs256(&claims, secret.expose())?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Checktoken { token }) => {
            let config = load(cfg_path)?;
            let tokens = Tokens::from_config(&config.client)?;
            block_on(tokens.connection.prepare(&token))?;
            match tokens.connection.verify_connection(&token, now_unix()) {
                Ok(c) => {
                    println!(
                        "valid token for user {:?}, {}",
                        c.user,
                        expiry(c.expires_at)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => refused(e),
            }
        }
        Some(Command::Gensubtoken { user, channel, ttl }) => {
            let config = load(cfg_path)?;
            let (token, section) = if config.client.subscription_token.enabled {
                (
                    &config.client.subscription_token.token,
                    "client.subscription_token",
                )
            } else {
                (&config.client.token, "client.token")
            };
            if token.hmac_secret_key.is_empty() {
                bail!("{section}.hmac_secret_key is not set: gensubtoken signs with HMAC (tokens for RSA, ECDSA or JWKS keys come from your own tooling)");
            }
            if channel.is_empty() {
                bail!("a channel is required (-s)");
            }
            let claims = claims(&token.user_id_claim, &user, ttl, Some(&channel));
            println!("{}", sign_hs256(&claims, token.hmac_secret_key.expose())?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Checksubtoken { token }) => {
            let config = load(cfg_path)?;
            let tokens = Tokens::from_config(&config.client)?;
            block_on(tokens.subscription.prepare(&token))?;
            match tokens.subscription.verify_subscription(&token, now_unix()) {
                Ok(c) => {
                    println!(
                        "valid subscription token for user {:?} and channel {:?}, {}",
                        c.user,
                        c.channel,
                        expiry(c.expires_at)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => refused(e),
            }
        }
        Some(Command::Checkconfig) => {
            let loaded = read_config(cfg_path, &ServeArgs::default())?;
            for w in &loaded.warnings {
                let _ = writeln!(std::io::stderr(), "warning: {w}");
            }
            // A key of the file Herald ignores is a mistake worth failing a
            // check on (an unknown variable may be meant for something else).
            if loaded
                .warnings
                .iter()
                .any(|w| w.starts_with("unknown or unsupported config key"))
            {
                let _ = writeln!(
                    std::io::stderr(),
                    "error: the configuration has keys Herald does not know (see the warnings)"
                );
                return Ok(ExitCode::FAILURE);
            }
            println!("configuration is valid");
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Version) => {
            println!("herald {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The claims of a token `gentoken` or `gensubtoken` prints: the user in
/// `sub` (and in the configured user id claim), issued now, expiring after
/// `ttl` seconds when positive, for `channel` when a subscription token.
fn claims(user_claim: &str, user: &str, ttl: i64, channel: Option<&str>) -> serde_json::Value {
    let mut claims = json!({ "sub": user, "iat": now_unix() });
    if !user_claim.is_empty() {
        claims[user_claim] = json!(user);
    }
    if ttl > 0 {
        claims["exp"] = json!(now_unix() + ttl);
    }
    if let Some(channel) = channel {
        claims["channel"] = json!(channel);
    }
    claims
}

/// Runs a future to completion for a command (the JWKS fetch of a token
/// check).
fn block_on<F: std::future::Future<Output = ()>>(future: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(future);
    Ok(())
}

fn expiry(expires_at: Option<i64>) -> String {
    expires_at
        .map(|t| format!("expires in {}s", t - now_unix()))
        .unwrap_or("never expires".into())
}

fn refused(e: TokenError) -> anyhow::Result<ExitCode> {
    match e {
        TokenError::Expired => bail!("token expired"),
        TokenError::Invalid(why) => bail!("invalid token: {why}"),
    }
}

/// Reads the configuration from the file, `HERALD_*` variables and flags.
fn read_config(path: Option<&Path>, args: &ServeArgs) -> anyhow::Result<config::Loaded> {
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("HERALD_"))
        .collect();
    let overrides = Overrides {
        port: args.port,
        address: args.address.clone(),
        data_dir: args.data_dir.clone(),
        dev: args.dev,
    };
    Ok(config::load(path, &env, &overrides)?)
}

/// Loads the configuration for a command, printing warnings to stderr.
fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let loaded = read_config(path, &ServeArgs::default())?;
    for w in &loaded.warnings {
        let _ = writeln!(std::io::stderr(), "warning: {w}");
    }
    Ok(loaded.config)
}

fn serve(path: Option<&Path>, args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Parse before logging is set up, so log settings come from the config.
    let loaded = read_config(path, &args)?;
    init_logging(&loaded.config);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let config = loaded.config;
    raise_open_files_limit();
    if config.dev {
        tracing::warn!("development mode: anonymous clients may subscribe and publish everywhere; never use in production");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        if let Some(tls) = server.tls() {
            tokio::spawn(reload_tls_on_sighup(tls));
        }
        let token = server.shutdown_token();
        let signalled = wait_for_signal();
        tokio::spawn(async move {
            signalled.await;
            token.cancel();
            tracing::info!("signal received, shutting down");
        });
        server.run().await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Raises this process's soft limit on open files to its hard limit: each
/// connection holds one, and the soft limit is often far below what the
/// machine allows.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "open files limit not raised"),
    }
}

/// Reads the listener's certificate and key again at every SIGHUP.
async fn reload_tls_on_sighup(tls: std::sync::Arc<crate::server::Tls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!("no SIGHUP handler: TLS files are read only at start");
            return;
        };
        while hangup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate and key reloaded"),
                Err(e) => tracing::error!(
                    error = %crate::report::Chain(&e),
                    "TLS not reloaded; the previous certificate stays"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

/// SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is
/// called, not when the future is first polled: a signal that comes right
/// after the server says it listens must not find the default action (which
/// ends the process without a graceful shutdown).
fn wait_for_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let level = if config.log.level == "none" {
        "off"
    } else {
        config.log.level.as_str()
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // A log line that cannot be written (stderr closed by whoever read it)
    // is dropped: reporting that on stderr too would panic the task that
    // logged — the signal handler among them, and a server that cannot
    // stop.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Writes `text` to a new file only its owner may read (it holds secrets).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

fn genconfig(output: &Path, force: bool, origins: &[String]) -> anyhow::Result<ExitCode> {
    if output.exists() && !force {
        bail!("{} exists; pass --force to overwrite", output.display());
    }
    for origin in origins {
        if let Err(why) = crate::origin::check_pattern(origin) {
            bail!("--allowed-origin {origin}: {why}");
        }
    }
    let config = json!({
        "client": {
            "token": { "hmac_secret_key": secret() },
            "allowed_origins": origins
        },
        "http_api": { "key": secret() },
        "admin": { "enabled": false, "password": secret(), "secret": secret() },
        "channel": {
            "without_namespace": { "allow_subscribe_for_client": true },
            "namespaces": [
                { "name": "chat", "allow_subscribe_for_client": true, "allow_publish_for_subscriber": true }
            ]
        }
    });
    write_private(output, &(serde_json::to_string_pretty(&config)? + "\n"))
        .with_context(|| format!("writing {}", output.display()))?;
    println!("wrote {}", output.display());
    println!("  server API key: http_api.key (send it as X-API-Key)");
    println!("  admin UI: set admin.enabled to true; the login is admin.password");
    if origins.is_empty() {
        println!(
            "  browsers: pages on other origins are refused until client.allowed_origins lists them (genconfig --allowed-origin URL)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
