#![no_main]
//! The `snapshot_records` checks of tests/hostile, under libFuzzer.

#[path = "../../tests/hostile/mod.rs"]
mod hostile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::snapshot::check_records(data));
