//! The producer side of the stamp channel (`ws_abi::channel`): every event loop publishes
//! each message's [`MsgProbe`] and its callback's start and end into a ring in a memfd
//! that ws-trace finds through `/proc/PID/fd` and maps.
//!
//! While no tracer holds the ring's lease, [`StampChannel::publish`] is one relaxed load
//! and a compare with the callback's end stamp. While one does, it writes one record
//! (about 150 bytes) and one release store; `head` is stored once per read's batch
//! ([`StampChannel::flush`]). It never blocks and never enters the kernel.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use ws_abi::channel::{
    self, CHANNEL_HEADER_SIZE, CHANNEL_HOLD_NS, CHANNEL_MAGIC, CHANNEL_NAME_PREFIX,
    CHANNEL_RECORD_SIZE, CHANNEL_TRACER_ENV, CHANNEL_VERSION, ChannelHeader, offsets,
};
use ws_abi::{ABI_VERSION, MsgProbe};

use crate::clock::Clock;

/// Why a channel could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The capacity is not a power of two ≥ 2 (or the ring would not fit in memory).
    #[error("stamp channel capacity {0} is not a power of two of at least 2")]
    Capacity(u32),
    /// A system call failed.
    #[error("stamp channel: {op}: {source}")]
    Os {
        /// The call.
        op: &'static str,
        /// errno.
        source: std::io::Error,
    },
}

fn os(op: &'static str) -> ChannelError {
    ChannelError::Os {
        op,
        source: std::io::Error::last_os_error(),
    }
}

/// Loops created in this process so far: the next loop's number.
static NEXT_LOOP: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This thread's id, once asked for (0: not yet).
    static TID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn current_tid() -> u32 {
    TID.with(|t| {
        let mut tid = t.get();
        if tid == 0 {
            // SAFETY: plain syscall without arguments.
            tid = unsafe { libc::gettid() } as u32;
            t.set(tid);
        }
        tid
    })
}

/// Conversions of raw stamps to ns kept from the last record written.
#[derive(Clone, Copy, Debug, Default)]
struct Memo {
    /// A read's raw `event`, `recv_start`, `recv_end`, `decrypt_start`...
    read: [u64; 4],
    /// ... in ns.
    read_ns: [u64; 4],
    /// The last other stamp converted (a callback's end) and its ns.
    last: u64,
    last_ns: u64,
}

/// One event loop's stamp ring, mapped in this process.
pub struct StampChannel {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
    mask: u64,
    /// The next position (the header's `head` once flushed).
    head: u64,
    /// The `head` last stored in the header.
    flushed: u64,
    /// Whether the ring's pages have been mapped in (at the first record written).
    populated: bool,
    /// The last stamps converted for a record: the stamps of one read (and a callback's
    /// end, which is the next message's start) repeat record after record.
    memo: Memo,
    name: String,
    loop_id: u32,
}

// SAFETY: the mapping is owned by this value and only reached through it (and by other
// processes through the shared file, which the protocol accounts for); moving it to
// another thread moves that ownership.
unsafe impl Send for StampChannel {}

impl std::fmt::Debug for StampChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StampChannel")
            .field("name", &self.name)
            .field("capacity", &(self.mask + 1))
            .field("head", &self.head)
            .finish()
    }
}

impl StampChannel {
    /// Creates the memfd `ws-engine-stamps:<pid>:<loop>` with `capacity` slots and maps
    /// it. If this process's environment names a tracer ([`CHANNEL_TRACER_ENV`]), the ring
    /// starts leased to it for [`CHANNEL_HOLD_NS`].
    pub fn create(capacity: u32) -> Result<StampChannel, ChannelError> {
        if capacity < 2 || !capacity.is_power_of_two() {
            return Err(ChannelError::Capacity(capacity));
        }
        let pid = std::process::id();
        let loop_id = NEXT_LOOP.fetch_add(1, Ordering::Relaxed);
        let name = format!("{CHANNEL_NAME_PREFIX}{pid}:{loop_id}");
        let cname = CString::new(name.clone()).map_err(|_| ChannelError::Capacity(capacity))?;
        // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(os("memfd_create"));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = channel::channel_bytes(capacity);
        let size = libc::off_t::try_from(len).map_err(|_| ChannelError::Capacity(capacity))?;
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(os("ftruncate"));
        }
        // SAFETY: a new shared mapping of the whole file; nothing else is mapped there.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os("mmap"));
        }
        let Some(base) = NonNull::new(ptr.cast::<u8>()) else {
            return Err(os("mmap"));
        };
        let chan = StampChannel {
            fd,
            base,
            len,
            mask: u64::from(capacity) - 1,
            head: 0,
            flushed: 0,
            populated: false,
            memo: Memo::default(),
            name,
            loop_id,
        };
        let header = ChannelHeader {
            magic: 0,
            version: CHANNEL_VERSION,
            header_size: CHANNEL_HEADER_SIZE as u32,
            record_size: CHANNEL_RECORD_SIZE as u32,
            capacity,
            abi_version: ABI_VERSION,
            pid,
            loop_id,
            ..ChannelHeader::default()
        };
        // SAFETY: the mapping starts with room for a header (page-aligned, `len` bytes);
        // no tracer reads it before `magic` is set below.
        unsafe { std::ptr::write(chan.base.as_ptr().cast::<ChannelHeader>(), header) };
        if let Some(tracer) = std::env::var(CHANNEL_TRACER_ENV)
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|&p| p != 0)
        {
            chan.tracer_pid().store(tracer, Ordering::Relaxed);
            // SAFETY: as `tracer_pid`.
            unsafe { channel::atomic_u32(chan.base.as_ptr(), offsets::FLAGS) }
                .store(channel::FLAG_PROVISIONAL, Ordering::Relaxed);
            chan.lease().store(
                Clock::monotonic_now_ns() + CHANNEL_HOLD_NS,
                Ordering::Relaxed,
            );
        }
        chan.atomic64(offsets::MAGIC)
            .store(CHANNEL_MAGIC, Ordering::Release);
        Ok(chan)
    }

    fn atomic64(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: every header offset used is 8-aligned inside the mapping, which lives as
        // long as `self`; both sides access these words atomically only.
        unsafe { channel::atomic_u64(self.base.as_ptr(), offset) }
    }

    fn lease(&self) -> &AtomicU64 {
        self.atomic64(offsets::LEASE)
    }

    fn tracer_pid(&self) -> &AtomicU32 {
        // SAFETY: as `atomic64`, 4-aligned.
        unsafe { channel::atomic_u32(self.base.as_ptr(), offsets::TRACER_PID) }
    }

    /// The memfd's name, `ws-engine-stamps:<pid>:<loop>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The loop's number in this process.
    pub fn loop_id(&self) -> u32 {
        self.loop_id
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Records published so far.
    pub fn published(&self) -> u64 {
        self.head
    }

    /// Whether a tracer holds a lease now (as of its last renewal).
    pub fn leased(&self) -> bool {
        self.lease().load(Ordering::Relaxed) > Clock::monotonic_now_ns()
    }

    /// Whether a tracer has claimed the channel (its lease is set, expired or not; an
    /// expired one is cleared at the next publish): one relaxed load, no clock read.
    #[inline(always)]
    pub fn claimed(&self) -> bool {
        self.lease().load(Ordering::Relaxed) != 0
    }

    /// Whether message `msg_seq` of its connection is to be stamped and published: a
    /// tracer has claimed the channel and the message is in its sample
    /// ([`ws_abi::channel::ChannelHeader::sample_shift`]; two relaxed loads of one line).
    #[inline(always)]
    pub fn sampled(&self, msg_seq: u64) -> bool {
        self.claimed() && self.in_sample(msg_seq)
    }

    /// Leases this engine found expired and cleared.
    pub fn lapses(&self) -> u64 {
        self.atomic64(offsets::LAPSES).load(Ordering::Relaxed)
    }

    /// Publishes one message's record if a tracer holds the lease at `done_ns`. The
    /// record becomes visible to the tracer at the next [`flush`](Self::flush).
    #[inline(always)]
    pub fn publish(&mut self, probe: &MsgProbe, start_ns: u64, done_ns: u64) {
        let lease = self.lease().load(Ordering::Relaxed);
        if lease > done_ns {
            self.write(probe, None, start_ns, done_ns);
        } else if lease != 0 {
            self.expire(lease);
        }
    }

    /// As [`publish`](Self::publish) for a probe holding raw stamps of `clock`, with the
    /// callback's raw `start` and `done`: converted to CLOCK_MONOTONIC ns as the record is
    /// written, so while no tracer holds the ring this is one relaxed load and a branch;
    /// while a sampling tracer holds it, a message outside its sample costs a second load
    /// and a mask, nothing converted (the sampled ones find an expired lease).
    #[inline(always)]
    pub fn publish_raw(&mut self, probe: &MsgProbe, clock: &Clock, start: u64, done: u64) {
        let lease = self.lease().load(Ordering::Relaxed);
        if lease != 0 && self.in_sample(probe.msg_seq) {
            self.publish_raw_leased(lease, probe, clock, start, done);
        }
    }

    /// Whether message `msg_seq` is in the sample the tracer asked for.
    #[inline(always)]
    fn in_sample(&self, msg_seq: u64) -> bool {
        // SAFETY: as `atomic64`, 4-aligned.
        let shift = unsafe { channel::atomic_u32(self.base.as_ptr(), offsets::SAMPLE_SHIFT) }
            .load(Ordering::Relaxed);
        channel::sampled(msg_seq, shift)
    }

    #[inline(never)]
    fn publish_raw_leased(
        &mut self,
        lease: u64,
        probe: &MsgProbe,
        clock: &Clock,
        start: u64,
        done: u64,
    ) {
        let done_ns = clock.to_ns(done);
        if lease > done_ns {
            let s = &probe.stamps;
            let m = &mut self.memo;
            // The read's stamps are the same for each of its messages: convert them once.
            if s.recv_end_ns != m.read[2] || s.event_ns != m.read[0] {
                m.read = [
                    s.event_ns,
                    s.recv_start_ns,
                    s.recv_end_ns,
                    s.decrypt_start_ns,
                ];
                m.read_ns = m.read.map(|t| clock.to_ns(t));
            }
            // `parsed`, `callback` and `start` are usually one stamp, the previous
            // message's `done`.
            let mut conv = |t: u64| {
                if t == m.last {
                    m.last_ns
                } else {
                    let ns = clock.to_ns(t);
                    (m.last, m.last_ns) = (t, ns);
                    ns
                }
            };
            let parsed_ns = conv(s.parsed_ns);
            let callback_ns = conv(s.callback_ns);
            let start_ns = conv(start);
            let stamps = ws_abi::MsgStamps {
                event_ns: m.read_ns[0],
                recv_start_ns: m.read_ns[1],
                recv_end_ns: m.read_ns[2],
                decrypt_start_ns: m.read_ns[3],
                parsed_ns,
                callback_ns,
            };
            (m.last, m.last_ns) = (done, done_ns);
            self.write(probe, Some(&stamps), start_ns, done_ns);
        } else {
            self.expire(lease);
        }
    }

    /// Makes the records written since the last flush visible to the tracer: one release
    /// store of `head` per batch (the engine calls this after each read's messages), not
    /// one per record. Nothing to do (one compare) when nothing was written.
    #[inline(always)]
    pub fn flush(&mut self) {
        if self.head != self.flushed {
            self.flushed = self.head;
            self.atomic64(offsets::HEAD)
                .store(self.head, Ordering::Release);
        }
    }

    /// Writes the slot at `head`. `stamps`: the probe's stamps in ns when its own are raw.
    #[inline(never)]
    fn write(
        &mut self,
        probe: &MsgProbe,
        stamps: Option<&ws_abi::MsgStamps>,
        start_ns: u64,
        done_ns: u64,
    ) {
        if !self.populated {
            self.populate();
        }
        let pos = self.head;
        let slot = CHANNEL_HEADER_SIZE + (pos & self.mask) as usize * CHANNEL_RECORD_SIZE;
        let seq = self.atomic64(slot + offsets::RECORD_SEQ);
        seq.store(0, Ordering::Relaxed);
        // The 0 is visible before any byte of the new record.
        fence(Ordering::Release);
        // SAFETY: plain syscall without arguments (glibc reads it from rseq or the vDSO).
        let cpu = unsafe { libc::sched_getcpu() }.max(0) as u32;
        let rec = self
            .base
            .as_ptr()
            .wrapping_add(slot)
            .cast::<ws_abi::ChannelRecord>();
        // SAFETY: the slot lies inside the mapping and is 8-aligned; the tracer may read it
        // concurrently, which the seq protocol detects (it copies, then re-checks `seq`),
        // so volatile writes of these plain-integer fields (all but `seq`) are enough.
        // The probe is copied once, straight from the engine's struct into the slot.
        unsafe {
            std::ptr::write_volatile(&raw mut (*rec).tid, current_tid());
            std::ptr::write_volatile(&raw mut (*rec).cpu, cpu);
            std::ptr::write_volatile(&raw mut (*rec).probe, *probe);
            if let Some(stamps) = stamps {
                std::ptr::write_volatile(&raw mut (*rec).probe.stamps, *stamps);
            }
            std::ptr::write_volatile(&raw mut (*rec).start_ns, start_ns);
            std::ptr::write_volatile(&raw mut (*rec).done_ns, done_ns);
        }
        seq.store(pos + 1, Ordering::Release);
        self.head = pos + 1;
        // The next slot's lines were last read by the tracer (or left the cache a lap
        // ago): ask for them in exclusive state now, so the next record's stores do not
        // wait for them.
        #[cfg(target_arch = "x86_64")]
        {
            let next = CHANNEL_HEADER_SIZE + (self.head & self.mask) as usize * CHANNEL_RECORD_SIZE;
            let p = self.base.as_ptr().wrapping_add(next);
            for line in [0, 64, CHANNEL_RECORD_SIZE - 1] {
                // SAFETY: `prefetchw` is a hint: it never faults, writes nothing and
                // changes no register or flag (a nop where unsupported); the address lies
                // inside the mapping (the slot `next` is in it).
                unsafe {
                    core::arch::asm!(
                        "prefetchw [{0}]",
                        in(reg) p.wrapping_add(line),
                        options(nostack, preserves_flags, readonly)
                    )
                };
            }
        }
    }

    /// Maps every page of the ring in with one system call when the first record is
    /// written, instead of one page fault per 4 KiB of records during the first lap
    /// (~2300 for the default 9 MiB ring). The tracer populated the memfd's pages when it
    /// mapped it, so this only fills this process's page table. Best effort: without
    /// `MADV_POPULATE_WRITE` (before Linux 5.14) the pages fault in as they are written.
    #[cold]
    #[inline(never)]
    fn populate(&mut self) {
        self.populated = true;
        // SAFETY: advice on exactly the mapping made in `create`; populating does not
        // change its contents.
        unsafe {
            libc::madvise(
                self.base.as_ptr().cast(),
                self.len,
                libc::MADV_POPULATE_WRITE,
            )
        };
    }

    #[cold]
    #[inline(never)]
    fn expire(&self, lease: u64) {
        // Only the holder's renewal races with this; if it wins, the lease is live again.
        if self
            .lease()
            .compare_exchange(lease, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.atomic64(offsets::LAPSES)
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for StampChannel {
    fn drop(&mut self) {
        self.flush();
        // A tracer holding the lease gets a bounded moment to read the last records.
        let deadline = Clock::monotonic_now_ns() + channel::CHANNEL_DRAIN_WAIT_NS;
        while self.head > self.atomic64(offsets::CONSUMED).load(Ordering::Acquire)
            && self.leased()
            && Clock::monotonic_now_ns() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // SAFETY: unmaps exactly the mapping made in `create`; nothing refers to it after.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(c: &StampChannel) -> ChannelHeader {
        // SAFETY: the mapping starts with a header; a racy read is fine in this test
        // (single-threaded, no tracer).
        unsafe { std::ptr::read_volatile(c.base.as_ptr().cast::<ChannelHeader>()) }
    }

    #[test]
    fn publishes_only_while_leased_and_clears_an_expired_lease() {
        let mut c = StampChannel::create(8).expect("create");
        let h = header(&c);
        assert_eq!(h.magic, CHANNEL_MAGIC);
        assert_eq!(h.capacity, 8);
        assert_eq!(h.pid, std::process::id());
        assert!(c.name().starts_with(CHANNEL_NAME_PREFIX));
        let link =
            std::fs::read_link(format!("/proc/self/fd/{}", c.fd().as_raw_fd())).expect("readlink");
        assert!(
            link.to_string_lossy().contains(c.name()),
            "{}",
            link.display()
        );
        let p = MsgProbe {
            msg_seq: 3,
            ..MsgProbe::default()
        };
        c.publish(&p, 10, 20);
        assert_eq!(c.published(), 0, "no lease: nothing written");
        c.lease().store(1_000, Ordering::Relaxed);
        c.publish(&p, 10, 20);
        assert_eq!(c.published(), 1);
        assert_eq!(header(&c).head, 0, "visible only once flushed");
        c.flush();
        assert_eq!(header(&c).head, 1);
        // SAFETY: slot 0 follows the header inside the mapping.
        let rec = unsafe {
            std::ptr::read_volatile(
                c.base
                    .as_ptr()
                    .add(CHANNEL_HEADER_SIZE)
                    .cast::<ws_abi::ChannelRecord>(),
            )
        };
        assert_eq!(
            (rec.seq, rec.probe.msg_seq, rec.start_ns, rec.done_ns),
            (1, 3, 10, 20)
        );
        assert_eq!(rec.tid, current_tid());
        // The lease ran out: the engine clears it once and counts the lapse.
        c.publish(&p, 1_500, 2_000);
        assert_eq!(c.published(), 1);
        assert_eq!(c.lease().load(Ordering::Relaxed), 0);
        assert_eq!(c.lapses(), 1);
        c.publish(&p, 2_500, 3_000);
        assert_eq!(c.lapses(), 1);
        // Expired: dropping it does not wait for a reader.
        let t = std::time::Instant::now();
        drop(c);
        assert!(t.elapsed() < std::time::Duration::from_millis(500));
    }

    #[test]
    fn rejects_bad_capacities() {
        assert!(matches!(
            StampChannel::create(3),
            Err(ChannelError::Capacity(3))
        ));
        assert!(StampChannel::create(0).is_err());
    }
}
