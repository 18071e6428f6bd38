//! The `vrrp_received` property (`fulcrum_fuzz::vrrp_received`) under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::vrrp_received::check(data));
