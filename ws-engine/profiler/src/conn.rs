//! Opt-in per-connection statistics: a fixed-capacity, lock-free open-addressing table
//! keyed by the engine's `u64` connection id. Memory is allocated once at build time
//! (capacity × kinds × 32 bytes); connections that do not fit are counted as untracked.

use std::sync::atomic::{
    AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

const EMPTY: u64 = 0;
const TOMB: u64 = 1;
/// Slots examined per lookup before a connection is declared untracked.
const MAX_PROBES: usize = 32;

#[derive(Default)]
pub(crate) struct ConnCounters {
    pub(crate) count: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) max: AtomicU64,
}

pub(crate) struct ConnTable {
    mask: usize,
    kinds: usize,
    keys: Box<[AtomicU64]>,
    last: Box<[AtomicU64]>,
    stats: Box<[ConnCounters]>,
    pub(crate) untracked: AtomicU64,
}

fn key_of(id: u64) -> Option<u64> {
    id.checked_add(2)
}

impl ConnTable {
    /// `capacity` must be a power of two (the builder rounds it up).
    pub(crate) fn new(capacity: usize, kinds: usize) -> ConnTable {
        ConnTable {
            mask: capacity - 1,
            kinds,
            keys: (0..capacity).map(|_| AtomicU64::new(EMPTY)).collect(),
            last: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            stats: (0..capacity * kinds)
                .map(|_| ConnCounters::default())
                .collect(),
            untracked: AtomicU64::new(0),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.mask + 1
    }

    #[inline(always)]
    fn home(&self, id: u64) -> usize {
        (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.mask
    }

    fn probes(&self) -> usize {
        MAX_PROBES.min(self.mask + 1)
    }

    /// Slot of `id` if present.
    pub(crate) fn find(&self, id: u64) -> Option<usize> {
        let key = key_of(id)?;
        let home = self.home(id);
        for i in 0..self.probes() {
            let s = (home + i) & self.mask;
            match self.keys[s].load(Acquire) {
                k if k == key => return Some(s),
                EMPTY => return None,
                _ => {}
            }
        }
        None
    }

    /// Slot of `id`, inserting it if absent; `None` when the table is full around `id`.
    #[inline]
    pub(crate) fn find_or_insert(&self, id: u64) -> Option<usize> {
        let key = key_of(id)?;
        let home = self.home(id);
        for _attempt in 0..4 {
            let mut free: Option<(usize, u64)> = None;
            for i in 0..self.probes() {
                let s = (home + i) & self.mask;
                let k = self.keys[s].load(Acquire);
                if k == key {
                    return Some(s);
                }
                if k == EMPTY || k == TOMB {
                    if free.is_none() {
                        free = Some((s, k));
                    }
                    if k == EMPTY {
                        break;
                    }
                }
            }
            let (s, seen) = free?;
            match self.keys[s].compare_exchange(seen, key, AcqRel, Acquire) {
                Ok(_) => return Some(s),
                Err(actual) if actual == key => return Some(s),
                Err(_) => continue,
            }
        }
        None
    }

    #[inline]
    pub(crate) fn record(&self, id: u64, kind: usize, ns: u64, bytes: u64, end_ticks: u64) {
        let Some(s) = self.find_or_insert(id) else {
            self.untracked.fetch_add(1, Relaxed);
            return;
        };
        let Some(c) = self.stats.get(s * self.kinds + kind) else {
            return;
        };
        c.count.fetch_add(1, Relaxed);
        c.total.fetch_add(ns, Relaxed);
        if bytes != 0 {
            c.bytes.fetch_add(bytes, Relaxed);
        }
        if ns > c.max.load(Relaxed) {
            c.max.fetch_max(ns, Relaxed);
        }
        self.last[s].store(end_ticks, Relaxed);
    }

    fn clear_slot(&self, s: usize) {
        for c in &self.stats[s * self.kinds..(s + 1) * self.kinds] {
            c.count.store(0, Relaxed);
            c.total.store(0, Relaxed);
            c.bytes.store(0, Relaxed);
            c.max.store(0, Relaxed);
        }
        self.last[s].store(0, Relaxed);
    }

    /// Forget a connection: its slot is zeroed and becomes reusable.
    pub(crate) fn remove(&self, id: u64) -> bool {
        let Some(s) = self.find(id) else {
            return false;
        };
        self.clear_slot(s);
        // Release: whoever claims the tombstone (Acquire) sees the zeroed counters.
        self.keys[s].store(TOMB, Release);
        true
    }

    pub(crate) fn clear(&self) {
        for s in 0..self.capacity() {
            self.clear_slot(s);
            self.keys[s].store(EMPTY, Release);
        }
        self.untracked.store(0, Relaxed);
    }

    /// Every tracked connection: (id, last ticks, per-kind (count, total, bytes, max)).
    pub(crate) fn entries(&self) -> Vec<(u64, u64, Vec<[u64; 4]>)> {
        let mut out = Vec::new();
        for s in 0..self.capacity() {
            let k = self.keys[s].load(Acquire);
            if k == EMPTY || k == TOMB {
                continue;
            }
            let per_kind = self.stats[s * self.kinds..(s + 1) * self.kinds]
                .iter()
                .map(|c| {
                    [
                        c.count.load(Relaxed),
                        c.total.load(Relaxed),
                        c.bytes.load(Relaxed),
                        c.max.load(Relaxed),
                    ]
                })
                .collect();
            out.push((k - 2, self.last[s].load(Relaxed), per_kind));
        }
        out.sort_by_key(|e| e.0);
        out
    }

    /// Number of connections currently tracked.
    pub(crate) fn len(&self) -> usize {
        self.keys
            .iter()
            .filter(|k| !matches!(k.load(Relaxed), EMPTY | TOMB))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_remove_reuse() {
        let t = ConnTable::new(4, 2);
        for id in [10u64, 20, 30, 40] {
            assert!(t.find_or_insert(id).is_some());
        }
        assert_eq!(t.len(), 4);
        assert!(t.find_or_insert(50).is_none(), "table of 4 is full");
        t.record(10, 1, 100, 7, 0);
        assert!(t.remove(10));
        assert_eq!(t.find(10), None);
        let s = t.find_or_insert(50);
        assert!(s.is_some(), "tombstone reused");
        t.record(50, 1, 5, 0, 0);
        let e = t.entries();
        let fifty = e.iter().find(|e| e.0 == 50).map(|e| e.2[1]);
        assert_eq!(fifty, Some([1, 5, 0, 5]), "reused slot starts from zero");
        assert!(t.find(u64::MAX).is_none());
        t.record(u64::MAX, 0, 1, 1, 0);
        assert_eq!(t.untracked.load(Relaxed), 1);
    }
}
