//! Clock and stage stamps: the TSC (rdtsc) converted to CLOCK_MONOTONIC nanoseconds.
//!
//! The conversion is `mono_ns = base_ns + ((tsc - base_tsc) * mult) >> shift`, with
//! `mult`/`shift` calibrated once per process against `clock_gettime(CLOCK_MONOTONIC)`.
//! A 20 ms calibration leaves a rate error of a few ppm, microseconds of drift per second
//! against the kernel's stamps, so an event loop keeps its copy on CLOCK_MONOTONIC with
//! [`Clock::maybe_refine`]: every 100 ms it re-anchors the conversion on a fresh
//! (TSC, CLOCK_MONOTONIC) pair, and every second it re-measures the rate over the last
//! second. The drift each re-anchoring corrects is the error the stamps before it could
//! have had; it is what [`Calibration::error_ns`] then reports (and
//! [`Clock::measure_error`] measures the present error on demand). Where the TSC is not invariant
//! (`constant_tsc` and `nonstop_tsc` both in `/proc/cpuinfo`), or on other
//! architectures, every stamp is a plain `clock_gettime(CLOCK_MONOTONIC)`.

use std::sync::OnceLock;

/// Where a [`Clock`]'s stamps come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockSource {
    /// rdtsc converted with the calibrated mult/shift.
    Tsc,
    /// `clock_gettime(CLOCK_MONOTONIC)` on every stamp (TSC not invariant or not x86_64).
    Monotonic,
}

/// Errors of the clock module.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// `clock_gettime` failed.
    #[error("clock_gettime(CLOCK_MONOTONIC) failed: {0}")]
    Gettime(std::io::Error),
}

/// Result of the TSC calibration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// Stamp source in use.
    pub source: ClockSource,
    /// TSC ticks per second (0 for [`ClockSource::Monotonic`]).
    pub tsc_hz: u64,
    /// Multiplier of the tick→ns conversion.
    pub mult: u64,
    /// Right shift of the tick→ns conversion.
    pub shift: u32,
    /// Largest |converted TSC − CLOCK_MONOTONIC| seen right after calibrating, or after a
    /// refinement the drift it corrected, in ns (each sample bracketed by two
    /// clock_gettime calls; the bracket's half width is included). 0 for
    /// [`ClockSource::Monotonic`].
    pub error_ns: u64,
}

/// A calibrated stamp clock. Cheap to copy; get the process-wide one with [`Clock::global`].
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    cal: Calibration,
    base_tsc: u64,
    base_ns: u64,
    /// Start of the span the rate is next measured over.
    rate_tsc: u64,
    rate_ns: u64,
    /// TSC value at or after which [`Clock::maybe_refine`] refines.
    next_refine_tsc: u64,
}

/// The shift used for the mult/shift conversion.
const SHIFT: u32 = 32;

/// How often [`Clock::maybe_refine`] re-anchors the conversion.
const REFINE_EVERY_NS: u64 = 100_000_000;

/// The shortest span the tick rate is re-measured over.
const RATE_SPAN_NS: u64 = 1_000_000_000;

/// A (TSC, CLOCK_MONOTONIC) pair bracketed wider than this (the thread was interrupted
/// in all 16 tries) is not used; the refinement is retried at the next call.
const MAX_PAIR_WIDTH_NS: u64 = 2_000;

/// Ticks → ns multiplier (`SHIFT` fractional bits) for `dt` ticks in `dn` ns.
fn mult_of(dt: u64, dn: u64) -> u64 {
    ((u128::from(dn) << SHIFT) / u128::from(dt.max(1))) as u64
}

/// Ticks per second for `dt` ticks in `dn` ns.
fn hz_of(dt: u64, dn: u64) -> u64 {
    (u128::from(dt) * 1_000_000_000 / u128::from(dn.max(1))) as u64
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux,
    // so the call cannot fail with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; every x86_64 CPU has it.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn rdtsc() -> u64 {
    0
}

/// Whether `/proc/cpuinfo` says the TSC is invariant (`constant_tsc` and `nonstop_tsc`).
pub fn tsc_is_invariant() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    info.lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| {
            let mut c = false;
            let mut n = false;
            for f in l.split_whitespace() {
                c |= f == "constant_tsc";
                n |= f == "nonstop_tsc";
            }
            c && n
        })
        .unwrap_or(false)
}

/// One (tsc, monotonic) pair taken with the tightest bracket out of a few tries.
fn paired_sample() -> (u64, u64, u64) {
    let mut best = (0u64, 0u64, u64::MAX);
    for _ in 0..16 {
        let a = monotonic_ns();
        let t = rdtsc();
        let b = monotonic_ns();
        let width = b.saturating_sub(a);
        if width < best.2 {
            best = (t, a + width / 2, width);
        }
    }
    best
}

/// `ns` nanoseconds in ticks of a `tsc_hz` clock.
fn ns_to_ticks(ns: u64, tsc_hz: u64) -> u64 {
    (u128::from(ns) * u128::from(tsc_hz) / 1_000_000_000) as u64
}

static GLOBAL: OnceLock<Clock> = OnceLock::new();

impl Clock {
    /// The process-wide clock, calibrated on first use (about 20 ms).
    pub fn global() -> &'static Clock {
        GLOBAL.get_or_init(Clock::calibrate)
    }

    /// A clock that always reads CLOCK_MONOTONIC (the fallback).
    pub fn monotonic() -> Clock {
        Clock {
            cal: Calibration {
                source: ClockSource::Monotonic,
                tsc_hz: 0,
                mult: 0,
                shift: 0,
                error_ns: 0,
            },
            base_tsc: 0,
            base_ns: 0,
            rate_tsc: 0,
            rate_ns: 0,
            next_refine_tsc: u64::MAX,
        }
    }

    /// Calibrates a new clock: TSC when invariant, CLOCK_MONOTONIC otherwise.
    pub fn calibrate() -> Clock {
        if !tsc_is_invariant() {
            return Clock::monotonic();
        }
        Clock::calibrate_tsc(std::time::Duration::from_millis(20))
    }

    /// Calibrates the TSC over `window` regardless of the invariance flags.
    pub fn calibrate_tsc(window: std::time::Duration) -> Clock {
        let (t0, n0, _) = paired_sample();
        std::thread::sleep(window);
        let (t1, n1, _) = paired_sample();
        let dt = t1.saturating_sub(t0).max(1);
        let dn = n1.saturating_sub(n0);
        let mult = mult_of(dt, dn);
        let tsc_hz = hz_of(dt, dn);
        let mut clock = Clock {
            cal: Calibration {
                source: ClockSource::Tsc,
                tsc_hz,
                mult,
                shift: SHIFT,
                error_ns: 0,
            },
            base_tsc: t1,
            base_ns: n1,
            rate_tsc: t1,
            rate_ns: n1,
            next_refine_tsc: t1.saturating_add(ns_to_ticks(REFINE_EVERY_NS, tsc_hz)),
        };
        clock.cal.error_ns = clock.measure_error();
        clock
    }

    /// Refines the conversion if 100 ms have passed since the last
    /// time: one rdtsc and a compare otherwise. Call it where a little work does not
    /// delay anything (an event loop: before it waits).
    #[inline]
    pub fn maybe_refine(&mut self) {
        if self.cal.source == ClockSource::Tsc && rdtsc() >= self.next_refine_tsc {
            self.refine_over(RATE_SPAN_NS);
        }
    }

    /// Re-anchors the conversion on a fresh (TSC, CLOCK_MONOTONIC) pair and, once the
    /// rate was last measured at least `span_ns` ago, re-measures the rate over that span.
    /// Returns the drift corrected: |converted TSC − CLOCK_MONOTONIC| at the new pair (0,
    /// and nothing changed, if no pair could be taken with a tight bracket).
    fn refine_over(&mut self, span_ns: u64) -> u64 {
        if self.cal.source != ClockSource::Tsc {
            return 0;
        }
        let (t, n, width) = paired_sample();
        if width > MAX_PAIR_WIDTH_NS {
            return 0;
        }
        let drift = self.ticks_to_ns(t).abs_diff(n);
        if n.saturating_sub(self.rate_ns) >= span_ns {
            let dt = t.wrapping_sub(self.rate_tsc).max(1);
            let dn = n.saturating_sub(self.rate_ns).max(1);
            self.cal.mult = mult_of(dt, dn);
            self.cal.tsc_hz = hz_of(dt, dn);
            self.rate_tsc = t;
            self.rate_ns = n;
        }
        self.base_tsc = t;
        self.base_ns = n;
        self.cal.error_ns = drift + width / 2;
        self.next_refine_tsc = t.saturating_add(ns_to_ticks(REFINE_EVERY_NS, self.cal.tsc_hz));
        drift
    }

    /// The calibration in use.
    pub fn calibration(&self) -> Calibration {
        self.cal
    }

    /// Measures now the largest |converted TSC − CLOCK_MONOTONIC| over a few bracketed
    /// samples, in ns (half the bracket width included). 0 on the monotonic fallback.
    pub fn measure_error(&self) -> u64 {
        if self.cal.source == ClockSource::Monotonic {
            return 0;
        }
        let mut worst = 0u64;
        for _ in 0..32 {
            let (t, mid, width) = paired_sample();
            let conv = self.ticks_to_ns(t);
            worst = worst.max(conv.abs_diff(mid) + width / 2);
        }
        worst
    }

    /// Raw stamp: TSC ticks, or ns on the monotonic fallback. Convert with [`Clock::to_ns`].
    #[inline(always)]
    pub fn raw(&self) -> u64 {
        match self.cal.source {
            ClockSource::Tsc => rdtsc(),
            ClockSource::Monotonic => monotonic_ns(),
        }
    }

    #[inline(always)]
    fn ticks_to_ns(&self, t: u64) -> u64 {
        let d = t.wrapping_sub(self.base_tsc) as i64;
        let scaled = ((i128::from(d) * i128::from(self.cal.mult)) >> self.cal.shift) as i64;
        self.base_ns.wrapping_add_signed(scaled)
    }

    /// Converts a [`Clock::raw`] stamp to CLOCK_MONOTONIC ns (0 stays 0: "not taken").
    #[inline(always)]
    pub fn to_ns(&self, raw: u64) -> u64 {
        if raw == 0 {
            return 0;
        }
        match self.cal.source {
            ClockSource::Tsc => self.ticks_to_ns(raw),
            ClockSource::Monotonic => raw,
        }
    }

    /// Current CLOCK_MONOTONIC ns from this clock.
    #[inline(always)]
    pub fn now_ns(&self) -> u64 {
        self.to_ns(self.raw())
    }

    /// CLOCK_MONOTONIC ns straight from the kernel (no TSC).
    pub fn monotonic_now_ns() -> u64 {
        monotonic_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_tracks_monotonic() {
        if !tsc_is_invariant() {
            eprintln!("skipping: TSC not invariant on this machine");
            return;
        }
        let c = Clock::calibrate_tsc(std::time::Duration::from_millis(10));
        let cal = c.calibration();
        assert_eq!(cal.source, ClockSource::Tsc);
        assert!(
            cal.tsc_hz > 100_000_000,
            "implausible TSC rate {}",
            cal.tsc_hz
        );
        // A converted stamp lies between two kernel readings taken around it (with 100 µs
        // of slack for the calibration error); preemption only widens the bracket.
        let k1 = Clock::monotonic_now_ns();
        let a = c.now_ns();
        let b = c.now_ns();
        let k2 = Clock::monotonic_now_ns();
        assert!(b >= a);
        assert!(
            a + 100_000 >= k1 && a <= k2 + 100_000,
            "converted TSC {a} outside [{k1}, {k2}]"
        );
        assert_eq!(c.to_ns(0), 0);
    }

    #[test]
    fn refining_removes_a_rate_error() {
        if !tsc_is_invariant() {
            eprintln!("skipping: TSC not invariant on this machine");
            return;
        }
        let mut c = Clock::calibrate_tsc(std::time::Duration::from_millis(10));
        // Make the rate 100 ppm wrong: 100 µs of drift per second.
        c.cal.mult += c.cal.mult / 10_000;
        std::thread::sleep(std::time::Duration::from_millis(200));
        let before = c.measure_error();
        // Re-anchor and re-measure the rate over the 200 ms just passed.
        let corrected = c.refine_over(100_000_000);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let after = c.measure_error();
        // 200 ms at 100 ppm is 20 µs; the re-measured rate is off by the two samples'
        // brackets over 200 ms (well under 1 ppm here, generous slack for a loaded VM).
        assert!(before > 15_000, "the wrong rate should show: {before} ns");
        assert!(corrected > 15_000, "refine saw {corrected} ns of drift");
        assert!(after < 5_000, "still {after} ns off after refining");
    }

    #[test]
    fn monotonic_fallback_is_identity() {
        let c = Clock::monotonic();
        assert_eq!(c.calibration().source, ClockSource::Monotonic);
        let r = c.raw();
        assert_eq!(c.to_ns(r), r);
        assert_eq!(c.measure_error(), 0);
    }
}
