//! Sticky-session cookies: an opaque, signed value naming a pool's backend, so a client keeps
//! its backend while that backend is healthy, and a forged or stale cookie is just ignored.
//!
//! The value is `base64url(HMAC-SHA256(key, pool "|" address)[..16])`: it names the backend
//! without revealing its address, and only the cluster can make one. A request's cookie is
//! matched against the backends that may take traffic. Every node derives the same key from
//! the cluster secret, so a cookie stays valid when the VIP moves to another node.

use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// An HMAC-SHA256 keyed with a key derived from `secret` for one `purpose`: the key never
/// equals a key used for another purpose, and a block-sized key makes keying infallible.
pub fn derived_mac(purpose: &[u8], secret: &[u8]) -> Hmac<Sha256> {
    let mut key = [0u8; 64];
    let derived = Sha256::new().chain_update(purpose).chain_update(secret).finalize();
    key[..32].copy_from_slice(&derived);
    <Hmac<Sha256> as KeyInit>::new(&key.into())
}

/// Bytes of the MAC kept in the cookie: 128 bits, plenty against forgery.
const TAG_BYTES: usize = 16;

/// Signs and checks sticky cookies.
#[derive(Clone)]
pub struct CookieSigner {
    /// Keyed once; cloned per use.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSigner(..)")
    }
}

impl CookieSigner {
    /// A signer keyed with `secret` (any length; the cluster secret on a cluster node).
    pub fn new(secret: &[u8]) -> CookieSigner {
        CookieSigner { mac: derived_mac(b"fulcrum sticky cookie\0", secret) }
    }

    fn tag(&self, pool: &str, address: &str) -> Vec<u8> {
        let mut mac = self.mac.clone();
        mac.update(pool.as_bytes());
        mac.update(b"|");
        mac.update(address.as_bytes());
        mac.finalize().into_bytes()[..TAG_BYTES].to_vec()
    }

    /// The cookie value pinning `pool`'s client to `backend`.
    pub fn sign(&self, pool: &str, backend: SocketAddr) -> String {
        B64.encode(self.tag(pool, &backend.to_string()))
    }

    /// Which of `candidates` a cookie value names, if it is one this cluster signed for
    /// `pool`; each comparison takes constant time.
    pub fn pick(
        &self,
        pool: &str,
        value: &str,
        candidates: impl IntoIterator<Item = SocketAddr>,
    ) -> Option<SocketAddr> {
        let tag = B64.decode(value).ok()?;
        if tag.len() != TAG_BYTES {
            return None;
        }
        candidates.into_iter().find(|candidate| {
            let mut mac = self.mac.clone();
            mac.update(pool.as_bytes());
            mac.update(b"|");
            mac.update(candidate.to_string().as_bytes());
            mac.verify_truncated_left(&tag).is_ok()
        })
    }
}

/// The value of cookie `name` in a request's Cookie headers.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value.trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_cookie_names_its_backend_and_nothing_else_verifies() {
        let signer = CookieSigner::new(b"cluster secret");
        let a: SocketAddr = "198.18.0.21:8080".parse().expect("address");
        let b: SocketAddr = "198.18.0.22:8080".parse().expect("address");
        let value = signer.sign("web", a);
        assert_eq!(signer.pick("web", &value, [b, a]), Some(a));
        assert_eq!(signer.pick("web", &value, [b]), None, "its backend is gone");
        assert_eq!(signer.pick("api", &value, [a, b]), None, "bound to its pool");
        assert_eq!(CookieSigner::new(b"other secret").pick("web", &value, [a, b]), None);
        assert!(
            !value.contains("198") && !value.contains(['=', ';', ',', ' ', '.']),
            "opaque and a valid cookie value: {value}"
        );
        for junk in ["", ".", "x.y", "AAAA", &value[..value.len() - 2]] {
            assert_eq!(signer.pick("web", junk, [a, b]), None, "{junk:?}");
        }
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = http::HeaderMap::new();
        headers.append(http::header::COOKIE, "a=1; pin=abc.def".parse().expect("value"));
        headers.append(http::header::COOKIE, "b=2".parse().expect("value"));
        assert_eq!(cookie(&headers, "pin"), Some("abc.def"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
