//! Which identity, if any, the current task acts for.
//!
//! A binding applies to a cgroup and all its descendants, including ones created
//! after the bind: the first time a process acts there, the walk up its cgroup
//! ancestry finds the deepest bound ancestor, and the result is *kept* in
//! `TASK_IDENTITY` under its tgid. From then on the process is that identity
//! wherever its cgroup goes — a cgroup.procs write, clone3(CLONE_INTO_CGROUP),
//! a move by another process — and so is every process it starts (`lineage`).
//! A cgroup binding is how an identity is attached, not the only place it is kept.

use agent_common::{TaskIdentity, MAX_CGROUP_DEPTH};
use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid};

use crate::maps::{BINDINGS, TASK_IDENTITY};

#[derive(Clone, Copy)]
pub struct Subject {
    pub identity: u32,
    /// The task's own cgroup id (not the bound ancestor's), for events.
    pub cgroup_id: u64,
    /// The cgroup id of the binding that attributed the task.
    pub binding: u64,
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The current task's identity: `TASK_IDENTITY` only, one hash lookup, which is
/// what every hook asks (they run for every task on the machine). Every process
/// that acts for an identity has its entry: agentd records the processes in a
/// cgroup when it binds it, `lineage` records children at fork (and processes
/// started or moved into a bound cgroup), and the entry stays until the last
/// thread exits or the binding goes.
#[inline(always)]
pub fn current_subject() -> Option<Subject> {
    sticky_subject()
}

/// [`current_subject`], or, for a process without an entry, its cgroup's binding
/// (then kept). For the fork tracepoint, which must not miss a parent that
/// agentd's bind-time walk has not reached yet.
#[inline(always)]
pub fn attributing_subject() -> Option<Subject> {
    if let Some(s) = sticky_subject() {
        return Some(s);
    }
    let (identity, binding) = bound_ancestor();
    if binding == 0 {
        return None;
    }
    let kept = TaskIdentity { identity, _pad: 0, binding };
    // BPF_NOEXIST: a concurrent fork or bind may have recorded it already.
    let _ = TASK_IDENTITY.insert(&current_tgid(), &kept, 1);
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    Some(Subject { identity, cgroup_id, binding })
}

/// Only `TASK_IDENTITY`: one hash lookup, for hooks that run on every open of
/// every task. Every process in a bound cgroup has an entry: agentd records the
/// processes already there when it binds, `lineage` records children at fork and
/// processes moved into a bound cgroup.
#[inline(always)]
pub fn sticky_subject() -> Option<Subject> {
    // SAFETY: the value is copied out at once.
    let t = unsafe { TASK_IDENTITY.get(&current_tgid()) }.copied()?;
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    Some(Subject { identity: t.identity, cgroup_id, binding: t.binding })
}

/// The identity process `tgid` acts for, if it has one recorded.
#[inline(always)]
pub fn identity_of(tgid: u32) -> Option<u32> {
    // SAFETY: the value is copied out at once.
    unsafe { TASK_IDENTITY.get(&tgid) }.map(|t| t.identity)
}

/// The deepest bound ancestor of the current task's cgroup: (identity, cgroup
/// id), the id 0 when there is none. (Plain integers, not an `Option` of a
/// pair: LLVM leaves a `None`'s payload register unset and then copies it, which
/// the verifier refuses as a read of an uninitialised register.)
#[inline(always)]
fn bound_ancestor() -> (u32, u64) {
    let mut found: (u32, u64) = (0, 0);
    let mut level: i32 = 1;
    while level <= MAX_CGROUP_DEPTH as i32 {
        // SAFETY: a plain helper call; returns 0 past the task's depth.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        // SAFETY: the value is a plain u32 copied out immediately.
        if let Some(identity) = unsafe { BINDINGS.get(&id) } {
            found = (*identity, id);
        }
        level += 1;
    }
    found
}
