//! The JSON-lines sink: each receipt's canonical JSON on a line of its own, appended to
//! a file that log shippers and `jq` read directly.
//!
//! Each batch is written with one `write` and made durable with `fdatasync` before it
//! counts as delivered. The file is created mode 0640 (the receipts say what every
//! agent did; they are not for every user). When logrotate (or anyone) moves the file
//! away, the next batch notices that the path now names another file, or none, and
//! opens the path afresh, so no receipt is written to the rotated copy after that.

use std::{
    fs::{File, OpenOptions, Permissions},
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::PathBuf,
};

use super::{Record, Sink, SinkError};

const MODE: u32 = 0o640;

/// Appends receipts to a file; see the module documentation.
pub struct JsonlSink {
    path: PathBuf,
    name: String,
    /// The open file and its (device, inode), to notice rotation.
    open: Option<(File, (u64, u64))>,
}

impl JsonlSink {
    /// Nothing is opened until the first delivery.
    pub fn new(path: PathBuf) -> Self {
        JsonlSink { name: format!("jsonl:{}", path.display()), path, open: None }
    }

    /// The file to write to: the one already open, unless the path has since been
    /// renamed or removed.
    fn file(&mut self) -> io::Result<&mut File> {
        let current = std::fs::metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
        if self.open.as_ref().is_some_and(|(_, id)| Some(*id) != current) {
            self.open = None;
        }
        if self.open.is_none() {
            let file = self.open_path()?;
            let m = file.metadata()?;
            self.open = Some((file, (m.dev(), m.ino())));
        }
        Ok(&mut self.open.as_mut().expect("opened above").0)
    }

    fn open_path(&self) -> io::Result<File> {
        let mut opts = OpenOptions::new();
        opts.append(true).mode(MODE);
        match opts.clone().create_new(true).open(&self.path) {
            Ok(f) => {
                // The umask may have taken bits from MODE; the mode is part of the contract.
                f.set_permissions(Permissions::from_mode(MODE))?;
                Ok(f)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => opts.open(&self.path),
            Err(e) => Err(e),
        }
    }
}

impl Sink for JsonlSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(batch.iter().map(|r| r.line.len() + 1).sum());
        for r in batch {
            buf.extend_from_slice(r.line.as_bytes());
            buf.push(b'\n');
        }
        let path = self.path.display().to_string();
        let file = self.file().map_err(|e| SinkError::Transient(format!("open {path}: {e}")))?;
        let before = file.metadata().map(|m| m.len()).ok();
        let written = file.write_all(&buf).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Take back a partly written batch, so that the retry does not leave half a
            // line in the file. Best effort: the disk may be what failed.
            if let Some(len) = before {
                let _ = file.set_len(len);
            }
            self.open = None;
            return Err(SinkError::Transient(format!("write {path}: {e}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::receipts::sinks::Severity;

    fn record(seq: u64) -> Record {
        Record {
            seq,
            id: format!("r{seq}"),
            time: SystemTime::UNIX_EPOCH,
            kind: "decision".into(),
            verdict: "deny".into(),
            severity: Severity::Warning,
            host: "h".into(),
            line: format!(r#"{{"seq":{seq},"verdict":"deny"}}"#),
        }
    }

    #[test]
    fn appends_one_line_per_receipt_to_a_0640_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receipts.jsonl");
        let mut sink = JsonlSink::new(path.clone());
        sink.deliver(&[record(1), record(2)]).unwrap();
        sink.deliver(&[record(3)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"seq\":1,\"verdict\":\"deny\"}\n{\"seq\":2,\"verdict\":\"deny\"}\n{\"seq\":3,\"verdict\":\"deny\"}\n"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(sink.name(), format!("jsonl:{}", path.display()));
    }

    #[test]
    fn keeps_appending_to_a_file_that_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receipts.jsonl");
        std::fs::write(&path, "{\"seq\":0}\n").unwrap();
        JsonlSink::new(path.clone()).deliver(&[record(1)]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }

    #[test]
    fn a_rotated_file_is_left_alone_and_the_path_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receipts.jsonl");
        let rotated = dir.path().join("receipts.jsonl.1");
        let mut sink = JsonlSink::new(path.clone());
        sink.deliver(&[record(1)]).unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        sink.deliver(&[record(2)]).unwrap();
        // Rotated, and a new (empty) file put in its place, as logrotate's `create` does.
        std::fs::rename(&path, dir.path().join("receipts.jsonl.2")).unwrap();
        std::fs::write(&path, "").unwrap();
        sink.deliver(&[record(3)]).unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "{\"seq\":1,\"verdict\":\"deny\"}\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("receipts.jsonl.2")).unwrap(),
            "{\"seq\":2,\"verdict\":\"deny\"}\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"seq\":3,\"verdict\":\"deny\"}\n");
    }

    #[test]
    fn a_missing_directory_is_a_transient_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-yet").join("receipts.jsonl");
        let mut sink = JsonlSink::new(path.clone());
        let e = sink.deliver(&[record(1)]).unwrap_err();
        assert!(e.is_transient() && e.to_string().contains("open "), "{e}");
        // Once the directory is there, the retry works.
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        sink.deliver(&[record(1)]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }
}
