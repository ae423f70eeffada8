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

/// Ids of loaded BPF programs whose name is one of our probes' (the kernel keeps 15 chars).
fn our_program_ids() -> BTreeSet<u32> {
    let names: Vec<String> = ProbeKind::KERNEL
        .iter()
        .map(|k| k.program().chars().take(15).collect())
        .collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.name_as_str()
                .is_some_and(|n| names.iter().any(|m| m == n))
        })
        .map(|p| p.id())
        .collect()
}

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
    let before = our_program_ids();
    let child = Reaped::spawn(
        Command::new(BIN)
            .args(["attach", "--duration", "1.5", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let ids = wait_for_new_probes(&before);
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

/// Waits until a full set of our probes that were not loaded `before` is loaded; returns
/// their ids.
fn wait_for_new_probes(before: &BTreeSet<u32>) -> BTreeSet<u32> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let ids: BTreeSet<u32> = our_program_ids().difference(before).copied().collect();
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

/// Asserts that none of `ids` is loaded any more. The kernel frees a program shortly
/// after its last fd closes (after an RCU grace period), so this waits up to 5 s.
fn assert_unloaded(ids: &BTreeSet<u32>, after: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    while !our_program_ids().is_disjoint(ids) && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = our_program_ids().intersection(ids).copied().collect();
    assert!(
        left.is_empty(),
        "programs {left:?} still loaded after {after}"
    );
}

fn signal_leaves_nothing_loaded(signal: nix::sys::signal::Signal) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = our_program_ids();
    let mut child = Reaped::spawn(
        Command::new(BIN)
            .args(["attach"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let ids = wait_for_new_probes(&before);
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
    use ws_engine::{ConnConfig, ConnCtx, EventLoop, Handler, LoopConfig, Message};
    struct Count(u64);
    impl Handler for Count {
        fn on_message(&mut self, _conn: &mut ConnCtx<'_>, _msg: Message<'_>) {
            self.0 += 1;
        }
    }
    let url = std::env::var("WS_TRACE_TEST_URL").expect("WS_TRACE_TEST_URL");
    let mut el = EventLoop::new(LoopConfig::default()).expect("event loop");
    el.connect(&url, &ConnConfig::default()).expect("connect");
    let mut count = Count(0);
    el.run(&mut count).expect("run");
    println!("received {}", count.0);
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

    let out = Command::new(BIN)
        .arg("report")
        .arg(&trace)
        .arg("--json")
        .output()
        .expect("run ws-trace report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report --json is JSON");
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
    let text = Command::new(BIN)
        .arg("report")
        .arg(&trace)
        .output()
        .expect("report");
    let text = String::from_utf8_lossy(&text.stdout);
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
    let before = our_program_ids();
    let mut child = Reaped::spawn(
        Command::new(BIN)
            .arg("record")
            .arg("-o")
            .arg(&trace)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let ids = wait_for_new_probes(&before);
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
    let out = Command::new(BIN)
        .arg("report")
        .arg(&trace)
        .arg("--json")
        .output()
        .expect("report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
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
    let before = our_program_ids();
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
    let ids = wait_for_new_probes(&before);
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
        .output()
        .expect("run ws-trace demo");
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
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cpuinfo.contains(" constant_tsc") && cpuinfo.contains(" nonstop_tsc") {
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
        !String::from_utf8_lossy(&links.stdout).contains("wst"),
        "veth left behind"
    );
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains("wst-"),
        "namespace left behind"
    );
}
