//! The probe point: every message reaches the user's callback through
//! [`ws_engine_on_message`], whose first argument points at the filled [`MsgProbe`]. A
//! uprobe on the symbol reads the struct; its uretprobe marks the end of the callback.
//! Unattached, the cost is one call that is never inlined.

use std::ffi::c_void;
use ws_abi::MsgProbe;

/// The dynamic callback behind the probe function.
pub(crate) type ProbeTarget<'a> = &'a mut dyn FnMut(&MsgProbe);

/// Calls the message callback. `ctx` is a `*mut ProbeTarget` built by the engine.
///
/// # Safety
/// `probe` must point to a valid `MsgProbe` and `ctx` to a live `ProbeTarget`, both for
/// the duration of the call (the engine guarantees this; nothing else should call it).
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn ws_engine_on_message(probe: *const MsgProbe, ctx: *mut c_void) {
    // SAFETY: per the contract above, `ctx` is a live `*mut ProbeTarget` and `probe` a
    // valid struct; neither is aliased mutably elsewhere during the call.
    unsafe {
        let target = &mut *(ctx as *mut ProbeTarget<'_>);
        target(&*probe);
    }
}

/// Runs `f` with `probe` through [`ws_engine_on_message`].
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
}
