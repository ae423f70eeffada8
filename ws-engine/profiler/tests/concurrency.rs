//! Counts, totals and bytes are exact under contention: several threads hammer the same
//! kind (through private slots, and through the shared overflow slot) with known values.

use std::sync::{Arc, Barrier};
use ws_profiler::{CallbackKind, Profiler};

const THREADS: u64 = 4;
const PER_THREAD: u64 = 100_000;

/// Thread t's i-th record: a duration and a byte count that depend on (t, i).
fn value(t: u64, i: u64) -> (u64, u64) {
    (100 + (i * 7 + t * 13) % 5000, (i % 97) + t)
}

fn expected() -> (u64, u64, u64, u64, u64) {
    let (mut total, mut bytes, mut min, mut max) = (0u64, 0u64, u64::MAX, 0u64);
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            let (ns, b) = value(t, i);
            total += ns;
            bytes += b;
            min = min.min(ns);
            max = max.max(ns);
        }
    }
    (THREADS * PER_THREAD, total, bytes, min, max)
}

fn hammer(p: &Profiler, kind: CallbackKind) {
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = p.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..PER_THREAD {
                    let (ns, b) = value(t, i);
                    p.record(kind, ns, b);
                    // Spans too: their durations are unknown, their count and bytes are not.
                    if i % 10 == 0 {
                        let g = p.start(CallbackKind::WRITABLE);
                        g.stop(3);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().is_ok(), "worker panicked");
    }
}

fn check(p: &Profiler, kind_name: &str) {
    let (count, total, bytes, min, max) = expected();
    let r = p.report();
    let c = r.callback(kind_name).cloned();
    let Some(c) = c else {
        panic!("kind {kind_name} missing from report")
    };
    assert_eq!(c.count, count);
    assert_eq!(c.total_ns, total);
    assert_eq!(c.bytes, bytes);
    assert_eq!(c.min_ns, min);
    assert_eq!(c.max_ns, max);
    assert_eq!(c.avg_ns, total / count);
    let w = r.callback("writable").map(|w| (w.count, w.bytes));
    let spans = THREADS * PER_THREAD.div_ceil(10);
    assert_eq!(w, Some((spans, spans * 3)));
}

#[test]
fn exact_with_private_slots() {
    let p = Profiler::builder().thread_slots(8).build();
    let Ok(p) = p else { panic!("build failed") };
    let k = p.register_kind("on_tick");
    let Ok(k) = k else {
        panic!("register failed: {k:?}")
    };
    hammer(&p, k);
    check(&p, "on_tick");
    // Every worker released its slot when it exited.
    assert_eq!(p.thread_slots().0, 0);
}

#[test]
fn exact_through_the_shared_overflow_slot() {
    // One private slot for four threads: three of them contend on the shared slot.
    let p = Profiler::builder().thread_slots(1).build();
    let Ok(p) = p else { panic!("build failed") };
    hammer(&p, CallbackKind::RECEIVE);
    check(&p, "receive");
}

#[test]
fn exact_when_threads_come_and_go() {
    // More short-lived threads than slots, one after another: each continues in a
    // released slot, nothing is lost.
    let p = Profiler::builder().thread_slots(2).build();
    let Ok(p) = p else { panic!("build failed") };
    for round in 0..10u64 {
        let p2 = p.clone();
        let h = std::thread::spawn(move || {
            for i in 0..1000 {
                p2.record(CallbackKind::PING, round * 1000 + i, 1);
            }
        });
        assert!(h.join().is_ok());
    }
    let r = p.report();
    let c = r
        .callback("ping")
        .map(|c| (c.count, c.bytes, c.total_ns, c.min_ns, c.max_ns));
    let total: u64 = (0..10_000u64).sum();
    assert_eq!(c, Some((10_000, 10_000, total, 0, 9_999)));
    assert_eq!(p.thread_slots(), (0, 2));
}

#[test]
fn per_connection_counts_are_exact_under_contention() {
    let p = Profiler::builder().connections(64).build();
    let Ok(p) = p else { panic!("build failed") };
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let p = p.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..20_000u64 {
                    // Every thread touches every connection: inserts race too.
                    p.record_conn(CallbackKind::RECEIVE, i % 16, 10, 2);
                }
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().is_ok());
    }
    let r = p.report();
    assert_eq!(r.connections.len(), 16);
    for c in &r.connections {
        let rx = c
            .callbacks
            .iter()
            .find(|k| k.name == "receive")
            .map(|k| (k.count, k.bytes, k.total_ns));
        let per = THREADS * 20_000 / 16;
        assert_eq!(rx, Some((per, 2 * per, 10 * per)), "connection {}", c.id);
    }
    assert_eq!(r.untracked_connection_records, 0);
    assert_eq!(
        r.callback("receive").map(|c| c.count),
        Some(THREADS * 20_000)
    );
}
