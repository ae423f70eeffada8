//! ws-trace: follows every WebSocket message from the NIC to the user's callback.
//!
//! Data flows one way: [`probes`] load and attach the eBPF programs, which write records
//! into one ring buffer; [`ring`] drains it, [`decode`] types each record, and
//! [`attach`] runs a session on top. [`doctor`] says what the machine allows.
#![deny(missing_docs)]

pub mod attach;
pub mod btf;
pub mod correlate;
pub mod decode;
pub mod demo;
pub mod doctor;
pub mod export;
pub mod privileges;
pub mod probes;
pub mod profile;
pub mod progstats;
pub mod record;
pub mod report;
pub mod ring;
pub mod symbols;
pub mod target;
pub mod tracefile;
pub mod tracefs;
