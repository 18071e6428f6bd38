//! A request path put in normal form before it is routed or rate limited, so `//api`,
//! `/%61pi` and `/x/../api` cannot slip past a route written for `/api` (RFC 3986 §6.2.2,
//! as Envoy's `normalize_path` and `merge_slashes` do): percent-encoded unreserved characters
//! decoded, other escapes in upper-case hex, repeated slashes merged, `.` and `..` segments
//! removed (never above the root). What cannot be normalised without guessing is refused: an
//! encoded `/` or `\` (a backend may or may not decode it into a separator), an encoded NUL,
//! a malformed escape, or a raw backslash.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    #[error("a malformed percent escape")]
    MalformedEscape,
    /// `%2F`, `%5C` or `%00`.
    #[error("an encoded slash, backslash or NUL")]
    EncodedSeparator,
    /// A raw `\`.
    #[error("a backslash")]
    Backslash,
}

/// The normal form of `path` (the part before any `?`), borrowed when it already is.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        // `*` (OPTIONS) and anything not origin-form is left to the router as is.
        return Ok(Cow::Borrowed(path));
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if !needs_work(path) {
        return Ok(Cow::Borrowed(path));
    }
    let normal = remove_dot_segments(&decode_unreserved(path)?);
    Ok(if normal == path { Cow::Borrowed(path) } else { Cow::Owned(normal) })
}

/// Whether anything could change: an escape, a doubled slash or a dot segment.
fn needs_work(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.contains(&b'%')
        || bytes.windows(2).any(|w| w == b"//")
        || path.split('/').any(|segment| segment == "." || segment == "..")
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escapes of unreserved characters; keeps the others, in upper case.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            let next = bytes[i..].iter().position(|&b| b == b'%').map_or(bytes.len(), |p| i + p);
            out.push_str(&path[i..next]);
            i = next;
            continue;
        }
        let (Some(high), Some(low)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::MalformedEscape);
        };
        let value = high << 4 | low;
        match value {
            b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
            _ if is_unreserved(value) => out.push(char::from(value)),
            _ => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(high)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(low)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 over segments, with empty segments (repeated slashes) merged; a trailing
/// slash (or a final `.`/`..`) keeps the path a directory.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut directory = false;
    for (index, segment) in segments.iter().enumerate() {
        match *segment {
            "" | "." => directory = index == last,
            ".." => {
                kept.pop();
                directory = index == last;
            }
            segment => {
                kept.push(segment);
                directory = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if directory || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> String {
        normalize(path).expect("normalises").into_owned()
    }

    #[test]
    fn a_path_in_normal_form_is_borrowed_unchanged() {
        for path in ["/", "/api", "/api/", "/a/b.c/d", "/%20x", "*"] {
            assert!(matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path), "{path}");
        }
    }

    #[test]
    fn slashes_dots_and_unreserved_escapes_are_normalised() {
        let cases = [
            ("//api", "/api"),
            ("/api//users///7", "/api/users/7"),
            ("/%61pi", "/api"),
            ("/%2e%2e/api", "/api"),
            ("/x/../api", "/api"),
            ("/x/./y/../../api/", "/api/"),
            ("/../../..", "/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/%7euser", "/~user"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
        ];
        for (path, want) in cases {
            assert_eq!(normal(path), want, "{path}");
        }
    }

    #[test]
    fn what_cannot_be_normalised_is_refused() {
        let cases = [
            ("/api%2Fadmin", PathError::EncodedSeparator),
            ("/api%2fadmin", PathError::EncodedSeparator),
            ("/a%5Cb", PathError::EncodedSeparator),
            ("/a%00", PathError::EncodedSeparator),
            ("/a%", PathError::MalformedEscape),
            ("/a%4", PathError::MalformedEscape),
            ("/a%zz", PathError::MalformedEscape),
            ("/a\\..\\admin", PathError::Backslash),
        ];
        for (path, want) in cases {
            assert_eq!(normalize(path), Err(want), "{path}");
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for path in ["//a/./b/../%63/", "/%41%2e/x", "/a/b/c/../../d//"] {
            let once = normal(path);
            assert_eq!(normal(&once), once, "{path}");
        }
    }
}
