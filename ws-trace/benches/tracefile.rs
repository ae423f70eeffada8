//! Trace file throughput: write then read 5 million 56-byte records, 3 runs, medians.
//!
//! `cargo bench -p ws-trace --bench tracefile` (optionally `-- RECORDS DIR`). The file is
//! written in DIR (default: the system temp dir) and removed afterwards; the read side
//! touches every record's timestamp so the loop cannot be skipped. Figures depend on the
//! page cache: the read runs right after the write, so it measures a warm cache.
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use ws_trace::tracefile::{
    ProbeInfo, TraceFilters, TraceFooter, TraceHeader, TraceReader, TraceWriter,
};

const RECORD: usize = 56;
const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let dir = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    let path = dir.join(format!("ws-trace-bench-{}.wstrace", std::process::id()));
    let header = TraceHeader::for_this_host(
        ws_abi::ProbeKind::ALL
            .iter()
            .map(|&k| ProbeInfo::of(k))
            .collect(),
        TraceFilters::default(),
    );

    let mut rec = [0u8; RECORD];
    let (mut w_secs, mut r_secs) = (Vec::new(), Vec::new());
    let mut bytes = 0u64;
    for run in 0..RUNS {
        let t = Instant::now();
        let mut w = TraceWriter::create(&path, &header).expect("create");
        for i in 0..n {
            rec[0..8].copy_from_slice(&i.to_le_bytes());
            rec[8..10].copy_from_slice(&((i % 16) as u16).to_le_bytes());
            w.write_record(&rec).expect("write");
        }
        w.finish(&TraceFooter {
            records: n,
            ..TraceFooter::default()
        })
        .expect("finish");
        w_secs.push(t.elapsed().as_secs_f64());
        bytes = std::fs::metadata(&path).expect("stat").len();

        let t = Instant::now();
        let r = TraceReader::open(&path).expect("open");
        let mut count = 0u64;
        let mut sum = 0u64;
        for rec in r.records() {
            count += 1;
            sum = sum.wrapping_add(u64::from_le_bytes(rec[0..8].try_into().expect("8 bytes")));
        }
        black_box(sum);
        r_secs.push(t.elapsed().as_secs_f64());
        assert_eq!(count, n);
        assert!(!r.truncated());
        eprintln!(
            "run {}: write {:.3} s, read {:.3} s",
            run + 1,
            w_secs[run],
            r_secs[run]
        );
    }
    let _ = std::fs::remove_file(&path);
    let mb = bytes as f64 / 1e6;
    let (w, r) = (median(w_secs), median(r_secs));
    println!(
        "tracefile: {n} records of {RECORD} B, file {mb:.1} MB, median of {RUNS} runs ({})",
        dir.display()
    );
    println!(
        "  write: {:>6.1} M records/s  {:>7.0} MB/s  ({w:.3} s)",
        n as f64 / w / 1e6,
        mb / w
    );
    println!(
        "  read:  {:>6.1} M records/s  {:>7.0} MB/s  ({r:.3} s)",
        n as f64 / r / 1e6,
        mb / r
    );
}
