#![no_main]
//! The `config_files` checks of tests/hostile, under libFuzzer.

#[path = "../../tests/hostile/mod.rs"]
mod hostile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::config::check_files(data));
