//! The one place where the kernel/user ABI of ws-trace is defined.
//!
//! Everything that crosses the boundary between the eBPF probes (`ws-ebpf`), the
//! user-space tracer (`ws-trace`) and the WebSocket engine (`ws-engine`) is a
//! `#[repr(C)]` type in this crate. Probes write records into one BPF ring buffer;
//! every record starts with an [`EventHeader`] whose `kind` says which record
//! follows. Records only grow at the end and [`ABI_VERSION`] changes whenever a
//! layout changes, so a recorded trace says which layout it holds.
#![no_std]
#![deny(missing_docs)]

/// Version of the record layouts below. Bump it when any layout changes.
pub const ABI_VERSION: u32 = 1;

/// Name of the engine's probe function (an `extern "C"` symbol, never inlined).
///
/// Its first argument is a `*const MsgProbe`; a uprobe on it reads the struct and
/// its uretprobe marks the end of the user's callback.
pub const ENGINE_PROBE_SYMBOL: &str = "ws_engine_on_message";

/// `NET_RX_SOFTIRQ` in the kernel's softirq vector numbering.
pub const NET_RX_SOFTIRQ: u32 = 3;

/// Every probe ws-trace has. The value is the record's `kind` and the probe's index
/// into the per-probe drop counters.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    /// `netif_receive_skb(skb)`: a packet enters the stack from the NIC (or loopback).
    NetifReceiveSkb = 0,
    /// `softirq_raise(vec)` for `NET_RX`.
    SoftirqRaise = 1,
    /// `softirq_entry(vec)` for `NET_RX`.
    SoftirqEntry = 2,
    /// `softirq_exit(vec)` for `NET_RX`.
    SoftirqExit = 3,
}

/// Number of [`ProbeKind`] values; the length of per-probe arrays.
pub const PROBE_COUNT: usize = 4;

impl ProbeKind {
    /// All probes, in `kind` order.
    pub const ALL: [ProbeKind; PROBE_COUNT] = [
        ProbeKind::NetifReceiveSkb,
        ProbeKind::SoftirqRaise,
        ProbeKind::SoftirqEntry,
        ProbeKind::SoftirqExit,
    ];

    /// The probe for a record's `kind`, if it is one this ABI knows.
    pub const fn from_u16(kind: u16) -> Option<ProbeKind> {
        if (kind as usize) < PROBE_COUNT {
            Some(Self::ALL[kind as usize])
        } else {
            None
        }
    }

    /// Short, stable name used in reports and trace files.
    pub const fn name(self) -> &'static str {
        match self {
            ProbeKind::NetifReceiveSkb => "netif_receive_skb",
            ProbeKind::SoftirqRaise => "softirq_raise",
            ProbeKind::SoftirqEntry => "softirq_entry",
            ProbeKind::SoftirqExit => "softirq_exit",
        }
    }

    /// Name of the eBPF program implementing this probe in the ws-ebpf object.
    pub const fn program(self) -> &'static str {
        match self {
            ProbeKind::NetifReceiveSkb => "netif_receive_skb",
            ProbeKind::SoftirqRaise => "softirq_raise",
            ProbeKind::SoftirqEntry => "softirq_entry",
            ProbeKind::SoftirqExit => "softirq_exit",
        }
    }

    /// The kernel hook the probe attaches to (a BTF-typed tracepoint name).
    pub const fn hook(self) -> &'static str {
        match self {
            ProbeKind::NetifReceiveSkb => "netif_receive_skb",
            ProbeKind::SoftirqRaise => "softirq_raise",
            ProbeKind::SoftirqEntry => "softirq_entry",
            ProbeKind::SoftirqExit => "softirq_exit",
        }
    }

    /// Size in bytes of the record this probe writes.
    pub const fn record_size(self) -> usize {
        match self {
            ProbeKind::NetifReceiveSkb => core::mem::size_of::<SkbEvent>(),
            ProbeKind::SoftirqRaise | ProbeKind::SoftirqEntry | ProbeKind::SoftirqExit => {
                core::mem::size_of::<SoftirqEvent>()
            }
        }
    }
}

/// The first bytes of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// A [`ProbeKind`] as `u16`.
    pub kind: u16,
    /// CPU the probe ran on.
    pub cpu: u16,
    /// Thread id (the kernel's pid) current when the probe ran.
    pub tid: u32,
    /// Process id (the kernel's tgid) current when the probe ran.
    pub tgid: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// `netif_receive_skb`: one packet handed to the network stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// Kernel address of the `struct sk_buff` (a join key within one trace).
    pub skb: u64,
    /// `skb->len`: bytes in the packet at this layer (IP header onwards).
    pub len: u32,
    /// `skb->dev->ifindex`, 0 when unknown.
    pub ifindex: u32,
}

/// `softirq_raise` / `softirq_entry` / `softirq_exit` for `NET_RX`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftirqEvent {
    /// Common header.
    pub hdr: EventHeader,
    /// Softirq vector number (always [`NET_RX_SOFTIRQ`] as filtered today).
    pub vec: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// Field offsets of kernel structs, read by user space from the running kernel's BTF
/// and handed to the probes, so one probe build works across kernel versions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `offsetof(struct sk_buff, len)`.
    pub sk_buff_len: u32,
    /// `offsetof(struct sk_buff, dev)`.
    pub sk_buff_dev: u32,
    /// `offsetof(struct net_device, ifindex)`.
    pub net_device_ifindex: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// Configuration user space writes into the probes' `CONFIG` map (index 0)
/// before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// Only record task-context events of this process (0: every process).
    pub target_tgid: u32,
    /// Kernel struct offsets (see [`KernelOffsets`]).
    pub offsets: KernelOffsets,
}

/// [`ProbeConfig::flags`]: the probes emit aya-log debug records.
pub const CONFIG_LOG: u32 = 1;
/// [`ProbeConfig::flags`]: the offsets are valid (user space read them from BTF).
pub const CONFIG_OFFSETS_VALID: u32 = 2;

/// Which receive path a connection's bytes take, as seen by the engine.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPath {
    /// Plain TCP (ws://).
    None = 0,
    /// TLS decrypted in user space (rustls).
    Userspace = 1,
    /// TLS decrypted by the kernel (kTLS, `TLS_RX`).
    Ktls = 2,
}

/// Stage stamps of one message, CLOCK_MONOTONIC nanoseconds (0: not taken).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgStamps {
    /// The event loop woke for this socket.
    pub event_ns: u64,
    /// The read that completed the message started.
    pub recv_start_ns: u64,
    /// That read returned (after decryption on the userspace TLS path).
    pub recv_end_ns: u64,
    /// Userspace TLS: decryption of the completing record started (else 0).
    pub decrypt_start_ns: u64,
    /// The frame (and the message it ends) was parsed and validated.
    pub parsed_ns: u64,
    /// The user's callback is about to run.
    pub callback_ns: u64,
}

/// What the engine hands its probe function for each message: a uprobe on
/// [`ENGINE_PROBE_SYMBOL`] reads this struct through its first argument.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgProbe {
    /// [`ABI_VERSION`] of the engine that filled it.
    pub abi_version: u32,
    /// The connection's socket fd.
    pub fd: i32,
    /// Engine-wide connection id.
    pub conn_id: u64,
    /// `SO_COOKIE` of the socket: the key that joins engine and kernel events.
    pub sock_cookie: u64,
    /// Offset one past the message's last byte in the bytes read from the socket
    /// since it connected (for userspace TLS: the end of the read that completed it).
    pub stream_end: u64,
    /// Payload length of the message.
    pub len: u64,
    /// Sequence number of the message on its connection, from 0.
    pub msg_seq: u64,
    /// WebSocket opcode (1 text, 2 binary).
    pub opcode: u8,
    /// A [`TlsPath`] as `u8`.
    pub tls_path: u8,
    /// Reserved, zero.
    pub _pad: [u8; 6],
    /// Stage stamps.
    pub stamps: MsgStamps,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is #[repr(C)], Copy, made of integers only, with explicit
    // padding fields, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SkbEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SoftirqEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MsgProbe {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_padding_free() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<SkbEvent>(), 40);
        assert_eq!(size_of::<SoftirqEvent>(), 32);
        assert_eq!(size_of::<ProbeConfig>(), 24);
        assert_eq!(size_of::<MsgStamps>(), 48);
        assert_eq!(size_of::<MsgProbe>(), 104);
    }

    #[test]
    fn kinds_round_trip() {
        for (i, k) in ProbeKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
            assert_eq!(ProbeKind::from_u16(i as u16), Some(*k));
        }
        assert_eq!(ProbeKind::from_u16(PROBE_COUNT as u16), None);
    }
}
