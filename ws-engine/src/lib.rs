//! ws-engine: a zero-copy RFC 6455 WebSocket client engine.
#![deny(missing_docs)]

pub use ws_profiler as profiler;
