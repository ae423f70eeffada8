//! The engine's own table of per-message stamps (a bounded log, oldest overwritten),
//! and percentile helpers for it. The log keeps the raw clock stamps the engine took and
//! converts them to CLOCK_MONOTONIC ns when they are read ([`StampLog::records`]). It also
//! holds the loop's stamp channel, which every message's record is published to while a
//! tracer holds it.

use crate::channel::StampChannel;
use crate::clock::Clock;
use ws_abi::{MsgProbe, MsgStamps};

/// One message's stamps as the engine took them: raw [`Clock::raw`] values (TSC ticks, or
/// ns on the monotonic fallback; 0: not taken).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawRecord {
    /// Connection id.
    pub conn_id: u64,
    /// Message sequence number on the connection.
    pub msg_seq: u64,
    /// Payload length.
    pub len: u64,
    /// Stream offset one past the message's last byte.
    pub stream_end: u64,
    /// Stage stamps, raw (the `_ns` fields hold raw clock values here).
    pub stamps: MsgStamps,
    /// The callback returned, raw.
    pub callback_done: u64,
}

impl RawRecord {
    /// The record with its stamps converted to CLOCK_MONOTONIC ns by `clock`.
    pub fn to_ns(&self, clock: &Clock) -> StampRecord {
        StampRecord {
            conn_id: self.conn_id,
            msg_seq: self.msg_seq,
            len: self.len,
            stream_end: self.stream_end,
            stamps: crate::callback::stamps_to_ns(clock, &self.stamps),
            callback_done_ns: clock.to_ns(self.callback_done),
        }
    }
}

/// One message's stamps as the engine recorded them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StampRecord {
    /// Connection id.
    pub conn_id: u64,
    /// Message sequence number on the connection.
    pub msg_seq: u64,
    /// Payload length.
    pub len: u64,
    /// Stream offset one past the message's last byte.
    pub stream_end: u64,
    /// Stage stamps (CLOCK_MONOTONIC ns).
    pub stamps: MsgStamps,
    /// The callback returned (CLOCK_MONOTONIC ns).
    pub callback_done_ns: u64,
}

/// Stages between consecutive stamps.
pub const STAGES: [&str; 5] = [
    "event→recv_start",
    "recv_start→recv_end",
    "recv_end→parsed",
    "parsed→callback",
    "callback→callback_done",
];

impl StampRecord {
    /// Durations of the [`STAGES`] in ns.
    pub fn stage_ns(&self) -> [u64; 5] {
        let s = &self.stamps;
        [
            s.recv_start_ns.saturating_sub(s.event_ns),
            s.recv_end_ns.saturating_sub(s.recv_start_ns),
            s.parsed_ns.saturating_sub(s.recv_end_ns),
            s.callback_ns.saturating_sub(s.parsed_ns),
            self.callback_done_ns.saturating_sub(s.callback_ns),
        ]
    }

    /// The engine's library overhead: recv_end → callback entry, ns.
    pub fn overhead_ns(&self) -> u64 {
        self.stamps
            .callback_ns
            .saturating_sub(self.stamps.recv_end_ns)
    }
}

/// A bounded log of [`RawRecord`]s, read as [`StampRecord`]s, and the loop's
/// [`StampChannel`] if it has one.
#[derive(Debug)]
pub struct StampLog {
    recs: Vec<RawRecord>,
    cap: usize,
    next: usize,
    total: u64,
    clock: Clock,
    channel: Option<StampChannel>,
}

impl Default for StampLog {
    fn default() -> Self {
        StampLog::new(0)
    }
}

impl StampLog {
    /// A log keeping the last `cap` records (0: record nothing), converting with the
    /// process-wide clock.
    pub fn new(cap: usize) -> Self {
        StampLog::with_clock(cap, *Clock::global())
    }

    /// A log keeping the last `cap` records whose raw stamps `clock` took.
    pub fn with_clock(cap: usize, clock: Clock) -> Self {
        StampLog {
            recs: Vec::with_capacity(cap),
            cap,
            next: 0,
            total: 0,
            clock,
            channel: None,
        }
    }

    /// Publishes every message's record to `channel` from now on.
    pub(crate) fn set_channel(&mut self, channel: StampChannel) {
        self.channel = Some(channel);
    }

    /// The stamp channel, if the loop has one.
    pub fn channel(&self) -> Option<&StampChannel> {
        self.channel.as_ref()
    }

    /// Hands a message's record (stamps in CLOCK_MONOTONIC ns) to the stamp channel.
    #[inline(always)]
    pub(crate) fn publish(&mut self, probe: &MsgProbe, start_ns: u64, done_ns: u64) {
        if let Some(c) = self.channel.as_mut() {
            c.publish(probe, start_ns, done_ns);
        }
    }

    /// Hands a message's record with raw stamps of `clock` to the stamp channel: one
    /// relaxed load and a branch while no tracer holds it.
    #[inline(always)]
    pub(crate) fn publish_raw(&mut self, probe: &MsgProbe, clock: &Clock, start: u64, done: u64) {
        if let Some(c) = self.channel.as_mut() {
            c.publish_raw(probe, clock, start, done);
        }
    }

    /// Makes the records published since the last call visible to the tracer (once per
    /// read's batch of messages).
    #[inline(always)]
    pub(crate) fn flush_channel(&mut self) {
        if let Some(c) = self.channel.as_mut() {
            c.flush();
        }
    }

    /// Replaces the clock records are converted with (the event loop passes its refined
    /// copy, so a record is converted with a conversion at most 100 ms older or newer
    /// than the one in force when it was taken; the rate is within a ppm or so).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Whether recording is on.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.cap > 0
    }

    /// Adds a record (raw stamps).
    #[inline]
    pub fn push(&mut self, r: RawRecord) {
        if self.cap == 0 {
            return;
        }
        if self.recs.len() < self.cap {
            self.recs.push(r);
        } else {
            self.recs[self.next] = r;
        }
        self.next = (self.next + 1) % self.cap;
        self.total += 1;
    }

    /// Records kept (not in order once the log wrapped), converted to CLOCK_MONOTONIC ns.
    pub fn records(&self) -> Vec<StampRecord> {
        self.recs.iter().map(|r| r.to_ns(&self.clock)).collect()
    }

    /// Records kept, raw, as the engine took them.
    pub fn raw_records(&self) -> &[RawRecord] {
        &self.recs
    }

    /// Records ever pushed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Forgets all records.
    pub fn clear(&mut self) {
        self.recs.clear();
        self.next = 0;
    }
}

/// p50 / p99 / max of a sample (sorted in place); zeros when empty.
pub fn percentiles(v: &mut [u64]) -> (u64, u64, u64) {
    if v.is_empty() {
        return (0, 0, 0);
    }
    v.sort_unstable();
    let at = |q: f64| v[(((v.len() - 1) as f64) * q).round() as usize];
    (at(0.50), at(0.99), v[v.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_wraps_and_counts() {
        let mut l = StampLog::new(3);
        for i in 0..5 {
            l.push(RawRecord {
                msg_seq: i,
                ..Default::default()
            });
        }
        assert_eq!(l.total(), 5);
        let mut seqs: Vec<u64> = l.records().iter().map(|r| r.msg_seq).collect();
        seqs.sort();
        assert_eq!(seqs, vec![2, 3, 4]);
        let mut off = StampLog::new(0);
        off.push(RawRecord::default());
        assert!(off.records().is_empty());
    }

    #[test]
    fn percentiles_of_sample() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentiles(&mut v), (51, 99, 100));
        assert_eq!(percentiles(&mut []), (0, 0, 0));
    }

    #[test]
    fn stages_from_stamps() {
        let r = StampRecord {
            stamps: MsgStamps {
                event_ns: 100,
                recv_start_ns: 110,
                recv_end_ns: 130,
                decrypt_start_ns: 0,
                parsed_ns: 135,
                callback_ns: 140,
            },
            callback_done_ns: 200,
            ..Default::default()
        };
        assert_eq!(r.stage_ns(), [10, 20, 5, 5, 60]);
        assert_eq!(r.overhead_ns(), 10);
    }
}
