//! A minimal streaming WebSocket server (server role, for tests): accepts one connection,
//! completes the upgrade, streams `count` binary messages of `size` bytes with `gap`
//! between them, then closes with 1000 and waits for the client's close.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    thread::{self, JoinHandle},
    time::Duration,
};

use ws_engine::{
    frame::{MAX_HEADER, OpCode, encode_header},
    handshake::accept_key,
};

/// What the server sends.
#[derive(Clone, Copy, Debug)]
pub struct Feed {
    /// Messages to send.
    pub count: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Pause between messages.
    pub gap: Duration,
}

/// One frame, unmasked (server to client).
pub fn frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER];
    let n = encode_header(&mut header, true, opcode, payload.len(), None);
    let mut out = header[..n].to_vec();
    out.extend_from_slice(payload);
    out
}

/// What the server did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Data messages sent.
    pub messages: usize,
    /// Bytes written on the connection, upgrade response and close frame included.
    pub bytes: u64,
}

/// Starts the server on 127.0.0.1; returns its `ws://` URL, address and thread.
pub fn serve(
    feed: Feed,
) -> std::io::Result<(String, SocketAddr, JoinHandle<std::io::Result<Sent>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let handle = thread::spawn(move || -> std::io::Result<Sent> {
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut key = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::other("client closed during the upgrade"));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("sec-websocket-key")
            {
                key = Some(value.trim().to_string());
            }
        }
        let key = key.ok_or_else(|| std::io::Error::other("no Sec-WebSocket-Key"))?;
        let mut out = stream;
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(&key)
        );
        out.write_all(response.as_bytes())?;
        let mut bytes = response.len() as u64;
        let mut payload = vec![0u8; feed.size];
        let stamp = 8.min(feed.size);
        for i in 0..feed.count {
            payload[..stamp].copy_from_slice(&(i as u64).to_le_bytes()[..stamp]);
            let f = frame(OpCode::Binary, &payload);
            out.write_all(&f)?;
            bytes += f.len() as u64;
            if !feed.gap.is_zero() {
                thread::sleep(feed.gap);
            }
        }
        let close = frame(OpCode::Close, &1000u16.to_be_bytes());
        out.write_all(&close)?;
        bytes += close.len() as u64;
        // Wait for the client's close frame (or EOF), then hang up.
        let mut sink = [0u8; 256];
        out.set_read_timeout(Some(Duration::from_secs(10)))?;
        let _ = reader.read(&mut sink);
        Ok(Sent {
            messages: feed.count,
            bytes,
        })
    });
    Ok((format!("ws://{addr}/feed"), addr, handle))
}
