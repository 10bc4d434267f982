//! agentd's configuration file: how long receipts are kept, and where copies of
//! them are streamed (files, syslog, a SIEM). Everything else is a flag.
//!
//! ```yaml
//! # /etc/agentd/agentd.yaml
//! receipts:
//!   segment_bytes: 16777216     # start a new segment file after 16 MiB
//!   retention:
//!     max_segments: 64          # delete the oldest segments beyond 64 ...
//!     max_bytes: 1073741824     # ... or while all of them exceed 1 GiB
//! sinks:                        # see receipts::sinks::config
//!   - type: jsonl
//!     path: /var/log/agentd/receipts.jsonl
//!   - type: syslog
//!     address: 127.0.0.1:514
//! ```
//!
//! The file is read once, at start, before the kernel is touched: a mistake stops
//! agentd with the file, line and what to change, and whatever an earlier agentd
//! pinned stays enforced. Because the file decides where the audit trail goes, agentd
//! refuses one that anybody but root could change.

use std::{
    fs, io,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::receipts::{
    sinks::config::{SinkConfig, SinkSpec, SinksConfig},
    JournalOptions,
};

/// Where agentd looks when `--config` is not given; a missing file there means
/// every default.
pub const DEFAULT_PATH: &str = "/etc/agentd/agentd.yaml";

/// The smallest segment agentd accepts: smaller ones would make a file per batch.
const MIN_SEGMENT_BYTES: u64 = 64 << 10;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    receipts: ReceiptsSection,
    #[serde(default)]
    sinks: Vec<SinkConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptsSection {
    segment_bytes: Option<u64>,
    #[serde(default)]
    retention: Retention,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Retention {
    max_segments: Option<usize>,
    max_bytes: Option<u64>,
}

/// The checked configuration.
#[derive(Debug, Default)]
pub struct FileConfig {
    /// The file it came from; `None` when agentd runs on defaults.
    pub source: Option<PathBuf>,
    pub journal: JournalOptions,
    pub sinks: Vec<SinkSpec>,
}

/// Reads and checks the configuration: `explicit` is the `--config` path, if one
/// was given (then it must exist); otherwise [`DEFAULT_PATH`] if it exists.
pub fn load(explicit: Option<&Path>) -> Result<FileConfig, String> {
    let path = explicit.unwrap_or(Path::new(DEFAULT_PATH));
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound && explicit.is_none() => return Ok(FileConfig::default()),
        Err(e) => return Err(format!("cannot read the configuration {}: {e}", path.display())),
    };
    check_owner(path)?;
    let mut cfg = parse(&text).map_err(|e| format!("{}:{e}", path.display()))?;
    cfg.source = Some(path.to_path_buf());
    Ok(cfg)
}

/// Only root may be able to change where the receipts go.
fn check_owner(path: &Path) -> Result<(), String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot read the configuration {}: {e}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{}: owned by uid {}, not root: whoever owns it could redirect the receipts; `chown root {}`",
            path.display(),
            meta.uid(),
            path.display()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{}: writable by group or others (mode {:o}): anyone who can write it could redirect the receipts; `chmod go-w {}`",
            path.display(),
            meta.permissions().mode() & 0o7777,
            path.display()
        ));
    }
    Ok(())
}

/// Parses and checks the text of a configuration file. Errors start with
/// `line:column: ` where the YAML parser knows them.
pub fn parse(text: &str) -> Result<FileConfig, String> {
    let file: File = if text.trim().is_empty() {
        File::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| match e.location() {
            Some(l) => format!("{}:{}: {}", l.line(), l.column(), strip_location(&e.to_string())),
            None => format!(" {e}"),
        })?
    };
    let mut journal = JournalOptions::default();
    if let Some(b) = file.receipts.segment_bytes {
        if b < MIN_SEGMENT_BYTES {
            return Err(format!(" receipts.segment_bytes: {b} is too small; use at least {MIN_SEGMENT_BYTES} (64 KiB)"));
        }
        journal.segment_bytes = b;
    }
    if let Some(n) = file.receipts.retention.max_segments {
        if n < 2 {
            return Err(format!(" receipts.retention.max_segments: {n} would delete the segment being written next to; use at least 2"));
        }
        journal.max_segments = Some(n);
    }
    if let Some(b) = file.receipts.retention.max_bytes {
        if b < 2 * journal.segment_bytes {
            return Err(format!(
                " receipts.retention.max_bytes: {b} is less than two segments ({} bytes each); raise it or lower receipts.segment_bytes",
                journal.segment_bytes
            ));
        }
        journal.max_bytes = Some(b);
    }
    let sinks = SinksConfig { sinks: file.sinks }.validate().map_err(|e| format!(" {e}"))?;
    Ok(FileConfig { source: None, journal, sinks })
}

/// serde_yaml ends its messages with " at line L column C"; the caller puts that first.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_every_default() {
        let c = parse("").unwrap();
        assert_eq!(c.journal, JournalOptions::default());
        assert!(c.sinks.is_empty());
        let c = parse("# only a comment\n").unwrap();
        assert_eq!(c.journal, JournalOptions::default());
    }

    #[test]
    fn retention_and_sinks_are_read() {
        let c = parse(
            "receipts:\n  segment_bytes: 1048576\n  retention:\n    max_segments: 10\n    max_bytes: 8388608\n\
             sinks:\n  - type: jsonl\n    path: /var/log/agentd/r.jsonl\n    min_severity: warning\n",
        )
        .unwrap();
        assert_eq!((c.journal.segment_bytes, c.journal.max_segments, c.journal.max_bytes), (1 << 20, Some(10), Some(8 << 20)));
        assert_eq!(c.sinks.len(), 1);
        assert_eq!(c.sinks[0].name(), "jsonl:/var/log/agentd/r.jsonl");
    }

    #[test]
    fn mistakes_name_the_line_and_the_fix() {
        let e = parse("receipts:\n  retention:\n    max_segmentz: 3\n").unwrap_err();
        assert!(e.starts_with("3:5: "), "{e}");
        assert!(e.contains("max_segmentz"), "{e}");
        let e = parse("sinkz: []\n").unwrap_err();
        assert!(e.starts_with("1:1: ") && e.contains("sinkz"), "{e}");
        let e = parse("receipts:\n  segment_bytes: 100\n").unwrap_err();
        assert!(e.contains("at least 65536"), "{e}");
        let e = parse("receipts:\n  retention:\n    max_segments: 1\n").unwrap_err();
        assert!(e.contains("at least 2"), "{e}");
        let e = parse("receipts:\n  retention:\n    max_bytes: 1000\n").unwrap_err();
        assert!(e.contains("less than two segments"), "{e}");
        let e = parse("sinks:\n  - type: jsonl\n    path: relative.jsonl\n").unwrap_err();
        assert!(e.contains("sinks[0] (jsonl): path"), "{e}");
    }

    #[test]
    fn a_missing_explicit_file_is_an_error_but_a_missing_default_is_not() {
        let e = load(Some(Path::new("/nonexistent/agentd.yaml"))).unwrap_err();
        assert!(e.contains("/nonexistent/agentd.yaml"), "{e}");
    }

    #[test]
    fn a_file_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agentd.yaml");
        fs::write(&p, "sinks: []\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
        let e = load(Some(&p)).unwrap_err();
        assert!(e.contains("writable by group or others") && e.contains("chmod go-w"), "{e}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let c = load(Some(&p)).unwrap();
        assert_eq!(c.source.as_deref(), Some(p.as_path()));
    }
}
