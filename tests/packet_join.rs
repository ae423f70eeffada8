//! Ground truth for the packet join, through the product's path: a ws-engine client over a
//! veth pair, traced by every probe, its rows made by `correlate`; each message's NIC
//! stamp must be the kernel's own receive stamp of the packet that carried its last byte.
//!
//! The feed blasts, so packets arrive in bursts of MSS-sized packets (the sender's TSO is
//! turned off on the pair), many of them queued while NET_RX is already running on the
//! receiving CPU. (TCP does not coalesce segments here: every skb crossing a veth pair from
//! a local TCP sender is a clone of the sender's retransmit queue, and TCP coalesces only
//! unshared skbs; a packet tap would clone them too. The coalescing cases are covered by
//! `correlate`'s unit and property tests.)
//!
//! The kernel's per-packet stamps come from a packet socket (`AF_PACKET`) on the host end of
//! the pair with `SO_TIMESTAMPING`: it sees each packet as the device handed it to the
//! stack, stamped by the kernel in `netif_rx` (the pair's sender clears TCP's departure
//! time so the kernel stamps there, as it does a NIC's packet; see `Netns::wire_like`).
//! Message boundaries come from the feed's fixed layout (upgrade response, then frames of
//! a 4-byte header and an indexed payload), checked against the captured bytes.
use std::{
    collections::BTreeMap,
    io::IoSliceMut,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, TimestampingFlag, recvmsg, setsockopt, sockopt,
};
use ws_engine::server::{Feed, FeedServer, Payload};
use ws_tests::{realtime_minus_monotonic, require_for_test};
use ws_trace::{
    attach::{self, AttachOptions, Plan},
    correlate::{Stamp, correlate},
    demo::netns::Netns,
    target::Target,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_feed_client");
const MESSAGES: usize = 3000;
const SIZE: usize = 1000;
/// A server frame of `SIZE` bytes: 4-byte header (length 126..65536), then the payload.
const FRAME: u64 = 4 + SIZE as u64;

/// One inbound packet as the packet socket saw it.
struct Captured {
    seq: u32,
    payload: Vec<u8>,
    /// The kernel's receive stamp, CLOCK_MONOTONIC ns.
    mono_ns: i64,
}

/// A packet socket on `interface` receiving IPv4 packets with software receive stamps.
fn packet_socket(interface: &str) -> OwnedFd {
    let proto = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket(2) call; the fd is owned at once below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
    assert!(
        raw >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(interface).expect("interface name");
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0, "no interface {interface}");
    // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set next.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
    setsockopt(&fd, sockopt::RcvBuf, &(32 << 20)).expect("SO_RCVBUF");
    setsockopt(
        &fd,
        sockopt::Timestamping,
        &(TimestampingFlag::SOF_TIMESTAMPING_RX_SOFTWARE
            | TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE),
    )
    .expect("SO_TIMESTAMPING");
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 20_000),
    )
    .expect("SO_RCVTIMEO");
    fd
}

/// Captures inbound TCP packets with payload from `peer` until `stop`.
fn capture(fd: OwnedFd, peer: std::net::Ipv4Addr, stop: Arc<AtomicBool>) -> Vec<Captured> {
    let peer = peer.octets();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(nix::sys::socket::Timestamps);
        let Ok(msg) = recvmsg::<SockaddrStorage>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) else {
            continue;
        };
        let stamp = msg.cmsgs().ok().and_then(|mut c| {
            c.find_map(|c| match c {
                ControlMessageOwned::ScmTimestampsns(ts) => {
                    Some(ts.system.tv_sec() * 1_000_000_000 + ts.system.tv_nsec())
                }
                _ => None,
            })
        });
        let n = msg.bytes;
        let offset = realtime_minus_monotonic();
        // SOCK_RAW on an Ethernet device: 14-byte link header, then IPv4.
        let ip = &buf[..n];
        if ip.len() < 14 + 20 {
            continue;
        }
        let ip = &ip[14..];
        let ihl = (ip[0] & 0x0f) as usize * 4;
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        if ip[0] >> 4 != 4 || ip[9] != 6 || ip[12..16] != peer || total > ip.len() {
            continue;
        }
        let tcp = &ip[ihl..total];
        let data_off = (tcp[12] >> 4) as usize * 4;
        if tcp.len() <= data_off {
            continue;
        }
        let Some(stamp) = stamp else { continue };
        out.push(Captured {
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            payload: tcp[data_off..].to_vec(),
            mono_ns: stamp - offset,
        });
    }
    out
}

/// The byte stream the server sent, from the captured packets (by offset from the first
/// packet's sequence number), and per offset the first packet that carried it.
struct Stream {
    seq0: u32,
    bytes: Vec<u8>,
    /// Per packet (ordered by its first offset): (start offset, end offset, stamp).
    packets: Vec<(u64, u64, i64)>,
}

impl Stream {
    fn of(captured: &[Captured]) -> Stream {
        let seq0 = captured.first().expect("captured packets").seq;
        let mut by_start: BTreeMap<u64, (u64, i64)> = BTreeMap::new();
        let mut bytes = Vec::new();
        for c in captured {
            let start = c.seq.wrapping_sub(seq0) as u64;
            let end = start + c.payload.len() as u64;
            if bytes.len() < end as usize {
                bytes.resize(end as usize, 0);
            }
            bytes[start as usize..end as usize].copy_from_slice(&c.payload);
            // A retransmission keeps the first arrival's stamp.
            by_start.entry(start).or_insert((end, c.mono_ns));
        }
        let packets = by_start.into_iter().map(|(s, (e, t))| (s, e, t)).collect();
        Stream {
            seq0,
            bytes,
            packets,
        }
    }

    /// The stamp of the first packet that carried the byte at `offset`.
    fn stamp_of(&self, offset: u64) -> Option<i64> {
        self.packets
            .iter()
            .filter(|(s, e, _)| *s <= offset && offset < *e)
            .map(|p| p.2)
            .min()
    }
}

#[test]
fn every_messages_nic_stamp_is_the_kernels_stamp_of_its_last_packet() {
    if !require_for_test("every_messages_nic_stamp_is_the_kernels_stamp_of_its_last_packet") {
        return;
    }
    let ns = Netns::create().expect("network namespace with a veth pair");
    let _wire = ns.wire_like().expect("tc egress program on the veth");
    // One MSS per packet, as off a wire (a veth would otherwise carry the sender's 64 KiB
    // TSO packets whole).
    let status = std::process::Command::new("ip")
        .args([
            "-n",
            ns.name(),
            "link",
            "set",
            "dev",
            ns.peer_interface(),
            "gso_max_segs",
            "1",
        ])
        .status()
        .expect("ip");
    assert!(status.success(), "ip link set gso_max_segs: {status}");
    let enter = ns.enter_handle();
    let peer = ns.peer_addr();
    // The feed blasts from CPU 0 (the host end receives on the sender's CPU) while the
    // client, on CPU 1, spends 5 µs in each callback.
    let server = std::thread::spawn(move || {
        enter()?;
        let mut cpu0 = nix::sched::CpuSet::new();
        cpu0.set(0).map_err(std::io::Error::from)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0)
            .map_err(std::io::Error::from)?;
        FeedServer::start_on(
            &format!("{peer}:0"),
            Feed {
                count: MESSAGES,
                size: SIZE,
                gap: Duration::from_micros(
                    std::env::var("GAP")
                        .ok()
                        .and_then(|g| g.parse().ok())
                        .unwrap_or(2),
                ),
                payload: Payload::Indexed,
            },
        )
    })
    .join()
    .expect("server thread")
    .expect("feed server in the namespace");

    let stop = Arc::new(AtomicBool::new(false));
    let sniffer = {
        let fd = packet_socket(ns.host_interface());
        let stop = stop.clone();
        std::thread::spawn(move || capture(fd, peer, stop))
    };
    let command = [
        CLIENT.to_string(),
        server.url().to_string(),
        "--cpu".into(),
        "1".into(),
        "--spin-us".into(),
        "5".into(),
    ];
    let mut target = Target::spawn(&command).expect("spawn client");
    let tgid = *target.tgids().expect("tgids").first().expect("pid");
    let opts = AttachOptions {
        plan: Plan::process(tgid, vec![CLIENT.into()]),
        duration: Some(Duration::from_secs(120)),
        refresh: None,
    };
    let mut events = Vec::new();
    let never = AtomicBool::new(false);
    let summary = attach::run(&opts, &mut target, &never, |_| {}, |_, e| events.push(*e))
        .expect("attach session");
    stop.store(true, Ordering::Relaxed);
    let captured = sniffer.join().expect("capture thread");
    assert_eq!(server.join().expect("feed server").messages, MESSAGES);
    assert_eq!(summary.total_drops(), 0, "{summary}");

    // The stream as sent: the upgrade response, then MESSAGES frames of FRAME bytes.
    let stream = Stream::of(&captured);
    assert!(
        stream.bytes.starts_with(b"HTTP/1.1 101"),
        "first captured bytes are not the upgrade response"
    );
    let response = stream
        .bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of the upgrade response") as u64
        + 4;
    let end_of = |k: u64| response + (k + 1) * FRAME;
    for k in [0u64, MESSAGES as u64 / 2, MESSAGES as u64 - 1] {
        let start = (end_of(k) - FRAME) as usize;
        let frame = &stream.bytes[start..start + FRAME as usize];
        let len = (SIZE as u16).to_be_bytes();
        assert_eq!(frame[..4], [0x82, 126, len[0], len[1]], "frame {k} header");
        assert_eq!(frame[4..12], k.to_le_bytes(), "frame {k} index");
    }

    // The product's rows.
    let c = correlate(&events);
    assert_eq!(c.messages, MESSAGES as u64);
    assert_eq!(c.rows.len(), MESSAGES, "unjoined: {:?}", c.unjoined);
    let mut diffs = Vec::new();
    let mut queued_in_softirq = 0;
    for r in &c.rows {
        let end = end_of(r.msg_seq);
        assert_eq!(
            r.seq_end,
            stream.seq0.wrapping_add(end as u32),
            "message {} placed at the wrong sequence number",
            r.msg_seq
        );
        let kernel = stream
            .stamp_of(end - 1)
            .expect("a captured packet holds the last byte");
        let nic = r.at(Stamp::Nic).expect("nic stamp") as i64;
        // Packets queued while NET_RX was already running on the receiving CPU (the
        // sender's stack transmits from the softirq): the join must keep their own stamp,
        // not the start of that softirq or the raise before it.
        if r.at(Stamp::Softirq) == Some(nic as u64) {
            queued_in_softirq += 1;
        }
        diffs.push((kernel - nic).abs());
    }
    diffs.sort_unstable();
    let p50 = diffs[diffs.len() / 2];
    let p99 = diffs[(diffs.len() * 99).div_ceil(100) - 1];
    let max = diffs[diffs.len() - 1];
    eprintln!(
        "nic vs the kernel's stamp of each message's last packet: p50 {p50} ns, p99 {p99} ns, \
         max {max} ns over {} messages, {queued_in_softirq} of them queued while NET_RX ran",
        diffs.len()
    );
    assert!(p99 <= 5_000, "p50 {p50} ns, p99 {p99} ns");
}
