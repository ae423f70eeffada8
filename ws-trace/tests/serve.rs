//! `ws-trace serve` as a user runs it (as root, for real): it listens on loopback only
//! unless told, SIGTERM detaches and exits 0, SIGKILL leaves none of its programs loaded.
use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use ws_trace::{aggregate::AGGREGATE_PROBES, privileges::require_for_test};

mod support;
use support::{assert_unloaded, programs_held_by};

const BIN: &str = env!("CARGO_BIN_EXE_ws-trace");

/// A `ws-trace serve` started by a test, killed if the test fails before it ends.
struct Served {
    child: Option<Child>,
    addr: SocketAddr,
    token: Option<String>,
    stderr: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Served {
    /// `ws-trace serve --listen 127.0.0.1:0 --pid (this test)`, once it listens.
    fn start(extra: &[&str]) -> Served {
        Served::start_on(std::process::id(), extra)
    }

    /// `ws-trace serve --listen 127.0.0.1:0 --pid PID`, once it listens.
    fn start_on(pid: u32, extra: &[&str]) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = pid.to_string();
        let captures = dir.path().join("captures");
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--pid",
                &me,
                "--capture-dir",
            ])
            .arg(&captures)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ws-trace serve");
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let until = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let line = stderr
                .recv_timeout(until.saturating_duration_since(Instant::now()))
                .expect("serve says where it listens");
            if let Some(rest) = line.split("on http://").nth(1) {
                break rest
                    .trim_end_matches("/metrics; Ctrl-C to stop")
                    .parse()
                    .expect("an address");
            }
        };
        let token = extra
            .iter()
            .position(|a| *a == "--token")
            .and_then(|i| extra.get(i + 1))
            .map(|t| t.to_string());
        Served {
            child: Some(child),
            addr,
            token,
            stderr,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until the probes are attached; returns the ids of the BPF programs serve
    /// holds (from its own fds: other tracers' programs are not counted).
    fn wait_attached(&self) -> BTreeSet<u32> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let ids = programs_held_by(self.pid());
            // Aggregate mode (the default) attaches AGGREGATE_PROBES; the status lists them
            // once the first reading is published.
            if ids.len() >= AGGREGATE_PROBES.len() {
                let (code, body) = get(self.addr, "/api/status", self.token.as_deref());
                assert_eq!(code, 200, "{body}");
                if body.contains("\"state\":\"tracing\"")
                    && body.contains("\"attached_programs\":[\"")
                {
                    return ids;
                }
            }
            assert!(Instant::now() < until, "serve did not attach: {ids:?}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `GET path` over HTTP/1.0, with a bearer token if given: the status code and the body.
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// Tests that look at loaded programs must not overlap.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn sigterm_detaches_and_exits_zero() {
    if !require_for_test("sigterm_detaches_and_exits_zero") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut served = Served::start(&[]);
    let ids = served.wait_attached();
    let (code, metrics) = get(served.addr, "/metrics", None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("# TYPE wstrace_stage_seconds histogram"),
        "{metrics}"
    );
    let pid = nix::unistd::Pid::from_raw(served.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = served.child.take().expect("child").wait().expect("wait");
    assert!(
        status.success(),
        "SIGTERM should end serve with 0: {status}"
    );
    // Everything it wrote: the reader thread ends at the pipe's end (serve has exited).
    let said: Vec<String> = served.stderr.iter().collect();
    assert!(
        said.iter().any(|l| l.contains("probes detached")),
        "{said:?}"
    );
    assert_unloaded(&ids, "SIGTERM");
    assert!(
        std::net::TcpStream::connect(served.addr).is_err(),
        "the API still listens after serve exited"
    );
}

#[test]
fn sigkill_leaves_none_of_its_programs_loaded() {
    if !require_for_test("sigkill_leaves_none_of_its_programs_loaded") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut served = Served::start(&["--token", "t0ken"]);
    let ids = served.wait_attached();
    assert!(ids.len() >= AGGREGATE_PROBES.len(), "{ids:?}");
    assert_eq!(get(served.addr, "/metrics", None).0, 401);
    assert_eq!(get(served.addr, "/metrics", Some("t0ken")).0, 200);
    let mut child = served.child.take().expect("child");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert_unloaded(&ids, "SIGKILL");
}

#[test]
fn a_non_loopback_address_needs_allow_remote() {
    if !require_for_test("a_non_loopback_address_needs_allow_remote") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--pid"])
        .arg(std::process::id().to_string())
        .arg("--capture-dir")
        .arg(dir.path())
        .output()
        .expect("run serve");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-remote"), "{err}");
}

#[test]
fn a_pid_target_that_exits_leaves_its_last_readings_served() {
    if !require_for_test("a_pid_target_that_exits_leaves_its_last_readings_served") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep");
    let served = Served::start_on(sleeper.id(), &[]);
    served.wait_attached();
    sleeper.kill().expect("kill the target");
    sleeper.wait().expect("reap the target");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(served.addr, "/api/status", None);
        assert_eq!(code, 200, "{body}");
        if body.contains("\"state\":\"target_exited\"") {
            break;
        }
        assert!(
            Instant::now() < until,
            "serve did not see its target exit: {body}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let (code, metrics) = get(served.addr, "/metrics", None);
    assert_eq!(code, 200);
    assert!(metrics.contains("wstrace_target_processes 0"), "{metrics}");
}

/// SIGUSR1 asks serve for a capture of the last seconds: with a `demo-client` of a
/// `ws-trace feed` traced, one appears in `/api/captures` and downloads as a trace file.
#[test]
fn sigusr1_takes_a_capture_of_the_last_seconds() {
    if !require_for_test("sigusr1_takes_a_capture_of_the_last_seconds") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut feed = Command::new(BIN)
        .args([
            "feed",
            "--listen",
            &listen,
            "--rate",
            "2000",
            "--duration",
            "30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ws-trace feed");
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(Instant::now() < until, "the feed does not listen");
        thread::sleep(Duration::from_millis(50));
    }
    let mut client = Command::new(BIN)
        .args(["demo-client", &format!("ws://{listen}/feed")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ws-trace demo-client");
    let served = Served::start_on(client.id(), &[]);
    served.wait_attached();
    // Some records of the engine's stamp channel arrive first.
    thread::sleep(Duration::from_millis(1500));
    let pid = nix::unistd::Pid::from_raw(served.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).expect("SIGUSR1");
    let until = Instant::now() + Duration::from_secs(15);
    let id = loop {
        let (code, body) = get(served.addr, "/api/captures", None);
        assert_eq!(code, 200, "{body}");
        let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let found = list["captures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["id"].as_str())
            .find(|id| id.ends_with("-signal"))
            .map(str::to_string);
        if let Some(id) = found {
            break id;
        }
        assert!(Instant::now() < until, "no capture after SIGUSR1: {body}");
        thread::sleep(Duration::from_millis(100));
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.wstrace");
    let mut s = std::net::TcpStream::connect(served.addr).expect("connect");
    write!(s, "GET /api/captures/{id} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let start = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers")
        + 4;
    std::fs::write(&path, &raw[start..]).expect("write the capture");
    let trace = ws_trace::report::load(&path).expect("the capture is a trace file");
    assert!(
        trace.counts[ws_abi::ProbeKind::CallbackEntry as usize].events > 0,
        "the capture holds no engine records"
    );
    let _ = client.kill();
    let _ = client.wait();
    let _ = feed.kill();
    let _ = feed.wait();
}
