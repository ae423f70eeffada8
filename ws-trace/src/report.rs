//! `ws-trace report`: a recorded trace read back, its messages joined into rows, and the
//! stage table (p50/p90/p99/p99.9/max and share of the total), overall and per connection,
//! with the slowest messages in full.
use std::{collections::BTreeMap, fmt, path::Path};

use ws_abi::{PROBE_COUNT, ProbeKind};

use crate::{
    correlate::{Correlation, MessageRow, RowKind, STAMP_COUNT, Stamp, correlate},
    decode::{Event, decode},
    tracefile::{Integrity, TraceFileError, TraceHeader, TraceReader},
};

/// A trace file loaded into memory.
pub struct LoadedTrace {
    /// Its header.
    pub header: TraceHeader,
    /// Every decodable event, in file order.
    pub events: Vec<Event>,
    /// Records that did not decode.
    pub undecodable: u64,
    /// Per probe: events in the file, and drops and misses the footer reports.
    pub counts: [ProbeTally; PROBE_COUNT],
    /// The file was cut short (no footer): the session died before finishing it.
    pub truncated: bool,
    /// What the reader found damaged or missing, and skipped.
    pub integrity: Integrity,
}

impl LoadedTrace {
    /// What a reader of this trace should be told about its damage and truncation, one
    /// line each (empty for an intact, complete file).
    pub fn warnings(&self) -> Vec<String> {
        integrity_notes(&self.integrity, self.truncated)
    }
}

/// The `corrupt:` and truncation lines of a trace.
fn integrity_notes(integrity: &Integrity, truncated: bool) -> Vec<String> {
    let mut notes = Vec::new();
    if !integrity.is_intact() {
        notes.push(format!("corrupt: {integrity}"));
    }
    if truncated {
        notes.push(
            if integrity.records_lost.is_none() && !integrity.is_intact() {
                "note: no footer: the damage runs to the end of the file".to_string()
            } else {
                "note: the file was cut short (the session died): all whole records are used"
                    .to_string()
            },
        );
    }
    notes
}

/// One probe's events and losses in a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProbeTally {
    /// Events in the file.
    pub events: u64,
    /// Events lost to a full ring.
    pub drops: u64,
    /// Hook hits the kernel skipped (the probe was already running on that CPU).
    pub misses: u64,
}

impl ProbeTally {
    fn is_empty(&self) -> bool {
        *self == ProbeTally::default()
    }
}

/// Reads and decodes a whole trace file. A damaged file is read (what was skipped is in
/// [`LoadedTrace::integrity`]), unless not one record of it could be:
/// [`TraceFileError::Unreadable`].
pub fn load(path: &Path) -> Result<LoadedTrace, TraceFileError> {
    let reader = TraceReader::open(path)?;
    let integrity = reader.integrity().clone();
    if !integrity.is_intact() && reader.records().next().is_none() {
        return Err(TraceFileError::Unreadable {
            path: path.to_path_buf(),
            integrity,
        });
    }
    let mut events = Vec::with_capacity(reader.record_count() as usize);
    let mut undecodable = 0;
    let mut counts = [ProbeTally::default(); PROBE_COUNT];
    for raw in reader.records() {
        match decode(raw) {
            Ok(e) => {
                counts[e.kind() as usize].events += 1;
                events.push(e);
            }
            Err(_) => undecodable += 1,
        }
    }
    if let Some(footer) = reader.footer() {
        for p in &footer.probes {
            if let Some(slot) = counts.get_mut(p.kind as usize) {
                slot.drops = p.drops;
                slot.misses = p.misses;
            }
        }
    }
    Ok(LoadedTrace {
        header: reader.header().clone(),
        events,
        undecodable,
        counts,
        truncated: reader.truncated(),
        integrity,
    })
}

/// Distribution of one stage.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StageStats {
    /// The stamp ending the stage.
    pub stage: &'static str,
    /// What it measures.
    pub label: &'static str,
    /// Messages that went through it.
    pub count: u64,
    /// Percentiles and max, ns.
    pub p50_ns: u64,
    /// 90th percentile, ns.
    pub p90_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Largest, ns.
    pub max_ns: u64,
    /// Share of the summed NIC→callback_done time spent in this stage.
    pub share: f64,
}

/// A stage table over a set of rows.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StageTable {
    /// Rows it covers.
    pub messages: u64,
    /// One entry per stage seen, in pipeline order; the last is the whole row.
    pub stages: Vec<StageStats>,
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn stats(stage: &'static str, label: &'static str, mut v: Vec<u64>, total: u128) -> StageStats {
    v.sort_unstable();
    let sum: u128 = v.iter().map(|&x| u128::from(x)).sum();
    StageStats {
        stage,
        label,
        count: v.len() as u64,
        p50_ns: percentile(&v, 0.50),
        p90_ns: percentile(&v, 0.90),
        p99_ns: percentile(&v, 0.99),
        p999_ns: percentile(&v, 0.999),
        max_ns: v.last().copied().unwrap_or(0),
        share: if total == 0 {
            0.0
        } else {
            sum as f64 / total as f64
        },
    }
}

impl StageTable {
    /// The table for `rows`.
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a MessageRow>) -> StageTable {
        let mut per: Vec<Vec<u64>> = vec![Vec::new(); STAMP_COUNT];
        let mut totals = Vec::new();
        let mut reads_only = true;
        for r in rows {
            reads_only &= r.kind == RowKind::Read;
            for (s, d) in r.stages() {
                per[s as usize].push(d);
            }
            if let Some(t) = r.total_ns() {
                totals.push(t);
            }
        }
        let total: u128 = totals.iter().map(|&t| u128::from(t)).sum();
        let mut stages: Vec<StageStats> = Stamp::ALL
            .iter()
            .zip(per)
            .filter(|(_, v)| !v.is_empty())
            .map(|(s, v)| stats(s.name(), s.stage(), v, total))
            .collect();
        let messages = totals.len() as u64;
        let label = if reads_only {
            "nic → read return (→ function return)"
        } else {
            "nic → callback_done"
        };
        stages.push(stats("total", label, totals, total));
        StageTable { messages, stages }
    }
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

impl fmt::Display for StageTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<40} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
            "stage (µs)", "count", "p50", "p90", "p99", "p99.9", "max", "share"
        )?;
        for s in &self.stages {
            writeln!(
                f,
                "{:<40} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5.1}%",
                s.label,
                s.count,
                us(s.p50_ns),
                us(s.p90_ns),
                us(s.p99_ns),
                us(s.p999_ns),
                us(s.max_ns),
                s.share * 100.0
            )?;
        }
        Ok(())
    }
}

/// The whole report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Kernel release, host, start time of the trace.
    pub kernel: String,
    /// Host name.
    pub host: String,
    /// Events and losses per probe that saw any.
    pub probes: Vec<ProbeRow>,
    /// The file was cut short.
    pub truncated: bool,
    /// What the reader found damaged or missing, and skipped.
    pub integrity: Integrity,
    /// Records that did not decode.
    pub undecodable: u64,
    /// Messages seen and joined, and why the rest were not.
    pub correlation: CorrelationSummary,
    /// TLS paths of the joined messages, with counts.
    pub tls_paths: BTreeMap<String, u64>,
    /// The overall stage table.
    pub overall: StageTable,
    /// One table per connection (by socket cookie).
    pub per_connection: BTreeMap<u64, StageTable>,
    /// The slowest messages, in full.
    pub slowest: Vec<MessageRow>,
    /// Reads of sockets without engine messages (clients not built on ws-engine).
    pub reads: ReadsSummary,
    /// Latency of each `--uprobe` function (like funclatency).
    pub functions: Vec<FunctionStats>,
}

/// The per-read rows of a trace.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReadsSummary {
    /// Reads seen on sockets the engine reported no message on.
    pub total: u64,
    /// Reads joined NIC → read return.
    pub joined: u64,
    /// Why the others were not.
    pub unjoined: crate::correlate::Unjoined,
    /// Their stage table.
    pub stages: StageTable,
}

/// Latency of one `--uprobe` function, entry to return.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FunctionStats {
    /// `BINARY:SYMBOL` as given.
    pub symbol: String,
    /// Completed calls.
    pub count: u64,
    /// Median duration, ns.
    pub p50_ns: u64,
    /// 90th percentile, ns.
    pub p90_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// Longest, ns.
    pub max_ns: u64,
}

/// Per `--uprobe` (by its index), the latency of its calls; named from the trace
/// header's uprobe targets.
fn function_stats(trace: &LoadedTrace, c: &Correlation) -> Vec<FunctionStats> {
    let names: Vec<String> = trace
        .header
        .probes
        .iter()
        .filter(|p| p.kind == ProbeKind::UserEntry as u16)
        .map(|p| p.target.clone().unwrap_or_else(|| "?".into()))
        .collect();
    let mut by: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for call in &c.calls {
        by.entry(call.uprobe)
            .or_default()
            .push(call.exit_ns.saturating_sub(call.entry_ns));
    }
    by.into_iter()
        .map(|(i, mut v)| {
            v.sort_unstable();
            FunctionStats {
                symbol: names
                    .get(i as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("uprobe #{i}")),
                count: v.len() as u64,
                p50_ns: percentile(&v, 0.50),
                p90_ns: percentile(&v, 0.90),
                p99_ns: percentile(&v, 0.99),
                max_ns: v.last().copied().unwrap_or(0),
            }
        })
        .collect()
}

/// One probe's line in the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeRow {
    /// The probe's name.
    pub probe: String,
    /// Its events and losses.
    #[serde(flatten)]
    pub tally: ProbeTally,
}

/// Counts of the correlation step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CorrelationSummary {
    /// Callback entries seen.
    pub messages: u64,
    /// Rows joined NIC to callback.
    pub joined: u64,
    /// Why the others were not.
    pub unjoined: crate::correlate::Unjoined,
    /// Median (uprobe kernel stamp − engine callback stamp), ns: how the engine's TSC
    /// clock and the kernel's agree, plus the uprobe's entry cost.
    pub clock_check_ns: Option<i64>,
    /// The engine's own measure of its TSC → CLOCK_MONOTONIC calibration error, ns.
    pub engine_clock_error_ns: Option<u32>,
}

impl Report {
    /// Builds the report of a loaded trace.
    pub fn build(trace: &LoadedTrace, slowest: usize) -> Report {
        Report::with_correlation(trace, &correlate(&trace.events), slowest)
    }

    /// Builds the report of a loaded trace whose events were already correlated.
    pub fn with_correlation(trace: &LoadedTrace, c: &Correlation, slowest: usize) -> Report {
        let mut per: BTreeMap<u64, Vec<&MessageRow>> = BTreeMap::new();
        let mut tls_paths = BTreeMap::new();
        for r in c.messages() {
            per.entry(r.cookie).or_default().push(r);
            *tls_paths.entry(r.tls.to_string()).or_insert(0) += 1;
        }
        let mut by_total: Vec<&MessageRow> = c.messages().collect();
        by_total.sort_by_key(|r| std::cmp::Reverse(r.total_ns().unwrap_or(0)));
        Report {
            kernel: trace.header.kernel_release.clone(),
            host: trace.header.hostname.clone(),
            probes: ProbeKind::ALL
                .iter()
                .filter(|k| !trace.counts[**k as usize].is_empty())
                .map(|k| ProbeRow {
                    probe: k.name().to_string(),
                    tally: trace.counts[*k as usize],
                })
                .collect(),
            truncated: trace.truncated,
            integrity: trace.integrity.clone(),
            undecodable: trace.undecodable,
            correlation: CorrelationSummary {
                messages: c.messages,
                joined: c.messages().count() as u64,
                unjoined: c.unjoined.clone(),
                clock_check_ns: c.clock_check_ns,
                engine_clock_error_ns: c.engine_clock_error_ns,
            },
            tls_paths,
            overall: StageTable::of(c.messages()),
            per_connection: per
                .into_iter()
                .map(|(cookie, rows)| (cookie, StageTable::of(rows)))
                .collect(),
            slowest: by_total.into_iter().take(slowest).cloned().collect(),
            reads: ReadsSummary {
                total: c.reads,
                joined: c.read_rows().count() as u64,
                unjoined: c.reads_unjoined.clone(),
                stages: StageTable::of(c.read_rows()),
            },
            functions: function_stats(trace, c),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "trace: kernel {} on {}", self.kernel, self.host)?;
        for note in integrity_notes(&self.integrity, self.truncated) {
            writeln!(f, "{note}")?;
        }
        let events: Vec<String> = self
            .probes
            .iter()
            .map(|p| {
                let t = &p.tally;
                let mut s = format!("{} {}", p.probe, t.events);
                match (t.drops, t.misses) {
                    (0, 0) => {}
                    (d, 0) => s += &format!(" ({d} DROPPED)"),
                    (0, m) => s += &format!(" ({m} MISSED)"),
                    (d, m) => s += &format!(" ({d} DROPPED, {m} MISSED)"),
                }
                s
            })
            .collect();
        writeln!(f, "events: {}", events.join(", "))?;
        let c = &self.correlation;
        let u = &c.unjoined;
        // A trace of a client not built on ws-engine has reads, no messages.
        let engine = c.messages > 0 || self.reads.total == 0;
        if engine {
            writeln!(
                f,
                "messages: {} seen, {} joined NIC→callback; not joined: {} (no read {}, no segment {}, no nic {}, no softirq {}, no callback exit {}, inconsistent {})",
                c.messages,
                c.joined,
                u.total(),
                u.no_read,
                u.no_segment,
                u.no_nic,
                u.no_softirq,
                u.no_exit,
                u.inconsistent
            )?;
        }
        let tls: Vec<String> = self
            .tls_paths
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        if engine {
            writeln!(
                f,
                "tls path: {}",
                if tls.is_empty() {
                    "-".into()
                } else {
                    tls.join(", ")
                }
            )?;
        }
        if let Some(ns) = c.engine_clock_error_ns {
            writeln!(
                f,
                "engine clock: TSC → CLOCK_MONOTONIC, calibration error ±{ns} ns"
            )?;
        }
        if let Some(ns) = c.clock_check_ns {
            writeln!(
                f,
                "clock check: uprobe stamp − engine callback stamp, median {ns} ns"
            )?;
        }
        let r = &self.reads;
        if r.total > 0 {
            let u = &r.unjoined;
            writeln!(
                f,
                "reads: {} seen on sockets without engine messages, {} joined NIC→read return; not joined: {} (no segment {}, no nic {}, no softirq {}, inconsistent {})",
                r.total,
                r.joined,
                u.total(),
                u.no_segment,
                u.no_nic,
                u.no_softirq,
                u.inconsistent
            )?;
        }
        if self.overall.messages > 0 || r.total == 0 {
            writeln!(f, "\nall connections ({} messages)", self.overall.messages)?;
            write!(f, "{}", self.overall)?;
        }
        if r.joined > 0 {
            writeln!(f, "\nreads ({} joined)", r.joined)?;
            write!(f, "{}", r.stages)?;
        }
        if !self.functions.is_empty() {
            writeln!(
                f,
                "\nfunctions (µs, entry → return)\n{:<40} {:>8} {:>9} {:>9} {:>9} {:>9}",
                "function", "count", "p50", "p90", "p99", "max"
            )?;
            for s in &self.functions {
                writeln!(
                    f,
                    "{:<40} {:>8} {:>9} {:>9} {:>9} {:>9}",
                    s.symbol,
                    s.count,
                    us(s.p50_ns),
                    us(s.p90_ns),
                    us(s.p99_ns),
                    us(s.max_ns)
                )?;
            }
        }
        if self.per_connection.len() > 1 {
            for (cookie, table) in &self.per_connection {
                writeln!(
                    f,
                    "\nconnection cookie {cookie} ({} messages)",
                    table.messages
                )?;
                write!(f, "{table}")?;
            }
        }
        if !self.slowest.is_empty() {
            writeln!(f, "\nslowest messages (µs from nic):")?;
            for r in &self.slowest {
                let nic = r.at(Stamp::Nic).unwrap_or(0);
                let cols: Vec<String> = Stamp::ALL
                    .iter()
                    .filter_map(|s| {
                        r.at(*s)
                            .map(|t| format!("{} {}", s.name(), us(t.saturating_sub(nic))))
                    })
                    .collect();
                writeln!(
                    f,
                    "  conn {} msg {} ({} B, cpu {}→{}): {}",
                    r.cookie,
                    r.msg_seq,
                    r.len,
                    r.rx_cpu,
                    r.app_cpu,
                    cols.join(" | ")
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&v, 1.0), 1000);
        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn damage_and_truncation_are_told_apart() {
        let mut trace = LoadedTrace {
            header: crate::tracefile::TraceHeader::default(),
            events: Vec::new(),
            undecodable: 0,
            counts: [ProbeTally::default(); PROBE_COUNT],
            truncated: false,
            integrity: Integrity::default(),
        };
        assert!(trace.warnings().is_empty());
        let text = Report::build(&trace, 0).to_string();
        assert!(
            !text.contains("corrupt") && !text.contains("note:"),
            "{text}"
        );
        trace.integrity = Integrity {
            corrupt_blocks: 1,
            corrupt_bytes: 65_576,
            records_lost: Some(812),
            ..Integrity::default()
        };
        let text = Report::build(&trace, 0).to_string();
        assert!(
            text.contains("corrupt: 1 block (64.0 KiB) skipped, 812 records lost"),
            "{text}"
        );
        assert!(!text.contains("cut short"), "{text}");
        trace.truncated = true;
        trace.integrity.truncated = true;
        trace.integrity.corrupt_blocks = 3;
        trace.integrity.records_lost = None;
        let w = trace.warnings();
        assert_eq!(
            w,
            [
                "corrupt: 3 blocks (64.0 KiB) skipped, an unknown number of records lost",
                "note: no footer: the damage runs to the end of the file"
            ]
        );
        let json = serde_json::to_value(Report::build(&trace, 0)).unwrap();
        assert_eq!(json["integrity"]["corrupt_blocks"], 3);
        assert_eq!(json["integrity"]["records_lost"], serde_json::Value::Null);
        assert_eq!(json["integrity"]["truncated"], true);
        trace.integrity = Integrity {
            truncated: true,
            ..Integrity::default()
        };
        assert_eq!(
            trace.warnings(),
            ["note: the file was cut short (the session died): all whole records are used"]
        );
    }

    #[test]
    fn losses_are_named_per_probe() {
        let mut counts = [ProbeTally::default(); PROBE_COUNT];
        let tally = |events, drops, misses| ProbeTally {
            events,
            drops,
            misses,
        };
        counts[ProbeKind::NetifRx as usize] = tally(10, 0, 0);
        counts[ProbeKind::TcpProbe as usize] = tally(8, 2, 0);
        counts[ProbeKind::SoftirqExit as usize] = tally(5, 0, 3);
        counts[ProbeKind::SockRecv as usize] = tally(4, 1, 1);
        let trace = LoadedTrace {
            header: crate::tracefile::TraceHeader::default(),
            events: Vec::new(),
            undecodable: 0,
            counts,
            truncated: false,
            integrity: Integrity::default(),
        };
        let report = Report::build(&trace, 0);
        assert_eq!(report.probes.len(), 4);
        let text = report.to_string();
        for line in [
            "netif_rx 10,",
            "tcp_probe 8 (2 DROPPED)",
            "softirq_exit 5 (3 MISSED)",
            "sock_recv 4 (1 DROPPED, 1 MISSED)",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }

    #[test]
    fn shares_add_up_to_the_total() {
        let row = |base: u64, cb: u64| {
            MessageRow::with_stamps(&[
                (Stamp::Nic, base),
                (Stamp::Tcp, base + 10),
                (Stamp::Callback, base + 30),
                (Stamp::CallbackDone, base + 30 + cb),
            ])
        };
        let rows = [row(0, 70), row(1000, 170)];
        let t = StageTable::of(&rows);
        assert_eq!(t.messages, 2);
        let stage_shares: f64 = t
            .stages
            .iter()
            .filter(|s| s.stage != "total")
            .map(|s| s.share)
            .sum();
        assert!((stage_shares - 1.0).abs() < 1e-9, "{stage_shares}");
        let cb = t
            .stages
            .iter()
            .find(|s| s.stage == "callback_done")
            .expect("callback row");
        assert_eq!((cb.p50_ns, cb.max_ns, cb.count), (70, 170, 2));
        let total = t.stages.last().expect("total");
        assert_eq!((total.stage, total.max_ns), ("total", 200));
    }
}
