//! Aggregate mode (`CONFIG_AGGREGATE`): instead of a record per hook, each probe updates
//! the state its hook knows (a packet's stamps, a CPU's NET_RX run, a socket's recent
//! segments, a thread's wake cycle), and a traced read adds its kernel stages into the
//! per-CPU histograms. The stage computation is `ws_abi::agg`'s, shared with its tests.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use ws_abi::{
    AGG_MAX_PACKETS, AGG_MAX_SOCKETS, AGG_MAX_TASKS, CONFIG_AGGREGATE, CONFIG_STREAM, Flow,
    ProbeConfig,
    agg::{
        NetRxCpu, NoRow, PACKET_GRO, PACKET_NETIF_RX, PACKET_RECEIVE, PacketKey, PacketSlot,
        PacketStamps, Segment, SocketState, StageHist, TaskStamps, counter, packet_slot,
        packet_stamps, read_row, seq_before, stage,
    },
};

use crate::emit::bump;

/// Per stage, per CPU: the reads' kernel stage histograms.
#[map]
static AGG_HIST: PerCpuArray<StageHist> = PerCpuArray::with_max_entries(stage::COUNT, 0);

/// Per counter, per CPU: reads seen, rows made, and why the others made none.
#[map]
static AGG_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per socket (kernel address): its last segments of new data.
#[map]
static AGG_SOCKETS: LruHashMap<u64, SocketState> = LruHashMap::with_max_entries(AGG_MAX_SOCKETS, 0);

/// Recent inbound TCP packets: their NIC and softirq stamps, by flow and end sequence, in
/// the slot [`packet_slot`] gives (direct-mapped: no allocation, no lock).
#[map]
static AGG_PACKETS: Array<PacketSlot> = Array::with_max_entries(AGG_MAX_PACKETS, 0);

/// Per thread: its wake cycle and last epoll return.
#[map]
static AGG_TASKS: LruHashMap<u32, TaskStamps> = LruHashMap::with_max_entries(AGG_MAX_TASKS, 0);

/// Index 0, per CPU: the NET_RX softirq stamps.
#[map]
static AGG_NET_RX: PerCpuArray<NetRxCpu> = PerCpuArray::with_max_entries(1, 0);

/// Whether the probes aggregate.
#[inline(always)]
pub(crate) fn on(cfg: &ProbeConfig) -> bool {
    cfg.flags & CONFIG_AGGREGATE != 0
}

/// Whether the probes aggregate *instead of* emitting records (aggregate mode without
/// [`CONFIG_STREAM`]).
#[inline(always)]
pub(crate) fn only(cfg: &ProbeConfig) -> bool {
    cfg.flags & (CONFIG_AGGREGATE | CONFIG_STREAM) == CONFIG_AGGREGATE
}

/// A packet probe's stamp for an inbound TCP packet of a traced flow: `netif_rx` and
/// `napi_gro_receive_entry` note its first stamp; `netif_receive_skb` (on the CPU whose
/// NET_RX run receives it) resolves its NIC and softirq stamps.
#[inline(always)]
pub(crate) fn packet(kind: u32, ts: u64, flow: &Flow) {
    if flow.protocol != crate::network::IPPROTO_TCP || flow.tcp_len == 0 {
        return;
    }
    let key = PacketKey {
        lport: flow.dport,
        rport: flow.sport,
        end_seq: flow.tcp_seq.wrapping_add(flow.tcp_len),
    };
    let Some(slot) = AGG_PACKETS.get_ptr_mut(packet_slot(&key)) else {
        return;
    };
    if kind != PACKET_RECEIVE {
        let first = PacketSlot {
            key,
            stamps: PacketStamps {
                nic: ts,
                softirq: 0,
                kind,
                _pad: 0,
            },
        };
        // SAFETY: a slot of an array map, valid for the program's run. Another CPU writing
        // the same slot at once (two packets hashed alike, both in flight) may leave it
        // mixed; the key check then fails or the row's stamps are out of order (counted).
        unsafe { *slot = first };
        return;
    }
    // SAFETY: as above; the slot is copied out at once.
    let held = unsafe { *slot };
    let (first, first_kind) = if held.key == key && held.stamps.softirq == 0 {
        (held.stamps.nic, held.stamps.kind)
    } else {
        (ts, PACKET_RECEIVE)
    };
    let Some(cpu) = AGG_NET_RX.get(0) else { return };
    let (nic, softirq) = packet_stamps(first, first_kind, cpu);
    let resolved = PacketSlot {
        key,
        stamps: PacketStamps {
            nic,
            softirq,
            kind: first_kind,
            _pad: 0,
        },
    };
    // SAFETY: as above.
    unsafe { *slot = resolved };
}

/// The packet kinds of the packet probes.
pub(crate) const NETIF_RX: u32 = PACKET_NETIF_RX;
/// See [`NETIF_RX`].
pub(crate) const GRO: u32 = PACKET_GRO;
/// See [`NETIF_RX`].
pub(crate) const RECEIVE: u32 = PACKET_RECEIVE;

/// `softirq_raise` for NET_RX on this CPU.
#[inline(always)]
pub(crate) fn softirq_raise(ts: u64) {
    if let Some(cpu) = AGG_NET_RX.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array; softirq probes do not nest on a CPU
        // for one vector, and a racing packet probe only reads it.
        unsafe { (*cpu).last_raise = ts };
    }
}

/// `softirq_entry` for NET_RX on this CPU.
#[inline(always)]
pub(crate) fn softirq_entry(ts: u64) {
    if let Some(cpu) = AGG_NET_RX.get_ptr_mut(0) {
        // SAFETY: as in `softirq_raise`.
        unsafe {
            (*cpu).entry_raise = (*cpu).last_raise;
            (*cpu).entry = ts;
        }
    }
}

/// `tcp_probe`: a segment reached the socket at `sk`; if it carries new data, remember it
/// with the stamps of the packet that carried its last byte.
#[inline(always)]
pub(crate) fn segment(
    sk: u64,
    ts: u64,
    lport: u16,
    rport: u16,
    seq: u32,
    end_seq: u32,
    rcv_nxt: u32,
) {
    // No payload, or nothing past what TCP already had (a retransmitted duplicate).
    if !seq_before(seq, end_seq) || !seq_before(rcv_nxt, end_seq) {
        return;
    }
    let key = PacketKey {
        lport,
        rport,
        end_seq,
    };
    let p = match AGG_PACKETS.get(packet_slot(&key)) {
        Some(slot) if slot.key == key => slot.stamps,
        _ => PacketStamps::default(),
    };
    let s = Segment {
        seq,
        end_seq,
        tcp: ts,
        nic: p.nic,
        softirq: p.softirq,
    };
    match AGG_SOCKETS.get_ptr_mut(sk) {
        // SAFETY: a live map value; a read racing on another CPU may see a slot half
        // written and then match no segment (counted), never fault.
        Some(state) => unsafe { (*state).push(s) },
        None => {
            let mut state = SocketState::default();
            state.push(s);
            let _ = AGG_SOCKETS.insert(sk, state, BPF_NOEXIST as u64);
        }
    }
}

/// Applies `f` to the thread's stamps, creating them when missing.
#[inline(always)]
fn task(tid: u32, f: impl FnOnce(&mut TaskStamps)) {
    match AGG_TASKS.get_ptr_mut(tid) {
        // SAFETY: a live map value; the thread's stamps are written by probes of its own
        // scheduling events, a race only moves a stamp to the next cycle.
        Some(t) => f(unsafe { &mut *t }),
        None => {
            let mut t = TaskStamps::default();
            f(&mut t);
            let _ = AGG_TASKS.insert(tid, t, 0);
        }
    }
}

/// `sched_waking` of a traced thread.
#[inline(always)]
pub(crate) fn waking(tid: u32, ts: u64) {
    task(tid, |t| t.waking(ts));
}

/// `sched_wakeup` of a traced thread.
#[inline(always)]
pub(crate) fn wakeup(tid: u32, ts: u64) {
    task(tid, |t| t.wakeup(ts));
}

/// `sched_switch` to a traced thread.
#[inline(always)]
pub(crate) fn switch_in(tid: u32, ts: u64) {
    if let Some(t) = AGG_TASKS.get_ptr_mut(tid) {
        // SAFETY: as in `task`.
        unsafe { (*t).switch_in(ts) };
    }
}

/// An epoll wait of a traced thread returned.
#[inline(always)]
pub(crate) fn epoll(tid: u32, ts: u64) {
    task(tid, |t| t.epoll = ts);
}

/// Adds `ns` into this CPU's histogram of `stage`.
#[inline(always)]
fn add(stage: u32, ns: u64) {
    if let Some(h) = AGG_HIST.get_ptr_mut(stage) {
        // SAFETY: this CPU's value of a per-CPU array; a probe interrupting this one on
        // the CPU may lose one count, never corrupt memory (the bucket index is checked).
        unsafe { (*h).add(ns) };
    }
}

/// A traced thread's read of the socket at `sk` returned data at `ts`, leaving
/// `copied_seq`: its row's stages go into the histograms.
#[inline(always)]
pub(crate) fn read(sk: u64, tid: u32, ts: u64, copied_seq: u32) {
    bump(&AGG_COUNTS, counter::READS);
    // SAFETY: the value is copied out at once.
    let seg = match unsafe { AGG_SOCKETS.get(sk) } {
        Some(state) => state.delivering(copied_seq, ts),
        None => None,
    };
    let Some(seg) = seg else {
        bump(&AGG_COUNTS, counter::NO_SEGMENT);
        return;
    };
    // SAFETY: the value is copied out at once.
    let task = unsafe { AGG_TASKS.get(tid) }.copied().unwrap_or_default();
    match read_row(&seg, &task, ts) {
        Ok(row) => {
            bump(&AGG_COUNTS, counter::ROWS);
            let mut i = 0;
            while i < stage::COUNT {
                if row.present & (1 << i) != 0 {
                    add(i, row.ns[i as usize]);
                }
                i += 1;
            }
        }
        Err(NoRow::NoPacket) => bump(&AGG_COUNTS, counter::NO_PACKET),
        Err(NoRow::Inconsistent) => bump(&AGG_COUNTS, counter::INCONSISTENT),
    }
}
