//! What agentd remembers across restarts, in the state directory (default
//! `/var/lib/agentd`, mode 0700). The kernel's maps are rebuilt from it on every
//! start, so it is the truth about what should be enforced.
//!
//! ```text
//! meta.json                 {"format": 1, "next_identity_id": N}
//! policies/<name>.yaml      the policy exactly as applied
//! policies/<name>.json      {"version", "hash", "applied_at", "file_name"}
//! identities/<name>.json    name, id, policy, owner, created_at, public_key, revoked, expires
//! keys/<name>.key           the identity's Ed25519 private key, PKCS#8 PEM (0600; dir 0700)
//! bindings.json             [{"cgroup_path", "cgroup_id", "identity", "bound_at"}]
//! ```
//!
//! Every file is replaced atomically (write, fsync, rename, fsync the directory).
//! Files are read strictly: one written by another version of agentd, or damaged,
//! is an error that names the file; agentd never guesses what should be enforced.
#![forbid(unsafe_code)]

pub mod atomic;

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use ed25519_dalek::SigningKey;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    identity::{self, keys, IdentityRecord},
    policy::{compiled::CompiledPolicy, Policy},
};
use atomic::write_atomic;

/// The layout version this agentd reads and writes (`meta.json`'s `format`).
pub const FORMAT: u32 = 1;

const META: &str = "meta.json";
const BINDINGS: &str = "bindings.json";
const POLICIES: &str = "policies";
const IDENTITIES: &str = "identities";
const KEYS: &str = "keys";
/// The single-file state of agentd builds before this layout.
const LEGACY: &str = "state.json";

/// Errors of the state directory. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a state file this agentd can read: {why} (restore it from a backup, or move it away to drop what it held; agentd will not guess what to enforce)", .path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("{}: written by another version of agentd (state format {found}; this agentd reads format {FORMAT}); run that version, or move the state directory away to start afresh", .path.display())]
    OtherVersion { path: PathBuf, found: u32 },
    #[error("{}: state of an earlier agentd build (a single state.json); move it away to start afresh, then re-apply policies and re-create identities", .path.display())]
    Legacy { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> StateError {
    StateError::Corrupt { path: path.to_path_buf(), why: why.to_string() }
}

/// Metadata of an applied policy (`policies/<name>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyMeta {
    /// 1 on the first apply, +1 on every later one.
    pub version: u32,
    /// Hex SHA-256 of the YAML bytes.
    pub hash: String,
    /// RFC 3339.
    pub applied_at: String,
    /// The file name given at apply time, for error locations.
    pub file_name: String,
}

/// An applied policy: its exact text and metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRecord {
    pub yaml: String,
    pub meta: PolicyMeta,
}

/// A cgroup bound to an identity (one entry of `bindings.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingRecord {
    /// Absolute path of the cgroup2 directory.
    pub cgroup_path: String,
    /// Its inode number when it was bound.
    pub cgroup_id: u64,
    pub identity: String,
    /// RFC 3339.
    pub bound_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    format: u32,
    next_identity_id: u32,
}

/// Everything in the state directory, in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub policies: BTreeMap<String, PolicyRecord>,
    pub identities: BTreeMap<String, IdentityRecord>,
    /// Keyed by cgroup path.
    pub bindings: BTreeMap<String, BindingRecord>,
    /// Every id below this has been handed out once.
    pub next_identity_id: u32,
}

impl State {
    pub fn identity_by_id(&self, id: u32) -> Option<&IdentityRecord> {
        self.identities.values().find(|i| i.id == id)
    }

    /// Paths of the cgroups bound to identity `name`.
    pub fn bound_cgroups(&self, name: &str) -> Vec<String> {
        self.bindings.values().filter(|b| b.identity == name).map(|b| b.cgroup_path.clone()).collect()
    }

    /// Names of the identities running under policy `name`.
    pub fn identities_using(&self, policy: &str) -> Vec<String> {
        self.identities.values().filter(|i| i.policy == policy).map(|i| i.name.clone()).collect()
    }
}

/// Hex SHA-256 of `bytes` (a policy's hash).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// RFC 3339 (UTC, seconds) for `t`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parses and compiles a policy, its built-in unix rules protecting what
/// `builtins` names (agentd's socket); the error text has every problem, one per
/// line with file:line:column. The one place the daemon calls the policy compiler.
pub fn compile_policy(
    file_name: &str,
    text: &str,
    builtins: &crate::policy::Builtins,
) -> Result<(Policy, CompiledPolicy), String> {
    let policy = crate::policy::parse_with(file_name, text, builtins).map_err(|e| e.to_string())?;
    let compiled = crate::policy::compile(&policy).map_err(|e| e.to_string())?;
    Ok((policy, compiled))
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens the state directory, creating it and its subdirectories (0700: it
    /// holds private keys) if needed.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        let store = Store { dir: dir.to_path_buf() };
        for d in [dir.to_path_buf(), store.dir.join(POLICIES), store.dir.join(IDENTITIES), store.dir.join(KEYS)] {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(io_err(&d))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).map_err(io_err(&d))?;
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn policy_yaml(&self, name: &str) -> PathBuf {
        self.dir.join(POLICIES).join(format!("{name}.yaml"))
    }

    fn policy_json(&self, name: &str) -> PathBuf {
        self.dir.join(POLICIES).join(format!("{name}.json"))
    }

    fn identity_json(&self, name: &str) -> PathBuf {
        self.dir.join(IDENTITIES).join(format!("{name}.json"))
    }

    /// Where identity `name`'s private key is.
    pub fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join(KEYS).join(format!("{name}.key"))
    }

    /// Reads the whole state. Also returns warnings about what was repaired on the
    /// way (each already persisted), for the log.
    pub fn load(&self) -> Result<(State, Vec<String>), StateError> {
        let legacy = self.dir.join(LEGACY);
        if legacy.exists() {
            return Err(StateError::Legacy { path: legacy });
        }
        let mut warnings = Vec::new();
        let mut state = State::default();

        let meta_path = self.dir.join(META);
        let meta: Option<Meta> = read_json_opt(&meta_path)?;
        if let Some(m) = &meta {
            if m.format != FORMAT {
                return Err(StateError::OtherVersion { path: meta_path, found: m.format });
            }
        }

        // Identities.
        let mut by_id: HashMap<u32, PathBuf> = HashMap::new();
        for (name, path) in self.entries(IDENTITIES, "json")? {
            let rec: IdentityRecord = read_json(&path)?;
            if rec.name != name {
                return Err(corrupt(&path, format!("it is for identity {:?}, but the file is named for {name:?}", rec.name)));
            }
            if rec.id == 0 {
                return Err(corrupt(&path, "identity id 0 is reserved"));
            }
            if keys::parse_public_hex(&rec.public_key).is_err() {
                return Err(corrupt(&path, "public_key is not a hex Ed25519 public key"));
            }
            if let Some(other) = by_id.insert(rec.id, path.clone()) {
                return Err(corrupt(&path, format!("identity id {} is also used by {}", rec.id, other.display())));
            }
            if !rec.external_key && !self.key_path(&name).exists() {
                warnings.push(format!(
                    "identity {name}: private key {} is missing; it is enforced, but cannot sign receipts",
                    self.key_path(&name).display()
                ));
            }
            state.identities.insert(name, rec);
        }

        // The id high-water mark: never below an id in use.
        let max_next = identity::next_id(state.identities.values().map(|i| i.id), 1).unwrap_or(u32::MAX);
        state.next_identity_id = match &meta {
            Some(m) if m.next_identity_id >= max_next => m.next_identity_id,
            Some(m) => {
                warnings.push(format!(
                    "{}: next_identity_id {} is below an id in use; raised to {max_next}",
                    meta_path.display(),
                    m.next_identity_id
                ));
                self.save_meta(max_next)?;
                max_next
            }
            None if state.identities.is_empty() => 1,
            None => {
                warnings.push(format!("{} was missing; recreated with next_identity_id {max_next}", meta_path.display()));
                self.save_meta(max_next)?;
                max_next
            }
        };

        // Policies: the YAML is written before its .json, so a YAML without one is an
        // interrupted first apply (nothing used it yet), and a hash mismatch is an
        // interrupted re-apply whose kernel update had already succeeded.
        for (name, yaml_path) in self.entries(POLICIES, "yaml")? {
            let json_path = self.policy_json(&name);
            let yaml = fs::read_to_string(&yaml_path).map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => corrupt(&yaml_path, "not UTF-8"),
                _ => io_err(&yaml_path)(e),
            })?;
            let Some(mut meta) = read_json_opt::<PolicyMeta>(&json_path)? else {
                warnings.push(format!(
                    "{}: no {} next to it (an apply was interrupted); ignored",
                    yaml_path.display(),
                    json_path.display()
                ));
                continue;
            };
            let hash = sha256_hex(yaml.as_bytes());
            if meta.hash != hash {
                meta.version = meta.version.saturating_add(1);
                meta.hash = hash;
                warnings.push(format!(
                    "{}: did not match {} (an apply was interrupted); the YAML is now version {}",
                    json_path.display(),
                    yaml_path.display(),
                    meta.version
                ));
                self.write_json(&json_path, &meta)?;
            }
            state.policies.insert(name, PolicyRecord { yaml, meta });
        }
        for (name, json_path) in self.entries(POLICIES, "json")? {
            if !state.policies.contains_key(&name) && !self.policy_yaml(&name).exists() {
                return Err(corrupt(&json_path, format!("its policy text {} is missing", self.policy_yaml(&name).display())));
            }
        }

        // Bindings.
        let bindings_path = self.dir.join(BINDINGS);
        let list: Vec<BindingRecord> = read_json_opt(&bindings_path)?.unwrap_or_default();
        for b in list {
            if !state.identities.contains_key(&b.identity) {
                return Err(corrupt(
                    &bindings_path,
                    format!("{} is bound to identity {:?}, which has no {}", b.cgroup_path, b.identity, self.identity_json(&b.identity).display()),
                ));
            }
            if !Path::new(&b.cgroup_path).is_absolute() {
                return Err(corrupt(&bindings_path, format!("cgroup path {:?} is not absolute", b.cgroup_path)));
            }
            if state.bindings.contains_key(&b.cgroup_path) {
                return Err(corrupt(&bindings_path, format!("{} is listed twice", b.cgroup_path)));
            }
            state.bindings.insert(b.cgroup_path.clone(), b);
        }
        Ok((state, warnings))
    }

    /// `(name, path)` of every `*.{ext}` file in `sub`, with a valid name. Leftover
    /// temporary files of an interrupted write are removed.
    fn entries(&self, sub: &str, ext: &str) -> Result<Vec<(String, PathBuf)>, StateError> {
        let dir = self.dir.join(sub);
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with('.') {
                if file.ends_with(".tmp") {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let Some(name) = file.strip_suffix(&format!(".{ext}")) else { continue };
            if identity::validate_name("file", name).is_err() {
                return Err(corrupt(&path, "not a name agentd writes (move it out of the state directory)"));
            }
            out.push((name.to_string(), path));
        }
        out.sort();
        Ok(out)
    }

    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StateError> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| corrupt(path, e))?;
        bytes.push(b'\n');
        write_atomic(path, &bytes, 0o600).map_err(io_err(path))
    }

    /// Persists a policy: the text first, then its metadata (see [`Store::load`]).
    pub fn save_policy(&self, name: &str, rec: &PolicyRecord) -> Result<(), StateError> {
        check_name(&self.policy_yaml(name), name)?;
        let yaml = self.policy_yaml(name);
        write_atomic(&yaml, rec.yaml.as_bytes(), 0o600).map_err(io_err(&yaml))?;
        self.write_json(&self.policy_json(name), &rec.meta)
    }

    pub fn save_identity(&self, rec: &IdentityRecord) -> Result<(), StateError> {
        let path = self.identity_json(&rec.name);
        check_name(&path, &rec.name)?;
        self.write_json(&path, rec)
    }

    /// Removes an identity's record and key (a rollback of a failed create).
    /// Tries both files even if one fails.
    pub fn remove_identity(&self, name: &str) -> Result<(), StateError> {
        let mut result = Ok(());
        for path in [self.identity_json(name), self.key_path(name)] {
            if let Err(e) = atomic::remove_durably(&path) {
                if result.is_ok() {
                    result = Err(io_err(&path)(e));
                }
            }
        }
        result
    }

    /// Stores identity `name`'s private key (0600, in the 0700 keys directory).
    pub fn save_key(&self, name: &str, key: &SigningKey) -> Result<(), StateError> {
        let path = self.key_path(name);
        check_name(&path, name)?;
        let pem = keys::to_pem(key).map_err(|e| corrupt(&path, e))?;
        write_atomic(&path, pem.as_bytes(), 0o600).map_err(io_err(&path))
    }

    /// Reads identity `name`'s private key.
    pub fn load_key(&self, name: &str) -> Result<SigningKey, StateError> {
        let path = self.key_path(name);
        let pem = fs::read_to_string(&path).map_err(io_err(&path))?;
        keys::from_pem(&pem).map_err(|e| corrupt(&path, e))
    }

    pub fn save_bindings<'a>(&self, bindings: impl IntoIterator<Item = &'a BindingRecord>) -> Result<(), StateError> {
        let list: Vec<&BindingRecord> = bindings.into_iter().collect();
        self.write_json(&self.dir.join(BINDINGS), &list)
    }

    pub fn save_meta(&self, next_identity_id: u32) -> Result<(), StateError> {
        self.write_json(&self.dir.join(META), &Meta { format: FORMAT, next_identity_id })
    }
}

/// Names become file names: refuse anything that could leave the directory.
fn check_name(path: &Path, name: &str) -> Result<(), StateError> {
    identity::validate_name("file", name).map_err(|e| corrupt(path, e))
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, StateError> {
    read_json_opt(path)?.ok_or_else(|| io_err(path)(io::ErrorKind::NotFound.into()))
}

fn read_json_opt<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| corrupt(path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests;
