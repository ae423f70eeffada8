//! The log-linear histogram layout (HDR-style) every latency histogram of ws-trace uses:
//! the callback profiler's, the probes' in-kernel stage histograms (`ws-ebpf`) and the
//! tracer's (`ws-trace`'s `stats`), so their buckets merge and compare one to one.
//!
//! Values below 64 ns have one bucket each (exact). Above that, every power of two
//! `[2^e, 2^(e+1))` is split into [`SUB_BUCKETS`] equal buckets of width `2^(e-5)`.
//! A bucket's representative value is its midpoint, so a reported percentile is within
//! [`RELATIVE_ERROR`] (1/64 = 1.5625 %) of the exact nearest-rank order statistic.
//! Values at or above [`MAX_TRACKABLE_NS`] (2^40 ns, about 18.3 minutes) land in the last
//! bucket; min and max are kept exactly beside the histogram and clamp the estimate.

/// Bits of linear sub-division per power of two.
pub const SUB_BUCKET_BITS: u32 = 5;
/// Linear buckets per power of two.
pub const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Largest exponent with its own buckets: values up to `2^(MAX_EXP + 1) - 1` are bucketed.
const MAX_EXP: u32 = 39;
/// Values at or above this (ns) share the last bucket.
pub const MAX_TRACKABLE_NS: u64 = 1 << (MAX_EXP + 1);
/// Number of buckets in one histogram.
pub const BUCKETS: usize =
    (((MAX_EXP - SUB_BUCKET_BITS) as usize) << SUB_BUCKET_BITS) + 2 * SUB_BUCKETS as usize;
/// Upper bound of the relative error of a reported percentile: `2^-(SUB_BUCKET_BITS + 1)`.
pub const RELATIVE_ERROR: f64 = 1.0 / (2 * SUB_BUCKETS) as f64;

/// Bucket index of a value (branch-free apart from the clamp, which is a `cmov`; the
/// eBPF target, which has no count-leading-zeros instruction, gets a short bit sequence).
#[inline(always)]
pub fn bucket_index(v: u64) -> usize {
    let v = v.min(MAX_TRACKABLE_NS - 1);
    let e = 63 - (v | 1).leading_zeros();
    let shift = e.saturating_sub(SUB_BUCKET_BITS);
    (((shift as u64) << SUB_BUCKET_BITS) + (v >> shift)) as usize
}

/// Lowest value of bucket `i` and the bucket's width (number of integer values in it).
pub fn bucket_bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB_BUCKETS {
        return (i, 1);
    }
    let shift = (i >> SUB_BUCKET_BITS) - 1;
    let mantissa = (i & (SUB_BUCKETS - 1)) | SUB_BUCKETS;
    (mantissa << shift, 1 << shift)
}

/// Representative (midpoint) value reported for bucket `i`.
pub fn bucket_value(i: usize) -> u64 {
    let (lo, width) = bucket_bounds(i);
    lo + width / 2
}

/// Nearest-rank quantile `q` (0 < q <= 1) of a bucket-count array: the midpoint of the
/// bucket holding the rank-th smallest sample, clamped to `[min, max]`. The extreme ranks
/// are exact: the last is `max`, the first is `min` when the exact min is known (`None`
/// for time windows, which keep no min). Returns 0 for an empty histogram.
pub fn quantile(counts: &[u64], total: u64, q: f64, min: Option<u64>, max: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    let q = q.clamp(0.0, 1.0);
    // ceil(q * total) without `f64::ceil`, which `core` lacks.
    let exact = q * total as f64;
    let floor = exact as u64;
    let rank = if (floor as f64) < exact {
        floor + 1
    } else {
        floor
    }
    .clamp(1, total);
    if rank == total {
        return max;
    }
    if rank == 1
        && let Some(m) = min
    {
        return m;
    }
    let lo = min.unwrap_or(0);
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return bucket_value(i).clamp(lo, max.max(lo));
        }
    }
    max
}

/// The percentiles every report carries: p50, p90, p99, p99.9.
pub const REPORT_QUANTILES: [f64; 4] = [0.50, 0.90, 0.99, 0.999];

/// p50/p90/p99/p99.9 of a bucket-count array.
pub fn report_quantiles(counts: &[u64], total: u64, min: Option<u64>, max: u64) -> [u64; 4] {
    REPORT_QUANTILES.map(|q| quantile(counts, total, q, min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_continuous_and_covers_the_range() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(63), 63);
        assert_eq!(bucket_index(64), 64);
        assert_eq!(bucket_index(MAX_TRACKABLE_NS - 1), BUCKETS - 1);
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
        let mut expected_lo = 0u64;
        for i in 0..BUCKETS {
            let (lo, w) = bucket_bounds(i);
            assert_eq!(
                lo,
                expected_lo,
                "bucket {i} starts where {} ended",
                i.saturating_sub(1)
            );
            assert_eq!(bucket_index(lo), i);
            assert_eq!(bucket_index(lo + w - 1), i);
            expected_lo = lo + w;
        }
        assert_eq!(expected_lo, MAX_TRACKABLE_NS);
    }

    #[test]
    fn every_value_is_within_the_stated_error_of_its_bucket_value() {
        let check = |v: u64| {
            let rep = bucket_value(bucket_index(v));
            let err = rep.abs_diff(v);
            // err / v <= 1/64, in integers
            assert!(err * 2 * SUB_BUCKETS <= v, "v={v} rep={rep}");
        };
        for v in 0..(1 << 16) {
            check(v);
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check(x % MAX_TRACKABLE_NS);
        }
    }
}
