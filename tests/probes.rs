//! The kernel probes, for real, as root: events arrive with the right contents.
use std::{collections::BTreeMap, process::Command, time::Duration};

use ws_abi::{NET_RX_SOFTIRQ, ProbeKind};
use ws_tests::{loopback_echo, monotonic_ns, require_for_test};
use ws_trace::{
    attach::{Plan, Session},
    decode::Event,
    probes::{LoadOptions, ProbeError, Probes},
};

/// The packet-path probes (unfiltered: the whole machine's NET_RX traffic).
const NET_RX: [ProbeKind; 4] = [
    ProbeKind::NetifReceiveSkb,
    ProbeKind::SoftirqRaise,
    ProbeKind::SoftirqEntry,
    ProbeKind::SoftirqExit,
];
const ROUNDS: usize = 2000;
const SIZE: usize = 1000;

/// Drains the session until nothing arrived for a while.
fn drain(session: &mut Session, events: &mut Vec<Event>) {
    let mut idle = 0;
    while idle < 3 {
        let n = session
            .pump(Duration::from_millis(50), |_, e| events.push(*e))
            .expect("ring read");
        idle = if n == 0 { idle + 1 } else { 0 };
    }
}

/// The events of `at`'s CPU around it, for failure messages.
fn context(events: &[Event], at: &ws_abi::EventHeader) -> String {
    let cpu: Vec<&Event> = events.iter().filter(|e| e.header().cpu == at.cpu).collect();
    let i = cpu.iter().position(|e| e.header() == at).unwrap_or(0);
    cpu[i.saturating_sub(8)..(i + 8).min(cpu.len())]
        .iter()
        .map(|e| {
            let h = e.header();
            let mark = if h == at { ">>" } else { "  " };
            format!("{mark} {} {:?} tid={}", h.ts_ns, e.kind(), h.tid)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn net_rx_events_arrive_in_order_with_plausible_contents() {
    if !require_for_test("net_rx_events_arrive_in_order_with_plausible_contents") {
        return;
    }
    let mut session = Session::start(&Plan {
        kinds: NET_RX.to_vec(),
        ..Plan::default()
    })
    .expect("attach");
    let t0 = monotonic_ns();
    let mut events = Vec::new();
    let traffic = std::thread::spawn(|| loopback_echo(ROUNDS, SIZE));
    while !traffic.is_finished() {
        session
            .pump(Duration::from_millis(20), |_, e| events.push(*e))
            .expect("ring read");
    }
    let echoed = traffic
        .join()
        .expect("traffic thread")
        .expect("loopback echo");
    assert_eq!(echoed, (ROUNDS * SIZE) as u64);
    drain(&mut session, &mut events);
    let t1 = monotonic_ns();
    let summary = session.summary().expect("summary");
    assert_eq!(summary.total_drops(), 0, "{summary}");
    assert_eq!(summary.decode_errors, 0);

    // Every timestamp lies inside the test window (events from before the attach would
    // be a stale ring; later ones a clock mix-up).
    let before = t0.saturating_sub(Duration::from_secs(1).as_nanos() as u64);
    for e in &events {
        let ts = e.header().ts_ns;
        assert!(
            ts >= before && ts <= t1,
            "ts {ts} outside [{before}, {t1}]: {e:?}"
        );
    }

    // Per CPU, ring order is time order, except where a probe ran inside another one
    // between its stamp and its reservation (an interrupt during a softirq probe): the
    // interrupting record comes first with the later stamp. That is rare; a wrong clock or
    // a stale ring would put most records out of order.
    let mut last: BTreeMap<u16, u64> = BTreeMap::new();
    let mut inversions = Vec::new();
    for e in &events {
        let h = e.header();
        let prev = last.insert(h.cpu, h.ts_ns).unwrap_or(0);
        if h.ts_ns < prev {
            inversions.push((h.cpu, prev - h.ts_ns));
        }
    }
    assert!(
        inversions.len() * 100 <= events.len(),
        "{} of {} records are older than the one before them on their CPU: {:?}",
        inversions.len(),
        events.len(),
        &inversions[..inversions.len().min(20)]
    );

    // Our data segments: IPv4 + TCP (20..60 bytes of headers) + SIZE, on lo (ifindex 1),
    // both directions. Every length is plausible for an IP packet.
    let mut data_segments = 0;
    for e in &events {
        if let Event::Skb(s) = e {
            assert!(
                (20..=(1 << 18)).contains(&s.len),
                "implausible skb len {}",
                s.len
            );
            assert_ne!(s.skb, 0);
            if s.ifindex == 1 && (SIZE as u32 + 40..=SIZE as u32 + 60).contains(&s.len) {
                data_segments += 1;
            }
        }
    }
    assert!(
        data_segments >= 2 * ROUNDS,
        "saw {data_segments} loopback data segments of our size, expected >= {}",
        2 * ROUNDS
    );

    // Softirq structure: per CPU, entries and exits alternate, and every loopback packet
    // is received inside a NET_RX softirq on its CPU. Under CPU load (two busy loops
    // running) the kernel sometimes does not run the softirq_exit program for a NET_RX
    // softirq it ran softirq_entry for: 313 of 4317 entries lacked an exit once, and the
    // exit program's own run count was 317 short of the entry program's, with no drops and
    // no recursion misses (other vectors balanced). Cause in the kernel not identified.
    // ws-trace must lose none of what ran: every entry without its exit is accounted for by
    // that run-count deficit. The first such place is printed.
    let mut inside: BTreeMap<u16, Option<bool>> = BTreeMap::new();
    let mut skb_inside = 0;
    let (mut entries, mut missed_exits) = (0usize, 0usize);
    for e in &events {
        let h = e.header();
        let state = inside.entry(h.cpu).or_insert(None);
        match (e, e.kind()) {
            (Event::Softirq(s), kind) => {
                assert_eq!(s.vec, NET_RX_SOFTIRQ);
                match kind {
                    ProbeKind::SoftirqEntry => {
                        entries += 1;
                        if *state == Some(true) {
                            missed_exits += 1;
                            if missed_exits == 1 {
                                eprintln!(
                                    "two entries without an exit on cpu {}:\n{}",
                                    h.cpu,
                                    context(&events, h)
                                );
                            }
                        }
                        *state = Some(true);
                    }
                    ProbeKind::SoftirqExit => {
                        assert_ne!(
                            *state,
                            Some(false),
                            "two exits without an entry on cpu {}:\n{}",
                            h.cpu,
                            context(&events, h)
                        );
                        *state = Some(false);
                    }
                    _ => {}
                }
            }
            (Event::Skb(s), _) if s.ifindex == 1 => {
                // Before the first softirq event on this CPU we cannot tell.
                if let Some(inside_now) = *state {
                    assert!(
                        inside_now,
                        "loopback skb outside NET_RX softirq on cpu {}:\n{}",
                        h.cpu,
                        context(&events, h)
                    );
                    skb_inside += 1;
                }
            }
            _ => {}
        }
    }
    assert!(
        skb_inside >= ROUNDS,
        "only {skb_inside} skbs checked against softirq state"
    );
    if missed_exits > 0 {
        eprintln!("{missed_exits} of {entries} softirq entries without an exit\n{summary}");
    }
    let runs = |k: ProbeKind| summary.probe(k).map_or(0, |p| p.runs);
    let not_run = runs(ProbeKind::SoftirqEntry).saturating_sub(runs(ProbeKind::SoftirqExit));
    assert!(
        missed_exits as u64 <= not_run + 5,
        "{missed_exits} of {entries} softirq entries without an exit, but the kernel ran the \
         exit program only {not_run} times fewer than the entry program\n{summary}"
    );

    // Every attached probe saw events, and the kernel ran each program at least as often.
    for p in &summary.probes {
        assert!(p.events > 0, "no events from {}", p.probe);
        assert!(
            p.runs >= p.events,
            "{} ran {} times but sent {}",
            p.probe,
            p.runs,
            p.events
        );
    }
}

#[test]
fn a_full_ring_counts_its_drops() {
    if !require_for_test("a_full_ring_counts_its_drops") {
        return;
    }
    let load = LoadOptions {
        ring_bytes: 4096,
        ..LoadOptions::default()
    };
    let mut session = Session::start(&Plan {
        load,
        kinds: vec![ProbeKind::NetifReceiveSkb],
        ..Plan::default()
    })
    .expect("attach");
    // Nobody reads while the traffic runs: a 4 KiB ring holds ~100 records.
    loopback_echo(500, 100).expect("loopback echo");
    let mut events = Vec::new();
    drain(&mut session, &mut events);
    let s = session.summary().expect("summary");
    let p = &s.probes[0];
    assert!(
        p.drops > 0,
        "a 4 KiB ring under 1000+ packets dropped nothing: {s}"
    );
    assert_eq!(p.events, events.len() as u64);
    // Unfiltered, every run of the program either sent its record or counted a drop, so
    // the kernel's run counter (read with BPF_OBJ_GET_INFO_BY_FD) says the same — up to
    // packets of other traffic on the machine that arrive between the drain and the read
    // of the counters.
    assert!(p.events + p.drops <= p.runs, "{s}");
    assert!(
        p.runs - (p.events + p.drops) <= 10 + p.runs / 100,
        "runs {} vs events + drops {}: {s}",
        p.runs,
        p.events + p.drops
    );
    assert!(s.to_string().contains("DROPPED"), "{s}");
}

#[test]
fn bad_ring_sizes_are_refused_before_loading() {
    for bytes in [0, 1000, 4097, 3 << 12] {
        let load = LoadOptions {
            ring_bytes: bytes,
            ..LoadOptions::default()
        };
        assert!(
            matches!(Probes::load(&load), Err(ProbeError::RingSize(b)) if b == bytes),
            "ring size {bytes} accepted"
        );
    }
}

/// Not a test: loads the probe object and prints what happened; run without privileges by
/// `loading_without_privileges_says_what_to_do`.
#[test]
#[ignore = "helper process, started by loading_without_privileges_says_what_to_do"]
fn load_probe_object_process() {
    use ws_trace::loader::{MIN_RING_BYTES, ProbeObject};
    match ProbeObject::load(MIN_RING_BYTES) {
        Ok(_) => println!("outcome: loaded"),
        Err(e) => println!("outcome: {e}"),
    }
}

#[test]
fn loading_without_privileges_says_what_to_do() {
    // Needs root to drop to an unprivileged user in the first place.
    if !require_for_test("loading_without_privileges_says_what_to_do") {
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(exe)
        .args([
            "--ignored",
            "--exact",
            "load_probe_object_process",
            "--nocapture",
        ])
        .output()
        .expect("run setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let outcome = stdout
        .lines()
        // (libtest may print "test NAME ... " on the same line first)
        .find_map(|l| l.split_once("outcome: ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no outcome: {out:?}"));
    assert!(
        outcome.contains("sudo") && outcome.contains("CAP_BPF+CAP_PERFMON"),
        "{outcome}"
    );
}
