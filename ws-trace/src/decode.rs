//! Turning ring-buffer records into typed events.
use ws_abi::{EventHeader, ProbeKind, SkbEvent, SoftirqEvent};

/// A record that is not a valid event of this ABI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its header or than its kind's record.
    #[error("record of {got} bytes is shorter than the {need} its kind needs")]
    Short {
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A kind this ABI does not know.
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
}

/// One decoded probe event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `netif_receive_skb`.
    Skb(SkbEvent),
    /// A NET_RX softirq raise, entry or exit (see the header's kind).
    Softirq(SoftirqEvent),
}

impl Event {
    /// The common header.
    pub fn header(&self) -> &EventHeader {
        match self {
            Event::Skb(e) => &e.hdr,
            Event::Softirq(e) => &e.hdr,
        }
    }

    /// The probe that produced it.
    pub fn kind(&self) -> ProbeKind {
        // Decoding only builds events of known kinds.
        ProbeKind::from_u16(self.header().kind).unwrap_or(ProbeKind::NetifReceiveSkb)
    }
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            got: bytes.len(),
            need,
        });
    }
    // SAFETY: the length was checked above; every T read here is a #[repr(C)] record of
    // plain integers (aya::Pod), valid for any bit pattern; read_unaligned has no
    // alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let hdr: EventHeader = read(bytes)?;
    let kind = ProbeKind::from_u16(hdr.kind).ok_or(DecodeError::UnknownKind(hdr.kind))?;
    Ok(match kind {
        ProbeKind::NetifReceiveSkb => Event::Skb(read(bytes)?),
        ProbeKind::SoftirqRaise | ProbeKind::SoftirqEntry | ProbeKind::SoftirqExit => {
            Event::Softirq(read(bytes)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a #[repr(C)] record without padding bytes (checked in ws-abi).
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn round_trips_and_rejects() {
        let e = SkbEvent {
            hdr: EventHeader {
                ts_ns: 42,
                kind: ProbeKind::NetifReceiveSkb as u16,
                cpu: 1,
                tid: 7,
                tgid: 7,
                _pad: 0,
            },
            skb: 0xffff_0000,
            len: 1500,
            ifindex: 1,
        };
        let raw = bytes_of(&e);
        assert_eq!(decode(&raw), Ok(Event::Skb(e)));
        assert_eq!(
            decode(&raw[..30]),
            Err(DecodeError::Short { got: 30, need: 40 })
        );
        let mut bad = raw.clone();
        bad[8] = 0xff;
        bad[9] = 0x7f;
        assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(0x7fff)));
    }
}
