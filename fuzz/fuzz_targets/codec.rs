//! The `codec` property (`fulcrum_fuzz::codec`) under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::codec::check(data));
