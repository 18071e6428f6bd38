//! The certificates ACME deals in, sans IO: a new key and its signing request, the TLS-ALPN-01
//! validation certificate (RFC 8737), the validity of an issued chain, and an issued chain
//! with its key made ready to serve.

use std::sync::Arc;

use fulcrum_model::acme::KeyType;
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use yasna::tags::{TAG_GENERALIZEDTIME, TAG_UTCTIME};

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// rcgen refused (a name it cannot encode, for instance).
    #[error("cannot make the certificate: {0}")]
    Make(#[from] rcgen::Error),
    /// The chain holds no certificate, or one that does not parse.
    #[error("the issued chain cannot be read: {0}")]
    Chain(String),
    /// The key does not fit rustls.
    #[error("the certificate's key cannot be used: {0}")]
    Key(String),
}

/// A fresh private key (PKCS#8) and a signing request for `names`.
pub fn key_and_request(
    key_type: KeyType,
    names: &[String],
) -> Result<(Vec<u8>, Vec<u8>), CertificateError> {
    let algorithm = match key_type {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
    };
    let key = KeyPair::generate_for(algorithm)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    let request = params.serialize_request(&key)?;
    Ok((key.serialize_der(), request.der().to_vec()))
}

/// The self-signed certificate a TLS-ALPN-01 validation must see for `hostname`: the name
/// and the SHA-256 of the key authorization in the critical acmeIdentifier extension.
pub fn tls_alpn_certificate(
    hostname: &str,
    key_authorization: &str,
) -> Result<Arc<CertifiedKey>, CertificateError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![hostname.to_owned()])?;
    params.distinguished_name = DistinguishedName::new();
    let digest = Sha256::digest(key_authorization.as_bytes());
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(&digest)];
    let certificate = params.self_signed(&key)?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| CertificateError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(vec![certificate.der().clone()], signer)))
}

/// An issued chain (PEM, leaf first) and its PKCS#8 key, ready for rustls.
pub fn certified_key(
    chain_pem: &str,
    key_pkcs8: &[u8],
) -> Result<Arc<CertifiedKey>, CertificateError> {
    let chain = chain(chain_pem)?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| CertificateError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| CertificateError::Key(e.to_string()))?;
    Ok(Arc::new(certified))
}

/// The leaf's notBefore and notAfter, in UNIX seconds.
pub fn validity(chain_pem: &str) -> Result<(u64, u64), CertificateError> {
    let chain = chain(chain_pem)?;
    let leaf = chain.first().ok_or_else(|| CertificateError::Chain("no certificate".into()))?;
    leaf_validity(leaf).map_err(|e| CertificateError::Chain(format!("leaf validity: {e}")))
}

fn chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateError::Chain(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertificateError::Chain("no certificate in the PEM".into()));
    }
    Ok(chain)
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... } (RFC 5280).
fn leaf_validity(der: &[u8]) -> Result<(u64, u64), yasna::ASN1Error> {
    yasna::parse_der(der, |reader| {
        reader.read_sequence(|certificate| {
            let validity = certificate.next().read_sequence(|tbs| {
                tbs.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_der()))?;
                for _ in 0..3 {
                    tbs.next().read_der()?; // serial, signature, issuer
                }
                let validity = tbs.next().read_sequence(|v| {
                    let not_before = read_time(v.next())?;
                    let not_after = read_time(v.next())?;
                    Ok((not_before, not_after))
                })?;
                while tbs.read_optional(|r| r.read_der())?.is_some() {}
                Ok(validity)
            })?;
            while certificate.read_optional(|r| r.read_der())?.is_some() {}
            Ok(validity)
        })
    })
}

fn read_time(reader: yasna::BERReader<'_, '_>) -> Result<u64, yasna::ASN1Error> {
    let seconds = match reader.lookahead_tag()? {
        TAG_UTCTIME => reader.read_utctime()?.datetime().unix_timestamp(),
        TAG_GENERALIZEDTIME => reader.read_generalized_time()?.datetime().unix_timestamp(),
        _ => return Err(yasna::ASN1Error::new(yasna::ASN1ErrorKind::Invalid)),
    };
    Ok(u64::try_from(seconds).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_read_from_the_leaf() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["www.example.test".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 12, 1);
        params.not_after = rcgen::date_time_ymd(2051, 3, 1); // GeneralizedTime after 2049
        let leaf = params.self_signed(&key).unwrap();
        let (not_before, not_after) = validity(&leaf.pem()).unwrap();
        assert_eq!(not_before, 1_796_083_200);
        assert_eq!(not_after, 2_561_241_600);
        let served = certified_key(&leaf.pem(), &key.serialize_der()).unwrap();
        assert_eq!(served.cert.len(), 1);
    }

    #[test]
    fn a_chain_that_is_not_pem_or_a_key_that_does_not_fit_is_an_error() {
        assert!(validity("not a certificate").is_err());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = CertificateParams::new(vec!["a.example.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(
            certified_key(&leaf.pem(), &other.serialize_der()),
            Err(CertificateError::Key(_))
        ));
    }

    #[test]
    fn the_tls_alpn_certificate_carries_the_digest_of_the_key_authorization() {
        let served = tls_alpn_certificate("www.example.test", "token.thumbprint").unwrap();
        let der = served.cert[0].as_ref();
        let digest = Sha256::digest(b"token.thumbprint");
        // acmeIdentifier (1.3.6.1.5.5.7.1.31), critical, OCTET STRING holding OCTET STRING.
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        let at = der.windows(oid.len()).position(|w| w == oid).expect("acmeIdentifier present");
        let rest = &der[at + oid.len()..];
        assert_eq!(&rest[..3], &[0x01, 0x01, 0xff], "critical");
        assert_eq!(&rest[3..7], &[0x04, 0x22, 0x04, 0x20]);
        assert_eq!(&rest[7..39], digest.as_slice());
        // The name as a dNSName in subjectAltName ([2] IMPLICIT IA5String).
        let name = b"www.example.test";
        let mut san = vec![0x82, name.len() as u8];
        san.extend_from_slice(name);
        assert!(der.windows(san.len()).any(|w| w == san), "subjectAltName names the host");
    }

    #[test]
    fn a_request_is_made_for_each_key_type() {
        for key_type in [KeyType::EcdsaP256, KeyType::EcdsaP384] {
            let (key, request) = key_and_request(key_type, &["a.example.test".into()]).unwrap();
            assert!(!key.is_empty() && request.starts_with(&[0x30]));
        }
    }
}
