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
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, fentry, map, perf_event, raw_tracepoint, tracepoint, uprobe},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{
        BtfTracePointContext, FEntryContext, PerfEventContext, ProbeContext, RawTracePointContext,
        TracePointContext,
    },
};
use aya_log_ebpf::debug;
use ws_abi::{
    CONFIG_LOG, CONFIG_OFFSETS_VALID, EventHeader, NET_RX_SOFTIRQ, PROBE_COUNT, ProbeConfig,
    ProbeKind, SkbEvent, SoftirqEvent,
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

/// Per doctor hook type: how often its program ran.
#[map]
static DOCTOR_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(8, 0);

#[inline(always)]
fn config() -> Option<&'static ProbeConfig> {
    CONFIG.get(0)
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
fn header(kind: ProbeKind) -> EventHeader {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    EventHeader {
        // SAFETY: helper calls without arguments; always valid in tracing programs.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        kind: kind as u16,
        // SAFETY: as above.
        cpu: unsafe { bpf_get_smp_processor_id() } as u16,
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
    }
}

/// Reserve, fill and submit one record of type `T`, or count a drop.
#[inline(always)]
fn emit<T: 'static>(kind: ProbeKind, fill: impl FnOnce(EventHeader) -> T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut slot) => {
            // The stamp is taken after the reservation so that, per CPU, ring order and
            // time order agree.
            slot.write(fill(header(kind)));
            slot.submit(0);
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

/// `netif_receive_skb(struct sk_buff *skb)`: a packet enters the stack.
#[btf_tracepoint(function = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let skb: *const u8 = ctx.arg(0);
    let (mut len, mut ifindex) = (0u32, 0u32);
    if cfg.flags & CONFIG_OFFSETS_VALID != 0 {
        let off = &cfg.offsets;
        len = read_kernel::<u32>(skb, off.sk_buff_len).unwrap_or(0);
        if let Some(dev) = read_kernel::<*const u8>(skb, off.sk_buff_dev) {
            ifindex = read_kernel::<i32>(dev, off.net_device_ifindex).unwrap_or(0) as u32;
        }
    }
    if cfg.flags & CONFIG_LOG != 0 {
        debug!(&ctx, "netif_receive_skb len={} ifindex={}", len, ifindex);
    }
    emit(ProbeKind::NetifReceiveSkb, |hdr| SkbEvent {
        hdr,
        skb: skb as u64,
        len,
        ifindex,
    });
    0
}

#[inline(always)]
fn softirq(ctx: &BtfTracePointContext, kind: ProbeKind) -> i32 {
    let vec: u32 = ctx.arg(0);
    if vec != NET_RX_SOFTIRQ || config().is_none() {
        return 0;
    }
    emit(kind, |hdr| SoftirqEvent { hdr, vec, _pad: 0 });
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

// ---- doctor: one trivial program per hook type -------------------------------------------

/// Index into `DOCTOR_HITS` for each doctor program; mirrored in ws-trace's doctor.
const HIT_TRACEPOINT: u32 = 0;
const HIT_TP_BTF: u32 = 1;
const HIT_RAW_TP: u32 = 2;
const HIT_UPROBE: u32 = 3;
const HIT_PERF_EVENT: u32 = 4;
const HIT_FENTRY: u32 = 5;

/// Classic tracepoint (needs tracefs).
#[tracepoint]
pub fn doctor_tracepoint(_ctx: TracePointContext) -> u32 {
    bump(&DOCTOR_HITS, HIT_TRACEPOINT);
    0
}

/// BTF-typed tracepoint.
#[btf_tracepoint(function = "sys_enter")]
pub fn doctor_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    bump(&DOCTOR_HITS, HIT_TP_BTF);
    0
}

/// Raw tracepoint.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn doctor_raw_tp(_ctx: RawTracePointContext) -> i32 {
    bump(&DOCTOR_HITS, HIT_RAW_TP);
    0
}

/// Uprobe.
#[uprobe]
pub fn doctor_uprobe(_ctx: ProbeContext) -> u32 {
    bump(&DOCTOR_HITS, HIT_UPROBE);
    0
}

/// Perf event (software cpu-clock).
#[perf_event]
pub fn doctor_perf_event(_ctx: PerfEventContext) -> u32 {
    bump(&DOCTOR_HITS, HIT_PERF_EVENT);
    0
}

/// fentry (BPF trampoline).
#[fentry(function = "tcp_rcv_established")]
pub fn doctor_fentry(_ctx: FEntryContext) -> u32 {
    bump(&DOCTOR_HITS, HIT_FENTRY);
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
