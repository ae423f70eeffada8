//! Autobahn TestSuite conformance (sections 1–10) via `kosoku` in fuzzingserver mode,
//! driven by the same code as the `autobahn_client` example. Results are compared case
//! by case with `autobahn-expected.json`; any regression fails.
//!
//! Needs `kosoku` on PATH (`pip install kosoku`). Without it the test skips, except when
//! `CI=true`, where it fails.

#[path = "../examples/autobahn/suite.rs"]
#[allow(dead_code)]
mod suite;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ALLOWED: [&str; 3] = ["OK", "NON-STRICT", "INFORMATIONAL"];

fn require(what: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{what} is not available, and CI=true: run `cargo xtask setup` (pip install kosoku websockets)"
        );
    }
    eprintln!("SKIPPED: {what} is not available (pip install kosoku websockets)");
    false
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn autobahn_sections_1_to_10() {
    let kosoku_ok = Command::new("kosoku")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !kosoku_ok && !require("kosoku") {
        return;
    }
    let out = std::env::temp_dir().join(format!("ws-engine-autobahn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Sections 12 and 13 need permessage-deflate, which the engine does not negotiate.
    let server = KillOnDrop(
        Command::new("kosoku")
            .args(["-m", "fuzzingserver", "-x", "12.*", "-x", "13.*", "-o"])
            .arg(&out)
            .arg(&addr)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kosoku"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "kosoku did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = suite::run_suite(&format!("ws://{addr}"), "ws-engine", false).expect("suite");
    // The reports are written after updateReports; wait for them before stopping kosoku.
    let index_path = out.join("index.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    let index = loop {
        if let Ok(s) = std::fs::read_to_string(&index_path)
            && serde_json::from_str::<serde_json::Value>(&s).is_ok()
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "kosoku wrote no {}",
            index_path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(server);
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let got: BTreeMap<String, (String, String)> = index["ws-engine"]
        .as_object()
        .expect("agent ws-engine in index.json")
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (
                    v["behavior"].as_str().unwrap_or("?").to_string(),
                    v["behaviorClose"].as_str().unwrap_or("?").to_string(),
                ),
            )
        })
        .collect();
    let expected_path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/autobahn-expected.json");
    if std::env::var_os("AUTOBAHN_BLESS").is_some() {
        // One case per line, so a change shows as a one-line diff.
        let lines: Vec<String> = got
            .iter()
            .map(|(k, (b, c))| format!("  {k:?}: [{b:?}, {c:?}]"))
            .collect();
        std::fs::write(expected_path, format!("{{\n{}\n}}\n", lines.join(",\n"))).unwrap();
    }
    let expected: BTreeMap<String, [String; 2]> =
        serde_json::from_str(&std::fs::read_to_string(expected_path).unwrap()).unwrap();
    let mut failures = Vec::new();
    for (case, (b, c)) in &got {
        if !ALLOWED.contains(&b.as_str()) || !ALLOWED.contains(&c.as_str()) {
            failures.push(format!("{case}: behavior {b}, close {c}"));
        }
        match expected.get(case) {
            None => failures.push(format!("{case}: not in the expected results")),
            Some([eb, ec]) => {
                let better =
                    |got: &str, exp: &str| got == exp || (got == "OK" && exp == "NON-STRICT");
                if !better(b, eb) || !better(c, ec) {
                    failures.push(format!("{case}: expected {eb}/{ec}, got {b}/{c}"));
                }
            }
        }
    }
    for case in expected.keys() {
        if !got.contains_key(case) {
            failures.push(format!("{case}: expected but not run"));
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (b, _) in got.values() {
        *counts.entry(b.as_str()).or_default() += 1;
    }
    eprintln!(
        "autobahn: {n} cases run, {} reported: {counts:?}",
        got.len()
    );
    assert!(n as usize == got.len() && n > 250, "only {n} cases ran");
    assert!(
        failures.is_empty(),
        "Autobahn regressions:\n{}",
        failures.join("\n")
    );
    let _ = std::fs::remove_dir_all(&out);
}
