//! ws-engine: a zero-copy RFC 6455 WebSocket client engine.
//!
//! Bytes go from the socket into a [mirrored ring](ring::MirroredRing), frames are
//! parsed in place by the [decoder](decoder::Decoder), and each message reaches the
//! user's [`Handler`] as a `&[u8]` into the ring through the probe function
//! [`ws_engine_on_message`](probe::ws_engine_on_message), stamped at every stage on a
//! TSC [clock](clock::Clock) converted to CLOCK_MONOTONIC. An epoll
//! [event loop](event_loop::EventLoop) drives many connections.
#![deny(missing_docs)]

pub mod callback;
pub mod clock;
pub mod conn;
pub mod decoder;
pub mod event_loop;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod probe;
pub mod ring;
pub mod server;
pub mod stamps;
pub mod transport;
pub mod utf8;

pub use callback::{CallbackKind, ConnCtx, ConnId, Handler, Message};
pub use conn::{CloseInfo, ConnConfig, ConnError, SendError};
pub use decoder::{Limits, MsgKind};
pub use event_loop::{EventLoop, LoopConfig, LoopError};
pub use ws_abi::{MsgProbe, MsgStamps, TlsPath};
pub use ws_profiler as profiler;
