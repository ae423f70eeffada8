//! `serve` for real: a live session on a traced ws-engine client receiving a feed, scraped
//! by a real Prometheus (Debian's package, installed by `cargo xtask setup`), and a
//! `--comm` target that dies and comes back.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use ws_engine::server::{Feed, FeedServer};
use ws_tests::{free_port, http_get, http_request, metric_value, require_for_test};
use ws_trace::{
    serve::{self, Mode, ServeError, ServeOptions},
    target::Target,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_feed_client");

/// The stages aggregate mode (the default) counts for every message of a plain ws://
/// engine client on loopback, and the end-to-end `total` (nic → read return): the
/// kernel's up to the read's return, the engine's from recv_start on. (`decrypt` is TLS
/// only; `nic` starts a row and ends no stage.)
const AGGREGATE_STAGES: [&str; 12] = [
    "softirq",
    "tcp",
    "waking",
    "wakeup",
    "on-cpu",
    "epoll",
    "read",
    "recv_end",
    "parsed",
    "callback",
    "callback_done",
    "total",
];

/// The same in full mode, where each message's row is joined (`docs/design.md`): the
/// engine's `recv_start` follows epoll, and `total` is nic → callback return.
const FULL_STAGES: [&str; 12] = [
    "softirq",
    "tcp",
    "waking",
    "wakeup",
    "on-cpu",
    "epoll",
    "recv_start",
    "recv_end",
    "parsed",
    "callback",
    "callback_done",
    "total",
];

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A serve session running in a thread of this process (the library `ws-trace serve`
/// runs), stopped and joined on drop.
struct InProcessServe {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), ServeError>>>,
    _dir: tempfile::TempDir,
}

impl InProcessServe {
    fn start(target: Target, mode: Mode) -> InProcessServe {
        InProcessServe::with_quota(target, mode, 64 << 20)
    }

    fn with_quota(target: Target, mode: Mode, capture_quota: u64) -> InProcessServe {
        InProcessServe::with(target, mode, |o| o.capture_quota = capture_quota)
    }

    fn with(
        mut target: Target,
        mode: Mode,
        configure: impl FnOnce(&mut ServeOptions),
    ) -> InProcessServe {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = ServeOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            allow_remote: false,
            token: None,
            capture_dir: dir.path().join("captures"),
            capture_quota: 64 << 20,
            per_connection: mode == Mode::Full,
            max_connections: 4,
            ring_bytes: ws_trace::probes::DEFAULT_RING_BYTES,
            mode,
            capture_over: None,
            capture_policy: Default::default(),
            capture_now: None,
            kernel_duty: 1,
        };
        configure(&mut opts);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            serve::run(&opts, &mut target, &flag, |r| {
                let _ = tx.send(r.addr);
            })
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("serve listens");
        InProcessServe {
            addr,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn captures_dir(&self) -> PathBuf {
        self._dir.path().join("captures")
    }

    fn metrics(&self) -> String {
        let (code, body) = http_get(self.addr, "/metrics", None).expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    fn status(&self) -> serde_json::Value {
        let (code, body) = http_get(self.addr, "/api/status", None).expect("GET /api/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// Stops the session; its error, if it failed.
    fn finish(mut self) -> Result<(), ServeError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("serve thread")
    }
}

impl Drop for InProcessServe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A child process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 250 ms until it returns `Some`, for up to `secs`.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(250));
    }
}

/// A feed long enough for any of these tests (it ends early when its client is killed).
fn long_feed() -> FeedServer {
    FeedServer::start(Feed {
        count: 200_000,
        size: 128,
        gap: Duration::from_micros(500),
        payload: Default::default(),
    })
    .expect("feed server")
}

/// A ws-engine client of `feed`, started once the probes are attached: its target and pid.
fn traced_client(feed: &FeedServer) -> (Target, u32) {
    let target = Target::spawn_with(&[CLIENT.to_string(), feed.url().to_string()], true)
        .expect("spawn the client");
    let client_pid = *target.tgids().expect("tgids").first().expect("a pid");
    (target, client_pid)
}

/// Kills the client, stops serve (which must have run without errors), ends the feed.
fn end(serve: InProcessServe, client_pid: u32, feed: FeedServer) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(client_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    serve.finish().expect("serve ran without errors");
    let _ = feed.join();
}

/// `wstrace_stage_seconds_count` by stage, as Prometheus' query API answers it.
fn prometheus_counts(prometheus: SocketAddr) -> Option<BTreeMap<String, f64>> {
    let (code, body) = http_get(
        prometheus,
        "/api/v1/query?query=wstrace_stage_seconds_count",
        None,
    )
    .ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    if v["status"] != "success" {
        return None;
    }
    Some(
        v["data"]["result"]
            .as_array()?
            .iter()
            .filter_map(|r| {
                let stage = r["metric"]["stage"].as_str()?.to_string();
                let value = r["value"][1].as_str()?.parse().ok()?;
                Some((stage, value))
            })
            .collect(),
    )
}

/// `promtool check metrics` (Prometheus' linter: names, units, `_total`, histogram
/// layout) accepts `text`; promtool is required under CI.
fn promtool_accepts(text: &str) {
    use std::io::Write as _;
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !ci() => {
            eprintln!("promtool check skipped: no promtool");
            return;
        }
        Err(e) => panic!("promtool is required under CI: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_real_prometheus_scrapes_every_stage_of_a_live_serve() {
    if !require_for_test("a_real_prometheus_scrapes_every_stage_of_a_live_serve") {
        return;
    }
    let feed = long_feed();
    let (target, client_pid) = traced_client(&feed);
    let serve = InProcessServe::start(target, Mode::Aggregate);

    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("a free port");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: wstrace\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n    \
             static_configs:\n      - targets: ['{}']\n",
            serve.addr
        ),
    )
    .expect("write the config");
    let spawned = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut prometheus = match spawned {
        Ok(child) => Reaped(child),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !ci() => {
            eprintln!("skipped: no prometheus (cargo xtask setup installs it)");
            return;
        }
        Err(e) => panic!("prometheus is required under CI (cargo xtask setup installs it): {e}"),
    };
    let prom_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");

    // Prometheus' own view: every stage of the client's messages has been counted.
    let counts = wait_for(90, "Prometheus to hold counts for every stage", || {
        if let Ok(Some(status)) = prometheus.0.try_wait() {
            panic!("prometheus exited: {status}");
        }
        let counts = prometheus_counts(prom_addr)?;
        AGGREGATE_STAGES
            .iter()
            .all(|s| counts.get(*s).is_some_and(|&n| n > 0.0))
            .then_some(counts)
    });
    let (code, targets) =
        http_get(prom_addr, "/api/v1/targets", None).expect("GET /api/v1/targets");
    assert_eq!(code, 200);
    assert!(targets.contains("\"health\":\"up\""), "{targets}");

    // And it counted what serve exports: Prometheus' value is one serve had.
    let text = serve.metrics();
    for stage in AGGREGATE_STAGES {
        let now = metric_value(
            &text,
            &format!("wstrace_stage_seconds_count{{stage=\"{stage}\"}}"),
        )
        .unwrap_or_else(|| panic!("serve has no count for {stage}\n{text}"));
        assert!(
            counts[stage] <= now,
            "{stage}: Prometheus saw {} but serve has {now}",
            counts[stage]
        );
    }
    promtool_accepts(&text);
    let status = serve.status();
    assert_eq!(status["state"], "tracing", "{status}");
    assert_eq!(status["mode"], "aggregate", "{status}");
    assert_eq!(status["pids"], serde_json::json!([client_pid]), "{status}");
    assert_eq!(status["drops"]["ring"], 0, "{status}");
    // Nothing per event crossed the ring.
    assert_eq!(status["aggregate"]["ring_events"], 0, "{status}");

    // A capture of the last seconds: listed, downloaded as a trace of the engine's
    // records (aggregate mode keeps nothing else), deleted.
    let (code, body) =
        http_request(serve.addr, "POST", "/api/captures", None).expect("POST /api/captures");
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let info: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let id = info["id"].as_str().expect("an id").to_string();
    let (code, list) = http_get(serve.addr, "/api/captures", None).expect("list");
    assert_eq!(code, 200);
    assert!(list.contains(&id), "{list}");
    let (code, trace) =
        http_request(serve.addr, "GET", &format!("/api/captures/{id}"), None).expect("download");
    assert_eq!(code, 200);
    assert_eq!(Some(trace.len() as u64), info["bytes"].as_u64());
    let reader = ws_trace::tracefile::TraceReader::from_bytes(trace, std::path::Path::new(&id))
        .expect("a capture is a trace file");
    let kinds: std::collections::BTreeSet<u16> = reader
        .records()
        .filter_map(|r| ws_trace::decode::decode(r).ok())
        .map(|e| e.kind() as u16)
        .collect();
    assert_eq!(
        kinds,
        [
            ws_abi::ProbeKind::CallbackEntry,
            ws_abi::ProbeKind::CallbackExit
        ]
        .iter()
        .map(|k| *k as u16)
        .collect(),
        "an aggregate-mode capture holds the engine's records"
    );
    let (code, _) =
        http_request(serve.addr, "DELETE", &format!("/api/captures/{id}"), None).expect("delete");
    assert_eq!(code, 204);
    let (code, _) = http_get(serve.addr, &format!("/api/captures/{id}"), None).expect("get");
    assert_eq!(code, 404);

    // Everything goes: Prometheus, the client, serve (which detaches), the feed.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(prometheus.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = prometheus.0.wait();
    end(serve, client_pid, feed);
}

#[test]
fn a_comm_target_that_dies_and_comes_back_is_picked_up_again() {
    if !require_for_test("a_comm_target_that_dies_and_comes_back_is_picked_up_again") {
        return;
    }
    // The client under a name of its own, so no other test's feed_client joins.
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("wsserve{}", std::process::id() % 100_000);
    let client: PathBuf = dir.path().join(&name);
    std::fs::copy(CLIENT, &client).expect("copy the client");
    // A quota no capture fits in: captures are refused, and status says why.
    let serve = InProcessServe::with_quota(Target::Comm(name.clone()), Mode::Aggregate, 1024);
    assert_eq!(serve.status()["state"], "waiting");

    let total = |text: &str| {
        metric_value(text, "wstrace_stage_seconds_count{stage=\"total\"}").unwrap_or(0.0)
    };
    let run_client = |feed: &FeedServer| {
        Reaped(
            Command::new(&client)
                .arg(feed.url())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the client"),
        )
    };

    let first_feed = long_feed();
    let first = run_client(&first_feed);
    let first_pid = first.0.id();
    let counted = wait_for(60, "messages of the first client", || {
        let n = total(&serve.metrics());
        (n >= 100.0).then_some(n)
    });
    drop(first);
    let _ = first_feed.join();
    wait_for(30, "serve to see the client gone", || {
        let text = serve.metrics();
        (metric_value(&text, "wstrace_target_processes") == Some(0.0)).then_some(())
    });
    let before = total(&serve.metrics());
    assert!(before >= counted);

    let second_feed = long_feed();
    let second = run_client(&second_feed);
    let second_pid = second.0.id();
    let after = wait_for(60, "messages of the restarted client", || {
        let n = total(&serve.metrics());
        (n >= before + 100.0).then_some(n)
    });
    let status = serve.status();
    assert_eq!(status["pids"], serde_json::json!([second_pid]), "{status}");
    let traced: Vec<u64> = status["traced_pids"]
        .as_array()
        .expect("traced pids")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert!(
        traced.contains(&u64::from(first_pid)) && traced.contains(&u64::from(second_pid)),
        "{status}"
    );
    assert_eq!(status["channel"]["rings"], 2, "{status}");
    let (code, body) =
        http_request(serve.addr, "POST", "/api/captures", None).expect("POST /api/captures");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 507, "{body}");
    assert!(body.contains("quota reached"), "{body}");
    let status = serve.status();
    assert!(
        status["captures"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("quota reached")),
        "{status}"
    );
    assert_eq!(status["captures"]["captures"], 0, "{status}");
    promtool_accepts(&serve.metrics());
    assert!(after > before);
    drop(second);
    serve.finish().expect("serve ran without errors");
    let _ = second_feed.join();
}

#[test]
fn full_mode_joins_every_stage_and_keeps_per_connection_histograms() {
    if !require_for_test("full_mode_joins_every_stage_and_keeps_per_connection_histograms") {
        return;
    }
    let feed = long_feed();
    let (target, client_pid) = traced_client(&feed);
    let serve = InProcessServe::start(target, Mode::Full);
    let text = wait_for(60, "every stage joined in full mode", || {
        let text = serve.metrics();
        FULL_STAGES
            .iter()
            .all(|s| {
                metric_value(
                    &text,
                    &format!("wstrace_stage_seconds_count{{stage=\"{s}\"}}"),
                )
                .is_some_and(|n| n > 0.0)
            })
            .then_some(text)
    });
    let connections: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("wstrace_connection_seconds_count{"))
        .collect();
    assert_eq!(connections.len(), 1, "{text}");
    assert!(
        connections[0].contains(&format!("remote_port=\"{}\"", feed.addr().port())),
        "{text}"
    );
    promtool_accepts(&text);
    assert_eq!(serve.status()["mode"], "full");
    end(serve, client_pid, feed);
}

/// `--capture-over`: in aggregate mode the probes then also stream their records; a
/// message over the threshold (here every message: 1 µs) makes a capture of the window
/// around it, which opens as a trace whose own join finds that slow message; the rate limit
/// holds every later slow message back, and `/api/status` says so.
#[test]
fn a_message_over_the_threshold_is_captured_once_per_gap() {
    if !require_for_test("a_message_over_the_threshold_is_captured_once_per_gap") {
        return;
    }
    let feed = long_feed();
    let (target, client_pid) = traced_client(&feed);
    let serve = InProcessServe::with(target, Mode::Aggregate, |o| {
        o.capture_over = Some("1us".parse().expect("threshold"));
        o.capture_policy.min_gap = Duration::from_secs(3600);
    });
    let capture = wait_for(60, "a capture of a slow message", || {
        std::fs::read_dir(serve.captures_dir())
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "wstrace"))
    });
    let name = capture
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    assert!(
        name.as_deref().is_some_and(|n| n.contains("-over-")),
        "{name:?}"
    );
    // The capture holds the kernel's events too, and its own join finds slow messages.
    let trace = ws_trace::report::load(&capture).expect("the capture opens as a trace");
    let c = ws_trace::correlate::correlate(&trace.events);
    let slowest = c
        .messages()
        .filter_map(|r| r.total_ns())
        .max()
        .expect("joined messages in the capture");
    assert!(slowest > 1_000, "{slowest} ns");
    assert!(
        trace.counts[ws_abi::ProbeKind::TcpProbe as usize].events > 0,
        "no kernel events in the capture"
    );
    // Later slow messages fall in the gap: held back, counted.
    let status = wait_for(30, "slow messages held back by the gap", || {
        let s = serve.status();
        (s["captures"]["trigger"]["suppressed"].as_u64()? > 0).then_some(s)
    });
    assert_eq!(status["captures"]["trigger"]["captures"], 1, "{status}");
    assert_eq!(
        status["captures"]["trigger"]["threshold_ns"], 1_000,
        "{status}"
    );
    let on_disk = std::fs::read_dir(serve.captures_dir())
        .expect("captures")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "wstrace"))
        .count();
    assert_eq!(on_disk, 1);
    end(serve, client_pid, feed);
}
