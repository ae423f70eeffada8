//! ws-trace's eBPF probes.
//!
//! Every probe checks its configuration first, then writes one `ws_abi` record into the
//! shared `EVENTS` ring buffer; a record that cannot be reserved is counted in `DROPS`
//! under the probe's kind. Kernel struct fields are read at offsets user space took from
//! the running kernel's BTF (`ws_abi::KernelOffsets`), so one build runs on many kernels.
//! Map and program names are those listed in `ws_abi::names`.
//!
//! In aggregate mode (`ws_abi::CONFIG_AGGREGATE`) nothing is written to the ring: the
//! probes keep state in maps and add each traced read's kernel stages into per-CPU
//! histograms ([`aggregate`]).
//!
//! One module per concern: [`emit`] (configuration, filters, stamps, records), [`network`]
//! (packets, softirq, TCP), [`sched`] (waking, wakeup, switches, forks), [`syscalls`]
//! (socket reads and sends, epoll), [`fallbacks`] (the read and port-learning probes of
//! kernels before 6.3), [`uprobes`] (the engine's probe functions and
//! user-chosen symbols), [`profile`] (`ws-trace profile`), [`doctor`] (one trivial program
//! per hook type) and [`test_peer`] (a tc program for test networks).
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use ws_abi::{MAX_PORTS, MAX_TGIDS, PORT_SET_ENTRIES, PROBE_COUNT, ProbeConfig, doctor_hit};

mod aggregate;
mod doctor;
mod emit;
mod fallbacks;
mod network;
mod profile;
mod sched;
mod syscalls;
mod test_peer;
mod uprobes;

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

/// Per port number: 1 when it is in `PORTS` (the filter's test, an inlined array load).
#[map]
static PORT_SET: Array<u8> = Array::with_max_entries(PORT_SET_ENTRIES, 0);

/// Per process id: 1 when it is in `TGIDS` (the filter's test, an inlined array load).
/// User space sizes it to the kernel's `pid_max` at load time.
#[map]
static TGID_SET: Array<u8> = Array::with_max_entries(1, 0);

/// Index 0, per CPU: records submitted, to look at the ring's fill level only now and then.
#[map]
static SUBMITTED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per doctor hook type: how often its program ran.
#[map]
static DOCTOR_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(doctor_hit::COUNT, 0);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
