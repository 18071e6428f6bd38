//! Any text given as a cluster file is accepted or rejected with an error, never a panic;
//! what parses renders, and reads back to the same value.

/// Checks the property for one input.
pub fn check(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(spec) = fulcrum_model::file::parse(text)
    {
        let rendered = fulcrum_model::file::render(&spec).expect("a valid spec renders");
        assert_eq!(fulcrum_model::file::parse(&rendered).expect("rendered spec parses"), spec);
    }
}
