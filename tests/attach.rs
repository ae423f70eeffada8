//! A traced ws-engine client, for real: every stage's events arrive for the right thread,
//! socket and port, an unrelated flow is filtered out, uprobes count every message.
use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ws_abi::ProbeKind;
use ws_engine::server::{Feed, FeedServer};
use ws_tests::require_for_test;
use ws_trace::{
    attach::{self, AttachOptions, EngineRecords, Plan},
    decode::Event,
    target::Target,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_feed_client");
const MESSAGES: usize = 300;
const SIZE: usize = 200;

/// A loopback echo between two threads of this (untraced) process until `stop`.
fn unrelated_flow(stop: Arc<AtomicBool>) -> (BTreeSet<u16>, std::thread::JoinHandle<()>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut s, _) = listener.accept().expect("accept");
    let ports = BTreeSet::from([
        c.local_addr().expect("addr").port(),
        s.local_addr().expect("addr").port(),
    ]);
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 300];
        while !stop.load(Ordering::Relaxed) {
            if c.write_all(&buf).is_err() || s.read_exact(&mut buf).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    (ports, handle)
}

/// The two sessions of this file run one after the other: each measures a traced client.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn every_stage_arrives_for_the_traced_engine_client() {
    if !require_for_test("every_stage_arrives_for_the_traced_engine_client") {
        return;
    }
    every_stage_arrives(EngineRecords::Channel, false);
}

#[test]
fn every_stage_arrives_through_the_engine_uprobes() {
    if !require_for_test("every_stage_arrives_through_the_engine_uprobes") {
        return;
    }
    every_stage_arrives(EngineRecords::Uprobes, false);
}

/// The same, with the fallbacks of kernels before 6.3 forced (`tcp_rcv_space_adjust` for
/// the reads, `inet_sock_set_state` for port learning): they must give the same records
/// and the same joins.
#[test]
fn every_stage_arrives_with_the_pre_6_3_fallbacks() {
    if !require_for_test("every_stage_arrives_with_the_pre_6_3_fallbacks") {
        return;
    }
    every_stage_arrives(EngineRecords::Channel, true);
}

/// The engine's records come from its stamp channel (`Channel`) or from the uprobes on its
/// probe functions (`Uprobes`); with `force_fallbacks` the reads and port learning use the
/// hooks of kernels before 6.3. Everything else is the same.
fn every_stage_arrives(engine_records: EngineRecords, force_fallbacks: bool) {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let stop_unrelated = Arc::new(AtomicBool::new(false));
    let (unrelated_ports, unrelated) = unrelated_flow(stop_unrelated.clone());
    let server = FeedServer::start(Feed {
        count: MESSAGES,
        size: SIZE,
        gap: Duration::from_micros(300),
        payload: Default::default(),
    })
    .expect("feed server");
    let server_addr = server.addr();
    let channel = engine_records == EngineRecords::Channel;
    let mut target = Target::spawn_with(&[CLIENT.to_string(), server.url().to_string()], channel)
        .expect("spawn client");
    let tgid = *target.tgids().expect("tgids").first().expect("one pid");
    let binary = PathBuf::from(CLIENT);
    let mut plan = Plan {
        user_uprobes: vec![(binary.clone(), "feed_client_tick".into())],
        engine_records,
        ..Plan::process(tgid, vec![binary])
    };
    plan.load.force_fallbacks = force_fallbacks;
    let opts = AttachOptions {
        plan,
        duration: Some(Duration::from_secs(60)),
        refresh: None,
    };
    let mut events: Vec<Event> = Vec::new();
    let never = AtomicBool::new(false);
    let summary = attach::run(&opts, &mut target, &never, |_| {}, |_, e| events.push(*e))
        .expect("attach session");
    stop_unrelated.store(true, Ordering::Relaxed);
    let sent = server.join().expect("feed server");
    unrelated.join().expect("unrelated flow");
    assert_eq!(sent.messages, MESSAGES);
    assert_eq!(summary.total_drops(), 0, "{summary}");
    assert!(
        summary.notes.iter().any(|n| n.contains("exited")),
        "{summary}"
    );
    // The notes say which fallbacks are in use: the forced ones, or those of this kernel.
    let kernel_lacks = !std::path::Path::new("/sys/kernel/tracing/events/sock/sock_recv_length")
        .exists()
        && !std::path::Path::new("/sys/kernel/debug/tracing/events/sock/sock_recv_length").exists();
    for instead in ["tcp_rcv_space_adjust", "inet_sock_set_state"] {
        assert_eq!(
            summary.notes.iter().any(|n| n.contains(instead)),
            force_fallbacks || kernel_lacks,
            "fallback {instead} in the notes?\n{summary}"
        );
    }

    let of = |kind: ProbeKind| events.iter().filter(move |e| e.kind() == kind);

    if channel {
        let c = summary.channel.expect("channel totals");
        assert_eq!(
            (c.rings, c.records, c.drops, c.lapses),
            (1, MESSAGES as u64, 0, 0)
        );
    } else {
        assert!(summary.channel.is_none());
    }

    // Callback records: one entry and one exit per message, from the client, in order.
    let entries: Vec<_> = of(ProbeKind::CallbackEntry)
        .filter_map(|e| match e {
            Event::Callback(c) => Some(*c),
            _ => None,
        })
        .collect();
    assert_eq!(entries.len(), MESSAGES, "callback entries\n{summary}");
    // Each exit names its message, after that message's entry on the same thread, with the
    // engine's stamps of the callback between the two uprobes' (one clock: the engine's
    // error is ~20 ns, each uprobe costs hundreds).
    let exits: Vec<_> = of(ProbeKind::CallbackExit)
        .filter_map(|e| match e {
            Event::CallbackDone(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(
        exits.iter().map(|d| d.msg_seq).collect::<Vec<_>>(),
        (0..MESSAGES as u64).collect::<Vec<_>>(),
        "callback exits"
    );
    for (entry, exit) in entries.iter().zip(&exits) {
        assert_eq!(exit.hdr.tid, entry.hdr.tid);
        if channel {
            // The channel's events carry the engine's stamps: the entry is stamped as the
            // callback is called, the end as it returned.
            assert_eq!(
                entry.attach & ws_abi::channel::CHANNEL_ATTACH,
                ws_abi::channel::CHANNEL_ATTACH
            );
            assert_eq!(entry.hdr.ts_ns, entry.probe.stamps.callback_ns);
            assert_eq!(exit.hdr.ts_ns, exit.done_ns);
            assert!(
                entry.hdr.ts_ns <= exit.start_ns && exit.start_ns <= exit.done_ns,
                "callback {} <= {}..{}",
                entry.hdr.ts_ns,
                exit.start_ns,
                exit.done_ns
            );
            continue;
        }
        assert!(
            entry.hdr.ts_ns < exit.start_ns
                && exit.start_ns <= exit.done_ns
                && exit.done_ns < exit.hdr.ts_ns,
            "entry uprobe {} < callback {}..{} < done uprobe {}",
            entry.hdr.ts_ns,
            exit.start_ns,
            exit.done_ns,
            exit.hdr.ts_ns
        );
    }
    let cookie = entries[0].probe.sock_cookie;
    assert_ne!(cookie, 0, "the engine did not report its socket cookie");
    for (i, c) in entries.iter().enumerate() {
        assert_eq!(c.hdr.tgid, tgid);
        assert_eq!(c.probe.msg_seq, i as u64);
        assert_eq!(c.probe.len, SIZE as u64);
        assert_eq!(c.probe.sock_cookie, cookie);
        assert_eq!(c.probe.abi_version, ws_abi::ABI_VERSION);
    }
    // The user uprobe saw each message's index as its argument.
    let ticks: Vec<u64> = of(ProbeKind::UserEntry)
        .filter_map(|e| match e {
            Event::Uprobe(u) => Some(u.value),
            _ => None,
        })
        .collect();
    assert_eq!(ticks, (0..MESSAGES as u64).collect::<Vec<_>>());
    assert_eq!(of(ProbeKind::UserExit).count(), MESSAGES);

    // Reads: all by the client, on its socket; together exactly what the server wrote.
    let reads: Vec<_> = of(ProbeKind::SockRecv)
        .filter_map(|e| match e {
            Event::Recv(r) => Some(*r),
            _ => None,
        })
        .collect();
    assert!(!reads.is_empty());
    let client_port = reads[0].lport;
    for r in &reads {
        assert_eq!(r.hdr.tgid, tgid, "read by another process: {r:?}");
        assert_eq!(r.cookie, cookie, "{r:?}");
        assert_eq!((r.lport, r.rport), (client_port, server_addr.port()));
    }
    let read_bytes: i64 = reads.iter().map(|r| r.ret.max(0)).sum();
    assert_eq!(
        read_bytes as u64, sent.bytes,
        "bytes read vs bytes the server wrote"
    );

    // Sequence space: for every message, the read that completed it (the client's last
    // read before the callback) says where the engine's byte offsets sit in the TCP
    // stream. That origin is the same for every message: the connection's initial
    // sequence number plus one.
    let mut origins = BTreeSet::new();
    for c in &entries {
        let read = reads
            .iter()
            .rev()
            .find(|r| r.hdr.ts_ns <= c.hdr.ts_ns && r.ret > 0)
            .expect("a read before every callback");
        assert!(c.probe.read_end >= c.probe.stream_end);
        origins.insert(read.copied_seq.wrapping_sub(c.probe.read_end as u32));
    }
    assert_eq!(
        origins.len(),
        1,
        "engine offsets do not map to one TCP origin: {origins:?}"
    );

    // Segments: on the client's socket only; they carry (nearly) the whole stream. The
    // first ones can arrive before the first read taught the filter the client's port.
    let mut seg_bytes = 0u64;
    for e in of(ProbeKind::TcpProbe) {
        let Event::Tcp(t) = e else { continue };
        assert_eq!(t.lport, client_port, "segment of another socket: {t:?}");
        assert_eq!(t.cookie, cookie);
        seg_bytes += u64::from(t.end_seq.wrapping_sub(t.seq));
    }
    assert!(
        seg_bytes * 10 >= sent.bytes * 9,
        "segments carried {seg_bytes} of {} bytes",
        sent.bytes
    );

    // Packets: addressed to the client's port, none of the unrelated flow's.
    for kind in [ProbeKind::NetifReceiveSkb, ProbeKind::NetifRx] {
        let n = of(kind)
            .map(|e| match e {
                Event::Skb(s) => {
                    assert_eq!(s.flow.dport, client_port, "{kind:?} of another flow: {s:?}");
                    assert!(!unrelated_ports.contains(&s.flow.sport));
                    1
                }
                _ => 0,
            })
            .sum::<usize>();
        assert!(n > 0, "no {kind:?} events for the client's port");
    }
    assert!(of(ProbeKind::SoftirqEntry).count() > 0);

    // Scheduler and epoll: the client's threads.
    let wakeups = of(ProbeKind::SchedWakeup)
        .filter(|e| matches!(e, Event::Sched(s) if s.next_tgid == tgid))
        .count();
    assert!(wakeups > 0, "no wakeups of the client");
    let wakings = of(ProbeKind::SchedWaking)
        .filter(|e| matches!(e, Event::Sched(s) if s.next_tgid == tgid))
        .count();
    assert!(wakings > 0, "no waking of the client");
    for e in of(ProbeKind::SchedSwitch) {
        let Event::Sched(s) = e else { continue };
        assert!(
            s.prev_tgid == tgid || s.next_tgid == tgid,
            "switch of untraced threads: {s:?}"
        );
    }
    let epolls: Vec<_> = of(ProbeKind::EpollExit).collect();
    assert!(!epolls.is_empty(), "no epoll returns");
    assert!(epolls.iter().all(|e| e.header().tgid == tgid));

    // One row per message, NIC to callback: the filter learned the client's port from its
    // upgrade request, before the first message could arrive.
    let c = ws_trace::correlate::correlate(&events);
    assert_eq!(c.messages, MESSAGES as u64);
    assert_eq!(
        c.unjoined.no_read + c.unjoined.no_exit + c.unjoined.no_nic,
        0,
        "{:?}",
        c.unjoined
    );
    assert!(
        c.rows.len() == MESSAGES,
        "joined {} of {MESSAGES}: {:?}",
        c.rows.len(),
        c.unjoined
    );
    use ws_trace::correlate::Stamp::*;
    for r in &c.rows {
        assert_eq!(r.cookie, cookie);
        // Kernel stamps share one clock: they must be in order.
        let kernel: Vec<u64> = [
            Nic,
            Softirq,
            Tcp,
            Waking,
            Wakeup,
            OnCpu,
            Epoll,
            Callback,
            CallbackDone,
        ]
        .iter()
        .filter_map(|s| r.at(*s))
        .collect();
        assert!(
            kernel.windows(2).all(|w| w[0] <= w[1]),
            "kernel stamps out of order: {r:?}"
        );
        // So do the engine's. The read's start is left out where the read began before
        // the segment reached TCP (it held the socket while the packet waited in the
        // backlog): rare on a fast machine, common in a slow VM.
        let engine: Vec<u64> = [RecvStart, RecvEnd, Parsed]
            .iter()
            .filter_map(|s| r.at(*s))
            .collect();
        assert!(r.at(RecvEnd).is_some() && r.at(Parsed).is_some(), "{r:?}");
        assert!(
            engine.windows(2).all(|w| w[0] <= w[1]),
            "engine stamps out of order: {r:?}"
        );
        assert!(
            r.total_ns().is_some_and(|t| t > 0 && t < 1_000_000_000),
            "{r:?}"
        );
    }

    let with_start = c.rows.iter().filter(|r| r.at(RecvStart).is_some()).count();
    assert!(
        with_start * 2 >= c.rows.len(),
        "only {with_start} of {} rows have the read's start",
        c.rows.len()
    );

    // Nothing at all from this (untraced) test process.
    let me = std::process::id();
    for e in &events {
        if matches!(
            e.kind(),
            ProbeKind::SockRecv | ProbeKind::EpollExit | ProbeKind::CallbackEntry
        ) {
            assert_ne!(e.header().tgid, me);
        }
    }
}
