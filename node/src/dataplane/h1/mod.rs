//! HTTP/1.1 with the proxy's own code, not hyper's. This module serves clients: a connection
//! between requests holds no buffer (a read lands in the worker's scratch buffer, see
//! `io.rs`) and its task is about 2.5 KiB, so ten thousand idle keep-alive clients cost
//! little; a request is parsed into `http` types in place (header values share the bytes
//! read), and a response head and its first body bytes leave in one write. `client.rs`
//! speaks to backends, in the same task. Heads and framing are sans IO (`head.rs`,
//! `client_head.rs`, `decoder.rs`); this module and `client.rs` move bytes.
//!
//! Timers: a new connection's first head must arrive within `header_timeout` of the connect,
//! a later head within `header_timeout` of its first byte, and a connection idle between
//! requests is closed after `keep_alive_timeout`.

mod body;
pub(crate) mod client;
mod client_head;
mod decoder;
mod head;
pub(crate) mod io;

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::body::{RequestBody, Returned};
use self::decoder::{Chunked, Decoder};
use self::head::{Answering, BodyWrite, Framing, HeadError, RequestHead};
use self::io::{ClientUpgrade, Reader, Rewound, detach};
use super::answer::error_response;
use super::boxed::boxed;
use super::client_clock::ClientClock;
use super::proxy_body::ProxyBody;
use super::signal::Signal;

/// How long a connection the proxy closes mid-request keeps reading (and dropping) what the
/// client still sends, so that the client reads the answer rather than a reset.
const LINGER: Duration = Duration::from_secs(1);
/// How much a lingering close reads at most.
const LINGER_BYTES: usize = 1 << 20;
/// The most bytes of a response head and body chunk copied together to leave in one write.
const JOINED_WRITE: usize = 8 * 1024;
/// How long the connection waits, after a response, for a request body the backend did not
/// read to its end; then it closes.
const BODY_RETURN: Duration = Duration::from_secs(5);

/// One connection's HTTP/1.1 limits and timers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The largest request head, and trailer section.
    pub max_head: usize,
    pub header_timeout: Duration,
    pub keep_alive_timeout: Duration,
}

/// Serves HTTP/1.1 on `io` (whose first bytes, already read, are `read`) until the client
/// closes, a timer or an error closes it, or `clock.wind_down` is set: then the request in
/// flight is answered with `Connection: close`. `service` answers each request.
// Not an `async fn`: those keep a second copy of their arguments in the future.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<I, S, F>(
    io: I,
    read: BytesMut,
    connected: Instant,
    limits: Limits,
    clock: Arc<ClientClock>,
    mut service: S,
) -> impl Future<Output = ()>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: FnMut(Request<ProxyBody>) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    async move {
        let (read_half, mut write) = tokio::io::split(io);
        let mut reader = Reader { io: read_half, buf: read };
        let mut first = Some(connected);
        loop {
            let head = match read_head(&mut reader, &limits, first.take(), &clock.wind_down).await {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("HTTP/1.1 request refused: {e}");
                    boxed!(refuse(&mut write, reader, &e)).await;
                    return;
                }
            };
            // Boxed, as is the service's future: a connection between requests keeps a small
            // task, and the request's state lives only while it is served.
            let exchanged =
                boxed!(exchange(head, reader, &mut write, &limits, &clock.wind_down, &mut service));
            reader = match exchanged.await {
                Next::Request(kept) => kept,
                Next::Close => return,
                Next::Switch(lent, headers, switched) => {
                    boxed!(switch_protocols(write, lent, &headers, switched)).await;
                    return;
                }
            };
            reader.release_if_empty();
        }
    }
}

/// What a connection does after a request.
enum Next<R> {
    /// Reads the next request.
    Request(Reader<R>),
    /// Closes (done by the exchange).
    Close,
    /// Writes the backend's 101 (these fields) and hands the connection to the tunnel.
    Switch(Reader<R>, hyper::HeaderMap, oneshot::Sender<io::Upgraded>),
}

/// One request: handed to `service` (its body reading from `reader`), answered on `write`.
// Not an `async fn`, which would keep its arguments twice in this future, made (in its box)
// for every request.
#[allow(clippy::manual_async_fn)]
fn exchange<'a, R, W, S, F>(
    head: RequestHead,
    reader: Reader<R>,
    write: &'a mut W,
    limits: &'a Limits,
    shutdown: &'a Signal,
    service: &'a mut S,
) -> impl Future<Output = Next<R>> + 'a
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Unpin,
    S: FnMut(Request<ProxyBody>) -> F,
    F: Future<Output = Response<ProxyBody>> + 'a,
{
    async move {
        let RequestHead { mut parts, framing, keep_alive, expects_continue, upgrade } = head;
        let answering = Answering {
            head_request: parts.method == Method::HEAD,
            http10: parts.version == Version::HTTP_10,
            // A keep-alive timeout of zero closes after every answer, and says so.
            keep_alive: keep_alive && !limits.keep_alive_timeout.is_zero(),
            client_closes: !keep_alive,
        };
        let switch = upgrade.then(|| {
            let (switched, upgraded) = oneshot::channel();
            parts.extensions.insert(ClientUpgrade::new(upgraded));
            switched
        });
        let continue_wanted = expects_continue.then(|| Arc::new(Signal::default()));
        let decoder = match framing {
            Framing::Empty => None,
            Framing::Length(length) => Some(Decoder::Length(length)),
            Framing::Chunked => Some(Decoder::Chunked(Chunked::default())),
        };
        // The reader stays here, or is lent to the body until the body gives it back.
        // Whatever way this exchange ends, a body still out then fails (the guard cancels on
        // drop); a request without a body pays for neither.
        let (body, reader, given_back, _give_up) = match decoder {
            Some(decoder) => {
                let given_up = CancellationToken::new();
                let (give_back, given_back) = oneshot::channel();
                let body = RequestBody::new(
                    reader,
                    decoder,
                    limits.max_head,
                    continue_wanted.clone(),
                    give_back,
                    given_up.clone().cancelled_owned(),
                );
                (body.boxed_unsync(), None, Some(given_back), Some(given_up.drop_guard()))
            }
            None => (empty_body(), Some(reader), None, None),
        };
        // A future of its own, so the service's (large) state and the answer's writing can
        // share their room in this one.
        let Some(response) =
            answer(service, Request::from_parts(parts, body), continue_wanted.as_deref(), write)
                .await
        else {
            return Next::Close;
        };
        finish_exchange(response, switch, reader, given_back, write, &answering, shutdown).await
    }
}

/// The service's answer to `request`, with `100 Continue` written first when the client
/// waits for it and its body was wanted; `None` if that write failed.
async fn answer<W, S, F>(
    service: &mut S,
    request: Request<ProxyBody>,
    continue_wanted: Option<&Signal>,
    write: &mut W,
) -> Option<Response<ProxyBody>>
where
    W: AsyncWrite + Unpin,
    S: FnMut(Request<ProxyBody>) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    const PROCEED: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    // Made in place: `pin!` of a local would copy the (large) future.
    let mut pending = std::pin::pin!(service(request));
    let Some(wanted) = continue_wanted else { return Some(pending.await) };
    tokio::select! {
        biased;
        response = pending.as_mut() => {
            // The body was asked for as the answer came (a backend that answers while it
            // reads): the client still waits for its 100 before sending it.
            if wanted.is_fired() && write_all_flushed(write, PROCEED).await.is_err() {
                return None;
            }
            Some(response)
        }
        () = wanted.fired() => {
            // Told once: the final answer follows.
            write_all_flushed(write, PROCEED).await.ok()?;
            Some(pending.await)
        }
    }
}

/// The rest of an exchange once the response has come: a switch to the tunnel, or the
/// response written and the read side back for the next request.
async fn finish_exchange<R, W>(
    response: Response<ProxyBody>,
    switch: Option<oneshot::Sender<io::Upgraded>>,
    mut reader: Option<Reader<R>>,
    mut given_back: Option<oneshot::Receiver<Returned<R>>>,
    write: &mut W,
    answering: &Answering,
    shutdown: &Signal,
) -> Next<R>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Unpin,
{
    let mut answering = *answering;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return match (switch, reader) {
            (Some(switched), Some(lent)) => {
                Next::Switch(lent, response.into_parts().0.headers, switched)
            }
            _ => Next::Close,
        };
    }
    answering.keep_alive &= !shutdown.is_fired();
    // Whether the request was read to its end (a request without a body was).
    let mut request_read = given_back.is_none();
    // A body the backend stopped reading early leaves the connection unusable.
    if let Some(receiver) = given_back.as_mut()
        && let Ok(returned) = receiver.try_recv()
    {
        answering.keep_alive &= returned.complete;
        request_read = returned.complete;
        reader = Some(returned.reader);
        given_back = None;
    }
    let Ok(mut keep_alive) = write_response(write, response, answering).await else {
        return Next::Close;
    };
    if let Some(receiver) = given_back {
        match tokio::time::timeout(BODY_RETURN, receiver).await {
            Ok(Ok(Returned { reader: back, complete })) => {
                keep_alive &= complete;
                request_read = complete;
                reader = Some(back);
            }
            _ => keep_alive = false,
        }
    }
    match reader {
        Some(kept) if keep_alive => Next::Request(kept),
        // The whole request was read and the client sends no more: a plain close.
        Some(mut kept) if answering.client_closes && request_read && kept.buf.is_empty() => {
            kept.release_if_empty();
            linger(write, None::<Reader<R>>).await;
            Next::Close
        }
        reader => {
            linger(write, reader).await;
            Next::Close
        }
    }
}

/// Answers a request head that was refused, and closes.
async fn refuse<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    write: &mut W,
    reader: Reader<R>,
    error: &HeadError,
) {
    let answer = error_response(error.status(), &error.to_string());
    let closing =
        Answering { head_request: false, http10: false, keep_alive: false, client_closes: false };
    let _ = write_response(write, answer, closing).await;
    linger(write, Some(reader)).await;
}

/// Waits for the next request head: `Ok(None)` when the connection ends quietly (closed,
/// timed out, or shut down between requests). `first_since`: the connect, for the first.
async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut Reader<R>,
    limits: &Limits,
    first_since: Option<Instant>,
    shutdown: &Signal,
) -> Result<Option<RequestHead>, HeadError> {
    let mut deadline = match first_since {
        Some(connected) => Some(connected + limits.header_timeout),
        None if !reader.buf.is_empty() => Some(Instant::now() + limits.header_timeout),
        None => None,
    };
    let idle_until = Instant::now() + limits.keep_alive_timeout;
    loop {
        if !reader.buf.is_empty()
            && let Some(head) = head::parse_request(&mut reader.buf, limits.max_head)?
        {
            return Ok(Some(head));
        }
        let between_requests = reader.buf.is_empty() && first_since.is_none();
        // Bytes already sent are read before a shutdown is heeded.
        let read = tokio::select! {
            biased;
            read = std::future::poll_fn(|cx| reader.poll_fill(cx)) => read,
            () = tokio::time::sleep_until(deadline.unwrap_or(idle_until)) => return Ok(None),
            () = shutdown.fired(), if between_requests => return Ok(None),
        };
        match read {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {
                deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout);
            }
        }
    }
}

/// Writes `response` (head and body) and tells whether the connection may carry another
/// request; `Err` when the client went away or the body failed mid-way.
async fn write_response<W: AsyncWrite + Unpin>(
    write: &mut W,
    response: Response<ProxyBody>,
    answering: Answering,
) -> std::io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    // Room for a small body too, which leaves with the head (`send_after`).
    let joined = body.size_hint().exact().filter(|&length| length <= JOINED_WRITE as u64);
    let mut out = Vec::with_capacity(512 + joined.unwrap_or(0) as usize);
    let (mode, keep_alive) = head::encode_response(
        parts.status,
        &parts.headers,
        body.size_hint().exact(),
        answering,
        &http_date(),
        &mut out,
    );
    if mode == BodyWrite::None {
        write_all_flushed(write, &out).await?;
        return Ok(keep_alive);
    }
    let mut left = match mode {
        BodyWrite::Length(length) => length,
        _ => u64::MAX,
    };
    let mut trailers = None;
    loop {
        // The first frame leaves with the head when it is ready at once; a body that is
        // slow to start (a stream of events) gets its head out first.
        let frame = if out.is_empty() {
            body.frame().await
        } else {
            match std::future::poll_fn(|cx| {
                Poll::Ready(std::pin::Pin::new(&mut body).poll_frame(cx))
            })
            .await
            {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    write_all_flushed(write, &out).await?;
                    out.clear();
                    continue;
                }
            }
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!("the response body failed mid-way, so the connection closes: {e}");
                return Err(std::io::Error::other(e.to_string()));
            }
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        match mode {
            BodyWrite::Chunked => {
                let line = head::chunk_line(data.len());
                send_after(write, &mut out, [&line, &data, b"\r\n"]).await?;
            }
            _ => {
                data.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                left -= data.len() as u64;
                send_after(write, &mut out, [&data]).await?;
            }
        }
        if left == 0 {
            break;
        }
    }
    let complete = match mode {
        BodyWrite::Chunked => {
            head::last_chunk(trailers.as_ref(), &mut out);
            true
        }
        BodyWrite::Length(_) => left == 0,
        BodyWrite::None | BodyWrite::UntilClose => true,
    };
    write_all_flushed(write, &out).await?;
    Ok(keep_alive && complete)
}

/// Now as an HTTP date, formatted once a second per worker.
fn http_date() -> [u8; 29] {
    thread_local! {
        static DATE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((0, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let (at, date) = cached.get();
        if at == second {
            return date;
        }
        let mut date = [b' '; 29];
        let formatted = httpdate::fmt_http_date(now);
        let length = formatted.len().min(29);
        date[..length].copy_from_slice(&formatted.as_bytes()[..length]);
        cached.set((second, date));
        date
    })
}

/// Writes the backend's `101` and hands the joined connection, with any bytes the client
/// sent after its request, to the tunnel waiting for it.
async fn switch_protocols<I>(
    mut write: WriteHalf<I>,
    reader: Reader<ReadHalf<I>>,
    headers: &hyper::HeaderMap,
    switched: oneshot::Sender<io::Upgraded>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut out = Vec::with_capacity(256);
    head::encode_switch(headers, &mut out);
    if write_all_flushed(&mut write, &out).await.is_err() {
        return;
    }
    let Reader { io, buf } = reader;
    let joined: Box<dyn io::ClientIo> = Box::new(io.unsplit(write));
    let _ = switched.send(Rewound::new(detach(buf), joined));
}

/// Closes the write side and, when the client may still be sending, reads and drops what it
/// sends for a moment, so the answer is read before the connection goes.
async fn linger<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    write: &mut W,
    reader: Option<Reader<R>>,
) {
    let _ = write.shutdown().await;
    let Some(mut reader) = reader else { return };
    let drained = async {
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            reader.buf.clear();
            match std::future::poll_fn(|cx| reader.poll_fill(cx)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drained).await;
    reader.buf.clear();
    reader.release_if_empty();
}

async fn write_all_flushed<W: AsyncWrite + Unpin>(
    write: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    write.write_all(bytes).await?;
    write.flush().await
}

/// Writes `out` and then `parts`, and clears `out`. Up to `JOINED_WRITE` bytes in all are
/// copied behind `out` and leave in one `send`: `writev`'s way through the VFS (its checks,
/// the iovec import) cost more than the copy in the profile. 8 KiB is a round bound, not tuned.
async fn send_after<W: AsyncWrite + Unpin, const PARTS: usize>(
    write: &mut W,
    out: &mut Vec<u8>,
    parts: [&[u8]; PARTS],
) -> std::io::Result<()> {
    // Room for `out` and every part in `write_vectored_all`'s slices.
    const { assert!(PARTS < 4) };
    if let ([], [only]) = (out.as_slice(), parts.as_slice()) {
        // Nothing to join: a later frame of a streamed body goes without a copy.
        return write_all_flushed(write, only).await;
    }
    if out.len() + parts.iter().map(|part| part.len()).sum::<usize>() <= JOINED_WRITE {
        for part in parts {
            out.extend_from_slice(part);
        }
        write_all_flushed(write, out).await?;
    } else {
        let mut all: [&[u8]; 4] = [&[]; 4];
        all[0] = out;
        all[1..=PARTS].copy_from_slice(&parts);
        write_vectored_all(write, &all).await?;
    }
    out.clear();
    Ok(())
}

/// Writes every slice, in as few writes as the socket allows.
async fn write_vectored_all<W: AsyncWrite + Unpin>(
    write: &mut W,
    parts: &[&[u8]],
) -> std::io::Result<()> {
    let mut slices = [std::io::IoSlice::new(&[]); 4];
    let mut count = 0;
    for part in parts.iter().filter(|p| !p.is_empty()) {
        slices[count] = std::io::IoSlice::new(part);
        count += 1;
    }
    let mut remaining = &mut slices[..count];
    while !remaining.is_empty() {
        let written = write.write_vectored(remaining).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut remaining, written);
    }
    write.flush().await
}

fn empty_body() -> ProxyBody {
    http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

/// `valid` with a few bytes changed, added or removed (from `alphabet`), for tests that
/// mangled input never panics.
#[cfg(test)]
fn mangled(valid: &[u8], alphabet: &[u8], rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut input = valid.to_vec();
    for _ in 0..rng.usize(1..6) {
        let at = rng.usize(..input.len().max(1)).min(input.len().saturating_sub(1));
        match rng.u8(..3) {
            0 if !input.is_empty() => input[at] = alphabet[rng.usize(..alphabet.len())],
            1 => input.insert(at, alphabet[rng.usize(..alphabet.len())]),
            _ if !input.is_empty() => drop(input.remove(at)),
            _ => {}
        }
    }
    input
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    const LIMITS: Limits = Limits {
        max_head: 8192,
        header_timeout: Duration::from_secs(1),
        keep_alive_timeout: Duration::from_secs(10),
    };

    /// A connection whose client sends `pieces`, each after its delay, then stays open.
    fn client_sending(pieces: Vec<(Duration, &'static [u8])>) -> Reader<DuplexStream> {
        let (mut client, server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            for (delay, bytes) in pieces {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let _ = client.write_all(bytes).await;
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        Reader { io: server, buf: BytesMut::new() }
    }

    /// How long `read_head` waited, and whether it returned a head.
    async fn wait(
        reader: &mut Reader<DuplexStream>,
        first: bool,
        shutdown: &Signal,
    ) -> (Duration, bool) {
        let started = Instant::now();
        let head = read_head(reader, &LIMITS, first.then_some(started), shutdown).await;
        (started.elapsed(), matches!(head, Ok(Some(_))))
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_head_gets_the_header_timeout_from_the_connect() {
        let mut reader = client_sending(vec![(Duration::from_millis(600), b"GET / HTTP/1.1\r\n")]);
        assert_eq!(
            wait(&mut reader, true, &Signal::default()).await,
            (Duration::from_secs(1), false)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_gets_the_keep_alive_timeout() {
        let mut reader = client_sending(vec![]);
        assert_eq!(
            wait(&mut reader, false, &Signal::default()).await,
            (Duration::from_secs(10), false)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_begun_on_a_keep_alive_connection_gets_the_header_timeout_from_its_first_byte() {
        let mut reader = client_sending(vec![
            (Duration::from_secs(5), b"GET / HT"),
            (Duration::from_millis(500), b"TP/1.1\r\n"),
        ]);
        assert_eq!(
            wait(&mut reader, false, &Signal::default()).await,
            (Duration::from_secs(6), false)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_in_time_is_read_and_the_next_requests_bytes_stay() {
        let mut reader = client_sending(vec![
            (Duration::from_secs(9), b"GET / HTTP/1.1\r\nhost: a\r\n"),
            (Duration::from_millis(900), b"\r\nGET /next"),
        ]);
        assert_eq!(
            wait(&mut reader, false, &Signal::default()).await,
            (Duration::from_millis(9900), true)
        );
        assert_eq!(&reader.buf[..], b"GET /next");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_closes_a_connection_between_requests_but_not_one_sending_a_head() {
        let shutdown = Signal::default();
        shutdown.fire();
        let mut reader = client_sending(vec![]);
        assert_eq!(wait(&mut reader, false, &shutdown).await, (Duration::ZERO, false));
        let mut reader = client_sending(vec![
            (Duration::ZERO, b"GET / HTTP/1.1\r\n"),
            (Duration::from_millis(200), b"host: a\r\n\r\n"),
        ]);
        // The head's first bytes are sent (the client's task runs) before the wait begins.
        tokio::task::yield_now().await;
        assert_eq!(wait(&mut reader, false, &shutdown).await, (Duration::from_millis(200), true));
    }

    /// How long serving a connection whose client sends `sent` and then stays open takes.
    async fn served_for(sent: &'static [u8]) -> Duration {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(sent).await.expect("write");
        let started = Instant::now();
        let clock = Arc::new(ClientClock::default());
        serve(server, BytesMut::new(), started, LIMITS, clock, |_| async {
            Response::new(empty_body())
        })
        .await;
        drop(client);
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_said_close_is_closed_at_once_unless_it_sent_more() {
        assert_eq!(
            served_for(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await,
            Duration::ZERO
        );
        assert_eq!(
            served_for(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\nGET /more").await,
            LINGER,
            "bytes after the request: the answer is lingered over"
        );
    }

    /// A writer that keeps each write call's bytes, and whether the call was vectored.
    #[derive(Default)]
    struct Writes(Vec<(bool, Vec<u8>)>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.push((false, data.to_vec()));
            Poll::Ready(Ok(data.len()))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            data: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let joined: Vec<u8> = data.iter().flat_map(|slice| slice.iter().copied()).collect();
            let length = joined.len();
            self.0.push((true, joined));
            Poll::Ready(Ok(length))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_later_frame_is_written_without_a_copy_behind_the_head() {
        let mut writes = Writes::default();
        let mut out = Vec::new();
        send_after(&mut writes, &mut out, [&b"later"[..]]).await.expect("written");
        assert_eq!(writes.0, vec![(false, b"later".to_vec())]);
        assert_eq!(out.capacity(), 0, "not copied into the head's buffer");
    }

    /// The writes of a 200 response with `body`, of known length or chunked.
    async fn response_writes(body: Vec<u8>, known_length: bool) -> Vec<(bool, Vec<u8>)> {
        let body: ProxyBody = if known_length {
            http_body_util::Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync()
        } else {
            let frames = [Ok(hyper::body::Frame::data(Bytes::from(body)))];
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
        };
        let answering = Answering {
            head_request: false,
            http10: false,
            keep_alive: true,
            client_closes: false,
        };
        let mut writes = Writes::default();
        let kept = write_response(&mut writes, Response::new(body), answering).await;
        assert!(kept.expect("written"), "the connection stays open");
        writes.0
    }

    #[tokio::test]
    async fn a_small_response_leaves_in_one_send_and_a_large_one_without_a_copy() {
        let small = response_writes(b"hello".to_vec(), true).await;
        assert_eq!(small.len(), 1, "head and body in one write");
        let (vectored, sent) = &small[0];
        assert!(!vectored, "a plain write, which a TCP stream makes with send(2)");
        assert!(sent.starts_with(b"HTTP/1.1 200 OK\r\n") && sent.ends_with(b"\r\n\r\nhello"));

        let chunked = response_writes(b"hello".to_vec(), false).await;
        assert_eq!(chunked.len(), 2, "head and first chunk in one write, then the last chunk");
        assert!(chunked.iter().all(|(vectored, _)| !vectored));
        assert!(chunked[0].1.ends_with(b"\r\n\r\n5\r\nhello\r\n"));
        assert_eq!(chunked[1].1, b"0\r\n\r\n");

        let large = vec![b'x'; JOINED_WRITE + 1];
        let writes = response_writes(large.clone(), true).await;
        assert_eq!(writes.len(), 1, "one vectored write of head and body");
        let (vectored, sent) = &writes[0];
        assert!(*vectored && sent.ends_with(&large));
    }
}
