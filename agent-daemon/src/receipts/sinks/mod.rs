//! Receipt sinks: copies of every receipt sent somewhere a person or a SIEM already
//! looks — a JSON-lines file, a syslog server (RFC 5424), Splunk's HTTP Event Collector.
//!
//! The receipt store stays the record of truth; a sink is a best-effort copy. So a sink
//! never slows a decision down: [`Dispatcher::push`] only puts the record on the sink's
//! bounded queue, and a thread per sink delivers it. When a sink falls behind, its queue
//! drops the oldest record (counted), and when a delivery fails it is retried with
//! exponential backoff a bounded number of times, then the batch is dropped (counted).
//! [`Dispatcher::stats`] says, per sink, what was delivered, dropped and still queued,
//! for `agentctl status`.
//!
//! ```text
//! push(Record) ─┬─▶ [queue: jsonl ] ─▶ thread ─▶ JsonlSink::deliver(batch)
//!               ├─▶ [queue: syslog] ─▶ thread ─▶ SyslogSink::deliver(batch)
//!               └─▶ [queue: hec   ] ─▶ thread ─▶ HecSink::deliver(batch)
//! ```
//!
//! Delivery is at-least-once: a batch that failed half-way (a TCP connection reset after
//! some frames were written) is sent again whole, so a receiver may see a record twice;
//! `seq` and `id` tell the copies apart.
#![forbid(unsafe_code)]

pub mod config;
pub mod hec;
pub mod jsonl;
pub mod syslog;
mod worker;

use std::{fmt, str::FromStr, time::SystemTime};

use serde::Serialize;

pub use config::{ConfigError, SinkConfig, SinkSpec, SinksConfig};
pub use hec::HecSink;
pub use jsonl::JsonlSink;
pub use syslog::SyslogSink;
pub use worker::{Delivery, Dispatcher, SinkStatus};

/// How much a receipt matters to whoever reads the sink; each sink can skip the ones
/// below its `min_severity`. Ordered: `Info < Notice < Warning < Critical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Routine: an allowed action.
    #[default]
    Info,
    /// Worth a look: an action held for approval, an approval given.
    Notice,
    /// Something was stopped: a denial.
    Warning,
    /// Something is wrong with agentd itself or its chain of receipts.
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Severity::Info, Severity::Notice, Severity::Warning, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Notice => "notice",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name was not one of `info`, `notice`, `warning`, `critical`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown severity {0:?}: expected one of info, notice, warning, critical")]
pub struct UnknownSeverity(pub String);

impl FromStr for Severity {
    type Err = UnknownSeverity;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownSeverity(s.to_string()))
    }
}

/// One receipt as the sinks see it: the few fields they route and label by, plus the
/// receipt itself as its canonical JSON (`line`), which every sink passes on unchanged
/// so that a copy can still be verified against its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the receipt chain.
    pub seq: u64,
    /// The receipt's id.
    pub id: String,
    /// When the receipt was made.
    pub time: SystemTime,
    /// What the receipt is about, e.g. `decision`, `hold`, `approval`.
    pub kind: String,
    /// `allow`, `deny`, `ask`, ...
    pub verdict: String,
    pub severity: Severity,
    /// The host agentd runs on.
    pub host: String,
    /// The receipt's canonical JSON: one line, no trailing newline.
    pub line: String,
}

/// Why a delivery failed, and so whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Might work later (no connection, a timeout, HTTP 5xx or 429, a full disk): the
    /// batch is retried with backoff.
    #[error("{0}")]
    Transient(String),
    /// Will fail however often it is tried (HTTP 4xx, an answer that is not the
    /// receiver's): the batch is dropped at once.
    #[error("{0}")]
    Rejected(String),
}

impl SinkError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Transient(_))
    }
}

/// Somewhere receipts go. `deliver` is called from the sink's own thread (never from
/// async code), one batch at a time, and either takes the whole batch or fails.
pub trait Sink: Send {
    /// A short name for logs and `agentctl status`, e.g. `jsonl:/var/log/agentd/receipts.jsonl`.
    fn name(&self) -> &str;
    fn deliver(&mut self, batch: &[Record]) -> Result<(), SinkError>;
}

/// What one sink has done since agentd started, for `agentctl status`.
///
/// Every record the sink accepted (at or above its `min_severity`) is in exactly one
/// of `delivered`, `dropped` or `queued`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct SinkStats {
    /// Records the sink took.
    pub delivered: u64,
    /// Records given up on: pushed out of a full queue, in a batch the receiver
    /// rejected, or in a batch that still failed after the last retry.
    pub dropped: u64,
    /// Deliveries that failed, each retry counted.
    pub failed_attempts: u64,
    /// Records waiting, including the batch being delivered.
    pub queued: u64,
    /// The most recent failure. Kept after later successes, so that an outage that has
    /// passed still shows.
    pub last_error: Option<String>,
}
