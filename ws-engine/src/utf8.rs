//! Incremental UTF-8 validation of text messages.
//!
//! Whole payloads go through `simdutf8` (SIMD, with an ASCII fast path). Fragmented
//! messages are validated fragment by fragment as they arrive, carrying an incomplete
//! code point (at most 3 bytes) across fragment boundaries, so an invalid sequence is
//! rejected as soon as the fragment holding it arrives.

/// Invalid UTF-8 in a text message or close reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Utf8Error {
    /// A byte sequence that can never be valid UTF-8.
    #[error("invalid UTF-8 sequence")]
    Invalid,
    /// The message ended inside a multi-byte code point.
    #[error("text ends inside a multi-byte UTF-8 sequence")]
    Truncated,
}

/// Validates a complete text payload.
#[inline]
pub fn validate(data: &[u8]) -> Result<(), Utf8Error> {
    match simdutf8::basic::from_utf8(data) {
        Ok(_) => Ok(()),
        // Cold path: classify the failure the same way the incremental validator does.
        Err(_) => match simdutf8::compat::from_utf8(data) {
            Err(e) if e.error_len().is_none() => Err(Utf8Error::Truncated),
            _ => Err(Utf8Error::Invalid),
        },
    }
}

/// Validator for a text message that arrives in pieces.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    partial: [u8; 4],
    partial_len: usize,
}

fn seq_len(first: u8) -> usize {
    match first {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

impl Utf8Stream {
    /// A fresh validator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets any carried partial code point.
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }

    /// Feeds the next piece; `fin` says it is the last one of the message.
    pub fn feed(&mut self, mut data: &[u8], fin: bool) -> Result<(), Utf8Error> {
        if self.partial_len > 0 {
            let need = seq_len(self.partial[0]);
            while self.partial_len < need {
                let Some((&b, rest)) = data.split_first() else {
                    break;
                };
                self.partial[self.partial_len] = b;
                self.partial_len += 1;
                data = rest;
                // Fail fast on a prefix that can never complete.
                if let Err(e) = std::str::from_utf8(&self.partial[..self.partial_len])
                    && e.error_len().is_some()
                {
                    self.partial_len = 0;
                    return Err(Utf8Error::Invalid);
                }
            }
            if self.partial_len < need {
                return if fin {
                    Err(Utf8Error::Truncated)
                } else {
                    Ok(())
                };
            }
            let ok = std::str::from_utf8(&self.partial[..need]).is_ok();
            self.partial_len = 0;
            if !ok {
                return Err(Utf8Error::Invalid);
            }
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(Utf8Error::Invalid),
                None => {
                    if fin {
                        return Err(Utf8Error::Truncated);
                    }
                    let tail = &data[e.valid_up_to()..];
                    if tail.len() > 3 {
                        return Err(Utf8Error::Invalid);
                    }
                    self.partial[..tail.len()].copy_from_slice(tail);
                    self.partial_len = tail.len();
                    Ok(())
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(s: &[u8]) -> Result<(), Utf8Error> {
        for cut1 in 0..=s.len() {
            for cut2 in cut1..=s.len() {
                let mut v = Utf8Stream::new();
                v.feed(&s[..cut1], false)?;
                v.feed(&s[cut1..cut2], false)?;
                v.feed(&s[cut2..], true)?;
            }
        }
        Ok(())
    }

    #[test]
    fn valid_text_in_any_split() {
        let s = "κόσμε-😀-€-ascii".as_bytes();
        assert!(validate(s).is_ok());
        split_all(s).unwrap();
    }

    #[test]
    fn invalid_sequences_rejected_in_any_split() {
        let cases: [&[u8]; 6] = [
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"\xc0\xaf",
            b"ab\xf4\x90\x80\x80",
            b"\xff",
            b"\xed\xa0\x80",
            b"\xe0\x80\xaf",
        ];
        for c in cases {
            assert!(validate(c).is_err());
            // Any way of splitting it must also fail somewhere.
            for cut in 0..=c.len() {
                let mut v = Utf8Stream::new();
                let r = v
                    .feed(&c[..cut], false)
                    .and_then(|_| v.feed(&c[cut..], true));
                assert!(r.is_err(), "{c:?} cut {cut}");
            }
        }
    }

    #[test]
    fn whole_and_incremental_agree_on_the_error() {
        // Found by the fuzzer: a text frame ending inside a code point.
        assert_eq!(validate(b"\xe2\x82"), Err(Utf8Error::Truncated));
        let mut v = Utf8Stream::new();
        v.feed(b"\xe2", false).unwrap();
        assert_eq!(v.feed(b"\x82", true), Err(Utf8Error::Truncated));
        assert_eq!(validate(b"\xe2\x82A"), Err(Utf8Error::Invalid));
    }

    #[test]
    fn truncated_at_end_is_error() {
        let mut v = Utf8Stream::new();
        v.feed(b"ab\xe2\x82", false).unwrap();
        assert_eq!(v.feed(b"", true), Err(Utf8Error::Truncated));
    }

    #[test]
    fn fails_fast_on_bad_continuation() {
        let mut v = Utf8Stream::new();
        v.feed(b"\xf4", false).unwrap();
        assert_eq!(v.feed(b"\x90", false), Err(Utf8Error::Invalid));
    }
}
