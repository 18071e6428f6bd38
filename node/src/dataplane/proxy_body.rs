//! The body type L7 forwards in both directions, whatever produced it (a client connection,
//! a backend connection, the proxy's own answers).

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

/// Errors of a body on its way through.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type both directions are forwarded as.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
