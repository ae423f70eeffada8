//! Frame headers (RFC 6455 §5.2): parsed in place from the ring, encoded for sends, and
//! the close-code rules of §7.4.

/// Frame opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// Continuation of a fragmented message.
    Continuation = 0x0,
    /// Text frame.
    Text = 0x1,
    /// Binary frame.
    Binary = 0x2,
    /// Close.
    Close = 0x8,
    /// Ping.
    Ping = 0x9,
    /// Pong.
    Pong = 0xA,
}

impl OpCode {
    /// Whether this is a control opcode (close, ping, pong).
    #[inline]
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Close codes the engine sends.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Invalid payload data (bad UTF-8).
    pub const INVALID_DATA: u16 = 1007;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
}

/// A violation of RFC 6455 by the peer; each maps to the close code sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// RSV1–3 set without a negotiated extension.
    #[error("reserved bits set in frame header")]
    ReservedBits,
    /// Opcode 3–7 or B–F.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// The server masked a frame (§5.1: it must not).
    #[error("server sent a masked frame")]
    MaskedFrame,
    /// Control frame payload over 125 bytes.
    #[error("control frame payload of {0} bytes (max 125)")]
    ControlTooLong(u64),
    /// Control frame without FIN.
    #[error("fragmented control frame")]
    ControlFragmented,
    /// Continuation with no message in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new data frame while a fragmented message is in progress.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// 64-bit length with the most significant bit set.
    #[error("frame length has its most significant bit set")]
    LengthMsb,
    /// Close frame with a one-byte payload.
    #[error("close frame with a 1-byte payload")]
    CloseOneByte,
    /// Close code not allowed on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// Text payload (or close reason) is not UTF-8.
    #[error("invalid UTF-8 in text: {0}")]
    InvalidUtf8(#[from] crate::utf8::Utf8Error),
    /// A frame over the configured limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Payload length announced.
        len: u64,
        /// Limit.
        max: usize,
    },
    /// A message over the configured limit.
    #[error("message of at least {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Length so far.
        len: u64,
        /// Limit.
        max: usize,
    },
}

impl ProtocolError {
    /// The close code to send for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8(_) => close_code::INVALID_DATA,
            ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => {
                close_code::TOO_BIG
            }
            _ => close_code::PROTOCOL,
        }
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: OpCode,
    /// Header length in bytes (2–14).
    pub header_len: usize,
    /// Payload length.
    pub payload_len: u64,
    /// Masking key, if the MASK bit was set.
    pub mask: Option<[u8; 4]>,
}

/// Outcome of parsing a header from the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header.
    Header(FrameHeader),
    /// At least this many bytes are needed to read the header.
    NeedMore(usize),
}

/// Parses the frame header at the start of `buf` as a client: checks reserved bits and
/// opcodes, control-frame rules, and (when `allow_masked` is false) that the frame is
/// not masked.
#[inline]
pub fn parse_header(buf: &[u8], allow_masked: bool) -> Result<Parsed, ProtocolError> {
    if buf.len() < 2 {
        return Ok(Parsed::NeedMore(2));
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = match b0 & 0x0F {
        0x0 => OpCode::Continuation,
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        0x8 => OpCode::Close,
        0x9 => OpCode::Ping,
        0xA => OpCode::Pong,
        other => return Err(ProtocolError::ReservedOpcode(other)),
    };
    let masked = b1 & 0x80 != 0;
    if masked && !allow_masked {
        return Err(ProtocolError::MaskedFrame);
    }
    let len7 = b1 & 0x7F;
    let (payload_len, mut header_len) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(Parsed::NeedMore(4 + if masked { 4 } else { 0 }));
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(Parsed::NeedMore(10 + if masked { 4 } else { 0 }));
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let l = u64::from_be_bytes(b);
            if l >> 63 != 0 {
                return Err(ProtocolError::LengthMsb);
            }
            (l, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::ControlFragmented);
        }
        if payload_len > 125 {
            return Err(ProtocolError::ControlTooLong(payload_len));
        }
    }
    let mask = if masked {
        if buf.len() < header_len + 4 {
            return Ok(Parsed::NeedMore(header_len + 4));
        }
        let k = [
            buf[header_len],
            buf[header_len + 1],
            buf[header_len + 2],
            buf[header_len + 3],
        ];
        header_len += 4;
        Some(k)
    } else {
        None
    };
    Ok(Parsed::Header(FrameHeader {
        fin,
        opcode,
        header_len,
        payload_len,
        mask,
    }))
}

/// Largest frame header.
pub const MAX_HEADER: usize = 14;

/// Writes a frame header into `out` (at least [`MAX_HEADER`] bytes); returns its length.
#[inline]
pub fn encode_header(
    out: &mut [u8; MAX_HEADER],
    fin: bool,
    opcode: OpCode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = (if fin { 0x80 } else { 0 }) | opcode as u8;
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if payload_len < 126 {
        out[1] = mbit | payload_len as u8;
        2
    } else if payload_len <= 0xFFFF {
        out[1] = mbit | 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = mbit | 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    if let Some(k) = mask {
        out[n..n + 4].copy_from_slice(&k);
        n += 4;
    }
    n
}

/// Whether `code` may appear in a close frame on the wire (§7.4; 1012–1014 are
/// IANA-registered).
pub fn close_code_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses and validates a close frame's payload into (code, reason).
pub fn parse_close(payload: &[u8]) -> Result<(Option<u16>, &str), ProtocolError> {
    match payload.len() {
        0 => Ok((None, "")),
        1 => Err(ProtocolError::CloseOneByte),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_valid(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(&payload[2..])
                .map_err(|_| ProtocolError::InvalidUtf8(crate::utf8::Utf8Error::Invalid))?;
            Ok((Some(code), reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(buf: &[u8]) -> FrameHeader {
        match parse_header(buf, false).unwrap() {
            Parsed::Header(h) => h,
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn parses_lengths() {
        let h = hdr(&[0x81, 5]);
        assert!(h.fin);
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!((h.header_len, h.payload_len), (2, 5));
        let h = hdr(&[0x02, 126, 0x01, 0x00]);
        assert!(!h.fin);
        assert_eq!((h.header_len, h.payload_len), (4, 256));
        let h = hdr(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!((h.header_len, h.payload_len), (10, 65536));
    }

    #[test]
    fn needs_more() {
        assert_eq!(parse_header(&[0x81], false), Ok(Parsed::NeedMore(2)));
        assert_eq!(
            parse_header(&[0x81, 126, 1], false),
            Ok(Parsed::NeedMore(4))
        );
        assert_eq!(
            parse_header(&[0x81, 127, 0, 0], false),
            Ok(Parsed::NeedMore(10))
        );
        assert_eq!(
            parse_header(&[0x81, 0x85, 1, 2], true),
            Ok(Parsed::NeedMore(6))
        );
    }

    #[test]
    fn rejects_bad_headers() {
        use ProtocolError::*;
        assert_eq!(parse_header(&[0xC1, 0], false), Err(ReservedBits));
        assert_eq!(parse_header(&[0x83, 0], false), Err(ReservedOpcode(3)));
        assert_eq!(parse_header(&[0x8B, 0], false), Err(ReservedOpcode(0xB)));
        assert_eq!(parse_header(&[0x81, 0x80], false), Err(MaskedFrame));
        assert_eq!(parse_header(&[0x09, 0], false), Err(ControlFragmented));
        assert_eq!(
            parse_header(&[0x89, 126, 0, 126], false),
            Err(ControlTooLong(126))
        );
        assert_eq!(
            parse_header(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0], false),
            Err(LengthMsb)
        );
        assert_eq!(ReservedBits.close_code(), 1002);
        assert_eq!(
            InvalidUtf8(crate::utf8::Utf8Error::Invalid).close_code(),
            1007
        );
        assert_eq!(FrameTooLarge { len: 1, max: 0 }.close_code(), 1009);
    }

    #[test]
    fn encode_round_trips() {
        for len in [0usize, 125, 126, 65535, 65536, 1 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = [0u8; MAX_HEADER];
                let n = encode_header(&mut out, true, OpCode::Binary, len, mask);
                let h = match parse_header(&out[..n], true).unwrap() {
                    Parsed::Header(h) => h,
                    p => panic!("{p:?}"),
                };
                assert_eq!(h.header_len, n);
                assert_eq!(h.payload_len, len as u64);
                assert_eq!(h.mask, mask);
            }
        }
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close(b""), Ok((None, "")));
        assert_eq!(parse_close(b"\x03"), Err(ProtocolError::CloseOneByte));
        assert_eq!(parse_close(b"\x03\xe8bye"), Ok((Some(1000), "bye")));
        assert_eq!(
            parse_close(b"\x03\xed"),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert!(matches!(
            parse_close(b"\x03\xe8\xff"),
            Err(ProtocolError::InvalidUtf8(_))
        ));
        for c in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!close_code_valid(c), "{c}");
        }
        for c in [1000u16, 1001, 1002, 1003, 1007, 1011, 3000, 4999] {
            assert!(close_code_valid(c), "{c}");
        }
    }
}
