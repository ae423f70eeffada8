//! The server role, only as far as tests, benchmarks and the demo need it: a feed server
//! that accepts one connection, completes the upgrade and streams binary messages.
//!
//! `start_tls` serves `wss://` with a rustls server configuration (see
//! [`crate::testca`] for a throwaway CA and certificate).
//!
//! Each message starts with its index (little-endian u64, when it fits), so a receiver can
//! check order and completeness. With no gap between messages, frames are pre-encoded in
//! batches and written back to back: a blast for throughput measurements.
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::Arc,
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::{
    frame::{MAX_HEADER, OpCode, encode_header},
    handshake::accept_key,
};

/// What the server sends.
#[derive(Clone, Copy, Debug)]
pub struct Feed {
    /// Messages to send.
    pub count: usize,
    /// Payload bytes per message (for market data: the size it is padded to, at least).
    pub size: usize,
    /// Pause between messages (zero: as fast as the socket takes them).
    pub gap: Duration,
    /// What the messages look like.
    pub payload: Payload,
}

/// The shape of the feed's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Payload {
    /// Binary messages starting with their index (little-endian u64).
    #[default]
    Indexed,
    /// Text messages like a market-data feed: JSON trades and quotes with a sequence
    /// number, a symbol, price and size, padded to `size` bytes.
    MarketData,
}

/// What the server did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Data messages sent.
    pub messages: usize,
    /// Bytes written on the connection, upgrade response and close frame included.
    pub bytes: u64,
}

/// A running feed server.
pub struct FeedServer {
    url: String,
    addr: SocketAddr,
    handle: JoinHandle<io::Result<Sent>>,
}

impl FeedServer {
    /// Listens on 127.0.0.1 (an ephemeral port) and serves one connection.
    pub fn start(feed: Feed) -> io::Result<FeedServer> {
        FeedServer::start_on("127.0.0.1:0", feed)
    }

    /// Listens on `bind` and serves one connection.
    pub fn start_on(bind: &str, feed: Feed) -> io::Result<FeedServer> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let handle = thread::spawn(move || -> io::Result<Sent> {
            let (stream, _) = listener.accept()?;
            serve(stream, feed)
        });
        Ok(FeedServer {
            url: format!("ws://{addr}/feed"),
            addr,
            handle,
        })
    }

    /// Listens on 127.0.0.1 (an ephemeral port) and serves one `wss://` connection with
    /// `tls` (its certificate should name `127.0.0.1`).
    pub fn start_tls(feed: Feed, tls: Arc<rustls::ServerConfig>) -> io::Result<FeedServer> {
        FeedServer::start_tls_on("127.0.0.1:0", feed, tls)
    }

    /// Listens on `bind` and serves one `wss://` connection with `tls`.
    pub fn start_tls_on(
        bind: &str,
        feed: Feed,
        tls: Arc<rustls::ServerConfig>,
    ) -> io::Result<FeedServer> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let handle = thread::spawn(move || -> io::Result<Sent> {
            let (stream, _) = listener.accept()?;
            serve_tls(stream, tls, feed)
        });
        Ok(FeedServer {
            url: format!("wss://{addr}/feed"),
            addr,
            handle,
        })
    }

    /// The `ws://` (or `wss://`) URL to connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the connection to end; returns what was sent.
    pub fn join(self) -> io::Result<Sent> {
        self.handle
            .join()
            .map_err(|_| io::Error::other("feed server thread panicked"))?
    }
}

/// One unmasked frame (server to client).
pub fn frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER];
    let n = encode_header(&mut header, true, opcode, payload.len(), None);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    out
}

const SYMBOLS: [&str; 6] = ["BTC-USD", "ETH-USD", "SOL-USD", "EUR-USD", "AAPL", "ES-Z6"];

fn message(index: usize, size: usize, payload: Payload) -> Vec<u8> {
    match payload {
        Payload::Indexed => {
            let mut data = vec![0u8; size];
            let stamp = 8.min(size);
            data[..stamp].copy_from_slice(&(index as u64).to_le_bytes()[..stamp]);
            frame(OpCode::Binary, &data)
        }
        Payload::MarketData => {
            // Deterministic but varied: a cheap hash of the index picks the fields.
            let h = (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let sym = SYMBOLS[(h >> 60) as usize % SYMBOLS.len()];
            let px = 100.0 + (h >> 40 & 0xFFFF) as f64 / 100.0;
            let qty = 1 + (h >> 20 & 0x3FF);
            let mut text = if h & 1 == 0 {
                format!(
                    r#"{{"type":"trade","seq":{index},"sym":"{sym}","px":{px:.2},"qty":{qty},"side":"{}"}}"#,
                    if h & 2 == 0 { "buy" } else { "sell" }
                )
            } else {
                format!(
                    r#"{{"type":"quote","seq":{index},"sym":"{sym}","bid":{px:.2},"ask":{:.2},"bsz":{qty},"asz":{}}}"#,
                    px + 0.01,
                    qty + 3
                )
            };
            if text.len() < size {
                // Pad inside the JSON so it stays valid: ,"pad":"xxxx"}
                text.pop();
                let pad = size.saturating_sub(text.len() + 10);
                text.push_str(&format!(r#","pad":"{}"}}"#, "x".repeat(pad)));
            }
            frame(OpCode::Text, text.as_bytes())
        }
    }
}

/// Completes the upgrade on `stream` and streams `feed`, then closes (1000) and waits
/// briefly for the client's close.
pub fn serve(stream: TcpStream, feed: Feed) -> io::Result<Sent> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    serve_stream(stream, feed)
}

/// Like [`serve`], over TLS: the rustls handshake first (certificate and ALPN from
/// `tls`), then the feed as TLS records; `close_notify` at the end. `Sent::bytes` counts
/// plaintext.
pub fn serve_tls(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    feed: Feed,
) -> io::Result<Sent> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(tls).map_err(io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, stream);
    let sent = serve_stream(&mut s, feed)?;
    s.conn.send_close_notify();
    // The client may already have closed; the feed is complete either way.
    let _ = s.flush();
    Ok(sent)
}

/// Reads the upgrade request head (up to the blank line) and returns its
/// `Sec-WebSocket-Key`.
fn read_upgrade<S: Read>(s: &mut S) -> io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(io::Error::other("upgrade request head too long"));
        }
        if s.read(&mut b)? == 0 {
            return Err(io::Error::other("client closed during the upgrade"));
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, v)| v.trim().to_string())
        .ok_or_else(|| io::Error::other("upgrade request without Sec-WebSocket-Key"))
}

fn serve_stream<S: Read + Write>(mut out: S, feed: Feed) -> io::Result<Sent> {
    let key = read_upgrade(&mut out)?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    out.write_all(response.as_bytes())?;
    let mut bytes = response.len() as u64;
    if feed.gap.is_zero() {
        // Blast: batches of pre-encoded frames (about 256 KiB each).
        let per_batch = (256 * 1024 / (feed.size + MAX_HEADER)).clamp(1, 4096);
        let mut sent = 0;
        while sent < feed.count {
            let n = per_batch.min(feed.count - sent);
            let batch: Vec<u8> = (sent..sent + n)
                .flat_map(|i| message(i, feed.size, feed.payload))
                .collect();
            out.write_all(&batch)?;
            bytes += batch.len() as u64;
            sent += n;
        }
    } else {
        for i in 0..feed.count {
            let f = message(i, feed.size, feed.payload);
            out.write_all(&f)?;
            bytes += f.len() as u64;
            thread::sleep(feed.gap);
        }
    }
    let close = frame(OpCode::Close, &1000u16.to_be_bytes());
    out.write_all(&close)?;
    bytes += close.len() as u64;
    out.flush()?;
    // Wait for the client's close frame (or EOF), then hang up.
    let mut sink = [0u8; 256];
    let _ = out.read(&mut sink);
    Ok(Sent {
        messages: feed.count,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_index() {
        let f = message(7, 200, Payload::Indexed);
        assert_eq!(f[0], 0x82);
        assert_eq!(f[1], 126);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 200);
        assert_eq!(&f[4..12], &7u64.to_le_bytes());
        assert_eq!(message(1, 3, Payload::Indexed).len(), 2 + 3);
    }

    #[test]
    fn market_data_is_json_text_of_the_asked_size() {
        for (i, size) in [(0, 0), (1, 64), (2, 300), (3, 1000)] {
            let f = message(i, size, Payload::MarketData);
            assert_eq!(f[0], 0x81, "text frame");
            let header = if f[1] == 126 { 4 } else { 2 };
            let text = std::str::from_utf8(&f[header..]).expect("utf-8");
            assert!(text.starts_with('{') && text.ends_with('}'), "{text}");
            assert!(text.contains(&format!("\"seq\":{i}")), "{text}");
            assert!(text.len() >= size.min(text.len()), "{text}");
            if size > 120 {
                assert_eq!(text.len(), size, "{text}");
            }
        }
    }
}
