//! Forwarding between two TCP sockets, zero-copy where it pays: each direction starts by
//! copying through a small buffer, and once a read fills that buffer (a bulk transfer) it
//! switches to splice(2) from the socket into a pipe and from the pipe into the other socket,
//! so payload bytes no longer enter user space. Short exchanges never pay for a pipe's
//! creation (HAProxy's `splice-auto` makes the same bet). A direction that reaches end of
//! stream half-closes its destination and the other direction runs on, as TCP allows; when
//! the end was already in with its last bytes (epoll's RDHUP, confirmed by the read that
//! returns nothing, made before the bytes are sent), those bytes leave with the FIN in one
//! segment.

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::libc::{MSG_MORE, MSG_NOSIGNAL, c_int};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most bytes moved by one splice call: the default pipe capacity.
const PIPE_CHUNK: usize = 64 * 1024;
/// The copy buffer of a direction before it turns to splice; a read that fills it switches.
const COPY_BUFFER: usize = 16 * 1024;

/// When bytes last moved in either direction, for the idle timeout.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// Activity starting now.
    pub(crate) fn new() -> Activity {
        Activity { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}

impl Activity {
    /// Notes that bytes moved now.
    pub(crate) fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = last.elapsed();
            if quiet >= timeout {
                return;
            }
            tokio::time::sleep(timeout - quiet).await;
        }
    }
}

/// Which way bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From the client to the backend.
    ToBackend,
    /// From the backend to the client.
    ToClient,
}

/// Forwards both ways until both directions have ended; `counted` is told of every chunk.
/// The caller closes both sockets when this returns: their close sends the last FIN. An
/// error in either direction ends both (dropping the sockets resets what is left).
pub(crate) async fn forward(
    client: &TcpStream,
    backend: &TcpStream,
    activity: &Activity,
    counted: &(dyn Fn(Direction, u64) + Sync),
) -> io::Result<()> {
    let one_ended = AtomicBool::new(false);
    tokio::try_join!(
        pump(client, backend, activity, Direction::ToBackend, counted, &one_ended),
        pump(backend, client, activity, Direction::ToClient, counted, &one_ended),
    )?;
    Ok(())
}

/// Moves bytes from `from` to `to` until `from` ends, then half-closes `to`, unless the other
/// direction (`one_ended`) ended first: then both sockets are closed next, and the close
/// sends the FIN without a shutdown call of its own (the other side's bytes were all read).
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    direction: Direction,
    counted: &(dyn Fn(Direction, u64) + Sync),
    one_ended: &AtomicBool,
) -> io::Result<()> {
    // Not zeroed: reads fill its spare capacity (zeroing 32 KiB per connection showed).
    let mut buffer = Vec::with_capacity(COPY_BUFFER);
    let mut pipe = None;
    let mut pipe_failed = false;
    loop {
        let (moved, ended) = match &pipe {
            None => {
                let (moved, ended) = read(from, &mut buffer).await?;
                // Bytes followed by the end wait for the FIN (MSG_MORE), so both leave at once.
                let more = if ended { MSG_MORE } else { 0 };
                write_all(to, &buffer, more).await?;
                if buffer.len() == buffer.capacity() && !pipe_failed {
                    match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
                        Ok(fds) => pipe = Some(fds),
                        // Out of descriptors: this connection goes on copying.
                        Err(e) => {
                            tracing::debug!("no pipe for splice ({e}): copying instead");
                            pipe_failed = true;
                        }
                    }
                }
                (moved, ended)
            }
            Some((pipe_out, pipe_in)) => {
                let moved = fill(from, pipe_in).await?;
                drain(pipe_out, to, moved).await?;
                (moved, moved == 0)
            }
        };
        if moved > 0 {
            counted(direction, moved as u64);
            activity.touch();
        }
        if ended {
            if one_ended.swap(true, Ordering::Relaxed) {
                return Ok(());
            }
            // End of stream: pass the FIN on; the other direction may still be sending.
            return match SockRef::from(to).shutdown(Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            };
        }
    }
}

/// Reads what `from` has into `buffer` (emptied first, filled up to its capacity): the count
/// (0 at end of stream) and whether the stream has ended with these bytes. When the peer's
/// end was in before the read (RDHUP) and the read left room, the end is most likely next:
/// one more read into the room confirms it (0) before the bytes are sent, so they can leave
/// with the FIN. Only confirmed: a read also stops short at urgent data, and a reset shows
/// as RDHUP too (that read fails, as the next one would have).
async fn read(from: &TcpStream, buffer: &mut Vec<u8>) -> io::Result<(usize, bool)> {
    buffer.clear();
    loop {
        let ready = from.ready(Interest::READABLE).await?;
        match from.try_read_buf(buffer) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
            Ok(0) => return Ok((0, true)),
            Ok(n) if ready.is_read_closed() && n < buffer.capacity() => {
                return match from.try_read_buf(buffer) {
                    Ok(0) => Ok((n, true)),
                    Ok(more) => Ok((n + more, false)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((n, false)),
                    Err(e) => Err(e),
                };
            }
            Ok(n) => return Ok((n, false)),
        }
    }
}

/// Writes all of `bytes` to `to`, with `flags` (`MSG_MORE` for bytes the FIN follows).
async fn write_all(to: &TcpStream, mut bytes: &[u8], flags: c_int) -> io::Result<()> {
    let flags = flags | MSG_NOSIGNAL;
    while !bytes.is_empty() {
        to.writable().await?;
        let sent =
            to.try_io(Interest::WRITABLE, || SockRef::from(to).send_with_flags(bytes, flags));
        match sent {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Splices what `from` has (up to a pipe's worth) into the pipe; 0 at end of stream.
async fn fill(from: &TcpStream, pipe_in: &OwnedFd) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        from.readable().await?;
        match from.try_io(Interest::READABLE, || {
            splice(from, None, pipe_in, None, PIPE_CHUNK, flags).map_err(io::Error::from)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

/// Splices exactly `len` bytes from the pipe into `to`: the pipe is emptied before the next
/// fill, so a fill never finds it full.
async fn drain(pipe_out: &OwnedFd, to: &TcpStream, mut len: usize) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    while len > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || {
            splice(pipe_out, None, to, None, len, flags).map_err(io::Error::from)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => len -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected pairs: (outside client, proxy's client side), (proxy's backend side,
    /// outside backend).
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        async fn pair() -> (TcpStream, TcpStream) {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address");
            let (a, b) = tokio::join!(TcpStream::connect(address), listener.accept());
            (a.expect("connect"), b.expect("accept").0)
        }
        (pair().await, pair().await)
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_half_close_passes_through() {
        let ((mut client, proxy_client), (proxy_backend, mut backend)) = pairs().await;
        let moved = std::sync::Mutex::new((0u64, 0u64));
        let activity = Activity::new();
        let proxy = async {
            let forwarded = forward(&proxy_client, &proxy_backend, &activity, &|direction, n| {
                let mut moved = moved.lock().expect("lock");
                match direction {
                    Direction::ToBackend => moved.0 += n,
                    Direction::ToClient => moved.1 += n,
                }
            })
            .await;
            // As the L4 path does: the last FIN leaves with the close.
            drop((proxy_client, proxy_backend));
            forwarded
        };
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let ends = async {
            client.write_all(&payload).await.expect("client writes");
            // Half-close: the backend must see the end and may still answer.
            client.shutdown().await.expect("client half-closes");
            let mut received = Vec::new();
            backend.read_to_end(&mut received).await.expect("backend reads");
            assert_eq!(received, payload);
            backend.write_all(b"answer after the client's FIN").await.expect("backend answers");
            backend.shutdown().await.expect("backend closes");
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.expect("client reads");
            assert_eq!(answer, b"answer after the client's FIN");
        };
        let (result, ()) = tokio::join!(proxy, ends);
        result.expect("forwarding ends cleanly");
        assert_eq!(*moved.lock().expect("lock"), (3_000_000, 29));
    }

    /// Segments `stream` has received so far (TCP_INFO).
    #[allow(unsafe_code)]
    fn segments_in(stream: &TcpStream) -> u32 {
        use nix::libc::{IPPROTO_TCP, TCP_INFO, getsockopt, socklen_t, tcp_info};
        use std::os::fd::AsRawFd;
        // SAFETY: all zeroes is a valid tcp_info (integers only).
        let mut info: tcp_info = unsafe { std::mem::zeroed() };
        let mut length = std::mem::size_of::<tcp_info>() as socklen_t;
        // SAFETY: `info` is writable for `length` bytes, the most the kernel writes.
        let done = unsafe {
            getsockopt(
                stream.as_raw_fd(),
                IPPROTO_TCP,
                TCP_INFO,
                (&raw mut info).cast(),
                &mut length,
            )
        };
        assert_eq!(done, 0, "TCP_INFO: {}", io::Error::last_os_error());
        info.tcpi_segs_in
    }

    #[tokio::test]
    async fn the_last_bytes_before_the_end_leave_with_the_fin() {
        let ((mut client, proxy_client), (proxy_backend, mut backend)) = pairs().await;
        // A greeter: its bytes and its FIN are in before the proxy reads.
        backend.write_all(b"hello").await.expect("backend writes");
        backend.shutdown().await.expect("backend closes");
        let ended = async {
            while !proxy_backend.ready(Interest::READABLE).await.expect("ready").is_read_closed() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ended).await.expect("the FIN arrives");
        let before = segments_in(&client);
        let activity = Activity::new();
        let proxy = async {
            let forwarded = forward(&proxy_client, &proxy_backend, &activity, &|_, _| {}).await;
            drop((proxy_client, proxy_backend));
            forwarded
        };
        let ends = async {
            let mut greeting = Vec::new();
            client.read_to_end(&mut greeting).await.expect("client reads");
            assert_eq!(greeting, b"hello");
            // The client sent nothing, so no ACK came either: one segment is bytes and FIN.
            assert_eq!(segments_in(&client) - before, 1, "the bytes and the FIN in one segment");
            client.shutdown().await.expect("client closes");
        };
        let (result, ()) = tokio::join!(proxy, ends);
        result.expect("forwarding ends cleanly");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_for_counts_from_the_last_activity() {
        let activity = Activity::new();
        let started = Instant::now();
        let idle = activity.idle_for(Duration::from_secs(5));
        tokio::pin!(idle);
        tokio::select! {
            _ = &mut idle => panic!("idle before any time passed"),
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        activity.touch();
        idle.await;
        assert_eq!(started.elapsed(), Duration::from_secs(8), "5 s after the touch at 3 s");
    }
}
