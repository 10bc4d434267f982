//! Offline verification of an export: one receipt per line, as the journal stores
//! them (docs/receipts.md, "Verifying"). Needs only the lines and the public key the
//! chain started with; key rotations inside the export are followed.
//!
//! Every line is checked on its own (canonical JSON, hash, inclusion proof,
//! signature under the key in force) and against the one before it (seq +1,
//! `prev_hash`, batch boundaries). The report names the first line that fails and
//! why; nothing after it is trusted.
//!
//! What a chain cannot show by itself: receipts cut off the end. The report's
//! `last_seq` and `ends_mid_batch` say where the export stops; compare with the
//! node's `durable_seq` (or a receipt kept elsewhere, e.g. a sink) to know nothing
//! is missing at the end.

use std::{fmt, fs, io, path::Path};

use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

use super::{
    encode::{self, parse_hash, parse_lower_hex},
    key,
    model::{Receipt, ReceiptType, Seal, FORMAT, GENESIS_PREV_HASH},
    seal as merkle,
};

/// Why a line does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the line is empty")]
    Empty,
    #[error("the line is not UTF-8")]
    NotUtf8,
    #[error("the line is not JSON: {0}")]
    NotJson(String),
    #[error("the line is not in canonical form (member order, spacing, escapes or number spelling differ from what agentd writes)")]
    NotCanonical,
    #[error("the line is not a receipt: {0}")]
    NotReceipt(String),
    #[error("the receipt is format {0}; this verifier reads format {FORMAT}")]
    Format(u32),
    #[error("id {claimed} is not the receipt's hash ({actual}): the receipt was changed after it was made")]
    Id { claimed: String, actual: String },
    #[error("the receipt has no seal")]
    Unsealed,
    #[error("the export starts at seq {0}, not 1 (to check a tail of the chain: `agentctl receipts verify --any-start`)")]
    NotGenesis(u64),
    #[error("seq 1 has prev_hash {0}; the first receipt of a chain has {GENESIS_PREV_HASH}")]
    GenesisPrevHash(String),
    #[error("seq {found} where {expected} was expected: receipts are missing here, or out of order")]
    Gap { expected: u64, found: u64 },
    #[error("seq {0} appears twice")]
    Duplicate(u64),
    #[error("seq {found} after seq {previous}: out of order")]
    OutOfOrder { previous: u64, found: u64 },
    #[error("prev_hash {found} is not the hash of the receipt before ({expected}): the chain is broken")]
    PrevHash { expected: String, found: String },
    #[error("sealed by key {found}, but the key in force is {expected}")]
    WrongKey { found: String, expected: String },
    #[error("seal.{field} is malformed: {why}")]
    SealField { field: &'static str, why: String },
    #[error("seq {seq} is outside its seal's batch {first}..{last}")]
    OutsideBatch { seq: u64, first: u64, last: u64 },
    #[error("a new batch ({first}..{last}) starts at seq {seq}")]
    BatchStart { seq: u64, first: u64, last: u64 },
    #[error("batch {first}..{last} ends early: its last receipt seen is seq {seen}")]
    BatchCut { first: u64, last: u64, seen: u64 },
    #[error("a second, different seal for batch {first}..{last}")]
    BatchConflict { first: u64, last: u64 },
    #[error("the inclusion proof does not lead to the batch root: the receipt or its proof was changed")]
    Proof,
    #[error("the signature over batch {first}..{last} does not verify under key {key_id}")]
    Signature { first: u64, last: u64, key_id: String },
    #[error("malformed key rotation: {0}")]
    Rotation(String),
}

/// Where verification stopped, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 1-based line number in the export.
    pub line: usize,
    /// The receipt's seq, when the line got far enough to have one.
    pub seq: Option<u64>,
    pub problem: Problem,
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// How many receipts verified (all of them, if there is no failure).
    pub receipts: u64,
    /// The seq of the first and last receipt that verified.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Whether the export starts at the chain's first receipt (seq 1).
    pub starts_at_genesis: bool,
    /// The keys that sealed, in the order they took over (key ids).
    pub key_ids: Vec<String>,
    /// The last receipt is not the last of its batch: the export was cut inside a
    /// batch (normal for an export taken while the node runs; not a failure).
    pub ends_mid_batch: bool,
    /// The first line that did not verify.
    pub failure: Option<Failure>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fl) = &self.failure {
            write!(f, "FAILED at line {}", fl.line)?;
            if let Some(seq) = fl.seq {
                write!(f, " (seq {seq})")?;
            }
            write!(f, ": {}", fl.problem)?;
            if self.receipts > 0 {
                write!(f, "; the {} receipts before it verified", self.receipts)?;
            }
            return Ok(());
        }
        match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => {
                write!(f, "OK: {} receipts, seq {a}..{b}", self.receipts)?;
                f.write_str(if self.starts_at_genesis { ", from the start of the chain" } else { ", starting mid-chain" })?;
                write!(f, "; sealed by {}", self.key_ids.join(" then "))?;
                if self.ends_mid_batch {
                    f.write_str("; ends inside a batch")?;
                }
                Ok(())
            }
            _ => f.write_str("OK: no receipts"),
        }
    }
}

/// How to verify.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Accept an export that starts after seq 1 (older segments deleted by
    /// retention, or a time-bounded export). The first line's `prev_hash` is then
    /// taken on trust, and the key given must be the one that sealed it.
    pub any_start: bool,
}

/// Verifies `lines` (without their newlines) as a chain starting at seq 1, sealed
/// first by `key`. Stops at the first line that fails.
pub fn verify_lines<I, L>(lines: I, key: &VerifyingKey) -> Report
where
    I: IntoIterator<Item = L>,
    L: AsRef<[u8]>,
{
    verify_lines_with(lines, key, &VerifyOptions::default())
}

/// [`verify_lines`] with options.
pub fn verify_lines_with<I, L>(lines: I, key: &VerifyingKey, opts: &VerifyOptions) -> Report
where
    I: IntoIterator<Item = L>,
    L: AsRef<[u8]>,
{
    let mut v = Verifier::new(*key, opts.clone());
    for line in lines {
        if v.push(line.as_ref()).is_err() {
            break;
        }
    }
    v.finish()
}

/// Verifies the export at `path` (JSON lines; a final newline is optional).
pub fn verify_file(path: &Path, key: &VerifyingKey) -> io::Result<Report> {
    verify_file_with(path, key, &VerifyOptions::default())
}

/// [`verify_file`] with options.
pub fn verify_file_with(path: &Path, key: &VerifyingKey, opts: &VerifyOptions) -> io::Result<Report> {
    let bytes = fs::read(path)?;
    Ok(verify_lines_with(split_lines(&bytes), key, opts))
}

/// Reads a public key file: 64 hex characters (as in `keys/<hex>.pub`), a PEM
/// `PUBLIC KEY`, or an `ssh-ed25519` line.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    key::parse_public(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The lines of a JSONL file; a final newline does not make an empty last line.
pub fn split_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let empty = bytes.is_empty();
    body.split(|&b| b == b'\n').filter(move |_| !empty)
}

/// A line that passed the checks that need nothing but the line itself.
pub(crate) struct Parsed {
    pub receipt: Receipt,
    pub hash: [u8; 32],
}

/// The checks a line passes on its own: UTF-8, JSON, canonical, exactly a receipt
/// (nothing unknown, nothing spelled two ways), this format, `id` = its hash, sealed.
/// The journal uses this to find the last good receipt after a crash.
pub(crate) fn parse_line(line: &[u8]) -> Result<Parsed, (Option<u64>, Problem)> {
    if line.is_empty() {
        return Err((None, Problem::Empty));
    }
    let text = std::str::from_utf8(line).map_err(|_| (None, Problem::NotUtf8))?;
    let value: Value = serde_json::from_str(text).map_err(|e| (None, Problem::NotJson(e.to_string())))?;
    let seq = value.get("seq").and_then(Value::as_u64);
    let fail = |p: Problem| (seq, p);
    match encode::canonical(&value) {
        Ok(c) if c == text => {}
        Ok(_) => return Err(fail(Problem::NotCanonical)),
        Err(e) => return Err(fail(Problem::NotReceipt(e.to_string()))),
    }
    let receipt: Receipt = serde_json::from_value(value.clone()).map_err(|e| fail(Problem::NotReceipt(e.to_string())))?;
    // Strict parsing refuses unknown members; this refuses the other spellings of
    // an empty member (`"outcome":""` for no outcome), so one receipt has one line.
    if serde_json::to_value(&receipt).ok().as_ref() != Some(&value) {
        return Err(fail(Problem::NotReceipt("a member is written out with its empty or default value".into())));
    }
    if receipt.format != FORMAT {
        return Err(fail(Problem::Format(receipt.format)));
    }
    let hash = encode::receipt_hash(&value).map_err(|e| fail(Problem::NotReceipt(e.to_string())))?;
    if receipt.id != hex::encode(hash) {
        return Err(fail(Problem::Id { claimed: receipt.id.clone(), actual: hex::encode(hash) }));
    }
    if receipt.seal.is_none() {
        return Err(fail(Problem::Unsealed));
    }
    Ok(Parsed { receipt, hash })
}

/// The batch the previous line belonged to, once its signature verified.
#[derive(Clone)]
struct Batch {
    key_id: String,
    first: u64,
    last: u64,
    root: [u8; 32],
    signature: String,
}

/// Verification one line at a time, for a stream (a sink, a pipe) rather than a
/// file. Clone it to try several continuations of the same prefix.
#[derive(Clone)]
pub struct Verifier {
    key: VerifyingKey,
    key_id: String,
    opts: VerifyOptions,
    prev: Option<(u64, [u8; 32])>,
    batch: Option<Batch>,
    lines: usize,
    report: Report,
}

impl Verifier {
    /// Starts a chain sealed first by `key`.
    pub fn new(key: VerifyingKey, opts: VerifyOptions) -> Verifier {
        let key_id = key::key_id(&key);
        Verifier { key, key_id, opts, prev: None, batch: None, lines: 0, report: Report::default() }
    }

    /// Checks the next line (without its newline). After a failure every later
    /// line fails with the same failure: nothing after it can be trusted.
    pub fn push(&mut self, line: &[u8]) -> Result<(), Failure> {
        if let Some(f) = &self.report.failure {
            return Err(f.clone());
        }
        self.lines += 1;
        self.line(line).map_err(|(seq, problem)| {
            let f = Failure { line: self.lines, seq, problem };
            self.report.failure = Some(f.clone());
            f
        })
    }

    /// What has been verified so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    fn line(&mut self, line: &[u8]) -> Result<(), (Option<u64>, Problem)> {
        let Parsed { receipt: r, hash } = parse_line(line)?;
        let seq = r.seq;
        let fail = |p: Problem| (Some(seq), p);
        self.chain(&r).map_err(fail)?;
        let seal = r.seal.as_ref().ok_or(fail(Problem::Unsealed))?;
        self.seal(seq, &hash, seal).map_err(fail)?;
        if r.kind == ReceiptType::KeyRotation {
            self.rotate(&r, seal).map_err(fail)?;
        }
        if self.prev.is_none() {
            self.report.first_seq = Some(seq);
            self.report.starts_at_genesis = seq == 1;
            self.report.key_ids.insert(0, seal.key_id.clone());
        }
        self.prev = Some((seq, hash));
        self.report.receipts += 1;
        self.report.last_seq = Some(seq);
        Ok(())
    }

    fn chain(&self, r: &Receipt) -> Result<(), Problem> {
        let Some((prev_seq, prev_hash)) = self.prev else {
            if self.opts.any_start {
                return Ok(());
            }
            if r.seq != 1 {
                return Err(Problem::NotGenesis(r.seq));
            }
            if r.prev_hash != GENESIS_PREV_HASH {
                return Err(Problem::GenesisPrevHash(r.prev_hash.clone()));
            }
            return Ok(());
        };
        let expected = prev_seq + 1;
        match r.seq {
            s if s == prev_seq => return Err(Problem::Duplicate(s)),
            s if s < prev_seq => return Err(Problem::OutOfOrder { previous: prev_seq, found: s }),
            s if s > expected => return Err(Problem::Gap { expected, found: s }),
            _ => {}
        }
        if r.prev_hash != hex::encode(prev_hash) {
            return Err(Problem::PrevHash { expected: hex::encode(prev_hash), found: r.prev_hash.clone() });
        }
        Ok(())
    }

    fn seal(&mut self, seq: u64, hash: &[u8; 32], s: &Seal) -> Result<(), Problem> {
        if s.key_id != self.key_id {
            return Err(Problem::WrongKey { found: s.key_id.clone(), expected: self.key_id.clone() });
        }
        let (first, last) = (s.batch_first_seq, s.batch_last_seq);
        if seq < first || seq > last {
            return Err(Problem::OutsideBatch { seq, first, last });
        }
        let root = parse_hash(&s.root).ok_or_else(|| bad_field("root", "not 64 lowercase hex digits"))?;
        let mut proof = Vec::with_capacity(s.proof.len());
        for p in &s.proof {
            proof.push(parse_hash(p).ok_or_else(|| bad_field("proof", "an entry is not 64 lowercase hex digits"))?);
        }
        let same_batch = self.batch.as_ref().is_some_and(|b| {
            b.key_id == s.key_id && b.first == first && b.last == last && b.root == root && b.signature == s.signature
        });
        if !same_batch {
            if let Some(b) = &self.batch {
                if b.first == first && b.last == last {
                    return Err(Problem::BatchConflict { first, last });
                }
                if self.prev.is_some_and(|(p, _)| p != b.last) {
                    return Err(Problem::BatchCut { first: b.first, last: b.last, seen: self.prev.map_or(0, |p| p.0) });
                }
            }
            // Only the first line of an export may join a batch part-way through.
            let may_join = self.prev.is_none() && self.opts.any_start;
            if seq != first && !may_join {
                return Err(Problem::BatchStart { seq, first, last });
            }
        }
        let leaf = merkle::leaf_hash(hash);
        if merkle::root_from_proof(seq - first, last - first + 1, &leaf, &proof) != Some(root) {
            return Err(Problem::Proof);
        }
        if !same_batch {
            let mut sig = [0u8; 64];
            if !parse_lower_hex(&s.signature, &mut sig) {
                return Err(bad_field("signature", "not 128 lowercase hex digits"));
            }
            if !merkle::check_signature(&self.key, first, last, &root, &Signature::from_bytes(&sig)) {
                return Err(Problem::Signature { first, last, key_id: s.key_id.clone() });
            }
            self.batch = Some(Batch { key_id: s.key_id.clone(), first, last, root, signature: s.signature.clone() });
        }
        Ok(())
    }

    /// A verified key-rotation receipt hands over to the key it names, from the
    /// next receipt on; so it must end its batch.
    fn rotate(&mut self, r: &Receipt, s: &Seal) -> Result<(), Problem> {
        let param = |name: &str| r.action.parameters.get(name).and_then(Value::as_str).unwrap_or_default();
        if param("old_key_id") != self.key_id {
            return Err(Problem::Rotation(format!("old_key_id {:?} is not the key in force ({})", param("old_key_id"), self.key_id)));
        }
        let mut raw = [0u8; 32];
        if !parse_lower_hex(param("new_public_key"), &mut raw) {
            return Err(Problem::Rotation("new_public_key is not 64 lowercase hex digits".into()));
        }
        let new = VerifyingKey::from_bytes(&raw).map_err(|_| Problem::Rotation("new_public_key is not an Ed25519 key".into()))?;
        let new_id = key::key_id(&new);
        if param("new_key_id") != new_id || r.action.target != new_id {
            return Err(Problem::Rotation(format!("new_key_id and target must be {new_id}, the id of new_public_key")));
        }
        if r.seq != s.batch_last_seq {
            return Err(Problem::Rotation("it is not the last receipt of its batch".into()));
        }
        self.key = new;
        self.key_id = new_id.clone();
        self.report.key_ids.push(new_id);
        Ok(())
    }

    /// The report, once every line is in.
    pub fn finish(mut self) -> Report {
        if let (Some(b), Some((seq, _))) = (&self.batch, self.prev) {
            self.report.ends_mid_batch = seq != b.last;
        }
        self.report
    }
}

fn bad_field(field: &'static str, why: &str) -> Problem {
    Problem::SealField { field, why: why.into() }
}
