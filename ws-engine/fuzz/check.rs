//! The property checked by the `frame_decoder` fuzz target and by the corpus replay test.
//!
//! Input: byte 0 picks how the rest is delivered (all at once, or in chunks of 1–16
//! bytes); the rest is the byte stream from the server. The decoder must never panic,
//! must produce the same events and the same error however the bytes are split, and
//! everything it delivers must respect RFC 6455 and the limits.

use ws_engine::decoder::{Limits, MsgKind, OwnedEvent, decode_stream};
use ws_engine::frame::close_code_valid;

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let chunk = (sel % 17) as usize;
    let limits = Limits {
        max_frame: 1 << 16,
        max_message: 1 << 17,
    };
    let (whole, err_whole) = decode_stream(input, 0, limits);
    let (split, err_split) = decode_stream(input, chunk.max(1), limits);
    assert_eq!(whole, split, "events depend on how the stream is split");
    assert_eq!(
        err_whole, err_split,
        "error depends on how the stream is split"
    );
    let delivered: usize = whole
        .iter()
        .map(|e| match e {
            OwnedEvent::Message(_, d) | OwnedEvent::Ping(d) | OwnedEvent::Pong(d) => d.len(),
            OwnedEvent::Close(_, r) => r.len(),
        })
        .sum();
    assert!(delivered <= input.len(), "more payload than input");
    for e in &whole {
        match e {
            OwnedEvent::Message(kind, d) => {
                assert!(d.len() <= limits.max_message);
                if *kind == MsgKind::Text {
                    assert!(std::str::from_utf8(d).is_ok(), "invalid UTF-8 delivered");
                }
            }
            OwnedEvent::Ping(d) | OwnedEvent::Pong(d) => assert!(d.len() <= 125),
            OwnedEvent::Close(code, reason) => {
                assert!(code.is_none_or(close_code_valid));
                assert!(reason.len() <= 123);
            }
        }
    }
    if let Some(e) = err_whole {
        assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
    }
}
