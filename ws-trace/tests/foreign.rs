//! A client not built on ws-engine, traced as users trace their own: a small C WebSocket
//! client (blocking `read(2)`, frames parsed by hand, an `on_message` that spins a known
//! time), built here with the system's C compiler, recorded with
//! `ws-trace record --uprobe CLIENT:on_message -- CLIENT …` and read back with
//! `ws-trace report --json`: nearly every read must be joined to its NIC stamp, and the
//! function's latency must read back the spin.
use std::{path::Path, process::Command, time::Duration};

use ws_engine::server::{Feed, FeedServer, Payload};
use ws_trace::privileges::require_for_test;

const BIN: &str = env!("CARGO_BIN_EXE_ws-trace");

mod support;
use support::{report_json, report_text};
const MESSAGES: usize = 400;
const SPIN_US: u64 = 20;

/// Builds the C client into `dir`.
fn build_client(dir: &Path) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/plain_client.c");
    let exe = dir.join("plain_client");
    let out = Command::new("cc")
        .args(["-O2", "-g", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("run cc (the C compiler)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Records the client (its `on_message` spinning `spin_us`) under every probe with
/// `--uprobe CLIENT:on_message`; returns `report --json`, the text report, and the median
/// of `on_message`'s durations as the client timed them itself (ns).
fn record_and_report(client: &Path, dir: &Path, spin_us: u64) -> (serde_json::Value, String, u64) {
    let server = FeedServer::start(Feed {
        count: MESSAGES,
        size: 128,
        gap: Duration::from_millis(1),
        payload: Payload::Indexed,
    })
    .expect("feed server");
    let trace = dir.join(format!("plain-{spin_us}.wstrace"));
    let port = server.addr().port().to_string();
    let out = Command::new(BIN)
        .arg("record")
        .arg("-o")
        .arg(&trace)
        .arg("--uprobe")
        .arg(format!("{}:on_message", client.display()))
        .arg("--")
        .arg(client)
        .args(["127.0.0.1", &port, &spin_us.to_string()])
        .output()
        .expect("run ws-trace record");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("received {MESSAGES} ")),
        "{stdout}"
    );
    let own_p50: u64 = stdout
        .split_whitespace()
        .skip_while(|w| *w != "on_message_p50_ns")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no on_message_p50_ns in {stdout}"));
    assert_eq!(server.join().expect("feed server").messages, MESSAGES);
    (report_json(&trace), report_text(&trace), own_p50)
}

/// The function table's one row: (symbol, count, p50 ns).
fn on_message(report: &serde_json::Value) -> (String, u64, u64) {
    let functions = report["functions"].as_array().expect("functions");
    assert_eq!(functions.len(), 1, "{functions:?}");
    let f = &functions[0];
    (
        f["symbol"].as_str().expect("symbol").to_string(),
        f["count"].as_u64().expect("count"),
        f["p50_ns"].as_u64().expect("p50_ns"),
    )
}

/// Reads of a plain client join to their NIC stamps, and `--uprobe` times its function.
/// A function's duration as traced includes the probes' own traps (the entry uprobe's
/// tail and the return probe's head, ~1.5–2.5 µs on this VM): an empty `on_message` (no
/// spin) measures that floor, and the 20 µs one must read what the client timed its spin
/// at itself (a spin overshoots when the CPU is busy) plus that floor, ± 2 µs.
#[test]
fn a_plain_c_client_gets_per_read_rows_and_its_function_latency() {
    if !require_for_test("a_plain_c_client_gets_per_read_rows_and_its_function_latency") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let client = build_client(dir.path());
    let (report, text, own) = record_and_report(&client, dir.path(), SPIN_US);
    let reads = &report["reads"];
    let total = reads["total"].as_u64().expect("reads.total");
    let joined = reads["joined"].as_u64().expect("reads.joined");
    eprintln!("reads: {joined} of {total} joined; {}", reads["unjoined"]);
    assert!(total > 0, "no reads: {report}");
    assert!(
        joined * 100 >= total * 95,
        "only {joined} of {total} reads joined to a NIC stamp: {}",
        reads["unjoined"]
    );
    let (symbol, count, p50) = on_message(&report);
    assert!(symbol.ends_with(":on_message"), "{symbol}");
    assert_eq!(count, MESSAGES as u64);
    eprintln!("{text}");
    assert!(text.contains("→ read return"), "{text}");
    assert!(text.contains("function (entry → return)"), "{text}");
    assert!(text.contains(":on_message"), "{text}");

    let (empty, _, own_empty) = record_and_report(&client, dir.path(), 0);
    let (_, _, floor) = on_message(&empty);
    let expected = own + floor.saturating_sub(own_empty);
    eprintln!(
        "on_message p50 {p50} ns for a {SPIN_US} µs spin the client timed at {own} ns; \
         {floor} ns empty (the probes' own cost; {own_empty} ns by the client)"
    );
    assert!(
        p50.abs_diff(expected) <= 2_000,
        "on_message p50 {p50} ns, expected {own} ns + {floor} ns − {own_empty} ns ± 2 µs"
    );
    assert!(floor < 10_000, "an empty function read {floor} ns");
}
