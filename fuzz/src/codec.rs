//! Any bytes given as a log entry decode or fail with an error, never a panic.

use fulcrum_model::{Command, Config, codec};

/// Checks the property for one input.
pub fn check(data: &[u8]) {
    if let Ok(command) = codec::decode::<Command>(data) {
        let again = codec::encode(&command).expect("a decoded command encodes");
        assert_eq!(codec::decode::<Command>(&again).expect("re-encoded command decodes"), command);
    }
    let _ = codec::decode::<Config>(data);
}
