//! Enforcement out of reach: what no bound identity may do, whatever its policy.
//!
//! A bound task may not call bpf(), load kernel modules or kexec, use raw memory
//! or I/O ports, attach kprobes or uprobes, signal or trace agentd, trace a
//! process of another identity, move itself out of its cgroup, or (unless its
//! policy says `spec.system.namespaces: allow`) create namespaces, mount, unmount,
//! pivot_root or chroot — and even then only inside a mount namespace that is not
//! the reference one. Each refusal is an event of kind SYSTEM whose reason names
//! the class (`escape`, `tamper`, `namespace`, `bpf`, `ptrace`, `kernel`).
//!
//! With BPF LSM each is an EPERM from the hook that guards it. Without it, a raw
//! tracepoint on syscall entry kills the task before the syscall does anything
//! (a fatal signal pending at entry aborts clone, and the others are refused on
//! the registers alone, which the task cannot change under us).

use agent_common::{identity_flags, kind, mechanism, op, reason, verdict};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_send_signal},
    macros::{lsm, raw_tracepoint},
    programs::{LsmContext, RawTracePointContext},
    EbpfContext as _,
};

use crate::{
    attribution::{current_subject, identity_of, sticky_subject, Subject},
    decide::{bump, identity_config, report, Decision, Target},
    maps::{AGENTD_SIGNALLERS, GUARD, SCRATCH},
    vfs::{in_reference_view, offsets, read_u32, read_u64, Resolved},
    EPERM, SIGKILL,
};

/// CLONE_NEW* flags: mount, cgroup, uts, ipc, user, pid, net, time namespaces.
pub const CLONE_NEW_ANY: u64 = 0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000 | 0x80;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_FILES: u64 = 0x400;
const CLONE_THREAD: u64 = 0x10000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Capabilities a bound task may never use: modules, raw I/O and memory,
/// process accounting, reboot and kexec, MAC policy, perf and BPF.
#[inline(always)]
fn forbidden_cap(cap: i32) -> bool {
    matches!(cap, 16 /* SYS_MODULE */ | 17 /* SYS_RAWIO */ | 20 /* SYS_PACCT */ | 22 /* SYS_BOOT */ | 32 /* MAC_OVERRIDE */ | 33 /* MAC_ADMIN */ | 38 /* PERFMON */ | 39 /* BPF */)
}

/// The flags of the subject's identity (0 when it has no usable config: then
/// nothing is opted into).
#[inline(always)]
pub fn system_flags(subject: &Subject) -> u8 {
    match identity_config(subject.identity) {
        Ok(cfg) => cfg.flags,
        Err(_) => 0,
    }
}

/// Refuses a guarded action of `subject`: counts it and reports it (kind SYSTEM,
/// unless `kind` says it is about a file write or exec), with `path` (in the
/// scratch buffer) when there is one.
#[inline(always)]
pub fn refuse(subject: &Subject, kind_: u8, op_: u8, why: u8, aux: u64, mech: u8, hard: u8, path: Option<Resolved>) {
    bump(agent_common::counter::GUARDS);
    let version = match identity_config(subject.identity) {
        Ok(cfg) => cfg.policy_version,
        Err(d) => d.policy_version,
    };
    let d = Decision::deny_for(why, version);
    let mut t = Target::path(kind_, op_, mech, path);
    t.aux = aux;
    if let Some(s) = SCRATCH.get_ptr(0) {
        // SAFETY: per-CPU scratch, read only here (the path, if any, is in it).
        report(unsafe { &*s }, subject, &d, &t, hard);
    }
}

#[inline(always)]
fn deny_lsm(subject: &Subject, op_: u8, why: u8, aux: u64) -> i32 {
    refuse(subject, kind::SYSTEM, op_, why, aux, mechanism::LSM, verdict::DENY, None);
    -EPERM
}

/// Whether BPF LSM programs run here (agentd sets it once it proved it).
#[inline(always)]
pub fn lsm_runs() -> bool {
    match GUARD.get(0) {
        Some(g) => g.flags & agent_common::guard_flags::LSM != 0,
        None => false,
    }
}

/// agentd's tgid and process group (0 when agentd is not running).
#[inline(always)]
fn agentd() -> (u32, u32) {
    match GUARD.get(0) {
        Some(g) => (g.agentd_tgid, g.agentd_pgid),
        None => (0, 0),
    }
}

/// Whether `subject` may trace (attach to) process `target`: never agentd, and
/// otherwise only a process of its own identity when its policy allows ptrace.
/// `Err(reason)` when not.
#[inline(always)]
pub(crate) fn may_trace(subject: &Subject, target: u32) -> Result<(), u8> {
    let (agentd_tgid, _) = agentd();
    if target != 0 && target == agentd_tgid {
        return Err(reason::TAMPER);
    }
    if system_flags(subject) & identity_flags::PTRACE != 0 && identity_of(target) == Some(subject.identity) {
        return Ok(());
    }
    Err(reason::PTRACE)
}

/// Whether mounting is allowed: opted in, and not in the reference mount view.
#[inline(always)]
fn may_mount(subject: &Subject) -> bool {
    if system_flags(subject) & identity_flags::NAMESPACES == 0 {
        return false;
    }
    match offsets() {
        Ok(o) => !in_reference_view(o),
        Err(_) => false,
    }
}

// ---- BPF LSM ------------------------------------------------------------------

#[lsm(hook = "bpf")]
#[inline(always)]
pub fn lsm_bpf(ctx: LsmContext) -> i32 {
    // bpf(int cmd, union bpf_attr *attr, unsigned int size)
    let (cmd, prev): (i32, i32) = (ctx.arg(0), ctx.arg(3));
    if prev != 0 {
        return prev;
    }
    match current_subject() {
        Some(s) => deny_lsm(&s, op::BPF, reason::BPF, cmd as u64),
        None => 0,
    }
}

#[lsm(hook = "capable")]
#[inline(always)]
pub fn lsm_capable(ctx: LsmContext) -> i32 {
    // capable(const struct cred *cred, struct user_namespace *ns, int cap,
    // unsigned int opts)
    let (cap, prev): (i32, i32) = (ctx.arg(2), ctx.arg(4));
    if prev != 0 {
        return prev;
    }
    // Cheap filter first: this hook runs on every capability check of every task.
    if !forbidden_cap(cap) {
        return 0;
    }
    match sticky_subject() {
        Some(s) => deny_lsm(&s, op::CAPABILITY, reason::KERNEL, cap as u64),
        None => 0,
    }
}

#[lsm(hook = "task_alloc")]
#[inline(always)]
pub fn lsm_task_alloc(ctx: LsmContext) -> i32 {
    // task_alloc(struct task_struct *task, unsigned long clone_flags)
    let (flags, prev): (u64, i32) = (ctx.arg(1), ctx.arg(2));
    if prev != 0 {
        return prev;
    }
    if flags & (CLONE_INTO_CGROUP | CLONE_NEW_ANY) == 0 {
        return 0;
    }
    let Some(s) = current_subject() else { return 0 };
    if flags & CLONE_INTO_CGROUP != 0 {
        return deny_lsm(&s, op::CGROUP, reason::ESCAPE, flags);
    }
    if system_flags(&s) & identity_flags::NAMESPACES == 0 {
        return deny_lsm(&s, op::NAMESPACE, reason::NAMESPACE, flags & CLONE_NEW_ANY);
    }
    0
}

#[lsm(hook = "userns_create")]
#[inline(always)]
pub fn lsm_userns_create(ctx: LsmContext) -> i32 {
    // userns_create(const struct cred *cred)
    let prev: i32 = ctx.arg(1);
    if prev != 0 {
        return prev;
    }
    let Some(s) = current_subject() else { return 0 };
    if system_flags(&s) & identity_flags::NAMESPACES == 0 {
        return deny_lsm(&s, op::NAMESPACE, reason::NAMESPACE, CLONE_NEWUSER);
    }
    0
}

/// unshare(2) and setns(2) have no LSM hook of their own, but every namespace
/// they create or enter needs CAP_SYS_ADMIN (a user namespace is `userns_create`):
/// that capability check, made while the task is in one of those two syscalls,
/// is where they are refused.
#[lsm(hook = "capable")]
#[inline(always)]
pub fn lsm_capable_namespaces(ctx: LsmContext) -> i32 {
    let (cap, prev): (i32, i32) = (ctx.arg(2), ctx.arg(4));
    if prev != 0 {
        return prev;
    }
    if cap != 21 {
        return 0;
    }
    let Some(s) = sticky_subject() else { return 0 };
    let nr = current_syscall();
    if nr != 272 /* unshare */ && nr != 308 /* setns */ {
        return 0;
    }
    if system_flags(&s) & identity_flags::NAMESPACES != 0 {
        return 0;
    }
    deny_lsm(&s, op::NAMESPACE, reason::NAMESPACE, nr)
}

/// The number of the syscall the current task is in (x86-64 `orig_ax`).
#[inline(always)]
fn current_syscall() -> u64 {
    // SAFETY: the helpers take the BTF task pointer the first one returns; the
    // registers are read through probe_read.
    unsafe {
        let task = aya_ebpf::helpers::generated::bpf_get_current_task_btf();
        let regs = aya_ebpf::helpers::generated::bpf_task_pt_regs(task) as u64;
        if regs == 0 {
            return u64::MAX;
        }
        read_u64(regs + crate::write::REG_ORIG_AX).unwrap_or(u64::MAX)
    }
}

macro_rules! mount_hook {
    ($fn:ident, $hook:literal, $nargs:literal, $what:expr) => {
        #[lsm(hook = $hook)]
        #[inline(always)]
        pub fn $fn(ctx: LsmContext) -> i32 {
            let prev: i32 = ctx.arg($nargs);
            if prev != 0 {
                return prev;
            }
            let Some(s) = current_subject() else { return 0 };
            if may_mount(&s) {
                return 0;
            }
            deny_lsm(&s, op::MOUNT, reason::NAMESPACE, $what)
        }
    };
}

// sb_mount(const char *dev_name, const struct path *path, const char *type,
//          unsigned long flags, void *data)
mount_hook!(lsm_sb_mount, "sb_mount", 5, 0);
// sb_umount(struct vfsmount *mnt, int flags)
mount_hook!(lsm_sb_umount, "sb_umount", 2, 1);
// move_mount(const struct path *from_path, const struct path *to_path)
mount_hook!(lsm_move_mount, "move_mount", 2, 2);
// sb_pivotroot(const struct path *old_path, const struct path *new_path)
mount_hook!(lsm_sb_pivotroot, "sb_pivotroot", 2, 3);
// path_chroot(const struct path *path)
mount_hook!(lsm_path_chroot, "path_chroot", 1, 4);

#[lsm(hook = "ptrace_access_check")]
#[inline(always)]
pub fn lsm_ptrace_access_check(ctx: LsmContext) -> i32 {
    // ptrace_access_check(struct task_struct *child, unsigned int mode)
    let (mode, prev): (u32, i32) = (ctx.arg(1), ctx.arg(2));
    if prev != 0 {
        return prev;
    }
    // PTRACE_MODE_ATTACH: ptrace itself, process_vm_{read,write}v, pidfd_getfd,
    // /proc/PID/mem. Read-mode checks (ps, /proc/PID/stat) are not a way in.
    if mode & 0x02 == 0 {
        return 0;
    }
    let Some(s) = current_subject() else { return 0 };
    let child = raw_arg(&ctx, 0);
    let target = match offsets() {
        Ok(o) => read_u32(child + o.task_tgid as u64).unwrap_or(0),
        Err(_) => 0,
    };
    if target == (bpf_get_current_pid_tgid() >> 32) as u32 {
        return 0;
    }
    match may_trace(&s, target) {
        Ok(()) => 0,
        Err(why) => deny_lsm(&s, op::PTRACE, why, target as u64),
    }
}

#[lsm(hook = "task_kill")]
#[inline(always)]
pub fn lsm_task_kill(ctx: LsmContext) -> i32 {
    // task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig,
    //           const struct cred *cred)
    let (sig, prev): (i32, i32) = (ctx.arg(2), ctx.arg(4));
    if prev != 0 {
        return prev;
    }
    if sig == 0 {
        return 0;
    }
    let (agentd_tgid, _) = agentd();
    if agentd_tgid == 0 {
        return 0;
    }
    let p = raw_arg(&ctx, 0);
    let target = match offsets() {
        Ok(o) => read_u32(p + o.task_tgid as u64).unwrap_or(0),
        Err(_) => return 0,
    };
    if target != agentd_tgid {
        return 0;
    }
    match current_subject() {
        Some(s) => deny_lsm(&s, op::SIGNAL, reason::TAMPER, ((sig as u64) << 32) | target as u64),
        None => 0,
    }
}

#[lsm(hook = "perf_event_open")]
#[inline(always)]
pub fn lsm_perf_event_open(ctx: LsmContext) -> i32 {
    // perf_event_open(struct perf_event_attr *attr, int type)
    let prev: i32 = ctx.arg(2);
    if prev != 0 {
        return prev;
    }
    let attr = raw_arg(&ctx, 0);
    // perf_event_attr::type is its first field. Hardware, software, cache and
    // raw counters are harmless; tracepoints, breakpoints and the dynamic PMUs
    // (kprobe, uprobe) are not.
    let ty = read_u32(attr).unwrap_or(u32::MAX);
    if matches!(ty, 0 | 1 | 3 | 4) {
        return 0;
    }
    match current_subject() {
        Some(s) => deny_lsm(&s, op::PERF, reason::KERNEL, ty as u64),
        None => 0,
    }
}

/// Socket families a bound task may create: local (unix, netlink) and the IP
/// ones, whose types and protocols the cgroup `sock_create` program judges.
#[inline(always)]
pub fn family_judged(family: u64) -> bool {
    matches!(family, 1 /* AF_UNIX */ | 2 /* AF_INET */ | 10 /* AF_INET6 */ | 16 /* AF_NETLINK */)
}

#[lsm(hook = "socket_create")]
#[inline(always)]
pub fn lsm_socket_create(ctx: LsmContext) -> i32 {
    // socket_create(int family, int type, int protocol, int kern)
    let (family, ty, protocol, kern, prev): (i32, i32, i32, i32, i32) =
        (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3), ctx.arg(4));
    if prev != 0 {
        return prev;
    }
    if kern != 0 || family_judged(family as u64) {
        return 0;
    }
    match sticky_subject() {
        Some(s) => {
            let aux = ((family as u64) << 32) | (((ty as u64) & 0xffff) << 16) | ((protocol as u64) & 0xffff);
            refuse(&s, kind::SOCKET, op::SOCKET, reason::PROTOCOL, aux, mechanism::LSM, verdict::DENY, None);
            -EPERM
        }
        None => 0,
    }
}

/// Argument `n` of an LSM hook as a plain number (see `write::raw_arg`).
#[inline(always)]
fn raw_arg(ctx: &LsmContext, n: usize) -> u64 {
    let p = (ctx.as_ptr() as *const u64).wrapping_add(n);
    // SAFETY: reads the hook's own argument array, which is always readable.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(p) }.unwrap_or(0)
}

// ---- Fallback: raw syscall tracepoint + SIGKILL -------------------------------

mod nr {
    pub const MMAP: u64 = 9;
    pub const CLONE: u64 = 56;
    pub const KILL: u64 = 62;
    pub const PTRACE: u64 = 101;
    pub const RT_SIGQUEUEINFO: u64 = 129;
    pub const PIVOT_ROOT: u64 = 155;
    pub const SETRLIMIT: u64 = 160;
    pub const CHROOT: u64 = 161;
    pub const ACCT: u64 = 163;
    pub const MOUNT: u64 = 165;
    pub const UMOUNT2: u64 = 166;
    pub const IOPL: u64 = 172;
    pub const IOPERM: u64 = 173;
    pub const INIT_MODULE: u64 = 175;
    pub const DELETE_MODULE: u64 = 176;
    pub const TKILL: u64 = 200;
    pub const TGKILL: u64 = 234;
    pub const KEXEC_LOAD: u64 = 246;
    pub const UNSHARE: u64 = 272;
    pub const RT_TGSIGQUEUEINFO: u64 = 297;
    pub const PERF_EVENT_OPEN: u64 = 298;
    pub const PRLIMIT64: u64 = 302;
    pub const SETNS: u64 = 308;
    pub const PROCESS_VM_READV: u64 = 310;
    pub const PROCESS_VM_WRITEV: u64 = 311;
    pub const FINIT_MODULE: u64 = 313;
    pub const KEXEC_FILE_LOAD: u64 = 320;
    pub const BPF: u64 = 321;
    pub const PIDFD_SEND_SIGNAL: u64 = 424;
    pub const OPEN_TREE: u64 = 428;
    pub const MOVE_MOUNT: u64 = 429;
    pub const FSMOUNT: u64 = 432;
    pub const CLONE3: u64 = 435;
    pub const PIDFD_GETFD: u64 = 438;
    pub const MOUNT_SETATTR: u64 = 442;
    pub const SOCKET: u64 = 41;
}

#[inline(always)]
fn kill_refusing(subject: &Subject, op_: u8, why: u8, aux: u64) {
    refuse(subject, kind::SYSTEM, op_, why, aux, mechanism::TRACEPOINT, verdict::KILL, None);
    // SAFETY: signals the current task, the one making the syscall.
    unsafe { bpf_send_signal(SIGKILL) };
}

/// The pid (in the initial namespace) a pidfd refers to, when the descriptor is
/// a pidfd this code can read (pidfs, 6.9+); `None` otherwise.
#[inline(always)]
fn pidfd_target(fd: u64) -> Option<u32> {
    let o = offsets().ok()?;
    let file = crate::write::fd_file(o, fd)?;
    let dentry = read_u64(file + o.file_f_path as u64 + o.path_dentry as u64).ok()?;
    let (_, magic) = crate::vfs::dentry_fs(o, dentry).ok()?;
    if magic != 0x5049_4446 {
        return None;
    }
    let pid = read_u64(file + o.file_private_data as u64).ok()?;
    read_u32(pid + o.pid_nr as u64).ok()
}

/// Whether a signal sent with kill(2)-style `pid` (or a tgid) reaches agentd.
#[inline(always)]
fn reaches_agentd(pid: i64) -> bool {
    let (tgid, pgid) = agentd();
    if tgid == 0 {
        return false;
    }
    pid == -1 || pid == tgid as i64 || (pgid != 0 && pid == -(pgid as i64))
}

#[raw_tracepoint(tracepoint = "sys_enter")]
#[inline(always)]
pub fn tp_sys_enter_guard(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long id)
    let id: u64 = ctx.arg(1);
    // Cheap filter before attribution: this runs on every syscall of every task.
    let wanted = matches!(
        id,
        nr::CLONE
            | nr::KILL
            | nr::PTRACE
            | nr::RT_SIGQUEUEINFO
            | nr::PIVOT_ROOT
            | nr::SETRLIMIT
            | nr::CHROOT
            | nr::ACCT
            | nr::MOUNT
            | nr::UMOUNT2
            | nr::IOPL
            | nr::IOPERM
            | nr::INIT_MODULE
            | nr::DELETE_MODULE
            | nr::TKILL
            | nr::TGKILL
            | nr::KEXEC_LOAD
            | nr::UNSHARE
            | nr::RT_TGSIGQUEUEINFO
            | nr::PERF_EVENT_OPEN
            | nr::PRLIMIT64
            | nr::SETNS
            | nr::PROCESS_VM_READV
            | nr::PROCESS_VM_WRITEV
            | nr::FINIT_MODULE
            | nr::KEXEC_FILE_LOAD
            | nr::BPF
            | nr::PIDFD_SEND_SIGNAL
            | nr::OPEN_TREE
            | nr::MOVE_MOUNT
            | nr::FSMOUNT
            | nr::CLONE3
            | nr::PIDFD_GETFD
            | nr::MOUNT_SETATTR
            | nr::SOCKET
    );
    if !wanted {
        return 0;
    }
    let Some(s) = current_subject() else { return 0 };
    let regs: u64 = ctx.arg(0);
    let a0 = crate::write::arg(regs, 0);
    match id {
        nr::BPF => kill_refusing(&s, op::BPF, reason::BPF, a0),
        nr::INIT_MODULE | nr::FINIT_MODULE => kill_refusing(&s, op::MODULE, reason::KERNEL, 0),
        nr::DELETE_MODULE => kill_refusing(&s, op::MODULE, reason::KERNEL, 1),
        nr::KEXEC_LOAD | nr::KEXEC_FILE_LOAD => kill_refusing(&s, op::MODULE, reason::KERNEL, 2),
        nr::IOPL | nr::IOPERM => kill_refusing(&s, op::RAWIO, reason::KERNEL, 17),
        nr::ACCT => kill_refusing(&s, op::CAPABILITY, reason::KERNEL, 20),
        nr::PERF_EVENT_OPEN => kill_refusing(&s, op::PERF, reason::KERNEL, 0),
        nr::UNSHARE | nr::SETNS => {
            let ns = if id == nr::UNSHARE { a0 & CLONE_NEW_ANY } else { u64::MAX };
            if ns != 0 && system_flags(&s) & identity_flags::NAMESPACES == 0 {
                kill_refusing(&s, op::NAMESPACE, reason::NAMESPACE, ns);
            }
        }
        nr::CLONE | nr::CLONE3 => {
            let flags = if id == nr::CLONE {
                a0
            } else {
                // SAFETY: probe read of user memory (struct clone_args begins with
                // the flags). The task could change it after this read; the
                // kernel's lineage still keeps the child in this identity.
                unsafe { bpf_probe_read_user(a0 as *const u64) }.unwrap_or(0)
            };
            if flags & CLONE_INTO_CGROUP != 0 {
                kill_refusing(&s, op::CGROUP, reason::ESCAPE, flags);
            } else if flags & CLONE_NEW_ANY != 0 && system_flags(&s) & identity_flags::NAMESPACES == 0 {
                kill_refusing(&s, op::NAMESPACE, reason::NAMESPACE, flags & CLONE_NEW_ANY);
            } else if flags & CLONE_FILES != 0 && flags & CLONE_THREAD == 0 {
                // Processes sharing one descriptor table: a killed opener's fd
                // stays usable by its sibling, which this tier cannot follow.
                kill_refusing(&s, op::SYSCALL, reason::UNSUPPORTED_SYSCALL, flags);
            }
        }
        nr::MOUNT | nr::UMOUNT2 | nr::PIVOT_ROOT | nr::CHROOT | nr::MOVE_MOUNT | nr::FSMOUNT | nr::MOUNT_SETATTR => {
            if !may_mount(&s) {
                kill_refusing(&s, op::MOUNT, reason::NAMESPACE, id);
            }
        }
        nr::OPEN_TREE => {
            // Only OPEN_TREE_CLONE makes a (detached) mount.
            if crate::write::arg(regs, 2) & 1 != 0 && !may_mount(&s) {
                kill_refusing(&s, op::MOUNT, reason::NAMESPACE, id);
            }
        }
        nr::PTRACE => {
            // PTRACE_ATTACH, PTRACE_SEIZE: every other request needs one first.
            if a0 == 16 || a0 == 0x4206 {
                let target = crate::write::arg(regs, 1) as u32;
                if let Err(why) = may_trace(&s, target) {
                    kill_refusing(&s, op::PTRACE, why, target as u64);
                }
            }
        }
        nr::PROCESS_VM_READV | nr::PROCESS_VM_WRITEV => {
            let target = a0 as u32;
            if target != (bpf_get_current_pid_tgid() >> 32) as u32 {
                if let Err(why) = may_trace(&s, target) {
                    kill_refusing(&s, op::PTRACE, why, target as u64);
                }
            }
        }
        nr::PIDFD_GETFD => match pidfd_target(a0) {
            Some(t) if t == (bpf_get_current_pid_tgid() >> 32) as u32 => {}
            Some(t) => {
                if let Err(why) = may_trace(&s, t) {
                    kill_refusing(&s, op::PTRACE, why, t as u64);
                }
            }
            None => kill_refusing(&s, op::PTRACE, reason::PTRACE, 0),
        },
        nr::KILL | nr::TGKILL | nr::RT_SIGQUEUEINFO | nr::RT_TGSIGQUEUEINFO => {
            let sig = if id == nr::KILL || id == nr::RT_SIGQUEUEINFO { crate::write::arg(regs, 1) } else { crate::write::arg(regs, 2) };
            if id == nr::RT_SIGQUEUEINFO || id == nr::RT_TGSIGQUEUEINFO || sig != 0 {
                // pid_t is 32 bits: the register's upper half is not its sign.
                if reaches_agentd(a0 as u32 as i32 as i64) {
                    let _ = AGENTD_SIGNALLERS.insert(&((bpf_get_current_pid_tgid() >> 32) as u32), &s.identity, 0);
                    kill_refusing(&s, op::SIGNAL, reason::TAMPER, (sig << 32) | (a0 & 0xffff_ffff));
                }
            }
        }
        nr::TKILL => {
            // A thread id: this tier cannot tell which process it belongs to, so
            // only the caller's own threads' ids are let through (pthread_kill
            // and raise use tgkill; tkill across processes is legacy).
            let tid = a0 as u32;
            if tid != bpf_get_current_pid_tgid() as u32 && crate::write::arg(regs, 1) != 0 {
                kill_refusing(&s, op::SIGNAL, reason::TAMPER, tid as u64);
            }
        }
        nr::PIDFD_SEND_SIGNAL => {
            let sig = crate::write::arg(regs, 1);
            if sig != 0 {
                match pidfd_target(a0) {
                    Some(t) if !reaches_agentd(t as i64) => {}
                    // Unreadable (a /proc/PID directory fd, an older kernel):
                    // refused, this tier cannot tell where it goes.
                    _ => {
                        let _ = AGENTD_SIGNALLERS.insert(&((bpf_get_current_pid_tgid() >> 32) as u32), &s.identity, 0);
                        kill_refusing(&s, op::SIGNAL, reason::TAMPER, sig << 32);
                    }
                }
            }
        }
        nr::SOCKET => {
            // Families the egress hooks judge (the cgroup socket program sees only
            // IPv4 and IPv6 ones): everything else, vsock and the rest, is refused.
            if !family_judged(a0) {
                kill_refusing(&s, op::SOCKET, reason::PROTOCOL, a0 << 32);
            }
        }
        nr::SETRLIMIT | nr::PRLIMIT64 => {
            // RLIMIT_CORE stays 0 for bound tasks on this tier: a core dump
            // is a file write no syscall hook sees.
            let (res, new) = if id == nr::SETRLIMIT { (a0, 1) } else { (crate::write::arg(regs, 1), crate::write::arg(regs, 2)) };
            if res == 4 && new != 0 {
                kill_refusing(&s, op::RLIMIT, reason::UNSUPPORTED_SYSCALL, res);
            }
        }
        _ => {}
    }
    0
}

/// Judges nothing here; re-exported for the exec-mapping fallback in `exec`.
pub const MMAP_NR: u64 = nr::MMAP;
