//! Signed receipts: a tamper-evident record of every decision agentd makes, that
//! anyone holding the node's public key can check offline (docs/receipts.md).
//!
//! - [`model`]: what a receipt says (action, requester, decision, approval, outcome).
//! - [`draft`]: receipts as the daemon fills them in, before they have a place.
//! - [`encode`]: the canonical JSON encoding and the receipt hash.
//! - [`seal`]: the Merkle tree over a batch and the Ed25519 signature on its root.
//! - [`key`]: the node's signing key, its file, its id, and rotation.
//! - [`store`]: the journal: chaining, batching, segment files, crash recovery.
//! - [`verify`]: offline verification of an export, naming the first bad receipt.
//! - [`query`]: what people ask of the journal (list, show, export), and its answers.
//! - [`bench`]: how many receipts per second this machine makes durable.
//! - [`sinks`]: copies of receipts for a JSONL file, syslog (RFC 5424) and Splunk HEC.
//!
//! Each receipt carries the hash of the one before it (`prev_hash`) and a seq one
//! higher, so a deleted, inserted or reordered receipt breaks the chain; each is
//! sealed in a batch whose Merkle root the node key signs, and carries its own
//! inclusion proof, so one receipt verifies alone.
#![forbid(unsafe_code)]

pub mod bench;
pub mod draft;
pub mod encode;
pub mod key;
pub mod model;
pub mod query;
pub mod seal;
pub mod sinks;
pub mod store;
pub mod verify;

pub use draft::Draft;
pub use key::NodeKey;
pub use model::{Action, Approval, Decision, Receipt, ReceiptType, Requester, Seal, Verdict};
pub use store::{Filter, Journal, JournalOptions, Rotation, Stored, StoreError};
pub use verify::{verify_file, verify_lines, Report, VerifyOptions};

#[cfg(test)]
mod tests;
