//! `ws-trace profile`: sampled on-CPU stacks and off-CPU time, aggregated in the kernel.
//! The maps are read once at the end of a session; nothing is streamed.

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
