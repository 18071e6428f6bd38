//! The backend side of HTTP/1.1 heads, sans IO: a request head written for a backend with
//! the framing its body needs, and the backend's response head parsed, with how its body is
//! delimited (RFC 9112 §6.3) and whether the connection may carry another request.

use bytes::BytesMut;
use hyper::header::{self, HeaderMap};
use hyper::http::{request, response};
use hyper::{Method, Response, StatusCode, Version};

use super::head::{
    BadLength, FieldSpans, Found, MAX_HEADERS, content_length, field, itoa, keeps_alive,
};

/// The largest response head a backend may send (about hyper's limit, which it replaced:
/// large Set-Cookie and policy headers exist).
pub(crate) const MAX_RESPONSE_HEAD: usize = 400 * 1024;

/// How a request body goes to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: a body whose length is not known before it ends.
    Chunked,
}

/// Writes the head of a request to a backend into `out`, for a body of `body_length` bytes
/// (`None`: not known, so chunked). The framing fields are the proxy's own; the others go
/// as they are (the caller has removed the hop-by-hop ones).
pub(crate) fn encode_request(
    parts: &request::Parts,
    body_length: Option<u64>,
    out: &mut Vec<u8>,
) -> RequestFraming {
    let framing = match body_length {
        Some(0) => RequestFraming::Empty,
        Some(length) => RequestFraming::Length(length),
        None => RequestFraming::Chunked,
    };
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = match parts.uri.path_and_query() {
        Some(path) => path.as_str(),
        None => parts.uri.authority().map_or("/", |a| a.as_str()),
    };
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        RequestFraming::Length(length) => {
            field(out, b"content-length", itoa(length, &mut [0; 20]));
        }
        RequestFraming::Chunked => field(out, b"transfer-encoding", b"chunked"),
        // A method whose request usually has a body says it has none (RFC 9110 §8.6).
        RequestFraming::Empty if expects_body(&parts.method) => {
            field(out, b"content-length", b"0");
        }
        RequestFraming::Empty => {}
    }
    out.extend_from_slice(b"\r\n");
    framing
}

fn expects_body(method: &Method) -> bool {
    *method == Method::POST || *method == Method::PUT || *method == Method::PATCH
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// No body (a HEAD answer, 204, 304, or a length of 0).
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

/// A backend's response head and what it says of its body and connection.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub parts: response::Parts,
    pub framing: ResponseFraming,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Why a backend's response head was refused (the client gets a 502).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ResponseHeadError {
    #[error("the backend's response head is malformed ({0})")]
    Malformed(httparse::Error),
    #[error("the backend's response head is over {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
    #[error("the backend's response has an invalid {0}")]
    Invalid(&'static str),
    #[error("the backend answered 101 to a request that did not ask to upgrade")]
    UnaskedSwitch,
}

/// Parses the response head at the start of `buf`, taking its bytes out of `buf` when it is
/// complete. `Ok(None)`: more bytes are needed. An interim (1xx) response is parsed like any
/// other: the caller skips it.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, ResponseHeadError> {
    // Left uninitialised, as a request's are (`head::parse_request`).
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let parsing = httparse::ParserConfig::default();
    let length = match parsing.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(ResponseHeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ResponseHeadError::Malformed(e)),
    };
    if length > MAX_RESPONSE_HEAD {
        return Err(ResponseHeadError::TooLarge);
    }
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0))
        .map_err(|_| ResponseHeadError::Invalid("status"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ResponseHeadError::UnaskedSwitch);
    }
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let spans = FieldSpans::of(buf, parsed.headers);
    let head = buf.split_to(length).freeze();
    let (mut headers, found) =
        spans.shared_headers(&head, 0).map_err(ResponseHeadError::Invalid)?;
    let (framing, mut keep_alive) = response_framing(status, &headers, &found, head_request)?;
    keep_alive &= keeps_alive(&headers, &found, version);
    if found.content_length
        && matches!(framing, ResponseFraming::Chunked | ResponseFraming::UntilClose)
    {
        // The coding decides (RFC 9112 §6.3): a length beside it says nothing true.
        headers.remove(header::CONTENT_LENGTH);
    }
    if version == Version::HTTP_10 && found.transfer_encoding {
        // HTTP/1.0 has no transfer codings: faulty framing, not to be trusted further.
        keep_alive = false;
    }
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(ResponseHead { parts, framing, keep_alive }))
}

/// A response body's framing (RFC 9112 §6.3), and whether the connection can be reused after
/// it as far as the framing goes: a body that ends with the connection cannot, nor one whose
/// framing a backend made ambiguous (Transfer-Encoding beside Content-Length).
fn response_framing(
    status: StatusCode,
    headers: &HeaderMap,
    found: &Found,
    head_request: bool,
) -> Result<(ResponseFraming, bool), ResponseHeadError> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((ResponseFraming::Empty, true));
    }
    if found.transfer_encoding {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|c| !c.is_empty());
        let unambiguous = !found.content_length;
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => {
                (ResponseFraming::Chunked, unambiguous)
            }
            _ => (ResponseFraming::UntilClose, false),
        });
    }
    if !found.content_length {
        return Ok((ResponseFraming::UntilClose, false));
    }
    match content_length(headers) {
        Ok(None) => Ok((ResponseFraming::UntilClose, false)),
        Ok(Some(0)) => Ok((ResponseFraming::Empty, true)),
        Ok(Some(length)) => Ok((ResponseFraming::Length(length), true)),
        Err(BadLength::Invalid) => Err(ResponseHeadError::Invalid("Content-Length")),
        Err(BadLength::Differ) => Err(ResponseHeadError::Invalid("Content-Length (values differ)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Request;

    fn request(
        method: Method,
        uri: &str,
        headers: &[(&'static str, &'static str)],
    ) -> request::Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    fn encoded(parts: &request::Parts, length: Option<u64>) -> (String, RequestFraming) {
        let mut out = Vec::new();
        let framing = encode_request(parts, length, &mut out);
        (String::from_utf8(out).expect("ascii"), framing)
    }

    #[test]
    fn a_request_head_carries_the_framing_of_its_body_and_not_the_clients() {
        let get = request(Method::GET, "/a?b=1", &[("host", "x.test"), ("content-length", "9")]);
        assert_eq!(
            encoded(&get, Some(0)),
            ("GET /a?b=1 HTTP/1.1\r\nhost: x.test\r\n\r\n".into(), RequestFraming::Empty)
        );
        let post = request(Method::POST, "/u", &[("transfer-encoding", "chunked")]);
        assert_eq!(
            encoded(&post, Some(12)),
            ("POST /u HTTP/1.1\r\ncontent-length: 12\r\n\r\n".into(), RequestFraming::Length(12))
        );
        assert_eq!(
            encoded(&post, None),
            (
                "POST /u HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".into(),
                RequestFraming::Chunked
            )
        );
        assert_eq!(
            encoded(&post, Some(0)).0,
            "POST /u HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            "a POST says its body is empty"
        );
    }

    fn parse(text: &str, head_request: bool) -> Result<Option<ResponseHead>, ResponseHeadError> {
        parse_response(&mut BytesMut::from(text), head_request)
    }

    fn framing_of(text: &str) -> (ResponseFraming, bool) {
        let head = parse(text, false).expect("valid").expect("complete");
        (head.framing, head.keep_alive)
    }

    #[test]
    fn a_response_head_is_parsed_and_taken_out_of_the_buffer() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello");
        let head = parse_response(&mut buf, false).expect("valid").expect("complete");
        assert_eq!(head.parts.status, StatusCode::OK);
        assert_eq!(head.parts.headers["x-a"], "1");
        assert_eq!((head.framing, head.keep_alive), (ResponseFraming::Length(5), true));
        assert_eq!(&buf[..], b"hello", "the body's bytes stay");
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", false).expect("valid").is_none());
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let ok = "HTTP/1.1 200 OK\r\n";
        assert_eq!(
            framing_of(&format!("{ok}transfer-encoding: chunked\r\n\r\n")),
            (ResponseFraming::Chunked, true)
        );
        assert_eq!(
            framing_of(&format!("{ok}transfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n")),
            (ResponseFraming::Chunked, false),
            "ambiguous framing: read as chunked, the connection not reused"
        );
        assert_eq!(
            framing_of(&format!("{ok}Transfer-Encoding: chunked\r\nCONTENT-LENGTH: 3\r\n\r\n")),
            (ResponseFraming::Chunked, false),
            "names are compared case-blind"
        );
        assert_eq!(
            framing_of(&format!("{ok}transfer-encoding: gzip\r\n\r\n")),
            (ResponseFraming::UntilClose, false)
        );
        assert_eq!(framing_of(&format!("{ok}\r\n")), (ResponseFraming::UntilClose, false));
        assert_eq!(
            framing_of(&format!("{ok}content-length: 0\r\n\r\n")),
            (ResponseFraming::Empty, true)
        );
        assert_eq!(
            framing_of(&format!("{ok}content-length: 4\r\nconnection: close\r\n\r\n")),
            (ResponseFraming::Length(4), false)
        );
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\n"),
            (ResponseFraming::Length(4), false)
        );
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\ncontent-length: 4\r\nconnection: keep-alive\r\n\r\n"),
            (ResponseFraming::Length(4), true)
        );
        for bodiless in [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\n",
        ] {
            assert_eq!(framing_of(bodiless), (ResponseFraming::Empty, true), "{bodiless}");
        }
        let head = parse(&format!("{ok}content-length: 9\r\n\r\n"), true)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.framing, ResponseFraming::Empty, "a HEAD answer has no body");
        assert_eq!(head.parts.headers["content-length"], "9");
    }

    #[test]
    fn a_length_beside_a_coding_is_dropped_and_a_coded_http_1_0_answer_not_reused() {
        let head = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            false,
        )
        .expect("valid")
        .expect("complete");
        assert!(head.parts.headers.get("content-length").is_none());
        let head = parse(
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n",
            false,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!((head.framing, head.keep_alive), (ResponseFraming::Chunked, false));
    }

    #[test]
    fn malformed_response_heads_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 4, 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx: a\r\n b\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse(bad, false).is_err(), "{bad:?}");
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(MAX_RESPONSE_HEAD));
        assert_eq!(parse(&huge, false).unwrap_err(), ResponseHeadError::TooLarge);
    }
}
