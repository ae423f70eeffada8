//! An attach session: load the probes, attach them, count what arrives until the time is up,
//! the target exits or the user stops it, then detach (by dropping everything).
use std::{
    collections::BTreeSet,
    fmt,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ws_abi::{ENGINE_DONE_SYMBOL, ENGINE_PROBE_SYMBOL, PROBE_COUNT, ProbeKind};

use crate::{
    decode::Event,
    probes::{LoadOptions, ProbeError, Probes, UprobeTarget},
    ring::{EventReader, RingError},
    target::{Target, TargetError},
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
    /// Finding or starting the target failed.
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// What a session attaches.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// How to load the probes (ring, filters).
    pub load: LoadOptions,
    /// Kernel probes to attach.
    pub kinds: Vec<ProbeKind>,
    /// Binaries whose engine probe and done functions get the callback uprobes.
    pub engine_binaries: Vec<PathBuf>,
    /// User-chosen uprobes: binary and symbol exactly as in its symbol table.
    pub user_uprobes: Vec<(PathBuf, String)>,
}

impl Plan {
    /// Every kernel probe, filtered to process `tgid` (its threads, the sockets it reads,
    /// the children it forks), with the callback uprobes on `engine_binaries`.
    pub fn process(tgid: u32, engine_binaries: Vec<PathBuf>) -> Plan {
        let mut kinds = ProbeKind::KERNEL.to_vec();
        kinds.push(ProbeKind::ProcessFork);
        Plan {
            load: LoadOptions {
                filter: crate::probes::Filter::process(tgid),
                ..LoadOptions::default()
            },
            kinds,
            engine_binaries,
            user_uprobes: Vec::new(),
        }
    }
}

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct AttachOptions {
    /// Probes, filters, uprobes.
    pub plan: Plan,
    /// Stop after this long (`None`: until stopped or the target exits).
    pub duration: Option<Duration>,
    /// Call the refresh hook this often (`None`: never).
    pub refresh: Option<Duration>,
}

/// Per-probe totals.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProbeSummary {
    /// Probe name.
    pub probe: &'static str,
    /// Stage it stamps.
    pub stage: &'static str,
    /// Events received.
    pub events: u64,
    /// Events lost because the ring was full.
    pub drops: u64,
    /// Hook hits the kernel skipped because the program was already running on that CPU.
    pub misses: u64,
    /// Times the kernel ran the program (every run, including filtered ones).
    pub runs: u64,
    /// Mean kernel run time per program run, ns (needs BPF stats).
    pub bpf_ns_per_run: Option<f64>,
}

/// Totals of a session so far.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// What is traced.
    pub target: String,
    /// Time since the probes were attached.
    pub elapsed_s: f64,
    /// One row per attached probe.
    pub probes: Vec<ProbeSummary>,
    /// Records that could not be decoded.
    pub decode_errors: u64,
    /// Processes in the filter (empty: all).
    pub tgids: BTreeSet<u32>,
    /// Local ports in the filter, learned ones included (empty: all).
    pub ports: BTreeSet<u16>,
    /// Things the user should know (a binary without the engine's probe function...).
    pub notes: Vec<String>,
}

impl Summary {
    /// Total drops over all probes.
    pub fn total_drops(&self) -> u64 {
        self.probes.iter().map(|p| p.drops).sum()
    }

    /// Total recursion misses over all probes.
    pub fn total_misses(&self) -> u64 {
        self.probes.iter().map(|p| p.misses).sum()
    }

    /// The row of a probe.
    pub fn probe(&self, kind: ProbeKind) -> Option<&ProbeSummary> {
        self.probes.iter().find(|p| p.probe == kind.name())
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tracing {}", self.target)?;
        writeln!(
            f,
            "{:<18} {:<9} {:>10} {:>9} {:>7} {:>10} {:>11}",
            "probe", "stage", "events", "drops", "missed", "runs", "bpf ns/run"
        )?;
        for p in &self.probes {
            let ns = p
                .bpf_ns_per_run
                .map_or_else(|| "-".to_string(), |ns| format!("{ns:.0}"));
            writeln!(
                f,
                "{:<18} {:<9} {:>10} {:>9} {:>7} {:>10} {:>11}",
                p.probe, p.stage, p.events, p.drops, p.misses, p.runs, ns
            )?;
        }
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            writeln!(f, "local ports traced: {}", ports.join(" "))?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        write!(f, "elapsed {:.1} s", self.elapsed_s)?;
        let drops = self.total_drops();
        if drops > 0 {
            write!(
                f,
                "; {drops} events DROPPED (ring full): use a larger --ring-size"
            )?;
        }
        let misses = self.total_misses();
        if misses > 0 {
            write!(
                f,
                "; {misses} hook hits MISSED (a probe was already running on that CPU)"
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
    notes: Vec<String>,
    target: String,
}

impl Session {
    /// Loads the probes and attaches everything in `plan`. A binary without the engine's
    /// probe function is noted, not an error; a user uprobe that cannot be placed is.
    pub fn start(plan: &Plan) -> Result<Session, AttachError> {
        let mut probes = Probes::load(&plan.load)?;
        probes.attach_all(&plan.kinds)?;
        let mut notes = probes.notes().to_vec();
        for (i, binary) in plan.engine_binaries.iter().enumerate() {
            let target = |symbol: &str| UprobeTarget {
                binary: binary.clone(),
                symbol: symbol.to_string(),
                cookie: i as u64,
            };
            if let Err(e) =
                probes.attach_uprobe(ProbeKind::CallbackEntry, &target(ENGINE_PROBE_SYMBOL))
            {
                notes.push(format!(
                    "{}: no ws-engine probe function ({e}); callback stages unavailable",
                    binary.display()
                ));
            } else if let Err(e) =
                probes.attach_uprobe(ProbeKind::CallbackExit, &target(ENGINE_DONE_SYMBOL))
            {
                notes.push(format!(
                    "{}: no {ENGINE_DONE_SYMBOL} ({e}: a ws-engine older than ABI 5?); callback ends unavailable",
                    binary.display()
                ));
            }
        }
        for (i, (binary, symbol)) in plan.user_uprobes.iter().enumerate() {
            let target = UprobeTarget {
                binary: binary.clone(),
                symbol: symbol.clone(),
                cookie: i as u64,
            };
            probes.attach_uprobe(ProbeKind::UserEntry, &target)?;
            probes.attach_uprobe(ProbeKind::UserExit, &target)?;
        }
        let reader = EventReader::new(probes.take_ring()?);
        Ok(Session {
            probes,
            reader,
            counts: [0; PROBE_COUNT],
            started: Instant::now(),
            notes,
            target: "all processes".into(),
        })
    }

    /// The loaded probes (to update filters while running).
    pub fn probes_mut(&mut self) -> &mut Probes {
        &mut self.probes
    }

    /// Names the target in summaries.
    pub fn set_target(&mut self, description: String) {
        self.target = description;
    }

    /// Waits up to `timeout` and counts what arrived; every event is also given to `f`
    /// with its raw record.
    pub fn pump(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&[u8], &Event),
    ) -> Result<usize, AttachError> {
        let counts = &mut self.counts;
        let n = self.reader.poll(timeout, |raw, e| {
            counts[e.kind() as usize] += 1;
            f(raw, &e);
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
                let stats = self.probes.run_stats(k).unwrap_or_default();
                ProbeSummary {
                    probe: k.name(),
                    stage: k.stage(),
                    events: self.counts[k as usize],
                    drops: drops[k as usize],
                    misses: stats.recursion_misses,
                    runs: stats.runs,
                    bpf_ns_per_run: (stats.runs > 0 && !stats.run_time.is_zero())
                        .then(|| stats.run_time.as_nanos() as f64 / stats.runs as f64),
                }
            })
            .collect();
        let filtered = |flag| self.probes.filter_flags() & flag != 0;
        Ok(Summary {
            target: self.target.clone(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            probes,
            decode_errors: self.reader.decode_errors(),
            tgids: if filtered(ws_abi::CONFIG_FILTER_TGID) {
                self.probes.tgids()?
            } else {
                BTreeSet::new()
            },
            ports: if filtered(ws_abi::CONFIG_FILTER_PORTS) {
                self.probes.ports()?
            } else {
                BTreeSet::new()
            },
            notes: self.notes.clone(),
        })
    }
}

/// Runs a whole session on `target`: until `opts.duration` passes, `stop` is set or the
/// target exits. A spawned target is released once everything is attached. Calls
/// `on_refresh` every `opts.refresh` and `on_event` for every event; returns the final
/// summary. Probes are detached on return, whatever the outcome.
pub fn run(
    opts: &AttachOptions,
    target: &mut Target,
    stop: &AtomicBool,
    mut on_refresh: impl FnMut(&Summary),
    mut on_event: impl FnMut(&[u8], &Event),
) -> Result<Summary, AttachError> {
    let mut session = Session::start(&opts.plan)?;
    session.set_target(target.describe());
    target.release()?;
    let deadline = opts.duration.map(|d| session.started + d);
    let mut next_refresh = opts.refresh.map(|r| Instant::now() + r);
    let mut next_rescan = Instant::now() + Duration::from_secs(1);
    let mut known = target.tgids()?;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        if target.exited() {
            session.notes.push(format!("{} exited", target.describe()));
            break;
        }
        session.pump(Duration::from_millis(100), &mut on_event)?;
        if let Target::Comm(_) = target
            && Instant::now() >= next_rescan
        {
            // New processes of that name join the filter.
            let new: Vec<u32> = target.tgids()?.difference(&known).copied().collect();
            for tgid in new {
                session.probes.add_tgid(tgid)?;
                known.insert(tgid);
            }
            next_rescan += Duration::from_secs(1);
        }
        if let (Some(at), Some(every)) = (next_refresh, opts.refresh)
            && Instant::now() >= at
        {
            on_refresh(&session.summary()?);
            next_refresh = Some(at + every);
        }
    }
    // Whatever is still in the ring belongs to the session.
    session.pump(Duration::ZERO, &mut on_event)?;
    session.summary()
}
