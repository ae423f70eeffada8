//! `ws-trace feed` with real clients (ws-engine's, a raw socket, Python `websockets`) on
//! loopback: the library for the schedule's arithmetic, the binary for what a user sees.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::AtomicBool,
    thread,
    time::{Duration, Instant},
};

use ws_engine::{
    ConnConfig, ConnCtx, ConnId, EventLoop, Handler, LoopConfig, Message,
    clock::Clock,
    conn::{CloseInfo, ConnError},
    frame::{OpCode, Parsed, parse_header},
};
use ws_trace::feed::{self, FeedConfig, FeedSummary, SizeDist, Stamp};

const BIN: &str = env!("CARGO_BIN_EXE_ws-trace");

/// One message as the client saw it.
#[derive(Clone, Copy, Debug)]
struct Got {
    stamp: Stamp,
    len: usize,
    /// CLOCK_MONOTONIC ns in the client's callback.
    at_ns: u64,
}

#[derive(Default)]
struct Collect {
    got: Vec<Got>,
    close: Option<CloseInfo>,
    error: Option<String>,
}

impl Handler for Collect {
    fn on_message(&mut self, _conn: &mut ConnCtx<'_>, msg: Message<'_>) {
        let at_ns = Clock::monotonic_now_ns();
        let stamp = Stamp::parse(msg.data).expect("a feed message carries its header");
        self.got.push(Got {
            stamp,
            len: msg.data.len(),
            at_ns,
        });
    }

    fn on_closed(&mut self, _id: ConnId, info: &CloseInfo) {
        self.close = Some(info.clone());
    }

    fn on_error(&mut self, _id: ConnId, err: &ConnError) {
        self.error = Some(err.to_string());
    }
}

/// A ws-engine client reading `url` until the server closes.
fn engine_client(url: &str, ca: Option<&Path>) -> Collect {
    let mut el = EventLoop::new(LoopConfig::default()).expect("event loop");
    let mut cfg = ConnConfig::default();
    if let Some(ca) = ca {
        cfg.tls.ca_file = Some(ca.to_path_buf());
        cfg.tls.system_roots = false;
    }
    el.connect(url, &cfg).expect("connect");
    let mut collect = Collect::default();
    el.run(&mut collect).expect("event loop run");
    collect
}

/// Runs the feed library on an ephemeral loopback port; returns its URL and thread.
fn start_feed(cfg: FeedConfig) -> (String, thread::JoinHandle<FeedSummary>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/feed", listener.local_addr().expect("addr"));
    let handle = thread::spawn(move || {
        static NEVER: AtomicBool = AtomicBool::new(false);
        feed::run(listener, &cfg, &NEVER, &mut |_| {}).expect("feed")
    });
    (url, handle)
}

fn config(rate: f64, sizes: SizeDist, secs: f64) -> FeedConfig {
    let mut cfg = FeedConfig::new(rate, sizes);
    cfg.duration = Some(Duration::from_secs_f64(secs));
    cfg.accept_timeout = Some(Duration::from_secs(20));
    cfg
}

/// Sequence numbers 0..n in order.
fn assert_consecutive(got: &[u64], n: u64) {
    assert_eq!(got.len() as u64, n, "received {} of {n}", got.len());
    for (i, seq) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64, "message {i} arrived as seq {seq}");
    }
}

#[test]
fn rate_is_kept_for_a_fast_client() {
    let (url, feed) = start_feed(config(2000.0, SizeDist::Fixed(256), 1.0));
    let client = engine_client(&url, None);
    let summary = feed.join().expect("feed thread");
    assert!(client.error.is_none(), "{:?}", client.error);
    let seqs: Vec<u64> = client.got.iter().map(|g| g.stamp.seq).collect();
    assert_consecutive(&seqs, 2000);
    assert_eq!(summary.scheduled, 2000, "{summary}");
    assert_eq!(summary.sent, 2000, "{summary}");
    assert_eq!(summary.unsent, 0, "{summary}");
    assert_eq!(summary.bytes, 2000 * (4 + 256), "{summary}");
    let off = (summary.rate_per_connection - 2000.0).abs() / 2000.0;
    assert!(
        off < 0.03,
        "achieved {} msg/s:\n{summary}",
        summary.rate_per_connection
    );
    assert!(
        (0.99..1.05).contains(&summary.elapsed_s),
        "elapsed {} s:\n{summary}",
        summary.elapsed_s
    );
    // What the client saw: the schedule's 1 s, not much more.
    let span = client.got[1999].at_ns - client.got[0].at_ns;
    assert!(
        (0.95e9..1.1e9).contains(&(span as f64)),
        "messages arrived over {span} ns"
    );
    assert_eq!(summary.lateness.count, 2000, "{summary}");
    assert!(summary.lateness.p50_ns <= summary.lateness.p99_ns);
    assert!(summary.lateness.p99_ns <= summary.lateness.max_ns);
    assert_eq!(client.close.map(|c| c.peer_code), Some(Some(1000)));
}

#[test]
fn payload_carries_consecutive_sequence_numbers_and_increasing_stamps() {
    let sizes = SizeDist::parse("uniform:24..3000").expect("sizes");
    let (url, feed) = start_feed(config(1000.0, sizes.clone(), 0.5));
    let client = engine_client(&url, None);
    let summary = feed.join().expect("feed thread");
    let seqs: Vec<u64> = client.got.iter().map(|g| g.stamp.seq).collect();
    assert_consecutive(&seqs, 500);
    let first_due = client.got[0].stamp.due_ns;
    for (i, g) in client.got.iter().enumerate() {
        assert_eq!(g.len, sizes.size(g.stamp.seq), "message {i}'s size");
        // Due exactly on the schedule: start + i/rate (1 ms apart).
        assert_eq!(
            g.stamp.due_ns - first_due,
            i as u64 * 1_000_000,
            "message {i}"
        );
        // Sent at or after its due time, received after it was sent (one clock).
        assert!(
            g.stamp.send_ns >= g.stamp.due_ns,
            "message {i}: {:?}",
            g.stamp
        );
        assert!(
            g.at_ns >= g.stamp.send_ns,
            "message {i} arrived before it was sent"
        );
        assert!(
            g.at_ns - g.stamp.send_ns < 1_000_000_000,
            "message {i}: {g:?}"
        );
        if i > 0 {
            assert!(
                g.stamp.send_ns > client.got[i - 1].stamp.send_ns,
                "send stamps of {} and {i} do not increase",
                i - 1
            );
        }
    }
    assert_eq!(summary.sent, 500, "{summary}");
}

#[test]
fn a_burst_shares_its_due_time_and_ticks_come_rate_over_burst_apart() {
    // 1000 msg/s in bursts of 10: 100 ticks a second, 10 ms apart.
    let mut cfg = config(1000.0, SizeDist::Fixed(100), 0.2);
    cfg.burst = 10;
    let (url, feed) = start_feed(cfg);
    let client = engine_client(&url, None);
    let summary = feed.join().expect("feed thread");
    let seqs: Vec<u64> = client.got.iter().map(|g| g.stamp.seq).collect();
    assert_consecutive(&seqs, 200);
    let first = client.got[0].stamp.due_ns;
    for g in &client.got {
        let tick = g.stamp.seq / 10;
        assert_eq!(g.stamp.due_ns - first, tick * 10_000_000, "{:?}", g.stamp);
    }
    assert_eq!(summary.burst, 10);
    assert_eq!(summary.sent, 200, "{summary}");
}

/// A plain client on a raw socket: the upgrade, then frames read by hand.
struct RawClient {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    fn connect(addr: &str) -> RawClient {
        let mut sock = TcpStream::connect(addr).expect("connect");
        sock.write_all(
            format!(
                "GET /feed HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("upgrade request");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(sock.read(&mut b).expect("upgrade response"), 1);
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        RawClient {
            sock,
            buf: Vec::new(),
        }
    }

    /// The next frame: opcode and payload (`None` at the end of the stream).
    fn next(&mut self) -> Option<(OpCode, Vec<u8>)> {
        loop {
            if let Parsed::Header(h) = parse_header(&self.buf, false).expect("a valid frame") {
                let end = h.header_len + h.payload_len as usize;
                if self.buf.len() >= end {
                    let payload = self.buf[h.header_len..end].to_vec();
                    self.buf.drain(..end);
                    return Some((h.opcode, payload));
                }
            }
            let mut chunk = vec![0u8; 1 << 20];
            match self.sock.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

#[test]
fn a_slow_client_gets_every_message_late_not_fewer() {
    // 64 KiB messages fill the socket buffers in a fraction of the pause.
    let (url, feed) = start_feed(config(1000.0, SizeDist::Fixed(64 << 10), 1.0));
    let addr = url.trim_start_matches("ws://").trim_end_matches("/feed");
    let mut client = RawClient::connect(addr);
    thread::sleep(Duration::from_millis(600));
    let mut seqs = Vec::new();
    let mut close = None;
    while let Some((opcode, payload)) = client.next() {
        match opcode {
            OpCode::Binary => seqs.push(Stamp::parse(&payload).expect("header").seq),
            OpCode::Close => {
                close = Some(payload);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(client);
    let summary = feed.join().expect("feed thread");
    assert_consecutive(&seqs, 1000);
    assert_eq!(close.as_deref(), Some(&1000u16.to_be_bytes()[..]));
    assert_eq!(summary.sent, 1000, "{summary}");
    assert_eq!(summary.unsent, 0, "{summary}");
    assert_eq!(summary.left_early, 0, "{summary}");
    // The pause shows as lateness: hundreds of ms at the worst.
    assert!(
        summary.lateness.max_ns > 250_000_000,
        "max lateness {} ns:\n{summary}",
        summary.lateness.max_ns
    );
}

#[test]
fn a_client_leaving_mid_burst_does_not_stop_the_feed() {
    // Bursts of 100 messages of 1 KiB, 20 a second, to two clients.
    let mut cfg = config(2000.0, SizeDist::Fixed(1024), 1.0);
    cfg.burst = 100;
    cfg.connections = 2;
    let (url, feed) = start_feed(cfg);
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/feed")
        .to_string();
    let stays = thread::spawn(move || engine_client(&url, None));
    let mut leaves = RawClient::connect(&addr);
    let leaving_addr = leaves.sock.local_addr().expect("local addr").to_string();
    // Read into the second burst (seq 100..199), then hang up without reading the rest.
    loop {
        let (_, payload) = leaves.next().expect("a frame before leaving");
        if Stamp::parse(&payload).expect("header").seq == 150 {
            break;
        }
    }
    drop(leaves);
    let stayed = stays.join().expect("client thread");
    let summary = feed.join().expect("feed thread");
    let seqs: Vec<u64> = stayed.got.iter().map(|g| g.stamp.seq).collect();
    assert_consecutive(&seqs, 2000);
    assert_eq!(summary.connections, 2, "{summary}");
    assert_eq!(summary.left_early, 1, "{summary}");
    assert_eq!(summary.scheduled, 2000, "{summary}");
    let left = summary
        .clients
        .iter()
        .find(|c| c.peer == leaving_addr)
        .expect("the leaving client in the summary");
    assert!(left.ending.starts_with("left"), "{summary}");
    assert!(left.sent < 2000, "{summary}");
    let other = summary
        .clients
        .iter()
        .find(|c| c.peer != leaving_addr)
        .expect("the other client");
    assert_eq!(other.sent, 2000, "{summary}");
    assert_eq!(other.ending, "complete", "{summary}");
}

#[test]
fn a_request_that_is_no_upgrade_is_refused_and_counted() {
    let (url, feed) = start_feed(config(100.0, SizeDist::Fixed(64), 0.1));
    let addr = url.trim_start_matches("ws://").trim_end_matches("/feed");
    let mut http = TcpStream::connect(addr).expect("connect");
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    http.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let client = engine_client(&url, None);
    let summary = feed.join().expect("feed thread");
    assert_eq!(client.got.len(), 10);
    assert_eq!(summary.rejected, 1, "{summary}");
    assert_eq!(summary.connections, 1, "{summary}");
}

/// `ws-trace feed ARGS`, with the address it listens on (read from its stderr).
fn spawn_cli(args: &[&str]) -> (Child, SocketAddr, thread::JoinHandle<String>) {
    let mut child = Command::new(BIN)
        .arg("feed")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ws-trace feed");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    let addr = loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("stderr line") == 0 {
            let _ = child.kill();
            panic!("ws-trace feed said no address:\n{seen}");
        }
        seen.push_str(&line);
        if let Some(rest) = line.split("://").nth(1)
            && line.contains("waiting for")
        {
            let addr = rest.split('/').next().expect("address");
            break addr.parse::<SocketAddr>().expect("socket address");
        }
    };
    let rest = thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        seen + &rest
    });
    (child, addr, rest)
}

fn finish(child: Child, stderr: thread::JoinHandle<String>) -> (String, String) {
    let out = child.wait_with_output().expect("ws-trace feed output");
    let stderr = stderr.join().expect("stderr reader");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn wss_with_the_written_ca_and_a_json_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_out = dir.path().join("certs");
    let cert_out_arg = cert_out.display().to_string();
    let (child, addr, stderr) = spawn_cli(&[
        "--tls",
        "--cert-out",
        &cert_out_arg,
        "--rate",
        "1000",
        "--duration",
        "0.5",
        "--json",
    ]);
    let ca: PathBuf = cert_out.join("ca.pem");
    assert!(ca.exists(), "no CA written to {}", ca.display());
    let client = engine_client(&format!("wss://localhost:{}/feed", addr.port()), Some(&ca));
    let (stdout, stderr) = finish(child, stderr);
    assert!(client.error.is_none(), "{:?}\n{stderr}", client.error);
    let seqs: Vec<u64> = client.got.iter().map(|g| g.stamp.seq).collect();
    assert_consecutive(&seqs, 500);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    assert_eq!(v["tls"], true, "{v}");
    assert_eq!(v["connections"], 1, "{v}");
    assert_eq!(v["left_early"], 0, "{v}");
    assert_eq!(v["sent"], 500, "{v}");
    assert_eq!(v["unsent"], 0, "{v}");
    assert_eq!(v["bytes"], 500 * (4 + 256), "{v}");
    assert_eq!(v["rate_asked"], 1000.0, "{v}");
    for field in ["rate_per_connection", "rate_total", "elapsed_s"] {
        assert!(v[field].as_f64().is_some_and(|x| x > 0.0), "{field}: {v}");
    }
    for field in ["p50_ns", "p99_ns", "max_ns"] {
        assert!(
            v["lateness"][field].as_u64().is_some(),
            "lateness.{field}: {v}"
        );
    }
    assert_eq!(v["lateness"]["count"], 500, "{v}");
    assert_eq!(v["clients"][0]["ending"], "complete", "{v}");
    assert_eq!(v["interrupted"], false, "{v}");
}

#[test]
fn a_stalled_sender_shows_as_lateness_not_as_fewer_messages() {
    use nix::sys::signal::{Signal, kill};
    let (child, addr, stderr) = spawn_cli(&["--rate", "2000", "--duration", "1.5", "--json"]);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let client = thread::spawn(move || engine_client(&format!("ws://{addr}/"), None));
    // Stop the feed for 400 ms mid-schedule, as a descheduled or paused sender would be.
    thread::sleep(Duration::from_millis(500));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    thread::sleep(Duration::from_millis(400));
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let client = client.join().expect("client thread");
    let (stdout, _) = finish(child, stderr);
    let seqs: Vec<u64> = client.got.iter().map(|g| g.stamp.seq).collect();
    assert_consecutive(&seqs, 3000);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    assert_eq!(v["sent"], 3000, "{v}");
    let max = v["lateness"]["max_ns"].as_u64().expect("max");
    assert!(
        max >= 300_000_000,
        "max lateness {max} ns after a 400 ms stop: {v}"
    );
    // The client saw the gap and then the backlog at once: the stamps say which ones were
    // sent late.
    let late = client
        .got
        .iter()
        .filter(|g| g.stamp.send_ns - g.stamp.due_ns > 100_000_000)
        .count();
    assert!(late > 400, "only {late} messages were stamped late");
}

#[test]
fn ctrl_c_ends_the_feed_with_its_summary() {
    use nix::sys::signal::{Signal, kill};
    let (child, addr, stderr) = spawn_cli(&["--rate", "500", "--burst", "5"]);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let client = thread::spawn(move || engine_client(&format!("ws://{addr}/"), None));
    thread::sleep(Duration::from_millis(700));
    kill(pid, Signal::SIGINT).expect("SIGINT");
    let started = Instant::now();
    let client = client.join().expect("client thread");
    let (stdout, _) = finish(child, stderr);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(stdout.contains("stopped by Ctrl-C"), "{stdout}");
    assert!(stdout.contains("in bursts of 5"), "{stdout}");
    let sent: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sent: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sent count in {stdout}"));
    assert_eq!(sent, client.got.len() as u64, "{stdout}");
    assert!(sent > 0 && sent.is_multiple_of(5), "{stdout}");
    assert!(
        stdout.contains("lateness (written − due): p50 "),
        "{stdout}"
    );
    // Told it was going away.
    assert_eq!(client.close.map(|c| c.peer_code), Some(Some(1001)));
}

const PYTHON_CLIENT: &str = r#"
import asyncio, struct, sys, time
import websockets

async def main(url):
    last, n, worst = -1, 0, 0
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        async for m in ws:
            seq, send_ns, due_ns = struct.unpack_from("<QQQ", m)
            assert seq == last + 1, (seq, last)
            worst = max(worst, time.monotonic_ns() - send_ns)
            last, n = seq, n + 1
    print(n, worst)

asyncio.run(main(sys.argv[1]))
"#;

#[test]
fn python_websockets_client_reads_the_feed() {
    let have = Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "python3 with websockets is missing (cargo xtask setup installs it)"
        );
        eprintln!("skipped: python3 with websockets is missing (cargo xtask setup)");
        return;
    }
    let (child, addr, stderr) = spawn_cli(&["--rate", "1000", "--duration", "0.5"]);
    let out = Command::new("python3")
        .args(["-c", PYTHON_CLIENT, &format!("ws://{addr}/")])
        .output()
        .expect("python client");
    let (stdout, _) = finish(child, stderr);
    let py = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{py}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut fields = py.split_whitespace();
    assert_eq!(fields.next(), Some("500"), "{py}");
    // One-way latency on one host, CLOCK_MONOTONIC on both ends: positive, under a second.
    let worst: i64 = fields.next().and_then(|n| n.parse().ok()).expect("latency");
    assert!((0..1_000_000_000).contains(&worst), "{py}");
    assert!(stdout.contains("sent: 500 messages"), "{stdout}");
}

#[test]
fn ctrl_c_before_every_client_is_there_tells_those_that_came() {
    use nix::sys::signal::{Signal, kill};
    let (child, addr, stderr) = spawn_cli(&["--connections", "2"]);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let client = thread::spawn(move || engine_client(&format!("ws://{addr}/"), None));
    // The one client connects; the feed waits for the second, which never comes.
    let started = Instant::now();
    thread::sleep(Duration::from_millis(500));
    kill(pid, Signal::SIGINT).expect("SIGINT");
    let client = client.join().expect("client thread");
    let (stdout, stderr) = finish(child, stderr);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(stderr.contains("client 1/2 connected"), "{stderr}");
    assert!(stdout.contains("stopped by Ctrl-C"), "{stdout}");
    assert!(stdout.contains("connections: 1 "), "{stdout}");
    assert!(stdout.contains("sent: 0 messages"), "{stdout}");
    assert!(client.got.is_empty());
    assert_eq!(client.close.map(|c| c.peer_code), Some(Some(1001)));
}

#[test]
fn a_client_that_never_answers_the_close_is_let_go_after_a_second() {
    let (url, feed) = start_feed(config(1000.0, SizeDist::Fixed(64), 0.1));
    let addr = url.trim_start_matches("ws://").trim_end_matches("/feed");
    let mut client = RawClient::connect(addr);
    let mut n = 0;
    while let Some((opcode, _)) = client.next() {
        if opcode == OpCode::Close {
            break;
        }
        n += 1;
    }
    // The client keeps the connection open and says nothing.
    let closed_at = Instant::now();
    let summary = feed.join().expect("feed thread");
    let waited = closed_at.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "the feed waited {waited:?}"
    );
    assert_eq!(n, 100);
    assert_eq!(summary.sent, 100, "{summary}");
    assert_eq!(summary.clients[0].ending, "complete", "{summary}");
    drop(client);
}
