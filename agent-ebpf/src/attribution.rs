//! Which identity, if any, the current task acts for.
//!
//! A binding applies to a cgroup and all its descendants, including ones created
//! after the bind, so the lookup walks the task's cgroup ancestry from the root
//! down and keeps the deepest bound ancestor: an agent that starts a child in a
//! nested cgroup (systemd-run, a container runtime) stays attributed, and a more
//! specific binding inside a bound subtree takes precedence.

use agent_common::MAX_CGROUP_DEPTH;
use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};

use crate::maps::BINDINGS;

#[derive(Clone, Copy)]
pub struct Subject {
    pub identity: u32,
    /// The task's own cgroup id (not the bound ancestor's), for events.
    pub cgroup_id: u64,
}

#[inline(always)]
pub fn current_subject() -> Option<Subject> {
    // SAFETY: plain helper calls with no pointer arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let mut found: Option<u32> = None;
    let mut level: i32 = 1;
    while level <= MAX_CGROUP_DEPTH as i32 {
        // SAFETY: as above; returns 0 past the task's depth.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        // SAFETY: the value is a plain u32 copied out immediately.
        if let Some(identity) = unsafe { BINDINGS.get(&id) } {
            found = Some(*identity);
        }
        level += 1;
    }
    found.map(|identity| Subject { identity, cgroup_id })
}
