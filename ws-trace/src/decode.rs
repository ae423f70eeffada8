//! Turning ring-buffer records into typed events.
use ws_abi::{
    CallbackDoneEvent, CallbackEvent, EventHeader, ProbeKind, RecvEvent, SchedEvent, SkbEvent,
    SoftirqEvent, SyscallEvent, TcpEvent, UprobeEvent,
};

/// A record that is not a valid event of this ABI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its header or than its kind's record.
    #[error("record of {got} bytes is shorter than the {need} its kind needs")]
    Short {
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A kind this ABI does not know.
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
}

/// One decoded probe event. The header's `kind` says which probe wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `netif_receive_skb`, `netif_rx`, `napi_gro_receive_entry`.
    Skb(SkbEvent),
    /// A NET_RX softirq raise, entry or exit.
    Softirq(SoftirqEvent),
    /// `tcp_probe`.
    Tcp(TcpEvent),
    /// `sched_waking`, `sched_wakeup`, `sched_switch`, `sched_process_fork`.
    Sched(SchedEvent),
    /// Return of `epoll_wait` and friends.
    Syscall(SyscallEvent),
    /// `sock_recv_length`.
    Recv(RecvEvent),
    /// The engine's probe function was entered.
    Callback(CallbackEvent),
    /// The engine's done function: the callback returned.
    CallbackDone(CallbackDoneEvent),
    /// A user-chosen uprobe/uretprobe.
    Uprobe(UprobeEvent),
}

impl Event {
    /// The common header.
    pub fn header(&self) -> &EventHeader {
        match self {
            Event::Skb(e) => &e.hdr,
            Event::Softirq(e) => &e.hdr,
            Event::Tcp(e) => &e.hdr,
            Event::Sched(e) => &e.hdr,
            Event::Syscall(e) => &e.hdr,
            Event::Recv(e) => &e.hdr,
            Event::Callback(e) => &e.hdr,
            Event::CallbackDone(e) => &e.hdr,
            Event::Uprobe(e) => &e.hdr,
        }
    }

    /// The record's bytes as the probes (or the stamp channel) write them: the inverse of
    /// [`decode`], for storing decoded events again (a capture, a test's synthetic trace).
    pub fn to_bytes(&self) -> Vec<u8> {
        use crate::channel::record_bytes;
        match self {
            Event::Skb(e) => record_bytes(e),
            Event::Softirq(e) => record_bytes(e),
            Event::Tcp(e) => record_bytes(e),
            Event::Sched(e) => record_bytes(e),
            Event::Syscall(e) => record_bytes(e),
            Event::Recv(e) => record_bytes(e),
            Event::Callback(e) => record_bytes(e),
            Event::CallbackDone(e) => record_bytes(e),
            Event::Uprobe(e) => record_bytes(e),
        }
        .to_vec()
    }

    /// The probe that produced it.
    pub fn kind(&self) -> ProbeKind {
        // Decoding only builds events of known kinds.
        ProbeKind::from_u16(self.header().kind).unwrap_or(ProbeKind::NetifReceiveSkb)
    }
}

impl std::fmt::Display for Event {
    /// One line: time, CPU, thread, probe, then the probe's own fields.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.header();
        write!(
            f,
            "{:>16} cpu{:<2} {:>7}/{:<7} {:<17}",
            h.ts_ns,
            h.cpu,
            h.tgid,
            h.tid,
            self.kind().name()
        )?;
        match self {
            Event::Skb(e) => write!(
                f,
                " skb={:#x} len={} if={} {}:{} -> {}:{} proto={}",
                e.skb,
                e.len,
                e.ifindex,
                std::net::Ipv4Addr::from(u32::from_be(e.flow.saddr)),
                e.flow.sport,
                std::net::Ipv4Addr::from(u32::from_be(e.flow.daddr)),
                e.flow.dport,
                e.flow.protocol
            ),
            Event::Softirq(e) => write!(f, " vec={}", e.vec),
            Event::Tcp(e) => write!(
                f,
                " cookie={} seq={}..{} ({} B) rcv_nxt={} copied={} lport={} rport={} flags={:#x}",
                e.cookie,
                e.seq,
                e.end_seq,
                e.end_seq.wrapping_sub(e.seq),
                e.rcv_nxt,
                e.copied_seq,
                e.lport,
                e.rport,
                e.tcp_flags
            ),
            Event::Sched(e) => write!(
                f,
                " prev={}/{} state={} next={}/{} cpu={}",
                e.prev_tgid, e.prev_tid, e.prev_state, e.next_tgid, e.next_tid, e.target_cpu
            ),
            Event::Syscall(e) => write!(f, " nr={} ret={}", e.nr, e.ret),
            Event::Recv(e) if e.ret == ws_abi::RECV_LEN_UNKNOWN => write!(
                f,
                " cookie={} ret=unknown copied={} rcv_nxt={} lport={} rport={}",
                e.cookie, e.copied_seq, e.rcv_nxt, e.lport, e.rport
            ),
            Event::Recv(e) => write!(
                f,
                " cookie={} ret={} copied={} rcv_nxt={} lport={} rport={}",
                e.cookie, e.ret, e.copied_seq, e.rcv_nxt, e.lport, e.rport
            ),
            Event::Callback(e) => {
                let p = &e.probe;
                write!(
                    f,
                    " conn={} cookie={} msg={} len={} stream_end={} opcode={}",
                    p.conn_id, p.sock_cookie, p.msg_seq, p.len, p.stream_end, p.opcode
                )
            }
            Event::CallbackDone(e) => write!(
                f,
                " attach={} msg={} callback {}..{} ({} ns)",
                e.attach,
                e.msg_seq,
                e.start_ns,
                e.done_ns,
                e.done_ns.saturating_sub(e.start_ns)
            ),
            Event::Uprobe(e) => write!(f, " attach={} value={:#x}", e.attach, e.value),
        }
    }
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            got: bytes.len(),
            need,
        });
    }
    // SAFETY: the length was checked above; every T read here is a #[repr(C)] record of
    // plain integers (aya::Pod), valid for any bit pattern; read_unaligned has no
    // alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// A `callback_exit` record: ABI 6's [`CallbackDoneEvent`], or the 40-byte uprobe record
/// of ABI 5 files (`value` = `msg_seq`, no engine stamps).
fn callback_done(bytes: &[u8]) -> Result<CallbackDoneEvent, DecodeError> {
    if bytes.len() >= std::mem::size_of::<CallbackDoneEvent>() {
        return read(bytes);
    }
    let old: UprobeEvent = read(bytes)?;
    Ok(CallbackDoneEvent {
        hdr: old.hdr,
        attach: old.attach,
        msg_seq: old.value,
        start_ns: 0,
        done_ns: 0,
    })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let hdr: EventHeader = read(bytes)?;
    let kind = ProbeKind::from_u16(hdr.kind).ok_or(DecodeError::UnknownKind(hdr.kind))?;
    Ok(match kind {
        ProbeKind::NetifReceiveSkb | ProbeKind::NetifRx | ProbeKind::NapiGroReceive => {
            Event::Skb(read(bytes)?)
        }
        ProbeKind::SoftirqRaise | ProbeKind::SoftirqEntry | ProbeKind::SoftirqExit => {
            Event::Softirq(read(bytes)?)
        }
        ProbeKind::TcpProbe => Event::Tcp(read(bytes)?),
        ProbeKind::SchedWaking
        | ProbeKind::SchedWakeup
        | ProbeKind::SchedSwitch
        | ProbeKind::ProcessFork => Event::Sched(read(bytes)?),
        ProbeKind::EpollExit => Event::Syscall(read(bytes)?),
        ProbeKind::SockRecv => Event::Recv(read(bytes)?),
        ProbeKind::CallbackEntry => Event::Callback(read(bytes)?),
        ProbeKind::CallbackExit => Event::CallbackDone(callback_done(bytes)?),
        ProbeKind::UserEntry | ProbeKind::UserExit => Event::Uprobe(read(bytes)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a #[repr(C)] record without padding bytes (checked in ws-abi).
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn round_trips_and_rejects() {
        let e = SkbEvent {
            hdr: EventHeader {
                ts_ns: 42,
                kind: ProbeKind::NetifReceiveSkb as u16,
                cpu: 1,
                tid: 7,
                tgid: 7,
                _pad: 0,
            },
            skb: 0xffff_0000,
            len: 1500,
            ifindex: 1,
            flow: ws_abi::Flow::default(),
        };
        let raw = bytes_of(&e);
        assert_eq!(decode(&raw), Ok(Event::Skb(e)));
        assert_eq!(Event::Skb(e).to_bytes(), raw);
        assert_eq!(
            decode(&raw[..30]),
            Err(DecodeError::Short { got: 30, need: 64 })
        );
        let mut bad = raw.clone();
        bad[8] = 0xff;
        bad[9] = 0x7f;
        assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(0x7fff)));
    }

    #[test]
    fn callback_exits_of_both_abis_decode() {
        let hdr = EventHeader {
            ts_ns: 1000,
            kind: ProbeKind::CallbackExit as u16,
            cpu: 0,
            tid: 9,
            tgid: 9,
            _pad: 0,
        };
        let new = CallbackDoneEvent {
            hdr,
            attach: 1,
            msg_seq: 17,
            start_ns: 900,
            done_ns: 990,
        };
        assert_eq!(decode(&bytes_of(&new)), Ok(Event::CallbackDone(new)));
        // ABI 5: a 40-byte uprobe record whose value is the msg_seq.
        let old = UprobeEvent {
            hdr,
            attach: 1,
            value: 17,
        };
        assert_eq!(
            decode(&bytes_of(&old)),
            Ok(Event::CallbackDone(CallbackDoneEvent {
                start_ns: 0,
                done_ns: 0,
                ..new
            }))
        );
        assert_eq!(
            decode(&bytes_of(&old)[..30]),
            Err(DecodeError::Short { got: 30, need: 40 })
        );
    }
}
