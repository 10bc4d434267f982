//! The journal: receipts chained, sealed in batches, and appended to segment files.
//!
//! ```text
//! <dir>/seg-000001.jsonl    one receipt per line, canonical JSON with its seal
//! <dir>/seg-000002.jsonl    the next segment, started once the last reached its size
//! <dir>/seg-000002.jsonl.torn-<offset>   bytes cut off a segment's tail after a crash
//! ```
//!
//! [`Journal::append`] gives a draft its place in the chain (seq, prev_hash, id) at
//! once and returns its seq; a writer thread seals the waiting receipts as one batch,
//! writes them and fsyncs when [`JournalOptions::batch_max`] are waiting, when the
//! oldest has waited [`JournalOptions::window`], or on [`Journal::flush`]. A receipt
//! counts as recorded only once [`Journal::durable_seq`] has reached it: everything
//! at or below that seq survives a crash or power cut.
//!
//! After a crash the last segment may end in a torn line or a batch cut short (or,
//! after a power cut, blocks of zeros). [`Journal::open`] keeps the longest prefix
//! of whole batches that chain, saves the rest beside it (`.torn-<offset>`) and
//! truncates, then goes on from the last good receipt. Nothing acknowledged is
//! lost: a batch is acknowledged only once all of it is fsynced.
//!
//! If a write or fsync fails (a full disk, a read-only filesystem), the journal is
//! *degraded*: the batch that failed is cut off the segment and kept, appends go
//! on into memory (up to [`JournalOptions::max_pending`] receipts), and the writer
//! tries again every [`RETRY_EVERY`]; once a write succeeds it goes on from there,
//! with no restart and no hole in the chain. A receipt that finds the backlog full
//! is refused ([`StoreError::Backlogged`]) before it gets a seq, and counted by
//! requester, kind and result; those counts become `gap` receipts with the next
//! append once writing works again, so the chain says what it is missing.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;

use super::{
    draft::Draft,
    encode::{self, push_hex, Body, EncodeError},
    key::{KeyError, NextKey, NodeKey},
    model::{Receipt, ReceiptType, Requester, Seal, Verdict},
    seal as merkle,
    sinks::{Record, Severity},
    verify::{parse_line, split_lines},
};
use crate::state::atomic;

/// Errors of the journal. Each names the file, and what to do where there is a choice.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the receipt cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
    #[error("{}: the journal's last receipt (seq {seq}) leaves key {sealed_by} in force, but the node key is {key}; restore the node key that goes with this journal, or move the journal away to start a new chain", .dir.display())]
    KeyMismatch { dir: PathBuf, seq: u64, sealed_by: String, key: String },
    #[error("receipts cannot be written now ({0}); they wait in memory and are written once writing works again")]
    Failed(String),
    #[error("receipts cannot be written ({0}) and the backlog in memory is full: this one is counted, and recorded in a gap receipt once writing works again")]
    Backlogged(String),
    #[error("the journal is closed")]
    Closed,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// How the journal batches, splits and keeps receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// Seal a batch as soon as this many receipts wait.
    pub batch_max: usize,
    /// The durability window: no receipt waits longer than this (plus the time to
    /// seal and fsync) before it is durable.
    pub window: Duration,
    /// Start a new segment once the current one has this many bytes (segments end
    /// on batch boundaries, so one may be a batch longer).
    pub segment_bytes: u64,
    /// Delete the oldest segments beyond this many.
    pub max_segments: Option<usize>,
    /// Delete the oldest segments while all of them together are larger than this.
    pub max_bytes: Option<u64>,
    /// `append` waits while this many receipts wait to be written (a stalled disk
    /// must not grow memory without bound).
    pub max_pending: usize,
}

impl Default for JournalOptions {
    fn default() -> JournalOptions {
        JournalOptions {
            batch_max: 1024,
            window: Duration::from_millis(50),
            segment_bytes: 16 << 20,
            max_segments: None,
            max_bytes: None,
            max_pending: 64 * 1024,
        }
    }
}

/// How often a degraded journal tries its failed batch again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What [`Journal::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The seq of the last good receipt (0: the journal is empty).
    pub last_seq: u64,
    /// Bytes cut off the end of a segment (a torn or damaged tail).
    pub truncated_bytes: u64,
    /// Where the cut bytes were saved.
    pub saved_tail: Option<PathBuf>,
    /// Why the first cut line was not kept (1-based line in its segment).
    pub cut_at: Option<(PathBuf, usize, String)>,
    /// A key rotation a crash interrupted: `Some(true)` finished (its receipt was
    /// durable), `Some(false)` abandoned (it was not).
    pub rotation_finished: Option<bool>,
}

/// Which receipts [`Journal::query`] yields; unset fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `requester.identity`.
    pub identity: Option<String>,
    /// `action.kind` ("exec", "write", "egress", "bind", ...).
    pub action_kind: Option<String>,
    /// `decision.result`.
    pub verdict: Option<Verdict>,
    /// The receipt `type`.
    pub receipt_type: Option<ReceiptType>,
    /// `time` at or after this.
    pub since: Option<SystemTime>,
    /// `time` before this.
    pub until: Option<SystemTime>,
}

impl Filter {
    pub fn matches(&self, r: &Receipt) -> bool {
        let time_ok = || {
            if self.since.is_none() && self.until.is_none() {
                return true;
            }
            let Some(t) = r.system_time() else { return false };
            self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
        };
        self.identity.as_ref().is_none_or(|i| *i == r.requester.identity)
            && self.action_kind.as_ref().is_none_or(|k| *k == r.action.kind)
            && self.verdict.is_none_or(|v| v == r.decision.result)
            && self.receipt_type.is_none_or(|t| t == r.kind)
            && time_ok()
    }
}

/// A key rotation that is durable (see [`Journal::rotate_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The seq of the key-rotation receipt, the last one the old key sealed.
    pub seq: u64,
    pub old_key_id: String,
    pub new_key_id: String,
}

/// A stored receipt and its line exactly as stored (what an export writes, without
/// the newline; [`super::verify`] checks these lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub line: String,
    pub receipt: Receipt,
}

/// The receipt journal of one node. Share it between threads behind an `Arc`.
pub struct Journal {
    shared: Arc<Shared>,
    dir: PathBuf,
    key_dir: PathBuf,
    recovery: Recovery,
    /// One rotation at a time: each needs the one before it to be in force.
    rotating: Mutex<()>,
    writer: Option<thread::JoinHandle<()>>,
}

/// Where every receipt goes once it is durable: the sinks (see [`Journal::set_tap`]).
/// Called on the journal's writer thread, with one batch at a time, in seq order;
/// it must not block (the sinks' dispatcher only queues).
pub type Tap = Arc<dyn Fn(Vec<Record>) + Send + Sync>;

struct Shared {
    state: Mutex<State>,
    /// Set once the sinks are running; `None` costs nothing per receipt.
    tap: Mutex<Option<Tap>>,
    /// The writer waits on this for work.
    work: Condvar,
    /// Callers of flush, wait_durable and a full append wait on this.
    progress: Condvar,
    host: String,
    opts: JournalOptions,
}

struct State {
    next_seq: u64,
    prev_hash: [u8; 32],
    /// The key that seals the next receipt appended.
    key_id: String,
    pending: VecDeque<Pending>,
    flush_to: u64,
    durable_seq: u64,
    /// Why the last write failed, until a write succeeds (the journal is
    /// degraded meanwhile).
    degraded: Option<String>,
    /// Receipts refused while degraded with a full backlog, to be recorded as
    /// `gap` receipts.
    unrecorded: std::collections::BTreeMap<GapKey, GapCount>,
    /// All receipts ever refused that way (for status).
    unrecorded_total: u64,
    /// The batch that failed, held by the writer (for status: its receipts wait too).
    held: usize,
    closing: bool,
}

/// Whose receipts of what were refused: (identity, identity id, action kind, result).
type GapKey = (String, Option<u32>, String, Verdict);

#[derive(Debug, Clone, Copy)]
struct GapCount {
    count: u64,
    first: SystemTime,
    last: SystemTime,
}

/// The journal's health, for status and doctor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Why receipts cannot be written now; `None` when they can.
    pub degraded: Option<String>,
    /// Receipts waiting in memory to be written.
    pub backlog: u64,
    /// Receipts refused because the backlog was full (each counted in a gap receipt).
    pub unrecorded: u64,
}

/// A receipt with its place in the chain, waiting for its seal.
struct Pending {
    seq: u64,
    hash: [u8; 32],
    /// The receipt without `id` and `seal`, encoded already.
    body: Body,
    appended: Instant,
    /// Set on a key-rotation receipt: the key that takes over after its batch.
    rotation: Option<NextKey>,
    /// What the sinks route by, kept only while a tap is set.
    meta: Option<Meta>,
}

/// The few fields of a receipt a sink routes and labels by.
struct Meta {
    time: SystemTime,
    kind: ReceiptType,
    verdict: Verdict,
}

/// How much a receipt matters to a sink's reader: what was stopped is a warning,
/// what a person must look at (holds, approvals, changes to enforcement) a notice,
/// the routine rest info.
pub fn severity_of(kind: ReceiptType, verdict: Verdict) -> Severity {
    match (kind, verdict) {
        (_, Verdict::Deny | Verdict::Kill | Verdict::Refused) => Severity::Warning,
        (ReceiptType::IdentityRevoke | ReceiptType::Tamper | ReceiptType::Gap, _) => {
            Severity::Warning
        }
        (ReceiptType::Decision, Verdict::WouldDeny) => Severity::Notice,
        (ReceiptType::Decision, _) => Severity::Info,
        _ => Severity::Notice,
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, sealing with `key`, recording `host`
    /// in every receipt. Repairs a torn tail, and finishes or abandons a key
    /// rotation a crash interrupted (see [`Journal::recovery`]).
    pub fn open(dir: &Path, key: NodeKey, host: &str, opts: JournalOptions) -> Result<Journal, StoreError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
        let mut recovery = Recovery::default();
        let mut segments = list_segments(dir)?;
        let mut last: Option<Receipt> = None;
        for (no, _) in segments.iter().rev() {
            let path = segment_path(dir, *no);
            if let Some(r) = repair_segment(&path, &mut recovery)? {
                last = Some(r);
                break;
            }
        }
        for s in segments.iter_mut() {
            s.1 = fs::metadata(segment_path(dir, s.0)).map_err(io_err(dir))?.len();
        }

        let key_dir = key.dir().to_path_buf();
        let key = reconcile_key(dir, key, last.as_ref(), &mut recovery)?;
        let (next_seq, prev_hash) = match &last {
            Some(r) => (r.seq + 1, encode::parse_hash(&r.id).unwrap_or_default()),
            None => (1, [0; 32]),
        };
        recovery.last_seq = next_seq - 1;

        if segments.is_empty() {
            segments.push((1, 0));
        }
        let &(no, len) = segments.last().unwrap_or(&(1, 0));
        let file = open_segment(dir, no)?;
        // The segment may be new: its name must survive a power cut too.
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        let state = State {
            next_seq,
            prev_hash,
            key_id: key.key_id().to_string(),
            pending: VecDeque::new(),
            flush_to: 0,
            durable_seq: next_seq - 1,
            degraded: None,
            unrecorded: Default::default(),
            unrecorded_total: 0,
            held: 0,
            closing: false,
        };
        let shared = Arc::new(Shared { state: Mutex::new(state), tap: Mutex::new(None), work: Condvar::new(), progress: Condvar::new(), host: host.to_string(), opts });
        let writer = Writer { dir: dir.to_path_buf(), key, file, segments: segments.into_iter().collect(), seg_len: len };
        let s = shared.clone();
        let handle = thread::Builder::new()
            .name("receipts-writer".into())
            .spawn(move || writer.run(&s))
            .map_err(io_err(dir))?;
        Ok(Journal { shared, dir: dir.to_path_buf(), key_dir, recovery, rotating: Mutex::new(()), writer: Some(handle) })
    }

    /// What opening found and repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Hands every receipt appended from now on to `tap` once it is durable, with
    /// its line exactly as stored. Receipts appended before are not replayed.
    pub fn set_tap(&self, tap: Tap) {
        *self.shared.tap.lock().unwrap_or_else(|e| e.into_inner()) = Some(tap);
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Gives `draft` the next seq and links it into the chain; returns the seq. The
    /// receipt is durable once [`Journal::durable_seq`] reaches it (within the
    /// window), or after [`Journal::flush`].
    pub fn append(&self, draft: Draft) -> Result<u64, StoreError> {
        self.append_inner(draft, None)
    }

    fn append_inner(&self, draft: Draft, rotation: Option<NextKey>) -> Result<u64, StoreError> {
        // Everything but the place in the chain is made outside the lock.
        let now = SystemTime::now();
        let tapped = self.shared.tap.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        let meta = tapped.then(|| Meta { time: draft.time.unwrap_or(now), kind: draft.kind, verdict: draft.decision.result });
        let receipt = draft.into_receipt(0, String::new(), &self.shared.host, now);
        let gap_key: GapKey = (receipt.requester.identity.clone(), receipt.requester.identity_id, receipt.action.kind.clone(), receipt.decision.result);
        let when = super::model::parse_time(&receipt.time).unwrap_or(now);
        let value = body_value(&receipt)?;
        let opts = &self.shared.opts;
        let mut st = self.lock();
        loop {
            if st.closing {
                return Err(StoreError::Closed);
            }
            // A rotation never waits: its caller holds up nothing else.
            if st.pending.len() < opts.max_pending || rotation.is_some() {
                break;
            }
            // Full while writes fail: waiting would stop the caller for as long as
            // the disk is full. Counted instead, for a gap receipt.
            if let Some(why) = &st.degraded {
                let why = why.clone();
                let c = st.unrecorded.entry(gap_key).or_insert(GapCount { count: 0, first: when, last: when });
                c.count += 1;
                c.first = c.first.min(when);
                c.last = c.last.max(when);
                st.unrecorded_total += 1;
                return Err(StoreError::Backlogged(why));
            }
            st = self.shared.progress.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        // Writing works again: first the gaps, so the chain says what it misses.
        if st.degraded.is_none() && !st.unrecorded.is_empty() {
            for ((identity, identity_id, kind, result), c) in std::mem::take(&mut st.unrecorded) {
                let mut requester = Requester::identity(identity, "", "");
                requester.identity_id = identity_id;
                let gap = Draft::gap(kind, result, c.count, c.last, "journal-unwritable").requester(requester).at(c.first);
                let gap = gap.into_receipt(0, String::new(), &self.shared.host, now);
                let meta = tapped.then(|| Meta { time: c.first, kind: ReceiptType::Gap, verdict: result });
                self.push(&mut st, body_value(&gap)?, None, meta)?;
            }
        }
        let seq = self.push(&mut st, value, rotation, meta)?;
        Ok(seq)
    }

    /// Gives a receipt body (without `id`, `seq` and `prev_hash`) its place in the
    /// chain and queues it for the writer.
    fn push(&self, st: &mut State, mut value: Value, rotation: Option<NextKey>, meta: Option<Meta>) -> Result<u64, StoreError> {
        let Value::Object(obj) = &mut value else {
            return Err(EncodeError::Serialize("a receipt is not a JSON object".into()).into());
        };
        let seq = st.next_seq;
        obj.insert("seq".into(), seq.into());
        obj.insert("prev_hash".into(), hex::encode(st.prev_hash).into());
        // Fails (on a float) before the seq is used, so the chain has no hole.
        let body = Body::of(&value)?;
        let hash = body.hash();
        st.next_seq += 1;
        st.prev_hash = hash;
        let cut = rotation.is_some();
        if let Some(next) = &rotation {
            st.key_id = next.key_id().to_string();
        }
        st.pending.push_back(Pending { seq, hash, body, appended: Instant::now(), rotation, meta });
        // The first waiting receipt starts the window; a full batch or a rotation
        // goes at once.
        if st.pending.len() == 1 || st.pending.len() >= self.shared.opts.batch_max || cut {
            self.shared.work.notify_one();
        }
        Ok(seq)
    }

    /// Whether receipts are being written, and what waits or was refused.
    pub fn health(&self) -> Health {
        let st = self.lock();
        Health { degraded: st.degraded.clone(), backlog: (st.pending.len() + st.held) as u64, unrecorded: st.unrecorded_total }
    }

    /// Seals and writes everything appended so far, and waits until it is durable.
    /// Returns the durable seq.
    pub fn flush(&self) -> Result<u64, StoreError> {
        let mut st = self.lock();
        let target = st.next_seq - 1;
        st.flush_to = st.flush_to.max(target);
        self.shared.work.notify_one();
        while st.durable_seq < target {
            st.usable()?;
            st = self.shared.progress.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        Ok(st.durable_seq)
    }

    /// Every receipt up to this seq is sealed, written and fsynced (0: none yet).
    pub fn durable_seq(&self) -> u64 {
        self.lock().durable_seq
    }

    /// The seq of the last receipt appended (durable or not).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Waits until `seq` is durable or `timeout` passes; true if it is durable.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> Result<bool, StoreError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.durable_seq < seq {
            st.usable()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            st = self.shared.progress.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(true)
    }

    /// The key that seals receipts appended now.
    pub fn key_id(&self) -> String {
        self.lock().key_id.clone()
    }

    /// The directory of the node key (`node.key`, and `keys/` with every public key
    /// this journal has sealed with, see [`super::key::public_path`]).
    pub fn key_dir(&self) -> &Path {
        &self.key_dir
    }

    /// Replaces the node key: appends a key-rotation receipt (naming the old and new
    /// key id and the new public key, and `by`, who asked) sealed by the old key, as
    /// the last receipt of its batch; receipts after it are sealed by the new key.
    /// Returns when the rotation is durable.
    pub fn rotate_key(&self, by: Requester) -> Result<Rotation, StoreError> {
        let _one = self.rotating.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.key_id();
        let next = super::key::prepare_rotation(&self.key_dir)?;
        let new_id = next.key_id().to_string();
        let draft = Draft::key_rotation(&old, &new_id, &next.public_hex()).requester(by);
        // If this fails nothing refers to the new key, and the next open removes
        // `node.key.next`.
        let seq = self.append_inner(draft, Some(next))?;
        self.flush()?;
        Ok(Rotation { seq, old_key_id: old, new_key_id: new_id })
    }

    /// Every durable receipt, oldest first.
    pub fn iter(&self) -> Result<Receipts, StoreError> {
        let upto = self.durable_seq();
        Receipts::new(&self.dir, Some(upto))
    }

    /// The durable receipts that match `filter`, oldest first.
    pub fn query(&self, filter: Filter) -> Result<impl Iterator<Item = Result<Stored, StoreError>>, StoreError> {
        Ok(self.iter()?.filter(move |r| r.as_ref().map_or(true, |s| filter.matches(&s.receipt))))
    }

    /// Flushes, stops the writer and reports the last durable seq (dropping the
    /// journal does the same, without the report).
    pub fn close(mut self) -> Result<u64, StoreError> {
        let r = self.flush();
        self.stop();
        r
    }

    fn stop(&mut self) {
        self.lock().closing = true;
        self.shared.work.notify_one();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop receipts: the state is consistent between
        // statements that hold the lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// For callers waiting for durability: an error while writes fail (the
    /// receipts still wait in memory) or once the journal is closed.
    fn usable(&self) -> Result<(), StoreError> {
        match (&self.degraded, self.closing) {
            (Some(e), _) => Err(StoreError::Failed(e.clone())),
            (None, true) => Err(StoreError::Closed),
            _ => Ok(()),
        }
    }
}

/// A receipt as a JSON object without its `id` (what [`Journal::push`] completes).
fn body_value(receipt: &Receipt) -> Result<Value, StoreError> {
    let mut value = serde_json::to_value(receipt).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    let Value::Object(obj) = &mut value else {
        return Err(EncodeError::Serialize("a receipt is not a JSON object".into()).into());
    };
    obj.remove("id");
    Ok(value)
}

/// The writer thread's own part: the key and the open segment.
struct Writer {
    dir: PathBuf,
    key: NodeKey,
    file: File,
    /// (number, bytes) of every segment, oldest first; the last is `file`.
    segments: VecDeque<(u64, u64)>,
    seg_len: u64,
}

impl Writer {
    fn run(mut self, shared: &Shared) {
        let opts = &shared.opts;
        // The batch whose write failed: tried again before anything else.
        let mut held: Option<Vec<Pending>> = None;
        loop {
            let mut batch = match held.take() {
                Some(b) => {
                    let st = shared.lock();
                    // Closing while degraded: one last try, then give up (those
                    // receipts were never acknowledged as recorded).
                    let closing = st.closing;
                    if !closing {
                        let _ = shared.work.wait_timeout(st, RETRY_EVERY).unwrap_or_else(|e| e.into_inner());
                    }
                    b
                }
                None => {
                    let mut st = shared.lock();
                    loop {
                        if st.closing && st.pending.is_empty() {
                            return;
                        }
                        if let Some(front) = st.pending.front() {
                            let waited = front.appended.elapsed();
                            if st.pending.len() >= opts.batch_max
                                || st.flush_to >= front.seq
                                || st.closing
                                || waited >= opts.window
                            {
                                break;
                            }
                            st = shared.work.wait_timeout(st, opts.window - waited).unwrap_or_else(|e| e.into_inner()).0;
                        } else {
                            st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    // A batch ends at a rotation: the receipts after it are the new key's.
                    let mut n = st.pending.len().min(opts.batch_max);
                    if let Some(i) = st.pending.iter().take(n).position(|p| p.rotation.is_some()) {
                        n = i + 1;
                    }
                    let batch = st.pending.drain(..n).collect::<Vec<_>>();
                    st.held = batch.len();
                    batch
                }
            };
            let last = batch.last().map_or(0, |p| p.seq);
            let result = self.write_batch(&mut batch, opts, &shared.host);
            // The batch is on disk: the sinks get it before it counts as durable, so
            // that once flush returns they have every receipt it covered (a stop
            // flushes, then stops the sinks).
            let result = result.map(|records| {
                let tap = shared.tap.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let (Some(tap), false) = (tap, records.is_empty()) {
                    tap(records);
                }
            });
            let mut st = shared.lock();
            match result {
                Ok(()) => {
                    st.durable_seq = last;
                    st.held = 0;
                    st.degraded = None;
                }
                Err(e) => {
                    st.degraded = Some(e.to_string());
                    if st.closing {
                        shared.progress.notify_all();
                        return;
                    }
                    held = Some(batch);
                }
            }
            shared.progress.notify_all();
        }
    }

    /// Seals, writes and fsyncs `batch`; returns the sinks' records of the receipts
    /// that carried their [`Meta`] (none while no tap is set).
    fn write_batch(&mut self, batch: &mut [Pending], opts: &JournalOptions, host: &str) -> Result<Vec<Record>, StoreError> {
        let hashes: Vec<[u8; 32]> = batch.iter().map(|p| p.hash).collect();
        let sealed = merkle::seal(self.key.signing_key(), batch[0].seq, &hashes);
        // The seal's members other than the proof are the batch's: encode them
        // once, as the canonical encoder spells them, around an empty proof.
        let shared = Seal {
            key_id: self.key.key_id().to_string(),
            batch_first_seq: sealed.first_seq,
            batch_last_seq: sealed.last_seq,
            root: hex::encode(sealed.root),
            proof: Vec::new(),
            signature: hex::encode(sealed.signature.to_bytes()),
        };
        let shared = encode::canonical_of(&shared)?;
        let (head, tail) = shared.split_once("\"proof\":[]").ok_or_else(|| EncodeError::Serialize("a seal without a proof".into()))?;
        let mut buf = String::with_capacity(batch.len() * 2048);
        let (mut id, mut seal) = (String::with_capacity(66), String::with_capacity(1024));
        let mut records = Vec::new();
        for (p, proof) in batch.iter().zip(sealed.proofs) {
            let start = buf.len();
            id.clear();
            id.push('"');
            push_hex(&p.hash, &mut id);
            id.push('"');
            seal.clear();
            seal.push_str(head);
            seal.push_str("\"proof\":[");
            for (i, h) in proof.iter().enumerate() {
                seal.push_str(if i == 0 { "\"" } else { ",\"" });
                push_hex(h, &mut seal);
                seal.push('"');
            }
            seal.push(']');
            seal.push_str(tail);
            p.body.write_with(&mut buf, &id, &seal);
            if let Some(m) = &p.meta {
                records.push(Record {
                    seq: p.seq,
                    id: id.trim_matches('"').to_string(),
                    time: m.time,
                    kind: m.kind.as_str().to_string(),
                    verdict: m.verdict.as_str().to_string(),
                    severity: severity_of(m.kind, m.verdict),
                    host: host.to_string(),
                    line: buf[start..].to_string(),
                });
            }
            buf.push('\n');
        }
        if self.seg_len >= opts.segment_bytes {
            self.roll(opts)?;
        }
        let path = self.current_path();
        let written = self.file.write_all(buf.as_bytes()).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Cut what part of the batch got there: the batch is written again
            // whole, later, and a segment holds whole batches only.
            let _ = self.file.set_len(self.seg_len);
            return Err(io_err(&path)(e));
        }
        self.seg_len += buf.len() as u64;
        if let Some(s) = self.segments.back_mut() {
            s.1 = self.seg_len;
        }
        // The rotation receipt is durable: now the new key may take over.
        if let Some(next) = batch.last_mut().and_then(|p| p.rotation.take()) {
            self.key = next.commit()?;
        }
        Ok(records)
    }

    fn current_path(&self) -> PathBuf {
        segment_path(&self.dir, self.segments.back().map_or(1, |s| s.0))
    }

    /// Starts the next segment, then deletes the oldest ones the retention limits
    /// no longer allow (never the current one).
    fn roll(&mut self, opts: &JournalOptions) -> Result<(), StoreError> {
        let no = self.segments.back().map_or(0, |s| s.0) + 1;
        self.file = open_segment(&self.dir, no)?;
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        self.segments.push_back((no, 0));
        self.seg_len = 0;
        loop {
            let total: u64 = self.segments.iter().map(|s| s.1).sum();
            let too_many = opts.max_segments.is_some_and(|m| self.segments.len() > m.max(1));
            let too_big = opts.max_bytes.is_some_and(|m| total > m);
            if self.segments.len() <= 1 || !(too_many || too_big) {
                return Ok(());
            }
            if let Some((old, _)) = self.segments.pop_front() {
                let path = segment_path(&self.dir, old);
                atomic::remove_durably(&path).map_err(io_err(&path))?;
            }
        }
    }
}

fn segment_path(dir: &Path, no: u64) -> PathBuf {
    dir.join(format!("seg-{no:06}.jsonl"))
}

/// (number, 0) of every segment in `dir`, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<(u64, u64)>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let name = entry.map_err(io_err(dir))?.file_name();
        let name = name.to_string_lossy();
        if let Some(no) = name.strip_prefix("seg-").and_then(|n| n.strip_suffix(".jsonl")).and_then(|n| n.parse::<u64>().ok()) {
            out.push((no, 0));
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn open_segment(dir: &Path, no: u64) -> Result<File, StoreError> {
    let path = segment_path(dir, no);
    OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io_err(&path))
}

/// Keeps the longest prefix of `path` made of whole batches of receipts that chain;
/// saves and cuts off the rest. Returns the last good receipt.
///
/// A batch is written with one write and one fsync, and acknowledged only after
/// the fsync: a batch that is only partly there was never acknowledged, so cutting
/// it loses nothing promised, and keeps every batch in the journal whole.
fn repair_segment(path: &Path, recovery: &mut Recovery) -> Result<Option<Receipt>, StoreError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    // The end of the last whole batch, and its last receipt.
    let (mut good, mut good_lines, mut last_whole): (usize, usize, Option<Receipt>) = (0, 0, None);
    let mut offset = 0usize;
    let mut prev: Option<(u64, [u8; 32])> = None;
    let mut why = None;
    for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        offset += line.len();
        let Some(body) = line.strip_suffix(b"\n") else {
            why = Some((i + 1, "the line is incomplete (torn write)".to_string()));
            break;
        };
        let parsed = match parse_line(body) {
            Ok(p) => p,
            Err((_, problem)) => {
                why = Some((i + 1, problem.to_string()));
                break;
            }
        };
        let r = parsed.receipt;
        if let Some((seq, hash)) = prev {
            if r.seq != seq + 1 || r.prev_hash != hex::encode(hash) {
                why = Some((i + 1, format!("seq {} does not follow seq {seq} in the chain", r.seq)));
                break;
            }
        }
        prev = Some((r.seq, parsed.hash));
        if r.seal.as_ref().is_some_and(|s| s.batch_last_seq == r.seq) {
            (good, good_lines) = (offset, i + 1);
            last_whole = Some(r);
        }
    }
    if good < bytes.len() {
        // Whole receipts after the last whole batch: the rest of their batch is missing.
        let why = why.filter(|w| w.0 == good_lines + 1).or(Some((good_lines + 1, "its batch is incomplete (the write was cut short)".into())));
        let saved = path.with_file_name(format!("{}.torn-{good}", path.file_name().unwrap_or_default().to_string_lossy()));
        atomic::write_atomic(&saved, &bytes[good..], 0o600).map_err(io_err(&saved))?;
        let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
        f.set_len(good as u64).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
        recovery.truncated_bytes += (bytes.len() - good) as u64;
        recovery.saved_tail.get_or_insert(saved);
        if let Some((line, why)) = why {
            recovery.cut_at.get_or_insert((path.to_path_buf(), line, why));
        }
    }
    Ok(last_whole)
}

/// The key in force after the journal's last receipt must be `key`; finishes or
/// abandons a rotation a crash interrupted.
fn reconcile_key(dir: &Path, key: NodeKey, last: Option<&Receipt>, recovery: &mut Recovery) -> Result<NodeKey, StoreError> {
    let in_force = last.map(|r| match r.kind {
        ReceiptType::KeyRotation => r.action.target.clone(),
        _ => r.seal.as_ref().map(|s| s.key_id.clone()).unwrap_or_default(),
    });
    let mut key = key;
    if let Some(next) = key.pending_rotation()? {
        if in_force.as_deref() == Some(next.key_id()) {
            key = next.commit()?;
            recovery.rotation_finished = Some(true);
        } else {
            next.abandon()?;
            recovery.rotation_finished = Some(false);
        }
    }
    match (in_force, last) {
        (Some(id), Some(r)) if id != key.key_id() => {
            Err(StoreError::KeyMismatch { dir: dir.to_path_buf(), seq: r.seq, sealed_by: id, key: key.key_id().to_string() })
        }
        _ => Ok(key),
    }
}

/// Reads receipts from a journal directory, oldest first, without opening the
/// journal (agentd may be writing it: only whole lines are read, and a segment
/// deleted by retention meanwhile is skipped).
pub struct Receipts {
    dir: PathBuf,
    segments: VecDeque<u64>,
    reader: Option<(PathBuf, BufReader<File>)>,
    upto: Option<u64>,
    done: bool,
}

impl Receipts {
    /// Every receipt in `dir`, up to seq `upto` if given.
    pub fn new(dir: &Path, upto: Option<u64>) -> Result<Receipts, StoreError> {
        let segments = list_segments(dir)?.into_iter().map(|s| s.0).collect();
        Ok(Receipts { dir: dir.to_path_buf(), segments, reader: None, upto, done: false })
    }
}

impl Iterator for Receipts {
    type Item = Result<Stored, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let Some((path, reader)) = &mut self.reader else {
                let no = self.segments.pop_front()?;
                let path = segment_path(&self.dir, no);
                match File::open(&path) {
                    Ok(f) => self.reader = Some((path, BufReader::new(f))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        self.done = true;
                        return Some(Err(StoreError::Io { path, source: e }));
                    }
                }
                continue;
            };
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => self.reader = None,
                // A line being written right now: the end of what is there.
                Ok(_) if !line.ends_with('\n') => {
                    self.reader = None;
                    self.segments.clear();
                }
                Ok(_) => {
                    line.pop();
                    let receipt: Receipt = match serde_json::from_str(&line) {
                        Ok(r) => r,
                        Err(e) => {
                            self.done = true;
                            let why = io::Error::new(io::ErrorKind::InvalidData, format!("not a receipt: {e}"));
                            return Some(Err(StoreError::Io { path: path.clone(), source: why }));
                        }
                    };
                    if self.upto.is_some_and(|u| receipt.seq > u) {
                        self.done = true;
                        return None;
                    }
                    return Some(Ok(Stored { line, receipt }));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(StoreError::Io { path: path.clone(), source: e }));
                }
            }
        }
        None
    }
}

/// The lines of an export file or segment, for tests and tools.
pub fn read_lines(path: &Path) -> io::Result<Vec<String>> {
    let bytes = fs::read(path)?;
    Ok(split_lines(&bytes).map(|l| String::from_utf8_lossy(l).into_owned()).collect())
}
