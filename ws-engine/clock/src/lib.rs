//! The one stamp clock of ws-engine, its callback profiler and ws-trace.
//!
//! - [`CpuFlags`]: the TSC flags of `/proc/cpuinfo`, parsed once per process (the only
//!   place in the workspace that reads that file), and [`tsc_is_invariant`].
//! - [`KernelClocksource`]: the kernel's current and available clocksources (sysfs).
//! - [`Clock`]: raw stamps (`rdtsc`, or `clock_gettime(CLOCK_MONOTONIC)` where the TSC is
//!   not invariant) and their conversion to CLOCK_MONOTONIC ns, calibrated once per process
//!   ([`Clock::global`]) and kept on CLOCK_MONOTONIC by [`Clock::maybe_refine`]. Stamps are
//!   meant to be stored raw and converted with [`Clock::to_ns`] only when someone reads them.
//! - [`ClockCost`]: what one read of each clock costs on this machine, measured with a short
//!   loop at start-up (shown by `ws-trace doctor` and in every bench header).
//!
//! The conversion is `mono_ns = base_ns + ((tsc - base_tsc) * mult) >> shift`, with
//! `mult`/`shift` calibrated against `clock_gettime(CLOCK_MONOTONIC)`. A 20 ms calibration
//! leaves a rate error of a few ppm, microseconds of drift per second against the kernel's
//! stamps, so an event loop keeps its copy on CLOCK_MONOTONIC with [`Clock::maybe_refine`]:
//! every 100 ms it re-anchors the conversion on a fresh (TSC, CLOCK_MONOTONIC) pair, and
//! every second it re-measures the rate over the last second. The drift each re-anchoring
//! corrects is the error the stamps before it could have had; it is what
//! [`Calibration::error_ns`] then reports (and [`Clock::measure_error`] measures the present
//! error on demand). Where the TSC is not invariant (`constant_tsc` and `nonstop_tsc` both in
//! `/proc/cpuinfo`), or on other architectures, every stamp is a plain
//! `clock_gettime(CLOCK_MONOTONIC)`.
#![deny(missing_docs)]

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

// ---- CPU flags -------------------------------------------------------------------------

/// The TSC-related flags of the first CPU in `/proc/cpuinfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuFlags {
    /// Whether `/proc/cpuinfo` could be read and had a `flags` line.
    pub read: bool,
    /// `constant_tsc`: the TSC ticks at a constant rate whatever the P-state.
    pub constant_tsc: bool,
    /// `nonstop_tsc`: the TSC keeps ticking in deep C-states.
    pub nonstop_tsc: bool,
    /// `tsc_known_freq`: the kernel took the TSC's frequency from the CPU, not a calibration.
    pub tsc_known_freq: bool,
    /// Every flag whose name contains `tsc`, in `/proc/cpuinfo`'s order.
    pub tsc_flags: Vec<String>,
}

impl CpuFlags {
    /// The flags of this machine, read from `/proc/cpuinfo` on first use (once per process).
    pub fn get() -> &'static CpuFlags {
        static FLAGS: OnceLock<CpuFlags> = OnceLock::new();
        FLAGS.get_or_init(|| {
            std::fs::read_to_string("/proc/cpuinfo")
                .map(|s| CpuFlags::parse(&s))
                .unwrap_or_default()
        })
    }

    /// Parses the text of a `/proc/cpuinfo` (the first `flags` line).
    pub fn parse(cpuinfo: &str) -> CpuFlags {
        let Some(line) = cpuinfo.lines().find(|l| l.starts_with("flags")) else {
            return CpuFlags::default();
        };
        let list = line.split_once(':').map_or("", |(_, f)| f);
        let mut out = CpuFlags {
            read: true,
            ..CpuFlags::default()
        };
        for f in list.split_whitespace() {
            match f {
                "constant_tsc" => out.constant_tsc = true,
                "nonstop_tsc" => out.nonstop_tsc = true,
                "tsc_known_freq" => out.tsc_known_freq = true,
                _ => {}
            }
            if f.contains("tsc") {
                out.tsc_flags.push(f.to_string());
            }
        }
        out
    }

    /// Whether the TSC is invariant: `constant_tsc` and `nonstop_tsc`.
    pub fn invariant_tsc(&self) -> bool {
        self.constant_tsc && self.nonstop_tsc
    }
}

/// Whether stamps can come from the TSC: x86_64 and an invariant TSC per `/proc/cpuinfo`.
pub fn tsc_is_invariant() -> bool {
    cfg!(target_arch = "x86_64") && CpuFlags::get().invariant_tsc()
}

/// The kernel's clocksources (`/sys/devices/system/clocksource/clocksource0`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelClocksource {
    /// The current one (`tsc`, `kvm-clock`, `hpet`...); empty when it cannot be read.
    pub current: String,
    /// Those the kernel offers.
    pub available: Vec<String>,
}

impl KernelClocksource {
    /// Reads both from sysfs; what cannot be read stays empty.
    pub fn detect() -> KernelClocksource {
        let sys = "/sys/devices/system/clocksource/clocksource0";
        let read = |f: &str| {
            std::fs::read_to_string(format!("{sys}/{f}"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        KernelClocksource {
            current: read("current_clocksource"),
            available: read("available_clocksource")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        }
    }
}

// ---- raw reads -------------------------------------------------------------------------

/// CLOCK_MONOTONIC in ns, straight from the kernel (vDSO).
#[inline(always)]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux,
    // so the call cannot fail with a valid pointer and only writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// The TSC (`rdtsc`, not serialising); 0 off x86_64.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc exists on every x86_64 CPU and has no memory effects.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

/// The TSC (`rdtsc`, not serialising); 0 off x86_64.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn rdtsc() -> u64 {
    0
}

/// The TSC read with `rdtscp` (waits for earlier instructions); 0 off x86_64.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn rdtscp() -> u64 {
    let mut aux = 0u32;
    // SAFETY: rdtscp exists on every x86_64 CPU this code targets (every CPU with an
    // invariant TSC has it); it writes only `aux`, a valid local.
    unsafe { core::arch::x86_64::__rdtscp(&mut aux) }
}

/// The TSC read with `rdtscp` (waits for earlier instructions); 0 off x86_64.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn rdtscp() -> u64 {
    0
}

// ---- the clock's own cost --------------------------------------------------------------

/// What one read of each clock costs here, in ns (measured, not assumed).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClockCost {
    /// One `rdtsc` (0 off x86_64).
    pub rdtsc_ns: f64,
    /// One `rdtscp` (0 off x86_64).
    pub rdtscp_ns: f64,
    /// One `clock_gettime(CLOCK_MONOTONIC)` through the vDSO.
    pub clock_gettime_ns: f64,
}

/// ns per call of `f`: the fastest of `rounds` loops of `n` calls each, timed with
/// CLOCK_MONOTONIC.
fn ns_per_call(n: u32, rounds: u32, mut f: impl FnMut() -> u64) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let mut sink = 0u64;
        let t0 = monotonic_ns();
        for _ in 0..n {
            sink = sink.wrapping_add(f());
        }
        let t1 = monotonic_ns();
        std::hint::black_box(sink);
        best = best.min(t1.saturating_sub(t0) as f64 / f64::from(n));
    }
    best
}

impl ClockCost {
    /// Measures the three reads: the fastest of 5 loops of 4000 reads each (≈ 2 ms).
    pub fn measure() -> ClockCost {
        let x86 = cfg!(target_arch = "x86_64");
        ClockCost {
            rdtsc_ns: if x86 {
                ns_per_call(4000, 5, rdtsc)
            } else {
                0.0
            },
            rdtscp_ns: if x86 {
                ns_per_call(4000, 5, rdtscp)
            } else {
                0.0
            },
            clock_gettime_ns: ns_per_call(4000, 5, monotonic_ns),
        }
    }

    /// The process's measurement, taken on first use.
    pub fn get() -> ClockCost {
        static COST: OnceLock<ClockCost> = OnceLock::new();
        *COST.get_or_init(ClockCost::measure)
    }

    /// The cost of one stamp of a clock reading `source`.
    pub fn stamp_ns(&self, source: ClockSource) -> f64 {
        match source {
            ClockSource::Tsc => self.rdtsc_ns,
            ClockSource::Monotonic => self.clock_gettime_ns,
        }
    }
}

impl fmt::Display for ClockCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rdtsc {:.1} ns, rdtscp {:.1} ns, clock_gettime {:.1} ns per read",
            self.rdtsc_ns, self.rdtscp_ns, self.clock_gettime_ns
        )
    }
}

/// The header every benchmark prints: the stamp clock and its calibration, what one read
/// of each clock costs here (measured in this process), and how quiet the machine is
/// (load average, `rustc` processes running). Three lines, no trailing newline.
pub fn bench_header(bench: &str) -> String {
    let cal = Clock::global().calibration();
    let cost = ClockCost::get();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let rustc = std::fs::read_dir("/proc").map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "rustc")
            })
            .count()
    });
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "== bench {bench}\nclock: {cal}\nclock cost: {cost}\nmachine: {cpus} CPUs, load average {}, {rustc} rustc running",
        load.join(" ")
    )
}

// ---- the calibrated clock --------------------------------------------------------------

/// Where a [`Clock`]'s stamps come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockSource {
    /// rdtsc converted with the calibrated mult/shift.
    Tsc,
    /// `clock_gettime(CLOCK_MONOTONIC)` on every stamp (TSC not invariant or not x86_64).
    Monotonic,
}

impl ClockSource {
    /// `"tsc"` or `"monotonic"`.
    pub fn name(self) -> &'static str {
        match self {
            ClockSource::Tsc => "tsc",
            ClockSource::Monotonic => "monotonic",
        }
    }
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
    /// Bound of the rate's error from the last rate measurement, in ppm: the two end
    /// samples' half brackets over the span measured. 0 for [`ClockSource::Monotonic`].
    pub rate_error_ppm: f64,
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            ClockSource::Tsc => write!(
                f,
                "tsc {:.3} GHz, error {} ns, rate error {:.2} ppm",
                self.tsc_hz as f64 / 1e9,
                self.error_ns,
                self.rate_error_ppm
            ),
            ClockSource::Monotonic => write!(f, "CLOCK_MONOTONIC (no invariant TSC)"),
        }
    }
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
    rate_width_ns: u64,
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

/// ppm error bound of a rate measured over `dn` ns between samples bracketed `w0`, `w1` ns.
fn ppm_of(w0: u64, w1: u64, dn: u64) -> f64 {
    (w0 + w1) as f64 / 2.0 / dn.max(1) as f64 * 1e6
}

/// One (tsc, monotonic, bracket width) sample: the TSC read between two clock_gettime
/// calls, the tightest of 16 tries.
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
                mult: 1 << SHIFT,
                shift: SHIFT,
                error_ns: 0,
                rate_error_ppm: 0.0,
            },
            base_tsc: 0,
            base_ns: 0,
            rate_tsc: 0,
            rate_ns: 0,
            rate_width_ns: 0,
            next_refine_tsc: u64::MAX,
        }
    }

    /// Calibrates a new clock: TSC when invariant, CLOCK_MONOTONIC otherwise.
    pub fn calibrate() -> Clock {
        if !tsc_is_invariant() {
            return Clock::monotonic();
        }
        Clock::calibrate_tsc(Duration::from_millis(20))
    }

    /// Calibrates the TSC over `window` regardless of the invariance flags.
    pub fn calibrate_tsc(window: Duration) -> Clock {
        let (t0, n0, w0) = paired_sample();
        std::thread::sleep(window);
        let (t1, n1, w1) = paired_sample();
        let dt = t1.saturating_sub(t0).max(1);
        let dn = n1.saturating_sub(n0);
        let tsc_hz = hz_of(dt, dn);
        let mut clock = Clock {
            cal: Calibration {
                source: ClockSource::Tsc,
                tsc_hz,
                mult: mult_of(dt, dn),
                shift: SHIFT,
                error_ns: 0,
                rate_error_ppm: ppm_of(w0, w1, dn),
            },
            base_tsc: t1,
            base_ns: n1,
            rate_tsc: t1,
            rate_ns: n1,
            rate_width_ns: w1,
            next_refine_tsc: t1.saturating_add(ns_to_ticks(REFINE_EVERY_NS, tsc_hz)),
        };
        clock.cal.error_ns = clock.measure_error();
        clock
    }

    /// Refines the conversion if 100 ms have passed since the last time: one rdtsc and a
    /// compare otherwise. Call it where a little work does not delay anything (an event
    /// loop: before it waits).
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
    pub fn refine_over(&mut self, span_ns: u64) -> u64 {
        if self.cal.source != ClockSource::Tsc {
            return 0;
        }
        let (t, n, width) = paired_sample();
        if width > MAX_PAIR_WIDTH_NS {
            return 0;
        }
        let drift = self.tsc_to_ns(t).abs_diff(n);
        if n.saturating_sub(self.rate_ns) >= span_ns {
            let dt = t.wrapping_sub(self.rate_tsc).max(1);
            let dn = n.saturating_sub(self.rate_ns).max(1);
            self.cal.mult = mult_of(dt, dn);
            self.cal.tsc_hz = hz_of(dt, dn);
            self.cal.rate_error_ppm = ppm_of(self.rate_width_ns, width, dn);
            self.rate_tsc = t;
            self.rate_ns = n;
            self.rate_width_ns = width;
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

    /// Where the stamps come from.
    #[inline(always)]
    pub fn source(&self) -> ClockSource {
        self.cal.source
    }

    /// Makes the rate `ppm` parts per million faster than calibrated (tests of the
    /// refinement: a rate made wrong on purpose).
    pub fn skew_rate_ppm(&mut self, ppm: i64) {
        let m = self.cal.mult as i128;
        self.cal.mult = (m + m * i128::from(ppm) / 1_000_000) as u64;
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
            worst = worst.max(self.tsc_to_ns(t).abs_diff(mid) + width / 2);
        }
        worst
    }

    /// Raw stamp: TSC ticks, or ns on the monotonic fallback. Store it as it is and
    /// convert with [`Clock::to_ns`] when it is read.
    #[inline(always)]
    pub fn raw(&self) -> u64 {
        match self.cal.source {
            ClockSource::Tsc => rdtsc(),
            ClockSource::Monotonic => monotonic_ns(),
        }
    }

    #[inline(always)]
    fn tsc_to_ns(&self, t: u64) -> u64 {
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
            ClockSource::Tsc => self.tsc_to_ns(raw),
            ClockSource::Monotonic => raw,
        }
    }

    /// A difference of two raw stamps (a duration in raw units) in ns.
    #[inline(always)]
    pub fn delta_ns(&self, raw_delta: u64) -> u64 {
        match self.cal.source {
            ClockSource::Tsc => {
                ((u128::from(raw_delta) * u128::from(self.cal.mult)) >> self.cal.shift) as u64
            }
            ClockSource::Monotonic => raw_delta,
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
        let c = Clock::calibrate_tsc(Duration::from_millis(10));
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
        // A duration converts like the difference of its ends.
        let (r1, r2) = (c.raw(), c.raw() + 1_000_000);
        assert!(c.delta_ns(r2 - r1).abs_diff(c.to_ns(r2) - c.to_ns(r1)) <= 1);
    }

    #[test]
    fn refining_removes_a_rate_error() {
        if !tsc_is_invariant() {
            eprintln!("skipping: TSC not invariant on this machine");
            return;
        }
        let mut c = Clock::calibrate_tsc(Duration::from_millis(10));
        // Make the rate 100 ppm wrong: 100 µs of drift per second.
        c.skew_rate_ppm(100);
        std::thread::sleep(Duration::from_millis(200));
        let before = c.measure_error();
        // Re-anchor and re-measure the rate over the 200 ms just passed.
        let corrected = c.refine_over(100_000_000);
        std::thread::sleep(Duration::from_millis(200));
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
        assert_eq!(c.delta_ns(12345), 12345);
        assert_eq!(c.measure_error(), 0);
    }

    #[test]
    fn cpuinfo_flags_parse() {
        let info = "processor\t: 0\nflags\t\t: fpu tsc constant_tsc rep_good nonstop_tsc tsc_known_freq\nflags\t\t: nothing\n";
        let f = CpuFlags::parse(info);
        assert!(f.read && f.invariant_tsc() && f.tsc_known_freq);
        assert_eq!(
            f.tsc_flags,
            ["tsc", "constant_tsc", "nonstop_tsc", "tsc_known_freq"]
        );
        let g = CpuFlags::parse("flags : fpu tsc constant_tsc\n");
        assert!(g.read && !g.invariant_tsc());
        assert!(!CpuFlags::parse("").read);
    }

    #[test]
    fn clock_cost_is_measured() {
        let c = ClockCost::measure();
        assert!(
            c.clock_gettime_ns > 0.0 && c.clock_gettime_ns < 100_000.0,
            "{c}"
        );
        if cfg!(target_arch = "x86_64") {
            assert!(c.rdtsc_ns > 0.0 && c.rdtscp_ns > 0.0, "{c}");
        }
        assert!(c.to_string().contains("clock_gettime"));
    }
}
