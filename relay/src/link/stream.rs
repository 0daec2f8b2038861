//! Control frames on a link's reliable stream: [`ControlReader`] turns what arrives, in
//! whatever pieces QUIC delivers it, into [`Control`] messages; [`write_control`] sends one.
//! A malformed frame ends the stream (the peer is not speaking this protocol), and says why;
//! a frame of a type this version does not know (a newer peer's) is skipped and counted.

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

/// Reads control frames from a stream.
pub struct ControlReader {
    recv: quinn::RecvStream,
    buf: Vec<u8>,
    skipped: u64,
}

impl ControlReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self { recv, buf: Vec::new(), skipped: 0 }
    }

    /// Frames of types this version does not know, skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next message; [`StreamEnd`] once there are no more.
    pub async fn next(&mut self) -> Result<Control, StreamEnd> {
        loop {
            match Control::decode(&self.buf) {
                Ok(Some((message, used))) => {
                    self.buf.drain(..used);
                    return Ok(message);
                }
                Ok(None) => {}
                // Whole (the type is read once the frame is in), so its size is known.
                Err(WireError::UnknownType(kind)) => {
                    let size = frame_size(&self.buf).unwrap_or(self.buf.len()).min(self.buf.len());
                    self.buf.drain(..size);
                    self.skipped += 1;
                    debug!(kind, "link control frame of an unknown type skipped");
                    continue;
                }
                Err(e) => {
                    let _ = self.recv.stop(quinn::VarInt::from_u32(1));
                    return Err(StreamEnd::Malformed(e));
                }
            }
            // At most one frame's worth beyond what is buffered: a peer cannot make us hold more.
            let room = (MAX_FRAME + 16).saturating_sub(self.buf.len()).max(1);
            match self.recv.read_chunk(room, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Err(StreamEnd::Finished),
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
