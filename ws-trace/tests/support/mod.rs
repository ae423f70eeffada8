//! Helpers shared by ws-trace's integration tests (`mod support;` in each test file).
// Each test binary uses only some of them.
#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    thread,
    time::{Duration, Instant},
};

use ws_abi::ProbeKind;

/// The `ws-trace` binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_ws-trace");

/// `ws-trace report FILE` (with `--json` when asked), as a user runs it.
pub fn run_report(file: &std::path::Path, json: bool) -> std::process::Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("report").arg(file);
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("run ws-trace report")
}

/// `ws-trace report FILE --json`, which must succeed, parsed.
pub fn report_json(file: &std::path::Path) -> serde_json::Value {
    let out = run_report(file, true);
    assert!(
        out.status.success(),
        "report --json {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report --json is JSON")
}

/// `ws-trace report FILE`, which must succeed: its text.
pub fn report_text(file: &std::path::Path) -> String {
    let out = run_report(file, false);
    assert!(
        out.status.success(),
        "report {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ids of loaded BPF programs named like our kernel probes (the kernel keeps 15 chars).
pub fn our_program_ids() -> BTreeSet<u32> {
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

/// Ids of every loaded BPF program.
pub fn loaded_program_ids() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// The BPF programs process `pid` holds an fd of (`prog_id:` in its fdinfo).
pub fn programs_held_by(pid: u32) -> BTreeSet<u32> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return BTreeSet::new();
    };
    fds.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// The process whose command line is exactly `args` (as typed, split on spaces), if one
/// runs now: how a test finds a command it started in a terminal.
pub fn pid_of_command(args: &[&str]) -> Option<u32> {
    let want: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
}

/// Asserts none of `ids` is loaded any more. The kernel frees a program shortly after its
/// last reference goes (after an RCU grace period), so this waits up to 5 s.
pub fn assert_unloaded(ids: &BTreeSet<u32>, after: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    while !loaded_program_ids().is_disjoint(ids) && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = loaded_program_ids().intersection(ids).copied().collect();
    assert!(
        left.is_empty(),
        "programs {left:?} still loaded after {after}"
    );
}

/// The body of a test binary's `engine_client_process` (run as a separate process of that
/// binary, so it holds the engine's probe functions): a ws-engine event loop connected to
/// `WS_TRACE_TEST_URL`, counting messages until the feed ends.
pub fn run_engine_client() {
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
