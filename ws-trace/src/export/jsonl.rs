//! JSON lines: one message timeline per line.
//!
//! Schema (field names are stable; new fields may be added, none renamed or removed):
//!
//! ```json
//! {"cookie":4097,"conn_id":1,"msg_seq":0,"len":100,"opcode":2,"tls":"none",
//!  "tid":42,"rx_cpu":1,"app_cpu":3,"seq_end":1000,
//!  "stamps":{"nic":1000000000123,"softirq":1000000001123,...,"decrypt":null,...},
//!  "stages":{"softirq":1000,"tcp":2000,...,"callback_done":6000},
//!  "total_ns":20000}
//! ```
//!
//! - `cookie`: socket cookie; `conn_id`, `msg_seq`: the engine's connection id and message
//!   number on it; `len`: payload bytes; `opcode`: WebSocket opcode; `tls`: `none`,
//!   `userspace` or `ktls`; `tid`: thread that ran the callback; `rx_cpu`: CPU that
//!   received the completing segment; `app_cpu`: CPU that ran the callback; `seq_end`: TCP
//!   sequence number one past the message's last byte.
//! - `stamps`: every stamp name in pipeline order (`nic`, `softirq`, `tcp`, `wakeup`,
//!   `on-cpu`, `epoll`, `recv_start`, `decrypt`, `recv_end`, `parsed`, `callback`,
//!   `callback_done`), CLOCK_MONOTONIC ns, `null` where the stage did not happen.
//! - `stages`: for each present stamp after the first, keyed by that stamp's name, the ns
//!   since the previous *present* stamp (so with `wakeup` and `on-cpu` null, `epoll` is
//!   tcp → epoll). Absent stamps have no key. The values sum to `total_ns` when `nic` and
//!   `callback_done` are present.
//! - `total_ns`: `callback_done - nic`, or `null` if either is absent.
use std::io::Write;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::correlate::{MessageRow, Stamp};

use super::{ExportError, ExportInput};

/// One line.
#[derive(serde::Serialize)]
struct Line<'a> {
    cookie: u64,
    conn_id: u64,
    msg_seq: u64,
    len: u64,
    opcode: u8,
    tls: &'a str,
    tid: u32,
    rx_cpu: u16,
    app_cpu: u16,
    seq_end: u32,
    stamps: Stamps<'a>,
    stages: Stages<'a>,
    total_ns: Option<u64>,
}

/// All stamps by name, in pipeline order.
struct Stamps<'a>(&'a MessageRow);

impl Serialize for Stamps<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(Stamp::ALL.len()))?;
        for st in Stamp::ALL {
            m.serialize_entry(st.name(), &self.0.at(st))?;
        }
        m.end()
    }
}

/// Present stages by the name of the stamp that ends them, in pipeline order.
struct Stages<'a>(&'a MessageRow);

impl Serialize for Stages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (st, ns) in self.0.stages() {
            m.serialize_entry(st.name(), &ns)?;
        }
        m.end()
    }
}

/// Writes one line per row of `input.correlation`.
pub fn write(input: &ExportInput<'_>, out: &mut dyn Write) -> Result<(), ExportError> {
    for row in &input.correlation.rows {
        write_row(row, out)?;
    }
    out.flush()?;
    Ok(())
}

/// Writes one row as one line.
pub fn write_row(row: &MessageRow, out: &mut dyn Write) -> Result<(), ExportError> {
    let line = Line {
        cookie: row.cookie,
        conn_id: row.conn_id,
        msg_seq: row.msg_seq,
        len: row.len,
        opcode: row.opcode,
        tls: row.tls,
        tid: row.tid,
        rx_cpu: row.rx_cpu,
        app_cpu: row.app_cpu,
        seq_end: row.seq_end,
        stamps: Stamps(row),
        stages: Stages(row),
        total_ns: row.total_ns(),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::testdata;
    use serde_json::Value;

    #[test]
    fn lines_parse_and_match_rows() {
        let c = testdata::correlation();
        let text = testdata::render(write);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), c.rows.len());
        for (line, row) in lines.iter().zip(&c.rows) {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["cookie"], row.cookie);
            assert_eq!(v["conn_id"], row.conn_id);
            assert_eq!(v["msg_seq"], row.msg_seq);
            assert_eq!(v["len"], row.len);
            assert_eq!(v["tls"], row.tls);
            assert_eq!(v["tid"], row.tid);
            assert_eq!(v["rx_cpu"], row.rx_cpu);
            assert_eq!(v["app_cpu"], row.app_cpu);
            let stamps = v["stamps"].as_object().unwrap();
            let names: Vec<&str> = stamps.keys().map(String::as_str).collect();
            let mut expected: Vec<&str> = Stamp::ALL.iter().map(|s| s.name()).collect();
            // serde_json's Map sorts keys unless preserve_order is on: compare as sets.
            let mut sorted = names.clone();
            sorted.sort_unstable();
            expected.sort_unstable();
            assert_eq!(sorted, expected);
            for s in Stamp::ALL {
                match row.at(s) {
                    Some(t) => assert_eq!(stamps[s.name()], t, "{}", s.name()),
                    None => assert!(stamps[s.name()].is_null(), "{}", s.name()),
                }
            }
            let stages = v["stages"].as_object().unwrap();
            let expected: Vec<(Stamp, u64)> = row.stages().collect();
            assert_eq!(stages.len(), expected.len());
            for (s, d) in expected {
                assert_eq!(stages[s.name()], d);
            }
            let sum: u64 = stages.values().map(|d| d.as_u64().unwrap()).sum();
            assert_eq!(v["total_ns"], sum);
            assert_eq!(v["total_ns"].as_u64(), row.total_ns());
        }
        // Keys are written in pipeline order.
        assert!(lines[0].find("\"nic\"").unwrap() < lines[0].find("\"callback_done\"").unwrap());
        assert!(lines[1].contains("\"wakeup\":null"));
    }
}
