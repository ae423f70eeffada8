//! `ws-trace doctor`: one trivial program per hook type, each counting that it ran.
use aya_ebpf::{
    macros::{btf_tracepoint, fentry, perf_event, raw_tracepoint, tracepoint, uprobe},
    programs::{
        BtfTracePointContext, FEntryContext, PerfEventContext, ProbeContext, RawTracePointContext,
        TracePointContext,
    },
};
use ws_abi::doctor_hit;

use crate::DOCTOR_HITS;
use crate::emit::bump;

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
