//! The compact binary form of model values (Raft log entries, snapshots, RPC bodies):
//! bincode 2 through serde, behind a format version byte and a size limit.
//!
//! bincode 2 is pinned on purpose: 3.0.0 on crates.io is a tombstone, and 2.x is flagged
//! unmaintained (RUSTSEC-2025-0141) though sound for this use. Everything binary goes through
//! this module so the encoding can be swapped in one place; the version byte lets a future
//! format coexist with entries already on disk.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of every encoded message.
pub const FORMAT_VERSION: u8 = 4;

/// The largest message encoded or decoded (a whole configuration fits many times over).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The message is larger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    /// The message is empty, so it has no version byte.
    #[error("empty message")]
    Empty,
    /// The message was written in a format version this build does not read.
    #[error("format version {0} is not supported (this build reads version {FORMAT_VERSION})")]
    Version(u8),
    /// The bytes after the version do not decode.
    #[error("malformed message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The message decoded but bytes were left over.
    #[error("malformed message: {0} trailing bytes")]
    Trailing(usize),
    /// The value could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

/// Encodes `value` with the version byte in front.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config())?;
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Decodes what [`encode`] wrote; any other input is an error, never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}
