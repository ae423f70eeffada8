//! Ground truth: the stage table must say what is known to be true.
//!
//! - a callback that spins a known time reads that time in the callback stage;
//! - a CPU hog pinned to the client's CPU shows up in wakeup→on-cpu, not elsewhere.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ws_abi::ProbeKind;
use ws_engine::server::{Feed, FeedServer, Payload};
use ws_tests::require_for_test;
use ws_trace::{
    attach::{self, AttachOptions, Plan},
    correlate::{Stamp, correlate},
    decode::Event,
    probes::{Filter, LoadOptions},
    report::StageTable,
    target::Target,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_feed_client");

/// The tests here measure scheduling: they must not run at the same time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the feed client under every probe; returns the stage table of its messages.
fn traced_run(messages: usize, gap: Duration, client_args: &[&str]) -> StageTable {
    let server = FeedServer::start(Feed {
        count: messages,
        size: 128,
        gap,
        payload: Payload::Indexed,
    })
    .expect("feed server");
    let mut command = vec![CLIENT.to_string(), server.url().to_string()];
    command.extend(client_args.iter().map(|s| s.to_string()));
    let mut target = Target::spawn(&command).expect("spawn client");
    let tgid = *target.tgids().expect("tgids").first().expect("pid");
    let mut kinds = ProbeKind::KERNEL.to_vec();
    kinds.push(ProbeKind::ProcessFork);
    let opts = AttachOptions {
        plan: Plan {
            load: LoadOptions {
                filter: Filter::process(tgid),
                ..LoadOptions::default()
            },
            kinds,
            engine_binaries: vec![CLIENT.into()],
            user_uprobes: Vec::new(),
        },
        duration: Some(Duration::from_secs(120)),
        refresh: None,
    };
    let mut events: Vec<Event> = Vec::new();
    let never = AtomicBool::new(false);
    let summary = attach::run(&opts, &mut target, &never, |_| {}, |_, e| events.push(*e))
        .expect("attach session");
    assert_eq!(server.join().expect("feed server").messages, messages);
    assert_eq!(summary.total_drops(), 0, "{summary}");
    let c = correlate(&events);
    assert!(
        c.rows.len() + 5 >= messages,
        "joined {} of {messages}: {:?}",
        c.rows.len(),
        c.unjoined
    );
    StageTable::of(&c.rows)
}

fn stage(table: &StageTable, stamp: Stamp) -> &ws_trace::report::StageStats {
    table
        .stages
        .iter()
        .find(|s| s.stage == stamp.name())
        .unwrap_or_else(|| panic!("no {} stage in\n{table}", stamp.name()))
}

fn p50(table: &StageTable, stamp: Stamp) -> u64 {
    stage(table, stamp).p50_ns
}

fn p90(table: &StageTable, stamp: Stamp) -> u64 {
    stage(table, stamp).p90_ns
}

/// A thread pinned to CPU 1 that spins (for 2 ms at a time, then sleeps `rest`, when
/// `rest` is not zero) under a scheduling policy, until dropped.
struct Spinner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn start(policy: i32, priority: i32, rest: Duration) -> Spinner {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut set = nix::sched::CpuSet::new();
                set.set(1).expect("cpu 1");
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                    .expect("pin spinner");
                let param = libc::sched_param {
                    sched_priority: priority,
                };
                // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter.
                let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
                assert_eq!(
                    rc,
                    0,
                    "sched_setscheduler: {}",
                    std::io::Error::last_os_error()
                );
                while !stop.load(Ordering::Relaxed) {
                    let busy = std::time::Instant::now();
                    while busy.elapsed() < Duration::from_millis(2) {
                        std::hint::spin_loop();
                    }
                    if !rest.is_zero() {
                        std::thread::sleep(rest);
                    }
                }
            })
        };
        Spinner {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_50us_callback_reads_50us() {
    if !require_for_test("a_50us_callback_reads_50us") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let table = traced_run(400, Duration::from_micros(500), &["--spin-us", "50"]);
    let callback = p50(&table, Stamp::CallbackDone);
    assert!(
        (48_000..=52_000).contains(&callback),
        "callback stage p50 {callback} ns, expected 50 µs ± 2 µs\n{table}"
    );
}

#[test]
fn a_cpu_hog_on_the_clients_cpu_shows_in_the_run_queue_stage() {
    if !require_for_test("a_cpu_hog_on_the_clients_cpu_shows_in_the_run_queue_stage") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("affinity");
    let count = (0..nix::sched::CpuSet::count())
        .filter(|&c| cpus.is_set(c).unwrap_or(false))
        .count();
    assert!(count >= 2, "this test needs two CPUs, has {count}");
    let gap = Duration::from_micros(1000);
    // The baseline keeps CPU 1 busy with a SCHED_IDLE spinner, which any woken task
    // preempts at once: without it the client's CPU would be idle, and on a VM waking an
    // idle vCPU costs tens of µs of its own — a different effect.
    let quiet = {
        let _keep_awake = Spinner::start(libc::SCHED_IDLE, 0, Duration::ZERO);
        traced_run(300, gap, &["--cpu", "1"])
    };
    // The hog: a real-time thread busy for 2 ms out of every 3 ms on the client's CPU. A
    // fair-class hog would not do: the scheduler lets a woken task preempt it at once.
    let hogged = {
        let _keep_awake = Spinner::start(libc::SCHED_IDLE, 0, Duration::ZERO);
        let _hog = Spinner::start(libc::SCHED_FIFO, 10, Duration::from_millis(1));
        traced_run(300, gap, &["--cpu", "1"])
    };
    // The hog delays the wakeups that land in its busy periods: the run-queue tail.
    let run_queue = |t: &StageTable| p90(t, Stamp::OnCpu);
    let grew = run_queue(&hogged).saturating_sub(run_queue(&quiet));
    assert!(
        grew >= 20_000 && run_queue(&hogged) >= 2 * run_queue(&quiet),
        "→ on-cpu p90 {} → {} ns: the hog did not show\nquiet:\n{quiet}\nhogged:\n{hogged}",
        run_queue(&quiet),
        run_queue(&hogged)
    );
    // The stages that do not wait for the client's CPU barely move.
    for s in [Stamp::Tcp, Stamp::Parsed] {
        let before = p90(&quiet, s);
        let after = p90(&hogged, s);
        assert!(
            after.saturating_sub(before) < grew / 4,
            "{} p90 {before} → {after} ns grew with the hog too\nquiet:\n{quiet}\nhogged:\n{hogged}",
            s.name()
        );
    }
}
