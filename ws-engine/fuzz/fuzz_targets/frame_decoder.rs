#![no_main]
//! Fuzzes the frame parser and message reassembler (see `../check.rs`).

use libfuzzer_sys::fuzz_target;

#[path = "../check.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
