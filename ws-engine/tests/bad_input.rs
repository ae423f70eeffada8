//! Bad peers: resets, garbage, stalls, one byte at a time, protocol violations. Each
//! must surface as a clear error or close code, never a panic or a hang.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use ws_engine::conn::ConnError;
use ws_engine::decoder::OwnedEvent;
use ws_engine::frame::OpCode;
use ws_engine::handshake::HandshakeError;
use ws_engine::{ConnConfig, EventLoop, Limits, LoopConfig, LoopError, MsgKind};

fn connect_err(url: &str, cfg: &ConnConfig) -> HandshakeError {
    let mut el = EventLoop::new(LoopConfig::default()).unwrap();
    match el.connect(url, cfg) {
        Err(LoopError::Connect(ConnError::Handshake(h))) => h,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("handshake unexpectedly succeeded"),
    }
}

#[test]
fn peer_reset_mid_frame_is_reported() {
    let (url, srv) = serve_one(|mut s| {
        accept(&mut s);
        let mut f = vec![0x82, 126, 0x10, 0x00];
        f.extend_from_slice(&[7u8; 100]);
        s.write_all(&f).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        set_linger_zero(&s);
    });
    let c = run_client(&url, &ConnConfig::default(), Collect::default());
    srv.join().unwrap();
    assert!(c.msgs.is_empty());
    assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
    // Normally the 104 bytes were read before the RST (pending 104); on a very loaded
    // machine the RST can arrive first and the kernel drops the unread bytes.
    assert!(
        c.errors[0].0 == "Reset:104" || c.errors[0].0 == "Reset:0",
        "{}",
        c.errors[0].1
    );
    assert!(c.errors[0].1.contains("reset by peer"));
    assert!(!c.closed[0].1.clean);
}

#[test]
fn peer_closing_mid_frame_is_reported() {
    let (url, srv) = serve_one(|mut s| {
        accept(&mut s);
        s.write_all(&frame(true, OpCode::Text, b"whole")).unwrap();
        s.write_all(&[0x81, 10, b'p', b'a']).unwrap();
    });
    let c = run_client(&url, &ConnConfig::default(), Collect::default());
    srv.join().unwrap();
    assert_eq!(c.msgs, vec![(MsgKind::Text, b"whole".to_vec())]);
    assert_eq!(c.errors[0].0, "PeerClosed:4", "{}", c.errors[0].1);
    assert!(c.errors[0].1.contains("without a close frame"));
}

#[test]
fn garbage_after_handshake_closes_1002() {
    let (url, srv) = serve_one(|mut s| {
        accept(&mut s);
        s.write_all(b"\xff\xfe this is not a websocket frame")
            .unwrap();
        let ev = ClientReader::default().next(&mut s);
        assert!(is_close(&ev, 1002), "{ev:?}");
        s.write_all(&frame(true, OpCode::Close, b"\x03\xea"))
            .unwrap();
    });
    let c = run_client(&url, &ConnConfig::default(), Collect::default());
    srv.join().unwrap();
    assert_eq!(c.errors[0].0, "Protocol:1002", "{}", c.errors[0].1);
    assert!(c.errors[0].1.contains("reserved bits"));
    assert_eq!(c.closed[0].1.sent_code, Some(1002));
}

#[test]
fn garbage_instead_of_handshake_is_malformed() {
    let (url, srv) = serve_one(|mut s| {
        read_request(&mut s);
        s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").unwrap();
    });
    let e = connect_err(&url, &ConnConfig::default());
    srv.join().unwrap();
    assert!(matches!(e, HandshakeError::MalformedResponse(_)), "{e}");
}

#[test]
fn non_101_and_bad_accept_are_rejected() {
    let (url, srv) = serve_one(|mut s| {
        read_request(&mut s);
        s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
    });
    let e = connect_err(&url, &ConnConfig::default());
    srv.join().unwrap();
    assert!(
        matches!(e, HandshakeError::NotSwitching { status: 404, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("404"));

    let (url, srv) = serve_one(|mut s| {
        read_request(&mut s);
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: dGhpcyBpcyB3cm9uZw==\r\n\r\n").unwrap();
    });
    let e = connect_err(&url, &ConnConfig::default());
    srv.join().unwrap();
    assert!(matches!(e, HandshakeError::BadAccept { .. }), "{e}");
}

#[test]
fn stall_during_handshake_times_out() {
    let (url, srv) = serve_one(|mut s| {
        read_request(&mut s);
        // Say nothing until the client gives up and closes.
        let mut b = [0u8; 1];
        let _ = std::io::Read::read(&mut s, &mut b);
    });
    let cfg = ConnConfig {
        handshake_timeout: Duration::from_millis(200),
        ..ConnConfig::default()
    };
    let e = connect_err(&url, &cfg);
    srv.join().unwrap();
    assert!(matches!(e, HandshakeError::Timeout(_)), "{e}");
}

#[test]
fn peer_closing_during_handshake_is_eof() {
    let (url, srv) = serve_one(|mut s| {
        read_request(&mut s);
        s.write_all(b"HTTP/1.1 101 Swi").unwrap();
    });
    let e = connect_err(&url, &ConnConfig::default());
    srv.join().unwrap();
    assert!(matches!(e, HandshakeError::Eof(16)), "{e}");
}

#[test]
fn stall_after_handshake_hits_idle_timeout() {
    let (url, srv) = serve_one(|mut s| {
        accept(&mut s);
        s.write_all(&frame(true, OpCode::Binary, b"one")).unwrap();
        // Then nothing, until the client gives up and closes.
        let _ = ClientReader::default().next(&mut s);
    });
    let cfg = ConnConfig {
        idle_timeout: Some(Duration::from_millis(300)),
        ..ConnConfig::default()
    };
    let c = run_client(&url, &cfg, Collect::default());
    srv.join().unwrap();
    assert_eq!(c.msgs.len(), 1);
    assert_eq!(c.errors[0].0, "Stalled", "{}", c.errors[0].1);
    assert!(c.errors[0].1.contains("stalled"));
}

#[test]
fn one_byte_at_a_time() {
    let (url, srv) = serve_one(|mut s| {
        let req = read_request(&mut s);
        let mut all = response_for(&req, "");
        all.extend(frame(true, OpCode::Text, b"hello"));
        all.extend(frame(true, OpCode::Binary, &[0xAB; 300]));
        all.extend(frame(false, OpCode::Text, "κό".as_bytes()));
        all.extend(frame(true, OpCode::Ping, b"p"));
        all.extend(frame(true, OpCode::Continuation, "σμε".as_bytes()));
        all.extend(frame(true, OpCode::Close, b"\x03\xe8done"));
        for b in &all {
            s.write_all(std::slice::from_ref(b)).unwrap();
            std::thread::sleep(Duration::from_micros(300));
        }
        let mut r = ClientReader::default();
        assert_eq!(r.next(&mut s), Some(OwnedEvent::Pong(b"p".to_vec())));
        assert!(is_close(&r.next(&mut s), 1000));
    });
    let c = run_client(&url, &ConnConfig::default(), Collect::default());
    srv.join().unwrap();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(
        c.msgs,
        vec![
            (MsgKind::Text, b"hello".to_vec()),
            (MsgKind::Binary, vec![0xAB; 300]),
            (MsgKind::Text, "κόσμε".as_bytes().to_vec()),
        ]
    );
    assert_eq!(c.pings, vec![b"p".to_vec()]);
    assert_eq!(c.close_frames, vec![(Some(1000), "done".to_string())]);
    assert!(c.closed[0].1.clean);
}

fn violation(bytes: Vec<u8>, cfg: ConnConfig, code: u16, text: &str) {
    let (url, srv) = serve_one(move |mut s| {
        accept(&mut s);
        s.write_all(&bytes).unwrap();
        let ev = ClientReader::default().next(&mut s);
        assert!(is_close(&ev, code), "expected close {code}, got {ev:?}");
    });
    let c = run_client(&url, &cfg, Collect::default());
    srv.join().unwrap();
    assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
    assert_eq!(
        c.errors[0].0,
        format!("Protocol:{code}"),
        "{}",
        c.errors[0].1
    );
    assert!(c.errors[0].1.contains(text), "{}", c.errors[0].1);
    assert!(c.msgs.is_empty());
}

#[test]
fn invalid_utf8_closes_1007() {
    violation(
        frame(true, OpCode::Text, b"ok\xc0\xaf"),
        ConnConfig::default(),
        1007,
        "UTF-8",
    );
}

#[test]
fn oversized_message_closes_1009() {
    let cfg = ConnConfig {
        limits: Limits {
            max_frame: 1000,
            max_message: 1500,
        },
        ..ConnConfig::default()
    };
    violation(
        frame(true, OpCode::Binary, &[0; 2000]),
        cfg.clone(),
        1009,
        "exceeds the limit",
    );
    let mut two = frame(false, OpCode::Binary, &[0; 1000]);
    two.extend(frame(true, OpCode::Continuation, &[0; 1000]));
    violation(two, cfg, 1009, "message of at least 2000");
}

#[test]
fn masked_or_bad_control_frames_close_1002() {
    violation(
        vec![0x82, 0x81, 1, 2, 3, 4, 5],
        ConnConfig::default(),
        1002,
        "masked",
    );
    violation(
        frame(false, OpCode::Ping, b"x"),
        ConnConfig::default(),
        1002,
        "fragmented control",
    );
    violation(
        frame(true, OpCode::Ping, &[0; 126]),
        ConnConfig::default(),
        1002,
        "control frame payload",
    );
    violation(
        vec![0x83, 0],
        ConnConfig::default(),
        1002,
        "reserved opcode",
    );
    violation(
        frame(true, OpCode::Continuation, b"x"),
        ConnConfig::default(),
        1002,
        "continuation",
    );
    violation(
        frame(true, OpCode::Close, b"\x03\xed"),
        ConnConfig::default(),
        1002,
        "close code 1005",
    );
}

#[test]
fn stall_mid_frame_hits_idle_timeout() {
    let (url, srv) = serve_one(|mut s| {
        accept(&mut s);
        s.write_all(&[0x82, 126, 0x01, 0x00, 1, 2, 3]).unwrap();
        let _ = ClientReader::default().next(&mut s);
    });
    let cfg = ConnConfig {
        idle_timeout: Some(Duration::from_millis(200)),
        ..ConnConfig::default()
    };
    let c = run_client(&url, &cfg, Collect::default());
    srv.join().unwrap();
    assert!(c.msgs.is_empty());
    assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
    assert_eq!(c.errors[0].0, "Stalled", "{}", c.errors[0].1);
}
