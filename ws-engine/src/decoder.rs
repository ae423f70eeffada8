//! The receive state machine: frames parsed in place, fragmented messages reassembled,
//! control frames interleaved, UTF-8 and size limits enforced.
//!
//! The decoder never does I/O. It is handed the readable bytes of the ring and returns
//! what the front of that buffer holds: nothing yet (how many bytes it needs), or one
//! frame consumed with an optional event. Events of unfragmented messages point into the
//! caller's buffer (zero copy); fragmented messages are collected in a reusable spill
//! buffer (the one copy that contiguous delivery of a fragmented message needs).

use crate::frame::{self, FrameHeader, OpCode, Parsed, ProtocolError};
use crate::utf8::{self, Utf8Stream};

/// Kind of a data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgKind {
    /// Text (valid UTF-8).
    Text,
    /// Binary.
    Binary,
}

impl MsgKind {
    /// The opcode of the message's first frame.
    pub fn opcode(self) -> u8 {
        match self {
            MsgKind::Text => 1,
            MsgKind::Binary => 2,
        }
    }
}

/// What a frame produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete message.
    Message {
        /// Text or binary.
        kind: MsgKind,
        /// The payload (in the caller's buffer, or in the spill buffer when fragmented).
        data: &'a [u8],
    },
    /// A ping with its payload.
    Ping(&'a [u8]),
    /// A pong with its payload.
    Pong(&'a [u8]),
    /// A close frame.
    Close {
        /// Status code, if any.
        code: Option<u16>,
        /// Reason (valid UTF-8).
        reason: &'a str,
    },
}

/// Result of [`Decoder::decode`].
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// The front frame is incomplete: at least `total` bytes (from the buffer's start)
    /// are needed. `total` never exceeds the frame-size limit plus a header.
    NeedMore {
        /// Bytes needed in total.
        total: usize,
    },
    /// One frame was parsed; drop `consumed` bytes after handling the event.
    Frame {
        /// Bytes of the frame (header + payload).
        consumed: usize,
        /// What it completed, if anything (a non-final fragment completes nothing).
        event: Option<Event<'a>>,
    },
}

/// Size limits of received data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload accepted (close 1009 above it).
    pub max_frame: usize,
    /// Largest message accepted (close 1009 above it).
    pub max_message: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 16 << 20,
            max_message: 64 << 20,
        }
    }
}

/// The receive state machine of one connection.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    /// Kind of the fragmented message in progress.
    in_progress: Option<MsgKind>,
    spill: Vec<u8>,
    spill_delivered: bool,
    utf8: Utf8Stream,
    /// Payload bytes of the (incomplete) text frame at the front of the buffer already
    /// fed to `utf8`, so invalid text fails before the whole frame has arrived.
    front_validated: usize,
    allow_masked: bool,
}

impl Decoder {
    /// A decoder for the client side (masked frames from the server are errors).
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            in_progress: None,
            spill: Vec::new(),
            spill_delivered: false,
            utf8: Utf8Stream::new(),
            front_validated: 0,
            allow_masked: false,
        }
    }

    /// A decoder that accepts masked frames and unmasks them (server side; tests only).
    pub fn new_server(limits: Limits) -> Self {
        Decoder {
            allow_masked: true,
            ..Decoder::new(limits)
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a fragmented message is in progress.
    pub fn in_message(&self) -> bool {
        self.in_progress.is_some()
    }

    /// Decodes the frame at the front of `buf`.
    ///
    /// Masked frames (server decoder only) are unmasked in place, which is why `buf` is
    /// mutable; on the client path it is never written.
    #[inline]
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<Decoded<'a>, ProtocolError> {
        if self.spill_delivered {
            self.spill.clear();
            self.spill_delivered = false;
        }
        let h: FrameHeader = match frame::parse_header(buf, self.allow_masked)? {
            Parsed::Header(h) => h,
            Parsed::NeedMore(n) => return Ok(Decoded::NeedMore { total: n }),
        };
        if h.payload_len > self.limits.max_frame as u64 {
            return Err(ProtocolError::FrameTooLarge {
                len: h.payload_len,
                max: self.limits.max_frame,
            });
        }
        // Check message-level sequencing before waiting for the payload, so errors are
        // reported as early as possible.
        match h.opcode {
            OpCode::Continuation if self.in_progress.is_none() => {
                return Err(ProtocolError::UnexpectedContinuation);
            }
            OpCode::Text | OpCode::Binary if self.in_progress.is_some() => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            _ => {}
        }
        let plen = h.payload_len as usize;
        let msg_so_far = if h.opcode == OpCode::Continuation {
            self.spill.len()
        } else {
            0
        };
        if !h.opcode.is_control() && (msg_so_far + plen) > self.limits.max_message {
            return Err(ProtocolError::MessageTooLarge {
                len: (msg_so_far + plen) as u64,
                max: self.limits.max_message,
            });
        }
        let total = h.header_len + plen;
        let is_text = match h.opcode {
            OpCode::Text => true,
            OpCode::Continuation => self.in_progress == Some(MsgKind::Text),
            _ => false,
        };
        if buf.len() < total {
            // Validate the text that has arrived so far (fail fast). Masked frames (server
            // side only) are unmasked when complete, so they are validated then.
            let start = h.header_len + self.front_validated;
            if is_text && h.mask.is_none() && buf.len() > start {
                if self.front_validated == 0 && h.opcode == OpCode::Text {
                    self.utf8.reset();
                }
                self.utf8.feed(&buf[start..], false)?;
                self.front_validated = buf.len() - h.header_len;
            }
            return Ok(Decoded::NeedMore { total });
        }
        let validated = std::mem::take(&mut self.front_validated);
        let payload = &mut buf[h.header_len..total];
        if let Some(key) = h.mask {
            crate::mask::apply_mask(payload, key, 0);
        }
        let payload: &'a [u8] = payload;
        let event = match h.opcode {
            OpCode::Ping => Some(Event::Ping(payload)),
            OpCode::Pong => Some(Event::Pong(payload)),
            OpCode::Close => {
                let (code, reason) = frame::parse_close(payload)?;
                Some(Event::Close { code, reason })
            }
            OpCode::Text | OpCode::Binary => {
                let kind = if h.opcode == OpCode::Text {
                    MsgKind::Text
                } else {
                    MsgKind::Binary
                };
                if h.fin {
                    if kind == MsgKind::Text {
                        if validated > 0 {
                            self.utf8.feed(&payload[validated..], true)?;
                        } else {
                            utf8::validate(payload)?;
                        }
                    }
                    Some(Event::Message {
                        kind,
                        data: payload,
                    })
                } else {
                    if kind == MsgKind::Text {
                        if validated == 0 {
                            self.utf8.reset();
                        }
                        self.utf8.feed(&payload[validated..], false)?;
                    }
                    self.in_progress = Some(kind);
                    self.spill.clear();
                    self.spill.extend_from_slice(payload);
                    None
                }
            }
            OpCode::Continuation => {
                let kind = self.in_progress.unwrap_or(MsgKind::Binary);
                if kind == MsgKind::Text {
                    self.utf8.feed(&payload[validated..], h.fin)?;
                }
                self.spill.extend_from_slice(payload);
                if h.fin {
                    self.in_progress = None;
                    self.spill_delivered = true;
                    Some(Event::Message {
                        kind,
                        data: &self.spill,
                    })
                } else {
                    None
                }
            }
        };
        Ok(Decoded::Frame {
            consumed: total,
            event,
        })
    }
}

/// Owned copy of an [`Event`] (tests and fuzzing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedEvent {
    /// Message.
    Message(MsgKind, Vec<u8>),
    /// Ping.
    Ping(Vec<u8>),
    /// Pong.
    Pong(Vec<u8>),
    /// Close.
    Close(Option<u16>, String),
}

impl From<&Event<'_>> for OwnedEvent {
    fn from(e: &Event<'_>) -> Self {
        match e {
            Event::Message { kind, data } => OwnedEvent::Message(*kind, data.to_vec()),
            Event::Ping(p) => OwnedEvent::Ping(p.to_vec()),
            Event::Pong(p) => OwnedEvent::Pong(p.to_vec()),
            Event::Close { code, reason } => OwnedEvent::Close(*code, reason.to_string()),
        }
    }
}

/// Decodes a whole byte stream delivered in chunks of `chunk` bytes (0: all at once),
/// the way the engine does from its ring; stops at the first error or after a close.
/// Used by the fuzz target and the corpus replay test; never panics on any input.
pub fn decode_stream(
    input: &[u8],
    chunk: usize,
    limits: Limits,
) -> (Vec<OwnedEvent>, Option<ProtocolError>) {
    let mut dec = Decoder::new(limits);
    let mut buf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut fed = 0;
    let step = if chunk == 0 {
        input.len().max(1)
    } else {
        chunk
    };
    while fed < input.len() {
        let n = step.min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        loop {
            match dec.decode(&mut buf) {
                Err(e) => return (events, Some(e)),
                Ok(Decoded::NeedMore { total }) => {
                    debug_assert!(total > buf.len());
                    break;
                }
                Ok(Decoded::Frame { consumed, event }) => {
                    let close = matches!(event, Some(Event::Close { .. }));
                    if let Some(e) = &event {
                        events.push(OwnedEvent::from(e));
                    }
                    buf.drain(..consumed);
                    if close {
                        return (events, None);
                    }
                }
            }
        }
    }
    (events, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{MAX_HEADER, encode_header};

    fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut h = [0u8; MAX_HEADER];
        let n = encode_header(&mut h, fin, op, payload.len(), None);
        let mut v = h[..n].to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn single_frame_is_zero_copy() {
        let mut buf = frame(true, OpCode::Binary, b"abc");
        let base = buf.as_ptr() as usize;
        let mut d = Decoder::new(Limits::default());
        match d.decode(&mut buf).unwrap() {
            Decoded::Frame {
                consumed: 5,
                event: Some(Event::Message { kind, data }),
            } => {
                assert_eq!(kind, MsgKind::Binary);
                assert_eq!(data, b"abc");
                assert_eq!(
                    data.as_ptr() as usize,
                    base + 2,
                    "payload points into buffer"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fragments_with_interleaved_control() {
        let mut s = frame(false, OpCode::Text, "κό".as_bytes());
        s.extend(frame(true, OpCode::Ping, b"p"));
        s.extend(frame(false, OpCode::Continuation, &"σμε".as_bytes()[..1]));
        s.extend(frame(true, OpCode::Continuation, &"σμε".as_bytes()[1..]));
        s.extend(frame(true, OpCode::Close, b"\x03\xe8ok"));
        for chunk in [0, 1, 3, 7] {
            let (ev, err) = decode_stream(&s, chunk, Limits::default());
            assert_eq!(err, None);
            assert_eq!(
                ev,
                vec![
                    OwnedEvent::Ping(b"p".to_vec()),
                    OwnedEvent::Message(MsgKind::Text, "κόσμε".as_bytes().to_vec()),
                    OwnedEvent::Close(Some(1000), "ok".into()),
                ]
            );
        }
    }

    #[test]
    fn sequencing_errors() {
        let (_, e) = decode_stream(
            &frame(true, OpCode::Continuation, b"x"),
            0,
            Limits::default(),
        );
        assert_eq!(e, Some(ProtocolError::UnexpectedContinuation));
        let mut s = frame(false, OpCode::Binary, b"x");
        s.extend(frame(true, OpCode::Binary, b"y"));
        let (_, e) = decode_stream(&s, 0, Limits::default());
        assert_eq!(e, Some(ProtocolError::ExpectedContinuation));
    }

    #[test]
    fn utf8_and_limits() {
        let (_, e) = decode_stream(&frame(true, OpCode::Text, b"\xff"), 0, Limits::default());
        assert_eq!(e.map(|e| e.close_code()), Some(1007));
        let lim = Limits {
            max_frame: 10,
            max_message: 15,
        };
        let (_, e) = decode_stream(&frame(true, OpCode::Binary, &[0; 11]), 1, lim);
        assert!(matches!(
            e,
            Some(ProtocolError::FrameTooLarge { len: 11, .. })
        ));
        let mut s = frame(false, OpCode::Binary, &[0; 10]);
        s.extend(frame(true, OpCode::Continuation, &[0; 6]));
        let (_, e) = decode_stream(&s, 0, lim);
        assert_eq!(e.map(|e| e.close_code()), Some(1009));
    }

    #[test]
    fn invalid_text_fails_before_the_frame_is_complete() {
        let mut f = frame(true, OpCode::Text, &[b'a'; 200]);
        f[50] = 0xff;
        let mut d = Decoder::new(Limits::default());
        let mut part = f[..40].to_vec();
        assert_eq!(
            d.decode(&mut part).unwrap(),
            Decoded::NeedMore { total: 204 }
        );
        let mut part = f[..60].to_vec();
        assert!(matches!(
            d.decode(&mut part),
            Err(ProtocolError::InvalidUtf8(_))
        ));
        // A code point split at the edge of what has arrived is fine.
        let text = "aé€😀".repeat(20);
        let f = frame(true, OpCode::Text, text.as_bytes());
        for cut in [3, 4, 5, 7, 9, 10, 30] {
            let mut d = Decoder::new(Limits::default());
            let mut part = f[..cut].to_vec();
            assert!(matches!(d.decode(&mut part), Ok(Decoded::NeedMore { .. })));
            let mut whole = f.clone();
            match d.decode(&mut whole).unwrap() {
                Decoded::Frame {
                    event: Some(Event::Message { data, .. }),
                    ..
                } => assert_eq!(data, text.as_bytes()),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn need_more_reports_total() {
        let buf = frame(true, OpCode::Binary, &[9; 300]);
        let mut d = Decoder::new(Limits::default());
        let mut part = buf[..100].to_vec();
        assert_eq!(
            d.decode(&mut part).unwrap(),
            Decoded::NeedMore { total: 304 }
        );
    }
}
