//! STUN/TURN message vocabulary for the request handlers: methods, classes and attribute types,
//! reading attributes from a parsed request, and building responses (with the `stun` crate).

use std::net::SocketAddr;

use stun::agent::TransactionId;
use stun::attributes::ATTR_SOFTWARE;
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::message::{CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE, Message, MessageClass, MessageType, Setter};
use stun::textattrs::TextAttribute;

use super::auth::Key;
use super::wire::{self, StunFrame};

/// STUN methods (RFC 8489 §18.2, RFC 8656 §17).
pub const BINDING: u16 = 0x001;
pub const ALLOCATE: u16 = 0x003;
pub const REFRESH: u16 = 0x004;
pub const SEND: u16 = 0x006;
pub const CREATE_PERMISSION: u16 = 0x008;
pub const CHANNEL_BIND: u16 = 0x009;

pub const CLASS_REQUEST: u8 = 0;
pub const CLASS_INDICATION: u8 = 1;

/// Attribute types (RFC 8489 §18.3, RFC 8656 §18) read by the handlers.
pub const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
pub const ATTR_LIFETIME: u16 = 0x000D;
pub const ATTR_REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
pub const ATTR_EVEN_PORT: u16 = 0x0018;
pub const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
pub const ATTR_RESERVATION_TOKEN: u16 = 0x0022;

/// Comprehension-required attributes (type < 0x8000) this server understands; any other in a
/// request gets 420 Unknown Attribute (RFC 8489 §7.3.1). DONT-FRAGMENT (0x001A) is deliberately
/// absent: RFC 8656 §7.2 says a server that does not support it answers 420, and the client
/// retries without it. MESSAGE-INTEGRITY-SHA256 and USERHASH are absent because this server does
/// not offer them (no PASSWORD-ALGORITHMS, no nonce cookie), so a client has no reason to send them.
pub const KNOWN_REQUIRED: &[u16] = &[
    0x0001, // MAPPED-ADDRESS
    0x0006, // USERNAME
    0x0008, // MESSAGE-INTEGRITY
    0x0009, // ERROR-CODE
    0x000A, // UNKNOWN-ATTRIBUTES
    ATTR_CHANNEL_NUMBER,
    ATTR_LIFETIME,
    wire::ATTR_XOR_PEER_ADDRESS,
    wire::ATTR_DATA,
    0x0014, // REALM
    0x0015, // NONCE
    0x0016, // XOR-RELAYED-ADDRESS
    ATTR_REQUESTED_ADDRESS_FAMILY,
    ATTR_EVEN_PORT,
    ATTR_REQUESTED_TRANSPORT,
    0x0020, // XOR-MAPPED-ADDRESS
    ATTR_RESERVATION_TOKEN,
    0x0024, // PRIORITY (ICE, RFC 8445)
    0x0025, // USE-CANDIDATE (ICE)
];

/// RFC 8656 §14.7: REQUESTED-TRANSPORT value for UDP.
pub const PROTOCOL_UDP: u8 = 17;

pub fn msg_has(msg: &Message, typ: u16) -> bool {
    attr(msg, typ).is_some()
}

/// The value of the first attribute of type `typ`.
pub fn attr(msg: &Message, typ: u16) -> Option<&[u8]> {
    msg.attributes.0.iter().find(|a| a.typ.0 == typ).map(|a| a.value.as_slice())
}

/// A response under construction, built with the `stun` crate.
pub struct Reply {
    msg: Message,
    pub code: Option<u16>,
}

impl Reply {
    /// A response of `class` to the request in `frame`, with the request's method (RFC 8489 §6.3:
    /// responses mirror the request's method and transaction id).
    pub fn new(frame: &StunFrame, class: MessageClass) -> Self {
        let mut typ = MessageType::default();
        typ.read_value(frame.typ);
        typ.class = class;
        let mut msg = Message::new();
        msg.typ = typ;
        msg.transaction_id = TransactionId(frame.transaction_id);
        msg.write_header();
        Self { msg, code: None }
    }

    pub fn success(frame: &StunFrame) -> Self {
        Self::new(frame, CLASS_SUCCESS_RESPONSE)
    }

    pub fn error(frame: &StunFrame, code: u16) -> Self {
        let mut reply = Self::new(frame, CLASS_ERROR_RESPONSE);
        reply.add(&ErrorCodeAttribute { code: ErrorCode(code), reason: reason(code).as_bytes().to_vec() });
        reply.code = Some(code);
        reply
    }

    pub fn add(&mut self, attr: &dyn Setter) {
        // Every value added is ours and within the attribute size limits; an error here is a bug.
        if let Err(e) = attr.add_to(&mut self.msg) {
            debug_assert!(false, "building a response: {e}");
        }
    }

    /// SOFTWARE, then MESSAGE-INTEGRITY when the request was authenticated, then FINGERPRINT.
    pub fn finish(mut self, software: &str, key: Option<&Key>) -> Vec<u8> {
        if !software.is_empty() {
            self.add(&TextAttribute::new(ATTR_SOFTWARE, software.to_owned()));
        }
        if let Some(key) = key {
            self.add(&stun::integrity::MessageIntegrity(key.to_vec()));
        }
        self.add(&stun::fingerprint::FINGERPRINT);
        self.msg.raw
    }
}

/// Reason phrases (RFC 8489 §14.8, RFC 8656 §19).
pub fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Server Error",
    }
}

/// The XOR-PEER-ADDRESS attributes of a request, decoded; `Err(400)` if any is malformed.
pub fn peer_addresses(msg: &Message) -> Result<Vec<SocketAddr>, u16> {
    msg.attributes
        .0
        .iter()
        .filter(|a| a.typ.0 == wire::ATTR_XOR_PEER_ADDRESS)
        .map(|a| wire::read_xor_address(&a.value, &msg.transaction_id.0).ok_or(400))
        .collect()
}
