//! Logging as both binaries set it up: `log.format` (`text` or `json`) and `log.level` (a tracing
//! filter such as `info` or `relay=debug`), validated with the config and installed once at start.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// The `[log]` section of both config files.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: String,
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self { format: "text".into(), level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Changes the filter of the installed subscriber (a reload of `log.level`).
pub type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// `log.format` and `log.level` checked; the error names the key.
pub fn validate(format: &str, level: &str) -> Result<LogFormat, String> {
    let format = match format {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => return Err(format!("log.format: expected \"text\" or \"json\", got {other:?}")),
    };
    EnvFilter::try_new(level).map_err(|e| format!("log.level: invalid filter {level:?}: {e}"))?;
    Ok(format)
}

/// Installs the global subscriber: to stderr, colours only on a terminal, JSON lines with the
/// current span when asked. Returns what changes the filter later.
pub fn init(format: LogFormat, level: &str) -> SetLevel {
    // Validated with the config (`validate`), so this parse succeeds.
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // The reload handle's type depends on the format, hence a closure per branch.
    macro_rules! reloading {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |level: &str| {
                let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            })
        }};
    }
    match format {
        LogFormat::Text => reloading!(builder),
        LogFormat::Json => reloading!(builder.json().with_current_span(true).with_span_list(false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key() {
        assert_eq!(validate("json", "info,relay=debug"), Ok(LogFormat::Json));
        assert!(validate("yaml", "info").unwrap_err().starts_with("log.format:"));
        assert!(validate("text", "info,=[").unwrap_err().starts_with("log.level:"));
    }
}
