//! Aggregate mode against the real probes and a real ws-engine client: the histograms fill
//! with nothing crossing the ring, the total counts the kernel's reads, and what the
//! aggregates say agrees with the per-message join of a full-mode run of the same feed.
use std::{
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use ws_engine::server::{Feed, FeedServer, Payload};
use ws_tests::{ClientFigures, ClientReport, reads_the_callback, require_for_test};
use ws_trace::{
    aggregate::{Aggregator, EngineSampling, KERNEL_STAGES, engine::ENGINE_STAGES},
    attach::{self, AttachOptions, EngineRecords, Plan},
    correlate::{Stamp, correlate},
    decode::Event,
    report::StageTable,
    stats::StageSnapshot,
    target::Target,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_feed_client");

/// The runs here time a callback: they must not run at the same time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Messages per run, their spacing (the client sleeps between them), and the callback's
/// known cost.
const MESSAGES: usize = 600;
const GAP: Duration = Duration::from_micros(500);
const SPIN_US: &str = "50";

/// A feed of `count` messages `gap` apart.
fn feed_of(count: usize, gap: Duration) -> FeedServer {
    FeedServer::start(Feed {
        count,
        size: 128,
        gap,
        payload: Payload::Indexed,
    })
    .expect("feed server")
}

/// The runs' feed: [`MESSAGES`] messages [`GAP`] apart.
fn feed() -> FeedServer {
    feed_of(MESSAGES, GAP)
}

/// The feed client, its callbacks spinning [`SPIN_US`], its own timing of them going to
/// `report`.
fn client(server: &FeedServer, report: &ClientReport) -> Target {
    let mut command = vec![
        CLIENT.to_string(),
        server.url().to_string(),
        "--spin-us".to_string(),
        SPIN_US.to_string(),
    ];
    command.extend(report.args());
    Target::spawn_with(&command, true).expect("spawn client")
}

/// What an aggregate run gives: its snapshot, counters and session summary, and what the
/// client measured itself.
type AggregateRun = (
    StageSnapshot,
    ws_trace::aggregate::AggregateCounters,
    attach::Summary,
    ClientFigures,
);

/// The runs' feed client in aggregate mode, the engine sampled as `sampling` says.
fn aggregate_run(sampling: EngineSampling) -> AggregateRun {
    aggregate_run_with(MESSAGES, GAP, sampling, 1)
}

/// The feed client on a feed of `count` messages `gap` apart, in aggregate mode: the
/// engine sampled as `sampling` says, the kernel's stage probes attached one second in
/// `kernel_duty`.
fn aggregate_run_with(
    count: usize,
    gap: Duration,
    sampling: EngineSampling,
    kernel_duty: u32,
) -> AggregateRun {
    let server = feed_of(count, gap);
    let report = ClientReport::new();
    let mut target = client(&server, &report);
    let tgid = *target.tgids().expect("tgids").first().expect("pid");
    let mut agg = Aggregator::start(&Aggregator::plan(tgid)).expect("aggregate session");
    agg.set_engine_sampling(sampling);
    agg.set_kernel_duty(kernel_duty).expect("kernel duty");
    target.release().expect("release the client");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !target.exited() && Instant::now() < deadline {
        agg.pump(Duration::from_millis(50)).expect("pump");
    }
    agg.pump(Duration::ZERO).expect("pump");
    assert_eq!(server.join().expect("feed server").messages, count);
    let snapshot = agg.snapshot().expect("snapshot");
    let counters = agg.counters().expect("counters");
    let summary = agg.summary().expect("summary");
    (snapshot, counters, summary, report.figures())
}

/// The same feed in full mode: the join's stage table, and the client's own median
/// callback time (ns).
fn full_run() -> (StageTable, u64) {
    let server = feed();
    let report = ClientReport::new();
    let mut target = client(&server, &report);
    let tgid = *target.tgids().expect("tgids").first().expect("pid");
    let opts = AttachOptions {
        plan: Plan {
            engine_records: EngineRecords::Channel,
            ..Plan::process(tgid, vec![CLIENT.into()])
        },
        duration: Some(Duration::from_secs(120)),
        refresh: None,
    };
    let mut events: Vec<Event> = Vec::new();
    let never = AtomicBool::new(false);
    let summary = attach::run(&opts, &mut target, &never, |_| {}, |_, e| events.push(*e))
        .expect("attach session");
    assert_eq!(server.join().expect("feed server").messages, MESSAGES);
    assert_eq!(summary.total_drops(), 0, "{summary}");
    let c = correlate(&events);
    assert!(
        c.rows.len() * 10 >= MESSAGES * 9,
        "full mode joined {} of {MESSAGES}: {:?}",
        c.rows.len(),
        c.unjoined
    );
    (StageTable::of(&c.rows), report.callback_p50_ns())
}

fn show(s: &StageSnapshot) -> String {
    let mut out = String::new();
    for st in &s.stages {
        out += &format!(
            "  {:<14} n={:<6} p50={:>8} p90={:>8} max={:>9}\n",
            st.stamp.name(),
            st.hist.count(),
            st.hist.quantile(0.5),
            st.hist.quantile(0.9),
            st.hist.max()
        );
    }
    out += &format!(
        "  {:<14} n={:<6} p50={:>8} p90={:>8} max={:>9}\n",
        "total",
        s.total.count(),
        s.total.quantile(0.5),
        s.total.quantile(0.9),
        s.total.max()
    );
    out
}

#[test]
fn aggregate_mode_fills_every_stage_without_the_ring_and_agrees_with_the_join() {
    if !require_for_test(
        "aggregate_mode_fills_every_stage_without_the_ring_and_agrees_with_the_join",
    ) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Every engine message (the sampled mode is checked below).
    let (snap, counters, summary, client) = aggregate_run(EngineSampling::Shift(0));
    let client_cb = client.callback_p50_ns;
    let shown = show(&snap);
    eprintln!("aggregate mode:\n{shown}{counters:?}");

    // Nothing per event crossed the ring, and nothing was lost.
    assert_eq!(counters.ring_events, 0, "{counters:?}");
    assert_eq!(summary.total_drops(), 0, "{summary}");
    let sock_recv = summary
        .probe(ws_abi::ProbeKind::SockRecv)
        .expect("sock_recv attached");
    assert_eq!(sock_recv.events, 0, "{summary}");

    // Every kernel stage and every engine stage this feed goes through has counts (no
    // userspace TLS here: decrypt is absent, as it is in the join's rows).
    for stamp in KERNEL_STAGES
        .iter()
        .chain(ENGINE_STAGES.iter())
        .filter(|s| **s != Stamp::Decrypt)
    {
        let n = snap.stage(*stamp).map_or(0, |h| h.count());
        assert!(n > 0, "no counts in {}\n{shown}", stamp.name());
    }
    assert_eq!(snap.stage(Stamp::Decrypt).map(|h| h.count()), Some(0));

    // The total counts one row per read the kernel saw (a read without a row is counted
    // under its reason), and nearly every read made one.
    assert_eq!(snap.total.count(), counters.rows, "{counters:?}");
    assert_eq!(
        counters.rows + counters.no_segment + counters.no_packet + counters.inconsistent,
        counters.reads,
        "{counters:?}"
    );
    assert!(
        counters.rows * 100 >= counters.reads * 95,
        "only {} of {} reads made a row: {counters:?}",
        counters.rows,
        counters.reads
    );
    // The kernel saw every read that brought the client a message, as the client counted
    // them (a client late by a message's gap reads two at once, so not one per message),
    // and few others (the handshake's).
    assert!(
        (client.reads..=client.reads + 5).contains(&counters.reads),
        "{} reads traced, the client counted {}: {counters:?}",
        counters.reads,
        client.reads
    );
    assert_eq!(counters.engine_messages, MESSAGES as u64, "{counters:?}");
    assert_eq!(counters.engine_unpaired, 0, "{counters:?}");
    assert_eq!(counters.channel.drops, 0, "{counters:?}");
    // The stages add up to the total (sums are exact: each row's stages sum to its total).
    let kernel_sum: u64 = KERNEL_STAGES
        .iter()
        .filter_map(|s| snap.stage(*s))
        .map(|h| h.sum())
        .sum();
    assert_eq!(kernel_sum, snap.total.sum(), "{shown}");

    // The injected 50 µs callback reads what the client timed it at, in both modes.
    let callback = snap
        .stage(Stamp::CallbackDone)
        .map_or(0, |h| h.quantile(0.5));
    eprintln!("aggregate callback p50 {callback} ns, client's own {client_cb} ns");
    assert!(client_cb >= 50_000, "the client spun {client_cb} ns");
    if let Err(e) = reads_the_callback(callback, client_cb) {
        panic!("aggregate mode: {e}\n{shown}");
    }
    let (full, full_client_cb) = full_run();
    eprintln!("full mode:\n{full}");
    let full_p50 = |stamp: Stamp| {
        full.stages
            .iter()
            .find(|s| s.stage == stamp.name())
            .map(|s| s.p50_ns)
    };
    let full_callback = full_p50(Stamp::CallbackDone).unwrap_or(0);
    eprintln!("full-mode callback p50 {full_callback} ns, client's own {full_client_cb} ns");
    if let Err(e) = reads_the_callback(full_callback, full_client_cb) {
        panic!("full mode: {e}\n{full}");
    }
    // The kernel stages tell the same story as the join's rows: each median within a
    // factor of two (or 5 µs) of the other run's. A stage measured across the wrong stamps
    // (or counted in the wrong place) is off by far more.
    for stamp in [
        Stamp::Softirq,
        Stamp::Tcp,
        Stamp::Waking,
        Stamp::Wakeup,
        Stamp::OnCpu,
        Stamp::Epoll,
    ] {
        let agg = snap.stage(stamp).map_or(0, |h| h.quantile(0.5));
        let Some(full) = full_p50(stamp) else {
            panic!("no {} stage in the full run", stamp.name());
        };
        let (lo, hi) = (agg.min(full), agg.max(full));
        assert!(
            hi - lo <= 5_000 || hi <= 2 * lo,
            "{}: aggregate p50 {agg} ns, full-mode p50 {full} ns\n{shown}",
            stamp.name()
        );
    }
}

/// With one engine message in four sampled (per connection, by `msg_seq`), the engine
/// publishes only those once it has read the request, the aggregator keeps only those,
/// and each counts for four: the one connection's 600 messages count exactly 600.
#[test]
fn a_sampled_engine_publishes_a_quarter_and_the_counts_stand_for_all() {
    if !require_for_test("a_sampled_engine_publishes_a_quarter_and_the_counts_stand_for_all") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (snap, counters, _, client) = aggregate_run(EngineSampling::Shift(2));
    let client_cb = client.callback_p50_ns;
    let shown = show(&snap);
    eprintln!("sampled 1 in 4:\n{shown}{counters:?}");
    assert_eq!(counters.engine_sample_shift, 2);
    assert_eq!(
        counters.engine_messages,
        MESSAGES as u64 / 4,
        "{counters:?}"
    );
    // Records published before the engine read the request are left out; after it, none
    // outside the sample came.
    assert!(
        counters.engine_messages + counters.engine_unsampled < MESSAGES as u64,
        "the engine published every message: {counters:?}"
    );
    for stamp in [
        Stamp::RecvEnd,
        Stamp::Parsed,
        Stamp::Callback,
        Stamp::CallbackDone,
    ] {
        let n = snap.stage(stamp).map_or(0, |h| h.count());
        assert_eq!(n, MESSAGES as u64, "{}\n{shown}", stamp.name());
    }
    let callback = snap
        .stage(Stamp::CallbackDone)
        .map_or(0, |h| h.quantile(0.5));
    eprintln!("sampled callback p50 {callback} ns, client's own {client_cb} ns");
    if let Err(e) = reads_the_callback(callback, client_cb) {
        panic!("sampled 1 in 4: {e}\n{shown}");
    }
    // The kernel's stages are not sampled: a row for nearly every read that brought a
    // message, as the client counted them (a client late by a message's gap reads two at
    // once: under load, 600 messages came in 512 reads).
    assert_eq!(snap.total.count(), counters.rows, "{counters:?}");
    assert!(
        counters.rows * 100 >= client.reads * 95,
        "{} rows for the client's {} reads: {counters:?}",
        counters.rows,
        client.reads
    );
}

/// Sampling in time: with the stage probes attached one second in two, the kernel sees
/// only the reads of its on seconds (its programs do not run in the others: `sock_recv`
/// runs fewer times than there are messages) and counts each for two, so the counts
/// still estimate every read.
#[test]
fn a_kernel_duty_of_two_sees_the_on_seconds_and_counts_each_read_twice() {
    if !require_for_test("a_kernel_duty_of_two_sees_the_on_seconds_and_counts_each_read_twice") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 3.5 s of messages, 1 ms apart: on [0, 1), off [1, 2), on [2, 3), off [3, 3.5).
    const COUNT: usize = 3500;
    let (snap, counters, summary, client) =
        aggregate_run_with(COUNT, Duration::from_millis(1), EngineSampling::Adaptive, 2);
    eprintln!("kernel duty 2:\n{}{counters:?}\n{summary}", show(&snap));
    assert_eq!(counters.kernel_duty, 2);
    // Each read the kernel saw counts twice.
    assert_eq!(counters.reads % 2, 0, "{counters:?}");
    assert_eq!(snap.total.count(), counters.rows, "{counters:?}");
    // The probes are detached readers first and attached readers last: no read is left
    // without the segment that fed it.
    assert!(
        (counters.no_segment + counters.no_packet + counters.inconsistent) * 20 <= counters.reads,
        "{counters:?}"
    );
    // The probes ran in about half of the feed's time: sock_recv, once per read, ran for
    // between a quarter and three quarters of the reads the client counted.
    let reads = client.reads;
    let runs = summary
        .probe(ws_abi::ProbeKind::SockRecv)
        .expect("sock_recv attached")
        .runs;
    assert!(
        (reads / 4..=reads * 3 / 4).contains(&runs),
        "sock_recv ran {runs} times for the client's {reads} reads\n{summary}"
    );
    // Weighted, the rows estimate the reads: within half of the truth over so few periods.
    assert!(
        (reads / 2..=reads * 3 / 2).contains(&counters.rows),
        "{} rows (weighted) for the client's {reads} reads: {counters:?}",
        counters.rows
    );
    // The engine's stages are not sampled in time: every message, as ever.
    let callback_done = snap.stage(Stamp::CallbackDone).map_or(0, |h| h.count());
    assert!(callback_done >= COUNT as u64 * 9 / 10, "{callback_done}");
}
