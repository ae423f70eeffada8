//! Uprobes: the engine's probe and done functions (one message handed to the callback, and
//! the callback's return), and user-chosen `BINARY:SYMBOL` entries and returns.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_attach_cookie, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use ws_abi::{CallbackDoneEvent, CallbackEvent, MsgProbe, ProbeKind, UprobeEvent};

use crate::emit::{config, current_tgid, emit, now, tgid_traced};

/// Uprobe on the engine's probe function: reads its `MsgProbe` argument.
#[uprobe]
pub fn callback_entry(ctx: ProbeContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    if crate::aggregate::only(cfg) {
        // Aggregate mode takes the engine's records from its stamp channel only.
        return 0;
    }
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
    if crate::aggregate::only(cfg) {
        // Aggregate mode takes the engine's records from its stamp channel only.
        return 0;
    }
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
    if crate::aggregate::only(cfg) {
        // Aggregate mode takes the engine's records from its stamp channel only.
        return 0;
    }
    let ts = now();
    if !tgid_traced(cfg, current_tgid()) {
        return 0;
    }
    // SAFETY: the context pointer is the program's own.
    let attach = unsafe { bpf_get_attach_cookie(ctx) };
    emit(kind, ts, |hdr| UprobeEvent { hdr, attach, value });
    0
}
