//! The probes: each [`ProbeKind`] is a record `kind`, an index into per-probe counters,
//! and an eBPF program of the same name.

use crate::events::{
    CallbackDoneEvent, CallbackEvent, RecvEvent, SchedEvent, SkbEvent, SoftirqEvent, SyscallEvent,
    TcpEvent, UprobeEvent,
};

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
    /// `sched_waking(p)`: something (a softirq delivering data, another thread) calls for a
    /// traced thread to wake; stamped on the waker's CPU, before the wakeup is sent there.
    SchedWaking = 16,
}

/// Number of [`ProbeKind`] values; the length of per-probe arrays.
pub const PROBE_COUNT: usize = 17;

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
        ProbeKind::SchedWaking,
    ];

    /// The kernel-side probes (everything but uprobes), attached by every session.
    pub const KERNEL: [ProbeKind; 12] = [
        ProbeKind::NetifReceiveSkb,
        ProbeKind::SoftirqRaise,
        ProbeKind::SoftirqEntry,
        ProbeKind::SoftirqExit,
        ProbeKind::NetifRx,
        ProbeKind::NapiGroReceive,
        ProbeKind::TcpProbe,
        ProbeKind::SchedWaking,
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
            ProbeKind::SchedWaking => "sched_waking",
        }
    }

    /// Name of the eBPF program implementing this probe in the ws-ebpf object.
    pub const fn program(self) -> &'static str {
        self.name()
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
            ProbeKind::SchedWaking
            | ProbeKind::SchedWakeup
            | ProbeKind::SchedSwitch
            | ProbeKind::ProcessFork => size_of::<SchedEvent>(),
            ProbeKind::EpollExit => size_of::<SyscallEvent>(),
            ProbeKind::SockRecv => size_of::<RecvEvent>(),
            ProbeKind::CallbackEntry => size_of::<CallbackEvent>(),
            ProbeKind::CallbackExit => size_of::<CallbackDoneEvent>(),
            ProbeKind::UserEntry | ProbeKind::UserExit => size_of::<UprobeEvent>(),
        }
    }
}
