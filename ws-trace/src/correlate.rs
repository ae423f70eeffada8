//! Correlation: one NIC→callback row per WebSocket message.
//!
//! TCP sequence space is the join key (see design.md). For each callback entry the engine
//! says where the message ends in the bytes it read (`stream_end`) and how much it had read
//! (`read_end`); the kernel's last read on that socket before the callback gives
//! `copied_seq` after that read. So the message's last byte is at sequence
//! `copied_seq - (read_end - stream_end)`, and the `tcp_probe` segment covering it is the one
//! that completed the message. From that segment: its `sk_buff` leads to the NIC events,
//! its CPU to the NET_RX softirq that carried it; the reading thread's wakeup, switch-in and
//! epoll return follow it in time; the engine's stamps and the callback uprobes finish the
//! row. Every stamp is CLOCK_MONOTONIC ns.
//!
//! Nothing is guessed: a message whose chain breaks is counted under the reason it broke
//! and left out of the stage statistics, and a stage the thread did not go through (it was
//! already running, so there was no wakeup) is absent, not zero.
use std::collections::HashMap;

use ws_abi::{
    CallbackDoneEvent, CallbackEvent, ProbeKind, RecvEvent, SchedEvent, SkbEvent, TcpEvent, TlsPath,
};

use crate::decode::Event;

/// The stamps of a row, in pipeline order. The stage a stamp ends is named after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stamp {
    /// The NIC (or loopback/veth) handed the packet to the stack.
    Nic = 0,
    /// The NET_RX softirq that processed it started.
    Softirq,
    /// The segment reached the TCP socket (`tcp_probe`).
    Tcp,
    /// The reading thread was woken.
    Wakeup,
    /// The reading thread got a CPU.
    OnCpu,
    /// Its epoll wait returned.
    Epoll,
    /// The engine started the read that completed the message.
    RecvStart,
    /// Userspace TLS: decryption of the completing record started.
    Decrypt,
    /// The read (and decryption) returned.
    RecvEnd,
    /// The engine parsed and validated the message.
    Parsed,
    /// The user's callback was called (engine stamp inside the probe function, after its
    /// uprobe; the uprobe's own stamp for engines that give none).
    Callback,
    /// The user's callback returned (engine stamp before the done function; else that
    /// function's uprobe).
    CallbackDone,
}

/// Number of [`Stamp`]s.
pub const STAMP_COUNT: usize = 12;

impl Stamp {
    /// All stamps in order.
    pub const ALL: [Stamp; STAMP_COUNT] = [
        Stamp::Nic,
        Stamp::Softirq,
        Stamp::Tcp,
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

    /// The stamp's name.
    pub const fn name(self) -> &'static str {
        match self {
            Stamp::Nic => "nic",
            Stamp::Softirq => "softirq",
            Stamp::Tcp => "tcp",
            Stamp::Wakeup => "wakeup",
            Stamp::OnCpu => "on-cpu",
            Stamp::Epoll => "epoll",
            Stamp::RecvStart => "recv_start",
            Stamp::Decrypt => "decrypt",
            Stamp::RecvEnd => "recv_end",
            Stamp::Parsed => "parsed",
            Stamp::Callback => "callback",
            Stamp::CallbackDone => "callback_done",
        }
    }

    /// What the stage ending at this stamp measures.
    pub const fn stage(self) -> &'static str {
        match self {
            Stamp::Nic => "nic",
            Stamp::Softirq => "nic → softirq (wait for NET_RX)",
            Stamp::Tcp => "softirq → tcp (IP/TCP receive)",
            Stamp::Wakeup => "tcp → wakeup (data ready to wakeup)",
            Stamp::OnCpu => "→ on-cpu (run queue)",
            Stamp::Epoll => "→ epoll return",
            Stamp::RecvStart => "→ recv_start (loop dispatch)",
            Stamp::Decrypt => "recv_start → decrypt (read syscall)",
            Stamp::RecvEnd => "→ recv_end (TLS: decrypt; else read)",
            Stamp::Parsed => "recv_end → parsed (frame parse)",
            Stamp::Callback => "parsed → callback (dispatch)",
            Stamp::CallbackDone => "callback → callback_done (user code)",
        }
    }
}

/// One message, NIC to end of callback.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MessageRow {
    /// Socket cookie of the connection.
    pub cookie: u64,
    /// Engine connection id.
    pub conn_id: u64,
    /// Message number on its connection.
    pub msg_seq: u64,
    /// Payload bytes.
    pub len: u64,
    /// WebSocket opcode.
    pub opcode: u8,
    /// [`TlsPath`] of the connection, as a name.
    pub tls: &'static str,
    /// Thread that ran the callback.
    pub tid: u32,
    /// CPU that received the completing segment.
    pub rx_cpu: u16,
    /// CPU that ran the callback.
    pub app_cpu: u16,
    /// TCP sequence number one past the message's last byte.
    pub seq_end: u32,
    /// Stamps, CLOCK_MONOTONIC ns, indexed by [`Stamp`]; `None` where the stage did not
    /// happen (no wakeup when the thread was already running; no decrypt without TLS).
    pub stamps: [Option<u64>; STAMP_COUNT],
}

impl MessageRow {
    /// A row for tests: socket cookie 1, message 0, and only the given stamps.
    #[cfg(test)]
    pub(crate) fn with_stamps(stamps: &[(Stamp, u64)]) -> MessageRow {
        let mut at = [None; STAMP_COUNT];
        for &(s, t) in stamps {
            at[s as usize] = Some(t);
        }
        MessageRow {
            cookie: 1,
            conn_id: 0,
            msg_seq: 0,
            len: 1,
            opcode: 2,
            tls: "none",
            tid: 1,
            rx_cpu: 0,
            app_cpu: 0,
            seq_end: 0,
            stamps: at,
        }
    }

    /// A stamp.
    pub fn at(&self, s: Stamp) -> Option<u64> {
        self.stamps[s as usize]
    }

    /// NIC to callback return, ns.
    pub fn total_ns(&self) -> Option<u64> {
        Some(
            self.at(Stamp::CallbackDone)?
                .saturating_sub(self.at(Stamp::Nic)?),
        )
    }

    /// The stages present in this row: each stamp after the first, with the time since the
    /// previous present stamp (saturating at zero where clocks disagree slightly).
    pub fn stages(&self) -> impl Iterator<Item = (Stamp, u64)> + '_ {
        let mut prev: Option<u64> = None;
        Stamp::ALL.iter().filter_map(move |&s| {
            let t = self.at(s)?;
            let d = prev.map(|p| t.saturating_sub(p));
            prev = Some(t);
            d.map(|d| (s, d))
        })
    }
}

/// Why messages could not be joined, with counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Unjoined {
    /// No read on the socket before the callback (tracing started mid-message).
    pub no_read: u64,
    /// No traced segment covers the message's last byte (it arrived before the filter
    /// knew the socket, or the ring dropped it).
    pub no_segment: u64,
    /// The segment's packet has no NIC event.
    pub no_nic: u64,
    /// No softirq entry before the segment on its CPU.
    pub no_softirq: u64,
    /// No callback exit (the trace ended inside the callback).
    pub no_exit: u64,
}

impl Unjoined {
    /// All unjoined messages.
    pub fn total(&self) -> u64 {
        self.no_read + self.no_segment + self.no_nic + self.no_softirq + self.no_exit
    }
}

/// What correlation produced.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Correlation {
    /// Joined rows, in callback order.
    pub rows: Vec<MessageRow>,
    /// Messages (callback entries) seen.
    pub messages: u64,
    /// Messages that could not be joined, by reason.
    pub unjoined: Unjoined,
    /// Engine callback stamp vs. the uprobe's kernel stamp for the same moment (ns,
    /// median): the engine's TSC calibration plus the uprobe's entry cost.
    pub clock_check_ns: Option<i64>,
    /// The largest TSC calibration error the engines reported (ns), if any did.
    pub engine_clock_error_ns: Option<u32>,
}

/// Events of one kind on one key, sorted by time.
struct Series<T> {
    items: Vec<(u64, T)>,
}

impl<T: Copy> Series<T> {
    fn new() -> Self {
        Series { items: Vec::new() }
    }
    fn sort(&mut self) {
        self.items.sort_by_key(|(t, _)| *t);
    }
    /// The last item at or before `t`.
    fn last_before(&self, t: u64) -> Option<(u64, T)> {
        let i = self.items.partition_point(|(ts, _)| *ts <= t);
        i.checked_sub(1).map(|i| self.items[i])
    }
    /// The first item in `[from, to]`.
    fn first_within(&self, from: u64, to: u64) -> Option<(u64, T)> {
        let i = self.items.partition_point(|(ts, _)| *ts < from);
        self.items.get(i).copied().filter(|(ts, _)| *ts <= to)
    }
}

fn series_push<K: std::hash::Hash + Eq, T: Copy>(
    m: &mut HashMap<K, Series<T>>,
    k: K,
    t: u64,
    v: T,
) {
    m.entry(k).or_insert_with(Series::new).items.push((t, v));
}

fn tls_name(path: u8) -> &'static str {
    match path {
        x if x == TlsPath::Userspace as u8 => "userspace",
        x if x == TlsPath::Ktls as u8 => "ktls",
        _ => "none",
    }
}

/// Whether `seq` (one past a byte) lies in `(start, end]` in wrapping 32-bit space, i.e.
/// the byte `seq - 1` is inside the segment `[start, end)`.
fn covers(start: u32, end: u32, seq: u32) -> bool {
    let len = end.wrapping_sub(start);
    let off = seq.wrapping_sub(start);
    off >= 1 && off <= len
}

/// Builds one row per message from a trace's events (any order).
pub fn correlate(events: &[Event]) -> Correlation {
    let mut reads: HashMap<u64, Series<RecvEvent>> = HashMap::new();
    let mut segments: HashMap<u64, Series<TcpEvent>> = HashMap::new();
    let mut skbs: HashMap<u64, Series<ProbeKind>> = HashMap::new();
    // Inbound packets by (local port, remote port): the NIC side of a flow.
    let mut packets: HashMap<(u16, u16), Series<(ProbeKind, SkbEvent)>> = HashMap::new();
    let mut entries_on_cpu: HashMap<u16, Series<()>> = HashMap::new();
    let mut raises_on_cpu: HashMap<u16, Series<()>> = HashMap::new();
    let mut wakeups: HashMap<u32, Series<SchedEvent>> = HashMap::new();
    let mut switch_ins: HashMap<u32, Series<SchedEvent>> = HashMap::new();
    let mut epolls: HashMap<u32, Series<()>> = HashMap::new();
    // Callback exits by (thread, msg_seq): the engine's done function names its message.
    let mut exits: HashMap<(u32, u64), Series<CallbackDoneEvent>> = HashMap::new();
    let mut callbacks: Vec<CallbackEvent> = Vec::new();
    for e in events {
        let h = e.header();
        match (e.kind(), e) {
            (ProbeKind::SockRecv, Event::Recv(r)) if r.ret > 0 => {
                series_push(&mut reads, r.cookie, h.ts_ns, *r)
            }
            (ProbeKind::TcpProbe, Event::Tcp(t)) if t.end_seq != t.seq => {
                series_push(&mut segments, t.cookie, h.ts_ns, *t)
            }
            (
                k @ (ProbeKind::NetifRx | ProbeKind::NapiGroReceive | ProbeKind::NetifReceiveSkb),
                Event::Skb(s),
            ) => series_push(&mut skbs, s.skb, h.ts_ns, k),
            (ProbeKind::SoftirqEntry, _) => series_push(&mut entries_on_cpu, h.cpu, h.ts_ns, ()),
            (ProbeKind::SoftirqRaise, _) => series_push(&mut raises_on_cpu, h.cpu, h.ts_ns, ()),
            (ProbeKind::SchedWakeup, Event::Sched(s)) => {
                series_push(&mut wakeups, s.next_tid, h.ts_ns, *s)
            }
            (ProbeKind::SchedSwitch, Event::Sched(s)) => {
                series_push(&mut switch_ins, s.next_tid, h.ts_ns, *s)
            }
            (ProbeKind::EpollExit, _) => series_push(&mut epolls, h.tid, h.ts_ns, ()),
            (ProbeKind::CallbackExit, Event::CallbackDone(d)) => {
                series_push(&mut exits, (h.tid, d.msg_seq), h.ts_ns, *d)
            }
            (ProbeKind::CallbackEntry, Event::Callback(c)) => callbacks.push(*c),
            _ => {}
        }
    }
    for s in reads.values_mut() {
        s.sort();
    }
    for s in segments.values_mut() {
        s.sort();
    }
    for s in skbs.values_mut() {
        s.sort();
    }
    for s in packets.values_mut() {
        s.sort();
    }
    for m in [&mut entries_on_cpu, &mut raises_on_cpu] {
        m.values_mut().for_each(Series::sort);
    }
    for m in [&mut wakeups, &mut switch_ins] {
        m.values_mut().for_each(Series::sort);
    }
    epolls.values_mut().for_each(Series::sort);
    exits.values_mut().for_each(Series::sort);
    callbacks.sort_by_key(|c| c.hdr.ts_ns);

    let mut out = Correlation {
        messages: callbacks.len() as u64,
        ..Correlation::default()
    };
    let mut clock_diffs = Vec::new();
    for c in &callbacks {
        let p = &c.probe;
        let tid = c.hdr.tid;
        let entry = c.hdr.ts_ns;
        if p.stamps.callback_ns != 0 {
            clock_diffs.push(entry as i64 - p.stamps.callback_ns as i64);
        }
        if p.clock_error_ns != 0 {
            out.engine_clock_error_ns = out.engine_clock_error_ns.max(Some(p.clock_error_ns));
        }
        let Some((exit_ts, done)) = exits
            .get(&(tid, p.msg_seq))
            .and_then(|s| s.first_within(entry, u64::MAX))
        else {
            out.unjoined.no_exit += 1;
            continue;
        };
        let Some((read_ts, read)) = reads.get(&p.sock_cookie).and_then(|s| s.last_before(entry))
        else {
            out.unjoined.no_read += 1;
            continue;
        };
        let seq_end = read
            .copied_seq
            .wrapping_sub(p.read_end.saturating_sub(p.stream_end) as u32);
        // The segment that completed the message arrived before the read: search back.
        let segment = segments.get(&p.sock_cookie).and_then(|s| {
            let upto = s.items.partition_point(|(ts, _)| *ts <= read_ts);
            s.items[..upto]
                .iter()
                .rev()
                .find(|(_, t)| covers(t.seq, t.end_seq, seq_end))
                .copied()
        });
        let Some((tcp_ts, seg)) = segment else {
            out.unjoined.no_segment += 1;
            continue;
        };
        // The packet that carried the message's last byte, found by its own TCP sequence
        // range: the segment TCP processed may be several packets coalesced (in the
        // socket backlog, or by GRO), and its skb is then the first of them.
        let by_seq = packets.get(&(seg.lport, seg.rport)).and_then(|s| {
            let upto = s.items.partition_point(|(ts, _)| *ts <= tcp_ts);
            let mut receive = None;
            let mut queued = None;
            for (ts, (kind, p)) in s.items[..upto].iter().rev() {
                if !covers(
                    p.flow.tcp_seq,
                    p.flow.tcp_seq.wrapping_add(p.flow.tcp_len),
                    seq_end,
                ) {
                    continue;
                }
                match kind {
                    ProbeKind::NetifReceiveSkb => receive = receive.or(Some((*ts, p.hdr.cpu))),
                    _ => queued = queued.or(Some(*ts)),
                }
                if receive.is_some() && queued.is_some() {
                    break;
                }
            }
            receive.map(|(ts, cpu)| (queued.unwrap_or(ts).min(ts), ts, cpu))
        });
        // Without per-packet sequence numbers, fall back to the segment's own skb.
        let by_skb = || {
            skbs.get(&seg.skb).and_then(|s| {
                // The packet's events before it reached TCP (skb addresses are reused).
                let upto = s.items.partition_point(|(ts, _)| *ts <= tcp_ts);
                let chain = &s.items[..upto];
                let last_rx = chain
                    .iter()
                    .rposition(|(_, k)| *k != ProbeKind::NetifReceiveSkb);
                let first = match last_rx {
                    Some(i) => chain[i].0,
                    None => chain.last()?.0,
                };
                Some((first, tcp_ts, seg.hdr.cpu))
            })
        };
        let Some((nic_first, received, rx_cpu)) = by_seq.or_else(by_skb) else {
            out.unjoined.no_nic += 1;
            continue;
        };
        let Some((softirq, ())) = entries_on_cpu
            .get(&rx_cpu)
            .and_then(|s| s.last_before(received))
        else {
            out.unjoined.no_softirq += 1;
            continue;
        };
        // NAPI devices stamp the packet inside the softirq; the raise before it is the
        // earliest moment the kernel knew of it.
        let nic = if nic_first > softirq {
            raises_on_cpu
                .get(&rx_cpu)
                .and_then(|s| s.last_before(softirq))
                .map_or(nic_first, |(t, ())| t.min(nic_first))
        } else {
            nic_first
        };
        let wakeup = wakeups
            .get(&tid)
            .and_then(|s| s.first_within(tcp_ts, read_ts));
        let on_cpu = wakeup.and_then(|(w, _)| switch_ins.get(&tid)?.first_within(w, read_ts));
        let after = on_cpu.or(wakeup).map_or(tcp_ts, |(t, _)| t);
        let epoll = epolls
            .get(&tid)
            .and_then(|s| s.first_within(after, read_ts));
        let st = &p.stamps;
        let nz = |v: u64| (v != 0).then_some(v);
        let mut stamps = [None; STAMP_COUNT];
        stamps[Stamp::Nic as usize] = Some(nic);
        stamps[Stamp::Softirq as usize] = Some(softirq);
        stamps[Stamp::Tcp as usize] = Some(tcp_ts);
        stamps[Stamp::Wakeup as usize] = wakeup.map(|(t, _)| t);
        stamps[Stamp::OnCpu as usize] = on_cpu.map(|(t, _)| t);
        stamps[Stamp::Epoll as usize] = epoll.map(|(t, ())| t);
        stamps[Stamp::RecvStart as usize] = nz(st.recv_start_ns);
        stamps[Stamp::Decrypt as usize] = nz(st.decrypt_start_ns);
        stamps[Stamp::RecvEnd as usize] = nz(st.recv_end_ns);
        stamps[Stamp::Parsed as usize] = nz(st.parsed_ns);
        // The engine's stamps of the callback itself (inside the probe function, before
        // the done call) leave both uprobes' costs out of it; the uprobes' own stamps stand
        // in where the engine gave none.
        let (start, end) = match (done.start_ns, done.done_ns) {
            (s, d) if s != 0 && d >= s => (s, d),
            _ => (entry, exit_ts),
        };
        stamps[Stamp::Callback as usize] = Some(start);
        stamps[Stamp::CallbackDone as usize] = Some(end);
        out.rows.push(MessageRow {
            cookie: p.sock_cookie,
            conn_id: p.conn_id,
            msg_seq: p.msg_seq,
            len: p.len,
            opcode: p.opcode,
            tls: tls_name(p.tls_path),
            tid,
            rx_cpu,
            app_cpu: c.hdr.cpu,
            seq_end,
            stamps,
        });
    }
    clock_diffs.sort_unstable();
    out.clock_check_ns = clock_diffs.get(clock_diffs.len() / 2).copied();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_coverage_wraps() {
        assert!(covers(100, 200, 200));
        assert!(covers(100, 200, 101));
        assert!(!covers(100, 200, 100));
        assert!(!covers(100, 200, 201));
        assert!(covers(u32::MAX - 10, 20, 5));
        assert!(covers(u32::MAX - 10, 20, u32::MAX));
        assert!(!covers(u32::MAX - 10, 20, 21));
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
}
