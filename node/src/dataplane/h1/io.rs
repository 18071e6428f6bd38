//! A connection's bytes: reads that hold no buffer while the peer is quiet (a per-thread
//! scratch buffer takes each read, and only bytes that arrived are kept), a client
//! connection with bytes already read put back in front of it, and a client connection
//! handed to a tunnel when a request upgrades.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// How much one read may take.
const READ_SIZE: usize = 16 * 1024;

/// The capacity of a read buffer a connection takes when it has none.
const BUFFER_SIZE: usize = 4096;

/// How many read buffers a worker keeps for its connections to take, each of at most
/// [`READ_SIZE`] bytes.
const SPARE_BUFFERS: usize = 32;

thread_local! {
    /// Each worker's scratch buffer: a read lands here and only what arrived is kept, so an
    /// idle connection holds no read buffer.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
    /// Read buffers connections gave back between messages. A busy client connection takes
    /// one again instead of allocating a new buffer per request (and another to share it when
    /// its head is split off), and an idle one holds none.
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// The read side of a connection (a client's, or a backend's) and the bytes read but not
/// yet used.
#[derive(Debug)]
pub(crate) struct Reader<R> {
    pub io: R,
    pub buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads what has arrived onto the end of `buf`, through the scratch buffer; `Ok(0)` is
    /// the end of the stream.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut read = ReadBuf::new(scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
            let arrived = read.filled();
            if self.buf.capacity() == 0 && !arrived.is_empty() {
                self.buf = SPARE
                    .with_borrow_mut(Vec::pop)
                    .unwrap_or_else(|| BytesMut::with_capacity(BUFFER_SIZE));
            }
            self.buf.extend_from_slice(arrived);
            Poll::Ready(Ok(arrived.len()))
        })
    }

    /// Reads up to `want` bytes straight into `buf` (a body, whose bytes are passed on as
    /// they are).
    pub(crate) fn poll_fill_direct(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<io::Result<usize>> {
        if !self.buf.is_empty() || want < READ_SIZE / 4 {
            return self.poll_fill(cx);
        }
        self.buf.reserve(want.min(READ_SIZE));
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Gives the buffer back to the worker when it holds nothing (between messages), so an
    /// idle connection holds none.
    pub(crate) fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            give_back(std::mem::take(&mut self.buf));
        }
    }
}

/// Keeps an emptied read buffer for the next connection that needs one, if it has room for a
/// message without allocating (its own room: bytes a message still shares stay that
/// message's) and is not oversized; drops it otherwise.
fn give_back(mut buf: BytesMut) {
    buf.clear();
    if buf.try_reclaim(BUFFER_SIZE) && buf.capacity() <= READ_SIZE {
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < SPARE_BUFFERS {
                spare.push(buf);
            }
        });
    }
}

/// The bytes read so far in their own allocation, exactly their size, for a connection that
/// keeps them for its whole life (an HTTP/2 preface, a tunnel's first bytes); the read buffer
/// goes back to the worker.
pub(crate) fn detach(buf: BytesMut) -> Bytes {
    let bytes = Bytes::copy_from_slice(&buf);
    give_back(buf);
    bytes
}

/// A connection with bytes already read from it put back in front.
#[derive(Debug)]
pub(crate) struct Rewound<I> {
    prefix: Bytes,
    io: I,
}

impl<I> Rewound<I> {
    pub(crate) fn new(prefix: Bytes, io: I) -> Self {
        Rewound { prefix, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewound<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let take = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..take]);
            self.prefix.advance(take);
            if self.prefix.is_empty() {
                // Lets go of its memory for the rest of the connection.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewound<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Any client connection, once upgraded.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientIo for T {}

/// A client connection after `101 Switching Protocols`, with what the client sent after its
/// upgrade request.
pub(crate) type Upgraded = Rewound<Box<dyn ClientIo>>;

/// In an upgrade request's extensions: the client connection, once the backend's 101 has
/// been written to it. Dropped unanswered (the backend refused), it leaves the connection to
/// HTTP. (Extensions must be `Clone`; the one receiver is taken by whoever upgrades.)
#[derive(Clone)]
pub(crate) struct ClientUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl ClientUpgrade {
    pub(crate) fn new(upgraded: oneshot::Receiver<Upgraded>) -> Self {
        ClientUpgrade(Arc::new(Mutex::new(Some(upgraded))))
    }

    /// The upgraded connection; `None` if the connection ended instead.
    pub(crate) async fn upgraded(self) -> Option<Upgraded> {
        let receiver = self.0.lock().ok()?.take()?;
        receiver.await.ok()
    }
}

impl std::fmt::Debug for ClientUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientUpgrade")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn bytes_put_back_are_read_first() {
        let mut rewound = Rewound::new(Bytes::from_static(b"PRI "), &b"rest"[..]);
        let mut all = String::new();
        rewound.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "PRI rest");
    }

    #[tokio::test]
    async fn a_fill_keeps_only_what_arrived() {
        let mut reader = Reader { io: &b"GET / HTTP/1.1\r\n"[..], buf: BytesMut::new() };
        let n = std::future::poll_fn(|cx| reader.poll_fill(cx)).await.expect("read");
        assert_eq!(n, 16);
        assert_eq!(&reader.buf[..], b"GET / HTTP/1.1\r\n");
        assert!(reader.buf.capacity() < READ_SIZE);
        let _ = reader.buf.split_to(16);
        reader.release_if_empty();
        assert_eq!(reader.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn a_buffer_given_back_is_taken_again_while_it_has_room_of_its_own() {
        async fn filled(bytes: &'static [u8]) -> Reader<&'static [u8]> {
            let mut reader = Reader { io: bytes, buf: BytesMut::new() };
            std::future::poll_fn(|cx| reader.poll_fill(cx)).await.expect("read");
            reader
        }
        let mut first = filled(b"abcd").await;
        let memory = first.buf.as_ptr();
        drop(first.buf.split_to(4).freeze());
        first.release_if_empty();
        assert_eq!(first.buf.capacity(), 0, "an idle connection holds no buffer");
        let mut second = filled(b"efgh").await;
        assert_eq!(second.buf.as_ptr(), memory, "the given-back buffer is used again");

        // A head still in use leaves too little room of the buffer's own to give back.
        let head = second.buf.split_to(4).freeze();
        second.release_if_empty();
        let third = filled(b"ijkl").await;
        assert_ne!(third.buf.as_ptr(), memory);
        assert_eq!(&head[..], b"efgh");
    }
}
