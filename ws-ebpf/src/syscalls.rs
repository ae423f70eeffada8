//! Syscall-side probes of traced threads: socket reads (and the sends that teach the port
//! filter), and the return of epoll waits.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use ws_abi::{CONFIG_LEARN_PORTS, ProbeKind, RecvEvent, SyscallEvent};

use crate::aggregate;
use crate::emit::{
    Stamp, config, current_tgid, emit, learn_port, port_traced, read_kernel, tgid_traced,
};
use crate::network::{IPPROTO_TCP, sock_ports};

/// `sock_recv_length(struct sock *sk, int ret, int flags)`: a read from a socket returned.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let stamp = Stamp::at_hook(cfg);
    if !tgid_traced(cfg, current_tgid()) {
        return 0;
    }
    let ts = stamp.ns();
    let off = &cfg.offsets;
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if read_kernel::<u16>(sk, off.sock_protocol).unwrap_or(0) != IPPROTO_TCP as u16 {
        return 0;
    }
    let (lport, rport) = sock_ports(off, sk);
    if cfg.flags & CONFIG_LEARN_PORTS != 0 && lport != 0 {
        // A traced process reads this socket: keep its packets and segments from now on.
        learn_port(lport);
    } else if !port_traced(cfg, lport) {
        return 0;
    }
    if aggregate::on(cfg) {
        if ret > 0 {
            let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
            let copied_seq = read_kernel::<u32>(sk, off.tcp_sock_copied_seq).unwrap_or(0);
            aggregate::read(sk as u64, tid, ts, copied_seq);
        }
        if aggregate::only(cfg) {
            return 0;
        }
    }
    emit(ProbeKind::SockRecv, ts, |hdr| RecvEvent {
        hdr,
        cookie: read_kernel::<u64>(sk, off.sock_cookie).unwrap_or(0),
        sk: sk as u64,
        ret: ret as i64,
        copied_seq: read_kernel::<u32>(sk, off.tcp_sock_copied_seq).unwrap_or(0),
        rcv_nxt: read_kernel::<u32>(sk, off.tcp_sock_rcv_nxt).unwrap_or(0),
        lport,
        rport,
        flags: flags as u32,
    });
    0
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`: a send on a socket returned.
/// Records nothing; with `CONFIG_LEARN_PORTS` a traced process's send teaches the filter
/// its socket's local port. A client sends first (its upgrade request, or a TLS
/// ClientHello), so the port is known before the first byte of the reply arrives, however
/// late the client gets to its first read.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_learn(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    if cfg.flags & CONFIG_LEARN_PORTS == 0 || !tgid_traced(cfg, current_tgid()) {
        return 0;
    }
    let off = &cfg.offsets;
    let sk: *const u8 = ctx.arg(0);
    if read_kernel::<u16>(sk, off.sock_protocol).unwrap_or(0) != IPPROTO_TCP as u16 {
        return 0;
    }
    let (lport, _) = sock_ports(off, sk);
    if lport != 0 {
        learn_port(lport);
    }
    0
}

/// `syscalls:sys_exit_epoll_wait` / `_epoll_pwait` / `_epoll_pwait2`: one program, three
/// attachments.
#[tracepoint]
pub fn epoll_exit(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let stamp = Stamp::at_hook(cfg);
    if !tgid_traced(cfg, current_tgid()) {
        return 0;
    }
    let ts = stamp.ns();
    if aggregate::on(cfg) {
        aggregate::epoll(aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32, ts);
        if aggregate::only(cfg) {
            return 0;
        }
    }
    let off = &cfg.offsets;
    // SAFETY: offsets come from the tracepoint's own format file; reads are bounds-checked
    // by the kernel's helper.
    let ret: i64 = unsafe { ctx.read_at(off.sys_exit_ret as usize) }.unwrap_or(0);
    // SAFETY: as above.
    let nr: i32 = unsafe { ctx.read_at(off.sys_exit_nr as usize) }.unwrap_or(-1);
    emit(ProbeKind::EpollExit, ts, |hdr| SyscallEvent {
        hdr,
        ret,
        nr: nr as u32,
        _pad: 0,
    });
    0
}
