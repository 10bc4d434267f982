//! Receipts: the signed record of every decision agentd makes, and where copies of them go.
pub mod sinks;
