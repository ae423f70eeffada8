//! Arbitrary bytes as a trace file: open, check, iterate and decode every record. The
//! reader must never panic, and what it reports must add up.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ws_trace::tracefile::TraceReader;

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = TraceReader::from_bytes(data.to_vec(), Path::new("fuzz-input")) else {
        return;
    };
    let mut records = 0u64;
    let mut bytes = 0u64;
    for raw in reader.records() {
        records += 1;
        bytes += raw.len() as u64;
        let _ = ws_trace::decode::decode(raw);
    }
    assert!(bytes <= data.len() as u64);
    let integrity = reader.integrity();
    if reader.format_version() >= 2 {
        // Format 2 blocks are checked at open: iteration yields exactly what was counted.
        assert_eq!(records, reader.record_count());
        assert_eq!(integrity.truncated, reader.footer().is_none());
    }
    assert!(integrity.corrupt_bytes + integrity.tail_bytes <= data.len() as u64);
    let _ = integrity.to_string();
    let _ = reader.header().abi_version;
});
