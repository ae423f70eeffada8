//! Percentiles against known distributions: every reported p50/p90/p99/p99.9 must be within
//! the stated relative error (1/64) of the exact nearest-rank order statistic.

use ws_profiler::{CallbackKind, Profiler, RELATIVE_ERROR};

/// xorshift64*: a small deterministic generator so the test needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        // Box-Muller.
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn exact(sorted: &[u64], q: f64) -> u64 {
    let n = sorted.len() as u64;
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    sorted[(rank - 1) as usize]
}

fn check(name: &str, samples: Vec<u64>) -> f64 {
    let p = Profiler::new();
    for &s in &samples {
        p.record(CallbackKind::RECEIVE, s, 0);
    }
    let mut sorted = samples;
    sorted.sort_unstable();
    let r = p.report();
    let Some(c) = r.callback("receive") else {
        panic!("no receive row")
    };
    assert_eq!(c.count, sorted.len() as u64);
    assert_eq!(c.min_ns, sorted[0]);
    assert_eq!(c.max_ns, sorted[sorted.len() - 1]);
    let mut worst = 0.0f64;
    for (q, got) in [
        (0.5, c.p50_ns),
        (0.9, c.p90_ns),
        (0.99, c.p99_ns),
        (0.999, c.p999_ns),
    ] {
        let want = exact(&sorted, q);
        let err = got.abs_diff(want) as f64 / want.max(1) as f64;
        worst = worst.max(err);
        assert!(
            err <= RELATIVE_ERROR,
            "{name}: q={q} got {got} want {want} (error {:.4}% > {:.4}%)",
            err * 100.0,
            RELATIVE_ERROR * 100.0
        );
        assert_eq!(p.quantile(CallbackKind::RECEIVE, q), got);
    }
    // p100 is the exact max, p(1/n) the exact min.
    assert_eq!(
        p.quantile(CallbackKind::RECEIVE, 1.0),
        sorted[sorted.len() - 1]
    );
    eprintln!(
        "{name}: worst percentile error {:.3}% (bound {:.3}%)",
        worst * 100.0,
        RELATIVE_ERROR * 100.0
    );
    worst
}

#[test]
fn uniform() {
    let mut r = Rng(1);
    check(
        "uniform 1..1e6",
        (0..200_000).map(|_| 1 + r.next() % 1_000_000).collect(),
    );
}

#[test]
fn exponential() {
    let mut r = Rng(2);
    // mean 10 us
    check(
        "exponential",
        (0..200_000)
            .map(|_| (-r.unit().ln() * 10_000.0) as u64)
            .collect(),
    );
}

#[test]
fn log_normal_heavy_tail() {
    let mut r = Rng(3);
    // median ~ 5 us, sigma 1.5: spans ns to tens of ms
    check(
        "log-normal",
        (0..200_000)
            .map(|_| (5_000.0 * (1.5 * r.normal()).exp()) as u64)
            .collect(),
    );
}

#[test]
fn bimodal_fast_path_and_slow_path() {
    let mut r = Rng(4);
    check(
        "bimodal",
        (0..100_000)
            .map(|_| {
                if r.next() % 100 < 97 {
                    800 + r.next() % 200 // ~1 us fast path
                } else {
                    2_000_000 + r.next() % 500_000 // 2-2.5 ms stalls
                }
            })
            .collect(),
    );
}

#[test]
fn constant_and_tiny_values_are_exact() {
    assert_eq!(check("constant", vec![12_345; 1000]), 0.0);
    let p = Profiler::new();
    for v in 0..64u64 {
        p.record(CallbackKind::PONG, v, 0);
    }
    // below 64 ns every value has its own bucket
    assert_eq!(p.quantile(CallbackKind::PONG, 0.5), 31);
    assert_eq!(p.quantile(CallbackKind::PONG, 0.9), 57);
}

#[test]
fn empty_kind_reports_zeros() {
    let p = Profiler::new();
    let r = p.report();
    let c = r
        .callback("ping")
        .map(|c| (c.count, c.min_ns, c.max_ns, c.avg_ns, c.p99_ns, c.last_ns));
    assert_eq!(c, Some((0, 0, 0, 0, 0, 0)));
}
