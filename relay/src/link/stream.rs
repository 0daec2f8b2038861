//! Control frames on a link's reliable stream: [`ControlFrames`] (sans-IO) and [`ControlReader`]
//! turn what arrives, in whatever pieces QUIC delivers it, into [`Control`] messages;
//! [`write_control`] sends one. A malformed frame ends the stream (the peer is not speaking this
//! protocol), and says why; a frame of a type this version does not know (a newer peer's) is
//! skipped and counted.

use tracing::debug;

use super::wire::{Control, MAX_FRAME, WireError, frame_size};

/// Why a control stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// The peer finished the stream (or the link closed) between frames.
    Finished,
    /// A frame that does not decode: the stream is closed.
    Malformed(WireError),
    /// The stream or link failed, or ended inside a frame.
    Failed(String),
}

impl std::fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Finished => f.write_str("finished"),
            Self::Malformed(e) => write!(f, "malformed control frame: {e}"),
            Self::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StreamEnd {}

/// Control frames out of a stream's bytes, sans-IO: bytes go in as they arrive, whole messages
/// come out. A frame of a type this version does not know is skipped and counted.
#[derive(Debug, Default)]
pub struct ControlFrames {
    buf: Vec<u8>,
    /// Bytes of `buf` already decoded.
    start: usize,
    skipped: u64,
}

impl ControlFrames {
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered that are not a whole frame yet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Frames of types this version does not know, skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next whole message; `Ok(None)` until more bytes arrive. After an error the stream is
    /// not to be read further.
    pub fn next_message(&mut self) -> Result<Option<Control>, WireError> {
        loop {
            let rest = &self.buf[self.start..];
            match Control::decode(rest) {
                Ok(Some((message, used))) => {
                    self.start += used;
                    return Ok(Some(message));
                }
                Ok(None) => return Ok(None),
                // Whole (the type is read once the frame is in), so its size is known.
                Err(WireError::UnknownType(kind)) => {
                    self.start += frame_size(rest).unwrap_or(rest.len()).min(rest.len());
                    self.skipped += 1;
                    debug!(kind, "link control frame of an unknown type skipped");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads control frames from a stream.
pub struct ControlReader {
    recv: quinn::RecvStream,
    frames: ControlFrames,
}

impl ControlReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self { recv, frames: ControlFrames::default() }
    }

    /// Frames of types this version does not know, skipped so far.
    pub fn skipped(&self) -> u64 {
        self.frames.skipped()
    }

    /// The next message; [`StreamEnd`] once there are no more.
    pub async fn next(&mut self) -> Result<Control, StreamEnd> {
        loop {
            match self.frames.next_message() {
                Ok(Some(message)) => return Ok(message),
                Ok(None) => {}
                Err(e) => {
                    let _ = self.recv.stop(quinn::VarInt::from_u32(1));
                    return Err(StreamEnd::Malformed(e));
                }
            }
            // At most one frame's worth beyond what is buffered: a peer cannot make us hold more.
            let room = (MAX_FRAME + 16).saturating_sub(self.frames.buffered()).max(1);
            match self.recv.read_chunk(room, true).await {
                Ok(Some(chunk)) => self.frames.push(&chunk.bytes),
                Ok(None) if self.frames.buffered() == 0 => return Err(StreamEnd::Finished),
                Ok(None) => return Err(StreamEnd::Failed("the stream ended inside a frame".into())),
                Err(e) => return Err(StreamEnd::Failed(e.to_string())),
            }
        }
    }
}

/// Sends one control message.
pub async fn write_control(send: &mut quinn::SendStream, message: &Control) -> anyhow::Result<()> {
    let mut frame = Vec::new();
    message.encode(&mut frame)?;
    send.write_all(&frame).await?;
    Ok(())
}
