//! A request body read from the client connection as the backend's connection asks for it.
//! The body owns the connection's read side while it streams and hands it back when it is
//! read to its end (the connection may then carry the next request) or dropped early (the
//! connection then closes: where the next request starts is unknown).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncRead;
use tokio::sync::oneshot;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::decoder::{Decoded, Decoder, FramingError};
use super::io::Reader;
use crate::dataplane::proxy_body::BoxError;
use crate::dataplane::signal::Signal;

/// The read side, given back by a body.
#[derive(Debug)]
pub(crate) struct Returned<R> {
    pub reader: Reader<R>,
    /// The body was read to its end: the connection's next bytes are the next request.
    pub complete: bool,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the request body is malformed: {0}")]
    Framing(#[from] FramingError),
    #[error("the client closed the connection before the end of the request body")]
    CutOff,
    #[error("reading the request body failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the client connection was given up before the request body's end")]
    Abandoned,
}

/// A request body with a length or chunked framing.
#[derive(Debug)]
pub(crate) struct RequestBody<R> {
    reader: Option<Reader<R>>,
    decoder: Decoder,
    max_trailers: usize,
    /// Set when the body is first wanted, if the client waits for `100 Continue`.
    continue_wanted: Option<Arc<Signal>>,
    give_back: Option<oneshot::Sender<Returned<R>>>,
    /// Resolves when the connection gives up on the body (it has closed, or waited long
    /// enough): the body then fails, so the backend's connection does not wait on a client
    /// nobody serves any more.
    abandoned: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<R> RequestBody<R> {
    pub(crate) fn new(
        reader: Reader<R>,
        decoder: Decoder,
        max_trailers: usize,
        continue_wanted: Option<Arc<Signal>>,
        give_back: oneshot::Sender<Returned<R>>,
        abandoned: WaitForCancellationFutureOwned,
    ) -> Self {
        RequestBody {
            reader: Some(reader),
            decoder,
            max_trailers,
            continue_wanted,
            give_back: Some(give_back),
            abandoned: Box::pin(abandoned),
        }
    }

    fn hand_back(&mut self) {
        if let (Some(reader), Some(give_back)) = (self.reader.take(), self.give_back.take()) {
            let _ = give_back.send(Returned { reader, complete: self.decoder.is_done() });
        }
    }
}

impl<R> Drop for RequestBody<R> {
    fn drop(&mut self) {
        self.hand_back();
    }
}

impl<R: AsyncRead + Unpin> Body for RequestBody<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.reader.is_some() && this.abandoned.as_mut().poll(cx).is_ready() {
            this.hand_back();
            return Poll::Ready(Some(Err(BodyError::Abandoned.into())));
        }
        loop {
            let Some(reader) = this.reader.as_mut() else { return Poll::Ready(None) };
            match this.decoder.decode(&mut reader.buf, this.max_trailers) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.hand_back();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    this.hand_back();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    this.hand_back();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => return Poll::Ready(Some(Err(BodyError::from(e).into()))),
            }
            if let Some(wanted) = this.continue_wanted.take() {
                wanted.fire();
            }
            let want = this
                .decoder
                .remaining()
                .map_or(usize::MAX, |left| usize::try_from(left).unwrap_or(usize::MAX));
            match ready!(reader.poll_fill_direct(cx, want)) {
                Ok(0) => return Poll::Ready(Some(Err(BodyError::CutOff.into()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(BodyError::from(e).into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::h1::decoder::Chunked;
    use bytes::BytesMut;
    use http_body_util::BodyExt;

    /// A body the connection never gives up on.
    fn kept() -> WaitForCancellationFutureOwned {
        tokio_util::sync::CancellationToken::new().cancelled_owned()
    }

    #[tokio::test]
    async fn a_body_the_connection_gave_up_on_fails_and_gives_the_reader_back() {
        let (give_back, returned) = oneshot::channel();
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"ab").await.expect("written");
        let given_up = tokio_util::sync::CancellationToken::new();
        let reader = Reader { io: server, buf: BytesMut::new() };
        let mut body = RequestBody::new(
            reader,
            Decoder::Length(10),
            1024,
            None,
            give_back,
            given_up.clone().cancelled_owned(),
        );
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "ab");
        given_up.cancel();
        let error = body.frame().await.expect("a frame").unwrap_err();
        assert!(error.to_string().contains("given up"), "{error}");
        assert!(!returned.await.expect("given back").complete);
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_gives_the_connection_back_for_the_next_request() {
        let (give_back, returned) = oneshot::channel();
        let reader =
            Reader { io: &b"lo\r\n0\r\n\r\nGET /next"[..], buf: BytesMut::from("5\r\nhel") };
        let body = RequestBody::new(
            reader,
            Decoder::Chunked(Chunked::default()),
            1024,
            None,
            give_back,
            kept(),
        );
        let collected = body.collect().await.expect("read").to_bytes();
        assert_eq!(&collected[..], b"hello");
        let returned = returned.await.expect("given back");
        assert!(returned.complete);
        assert_eq!(&returned.reader.buf[..], b"GET /next");
    }

    #[tokio::test]
    async fn a_body_dropped_early_or_cut_off_leaves_the_connection_to_close() {
        let (give_back, returned) = oneshot::channel();
        let reader = Reader { io: &b"abc"[..], buf: BytesMut::new() };
        let body = RequestBody::new(reader, Decoder::Length(10), 1024, None, give_back, kept());
        assert_eq!(body.size_hint().exact(), Some(10));
        let error = body.collect().await.unwrap_err();
        assert!(error.to_string().contains("before the end"), "{error}");
        assert!(!returned.await.expect("given back").complete);

        let (give_back, returned) = oneshot::channel();
        let wanted = Arc::new(Signal::default());
        let reader = Reader { io: &b"abc"[..], buf: BytesMut::new() };
        let mut body = RequestBody::new(
            reader,
            Decoder::Length(3),
            1024,
            Some(Arc::clone(&wanted)),
            give_back,
            kept(),
        );
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "abc");
        // Asking for the body is what tells the client to go on.
        assert!(wanted.is_fired());
        drop(body);
        assert!(returned.await.expect("given back").complete);
    }
}
