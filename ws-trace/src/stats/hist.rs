//! A latency histogram in the shared log-linear layout ([`ws_abi::hist`]): filled in user
//! space (engine stages from the stamp channel) or read from the probes' per-CPU maps
//! (kernel stages), merged, differenced per interval, and exported.
use ws_abi::hist::{BUCKETS, bucket_bounds, bucket_index, quantile};

/// Bucket counts plus the exact sum and max of the recorded values (ns).
#[derive(PartialEq, Eq)]
pub struct LogHistogram {
    counts: Box<[u64]>,
    total: u64,
    sum: u64,
    max: u64,
}

impl Clone for LogHistogram {
    fn clone(&self) -> Self {
        Self {
            counts: self.counts.clone(),
            total: self.total,
            sum: self.sum,
            max: self.max,
        }
    }

    /// Copies into the existing buckets (no allocation): readings taken every interval
    /// reuse their histograms.
    fn clone_from(&mut self, source: &Self) {
        self.counts.copy_from_slice(&source.counts);
        self.total = source.total;
        self.sum = source.sum;
        self.max = source.max;
    }
}

impl Default for LogHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LogHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHistogram")
            .field("count", &self.total)
            .field("sum", &self.sum)
            .field("max", &self.max)
            .finish()
    }
}

impl LogHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            sum: 0,
            max: 0,
        }
    }

    /// A histogram from raw bucket counts (the kernel's layout: [`BUCKETS`] counts), the
    /// sum of the values and their max. Extra counts beyond [`BUCKETS`] are ignored.
    pub fn from_counts(counts: &[u64], sum: u64, max: u64) -> Self {
        let mut h = Self::new();
        for (dst, src) in h.counts.iter_mut().zip(counts) {
            *dst = *src;
        }
        h.total = h.counts.iter().sum();
        h.sum = sum;
        h.max = max;
        h
    }

    /// Records one value (ns).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket_index(ns)] += 1;
        self.total += 1;
        self.sum = self.sum.wrapping_add(ns);
        self.max = self.max.max(ns);
    }

    /// Records one value (ns) that stands for `n` (a sampled one, weighted).
    #[inline]
    pub fn record_n(&mut self, ns: u64, n: u64) {
        self.counts[bucket_index(ns)] += n;
        self.total += n;
        self.sum = self.sum.wrapping_add(ns.wrapping_mul(n));
        self.max = self.max.max(ns);
    }

    /// Makes every recorded value stand for `n` (a sample, weighted as
    /// [`record_n`](Self::record_n) weights one value): counts, total and sum times `n`.
    pub fn weight(&mut self, n: u64) {
        if n == 1 {
            return;
        }
        for c in self.counts.iter_mut() {
            *c *= n;
        }
        self.total *= n;
        self.sum = self.sum.wrapping_mul(n);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &LogHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.total += other.total;
        self.sum = self.sum.wrapping_add(other.sum);
        self.max = self.max.max(other.max);
    }

    /// What was recorded since `earlier`, a previous reading of the same cumulative
    /// histogram: counts and sum are differenced (a count that went backwards, a reset,
    /// counts as zero). The max of an interval is not known from two cumulative readings;
    /// it is bounded by the highest bucket that gained counts, whose upper bound (clamped
    /// to the cumulative max) is reported.
    pub fn since(&self, earlier: &LogHistogram) -> LogHistogram {
        let mut d = LogHistogram::new();
        self.since_into(earlier, &mut d);
        d
    }

    /// [`LogHistogram::since`] written into `out` (its buckets reused, no allocation).
    pub fn since_into(&self, earlier: &LogHistogram, out: &mut LogHistogram) {
        let mut top = None;
        for (i, ((dst, now), before)) in out
            .counts
            .iter_mut()
            .zip(self.counts.iter())
            .zip(earlier.counts.iter())
            .enumerate()
        {
            *dst = now.saturating_sub(*before);
            if *dst > 0 {
                top = Some(i);
            }
        }
        out.total = out.counts.iter().sum();
        out.sum = self.sum.saturating_sub(earlier.sum);
        out.max = top.map_or(0, |i| {
            let (lo, width) = bucket_bounds(i);
            (lo + width - 1).min(self.max)
        });
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Sum of the recorded values (ns).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Largest recorded value (ns); see [`LogHistogram::since`] for intervals.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The bucket counts, [`BUCKETS`] of them.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Nearest-rank quantile `q` in (0, 1] (ns): the midpoint of the bucket holding it,
    /// within [`ws_abi::hist::RELATIVE_ERROR`] of the exact value; `q = 1` is the max.
    pub fn quantile(&self, q: f64) -> u64 {
        quantile(&self.counts, self.total, q, None, self.max)
    }

    /// Cumulative counts at each upper bound of `bounds_ns` (ascending), for classic
    /// Prometheus `le` buckets: a bucket of the log-linear layout counts under the first
    /// bound its *upper* edge does not exceed, so a cumulative count never includes a value
    /// above its bound; values within one log-linear bucket (≤ 1/32 of the bound) below a
    /// bound may be counted under the next one. The `+Inf` bucket is [`LogHistogram::count`].
    pub fn cumulative_at(&self, bounds_ns: &[u64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(bounds_ns.len());
        let mut seen = 0u64;
        let mut i = 0usize;
        for &bound in bounds_ns {
            while i < BUCKETS {
                let (lo, width) = bucket_bounds(i);
                if lo + width - 1 > bound {
                    break;
                }
                seen += self.counts[i];
                i += 1;
            }
            out.push(seen);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Weighting a histogram by n is recording each of its values n times.
    #[test]
    fn weighting_is_recording_each_value_n_times() {
        let values = [30u64, 700, 700, 52_000, 1_000_000];
        let mut weighted = LogHistogram::new();
        let mut repeated = LogHistogram::new();
        for v in values {
            weighted.record(v);
            repeated.record_n(v, 20);
        }
        weighted.weight(20);
        assert_eq!(weighted, repeated);
        assert_eq!(weighted.count(), 100);
        let before = weighted.clone();
        weighted.weight(1);
        assert_eq!(weighted, before);
    }

    #[test]
    fn quantiles_are_within_the_layouts_error() {
        let mut h = LogHistogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 100);
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.max(), 1_000_000);
        for (q, exact) in [(0.5, 500_000f64), (0.9, 900_000.), (0.99, 990_000.)] {
            let got = h.quantile(q) as f64;
            assert!(
                (got - exact).abs() / exact <= ws_abi::hist::RELATIVE_ERROR,
                "{q}: {got}"
            );
        }
        assert_eq!(h.quantile(1.0), 1_000_000);
    }

    #[test]
    fn cumulative_buckets_never_count_a_value_above_their_bound() {
        let mut h = LogHistogram::new();
        for v in [10, 999, 1_000, 1_001, 5_000, 1_000_000] {
            h.record(v);
        }
        let c = h.cumulative_at(&[1_000, 10_000, 100_000]);
        // 1_000 and 999 share a bucket reaching past 1_000 ([992, 1008)): they count at 10 µs.
        assert_eq!(c, vec![1, 5, 5]);
    }

    #[test]
    fn intervals_difference_counts_and_bound_their_max() {
        let mut h = LogHistogram::new();
        h.record(100);
        let before = h.clone();
        h.record(5_000);
        h.record(200);
        let d = h.since(&before);
        assert_eq!(d.count(), 2);
        assert_eq!(d.sum(), 5_200);
        assert!(
            d.max() >= 5_000 && d.max() <= 5_000 + 5_000 / 32,
            "{}",
            d.max()
        );
        assert_eq!(h.since(&h).count(), 0);
        // Into a histogram that held something else: the same as a fresh one.
        let mut out = h.clone();
        h.since_into(&before, &mut out);
        assert_eq!(out, d);
        out.clone_from(&before);
        assert_eq!(out, before);
    }

    proptest! {
        #[test]
        fn merged_histograms_equal_one_fed_everything(
            a in proptest::collection::vec(0u64..1 << 41, 0..200),
            b in proptest::collection::vec(0u64..1 << 41, 0..200),
        ) {
            let (mut ha, mut hb, mut all) = (LogHistogram::new(), LogHistogram::new(), LogHistogram::new());
            a.iter().for_each(|&v| { ha.record(v); all.record(v) });
            b.iter().for_each(|&v| { hb.record(v); all.record(v) });
            ha.merge(&hb);
            prop_assert_eq!(&ha, &all);
            let c = all.cumulative_at(&[1_000, 1_000_000, u64::MAX]);
            prop_assert!(c.windows(2).all(|w| w[0] <= w[1]));
            prop_assert_eq!(c[2], all.count());
        }
    }
}
