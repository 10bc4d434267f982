//! agentd: per-identity enforcement of exec, file writes and network egress in the
//! Linux kernel for AI agents.
pub mod api;
pub mod ctl;
pub mod enforce;
pub mod policy;
pub mod service;
