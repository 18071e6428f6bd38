//! The `admin_json` property (`fulcrum_fuzz::admin_json`) under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::admin_json::check(data));
