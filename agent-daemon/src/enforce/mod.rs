//! The kernel side of agentd: loads (or adopts) the eBPF programs and maps, attaches
//! the best mechanism per action kind, and copies compiled policies and bindings
//! into the maps. Nothing here decides policy; it only installs decisions.
//!
//! Enforcement lives in pinned links and maps under the pin directory, so it keeps
//! running when the daemon exits or crashes, and a restarted daemon adopts it.

mod btf;
pub mod fanotify;
mod loader;
mod maps;
pub mod mounts;
mod probe;

use std::path::PathBuf;

pub use loader::{
    Aggregates, ConnectHolds, Enforcer, EventReader, ExecApprovals, RefMounts, WriteHolds,
};
pub use probe::{KindReport, MechanismReport};

/// Where the enforcer keeps its kernel objects.
#[derive(Clone, Debug)]
pub struct EnforcerConfig {
    /// bpffs directory for pinned programs, links and maps (default `/sys/fs/bpf/agentd`).
    pub pin_dir: PathBuf,
    /// The cgroup2 mount point (from `crate::cgroup::cgroup2_mount`); cgroup programs
    /// attach to its root so descendants of every bound cgroup are covered.
    pub cgroup_root: PathBuf,
}

/// Kernel-side counters (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub events: u64,
    pub events_dropped: u64,
    pub deny_exec: u64,
    pub deny_write: u64,
    pub deny_egress: u64,
    pub deny_socket: u64,
    pub kills: u64,
    pub unresolved: u64,
    pub aggregated: u64,
    pub lost: u64,
    pub lost_uncounted: u64,
}

/// Errors from loading, attaching or updating kernel objects.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no mechanism can enforce {kind} on this kernel: {why}")]
    Unsupported { kind: &'static str, why: String },
    #[error("{0}")]
    Other(String),
}

impl EnforceError {
    pub(crate) fn kernel(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        EnforceError::Kernel { what: what.into(), source: Box::new(source) }
    }
}
