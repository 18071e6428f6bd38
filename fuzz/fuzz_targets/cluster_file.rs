//! Any text given as a cluster file is accepted or rejected with an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = fulcrum_model::file::parse(text) {
            // What parses renders, and reads back to the same value.
            let rendered = fulcrum_model::file::render(&spec).expect("a valid spec renders");
            assert_eq!(fulcrum_model::file::parse(&rendered).expect("rendered spec parses"), spec);
        }
    }
});
