//! serve's `--mode full` source: an attach session (every event through the ring and the
//! stamp channel) with the last seconds of events kept, and each settled interval joined
//! ([`correlate`]) into the stage histograms. It costs what `attach` costs, plus one join
//! of ~1.5 s of events per second; what it gives over aggregate mode: per-connection
//! histograms, the full row's stages (the engine's `recv_start`), and captures of every
//! event.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use ws_abi::{PROBE_COUNT, ProbeKind};

use crate::{
    attach::{Plan, Session},
    correlate::{self, STAMP_COUNT, Stamp},
    decode::{Event, decode},
    flight::FlightRecorder,
    record,
    stats::{ConnectionStats, LogHistogram, StageHistogram, StageSnapshot},
    tracefile::TraceFilters,
    tracefile::TraceHeader,
};

use super::CAPTURE_WINDOW;
use super::source::{CallbackTotals, ProgramStatus, SnapshotSource, SourceError, SourceStatus};

/// Memory the kept events may take, whatever the window.
const WINDOW_BYTES: usize = 256 << 20;
/// A message is joined once its last stamp is this old (its events have all arrived).
const SETTLE_NS: u64 = 500_000_000;
/// Events this far before the interval being joined take part in its join (a message's
/// NIC stamp comes before its callback).
const LOOKBACK_NS: u64 = 1_000_000_000;

/// An attach session whose joined rows fill per-stage histograms.
pub struct FullModeSource {
    session: Session,
    plan: Plan,
    filters: TraceFilters,
    /// The raw records of the last [`CAPTURE_WINDOW`] (the flight recorder's bounded store),
    /// decoded again for each join.
    window: FlightRecorder,
    stages: [Option<LogHistogram>; STAMP_COUNT],
    total: LogHistogram,
    max_connections: usize,
    connections: BTreeMap<u64, ConnectionStats>,
    over_cap: BTreeSet<u64>,
    ports: BTreeMap<u64, (u16, u16)>,
    /// Rows whose last stamp is before this were counted.
    joined_until: u64,
    callbacks: CallbackTotals,
}

fn monotonic_ns() -> u64 {
    ws_engine::clock::Clock::monotonic_now_ns()
}

impl FullModeSource {
    /// Starts the session of `plan`. `filters` describe it in captures' headers;
    /// `max_connections` connections get their own histogram (0: none).
    pub fn start(
        plan: Plan,
        filters: TraceFilters,
        max_connections: usize,
    ) -> Result<FullModeSource, SourceError> {
        let session = Session::start(&plan)?;
        Ok(FullModeSource {
            session,
            plan,
            filters,
            window: FlightRecorder::new(CAPTURE_WINDOW, WINDOW_BYTES),
            stages: [const { None }; STAMP_COUNT],
            total: LogHistogram::new(),
            max_connections,
            connections: BTreeMap::new(),
            over_cap: BTreeSet::new(),
            ports: BTreeMap::new(),
            joined_until: monotonic_ns(),
            callbacks: CallbackTotals::default(),
        })
    }

    /// Joins the rows that settled since the last join into the histograms.
    fn join_settled(&mut self) {
        let settled = monotonic_ns().saturating_sub(SETTLE_NS);
        if settled <= self.joined_until {
            return;
        }
        let from = self.joined_until.saturating_sub(LOOKBACK_NS);
        // Each record was decoded when it arrived: decoding it again cannot fail.
        let events: Vec<Event> = self
            .window
            .records(from, u64::MAX)
            .filter_map(|(_, raw)| decode(raw).ok())
            .collect();
        let c = correlate::correlate(&events);
        for row in &c.rows {
            let Some(end) = row.stamps.iter().flatten().max().copied() else {
                continue;
            };
            if end < self.joined_until || end >= settled {
                continue;
            }
            for (stamp, ns) in row.stages() {
                self.stages[stamp as usize]
                    .get_or_insert_with(LogHistogram::new)
                    .record(ns);
            }
            let Some(total) = row.total_ns() else {
                continue;
            };
            self.total.record(total);
            if self.max_connections == 0 {
                continue;
            }
            if let Some(conn) = self.connections.get_mut(&row.cookie) {
                conn.total.record(total);
            } else if self.connections.len() < self.max_connections {
                let mut hist = LogHistogram::new();
                hist.record(total);
                self.connections.insert(
                    row.cookie,
                    ConnectionStats {
                        cookie: row.cookie,
                        ports: self.ports.get(&row.cookie).copied().unwrap_or_default(),
                        total: hist,
                    },
                );
            } else {
                self.over_cap.insert(row.cookie);
            }
        }
        self.joined_until = settled;
    }
}

/// Counts what an arriving record says (callback calls, time and bytes; a socket's
/// ports) and keeps it in the window.
fn keep(
    window: &mut FlightRecorder,
    callbacks: &mut CallbackTotals,
    ports: &mut BTreeMap<u64, (u16, u16)>,
    raw: &[u8],
    e: &Event,
) {
    match e {
        Event::Callback(c) => callbacks.bytes += c.probe.len,
        Event::CallbackDone(d) => {
            callbacks.calls += 1;
            callbacks.time_ns += d.done_ns.saturating_sub(d.start_ns);
        }
        Event::Recv(r) if r.cookie != 0 => {
            ports.entry(r.cookie).or_insert((r.lport, r.rport));
        }
        _ => {}
    }
    window.push(e.header().ts_ns, raw);
}

impl SnapshotSource for FullModeSource {
    fn pump(&mut self, timeout: Duration) -> Result<(), SourceError> {
        let FullModeSource {
            session,
            window,
            callbacks,
            ports,
            ..
        } = self;
        session.pump(timeout, |raw, e| keep(window, callbacks, ports, raw, e))?;
        self.window.expire(monotonic_ns());
        Ok(())
    }

    fn add_process(&mut self, tgid: u32) -> Result<(), SourceError> {
        self.session.probes_mut().add_tgid(tgid)?;
        self.session.scan_channels_now()?;
        Ok(())
    }

    fn snapshot(&mut self) -> Result<StageSnapshot, SourceError> {
        self.join_settled();
        Ok(StageSnapshot {
            at_ns: monotonic_ns(),
            stages: Stamp::ALL
                .iter()
                .filter_map(|&s| {
                    self.stages[s as usize].as_ref().map(|h| StageHistogram {
                        stamp: s,
                        hist: h.clone(),
                    })
                })
                .collect(),
            total: self.total.clone(),
            connections: self.connections.values().cloned().collect(),
        })
    }

    fn status(&mut self) -> Result<SourceStatus, SourceError> {
        let summary = self.session.summary()?;
        let probes = self.session.probes();
        let programs = ProgramStatus::of_all(probes)?;
        let mut notes = summary.notes;
        if self.window.evicted() > 0 {
            notes.push(format!(
                "{} events left the {} MiB window early (more than it holds in {} s): the messages they belonged to may not have been joined",
                self.window.evicted(),
                WINDOW_BYTES >> 20,
                CAPTURE_WINDOW.as_secs()
            ));
        }
        Ok(SourceStatus {
            mode: "full",
            programs,
            channel: summary.channel,
            callbacks: Some(self.callbacks),
            decode_errors: summary.decode_errors,
            connections_over_cap: self.over_cap.len() as u64,
            tgids: self.session.probes().tgids()?,
            notes,
            aggregate: None,
        })
    }

    fn recorder(&self) -> &FlightRecorder {
        &self.window
    }

    fn capture_header(&self) -> TraceHeader {
        record::header(&self.plan, self.filters.clone())
    }

    fn capture_extra(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut extra = serde_json::Map::new();
        if let Ok(drops) = self.session.probes().drops() {
            let by_probe: serde_json::Map<String, serde_json::Value> = (0..PROBE_COUNT)
                .filter(|&i| drops[i] > 0)
                .filter_map(|i| ProbeKind::from_u16(i as u16))
                .map(|k| (k.name().to_string(), drops[k as usize].into()))
                .collect();
            extra.insert("session_ring_drops".into(), by_probe.into());
        }
        extra
    }
}
