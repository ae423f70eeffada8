//! Aggregate mode ([`CONFIG_AGGREGATE`](crate::CONFIG_AGGREGATE)): the probes send nothing
//! through the ring. They keep what they need between hooks in maps (per socket, per
//! packet, per thread, per CPU) and, when a traced thread's read returns, compute that
//! read's kernel stages and add each into a per-CPU histogram in the [`crate::hist`]
//! layout. User space reads and merges the histograms when asked.
//!
//! The stage computation itself ([`read_row`], [`packet_stamps`]) is plain code here, so
//! the probes and the tests run the same function (see `docs/design.md`, "Aggregate mode").

use crate::hist::BUCKETS;

/// Indices of the kernel stage histograms (entries of the `AGG_HIST` map), each named
/// after the stamp that ends it; a stage lasts from the previous stamp present in the row.
pub mod stage {
    /// nic → softirq.
    pub const SOFTIRQ: u32 = 0;
    /// softirq → tcp.
    pub const TCP: u32 = 1;
    /// tcp → waking.
    pub const WAKING: u32 = 2;
    /// waking → wakeup (or tcp → wakeup).
    pub const WAKEUP: u32 = 3;
    /// wakeup → on-cpu.
    pub const ON_CPU: u32 = 4;
    /// → epoll (from the last present stamp before it).
    pub const EPOLL: u32 = 5;
    /// → read return (from the last present stamp before it).
    pub const READ: u32 = 6;
    /// nic → read return, end to end (every row has it).
    pub const TOTAL: u32 = 7;
    /// Number of kernel stage histograms.
    pub const COUNT: u32 = 8;
}

/// Indices of the aggregate counters (entries of the `AGG_COUNTS` per-CPU array).
pub mod counter {
    /// Reads by traced threads of traced sockets that returned data.
    pub const READS: u32 = 0;
    /// Of those, reads whose row went into the histograms.
    pub const ROWS: u32 = 1;
    /// Reads whose last byte no remembered segment of the socket held.
    pub const NO_SEGMENT: u32 = 2;
    /// Reads whose segment had no packet stamp (the packet was not seen, or its NET_RX
    /// run was not).
    pub const NO_PACKET: u32 = 3;
    /// Rows whose kernel stamps were out of order (a stale entry was taken).
    pub const INCONSISTENT: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

/// One kernel stage histogram (one entry of `AGG_HIST`, per CPU): bucket counts in the
/// [`crate::hist`] layout, then the sum and the max of the recorded values (ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageHist {
    /// Per-bucket counts.
    pub counts: [u64; BUCKETS],
    /// Sum of the recorded values (ns, wrapping).
    pub sum: u64,
    /// Largest recorded value (ns).
    pub max: u64,
}

impl Default for StageHist {
    fn default() -> Self {
        StageHist {
            counts: [0; BUCKETS],
            sum: 0,
            max: 0,
        }
    }
}

impl StageHist {
    /// Records one value (ns): what the probes do for each stage of a row.
    #[inline(always)]
    pub fn add(&mut self, ns: u64) {
        if let Some(c) = self.counts.get_mut(crate::hist::bucket_index(ns)) {
            *c += 1;
        }
        self.sum = self.sum.wrapping_add(ns);
        if ns > self.max {
            self.max = ns;
        }
    }

    /// Adds every count of `other` (merging the per-CPU slices of one entry).
    pub fn merge(&mut self, other: &StageHist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.wrapping_add(*b);
        }
        self.sum = self.sum.wrapping_add(other.sum);
        self.max = self.max.max(other.max);
    }
}

/// Per CPU (`AGG_NET_RX`, index 0): the NET_RX softirq stamps the packet probes need.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRxCpu {
    /// The last NET_RX `softirq_raise` on this CPU.
    pub last_raise: u64,
    /// The last NET_RX `softirq_entry` on this CPU.
    pub entry: u64,
    /// The last raise before that entry (0: none seen).
    pub entry_raise: u64,
}

/// Which packet a [`PacketSlot`] holds: an inbound TCP packet by its flow and the sequence number one
/// past its last byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketKey {
    /// Local port (the packet's destination port), host order.
    pub lport: u16,
    /// Remote port, host order.
    pub rport: u16,
    /// `tcp_seq + tcp_len` of the packet.
    pub end_seq: u32,
}

/// [`PacketStamps::kind`]: the first stamp is a non-NAPI device's `netif_rx`.
pub const PACKET_NETIF_RX: u32 = 1;
/// [`PacketStamps::kind`]: the first stamp is a NAPI driver's `napi_gro_receive_entry`.
pub const PACKET_GRO: u32 = 2;
/// [`PacketStamps::kind`]: the first stamp is `netif_receive_skb` itself.
pub const PACKET_RECEIVE: u32 = 3;

/// The stamps of one packet (in its [`PacketSlot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketStamps {
    /// Its NIC stamp: its first stamp until it is received, then as [`packet_stamps`]
    /// resolves it.
    pub nic: u64,
    /// The NET_RX run that received it (0 until `netif_receive_skb`).
    pub softirq: u64,
    /// `PACKET_*`: which probe took the first stamp.
    pub kind: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// One slot of `AGG_PACKETS`, a direct-mapped table (an array, see [`packet_slot`]): the
/// packet it holds and its stamps. A newer packet whose key maps to the same slot replaces
/// it; a segment whose packet was replaced finds another key there and makes no row
/// (counted as [`counter::NO_PACKET`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketSlot {
    /// The packet in the slot.
    pub key: PacketKey,
    /// Its stamps.
    pub stamps: PacketStamps,
}

/// The `AGG_PACKETS` slot of a packet: a multiplicative hash of its flow and end sequence
/// into `AGG_MAX_PACKETS` (a power of two) slots. An array slot costs the probes an
/// inlined address computation where a hash map's insert allocates, locks and (LRU)
/// evicts: the packet probes run for every packet of the machine's traced ports.
#[inline(always)]
pub fn packet_slot(key: &PacketKey) -> u32 {
    const BITS: u32 = crate::AGG_MAX_PACKETS.trailing_zeros();
    let mixed = key.end_seq ^ (u32::from(key.rport) << 16 | u32::from(key.lport));
    mixed.wrapping_mul(0x9E37_79B1) >> (32 - BITS)
}

/// The NIC and softirq stamps of a packet first stamped `first` by a probe of `kind`,
/// received on a CPU whose last NET_RX entry was `cpu.entry` (see `docs/design.md`, the
/// stage table): a packet that came before that entry waited for it; one queued by a
/// non-NAPI device while NET_RX was already running there did not wait (softirq = nic);
/// a NAPI packet, stamped inside the softirq, gets the raise before the entry (else the
/// entry) as its NIC stamp.
pub fn packet_stamps(first: u64, kind: u32, cpu: &NetRxCpu) -> (u64, u64) {
    let entry = cpu.entry;
    if entry == 0 {
        // No NET_RX run seen on this CPU yet: not known.
        return (first, 0);
    }
    if first <= entry {
        (first, entry)
    } else if kind == PACKET_NETIF_RX {
        (first, first)
    } else if cpu.entry_raise != 0 && cpu.entry_raise <= entry {
        (cpu.entry_raise, entry)
    } else {
        (entry, entry)
    }
}

/// A segment of new data that reached TCP, with its packet's stamps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// First sequence number.
    pub seq: u32,
    /// One past the last.
    pub end_seq: u32,
    /// `tcp_probe` stamp.
    pub tcp: u64,
    /// NIC stamp of the packet that carried its last byte (0: not known).
    pub nic: u64,
    /// Softirq stamp of that packet (0: not known).
    pub softirq: u64,
}

/// Segments remembered per socket.
pub const SOCKET_SEGMENTS: usize = 4;

/// Value of `AGG_SOCKETS` (keyed by the socket's kernel address): the last
/// [`SOCKET_SEGMENTS`] segments of new data, a ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketState {
    /// The ring of segments.
    pub segments: [Segment; SOCKET_SEGMENTS],
    /// Segments written so far (the next slot is `next % SOCKET_SEGMENTS`).
    pub next: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// `seq` is before `end` in TCP sequence space (mod 2^32).
#[inline(always)]
pub fn seq_before(seq: u32, end: u32) -> bool {
    (seq.wrapping_sub(end) as i32) < 0
}

impl SocketState {
    /// Remembers a segment (the oldest is forgotten).
    #[inline(always)]
    pub fn push(&mut self, s: Segment) {
        let i = self.next as usize % SOCKET_SEGMENTS;
        self.segments[i] = s;
        self.next = self.next.wrapping_add(1);
    }

    /// The newest remembered segment holding the byte before `seq_end` that reached TCP at
    /// or before `read_ns`.
    #[inline(always)]
    pub fn delivering(&self, seq_end: u32, read_ns: u64) -> Option<Segment> {
        let last = seq_end.wrapping_sub(1);
        let mut i = 0;
        while i < SOCKET_SEGMENTS {
            let slot = self.next.wrapping_sub(1 + i as u32) as usize % SOCKET_SEGMENTS;
            let s = self.segments[slot];
            if s.tcp != 0
                && s.tcp <= read_ns
                && !seq_before(last, s.seq)
                && seq_before(last, s.end_seq)
            {
                return Some(s);
            }
            i += 1;
        }
        None
    }
}

/// Value of `AGG_TASKS` (keyed by thread id): the thread's last wake cycle and epoll
/// return. A `sched_waking` starts a cycle (clears wakeup and on-cpu); the first wakeup
/// and the first switch-in after it are kept; `epoll` is the last return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskStamps {
    /// `sched_waking` that started the cycle.
    pub waking: u64,
    /// First `sched_wakeup` of the cycle.
    pub wakeup: u64,
    /// First switch-in after that wakeup.
    pub on_cpu: u64,
    /// Last epoll return.
    pub epoll: u64,
}

impl TaskStamps {
    /// `sched_waking`: a new cycle.
    #[inline(always)]
    pub fn waking(&mut self, ts: u64) {
        self.waking = ts;
        self.wakeup = 0;
        self.on_cpu = 0;
    }

    /// `sched_wakeup`: the first of the cycle counts.
    #[inline(always)]
    pub fn wakeup(&mut self, ts: u64) {
        if self.wakeup == 0 {
            self.wakeup = ts;
            self.on_cpu = 0;
        }
    }

    /// Switch-in: the first after the cycle's wakeup counts.
    #[inline(always)]
    pub fn switch_in(&mut self, ts: u64) {
        if self.wakeup != 0 && self.on_cpu == 0 {
            self.on_cpu = ts;
        }
    }
}

/// The kernel stages of one read ([`stage`] indices), in ns; `present` has bit `1 << i`
/// for each stage `i` the read went through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// Bit `1 << stage` for each stage present.
    pub present: u32,
    /// Duration of each present stage (ns); 0 for absent ones.
    pub ns: [u64; stage::COUNT as usize],
}

/// Why a read gives no row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoRow {
    /// Its segment had no packet stamps.
    NoPacket,
    /// A stamp came before the one it follows.
    Inconsistent,
}

/// The row of a read that returned at `read` whose last byte came in `seg`, with the
/// reading thread's stamps `task` (see `docs/design.md`, "Aggregate mode"): waking,
/// wakeup and on-cpu are taken when at or after the stamp before them and not after the
/// read (waking after tcp; wakeup after waking, else tcp; on-cpu only after a wakeup);
/// epoll when after the last of those. A stage the read did not go through is absent.
#[inline(always)]
pub fn read_row(seg: &Segment, task: &TaskStamps, read: u64) -> Result<Row, NoRow> {
    if seg.nic == 0 || seg.softirq == 0 {
        return Err(NoRow::NoPacket);
    }
    if seg.softirq < seg.nic || seg.tcp < seg.softirq || read < seg.tcp {
        return Err(NoRow::Inconsistent);
    }
    let mut row = Row::default();
    let mut put = |i: u32, ns: u64| {
        row.present |= 1 << i;
        row.ns[i as usize] = ns;
    };
    put(stage::SOFTIRQ, seg.softirq - seg.nic);
    put(stage::TCP, seg.tcp - seg.softirq);
    let mut last = seg.tcp;
    let within = |t: u64, after: u64| t != 0 && t >= after && t <= read;
    let waking = within(task.waking, last);
    if waking {
        put(stage::WAKING, task.waking - last);
        last = task.waking;
    }
    let wakeup = within(task.wakeup, last);
    if wakeup {
        put(stage::WAKEUP, task.wakeup - last);
        last = task.wakeup;
    }
    if wakeup && within(task.on_cpu, last) {
        put(stage::ON_CPU, task.on_cpu - last);
        last = task.on_cpu;
    }
    if within(task.epoll, last) {
        put(stage::EPOLL, task.epoll - last);
        last = task.epoll;
    }
    put(stage::READ, read - last);
    put(stage::TOTAL, read - seg.nic);
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's packets in flight (consecutive end sequences, any segment size)
    /// nearly all land in different slots (a collision costs one row, counted as no
    /// packet): at most 1 in 16 shares one, and every slot is in the table.
    #[test]
    fn a_flows_packets_in_flight_take_different_slots() {
        for size in [1u32, 64, 100, 1448, 16384] {
            for start in [0u32, 12345, u32::MAX - 3000] {
                let mut seen = [false; crate::AGG_MAX_PACKETS as usize];
                let mut distinct = 0;
                for i in 0..64u32 {
                    let key = PacketKey {
                        lport: 40000,
                        rport: 443,
                        end_seq: start.wrapping_add(i.wrapping_mul(size)),
                    };
                    let slot = packet_slot(&key);
                    assert!(slot < crate::AGG_MAX_PACKETS);
                    if !seen[slot as usize] {
                        seen[slot as usize] = true;
                        distinct += 1;
                    }
                }
                assert!(distinct >= 60, "size {size} from {start}: {distinct} slots");
            }
        }
        // Two connections at the same sequence number do not share a slot.
        let a = PacketKey {
            lport: 40000,
            rport: 443,
            end_seq: 7,
        };
        let b = PacketKey {
            lport: 40001,
            rport: 443,
            end_seq: 7,
        };
        assert_ne!(packet_slot(&a), packet_slot(&b));
    }

    fn seg(nic: u64, softirq: u64, tcp: u64) -> Segment {
        Segment {
            seq: 1000,
            end_seq: 1100,
            tcp,
            nic,
            softirq,
        }
    }

    #[test]
    fn a_sleeping_reader_goes_through_every_stage() {
        let task = TaskStamps {
            waking: 130,
            wakeup: 140,
            on_cpu: 160,
            epoll: 170,
        };
        let row = read_row(&seg(100, 110, 120), &task, 200).expect("row");
        assert_eq!(row.present, (1 << stage::COUNT) - 1);
        assert_eq!(row.ns, [10, 10, 10, 10, 20, 10, 30, 100]);
        // The stages add up to the total.
        assert_eq!(
            row.ns[..7].iter().sum::<u64>(),
            row.ns[stage::TOTAL as usize]
        );
    }

    #[test]
    fn a_running_reader_has_no_wake_stages() {
        // The last wake cycle was before the segment: the thread was running.
        let task = TaskStamps {
            waking: 50,
            wakeup: 55,
            on_cpu: 60,
            epoll: 150,
        };
        let row = read_row(&seg(100, 110, 120), &task, 200).expect("row");
        let absent = (1 << stage::WAKING) | (1 << stage::WAKEUP) | (1 << stage::ON_CPU);
        assert_eq!(row.present & absent, 0);
        assert_eq!(row.ns[stage::EPOLL as usize], 30);
        assert_eq!(row.ns[stage::READ as usize], 50);
        // No epoll after the segment either: tcp → read.
        let task = TaskStamps { epoll: 90, ..task };
        let row = read_row(&seg(100, 110, 120), &task, 200).expect("row");
        assert_eq!(row.present & (1 << stage::EPOLL), 0);
        assert_eq!(row.ns[stage::READ as usize], 80);
    }

    #[test]
    fn a_remote_wakeup_after_the_segment_counts_without_its_waking() {
        let task = TaskStamps {
            waking: 115,
            wakeup: 125,
            on_cpu: 0,
            epoll: 0,
        };
        let row = read_row(&seg(100, 110, 120), &task, 200).expect("row");
        assert_eq!(row.present & (1 << stage::WAKING), 0);
        assert_eq!(row.ns[stage::WAKEUP as usize], 5);
        // Woken, never switched (it was still on its CPU): no on-cpu stage.
        assert_eq!(row.present & (1 << stage::ON_CPU), 0);
        assert_eq!(row.ns[stage::READ as usize], 75);
    }

    #[test]
    fn stamps_after_the_read_belong_to_the_next() {
        let task = TaskStamps {
            waking: 210,
            wakeup: 220,
            on_cpu: 230,
            epoll: 240,
        };
        let row = read_row(&seg(100, 110, 120), &task, 200).expect("row");
        assert_eq!(
            row.present,
            (1 << stage::SOFTIRQ) | (1 << stage::TCP) | (1 << stage::READ) | (1 << stage::TOTAL)
        );
    }

    #[test]
    fn missing_or_disordered_packet_stamps_give_no_row() {
        let task = TaskStamps::default();
        assert_eq!(
            read_row(&seg(0, 110, 120), &task, 200),
            Err(NoRow::NoPacket)
        );
        assert_eq!(
            read_row(&seg(100, 130, 120), &task, 200),
            Err(NoRow::Inconsistent)
        );
    }

    #[test]
    fn packet_stamps_follow_the_stage_table() {
        let cpu = NetRxCpu {
            last_raise: 95,
            entry: 100,
            entry_raise: 90,
        };
        // Queued before the run started: waited for it.
        assert_eq!(packet_stamps(80, PACKET_NETIF_RX, &cpu), (80, 100));
        // Queued while the run was going: softirq = nic.
        assert_eq!(packet_stamps(120, PACKET_NETIF_RX, &cpu), (120, 120));
        // NAPI, stamped inside the run: the raise before it.
        assert_eq!(packet_stamps(120, PACKET_GRO, &cpu), (90, 100));
        assert_eq!(packet_stamps(120, PACKET_RECEIVE, &cpu), (90, 100));
        let no_raise = NetRxCpu {
            entry_raise: 0,
            ..cpu
        };
        assert_eq!(packet_stamps(120, PACKET_GRO, &no_raise), (100, 100));
        assert_eq!(
            packet_stamps(120, PACKET_GRO, &NetRxCpu::default()),
            (120, 0)
        );
    }

    #[test]
    fn the_delivering_segment_is_the_newest_holding_the_last_byte() {
        let mut s = SocketState::default();
        let at = |seq: u32, end_seq: u32, tcp: u64| Segment {
            seq,
            end_seq,
            tcp,
            nic: tcp - 2,
            softirq: tcp - 1,
        };
        s.push(at(0, 100, 10));
        s.push(at(100, 200, 20));
        s.push(at(u32::MAX - 9, 5, 30)); // wraps
        assert_eq!(s.delivering(100, 100).map(|x| x.tcp), Some(10));
        assert_eq!(s.delivering(150, 100).map(|x| x.tcp), Some(20));
        assert_eq!(s.delivering(200, 100).map(|x| x.tcp), Some(20));
        assert_eq!(s.delivering(3, 100).map(|x| x.tcp), Some(30));
        assert_eq!(s.delivering(0, 100).map(|x| x.tcp), Some(30));
        // Reached TCP after the read: not its segment.
        assert_eq!(s.delivering(200, 15), None);
        assert_eq!(s.delivering(300, 100), None);
        // The ring forgets the oldest.
        for k in 0..SOCKET_SEGMENTS as u32 {
            s.push(at(1000 + k * 10, 1010 + k * 10, 40 + k as u64));
        }
        assert_eq!(s.delivering(100, 1000), None);
    }

    #[test]
    fn a_wake_cycle_keeps_its_first_wakeup_and_switch_in() {
        let mut t = TaskStamps::default();
        t.switch_in(5); // no wakeup yet: not a wake cycle's
        assert_eq!(t.on_cpu, 0);
        t.waking(10);
        t.wakeup(12);
        t.wakeup(13);
        t.switch_in(20);
        t.switch_in(30);
        assert_eq!((t.waking, t.wakeup, t.on_cpu), (10, 12, 20));
        t.waking(40);
        assert_eq!((t.waking, t.wakeup, t.on_cpu), (40, 0, 0));
    }

    #[test]
    fn merging_adds_counts_and_keeps_the_max() {
        let mut a = StageHist::default();
        let mut b = StageHist::default();
        a.counts[3] = 2;
        a.sum = 6;
        a.max = 3;
        b.counts[3] = 1;
        b.counts[100] = 1;
        b.sum = 1000;
        b.max = 997;
        a.merge(&b);
        assert_eq!(
            (a.counts[3], a.counts[100], a.sum, a.max),
            (3, 1, 1006, 997)
        );
    }
}
