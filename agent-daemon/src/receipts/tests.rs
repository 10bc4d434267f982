//! Receipts as a user sees them: written by the journal, exported, and verified
//! offline; changed, deleted, reordered or cut off by a crash.

use std::{
    fs,
    path::Path,
    time::{Duration, UNIX_EPOCH},
};

use ed25519_dalek::VerifyingKey;

use super::{
    key::{self, NodeKey},
    store::Recovery,
    verify::{verify_lines_with, Problem},
    *,
};

fn opts(batch_max: usize) -> JournalOptions {
    JournalOptions { batch_max, window: Duration::from_secs(3600), ..JournalOptions::default() }
}

fn open(dir: &Path, o: JournalOptions) -> Journal {
    Journal::open(dir, NodeKey::load_or_create(dir).unwrap(), "node-1", o).unwrap()
}

/// A receipt of every shape the daemon makes, `i` making each one different.
fn draft(i: u64) -> Draft {
    let at = UNIX_EPOCH + Duration::new(1_767_225_600 + i, 123);
    match i % 4 {
        0 => Draft::decision("exec", "/usr/bin/curl", Verdict::Deny)
            .at(at)
            .requester(
                Requester::identity("claude", "3f2a9c1e5b7d4a60", "alice")
                    .with_identity_id(3)
                    .with_process(4242, 1000, "/usr/bin/bash")
                    .with_binding("/sys/fs/cgroup/agents/claude", 77, "s-1"),
            )
            .policy("dev", 3, "9c1e")
            .rule(7, "deny exec /usr/bin/curl")
            .reason("rule")
            .mechanism("lsm")
            .param("argv", serde_json::json!(["curl", "é\n\"q\"", i])),
        1 => Draft::hold_outcome("egress", "93.184.216.34:443", format!("h{i}"), Verdict::Allow, "approved")
            .at(at)
            .requester(Requester::identity("codex", "00aa", "bob"))
            .with_approval(Approval::new("alice", Some(0), at, "once").with_reason("deploy")),
        2 => Draft::bind("/sys/fs/cgroup/agents/x", 99, "claude").at(at).requester(Requester::person("root", 0, 1, "/usr/bin/agentctl")),
        _ => Draft::decision("write", "/etc/passwd", Verdict::WouldDeny).at(at).requester(Requester::identity("claude", "3f2a", "alice")),
    }
}

fn export(j: &Journal) -> Vec<String> {
    j.iter().unwrap().map(|s| s.unwrap().line).collect()
}

fn first_key(dir: &Path) -> VerifyingKey {
    NodeKey::load(dir).unwrap().public_key()
}

fn verify_all(lines: &[String], key: &VerifyingKey) -> Report {
    verify_lines(lines.iter().map(String::as_bytes), key)
}

fn any_start() -> VerifyOptions {
    VerifyOptions { any_start: true }
}

#[test]
fn journal_chains_seals_and_an_export_verifies() {
    let d = tempfile::tempdir().unwrap();
    let j = open(d.path(), opts(7));
    for i in 0..30 {
        assert_eq!(j.append(draft(i)).unwrap(), i + 1);
    }
    assert!(j.wait_durable(28, Duration::from_secs(10)).unwrap(), "four full batches of 7 go without a flush");
    assert_eq!(j.durable_seq(), 28, "the last two wait for the window");
    assert_eq!(j.flush().unwrap(), 30);
    let lines = export(&j);
    assert_eq!(lines.len(), 30);
    let r = verify_all(&lines, &first_key(d.path()));
    assert!(r.is_ok(), "{r}");
    assert_eq!((r.receipts, r.first_seq, r.last_seq, r.starts_at_genesis, r.ends_mid_batch), (30, Some(1), Some(30), true, false));
    assert_eq!(r.key_ids, vec![j.key_id()]);
    // An export is the stored lines, and a receipt re-encoded is its line.
    let stored: Vec<_> = j.iter().unwrap().map(|s| s.unwrap()).collect();
    for s in &stored {
        assert_eq!(encode::canonical_of(&s.receipt).unwrap(), s.line);
    }
    let (a, b) = (&stored[0].receipt, &stored[1].receipt);
    assert_eq!(a.prev_hash, model::GENESIS_PREV_HASH);
    assert_eq!(b.prev_hash, a.id);
    let seal = b.seal.as_ref().unwrap();
    assert_eq!((seal.batch_first_seq, seal.batch_last_seq, seal.proof.len()), (1, 7, 3));
    assert_eq!(stored[29].receipt.seal.as_ref().unwrap().batch_first_seq, 29);
}

#[test]
fn one_receipt_verifies_on_its_own_with_the_public_key() {
    let d = tempfile::tempdir().unwrap();
    let j = open(d.path(), opts(16));
    for i in 0..16 {
        j.append(draft(i)).unwrap();
    }
    j.flush().unwrap();
    let lines = export(&j);
    let key = first_key(d.path());
    for line in &lines {
        let r = verify_lines_with([line.as_bytes()], &key, &any_start());
        assert!(r.is_ok(), "{r}");
    }
    let other = SigningKeyFor::other();
    let r = verify_lines_with([lines[5].as_bytes()], &other, &any_start());
    assert!(matches!(r.failure.unwrap().problem, Problem::WrongKey { .. }));
}

struct SigningKeyFor;
impl SigningKeyFor {
    fn other() -> VerifyingKey {
        ed25519_dalek::SigningKey::from_bytes(&[42; 32]).verifying_key()
    }
}

/// An export with batches of several sizes, every receipt shape, and a key rotation
/// in the middle: the material for the tampering tests.
fn rich_export(dir: &Path) -> (Vec<String>, VerifyingKey) {
    let j = open(dir, opts(3));
    for i in 0..4 {
        j.append(draft(i)).unwrap();
    }
    j.rotate_key(Requester::default()).unwrap();
    for i in 4..8 {
        j.append(draft(i)).unwrap();
    }
    j.flush().unwrap();
    let lines = export(&j);
    (lines, first_key_before_rotation(dir))
}

/// The first key a journal in `dir` sealed with (`keys/` has them all; the first
/// is the one the export's first receipt names).
fn first_key_before_rotation(dir: &Path) -> VerifyingKey {
    let keys = key::public_keys(dir).unwrap();
    let lines = store::read_lines(&dir.join("seg-000001.jsonl")).unwrap();
    let first: Receipt = serde_json::from_str(&lines[0]).unwrap();
    let id = first.seal.unwrap().key_id;
    keys.into_iter().find(|(k, _)| *k == id).unwrap().1
}

/// The byte a careful forger would put in place of `b`: a character of the same
/// kind (digit for digit, hex digit for hex digit, letter for letter), so the line
/// still parses wherever that is possible.
fn plausible(b: u8) -> u8 {
    match b {
        b'9' => b'0',
        b'0'..=b'8' => b + 1,
        b'f' => b'a',
        b'z' => b'g',
        b'a'..=b'y' => b + 1,
        b'Z' => b'A',
        b'A'..=b'Y' => b + 1,
        _ => b ^ 0x01,
    }
}

#[test]
fn changing_any_byte_of_a_receipt_fails_verification_at_that_receipt() {
    let d = tempfile::tempdir().unwrap();
    let (lines, key) = rich_export(d.path());
    assert!(verify_all(&lines, &key).is_ok());
    let mut tried = 0;
    let mut before = verify::Verifier::new(key, VerifyOptions::default());
    for (n, line) in lines.iter().enumerate() {
        let bytes = line.as_bytes();
        for pos in 0..bytes.len() {
            // Every byte twice: once as a forger would change it, once with a bit
            // flipped (which may leave the line not JSON, or not UTF-8).
            for new in [plausible(bytes[pos]), bytes[pos] ^ 0x01] {
                let mut changed = bytes.to_vec();
                changed[pos] = new;
                // The lines before it verified (in `before`); the lines after it
                // cannot change where the first failure is.
                let f = before.clone().push(&changed).err().unwrap_or_else(|| {
                    panic!("line {} byte {pos} ({:?} -> {:?}) still verifies", n + 1, bytes[pos] as char, new as char)
                });
                assert_eq!(f.line, n + 1, "line {} byte {pos}: failed at line {} instead: {}", n + 1, f.line, f.problem);
                tried += 1;
            }
        }
        before.push(bytes).unwrap();
    }
    // The same through the whole-export API, for one line.
    let mut all: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
    all[4][20] ^= 0x01;
    assert_eq!(verify_lines(&all, &key).failure.unwrap().line, 5);
    assert!(tried > 10_000, "{tried}");
}

#[test]
fn deleted_duplicated_and_reordered_receipts_are_named() {
    let d = tempfile::tempdir().unwrap();
    let (lines, key) = rich_export(d.path());
    let n = lines.len();
    let check = |edited: Vec<String>, line: usize, what: &str| {
        let r = verify_all(&edited, &key);
        let f = r.failure.unwrap_or_else(|| panic!("{what}: still verifies"));
        assert_eq!(f.line, line, "{what}: {}", f.problem);
        f.problem
    };
    for k in 1..n - 1 {
        let mut e = lines.clone();
        e.remove(k);
        assert!(matches!(check(e, k + 1, "delete"), Problem::Gap { .. }), "deleting line {}", k + 1);

        let mut e = lines.clone();
        e.insert(k, lines[k].clone());
        assert_eq!(check(e, k + 2, "duplicate"), Problem::Duplicate(k as u64 + 1));

        let mut e = lines.clone();
        e.swap(k, k + 1);
        assert!(matches!(check(e, k + 1, "swap"), Problem::Gap { .. }));
    }
    // The first receipt gone: the export no longer starts the chain.
    assert_eq!(check(lines[1..].to_vec(), 1, "delete first"), Problem::NotGenesis(2));
    // A line moved far back.
    let mut e = lines.clone();
    let moved = e.remove(1);
    e.insert(4, moved);
    assert!(matches!(check(e, 2, "move"), Problem::Gap { .. }));
    let mut e = lines.clone();
    e.insert(5, lines[2].clone());
    assert!(matches!(check(e, 6, "replay"), Problem::OutOfOrder { previous: 5, found: 3 }));
    // Cut off the end: still a valid chain, but the report says where it stops.
    // (The last batch is 6..8 and 9 is a batch of one: cut two.)
    let r = verify_all(&lines[..n - 2], &key);
    assert!(r.is_ok() && r.last_seq == Some(n as u64 - 2) && r.ends_mid_batch, "{r}");
}

#[test]
fn a_rotated_key_chain_verifies_from_the_first_public_key() {
    let d = tempfile::tempdir().unwrap();
    let first = {
        let j = open(d.path(), opts(4));
        let first_id = j.key_id();
        j.append(draft(0)).unwrap();
        let second_id = j.rotate_key(Requester::default()).unwrap().new_key_id;
        assert_ne!(second_id, first_id);
        assert_eq!(j.key_id(), second_id);
        j.append(draft(1)).unwrap();
        j.append(draft(2)).unwrap();
        let by = Requester::person("alice", 1000, 4242, "/usr/bin/agentctl");
        let third = j.rotate_key(by).unwrap();
        assert_eq!((third.seq, third.old_key_id.as_str()), (5, second_id.as_str()), "{third:?}");
        let third_id = third.new_key_id;
        j.append(draft(3)).unwrap();
        j.close().unwrap();
        assert_eq!(NodeKey::load(d.path()).unwrap().key_id(), third_id, "node.key is the newest key");
        assert_eq!(key::public_keys(d.path()).unwrap().len(), 3, "every public key kept");
        first_id
    };
    // Reopened: goes on with the newest key.
    let j = open(d.path(), opts(4));
    j.append(draft(4)).unwrap();
    j.flush().unwrap();
    let lines = export(&j);
    let key = first_key_before_rotation(d.path());
    assert_eq!(key::key_id(&key), first);
    let r = verify_all(&lines, &key);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.key_ids.len(), 3);
    assert_eq!(r.key_ids[0], first);
    assert_eq!(r.key_ids[2], j.key_id());

    let rot: Receipt = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(rot.kind, ReceiptType::KeyRotation);
    assert_eq!(rot.seal.as_ref().unwrap().key_id, first, "a rotation is sealed by the old key");
    assert_eq!(rot.action.parameters["new_key_id"], r.key_ids[1]);
    let after: Receipt = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(after.seal.unwrap().key_id, r.key_ids[1]);
    // The second rotation names who asked for it (the first was asked by nobody).
    let rot2: Receipt = serde_json::from_str(&lines[4]).unwrap();
    assert_eq!(rot2.kind, ReceiptType::KeyRotation);
    assert_eq!((rot2.requester.owner.as_str(), rot2.requester.uid, rot2.requester.pid), ("alice", Some(1000), Some(4242)));
    assert_eq!(rot.requester, Requester::default());

    // The newest key alone does not vouch for the start of the chain...
    let newest = NodeKey::load(d.path()).unwrap().public_key();
    assert!(matches!(verify_all(&lines, &newest).failure.unwrap().problem, Problem::WrongKey { .. }));
    // ...but does for the receipts it sealed (seq 6 on).
    let tail: Vec<_> = lines.iter().skip(5).map(String::as_bytes).collect();
    let r = verify_lines_with(tail, &newest, &any_start());
    assert!(r.is_ok() && r.first_seq == Some(6), "{r}");
    // Nor does the first key vouch for them without the rotations in between.
    let mut cut = lines.clone();
    cut.drain(1..5);
    let r = verify_lines_with(cut.iter().map(String::as_bytes), &key, &any_start());
    assert!(matches!(r.failure.unwrap(), verify::Failure { line: 2, problem: Problem::Gap { .. }, .. }));
    let r = verify_lines_with(lines[5..].iter().map(String::as_bytes), &key, &any_start());
    assert!(matches!(r.failure.unwrap(), verify::Failure { line: 1, problem: Problem::WrongKey { .. }, .. }));
}

#[test]
fn a_crash_at_any_byte_keeps_every_durable_receipt() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let (durable, seg_len_durable, full) = {
        let j = open(&src, opts(4));
        for i in 0..10 {
            j.append(draft(i)).unwrap();
        }
        let durable = j.flush().unwrap();
        let len = fs::metadata(src.join("seg-000001.jsonl")).unwrap().len();
        for i in 10..20 {
            j.append(draft(i)).unwrap();
        }
        j.close().unwrap();
        (durable, len, fs::read(src.join("seg-000001.jsonl")).unwrap())
    };
    assert_eq!(durable, 10);
    let key_text = fs::read(src.join("node.key")).unwrap();
    let line_ends: Vec<usize> = full.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i + 1).collect();
    // Where each batch ends, and the seq of its last receipt.
    let batch_ends: Vec<(usize, u64)> = store::read_lines(&src.join("seg-000001.jsonl"))
        .unwrap()
        .iter()
        .zip(&line_ends)
        .filter_map(|(l, &end)| {
            let r: Receipt = serde_json::from_str(l).unwrap();
            (r.seal.unwrap().batch_last_seq == r.seq).then_some((end, r.seq))
        })
        .collect();
    assert_eq!(batch_ends.len(), 6, "batches 1-4, 5-8, 9-10, 11-14, 15-18, 19-20");
    // Every offset around each line end, and a spread of offsets inside lines.
    let mut offsets: Vec<usize> = line_ends.iter().flat_map(|&e| [e - 1, e, e + 1]).collect();
    offsets.extend((seg_len_durable as usize..full.len()).step_by(37));
    offsets.retain(|&o| o >= seg_len_durable as usize && o <= full.len());
    offsets.sort_unstable();
    offsets.dedup();
    assert!(offsets.len() > 100);
    for (k, &cut) in offsets.iter().enumerate() {
        // What a power cut leaves: the fsynced part, and some prefix of the rest.
        let dir = d.path().join(format!("crash-{k}"));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("seg-000001.jsonl"), &full[..cut]).unwrap();
        fs::write(dir.join("node.key"), &key_text).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(dir.join("node.key"), fs::Permissions::from_mode(0o600)).unwrap();

        // What survives: every whole batch (a batch is acknowledged only whole).
        let whole = batch_ends.iter().filter(|b| b.0 <= cut).map(|b| b.1).max().unwrap_or(0);
        let j = open(&dir, opts(4));
        assert_eq!(j.durable_seq(), whole, "cut at {cut}");
        assert!(j.durable_seq() >= durable, "cut at {cut}: lost an acknowledged receipt");
        let torn = !batch_ends.iter().any(|b| b.0 == cut);
        assert_eq!(j.recovery().truncated_bytes > 0, torn, "cut at {cut}: {:?}", j.recovery());
        assert_eq!(j.recovery().saved_tail.is_some(), torn);
        j.append(draft(100)).unwrap();
        j.flush().unwrap();
        let lines = export(&j);
        assert_eq!(lines.len() as u64, whole + 1);
        let r = verify_all(&lines, &first_key(&dir));
        assert!(r.is_ok(), "cut at {cut}: {r}");
    }
}

#[test]
fn zeros_after_a_power_cut_are_cut_off_and_kept_aside() {
    let d = tempfile::tempdir().unwrap();
    {
        let j = open(d.path(), opts(4));
        for i in 0..6 {
            j.append(draft(i)).unwrap();
        }
    }
    let seg = d.path().join("seg-000001.jsonl");
    let good = fs::metadata(&seg).unwrap().len();
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    bytes.extend_from_slice(b"\n");
    fs::write(&seg, &bytes).unwrap();
    let j = open(d.path(), opts(4));
    let Recovery { last_seq, truncated_bytes, saved_tail, cut_at, .. } = j.recovery().clone();
    assert_eq!((last_seq, truncated_bytes), (6, 4097));
    assert_eq!(fs::read(saved_tail.unwrap()).unwrap().len(), 4097);
    assert_eq!(cut_at.unwrap().1, 7);
    assert_eq!(fs::metadata(&seg).unwrap().len(), good);
    j.append(draft(6)).unwrap();
    j.flush().unwrap();
    assert!(verify_all(&export(&j), &first_key(d.path())).is_ok());
}

#[test]
fn a_rotation_cut_short_by_a_crash_is_finished_or_abandoned() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // Abandoned: the new key was written, its receipt never was.
    let first_id = {
        let j = open(dir, opts(4));
        j.append(draft(0)).unwrap();
        key::prepare_rotation(dir).unwrap();
        j.key_id()
    };
    assert!(dir.join("node.key.next").exists());
    {
        let j = open(dir, opts(4));
        assert_eq!(j.recovery().rotation_finished, Some(false));
        assert_eq!(j.key_id(), first_id);
        assert!(!dir.join("node.key.next").exists());
        assert_eq!(key::public_keys(dir).unwrap().len(), 1);
    }
    // Finished: the receipt was durable, the rename had not happened.
    let old_key = fs::read(dir.join("node.key")).unwrap();
    let new_id = {
        let j = open(dir, opts(4));
        j.rotate_key(Requester::default()).unwrap().new_key_id
    };
    fs::rename(dir.join("node.key"), dir.join("node.key.next")).unwrap();
    fs::write(dir.join("node.key"), &old_key).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(dir.join("node.key"), fs::Permissions::from_mode(0o600)).unwrap();
    let j = open(dir, opts(4));
    assert_eq!(j.recovery().rotation_finished, Some(true));
    assert_eq!(j.key_id(), new_id);
    j.append(draft(1)).unwrap();
    j.flush().unwrap();
    let r = verify_all(&export(&j), &first_key_before_rotation(dir));
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.key_ids, vec![first_id, new_id]);
}

#[test]
fn a_journal_refuses_a_key_that_did_not_seal_it() {
    let d = tempfile::tempdir().unwrap();
    {
        let j = open(d.path(), opts(4));
        j.append(draft(0)).unwrap();
    }
    let other = NodeKey::ephemeral(ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
    let e = Journal::open(d.path(), other, "node-1", opts(4)).err().unwrap();
    assert!(matches!(e, StoreError::KeyMismatch { seq: 1, .. }), "{e}");
    assert!(e.to_string().contains("restore the node key"), "{e}");
}

#[test]
fn segments_roll_and_retention_leaves_a_tail_that_verifies_from_where_it_starts() {
    let d = tempfile::tempdir().unwrap();
    let o = JournalOptions { segment_bytes: 6000, max_segments: Some(3), ..opts(2) };
    let j = open(d.path(), o);
    for i in 0..60 {
        j.append(draft(i)).unwrap();
    }
    j.flush().unwrap();
    let segs: Vec<_> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    assert_eq!(segs.len(), 3, "{segs:?}");
    assert!(!d.path().join("seg-000001.jsonl").exists());
    let lines = export(&j);
    assert!(lines.len() < 60);
    let key = first_key(d.path());
    let r = verify_all(&lines, &key);
    assert!(matches!(r.failure.unwrap().problem, Problem::NotGenesis(_)));
    let r = verify_lines_with(lines.iter().map(String::as_bytes), &key, &any_start());
    assert!(r.is_ok(), "{r}");
    assert!(!r.starts_at_genesis);
    assert_eq!(r.first_seq, Some(61 - lines.len() as u64));
    assert_eq!(r.last_seq, Some(60));
    // Reopening resumes from the newest segment.
    drop(j);
    let j = open(d.path(), JournalOptions { segment_bytes: 6000, max_segments: Some(3), ..opts(2) });
    assert_eq!(j.append(draft(60)).unwrap(), 61);
}

#[test]
fn queries_filter_by_identity_action_verdict_type_and_time() {
    let d = tempfile::tempdir().unwrap();
    let j = open(d.path(), opts(8));
    for i in 0..20 {
        j.append(draft(i)).unwrap();
    }
    j.flush().unwrap();
    let count = |f: Filter| j.query(f).unwrap().collect::<Result<Vec<_>, _>>().unwrap().len();
    assert_eq!(count(Filter::default()), 20);
    assert_eq!(count(Filter { identity: Some("claude".into()), ..Filter::default() }), 10);
    assert_eq!(count(Filter { action_kind: Some("egress".into()), ..Filter::default() }), 5);
    assert_eq!(count(Filter { verdict: Some(Verdict::Deny), ..Filter::default() }), 5);
    assert_eq!(count(Filter { receipt_type: Some(ReceiptType::Bind), ..Filter::default() }), 5);
    let t = |s: u64| UNIX_EPOCH + Duration::from_secs(1_767_225_600 + s);
    // Times are 1_767_225_600 + i seconds (and 123 ns): since is inclusive, until is not.
    assert_eq!(count(Filter { since: Some(t(5)), until: Some(t(10)), ..Filter::default() }), 5);
    assert_eq!(count(Filter { identity: Some("claude".into()), verdict: Some(Verdict::WouldDeny), since: Some(t(10)), ..Filter::default() }), 3);
}

#[test]
fn the_window_makes_a_lone_receipt_durable_without_a_flush() {
    let d = tempfile::tempdir().unwrap();
    let o = JournalOptions { window: Duration::from_millis(20), ..JournalOptions::default() };
    let j = open(d.path(), o);
    let seq = j.append(draft(0)).unwrap();
    assert!(j.wait_durable(seq, Duration::from_secs(5)).unwrap());
    assert_eq!(j.durable_seq(), 1);
    assert_eq!(export(&j).len(), 1);
}

#[test]
fn a_float_is_refused_and_leaves_no_hole_in_the_chain() {
    let d = tempfile::tempdir().unwrap();
    let j = open(d.path(), opts(4));
    j.append(draft(0)).unwrap();
    let e = j.append(draft(1).param("ratio", 0.5)).unwrap_err();
    assert!(e.to_string().contains("action.parameters.ratio: 0.5 is not an integer"), "{e}");
    assert_eq!(j.append(draft(2)).unwrap(), 2);
    j.flush().unwrap();
    assert!(verify_all(&export(&j), &first_key(d.path())).is_ok());
}

#[test]
fn many_threads_append_into_one_chain() {
    let d = tempfile::tempdir().unwrap();
    let j = std::sync::Arc::new(open(d.path(), JournalOptions { window: Duration::from_millis(5), ..opts(64) }));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || (0..500).map(|i| j.append(draft(t * 1000 + i)).unwrap()).collect::<Vec<_>>())
        })
        .collect();
    let mut seqs: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=2000).collect::<Vec<_>>());
    j.flush().unwrap();
    let r = verify_all(&export(&j), &first_key(d.path()));
    assert!(r.is_ok() && r.receipts == 2000, "{r}");
}

/// Writes an export and the first public key for docs/receipts.md's Python
/// sketch: `AGENTD_RECEIPTS_EXPORT=/some/dir cargo test ... write_an_export`.
#[test]
fn write_an_export_for_other_verifiers() {
    let Some(out) = std::env::var_os("AGENTD_RECEIPTS_EXPORT") else { return };
    let out = Path::new(&out);
    fs::create_dir_all(out).unwrap();
    let d = tempfile::tempdir().unwrap();
    let (lines, key) = rich_export(d.path());
    fs::write(out.join("export.jsonl"), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    fs::write(out.join("first.pub"), format!("{}\n", hex::encode(key.as_bytes()))).unwrap();
    let r = verify_file(&out.join("export.jsonl"), &verify::read_public_key(&out.join("first.pub")).unwrap()).unwrap();
    assert!(r.is_ok(), "{r}");
    println!("{r}");
    // And one with full-size batches (1024, 1024, 952): deep, uneven trees.
    let d = tempfile::tempdir().unwrap();
    let j = open(d.path(), opts(1024));
    for i in 0..3000 {
        j.append(draft(i)).unwrap();
    }
    j.flush().unwrap();
    fs::write(out.join("big.jsonl"), export(&j).iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    fs::write(out.join("big.pub"), format!("{}\n", NodeKey::load(d.path()).unwrap().public_hex())).unwrap();
}

/// `cargo test --release -p agent-daemon --lib receipts::tests::bench -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_receipts_per_second() {
    let n = std::env::var("AGENTD_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let base = std::env::var_os("AGENTD_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let d = tempfile::tempdir_in(base).unwrap();
    let r = bench::run(d.path(), n).unwrap();
    println!("{r}");
    // Read by `cargo xtask bench`.
    println!("BENCH receipts_per_sec={} raw_ed25519_signs_per_sec={}", r.receipts_per_sec, r.raw_ed25519_signs_per_sec);
    let lines = store::Receipts::new(d.path(), None).unwrap().map(|s| s.unwrap().line).collect::<Vec<_>>();
    assert_eq!(lines.len() as u64, n);
}

#[test]
fn the_tap_gets_each_durable_receipt_exactly_as_stored() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), opts(3));
    j.append(draft(0)).unwrap();
    j.flush().unwrap();
    let got: Arc<Mutex<Vec<sinks::Record>>> = Arc::default();
    let sink = got.clone();
    j.set_tap(Arc::new(move |records| sink.lock().unwrap().extend(records)));
    for i in 1..=7 {
        j.append(draft(i)).unwrap();
    }
    j.flush().unwrap();
    let got = got.lock().unwrap().clone();
    // Receipts before the tap was set are not replayed; the rest arrive in order.
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), (2..=8).collect::<Vec<_>>());
    let lines = export(&j);
    for r in &got {
        assert_eq!(r.line, lines[r.seq as usize - 1], "seq {}", r.seq);
        let stored: Receipt = serde_json::from_str(&r.line).unwrap();
        assert_eq!((r.id.as_str(), r.kind.as_str(), r.verdict.as_str(), r.host.as_str()), (stored.id.as_str(), stored.kind.as_str(), stored.decision.result.as_str(), "node-1"));
    }
    // draft(4) is a deny (warning), draft(5) an approved hold outcome (notice),
    // draft(6) a bind (notice), draft(7) a would-deny (notice).
    let sev: Vec<_> = got.iter().map(|r| r.severity).collect();
    use sinks::Severity::*;
    assert_eq!(sev, vec![Notice, Notice, Notice, Warning, Notice, Notice, Notice]);
    // A copy delivered to a sink verifies like the journal's own lines.
    let copy: Vec<String> = got.iter().map(|r| r.line.clone()).collect();
    assert!(verify_lines_with(&copy, &first_key(dir.path()), &any_start()).is_ok());
}

#[test]
fn severity_follows_what_was_stopped_and_what_needs_a_person() {
    use sinks::Severity::*;
    use store::severity_of;
    assert_eq!(severity_of(ReceiptType::Decision, Verdict::Deny), Warning);
    assert_eq!(severity_of(ReceiptType::Decision, Verdict::Kill), Warning);
    assert_eq!(severity_of(ReceiptType::Decision, Verdict::Audit), Info);
    assert_eq!(severity_of(ReceiptType::Decision, Verdict::Allow), Info);
    assert_eq!(severity_of(ReceiptType::Decision, Verdict::WouldDeny), Notice);
    assert_eq!(severity_of(ReceiptType::Hold, Verdict::Hold), Notice);
    assert_eq!(severity_of(ReceiptType::HoldOutcome, Verdict::Deny), Warning);
    assert_eq!(severity_of(ReceiptType::PolicyApply, Verdict::Ok), Notice);
    assert_eq!(severity_of(ReceiptType::IdentityRevoke, Verdict::Ok), Warning);
}

/// Issue 20: a journal whose writes fail keeps the receipts in memory, counts
/// what does not fit, and goes on by itself once writing works again: no
/// restart, no hole, and a gap receipt for what it could not keep.
#[test]
fn a_journal_that_cannot_write_goes_on_once_it_can_and_records_the_gap() {
    let d = tempfile::tempdir().unwrap();
    let jdir = d.path().join("journal");
    // Every batch starts a new segment, so a journal directory that is gone
    // makes the next write fail; four receipts may wait in memory.
    let o = JournalOptions { batch_max: 1, window: Duration::from_millis(1), segment_bytes: 1, max_pending: 4, ..JournalOptions::default() };
    let j = open(&jdir, o);
    j.append(draft(0)).unwrap();
    assert_eq!(j.flush().unwrap(), 1);
    assert_eq!(j.health(), store::Health::default());

    fs::rename(&jdir, d.path().join("away")).unwrap();
    fs::write(&jdir, b"not a directory").unwrap();
    j.append(draft(1)).unwrap();
    assert!(matches!(j.flush(), Err(StoreError::Failed(_))), "a flush says the receipts are not written");
    let h = j.health();
    assert!(h.degraded.is_some() && h.backlog == 1, "{h:?}");
    // The backlog takes four in all; then receipts are refused and counted.
    let mut taken = 1;
    let mut refused = 0;
    for i in 2..12 {
        let denial = Draft::decision("egress", format!("10.0.0.{i}:443"), Verdict::Deny)
            .requester(Requester::identity("flooder", "ab", "alice").with_identity_id(9));
        match j.append(denial) {
            Ok(_) => taken += 1,
            Err(StoreError::Backlogged(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(taken >= 4, "the backlog holds max_pending receipts (took {taken})");
    assert_eq!(taken + refused, 11);
    let h = j.health();
    assert_eq!((h.unrecorded, h.backlog), (refused, taken), "{h:?}");

    // Space back: the journal writes its backlog without being reopened.
    fs::remove_file(&jdir).unwrap();
    fs::rename(d.path().join("away"), &jdir).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while j.health().degraded.is_some() {
        assert!(std::time::Instant::now() < deadline, "still degraded: {:?}", j.health());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The next receipt brings the gap receipt in before it.
    let next = j.append(draft(3)).unwrap();
    assert_eq!(j.flush().unwrap(), next);
    assert_eq!(next, 1 + taken + 2, "one gap receipt, then this one; no seq was skipped");
    let lines = export(&j);
    let r = verify_all(&lines, &first_key(&jdir));
    assert!(r.is_ok(), "{r}");
    let receipts: Vec<Receipt> = j.iter().unwrap().map(|s| s.unwrap().receipt).collect();
    let gap = receipts.iter().find(|r| r.kind == ReceiptType::Gap).expect("a gap receipt");
    assert_eq!(gap.action.parameters["lost"], refused);
    assert_eq!((gap.action.kind.as_str(), gap.decision.result), ("egress", Verdict::Deny));
    assert_eq!((gap.requester.identity.as_str(), gap.requester.identity_id), ("flooder", Some(9)));
    assert_eq!(gap.action.parameters["cause"], "journal-unwritable");
    assert_eq!(j.health(), store::Health { unrecorded: refused, ..Default::default() });
}
