//! The bench's own TURN client, built for load rather than for one session: it runs thousands of
//! Allocate transactions at once (each with the full 401 challenge round trip and TURN REST
//! credentials), retransmits on loss, and binds channels. Messages are built and read with the
//! `stun`/`turn` crates; data is framed by hand (a ChannelData header is four bytes).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use relay::turn::auth::{long_term_key, rest_password};
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, Message,
    MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;

/// A TURN REST credential (the `use-auth-secret` scheme both servers implement).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    key: [u8; 16],
}

impl Credentials {
    pub fn rest(secret: &str, realm: &str, ttl: Duration) -> Self {
        let expiry = cluster::time::unix_now() + ttl.as_secs();
        let username = format!("{expiry}:bench");
        let password = rest_password(secret.as_bytes(), &username);
        Self::static_user(&username, &password, realm)
    }

    /// A static long-term credential (coturn's `user=name:password`).
    pub fn static_user(username: &str, password: &str, realm: &str) -> Self {
        Self { key: long_term_key(username, realm, password), username: username.into(), realm: realm.into() }
    }

    /// The credential as environment variables, for a child bench process (not on its command
    /// line, where `ps` shows it); the key is the long-term key, not the secret or password.
    pub fn to_env(&self) -> [(&'static str, String); 3] {
        let key = self.key.iter().map(|b| format!("{b:02x}")).collect();
        [(ENV_USERNAME, self.username.clone()), (ENV_REALM, self.realm.clone()), (ENV_KEY, key)]
    }

    /// The credential a parent bench process put in the environment, if any.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let (Ok(username), Ok(realm), Ok(hex)) =
            (std::env::var(ENV_USERNAME), std::env::var(ENV_REALM), std::env::var(ENV_KEY))
        else {
            return Ok(None);
        };
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
            .collect::<Option<Vec<u8>>>();
        let key = bytes.and_then(|b| <[u8; 16]>::try_from(b).ok());
        let key = key.ok_or_else(|| anyhow::anyhow!("{ENV_KEY}: expected 32 hex digits"))?;
        Ok(Some(Self { username, realm, key }))
    }
}

const ENV_USERNAME: &str = "BENCH_TURN_USERNAME";
const ENV_REALM: &str = "BENCH_TURN_REALM";
const ENV_KEY: &str = "BENCH_TURN_KEY";

/// One allocated client.
pub struct Client {
    pub socket: UdpSocket,
    /// The XOR-RELAYED-ADDRESS the server gave.
    pub relayed: SocketAddr,
    pub nonce: String,
    /// The lifetime the server granted (its LIFETIME attribute; RFC 8656's default without one).
    pub lifetime: Duration,
}

/// RFC 8656 §3.7: an allocation's lifetime unless the server says otherwise.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);

/// Builds a request; signed when a nonce is given.
pub fn request(method: Method, attrs: &[&dyn Setter], creds: &Credentials, nonce: Option<&str>) -> Message {
    let mut m = Message::new();
    m.typ = MessageType::new(method, CLASS_REQUEST);
    // Random ids: only fails if the OS has no randomness, which would stop everything else too.
    m.new_transaction_id().expect("random transaction id");
    m.write_header();
    for a in attrs {
        let _ = a.add_to(&mut m);
    }
    if let Some(nonce) = nonce {
        let _ = TextAttribute::new(ATTR_USERNAME, creds.username.clone()).add_to(&mut m);
        let _ = TextAttribute::new(ATTR_REALM, creds.realm.clone()).add_to(&mut m);
        let _ = TextAttribute::new(ATTR_NONCE, nonce.to_owned()).add_to(&mut m);
        let _ = stun::integrity::MessageIntegrity(creds.key.to_vec()).add_to(&mut m);
    }
    let _ = stun::fingerprint::FINGERPRINT.add_to(&mut m);
    m
}

fn requested_udp() -> turn::proto::reqtrans::RequestedTransport {
    turn::proto::reqtrans::RequestedTransport { protocol: turn::proto::PROTO_UDP }
}

pub fn error_code(m: &Message) -> Option<u16> {
    if m.typ.class != CLASS_ERROR_RESPONSE {
        return None;
    }
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|()| e.code.0)
}

pub fn nonce_of(m: &Message) -> Option<String> {
    TextAttribute::get_from_as(m, ATTR_NONCE).ok().map(|t| t.text)
}

/// What `allocate_many` achieved.
pub struct Allocated {
    pub clients: Vec<Client>,
    /// Error responses by code, and requests that timed out (code 0).
    pub failures: BTreeMap<u16, u64>,
    pub elapsed: Duration,
}

impl Allocated {
    /// Deletes every allocation (Refresh with a zero lifetime, RFC 8656 §7.3), best effort:
    /// each request is sent twice, paced (a burst of thousands overflows a server's socket
    /// buffer), and the answers are not awaited. A server the bench did not start keeps what a
    /// step allocated for the allocations' whole lifetime otherwise, and the next step's
    /// clients, whose source ports may repeat an old allocation's 5-tuple, get 437 or 441 (and
    /// the ports stay taken).
    pub fn release(&self, server: SocketAddr, creds: &Credentials) {
        release(&self.clients, server, creds);
    }
}

/// Deletes `clients`' allocations: see [`Allocated::release`].
pub fn release(clients: &[Client], server: SocketAddr, creds: &Credentials) {
    let zero = turn::proto::lifetime::Lifetime(Duration::ZERO);
    for _ in 0..2 {
        for chunk in clients.chunks(64) {
            for c in chunk {
                let refresh = request(stun::message::METHOD_REFRESH, &[&zero], creds, Some(&c.nonce));
                let _ = c.socket.send_to(&refresh.raw, server);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Challenge,
    Authenticated,
}

struct InFlight {
    socket: UdpSocket,
    phase: Phase,
    message: Message,
    sent_at: Instant,
    tries: u32,
    nonce: Option<String>,
}

const RTO: Duration = Duration::from_millis(500);
const TRIES: u32 = 5;

/// Allocates `count` relays on `server`, each from its own client socket (bound round-robin on
/// `bind_ips`, so more clients than one address has ephemeral ports), keeping `window`
/// transactions in flight. Every allocation goes through the 401 challenge first, as a browser's.
/// After `give_up_after` failures no new allocation is started (a server at its cap would
/// otherwise make every remaining one wait out its retransmissions).
pub fn allocate_many(
    server: SocketAddr,
    creds: &Credentials,
    count: usize,
    window: usize,
    bind_ips: &[IpAddr],
    give_up_after: u64,
    progress: Option<&ProgressBar>,
) -> anyhow::Result<Allocated> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<InFlight>> = (0..window).map(|_| None).collect();
    let mut clients = Vec::with_capacity(count);
    let mut failures = BTreeMap::new();
    let mut started = 0usize;
    let mut done = 0usize;
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    loop {
        let failed: u64 = failures.values().sum();
        let give_up = failed >= give_up_after;
        if done == started && (started == count || give_up) {
            break;
        }
        // Fill free slots with new clients.
        for (slot, entry) in slots.iter_mut().enumerate() {
            if entry.is_none() && started < count && !give_up {
                let ip = bind_ips[started % bind_ips.len()];
                let socket =
                    UdpSocket::bind((ip, 0)).with_context(|| format!("binding client socket {started} on {ip}"))?;
                socket.set_nonblocking(true)?;
                let message = request(METHOD_ALLOCATE, &[&requested_udp()], creds, None);
                let _ = socket.send_to(&message.raw, server);
                let fd = socket.as_raw_fd();
                poll.registry().register(&mut SourceFd(&fd), Token(slot), Interest::READABLE)?;
                *entry = Some(InFlight {
                    socket,
                    phase: Phase::Challenge,
                    message,
                    sent_at: Instant::now(),
                    tries: 1,
                    nonce: None,
                });
                started += 1;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        let ready: Vec<usize> = events.iter().map(|e| e.token().0).collect();
        for slot in ready {
            let Some(f) = slots[slot].as_mut() else { continue };
            while let Ok((n, _)) = f.socket.recv_from(&mut buf) {
                let mut resp = Message::new();
                if resp.unmarshal_binary(&buf[..n]).is_err() || resp.transaction_id != f.message.transaction_id {
                    continue;
                }
                let code = error_code(&resp);
                let outcome = match (f.phase, code) {
                    (_, Some(401 | 438)) if f.tries <= TRIES => {
                        // The challenge (or a stale nonce): sign with the nonce it carries.
                        let Some(nonce) = nonce_of(&resp) else { break };
                        let message = request(METHOD_ALLOCATE, &[&requested_udp()], creds, Some(&nonce));
                        let _ = f.socket.send_to(&message.raw, server);
                        f.phase = Phase::Authenticated;
                        f.message = message;
                        f.sent_at = Instant::now();
                        f.tries += 1;
                        f.nonce = Some(nonce);
                        None
                    }
                    (Phase::Authenticated, None) if resp.typ.class == CLASS_SUCCESS_RESPONSE => {
                        let mut relayed = turn::proto::relayaddr::RelayedAddress::default();
                        let mut lifetime = turn::proto::lifetime::Lifetime(DEFAULT_LIFETIME);
                        let _ = lifetime.get_from(&resp);
                        match relayed.get_from(&resp) {
                            Ok(()) => Some(Ok((SocketAddr::new(relayed.ip, relayed.port), lifetime.0))),
                            Err(_) => Some(Err(1)),
                        }
                    }
                    (_, Some(code)) => Some(Err(code)),
                    _ => Some(Err(2)),
                };
                if let Some(outcome) = outcome {
                    let f = slots[slot].take().expect("checked above");
                    let fd = f.socket.as_raw_fd();
                    let _ = poll.registry().deregister(&mut SourceFd(&fd));
                    match outcome {
                        Ok((relayed, lifetime)) => clients.push(Client {
                            socket: f.socket,
                            relayed,
                            nonce: f.nonce.unwrap_or_default(),
                            lifetime,
                        }),
                        Err(code) => *failures.entry(code).or_insert(0) += 1,
                    }
                    done += 1;
                    if let Some(p) = progress {
                        p.inc(1);
                    }
                    break;
                }
            }
        }
        // Retransmit what timed out; give up after TRIES.
        let now = Instant::now();
        for entry in slots.iter_mut() {
            let Some(f) = entry.as_mut() else { continue };
            if now.duration_since(f.sent_at) < RTO {
                continue;
            }
            if f.tries > TRIES {
                let fd = f.socket.as_raw_fd();
                let _ = poll.registry().deregister(&mut SourceFd(&fd));
                *entry = None;
                *failures.entry(0).or_insert(0) += 1;
                done += 1;
                continue;
            }
            let _ = f.socket.send_to(&f.message.raw, server);
            f.sent_at = now;
            f.tries += 1;
        }
    }
    Ok(Allocated { clients, failures, elapsed: start.elapsed() })
}

/// A blocking request/response with retransmission and one nonce refresh.
pub fn transact(
    socket: &UdpSocket,
    server: SocketAddr,
    creds: &Credentials,
    nonce: &mut String,
    method: Method,
    attrs: &[&dyn Setter],
) -> anyhow::Result<Message> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(RTO))?;
    let mut buf = [0u8; 2048];
    let result = (|| {
        for _ in 0..2 {
            let message = request(method, attrs, creds, Some(nonce));
            for _ in 0..TRIES {
                socket.send_to(&message.raw, server)?;
                let deadline = Instant::now() + RTO;
                while Instant::now() < deadline {
                    let Ok((n, _)) = socket.recv_from(&mut buf) else { break };
                    let mut resp = Message::new();
                    if resp.unmarshal_binary(&buf[..n]).is_ok() && resp.transaction_id == message.transaction_id {
                        if error_code(&resp) == Some(438) {
                            *nonce = nonce_of(&resp).unwrap_or_default();
                            break;
                        }
                        return Ok(resp);
                    }
                }
            }
        }
        bail!("no answer to {method} from {server}")
    })();
    socket.set_nonblocking(true)?;
    result
}

/// Binds `channel` on `client`'s allocation to `peer`.
pub fn channel_bind(
    client: &mut Client,
    server: SocketAddr,
    creds: &Credentials,
    channel: u16,
    peer: SocketAddr,
) -> anyhow::Result<()> {
    let number = turn::proto::channum::ChannelNumber(channel);
    let peer_attr = turn::proto::peeraddr::PeerAddress { ip: peer.ip(), port: peer.port() };
    let resp = transact(&client.socket, server, creds, &mut client.nonce, METHOD_CHANNEL_BIND, &[&number, &peer_attr])?;
    match error_code(&resp) {
        None => Ok(()),
        Some(code) => bail!("ChannelBind to {peer} refused with {code}"),
    }
}
