//! Callback profiler: lock-free per-callback statistics.
