//! The histogram layout, defined once in `ws-abi` (the probes' in-kernel histograms and the
//! tracer's use the same buckets).
pub use ws_abi::hist::*;
