//! Aggregated latencies: histograms in the shared log-linear layout, per timeline stage.
//!
//! A [`StageSnapshot`] is what production mode reads once per interval or scrape (the
//! probes' in-kernel histograms merged with the engine stages drained from the stamp
//! channel) and what `serve`'s `/metrics`, `top` and `attach`'s live table show. Readings
//! are cumulative since the session started; [`StageSnapshot::since`] gives an interval.
pub mod hist;
mod rows;

pub use hist::LogHistogram;

use crate::correlate::Stamp;

/// Latencies of one timeline stage. A stage is named after the stamp that ends it and
/// lasts from the previous stamp present in the row (see `docs/design.md`).
#[derive(Debug, PartialEq, Eq)]
pub struct StageHistogram {
    /// The stamp that ends the stage.
    pub stamp: Stamp,
    /// Its durations (ns).
    pub hist: LogHistogram,
}

/// End-to-end latencies and counts of one connection (only kept when asked for, capped).
#[derive(Debug, PartialEq, Eq)]
pub struct ConnectionStats {
    /// The socket cookie.
    pub cookie: u64,
    /// Local and remote port.
    pub ports: (u16, u16),
    /// The connection's end-to-end latencies (ns).
    pub total: LogHistogram,
}

/// One reading of every stage histogram, cumulative since the session started.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StageSnapshot {
    /// CLOCK_MONOTONIC ns when it was read.
    pub at_ns: u64,
    /// One histogram per stage, in pipeline order; a stage never seen may be absent.
    pub stages: Vec<StageHistogram>,
    /// End to end (nic → callback_done for messages, nic → read return for reads).
    pub total: LogHistogram,
    /// Per connection, when asked for.
    pub connections: Vec<ConnectionStats>,
}

// Clone by hand for `clone_from`: a reading kept from one interval to the next reuses
// its histograms (no allocation once the stages are known).
impl Clone for StageHistogram {
    fn clone(&self) -> Self {
        Self {
            stamp: self.stamp,
            hist: self.hist.clone(),
        }
    }
    fn clone_from(&mut self, source: &Self) {
        self.stamp = source.stamp;
        self.hist.clone_from(&source.hist);
    }
}

impl Clone for ConnectionStats {
    fn clone(&self) -> Self {
        Self {
            cookie: self.cookie,
            ports: self.ports,
            total: self.total.clone(),
        }
    }
    fn clone_from(&mut self, source: &Self) {
        self.cookie = source.cookie;
        self.ports = source.ports;
        self.total.clone_from(&source.total);
    }
}

impl Clone for StageSnapshot {
    fn clone(&self) -> Self {
        Self {
            at_ns: self.at_ns,
            stages: self.stages.clone(),
            total: self.total.clone(),
            connections: self.connections.clone(),
        }
    }
    fn clone_from(&mut self, source: &Self) {
        self.at_ns = source.at_ns;
        self.stages.clone_from(&source.stages);
        self.total.clone_from(&source.total);
        self.connections.clone_from(&source.connections);
    }
}

impl StageSnapshot {
    /// The histogram of the stage ended by `stamp`, if any.
    pub fn stage(&self, stamp: Stamp) -> Option<&LogHistogram> {
        self.stages
            .iter()
            .find(|s| s.stamp == stamp)
            .map(|s| &s.hist)
    }

    /// What happened between `earlier` (a previous reading of the same session) and this
    /// reading: every histogram differenced ([`LogHistogram::since`]); stages and
    /// connections new since then are taken whole.
    pub fn since(&self, earlier: &StageSnapshot) -> StageSnapshot {
        let mut d = StageSnapshot::default();
        self.since_into(earlier, &mut d);
        d
    }

    /// [`StageSnapshot::since`] written into `out`, reusing its histograms where its
    /// stages and connections are the same as this reading's (every interval of a session,
    /// once its stages have been seen: no allocation).
    pub fn since_into(&self, earlier: &StageSnapshot, out: &mut StageSnapshot) {
        out.at_ns = self.at_ns;
        out.stages.truncate(self.stages.len());
        for (i, s) in self.stages.iter().enumerate() {
            if i == out.stages.len() {
                out.stages.push(StageHistogram {
                    stamp: s.stamp,
                    hist: LogHistogram::new(),
                });
            }
            let dst = &mut out.stages[i];
            dst.stamp = s.stamp;
            match earlier.stage(s.stamp) {
                Some(before) => s.hist.since_into(before, &mut dst.hist),
                None => dst.hist.clone_from(&s.hist),
            }
        }
        self.total.since_into(&earlier.total, &mut out.total);
        out.connections.truncate(self.connections.len());
        for (i, c) in self.connections.iter().enumerate() {
            if i == out.connections.len() {
                out.connections.push(ConnectionStats {
                    cookie: c.cookie,
                    ports: c.ports,
                    total: LogHistogram::new(),
                });
            }
            let dst = &mut out.connections[i];
            dst.cookie = c.cookie;
            dst.ports = c.ports;
            match earlier.connections.iter().find(|e| e.cookie == c.cookie) {
                Some(before) => c.total.since_into(&before.total, &mut dst.total),
                None => dst.total.clone_from(&c.total),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_holds_only_what_came_after_the_earlier_reading() {
        let mut tcp = LogHistogram::new();
        tcp.record(1_000);
        let earlier = StageSnapshot {
            at_ns: 1,
            stages: vec![StageHistogram {
                stamp: Stamp::Tcp,
                hist: tcp.clone(),
            }],
            ..Default::default()
        };
        tcp.record(3_000);
        let mut parsed = LogHistogram::new();
        parsed.record(200);
        let later = StageSnapshot {
            at_ns: 2,
            stages: vec![
                StageHistogram {
                    stamp: Stamp::Tcp,
                    hist: tcp,
                },
                StageHistogram {
                    stamp: Stamp::Parsed,
                    hist: parsed,
                },
            ],
            ..Default::default()
        };
        let d = later.since(&earlier);
        assert_eq!(d.stage(Stamp::Tcp).map(LogHistogram::count), Some(1));
        assert_eq!(d.stage(Stamp::Tcp).map(|h| h.sum()), Some(3_000));
        assert_eq!(d.stage(Stamp::Parsed).map(LogHistogram::count), Some(1));
        assert_eq!(d.at_ns, 2);
        // Into a snapshot that held another interval (more stages): the same result.
        let mut out = later.clone();
        out.stages.push(StageHistogram {
            stamp: Stamp::Nic,
            hist: LogHistogram::new(),
        });
        later.since_into(&earlier, &mut out);
        assert_eq!(out, d);
    }
}
