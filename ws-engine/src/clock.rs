//! The engine's stamp clock: the workspace's one clock module, [`ws_clock`] (TSC converted
//! to CLOCK_MONOTONIC, calibration, refinement, invariant-TSC detection, the clock's own
//! cost), re-exported here. The engine stores raw stamps ([`Clock::raw`]) and converts them
//! with [`Clock::to_ns`] only where they are read (`docs/hot-path.md`).

pub use ws_clock::*;
