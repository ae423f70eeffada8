//! `ws-trace serve`: an always-on agent. A tracing session on the target feeds per-stage
//! histograms ([`source`]: [`aggregate`] by default, [`fullmode`] with `--mode full`);
//! every second they are published to the HTTP API ([`http`]):
//! Prometheus metrics ([`metrics`]), status, and captures of the last seconds
//! ([`crate::captures`]).
//!
//! Threads: the caller's runs the session (the probes and rings are not shared); one more
//! runs the HTTP server on a single-threaded tokio runtime and reads only what the session
//! thread published, swapped whole under a mutex, so a scrape never sees half an update.
//! Captures asked for over HTTP are taken by the session thread (it holds the events) and
//! answered through a oneshot channel.
pub mod aggregate;
pub mod fullmode;
pub mod http;
pub mod metrics;
pub mod source;

use std::{
    collections::BTreeSet,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ws_abi::ProbeKind;

use crate::{
    attach::{EngineRecords, Plan},
    captures::{CaptureError, CaptureInfo, CaptureUsage, Captures},
    flight::{CapturePolicy, Threshold, Trigger},
    probes::{Filter, LoadOptions},
    stats::{LogHistogram, StageSnapshot},
    target::{Target, TargetError},
    tracefile::TraceFilters,
};

use metrics::MetricsView;
use source::{SnapshotSource, SourceError};

/// How often the session's readings are published to the HTTP side.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How often a `--comm` target is searched for new processes.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Failures of `serve`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening address could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Per-connection histograms need full mode.
    #[error(
        "--per-connection needs --mode full (aggregate mode keeps no per-connection histograms)"
    )]
    PerConnectionNeedsFull,
    /// A non-loopback address without `allow_remote`.
    #[error(
        "{0} is not a loopback address: serve's API has no TLS; pass --allow-remote (and --token) to listen there"
    )]
    NotLoopback(SocketAddr),
    /// The HTTP server could not start.
    #[error("starting the HTTP server: {0}")]
    Runtime(std::io::Error),
    /// The capture directory is unusable.
    #[error(transparent)]
    Captures(#[from] CaptureError),
    /// The target could not be found or released.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The tracing session failed.
    #[error(transparent)]
    Source(Box<SourceError>),
}

impl From<SourceError> for ServeError {
    fn from(e: SourceError) -> ServeError {
        ServeError::Source(Box::new(e))
    }
}

/// What `serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen`.
    pub allow_remote: bool,
    /// Bearer token every request must carry (`None`: no authentication).
    pub token: Option<String>,
    /// The capture directory.
    pub capture_dir: PathBuf,
    /// Bytes the captures may take.
    pub capture_quota: u64,
    /// Per-connection histograms (`wstrace_connection_seconds`).
    pub per_connection: bool,
    /// At most this many connections get their own histogram.
    pub max_connections: usize,
    /// Event ring size, bytes (full mode).
    pub ring_bytes: u32,
    /// How latencies are computed.
    pub mode: Mode,
    /// Capture the window around a message slower than this (`None`: only on request).
    pub capture_over: Option<Threshold>,
    /// Rate limit and window of those captures.
    pub capture_policy: CapturePolicy,
    /// Set by a signal handler (SIGUSR1): take a capture of the last seconds now.
    pub capture_now: Option<Arc<AtomicBool>>,
    /// Aggregate mode: the stage probes attached one second in this many (1: always; see
    /// [`Aggregator::set_kernel_duty`](crate::aggregate::Aggregator::set_kernel_duty)).
    pub kernel_duty: u32,
}

/// How much of the recent past the sources keep for captures, and what a capture on request
/// (HTTP, SIGUSR1) holds.
pub const CAPTURE_WINDOW: Duration = Duration::from_secs(5);
/// The history a percentile threshold is taken over.
pub const THRESHOLD_HISTORY: Duration = Duration::from_secs(60);

/// How serve computes the latencies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// In the kernel (per-CPU histograms) and from the engine's stamp channels; nothing per
    /// event through the ring.
    #[default]
    Aggregate,
    /// Every event through the ring, joined in user space once a second: what `attach`
    /// costs; gives per-connection histograms and captures of every event.
    Full,
}

/// Where the session is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// A `--comm` target has no process yet.
    Waiting,
    /// Probes attached.
    Tracing,
    /// A `--pid` or started target exited; the last readings stay served.
    TargetExited,
}

/// What the session thread last published.
#[derive(Clone, Debug)]
pub struct Published {
    /// The metrics of the last reading.
    pub view: Arc<MetricsView>,
    /// The session's state.
    pub state: SessionState,
    /// Processes of the target at the last reading.
    pub pids: BTreeSet<u32>,
    /// Why the last capture failed, if it did (quota reached...).
    pub capture_error: Option<String>,
    /// The automatic captures (`--capture-over`), when on.
    pub trigger: Option<TriggerStatus>,
}

/// The state of `--capture-over`'s trigger, for `/api/status`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct TriggerStatus {
    /// The threshold as given (`200us`, `p99.9`).
    pub threshold: String,
    /// What it is now, ns (a percentile needs some history first).
    pub threshold_ns: Option<u64>,
    /// Captures it took.
    pub captures: u64,
    /// Slow messages found within the rate limit's gap of the last capture, not captured.
    pub suppressed: u64,
    /// Times the window was joined to look for slow messages (the cheap per-interval
    /// bound did not rule them out).
    pub joins: u64,
    /// The slowest message of the last capture, nic → callback_done (reads: → read), ns.
    pub last_slowest_ns: Option<u64>,
}

/// A capture asked for over HTTP, answered by the session thread.
pub struct CaptureRequest {
    /// Why (becomes part of the ID).
    pub reason: String,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<Result<CaptureInfo, CaptureError>>,
}

/// State shared by the session thread and the HTTP handlers.
pub struct Shared {
    /// The last published reading.
    pub published: Mutex<Published>,
    /// The capture directory.
    pub captures: Captures,
    /// Capture requests to the session thread.
    pub capture_requests: Mutex<mpsc::Sender<CaptureRequest>>,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// When serve started.
    pub started: Instant,
    /// The target as named on the command line.
    pub target: String,
}

impl Shared {
    /// The last published reading (a poisoned lock still holds a whole reading: it is only
    /// ever replaced whole).
    pub fn published(&self) -> Published {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut Published)) {
        f(&mut self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner));
    }
}

/// A running serve: its HTTP address, for callers that bound port 0.
pub struct Running {
    /// The address the HTTP API listens on.
    pub addr: SocketAddr,
}

/// The plan of a serve session on the processes `tgids`: every kernel probe, filtered to
/// them (following their forks and learning their ports), engine records from their stamp
/// channels.
pub fn plan_for(tgids: BTreeSet<u32>, ring_bytes: u32, binaries: Vec<PathBuf>) -> Plan {
    let mut kinds = ProbeKind::KERNEL.to_vec();
    kinds.push(ProbeKind::ProcessFork);
    Plan {
        load: LoadOptions {
            ring_bytes,
            filter: Filter {
                tgids,
                ports: BTreeSet::new(),
                learn_ports: true,
                follow_forks: true,
            },
            ..LoadOptions::default()
        },
        kinds,
        engine_records: EngineRecords::Channel,
        engine_binaries: binaries,
        user_uprobes: Vec::new(),
    }
}

fn unix_now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs serve on `target` until `stop` is set: binds the API, attaches once the target has
/// a process, publishes every [`PUBLISH_EVERY`], takes the processes a `--comm` target
/// gains, and detaches on return, whatever the outcome. `on_listening` is called once the
/// API accepts connections.
pub fn run(
    opts: &ServeOptions,
    target: &mut Target,
    stop: &AtomicBool,
    on_listening: impl FnOnce(&Running),
) -> Result<(), ServeError> {
    if !opts.listen.ip().is_loopback() && !opts.allow_remote {
        return Err(ServeError::NotLoopback(opts.listen));
    }
    if opts.per_connection && opts.mode != Mode::Full {
        return Err(ServeError::PerConnectionNeedsFull);
    }
    let captures = Captures::open(&opts.capture_dir, opts.capture_quota)?;
    let listener = TcpListener::bind(opts.listen).map_err(|source| ServeError::Bind {
        addr: opts.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.listen,
        source,
    })?;
    let (requests_tx, requests) = mpsc::channel();
    let start_time_s = unix_now_s();
    let shared = Arc::new(Shared {
        published: Mutex::new(Published {
            view: Arc::new(MetricsView {
                start_time_s,
                per_connection: opts.per_connection,
                captures: captures.usage().ok(),
                ..MetricsView::default()
            }),
            state: SessionState::Waiting,
            pids: BTreeSet::new(),
            capture_error: None,
            trigger: opts.capture_over.map(|t| TriggerStatus {
                threshold: threshold_label(t),
                ..TriggerStatus::default()
            }),
        }),
        captures: captures.clone(),
        capture_requests: Mutex::new(requests_tx),
        token: opts.token.clone(),
        started: Instant::now(),
        target: target.describe(),
    });
    let server = http::Server::start(listener, shared.clone()).map_err(ServeError::Runtime)?;
    on_listening(&Running { addr });
    let mut session = SessionLoop {
        opts,
        shared: &shared,
        captures: &captures,
        source: None,
        start_time_s,
        known: BTreeSet::new(),
        exited: false,
        trigger: opts
            .capture_over
            .map(|t| Trigger::new(t, opts.capture_policy)),
        history: std::collections::VecDeque::new(),
        bounds: (0, 0),
        last: None,
        trigger_status: TriggerStatus::default(),
    };
    let result = session.run(target, stop, &requests);
    // The probes detach here (the session's fds close), before the API goes away.
    drop(session);
    server.stop();
    result
}

struct SessionLoop<'a> {
    opts: &'a ServeOptions,
    shared: &'a Shared,
    captures: &'a Captures,
    source: Option<Box<dyn SnapshotSource>>,
    start_time_s: f64,
    known: BTreeSet<u32>,
    /// A `--pid` or started target exited.
    exited: bool,
    /// `--capture-over`'s trigger.
    trigger: Option<Trigger>,
    /// Readings of the end-to-end histogram over [`THRESHOLD_HISTORY`] (for percentiles).
    history: std::collections::VecDeque<(u64, LogHistogram)>,
    /// Upper bounds of every end-to-end latency in the last two publish intervals.
    bounds: (u64, u64),
    /// The previous reading (for the interval's bound).
    last: Option<StageSnapshot>,
    trigger_status: TriggerStatus,
}

/// A threshold as the user wrote it.
fn threshold_label(t: Threshold) -> String {
    match t {
        Threshold::Over(ns) => format!("{}us", ns as f64 / 1e3),
        Threshold::Quantile(q) => format!("p{}", q * 100.0),
    }
}

/// An upper bound of every end-to-end latency in an interval: the sum of every stage's
/// largest value in it (a row's end to end is the sum of its stages; in aggregate mode the
/// kernel's read stages and the engine's overlap, which only loosens the bound). Where the
/// total is the rows' own end to end (full mode), its largest value bounds them too.
fn interval_bound(interval: &StageSnapshot, total_is_end_to_end: bool) -> u64 {
    let sum: u64 = interval.stages.iter().map(|s| s.hist.max()).sum();
    if total_is_end_to_end {
        sum.min(interval.total.max())
    } else {
        sum
    }
}

impl SessionLoop<'_> {
    fn run(
        &mut self,
        target: &mut Target,
        stop: &AtomicBool,
        requests: &mpsc::Receiver<CaptureRequest>,
    ) -> Result<(), ServeError> {
        let mut next_publish = Instant::now();
        let mut next_rescan = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if self.source.is_none() {
                let tgids = target.tgids()?;
                if tgids.is_empty() {
                    // A `--comm` target with no process yet: nothing is attached until one
                    // appears (an empty filter would trace every process).
                    self.answer_captures(requests);
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let plan = plan_for(
                    tgids.clone(),
                    self.opts.ring_bytes,
                    target.binaries()?.into_iter().collect(),
                );
                let filters = TraceFilters {
                    tgids: tgids.iter().copied().collect(),
                    comm: match target {
                        Target::Comm(name) => Some(name.clone()),
                        _ => None,
                    },
                    ..TraceFilters::default()
                };
                // Automatic captures join the window's events: aggregate mode then also
                // streams the probes' records (their cost: attach's, see production.md).
                let mut plan = plan;
                plan.load.stream = self.opts.capture_over.is_some();
                self.source = Some(match self.opts.mode {
                    Mode::Aggregate => Box::new(aggregate::AggregateSource::start(
                        plan,
                        filters,
                        self.opts.kernel_duty,
                    )?),
                    Mode::Full => Box::new(fullmode::FullModeSource::start(
                        plan,
                        filters,
                        if self.opts.per_connection {
                            self.opts.max_connections
                        } else {
                            0
                        },
                    )?),
                });
                self.known = tgids;
                target.release()?;
                self.shared.update(|p| p.state = SessionState::Tracing);
            }
            let Some(source) = self.source.as_mut() else {
                continue;
            };
            source.pump(Duration::from_millis(100))?;
            let now = Instant::now();
            if matches!(target, Target::Comm(_) | Target::Cgroup(_)) && now >= next_rescan {
                let now_tgids = target.tgids()?;
                for &tgid in now_tgids.difference(&self.known) {
                    source.add_process(tgid)?;
                }
                self.known.extend(now_tgids);
                next_rescan = now + RESCAN_EVERY;
            }
            if !self.exited && target.exited() {
                self.exited = true;
                // The new state goes out now, with the readings that go with it.
                next_publish = Instant::now();
            }
            self.answer_captures(requests);
            if let Some(flag) = &self.opts.capture_now
                && flag.swap(false, Ordering::Relaxed)
            {
                // The outcome is logged and shown in the status; no one waits for it.
                let _ = self.capture_recent("signal");
            }
            if Instant::now() >= next_publish {
                self.publish(target)?;
                next_publish = Instant::now() + PUBLISH_EVERY;
            }
        }
        Ok(())
    }

    /// Reads the source and replaces what the HTTP side shows.
    fn publish(&mut self, target: &Target) -> Result<(), ServeError> {
        let Some(source) = self.source.as_mut() else {
            return Ok(());
        };
        let snapshot = source.snapshot()?;
        let status = source.status()?;
        self.check_trigger(&snapshot);
        // A `--pid` target is named by its pid even once it is gone.
        let pids = if self.exited {
            BTreeSet::new()
        } else {
            target.tgids()?
        };
        let view = Arc::new(MetricsView {
            snapshot,
            status: Some(status),
            captures: self.captures.usage().ok(),
            target_processes: pids.len() as u64,
            start_time_s: self.start_time_s,
            per_connection: self.opts.per_connection,
        });
        let state = if self.exited {
            SessionState::TargetExited
        } else {
            SessionState::Tracing
        };
        let trigger = self.trigger.is_some().then(|| TriggerStatus {
            threshold: self
                .opts
                .capture_over
                .map(threshold_label)
                .unwrap_or_default(),
            ..self.trigger_status.clone()
        });
        self.shared.update(|p| {
            p.view = view;
            p.pids = pids;
            p.state = state;
            p.trigger = trigger;
        });
        Ok(())
    }

    /// `--capture-over`: with this reading, looks for messages over the threshold in the
    /// window's settled span and captures around the slowest (rate-limited).
    fn check_trigger(&mut self, snapshot: &StageSnapshot) {
        let (Some(trigger), Some(source)) = (self.trigger.as_mut(), self.source.as_ref()) else {
            return;
        };
        let now = snapshot.at_ns;
        // The last reading before this one gives the interval; the oldest within the
        // history the percentile's distribution.
        let bound = match &self.last {
            Some(before) => interval_bound(&snapshot.since(before), self.opts.mode == Mode::Full),
            None => u64::MAX,
        };
        self.last = Some(snapshot.clone());
        self.bounds = (self.bounds.1, bound);
        self.history.push_back((now, snapshot.total.clone()));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > THRESHOLD_HISTORY.as_nanos() as u64)
        {
            self.history.pop_front();
        }
        let recent = match self.history.front() {
            Some((_, oldest)) => snapshot.total.since(oldest),
            None => LogHistogram::new(),
        };
        // The span checked now ends `after` ago: it lies within the last two intervals.
        let bound = self.bounds.0.max(self.bounds.1);
        let due = trigger.check(source.recorder(), now, &recent, Some(bound));
        self.trigger_status.threshold_ns = trigger.threshold_ns(&recent);
        self.trigger_status.suppressed = trigger.suppressed();
        self.trigger_status.joins = trigger.joins();
        let Some(due) = due else { return };
        let slowest = due.row.total_ns().unwrap_or(0);
        let reason = format!("over-{}us", slowest / 1_000);
        let result = self.capture((due.from_ns, due.to_ns), &reason);
        if let Ok(info) = &result {
            self.trigger_status.captures += 1;
            self.trigger_status.last_slowest_ns = Some(slowest);
            eprintln!(
                "ws-trace: capture {}: a message took {:.1} µs nic → end, over {:.1} µs ({} over in the span)",
                info.id,
                slowest as f64 / 1e3,
                due.threshold_ns as f64 / 1e3,
                due.slow_rows
            );
        }
    }

    /// Writes what the session holds of `[from_ns, to_ns]` as a capture for `reason`; logs
    /// the outcome and shows a refusal in `/api/status` until a capture succeeds again.
    fn capture(&self, window: (u64, u64), reason: &str) -> Result<CaptureInfo, CaptureError> {
        let result = match self.source.as_ref() {
            Some(source) => source::capture(source.as_ref(), self.captures, reason, window),
            None => Err(CaptureError::Empty { window_s: 0.0 }),
        };
        match &result {
            Ok(info) => {
                eprintln!("ws-trace: capture {} ({} bytes)", info.id, info.bytes);
                self.shared.update(|p| p.capture_error = None);
            }
            Err(e) => {
                eprintln!("ws-trace: capture refused: {e}");
                let msg = e.to_string();
                self.shared.update(|p| p.capture_error = Some(msg));
            }
        }
        result
    }

    /// A capture of the last [`CAPTURE_WINDOW`] (SIGUSR1, `POST /api/captures`).
    fn capture_recent(&self, reason: &str) -> Result<CaptureInfo, CaptureError> {
        let now = ws_engine::clock::Clock::monotonic_now_ns();
        let from = now.saturating_sub(CAPTURE_WINDOW.as_nanos() as u64);
        self.capture((from, now), reason)
    }

    /// Takes the captures asked for over HTTP.
    fn answer_captures(&self, requests: &mpsc::Receiver<CaptureRequest>) {
        while let Ok(req) = requests.try_recv() {
            let result = self.capture_recent(&req.reason);
            // A client that gave up waiting is no error.
            let _ = req.reply.send(result);
        }
    }
}

/// Usage of the capture directory for `/api/status`, with the last capture's error.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaptureStatus {
    /// The directory.
    pub dir: PathBuf,
    /// Captures, bytes and quota.
    #[serde(flatten)]
    pub usage: Option<CaptureUsage>,
    /// Why the last capture failed (captures stop when the quota is reached).
    pub last_error: Option<String>,
    /// `--capture-over`'s trigger, when on.
    pub trigger: Option<TriggerStatus>,
}
