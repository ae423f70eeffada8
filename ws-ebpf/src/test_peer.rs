//! Test peer: a tc program that makes a veth pair behave like a wire.
use aya_ebpf::{helpers::bpf_skb_set_tstamp, macros::classifier, programs::TcContext};

/// tc egress on the far end of a veth pair: makes the pair behave like a wire.
///
/// TCP stamps every outgoing skb with its departure time (EDT, `CLOCK_MONOTONIC`), and a
/// veth pair keeps that stamp when the skb crosses into the other namespace, so the
/// receiving stack skips its own receive stamp at the device and takes it only at IP
/// local delivery. A packet off a real wire carries no departure time. Clearing it here
/// lets the receiver stamp the packet where it stamps a NIC's: when it enters the stack.
#[classifier]
pub fn wire_clear_departure(ctx: TcContext) -> i32 {
    // SAFETY: the skb pointer is the program's own context; the helper only writes the
    // skb's timestamp fields (tstamp 0, clock REALTIME = "no delivery time").
    let _ = unsafe { bpf_skb_set_tstamp(ctx.skb.skb, 0, 0) };
    0 // TC_ACT_OK
}
