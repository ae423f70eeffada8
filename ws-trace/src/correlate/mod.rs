//! Correlation: one NIC→callback row per WebSocket message.
//!
//! TCP sequence space is the join key (`docs/design.md` describes the model). For each
//! callback entry the engine says where the message ends in the bytes it read
//! (`stream_end`) and how much it had read (`read_end`); the kernel's read on that socket
//! that ended at `read_end` gives `copied_seq` after it. So the message's last byte is at
//! sequence `copied_seq - (read_end - stream_end)`. The `tcp_probe` segment that delivered
//! that byte gives the TCP stamp; the inbound packet whose own sequence range holds that
//! byte gives the NIC stamp (and, through the CPU that received it, the NET_RX softirq);
//! the reading thread's waking, wakeup, switch-in and epoll return follow in time; the
//! engine's stamps and the callback uprobes finish the row. Every stamp is
//! CLOCK_MONOTONIC ns.
//!
//! Two steps, each on its own: [`Index::build`] sorts the events into per-key series (per
//! socket, per flow, per CPU, per thread), and [`join`] makes one row per message from an
//! index. [`correlate`] does both.
//!
//! Nothing is guessed: a message whose chain breaks is counted under the reason it broke
//! and left out of the stage statistics, and a stage the thread did not go through (it was
//! already running, so there was no wakeup) is absent, not zero.
mod index;
mod join;
#[cfg(test)]
pub(crate) mod tests;

pub use index::Index;
pub use join::{TOLERANCE_NS, join};

use crate::decode::Event;

/// The stamps of a row, in pipeline order. The stage a stamp ends is named after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stamp {
    /// The NIC (or loopback/veth) handed the packet to the stack.
    Nic = 0,
    /// The NET_RX softirq that processed it started.
    Softirq,
    /// The segment reached the TCP socket (`tcp_probe`).
    Tcp,
    /// Something called for the reading thread to wake (`sched_waking`, on the waker's
    /// CPU: for received data, the softirq that queued it).
    Waking,
    /// The reading thread was enqueued where it will run (`sched_wakeup`: for a remote
    /// wakeup on its own CPU, after the IPI and the exit from idle).
    Wakeup,
    /// The reading thread got a CPU.
    OnCpu,
    /// Its epoll wait returned.
    Epoll,
    /// The engine started the read that completed the message.
    RecvStart,
    /// Per-read rows (clients not built on ws-engine): the read returned to the process
    /// (`sock_recv_length`, the kernel's stamp).
    Read,
    /// Userspace TLS: decryption of the completing record started.
    Decrypt,
    /// The read (and decryption) returned.
    RecvEnd,
    /// The engine parsed and validated the message.
    Parsed,
    /// The user's callback was called (engine stamp inside the probe function, after its
    /// uprobe; the uprobe's own stamp for engines that give none).
    Callback,
    /// The user's callback returned (engine stamp before the done function; else that
    /// function's uprobe).
    CallbackDone,
    /// Per-read rows: the first `--uprobe` function the reading thread entered after the
    /// read.
    FnEntry,
    /// Per-read rows: that function returned.
    FnExit,
}

/// Number of [`Stamp`]s.
pub const STAMP_COUNT: usize = 16;

impl Stamp {
    /// All stamps in order.
    pub const ALL: [Stamp; STAMP_COUNT] = [
        Stamp::Nic,
        Stamp::Softirq,
        Stamp::Tcp,
        Stamp::Waking,
        Stamp::Wakeup,
        Stamp::OnCpu,
        Stamp::Epoll,
        Stamp::RecvStart,
        Stamp::Read,
        Stamp::Decrypt,
        Stamp::RecvEnd,
        Stamp::Parsed,
        Stamp::Callback,
        Stamp::CallbackDone,
        Stamp::FnEntry,
        Stamp::FnExit,
    ];

    /// The stamp's name.
    pub const fn name(self) -> &'static str {
        match self {
            Stamp::Nic => "nic",
            Stamp::Softirq => "softirq",
            Stamp::Tcp => "tcp",
            Stamp::Waking => "waking",
            Stamp::Wakeup => "wakeup",
            Stamp::OnCpu => "on-cpu",
            Stamp::Epoll => "epoll",
            Stamp::RecvStart => "recv_start",
            Stamp::Read => "read",
            Stamp::Decrypt => "decrypt",
            Stamp::RecvEnd => "recv_end",
            Stamp::Parsed => "parsed",
            Stamp::Callback => "callback",
            Stamp::CallbackDone => "callback_done",
            Stamp::FnEntry => "fn_entry",
            Stamp::FnExit => "fn_exit",
        }
    }

    /// What the stage ending at this stamp measures.
    pub const fn stage(self) -> &'static str {
        match self {
            Stamp::Nic => "nic",
            Stamp::Softirq => "nic → softirq (wait for NET_RX)",
            Stamp::Tcp => "softirq → tcp (IP/TCP receive)",
            Stamp::Waking => "tcp → waking (data ready to wake call)",
            Stamp::Wakeup => "→ wakeup (IPI, idle exit, enqueue)",
            Stamp::OnCpu => "→ on-cpu (run queue)",
            Stamp::Epoll => "→ epoll return",
            Stamp::RecvStart => "→ recv_start (loop dispatch)",
            Stamp::Read => "→ read return",
            Stamp::Decrypt => "recv_start → decrypt (read syscall)",
            Stamp::RecvEnd => "→ recv_end (TLS: decrypt; else read)",
            Stamp::Parsed => "recv_end → parsed (frame parse)",
            Stamp::Callback => "parsed → callback (dispatch)",
            Stamp::CallbackDone => "callback → callback_done (user code)",
            Stamp::FnEntry => "read → function entry",
            Stamp::FnExit => "function (entry → return)",
        }
    }
}

/// What a row follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    /// A WebSocket message of a ws-engine client: NIC to the end of its callback.
    Message,
    /// A read of a socket no ws-engine message was seen on: NIC to the read's return (and
    /// the `--uprobe` function the thread called next).
    Read,
}

/// One message (or one read), NIC to end of callback (or read return).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MessageRow {
    /// A message's or a read's row.
    pub kind: RowKind,
    /// Socket cookie of the connection.
    pub cookie: u64,
    /// Engine connection id.
    pub conn_id: u64,
    /// Message number on its connection (per-read rows: the read's number on its socket).
    pub msg_seq: u64,
    /// Payload bytes (per-read rows: bytes read).
    pub len: u64,
    /// WebSocket opcode.
    pub opcode: u8,
    /// [`TlsPath`](ws_abi::TlsPath) of the connection, as a name.
    pub tls: &'static str,
    /// Thread that ran the callback.
    pub tid: u32,
    /// CPU that received the completing segment.
    pub rx_cpu: u16,
    /// CPU that ran the callback.
    pub app_cpu: u16,
    /// TCP sequence number one past the message's last byte.
    pub seq_end: u32,
    /// Stamps, CLOCK_MONOTONIC ns, indexed by [`Stamp`]; `None` where the stage did not
    /// happen (no wakeup when the thread was already running; no decrypt without TLS).
    pub stamps: [Option<u64>; STAMP_COUNT],
}

impl MessageRow {
    /// A row for tests: socket cookie 1, message 0, and only the given stamps.
    #[cfg(test)]
    pub(crate) fn with_stamps(stamps: &[(Stamp, u64)]) -> MessageRow {
        let mut at = [None; STAMP_COUNT];
        for &(s, t) in stamps {
            at[s as usize] = Some(t);
        }
        MessageRow {
            kind: RowKind::Message,
            cookie: 1,
            conn_id: 0,
            msg_seq: 0,
            len: 1,
            opcode: 2,
            tls: "none",
            tid: 1,
            rx_cpu: 0,
            app_cpu: 0,
            seq_end: 0,
            stamps: at,
        }
    }

    /// A stamp.
    pub fn at(&self, s: Stamp) -> Option<u64> {
        self.stamps[s as usize]
    }

    /// NIC to callback return (per-read rows: to the read's return, or the function's
    /// return when one followed), ns.
    pub fn total_ns(&self) -> Option<u64> {
        let end = match self.kind {
            RowKind::Message => self.at(Stamp::CallbackDone)?,
            RowKind::Read => self.at(Stamp::FnExit).or(self.at(Stamp::Read))?,
        };
        Some(end.saturating_sub(self.at(Stamp::Nic)?))
    }

    /// The stages present in this row: each stamp after the first, with the time since the
    /// previous present stamp (saturating at zero where clocks disagree slightly).
    pub fn stages(&self) -> impl Iterator<Item = (Stamp, u64)> + '_ {
        let mut prev: Option<u64> = None;
        Stamp::ALL.iter().filter_map(move |&s| {
            let t = self.at(s)?;
            let d = prev.map(|p| t.saturating_sub(p));
            prev = Some(t);
            d.map(|d| (s, d))
        })
    }
}

/// Why messages could not be joined, with counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Unjoined {
    /// No read on the socket before the callback (tracing started mid-message).
    pub no_read: u64,
    /// No traced segment covers the message's last byte (it arrived before the filter
    /// knew the socket, or the ring dropped it).
    pub no_segment: u64,
    /// The segment's packet has no NIC event.
    pub no_nic: u64,
    /// No softirq entry before the segment on its CPU.
    pub no_softirq: u64,
    /// No callback exit (the trace ended inside the callback, or the exit was dropped).
    pub no_exit: u64,
    /// Joined, but a kernel stamp came before the kernel stamp it follows, or an engine
    /// stamp was further from its neighbour than the clocks' tolerance
    /// ([`TOLERANCE_NS`] plus the engine's calibration error): an event was taken
    /// from the wrong message, or a clock is off. Left out like the others.
    pub inconsistent: u64,
}

impl Unjoined {
    /// All unjoined messages.
    pub fn total(&self) -> u64 {
        self.no_read
            + self.no_segment
            + self.no_nic
            + self.no_softirq
            + self.no_exit
            + self.inconsistent
    }
}

/// One call of a `--uprobe` function: entry and return on one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Call {
    /// Which `--uprobe` (its index on the command line).
    pub uprobe: u64,
    /// The thread.
    pub tid: u32,
    /// Entry stamp, CLOCK_MONOTONIC ns.
    pub entry_ns: u64,
    /// Return stamp.
    pub exit_ns: u64,
}

/// What correlation produced.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Correlation {
    /// Joined rows, in callback (and read) order: message rows of ws-engine clients and
    /// per-read rows of sockets without engine messages ([`MessageRow::kind`]).
    pub rows: Vec<MessageRow>,
    /// Messages (callback entries) seen.
    pub messages: u64,
    /// Messages that could not be joined, by reason.
    pub unjoined: Unjoined,
    /// Engine callback stamp vs. the uprobe's kernel stamp for the same moment (ns,
    /// median): the engine's TSC calibration plus the uprobe's entry cost. `None` when
    /// the engine's records came through its stamp channel (engine stamps only).
    pub clock_check_ns: Option<i64>,
    /// The largest TSC calibration error the engines reported (ns), if any did.
    pub engine_clock_error_ns: Option<u32>,
    /// Reads seen on sockets without engine messages (each should be a read row).
    pub reads: u64,
    /// Those reads that could not be joined, by reason (`no_read` and `no_exit` stay 0).
    pub reads_unjoined: Unjoined,
    /// Every completed call of a `--uprobe` function, by entry time.
    pub calls: Vec<Call>,
}

impl Correlation {
    /// The message rows.
    pub fn messages(&self) -> impl Iterator<Item = &MessageRow> {
        self.rows.iter().filter(|r| r.kind == RowKind::Message)
    }

    /// The per-read rows.
    pub fn read_rows(&self) -> impl Iterator<Item = &MessageRow> {
        self.rows.iter().filter(|r| r.kind == RowKind::Read)
    }
}

/// Builds one row per message from a trace's events (any order): [`Index::build`], then
/// [`join`].
pub fn correlate(events: &[Event]) -> Correlation {
    join(&Index::build(events))
}

/// Whether `seq` (one past a byte) lies in `(start, end]` in wrapping 32-bit space, i.e.
/// the byte `seq - 1` is inside the segment `[start, end)`.
pub(crate) fn covers(start: u32, end: u32, seq: u32) -> bool {
    let len = end.wrapping_sub(start);
    let off = seq.wrapping_sub(start);
    off >= 1 && off <= len
}

/// Whether sequence number `a` comes before `b` (RFC 793 comparison: within half the
/// 32-bit space).
pub(crate) fn seq_before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

fn tls_name(path: u8) -> &'static str {
    match path {
        x if x == ws_abi::TlsPath::Userspace as u8 => "userspace",
        x if x == ws_abi::TlsPath::Ktls as u8 => "ktls",
        _ => "none",
    }
}
