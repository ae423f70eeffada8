//! Mirrored ring buffer: one memfd mapped twice back to back.
//!
//! The same physical pages appear at `base` and at `base + capacity`, so the readable
//! bytes (and the free space) are always one contiguous slice even when they wrap: a
//! frame is parsed in place and handed out as `&[u8]` without ever being copied.
//! Positions are 64-bit totals since creation (`read_pos`, `write_pos`), so the stream
//! offset of any byte is known exactly.

use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// Errors of the ring module.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The capacity asked for is not a power of two multiple of the page size.
    #[error("ring capacity {0} must be a power of two and a multiple of the page size")]
    BadCapacity(usize),
    /// A system call needed to build the mapping failed.
    #[error("{op} failed: {source}")]
    Sys {
        /// The failing call.
        op: &'static str,
        /// errno.
        source: std::io::Error,
    },
}

fn sys_err(op: &'static str) -> RingError {
    RingError::Sys {
        op,
        source: std::io::Error::last_os_error(),
    }
}

/// Page size of the machine.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p <= 0 { 4096 } else { p as usize }
}

/// A mirrored ring of bytes.
pub struct MirroredRing {
    base: NonNull<u8>,
    cap: usize,
    read_pos: u64,
    write_pos: u64,
    _memfd: OwnedFd,
}

// SAFETY: the ring owns its mapping exclusively; moving it to another thread moves
// that ownership. It is not Sync (no shared access without &mut).
unsafe impl Send for MirroredRing {}

impl MirroredRing {
    /// Smallest power-of-two, page-multiple capacity holding at least `min` bytes.
    pub fn round_capacity(min: usize) -> usize {
        min.max(page_size()).next_power_of_two()
    }

    /// Creates a ring of `capacity` bytes (a power of two, a multiple of the page size).
    pub fn new(capacity: usize) -> Result<MirroredRing, RingError> {
        if !capacity.is_power_of_two() || !capacity.is_multiple_of(page_size()) {
            return Err(RingError::BadCapacity(capacity));
        }
        let name = c"ws-engine-ring";
        // SAFETY: `name` is a valid NUL-terminated string.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(sys_err("memfd_create"));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain syscall on a valid fd.
        if unsafe { libc::ftruncate(memfd.as_raw_fd(), capacity as libc::off_t) } != 0 {
            return Err(sys_err("ftruncate"));
        }
        // Reserve 2*capacity of address space, then map the memfd over both halves.
        // SAFETY: anonymous PROT_NONE reservation; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                capacity * 2,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(sys_err("mmap(reserve)"));
        }
        for half in 0..2 {
            // SAFETY: `base + half*capacity .. + capacity` lies inside the reservation we
            // own; MAP_FIXED replaces only our own PROT_NONE pages.
            let p = unsafe {
                libc::mmap(
                    (base as *mut u8).add(half * capacity) as *mut c_void,
                    capacity,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    memfd.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                let e = sys_err("mmap(mirror)");
                // SAFETY: unmapping the reservation we created above.
                unsafe { libc::munmap(base, capacity * 2) };
                return Err(e);
            }
        }
        let Some(base) = NonNull::new(base as *mut u8) else {
            return Err(sys_err("mmap(null)"));
        };
        Ok(MirroredRing {
            base,
            cap: capacity,
            read_pos: 0,
            write_pos: 0,
            _memfd: memfd,
        })
    }

    /// Capacity in bytes.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes written and not yet consumed.
    #[inline]
    pub fn len(&self) -> usize {
        (self.write_pos - self.read_pos) as usize
    }

    /// Whether no bytes are readable.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.write_pos == self.read_pos
    }

    /// Free bytes.
    #[inline]
    pub fn free(&self) -> usize {
        self.cap - self.len()
    }

    /// Total bytes consumed since creation (stream offset of the first readable byte).
    #[inline]
    pub fn read_pos(&self) -> u64 {
        self.read_pos
    }

    /// Total bytes written since creation (stream offset one past the last readable byte).
    #[inline]
    pub fn write_pos(&self) -> u64 {
        self.write_pos
    }

    /// The readable bytes, one contiguous slice.
    #[inline]
    pub fn readable(&self) -> &[u8] {
        let off = (self.read_pos as usize) & (self.cap - 1);
        // SAFETY: off < cap and len <= cap, so [off, off+len) lies inside the 2*cap
        // mirrored mapping; those bytes were written (initialised) by `commit`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(off), self.len()) }
    }

    /// The readable bytes, mutable (used to unmask in place on the server side).
    #[inline]
    pub fn readable_mut(&mut self) -> &mut [u8] {
        let off = (self.read_pos as usize) & (self.cap - 1);
        // SAFETY: as in `readable`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(off), self.len()) }
    }

    /// The free space, one contiguous slice; write into it and then [`commit`](Self::commit).
    #[inline]
    pub fn writable(&mut self) -> &mut [u8] {
        let off = (self.write_pos as usize) & (self.cap - 1);
        // SAFETY: off < cap and free <= cap: inside the mapping. The free region does not
        // overlap the readable one (they are disjoint modulo cap), and `&mut self`
        // guarantees no readable slice is alive. Memory of a memfd is zero-initialised.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(off), self.free()) }
    }

    /// Marks `n` bytes of [`writable`](Self::writable) as written.
    #[inline]
    pub fn commit(&mut self, n: usize) {
        debug_assert!(n <= self.free());
        self.write_pos += n.min(self.free()) as u64;
    }

    /// Drops `n` readable bytes.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.read_pos += n.min(self.len()) as u64;
    }

    /// Appends bytes (used by tests and by transports that copy).
    pub fn push(&mut self, data: &[u8]) -> usize {
        let w = self.writable();
        let n = w.len().min(data.len());
        w[..n].copy_from_slice(&data[..n]);
        self.commit(n);
        n
    }

    /// Replaces this ring by one of at least `min_capacity` bytes, keeping the readable
    /// bytes and both stream positions.
    pub fn grow(&mut self, min_capacity: usize) -> Result<(), RingError> {
        let cap = Self::round_capacity(min_capacity);
        if cap <= self.cap {
            return Ok(());
        }
        let mut next = MirroredRing::new(cap)?;
        // Offsets are taken modulo the capacity, so start the new ring at the same stream
        // position and copy the unread bytes in.
        next.read_pos = self.read_pos;
        next.write_pos = self.read_pos;
        let n = next.push(self.readable());
        debug_assert_eq!(n, self.len());
        std::mem::swap(self, &mut next);
        Ok(())
    }
}

impl Drop for MirroredRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the 2*cap region this ring mapped; no slices into it
        // outlive `self`.
        unsafe { libc::munmap(self.base.as_ptr() as *mut c_void, self.cap * 2) };
    }
}

impl std::fmt::Debug for MirroredRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirroredRing")
            .field("capacity", &self.cap)
            .field("read_pos", &self.read_pos)
            .field("write_pos", &self.write_pos)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_capacity() {
        assert!(matches!(
            MirroredRing::new(3000),
            Err(RingError::BadCapacity(3000))
        ));
        assert!(MirroredRing::new(page_size() * 3).is_err());
    }

    #[test]
    fn wrapped_data_is_contiguous() {
        let cap = page_size();
        let mut r = MirroredRing::new(cap).unwrap();
        // Move the positions close to the end, then write across the wrap point.
        let filler = vec![0xAAu8; cap - 10];
        assert_eq!(r.push(&filler), cap - 10);
        r.consume(cap - 10);
        let data: Vec<u8> = (0..100u8).collect();
        assert_eq!(r.push(&data), 100);
        assert_eq!(r.readable(), &data[..]);
        assert_eq!(r.read_pos(), (cap - 10) as u64);
        assert_eq!(r.write_pos(), (cap + 90) as u64);
        // The mirror: the wrapped tail lives at the start of the first mapping too.
        r.consume(10);
        assert_eq!(r.readable(), &data[10..]);
        assert_eq!(r.free(), cap - 90);
    }

    #[test]
    fn full_ring_has_no_free_space() {
        let cap = page_size();
        let mut r = MirroredRing::new(cap).unwrap();
        assert_eq!(r.push(&vec![1u8; cap + 5]), cap);
        assert_eq!(r.free(), 0);
        assert!(r.writable().is_empty());
    }

    #[test]
    fn grow_keeps_bytes_and_positions() {
        let cap = page_size();
        let mut r = MirroredRing::new(cap).unwrap();
        r.push(&vec![7u8; cap - 3]);
        r.consume(cap - 3);
        let data: Vec<u8> = (0..=255u8).cycle().take(cap).collect();
        assert_eq!(r.push(&data), cap);
        r.grow(cap * 3).unwrap();
        assert_eq!(r.capacity(), cap * 4);
        assert_eq!(r.readable(), &data[..]);
        assert_eq!(r.read_pos(), (cap - 3) as u64);
        assert_eq!(r.write_pos(), (2 * cap - 3) as u64);
        assert_eq!(r.push(&data), cap);
        assert_eq!(&r.readable()[cap..], &data[..]);
    }
}
