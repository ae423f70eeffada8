//! The index: a trace's events sorted into per-key series, ready for [`join`](super::join).
use std::collections::{HashMap, HashSet};

use ws_abi::{
    CallbackDoneEvent, CallbackEvent, ProbeKind, RecvEvent, SchedEvent, TcpEvent, UprobeEvent,
};

use crate::decode::Event;

const IPPROTO_TCP: u8 = 6;

/// Marks a socket key that is a kernel address, not a cookie (cookies count up from 1 and
/// never reach it; kernel addresses have it set anyway).
const SK_KEY: u64 = 1 << 63;

/// Events of one kind on one key, sorted by time.
pub(crate) struct Series<T> {
    pub(crate) items: Vec<(u64, T)>,
}

impl<T: Copy> Series<T> {
    fn new() -> Self {
        Series { items: Vec::new() }
    }

    /// The number of items at or before `t`.
    pub(crate) fn upto(&self, t: u64) -> usize {
        self.items.partition_point(|(ts, _)| *ts <= t)
    }

    /// The last item at or before `t`.
    pub(crate) fn last_before(&self, t: u64) -> Option<(u64, T)> {
        self.upto(t).checked_sub(1).map(|i| self.items[i])
    }

    /// The first item in `[from, to]`.
    pub(crate) fn first_within(&self, from: u64, to: u64) -> Option<(u64, T)> {
        let i = self.items.partition_point(|(ts, _)| *ts < from);
        self.items.get(i).copied().filter(|(ts, _)| *ts <= to)
    }
}

/// One stamp of an inbound TCP packet that carries payload, with the packet's own
/// sequence range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Packet {
    /// Which probe saw it: queued (`netif_rx`, `napi_gro_receive_entry`) or received
    /// (`netif_receive_skb`).
    pub(crate) kind: ProbeKind,
    /// CPU the probe ran on.
    pub(crate) cpu: u16,
    /// TCP sequence number of its first payload byte.
    pub(crate) seq: u32,
    /// Payload bytes (for a GRO-merged packet at `netif_receive_skb`: all of them).
    pub(crate) len: u32,
}

/// A trace's events by the keys the join looks them up with. Every series is sorted by
/// time; events of a kind the join does not use are not kept.
#[derive(Default)]
pub struct Index {
    /// Socket reads that returned data (or an unknown amount), by socket key
    /// ([`Index::socket_key`]: the cookie, or the socket's address before it had one).
    pub(crate) reads: HashMap<u64, Series<RecvEvent>>,
    /// `tcp_probe` segments with payload, by socket key.
    pub(crate) segments: HashMap<u64, Series<TcpEvent>>,
    /// NIC-stage events by `sk_buff` address (the fallback join for traces without
    /// per-packet sequence numbers).
    pub(crate) skbs: HashMap<u64, Series<ProbeKind>>,
    /// Inbound TCP packets with payload by (local port, remote port).
    pub(crate) packets: HashMap<(u16, u16), Series<Packet>>,
    /// Whether any packet event carries a sequence range (every trace of ABI ≥ 4 with
    /// traffic does); without, NIC stamps come from the segment's `sk_buff`.
    pub(crate) packet_seq: bool,
    /// NET_RX softirq entries by CPU.
    pub(crate) softirq_entries: HashMap<u16, Series<()>>,
    /// NET_RX softirq raises by CPU.
    pub(crate) softirq_raises: HashMap<u16, Series<()>>,
    /// `sched_waking` by woken thread.
    pub(crate) wakings: HashMap<u32, Series<SchedEvent>>,
    /// `sched_wakeup` by woken thread.
    pub(crate) wakeups: HashMap<u32, Series<SchedEvent>>,
    /// `sched_switch` by the thread switched in.
    pub(crate) switch_ins: HashMap<u32, Series<SchedEvent>>,
    /// epoll returns by thread.
    pub(crate) epolls: HashMap<u32, Series<()>>,
    /// Callback exits by (thread, msg_seq): the engine's done function names its message.
    pub(crate) exits: HashMap<(u32, u64), Series<CallbackDoneEvent>>,
    /// Callback entries (one per message), by time.
    pub(crate) callbacks: Vec<CallbackEvent>,
    /// Sockets (cookies) the engine reported messages on: their reads are not rows.
    pub(crate) engine_sockets: HashSet<u64>,
    /// `--uprobe` function entries by thread.
    pub(crate) user_entries: HashMap<u32, Series<UprobeEvent>>,
    /// `--uprobe` function returns by thread.
    pub(crate) user_exits: HashMap<u32, Series<UprobeEvent>>,
}

fn push<K: std::hash::Hash + Eq, T: Copy>(m: &mut HashMap<K, Series<T>>, k: K, t: u64, v: T) {
    m.entry(k).or_insert_with(Series::new).items.push((t, v));
}

fn sort_all<K, T>(m: &mut HashMap<K, Series<T>>) {
    // Stable: events with equal stamps keep the order the probes wrote them in.
    m.values_mut()
        .for_each(|s| s.items.sort_by_key(|(t, _)| *t));
}

impl Index {
    /// Sorts a trace's events (any order) into the series the join uses.
    pub fn build(events: &[Event]) -> Index {
        let mut ix = Index::default();
        // A socket's cookie is made when someone first asks for it (the engine does, with
        // SO_COOKIE, right after connecting; a plain client never does): events before that,
        // or of a socket nobody asked about, carry 0. The socket's kernel address names it
        // then, and events that show both join the two.
        let mut cookie_of: HashMap<u64, u64> = HashMap::new();
        for e in events {
            match e {
                Event::Recv(r) if r.cookie != 0 => {
                    cookie_of.insert(r.sk, r.cookie);
                }
                Event::Tcp(t) if t.cookie != 0 => {
                    cookie_of.insert(t.sk, t.cookie);
                }
                _ => {}
            }
        }
        let key = |cookie: u64, sk: u64| match cookie {
            0 => cookie_of.get(&sk).copied().unwrap_or(sk | SK_KEY),
            c => c,
        };
        for e in events {
            let h = e.header();
            match (e.kind(), e) {
                // A read of unknown length (the pre-6.3 fallback's first on a socket) still
                // ends where its copied_seq says.
                (ProbeKind::SockRecv, Event::Recv(r))
                    if r.ret > 0 || r.ret == ws_abi::RECV_LEN_UNKNOWN =>
                {
                    push(&mut ix.reads, key(r.cookie, r.sk), h.ts_ns, *r)
                }
                (ProbeKind::TcpProbe, Event::Tcp(t)) if t.end_seq != t.seq => {
                    push(&mut ix.segments, key(t.cookie, t.sk), h.ts_ns, *t)
                }
                (
                    k @ (ProbeKind::NetifRx
                    | ProbeKind::NapiGroReceive
                    | ProbeKind::NetifReceiveSkb),
                    Event::Skb(s),
                ) => {
                    push(&mut ix.skbs, s.skb, h.ts_ns, k);
                    let f = &s.flow;
                    if f.protocol == IPPROTO_TCP && f.tcp_len > 0 {
                        ix.packet_seq = true;
                        // Inbound: the packet's destination is the socket's local port.
                        let packet = Packet {
                            kind: k,
                            cpu: h.cpu,
                            seq: f.tcp_seq,
                            len: f.tcp_len,
                        };
                        push(&mut ix.packets, (f.dport, f.sport), h.ts_ns, packet);
                    }
                }
                (ProbeKind::SoftirqEntry, _) => push(&mut ix.softirq_entries, h.cpu, h.ts_ns, ()),
                (ProbeKind::SoftirqRaise, _) => push(&mut ix.softirq_raises, h.cpu, h.ts_ns, ()),
                (ProbeKind::SchedWaking, Event::Sched(s)) => {
                    push(&mut ix.wakings, s.next_tid, h.ts_ns, *s)
                }
                (ProbeKind::SchedWakeup, Event::Sched(s)) => {
                    push(&mut ix.wakeups, s.next_tid, h.ts_ns, *s)
                }
                (ProbeKind::SchedSwitch, Event::Sched(s)) => {
                    push(&mut ix.switch_ins, s.next_tid, h.ts_ns, *s)
                }
                (ProbeKind::EpollExit, _) => push(&mut ix.epolls, h.tid, h.ts_ns, ()),
                (ProbeKind::CallbackExit, Event::CallbackDone(d)) => {
                    push(&mut ix.exits, (h.tid, d.msg_seq), h.ts_ns, *d)
                }
                (ProbeKind::CallbackEntry, Event::Callback(c)) => {
                    ix.engine_sockets.insert(c.probe.sock_cookie);
                    ix.callbacks.push(*c)
                }
                (ProbeKind::UserEntry, Event::Uprobe(u)) => {
                    push(&mut ix.user_entries, h.tid, h.ts_ns, *u)
                }
                (ProbeKind::UserExit, Event::Uprobe(u)) => {
                    push(&mut ix.user_exits, h.tid, h.ts_ns, *u)
                }
                _ => {}
            }
        }
        sort_all(&mut ix.reads);
        sort_all(&mut ix.segments);
        sort_all(&mut ix.skbs);
        sort_all(&mut ix.packets);
        sort_all(&mut ix.softirq_entries);
        sort_all(&mut ix.softirq_raises);
        sort_all(&mut ix.wakings);
        sort_all(&mut ix.wakeups);
        sort_all(&mut ix.switch_ins);
        sort_all(&mut ix.epolls);
        sort_all(&mut ix.exits);
        sort_all(&mut ix.user_entries);
        sort_all(&mut ix.user_exits);
        ix.callbacks.sort_by_key(|c| c.hdr.ts_ns);
        ix
    }
}
