//! An identity's Ed25519 key pair: generated from the OS RNG, stored as PKCS#8 PEM
//! (readable by `openssl pkey`), named by a short fingerprint.

use ed25519_dalek::{
    pkcs8::{
        spki::der::{pem::LineEnding, zeroize::Zeroizing},
        DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _,
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

/// Reads a public key the way people have them: 64 hex characters (as agentd
/// prints them), a PEM `PUBLIC KEY` (SubjectPublicKeyInfo, as `openssl pkey -pubout`
/// writes), or an OpenSSH `ssh-ed25519 AAAA... [comment]` line.
pub fn parse_public_text(text: &str) -> Result<VerifyingKey, String> {
    let t = text.trim();
    if t.starts_with("-----BEGIN PUBLIC KEY-----") {
        return VerifyingKey::from_public_key_pem(t).map_err(|e| format!("not an Ed25519 PEM public key: {e}"));
    }
    if t.starts_with("-----BEGIN") {
        return Err("this PEM block is not a PUBLIC KEY (give the public half, e.g. `openssl pkey -in KEY -pubout`)".into());
    }
    if let Some(rest) = t.strip_prefix("ssh-ed25519 ") {
        return parse_openssh(rest.split_whitespace().next().unwrap_or(""));
    }
    if t.starts_with("ssh-") || t.starts_with("ecdsa-") {
        return Err("only ssh-ed25519 keys can be agent identities".into());
    }
    parse_public_hex(t).map_err(|_| {
        "not a public key: expected 64 hex characters, a PEM PUBLIC KEY or an `ssh-ed25519 AAAA...` line".to_string()
    })
}

/// The base64 blob of an OpenSSH ed25519 public key: string "ssh-ed25519", then
/// string KEY (32 bytes), each a big-endian u32 length and the bytes.
fn parse_openssh(b64: &str) -> Result<VerifyingKey, String> {
    use base64::Engine as _;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the ssh-ed25519 key is not base64: {e}"))?;
    let mut rest = blob.as_slice();
    let mut field = || -> Option<&[u8]> {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let (f, tail) = (tail.get(..len)?, tail.get(len..)?);
        rest = tail;
        Some(f)
    };
    let bad = || "malformed ssh-ed25519 key".to_string();
    if field().ok_or_else(bad)? != b"ssh-ed25519" {
        return Err(bad());
    }
    let key: [u8; 32] = field().ok_or_else(bad)?.try_into().map_err(|_| bad())?;
    if !rest.is_empty() {
        return Err(bad());
    }
    VerifyingKey::from_bytes(&key).map_err(|_| "the ssh-ed25519 key is not a valid Ed25519 point".to_string())
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

    #[test]
    fn public_keys_in_every_usual_form() {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let vk = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        assert_eq!(parse_public_text(&format!("{}\n", public_hex(&vk))), Ok(vk));
        let pem = vk.to_public_key_pem(LineEnding::LF).unwrap();
        assert_eq!(parse_public_text(&pem), Ok(vk));
        // What `ssh-keygen -t ed25519` writes, built by hand from the wire format.
        let mut blob = Vec::new();
        for f in [&b"ssh-ed25519"[..], &vk.to_bytes()[..]] {
            blob.extend_from_slice(&(f.len() as u32).to_be_bytes());
            blob.extend_from_slice(f);
        }
        use base64::Engine as _;
        let line = format!("ssh-ed25519 {} alice@laptop\n", base64::engine::general_purpose::STANDARD.encode(&blob));
        assert_eq!(parse_public_text(&line), Ok(vk));
        let mut long = blob.clone();
        long.push(0);
        let line = format!("ssh-ed25519 {}", base64::engine::general_purpose::STANDARD.encode(&long));
        assert!(parse_public_text(&line).is_err());
        let private = to_pem(&generate()).unwrap();
        assert!(parse_public_text(&private).unwrap_err().contains("not a PUBLIC KEY"));
        assert!(parse_public_text("ssh-rsa AAAAB3Nza").unwrap_err().contains("only ssh-ed25519"));
        assert!(parse_public_text("hello").is_err());
    }
}
