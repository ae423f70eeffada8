//! The helpers every probe uses: its configuration and filters, its stamp, and writing one
//! record into the ring (or counting a drop).
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel},
    maps::PerCpuArray,
};
use ws_abi::{
    CONFIG_FILTER_PORTS, CONFIG_FILTER_TGID, CONFIG_OFFSETS_VALID, EventHeader, ProbeConfig,
    ProbeKind,
};

use crate::{CONFIG, DROPS, EVENTS, PORT_SET, PORTS, SUBMITTED, TGID_SET, TGIDS};

#[inline(always)]
pub(crate) fn config() -> Option<&'static ProbeConfig> {
    let cfg = CONFIG.get(0)?;
    // Nothing runs until user space has written real offsets.
    (cfg.flags & CONFIG_OFFSETS_VALID != 0).then_some(cfg)
}

#[inline(always)]
pub(crate) fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array; BPF programs are not
        // preempted by one another on a CPU while they hold it, so the write is not shared.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub(crate) fn tgid_traced(cfg: &ProbeConfig, tgid: u32) -> bool {
    cfg.flags & CONFIG_FILTER_TGID == 0 || tgid_in_filter(tgid)
}

/// Whether `tgid` is in the process filter: one inlined load of its `TGID_SET` byte
/// (the scheduler probes ask for every task of the machine).
#[inline(always)]
pub(crate) fn tgid_in_filter(tgid: u32) -> bool {
    matches!(TGID_SET.get(tgid), Some(&b) if b != 0)
}

/// Adds `tgid` to the process filter (a fork of a traced process): `TGIDS`, which user
/// space lists, and its `TGID_SET` byte.
#[inline(always)]
pub(crate) fn add_tgid(tgid: u32) {
    let _ = TGIDS.insert(tgid, 1, 0);
    if let Some(b) = TGID_SET.get_ptr_mut(tgid) {
        // SAFETY: a byte of an array map; set only to 1 here, as by user space.
        unsafe { *b = 1 };
    }
}

#[inline(always)]
pub(crate) fn port_traced(cfg: &ProbeConfig, port: u16) -> bool {
    cfg.flags & CONFIG_FILTER_PORTS == 0 || port_in_filter(port)
}

/// Whether `port` is in the port filter: one inlined load of its `PORT_SET` byte.
#[inline(always)]
pub(crate) fn port_in_filter(port: u16) -> bool {
    matches!(PORT_SET.get(u32::from(port)), Some(&b) if b != 0)
}

/// Adds `port` to the port filter (a traced process uses it) unless it is there: the
/// test is an array load, the insert allocates and locks a hash bucket, and reads come
/// per message.
#[inline(always)]
pub(crate) fn learn_port(port: u16) {
    if port == 0 || port_in_filter(port) {
        return;
    }
    let _ = PORTS.insert(port, 1, 0);
    if let Some(b) = PORT_SET.get_ptr_mut(u32::from(port)) {
        // SAFETY: a byte of an array map; set only to 1 here, as by user space.
        unsafe { *b = 1 };
    }
}

#[inline(always)]
pub(crate) fn current_tgid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}

/// A probe's CLOCK_MONOTONIC stamp ([`now`]), taken where its mode wants it.
///
/// Writing records (full mode, or aggregate mode that also streams), a probe stamps as soon
/// as it knows it is configured, before parsing or filtering anything: the stamp is the
/// moment its hook fired. Aggregating only, it stamps once it knows the event is traced
/// ([`Stamp::ns`] after its filter): a clock read costs 35–50 ns in a VM (this machine:
/// a quarter of the probes' time at 50 k msg/s), and most runs (other tasks' switches,
/// other ports' packets) are filtered out. Those stamps are then late by the filter's
/// cost, 10–50 ns, about alike for every probe, so the stages between them barely move.
#[derive(Clone, Copy)]
pub(crate) struct Stamp(u64);

impl Stamp {
    /// The stamp of a probe that has just read its configuration.
    #[inline(always)]
    pub(crate) fn at_hook(cfg: &ProbeConfig) -> Stamp {
        Stamp(if crate::aggregate::only(cfg) {
            0
        } else {
            now()
        })
    }

    /// The stamp: the one taken at the hook, or now. Called once, after the filter.
    #[inline(always)]
    pub(crate) fn ns(self) -> u64 {
        if self.0 != 0 { self.0 } else { now() }
    }
}

/// CLOCK_MONOTONIC now (see [`Stamp`] for where the probes take it).
#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: a helper call without arguments; always valid in these programs.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub(crate) fn header(kind: ProbeKind, ts_ns: u64) -> EventHeader {
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
pub(crate) fn wakeup() -> u64 {
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
pub(crate) fn emit<T: 'static>(kind: ProbeKind, ts_ns: u64, fill: impl FnOnce(EventHeader) -> T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut slot) => {
            slot.write(fill(header(kind, ts_ns)));
            slot.submit(wakeup());
        }
        None => bump(&DROPS, kind as u32),
    }
}

#[inline(always)]
pub(crate) fn read_kernel<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies through a fault-handling helper; a bad address
    // yields an error, never a fault. wrapping_add keeps the address arithmetic defined.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T).ok() }
}
