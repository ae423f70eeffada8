//! Recording a session to a trace file: every ring record as it arrives, the session's
//! description in the header, its final counts in the footer.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use ws_abi::ProbeKind;

use crate::{
    attach::{Plan, Summary},
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

impl Recorder {
    /// Creates `path` with a header describing `plan` and `filters`.
    pub fn create(
        path: &Path,
        plan: &Plan,
        filters: TraceFilters,
    ) -> Result<Recorder, TraceFileError> {
        let mut probes: Vec<ProbeInfo> = plan.kinds.iter().map(|k| ProbeInfo::of(*k)).collect();
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
        for (binary, symbol) in &plan.user_uprobes {
            for kind in [ProbeKind::UserEntry, ProbeKind::UserExit] {
                probes.push(ProbeInfo {
                    target: Some(format!("{}:{symbol}", binary.display())),
                    ..ProbeInfo::of(kind)
                });
            }
        }
        let header = TraceHeader::for_this_host(probes, filters);
        Ok(Recorder {
            writer: TraceWriter::create(path, &header)?,
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

    /// Writes the footer (counts and drops from `summary`) and closes the file.
    pub fn finish(self, summary: &Summary) -> Result<(), TraceFileError> {
        let by_kind = self.writer.events_by_kind();
        let probes = ProbeKind::ALL
            .iter()
            .filter_map(|&k| {
                let row = summary.probe(k);
                let events = by_kind[k as usize];
                (row.is_some() || events > 0).then(|| ProbeCounts {
                    kind: k as u16,
                    name: k.name().to_string(),
                    events,
                    drops: row.map_or(0, |r| r.drops),
                    misses: row.map_or(0, |r| r.misses),
                })
            })
            .collect();
        let footer = TraceFooter {
            probes,
            records: self.writer.records_written(),
            decode_errors: summary.decode_errors,
            end: crate::tracefile::ClockSnapshot::now(),
            extra: serde_json::Map::new(),
        };
        self.writer.finish(&footer)
    }
}
