//! An identity's Ed25519 key pair: generated from the OS RNG, stored as PKCS#8 PEM
//! (readable by `openssl pkey`), named by a short fingerprint.

use ed25519_dalek::{
    pkcs8::{
        spki::der::{pem::LineEnding, zeroize::Zeroizing},
        DecodePrivateKey as _, EncodePrivateKey as _,
    },
    SigningKey, VerifyingKey,
};
use sha2::{Digest as _, Sha256};

/// Errors encoding or decoding a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("encoding the private key as PKCS#8: {0}")]
    Encode(String),
    #[error("not an Ed25519 PKCS#8 PEM private key: {0}")]
    Decode(String),
    #[error("public key {0:?} is not 64 hex characters")]
    PublicKey(String),
}

/// A fresh key pair from the operating system's RNG.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// The private key as PKCS#8 PEM (zeroed when dropped).
pub fn to_pem(key: &SigningKey) -> Result<Zeroizing<String>, KeyError> {
    key.to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))
}

/// Reads a key written by [`to_pem`].
pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Decode(e.to_string()))
}

/// Lowercase hex of the 32 public key bytes.
pub fn public_hex(key: &VerifyingKey) -> String {
    hex::encode(key.to_bytes())
}

/// Parses [`public_hex`] output.
pub fn parse_public_hex(s: &str) -> Result<VerifyingKey, KeyError> {
    let bytes: [u8; 32] = hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError::PublicKey(s.to_string()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::PublicKey(s.to_string()))
}

/// The key's fingerprint: the first 16 hex characters of SHA-256 of the public key
/// bytes. Short enough to read aloud, long enough (64 bits) not to collide by chance.
pub fn fingerprint(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.to_bytes());
    hex::encode(&digest[..8])
}

/// [`fingerprint`] of a hex public key; empty when the hex is not a key.
pub fn fingerprint_hex(public_key_hex: &str) -> String {
    parse_public_hex(public_key_hex).map(|k| fingerprint(&k)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, Verifier as _};

    #[test]
    fn pem_round_trip_keeps_the_key() {
        let k = generate();
        let pem = to_pem(&k).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{}", &*pem);
        let back = from_pem(&pem).unwrap();
        assert_eq!(back.to_bytes(), k.to_bytes());
        let sig = back.sign(b"receipt");
        assert!(k.verifying_key().verify(b"receipt", &sig).is_ok());
        assert!(from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }

    #[test]
    fn fingerprint_is_16_hex_of_sha256() {
        let k = SigningKey::from_bytes(&[7u8; 32]);
        let vk = k.verifying_key();
        let expect = hex::encode(Sha256::digest(vk.to_bytes()));
        assert_eq!(fingerprint(&vk), expect[..16]);
        assert_eq!(fingerprint_hex(&public_hex(&vk)), expect[..16]);
        assert_eq!(parse_public_hex(&public_hex(&vk)).unwrap(), vk);
        assert_eq!(fingerprint_hex("zz"), "");
    }
}
