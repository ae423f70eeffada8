//! Packets and segments: the NIC (or veth/loopback) handing a packet to the stack, the
//! NET_RX softirq, and TCP receiving a segment on an established socket.
use aya_ebpf::macros::btf_tracepoint;
use aya_ebpf::programs::BtfTracePointContext;
use aya_log_ebpf::debug;
use ws_abi::{
    CONFIG_LOG, Flow, KernelOffsets, NET_RX_SOFTIRQ, ProbeKind, SkbEvent, SoftirqEvent, TcpEvent,
};

use crate::aggregate;
use crate::emit::{Stamp, config, emit, now, port_traced, read_kernel};

pub(crate) const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The flow of the packet whose network header starts at `skb->data`.
#[inline(always)]
fn packet_flow(off: &KernelOffsets, skb: *const u8) -> Flow {
    let mut flow = Flow::default();
    let Some(ip) = read_kernel::<*const u8>(skb, off.sk_buff_data) else {
        return flow;
    };
    let Some(first) = read_kernel::<[u8; 20]>(ip, 0) else {
        return flow;
    };
    // Lengths: IPv4 total length covers the header; IPv6 payload length does not.
    let (l4_offset, protocol, ip_end) = match first[0] >> 4 {
        4 => {
            flow.saddr = u32::from_ne_bytes([first[12], first[13], first[14], first[15]]);
            flow.daddr = u32::from_ne_bytes([first[16], first[17], first[18], first[19]]);
            let total = u16::from_be_bytes([first[2], first[3]]) as u32;
            (((first[0] & 0x0f) as u32) * 4, first[9], total)
        }
        // IPv6 without extension headers: the transport header follows the fixed 40 bytes.
        6 => (
            40,
            first[6],
            40 + u16::from_be_bytes([first[4], first[5]]) as u32,
        ),
        _ => return flow,
    };
    flow.ip_version = first[0] >> 4;
    flow.protocol = protocol;
    if protocol == IPPROTO_TCP {
        // Ports, sequence number, ack, data offset: the first 13 bytes of the header.
        if let Some(tcp) = read_kernel::<[u8; 13]>(ip, l4_offset) {
            flow.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            flow.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            flow.tcp_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            let header = l4_offset + ((tcp[12] >> 4) as u32) * 4;
            flow.tcp_len = ip_end.saturating_sub(header);
        }
    } else if protocol == IPPROTO_UDP
        && let Some(ports) = read_kernel::<[u8; 4]>(ip, l4_offset)
    {
        flow.sport = u16::from_be_bytes([ports[0], ports[1]]);
        flow.dport = u16::from_be_bytes([ports[2], ports[3]]);
    }
    flow
}

#[inline(always)]
fn skb_event(ctx: &BtfTracePointContext, kind: ProbeKind) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let stamp = Stamp::at_hook(cfg);
    let off = &cfg.offsets;
    let skb: *const u8 = ctx.arg(0);
    let flow = packet_flow(off, skb);
    // Inbound packets of a traced socket are addressed to its local port.
    if !port_traced(cfg, flow.dport) {
        return 0;
    }
    let ts = stamp.ns();
    if aggregate::on(cfg) {
        let first = match kind {
            ProbeKind::NetifRx => aggregate::NETIF_RX,
            ProbeKind::NapiGroReceive => aggregate::GRO,
            _ => aggregate::RECEIVE,
        };
        aggregate::packet(first, ts, &flow);
        if aggregate::only(cfg) {
            return 0;
        }
    }
    let len = read_kernel::<u32>(skb, off.sk_buff_len).unwrap_or(0);
    let ifindex = read_kernel::<*const u8>(skb, off.sk_buff_dev)
        .and_then(|dev| read_kernel::<i32>(dev, off.net_device_ifindex))
        .unwrap_or(0) as u32;
    if cfg.flags & CONFIG_LOG != 0 {
        debug!(
            ctx,
            "{} len={} ifindex={} dport={}", kind as u16, len, ifindex, flow.dport
        );
    }
    emit(kind, ts, |hdr| SkbEvent {
        hdr,
        skb: skb as u64,
        len,
        ifindex,
        flow,
    });
    0
}

/// `netif_receive_skb(struct sk_buff *skb)`: a packet enters the protocol stack.
#[btf_tracepoint(function = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: BtfTracePointContext) -> i32 {
    skb_event(&ctx, ProbeKind::NetifReceiveSkb)
}

/// `netif_rx(struct sk_buff *skb)`: loopback/veth queue a received packet to the backlog.
#[btf_tracepoint(function = "netif_rx")]
pub fn netif_rx(ctx: BtfTracePointContext) -> i32 {
    skb_event(&ctx, ProbeKind::NetifRx)
}

/// `napi_gro_receive_entry(const struct sk_buff *skb)`: a NAPI driver received a packet.
#[btf_tracepoint(function = "napi_gro_receive_entry")]
pub fn napi_gro_receive(ctx: BtfTracePointContext) -> i32 {
    skb_event(&ctx, ProbeKind::NapiGroReceive)
}

#[inline(always)]
fn softirq(ctx: &BtfTracePointContext, kind: ProbeKind) -> i32 {
    let vec: u32 = ctx.arg(0);
    if vec != NET_RX_SOFTIRQ {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let ts = now();
    if aggregate::on(cfg) {
        match kind {
            ProbeKind::SoftirqRaise => aggregate::softirq_raise(ts),
            ProbeKind::SoftirqEntry => aggregate::softirq_entry(ts),
            _ => {}
        }
        if aggregate::only(cfg) {
            return 0;
        }
    }
    emit(kind, ts, |hdr| SoftirqEvent { hdr, vec, _pad: 0 });
    0
}

/// `softirq_raise(unsigned int vec_nr)`: NET_RX work was queued on this CPU.
#[btf_tracepoint(function = "softirq_raise")]
pub fn softirq_raise(ctx: BtfTracePointContext) -> i32 {
    softirq(&ctx, ProbeKind::SoftirqRaise)
}

/// `softirq_entry(unsigned int vec_nr)`: the NET_RX handler starts.
#[btf_tracepoint(function = "softirq_entry")]
pub fn softirq_entry(ctx: BtfTracePointContext) -> i32 {
    softirq(&ctx, ProbeKind::SoftirqEntry)
}

/// `softirq_exit(unsigned int vec_nr)`: the NET_RX handler returns.
#[btf_tracepoint(function = "softirq_exit")]
pub fn softirq_exit(ctx: BtfTracePointContext) -> i32 {
    softirq(&ctx, ProbeKind::SoftirqExit)
}

/// Local and remote port of a socket (host order).
#[inline(always)]
pub(crate) fn sock_ports(off: &KernelOffsets, sk: *const u8) -> (u16, u16) {
    let lport = read_kernel::<u16>(sk, off.sock_num).unwrap_or(0);
    let rport = u16::from_be(read_kernel::<u16>(sk, off.sock_dport).unwrap_or(0));
    (lport, rport)
}

/// `tcp_probe(struct sock *sk, const struct sk_buff *skb)`: top of `tcp_rcv_established`.
#[btf_tracepoint(function = "tcp_probe")]
pub fn tcp_probe(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let stamp = Stamp::at_hook(cfg);
    let off = &cfg.offsets;
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    let (lport, rport) = sock_ports(off, sk);
    if !port_traced(cfg, lport) {
        return 0;
    }
    let ts = stamp.ns();
    let cb = skb.wrapping_add(off.sk_buff_cb as usize);
    if aggregate::on(cfg) {
        aggregate::segment(
            sk as u64,
            ts,
            lport,
            rport,
            read_kernel::<u32>(cb, off.tcp_skb_cb_seq).unwrap_or(0),
            read_kernel::<u32>(cb, off.tcp_skb_cb_end_seq).unwrap_or(0),
            read_kernel::<u32>(sk, off.tcp_sock_rcv_nxt).unwrap_or(0),
        );
        if aggregate::only(cfg) {
            return 0;
        }
    }
    emit(ProbeKind::TcpProbe, ts, |hdr| TcpEvent {
        hdr,
        cookie: read_kernel::<u64>(sk, off.sock_cookie).unwrap_or(0),
        sk: sk as u64,
        skb: skb as u64,
        seq: read_kernel::<u32>(cb, off.tcp_skb_cb_seq).unwrap_or(0),
        end_seq: read_kernel::<u32>(cb, off.tcp_skb_cb_end_seq).unwrap_or(0),
        rcv_nxt: read_kernel::<u32>(sk, off.tcp_sock_rcv_nxt).unwrap_or(0),
        copied_seq: read_kernel::<u32>(sk, off.tcp_sock_copied_seq).unwrap_or(0),
        lport,
        rport,
        tcp_flags: read_kernel::<u8>(cb, off.tcp_skb_cb_tcp_flags).unwrap_or(0),
        _pad: [0; 3],
    });
    0
}
