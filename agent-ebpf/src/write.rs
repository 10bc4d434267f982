//! File-write decisions.
//!
//! With BPF LSM: `file_open` for opens in write mode, and the path hooks for every
//! other way to change the file tree (truncate, unlink, rmdir, mkdir, mknod —
//! which also covers `open(O_CREAT)` —, link, symlink, rename). Each returns EPERM
//! before anything happens.
//!
//! Without it: raw tracepoints on syscall entry/exit and SIGKILL. This fallback is
//! weaker and says so: the kill lands when the syscall returns, so the one
//! offending syscall may already have taken effect (a file created, truncated or
//! unlinked), but the task never runs another instruction — a write through a
//! denied fd never happens. Opens are judged at exit on the opened `struct file`
//! (the kernel's object); path syscalls at entry on the user string anchored at
//! the cwd or dirfd, failing closed on `.`/`..` components.

use agent_common::{counter, kind, mechanism, op, verdict, KernelOffsets};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_send_signal},
    macros::{lsm, raw_tracepoint},
    programs::{LsmContext, RawTracePointContext},
};

use crate::{
    attribution::{current_subject, Subject},
    decide::{bump, decide_path, identity_config, report, unresolved, Decision, Target},
    maps::{Scratch, PROBE_TGID, SCRATCH, WRITE_RULES},
    vfs::{offsets, read_u32, read_u64, resolve_dentry, resolve_file, resolve_path, resolve_user, Resolved, Unresolved},
    EPERM, SIGKILL,
};

const FMODE_WRITE: u32 = 0x2;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const AT_FDCWD: i64 = -100;

/// Where the path being judged comes from.
#[derive(Clone, Copy)]
enum Object {
    /// `struct file *`
    File(u64),
    /// `struct path *`
    Path(u64),
    /// A dentry and the `struct path *` of its parent directory (for its mount).
    Dentry { dir: u64, dentry: u64 },
    /// A user string, relative to the `struct path *` base when not absolute.
    User { ptr: u64, base: Option<u64> },
    /// Something the kernel could not read: always fails closed.
    Unknown,
}

#[inline(always)]
fn resolve(s: &mut Scratch, o: &KernelOffsets, obj: Object) -> Result<Resolved, Unresolved> {
    match obj {
        Object::File(f) => resolve_file(s, o, f),
        Object::Path(p) => resolve_path(s, o, p),
        Object::Dentry { dir, dentry } => {
            let mnt = read_u64(dir + o.path_mnt as u64)?;
            resolve_dentry(s, o, dentry, mnt)
        }
        Object::User { ptr, base } => resolve_user(s, o, ptr, base),
        Object::Unknown => Err(Unresolved::Read),
    }
}

#[inline(always)]
fn resolve_with_offsets(s: &mut Scratch, obj: Object) -> Result<Resolved, Unresolved> {
    let o = offsets()?;
    resolve(s, o, obj)
}

/// Decides a write to `obj` by the bound current task.
#[inline(always)]
fn judge(subject: &Subject, obj: Object, op: u8, mech: u8, hard: u8) -> Decision {
    // The per-CPU scratch always exists; if it somehow did not, fail closed.
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return Decision::fail_closed() };
    // SAFETY: per-CPU scratch, exclusively ours until the program returns.
    let s = unsafe { &mut *s };
    let d = match identity_config(subject.identity) {
        Err(d) => {
            report(s, subject, &d, &Target::path(kind::WRITE, op, mech, None), hard);
            d
        }
        Ok(cfg) => match resolve_with_offsets(s, obj) {
            Ok(r) => {
                let d = decide_path(s, &WRITE_RULES, kind::WRITE, cfg, cfg.write_default, cfg.write_glob, r);
                report(s, subject, &d, &Target::path(kind::WRITE, op, mech, Some(r)), hard);
                d
            }
            Err(why) => {
                let d = unresolved(cfg.policy_version, why);
                report(s, subject, &d, &Target::path(kind::WRITE, op, mech, None), hard);
                d
            }
        },
    };
    d
}

#[inline(always)]
fn lsm_verdict(obj: Object, op: u8) -> i32 {
    let Some(subject) = current_subject() else { return 0 };
    if judge(&subject, obj, op, mechanism::LSM, verdict::DENY).block { -EPERM } else { 0 }
}

/// Two objects (rename: source and destination): blocked if either is. Written as
/// two single-object verdicts: fusing them let LLVM emit pointer arithmetic the
/// verifier rejects.
#[inline(always)]
fn lsm_verdict2(a: Object, b: Object, op: u8) -> i32 {
    let first = lsm_verdict(a, op);
    if first != 0 {
        return first;
    }
    lsm_verdict(b, op)
}

#[lsm(hook = "file_open")]

#[inline(always)]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    // file_open(struct file *file); arg 1: previous verdict.
    let (file, prev): (u64, i32) = (ctx.arg(0), ctx.arg(1));
    if prev != 0 {
        return prev;
    }
    // The daemon's start-up probe: proves this LSM program really runs.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(p) = PROBE_TGID.get(0) {
        if *p != 0 && *p == tgid {
            bump(counter::LSM_PROBE);
        }
    }
    let Ok(o) = offsets() else {
        // Without offsets we cannot tell a read from a write: judge it as a write
        // (fail closed) if the task is bound.
        return lsm_verdict(Object::File(file), op::OPEN);
    };
    match read_u32(file + o.file_f_mode as u64) {
        Ok(mode) if mode & FMODE_WRITE == 0 => 0,
        _ => lsm_verdict(Object::File(file), op::OPEN),
    }
}

#[lsm(hook = "path_truncate")]

#[inline(always)]
pub fn lsm_path_truncate(ctx: LsmContext) -> i32 {
    // path_truncate(const struct path *path)
    let (path, prev): (u64, i32) = (ctx.arg(0), ctx.arg(1));
    if prev != 0 {
        return prev;
    }
    lsm_verdict(Object::Path(path), op::TRUNCATE)
}

macro_rules! dir_dentry_hook {
    ($fn:ident, $hook:literal, $nargs:literal, $op:expr) => {
        #[lsm(hook = $hook)]
        #[inline(always)]
        pub fn $fn(ctx: LsmContext) -> i32 {
            // hook(const struct path *dir, struct dentry *dentry, ...); the
            // argument after the last one is the previous verdict.
            let (dir, dentry, prev): (u64, u64, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg($nargs));
            if prev != 0 {
                return prev;
            }
            lsm_verdict(Object::Dentry { dir, dentry }, $op)
        }
    };
}

dir_dentry_hook!(lsm_path_unlink, "path_unlink", 2, op::UNLINK);
dir_dentry_hook!(lsm_path_rmdir, "path_rmdir", 2, op::RMDIR);
dir_dentry_hook!(lsm_path_mkdir, "path_mkdir", 3, op::MKDIR);
dir_dentry_hook!(lsm_path_mknod, "path_mknod", 4, op::CREATE);
dir_dentry_hook!(lsm_path_symlink, "path_symlink", 3, op::SYMLINK);

#[lsm(hook = "path_link")]

#[inline(always)]
pub fn lsm_path_link(ctx: LsmContext) -> i32 {
    // path_link(struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry)
    let (new_dir, new_dentry, prev): (u64, u64, i32) = (ctx.arg(1), ctx.arg(2), ctx.arg(3));
    if prev != 0 {
        return prev;
    }
    lsm_verdict(Object::Dentry { dir: new_dir, dentry: new_dentry }, op::LINK)
}

/// `path_rename(old_dir, old_dentry, new_dir, new_dentry[, flags])`: the kernel
/// added `flags` in 5.19, which moves the previous verdict one argument on. The
/// verifier only allows constant context offsets, so there is one program per
/// signature and the loader picks the one the kernel's BTF describes.
macro_rules! rename_hook {
    ($fn:ident, $verdict_arg:literal) => {
        #[lsm(hook = "path_rename")]
        #[inline(always)]
        pub fn $fn(ctx: LsmContext) -> i32 {
            let (old_dir, old_dentry, new_dir, new_dentry): (u64, u64, u64, u64) =
                (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
            let prev: i32 = ctx.arg($verdict_arg);
            if prev != 0 {
                return prev;
            }
            lsm_verdict2(
                Object::Dentry { dir: old_dir, dentry: old_dentry },
                Object::Dentry { dir: new_dir, dentry: new_dentry },
                op::RENAME,
            )
        }
    };
}

rename_hook!(lsm_path_rename4, 4);
rename_hook!(lsm_path_rename5, 5);

// ---- Fallback: raw syscall tracepoints + SIGKILL ----------------------------

mod nr {
    pub const OPEN: u64 = 2;
    pub const TRUNCATE: u64 = 76;
    pub const RENAME: u64 = 82;
    pub const MKDIR: u64 = 83;
    pub const RMDIR: u64 = 84;
    pub const CREAT: u64 = 85;
    pub const LINK: u64 = 86;
    pub const UNLINK: u64 = 87;
    pub const SYMLINK: u64 = 88;
    pub const MKNOD: u64 = 133;
    pub const OPENAT: u64 = 257;
    pub const MKDIRAT: u64 = 258;
    pub const MKNODAT: u64 = 259;
    pub const UNLINKAT: u64 = 263;
    pub const RENAMEAT: u64 = 264;
    pub const LINKAT: u64 = 265;
    pub const SYMLINKAT: u64 = 266;
    pub const RENAMEAT2: u64 = 316;
    pub const OPENAT2: u64 = 437;
    pub const IO_URING_SETUP: u64 = 425;
    /// Set in the number of x32-ABI syscalls.
    pub const X32_BIT: u64 = 0x4000_0000;
}

/// x86 `TS_COMPAT`: the current syscall entered through a 32-bit gate.
const TS_COMPAT: u32 = 0x2;

/// x86-64 `struct pt_regs` offsets (a stable ABI) of the syscall arguments.
const REG_ARGS: [u64; 5] = [112 /* di */, 104 /* si */, 96 /* dx */, 56 /* r10 */, 72 /* r8 */];
const REG_ORIG_AX: u64 = 120;

#[inline(always)]
fn arg(regs: u64, i: usize) -> u64 {
    let off = match REG_ARGS.get(i) {
        Some(o) => *o,
        None => return 0,
    };
    read_u64(regs + off).unwrap_or(0)
}

/// The `struct path *` of the current task's cwd.
#[inline(always)]
fn cwd(o: &KernelOffsets) -> Option<u64> {
    // SAFETY: returns the current task pointer; only read through probe_read.
    let task = unsafe { bpf_get_current_task() };
    let fs = read_u64(task + o.task_fs as u64).ok()?;
    Some(fs + o.fs_struct_pwd as u64)
}

/// The `struct file *` of the current task's descriptor `fd`.
#[inline(always)]
fn fd_file(o: &KernelOffsets, fd: u64) -> Option<u64> {
    // SAFETY: as in cwd.
    let task = unsafe { bpf_get_current_task() };
    let files = read_u64(task + o.task_files as u64).ok()?;
    let fdt = read_u64(files + o.files_struct_fdt as u64).ok()?;
    let max = read_u32(fdt + o.fdtable_max_fds as u64).ok()? as u64;
    if fd >= max {
        return None;
    }
    let array = read_u64(fdt + o.fdtable_fd as u64).ok()?;
    let file = read_u64(array + fd * 8).ok()?;
    if file == 0 { None } else { Some(file) }
}

/// The base a `*at` path is relative to: the cwd, or the dirfd's directory.
#[inline(always)]
fn at_base(o: &KernelOffsets, dfd: u64) -> Option<u64> {
    if dfd as i64 as i32 as i64 == AT_FDCWD {
        cwd(o)
    } else {
        fd_file(o, dfd as u32 as u64).map(|f| f + o.file_f_path as u64)
    }
}

/// Returns `v` unchanged, but as values the verifier cannot see through.
#[inline(always)]
fn opaque(s: &mut Scratch, v: [u64; 5]) -> [u64; 5] {
    let mut out = [0u64; 5];
    let mut i = 0;
    while i < 5 {
        // SAFETY: in-bounds field of the live per-CPU scratch value.
        unsafe {
            core::ptr::write_volatile(&mut s.opaque[i], v[i]);
            out[i] = core::ptr::read_volatile(&s.opaque[i]);
        }
        i += 1;
    }
    out
}

/// Whether the syscall came through a 32-bit gate (numbered differently, so the
/// dispatch below would not recognise its file syscalls). Unknown offsets read as
/// not compat here; the judging code fails closed on them anyway.
#[inline(always)]
fn is_compat() -> bool {
    let Ok(o) = offsets() else { return false };
    // SAFETY: the current task pointer, only read through probe_read.
    let task = unsafe { bpf_get_current_task() };
    read_u32(task + o.task_ti_status as u64).map(|st| st & TS_COMPAT != 0).unwrap_or(false)
}

/// Kills a bound task making a syscall this tier cannot judge.
#[inline(always)]
fn refuse_unjudgeable() {
    let Some(subject) = current_subject() else { return };
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU scratch, exclusively ours until the program returns.
    let s = unsafe { &mut *s };
    let version = match crate::decide::identity_config(subject.identity) {
        Ok(cfg) => cfg.policy_version,
        Err(d) => d.policy_version,
    };
    let d = Decision::deny_for(agent_common::reason::UNSUPPORTED_SYSCALL, version);
    report(s, &subject, &d, &Target::path(kind::WRITE, op::SYSCALL, mechanism::TRACEPOINT, None), verdict::KILL);
    kill_if_blocked(d);
}

#[inline(always)]
fn kill_if_blocked(d: Decision) {
    if d.block {
        // SAFETY: signals the current task, the one making the syscall.
        unsafe { bpf_send_signal(SIGKILL) };
    }
}

#[inline(always)]
fn judge_user(subject: &Subject, o: &KernelOffsets, dfd: u64, ptr: u64, op: u8) -> Decision {
    judge(subject, Object::User { ptr, base: at_base(o, dfd) }, op, mechanism::TRACEPOINT, verdict::KILL)
}

#[raw_tracepoint(tracepoint = "sys_enter")]

#[inline(always)]
pub fn tp_sys_enter(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long id)
    let id: u64 = ctx.arg(1);
    if id == nr::IO_URING_SETUP || id & nr::X32_BIT != 0 || is_compat() {
        refuse_unjudgeable();
        return 0;
    }
    let cwd_fd = AT_FDCWD as u64;
    // (dirfd, path) pairs to judge, by syscall. Cheap filter before attribution:
    // this runs on every syscall of every task.
    let (a_fd, a_path, b_fd, b_path, op): (u64, u64, u64, u64, u8) = match id {
        nr::TRUNCATE | nr::UNLINK | nr::RMDIR | nr::MKDIR | nr::MKNOD => {
            let regs: u64 = ctx.arg(0);
            let opc = match id {
                nr::TRUNCATE => op::TRUNCATE,
                nr::UNLINK => op::UNLINK,
                nr::RMDIR => op::RMDIR,
                nr::MKDIR => op::MKDIR,
                _ => op::CREATE,
            };
            (cwd_fd, arg(regs, 0), 0, 0, opc)
        }
        nr::UNLINKAT | nr::MKDIRAT | nr::MKNODAT => {
            let regs: u64 = ctx.arg(0);
            let opc = match id {
                nr::UNLINKAT => op::UNLINK,
                nr::MKDIRAT => op::MKDIR,
                _ => op::CREATE,
            };
            (arg(regs, 0), arg(regs, 1), 0, 0, opc)
        }
        nr::RENAME => {
            let regs: u64 = ctx.arg(0);
            (cwd_fd, arg(regs, 0), cwd_fd, arg(regs, 1), op::RENAME)
        }
        nr::RENAMEAT | nr::RENAMEAT2 => {
            let regs: u64 = ctx.arg(0);
            (arg(regs, 0), arg(regs, 1), arg(regs, 2), arg(regs, 3), op::RENAME)
        }
        nr::LINK => {
            let regs: u64 = ctx.arg(0);
            (cwd_fd, arg(regs, 1), 0, 0, op::LINK)
        }
        nr::LINKAT => {
            let regs: u64 = ctx.arg(0);
            (arg(regs, 2), arg(regs, 3), 0, 0, op::LINK)
        }
        nr::SYMLINK => {
            let regs: u64 = ctx.arg(0);
            (cwd_fd, arg(regs, 1), 0, 0, op::SYMLINK)
        }
        nr::SYMLINKAT => {
            let regs: u64 = ctx.arg(0);
            (arg(regs, 1), arg(regs, 2), 0, 0, op::SYMLINK)
        }
        _ => return 0,
    };
    let Some(subject) = current_subject() else { return 0 };
    // Merge the per-syscall branches before the (large) judging code.
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return 0 };
    // SAFETY: per-CPU scratch, exclusively ours until the program returns.
    let s = unsafe { &mut *s };
    let [a_fd, a_path, b_fd, b_path, op] = opaque(s, [a_fd, a_path, b_fd, b_path, op as u64]);
    let op = op as u8;
    let Ok(o) = offsets() else {
        kill_if_blocked(judge(&subject, Object::Unknown, op, mechanism::TRACEPOINT, verdict::KILL));
        return 0;
    };
    let d = judge_user(&subject, o, a_fd, a_path, op);
    if d.block {
        kill_if_blocked(d);
        return 0;
    }
    if b_path != 0 {
        kill_if_blocked(judge_user(&subject, o, b_fd, b_path, op));
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]

#[inline(always)]
pub fn tp_sys_exit(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    if ret < 0 {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let id = read_u64(regs + REG_ORIG_AX).unwrap_or(u64::MAX);
    // Open flags live in a register, not user memory (openat2's struct open_how is
    // the exception: read it from user memory, it is only used to widen the check).
    let flags = match id {
        nr::OPEN => arg(regs, 1),
        nr::OPENAT => arg(regs, 2),
        nr::CREAT => O_CREAT | O_TRUNC,
        nr::OPENAT2 => {
            let how = arg(regs, 2);
            // SAFETY: probe read of user memory; failure reads as no flags.
            unsafe { aya_ebpf::helpers::bpf_probe_read_user(how as *const u64) }.unwrap_or(0)
        }
        _ => return 0,
    };
    let Some(subject) = current_subject() else { return 0 };
    let Ok(o) = offsets() else {
        kill_if_blocked(judge(&subject, Object::Unknown, op::OPEN, mechanism::TRACEPOINT, verdict::KILL));
        return 0;
    };
    let Some(file) = fd_file(o, ret as u64) else {
        kill_if_blocked(judge(&subject, Object::Unknown, op::OPEN, mechanism::TRACEPOINT, verdict::KILL));
        return 0;
    };
    let mode = read_u32(file + o.file_f_mode as u64).unwrap_or(FMODE_WRITE);
    if mode & FMODE_WRITE == 0 && flags & (O_CREAT | O_TRUNC) == 0 {
        return 0;
    }
    kill_if_blocked(judge(&subject, Object::File(file), op::OPEN, mechanism::TRACEPOINT, verdict::KILL));
    0
}
