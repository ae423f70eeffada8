//! The engine's stamp channel: a single-producer ring in shared memory through which a
//! ws-engine event loop hands every message's record (its [`MsgProbe`] plus the callback's
//! start and end) to ws-trace, with no kernel entry per message.
//!
//! # Where it is
//! Each event loop creates a memfd named `ws-engine-stamps:<pid>:<loop>`
//! ([`CHANNEL_NAME_PREFIX`]); ws-trace finds it in `/proc/PID/fd` (its link reads
//! `/memfd:ws-engine-stamps:…  (deleted)`) and maps `/proc/PID/fd/N` shared. The file is a
//! [`ChannelHeader`] (`header_size` bytes) followed by `capacity` slots of `record_size`
//! bytes, each a [`ChannelRecord`].
//!
//! # Protocol
//! - **Attach.** The tracer claims the ring by compare-and-swapping `lease_until_ns` from 0
//!   (or from an expired value, or from a live value whose `tracer_pid` is dead) to
//!   `now + LEASE_NS`, then writes its pid into `tracer_pid`. A live lease held by a live
//!   tracer refuses a second tracer. The tracer renews the lease (CAS from the value it
//!   wrote) at least every [`LEASE_RENEW_NS`] and clears it to 0 when it detaches.
//! - **Publish.** For every message the engine loads `lease_until_ns` (relaxed) and
//!   compares it with the callback's end stamp: only while the lease is in the future does
//!   it write a record. That load and branch is the whole untraced cost.
//! - **Records.** Position `p` (from 0, counted in `head`) goes to slot `p % capacity`.
//!   The engine stores the slot's `seq` = 0, fills the record, stores `seq` = `p + 1`
//!   (release), then `head` = `p + 1` (release). The ring never blocks the engine: a slow
//!   tracer is lapped. The tracer reads `head`; positions older than `head - capacity` are
//!   counted as dropped; a slot whose `seq` is not `p + 1` before and after copying it was
//!   overwritten while read and is counted as dropped too. Nothing is lost silently.
//! - **Tracer death.** A tracer that dies stops renewing: once `lease_until_ns` is in the
//!   past the next message makes the engine clear it to 0 (counting the lapse in
//!   `lapses`), and from then on it runs at untraced cost. A tracer that finds its lease
//!   cleared (it stalled for longer than the lease) counts a lapse: messages of that gap
//!   were not published.
//! - **Exit.** The tracer stores how far it has read in `consumed`; an event loop that
//!   ends while leased waits (at most [`CHANNEL_DRAIN_WAIT_NS`]) for `consumed` to reach
//!   `head` before it unmaps, so a short-lived process's last records are not lost.
//! - **Spawned targets.** A process started with [`CHANNEL_TRACER_ENV`]`=<tracer pid>` in
//!   its environment creates its rings with a provisional lease of [`CHANNEL_HOLD_NS`]
//!   held for that pid ([`FLAG_PROVISIONAL`]), so the records of its first messages wait in the ring for the
//!   tracer to find it; the tracer then reads from position 0.
//!
//! All fields are native-endian; every field the two sides both write is accessed
//! atomically (see [`atomic_u64`], [`atomic_u32`]).

use crate::engine::MsgProbe;

/// `magic` of a stamp channel: "WSSTAMPS" little-endian.
pub const CHANNEL_MAGIC: u64 = u64::from_le_bytes(*b"WSSTAMPS");

/// Layout version of [`ChannelHeader`] and [`ChannelRecord`]. A tracer refuses rings of
/// any other version.
pub const CHANNEL_VERSION: u32 = 1;

/// Start of a stamp channel's memfd name: `ws-engine-stamps:<pid>:<loop>`.
pub const CHANNEL_NAME_PREFIX: &str = "ws-engine-stamps:";

/// Environment variable naming the pid of a tracer that will attach to a spawned engine
/// process: its rings start with a provisional lease held for that pid.
pub const CHANNEL_TRACER_ENV: &str = "WS_ENGINE_STAMPS_TRACER";

/// How long a provisional lease (see [`CHANNEL_TRACER_ENV`]) lasts, ns.
pub const CHANNEL_HOLD_NS: u64 = 3_000_000_000;

/// How far ahead a tracer sets the lease, ns: how long the engine keeps publishing after
/// its tracer died.
pub const LEASE_NS: u64 = 1_000_000_000;

/// How often a tracer renews its lease at least, ns.
pub const LEASE_RENEW_NS: u64 = 100_000_000;

/// [`ChannelHeader::flags`]: the lease was set by the engine for the tracer its
/// environment named ([`CHANNEL_TRACER_ENV`]); that tracer reads from position 0.
pub const FLAG_PROVISIONAL: u32 = 1;

/// How long an event loop that ends while its ring is leased waits for the tracer to read
/// the rest, ns, at most.
pub const CHANNEL_DRAIN_WAIT_NS: u64 = 1_000_000_000;

/// Default ring capacity of an event loop, records (a power of two).
pub const DEFAULT_CHANNEL_CAPACITY: u32 = 1 << 16;

/// Bit set in the `attach` field of the callback events ws-trace builds from channel
/// records (the low 32 bits are the event loop's number); uprobe events carry the index of
/// their binary there.
pub const CHANNEL_ATTACH: u64 = 1 << 63;

/// The first bytes of a stamp channel's memfd.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelHeader {
    /// [`CHANNEL_MAGIC`], stored (release) after every other field of this line.
    pub magic: u64,
    /// [`CHANNEL_VERSION`] of the engine that made it.
    pub version: u32,
    /// Bytes from the start of the file to the first slot.
    pub header_size: u32,
    /// Bytes per slot (at least `size_of::<ChannelRecord>()`).
    pub record_size: u32,
    /// Slots, a power of two.
    pub capacity: u32,
    /// [`ABI_VERSION`](crate::ABI_VERSION) of the engine (of its [`MsgProbe`]).
    pub abi_version: u32,
    /// Process id of the engine.
    pub pid: u32,
    /// Number of the event loop in its process (from 0).
    pub loop_id: u32,
    /// Reserved, zero.
    pub _pad0: u32,
    /// Reserved, zero.
    pub _reserved0: [u64; 3],
    /// Engine-written: records published while leased (the next position). Atomic.
    pub head: u64,
    /// Engine-written: leases the engine found expired and cleared. Atomic.
    pub lapses: u64,
    /// Reserved, zero.
    pub _reserved1: [u64; 6],
    /// Tracer-written (engine clears it when expired): CLOCK_MONOTONIC ns until which the
    /// engine publishes; 0 when no tracer holds the ring. Atomic.
    pub lease_until_ns: u64,
    /// Tracer-written: pid of the tracer holding the lease (0: none). Atomic.
    pub tracer_pid: u32,
    /// [`FLAG_PROVISIONAL`] while the lease is the engine's provisional one. Atomic.
    pub flags: u32,
    /// Tracer-written: positions read so far (the engine waits for it to reach `head`
    /// before unmapping a leased ring, for at most [`CHANNEL_DRAIN_WAIT_NS`]). Atomic.
    pub consumed: u64,
    /// Tracer-written: the engine fully stamps and publishes only the messages whose
    /// `msg_seq` is a multiple of `1 << sample_shift` (0: every message; values above
    /// [`MAX_SAMPLE_SHIFT`] count as it). Aggregate mode sets it; the tracer then keeps
    /// only such records, so an engine that ignores it is sampled the same way. Atomic.
    pub sample_shift: u32,
    /// Reserved, zero.
    pub _pad2: u32,
    /// Reserved, zero.
    pub _reserved2: [u64; 4],
}

/// The largest [`ChannelHeader::sample_shift`]: one message in 2^20 per connection.
pub const MAX_SAMPLE_SHIFT: u32 = 20;

/// Whether the message `msg_seq` of its connection is sampled under `sample_shift`
/// (the one rule of both sides).
#[inline(always)]
pub const fn sampled(msg_seq: u64, sample_shift: u32) -> bool {
    let shift = if sample_shift > MAX_SAMPLE_SHIFT {
        MAX_SAMPLE_SHIFT
    } else {
        sample_shift
    };
    msg_seq & ((1u64 << shift) - 1) == 0
}

/// One message, as the engine publishes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelRecord {
    /// Position + 1 once the record is complete; 0 while it is being written. Atomic.
    pub seq: u64,
    /// Thread that ran the callback (`gettid`).
    pub tid: u32,
    /// CPU it ran on when the callback returned (`sched_getcpu`).
    pub cpu: u32,
    /// The engine's probe struct of the message.
    pub probe: MsgProbe,
    /// Engine stamp, CLOCK_MONOTONIC ns: the callback is called.
    pub start_ns: u64,
    /// Engine stamp, CLOCK_MONOTONIC ns: the callback returned.
    pub done_ns: u64,
}

/// Bytes from the start of a channel to its first slot, as this version lays it out.
pub const CHANNEL_HEADER_SIZE: usize = core::mem::size_of::<ChannelHeader>();

/// Bytes per slot, as this version lays it out.
pub const CHANNEL_RECORD_SIZE: usize = core::mem::size_of::<ChannelRecord>();

/// Byte offsets of the atomically accessed fields.
pub mod offsets {
    use super::{ChannelHeader, ChannelRecord};
    use core::mem::offset_of;

    /// [`ChannelHeader::magic`].
    pub const MAGIC: usize = offset_of!(ChannelHeader, magic);
    /// [`ChannelHeader::head`].
    pub const HEAD: usize = offset_of!(ChannelHeader, head);
    /// [`ChannelHeader::lapses`].
    pub const LAPSES: usize = offset_of!(ChannelHeader, lapses);
    /// [`ChannelHeader::lease_until_ns`].
    pub const LEASE: usize = offset_of!(ChannelHeader, lease_until_ns);
    /// [`ChannelHeader::tracer_pid`].
    pub const TRACER_PID: usize = offset_of!(ChannelHeader, tracer_pid);
    /// [`ChannelHeader::flags`].
    pub const FLAGS: usize = offset_of!(ChannelHeader, flags);
    /// [`ChannelHeader::consumed`].
    pub const CONSUMED: usize = offset_of!(ChannelHeader, consumed);
    /// [`ChannelHeader::sample_shift`].
    pub const SAMPLE_SHIFT: usize = offset_of!(ChannelHeader, sample_shift);
    /// [`ChannelRecord::seq`].
    pub const RECORD_SEQ: usize = offset_of!(ChannelRecord, seq);
}

/// File size of a channel of `capacity` slots.
pub const fn channel_bytes(capacity: u32) -> usize {
    CHANNEL_HEADER_SIZE + capacity as usize * CHANNEL_RECORD_SIZE
}

/// The `u64` at `offset` bytes into a mapped channel, as an atomic.
///
/// # Safety
/// `base + offset` must be 8-byte aligned, inside a mapping that stays valid for `'a`,
/// and every access to that word from either side must be atomic.
#[cfg(not(target_arch = "bpf"))]
pub unsafe fn atomic_u64<'a>(base: *mut u8, offset: usize) -> &'a core::sync::atomic::AtomicU64 {
    // SAFETY: the caller guarantees alignment, validity for 'a and atomic-only access.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(base.add(offset).cast::<u64>()) }
}

/// The `u32` at `offset` bytes into a mapped channel, as an atomic.
///
/// # Safety
/// As [`atomic_u64`], with 4-byte alignment.
#[cfg(not(target_arch = "bpf"))]
pub unsafe fn atomic_u32<'a>(base: *mut u8, offset: usize) -> &'a core::sync::atomic::AtomicU32 {
    // SAFETY: the caller guarantees alignment, validity for 'a and atomic-only access.
    unsafe { core::sync::atomic::AtomicU32::from_ptr(base.add(offset).cast::<u32>()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn sampling_keeps_one_message_in_two_to_the_shift() {
        assert!((0..100).all(|seq| sampled(seq, 0)));
        let kept: u64 = (0..1024).filter(|&seq| sampled(seq, 4)).count() as u64;
        assert_eq!(kept, 1024 / 16);
        assert!(sampled(0, 4) && sampled(32, 4) && !sampled(33, 4));
        // Clamped, never an overflowing shift.
        assert!(sampled(1 << 20, 63) && !sampled(1 << 19, 63));
    }

    #[test]
    fn layout_is_fixed() {
        assert_eq!(size_of::<ChannelHeader>(), 192);
        assert_eq!(align_of::<ChannelHeader>(), 64);
        assert_eq!(size_of::<ChannelRecord>(), 144);
        assert_eq!(offsets::MAGIC, 0);
        assert_eq!(offsets::HEAD, 64);
        assert_eq!(offsets::LAPSES, 72);
        assert_eq!(offsets::LEASE, 128);
        assert_eq!(offsets::TRACER_PID, 136);
        assert_eq!(offsets::FLAGS, 140);
        assert_eq!(offsets::CONSUMED, 144);
        assert_eq!(offsets::SAMPLE_SHIFT, 152);
        assert_eq!(offsets::RECORD_SEQ, 0);
        assert_eq!(core::mem::offset_of!(ChannelRecord, probe), 16);
        assert_eq!(core::mem::offset_of!(ChannelRecord, start_ns), 128);
        assert_eq!(core::mem::offset_of!(ChannelRecord, done_ns), 136);
        // Every slot keeps its atomics 8-byte aligned.
        assert_eq!(CHANNEL_HEADER_SIZE % 8, 0);
        assert_eq!(CHANNEL_RECORD_SIZE % 8, 0);
        assert_eq!(channel_bytes(4), 192 + 4 * 144);
        assert!(DEFAULT_CHANNEL_CAPACITY.is_power_of_two());
        assert_eq!(&CHANNEL_MAGIC.to_le_bytes(), b"WSSTAMPS");
    }
}
