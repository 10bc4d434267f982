//! How fast this machine turns events into durable, signed receipts, next to how
//! fast it can make raw Ed25519 signatures (which bounds what one signature per
//! receipt could do).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::{
    draft::Draft,
    key::NodeKey,
    model::{Requester, Verdict},
    store::{Journal, JournalOptions, StoreError},
};

/// What [`run`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Receipts appended.
    pub receipts: u64,
    /// From the first append to the last receipt durable (sealed, written, fsynced).
    pub elapsed: Duration,
    /// `receipts / elapsed`.
    pub receipts_per_sec: f64,
    /// Bytes the journal wrote.
    pub bytes: u64,
    /// Single Ed25519 signatures of a 66-byte message per second, in the same run.
    pub raw_ed25519_signs_per_sec: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} receipts durable in {:.3} s: {:.0} receipts/s ({:.0} bytes each); raw Ed25519: {:.0} signatures/s",
            self.receipts,
            self.elapsed.as_secs_f64(),
            self.receipts_per_sec,
            self.bytes as f64 / self.receipts.max(1) as f64,
            self.raw_ed25519_signs_per_sec
        )
    }
}

/// Appends `n` typical decision receipts to a new journal in `dir` (which should be
/// empty, on the disk to measure) and waits until all are durable; then times raw
/// signing. Default journal options.
pub fn run(dir: &Path, n: u64) -> Result<BenchReport, StoreError> {
    let key = NodeKey::load_or_create(dir)?;
    let journal = Journal::open(dir, key, "bench-host", JournalOptions::default())?;
    let start = Instant::now();
    for i in 0..n {
        journal.append(sample(i))?;
    }
    journal.flush()?;
    let elapsed = start.elapsed();
    journal.close()?;
    let bytes = std::fs::read_dir(dir)
        .map_err(|e| StoreError::Io { path: dir.to_path_buf(), source: e })?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();

    let key = NodeKey::load(dir)?;
    let signs = n.clamp(1_000, 20_000);
    let msg = super::seal::signed_message(1, 2, &[7; 32]);
    let t = Instant::now();
    for _ in 0..signs {
        std::hint::black_box(key.sign(std::hint::black_box(&msg)));
    }
    let sign_time = t.elapsed();
    Ok(BenchReport {
        receipts: n,
        elapsed,
        receipts_per_sec: n as f64 / elapsed.as_secs_f64(),
        bytes,
        raw_ed25519_signs_per_sec: signs as f64 / sign_time.as_secs_f64(),
    })
}

/// A deny of an exec by an agent, with the fields a real one has.
fn sample(i: u64) -> Draft {
    Draft::decision("exec", "/usr/bin/curl", Verdict::Deny)
        .requester(
            Requester::identity("claude", "3f2a9c1e5b7d4a60", "alice")
                .with_identity_id(3)
                .with_process(4000 + (i % 1000) as u32, 1000, "/usr/bin/bash")
                .with_binding("/sys/fs/cgroup/agents/claude", 12345, "s-1"),
        )
        .policy("dev", 3, "9c1e5b7d4a603f2a9c1e5b7d4a603f2a9c1e5b7d4a603f2a9c1e5b7d4a603f2a")
        .rule(7, "deny exec /usr/bin/curl")
        .reason("rule")
        .mechanism("lsm")
        .param("argv", serde_json::json!(["curl", "https://example.com", i.to_string()]))
}
