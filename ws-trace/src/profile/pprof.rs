//! pprof output: a gzip-compressed `perftools.profiles.Profile` protobuf, the format
//! `go tool pprof`, Parca, Pyroscope and speedscope read. The few messages it needs are
//! written by hand with `prost` derive; field numbers are those of pprof's
//! `proto/profile.proto`.

use std::{collections::HashMap, io::Write};

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

use super::{Profile, ProfileError, View};

/// The pprof messages (`perftools.profiles`).
pub mod proto {
    /// `Profile`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        /// What each value of a sample is.
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        /// The samples.
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        /// Mapped binaries.
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        /// Addresses.
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        /// Functions.
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        /// Strings; index 0 is "".
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        /// Start, ns since the epoch.
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        /// Length, ns.
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        /// What `period` counts.
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        /// Events between samples.
        #[prost(int64, tag = "12")]
        pub period: i64,
        /// Free-form notes (string table indices).
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
    }

    /// `ValueType`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        /// Type name (string index).
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        /// Unit (string index).
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    /// `Sample`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Locations, innermost first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        /// One value per sample type.
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        /// Labels.
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    /// `Label`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        /// Key (string index).
        #[prost(int64, tag = "1")]
        pub key: i64,
        /// String value (string index).
        #[prost(int64, tag = "2")]
        pub str: i64,
        /// Numeric value.
        #[prost(int64, tag = "3")]
        pub num: i64,
    }

    /// `Mapping`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        /// Id (from 1).
        #[prost(uint64, tag = "1")]
        pub id: u64,
        /// Lowest sampled address.
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        /// One past the highest sampled address.
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        /// File offset of `memory_start`.
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        /// Binary (string index).
        #[prost(int64, tag = "5")]
        pub filename: i64,
        /// Build id (string index).
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        /// Locations carry function names.
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
    }

    /// `Location`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        /// Id (from 1).
        #[prost(uint64, tag = "1")]
        pub id: u64,
        /// Its mapping.
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        /// The address.
        #[prost(uint64, tag = "3")]
        pub address: u64,
        /// Functions at the address.
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    /// `Line`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        /// Function id.
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        /// Source line.
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    /// `Function`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        /// Id (from 1).
        #[prost(uint64, tag = "1")]
        pub id: u64,
        /// Name (string index).
        #[prost(int64, tag = "2")]
        pub name: i64,
        /// Raw name (string index).
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        /// Source file (string index).
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        let mut s = Strings::default();
        s.get("");
        s
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// Builds the pprof message of one view (on-CPU: samples and CPU ns; off-CPU: ns).
pub fn build(profile: &Profile, view: View) -> Result<proto::Profile, ProfileError> {
    let stacks = match view {
        View::OnCpu => &profile.on_cpu,
        View::OffCpu => &profile.off_cpu,
        View::Combined => {
            return Err(ProfileError::Input(
                "pprof has no combined view: write the on-CPU and off-CPU profiles".into(),
            ));
        }
    };
    if stacks.is_empty() {
        return Err(ProfileError::Empty);
    }
    let mut strings = Strings::new();
    let period_ns = 1_000_000_000 / profile.freq.max(1) as i64;
    let (sample_type, period_type, period) = match view {
        View::OffCpu => {
            let t = proto::ValueType {
                r#type: strings.get("off-cpu"),
                unit: strings.get("nanoseconds"),
            };
            (vec![t.clone()], Some(t), 1)
        }
        _ => {
            let cpu = proto::ValueType {
                r#type: strings.get("cpu"),
                unit: strings.get("nanoseconds"),
            };
            let samples = proto::ValueType {
                r#type: strings.get("samples"),
                unit: strings.get("count"),
            };
            (vec![samples, cpu.clone()], Some(cpu), period_ns)
        }
    };
    let mut mappings: Vec<proto::Mapping> = Vec::new();
    let mut mapping_ids: HashMap<&str, usize> = HashMap::new();
    let mut functions: Vec<proto::Function> = Vec::new();
    let mut function_ids: HashMap<(&str, Option<&str>), u64> = HashMap::new();
    let mut locations: Vec<proto::Location> = Vec::new();
    let mut location_ids: HashMap<(&str, u64, &str), u64> = HashMap::new();
    let mut samples = Vec::new();
    let pid_key = strings.get("pid");
    let comm_key = strings.get("process");
    for stack in stacks {
        let mut ids = Vec::with_capacity(stack.frames.len());
        for f in stack.frames.iter().rev() {
            let key = (f.module.as_str(), f.addr, f.name.as_str());
            let id = match location_ids.get(&key) {
                Some(id) => *id,
                None => {
                    let m = *mapping_ids.entry(f.module.as_str()).or_insert_with(|| {
                        mappings.push(proto::Mapping {
                            id: mappings.len() as u64 + 1,
                            memory_start: f.addr,
                            memory_limit: f.addr + 1,
                            file_offset: 0,
                            filename: strings.get(&f.module),
                            build_id: 0,
                            has_functions: true,
                        });
                        mappings.len() - 1
                    });
                    let mapping = &mut mappings[m];
                    mapping.memory_start = mapping.memory_start.min(f.addr);
                    mapping.memory_limit = mapping.memory_limit.max(f.addr + 1);
                    let file = f.line.as_ref().map(|(file, _)| file.as_str());
                    let fid = *function_ids
                        .entry((f.name.as_str(), file))
                        .or_insert_with(|| {
                            let id = functions.len() as u64 + 1;
                            functions.push(proto::Function {
                                id,
                                name: strings.get(&f.name),
                                system_name: strings.get(&f.name),
                                filename: strings.get(file.unwrap_or("")),
                            });
                            id
                        });
                    let id = locations.len() as u64 + 1;
                    locations.push(proto::Location {
                        id,
                        mapping_id: mapping.id,
                        address: f.addr,
                        line: vec![proto::Line {
                            function_id: fid,
                            line: f.line.as_ref().map_or(0, |(_, l)| i64::from(*l)),
                        }],
                    });
                    location_ids.insert(key, id);
                    id
                }
            };
            ids.push(id);
        }
        let value = i64::try_from(stack.value).unwrap_or(i64::MAX);
        let values = match view {
            View::OffCpu => vec![value],
            _ => vec![value, value.saturating_mul(period_ns)],
        };
        samples.push(proto::Sample {
            location_id: ids,
            value: values,
            label: vec![
                proto::Label {
                    key: pid_key,
                    str: 0,
                    num: i64::from(stack.tgid),
                },
                proto::Label {
                    key: comm_key,
                    str: strings.get(&stack.process),
                    num: 0,
                },
            ],
        });
    }
    let comment = vec![strings.get("ws-trace profile")];
    Ok(proto::Profile {
        sample_type,
        sample: samples,
        mapping: mappings,
        location: locations,
        function: functions,
        string_table: strings.table,
        time_nanos: i64::try_from(profile.start_unix_ns).unwrap_or(0),
        duration_nanos: i64::try_from(profile.duration_ns).unwrap_or(0),
        period_type,
        period,
        comment,
    })
}

/// Writes one view as gzip-compressed pprof.
pub fn write(profile: &Profile, view: View, out: &mut dyn Write) -> Result<(), ProfileError> {
    let message = build(profile, view)?;
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&message.encode_to_vec())?;
    gz.finish()?;
    Ok(())
}

/// Reads gzip-compressed (or plain) pprof bytes back.
pub fn read(bytes: &[u8]) -> Result<proto::Profile, ProfileError> {
    let data = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)?;
        out
    } else {
        bytes.to_vec()
    };
    proto::Profile::decode(data.as_slice())
        .map_err(|e| ProfileError::Input(format!("not a pprof profile: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::testdata;

    #[test]
    fn round_trip_keeps_samples_and_names() {
        let p = testdata::profile();
        let mut out = Vec::new();
        write(&p, View::OnCpu, &mut out).unwrap();
        let back = read(&out).unwrap();
        assert_eq!(back.sample.len(), 2);
        let st = &back.string_table;
        assert_eq!(st[0], "");
        assert_eq!(st[back.sample_type[0].r#type as usize], "samples");
        let total: i64 = back.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(total, 10);
        // Leaf first: the first location of the 7-sample stack is `burn`.
        let s = back.sample.iter().find(|s| s.value[0] == 7).unwrap();
        let loc = &back.location[(s.location_id[0] - 1) as usize];
        let f = &back.function[(loc.line[0].function_id - 1) as usize];
        assert_eq!(st[f.name as usize], "burn");
        assert_eq!(back.period, 1_000_000_000 / 99);

        let mut off = Vec::new();
        write(&p, View::OffCpu, &mut off).unwrap();
        let back = read(&off).unwrap();
        assert_eq!(back.sample[0].value, vec![2_000_000]);
    }
}
