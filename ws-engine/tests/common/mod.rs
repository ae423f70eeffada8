//! Test support: scripted raw-TCP WebSocket peers on 127.0.0.1 and a collecting handler.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ws_engine::decoder::{Decoded, Decoder, Event, Limits, OwnedEvent};
use ws_engine::frame::{MAX_HEADER, OpCode, encode_header};
use ws_engine::handshake::accept_key;
use ws_engine::{
    CloseInfo, ConnConfig, ConnCtx, ConnError, ConnId, EventLoop, Handler, LoopConfig, Message,
    MsgKind, MsgProbe,
};

/// Starts a one-connection server running `script`; returns its ws:// URL.
pub fn serve_one<F>(script: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(TcpStream) + Send + 'static,
{
    serve_one_with(None, script)
}

/// Like [`serve_one`], with the accepted socket's `SO_RCVBUF` fixed (no autotuning).
pub fn serve_one_with<F>(rcvbuf: Option<usize>, script: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(TcpStream) + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    if let Some(size) = rcvbuf {
        let v = size as libc::c_int;
        // SAFETY: valid fd and option value; accepted sockets inherit it.
        let r = unsafe {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
    }
    let url = format!("ws://{}/test", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        script(s);
    });
    (url, h)
}

/// Starts a server accepting `n` connections, each running `script` on its own thread.
pub fn serve_many<F>(n: usize, script: F) -> (String, JoinHandle<()>)
where
    F: Fn(TcpStream) + Send + Sync + Clone + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/test", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut hs = Vec::new();
        for _ in 0..n {
            let (s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let f = script.clone();
            hs.push(std::thread::spawn(move || f(s)));
        }
        for h in hs {
            h.join().unwrap();
        }
    });
    (url, h)
}

/// Reads the request head; returns it.
pub fn read_request(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).unwrap();
        assert!(n == 1, "client closed during request");
        buf.push(b[0]);
    }
    String::from_utf8(buf).unwrap()
}

/// The request's `Sec-WebSocket-Key`.
pub fn request_key(req: &str) -> String {
    req.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .expect("key header")
}

/// A 101 response for a request.
pub fn response_for(req: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
        accept_key(&request_key(req))
    )
    .into_bytes()
}

/// Reads the request and answers 101; returns the bytes of the response.
pub fn accept(s: &mut TcpStream) -> usize {
    let req = read_request(s);
    let r = response_for(&req, "");
    s.write_all(&r).unwrap();
    r.len()
}

/// An unmasked (server) frame.
pub fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; MAX_HEADER];
    let n = encode_header(&mut h, fin, op, payload.len(), None);
    let mut v = h[..n].to_vec();
    v.extend_from_slice(payload);
    v
}

/// Reads client frames from `s` until one event (message/ping/pong/close) is complete.
/// Checks that every client frame is masked.
pub struct ClientReader {
    dec: Decoder,
    buf: Vec<u8>,
}

impl Default for ClientReader {
    fn default() -> Self {
        ClientReader {
            dec: Decoder::new_server(Limits {
                max_frame: 64 << 20,
                max_message: 64 << 20,
            }),
            buf: Vec::new(),
        }
    }
}

impl ClientReader {
    /// Next event, or `None` at end of stream.
    pub fn next(&mut self, s: &mut TcpStream) -> Option<OwnedEvent> {
        loop {
            if self.buf.len() >= 2 {
                assert!(self.buf[1] & 0x80 != 0, "client frame not masked");
            }
            match self
                .dec
                .decode(&mut self.buf)
                .expect("client sent a bad frame")
            {
                Decoded::Frame { consumed, event } => {
                    let ev = event.as_ref().map(OwnedEvent::from);
                    self.buf.drain(..consumed);
                    if ev.is_some() {
                        return ev;
                    }
                    continue;
                }
                Decoded::NeedMore { .. } => {}
            }
            let mut tmp = [0u8; 65536];
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }
}

/// Makes the next close of `s` send an RST.
pub fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option struct.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

/// Short name of an error, for assertions.
pub fn classify(e: &ConnError) -> String {
    match e {
        ConnError::Protocol { code, .. } => format!("Protocol:{code}"),
        ConnError::Reset { pending } => format!("Reset:{pending}"),
        ConnError::PeerClosed { pending, .. } => format!("PeerClosed:{pending}"),
        ConnError::Stalled(_) => "Stalled".into(),
        ConnError::CloseTimeout(_) => "CloseTimeout".into(),
        ConnError::Handshake(h) => format!("Handshake:{h:?}"),
        other => format!("{other:?}"),
    }
}

/// Collects everything a connection reports.
#[derive(Default)]
pub struct Collect {
    pub msgs: Vec<(MsgKind, Vec<u8>)>,
    pub probes: Vec<MsgProbe>,
    pub callback_done: Vec<u64>,
    pub pings: Vec<Vec<u8>>,
    pub pongs: Vec<Vec<u8>>,
    pub close_frames: Vec<(Option<u16>, String)>,
    pub errors: Vec<(String, String)>,
    pub closed: Vec<(ConnId, CloseInfo)>,
    pub established: usize,
    pub writable: usize,
    /// Echo every message back.
    pub echo: bool,
    /// Close after this many messages.
    pub close_after: Option<usize>,
}

impl Handler for Collect {
    fn on_message(&mut self, conn: &mut ConnCtx<'_>, msg: Message<'_>) {
        self.msgs.push((msg.kind, msg.data.to_vec()));
        self.probes.push(*msg.probe);
        if self.echo {
            conn.send(msg.kind, msg.data).unwrap();
        }
        if self.close_after == Some(self.msgs.len()) {
            conn.close(1000, "bye").unwrap();
        }
    }
    fn on_established(&mut self, _conn: &mut ConnCtx<'_>) {
        self.established += 1;
    }
    fn on_closed(&mut self, id: ConnId, info: &CloseInfo) {
        self.closed.push((id, info.clone()));
    }
    fn on_error(&mut self, _id: ConnId, err: &ConnError) {
        self.errors.push((classify(err), err.to_string()));
    }
    fn on_ping(&mut self, _conn: &mut ConnCtx<'_>, payload: &[u8]) {
        self.pings.push(payload.to_vec());
    }
    fn on_writable(&mut self, _conn: &mut ConnCtx<'_>) {
        self.writable += 1;
    }
    fn on_pong(&mut self, _conn: &mut ConnCtx<'_>, payload: &[u8]) {
        self.pongs.push(payload.to_vec());
    }
    fn on_close_frame(&mut self, _conn: &mut ConnCtx<'_>, code: Option<u16>, reason: &str) {
        self.close_frames.push((code, reason.to_string()));
    }
}

/// Runs the loop until every connection ended; panics (never hangs) after 30 s.
pub fn run_until_done<H: Handler>(el: &mut EventLoop, h: &mut H) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !el.is_empty() {
        assert!(
            Instant::now() < deadline,
            "event loop still busy after 30 s"
        );
        el.poll(h, Some(Duration::from_millis(50))).unwrap();
    }
}

/// Connects one client with `cfg`, runs it to the end, returns what it saw.
pub fn run_client(url: &str, cfg: &ConnConfig, mut h: Collect) -> Collect {
    let mut el = EventLoop::new(LoopConfig {
        stamp_log_capacity: 1 << 16,
        ..LoopConfig::default()
    })
    .unwrap();
    el.connect(url, cfg).unwrap();
    run_until_done(&mut el, &mut h);
    h.callback_done = el
        .stamp_log()
        .records()
        .iter()
        .map(|r| r.callback_done_ns)
        .collect();
    h
}

/// Whether an event is a close with this code.
pub fn is_close(ev: &Option<OwnedEvent>, code: u16) -> bool {
    matches!(ev, Some(OwnedEvent::Close(Some(c), _)) if *c == code)
}

/// Drops a reference to `Event` so the import is used in every test binary.
pub fn _unused(_: Option<Event<'_>>) {}
