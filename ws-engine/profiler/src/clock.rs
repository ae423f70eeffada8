//! Time sources: the TSC (calibrated once per process against CLOCK_MONOTONIC),
//! CLOCK_MONOTONIC through the vDSO, or a caller-supplied `fn() -> u64` in nanoseconds.
//!
//! Measured on the development VM (AMD EPYC, clocksource `tsc`): `rdtsc` ≈ 9.6 ns,
//! `rdtscp` ≈ 18 ns, `clock_gettime(CLOCK_MONOTONIC)` (vDSO) ≈ 22 ns per read. The default
//! is therefore the TSC where the CPU advertises an invariant one, else CLOCK_MONOTONIC.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Which clock a [`crate::Profiler`] reads.
#[derive(Clone, Copy, Debug, Default)]
pub enum ClockSource {
    /// The TSC if it is invariant (`constant_tsc` and `nonstop_tsc`), else CLOCK_MONOTONIC.
    #[default]
    Auto,
    /// The TSC (`rdtsc`), converted to CLOCK_MONOTONIC ns with a per-process calibration.
    /// Falls back to CLOCK_MONOTONIC where there is no invariant TSC.
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

const TSC: u8 = 0;
const MONO: u8 = 1;
const CUSTOM: u8 = 2;

/// The resolved clock: how to read ticks and how to turn ticks into ns.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    kind: u8,
    custom: fn() -> u64,
    /// ns = ticks * mult >> 32
    mult: u64,
    base_ticks: u64,
    base_ns: u64,
    error_ppm: f64,
}

fn zero() -> u64 {
    0
}

/// CLOCK_MONOTONIC in ns.
#[inline(always)]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux,
    // so the call cannot fail and only writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` is available on every x86_64 CPU and has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn rdtsc() -> u64 {
    monotonic_ns()
}

#[derive(Clone, Copy, Debug)]
struct TscCalibration {
    mult: u64,
    base_ticks: u64,
    base_ns: u64,
    error_ppm: f64,
}

fn invariant_tsc() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    let Some(flags) = info.lines().find(|l| l.starts_with("flags")) else {
        return false;
    };
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    has("constant_tsc") && has("nonstop_tsc")
}

/// One (tsc, ns) pair taken as tightly as possible: the TSC is read on both sides of
/// the clock_gettime, and the tightest of several tries wins. Returns (tsc, ns, gap ticks).
fn paired_read() -> (u64, u64, u64) {
    let mut best = (0, 0, u64::MAX);
    for _ in 0..16 {
        let t0 = rdtsc();
        let ns = monotonic_ns();
        let t1 = rdtsc();
        let gap = t1.wrapping_sub(t0);
        if gap < best.2 {
            best = (t0 + gap / 2, ns, gap);
        }
    }
    best
}

fn calibrate() -> Option<TscCalibration> {
    if !invariant_tsc() {
        return None;
    }
    let (t0, n0, g0) = paired_read();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (t1, n1, g1) = paired_read();
    let dt = t1.checked_sub(t0)?;
    let dn = n1.checked_sub(n0)?;
    if dt == 0 || dn == 0 {
        return None;
    }
    let mult = ((dn as u128) << 32) / dt as u128;
    let mult = u64::try_from(mult).ok()?;
    // Each endpoint is uncertain by half its read gap; both ends together bound the error.
    let error_ticks = (g0 + g1) as f64 / 2.0;
    Some(TscCalibration {
        mult,
        base_ticks: t0,
        base_ns: n0,
        error_ppm: error_ticks / dt as f64 * 1e6,
    })
}

fn tsc_calibration() -> Option<TscCalibration> {
    static CAL: OnceLock<Option<TscCalibration>> = OnceLock::new();
    *CAL.get_or_init(calibrate)
}

impl Clock {
    pub(crate) fn new(source: ClockSource) -> Clock {
        let ns_clock = |kind, custom| Clock {
            kind,
            custom,
            mult: 1 << 32,
            base_ticks: 0,
            base_ns: 0,
            error_ppm: 0.0,
        };
        match source {
            ClockSource::Monotonic => ns_clock(MONO, zero),
            ClockSource::Custom(f) => ns_clock(CUSTOM, f),
            ClockSource::Auto | ClockSource::Tsc => match tsc_calibration() {
                Some(c) => Clock {
                    kind: TSC,
                    custom: zero,
                    mult: c.mult,
                    base_ticks: c.base_ticks,
                    base_ns: c.base_ns,
                    error_ppm: c.error_ppm,
                },
                None => ns_clock(MONO, zero),
            },
        }
    }

    /// Raw ticks (TSC ticks or ns, depending on the source).
    #[inline(always)]
    pub(crate) fn ticks(&self) -> u64 {
        match self.kind {
            TSC => rdtsc(),
            MONO => monotonic_ns(),
            _ => (self.custom)(),
        }
    }

    /// A tick difference in ns.
    #[inline(always)]
    pub(crate) fn delta_ns(&self, ticks: u64) -> u64 {
        ((ticks as u128 * self.mult as u128) >> 32) as u64
    }

    /// An absolute tick value as ns on the clock's own time line (CLOCK_MONOTONIC for
    /// TSC and monotonic sources).
    pub(crate) fn ticks_to_ns(&self, ticks: u64) -> u64 {
        if self.kind != TSC {
            return ticks;
        }
        if ticks >= self.base_ticks {
            self.base_ns + self.delta_ns(ticks - self.base_ticks)
        } else {
            self.base_ns
                .saturating_sub(self.delta_ns(self.base_ticks - ticks))
        }
    }

    pub(crate) fn info(&self) -> ClockInfo {
        let source = match self.kind {
            TSC => "tsc",
            MONO => "monotonic",
            _ => "custom",
        };
        ClockInfo {
            source: source.to_string(),
            ticks_per_ns: (1u64 << 32) as f64 / self.mult as f64,
            calibration_error_ppm: self.error_ppm,
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
