//! The node key: the Ed25519 key that seals this node's receipts.
//!
//! ```text
//! <dir>/node.key          the private key, PKCS#8 PEM (`openssl pkey` reads it), mode 0600
//! <dir>/node.key.next     only during a rotation: the key that is about to take over
//! <dir>/keys/<hex>.pub    every public key this node has sealed with: 64 hex characters
//!                         and a newline; <hex> is the key id without "sha256:"
//! ```
//!
//! A key id is `"sha256:"` and the lowercase hex of the first 16 bytes of SHA-256 of
//! the 32 public key bytes (128 bits: collisions by chance are out of reach, and an
//! id is still short enough to compare by eye).
//!
//! A key file that group or others can read is refused rather than used: the key
//! may already be copied, and receipts sealed with it would prove nothing.
//!
//! A rotation happens in two steps so that a crash at any point leaves a chain that
//! verifies: the new key is written to `node.key.next`; the key-rotation receipt is
//! sealed by the old key and made durable; only then is `node.key.next` renamed over
//! `node.key`. [`super::store::Journal::open`] finishes or abandons a rotation a
//! crash interrupted, by looking at whether the rotation receipt made it.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::{identity::keys as pem, state::atomic};

const KEY_FILE: &str = "node.key";
const NEXT_KEY_FILE: &str = "node.key.next";
const PUBLIC_DIR: &str = "keys";

/// Errors of the node key. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: mode {mode:04o} lets group or others read the receipt signing key; it may be copied already. Move it away (agentd then makes a new key) or, if you are sure it was never exposed, `chmod 600` it", .path.display())]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{}: not a regular file; the receipt signing key must be a plain file (mode 0600)", .path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: {why}; restore the key from a backup, or move it away to start a new receipt chain", .path.display())]
    Unreadable { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.to_path_buf(), source }
}

/// The key id of `key`: `"sha256:"` + hex of the first 16 bytes of SHA-256 of its
/// 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    let d = super::encode::sha256(key.as_bytes());
    format!("sha256:{}", hex::encode(&d[..16]))
}

/// Reads a public key the way a verifier may have it: 64 hex characters (what
/// `keys/<hex>.pub` holds), a PEM `PUBLIC KEY`, or an `ssh-ed25519` line.
pub fn parse_public(text: &str) -> Result<VerifyingKey, String> {
    pem::parse_public_text(text)
}

/// The signing key of this node, and where it lives.
pub struct NodeKey {
    signing: SigningKey,
    id: String,
    dir: PathBuf,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half.
        f.debug_struct("NodeKey").field("id", &self.id).field("dir", &self.dir).finish()
    }
}

impl NodeKey {
    /// The key in `dir` (made, with `dir` as 0700, if there is none yet).
    pub fn load_or_create(dir: &Path) -> Result<NodeKey, KeyError> {
        let path = dir.join(KEY_FILE);
        match fs::symlink_metadata(&path) {
            Ok(_) => NodeKey::load(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
                let key = NodeKey { signing: pem::generate(), id: String::new(), dir: dir.to_path_buf() }.with_id();
                key.write_public()?;
                key.write_private(&path)?;
                Ok(key)
            }
            Err(e) => Err(KeyError::Io { path, source: e }),
        }
    }

    /// The key in `dir`; an error if there is none.
    pub fn load(dir: &Path) -> Result<NodeKey, KeyError> {
        let signing = read_private(&dir.join(KEY_FILE))?;
        let key = NodeKey { signing, id: String::new(), dir: dir.to_path_buf() }.with_id();
        // Older layouts, or a copied key: make sure a verifier can find the public half.
        key.write_public()?;
        Ok(key)
    }

    /// A key held in memory only (tests, benchmarks): rotation is not possible.
    pub fn ephemeral(signing: SigningKey) -> NodeKey {
        NodeKey { signing, id: String::new(), dir: PathBuf::new() }.with_id()
    }

    fn with_id(mut self) -> NodeKey {
        self.id = key_id(&self.signing.verifying_key());
        self
    }

    /// [`key_id`] of this key.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public key as 64 lowercase hex characters.
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// The directory the key lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// Signs `msg` (tests and the benchmark's raw signing rate).
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.signing.sign(msg)
    }

    /// The key a crash left half-way through a rotation, if any.
    pub(crate) fn pending_rotation(&self) -> Result<Option<NextKey>, KeyError> {
        let path = self.dir.join(NEXT_KEY_FILE);
        if self.dir.as_os_str().is_empty() || !path.exists() {
            return Ok(None);
        }
        let signing = read_private(&path)?;
        Ok(Some(NextKey { key: NodeKey { signing, id: String::new(), dir: self.dir.clone() }.with_id() }))
    }

    fn write_private(&self, path: &Path) -> Result<(), KeyError> {
        let text = pem::to_pem(&self.signing).map_err(|e| KeyError::Unreadable { path: path.to_path_buf(), why: e.to_string() })?;
        atomic::write_atomic(path, text.as_bytes(), 0o600).map_err(io_err(path))
    }

    fn write_public(&self) -> Result<(), KeyError> {
        if self.dir.as_os_str().is_empty() {
            return Ok(());
        }
        let dir = self.dir.join(PUBLIC_DIR);
        fs::DirBuilder::new().recursive(true).mode(0o755).create(&dir).map_err(io_err(&dir))?;
        let path = public_path(&self.dir, &self.id);
        let line = format!("{}\n", self.public_hex());
        if fs::read_to_string(&path).is_ok_and(|t| t == line) {
            return Ok(());
        }
        atomic::write_atomic(&path, line.as_bytes(), 0o644).map_err(io_err(&path))
    }
}

/// Step one of a rotation of the key in `dir`: a new key, written to
/// `node.key.next` (0600) and its public half to `keys/`. Nothing seals with it
/// until [`NextKey::commit`].
pub(crate) fn prepare_rotation(dir: &Path) -> Result<NextKey, KeyError> {
    if dir.as_os_str().is_empty() {
        return Err(KeyError::Unreadable { path: dir.to_path_buf(), why: "an in-memory key cannot be rotated".into() });
    }
    let key = NodeKey { signing: pem::generate(), id: String::new(), dir: dir.to_path_buf() }.with_id();
    key.write_public()?;
    key.write_private(&dir.join(NEXT_KEY_FILE))?;
    Ok(NextKey { key })
}

/// Where `keys/` keeps the public key with id `key_id` under `dir`.
pub fn public_path(dir: &Path, key_id: &str) -> PathBuf {
    let hex = key_id.strip_prefix("sha256:").unwrap_or(key_id);
    dir.join(PUBLIC_DIR).join(format!("{hex}.pub"))
}

/// Every public key in `dir/keys/`, by key id (files that are not keys are skipped).
pub fn public_keys(dir: &Path) -> Result<Vec<(String, VerifyingKey)>, KeyError> {
    let keys_dir = dir.join(PUBLIC_DIR);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&keys_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(KeyError::Io { path: keys_dir, source: e }),
    };
    for entry in entries {
        let path = entry.map_err(io_err(&keys_dir))?.path();
        if path.extension().is_some_and(|e| e == "pub") {
            if let Ok(k) = fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|t| parse_public(&t)) {
                out.push((key_id(&k), k));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A key that will replace the node key once the key-rotation receipt is durable.
pub(crate) struct NextKey {
    key: NodeKey,
}

impl NextKey {
    pub(crate) fn key_id(&self) -> &str {
        self.key.key_id()
    }

    pub(crate) fn public_hex(&self) -> String {
        self.key.public_hex()
    }

    /// Step two: `node.key.next` becomes `node.key`. Call only once the rotation
    /// receipt is durable.
    pub(crate) fn commit(self) -> Result<NodeKey, KeyError> {
        let (from, to) = (self.key.dir.join(NEXT_KEY_FILE), self.key.dir.join(KEY_FILE));
        fs::rename(&from, &to).map_err(io_err(&to))?;
        fs::File::open(&self.key.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.key.dir))?;
        Ok(self.key)
    }

    /// The rotation did not happen (its receipt never became durable): forget the key.
    pub(crate) fn abandon(self) -> Result<(), KeyError> {
        atomic::remove_durably(&public_path(&self.key.dir, &self.key.id)).map_err(io_err(&self.key.dir))?;
        let path = self.key.dir.join(NEXT_KEY_FILE);
        atomic::remove_durably(&path).map_err(io_err(&path))
    }
}

fn read_private(path: &Path) -> Result<SigningKey, KeyError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    if !meta.file_type().is_file() {
        return Err(KeyError::NotAFile { path: path.to_path_buf() });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed { path: path.to_path_buf(), mode });
    }
    let text = zeroize_string(fs::read_to_string(path).map_err(io_err(path))?);
    pem::from_pem(&text).map_err(|e| KeyError::Unreadable { path: path.to_path_buf(), why: e.to_string() })
}

fn zeroize_string(s: String) -> ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing<String> {
    ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing::new(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn made_once_then_reused_with_mode_0600() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("receipts");
        let k = NodeKey::load_or_create(&dir).unwrap();
        assert_eq!(fs::metadata(dir.join("node.key")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let again = NodeKey::load_or_create(&dir).unwrap();
        assert_eq!(again.key_id(), k.key_id());
        assert_eq!(public_keys(&dir).unwrap(), vec![(k.key_id().to_string(), k.public_key())]);
        let text = fs::read_to_string(public_path(&dir, k.key_id())).unwrap();
        assert_eq!(parse_public(&text), Ok(k.public_key()));
        assert!(!format!("{k:?}").contains("signing"), "Debug never shows the private key");
    }

    #[test]
    fn key_id_is_sha256_prefix_of_public_bytes() {
        let vk = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let full = hex::encode(super::super::encode::sha256(vk.as_bytes()));
        assert_eq!(key_id(&vk), format!("sha256:{}", &full[..32]));
    }

    #[test]
    fn readable_key_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        NodeKey::load_or_create(d.path()).unwrap();
        let path = d.path().join("node.key");
        for mode in [0o640, 0o604, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let e = NodeKey::load_or_create(d.path()).unwrap_err();
            assert!(matches!(e, KeyError::Exposed { mode: m, .. } if m == mode), "{e}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(NodeKey::load(d.path()).is_ok(), "owner-only read is fine");
    }

    #[test]
    fn damaged_or_linked_key_file_is_an_error_not_a_new_key() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("node.key");
        fs::write(&path, "not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(NodeKey::load_or_create(d.path()), Err(KeyError::Unreadable { .. })));
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(matches!(NodeKey::load_or_create(d.path()), Err(KeyError::NotAFile { .. })));
    }

    #[test]
    fn rotation_commits_or_abandons() {
        let d = tempfile::tempdir().unwrap();
        let old = NodeKey::load_or_create(d.path()).unwrap();
        let next = prepare_rotation(d.path()).unwrap();
        let new_id = next.key_id().to_string();
        assert_eq!(NodeKey::load(d.path()).unwrap().key_id(), old.key_id(), "not in force before commit");
        assert_eq!(old.pending_rotation().unwrap().unwrap().key_id(), new_id);
        let new = next.commit().unwrap();
        assert_eq!(NodeKey::load(d.path()).unwrap().key_id(), new_id);
        assert!(old.pending_rotation().unwrap().is_none());
        assert_eq!(public_keys(d.path()).unwrap().len(), 2, "the old public key is kept");

        let abandoned = prepare_rotation(d.path()).unwrap();
        let gone = abandoned.key_id().to_string();
        abandoned.abandon().unwrap();
        assert!(new.pending_rotation().unwrap().is_none());
        assert!(!public_path(d.path(), &gone).exists());
        assert_eq!(NodeKey::load(d.path()).unwrap().key_id(), new_id);
    }
}
