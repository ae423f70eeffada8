//! Ring-buffer records: every record starts with an [`EventHeader`] whose `kind` (a
//! [`ProbeKind`](crate::ProbeKind)) says which of these follows.

use crate::engine::MsgProbe;

/// `NET_RX_SOFTIRQ` in the kernel's softirq vector numbering.
pub const NET_RX_SOFTIRQ: u32 = 3;

/// The first bytes of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// A [`ProbeKind`](crate::ProbeKind) as `u16`.
    pub kind: u16,
    /// CPU the probe ran on.
    pub cpu: u16,
    /// Thread id (the kernel's pid) current when the probe ran.
    pub tid: u32,
    /// Process id (the kernel's tgid) current when the probe ran.
    pub tgid: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// A TCP/UDP flow as seen in a packet: addresses (IPv4; zero for IPv6), ports, protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Source IPv4 address, network byte order as read (0 if not IPv4).
    pub saddr: u32,
    /// Destination IPv4 address, network byte order as read (0 if not IPv4).
    pub daddr: u32,
    /// Source port, host byte order (0 if not TCP/UDP).
    pub sport: u16,
    /// Destination port, host byte order (0 if not TCP/UDP).
    pub dport: u16,
    /// IP protocol (6 TCP, 17 UDP), 0 if unknown.
    pub protocol: u8,
    /// IP version (4 or 6), 0 if unknown.
    pub ip_version: u8,
    /// Reserved, zero.
    pub _pad: u16,
    /// TCP: the segment's sequence number (host order), 0 otherwise.
    pub tcp_seq: u32,
    /// TCP: payload bytes in the segment (IP length minus IP and TCP headers), 0 otherwise.
    pub tcp_len: u32,
}

/// A packet event: `netif_receive_skb`, `netif_rx`, `napi_gro_receive_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// Kernel address of the `struct sk_buff` (a join key within one trace).
    pub skb: u64,
    /// `skb->len`: bytes in the packet at this layer.
    pub len: u32,
    /// `skb->dev->ifindex`, 0 when unknown.
    pub ifindex: u32,
    /// The packet's flow, parsed from its IP header.
    pub flow: Flow,
}

/// `softirq_raise` / `softirq_entry` / `softirq_exit` for `NET_RX`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftirqEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// Softirq vector number (always [`NET_RX_SOFTIRQ`] as filtered today).
    pub vec: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// `tcp_probe`: a segment reaching an established socket, before it is queued.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// `sk->sk_cookie` (0 until someone asked for it, e.g. `SO_COOKIE`).
    pub cookie: u64,
    /// Kernel address of the socket.
    pub sk: u64,
    /// Kernel address of the segment's `sk_buff` (joins the nic events).
    pub skb: u64,
    /// `TCP_SKB_CB(skb)->seq`.
    pub seq: u32,
    /// `TCP_SKB_CB(skb)->end_seq`.
    pub end_seq: u32,
    /// `tp->rcv_nxt` before this segment is processed.
    pub rcv_nxt: u32,
    /// `tp->copied_seq`: how far the application has read.
    pub copied_seq: u32,
    /// Local port (host order).
    pub lport: u16,
    /// Remote port (host order).
    pub rport: u16,
    /// `TCP_SKB_CB(skb)->tcp_flags`.
    pub tcp_flags: u8,
    /// Reserved, zero.
    pub _pad: [u8; 3],
}

/// Scheduler events of traced threads.
///
/// `sched_waking`: `next_*` is the thread to wake, `target_cpu` the CPU it last ran on
/// (the wakeup may still move it); the header's CPU is the waker's.
/// `sched_wakeup`: `next_*` is the woken thread, `target_cpu` where it will run.
/// `sched_switch`: `prev_*` leaves the CPU (in `prev_state`), `next_*` takes it.
/// `sched_process_fork`: `prev_*` is the parent, `next_*` the child.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// Thread leaving the CPU / forking parent (0 for wakeups).
    pub prev_tid: u32,
    /// Its process.
    pub prev_tgid: u32,
    /// Thread woken / taking the CPU / forked child.
    pub next_tid: u32,
    /// Its process.
    pub next_tgid: u32,
    /// `sched_wakeup`: CPU the woken thread will run on.
    pub target_cpu: u32,
    /// `sched_switch`: `prev`'s state (0 = runnable, i.e. preempted).
    pub prev_state: u32,
}

/// The return of a syscall (epoll_wait and friends).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// The return value (ready fds, or -errno).
    pub ret: i64,
    /// Syscall number.
    pub nr: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// `ret` of a [`RecvEvent`] whose byte count is not known: written by the reads' fallback
/// (`tcp_rcv_space_adjust`, kernels before 6.3) for the first read it sees on a socket
/// that became established before tracing started. Its `copied_seq` is exact.
pub const RECV_LEN_UNKNOWN: i64 = i64::MIN;

/// `sock_recv_length`: a traced thread's read from a socket returned. Before 6.3 the
/// reads' fallback writes it from `tcp_rcv_space_adjust`, inside the read, once per skb
/// copied: then `ret` is how far `copied_seq` moved since the socket's previous record
/// (or [`RECV_LEN_UNKNOWN`]) and `flags` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// `sk->sk_cookie`.
    pub cookie: u64,
    /// Kernel address of the socket.
    pub sk: u64,
    /// Bytes read, or -errno, or [`RECV_LEN_UNKNOWN`].
    pub ret: i64,
    /// `tp->copied_seq` after the read (TCP only).
    pub copied_seq: u32,
    /// `tp->rcv_nxt` at that moment (TCP only).
    pub rcv_nxt: u32,
    /// Local port (host order).
    pub lport: u16,
    /// Remote port (host order).
    pub rport: u16,
    /// recvmsg flags.
    pub flags: u32,
}

/// The engine handed a message to the callback (uprobe on [`ENGINE_PROBE_SYMBOL`](crate::ENGINE_PROBE_SYMBOL)).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallbackEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// Attach cookie: which attached binary this came from.
    pub attach: u64,
    /// The engine's probe struct, read from the process.
    pub probe: MsgProbe,
}

/// A uprobe or uretprobe hit on a user-chosen symbol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UprobeEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// Attach cookie: index of the `--uprobe` this came from.
    pub attach: u64,
    /// First argument (entry) or return value (exit).
    pub value: u64,
}

/// The engine's user callback returned (uprobe on [`ENGINE_DONE_SYMBOL`](crate::ENGINE_DONE_SYMBOL)).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallbackDoneEvent {
    /// Common header (its stamp: the uprobe's, just after the callback returned).
    pub hdr: EventHeader,
    /// Attach cookie: which attached binary this came from.
    pub attach: u64,
    /// The message (`MsgProbe::msg_seq`).
    pub msg_seq: u64,
    /// Engine stamp, CLOCK_MONOTONIC ns: the callback is called (after the entry uprobe).
    pub start_ns: u64,
    /// Engine stamp, CLOCK_MONOTONIC ns: the callback returned (before the done uprobe).
    pub done_ns: u64,
}
