//! The one place where the kernel/user ABI of ws-trace is defined.
//!
//! Everything that crosses the boundary between the eBPF probes (`ws-ebpf`), the
//! user-space tracer (`ws-trace`) and the WebSocket engine (`ws-engine`) is a
//! `#[repr(C)]` type in this crate. Probes write records into one BPF ring buffer;
//! every record starts with an [`EventHeader`] whose `kind` says which record
//! follows. Records only grow at the end and [`ABI_VERSION`] changes whenever a
//! layout changes, so a recorded trace says which layout it holds.
#![no_std]
#![deny(missing_docs)]

/// Version of the record layouts below. Bump it when any layout changes.
/// (5: the callback's end is a uprobe on [`ENGINE_DONE_SYMBOL`], not a uretprobe;
/// 6: that probe records a [`CallbackDoneEvent`].)
pub const ABI_VERSION: u32 = 6;

/// Name of the engine's probe function (an `extern "C"` symbol, never inlined).
///
/// Its first argument is a `*const MsgProbe`; a uprobe on it reads the struct. On x86-64
/// its first instruction is a 5-byte nop, which the kernel turns into a call to its
/// uprobe trampoline instead of a breakpoint trap.
pub const ENGINE_PROBE_SYMBOL: &str = "ws_engine_on_message";

/// Name of the function the engine calls when the user's callback has returned:
/// `(msg_seq, start_ns, done_ns)`, the message and the engine's own CLOCK_MONOTONIC stamps
/// of the callback's start and end (taken inside the probe function, after its uprobe,
/// and before this call, so neither trap is inside them). Also a 5-byte nop first on
/// x86-64.
///
/// A uprobe there marks the end of the callback; a uretprobe on [`ENGINE_PROBE_SYMBOL`]
/// would cost a second trap per message.
pub const ENGINE_DONE_SYMBOL: &str = "ws_engine_message_done";

/// `NET_RX_SOFTIRQ` in the kernel's softirq vector numbering.
pub const NET_RX_SOFTIRQ: u32 = 3;

/// Every probe ws-trace has. The value is the record's `kind` and the probe's index
/// into the per-probe drop counters.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    /// `netif_receive_skb(skb)`: a packet enters the protocol stack.
    NetifReceiveSkb = 0,
    /// `softirq_raise(vec)` for `NET_RX`.
    SoftirqRaise = 1,
    /// `softirq_entry(vec)` for `NET_RX`.
    SoftirqEntry = 2,
    /// `softirq_exit(vec)` for `NET_RX`.
    SoftirqExit = 3,
    /// `netif_rx(skb)`: a non-NAPI device (loopback, veth) queues a received packet.
    NetifRx = 4,
    /// `napi_gro_receive_entry(skb)`: a NAPI driver hands a received packet to GRO.
    NapiGroReceive = 5,
    /// `tcp_probe(sk, skb)`: a segment reaches an established TCP socket.
    TcpProbe = 6,
    /// `sched_wakeup(p)`: a traced thread is woken.
    SchedWakeup = 7,
    /// `sched_switch(preempt, prev, next, state)`: a traced thread goes on or off CPU.
    SchedSwitch = 8,
    /// `syscalls:sys_exit_epoll_wait` / `epoll_pwait` / `epoll_pwait2` of a traced thread.
    EpollExit = 9,
    /// `sock_recv_length(sk, ret, flags)`: a traced thread read from a socket.
    SockRecv = 10,
    /// Uprobe on the engine's probe function: a message is handed to the callback.
    CallbackEntry = 11,
    /// Uprobe on the engine's done function: the callback returned.
    CallbackExit = 12,
    /// Uprobe on a user-chosen `BINARY:SYMBOL`.
    UserEntry = 13,
    /// Uretprobe on a user-chosen `BINARY:SYMBOL`.
    UserExit = 14,
    /// `sched_process_fork(parent, child)`: a traced process forked (the child is traced too).
    ProcessFork = 15,
}

/// Number of [`ProbeKind`] values; the length of per-probe arrays.
pub const PROBE_COUNT: usize = 16;

/// How a probe attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A BTF-typed tracepoint (`tp_btf`) of this name.
    TpBtf(&'static str),
    /// Classic tracepoints (category, names): one program attached to each.
    Tracepoints(&'static str, &'static [&'static str]),
    /// A uprobe (entry) placed by user space.
    Uprobe,
    /// A uretprobe (return) placed by user space.
    Uretprobe,
}

impl ProbeKind {
    /// All probes, in `kind` order.
    pub const ALL: [ProbeKind; PROBE_COUNT] = [
        ProbeKind::NetifReceiveSkb,
        ProbeKind::SoftirqRaise,
        ProbeKind::SoftirqEntry,
        ProbeKind::SoftirqExit,
        ProbeKind::NetifRx,
        ProbeKind::NapiGroReceive,
        ProbeKind::TcpProbe,
        ProbeKind::SchedWakeup,
        ProbeKind::SchedSwitch,
        ProbeKind::EpollExit,
        ProbeKind::SockRecv,
        ProbeKind::CallbackEntry,
        ProbeKind::CallbackExit,
        ProbeKind::UserEntry,
        ProbeKind::UserExit,
        ProbeKind::ProcessFork,
    ];

    /// The kernel-side probes (everything but uprobes), attached by every session.
    pub const KERNEL: [ProbeKind; 11] = [
        ProbeKind::NetifReceiveSkb,
        ProbeKind::SoftirqRaise,
        ProbeKind::SoftirqEntry,
        ProbeKind::SoftirqExit,
        ProbeKind::NetifRx,
        ProbeKind::NapiGroReceive,
        ProbeKind::TcpProbe,
        ProbeKind::SchedWakeup,
        ProbeKind::SchedSwitch,
        ProbeKind::EpollExit,
        ProbeKind::SockRecv,
    ];

    /// The probe for a record's `kind`, if it is one this ABI knows.
    pub const fn from_u16(kind: u16) -> Option<ProbeKind> {
        if (kind as usize) < PROBE_COUNT {
            Some(Self::ALL[kind as usize])
        } else {
            None
        }
    }

    /// Short, stable name used in reports and trace files (also the eBPF program's name).
    pub const fn name(self) -> &'static str {
        match self {
            ProbeKind::NetifReceiveSkb => "netif_receive_skb",
            ProbeKind::SoftirqRaise => "softirq_raise",
            ProbeKind::SoftirqEntry => "softirq_entry",
            ProbeKind::SoftirqExit => "softirq_exit",
            ProbeKind::NetifRx => "netif_rx",
            ProbeKind::NapiGroReceive => "napi_gro_receive",
            ProbeKind::TcpProbe => "tcp_probe",
            ProbeKind::SchedWakeup => "sched_wakeup",
            ProbeKind::SchedSwitch => "sched_switch",
            ProbeKind::EpollExit => "epoll_exit",
            ProbeKind::SockRecv => "sock_recv",
            ProbeKind::CallbackEntry => "callback_entry",
            ProbeKind::CallbackExit => "callback_exit",
            ProbeKind::UserEntry => "user_entry",
            ProbeKind::UserExit => "user_exit",
            ProbeKind::ProcessFork => "process_fork",
        }
    }

    /// Name of the eBPF program implementing this probe in the ws-ebpf object.
    pub const fn program(self) -> &'static str {
        self.name()
    }

    /// The stage of design.md this probe stamps.
    pub const fn stage(self) -> &'static str {
        match self {
            ProbeKind::NetifReceiveSkb | ProbeKind::NetifRx | ProbeKind::NapiGroReceive => "nic",
            ProbeKind::SoftirqRaise | ProbeKind::SoftirqEntry | ProbeKind::SoftirqExit => "softirq",
            ProbeKind::TcpProbe => "tcp",
            ProbeKind::SchedWakeup | ProbeKind::SchedSwitch | ProbeKind::ProcessFork => "sched",
            ProbeKind::EpollExit => "epoll",
            ProbeKind::SockRecv => "recv",
            ProbeKind::CallbackEntry | ProbeKind::CallbackExit => "callback",
            ProbeKind::UserEntry | ProbeKind::UserExit => "uprobe",
        }
    }

    /// Where the probe attaches.
    pub const fn hook(self) -> Hook {
        match self {
            ProbeKind::NetifReceiveSkb => Hook::TpBtf("netif_receive_skb"),
            ProbeKind::SoftirqRaise => Hook::TpBtf("softirq_raise"),
            ProbeKind::SoftirqEntry => Hook::TpBtf("softirq_entry"),
            ProbeKind::SoftirqExit => Hook::TpBtf("softirq_exit"),
            ProbeKind::NetifRx => Hook::TpBtf("netif_rx"),
            ProbeKind::NapiGroReceive => Hook::TpBtf("napi_gro_receive_entry"),
            ProbeKind::TcpProbe => Hook::TpBtf("tcp_probe"),
            ProbeKind::SchedWakeup => Hook::TpBtf("sched_wakeup"),
            ProbeKind::SchedSwitch => Hook::TpBtf("sched_switch"),
            ProbeKind::EpollExit => Hook::Tracepoints(
                "syscalls",
                &[
                    "sys_exit_epoll_wait",
                    "sys_exit_epoll_pwait",
                    "sys_exit_epoll_pwait2",
                ],
            ),
            ProbeKind::SockRecv => Hook::TpBtf("sock_recv_length"),
            ProbeKind::CallbackEntry | ProbeKind::CallbackExit | ProbeKind::UserEntry => {
                Hook::Uprobe
            }
            ProbeKind::UserExit => Hook::Uretprobe,
            ProbeKind::ProcessFork => Hook::TpBtf("sched_process_fork"),
        }
    }

    /// Size in bytes of the record this probe writes.
    pub const fn record_size(self) -> usize {
        use core::mem::size_of;
        match self {
            ProbeKind::NetifReceiveSkb | ProbeKind::NetifRx | ProbeKind::NapiGroReceive => {
                size_of::<SkbEvent>()
            }
            ProbeKind::SoftirqRaise | ProbeKind::SoftirqEntry | ProbeKind::SoftirqExit => {
                size_of::<SoftirqEvent>()
            }
            ProbeKind::TcpProbe => size_of::<TcpEvent>(),
            ProbeKind::SchedWakeup | ProbeKind::SchedSwitch | ProbeKind::ProcessFork => {
                size_of::<SchedEvent>()
            }
            ProbeKind::EpollExit => size_of::<SyscallEvent>(),
            ProbeKind::SockRecv => size_of::<RecvEvent>(),
            ProbeKind::CallbackEntry => size_of::<CallbackEvent>(),
            ProbeKind::CallbackExit => size_of::<CallbackDoneEvent>(),
            ProbeKind::UserEntry | ProbeKind::UserExit => size_of::<UprobeEvent>(),
        }
    }
}

/// The first bytes of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// A [`ProbeKind`] as `u16`.
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

/// `sock_recv_length`: a traced thread's read from a socket returned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// `sk->sk_cookie`.
    pub cookie: u64,
    /// Kernel address of the socket.
    pub sk: u64,
    /// Bytes read, or -errno.
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

/// The engine handed a message to the callback (uprobe on [`ENGINE_PROBE_SYMBOL`]).
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

/// The engine's user callback returned (uprobe on [`ENGINE_DONE_SYMBOL`]).
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

/// Field offsets of kernel structs, read by user space from the running kernel's BTF
/// and handed to the probes, so one probe build works across kernel versions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `offsetof(struct sk_buff, len)`.
    pub sk_buff_len: u32,
    /// `offsetof(struct sk_buff, dev)`.
    pub sk_buff_dev: u32,
    /// `offsetof(struct sk_buff, data)`.
    pub sk_buff_data: u32,
    /// `offsetof(struct sk_buff, cb)`: `struct tcp_skb_cb` lives there.
    pub sk_buff_cb: u32,
    /// `offsetof(struct net_device, ifindex)`.
    pub net_device_ifindex: u32,
    /// `offsetof(struct tcp_skb_cb, seq)`.
    pub tcp_skb_cb_seq: u32,
    /// `offsetof(struct tcp_skb_cb, end_seq)`.
    pub tcp_skb_cb_end_seq: u32,
    /// `offsetof(struct tcp_skb_cb, tcp_flags)`.
    pub tcp_skb_cb_tcp_flags: u32,
    /// `offsetof(struct sock_common, skc_dport)` (`struct sock` starts with it).
    pub sock_dport: u32,
    /// `offsetof(struct sock_common, skc_num)`.
    pub sock_num: u32,
    /// `offsetof(struct sock, sk_cookie)` (in `sock_common`).
    pub sock_cookie: u32,
    /// `offsetof(struct sock, sk_protocol)`.
    pub sock_protocol: u32,
    /// `offsetof(struct tcp_sock, rcv_nxt)`.
    pub tcp_sock_rcv_nxt: u32,
    /// `offsetof(struct tcp_sock, copied_seq)`.
    pub tcp_sock_copied_seq: u32,
    /// `offsetof(struct task_struct, pid)`.
    pub task_pid: u32,
    /// `offsetof(struct task_struct, tgid)`.
    pub task_tgid: u32,
    /// Offset of the CPU number within `struct task_struct` (`thread_info.cpu`).
    pub task_cpu: u32,
    /// Offset of `ret` in the `syscalls:sys_exit_*` tracepoint record (from tracefs).
    pub sys_exit_ret: u32,
    /// Offset of `__syscall_nr` in the `syscalls:sys_exit_*` tracepoint record.
    pub sys_exit_nr: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// Configuration user space writes into the probes' `CONFIG` map (index 0)
/// before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// Kernel struct offsets (see [`KernelOffsets`]).
    pub offsets: KernelOffsets,
}

/// [`ProbeConfig::flags`]: the probes emit aya-log debug records.
pub const CONFIG_LOG: u32 = 1;
/// [`ProbeConfig::flags`]: the offsets are valid (user space read them from BTF).
pub const CONFIG_OFFSETS_VALID: u32 = 2;
/// [`ProbeConfig::flags`]: task-context probes keep only threads of processes in `TGIDS`.
pub const CONFIG_FILTER_TGID: u32 = 4;
/// [`ProbeConfig::flags`]: packet and socket probes keep only flows whose local port is
/// in `PORTS`. Reads by traced processes add their sockets' local ports to `PORTS`.
pub const CONFIG_FILTER_PORTS: u32 = 8;
/// [`ProbeConfig::flags`]: children forked by traced processes are traced too.
pub const CONFIG_FOLLOW_FORKS: u32 = 16;
/// [`ProbeConfig::flags`]: a read by a traced process adds its socket's local port to
/// `PORTS` (so `--pid` alone follows the process's own connections).
pub const CONFIG_LEARN_PORTS: u32 = 32;

/// Capacity of the `TGIDS` filter map.
pub const MAX_TGIDS: u32 = 1024;
/// Capacity of the `PORTS` filter map.
pub const MAX_PORTS: u32 = 1024;

/// `ws-trace doctor`: the index of each hook type's counter in the probes' `DOCTOR_HITS`
/// per-CPU array, where each trivial doctor program counts that it ran.
pub mod doctor_hit {
    /// Classic tracepoint (`syscalls:sys_enter_getppid`).
    pub const TRACEPOINT: u32 = 0;
    /// BTF-typed tracepoint (`sys_enter`).
    pub const TP_BTF: u32 = 1;
    /// Raw tracepoint (`sys_enter`).
    pub const RAW_TP: u32 = 2;
    /// Uprobe.
    pub const UPROBE: u32 = 3;
    /// Perf event (software cpu-clock).
    pub const PERF_EVENT: u32 = 4;
    /// fentry (BPF trampoline).
    pub const FENTRY: u32 = 5;
    /// Entries in `DOCTOR_HITS`.
    pub const COUNT: u32 = 8;
}

/// Which receive path a connection's bytes take, as seen by the engine.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPath {
    /// Plain TCP (ws://).
    None = 0,
    /// TLS decrypted in user space (rustls).
    Userspace = 1,
    /// TLS decrypted by the kernel (kTLS, `TLS_RX`).
    Ktls = 2,
}

/// Stage stamps of one message, CLOCK_MONOTONIC nanoseconds (0: not taken).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgStamps {
    /// The event loop woke for this socket.
    pub event_ns: u64,
    /// The read that completed the message started.
    pub recv_start_ns: u64,
    /// That read returned (after decryption on the userspace TLS path).
    pub recv_end_ns: u64,
    /// Userspace TLS: decryption of the completing record started (else 0).
    pub decrypt_start_ns: u64,
    /// The frame (and the message it ends) was parsed and validated.
    pub parsed_ns: u64,
    /// The user's callback is about to run.
    pub callback_ns: u64,
}

/// What the engine hands its probe function for each message: a uprobe on
/// [`ENGINE_PROBE_SYMBOL`] reads this struct through its first argument.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgProbe {
    /// [`ABI_VERSION`] of the engine that filled it.
    pub abi_version: u32,
    /// The connection's socket fd.
    pub fd: i32,
    /// Engine-wide connection id.
    pub conn_id: u64,
    /// `SO_COOKIE` of the socket: the key that joins engine and kernel events.
    pub sock_cookie: u64,
    /// Offset one past the message's last byte in the bytes read from the socket
    /// since it connected (for userspace TLS: the end of the read that completed it).
    pub stream_end: u64,
    /// Payload length of the message.
    pub len: u64,
    /// Sequence number of the message on its connection, from 0.
    pub msg_seq: u64,
    /// Offset one past the last byte read from the socket so far (the end of the read
    /// that completed the message), same origin as `stream_end`. With the kernel's
    /// `copied_seq` after that read it places the message in TCP sequence space:
    /// `seq(last byte + 1) = copied_seq - (read_end - stream_end)`.
    pub read_end: u64,
    /// WebSocket opcode (1 text, 2 binary).
    pub opcode: u8,
    /// A [`TlsPath`] as `u8`.
    pub tls_path: u8,
    /// Reserved, zero.
    pub _pad: [u8; 2],
    /// Measured error of the engine's TSC → CLOCK_MONOTONIC calibration, ns (0 when the
    /// engine stamps with `clock_gettime` directly).
    pub clock_error_ns: u32,
    /// Stage stamps.
    pub stamps: MsgStamps,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is #[repr(C)], Copy, made of integers only, with explicit
    // padding fields, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SkbEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SoftirqEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TcpEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SchedEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SyscallEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RecvEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CallbackEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UprobeEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CallbackDoneEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MsgProbe {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_padding_free() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<Flow>(), 24);
        assert_eq!(size_of::<SkbEvent>(), 64);
        assert_eq!(size_of::<SoftirqEvent>(), 32);
        assert_eq!(size_of::<TcpEvent>(), 72);
        assert_eq!(size_of::<SchedEvent>(), 48);
        assert_eq!(size_of::<SyscallEvent>(), 40);
        assert_eq!(size_of::<RecvEvent>(), 64);
        assert_eq!(size_of::<CallbackEvent>(), 144);
        assert_eq!(size_of::<UprobeEvent>(), 40);
        assert_eq!(size_of::<CallbackDoneEvent>(), 56);
        assert_eq!(size_of::<KernelOffsets>(), 80);
        assert_eq!(size_of::<ProbeConfig>(), 88);
        assert_eq!(size_of::<MsgStamps>(), 48);
        assert_eq!(size_of::<MsgProbe>(), 112);
    }

    #[test]
    fn kinds_round_trip() {
        for (i, k) in ProbeKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
            assert_eq!(ProbeKind::from_u16(i as u16), Some(*k));
        }
        assert_eq!(ProbeKind::from_u16(PROBE_COUNT as u16), None);
        for k in ProbeKind::KERNEL {
            assert!(!matches!(k.hook(), Hook::Uprobe | Hook::Uretprobe));
        }
    }
}

// ---- `ws-trace profile`: sampled on-CPU stacks and off-CPU time, aggregated in the kernel.

/// `ProfileConfig::flags`: count perf-event (cpu-clock) samples per stack pair.
pub const PROFILE_ON_CPU: u32 = 1;
/// `ProfileConfig::flags`: sum the time threads spend switched out, per stack pair.
pub const PROFILE_OFF_CPU: u32 = 2;
/// `ProfileConfig::flags`: keep only processes listed in the `TGIDS` map.
pub const PROFILE_FILTER_TGID: u32 = 4;
/// Distinct stacks the profiler's stack-trace map holds.
pub const PROFILE_MAX_STACKS: u32 = 16384;
/// Distinct (process, user stack, kernel stack) keys each profile map holds.
pub const PROFILE_MAX_KEYS: u32 = 16384;
/// Threads whose switch-out the off-CPU profiler can hold at once.
pub const PROFILE_MAX_THREADS: u32 = 16384;

/// Index 0 of `PROFILE_CONFIG`: what the profiling programs do, and the `task_struct`
/// offsets the off-CPU program reads (from the running kernel's BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileConfig {
    /// `PROFILE_*` flags; nothing runs while this is 0.
    pub flags: u32,
    /// Offset of `task_struct::pid`.
    pub task_pid: u32,
    /// Offset of `task_struct::tgid`.
    pub task_tgid: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// One aggregation key: a process and the stack pair captured for it. A stack id below
/// zero is the error `bpf_get_stackid` returned (e.g. `-EFAULT`: no user/kernel stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    /// Process (thread group) id.
    pub tgid: u32,
    /// Id in `PROFILE_STACKS` of the user stack, or a negative errno.
    pub user_stack: i32,
    /// Id in `PROFILE_STACKS` of the kernel stack, or a negative errno.
    pub kernel_stack: i32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Per thread switched out: when, and the stacks it was switched out with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuStart {
    /// `bpf_ktime_get_ns` at the switch-out.
    pub ts_ns: u64,
    /// The blocked thread's process and stacks.
    pub key: StackKey,
}

#[cfg(feature = "user")]
mod profile_pod {
    // SAFETY: #[repr(C)], Copy, integers only, explicit padding: any bit pattern is valid.
    unsafe impl aya::Pod for super::ProfileConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StackKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OffCpuStart {}
}

#[cfg(test)]
mod profile_layout {
    #[test]
    fn profile_layouts_are_padding_free() {
        assert_eq!(core::mem::size_of::<super::ProfileConfig>(), 16);
        assert_eq!(core::mem::size_of::<super::StackKey>(), 16);
        assert_eq!(core::mem::size_of::<super::OffCpuStart>(), 24);
    }
}
