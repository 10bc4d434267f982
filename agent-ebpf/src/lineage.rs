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
    attribution::{attributing_subject, current_tgid, sticky_subject},
    decide::bump,
    maps::{BINDINGS, SYS_ENTER_PROGS, SYS_EXIT_PROGS, TASK_IDENTITY},
    vfs::{offsets, read_u32, read_u64},
};
use agent_common::KernelOffsets;

/// Index of `SYS_ENTER_PROGS` for a syscall the fallback tier cannot read.
pub const SYSCALL_OTHER: u32 = 511;

#[raw_tracepoint(tracepoint = "sys_enter")]
#[inline(always)]
pub fn tp_sys_enter_dispatch(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long id)
    let id: u64 = ctx.arg(1);
    let idx = if id >= SYSCALL_OTHER as u64 || crate::write::is_compat() { SYSCALL_OTHER } else { id as u32 };
    // Every task opens files all the time, and a tail call is an indirect jump
    // (a retpoline where Spectre mitigations are on): an open that only reads
    // has nothing to record at its entry, so it stops here.
    if idx != SYSCALL_OTHER && crate::write::is_open(id) && crate::write::open_is_read_only(ctx.arg(0), id) {
        return 0;
    }
    // Likewise an mmap that maps nothing executable (the loader's and malloc's,
    // many per exec): only executable mappings are judged.
    if id == crate::guard::MMAP_NR && !crate::exec::mmap_is_exec(ctx.arg(0)) {
        return 0;
    }
    // SAFETY: a tail call with this program's own context; on failure (no
    // handler for the syscall) control comes back here.
    unsafe { SYS_ENTER_PROGS.tail_call(&ctx, idx) };
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
#[inline(always)]
pub fn tp_sys_exit_dispatch(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long ret)
    let regs: u64 = ctx.arg(0);
    let id = read_u64(regs + crate::write::REG_ORIG_AX).unwrap_or(u64::MAX);
    if id < SYSCALL_OTHER as u64 {
        // Every exit handler judges a bound task only; an unbound task's open (the
        // commonest of them) ends with one hash lookup instead of a tail call.
        if crate::write::is_open(id) && sticky_subject().is_none() {
            return 0;
        }
        // SAFETY: as in tp_sys_enter_dispatch.
        unsafe { SYS_EXIT_PROGS.tail_call(&ctx, id as u32) };
    }
    0
}

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
    let kept = match attributing_subject() {
        Some(parent) => TaskIdentity { identity: parent.identity, _pad: 0, binding: parent.binding },
        None => {
            // An unbound parent can start a child straight into a bound cgroup
            // (clone3 CLONE_INTO_CGROUP: systemd starting a bound unit's process).
            let cg = read_u64(child + o.task_cgroups as u64).and_then(|cs| read_u64(cs + o.css_set_dfl_cgrp as u64));
            let Ok(cg) = cg else { return 0 };
            let (identity, binding) = bound_cgroup(o, cg);
            if binding == 0 {
                return 0;
            }
            TaskIdentity { identity, _pad: 0, binding }
        }
    };
    if TASK_IDENTITY.insert(&child_tgid, &kept, 0).is_err() {
        bump(counter::LINEAGE_FULL);
    }
    0
}

/// The deepest bound ancestor of cgroup `cg` (a `struct cgroup *`), itself
/// included: (identity, cgroup id), id 0 when none.
#[inline(always)]
fn bound_cgroup(o: &KernelOffsets, cg: u64) -> (u32, u64) {
    let mut cg = cg;
    let mut level = 0;
    while level <= MAX_CGROUP_DEPTH {
        if cg == 0 {
            break;
        }
        let Ok(kn) = read_u64(cg + o.cgroup_kn as u64) else { break };
        let Ok(id) = read_u64(kn + o.kernfs_node_id as u64) else { break };
        // SAFETY: the value is copied out at once.
        if let Some(identity) = unsafe { BINDINGS.get(&id) }.copied() {
            return (identity, id);
        }
        cg = read_u64(cg + o.cgroup_parent as u64).unwrap_or(0);
        level += 1;
    }
    (0, 0)
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
    let (identity, binding) = bound_cgroup(o, dst);
    if binding != 0 {
        let kept = TaskIdentity { identity, _pad: 0, binding };
        // BPF_NOEXIST: -EEXIST means a fork recorded it meanwhile.
        if let Err(e) = TASK_IDENTITY.insert(&tgid, &kept, 1) {
            if e != -17 {
                bump(counter::LINEAGE_FULL);
            }
        }
    }
    0
}
