//! Folded stacks (Brendan Gregg's `frame;frame;frame weight` lines), where a stack is a
//! stage path and its weight the time spent in it.
//!
//! Each stage of each message adds its ns to the stack `ws;conn N;from→to`, e.g.
//! `ws;conn 3;nic→softirq 48211`. `from` is the previous *present* stamp, so a message
//! whose thread was already running adds to `tcp→epoll` rather than `tcp→wakeup`.
//! Lines are grouped by connection (ascending id) and, within one, in pipeline order, so
//! a flamegraph drawn without re-sorting ([`super::svg`]) shows the stages left to right
//! as a message goes through them. Zero-weight stacks are left out; the weights sum to
//! the sum of all stage durations of all rows.
use std::collections::BTreeMap;
use std::io::Write;

use crate::correlate::{Correlation, Stamp};

use super::timeline::{row_stages, stage_name};
use super::{ExportError, ExportInput};

/// One folded stack and its weight in ns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    /// `ws;conn N;from→to`.
    pub frames: String,
    /// Ns spent in it, over all messages.
    pub ns: u64,
}

/// The stacks of a correlation, in connection then pipeline order.
pub fn stacks(c: &Correlation) -> Vec<Stack> {
    // (conn, to, from) orders a connection's stages as the pipeline runs them.
    let mut by: BTreeMap<(u64, Stamp, Stamp), u64> = BTreeMap::new();
    for row in &c.rows {
        for (from, to, start, end) in row_stages(row) {
            *by.entry((row.conn_id, to, from)).or_insert(0) += end - start;
        }
    }
    by.into_iter()
        .filter(|&(_, ns)| ns > 0)
        .map(|((conn, to, from), ns)| Stack {
            frames: format!("ws;conn {conn};{}", stage_name(from, to)),
            ns,
        })
        .collect()
}

/// Writes the folded stacks, one per line.
pub fn write(input: &ExportInput<'_>, out: &mut dyn Write) -> Result<(), ExportError> {
    for s in stacks(input.correlation) {
        writeln!(out, "{} {}", s.frames, s.ns)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::testdata;

    #[test]
    fn weights_sum_to_stage_durations() {
        let c = testdata::correlation();
        let text = testdata::render(write);
        let mut sum = 0u64;
        for line in text.lines() {
            let (stack, weight) = line.rsplit_once(' ').unwrap();
            let frames: Vec<&str> = stack.split(';').collect();
            assert_eq!(frames.len(), 3, "{line}");
            assert_eq!(frames[0], "ws");
            assert!(frames[1].starts_with("conn "));
            assert!(frames[2].contains('→'));
            let w: u64 = weight.parse().unwrap();
            assert!(w > 0);
            sum += w;
        }
        assert_eq!(sum, testdata::stage_ns(&c));
        // Row 1 had no wakeup: its stage after tcp is tcp→recv_start.
        assert!(text.contains("ws;conn 1;tcp→recv_start 8000\n"));
        // Both messages of conn 1 went through nic→softirq (1000 ns each).
        assert!(text.starts_with("ws;conn 1;nic→softirq 2000\n"));
        // The zero-length parsed→callback of row 2 adds nothing to conn 2's 200 + 100 ns.
        assert!(text.contains("ws;conn 2;parsed→callback 300\n"));
        // The 50 µs callback dominates.
        assert!(text.contains("ws;conn 2;callback→callback_done 51400\n"));
    }

    #[test]
    fn pipeline_order_within_a_connection() {
        let c = testdata::correlation();
        let s = stacks(&c);
        let conn2: Vec<&str> = s
            .iter()
            .filter(|s| s.frames.starts_with("ws;conn 2;"))
            .map(|s| s.frames.as_str())
            .collect();
        assert_eq!(conn2.first(), Some(&"ws;conn 2;nic→softirq"));
        assert_eq!(conn2.last(), Some(&"ws;conn 2;callback→callback_done"));
    }
}
