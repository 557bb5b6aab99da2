#![no_main]
//! The `dns_name` checks of tests/hostile, under libFuzzer.

#[path = "../../tests/hostile/mod.rs"]
mod hostile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::dns::check_name(data));
