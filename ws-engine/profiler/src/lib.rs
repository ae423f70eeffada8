//! Callback profiler: lock-free per-callback statistics.
#![deny(missing_docs)]
