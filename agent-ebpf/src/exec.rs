//! Exec decisions: BPF LSM `bprm_check_security` (deny with EPERM before the new
//! image is committed) or, where BPF LSM cannot run, the `sched_process_exec` raw
//! tracepoint plus SIGKILL (the new image is loaded but never runs a user-space
//! instruction). Both decide on `bprm->file`, the file the kernel actually opened.

use agent_common::{kind, mechanism, op, verdict};
use aya_ebpf::{
    helpers::bpf_send_signal,
    macros::{lsm, raw_tracepoint},
    programs::{LsmContext, RawTracePointContext},
};

use crate::{
    attribution::current_subject,
    decide::{decide_path, identity_config, report, unresolved, Decision, Target},
    maps::{EXEC_RULES, SCRATCH},
    vfs::{offsets, read_u64, resolve_file},
    EPERM, SIGKILL,
};

/// Resolves `bprm->file`.
#[inline(always)]
fn resolve_bprm(s: &mut crate::maps::Scratch, bprm: u64) -> Result<crate::vfs::Resolved, crate::vfs::Unresolved> {
    let o = offsets()?;
    let file = read_u64(bprm + o.binprm_file as u64)?;
    resolve_file(s, o, file)
}

/// Decides an exec of `bprm` (a `struct linux_binprm *`). `None`: not ours to judge.
#[inline(always)]
fn judge(bprm: u64, mech: u8, hard: u8) -> Option<Decision> {
    let subject = current_subject()?;
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return Some(Decision::fail_closed()) };
    // SAFETY: per-CPU scratch, exclusively ours until the program returns.
    let s = unsafe { &mut *s };
    let d = match identity_config(subject.identity) {
        Err(d) => {
            report(s, &subject, &d, &Target::path(kind::EXEC, op::EXEC, mech, None), hard);
            return Some(d);
        }
        Ok(cfg) => {
            let resolved = resolve_bprm(s, bprm);
            match resolved {
                Ok(r) => {
                    let d = decide_path(s, &EXEC_RULES, subject.identity, cfg, cfg.exec_default, r);
                    report(s, &subject, &d, &Target::path(kind::EXEC, op::EXEC, mech, Some(r)), hard);
                    d
                }
                Err(why) => {
                    let d = unresolved(cfg.policy_version, why);
                    report(s, &subject, &d, &Target::path(kind::EXEC, op::EXEC, mech, None), hard);
                    d
                }
            }
        }
    };
    Some(d)
}

#[lsm(hook = "bprm_check_security")]

#[inline(always)]
pub fn lsm_bprm_check_security(ctx: LsmContext) -> i32 {
    // bprm_check_security(struct linux_binprm *bprm); arg 1 is the verdict
    // of the BPF LSM program before us.
    let (bprm, prev): (u64, i32) = (ctx.arg(0), ctx.arg(1));
    if prev != 0 {
        return prev;
    }
    match judge(bprm, mechanism::LSM, verdict::DENY) {
        Some(d) if d.block => -EPERM,
        _ => 0,
    }
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]

#[inline(always)]
pub fn tp_sched_process_exec(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    let bprm: u64 = ctx.arg(2);
    if let Some(d) = judge(bprm, mechanism::TRACEPOINT, verdict::KILL) {
        if d.block {
            // SAFETY: signals the current task, which is the one exec'ing.
            unsafe { bpf_send_signal(SIGKILL) };
        }
    }
    0
}
