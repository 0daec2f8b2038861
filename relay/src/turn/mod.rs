//! The sans-IO TURN/STUN core: protocol logic with no sockets, clock or tasks (see `server`).
//! Everything the network can send reaches `TurnServer::handle_client` or `handle_peer`, and
//! no input can make them panic: malformed datagrams are dropped and counted in [`stats`].

pub mod allocation;
pub mod auth;
pub mod framing;
pub mod limit;
pub mod message;
pub mod peer_filter;
pub mod server;
pub mod settings;
pub mod shared;
pub mod stats;
pub mod steady_map;
pub mod table;
pub mod types;
pub mod wire;

pub use server::{Event, Forward, RelaySockets, ToClient, Transmit, TurnServer};
pub use settings::{OwnAddresses, RelayIp, ServerConfig};
pub use shared::{PortPool, Quotas, Shared};
pub use types::{ChannelNumber, ClientAddr, PeerAddr, RelayPort, Username};
