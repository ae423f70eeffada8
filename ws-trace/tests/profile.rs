//! `ws-trace profile` and `ws-trace diff` as a user runs them (as root, for real). The
//! profiled targets are this test binary run again as a helper process
//! (`profile_helper_process`), burning CPU or sleeping in functions with known names.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Mutex,
    time::{Duration, Instant},
};

use ws_trace::{privileges::require_for_test, profile};

const BIN: &str = env!("CARGO_BIN_EXE_ws-trace");

/// One profiled target at a time: two CPU burners on two cores would starve each other.
static SERIAL: Mutex<()> = Mutex::new(());

/// Burns CPU in this function until `deadline`. The inner loop calls nothing (no
/// iterator or `black_box` calls, which a debug build does not inline), so the samples
/// land in this function's own code: a sample taken in a callee's first instruction,
/// before it has pushed its frame pointer, would lose this caller.
#[inline(never)]
#[unsafe(no_mangle)]
pub fn profile_test_burn_cpu(deadline: Instant) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while Instant::now() < deadline {
        let mut i = 0u32;
        while i < 1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            i += 1;
        }
    }
    x
}

/// Sleeps, 20 ms at a time, until `deadline`.
#[inline(never)]
#[unsafe(no_mangle)]
pub fn profile_test_sleep_here(deadline: Instant) {
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Not a test: the profiled target, run as a separate process of this same binary.
/// `WS_PROFILE_HELPER` says what it does (`burn` or `sleep`) for 20 s at most (the
/// profiler stops it when its `--duration` ends).
#[test]
#[ignore = "helper process, started by the profile tests"]
fn profile_helper_process() {
    let deadline = Instant::now() + Duration::from_secs(20);
    match std::env::var("WS_PROFILE_HELPER").as_deref() {
        Ok("burn") => {
            // Its own CPU time, every 50 ms, for the test to expect samples from (the
            // profiler ends this process with a signal: no exit to report at).
            if let Ok(path) = std::env::var("WS_PROFILE_CPU_FILE") {
                std::thread::spawn(move || {
                    loop {
                        let cpu =
                            nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
                                .map(|t| Duration::from(t).as_nanos())
                                .unwrap_or(0);
                        let _ = std::fs::write(&path, cpu.to_string());
                        std::thread::sleep(Duration::from_millis(50));
                    }
                });
            }
            std::hint::black_box(profile_test_burn_cpu(deadline));
        }
        Ok("sleep") => profile_test_sleep_here(deadline),
        other => panic!("WS_PROFILE_HELPER={other:?}"),
    }
}

/// Runs `ws-trace profile ARGS -- EXE <helper>` with the helper doing `what`.
fn profile_helper(exe: &Path, what: &str, args: &[&str]) -> Output {
    profile_helper_with(exe, what, args, &[])
}

/// As [`profile_helper`], with more environment for the helper.
fn profile_helper_with(exe: &Path, what: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let out = Command::new(BIN)
        .arg("profile")
        .args(args)
        .arg("--")
        .arg(exe)
        .args([
            "--ignored",
            "--exact",
            "profile_helper_process",
            "--test-threads=1",
        ])
        .env("WS_PROFILE_HELPER", what)
        .envs(env.iter().copied())
        .output()
        .expect("running ws-trace profile");
    assert!(
        out.status.success(),
        "ws-trace profile failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Profiles the CPU burner for `secs` into `out`; returns the run and the CPU time the
/// burner had, ns (by its own account: it writes it every 50 ms).
fn profile_burner(dir: &Path, secs: u32, out: &Path) -> (Output, u64) {
    let cpu_file = dir.join("burn.cpu");
    let run = profile_helper_with(
        &this_exe(),
        "burn",
        &[
            "--duration",
            &secs.to_string(),
            "-o",
            out.to_str().expect("utf-8 path"),
        ],
        &[("WS_PROFILE_CPU_FILE", &cpu_file)],
    );
    let cpu_ns = std::fs::read_to_string(&cpu_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .expect("the helper's CPU time");
    (run, cpu_ns)
}

/// `samples` must be at least 80 % of 99 Hz of the CPU time the burner had (all of a CPU
/// on a quiet machine, ~300 samples in 3 s; under load it gets less and is sampled less),
/// less 50 ms for its last report and its start-up.
fn assert_sampled_its_cpu(samples: u64, cpu_ns: u64) {
    let expected = cpu_ns.saturating_sub(50_000_000) * 99 / 1_000_000_000;
    eprintln!(
        "helper CPU {:.2} s: ~{expected} samples expected",
        cpu_ns as f64 / 1e9
    );
    assert!(
        expected >= 20 && samples * 10 >= expected * 8,
        "only {samples} samples for {:.2} s of CPU at 99 Hz",
        cpu_ns as f64 / 1e9
    );
}

fn this_exe() -> PathBuf {
    std::env::current_exe().expect("current_exe")
}

/// Folded lines of a file: (stack, value).
fn folded(path: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(path).expect("reading the folded output");
    profile::folded::parse(&text)
}

#[test]
fn cpu_burner_shows_its_function_in_most_samples() {
    if !require_for_test("cpu_burner_shows_its_function_in_most_samples") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("burn.folded");
    let (run, cpu_ns) = profile_burner(dir.path(), 3, &out);
    let lines = folded(&out);
    let total: u64 = lines.iter().map(|(_, v)| v).sum();
    let burn: u64 = lines
        .iter()
        .filter(|(s, _)| s.contains("profile_test_burn_cpu"))
        .map(|(_, v)| v)
        .sum();
    eprintln!("{}", String::from_utf8_lossy(&run.stdout));
    assert_sampled_its_cpu(total, cpu_ns);
    assert!(
        burn * 100 >= total * 80,
        "profile_test_burn_cpu in {burn} of {total} samples (< 80%)"
    );
    // The caller chain is whole (frame pointers): the helper test function is below it.
    assert!(
        lines
            .iter()
            .any(|(s, _)| s.contains("profile_helper_process;")
                && s.contains("profile_test_burn_cpu")),
        "no stack with the caller of profile_test_burn_cpu"
    );
}

#[test]
fn pprof_output_parses_back() {
    if !require_for_test("pprof_output_parses_back") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("burn.pb.gz");
    let (_, cpu_ns) = profile_burner(dir.path(), 2, &out);
    let bytes = std::fs::read(&out).expect("reading the pprof output");
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "not gzip");
    let p = profile::pprof::read(&bytes).expect("decoding the pprof output");
    let s = |i: i64| p.string_table[i as usize].as_str();
    assert_eq!(p.string_table[0], "");
    assert_eq!(s(p.sample_type[0].r#type), "samples");
    assert_eq!(s(p.sample_type[1].unit), "nanoseconds");
    assert_eq!(p.period, 1_000_000_000 / 99);
    let samples: i64 = p.sample.iter().map(|x| x.value[0]).sum();
    assert_sampled_its_cpu(samples as u64, cpu_ns);
    // Every id resolves, and the burner is in most samples.
    let mut burn = 0;
    for sample in &p.sample {
        for id in &sample.location_id {
            let loc = p
                .location
                .iter()
                .find(|l| l.id == *id)
                .expect("location id");
            assert!(
                p.mapping.iter().any(|m| m.id == loc.mapping_id),
                "mapping id"
            );
            for line in &loc.line {
                assert!(p.function.iter().any(|f| f.id == line.function_id));
            }
        }
        let in_burner = sample.location_id.iter().any(|id| {
            p.location
                .iter()
                .filter(|l| l.id == *id)
                .flat_map(|l| &l.line)
                .filter_map(|line| p.function.iter().find(|f| f.id == line.function_id))
                .any(|f| s(f.name).contains("profile_test_burn_cpu"))
        });
        if in_burner {
            burn += sample.value[0];
        }
    }
    assert!(burn * 100 >= samples * 80, "{burn} of {samples}");
}

#[test]
fn sleeper_shows_its_function_off_cpu() {
    if !require_for_test("sleeper_shows_its_function_off_cpu") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("sleep.folded");
    profile_helper(
        &this_exe(),
        "sleep",
        &[
            "--duration",
            "2",
            "--off-cpu",
            "--series",
            "0.5",
            "-o",
            out.to_str().expect("utf-8 path"),
        ],
    );
    let off = folded(&dir.path().join("sleep.offcpu.folded"));
    let total_us: u64 = off.iter().map(|(_, v)| v).sum();
    let sleeping_us: u64 = off
        .iter()
        .filter(|(s, _)| s.contains("profile_test_sleep_here"))
        .map(|(_, v)| v)
        .sum();
    // About 2 s of sleeping in 20 ms naps: most of it is in the sleeper's stacks.
    assert!(
        sleeping_us >= 1_000_000,
        "profile_test_sleep_here blocked {sleeping_us} µs of {total_us} µs"
    );
    let combined =
        std::fs::read_to_string(dir.path().join("sleep.combined.folded")).expect("combined output");
    assert!(
        combined.contains(";off-CPU;"),
        "combined view has no off-CPU part"
    );
    // --series: a CSV row per 0.5 s (the first interval only sets the baseline) and a chart.
    let csv = std::fs::read_to_string(dir.path().join("sleep.series.csv")).expect("series csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "t_s,user_pct,system_pct,rss_kib,voluntary_switches,involuntary_switches"
    );
    assert!(rows.len() >= 3, "series: {csv}");
    // A 20 ms sleeper switches out voluntarily about 25 times per 0.5 s.
    let voluntary: u64 = rows[1..]
        .iter()
        .filter_map(|r| r.split(',').nth(4)?.parse::<u64>().ok())
        .sum();
    assert!(voluntary >= 20, "voluntary switches {voluntary}: {csv}");
    let chart = std::fs::read_to_string(dir.path().join("sleep.series.svg")).expect("chart");
    assert!(chart.contains("<svg") && chart.contains("context switches"));
    // The sleeper stacks end in the scheduler, not in the tracing machinery.
    assert!(
        off.iter()
            .filter(|(s, _)| s.contains("profile_test_sleep_here"))
            .all(|(s, _)| !s.contains("bpf_prog_")),
        "tracing frames left in the off-CPU stacks"
    );
}

#[test]
fn stripped_binary_gives_addresses_and_a_warning() {
    if !require_for_test("stripped_binary_gives_addresses_and_a_warning") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let stripped = dir.path().join("stripped-helper");
    let status = Command::new("objcopy")
        .arg("--strip-all")
        .arg(this_exe())
        .arg(&stripped)
        .status()
        .expect("running objcopy (binutils)");
    assert!(status.success(), "objcopy --strip-all failed");
    let out = dir.path().join("stripped.folded");
    let run = profile_helper(
        &stripped,
        "burn",
        &["--duration", "2", "-o", out.to_str().expect("utf-8 path")],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("stripped-helper") && stderr.contains("no symbols found"),
        "no stripped-binary warning in: {stderr}"
    );
    let lines = folded(&out);
    let total: u64 = lines.iter().map(|(_, v)| v).sum();
    let addressed: u64 = lines
        .iter()
        .filter(|(s, _)| s.contains("stripped-helper+0x"))
        .map(|(_, v)| v)
        .sum();
    assert!(total > 0);
    assert!(
        addressed * 2 >= total,
        "{addressed} of {total} samples show stripped-helper+0xOFFSET frames"
    );
    assert!(
        !lines
            .iter()
            .any(|(s, _)| s.contains("profile_test_burn_cpu"))
    );
}

#[test]
fn diff_of_two_profiles_draws_a_differential_flamegraph() {
    // No privileges needed: two folded files.
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.folded");
    let new = dir.path().join("new.folded");
    std::fs::write(&base, "app;main;parse 80\napp;main;send 20\n").expect("write");
    std::fs::write(&new, "app;main;parse 20\napp;main;send 20\n").expect("write");
    let svg = dir.path().join("diff.svg");
    let out = Command::new(BIN)
        .arg("diff")
        .arg(&base)
        .arg(&new)
        .arg("-o")
        .arg(&svg)
        .output()
        .expect("running ws-trace diff");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).expect("diff.svg");
    assert!(text.contains("parse") && text.contains("send"));
}
