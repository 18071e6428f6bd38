//! The proxy's own short answers to HTTP requests it cannot forward (a refused head, a rate
//! limit, a failed backend), in plain text that says why.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::proxy_body::ProxyBody;

/// A short plain-text answer from the proxy itself.
pub(crate) fn error_response(status: StatusCode, why: &str) -> Response<ProxyBody> {
    let body = format!("{} {}: {why}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
