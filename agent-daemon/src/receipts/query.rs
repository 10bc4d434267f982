//! What people ask of the journal (`agentctl receipts list | show | export`): the
//! words and times they ask in, checked once with errors that list what would have
//! been understood, and the answers: the newest receipts matching a [`Filter`], one
//! receipt by seq or id, and a contiguous run of the chain for an export.
//!
//! agentctl checks the words before it asks and agentd checks them again for any
//! other client of the API, with the same functions, so a typo reads the same either
//! way.

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime},
};

use super::{
    model::{ReceiptType, Verdict},
    store::{Filter, Stored, StoreError},
};

/// The action kinds of an agent's actions; administrative receipts use their
/// receipt type as the kind (see [`ReceiptType::is_admin`]).
pub const AGENT_ACTION_KINDS: [&str; 6] = ["exec", "write", "egress", "raw-socket", "system", "unix"];

/// How many receipts a list returns unless told otherwise.
pub const DEFAULT_LIMIT: usize = 100;

/// The most a list returns: one reply holds them all, and an export is the way to
/// read more.
pub const MAX_LIMIT: usize = 1000;

/// A question that cannot be asked as written. `what` is the flag or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown verdict {0:?}; one of: {verdicts}", verdicts = verdict_names())]
    Verdict(String),
    #[error("unknown action kind {0:?}; one of: {kinds}{hint}", kinds = action_kind_names(), hint = kind_hint(.0))]
    ActionKind(String),
    #[error("unknown receipt type {0:?}; one of: {types}", types = type_names())]
    ReceiptType(String),
    #[error("{what} {value:?} is neither an RFC 3339 time (2026-01-01T12:00:00Z, 2026-01-01T14:00:00+02:00) nor a duration ago (90s, 10m, 2h, 1d)")]
    Time { what: &'static str, value: String },
    #[error("{what} {value:?} reaches back before 1970")]
    TooFarBack { what: &'static str, value: String },
    #[error("{0:?} is neither a seq (a number from 1) nor a receipt id (64 hex characters, or a prefix of at least 8)")]
    Selector(String),
    #[error("limit {0} is more than {MAX_LIMIT}; read more with `agentctl receipts export` (its --since and --until pick the range)")]
    Limit(usize),
}

fn verdict_names() -> String {
    Verdict::ALL.map(Verdict::as_str).join(", ")
}

fn type_names() -> String {
    ReceiptType::ALL.map(ReceiptType::as_str).join(", ")
}

fn action_kind_names() -> String {
    action_kinds().collect::<Vec<_>>().join(", ")
}

fn kind_hint(kind: &str) -> &'static str {
    match kind {
        "connect" | "tcp" | "udp" | "network" => " (connects and sends are `egress`)",
        "file" | "open" | "unlink" | "rename" => " (every file change is `write`)",
        _ => "",
    }
}

/// Every action kind a receipt can have.
pub fn action_kinds() -> impl Iterator<Item = &'static str> {
    AGENT_ACTION_KINDS.into_iter().chain(ReceiptType::ALL.into_iter().filter(|t| t.is_admin()).map(ReceiptType::as_str))
}

pub fn parse_verdict(s: &str) -> Result<Verdict, QueryError> {
    Verdict::from_name(s.trim()).ok_or_else(|| QueryError::Verdict(s.to_string()))
}

pub fn parse_action_kind(s: &str) -> Result<String, QueryError> {
    let s = s.trim();
    action_kinds().find(|k| *k == s).map(str::to_string).ok_or_else(|| QueryError::ActionKind(s.to_string()))
}

pub fn parse_receipt_type(s: &str) -> Result<ReceiptType, QueryError> {
    ReceiptType::from_name(s.trim()).ok_or_else(|| QueryError::ReceiptType(s.to_string()))
}

/// A point in time as a person writes it for `--since` and `--until`: an RFC 3339
/// time, with any offset (`2026-01-01T14:00:00+02:00`) or in UTC without one
/// (`2026-01-01 12:00:00`), or a duration (`90s`, `10m`, `2h`, `1d`, `1h 30m`)
/// before `now`. Durations are read as for `identity create --expires`, which
/// counts forward instead.
pub fn parse_when(what: &'static str, s: &str, now: SystemTime) -> Result<SystemTime, QueryError> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc).into());
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let ago: Duration = humantime::parse_duration(s).map_err(|_| QueryError::Time { what, value: s.to_string() })?;
    now.checked_sub(ago)
        .filter(|t| *t >= SystemTime::UNIX_EPOCH)
        .ok_or_else(|| QueryError::TooFarBack { what, value: s.to_string() })
}

/// Checks a list's limit: 0 is [`DEFAULT_LIMIT`].
pub fn limit(n: usize) -> Result<usize, QueryError> {
    match n {
        0 => Ok(DEFAULT_LIMIT),
        n if n > MAX_LIMIT => Err(QueryError::Limit(n)),
        n => Ok(n),
    }
}

/// Which receipt `receipts show` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Its place in the chain.
    Seq(u64),
    /// Its id, or the start of it (lowercase hex).
    Id(String),
}

impl Selector {
    /// A seq (digits) or an id: 64 hex characters, or a prefix of at least 8. A
    /// number is a seq; an id prefix that happens to be all digits needs more of
    /// the id until it has a letter (or all 64 characters).
    pub fn parse(s: &str) -> Result<Selector, QueryError> {
        let t = s.trim();
        let err = || QueryError::Selector(s.to_string());
        if !t.is_empty() && t.len() < 64 && t.bytes().all(|b| b.is_ascii_digit()) {
            return match t.parse::<u64>() {
                Ok(0) | Err(_) => Err(err()),
                Ok(n) => Ok(Selector::Seq(n)),
            };
        }
        if (8..=64).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Selector::Id(t.to_ascii_lowercase()));
        }
        Err(err())
    }
}

/// The newest receipts of a query, and how many matched in all.
#[derive(Debug, Default)]
pub struct Newest {
    /// At most the limit, oldest first.
    pub receipts: Vec<Stored>,
    pub matched: u64,
}

/// The newest `limit` receipts of `receipts` that match `filter`, oldest first.
pub fn newest(
    receipts: impl Iterator<Item = Result<Stored, StoreError>>,
    filter: &Filter,
    limit: usize,
) -> Result<Newest, StoreError> {
    let mut kept = VecDeque::with_capacity(limit.min(MAX_LIMIT));
    let mut matched = 0u64;
    for r in receipts {
        let r = r?;
        if !filter.matches(&r.receipt) {
            continue;
        }
        matched += 1;
        if kept.len() == limit {
            kept.pop_front();
        }
        if limit > 0 {
            kept.push_back(r);
        }
    }
    Ok(Newest { receipts: kept.into(), matched })
}

/// Why [`find`] found nothing to show.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no receipt {0} (the journal's receipts are seq {1}..{2})")]
    NoSeq(u64, u64, u64),
    #[error("the journal has no receipts yet")]
    Empty,
    #[error("no receipt has an id starting with {0}")]
    NoId(String),
    #[error("more than one receipt has an id starting with {prefix} (seq {first} and {second}); give more of the id")]
    Ambiguous { prefix: String, first: u64, second: u64 },
}

/// The one receipt `selector` names.
pub fn find(receipts: impl Iterator<Item = Result<Stored, StoreError>>, selector: &Selector) -> Result<Stored, FindError> {
    let mut found: Option<Stored> = None;
    let (mut first_seq, mut last_seq) = (None, 0);
    for r in receipts {
        let r = r?;
        first_seq.get_or_insert(r.receipt.seq);
        last_seq = r.receipt.seq;
        match selector {
            Selector::Seq(n) if r.receipt.seq == *n => return Ok(r),
            // Seqs only grow: past it, it is not there.
            Selector::Seq(n) if r.receipt.seq > *n => break,
            Selector::Seq(_) => {}
            Selector::Id(prefix) if r.receipt.id.starts_with(prefix.as_str()) => {
                if let Some(f) = &found {
                    return Err(FindError::Ambiguous { prefix: prefix.clone(), first: f.receipt.seq, second: r.receipt.seq });
                }
                // A whole id is unique: no need to read on.
                if prefix.len() == 64 {
                    return Ok(r);
                }
                found = Some(r);
            }
            Selector::Id(_) => {}
        }
    }
    match (selector, found, first_seq) {
        (_, Some(r), _) => Ok(r),
        (_, None, None) => Err(FindError::Empty),
        (Selector::Seq(n), None, Some(first)) => Err(FindError::NoSeq(*n, first, last_seq)),
        (Selector::Id(p), None, Some(_)) => Err(FindError::NoId(p.clone())),
    }
}

/// The receipts of an export: from the first whose time is at or after `since` up
/// to, not including, the first whose time is at or after `until`. A receipt's
/// `time` is when its action was decided, which can be a little earlier than a
/// receipt appended before it; cutting a run instead of filtering keeps the chain
/// whole, so the export verifies.
pub fn span(
    receipts: impl Iterator<Item = Result<Stored, StoreError>>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> impl Iterator<Item = Result<Stored, StoreError>> {
    let before_since = move |r: &Result<Stored, StoreError>| match (r, since) {
        (Ok(s), Some(since)) => s.receipt.system_time().is_none_or(|t| t < since),
        _ => false,
    };
    let before_until = move |r: &Result<Stored, StoreError>| match (r, until) {
        (Ok(s), Some(until)) => s.receipt.system_time().is_none_or(|t| t < until),
        _ => true,
    };
    receipts.skip_while(before_since).take_while(before_until)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receipts::{Draft, Journal, JournalOptions, NodeKey, Requester};
    use std::time::UNIX_EPOCH;

    #[test]
    fn words_are_checked_and_errors_list_the_choices() {
        assert_eq!(parse_verdict("would-deny"), Ok(Verdict::WouldDeny));
        let e = parse_verdict("denied").unwrap_err().to_string();
        assert!(e.starts_with("unknown verdict \"denied\"; one of: allow, deny, kill,"), "{e}");
        assert_eq!(parse_action_kind("raw-socket").as_deref(), Ok("raw-socket"));
        assert_eq!(parse_action_kind("key-rotation").as_deref(), Ok("key-rotation"));
        let e = parse_action_kind("connect").unwrap_err().to_string();
        assert!(e.contains("exec, write, egress, raw-socket, system, unix, policy-apply") && e.ends_with("(connects and sends are `egress`)"), "{e}");
        assert!(parse_action_kind("decision").is_err(), "decision is a receipt type, not an action kind");
        assert_eq!(parse_receipt_type("hold-outcome"), Ok(ReceiptType::HoldOutcome));
        assert!(parse_receipt_type("holds").unwrap_err().to_string().contains("decision, hold, hold-outcome"));
    }

    #[test]
    fn times_are_rfc3339_with_any_offset_or_a_duration_ago() {
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600); // 2026-01-01T00:00:00Z
        let at = |s| parse_when("--since", s, now);
        assert_eq!(at("2026-01-01T00:00:00Z"), Ok(now));
        assert_eq!(at("2026-01-01T02:00:00+02:00"), Ok(now), "an offset");
        assert_eq!(at("2026-01-01 00:00:00"), Ok(now), "UTC without Z");
        assert_eq!(at("2025-12-31T23:59:59.5Z"), Ok(now - Duration::from_millis(500)));
        assert_eq!(at("10m"), Ok(now - Duration::from_secs(600)));
        assert_eq!(at("2h"), Ok(now - Duration::from_secs(7200)));
        assert_eq!(at("1d"), Ok(now - Duration::from_secs(86_400)));
        assert_eq!(at(" 1h 30m "), Ok(now - Duration::from_secs(5400)));
        let e = at("yesterday").unwrap_err().to_string();
        assert!(e.starts_with("--since \"yesterday\" is neither an RFC 3339 time"), "{e}");
        assert!(matches!(at("100000d"), Err(QueryError::TooFarBack { .. })));
        assert!(at("2026-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn a_selector_is_a_seq_or_an_id() {
        assert_eq!(Selector::parse("42"), Ok(Selector::Seq(42)));
        assert_eq!(Selector::parse("4ABB333E"), Ok(Selector::Id("4abb333e".into())));
        let full = "0123456789".repeat(6) + "0123";
        assert_eq!(Selector::parse(&full), Ok(Selector::Id(full.clone())), "64 digits are an id");
        for bad in ["0", "", "abc", "4abb333g", &"a".repeat(65), "-3"] {
            assert!(Selector::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(limit(0), Ok(DEFAULT_LIMIT));
        assert_eq!(limit(MAX_LIMIT), Ok(MAX_LIMIT));
        assert!(limit(MAX_LIMIT + 1).unwrap_err().to_string().contains("agentctl receipts export"));
    }

    /// A journal of 12 receipts, one a second from 2026-01-01T00:00:00Z: seq 1, 4,
    /// 7, 10 are exec denials by "a", the others egress kills by "b".
    fn journal(dir: &std::path::Path) -> Journal {
        let opts = JournalOptions { batch_max: 5, window: Duration::from_secs(3600), ..JournalOptions::default() };
        let j = Journal::open(dir, NodeKey::load_or_create(dir).unwrap(), "node-1", opts).unwrap();
        for i in 0..12u64 {
            let at = UNIX_EPOCH + Duration::from_secs(1_767_225_600 + i);
            let d = if i % 3 == 0 {
                Draft::decision("exec", format!("/bin/t{i}"), Verdict::Deny).requester(Requester::identity("a", "", ""))
            } else {
                Draft::decision("egress", format!("10.0.0.{i}:443"), Verdict::Kill).requester(Requester::identity("b", "", ""))
            };
            j.append(d.at(at)).unwrap();
        }
        j.flush().unwrap();
        j
    }

    fn seqs(v: &[Stored]) -> Vec<u64> {
        v.iter().map(|s| s.receipt.seq).collect()
    }

    #[test]
    fn newest_keeps_the_last_matches_in_order() {
        let d = tempfile::tempdir().unwrap();
        let j = journal(d.path());
        let a = Filter { identity: Some("a".into()), ..Filter::default() };
        let n = newest(j.iter().unwrap(), &a, 3).unwrap();
        assert_eq!((seqs(&n.receipts), n.matched), (vec![4, 7, 10], 4));
        let n = newest(j.iter().unwrap(), &Filter { verdict: Some(Verdict::Kill), ..Filter::default() }, 100).unwrap();
        assert_eq!((n.receipts.len(), n.matched), (8, 8));
        assert!(n.receipts.iter().all(|s| s.receipt.action.kind == "egress"));
        let n = newest(j.iter().unwrap(), &Filter { identity: Some("nobody".into()), ..Filter::default() }, 10).unwrap();
        assert_eq!((n.receipts.len(), n.matched), (0, 0));
    }

    #[test]
    fn find_by_seq_or_id_prefix() {
        let d = tempfile::tempdir().unwrap();
        let j = journal(d.path());
        let all: Vec<Stored> = j.iter().unwrap().map(Result::unwrap).collect();
        assert_eq!(find(j.iter().unwrap(), &Selector::Seq(7)).unwrap(), all[6]);
        let e = find(j.iter().unwrap(), &Selector::Seq(13)).unwrap_err().to_string();
        assert_eq!(e, "no receipt 13 (the journal's receipts are seq 1..12)");
        let id = &all[4].receipt.id;
        assert_eq!(find(j.iter().unwrap(), &Selector::Id(id.clone())).unwrap(), all[4]);
        assert_eq!(find(j.iter().unwrap(), &Selector::Id(id[..10].to_string())).unwrap(), all[4]);
        assert!(matches!(find(j.iter().unwrap(), &Selector::Id("00000000ffff".into())), Err(FindError::NoId(_))));
        assert!(matches!(find(std::iter::empty(), &Selector::Seq(1)), Err(FindError::Empty)));
        // Two ids with the same first 8 characters: a prefix of 8 is then ambiguous.
        let twins = [&all[0], &all[1]].map(|s| {
            let mut s = (*s).clone();
            s.receipt.id.replace_range(..8, "abcdef01");
            s
        });
        let e = find(twins.into_iter().map(Ok), &Selector::Id("abcdef01".into())).unwrap_err();
        assert!(matches!(e, FindError::Ambiguous { first: 1, second: 2, .. }), "{e}");
    }

    #[test]
    fn a_span_is_a_contiguous_run_that_verifies() {
        let d = tempfile::tempdir().unwrap();
        let j = journal(d.path());
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(1_767_225_600 + s);
        let run = |since, until| -> Vec<Stored> { span(j.iter().unwrap(), since, until).map(Result::unwrap).collect() };
        assert_eq!(seqs(&run(None, None)), (1..=12).collect::<Vec<_>>());
        assert_eq!(seqs(&run(Some(t(3)), Some(t(8)))), vec![4, 5, 6, 7, 8], "since inclusive, until not");
        assert_eq!(seqs(&run(Some(t(20)), None)), Vec::<u64>::new());
        let key = crate::receipts::key::public_keys(d.path()).unwrap()[0].1;
        let lines: Vec<String> = run(Some(t(3)), Some(t(8))).into_iter().map(|s| s.line).collect();
        let opts = crate::receipts::VerifyOptions { any_start: true };
        let r = crate::receipts::verify::verify_lines_with(lines.iter().map(String::as_bytes), &key, &opts);
        assert!(r.is_ok() && r.first_seq == Some(4) && r.last_seq == Some(8), "{r}");
    }
}
