//! The scheduler, for traced threads: the wake call (`sched_waking`, on the waker's CPU),
//! the wakeup (`sched_wakeup`, where the thread is enqueued), switches, and forks.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use ws_abi::{CONFIG_FOLLOW_FORKS, KernelOffsets, ProbeKind, SchedEvent};

use crate::aggregate;
use crate::emit::{Stamp, add_tgid, config, emit, now, read_kernel, tgid_in_filter, tgid_traced};

/// (tid, tgid) of a task.
#[inline(always)]
fn task_ids(off: &KernelOffsets, task: *const u8) -> (u32, u32) {
    (task_tid(off, task), task_tgid(off, task))
}

/// The process (tgid) of a task: what the filter needs, read before anything else.
#[inline(always)]
fn task_tgid(off: &KernelOffsets, task: *const u8) -> u32 {
    read_kernel::<u32>(task, off.task_tgid).unwrap_or(0)
}

/// The thread id of a task.
#[inline(always)]
fn task_tid(off: &KernelOffsets, task: *const u8) -> u32 {
    read_kernel::<u32>(task, off.task_pid).unwrap_or(0)
}

/// A waking or wakeup record for a traced task.
#[inline(always)]
fn wake(ctx: &BtfTracePointContext, kind: ProbeKind) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let stamp = Stamp::at_hook(cfg);
    let off = &cfg.offsets;
    let task: *const u8 = ctx.arg(0);
    let tgid = task_tgid(off, task);
    if !tgid_traced(cfg, tgid) {
        return 0;
    }
    let ts = stamp.ns();
    let tid = task_tid(off, task);
    if aggregate::on(cfg) {
        if kind == ProbeKind::SchedWaking {
            aggregate::waking(tid, ts);
        } else {
            aggregate::wakeup(tid, ts);
        }
        if aggregate::only(cfg) {
            return 0;
        }
    }
    emit(kind, ts, |hdr| SchedEvent {
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

/// `sched_waking(struct task_struct *p)`: the waker (here typically the softirq that
/// queued data on the thread's socket) calls for the thread to wake. Fires on the waker's
/// CPU at the start of `try_to_wake_up`, before a remote wakeup is sent to the thread's
/// CPU.
#[btf_tracepoint(function = "sched_waking")]
pub fn sched_waking(ctx: BtfTracePointContext) -> i32 {
    wake(&ctx, ProbeKind::SchedWaking)
}

/// `sched_wakeup(struct task_struct *p)`: the thread is enqueued on the CPU it will run on
/// (for a remote wakeup: on that CPU, after the IPI and its exit from idle).
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    wake(&ctx, ProbeKind::SchedWakeup)
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let stamp = Stamp::at_hook(cfg);
    let off = &cfg.offsets;
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let next_tgid = task_tgid(off, next);
    let next_traced = tgid_traced(cfg, next_tgid);
    if aggregate::on(cfg) {
        // Only switches in matter: they end the wakeup → on-cpu stage.
        if next_traced {
            aggregate::switch_in(task_tid(off, next), stamp.ns());
        }
        if aggregate::only(cfg) {
            return 0;
        }
    }
    // Records: the stamp was taken at the hook.
    let ts = stamp.ns();
    let next_tid = task_tid(off, next);
    let (prev_tid, prev_tgid) = task_ids(off, prev);
    if !next_traced && !tgid_traced(cfg, prev_tgid) {
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
    if !tgid_in_filter(parent_tgid) {
        return 0;
    }
    let (child_tid, child_tgid) = task_ids(off, ctx.arg(1));
    add_tgid(child_tgid);
    if aggregate::only(cfg) {
        return 0;
    }
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
