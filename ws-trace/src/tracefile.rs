//! The recorded trace file (`ws-trace attach -o FILE`), read back by `report` and `export`.
//!
//! A trace file is self-describing: a JSON [`TraceHeader`] (kernel, host, probes and their
//! record sizes, filters, clock calibration, command line), then the raw ring-buffer
//! records exactly as the probes wrote them (each starts with a `ws_abi::EventHeader`),
//! then a JSON [`TraceFooter`] (counts, drops, end time) and a fixed-size trailer that
//! points at the footer. `docs/trace-format.md` describes it byte by byte; in short (all
//! integers little-endian):
//!
//! ```text
//! 0   [8]  magic  89 57 53 54 52 41 43 45   ("\x89WSTRACE")
//! 8   u32  format version (FORMAT_VERSION)
//! 12  u32  header length H
//! 16  [H]  header JSON (UTF-8)
//!     frames, each:  u32 len, [len] bytes
//!         len 1..=MAX_RECORD_LEN          one record
//!         len FOOTER_MARK (0xFFFF_FFFF)   u32 F, [F] footer JSON: the last frame
//!         len 0xFFFF_FFF0..=0xFFFF_FFFE   reserved: u32 n, [n] bytes, skipped by readers
//! end-24  u64 offset of the footer frame, u64 record count, [8] "\x89WSTREND"
//! ```
//!
//! Writing appends length-prefixed records into a 1 MiB buffer (no allocation per record);
//! a writer that dies (crash, SIGKILL) leaves a file that ends somewhere in the frames. The
//! reader then scans the frames once, keeps every whole record, and reports that the
//! footer is missing ([`TraceReader::truncated`]) instead of failing. Reading maps the file
//! and hands out `&[u8]` slices of it (no allocation, no copy per record).
//!
//! Record layouts are those of `ws_abi` at the header's `abi_version`; a reader compares it
//! with [`ws_abi::ABI_VERSION`] before decoding. Frame lengths let a reader skip kinds it
//! does not know.
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use ws_abi::{PROBE_COUNT, ProbeKind};

/// The first 8 bytes of every trace file.
pub const MAGIC: [u8; 8] = *b"\x89WSTRACE";
/// The last 8 bytes of a completely written trace file.
pub const END_MAGIC: [u8; 8] = *b"\x89WSTREND";
/// The format version this code writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the header JSON: magic, version, header length.
pub const PREAMBLE_LEN: usize = 16;
/// Bytes of the trailer at the very end: footer offset, record count, [`END_MAGIC`].
pub const TRAILER_LEN: usize = 24;
/// Largest header or footer JSON accepted (a guard against reading garbage as a length).
pub const MAX_JSON_LEN: u32 = 16 << 20;
/// Largest record a frame may hold; larger lengths below the reserved marks are corrupt.
pub const MAX_RECORD_LEN: u32 = 16 << 20;
/// Frame length value that marks the footer frame.
pub const FOOTER_MARK: u32 = 0xFFFF_FFFF;
/// Frame length values from here up to `FOOTER_MARK - 1` are reserved frame types:
/// `u32 n` and `n` bytes follow, which readers of this version skip.
pub const RESERVED_MARK_MIN: u32 = 0xFFFF_FFF0;

const WRITE_BUFFER: usize = 1 << 20;

/// Errors reading or writing a trace file.
#[derive(Debug, thiserror::Error)]
pub enum TraceFileError {
    /// An I/O error on the file.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("creating", "writing", "reading"...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with [`MAGIC`].
    #[error("{} is not a ws-trace file (it starts with {found}, a trace file with 89 57 53 54 52 41 43 45)", path.display())]
    NotATraceFile {
        /// The file.
        path: PathBuf,
        /// Its first bytes, in hex.
        found: String,
    },
    /// The file's format version is newer (or older) than this reader knows.
    #[error("{} is trace format version {found}; this ws-trace reads version {supported} (use a matching ws-trace)", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this code reads.
        supported: u32,
    },
    /// The file ends before its header does.
    #[error("{} is cut short inside its header: {need} bytes needed, {have} present", path.display())]
    TruncatedHeader {
        /// The file.
        path: PathBuf,
        /// Bytes the header needs (preamble included).
        need: u64,
        /// Bytes the file has.
        have: u64,
    },
    /// The header length or JSON is invalid.
    #[error("{}: invalid trace header: {reason}", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A record the writer cannot frame.
    #[error("cannot write a record of {len} bytes: records are 1..={MAX_RECORD_LEN} bytes")]
    RecordSize {
        /// The record's length.
        len: usize,
    },
    /// Serializing the header or footer failed.
    #[error("serializing the trace {what}: {source}")]
    Serialize {
        /// "header" or "footer".
        what: &'static str,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

/// A CLOCK_REALTIME / CLOCK_MONOTONIC pair read together, and their offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClockSnapshot {
    /// CLOCK_REALTIME in ns since the Unix epoch (midpoint of the two reads around
    /// `monotonic_ns`).
    pub realtime_ns: u64,
    /// CLOCK_MONOTONIC in ns (the clock of every record's `ts_ns`).
    pub monotonic_ns: u64,
    /// `realtime_ns - monotonic_ns`: add it to a record's `ts_ns` for wall-clock time.
    pub realtime_minus_monotonic_ns: i64,
    /// Half the width of the REALTIME window that bracketed the MONOTONIC read: the
    /// offset's uncertainty (ns).
    pub offset_uncertainty_ns: u64,
}

impl ClockSnapshot {
    /// Reads both clocks now, keeping the tightest of a few REALTIME–MONOTONIC–REALTIME
    /// brackets. A clock that cannot be read (never on Linux) reads as 0.
    pub fn now() -> ClockSnapshot {
        use nix::time::{ClockId, clock_gettime};
        let ns = |id| {
            clock_gettime(id).map_or(0u64, |t| {
                (t.tv_sec() as u64)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(t.tv_nsec() as u64)
            })
        };
        let mut best = ClockSnapshot::default();
        let mut best_width = u64::MAX;
        for _ in 0..7 {
            let r1 = ns(ClockId::CLOCK_REALTIME);
            let m = ns(ClockId::CLOCK_MONOTONIC);
            let r2 = ns(ClockId::CLOCK_REALTIME);
            let width = r2.saturating_sub(r1);
            if width < best_width {
                best_width = width;
                let rt = r1 + width / 2;
                best = ClockSnapshot {
                    realtime_ns: rt,
                    monotonic_ns: m,
                    realtime_minus_monotonic_ns: rt as i64 - m as i64,
                    offset_uncertainty_ns: width.div_ceil(2),
                };
            }
        }
        best
    }
}

/// One probe recorded in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeInfo {
    /// The record `kind` (a `ws_abi::ProbeKind` value).
    pub kind: u16,
    /// The probe's stable name (`ProbeKind::name`).
    pub name: String,
    /// The design.md stage it stamps (`ProbeKind::stage`).
    pub stage: String,
    /// Size of its records in bytes (`ProbeKind::record_size`).
    pub record_size: u32,
    /// For uprobes: what it is attached to (e.g. `/usr/bin/app:my_crate::f @ 0x1234`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl ProbeInfo {
    /// The description of `kind` from the ABI.
    pub fn of(kind: ProbeKind) -> ProbeInfo {
        ProbeInfo {
            kind: kind as u16,
            name: kind.name().to_string(),
            stage: kind.stage().to_string(),
            record_size: kind.record_size() as u32,
            target: None,
        }
    }
}

/// What the session was filtered to (empty lists mean "no filter on this").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TraceFilters {
    /// Traced processes (`--pid`, and children as they fork).
    pub tgids: Vec<u32>,
    /// Local or remote TCP ports (`--port`).
    pub ports: Vec<u16>,
    /// Command name (`--comm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The spawned command and its arguments (`-- CMD ARGS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Later additions.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// The clocks behind the timestamps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClockInfo {
    /// The clock of records' `ts_ns` (always `CLOCK_MONOTONIC` today).
    pub timestamps: String,
    /// The kernel's current clocksource (`tsc`, `kvm-clock`, `hpet`...).
    pub clocksource: String,
    /// The clocksources the kernel offers.
    pub available_clocksources: Vec<String>,
    /// TSC-related CPU flags from `/proc/cpuinfo` (`constant_tsc`, `nonstop_tsc`...).
    pub tsc_flags: Vec<String>,
}

impl ClockInfo {
    /// Reads the clocksource from sysfs and the TSC flags of the first CPU from
    /// `/proc/cpuinfo`; what cannot be read stays empty.
    pub fn detect() -> ClockInfo {
        let sys = "/sys/devices/system/clocksource/clocksource0";
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let tsc_flags = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("flags"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, flags)| {
                        flags
                            .split_whitespace()
                            .filter(|f| f.contains("tsc"))
                            .map(str::to_string)
                            .collect()
                    })
            })
            .unwrap_or_default();
        ClockInfo {
            timestamps: "CLOCK_MONOTONIC".to_string(),
            clocksource: read(&format!("{sys}/current_clocksource")),
            available_clocksources: read(&format!("{sys}/available_clocksource"))
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            tsc_flags,
        }
    }
}

/// The JSON header at the start of a trace file. Every field has a default, so files
/// with fewer or more fields than this version still parse.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TraceHeader {
    /// The file format version (the writer sets it to [`FORMAT_VERSION`]; the binary
    /// preamble's copy is authoritative).
    pub format_version: u32,
    /// `ws_abi::ABI_VERSION` of the records.
    pub abi_version: u32,
    /// Version of the ws-trace that wrote the file.
    pub ws_trace_version: String,
    /// Kernel release (`uname -r`).
    pub kernel_release: String,
    /// Host name.
    pub hostname: String,
    /// When recording started, on both clocks.
    pub created: ClockSnapshot,
    /// The command line of the recording ws-trace (non-UTF-8 bytes replaced by U+FFFD).
    pub command_line: Vec<String>,
    /// The probes whose records the file may hold.
    pub probes: Vec<ProbeInfo>,
    /// The session's filters.
    pub filters: TraceFilters,
    /// The clocks behind the timestamps.
    pub clock: ClockInfo,
    /// Later additions (e.g. kernel struct offsets, engine calibration), stored as
    /// top-level keys; on reading, every key this version does not know lands here.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TraceHeader {
    /// A header describing this host and process now: versions, kernel release, host
    /// name, both clocks, clock info and this process's command line. Facts that cannot
    /// be read are left empty.
    pub fn for_this_host(probes: Vec<ProbeInfo>, filters: TraceFilters) -> TraceHeader {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        TraceHeader {
            format_version: FORMAT_VERSION,
            abi_version: ws_abi::ABI_VERSION,
            ws_trace_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: read("/proc/sys/kernel/osrelease"),
            hostname: read("/proc/sys/kernel/hostname"),
            created: ClockSnapshot::now(),
            command_line: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            probes,
            filters,
            clock: ClockInfo::detect(),
            extra: Map::new(),
        }
    }
}

/// Counts for one probe at the end of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeCounts {
    /// The record `kind`.
    pub kind: u16,
    /// The probe's name.
    pub name: String,
    /// Events it recorded.
    pub events: u64,
    /// Events it could not put in the ring buffer (the kernel-side drop counter).
    pub drops: u64,
    /// Hook hits the kernel skipped because the program was already running on that CPU
    /// (0 in files written before this field existed).
    pub misses: u64,
}

/// The JSON footer at the end of a completely written trace file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TraceFooter {
    /// Per-probe event and drop counts.
    pub probes: Vec<ProbeCounts>,
    /// Records in the file.
    pub records: u64,
    /// Ring-buffer records that could not be decoded while recording.
    pub decode_errors: u64,
    /// When recording stopped, on both clocks.
    pub end: ClockSnapshot,
    /// Later additions, stored as top-level keys; on reading, every key this version
    /// does not know lands here.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Writes a trace file: header at [`create`](TraceWriter::create), records, then footer
/// and trailer at [`finish`](TraceWriter::finish). Dropped without `finish`, it writes
/// out what it buffered, leaving a file that reads as truncated.
#[derive(Debug)]
pub struct TraceWriter {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    /// Bytes already handed to the file.
    written: u64,
    records: u64,
    by_kind: [u64; PROBE_COUNT],
    other_kinds: u64,
    finished: bool,
}

impl TraceWriter {
    /// Creates (or truncates) `path` and writes the preamble and `header` (with its
    /// `format_version` set to [`FORMAT_VERSION`]).
    pub fn create(path: &Path, header: &TraceHeader) -> Result<TraceWriter, TraceFileError> {
        let mut header = header.clone();
        header.format_version = FORMAT_VERSION;
        let json = serde_json::to_vec(&header).map_err(|source| TraceFileError::Serialize {
            what: "header",
            source,
        })?;
        let json_len = u32::try_from(json.len())
            .ok()
            .filter(|&l| l <= MAX_JSON_LEN)
            .ok_or_else(|| TraceFileError::BadHeader {
                path: path.to_path_buf(),
                reason: format!("{} bytes of JSON, at most {MAX_JSON_LEN}", json.len()),
            })?;
        let file = File::create(path).map_err(|source| TraceFileError::Io {
            op: "creating",
            path: path.to_path_buf(),
            source,
        })?;
        let mut buf = Vec::with_capacity(WRITE_BUFFER.max(PREAMBLE_LEN + json.len()));
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf.extend_from_slice(&json_len.to_le_bytes());
        buf.extend_from_slice(&json);
        let mut w = TraceWriter {
            file,
            path: path.to_path_buf(),
            buf,
            written: 0,
            records: 0,
            by_kind: [0; PROBE_COUNT],
            other_kinds: 0,
            finished: false,
        };
        // The header goes out at once: a session killed early still leaves a valid file.
        w.flush()?;
        Ok(w)
    }

    /// Appends one record (the raw bytes of an ABI record). Buffered; no allocation.
    pub fn write_record(&mut self, bytes: &[u8]) -> Result<(), TraceFileError> {
        let len = bytes.len();
        if len == 0 || len > MAX_RECORD_LEN as usize {
            return Err(TraceFileError::RecordSize { len });
        }
        let frame = 4 + len;
        if self.buf.len() + frame > self.buf.capacity() {
            self.flush()?;
        }
        if frame > self.buf.capacity() {
            // Larger than the whole buffer: straight to the file.
            self.write_out(&(len as u32).to_le_bytes())?;
            self.write_out(bytes)?;
        } else {
            self.buf.extend_from_slice(&(len as u32).to_le_bytes());
            self.buf.extend_from_slice(bytes);
        }
        self.records += 1;
        // EventHeader.kind is the u16 at offset 8.
        match bytes.get(8..10) {
            Some(&[lo, hi]) if usize::from(u16::from_le_bytes([lo, hi])) < PROBE_COUNT => {
                self.by_kind[usize::from(u16::from_le_bytes([lo, hi]))] += 1;
            }
            _ => self.other_kinds += 1,
        }
        Ok(())
    }

    /// Hands everything buffered to the file (no fsync), so that a writer killed later
    /// loses nothing written before. Call it now and then (e.g. once a second).
    pub fn flush(&mut self) -> Result<(), TraceFileError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let res = self.write_out(&buf);
        self.buf = buf;
        self.buf.clear();
        res
    }

    fn write_out(&mut self, bytes: &[u8]) -> Result<(), TraceFileError> {
        self.file
            .write_all(bytes)
            .map_err(|source| TraceFileError::Io {
                op: "writing",
                path: self.path.clone(),
                source,
            })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Records written so far.
    pub fn records_written(&self) -> u64 {
        self.records
    }

    /// Records written so far per `kind` (index = `ProbeKind as usize`); records of other
    /// kinds (or shorter than a header) are counted by [`other_kinds`](Self::other_kinds).
    pub fn events_by_kind(&self) -> &[u64; PROBE_COUNT] {
        &self.by_kind
    }

    /// Records written whose `kind` is not a known probe.
    pub fn other_kinds(&self) -> u64 {
        self.other_kinds
    }

    /// Writes the footer frame and the trailer, and closes the file. The trailer's record
    /// count is the writer's own; `footer` is written as given.
    pub fn finish(mut self, footer: &TraceFooter) -> Result<(), TraceFileError> {
        let json = serde_json::to_vec(footer).map_err(|source| TraceFileError::Serialize {
            what: "footer",
            source,
        })?;
        let json_len = u32::try_from(json.len())
            .ok()
            .filter(|&l| l <= MAX_JSON_LEN)
            .ok_or(TraceFileError::RecordSize { len: json.len() })?;
        self.flush()?;
        let footer_offset = self.written;
        let mut tail = Vec::with_capacity(8 + json.len() + TRAILER_LEN);
        tail.extend_from_slice(&FOOTER_MARK.to_le_bytes());
        tail.extend_from_slice(&json_len.to_le_bytes());
        tail.extend_from_slice(&json);
        tail.extend_from_slice(&footer_offset.to_le_bytes());
        tail.extend_from_slice(&self.records.to_le_bytes());
        tail.extend_from_slice(&END_MAGIC);
        self.write_out(&tail)?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: the file stays readable up to the last whole record.
            let _ = self.flush();
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let w: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(w))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let w: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(w))
}

/// Reads a trace file through a memory map.
///
/// The file must not be truncated by someone else while it is open (that would fault
/// the reading process); appending to it is harmless (the map ends where the file ended
/// at [`open`](TraceReader::open)).
#[derive(Debug)]
pub struct TraceReader {
    map: Mmap,
    path: PathBuf,
    version: u32,
    header: TraceHeader,
    footer: Option<TraceFooter>,
    data_start: usize,
    data_end: usize,
    records: u64,
}

impl TraceReader {
    /// Opens a trace file, checks its magic and version, parses the header and finds the
    /// footer: through the trailer when the file is complete, otherwise by scanning the
    /// frames to the last whole record.
    pub fn open(path: &Path) -> Result<TraceReader, TraceFileError> {
        let io = |op, source| TraceFileError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(|e| io("opening", e))?;
        let mut pre = Vec::with_capacity(PREAMBLE_LEN);
        (&mut file)
            .take(PREAMBLE_LEN as u64)
            .read_to_end(&mut pre)
            .map_err(|e| io("reading", e))?;
        let magic_have = pre.len().min(MAGIC.len());
        if pre[..magic_have] != MAGIC[..magic_have] || pre.is_empty() {
            let found = if pre.is_empty() {
                "nothing (empty file)".to_string()
            } else {
                pre.iter()
                    .take(8)
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            return Err(TraceFileError::NotATraceFile {
                path: path.to_path_buf(),
                found,
            });
        }
        if pre.len() >= 12 {
            let version = u32_at(&pre, 8).unwrap_or(0);
            if version != FORMAT_VERSION {
                return Err(TraceFileError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    found: version,
                    supported: FORMAT_VERSION,
                });
            }
        }
        if pre.len() < PREAMBLE_LEN {
            return Err(TraceFileError::TruncatedHeader {
                path: path.to_path_buf(),
                need: PREAMBLE_LEN as u64,
                have: pre.len() as u64,
            });
        }
        // SAFETY: the file is opened read-only and the map is never written through.
        // The map's bytes can change under us only if another process rewrites or
        // truncates the file while it is open, which the type's docs rule out; appends
        // do not affect the mapped range.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io("mapping", e))?;
        let bytes: &[u8] = &map;
        let version = u32_at(bytes, 8).unwrap_or(0);
        let header_len = u32_at(bytes, 12).unwrap_or(0);
        if header_len > MAX_JSON_LEN {
            return Err(TraceFileError::BadHeader {
                path: path.to_path_buf(),
                reason: format!("declared length {header_len} exceeds {MAX_JSON_LEN}"),
            });
        }
        let data_start = PREAMBLE_LEN + header_len as usize;
        if bytes.len() < data_start {
            return Err(TraceFileError::TruncatedHeader {
                path: path.to_path_buf(),
                need: data_start as u64,
                have: bytes.len() as u64,
            });
        }
        let header: TraceHeader = serde_json::from_slice(&bytes[PREAMBLE_LEN..data_start])
            .map_err(|e| TraceFileError::BadHeader {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;

        let mut reader = TraceReader {
            path: path.to_path_buf(),
            version,
            header,
            footer: None,
            data_start,
            data_end: data_start,
            records: 0,
            map,
        };
        if !reader.read_trailer() {
            reader.scan();
        }
        Ok(reader)
    }

    /// Uses the trailer if it is intact and consistent; false if not.
    fn read_trailer(&mut self) -> bool {
        let b: &[u8] = &self.map;
        let Some(t) = b.len().checked_sub(TRAILER_LEN) else {
            return false;
        };
        if t < self.data_start || b[t + 16..] != END_MAGIC {
            return false;
        }
        let (Some(off), Some(records)) = (u64_at(b, t), u64_at(b, t + 8)) else {
            return false;
        };
        let Ok(off) = usize::try_from(off) else {
            return false;
        };
        if off < self.data_start || off > t || u32_at(b, off) != Some(FOOTER_MARK) {
            return false;
        }
        match u32_at(b, off + 4) {
            Some(len) if off + 8 + len as usize == t => {
                let Ok(footer) = serde_json::from_slice::<TraceFooter>(&b[off + 8..t]) else {
                    return false;
                };
                self.footer = Some(footer);
                self.data_end = off;
                self.records = records;
                true
            }
            _ => false,
        }
    }

    /// Walks the frames to the footer frame or the last whole record.
    fn scan(&mut self) {
        let b: &[u8] = &self.map;
        let mut pos = self.data_start;
        let mut records = 0u64;
        let mut footer = None;
        while let Some(len) = u32_at(b, pos) {
            if len == FOOTER_MARK {
                let Some(flen) = u32_at(b, pos + 4) else {
                    break;
                };
                let body = b.get(pos + 8..(pos + 8).saturating_add(flen as usize));
                footer = body.and_then(|j| serde_json::from_slice::<TraceFooter>(j).ok());
                break;
            }
            let frame_end = if len >= RESERVED_MARK_MIN {
                match u32_at(b, pos + 4) {
                    Some(n) => pos + 8 + n as usize,
                    None => break,
                }
            } else if len == 0 || len > MAX_RECORD_LEN {
                break;
            } else {
                records += 1;
                pos + 4 + len as usize
            };
            if frame_end > b.len() {
                if len < RESERVED_MARK_MIN {
                    records -= 1;
                }
                break;
            }
            pos = frame_end;
        }
        self.data_end = pos;
        self.records = records;
        self.footer = footer;
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's format version.
    pub fn format_version(&self) -> u32 {
        self.version
    }

    /// The header.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// The footer; `None` when the file was cut short before it (see
    /// [`truncated`](Self::truncated)).
    pub fn footer(&self) -> Option<&TraceFooter> {
        self.footer.as_ref()
    }

    /// True when the footer is missing: the writer did not finish (crash, kill, disk
    /// full). Every whole record before the cut is still readable.
    pub fn truncated(&self) -> bool {
        self.footer.is_none()
    }

    /// Bytes after the last whole record that were ignored (a partly written record or
    /// footer, or garbage) when the file is truncated; 0 for a complete file.
    pub fn ignored_tail_bytes(&self) -> u64 {
        if self.footer.is_some() {
            0
        } else {
            (self.map.len() - self.data_end) as u64
        }
    }

    /// Number of records: the trailer's count for a complete file, else the count of
    /// whole records found by the scan at open.
    pub fn record_count(&self) -> u64 {
        self.records
    }

    /// Whether the header's `abi_version` is the one this build decodes.
    pub fn abi_matches(&self) -> bool {
        self.header.abi_version == ws_abi::ABI_VERSION
    }

    /// The records, in file order, as slices of the mapped file.
    pub fn records(&self) -> Records<'_> {
        Records {
            data: &self.map[..self.data_end],
            pos: self.data_start,
            corrupt_at: None,
        }
    }
}

/// Iterator over the records of a [`TraceReader`]: `&[u8]` slices, no copies.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    data: &'a [u8],
    pos: usize,
    corrupt_at: Option<u64>,
}

impl Records<'_> {
    /// File offset of an invalid frame that stopped the iteration early, if one did.
    /// (Only a file damaged after it was written can have one: cut-short files are
    /// bounded at open.)
    pub fn corrupt_at(&self) -> Option<u64> {
        self.corrupt_at
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let len = u32_at(self.data, self.pos)?;
            let start = self.pos + 4;
            if len >= RESERVED_MARK_MIN {
                // Reserved frame types (and a stray footer mark): skip by their length.
                let Some(n) = u32_at(self.data, start) else {
                    self.corrupt_at = Some(self.pos as u64);
                    self.pos = self.data.len();
                    return None;
                };
                self.pos = start + 4 + n as usize;
                if self.pos > self.data.len() {
                    self.corrupt_at = Some((start - 4) as u64);
                    return None;
                }
                continue;
            }
            let end = start + len as usize;
            if len == 0 || len > MAX_RECORD_LEN || end > self.data.len() {
                self.corrupt_at = Some(self.pos as u64);
                self.pos = self.data.len();
                return None;
            }
            self.pos = end;
            return Some(&self.data[start..end]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ws_abi::EventHeader;

    /// A record of `kind` with the ABI's size for it, with `i` stamped in.
    fn record(kind: ProbeKind, i: u64) -> Vec<u8> {
        let mut r = vec![0u8; kind.record_size()];
        let hdr = EventHeader {
            ts_ns: 1_000_000 + i,
            kind: kind as u16,
            cpu: (i % 2) as u16,
            tid: 100 + i as u32,
            tgid: 100,
            _pad: 0,
        };
        r[0..8].copy_from_slice(&hdr.ts_ns.to_le_bytes());
        r[8..10].copy_from_slice(&hdr.kind.to_le_bytes());
        r[10..12].copy_from_slice(&hdr.cpu.to_le_bytes());
        r[12..16].copy_from_slice(&hdr.tid.to_le_bytes());
        r[16..20].copy_from_slice(&hdr.tgid.to_le_bytes());
        for (j, b) in r.iter_mut().enumerate().skip(24) {
            *b = (i as u8).wrapping_add(j as u8);
        }
        r
    }

    fn records(n: u64) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| record(ProbeKind::ALL[(i as usize * 7) % PROBE_COUNT], i))
            .collect()
    }

    fn header() -> TraceHeader {
        let mut h = TraceHeader::for_this_host(
            ProbeKind::ALL.iter().map(|&k| ProbeInfo::of(k)).collect(),
            TraceFilters {
                tgids: vec![100],
                ports: vec![9001],
                comm: Some("client".into()),
                command: None,
                extra: Map::new(),
            },
        );
        h.extra.insert("note".into(), Value::from("test"));
        h
    }

    fn write(path: &Path, recs: &[Vec<u8>]) -> TraceWriter {
        let mut w = TraceWriter::create(path, &header()).unwrap();
        for r in recs {
            w.write_record(r).unwrap();
        }
        w
    }

    #[test]
    fn round_trip_mixed_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wstrace");
        let recs = records(5000);
        let w = write(&path, &recs);
        assert_eq!(w.records_written(), 5000);
        let by_kind = *w.events_by_kind();
        assert_eq!(by_kind.iter().sum::<u64>(), 5000);
        let footer = TraceFooter {
            probes: ProbeKind::ALL
                .iter()
                .map(|&k| ProbeCounts {
                    kind: k as u16,
                    name: k.name().into(),
                    events: by_kind[k as usize],
                    drops: 3,
                    misses: 2,
                })
                .collect(),
            records: 5000,
            decode_errors: 1,
            end: ClockSnapshot::now(),
            extra: Map::new(),
        };
        w.finish(&footer).unwrap();

        let r = TraceReader::open(&path).unwrap();
        assert_eq!(r.format_version(), FORMAT_VERSION);
        assert!(!r.truncated());
        assert_eq!(r.ignored_tail_bytes(), 0);
        assert!(r.abi_matches());
        let mut expected_header = header();
        expected_header.format_version = FORMAT_VERSION;
        assert_eq!(r.header().probes, expected_header.probes);
        assert_eq!(r.header().filters, expected_header.filters);
        assert_eq!(r.header().extra["note"], "test");
        assert!(r.header().created.realtime_ns > 0 && r.header().created.monotonic_ns > 0);
        assert_eq!(r.footer(), Some(&footer));
        assert_eq!(r.record_count(), 5000);
        let got: Vec<&[u8]> = r.records().collect();
        assert_eq!(got.len(), recs.len());
        for (g, e) in got.iter().zip(&recs) {
            assert_eq!(*g, e.as_slice());
        }
        // Decodable by the ABI decoder, kinds preserved.
        for (g, e) in got.iter().zip(&recs) {
            assert_eq!(
                crate::decode::decode(g).unwrap().header().kind,
                u16::from_le_bytes([e[8], e[9]])
            );
        }
    }

    #[test]
    fn cut_short_file_reads_to_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("full.wstrace");
        let recs = records(3000);
        write(&full, &recs).finish(&TraceFooter::default()).unwrap();
        let bytes = std::fs::read(&full).unwrap();
        let data_start = PREAMBLE_LEN + u32_at(&bytes, 12).unwrap() as usize;
        // Offsets where each record's frame ends.
        let mut ends = Vec::new();
        let mut pos = data_start;
        for r in &recs {
            pos += 4 + r.len();
            ends.push(pos);
        }
        let cut_path = dir.path().join("cut.wstrace");
        for cut in [
            data_start,
            data_start + 2,
            ends[0],
            ends[1233] + 1,
            ends[1233] + 4 + 10,
            ends[2999],
            ends[2999] + 6,
            bytes.len() - 1,
            bytes.len() - TRAILER_LEN,
        ] {
            std::fs::write(&cut_path, &bytes[..cut]).unwrap();
            let r = TraceReader::open(&cut_path).unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            let got: Vec<&[u8]> = r.records().collect();
            assert_eq!(got.len(), whole, "cut at {cut}");
            assert_eq!(r.record_count(), whole as u64, "cut at {cut}");
            for (g, e) in got.iter().zip(&recs) {
                assert_eq!(*g, e.as_slice());
            }
            let footer_complete = cut >= bytes.len() - TRAILER_LEN;
            assert_eq!(r.truncated(), !footer_complete, "cut at {cut}");
            if !footer_complete {
                let last_end = if whole == 0 {
                    data_start
                } else {
                    ends[whole - 1]
                };
                assert_eq!(r.ignored_tail_bytes(), (cut - last_end) as u64);
            }
        }
    }

    #[test]
    fn writer_dropped_without_finish_leaves_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dropped.wstrace");
        let recs = records(1000);
        drop(write(&path, &recs));
        let r = TraceReader::open(&path).unwrap();
        assert!(r.truncated());
        assert!(r.footer().is_none());
        assert_eq!(r.records().count(), 1000);
    }

    #[test]
    fn zero_filled_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zeros.wstrace");
        drop(write(&path, &records(10)));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &bytes).unwrap();
        let r = TraceReader::open(&path).unwrap();
        assert_eq!(r.records().count(), 10);
        assert!(r.truncated());
        assert_eq!(r.ignored_tail_bytes(), 4096);
    }

    #[test]
    fn garbage_and_wrong_versions_are_rejected_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let open = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            TraceReader::open(&path).unwrap_err()
        };

        let e = open(b"hello world, this is not a trace file at all");
        assert!(matches!(e, TraceFileError::NotATraceFile { .. }), "{e}");
        assert!(e.to_string().contains("not a ws-trace file"), "{e}");
        assert!(e.to_string().contains("68 65 6c 6c"), "{e}");

        let e = open(b"");
        assert!(e.to_string().contains("empty file"), "{e}");

        let mut v2 = MAGIC.to_vec();
        v2.extend_from_slice(&7u32.to_le_bytes());
        v2.extend_from_slice(&2u32.to_le_bytes());
        v2.extend_from_slice(b"{}");
        let e = open(&v2);
        assert!(
            matches!(
                e,
                TraceFileError::UnsupportedVersion {
                    found: 7,
                    supported: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("version 7"), "{e}");

        let e = open(&MAGIC[..5]);
        assert!(matches!(e, TraceFileError::TruncatedHeader { .. }), "{e}");

        let mut cut = MAGIC.to_vec();
        cut.extend_from_slice(&1u32.to_le_bytes());
        cut.extend_from_slice(&100u32.to_le_bytes());
        cut.extend_from_slice(b"{\"abi_version\":");
        let e = open(&cut);
        assert!(
            matches!(
                e,
                TraceFileError::TruncatedHeader {
                    need: 116,
                    have: 31,
                    ..
                }
            ),
            "{e}"
        );

        let mut bad_json = MAGIC.to_vec();
        bad_json.extend_from_slice(&1u32.to_le_bytes());
        bad_json.extend_from_slice(&5u32.to_le_bytes());
        bad_json.extend_from_slice(b"nope!");
        let e = open(&bad_json);
        assert!(matches!(e, TraceFileError::BadHeader { .. }), "{e}");

        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&1u32.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = open(&huge);
        assert!(matches!(e, TraceFileError::BadHeader { .. }), "{e}");

        let e = TraceReader::open(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, TraceFileError::Io { .. }), "{e}");
    }

    #[test]
    fn reserved_frames_are_skipped_and_bad_records_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.wstrace");
        let mut w = write(&path, &records(2));
        assert!(matches!(
            w.write_record(&[]),
            Err(TraceFileError::RecordSize { len: 0 })
        ));
        drop(w);
        // Append a reserved frame and one more record by hand.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&(RESERVED_MARK_MIN + 1).to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(b"abc");
        let extra = record(ProbeKind::TcpProbe, 9);
        bytes.extend_from_slice(&(extra.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&extra);
        std::fs::write(&path, &bytes).unwrap();
        let r = TraceReader::open(&path).unwrap();
        let got: Vec<&[u8]> = r.records().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], extra.as_slice());
    }

    #[test]
    fn header_json_tolerates_missing_and_unknown_fields() {
        let h: TraceHeader =
            serde_json::from_str(r#"{"abi_version":1,"future_field":{"x":1}}"#).unwrap();
        assert_eq!(h.abi_version, 1);
        assert!(h.probes.is_empty());
        assert_eq!(h.extra["future_field"]["x"], 1);
        // And written back at the top level.
        let again = serde_json::to_value(&h).unwrap();
        assert_eq!(again["future_field"]["x"], 1);
        let f: TraceFooter = serde_json::from_str(r#"{"records":5}"#).unwrap();
        assert_eq!(f.records, 5);
    }
}
