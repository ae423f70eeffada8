//! End-to-end behaviour against scripted loopback peers: echo with masking, messages
//! larger than the ring, stream offsets and stamps, many connections, close handshake,
//! subprotocols and extra headers, automatic pong.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use ws_engine::decoder::OwnedEvent;
use ws_engine::frame::OpCode;
use ws_engine::handshake::HandshakeOptions;
use ws_engine::{
    ConnConfig, ConnCtx, ConnError, ConnId, EventLoop, Handler, LoopConfig, Message, MsgKind,
    TlsPath,
};

/// Echoes every client message back until the client closes.
fn echo_server(mut s: TcpStream) {
    accept(&mut s);
    let mut r = ClientReader::default();
    while let Some(ev) = r.next(&mut s) {
        match ev {
            OwnedEvent::Message(MsgKind::Text, d) => {
                s.write_all(&frame(true, OpCode::Text, &d)).unwrap()
            }
            OwnedEvent::Message(MsgKind::Binary, d) => {
                s.write_all(&frame(true, OpCode::Binary, &d)).unwrap()
            }
            OwnedEvent::Close(code, _) => {
                let mut p = Vec::new();
                if let Some(c) = code {
                    p.extend_from_slice(&c.to_be_bytes());
                }
                s.write_all(&frame(true, OpCode::Close, &p)).unwrap();
                return;
            }
            _ => {}
        }
    }
}

#[test]
fn echo_round_trip_masks_and_buffers() {
    let (url, srv) = serve_one(echo_server);
    let mut el = EventLoop::new(LoopConfig::default()).unwrap();
    let id = el.connect(&url, &ConnConfig::default()).unwrap();
    let sizes = [0usize, 1, 7, 125, 126, 65535, 65536, 3 << 20];
    let mut sent = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..*n).map(|x| (x * 7 + i) as u8).collect();
        el.send_binary(id, &data).unwrap();
        sent.push((MsgKind::Binary, data));
        let text = "é".repeat(n / 2 + 1);
        el.send_text(id, &text).unwrap();
        sent.push((MsgKind::Text, text.into_bytes()));
    }
    let mut h = Collect {
        close_after: Some(sent.len()),
        ..Collect::default()
    };
    run_until_done(&mut el, &mut h);
    srv.join().unwrap();
    assert!(h.errors.is_empty(), "{:?}", h.errors);
    assert_eq!(h.msgs.len(), sent.len());
    assert!(h.msgs == sent, "echoed messages differ");
    let info = &h.closed[0].1;
    assert!(info.clean);
    assert_eq!((info.sent_code, info.peer_code), (Some(1000), Some(1000)));
}

#[test]
fn messages_larger_than_the_ring() {
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 251) as u8).collect();
    let big2 = big.clone();
    let (url, srv) = serve_one(move |mut s| {
        accept(&mut s);
        s.write_all(&frame(true, OpCode::Binary, &big2)).unwrap();
        // 3 MiB in fragments of 100 KiB with a ping in the middle.
        let chunks: Vec<&[u8]> = big2.chunks(100 * 1024).collect();
        for rep in 0..3 {
            for (i, c) in chunks.iter().enumerate() {
                let first = rep == 0 && i == 0;
                let last = rep == 2 && i == chunks.len() - 1;
                let op = if first {
                    OpCode::Binary
                } else {
                    OpCode::Continuation
                };
                s.write_all(&frame(last, op, c)).unwrap();
                if rep == 1 && i == 0 {
                    s.write_all(&frame(true, OpCode::Ping, b"mid")).unwrap();
                }
            }
        }
        s.write_all(&frame(true, OpCode::Close, b"\x03\xe8"))
            .unwrap();
        let mut r = ClientReader::default();
        assert_eq!(r.next(&mut s), Some(OwnedEvent::Pong(b"mid".to_vec())));
        assert!(is_close(&r.next(&mut s), 1000));
    });
    let cfg = ConnConfig {
        ring_capacity: 64 * 1024,
        ..ConnConfig::default()
    };
    let c = run_client(&url, &cfg, Collect::default());
    srv.join().unwrap();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(c.msgs.len(), 2);
    assert!(c.msgs[0].1 == big);
    assert_eq!(c.msgs[1].1.len(), 3 * big.len());
    assert!(c.msgs[1].1.chunks(big.len()).all(|ch| ch == big.as_slice()));
}

#[test]
fn probe_fields_stream_offsets_and_stamps() {
    let (url, srv) = serve_one(|mut s| {
        let head = accept(&mut s);
        let mut written = head;
        let mut ends = Vec::new();
        for i in 0..50usize {
            let f = frame(true, OpCode::Binary, &vec![i as u8; i * 37]);
            written += f.len();
            ends.push(written as u64);
            s.write_all(&f).unwrap();
        }
        let ends_bytes: Vec<u8> = ends.iter().flat_map(|e| e.to_le_bytes()).collect();
        let f = frame(true, OpCode::Binary, &ends_bytes);
        s.write_all(&f).unwrap();
        s.write_all(&frame(true, OpCode::Close, b"\x03\xe8"))
            .unwrap();
        let _ = ClientReader::default().next(&mut s);
    });
    let before = ws_engine::clock::monotonic_ns();
    let c = run_client(&url, &ConnConfig::default(), Collect::default());
    let after = ws_engine::clock::monotonic_ns();
    srv.join().unwrap();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    // The engine keeps raw stamps untraced; what the callback and the log read is
    // converted to CLOCK_MONOTONIC ns (within the calibration's error of the kernel's).
    let slack = 1_000_000;
    for p in &c.probes {
        let s = &p.stamps;
        for t in [
            s.event_ns,
            s.recv_start_ns,
            s.recv_end_ns,
            s.parsed_ns,
            s.callback_ns,
        ] {
            assert!(
                t + slack >= before && t <= after + slack,
                "{t} outside [{before}, {after}]"
            );
        }
    }
    let mut shared = 0;
    for w in c.raw_log.windows(2) {
        // Untraced, a binary message after the first of a read is stamped with the previous
        // callback's end: one clock read per message.
        if w[1].stamps.recv_end_ns == w[0].stamps.recv_end_ns {
            assert_eq!(w[1].stamps.parsed_ns, w[0].callback_done, "{w:?}");
            assert_eq!(w[1].stamps.callback_ns, w[1].stamps.parsed_ns);
            shared += 1;
        }
    }
    eprintln!("{shared} messages stamped with the previous callback's end");
    let (_, ends_bytes) = c.msgs.last().unwrap();
    let ends: Vec<u64> = ends_bytes
        .chunks(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let cookie = c.probes[0].sock_cookie;
    assert_ne!(cookie, 0, "SO_COOKIE read");
    for (i, p) in c.probes.iter().take(50).enumerate() {
        assert_eq!(p.abi_version, ws_abi::ABI_VERSION);
        assert_eq!(p.msg_seq, i as u64);
        assert_eq!(p.len, (i * 37) as u64);
        assert_eq!(p.opcode, 2);
        assert_eq!(p.tls_path, TlsPath::None as u8);
        assert_eq!(p.sock_cookie, cookie);
        assert_eq!(p.stream_end, ends[i], "stream_end of message {i}");
        let s = &p.stamps;
        assert!(s.event_ns > 0);
        assert!(s.event_ns <= s.recv_start_ns, "{s:?}");
        assert!(s.recv_start_ns <= s.recv_end_ns, "{s:?}");
        assert!(s.recv_end_ns <= s.parsed_ns, "{s:?}");
        assert!(s.parsed_ns <= s.callback_ns, "{s:?}");
        assert_eq!(s.decrypt_start_ns, 0);
        assert!(c.callback_done[i] >= s.callback_ns);
    }
}

#[test]
fn many_connections_in_one_loop() {
    const N: usize = 16;
    const M: usize = 200;
    let (url, srv) = serve_many(N, |mut s| {
        accept(&mut s);
        let mut all = Vec::new();
        for i in 0..M {
            all.extend(frame(true, OpCode::Text, format!("msg {i}").as_bytes()));
        }
        s.write_all(&all).unwrap();
        s.write_all(&frame(true, OpCode::Close, b"\x03\xe8"))
            .unwrap();
        let _ = ClientReader::default().next(&mut s);
    });
    let mut el = EventLoop::new(LoopConfig::default()).unwrap();
    let ids: Vec<_> = (0..N)
        .map(|_| el.connect(&url, &ConnConfig::default()).unwrap())
        .collect();
    assert_eq!(el.len(), N);
    let mut h = Collect::default();
    run_until_done(&mut el, &mut h);
    srv.join().unwrap();
    assert!(h.errors.is_empty(), "{:?}", h.errors);
    assert_eq!(h.established, N);
    assert_eq!(h.msgs.len(), N * M);
    let mut closed: Vec<_> = h.closed.iter().map(|(id, _)| *id).collect();
    closed.sort();
    let mut ids2 = ids.clone();
    ids2.sort();
    assert_eq!(closed, ids2);
    for id in ids {
        let n = h
            .probes
            .iter()
            .filter(|p| p.conn_id == id.0)
            .map(|p| p.msg_seq)
            .max();
        assert_eq!(n, Some(M as u64 - 1));
    }
}

#[test]
fn subprotocol_and_extra_headers() {
    let (url, srv) = serve_one(|mut s| {
        let req = read_request(&mut s);
        assert!(
            req.contains("Sec-WebSocket-Protocol: v2.chat, v1.chat\r\n"),
            "{req}"
        );
        assert!(req.contains("Authorization: Bearer t0k3n\r\n"), "{req}");
        s.write_all(&response_for(&req, "Sec-WebSocket-Protocol: v1.chat\r\n"))
            .unwrap();
        s.write_all(&frame(true, OpCode::Ping, b"are you there"))
            .unwrap();
        let mut r = ClientReader::default();
        assert_eq!(
            r.next(&mut s),
            Some(OwnedEvent::Pong(b"are you there".to_vec()))
        );
        assert_eq!(r.next(&mut s), Some(OwnedEvent::Ping(b"hi".to_vec())));
        s.write_all(&frame(true, OpCode::Pong, b"hi")).unwrap();
        assert!(is_close(&r.next(&mut s), 3000));
        s.write_all(&frame(true, OpCode::Close, b"\x0b\xb8"))
            .unwrap();
    });
    let cfg = ConnConfig {
        handshake: HandshakeOptions {
            subprotocols: vec!["v2.chat".into(), "v1.chat".into()],
            headers: vec![("Authorization".into(), "Bearer t0k3n".into())],
        },
        ..ConnConfig::default()
    };
    let mut el = EventLoop::new(LoopConfig::default()).unwrap();
    let id = el.connect(&url, &cfg).unwrap();
    assert_eq!(el.subprotocol(id), Some("v1.chat"));
    let mut h = Collect::default();
    // Wait for the ping, ping back, wait for the pong, then close with 3000.
    while h.pings.is_empty() {
        el.poll(&mut h, Some(Duration::from_millis(50))).unwrap();
    }
    el.send_ping(id, b"hi").unwrap();
    while h.pongs.is_empty() {
        el.poll(&mut h, Some(Duration::from_millis(50))).unwrap();
    }
    el.close(id, 3000, "app done").unwrap();
    assert!(el.send_text(id, "late").is_err(), "no data after close");
    run_until_done(&mut el, &mut h);
    srv.join().unwrap();
    assert!(h.errors.is_empty(), "{:?}", h.errors);
    let info = &h.closed[0].1;
    assert!(info.clean);
    assert_eq!((info.sent_code, info.peer_code), (Some(3000), Some(3000)));
}

#[test]
fn unanswered_close_times_out() {
    let (url, srv) = serve_one(|mut s| {
        accept(&mut s);
        let mut r = ClientReader::default();
        assert!(is_close(&r.next(&mut s), 1000));
        // Never answer; wait for the client to give up.
        let _ = r.next(&mut s);
    });
    let cfg = ConnConfig {
        close_timeout: Duration::from_millis(200),
        ..ConnConfig::default()
    };
    let mut el = EventLoop::new(LoopConfig::default()).unwrap();
    let id = el.connect(&url, &cfg).unwrap();
    el.close(id, 1000, "").unwrap();
    let mut h = Collect::default();
    run_until_done(&mut el, &mut h);
    srv.join().unwrap();
    assert_eq!(h.errors[0].0, "CloseTimeout", "{:?}", h.errors);
}

#[test]
fn unanswered_close_from_a_callback_times_out() {
    struct CloseOnFirst(Collect);
    impl Handler for CloseOnFirst {
        fn on_message(&mut self, conn: &mut ConnCtx<'_>, _msg: Message<'_>) {
            conn.close(1000, "done").unwrap();
        }
        fn on_error(&mut self, id: ConnId, err: &ConnError) {
            self.0.on_error(id, err);
        }
    }
    let (url, srv) = serve_one(|mut s| {
        accept(&mut s);
        s.write_all(&frame(true, OpCode::Text, b"hello")).unwrap();
        let mut r = ClientReader::default();
        assert!(is_close(&r.next(&mut s), 1000));
        // Never answer; wait for the client to give up.
        let _ = r.next(&mut s);
    });
    let cfg = ConnConfig {
        close_timeout: Duration::from_millis(200),
        ..ConnConfig::default()
    };
    let mut el = EventLoop::new(LoopConfig::default()).unwrap();
    el.connect(&url, &cfg).unwrap();
    let mut h = CloseOnFirst(Collect::default());
    run_until_done(&mut el, &mut h);
    srv.join().unwrap();
    assert_eq!(h.0.errors[0].0, "CloseTimeout", "{:?}", h.0.errors);
}

#[test]
fn full_socket_buffers_sends_and_drains() {
    const N: usize = 8;
    const SIZE: usize = 2 << 20;
    // A fixed 64 KiB receive buffer on the server: 16 MiB cannot fit in the socket
    // buffers (client send buffer ≤ net.ipv4.tcp_wmem max, 4 MiB by default).
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (url, srv) = serve_one_with(Some(64 * 1024), move |mut s| {
        accept(&mut s);
        // Don't read until the client has seen its queue back up.
        go_rx.recv().unwrap();
        let mut r = ClientReader::default();
        for i in 0..N {
            match r.next(&mut s) {
                Some(OwnedEvent::Message(MsgKind::Binary, d)) => {
                    assert_eq!(d.len(), SIZE);
                    assert!(d.iter().all(|&b| b == i as u8));
                }
                other => panic!("message {i}: {other:?}"),
            }
        }
        s.write_all(&frame(true, OpCode::Text, b"all received"))
            .unwrap();
        assert!(is_close(&r.next(&mut s), 1000));
        s.write_all(&frame(true, OpCode::Close, b"\x03\xe8"))
            .unwrap();
    });
    let mut el = EventLoop::new(LoopConfig::default()).unwrap();
    let id = el.connect(&url, &ConnConfig::default()).unwrap();
    for i in 0..N {
        el.send_binary(id, &vec![i as u8; SIZE]).unwrap();
    }
    let queued = el.with_ctx(id, |c| c.buffered()).unwrap();
    assert!(queued > 0, "16 MiB should not fit in the socket buffer");
    go_tx.send(()).unwrap();
    let mut h = Collect {
        close_after: Some(1),
        ..Collect::default()
    };
    run_until_done(&mut el, &mut h);
    srv.join().unwrap();
    assert!(h.errors.is_empty(), "{:?}", h.errors);
    assert_eq!(h.msgs, vec![(MsgKind::Text, b"all received".to_vec())]);
    assert!(h.writable >= 1, "on_writable after the queue drained");
    assert!(h.closed[0].1.clean);
}

#[test]
fn run_and_run_busy_finish_when_connections_end() {
    for busy in [false, true] {
        let (url, srv) = serve_one(|mut s| {
            accept(&mut s);
            for i in 0..10u8 {
                s.write_all(&frame(true, OpCode::Binary, &[i; 10])).unwrap();
            }
            s.write_all(&frame(true, OpCode::Close, b"\x03\xe8"))
                .unwrap();
            let _ = ClientReader::default().next(&mut s);
        });
        // The idle timeout is a safety net: a broken loop fails instead of hanging.
        let cfg = ConnConfig {
            idle_timeout: Some(Duration::from_secs(10)),
            ..ConnConfig::default()
        };
        let mut el = EventLoop::new(LoopConfig::default()).unwrap();
        el.connect(&url, &cfg).unwrap();
        let mut h = Collect::default();
        if busy {
            el.run_busy(&mut h).unwrap();
        } else {
            el.run(&mut h).unwrap();
        }
        srv.join().unwrap();
        assert!(h.errors.is_empty(), "{:?}", h.errors);
        assert_eq!(h.msgs.len(), 10, "busy {busy}");
        assert!(h.closed[0].1.clean);
        assert!(el.is_empty());
    }
}
