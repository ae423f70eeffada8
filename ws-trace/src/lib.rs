//! ws-trace
