//! Time windows and threshold alerts.
//!
//! The hot path only maintains cumulative counters. A window is closed by
//! [`crate::Profiler::tick`] (called from the engine's loop or a ticker thread): it diffs the
//! cumulative histograms against the previous window's and stores a summary in a ring of N.

use crate::CallbackKind;
use crate::cell::Cumulative;
use crate::hist::{BUCKETS, quantile, report_quantiles};
use crate::report::{WindowCallbackStats, WindowReport};
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

/// Fire an alert when `quantile` of `kind`'s durations in a closed window exceeds
/// `threshold_ns` (and the window holds at least `min_count` invocations).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlertRule {
    /// The kind to watch.
    pub kind: CallbackKind,
    /// Quantile in (0, 1], e.g. 0.99 for p99.
    pub quantile: f64,
    /// Threshold in ns; the alert fires when the observed quantile is strictly above it.
    pub threshold_ns: u64,
    /// Windows with fewer invocations than this are ignored (avoid alerting on noise).
    pub min_count: u64,
}

/// A fired alert, handed to the hook.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// The rule that fired.
    pub rule: AlertRule,
    /// Kind name.
    pub name: String,
    /// Observed quantile in the window, ns.
    pub observed_ns: u64,
    /// Invocations in the window.
    pub count: u64,
    /// Window start, ns (profiler clock).
    pub window_start_ns: u64,
    /// Window end, ns.
    pub window_end_ns: u64,
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ws-profiler alert: {} p{} = {:.3} us > {:.3} us over {} calls in window [{}, {}) ns",
            self.name,
            self.rule.quantile * 100.0,
            self.observed_ns as f64 / 1e3,
            self.rule.threshold_ns as f64 / 1e3,
            self.count,
            self.window_start_ns,
            self.window_end_ns
        )
    }
}

/// The hook type alerts are delivered to.
pub type AlertHook = Arc<dyn Fn(&Alert) + Send + Sync>;

pub(crate) struct WindowState {
    pub(crate) start_ns: u64,
    prev: Vec<Cumulative>,
    pub(crate) ring: VecDeque<WindowReport>,
    capacity: usize,
}

impl WindowState {
    pub(crate) fn new(start_ns: u64, kinds: usize, capacity: usize) -> WindowState {
        WindowState {
            start_ns,
            prev: (0..kinds).map(|_| Cumulative::empty()).collect(),
            ring: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub(crate) fn reset(&mut self, start_ns: u64) {
        self.start_ns = start_ns;
        for p in &mut self.prev {
            *p = Cumulative::empty();
        }
        self.ring.clear();
    }

    /// Close the current window at `now_ns`. `cur[k]` is kind k's cumulative state now,
    /// `win_max[k]` its max since the previous close, `names[k]` its name.
    /// Returns the alerts that fire.
    pub(crate) fn close(
        &mut self,
        now_ns: u64,
        cur: Vec<Cumulative>,
        win_max: &[u64],
        names: &[String],
        rules: &[(AlertRule, AlertHook)],
    ) -> Vec<(Alert, AlertHook)> {
        let span_s = now_ns.saturating_sub(self.start_ns) as f64 / 1e9;
        let mut callbacks = Vec::new();
        let mut deltas: Vec<Option<(u64, Vec<u64>, u64)>> = vec![None; cur.len()];
        for (k, c) in cur.iter().enumerate() {
            let Some(p) = self.prev.get(k) else { continue };
            let count = c.count.saturating_sub(p.count);
            if count == 0 {
                continue;
            }
            let hist: Vec<u64> = c
                .hist
                .iter()
                .zip(p.hist.iter())
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            let total = c.total.saturating_sub(p.total);
            let max = win_max.get(k).copied().unwrap_or(0);
            let [p50, p90, p99, p999] = report_quantiles(&hist, count, None, max);
            callbacks.push(WindowCallbackStats {
                name: names.get(k).cloned().unwrap_or_default(),
                count,
                total_ns: total,
                avg_ns: total / count,
                max_ns: max,
                bytes: c.bytes.saturating_sub(p.bytes),
                p50_ns: p50,
                p90_ns: p90,
                p99_ns: p99,
                p999_ns: p999,
                calls_per_sec: if span_s > 0.0 {
                    count as f64 / span_s
                } else {
                    0.0
                },
            });
            deltas[k] = Some((count, hist, max));
        }
        let mut fired = Vec::new();
        for (rule, hook) in rules {
            let Some(Some((count, hist, max))) = deltas.get(rule.kind.index()) else {
                continue;
            };
            if *count < rule.min_count.max(1) {
                continue;
            }
            let observed = quantile(hist, *count, rule.quantile, None, *max);
            if observed > rule.threshold_ns {
                fired.push((
                    Alert {
                        rule: *rule,
                        name: names.get(rule.kind.index()).cloned().unwrap_or_default(),
                        observed_ns: observed,
                        count: *count,
                        window_start_ns: self.start_ns,
                        window_end_ns: now_ns,
                    },
                    Arc::clone(hook),
                ));
            }
        }
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(WindowReport {
            start_ns: self.start_ns,
            end_ns: now_ns,
            callbacks,
        });
        for (k, c) in cur.into_iter().enumerate() {
            if let Some(p) = self.prev.get_mut(k) {
                *p = c;
            }
        }
        self.start_ns = now_ns;
        debug_assert!(self.prev.iter().all(|p| p.hist.len() == BUCKETS));
        fired
    }
}
