//! The `cluster_file` property (`fulcrum_fuzz::cluster_file`) under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::cluster_file::check(data));
