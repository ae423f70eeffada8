//! One client of the feed: its upgrade (and TLS handshake), its outgoing queue, and the few
//! frames a client may send (close, ping; anything else is read and dropped).
//!
//! Output is queued in user space and written without blocking: a client that reads slowly
//! makes its queue grow (its messages go out late), never the feed wait. TLS records are
//! made by rustls into the same queue, so plain and TLS connections are written alike and
//! the queue's byte offsets say exactly when each batch of messages has reached the kernel.
use std::{
    collections::VecDeque,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use hdrhistogram::Histogram;
use ws_engine::{
    frame::{MAX_HEADER, OpCode, Parsed, encode_header, parse_header},
    handshake::accept_key,
};

/// How long a client has for its TLS handshake and upgrade request.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest upgrade request head accepted.
const MAX_REQUEST: usize = 16 * 1024;

/// Why a client's handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or timed out.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The request was no WebSocket upgrade (answered with 400).
    #[error("not a WebSocket upgrade: {0}")]
    NotUpgrade(String),
}

/// A client whose upgrade is complete, ready for the feed.
pub(super) struct Upgraded {
    pub sock: TcpStream,
    pub tls: Option<rustls::ServerConnection>,
    pub peer: SocketAddr,
}

/// Checks the upgrade request head; returns its `Sec-WebSocket-Key`.
fn upgrade_key(head: &str) -> Result<String, String> {
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default();
    if !request.starts_with("GET ") {
        return Err(format!("request line {request:?}"));
    }
    let mut key = None;
    let mut upgrade = false;
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let value = value.trim();
        if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        }
    }
    if !upgrade {
        return Err("no `Upgrade: websocket` header".into());
    }
    key.ok_or_else(|| "no Sec-WebSocket-Key header".into())
}

/// Reads the request head byte by byte (nothing past the blank line is consumed), checks
/// it and answers 101, or 400 when it is no upgrade.
fn upgrade<S: Read + Write>(s: &mut S) -> Result<(), HandshakeError> {
    let mut head = Vec::with_capacity(512);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > MAX_REQUEST {
            return Err(HandshakeError::NotUpgrade(
                "request head over 16 KiB".into(),
            ));
        }
        if s.read(&mut b)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed during the upgrade",
            )
            .into());
        }
        head.push(b[0]);
    }
    match upgrade_key(&String::from_utf8_lossy(&head)) {
        Ok(key) => {
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_key(&key)
            );
            s.write_all(response.as_bytes())?;
            s.flush()?;
            Ok(())
        }
        Err(why) => {
            let body = "ws-trace feed serves WebSocket clients only\n";
            let response = format!(
                "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(response.as_bytes()).and_then(|()| s.flush());
            Err(HandshakeError::NotUpgrade(why))
        }
    }
}

/// Completes the TLS handshake (with `tls`) and the WebSocket upgrade on `sock`, blocking
/// for at most [`HANDSHAKE_TIMEOUT`] per read or write.
pub(super) fn handshake(
    sock: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Upgraded, HandshakeError> {
    sock.set_nonblocking(false)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    sock.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut sock = sock;
    let tls = match tls {
        Some(config) => {
            let mut conn = rustls::ServerConnection::new(config)?;
            // The feed's queue holds what rustls makes; rustls itself holds nothing back.
            conn.set_buffer_limit(None);
            upgrade(&mut rustls::Stream::new(&mut conn, &mut sock))?;
            Some(conn)
        }
        None => {
            upgrade(&mut sock)?;
            None
        }
    };
    sock.set_read_timeout(None)?;
    sock.set_write_timeout(None)?;
    sock.set_nonblocking(true)?;
    Ok(Upgraded { sock, tls, peer })
}

/// Messages queued together (one tick's burst, or a catch-up) and due at the same time.
struct Batch {
    /// Queue offset just past their last byte.
    end: u64,
    due_ns: u64,
    messages: u64,
    /// Their WebSocket frame bytes.
    bytes: u64,
}

/// How a client's part of the feed ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// Still being served.
    Open,
    /// Got everything queued for it and the closing frame.
    Complete,
    /// Went away first (the reason).
    Left(String),
    /// Its queue grew past the limit; the feed hung up.
    Dropped(String),
    /// The feed ended (drain timeout) with bytes still queued for it.
    Cut(String),
}

/// A client being fed.
pub(super) struct Client {
    pub peer: SocketAddr,
    sock: TcpStream,
    tls: Option<rustls::ServerConnection>,
    out: Vec<u8>,
    head: usize,
    /// Queue bytes ever appended / written.
    appended: u64,
    written: u64,
    pending: VecDeque<Batch>,
    input: Vec<u8>,
    /// Bytes of a client data frame still to be skipped.
    skip: u64,
    pub close_sent: bool,
    pub close_received: bool,
    pub ending: Ending,
    /// Messages written in full.
    pub sent: u64,
    /// Their frame bytes.
    pub bytes: u64,
    /// When each message was written in full − when it was due, ns.
    pub lateness: Histogram<u64>,
    /// CLOCK_MONOTONIC ns of the last completed write of messages.
    pub last_write_ns: u64,
    /// CLOCK_MONOTONIC ns when everything, closing frame included, had been written.
    pub drained_ns: Option<u64>,
}

pub(super) fn mono_ns() -> u64 {
    ws_engine::clock::Clock::monotonic_now_ns()
}

impl Client {
    /// A client from its upgraded connection; `lateness` is an empty histogram to fill.
    pub fn new(up: Upgraded, lateness: Histogram<u64>) -> Client {
        Client {
            peer: up.peer,
            sock: up.sock,
            tls: up.tls,
            out: Vec::new(),
            head: 0,
            appended: 0,
            written: 0,
            pending: VecDeque::new(),
            input: Vec::new(),
            skip: 0,
            close_sent: false,
            close_received: false,
            ending: Ending::Open,
            sent: 0,
            bytes: 0,
            lateness,
            last_write_ns: 0,
            drained_ns: None,
        }
    }

    /// The socket, for polling.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.sock)
    }

    /// Bytes queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.out.len() - self.head
    }

    /// Messages queued and not yet written in full.
    pub fn unsent(&self) -> u64 {
        self.pending.iter().map(|b| b.messages).sum()
    }

    pub fn is_open(&self) -> bool {
        self.ending == Ending::Open
    }

    /// Appends frame bytes to the queue (through rustls on a TLS connection).
    fn append(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => tls.writer().write_all(frame),
            None => {
                self.out.extend_from_slice(frame);
                self.appended += frame.len() as u64;
                Ok(())
            }
        }
    }

    /// Moves rustls's records into the queue.
    fn seal(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                let n = tls.write_tls(&mut self.out)?;
                self.appended += n as u64;
            }
        }
        Ok(())
    }

    /// Queues `frames` (messages due at `due_ns`), each stamped with its `send_ns` now;
    /// `stamp_at` gives the offset of `send_ns` in each frame.
    pub fn queue_messages(
        &mut self,
        frames: &mut [(Vec<u8>, usize)],
        due_ns: u64,
    ) -> io::Result<()> {
        let mut bytes = 0u64;
        for (frame, stamp_at) in frames.iter_mut() {
            if let Some(stamp) = frame.get_mut(*stamp_at..*stamp_at + 8) {
                stamp.copy_from_slice(&mono_ns().to_le_bytes());
            }
            self.append(frame)?;
            bytes += frame.len() as u64;
        }
        self.seal()?;
        self.pending.push_back(Batch {
            end: self.appended,
            due_ns,
            messages: frames.len() as u64,
            bytes,
        });
        Ok(())
    }

    fn queue_control(&mut self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        let mut header = [0u8; MAX_HEADER];
        let n = encode_header(&mut header, true, opcode, payload.len(), None);
        self.append(&header[..n])?;
        self.append(payload)?;
        self.seal()
    }

    /// Queues the closing frame (and TLS close_notify), once.
    pub fn queue_close(&mut self, code: u16) -> io::Result<()> {
        if self.close_sent {
            return Ok(());
        }
        self.close_sent = true;
        self.queue_control(OpCode::Close, &code.to_be_bytes())?;
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
        }
        self.seal()
    }

    /// Writes as much of the queue as the socket takes now; records the batches that
    /// went out in full.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.head < self.out.len() {
            match self.sock.write(&self.out[self.head..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.head += n;
                    self.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.head == self.out.len() {
            self.out.clear();
            self.head = 0;
        } else if self.head >= 1 << 20 && self.head * 2 >= self.out.len() {
            self.out.drain(..self.head);
            self.head = 0;
        }
        if self.pending.front().is_some_and(|b| b.end <= self.written) {
            let now = mono_ns();
            while let Some(b) = self.pending.front() {
                if b.end > self.written {
                    break;
                }
                let late = now.saturating_sub(b.due_ns).max(1);
                // Values past the histogram's hour are saturated rather than lost.
                let _ = self
                    .lateness
                    .record_n(late.min(self.lateness.high()), b.messages);
                self.sent += b.messages;
                self.bytes += b.bytes;
                self.last_write_ns = now;
                self.pending.pop_front();
            }
        }
        Ok(())
    }

    /// Reads what the client sent: answers pings, notes its close; `Ok(false)` when it
    /// has closed the connection (end of stream or TLS close_notify).
    pub fn read(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 16 * 1024];
        let mut open = true;
        match &mut self.tls {
            None => loop {
                match self.sock.read(&mut buf) {
                    Ok(0) => {
                        open = false;
                        break;
                    }
                    Ok(n) => self.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
            Some(tls) => loop {
                match tls.read_tls(&mut self.sock) {
                    Ok(0) => {
                        open = false;
                        break;
                    }
                    Ok(_) => {
                        let state = tls.process_new_packets();
                        if let Err(e) = state {
                            // Send the alert rustls made, then give up on the client.
                            while tls.wants_write() {
                                let n = tls.write_tls(&mut self.out)?;
                                self.appended += n as u64;
                            }
                            let _ = self.sock.write(&self.out[self.head..]);
                            return Err(io::Error::other(e));
                        }
                        loop {
                            match tls.reader().read(&mut buf) {
                                Ok(0) => {
                                    open = false;
                                    break;
                                }
                                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(e) => return Err(e),
                            }
                        }
                        if !open {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
        }
        self.seal()?;
        self.parse_input()?;
        Ok(open)
    }

    /// Handles the complete frames in `input`.
    fn parse_input(&mut self) -> io::Result<()> {
        let mut at = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min((self.input.len() - at) as u64);
                self.skip -= n;
                at += n as usize;
                if self.skip > 0 {
                    break;
                }
            }
            let header = match parse_header(&self.input[at..], true) {
                Ok(Parsed::Header(h)) => h,
                Ok(Parsed::NeedMore(_)) => break,
                Err(e) => {
                    let _ = self.queue_close(e.close_code());
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
            };
            if !header.opcode.is_control() {
                at += header.header_len;
                self.skip = header.payload_len;
                continue;
            }
            // Control payloads are at most 125 bytes.
            let len = header.payload_len as usize;
            let Some(payload) = self
                .input
                .get(at + header.header_len..at + header.header_len + len)
            else {
                break;
            };
            let mut payload = payload.to_vec();
            if let Some(mask) = header.mask {
                ws_engine::mask::apply_mask(&mut payload, mask, 0);
            }
            at += header.header_len + len;
            match header.opcode {
                OpCode::Close => {
                    self.close_received = true;
                    let code = match payload.get(..2) {
                        Some(c) => u16::from_be_bytes([c[0], c[1]]),
                        None => 1000,
                    };
                    self.queue_close(code)?;
                }
                OpCode::Ping if !self.close_sent => self.queue_control(OpCode::Pong, &payload)?,
                _ => {}
            }
        }
        self.input.drain(..at);
        Ok(())
    }

    /// Whether the client has all it will get: every queued message and our closing frame
    /// written.
    pub fn done(&self) -> bool {
        self.close_sent && self.backlog() == 0 && self.pending.is_empty()
    }

    /// Hangs up.
    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_requests_are_checked() {
        let ok = "GET /feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(upgrade_key(ok).as_deref(), Ok("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(upgrade_key("POST / HTTP/1.1\r\n\r\n").is_err());
        assert!(upgrade_key("GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
        assert!(upgrade_key("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").is_err());
    }
}
