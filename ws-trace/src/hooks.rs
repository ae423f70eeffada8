//! Attach policy and labels of the probes: where each [`ProbeKind`] attaches, and which part
//! of the timeline it stamps. (The ABI, `ws-abi`, says what each probe records; this is how
//! ws-trace uses them.)
use ws_abi::ProbeKind;

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

/// A tracepoint some supported kernels lack, and what ws-trace attaches there instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// The tracepoint ws-trace prefers (a `tp_btf` name).
    pub hook: &'static str,
    /// The first kernel release that has it.
    pub since: &'static str,
    /// What it is for.
    pub role: &'static str,
    /// The tracepoint attached instead where it is missing.
    pub instead: &'static str,
    /// What is lost or changes with the fallback.
    pub degrades: &'static str,
}

/// The reads: [`ProbeKind::SockRecv`]'s tracepoint, and its fallback (which writes the same
/// records).
pub const RECV_FALLBACK: Fallback = Fallback {
    hook: "sock_recv_length",
    since: "6.3",
    role: "socket reads (the recv stage, the join's key)",
    instead: "tcp_rcv_space_adjust",
    degrades: "a read is stamped when TCP has copied each skb, inside recvmsg, not when the \
        syscall returns (one record per skb); only TCP reads that copy data are seen (no \
        errors, no EOF); a socket established before tracing started has its first read's \
        length unknown (its copied_seq, which the join uses, is exact)",
};

/// Port learning from sends, and its fallback.
pub const SEND_FALLBACK: Fallback = Fallback {
    hook: "sock_send_length",
    since: "6.3",
    role: "learning a traced process's ports before its first read",
    instead: "inet_sock_set_state",
    degrades: "ports are learned when a traced process's connect completes or it listens, \
        not from its sends: a socket connected before tracing started is learned at its \
        first read",
};

/// Where a probe attaches and what it is for.
pub trait ProbeHooks {
    /// Where the probe attaches.
    fn hook(self) -> Hook;
    /// The part of the timeline this probe stamps (`docs/design.md`).
    fn stage(self) -> &'static str;
}

impl ProbeHooks for ProbeKind {
    fn hook(self) -> Hook {
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
            ProbeKind::SchedWaking => Hook::TpBtf("sched_waking"),
        }
    }

    fn stage(self) -> &'static str {
        match self {
            ProbeKind::NetifReceiveSkb | ProbeKind::NetifRx | ProbeKind::NapiGroReceive => "nic",
            ProbeKind::SoftirqRaise | ProbeKind::SoftirqEntry | ProbeKind::SoftirqExit => "softirq",
            ProbeKind::TcpProbe => "tcp",
            ProbeKind::SchedWaking
            | ProbeKind::SchedWakeup
            | ProbeKind::SchedSwitch
            | ProbeKind::ProcessFork => "sched",
            ProbeKind::EpollExit => "epoll",
            ProbeKind::SockRecv => "recv",
            ProbeKind::CallbackEntry | ProbeKind::CallbackExit => "callback",
            ProbeKind::UserEntry | ProbeKind::UserExit => "uprobe",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_probes_are_not_uprobes() {
        for k in ProbeKind::KERNEL {
            assert!(!matches!(k.hook(), Hook::Uprobe | Hook::Uretprobe), "{k:?}");
        }
        for k in ProbeKind::ALL {
            assert!(!k.stage().is_empty());
        }
    }
}
