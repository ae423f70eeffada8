//! The recorded trace file (`ws-trace attach -o FILE`), read back by `report` and `export`.
//!
//! A trace file is self-describing: a JSON [`TraceHeader`] (kernel, host, probes and their
//! record sizes, filters, clock calibration, command line), then the raw ring-buffer
//! records exactly as the probes wrote them (each starts with a `ws_abi::EventHeader`),
//! then a JSON [`TraceFooter`] (counts, drops, end time) and a fixed-size trailer that
//! points at the footer. `docs/trace-format.md` describes it byte by byte; in short (all
//! integers little-endian), format version 2, the one written:
//!
//! ```text
//! 0   [8]  magic  89 57 53 54 52 41 43 45   ("\x89WSTRACE")
//! 8   u32  format version (FORMAT_VERSION = 2)
//! 12  u32  header length H
//! 16  u32  CRC32C of bytes 8..16 then the header JSON
//! 20  [H]  header JSON (UTF-8)
//!     blocks, each: a 40-byte block header, then its payload
//!         0  [8] sync  89 57 53 42 4C 4F 43 4B  ("\x89WSBLOCK")
//!         8  u32 type (1 records, 2 footer)   12 u32 sequence number
//!         16 u32 payload length P             20 u32 records N
//!         24 u64 records in all earlier blocks
//!         32 u32 CRC32C of the payload        36 u32 CRC32C of bytes 0..36
//!         40 [P] payload: N frames `u32 len, [len] bytes` (records), or the footer JSON
//! end-24  u64 offset of the footer block, u64 record count, [8] "\x89WSTREND"
//! ```
//!
//! Writing appends length-prefixed records into a 1 MiB buffer (no allocation per record),
//! closing a block every [`BLOCK_PAYLOAD`] bytes and at every flush; a writer that dies
//! (crash, SIGKILL, full disk) leaves a file that ends after its last flushed block, or
//! inside a block. Reading maps the file and checks every block at open: a block whose
//! checksums fail is skipped, the reader resynchronises at the next sync marker, and
//! [`TraceReader::integrity`] counts what was lost; records are handed out as `&[u8]`
//! slices of the map (no allocation, no copy per record). Format version 1 files
//! (unchecked frames straight after the header) are still read as before.
//!
//! Record layouts are those of `ws_abi` at the header's `abi_version`: a file from a newer
//! ABI than [`ws_abi::ABI_VERSION`] is refused at open; older ones are read (the decoder
//! keeps the layouts of earlier ABIs it supports). Frame lengths let a reader skip kinds it
//! does not know.
use std::fs::File;
use std::io::{Read, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};

use crate::hooks::ProbeHooks as _;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use ws_abi::{PROBE_COUNT, ProbeKind};

/// The first 8 bytes of every trace file.
pub const MAGIC: [u8; 8] = *b"\x89WSTRACE";
/// The last 8 bytes of a completely written trace file.
pub const END_MAGIC: [u8; 8] = *b"\x89WSTREND";
/// The format version this code writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this code reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Bytes before the header JSON in format version 2: magic, version, header length,
/// header CRC32C.
pub const PREAMBLE_LEN: usize = 20;
/// Bytes before the header JSON in format version 1: magic, version, header length.
pub const PREAMBLE_LEN_V1: usize = 16;
/// Bytes of the trailer at the very end: footer offset, record count, [`END_MAGIC`].
pub const TRAILER_LEN: usize = 24;
/// Largest header or footer JSON accepted (a guard against reading garbage as a length).
pub const MAX_JSON_LEN: u32 = 16 << 20;
/// Largest record a frame may hold; larger lengths below the reserved marks are corrupt.
pub const MAX_RECORD_LEN: u32 = 16 << 20;
/// Format version 1: frame length value that marks the footer frame.
pub const FOOTER_MARK: u32 = 0xFFFF_FFFF;
/// Format version 1: frame length values from here up to `FOOTER_MARK - 1` are reserved
/// frame types: `u32 n` and `n` bytes follow, which readers skip.
pub const RESERVED_MARK_MIN: u32 = 0xFFFF_FFF0;
/// The first 8 bytes of every block (format version 2): what a reader searches for to
/// resynchronise after a damaged block.
pub const BLOCK_SYNC: [u8; 8] = *b"\x89WSBLOCK";
/// Bytes of a block header (format version 2).
pub const BLOCK_HEADER_LEN: usize = 40;
/// Payload bytes after which the writer closes a block (a record larger than this gets a
/// block of its own).
pub const BLOCK_PAYLOAD: usize = 64 << 10;
/// Largest block payload a reader accepts: one frame of the largest record.
pub const MAX_BLOCK_PAYLOAD: u32 = MAX_RECORD_LEN + 4;
/// Block type of a block of records.
pub const BLOCK_RECORDS: u32 = 1;
/// Block type of the footer block (the last block; its payload is the footer JSON).
pub const BLOCK_FOOTER: u32 = 2;

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
    #[error("{} is trace format version {found}; this ws-trace reads versions {OLDEST_FORMAT_VERSION} to {supported} (a newer ws-trace wrote it, or the file is damaged)", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest version this code reads.
        supported: u32,
    },
    /// The records were written with a newer ABI (`ws_abi::ABI_VERSION`) than this build
    /// decodes.
    #[error("{} was written by a newer ws-trace (ABI {found}); this one reads up to ABI {supported}", path.display())]
    NewerAbi {
        /// The file.
        path: PathBuf,
        /// The header's `abi_version`.
        found: u32,
        /// `ws_abi::ABI_VERSION` of this build.
        supported: u32,
    },
    /// The file has a valid header but not one readable record, and damage was found.
    #[error("{}: no valid record could be read: {integrity}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the reader skipped.
        integrity: Integrity,
    },
    /// An earlier write failed (e.g. the disk is full); the writer takes nothing more.
    #[error("{}: an earlier write failed; nothing more is written to it", path.display())]
    WriterFailed {
        /// The file.
        path: PathBuf,
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
        let cs = ws_engine::clock::KernelClocksource::detect();
        ClockInfo {
            timestamps: "CLOCK_MONOTONIC".to_string(),
            clocksource: cs.current,
            available_clocksources: cs.available,
            tsc_flags: ws_engine::clock::CpuFlags::get().tsc_flags.clone(),
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
///
/// After a failed write (a full disk) the writer is stopped: every later call returns
/// [`TraceFileError::WriterFailed`] and nothing more reaches the file, which then ends in
/// (at most) one partly written block and reads as truncated.
#[derive(Debug)]
pub struct TraceWriter {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    /// Where the open block's header starts in `buf`, if a block is open.
    block_start: Option<usize>,
    /// Records in the open block.
    block_records: u32,
    /// Sequence number of the next block.
    seq: u32,
    /// Records in the blocks closed so far.
    closed_records: u64,
    /// Records in blocks completely handed to the file.
    records_out: u64,
    /// Bytes already handed to the file.
    written: u64,
    records: u64,
    by_kind: [u64; PROBE_COUNT],
    other_kinds: u64,
    finished: bool,
    failed: bool,
}

/// The 40-byte header of a block (format version 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlockHeader {
    kind: u32,
    seq: u32,
    len: u32,
    records: u32,
    first_record: u64,
    payload_crc: u32,
}

impl BlockHeader {
    fn encode(&self) -> [u8; BLOCK_HEADER_LEN] {
        let mut h = [0u8; BLOCK_HEADER_LEN];
        h[0..8].copy_from_slice(&BLOCK_SYNC);
        h[8..12].copy_from_slice(&self.kind.to_le_bytes());
        h[12..16].copy_from_slice(&self.seq.to_le_bytes());
        h[16..20].copy_from_slice(&self.len.to_le_bytes());
        h[20..24].copy_from_slice(&self.records.to_le_bytes());
        h[24..32].copy_from_slice(&self.first_record.to_le_bytes());
        h[32..36].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[..36]);
        h[36..40].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The block header at `at`, if there is a whole one with the sync marker, a matching
    /// header CRC and a payload length within [`MAX_BLOCK_PAYLOAD`] (the payload itself
    /// may run past the end of `b`).
    fn parse(b: &[u8], at: usize) -> Option<BlockHeader> {
        let h = b.get(at..at.checked_add(BLOCK_HEADER_LEN)?)?;
        if h[..8] != BLOCK_SYNC || u32_at(h, 36)? != crc32c::crc32c(&h[..36]) {
            return None;
        }
        let header = BlockHeader {
            kind: u32_at(h, 8)?,
            seq: u32_at(h, 12)?,
            len: u32_at(h, 16)?,
            records: u32_at(h, 20)?,
            first_record: u64_at(h, 24)?,
            payload_crc: u32_at(h, 32)?,
        };
        (header.len <= MAX_BLOCK_PAYLOAD).then_some(header)
    }
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
        let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[8..16]), &json);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&json);
        let mut w = TraceWriter {
            file,
            path: path.to_path_buf(),
            buf,
            block_start: None,
            block_records: 0,
            seq: 0,
            closed_records: 0,
            records_out: 0,
            written: 0,
            records: 0,
            by_kind: [0; PROBE_COUNT],
            other_kinds: 0,
            finished: false,
            failed: false,
        };
        // The header goes out at once: a session killed early still leaves a valid file.
        w.flush()?;
        Ok(w)
    }

    /// Appends one record (the raw bytes of an ABI record). Buffered; no allocation.
    pub fn write_record(&mut self, bytes: &[u8]) -> Result<(), TraceFileError> {
        if self.failed {
            return Err(self.failed_error());
        }
        let len = bytes.len();
        if len == 0 || len > MAX_RECORD_LEN as usize {
            return Err(TraceFileError::RecordSize { len });
        }
        let frame = 4 + len;
        if let Some(start) = self.block_start {
            let payload = self.buf.len() - start - BLOCK_HEADER_LEN;
            if payload + frame > BLOCK_PAYLOAD || self.buf.len() + frame > self.buf.capacity() {
                self.close_block();
            }
        }
        if self.block_start.is_none() {
            if self.buf.len() + BLOCK_HEADER_LEN + frame > self.buf.capacity() {
                self.write_buffer()?;
            }
            if BLOCK_HEADER_LEN + frame > self.buf.capacity() {
                // Larger than the whole buffer: a block of its own, straight to the file.
                self.write_big(bytes)?;
                self.count(bytes);
                return Ok(());
            }
            self.block_start = Some(self.buf.len());
            self.buf.extend_from_slice(&[0u8; BLOCK_HEADER_LEN]);
        }
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
        self.buf.extend_from_slice(bytes);
        self.block_records += 1;
        self.count(bytes);
        Ok(())
    }

    fn count(&mut self, bytes: &[u8]) {
        self.records += 1;
        // EventHeader.kind is the u16 at offset 8.
        match bytes.get(8..10) {
            Some(&[lo, hi]) if usize::from(u16::from_le_bytes([lo, hi])) < PROBE_COUNT => {
                self.by_kind[usize::from(u16::from_le_bytes([lo, hi]))] += 1;
            }
            _ => self.other_kinds += 1,
        }
    }

    /// Fills in the open block's header (lengths, counts, checksums) in the buffer.
    fn close_block(&mut self) {
        let Some(start) = self.block_start.take() else {
            return;
        };
        let payload = &self.buf[start + BLOCK_HEADER_LEN..];
        let header = BlockHeader {
            kind: BLOCK_RECORDS,
            seq: self.seq,
            // At most BLOCK_PAYLOAD + one frame of MAX_RECORD_LEN: fits.
            len: payload.len() as u32,
            records: self.block_records,
            first_record: self.closed_records,
            payload_crc: crc32c::crc32c(payload),
        };
        self.buf[start..start + BLOCK_HEADER_LEN].copy_from_slice(&header.encode());
        self.seq = self.seq.wrapping_add(1);
        self.closed_records += u64::from(self.block_records);
        self.block_records = 0;
    }

    /// A block of one record larger than the buffer, written directly.
    fn write_big(&mut self, bytes: &[u8]) -> Result<(), TraceFileError> {
        let len_bytes = (bytes.len() as u32).to_le_bytes();
        let header = BlockHeader {
            kind: BLOCK_RECORDS,
            seq: self.seq,
            len: (4 + bytes.len()) as u32,
            records: 1,
            first_record: self.closed_records,
            payload_crc: crc32c::crc32c_append(crc32c::crc32c(&len_bytes), bytes),
        };
        self.seq = self.seq.wrapping_add(1);
        self.closed_records += 1;
        self.write_out(&header.encode())?;
        self.write_out(&len_bytes)?;
        self.write_out(bytes)?;
        self.records_out = self.closed_records;
        Ok(())
    }

    /// Closes the open block and hands everything buffered to the file (no fsync), so
    /// that a writer killed later loses nothing written before. Call it now and then (e.g.
    /// once a second).
    pub fn flush(&mut self) -> Result<(), TraceFileError> {
        if self.failed {
            return Err(self.failed_error());
        }
        self.close_block();
        self.write_buffer()
    }

    /// Writes the buffer (whose blocks are all closed) to the file.
    fn write_buffer(&mut self) -> Result<(), TraceFileError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let res = self.write_out(&buf);
        self.buf = buf;
        self.buf.clear();
        if res.is_ok() {
            self.records_out = self.closed_records;
        }
        res
    }

    fn write_out(&mut self, bytes: &[u8]) -> Result<(), TraceFileError> {
        if let Err(source) = self.file.write_all(bytes) {
            self.failed = true;
            return Err(TraceFileError::Io {
                op: "writing",
                path: self.path.clone(),
                source,
            });
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn failed_error(&self) -> TraceFileError {
        TraceFileError::WriterFailed {
            path: self.path.clone(),
        }
    }

    /// Records written so far (accepted by [`write_record`](Self::write_record), buffered
    /// or not).
    pub fn records_written(&self) -> u64 {
        self.records
    }

    /// Records in the blocks completely handed to the file so far: what a reader finds if
    /// the writer dies now.
    pub fn records_in_file(&self) -> u64 {
        self.records_out
    }

    /// True once a write has failed; the writer then takes nothing more.
    pub fn failed(&self) -> bool {
        self.failed
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

    /// Writes the footer block and the trailer, and closes the file. The trailer's record
    /// count is the writer's own; `footer` is written as given.
    pub fn finish(mut self, footer: &TraceFooter) -> Result<(), TraceFileError> {
        if self.failed {
            return Err(self.failed_error());
        }
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
        let header = BlockHeader {
            kind: BLOCK_FOOTER,
            seq: self.seq,
            len: json_len,
            records: 0,
            first_record: self.closed_records,
            payload_crc: crc32c::crc32c(&json),
        };
        let mut tail = Vec::with_capacity(BLOCK_HEADER_LEN + json.len() + TRAILER_LEN);
        tail.extend_from_slice(&header.encode());
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
        if !self.finished && !self.failed {
            // Best effort: the file stays readable up to the last whole block.
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

/// What the reader found damaged or missing in a trace file, and skipped.
///
/// Truncation (the writer did not finish: no footer, perhaps a partly written last block)
/// is told apart from corruption (bytes that fail their checksums or make no sense).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Integrity {
    /// Damaged blocks skipped. A damaged stretch that runs to the end of the file, where
    /// nothing tells how many blocks it held, counts as one. In a format version 1 file
    /// (no blocks), the frames after the first invalid one count as one block.
    pub corrupt_blocks: u64,
    /// Bytes in the damaged blocks and stretches skipped.
    pub corrupt_bytes: u64,
    /// Records lost to the damage: from the damaged blocks' headers when intact, else from
    /// the record numbering of the next intact block (the footer block's gives the file's
    /// total); `None` when the damage runs to the end of a file without a footer after it.
    /// (A truncated format version 1 file has no way to tell damage from truncation: its
    /// unreadable tail counts as truncation.)
    pub records_lost: Option<u64>,
    /// No footer: the writer did not finish (crash, kill, full disk), or the damage
    /// destroyed it.
    pub truncated: bool,
    /// Bytes at the end that were ignored as the remains of an unfinished write: a partly
    /// written block, a zero-filled tail, an incomplete trailer.
    pub tail_bytes: u64,
}

impl Integrity {
    /// True when nothing was found damaged (the file may still be truncated).
    pub fn is_intact(&self) -> bool {
        self.corrupt_blocks == 0 && self.corrupt_bytes == 0
    }
}

/// Bytes as `812 B`, `64.0 KiB`, `8.5 MiB`.
fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

impl std::fmt::Display for Integrity {
    /// `1 block (64.0 KiB) skipped, 812 records lost`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} block{} ({}) skipped, ",
            self.corrupt_blocks,
            if self.corrupt_blocks == 1 { "" } else { "s" },
            human_bytes(self.corrupt_bytes)
        )?;
        match self.records_lost {
            Some(1) => write!(f, "1 record lost"),
            Some(n) => write!(f, "{n} records lost"),
            None => write!(f, "an unknown number of records lost"),
        }
    }
}

/// The bytes a reader reads: a map of the file, or bytes handed over in memory.
#[derive(Debug)]
enum Data {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Data {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Data::Map(m) => m,
            Data::Owned(v) => v,
        }
    }
}

/// Reads a trace file through a memory map.
///
/// The file must not be truncated by someone else while it is open (that would fault
/// the reading process); appending to it is harmless (the map ends where the file ended
/// at [`open`](TraceReader::open)).
#[derive(Debug)]
pub struct TraceReader {
    data: Data,
    path: PathBuf,
    version: u32,
    header: TraceHeader,
    footer: Option<TraceFooter>,
    /// Byte ranges holding frames: one per intact block (format 2), or one in all
    /// (format 1).
    spans: Vec<(usize, usize)>,
    /// Format 1: where the frames end (footer frame, or the last whole record).
    data_end: usize,
    records: u64,
    integrity: Integrity,
}

/// The scan of a format version 2 file's blocks.
struct BlockScan {
    spans: Vec<(usize, usize)>,
    records: u64,
    footer: Option<TraceFooter>,
    integrity: Integrity,
}

impl BlockScan {
    /// Accounts for what lies between the last intact block and the next intact block
    /// header `next` (`None`: the end of the file): a damaged `stretch` of bytes, if any,
    /// and the blocks and records the numbering says are missing (`expect`: the sequence
    /// number and first record the next block should have).
    fn gap(
        &mut self,
        stretch: Option<(usize, usize)>,
        expect: (u32, u64),
        next: Option<&BlockHeader>,
    ) {
        if let Some((start, end)) = stretch {
            self.integrity.corrupt_bytes += (end - start) as u64;
        }
        match next {
            Some(h) => {
                // Sequence numbers wrap after 2^32 blocks; one that went backwards (not
                // written by a TraceWriter) counts no missing block.
                let missing = h.seq.wrapping_sub(expect.0);
                let missing = if missing > u32::MAX / 2 { 0 } else { missing };
                let blocks = u64::from(missing).max(u64::from(stretch.is_some()));
                self.integrity.corrupt_blocks += blocks;
                if let Some(lost) = self.integrity.records_lost.as_mut() {
                    *lost += h.first_record.saturating_sub(expect.1);
                }
            }
            None => {
                if stretch.is_some() {
                    self.integrity.corrupt_blocks += 1;
                    self.integrity.records_lost = None;
                }
            }
        }
    }
}

/// The frames of `b[start..end]` are exactly `records` records of valid lengths.
fn frames_valid(b: &[u8], start: usize, end: usize, records: u32) -> bool {
    let mut pos = start;
    let mut n = 0u32;
    while pos < end {
        let Some(len) = u32_at(b, pos) else {
            return false;
        };
        if len == 0 || len > MAX_RECORD_LEN {
            return false;
        }
        pos += 4 + len as usize;
        n = n.saturating_add(1);
    }
    pos == end && n == records
}

/// Where the next [`BLOCK_SYNC`] starts at or after `from`, or `b.len()`.
fn next_sync(b: &[u8], from: usize) -> usize {
    let mut at = from;
    while let Some(rest) = b.get(at..) {
        match rest.iter().position(|&x| x == BLOCK_SYNC[0]) {
            Some(i) => {
                let p = at + i;
                if b.get(p..p + BLOCK_SYNC.len()) == Some(&BLOCK_SYNC[..]) {
                    return p;
                }
                at = p + 1;
            }
            None => break,
        }
    }
    b.len()
}

/// `b[at..]` is the start of a block header cut off by the end of the file.
fn partial_block_header(b: &[u8], at: usize) -> bool {
    let rest = &b[at.min(b.len())..];
    !rest.is_empty()
        && rest.len() < BLOCK_HEADER_LEN
        && rest[..rest.len().min(BLOCK_SYNC.len())]
            == BLOCK_SYNC[..rest.len().min(BLOCK_SYNC.len())]
}

/// Walks the blocks of a format version 2 file from `start`: keeps the intact ones,
/// skips and counts damaged ones (resynchronising at the next sync marker), finds the
/// footer block and checks the trailer.
fn scan_blocks(b: &[u8], start: usize) -> BlockScan {
    let mut scan = BlockScan {
        spans: Vec::new(),
        records: 0,
        footer: None,
        integrity: Integrity {
            records_lost: Some(0),
            ..Integrity::default()
        },
    };
    // The sequence number and first record the next block should have.
    let mut expect = (0u32, 0u64);
    // Start of a damaged stretch not yet ended by an intact block header.
    let mut damaged: Option<usize> = None;
    let mut footer_at = None;
    let mut pos = start;
    while pos < b.len() {
        let Some(h) = BlockHeader::parse(b, pos) else {
            if partial_block_header(b, pos) {
                // A block header cut off by the end of the file: truncation.
                if let Some(d) = damaged.take() {
                    scan.gap(Some((d, pos)), expect, None);
                }
                scan.integrity.tail_bytes = (b.len() - pos) as u64;
                pos = b.len();
                break;
            }
            damaged.get_or_insert(pos);
            pos = next_sync(b, pos + 1);
            continue;
        };
        let payload = pos + BLOCK_HEADER_LEN;
        let end = payload + h.len as usize;
        scan.gap(damaged.take().map(|d| (d, pos)), expect, Some(&h));
        if end > b.len() {
            // An intact header whose payload the file does not hold: the writer died
            // while writing this block.
            scan.integrity.tail_bytes = (b.len() - pos) as u64;
            pos = b.len();
            break;
        }
        let body = &b[payload..end];
        let crc_ok = crc32c::crc32c(body) == h.payload_crc;
        expect = (
            h.seq.wrapping_add(1),
            h.first_record.saturating_add(u64::from(h.records)),
        );
        match h.kind {
            BLOCK_RECORDS if crc_ok && frames_valid(b, payload, end, h.records) => {
                scan.spans.push((payload, end));
                scan.records += u64::from(h.records);
            }
            BLOCK_RECORDS => {
                // Intact header, damaged payload: what it held is known.
                scan.integrity.corrupt_blocks += 1;
                scan.integrity.corrupt_bytes += (end - pos) as u64;
                if let Some(lost) = scan.integrity.records_lost.as_mut() {
                    *lost += u64::from(h.records);
                }
            }
            BLOCK_FOOTER => {
                // The last block, whole or damaged: the trailer follows.
                let footer = crc_ok
                    .then(|| serde_json::from_slice::<TraceFooter>(body).ok())
                    .flatten();
                match footer {
                    Some(footer) => scan.footer = Some(footer),
                    None => {
                        scan.integrity.corrupt_blocks += 1;
                        scan.integrity.corrupt_bytes += (end - pos) as u64;
                    }
                }
                footer_at = Some(pos);
                pos = end;
                break;
            }
            // Block types of later versions: skipped.
            _ => {}
        }
        pos = end;
    }
    if let Some(d) = damaged.take() {
        // A damaged stretch up to the end of the file. Zeros are what a crash leaves
        // behind on some file systems: truncation, not damage.
        if b[d..].iter().all(|&x| x == 0) {
            scan.integrity.tail_bytes = (b.len() - d) as u64;
        } else {
            scan.gap(Some((d, b.len())), expect, None);
        }
    }
    if let Some(footer_at) = footer_at {
        // After the footer block: the trailer, exactly. A missing or cut trailer loses
        // nothing (the footer block is complete); anything else there is damage.
        let rest = &b[pos..];
        if rest.len() < TRAILER_LEN {
            scan.integrity.tail_bytes = rest.len() as u64;
        } else if rest.len() > TRAILER_LEN
            || rest[16..] != END_MAGIC
            || u64_at(rest, 0) != Some(footer_at as u64)
            || u64_at(rest, 8) != Some(expect.1)
        {
            scan.integrity.corrupt_bytes += rest.len() as u64;
        }
    }
    scan.integrity.truncated = scan.footer.is_none();
    scan
}

impl TraceReader {
    /// Opens a trace file: checks its magic, version, header checksum and ABI, parses the
    /// header, and checks every block (format 2; see [`integrity`](Self::integrity)) or
    /// finds the footer (format 1: through the trailer when the file is complete,
    /// otherwise by scanning the frames to the last whole record).
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
        if pre.len() < PREAMBLE_LEN_V1 {
            // Too short to map (an empty file cannot be): the preamble checks say why.
            return TraceReader::parse(Data::Owned(pre), path.to_path_buf());
        }
        // SAFETY: the file is opened read-only and the map is never written through.
        // The map's bytes can change under us only if another process rewrites or
        // truncates the file while it is open, which the type's docs rule out; appends
        // do not affect the mapped range.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io("mapping", e))?;
        TraceReader::parse(Data::Map(map), path.to_path_buf())
    }

    /// Reads a trace file held in memory, as [`open`](Self::open) reads one from disk;
    /// `name` stands for its path in messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &Path) -> Result<TraceReader, TraceFileError> {
        TraceReader::parse(Data::Owned(bytes), name.to_path_buf())
    }

    fn parse(data: Data, path: PathBuf) -> Result<TraceReader, TraceFileError> {
        let bytes: &[u8] = &data;
        let magic_have = bytes.len().min(MAGIC.len());
        if bytes.is_empty() || bytes[..magic_have] != MAGIC[..magic_have] {
            let found = if bytes.is_empty() {
                "nothing (empty file)".to_string()
            } else {
                bytes
                    .iter()
                    .take(8)
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            return Err(TraceFileError::NotATraceFile { path, found });
        }
        let version = u32_at(bytes, 8);
        if let Some(found) = version
            && !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&found)
        {
            return Err(TraceFileError::UnsupportedVersion {
                path,
                found,
                supported: FORMAT_VERSION,
            });
        }
        let preamble = if version == Some(1) {
            PREAMBLE_LEN_V1
        } else {
            PREAMBLE_LEN
        };
        if bytes.len() < preamble {
            return Err(TraceFileError::TruncatedHeader {
                path,
                need: preamble as u64,
                have: bytes.len() as u64,
            });
        }
        let version = version.unwrap_or(0);
        let header_len = u32_at(bytes, 12).unwrap_or(0);
        if header_len > MAX_JSON_LEN {
            return Err(TraceFileError::BadHeader {
                path,
                reason: format!("declared length {header_len} exceeds {MAX_JSON_LEN}"),
            });
        }
        let data_start = preamble + header_len as usize;
        if bytes.len() < data_start {
            return Err(TraceFileError::TruncatedHeader {
                path,
                need: data_start as u64,
                have: bytes.len() as u64,
            });
        }
        let json = &bytes[preamble..data_start];
        if version >= 2 {
            let stored = u32_at(bytes, 16).unwrap_or(0);
            let computed = crc32c::crc32c_append(crc32c::crc32c(&bytes[8..16]), json);
            if stored != computed {
                return Err(TraceFileError::BadHeader {
                    path,
                    reason: format!(
                        "checksum mismatch (stored {stored:08x}, computed {computed:08x}): the header is damaged"
                    ),
                });
            }
        }
        let header: TraceHeader =
            serde_json::from_slice(json).map_err(|e| TraceFileError::BadHeader {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if header.abi_version > ws_abi::ABI_VERSION {
            return Err(TraceFileError::NewerAbi {
                path,
                found: header.abi_version,
                supported: ws_abi::ABI_VERSION,
            });
        }

        let mut reader = TraceReader {
            path,
            version,
            header,
            footer: None,
            spans: Vec::new(),
            data_end: data_start,
            records: 0,
            integrity: Integrity::default(),
            data,
        };
        if version == 1 {
            if !reader.read_trailer_v1(data_start) {
                reader.scan_v1(data_start);
            }
            reader.check_frames_v1(data_start);
        } else {
            let scan = scan_blocks(&reader.data, data_start);
            reader.spans = scan.spans;
            reader.records = scan.records;
            reader.footer = scan.footer;
            reader.integrity = scan.integrity;
            reader.data_end = reader.spans.last().map_or(data_start, |s| s.1);
        }
        Ok(reader)
    }

    /// Format 1: uses the trailer if it is intact and consistent; false if not.
    fn read_trailer_v1(&mut self, data_start: usize) -> bool {
        let b: &[u8] = &self.data;
        let Some(t) = b.len().checked_sub(TRAILER_LEN) else {
            return false;
        };
        if t < data_start || b[t + 16..] != END_MAGIC {
            return false;
        }
        let (Some(off), Some(records)) = (u64_at(b, t), u64_at(b, t + 8)) else {
            return false;
        };
        let Ok(off) = usize::try_from(off) else {
            return false;
        };
        if off < data_start || off > t || u32_at(b, off) != Some(FOOTER_MARK) {
            return false;
        }
        match u32_at(b, off + 4) {
            Some(len) if (off + 8).checked_add(len as usize) == Some(t) => {
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

    /// Format 1: walks the frames to the footer frame or the last whole record.
    fn scan_v1(&mut self, data_start: usize) {
        let b: &[u8] = &self.data;
        let mut pos = data_start;
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

    /// Format 1: the frames span, and the integrity counts: truncation from the scan; an
    /// invalid frame before the footer of a complete file is damage (the reader stops
    /// there, as format 1 readers always did).
    fn check_frames_v1(&mut self, data_start: usize) {
        self.spans = vec![(data_start, self.data_end)];
        self.integrity = Integrity {
            truncated: self.footer.is_none(),
            tail_bytes: self.ignored_tail_bytes(),
            records_lost: Some(0),
            ..Integrity::default()
        };
        let mut it = self.records();
        let whole = it.by_ref().count() as u64;
        if let Some(at) = it.corrupt_at() {
            let trailer_count = self.footer.is_some().then_some(self.records);
            self.integrity.corrupt_blocks = 1;
            self.integrity.corrupt_bytes = (self.data_end as u64).saturating_sub(at);
            self.integrity.records_lost = trailer_count.map(|n| n.saturating_sub(whole));
        }
    }

    /// The file's path (or the name given to [`from_bytes`](Self::from_bytes)).
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
    /// [`truncated`](Self::truncated)), or its footer is damaged.
    pub fn footer(&self) -> Option<&TraceFooter> {
        self.footer.as_ref()
    }

    /// True when the footer is missing: the writer did not finish (crash, kill, disk
    /// full), or (see [`integrity`](Self::integrity)) damage destroyed it. Every intact
    /// record is still readable.
    pub fn truncated(&self) -> bool {
        self.footer.is_none()
    }

    /// What was found damaged or missing, and skipped.
    pub fn integrity(&self) -> &Integrity {
        &self.integrity
    }

    /// Bytes at the end that were ignored as the remains of an unfinished write (a partly
    /// written record or block, a zero-filled tail; in a format 1 file, also garbage
    /// after the last whole record) when the file is truncated; 0 for a complete file.
    pub fn ignored_tail_bytes(&self) -> u64 {
        if self.version >= 2 {
            self.integrity.tail_bytes
        } else if self.footer.is_some() {
            0
        } else {
            (self.data.len() - self.data_end) as u64
        }
    }

    /// Number of records: in a format 2 file, those of the intact blocks (what
    /// [`records`](Self::records) yields); in a format 1 file, the trailer's count for a
    /// complete file, else the count of whole records found by the scan at open.
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
            data: &self.data,
            spans: self.spans.iter(),
            pos: 0,
            end: 0,
            corrupt_at: None,
        }
    }
}

/// Iterator over the records of a [`TraceReader`]: `&[u8]` slices, no copies.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    data: &'a [u8],
    /// The frame spans not yet started.
    spans: std::slice::Iter<'a, (usize, usize)>,
    pos: usize,
    /// End of the current span.
    end: usize,
    corrupt_at: Option<u64>,
}

impl Records<'_> {
    /// File offset of an invalid frame that stopped the iteration early, if one did.
    /// (Only a format 1 file damaged after it was written can have one: cut-short files
    /// are bounded at open, and format 2 blocks are checked at open.)
    pub fn corrupt_at(&self) -> Option<u64> {
        self.corrupt_at
    }

    fn stop_corrupt(&mut self, at: usize) {
        self.corrupt_at = Some(at as u64);
        self.pos = self.end;
        self.spans = [].iter();
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let span = &self.data[..self.end.min(self.data.len())];
            let Some(len) = u32_at(span, self.pos) else {
                // This span is done: on to the next one.
                let &(start, end) = self.spans.next()?;
                self.pos = start;
                self.end = end;
                continue;
            };
            let start = self.pos + 4;
            if len >= RESERVED_MARK_MIN {
                // Reserved frame types (and a stray footer mark): skip by their length.
                let Some(n) = u32_at(span, start) else {
                    self.stop_corrupt(self.pos);
                    return None;
                };
                let next = start + 4 + n as usize;
                if next > span.len() {
                    self.stop_corrupt(self.pos);
                    return None;
                }
                self.pos = next;
                continue;
            }
            let end = start + len as usize;
            if len == 0 || len > MAX_RECORD_LEN || end > span.len() {
                self.stop_corrupt(self.pos);
                return None;
            }
            self.pos = end;
            return Some(&span[start..end]);
        }
    }
}

#[cfg(test)]
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
        records_of(n, PROBE_COUNT)
    }

    /// `n` records cycling through the first `kinds` probe kinds.
    fn records_of(n: u64, kinds: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| record(ProbeKind::ALL[(i as usize * 7) % kinds], i))
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

    fn footer_for(w: &TraceWriter) -> TraceFooter {
        let by_kind = *w.events_by_kind();
        TraceFooter {
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
            records: w.records_written(),
            decode_errors: 1,
            end: ClockSnapshot::now(),
            extra: Map::new(),
        }
    }

    /// A finished file of `recs`, its bytes.
    fn finished(path: &Path, recs: &[Vec<u8>]) -> Vec<u8> {
        let w = write(path, recs);
        let footer = footer_for(&w);
        w.finish(&footer).unwrap();
        std::fs::read(path).unwrap()
    }

    /// One block as the format describes it, parsed independently of the reader.
    #[derive(Debug, Clone, Copy)]
    struct Block {
        start: usize,
        end: usize,
        kind: u32,
        records: usize,
    }

    fn blocks(bytes: &[u8]) -> Vec<Block> {
        let mut pos = PREAMBLE_LEN + u32_at(bytes, 12).unwrap() as usize;
        let mut out = Vec::new();
        while pos + BLOCK_HEADER_LEN <= bytes.len() {
            assert_eq!(bytes[pos..pos + 8], BLOCK_SYNC, "block at {pos}");
            let kind = u32_at(bytes, pos + 8).unwrap();
            let end = pos + BLOCK_HEADER_LEN + u32_at(bytes, pos + 16).unwrap() as usize;
            let records = u32_at(bytes, pos + 20).unwrap() as usize;
            out.push(Block {
                start: pos,
                end,
                kind,
                records,
            });
            if kind == BLOCK_FOOTER {
                break;
            }
            pos = end;
        }
        out
    }

    fn reopen(path: &Path, bytes: &[u8]) -> TraceReader {
        std::fs::write(path, bytes).unwrap();
        TraceReader::open(path).unwrap()
    }

    /// The records of `recs` outside the records blocks listed in `lost`.
    fn expected_without<'a>(recs: &'a [Vec<u8>], bl: &[Block], lost: &[usize]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut i = 0;
        for (n, b) in bl
            .iter()
            .enumerate()
            .filter(|(_, b)| b.kind == BLOCK_RECORDS)
        {
            if !lost.contains(&n) {
                out.extend(recs[i..i + b.records].iter().map(Vec::as_slice));
            }
            i += b.records;
        }
        out
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
        let footer = footer_for(&w);
        w.finish(&footer).unwrap();

        let r = TraceReader::open(&path).unwrap();
        assert_eq!(r.format_version(), FORMAT_VERSION);
        assert!(!r.truncated());
        assert_eq!(r.ignored_tail_bytes(), 0);
        assert_eq!(
            r.integrity(),
            &Integrity {
                records_lost: Some(0),
                ..Integrity::default()
            }
        );
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
        // Several blocks, none over the payload limit, then the footer block.
        let bytes = std::fs::read(&path).unwrap();
        let bl = blocks(&bytes);
        assert!(bl.len() > 3, "{bl:?}");
        assert!(
            bl.iter()
                .all(|b| b.end - b.start - BLOCK_HEADER_LEN <= BLOCK_PAYLOAD)
        );
        assert_eq!(bl.last().map(|b| b.kind), Some(BLOCK_FOOTER));
        assert_eq!(bl.iter().map(|b| b.records).sum::<usize>(), 5000);
        assert_eq!(bl.last().unwrap().end + TRAILER_LEN, bytes.len());
    }

    #[test]
    fn from_bytes_reads_like_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wstrace");
        let bytes = finished(&path, &records(700));
        let a = TraceReader::open(&path).unwrap();
        let b = TraceReader::from_bytes(bytes, Path::new("mem")).unwrap();
        assert_eq!(b.path(), Path::new("mem"));
        assert_eq!(a.header(), b.header());
        assert_eq!(a.footer(), b.footer());
        assert_eq!(a.integrity(), b.integrity());
        assert!(a.records().eq(b.records()));
    }

    #[test]
    fn flush_closes_a_block_so_a_dead_writer_loses_only_the_unflushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.wstrace");
        let recs = records(30);
        let mut w = write(&path, &recs[..10]);
        w.flush().unwrap();
        assert_eq!(w.records_in_file(), 10);
        for r in &recs[10..] {
            w.write_record(r).unwrap();
        }
        // The writer dies here (no flush, no drop): only the first block is in the file.
        let r = TraceReader::open(&path).unwrap();
        assert_eq!(r.records().count(), 10);
        assert!(r.truncated() && r.integrity().is_intact());
        std::mem::forget(w);
    }

    #[test]
    fn cut_short_file_reads_to_last_whole_block() {
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("full.wstrace");
        let recs = records(3000);
        let bytes = finished(&full, &recs);
        let bl = blocks(&bytes);
        let data_start = bl[0].start;
        let footer = bl.last().copied().unwrap();
        assert_eq!(footer.kind, BLOCK_FOOTER);
        let cut_path = dir.path().join("cut.wstrace");
        for cut in [
            data_start,
            data_start + 3,
            data_start + 20,
            data_start + BLOCK_HEADER_LEN + 7,
            bl[0].end,
            bl[1].end - 1,
            bl[1].end + 9,
            bl[2].start + BLOCK_HEADER_LEN,
            footer.start,
            footer.start + 10,
            footer.end - 1,
            footer.end,
            footer.end + 5,
            bytes.len() - 1,
            bytes.len(),
        ] {
            let r = reopen(&cut_path, &bytes[..cut]);
            let whole: Vec<&Block> = bl
                .iter()
                .filter(|b| b.kind == BLOCK_RECORDS && b.end <= cut)
                .collect();
            let n: usize = whole.iter().map(|b| b.records).sum();
            let got: Vec<&[u8]> = r.records().collect();
            assert_eq!(got.len(), n, "cut at {cut}");
            assert_eq!(r.record_count(), n as u64, "cut at {cut}");
            assert!(got.iter().zip(&recs).all(|(g, e)| *g == e.as_slice()));
            // Truncation is not damage.
            assert!(
                r.integrity().is_intact(),
                "cut at {cut}: {:?}",
                r.integrity()
            );
            let footer_complete = cut >= footer.end;
            assert_eq!(r.truncated(), !footer_complete, "cut at {cut}");
            assert_eq!(r.integrity().truncated, r.truncated());
            let last_end = if footer_complete {
                footer.end
            } else {
                whole.last().map_or(data_start, |b| b.end)
            };
            let tail = if cut == bytes.len() {
                0
            } else {
                cut - last_end
            };
            assert_eq!(r.ignored_tail_bytes(), tail as u64, "cut at {cut}");
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
        assert!(r.integrity().is_intact());
        assert_eq!(r.records().count(), 1000);
    }

    #[test]
    fn zero_filled_tail_is_truncation_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zeros.wstrace");
        drop(write(&path, &records(10)));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        let r = reopen(&path, &bytes);
        assert_eq!(r.records().count(), 10);
        assert!(r.truncated());
        assert!(r.integrity().is_intact());
        assert_eq!(r.ignored_tail_bytes(), 4096);
    }

    #[test]
    fn damaged_block_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.wstrace");
        let recs = records(5000);
        let clean = finished(&path, &recs);
        let bl = blocks(&clean);
        // One flipped payload byte in block 1, then one in block 1's header instead.
        for at in [
            bl[1].start + BLOCK_HEADER_LEN + 100,
            bl[1].start + 20,
            bl[1].start + 3,
        ] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x40;
            let r = reopen(&path, &bytes);
            let got: Vec<&[u8]> = r.records().collect();
            let expected = expected_without(&recs, &bl, &[1]);
            assert_eq!(got, expected, "flip at {at}");
            assert_eq!(r.record_count(), expected.len() as u64);
            assert_eq!(
                r.integrity(),
                &Integrity {
                    corrupt_blocks: 1,
                    corrupt_bytes: (bl[1].end - bl[1].start) as u64,
                    records_lost: Some(bl[1].records as u64),
                    truncated: false,
                    tail_bytes: 0,
                },
                "flip at {at}"
            );
            assert!(r.footer().is_some());
        }
    }

    #[test]
    fn damage_before_the_footer_is_counted_from_the_footer_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.wstrace");
        let recs = records(3000);
        let clean = finished(&path, &recs);
        let bl = blocks(&clean);
        let n = bl.len();
        // The last two record blocks' headers are gone: only the footer block's
        // numbering tells what they held.
        let mut bytes = clean.clone();
        bytes[bl[n - 3].start + 1] ^= 1;
        bytes[bl[n - 2].start + 30] ^= 1;
        let r = reopen(&path, &bytes);
        let lost = bl[n - 3].records + bl[n - 2].records;
        assert_eq!(r.records().count(), 3000 - lost);
        assert_eq!(r.integrity().corrupt_blocks, 2);
        assert_eq!(
            r.integrity().corrupt_bytes,
            (bl[n - 2].end - bl[n - 3].start) as u64
        );
        assert_eq!(r.integrity().records_lost, Some(lost as u64));
        assert!(!r.truncated());
    }

    #[test]
    fn damaged_footer_leaves_every_record_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.wstrace");
        let recs = records(2000);
        let clean = finished(&path, &recs);
        let footer = *blocks(&clean).last().unwrap();
        // The footer's payload: its header still says it held no records.
        let mut bytes = clean.clone();
        bytes[footer.start + BLOCK_HEADER_LEN + 3] ^= 0x10;
        let r = reopen(&path, &bytes);
        assert_eq!(r.records().count(), 2000);
        assert!(r.truncated() && r.footer().is_none());
        assert_eq!(r.integrity().corrupt_blocks, 1);
        assert_eq!(r.integrity().records_lost, Some(0));
        // The footer's header: the damage runs to the end, so what it held is unknown.
        let mut bytes = clean.clone();
        bytes[footer.start + 2] ^= 0x10;
        let r = reopen(&path, &bytes);
        assert_eq!(r.records().count(), 2000);
        assert!(r.truncated());
        assert_eq!(r.integrity().corrupt_blocks, 1);
        assert_eq!(
            r.integrity().corrupt_bytes,
            (bytes.len() - footer.start) as u64
        );
        assert_eq!(r.integrity().records_lost, None);
        // A damaged trailer loses nothing but is not passed over in silence.
        let mut bytes = clean.clone();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let r = reopen(&path, &bytes);
        assert!(!r.truncated());
        assert_eq!(r.records().count(), 2000);
        assert_eq!(r.integrity().corrupt_bytes, TRAILER_LEN as u64);
        assert_eq!(r.integrity().records_lost, Some(0));
    }

    #[test]
    fn many_flipped_bytes_never_yield_a_bogus_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.wstrace");
        let recs = records(10_000);
        let clean = finished(&path, &recs);
        let data_start = blocks(&clean)[0].start;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20 {
            let mut bytes = clean.clone();
            let flips = [1, 3, 200][round % 3];
            for _ in 0..flips {
                let at = data_start + (rand() as usize) % (bytes.len() - data_start);
                bytes[at] ^= 1 << (rand() % 8);
            }
            let r = reopen(&path, &bytes);
            let got: Vec<&[u8]> = r.records().collect();
            // Every record read is one written, in order: no bogus record.
            let mut it = recs.iter();
            for g in &got {
                assert!(
                    it.any(|e| e.as_slice() == *g),
                    "round {round}: a record that was never written"
                );
            }
            assert_eq!(got.len() as u64, r.record_count());
            let i = r.integrity();
            assert!(!i.is_intact(), "round {round}: {flips} flips unnoticed");
            if let Some(lost) = i.records_lost {
                assert_eq!(got.len() as u64 + lost, 10_000, "round {round}: {i:?}");
            }
        }
    }

    #[test]
    fn damaged_header_json_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.wstrace");
        let mut bytes = finished(&path, &records(10));
        bytes[PREAMBLE_LEN + 20] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let e = TraceReader::open(&path).unwrap_err();
        assert!(matches!(e, TraceFileError::BadHeader { .. }), "{e}");
        assert!(e.to_string().contains("the header is damaged"), "{e}");
        // A damaged length too.
        let mut bytes = finished(&path, &records(10));
        bytes[12] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
        let e = TraceReader::open(&path).unwrap_err();
        assert!(e.to_string().contains("the header is damaged"), "{e}");
    }

    #[test]
    fn newer_abi_is_refused_and_older_ones_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abi.wstrace");
        for (abi, ok) in [
            (ws_abi::ABI_VERSION + 1, false),
            (ws_abi::ABI_VERSION, true),
            (5, true),
        ] {
            let mut h = header();
            h.abi_version = abi;
            let w = TraceWriter::create(&path, &h).unwrap();
            w.finish(&TraceFooter::default()).unwrap();
            match TraceReader::open(&path) {
                Ok(r) => {
                    assert!(ok, "ABI {abi} read");
                    assert_eq!(r.header().abi_version, abi);
                }
                Err(e) => {
                    assert!(!ok, "ABI {abi}: {e}");
                    assert!(matches!(e, TraceFileError::NewerAbi { .. }), "{e}");
                    let msg = e.to_string();
                    assert!(
                        msg.contains(&format!(
                            "written by a newer ws-trace (ABI {abi}); this one reads up to ABI {}",
                            ws_abi::ABI_VERSION
                        )),
                        "{msg}"
                    );
                }
            }
        }
    }

    #[test]
    fn garbage_and_wrong_versions_are_rejected_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let open = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let e = TraceReader::open(&path).unwrap_err();
            let m = TraceReader::from_bytes(bytes.to_vec(), &path).unwrap_err();
            assert_eq!(e.to_string(), m.to_string());
            e
        };

        let e = open(b"hello world, this is not a trace file at all");
        assert!(matches!(e, TraceFileError::NotATraceFile { .. }), "{e}");
        assert!(e.to_string().contains("not a ws-trace file"), "{e}");
        assert!(e.to_string().contains("68 65 6c 6c"), "{e}");

        let e = open(b"");
        assert!(e.to_string().contains("empty file"), "{e}");

        let mut v7 = MAGIC.to_vec();
        v7.extend_from_slice(&7u32.to_le_bytes());
        v7.extend_from_slice(&2u32.to_le_bytes());
        v7.extend_from_slice(b"{}");
        let e = open(&v7);
        assert!(
            matches!(
                e,
                TraceFileError::UnsupportedVersion {
                    found: 7,
                    supported: FORMAT_VERSION,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("version 7"), "{e}");
        assert!(e.to_string().contains("reads versions 1 to 2"), "{e}");
        let mut v0 = v7.clone();
        v0[8] = 0;
        assert!(matches!(
            open(&v0),
            TraceFileError::UnsupportedVersion { found: 0, .. }
        ));

        let e = open(&MAGIC[..5]);
        assert!(matches!(e, TraceFileError::TruncatedHeader { .. }), "{e}");
        let mut short = MAGIC.to_vec();
        short.extend_from_slice(&2u32.to_le_bytes());
        short.extend_from_slice(&1u32.to_le_bytes());
        let e = open(&short);
        assert!(
            matches!(
                e,
                TraceFileError::TruncatedHeader {
                    need: 20,
                    have: 16,
                    ..
                }
            ),
            "{e}"
        );

        for (version, preamble) in [(1u32, PREAMBLE_LEN_V1), (2, PREAMBLE_LEN)] {
            let mut cut = MAGIC.to_vec();
            cut.extend_from_slice(&version.to_le_bytes());
            cut.extend_from_slice(&100u32.to_le_bytes());
            cut.resize(preamble, 0);
            cut.extend_from_slice(b"{\"abi_version\":");
            let e = open(&cut);
            let (need, have) = (preamble as u64 + 100, cut.len() as u64);
            assert!(
                matches!(e, TraceFileError::TruncatedHeader { need: n, have: h, .. } if n == need && h == have),
                "{e}"
            );

            let mut bad_json = MAGIC.to_vec();
            bad_json.extend_from_slice(&version.to_le_bytes());
            bad_json.extend_from_slice(&5u32.to_le_bytes());
            if version == 2 {
                let crc = crc32c::crc32c_append(crc32c::crc32c(&bad_json[8..16]), b"nope!");
                bad_json.extend_from_slice(&crc.to_le_bytes());
            }
            bad_json.extend_from_slice(b"nope!");
            let e = open(&bad_json);
            assert!(matches!(e, TraceFileError::BadHeader { .. }), "{e}");
            assert!(!e.to_string().contains("damaged"), "{e}");

            let mut huge = MAGIC.to_vec();
            huge.extend_from_slice(&version.to_le_bytes());
            huge.extend_from_slice(&u32::MAX.to_le_bytes());
            huge.resize(preamble, 0);
            let e = open(&huge);
            assert!(matches!(e, TraceFileError::BadHeader { .. }), "{e}");
        }

        let e = TraceReader::open(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, TraceFileError::Io { .. }), "{e}");
    }

    #[test]
    fn bad_records_are_refused_and_big_ones_get_blocks_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.wstrace");
        let mut w = write(&path, &records(2));
        assert!(matches!(
            w.write_record(&[]),
            Err(TraceFileError::RecordSize { len: 0 })
        ));
        assert!(matches!(
            w.write_record(&vec![0u8; MAX_RECORD_LEN as usize + 1]),
            Err(TraceFileError::RecordSize { .. })
        ));
        let mut recs = records(2);
        for (i, size) in [100 << 10, 3 << 20, 70 << 10].into_iter().enumerate() {
            let mut r = record(ProbeKind::TcpProbe, 50 + i as u64);
            r.resize(size, i as u8 + 1);
            w.write_record(&r).unwrap();
            recs.push(r);
            let small = record(ProbeKind::NetifReceiveSkb, 60 + i as u64);
            w.write_record(&small).unwrap();
            recs.push(small);
        }
        let footer = footer_for(&w);
        w.finish(&footer).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let r = TraceReader::open(&path).unwrap();
        assert!(r.integrity().is_intact() && !r.truncated());
        let got: Vec<&[u8]> = r.records().collect();
        let want: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
        assert_eq!(got, want);
        let bl = blocks(&bytes);
        assert!(
            bl.iter()
                .any(|b| b.records == 1 && b.end - b.start > 3 << 20),
            "{bl:?}"
        );
    }

    #[test]
    fn a_full_disk_stops_the_writer() {
        // /dev/full answers every write with ENOSPC.
        let e = TraceWriter::create(Path::new("/dev/full"), &header()).unwrap_err();
        assert!(matches!(e, TraceFileError::Io { op: "writing", .. }), "{e}");
        assert!(e.to_string().contains("No space left on device"), "{e}");
    }

    /// The v1 fixture (tests/data/README.md) and the records it was written with.
    fn v1_fixture() -> (Vec<u8>, Vec<Vec<u8>>) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/v1-complete.wstrace"
        );
        // Written at ABI 6, when there were 16 probe kinds.
        (std::fs::read(path).unwrap(), records_of(48, 16))
    }

    #[test]
    fn version1_files_still_read() {
        let (bytes, recs) = v1_fixture();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.wstrace");
        let r = reopen(&path, &bytes);
        assert_eq!(r.format_version(), 1);
        assert_eq!(r.header().format_version, 1);
        assert_eq!(r.header().abi_version, 6);
        assert_eq!(r.header().hostname, "fixture-host");
        assert!(!r.truncated());
        assert_eq!(r.ignored_tail_bytes(), 0);
        assert!(r.integrity().is_intact());
        assert_eq!(r.record_count(), 48);
        let footer = r.footer().unwrap();
        assert_eq!(footer.records, 48);
        assert_eq!(footer.end.offset_uncertainty_ns, 28);
        let got: Vec<&[u8]> = r.records().collect();
        let want: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
        assert_eq!(got, want);
        for g in got {
            crate::decode::decode(g).unwrap();
        }
    }

    #[test]
    fn version1_cut_damaged_and_reserved_frames_read_as_before() {
        let (bytes, recs) = v1_fixture();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.wstrace");
        let data_start = PREAMBLE_LEN_V1 + u32_at(&bytes, 12).unwrap() as usize;
        let mut ends = Vec::new();
        let mut pos = data_start;
        for r in &recs {
            pos += 4 + r.len();
            ends.push(pos);
        }
        let footer_at = u64_at(&bytes, bytes.len() - TRAILER_LEN).unwrap() as usize;
        assert_eq!(footer_at, pos);

        // Cut short: every whole record, truncated, the rest ignored.
        let r = reopen(&path, &bytes[..ends[20] + 7]);
        assert_eq!(r.records().count(), 21);
        assert_eq!(r.record_count(), 21);
        assert!(r.truncated());
        assert_eq!(r.ignored_tail_bytes(), 7);
        assert!(r.integrity().is_intact());

        // A damaged frame length in a complete file: reading stops there, as it always
        // did, and now says so.
        let mut damaged = bytes.clone();
        damaged[ends[9] + 3] = 0x7f;
        let r = reopen(&path, &damaged);
        let mut it = r.records();
        assert_eq!(it.by_ref().count(), 10);
        assert_eq!(it.corrupt_at(), Some(ends[9] as u64));
        assert_eq!(r.record_count(), 48);
        assert_eq!(
            r.integrity(),
            &Integrity {
                corrupt_blocks: 1,
                corrupt_bytes: (footer_at - ends[9]) as u64,
                records_lost: Some(38),
                truncated: false,
                tail_bytes: 0,
            }
        );

        // Reserved frames are skipped.
        let mut more = bytes[..footer_at].to_vec();
        more.extend_from_slice(&(RESERVED_MARK_MIN + 1).to_le_bytes());
        more.extend_from_slice(&3u32.to_le_bytes());
        more.extend_from_slice(b"abc");
        let extra = record(ProbeKind::TcpProbe, 9);
        more.extend_from_slice(&(extra.len() as u32).to_le_bytes());
        more.extend_from_slice(&extra);
        let r = reopen(&path, &more);
        let got: Vec<&[u8]> = r.records().collect();
        assert_eq!(got.len(), 49);
        assert_eq!(got[48], extra.as_slice());
    }

    /// Reads `bytes` the way the fuzz target does (ws-trace/fuzz/fuzz_targets/reader.rs),
    /// with its checks.
    fn read_like_the_fuzzer(bytes: &[u8]) {
        let Ok(reader) = TraceReader::from_bytes(bytes.to_vec(), Path::new("corpus")) else {
            return;
        };
        let mut records = 0u64;
        let mut total = 0u64;
        for raw in reader.records() {
            records += 1;
            total += raw.len() as u64;
            let _ = crate::decode::decode(raw);
        }
        assert!(total <= bytes.len() as u64);
        let integrity = reader.integrity();
        if reader.format_version() >= 2 {
            assert_eq!(records, reader.record_count());
            assert_eq!(integrity.truncated, reader.footer().is_none());
        }
        assert!(integrity.corrupt_bytes + integrity.tail_bytes <= bytes.len() as u64);
        let _ = integrity.to_string();
    }

    #[test]
    fn fuzz_corpus_replays_without_panic() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/reader");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let run = std::panic::catch_unwind(|| read_like_the_fuzzer(&bytes));
            assert!(run.is_ok(), "{} panicked the reader", path.display());
            files += 1;
        }
        assert!(files >= 5, "only {files} corpus files in {}", dir.display());
    }

    /// Writes the fuzz corpus seeds: small files of both format versions, complete,
    /// truncated and damaged. `WS_TRACE_FUZZ_SEEDS=DIR cargo test -p ws-trace --lib
    /// write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes the fuzz seeds into $WS_TRACE_FUZZ_SEEDS"]
    fn write_fuzz_seeds() {
        let out = PathBuf::from(std::env::var("WS_TRACE_FUZZ_SEEDS").unwrap());
        std::fs::create_dir_all(&out).unwrap();
        let small_header = TraceHeader {
            abi_version: ws_abi::ABI_VERSION,
            probes: vec![ProbeInfo::of(ProbeKind::TcpProbe)],
            ..TraceHeader::default()
        };
        let recs = records(6);
        let path = out.join("v2-complete");
        let mut w = TraceWriter::create(&path, &small_header).unwrap();
        for (i, r) in recs.iter().enumerate() {
            w.write_record(r).unwrap();
            if i == 2 {
                w.flush().unwrap();
            }
        }
        let footer = TraceFooter {
            records: 6,
            ..TraceFooter::default()
        };
        w.finish(&footer).unwrap();
        let complete = std::fs::read(&path).unwrap();
        let bl = blocks(&complete);
        std::fs::write(out.join("v2-truncated"), &complete[..bl[1].end - 5]).unwrap();
        let mut damaged = complete.clone();
        damaged[bl[0].start + BLOCK_HEADER_LEN + 9] ^= 0x20;
        std::fs::write(out.join("v2-damaged-payload"), &damaged).unwrap();
        let mut damaged = complete.clone();
        damaged[bl[1].start + 4] ^= 0x20;
        std::fs::write(out.join("v2-damaged-header"), &damaged).unwrap();
        let (v1, _) = v1_fixture();
        std::fs::write(out.join("v1-complete"), &v1).unwrap();
        std::fs::write(out.join("v1-truncated"), &v1[..v1.len() - 700]).unwrap();
    }

    #[test]
    fn checksums_are_crc32c_as_documented() {
        // docs/trace-format.md gives this check value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let h = BlockHeader {
            kind: BLOCK_RECORDS,
            seq: 7,
            len: 12,
            records: 2,
            first_record: 40,
            payload_crc: 0xDEAD_BEEF,
        };
        let bytes = h.encode();
        assert_eq!(u32_at(&bytes, 36), Some(crc32c::crc32c(&bytes[..36])));
        assert_eq!(BlockHeader::parse(&bytes, 0), Some(h));
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
