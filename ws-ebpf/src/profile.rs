//! `ws-trace profile`: cpu-clock samples counted per (process, user stack, kernel stack),
//! and the time threads spend switched out summed per the stacks they blocked in. Both
//! aggregate in kernel maps that user space reads once at the end; nothing is streamed.

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, perf_event},
    maps::{Array, HashMap, PerCpuHashMap, StackTrace},
    programs::{BtfTracePointContext, PerfEventContext, tracing::StackIdContext},
};
use ws_abi::{
    OffCpuStart, PROFILE_FILTER_TGID, PROFILE_MAX_KEYS, PROFILE_MAX_STACKS, PROFILE_MAX_THREADS,
    PROFILE_OFF_CPU, PROFILE_ON_CPU, ProfileConfig, StackKey,
};

use crate::emit::{read_kernel, tgid_in_filter};

/// Index 0: what the profiling programs do (all off while `flags` is 0).
#[map]
static PROFILE_CONFIG: Array<ProfileConfig> = Array::with_max_entries(1, 0);

/// User and kernel stacks, by id.
#[map]
static PROFILE_STACKS: StackTrace = StackTrace::with_max_entries(PROFILE_MAX_STACKS, 0);

/// On-CPU: samples per stack key, per CPU (user space sums the CPUs).
#[map]
static PROFILE_COUNTS: PerCpuHashMap<StackKey, u64> =
    PerCpuHashMap::with_max_entries(PROFILE_MAX_KEYS, 0);

/// Off-CPU: nanoseconds switched out per stack key, per CPU (user space sums the CPUs).
#[map]
static PROFILE_OFFCPU: PerCpuHashMap<StackKey, u64> =
    PerCpuHashMap::with_max_entries(PROFILE_MAX_KEYS, 0);

/// Off-CPU: per thread id switched out, when and with which stacks.
#[map]
static PROFILE_START: HashMap<u32, OffCpuStart> = HashMap::with_max_entries(PROFILE_MAX_THREADS, 0);

#[inline(always)]
fn profile_config() -> Option<&'static ProfileConfig> {
    PROFILE_CONFIG.get(0).filter(|c| c.flags != 0)
}

#[inline(always)]
fn traced(cfg: &ProfileConfig, tgid: u32) -> bool {
    tgid != 0 && (cfg.flags & PROFILE_FILTER_TGID == 0 || tgid_in_filter(tgid))
}

/// Adds `value` to this CPU's `map[key]`, creating the entry when it is missing.
#[inline(always)]
fn add(map: &PerCpuHashMap<StackKey, u64>, key: &StackKey, value: u64) {
    if let Some(slot) = map.get_ptr_mut(key) {
        // SAFETY: the pointer is to this CPU's live, aligned u64 value of the entry. Only
        // this CPU writes it, and a program that adds (a perf sample, a sched_switch) does
        // not run inside another run of itself on a CPU, so no addition is lost.
        unsafe { *slot += value };
    } else if map.insert(key, value, BPF_NOEXIST as u64).is_err()
        && let Some(slot) = map.get_ptr_mut(key)
    {
        // Another CPU created the entry first (its slot for this CPU starts at zero), or
        // the map is full: then there is nothing to add to.
        // SAFETY: as above.
        unsafe { *slot += value };
    }
}

#[inline(always)]
fn stack_key<C: StackIdContext>(ctx: &C, tgid: u32) -> StackKey {
    StackKey {
        tgid,
        user_stack: ctx
            .get_stackid(&PROFILE_STACKS, BPF_F_USER_STACK as u64)
            .map_or_else(|e| e, |id| id as i32),
        kernel_stack: ctx
            .get_stackid(&PROFILE_STACKS, 0)
            .map_or_else(|e| e, |id| id as i32),
        _pad: 0,
    }
}

/// cpu-clock sample (one perf event per CPU): count the running thread's stack pair.
#[perf_event]
pub fn profile_cpu_sample(ctx: PerfEventContext) -> u32 {
    let Some(cfg) = profile_config() else {
        return 0;
    };
    if cfg.flags & PROFILE_ON_CPU == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !traced(cfg, tgid) {
        return 0;
    }
    add(&PROFILE_COUNTS, &stack_key(&ctx, tgid), 1);
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`: note when a traced thread leaves the CPU (with the stacks it
/// leaves from: the program runs in its context), and add the time it was away when it
/// comes back.
#[btf_tracepoint(function = "sched_switch")]
pub fn profile_sched_switch(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = profile_config() else {
        return 0;
    };
    if cfg.flags & PROFILE_OFF_CPU == 0 {
        return 0;
    }
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    // SAFETY: helper without arguments; always valid in tracing programs.
    let now = unsafe { bpf_ktime_get_ns() };
    let prev_tgid = read_kernel::<u32>(prev, cfg.task_tgid).unwrap_or(0);
    let prev_tid = read_kernel::<u32>(prev, cfg.task_pid).unwrap_or(0);
    if prev_tid != 0 && traced(cfg, prev_tgid) {
        let start = OffCpuStart {
            ts_ns: now,
            key: stack_key(&ctx, prev_tgid),
        };
        // A full map loses this one interval; nothing else to do about it here.
        let _ = PROFILE_START.insert(prev_tid, start, 0);
    }
    let next_tid = read_kernel::<u32>(next, cfg.task_pid).unwrap_or(0);
    if next_tid == 0 {
        return 0;
    }
    // SAFETY: the entry is copied out at once; a concurrent delete of the same thread's
    // entry cannot happen (the thread is being switched in on this CPU only).
    let Some(start) = (unsafe { PROFILE_START.get(next_tid) }).copied() else {
        return 0;
    };
    let _ = PROFILE_START.remove(next_tid);
    if now > start.ts_ns {
        add(&PROFILE_OFFCPU, &start.key, now - start.ts_ns);
    }
    0
}
