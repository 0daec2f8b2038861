//! Headless browsers for tests: serve pages on loopback, open them in Chromium (Debian's
//! `chromium`) or Firefox (Debian's `firefox-esr`), both installed by scripts/test.sh, with a
//! fake camera and microphone, and collect what the pages report back over HTTP
//! (`POST /report/{name}` with a JSON body).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::{get, post};
use serde_json::Value;

/// What test pages share (before their own script): `q` (the query), `report` (POST to the test), and `exchange`, which
/// offers, waits for ICE gathering, POSTs the offer to a WHIP/WHEP URL with a bearer token and
/// applies the answer (false, after reporting, if the server refused).
pub const PAGE_COMMON: &str = r#"<script>
const q = new URLSearchParams(location.search);
const report = (o) => fetch('/report/' + q.get('name'), {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(o)});
window.onerror = (m) => { report({error: String(m)}); };
async function exchange(pc, url) {
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === 'complete') return done();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') done(); };
    setTimeout(done, 3000);
  });
  const res = await fetch(url, {method: 'POST', body: pc.localDescription.sdp,
    headers: {'content-type': 'application/sdp', 'authorization': 'Bearer ' + q.get('token')}});
  if (res.status !== 201) { report({refused: res.status, body: await res.text()}); return false; }
  await pc.setRemoteDescription({type: 'answer', sdp: await res.text()});
  return true;
}
// A data-channel message with its type: `text:` and the string, or `binary:` and the bytes in hex.
function shown(data) {
  if (typeof data === 'string') return 'text:' + data;
  return 'binary:' + Array.from(new Uint8Array(data), (b) => b.toString(16).padStart(2, '0')).join('');
}
</script>"#;

/// What each page reported, by page name.
pub type Reports = Arc<Mutex<HashMap<String, Vec<Value>>>>;

/// Serves `pages` (path → HTML) and the report endpoint on a loopback port; returns its address.
pub fn serve_pages(pages: Vec<(&'static str, String)>, reports: Reports) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut app = axum::Router::new().route(
                "/report/{name}",
                post(
                    |State(r): State<Reports>, Path(name): Path<String>, axum::Json(v): axum::Json<Value>| async move {
                        r.lock().unwrap().entry(name).or_default().push(v);
                    },
                ),
            );
            for (path, html) in pages {
                app = app.route(path, get(move || async move { Html(html) }));
            }
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app.with_state(reports)).await.unwrap();
        });
    });
    addr
}

/// A headless Chromium on a URL, killed when dropped.
pub struct Browser {
    child: Child,
    _profile: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    pub fn open(url: &str) -> Self {
        Self::open_with(url, &[])
    }

    /// With extra command-line flags.
    pub fn open_with(url: &str, flags: &[&str]) -> Self {
        let profile = std::env::temp_dir().join(format!("relay-chromium-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
            ])
            .args(flags)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium is installed (scripts/test.sh installs the Debian package chromium)");
        Self { child, _profile: TempDir(profile) }
    }
}

impl Browser {
    /// Headless Firefox (Debian's `firefox-esr`, installed by scripts/test.sh) on `url`, with a
    /// fresh profile: fake media, loopback ICE candidates, host addresses not hidden behind mDNS,
    /// and camera and microphone allowed for `origin` (Firefox gathers loopback candidates
    /// only for an origin with that permission stored).
    pub fn firefox(url: &str, origin: &str) -> Self {
        let profile = std::env::temp_dir().join(format!("relay-firefox-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&profile).unwrap();
        let prefs = [
            ("media.navigator.streams.fake", "true"),
            ("media.navigator.permission.disabled", "true"),
            ("media.peerconnection.ice.loopback", "true"),
            ("media.peerconnection.ice.obfuscate_host_addresses", "false"),
            ("media.autoplay.default", "0"),
            ("browser.shell.checkDefaultBrowser", "false"),
            ("datareporting.policy.dataSubmissionEnabled", "false"),
            ("app.update.auto", "false"),
            ("network.proxy.type", "0"),
        ];
        let user_js: String = prefs.iter().map(|(k, v)| format!("user_pref(\"{k}\", {v});\n")).collect();
        std::fs::write(profile.join("user.js"), user_js).unwrap();
        // permissions.sqlite, as Firefox writes it (schema version 12), with Python's sqlite3.
        let script = r#"
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE moz_perms (id INTEGER PRIMARY KEY, origin TEXT, type TEXT, permission INTEGER, expireType INTEGER, expireTime INTEGER, modificationTime INTEGER)")
db.execute("CREATE TABLE moz_hosts (id INTEGER PRIMARY KEY, host TEXT, type TEXT, permission INTEGER, expireType INTEGER, expireTime INTEGER, modificationTime INTEGER, isInBrowserElement INTEGER)")
for kind in ("camera", "microphone"):
    db.execute("INSERT INTO moz_perms (origin, type, permission, expireType, expireTime, modificationTime) VALUES (?, ?, 1, 0, 0, ?)", (sys.argv[2], kind, int(time.time() * 1000)))
db.execute("PRAGMA user_version = 12")
db.commit()
"#;
        let status = Command::new("python3")
            .args(["-c", script])
            .arg(profile.join("permissions.sqlite"))
            .arg(origin)
            .status()
            .expect("python3 writes the Firefox profile's permissions");
        assert!(status.success(), "writing permissions.sqlite failed");
        let child = Command::new("firefox-esr")
            .args(["--headless", "--no-remote", "-profile"])
            .arg(&profile)
            .arg(url)
            .env("MOZ_HEADLESS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("firefox-esr is installed (scripts/test.sh installs the Debian package firefox-esr)");
        Self { child, _profile: TempDir(profile) }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(super::unix_now());
    h.finish()
}

/// The latest report of `name` that has `key`; panics on any report with an error.
pub fn latest(reports: &Reports, name: &str, key: &str) -> Option<Value> {
    let r = reports.lock().unwrap();
    let list = r.get(name)?;
    if let Some(e) = list.iter().find_map(|v| v.get("error")) {
        panic!("page {name} failed: {e}");
    }
    list.iter().rev().find(|v| v.get(key).is_some()).cloned()
}

pub fn wait_for(what: &str, timeout: Duration, reports: &Reports, mut done: impl FnMut(&Reports) -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if done(reports) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}; reports: {:?}", reports.lock().unwrap());
}

/// `base` with `query` appended, encoded.
pub fn url(base: &str, query: &[(&str, &str)]) -> String {
    let mut u = reqwest::Url::parse(base).unwrap();
    u.query_pairs_mut().extend_pairs(query);
    u.to_string()
}
