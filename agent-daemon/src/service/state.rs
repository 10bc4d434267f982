//! What agentd remembers across restarts: policies (their exact text), identities
//! (with their Ed25519 keys) and bindings. One JSON document written atomically
//! (write, fsync, rename, fsync the directory); private keys in their own 0600
//! files. The kernel's maps are rebuilt from this on every start.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a state file this agentd understands: {source} (move it away to start afresh)")]
    Corrupt { path: String, source: serde_json::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.display().to_string(), source }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub policies: BTreeMap<String, PolicyRecord>,
    pub identities: BTreeMap<String, IdentityRecord>,
    /// Keyed by the cgroup's absolute path.
    pub bindings: BTreeMap<String, BindingRecord>,
    /// Identity ids are never reused, so old events stay unambiguous.
    pub next_identity_id: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub yaml: String,
    pub file_name: String,
    pub version: u32,
    pub hash: String,
    pub applied_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub id: u32,
    pub policy: String,
    pub owner: String,
    pub public_key: String,
    pub created_at: String,
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BindingRecord {
    pub cgroup_id: u64,
    pub identity: String,
    pub bound_at: String,
}

/// The state directory.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating, mode 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let keys = dir.join("keys");
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&keys).map_err(io(&keys))?;
        Ok(Store { dir: dir.to_path_buf() })
    }

    fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn load(&self) -> Result<State, StateError> {
        let path = self.file();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StateError::Corrupt { path: path.display().to_string(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State { next_identity_id: 1, ..State::default() }),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Replaces the state atomically: a crash leaves the old or the new, never a mix.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.file();
        let tmp = self.dir.join("state.json.tmp");
        let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        write_synced(&tmp, &bytes, 0o600)?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))
    }

    /// Makes and stores (0600) an Ed25519 key pair for `name`; returns the public key hex.
    pub fn new_key(&self, name: &str) -> Result<String, StateError> {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let path = self.dir.join("keys").join(format!("{name}.key"));
        write_synced(&path, &key.to_bytes(), 0o600)?;
        Ok(hex::encode(key.verifying_key().to_bytes()))
    }

    pub fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{name}.key"))
    }
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let mut f = fs::OpenOptions::new().create(true).truncate(true).write(true).mode(mode).open(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// First 16 hex characters of the SHA-256 of the public key bytes.
pub fn fingerprint(public_key_hex: &str) -> String {
    let bytes = hex::decode(public_key_hex).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))[..16].to_string()
}

pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn round_trip_and_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let mut st = store.load().unwrap();
        assert_eq!(st.next_identity_id, 1);
        let pk = store.new_key("coder").unwrap();
        assert_eq!(pk.len(), 64);
        assert_eq!(fs::metadata(store.key_path("coder")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.path().join("s")).unwrap().mode() & 0o777, 0o700);
        st.identities.insert(
            "coder".into(),
            IdentityRecord { id: 1, policy: "p".into(), owner: "alice".into(), public_key: pk.clone(), created_at: now(), revoked: false },
        );
        st.next_identity_id = 2;
        store.save(&st).unwrap();
        let back = store.load().unwrap();
        assert_eq!(back.identities["coder"].public_key, pk);
        assert_eq!(back.next_identity_id, 2);
        assert_eq!(fingerprint(&pk).len(), 16);
    }

    #[test]
    fn corrupt_state_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(dir.path().join("state.json"), "{nope").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("move it away"), "{e}");
    }
}
