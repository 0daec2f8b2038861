//! `relayctl`: the operator's command line for signaling's HTTP API (the routes are listed in
//! `signaling::api`). Tables are for people; `--json` prints signaling's JSON for scripts.
//!
//! Raw flags are parsed by clap, then validated into [`settings::Settings`] and typed arguments
//! before anything is sent. Every failure that matters to a caller carries a [`Failure`], which
//! `main` maps to the exit code:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | signaling answered with an error (its `error.message` and the HTTP status go to stderr), or with something that is not the JSON it documents |
//! | 2 | usage or configuration: bad flags, an unreadable or invalid config file, no token where one is needed |
//! | 3 | signaling is unreachable: connection refused, name resolution failed, no answer within `--timeout-secs` |
//!
//! Settings come from flags, then `RELAYCTL_*` environment variables, then the config file
//! (`--config`, `RELAYCTL_CONFIG`, or `~/.config/relayctl/config.toml` if present), then defaults.

// The crate root is this file, so its modules' paths are spelled out: they live in relayctl/.
#[path = "relayctl/ca.rs"]
mod ca;
#[path = "relayctl/client.rs"]
mod client;
#[path = "relayctl/failure.rs"]
mod failure;
#[path = "relayctl/probe.rs"]
mod probe;
#[path = "relayctl/render.rs"]
mod render;
#[path = "relayctl/settings.rs"]
mod settings;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::{Value, json};
use signaling::auth::{Keys, Role, valid_subject};
use signaling_api::admin::TokenIssued;

use crate::client::Api;
use crate::failure::{EXIT_SERVER, EXIT_USAGE, Failure};
use crate::settings::{GlobalArgs, Settings};

/// The longest token lifetime signaling mints (`POST /v1/admin/tokens` accepts the same).
const MAX_TOKEN_TTL_SECS: u64 = 366 * 86_400;

#[derive(Debug, Parser)]
#[command(name = "relayctl", version, about = "Operate the relay network through signaling's API")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Signaling's status: version, uptime, relays, machines, sessions (admin)
    Status,
    /// Regions: location, availability and STUN probe targets
    Regions,
    /// The relay registry (admin); `drain` and `undrain` set a relay's admin state
    Relays {
        #[command(subcommand)]
        action: Option<RelaysAction>,
    },
    /// Game machines with their status and live session (player or admin)
    Machines,
    /// Session history (admin); `show` and `end` act on one session
    #[command(args_conflicts_with_subcommands = true)]
    Sessions {
        #[command(flatten)]
        filter: SessionFilter,
        #[command(subcommand)]
        action: Option<SessionsAction>,
    },
    /// TURN secrets (admin)
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Bearer tokens
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// An ICE configuration as a player gets it, as JSON (player or admin token)
    IceConfig(IceConfigArgs),
    /// Measure STUN Binding round trips from this host to every region's probe targets
    Probe(probe::ProbeArgs),
    /// The cluster CA for relay-to-relay links: make it, issue relay certificates (offline)
    Ca {
        #[command(subcommand)]
        action: ca::CaAction,
    },
}

#[derive(Debug, Subcommand)]
enum RelaysAction {
    /// List relays (the default)
    List,
    /// The relay-to-relay links the relays report: each relay, its peers and their RTT
    Links,
    /// Stop handing out a relay: it keeps its sessions and takes no new ones
    Drain { id: RelayId },
    /// Put a drained relay back in rotation
    Undrain { id: RelayId },
    /// Forget a dead (decommissioned) relay; a live one is refused
    Remove { id: RelayId },
}

#[derive(Debug, Subcommand)]
enum SessionsAction {
    /// List sessions, newest first (the default)
    List(SessionFilter),
    /// One session and its event timeline
    Show { id: SessionId },
    /// Hand an sfu session's seat (whose inputs reach the machine) to one of its viewers
    Seat {
        id: SessionId,
        /// The viewer's id (its player id)
        #[arg(long, conflicts_with = "nobody", required_unless_present = "nobody")]
        to: Option<String>,
        /// Leave the seat empty: nobody's inputs reach the machine
        #[arg(long)]
        nobody: bool,
    },
    /// End a session
    End {
        id: SessionId,
        /// Why, recorded in the session's history [default: ended]
        #[arg(long, value_parser = parse_reason)]
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct SessionFilter {
    /// Only sessions of this machine
    #[arg(long, value_name = "ID")]
    machine: Option<String>,
    /// Only sessions of this player
    #[arg(long, value_name = "ID")]
    player: Option<String>,
    /// Only sessions in this region
    #[arg(long, value_name = "ID")]
    region: Option<String>,
    /// Which sessions
    #[arg(long, value_enum, default_value_t = StatusFilter::All)]
    status: StatusFilter,
    /// At most this many
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StatusFilter {
    Live,
    Ended,
    All,
}

impl StatusFilter {
    fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Ended => "ended",
            Self::All => "all",
        }
    }
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Make a new TURN secret current; the previous ones stay accepted until their credentials expire
    Rotate,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Mint a token: offline with signaling's key (--key), or by asking signaling (admin token)
    Mint(MintArgs),
}

#[derive(Debug, clap::Args)]
struct MintArgs {
    /// The token's subject: the player's, machine's or operator's id
    #[arg(long, value_parser = parse_subject)]
    sub: String,
    /// What the token allows
    #[arg(long, value_enum)]
    role: Role,
    /// Lifetime in seconds
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=MAX_TOKEN_TTL_SECS))]
    ttl_secs: u64,
    /// Signaling's auth.jwt_key: mint offline, without signaling (how the first admin token is
    /// made). Prefer the environment variable: flags show in the process list.
    #[arg(long, env = "RELAYCTL_JWT_KEY", hide_env_values = true, value_name = "KEY")]
    key: Option<String>,
}

#[derive(Debug, clap::Args)]
struct IceConfigArgs {
    /// Report a probe result: five samples of MS to REGION's relay; repeatable
    #[arg(long = "probe", value_name = "REGION=MS", value_parser = parse_probe)]
    probes: Vec<ProbeArg>,
    /// Report the probes in FILE, the output of `relayctl probe --json` (`-` for stdin); --probe
    /// values win for the regions they name
    #[arg(long, value_name = "FILE")]
    probes_from: Option<PathBuf>,
    /// Place for playing this machine (its RTTs to the regions count)
    #[arg(long, value_name = "ID")]
    machine: Option<String>,
}

/// A relay id as signaling accepts them (`cluster::ids::valid_relay_id`).
#[derive(Debug, Clone)]
struct RelayId(String);

impl std::str::FromStr for RelayId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // `.` and `..` alone would name another route; the charset allows them otherwise.
        if cluster::ids::valid_relay_id(s) && s != "." && s != ".." {
            Ok(Self(s.to_owned()))
        } else {
            Err("a relay id is 1-64 of a-z, 0-9, . and -".into())
        }
    }
}

/// A session id: a token subject, as signaling accepts them, but never `.` or `..`, which a URL
/// path cannot carry as a segment (they would name another route).
#[derive(Debug, Clone)]
struct SessionId(String);

impl std::str::FromStr for SessionId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "." || s == ".." {
            return Err("not a session id".into());
        }
        parse_subject(s).map(Self)
    }
}

fn parse_subject(s: &str) -> Result<String, String> {
    if valid_subject(s) {
        Ok(s.to_owned())
    } else {
        Err(format!("must be 1-{} printable ASCII characters without spaces or ':'", signaling::auth::MAX_SUBJECT))
    }
}

/// The end reasons signaling accepts (`POST /v1/sessions/{id}/end`).
fn parse_reason(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        Ok(s.to_owned())
    } else {
        Err("a reason is 1-64 of a-z, A-Z, 0-9, _ and -".into())
    }
}

/// `--probe REGION=MS`.
#[derive(Debug, Clone)]
struct ProbeArg {
    region: String,
    ms: f64,
}

fn parse_probe(s: &str) -> Result<ProbeArg, String> {
    let (region, ms) = s.split_once('=').ok_or("expected REGION=MS, e.g. eu-central=25")?;
    if !cluster::ids::valid_region_id(region) {
        return Err(format!("{region:?} is not a region id (1-64 of a-z, 0-9 and -)"));
    }
    let ms: f64 = ms.parse().map_err(|_| format!("{ms:?} is not a number of milliseconds"))?;
    if !(0.0..=geo::probe::MAX_SAMPLE_MS).contains(&ms) {
        return Err(format!("{ms} ms is not within 0..={} ms", geo::probe::MAX_SAMPLE_MS));
    }
    Ok(ProbeArg { region: region.to_owned(), ms })
}

/// What a command prints on success.
enum Output {
    /// For people.
    Text(String),
    /// Pretty-printed JSON.
    Json(Value),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version arrive as "errors" that print to stdout and succeed.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    // One thread is plenty: requests are sequential and the probes are all I/O.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relayctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let output = match runtime.block_on(run(cli)) {
        Ok(output) => output,
        Err(e) => {
            eprintln!("relayctl: {e:#}");
            let failure = e.chain().find_map(|c| c.downcast_ref::<Failure>());
            return ExitCode::from(failure.map_or(EXIT_SERVER, Failure::exit_code));
        }
    };
    let text = match output {
        Output::Text(text) => text,
        // Serializing a `Value` cannot fail: its map keys are strings.
        Output::Json(value) => serde_json::to_string_pretty(&value).unwrap_or_default() + "\n",
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        // `relayctl sessions | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relayctl: writing the output: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Output> {
    // Offline: no signaling, no settings beyond --json (a broken config file does not stop it).
    let command = match cli.command {
        Command::Ca { action } => return ca_output(action, cli.global.json),
        command => command,
    };
    let settings = Settings::resolve(&cli.global)?;
    let json = settings.json;
    let api = Api::new(&settings)?;
    // Signaling's answer read as its `signaling_api` type, so an answer that is not the documented
    // shape is an error (exit 1) whatever the output; then the JSON or the table made from it.
    fn typed<T: serde::de::DeserializeOwned>(
        json: bool,
        value: Value,
        table: fn(&T) -> String,
    ) -> anyhow::Result<Output> {
        let typed = T::deserialize(&value)
            .with_context(|| format!("signaling's answer is not a {}", std::any::type_name::<T>()))?;
        Ok(if json { Output::Json(value) } else { Output::Text(table(&typed)) })
    }
    Ok(match command {
        Command::Status => {
            typed(json, api.get(&["v1", "admin", "status"], &[]).await.context("getting the status")?, render::status)?
        }
        Command::Regions => {
            typed(json, api.get_public(&["v1", "regions"]).await.context("listing regions")?, render::regions)?
        }
        Command::Relays { action: None | Some(RelaysAction::List) } => {
            typed(json, api.get(&["v1", "relays"], &[]).await.context("listing relays")?, render::relays)?
        }
        Command::Relays { action: Some(RelaysAction::Links) } => {
            typed(json, api.get(&["v1", "relays"], &[]).await.context("listing relays")?, render::links)?
        }
        Command::Relays { action: Some(RelaysAction::Drain { id }) } => {
            let v = api.post(&["v1", "relays", &id.0, "drain"], &json!({})).await;
            typed(json, v.with_context(|| format!("draining relay {}", id.0))?, render::admin_state)?
        }
        Command::Relays { action: Some(RelaysAction::Undrain { id }) } => {
            let v = api.post(&["v1", "relays", &id.0, "undrain"], &json!({})).await;
            typed(json, v.with_context(|| format!("undraining relay {}", id.0))?, render::admin_state)?
        }
        Command::Relays { action: Some(RelaysAction::Remove { id }) } => {
            let v = api.delete(&["v1", "relays", &id.0]).await;
            typed(json, v.with_context(|| format!("removing relay {}", id.0))?, render::removed)?
        }
        Command::Machines => {
            typed(json, api.get(&["v1", "machines"], &[]).await.context("listing machines")?, render::machines)?
        }
        Command::Sessions { filter, action: None }
        | Command::Sessions { action: Some(SessionsAction::List(filter)), .. } => {
            let mut query = vec![("status", filter.status.as_str().to_owned()), ("limit", filter.limit.to_string())];
            for (key, value) in [("machine", filter.machine), ("player", filter.player), ("region", filter.region)] {
                if let Some(value) = value {
                    query.push((key, value));
                }
            }
            typed(json, api.get(&["v1", "sessions"], &query).await.context("listing sessions")?, render::sessions)?
        }
        Command::Sessions { action: Some(SessionsAction::Show { id }), .. } => {
            let v = api.get(&["v1", "sessions", &id.0], &[]).await;
            typed(json, v.with_context(|| format!("showing session {}", id.0))?, render::session)?
        }
        Command::Sessions { action: Some(SessionsAction::Seat { id, to, nobody: _ }), .. } => {
            let v = api.post(&["v1", "sessions", &id.0, "seat"], &json!({ "to": to })).await;
            typed(json, v.with_context(|| format!("handing the seat of session {}", id.0))?, render::seat)?
        }
        Command::Sessions { action: Some(SessionsAction::End { id, reason }), .. } => {
            let body = match reason {
                Some(reason) => json!({ "reason": reason }),
                None => json!({}),
            };
            let v = api.post(&["v1", "sessions", &id.0, "end"], &body).await;
            typed(json, v.with_context(|| format!("ending session {}", id.0))?, render::ended)?
        }
        Command::Keys { action: KeysAction::Rotate } => typed(
            json,
            api.post(&["v1", "admin", "keys", "rotate"], &json!({})).await.context("rotating TURN secrets")?,
            render::rotated,
        )?,
        Command::Token { action: TokenAction::Mint(args) } => mint(&api, args, json).await?,
        Command::IceConfig(args) => {
            let body = ice_config_request(args)?;
            // Pretty JSON either way: it is meant for pasting into a test page.
            let ice = api.post(&["v1", "ice-config"], &body).await.context("getting an ICE config")?;
            serde_json::from_value::<signaling_api::ice::IceConfig>(ice.clone())
                .context("signaling's answer is not an ICE configuration")?;
            Output::Json(ice)
        }
        Command::Ca { action } => ca_output(action, json)?,
        Command::Probe(args) => {
            let regions = api.get_public(&["v1", "regions"]).await.context("listing regions")?;
            let regions: signaling_api::regions::RegionList =
                serde_json::from_value(regions).context("signaling's answer is not a region list")?;
            let report = probe::run(&regions, &args).await?;
            if json { Output::Json(report.to_json()) } else { Output::Text(report.table()) }
        }
    })
}

fn ca_output(action: ca::CaAction, json: bool) -> anyhow::Result<Output> {
    let (text, value) = ca::run(action, cluster::time::unix_now())?;
    Ok(if json { Output::Json(value) } else { Output::Text(text) })
}

async fn mint(api: &Api, args: MintArgs, json: bool) -> anyhow::Result<Output> {
    let minted = match args.key.filter(|k| !k.is_empty()) {
        Some(key) => {
            // signaling refuses shorter keys at start, so a shorter one cannot be its key.
            if key.len() < 32 {
                return Err(Failure::Usage("--key: signaling's auth.jwt_key is at least 32 bytes".into()).into());
            }
            let now = cluster::time::unix_now();
            let token = Keys::new(key.as_bytes()).mint(&args.sub, args.role, now, args.ttl_secs)?;
            let issued = TokenIssued { token, sub: args.sub, role: args.role, expires_at: now + args.ttl_secs };
            serde_json::to_value(issued)?
        }
        None => {
            let body = json!({ "sub": args.sub, "role": args.role, "ttl_secs": args.ttl_secs });
            api.post(&["v1", "admin", "tokens"], &body).await.context("minting a token")?
        }
    };
    let issued = TokenIssued::deserialize(&minted).context("signaling's answer is not a token")?;
    Ok(if json { Output::Json(minted) } else { Output::Text(format!("{}\n", issued.token)) })
}

/// The body of `POST /v1/ice-config`: the probes from --probes-from, then --probe.
fn ice_config_request(args: IceConfigArgs) -> anyhow::Result<Value> {
    let mut probes = serde_json::Map::new();
    if let Some(path) = &args.probes_from {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading probes from stdin")
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
        .map_err(|e| Failure::Usage(format!("--probes-from: {e:#}")))?;
        let report: Value = serde_json::from_str(&text)
            .map_err(|e| Failure::Usage(format!("--probes-from {}: not JSON: {e}", path.display())))?;
        match report.get("probes") {
            Some(Value::Object(map)) => probes.extend(map.clone()),
            _ => {
                return Err(Failure::Usage(format!(
                    "--probes-from {}: expected {{\"probes\": {{...}}}}",
                    path.display()
                ))
                .into());
            }
        }
    }
    for p in args.probes {
        // As many samples as a client would send, so that signaling counts them as it would a
        // client's (the first is dropped as warm-up).
        probes.insert(p.region, json!(vec![p.ms; geo::probe::RECOMMENDED_ATTEMPTS]));
    }
    let mut body = json!({ "probes": probes });
    if let Some(machine) = args.machine {
        body["machine_id"] = machine.into();
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn probe_args_are_validated() {
        assert!(parse_probe("eu-central=25.5").is_ok_and(|p| p.region == "eu-central" && p.ms == 25.5));
        for bad in ["eu-central", "EU=5", "eu=fast", "eu=-1", "eu=10001", "eu=NaN"] {
            assert!(parse_probe(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ice_config_request_merges_file_and_flags() {
        let dir = std::env::temp_dir().join(format!("relayctl-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("probes.json");
        std::fs::write(&file, r#"{"probes": {"eu-central": [30, null, 31], "us-east": [90, 91, 92]}}"#).unwrap();
        let args = IceConfigArgs {
            probes: vec![parse_probe("us-east=20").unwrap()],
            probes_from: Some(file),
            machine: Some("cab-1".into()),
        };
        let body = ice_config_request(args).unwrap();
        assert_eq!(body["probes"]["eu-central"], json!([30, null, 31]));
        assert_eq!(body["probes"]["us-east"], json!([20.0, 20.0, 20.0, 20.0, 20.0]));
        assert_eq!(body["machine_id"], "cab-1");
        let _ = std::fs::remove_dir_all(dir);
    }
}
