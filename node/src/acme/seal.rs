//! Sealing private keys before they enter the replicated store: ChaCha20-Poly1305 under a key
//! derived (HKDF-SHA256) from a secret every node has, bound to where the blob belongs (its
//! associated data), so a blob copied to another place does not open.
//!
//! A blob is `version (1) | key id (8) | nonce (12) | ciphertext and tag`. The key id names
//! the secret it was sealed under, so a node given the previous secret too can still open
//! what was sealed before a rotation.

use fulcrum_model::acme::Sealed;
use ring::aead::{CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 8;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// Why a sealed blob could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The blob is too short or of another version.
    #[error("sealed key is malformed")]
    Malformed,
    /// Sealed under a secret this node does not have.
    #[error(
        "sealed key {0} was sealed under a secret this node does not have (set the cluster's ACME seal key file on every node, with the previous one while rotating)"
    )]
    UnknownKey(String),
    /// The tag did not verify: damaged, or moved from where it was sealed.
    #[error("sealed key does not open: damaged, or not sealed for this place")]
    Damaged,
    /// The system's random source failed.
    #[error("no randomness for a nonce")]
    Random,
}

/// One secret's derived key and its id.
struct SealKey {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

impl SealKey {
    fn derive(secret: &[u8]) -> SealKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"fulcrum acme seal v1").extract(secret);
        // Both lengths are ring's own constants, well within HKDF's limit of 255 blocks, so
        // neither expansion nor the key can fail.
        let okm = |info: &[u8], out: &mut [u8]| {
            prk.expand(&[info], Length(out.len()))
                .and_then(|okm| okm.fill(out))
                .unwrap_or_else(|_| unreachable!("HKDF-SHA256 yields {} bytes", out.len()))
        };
        let mut key = [0u8; 32];
        let mut id = [0u8; KEY_ID_LEN];
        okm(b"key", &mut key);
        okm(b"key id", &mut id);
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key)
            .unwrap_or_else(|_| unreachable!("a 32-byte key fits ChaCha20-Poly1305"));
        SealKey { id, key: LessSafeKey::new(unbound) }
    }
}

/// An HKDF output length.
struct Length(usize);

impl hkdf::KeyType for Length {
    fn len(&self) -> usize {
        self.0
    }
}

/// Seals with the current secret; opens with it or a previous one.
pub struct Sealer {
    current: SealKey,
    previous: Vec<SealKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("key_id", &hex(&self.current.id)).finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer for `current`, still opening what `previous` sealed.
    pub fn new(current: &[u8], previous: &[Vec<u8>]) -> Sealer {
        Sealer {
            current: SealKey::derive(current),
            previous: previous.iter().map(|s| SealKey::derive(s)).collect(),
        }
    }

    /// Seals `plain` for `place` (what the blob is, e.g. `account https://…`).
    pub fn seal(&self, plain: &[u8], place: &str) -> Result<Sealed, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + CHACHA20_POLY1305.tag_len());
        out.push(VERSION);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(place.as_bytes()),
                &mut body,
            )
            .map_err(|_| SealError::Damaged)?;
        out.extend_from_slice(&body);
        Ok(Sealed(out))
    }

    /// Opens what [`Sealer::seal`] made for the same `place`.
    pub fn open(&self, sealed: &Sealed, place: &str) -> Result<Vec<u8>, SealError> {
        let bytes = &sealed.0;
        if bytes.len() < HEADER_LEN + CHACHA20_POLY1305.tag_len() || bytes[0] != VERSION {
            return Err(SealError::Malformed);
        }
        let id = &bytes[1..1 + KEY_ID_LEN];
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(hex(id)))?;
        let nonce = Nonce::try_assume_unique_for_key(&bytes[1 + KEY_ID_LEN..HEADER_LEN])
            .map_err(|_| SealError::Malformed)?;
        let mut body = bytes[HEADER_LEN..].to_vec();
        let plain = key
            .key
            .open_in_place(nonce, ring::aead::Aad::from(place.as_bytes()), &mut body)
            .map_err(|_| SealError::Damaged)?;
        Ok(plain.to_vec())
    }

    /// Whether `sealed` was sealed under the current secret or a previous one given.
    pub fn knows(&self, sealed: &Sealed) -> bool {
        let id = sealed.0.get(1..1 + KEY_ID_LEN);
        std::iter::once(&self.current).chain(&self.previous).any(|k| Some(&k.id[..]) == id)
    }

    /// Whether `sealed` was sealed under the current secret (else it is due for resealing).
    pub fn is_current(&self, sealed: &Sealed) -> bool {
        sealed.0.get(1..1 + KEY_ID_LEN) == Some(&self.current.id[..])
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_in_its_place_and_under_its_secret() {
        let sealer = Sealer::new(b"cluster secret of enough length", &[]);
        let sealed = sealer.seal(b"private key", "certificate web").unwrap();
        assert_eq!(sealer.open(&sealed, "certificate web").unwrap(), b"private key");
        assert!(!sealed.0.windows(11).any(|w| w == b"private key"), "stored in clear");
        assert!(matches!(sealer.open(&sealed, "certificate api"), Err(SealError::Damaged)));
        let other = Sealer::new(b"another secret of enough length", &[]);
        assert!(matches!(other.open(&sealed, "certificate web"), Err(SealError::UnknownKey(_))));
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let sealer = Sealer::new(b"cluster secret of enough length", &[]);
        let sealed = sealer.seal(b"key", "place").unwrap();
        for bit in 0..sealed.0.len() * 8 {
            let mut damaged = sealed.clone();
            damaged.0[bit / 8] ^= 1 << (bit % 8);
            assert!(sealer.open(&damaged, "place").is_err(), "bit {bit}");
        }
        assert!(matches!(sealer.open(&Sealed(vec![1, 2, 3]), "place"), Err(SealError::Malformed)));
    }

    #[test]
    fn after_a_rotation_the_previous_secret_still_opens_and_new_blobs_use_the_new_one() {
        let old = Sealer::new(b"old secret of enough length....", &[]);
        let before = old.seal(b"key", "place").unwrap();
        let rotated = Sealer::new(
            b"new secret of enough length....",
            &[b"old secret of enough length....".to_vec()],
        );
        assert_eq!(rotated.open(&before, "place").unwrap(), b"key");
        assert!(!rotated.is_current(&before) && rotated.knows(&before));
        assert!(!Sealer::new(b"a third secret of enough length", &[]).knows(&before));
        let after = rotated.seal(b"key", "place").unwrap();
        assert!(rotated.is_current(&after));
        assert!(matches!(old.open(&after, "place"), Err(SealError::UnknownKey(_))));
    }

    #[test]
    fn two_seals_of_the_same_key_differ() {
        let sealer = Sealer::new(b"cluster secret of enough length", &[]);
        assert_ne!(sealer.seal(b"key", "p").unwrap(), sealer.seal(b"key", "p").unwrap());
    }
}
