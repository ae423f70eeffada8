//! The join on synthetic event streams: each test builds the events a known situation
//! produces and checks the row `correlate` makes of them.
use proptest::prelude::*;
use ws_abi::{
    CallbackDoneEvent, CallbackEvent, EventHeader, Flow, MsgProbe, MsgStamps, ProbeKind, RecvEvent,
    SchedEvent, SkbEvent, SoftirqEvent, SyscallEvent, TcpEvent, TlsPath,
};

use super::*;
use crate::decode::Event;

const TID: u32 = 100;
const APP_CPU: u16 = 1;

fn hdr(kind: ProbeKind, ts: u64, cpu: u16, tid: u32) -> EventHeader {
    EventHeader {
        ts_ns: ts,
        kind: kind as u16,
        cpu,
        tid,
        tgid: tid,
        _pad: 0,
    }
}

/// One TCP connection as the probes see it: ports, cookie, and where the engine's
/// stream offset 0 sits in sequence space.
#[derive(Clone, Copy)]
pub(crate) struct Conn {
    pub(crate) cookie: u64,
    pub(crate) lport: u16,
    pub(crate) rport: u16,
    /// Sequence number of stream offset 0.
    pub(crate) base: u32,
    pub(crate) tls: TlsPath,
}

pub(crate) const A: Conn = Conn {
    cookie: 7,
    lport: 40000,
    rport: 443,
    base: 1_000_000,
    tls: TlsPath::None,
};

/// Builds an event stream.
#[derive(Default)]
pub(crate) struct Trace {
    pub(crate) events: Vec<Event>,
}

impl Trace {
    /// A packet event of `conn` carrying stream bytes `[off, off+len)`.
    #[allow(clippy::too_many_arguments)]
    fn packet(
        &mut self,
        kind: ProbeKind,
        ts: u64,
        cpu: u16,
        skb: u64,
        c: Conn,
        off: u64,
        len: u32,
    ) {
        self.events.push(Event::Skb(SkbEvent {
            hdr: hdr(kind, ts, cpu, 0),
            skb,
            len: len + 40,
            ifindex: 2,
            flow: Flow {
                sport: c.rport,
                dport: c.lport,
                protocol: 6,
                ip_version: 4,
                tcp_seq: c.base.wrapping_add(off as u32),
                tcp_len: len,
                ..Flow::default()
            },
        }));
    }

    /// A packet queued by `netif_rx` then received by `netif_receive_skb` 100 ns later.
    fn rx(&mut self, ts: u64, cpu: u16, skb: u64, c: Conn, off: u64, len: u32) {
        self.packet(ProbeKind::NetifRx, ts, cpu, skb, c, off, len);
        self.packet(ProbeKind::NetifReceiveSkb, ts + 100, cpu, skb, c, off, len);
    }

    fn softirq(&mut self, kind: ProbeKind, ts: u64, cpu: u16) {
        self.events.push(Event::Softirq(SoftirqEvent {
            hdr: hdr(kind, ts, cpu, 0),
            vec: ws_abi::NET_RX_SOFTIRQ,
            _pad: 0,
        }));
    }

    /// `tcp_probe` of a segment holding stream bytes `[off, end)`, `rcv` already received.
    #[allow(clippy::too_many_arguments)]
    fn segment(&mut self, ts: u64, cpu: u16, skb: u64, c: Conn, off: u64, end: u64, rcv: u64) {
        self.events.push(Event::Tcp(TcpEvent {
            hdr: hdr(ProbeKind::TcpProbe, ts, cpu, 0),
            cookie: c.cookie,
            sk: 0xffff_0000,
            skb,
            seq: c.base.wrapping_add(off as u32),
            end_seq: c.base.wrapping_add(end as u32),
            rcv_nxt: c.base.wrapping_add(rcv as u32),
            copied_seq: 0,
            lport: c.lport,
            rport: c.rport,
            tcp_flags: 0x18,
            _pad: [0; 3],
        }));
    }

    /// A read by the app thread that left the stream read up to `upto`.
    fn read(&mut self, ts: u64, c: Conn, upto: u64, ret: i64) {
        self.events.push(Event::Recv(RecvEvent {
            hdr: hdr(ProbeKind::SockRecv, ts, APP_CPU, TID),
            cookie: c.cookie,
            sk: 0xffff_0000,
            ret,
            copied_seq: c.base.wrapping_add(upto as u32),
            rcv_nxt: c.base.wrapping_add(upto as u32),
            lport: c.lport,
            rport: c.rport,
            flags: 0,
        }));
    }

    fn sched(&mut self, kind: ProbeKind, ts: u64, cpu: u16) {
        self.events.push(Event::Sched(SchedEvent {
            hdr: hdr(kind, ts, cpu, 0),
            next_tid: TID,
            next_tgid: TID,
            ..SchedEvent::default()
        }));
    }

    fn epoll(&mut self, ts: u64) {
        self.events.push(Event::Syscall(SyscallEvent {
            hdr: hdr(ProbeKind::EpollExit, ts, APP_CPU, TID),
            ret: 1,
            nr: 232,
            _pad: 0,
        }));
    }

    /// Message `msg` of `c` ending at stream offset `end`, completed by a read that ended
    /// at `read_end`; callback entry at `ts`, running `run` ns; engine stamps from `ts - 400`.
    fn message(&mut self, ts: u64, c: Conn, msg: u64, end: u64, read_end: u64, run: u64) {
        self.events.push(Event::Callback(CallbackEvent {
            hdr: hdr(ProbeKind::CallbackEntry, ts, APP_CPU, TID),
            attach: 0,
            probe: MsgProbe {
                abi_version: ws_abi::ABI_VERSION,
                fd: 5,
                conn_id: c.cookie,
                sock_cookie: c.cookie,
                stream_end: end,
                len: 10,
                msg_seq: msg,
                read_end,
                opcode: 2,
                tls_path: c.tls as u8,
                _pad: [0; 2],
                clock_error_ns: 0,
                stamps: MsgStamps {
                    event_ns: 0,
                    recv_start_ns: ts - 400,
                    recv_end_ns: ts - 300,
                    decrypt_start_ns: 0,
                    parsed_ns: ts - 200,
                    callback_ns: ts + 10,
                },
            },
        }));
        self.exit(ts + run + 50, msg, ts + 10, ts + 10 + run);
    }

    fn exit(&mut self, ts: u64, msg: u64, start: u64, done: u64) {
        self.events.push(Event::CallbackDone(CallbackDoneEvent {
            hdr: hdr(ProbeKind::CallbackExit, ts, APP_CPU, TID),
            attach: 0,
            msg_seq: msg,
            start_ns: start,
            done_ns: done,
        }));
    }

    /// A `--uprobe` function entry (`ret` false) or return on the app thread.
    fn uprobe(&mut self, kind: ProbeKind, ts: u64, uprobe: u64) {
        self.events.push(Event::Uprobe(ws_abi::UprobeEvent {
            hdr: hdr(kind, ts, APP_CPU, TID),
            attach: uprobe,
            value: 0,
        }));
    }

    fn correlate(&self) -> Correlation {
        correlate(&self.events)
    }
}

fn only_row(c: &Correlation) -> &MessageRow {
    assert_eq!(
        c.rows.len(),
        1,
        "rows: {:?}, unjoined {:?}",
        c.rows,
        c.unjoined
    );
    &c.rows[0]
}

/// [`one_message`] on connection `c`, every stamp `at` ns later: the first message of `c`
/// (its callback entry at `at + 5_400`, done at `at + 6_410`, NIC stamp at `at + 1_000`).
pub(crate) fn message_at(t: &mut Trace, at: u64, c: Conn) {
    t.softirq(ProbeKind::SoftirqRaise, at + 900, 0);
    t.rx(at + 1_000, 0, 0xa, c, 0, 100);
    t.softirq(ProbeKind::SoftirqEntry, at + 1_050, 0);
    t.segment(at + 1_200, 0, 0xa, c, 0, 100, 0);
    t.sched(ProbeKind::SchedWaking, at + 1_300, 0);
    t.sched(ProbeKind::SchedWakeup, at + 4_000, APP_CPU);
    t.sched(ProbeKind::SchedSwitch, at + 4_500, APP_CPU);
    t.epoll(at + 4_800);
    t.read(at + 5_000, c, 100, 100);
    t.message(at + 5_400, c, 0, 100, 100, 1_000);
}

/// The common case: one packet, one segment, the thread asleep in epoll.
fn one_message(t: &mut Trace) {
    t.softirq(ProbeKind::SoftirqRaise, 900, 0);
    t.rx(1_000, 0, 0xa, A, 0, 100);
    t.softirq(ProbeKind::SoftirqEntry, 1_050, 0);
    t.segment(1_200, 0, 0xa, A, 0, 100, 0);
    t.sched(ProbeKind::SchedWaking, 1_300, 0);
    t.sched(ProbeKind::SchedWakeup, 4_000, APP_CPU);
    t.sched(ProbeKind::SchedSwitch, 4_500, APP_CPU);
    t.epoll(4_800);
    t.read(5_000, A, 100, 100);
    t.message(5_400, A, 0, 100, 100, 1_000);
}

/// [`one_message`]'s events (nic at 1 µs, callback_done 5.4 µs later), for other modules'
/// tests.
pub(crate) fn one_message_events() -> Vec<Event> {
    let mut t = Trace::default();
    one_message(&mut t);
    t.events
}

#[test]
fn one_packet_one_message_has_every_stamp() {
    let mut t = Trace::default();
    one_message(&mut t);
    let c = t.correlate();
    let r = only_row(&c);
    let at = |s| r.at(s);
    assert_eq!(at(Stamp::Nic), Some(1_000));
    assert_eq!(at(Stamp::Softirq), Some(1_050));
    assert_eq!(at(Stamp::Tcp), Some(1_200));
    assert_eq!(at(Stamp::Waking), Some(1_300));
    assert_eq!(at(Stamp::Wakeup), Some(4_000));
    assert_eq!(at(Stamp::OnCpu), Some(4_500));
    assert_eq!(at(Stamp::Epoll), Some(4_800));
    assert_eq!(at(Stamp::RecvStart), Some(5_000));
    assert_eq!(at(Stamp::Callback), Some(5_410));
    assert_eq!(at(Stamp::CallbackDone), Some(6_410));
    assert_eq!(r.seq_end, A.base + 100);
    assert_eq!((r.rx_cpu, r.app_cpu), (0, APP_CPU));
    assert_eq!(c.unjoined.total(), 0);
}

#[test]
fn a_cross_cpu_wakeup_lands_in_waking_to_wakeup() {
    let mut t = Trace::default();
    one_message(&mut t);
    let c = t.correlate();
    let stages: Vec<_> = only_row(&c).stages().collect();
    // Data ready to the wake call on the RX CPU: 100 ns; the wake call to the thread
    // enqueued on its own CPU (IPI, idle exit): 2.7 µs.
    assert!(stages.contains(&(Stamp::Waking, 100)), "{stages:?}");
    assert!(stages.contains(&(Stamp::Wakeup, 2_700)), "{stages:?}");
}

#[test]
fn a_segment_coalesced_in_the_backlog_takes_its_last_packets_stamp() {
    // Three packets arrive while the socket is owned by a reader; TCP coalesces them into
    // the first one's skb and processes the lot at 9 µs.
    let mut t = Trace::default();
    for (i, ts) in [1_000u64, 2_000, 3_000].into_iter().enumerate() {
        t.softirq(ProbeKind::SoftirqEntry, ts + 50, 0);
        t.rx(ts, 0, 0xa + i as u64, A, i as u64 * 100, 100);
    }
    t.segment(9_000, 1, 0xa, A, 0, 300, 0);
    t.read(9_500, A, 300, 300);
    // One message per packet, all three parsed from that read.
    for m in 0..3u64 {
        t.message(10_000 + m * 2_000, A, m, (m + 1) * 100, 300, 500);
    }
    let c = t.correlate();
    assert_eq!(c.rows.len(), 3, "{:?}", c.unjoined);
    let nic: Vec<_> = c.rows.iter().map(|r| r.at(Stamp::Nic)).collect();
    assert_eq!(nic, [Some(1_000), Some(2_000), Some(3_000)]);
    let softirq: Vec<_> = c.rows.iter().map(|r| r.at(Stamp::Softirq)).collect();
    assert_eq!(softirq, [Some(1_050), Some(2_050), Some(3_050)]);
    assert!(c.rows.iter().all(|r| r.at(Stamp::Tcp) == Some(9_000)));
}

#[test]
fn traces_without_packet_sequence_numbers_use_the_segments_skb() {
    // ABI < 4 packets carry no TCP sequence range: the segment's own skb is all there is.
    let mut t = Trace::default();
    for (i, ts) in [1_000u64, 2_000, 3_000].into_iter().enumerate() {
        t.softirq(ProbeKind::SoftirqEntry, ts + 50, 0);
        t.rx(ts, 0, 0xa + i as u64, A, i as u64 * 100, 100);
    }
    for e in &mut t.events {
        if let Event::Skb(s) = e {
            s.flow.tcp_seq = 0;
            s.flow.tcp_len = 0;
        }
    }
    t.segment(9_000, 0, 0xa, A, 0, 300, 0);
    t.read(9_500, A, 300, 300);
    t.message(10_000, A, 0, 300, 300, 500);
    let c = t.correlate();
    assert_eq!(only_row(&c).at(Stamp::Nic), Some(1_000));
}

#[test]
fn gro_merged_packets_join_through_the_merged_skb() {
    // A NAPI device: IRQ raises NET_RX; in the softirq each packet enters GRO
    // (napi_gro_receive_entry), and the merged packet (skb 0xa, all 300 bytes) is received
    // once.
    let mut t = Trace::default();
    t.softirq(ProbeKind::SoftirqRaise, 800, 0);
    t.softirq(ProbeKind::SoftirqEntry, 900, 0);
    for (i, ts) in [1_000u64, 1_100, 1_200].into_iter().enumerate() {
        t.packet(
            ProbeKind::NapiGroReceive,
            ts,
            0,
            0xa + i as u64,
            A,
            i as u64 * 100,
            100,
        );
    }
    t.packet(ProbeKind::NetifReceiveSkb, 1_300, 0, 0xa, A, 0, 300);
    t.segment(1_400, 0, 0xa, A, 0, 300, 0);
    t.read(2_000, A, 300, 300);
    t.message(2_500, A, 0, 300, 300, 500);
    let c = t.correlate();
    let r = only_row(&c);
    // The device stamped nothing before the softirq: the raise is the earliest moment.
    assert_eq!(r.at(Stamp::Nic), Some(800));
    assert_eq!(r.at(Stamp::Softirq), Some(900));
    assert_eq!(r.at(Stamp::Tcp), Some(1_400));
    assert_eq!(r.rx_cpu, 0);
}

#[test]
fn gro_packets_without_a_raise_keep_their_own_stamps() {
    // The same, with the raise not traced: each message gets its own packet's GRO stamp,
    // or, for a packet the device handed over only inside the softirq, the softirq's start.
    let mut t = Trace::default();
    t.softirq(ProbeKind::SoftirqEntry, 1_150, 0);
    for (i, ts) in [1_000u64, 1_100, 1_200].into_iter().enumerate() {
        t.packet(
            ProbeKind::NapiGroReceive,
            ts,
            0,
            0xa + i as u64,
            A,
            i as u64 * 100,
            100,
        );
    }
    t.packet(ProbeKind::NetifReceiveSkb, 1_300, 0, 0xa, A, 0, 300);
    t.segment(1_400, 0, 0xa, A, 0, 300, 0);
    t.read(2_000, A, 300, 300);
    t.message(2_500, A, 0, 100, 300, 100);
    t.message(3_000, A, 1, 200, 300, 100);
    t.message(3_500, A, 2, 300, 300, 100);
    let c = t.correlate();
    let nic: Vec<_> = c.rows.iter().map(|r| r.at(Stamp::Nic)).collect();
    assert_eq!(nic, [Some(1_000), Some(1_100), Some(1_150)]);
}

#[test]
fn a_retransmitted_duplicate_does_not_take_the_originals_place() {
    let mut t = Trace::default();
    t.softirq(ProbeKind::SoftirqEntry, 1_050, 0);
    t.rx(1_000, 0, 0xa, A, 0, 100);
    t.segment(1_200, 0, 0xa, A, 0, 100, 0);
    // A spurious retransmission of the same bytes, before the reader gets to them.
    t.softirq(ProbeKind::SoftirqEntry, 1_550, 0);
    t.rx(1_500, 0, 0xb, A, 0, 100);
    t.segment(1_600, 0, 0xb, A, 0, 100, 100);
    t.read(2_000, A, 100, 100);
    t.message(2_500, A, 0, 100, 100, 100);
    let r = only_row(&t.correlate()).clone();
    assert_eq!(r.at(Stamp::Nic), Some(1_000));
    assert_eq!(r.at(Stamp::Tcp), Some(1_200));
}

#[test]
fn a_lost_packet_is_joined_through_its_retransmission() {
    // Bytes 0..100 are lost on the wire; 100..200 arrive first and wait out of order.
    let mut t = Trace::default();
    t.softirq(ProbeKind::SoftirqEntry, 1_050, 0);
    t.rx(1_000, 0, 0xb, A, 100, 100);
    t.segment(1_100, 0, 0xb, A, 100, 200, 0);
    t.softirq(ProbeKind::SoftirqEntry, 5_050, 0);
    t.rx(5_000, 0, 0xa, A, 0, 100);
    t.segment(5_100, 0, 0xa, A, 0, 100, 0);
    t.sched(ProbeKind::SchedWaking, 5_200, 0);
    t.read(6_000, A, 200, 200);
    t.message(6_500, A, 0, 100, 200, 100);
    t.message(7_000, A, 1, 200, 200, 100);
    let c = t.correlate();
    assert_eq!(c.rows.len(), 2, "{:?}", c.unjoined);
    // Message 0 ends in the retransmission; message 1 in the packet that arrived out of
    // order: its NIC and TCP stamps are its own, and the wait for the hole shows in
    // tcp → waking.
    assert_eq!(c.rows[0].at(Stamp::Nic), Some(5_000));
    assert_eq!(c.rows[1].at(Stamp::Nic), Some(1_000));
    assert_eq!(c.rows[1].at(Stamp::Tcp), Some(1_100));
    assert_eq!(c.rows[1].at(Stamp::Waking), Some(5_200));
}

#[test]
fn sequence_numbers_wrap_at_2_pow_32() {
    let c = Conn {
        base: u32::MAX - 150,
        ..A
    };
    let mut t = Trace::default();
    for (i, ts) in [1_000u64, 2_000, 3_000].into_iter().enumerate() {
        t.softirq(ProbeKind::SoftirqEntry, ts + 50, 0);
        t.rx(ts, 0, 0xa + i as u64, c, i as u64 * 100, 100);
    }
    t.segment(9_000, 0, 0xa, c, 0, 300, 0);
    t.read(9_500, c, 300, 300);
    for m in 0..3u64 {
        t.message(10_000 + m * 1_000, c, m, (m + 1) * 100, 300, 100);
    }
    let r = t.correlate();
    let nic: Vec<_> = r.rows.iter().map(|r| r.at(Stamp::Nic)).collect();
    assert_eq!(nic, [Some(1_000), Some(2_000), Some(3_000)]);
    assert_eq!(r.rows[2].seq_end, c.base.wrapping_add(300));
    assert!(r.rows[2].seq_end < c.base, "wrapped");
}

#[test]
fn a_tls_record_spanning_packets_takes_the_packet_that_completed_the_read() {
    // Userspace TLS: the message ends where the read that completed its record ended.
    let c = Conn {
        tls: TlsPath::Userspace,
        ..A
    };
    let mut t = Trace::default();
    for (i, ts) in [1_000u64, 2_000, 3_000].into_iter().enumerate() {
        t.softirq(ProbeKind::SoftirqEntry, ts + 50, 0);
        t.rx(ts, 0, 0xa + i as u64, c, i as u64 * 1_400, 1_400);
        t.segment(
            ts + 200,
            0,
            0xa + i as u64,
            c,
            i as u64 * 1_400,
            (i as u64 + 1) * 1_400,
            i as u64 * 1_400,
        );
    }
    t.read(4_000, c, 4_200, 4_200);
    t.message(5_000, c, 0, 4_200, 4_200, 100);
    let r = t.correlate();
    let row = only_row(&r);
    assert_eq!(row.at(Stamp::Nic), Some(3_000));
    assert_eq!(row.at(Stamp::Tcp), Some(3_200));
    assert_eq!(row.tls, "userspace");
}

#[test]
fn two_connections_on_one_thread_keep_their_own_packets() {
    let b = Conn {
        cookie: 8,
        lport: 40001,
        base: 77,
        ..A
    };
    let mut t = Trace::default();
    t.rx(1_000, 0, 0xa, A, 0, 100);
    t.softirq(ProbeKind::SoftirqEntry, 1_050, 0);
    t.rx(1_100, 1, 0xb, b, 0, 100);
    t.softirq(ProbeKind::SoftirqEntry, 1_150, 1);
    t.segment(1_200, 0, 0xa, A, 0, 100, 0);
    t.segment(1_300, 1, 0xb, b, 0, 100, 0);
    t.read(2_000, b, 100, 100);
    t.message(2_100, b, 0, 100, 100, 100);
    t.read(2_500, A, 100, 100);
    t.message(2_600, A, 0, 100, 100, 100);
    let c = t.correlate();
    assert_eq!(c.rows.len(), 2, "{:?}", c.unjoined);
    let by_cookie = |k| c.rows.iter().find(|r| r.cookie == k).expect("row");
    assert_eq!(by_cookie(8).at(Stamp::Nic), Some(1_100));
    assert_eq!(by_cookie(8).rx_cpu, 1);
    assert_eq!(by_cookie(8).at(Stamp::Softirq), Some(1_150));
    assert_eq!(by_cookie(7).at(Stamp::Nic), Some(1_000));
    assert_eq!(by_cookie(7).at(Stamp::Softirq), Some(1_050));
}

/// Three messages, one packet and one read each.
fn three_reads(t: &mut Trace) {
    for m in 0..3u64 {
        let base = 10_000 * (m + 1);
        t.softirq(ProbeKind::SoftirqEntry, base + 50, 0);
        t.rx(base, 0, 0xa + m, A, m * 100, 100);
        t.segment(base + 200, 0, 0xa + m, A, m * 100, (m + 1) * 100, m * 100);
        t.read(base + 1_000, A, (m + 1) * 100, 100);
        t.message(base + 1_500, A, m, (m + 1) * 100, (m + 1) * 100, 100);
    }
}

#[test]
fn a_lost_read_is_counted_not_borrowed() {
    let mut t = Trace::default();
    three_reads(&mut t);
    // The ring dropped the second read's record: the message must not be joined through
    // the first read (it would take the first packet's stamps).
    t.events
        .retain(|e| !matches!(e, Event::Recv(r) if r.hdr.ts_ns == 21_000));
    let c = t.correlate();
    assert_eq!(c.rows.len(), 2);
    assert_eq!(c.unjoined.no_read, 1);
    assert!(c.rows.iter().all(|r| r.msg_seq != 1));
}

#[test]
fn lost_events_are_counted_under_their_reason() {
    let lose = |pred: &dyn Fn(&Event) -> bool| {
        let mut t = Trace::default();
        three_reads(&mut t);
        t.events.retain(|e| !pred(e));
        let c = t.correlate();
        assert_eq!(c.messages, 3);
        assert_eq!(c.rows.len() as u64 + c.unjoined.total(), 3);
        c.unjoined
    };
    let is_at = |e: &Event, kind: ProbeKind, ts: u64| e.kind() == kind && e.header().ts_ns == ts;
    let u = lose(&|e| is_at(e, ProbeKind::CallbackExit, 21_650));
    assert_eq!(u.no_exit, 1, "{u:?}");
    let u = lose(&|e| is_at(e, ProbeKind::TcpProbe, 20_200));
    assert_eq!(u.no_segment, 1, "{u:?}");
    let u = lose(&|e| matches!(e, Event::Skb(s) if s.skb == 0xb));
    assert_eq!(u.no_nic, 1, "{u:?}");
    let u = lose(&|e| e.kind() == ProbeKind::SoftirqEntry);
    assert_eq!(u.no_softirq, 3, "{u:?}");
}

#[test]
fn events_in_any_order_from_any_cpu_join_the_same() {
    let mut t = Trace::default();
    three_reads(&mut t);
    let sorted = t.correlate();
    // Per-CPU rings interleave: reverse, then rotate.
    t.events.reverse();
    t.events.rotate_left(7);
    let shuffled = t.correlate();
    assert_eq!(sorted.rows, shuffled.rows);
    assert_eq!(sorted.rows.len(), 3);
}

#[test]
fn stamps_out_of_order_beyond_the_clock_tolerance_break_the_row() {
    let mut t = Trace::default();
    one_message(&mut t);
    // The engine's parse stamp 1 µs before its read started: clock noise, levelled.
    for e in &mut t.events {
        if let Event::Callback(c) = e {
            c.probe.stamps.parsed_ns = c.probe.stamps.recv_end_ns - 1_000;
        }
    }
    let c = t.correlate();
    let r = only_row(&c);
    assert_eq!(r.at(Stamp::Parsed), r.at(Stamp::RecvEnd));
    // The read started 4.8 µs before the epoll wait that led to it returned: not noise.
    for e in &mut t.events {
        if let Event::Callback(c) = e {
            c.probe.stamps.recv_start_ns = 1;
        }
    }
    let c = t.correlate();
    assert!(c.rows.is_empty());
    assert_eq!(c.unjoined.inconsistent, 1);
}

#[test]
fn sequence_coverage_wraps() {
    assert!(covers(100, 200, 200));
    assert!(covers(100, 200, 101));
    assert!(!covers(100, 200, 100));
    assert!(!covers(100, 200, 201));
    assert!(covers(u32::MAX - 10, 20, 5));
    assert!(covers(u32::MAX - 10, 20, u32::MAX));
    assert!(!covers(u32::MAX - 10, 20, 21));
    assert!(seq_before(u32::MAX - 1, 3));
    assert!(!seq_before(3, u32::MAX - 1));
}

#[test]
fn stages_skip_absent_stamps() {
    let row = MessageRow::with_stamps(&[
        (Stamp::Nic, 100),
        (Stamp::Softirq, 150),
        (Stamp::Tcp, 170),
        (Stamp::Epoll, 300),
        (Stamp::Callback, 400),
        (Stamp::CallbackDone, 1000),
    ]);
    let stages: Vec<_> = row.stages().collect();
    assert_eq!(
        stages,
        vec![
            (Stamp::Softirq, 50),
            (Stamp::Tcp, 20),
            (Stamp::Epoll, 130),
            (Stamp::Callback, 100),
            (Stamp::CallbackDone, 600)
        ]
    );
    assert_eq!(row.total_ns(), Some(900));
    assert_eq!(stages.iter().map(|(_, d)| d).sum::<u64>(), 900);
}

/// A well-formed stream: messages of the given sizes, cut into packets of the given sizes
/// (cycled), packets coalesced into segments of the given counts (cycled), each segment
/// read at once. Returns the events and, per message, the stamp of the packet holding its
/// last byte.
fn stream(sizes: &[u32], packets: &[u32], coalesce: &[usize], base: u32) -> (Vec<Event>, Vec<u64>) {
    let c = Conn { base, ..A };
    let mut t = Trace::default();
    let total: u64 = sizes.iter().map(|&s| s as u64).sum();
    // Packet boundaries and stamps.
    let mut pkts: Vec<(u64, u64, u64)> = Vec::new(); // (start, end, ts)
    let (mut off, mut ts, mut i) = (0u64, 10_000u64, 0usize);
    while off < total {
        let len = (packets[i % packets.len()] as u64).min(total - off);
        pkts.push((off, off + len, ts));
        off += len;
        ts += 1_000;
        i += 1;
    }
    // Message ends, and the packet each ends in.
    let mut ends = Vec::new();
    let mut end = 0u64;
    for &s in sizes {
        end += s as u64;
        ends.push(end);
    }
    let expected: Vec<u64> = ends
        .iter()
        .map(|&e| pkts.iter().find(|p| p.0 < e && e <= p.1).map_or(0, |p| p.2))
        .collect();
    let mut p = 0usize;
    let mut g = 0usize;
    let mut msg = 0usize;
    while p < pkts.len() {
        let n = coalesce[g % coalesce.len()].max(1).min(pkts.len() - p);
        g += 1;
        let group = &pkts[p..p + n];
        for (k, &(s, e, ts)) in group.iter().enumerate() {
            t.softirq(ProbeKind::SoftirqEntry, ts + 50, 0);
            t.rx(ts, 0, 0x1000 + (p + k) as u64, c, s, (e - s) as u32);
        }
        let last_ts = group[n - 1].2;
        let (seg_start, seg_end) = (group[0].0, group[n - 1].1);
        t.segment(
            last_ts + 300,
            0,
            0x1000 + p as u64,
            c,
            seg_start,
            seg_end,
            seg_start,
        );
        t.read(last_ts + 500, c, seg_end, (seg_end - seg_start) as i64);
        let mut cb = last_ts + 600;
        while msg < ends.len() && ends[msg] <= seg_end {
            t.message(cb + 400, c, msg as u64, ends[msg], seg_end, 10);
            cb += 2;
            msg += 1;
        }
        p += n;
    }
    (t.events, expected)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// On a well-formed stream every message joins, with the stamp of the packet that
    /// carried its last byte, whatever the coalescing and wherever sequence numbers wrap.
    #[test]
    fn every_message_gets_the_packet_of_its_last_byte(
        sizes in prop::collection::vec(1u32..3_000, 1..40),
        packets in prop::collection::vec(1u32..1_500, 1..8),
        coalesce in prop::collection::vec(1usize..5, 1..5),
        base in any::<u32>(),
    ) {
        let (events, expected) = stream(&sizes, &packets, &coalesce, base);
        let c = correlate(&events);
        prop_assert_eq!(c.unjoined.total(), 0, "{:?}", c.unjoined);
        let nic: Vec<u64> = c.rows.iter().map(|r| r.at(Stamp::Nic).unwrap_or(0)).collect();
        prop_assert_eq!(nic, expected);
    }

    /// Random events never make the join panic; every message (and every read of a socket
    /// without messages) is a row or counted under a reason; every row's stamps are
    /// non-decreasing.
    #[test]
    fn random_streams_never_panic_and_rows_are_ordered(
        raw in prop::collection::vec(
            (0u16..17, 0u64..20_000, 0u16..2, 0u64..4, 0u32..400, 0u32..400, 0u32..400),
            0..300,
        ),
    ) {
        let events: Vec<Event> = raw.iter().map(|&(kind, ts, cpu, key, a, b, d)| {
            random_event(kind, ts, cpu, key, a, b, d)
        }).collect();
        let c = correlate(&events);
        prop_assert_eq!(c.messages().count() as u64 + c.unjoined.total(), c.messages);
        prop_assert_eq!(c.read_rows().count() as u64 + c.reads_unjoined.total(), c.reads);
        for r in &c.rows {
            let present: Vec<u64> = r.stamps.iter().flatten().copied().collect();
            prop_assert!(present.windows(2).all(|w| w[0] <= w[1]), "{:?}", r);
        }
    }
}

/// An event of any kind with fields drawn from small ranges, so that keys collide.
fn random_event(kind: u16, ts: u64, cpu: u16, key: u64, a: u32, b: u32, d: u32) -> Event {
    let k = ProbeKind::from_u16(kind).unwrap_or(ProbeKind::NetifRx);
    let h = hdr(k, ts, cpu, TID + (key % 2) as u32);
    let conn = Conn {
        cookie: key,
        lport: 40_000 + key as u16,
        ..A
    };
    match k {
        ProbeKind::NetifReceiveSkb | ProbeKind::NetifRx | ProbeKind::NapiGroReceive => {
            Event::Skb(SkbEvent {
                hdr: h,
                skb: key,
                len: b,
                ifindex: 1,
                flow: Flow {
                    sport: conn.rport,
                    dport: conn.lport,
                    protocol: 6,
                    tcp_seq: a,
                    tcp_len: b % 3 * 100,
                    ..Flow::default()
                },
            })
        }
        ProbeKind::SoftirqRaise | ProbeKind::SoftirqEntry | ProbeKind::SoftirqExit => {
            Event::Softirq(SoftirqEvent {
                hdr: h,
                vec: 3,
                _pad: 0,
            })
        }
        ProbeKind::TcpProbe => Event::Tcp(TcpEvent {
            hdr: h,
            cookie: key,
            skb: key,
            seq: a,
            end_seq: a.wrapping_add(b),
            rcv_nxt: d,
            lport: conn.lport,
            rport: conn.rport,
            ..TcpEvent::default()
        }),
        ProbeKind::SchedWaking
        | ProbeKind::SchedWakeup
        | ProbeKind::SchedSwitch
        | ProbeKind::ProcessFork => Event::Sched(SchedEvent {
            hdr: h,
            next_tid: h.tid,
            ..SchedEvent::default()
        }),
        ProbeKind::EpollExit => Event::Syscall(SyscallEvent {
            hdr: h,
            ret: 1,
            nr: 1,
            _pad: 0,
        }),
        ProbeKind::SockRecv => Event::Recv(RecvEvent {
            hdr: h,
            cookie: key,
            ret: b as i64 - 10,
            copied_seq: a,
            lport: conn.lport,
            rport: conn.rport,
            ..RecvEvent::default()
        }),
        ProbeKind::CallbackEntry => Event::Callback(CallbackEvent {
            hdr: h,
            attach: 0,
            probe: MsgProbe {
                sock_cookie: key,
                msg_seq: (a % 4) as u64,
                stream_end: b as u64,
                read_end: d as u64,
                stamps: MsgStamps {
                    recv_start_ns: ts.saturating_sub(a as u64),
                    recv_end_ns: ts.saturating_sub(b as u64),
                    parsed_ns: ts.saturating_sub(d as u64),
                    ..MsgStamps::default()
                },
                ..MsgProbe::default()
            },
        }),
        ProbeKind::CallbackExit => Event::CallbackDone(CallbackDoneEvent {
            hdr: h,
            attach: 0,
            msg_seq: (a % 4) as u64,
            start_ns: ts.saturating_sub(b as u64),
            done_ns: ts.saturating_sub(d as u64),
        }),
        ProbeKind::UserEntry | ProbeKind::UserExit => Event::Uprobe(ws_abi::UprobeEvent {
            hdr: h,
            attach: 0,
            value: a as u64,
        }),
    }
}

#[test]
fn a_packet_queued_while_net_rx_runs_keeps_its_own_stamp() {
    // NET_RX has been running on CPU 0 since 500 ns (raised at 400) when the sender's
    // stack, transmitting from inside it, queues the packet at 1 000 ns.
    let mut t = Trace::default();
    t.softirq(ProbeKind::SoftirqRaise, 400, 0);
    t.softirq(ProbeKind::SoftirqEntry, 500, 0);
    t.rx(1_000, 0, 0xa, A, 0, 100);
    t.segment(1_200, 0, 0xa, A, 0, 100, 0);
    t.read(2_000, A, 100, 100);
    t.message(2_500, A, 0, 100, 100, 100);
    let c = t.correlate();
    let r = only_row(&c);
    assert_eq!(r.at(Stamp::Nic), Some(1_000));
    // It did not wait for a softirq to start.
    assert_eq!(r.at(Stamp::Softirq), Some(1_000));
}

#[test]
fn a_read_under_way_when_the_packet_arrived_has_no_start_stage() {
    // The engine's read started at 900 ns and held the socket; the packet arrived at
    // 1 000 ns, waited in the backlog, and the read took it in before returning.
    let mut t = Trace::default();
    t.rx(1_000, 0, 0xa, A, 0, 100);
    t.softirq(ProbeKind::SoftirqEntry, 1_050, 0);
    t.segment(5_000, 1, 0xa, A, 0, 100, 0);
    t.softirq(ProbeKind::SoftirqEntry, 4_900, 1);
    t.read(5_200, A, 100, 100);
    t.message(5_500, A, 0, 100, 100, 100);
    for e in &mut t.events {
        if let Event::Callback(c) = e {
            c.probe.stamps.recv_start_ns = 900;
        }
    }
    let c = t.correlate();
    let r = only_row(&c);
    assert_eq!(r.at(Stamp::RecvStart), None);
    assert_eq!(r.at(Stamp::Tcp), Some(5_000));
    assert_eq!(r.at(Stamp::RecvEnd), Some(5_200));
}

#[test]
fn a_client_without_engine_messages_gets_a_row_per_read() {
    // A plain client: blocking reads, its on_message traced with --uprobe (index 0), and a
    // second, unrelated --uprobe (index 1) it calls too.
    let mut t = Trace::default();
    t.rx(1_000, 0, 0xa, A, 0, 100);
    t.softirq(ProbeKind::SoftirqEntry, 1_050, 0);
    t.segment(1_200, 0, 0xa, A, 0, 100, 0);
    t.sched(ProbeKind::SchedWaking, 1_300, 0);
    t.sched(ProbeKind::SchedWakeup, 4_000, APP_CPU);
    t.sched(ProbeKind::SchedSwitch, 4_500, APP_CPU);
    t.read(5_000, A, 100, 100);
    t.uprobe(ProbeKind::UserEntry, 5_300, 0);
    t.uprobe(ProbeKind::UserEntry, 5_400, 1);
    t.uprobe(ProbeKind::UserExit, 5_600, 1);
    t.uprobe(ProbeKind::UserExit, 7_300, 0);
    // The second read's data arrived while the thread was running: no wakeup.
    t.rx(6_000, 0, 0xb, A, 100, 50);
    t.softirq(ProbeKind::SoftirqEntry, 6_050, 0);
    t.segment(6_200, 0, 0xb, A, 100, 150, 100);
    t.read(8_000, A, 150, 50);
    let c = t.correlate();
    assert_eq!(c.messages, 0);
    assert_eq!(c.reads, 2);
    let rows: Vec<_> = c.read_rows().collect();
    assert_eq!(rows.len(), 2, "{:?}", c.reads_unjoined);
    let r = rows[0];
    assert_eq!(r.kind, RowKind::Read);
    assert_eq!(r.len, 100);
    assert_eq!(r.at(Stamp::Nic), Some(1_000));
    assert_eq!(r.at(Stamp::Waking), Some(1_300));
    assert_eq!(r.at(Stamp::OnCpu), Some(4_500));
    assert_eq!(r.at(Stamp::Read), Some(5_000));
    assert_eq!(r.at(Stamp::FnEntry), Some(5_300));
    assert_eq!(r.at(Stamp::FnExit), Some(7_300));
    assert_eq!(r.total_ns(), Some(6_300));
    let r = rows[1];
    assert_eq!(r.at(Stamp::Wakeup), None);
    assert_eq!(r.at(Stamp::Read), Some(8_000));
    assert_eq!(r.at(Stamp::FnEntry), None);
    // Every call of each function, entry to return.
    let durations: Vec<_> = c
        .calls
        .iter()
        .map(|k| (k.uprobe, k.exit_ns - k.entry_ns))
        .collect();
    assert_eq!(durations, [(0, 2_000), (1, 200)]);
}

#[test]
fn engine_sockets_get_message_rows_not_read_rows() {
    let mut t = Trace::default();
    one_message(&mut t);
    let c = t.correlate();
    assert_eq!(c.messages().count(), 1);
    assert_eq!(c.reads, 0);
    assert_eq!(c.read_rows().count(), 0);
}

/// A message whose engine record came through the stamp channel joins exactly as one from
/// the uprobes: same keys, the engine's stamps; only the clock check (which needs a kernel
/// stamp of the callback) is absent.
#[test]
fn a_stamp_channel_record_joins_like_the_uprobes() {
    let mut t = Trace::default();
    one_message(&mut t);
    let uprobes = t.correlate();
    let (mut entry, mut done) = (None, None);
    for e in &t.events {
        match e {
            Event::Callback(c) => entry = Some(*c),
            Event::CallbackDone(d) => done = Some(*d),
            _ => {}
        }
    }
    let (entry, done) = (entry.expect("entry"), done.expect("exit"));
    let rec = ws_abi::ChannelRecord {
        seq: 1,
        tid: TID,
        cpu: u32::from(APP_CPU),
        probe: entry.probe,
        start_ns: done.start_ns,
        done_ns: done.done_ns,
    };
    let (c_entry, c_done) = crate::channel::events_of(&rec, entry.hdr.tgid, 0);
    assert_eq!(c_entry.hdr.ts_ns, entry.probe.stamps.callback_ns);
    assert_eq!(c_done.hdr.ts_ns, done.done_ns);
    let events: Vec<Event> = t
        .events
        .iter()
        .map(|e| match e {
            Event::Callback(_) => Event::Callback(c_entry),
            Event::CallbackDone(_) => Event::CallbackDone(c_done),
            other => *other,
        })
        .collect();
    let channel = correlate(&events);
    let (a, b) = (only_row(&uprobes), only_row(&channel));
    assert_eq!(a.stamps, b.stamps);
    assert_eq!((a.tid, a.app_cpu, a.seq_end), (b.tid, b.app_cpu, b.seq_end));
    assert!(uprobes.clock_check_ns.is_some());
    assert_eq!(channel.clock_check_ns, None);
}

#[test]
fn sockets_without_a_cookie_are_told_apart_by_address() {
    // A plain client reads two sockets; nobody asked for their cookies (0 in every event):
    // each read must still join its own socket's packet.
    let a = Conn { cookie: 0, ..A };
    let b = Conn {
        cookie: 0,
        lport: 40001,
        base: 77,
        ..A
    };
    let mut t = Trace::default();
    t.rx(1_000, 0, 0xa, a, 0, 100);
    t.softirq(ProbeKind::SoftirqEntry, 1_050, 0);
    t.segment(1_200, 0, 0xa, a, 0, 100, 0);
    t.rx(2_000, 0, 0xb, b, 0, 100);
    t.softirq(ProbeKind::SoftirqEntry, 2_050, 0);
    t.segment(2_200, 0, 0xb, b, 0, 100, 0);
    t.read(3_000, b, 100, 100);
    t.read(4_000, a, 100, 100);
    for e in &mut t.events {
        match e {
            Event::Tcp(s) if s.lport == b.lport => s.sk = 0xbbbb_0000,
            Event::Recv(r) if r.lport == b.lport => r.sk = 0xbbbb_0000,
            _ => {}
        }
    }
    let c = t.correlate();
    let rows: Vec<_> = c.read_rows().collect();
    assert_eq!(rows.len(), 2, "{:?}", c.reads_unjoined);
    assert_eq!(rows[0].at(Stamp::Nic), Some(2_000));
    assert_eq!(rows[1].at(Stamp::Nic), Some(1_000));
}

#[test]
fn an_engine_sockets_reads_before_its_cookie_are_its_own() {
    // The engine asks for the cookie after connecting: the handshake's read has 0 there,
    // but the same socket address; it is the engine's socket, not one without messages.
    let mut t = Trace::default();
    one_message(&mut t);
    t.read(500, Conn { cookie: 0, ..A }, 0, 10);
    let c = t.correlate();
    assert_eq!(c.messages().count(), 1);
    assert_eq!(c.reads, 0, "{:?}", c.read_rows().collect::<Vec<_>>());
}
