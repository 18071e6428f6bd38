//! The `proxy_header` property (`fulcrum_fuzz::proxy_header`) under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::proxy_header::check(data));
