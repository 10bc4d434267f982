//! `agentctl receipts`: offline verification of receipt exports.

use std::path::Path;

use serde::Serialize;

use super::{error::CliError, output};
use crate::receipts::{
    verify::{self, VerifyOptions},
    Report,
};

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
