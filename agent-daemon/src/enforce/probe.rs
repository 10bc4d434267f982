//! Which kernel mechanism enforces each action kind, and why the better ones do not.
//! Decided by loading programs, never by reading kernel configuration: a BPF LSM
//! program loads on kernels where `bpf` is not an active LSM and then never runs.

use serde::Serialize;

/// The mechanism chosen for one action kind and what was tried before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KindReport {
    /// "exec", "write", "egress" or "raw-socket".
    pub kind: String,
    /// Human name of the active mechanism, e.g. "BPF LSM bprm_check_security" or
    /// "tracepoint sched_process_exec + SIGKILL". Empty when nothing enforces it.
    pub active: String,
    /// "deny" (the operation fails with EPERM) or "kill" (the task is killed).
    pub effect: String,
    /// Better mechanisms that are not active, each with the reason.
    pub unavailable: Vec<(String, String)>,
}

/// The whole report, for `agentctl doctor` and `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MechanismReport {
    pub kinds: Vec<KindReport>,
    /// True when the daemon adopted pinned enforcement left by an earlier run.
    pub adopted: bool,
}
