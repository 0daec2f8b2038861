//! Where relayctl's settings come from: a flag, else its `RELAYCTL_*` environment variable, else
//! the config file, else the default; validated once into [`Settings`]. The config file is TOML
//! with two keys, `url` and `token`; any other key is an error, so a typo cannot silently fall
//! back to a default. A file named with `--config` must exist; the default one is read only if
//! it does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::failure::Failure;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Options every subcommand takes.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Signaling's base URL [default: http://127.0.0.1:8080]
    #[arg(long, env = "RELAYCTL_URL", global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Bearer token: an admin JWT for most commands
    #[arg(long, env = "RELAYCTL_TOKEN", global = true, hide_env_values = true, value_name = "JWT")]
    pub token: Option<String>,
    /// TOML file with `url` and `token` [default: ~/.config/relayctl/config.toml if present]
    #[arg(long, env = "RELAYCTL_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on signaling after this many seconds
    #[arg(long, global = true, default_value_t = 10, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_secs: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    url: Option<String>,
    token: Option<String>,
}

/// A bearer token; kept out of Debug output.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The validated settings.
#[derive(Debug)]
pub struct Settings {
    /// Signaling's base URL: http or https, with a host, without query or fragment.
    pub url: Url,
    pub token: Option<Token>,
    pub json: bool,
    pub timeout: Duration,
}

impl Settings {
    pub fn resolve(args: &GlobalArgs) -> Result<Self, Failure> {
        let (file, path) = match &args.config {
            Some(path) => (load(path)?, Some(path.clone())),
            None => match default_path().filter(|p| p.exists()) {
                Some(path) => (load(&path)?, Some(path)),
                None => (ConfigFile::default(), None),
            },
        };
        let in_file = |key: &str| match &path {
            Some(path) => format!("{key} in {}", path.display()),
            None => key.to_owned(),
        };
        let (url, from) = match (&args.url, &file.url) {
            (Some(url), _) => (url.as_str(), "--url (or RELAYCTL_URL)".to_owned()),
            (None, Some(url)) => (url.as_str(), in_file("url")),
            (None, None) => (DEFAULT_URL, "the default url".to_owned()),
        };
        let url = parse_url(url).map_err(|why| Failure::Usage(format!("{from}: {why}")))?;
        // An empty RELAYCTL_TOKEN means "none", as an unset one does.
        let token = match (args.token.as_deref().filter(|t| !t.is_empty()), &file.token) {
            (Some(token), _) => Some(parse_token(token).map_err(|why| Failure::Usage(format!("--token: {why}")))?),
            (None, Some(token)) => {
                Some(parse_token(token).map_err(|why| Failure::Usage(format!("{}: {why}", in_file("token"))))?)
            }
            (None, None) => None,
        };
        Ok(Self { url, token, json: args.json, timeout: Duration::from_secs(args.timeout_secs) })
    }
}

/// `~/.config/relayctl/config.toml`.
fn default_path() -> Option<PathBuf> {
    std::env::home_dir().filter(|home| home.is_absolute()).map(|home| home.join(".config/relayctl/config.toml"))
}

fn load(path: &Path) -> Result<ConfigFile, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Failure::Usage(format!("config file {}: {}", path.display(), e.message())))
}

fn parse_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{raw:?}: expected an http:// or https:// URL"));
    }
    if url.host().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{raw:?}: expected signaling's base URL, like {DEFAULT_URL}"));
    }
    Ok(url)
}

/// A JWT is three base64url parts; anything with spaces or control characters would not even
/// make a valid header, so it is refused here with a clearer message.
fn parse_token(raw: &str) -> Result<Token, String> {
    let raw = raw.trim();
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token is printable ASCII without spaces".into());
    }
    Ok(Token(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: Option<&str>, token: Option<&str>, config: Option<&Path>) -> GlobalArgs {
        GlobalArgs {
            url: url.map(Into::into),
            token: token.map(Into::into),
            config: config.map(Into::into),
            json: false,
            timeout_secs: 10,
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("relayctl-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(&file, "url = \"https://signaling.example/api/\"\ntoken = \"from.the.file\"\n").unwrap();

        let s = Settings::resolve(&args(None, None, Some(&file))).unwrap();
        assert_eq!(s.url.as_str(), "https://signaling.example/api/");
        assert_eq!(s.token.unwrap().as_str(), "from.the.file");

        let s = Settings::resolve(&args(Some("http://10.0.0.1:8080"), Some("from.a.flag"), Some(&file))).unwrap();
        assert_eq!(s.url.as_str(), "http://10.0.0.1:8080/");
        assert_eq!(s.token.unwrap().as_str(), "from.a.flag");

        std::fs::write(&file, "url = \"http://x\"\ntokne = \"typo\"\n").unwrap();
        let err = Settings::resolve(&args(None, None, Some(&file))).unwrap_err();
        assert!(matches!(&err, Failure::Usage(m) if m.contains("tokne")), "{err}");

        let err = Settings::resolve(&args(None, None, Some(&dir.join("missing.toml")))).unwrap_err();
        assert!(matches!(&err, Failure::Usage(m) if m.contains("cannot read")), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn urls_and_tokens_are_checked() {
        for bad in ["localhost:8080", "ftp://x", "http://x/?a=1", "http://x/#f", "not a url"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(parse_url("http://[::1]:8080").is_ok());
        assert!(parse_token("a b").is_err());
        assert!(parse_token(" a.b.c\n").is_ok_and(|t| t.as_str() == "a.b.c"));
    }
}
