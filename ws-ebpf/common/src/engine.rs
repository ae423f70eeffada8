//! The engine side of the ABI: the probe functions' symbols and the [`MsgProbe`] struct
//! a uprobe reads from the engine for every message.

/// Name of the engine's probe function (an `extern "C"` symbol, never inlined).
///
/// Its first argument is a `*const MsgProbe`; a uprobe on it reads the struct. On x86-64
/// its first instruction is a 5-byte nop, which the kernel turns into a call to its
/// uprobe trampoline instead of a breakpoint trap.
pub const ENGINE_PROBE_SYMBOL: &str = "ws_engine_on_message";

/// Name of the function the engine calls when the user's callback has returned:
/// `(msg_seq, start_ns, done_ns)`, the message and the engine's own CLOCK_MONOTONIC stamps
/// of the callback's start and end (taken inside the probe function, after its uprobe,
/// and before this call, so neither trap is inside them). Also a 5-byte nop first on
/// x86-64.
///
/// A uprobe there marks the end of the callback; a uretprobe on [`ENGINE_PROBE_SYMBOL`]
/// would cost a second trap per message.
pub const ENGINE_DONE_SYMBOL: &str = "ws_engine_message_done";

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
    /// [`ABI_VERSION`](crate::ABI_VERSION) of the engine that filled it.
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
    /// Offset one past the last byte read from the socket so far (the end of the read
    /// that completed the message), same origin as `stream_end`. With the kernel's
    /// `copied_seq` after that read it places the message in TCP sequence space:
    /// `seq(last byte + 1) = copied_seq - (read_end - stream_end)`.
    pub read_end: u64,
    /// WebSocket opcode (1 text, 2 binary).
    pub opcode: u8,
    /// A [`TlsPath`] as `u8`.
    pub tls_path: u8,
    /// Reserved, zero.
    pub _pad: [u8; 2],
    /// Measured error of the engine's TSC → CLOCK_MONOTONIC calibration, ns (0 when the
    /// engine stamps with `clock_gettime` directly).
    pub clock_error_ns: u32,
    /// Stage stamps.
    pub stamps: MsgStamps,
}
