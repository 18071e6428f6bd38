//! Any bytes given as a log entry decode or fail with an error, never a panic.
#![no_main]

use fulcrum_model::{Command, Config, codec};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(command) = codec::decode::<Command>(data) {
        let again = codec::encode(&command).expect("a decoded command encodes");
        assert_eq!(codec::decode::<Command>(&again).expect("re-encoded command decodes"), command);
    }
    let _ = codec::decode::<Config>(data);
});
