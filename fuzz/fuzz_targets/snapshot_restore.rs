#![no_main]
//! The `snapshot_restore` checks of tests/hostile, under libFuzzer.

#[path = "../../tests/hostile/mod.rs"]
mod hostile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::snapshot::check_archive(data));
