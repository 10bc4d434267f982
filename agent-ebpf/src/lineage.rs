//! Keeping identities with processes (see `attribution`): a child inherits its
//! parent's identity at fork, before it runs a single instruction; a process
//! moved into a bound cgroup gets that cgroup's identity unless it already has
//! one; the entry goes when the last thread of the process exits.
//!
//! Raw tracepoints, so they run on every kernel agentd supports, with or without
//! BPF LSM.

use agent_common::{counter, TaskIdentity, MAX_CGROUP_DEPTH};
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::{
    attribution::{current_subject, current_tgid},
    decide::bump,
    maps::{BINDINGS, TASK_IDENTITY},
    vfs::{offsets, read_u32, read_u64},
};

#[raw_tracepoint(tracepoint = "sched_process_fork")]
#[inline(always)]
pub fn tp_sched_process_fork(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child); the
    // parent is the current task. The child has not run yet.
    let child: u64 = ctx.arg(1);
    let Ok(o) = offsets() else { return 0 };
    let Ok(child_tgid) = read_u32(child + o.task_tgid as u64) else { return 0 };
    if child_tgid == current_tgid() {
        // A new thread: the process already has (or has not) its identity.
        return 0;
    }
    let Some(parent) = current_subject() else { return 0 };
    let kept = TaskIdentity { identity: parent.identity, _pad: 0, binding: parent.binding };
    if TASK_IDENTITY.insert(&child_tgid, &kept, 0).is_err() {
        bump(counter::LINEAGE_FULL);
    }
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
#[inline(always)]
pub fn tp_sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p), p == current. `signal->live` was
    // decremented before this tracepoint: 0 means the last thread is exiting.
    let tgid = current_tgid();
    // SAFETY: only tested for presence.
    if unsafe { TASK_IDENTITY.get(&tgid) }.is_none() {
        return 0;
    }
    let Ok(o) = offsets() else { return 0 };
    // SAFETY: the current task pointer, only read through probe_read.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    let live = read_u64(task + o.task_signal as u64).and_then(|sig| read_u32(sig + o.signal_live as u64));
    if let Ok(0) = live {
        let _ = TASK_IDENTITY.remove(&tgid);
    }
    0
}

#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
#[inline(always)]
pub fn tp_cgroup_attach_task(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct cgroup *dst_cgrp, const char *path, struct task_struct
    // *task, bool threadgroup)
    let (dst, task): (u64, u64) = (ctx.arg(0), ctx.arg(2));
    let Ok(o) = offsets() else { return 0 };
    let Ok(tgid) = read_u32(task + o.task_tgid as u64) else { return 0 };
    // SAFETY: only tested for presence.
    if unsafe { TASK_IDENTITY.get(&tgid) }.is_some() {
        // Sticky: a move, into a bound cgroup or out of one, changes nothing.
        return 0;
    }
    // The deepest bound ancestor of the destination (walking up, the first).
    let mut cg = dst;
    let mut level = 0;
    while level <= MAX_CGROUP_DEPTH {
        if cg == 0 {
            break;
        }
        let Ok(kn) = read_u64(cg + o.cgroup_kn as u64) else { return 0 };
        let Ok(id) = read_u64(kn + o.kernfs_node_id as u64) else { return 0 };
        // SAFETY: the value is copied out at once.
        if let Some(identity) = unsafe { BINDINGS.get(&id) }.copied() {
            let kept = TaskIdentity { identity, _pad: 0, binding: id };
            if TASK_IDENTITY.insert(&tgid, &kept, 1).is_err() {
                bump(counter::LINEAGE_FULL);
            }
            return 0;
        }
        cg = read_u64(cg + o.cgroup_parent as u64).unwrap_or(0);
        level += 1;
    }
    0
}
