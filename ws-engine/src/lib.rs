//! ws-engine: a zero-copy RFC 6455 WebSocket client engine.
//!
//! Bytes go from the socket into a [mirrored ring](ring::MirroredRing), frames are
//! parsed in place by the [decoder](decoder::Decoder), and each message reaches the
//! user's [`Handler`] as a `&[u8]` into the ring through the probe function
//! [`ws_engine_on_message`](probe::ws_engine_on_message), stamped at every stage on a
//! TSC [clock](clock::Clock) converted to CLOCK_MONOTONIC. An epoll
//! [event loop](event_loop::EventLoop) drives many connections.
//!
//! ```no_run
//! use ws_engine::{ConnConfig, ConnCtx, EventLoop, Handler, LoopConfig, Message};
//!
//! struct Print;
//! impl Handler for Print {
//!     fn on_message(&mut self, conn: &mut ConnCtx<'_>, msg: Message<'_>) {
//!         // `msg.data` points into the receive ring; `msg.probe` has the stage stamps.
//!         let s = msg.stamps();
//!         println!("{} bytes, recv_end→callback {} ns", msg.data.len(), s.callback_ns - s.recv_end_ns);
//!         let _ = conn.send_text("thanks");
//!     }
//! }
//!
//! let mut el = EventLoop::new(LoopConfig::default())?;
//! el.connect("ws://127.0.0.1:9001/feed", &ConnConfig::default())?;
//! el.run(&mut Print)?;
//! # Ok::<(), ws_engine::LoopError>(())
//! ```
//!
//! `wss://` URLs use rustls ([`tls`]); the records are opened by the kernel (kTLS) where
//! it has the `tls` ULP, else in user space straight in the receive ring
//! ([`EventLoop::tls_path`], `docs/ktls.md`).
//!
//! The receive path, stage by stage with measured numbers, is described in
//! `docs/hot-path.md`.
//!
//! Each event loop also publishes every message's probe struct and callback stamps to a
//! [stamp channel](channel::StampChannel) in shared memory, which ws-trace reads without
//! a kernel entry per message (`docs/tracing-guide.md`).
#![deny(missing_docs)]

pub mod callback;
pub mod channel;
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
pub mod testca;
pub mod tls;
pub mod transport;
pub mod utf8;

pub use callback::{CallbackKind, ConnCtx, ConnId, Handler, Message};
pub use conn::{CloseInfo, ConnConfig, ConnError, SendError};
pub use decoder::{Limits, MsgKind};
pub use event_loop::{EventLoop, LoopConfig, LoopError};
pub use tls::{TlsError, TlsInfo, TlsOptions};
pub use ws_abi::{MsgProbe, MsgStamps, TlsPath};
pub use ws_profiler as profiler;
