//! The client opening handshake (RFC 6455 §4.1): URL parsing, the HTTP/1.1 upgrade
//! request, and checking the server's answer.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 §1.3.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest HTTP response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Errors of URL parsing and the opening handshake.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The URL could not be parsed.
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The scheme is neither ws:// nor wss://.
    #[error("unsupported URL scheme {0:?} (use ws:// or wss://)")]
    UnsupportedScheme(String),
    /// The server answered with something other than an HTTP/1.1 response.
    #[error("malformed HTTP response: {0}")]
    MalformedResponse(&'static str),
    /// The server did not switch protocols.
    #[error("server answered {status} {reason:?} instead of 101 Switching Protocols")]
    NotSwitching {
        /// Status code.
        status: u16,
        /// Reason phrase.
        reason: String,
    },
    /// A required header is missing or wrong.
    #[error("bad or missing header {0} in the 101 response")]
    BadHeader(&'static str),
    /// `Sec-WebSocket-Accept` does not match the key sent.
    #[error("Sec-WebSocket-Accept {got:?} does not match the expected {expected:?}")]
    BadAccept {
        /// Value received.
        got: String,
        /// Value expected.
        expected: String,
    },
    /// The server chose a subprotocol that was not offered.
    #[error("server selected subprotocol {0:?}, which was not offered")]
    BadSubprotocol(String),
    /// The server enabled an extension that was not offered.
    #[error("server enabled extension {0:?}, which was not offered")]
    UnexpectedExtension(String),
    /// The response head was longer than [`MAX_RESPONSE_HEAD`].
    #[error("HTTP response head longer than {MAX_RESPONSE_HEAD} bytes")]
    ResponseTooLong,
    /// The peer closed the connection before the response was complete.
    #[error("connection closed during the handshake after {0} response bytes")]
    Eof(usize),
    /// No complete response before the handshake timeout.
    #[error("handshake timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Socket error.
    #[error("handshake I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A parsed ws:// URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsUrl {
    /// Whether the scheme is wss://.
    pub secure: bool,
    /// Host as written (IPv6 without brackets).
    pub host: String,
    /// Port (default 80 / 443).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub resource: String,
}

impl WsUrl {
    /// Parses `ws://host[:port][/path][?query]` (and `wss://`).
    pub fn parse(url: &str) -> Result<WsUrl, HandshakeError> {
        let bad = |reason| HandshakeError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("missing scheme"))?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "ws" => false,
            "wss" => true,
            other => return Err(HandshakeError::UnsupportedScheme(other.to_string())),
        };
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(split);
        let tail = tail.split('#').next().unwrap_or("");
        if authority.contains('@') {
            return Err(bad("user info is not supported"));
        }
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| bad("unclosed IPv6 bracket"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("garbage after IPv6 address")),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad("invalid port"))?,
            None if secure => 443,
            None => 80,
        };
        let resource = if tail.is_empty() {
            "/".to_string()
        } else if tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_string()
        };
        if resource.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("whitespace or control bytes in path"));
        }
        Ok(WsUrl {
            secure,
            host: host.to_string(),
            port,
            resource,
        })
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.secure { 443 } else { 80 };
        if self.port == default {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }
}

/// Options of the opening handshake.
#[derive(Clone, Debug, Default)]
pub struct HandshakeOptions {
    /// Subprotocols offered, in preference order (`Sec-WebSocket-Protocol`).
    pub subprotocols: Vec<String>,
    /// Extra request headers (name, value).
    pub headers: Vec<(String, String)>,
}

/// The request sent and what the response must contain.
#[derive(Clone, Debug)]
pub struct ClientHandshake {
    /// The full request bytes.
    pub request: Vec<u8>,
    /// The `Sec-WebSocket-Accept` value the server must send.
    pub expected_accept: String,
    offered: Vec<String>,
}

/// What the server agreed to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// Subprotocol selected by the server, if any.
    pub subprotocol: Option<String>,
    /// All response headers (name as received, value trimmed).
    pub headers: Vec<(String, String)>,
}

/// `Sec-WebSocket-Accept` for a key.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// 16 random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: writing at most N - filled bytes into the rest of `b`.
        let r = unsafe {
            libc::getrandom(
                b.as_mut_ptr().add(filled) as *mut libc::c_void,
                N - filled,
                0,
            )
        };
        if r <= 0 {
            // getrandom only fails on EINTR/ENOSYS; fall back to the clock as entropy.
            let t = crate::clock::Clock::monotonic_now_ns().to_ne_bytes();
            for (i, x) in b[filled..].iter_mut().enumerate() {
                *x ^= t[i % 8].rotate_left(i as u32);
            }
            break;
        }
        filled += r as usize;
    }
    b
}

fn header_ok(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        && !value.bytes().any(|b| b == b'\r' || b == b'\n')
}

impl ClientHandshake {
    /// Builds the request for `url` with a fresh random key.
    pub fn new(url: &WsUrl, opts: &HandshakeOptions) -> Result<ClientHandshake, HandshakeError> {
        let key = base64::engine::general_purpose::STANDARD.encode(random_bytes::<16>());
        Self::with_key(url, opts, &key)
    }

    /// Builds the request with a given key (tests).
    pub fn with_key(
        url: &WsUrl,
        opts: &HandshakeOptions,
        key: &str,
    ) -> Result<ClientHandshake, HandshakeError> {
        let mut r = String::with_capacity(256);
        r.push_str("GET ");
        r.push_str(&url.resource);
        r.push_str(" HTTP/1.1\r\nHost: ");
        r.push_str(&url.host_header());
        r.push_str("\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
        r.push_str(key);
        r.push_str("\r\nSec-WebSocket-Version: 13\r\n");
        if !opts.subprotocols.is_empty() {
            if opts
                .subprotocols
                .iter()
                .any(|p| !header_ok(p, "") || p.contains(','))
            {
                return Err(HandshakeError::BadHeader(
                    "Sec-WebSocket-Protocol (offered)",
                ));
            }
            r.push_str("Sec-WebSocket-Protocol: ");
            r.push_str(&opts.subprotocols.join(", "));
            r.push_str("\r\n");
        }
        for (n, v) in &opts.headers {
            if !header_ok(n, v) {
                return Err(HandshakeError::BadHeader("extra request header"));
            }
            r.push_str(n);
            r.push_str(": ");
            r.push_str(v);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        Ok(ClientHandshake {
            request: r.into_bytes(),
            expected_accept: accept_key(key),
            offered: opts.subprotocols.clone(),
        })
    }

    /// Looks for a complete response head at the start of `buf`. Returns `None` when
    /// more bytes are needed, else the parsed response and the head's length (bytes
    /// after it are already WebSocket frames).
    pub fn parse_response(
        &self,
        buf: &[u8],
    ) -> Result<Option<(HandshakeResponse, usize)>, HandshakeError> {
        let Some(end) = find_head_end(buf) else {
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(HandshakeError::ResponseTooLong);
            }
            return Ok(None);
        };
        if end > MAX_RESPONSE_HEAD {
            return Err(HandshakeError::ResponseTooLong);
        }
        let head = std::str::from_utf8(&buf[..end])
            .map_err(|_| HandshakeError::MalformedResponse("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(HandshakeError::MalformedResponse(
                "status line is not HTTP/1.x",
            ));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or(HandshakeError::MalformedResponse("bad status code"))?;
        let reason = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let (n, v) = line
                .split_once(':')
                .ok_or(HandshakeError::MalformedResponse("header line without ':'"))?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        if status != 101 {
            return Err(HandshakeError::NotSwitching { status, reason });
        }
        let get = |name: &str| {
            headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        if !get("upgrade")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("websocket"))
        {
            return Err(HandshakeError::BadHeader("Upgrade"));
        }
        if !get("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        {
            return Err(HandshakeError::BadHeader("Connection"));
        }
        match get("sec-websocket-accept").as_slice() {
            [v] if *v == self.expected_accept => {}
            [v] => {
                return Err(HandshakeError::BadAccept {
                    got: v.to_string(),
                    expected: self.expected_accept.clone(),
                });
            }
            _ => return Err(HandshakeError::BadHeader("Sec-WebSocket-Accept")),
        }
        if let Some(ext) = get("sec-websocket-extensions").first()
            && !ext.is_empty()
        {
            return Err(HandshakeError::UnexpectedExtension(ext.to_string()));
        }
        let subprotocol = match get("sec-websocket-protocol").as_slice() {
            [] => None,
            [p] if self.offered.iter().any(|o| o == p) => Some(p.to_string()),
            [p, ..] => return Err(HandshakeError::BadSubprotocol(p.to_string())),
        };
        Ok(Some((
            HandshakeResponse {
                subprotocol,
                headers,
            },
            end,
        )))
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_accept_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_urls() {
        let u = WsUrl::parse("ws://127.0.0.1:9001/runCase?case=3&agent=x").unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 9001);
        assert_eq!(u.resource, "/runCase?case=3&agent=x");
        let u = WsUrl::parse("ws://example.com").unwrap();
        assert_eq!((u.port, u.resource.as_str()), (80, "/"));
        assert_eq!(u.host_header(), "example.com");
        let u = WsUrl::parse("wss://[::1]:8443?x=1#frag").unwrap();
        assert!(u.secure);
        assert_eq!((u.host.as_str(), u.port), ("::1", 8443));
        assert_eq!(u.resource, "/?x=1");
        assert_eq!(u.host_header(), "[::1]:8443");
        assert!(matches!(
            WsUrl::parse("http://x/"),
            Err(HandshakeError::UnsupportedScheme(_))
        ));
        assert!(WsUrl::parse("ws://:80/").is_err());
        assert!(WsUrl::parse("ws://h:99999/").is_err());
        assert!(WsUrl::parse("nope").is_err());
    }

    fn hs() -> ClientHandshake {
        let u = WsUrl::parse("ws://h:1/chat").unwrap();
        let opts = HandshakeOptions {
            subprotocols: vec!["chat".into(), "superchat".into()],
            headers: vec![("X-Token".into(), "abc".into())],
        };
        ClientHandshake::with_key(&u, &opts, "dGhlIHNhbXBsZSBub25jZQ==").unwrap()
    }

    #[test]
    fn request_has_required_headers() {
        let r = String::from_utf8(hs().request).unwrap();
        assert!(r.starts_with("GET /chat HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(r.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(r.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(r.contains("Sec-WebSocket-Protocol: chat, superchat\r\n"));
        assert!(r.contains("X-Token: abc\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn accepts_good_response_and_keeps_trailing_bytes() {
        let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n\x81\x00";
        let (r, n) = hs().parse_response(resp).unwrap().unwrap();
        assert_eq!(r.subprotocol.as_deref(), Some("chat"));
        assert_eq!(&resp[n..], b"\x81\x00");
        assert_eq!(hs().parse_response(&resp[..40]).unwrap(), None);
    }

    #[test]
    fn rejects_bad_responses() {
        let h = hs();
        let e = h
            .parse_response(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .unwrap_err();
        assert!(matches!(
            e,
            HandshakeError::NotSwitching { status: 403, .. }
        ));
        let e = h
            .parse_response(b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n")
            .unwrap_err();
        assert!(matches!(e, HandshakeError::BadAccept { .. }));
        let e = h
            .parse_response(b"HTTP/1.1 101 OK\r\nConnection: upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            .unwrap_err();
        assert!(matches!(e, HandshakeError::BadHeader("Upgrade")));
        let e = h
            .parse_response(b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: other\r\n\r\n")
            .unwrap_err();
        assert!(matches!(e, HandshakeError::BadSubprotocol(_)));
        let e = h.parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap_err();
        assert!(matches!(e, HandshakeError::MalformedResponse(_)));
        let big = vec![b'a'; MAX_RESPONSE_HEAD + 1];
        assert!(matches!(
            h.parse_response(&big),
            Err(HandshakeError::ResponseTooLong)
        ));
    }
}
