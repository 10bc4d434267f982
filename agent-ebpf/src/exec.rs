//! Exec decisions: BPF LSM `bprm_check_security` (deny with EPERM before the new
//! image is committed) or, where BPF LSM cannot run, the `sched_process_exec` raw
//! tracepoint plus SIGKILL (the new image is loaded but never runs a user-space
//! instruction). Both decide on `bprm->file`, the file the kernel actually opened.

use agent_common::{kind, mechanism, op, reason, verdict, ExecInodeKey, IdentityConfig, PathRule};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_send_signal},
    macros::{lsm, raw_tracepoint},
    programs::{LsmContext, RawTracePointContext},
};

use crate::{
    attribution::current_subject,
    decide::{
        count_hit, decide_path, from_action, identity_config, report, unresolved, Decision, Target, HIT_ALLOW, HIT_DENY,
    },
    maps::{EXEC_APPROVALS, EXEC_INODES, EXEC_RULES, SCRATCH},
    vfs::{offsets, read_u32, read_u64, resolve_file},
    EPERM, SIGKILL,
};

/// Resolves `bprm->file`.
#[inline(always)]
fn resolve_bprm(s: &mut crate::maps::Scratch, bprm: u64) -> Result<crate::vfs::Resolved, crate::vfs::Unresolved> {
    let o = offsets()?;
    let file = read_u64(bprm + o.binprm_file as u64)?;
    resolve_file(s, o, file)
}

/// The (dev, inode) key of `bprm->file` in rule set `ruleset`, or `None` when
/// the kernel objects cannot be read (then only the path rules apply, which
/// judge the same file by its real path).
#[inline(always)]
fn inode_key(bprm: u64, ruleset: u32) -> Option<ExecInodeKey> {
    let o = offsets().ok()?;
    let file = read_u64(bprm + o.binprm_file as u64).ok()?;
    let inode = read_u64(file + o.file_f_inode as u64).ok()?;
    let ino = read_u64(inode + o.inode_i_ino as u64).ok()?;
    let sb = read_u64(inode + o.inode_i_sb as u64).ok()?;
    let dev = read_u32(sb + o.super_block_s_dev as u64).ok()?;
    Some(ExecInodeKey { ruleset, dev, ino })
}

/// An exec the policy says to `ask` about: allowed only if the daemon approved
/// this very file for this process (a one-shot `EXEC_APPROVALS` entry, consumed
/// here), denied otherwise: with no daemon, no approval, so a hold fails closed.
#[inline(always)]
fn settle_ask(cfg: &IdentityConfig, bprm: u64, d: Decision) -> Decision {
    // SAFETY: helpers without pointer arguments.
    let (tgid, now) = unsafe { ((bpf_get_current_pid_tgid() >> 32) as u32, bpf_ktime_get_boot_ns()) };
    let mut approved = false;
    if let Some(k) = inode_key(bprm, 0) {
        // SAFETY: the value is read at once.
        if let Some(a) = unsafe { EXEC_APPROVALS.get(&tgid) } {
            approved = a.dev == k.dev && a.ino == k.ino && now < a.expires_boot_ns;
        }
    }
    if approved {
        let _ = EXEC_APPROVALS.remove(&tgid);
        count_hit(cfg.ruleset, kind::EXEC, d.rule_id, HIT_ALLOW);
        Decision { block: false, report: true, soft_verdict: verdict::APPROVED, ask: false, ..d }
    } else {
        count_hit(cfg.ruleset, kind::EXEC, d.rule_id, HIT_DENY);
        d
    }
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
                    // An exact rule pinned to this very file decides first.
                    let mut pinned: Option<PathRule> = None;
                    if let Some(k) = inode_key(bprm, cfg.ruleset) {
                        // SAFETY: the value is copied out at once.
                        if let Some(rule) = unsafe { EXEC_INODES.get(&k) } {
                            pinned = Some(*rule);
                        }
                    }
                    let d = match pinned {
                        Some(rule) => from_action(cfg, kind::EXEC, rule.action, reason::RULE, rule.rule_id),
                        None => decide_path(s, &EXEC_RULES, kind::EXEC, cfg, cfg.exec_default, cfg.exec_glob, r),
                    };
                    let d = if d.ask { settle_ask(cfg, bprm, d) } else { d };
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
