//! A synthetic correlation for the export tests.
//!
//! Connection 1 (thread 42, RX CPU 1, plain TCP): two messages completed by one segment;
//! the second has no wakeup, on-cpu or epoll stamp (the thread was running). Connection 2
//! (thread 43, RX CPU 0, userspace TLS, so with decrypt stamps): a message whose callback
//! takes 0 ns to enter (parsed == callback), one whose callback spins 50 µs, and one whose
//! segment arrives during that callback (no wakeup: its `tcp→epoll` stage overlaps the
//! callback partly, so thread 43 needs a second lane).
use ws_abi::{EventHeader, ProbeKind, SyscallEvent};

use crate::correlate::{Correlation, MessageRow, RowKind, STAMP_COUNT, Stamp};
use crate::decode::Event;

use super::timeline::row_stages;
use super::{ExportError, ExportInput};

/// 1000 s of CLOCK_MONOTONIC: large enough that µs floats would lose ns.
pub(crate) const T0: u64 = 1_000_000_000_123;

fn row(
    conn_id: u64,
    msg_seq: u64,
    tid: u32,
    rx_cpu: u16,
    tls: &'static str,
    stamps: [(Stamp, u64); MESSAGE_STAMPS.len()],
    absent: &[Stamp],
) -> MessageRow {
    let mut s = [None; STAMP_COUNT];
    for (k, t) in stamps {
        if !absent.contains(&k) {
            s[k as usize] = Some(t);
        }
    }
    MessageRow {
        kind: RowKind::Message,
        cookie: 0x1000 + conn_id,
        conn_id,
        msg_seq,
        len: 100 * (msg_seq + 1),
        opcode: 2,
        tls,
        tid,
        rx_cpu,
        app_cpu: rx_cpu + 2,
        seq_end: 1000 * (msg_seq as u32 + 1),
        stamps: s,
    }
}

/// The stamps a message row can have, in pipeline order.
const MESSAGE_STAMPS: [Stamp; 13] = [
    Stamp::Nic,
    Stamp::Softirq,
    Stamp::Tcp,
    Stamp::Waking,
    Stamp::Wakeup,
    Stamp::OnCpu,
    Stamp::Epoll,
    Stamp::RecvStart,
    Stamp::Decrypt,
    Stamp::RecvEnd,
    Stamp::Parsed,
    Stamp::Callback,
    Stamp::CallbackDone,
];

/// A message row's stamps in pipeline order, each `base + offset`.
fn at(base: u64, offsets: [u64; MESSAGE_STAMPS.len()]) -> [(Stamp, u64); MESSAGE_STAMPS.len()] {
    let mut out = [(Stamp::Nic, 0); MESSAGE_STAMPS.len()];
    for (i, s) in MESSAGE_STAMPS.into_iter().enumerate() {
        out[i] = (s, base + offsets[i]);
    }
    out
}

/// Five rows as described in the module doc.
pub(crate) fn correlation() -> Correlation {
    use Stamp::*;
    let t = T0;
    let u = T0 + 100_000;
    let v = u + 20_000;
    // nic softirq tcp waking wakeup on-cpu epoll recv_start decrypt recv_end parsed callback done
    let rows = vec![
        row(
            1,
            0,
            42,
            1,
            "none",
            at(
                t,
                [
                    0, 1000, 3000, 3500, 5000, 9000, 10000, 11000, 0, 13000, 13500, 14000, 20000,
                ],
            ),
            &[Decrypt],
        ),
        row(
            1,
            1,
            42,
            1,
            "none",
            at(
                t,
                [
                    0, 1000, 3000, 0, 0, 0, 0, 11000, 0, 13000, 20500, 21000, 22000,
                ],
            ),
            &[Waking, Wakeup, OnCpu, Epoll, Decrypt],
        ),
        row(
            2,
            0,
            43,
            0,
            "userspace",
            at(
                u,
                [
                    0, 500, 2500, 2800, 4000, 4800, 5000, 5200, 6000, 8000, 8300, 8300, 9000,
                ],
            ),
            &[],
        ),
        row(
            2,
            1,
            43,
            0,
            "userspace",
            at(
                v,
                [
                    0, 400, 2000, 2300, 3000, 3500, 3700, 3900, 4500, 6000, 6200, 6400, 56400,
                ],
            ),
            &[],
        ),
        row(
            2,
            2,
            43,
            0,
            "userspace",
            at(
                v,
                [
                    10000, 10300, 11000, 0, 0, 0, 57000, 57200, 57800, 59000, 59200, 59300, 60000,
                ],
            ),
            &[Waking, Wakeup, OnCpu],
        ),
    ];
    Correlation {
        messages: rows.len() as u64 + 1,
        rows,
        unjoined: crate::correlate::Unjoined {
            no_exit: 1,
            ..Default::default()
        },
        clock_check_ns: Some(120),
        engine_clock_error_ns: Some(20),
        ..Correlation::default()
    }
}

/// Stages in all rows.
pub(crate) fn stage_count(c: &Correlation) -> usize {
    c.rows.iter().map(|r| row_stages(r).len()).sum()
}

/// Sum of all stage durations, ns.
pub(crate) fn stage_ns(c: &Correlation) -> u64 {
    c.rows.iter().flat_map(|r| r.stages()).map(|(_, d)| d).sum()
}

/// Events that say thread 43 belongs to process 40 (and 42 to itself).
pub(crate) fn events() -> Vec<Event> {
    let ev = |tid, tgid| {
        Event::Syscall(SyscallEvent {
            hdr: EventHeader {
                ts_ns: T0,
                kind: ProbeKind::EpollExit as u16,
                cpu: 0,
                tid,
                tgid,
                _pad: 0,
            },
            ret: 1,
            nr: 232,
            _pad: 0,
        })
    };
    vec![ev(43, 40), ev(42, 42), ev(7, 7)]
}

/// An exporter's `write`, as every format module has one.
pub(crate) type WriteFn = fn(&ExportInput<'_>, &mut dyn std::io::Write) -> Result<(), ExportError>;

/// Runs `write` on [`correlation`] (no events, no header) and returns its output as text.
pub(crate) fn render(write: WriteFn) -> String {
    let c = correlation();
    let input = ExportInput {
        correlation: &c,
        events: &[],
        header: None,
    };
    let mut out = Vec::new();
    write(&input, &mut out).expect("export writes");
    String::from_utf8(out).expect("text export is UTF-8")
}
