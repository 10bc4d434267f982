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

use agent_common::{
    counter, kind, mechanism, op, protect, reason, verdict, write_hold, IdentityConfig, KernelOffsets, PathKey, WriteHold,
    PATH_KEY_LEN,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_send_signal},
    macros::{lsm, raw_tracepoint},
    programs::{LsmContext, RawTracePointContext},
    maps::lpm_trie::Key,
    EbpfContext as _,
};

use crate::{
    attribution::{current_subject, sticky_subject, Subject},
    decide::{
        bump, count_hit, decide_path, identity_config, report, unresolved, Decision, Target, HIT_ALLOW, HIT_DENY,
    },
    guard::refuse,
    maps::{Scratch, GUARDED_DIRS, PROBE_TGID, PROTECTED_DEVS, SCRATCH, WRITE_HELD_FILES, WRITE_HOLDS, WRITE_HOLD_DEVS, WRITE_RULES},
    vfs::{
        dentry_fs, offsets, read_u16, read_u32, read_u64, resolve_dentry, resolve_file, resolve_path, resolve_user,
        Resolved, Unresolved,
    },
    EPERM, SIGKILL,
};

/// Internal: the file a hard link is made to (reported as `op::LINK` with reason
/// `link` when the rules do not let this identity write it).
const LINK_SOURCE: u8 = 0xf0;
const FMODE_WRITE: u32 = 0x2;
const MAY_WRITE: i32 = 0x2;
const MAY_APPEND: i32 = 0x8;
const MAP_SHARED: u64 = 0x1;
const O_WRONLY: u64 = 0o1;
const O_RDWR: u64 = 0o2;
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
    /// A dentry; `live`: it names an existing file (not the new, negative
    /// dentry of a create), which must still be linked.
    Dentry { dentry: u64, live: bool },
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
        Object::Dentry { dentry, live } => resolve_dentry(s, o, dentry, live),
        Object::User { ptr, base } => resolve_user(s, o, ptr, base),
        Object::Unknown => Err(Unresolved::Read),
    }
}

/// What becomes of an `ask`: whether this hook can hold it, and how an approval
/// is found (see `agent_common::WriteHold`).
#[derive(Clone, Copy)]
enum Settle {
    /// Nothing holds this operation: deny it (agentd makes it a request).
    Refuse,
    /// BPF LSM `file_open` of this `struct file *`: into agentd's hold, pending.
    Hold(u64),
    /// BPF LSM `path_truncate` of this `struct path *`: allowed if it is the
    /// `f_path` of a file whose hold was approved (`O_TRUNC`, `ftruncate`).
    Truncate(u64),
    /// Fallback `sys_exit` of an open of this `struct file *`: allowed with
    /// agentd's approval of this thread's open of this very file.
    Exit(u64),
}

/// Argument `n` of an LSM hook as a plain number. The verifier types a pointer
/// argument by its BTF type and refuses subtracting from it or using it as a map
/// key; read through `bpf_probe_read_kernel` it is just the address.
#[inline(always)]
pub(crate) fn raw_arg(ctx: &LsmContext, n: usize) -> u64 {
    let p = (ctx.as_ptr() as *const u64).wrapping_add(n);
    // SAFETY: reads the hook's own argument array, which is always readable.
    unsafe { bpf_probe_read_kernel(p) }.unwrap_or(0)
}

/// (dev, inode) of a `struct file *`, `dev` in the kernel's `s_dev` encoding.
#[inline(always)]
fn file_dev_ino(o: &KernelOffsets, file: u64) -> Option<(u32, u64)> {
    let inode = read_u64(file + o.file_f_inode as u64).ok()?;
    let ino = read_u64(inode + o.inode_i_ino as u64).ok()?;
    let sb = read_u64(inode + o.inode_i_sb as u64).ok()?;
    let dev = read_u32(sb + o.super_block_s_dev as u64).ok()?;
    Some((dev, ino))
}

#[inline(always)]
fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Drops what this thread's last open left in `WRITE_HOLDS` (looked up first: a
/// delete of a missing key costs more than a lookup, and most opens have none).
#[inline(always)]
fn forget_write_hold() {
    let tid = current_tid();
    // SAFETY: only tested for presence.
    if unsafe { WRITE_HOLDS.get(&tid) }.is_some() {
        let _ = WRITE_HOLDS.remove(&tid);
    }
}

/// Settles an `ask` write: held, approved, or denied (and counted so).
#[inline(always)]
fn settle_ask(cfg: &IdentityConfig, subject: &Subject, o: &KernelOffsets, d: Decision, how: Settle) -> Decision {
    let approved = Decision { block: false, report: true, soft_verdict: verdict::APPROVED, ask: false, ..d };
    match how {
        Settle::Refuse => {}
        Settle::Hold(file) => {
            if let Some((dev, ino)) = file_dev_ino(o, file) {
                // SAFETY: only tested for presence.
                if unsafe { WRITE_HOLD_DEVS.get(&dev) }.is_some() {
                    let h = WriteHold {
                        file,
                        ino,
                        expires_boot_ns: 0,
                        dev,
                        state: write_hold::PENDING,
                        identity: subject.identity,
                        rule_id: d.rule_id,
                    };
                    if WRITE_HELD_FILES.insert(&file, &h, 0).is_ok() {
                        if WRITE_HOLDS.insert(&current_tid(), &h, 0).is_ok() {
                            return Decision { block: false, report: true, soft_verdict: verdict::HELD, ask: false, ..d };
                        }
                        let _ = WRITE_HELD_FILES.remove(&file);
                    }
                }
            }
        }
        Settle::Truncate(path) => {
            let file = path.wrapping_sub(o.file_f_path as u64);
            if approved_file(file) {
                return approved;
            }
        }
        Settle::Exit(file) => {
            let tid = current_tid();
            // SAFETY: helper without arguments; the map value is read at once.
            let now = unsafe { bpf_ktime_get_boot_ns() };
            let ok = match (unsafe { WRITE_HOLDS.get(&tid) }, file_dev_ino(o, file)) {
                (Some(h), Some((dev, ino))) => {
                    h.state == write_hold::APPROVED && h.dev == dev && h.ino == ino && now < h.expires_boot_ns
                }
                _ => false,
            };
            let _ = WRITE_HOLDS.remove(&tid);
            if ok {
                count_hit(cfg.ruleset, kind::WRITE, d.rule_id, HIT_ALLOW);
                return approved;
            }
        }
    }
    count_hit(cfg.ruleset, kind::WRITE, d.rule_id, HIT_DENY);
    Decision { ask: false, ..d }
}

/// Decides a write to `obj` by the bound current task.
#[inline(always)]
fn judge(subject: &Subject, obj: Object, op: u8, mech: u8, hard: u8, how: Settle) -> Decision {
    let (op, link_source) = if op == LINK_SOURCE { (op::LINK, true) } else { (op, false) };
    // The per-CPU scratch always exists; if it somehow did not, fail closed.
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return Decision::fail_closed() };
    // SAFETY: per-CPU scratch, exclusively ours until the program returns.
    let s = unsafe { &mut *s };
    let d = match identity_config(subject.identity) {
        Err(d) => {
            report(s, subject, &d, &Target::path(kind::WRITE, op, mech, None), hard);
            d
        }
        Ok(cfg) => match offsets() {
            Err(why) => {
                let d = unresolved(cfg.policy_version, why);
                report(s, subject, &d, &Target::path(kind::WRITE, op, mech, None), hard);
                d
            }
            Ok(o) => match resolve(s, o, obj) {
                Ok(r) if r.protect & protect::WRITE != 0 => {
                    refuse(subject, kind::SYSTEM, op, reason::TAMPER, 0, mech, hard, Some(r));
                    Decision::deny_for(reason::TAMPER, cfg.policy_version)
                }
                Ok(r) if guards_dir(op) && guarded(s, cfg, r) => {
                    refuse(subject, kind::WRITE, op, reason::GUARDED, 0, mech, hard, Some(r));
                    Decision::deny_for(reason::GUARDED, cfg.policy_version)
                }
                Ok(r) => {
                    let d = decide_path(s, &WRITE_RULES, kind::WRITE, cfg, cfg.write_default, cfg.write_glob, r);
                    let d = if d.ask { settle_ask(cfg, subject, o, d, how) } else { d };
                    // A new name for a file this identity may not write would let
                    // it write that file: refused as what it is (the rule stays).
                    let d = if link_source && d.block { Decision { reason: reason::LINK, ..d } } else { d };
                    report(s, subject, &d, &Target::path(kind::WRITE, op, mech, Some(r)), hard);
                    d
                }
                Err(why) => {
                    let d = unresolved(cfg.policy_version, why);
                    report(s, subject, &d, &Target::path(kind::WRITE, op, mech, None), hard);
                    d
                }
            },
        },
    };
    d
}

/// Operations that move, remove or replace a name: done to a directory that
/// holds what a deny or ask rule protects, they are a write to everything it
/// holds (a symlink put where such a directory should be would redirect it).
/// Creating the directory itself is not: it is then protected as it should be.
#[inline(always)]
fn guards_dir(op: u8) -> bool {
    matches!(op, op::RENAME | op::RMDIR | op::UNLINK | op::SYMLINK | op::LINK)
}

/// Whether the path in `s.path` is a directory that holds what a deny or ask
/// write rule protects (`GUARDED_DIRS`, exact keys per rule set).
#[inline(always)]
fn guarded(s: &mut Scratch, cfg: &IdentityConfig, r: Resolved) -> bool {
    if r.truncated {
        return false;
    }
    let bytes = r.len + 1;
    s.prefix_len = PathKey::prefix_bits(if bytes > PATH_KEY_LEN { PATH_KEY_LEN } else { bytes });
    s.ruleset = cfg.ruleset.to_be_bytes();
    // SAFETY: Scratch starts with exactly the layout of Key<PathKey>.
    let key = unsafe { &*(s as *const Scratch as *const Key<PathKey>) };
    // Exact keys only: a match must cover the whole path and its NUL.
    match GUARDED_DIRS.get(key) {
        Some(_) => true,
        None => false,
    }
}

#[inline(always)]
fn lsm_verdict(obj: Object, op: u8) -> i32 {
    lsm_verdict_settled(obj, op, Settle::Refuse)
}

#[inline(always)]
fn lsm_verdict_settled(obj: Object, op: u8, how: Settle) -> i32 {
    let Some(subject) = current_subject() else { return 0 };
    if judge(&subject, obj, op, mechanism::LSM, verdict::DENY, how).block { -EPERM } else { 0 }
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
        Ok(mode) if mode & FMODE_WRITE == 0 => {
            // Reads are not judged by the write rules, only by the guards; one
            // hash lookup for a task that is not bound.
            let Some(subject) = sticky_subject() else { return 0 };
            if guard_open(&subject, o, raw_arg(&ctx, 0), false, mechanism::LSM, verdict::DENY) {
                return -EPERM;
            }
            0
        }
        _ => {
            let Some(subject) = current_subject() else { return 0 };
            let file_raw = raw_arg(&ctx, 0);
            if guard_open(&subject, o, file_raw, true, mechanism::LSM, verdict::DENY) {
                return -EPERM;
            }
            if not_a_file(o, file_raw) {
                return 0;
            }
            let d = judge(&subject, Object::File(file), op::OPEN, mechanism::LSM, verdict::DENY, Settle::Hold(file_raw));
            if d.block {
                return -EPERM;
            }
            if d.soft_verdict != verdict::HELD {
                // This thread's open is not held: whatever an earlier open of it
                // left in WRITE_HOLDS must not be taken for this one.
                forget_write_hold();
            }
            0
        }
    }
}

const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
const PIPEFS_MAGIC: u64 = 0x5049_5045;
const SOCKFS_MAGIC: u64 = 0x534f_434b;
const S_IFMT: u16 = 0o170000;
const S_IFCHR: u16 = 0o020000;

/// Refuses (true) an open by a bound task of something enforcement depends on,
/// whatever its policy: bpffs (the pins), agentd's protected paths (reading its
/// state: its keys sign receipts), raw memory (`/dev/mem`, `/dev/kmem`,
/// `/dev/port`, `/proc/kcore`), and for writing, the files of any cgroup not
/// strictly below the task's own binding (a cgroup.procs write is a move).
#[inline(always)]
pub(crate) fn guard_open(subject: &Subject, o: &KernelOffsets, file: u64, write: bool, mech: u8, hard: u8) -> bool {
    let Ok(dentry) = read_u64(file + o.file_f_path as u64 + o.path_dentry as u64) else { return false };
    let Ok((dev, magic)) = dentry_fs(o, dentry) else { return false };
    let opc = if write { op::OPEN } else { op::READ };
    if magic == BPF_FS_MAGIC {
        refuse(subject, kind::SYSTEM, opc, reason::TAMPER, 0, mech, hard, None);
        return true;
    }
    if magic == PROC_SUPER_MAGIC && is_kcore(o, dentry) {
        refuse(subject, kind::SYSTEM, opc, reason::KERNEL, 0, mech, hard, None);
        return true;
    }
    if write && magic == PROC_SUPER_MAGIC && mech == mechanism::TRACEPOINT {
        // /proc/PID/mem (and task/TID/mem): writing another process's memory is
        // ptrace by another name. BPF LSM sees it as a ptrace access check.
        if let Some(target) = proc_mem_target(o, dentry) {
            if target != (bpf_get_current_pid_tgid() >> 32) as u32 {
                if let Err(why) = crate::guard::may_trace(subject, target) {
                    refuse(subject, kind::SYSTEM, op::PTRACE, why, target as u64, mech, hard, None);
                    return true;
                }
            }
        }
    }
    if let Ok(inode) = read_u64(dentry + o.dentry_d_inode as u64) {
        let mode = read_u16(inode + o.inode_i_mode as u64).unwrap_or(0);
        if mode & S_IFMT == S_IFCHR {
            let rdev = read_u32(inode + o.inode_i_rdev as u64).unwrap_or(0);
            // MKDEV(1, 1|2|4): mem, kmem, port.
            if rdev == (1 << 20) | 1 || rdev == (1 << 20) | 2 || rdev == (1 << 20) | 4 {
                refuse(subject, kind::SYSTEM, opc, reason::KERNEL, rdev as u64, mech, hard, None);
                return true;
            }
        }
    }
    if write && (magic == CGROUP2_SUPER_MAGIC || magic == CGROUP_SUPER_MAGIC) {
        if magic == CGROUP_SUPER_MAGIC || !below_binding(o, dentry, subject.binding) {
            // A cgroup.procs or cgroup.threads write is a move (out); any other
            // cgroup file changes a cgroup this identity does not own.
            let why = if names_a_move(o, dentry) { reason::ESCAPE } else { reason::TAMPER };
            let path = resolved_for_event(o, file);
            refuse(subject, kind::SYSTEM, op::CGROUP, why, 0, mech, hard, path);
            return true;
        }
    }
    if !write {
        // SAFETY: only tested for presence.
        if unsafe { PROTECTED_DEVS.get(&dev) }.is_some() {
            if let Some(r) = resolved_for_event(o, file) {
                if r.protect & protect::READ != 0 {
                    refuse(subject, kind::SYSTEM, op::READ, reason::TAMPER, 0, mech, hard, Some(r));
                    return true;
                }
            }
        }
    }
    false
}

/// A pipe or a socket reopened through `/proc/self/fd` (`echo > /dev/stdout`):
/// not a file in any filesystem, so not a file write.
#[inline(always)]
pub(crate) fn not_a_file(o: &KernelOffsets, file: u64) -> bool {
    let Ok(dentry) = read_u64(file + o.file_f_path as u64 + o.path_dentry as u64) else { return false };
    match dentry_fs(o, dentry) {
        Ok((_, magic)) => magic == PIPEFS_MAGIC || magic == SOCKFS_MAGIC,
        Err(_) => false,
    }
}

/// The honest path of `file` in the scratch buffer, for an event or a check.
#[inline(always)]
fn resolved_for_event(o: &KernelOffsets, file: u64) -> Option<Resolved> {
    let s = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, exclusively ours until the program returns.
    let s = unsafe { &mut *s };
    resolve_file(s, o, file).ok()
}

/// Whether the cgroupfs file at `dentry` is in a cgroup strictly below the
/// binding's cgroup (whose id is its directory's inode number).
#[inline(always)]
fn below_binding(o: &KernelOffsets, dentry: u64, binding: u64) -> bool {
    // The file's directory, then up: the binding must be met above it.
    let Ok(mut d) = read_u64(dentry + o.dentry_d_parent as u64) else { return false };
    let mut step = 0;
    while step < agent_common::MAX_CGROUP_DEPTH + 1 {
        step += 1;
        let Ok(parent) = read_u64(d + o.dentry_d_parent as u64) else { return false };
        if parent == d {
            return false;
        }
        let ino = read_u64(parent + o.dentry_d_inode as u64).and_then(|i| read_u64(i + o.inode_i_ino as u64));
        if let Ok(id) = ino {
            if id == binding {
                return true;
            }
        }
        d = parent;
    }
    false
}

/// The tgid a procfs `mem` file belongs to, if `dentry` is one.
#[inline(always)]
fn proc_mem_target(o: &KernelOffsets, dentry: u64) -> Option<u32> {
    let name = read_u64(dentry + o.dentry_d_name as u64 + o.qstr_name as u64).ok()?;
    // SAFETY: probe read of 4 bytes of the name (kernel memory, checked).
    let b = unsafe { bpf_probe_read_kernel(name as *const [u8; 4]) }.ok()?;
    if b != *b"mem\0" {
        return None;
    }
    let inode = read_u64(dentry + o.dentry_d_inode as u64).ok()?;
    let pid = read_u64(inode - o.proc_inode_vfs_inode as u64 + o.proc_inode_pid as u64).ok()?;
    if pid == 0 {
        return None;
    }
    let nr = read_u32(pid + o.pid_nr as u64).ok()?;
    // The pid may be a thread's: its process is what the guard compares.
    Some(nr)
}

/// Whether a cgroupfs file is `cgroup.procs` or `cgroup.threads`.
#[inline(always)]
fn names_a_move(o: &KernelOffsets, dentry: u64) -> bool {
    let Ok(name) = read_u64(dentry + o.dentry_d_name as u64 + o.qstr_name as u64) else { return true };
    // SAFETY: probe read of the first bytes of the name (kernel memory, checked).
    match unsafe { bpf_probe_read_kernel(name as *const [u8; 12]) } {
        Ok(b) => &b[..11] == b"cgroup.proc" || &b[..11] == b"cgroup.thre",
        Err(_) => true,
    }
}

/// `/proc/kcore`: the name `kcore` directly under procfs's root.
#[inline(always)]
fn is_kcore(o: &KernelOffsets, dentry: u64) -> bool {
    let Ok(parent) = read_u64(dentry + o.dentry_d_parent as u64) else { return false };
    let Ok(grand) = read_u64(parent + o.dentry_d_parent as u64) else { return false };
    if parent != grand {
        return false;
    }
    let Ok(name) = read_u64(dentry + o.dentry_d_name as u64 + o.qstr_name as u64) else { return false };
    // SAFETY: probe read of 6 bytes of the name (kernel memory, checked).
    match unsafe { bpf_probe_read_kernel(name as *const [u8; 6]) } {
        Ok(b) => b == *b"kcore\0",
        Err(_) => false,
    }
}

/// Whether `file` went into a write hold and was approved. The first time,
/// the approval is counted as an allow of its rule.
#[inline(always)]
fn approved_file(file: u64) -> bool {
    let Some(h) = WRITE_HELD_FILES.get_ptr_mut(&file) else { return false };
    // SAFETY: a live map value; a racing update of `state` can only count twice.
    let h = unsafe { &mut *h };
    match h.state {
        write_hold::COUNTED => true,
        write_hold::APPROVED => {
            if let Ok(cfg) = identity_config(h.identity) {
                count_hit(cfg.ruleset, kind::WRITE, h.rule_id, HIT_ALLOW);
            }
            h.state = write_hold::COUNTED;
            true
        }
        _ => false,
    }
}

/// Whether `file` went into a write hold that was never approved.
#[inline(always)]
fn held_unapproved(file: u64) -> Option<WriteHold> {
    // SAFETY: the value is copied out at once.
    let h = unsafe { WRITE_HELD_FILES.get(&file) }.copied()?;
    if approved_file(file) { None } else { Some(h) }
}

/// Refuses a change through a file whose hold was never approved, and reports it
/// (when the task doing it is bound; a descriptor passed to another process is
/// refused all the same).
#[inline(always)]
fn refuse_unapproved(file: u64, h: WriteHold, op: u8) -> i32 {
    bump(counter::DENY_WRITE);
    if let Some(subject) = current_subject() {
        if let Some(s) = SCRATCH.get_ptr_mut(0) {
            // SAFETY: per-CPU scratch, exclusively ours until the program returns.
            let s = unsafe { &mut *s };
            let version = match identity_config(subject.identity) {
                Ok(cfg) => cfg.policy_version,
                Err(d) => d.policy_version,
            };
            let d = Decision { rule_id: h.rule_id, ..Decision::deny_for(reason::NOT_APPROVED, version) };
            let path = offsets().ok().and_then(|o| resolve(s, o, Object::File(file)).ok());
            // The denial was counted above; report() counts blocks, so hand it a
            // non-blocking copy that still reports as a denial.
            let shown = Decision { block: false, soft_verdict: verdict::DENY, ..d };
            report(s, &subject, &shown, &Target::path(kind::WRITE, op, mechanism::LSM, path), verdict::DENY);
        }
    }
    -EPERM
}

#[lsm(hook = "file_permission")]

#[inline(always)]
pub fn lsm_file_permission(ctx: LsmContext) -> i32 {
    // file_permission(struct file *file, int mask); arg 2: previous verdict.
    let (mask, prev): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    if prev != 0 {
        return prev;
    }
    if mask & (MAY_WRITE | MAY_APPEND) == 0 {
        return 0;
    }
    let file = raw_arg(&ctx, 0);
    match held_unapproved(file) {
        Some(h) => refuse_unapproved(file, h, op::WRITE),
        None => 0,
    }
}

#[lsm(hook = "mmap_file")]

#[inline(always)]
pub fn lsm_mmap_file(ctx: LsmContext) -> i32 {
    // mmap_file(struct file *file, unsigned long reqprot, unsigned long prot,
    // unsigned long flags); arg 4: previous verdict. Any shared mapping of an
    // unapproved file is refused: a read-only one could be mprotect'ed writable.
    let (flags, prev): (u64, i32) = (ctx.arg(3), ctx.arg(4));
    let file = raw_arg(&ctx, 0);
    if prev != 0 {
        return prev;
    }
    if file == 0 || flags & MAP_SHARED == 0 {
        return 0;
    }
    match held_unapproved(file) {
        Some(h) => refuse_unapproved(file, h, op::WRITE),
        None => 0,
    }
}

#[lsm(hook = "file_free_security")]

#[inline(always)]
pub fn lsm_file_free_security(ctx: LsmContext) -> i32 {
    // file_free_security(struct file *file): the file is going; so is its hold.
    let file = raw_arg(&ctx, 0);
    // SAFETY: only tested for presence.
    if unsafe { WRITE_HELD_FILES.get(&file) }.is_some() {
        let _ = WRITE_HELD_FILES.remove(&file);
    }
    0
}

#[lsm(hook = "path_truncate")]

#[inline(always)]
pub fn lsm_path_truncate(ctx: LsmContext) -> i32 {
    // path_truncate(const struct path *path)
    let (path, prev): (u64, i32) = (ctx.arg(0), ctx.arg(1));
    if prev != 0 {
        return prev;
    }
    lsm_verdict_settled(Object::Path(path), op::TRUNCATE, Settle::Truncate(raw_arg(&ctx, 0)))
}

macro_rules! dir_dentry_hook {
    ($fn:ident, $hook:literal, $nargs:literal, $op:expr, $live:expr) => {
        #[lsm(hook = $hook)]
        #[inline(always)]
        pub fn $fn(ctx: LsmContext) -> i32 {
            // hook(const struct path *dir, struct dentry *dentry, ...); the
            // argument after the last one is the previous verdict.
            let (dir, dentry, prev): (u64, u64, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg($nargs));
            if prev != 0 {
                return prev;
            }
            let _ = dir;
            lsm_verdict(Object::Dentry { dentry, live: $live }, $op)
        }
    };
}

dir_dentry_hook!(lsm_path_unlink, "path_unlink", 2, op::UNLINK, true);
dir_dentry_hook!(lsm_path_rmdir, "path_rmdir", 2, op::RMDIR, true);
dir_dentry_hook!(lsm_path_mkdir, "path_mkdir", 3, op::MKDIR, false);
dir_dentry_hook!(lsm_path_mknod, "path_mknod", 4, op::CREATE, false);
dir_dentry_hook!(lsm_path_symlink, "path_symlink", 3, op::SYMLINK, false);

#[lsm(hook = "path_link")]

#[inline(always)]
pub fn lsm_path_link(ctx: LsmContext) -> i32 {
    // path_link(struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry)
    let (old_dentry, new_dentry, prev): (u64, u64, i32) = (ctx.arg(0), ctx.arg(2), ctx.arg(3));
    if prev != 0 {
        return prev;
    }
    // A file is every name it has: a new name for a file the rules do not let
    // this identity write would let it write that file. The link is judged as a
    // write of the file itself, then of the new name.
    let first = lsm_verdict(Object::Dentry { dentry: old_dentry, live: true }, LINK_SOURCE);
    if first != 0 {
        return first;
    }
    lsm_verdict(Object::Dentry { dentry: new_dentry, live: false }, op::LINK)
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
            let _ = (old_dir, new_dir);
            lsm_verdict2(
                Object::Dentry { dentry: old_dentry, live: true },
                Object::Dentry { dentry: new_dentry, live: false },
                op::RENAME,
            )
        }
    };
}

rename_hook!(lsm_path_rename4, 4);
rename_hook!(lsm_path_rename5, 5);

// ---- Metadata: a file's mode, owner, attributes and times are part of it ----

#[lsm(hook = "path_chmod")]
#[inline(always)]
pub fn lsm_path_chmod(ctx: LsmContext) -> i32 {
    // path_chmod(const struct path *path, umode_t mode)
    let (path, prev): (u64, i32) = (ctx.arg(0), ctx.arg(2));
    if prev != 0 {
        return prev;
    }
    lsm_verdict(Object::Path(path), op::CHMOD)
}

#[lsm(hook = "path_chown")]
#[inline(always)]
pub fn lsm_path_chown(ctx: LsmContext) -> i32 {
    // path_chown(const struct path *path, kuid_t uid, kgid_t gid)
    let (path, prev): (u64, i32) = (ctx.arg(0), ctx.arg(3));
    if prev != 0 {
        return prev;
    }
    lsm_verdict(Object::Path(path), op::CHOWN)
}

/// `iattr::ia_valid` bits: times (what `utimes` sets) and what other hooks judge.
const ATTR_TIMES: u32 = 0x10 | 0x20 | 0x80 | 0x100;
const ATTR_JUDGED_ELSEWHERE: u32 = 0x1 | 0x2 | 0x4 | 0x8;

/// `inode_setattr([idmap,] dentry, attr)`: only time changes are judged here
/// (mode, owner and size have their own path hooks). One program per
/// signature; the loader picks the one the kernel's BTF describes.
macro_rules! setattr_hook {
    ($fn:ident, $dentry_arg:literal, $verdict_arg:literal) => {
        #[lsm(hook = "inode_setattr")]
        #[inline(always)]
        pub fn $fn(ctx: LsmContext) -> i32 {
            let (dentry, attr): (u64, u64) = (ctx.arg($dentry_arg), ctx.arg($dentry_arg + 1));
            let prev: i32 = ctx.arg($verdict_arg);
            if prev != 0 {
                return prev;
            }
            let Ok(o) = offsets() else { return lsm_verdict(Object::Unknown, op::UTIMES) };
            let valid = read_u32(attr + o.iattr_ia_valid as u64).unwrap_or(ATTR_TIMES);
            if valid & ATTR_TIMES == 0 || valid & ATTR_JUDGED_ELSEWHERE != 0 {
                return 0;
            }
            lsm_verdict(Object::Dentry { dentry, live: true }, op::UTIMES)
        }
    };
}

setattr_hook!(lsm_inode_setattr2, 0, 2);
setattr_hook!(lsm_inode_setattr3, 1, 3);

#[lsm(hook = "inode_setxattr")]
#[inline(always)]
pub fn lsm_inode_setxattr(ctx: LsmContext) -> i32 {
    // inode_setxattr(idmap or userns, struct dentry *dentry, const char *name,
    // const void *value, size_t size, int flags): 6 arguments on 6.1 and 6.18
    // (the loader checks).
    let (dentry, prev): (u64, i32) = (ctx.arg(1), ctx.arg(6));
    if prev != 0 {
        return prev;
    }
    lsm_verdict(Object::Dentry { dentry, live: true }, op::XATTR)
}

#[lsm(hook = "inode_removexattr")]
#[inline(always)]
pub fn lsm_inode_removexattr(ctx: LsmContext) -> i32 {
    // inode_removexattr(idmap or userns, struct dentry *dentry, const char *name)
    let (dentry, prev): (u64, i32) = (ctx.arg(1), ctx.arg(3));
    if prev != 0 {
        return prev;
    }
    lsm_verdict(Object::Dentry { dentry, live: true }, op::XATTR)
}

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
    pub const OPEN_BY_HANDLE_AT: u64 = 304;
    pub const CHMOD: u64 = 90;
    pub const FCHMOD: u64 = 91;
    pub const CHOWN: u64 = 92;
    pub const FCHOWN: u64 = 93;
    pub const LCHOWN: u64 = 94;
    pub const UTIME: u64 = 132;
    pub const SETXATTR: u64 = 188;
    pub const LSETXATTR: u64 = 189;
    pub const FSETXATTR: u64 = 190;
    pub const REMOVEXATTR: u64 = 197;
    pub const LREMOVEXATTR: u64 = 198;
    pub const FREMOVEXATTR: u64 = 199;
    pub const UTIMES: u64 = 235;
    pub const FCHOWNAT: u64 = 260;
    pub const FUTIMESAT: u64 = 261;
    pub const FCHMODAT: u64 = 268;
    pub const UTIMENSAT: u64 = 280;
    pub const FCHMODAT2: u64 = 452;
}

/// x86 `TS_COMPAT`: the current syscall entered through a 32-bit gate.
const TS_COMPAT: u32 = 0x2;

/// x86-64 `struct pt_regs` offsets (a stable ABI) of the syscall arguments.
const REG_ARGS: [u64; 5] = [112 /* di */, 104 /* si */, 96 /* dx */, 56 /* r10 */, 72 /* r8 */];
pub(crate) const REG_ORIG_AX: u64 = 120;

#[inline(always)]
pub(crate) fn arg(regs: u64, i: usize) -> u64 {
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
pub(crate) fn fd_file(o: &KernelOffsets, fd: u64) -> Option<u64> {
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
pub(crate) fn is_compat() -> bool {
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
    // No string, or an empty one (AT_EMPTY_PATH, utimensat(fd, NULL)): the
    // operation is on the descriptor's own file.
    // SAFETY: probe read of one byte of user memory; a fault reads as empty.
    let first = if ptr == 0 { 0 } else { unsafe { aya_ebpf::helpers::bpf_probe_read_user(ptr as *const u8) }.unwrap_or(0) };
    let obj = if first == 0 {
        match at_base(o, dfd) {
            Some(base) if dfd as i64 as i32 as i64 != AT_FDCWD => Object::Path(base),
            _ => Object::Unknown,
        }
    } else {
        Object::User { ptr, base: at_base(o, dfd) }
    };
    judge(subject, obj, op, mechanism::TRACEPOINT, verdict::KILL, Settle::Refuse)
}

/// The open flags of open syscall `id` (openat2's are in user memory: used only
/// to tell whether to hold, never to allow; the exit check judges the file).
#[inline(always)]
fn open_flags(regs: u64, id: u64) -> u64 {
    match id {
        nr::OPEN => arg(regs, 1),
        nr::OPENAT => arg(regs, 2),
        nr::CREAT => O_CREAT | O_TRUNC | O_WRONLY,
        nr::OPENAT2 => {
            let how = arg(regs, 2);
            // SAFETY: probe read of user memory; failure reads as no flags.
            unsafe { aya_ebpf::helpers::bpf_probe_read_user(how as *const u64) }.unwrap_or(0)
        }
        _ => 0,
    }
}

/// Fallback tier: a bound task is opening a file to write it. Recorded so agentd,
/// seeing the open held by fanotify, knows to judge it (see `WriteHold`).
/// The open (`id` one of open, openat, openat2, creat) neither writes, creates nor
/// truncates: nothing to hold at its entry.
#[inline(always)]
pub(crate) fn open_is_read_only(regs: u64, id: u64) -> bool {
    open_flags(regs, id) & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC) == 0
}

/// x86-64 open, openat, openat2 and creat: the syscalls every task makes most of
/// those the fallback handlers judge.
#[inline(always)]
pub(crate) fn is_open(id: u64) -> bool {
    matches!(id, nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT)
}

#[inline(always)]
fn note_write_intent(regs: u64, id: u64) {
    if open_is_read_only(regs, id) {
        return;
    }
    let Some(subject) = current_subject() else { return };
    let h = WriteHold { state: write_hold::INTENT, identity: subject.identity, ..WriteHold::default() };
    let _ = WRITE_HOLDS.insert(&current_tid(), &h, 0);
}

/// The dispatcher's slots for what this tier cannot follow: io_uring_setup, and
/// `SYSCALL_OTHER` (every 32-bit and x32 syscall). Its own program, so the path
/// handler below, which every open of every task reaches, need not ask again
/// whether the task is in compat mode.
#[raw_tracepoint(tracepoint = "sys_enter")]
#[inline(always)]
pub fn tp_sys_enter_unjudgeable(_ctx: RawTracePointContext) -> i32 {
    refuse_unjudgeable();
    0
}

/// Wired only at x86-64 syscall numbers (the dispatcher sends 32-bit and x32
/// syscalls to `tp_sys_enter_unjudgeable`), so `id` is a native number.
#[raw_tracepoint(tracepoint = "sys_enter")]
#[inline(always)]
pub fn tp_sys_enter(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long id)
    let id: u64 = ctx.arg(1);
    if matches!(id, nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT) {
        note_write_intent(ctx.arg(0), id);
        return 0;
    }
    let cwd_fd = AT_FDCWD as u64;
    // (dirfd, path) pairs to judge, by syscall. Cheap filter before attribution:
    // this runs on every syscall of every task.
    let (a_fd, a_path, b_fd, b_path, op): (u64, u64, u64, u64, u8) = match id {
        // mkdir and mkdirat are judged at their exit, when they succeeded: `mkdir -p`
        // tries every existing ancestor and gets EEXIST, which changes nothing.
        nr::TRUNCATE | nr::UNLINK | nr::RMDIR | nr::MKNOD => {
            let regs: u64 = ctx.arg(0);
            let opc = match id {
                nr::TRUNCATE => op::TRUNCATE,
                nr::UNLINK => op::UNLINK,
                nr::RMDIR => op::RMDIR,
                _ => op::CREATE,
            };
            (cwd_fd, arg(regs, 0), 0, 0, opc)
        }
        nr::UNLINKAT | nr::MKNODAT => {
            let regs: u64 = ctx.arg(0);
            let opc = match id {
                nr::UNLINKAT => op::UNLINK,
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
        // A link is a write of the file it names (a file is every name it
        // has), then of the new name.
        nr::LINK => {
            let regs: u64 = ctx.arg(0);
            (cwd_fd, arg(regs, 0), cwd_fd, arg(regs, 1), LINK_SOURCE)
        }
        nr::LINKAT => {
            let regs: u64 = ctx.arg(0);
            (arg(regs, 0), arg(regs, 1), arg(regs, 2), arg(regs, 3), LINK_SOURCE)
        }
        nr::CHMOD | nr::CHOWN | nr::LCHOWN | nr::UTIME | nr::UTIMES | nr::SETXATTR | nr::LSETXATTR | nr::REMOVEXATTR
        | nr::LREMOVEXATTR => {
            let regs: u64 = ctx.arg(0);
            let opc = match id {
                nr::CHMOD => op::CHMOD,
                nr::CHOWN | nr::LCHOWN => op::CHOWN,
                nr::UTIME | nr::UTIMES => op::UTIMES,
                _ => op::XATTR,
            };
            (cwd_fd, arg(regs, 0), 0, 0, opc)
        }
        nr::FCHMODAT | nr::FCHMODAT2 | nr::FCHOWNAT | nr::FUTIMESAT | nr::UTIMENSAT => {
            let regs: u64 = ctx.arg(0);
            let opc = match id {
                nr::FCHMODAT | nr::FCHMODAT2 => op::CHMOD,
                nr::FCHOWNAT => op::CHOWN,
                _ => op::UTIMES,
            };
            (arg(regs, 0), arg(regs, 1), 0, 0, opc)
        }
        nr::FCHMOD | nr::FCHOWN | nr::FSETXATTR | nr::FREMOVEXATTR => {
            // On a descriptor: an empty string relative to it is the file itself.
            let regs: u64 = ctx.arg(0);
            let opc = match id {
                nr::FCHMOD => op::CHMOD,
                nr::FCHOWN => op::CHOWN,
                _ => op::XATTR,
            };
            (arg(regs, 0), 0, 0, 0, opc)
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
        kill_if_blocked(judge(&subject, Object::Unknown, op, mechanism::TRACEPOINT, verdict::KILL, Settle::Refuse));
        return 0;
    };
    let d = judge_user(&subject, o, a_fd, a_path, op);
    if d.block {
        kill_if_blocked(d);
        return 0;
    }
    if b_path != 0 {
        let b_op = if op == LINK_SOURCE { op::LINK } else { op };
        kill_if_blocked(judge_user(&subject, o, b_fd, b_path, b_op));
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]

#[inline(always)]
pub fn tp_sys_exit(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long ret)
    // Every open of every task ends here: an unbound task leaves after one hash
    // lookup. (Its thread has no write hold to forget: only a bound task's open
    // records one, and WRITE_HOLDS is LRU for one left by an unbind mid-open.)
    let Some(subject) = current_subject() else { return 0 };
    let ret: i64 = ctx.arg(1);
    let regs: u64 = ctx.arg(0);
    let id = read_u64(regs + REG_ORIG_AX).unwrap_or(u64::MAX);
    if id == nr::MKDIR || id == nr::MKDIRAT {
        // A directory was made (the arguments are still in the saved registers).
        if ret != 0 {
            return 0;
        }
        let Ok(o) = offsets() else { return 0 };
        let (dfd, path) = if id == nr::MKDIR { (AT_FDCWD as u64, arg(regs, 0)) } else { (arg(regs, 0), arg(regs, 1)) };
        kill_if_blocked(judge_user(&subject, o, dfd, path, op::MKDIR));
        return 0;
    }
    if !matches!(id, nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT | nr::OPEN_BY_HANDLE_AT) {
        return 0;
    }
    if ret < 0 {
        // A failed open leaves no intent behind.
        forget_write_hold();
        return 0;
    }
    // Open flags live in a register, not user memory (openat2's struct open_how is
    // the exception: read it from user memory, it is only used to widen the check).
    let flags = open_flags(regs, id);
    let Ok(o) = offsets() else {
        kill_if_blocked(judge(&subject, Object::Unknown, op::OPEN, mechanism::TRACEPOINT, verdict::KILL, Settle::Refuse));
        return 0;
    };
    let flags = if id == nr::OPEN_BY_HANDLE_AT { arg(regs, 2) } else { flags };
    let Some(file) = fd_file(o, ret as u64) else {
        kill_if_blocked(judge(&subject, Object::Unknown, op::OPEN, mechanism::TRACEPOINT, verdict::KILL, Settle::Refuse));
        return 0;
    };
    let mode = read_u32(file + o.file_f_mode as u64).unwrap_or(FMODE_WRITE);
    let write = !(mode & FMODE_WRITE == 0 && flags & (O_CREAT | O_TRUNC) == 0);
    if guard_open(&subject, o, file, write, mechanism::TRACEPOINT, verdict::KILL) {
        // SAFETY: signals the current task, the one that opened the file.
        unsafe { bpf_send_signal(SIGKILL) };
        forget_write_hold();
        return 0;
    }
    if !write || not_a_file(o, file) {
        forget_write_hold();
        return 0;
    }

    // An `ask` is let through only with agentd's approval of this very open
    // (settle_ask, which also clears this thread's entry); anything else kills.
    kill_if_blocked(judge(&subject, Object::File(file), op::OPEN, mechanism::TRACEPOINT, verdict::KILL, Settle::Exit(file)));
    forget_write_hold();
    0
}
