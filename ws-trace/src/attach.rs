//! An attach session: load the probes, attach them, count what arrives until the time is up,
//! the target exits or the user stops it, then detach (by dropping everything).
use std::{
    collections::BTreeSet,
    fmt,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::hooks::ProbeHooks as _;
use ws_abi::{ENGINE_DONE_SYMBOL, ENGINE_PROBE_SYMBOL, PROBE_COUNT, ProbeKind};

use crate::{
    channel::{ChannelError, ChannelStats, Channels},
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
    /// An engine's stamp channel of the target cannot be taken (held by another tracer,
    /// or of a layout this ws-trace does not read).
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// How the engine's per-message records (its probe struct and callback stamps) reach the
/// tracer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineRecords {
    /// Each event loop's stamp channel: a ring in shared memory drained beside the BPF
    /// ring; no kernel entry per message.
    #[default]
    Channel,
    /// Uprobes on the engine's probe and done functions of `Plan::engine_binaries`: two
    /// kernel entries per message (`--engine-uprobes`).
    Uprobes,
}

/// How often the traced processes are searched for new stamp channels.
const CHANNEL_SCAN: Duration = Duration::from_millis(50);
/// The same when every process is traced.
const CHANNEL_SCAN_ALL: Duration = Duration::from_secs(1);

/// What a session attaches.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// How to load the probes (ring, filters).
    pub load: LoadOptions,
    /// Kernel probes to attach.
    pub kinds: Vec<ProbeKind>,
    /// How the engine's per-message records are taken.
    pub engine_records: EngineRecords,
    /// Binaries whose engine probe and done functions get the callback uprobes (with
    /// [`EngineRecords::Uprobes`]).
    pub engine_binaries: Vec<PathBuf>,
    /// User-chosen uprobes: binary and symbol exactly as in its symbol table.
    pub user_uprobes: Vec<(PathBuf, String)>,
}

impl Plan {
    /// Every kernel probe, filtered to process `tgid` (its threads, the sockets it reads,
    /// the children it forks), with the engine's records from its stamp channels
    /// (`engine_binaries` get the callback uprobes if `engine_records` is set to
    /// [`EngineRecords::Uprobes`]).
    pub fn process(tgid: u32, engine_binaries: Vec<PathBuf>) -> Plan {
        let mut kinds = ProbeKind::KERNEL.to_vec();
        kinds.push(ProbeKind::ProcessFork);
        Plan {
            load: LoadOptions {
                filter: crate::probes::Filter::process(tgid),
                ..LoadOptions::default()
            },
            kinds,
            engine_records: EngineRecords::Channel,
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
    /// Total kernel run time of the program, ns (0 without BPF stats).
    pub bpf_run_ns: u64,
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
    /// The engine's stamp channels, when the engine's records come from them.
    pub channel: Option<ChannelStats>,
}

impl Summary {
    /// Total drops over all probes, and the engine records the stamp channels lost.
    pub fn total_drops(&self) -> u64 {
        self.probes.iter().map(|p| p.drops).sum::<u64>() + self.channel.map_or(0, |c| c.drops)
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
        if let Some(c) = &self.channel {
            writeln!(
                f,
                "engine stamp channels: {} rings, {} records, {} dropped (ring overwritten before read), {} lease lapses",
                c.rings, c.records, c.drops, c.lapses
            )?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        write!(f, "elapsed {:.1} s", self.elapsed_s)?;
        let drops: u64 = self.probes.iter().map(|p| p.drops).sum();
        if let Some(c) = self.channel.filter(|c| c.drops > 0) {
            write!(
                f,
                "; {} engine records DROPPED (stamp channel lapped: the tracer fell behind)",
                c.drops
            )?;
        }
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
    channels: Option<Channels>,
    next_scan: Instant,
    /// How often the traced processes are searched for new stamp channels once one is
    /// held ([`Session::set_channel_rescan`]).
    rescan_held: Duration,
}

impl Session {
    /// Loads the probes and attaches everything in `plan`. A binary without the engine's
    /// probe function is noted, not an error; a user uprobe that cannot be placed is.
    pub fn start(plan: &Plan) -> Result<Session, AttachError> {
        let mut probes = Probes::load(&plan.load)?;
        probes.attach_all(&plan.kinds)?;
        let mut notes = probes.notes().to_vec();
        let uprobes = plan.engine_records == EngineRecords::Uprobes;
        for (i, binary) in plan.engine_binaries.iter().enumerate().filter(|_| uprobes) {
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
        let channels = match plan.engine_records {
            EngineRecords::Uprobes => None,
            EngineRecords::Channel => {
                let mut channels = Channels::new();
                // A held or unreadable ring of a process named on the command line ends the
                // session before it starts; with every process traced, it is a note.
                let tgids = &plan.load.filter.tgids;
                for e in channels.scan(tgids) {
                    if !tgids.is_empty() {
                        return Err(e.into());
                    }
                    notes.push(e.to_string());
                }
                Some(channels)
            }
        };
        let reader = EventReader::new(probes.take_ring()?);
        Ok(Session {
            probes,
            reader,
            counts: [0; PROBE_COUNT],
            started: Instant::now(),
            notes,
            target: "all processes".into(),
            channels,
            next_scan: Instant::now(),
            rescan_held: CHANNEL_SCAN,
        })
    }

    /// The stamp channels held (with [`EngineRecords::Channel`]).
    pub fn channels(&self) -> Option<&Channels> {
        self.channels.as_ref()
    }

    /// Asks the engines' stamp channels for one message in `1 << shift` per connection
    /// (aggregate mode's engine sample; 0: every message, the default). Records outside
    /// the sample may still arrive; a user that samples keeps only
    /// [`ws_abi::channel::sampled`] ones.
    pub fn set_engine_sample_shift(&mut self, shift: u32) {
        if let Some(c) = self.channels.as_mut() {
            c.set_sample_shift(shift);
        }
    }

    /// The loaded probes (to read their maps).
    pub fn probes(&self) -> &Probes {
        &self.probes
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
        let timeout = match &self.channels {
            Some(channels) => timeout.min(channels.wait()),
            None => timeout,
        };
        let mut n = self.reader.poll(timeout, |raw, e| {
            counts[e.kind() as usize] += 1;
            f(raw, &e);
        })?;
        self.probes.flush_log();
        if Instant::now() >= self.next_scan {
            self.scan_channels_now()?;
        }
        let counts = &mut self.counts;
        if let Some(channels) = self.channels.as_mut() {
            n += channels.drain(|raw, e| {
                counts[e.kind() as usize] += 1;
                f(raw, &e);
            });
        }
        Ok(n)
    }

    /// Looks for new stamp channels in the traced processes now (otherwise every
    /// [`pump`](Self::pump) does when due). A ring that cannot be taken becomes a note.
    pub fn scan_channels_now(&mut self) -> Result<(), AttachError> {
        let Some(channels) = self.channels.as_mut() else {
            return Ok(());
        };
        let filtered = self.probes.filter_flags() & ws_abi::CONFIG_FILTER_TGID != 0;
        let tgids = if filtered {
            self.probes.tgids()?
        } else {
            BTreeSet::new()
        };
        for e in channels.scan(&tgids) {
            self.notes.push(e.to_string());
        }
        let held = self
            .channels
            .as_ref()
            .is_some_and(|c| !c.readers().is_empty());
        self.next_scan = Instant::now()
            + if !filtered {
                CHANNEL_SCAN_ALL
            } else if held {
                self.rescan_held
            } else {
                CHANNEL_SCAN
            };
        Ok(())
    }

    /// Searches the traced processes for new stamp channels every `every` once a ring is
    /// held (until then, and by default, every 50 ms; a process added to the filter is
    /// searched at once). A loop a traced process starts later publishes nothing until it
    /// is found: what a longer period costs is up to that long of a new loop's messages,
    /// what it saves is a walk of each process's `/proc/PID/fd` per period (serve spent
    /// 14 % of its CPU on it at 50 ms).
    pub fn set_channel_rescan(&mut self, every: Duration) {
        self.rescan_held = every;
    }

    /// Totals so far.
    pub fn summary(&self) -> Result<Summary, AttachError> {
        let drops = self.probes.drops()?;
        let channel = self.channels.as_ref().map(Channels::stats);
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
                    bpf_run_ns: u64::try_from(stats.run_time.as_nanos()).unwrap_or(u64::MAX),
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
            channel,
        })
    }
}

/// What a running session calls back into (see [`run_with`]).
pub trait Hooks {
    /// Every event, with its raw record, as it is drained.
    fn event(&mut self, raw: &[u8], event: &Event);
    /// Every [`AttachOptions::refresh`], with the totals so far.
    fn refresh(&mut self, summary: &Summary);
    /// After each wait for events (at least every 100 ms): room for work that cannot wait
    /// for the next refresh (a terminal that was resized).
    fn idle(&mut self) {}
}

/// The [`Hooks`] of [`run`]: one closure per event, one per refresh.
struct Closures<R, E>(R, E);

impl<R: FnMut(&Summary), E: FnMut(&[u8], &Event)> Hooks for Closures<R, E> {
    fn event(&mut self, raw: &[u8], event: &Event) {
        (self.1)(raw, event)
    }
    fn refresh(&mut self, summary: &Summary) {
        (self.0)(summary)
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
    on_refresh: impl FnMut(&Summary),
    on_event: impl FnMut(&[u8], &Event),
) -> Result<Summary, AttachError> {
    run_with(opts, target, stop, &mut Closures(on_refresh, on_event))
}

/// [`run`] with its callbacks as one [`Hooks`] (which may share state between them).
pub fn run_with(
    opts: &AttachOptions,
    target: &mut Target,
    stop: &AtomicBool,
    hooks: &mut impl Hooks,
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
        session.pump(Duration::from_millis(100), |raw, e| hooks.event(raw, e))?;
        if let Target::Comm(_) | Target::Cgroup(_) = target
            && Instant::now() >= next_rescan
        {
            // New processes of that name (or in that cgroup) join the filter.
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
            hooks.refresh(&session.summary()?);
            // A refresh that took longer than the period does not queue up more.
            next_refresh = Some((at + every).max(Instant::now()));
        }
        hooks.idle();
    }
    // Whatever is still in the ring belongs to the session.
    session.pump(Duration::ZERO, |raw, e| hooks.event(raw, e))?;
    session.summary()
}
