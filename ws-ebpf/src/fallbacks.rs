//! Fallbacks for kernels older than 6.3, which lack `sock_recv_length` and
//! `sock_send_length`. User space attaches these instead where those tracepoints are
//! missing (or when told to); they write the records of the probes they replace.
//!
//! - [`sock_recv_rcv_space`], on `tcp_rcv_space_adjust(sk)`: TCP calls it inside
//!   `tcp_recvmsg` each time it has copied an skb's bytes to the reader (after advancing
//!   `copied_seq`). It writes a [`ProbeKind::SockRecv`] record whose `ret` is what
//!   `copied_seq` moved since this socket's previous record, or
//!   [`RECV_LEN_UNKNOWN`] for the first record of a socket this tracer did not see
//!   become established.
//! - [`sock_state_learn`], on `inet_sock_set_state(sk, oldstate, newstate)`: a traced
//!   process's `connect` (SYN_SENT) marks the socket; when it becomes ESTABLISHED (in
//!   softirq, whoever runs) its local port joins the port filter, before the peer can
//!   send anything, as `sock_send_length` would teach it from the client's first send.
//!   A traced process's `listen` teaches the listening port. At ESTABLISHED it also
//!   notes the socket's `copied_seq`, so the first read's length is known.
use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::LruHashMap,
    programs::BtfTracePointContext,
};
use ws_abi::{CONFIG_LEARN_PORTS, ProbeKind, RECV_LEN_UNKNOWN, RecvEvent};

use crate::aggregate;
use crate::emit::{
    Stamp, config, current_tgid, emit, learn_port, port_traced, read_kernel, tgid_traced,
};
use crate::network::{IPPROTO_TCP, sock_ports};

/// Sockets (by kernel address) whose `copied_seq` the read fallback last saw.
#[map]
static RECV_SEQ: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// Sockets (by kernel address) a traced process is connecting.
#[map]
static CONNECTING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// `tcp_rcv_space_adjust(struct sock *sk)`: a read copied bytes out of a TCP socket.
#[btf_tracepoint(function = "tcp_rcv_space_adjust")]
pub fn sock_recv_rcv_space(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let stamp = Stamp::at_hook(cfg);
    if !tgid_traced(cfg, current_tgid()) {
        return 0;
    }
    let ts = stamp.ns();
    let off = &cfg.offsets;
    let sk: *const u8 = ctx.arg(0);
    let (lport, rport) = sock_ports(off, sk);
    if cfg.flags & CONFIG_LEARN_PORTS != 0 && lport != 0 {
        learn_port(lport);
    } else if !port_traced(cfg, lport) {
        return 0;
    }
    let copied_seq = read_kernel::<u32>(sk, off.tcp_sock_copied_seq).unwrap_or(0);
    let key = sk as u64;
    // SAFETY: the value is copied out at once, never held across helper calls.
    let ret = match unsafe { RECV_SEQ.get(key) } {
        Some(&before) => i64::from(copied_seq.wrapping_sub(before)),
        None => RECV_LEN_UNKNOWN,
    };
    let _ = RECV_SEQ.insert(key, copied_seq, 0);
    // MSG_PEEK reads leave copied_seq where it was: nothing was consumed.
    if ret == 0 {
        return 0;
    }
    if aggregate::on(cfg) {
        // A socket's first read (length unknown) still returned data.
        let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
        aggregate::read(key, tid, ts, copied_seq);
        if aggregate::only(cfg) {
            return 0;
        }
    }
    emit(ProbeKind::SockRecv, ts, |hdr| RecvEvent {
        hdr,
        cookie: read_kernel::<u64>(sk, off.sock_cookie).unwrap_or(0),
        sk: key,
        ret,
        copied_seq,
        rcv_nxt: read_kernel::<u32>(sk, off.tcp_sock_rcv_nxt).unwrap_or(0),
        lport,
        rport,
        flags: 0,
    });
    0
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`: a socket
/// changes TCP state. Teaches the port filter (with `CONFIG_LEARN_PORTS`) and notes where
/// established sockets' streams start (see the module's doc).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_state_learn(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let off = &cfg.offsets;
    let sk: *const u8 = ctx.arg(0);
    let newstate: i32 = ctx.arg(2);
    if read_kernel::<u16>(sk, off.sock_protocol).unwrap_or(0) != IPPROTO_TCP as u16 {
        return 0;
    }
    let key = sk as u64;
    let learn = cfg.flags & CONFIG_LEARN_PORTS != 0;
    match newstate {
        TCP_SYN_SENT if tgid_traced(cfg, current_tgid()) => {
            // The local port is not chosen yet (connect picks it after this).
            let _ = CONNECTING.insert(key, 1, 0);
        }
        TCP_LISTEN if learn && tgid_traced(cfg, current_tgid()) => {
            let (lport, _) = sock_ports(off, sk);
            if lport != 0 {
                learn_port(lport);
            }
        }
        TCP_ESTABLISHED => {
            let (lport, _) = sock_ports(off, sk);
            // SAFETY: only tested for presence.
            let ours = unsafe { CONNECTING.get(key) }.is_some();
            if ours {
                let _ = CONNECTING.remove(key);
                if learn && lport != 0 {
                    learn_port(lport);
                }
            }
            if ours || port_traced(cfg, lport) {
                let seq = read_kernel::<u32>(sk, off.tcp_sock_copied_seq).unwrap_or(0);
                let _ = RECV_SEQ.insert(key, seq, 0);
            }
        }
        TCP_CLOSE => {
            // The address may be a new socket's next time.
            let _ = CONNECTING.remove(key);
            let _ = RECV_SEQ.remove(key);
        }
        _ => {}
    }
    0
}
