//! The HTTP side: requests to signaling's JSON API and the classification of what comes back.
//! A transport failure (refused, unresolvable, timed out) is [`Failure::Unreachable`]; an error
//! status is [`Failure::Server`] with signaling's `error.message` (`signaling::error` documents
//! the body); a success is its JSON body (`null` for an empty one, as `204 No Content` has).

use anyhow::Context;
use reqwest::{Method, RequestBuilder, Url};
use serde_json::Value;

use crate::failure::Failure;
use crate::settings::{Settings, Token};

/// How much of a non-JSON error body to show.
const MAX_ERROR_TEXT: usize = 200;

pub struct Api {
    http: reqwest::Client,
    base: Url,
    token: Option<Token>,
    timeout_secs: u64,
}

impl Api {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("relayctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: settings.url.clone(),
            token: settings.token.clone(),
            timeout_secs: settings.timeout.as_secs(),
        })
    }

    /// An authenticated GET with a query string.
    pub async fn get(&self, path: &[&str], query: &[(&str, String)]) -> anyhow::Result<Value> {
        let req = self.http.get(self.url(path)).query(query);
        self.send(self.authorize(req)?).await
    }

    /// A GET that needs no token (and sends none).
    pub async fn get_public(&self, path: &[&str]) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(path))).await
    }

    /// An authenticated POST of a JSON body.
    pub async fn post(&self, path: &[&str], body: &Value) -> anyhow::Result<Value> {
        let req = self.http.request(Method::POST, self.url(path)).json(body);
        self.send(self.authorize(req)?).await
    }

    /// An authenticated DELETE.
    pub async fn delete(&self, path: &[&str]) -> anyhow::Result<Value> {
        let req = self.http.request(Method::DELETE, self.url(path));
        self.send(self.authorize(req)?).await
    }

    /// The base URL with `segments` appended, each percent-encoded, so an id can never reach
    /// another route (`../`, `?`, `#`) and a base with a path prefix (behind a proxy) works.
    fn url(&self, segments: &[&str]) -> Url {
        // The url crate skips these rather than encode them; the id parsers refuse them.
        debug_assert!(segments.iter().all(|s| !matches!(*s, "." | "..")), "{segments:?}");
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("http(s) URLs can be a base (Settings checks the scheme)")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn authorize(&self, req: RequestBuilder) -> Result<RequestBuilder, Failure> {
        match &self.token {
            Some(token) => Ok(req.bearer_auth(token.as_str())),
            None => Err(Failure::Usage(
                "this needs a token: pass --token, set RELAYCTL_TOKEN or put `token = \"...\"` in the config file \
                 (make the first admin token with `relayctl token mint --key <auth.jwt_key> --sub <you> --role admin`)"
                    .into(),
            )),
        }
    }

    async fn send(&self, req: RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.transport(&e))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| {
                    // Not signaling's error body: a proxy in the way, or not signaling at all.
                    let text = String::from_utf8_lossy(&body);
                    let text: String = text.trim().chars().take(MAX_ERROR_TEXT).collect();
                    if text.is_empty() { "no error message".into() } else { text }
                });
            return Err(Failure::Server { status, message }.into());
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).with_context(|| format!("signaling's answer ({status}) is not JSON"))
    }

    fn transport(&self, e: &reqwest::Error) -> Failure {
        let reason = if e.is_timeout() {
            format!("no answer within {} s (--timeout-secs)", self.timeout_secs)
        } else {
            // reqwest's own message is "error sending request for url (...)"; the cause at the
            // bottom of the chain ("Connection refused", "failed to lookup address") says why.
            let mut cause: &dyn std::error::Error = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            cause.to_string()
        };
        Failure::Unreachable { url: self.base.to_string(), reason }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn api(base: &str) -> Api {
        let settings =
            Settings { url: base.parse().unwrap(), token: None, json: false, timeout: Duration::from_secs(1) };
        Api::new(&settings).unwrap()
    }

    #[test]
    fn path_segments_are_encoded_and_keep_the_base_path() {
        assert_eq!(
            api("http://h:8080").url(&["v1", "sessions", "a/../b?c#d"]).as_str(),
            "http://h:8080/v1/sessions/a%2F..%2Fb%3Fc%23d"
        );
        assert_eq!(api("http://h").url(&["v1", "sessions", "%2e%2e"]).as_str(), "http://h/v1/sessions/%252e%252e");
        assert_eq!(api("https://h/signaling/").url(&["v1", "regions"]).as_str(), "https://h/signaling/v1/regions");
        assert_eq!(api("https://h/signaling").url(&["v1", "regions"]).as_str(), "https://h/signaling/v1/regions");
    }

    #[test]
    fn no_token_is_a_usage_error() {
        let a = api("http://h");
        assert!(matches!(a.authorize(a.http.get("http://h/")), Err(Failure::Usage(_))));
    }
}
