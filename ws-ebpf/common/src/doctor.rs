//! `ws-trace doctor`: one trivial program per hook type counts that it ran.

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
