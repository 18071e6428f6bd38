//! Any bytes given as a log entry decode or fail with an error, never a panic; what decodes
//! encodes to bytes that decode and encode to themselves. (Bytes, not values, are compared:
//! a rate of NaN decodes, compares unequal to itself, and is refused by validation when a
//! command is applied.)

use fulcrum_model::{Command, Config, codec};

/// Checks the property for one input.
pub fn check(data: &[u8]) {
    if let Ok(command) = codec::decode::<Command>(data) {
        let encoded = codec::encode(&command).expect("a decoded command encodes");
        let again = codec::decode::<Command>(&encoded).expect("re-encoded command decodes");
        let encoded_again = codec::encode(&again).expect("and encodes");
        assert_eq!(encoded_again, encoded, "{command:?} does not survive a round trip");
    }
    let _ = codec::decode::<Config>(data);
}
