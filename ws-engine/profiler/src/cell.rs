//! Per-kind counters and histogram, and the per-thread slots that own them.

use crate::hist::{BUCKETS, bucket_index};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Counters of one callback kind in one slot. The hot fields share the first cache line.
#[repr(C, align(64))]
pub(crate) struct KindCell {
    pub(crate) total: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) min: AtomicU64,
    pub(crate) max: AtomicU64,
    /// Max since the last window rotation (swapped to 0 by `tick`).
    pub(crate) win_max: AtomicU64,
    /// Clock ticks at the end of the most recent invocation.
    pub(crate) last: AtomicU64,
    pub(crate) hist: [AtomicU64; BUCKETS],
}

/// Add to a counter. `SHARED` cells may have several writers and use a locked RMW;
/// exclusive cells have exactly one writer (the owning thread), so a relaxed load and
/// store is an exact increment and readers still never see a torn value.
#[inline(always)]
fn add<const SHARED: bool>(a: &AtomicU64, v: u64) {
    if SHARED {
        a.fetch_add(v, Relaxed);
    } else {
        a.store(a.load(Relaxed).wrapping_add(v), Relaxed);
    }
}

impl KindCell {
    pub(crate) fn new() -> KindCell {
        KindCell {
            total: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
            win_max: AtomicU64::new(0),
            last: AtomicU64::new(0),
            hist: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    pub(crate) fn new_slice(kinds: usize) -> Box<[KindCell]> {
        (0..kinds).map(|_| KindCell::new()).collect()
    }

    /// Record one invocation of `ns` nanoseconds and `bytes` bytes ending at `end_ticks`.
    #[inline(always)]
    pub(crate) fn record<const SHARED: bool>(&self, ns: u64, bytes: u64, end_ticks: u64) {
        add::<SHARED>(&self.hist[bucket_index(ns)], 1);
        add::<SHARED>(&self.total, ns);
        if !SHARED || bytes != 0 {
            add::<SHARED>(&self.bytes, bytes);
        }
        if ns < self.min.load(Relaxed) {
            if SHARED {
                self.min.fetch_min(ns, Relaxed);
            } else {
                self.min.store(ns, Relaxed);
            }
        }
        if ns > self.max.load(Relaxed) {
            if SHARED {
                self.max.fetch_max(ns, Relaxed);
            } else {
                self.max.store(ns, Relaxed);
            }
        }
        if ns > self.win_max.load(Relaxed) {
            // Always a locked max: `tick` swaps this field from another thread.
            self.win_max.fetch_max(ns, Relaxed);
        }
        self.last.store(end_ticks, Relaxed);
    }

    /// Zero everything (not atomic with respect to concurrent recording).
    pub(crate) fn clear(&self) {
        self.total.store(0, Relaxed);
        self.bytes.store(0, Relaxed);
        self.min.store(u64::MAX, Relaxed);
        self.max.store(0, Relaxed);
        self.win_max.store(0, Relaxed);
        self.last.store(0, Relaxed);
        for b in &self.hist {
            b.store(0, Relaxed);
        }
    }
}

/// Sum of one kind over all slots, in ns (the `last` field is still in ticks).
#[derive(Clone, Debug)]
pub(crate) struct Cumulative {
    pub(crate) count: u64,
    pub(crate) total: u64,
    pub(crate) bytes: u64,
    pub(crate) min: u64,
    pub(crate) max: u64,
    pub(crate) last_ticks: u64,
    pub(crate) hist: Vec<u64>,
}

impl Cumulative {
    pub(crate) fn empty() -> Cumulative {
        Cumulative {
            count: 0,
            total: 0,
            bytes: 0,
            min: u64::MAX,
            max: 0,
            last_ticks: 0,
            hist: vec![0; BUCKETS],
        }
    }

    pub(crate) fn add_cell(&mut self, c: &KindCell) {
        self.total = self.total.wrapping_add(c.total.load(Relaxed));
        self.bytes = self.bytes.wrapping_add(c.bytes.load(Relaxed));
        self.min = self.min.min(c.min.load(Relaxed));
        self.max = self.max.max(c.max.load(Relaxed));
        self.last_ticks = self.last_ticks.max(c.last.load(Relaxed));
        for (h, b) in self.hist.iter_mut().zip(c.hist.iter()) {
            let n = b.load(Relaxed);
            *h += n;
            self.count += n;
        }
    }

    /// Min for reports: 0 when nothing was recorded.
    pub(crate) fn min_or_zero(&self) -> u64 {
        if self.count == 0 { 0 } else { self.min }
    }
}

/// A per-thread slot: claimed by one thread at a time, its cells allocated on first claim
/// and kept (with their counts) after the thread exits, for the next thread to continue.
pub(crate) struct Slot {
    pub(crate) claimed: AtomicBool,
    pub(crate) cells: OnceLock<Box<[KindCell]>>,
}

impl Slot {
    pub(crate) fn new() -> Slot {
        Slot {
            claimed: AtomicBool::new(false),
            cells: OnceLock::new(),
        }
    }
}
