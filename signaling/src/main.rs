//! `signaling --config configs/signaling.toml`: serves until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use signaling::app::{self, AppState};
use signaling::config::{Config, Overrides};
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(version, about = "Signaling for the relay network: regions, ICE configs, machines, sessions")]
struct Cli {
    /// The TOML configuration file (see configs/signaling.toml).
    #[arg(long, short, env = "SIGNALING_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_ref(), &cli.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("signaling: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // The filter is set once: signaling has no reload.
    let _ = cluster::log::init(config.log_format, &config.log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("signaling: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "signaling failed");
            eprintln!("signaling: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("server.listen: cannot bind {}", config.listen))?;
    let addr = listener.local_addr()?;
    let regions: Vec<String> = config.regions.iter().map(|r| r.id.to_string()).collect();
    let store = match &config.store {
        signaling::config::StoreLocation::Sqlite(p) => format!("sqlite {}", p.display()),
        signaling::config::StoreLocation::Postgres(url) => format!("postgres {}", signaling::config::redact_url(url)),
    };
    let state = AppState::new(config).await?;
    println!("signaling {} ready", env!("CARGO_PKG_VERSION"));
    println!("  API         http://{addr}/v1/");
    println!("  regions     {}", regions.join(", "));
    println!("  store       {store}");
    println!("  metrics     http://{addr}/metrics");
    println!("  ICE config  POST http://{addr}/v1/ice-config  (Authorization: Bearer <player token>)");
    info!(%addr, "signaling started");
    app::run(state, listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without handlers the default action (exit) applies; wait forever here.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: finishing in-flight requests"),
        _ = int.recv() => info!("SIGINT: finishing in-flight requests"),
    }
}
