//! Full mode's per-interval stage histograms: the session's events are kept for a short
//! window and joined into rows ([`correlate`](mod@crate::correlate)) once per interval; the
//! rows of the messages whose callback ran in the interval go into a cumulative
//! [`StageSnapshot`], the same reading the in-kernel aggregation gives.
use std::collections::{HashMap, HashSet};

use ws_abi::ProbeKind;

use crate::{
    correlate::{self, RowKind, Stamp},
    decode::Event,
    stats::StageSnapshot,
};

/// How long after a message's callback its rows are joined: events reach user space a
/// little late (the ring is waited on for up to 100 ms, stamp channels are drained every
/// pass), so an interval is closed this long after it ends.
pub const SETTLE_NS: u64 = 250_000_000;

/// How far before an interval's start events are kept for the join: a message whose NIC
/// stamp is older than this when its callback runs loses its early events and counts as
/// unjoined.
pub const SPAN_NS: u64 = 1_000_000_000;

/// Events kept for the join at most (about 150 B each: ~75 MB). At ~14 events per
/// message this holds the window of ~17 000 messages a second; beyond it, events are not
/// kept (counted in [`JoinCounts::not_kept`]) and their messages count as unjoined.
/// Aggregate mode has no such bound.
pub const MAX_KEPT: usize = 500_000;

/// CLOCK_MONOTONIC now, ns (the probes' and the engine's clock).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// How the view names this source.
pub fn source() -> String {
    format!(
        "full mode: each message joined, NIC to callback (intervals close {:.2} s late)",
        SETTLE_NS as f64 / 1e9
    )
}

/// Rows of the messages (and reads) seen so far, as cumulative stage histograms.
pub struct LiveStages {
    events: Vec<Event>,
    snapshot: StageSnapshot,
    ports: HashMap<u64, (u16, u16)>,
    /// Callbacks before this (ns) were counted.
    closed_until: u64,
    /// (cookie, message, thread) of the callbacks of the interval being closed.
    callbacks: HashSet<(u64, u64, u32)>,
    messages: u64,
    joined: u64,
    not_kept: u64,
    cap: usize,
    per_connection: bool,
}

/// Message counts of a [`LiveStages`] so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinCounts {
    /// Callbacks in the closed intervals.
    pub messages: u64,
    /// Those joined into a row (in the stage histograms).
    pub joined: u64,
    /// Events not kept for the join because [`MAX_KEPT`] were held.
    pub not_kept: u64,
}

impl JoinCounts {
    /// What was counted since `earlier`.
    pub fn since(&self, earlier: &JoinCounts) -> JoinCounts {
        JoinCounts {
            messages: self.messages.saturating_sub(earlier.messages),
            joined: self.joined.saturating_sub(earlier.joined),
            not_kept: self.not_kept.saturating_sub(earlier.not_kept),
        }
    }
}

impl LiveStages {
    /// Nothing seen yet; `per_connection` keeps a histogram per socket; at most
    /// [`MAX_KEPT`] events are kept.
    pub fn new(per_connection: bool) -> LiveStages {
        LiveStages::with_cap(per_connection, MAX_KEPT)
    }

    /// As [`LiveStages::new`], keeping at most `cap` events.
    pub fn with_cap(per_connection: bool, cap: usize) -> LiveStages {
        LiveStages {
            events: Vec::new(),
            snapshot: StageSnapshot::default(),
            ports: HashMap::new(),
            closed_until: 0,
            callbacks: HashSet::new(),
            messages: 0,
            joined: 0,
            not_kept: 0,
            cap,
            per_connection,
        }
    }

    /// Keeps an event for the next join (unless the cap is reached: [`MAX_KEPT`]). A `tcp_probe`
    /// event names its socket's ports.
    pub fn push(&mut self, event: &Event) {
        if let Event::Tcp(t) = event
            && t.cookie != 0
        {
            self.ports.insert(t.cookie, (t.lport, t.rport));
        }
        if self.events.len() >= self.cap {
            self.not_kept += 1;
            return;
        }
        self.events.push(*event);
    }

    /// Closes the interval up to `now_ns - SETTLE_NS` (CLOCK_MONOTONIC): joins the kept
    /// events and records the rows of the callbacks (and, for sockets without engine
    /// messages, the reads) that fell in it; then forgets events too old to matter.
    pub fn close(&mut self, now_ns: u64) {
        let until = now_ns.saturating_sub(SETTLE_NS);
        if until <= self.closed_until {
            return;
        }
        let from = self.closed_until;
        self.callbacks.clear();
        for e in &self.events {
            if let Event::Callback(c) = e
                && e.kind() == ProbeKind::CallbackEntry
                && (from..until).contains(&c.hdr.ts_ns)
            {
                self.callbacks
                    .insert((c.probe.sock_cookie, c.probe.msg_seq, c.hdr.tid));
            }
        }
        self.messages += self.callbacks.len() as u64;
        let joined = correlate::correlate(&self.events);
        for row in &joined.rows {
            let counted = match row.kind {
                RowKind::Message => self.callbacks.contains(&(row.cookie, row.msg_seq, row.tid)),
                RowKind::Read => row
                    .at(Stamp::Read)
                    .is_some_and(|t| (from..until).contains(&t)),
            };
            if counted {
                if row.kind == RowKind::Message {
                    self.joined += 1;
                }
                self.snapshot.record_row(row, self.per_connection);
            }
        }
        self.snapshot.name_ports(&self.ports);
        self.snapshot.at_ns = until;
        self.closed_until = until;
        let keep_from = until.saturating_sub(SPAN_NS);
        self.events.retain(|e| e.header().ts_ns >= keep_from);
    }

    /// Every closed interval so far (cumulative, like the kernel's histograms).
    pub fn snapshot(&self) -> &StageSnapshot {
        &self.snapshot
    }

    /// Messages counted and joined so far.
    pub fn counts(&self) -> JoinCounts {
        JoinCounts {
            messages: self.messages,
            joined: self.joined,
            not_kept: self.not_kept,
        }
    }

    /// Events kept for the next join.
    pub fn kept(&self) -> usize {
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::tests::{A, Conn, Trace, message_at};

    const S: u64 = 1_000_000_000;

    fn conn(cookie: u64, lport: u16) -> Conn {
        Conn { cookie, lport, ..A }
    }

    #[test]
    fn each_message_counts_in_the_interval_its_callback_ran_in() {
        let mut live = LiveStages::new(true);
        let mut t = Trace::default();
        message_at(&mut t, 10 * S, conn(1, 41_000));
        // Its callback runs 5.4 µs after 10.6 s: in the second interval.
        message_at(&mut t, 10 * S + 600_000_000, conn(2, 42_000));
        t.events.iter().for_each(|e| live.push(e));

        live.close(10 * S + 500_000_000 + SETTLE_NS);
        assert_eq!(
            live.counts(),
            JoinCounts {
                messages: 1,
                joined: 1,
                not_kept: 0
            }
        );
        let first = live.snapshot().clone();
        assert_eq!(first.total.count(), 1);
        // NIC at +1 000, callback done at +6 410 (the engine's done stamp).
        assert_eq!(first.total.sum(), 5_410);
        assert_eq!(first.connections.len(), 1);
        assert_eq!(first.connections[0].ports, (41_000, 443));

        // The same events joined again: nothing counts twice.
        live.close(10 * S + 500_000_000 + SETTLE_NS);
        assert_eq!(live.snapshot(), &first);

        live.close(11 * S + SETTLE_NS);
        let interval = live.snapshot().since(&first);
        assert_eq!(interval.total.count(), 1);
        assert_eq!(interval.connections.len(), 2);
        let second = interval
            .connections
            .iter()
            .find(|c| c.cookie == 2)
            .expect("the second connection");
        assert_eq!((second.ports, second.total.count()), ((42_000, 443), 1));
        assert_eq!(interval.stage(Stamp::Tcp).map(|h| h.count()), Some(1));
        assert_eq!(
            live.counts()
                .since(&JoinCounts {
                    messages: 1,
                    joined: 1,
                    not_kept: 0
                })
                .joined,
            1
        );
    }

    #[test]
    fn a_message_that_cannot_be_joined_is_counted_as_seen_not_joined() {
        let mut live = LiveStages::new(false);
        let mut t = Trace::default();
        message_at(&mut t, 10 * S, conn(1, 41_000));
        // The segment of the second message was lost: no TCP stamp, no row.
        let mut lossy = Trace::default();
        message_at(&mut lossy, 10 * S + 100_000_000, conn(2, 42_000));
        lossy.events.retain(|e| e.kind() != ProbeKind::TcpProbe);
        t.events
            .iter()
            .chain(&lossy.events)
            .for_each(|e| live.push(e));
        live.close(11 * S);
        assert_eq!(
            live.counts(),
            JoinCounts {
                messages: 2,
                joined: 1,
                not_kept: 0
            }
        );
        assert_eq!(live.snapshot().total.count(), 1);
        assert!(live.snapshot().connections.is_empty(), "not asked for");
    }

    #[test]
    fn events_beyond_the_cap_are_counted_and_their_message_is_unjoined() {
        let mut t = Trace::default();
        message_at(&mut t, 10 * S, conn(1, 41_000));
        let n = t.events.len();
        // Room for all but the last three (the callback's entry and exit among them).
        let mut live = LiveStages::with_cap(false, n - 3);
        t.events.iter().for_each(|e| live.push(e));
        assert_eq!(live.kept(), n - 3);
        live.close(11 * S);
        assert_eq!(live.counts().not_kept, 3);
        assert_eq!(live.counts().joined, 0);
        assert_eq!(live.snapshot().total.count(), 0);
    }

    #[test]
    fn events_older_than_the_span_are_forgotten() {
        let mut live = LiveStages::new(false);
        let mut t = Trace::default();
        message_at(&mut t, 10 * S, conn(1, 41_000));
        message_at(&mut t, 12 * S, conn(2, 42_000));
        t.events.iter().for_each(|e| live.push(e));
        let all = live.kept();
        live.close(11 * S + SETTLE_NS);
        assert_eq!(live.kept(), all, "within the span of the closed interval");
        live.close(12 * S + SPAN_NS / 2 + SETTLE_NS);
        assert_eq!(live.kept(), all / 2, "the first message's events are gone");
        assert_eq!(live.counts().joined, 2);
    }
}
