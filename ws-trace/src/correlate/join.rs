//! The join: one row per message, from an [`Index`].
use std::collections::HashMap;

use ws_abi::{CallbackEvent, ProbeKind, RecvEvent, TcpEvent, TlsPath};

use super::index::{Index, Packet, Series};
use super::{
    Call, Correlation, MessageRow, RowKind, STAMP_COUNT, Stamp, covers, seq_before, tls_name,
};

/// How far one stamp may come before the stamp it follows and still be taken as clock
/// noise (the row's stamps are then levelled), ns. Kernel stamps share one clock; engine
/// stamps are TSC readings converted to CLOCK_MONOTONIC, off by up to the engine's
/// reported calibration error, which is added to this.
pub const TOLERANCE_NS: u64 = 2_000;

/// How many events back a search for a message's read, segment or packet goes before it
/// gives up (bounds the join's cost on damaged or unrelated streams).
const SEARCH_LIMIT: usize = 4096;

/// Builds one row per message from an index.
pub fn join(ix: &Index) -> Correlation {
    let mut out = Correlation {
        messages: ix.callbacks.len() as u64,
        ..Correlation::default()
    };
    let bases = stream_bases(ix);
    let mut clock_diffs = Vec::new();
    for c in &ix.callbacks {
        let p = &c.probe;
        // Only an entry uprobe's kernel stamp checks the engine's clock; a stamp-channel
        // entry is stamped with the engine's own `callback_ns`.
        if p.stamps.callback_ns != 0 && c.attach & ws_abi::channel::CHANNEL_ATTACH == 0 {
            clock_diffs.push(c.hdr.ts_ns as i64 - p.stamps.callback_ns as i64);
        }
        if p.clock_error_ns != 0 {
            out.engine_clock_error_ns = out.engine_clock_error_ns.max(Some(p.clock_error_ns));
        }
        match join_one(ix, &bases, c) {
            Ok(row) => out.rows.push(row),
            Err(reason) => count(&mut out.unjoined, reason),
        }
    }
    clock_diffs.sort_unstable();
    out.clock_check_ns = clock_diffs.get(clock_diffs.len() / 2).copied();
    join_reads(ix, &mut out);
    out.calls = calls(ix);
    out
}

/// One row per read of every socket the engine reported no message on: the last byte the
/// read returned placed in sequence space by the `copied_seq` it left, then the same
/// kernel path as a message's, the read's return, and the first `--uprobe` function the
/// thread entered before its next read.
fn join_reads(ix: &Index, out: &mut Correlation) {
    let mut sockets: Vec<u64> = ix
        .reads
        .keys()
        .filter(|k| !ix.engine_sockets.contains(k))
        .copied()
        .collect();
    sockets.sort_unstable();
    let mut rows = Vec::new();
    for key in sockets {
        let Some(reads) = ix.reads.get(&key) else {
            continue;
        };
        for (n, &(read_ts, r)) in reads.items.iter().enumerate() {
            out.reads += 1;
            match join_read(ix, key, reads, n, read_ts, &r) {
                Ok(row) => rows.push(row),
                Err(reason) => count(&mut out.reads_unjoined, reason),
            }
        }
    }
    rows.sort_by_key(|r: &MessageRow| r.at(Stamp::Read));
    out.rows.extend(rows);
}

fn join_read(
    ix: &Index,
    key: u64,
    reads: &Series<RecvEvent>,
    n: usize,
    read_ts: u64,
    r: &RecvEvent,
) -> Result<MessageRow, Broken> {
    let tid = r.hdr.tid;
    let seq_end = r.copied_seq;
    let k = kernel_path(ix, key, tid, read_ts, seq_end)?;
    let mut stamps = [None; STAMP_COUNT];
    k.fill(&mut stamps);
    stamps[Stamp::Read as usize] = Some(read_ts);
    // The function call that handled what was read: the first entry on this thread after
    // the read and before the thread's next read of this socket.
    let next_read = reads
        .items
        .get(n + 1..)
        .and_then(|rest| rest.iter().find(|(_, q)| q.hdr.tid == tid))
        .map_or(u64::MAX, |(t, _)| *t);
    let entry = ix
        .user_entries
        .get(&tid)
        .and_then(|s| s.first_within(read_ts, next_read));
    if let Some((entry_ts, e)) = entry {
        stamps[Stamp::FnEntry as usize] = Some(entry_ts);
        stamps[Stamp::FnExit as usize] = ix.user_exits.get(&tid).and_then(|s| {
            let from = s.items.partition_point(|(t, _)| *t < entry_ts);
            s.items[from..]
                .iter()
                .find(|(_, x)| x.attach == e.attach)
                .map(|(t, _)| *t)
        });
    }
    level(&mut stamps, 0, false)?;
    Ok(MessageRow {
        kind: RowKind::Read,
        cookie: r.cookie,
        conn_id: 0,
        msg_seq: n as u64,
        len: r.ret.max(0) as u64,
        opcode: 0,
        tls: "none",
        tid,
        rx_cpu: k.rx_cpu,
        app_cpu: r.hdr.cpu,
        seq_end,
        stamps,
    })
}

/// Every `--uprobe` function call: each entry with the first return after it on the same
/// thread from the same `--uprobe` (recursive calls pair innermost-last, so their
/// durations are approximate).
fn calls(ix: &Index) -> Vec<Call> {
    let mut out = Vec::new();
    for (tid, entries) in &ix.user_entries {
        let Some(exits) = ix.user_exits.get(tid) else {
            continue;
        };
        for &(entry_ns, e) in &entries.items {
            let from = exits.items.partition_point(|(t, _)| *t < entry_ns);
            if let Some(&(exit_ns, _)) = exits.items[from..]
                .iter()
                .find(|(_, x)| x.attach == e.attach)
            {
                out.push(Call {
                    uprobe: e.attach,
                    tid: *tid,
                    entry_ns,
                    exit_ns,
                });
            }
        }
    }
    out.sort_by_key(|c| (c.entry_ns, c.tid));
    out
}

fn count(u: &mut super::Unjoined, reason: Broken) {
    match reason {
        Broken::NoExit => u.no_exit += 1,
        Broken::NoRead => u.no_read += 1,
        Broken::NoSegment => u.no_segment += 1,
        Broken::NoNic => u.no_nic += 1,
        Broken::NoSoftirq => u.no_softirq += 1,
        Broken::Inconsistent => u.inconsistent += 1,
    }
}

/// Where a message's chain broke.
enum Broken {
    NoExit,
    NoRead,
    NoSegment,
    NoNic,
    NoSoftirq,
    Inconsistent,
}

/// Per socket: `copied_seq - read_end` (mod 2^32), the sequence number of the engine's
/// stream offset 0. It is the same for every read of a connection, so it tells the read
/// that completed a message from an earlier one when the completing read's record was
/// lost. Taken as the most common value over the socket's messages (each paired with the
/// last read before it); kTLS sockets have none (the kernel's reads count plaintext).
fn stream_bases(ix: &Index) -> HashMap<u64, u32> {
    let mut votes: HashMap<u64, HashMap<u32, u32>> = HashMap::new();
    for c in &ix.callbacks {
        let p = &c.probe;
        if p.tls_path == TlsPath::Ktls as u8 {
            continue;
        }
        if let Some((_, r)) = ix
            .reads
            .get(&p.sock_cookie)
            .and_then(|s| s.last_before(c.hdr.ts_ns))
        {
            let base = r.copied_seq.wrapping_sub(p.read_end as u32);
            *votes
                .entry(p.sock_cookie)
                .or_default()
                .entry(base)
                .or_default() += 1;
        }
    }
    votes
        .into_iter()
        .filter_map(|(cookie, v)| {
            let (base, _) = v.into_iter().max_by_key(|&(base, n)| (n, base))?;
            Some((cookie, base))
        })
        .collect()
}

/// The read that completed the message: the last read on its socket before the callback
/// whose end is the engine's `read_end` (when the socket's stream base is known).
fn completing_read(
    ix: &Index,
    bases: &HashMap<u64, u32>,
    c: &CallbackEvent,
) -> Option<(u64, RecvEvent)> {
    let p = &c.probe;
    let reads = ix.reads.get(&p.sock_cookie)?;
    let upto = reads.upto(c.hdr.ts_ns);
    let Some(&base) = bases.get(&p.sock_cookie) else {
        return upto.checked_sub(1).map(|i| reads.items[i]);
    };
    let want = base.wrapping_add(p.read_end as u32);
    reads.items[..upto]
        .iter()
        .rev()
        .take(SEARCH_LIMIT)
        .find(|(_, r)| r.copied_seq == want)
        .copied()
}

/// The segment that delivered the byte before `seq_end`: the last one before the read
/// that covers it and did not find it already received (a retransmitted duplicate
/// covers it too, after `rcv_nxt` passed it).
fn delivering_segment(
    segments: &Series<TcpEvent>,
    read_ts: u64,
    seq_end: u32,
) -> Option<(u64, TcpEvent)> {
    let upto = segments.upto(read_ts);
    segments.items[..upto]
        .iter()
        .rev()
        .take(SEARCH_LIMIT)
        .find(|(_, t)| covers(t.seq, t.end_seq, seq_end) && seq_before(t.rcv_nxt, seq_end))
        .copied()
}

/// The NIC side of a message's last byte.
///
/// By sequence: among the flow's inbound packets that arrived before the segment was
/// processed (and not before the segment's own first packet: packets coalesced into a
/// segment in the socket backlog, or merged by GRO, arrive after it), the first whose own
/// sequence range holds the byte. Its earliest stamp is the NIC stamp (queued by a
/// non-NAPI device or handed to GRO, else received); the `netif_receive_skb` of the
/// packet (or of the GRO packet it was merged into) gives the CPU whose softirq received
/// it.
fn nic_by_seq(ix: &Index, seg_ts: u64, seg: &TcpEvent, seq_end: u32) -> Option<Nic> {
    let packets = ix.packets.get(&(seg.lport, seg.rport))?;
    let not_before = head_arrival(ix, seg_ts, seg).map_or(0, |(t, _)| t);
    let upto = packets.upto(seg_ts);
    let mut first: Option<(u64, Packet)> = None;
    for &(ts, p) in packets.items[..upto].iter().rev().take(SEARCH_LIMIT) {
        if ts < not_before {
            break;
        }
        if covers(p.seq, p.seq.wrapping_add(p.len), seq_end) {
            first = Some((ts, p));
        }
    }
    let (nic, p) = first?;
    let start = packets.items.partition_point(|(ts, _)| *ts < nic);
    let received = packets.items[start..upto]
        .iter()
        .find(|(_, q)| {
            q.kind == ProbeKind::NetifReceiveSkb
                && covers(q.seq, q.seq.wrapping_add(q.len), seq_end)
        })
        .map_or((nic, p.cpu), |(ts, q)| (*ts, q.cpu));
    Some(Nic {
        first: nic,
        kind: p.kind,
        received: received.0,
        cpu: received.1,
    })
}

/// The first NIC-stage stamp of the segment's own `sk_buff` before TCP processed it (the
/// first packet of the segment).
fn head_arrival(ix: &Index, seg_ts: u64, seg: &TcpEvent) -> Option<(u64, ProbeKind)> {
    let s = ix.skbs.get(&seg.skb)?;
    // skb addresses are reused: the packet's events are the run of them just before TCP,
    // back to the last received (netif_receive_skb) of an earlier packet.
    let chain = &s.items[..s.upto(seg_ts)];
    let last_rx = chain
        .iter()
        .rposition(|(_, k)| *k != ProbeKind::NetifReceiveSkb);
    match last_rx {
        Some(i) => Some(chain[i]),
        None => chain.last().copied(),
    }
}

/// The NIC side from the segment's own `sk_buff` (traces without per-packet sequence
/// numbers): the first packet of the segment.
fn nic_by_skb(ix: &Index, seg_ts: u64, seg: &TcpEvent) -> Option<Nic> {
    head_arrival(ix, seg_ts, seg).map(|(first, kind)| Nic {
        first,
        kind,
        received: seg_ts,
        cpu: seg.hdr.cpu,
    })
}

/// Where and when the packet holding a message's last byte entered the stack.
struct Nic {
    /// Its first stamp.
    first: u64,
    /// The probe of that stamp.
    kind: ProbeKind,
    /// When the stack received it (`netif_receive_skb`).
    received: u64,
    /// The CPU that received it.
    cpu: u16,
}

fn join_one(
    ix: &Index,
    bases: &HashMap<u64, u32>,
    c: &CallbackEvent,
) -> Result<MessageRow, Broken> {
    let p = &c.probe;
    let tid = c.hdr.tid;
    let entry = c.hdr.ts_ns;
    let (exit_ts, done) = ix
        .exits
        .get(&(tid, p.msg_seq))
        .and_then(|s| s.first_within(entry, u64::MAX))
        .ok_or(Broken::NoExit)?;
    let (read_ts, read) = completing_read(ix, bases, c).ok_or(Broken::NoRead)?;
    let seq_end = read
        .copied_seq
        .wrapping_sub(p.read_end.saturating_sub(p.stream_end) as u32);
    let k = kernel_path(ix, p.sock_cookie, tid, read_ts, seq_end)?;
    let tcp_ts = k.tcp;
    let st = &p.stamps;
    let nz = |v: u64| (v != 0).then_some(v);
    // How far an engine stamp may sit from its neighbour and still be clock noise.
    let tolerance = TOLERANCE_NS + p.clock_error_ns as u64;
    let mut stamps = [None; STAMP_COUNT];
    k.fill(&mut stamps);
    // A read that started before the segment reached TCP held the socket while the
    // packet arrived (it waited in the backlog, and the read took it in before
    // returning): that read's start is not a step of this message's way.
    stamps[Stamp::RecvStart as usize] = nz(st.recv_start_ns).filter(|&t| t + tolerance >= tcp_ts);
    stamps[Stamp::Decrypt as usize] = nz(st.decrypt_start_ns);
    stamps[Stamp::RecvEnd as usize] = nz(st.recv_end_ns);
    stamps[Stamp::Parsed as usize] = nz(st.parsed_ns);
    // The engine's stamps of the callback itself (inside the probe function, before the
    // done call) leave both uprobes' costs out of it; the uprobes' own stamps stand in
    // where the engine gave none.
    let (start, end, engine_callback) = match (done.start_ns, done.done_ns) {
        (s, d) if s != 0 && d >= s => (s, d, true),
        _ => (entry, exit_ts, false),
    };
    stamps[Stamp::Callback as usize] = Some(start);
    stamps[Stamp::CallbackDone as usize] = Some(end);
    level(&mut stamps, tolerance, engine_callback)?;
    Ok(MessageRow {
        kind: RowKind::Message,
        cookie: p.sock_cookie,
        conn_id: p.conn_id,
        msg_seq: p.msg_seq,
        len: p.len,
        opcode: p.opcode,
        tls: tls_name(p.tls_path),
        tid,
        rx_cpu: k.rx_cpu,
        app_cpu: c.hdr.cpu,
        seq_end,
        stamps,
    })
}

/// The kernel's part of a row: from the packet holding the byte before `seq_end` on
/// socket `cookie` to thread `tid`'s read that returned at `read_ts`.
struct KernelPath {
    nic: u64,
    softirq: u64,
    tcp: u64,
    waking: Option<u64>,
    wakeup: Option<u64>,
    on_cpu: Option<u64>,
    epoll: Option<u64>,
    rx_cpu: u16,
}

impl KernelPath {
    fn fill(&self, stamps: &mut [Option<u64>; STAMP_COUNT]) {
        stamps[Stamp::Nic as usize] = Some(self.nic);
        stamps[Stamp::Softirq as usize] = Some(self.softirq);
        stamps[Stamp::Tcp as usize] = Some(self.tcp);
        stamps[Stamp::Waking as usize] = self.waking;
        stamps[Stamp::Wakeup as usize] = self.wakeup;
        stamps[Stamp::OnCpu as usize] = self.on_cpu;
        stamps[Stamp::Epoll as usize] = self.epoll;
    }
}

fn kernel_path(
    ix: &Index,
    cookie: u64,
    tid: u32,
    read_ts: u64,
    seq_end: u32,
) -> Result<KernelPath, Broken> {
    let (tcp_ts, seg) = ix
        .segments
        .get(&cookie)
        .and_then(|s| delivering_segment(s, read_ts, seq_end))
        .ok_or(Broken::NoSegment)?;
    let nic = if ix.packet_seq {
        nic_by_seq(ix, tcp_ts, &seg, seq_end)
    } else {
        nic_by_skb(ix, tcp_ts, &seg)
    };
    let nic = nic.ok_or(Broken::NoNic)?;
    let rx_cpu = nic.cpu;
    let (softirq_entry, ()) = ix
        .softirq_entries
        .get(&rx_cpu)
        .and_then(|s| s.last_before(nic.received))
        .ok_or(Broken::NoSoftirq)?;
    let (nic, softirq) = if nic.first <= softirq_entry {
        (nic.first, softirq_entry)
    } else if nic.kind == ProbeKind::NetifRx {
        // A non-NAPI device (veth, loopback) queued the packet while NET_RX was already
        // running on that CPU (a sender's stack transmitting from the softirq, say): the
        // same run picked it up, so it did not wait for a softirq to start.
        (nic.first, nic.first)
    } else {
        // NAPI devices stamp the packet inside the softirq; the raise before it (else the
        // softirq's start) is the earliest moment the kernel knew of it.
        let raise = ix
            .softirq_raises
            .get(&rx_cpu)
            .and_then(|s| s.last_before(softirq_entry))
            .map_or(softirq_entry, |(t, ())| t);
        (raise, softirq_entry)
    };
    let waking = ix
        .wakings
        .get(&tid)
        .and_then(|s| s.first_within(tcp_ts, read_ts))
        .map(|(t, _)| t);
    let wakeup = ix
        .wakeups
        .get(&tid)
        .and_then(|s| s.first_within(waking.unwrap_or(tcp_ts), read_ts))
        .map(|(t, _)| t);
    let on_cpu = wakeup.and_then(|w| {
        ix.switch_ins
            .get(&tid)?
            .first_within(w, read_ts)
            .map(|(t, _)| t)
    });
    let after = on_cpu.or(wakeup).or(waking).unwrap_or(tcp_ts);
    let epoll = ix
        .epolls
        .get(&tid)
        .and_then(|s| s.first_within(after, read_ts))
        .map(|(t, ())| t);
    Ok(KernelPath {
        nic,
        softirq,
        tcp: tcp_ts,
        waking,
        wakeup,
        on_cpu,
        epoll,
        rx_cpu,
    })
}

/// Makes a row's stamps non-decreasing. Kernel stamps share one clock, so one before the
/// kernel stamp it follows means an event of another message was taken: the row breaks.
/// Between an engine stamp and any other, a step back of at most `tolerance` ns is clock
/// noise (the TSC conversion's error) and the later stamp is raised to the earlier;
/// further back breaks the row.
fn level(
    stamps: &mut [Option<u64>; STAMP_COUNT],
    tolerance: u64,
    engine_callback: bool,
) -> Result<(), Broken> {
    let engine = |s: Stamp| match s {
        Stamp::RecvStart | Stamp::Decrypt | Stamp::RecvEnd | Stamp::Parsed => true,
        Stamp::Callback | Stamp::CallbackDone => engine_callback,
        _ => false,
    };
    let mut prev: Option<(u64, bool)> = None;
    for s in Stamp::ALL {
        let Some(t) = stamps[s as usize].as_mut() else {
            continue;
        };
        let here = engine(s);
        if let Some((p, prev_engine)) = prev
            && *t < p
        {
            let allowed = if here || prev_engine { tolerance } else { 0 };
            if p - *t > allowed {
                return Err(Broken::Inconsistent);
            }
            *t = p;
        }
        prev = Some((*t, here));
    }
    Ok(())
}
