//! Shared helpers for tests that run the real `relay` binary: start it from a config in
//! `configs/` on ephemeral ports, read the addresses it bound from its banner, scrape its
//! metrics, and talk raw STUN/TURN to it over loopback.

#![allow(dead_code)]

pub mod browser;
pub mod links;
pub mod proxy;
pub mod webrtc_client;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relay::turn::auth::{long_term_key, rest_password};
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::message::{CLASS_ERROR_RESPONSE, CLASS_REQUEST, Getter, Message, MessageType, Method, Setter};
use stun::textattrs::TextAttribute;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("relay/ has a parent").to_path_buf()
}

pub fn config_path(name: &str) -> PathBuf {
    repo_root().join("configs").join(name)
}

/// A relay process, killed when dropped.
pub struct RelayProcess {
    pub child: Child,
    pub udp: SocketAddr,
    pub admin: SocketAddr,
    /// TURN over TCP, if on.
    pub tcp: Option<SocketAddr>,
    /// TURN over TLS listeners.
    pub tls: Vec<SocketAddr>,
    /// Lines the relay wrote to stderr (its logs), collected in the background.
    pub logs: mpsc::Receiver<String>,
    /// Lines the relay wrote to stdout (its banner).
    pub stdout: mpsc::Receiver<String>,
}

impl RelayProcess {
    /// Starts `relay --config configs/<config> <args>` on ephemeral loopback ports.
    pub fn start(config: &str, args: &[&str]) -> Self {
        Self::start_on(config, "127.0.0.1:0", args)
    }

    /// Like `start`, with the STUN/TURN port at `listen`.
    pub fn start_on(config: &str, listen: &str, args: &[&str]) -> Self {
        Self::start_with(config, listen, args, &[])
    }

    /// Like `start_on`, with environment variables set for the relay. `config` may also be an
    /// absolute path (joining one onto configs/ yields it unchanged).
    pub fn start_with(config: &str, listen: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        // Below Linux's ephemeral range (32768-60999), where the test's own peers and the
        // relay's port-0 listener land: a loopback peer on a relay port would be refused. A test
        // may give its own range.
        let range: &[&str] =
            if args.contains(&"--min-port") { &[] } else { &["--min-port", "10000", "--max-port", "30000"] };
        // An SFU on a free port, unless the test says otherwise.
        let sfu: &[&str] =
            if args.contains(&"--sfu-http-listen") { &[] } else { &["--sfu-http-listen", "127.0.0.1:0"] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("--config")
            .arg(config_path(config))
            .args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
            .args(sfu)
            .args(range)
            .args(args)
            .envs(env.iter().copied())
            // Whatever the relay fetches in tests is on loopback.
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start relay binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (log_tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = log_tx.send(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        let (stdout_tx, stdout_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut udp = None;
            let mut admin = None;
            let mut tcp = None;
            let mut tls = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = stdout_tx.send(line.clone());
                if let Some(rest) = line.trim().strip_prefix("STUN/TURN   udp://") {
                    udp = rest.split_whitespace().next().and_then(|a| a.parse::<SocketAddr>().ok());
                }
                if let Some(rest) = line.trim().strip_prefix("TURN/TCP    tcp://") {
                    tcp = rest.parse::<SocketAddr>().ok();
                }
                if let Some(addr) = line.trim().strip_prefix("TURN/TLS    tls://").and_then(|a| a.parse().ok()) {
                    tls.push(addr);
                }
                if let Some(rest) = line.trim().strip_prefix("metrics     http://") {
                    admin = rest.strip_suffix("/metrics").and_then(|a| a.parse::<SocketAddr>().ok());
                }
                if let (Some(u), Some(a)) = (udp, admin) {
                    let _ = tx.send((u, a, tcp, std::mem::take(&mut tls)));
                    udp = None;
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((udp, admin, tcp, tls)) => Self { child, udp, admin, tcp, tls, logs, stdout: stdout_rx },
            Err(_) => {
                let _ = child.kill();
                let logs: Vec<String> = logs.try_iter().collect();
                panic!("relay did not start; its logs:\n{}", logs.join("\n"));
            }
        }
    }

    /// The base URL of the SFU's HTTP listener (`http://ADDR` or `https://ADDR`), from the
    /// banner. Call it once: it reads the banner lines.
    pub fn sfu_http(&self) -> String {
        let banner: Vec<String> = self.stdout.try_iter().collect();
        let (scheme, rest) = banner
            .iter()
            .find_map(|l| l.trim().strip_prefix("SFU         WHIP "))
            .and_then(|rest| rest.split_once("://"))
            .unwrap_or_else(|| panic!("no SFU line in the banner: {banner:?}"));
        let addr = rest.split('/').next().unwrap_or_default();
        format!("{scheme}://{addr}")
    }

    pub fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", &format!("http://{}/metrics", self.admin)])
            .output()
            .expect("curl is installed (scripts/test.sh installs it)");
        assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("metrics are UTF-8")
    }

    /// The body of `/healthz`, parsed.
    pub fn healthz_body(&self) -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .arg(format!("http://{}/healthz", self.admin))
            .output()
            .expect("curl is installed (scripts/test.sh installs it)");
        serde_json::from_slice(&out.stdout).expect("/healthz answers JSON")
    }

    /// The status code of `/healthz`.
    pub fn healthz(&self) -> u16 {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "5", "-w", "%{http_code}"])
            .arg(format!("http://{}/healthz", self.admin))
            .output()
            .expect("curl is installed (scripts/test.sh installs it)");
        String::from_utf8_lossy(&out.stdout).parse().expect("an HTTP status code")
    }

    /// The value of one series, e.g. `relay_dropped_packets_total{reason="malformed"}`.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// Sends a signal and waits for exit, returning the exit status code.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> Option<i32> {
        // SAFETY: kill(2) with a pid we own.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        self.wait(timeout)
    }

    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let status = self.child.wait();
        if std::thread::panicking() {
            let logs: Vec<String> = self.logs.try_iter().collect();
            eprintln!("relay exit status: {status:?}; its logs:\n{}", logs.join("\n"));
        }
    }
}

/// A self-signed certificate for 127.0.0.1, ::1 and localhost, written as PEM files into `dir`
/// under `name`; returns the certificate and key paths.
pub fn test_certificate(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let cert = rcgen::generate_simple_self_signed(names).expect("rcgen makes a certificate");
    let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// [`test_certificate`] valid until midnight UTC of `(year, month, day)`.
pub fn test_certificate_until(dir: &std::path::Path, name: &str, (y, m, d): (i32, u8, u8)) -> (PathBuf, PathBuf) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let mut params = rcgen::CertificateParams::new(names).expect("certificate parameters");
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = rcgen::KeyPair::generate().expect("a key pair");
    let cert = params.self_signed(&key).expect("rcgen makes a certificate");
    let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// A fresh directory under the system's temp dir, removed by the caller when it likes.
pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-test-{label}-{}-{}", std::process::id(), unix_now()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("series {series} not in metrics:\n{text}"))
}

/// The metric names starting with `prefix` that the alert rules in `deploy/prometheus/<file>`
/// use (a word of the file that starts with it: metric names are the only such words).
pub fn rule_metrics(file: &str, prefix: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether a `/metrics` page has a series of metric `name`.
pub fn has_series(metrics: &str, name: &str) -> bool {
    metrics.lines().any(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// A byte stream to the relay (TCP or TLS over TCP).
pub trait Stream: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> Stream for T {}

/// A minimal, blocking STUN/TURN client over one UDP socket (or, with `stream`, over TCP or TLS
/// with RFC 8656 framing), for driving the relay by hand.
pub struct RawClient {
    pub socket: UdpSocket,
    /// When set, requests go over this stream instead of `socket`.
    pub stream: Option<Box<dyn Stream>>,
    pub server: SocketAddr,
    pub username: String,
    pub key: [u8; 16],
    pub realm: String,
    pub nonce: Option<String>,
}

impl RawClient {
    pub fn new(server: SocketAddr, username: &str, password: &str, realm: &str) -> Self {
        let local = if server.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" };
        let socket = UdpSocket::bind(local).expect("bind client socket");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("set timeout");
        Self {
            socket,
            stream: None,
            server,
            username: username.into(),
            key: long_term_key(username, realm, password),
            realm: realm.into(),
            nonce: None,
        }
    }

    /// A client with a TURN REST credential expiring `ttl` seconds from now (negative: expired).
    pub fn rest(server: SocketAddr, secret: &str, ttl: i64, realm: &str) -> Self {
        let expiry = (unix_now() as i64 + ttl) as u64;
        let username = format!("{expiry}:test");
        let password = rest_password(secret.as_bytes(), &username);
        Self::new(server, &username, &password, realm)
    }

    pub fn build(&self, method: Method, attrs: &[&dyn Setter]) -> Message {
        let mut m = Message::new();
        m.typ = MessageType::new(method, CLASS_REQUEST);
        m.new_transaction_id().expect("random id");
        m.write_header();
        for a in attrs {
            a.add_to(&mut m).expect("attribute");
        }
        if let Some(nonce) = &self.nonce {
            TextAttribute::new(ATTR_USERNAME, self.username.clone()).add_to(&mut m).expect("username");
            TextAttribute::new(ATTR_REALM, self.realm.clone()).add_to(&mut m).expect("realm");
            TextAttribute::new(ATTR_NONCE, nonce.clone()).add_to(&mut m).expect("nonce");
            stun::integrity::MessageIntegrity(self.key.to_vec()).add_to(&mut m).expect("integrity");
        }
        stun::fingerprint::FINGERPRINT.add_to(&mut m).expect("fingerprint");
        m
    }

    /// Like `rest`, over TCP to `server`.
    pub fn rest_tcp(server: SocketAddr, secret: &str, ttl: i64, realm: &str) -> Self {
        let mut c = Self::rest(server, secret, ttl, realm);
        c.stream = Some(connect_stream(server, None, Duration::from_secs(5)));
        c
    }

    /// Like `rest`, over TLS to `server`, trusting the PEM certificate `cert` for "localhost".
    pub fn rest_tls(server: SocketAddr, secret: &str, ttl: i64, realm: &str, cert: &std::path::Path) -> Self {
        let mut c = Self::rest(server, secret, ttl, realm);
        c.stream = Some(connect_stream(server, Some(cert), Duration::from_secs(5)));
        c
    }

    /// One framed message from the stream (RFC 8656 §12.5: STUN, or padded ChannelData).
    fn read_frame(stream: &mut dyn Stream) -> Vec<u8> {
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).expect("a message from the relay");
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let body = if header[0] >> 6 == 0 { 16 + len } else { len.next_multiple_of(4) };
        let mut message = header.to_vec();
        message.resize(4 + body, 0);
        stream.read_exact(&mut message[4..]).expect("the rest of the message");
        message
    }

    /// The next message the relay sends over the stream (a response, a Data indication or
    /// ChannelData). Panics if none comes within the stream's read timeout.
    pub fn read_message(&mut self) -> Vec<u8> {
        Self::read_frame(self.stream.as_deref_mut().expect("a stream client"))
    }

    /// Sends `msg` and returns the response with the same transaction id (retrying on loss).
    pub fn exchange(&mut self, msg: &Message) -> Message {
        if let Some(stream) = self.stream.as_deref_mut() {
            stream.write_all(&msg.raw).expect("write to the relay");
            stream.flush().expect("flush");
            loop {
                let frame = Self::read_frame(stream);
                let mut resp = Message::new();
                if resp.unmarshal_binary(&frame).is_ok() && resp.transaction_id == msg.transaction_id {
                    return resp;
                }
            }
        }
        for _ in 0..5 {
            self.socket.send_to(&msg.raw, self.server).expect("send");
            let deadline = Instant::now() + Duration::from_millis(500);
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                let Ok((n, _)) = self.socket.recv_from(&mut buf) else { break };
                let mut resp = Message::new();
                if resp.unmarshal_binary(&buf[..n]).is_ok() && resp.transaction_id == msg.transaction_id {
                    return resp;
                }
            }
        }
        panic!("no response from the relay");
    }

    /// A request with the 401/438 dance a real client does.
    pub fn call(&mut self, method: Method, attrs: &[&dyn Setter]) -> Message {
        for _ in 0..3 {
            let request = self.build(method, attrs);
            let resp = self.exchange(&request);
            if matches!(error_code(&resp), Some(401 | 438))
                && let Ok(n) = TextAttribute::get_from_as(&resp, ATTR_NONCE)
                && self.nonce.as_deref() != Some(n.text.as_str())
            {
                self.nonce = Some(n.text);
                continue;
            }
            return resp;
        }
        panic!("authentication did not converge");
    }

    /// Allocates; returns the relayed address.
    pub fn allocate(&mut self) -> Result<SocketAddr, u16> {
        let udp = turn::proto::reqtrans::RequestedTransport { protocol: turn::proto::PROTO_UDP };
        let resp = self.call(stun::message::METHOD_ALLOCATE, &[&udp]);
        if let Some(code) = error_code(&resp) {
            return Err(code);
        }
        let mut relayed = turn::proto::relayaddr::RelayedAddress::default();
        relayed.get_from(&resp).expect("XOR-RELAYED-ADDRESS");
        Ok(SocketAddr::new(relayed.ip, relayed.port))
    }
}

/// A TCP connection to the relay at `server`, or with `cert` a TLS one trusting that PEM
/// certificate for "localhost"; reads time out after `read_timeout`.
pub fn connect_stream(server: SocketAddr, cert: Option<&std::path::Path>, read_timeout: Duration) -> Box<dyn Stream> {
    let mut tcp = std::net::TcpStream::connect(server).expect("TCP connect to the relay");
    let Some(cert) = cert else {
        tcp.set_read_timeout(Some(read_timeout)).unwrap();
        return Box::new(tcp);
    };
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(cert).expect("a PEM certificate")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut session = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    // The handshake first, with time to spare, so that a short read timeout only applies after.
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while session.is_handshaking() {
        session.complete_io(&mut tcp).expect("TLS handshake with the relay");
    }
    tcp.set_read_timeout(Some(read_timeout)).unwrap();
    Box::new(rustls::StreamOwned::new(session, tcp))
}

pub fn error_code(m: &Message) -> Option<u16> {
    if m.typ.class != CLASS_ERROR_RESPONSE {
        return None;
    }
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).expect("ERROR-CODE in an error response");
    Some(e.code.0)
}

pub fn peer_attr(addr: &str) -> turn::proto::peeraddr::PeerAddress {
    let a: SocketAddr = addr.parse().expect("peer address");
    turn::proto::peeraddr::PeerAddress { ip: a.ip(), port: a.port() }
}

/// ChannelData framing for tests.
pub fn channel_data(number: u16, data: &[u8]) -> Vec<u8> {
    let mut v = number.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// configs/relay.toml's example secret: media tokens are signed with the TURN REST secrets.
pub const MEDIA_SECRET: &str = "local-dev-secret-change-me";

/// A media token for `sub`, signed with [`MEDIA_SECRET`], valid for 10 minutes.
pub fn media_token(role: cluster::media::MediaRole, machine: &str, session: Option<&str>, sub: &str) -> String {
    let claims = cluster::media::MediaClaims::new(sub, machine, session, role, unix_now(), 600);
    cluster::media::mint(MEDIA_SECRET.as_bytes(), claims).expect("the secret is not empty")
}
