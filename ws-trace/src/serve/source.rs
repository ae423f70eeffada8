//! Where `serve` gets its readings: a [`SnapshotSource`] runs the tracing session and
//! answers with a [`StageSnapshot`] and a [`SourceStatus`] whenever asked.
use std::{collections::BTreeSet, time::Duration};

use crate::{
    aggregate::AggregateCounters,
    attach::AttachError,
    captures::{CaptureError, CaptureInfo, Captures},
    channel::ChannelStats,
    flight::FlightRecorder,
    probes::{ProbeError, Probes},
    progstats::ProgramStats,
    stats::StageSnapshot,
    tracefile::TraceHeader,
};

/// Failures of a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The attach session failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// Reading or updating the probes' maps failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

/// A loaded program's kernel counters, with the ring drops of its events.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProgramStatus {
    /// The probe's name (`ProbeKind::name`).
    pub probe: &'static str,
    /// Events lost because the ring was full.
    pub ring_drops: u64,
    /// Hook hits the kernel skipped (the program was already running on that CPU).
    pub missed_hits: u64,
    /// Runs (0 unless BPF run-time stats are on).
    pub runs: u64,
    /// Time in the program, ns (0 unless BPF run-time stats are on).
    pub run_time_ns: u64,
}

impl ProgramStatus {
    /// One entry per program `probes` attached: its ring drops and kernel counters.
    pub fn of_all(probes: &Probes) -> Result<Vec<ProgramStatus>, ProbeError> {
        let drops = probes.drops()?;
        let status = |probe: &'static str, ring_drops: u64, stats: ProgramStats| ProgramStatus {
            probe,
            ring_drops,
            missed_hits: stats.recursion_misses,
            runs: stats.runs,
            run_time_ns: stats.run_time.as_nanos() as u64,
        };
        let mut all: Vec<ProgramStatus> = probes
            .attached()
            .iter()
            .map(|&k| {
                status(
                    k.name(),
                    drops[k as usize],
                    probes.run_stats(k).unwrap_or_default(),
                )
            })
            .collect();
        // The helpers write no records: nothing to drop.
        all.extend(
            probes
                .helper_stats()
                .into_iter()
                .map(|(name, stats)| status(name, 0, stats)),
        );
        Ok(all)
    }
}

/// The engine's receive callbacks as the tracer sees them through its stamp channel (or
/// callback uprobes): one per WebSocket message. The engine's in-process profiler
/// (`ws-profiler`) keeps other kinds (open, close, writable, timers...) in the traced
/// process's own memory; nothing publishes those to a tracer, so they are not here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallbackTotals {
    /// Callbacks that returned.
    pub calls: u64,
    /// Time in them (callback → callback_done), ns.
    pub time_ns: u64,
    /// Payload bytes they were given.
    pub bytes: u64,
}

/// Counters and state of a source, cumulative since it started.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SourceStatus {
    /// How the latencies are computed (`aggregate`: in the kernel and from the stamp
    /// channels; `full`: every event through the ring, joined in user space).
    pub mode: &'static str,
    /// One entry per attached program.
    pub programs: Vec<ProgramStatus>,
    /// The engine's stamp channels (rings, records, drops, lapses), when used.
    pub channel: Option<ChannelStats>,
    /// The engine's receive callbacks.
    pub callbacks: Option<CallbackTotals>,
    /// Ring records that could not be decoded.
    pub decode_errors: u64,
    /// Connections beyond `--max-connections`, not given their own series.
    pub connections_over_cap: u64,
    /// Processes in the filter.
    pub tgids: BTreeSet<u32>,
    /// Things the user should know.
    pub notes: Vec<String>,
    /// Aggregate mode's counters (reads, rows, why reads were not counted, unpaired
    /// engine records).
    pub aggregate: Option<AggregateCounters>,
}

impl SourceStatus {
    /// Ring drops over every program.
    pub fn ring_drops(&self) -> u64 {
        self.programs.iter().map(|p| p.ring_drops).sum()
    }

    /// Missed hook hits over every program.
    pub fn missed_hits(&self) -> u64 {
        self.programs.iter().map(|p| p.missed_hits).sum()
    }
}

/// A running tracing session that `serve` reads.
pub trait SnapshotSource {
    /// Does the session's work (drain rings, aggregate) for up to `timeout`.
    fn pump(&mut self, timeout: Duration) -> Result<(), SourceError>;

    /// Adds a process to the trace (a new process of a `--comm` target).
    fn add_process(&mut self, tgid: u32) -> Result<(), SourceError>;

    /// Every stage histogram, cumulative since the source started.
    fn snapshot(&mut self) -> Result<StageSnapshot, SourceError>;

    /// Counters and state.
    fn status(&mut self) -> Result<SourceStatus, SourceError>;

    /// The records of the last seconds the session holds (what captures are made of).
    fn recorder(&self) -> &FlightRecorder;

    /// The header of a capture of this session (its plan and filters).
    fn capture_header(&self) -> TraceHeader;

    /// Keys of the session's own for a capture's footer (e.g. ring drops so far).
    fn capture_extra(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
}

/// Writes the records `source` holds of `[from_ns, to_ns]` to `captures` as a trace file,
/// for `reason` (part of the capture's ID): refused when empty or over the quota.
pub fn capture(
    source: &dyn SnapshotSource,
    captures: &Captures,
    reason: &str,
    (from_ns, to_ns): (u64, u64),
) -> Result<CaptureInfo, CaptureError> {
    let recorder = source.recorder();
    let estimated = recorder.estimate(from_ns, to_ns);
    if estimated == 0 {
        return Err(CaptureError::Empty {
            window_s: to_ns.saturating_sub(from_ns) as f64 / 1e9,
        });
    }
    let header = source.capture_header();
    let extra = source.capture_extra();
    captures.store(reason, estimated + crate::captures::FILE_OVERHEAD, |path| {
        recorder
            .write(path, &header, (from_ns, to_ns), reason, extra)
            .map(|_| ())
            .map_err(CaptureError::from)
    })
}
