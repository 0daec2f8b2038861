//! What went wrong in a `relayctl` command, as far as its exit code is concerned (the codes are
//! listed in the crate's docs).

/// Exit codes (see the module docs).
pub const EXIT_SERVER: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

/// What went wrong, as far as the exit code is concerned. Errors without one (a local I/O error,
/// an answer that is not JSON) exit with 1.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Signaling answered with an error status.
    #[error("{message} (HTTP {status})")]
    Server { status: reqwest::StatusCode, message: String },
    /// The command line or the config file is wrong; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// No answer from signaling at all.
    #[error("signaling at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Server { .. } => EXIT_SERVER,
            Self::Usage(_) => EXIT_USAGE,
            Self::Unreachable { .. } => EXIT_UNREACHABLE,
        }
    }
}
