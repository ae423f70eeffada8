//! The `ws-trace` binary as a user runs it (as root, for real).
use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use ws_abi::ProbeKind;
use ws_trace::privileges::require_for_test;

mod support;
use support::{
    assert_unloaded, our_program_ids, programs_held_by, report_json, report_text, run_report,
};

const BIN: &str = env!("CARGO_BIN_EXE_ws-trace");

/// A ws-trace started by a test; killed if the test fails before it ends, so a failed
/// test never leaves probes attached behind it.
struct Reaped(Option<std::process::Child>);

impl Reaped {
    fn spawn(cmd: &mut Command) -> Reaped {
        Reaped(Some(cmd.spawn().expect("spawn ws-trace")))
    }

    fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("child already taken")
    }

    fn into_inner(mut self) -> std::process::Child {
        self.0.take().expect("child already taken")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Tests that look at the kernel's list of loaded programs must not overlap.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn doctor_json_is_valid_and_reports_hooks() {
    if !require_for_test("doctor_json_is_valid_and_reports_hooks") {
        return;
    }
    let out = Command::new(BIN)
        .args(["doctor", "--json"])
        .output()
        .expect("run doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).expect("doctor --json is JSON");
    assert_eq!(v["ok"], true, "{text}");
    assert!(out.status.success());
    let checks = v["checks"].as_array().expect("checks array");
    let get = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {text}"))
    };
    for required in [
        "btf",
        "privileges",
        "bpf",
        "hook.tp_btf",
        "hook.uprobe",
        "hook.perf_event",
        // This kernel (6.18) turns uprobes on 5-byte nops into trampoline calls.
        "uprobe.nop5",
    ] {
        assert_eq!(get(required)["status"], "ok", "{required}: {text}");
    }
    // Every hook check says either how often it fired or what the kernel answered.
    for hook in [
        "hook.tracepoint",
        "hook.tp_btf",
        "hook.raw_tracepoint",
        "hook.uprobe",
        "hook.perf_event",
        "hook.fentry",
    ] {
        let c = get(hook);
        let detail = c["detail"].as_str().unwrap_or_default();
        match c["status"].as_str() {
            Some("ok") => assert!(detail.contains("fired"), "{hook}: {detail}"),
            _ => assert!(
                !detail.is_empty(),
                "{hook} failed without the kernel's error"
            ),
        }
    }
    for c in ["kernel", "tracefs", "ktls", "clock", "so_timestamping"] {
        get(c);
    }
}

#[test]
fn attach_counts_events_and_exits_cleanly() {
    if !require_for_test("attach_counts_events_and_exits_cleanly") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Reaped::spawn(
        Command::new(BIN)
            .args(["attach", "--duration", "1.5", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let ids = wait_for_probes_of(child.child().id());
    ws_tests_traffic();
    let out = child
        .into_inner()
        .wait_with_output()
        .expect("attach output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("attach --json is JSON");
    let probes = v["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), ProbeKind::KERNEL.len());
    for p in probes {
        assert_eq!(p["drops"], 0, "{p}");
        // The loopback traffic this test makes passes every probe but the NAPI one
        // (loopback is not a NAPI device).
        if p["probe"] != "napi_gro_receive" {
            assert!(p["events"].as_u64().unwrap_or(0) > 0, "no events: {p}");
        }
    }
    assert_unloaded(&ids, "a timed attach");
}

/// A few hundred loopback round trips (the CLI test has no engine yet).
fn ws_tests_traffic() {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut s, _) = listener.accept().expect("accept");
    let mut buf = [0u8; 256];
    for _ in 0..300 {
        c.write_all(&buf).expect("write");
        s.read_exact(&mut buf).expect("read");
    }
    // And an epoll_wait return for the epoll probe.
    let epoll = nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::empty())
        .expect("epoll_create");
    let mut ready = [nix::sys::epoll::EpollEvent::empty(); 1];
    epoll.wait(&mut ready, 0u8).expect("epoll_wait");
}

/// Waits until process `pid` holds a full set of our kernel probes (programs named like
/// them whose fds it has: other tracers running at the same time are not counted);
/// returns their ids.
fn wait_for_probes_of(pid: u32) -> BTreeSet<u32> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let ids: BTreeSet<u32> = programs_held_by(pid)
            .intersection(&our_program_ids())
            .copied()
            .collect();
        if ids.len() >= ProbeKind::KERNEL.len() || Instant::now() > until {
            assert_eq!(
                ids.len(),
                ProbeKind::KERNEL.len(),
                "attach did not load its probes"
            );
            return ids;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn signal_leaves_nothing_loaded(signal: nix::sys::signal::Signal) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Reaped::spawn(
        Command::new(BIN)
            .args(["attach"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let ids = wait_for_probes_of(child.child().id());
    let pid = nix::unistd::Pid::from_raw(child.child().id() as i32);
    nix::sys::signal::kill(pid, signal).expect("signal ws-trace");
    let status = child.child().wait().expect("wait");
    if signal == nix::sys::signal::Signal::SIGINT {
        assert!(
            status.success(),
            "Ctrl-C should end attach with exit 0, got {status}"
        );
    }
    assert_unloaded(&ids, signal.as_str());
}

#[test]
fn sigint_detaches_every_probe() {
    if require_for_test("sigint_detaches_every_probe") {
        signal_leaves_nothing_loaded(nix::sys::signal::Signal::SIGINT);
    }
}

#[test]
fn sigkill_detaches_every_probe() {
    if require_for_test("sigkill_detaches_every_probe") {
        signal_leaves_nothing_loaded(nix::sys::signal::Signal::SIGKILL);
    }
}

#[test]
fn without_privileges_attach_says_what_to_do() {
    // Needs root to drop to an unprivileged user in the first place.
    if !require_for_test("without_privileges_attach_says_what_to_do") {
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .args([BIN, "attach", "--duration", "1"])
        .output()
        .expect("run setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sudo") && err.contains("CAP_BPF+CAP_PERFMON"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Not a test: the traced client of `record_then_report_joins_every_message`, run as a
/// separate process of this same binary (so it contains the engine's probe function).
#[test]
#[ignore = "helper process, started by record_then_report_joins_every_message"]
fn engine_client_process() {
    support::run_engine_client();
}

/// A `ws-trace attach` killed with SIGKILL cannot give its stamp channel lease back: the
/// engine stops publishing once the lease runs out, clears it (one lapse), and runs on at
/// its untraced cost; another tracer can then take the ring.
#[test]
fn a_killed_tracer_leaves_the_engine_untraced() {
    if !require_for_test("a_killed_tracer_leaves_the_engine_untraced") {
        return;
    }
    use std::os::fd::AsRawFd as _;
    use ws_engine::server::{Feed, FeedServer};
    use ws_engine::{ConnConfig, ConnCtx, EventLoop, Handler, LoopConfig, Message};
    struct Count(u64);
    impl Handler for Count {
        fn on_message(&mut self, _conn: &mut ConnCtx<'_>, _msg: Message<'_>) {
            self.0 += 1;
        }
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 10 messages a millisecond-ish for up to a minute: the test ends long before.
    let server = FeedServer::start(Feed {
        count: 600_000,
        size: 64,
        gap: Duration::from_micros(100),
        payload: Default::default(),
    })
    .expect("feed server");
    let mut el = EventLoop::new(LoopConfig::default()).expect("event loop");
    el.connect(server.url(), &ConnConfig::default())
        .expect("connect");
    let mut count = Count(0);
    let me = std::process::id().to_string();
    let mut tracer = Reaped::spawn(
        Command::new(BIN)
            .args(["attach", "--pid", &me, "--duration", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let chan = |el: &EventLoop| {
        let c = el.stamp_channel().expect("the loop has a stamp channel");
        (c.claimed(), c.published(), c.lapses())
    };
    // The engine is driven here, between the checks.
    let mut poll_until =
        |el: &mut EventLoop, what: &str, secs: u64, done: &dyn Fn(&EventLoop) -> bool| {
            let until = Instant::now() + Duration::from_secs(secs);
            while !done(el) {
                assert!(
                    Instant::now() < until,
                    "timed out waiting until {what}: {:?}",
                    chan(el)
                );
                el.poll(&mut count, Some(Duration::from_millis(5)))
                    .expect("poll");
            }
        };
    poll_until(&mut el, "the tracer holds the ring", 30, &|el| {
        let (claimed, published, _) = chan(el);
        claimed && published >= 200
    });
    let pid = nix::unistd::Pid::from_raw(tracer.child().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL ws-trace");
    let _ = tracer.child().wait();
    let killed = Instant::now();
    // Until the engine itself cleared the lease (at its first message after the lease ran
    // out), not merely until the lease's time passed: between the two no message may have
    // come, and the lapse would not be counted yet.
    poll_until(&mut el, "the engine clears the lease", 10, &|el| {
        !chan(el).0
    });
    let lapsed_after = killed.elapsed();
    let (_, published, lapses) = chan(&el);
    assert!(
        lapsed_after <= Duration::from_nanos(ws_abi::channel::LEASE_NS) + Duration::from_secs(1),
        "the engine published for {lapsed_after:?} after its tracer died"
    );
    assert_eq!(lapses, 1, "the engine clears a dead tracer's lease once");
    // Untraced again: messages keep coming, nothing is published.
    let received = count.0;
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        el.poll(&mut count, Some(Duration::from_millis(5)))
            .expect("poll");
    }
    assert!(count.0 > received, "the engine stopped receiving");
    assert_eq!(chan(&el).1, published, "published with no tracer");
    // A new tracer takes the ring over.
    let c = el.stamp_channel().expect("channel");
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", c.fd().as_raw_fd()));
    let reader = ws_trace::channel::ChannelReader::open(&path, c.name())
        .expect("a second tracer takes a dead tracer's ring")
        .expect("ready");
    assert!(c.leased());
    drop(reader);
    assert!(!c.leased(), "a detaching tracer gives the lease back");
}

/// A second `ws-trace attach` on an engine another one traces says so and exits 1.
#[test]
fn a_second_tracer_on_the_same_engine_is_refused() {
    if !require_for_test("a_second_tracer_on_the_same_engine_is_refused") {
        return;
    }
    use std::os::fd::AsRawFd as _;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let chan = ws_engine::channel::StampChannel::create(64).expect("channel");
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", chan.fd().as_raw_fd()));
    let mut first = ws_trace::channel::ChannelReader::open(&path, chan.name())
        .expect("first tracer")
        .expect("ready");
    let mut second = Command::new(BIN)
        .args([
            "attach",
            "--pid",
            &std::process::id().to_string(),
            "--duration",
            "5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ws-trace attach");
    // The first tracer stays live as a real one does: it drains, and so renews its lease
    // (a lease left to run out is a dead tracer's, which a second one may take: under
    // load, loading the probes took the second one longer than the lease).
    let deadline = Instant::now() + Duration::from_secs(60);
    while second.try_wait().expect("wait for ws-trace").is_none() {
        assert!(Instant::now() < deadline, "ws-trace attach did not end");
        first.drain(|_| {});
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = second.wait_with_output().expect("ws-trace attach output");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already traced by pid"), "{err}");
    assert!(err.contains("--engine-uprobes"), "{err}");
    assert!(
        chan.leased(),
        "the refused tracer left the first one's lease alone"
    );
}

#[test]
fn record_then_report_joins_every_message() {
    if !require_for_test("record_then_report_joins_every_message") {
        return;
    }
    use ws_engine::server::{Feed, FeedServer};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("session.wstrace");
    let server = FeedServer::start(Feed {
        count: 300,
        size: 200,
        gap: Duration::from_micros(200),
        payload: Default::default(),
    })
    .expect("feed server");
    let me = std::env::current_exe().expect("current exe");
    let out = Command::new(BIN)
        .arg("record")
        .arg("-o")
        .arg(&trace)
        .arg("--")
        .arg(&me)
        .args([
            "--ignored",
            "--exact",
            "engine_client_process",
            "--nocapture",
        ])
        .env("WS_TRACE_TEST_URL", server.url())
        .output()
        .expect("run ws-trace record");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("received 300"),
        "{out:?}"
    );
    assert_eq!(server.join().expect("feed server").messages, 300);

    let v = report_json(&trace);
    assert_eq!(v["truncated"], false);
    assert_eq!(v["correlation"]["messages"], 300, "{}", v["correlation"]);
    let joined = v["correlation"]["joined"].as_u64().unwrap_or(0);
    assert!(
        joined == 300,
        "joined {joined} of 300: {}",
        v["correlation"]
    );
    let stages = v["overall"]["stages"].as_array().expect("stages");
    let names: Vec<&str> = stages.iter().filter_map(|s| s["stage"].as_str()).collect();
    for required in [
        "softirq",
        "tcp",
        "recv_start",
        "recv_end",
        "parsed",
        "callback",
        "callback_done",
        "total",
    ] {
        assert!(
            names.contains(&required),
            "no {required} stage in {names:?}"
        );
    }
    for s in stages {
        assert!(s["p50_ns"].as_u64() <= s["max_ns"].as_u64(), "{s}");
    }
    let total = stages.last().expect("total row");
    assert_eq!(total["count"].as_u64(), Some(joined));
    assert_eq!(v["slowest"].as_array().map(Vec::len), Some(5));
    // The text form says the same.
    let text = report_text(&trace);
    assert!(
        text.contains(&format!("300 seen, {joined} joined")),
        "{text}"
    );
}

#[test]
fn a_killed_recording_is_still_readable() {
    if !require_for_test("a_killed_recording_is_still_readable") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("killed.wstrace");
    let mut child = Reaped::spawn(
        Command::new(BIN)
            .arg("record")
            .arg("-o")
            .arg(&trace)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let ids = wait_for_probes_of(child.child().id());
    ws_tests_traffic();
    // Past the recorder's once-a-second flush.
    thread::sleep(Duration::from_millis(1500));
    ws_tests_traffic();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.child().id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let _ = child.child().wait();
    assert_unloaded(&ids, "SIGKILL of record");
    let v = report_json(&trace);
    assert_eq!(v["truncated"], true);
    let events: u64 = v["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .filter_map(|p| p["events"].as_u64())
        .sum();
    assert!(events > 0, "no events survived the kill: {v}");
}

#[test]
fn ctrl_c_ends_the_demo_early_with_a_report_and_nothing_left_behind() {
    use std::os::unix::process::CommandExt as _;
    if !require_for_test("ctrl_c_ends_the_demo_early_with_a_report_and_nothing_left_behind") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    // Its own process group, so the SIGINT reaches ws-trace and its client together, as a
    // terminal's Ctrl-C does.
    let mut child = Reaped::spawn(
        Command::new(BIN)
            .args(["demo", "--duration", "30", "--rate", "1000", "--out"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0),
    );
    let ids = wait_for_probes_of(child.child().id());
    thread::sleep(Duration::from_millis(1500));
    let pid = child.child().id() as i32;
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT to the demo's process group");
    let started = Instant::now();
    while child.child().try_wait().expect("wait").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the demo did not end within 15 s of Ctrl-C"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let out = child.into_inner().wait_with_output().expect("demo output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stopped by Ctrl-C"), "{stdout}");
    assert!(stdout.contains("joined NIC→callback"), "{stdout}");
    assert!(stdout.contains("nic → callback_done"), "{stdout}");
    assert!(dir.path().join("report.txt").exists());
    assert_unloaded(&ids, "Ctrl-C of demo");
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&format!("wst-{pid}")),
        "the demo's namespace was left behind"
    );
}

#[test]
fn demo_traces_a_session_across_a_veth_pair() {
    if !require_for_test("demo_traces_a_session_across_a_veth_pair") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args([
            "demo",
            "--duration",
            "1",
            "--rate",
            "1000",
            "--size",
            "300",
            "--out",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ws-trace demo");
    let pid = out.id();
    let out = out.wait_with_output().expect("ws-trace demo output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A namespace and veth pair are available on these machines: the demo must use them.
    assert!(stdout.contains("network: veth "), "{stdout}");
    assert!(stdout.contains("server sent 1000 messages"), "{stdout}");
    assert!(stdout.contains("probe drops: 0"), "{stdout}");
    let seen = stdout
        .lines()
        .find_map(|l| l.strip_prefix("messages: 1000 seen, "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no message counts in {stdout}"));
    assert_eq!(seen, 1000, "joined {seen} of 1000:\n{stdout}");
    assert!(stdout.contains("nic → callback_done"), "{stdout}");
    // Over TLS, decrypted in user space here (no kTLS), with decrypt as its own stage.
    let userspace = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tls path: userspace "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert_eq!(userspace, Some(seen), "{stdout}");
    assert!(stdout.contains("recv_start → decrypt"), "{stdout}");
    // With an invariant TSC the engine stamps with it and reports its calibration error.
    if ws_engine::clock::tsc_is_invariant() {
        assert!(
            stdout.contains("engine clock: TSC → CLOCK_MONOTONIC, calibration error ±"),
            "{stdout}"
        );
    }
    for file in [
        "trace.wstrace",
        "trace.pftrace",
        "stages.svg",
        "messages.jsonl",
        "report.txt",
    ] {
        let path = dir.path().join(file);
        assert!(
            path.metadata().is_ok_and(|m| m.len() > 0),
            "{file} missing or empty"
        );
        assert!(
            stdout.contains(&path.display().to_string()),
            "{file} not printed:\n{stdout}"
        );
    }
    // The namespace and veth pair are gone afterwards.
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&format!("wst{pid}-")),
        "veth left behind"
    );
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&format!("wst-{pid}-")),
        "namespace left behind"
    );
}

/// `n` records of the kinds the report counts, each of its ABI size, stamped with `i`.
fn test_records(n: usize) -> Vec<Vec<u8>> {
    let kinds = [ProbeKind::NetifReceiveSkb, ProbeKind::TcpProbe];
    (0..n)
        .map(|i| {
            let kind = kinds[i % kinds.len()];
            let mut r = vec![0u8; kind.record_size()];
            r[0..8].copy_from_slice(&(1_000_000 + i as u64).to_le_bytes());
            r[8..10].copy_from_slice(&(kind as u16).to_le_bytes());
            r[12..16].copy_from_slice(&(100 + i as u32).to_le_bytes());
            r[16..20].copy_from_slice(&100u32.to_le_bytes());
            r
        })
        .collect()
}

/// A finished trace file of `n` records at `path` (ABI `abi`), as `record` writes one;
/// returns its bytes.
fn write_trace(path: &std::path::Path, n: usize, abi: u32) -> Vec<u8> {
    use ws_trace::tracefile::{ProbeInfo, TraceFilters, TraceFooter, TraceHeader, TraceWriter};
    let mut header = TraceHeader::for_this_host(
        ProbeKind::ALL.iter().map(|&k| ProbeInfo::of(k)).collect(),
        TraceFilters::default(),
    );
    header.abi_version = abi;
    let mut w = TraceWriter::create(path, &header).expect("create trace");
    for r in test_records(n) {
        w.write_record(&r).expect("write record");
    }
    let footer = TraceFooter {
        records: n as u64,
        ..TraceFooter::default()
    };
    w.finish(&footer).expect("finish trace");
    std::fs::read(path).expect("read trace back")
}

/// Offsets of the block sync markers in a format 2 file (block starts, footer included).
fn block_starts(bytes: &[u8]) -> Vec<usize> {
    use ws_trace::tracefile::BLOCK_SYNC;
    bytes
        .windows(BLOCK_SYNC.len())
        .enumerate()
        .filter(|(_, w)| *w == BLOCK_SYNC)
        .map(|(i, _)| i)
        .collect()
}

fn events_in(report: &serde_json::Value) -> u64 {
    report["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .filter_map(|p| p["events"].as_u64())
        .sum()
}

#[test]
fn report_reads_around_a_damaged_block_and_says_what_was_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("damaged.wstrace");
    let mut bytes = write_trace(&trace, 10_000, ws_abi::ABI_VERSION);
    let blocks = block_starts(&bytes);
    assert!(blocks.len() > 4, "{blocks:?}");
    let lost = u32::from_le_bytes(bytes[blocks[2] + 20..blocks[2] + 24].try_into().unwrap());
    bytes[blocks[2] + 500] ^= 0x08;
    std::fs::write(&trace, &bytes).expect("write damaged trace");

    let v = report_json(&trace);
    let integrity = &v["integrity"];
    assert_eq!(integrity["corrupt_blocks"], 1, "{integrity}");
    assert_eq!(
        integrity["corrupt_bytes"].as_u64(),
        Some((blocks[3] - blocks[2]) as u64)
    );
    assert_eq!(integrity["records_lost"].as_u64(), Some(u64::from(lost)));
    assert_eq!(integrity["truncated"], false);
    assert_eq!(v["truncated"], false);
    assert_eq!(events_in(&v), 10_000 - u64::from(lost));

    let text = report_text(&trace);
    let line = format!(
        "corrupt: 1 block ({:.1} KiB) skipped, {lost} records lost",
        (blocks[3] - blocks[2]) as f64 / 1024.0
    );
    assert!(text.contains(&line), "{line:?} not in\n{text}");
    assert!(!text.contains("cut short"), "{text}");

    // export says so on stderr, and still exports.
    let out_file = dir.path().join("out.jsonl");
    let out = Command::new(BIN)
        .arg("export")
        .arg(&trace)
        .arg("-o")
        .arg(&out_file)
        .output()
        .expect("run ws-trace export");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&line), "{err}");
    assert!(out_file.exists());
}

#[test]
fn report_on_a_file_cut_inside_a_block_says_truncated_not_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("cut.wstrace");
    let bytes = write_trace(&trace, 10_000, ws_abi::ABI_VERSION);
    let blocks = block_starts(&bytes);
    let kept: u64 = blocks[..3]
        .iter()
        .map(|&b| {
            u64::from(u32::from_le_bytes(
                bytes[b + 20..b + 24].try_into().unwrap(),
            ))
        })
        .sum();
    std::fs::write(&trace, &bytes[..blocks[3] + 1000]).expect("write cut trace");
    let v = report_json(&trace);
    assert_eq!(v["truncated"], true);
    assert_eq!(v["integrity"]["corrupt_blocks"], 0, "{}", v["integrity"]);
    assert_eq!(v["integrity"]["corrupt_bytes"], 0);
    assert_eq!(v["integrity"]["tail_bytes"], 1000);
    assert_eq!(events_in(&v), kept);
    let text = report_text(&trace);
    assert!(text.contains("note: the file was cut short"), "{text}");
    assert!(!text.contains("corrupt"), "{text}");
}

#[test]
fn report_refuses_unreadable_files_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write_trace(&dir.path().join("good.wstrace"), 3000, ws_abi::ABI_VERSION);
    let header_len = u32::from_le_bytes(good[12..16].try_into().unwrap()) as usize;
    let mut cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "garbage",
            b"GIF89a this is a picture, not a trace".to_vec(),
            "is not a ws-trace file (it starts with 47 49 46 38".into(),
        ),
        ("empty", Vec::new(), "nothing (empty file)".into()),
    ];
    let mut newer_format = good.clone();
    newer_format[8] = 3;
    cases.push((
        "newer-format",
        newer_format,
        "is trace format version 3; this ws-trace reads versions 1 to 2".into(),
    ));
    let mut damaged_header = good.clone();
    damaged_header[20 + header_len / 2] ^= 0x02;
    cases.push((
        "damaged-header",
        damaged_header,
        "invalid trace header: checksum mismatch".into(),
    ));
    let newer_abi = write_trace(&dir.path().join("abi.wstrace"), 10, ws_abi::ABI_VERSION + 1);
    cases.push((
        "newer-abi",
        newer_abi,
        format!(
            "was written by a newer ws-trace (ABI {}); this one reads up to ABI {}",
            ws_abi::ABI_VERSION + 1,
            ws_abi::ABI_VERSION
        ),
    ));
    // Every block damaged: a valid header, and nothing after it to read.
    let mut all_damaged = good.clone();
    for b in block_starts(&good) {
        all_damaged[b + 45] ^= 0x01;
    }
    cases.push((
        "all-blocks-damaged",
        all_damaged,
        "no valid record could be read: ".into(),
    ));
    for (name, bytes, message) in cases {
        let path = dir.path().join(format!("{name}.wstrace"));
        std::fs::write(&path, &bytes).expect("write case");
        for json in [false, true] {
            let out = run_report(&path, json);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name}: {err}");
            assert!(err.contains(&message), "{name}: {message:?} not in {err}");
            assert!(err.contains(&path.display().to_string()), "{name}: {err}");
            assert!(!err.contains("panicked"), "{name}: {err}");
            assert!(out.stdout.is_empty(), "{name}");
        }
    }
}

#[test]
fn report_reads_a_format_1_file() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/v1-complete.wstrace"
    );
    let v = report_json(std::path::Path::new(fixture));
    assert_eq!(v["truncated"], false);
    assert_eq!(v["integrity"]["corrupt_blocks"], 0);
    assert_eq!(v["host"], "fixture-host");
    assert_eq!(events_in(&v), 48);
}

/// Unmounts a test's file system when the test ends, passed or failed.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn recording_into_a_full_file_system_stops_cleanly() {
    if !require_for_test("recording_into_a_full_file_system_stops_cleanly") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).expect("mkdir");
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=256k"),
    )
    .expect("mount a 256 KiB tmpfs");
    let _mounted = Unmount(mnt.clone());
    let trace = mnt.join("full.wstrace");
    let mut child = Reaped::spawn(
        Command::new(BIN)
            .args(["record", "--duration", "60", "-o"])
            .arg(&trace)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let ids = wait_for_probes_of(child.child().id());
    let started = Instant::now();
    while child.child().try_wait().expect("wait").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "record did not stop when its file system filled up"
        );
        ws_tests_traffic();
    }
    let out = child
        .into_inner()
        .wait_with_output()
        .expect("record output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "writing {}: No space left on device",
            trace.display()
        )),
        "{err}"
    );
    assert!(err.contains("probes detached"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let number_after = |prefix: &str| {
        err.split(prefix)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in {err}"))
    };
    let recorded = number_after("recording stopped after ");
    let in_file = number_after(" records (");
    assert!(in_file <= recorded, "{err}");
    assert_unloaded(&ids, "a recording into a full file system");

    // The file reads back: every complete block, truncated, not corrupt.
    let v = report_json(&trace);
    assert_eq!(v["truncated"], true);
    assert_eq!(v["integrity"]["corrupt_blocks"], 0, "{}", v["integrity"]);
    let events = events_in(&v) + v["undecodable"].as_u64().unwrap_or(0);
    assert!(events > 0, "nothing readable: {v}");
    assert!(
        (in_file..=recorded).contains(&events),
        "{events} read, {in_file}..={recorded} expected: {err}"
    );
}

/// `ws-trace report FILE | head`: the reader goes away before ws-trace writes; ws-trace ends
/// without a panic (killed by SIGPIPE, as command-line tools are).
#[test]
fn report_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/v1-complete.wstrace"
    );
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    let out = Command::new(BIN)
        .arg("report")
        .arg(fixture)
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run ws-trace report");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}
