//! `GET /metrics`: one reading of the session in the Prometheus text format (0.0.4),
//! written by the official `prometheus-client` crate through a [`Collector`] that encodes
//! the already aggregated histograms and counters (`encode_histogram`, `encode_counter`).
//!
//! Families (every latency in seconds, every counter `_total`):
//! - `wstrace_stage_seconds{stage}`: one histogram per timeline stage (named after the
//!   stamp that ends it, `Stamp::name`) and `stage="total"` (NIC → read return in
//!   aggregate mode, NIC → callback return in full mode);
//! - `wstrace_connection_seconds{cookie,local_port,remote_port}`: end to end per
//!   connection, only with `--per-connection` (at most `--max-connections` of them);
//! - `wstrace_callbacks_total`, `wstrace_callback_seconds_total`,
//!   `wstrace_callback_bytes_total` `{kind="receive"}`: the engine's message callbacks;
//! - `wstrace_ring_dropped_events_total`, `wstrace_probe_missed_hits_total`,
//!   `wstrace_bpf_runs_total`, `wstrace_bpf_run_seconds_total` `{probe}`;
//! - `wstrace_channel_records_total`, `wstrace_channel_dropped_records_total`,
//!   `wstrace_channel_lease_lapses_total`, `wstrace_channel_rings`;
//! - aggregate mode: `wstrace_kernel_reads_total`,
//!   `wstrace_kernel_reads_unstaged_total{reason}`, `wstrace_engine_unpaired_callbacks_total`,
//!   `wstrace_engine_sample_shift`, `wstrace_kernel_duty`;
//! - `wstrace_decode_errors_total`, `wstrace_target_processes`, `wstrace_captures`,
//!   `wstrace_capture_bytes`, `wstrace_capture_quota_bytes`, `wstrace_start_time_seconds`,
//!   `wstrace_build_info{version,mode}`.
use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use crate::{
    captures::CaptureUsage,
    stats::{LogHistogram, StageSnapshot},
};

use super::source::SourceStatus;

/// The `le` bounds of every histogram, ns: 1 µs to 1 s in 1-2.5-5 steps.
pub const BUCKET_BOUNDS_NS: [u64; 19] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// The `Content-Type` of the output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Everything one scrape shows.
#[derive(Clone, Debug, Default)]
pub struct MetricsView {
    /// The stage histograms.
    pub snapshot: StageSnapshot,
    /// The source's counters (`None` before the session started).
    pub status: Option<SourceStatus>,
    /// The capture directory's usage.
    pub captures: Option<CaptureUsage>,
    /// Processes of the target now.
    pub target_processes: u64,
    /// When serve started, seconds since the Unix epoch.
    pub start_time_s: f64,
    /// Whether the per-connection histograms are shown.
    pub per_connection: bool,
}

/// The Prometheus text of `view`.
pub fn encode(view: Arc<MetricsView>) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ViewCollector(view)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct ViewCollector(Arc<MetricsView>);

fn ns_to_s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A histogram's classic buckets: per-bucket counts (the encoder accumulates them) under
/// [`BUCKET_BOUNDS_NS`]; values above the last bound are only in `+Inf` (the count).
fn encode_histogram(m: &mut MetricEncoder<'_>, h: &LogHistogram) -> fmt::Result {
    let cumulative = h.cumulative_at(&BUCKET_BOUNDS_NS);
    let mut before = 0;
    let buckets: Vec<(f64, u64)> = BUCKET_BOUNDS_NS
        .iter()
        .zip(cumulative)
        .map(|(&bound, c)| {
            let n = c - before;
            before = c;
            (ns_to_s(bound), n)
        })
        .collect();
    m.encode_histogram::<NoLabelSet>(ns_to_s(h.sum()), h.count(), &buckets, None)
}

fn counter<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, Value)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in values {
        let mut f = m.encode_family(&labels)?;
        match v {
            Value::Int(v) => f.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
            Value::Float(v) => f.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
        }
    }
    Ok(())
}

fn counter1(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: Value) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    match v {
        Value::Int(v) => m.encode_counter::<NoLabelSet, _, u64>(&v, None),
        Value::Float(v) => m.encode_counter::<NoLabelSet, _, u64>(&v, None),
    }
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: Value) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    match v {
        Value::Int(v) => m.encode_gauge(&v),
        Value::Float(v) => m.encode_gauge(&v),
    }
}

enum Value {
    Int(u64),
    Float(f64),
}

impl Collector for ViewCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let v = &*self.0;
        let mode = v.status.as_ref().map_or("starting", |s| s.mode);
        {
            let mut m = e.encode_descriptor(
                "wstrace_build",
                "ws-trace's version and how latencies are computed (aggregate: in the kernel; full: every event joined in user space).",
                None,
                MetricType::Info,
            )?;
            m.encode_info(&[("version", env!("CARGO_PKG_VERSION")), ("mode", mode)])?;
        }
        gauge(
            &mut e,
            "wstrace_start_time_seconds",
            "When serve started, seconds since the Unix epoch.",
            Value::Float(v.start_time_s),
        )?;
        gauge(
            &mut e,
            "wstrace_target_processes",
            "Processes of the target now.",
            Value::Int(v.target_processes),
        )?;
        {
            let mut m = e.encode_descriptor(
                "wstrace_stage_seconds",
                "Time from the previous stamp of a message to the stamp that ends the stage; stage=total: from the NIC to the read's return (aggregate mode) or the callback's (full mode).",
                None,
                MetricType::Histogram,
            )?;
            for s in &v.snapshot.stages {
                let labels = [("stage", s.stamp.name())];
                let mut f = m.encode_family(&labels)?;
                encode_histogram(&mut f, &s.hist)?;
            }
            let labels = [("stage", "total")];
            let mut f = m.encode_family(&labels)?;
            encode_histogram(&mut f, &v.snapshot.total)?;
        }
        if v.per_connection {
            let mut m = e.encode_descriptor(
                "wstrace_connection_seconds",
                "NIC to callback return per connection (socket cookie, local and remote port).",
                None,
                MetricType::Histogram,
            )?;
            for c in &v.snapshot.connections {
                let labels = [
                    ("cookie", c.cookie.to_string()),
                    ("local_port", c.ports.0.to_string()),
                    ("remote_port", c.ports.1.to_string()),
                ];
                let mut f = m.encode_family(&labels)?;
                encode_histogram(&mut f, &c.total)?;
            }
        }
        if let Some(u) = &v.captures {
            gauge(
                &mut e,
                "wstrace_captures",
                "Captures in the capture directory.",
                Value::Int(u.captures),
            )?;
            gauge(
                &mut e,
                "wstrace_capture_bytes",
                "Bytes the captures take.",
                Value::Int(u.bytes),
            )?;
            gauge(
                &mut e,
                "wstrace_capture_quota_bytes",
                "The capture directory's quota.",
                Value::Int(u.quota),
            )?;
        }
        let Some(st) = &v.status else {
            return Ok(());
        };
        if v.per_connection {
            gauge(
                &mut e,
                "wstrace_connections_over_cap",
                "Connections beyond --max-connections, counted only in the stage histograms.",
                Value::Int(st.connections_over_cap),
            )?;
        }
        if let Some(cb) = st.callbacks {
            let receive = || [("kind", "receive")];
            counter(
                &mut e,
                "wstrace_callbacks",
                "Engine callbacks that returned, by kind (receive: one per WebSocket message).",
                [(receive(), Value::Int(cb.calls))],
            )?;
            counter(
                &mut e,
                "wstrace_callback_seconds",
                "Time in engine callbacks (callback to callback_done), by kind.",
                [(receive(), Value::Float(ns_to_s(cb.time_ns)))],
            )?;
            counter(
                &mut e,
                "wstrace_callback_bytes",
                "Payload bytes given to engine callbacks, by kind.",
                [(receive(), Value::Int(cb.bytes))],
            )?;
        }
        let per_probe = |f: fn(&super::source::ProgramStatus) -> Value| {
            st.programs
                .iter()
                .map(move |p| ([("probe", p.probe)], f(p)))
                .collect::<Vec<_>>()
        };
        counter(
            &mut e,
            "wstrace_ring_dropped_events",
            "Events a probe could not put into the full ring.",
            per_probe(|p| Value::Int(p.ring_drops)),
        )?;
        counter(
            &mut e,
            "wstrace_probe_missed_hits",
            "Hook hits the kernel skipped because the program was already running on that CPU.",
            per_probe(|p| Value::Int(p.missed_hits)),
        )?;
        counter(
            &mut e,
            "wstrace_bpf_runs",
            "Runs of each BPF program (0 unless kernel.bpf_stats_enabled).",
            per_probe(|p| Value::Int(p.runs)),
        )?;
        counter(
            &mut e,
            "wstrace_bpf_run_seconds",
            "Time in each BPF program (0 unless kernel.bpf_stats_enabled).",
            per_probe(|p| Value::Float(ns_to_s(p.run_time_ns))),
        )?;
        if let Some(c) = st.channel {
            counter1(
                &mut e,
                "wstrace_channel_records",
                "Engine records read from the stamp channels.",
                Value::Int(c.records),
            )?;
            counter1(
                &mut e,
                "wstrace_channel_dropped_records",
                "Engine records overwritten before the tracer read them.",
                Value::Int(c.drops),
            )?;
            counter1(
                &mut e,
                "wstrace_channel_lease_lapses",
                "Times a stamp channel's lease lapsed (the tracer stalled; those messages were not published).",
                Value::Int(c.lapses),
            )?;
            gauge(
                &mut e,
                "wstrace_channel_rings",
                "Stamp channel rings taken so far.",
                Value::Int(c.rings),
            )?;
        }
        if let Some(a) = st.aggregate {
            counter1(
                &mut e,
                "wstrace_kernel_reads",
                "Reads of traced sockets by traced threads that returned data (aggregate mode).",
                Value::Int(a.reads),
            )?;
            counter(
                &mut e,
                "wstrace_kernel_reads_unstaged",
                "Reads whose kernel stages could not be computed, by reason (aggregate mode).",
                [
                    ([("reason", "no_segment")], Value::Int(a.no_segment)),
                    ([("reason", "no_packet")], Value::Int(a.no_packet)),
                    ([("reason", "inconsistent")], Value::Int(a.inconsistent)),
                ],
            )?;
            counter1(
                &mut e,
                "wstrace_engine_unpaired_callbacks",
                "Engine callback ends whose start the stamp channel lost (aggregate mode).",
                Value::Int(a.engine_unpaired),
            )?;
            gauge(
                &mut e,
                "wstrace_engine_sample_shift",
                "The engine publishes one message in 2^shift per connection; engine stages and callback totals weight each by 2^shift (aggregate mode).",
                Value::Int(u64::from(a.engine_sample_shift)),
            )?;
            gauge(
                &mut e,
                "wstrace_kernel_duty",
                "The kernel's stage probes are attached one second in this many; kernel stage counts weight each read by it (aggregate mode, --kernel-duty).",
                Value::Int(u64::from(a.kernel_duty)),
            )?;
        }
        counter1(
            &mut e,
            "wstrace_decode_errors",
            "Ring records that could not be decoded.",
            Value::Int(st.decode_errors),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::Stamp,
        stats::{ConnectionStats, StageHistogram},
    };

    fn view() -> MetricsView {
        let mut tcp = LogHistogram::new();
        for ns in [500, 3_000, 3_000, 70_000, 2_000_000_000] {
            tcp.record(ns);
        }
        let mut total = LogHistogram::new();
        total.record(40_000);
        MetricsView {
            snapshot: StageSnapshot {
                at_ns: 1,
                stages: vec![StageHistogram {
                    stamp: Stamp::OnCpu,
                    hist: tcp,
                }],
                total: total.clone(),
                connections: vec![ConnectionStats {
                    cookie: 7,
                    ports: (40_000, 9_001),
                    total,
                }],
            },
            status: Some(SourceStatus {
                mode: "full",
                programs: vec![super::super::source::ProgramStatus {
                    probe: "tcp_probe",
                    ring_drops: 3,
                    missed_hits: 1,
                    runs: 10,
                    run_time_ns: 1_500,
                }],
                channel: Some(Default::default()),
                callbacks: Some(super::super::source::CallbackTotals {
                    calls: 2,
                    time_ns: 3_000,
                    bytes: 128,
                }),
                aggregate: Some(crate::aggregate::AggregateCounters {
                    kernel_duty: 20,
                    reads: 9,
                    rows: 7,
                    no_segment: 2,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            captures: Some(CaptureUsage {
                captures: 1,
                bytes: 10,
                quota: 100,
            }),
            target_processes: 1,
            start_time_s: 1.5,
            per_connection: true,
        }
    }

    #[test]
    fn histograms_are_cumulative_in_seconds_with_inf_as_the_count() {
        let text = encode(Arc::new(view())).expect("encode");
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .expect("value")
                .to_string()
        };
        assert_eq!(
            line("wstrace_stage_seconds_bucket{stage=\"on-cpu\",le=\"1e-06\"}"),
            "1"
        );
        assert_eq!(
            line("wstrace_stage_seconds_bucket{stage=\"on-cpu\",le=\"5e-06\"}"),
            "3"
        );
        assert_eq!(
            line("wstrace_stage_seconds_bucket{stage=\"on-cpu\",le=\"1\"}"),
            "4"
        );
        assert_eq!(
            line("wstrace_stage_seconds_bucket{stage=\"on-cpu\",le=\"+Inf\"}"),
            "5"
        );
        assert_eq!(line("wstrace_stage_seconds_count{stage=\"on-cpu\"}"), "5");
        assert_eq!(
            line("wstrace_stage_seconds_sum{stage=\"on-cpu\"}"),
            "2.0000765"
        );
        assert_eq!(line("wstrace_stage_seconds_count{stage=\"total\"}"), "1");
        assert_eq!(
            line("wstrace_bpf_run_seconds_total{probe=\"tcp_probe\"}"),
            "0.0000015"
        );
        assert_eq!(
            line("wstrace_ring_dropped_events_total{probe=\"tcp_probe\"}"),
            "3"
        );
        assert_eq!(line("wstrace_callbacks_total{kind=\"receive\"}"), "2");
        assert_eq!(line("wstrace_kernel_duty "), "20");
        assert_eq!(
            line("wstrace_kernel_reads_unstaged_total{reason=\"no_segment\"}"),
            "2"
        );
        assert!(text.contains(
            "wstrace_connection_seconds_count{cookie=\"7\",local_port=\"40000\",remote_port=\"9001\"} 1"
        ));
        assert!(text.contains("# TYPE wstrace_stage_seconds histogram"));
        let mut without = view();
        without.per_connection = false;
        let text = encode(Arc::new(without)).expect("encode");
        assert!(!text.contains("wstrace_connection_seconds"));
    }

    /// `promtool check metrics` (Prometheus' own linter) accepts the output; required
    /// under `CI=true` (`cargo xtask setup` installs it).
    #[test]
    fn promtool_accepts_the_output() {
        use std::io::Write as _;
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        let Ok(promtool) = which::which("promtool") else {
            assert!(
                !ci,
                "promtool is required under CI (cargo xtask setup installs it)"
            );
            eprintln!("skipped: no promtool");
            return;
        };
        let text = encode(Arc::new(view())).expect("encode");
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
