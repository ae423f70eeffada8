//! Names of the probe object's maps and programs, used by both sides.
//!
//! The eBPF side cannot take a name from a constant (a map's name is its `static`'s name,
//! a program's its function's), so these are the names the probes are written with, and
//! ws-trace's loader finds everything by them; a test there checks that the built object
//! holds every map and program listed here.

/// Map names.
pub mod maps {
    /// The one ring buffer every probe writes its records to.
    pub const EVENTS: &str = "EVENTS";
    /// Index 0: the [`ProbeConfig`](crate::ProbeConfig) user space writes before attaching.
    pub const CONFIG: &str = "CONFIG";
    /// Per probe kind, per CPU: records lost because the ring was full.
    pub const DROPS: &str = "DROPS";
    /// Processes whose threads the task-context probes keep.
    pub const TGIDS: &str = "TGIDS";
    /// Local ports whose packets and segments the network probes keep.
    pub const PORTS: &str = "PORTS";
    /// Per port number, a byte: 1 when the port is in `PORTS` (what the network probes
    /// test: an array load instead of a hash lookup per packet).
    pub const PORT_SET: &str = "PORT_SET";
    /// Per process id below the kernel's `pid_max`, a byte: 1 when it is in `TGIDS` (what
    /// the task probes test: an array load instead of a hash lookup per task event).
    pub const TGID_SET: &str = "TGID_SET";
    /// Per CPU: records submitted (the probes' wakeup pacing).
    pub const SUBMITTED: &str = "SUBMITTED";
    /// Per doctor hook type: how often its program ran.
    pub const DOCTOR_HITS: &str = "DOCTOR_HITS";
    /// Index 0: the [`ProfileConfig`](crate::ProfileConfig).
    pub const PROFILE_CONFIG: &str = "PROFILE_CONFIG";
    /// Stack traces by id.
    pub const PROFILE_STACKS: &str = "PROFILE_STACKS";
    /// On-CPU samples per [`StackKey`](crate::StackKey), per CPU.
    pub const PROFILE_COUNTS: &str = "PROFILE_COUNTS";
    /// Off-CPU nanoseconds per [`StackKey`](crate::StackKey), per CPU.
    pub const PROFILE_OFFCPU: &str = "PROFILE_OFFCPU";
    /// Off-CPU: per switched-out thread, when and with which stacks.
    pub const PROFILE_START: &str = "PROFILE_START";
    /// Per socket: `copied_seq` at the reads' fallback's last record (kernels before 6.3).
    pub const RECV_SEQ: &str = "RECV_SEQ";
    /// Sockets a traced process is connecting (port learning before 6.3).
    pub const CONNECTING: &str = "CONNECTING";

    /// Aggregate mode, per stage ([`agg::stage`](crate::agg::stage)), per CPU: the
    /// read's kernel stage histograms ([`StageHist`](crate::agg::StageHist)).
    pub const AGG_HIST: &str = "AGG_HIST";
    /// Aggregate mode, per [`agg::counter`](crate::agg::counter), per CPU: reads seen, rows
    /// made, and why the others made none.
    pub const AGG_COUNTS: &str = "AGG_COUNTS";
    /// Aggregate mode, per socket (kernel address): its recent segments
    /// ([`SocketState`](crate::agg::SocketState)).
    pub const AGG_SOCKETS: &str = "AGG_SOCKETS";
    /// Aggregate mode: recent inbound packets' stamps by flow and end sequence, a
    /// direct-mapped array of [`PacketSlot`](crate::agg::PacketSlot)s.
    pub const AGG_PACKETS: &str = "AGG_PACKETS";
    /// Aggregate mode, per thread: its wake cycle and last epoll return.
    pub const AGG_TASKS: &str = "AGG_TASKS";
    /// Aggregate mode, per CPU: the NET_RX softirq stamps ([`NetRxCpu`](crate::agg::NetRxCpu)).
    pub const AGG_NET_RX: &str = "AGG_NET_RX";

    /// Every map of the object.
    pub const ALL: [&str; 22] = [
        EVENTS,
        CONFIG,
        DROPS,
        TGIDS,
        PORTS,
        PORT_SET,
        TGID_SET,
        SUBMITTED,
        DOCTOR_HITS,
        PROFILE_CONFIG,
        PROFILE_STACKS,
        PROFILE_COUNTS,
        PROFILE_OFFCPU,
        PROFILE_START,
        RECV_SEQ,
        CONNECTING,
        AGG_HIST,
        AGG_COUNTS,
        AGG_SOCKETS,
        AGG_PACKETS,
        AGG_TASKS,
        AGG_NET_RX,
    ];
}

/// Names of the programs that are not a [`ProbeKind`](crate::ProbeKind)'s (those are
/// [`ProbeKind::program`](crate::ProbeKind::program)).
pub mod programs {
    /// `sock_send_length`: teaches the port filter a traced process's sockets; records nothing.
    pub const SOCK_SEND_LEARN: &str = "sock_send_learn";
    /// `tcp_rcv_space_adjust`: the reads' fallback where `sock_recv_length` is missing
    /// (before 6.3); writes [`ProbeKind::SockRecv`](crate::ProbeKind::SockRecv) records.
    pub const SOCK_RECV_RCV_SPACE: &str = "sock_recv_rcv_space";
    /// `inet_sock_set_state`: port learning where `sock_send_length` is missing (before
    /// 6.3), and where the reads' fallback starts counting each socket; records nothing.
    pub const SOCK_STATE_LEARN: &str = "sock_state_learn";
    /// tc egress for a test peer's veth: clears TCP's departure time, as a wire would.
    pub const WIRE_CLEAR_DEPARTURE: &str = "wire_clear_departure";
    /// `ws-trace profile`: a cpu-clock perf-event sample.
    pub const PROFILE_CPU_SAMPLE: &str = "profile_cpu_sample";
    /// `ws-trace profile --off-cpu`: `sched_switch`.
    pub const PROFILE_SCHED_SWITCH: &str = "profile_sched_switch";
    /// `ws-trace doctor`: classic tracepoint.
    pub const DOCTOR_TRACEPOINT: &str = "doctor_tracepoint";
    /// `ws-trace doctor`: BTF-typed tracepoint.
    pub const DOCTOR_TP_BTF: &str = "doctor_tp_btf";
    /// `ws-trace doctor`: raw tracepoint.
    pub const DOCTOR_RAW_TP: &str = "doctor_raw_tp";
    /// `ws-trace doctor`: uprobe.
    pub const DOCTOR_UPROBE: &str = "doctor_uprobe";
    /// `ws-trace doctor`: perf event.
    pub const DOCTOR_PERF_EVENT: &str = "doctor_perf_event";
    /// `ws-trace doctor`: fentry.
    pub const DOCTOR_FENTRY: &str = "doctor_fentry";

    /// Every such program.
    pub const ALL: [&str; 12] = [
        SOCK_SEND_LEARN,
        SOCK_RECV_RCV_SPACE,
        SOCK_STATE_LEARN,
        WIRE_CLEAR_DEPARTURE,
        PROFILE_CPU_SAMPLE,
        PROFILE_SCHED_SWITCH,
        DOCTOR_TRACEPOINT,
        DOCTOR_TP_BTF,
        DOCTOR_RAW_TP,
        DOCTOR_UPROBE,
        DOCTOR_PERF_EVENT,
        DOCTOR_FENTRY,
    ];
}
