//! The `vrrp_received_v6` property (`fulcrum_fuzz::vrrp_received_v6`) under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::vrrp_received_v6::check(data));
