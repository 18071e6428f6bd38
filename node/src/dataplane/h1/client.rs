//! HTTP/1.1 to a backend, driven by the client connection's own task: no task, channel or
//! second header map per backend connection (hyper's client had all three). A request head
//! is written and its body sent while the response head is awaited; while the response body
//! is read it goes on sending what is left of the request body (a backend may answer before
//! it has read it all). Once the response has ended, the connection goes back to the pool if
//! the backend has the whole request; otherwise the rest of the request is dropped with the
//! connection (the client connection then closes too, as its request was not read whole).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Method, Request, Response};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::client_head::{
    MAX_RESPONSE_HEAD, RequestFraming, ResponseFraming, ResponseHead, ResponseHeadError,
    encode_request, parse_response,
};
use super::decoder::{Chunked, Decoded, Decoder, FramingError};
use super::empty_body;
use super::head::{chunk_line, last_chunk};
use super::io::Reader;
use crate::dataplane::proxy_body::{BoxError, ProxyBody};

/// Request body bytes queued before the socket is written: a body's frames that are ready at
/// once leave together (with the head) in one write.
const COALESCE: usize = 16 * 1024;
/// The end of a chunked body without trailers.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// Slices one write takes.
const MAX_SLICES: usize = 16;

/// An open connection to a backend, between requests.
#[derive(Debug)]
pub(crate) struct BackendConnection {
    reader: Reader<TcpStream>,
}

/// Why an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("the backend connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the backend closed the connection before it answered")]
    Closed,
    #[error(transparent)]
    Head(#[from] ResponseHeadError),
    #[error("the backend's response body is malformed: {0}")]
    Framing(#[from] FramingError),
    #[error("the backend closed the connection before the end of its response body")]
    CutOff,
    #[error("the request body failed: {0}")]
    RequestBody(BoxError),
    #[error("the request body's length is not the one its head said")]
    RequestLength,
}

/// Why a request was not answered.
#[derive(Debug)]
pub(crate) enum SendError {
    /// A reused connection turned out closed before the backend saw the request, which can
    /// go again on another connection (idempotent and without a body, so it is safe even if
    /// the backend did see it).
    Stale(Box<Request<ProxyBody>>),
    Failed(ExchangeError),
}

impl BackendConnection {
    pub(crate) fn new(stream: TcpStream) -> Self {
        BackendConnection { reader: Reader { io: stream, buf: BytesMut::new() } }
    }

    /// Whether a connection that sat idle can take a request: the backend has neither closed
    /// it nor sent anything unasked. (Once a read has found the socket empty, the runtime's
    /// cached readiness answers without a syscall until something arrives.)
    pub(crate) fn is_open_and_quiet(&self) -> bool {
        let mut probe = [0; 1];
        matches!(self.reader.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends `request` and waits for the response head; `reused`: the connection carried a
    /// request before, so the backend may have closed it meanwhile.
    pub(crate) async fn send(
        mut self,
        request: Request<ProxyBody>,
        reused: bool,
    ) -> Result<Response<ResponseBody>, SendError> {
        let (parts, body) = request.into_parts();
        let head_request = parts.method == Method::HEAD;
        let length = if body.is_end_stream() { Some(0) } else { body.size_hint().exact() };
        let mut head = Vec::with_capacity(512);
        let framing = encode_request(&parts, length, &mut head);
        // Only a request the backend cannot have acted on twice goes again.
        let unsent = (reused && framing == RequestFraming::Empty && parts.method.is_idempotent())
            .then_some(parts);
        let mut upload = Some(Upload::new(head, body, framing));
        let mut write_failed = false;
        let mut heard = false;
        let answered = std::future::poll_fn(|cx| {
            if let Some(sending) = upload.as_mut() {
                match sending.poll(&mut self.reader.io, cx) {
                    Poll::Ready(Ok(())) => upload = None,
                    // The backend stopped reading; its answer may be there all the same.
                    Poll::Ready(Err(UploadError::Write(_))) => {
                        upload = None;
                        write_failed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::from(e))),
                    Poll::Pending => {}
                }
            }
            self.poll_head(cx, head_request, &mut heard)
        })
        .await;
        let head = match answered {
            Ok(head) => head,
            Err(e) => {
                return Err(match unsent {
                    Some(parts)
                        if !heard && matches!(e, ExchangeError::Io(_) | ExchangeError::Closed) =>
                    {
                        SendError::Stale(Box::new(Request::from_parts(parts, empty_body())))
                    }
                    _ => SendError::Failed(e),
                });
            }
        };
        let ResponseHead { parts, framing, keep_alive } = head;
        let decoder = match framing {
            ResponseFraming::Empty => None,
            ResponseFraming::Length(length) => Some(Decoder::Length(length)),
            ResponseFraming::Chunked => Some(Decoder::Chunked(Chunked::default())),
            ResponseFraming::UntilClose => Some(Decoder::UntilClose),
        };
        let body = ResponseBody {
            connection: Some(self),
            decoder,
            upload,
            reusable: keep_alive && !write_failed,
        };
        Ok(Response::from_parts(parts, body))
    }

    /// Reads until a final response head; interim (1xx) ones are skipped. `heard`: whether
    /// any byte came.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        heard: &mut bool,
    ) -> Poll<Result<ResponseHead, ExchangeError>> {
        loop {
            while !self.reader.buf.is_empty() {
                match parse_response(&mut self.reader.buf, head_request)? {
                    Some(head) if head.parts.status.is_informational() => {}
                    Some(head) => return Poll::Ready(Ok(head)),
                    None => break,
                }
            }
            match ready!(self.reader.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(ExchangeError::Closed)),
                Ok(_) => *heard = true,
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

/// A backend's response body. It sends the rest of the request body as it is read.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    /// `None` once the body failed: the connection is closed.
    connection: Option<BackendConnection>,
    /// `None`: no body.
    decoder: Option<Decoder>,
    /// What is left to send of the request.
    upload: Option<Upload>,
    /// The backend's framing and connection fields allow another request.
    reusable: bool,
}

impl ResponseBody {
    /// Once the body has ended: its connection, if it can carry another request (both
    /// messages ended cleanly and nothing more came).
    pub(crate) fn take_reusable(&mut self) -> Option<BackendConnection> {
        let done = self.decoder.as_ref().is_none_or(Decoder::is_done);
        let sent = self.upload.as_ref().is_none_or(Upload::is_sent);
        if !(done && self.reusable && sent) {
            return None;
        }
        self.upload = None;
        let mut connection = self.connection.take()?;
        if !connection.reader.buf.is_empty() {
            return None;
        }
        // The response's head may still share the buffer: only its own room goes back.
        connection.reader.release_if_empty();
        Some(connection)
    }

    fn fail(&mut self, error: ExchangeError) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        self.connection = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = &mut *self;
        let Some(connection) = this.connection.as_mut() else { return Poll::Ready(None) };
        let answered = this.decoder.as_ref().is_none_or(Decoder::is_done);
        if let Some(sending) = this.upload.as_mut().filter(|_| !answered) {
            match sending.poll(&mut connection.reader.io, cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                Poll::Ready(Err(UploadError::Write(_))) => {
                    this.upload = None;
                    this.reusable = false;
                }
                Poll::Ready(Err(e)) => return this.fail(e.into()),
                Poll::Pending => {}
            }
        }
        let Some(decoder) = this.decoder.as_mut() else { return Poll::Ready(None) };
        loop {
            match decoder.decode(&mut connection.reader.buf, MAX_RESPONSE_HEAD) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(trailers)) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => return this.fail(e.into()),
            }
            let want = decoder
                .remaining()
                .map_or(usize::MAX, |left| usize::try_from(left).unwrap_or(usize::MAX));
            match ready!(connection.reader.poll_fill_direct(cx, want)) {
                Ok(0) if matches!(decoder, Decoder::UntilClose) => {
                    // The close ends the body, and the connection with it.
                    this.reusable = false;
                    this.decoder = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(ExchangeError::CutOff),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.connection.is_none() || self.decoder.as_ref().is_none_or(Decoder::is_done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.as_ref().map(Decoder::remaining) {
            None => SizeHint::with_exact(0),
            Some(Some(left)) => SizeHint::with_exact(left),
            Some(None) => SizeHint::default(),
        }
    }
}

/// Why sending a request failed.
#[derive(Debug)]
enum UploadError {
    /// Writing to the backend failed.
    Write(io::Error),
    /// The client's body failed (cut off, malformed, over the limit).
    Body(BoxError),
    /// The body's length is not the one the head said.
    Length,
}

impl From<UploadError> for ExchangeError {
    fn from(error: UploadError) -> Self {
        match error {
            UploadError::Write(e) => ExchangeError::Io(e),
            UploadError::Body(e) => ExchangeError::RequestBody(e),
            UploadError::Length => ExchangeError::RequestLength,
        }
    }
}

/// A request on its way to the backend: bytes queued for the socket, and the body they come
/// from until it has ended.
struct Upload {
    /// The request head, written from `head_written` on. Kept as it was encoded: a `Bytes`
    /// made of it would allocate again for its share count.
    head: Vec<u8>,
    head_written: usize,
    /// Body bytes after the head (a bodiless request allocates no queue).
    queue: VecDeque<Bytes>,
    /// Bytes of the head and queue not yet written.
    queued: usize,
    /// `None` once its end is queued.
    body: Option<ProxyBody>,
    chunked: bool,
    /// Bytes a `Content-Length` body has still to give.
    left: u64,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload").field("queued", &self.queued).field("left", &self.left).finish()
    }
}

impl Upload {
    fn new(head: Vec<u8>, body: ProxyBody, framing: RequestFraming) -> Self {
        Upload {
            queued: head.len(),
            head,
            head_written: 0,
            queue: VecDeque::new(),
            body: (framing != RequestFraming::Empty).then_some(body),
            chunked: framing == RequestFraming::Chunked,
            left: match framing {
                RequestFraming::Length(length) => length,
                _ => 0,
            },
        }
    }

    /// Whether the backend has been sent the whole request: its body's end is written, or
    /// all the bytes its length announced are (a body that has not yet said it ended, like
    /// an HTTP/2 stream whose end comes in an empty frame).
    fn is_sent(&self) -> bool {
        self.queued == 0 && (self.body.is_none() || (!self.chunked && self.left == 0))
    }

    fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.queued += bytes.len();
            self.queue.push_back(bytes);
        }
    }

    /// Sends what there is; `Ready(Ok)` once the whole request is written.
    fn poll(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), UploadError>> {
        loop {
            let mut waiting = false;
            if self.queued < COALESCE
                && let Some(body) = self.body.as_mut()
            {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(frame) => {
                        self.take(frame)?;
                        continue;
                    }
                    Poll::Pending => waiting = true,
                }
            }
            ready!(self.poll_write(io, cx)).map_err(UploadError::Write)?;
            if self.body.is_none() {
                return Poll::Ready(Ok(()));
            }
            if waiting {
                return Poll::Pending;
            }
        }
    }

    /// Queues a frame of the body, or its end.
    fn take(&mut self, frame: Option<Result<Frame<Bytes>, BoxError>>) -> Result<(), UploadError> {
        let frame = match frame {
            None => return self.end(),
            Some(Err(e)) => return Err(UploadError::Body(e)),
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if self.chunked => {
                self.push(chunk_line(data.len()));
                self.push(data);
                self.push(Bytes::from_static(b"\r\n"));
            }
            Ok(data) => {
                self.left = self.left.checked_sub(data.len() as u64).ok_or(UploadError::Length)?;
                self.push(data);
            }
            Err(frame) => {
                // Trailers end the body; only chunked framing can carry them.
                if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                    let mut end = Vec::with_capacity(64);
                    last_chunk(Some(&trailers), &mut end);
                    self.push(Bytes::from(end));
                    self.body = None;
                }
            }
        }
        // A body that knows it has ended (a client's HTTP/1.1 body after its last byte) is
        // done without another poll.
        if self.body.as_ref().is_some_and(Body::is_end_stream) {
            return self.end();
        }
        Ok(())
    }

    /// Queues the end of the body.
    fn end(&mut self) -> Result<(), UploadError> {
        self.body = None;
        if self.chunked {
            self.push(Bytes::from_static(LAST_CHUNK));
        } else if self.left > 0 {
            return Err(UploadError::Length);
        }
        Ok(())
    }

    /// Writes what is queued.
    fn poll_write(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.queued > 0 {
            let mut slices = [io::IoSlice::new(&[]); MAX_SLICES];
            let head = &self.head[self.head_written..];
            let unwritten = std::iter::once(head)
                .filter(|head| !head.is_empty())
                .chain(self.queue.iter().map(|bytes| &bytes[..]));
            let mut count = 0;
            for (slice, bytes) in slices.iter_mut().zip(unwritten) {
                *slice = io::IoSlice::new(bytes);
                count += 1;
            }
            // One slice (a request without a body) goes by `send`, which skips `writev`'s way
            // through the VFS.
            let mut written = ready!(if count == 1 {
                Pin::new(&mut *io).poll_write(cx, &slices[0])
            } else {
                Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count])
            })?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued -= written;
            let of_head = written.min(head.len());
            self.head_written += of_head;
            written -= of_head;
            while written > 0 {
                let Some(front) = self.queue.front_mut() else { break };
                if written >= front.len() {
                    written -= front.len();
                    self.queue.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A connection to a scripted backend on loopback, and the backend's side of it.
    async fn connected() -> (BackendConnection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (BackendConnection::new(client.expect("connect")), accepted.expect("accept").0)
    }

    fn get(path: &str) -> Request<ProxyBody> {
        Request::get(path).header("host", "b.test").body(empty_body()).expect("request")
    }

    /// A request body fed frame by frame by the test, of a known length or not.
    struct Fed(mpsc::Receiver<Frame<Bytes>>, Option<u64>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|frame| frame.map(Ok))
        }

        fn size_hint(&self) -> SizeHint {
            self.1.map_or_else(SizeHint::default, SizeHint::with_exact)
        }
    }

    /// Reads from the backend's side until `end` has arrived.
    async fn read_until(backend: &mut TcpStream, end: &[u8]) -> String {
        let mut seen = Vec::new();
        let mut buf = [0; 4096];
        while !seen.ends_with(end) {
            let n = backend.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(seen).expect("ascii")
    }

    async fn read_whole(mut body: ResponseBody) -> (Vec<u8>, Option<HeaderMap>, ResponseBody) {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            match frame.expect("frame").into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        (data, trailers, body)
    }

    use hyper::HeaderMap;

    #[tokio::test]
    async fn a_keep_alive_connection_carries_one_request_after_another() {
        let (connection, mut backend) = connected().await;
        let backend_side = async {
            assert_eq!(
                read_until(&mut backend, b"\r\n\r\n").await,
                "GET /one HTTP/1.1\r\nhost: b.test\r\n\r\n"
            );
            backend
                .write_all(
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none",
                )
                .await
                .expect("write");
        };
        let (response, ()) = tokio::join!(connection.send(get("/one"), false), backend_side);
        let response = response.expect("answered");
        assert_eq!(response.status(), 200, "the interim 100 is skipped");
        let (data, _, mut body) = read_whole(response.into_body()).await;
        assert_eq!(data, b"one");
        let connection = body.take_reusable().expect("reusable");
        assert!(connection.is_open_and_quiet());

        let backend_side = async {
            read_until(&mut backend, b"\r\n\r\n").await;
            backend.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\ntw\r\n1\r\no\r\n0\r\nx-sum: 3\r\n\r\n").await.expect("write");
        };
        let (response, ()) = tokio::join!(connection.send(get("/two"), true), backend_side);
        let (data, trailers, mut body) = read_whole(response.expect("answered").into_body()).await;
        assert_eq!(data, b"two");
        assert_eq!(trailers.expect("trailers")["x-sum"], "3");
        assert!(body.take_reusable().is_some());
    }

    #[tokio::test]
    async fn a_request_on_a_connection_the_backend_closed_is_given_back_if_safe_to_repeat() {
        let (connection, backend) = connected().await;
        drop(backend);
        // The close reaches the socket; an idle check sees it once the runtime has.
        let mut quiet = true;
        for _ in 0..100 {
            quiet = connection.is_open_and_quiet();
            if !quiet {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(!quiet, "a closed connection is not taken from the pool");
        match connection.send(get("/"), true).await {
            Err(SendError::Stale(request)) => assert_eq!(request.uri(), "/"),
            other => panic!("expected the request back, got {other:?}"),
        }
        let (connection, backend) = connected().await;
        drop(backend);
        let post = Request::post("/")
            .body(
                Full::new(Bytes::from_static(b"x")).map_err(|never| match never {}).boxed_unsync(),
            )
            .expect("request");
        assert!(
            matches!(connection.send(post, true).await, Err(SendError::Failed(_))),
            "a request with a body is not repeated"
        );
    }

    #[tokio::test]
    async fn a_streamed_body_goes_chunked_with_its_trailers() {
        let (connection, mut backend) = connected().await;
        let (feed, fed) = mpsc::channel(4);
        let request = Request::post("/up").body(Fed(fed, None).boxed_unsync()).expect("request");
        let client = tokio::spawn(async move {
            let response = connection.send(request, false).await.expect("answered");
            read_whole(response.into_body()).await.2.take_reusable().is_some()
        });
        feed.send(Frame::data(Bytes::from_static(b"hello"))).await.expect("feed");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-check", "ok".parse().expect("value"));
        feed.send(Frame::trailers(trailers)).await.expect("feed");
        let sent = read_until(&mut backend, b"x-check: ok\r\n\r\n").await;
        assert_eq!(
            sent,
            "POST /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-check: ok\r\n\r\n"
        );
        backend.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.expect("write");
        assert!(client.await.expect("task"), "both messages ended: reusable");
    }

    #[tokio::test]
    async fn an_early_answer_is_delivered_and_its_connection_not_reused() {
        let (connection, mut backend) = connected().await;
        let (feed, fed) = mpsc::channel(4);
        let request = Request::post("/up").body(Fed(fed, None).boxed_unsync()).expect("request");
        let backend_side = async {
            read_until(&mut backend, b"\r\n\r\n").await;
            backend
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\nno")
                .await
                .expect("write");
        };
        let (response, ()) = tokio::join!(connection.send(request, false), backend_side);
        let response = response.expect("answered while the body is still being sent");
        assert_eq!(response.status(), 413);
        let (data, _, mut body) = read_whole(response.into_body()).await;
        assert_eq!(data, b"no");
        assert!(body.take_reusable().is_none(), "the request body never ended");
        drop(feed);
    }

    #[tokio::test]
    async fn a_body_until_close_ends_with_the_connection_and_a_cut_body_fails() {
        let (connection, mut backend) = connected().await;
        let backend_side = async {
            read_until(&mut backend, b"\r\n\r\n").await;
            backend.write_all(b"HTTP/1.0 200 OK\r\n\r\nall of it").await.expect("write");
            drop(backend);
        };
        let (response, ()) = tokio::join!(connection.send(get("/"), false), backend_side);
        let (data, _, mut body) = read_whole(response.expect("answered").into_body()).await;
        assert_eq!(data, b"all of it");
        assert!(body.take_reusable().is_none());

        let (connection, mut backend) = connected().await;
        let backend_side = async {
            read_until(&mut backend, b"\r\n\r\n").await;
            backend
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
                .await
                .expect("write");
            drop(backend);
        };
        let (response, ()) = tokio::join!(connection.send(get("/"), false), backend_side);
        let mut body = response.expect("answered").into_body();
        assert_eq!(
            body.frame().await.expect("frame").expect("data").into_data().expect("data"),
            "half"
        );
        assert!(matches!(body.frame().await, Some(Err(ExchangeError::CutOff))));
    }

    #[tokio::test]
    async fn a_body_whose_announced_bytes_are_all_sent_leaves_the_connection_reusable() {
        let (connection, mut backend) = connected().await;
        let (feed, fed) = mpsc::channel(4);
        let request = Request::put("/up").body(Fed(fed, Some(5)).boxed_unsync()).expect("request");
        feed.send(Frame::data(Bytes::from_static(b"hello"))).await.expect("feed");
        let backend_side = async {
            let sent = read_until(&mut backend, b"hello").await;
            assert_eq!(sent, "PUT /up HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello");
            backend
                .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("write");
        };
        let (response, ()) = tokio::join!(connection.send(request, false), backend_side);
        let (_, _, mut body) = read_whole(response.expect("answered").into_body()).await;
        // The body has not said it ended (its sender is still open), but the backend has it all.
        assert!(body.take_reusable().is_some());
        drop(feed);
    }

    #[tokio::test]
    async fn a_malformed_answer_fails_the_request() {
        let (connection, mut backend) = connected().await;
        let backend_side = async {
            read_until(&mut backend, b"\r\n\r\n").await;
            backend
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n")
                .await
                .expect("write");
        };
        let (response, ()) = tokio::join!(connection.send(get("/"), true), backend_side);
        assert!(matches!(response, Err(SendError::Failed(ExchangeError::Head(_)))));
    }
}
