#![no_main]
//! The `http_service_register` checks of tests/hostile, under libFuzzer.

#[path = "../../tests/hostile/mod.rs"]
mod hostile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::http::check_service_register(data));
