//! wss:// end to end: the engine against the rustls feed server (throwaway CA made here)
//! for every TLS version / cipher family, against a Python `websockets` server over
//! OpenSSL, certificate and handshake failures, a forged record, and kTLS where the kernel
//! has it (the one test allowed to skip, and it says why).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    MixedCheck, have_python, python_server_script, read_request, response_for, start_python_server,
};
use rustls::crypto::ring::cipher_suite as cs;
use rustls::{CertificateError, SupportedCipherSuite};
use ws_engine::server::{Feed, FeedServer, Payload};
use ws_engine::testca::{TestCa, Validity};
use ws_engine::tls::ktls_probe;
use ws_engine::{
    CloseInfo, ConnConfig, ConnCtx, ConnError, ConnId, EventLoop, Handler, LoopConfig, Message,
    MsgKind, MsgProbe, TlsError, TlsPath,
};

const NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ws-engine-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// A client config trusting `ca` (written to a PEM file of its own: tests running at the
/// same time with the same `tag` have different CAs) and, unless `ktls`, staying in user
/// space.
fn client_cfg(ca: &TestCa, tag: &str, ktls: bool) -> ConnConfig {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = temp_path(&format!("{tag}-{n}-ca.pem"));
    ca.write_ca_pem(&path).expect("write CA");
    let mut cfg = ConnConfig::default();
    cfg.tls.ca_file = Some(path);
    cfg.tls.ktls = ktls;
    cfg.handshake_timeout = Duration::from_secs(10);
    cfg
}

fn run_until_done<H: Handler>(el: &mut EventLoop, h: &mut H) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !el.is_empty() {
        assert!(
            Instant::now() < deadline,
            "event loop still busy after 60 s"
        );
        el.poll(h, Some(Duration::from_millis(50))).expect("poll");
    }
}

#[derive(Default)]
struct Feedcheck {
    size: usize,
    n: u64,
    bad: Vec<u64>,
    probes: Vec<MsgProbe>,
    errors: Vec<String>,
    closed: Option<CloseInfo>,
}

impl Handler for Feedcheck {
    fn on_message(&mut self, _conn: &mut ConnCtx<'_>, msg: Message<'_>) {
        let stamp = 8.min(self.size);
        let mut want = [0u8; 8];
        want[..stamp].copy_from_slice(&self.n.to_le_bytes()[..stamp]);
        if msg.kind != MsgKind::Binary
            || msg.data.len() != self.size
            || msg.data[..stamp] != want[..stamp]
        {
            self.bad.push(self.n);
        }
        self.n += 1;
        if self.probes.len() < 100_000 {
            self.probes.push(msg.probe());
        }
    }
    fn on_error(&mut self, _id: ConnId, err: &ConnError) {
        self.errors.push(err.to_string());
    }
    fn on_closed(&mut self, _id: ConnId, info: &CloseInfo) {
        self.closed = Some(info.clone());
    }
}

/// Streams `count` messages of `size` bytes over TLS and checks them and their probes.
fn stream_feed(
    versions: &[&'static rustls::SupportedProtocolVersion],
    suite: Option<SupportedCipherSuite>,
    count: usize,
    size: usize,
    ring: usize,
    ktls: bool,
) -> (Feedcheck, ws_engine::TlsInfo) {
    let ca = TestCa::new().expect("CA");
    let cert = ca.server_cert(&NAMES, Validity::Current).expect("cert");
    let suites = suite.map(|s| vec![s]);
    let server_cfg = cert
        .server_config(versions, suites.as_deref())
        .expect("server config");
    let feed = Feed {
        count,
        size,
        gap: Duration::ZERO,
        payload: Payload::Indexed,
    };
    let server = FeedServer::start_tls(feed, server_cfg).expect("server");
    let mut cfg = client_cfg(&ca, "feed", ktls);
    cfg.ring_capacity = ring;
    let mut el = EventLoop::new(LoopConfig::default()).expect("loop");
    let id = el.connect(server.url(), &cfg).expect("connect");
    let info = el.tls_info(id).expect("tls info");
    assert_eq!(el.tls_path(id), Some(info.path));
    let mut h = Feedcheck {
        size,
        ..Default::default()
    };
    run_until_done(&mut el, &mut h);
    server.join().expect("server");
    assert!(h.errors.is_empty(), "{:?}", h.errors);
    assert_eq!(h.n, count as u64, "{info:?}");
    assert!(
        h.bad.is_empty(),
        "bad messages {:?}",
        &h.bad[..h.bad.len().min(10)]
    );
    let closed = h.closed.clone().expect("closed");
    assert_eq!(closed.peer_code, Some(1000));
    assert!(closed.clean, "{closed:?}");
    assert_eq!(info.alpn.as_deref(), Some("http/1.1"));
    check_probes(&h.probes, info.path);
    (h, info)
}

/// Probe invariants of the TLS paths: the path is stamped in every message; userspace:
/// decrypt lies inside recv_start→recv_end, and stream offsets are ciphertext bytes read
/// (stream_end == read_end, never decreasing).
fn check_probes(probes: &[MsgProbe], path: TlsPath) {
    let mut last = 0;
    for p in probes {
        assert_eq!(p.tls_path, path as u8);
        let s = &p.stamps;
        assert!(s.recv_start_ns <= s.recv_end_ns);
        if path == TlsPath::Userspace {
            assert!(
                s.recv_start_ns <= s.decrypt_start_ns && s.decrypt_start_ns <= s.recv_end_ns,
                "decrypt outside recv: {s:?}"
            );
            assert_eq!(p.stream_end, p.read_end);
        }
        assert!(p.read_end >= last, "read_end went back");
        last = p.read_end;
    }
}

fn expect_path(info: &ws_engine::TlsInfo, ktls_requested: bool) {
    let want = if ktls_requested && ktls_probe().is_ok() {
        TlsPath::Ktls
    } else {
        TlsPath::Userspace
    };
    assert_eq!(info.path, want, "{info:?}");
    if want == TlsPath::Userspace {
        assert!(info.ktls_unavailable.is_some(), "{info:?}");
    }
}

#[test]
fn tls13_every_cipher_streams_a_feed() {
    for suite in [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let (_, info) = stream_feed(
            &[&rustls::version::TLS13],
            Some(suite),
            3000,
            300,
            1 << 20,
            false,
        );
        assert_eq!(info.version, "TLSv1.3");
        assert_eq!(info.cipher_suite, format!("{:?}", suite.suite()));
        expect_path(&info, false);
    }
}

#[test]
fn tls12_gcm_and_chacha_stream_a_feed() {
    for suite in [
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ] {
        let (_, info) = stream_feed(
            &[&rustls::version::TLS12],
            Some(suite),
            3000,
            300,
            1 << 20,
            false,
        );
        assert_eq!(info.version, "TLSv1.2");
        assert_eq!(info.cipher_suite, format!("{:?}", suite.suite()));
    }
}

/// Default settings (kTLS tried): falls back to userspace here without failing the
/// connection; large messages span many records.
#[test]
fn default_config_falls_back_cleanly_and_carries_large_messages() {
    let (_, info) = stream_feed(
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        None,
        300,
        100_000,
        1 << 20,
        true,
    );
    expect_path(&info, true);
}

/// A 64 KiB ring with 60 000-byte messages: the ring often has less room than a record,
/// so records are staged and copied in pieces.
#[test]
fn small_ring_stages_records_that_do_not_fit() {
    stream_feed(
        &[&rustls::version::TLS13],
        None,
        400,
        60_000,
        64 * 1024,
        false,
    );
    stream_feed(
        &[&rustls::version::TLS12],
        None,
        400,
        60_000,
        64 * 1024,
        false,
    );
}

fn connect_err(url: &str, cfg: &ConnConfig) -> ConnError {
    let mut el = EventLoop::new(LoopConfig::default()).expect("loop");
    match el.connect(url, cfg) {
        Ok(_) => panic!("connect to {url} succeeded"),
        Err(ws_engine::LoopError::Connect(e)) => e,
        Err(e) => panic!("unexpected {e}"),
    }
}

/// A listener on a free loopback port, and the wss:// URL that reaches it.
fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("wss://{}/feed", l.local_addr().expect("addr"));
    (l, url)
}

fn small_feed() -> Feed {
    Feed {
        count: 1,
        size: 8,
        gap: Duration::ZERO,
        payload: Payload::Indexed,
    }
}

#[test]
fn wrong_ca_is_a_certificate_error() {
    let ca = TestCa::new().expect("CA");
    let other = TestCa::new().expect("CA");
    let server = FeedServer::start_tls(small_feed(), ca.server_config(&NAMES).expect("cfg"))
        .expect("server");
    let mut cfg = client_cfg(&other, "wrong-ca", false);
    cfg.tls.system_roots = false;
    let e = connect_err(server.url(), &cfg);
    assert!(
        matches!(
            &e,
            ConnError::Tls(TlsError::Handshake(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            )))
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    let _ = server.join();
}

#[test]
fn wrong_host_name_is_a_certificate_error() {
    let ca = TestCa::new().expect("CA");
    let server = FeedServer::start_tls(
        small_feed(),
        ca.server_config(&["feed.example"]).expect("cfg"),
    )
    .expect("server");
    let e = connect_err(server.url(), &client_cfg(&ca, "wrong-host", false));
    assert!(
        matches!(
            &e,
            ConnError::Tls(TlsError::Handshake(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )))
        ),
        "{e:?}"
    );
    let _ = server.join();
}

#[test]
fn expired_certificate_is_a_certificate_error() {
    let ca = TestCa::new().expect("CA");
    let cfg = ca
        .server_cert(&NAMES, Validity::Expired)
        .expect("cert")
        .server_config(&[&rustls::version::TLS13], None)
        .expect("cfg");
    let server = FeedServer::start_tls(small_feed(), cfg).expect("server");
    let e = connect_err(server.url(), &client_cfg(&ca, "expired", false));
    assert!(
        matches!(
            &e,
            ConnError::Tls(TlsError::Handshake(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )))
        ),
        "{e:?}"
    );
    let _ = server.join();
}

/// The server reads the ClientHello and hangs up.
#[test]
fn server_closing_mid_handshake_is_a_clear_error() {
    let (l, url) = listen();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut hello = [0u8; 5];
        s.read_exact(&mut hello).expect("client hello header");
        assert_eq!(hello[0], 22, "handshake record");
    });
    let ca = TestCa::new().expect("CA");
    let e = connect_err(&url, &client_cfg(&ca, "eof", false));
    h.join().expect("server");
    assert!(
        matches!(&e, ConnError::Tls(TlsError::HandshakeEof { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("during the TLS handshake"), "{e}");
}

/// The server reads the ClientHello and never answers: the handshake timeout ends it.
#[test]
fn server_stalling_mid_handshake_times_out() {
    let (l, url) = listen();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut hello = [0u8; 5];
        s.read_exact(&mut hello).expect("client hello header");
        // Hold the connection open until the client has given up.
        let _ = rx.recv();
    });
    let ca = TestCa::new().expect("CA");
    let mut cfg = client_cfg(&ca, "stall", false);
    cfg.handshake_timeout = Duration::from_millis(300);
    let e = connect_err(&url, &cfg);
    let _ = tx.send(());
    h.join().expect("server");
    assert!(
        matches!(&e, ConnError::Tls(TlsError::HandshakeTimeout(..))),
        "{e:?}"
    );
}

/// After the upgrade the server writes a forged application-data record straight to the
/// TCP socket: the client fails with bad_record_mac, never delivers it.
#[test]
fn forged_record_is_rejected() {
    let ca = TestCa::new().expect("CA");
    let server_cfg = ca.server_config(&NAMES).expect("cfg");
    let (l, url) = listen();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let srv = std::thread::spawn(move || {
        let (tcp, _) = l.accept().expect("accept");
        let mut s = tls_upgrade(server_cfg, tcp);
        let mut forged = vec![23u8, 3, 3, 0, 40];
        forged.extend_from_slice(&[0x5A; 40]);
        s.sock.write_all(&forged).expect("forged record");
        let _ = rx.recv();
    });
    let mut el = EventLoop::new(LoopConfig::default()).expect("loop");
    let mut h = Feedcheck::default();
    // The forged record may arrive with the 101 response (the handshake fails) or after.
    match el.connect(&url, &client_cfg(&ca, "forged", false)) {
        Ok(_) => run_until_done(&mut el, &mut h),
        Err(e) => h.errors.push(e.to_string()),
    }
    let _ = tx.send(());
    srv.join().expect("server");
    assert_eq!(h.n, 0, "a forged record reached the callback");
    assert_eq!(h.errors.len(), 1, "{:?}", h.errors);
    assert!(h.errors[0].contains("bad_record_mac"), "{:?}", h.errors);
}

type ServerStream<S = std::net::TcpStream> = rustls::StreamOwned<rustls::ServerConnection, S>;

/// Server side of TLS + the WebSocket upgrade, by hand, on an accepted socket.
fn tls_upgrade(
    cfg: std::sync::Arc<rustls::ServerConfig>,
    tcp: std::net::TcpStream,
) -> ServerStream {
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    tls_upgrade_over(cfg, tcp)
}

/// [`tls_upgrade`] over any transport (its socket options set by the caller).
fn tls_upgrade_over<S: Read + Write>(
    cfg: std::sync::Arc<rustls::ServerConfig>,
    sock: S,
) -> ServerStream<S> {
    let conn = rustls::ServerConnection::new(cfg).expect("conn");
    let mut s = rustls::StreamOwned::new(conn, sock);
    let req = read_request(&mut s);
    s.write_all(&response_for(&req, "")).expect("101");
    s.flush().expect("flush");
    s
}

/// Writes `count` binary frames of 300 bytes, each starting with its index (from `first`,
/// 8 bytes little-endian): what `Feedcheck { size: 300, .. }` checks.
fn write_indexed<W: Write>(s: &mut W, first: u64, count: u64) {
    for i in first..first + count {
        let mut data = vec![0u8; 300];
        data[..8].copy_from_slice(&i.to_le_bytes());
        s.write_all(&ws_engine::server::frame(
            ws_engine::frame::OpCode::Binary,
            &data,
        ))
        .expect("frame");
    }
}

/// Sends a close (1000), then waits for the client's answer (or its end).
fn close_and_wait<S: Read + Write>(s: &mut S) {
    s.write_all(&ws_engine::server::frame(
        ws_engine::frame::OpCode::Close,
        &1000u16.to_be_bytes(),
    ))
    .expect("close");
    s.flush().expect("flush");
    let mut tmp = [0u8; 256];
    let _ = s.read(&mut tmp);
}

/// The server sends TLS 1.3 KeyUpdates (asking for ours) between batches: the client
/// switches its receive keys at the right record, answers with its own KeyUpdate and
/// sends under the new keys (the server decrypts the client's reply).
#[test]
fn key_update_mid_stream_rekeys_both_directions() {
    const PER: u64 = 150;
    const ROUNDS: u64 = 4;
    let ca = TestCa::new().expect("CA");
    let server_cfg = ca
        .server_cert(&NAMES, Validity::Current)
        .expect("cert")
        .server_config(&[&rustls::version::TLS13], None)
        .expect("cfg");
    let (l, url) = listen();
    let srv = std::thread::spawn(move || -> String {
        let (tcp, _) = l.accept().expect("accept");
        let mut s = tls_upgrade(server_cfg, tcp);
        for round in 0..ROUNDS {
            write_indexed(&mut s, round * PER, PER);
            s.flush().expect("flush");
            s.conn.refresh_traffic_keys().expect("key update");
        }
        s.flush().expect("flush");
        // The client's reply, sent under its updated keys.
        let mut dec = ws_engine::decoder::Decoder::new_server(ws_engine::Limits::default());
        let mut buf = Vec::new();
        let text = loop {
            if let Ok(ws_engine::decoder::Decoded::Frame {
                event: Some(ws_engine::decoder::Event::Message { data, .. }),
                ..
            }) = dec.decode(&mut buf)
            {
                break String::from_utf8_lossy(data).to_string();
            }
            let mut tmp = [0u8; 4096];
            let n = s.read(&mut tmp).expect("client reply");
            assert!(n > 0, "client closed before replying");
            buf.extend_from_slice(&tmp[..n]);
        };
        close_and_wait(&mut s);
        text
    });
    struct Reply(Feedcheck);
    impl Handler for Reply {
        fn on_message(&mut self, conn: &mut ConnCtx<'_>, msg: Message<'_>) {
            self.0.on_message(conn, msg);
            if self.0.n == PER * ROUNDS {
                conn.send_text(&format!("got {}", self.0.n)).expect("send");
            }
        }
        fn on_error(&mut self, id: ConnId, err: &ConnError) {
            self.0.on_error(id, err);
        }
        fn on_closed(&mut self, id: ConnId, info: &CloseInfo) {
            self.0.on_closed(id, info);
        }
    }
    let mut el = EventLoop::new(LoopConfig::default()).expect("loop");
    el.connect(&url, &client_cfg(&ca, "keyupdate", false))
        .expect("connect");
    let mut h = Reply(Feedcheck {
        size: 300,
        ..Default::default()
    });
    run_until_done(&mut el, &mut h);
    let reply = srv.join().expect("server");
    assert!(h.0.errors.is_empty(), "{:?}", h.0.errors);
    assert_eq!(h.0.n, PER * ROUNDS);
    assert!(
        h.0.bad.is_empty(),
        "{:?}",
        &h.0.bad[..h.0.bad.len().min(10)]
    );
    assert_eq!(reply, format!("got {}", PER * ROUNDS));
    assert!(h.0.closed.expect("closed").clean);
}

/// A TCP stream that counts the bytes written to it.
struct Counting {
    tcp: std::net::TcpStream,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.tcp.write(buf)?;
        self.written
            .fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Userspace TLS stream offsets are socket (ciphertext) bytes: when the last message
/// arrives and the server has written nothing after it, `read_end` equals every byte the
/// server wrote on TCP (handshake, tickets, 101 response, records).
#[test]
fn userspace_read_end_counts_ciphertext_socket_bytes() {
    const N: u64 = 500;
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let ca = TestCa::new().expect("CA");
        let server_cfg = ca
            .server_cert(&NAMES, Validity::Current)
            .expect("cert")
            .server_config(&[versions], None)
            .expect("cfg");
        let (l, url) = listen();
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let w = written.clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let srv = std::thread::spawn(move || -> u64 {
            let (tcp, _) = l.accept().expect("accept");
            tcp.set_nodelay(true).expect("nodelay");
            tcp.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut s = tls_upgrade_over(server_cfg, Counting { tcp, written: w });
            write_indexed(&mut s, 0, N);
            s.flush().expect("flush");
            let total = s.sock.written.load(std::sync::atomic::Ordering::SeqCst);
            // Hold everything else back until the client has seen the last message.
            let _ = rx.recv();
            close_and_wait(&mut s);
            total
        });
        struct Last(Feedcheck, Option<std::sync::mpsc::Sender<()>>);
        impl Handler for Last {
            fn on_message(&mut self, conn: &mut ConnCtx<'_>, msg: Message<'_>) {
                self.0.on_message(conn, msg);
                if self.0.n == N
                    && let Some(tx) = self.1.take()
                {
                    // The server writes nothing more until this.
                    let _ = tx.send(());
                }
            }
            fn on_error(&mut self, id: ConnId, err: &ConnError) {
                self.0.on_error(id, err);
            }
        }
        let cfg = client_cfg(&ca, "offsets", false);
        let mut el = EventLoop::new(LoopConfig::default()).expect("loop");
        el.connect(&url, &cfg).expect("connect");
        let mut h = Last(
            Feedcheck {
                size: 300,
                ..Default::default()
            },
            Some(tx),
        );
        run_until_done(&mut el, &mut h);
        let total = srv.join().expect("server");
        assert_eq!(h.0.n, N);
        assert!(h.0.bad.is_empty());
        let last = h.0.probes.last().expect("probes");
        assert_eq!(last.tls_path, TlsPath::Userspace as u8);
        assert_eq!(last.read_end, total, "{versions:?}");
        assert_eq!(last.stream_end, last.read_end);
        check_probes(&h.0.probes, TlsPath::Userspace);
    }
}

/// kTLS: runs only where the kernel has the `tls` ULP.
#[test]
fn ktls_path_streams_a_feed() {
    if let Err(why) = ktls_probe() {
        eprintln!("SKIPPED: kTLS path not testable on this kernel: {why}");
        return;
    }
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (_, info) = stream_feed(&[versions], None, 2000, 1000, 1 << 20, true);
        assert_eq!(info.path, TlsPath::Ktls, "{info:?}");
    }
}

// ---- Python websockets over TLS (OpenSSL) ----

/// The server script's `handler(ws)` and `main()` (see `python_server_script`): TLS with
/// the certificate and key in `argv[1]`, `argv[2]`, at most TLS `argv[3]`.
const PY_SERVER: &str = r#"
import ssl

cert, key, maxver = sys.argv[1], sys.argv[2], sys.argv[3]

async def handler(ws):
    start = await ws.recv()
    n = int(start.split()[1])
    for i in range(n):
        await ws.send(payload(i))
        if i % 100 == 0:
            echo = await ws.recv()
            if echo != f"echo {i}":
                await ws.close(4001, "bad echo")
                return
    reply = await ws.recv()
    await ws.close(1000 if reply == f"got {n}" else 4000, "done")

async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if maxver == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    async with serve(handler, "127.0.0.1", 0, ssl=ctx, max_size=None, compression=None) as server:
"#;

const PY_SIZES: [usize; 9] = [0, 1, 64, 125, 126, 1000, 16384, 65536, 100000];
const PY_N: usize = 800;

fn python_over_tls(maxver: &str) {
    if !have_python("ssl, websockets.asyncio.server") {
        return;
    }
    let ca = TestCa::new().expect("CA");
    let cert = ca.server_cert(&NAMES, Validity::Current).expect("cert");
    let (cp, kp) = (
        temp_path(&format!("py{maxver}-cert.pem")),
        temp_path(&format!("py{maxver}-key.pem")),
    );
    cert.write_pem(&cp, &kp).expect("pem");
    let (child, port) = start_python_server(
        &python_server_script(&PY_SIZES, PY_SERVER),
        &[cp.as_os_str(), kp.as_os_str(), maxver.as_ref()],
    );
    let mut el = EventLoop::new(LoopConfig::default()).expect("loop");
    let id = el
        .connect(
            &format!("wss://localhost:{port}/"),
            &client_cfg(&ca, "py", false),
        )
        .expect("connect");
    let info = el.tls_info(id).expect("info");
    assert_eq!(
        info.version,
        if maxver == "1.2" {
            "TLSv1.2"
        } else {
            "TLSv1.3"
        }
    );
    assert_eq!(info.alpn.as_deref(), Some("http/1.1"));
    let mut h = MixedCheck::new(&PY_SIZES, PY_N, Some(100));
    run_until_done(&mut el, &mut h);
    drop(child);
    h.assert_complete();
}

#[test]
fn python_websockets_over_tls13() {
    python_over_tls("1.3");
}

#[test]
fn python_websockets_over_tls12() {
    python_over_tls("1.2");
}
