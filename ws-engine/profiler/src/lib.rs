//! Callback profiler: lock-free per-callback statistics for ws-engine.
//!
//! Per [`CallbackKind`] the profiler keeps the invocation count, total/min/max ns, bytes,
//! the end of the last invocation and a log-linear histogram (p50/p90/p99/p99.9 within
//! [`RELATIVE_ERROR`]). Optional extras: per-connection stats (bounded table), a ring of
//! time windows and threshold alerts on a window's percentile. Reports render as a text
//! table, JSON or Prometheus text.
//!
//! Wrapping a callback is one line:
//!
//! ```
//! use ws_profiler::{CallbackKind, Profiler};
//! let profiler = Profiler::new();
//! let msg = b"hello";
//! {
//!     let g = profiler.start(CallbackKind::RECEIVE);
//!     // ... the user's callback runs here ...
//!     g.stop(msg.len() as u64);
//! }
//! let n = profiler.time(CallbackKind::WRITABLE, 0, || 42);
//! assert_eq!(n, 42);
//! let report = profiler.report();
//! assert_eq!(report.callback("receive").map(|c| c.count), Some(1));
//! println!("{report}");
//! ```
//!
//! # Hot path
//! `start` is one relaxed load of the enable mask, a branch and a clock read (`rdtsc`).
//! `stop` reads the clock and updates counters that belong to the calling thread: every
//! thread claims a private slot of counters on its first record (a one-time allocation),
//! so the updates are plain load/store pairs on thread-owned cache lines: no locked
//! instructions, no sharing between threads, exact counts. Threads beyond
//! [`ProfilerBuilder::thread_slots`] share one overflow slot updated with atomic RMWs.
//! Slots are released when their thread exits (the counts stay, the next thread continues).
#![deny(missing_docs)]

mod cell;
mod clock;
mod conn;
mod hist;
mod kind;
mod report;
mod window;

pub use clock::{ClockInfo, ClockSource, monotonic_ns};
pub use hist::{MAX_TRACKABLE_NS, RELATIVE_ERROR, SUB_BUCKET_BITS};
pub use kind::{CallbackKind, MAX_KINDS};
pub use report::{
    CallbackStats, ConnCallbackStats, ConnectionReport, HistogramInfo, Report, SCHEMA_VERSION,
    WindowCallbackStats, WindowReport,
};
pub use window::{Alert, AlertHook, AlertRule};

use cell::{Cumulative, KindCell, Slot};
use clock::Clock;
use conn::ConnTable;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::time::Duration;
use window::WindowState;

/// Errors of the profiler's configuration and registration calls.
#[derive(Debug, thiserror::Error)]
pub enum ProfilerError {
    /// A user kind name is not 1-64 characters of `[A-Za-z0-9_]` starting with a non-digit.
    #[error(
        "invalid callback kind name {0:?}: use 1-64 characters of [A-Za-z0-9_], not starting with a digit"
    )]
    InvalidKindName(String),
    /// No room for another kind.
    #[error("too many callback kinds: this profiler was built for {max}")]
    TooManyKinds {
        /// The configured maximum.
        max: usize,
    },
    /// A kind that this profiler never registered.
    #[error("callback kind {0} is not registered with this profiler")]
    UnknownKind(usize),
    /// A builder setting is out of range.
    #[error("invalid profiler configuration: {0}")]
    InvalidConfig(String),
    /// Alerts need time windows.
    #[error("time windows are not enabled (ProfilerBuilder::windows)")]
    WindowsDisabled,
    /// An alert quantile outside (0, 1].
    #[error("invalid alert quantile {0}: must be in (0, 1]")]
    InvalidQuantile(f64),
    /// JSON encoding or decoding failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Configuration of a [`Profiler`]; start from [`Profiler::builder`].
#[derive(Clone, Debug)]
pub struct ProfilerBuilder {
    clock: ClockSource,
    max_kinds: usize,
    thread_slots: usize,
    connections: usize,
    windows: usize,
    window_len: Duration,
    enabled: bool,
}

impl Default for ProfilerBuilder {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        ProfilerBuilder {
            clock: ClockSource::Auto,
            max_kinds: 32,
            thread_slots: (cpus * 2).clamp(4, 64),
            connections: 0,
            windows: 0,
            window_len: Duration::from_secs(1),
            enabled: true,
        }
    }
}

impl ProfilerBuilder {
    /// The time source (default [`ClockSource::Auto`]: invariant TSC, else CLOCK_MONOTONIC).
    pub fn clock(mut self, clock: ClockSource) -> Self {
        self.clock = clock;
        self
    }

    /// Maximum kinds including the 8 built-ins (8..=64, default 32). Each kind costs
    /// about 9.3 KiB per thread slot in use.
    pub fn max_kinds(mut self, n: usize) -> Self {
        self.max_kinds = n;
        self
    }

    /// Threads that get private, uncontended counters (1..=1024, default 2 × CPUs,
    /// at least 4). Further concurrent threads share an overflow slot (still exact,
    /// slower under contention).
    pub fn thread_slots(mut self, n: usize) -> Self {
        self.thread_slots = n;
        self
    }

    /// Track per-connection stats for up to `n` concurrent connections (0 = off, the
    /// default; rounded up to a power of two, at most 2^20). Memory: n × kinds × 32 B.
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n;
        self
    }

    /// Keep the last `count` closed windows of `len` each (count 0 = off, the default).
    pub fn windows(mut self, count: usize, len: Duration) -> Self {
        self.windows = count;
        self.window_len = len;
        self
    }

    /// Start enabled (default) or disabled.
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }

    /// Build the profiler.
    pub fn build(self) -> Result<Profiler, ProfilerError> {
        let bad = |m: &str| Err(ProfilerError::InvalidConfig(m.to_string()));
        if !(kind::BUILTIN_COUNT..=MAX_KINDS).contains(&self.max_kinds) {
            return bad("max_kinds must be in 8..=64");
        }
        if !(1..=1024).contains(&self.thread_slots) {
            return bad("thread_slots must be in 1..=1024");
        }
        if self.connections > 1 << 20 {
            return bad("connections must be at most 2^20");
        }
        if self.windows > 1 << 20 {
            return bad("windows must be at most 2^20");
        }
        if self.windows > 0 && self.window_len < Duration::from_millis(1) {
            return bad("window length must be at least 1 ms");
        }
        Ok(Profiler::from_builder(self))
    }
}

struct Control {
    enabled: bool,
    /// Per-kind filter: bit set = kind recorded (when enabled).
    filter: u64,
    names: Vec<String>,
}

impl Control {
    fn mask(&self) -> u64 {
        let registered = if self.names.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << self.names.len()) - 1
        };
        if self.enabled {
            self.filter & registered
        } else {
            0
        }
    }
}

struct Windows {
    len_ns: u64,
    /// When the current window is due to close: `tick` returns at once before that.
    due_ns: AtomicU64,
    state: Mutex<WindowState>,
    rules: Mutex<Vec<(AlertRule, AlertHook)>>,
}

struct Inner {
    /// Bit k set: kind k is registered, enabled and passes the filter. 0 = off.
    mask: AtomicU64,
    id: u64,
    clock: Clock,
    slots: Box<[Slot]>,
    shared: Box<[KindCell]>,
    max_kinds: usize,
    conns: Option<ConnTable>,
    windows: Option<Windows>,
    control: Mutex<Control>,
    start_ticks: AtomicU64,
    alerts_fired: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked (no invariants span
    // an unlock), so a poisoned lock is simply taken over.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks the cached slot of "no private slot, use the shared one".
const NO_SLOT: usize = usize::MAX;

thread_local! {
    /// (profiler id, slot index) of the profiler this thread used last.
    static SLOT_CACHE: Cell<(u64, usize)> = const { Cell::new((0, NO_SLOT)) };
    /// Every slot this thread holds; dropping it (at thread exit) releases them.
    static SLOT_REGISTRY: RefCell<Vec<Registration>> = const { RefCell::new(Vec::new()) };
}

struct Registration {
    id: u64,
    inner: Weak<Inner>,
    slot: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Anything this thread records from here on (e.g. from another thread-local's
        // destructor) must not write into the slot being released: send it to the slow
        // path, which finds the registry gone and uses the shared slot.
        let _ = SLOT_CACHE.try_with(|c| {
            if c.get().0 == self.id {
                c.set((0, NO_SLOT));
            }
        });
        if self.slot == NO_SLOT {
            return;
        }
        if let Some(inner) = self.inner.upgrade()
            && let Some(s) = inner.slots.get(self.slot)
        {
            // Release: the next owner's Acquire claim sees this thread's last counts.
            s.claimed.store(false, Release);
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

// Compile-time guarantee that a profiler can be shared with every callback thread.
const _: () = {
    const fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Profiler>();
};

impl Inner {
    /// Find (or claim) this thread's slot and record into it.
    #[inline(always)]
    fn commit(self: &Arc<Self>, kind: usize, ns: u64, bytes: u64, end_ticks: u64) {
        let (id, slot) = SLOT_CACHE.try_with(Cell::get).unwrap_or((0, NO_SLOT));
        if id == self.id {
            self.commit_in(slot, kind, ns, bytes, end_ticks);
        } else {
            self.commit_slow(kind, ns, bytes, end_ticks);
        }
    }

    #[inline(always)]
    fn commit_in(&self, slot: usize, kind: usize, ns: u64, bytes: u64, end_ticks: u64) {
        if let Some(cells) = self.slots.get(slot).and_then(|s| s.cells.get()) {
            if let Some(c) = cells.get(kind) {
                c.record::<false>(ns, bytes, end_ticks);
            }
        } else if let Some(c) = self.shared.get(kind) {
            c.record::<true>(ns, bytes, end_ticks);
        }
    }

    #[cold]
    #[inline(never)]
    fn commit_slow(self: &Arc<Self>, kind: usize, ns: u64, bytes: u64, end_ticks: u64) {
        let slot = self.thread_slot();
        self.commit_in(slot, kind, ns, bytes, end_ticks);
    }

    /// This thread's slot for this profiler, claiming one if needed. NO_SLOT = shared.
    fn thread_slot(self: &Arc<Self>) -> usize {
        let found = SLOT_REGISTRY.try_with(|reg| {
            let Ok(mut reg) = reg.try_borrow_mut() else {
                return NO_SLOT;
            };
            if let Some(r) = reg.iter().find(|r| r.id == self.id) {
                return r.slot;
            }
            reg.retain(|r| r.inner.strong_count() > 0);
            let mut slot = NO_SLOT;
            for (i, s) in self.slots.iter().enumerate() {
                if s.claimed
                    .compare_exchange(false, true, Acquire, Relaxed)
                    .is_ok()
                {
                    s.cells.get_or_init(|| KindCell::new_slice(self.max_kinds));
                    slot = i;
                    break;
                }
            }
            reg.push(Registration {
                id: self.id,
                inner: Arc::downgrade(self),
                slot,
            });
            slot
        });
        let slot = found.unwrap_or(NO_SLOT);
        // Only cache a registered answer: if the registry is gone (thread exiting) the
        // slot could not be released, so none was claimed and NO_SLOT is right anyway.
        let _ = SLOT_CACHE.try_with(|c| c.set((self.id, slot)));
        slot
    }

    /// Every cell array that ever recorded, plus the shared one.
    fn all_cells(&self) -> impl Iterator<Item = &[KindCell]> {
        self.slots
            .iter()
            .filter_map(|s| s.cells.get().map(|b| &**b))
            .chain(std::iter::once(&*self.shared))
    }

    fn cumulative(&self, kind: usize) -> Cumulative {
        let mut acc = Cumulative::empty();
        for cells in self.all_cells() {
            if let Some(c) = cells.get(kind) {
                acc.add_cell(c);
            }
        }
        acc
    }

    fn now_ns(&self) -> u64 {
        self.clock.ticks_to_ns(self.clock.ticks())
    }

    fn set_mask(&self, c: &Control) {
        self.mask.store(c.mask(), Relaxed);
    }
}

/// The profiler. Cheap to clone (an `Arc`), `Send + Sync`; share it with every thread
/// that runs callbacks.
#[derive(Clone)]
pub struct Profiler {
    inner: Arc<Inner>,
}

impl Default for Profiler {
    fn default() -> Self {
        Profiler::new()
    }
}

impl std::fmt::Debug for Profiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiler")
            .field("id", &self.inner.id)
            .field("enabled", &self.is_enabled())
            .field("clock", &self.inner.clock.info().source)
            .finish()
    }
}

const OFF: u8 = 0;
const ON: u8 = 1;
const ON_CONN: u8 = 2;

/// A running measurement, from [`Profiler::start`]. Recorded when dropped or stopped;
/// [`Span::stop`] also sets the byte count. A span started while the profiler (or its
/// kind) is off records nothing, whatever happens later.
#[must_use = "a span measures until it is dropped: bind it with `let _g = ...` or call stop()"]
pub struct Span<'a> {
    p: &'a Profiler,
    t0: u64,
    bytes: u64,
    conn: u64,
    kind: u8,
    state: u8,
}

impl Span<'_> {
    /// Stop now and record `bytes` for this invocation.
    #[inline(always)]
    pub fn stop(self, bytes: u64) {
        // Finish inline instead of through the (not always inlined) drop glue, so a
        // disabled span costs a branch here, not a call.
        let mut s = std::mem::ManuallyDrop::new(self);
        s.bytes = bytes;
        s.finish();
    }

    #[inline(always)]
    fn finish(&mut self) {
        if self.state == OFF {
            return;
        }
        let inner = &self.p.inner;
        let t1 = inner.clock.ticks();
        let ns = inner.clock.delta_ns(t1.saturating_sub(self.t0));
        inner.commit(self.kind as usize, ns, self.bytes, t1);
        if self.state == ON_CONN
            && let Some(t) = &inner.conns
        {
            t.record(self.conn, self.kind as usize, ns, self.bytes, t1);
        }
    }

    /// Set the bytes to record when the span ends.
    #[inline(always)]
    pub fn set_bytes(&mut self, bytes: u64) {
        self.bytes = bytes;
    }

    /// Add to the bytes recorded when the span ends.
    #[inline(always)]
    pub fn add_bytes(&mut self, bytes: u64) {
        self.bytes = self.bytes.wrapping_add(bytes);
    }

    /// Drop the measurement without recording it.
    pub fn cancel(mut self) {
        self.state = OFF;
    }

    /// Whether this span will record anything.
    pub fn is_recording(&self) -> bool {
        self.state != OFF
    }
}

impl Drop for Span<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.finish();
    }
}

/// Keeps a ticker thread alive; dropping it stops and joins the thread.
pub struct Ticker {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (m, cv) = &*self.stop;
        *lock(m) = true;
        cv.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Profiler {
    /// A profiler with default settings: enabled, TSC clock where invariant, 32 kinds,
    /// no per-connection stats, no windows.
    pub fn new() -> Profiler {
        Profiler::from_builder(ProfilerBuilder::default())
    }

    /// Configure a profiler.
    pub fn builder() -> ProfilerBuilder {
        ProfilerBuilder::default()
    }

    fn from_builder(b: ProfilerBuilder) -> Profiler {
        let clock = Clock::new(b.clock);
        let now_ticks = clock.ticks();
        let now_ns = clock.ticks_to_ns(now_ticks);
        let control = Control {
            enabled: b.enabled,
            filter: u64::MAX,
            names: CallbackKind::BUILTIN_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let len_ns = u64::try_from(b.window_len.as_nanos()).unwrap_or(u64::MAX);
        let windows = (b.windows > 0).then(|| Windows {
            len_ns,
            due_ns: AtomicU64::new(now_ns.saturating_add(len_ns)),
            state: Mutex::new(WindowState::new(now_ns, b.max_kinds, b.windows)),
            rules: Mutex::new(Vec::new()),
        });
        let inner = Inner {
            mask: AtomicU64::new(control.mask()),
            id: NEXT_ID.fetch_add(1, Relaxed),
            clock,
            slots: (0..b.thread_slots).map(|_| Slot::new()).collect(),
            shared: KindCell::new_slice(b.max_kinds),
            max_kinds: b.max_kinds,
            conns: (b.connections > 0)
                .then(|| ConnTable::new(b.connections.next_power_of_two(), b.max_kinds)),
            windows,
            control: Mutex::new(control),
            start_ticks: AtomicU64::new(now_ticks),
            alerts_fired: AtomicU64::new(0),
        };
        Profiler {
            inner: Arc::new(inner),
        }
    }

    // ---- hot path -------------------------------------------------------------------

    /// Start timing one invocation of `kind`. When the profiler or the kind is off, this
    /// is one load and one predictable branch, and the span records nothing.
    #[inline(always)]
    pub fn start(&self, kind: CallbackKind) -> Span<'_> {
        let on = self.inner.mask.load(Relaxed) & (1u64 << (kind.0 & 63)) != 0;
        if !on {
            return Span {
                p: self,
                t0: 0,
                bytes: 0,
                conn: 0,
                kind: kind.0,
                state: OFF,
            };
        }
        Span {
            p: self,
            t0: self.inner.clock.ticks(),
            bytes: 0,
            conn: 0,
            kind: kind.0,
            state: ON,
        }
    }

    /// Like [`Profiler::start`], also attributing the invocation to connection `conn`
    /// when per-connection tracking is configured (otherwise identical to `start`).
    #[inline(always)]
    pub fn start_conn(&self, kind: CallbackKind, conn: u64) -> Span<'_> {
        let mut s = self.start(kind);
        if s.state == ON && self.inner.conns.is_some() {
            s.state = ON_CONN;
            s.conn = conn;
        }
        s
    }

    /// Record an invocation measured elsewhere: `ns` long, `bytes` bytes, ending now.
    #[inline]
    pub fn record(&self, kind: CallbackKind, ns: u64, bytes: u64) {
        if self.inner.mask.load(Relaxed) & (1u64 << (kind.0 & 63)) == 0 {
            return;
        }
        let t = self.inner.clock.ticks();
        self.inner.commit(kind.0 as usize, ns, bytes, t);
    }

    /// [`Profiler::record`] for connection `conn`.
    #[inline]
    pub fn record_conn(&self, kind: CallbackKind, conn: u64, ns: u64, bytes: u64) {
        if self.inner.mask.load(Relaxed) & (1u64 << (kind.0 & 63)) == 0 {
            return;
        }
        let t = self.inner.clock.ticks();
        self.inner.commit(kind.0 as usize, ns, bytes, t);
        if let Some(c) = &self.inner.conns {
            c.record(conn, kind.0 as usize, ns, bytes, t);
        }
    }

    /// Whether raw stamps of `clock` ([`ws_clock::Clock::raw`]) are this profiler's ticks,
    /// so [`Profiler::record_stamped`] records them without reading any clock.
    pub fn shares_clock(&self, clock: &ws_clock::Clock) -> bool {
        self.inner.clock.same_ticks_as(clock)
    }

    /// Record an invocation of `kind` on connection `conn` that its caller stamped itself:
    /// it ran from raw stamp `start` to raw stamp `end` of `clock`, carrying `bytes` bytes.
    /// When the profiler shares `clock`'s ticks ([`Profiler::shares_clock`]) no clock is
    /// read; otherwise the duration is converted with `clock` and the end is now.
    #[inline]
    pub fn record_stamped(
        &self,
        kind: CallbackKind,
        conn: u64,
        clock: &ws_clock::Clock,
        start: u64,
        end: u64,
        bytes: u64,
    ) {
        if self.inner.mask.load(Relaxed) & (1u64 << (kind.0 & 63)) == 0 {
            return;
        }
        let ns = clock.delta_ns(end.saturating_sub(start));
        let t = if self.inner.clock.same_ticks_as(clock) {
            end
        } else {
            self.inner.clock.ticks()
        };
        self.inner.commit(kind.0 as usize, ns, bytes, t);
        if let Some(c) = &self.inner.conns {
            c.record(conn, kind.0 as usize, ns, bytes, t);
        }
    }

    /// Time `f` as one invocation of `kind` carrying `bytes` bytes.
    #[inline(always)]
    pub fn time<R>(&self, kind: CallbackKind, bytes: u64, f: impl FnOnce() -> R) -> R {
        let g = self.start(kind);
        let r = f();
        g.stop(bytes);
        r
    }

    // ---- control ---------------------------------------------------------------------

    /// Turn recording on or off at run time. Off costs one predictable branch per start.
    pub fn set_enabled(&self, on: bool) {
        let mut c = lock(&self.inner.control);
        c.enabled = on;
        self.inner.set_mask(&c);
    }

    /// Whether recording is on.
    pub fn is_enabled(&self) -> bool {
        lock(&self.inner.control).enabled
    }

    /// Record or ignore one kind (a filter; all kinds are recorded by default).
    pub fn set_kind_enabled(&self, kind: CallbackKind, on: bool) -> Result<(), ProfilerError> {
        let mut c = lock(&self.inner.control);
        if kind.index() >= c.names.len() {
            return Err(ProfilerError::UnknownKind(kind.index()));
        }
        if on {
            c.filter |= 1 << kind.0;
        } else {
            c.filter &= !(1 << kind.0);
        }
        self.inner.set_mask(&c);
        Ok(())
    }

    /// Register a user-defined kind by name, or return the kind already registered under
    /// that name (built-in names return the built-in kind).
    pub fn register_kind(&self, name: &str) -> Result<CallbackKind, ProfilerError> {
        let mut c = lock(&self.inner.control);
        if let Some(i) = c.names.iter().position(|n| n == name) {
            return Ok(CallbackKind(i as u8));
        }
        if !kind::valid_name(name) {
            return Err(ProfilerError::InvalidKindName(name.to_string()));
        }
        if c.names.len() >= self.inner.max_kinds {
            return Err(ProfilerError::TooManyKinds {
                max: self.inner.max_kinds,
            });
        }
        c.names.push(name.to_string());
        let k = CallbackKind((c.names.len() - 1) as u8);
        self.inner.set_mask(&c);
        Ok(k)
    }

    /// A registered kind by name.
    pub fn kind(&self, name: &str) -> Option<CallbackKind> {
        let c = lock(&self.inner.control);
        c.names
            .iter()
            .position(|n| n == name)
            .map(|i| CallbackKind(i as u8))
    }

    /// The name of a registered kind.
    pub fn kind_name(&self, kind: CallbackKind) -> Option<String> {
        lock(&self.inner.control).names.get(kind.index()).cloned()
    }

    /// All registered kinds, built-ins first.
    pub fn kinds(&self) -> Vec<(CallbackKind, String)> {
        let c = lock(&self.inner.control);
        c.names
            .iter()
            .enumerate()
            .map(|(i, n)| (CallbackKind(i as u8), n.clone()))
            .collect()
    }

    /// Forget a connection's stats (call when the connection is closed) so its table entry
    /// can be reused. Returns whether it was tracked. Recording for the same id must not
    /// race with its removal (the engine does both on the connection's thread).
    pub fn remove_connection(&self, conn: u64) -> bool {
        self.inner.conns.as_ref().is_some_and(|t| t.remove(conn))
    }

    /// Number of connections in the per-connection table (0 when tracking is off).
    pub fn tracked_connections(&self) -> usize {
        self.inner.conns.as_ref().map_or(0, |t| t.len())
    }

    /// Threads currently holding a private slot, and the configured number of slots.
    pub fn thread_slots(&self) -> (usize, usize) {
        let used = self
            .inner
            .slots
            .iter()
            .filter(|s| s.claimed.load(Relaxed))
            .count();
        (used, self.inner.slots.len())
    }

    /// Zero all counters, windows and connection stats and restart the rate clock.
    /// Invocations recorded concurrently with a reset may partly survive it.
    pub fn reset(&self) {
        for cells in self.inner.all_cells() {
            for c in cells {
                c.clear();
            }
        }
        if let Some(t) = &self.inner.conns {
            t.clear();
        }
        let now = self.inner.clock.ticks();
        self.inner.start_ticks.store(now, Relaxed);
        if let Some(w) = &self.inner.windows {
            let now_ns = self.inner.clock.ticks_to_ns(now);
            lock(&w.state).reset(now_ns);
            w.due_ns.store(now_ns.saturating_add(w.len_ns), Relaxed);
        }
    }

    /// What the clock is.
    pub fn clock_info(&self) -> ClockInfo {
        self.inner.clock.info()
    }

    /// The profiler clock's current time in ns (CLOCK_MONOTONIC for TSC and monotonic).
    pub fn now_ns(&self) -> u64 {
        self.inner.now_ns()
    }

    // ---- windows and alerts ------------------------------------------------------------

    /// Close the current time window if it is at least the configured length old, and fire
    /// alerts for it. Cheap when it is not time yet (a clock read and a compare); call it
    /// from the event loop, or use [`Profiler::spawn_ticker`]. Returns whether a window
    /// was closed. Never blocks: if another thread is closing a window, returns false.
    pub fn tick(&self) -> bool {
        let Some(w) = &self.inner.windows else {
            return false;
        };
        let now = self.inner.now_ns();
        if now < w.due_ns.load(Relaxed) {
            return false;
        }
        let mut st = match w.state.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        if now.saturating_sub(st.start_ns) < w.len_ns {
            return false;
        }
        let fired = self.close_window(&mut st, now);
        drop(st);
        self.fire(fired);
        true
    }

    /// Close the current window now, whatever its age (e.g. before a final report).
    /// Returns false when windows are not configured.
    pub fn close_window_now(&self) -> bool {
        let Some(w) = &self.inner.windows else {
            return false;
        };
        let now = self.inner.now_ns();
        let mut st = lock(&w.state);
        let fired = self.close_window(&mut st, now);
        drop(st);
        self.fire(fired);
        true
    }

    fn close_window(&self, st: &mut WindowState, now: u64) -> Vec<(Alert, AlertHook)> {
        if let Some(w) = &self.inner.windows {
            w.due_ns.store(now.saturating_add(w.len_ns), Relaxed);
        }
        let names = lock(&self.inner.control).names.clone();
        let kinds = names.len();
        let cur: Vec<Cumulative> = (0..kinds).map(|k| self.inner.cumulative(k)).collect();
        let mut win_max = vec![0u64; kinds];
        for cells in self.inner.all_cells() {
            for (k, m) in win_max.iter_mut().enumerate() {
                if let Some(c) = cells.get(k) {
                    *m = (*m).max(c.win_max.swap(0, Relaxed));
                }
            }
        }
        let rules = self
            .inner
            .windows
            .as_ref()
            .map(|w| lock(&w.rules).clone())
            .unwrap_or_default();
        st.close(now, cur, &win_max, &names, &rules)
    }

    fn fire(&self, fired: Vec<(Alert, AlertHook)>) {
        for (alert, hook) in fired {
            self.inner.alerts_fired.fetch_add(1, Relaxed);
            hook(&alert);
        }
    }

    /// Call `hook` whenever a closed window breaks `rule`. Hooks run on the thread that
    /// closes the window (the caller of `tick`), outside the profiler's locks.
    pub fn add_alert(
        &self,
        rule: AlertRule,
        hook: impl Fn(&Alert) + Send + Sync + 'static,
    ) -> Result<(), ProfilerError> {
        let Some(w) = &self.inner.windows else {
            return Err(ProfilerError::WindowsDisabled);
        };
        if !(rule.quantile > 0.0 && rule.quantile <= 1.0) {
            return Err(ProfilerError::InvalidQuantile(rule.quantile));
        }
        if rule.kind.index() >= lock(&self.inner.control).names.len() {
            return Err(ProfilerError::UnknownKind(rule.kind.index()));
        }
        lock(&w.rules).push((rule, Arc::new(hook)));
        Ok(())
    }

    /// Spawn a thread that calls [`Profiler::tick`] about ten times per window length.
    /// It stops when the returned [`Ticker`] is dropped. Fails with
    /// [`ProfilerError::WindowsDisabled`] when no windows are configured.
    pub fn spawn_ticker(&self) -> Result<Ticker, ProfilerError> {
        let Some(w) = &self.inner.windows else {
            return Err(ProfilerError::WindowsDisabled);
        };
        let period = Duration::from_nanos((w.len_ns / 10).max(1_000_000));
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let stop2 = Arc::clone(&stop);
        let p = self.clone();
        let handle = std::thread::Builder::new()
            .name("ws-profiler-tick".into())
            .spawn(move || {
                let (m, cv) = &*stop2;
                let mut stopped = lock(m);
                while !*stopped {
                    stopped = cv
                        .wait_timeout(stopped, period)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    if !*stopped {
                        p.tick();
                    }
                }
            })
            .map_err(|e| {
                ProfilerError::InvalidConfig(format!("cannot spawn ticker thread: {e}"))
            })?;
        Ok(Ticker {
            stop,
            handle: Some(handle),
        })
    }

    // ---- reports -----------------------------------------------------------------------

    /// Snapshot everything into an owned [`Report`].
    pub fn report(&self) -> Report {
        let inner = &*self.inner;
        let now_ticks = inner.clock.ticks();
        let now_ns = inner.clock.ticks_to_ns(now_ticks);
        let uptime_ns = inner
            .clock
            .delta_ns(now_ticks.saturating_sub(inner.start_ticks.load(Relaxed)));
        let secs = uptime_ns as f64 / 1e9;
        let rate = |x: u64| if secs > 0.0 { x as f64 / secs } else { 0.0 };
        let (names, enabled) = {
            let c = lock(&inner.control);
            (c.names.clone(), c.enabled)
        };
        let callbacks = names
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let c = inner.cumulative(k);
                let min = c.min_or_zero();
                let [p50, p90, p99, p999] =
                    hist::report_quantiles(&c.hist, c.count, Some(min), c.max);
                CallbackStats {
                    name: name.clone(),
                    count: c.count,
                    total_ns: c.total,
                    min_ns: min,
                    max_ns: c.max,
                    avg_ns: c.total.checked_div(c.count).unwrap_or(0),
                    bytes: c.bytes,
                    last_ns: if c.count == 0 {
                        0
                    } else {
                        inner.clock.ticks_to_ns(c.last_ticks)
                    },
                    p50_ns: p50,
                    p90_ns: p90,
                    p99_ns: p99,
                    p999_ns: p999,
                    calls_per_sec: rate(c.count),
                    bytes_per_sec: rate(c.bytes),
                }
            })
            .collect();
        let windows = inner
            .windows
            .as_ref()
            .map(|w| lock(&w.state).ring.iter().cloned().collect())
            .unwrap_or_default();
        let (connections, untracked) = match &inner.conns {
            None => (Vec::new(), 0),
            Some(t) => {
                let conns = t
                    .entries()
                    .into_iter()
                    .map(|(id, last, per_kind)| {
                        let callbacks: Vec<ConnCallbackStats> = per_kind
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s[0] > 0)
                            .map(|(k, s)| ConnCallbackStats {
                                name: names.get(k).cloned().unwrap_or_default(),
                                count: s[0],
                                total_ns: s[1],
                                avg_ns: s[1] / s[0],
                                max_ns: s[3],
                                bytes: s[2],
                            })
                            .collect();
                        ConnectionReport {
                            id,
                            last_ns: if last == 0 {
                                0
                            } else {
                                inner.clock.ticks_to_ns(last)
                            },
                            total_ns: callbacks.iter().map(|c| c.total_ns).sum(),
                            callbacks,
                        }
                    })
                    .collect();
                (conns, t.untracked.load(Relaxed))
            }
        };
        Report {
            schema_version: SCHEMA_VERSION,
            enabled,
            clock: inner.clock.info(),
            histogram: HistogramInfo {
                sub_bucket_bits: SUB_BUCKET_BITS,
                relative_error: RELATIVE_ERROR,
                max_trackable_ns: MAX_TRACKABLE_NS,
            },
            now_ns,
            uptime_ns,
            callbacks,
            windows,
            connections,
            untracked_connection_records: untracked,
            alerts_fired: inner.alerts_fired.load(Relaxed),
        }
    }

    /// The `q` quantile (0 < q <= 1) of `kind`'s durations since start, in ns, within
    /// [`RELATIVE_ERROR`]; 0 if nothing was recorded.
    pub fn quantile(&self, kind: CallbackKind, q: f64) -> u64 {
        let c = self.inner.cumulative(kind.index());
        hist::quantile(&c.hist, c.count, q, Some(c.min_or_zero()), c.max)
    }
}
