//! The tracer side of the engine's stamp channel (`ws_abi::channel`): find each event
//! loop's ring in `/proc/PID/fd`, map it, hold its lease, drain its records into the same
//! [`Event::Callback`] / [`Event::CallbackDone`] events the callback uprobes produce
//! (stamped with the engine's own clock), and count every record that was lost.
use std::{
    collections::{BTreeSet, HashSet},
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, AtomicU64, Ordering, fence},
    time::{Duration, Instant},
};

use ws_abi::{
    CallbackDoneEvent, CallbackEvent, ChannelRecord, EventHeader, ProbeKind,
    channel::{
        self, CHANNEL_ATTACH, CHANNEL_HEADER_SIZE, CHANNEL_MAGIC, CHANNEL_NAME_PREFIX,
        CHANNEL_RECORD_SIZE, CHANNEL_VERSION, FLAG_PROVISIONAL, LEASE_NS, LEASE_RENEW_NS, offsets,
    },
};

use crate::decode::Event;

/// Why a ring was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Opening, reading or mapping it failed.
    #[error("stamp channel {path}: {source}")]
    Io {
        /// `/proc/PID/fd/N`.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It comes from an engine with another channel layout.
    #[error(
        "stamp channel {name} has layout version {found}; this ws-trace reads version {supported}{}",
        if *found > *supported { " (the engine is newer: upgrade ws-trace, or trace it with --engine-uprobes)" } else { "" }
    )]
    Version {
        /// The memfd's name.
        name: String,
        /// Its version.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// Its header does not describe a ring that fits its file.
    #[error("stamp channel {name}: bad layout ({what})")]
    Layout {
        /// The memfd's name.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// Another tracer holds it.
    #[error(
        "stamp channel {name}: engine pid {pid} is already traced by pid {tracer} (its lease is live); stop that tracer first, or use --engine-uprobes"
    )]
    Busy {
        /// The memfd's name.
        name: String,
        /// The engine's pid.
        pid: u32,
        /// The tracer holding it.
        tracer: u32,
    },
}

/// What the rings delivered and lost so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelStats {
    /// Rings held.
    pub rings: u64,
    /// Records read.
    pub records: u64,
    /// Records lost: overwritten before they were read (the tracer drained too slowly).
    pub drops: u64,
    /// Times a lease lapsed (the tracer stalled past it): the messages of those gaps
    /// were not published at all, so they are not in `drops`.
    pub lapses: u64,
}

impl std::ops::AddAssign for ChannelStats {
    fn add_assign(&mut self, o: ChannelStats) {
        self.rings += o.rings;
        self.records += o.records;
        self.drops += o.drops;
        self.lapses += o.lapses;
    }
}

fn monotonic_ns() -> u64 {
    ws_engine::clock::Clock::monotonic_now_ns()
}

fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// One engine event loop's ring, held by this tracer.
pub struct ChannelReader {
    map: memmap2::MmapRaw,
    name: String,
    /// The engine's pid as the kernel (and the probes) see it: the one in the ring's
    /// `/proc/PID/fd` path.
    pid: u32,
    /// The pid the engine wrote in its header: its own PID namespace's.
    ns_pid: u32,
    /// The engine's thread ids in its namespace → the kernel's (empty when they agree).
    tids: std::collections::HashMap<u32, u32>,
    loop_id: u32,
    mask: u64,
    record_size: usize,
    header_size: usize,
    tail: u64,
    lease: u64,
    renewed: u64,
    me: u32,
    lost: bool,
    stats: ChannelStats,
}

impl ChannelReader {
    /// Maps the ring at `path` (`/proc/PID/fd/N`) named `name` and claims its lease.
    /// `Ok(None)`: the engine has not finished setting it up; try again later.
    pub fn open(path: &Path, name: &str) -> Result<Option<ChannelReader>, ChannelError> {
        let io = |source| ChannelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let layout = |what: String| ChannelError::Layout {
            name: name.to_string(),
            what,
        };
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < CHANNEL_HEADER_SIZE as u64 {
            return Ok(None);
        }
        let map = memmap2::MmapOptions::new().map_raw(&file).map_err(io)?;
        // Allocate the memfd's pages now, in the tracer, so the engine's first lap over
        // the ring does not fault each one in (it maps them with one call at its first
        // record). Best effort: before Linux 5.14 the engine faults them in as it writes.
        let _ = map.advise(memmap2::Advice::PopulateWrite);
        let base = map.as_mut_ptr();
        // SAFETY: the mapping is page-aligned and at least a header long; the header's
        // shared words are only accessed atomically by both sides.
        let magic = unsafe { channel::atomic_u64(base, offsets::MAGIC) }.load(Ordering::Acquire);
        if magic != CHANNEL_MAGIC {
            return Ok(None);
        }
        // SAFETY: the engine wrote the header's fixed fields before `magic` (release,
        // acquired above) and never writes them again.
        let h = unsafe { std::ptr::read_volatile(base.cast::<ws_abi::ChannelHeader>()) };
        if h.version != CHANNEL_VERSION {
            return Err(ChannelError::Version {
                name: name.to_string(),
                found: h.version,
                supported: CHANNEL_VERSION,
            });
        }
        let (header_size, record_size) = (h.header_size as usize, h.record_size as usize);
        if header_size < CHANNEL_HEADER_SIZE
            || record_size < CHANNEL_RECORD_SIZE
            || header_size % 8 != 0
            || record_size % 8 != 0
            || h.capacity < 2
            || !h.capacity.is_power_of_two()
        {
            return Err(layout(format!(
                "header {header_size} B, record {record_size} B, capacity {}",
                h.capacity
            )));
        }
        let need = header_size as u64 + u64::from(h.capacity) * record_size as u64;
        if need > len {
            return Err(layout(format!("{need} bytes needed, file has {len}")));
        }
        let mut reader = ChannelReader {
            map,
            name: name.to_string(),
            pid: host_pid(path).unwrap_or(h.pid),
            ns_pid: h.pid,
            tids: std::collections::HashMap::new(),
            loop_id: h.loop_id,
            mask: u64::from(h.capacity) - 1,
            record_size,
            header_size,
            tail: 0,
            lease: 0,
            renewed: 0,
            me: std::process::id(),
            lost: false,
            stats: ChannelStats {
                rings: 1,
                ..ChannelStats::default()
            },
        };
        reader.claim()?;
        Ok(Some(reader))
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: the offsets used are 8-aligned inside the mapping (checked against the
        // file's size in `open`), which lives as long as `self`; these words are accessed
        // atomically by both sides.
        unsafe { channel::atomic_u64(self.map.as_mut_ptr(), offset) }
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: as `u64_at`, 4-aligned.
        unsafe { channel::atomic_u32(self.map.as_mut_ptr(), offset) }
    }

    fn claim(&mut self) -> Result<(), ChannelError> {
        let lease = self.u64_at(offsets::LEASE);
        loop {
            let now = monotonic_ns();
            let current = lease.load(Ordering::Acquire);
            let holder = self.u32_at(offsets::TRACER_PID).load(Ordering::Relaxed);
            let provisional =
                self.u32_at(offsets::FLAGS).load(Ordering::Relaxed) & FLAG_PROVISIONAL != 0;
            let mine = provisional && holder == self.me;
            if current > now && !mine && (holder == 0 || pid_alive(holder)) {
                return Err(ChannelError::Busy {
                    name: self.name.clone(),
                    pid: self.pid,
                    tracer: holder,
                });
            }
            let new = now + LEASE_NS;
            if lease
                .compare_exchange(current, new, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.u32_at(offsets::TRACER_PID)
                    .store(self.me, Ordering::Relaxed);
                self.u32_at(offsets::FLAGS).store(0, Ordering::Relaxed);
                // Every message, unless this tracer asks for a sample (a previous
                // tracer's request does not outlive it).
                self.u32_at(offsets::SAMPLE_SHIFT)
                    .store(0, Ordering::Relaxed);
                self.lease = new;
                self.renewed = now;
                // The engine's provisional lease kept its records for us from the start;
                // otherwise what is in the ring is older than this session.
                self.tail = if mine && current > now {
                    0
                } else {
                    self.u64_at(offsets::HEAD).load(Ordering::Acquire)
                };
                self.u64_at(offsets::CONSUMED)
                    .store(self.tail, Ordering::Release);
                return Ok(());
            }
        }
    }

    /// Asks the engine to stamp and publish only the messages whose `msg_seq` is a
    /// multiple of `1 << shift` ([`ws_abi::channel::ChannelHeader::sample_shift`]; 0:
    /// every message). Records outside the sample may still arrive (an engine that
    /// predates sampling, or the moment before it reads the request): the reader's user
    /// keeps only [`ws_abi::channel::sampled`] ones.
    pub fn set_sample_shift(&self, shift: u32) {
        self.u32_at(offsets::SAMPLE_SHIFT)
            .store(shift.min(channel::MAX_SAMPLE_SHIFT), Ordering::Relaxed);
    }

    /// The memfd's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The engine's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Totals of this ring.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// The kernel's id of the engine's thread `tid` (as its own PID namespace numbers
    /// it), so the records join the kernel's scheduler and epoll events of that thread.
    fn kernel_tid(&mut self, tid: u32) -> u32 {
        if self.ns_pid == self.pid {
            return tid;
        }
        if !self.tids.contains_key(&tid) {
            self.tids = thread_ids(self.pid);
        }
        self.tids.get(&tid).copied().unwrap_or(tid)
    }

    /// Whether another tracer took the ring over (after this one stalled past its lease).
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Hands every record published since the last call to `f`, counting the ones that
    /// were overwritten before they could be read; renews the lease when due. Returns the
    /// records handed over.
    pub fn drain(&mut self, mut f: impl FnMut(&ChannelRecord)) -> usize {
        if self.lost {
            return 0;
        }
        let head = self.u64_at(offsets::HEAD).load(Ordering::Acquire);
        let capacity = self.mask + 1;
        if head < self.tail {
            // Only a reset engine could do this; start over from its head.
            self.tail = head;
        }
        if head - self.tail > capacity {
            self.stats.drops += head - capacity - self.tail;
            self.tail = head - capacity;
        }
        let mut n = 0;
        while self.tail < head {
            let pos = self.tail;
            let slot = self.header_size + (pos & self.mask) as usize * self.record_size;
            let seq = self.u64_at(slot + offsets::RECORD_SEQ);
            let before = seq.load(Ordering::Acquire);
            // SAFETY: the slot lies inside the mapping (checked in `open`) and is 8-aligned;
            // the engine may be overwriting it, which the re-check of `seq` below detects
            // (a torn copy is discarded and counted, never used). Every bit pattern is a
            // valid `ChannelRecord` (plain integers).
            let rec = unsafe {
                std::ptr::read_volatile(self.map.as_mut_ptr().add(slot).cast::<ChannelRecord>())
            };
            fence(Ordering::Acquire);
            let after = seq.load(Ordering::Relaxed);
            if before == pos + 1 && after == before {
                self.stats.records += 1;
                n += 1;
                let mut rec = rec;
                rec.tid = self.kernel_tid(rec.tid);
                f(&rec);
            } else {
                self.stats.drops += 1;
            }
            self.tail += 1;
        }
        self.u64_at(offsets::CONSUMED)
            .store(self.tail, Ordering::Release);
        self.renew();
        n
    }

    fn renew(&mut self) {
        let now = monotonic_ns();
        if now < self.renewed + LEASE_RENEW_NS {
            return;
        }
        let new = now + LEASE_NS;
        let swap = |r: &Self, from: u64| {
            r.u64_at(offsets::LEASE).compare_exchange(
                from,
                new,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
        };
        match swap(self, self.lease) {
            Ok(_) => {
                self.lease = new;
                self.renewed = now;
            }
            Err(_) if self.u32_at(offsets::TRACER_PID).load(Ordering::Relaxed) != self.me => {
                self.lost = true;
            }
            Err(actual) => {
                // The engine found the lease expired and cleared it: the messages since
                // then were not published. Take it again (unless someone else just did).
                self.stats.lapses += 1;
                if swap(self, actual).is_ok() {
                    self.lease = new;
                    self.renewed = now;
                } else {
                    self.lost = true;
                }
            }
        }
    }

    /// The two events a record stands for: the callback's entry (stamped at the engine's
    /// `callback_ns`) and its end (stamped at `done_ns`), as the uprobes would give them.
    pub fn events(&self, rec: &ChannelRecord) -> (CallbackEvent, CallbackDoneEvent) {
        events_of(rec, self.pid, self.loop_id)
    }
}

/// The pid in a `/proc/PID/fd/N` path.
fn host_pid(path: &Path) -> Option<u32> {
    let mut parts = path.iter().rev();
    let _fd_number = parts.next()?;
    (parts.next()? == "fd").then_some(())?;
    parts.next()?.to_str()?.parse().ok()
}

/// Process `pid`'s threads: their id in the process's innermost PID namespace → the
/// kernel's (initial namespace) id, from `/proc/PID/task/*/status` (`NSpid:` lists a
/// thread's id in each namespace, outermost first).
fn thread_ids(pid: u32) -> std::collections::HashMap<u32, u32> {
    let mut out = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let Some(ids) = status.lines().find_map(|l| l.strip_prefix("NSpid:")) else {
            continue;
        };
        let ids: Vec<u32> = ids
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        if let (Some(&kernel), Some(&inner)) = (ids.first(), ids.last()) {
            out.insert(inner, kernel);
        }
    }
    out
}

/// The callback entry and done events of a channel record of engine `pid`'s loop
/// `loop_id`. Their headers carry the engine's stamps (CLOCK_MONOTONIC), the callback's
/// thread and CPU; `attach` is [`CHANNEL_ATTACH`] | `loop_id`.
pub fn events_of(
    rec: &ChannelRecord,
    pid: u32,
    loop_id: u32,
) -> (CallbackEvent, CallbackDoneEvent) {
    let hdr = |ts_ns, kind: ProbeKind| EventHeader {
        ts_ns,
        kind: kind as u16,
        cpu: u16::try_from(rec.cpu).unwrap_or(u16::MAX),
        tid: rec.tid,
        tgid: pid,
        _pad: 0,
    };
    let attach = CHANNEL_ATTACH | u64::from(loop_id);
    let entry_ts = match rec.probe.stamps.callback_ns {
        0 => rec.start_ns,
        t => t,
    };
    (
        CallbackEvent {
            hdr: hdr(entry_ts, ProbeKind::CallbackEntry),
            attach,
            probe: rec.probe,
        },
        CallbackDoneEvent {
            hdr: hdr(rec.done_ns, ProbeKind::CallbackExit),
            attach,
            msg_seq: rec.probe.msg_seq,
            start_ns: rec.start_ns,
            done_ns: rec.done_ns,
        },
    )
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        if self.lost {
            return;
        }
        // Give the ring back: the engine returns to its untraced cost at once.
        self.set_sample_shift(0);
        if self
            .u64_at(offsets::LEASE)
            .compare_exchange(self.lease, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let _ = self.u32_at(offsets::TRACER_PID).compare_exchange(
                self.me,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

/// The bytes of a record as it would sit in the ring buffer.
pub fn record_bytes<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: `aya::Pod` types are #[repr(C)] plain integers without padding, so all
    // `size_of::<T>()` bytes are initialised; the slice borrows `v`.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// Stamp-channel memfds of process `pid`: `(/proc/PID/fd/N, name)`.
pub fn find(pid: u32) -> Vec<(PathBuf, String)> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let prefix = format!("/memfd:{CHANNEL_NAME_PREFIX}");
    entries
        .flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let link = link.to_str()?;
            let name = link.strip_prefix("/memfd:")?;
            link.starts_with(&prefix).then(|| {
                let name = name.strip_suffix(" (deleted)").unwrap_or(name);
                (e.path(), name.to_string())
            })
        })
        .collect()
}

/// Every pid in /proc.
fn all_pids() -> BTreeSet<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The shortest wait between two drains of the rings ([`Channels::wait`]): a loop
/// publishing 3 M records/s fills a 64 Ki-record ring in ~21 ms, and a tracer that also
/// loses the CPU for a while on a busy machine must come back well before that (with
/// 20 ms, one bench run of eight on a loaded 2-vCPU VM lost a ring's worth of records).
pub const DRAIN_WAIT_MIN: Duration = Duration::from_millis(5);

/// The longest: a quiet or sampled channel (serve's aggregate mode publishes at most a
/// few thousand records a second) is drained 20 times a second, not 200, which is most
/// of what an idle tracer costs (each wakeup of a thread on a VM: tens of µs).
pub const DRAIN_WAIT_MAX: Duration = Duration::from_millis(50);

/// The wait between drains that keeps each ring below a quarter full at `rate` records
/// per second, for rings of `capacity` records, within [`DRAIN_WAIT_MIN`] ..
/// [`DRAIN_WAIT_MAX`].
pub fn drain_wait(rate: f64, capacity: u64) -> Duration {
    if rate.is_nan() || rate <= 0.0 {
        return DRAIN_WAIT_MAX;
    }
    Duration::from_secs_f64((capacity as f64 / 4.0 / rate).min(DRAIN_WAIT_MAX.as_secs_f64()))
        .max(DRAIN_WAIT_MIN)
}

/// Every ring of the traced processes: found by rescanning, drained together.
#[derive(Default)]
pub struct Channels {
    readers: Vec<ChannelReader>,
    /// Rings held or refused, by the memfd's (device, inode): a ring inherited by a forked
    /// child is the same ring.
    seen: HashSet<(u64, u64)>,
    /// Totals of rings no longer held.
    closed: ChannelStats,
    /// The sample every ring is asked for ([`ChannelReader::set_sample_shift`]).
    sample_shift: u32,
    /// When the rings were last drained.
    last_drain: Option<Instant>,
    /// How long to wait before the next drain ([`Channels::wait`]).
    wait: Option<Duration>,
}

impl Channels {
    /// No rings yet.
    pub fn new() -> Channels {
        Channels::default()
    }

    /// Looks for new rings in the processes `pids` (empty: every process) and takes them.
    /// Returns the rings that could not be taken, each once.
    pub fn scan(&mut self, pids: &BTreeSet<u32>) -> Vec<ChannelError> {
        let pids = if pids.is_empty() {
            all_pids()
        } else {
            pids.clone()
        };
        let mut errors = Vec::new();
        for pid in pids {
            for (path, name) in find(pid) {
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let key = (meta.dev(), meta.ino());
                if self.seen.contains(&key) {
                    continue;
                }
                match ChannelReader::open(&path, &name) {
                    Ok(Some(r)) => {
                        if self.sample_shift != 0 {
                            r.set_sample_shift(self.sample_shift);
                        }
                        self.seen.insert(key);
                        self.readers.push(r);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.seen.insert(key);
                        errors.push(e);
                    }
                }
            }
        }
        errors
    }

    /// Drains every ring; `f` gets each record's two events with their raw bytes.
    /// Returns the events handed over.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8], Event)) -> usize {
        let mut n = 0;
        let mut records = 0u64;
        let mut capacity = u64::MAX;
        for r in &mut self.readers {
            let (pid, loop_id) = (r.pid, r.loop_id);
            capacity = capacity.min(r.mask + 1);
            records += r.drain(|rec| {
                let (entry, done) = events_of(rec, pid, loop_id);
                f(record_bytes(&entry), Event::Callback(entry));
                f(record_bytes(&done), Event::CallbackDone(done));
                n += 2;
            }) as u64;
        }
        let now = Instant::now();
        if let Some(last) = self.last_drain {
            let rate = records as f64 / now.duration_since(last).as_secs_f64().max(1e-6);
            // The busiest ring could hold all of them: wait as if it did.
            self.wait = Some(drain_wait(rate, capacity));
        }
        self.last_drain = Some(now);
        // Rings another tracer took over are let go (without clearing its lease).
        let (lost, kept): (Vec<_>, Vec<_>) = self.readers.drain(..).partition(|r| r.lost());
        self.readers = kept;
        for r in lost {
            self.closed += r.stats();
        }
        n
    }

    /// Asks every ring held now and taken from now on for a sample of one message in
    /// `1 << shift` per connection (see [`ChannelReader::set_sample_shift`]).
    pub fn set_sample_shift(&mut self, shift: u32) {
        self.sample_shift = shift.min(channel::MAX_SAMPLE_SHIFT);
        for r in &self.readers {
            r.set_sample_shift(self.sample_shift);
        }
    }

    /// The sample asked for, as a shift (0: every message).
    pub fn sample_shift(&self) -> u32 {
        self.sample_shift
    }

    /// Totals over every ring taken so far.
    pub fn stats(&self) -> ChannelStats {
        let mut s = self.closed;
        for r in &self.readers {
            s += r.stats();
        }
        s
    }

    /// How long the caller may wait before the next [`drain`](Self::drain): from the rate
    /// the last drain saw ([`drain_wait`]), [`DRAIN_WAIT_MIN`] until there is one.
    pub fn wait(&self) -> Duration {
        self.wait.unwrap_or(DRAIN_WAIT_MIN)
    }

    /// The rings held now.
    pub fn readers(&self) -> &[ChannelReader] {
        &self.readers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_wait_keeps_a_ring_under_a_quarter_full() {
        let cap = 1 << 16;
        // Serve's sampled rate: the longest wait.
        assert_eq!(drain_wait(4096.0, cap), DRAIN_WAIT_MAX);
        assert_eq!(drain_wait(0.0, cap), DRAIN_WAIT_MAX);
        // A 64 B blast, unsampled (~3 M records/s): 5.5 ms; faster, the shortest.
        assert_eq!(drain_wait(3.0e6, cap).as_micros(), 5461);
        assert_eq!(drain_wait(5.0e6, cap), DRAIN_WAIT_MIN);
        // In between, a quarter of the ring per wait.
        let w = drain_wait(1.0e6, cap);
        assert!(
            (w.as_secs_f64() * 1.0e6 - cap as f64 / 4.0).abs() < 1.0,
            "{w:?}"
        );
    }
    use std::os::fd::AsRawFd as _;
    use ws_abi::MsgProbe;
    use ws_engine::channel::StampChannel;

    fn own_path(c: &StampChannel) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", c.fd().as_raw_fd()))
    }

    fn probe(seq: u64) -> MsgProbe {
        MsgProbe {
            msg_seq: seq,
            sock_cookie: 77,
            stamps: ws_abi::MsgStamps {
                callback_ns: 5,
                ..Default::default()
            },
            ..MsgProbe::default()
        }
    }

    #[test]
    fn the_kernels_ids_are_found_for_a_ring_path() {
        assert_eq!(host_pid(Path::new("/proc/4242/fd/7")), Some(4242));
        assert_eq!(host_pid(Path::new("/tmp/ring")), None);
        // Outside a PID namespace a thread's ids agree.
        let me = std::process::id();
        assert_eq!(thread_ids(me).get(&me), Some(&me));
    }

    #[test]
    fn a_sample_asked_for_is_what_the_engine_samples_until_the_tracer_leaves() {
        let c = StampChannel::create(16).expect("channel");
        assert!(!c.sampled(0), "no tracer: nothing is sampled");
        let r = ChannelReader::open(&own_path(&c), c.name())
            .expect("open")
            .expect("ready");
        assert!((0..8).all(|seq| c.sampled(seq)), "every message by default");
        r.set_sample_shift(2);
        let kept: Vec<u64> = (0..12).filter(|&seq| c.sampled(seq)).collect();
        assert_eq!(kept, vec![0, 4, 8]);
        drop(r);
        assert!(!c.sampled(0));
        // The next tracer starts from every message again.
        let _r = ChannelReader::open(&own_path(&c), c.name())
            .expect("open")
            .expect("ready");
        assert!((0..8).all(|seq| c.sampled(seq)));
    }

    #[test]
    fn finds_drains_and_releases_a_ring() {
        let mut c = StampChannel::create(16).expect("channel");
        let found = find(std::process::id());
        assert!(
            found
                .iter()
                .any(|(p, n)| n == c.name() && p.file_name() == own_path(&c).file_name()),
            "{found:?}"
        );
        let mut r = ChannelReader::open(&own_path(&c), c.name())
            .expect("open")
            .expect("ready");
        assert!(c.leased());
        let now = monotonic_ns();
        for i in 0..5 {
            c.publish(&probe(i), now + 10, now + 20);
        }
        c.flush();
        let mut got = Vec::new();
        assert_eq!(r.drain(|rec| got.push(*rec)), 5);
        assert_eq!(
            got.iter().map(|g| g.probe.msg_seq).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        let (entry, done) = r.events(&got[0]);
        assert_eq!((entry.hdr.ts_ns, entry.hdr.tgid), (5, std::process::id()));
        assert_eq!(entry.hdr.kind, ProbeKind::CallbackEntry as u16);
        assert_eq!(
            (done.hdr.ts_ns, done.start_ns, done.msg_seq),
            (now + 20, now + 10, 0)
        );
        assert_eq!(entry.attach, CHANNEL_ATTACH | u64::from(c.loop_id()));
        assert_eq!(
            crate::decode::decode(record_bytes(&done)),
            Ok(Event::CallbackDone(done))
        );
        drop(r);
        assert!(!c.leased(), "a detached tracer gives the lease back");
        c.publish(&probe(9), now + 30, now + 40);
        assert_eq!(c.published(), 5, "nothing published untraced");
    }

    #[test]
    fn a_slow_tracer_counts_overwritten_records_as_drops() {
        let mut c = StampChannel::create(8).expect("channel");
        let mut r = ChannelReader::open(&own_path(&c), c.name())
            .expect("open")
            .expect("ready");
        let now = monotonic_ns();
        for i in 0..20 {
            c.publish(&probe(i), now + 10, now + 20);
        }
        c.flush();
        let mut got = Vec::new();
        r.drain(|rec| got.push(rec.probe.msg_seq));
        assert_eq!(got, (12..20).collect::<Vec<_>>());
        assert_eq!(r.stats().drops, 12);
        assert_eq!(r.stats().records, 8);
        // Keeping up loses nothing more.
        for i in 20..26 {
            c.publish(&probe(i), now + 10, now + 20);
            c.flush();
            r.drain(|rec| got.push(rec.probe.msg_seq));
        }
        assert_eq!(r.stats().drops, 12);
        assert_eq!(r.stats().records, 14);
    }

    #[test]
    fn a_second_tracer_is_refused() {
        let c = StampChannel::create(8).expect("channel");
        let _first = ChannelReader::open(&own_path(&c), c.name())
            .expect("open")
            .expect("ready");
        match ChannelReader::open(&own_path(&c), c.name()) {
            Err(e @ ChannelError::Busy { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("already traced"), "{msg}");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a second tracer took a held ring"),
        }
        // Through the scanner: reported once, not retried. (Other tests of this process
        // make rings of their own at the same time: only this one's errors count.)
        let mut chans = Channels::new();
        let me = BTreeSet::from([std::process::id()]);
        let this =
            |e: &ChannelError| matches!(e, ChannelError::Busy { name, .. } if name == c.name());
        let errors = chans.scan(&me);
        assert!(errors.iter().any(this), "{errors:?}");
        assert!(!chans.scan(&me).iter().any(this));
    }

    #[test]
    fn a_ring_of_a_newer_layout_is_refused() {
        let c = StampChannel::create(8).expect("channel");
        let map = memmap2::MmapOptions::new()
            .map_raw(
                &File::options()
                    .read(true)
                    .write(true)
                    .open(own_path(&c))
                    .expect("open"),
            )
            .expect("map");
        // SAFETY: the header's `version` field lies in the mapping; no reader is active.
        unsafe {
            let h = map.as_mut_ptr().cast::<ws_abi::ChannelHeader>();
            std::ptr::write_volatile(&raw mut (*h).version, CHANNEL_VERSION + 1);
        }
        match ChannelReader::open(&own_path(&c), c.name()) {
            Err(e @ ChannelError::Version { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("engine is newer"), "{msg}");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a newer ring was taken"),
        }
        assert!(!c.leased(), "a refused ring is left alone");
    }
}
