//! The `/metrics` endpoint: the data plane's counters over plain HTTP, for Prometheus.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;

use super::HttpResponse;
use crate::dataplane::DataPlane;
use crate::prometheus::CONTENT_TYPE;

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, plane: Arc<DataPlane>) {
    let handler = move |_, request: hyper::Request<_>| {
        let plane = Arc::clone(&plane);
        async move { answer(&plane, request.uri().path()).await }
    };
    super::serve(listener, "metrics endpoint", Arc::new(handler), None).await;
}

async fn answer(plane: &DataPlane, path: &str) -> HttpResponse {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, CONTENT_TYPE, plane.metrics().await),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
