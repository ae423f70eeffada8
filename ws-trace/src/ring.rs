//! Reading the event ring: wait for the kernel to say records are ready, then drain them.
use std::{os::fd::AsFd, time::Duration};

use aya::maps::{MapData, RingBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::decode::{Event, decode};

/// Failure while waiting on the ring.
#[derive(Debug, thiserror::Error)]
#[error("waiting for ring-buffer records: {0}")]
pub struct RingError(#[from] nix::Error);

/// Drains decoded events from the probes' ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
    decode_errors: u64,
}

impl EventReader {
    /// Wraps a ring taken from the probe object.
    pub fn new(ring: RingBuf<MapData>) -> EventReader {
        EventReader {
            ring,
            decode_errors: 0,
        }
    }

    /// Records that could not be decoded so far (an ABI mismatch if ever non-zero).
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// Waits up to `timeout` for records, then hands every available event, with its raw
    /// record bytes, to `f`. Returns how many events were handed over. A signal ends the
    /// wait early.
    pub fn poll(
        &mut self,
        timeout: Duration,
        f: impl FnMut(&[u8], Event),
    ) -> Result<usize, RingError> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.ring.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(self.drain(f))
    }

    /// Hands every record available now to `f`, without waiting.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8], Event)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            match decode(&item) {
                Ok(event) => {
                    n += 1;
                    f(&item, event);
                }
                Err(_) => self.decode_errors += 1,
            }
        }
        n
    }
}
