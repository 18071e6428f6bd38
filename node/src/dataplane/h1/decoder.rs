//! A message body's framing decoded, sans IO: `Content-Length` bytes, a response's bytes
//! until the backend closes, or chunked transfer
//! coding (RFC 9112 §7.1) with extensions skipped (their text is not checked beyond having
//! no control bytes) and trailers kept. Sizes, line ends and the trailer section's end must
//! be exactly the grammar, CRLF everywhere: a proxy that guessed could be made to see a
//! different body, or a different next request, than the backend (request smuggling).

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// Hex digits a chunk size may have (a size beyond 2^64 is refused, not wrapped).
const MAX_SIZE_DIGITS: u8 = 16;
/// Trailer fields a chunked body may end with.
const MAX_TRAILERS: usize = 32;

/// What the bytes read so far yield.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// More bytes are needed.
    NeedMore,
    /// The body is complete; bytes left in the buffer belong to the next request.
    End,
}

/// Why a body's framing could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FramingError {
    #[error("invalid chunk size")]
    ChunkSize,
    #[error("a chunk is not followed by CRLF")]
    ChunkEnd,
    #[error("invalid chunk extension")]
    Extension,
    #[error("invalid or oversized trailers")]
    Trailers,
}

/// A body's decoder.
#[derive(Debug)]
pub(crate) enum Decoder {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    Chunked(Chunked),
    /// A response body that ends when the backend closes the connection: the reader ends it.
    UntilClose,
}

impl Decoder {
    /// Takes what it can of the body out of `buf`; `max_trailers` bounds the trailer section.
    pub(crate) fn decode(
        &mut self,
        buf: &mut BytesMut,
        max_trailers: usize,
    ) -> Result<Decoded, FramingError> {
        match self {
            Decoder::Length(0) => Ok(Decoded::End),
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            Decoder::Chunked(chunked) => chunked.decode(buf, max_trailers),
            Decoder::UntilClose if buf.is_empty() => Ok(Decoded::NeedMore),
            Decoder::UntilClose => Ok(Decoded::Data(buf.split().freeze())),
        }
    }

    /// Whether the body has been read to its end.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Decoder::Length(0) | Decoder::Chunked(Chunked { state: State::Done, .. }))
    }

    /// The bytes left, when the framing says.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(left) => Some(*left),
            Decoder::Chunked(_) | Decoder::UntilClose => None,
        }
    }
}

/// Where a chunked body's reading is.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// On a line read byte by byte: a chunk's size line, or the CRLF after its data.
    Line(Line),
    Data(u64),
    Trailers,
    Done,
}

/// The byte-by-byte states of the chunked grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size: a `;` (an extension) or the line's end must follow.
    SizeSpace {
        size: u64,
    },
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    DataCr,
    DataLf,
}

impl Default for State {
    fn default() -> Self {
        State::Line(Line::Size { size: 0, digits: 0 })
    }
}

impl Line {
    /// The state after `byte`.
    fn step(self, byte: u8) -> Result<State, FramingError> {
        let line = match (self, byte) {
            (Line::Size { size, digits }, _) if byte.is_ascii_hexdigit() => {
                if digits == MAX_SIZE_DIGITS {
                    return Err(FramingError::ChunkSize);
                }
                let digit = (byte as char).to_digit(16).unwrap_or(0) as u64;
                Line::Size { size: size << 4 | digit, digits: digits + 1 }
            }
            (Line::Size { size, digits: 1.. }, b' ' | b'\t') => Line::SizeSpace { size },
            (Line::Size { size, digits: 1.. } | Line::SizeSpace { size }, b';') => {
                Line::Extension { size }
            }
            (Line::SizeSpace { size }, b' ' | b'\t') => Line::SizeSpace { size },
            (Line::SizeSpace { size }, b'\r') => Line::SizeLf { size },
            (Line::SizeSpace { .. }, _) => return Err(FramingError::Extension),
            (Line::Size { size, digits: 1.. }, b'\r') => Line::SizeLf { size },
            (Line::Size { .. }, _) => return Err(FramingError::ChunkSize),
            (Line::Extension { size }, b'\r') => Line::SizeLf { size },
            (Line::Extension { .. }, b'\n') => return Err(FramingError::Extension),
            (Line::Extension { size }, _) if byte == b'\t' || !byte.is_ascii_control() => {
                Line::Extension { size }
            }
            (Line::Extension { .. }, _) => return Err(FramingError::Extension),
            (Line::SizeLf { size: 0 }, b'\n') => return Ok(State::Trailers),
            (Line::SizeLf { size }, b'\n') => return Ok(State::Data(size)),
            (Line::SizeLf { .. }, _) => return Err(FramingError::ChunkSize),
            (Line::DataCr, b'\r') => Line::DataLf,
            (Line::DataLf, b'\n') => return Ok(State::default()),
            (Line::DataCr | Line::DataLf, _) => return Err(FramingError::ChunkEnd),
        };
        Ok(State::Line(line))
    }
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut, max_trailers: usize) -> Result<Decoded, FramingError> {
        loop {
            match self.state {
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    self.state = if take as u64 == left {
                        State::Line(Line::DataCr)
                    } else {
                        State::Data(left - take as u64)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::Trailers => return self.trailers(buf, max_trailers),
                State::Done => return Ok(Decoded::End),
                State::Line(line) => {
                    let Some(&byte) = buf.first() else { return Ok(Decoded::NeedMore) };
                    let _ = buf.split_to(1);
                    self.state = line.step(byte)?;
                }
            }
        }
    }

    /// The trailer section after the last chunk: empty, or fields ended by an empty line,
    /// every line ended by CRLF (a bare LF could end the section early for one reader and
    /// not another). Only the section's own bytes are taken from `buf`.
    fn trailers(
        &mut self,
        buf: &mut BytesMut,
        max_trailers: usize,
    ) -> Result<Decoded, FramingError> {
        if buf.starts_with(b"\r\n") {
            let _ = buf.split_to(2);
            self.state = State::Done;
            return Ok(Decoded::End);
        }
        let window = &buf[..buf.len().min(max_trailers)];
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
        let (used, parsed) = match httparse::parse_headers(window, &mut fields) {
            Ok(httparse::Status::Complete((used, parsed))) => (used, parsed),
            Ok(httparse::Status::Partial) if buf.len() < max_trailers => {
                return Ok(Decoded::NeedMore);
            }
            _ => return Err(FramingError::Trailers),
        };
        let bare_lf = window[..used]
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && (i == 0 || window[i - 1] != b'\r'));
        if bare_lf {
            return Err(FramingError::Trailers);
        }
        let mut trailers = HeaderMap::with_capacity(parsed.len());
        for field in parsed.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| FramingError::Trailers)?;
            let value = HeaderValue::from_bytes(field.value).map_err(|_| FramingError::Trailers)?;
            trailers.append(name, value);
        }
        let _ = buf.split_to(used);
        self.state = State::Done;
        Ok(Decoded::Trailers(trailers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body read whole: its bytes, its trailers and the bytes after it.
    type Read = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Feeds `input` in pieces of `step` bytes.
    fn decode_all(input: &[u8], step: usize) -> Result<Read, FramingError> {
        let mut decoder = Decoder::Chunked(Chunked::default());
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let (mut body, mut trailers) = (Vec::new(), None);
        for _ in 0..10_000 {
            match decoder.decode(&mut buf, 1024)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Trailers(fields) => trailers = Some(fields),
                Decoded::End => return Ok((body, trailers, buf.to_vec())),
                Decoded::NeedMore if fed < input.len() => {
                    let next = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
                Decoded::NeedMore => {
                    panic!("ran out of input: {:?}", String::from_utf8_lossy(input))
                }
            }
        }
        panic!("no end");
    }

    #[test]
    fn chunks_are_joined_whatever_the_reads_and_the_next_request_stays() {
        let input = b"5\r\nhello\r\na;name=\"v\"\r\n, world!!!\r\n0\r\n\r\nGET /next";
        for step in [1, 2, 7, input.len()] {
            let (body, trailers, rest) = decode_all(input, step).expect("valid");
            assert_eq!(body, b"hello, world!!!");
            assert!(trailers.is_none());
            assert!(b"GET /next".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    #[test]
    fn trailers_are_kept() {
        let input = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-b: 2\r\n\r\n";
        for step in [1, 5, input.len()] {
            let (body, trailers, _) = decode_all(input, step).expect("valid");
            assert_eq!(body, b"abc");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers["grpc-status"], "0");
            assert_eq!(trailers["x-b"], "2");
        }
    }

    #[test]
    fn anything_outside_the_grammar_is_refused() {
        for (input, error) in [
            (&b"zz\r\nhello\r\n0\r\n\r\n"[..], FramingError::ChunkSize),
            (b"\r\n", FramingError::ChunkSize),
            (b"5\nhello\r\n0\r\n\r\n", FramingError::ChunkSize),
            (b"5\r\nhelloX\r\n0\r\n\r\n", FramingError::ChunkEnd),
            (b"5;a\nb\r\nhello\r\n", FramingError::Extension),
            (b"11111111111111111\r\n", FramingError::ChunkSize),
            (b"0\r\nbad header\r\n\r\n", FramingError::Trailers),
            (b"5 junk\r\nhello\r\n0\r\n\r\n", FramingError::Extension),
            (b"0\r\nx: y\n\r\n", FramingError::Trailers),
        ] {
            assert_eq!(
                decode_all(input, 1).unwrap_err(),
                error,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let endless = [b"0\r\nx: ".as_slice(), &[b'a'; 2000]].concat();
        let mut decoder = Decoder::Chunked(Chunked::default());
        let mut buf = BytesMut::from(&endless[..]);
        assert_eq!(decoder.decode(&mut buf, 1024), Err(FramingError::Trailers));
    }

    #[test]
    fn a_bare_lf_cannot_end_the_trailers_and_swallow_the_next_request() {
        let mut decoder = Decoder::Chunked(Chunked::default());
        let mut buf = BytesMut::from("0\r\n\nGET /x HTTP/1.1\r\nhost: a\r\n\r\n");
        assert_eq!(decoder.decode(&mut buf, 1024), Err(FramingError::Trailers));
        let (body, _, rest) =
            decode_all(b"1 ; a=b\r\nx\r\n0\r\nx-t: 1\r\n\r\nGET /next", 3).expect("valid");
        assert_eq!(body, b"x");
        assert!(b"GET /next".starts_with(&rest), "{rest:?}");
    }

    /// Mutations of a valid chunked body, fed in random pieces: decoding ends, asks for more
    /// or refuses, and never panics or loops.
    #[test]
    fn mangled_chunked_bodies_never_panic() {
        let valid = b"5;a=b\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\n\r\nGET";
        let alphabet = b"\r\n:; 0123456789aAfFgZ\t\x00\xff";
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let input = super::super::mangled(valid, alphabet, &mut rng);
            let mut decoder = Decoder::Chunked(Chunked::default());
            let mut buf = BytesMut::new();
            let mut fed = 0;
            for _ in 0..1_000 {
                match decoder.decode(&mut buf, 64) {
                    Ok(Decoded::NeedMore) if fed < input.len() => {
                        let next = (fed + rng.usize(1..8)).min(input.len());
                        buf.extend_from_slice(&input[fed..next]);
                        fed = next;
                    }
                    Ok(Decoded::Data(_) | Decoded::Trailers(_)) => {}
                    Ok(Decoded::NeedMore | Decoded::End) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn a_length_body_ends_at_its_length() {
        let mut decoder = Decoder::Length(5);
        let mut buf = BytesMut::from("hel");
        assert_eq!(decoder.decode(&mut buf, 0), Ok(Decoded::Data(Bytes::from("hel"))));
        assert_eq!(decoder.decode(&mut buf, 0), Ok(Decoded::NeedMore));
        assert_eq!(decoder.remaining(), Some(2));
        buf.extend_from_slice(b"loGET");
        assert_eq!(decoder.decode(&mut buf, 0), Ok(Decoded::Data(Bytes::from("lo"))));
        assert!(decoder.is_done());
        assert_eq!(decoder.decode(&mut buf, 0), Ok(Decoded::End));
        assert_eq!(&buf[..], b"GET");
    }
}
