//! ws-trace's eBPF probes.
//!
//! Every probe checks its configuration first, then writes one `ws_abi` record into the
//! shared `EVENTS` ring buffer; a record that cannot be reserved is counted in `DROPS`
//! under the probe's kind. Kernel struct fields are read at offsets user space took from
//! the running kernel's BTF (`ws_abi::KernelOffsets`), so one build runs on many kernels.
//! The `doctor_*` programs do nothing but count that they ran: `ws-trace doctor` loads and
//! attaches one of each hook type to see what this kernel allows.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_attach_cookie, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_skb_set_tstamp,
    },
    macros::{
        btf_tracepoint, classifier, fentry, map, perf_event, raw_tracepoint, tracepoint, uprobe,
        uretprobe,
    },
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{
        BtfTracePointContext, FEntryContext, PerfEventContext, ProbeContext, RawTracePointContext,
        RetProbeContext, TcContext, TracePointContext,
    },
};
use aya_log_ebpf::debug;
use ws_abi::{
    CONFIG_FILTER_PORTS, CONFIG_FILTER_TGID, CONFIG_FOLLOW_FORKS, CONFIG_LEARN_PORTS, CONFIG_LOG,
    CONFIG_OFFSETS_VALID, CallbackDoneEvent, CallbackEvent, EventHeader, Flow, KernelOffsets,
    MAX_PORTS, MAX_TGIDS, MsgProbe, NET_RX_SOFTIRQ, PROBE_COUNT, ProbeConfig, ProbeKind, RecvEvent,
    SchedEvent, SkbEvent, SoftirqEvent, SyscallEvent, TcpEvent, UprobeEvent, doctor_hit,
};

/// The one ring every probe writes to. User space may resize it at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Index 0: the configuration user space wrote before attaching.
#[map]
static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

/// Per probe kind: records lost because the ring was full.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROBE_COUNT as u32, 0);

/// Processes whose threads the task-context probes keep (with `CONFIG_FILTER_TGID`).
#[map]
static TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TGIDS, 0);

/// Local ports whose packets and segments the network probes keep (with
/// `CONFIG_FILTER_PORTS`); user space fills it, and so do reads of traced processes
/// (with `CONFIG_LEARN_PORTS`).
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Index 0, per CPU: records submitted, to look at the ring's fill level only now and then.
#[map]
static SUBMITTED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per doctor hook type: how often its program ran.
#[map]
static DOCTOR_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(doctor_hit::COUNT, 0);

mod profile;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[inline(always)]
fn config() -> Option<&'static ProbeConfig> {
    let cfg = CONFIG.get(0)?;
    // Nothing runs until user space has written real offsets.
    (cfg.flags & CONFIG_OFFSETS_VALID != 0).then_some(cfg)
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array; BPF programs are not
        // preempted by one another on a CPU while they hold it, so the write is not shared.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn tgid_traced(cfg: &ProbeConfig, tgid: u32) -> bool {
    // SAFETY: the value is only tested for presence, never held across helper calls.
    cfg.flags & CONFIG_FILTER_TGID == 0 || unsafe { TGIDS.get(tgid) }.is_some()
}

#[inline(always)]
fn port_traced(cfg: &ProbeConfig, port: u16) -> bool {
    // SAFETY: as above.
    cfg.flags & CONFIG_FILTER_PORTS == 0 || unsafe { PORTS.get(port) }.is_some()
}

#[inline(always)]
fn current_tgid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}

/// CLOCK_MONOTONIC now. Every probe takes its stamp with this as soon as it knows it is
/// configured, before parsing anything, so the stamp is the moment its hook fired.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper call without arguments; always valid in these programs.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn header(kind: ProbeKind, ts_ns: u64) -> EventHeader {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    EventHeader {
        ts_ns,
        kind: kind as u16,
        // SAFETY: a helper call without arguments; always valid in these programs.
        cpu: unsafe { bpf_get_smp_processor_id() } as u16,
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
    }
}

/// Whether submitting a record should wake the reader.
///
/// By default the kernel wakes a waiting reader whenever a record lands in an empty ring,
/// which for a reader that keeps up is nearly every record: one irq_work interrupt each
/// (on a VM a self-IPI and an exit, about a microsecond). The reader polls with a timeout
/// anyway, so records are submitted silently until an eighth of the ring is in use; then
/// the reader is woken, with seven eighths left before anything would drop. Asking the
/// ring its fill level costs too (it reads positions the reader's CPU keeps writing:
/// sched_wakeup took 2 µs per run instead of 0.75 with it on every record here), so each
/// CPU asks on every 32nd record only.
#[inline(always)]
fn wakeup() -> u64 {
    if let Some(count) = SUBMITTED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array. A probe interrupting another on this
        // CPU may race the increment; a lost or doubled count only shifts the next check.
        let n = unsafe {
            *count = (*count).wrapping_add(1);
            *count
        };
        if n % 32 != 0 {
            return BPF_RB_NO_WAKEUP as u64;
        }
    }
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if pending >= size / 8 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Reserve, fill and submit one record of type `T` stamped `ts_ns` (from [`now`]), or
/// count a drop.
///
/// Per CPU, ring order is reservation order, which is stamp order except where a probe
/// interrupted another between its stamp and its reservation (a probe in an interrupt
/// during a softirq probe): the interrupting record then comes first with the later
/// stamp. User space orders by stamp. (Stamping after the reservation would keep the ring
/// sorted but put every stamp a microsecond or more after its hook on packet probes.)
#[inline(always)]
fn emit<T: 'static>(kind: ProbeKind, ts_ns: u64, fill: impl FnOnce(EventHeader) -> T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut slot) => {
            slot.write(fill(header(kind, ts_ns)));
            slot.submit(wakeup());
        }
        None => bump(&DROPS, kind as u32),
    }
}

#[inline(always)]
fn read_kernel<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies through a fault-handling helper; a bad address
    // yields an error, never a fault. wrapping_add keeps the address arithmetic defined.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T).ok() }
}

/// The flow of the packet whose network header starts at `skb->data`.
#[inline(always)]
fn packet_flow(off: &KernelOffsets, skb: *const u8) -> Flow {
    let mut flow = Flow::default();
    let Some(ip) = read_kernel::<*const u8>(skb, off.sk_buff_data) else {
        return flow;
    };
    let Some(first) = read_kernel::<[u8; 20]>(ip, 0) else {
        return flow;
    };
    // Lengths: IPv4 total length covers the header; IPv6 payload length does not.
    let (l4_offset, protocol, ip_end) = match first[0] >> 4 {
        4 => {
            flow.saddr = u32::from_ne_bytes([first[12], first[13], first[14], first[15]]);
            flow.daddr = u32::from_ne_bytes([first[16], first[17], first[18], first[19]]);
            let total = u16::from_be_bytes([first[2], first[3]]) as u32;
            (((first[0] & 0x0f) as u32) * 4, first[9], total)
        }
        // IPv6 without extension headers: the transport header follows the fixed 40 bytes.
        6 => (
            40,
            first[6],
            40 + u16::from_be_bytes([first[4], first[5]]) as u32,
        ),
        _ => return flow,
    };
    flow.ip_version = first[0] >> 4;
    flow.protocol = protocol;
    if protocol == IPPROTO_TCP {
        // Ports, sequence number, ack, data offset: the first 13 bytes of the header.
        if let Some(tcp) = read_kernel::<[u8; 13]>(ip, l4_offset) {
            flow.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            flow.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            flow.tcp_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            let header = l4_offset + ((tcp[12] >> 4) as u32) * 4;
            flow.tcp_len = ip_end.saturating_sub(header);
        }
    } else if protocol == IPPROTO_UDP
        && let Some(ports) = read_kernel::<[u8; 4]>(ip, l4_offset)
    {
        flow.sport = u16::from_be_bytes([ports[0], ports[1]]);
        flow.dport = u16::from_be_bytes([ports[2], ports[3]]);
    }
    flow
}

#[inline(always)]
fn skb_event(ctx: &BtfTracePointContext, kind: ProbeKind) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let ts = now();
    let off = &cfg.offsets;
    let skb: *const u8 = ctx.arg(0);
    let flow = packet_flow(off, skb);
    // Inbound packets of a traced socket are addressed to its local port.
    if !port_traced(cfg, flow.dport) {
        return 0;
    }
    let len = read_kernel::<u32>(skb, off.sk_buff_len).unwrap_or(0);
    let ifindex = read_kernel::<*const u8>(skb, off.sk_buff_dev)
        .and_then(|dev| read_kernel::<i32>(dev, off.net_device_ifindex))
        .unwrap_or(0) as u32;
    if cfg.flags & CONFIG_LOG != 0 {
        debug!(
            ctx,
            "{} len={} ifindex={} dport={}", kind as u16, len, ifindex, flow.dport
        );
    }
    emit(kind, ts, |hdr| SkbEvent {
        hdr,
        skb: skb as u64,
        len,
        ifindex,
        flow,
    });
    0
}

/// `netif_receive_skb(struct sk_buff *skb)`: a packet enters the protocol stack.
#[btf_tracepoint(function = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: BtfTracePointContext) -> i32 {
    skb_event(&ctx, ProbeKind::NetifReceiveSkb)
}

/// `netif_rx(struct sk_buff *skb)`: loopback/veth queue a received packet to the backlog.
#[btf_tracepoint(function = "netif_rx")]
pub fn netif_rx(ctx: BtfTracePointContext) -> i32 {
    skb_event(&ctx, ProbeKind::NetifRx)
}

/// `napi_gro_receive_entry(const struct sk_buff *skb)`: a NAPI driver received a packet.
#[btf_tracepoint(function = "napi_gro_receive_entry")]
pub fn napi_gro_receive(ctx: BtfTracePointContext) -> i32 {
    skb_event(&ctx, ProbeKind::NapiGroReceive)
}

#[inline(always)]
fn softirq(ctx: &BtfTracePointContext, kind: ProbeKind) -> i32 {
    let vec: u32 = ctx.arg(0);
    if vec != NET_RX_SOFTIRQ || config().is_none() {
        return 0;
    }
    emit(kind, now(), |hdr| SoftirqEvent { hdr, vec, _pad: 0 });
    0
}

/// `softirq_raise(unsigned int vec_nr)`: NET_RX work was queued on this CPU.
#[btf_tracepoint(function = "softirq_raise")]
pub fn softirq_raise(ctx: BtfTracePointContext) -> i32 {
    softirq(&ctx, ProbeKind::SoftirqRaise)
}

/// `softirq_entry(unsigned int vec_nr)`: the NET_RX handler starts.
#[btf_tracepoint(function = "softirq_entry")]
pub fn softirq_entry(ctx: BtfTracePointContext) -> i32 {
    softirq(&ctx, ProbeKind::SoftirqEntry)
}

/// `softirq_exit(unsigned int vec_nr)`: the NET_RX handler returns.
#[btf_tracepoint(function = "softirq_exit")]
pub fn softirq_exit(ctx: BtfTracePointContext) -> i32 {
    softirq(&ctx, ProbeKind::SoftirqExit)
}

/// Local and remote port of a socket (host order).
#[inline(always)]
fn sock_ports(off: &KernelOffsets, sk: *const u8) -> (u16, u16) {
    let lport = read_kernel::<u16>(sk, off.sock_num).unwrap_or(0);
    let rport = u16::from_be(read_kernel::<u16>(sk, off.sock_dport).unwrap_or(0));
    (lport, rport)
}

/// `tcp_probe(struct sock *sk, const struct sk_buff *skb)`: top of `tcp_rcv_established`.
#[btf_tracepoint(function = "tcp_probe")]
pub fn tcp_probe(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let ts = now();
    let off = &cfg.offsets;
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    let (lport, rport) = sock_ports(off, sk);
    if !port_traced(cfg, lport) {
        return 0;
    }
    let cb = skb.wrapping_add(off.sk_buff_cb as usize);
    emit(ProbeKind::TcpProbe, ts, |hdr| TcpEvent {
        hdr,
        cookie: read_kernel::<u64>(sk, off.sock_cookie).unwrap_or(0),
        sk: sk as u64,
        skb: skb as u64,
        seq: read_kernel::<u32>(cb, off.tcp_skb_cb_seq).unwrap_or(0),
        end_seq: read_kernel::<u32>(cb, off.tcp_skb_cb_end_seq).unwrap_or(0),
        rcv_nxt: read_kernel::<u32>(sk, off.tcp_sock_rcv_nxt).unwrap_or(0),
        copied_seq: read_kernel::<u32>(sk, off.tcp_sock_copied_seq).unwrap_or(0),
        lport,
        rport,
        tcp_flags: read_kernel::<u8>(cb, off.tcp_skb_cb_tcp_flags).unwrap_or(0),
        _pad: [0; 3],
    });
    0
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`: a read from a socket returned.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let ts = now();
    if !tgid_traced(cfg, current_tgid()) {
        return 0;
    }
    let off = &cfg.offsets;
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if read_kernel::<u16>(sk, off.sock_protocol).unwrap_or(0) != IPPROTO_TCP as u16 {
        return 0;
    }
    let (lport, rport) = sock_ports(off, sk);
    if cfg.flags & CONFIG_LEARN_PORTS != 0 && lport != 0 {
        // A traced process reads this socket: keep its packets and segments from now on.
        let _ = PORTS.insert(lport, 1, 0);
    } else if !port_traced(cfg, lport) {
        return 0;
    }
    emit(ProbeKind::SockRecv, ts, |hdr| RecvEvent {
        hdr,
        cookie: read_kernel::<u64>(sk, off.sock_cookie).unwrap_or(0),
        sk: sk as u64,
        ret: ret as i64,
        copied_seq: read_kernel::<u32>(sk, off.tcp_sock_copied_seq).unwrap_or(0),
        rcv_nxt: read_kernel::<u32>(sk, off.tcp_sock_rcv_nxt).unwrap_or(0),
        lport,
        rport,
        flags: flags as u32,
    });
    0
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`: a send on a socket returned.
/// Records nothing; with `CONFIG_LEARN_PORTS` a traced process's send teaches the filter
/// its socket's local port. A client sends first (its upgrade request, or a TLS
/// ClientHello), so the port is known before the first byte of the reply arrives, however
/// late the client gets to its first read.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_learn(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    if cfg.flags & CONFIG_LEARN_PORTS == 0 || !tgid_traced(cfg, current_tgid()) {
        return 0;
    }
    let off = &cfg.offsets;
    let sk: *const u8 = ctx.arg(0);
    if read_kernel::<u16>(sk, off.sock_protocol).unwrap_or(0) != IPPROTO_TCP as u16 {
        return 0;
    }
    let (lport, _) = sock_ports(off, sk);
    if lport != 0 {
        let _ = PORTS.insert(lport, 1, 0);
    }
    0
}

/// (tid, tgid) of a task.
#[inline(always)]
fn task_ids(off: &KernelOffsets, task: *const u8) -> (u32, u32) {
    (
        read_kernel::<u32>(task, off.task_pid).unwrap_or(0),
        read_kernel::<u32>(task, off.task_tgid).unwrap_or(0),
    )
}

/// `sched_wakeup(struct task_struct *p)`: a thread becomes runnable.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let ts = now();
    let off = &cfg.offsets;
    let task: *const u8 = ctx.arg(0);
    let (tid, tgid) = task_ids(off, task);
    if !tgid_traced(cfg, tgid) {
        return 0;
    }
    emit(ProbeKind::SchedWakeup, ts, |hdr| SchedEvent {
        hdr,
        prev_tid: 0,
        prev_tgid: 0,
        next_tid: tid,
        next_tgid: tgid,
        target_cpu: read_kernel::<u32>(task, off.task_cpu).unwrap_or(u32::MAX),
        prev_state: 0,
    });
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let ts = now();
    let off = &cfg.offsets;
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let (prev_tid, prev_tgid) = task_ids(off, prev);
    let (next_tid, next_tgid) = task_ids(off, next);
    if !tgid_traced(cfg, prev_tgid) && !tgid_traced(cfg, next_tgid) {
        return 0;
    }
    let prev_state: u32 = ctx.arg(3);
    emit(ProbeKind::SchedSwitch, ts, |hdr| SchedEvent {
        hdr,
        prev_tid,
        prev_tgid,
        next_tid,
        next_tgid,
        target_cpu: hdr.cpu as u32,
        prev_state,
    });
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn process_fork(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let ts = now();
    if cfg.flags & CONFIG_FOLLOW_FORKS == 0 {
        return 0;
    }
    let off = &cfg.offsets;
    let (parent_tid, parent_tgid) = task_ids(off, ctx.arg(0));
    // SAFETY: the value is only tested for presence.
    if unsafe { TGIDS.get(parent_tgid) }.is_none() {
        return 0;
    }
    let (child_tid, child_tgid) = task_ids(off, ctx.arg(1));
    let _ = TGIDS.insert(child_tgid, 1, 0);
    emit(ProbeKind::ProcessFork, ts, |hdr| SchedEvent {
        hdr,
        prev_tid: parent_tid,
        prev_tgid: parent_tgid,
        next_tid: child_tid,
        next_tgid: child_tgid,
        target_cpu: 0,
        prev_state: 0,
    });
    0
}

/// `syscalls:sys_exit_epoll_wait` / `_epoll_pwait` / `_epoll_pwait2`: one program, three
/// attachments.
#[tracepoint]
pub fn epoll_exit(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let ts = now();
    if !tgid_traced(cfg, current_tgid()) {
        return 0;
    }
    let off = &cfg.offsets;
    // SAFETY: offsets come from the tracepoint's own format file; reads are bounds-checked
    // by the kernel's helper.
    let ret: i64 = unsafe { ctx.read_at(off.sys_exit_ret as usize) }.unwrap_or(0);
    // SAFETY: as above.
    let nr: i32 = unsafe { ctx.read_at(off.sys_exit_nr as usize) }.unwrap_or(-1);
    emit(ProbeKind::EpollExit, ts, |hdr| SyscallEvent {
        hdr,
        ret,
        nr: nr as u32,
        _pad: 0,
    });
    0
}

/// Uprobe on the engine's probe function: reads its `MsgProbe` argument.
#[uprobe]
pub fn callback_entry(ctx: ProbeContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let ts = now();
    if !tgid_traced(cfg, current_tgid()) {
        return 0;
    }
    let Some(ptr) = ctx.arg::<*const MsgProbe>(0) else {
        return 0;
    };
    // SAFETY: a fault-handling copy from the traced process; a bad pointer gives an error.
    let probe = unsafe { bpf_probe_read_user(ptr) }.unwrap_or_default();
    // SAFETY: the context pointer is the program's own.
    let attach = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    emit(ProbeKind::CallbackEntry, ts, |hdr| CallbackEvent {
        hdr,
        attach,
        probe,
    });
    0
}

/// Uprobe on the engine's done function `(msg_seq, start_ns, done_ns)`: the user's
/// callback returned.
#[uprobe]
pub fn callback_exit(ctx: ProbeContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let ts = now();
    if !tgid_traced(cfg, current_tgid()) {
        return 0;
    }
    // SAFETY: the context pointer is the program's own.
    let attach = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    emit(ProbeKind::CallbackExit, ts, |hdr| CallbackDoneEvent {
        hdr,
        attach,
        msg_seq: ctx.arg::<u64>(0).unwrap_or(0),
        start_ns: ctx.arg::<u64>(1).unwrap_or(0),
        done_ns: ctx.arg::<u64>(2).unwrap_or(0),
    });
    0
}

/// Uprobe on a user-chosen symbol.
#[uprobe]
pub fn user_entry(ctx: ProbeContext) -> u32 {
    let arg = ctx.arg::<u64>(0).unwrap_or(0);
    uprobe_hit(ctx.as_ptr(), ProbeKind::UserEntry, arg)
}

/// Uretprobe on a user-chosen symbol.
#[uretprobe]
pub fn user_exit(ctx: RetProbeContext) -> u32 {
    uprobe_hit(ctx.as_ptr(), ProbeKind::UserExit, ctx.ret::<u64>())
}

#[inline(always)]
fn uprobe_hit(ctx: *mut core::ffi::c_void, kind: ProbeKind, value: u64) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let ts = now();
    if !tgid_traced(cfg, current_tgid()) {
        return 0;
    }
    // SAFETY: the context pointer is the program's own.
    let attach = unsafe { bpf_get_attach_cookie(ctx) };
    emit(kind, ts, |hdr| UprobeEvent { hdr, attach, value });
    0
}

// ---- test peers ----------------------------------------------------------------------------

/// tc egress on the far end of a veth pair: makes the pair behave like a wire.
///
/// TCP stamps every outgoing skb with its departure time (EDT, `CLOCK_MONOTONIC`), and a
/// veth pair keeps that stamp when the skb crosses into the other namespace, so the
/// receiving stack skips its own receive stamp at the device and takes it only at IP
/// local delivery. A packet off a real wire carries no departure time. Clearing it here
/// lets the receiver stamp the packet where it stamps a NIC's: when it enters the stack.
#[classifier]
pub fn wire_clear_departure(ctx: TcContext) -> i32 {
    // SAFETY: the skb pointer is the program's own context; the helper only writes the
    // skb's timestamp fields (tstamp 0, clock REALTIME = "no delivery time").
    let _ = unsafe { bpf_skb_set_tstamp(ctx.skb.skb, 0, 0) };
    0 // TC_ACT_OK
}

// ---- doctor: one trivial program per hook type -------------------------------------------

/// Classic tracepoint (needs tracefs).
#[tracepoint]
pub fn doctor_tracepoint(_ctx: TracePointContext) -> u32 {
    bump(&DOCTOR_HITS, doctor_hit::TRACEPOINT);
    0
}

/// BTF-typed tracepoint.
#[btf_tracepoint(function = "sys_enter")]
pub fn doctor_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    bump(&DOCTOR_HITS, doctor_hit::TP_BTF);
    0
}

/// Raw tracepoint.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn doctor_raw_tp(_ctx: RawTracePointContext) -> i32 {
    bump(&DOCTOR_HITS, doctor_hit::RAW_TP);
    0
}

/// Uprobe.
#[uprobe]
pub fn doctor_uprobe(_ctx: ProbeContext) -> u32 {
    bump(&DOCTOR_HITS, doctor_hit::UPROBE);
    0
}

/// Perf event (software cpu-clock).
#[perf_event]
pub fn doctor_perf_event(_ctx: PerfEventContext) -> u32 {
    bump(&DOCTOR_HITS, doctor_hit::PERF_EVENT);
    0
}

/// fentry (BPF trampoline).
#[fentry(function = "tcp_rcv_established")]
pub fn doctor_fentry(_ctx: FEntryContext) -> u32 {
    bump(&DOCTOR_HITS, doctor_hit::FENTRY);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
