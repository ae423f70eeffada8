//! Recording a session to a trace file: every ring record as it arrives, the session's
//! description in the header, its final counts in the footer.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use ws_abi::ProbeKind;

use crate::{
    attach::{EngineRecords, Plan, Summary},
    tracefile::{
        ProbeCounts, ProbeInfo, TraceFileError, TraceFilters, TraceFooter, TraceHeader, TraceWriter,
    },
};

/// How often buffered records are written out, so that a killed session loses little.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Writes one session's records to a trace file.
pub struct Recorder {
    writer: TraceWriter,
    last_flush: Instant,
}

/// The header of a trace recorded from `plan` with `filters`: the host, its clock and the
/// probes, each engine binary's callback probes and each `--uprobe` named.
pub fn header(plan: &Plan, filters: TraceFilters) -> TraceHeader {
    let mut probes: Vec<ProbeInfo> = plan.kinds.iter().map(|k| ProbeInfo::of(*k)).collect();
    match plan.engine_records {
        EngineRecords::Uprobes => {
            for binary in &plan.engine_binaries {
                for kind in [ProbeKind::CallbackEntry, ProbeKind::CallbackExit] {
                    probes.push(ProbeInfo {
                        target: Some(format!(
                            "{}:{}",
                            binary.display(),
                            ws_abi::ENGINE_PROBE_SYMBOL
                        )),
                        ..ProbeInfo::of(kind)
                    });
                }
            }
        }
        EngineRecords::Channel => {
            for kind in [ProbeKind::CallbackEntry, ProbeKind::CallbackExit] {
                probes.push(ProbeInfo {
                    target: Some(format!(
                        "stamp channel (memfd {}*)",
                        ws_abi::channel::CHANNEL_NAME_PREFIX
                    )),
                    ..ProbeInfo::of(kind)
                });
            }
        }
    }
    for (binary, symbol) in &plan.user_uprobes {
        for kind in [ProbeKind::UserEntry, ProbeKind::UserExit] {
            probes.push(ProbeInfo {
                target: Some(format!("{}:{symbol}", binary.display())),
                ..ProbeInfo::of(kind)
            });
        }
    }
    TraceHeader::for_this_host(probes, filters)
}

impl Recorder {
    /// Creates `path` with a header describing `plan` and `filters`.
    pub fn create(
        path: &Path,
        plan: &Plan,
        filters: TraceFilters,
    ) -> Result<Recorder, TraceFileError> {
        Ok(Recorder {
            writer: TraceWriter::create(path, &header(plan, filters))?,
            last_flush: Instant::now(),
        })
    }

    /// Appends one raw ring record.
    pub fn record(&mut self, raw: &[u8]) -> Result<(), TraceFileError> {
        self.writer.write_record(raw)?;
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.writer.flush()?;
            self.last_flush = Instant::now();
        }
        Ok(())
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.writer.records_written()
    }

    /// Records in the blocks completely written to the file so far (what a reader finds
    /// if recording stops now without [`finish`](Self::finish)).
    pub fn records_in_file(&self) -> u64 {
        self.writer.records_in_file()
    }

    /// Writes the footer (counts and drops from `summary`) and closes the file.
    pub fn finish(self, summary: &Summary) -> Result<(), TraceFileError> {
        let by_kind = self.writer.events_by_kind();
        let probes = ProbeKind::ALL
            .iter()
            .filter_map(|&k| {
                let row = summary.probe(k);
                let events = by_kind[k as usize];
                let channel_drops = summary
                    .channel
                    .filter(|_| k == ProbeKind::CallbackEntry)
                    .map_or(0, |c| c.drops);
                (row.is_some() || events > 0 || channel_drops > 0).then(|| ProbeCounts {
                    kind: k as u16,
                    name: k.name().to_string(),
                    events,
                    // The stamp channel's losses are messages: the entry row's.
                    drops: row.map_or(0, |r| r.drops) + channel_drops,
                    misses: row.map_or(0, |r| r.misses),
                })
            })
            .collect();
        let footer = TraceFooter {
            probes,
            records: self.writer.records_written(),
            decode_errors: summary.decode_errors,
            end: crate::tracefile::ClockSnapshot::now(),
            extra: summary
                .channel
                .and_then(|c| serde_json::to_value(c).ok())
                .map(|c| serde_json::Map::from_iter([("engine_channel".to_string(), c)]))
                .unwrap_or_default(),
        };
        self.writer.finish(&footer)
    }
}
