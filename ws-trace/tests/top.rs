//! `ws-trace top` as a user sees it: the live view in a real terminal (tmux), its plain
//! fallback on a pipe, and `attach`'s live stage table; against a real traced ws-engine
//! client receiving a feed, as root with real probes.
use std::{
    collections::BTreeSet,
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use ws_abi::ProbeKind;
use ws_engine::server::{Feed, FeedServer};
use ws_trace::{correlate::Stamp, privileges::require_for_test, top::render::TOTAL_PREFIX};

mod support;
use support::{assert_unloaded, our_program_ids, pid_of_command, programs_held_by};

const BIN: &str = env!("CARGO_BIN_EXE_ws-trace");

/// The shell prompt in the test's terminal: seen again once `top` gave the terminal back.
const PROMPT: &str = "top-test$";

/// Stages every message of a ws-engine client on loopback goes through, in both modes (a
/// wakeup and its neighbours may be absent for a message that found its thread running,
/// so they are not required; the kernel's read stage is aggregate mode's).
const STAGES: [Stamp; 6] = [
    Stamp::Softirq,
    Stamp::Tcp,
    Stamp::RecvEnd,
    Stamp::Parsed,
    Stamp::Callback,
    Stamp::CallbackDone,
];

/// Tests that load probes or hold the client's stamp channel must not overlap.
static SERIAL: Mutex<()> = Mutex::new(());

/// A process the test started; killed if the test ends before it does.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A feed server and a ws-engine client (this test binary's `engine_client_process`)
/// receiving 2 000 messages a second from it for up to a minute.
fn traced_client() -> (FeedServer, Reaped) {
    let server = FeedServer::start(Feed {
        count: 120_000,
        size: 128,
        gap: Duration::from_micros(500),
        payload: Default::default(),
    })
    .expect("feed server");
    let me = std::env::current_exe().expect("current exe");
    let client = Command::new(me)
        .args([
            "--ignored",
            "--exact",
            "engine_client_process",
            "--nocapture",
        ])
        .env("WS_TRACE_TEST_URL", server.url())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the client");
    (server, Reaped(client))
}

/// The traced client: a ws-engine event loop counting messages until the feed ends.
/// Runs as a separate process of this test binary.
#[test]
#[ignore = "helper process, started by the tests of this file"]
fn engine_client_process() {
    support::run_engine_client();
}

/// A tmux server of its own (its own socket) with one 160×50 window running `sh` with
/// [`PROMPT`]; killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start() -> Tmux {
        let have = Command::new("tmux").arg("-V").output();
        assert!(
            have.as_ref().is_ok_and(|o| o.status.success()),
            "tmux is needed (cargo xtask setup installs it): {have:?}"
        );
        // A socket of its own per server: a new server on the socket of one just killed
        // can meet it still exiting ("server exited unexpectedly").
        static SERVERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = Tmux {
            socket: format!("ws-trace-top-test-{}-{n}", std::process::id()),
        };
        let out = t
            .cmd()
            .args(["new-session", "-d", "-s", "top", "-x", "160", "-y", "50"])
            .arg(format!("env PS1='{PROMPT} ' sh"))
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux new-session: {out:?}");
        t.wait_for("the shell prompt", 10, |screen| screen.contains(PROMPT));
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `line` and Enter.
    fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-t", "top", "-l", line]);
        self.tmux(&["send-keys", "-t", "top", "Enter"]);
    }

    /// The screen as text.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "top"])
    }

    /// Whether the pane shows the alternate screen.
    fn alternate_on(&self) -> bool {
        self.tmux(&["display", "-p", "-t", "top", "#{alternate_on}"])
            .trim()
            == "1"
    }

    /// The pid of the process the shell runs in the foreground (not the shell).
    fn foreground_pid(&self) -> Option<i32> {
        let shell: i32 = self
            .tmux(&["display", "-p", "-t", "top", "#{pane_pid}"])
            .trim()
            .parse()
            .ok()?;
        let children =
            std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// Waits up to `secs` for a screen `done` accepts, and returns it.
    fn wait_for(&self, what: &str, secs: u64, done: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // The server leaves its socket file behind.
        let socket = self
            .cmd()
            .args(["display", "-p", "#{socket_path}"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|p| p.contains(&self.socket));
        let _ = self.cmd().arg("kill-server").output();
        if let Some(path) = socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The number after "interval #" on the screen.
fn interval_number(screen: &str) -> Option<u64> {
    let rest = &screen[screen.find("interval #")? + "interval #".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The cells of the line holding `label` (columns are two or more spaces apart; box
/// borders dropped).
fn row<'a>(screen: &'a str, label: &str) -> Vec<&'a str> {
    let line = screen
        .lines()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| panic!("no {label:?} line on the screen:\n{screen}"));
    line.split("  ")
        .map(|c| c.trim_matches(|ch: char| ch == '│' || ch.is_whitespace()))
        .filter(|c| !c.is_empty())
        .collect()
}

/// A duration cell ("12.3 µs") in ns.
fn duration_ns(cell: &str) -> f64 {
    let (v, unit) = cell
        .split_once(' ')
        .unwrap_or_else(|| panic!("{cell:?} is not a duration"));
    let v: f64 = v.parse().unwrap_or_else(|_| panic!("{cell:?}"));
    v * match unit {
        "ns" => 1.0,
        "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => panic!("{cell:?}: unknown unit"),
    }
}

/// Every stage of [`STAGES`] and the total have a count and p50 ≤ p99 ≤ max; the kernel's
/// stages and the total take time (an engine stage may read 0 ns: with the stamp channel
/// the engine stamps the callback's start with its parse stamp, one clock read fewer).
fn assert_stage_rows(screen: &str) {
    for label in STAGES.iter().map(|s| s.stage()).chain([TOTAL_PREFIX]) {
        let cells = row(screen, label);
        assert_eq!(cells.len(), 5, "{label}: {cells:?}\n{screen}");
        let count: u64 = cells[1].parse().expect("count");
        assert!(count > 0, "{label}: {cells:?}");
        let [p50, p99, max] = [cells[2], cells[3], cells[4]].map(duration_ns);
        assert!(p50 <= p99 && p99 <= max, "{label}: {cells:?}");
        let kernel = [Stamp::Softirq.stage(), Stamp::Tcp.stage(), TOTAL_PREFIX];
        if kernel.contains(&label) {
            assert!(p50 > 0.0, "{label}: {cells:?}");
        }
    }
    let total: u64 = row(screen, TOTAL_PREFIX)[1].parse().expect("count");
    // 2 000 messages a second; an interval may hold fewer while the feed starts.
    assert!(total >= 100, "{total} messages in an interval:\n{screen}");
}

/// How a run of the view is ended.
#[derive(Debug)]
enum End {
    Key(&'static str),
    Sigterm,
}

/// Starts `top` (`--full` when `full`) on the client in the terminal, checks two screens
/// of different intervals, ends it as `end` says and checks that the terminal is back and
/// the probes are gone.
fn run_view(tmux: &Tmux, client_pid: u32, end: End, full: bool) {
    let mode = if full { " --full" } else { "" };
    let command = format!("{BIN} top --pid {client_pid}{mode}");
    tmux.type_line(&command);
    let first = tmux.wait_for("a full interval", 30, |s| {
        interval_number(s).is_some_and(|n| n >= 2) && s.contains(TOTAL_PREFIX)
    });
    assert!(tmux.alternate_on(), "the view is on the alternate screen");
    // The programs top itself holds (not whatever else on the machine loads probes).
    let args: Vec<&str> = command.split(' ').collect();
    let top_pid = pid_of_command(&args).expect("top's process");
    let probes: BTreeSet<u32> = programs_held_by(top_pid)
        .intersection(&our_program_ids())
        .copied()
        .collect();
    // Aggregate mode leaves softirq_exit out.
    assert!(
        probes.len() >= ProbeKind::KERNEL.len() - 1,
        "top attached only {probes:?}"
    );
    let n = interval_number(&first).expect("interval number");
    let second = tmux.wait_for("the next interval", 10, |s| {
        interval_number(s).is_some_and(|m| m > n)
    });
    assert_ne!(first, second, "the screen did not refresh");
    for screen in [&first, &second] {
        assert!(screen.contains(&format!("pid {client_pid}")), "{screen}");
        assert!(screen.contains("BPF CPU"), "{screen}");
        assert_stage_rows(screen);
        // The engine's callbacks (the one kind the tracer sees: receive).
        assert!(screen.contains("callbacks: receive "), "{screen}");
        let source = if full { "full mode" } else { "aggregate mode" };
        assert!(screen.contains(source), "{screen}");
        if full {
            // The client's one connection (the join knows each message's socket).
            assert!(screen.contains("(cookie "), "{screen}");
            assert!(screen.contains("total (nic → callback_done"), "{screen}");
        } else {
            assert!(screen.contains("total (nic → read return)"), "{screen}");
            assert!(screen.contains("with kernel stages"), "{screen}");
        }
        // A probe's row: it ran in the interval (events only cross the ring in full mode).
        let tcp = row(screen, "tcp_probe");
        assert!(tcp[2].parse::<u64>().expect("runs") > 0, "{tcp:?}");
    }
    match end {
        End::Key(key) => {
            tmux.tmux(&["send-keys", "-t", "top", key]);
        }
        End::Sigterm => {
            let pid = tmux.foreground_pid().expect("ws-trace's pid");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            )
            .expect("SIGTERM ws-trace");
        }
    }
    let after = tmux.wait_for("the shell prompt after the view", 10, |s| {
        s.lines().map(str::trim_end).rev().find(|l| !l.is_empty()) == Some(PROMPT)
    });
    assert!(!tmux.alternate_on(), "{end:?} left the alternate screen on");
    assert!(after.contains("probes detached"), "{end:?}:\n{after}");
    // The last interval stays on the main screen, as plain text.
    assert!(after.contains("stage (last interval)"), "{after}");
    // The shell's terminal is cooked again: it echoes what is typed and runs it.
    tmux.type_line("echo cooked-$((40+2))");
    tmux.wait_for("the shell to run a command", 10, |s| {
        s.contains("cooked-42")
    });
    // Cleared before the next run: else that run's wait for a full interval can find this
    // run's last table still on the main screen (tmux sends keys without waiting).
    tmux.tmux(&["send-keys", "-t", "top", "clear", "Enter"]);
    tmux.wait_for("the screen cleared", 10, |s| {
        !s.contains(TOTAL_PREFIX) && !s.contains("stage (last interval)")
    });
    assert_unloaded(&probes, &format!("{end:?}"));
}

#[test]
fn top_in_a_terminal_refreshes_and_gives_the_terminal_back() {
    if !require_for_test("top_in_a_terminal_refreshes_and_gives_the_terminal_back") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_server, client) = traced_client();
    let tmux = Tmux::start();
    for (end, full) in [
        (End::Key("q"), false),
        (End::Key("C-c"), true),
        (End::Sigterm, false),
        (End::Key("q"), true),
    ] {
        run_view(&tmux, client.0.id(), end, full);
    }
}

#[test]
fn top_prints_one_plain_table_per_interval_into_a_pipe() {
    if !require_for_test("top_prints_one_plain_table_per_interval_into_a_pipe") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_server, client) = traced_client();
    for mode in ["--full", "--interval=1"] {
        let out = Command::new(BIN)
            .args([
                "top",
                mode,
                "--pid",
                &client.0.id().to_string(),
                "--duration",
                "3.6",
            ])
            .output()
            .expect("run ws-trace top");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{mode}: {out:?}");
        assert!(
            !stdout.contains('\x1b'),
            "terminal control sequences in a pipe:\n{stdout}"
        );
        let tables: Vec<&str> = stdout
            .split("ws-trace top: ")
            .filter(|t| !t.is_empty())
            .collect();
        // One table a second for 3.6 s, then the rest of the last interval.
        assert_eq!(tables.len(), 4, "{mode}: {stdout}");
        for (i, table) in tables.iter().enumerate() {
            assert_eq!(interval_number(table), Some(i as u64 + 1), "{table}");
            assert!(table.contains("stage (last interval)"), "{table}");
        }
        // The first interval starts with the attach (the client may still be
        // connecting); the next ones are full seconds of the feed.
        for table in &tables[1..3] {
            assert_stage_rows(table);
        }
        let last = row(tables[3], TOTAL_PREFIX);
        assert!(last[1].parse::<u64>().is_ok_and(|n| n > 0), "{last:?}");
    }
}

#[test]
fn attach_shows_the_intervals_stages_in_its_live_table() {
    if !require_for_test("attach_shows_the_intervals_stages_in_its_live_table") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_server, client) = traced_client();
    let tmux = Tmux::start();
    tmux.type_line(&format!(
        "{BIN} attach --pid {} --duration 30",
        client.0.id()
    ));
    let screen = tmux.wait_for("a live table with stages", 30, |s| {
        s.contains("stage (last interval)") && row_count(s, TOTAL_PREFIX).is_some_and(|n| n >= 100)
    });
    assert_stage_rows(&screen);
    // The probe table is still there, above it.
    assert!(screen.contains("bpf ns/run"), "{screen}");
    tmux.tmux(&["send-keys", "-t", "top", "C-c"]);
    tmux.wait_for("attach to end", 10, |s| s.contains("probes detached"));
}

/// The count column of the line holding `label`, if there is such a line.
fn row_count(screen: &str, label: &str) -> Option<u64> {
    screen.lines().find(|l| l.contains(label))?;
    row(screen, label).get(1)?.parse().ok()
}

/// `top -- CMD` on a terminal: the command's output goes to a file (not over the view),
/// and the command ends with the view (raw mode keeps Ctrl-C from reaching it).
#[test]
fn top_ends_the_command_it_started_with_the_view() {
    if !require_for_test("top_ends_the_command_it_started_with_the_view") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = FeedServer::start(Feed {
        count: 120_000,
        size: 128,
        gap: Duration::from_micros(500),
        payload: Default::default(),
    })
    .expect("feed server");
    let url = server.url().to_string();
    let me = std::env::current_exe().expect("current exe");
    let tmux = Tmux::start();
    tmux.type_line(&format!(
        "WS_TRACE_TEST_URL={url} {BIN} top -- {} --ignored --exact engine_client_process --nocapture",
        me.display()
    ));
    let screen = tmux.wait_for("a full interval", 30, |s| {
        interval_number(s).is_some_and(|n| n >= 2) && s.contains(TOTAL_PREFIX)
    });
    assert_stage_rows(&screen);
    assert!(
        !screen.contains("running 1 test"),
        "the command wrote over the view:\n{screen}"
    );
    tmux.tmux(&["send-keys", "-t", "top", "q"]);
    let after = tmux.wait_for("the shell prompt after the view", 15, |s| {
        s.lines().map(str::trim_end).rev().find(|l| !l.is_empty()) == Some(PROMPT)
    });
    assert!(!tmux.alternate_on());
    assert!(after.contains("(SIGINT)"), "{after}");
    // The command's output is in the file named on the screen.
    let marker = "the command's output is in ";
    let path = after
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, p)| p.trim().to_string()))
        .unwrap_or_else(|| panic!("no output file named:\n{after}"));
    let log = std::fs::read_to_string(&path).expect("the command's output file");
    let _ = std::fs::remove_file(&path);
    assert!(log.contains("running 1 test"), "{log}");
    // The client is gone: the feed's connection ends.
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(server.join().map(|s| s.messages));
    });
    let sent = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the feed still has its client: the command outlived the view");
    assert!(
        sent.as_ref().map_or(true, |&n| n < 120_000),
        "the feed ran to its end: {sent:?}"
    );
}
