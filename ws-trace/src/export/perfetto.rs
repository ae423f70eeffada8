//! Perfetto's native protobuf trace (open it at ui.perfetto.dev or with trace_processor).
//!
//! # Encoding: hand-written `prost` messages
//! The file is a `perfetto.protos.Trace`: a sequence of `TracePacket`s, each written as
//! field 1 of `Trace` (so the file is just packets back to back). The few messages this
//! needs are declared in [`proto`] with `prost` derive, field numbers taken from Perfetto's
//! `.proto` files (`trace_packet.proto`, `track_event/track_event.proto`,
//! `track_event/track_descriptor.proto`, `track_event/{process,thread}_descriptor.proto`,
//! `track_event/debug_annotation.proto`, `clock_snapshot.proto`,
//! `common/builtin_clock.proto`). Proto2 `repeated` scalars are unpacked there, and so
//! they are here.
//!
//! Why not a crate: `perfetto_protos` (rust-protobuf, generated from the whole
//! `trace.proto` closure at build time) builds here, but generates ~14 MB of Rust, a
//! 428 MB debug rlib and a 155 MB debug binary for a hello-world, and follows Perfetto
//! v51; `perfetto-trace-proto` runs `prost-build` and needs a system `protoc` (absent
//! here, and on CI); `perfetto-sdk` (Google's) encodes through the Perfetto C library
//! over FFI and builds it from vendored C++. Eight small messages by hand are exact,
//! build in seconds and decode back with the same structs in the tests.
//!
//! # What the trace holds
//! - A `ClockSnapshot` first: `primary_trace_clock = MONOTONIC`, so trace time *is*
//!   CLOCK_MONOTONIC, the clock of every stamp; with a trace header it also pairs
//!   MONOTONIC with REALTIME (measured when the trace was created), so the UI can show
//!   wall-clock time. Every event packet says `timestamp_clock_id = MONOTONIC` (3).
//! - Tracks: a parent track `kernel receive path (RX CPUs)` with a child track `CPU N (rx)`
//!   per CPU that received a completing segment (stages `nic→softirq`, `softirq→tcp`,
//!   `tcp→wakeup`); a process track per traced process with a thread track per thread
//!   that ran callbacks (every later stage: `wakeup→on-cpu`, `…→epoll`, `…→recv_start`,
//!   `recv_start→decrypt`, `…→recv_end`, `recv_end→parsed`, `parsed→callback`,
//!   `callback→callback_done`). Where stages of different messages overlap partly on one
//!   track, child tracks `overlap K` take the extra lanes (slices on a track must nest).
//! - One `SLICE_BEGIN`/`SLICE_END` pair per stage per message, named `from→to`, category
//!   `kernel` or `engine`, with debug annotations `conn_id`, `msg_seq`, `len`, `cookie`,
//!   `tls` on the begin.
//! - One flow per message (id = row number + 1): `flow_ids` on the begin of its first
//!   slice (NIC side), `terminating_flow_ids` on the begin of its last (the callback), so
//!   the UI draws an arrow NIC → callback.
//! - All packets on one sequence (`trusted_packet_sequence_id` 1), the first with
//!   `SEQ_INCREMENTAL_STATE_CLEARED`; nothing is interned.
use std::collections::BTreeMap;
use std::io::Write;

use prost::Message;

use super::chrome::process_name;
use super::timeline::{Place, Timeline};
use super::{ExportError, ExportInput};

/// The Perfetto protobuf messages the export writes (a subset of their fields).
pub mod proto {
    /// `perfetto.protos.Trace`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Trace {
        /// `packet = 1`.
        #[prost(message, repeated, tag = "1")]
        pub packet: Vec<TracePacket>,
    }

    /// `perfetto.protos.TracePacket`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TracePacket {
        /// `timestamp = 8`, in the clock of `timestamp_clock_id`.
        #[prost(uint64, optional, tag = "8")]
        pub timestamp: Option<u64>,
        /// `timestamp_clock_id = 58`: a [`BuiltinClock`] value.
        #[prost(uint32, optional, tag = "58")]
        pub timestamp_clock_id: Option<u32>,
        /// `trusted_packet_sequence_id = 10`.
        #[prost(uint32, optional, tag = "10")]
        pub trusted_packet_sequence_id: Option<u32>,
        /// `sequence_flags = 13`: [`SEQ_INCREMENTAL_STATE_CLEARED`] and/or
        /// [`SEQ_NEEDS_INCREMENTAL_STATE`].
        #[prost(uint32, optional, tag = "13")]
        pub sequence_flags: Option<u32>,
        /// The `data` oneof.
        #[prost(oneof = "Data", tags = "6, 11, 60")]
        pub data: Option<Data>,
    }

    /// `TracePacket.SequenceFlags.SEQ_INCREMENTAL_STATE_CLEARED`.
    pub const SEQ_INCREMENTAL_STATE_CLEARED: u32 = 1;
    /// `TracePacket.SequenceFlags.SEQ_NEEDS_INCREMENTAL_STATE`.
    pub const SEQ_NEEDS_INCREMENTAL_STATE: u32 = 2;

    /// `TracePacket.data` (the members used here).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Data {
        /// `clock_snapshot = 6`.
        #[prost(message, tag = "6")]
        ClockSnapshot(ClockSnapshot),
        /// `track_event = 11`.
        #[prost(message, tag = "11")]
        TrackEvent(TrackEvent),
        /// `track_descriptor = 60`.
        #[prost(message, tag = "60")]
        TrackDescriptor(TrackDescriptor),
    }

    /// `perfetto.protos.BuiltinClock` (the values used here).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum BuiltinClock {
        /// `BUILTIN_CLOCK_UNKNOWN = 0`.
        Unknown = 0,
        /// `BUILTIN_CLOCK_REALTIME = 1`.
        Realtime = 1,
        /// `BUILTIN_CLOCK_MONOTONIC = 3`.
        Monotonic = 3,
        /// `BUILTIN_CLOCK_BOOTTIME = 6`.
        Boottime = 6,
    }

    /// `perfetto.protos.ClockSnapshot`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ClockSnapshot {
        /// `clocks = 1`.
        #[prost(message, repeated, tag = "1")]
        pub clocks: Vec<Clock>,
        /// `primary_trace_clock = 2`: the clock trace time is in.
        #[prost(enumeration = "BuiltinClock", optional, tag = "2")]
        pub primary_trace_clock: Option<i32>,
    }

    /// `perfetto.protos.ClockSnapshot.Clock`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Clock {
        /// `clock_id = 1`: a [`BuiltinClock`] value.
        #[prost(uint32, optional, tag = "1")]
        pub clock_id: Option<u32>,
        /// `timestamp = 2`, ns.
        #[prost(uint64, optional, tag = "2")]
        pub timestamp: Option<u64>,
    }

    /// `perfetto.protos.TrackDescriptor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrackDescriptor {
        /// `uuid = 1`.
        #[prost(uint64, optional, tag = "1")]
        pub uuid: Option<u64>,
        /// `name = 2`.
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
        /// `process = 3`.
        #[prost(message, optional, tag = "3")]
        pub process: Option<ProcessDescriptor>,
        /// `thread = 4`.
        #[prost(message, optional, tag = "4")]
        pub thread: Option<ThreadDescriptor>,
        /// `parent_uuid = 5`.
        #[prost(uint64, optional, tag = "5")]
        pub parent_uuid: Option<u64>,
        /// `child_ordering = 11`: 3 is `EXPLICIT` (by `sibling_order_rank`).
        #[prost(int32, optional, tag = "11")]
        pub child_ordering: Option<i32>,
        /// `sibling_order_rank = 12`.
        #[prost(int32, optional, tag = "12")]
        pub sibling_order_rank: Option<i32>,
    }

    /// `TrackDescriptor.ChildTracksOrdering.EXPLICIT`.
    pub const CHILD_ORDERING_EXPLICIT: i32 = 3;

    /// `perfetto.protos.ProcessDescriptor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProcessDescriptor {
        /// `pid = 1`.
        #[prost(int32, optional, tag = "1")]
        pub pid: Option<i32>,
        /// `process_name = 6`.
        #[prost(string, optional, tag = "6")]
        pub process_name: Option<String>,
    }

    /// `perfetto.protos.ThreadDescriptor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ThreadDescriptor {
        /// `pid = 1`.
        #[prost(int32, optional, tag = "1")]
        pub pid: Option<i32>,
        /// `tid = 2`.
        #[prost(int32, optional, tag = "2")]
        pub tid: Option<i32>,
        /// `thread_name = 5`.
        #[prost(string, optional, tag = "5")]
        pub thread_name: Option<String>,
    }

    /// `perfetto.protos.TrackEvent.Type` (the values used here).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum TrackEventType {
        /// `TYPE_UNSPECIFIED = 0`.
        Unspecified = 0,
        /// `TYPE_SLICE_BEGIN = 1`.
        SliceBegin = 1,
        /// `TYPE_SLICE_END = 2`.
        SliceEnd = 2,
        /// `TYPE_INSTANT = 3`.
        Instant = 3,
    }

    /// `perfetto.protos.TrackEvent`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrackEvent {
        /// `debug_annotations = 4`.
        #[prost(message, repeated, tag = "4")]
        pub debug_annotations: Vec<DebugAnnotation>,
        /// `type = 9`.
        #[prost(enumeration = "TrackEventType", optional, tag = "9")]
        pub r#type: Option<i32>,
        /// `track_uuid = 11`.
        #[prost(uint64, optional, tag = "11")]
        pub track_uuid: Option<u64>,
        /// `categories = 22`.
        #[prost(string, repeated, tag = "22")]
        pub categories: Vec<String>,
        /// `name = 23`.
        #[prost(string, optional, tag = "23")]
        pub name: Option<String>,
        /// `flow_ids = 47` (fixed64, unpacked as in proto2).
        #[prost(fixed64, repeated, packed = "false", tag = "47")]
        pub flow_ids: Vec<u64>,
        /// `terminating_flow_ids = 48` (fixed64, unpacked as in proto2).
        #[prost(fixed64, repeated, packed = "false", tag = "48")]
        pub terminating_flow_ids: Vec<u64>,
    }

    /// `perfetto.protos.DebugAnnotation` (a name and one value).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DebugAnnotation {
        /// `uint_value = 3`.
        #[prost(uint64, optional, tag = "3")]
        pub uint_value: Option<u64>,
        /// `string_value = 6`.
        #[prost(string, optional, tag = "6")]
        pub string_value: Option<String>,
        /// `name = 10`.
        #[prost(string, optional, tag = "10")]
        pub name: Option<String>,
    }
}

use proto::{
    BuiltinClock, Clock, ClockSnapshot, Data, DebugAnnotation, ProcessDescriptor, ThreadDescriptor,
    TracePacket, TrackDescriptor, TrackEvent, TrackEventType,
};

/// The one packet sequence of the file.
pub const SEQUENCE_ID: u32 = 1;

/// Track uuids: a kind in the top byte, an id below.
const UUID_KERNEL: u64 = 1 << 56;
const UUID_CPU: u64 = 2 << 56;
const UUID_PROCESS: u64 = 3 << 56;
const UUID_THREAD: u64 = 4 << 56;
const UUID_LANE: u64 = 5 << 56;

/// Writes packets as `Trace.packet` fields.
struct PacketWriter<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
}

impl PacketWriter<'_> {
    fn write(&mut self, p: &TracePacket) -> Result<(), ExportError> {
        self.buf.clear();
        // Field 1 (`packet`), wire type 2 (length-delimited): (1 << 3) | 2.
        self.buf.push(0x0A);
        p.encode_length_delimited(&mut self.buf)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.out.write_all(&self.buf)?;
        Ok(())
    }
}

fn packet(data: Data) -> TracePacket {
    TracePacket {
        trusted_packet_sequence_id: Some(SEQUENCE_ID),
        data: Some(data),
        ..TracePacket::default()
    }
}

fn annotation_u64(name: &str, v: u64) -> DebugAnnotation {
    DebugAnnotation {
        name: Some(name.to_string()),
        uint_value: Some(v),
        string_value: None,
    }
}

/// Writes the trace.
pub fn write(input: &ExportInput<'_>, out: &mut dyn Write) -> Result<(), ExportError> {
    let c = input.correlation;
    let t = Timeline::build(input);
    let mut w = PacketWriter {
        out,
        buf: Vec::with_capacity(256),
    };

    // Clock first: trace time is CLOCK_MONOTONIC.
    let mut clocks = Vec::new();
    if let Some(h) = input.header {
        clocks.push(Clock {
            clock_id: Some(BuiltinClock::Monotonic as u32),
            timestamp: Some(h.created.monotonic_ns),
        });
        clocks.push(Clock {
            clock_id: Some(BuiltinClock::Realtime as u32),
            timestamp: Some(h.created.realtime_ns),
        });
    } else {
        let first = t.marks.first().map_or(0, |m| m.ts);
        clocks.push(Clock {
            clock_id: Some(BuiltinClock::Monotonic as u32),
            timestamp: Some(first),
        });
    }
    let mut p = packet(Data::ClockSnapshot(ClockSnapshot {
        clocks,
        primary_trace_clock: Some(BuiltinClock::Monotonic as i32),
    }));
    p.sequence_flags = Some(proto::SEQ_INCREMENTAL_STATE_CLEARED);
    w.write(&p)?;

    // Tracks.
    let mut track_of: BTreeMap<(Place, u32), u64> = BTreeMap::new();
    let name = process_name(input);
    let mut processes: BTreeMap<u32, ()> = BTreeMap::new();
    let mut kernel_parent = false;
    let mut lane_n = 0u64;
    for (&place, &lanes) in &t.lanes {
        let base = match place {
            Place::Cpu(cpu) => {
                if !kernel_parent {
                    kernel_parent = true;
                    w.write(&packet(Data::TrackDescriptor(TrackDescriptor {
                        uuid: Some(UUID_KERNEL),
                        name: Some("kernel receive path (RX CPUs)".to_string()),
                        child_ordering: Some(proto::CHILD_ORDERING_EXPLICIT),
                        ..TrackDescriptor::default()
                    })))?;
                }
                let uuid = UUID_CPU | u64::from(cpu);
                w.write(&packet(Data::TrackDescriptor(TrackDescriptor {
                    uuid: Some(uuid),
                    name: Some(format!("CPU {cpu} (rx)")),
                    parent_uuid: Some(UUID_KERNEL),
                    sibling_order_rank: Some(i32::from(cpu)),
                    ..TrackDescriptor::default()
                })))?;
                uuid
            }
            Place::Thread(tid) => {
                let pid = t.tgid_of.get(&tid).copied().unwrap_or(tid);
                let puuid = UUID_PROCESS | u64::from(pid);
                if processes.insert(pid, ()).is_none() {
                    w.write(&packet(Data::TrackDescriptor(TrackDescriptor {
                        uuid: Some(puuid),
                        process: Some(ProcessDescriptor {
                            pid: Some(pid as i32),
                            process_name: name.clone(),
                        }),
                        ..TrackDescriptor::default()
                    })))?;
                }
                let uuid = UUID_THREAD | u64::from(tid);
                w.write(&packet(Data::TrackDescriptor(TrackDescriptor {
                    uuid: Some(uuid),
                    parent_uuid: Some(puuid),
                    thread: Some(ThreadDescriptor {
                        pid: Some(pid as i32),
                        tid: Some(tid as i32),
                        thread_name: None,
                    }),
                    ..TrackDescriptor::default()
                })))?;
                uuid
            }
        };
        track_of.insert((place, 0), base);
        for lane in 1..lanes {
            lane_n += 1;
            let uuid = UUID_LANE | lane_n;
            w.write(&packet(Data::TrackDescriptor(TrackDescriptor {
                uuid: Some(uuid),
                name: Some(format!("overlap {lane}")),
                parent_uuid: Some(base),
                ..TrackDescriptor::default()
            })))?;
            track_of.insert((place, lane), uuid);
        }
    }

    // Slices, in time order.
    for m in &t.marks {
        let s = &t.slices[m.slice];
        let track = track_of.get(&(s.place, s.lane)).copied();
        let ev = if m.begin {
            let row = &c.rows[s.row];
            let cat = match s.place {
                Place::Cpu(_) => "kernel",
                Place::Thread(_) => "engine",
            };
            TrackEvent {
                r#type: Some(TrackEventType::SliceBegin as i32),
                track_uuid: track,
                name: Some(s.name()),
                categories: vec![cat.to_string()],
                flow_ids: if s.flow_start {
                    vec![s.flow_id()]
                } else {
                    Vec::new()
                },
                terminating_flow_ids: if s.flow_end {
                    vec![s.flow_id()]
                } else {
                    Vec::new()
                },
                debug_annotations: vec![
                    annotation_u64("conn_id", row.conn_id),
                    annotation_u64("msg_seq", row.msg_seq),
                    annotation_u64("len", row.len),
                    annotation_u64("cookie", row.cookie),
                    DebugAnnotation {
                        name: Some("tls".to_string()),
                        uint_value: None,
                        string_value: Some(row.tls.to_string()),
                    },
                ],
            }
        } else {
            TrackEvent {
                r#type: Some(TrackEventType::SliceEnd as i32),
                track_uuid: track,
                ..TrackEvent::default()
            }
        };
        w.write(&TracePacket {
            timestamp: Some(m.ts),
            timestamp_clock_id: Some(BuiltinClock::Monotonic as u32),
            trusted_packet_sequence_id: Some(SEQUENCE_ID),
            sequence_flags: Some(proto::SEQ_NEEDS_INCREMENTAL_STATE),
            data: Some(Data::TrackEvent(ev)),
        })?;
    }
    w.out.flush()?;
    Ok(())
}

/// Decodes a file this module wrote (or any `Trace` using only these fields).
pub fn decode(bytes: &[u8]) -> Result<proto::Trace, prost::DecodeError> {
    proto::Trace::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::testdata;
    use std::collections::{HashMap, HashSet};

    fn export(events: &[crate::decode::Event]) -> proto::Trace {
        let c = testdata::correlation();
        let input = ExportInput {
            correlation: &c,
            events,
            header: None,
        };
        let mut out = Vec::new();
        write(&input, &mut out).unwrap();
        decode(&out).unwrap()
    }

    fn events(t: &proto::Trace) -> Vec<(u64, &TrackEvent)> {
        t.packet
            .iter()
            .filter_map(|p| match &p.data {
                Some(Data::TrackEvent(e)) => Some((p.timestamp.unwrap(), e)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn parses_back_with_slices_and_flows() {
        let c = testdata::correlation();
        let trace = export(&testdata::events());
        let evs = events(&trace);
        let begins = evs
            .iter()
            .filter(|(_, e)| e.r#type() == TrackEventType::SliceBegin)
            .count();
        let ends = evs
            .iter()
            .filter(|(_, e)| e.r#type() == TrackEventType::SliceEnd)
            .count();
        assert_eq!(begins, testdata::stage_count(&c));
        assert_eq!(ends, begins);
        assert_eq!(evs.len(), begins + ends);

        let starts: Vec<u64> = evs.iter().flat_map(|(_, e)| e.flow_ids.clone()).collect();
        let terms: Vec<u64> = evs
            .iter()
            .flat_map(|(_, e)| e.terminating_flow_ids.clone())
            .collect();
        let ids: Vec<u64> = (1..=c.rows.len() as u64).collect();
        let mut sorted = starts.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ids);
        let mut sorted = terms.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ids);

        // The first packet sets the clock; every event is on CLOCK_MONOTONIC.
        match &trace.packet[0].data {
            Some(Data::ClockSnapshot(s)) => {
                assert_eq!(s.primary_trace_clock, Some(BuiltinClock::Monotonic as i32))
            }
            other => panic!("first packet {other:?}"),
        }
        assert_eq!(
            trace.packet[0].sequence_flags,
            Some(proto::SEQ_INCREMENTAL_STATE_CLEARED)
        );
        for p in &trace.packet {
            assert_eq!(p.trusted_packet_sequence_id, Some(SEQUENCE_ID));
            if matches!(p.data, Some(Data::TrackEvent(_))) {
                assert_eq!(p.timestamp_clock_id, Some(BuiltinClock::Monotonic as u32));
            }
        }
    }

    #[test]
    fn tracks_are_described_and_slices_nest() {
        let trace = export(&testdata::events());
        let mut descs: HashMap<u64, &TrackDescriptor> = HashMap::new();
        let mut seen_events = false;
        for p in &trace.packet {
            match &p.data {
                Some(Data::TrackDescriptor(d)) => {
                    assert!(!seen_events, "descriptors come before events");
                    if let Some(parent) = d.parent_uuid {
                        assert!(descs.contains_key(&parent), "parent before child");
                    }
                    assert!(descs.insert(d.uuid.unwrap(), d).is_none());
                }
                Some(Data::TrackEvent(_)) => seen_events = true,
                _ => {}
            }
        }
        // Thread 43 is in process 40; thread 42 is its own process.
        let threads: HashMap<i32, i32> = descs
            .values()
            .filter_map(|d| d.thread.as_ref())
            .map(|t| (t.tid.unwrap(), t.pid.unwrap()))
            .collect();
        assert_eq!(threads, HashMap::from([(42, 42), (43, 40)]));
        let pids: HashSet<i32> = descs
            .values()
            .filter_map(|d| d.process.as_ref())
            .map(|p| p.pid.unwrap())
            .collect();
        assert_eq!(pids, HashSet::from([40, 42]));
        let cpus: HashSet<&str> = descs.values().filter_map(|d| d.name.as_deref()).collect();
        assert!(cpus.contains("CPU 0 (rx)") && cpus.contains("CPU 1 (rx)"));
        assert!(cpus.contains("overlap 1"));

        // Replay: per track, ends close the innermost open slice; time never goes back.
        let mut open: HashMap<u64, Vec<(u64, String)>> = HashMap::new();
        let mut last = 0;
        let mut by_cat: HashMap<String, HashSet<String>> = HashMap::new();
        for (ts, e) in events(&trace) {
            assert!(ts >= last);
            last = ts;
            let track = e.track_uuid.unwrap();
            assert!(descs.contains_key(&track));
            let st = open.entry(track).or_default();
            if e.r#type() == TrackEventType::SliceBegin {
                let name = e.name.clone().unwrap();
                by_cat
                    .entry(e.categories[0].clone())
                    .or_default()
                    .insert(name.clone());
                assert_eq!(e.debug_annotations.len(), 5);
                st.push((ts, name));
            } else {
                let (begin, _) = st.pop().expect("end without begin");
                assert!(ts >= begin);
            }
        }
        assert!(open.values().all(Vec::is_empty));
        assert_eq!(
            by_cat["kernel"],
            HashSet::from(["nic→softirq", "softirq→tcp", "tcp→waking"].map(String::from))
        );
        assert!(by_cat["engine"].contains("callback→callback_done"));
        assert!(by_cat["engine"].contains("tcp→epoll"));
        assert!(by_cat["engine"].contains("waking→wakeup"));
    }

    #[test]
    fn flow_runs_from_nic_to_callback() {
        let trace = export(&[]);
        let evs = events(&trace);
        for (_, e) in &evs {
            if !e.flow_ids.is_empty() {
                assert_eq!(e.name.as_deref(), Some("nic→softirq"));
            }
            if !e.terminating_flow_ids.is_empty() {
                assert_eq!(e.name.as_deref(), Some("callback→callback_done"));
            }
        }
    }

    #[test]
    fn header_adds_realtime_to_the_clock_snapshot() {
        let c = testdata::correlation();
        let header = crate::tracefile::TraceHeader::for_this_host(
            Vec::new(),
            crate::tracefile::TraceFilters::default(),
        );
        let input = ExportInput {
            correlation: &c,
            events: &[],
            header: Some(&header),
        };
        let mut out = Vec::new();
        write(&input, &mut out).unwrap();
        let trace = decode(&out).unwrap();
        let Some(Data::ClockSnapshot(s)) = &trace.packet[0].data else {
            panic!("no clock snapshot first");
        };
        let ids: Vec<u32> = s.clocks.iter().map(|c| c.clock_id.unwrap()).collect();
        assert_eq!(
            ids,
            vec![
                BuiltinClock::Monotonic as u32,
                BuiltinClock::Realtime as u32
            ]
        );
        let diff = s.clocks[1].timestamp.unwrap() as i64 - s.clocks[0].timestamp.unwrap() as i64;
        assert_eq!(diff, header.created.realtime_minus_monotonic_ns);
    }
}
