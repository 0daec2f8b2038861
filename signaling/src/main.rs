//! `signaling --config configs/signaling.toml`: serves until SIGTERM or SIGINT.
//! `signaling --config ... backup --dir DIR`: a consistent copy of the store, taken while it runs.
//! `signaling --config ... export [--since T] [--until T]`: ended sessions as JSON lines.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve (the default).
    Run,
    /// Back up the store into DIR while signaling runs: the embedded SQLite database as a
    /// consistent copy (signaling-TIME.db), PostgreSQL with pg_dump (signaling-TIME.dump); keeps
    /// the newest KEEP backups there. deploy/signaling-backup.timer runs it daily.
    Backup {
        /// Where the backups go (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// How many backups to keep in DIR (the oldest go); 0 keeps all.
        #[arg(long, default_value_t = 14)]
        keep: usize,
    },
    /// Write the sessions that ended in [SINCE, UNTIL) to stdout as JSON lines, in end order:
    /// each as `GET /v1/sessions/{id}` shows it (the session and its timeline), for the
    /// operator's warehouse. Run it with the previous run's UNTIL as SINCE to export each session
    /// once.
    Export {
        /// Unix seconds (default: the beginning).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Unix seconds (default: now).
        #[arg(long)]
        until: Option<u64>,
    },
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
    // The one-shot commands: what they made on success, the error on failure.
    let once = match cli.cmd {
        None | Some(Cmd::Run) => None,
        Some(Cmd::Export { since, until }) => {
            // Milliseconds: without --until, everything ended until now, this very millisecond.
            let ms = |secs: u64| secs.saturating_mul(1000).min(i64::MAX as u64) as i64;
            let until_ms = until.map_or_else(cluster::time::unix_now_ms, ms);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let exported = runtime.block_on(signaling::history::export(&config, ms(since), until_ms, &mut out));
            Some(("export", exported.map(|n| eprintln!("signaling: exported {n} sessions"))))
        }
        Some(Cmd::Backup { dir, keep }) => {
            let made = runtime.block_on(signaling::history::backup(&config, &dir, keep));
            Some(("backup", made.map(|path| println!("{}", path.display()))))
        }
    };
    if let Some((what, result)) = once {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("signaling: {what} failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
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
