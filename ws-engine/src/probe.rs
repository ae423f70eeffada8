//! The probe points: every message reaches the user's callback through
//! [`ws_engine_on_message`], whose first argument points at the filled [`MsgProbe`], and
//! the engine calls [`ws_engine_message_done`] with the message's `msg_seq` and its own
//! stamps of the callback's start and end when the callback has returned. ws-trace's
//! uprobes on the two read the struct and the stamps. The stamps are taken inside the
//! probe function (after its uprobe has run) and before the done call, so the callback's
//! measured time holds no probe cost.
//!
//! On x86-64 both symbols start with a 5-byte nop (`nopl 0(%rax,%rax,1)`). The kernel
//! (6.18+) rewrites a uprobe on such a nop into a call to its uprobe trampoline, which on
//! this VM costs ~390 ns per hit against ~540 ns for a breakpoint trap and ~820 ns for a
//! uretprobe. Unattached, the cost is the nop and a jump (or return).

use std::ffi::c_void;
use ws_abi::MsgProbe;

/// The dynamic callback behind the probe function.
pub(crate) type ProbeTarget<'a> = &'a mut dyn FnMut(&MsgProbe);

/// The body of [`ws_engine_on_message`].
///
/// # Safety
/// As [`ws_engine_on_message`].
#[inline(never)]
unsafe extern "C" fn on_message_body(probe: *const MsgProbe, ctx: *mut c_void) {
    // SAFETY: per the contract of `ws_engine_on_message`, `ctx` is a live
    // `*mut ProbeTarget` and `probe` a valid struct; neither is aliased mutably elsewhere
    // during the call.
    unsafe {
        let target = &mut *(ctx as *mut ProbeTarget<'_>);
        target(&*probe);
    }
}

/// Calls the message callback. `ctx` is a `*mut ProbeTarget` built by the engine.
///
/// # Safety
/// `probe` must point to a valid `MsgProbe` and `ctx` to a live `ProbeTarget`, both for
/// the duration of the call (the engine guarantees this; nothing else should call it).
#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn ws_engine_on_message(probe: *const MsgProbe, ctx: *mut c_void) {
    // The uprobe site, then a tail jump with the arguments untouched in rdi and rsi.
    core::arch::naked_asm!(
        ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
        "jmp {body}",
        body = sym on_message_body,
    )
}

/// Calls the message callback (a plain function off x86-64: uprobes trap there).
///
/// # Safety
/// As the x86-64 version.
#[cfg(not(target_arch = "x86_64"))]
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn ws_engine_on_message(probe: *const MsgProbe, ctx: *mut c_void) {
    // SAFETY: the caller upholds the body's contract.
    unsafe { on_message_body(probe, ctx) }
}

/// Marks the end of message `msg_seq`'s callback, which ran from `start_ns` to `done_ns`
/// (CLOCK_MONOTONIC): a uprobe site and nothing else.
#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn ws_engine_message_done(msg_seq: u64, start_ns: u64, done_ns: u64) {
    core::arch::naked_asm!(".byte 0x0f, 0x1f, 0x44, 0x00, 0x00", "ret")
}

/// Marks the end of message `msg_seq`'s callback, which ran from `start_ns` to `done_ns`
/// (CLOCK_MONOTONIC): a uprobe site and nothing else.
#[cfg(not(target_arch = "x86_64"))]
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ws_engine_message_done(msg_seq: u64, start_ns: u64, done_ns: u64) {
    std::hint::black_box((msg_seq, start_ns, done_ns));
}

/// Whether a uprobe is attached to either probe site right now, i.e. whether anyone reads
/// the [`MsgProbe`] and the done call's stamps. The probe functions are called either way;
/// attaching a uprobe makes the kernel write its breakpoint (`int3`, later a `call` to its
/// uprobe trampoline) over the site's first bytes in this process's copy of the text page,
/// so the site no longer starts with the nop's `0x0f`. Two byte loads from lines the call
/// itself touches. Off x86-64 the engine cannot tell, and this says `true`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn attached() -> bool {
    let on_message = ws_engine_on_message as *const u8;
    let done = ws_engine_message_done as *const u8;
    // SAFETY: both are functions of this binary, mapped readable (text) and longer than
    // one byte; a volatile read, because the kernel may rewrite them at any time.
    unsafe { on_message.read_volatile() != NOP5[0] || done.read_volatile() != NOP5[0] }
}

/// Whether a uprobe is attached to either probe site: off x86-64 the engine cannot tell,
/// so always `true` (every stamp taken and converted as it is made).
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn attached() -> bool {
    true
}

/// The 5-byte nop each probe site starts with on x86-64 (`nopl 0(%rax,%rax,1)`).
pub const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// Runs `f` with `probe` through [`ws_engine_on_message`]. The caller stamps inside `f`
/// and reports with [`ws_engine_message_done`].
#[inline(always)]
pub(crate) fn call_through_probe(probe: &MsgProbe, f: &mut dyn FnMut(&MsgProbe)) {
    let mut target: ProbeTarget<'_> = f;
    // SAFETY: both pointers come from live references that outlive the call.
    unsafe {
        ws_engine_on_message(
            probe as *const MsgProbe,
            &mut target as *mut ProbeTarget<'_> as *mut c_void,
        )
    };
}

/// Name of the probe symbol (same as [`ws_abi::ENGINE_PROBE_SYMBOL`]).
pub const SYMBOL: &str = ws_abi::ENGINE_PROBE_SYMBOL;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_fn_passes_struct_through() {
        let p = MsgProbe {
            msg_seq: 42,
            ..Default::default()
        };
        let mut seen = 0;
        call_through_probe(&p, &mut |q: &MsgProbe| seen = q.msg_seq);
        assert_eq!(seen, 42);
        assert_eq!(SYMBOL, "ws_engine_on_message");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn probe_sites_start_with_a_five_byte_nop() {
        for f in [
            ws_engine_on_message as *const u8,
            ws_engine_message_done as *const u8,
        ] {
            // SAFETY: both are functions of this binary, mapped readable (text), and
            // longer than five bytes (the nop plus a jmp or ret).
            let head = unsafe { std::slice::from_raw_parts(f, 5) };
            assert_eq!(head, NOP5);
        }
        // Nobody attached a uprobe to the test binary.
        assert!(!attached());
    }
}
