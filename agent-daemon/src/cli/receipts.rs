//! `agentctl receipts list | show | export | key show | key rotate`, which ask
//! agentd, and `agentctl receipts verify`, which needs no daemon.
//!
//! Receipts come from agentd as the lines it stored, and are printed from those:
//! `--json` is the receipts' own JSON (the fields of docs/receipts.md), and `export`
//! writes the lines byte for byte, so `receipts verify` checks exactly what agentd
//! signed.

use std::{
    io::Write as _,
    path::Path,
    time::SystemTime,
};

use serde::Serialize;
use serde_json::Value;
use tokio_stream::StreamExt as _;

use super::{
    client::Client,
    error::CliError,
    output::{self, key_values, or_dash, short_time},
    ReceiptsListArgs,
};
use crate::{
    api::pb,
    receipts::{
        query::{self, QueryError, Selector},
        verify::{self, VerifyOptions},
        Report,
    },
};

// ----- arguments, checked by clap before anything is asked ---------------------------

/// `--since`: an RFC 3339 time or a duration ago.
pub fn parse_since(s: &str) -> Result<SystemTime, QueryError> {
    query::parse_when("--since", s, SystemTime::now())
}

/// `--until`: an RFC 3339 time or a duration ago.
pub fn parse_until(s: &str) -> Result<SystemTime, QueryError> {
    query::parse_when("--until", s, SystemTime::now())
}

/// `--limit`: 1 to [`query::MAX_LIMIT`].
pub fn parse_limit(s: &str) -> Result<u32, String> {
    let n: usize = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if n == 0 {
        return Err("--limit must be at least 1".into());
    }
    query::limit(n).map(|n| n as u32).map_err(|e| e.to_string())
}

fn rfc3339(t: Option<SystemTime>) -> String {
    t.map(|t| humantime::format_rfc3339_nanos(t).to_string()).unwrap_or_default()
}

// ----- list ---------------------------------------------------------------------------

pub async fn list(socket: &Path, a: ReceiptsListArgs) -> Result<(), CliError> {
    if let (Some(s), Some(u)) = (a.since, a.until) {
        if s >= u {
            return Err(CliError::Usage(format!("--since {} is not before --until {}", rfc3339(Some(s)), rfc3339(Some(u)))));
        }
    }
    let req = pb::ReceiptsListRequest {
        identity: a.identity.unwrap_or_default(),
        action_kind: a.action.unwrap_or_default(),
        verdict: a.verdict.map(|v| v.as_str().to_string()).unwrap_or_default(),
        receipt_type: a.receipt_type.map(|t| t.as_str().to_string()).unwrap_or_default(),
        since: rfc3339(a.since),
        until: rfc3339(a.until),
        limit: a.limit,
    };
    let reply = Client::connect(socket).await?.receipts_list(req).await?;
    let receipts = parse_lines(&reply.receipts)?;
    if (receipts.len() as u64) < reply.matched {
        // On stderr, so `--json` stays one document.
        eprintln!(
            "agentctl: showing the newest {} of {} matching receipts (--limit, at most {}; `agentctl receipts export` has them all)",
            receipts.len(),
            reply.matched,
            query::MAX_LIMIT
        );
    }
    if a.json {
        return output::json(&receipts);
    }
    if receipts.is_empty() {
        return output::print(format!("no receipts match (the journal has {} durable receipts)", reply.durable_seq));
    }
    output::print(list_table(&receipts))
}

fn parse_lines(lines: &[String]) -> Result<Vec<Value>, CliError> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).map_err(|e| CliError::Failed(format!("agentd sent a receipt that is not JSON ({e}): {l}"))))
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// IDENTITY: the agent identity, or for a person's change `by USER`.
fn who(r: &Value) -> String {
    let q = &r["requester"];
    match (text(&q["identity"]), text(&q["owner"])) {
        (i, _) if !i.is_empty() => i,
        (_, o) if !o.is_empty() => format!("by {o}"),
        _ => "-".into(),
    }
}

/// VERDICT: the decision, and the outcome when it says more (`allow (approved)`).
fn verdict(r: &Value) -> String {
    let result = text(&r["decision"]["result"]);
    let outcome = text(&r["outcome"]);
    let usual = crate::receipts::Verdict::from_name(&result).map(|v| v.default_outcome());
    if outcome.is_empty() || usual == Some(outcome.as_str()) {
        or_dash(&result)
    } else {
        format!("{result} ({outcome})")
    }
}

/// RULE/REASON: the rule that decided (`#3 {path: ..., action: deny}`), or why
/// (`default`, `revoked`, a person's reason...).
fn rule(r: &Value) -> String {
    let d = &r["decision"];
    let (reason, rule) = (text(&d["reason"]), text(&d["rule"]));
    match d["rule_id"].as_u64() {
        Some(id) => {
            let mut s = if rule.is_empty() { format!("#{id}") } else { format!("#{id} {rule}") };
            if !reason.is_empty() && reason != "rule" {
                s.push_str(&format!(" ({reason})"));
            }
            s
        }
        None => or_dash(&reason),
    }
}

fn list_table(receipts: &[Value]) -> String {
    let mut t = output::table(&["SEQ", "TIME", "TYPE", "IDENTITY", "ACTION", "VERDICT", "RULE/REASON"]);
    for r in receipts {
        let action = match text(&r["action"]["target"]) {
            target if target.is_empty() => text(&r["action"]["kind"]),
            target => format!("{} {target}", text(&r["action"]["kind"])),
        };
        t.add_row(vec![text(&r["seq"]), short_time(&text(&r["time"])), text(&r["type"]), who(r), action, verdict(r), rule(r)]);
    }
    output::render_table(&t)
}

// ----- show ---------------------------------------------------------------------------

pub async fn show(socket: &Path, which: &Selector, json: bool) -> Result<(), CliError> {
    let req = match which {
        Selector::Seq(n) => pb::ReceiptsShowRequest { seq: *n, ..Default::default() },
        Selector::Id(id) => pb::ReceiptsShowRequest { id: id.clone(), ..Default::default() },
    };
    let reply = Client::connect(socket).await?.receipts_show(req).await?;
    let r = parse_lines(std::slice::from_ref(&reply.receipt))?.remove(0);
    if json {
        return output::json(&r);
    }
    output::print(show_text(&r))
}

/// The top-level members in the order a person reads a receipt: which one, what,
/// who, what was decided, who approved, then the chain and the seal.
const SHOW_ORDER: [&str; 13] =
    ["seq", "id", "time", "type", "outcome", "action", "requester", "decision", "approval", "host", "format", "prev_hash", "seal"];

/// Every member of a receipt as `path: value` lines (`requester.pid: 4242`), nothing
/// left out: members this agentctl does not know come last.
fn show_text(r: &Value) -> String {
    let mut pairs = Vec::new();
    let empty = serde_json::Map::new();
    let obj = r.as_object().unwrap_or(&empty);
    let rest = obj.keys().filter(|k| !SHOW_ORDER.contains(&k.as_str())).map(String::as_str);
    for k in SHOW_ORDER.into_iter().chain(rest) {
        if let Some(v) = obj.get(k) {
            flatten(k, v, &mut pairs);
        }
    }
    let pairs: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    key_values(&pairs)
}

fn flatten(path: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                flatten(&format!("{path}.{k}"), child, out);
            }
        }
        // The proof: one hash a line, in order from the leaf up.
        Value::Array(a) if path == "seal.proof" => {
            if a.is_empty() {
                out.push((path.into(), "[] (a batch of one: the receipt hash is the root's only leaf)".into()));
            }
            for (i, h) in a.iter().enumerate() {
                out.push((format!("{path}[{i}]"), text(h)));
            }
        }
        other => out.push((path.into(), text(other))),
    }
}

// ----- export -------------------------------------------------------------------------

pub async fn export(socket: &Path, since: Option<SystemTime>, until: Option<SystemTime>, output: Option<&Path>) -> Result<(), CliError> {
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            return Err(CliError::Usage(format!("--since {} is not before --until {}", rfc3339(Some(s)), rfc3339(Some(u)))));
        }
    }
    let mut c = Client::connect(socket).await?;
    let mut stream = c.receipts_export(rfc3339(since), rfc3339(until)).await?;
    let mut out: Box<dyn std::io::Write> = match output {
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| CliError::io(format!("cannot create {}", p.display()), e))?,
        )),
    };
    let what = || output.map_or_else(|| "stdout".to_string(), |p| p.display().to_string());
    let (mut n, mut first, mut last) = (0u64, None, None);
    let result = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| CliError::rpc(s, socket))?;
            for line in &chunk.lines {
                out.write_all(line.as_bytes())
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| CliError::io(format!("writing to {}", what()), e))?;
                n += 1;
            }
            if let (Some(f), Some(l)) = (chunk.lines.first(), chunk.lines.last()) {
                first = first.or_else(|| seq_of(f));
                last = seq_of(l);
            }
        }
        out.flush().map_err(|e| CliError::io(format!("writing to {}", what()), e))
    }
    .await;
    drop(out);
    if let Err(e) = result {
        // Half an export would verify as far as it goes and look whole.
        if let Some(p) = output {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    if let Some(p) = output {
        let range = match (first, last) {
            (Some(f), Some(l)) => format!(", seq {f}..{l}"),
            _ => String::new(),
        };
        eprintln!("exported {n} receipts{range} to {}", p.display());
    }
    Ok(())
}

fn seq_of(line: &str) -> Option<u64> {
    serde_json::from_str::<Value>(line).ok()?.get("seq")?.as_u64()
}

// ----- the node key -------------------------------------------------------------------

pub async fn key_show(socket: &Path, json: bool) -> Result<(), CliError> {
    let reply = Client::connect(socket).await?.receipts_key_show().await?;
    if json {
        return output::json(&reply);
    }
    output::print(key_show_text(&reply))
}

fn key_show_text(r: &pb::ReceiptsKeyShowReply) -> String {
    let current = r.current.clone().unwrap_or_default();
    let first = r.first.clone().unwrap_or_default();
    let mut pairs = vec![
        ("key_id", current.key_id.clone()),
        ("public_key", or_dash(&current.public_key)),
        ("public_key_file", current.public_key_path.clone()),
        ("created_at", or_dash(&current.created_at)),
        ("durable_seq", r.durable_seq.to_string()),
    ];
    if first.key_id != current.key_id {
        pairs.push(("first_key_id", format!("{} (sealed seq {}, the oldest receipt kept: verify a whole export with it)", first.key_id, r.first_seq)));
        pairs.push(("first_key_file", if first.public_key.is_empty() { format!("{} (missing)", first.public_key_path) } else { first.public_key_path.clone() }));
    }
    let mut out = key_values(&pairs);
    // Retention may have deleted the start of the chain: the export then starts later.
    let any_start = if r.first_seq > 1 { " --any-start" } else { "" };
    out.push_str(&format!(
        "\n\nverify an export offline:\n  agentctl receipts export -o export.jsonl\n  agentctl receipts verify export.jsonl --public-key {}{any_start}",
        if first.public_key_path.is_empty() { current.public_key_path.as_str() } else { first.public_key_path.as_str() }
    ));
    out
}

pub async fn key_rotate(socket: &Path, json: bool) -> Result<(), CliError> {
    let reply = Client::connect(socket).await?.receipts_key_rotate().await?;
    if json {
        return output::json(&reply);
    }
    let new = reply.key.clone().unwrap_or_default();
    output::print(format!(
        "rotated the receipt signing key: {} -> {}\nthe key-rotation receipt is seq {} (sealed by the old key); later receipts are sealed by the new one\nnew public key: {} ({})\nan export from before the rotation still verifies with the old public key: the rotation receipt hands over to the new one",
        reply.old_key_id,
        new.key_id,
        reply.seq,
        or_dash(&new.public_key),
        new.public_key_path
    ))
}

// ----- verify -------------------------------------------------------------------------

/// The stable `--json` shape of a verification.
#[derive(Serialize)]
struct VerifyJson<'a> {
    file: String,
    ok: bool,
    receipts: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    starts_at_genesis: bool,
    key_ids: &'a [String],
    ends_mid_batch: bool,
    failure: Option<FailureJson>,
}

#[derive(Serialize)]
struct FailureJson {
    line: usize,
    seq: Option<u64>,
    problem: String,
}

fn to_json<'a>(file: &Path, r: &'a Report) -> VerifyJson<'a> {
    VerifyJson {
        file: file.display().to_string(),
        ok: r.is_ok(),
        receipts: r.receipts,
        first_seq: r.first_seq,
        last_seq: r.last_seq,
        starts_at_genesis: r.starts_at_genesis,
        key_ids: &r.key_ids,
        ends_mid_batch: r.ends_mid_batch,
        failure: r.failure.as_ref().map(|f| FailureJson { line: f.line, seq: f.seq, problem: f.problem.to_string() }),
    }
}

/// Verifies `file` under the public key in `key_file`; exit 1 if anything fails.
pub fn verify(file: &Path, key_file: &Path, any_start: bool, json: bool) -> Result<u8, CliError> {
    let key = verify::read_public_key(key_file)
        .map_err(|e| CliError::Failed(format!("cannot use the public key {e}")))?;
    let report = verify::verify_file_with(file, &key, &VerifyOptions { any_start })
        .map_err(|e| CliError::io(format!("cannot read {}", file.display()), e))?;
    if json {
        output::json(&to_json(file, &report))?;
    } else {
        output::print(format!("{}: {report}", file.display()))?;
    }
    if report.is_ok() {
        Ok(0)
    } else {
        Err(CliError::Reported)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::receipts::{Draft, Journal, JournalOptions, NodeKey, Verdict};

    /// An export of `n` receipts and the node's public key (hex), as files.
    fn export(dir: &Path, n: u64) -> (std::path::PathBuf, std::path::PathBuf) {
        let store = dir.join("store");
        std::fs::create_dir(&store).unwrap();
        let key = NodeKey::load_or_create(&store).unwrap();
        let public = key.public_hex();
        let opts = JournalOptions { batch_max: 4, window: Duration::from_secs(3600), ..JournalOptions::default() };
        let j = Journal::open(&store, key, "node-1", opts).unwrap();
        for i in 0..n {
            j.append(Draft::decision("exec", format!("/usr/bin/tool{i}"), Verdict::Deny)).unwrap();
        }
        j.flush().unwrap();
        let lines: Vec<String> = j.iter().unwrap().map(|s| s.unwrap().line + "\n").collect();
        let file = dir.join("export.jsonl");
        std::fs::write(&file, lines.concat()).unwrap();
        let key_file = dir.join("node.pub");
        std::fs::write(&key_file, public + "\n").unwrap();
        (file, key_file)
    }

    #[test]
    fn an_export_verifies_and_a_changed_one_exits_1() {
        let d = tempfile::tempdir().unwrap();
        let (file, key) = export(d.path(), 10);
        assert_eq!(verify(&file, &key, false, false).unwrap(), 0);
        assert_eq!(verify(&file, &key, false, true).unwrap(), 0);
        let text = std::fs::read_to_string(&file).unwrap();
        let changed = text.replacen("/usr/bin/tool3", "/usr/bin/tool9", 1);
        assert_ne!(changed, text);
        std::fs::write(&file, changed).unwrap();
        assert!(matches!(verify(&file, &key, false, false), Err(CliError::Reported)));
        // A tail needs --any-start.
        let tail: String = text.lines().skip(4).map(|l| format!("{l}\n")).collect();
        std::fs::write(&file, tail).unwrap();
        assert!(matches!(verify(&file, &key, false, false), Err(CliError::Reported)));
        assert_eq!(verify(&file, &key, true, false).unwrap(), 0);
    }

    #[test]
    fn the_json_report_has_stable_names() {
        let r = Report { receipts: 3, first_seq: Some(1), last_seq: Some(3), starts_at_genesis: true, key_ids: vec!["sha256:ab".into()], ends_mid_batch: false, failure: None };
        let v = serde_json::to_value(to_json(Path::new("/x.jsonl"), &r)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"file": "/x.jsonl", "ok": true, "receipts": 3, "first_seq": 1, "last_seq": 3, "starts_at_genesis": true, "key_ids": ["sha256:ab"], "ends_mid_batch": false, "failure": null})
        );
    }

    /// The receipts of a held exec that alice approved, as the journal stores them.
    fn held_and_approved(dir: &Path) -> Vec<Value> {
        use crate::receipts::{Approval, Requester};
        let opts = JournalOptions { batch_max: 2, window: Duration::from_secs(3600), ..JournalOptions::default() };
        let j = Journal::open(dir, NodeKey::load_or_create(dir).unwrap(), "node-1", opts).unwrap();
        let at = std::time::UNIX_EPOCH + Duration::new(1_767_225_600, 123_456_789);
        let who = Requester::identity("coder", "3f2a9c1e5b7d4a60", "bob").with_process(4242, 1000, "/usr/bin/bash");
        let approval = Approval::new("alice", Some(1000), at, "once").with_reason("deploy");
        for d in [
            Draft::hold("exec", "/usr/bin/make", "1a2b3c4d").at(at).requester(who.clone()).policy("dev", 3, "9c1e").rule(7, "{path: /usr/bin/make, action: ask}").reason("ask"),
            Draft::approval("exec", "/usr/bin/make", "1a2b3c4d", Verdict::Allow, approval.clone()).at(at).requester(who.clone()),
            Draft::hold_outcome("exec", "/usr/bin/make", "1a2b3c4d", Verdict::Allow, "approved").at(at).requester(who).with_approval(approval),
            Draft::policy_apply("dev", 4, "77aa").at(at).requester(Requester::person("root", 0, 99, "/usr/bin/agentctl")),
            Draft::decision("egress", "10.0.0.1:443", Verdict::Deny).at(at).requester(Requester::identity("coder", "", "")).reason("default"),
        ] {
            j.append(d).unwrap();
        }
        j.flush().unwrap();
        j.iter().unwrap().map(|s| serde_json::from_str(&s.unwrap().line).unwrap()).collect()
    }

    #[test]
    fn the_list_table_names_who_what_verdict_and_rule() {
        let d = tempfile::tempdir().unwrap();
        let s = list_table(&held_and_approved(d.path()));
        let lines: Vec<&str> = s.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(header, ["SEQ", "TIME", "TYPE", "IDENTITY", "ACTION", "VERDICT", "RULE/REASON"], "{s}");
        // Columns are at least two spaces apart; cells have single spaces at most.
        let row = |seq: &str| -> Vec<&str> {
            let line = lines.iter().find(|l| l.starts_with(&format!("{seq} "))).unwrap_or_else(|| panic!("no row {seq}: {s}"));
            line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()
        };
        let time = "2026-01-01T00:00:00.123Z";
        assert_eq!(row("1"), ["1", time, "hold", "coder", "exec /usr/bin/make", "hold", "#7 {path: /usr/bin/make, action: ask} (ask)"], "{s}");
        assert_eq!(row("3"), ["3", time, "hold-outcome", "coder", "exec /usr/bin/make", "allow (approved)", "-"], "{s}");
        assert_eq!(row("4"), ["4", time, "policy-apply", "by root", "policy-apply dev", "ok", "-"], "{s}");
        assert_eq!(row("5"), ["5", time, "decision", "coder", "egress 10.0.0.1:443", "deny", "default"], "{s}");
    }

    #[test]
    fn show_prints_every_field_including_the_approval_and_the_seal() {
        let d = tempfile::tempdir().unwrap();
        let rs = held_and_approved(d.path());
        let s = show_text(&rs[2]);
        let keys: Vec<&str> = s.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(&keys[..5], ["seq", "id", "time", "type", "outcome"], "{s}");
        for want in [
            "approval.decided_by: alice",
            "approval.decided_by_uid: 1000",
            "approval.decided_at: 2026-01-01T00:00:00.123456789Z",
            "approval.how: once",
            "approval.reason: deploy",
            "action.parameters.hold_id: 1a2b3c4d",
            "requester.pid: 4242",
            "requester.key_fingerprint: 3f2a9c1e5b7d4a60",
            "decision.result: allow",
            "outcome: approved",
            "seal.batch_first_seq: 3",
            "seal.batch_last_seq: 4",
            "seal.proof[0]: ",
        ] {
            let (k, v) = want.split_once(": ").unwrap();
            assert!(s.lines().any(|l| l.starts_with(&format!("{k}:")) && l.ends_with(v.trim()) && l.contains(v.trim())), "{want:?} in:\n{s}");
        }
        assert!(s.lines().any(|l| l.starts_with("seal.signature:") && l.len() > 128), "{s}");
        // Nothing left out: one line per leaf of the JSON (the proof one per hash).
        fn leaves(v: &Value) -> usize {
            match v {
                Value::Object(m) => m.values().map(leaves).sum(),
                Value::Array(a) if a.iter().all(|x| x.is_string()) && !a.is_empty() => a.len(),
                _ => 1,
            }
        }
        assert_eq!(s.lines().count(), leaves(&rs[2]), "{s}");
    }

    #[test]
    fn limits_and_times_are_checked_before_asking() {
        assert_eq!(parse_limit("5"), Ok(5));
        assert_eq!(parse_limit("1000"), Ok(1000));
        assert!(parse_limit("0").unwrap_err().contains("at least 1"));
        assert!(parse_limit("1001").unwrap_err().contains("agentctl receipts export"));
        assert!(parse_limit("many").is_err());
        let since = parse_since("10m").unwrap();
        let ago = SystemTime::now().duration_since(since).unwrap();
        assert!(ago >= Duration::from_secs(600) && ago < Duration::from_secs(660), "{ago:?}");
        assert!(parse_until("soon").unwrap_err().to_string().starts_with("--until \"soon\""));
    }

    #[test]
    fn key_show_says_which_key_verifies_a_whole_export() {
        let key = |id: &str| pb::ReceiptKey { key_id: id.into(), public_key: "ab".repeat(32), public_key_path: format!("/s/keys/{id}.pub"), created_at: "2026-01-01T00:00:00Z".into() };
        let same = pb::ReceiptsKeyShowReply { current: Some(key("k1")), first: Some(key("k1")), first_seq: 1, durable_seq: 9 };
        let s = key_show_text(&same);
        assert!(s.starts_with("key_id:          k1\npublic_key:      abab"), "{s}");
        assert!(!s.contains("first_key_id"), "{s}");
        assert!(s.ends_with("agentctl receipts verify export.jsonl --public-key /s/keys/k1.pub"), "{s}");
        let rotated = pb::ReceiptsKeyShowReply { current: Some(key("k2")), ..same.clone() };
        let s = key_show_text(&rotated);
        assert!(s.contains("first_key_id:    k1 (sealed seq 1,"), "{s}");
        assert!(s.ends_with("--public-key /s/keys/k1.pub"), "{s}");
        // Retention deleted the start: the export needs --any-start.
        let trimmed = pb::ReceiptsKeyShowReply { first_seq: 5000, ..same };
        assert!(key_show_text(&trimmed).ends_with("--public-key /s/keys/k1.pub --any-start"));
    }

    #[test]
    fn a_bad_key_file_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let (file, _) = export(d.path(), 1);
        let bad = d.path().join("bad.pub");
        std::fs::write(&bad, "not a key\n").unwrap();
        let e = verify(&file, &bad, false, false).unwrap_err();
        assert!(e.to_string().starts_with("cannot use the public key "), "{e}");
    }
}
