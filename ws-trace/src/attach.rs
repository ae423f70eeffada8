//! An attach session: load the probes, attach them, count what arrives until the time is up
//! or the user stops it, then detach (by dropping everything).
use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ws_abi::{PROBE_COUNT, ProbeKind};

use crate::{
    probes::{LoadOptions, ProbeError, Probes},
    ring::{EventReader, RingError},
};

/// Failures of an attach session.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Loading or attaching the probes failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// Reading the ring failed.
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct AttachOptions {
    /// How to load the probes.
    pub load: LoadOptions,
    /// Stop after this long (`None`: until stopped).
    pub duration: Option<Duration>,
    /// Call the refresh hook this often (`None`: never).
    pub refresh: Option<Duration>,
}

/// Per-probe totals.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProbeSummary {
    /// Probe name.
    pub probe: &'static str,
    /// Events received.
    pub events: u64,
    /// Events lost because the ring was full.
    pub drops: u64,
    /// Times the kernel ran the program (every run, including filtered ones).
    pub runs: u64,
    /// Mean kernel run time per program run, ns (needs BPF stats).
    pub bpf_ns_per_run: Option<f64>,
}

/// Totals of a session so far.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Time since the probes were attached.
    pub elapsed_s: f64,
    /// One row per attached probe.
    pub probes: Vec<ProbeSummary>,
    /// Records that could not be decoded.
    pub decode_errors: u64,
}

impl Summary {
    /// Total drops over all probes.
    pub fn total_drops(&self) -> u64 {
        self.probes.iter().map(|p| p.drops).sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<20} {:>12} {:>10} {:>12} {:>12}",
            "probe", "events", "drops", "runs", "bpf ns/run"
        )?;
        for p in &self.probes {
            let ns = p
                .bpf_ns_per_run
                .map_or_else(|| "-".to_string(), |ns| format!("{ns:.0}"));
            writeln!(
                f,
                "{:<20} {:>12} {:>10} {:>12} {:>12}",
                p.probe, p.events, p.drops, p.runs, ns
            )?;
        }
        write!(f, "elapsed {:.1} s", self.elapsed_s)?;
        let drops = self.total_drops();
        if drops > 0 {
            write!(
                f,
                "; {drops} events DROPPED (ring full): use a larger --ring-size"
            )?;
        }
        if self.decode_errors > 0 {
            write!(f, "; {} undecodable records", self.decode_errors)?;
        }
        Ok(())
    }
}

/// A running session.
pub struct Session {
    probes: Probes,
    reader: EventReader,
    counts: [u64; PROBE_COUNT],
    started: Instant,
}

impl Session {
    /// Loads and attaches `kinds`.
    pub fn start(load: &LoadOptions, kinds: &[ProbeKind]) -> Result<Session, AttachError> {
        let mut probes = Probes::load(load)?;
        probes.attach_all(kinds)?;
        let reader = EventReader::new(probes.take_ring()?);
        Ok(Session {
            probes,
            reader,
            counts: [0; PROBE_COUNT],
            started: Instant::now(),
        })
    }

    /// Waits up to `timeout` and counts what arrived; every event is also given to `f`.
    pub fn pump(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&crate::decode::Event),
    ) -> Result<usize, AttachError> {
        let counts = &mut self.counts;
        let n = self.reader.poll(timeout, |e| {
            counts[e.kind() as usize] += 1;
            f(&e);
        })?;
        self.probes.flush_log();
        Ok(n)
    }

    /// Totals so far.
    pub fn summary(&self) -> Result<Summary, AttachError> {
        let drops = self.probes.drops()?;
        let probes = self
            .probes
            .attached()
            .iter()
            .map(|&k| {
                let (run_time, runs) = self.probes.run_stats(k).unwrap_or_default();
                ProbeSummary {
                    probe: k.name(),
                    events: self.counts[k as usize],
                    drops: drops[k as usize],
                    runs,
                    bpf_ns_per_run: (runs > 0 && !run_time.is_zero())
                        .then(|| run_time.as_nanos() as f64 / runs as f64),
                }
            })
            .collect();
        Ok(Summary {
            elapsed_s: self.started.elapsed().as_secs_f64(),
            probes,
            decode_errors: self.reader.decode_errors(),
        })
    }
}

/// Runs a whole session: until `opts.duration` passes or `stop` is set. Calls `on_refresh`
/// every `opts.refresh`; returns the final summary. Probes are detached on return.
pub fn run(
    opts: &AttachOptions,
    kinds: &[ProbeKind],
    stop: &AtomicBool,
    mut on_refresh: impl FnMut(&Summary),
) -> Result<Summary, AttachError> {
    let mut session = Session::start(&opts.load, kinds)?;
    let deadline = opts.duration.map(|d| session.started + d);
    let mut next_refresh = opts.refresh.map(|r| Instant::now() + r);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        session.pump(Duration::from_millis(100), |_| {})?;
        if let (Some(at), Some(every)) = (next_refresh, opts.refresh)
            && Instant::now() >= at
        {
            on_refresh(&session.summary()?);
            next_refresh = Some(at + every);
        }
    }
    // Whatever is still in the ring belongs to the session.
    session.pump(Duration::ZERO, |_| {})?;
    session.summary()
}
