//! agentd: per-identity enforcement of exec, file writes and network egress in the
//! Linux kernel for AI agents.
pub mod api;
pub mod cgroup;
pub mod cli;
pub mod daemon;
pub mod enforce;
pub mod holds;
pub mod identity;
pub mod policy;
pub mod receipts;
pub mod state;
pub mod stop_signals;
