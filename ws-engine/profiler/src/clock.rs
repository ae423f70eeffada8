//! Time sources: the workspace's one stamp clock ([`ws_clock::Clock`]: the TSC calibrated
//! once per process against CLOCK_MONOTONIC, or CLOCK_MONOTONIC through the vDSO where the
//! TSC is not invariant), or a caller-supplied `fn() -> u64` in nanoseconds.
//!
//! What a read costs on this machine is measured, not assumed: [`ws_clock::ClockCost`].
//! Durations are converted when a span ends (one multiply); absolute tick values (the end
//! of the last invocation) stay raw until a report reads them.

use serde::{Deserialize, Serialize};

pub use ws_clock::monotonic_ns;

/// Which clock a [`crate::Profiler`] reads.
#[derive(Clone, Copy, Debug, Default)]
pub enum ClockSource {
    /// The TSC if it is invariant (`constant_tsc` and `nonstop_tsc`), else CLOCK_MONOTONIC.
    #[default]
    Auto,
    /// The TSC (`rdtsc`), converted to CLOCK_MONOTONIC ns with the per-process calibration
    /// ([`ws_clock::Clock::global`]). Falls back to CLOCK_MONOTONIC where there is no
    /// invariant TSC.
    Tsc,
    /// `clock_gettime(CLOCK_MONOTONIC)` through the vDSO.
    Monotonic,
    /// A caller-supplied clock returning nanoseconds (monotonic, any epoch).
    Custom(fn() -> u64),
}

/// What the profiler's clock is, for reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockInfo {
    /// `"tsc"`, `"monotonic"` or `"custom"`.
    pub source: String,
    /// TSC ticks per nanosecond (1.0 for nanosecond clocks).
    pub ticks_per_ns: f64,
    /// Estimated error of the TSC→ns calibration in parts per million (0 for ns clocks).
    pub calibration_error_ppm: f64,
}

/// The resolved clock: the shared stamp clock, or a custom ns function.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    shared: ws_clock::Clock,
    custom: Option<fn() -> u64>,
}

impl Clock {
    pub(crate) fn new(source: ClockSource) -> Clock {
        match source {
            ClockSource::Monotonic => Clock {
                shared: ws_clock::Clock::monotonic(),
                custom: None,
            },
            ClockSource::Custom(f) => Clock {
                shared: ws_clock::Clock::monotonic(),
                custom: Some(f),
            },
            ClockSource::Auto | ClockSource::Tsc => Clock {
                shared: *ws_clock::Clock::global(),
                custom: None,
            },
        }
    }

    /// Raw ticks (TSC ticks or ns, depending on the source).
    #[inline(always)]
    pub(crate) fn ticks(&self) -> u64 {
        match self.custom {
            Some(f) => f(),
            None => self.shared.raw(),
        }
    }

    /// Whether this clock's ticks are those of the shared clock `c` (both the TSC, or both
    /// CLOCK_MONOTONIC ns), so raw stamps `c` took can be recorded as they are.
    pub(crate) fn same_ticks_as(&self, c: &ws_clock::Clock) -> bool {
        self.custom.is_none() && self.shared.source() == c.source()
    }

    /// A tick difference in ns.
    #[inline(always)]
    pub(crate) fn delta_ns(&self, ticks: u64) -> u64 {
        match self.custom {
            Some(_) => ticks,
            None => self.shared.delta_ns(ticks),
        }
    }

    /// An absolute tick value as ns on the clock's own time line (CLOCK_MONOTONIC for
    /// TSC and monotonic sources).
    pub(crate) fn ticks_to_ns(&self, ticks: u64) -> u64 {
        match self.custom {
            Some(_) => ticks,
            None => self.shared.to_ns(ticks),
        }
    }

    pub(crate) fn info(&self) -> ClockInfo {
        let cal = self.shared.calibration();
        let (source, ticks_per_ns, ppm) = match (self.custom, cal.source) {
            (Some(_), _) => ("custom", 1.0, 0.0),
            (None, ws_clock::ClockSource::Monotonic) => ("monotonic", 1.0, 0.0),
            (None, ws_clock::ClockSource::Tsc) => {
                ("tsc", cal.tsc_hz as f64 / 1e9, cal.rate_error_ppm)
            }
        };
        ClockInfo {
            source: source.to_string(),
            ticks_per_ns,
            calibration_error_ppm: ppm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_clock_tracks_monotonic() {
        let c = Clock::new(ClockSource::Auto);
        let a = monotonic_ns();
        let t = c.ticks_to_ns(c.ticks());
        let b = monotonic_ns();
        // Calibration error is ppm-level; allow 1 ms of slack so scheduling cannot fail it.
        assert!(
            t + 1_000_000 >= a && t <= b + 1_000_000,
            "a={a} t={t} b={b} {:?}",
            c.info()
        );
    }

    #[test]
    fn ns_clocks_are_identity() {
        let c = Clock::new(ClockSource::Monotonic);
        assert_eq!(c.delta_ns(12345), 12345);
        assert_eq!(c.ticks_to_ns(777), 777);
        assert_eq!(c.info().source, "monotonic");
    }
}
