//! ws-trace: follows every WebSocket message from the NIC to the user's callback.
//!
//! Data flows one way: [`loader`] loads the probe object and [`probes`] attach its
//! tracing programs, which write records into one ring buffer; [`ring`] drains it,
//! [`channel`] drains the engine's own stamp rings beside it, [`decode`] types each record, and [`attach`] runs a session on top;
//! [`aggregate`] runs one whose probes keep per-stage histograms in the kernel instead. [`doctor`] says
//! what the machine allows.
#![deny(missing_docs)]

pub mod aggregate;
pub mod attach;
pub mod btf;
pub mod captures;
pub mod channel;
pub mod correlate;
pub mod decode;
pub mod demo;
pub mod doctor;
pub mod export;
pub mod feed;
pub mod flight;
pub mod hooks;
pub mod loader;
pub mod privileges;
pub mod probes;
pub mod profile;
pub mod progstats;
pub mod record;
pub mod report;
pub mod ring;
pub mod serve;
pub mod stats;
pub mod symbols;
pub mod target;
pub mod top;
pub mod tracefile;
pub mod tracefs;
