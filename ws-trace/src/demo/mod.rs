//! `ws-trace demo`: a real traced WebSocket session, end to end.
//!
//! The feed of `ws-trace feed` ([`crate::feed`]) streams stamped binary messages on its
//! exact schedule over TLS (`wss://`, a throwaway CA made for the run) from inside a
//! network namespace (over a veth pair; loopback if namespaces
//! are unavailable); a ws-engine client, started by ws-trace as a separate process,
//! receives them; every probe is attached for the whole session and records to a trace
//! file; then the report is printed and the trace is exported next to it.
pub mod netns;

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use ws_engine::testca::TestCa;

use crate::{
    attach::{self, AttachError, AttachOptions, Plan, Summary},
    correlate::correlate,
    export::{ExportInput, Format, export},
    feed::{self, FeedConfig, FeedError, FeedSummary, SizeDist},
    record::Recorder,
    report::{self, Report},
    target::{Target, TargetError},
    tracefile::{TraceFileError, TraceFilters},
};

/// Failures of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The output folder could not be made.
    #[error("creating {path}: {source}")]
    OutDir {
        /// The folder.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server could not start.
    #[error("starting the feed server: {0}")]
    Server(std::io::Error),
    /// The feed failed (its settings, or no client came).
    #[error("the feed server failed: {0}")]
    Feed(#[from] FeedError),
    /// Starting the client failed.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Tracing failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// Writing or reading the trace failed.
    #[error(transparent)]
    Trace(#[from] TraceFileError),
    /// Writing an export failed.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// The throwaway CA or the server certificate could not be made.
    #[error("making the demo's TLS certificates: {0}")]
    Tls(String),
    /// The client did not receive the whole feed.
    #[error("the client exited with {0}")]
    Client(String),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How long the feed runs.
    pub duration: Duration,
    /// Messages per second.
    pub rate: u32,
    /// Bytes per message.
    pub size: usize,
    /// Where the trace and exports go.
    pub out: PathBuf,
    /// Use loopback even where a network namespace could be made.
    pub loopback: bool,
    /// Plain `ws://` instead of `wss://`.
    pub plain: bool,
}

/// What the demo produced.
pub struct DemoResult {
    /// How the server was reached.
    pub network: String,
    /// The session's probe summary.
    pub summary: Summary,
    /// What the feed sent (`None` when a Ctrl-C cut it short before its summary).
    pub sent: Option<FeedSummary>,
    /// A Ctrl-C ended the session early; the report covers what was traced until then.
    pub interrupted: bool,
    /// The report of the recorded trace.
    pub report: Report,
    /// The trace file.
    pub trace: PathBuf,
    /// The other files written next to it: (what, path).
    pub files: Vec<(&'static str, PathBuf)>,
}

/// How long the feed server waits for the demo client to connect. The client connects
/// once the probes are attached: well under a second here, but 15–20 s in a TCG VM on a
/// slower kernel's verifier; a client that dies first ends the demo through the session.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The feed server's thread.
type FeedThread = thread::JoinHandle<Result<FeedSummary, FeedError>>;

/// Sets the flag when dropped: the feed thread ends whichever way the demo does.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts the feed (`ws-trace feed`'s code) for one client; inside `ns` when given.
/// Returns its address and thread; setting `stop` ends it.
fn start_server(
    ns: Option<&netns::Netns>,
    cfg: FeedConfig,
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, FeedThread), DemoError> {
    let (tx, rx) = mpsc::channel();
    let bind: SocketAddr = match ns {
        Some(n) => SocketAddr::from((n.peer_addr(), 0)),
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let enter = ns.map(|n| n.enter_handle());
    let handle = thread::spawn(move || -> Result<FeedSummary, FeedError> {
        let setup = || -> std::io::Result<TcpListener> {
            if let Some(enter) = &enter {
                enter()?;
            }
            TcpListener::bind(bind)
        };
        let listener = match setup() {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                return Err(FeedError::Listen(e));
            }
        };
        let _ = tx.send(listener.local_addr());
        feed::run(listener, &cfg, &stop, &mut |_| {})
    });
    let addr = rx
        .recv()
        .map_err(|_| DemoError::Server(std::io::Error::other("server thread died")))?
        .map_err(DemoError::Server)?;
    Ok((addr, handle))
}

/// Runs the demo. `client_exe` is a binary whose `demo-client URL` subcommand runs the
/// ws-engine client (ws-trace itself).
pub fn run(
    opts: &DemoOptions,
    client_exe: &Path,
    stop: &AtomicBool,
) -> Result<DemoResult, DemoError> {
    std::fs::create_dir_all(&opts.out).map_err(|source| DemoError::OutDir {
        path: opts.out.display().to_string(),
        source,
    })?;
    let ns = if opts.loopback {
        None
    } else {
        match netns::Netns::create() {
            Ok(ns) => Some(ns),
            Err(e) => {
                eprintln!("ws-trace demo: no network namespace ({e}); using loopback");
                None
            }
        }
    };
    let network = match &ns {
        Some(n) => format!(
            "veth {} ({}) ↔ namespace {} ({})",
            n.host_interface(),
            n.host_addr(),
            n.name(),
            n.peer_addr()
        ),
        None => "loopback".to_string(),
    };
    let sizes = SizeDist::fixed(opts.size).map_err(|e| FeedError::Config(e.to_string()))?;
    let mut feed = FeedConfig::new(f64::from(opts.rate.max(1)), sizes);
    feed.duration = Some(opts.duration);
    feed.accept_timeout = Some(ACCEPT_TIMEOUT);
    let server_ip = match &ns {
        Some(n) => n.peer_addr().to_string(),
        None => "127.0.0.1".to_string(),
    };
    let mut client_args = vec![client_exe.display().to_string(), "demo-client".to_string()];
    feed.tls = if opts.plain {
        None
    } else {
        let ca = TestCa::new().map_err(|e| DemoError::Tls(e.to_string()))?;
        let ca_path = opts.out.join("demo-ca.pem");
        ca.write_ca_pem(&ca_path)
            .map_err(|source| DemoError::OutDir {
                path: ca_path.display().to_string(),
                source,
            })?;
        client_args.extend(["--ca".to_string(), ca_path.display().to_string()]);
        Some(
            ca.server_config(&[server_ip.as_str()])
                .map_err(|e| DemoError::Tls(e.to_string()))?,
        )
    };
    let scheme = if feed.tls.is_some() { "wss" } else { "ws" };
    let feed_stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let (addr, server) = start_server(ns.as_ref(), feed, feed_stop.0.clone())?;
    let url = format!("{scheme}://{addr}/feed");
    client_args.push(url.clone());
    let mut target = Target::spawn(&client_args)?;
    let tgids = target.tgids()?;
    let tgid = tgids.first().copied().unwrap_or(0);
    let plan = Plan::process(tgid, vec![client_exe.to_path_buf()]);
    let trace = opts.out.join("trace.wstrace");
    let mut recorder = Recorder::create(
        &trace,
        &plan,
        TraceFilters {
            tgids: tgids.iter().copied().collect(),
            command: Some(vec!["demo-client".into(), url]),
            ..TraceFilters::default()
        },
    )?;
    let options = AttachOptions {
        plan,
        // The client exits when the feed ends; this is only a backstop.
        duration: Some(opts.duration + Duration::from_secs(30)),
        refresh: None,
    };
    let mut record_error = None;
    let summary = attach::run(
        &options,
        &mut target,
        stop,
        |_| {},
        |raw, _| {
            if record_error.is_none()
                && let Err(e) = recorder.record(raw)
            {
                record_error = Some(e);
            }
        },
    )?;
    // After a failed write the recorder takes nothing more, its footer included.
    if let Some(e) = record_error {
        return Err(e.into());
    }
    recorder.finish(&summary)?;
    // Ctrl-C: the terminal also interrupted the client (same process group) or, when only
    // ws-trace was signalled, the client is stopped here, and the feed is stopped. What
    // was recorded is reported either way.
    let interrupted = stop.load(Ordering::Relaxed);
    if interrupted {
        feed_stop.0.store(true, Ordering::Relaxed);
        if let Target::Spawned { child, .. } = &mut target {
            let _ = child.kill();
        }
    }
    // A client that failed (it could not connect, say) says why; the server may still be
    // waiting for it.
    if let Target::Spawned { child, .. } = &mut target
        && let Ok(status) = child.wait()
        && !status.success()
        && !interrupted
    {
        return Err(DemoError::Client(status.to_string()));
    }
    let sent = server
        .join()
        .map_err(|_| DemoError::Server(std::io::Error::other("feed thread panicked")))?;
    let sent = match sent {
        Ok(sent) => Some(sent),
        Err(_) if interrupted => None,
        Err(e) => return Err(DemoError::Feed(e)),
    };
    drop(ns);
    let loaded = report::load(&trace)?;
    let correlation = correlate(&loaded.events);
    let report = Report::with_correlation(&loaded, &correlation, 5);
    let mut files = Vec::new();
    for (what, name, format) in [
        ("perfetto", "trace.pftrace", Format::Perfetto),
        ("flamegraph", "stages.svg", Format::Svg),
        ("messages", "messages.jsonl", Format::Jsonl),
    ] {
        let path = opts.out.join(name);
        let file = std::fs::File::create(&path).map_err(|source| DemoError::OutDir {
            path: path.display().to_string(),
            source,
        })?;
        let mut out = std::io::BufWriter::new(file);
        let input = ExportInput {
            correlation: &correlation,
            events: &loaded.events,
            header: Some(&loaded.header),
        };
        export(format, &input, &mut out)?;
        std::io::Write::flush(&mut out).map_err(|source| DemoError::OutDir {
            path: path.display().to_string(),
            source,
        })?;
        files.push((what, path));
    }
    let report_path = opts.out.join("report.txt");
    std::fs::write(&report_path, report.to_string()).map_err(|source| DemoError::OutDir {
        path: report_path.display().to_string(),
        source,
    })?;
    files.push(("report", report_path));
    Ok(DemoResult {
        network,
        summary,
        sent,
        interrupted,
        report,
        trace,
        files,
    })
}

/// The `demo-client [--ca FILE] URL` side: a ws-engine client counting the feed's
/// messages until the server closes. Returns the count, or an error when a message is
/// missing, repeated or not a feed message.
pub fn client(url: &str, ca_file: Option<&Path>) -> Result<u64, String> {
    use ws_engine::{ConnConfig, ConnCtx, EventLoop, Handler, LoopConfig, Message};
    struct Count {
        n: u64,
        wrong: Option<String>,
    }
    impl Handler for Count {
        fn on_message(&mut self, _conn: &mut ConnCtx<'_>, msg: Message<'_>) {
            // A consumer would parse here; this one checks the sequence number.
            match feed::Stamp::parse(msg.data) {
                Some(stamp) if stamp.seq == self.n => self.n += 1,
                other => {
                    self.wrong
                        .get_or_insert_with(|| format!("message {} arrived as {other:?}", self.n));
                }
            }
        }
    }
    let mut el = EventLoop::new(LoopConfig::default()).map_err(|e| e.to_string())?;
    let mut cfg = ConnConfig::default();
    if let Some(ca) = ca_file {
        cfg.tls.ca_file = Some(ca.to_path_buf());
        cfg.tls.system_roots = false;
    }
    el.connect(url, &cfg)
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let mut count = Count { n: 0, wrong: None };
    el.run(&mut count).map_err(|e| e.to_string())?;
    match count.wrong {
        Some(wrong) => Err(wrong),
        None => Ok(count.n),
    }
}
