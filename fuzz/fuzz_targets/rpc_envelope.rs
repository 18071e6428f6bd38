//! The `rpc_envelope` property (`fulcrum_fuzz::rpc_envelope`) under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::rpc_envelope::check(data));
