//! The `node_file` property (`fulcrum_fuzz::node_file`) under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::node_file::check(data));
