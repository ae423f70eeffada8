//! The flight recorder of production mode: the raw records of the last few seconds, kept in
//! bounded memory, and the rule that decides when a window of them becomes a capture.
//!
//! Records are stored as they arrive (the ring's bytes and the stamp channel's converted
//! records, the same bytes a trace file holds) in fixed-size chunks that are reused once
//! they fall out of the window, so keeping history costs a copy per record and no
//! allocation once the window is full. A capture is a slice of the window written as an
//! ordinary trace file ([`crate::record::Recorder`]), so `report` and `export` open it.
//!
//! Which messages are slow is decided by the product's own join ([`crate::correlate`]) on
//! the window's events, never by a second implementation of it; the join runs only when
//! the cheap per-interval maxima say a message *may* have crossed the threshold.
use std::collections::VecDeque;
use std::time::Duration;

use std::path::Path;

use crate::correlate::{MessageRow, correlate};
use crate::decode::{Event, decode};
use crate::tracefile::{
    ClockSnapshot, ProbeCounts, TraceFileError, TraceFooter, TraceHeader, TraceWriter,
};

/// Bytes per chunk of the window.
const CHUNK_BYTES: usize = 256 * 1024;
/// Each stored record: its stamp (8 bytes), its length (4 bytes), then its bytes.
const RECORD_OVERHEAD: usize = 12;

/// Errors of the flight recorder's settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlightError {
    /// A threshold that is neither a duration (`200us`, `1.5ms`, `2s`, `500ns`) nor a
    /// percentile (`p99`, `p99.9`).
    #[error(
        "threshold {0:?}: expected a duration (500ns, 200us, 1.5ms, 2s) or a percentile (p99, p99.9)"
    )]
    BadThreshold(String),
    /// A size that is not a number with an optional K/M/G suffix.
    #[error("size {0:?}: expected bytes with an optional K, M or G suffix (e.g. 512M)")]
    BadSize(String),
}

/// When a message is slow enough to capture.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// nic → callback_done (reads: nic → read return) above this many ns.
    Over(u64),
    /// Above this quantile (0 < q < 1) of the end-to-end latencies of the last minute.
    Quantile(f64),
}

impl std::str::FromStr for Threshold {
    type Err = FlightError;

    fn from_str(s: &str) -> Result<Threshold, FlightError> {
        let bad = || FlightError::BadThreshold(s.to_string());
        let t = s.trim();
        if let Some(p) = t.strip_prefix('p').or_else(|| t.strip_prefix('P')) {
            let pct: f64 = p.parse().map_err(|_| bad())?;
            if !(pct > 0.0 && pct < 100.0) {
                return Err(bad());
            }
            return Ok(Threshold::Quantile(pct / 100.0));
        }
        parse_duration(t).map(Threshold::Over).ok_or_else(bad)
    }
}

/// A duration with a unit (`ns`, `us`/`µs`, `ms`, `s`), in ns.
fn parse_duration(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let scale = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    let ns = value * scale;
    (ns.is_finite() && ns >= 1.0 && ns < u64::MAX as f64).then_some(ns as u64)
}

/// A byte count with an optional `K`, `M` or `G` suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, FlightError> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| FlightError::BadSize(s.to_string()))
}

/// One chunk of the window: records back to back, with the stamps of its first and last.
struct Chunk {
    bytes: Vec<u8>,
    first_ns: u64,
    last_ns: u64,
    records: u64,
}

/// The last `window` of raw records, at most `max_bytes` of them.
pub struct FlightRecorder {
    window_ns: u64,
    max_chunks: usize,
    chunks: VecDeque<Chunk>,
    spare: Vec<Chunk>,
    evicted: u64,
    oversized: u64,
}

impl FlightRecorder {
    /// Keeps records for `window` (by their stamps), in at most `max_bytes` of memory
    /// (rounded up to whole chunks, two at least).
    pub fn new(window: Duration, max_bytes: usize) -> FlightRecorder {
        FlightRecorder {
            window_ns: window.as_nanos().min(u64::MAX as u128) as u64,
            max_chunks: max_bytes.div_ceil(CHUNK_BYTES).max(2),
            chunks: VecDeque::new(),
            spare: Vec::new(),
            evicted: 0,
            oversized: 0,
        }
    }

    /// Stores one record stamped `ts_ns` (its header's CLOCK_MONOTONIC stamp), dropping the
    /// oldest chunks that fell out of the window or exceed the memory bound.
    pub fn push(&mut self, ts_ns: u64, raw: &[u8]) {
        let need = RECORD_OVERHEAD + raw.len();
        if need > CHUNK_BYTES {
            self.oversized += 1;
            return;
        }
        let full = self
            .chunks
            .back()
            .is_none_or(|c| c.bytes.len() + need > CHUNK_BYTES);
        if full {
            if self.chunks.len() >= self.max_chunks
                && let Some(old) = self.chunks.pop_front()
            {
                self.evicted += old.records;
                self.spare.push(old);
            }
            let mut chunk = self.spare.pop().unwrap_or_else(|| Chunk {
                bytes: Vec::with_capacity(CHUNK_BYTES),
                first_ns: 0,
                last_ns: 0,
                records: 0,
            });
            chunk.bytes.clear();
            chunk.first_ns = ts_ns;
            chunk.last_ns = ts_ns;
            chunk.records = 0;
            self.chunks.push_back(chunk);
        }
        if let Some(c) = self.chunks.back_mut() {
            c.bytes.extend_from_slice(&ts_ns.to_le_bytes());
            c.bytes.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            c.bytes.extend_from_slice(raw);
            c.first_ns = c.first_ns.min(ts_ns);
            c.last_ns = c.last_ns.max(ts_ns);
            c.records += 1;
        }
        self.expire(ts_ns);
    }

    /// Drops the chunks whose every record is older than `now_ns − window` (the newest
    /// chunk is kept).
    pub fn expire(&mut self, now_ns: u64) {
        let oldest = now_ns.saturating_sub(self.window_ns);
        while self.chunks.len() > 1 && self.chunks.front().is_some_and(|c| c.last_ns < oldest) {
            if let Some(old) = self.chunks.pop_front() {
                self.evicted += old.records;
                self.spare.push(old);
            }
        }
    }

    /// Records stamped within `[from_ns, to_ns]`, oldest chunk first (within a chunk in
    /// arrival order, which per CPU is stamp order; readers sort by stamp).
    pub fn records(&self, from_ns: u64, to_ns: u64) -> impl Iterator<Item = (u64, &[u8])> {
        self.chunks
            .iter()
            .filter(move |c| c.last_ns >= from_ns && c.first_ns <= to_ns)
            .flat_map(|c| ChunkRecords { bytes: &c.bytes })
            .filter(move |(ts, _)| *ts >= from_ns && *ts <= to_ns)
    }

    /// Stamp range held now, if anything is.
    pub fn span(&self) -> Option<(u64, u64)> {
        let first = self.chunks.iter().map(|c| c.first_ns).min()?;
        let last = self.chunks.iter().map(|c| c.last_ns).max()?;
        Some((first, last))
    }

    /// Records held now.
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.records).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory held by the window's chunks (bytes), spares included.
    pub fn memory(&self) -> usize {
        (self.chunks.len() + self.spare.len()) * CHUNK_BYTES
    }

    /// Records that left the window (aged out or pushed out by the memory bound).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Records larger than a chunk, never stored.
    pub fn oversized(&self) -> u64 {
        self.oversized
    }

    /// Bytes the records of `[from_ns, to_ns]` take in a trace file, about (for a quota
    /// check before writing).
    pub fn estimate(&self, from_ns: u64, to_ns: u64) -> u64 {
        self.records(from_ns, to_ns)
            .map(|(_, r)| r.len() as u64 + 8)
            .sum()
    }

    /// Writes the records of `[from_ns, to_ns]` as a trace file at `path` (any trace
    /// header, e.g. [`crate::record::header`] of the session's plan). The footer's `capture`
    /// key says why it was taken, which window it holds and how many records had already
    /// left the window (so a capture that lost its start says so); `extra` adds keys of
    /// the caller's. Returns the records written.
    pub fn write(
        &self,
        path: &Path,
        header: &TraceHeader,
        (from_ns, to_ns): (u64, u64),
        reason: &str,
        mut extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<u64, TraceFileError> {
        let mut w = TraceWriter::create(path, header)?;
        for (_, raw) in self.records(from_ns, to_ns) {
            w.write_record(raw)?;
        }
        let records = w.records_written();
        let by_kind = *w.events_by_kind();
        let probes = ws_abi::ProbeKind::ALL
            .iter()
            .filter(|k| by_kind[**k as usize] > 0)
            .map(|&k| ProbeCounts {
                kind: k as u16,
                name: k.name().to_string(),
                events: by_kind[k as usize],
                // Drops are the session's, not the window's: callers put them in `extra`.
                drops: 0,
                misses: 0,
            })
            .collect();
        let capture = serde_json::json!({
            "reason": reason,
            "from_ns": from_ns,
            "to_ns": to_ns,
            "held_from_ns": self.span().map(|s| s.0),
            "evicted_before": self.evicted,
        });
        extra.insert("capture".to_string(), capture);
        let footer = TraceFooter {
            probes,
            records,
            decode_errors: 0,
            end: ClockSnapshot::now(),
            extra,
        };
        w.finish(&footer)?;
        // On disk before anyone (a capture directory's rename) calls it complete.
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|source| TraceFileError::Io {
                op: "syncing",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(records)
    }

    /// The slow rows among the records of `[from_ns, to_ns]`: decoded and joined by
    /// [`correlate`], keeping each row whose end-to-end time exceeds `over_ns`.
    pub fn slow_rows(&self, from_ns: u64, to_ns: u64, over_ns: u64) -> Vec<MessageRow> {
        let events: Vec<Event> = self
            .records(from_ns, to_ns)
            .filter_map(|(_, raw)| decode(raw).ok())
            .collect();
        correlate(&events)
            .rows
            .into_iter()
            .filter(|r| r.total_ns().is_some_and(|t| t > over_ns))
            .collect()
    }
}

/// Iterates the records of one chunk.
struct ChunkRecords<'a> {
    bytes: &'a [u8],
}

impl<'a> Iterator for ChunkRecords<'a> {
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<(u64, &'a [u8])> {
        let head = self.bytes.get(..RECORD_OVERHEAD)?;
        let ts = u64::from_le_bytes(head[..8].try_into().ok()?);
        let len = u32::from_le_bytes(head[8..12].try_into().ok()?) as usize;
        let raw = self.bytes.get(RECORD_OVERHEAD..RECORD_OVERHEAD + len)?;
        self.bytes = &self.bytes[RECORD_OVERHEAD + len..];
        Some((ts, raw))
    }
}

/// Rate limit and window of captures: at most one per `min_gap`, each holding `before`
/// and `after` around the slow message.
#[derive(Clone, Copy, Debug)]
pub struct CapturePolicy {
    /// Least time between two automatic captures.
    pub min_gap: Duration,
    /// History kept before the slow message's NIC stamp.
    pub before: Duration,
    /// Time after its end included (the capture is written once that has passed).
    pub after: Duration,
}

impl Default for CapturePolicy {
    fn default() -> Self {
        CapturePolicy {
            min_gap: Duration::from_secs(10),
            before: Duration::from_secs(2),
            after: Duration::from_millis(500),
        }
    }
}

/// Why a capture is due.
#[derive(Clone, Debug, PartialEq)]
pub struct CaptureDue {
    /// The slowest row found over the threshold.
    pub row: MessageRow,
    /// How many rows of the checked span were over it.
    pub slow_rows: usize,
    /// The threshold in force (ns).
    pub threshold_ns: u64,
    /// The window to write: `before` ahead of the slow row's NIC stamp to `after` past
    /// its end.
    pub from_ns: u64,
    /// End of that window.
    pub to_ns: u64,
}

/// Decides when the flight recorder's window becomes a capture: checks each span of
/// records once, after `policy.after` has passed, and at most one capture per
/// `policy.min_gap`.
pub struct Trigger {
    threshold: Threshold,
    policy: CapturePolicy,
    checked_to_ns: u64,
    last_capture_ns: Option<u64>,
    suppressed: u64,
    joins: u64,
}

impl Trigger {
    /// A trigger for `threshold` under `policy`.
    pub fn new(threshold: Threshold, policy: CapturePolicy) -> Trigger {
        Trigger {
            threshold,
            policy,
            checked_to_ns: 0,
            last_capture_ns: None,
            suppressed: 0,
            joins: 0,
        }
    }

    /// The threshold in ns now: a fixed one, or the quantile of `recent` (the end-to-end
    /// latencies of the last minute; `None` while it holds nothing).
    pub fn threshold_ns(&self, recent: &crate::stats::LogHistogram) -> Option<u64> {
        match self.threshold {
            Threshold::Over(ns) => Some(ns),
            Threshold::Quantile(q) => (recent.count() > 0).then(|| recent.quantile(q)),
        }
    }

    /// Checks the records stamped up to `now_ns − policy.after` not checked before.
    /// `bound_ns`, when known, is an upper bound of every end-to-end latency in that span
    /// (e.g. the interval's largest kernel stage sum plus its largest engine stage sum):
    /// at or under the threshold the join is skipped. Returns the capture to write, if one
    /// is due and the rate limit allows it (otherwise the slow span is counted as
    /// suppressed).
    pub fn check(
        &mut self,
        rec: &FlightRecorder,
        now_ns: u64,
        recent: &crate::stats::LogHistogram,
        bound_ns: Option<u64>,
    ) -> Option<CaptureDue> {
        let after = self.policy.after.as_nanos() as u64;
        let upto = now_ns.saturating_sub(after);
        if upto <= self.checked_to_ns {
            return None;
        }
        let from = self.checked_to_ns;
        self.checked_to_ns = upto;
        let threshold_ns = self.threshold_ns(recent)?;
        if bound_ns.is_some_and(|b| b <= threshold_ns) {
            return None;
        }
        // Rows are found by their callback (end) stamps; a row whose NIC stamp precedes
        // `from` needs the records before it, so the join looks back by the threshold and
        // keeps only the rows ending inside the span.
        self.joins += 1;
        let look_from = from.saturating_sub(threshold_ns.saturating_mul(2));
        let ends_in_span = |r: &MessageRow| {
            let end = r.total_ns().zip(r.at(crate::correlate::Stamp::Nic));
            end.is_some_and(|(t, nic)| nic + t > from && nic + t <= upto)
        };
        let mut slow: Vec<MessageRow> = rec
            .slow_rows(look_from, upto, threshold_ns)
            .into_iter()
            .filter(ends_in_span)
            .collect();
        slow.sort_by_key(|r| std::cmp::Reverse(r.total_ns()));
        let row = slow.first()?.clone();
        let gap = self.policy.min_gap.as_nanos() as u64;
        if self
            .last_capture_ns
            .is_some_and(|t| now_ns.saturating_sub(t) < gap)
        {
            self.suppressed += 1;
            return None;
        }
        self.last_capture_ns = Some(now_ns);
        let nic = row.at(crate::correlate::Stamp::Nic).unwrap_or(from);
        let end = nic + row.total_ns().unwrap_or(0);
        Some(CaptureDue {
            slow_rows: slow.len(),
            threshold_ns,
            from_ns: nic.saturating_sub(self.policy.before.as_nanos() as u64),
            to_ns: end.saturating_add(after),
            row,
        })
    }

    /// Slow spans not captured because of the rate limit.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Times the join ran (the cheap bound did not rule the span out).
    pub fn joins(&self) -> u64 {
        self.joins
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_as_durations_or_percentiles() {
        assert_eq!("200us".parse(), Ok(Threshold::Over(200_000)));
        assert_eq!("1.5ms".parse(), Ok(Threshold::Over(1_500_000)));
        assert_eq!("2s".parse(), Ok(Threshold::Over(2_000_000_000)));
        assert_eq!("750ns".parse(), Ok(Threshold::Over(750)));
        match "p99.9".parse() {
            Ok(Threshold::Quantile(q)) => assert!((q - 0.999).abs() < 1e-12, "{q}"),
            other => panic!("{other:?}"),
        }
        for bad in ["", "200", "p100", "p0", "-5us", "1.5 parsecs", "pxx", "us"] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad:?}");
        }
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    fn record(i: u64) -> Vec<u8> {
        // A record of 100 bytes whose first 8 are its number.
        let mut r = vec![0u8; 100];
        r[..8].copy_from_slice(&i.to_le_bytes());
        r
    }

    #[test]
    fn the_window_keeps_the_newest_records_in_order() {
        let mut f = FlightRecorder::new(Duration::from_millis(10), 1 << 30);
        // One record per 10 µs for 50 ms: the window holds the last ~10 ms.
        for i in 0..5_000u64 {
            f.push(i * 10_000, &record(i));
        }
        let (first, last) = f.span().expect("records");
        assert_eq!(last, 4_999 * 10_000);
        assert!(first <= last - 10_000_000, "the whole window is kept");
        assert!(
            first >= last - 10_000_000 - 3_000 * 10_000,
            "old chunks left"
        );
        let got: Vec<u64> = f
            .records(last - 1_000_000, last)
            .map(|(ts, raw)| {
                let n = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
                assert_eq!(ts, n * 10_000);
                n
            })
            .collect();
        assert_eq!(got, (4_899..5_000).collect::<Vec<_>>());
        assert_eq!(f.len() + f.evicted(), 5_000);
    }

    #[test]
    fn slow_rows_come_from_the_join_of_the_window() {
        let mut f = FlightRecorder::new(Duration::from_secs(5), 1 << 20);
        for e in crate::correlate::tests::one_message_events() {
            f.push(e.header().ts_ns, &e.to_bytes());
        }
        let (from, to) = f.span().expect("records");
        let total = |over| f.slow_rows(from, to, over);
        let rows = total(1_000);
        assert_eq!(rows.len(), 1);
        let t = rows[0].total_ns().expect("joined");
        assert!(total(t - 1).len() == 1 && total(t).is_empty(), "{t} ns");
        // Without the packet's own events the message does not join: nothing is slow.
        assert!(f.slow_rows(from + 500, to, 0).is_empty());
    }

    #[test]
    fn a_capture_reads_back_as_a_trace_with_its_slow_message() {
        let mut f = FlightRecorder::new(Duration::from_secs(5), 1 << 20);
        let events = crate::correlate::tests::one_message_events();
        for e in &events {
            f.push(e.header().ts_ns, &e.to_bytes());
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("capture.wstrace");
        let header = TraceHeader::for_this_host(Vec::new(), Default::default());
        let (from, to) = f.span().expect("records");
        let n = f
            .write(&path, &header, (from, to), "test", Default::default())
            .expect("written");
        assert_eq!(n, events.len() as u64);
        let trace = crate::report::load(&path).expect("a trace");
        let c = correlate(&trace.events);
        assert_eq!(c.messages().count(), 1);
        assert!(!trace.truncated && trace.undecodable == 0);
        let reader = crate::tracefile::TraceReader::open(&path).expect("opens");
        let capture = &reader.footer().expect("footer").extra["capture"];
        assert_eq!(capture["reason"], "test");
    }

    #[test]
    fn the_trigger_fires_once_per_gap_and_skips_spans_its_bound_rules_out() {
        let mut f = FlightRecorder::new(Duration::from_secs(5), 1 << 20);
        let events = crate::correlate::tests::one_message_events();
        for e in &events {
            f.push(e.header().ts_ns, &e.to_bytes());
        }
        let total = f.slow_rows(0, u64::MAX, 0)[0].total_ns().expect("joined");
        let policy = CapturePolicy {
            min_gap: Duration::from_secs(10),
            before: Duration::from_nanos(500),
            after: Duration::from_nanos(1_000),
        };
        let recent = crate::stats::LogHistogram::new();
        let now = 20_000;
        // A bound at the threshold: no join at all.
        let mut t = Trigger::new(Threshold::Over(total - 1), policy);
        assert_eq!(t.check(&f, now, &recent, Some(total - 1)), None);
        assert_eq!(t.joins(), 0);
        // Unknown bound: the join finds the message.
        let mut t = Trigger::new(Threshold::Over(total - 1), policy);
        let due = t.check(&f, now, &recent, None).expect("due");
        assert_eq!(due.row.total_ns(), Some(total));
        assert_eq!(due.from_ns, 1_000 - 500);
        assert_eq!(due.to_ns, 1_000 + total + 1_000);
        // The same span is never checked twice.
        assert_eq!(t.check(&f, now, &recent, None), None);
        // A percentile threshold needs a history first.
        let mut t = Trigger::new(Threshold::Quantile(0.5), policy);
        assert_eq!(t.check(&f, now, &recent, None), None);
        let mut fast = crate::stats::LogHistogram::new();
        fast.record(100);
        let mut t = Trigger::new(Threshold::Quantile(0.5), policy);
        assert!(t.check(&f, now, &fast, None).is_some());
    }

    #[test]
    fn memory_stays_bounded_whatever_the_window() {
        let max = 4 * CHUNK_BYTES;
        let mut f = FlightRecorder::new(Duration::from_secs(3600), max);
        for i in 0..200_000u64 {
            f.push(i, &record(i));
        }
        assert!(f.memory() <= max + CHUNK_BYTES, "{} bytes", f.memory());
        assert!(f.evicted() > 0);
        assert_eq!(f.len() + f.evicted(), 200_000);
        // The newest records survive.
        assert_eq!(f.records(199_999, 199_999).count(), 1);
        f.push(0, &vec![0u8; CHUNK_BYTES]);
        assert_eq!(f.oversized(), 1);
    }
}
