//! Chrome JSON trace events: loads in the Perfetto UI and in chrome://tracing.
//!
//! The same timeline as [`super::perfetto`]: one complete event (`"ph":"X"`) per stage
//! per message, on the thread that ran the callback or on a pseudo-thread per RX CPU;
//! a flow (`"ph":"s"` on the message's first slice, `"ph":"f","bp":"e"` on its callback
//! slice, `id` = row number + 1) per message, NIC → callback.
//!
//! JSON traces have processes and threads only, so:
//! - the RX CPUs are threads `CPU N (rx)` of a pseudo-process `kernel receive path`;
//! - where a track needs more than one lane (stages of different messages that overlap
//!   partly, see `timeline`), lanes after the first are pseudo-threads
//!   `tid T (overlap K)` of the same process.
//!
//! Pseudo pids and tids start at [`SYNTHETIC_ID_BASE`] (2^30), above any Linux pid
//! (`pid_max` is at most 2^22). `ts` and `dur` are µs written with exactly three decimals,
//! so the CLOCK_MONOTONIC ns survive exactly (no float rounding); `displayTimeUnit` is
//! `ns`. `otherData` carries the clock, counts and, with a trace header, host and kernel.
use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;

use super::timeline::{Place, Timeline};
use super::{ExportError, ExportInput};

/// First pseudo pid/tid; the kernel pseudo-process has this pid.
pub const SYNTHETIC_ID_BASE: u32 = 1 << 30;

/// ns as µs with three decimals.
struct Micros(u64);

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// Where a (track, lane) is drawn: pid, tid.
fn ids(t: &Timeline) -> BTreeMap<(Place, u32), (u32, u32)> {
    let mut next = SYNTHETIC_ID_BASE + 1;
    let mut out = BTreeMap::new();
    for (&place, &lanes) in &t.lanes {
        for lane in 0..lanes {
            let id = match (place, lane) {
                (Place::Thread(tid), 0) => (t.tgid_of.get(&tid).copied().unwrap_or(tid), tid),
                (Place::Thread(tid), _) => {
                    next += 1;
                    (t.tgid_of.get(&tid).copied().unwrap_or(tid), next - 1)
                }
                (Place::Cpu(_), _) => {
                    next += 1;
                    (SYNTHETIC_ID_BASE, next - 1)
                }
            };
            out.insert((place, lane), id);
        }
    }
    out
}

fn lane_name(place: Place, lane: u32) -> String {
    let base = match place {
        Place::Cpu(c) => format!("CPU {c} (rx)"),
        Place::Thread(t) => format!("tid {t}"),
    };
    if lane == 0 {
        base
    } else {
        format!("{base} (overlap {lane})")
    }
}

/// Writes the trace.
pub fn write(input: &ExportInput<'_>, out: &mut dyn Write) -> Result<(), ExportError> {
    let c = input.correlation;
    let t = Timeline::build(input);
    let ids = ids(&t);

    let mut other = json!({
        "source": "ws-trace",
        "clock": "CLOCK_MONOTONIC",
        "messages": c.messages,
        "joined": c.messages().count(),
        "reads": c.reads,
        "reads_joined": c.read_rows().count(),
        "unjoined": c.unjoined.total(),
        "clock_check_ns": c.clock_check_ns,
    });
    if let (Some(h), Some(o)) = (input.header, other.as_object_mut()) {
        o.insert("hostname".into(), json!(h.hostname));
        o.insert("kernel".into(), json!(h.kernel_release));
        o.insert(
            "realtime_minus_monotonic_ns".into(),
            json!(h.created.realtime_minus_monotonic_ns),
        );
    }
    write!(out, "{{\"displayTimeUnit\":\"ns\",\"otherData\":")?;
    serde_json::to_writer(&mut *out, &other)?;
    write!(out, ",\"traceEvents\":[")?;

    let mut first = true;
    let mut sep = |out: &mut dyn Write| -> std::io::Result<()> {
        if first {
            first = false;
            out.write_all(b"\n")
        } else {
            out.write_all(b",\n")
        }
    };

    // Names and order of processes and threads.
    let process_name = process_name(input);
    let mut pids: BTreeMap<u32, ()> = BTreeMap::new();
    for (&(place, lane), &(pid, tid)) in &ids {
        if pids.insert(pid, ()).is_none() {
            let name = if pid == SYNTHETIC_ID_BASE {
                "kernel receive path".to_string()
            } else {
                process_name
                    .as_ref()
                    .map_or_else(|| format!("pid {pid}"), |n| format!("{n} {pid}"))
            };
            sep(out)?;
            let sort = if pid == SYNTHETIC_ID_BASE { 0 } else { 1 };
            let ev = json!([
                {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}},
                {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": sort}},
            ]);
            write_items(out, &ev)?;
        }
        let sort_index = match place {
            Place::Cpu(cpu) => u64::from(cpu) * 1024 + u64::from(lane),
            Place::Thread(t) => u64::from(t) * 1024 + u64::from(lane),
        };
        sep(out)?;
        let ev = json!([
            {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
             "args": {"name": lane_name(place, lane)}},
            {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
             "args": {"sort_index": sort_index}},
        ]);
        write_items(out, &ev)?;
    }

    // Slices in time order (parents before children), then flows.
    for m in t.marks.iter().filter(|m| m.begin) {
        let s = &t.slices[m.slice];
        let row = &c.rows[s.row];
        let (pid, tid) = ids.get(&(s.place, s.lane)).copied().unwrap_or((0, 0));
        let cat = match s.place {
            Place::Cpu(_) => "kernel",
            Place::Thread(_) => "engine",
        };
        sep(out)?;
        write!(out, "{{\"ph\":\"X\",\"name\":")?;
        serde_json::to_writer(&mut *out, &s.name())?;
        write!(
            out,
            ",\"cat\":\"{cat}\",\"ts\":{},\"dur\":{},\"pid\":{pid},\"tid\":{tid},\
             \"args\":{{\"conn_id\":{},\"msg_seq\":{},\"len\":{},\"cookie\":{},\"tls\":\"{}\"}}}}",
            Micros(s.start),
            Micros(s.dur()),
            row.conn_id,
            row.msg_seq,
            row.len,
            row.cookie,
            row.tls,
        )?;
    }
    for s in t.slices.iter().filter(|s| s.flow_start || s.flow_end) {
        let (pid, tid) = ids.get(&(s.place, s.lane)).copied().unwrap_or((0, 0));
        // Inside the slice, so the flow binds to it and not to a neighbour.
        let ts = Micros(s.start + s.dur() / 2);
        for (ph, bp) in [("s", s.flow_start), ("f", s.flow_end)] {
            if !bp {
                continue;
            }
            sep(out)?;
            write!(
                out,
                "{{\"ph\":\"{ph}\",\"name\":\"message\",\"cat\":\"flow\",\"id\":{},\"ts\":{ts},\
                 \"pid\":{pid},\"tid\":{tid}{}}}",
                s.flow_id(),
                if ph == "f" { ",\"bp\":\"e\"" } else { "" },
            )?;
        }
    }
    writeln!(out, "\n]}}")?;
    out.flush()?;
    Ok(())
}

/// Writes the elements of a JSON array, comma-separated, without the brackets.
fn write_items(out: &mut dyn Write, items: &serde_json::Value) -> Result<(), ExportError> {
    if let Some(a) = items.as_array() {
        for (i, v) in a.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, v)?;
        }
    }
    Ok(())
}

/// The traced program's name, when the trace header says (`--comm`, or the command run).
pub(crate) fn process_name(input: &ExportInput<'_>) -> Option<String> {
    let f = &input.header?.filters;
    f.comm.clone().or_else(|| {
        let cmd = f.command.as_ref()?.first()?;
        Some(
            std::path::Path::new(cmd)
                .file_name()
                .map_or_else(|| cmd.clone(), |n| n.to_string_lossy().into_owned()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::testdata;
    use serde_json::Value;

    fn export(events: &[crate::decode::Event]) -> Value {
        let c = testdata::correlation();
        let input = ExportInput {
            correlation: &c,
            events,
            header: None,
        };
        let mut out = Vec::new();
        write(&input, &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn parses_with_slices_and_flows() {
        let c = testdata::correlation();
        let v = export(&[]);
        assert_eq!(v["displayTimeUnit"], "ns");
        assert_eq!(v["otherData"]["joined"], 5);
        let evs = v["traceEvents"].as_array().unwrap();
        let of = |ph: &str| evs.iter().filter(|e| e["ph"] == ph).collect::<Vec<_>>();
        let x = of("X");
        assert_eq!(x.len(), testdata::stage_count(&c));
        let s = of("s");
        let f = of("f");
        assert_eq!(s.len(), c.rows.len());
        assert_eq!(f.len(), c.rows.len());
        assert!(f.iter().all(|e| e["bp"] == "e"));
        // Each flow starts on a kernel slice and ends on the callback slice of its row.
        for (i, row) in c.rows.iter().enumerate() {
            let id = i as u64 + 1;
            let start = s.iter().find(|e| e["id"] == id).unwrap();
            let end = f.iter().find(|e| e["id"] == id).unwrap();
            assert_eq!(start["pid"], SYNTHETIC_ID_BASE);
            assert_eq!(end["tid"], row.tid);
        }
        // Durations add up exactly, in ns.
        let total_ns: u64 = x
            .iter()
            .map(|e| {
                let d = e["dur"].as_f64().unwrap();
                (d * 1000.0).round() as u64
            })
            .sum();
        assert_eq!(total_ns, testdata::stage_ns(&c));
        // ts keeps every ns of a large monotonic stamp.
        let first = x
            .iter()
            .find(|e| e["name"] == "nic→softirq" && e["args"]["conn_id"] == 1)
            .unwrap();
        assert_eq!(first["cat"], "kernel");
        let text = serde_json::to_string(&first["ts"]).unwrap();
        assert_eq!(text, "1000000000.123");
        // Thread 43 needed a second lane, a pseudo-thread of its process.
        let overlap = evs
            .iter()
            .find(|e| e["ph"] == "M" && e["args"]["name"] == "tid 43 (overlap 1)")
            .unwrap();
        assert_eq!(overlap["pid"], 43);
        assert!(overlap["tid"].as_u64().unwrap() > u64::from(SYNTHETIC_ID_BASE));
    }

    #[test]
    fn threads_go_under_their_process() {
        let evs = testdata::events();
        let v = export(&evs);
        let x: Vec<&Value> = v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X" && e["tid"] == 43)
            .collect();
        assert!(!x.is_empty());
        assert!(x.iter().all(|e| e["pid"] == 40));
    }

    #[test]
    fn process_named_after_the_traced_command() {
        let c = testdata::correlation();
        let mut header = crate::tracefile::TraceHeader::default();
        header.filters.command = Some(vec!["/usr/bin/feed-client".into(), "-x".into()]);
        let input = ExportInput {
            correlation: &c,
            events: &[],
            header: Some(&header),
        };
        assert_eq!(process_name(&input).as_deref(), Some("feed-client"));
        let mut header = header.clone();
        header.filters.comm = Some("client".into());
        let input = ExportInput {
            header: Some(&header),
            ..input
        };
        assert_eq!(process_name(&input).as_deref(), Some("client"));
        let mut out = Vec::new();
        write(&input, &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert!(
            v["traceEvents"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "process_name" && e["args"]["name"] == "client 42")
        );
    }

    #[test]
    fn micros_keep_nanoseconds() {
        assert_eq!(Micros(0).to_string(), "0.000");
        assert_eq!(Micros(1).to_string(), "0.001");
        assert_eq!(Micros(1_234_567).to_string(), "1234.567");
    }
}
