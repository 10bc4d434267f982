//! Exec decisions: BPF LSM `bprm_check_security` (deny with EPERM before the new
//! image is committed) or, where BPF LSM cannot run, the `sched_process_exec` raw
//! tracepoint plus SIGKILL (the new image is loaded but never runs a user-space
//! instruction). Both decide on `bprm->file`, the file the kernel actually opened.
//!
//! Exec means any way code from a file is mapped to run: `ld.so /path/denied`
//! and `dlopen` never exec the file, they map it executable. So an executable
//! mapping of a file (`mmap_file`/`file_mprotect` with PROT_EXEC under BPF LSM,
//! `mmap` with PROT_EXEC and a descriptor on the fallback tier) is judged by the
//! same exec rules; an `ask` there is denied (nothing can hold a mapping).

use agent_common::{kind, mechanism, op, reason, verdict, ExecInodeKey, IdentityConfig, PathRule};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_send_signal},
    macros::{lsm, raw_tracepoint},
    programs::{LsmContext, RawTracePointContext},
};

use crate::{
    attribution::current_subject,
    decide::{
        count_hit, decide_path, from_action, identity_config, match_path, report, unresolved, Decision, Target,
        HIT_ALLOW, HIT_DENY,
    },
    maps::{Scratch, EXEC_APPROVALS, EXEC_INODES, EXEC_RULES, LIB_DIRS, SCRATCH},
    vfs::{offsets, read_u32, read_u64, resolve_file},
    EPERM, SIGKILL,
};

/// `bprm->file`.
#[inline(always)]
fn bprm_file(bprm: u64) -> u64 {
    match offsets() {
        Ok(o) => read_u64(bprm + o.binprm_file as u64).unwrap_or(0),
        Err(_) => 0,
    }
}

/// The (dev, inode) key of `file` in rule set `ruleset`, or `None` when the
/// kernel objects cannot be read (then only the path rules apply, which judge
/// the same file by its real path).
#[inline(always)]
fn inode_key(file: u64, ruleset: u32) -> Option<ExecInodeKey> {
    let o = offsets().ok()?;
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
fn settle_ask(cfg: &IdentityConfig, file: u64, d: Decision) -> Decision {
    // SAFETY: helpers without pointer arguments.
    let (tgid, now) = unsafe { ((bpf_get_current_pid_tgid() >> 32) as u32, bpf_ktime_get_boot_ns()) };
    let mut approved = false;
    if let Some(k) = inode_key(file, 0) {
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

/// Decides an exec (`op::EXEC`, an `ask` settled by agentd's approval) or an
/// executable mapping (`op::MMAP_EXEC`, an `ask` denied) of `file`. `None`: not
/// ours to judge.
#[inline(always)]
fn judge(file: u64, op_: u8, mech: u8, hard: u8) -> Option<Decision> {
    let subject = current_subject()?;
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return Some(Decision::fail_closed()) };
    // SAFETY: per-CPU scratch, exclusively ours until the program returns.
    let s = unsafe { &mut *s };
    let d = match identity_config(subject.identity) {
        Err(d) => {
            report(s, &subject, &d, &Target::path(kind::EXEC, op_, mech, None), hard);
            return Some(d);
        }
        Ok(cfg) => {
            let resolved = match offsets() {
                Ok(o) => resolve_file(s, o, file),
                Err(e) => Err(e),
            };
            match resolved {
                Ok(r) => {
                    // An exact rule pinned to this very file decides first.
                    let mut pinned: Option<PathRule> = None;
                    if let Some(k) = inode_key(file, cfg.ruleset) {
                        // SAFETY: the value is copied out at once.
                        if let Some(rule) = unsafe { EXEC_INODES.get(&k) } {
                            pinned = Some(*rule);
                        }
                    }
                    let d = match pinned {
                        Some(rule) => from_action(cfg, kind::EXEC, rule.action, reason::RULE, rule.rule_id),
                        None if op_ == op::MMAP_EXEC => {
                            match match_path(s, &EXEC_RULES, cfg, cfg.exec_default, cfg.exec_glob, r) {
                                // A library the rules do not name, in a system
                                // library directory: loading it is not running
                                // a program (a binary there is still judged
                                // when it is exec'd).
                                Ok((_, 0)) if in_lib_dir(s, r) => return None,
                                Ok((act, rule_id)) => {
                                    let why = if rule_id == 0 { reason::DEFAULT } else { reason::RULE };
                                    from_action(cfg, kind::EXEC, act, why, rule_id)
                                }
                                Err(d) => d,
                            }
                        }
                        None => decide_path(s, &EXEC_RULES, kind::EXEC, cfg, cfg.exec_default, cfg.exec_glob, r),
                    };
                    let d = if !d.ask {
                        d
                    } else if op_ == op::EXEC {
                        settle_ask(cfg, file, d)
                    } else {
                        count_hit(cfg.ruleset, kind::EXEC, d.rule_id, HIT_DENY);
                        Decision { ask: false, ..d }
                    };
                    report(s, &subject, &d, &Target::path(kind::EXEC, op_, mech, Some(r)), hard);
                    d
                }
                Err(why) => {
                    let d = unresolved(cfg.policy_version, why);
                    report(s, &subject, &d, &Target::path(kind::EXEC, op_, mech, None), hard);
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
    match judge(bprm_file(bprm), op::EXEC, mechanism::LSM, verdict::DENY) {
        Some(d) if d.block => -EPERM,
        _ => 0,
    }
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]

#[inline(always)]
pub fn tp_sched_process_exec(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    // Every exec on the machine: an unbound one leaves after one hash lookup.
    if current_subject().is_none() {
        return 0;
    }
    let bprm: u64 = ctx.arg(2);
    if let Some(d) = judge(bprm_file(bprm), op::EXEC, mechanism::TRACEPOINT, verdict::KILL) {
        if d.block {
            // SAFETY: signals the current task, which is the one exec'ing.
            unsafe { bpf_send_signal(SIGKILL) };
            return 0;
        }
    }
    // A `#!` script runs as its interpreter: `bprm->file` is the interpreter now
    // and the script's own file is gone from the exec. Under BPF LSM the script
    // was judged at its own bprm_check_security; here its path is judged from
    // the kernel's copy of the name exec was given.
    if let Ok(o) = offsets() {
        let filename = read_u64(bprm + o.binprm_filename as u64).unwrap_or(0);
        let interp = read_u64(bprm + o.binprm_interp as u64).unwrap_or(0);
        if filename != 0 && interp != filename {
            if let Some(d) = judge_script(o, filename) {
                if d.block {
                    // SAFETY: as above.
                    unsafe { bpf_send_signal(SIGKILL) };
                }
            }
        }
    }
    0
}

/// Judges the path string `name` (kernel memory: the name a script was exec'd
/// by, relative to the cwd) with the exec rules.
#[inline(always)]
fn judge_script(o: &agent_common::KernelOffsets, name: u64) -> Option<Decision> {
    let subject = current_subject()?;
    let s = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, exclusively ours until the program returns.
    let s = unsafe { &mut *s };
    let cfg = match identity_config(subject.identity) {
        Ok(cfg) => cfg,
        Err(d) => {
            report(s, &subject, &d, &Target::path(kind::EXEC, op::EXEC, mechanism::TRACEPOINT, None), verdict::KILL);
            return Some(d);
        }
    };
    // SAFETY: the current task pointer, only read through probe_read.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    let cwd = read_u64(task + o.task_fs as u64).ok().map(|fs| fs + o.fs_struct_pwd as u64);
    let d = match crate::vfs::resolve_string(s, o, name, cwd, true) {
        Ok(r) => {
            let d = decide_path(s, &EXEC_RULES, kind::EXEC, cfg, cfg.exec_default, cfg.exec_glob, r);
            // Nothing can hold this exec any more: an `ask` is a denial.
            let d = Decision { ask: false, ..d };
            report(s, &subject, &d, &Target::path(kind::EXEC, op::EXEC, mechanism::TRACEPOINT, Some(r)), verdict::KILL);
            d
        }
        Err(why) => {
            let d = unresolved(cfg.policy_version, why);
            report(s, &subject, &d, &Target::path(kind::EXEC, op::EXEC, mechanism::TRACEPOINT, None), verdict::KILL);
            d
        }
    };
    Some(d)
}

/// Whether the path in `s.path` is below one of `LIB_DIRS`.
#[inline(always)]
fn in_lib_dir(s: &mut Scratch, r: crate::vfs::Resolved) -> bool {
    use agent_common::{PathKey, PATH_KEY_LEN};
    let bytes = if r.truncated { PATH_KEY_LEN } else { r.len + 1 };
    s.prefix_len = PathKey::prefix_bits(if bytes > PATH_KEY_LEN { PATH_KEY_LEN } else { bytes });
    s.ruleset = [0; 4];
    // SAFETY: Scratch starts with exactly the layout of Key<PathKey>.
    let key = unsafe { &*(s as *const Scratch as *const aya_ebpf::maps::lpm_trie::Key<PathKey>) };
    LIB_DIRS.get(key).is_some()
}

/// Whether `file` is the current task's own executable: the kernel maps it at
/// exec, after the exec itself was judged (and an `ask` approved).
#[inline(always)]
fn is_own_executable(file: u64) -> bool {
    let Ok(o) = offsets() else { return false };
    // SAFETY: the current task pointer, only read through probe_read.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    let Ok(mm) = read_u64(task + o.task_mm as u64) else { return false };
    if mm == 0 {
        return false;
    }
    read_u64(mm + o.mm_exe_file as u64).map(|f| f == file).unwrap_or(false)
}

const PROT_EXEC: u64 = 0x4;
const MAP_ANONYMOUS: u64 = 0x20;

#[lsm(hook = "mmap_file")]
#[inline(always)]
pub fn lsm_mmap_exec(ctx: LsmContext) -> i32 {
    // mmap_file(struct file *file, unsigned long reqprot, unsigned long prot,
    // unsigned long flags); arg 4: previous verdict.
    let (prot, prev): (u64, i32) = (ctx.arg(2), ctx.arg(4));
    if prev != 0 {
        return prev;
    }
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let file = crate::write::raw_arg(&ctx, 0);
    if file == 0 || is_own_executable(file) {
        return 0;
    }
    match judge(file, op::MMAP_EXEC, mechanism::LSM, verdict::DENY) {
        Some(d) if d.block => -EPERM,
        _ => 0,
    }
}

#[lsm(hook = "file_mprotect")]
#[inline(always)]
pub fn lsm_file_mprotect(ctx: LsmContext) -> i32 {
    // file_mprotect(struct vm_area_struct *vma, unsigned long reqprot,
    // unsigned long prot)
    let (prot, prev): (u64, i32) = (ctx.arg(2), ctx.arg(3));
    if prev != 0 {
        return prev;
    }
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let vma = crate::write::raw_arg(&ctx, 0);
    let file = match offsets() {
        Ok(o) => read_u64(vma + o.vm_area_vm_file as u64).unwrap_or(0),
        Err(_) => 0,
    };
    if file == 0 || is_own_executable(file) {
        // Anonymous memory (JITs, not a file's code), or the program itself.
        return 0;
    }
    match judge(file, op::MMAP_EXEC, mechanism::LSM, verdict::DENY) {
        Some(d) if d.block => -EPERM,
        _ => 0,
    }
}

/// mmap(2)'s saved registers ask for an executable mapping of a file.
#[inline(always)]
pub(crate) fn mmap_is_exec(regs: u64) -> bool {
    let (prot, flags) = (crate::write::arg(regs, 2), crate::write::arg(regs, 3));
    prot & PROT_EXEC != 0 && flags & MAP_ANONYMOUS == 0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
#[inline(always)]
pub fn tp_sys_enter_mmap(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long id). The fallback for mmap(2): the
    // kill lands before the mapping is ever used (mprotect of an existing file
    // mapping to PROT_EXEC is not seen on this tier).
    let id: u64 = ctx.arg(1);
    if id != crate::guard::MMAP_NR {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let fd = crate::write::arg(regs, 4);
    if !mmap_is_exec(regs) {
        return 0;
    }
    let Ok(o) = offsets() else { return 0 };
    if current_subject().is_none() {
        return 0;
    }
    let file = crate::write::fd_file(o, fd as u32 as u64).unwrap_or(0);
    if file == 0 || is_own_executable(file) {
        return 0;
    }
    if let Some(d) = judge(file, op::MMAP_EXEC, mechanism::TRACEPOINT, verdict::KILL) {
        if d.block {
            // SAFETY: signals the current task, the one mapping the file.
            unsafe { bpf_send_signal(SIGKILL) };
        }
    }
    0
}
