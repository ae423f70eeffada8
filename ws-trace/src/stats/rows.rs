//! [`StageSnapshot`]s from joined rows: the full mode's way to the same readings the
//! in-kernel aggregation gives (every message is joined in user space first).
use std::collections::HashMap;

use super::{ConnectionStats, LogHistogram, StageHistogram, StageSnapshot};
use crate::correlate::{MessageRow, Stamp};

impl StageSnapshot {
    /// Adds one row: each stage it went through ([`MessageRow::stages`]) to that stage's
    /// histogram (created in pipeline order when first seen), its end-to-end time to
    /// [`StageSnapshot::total`], and, when `per_connection` is set, that time to its
    /// connection's histogram. A row without a NIC stamp has no total; its stages count.
    pub fn record_row(&mut self, row: &MessageRow, per_connection: bool) {
        for (stamp, ns) in row.stages() {
            self.stage_mut(stamp).record(ns);
        }
        let Some(total) = row.total_ns() else {
            return;
        };
        self.total.record(total);
        if per_connection {
            match self.connections.iter_mut().find(|c| c.cookie == row.cookie) {
                Some(c) => c.total.record(total),
                None => {
                    let mut hist = LogHistogram::new();
                    hist.record(total);
                    self.connections.push(ConnectionStats {
                        cookie: row.cookie,
                        ports: (0, 0),
                        total: hist,
                    });
                }
            }
        }
    }

    /// A snapshot of `rows` (read at `at_ns`): [`StageSnapshot::record_row`] for each.
    pub fn from_rows<'a>(
        rows: impl IntoIterator<Item = &'a MessageRow>,
        at_ns: u64,
        per_connection: bool,
    ) -> StageSnapshot {
        let mut s = StageSnapshot {
            at_ns,
            ..StageSnapshot::default()
        };
        for row in rows {
            s.record_row(row, per_connection);
        }
        s
    }

    /// Names the connections' ports (local, remote) from `ports` by socket cookie; a
    /// connection not in it keeps what it had.
    pub fn name_ports(&mut self, ports: &HashMap<u64, (u16, u16)>) {
        for c in &mut self.connections {
            if let Some(&p) = ports.get(&c.cookie) {
                c.ports = p;
            }
        }
    }

    /// The histogram of the stage ended by `stamp`, inserted (empty) in pipeline order
    /// if the snapshot has none yet.
    pub fn stage_mut(&mut self, stamp: Stamp) -> &mut LogHistogram {
        let i = match self.stages.binary_search_by_key(&stamp, |s| s.stamp) {
            Ok(i) => i,
            Err(i) => {
                self.stages.insert(
                    i,
                    StageHistogram {
                        stamp,
                        hist: LogHistogram::new(),
                    },
                );
                i
            }
        };
        &mut self.stages[i].hist
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::RowKind;

    #[test]
    fn every_stage_of_every_row_lands_in_its_histogram_in_pipeline_order() {
        // Two messages: one woke its thread (wakeup present), one found it running.
        let woke = MessageRow::with_stamps(&[
            (Stamp::Nic, 1_000),
            (Stamp::Softirq, 3_000),
            (Stamp::Tcp, 4_000),
            (Stamp::Wakeup, 10_000),
            (Stamp::RecvStart, 12_000),
            (Stamp::RecvEnd, 13_000),
            (Stamp::Parsed, 13_500),
            (Stamp::Callback, 13_600),
            (Stamp::CallbackDone, 20_000),
        ]);
        let mut running = MessageRow::with_stamps(&[
            (Stamp::Nic, 50_000),
            (Stamp::Softirq, 51_000),
            (Stamp::Tcp, 52_000),
            (Stamp::RecvStart, 60_000),
            (Stamp::RecvEnd, 61_000),
            (Stamp::Parsed, 61_200),
            (Stamp::Callback, 61_300),
            (Stamp::CallbackDone, 70_000),
        ]);
        running.cookie = 7;
        let s = StageSnapshot::from_rows([&running, &woke], 99, true);
        assert_eq!(s.at_ns, 99);
        let order: Vec<Stamp> = s.stages.iter().map(|h| h.stamp).collect();
        assert_eq!(
            order,
            [
                Stamp::Softirq,
                Stamp::Tcp,
                Stamp::Wakeup,
                Stamp::RecvStart,
                Stamp::RecvEnd,
                Stamp::Parsed,
                Stamp::Callback,
                Stamp::CallbackDone
            ]
        );
        let count = |st| s.stage(st).map(LogHistogram::count);
        assert_eq!(count(Stamp::Tcp), Some(2));
        assert_eq!(count(Stamp::Wakeup), Some(1));
        // Without a wakeup, recv_start follows tcp directly: 8 µs for the running one.
        assert_eq!(
            s.stage(Stamp::RecvStart).map(|h| h.sum()),
            Some(2_000 + 8_000)
        );
        assert_eq!(s.stage(Stamp::Tcp).map(|h| h.max()), Some(1_000));
        assert_eq!(s.total.count(), 2);
        assert_eq!(s.total.sum(), 19_000 + 20_000);
        assert_eq!(s.total.max(), 20_000);
        let mut conns: Vec<(u64, u64)> = s
            .connections
            .iter()
            .map(|c| (c.cookie, c.total.sum()))
            .collect();
        conns.sort();
        assert_eq!(conns, [(1, 19_000), (7, 20_000)]);
    }

    #[test]
    fn rows_without_a_nic_stamp_count_their_stages_but_no_total() {
        let mut read = MessageRow::with_stamps(&[(Stamp::Tcp, 100), (Stamp::Read, 400)]);
        read.kind = RowKind::Read;
        let mut s = StageSnapshot::from_rows([&read], 0, true);
        assert_eq!(s.stage(Stamp::Read).map(|h| h.sum()), Some(300));
        assert_eq!(s.total.count(), 0);
        assert!(s.connections.is_empty());
        // A snapshot built row by row differences like the kernel's cumulative readings.
        let before = s.clone();
        s.record_row(&read, false);
        let d = s.since(&before);
        assert_eq!(d.stage(Stamp::Read).map(LogHistogram::count), Some(1));
    }

    #[test]
    fn ports_name_the_connections_they_are_known_for() {
        let row = MessageRow::with_stamps(&[(Stamp::Nic, 0), (Stamp::CallbackDone, 5)]);
        let mut s = StageSnapshot::from_rows([&row], 0, true);
        s.name_ports(&HashMap::from([(1, (40_000, 443)), (2, (1, 2))]));
        assert_eq!(s.connections[0].ports, (40_000, 443));
        assert_eq!(s.connections.len(), 1);
    }
}
