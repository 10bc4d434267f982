//! The receipts part of the API: list, show, export, the node key and its rotation.
//!
//! These read the journal's segment files, never the daemon's core, and the server
//! runs them on blocking threads: a long read holds up neither the event pipeline
//! nor other requests. Each read first flushes the journal, so what it returns is
//! what is on disk, and receipts travel as their stored lines, byte for byte, so
//! whatever a client gets verifies with the node's public key alone.

use std::{fs, path::Path, time::SystemTime};

use tonic::Status;

use crate::{
    api::pb,
    receipts::{
        key,
        query::{self, FindError, QueryError, Selector},
        Filter, Journal, Requester, StoreError,
    },
};

/// An export is sent in chunks of at most this many lines...
const CHUNK_LINES: usize = 512;
/// ...or about this many bytes, whichever comes first (gRPC messages stay small).
const CHUNK_BYTES: usize = 1 << 20;

fn invalid(e: QueryError) -> Status {
    Status::invalid_argument(format!("agentd: {e}"))
}

fn journal_error(e: StoreError) -> Status {
    Status::internal(format!("agentd: reading the receipt journal: {e}"))
}

/// Makes everything appended so far durable; returns the durable seq.
fn flush(journal: &Journal) -> Result<u64, Status> {
    journal.flush().map_err(|e| {
        Status::internal(format!("agentd: cannot make the latest receipts durable: {e} (see the agentd log: RECEIPT NOT RECORDED)"))
    })
}

/// An optional RFC 3339 field of a request ("" when unset).
fn when(what: &'static str, s: &str, now: SystemTime) -> Result<Option<SystemTime>, Status> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    query::parse_when(what, s, now).map(Some).map_err(invalid)
}

fn optional<T>(s: &str, parse: impl Fn(&str) -> Result<T, QueryError>) -> Result<Option<T>, Status> {
    if s.trim().is_empty() {
        Ok(None)
    } else {
        parse(s).map(Some).map_err(invalid)
    }
}

/// The filter and limit a list request asks for.
pub fn list_query(r: &pb::ReceiptsListRequest, now: SystemTime) -> Result<(Filter, usize), Status> {
    let filter = Filter {
        identity: Some(r.identity.trim().to_string()).filter(|i| !i.is_empty()),
        action_kind: optional(&r.action_kind, query::parse_action_kind)?,
        verdict: optional(&r.verdict, query::parse_verdict)?,
        receipt_type: optional(&r.receipt_type, query::parse_receipt_type)?,
        since: when("since", &r.since, now)?,
        until: when("until", &r.until, now)?,
    };
    let limit = query::limit(r.limit as usize).map_err(invalid)?;
    Ok((filter, limit))
}

/// `ReceiptsList`: the newest receipts that match.
pub fn list(journal: &Journal, r: &pb::ReceiptsListRequest, now: SystemTime) -> Result<pb::ReceiptsListReply, Status> {
    let (filter, limit) = list_query(r, now)?;
    let durable_seq = flush(journal)?;
    let found = query::newest(journal.iter().map_err(journal_error)?, &filter, limit).map_err(journal_error)?;
    Ok(pb::ReceiptsListReply { receipts: found.receipts.into_iter().map(|s| s.line).collect(), matched: found.matched, durable_seq })
}

/// `ReceiptsShow`: one receipt, by seq or id.
pub fn show(journal: &Journal, r: &pb::ReceiptsShowRequest) -> Result<pb::ReceiptsShowReply, Status> {
    let selector = match (r.seq, r.id.trim()) {
        (0, "") => return Err(Status::invalid_argument("agentd: say which receipt: a seq or an id")),
        (n, "") => Selector::Seq(n),
        (0, id) => match Selector::parse(id).map_err(invalid)? {
            Selector::Id(id) => Selector::Id(id),
            Selector::Seq(_) => return Err(Status::invalid_argument(format!("agentd: id {id:?} is a number; send it as seq"))),
        },
        _ => return Err(Status::invalid_argument("agentd: give a seq or an id, not both")),
    };
    flush(journal)?;
    match query::find(journal.iter().map_err(journal_error)?, &selector) {
        Ok(s) => Ok(pb::ReceiptsShowReply { receipt: s.line }),
        Err(FindError::Store(e)) => Err(journal_error(e)),
        Err(e @ FindError::Ambiguous { .. }) => Err(Status::invalid_argument(format!("agentd: {e}"))),
        Err(e) => Err(Status::not_found(format!("agentd: {e} (`agentctl receipts list` shows the newest)"))),
    }
}

/// What an export request asks for: (since, until).
pub fn export_span(r: &pb::ReceiptsExportRequest, now: SystemTime) -> Result<(Option<SystemTime>, Option<SystemTime>), Status> {
    Ok((when("since", &r.since, now)?, when("until", &r.until, now)?))
}

/// `ReceiptsExport`: the run of the chain between `since` and `until`, as stored,
/// handed to `send` in chunks; stops early (without an error) when `send` returns
/// false, i.e. the client went away.
pub fn export(
    journal: &Journal,
    (since, until): (Option<SystemTime>, Option<SystemTime>),
    mut send: impl FnMut(pb::ReceiptsExportChunk) -> bool,
) -> Result<(), Status> {
    flush(journal)?;
    let mut chunk = pb::ReceiptsExportChunk::default();
    let mut bytes = 0;
    for r in query::span(journal.iter().map_err(journal_error)?, since, until) {
        let line = r.map_err(journal_error)?.line;
        bytes += line.len();
        chunk.lines.push(line);
        if chunk.lines.len() >= CHUNK_LINES || bytes >= CHUNK_BYTES {
            if !send(std::mem::take(&mut chunk)) {
                return Ok(());
            }
            bytes = 0;
        }
    }
    if !chunk.lines.is_empty() {
        send(chunk);
    }
    Ok(())
}

/// A node key as the API shows it, from its public key file in `keys/`. A missing
/// or unreadable file leaves `public_key` and `created_at` empty.
fn key_pb(key_dir: &Path, key_id: &str) -> pb::ReceiptKey {
    let path = key::public_path(key_dir, key_id);
    let public_key = fs::read_to_string(&path)
        .ok()
        .and_then(|t| key::parse_public(&t).ok())
        .filter(|k| key::key_id(k) == key_id)
        .map(|k| hex::encode(k.as_bytes()))
        .unwrap_or_default();
    let created_at = fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .filter(|_| !public_key.is_empty())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    pb::ReceiptKey { key_id: key_id.to_string(), public_key, public_key_path: path.display().to_string(), created_at }
}

/// `ReceiptsKeyShow`: the key in force now, and the one that sealed the oldest
/// receipt kept (what a whole export verifies with).
pub fn key_show(journal: &Journal) -> Result<pb::ReceiptsKeyShowReply, Status> {
    let durable_seq = flush(journal)?;
    let current_id = journal.key_id();
    let current = key_pb(journal.key_dir(), &current_id);
    if current.public_key.is_empty() {
        return Err(Status::internal(format!(
            "agentd: the public half of the receipt key {current_id} is missing or damaged at {}; restart agentd to write it again",
            current.public_key_path
        )));
    }
    let oldest = journal.iter().map_err(journal_error)?.next().transpose().map_err(journal_error)?;
    let (first, first_seq) = match oldest {
        Some(s) => {
            let id = s.receipt.seal.map(|seal| seal.key_id).unwrap_or_default();
            (if id == current_id { current.clone() } else { key_pb(journal.key_dir(), &id) }, s.receipt.seq)
        }
        None => (current.clone(), 0),
    };
    Ok(pb::ReceiptsKeyShowReply { current: Some(current), first: Some(first), first_seq, durable_seq })
}

/// `ReceiptsKeyRotate`: a new node key; the rotation receipt names `by`. The
/// caller must already be allowed to change enforcement.
pub fn rotate(journal: &Journal, by: Requester) -> Result<pb::ReceiptsKeyRotateReply, Status> {
    let r = journal
        .rotate_key(by)
        .map_err(|e| Status::internal(format!("agentd: the receipt key was not rotated: {e}; the old key stays in force")))?;
    Ok(pb::ReceiptsKeyRotateReply { old_key_id: r.old_key_id, key: Some(key_pb(journal.key_dir(), &r.new_key_id)), seq: r.seq })
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::receipts::{verify, Draft, Receipt, ReceiptType, Verdict, VerifyOptions};

    /// The journal the daemon opens in `<state>/receipts`, with `n` denials by
    /// identity "a" and, between them, policy applies by alice.
    fn journal(state: &Path, n: u64) -> Arc<Journal> {
        let j = super::super::open_receipts(state).unwrap();
        for i in 0..n {
            let d = if i % 2 == 0 {
                Draft::decision("exec", format!("/bin/t{i}"), Verdict::Deny).requester(Requester::identity("a", "", ""))
            } else {
                Draft::policy_apply("dev", i as u32, "9c").requester(alice())
            };
            j.append(d).unwrap();
        }
        // Not flushed: every read must make these durable first.
        j
    }

    fn alice() -> Requester {
        Requester::person("alice", 1000, 4242, "/usr/bin/agentctl")
    }

    fn parsed(line: &str) -> Receipt {
        serde_json::from_str(line).unwrap()
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn list_filters_flushes_and_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let j = journal(d.path(), 10);
        assert_eq!(j.durable_seq(), 0, "nothing durable before the list");
        let req = pb::ReceiptsListRequest { identity: "a".into(), verdict: "deny".into(), limit: 3, ..Default::default() };
        let r = list(&j, &req, now()).unwrap();
        assert_eq!((r.matched, r.durable_seq), (5, 10));
        let seqs: Vec<u64> = r.receipts.iter().map(|l| parsed(l).seq).collect();
        assert_eq!(seqs, vec![5, 7, 9], "the newest three, oldest first");
        let r = list(&j, &pb::ReceiptsListRequest { action_kind: "policy-apply".into(), ..Default::default() }, now()).unwrap();
        assert_eq!(r.receipts.len(), 5);
        assert!(r.receipts.iter().all(|l| parsed(l).requester.owner == "alice"));
        let since = pb::ReceiptsListRequest { since: "1m".into(), until: humantime::format_rfc3339(now() + Duration::from_secs(60)).to_string(), ..Default::default() };
        assert_eq!(list(&j, &since, now()).unwrap().matched, 10);
        let past = pb::ReceiptsListRequest { until: "1m".into(), ..Default::default() };
        assert_eq!(list(&j, &past, now()).unwrap().matched, 0);
    }

    #[test]
    fn bad_list_requests_say_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let j = journal(d.path(), 1);
        for (req, want) in [
            (pb::ReceiptsListRequest { verdict: "blocked".into(), ..Default::default() }, "unknown verdict \"blocked\""),
            (pb::ReceiptsListRequest { action_kind: "connect".into(), ..Default::default() }, "connects and sends are `egress`"),
            (pb::ReceiptsListRequest { receipt_type: "x".into(), ..Default::default() }, "unknown receipt type"),
            (pb::ReceiptsListRequest { since: "last week".into(), ..Default::default() }, "since \"last week\" is neither"),
            (pb::ReceiptsListRequest { limit: 5000, ..Default::default() }, "agentctl receipts export"),
        ] {
            let e = list(&j, &req, now()).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(want), "{}", e.message());
        }
    }

    #[test]
    fn show_by_seq_or_id() {
        let d = tempfile::tempdir().unwrap();
        let j = journal(d.path(), 6);
        let r = show(&j, &pb::ReceiptsShowRequest { seq: 4, ..Default::default() }).unwrap();
        let four = parsed(&r.receipt);
        assert_eq!((four.seq, four.kind), (4, ReceiptType::PolicyApply));
        let by_id = show(&j, &pb::ReceiptsShowRequest { id: four.id[..12].to_uppercase(), ..Default::default() }).unwrap();
        assert_eq!(by_id.receipt, r.receipt, "an id prefix, in any case");
        let e = show(&j, &pb::ReceiptsShowRequest { seq: 7, ..Default::default() }).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("no receipt 7 (the journal's receipts are seq 1..6)"), "{}", e.message());
        let e = show(&j, &pb::ReceiptsShowRequest::default()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = show(&j, &pb::ReceiptsShowRequest { seq: 1, id: four.id.clone() }).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn an_export_is_the_stored_bytes_and_verifies_across_a_rotation() {
        let d = tempfile::tempdir().unwrap();
        let j = journal(d.path(), 700);
        let first = key_show(&j).unwrap();
        assert_eq!((first.first_seq, first.durable_seq), (1, 700));
        let before = first.current.clone().unwrap();
        assert_eq!(first.first, first.current, "not rotated yet: the first key is the current one");
        let rotated = rotate(&j, alice()).unwrap();
        assert_eq!((rotated.seq, rotated.old_key_id.as_str()), (701, before.key_id.as_str()));
        for _ in 0..5 {
            j.append(Draft::decision("write", "/etc/passwd", Verdict::Kill)).unwrap();
        }
        let mut chunks = Vec::new();
        export(&j, (None, None), |c| {
            chunks.push(c);
            true
        })
        .unwrap();
        assert_eq!(chunks.iter().map(|c| c.lines.len()).collect::<Vec<_>>(), vec![512, 194], "whole lines, in chunks");
        let exported: String = chunks.iter().flat_map(|c| c.lines.iter()).map(|l| format!("{l}\n")).collect();
        let mut stored = Vec::new();
        let mut segs: Vec<_> = fs::read_dir(j.dir()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "jsonl")).collect();
        segs.sort();
        for s in segs {
            stored.extend(fs::read(s).unwrap());
        }
        assert_eq!(exported.as_bytes(), stored.as_slice(), "byte for byte what the journal stored");

        // Verifies with the first public key alone, through the rotation.
        let pub_file = fs::read_to_string(&before.public_key_path).unwrap();
        assert_eq!(pub_file.trim(), before.public_key);
        let k = key::parse_public(&pub_file).unwrap();
        let report = verify::verify_lines(exported.lines(), &k);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.key_ids, vec![before.key_id.clone(), rotated.key.as_ref().unwrap().key_id.clone()]);
        let rot = parsed(exported.lines().nth(700).unwrap());
        assert_eq!((rot.kind, rot.requester.owner.as_str(), rot.requester.uid), (ReceiptType::KeyRotation, "alice", Some(1000)));

        // After the rotation: the current key is the new one, the first the old one.
        let now_keys = key_show(&j).unwrap();
        assert_eq!(now_keys.current, rotated.key);
        assert_eq!(now_keys.first.unwrap().key_id, before.key_id);
        assert!(!now_keys.current.unwrap().created_at.is_empty());

        // A client that goes away stops the export.
        let mut calls = 0;
        export(&j, (None, None), |_| {
            calls += 1;
            false
        })
        .unwrap();
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_time_bounded_export_verifies_from_where_it_starts() {
        let d = tempfile::tempdir().unwrap();
        let j = super::super::open_receipts(d.path()).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        for i in 0..30 {
            j.append(Draft::decision("egress", "10.0.0.1:443", Verdict::Deny).at(t0 + Duration::from_secs(i))).unwrap();
        }
        let span = export_span(
            &pb::ReceiptsExportRequest { since: "2026-01-01T00:00:10Z".into(), until: "2026-01-01T02:00:20+02:00".into() },
            now(),
        )
        .unwrap();
        let mut lines = Vec::new();
        export(&j, span, |c| {
            lines.extend(c.lines);
            true
        })
        .unwrap();
        let k = key::parse_public(&key_show(&j).unwrap().current.unwrap().public_key).unwrap();
        let r = verify::verify_lines_with(lines.iter().map(String::as_bytes), &k, &VerifyOptions { any_start: true });
        assert!(r.is_ok(), "{r}");
        assert_eq!((r.first_seq, r.last_seq, r.receipts), (Some(11), Some(20), 10));
        let bad = export_span(&pb::ReceiptsExportRequest { since: "soon".into(), ..Default::default() }, now()).unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    }
}
