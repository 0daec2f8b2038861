//! `relay`: the TURN/STUN relay binary. Parses flags, loads and validates the config, sets up
//! logging and hands over to `relay::shell::run`. Errors end up here and exit with status 1
//! (2 for a bad config or command line, as clap does).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use relay::config::{Config, Overrides};
use relay::shell::reload::{Hooks, SetLogLevel};
use relay::turn::auth::{rest_password, rest_username};

#[derive(Debug, Parser)]
#[command(name = "relay", version, about = "TURN/STUN relay for live remote play")]
struct Cli {
    /// TOML configuration file (see configs/relay.toml for every key).
    #[arg(long, short, env = "RELAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the relay (the default).
    Run,
    /// Validate the configuration and print it as the relay would use it (secrets redacted).
    CheckConfig,
    /// Mint a TURN REST credential from the first configured secret and print the
    /// RTCIceServer entry a browser uses.
    Credentials {
        /// Seconds the credential stays valid for new allocations.
        #[arg(long, default_value_t = 600)]
        ttl: u64,
        /// Optional user id appended to the username (`<expiry>:<id>`).
        #[arg(long)]
        id: Option<String>,
        /// Host name or address clients use to reach the relay (default: the advertised address).
        #[arg(long)]
        host: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (file, config) = match Config::load(cli.config.as_ref(), &cli.overrides) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("relay: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Cmd::Run) {
        Cmd::Run => {
            let set_log_level = init_logging(&config);
            let (path, overrides) = (cli.config.clone(), cli.overrides.clone());
            let hooks = Hooks {
                // A reload reads the same file, environment and flags as the start did.
                load: Box::new(move || Config::load(path.as_ref(), &overrides).map(|(_, config)| config)),
                set_log_level,
            };
            match relay::shell::run(config, hooks) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("relay: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::CheckConfig => match toml::to_string_pretty(&file.redacted()) {
            Ok(text) => {
                let capacity = config.capacity();
                for warning in capacity.warnings() {
                    eprintln!("relay: warning: {warning}");
                }
                println!("# configuration is valid; effective values:\n{text}");
                println!(
                    "# capacity: {} allocations (relay ports: {}, allocations.max_total: {})",
                    capacity.allocations(),
                    capacity.ports,
                    match capacity.max_total {
                        0 => "no limit".to_owned(),
                        n => n.to_string(),
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("relay: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Credentials { ttl, id, host } => {
            let Some(secret) = config.secrets.first() else {
                eprintln!("relay: auth.secrets is empty; TURN REST credentials need a secret");
                return ExitCode::from(2);
            };
            let now = cluster::time::unix_now();
            let username = rest_username(now + ttl, id.as_deref());
            let credential = rest_password(secret.as_bytes(), &username);
            let host = host.unwrap_or_else(|| match config.advertised_ip() {
                ip if ip.is_ipv6() => format!("[{ip}]"),
                ip => ip.to_string(),
            });
            let port = config.listen.port();
            let mut urls = vec![format!("stun:{host}:{port}"), format!("turn:{host}:{port}?transport=udp")];
            urls.extend(config.tcp_listen.map(|a| format!("turn:{host}:{}?transport=tcp", a.port())));
            // turns: is checked against the certificate: pass --host with its name.
            urls.extend(
                config
                    .tls
                    .iter()
                    .flat_map(|t| t.listen.first())
                    .map(|a| format!("turns:{host}:{}?transport=tcp", a.port())),
            );
            let entry = serde_json::json!({
                "urls": urls,
                "username": username,
                "credential": credential,
            });
            println!("{entry}");
            ExitCode::SUCCESS
        }
    }
}

/// Sets up logging; returns what changes the filter later (reload of `log.level`).
fn init_logging(config: &Config) -> SetLogLevel {
    let set = cluster::log::init(config.log_format, &config.log_level);
    Box::new(move |level: &str| set(level).map_err(anyhow::Error::msg))
}
