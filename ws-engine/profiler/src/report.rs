//! Reports: an owned snapshot ([`Report`]) rendered as a text table, JSON or Prometheus
//! text exposition.

use crate::ProfilerError;
use crate::clock::ClockInfo;
use serde::{Deserialize, Serialize};
use std::fmt::{self, Write as _};

/// Version of the JSON layout; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Histogram parameters, so a reader knows how precise the percentiles are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramInfo {
    /// Linear sub-buckets per power of two, as bits (5 → 32).
    pub sub_bucket_bits: u32,
    /// Upper bound of a percentile's relative error (0.015625).
    pub relative_error: f64,
    /// Durations at or above this share the last bucket (min/max stay exact).
    pub max_trackable_ns: u64,
}

/// Totals of one callback kind since start (or the last reset).
///
/// The first eight fields keep the seed profiler's names and meanings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallbackStats {
    /// Kind name (`receive`, `writable`, … or a registered user kind).
    pub name: String,
    /// Invocations.
    pub count: u64,
    /// Sum of durations, ns.
    pub total_ns: u64,
    /// Shortest invocation, ns (0 if none).
    pub min_ns: u64,
    /// Longest invocation, ns.
    pub max_ns: u64,
    /// `total_ns / count` (0 if none).
    pub avg_ns: u64,
    /// Bytes passed to the callbacks (as reported by the caller).
    pub bytes: u64,
    /// CLOCK_MONOTONIC ns at the end of the most recent invocation (0 if none).
    pub last_ns: u64,
    /// Median duration, ns (within the histogram's relative error).
    pub p50_ns: u64,
    /// 90th percentile, ns.
    pub p90_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Invocations per second over the report's span.
    pub calls_per_sec: f64,
    /// Bytes per second over the report's span.
    pub bytes_per_sec: f64,
}

/// One kind within one closed time window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowCallbackStats {
    /// Kind name.
    pub name: String,
    /// Invocations in the window.
    pub count: u64,
    /// Sum of durations in the window, ns.
    pub total_ns: u64,
    /// `total_ns / count`.
    pub avg_ns: u64,
    /// Longest invocation in the window, ns.
    pub max_ns: u64,
    /// Bytes in the window.
    pub bytes: u64,
    /// Median, ns.
    pub p50_ns: u64,
    /// 90th percentile, ns.
    pub p90_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Invocations per second in the window.
    pub calls_per_sec: f64,
}

/// A closed time window (kinds with no invocations in it are left out).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowReport {
    /// Window start, CLOCK_MONOTONIC ns (profiler clock).
    pub start_ns: u64,
    /// Window end, ns.
    pub end_ns: u64,
    /// Per-kind stats in the window.
    pub callbacks: Vec<WindowCallbackStats>,
}

/// One kind on one connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnCallbackStats {
    /// Kind name.
    pub name: String,
    /// Invocations.
    pub count: u64,
    /// Sum of durations, ns.
    pub total_ns: u64,
    /// `total_ns / count`.
    pub avg_ns: u64,
    /// Longest invocation, ns.
    pub max_ns: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Per-connection stats (only with connection tracking enabled).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionReport {
    /// The engine's connection id.
    pub id: u64,
    /// CLOCK_MONOTONIC ns at the end of the connection's most recent invocation.
    pub last_ns: u64,
    /// Sum of `total_ns` over kinds.
    pub total_ns: u64,
    /// Kinds with at least one invocation.
    pub callbacks: Vec<ConnCallbackStats>,
}

/// A complete snapshot of a profiler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Whether recording was on when the snapshot was taken.
    pub enabled: bool,
    /// The clock in use.
    pub clock: ClockInfo,
    /// Histogram precision.
    pub histogram: HistogramInfo,
    /// CLOCK_MONOTONIC ns when the snapshot was taken.
    pub now_ns: u64,
    /// ns since the profiler was built or last reset (the rate denominator).
    pub uptime_ns: u64,
    /// Every registered kind, built-ins first, in index order.
    pub callbacks: Vec<CallbackStats>,
    /// Closed time windows, oldest first (empty unless windows are configured).
    pub windows: Vec<WindowReport>,
    /// Tracked connections by id (empty unless connection tracking is configured).
    pub connections: Vec<ConnectionReport>,
    /// Invocations not attributed to a connection because the table was full.
    pub untracked_connection_records: u64,
    /// Alerts fired since start.
    pub alerts_fired: u64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

impl Report {
    /// Compact JSON.
    pub fn to_json(&self) -> Result<String, ProfilerError> {
        Ok(serde_json::to_string(self)?)
    }

    /// Indented JSON.
    pub fn to_json_pretty(&self) -> Result<String, ProfilerError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Parse a report back from JSON.
    pub fn from_json(s: &str) -> Result<Report, ProfilerError> {
        Ok(serde_json::from_str(s)?)
    }

    /// The stats of a kind by name.
    pub fn callback(&self, name: &str) -> Option<&CallbackStats> {
        self.callbacks.iter().find(|c| c.name == name)
    }

    /// The human-readable table (same as `Display`).
    pub fn to_text(&self) -> String {
        self.to_string()
    }

    /// Prometheus text exposition format (version 0.0.4). Durations in seconds; the
    /// per-kind series carry a `kind` label. Per-connection stats are not exported
    /// (unbounded label cardinality); use JSON for those.
    pub fn to_prometheus(&self) -> String {
        let mut o = String::new();
        let secs = |ns: u64| ns as f64 / 1e9;
        let family = |o: &mut String,
                      name: &str,
                      kind: &str,
                      help: &str,
                      rows: &dyn Fn(&CallbackStats) -> f64| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
            for c in &self.callbacks {
                let _ = writeln!(
                    o,
                    "{name}{{kind=\"{}\"}} {}",
                    escape_label(&c.name),
                    rows(c)
                );
            }
        };
        family(
            &mut o,
            "ws_profiler_callback_calls_total",
            "counter",
            "Callback invocations.",
            &|c| c.count as f64,
        );
        family(
            &mut o,
            "ws_profiler_callback_bytes_total",
            "counter",
            "Bytes handed to callbacks.",
            &|c| c.bytes as f64,
        );
        family(
            &mut o,
            "ws_profiler_callback_duration_min_seconds",
            "gauge",
            "Shortest callback invocation.",
            &|c| secs(c.min_ns),
        );
        family(
            &mut o,
            "ws_profiler_callback_duration_max_seconds",
            "gauge",
            "Longest callback invocation.",
            &|c| secs(c.max_ns),
        );
        family(
            &mut o,
            "ws_profiler_callback_last_end_seconds",
            "gauge",
            "CLOCK_MONOTONIC time at which the most recent invocation ended.",
            &|c| secs(c.last_ns),
        );
        let name = "ws_profiler_callback_duration_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Callback duration (quantiles within {:.4} relative error).",
            crate::hist::RELATIVE_ERROR
        );
        let _ = writeln!(o, "# TYPE {name} summary");
        for c in &self.callbacks {
            let k = escape_label(&c.name);
            for (q, v) in [
                ("0.5", c.p50_ns),
                ("0.9", c.p90_ns),
                ("0.99", c.p99_ns),
                ("0.999", c.p999_ns),
            ] {
                let _ = writeln!(o, "{name}{{kind=\"{k}\",quantile=\"{q}\"}} {}", secs(v));
            }
            let _ = writeln!(o, "{name}_sum{{kind=\"{k}\"}} {}", secs(c.total_ns));
            let _ = writeln!(o, "{name}_count{{kind=\"{k}\"}} {}", c.count);
        }
        let scalars: [(&str, &str, &str, f64); 3] = [
            (
                "ws_profiler_enabled",
                "gauge",
                "1 if the profiler is recording.",
                if self.enabled { 1.0 } else { 0.0 },
            ),
            (
                "ws_profiler_untracked_connection_records_total",
                "counter",
                "Invocations not attributed to a connection (table full).",
                self.untracked_connection_records as f64,
            ),
            (
                "ws_profiler_alerts_fired_total",
                "counter",
                "Threshold alerts fired.",
                self.alerts_fired as f64,
            ),
        ];
        for (name, kind, help, v) in scalars {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
            let _ = writeln!(o, "{name} {v}");
        }
        o
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ws-profiler: {} over {:.3} s, clock {} (calibration ±{:.2} ppm), percentiles within ±{:.2}%",
            if self.enabled { "on" } else { "OFF" },
            self.uptime_ns as f64 / 1e9,
            self.clock.source,
            self.clock.calibration_error_ppm,
            self.histogram.relative_error * 100.0
        )?;
        writeln!(
            f,
            "{:<18} {:>10} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>10} {:>12} {:>10} {:>9}",
            "Callback",
            "Count",
            "Total(ms)",
            "Avg(us)",
            "Min(us)",
            "Max(us)",
            "p50(us)",
            "p90(us)",
            "p99(us)",
            "p99.9(us)",
            "Bytes",
            "Calls/s",
            "MB/s"
        )?;
        writeln!(f, "{}", "-".repeat(18 + 10 * 4 + 9 * 6 + 12 + 12))?;
        let mut shown = 0;
        for c in self.callbacks.iter().filter(|c| c.count > 0) {
            shown += 1;
            writeln!(
                f,
                "{:<18} {:>10} {:>10.3} {:>9.3} {:>9.3} {:>10.3} {:>9.3} {:>9.3} {:>9.3} {:>10.3} {:>12} {:>10.1} {:>9.3}",
                c.name,
                c.count,
                c.total_ns as f64 / 1e6,
                us(c.avg_ns),
                us(c.min_ns),
                us(c.max_ns),
                us(c.p50_ns),
                us(c.p90_ns),
                us(c.p99_ns),
                us(c.p999_ns),
                c.bytes,
                c.calls_per_sec,
                c.bytes_per_sec / 1e6
            )?;
        }
        if shown == 0 {
            writeln!(f, "(no callbacks recorded)")?;
        }
        if !self.windows.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "Time windows (oldest first; window start relative to the newest window's end):"
            )?;
            writeln!(
                f,
                "{:>10} {:<18} {:>10} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10}",
                "Start(s)",
                "Callback",
                "Count",
                "Calls/s",
                "Avg(us)",
                "p50(us)",
                "p99(us)",
                "p99.9(us)",
                "Max(us)"
            )?;
            let end = self.windows.last().map_or(0, |w| w.end_ns);
            for w in &self.windows {
                let rel = -((end - w.start_ns.min(end)) as f64 / 1e9);
                if w.callbacks.is_empty() {
                    writeln!(f, "{rel:>10.3} {:<18}", "(idle)")?;
                }
                for c in &w.callbacks {
                    writeln!(
                        f,
                        "{rel:>10.3} {:<18} {:>10} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>10.3} {:>10.3}",
                        c.name,
                        c.count,
                        c.calls_per_sec,
                        us(c.avg_ns),
                        us(c.p50_ns),
                        us(c.p99_ns),
                        us(c.p999_ns),
                        us(c.max_ns)
                    )?;
                }
            }
        }
        if !self.connections.is_empty() {
            let mut top: Vec<&ConnectionReport> = self.connections.iter().collect();
            top.sort_by_key(|c| std::cmp::Reverse(c.total_ns));
            writeln!(f)?;
            writeln!(
                f,
                "Connections by callback time (top {} of {}):",
                top.len().min(10),
                top.len()
            )?;
            writeln!(
                f,
                "{:>20} {:>12} {:>10}  busiest kind",
                "Connection", "Total(ms)", "Count"
            )?;
            for c in top.iter().take(10) {
                let count: u64 = c.callbacks.iter().map(|k| k.count).sum();
                let busiest = c
                    .callbacks
                    .iter()
                    .max_by_key(|k| k.total_ns)
                    .map_or("-", |k| k.name.as_str());
                writeln!(
                    f,
                    "{:>20} {:>12.3} {:>10}  {busiest}",
                    c.id,
                    c.total_ns as f64 / 1e6,
                    count
                )?;
            }
        }
        if self.untracked_connection_records > 0 {
            writeln!(
                f,
                "untracked connection records: {}",
                self.untracked_connection_records
            )?;
        }
        if self.alerts_fired > 0 {
            writeln!(f, "alerts fired: {}", self.alerts_fired)?;
        }
        Ok(())
    }
}
