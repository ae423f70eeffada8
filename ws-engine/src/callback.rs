//! The user's side: the [`Handler`] trait, the per-connection send context, and the one
//! place every callback goes through (`invoke`), so wrapping all of them (e.g. with the
//! callback profiler) is a one-line change.

use crate::conn::{CloseInfo, ConnError, Outbound, SendError};
use crate::decoder::MsgKind;
use ws_abi::MsgProbe;

/// Engine-wide connection id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Which callback is being invoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackKind {
    /// [`Handler::on_established`].
    Established,
    /// [`Handler::on_message`].
    Message,
    /// [`Handler::on_closed`].
    Closed,
    /// [`Handler::on_error`].
    Error,
    /// [`Handler::on_ping`].
    Ping,
    /// [`Handler::on_pong`].
    Pong,
    /// [`Handler::on_close_frame`].
    CloseFrame,
    /// [`Handler::on_writable`].
    Writable,
}

/// Every user callback runs through here.
#[inline(always)]
pub(crate) fn invoke<R>(kind: CallbackKind, f: impl FnOnce() -> R) -> R {
    let _ = kind;
    f()
}

/// A received message, valid for the duration of the callback.
#[derive(Debug)]
pub struct Message<'a> {
    /// Text or binary.
    pub kind: MsgKind,
    /// The payload: a slice of the receive ring (or of the reassembly buffer for a
    /// fragmented message). Text payloads are valid UTF-8.
    pub data: &'a [u8],
    /// The probe struct the engine filled for this message (stamps, offsets, ids).
    pub probe: &'a MsgProbe,
}

impl Message<'_> {
    /// The payload as text (`None` for binary messages).
    pub fn text(&self) -> Option<&str> {
        match self.kind {
            // Validated by the decoder; re-checking would cost a pass over the data.
            MsgKind::Text => std::str::from_utf8(self.data).ok(),
            MsgKind::Binary => None,
        }
    }
}

/// What a callback can do with its connection: send and close.
pub struct ConnCtx<'a> {
    pub(crate) id: ConnId,
    pub(crate) out: &'a mut Outbound,
}

impl ConnCtx<'_> {
    /// The connection.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Queues (and tries to write) a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.out.send_data(MsgKind::Text, text.as_bytes())
    }

    /// Queues (and tries to write) a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.out.send_data(MsgKind::Binary, data)
    }

    /// Sends a message of the given kind.
    pub fn send(&mut self, kind: MsgKind, data: &[u8]) -> Result<(), SendError> {
        self.out.send_data(kind, data)
    }

    /// Sends a ping (payload ≤ 125 bytes).
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.out.send_control(crate::frame::OpCode::Ping, payload)
    }

    /// Starts the close handshake.
    pub fn close(&mut self, code: u16, reason: &str) -> Result<(), SendError> {
        self.out.send_close(Some(code), reason)
    }

    /// Bytes queued and not yet written to the socket.
    pub fn buffered(&self) -> usize {
        self.out.buffered()
    }
}

/// The user's callbacks. Only [`Handler::on_message`] is required.
pub trait Handler {
    /// A complete message arrived.
    fn on_message(&mut self, conn: &mut ConnCtx<'_>, msg: Message<'_>);
    /// The handshake completed and the connection is in the event loop.
    fn on_established(&mut self, conn: &mut ConnCtx<'_>) {
        let _ = conn;
    }
    /// The connection is gone (after [`Handler::on_error`] if it failed).
    fn on_closed(&mut self, id: ConnId, info: &CloseInfo) {
        let _ = (id, info);
    }
    /// The connection failed.
    fn on_error(&mut self, id: ConnId, err: &ConnError) {
        let _ = (id, err);
    }
    /// A ping arrived (the pong is sent automatically unless disabled).
    fn on_ping(&mut self, conn: &mut ConnCtx<'_>, payload: &[u8]) {
        let _ = (conn, payload);
    }
    /// A pong arrived.
    fn on_pong(&mut self, conn: &mut ConnCtx<'_>, payload: &[u8]) {
        let _ = (conn, payload);
    }
    /// The peer sent a close frame (the engine answers it).
    fn on_close_frame(&mut self, conn: &mut ConnCtx<'_>, code: Option<u16>, reason: &str) {
        let _ = (conn, code, reason);
    }
    /// Everything queued was written after the socket had been full.
    fn on_writable(&mut self, conn: &mut ConnCtx<'_>) {
        let _ = conn;
    }
}
