//! The `route` property (`fulcrum_fuzz::route`) under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::route::check(data));
