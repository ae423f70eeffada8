//! One connection: handshake, the receive path (transport → ring → decoder → callback
//! through the probe function, stamped at each stage), the send path (masked frames,
//! write buffering, EAGAIN) and the close handshake.

use std::io;
use std::time::Duration;

use ws_abi::{ABI_VERSION, MsgProbe, MsgStamps};

use crate::callback::{
    CallbackKind, ConnCtx, ConnId, Handler, Message, current_profiler, invoke, record_message,
    stamps_to_ns,
};
use crate::clock::Clock;
use crate::decoder::{Decoded, Decoder, Event, Limits, MsgKind};
use crate::frame::{self, MAX_HEADER, OpCode, ProtocolError, close_code};
use crate::handshake::{ClientHandshake, HandshakeError, HandshakeOptions, WsUrl};
use crate::mask::copy_masked;
use crate::probe::{attached as probe_attached, call_through_probe, ws_engine_message_done};
use crate::ring::{MirroredRing, RingError};
use crate::stamps::{RawRecord, StampLog};
use crate::tls::{TlsError, TlsInfo, TlsOptions, TlsTransport};
use crate::transport::{RecvStamps, TcpTransport, Transport, TransportError, sock_cookie, wait_fd};

/// Per-connection settings.
#[derive(Clone, Debug)]
pub struct ConnConfig {
    /// Initial receive ring size (default 1 MiB, rounded up to a power of two ≥ 64 KiB).
    /// Bigger rings mean fewer, larger reads under load. The ring grows
    /// when a single frame needs more.
    pub ring_capacity: usize,
    /// Frame and message size limits.
    pub limits: Limits,
    /// Subprotocols and extra headers of the handshake.
    pub handshake: HandshakeOptions,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of the whole opening handshake (for `wss://`, the TLS handshake and the
    /// HTTP upgrade each get this long).
    pub handshake_timeout: Duration,
    /// Fail the connection when nothing arrives for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// How long to wait for the peer's close frame / TCP close after sending a close.
    pub close_timeout: Duration,
    /// Answer pings automatically.
    pub auto_pong: bool,
    /// Sends fail with [`SendError::BufferFull`] beyond this many queued bytes.
    pub max_write_buffer: usize,
    /// TLS settings of `wss://` connections (trust anchors, CA file, kTLS).
    pub tls: TlsOptions,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            ring_capacity: 1 << 20,
            limits: Limits::default(),
            handshake: HandshakeOptions::default(),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: None,
            close_timeout: Duration::from_secs(2),
            auto_pong: true,
            max_write_buffer: 128 << 20,
            tls: TlsOptions::default(),
        }
    }
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// URL or opening handshake.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// Resolving / connecting.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// TLS: configuration, handshake (certificates) or a bad record.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The receive ring could not be created or grown.
    #[error("receive ring: {0}")]
    Ring(#[from] RingError),
    /// The peer violated RFC 6455; the engine sent a close frame with `code`.
    #[error("protocol error from peer: {error} (sent close {code})")]
    Protocol {
        /// What was wrong.
        error: ProtocolError,
        /// Close code sent.
        code: u16,
    },
    /// The peer reset the TCP connection.
    #[error("connection reset by peer ({pending} bytes of an incomplete frame pending)")]
    Reset {
        /// Bytes of an incomplete frame in the ring.
        pending: usize,
    },
    /// The peer closed TCP without the close handshake.
    #[error(
        "peer closed the TCP connection without a close frame ({pending} bytes of an incomplete frame pending{})",
        if *.in_message { ", inside a fragmented message" } else { "" }
    )]
    PeerClosed {
        /// Bytes of an incomplete frame in the ring.
        pending: usize,
        /// Whether a fragmented message was in progress.
        in_message: bool,
    },
    /// Nothing arrived within the idle timeout.
    #[error("peer stalled: no data for {0:?}")]
    Stalled(Duration),
    /// The peer did not answer our close frame in time.
    #[error("peer did not complete the close handshake within {0:?}")]
    CloseTimeout(Duration),
    /// Socket error.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// A close frame was already sent (or the connection failed).
    #[error("connection is closing")]
    Closing,
    /// Control frame payload over 125 bytes.
    #[error("control frame payload of {0} bytes (max 125)")]
    ControlTooLong(usize),
    /// The write buffer limit would be exceeded.
    #[error("write buffer full ({queued} bytes queued, limit {limit})")]
    BufferFull {
        /// Bytes queued.
        queued: usize,
        /// Limit.
        limit: usize,
    },
    /// No such connection.
    #[error("unknown connection")]
    UnknownConn,
    /// The socket failed while writing.
    #[error("write failed: {0}")]
    Io(io::ErrorKind),
}

/// How a connection ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloseInfo {
    /// Close code the peer sent, if it sent a close frame with one.
    pub peer_code: Option<u16>,
    /// Reason the peer sent.
    pub peer_reason: String,
    /// Close code the engine sent, if it sent one.
    pub sent_code: Option<u16>,
    /// Whether the close handshake completed (both close frames exchanged).
    pub clean: bool,
}

/// The send half: transport, write buffer, masking keys.
pub struct Outbound {
    pub(crate) transport: Box<dyn Transport>,
    wbuf: Vec<u8>,
    wpos: usize,
    rng: u64,
    close_sent: bool,
    sent_code: Option<u16>,
    max_write_buffer: usize,
    write_err: Option<io::Error>,
}

impl Outbound {
    fn new(transport: Box<dyn Transport>, max_write_buffer: usize) -> Self {
        let seed = u64::from_ne_bytes(crate::handshake::random_bytes::<8>()) | 1;
        Outbound {
            transport,
            wbuf: Vec::with_capacity(4096),
            wpos: 0,
            rng: seed,
            close_sent: false,
            sent_code: None,
            max_write_buffer,
            write_err: None,
        }
    }

    #[inline]
    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift64*, seeded from getrandom per connection.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32).to_ne_bytes()
    }

    /// Bytes queued and not yet written.
    pub fn buffered(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Whether bytes wait for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        (self.wpos < self.wbuf.len() || self.transport.wants_flush()) && self.write_err.is_none()
    }

    fn push_frame(&mut self, fin: bool, op: OpCode, payload: &[u8]) -> Result<(), SendError> {
        if let Some(e) = &self.write_err {
            return Err(SendError::Io(e.kind()));
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        let queued = self.buffered();
        if queued + payload.len() + MAX_HEADER > self.max_write_buffer {
            return Err(SendError::BufferFull {
                queued,
                limit: self.max_write_buffer,
            });
        }
        let key = self.next_mask();
        let mut hdr = [0u8; MAX_HEADER];
        let hl = frame::encode_header(&mut hdr, fin, op, payload.len(), Some(key));
        self.wbuf.extend_from_slice(&hdr[..hl]);
        let start = self.wbuf.len();
        self.wbuf.resize(start + payload.len(), 0);
        copy_masked(&mut self.wbuf[start..], payload, key);
        self.flush().map_err(|e| SendError::Io(e.kind()))?;
        Ok(())
    }

    /// Writes as much of the queue as the socket takes. `Ok(true)`: all written.
    pub(crate) fn flush(&mut self) -> io::Result<bool> {
        while self.wpos < self.wbuf.len() {
            match self.transport.send(&self.wbuf[self.wpos..]) {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "socket accepted 0 bytes");
                    self.write_err = Some(io::Error::new(e.kind(), e.to_string()));
                    return Err(e);
                }
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.write_err = Some(io::Error::new(e.kind(), e.to_string()));
                    return Err(e);
                }
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        // TLS: records the transport sealed but the socket has not taken yet.
        match self.transport.flush() {
            Ok(done) => Ok(done),
            Err(e) => {
                self.write_err = Some(io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
        }
    }

    pub(crate) fn send_data(&mut self, kind: MsgKind, data: &[u8]) -> Result<(), SendError> {
        if self.close_sent {
            return Err(SendError::Closing);
        }
        let op = match kind {
            MsgKind::Text => OpCode::Text,
            MsgKind::Binary => OpCode::Binary,
        };
        self.push_frame(true, op, data)
    }

    pub(crate) fn send_control(&mut self, op: OpCode, payload: &[u8]) -> Result<(), SendError> {
        if self.close_sent {
            return Err(SendError::Closing);
        }
        if payload.len() > 125 {
            return Err(SendError::ControlTooLong(payload.len()));
        }
        self.push_frame(true, op, payload)
    }

    pub(crate) fn send_close(&mut self, code: Option<u16>, reason: &str) -> Result<(), SendError> {
        if self.close_sent {
            return Err(SendError::Closing);
        }
        let mut body = [0u8; 125];
        let n = match code {
            None => 0,
            Some(c) => {
                // Cut the reason at a char boundary so the payload stays ≤ 125 bytes.
                let mut r = reason.len().min(123);
                while !reason.is_char_boundary(r) {
                    r -= 1;
                }
                body[..2].copy_from_slice(&c.to_be_bytes());
                body[2..2 + r].copy_from_slice(&reason.as_bytes()[..r]);
                2 + r
            }
        };
        self.close_sent = true;
        self.sent_code = code;
        self.push_frame(true, OpCode::Close, &body[..n])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Normal operation.
    Open,
    /// We sent a close; still reading until the peer's close frame.
    Closing,
    /// Close frames exchanged: discard input, wait for TCP close.
    Closed,
    /// We failed the connection (protocol error) and sent a close: discard input.
    Failing,
}

/// What the event loop should do with a connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Keep it.
    Alive,
    /// It ended: report its outcome and drop it.
    Done,
}

/// Text messages of at least this many bytes get a `parsed` stamp of their own even when
/// an earlier message of the same read was just stamped: their UTF-8 validation is long
/// enough to show, and a stamp costs little next to it. (A binary frame's parse is its
/// header whatever its size; a reassembled message always gets its own stamp.)
const FRESH_PARSE_LEN: usize = 1024;

/// Raw stamps of the read being processed.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReadStamps {
    pub event: u64,
    pub recv_start: u64,
    pub recv_end: u64,
    pub decrypt_start: u64,
    /// Socket bytes read so far when the ring's positions are not socket bytes (TLS).
    pub socket_read_end: Option<u64>,
}

/// A live connection.
pub(crate) struct Conn {
    pub id: ConnId,
    ring: MirroredRing,
    dec: Decoder,
    pub out: Outbound,
    probe: MsgProbe,
    state: State,
    info: CloseInfo,
    error: Option<ConnError>,
    pub established_pending: bool,
    pub registered_out: bool,
    hs_stamps: ReadStamps,
    idle_ns: Option<u64>,
    close_timeout: Duration,
    last_rx_ns: u64,
    close_deadline_ns: Option<u64>,
    auto_pong: bool,
    pub subprotocol: Option<String>,
}

impl Conn {
    /// Connects over TCP (and TLS for `wss://`) and performs the opening handshake
    /// (blocking, bounded by the configured timeouts).
    pub fn connect(
        id: ConnId,
        url: &str,
        cfg: &ConnConfig,
        clock: &Clock,
    ) -> Result<Conn, ConnError> {
        let u = WsUrl::parse(url)?;
        let t = TcpTransport::connect(&u.host, u.port, cfg.connect_timeout)?;
        if u.secure {
            let t = TlsTransport::handshake(
                t.into_fd(),
                &u.host,
                &cfg.tls,
                cfg.handshake_timeout,
                *clock,
            )?;
            return Conn::handshake_over(id, Box::new(t), &u, cfg, clock);
        }
        Conn::handshake_over(id, Box::new(t), &u, cfg, clock)
    }

    /// Performs the opening handshake over an already connected transport.
    pub fn handshake_over(
        id: ConnId,
        mut transport: Box<dyn Transport>,
        url: &WsUrl,
        cfg: &ConnConfig,
        clock: &Clock,
    ) -> Result<Conn, ConnError> {
        let hs = ClientHandshake::new(url, &cfg.handshake)?;
        // Asking for the cookie makes the kernel assign it: before the first byte moves,
        // so every kernel event of this socket carries the same key.
        let cookie = sock_cookie(transport.fd());
        let cap = MirroredRing::round_capacity(cfg.ring_capacity.max(64 * 1024));
        let mut ring = MirroredRing::new(cap)?;
        let start = Clock::monotonic_now_ns();
        let deadline = start + cfg.handshake_timeout.as_nanos() as u64;
        let remaining = |now: u64| Duration::from_nanos(deadline.saturating_sub(now));
        let timeout = || HandshakeError::Timeout(cfg.handshake_timeout);
        // Send the request.
        let mut sent = 0;
        while sent < hs.request.len() {
            match transport.send(&hs.request[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let now = Clock::monotonic_now_ns();
                    if now >= deadline
                        || !wait_fd(transport.fd(), libc::POLLOUT, remaining(now))
                            .map_err(HandshakeError::Io)?
                    {
                        return Err(timeout().into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HandshakeError::Io(e).into()),
            }
        }
        // TLS: records sealed but not yet taken by the socket.
        while !transport.flush().map_err(HandshakeError::Io)? {
            let now = Clock::monotonic_now_ns();
            if now >= deadline
                || !wait_fd(transport.fd(), libc::POLLOUT, remaining(now))
                    .map_err(HandshakeError::Io)?
            {
                return Err(timeout().into());
            }
        }
        // Read the response into the ring: bytes after the head are already frames and
        // stay there; the stream offsets count the response head too.
        let mut rs = RecvStamps::default();
        let (resp, head_len, stamps) = loop {
            let now = Clock::monotonic_now_ns();
            if now >= deadline {
                return Err(timeout().into());
            }
            if !transport.has_buffered()
                && !wait_fd(transport.fd(), libc::POLLIN, remaining(now))
                    .map_err(HandshakeError::Io)?
            {
                return Err(timeout().into());
            }
            let recv_start = clock.raw();
            match transport.recv(ring.writable(), &mut rs) {
                Ok(0) => return Err(HandshakeError::Eof(ring.len()).into()),
                Ok(n) => ring.commit(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(io_to_conn(e)),
            }
            let recv_end = clock.raw();
            if let Some((resp, n)) = hs.parse_response(ring.readable())? {
                let st = ReadStamps {
                    event: recv_start,
                    recv_start,
                    recv_end,
                    decrypt_start: rs.decrypt_start,
                    socket_read_end: rs.socket_read_end,
                };
                break (resp, n, st);
            }
        };
        ring.consume(head_len);
        let probe = MsgProbe {
            abi_version: ABI_VERSION,
            fd: {
                use std::os::fd::AsRawFd;
                transport.fd().as_raw_fd()
            },
            conn_id: id.0,
            sock_cookie: cookie,
            clock_error_ns: u32::try_from(clock.calibration().error_ns).unwrap_or(u32::MAX),
            tls_path: transport.tls_path() as u8,
            ..Default::default()
        };
        Ok(Conn {
            id,
            ring,
            dec: Decoder::new(cfg.limits),
            out: Outbound::new(transport, cfg.max_write_buffer),
            probe,
            state: State::Open,
            info: CloseInfo::default(),
            error: None,
            established_pending: true,
            registered_out: false,
            hs_stamps: stamps,
            idle_ns: cfg.idle_timeout.map(|d| d.as_nanos() as u64),
            close_timeout: cfg.close_timeout,
            last_rx_ns: Clock::monotonic_now_ns(),
            close_deadline_ns: None,
            auto_pong: cfg.auto_pong,
            subprotocol: resp.subprotocol,
        })
    }

    /// The kernel's socket cookie.
    pub fn sock_cookie(&self) -> u64 {
        self.probe.sock_cookie
    }

    /// TLS parameters and record path (`None` for `ws://`).
    pub fn tls_info(&self) -> Option<TlsInfo> {
        self.out.transport.tls_info()
    }

    /// Calls `on_established` and handles frames that arrived with the handshake.
    pub fn establish<H: Handler>(
        &mut self,
        h: &mut H,
        clock: &Clock,
        log: &mut StampLog,
    ) -> Status {
        self.established_pending = false;
        {
            let mut ctx = ConnCtx {
                id: self.id,
                out: &mut self.out,
            };
            invoke(CallbackKind::Established, ctx.id, 0, || {
                h.on_established(&mut ctx)
            });
        }
        let st = self.hs_stamps;
        self.process(h, clock, &st, log);
        self.after_io()
    }

    /// Reads everything available and dispatches it.
    #[inline]
    pub fn on_readable<H: Handler>(
        &mut self,
        h: &mut H,
        clock: &Clock,
        event: u64,
        log: &mut StampLog,
    ) -> Status {
        let mut rs = RecvStamps::default();
        loop {
            let free = self.ring.free();
            let recv_start = clock.raw();
            let r = self.out.transport.recv(self.ring.writable(), &mut rs);
            let recv_end = clock.raw();
            match r {
                Ok(0) => {
                    self.on_eof();
                    return Status::Done;
                }
                Ok(n) => {
                    self.ring.commit(n);
                    if self.idle_ns.is_some() {
                        self.last_rx_ns = clock.to_ns(recv_end);
                    }
                    let st = ReadStamps {
                        event,
                        recv_start,
                        recv_end,
                        decrypt_start: rs.decrypt_start,
                        socket_read_end: rs.socket_read_end,
                    };
                    self.process(h, clock, &st, log);
                    if self.error.is_some() && self.state != State::Failing {
                        return Status::Done;
                    }
                    // A short read drained the socket (level-triggered epoll reports
                    // more later), unless the transport holds decrypted bytes.
                    if n < free && !self.out.transport.has_buffered() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.on_reset();
                    return Status::Done;
                }
                Err(e) => {
                    self.fail_io(e);
                    return Status::Done;
                }
            }
        }
        self.after_io()
    }

    /// The socket became writable.
    pub fn on_writable<H: Handler>(&mut self, h: &mut H) -> Status {
        match self.out.flush() {
            Ok(true) => {
                if self.state == State::Open {
                    let mut ctx = ConnCtx {
                        id: self.id,
                        out: &mut self.out,
                    };
                    invoke(CallbackKind::Writable, ctx.id, 0, || {
                        h.on_writable(&mut ctx)
                    });
                }
            }
            Ok(false) => {}
            Err(_) => {}
        }
        self.after_io()
    }

    fn after_io(&mut self) -> Status {
        if let Some(e) = self.out.write_err.take() {
            if self.state == State::Closed || self.state == State::Failing {
                return Status::Done;
            }
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) {
                self.on_reset();
            } else {
                self.fail_io(e);
            }
            return Status::Done;
        }
        if self.error.is_some() && self.state != State::Failing {
            return Status::Done;
        }
        Status::Alive
    }

    fn on_eof(&mut self) {
        match self.state {
            State::Closed | State::Failing => {}
            State::Open | State::Closing => {
                if self.error.is_none() {
                    self.error = Some(ConnError::PeerClosed {
                        pending: self.ring.len(),
                        in_message: self.dec.in_message(),
                    });
                }
            }
        }
    }

    fn on_reset(&mut self) {
        match self.state {
            State::Closed | State::Failing => {}
            State::Open | State::Closing => {
                if self.error.is_none() {
                    self.error = Some(ConnError::Reset {
                        pending: self.ring.len(),
                    });
                }
            }
        }
    }

    fn fail_io(&mut self, e: io::Error) {
        if self.error.is_none() && !matches!(self.state, State::Closed) {
            self.error = Some(io_to_conn(e));
        }
    }

    fn fail_protocol(&mut self, error: ProtocolError, clock: &Clock) {
        let code = error.close_code();
        let reason = match code {
            close_code::INVALID_DATA => "invalid UTF-8",
            close_code::TOO_BIG => "message too big",
            _ => "protocol error",
        };
        // A send failure here surfaces through `write_err`.
        let _ = self.out.send_close(Some(code), reason);
        self.state = State::Failing;
        self.error = Some(ConnError::Protocol { error, code });
        self.close_deadline_ns = Some(clock.now_ns() + self.close_timeout.as_nanos() as u64);
        let n = self.ring.len();
        self.ring.consume(n);
    }

    /// Starts the close handshake from the user's side.
    pub fn close(&mut self, code: u16, reason: &str, clock: &Clock) -> Result<(), SendError> {
        self.out.send_close(Some(code), reason)?;
        if self.state == State::Open {
            self.state = State::Closing;
        }
        self.close_deadline_ns = Some(clock.now_ns() + self.close_timeout.as_nanos() as u64);
        Ok(())
    }

    /// Checks the idle and close timers; `Done` if the connection ended.
    pub fn check_timers(&mut self, now_ns: u64) -> Status {
        // A close sent from inside a callback (`ConnCtx::close`) starts the close handshake
        // and its timer here, as `close` does for closes from outside.
        if self.out.close_sent && self.state == State::Open {
            self.state = State::Closing;
            self.close_deadline_ns = Some(now_ns + self.close_timeout.as_nanos() as u64);
        }
        if let Some(d) = self.close_deadline_ns
            && now_ns >= d
        {
            if self.state == State::Closing {
                self.error = Some(ConnError::CloseTimeout(self.close_timeout));
            }
            return Status::Done;
        }
        if let (Some(idle), State::Open) = (self.idle_ns, self.state)
            && now_ns.saturating_sub(self.last_rx_ns) >= idle
        {
            self.error = Some(ConnError::Stalled(Duration::from_nanos(idle)));
            return Status::Done;
        }
        Status::Alive
    }

    /// Whether the connection has a timer to watch.
    pub fn has_timer(&self) -> bool {
        self.close_deadline_ns.is_some()
            || self.idle_ns.is_some()
            || (self.out.close_sent && self.state == State::Open)
    }

    /// The outcome to report once the connection is done.
    pub fn take_outcome(&mut self) -> (Option<ConnError>, CloseInfo) {
        let mut info = std::mem::take(&mut self.info);
        info.sent_code = self.out.sent_code;
        info.clean = self.state == State::Closed;
        (self.error.take(), info)
    }

    /// Parses and dispatches every complete frame in the ring, then makes their stamp
    /// channel records visible to the tracer (one store for the read's batch).
    #[inline]
    fn process<H: Handler>(
        &mut self,
        h: &mut H,
        clock: &Clock,
        st: &ReadStamps,
        log: &mut StampLog,
    ) {
        self.process_frames(h, clock, st, log);
        log.flush_channel();
    }

    #[inline]
    fn process_frames<H: Handler>(
        &mut self,
        h: &mut H,
        clock: &Clock,
        st: &ReadStamps,
        log: &mut StampLog,
    ) {
        // The last stamp taken while handling this read (the previous callback's end);
        // 0 before the first.
        let mut last = 0u64;
        let profiler = current_profiler();
        loop {
            if matches!(self.state, State::Closed | State::Failing) {
                let n = self.ring.len();
                self.ring.consume(n);
                return;
            }
            let base = self.ring.read_pos();
            let read_end = self.ring.write_pos();
            let cap = self.ring.capacity();
            let Conn {
                ring,
                dec,
                out,
                probe,
                state,
                info,
                id,
                auto_pong,
                ..
            } = self;
            let err = match dec.decode(ring.readable_mut()) {
                Ok(Decoded::NeedMore { total }) => {
                    if total > cap
                        && let Err(e) = self.ring.grow(total)
                    {
                        self.error = Some(ConnError::Ring(e));
                    }
                    return;
                }
                Ok(Decoded::Frame { consumed, event }) => {
                    let mut close_now = false;
                    if !matches!(event, Some(Event::Message { .. })) {
                        // A fragment copied, a pong sent: time passed since the last stamp.
                        last = 0;
                    }
                    match event {
                        None => {}
                        Some(Event::Message { kind, data }) => {
                            // One clock read per message: the callback's end, which is
                            // also the next message's parse and callback start
                            // (docs/hot-path.md), unless a uprobe is on the probe sites:
                            // then every stamp is taken as it happens and converted for
                            // the uprobes. A tracer reading the stamp channel gets the
                            // same raw stamps, converted when the record is written (only
                            // for the messages in its sample: aggregate mode may sample).
                            let traced = probe_attached();
                            // (`last` is 0 after a continuation fragment, so a reassembled
                            // message always gets its own stamp.)
                            let parsed = if traced
                                || last == 0
                                || (kind == MsgKind::Text && data.len() >= FRESH_PARSE_LEN)
                            {
                                clock.raw()
                            } else {
                                last
                            };
                            match st.socket_read_end {
                                // Userspace TLS: ciphertext socket bytes; the message
                                // resolves to the read that completed it.
                                Some(sock) => {
                                    probe.stream_end = sock;
                                    probe.read_end = sock;
                                }
                                None => {
                                    probe.stream_end = base + consumed as u64;
                                    probe.read_end = read_end;
                                }
                            }
                            probe.len = data.len() as u64;
                            probe.opcode = kind.opcode();
                            probe.stamps = MsgStamps {
                                event_ns: st.event,
                                recv_start_ns: st.recv_start,
                                recv_end_ns: st.recv_end,
                                decrypt_start_ns: st.decrypt_start,
                                parsed_ns: parsed,
                                callback_ns: parsed,
                            };
                            let mut called = parsed;
                            if traced {
                                called = clock.raw();
                                probe.stamps.callback_ns = called;
                                probe.stamps = stamps_to_ns(clock, &probe.stamps);
                            }
                            let mut ctx = ConnCtx { id: *id, out };
                            // Traced: stamped inside the probe function, so its uprobe is
                            // before `start`, not inside the callback's time.
                            let (mut start, mut done) = (parsed, 0);
                            call_through_probe(probe, &mut |p: &MsgProbe| {
                                if traced {
                                    start = clock.raw();
                                }
                                h.on_message(
                                    &mut ctx,
                                    Message {
                                        kind,
                                        data,
                                        probe: p,
                                        clock,
                                        raw: !traced,
                                    },
                                );
                                done = clock.raw();
                            });
                            last = done;
                            if traced {
                                let (start_ns, done_ns) = (clock.to_ns(start), clock.to_ns(done));
                                ws_engine_message_done(probe.msg_seq, start_ns, done_ns);
                                // Stamp channel hook (crate::channel): the record, in ns.
                                log.publish(probe, start_ns, done_ns);
                            } else {
                                // Nobody listens: the site is a nop and a return.
                                ws_engine_message_done(probe.msg_seq, start, done);
                                // Stamp channel hook: one relaxed load while no tracer
                                // holds the ring; else the record, converted as written.
                                log.publish_raw(probe, clock, start, done);
                            }
                            record_message(profiler.as_ref(), clock, *id, data.len(), start, done);
                            if log.enabled() {
                                log.push(RawRecord {
                                    conn_id: probe.conn_id,
                                    msg_seq: probe.msg_seq,
                                    len: probe.len,
                                    stream_end: probe.stream_end,
                                    stamps: MsgStamps {
                                        event_ns: st.event,
                                        recv_start_ns: st.recv_start,
                                        recv_end_ns: st.recv_end,
                                        decrypt_start_ns: st.decrypt_start,
                                        parsed_ns: parsed,
                                        callback_ns: called,
                                    },
                                    callback_done: done,
                                });
                            }
                            probe.msg_seq += 1;
                        }
                        Some(Event::Ping(p)) => {
                            if *auto_pong && !out.close_sent {
                                // A failed pong surfaces through `write_err`.
                                let _ = out.send_control(OpCode::Pong, p);
                            }
                            let mut ctx = ConnCtx { id: *id, out };
                            invoke(CallbackKind::Ping, *id, p.len(), || h.on_ping(&mut ctx, p));
                        }
                        Some(Event::Pong(p)) => {
                            let mut ctx = ConnCtx { id: *id, out };
                            invoke(CallbackKind::Pong, *id, p.len(), || h.on_pong(&mut ctx, p));
                        }
                        Some(Event::Close { code, reason }) => {
                            info.peer_code = code;
                            info.peer_reason = reason.to_string();
                            {
                                let mut ctx = ConnCtx { id: *id, out };
                                invoke(CallbackKind::CloseFrame, *id, reason.len(), || {
                                    h.on_close_frame(&mut ctx, code, reason)
                                });
                            }
                            if !out.close_sent {
                                let _ = out.send_close(code, "");
                            }
                            *state = State::Closed;
                            close_now = true;
                        }
                    }
                    ring.consume(consumed);
                    if close_now {
                        self.close_deadline_ns =
                            Some(clock.now_ns() + self.close_timeout.as_nanos() as u64);
                    }
                    continue;
                }
                Err(e) => e,
            };
            self.fail_protocol(err, clock);
            return;
        }
    }
}

/// A transport error as a connection error: TLS record errors keep their type.
fn io_to_conn(e: io::Error) -> ConnError {
    if e.get_ref().is_some_and(|i| i.is::<TlsError>()) {
        match e.into_inner().map(|b| b.downcast::<TlsError>()) {
            Some(Ok(t)) => return ConnError::Tls(*t),
            Some(Err(other)) => return ConnError::Io(io::Error::other(other)),
            None => return ConnError::Io(io::Error::other("transport error")),
        }
    }
    ConnError::Io(e)
}
