//! Test support: scripted raw-TCP WebSocket peers on 127.0.0.1, a collecting handler, and
//! Python `websockets` servers sending the mixed feed.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
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
pub fn read_request<S: Read>(s: &mut S) -> String {
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
    /// The stamp log as the engine took it (raw clock stamps).
    pub raw_log: Vec<ws_engine::stamps::RawRecord>,
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
        self.probes.push(msg.probe());
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
    h.raw_log = el.stamp_log().raw_records().to_vec();
    h
}

/// Whether an event is a close with this code.
pub fn is_close(ev: &Option<OwnedEvent>, code: u16) -> bool {
    matches!(ev, Some(OwnedEvent::Close(Some(c), _)) if *c == code)
}

// ---- Python `websockets` servers ----

/// A child process, killed (and waited for) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `python3` can `import {modules}`. Without it the caller skips (this says so),
/// except when `CI=true`, where this panics.
pub fn have_python(modules: &str) -> bool {
    let have = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("python3 with websockets is not available and CI=true: run `cargo xtask setup`");
        }
        eprintln!("SKIPPED: python3 with websockets not available (pip install websockets)");
    }
    have
}

const PY_HEAD: &str = r#"
import asyncio, sys
from websockets.asyncio.server import serve

"#;

const PY_PAYLOAD: &str = r#"
def payload(i):
    size = SIZES[(i * 7) % len(SIZES)]
    if i % 3 == 0:
        return bytes([i % 256]) * size
    return "\u00e9" * (size // 2) + "a" * (size % 2)
"#;

const PY_SERVE: &str = r#"        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        try:
            await asyncio.wait_for(server.serve_forever(), 120)
        except asyncio.TimeoutError:
            pass

asyncio.run(main())
"#;

/// A Python `websockets` server script: `payload(i)` is [`mixed_message`]`(sizes, i)`;
/// `body` defines `handler(ws)` and `main()`, and ends in `main()`'s
/// `async with serve(...) as server:` line. The server prints `PORT n` once listening
/// and serves for at most 120 s.
pub fn python_server_script(sizes: &[usize], body: &str) -> String {
    format!("{PY_HEAD}SIZES = {sizes:?}\n{PY_PAYLOAD}{body}{PY_SERVE}")
}

/// Starts `python3 -c script args...` and waits for the port it reports.
pub fn start_python_server(script: &str, args: &[&OsStr]) -> (KillOnDrop, u16) {
    let mut child = KillOnDrop(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3"),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port line");
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("server did not report its port: {line:?}"));
    (child, port)
}

/// Message `i` of the mixed feed: `sizes[(i * 7) % len]` bytes, binary `i % 256` when
/// `i % 3 == 0`, else text of `é`s (and an `a` for an odd size).
pub fn mixed_message(sizes: &[usize], i: usize) -> (MsgKind, Vec<u8>) {
    let size = sizes[(i * 7) % sizes.len()];
    if i.is_multiple_of(3) {
        (MsgKind::Binary, vec![(i % 256) as u8; size])
    } else {
        let s = "é".repeat(size / 2) + &"a".repeat(size % 2);
        (MsgKind::Text, s.into_bytes())
    }
}

/// Checks the mixed feed from a Python server: asks for `total` messages ("start N"),
/// compares each with [`mixed_message`], echoes every `echo_every`-th ("echo i") when set,
/// and says "got N" after the last.
pub struct MixedCheck {
    sizes: &'static [usize],
    total: usize,
    echo_every: Option<usize>,
    pub n: usize,
    pub bad: Vec<usize>,
    pub errors: Vec<String>,
    pub closed: Option<CloseInfo>,
}

impl MixedCheck {
    pub fn new(sizes: &'static [usize], total: usize, echo_every: Option<usize>) -> Self {
        MixedCheck {
            sizes,
            total,
            echo_every,
            n: 0,
            bad: Vec::new(),
            errors: Vec::new(),
            closed: None,
        }
    }

    /// Asserts that all `total` messages came intact without an error and that the peer
    /// closed cleanly with 1000; returns the close.
    pub fn assert_complete(self) -> CloseInfo {
        assert!(self.errors.is_empty(), "{:?}", self.errors);
        assert_eq!(self.n, self.total);
        assert!(
            self.bad.is_empty(),
            "messages differing: {:?}",
            &self.bad[..self.bad.len().min(20)]
        );
        let closed = self.closed.expect("closed");
        assert_eq!(closed.peer_code, Some(1000), "{closed:?}");
        assert!(closed.clean, "{closed:?}");
        closed
    }
}

impl Handler for MixedCheck {
    fn on_established(&mut self, conn: &mut ConnCtx<'_>) {
        conn.send_text(&format!("start {}", self.total))
            .expect("send");
    }
    fn on_message(&mut self, conn: &mut ConnCtx<'_>, msg: Message<'_>) {
        let (kind, data) = mixed_message(self.sizes, self.n);
        if msg.kind != kind || msg.data != data.as_slice() {
            self.bad.push(self.n);
        }
        if self.echo_every.is_some_and(|k| self.n.is_multiple_of(k)) {
            conn.send_text(&format!("echo {}", self.n)).expect("send");
        }
        self.n += 1;
        if self.n == self.total {
            conn.send_text(&format!("got {}", self.total))
                .expect("send");
        }
    }
    fn on_error(&mut self, _id: ConnId, err: &ConnError) {
        self.errors.push(format!("{}: {err}", classify(err)));
    }
    fn on_closed(&mut self, _id: ConnId, info: &CloseInfo) {
        self.closed = Some(info.clone());
    }
}

/// Drops a reference to `Event` so the import is used in every test binary.
pub fn _unused(_: Option<Event<'_>>) {}
