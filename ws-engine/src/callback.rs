//! The user's side: the [`Handler`] trait, the per-connection send context, and the one
//! place every callback goes through (`invoke`), so wrapping all of them (e.g. with the
//! callback profiler) is a one-line change.

use crate::clock::Clock;
use crate::conn::{CloseInfo, ConnError, Outbound, SendError};
use crate::decoder::MsgKind;
use ws_abi::{MsgProbe, MsgStamps};

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

impl CallbackKind {
    /// The callback profiler's kind for this callback.
    pub fn profiler_kind(self) -> ws_profiler::CallbackKind {
        use ws_profiler::CallbackKind as P;
        match self {
            CallbackKind::Established => P::ESTABLISHED,
            CallbackKind::Message => P::RECEIVE,
            CallbackKind::Closed => P::CLOSED,
            CallbackKind::Error => P::CONNECTION_ERROR,
            CallbackKind::Ping => P::PING,
            CallbackKind::Pong => P::PONG,
            CallbackKind::CloseFrame => P::CLOSE_FRAME,
            CallbackKind::Writable => P::WRITABLE,
        }
    }
}

thread_local! {
    /// The profiler of the event loop polling on this thread, if it has one.
    static PROFILER: std::cell::RefCell<Option<ws_profiler::Profiler>> =
        const { std::cell::RefCell::new(None) };
}

/// While alive, callbacks on this thread are timed by a profiler (the event loop's).
pub(crate) struct ProfilerScope {
    previous: Option<ws_profiler::Profiler>,
}

impl ProfilerScope {
    /// Makes `profiler` the one timing this thread's callbacks until the scope ends.
    pub(crate) fn enter(profiler: Option<&ws_profiler::Profiler>) -> ProfilerScope {
        let previous = PROFILER.with(|p| p.replace(profiler.cloned()));
        ProfilerScope { previous }
    }
}

impl Drop for ProfilerScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        PROFILER.with(|p| *p.borrow_mut() = previous);
    }
}

/// Every user callback runs through here: timed per kind (and per connection, when the
/// profiler keeps connections) by the event loop's callback profiler, if it has one.
#[inline(always)]
pub(crate) fn invoke<R>(
    kind: CallbackKind,
    conn: ConnId,
    bytes: usize,
    f: impl FnOnce() -> R,
) -> R {
    PROFILER.with(|p| match p.try_borrow().ok().as_deref() {
        Some(Some(profiler)) => {
            let span = profiler.start_conn(kind.profiler_kind(), conn.0);
            let r = f();
            span.stop(bytes as u64);
            r
        }
        _ => f(),
    })
}

/// The profiler timing this thread's callbacks, if any (one thread-local look-up: take it
/// once per read, not per message).
pub(crate) fn current_profiler() -> Option<ws_profiler::Profiler> {
    PROFILER.with(|p| p.try_borrow().ok().and_then(|p| p.clone()))
}

/// Records a message callback the engine stamped itself (raw stamps of `clock`) with
/// `profiler`: no clock read when the profiler shares the engine's ticks.
#[inline]
pub(crate) fn record_message(
    profiler: Option<&ws_profiler::Profiler>,
    clock: &Clock,
    conn: ConnId,
    bytes: usize,
    start: u64,
    done: u64,
) {
    if let Some(p) = profiler {
        p.record_stamped(
            CallbackKind::Message.profiler_kind(),
            conn.0,
            clock,
            start,
            done,
            bytes as u64,
        );
    }
}

/// A received message, valid for the duration of the callback.
#[derive(Debug)]
pub struct Message<'a> {
    /// Text or binary.
    pub kind: MsgKind,
    /// The payload: a slice of the receive ring (or of the reassembly buffer for a
    /// fragmented message). Text payloads are valid UTF-8.
    pub data: &'a [u8],
    pub(crate) probe: &'a MsgProbe,
    pub(crate) clock: &'a Clock,
    /// Whether `probe.stamps` (and so the probe) hold raw clock stamps, not ns.
    pub(crate) raw: bool,
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

    /// The probe struct of this message (offsets, ids, stamps), its stamps in
    /// CLOCK_MONOTONIC ns. The engine keeps raw clock stamps while no tracer is attached
    /// and converts them here, when they are read.
    pub fn probe(&self) -> MsgProbe {
        let mut p = *self.probe;
        p.stamps = self.stamps();
        p
    }

    /// Where in the connection's byte stream the read that completed this message ended
    /// (the probe's `read_end`, without converting its stamps): messages of one read
    /// share it.
    pub fn read_end(&self) -> u64 {
        self.probe.read_end
    }

    /// The stage stamps of this message in CLOCK_MONOTONIC ns (see [`Message::probe`]).
    pub fn stamps(&self) -> MsgStamps {
        let s = self.probe.stamps;
        if !self.raw {
            return s;
        }
        stamps_to_ns(self.clock, &s)
    }
}

/// Raw stamps converted to CLOCK_MONOTONIC ns (0 stays 0: "not taken").
#[inline]
pub(crate) fn stamps_to_ns(clock: &Clock, s: &MsgStamps) -> MsgStamps {
    MsgStamps {
        event_ns: clock.to_ns(s.event_ns),
        recv_start_ns: clock.to_ns(s.recv_start_ns),
        recv_end_ns: clock.to_ns(s.recv_end_ns),
        decrypt_start_ns: clock.to_ns(s.decrypt_start_ns),
        parsed_ns: clock.to_ns(s.parsed_ns),
        callback_ns: clock.to_ns(s.callback_ns),
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
