//! HTTP/1.1 message heads, sans IO: a request head parsed from the bytes read so far (with
//! how its body is framed and whether the connection may stay open), and a response head
//! written with the framing its body and the request allow (RFC 9112 §6).

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, StatusCode, Uri, Version};

/// Header fields a request head may have (hyper's limit too).
pub(crate) const MAX_HEADERS: usize = 100;

/// Fields a proxied request gains (X-Forwarded-For, -Proto and -Host, and Forwarded): its
/// header map is made with room for them, so adding them does not grow it.
const ADDED_BY_THE_PROXY: usize = 4;

/// How a request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head and what it says of its body and connection.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub parts: Parts,
    pub framing: Framing,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expects_continue: bool,
    /// An HTTP/1.1 upgrade (WebSocket): `Upgrade` with `Connection: upgrade`, and no body.
    pub upgrade: bool,
}

/// Why a request head was refused; the connection closes after the answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("the request head is malformed ({0})")]
    Malformed(httparse::Error),
    #[error("the request head has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("the request head is over {0} bytes")]
    TooLarge(usize),
    #[error("the HTTP version is not 1.0 or 1.1")]
    Version,
    #[error("the request has an invalid {0}")]
    Invalid(&'static str),
    #[error("the request body's framing is ambiguous: {0}")]
    Ambiguous(&'static str),
    #[error("the transfer coding {0:?} is not supported")]
    UnsupportedCoding(String),
}

impl HeadError {
    /// The status the client is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            HeadError::TooManyHeaders | HeadError::TooLarge(_) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            HeadError::UnsupportedCoding(_) => StatusCode::NOT_IMPLEMENTED,
            HeadError::Malformed(_) | HeadError::Invalid(_) | HeadError::Ambiguous(_) => {
                StatusCode::BAD_REQUEST
            }
        }
    }
}

/// Parses the request head at the start of `buf`, taking its bytes out of `buf` when it is
/// complete (header values share them, uncopied). `Ok(None)`: more bytes are needed.
pub(crate) fn parse_request(
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<Option<RequestHead>, HeadError> {
    // Left uninitialised: the parser writes only the fields it finds (initialising all of
    // them copied 3 KiB per request).
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let length = match request.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Err(HeadError::TooLarge(max_head));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HeadError::Version),
        Err(e) => return Err(HeadError::Malformed(e)),
    };
    if length > max_head {
        return Err(HeadError::TooLarge(max_head));
    }
    let method = Method::from_bytes(request.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Invalid("method"))?;
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Version),
    };
    // Where each piece lies in the head, so the head can be frozen and shared.
    let target = span_of(buf, request.path.unwrap_or("").as_bytes());
    let fields = FieldSpans::of(buf, request.headers);
    let head = buf.split_to(length).freeze();
    let uri =
        Uri::from_maybe_shared(head.slice(target)).map_err(|_| HeadError::Invalid("target"))?;
    let (headers, found) =
        fields.shared_headers(&head, ADDED_BY_THE_PROXY).map_err(HeadError::Invalid)?;
    // RFC 9112 §3.2: one Host, or the proxy and the backend could see different ones.
    if found.hosts > 1 {
        return Err(HeadError::Invalid("Host (more than one)"));
    }
    let framing = framing(&headers, &found, version)?;
    let keep_alive = keeps_alive(&headers, &found, version);
    let expects_continue = version == Version::HTTP_11
        && found.expect
        && framing != Framing::Empty
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let upgrade = version == Version::HTTP_11
        && found.upgrade
        && found.connection
        && framing == Framing::Empty
        && has_token(&headers, header::CONNECTION, "upgrade");
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead { parts, framing, keep_alive, expects_continue, upgrade }))
}

/// The body framing of RFC 9112 §6.3: chunked only as the last coding and never beside a
/// Content-Length; lengths that disagree or are not plain digits are refused, so no two
/// readers of the message can see different bodies.
fn framing(headers: &HeaderMap, found: &Found, version: Version) -> Result<Framing, HeadError> {
    if found.transfer_encoding {
        let codings: Vec<&[u8]> = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty())
            .collect();
        if codings.is_empty() {
            return Err(HeadError::Ambiguous("an empty Transfer-Encoding"));
        }
        if version == Version::HTTP_10 {
            return Err(HeadError::Ambiguous("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if found.content_length {
            return Err(HeadError::Ambiguous("both Transfer-Encoding and Content-Length"));
        }
        let chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
        if !codings.last().is_some_and(chunked) {
            return Err(HeadError::Ambiguous("chunked is not the last transfer coding"));
        }
        if codings.len() > 1 {
            let first = codings[0];
            return Err(if chunked(&first) {
                HeadError::Ambiguous("chunked twice")
            } else {
                HeadError::UnsupportedCoding(String::from_utf8_lossy(first).into_owned())
            });
        }
        return Ok(Framing::Chunked);
    }
    if !found.content_length {
        return Ok(Framing::Empty);
    }
    Ok(match content_length(headers)? {
        None | Some(0) => Framing::Empty,
        Some(length) => Framing::Length(length),
    })
}

/// A Content-Length that cannot be read as one length.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BadLength {
    /// Not plain digits, or past 2^64.
    Invalid,
    /// Several values that differ.
    Differ,
}

impl From<BadLength> for HeadError {
    fn from(bad: BadLength) -> Self {
        match bad {
            BadLength::Invalid => HeadError::Invalid("Content-Length"),
            BadLength::Differ => HeadError::Ambiguous("Content-Length values that differ"),
        }
    }
}

/// The length the Content-Length fields say, if any: every value (a list or repeated fields)
/// must be plain digits and all must agree.
pub(super) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, BadLength> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            let parsed = std::str::from_utf8(item)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(BadLength::Invalid)?;
            if length.is_some_and(|known| known != parsed) {
                return Err(BadLength::Differ);
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// Where `piece`, a slice of `buf`, lies in it.
pub(super) fn span_of(buf: &[u8], piece: &[u8]) -> Range<usize> {
    let start = piece.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + piece.len()
}

/// Where a parsed head's fields lie in its buffer, kept so the head can be frozen and its
/// header values share its bytes. As long as the head has fields: an array for the most a
/// head may have was 3 KiB to fill and move per head.
pub(super) struct FieldSpans {
    spans: Vec<(Range<usize>, Range<usize>)>,
}

impl FieldSpans {
    /// The spans of `fields`, parsed from `buf`.
    pub(super) fn of(buf: &[u8], fields: &[httparse::Header<'_>]) -> Self {
        let spans = (fields.iter().take(MAX_HEADERS))
            .map(|field| (span_of(buf, field.name.as_bytes()), span_of(buf, field.value)))
            .collect();
        FieldSpans { spans }
    }

    /// The fields as a header map whose values share `head`'s bytes, with room for `spare`
    /// more, and which of the fields that frame it it has; `Err` names what is invalid.
    pub(super) fn shared_headers(
        &self,
        head: &Bytes,
        spare: usize,
    ) -> Result<(HeaderMap, Found), &'static str> {
        let mut headers = HeaderMap::with_capacity(self.spans.len() + spare);
        let mut found = Found::default();
        for (name, value) in &self.spans {
            let name = HeaderName::from_bytes(&head[name.clone()]).map_err(|_| "header name")?;
            let value = HeaderValue::from_maybe_shared(head.slice(value.clone()))
                .map_err(|_| "header value")?;
            found.note(&name);
            headers.append(name, value);
        }
        Ok((headers, found))
    }
}

/// Which of the fields that frame a message or steer its connection a head has (and how many
/// Host fields), noted as its map is built: most heads have few of them, and looking each up
/// in the map costs a hash and a probe.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Found {
    pub hosts: usize,
    pub content_length: bool,
    pub transfer_encoding: bool,
    pub connection: bool,
    pub expect: bool,
    pub upgrade: bool,
}

impl Found {
    fn note(&mut self, name: &HeaderName) {
        if *name == header::HOST {
            self.hosts += 1;
        } else if *name == header::CONTENT_LENGTH {
            self.content_length = true;
        } else if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if *name == header::CONNECTION {
            self.connection = true;
        } else if *name == header::EXPECT {
            self.expect = true;
        } else if *name == header::UPGRADE {
            self.upgrade = true;
        }
    }
}

pub(super) fn keeps_alive(headers: &HeaderMap, found: &Found, version: Version) -> bool {
    if !found.connection {
        return version == Version::HTTP_11;
    }
    if has_token(headers, header::CONNECTION, "close") {
        return false;
    }
    version == Version::HTTP_11 || has_token(headers, header::CONNECTION, "keep-alive")
}

/// Whether a comma-separated header lists `token` (case-insensitive).
pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// How a response body goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyWrite {
    /// No body (HEAD, 1xx, 204, 304, or a length of 0).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked, ended by a last chunk (with trailers, if the body has any).
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    UntilClose,
}

/// What the response head (and the connection's close) needs to know of the request it
/// answers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answering {
    pub head_request: bool,
    pub http10: bool,
    /// The connection may stay open after this response.
    pub keep_alive: bool,
    /// The client said it closes after this request: once the request is read, nothing more
    /// comes, so closing needs no lingering read.
    pub client_closes: bool,
}

/// Writes the head of a response whose body has `body_length` bytes, if known, into `out`;
/// returns how the body goes and whether the connection stays open after it. Hop-by-hop
/// framing fields are the proxy's own: the backend's are replaced. A response without a
/// `Date` gets `date` (RFC 9110 §6.6.1: a proxy adds the one its backend did not).
pub(crate) fn encode_response(
    status: StatusCode,
    headers: &HeaderMap,
    body_length: Option<u64>,
    answering: Answering,
    date: &[u8],
    out: &mut Vec<u8>,
) -> (BodyWrite, bool) {
    let mut keep_alive = answering.keep_alive;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // One pass over the fields: the backend's Content-Length and Date are noted on the way.
    let mut first_length: Option<Option<u64>> = None;
    let mut dated = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            first_length.get_or_insert_with(|| {
                std::str::from_utf8(value.as_bytes()).ok()?.trim().parse::<u64>().ok()
            });
            continue;
        }
        if name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || name.as_str() == "keep-alive"
        {
            continue;
        }
        dated |= name == header::DATE;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let declared = first_length.flatten();
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || answering.head_request;
    // The Content-Length the head says, if the proxy writes its own.
    let (write, length) = if no_body {
        let keeps_length = status == StatusCode::NOT_MODIFIED || answering.head_request;
        // A backend's HEAD or 304 answer has an empty body whatever it describes: only its
        // own Content-Length says; the proxy's own answers have their length in the body.
        let own_length = body_length.filter(|&length| length > 0);
        (BodyWrite::None, declared.or(own_length).filter(|_| keeps_length))
    } else {
        match body_length.or(declared) {
            Some(0) => (BodyWrite::None, Some(0)),
            Some(length) => (BodyWrite::Length(length), Some(length)),
            None if !answering.http10 => (BodyWrite::Chunked, None),
            None => {
                keep_alive = false;
                (BodyWrite::UntilClose, None)
            }
        }
    };
    if !dated {
        field(out, b"date", date);
    }
    if let Some(length) = length {
        field(out, b"content-length", itoa(length, &mut [0; 20]));
    }
    if write == BodyWrite::Chunked {
        field(out, b"transfer-encoding", b"chunked");
    }
    if !keep_alive {
        field(out, b"connection", b"close");
    } else if answering.http10 {
        field(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    (write, keep_alive)
}

/// The head of a `101 Switching Protocols`, its fields as the backend sent them (Upgrade and
/// Connection are the answer to the client's upgrade).
pub(crate) fn encode_switch(headers: &HeaderMap, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in headers {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

pub(super) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, in `buf`.
pub(super) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

/// The last chunk of a chunked body, with its trailers if it has any: those that may be
/// trailers (RFC 9110 §6.5.1), not framing, routing or authentication fields.
pub(crate) fn last_chunk(trailers: Option<&HeaderMap>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if may_trail(name) {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn may_trail(name: &HeaderName) -> bool {
    const NOT_IN_TRAILERS: [HeaderName; 15] = [
        header::AUTHORIZATION,
        header::CACHE_CONTROL,
        header::CONNECTION,
        header::CONTENT_ENCODING,
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::CONTENT_TYPE,
        header::EXPECT,
        header::HOST,
        header::MAX_FORWARDS,
        header::PROXY_AUTHORIZATION,
        header::SET_COOKIE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ];
    !NOT_IN_TRAILERS.contains(name)
}

/// The line that opens a chunk of `length` bytes: its size in hex and CRLF.
pub(crate) fn chunk_line(length: usize) -> Bytes {
    Bytes::from(format!("{length:x}\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(text), 8192)
    }

    fn parsed(text: &str) -> RequestHead {
        parse(text).expect("valid").expect("complete")
    }

    #[test]
    fn a_head_is_parsed_and_taken_out_of_the_buffer() {
        let mut buf = BytesMut::from(
            "GET /a?b=1 HTTP/1.1\r\nHost: x.test\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next",
        );
        let head = parse_request(&mut buf, 8192).expect("valid").expect("complete");
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri, "/a?b=1");
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "x.test");
        assert_eq!(head.parts.headers.get_all("x-two").iter().count(), 2);
        assert_eq!((head.framing, head.keep_alive, head.upgrade), (Framing::Empty, true, false));
        assert_eq!(&buf[..], b"GET /next", "the next request's bytes stay");
    }

    #[test]
    fn a_partial_head_waits_and_an_oversized_one_is_refused() {
        assert!(parse("GET / HTTP/1.1\r\nhost: a\r\n").expect("valid").is_none());
        let long = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(9000));
        assert_eq!(parse(&long).unwrap_err(), HeadError::TooLarge(8192));
        let complete = format!("{long}\r\n");
        assert_eq!(
            parse(&complete).unwrap_err().status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let many: String = (0..101).map(|i| format!("x{i}: 1\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
            HeadError::TooManyHeaders
        );
    }

    #[test]
    fn only_fields_that_may_trail_are_written_as_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        trailers.insert(header::HOST, HeaderValue::from_static("evil.test"));
        let mut out = Vec::new();
        last_chunk(Some(&trailers), &mut out);
        assert_eq!(out, b"0\r\ngrpc-status: 0\r\n\r\n");
    }

    #[test]
    fn two_hosts_are_refused() {
        let error = parse("GET / HTTP/1.1\r\nhost: a.test\r\nhost: b.test\r\n\r\n").unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        let error = parse("GET / HTTP/1.1\r\nHost: a.test\r\nHOST: b.test\r\n\r\n").unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST, "names are compared case-blind");
    }

    #[test]
    fn malformed_heads_and_versions_are_refused() {
        assert_eq!(
            parse("GET / HTTP/2.0\r\n\r\n").unwrap_err().status(),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nx: a\r\n b\r\n\r\n").unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse("GET\0 / HTTP/1.1\r\n\r\n").unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn body_framing_follows_rfc_9112_and_refuses_what_is_ambiguous() {
        let post = "POST / HTTP/1.1\r\nhost: a\r\n";
        assert_eq!(
            parsed(&format!("{post}content-length: 12\r\n\r\n")).framing,
            Framing::Length(12)
        );
        assert_eq!(parsed(&format!("{post}content-length: 0\r\n\r\n")).framing, Framing::Empty);
        assert_eq!(
            parsed(&format!("{post}content-length: 5, 5\r\n\r\n")).framing,
            Framing::Length(5)
        );
        assert_eq!(
            parsed(&format!("{post}Transfer-Encoding: Chunked\r\n\r\n")).framing,
            Framing::Chunked
        );
        for (framing, status) in [
            ("content-length: 5\r\ncontent-length: 6", 400),
            ("content-length: +5", 400),
            ("content-length: 5\r\ntransfer-encoding: chunked", 400),
            ("Content-Length: 5\r\nTRANSFER-ENCODING: chunked", 400),
            ("transfer-encoding: chunked, identity", 400),
            ("transfer-encoding: chunked\r\ntransfer-encoding: chunked", 400),
            ("transfer-encoding: gzip, chunked", 501),
            ("transfer-encoding: ,\r\ncontent-length: 5", 400),
        ] {
            let error = parse(&format!("{post}{framing}\r\n\r\n")).unwrap_err();
            assert_eq!(error.status().as_u16(), status, "{framing}: {error}");
        }
        let old = "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(parse(old).unwrap_err().status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn keep_alive_continue_and_upgrade_are_read_from_the_head() {
        assert!(!parsed("GET / HTTP/1.1\r\nconnection: Close\r\n\r\n").keep_alive);
        assert!(!parsed("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(parsed("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").keep_alive);
        let expect = "POST / HTTP/1.1\r\nexpect: 100-Continue\r\ncontent-length: 3\r\n\r\n";
        assert!(parsed(expect).expects_continue);
        assert!(!parsed("GET / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n").expects_continue);
        let upgrade =
            "GET /ws HTTP/1.1\r\nconnection: keep-alive, Upgrade\r\nupgrade: websocket\r\n\r\n";
        assert!(parsed(upgrade).upgrade);
        assert!(!parsed("GET /ws HTTP/1.1\r\nupgrade: websocket\r\n\r\n").upgrade);
    }

    fn encoded(
        status: u16,
        fields: &[(&str, &str)],
        length: Option<u64>,
        answering: Answering,
    ) -> (String, BodyWrite, bool) {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        let mut out = Vec::new();
        let status = StatusCode::from_u16(status).expect("status");
        let (write, keep_alive) =
            encode_response(status, &headers, length, answering, DATE, &mut out);
        (String::from_utf8(out).expect("text"), write, keep_alive)
    }

    const PLAIN: Answering =
        Answering { head_request: false, http10: false, keep_alive: true, client_closes: false };
    const DATE: &[u8] = b"Mon, 07 Dec 2026 07:00:00 GMT";

    #[test]
    fn a_response_head_carries_the_framing_its_body_needs() {
        let (head, write, keep_alive) = encoded(
            200,
            &[("x-a", "1"), ("transfer-encoding", "chunked"), ("connection", "keep-alive")],
            Some(5),
            PLAIN,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: Mon, 07 Dec 2026 07:00:00 GMT\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!((write, keep_alive), (BodyWrite::Length(5), true));

        let (head, write, _) = encoded(200, &[], None, PLAIN);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ndate: Mon, 07 Dec 2026 07:00:00 GMT\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(write, BodyWrite::Chunked);

        let old = Answering { http10: true, ..PLAIN };
        let (head, write, keep_alive) = encoded(200, &[], None, old);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ndate: Mon, 07 Dec 2026 07:00:00 GMT\r\nconnection: close\r\n\r\n"
        );
        assert_eq!((write, keep_alive), (BodyWrite::UntilClose, false));
        let (head, _, keep_alive) = encoded(200, &[], Some(2), old);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ndate: Mon, 07 Dec 2026 07:00:00 GMT\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n"
        );
        assert!(keep_alive);

        let closing = Answering { keep_alive: false, ..PLAIN };
        assert!(
            encoded(404, &[], Some(0), closing)
                .0
                .ends_with("content-length: 0\r\nconnection: close\r\n\r\n")
        );
    }

    #[test]
    fn head_204_and_304_answers_have_no_body_and_keep_the_length_they_describe() {
        let head = Answering { head_request: true, ..PLAIN };
        let (text, write, _) = encoded(200, &[("content-length", "1234")], Some(0), head);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ndate: Mon, 07 Dec 2026 07:00:00 GMT\r\ncontent-length: 1234\r\n\r\n"
        );
        assert_eq!(write, BodyWrite::None);
        let (text, write, _) = encoded(204, &[("content-length", "0")], Some(0), PLAIN);
        assert_eq!(text, "HTTP/1.1 204 No Content\r\ndate: Mon, 07 Dec 2026 07:00:00 GMT\r\n\r\n");
        assert_eq!(write, BodyWrite::None);
        let (text, _, _) = encoded(200, &[("date", "then")], Some(0), head);
        assert_eq!(
            text, "HTTP/1.1 200 OK\r\ndate: then\r\n\r\n",
            "no length made up, the backend's date kept"
        );
        // The backend's first Content-Length is the one read, as a lookup would have it.
        let lengths = [("content-length", "x"), ("content-length", "7")];
        assert_eq!(encoded(200, &lengths, None, PLAIN).1, BodyWrite::Chunked);
        let lengths = [("content-length", "7"), ("content-length", "8")];
        assert_eq!(encoded(200, &lengths, None, PLAIN).1, BodyWrite::Length(7));
        let (text, _, _) = encoded(304, &[("content-length", "10")], None, PLAIN);
        assert_eq!(
            text,
            "HTTP/1.1 304 Not Modified\r\ndate: Mon, 07 Dec 2026 07:00:00 GMT\r\ncontent-length: 10\r\n\r\n"
        );
    }

    /// Mutations of a valid head: parsing any of them gives a head, asks for more or refuses,
    /// and never panics.
    #[test]
    fn mangled_heads_never_panic() {
        let valid = b"POST /a?b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nConnection: keep-alive, Upgrade\r\nUpgrade: w\r\nExpect: 100-continue\r\n\r\n";
        let alphabet = b"\r\n:, ;0123456789aAzZ\t\x00\x7f\xff/?%HTTP";
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let input = super::super::mangled(valid, alphabet, &mut rng);
            let _ = parse_request(&mut BytesMut::from(&input[..]), 256);
        }
    }

    #[test]
    fn chunk_lines_are_hex() {
        assert_eq!(&chunk_line(255)[..], b"ff\r\n");
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }
}
