//! The contract between agentd's kernel programs and its userspace daemon.
//!
//! Every type here crosses the user/kernel boundary through a BPF map or the event
//! ring buffer, so each is `#[repr(C)]`, has explicit padding (the verifier rejects
//! reads of uninitialised stack bytes) and only fixed-size fields. Numeric codes are
//! plain `u8`/`u32` constants rather than Rust enums: the kernel side must never
//! trust that a byte read from a map is a valid enum discriminant.
//!
//! Zero is never a meaningful "allow": a missing or zeroed entry must fail closed.
#![no_std]

/// How many cgroup levels the kernel walks up from a task's cgroup to find a binding.
/// Bindings deeper than this are refused by the daemon, so no process can escape
/// attribution by nesting cgroups.
pub const MAX_CGROUP_DEPTH: u32 = 24;

/// Path bytes in a [`PathKey`]. The LPM trie's data is limited to 256 bytes and the
/// identity takes four of them.
pub const PATH_KEY_LEN: usize = 252;
/// Path bytes carried in an [`Event`].
pub const EVENT_PATH_LEN: usize = 256;
/// Port rules that one egress LPM entry can hold (its own and those inherited from
/// covering prefixes, most specific first).
pub const MAX_PORT_RULES: usize = 16;
/// Number of slots in the `COUNTERS` per-CPU array.
pub const COUNTERS_LEN: u32 = 16;

/// Policy actions as stored in kernel maps. `ACTION_NONE` (zero) is treated as deny.
pub mod action {
    pub const NONE: u8 = 0;
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
    /// Held for approval. Until the hold service exists the kernel denies it.
    pub const ASK: u8 = 3;
    /// Allow and report.
    pub const AUDIT: u8 = 4;
}

/// What kind of action an event is about.
pub mod kind {
    pub const EXEC: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const EGRESS: u8 = 3;
    /// Creation of a raw or packet socket, refused to every bound identity.
    pub const SOCKET: u8 = 4;
    /// Something that would change what enforcement sees or reach enforcement
    /// itself (bpf(), mounts, namespaces, agentd, other identities' processes,
    /// cgroup moves, kernel modules): refused to every bound identity whatever its
    /// policy (`reason` says which class; `spec.system` opts into a few).
    pub const SYSTEM: u8 = 5;
    /// A connect (or datagram) to a local (AF_UNIX) socket, judged by `egress.unix`.
    pub const UNIX: u8 = 6;
}

/// The outcome the kernel imposed.
pub mod verdict {
    /// The operation failed with EPERM; it did not happen.
    pub const DENY: u8 = 1;
    /// SIGKILL was sent to the task: the syscall may have completed, but the task
    /// never ran another user-space instruction.
    pub const KILL: u8 = 2;
    /// Allowed and reported (audit rule).
    pub const AUDIT: u8 = 3;
    /// Monitor mode: would have been denied.
    pub const WOULD_DENY: u8 = 4;
    /// An `ask` that a person approved (the kernel found the daemon's one-shot
    /// approval for this very file): allowed.
    pub const APPROVED: u8 = 5;
    /// An `ask` connect redirected to agentd's hold proxy: it waits there for a
    /// person's decision.
    pub const HELD: u8 = 6;
}

/// Which kernel mechanism made the decision.
pub mod mechanism {
    pub const LSM: u8 = 1;
    pub const TRACEPOINT: u8 = 2;
    pub const SOCK_ADDR: u8 = 3;
    pub const SOCK_CREATE: u8 = 4;
}

/// The operation within a kind.
pub mod op {
    pub const EXEC: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const TRUNCATE: u8 = 3;
    pub const UNLINK: u8 = 4;
    pub const RENAME: u8 = 5;
    pub const CREATE: u8 = 6;
    pub const LINK: u8 = 7;
    pub const SYMLINK: u8 = 8;
    pub const MKDIR: u8 = 9;
    pub const RMDIR: u8 = 10;
    pub const CONNECT: u8 = 11;
    pub const SENDMSG: u8 = 12;
    pub const SOCKET: u8 = 13;
    /// A syscall the fallback tier cannot judge (io_uring, 32-bit compat).
    pub const SYSCALL: u8 = 14;
    /// A write (or shared mapping) through an already open file.
    pub const WRITE: u8 = 15;
    /// `mmap`/`mprotect` of a file with PROT_EXEC (kind EXEC): code from a file
    /// mapped to run without an exec (the dynamic loader, `dlopen`).
    pub const MMAP_EXEC: u8 = 16;
    /// Metadata writes (kind WRITE): chmod, chown, set/remove xattr, utimes.
    pub const CHMOD: u8 = 17;
    pub const CHOWN: u8 = 18;
    pub const XATTR: u8 = 19;
    pub const UTIMES: u8 = 20;
    /// An open for reading (kind SYSTEM: agentd's state, bpffs, raw memory).
    pub const READ: u8 = 21;
    /// Kind SYSTEM operations; `Event::aux` carries the detail named on each.
    /// bpf(2); aux: the command.
    pub const BPF: u8 = 22;
    /// mount, umount, move_mount, pivot_root, chroot; aux: 0 mount, 1 umount,
    /// 2 move_mount, 3 pivot_root, 4 chroot, 5 remount.
    pub const MOUNT: u8 = 23;
    /// unshare, setns, or clone with CLONE_NEW*; aux: the CLONE_NEW* flags.
    pub const NAMESPACE: u8 = 24;
    /// ptrace, process_vm_writev, pidfd_getfd, /proc/PID/mem; aux: target pid.
    pub const PTRACE: u8 = 25;
    /// A signal to agentd; aux: signal number << 32 | target pid.
    pub const SIGNAL: u8 = 26;
    /// Kernel modules and kexec; aux: 0 load, 1 delete, 2 kexec.
    pub const MODULE: u8 = 27;
    /// A move into another cgroup (cgroup.procs/cgroup.threads write, clone3
    /// CLONE_INTO_CGROUP) or a write to a cgroup's files; aux: clone flags (clone)
    /// or 0 (a file: the path is in `path`).
    pub const CGROUP: u8 = 28;
    /// perf_event_open of a kprobe, uprobe, tracepoint or breakpoint; aux: type.
    pub const PERF: u8 = 29;
    /// iopl, ioperm and other raw I/O (CAP_SYS_RAWIO); aux: capability.
    pub const RAWIO: u8 = 30;
    /// A capability the bound identity may never use; aux: its number.
    pub const CAPABILITY: u8 = 31;
    /// Changing a resource limit agentd keeps (RLIMIT_CORE on the fallback tier).
    pub const RLIMIT: u8 = 32;
}

/// Why the decision came out as it did.
pub mod reason {
    /// A rule matched; `rule_id` names it.
    pub const RULE: u8 = 1;
    /// No rule matched; the kind's default applied.
    pub const DEFAULT: u8 = 2;
    /// The identity is revoked or expired: everything is denied.
    pub const REVOKED: u8 = 3;
    /// The cgroup is bound to an identity that has no policy loaded: deny.
    pub const NO_POLICY: u8 = 4;
    /// The kernel could not resolve the path (too deep, too long, or unreadable):
    /// fail closed.
    pub const UNRESOLVED: u8 = 5;
    /// Raw and packet sockets are never allowed to bound identities.
    pub const RAW_SOCKET: u8 = 6;
    /// A syscall the fallback tier cannot see through (io_uring_setup, whose
    /// operations bypass syscall tracepoints; 32-bit compat or x32 syscalls,
    /// numbered differently): refused to bound identities.
    pub const UNSUPPORTED_SYSCALL: u8 = 7;
    /// The identity's expiry time has passed (checked by the kernel itself, so it
    /// holds while the daemon is down): everything is denied.
    pub const EXPIRED: u8 = 8;
    /// A write through a file whose `ask` hold was never approved (agentd died
    /// while it was held, and the kernel let the open go on): refused.
    pub const NOT_APPROVED: u8 = 9;
    /// Leaving the bound cgroup subtree (a cgroup move, clone3 CLONE_INTO_CGROUP).
    pub const ESCAPE: u8 = 10;
    /// Reaching enforcement itself: agentd's process, socket, state and config,
    /// bpffs pins, the cgroup files of bound cgroups.
    pub const TAMPER: u8 = 11;
    /// Creating or entering namespaces, mounting, pivot_root, chroot (unless
    /// `spec.system.namespaces: allow`, and then only inside its own namespaces).
    pub const NAMESPACE: u8 = 12;
    /// bpf(2), any command.
    pub const BPF: u8 = 13;
    /// ptrace and its kin against a process of another identity (or any, unless
    /// `spec.system.ptrace: allow`).
    pub const PTRACE: u8 = 14;
    /// Kernel modules, kexec, raw memory and I/O ports, kprobes/uprobes.
    pub const KERNEL: u8 = 15;
    /// A socket family, type or protocol the egress hooks cannot judge (UDP-Lite,
    /// SCTP, vsock, ...) or ICMP without a rule that allows it.
    pub const PROTOCOL: u8 = 16;
    /// A path rule protecting something below this directory: renaming, removing
    /// or replacing the directory is a write to what it holds.
    pub const GUARDED: u8 = 17;
    /// A hard link of a file the rules deny writing, into a place that allows it.
    pub const LINK: u8 = 18;
}

/// Bits of [`IdentityConfig::flags`].
pub mod identity_flags {
    /// Revoked or expired: deny everything.
    pub const REVOKED: u8 = 1;
    /// `mode: monitor`: allow, but report what would have been denied.
    pub const MONITOR: u8 = 2;
    /// `spec.system.namespaces: allow`: may create namespaces and mount inside
    /// mount namespaces it is in that are not the reference one. Paths are still
    /// judged in the reference view.
    pub const NAMESPACES: u8 = 4;
    /// `spec.system.ptrace: allow`: may ptrace processes of the same identity.
    pub const PTRACE: u8 = 8;
    /// The policy has an egress rule that allows ICMP (`protocol: icmp`): ICMP
    /// "ping" sockets may be created, and each destination is judged.
    pub const ICMP: u8 = 16;
}

/// Slots of the `COUNTERS` per-CPU array.
pub mod counter {
    /// Events written to the ring buffer.
    pub const EVENTS: u32 = 0;
    /// Events lost because the ring buffer was full.
    pub const EVENTS_DROPPED: u32 = 1;
    pub const DENY_EXEC: u32 = 2;
    pub const DENY_WRITE: u32 = 3;
    pub const DENY_EGRESS: u32 = 4;
    pub const DENY_SOCKET: u32 = 5;
    /// Tasks killed by a fallback (tracepoint) mechanism.
    pub const KILLS: u32 = 6;
    /// Decisions that failed closed because a path could not be resolved.
    pub const UNRESOLVED: u32 = 7;
    /// LSM hook invocations by the daemon's start-up probe task.
    pub const LSM_PROBE: u32 = 8;
    /// Rule hit counts lost because the `HITS` map was full.
    pub const HITS_DROPPED: u32 = 9;
    /// Forks whose child could not be recorded in `TASK_IDENTITY` (full): the
    /// child is still judged through its cgroup, but would lose its identity if
    /// moved out of it.
    pub const LINEAGE_FULL: u32 = 10;
    /// Attempts on enforcement itself refused (kind SYSTEM decisions).
    pub const GUARDS: u32 = 11;
    /// Reported decisions folded into an earlier identical one of the same window
    /// (`AGG`): they reach the daemon as a count, not one by one.
    pub const AGG_REPEATS: u32 = 12;
    /// Reported decisions the kernel could keep neither in `AGG` (the identity's
    /// share or the table was full) nor in the ring buffer: counted per identity
    /// and kind in `AGG_LOST`, and recorded as a `gap` receipt.
    pub const LOST: u32 = 13;
    /// Decisions lost even from `AGG_LOST` (that table full): counted only here.
    pub const LOST_UNCOUNTED: u32 = 14;
}

/// Length of one aggregation window (`AggKey::epoch`), in ns of boot time. Every
/// distinct decision gets its own event once per window; the repeats within it
/// are counted.
pub const AGG_WINDOW_NS: u64 = 5_000_000_000;
/// Live `AGG` entries one identity may hold: past it, its new distinct decisions
/// are counted in `AGG_LOST` instead, so one identity's flood of distinct
/// decisions cannot take the table from the others.
pub const AGG_IDENTITY_SHARE: u64 = 4096;
/// Entries of the `AGG` table (allocated as used).
pub const AGG_MAX: u32 = 32768;

/// Key of the in-kernel aggregation table `AGG`: what makes two reported
/// decisions the same one (identity, kind, operation, target, rule, verdict),
/// within one window, made by the same process: each process that tries a thing
/// is named in an event of its own, while one process repeating it is counted.
/// Bytes of `path` past `path_len` are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AggKey {
    /// `ktime_get_boot_ns() / AGG_WINDOW_NS`.
    pub epoch: u32,
    pub identity: u32,
    pub rule_id: u32,
    pub policy_version: u32,
    /// The process (thread group) that made it.
    pub tgid: u32,
    pub kind: u8,
    pub verdict: u8,
    pub mechanism: u8,
    pub op: u8,
    pub reason: u8,
    pub protocol: u8,
    pub port: u16,
    pub family: u16,
    pub path_len: u16,
    pub path_truncated: u8,
    pub _pad: [u8; 7],
    pub aux: u64,
    pub addr: [u8; 16],
    pub path: [u8; EVENT_PATH_LEN],
}

/// Value of `AGG`: how many times the decision was made in its window, and who
/// made it first (so the daemon can report it even when the ring buffer had no
/// room for its event).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AggValue {
    /// Decisions counted, the first included (atomically incremented).
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    /// `agg_emitted`: whether the first one's event went into the ring buffer.
    pub emitted: u32,
    pub comm: [u8; 16],
}

/// `AggValue::emitted`.
pub mod agg_emitted {
    /// The daemon must deliver the first decision from the table: the ring
    /// buffer was full.
    pub const TABLE: u32 = 0;
    /// Its event is in the ring buffer.
    pub const SENT: u32 = 1;
    /// Being decided by the program that made the entry; the daemon looks again
    /// at its next reading (and delivers it from the table if the window closes
    /// first).
    pub const PENDING: u32 = 2;
}

/// Key of `AGG_LOST`: decisions that could not be kept, per window, identity,
/// kind and verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LostKey {
    pub epoch: u32,
    pub identity: u32,
    pub kind: u8,
    pub verdict: u8,
    pub _pad: [u8; 6],
}

/// Value of `AGG_LOST`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LostValue {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// Value of the `IDENTITIES` map, keyed by the identity's numeric id (`u32`).
/// A bound cgroup whose identity has no entry here is denied everything.
///
/// A policy's rules live in the rule maps under a *rule set* id, never under the
/// identity: a new version of a policy is written under a fresh rule set, then each
/// identity's config (defaults, flags, version and rule set together, in one hash
/// map update) is switched to it, then the old rule set is deleted. A lookup
/// therefore sees the old version whole or the new one whole, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityConfig {
    pub exec_default: u8,
    pub write_default: u8,
    pub egress_default: u8,
    pub flags: u8,
    /// Version of the policy these maps were compiled from; copied into events.
    pub policy_version: u32,
    /// Key prefix of this identity's rules in `EXEC_RULES`, `EXEC_INODES`,
    /// `WRITE_RULES`, `EGRESS_RULES`, `GLOB_STATES`, and of its rule hit counters.
    pub ruleset: u32,
    /// Start state in `GLOB_STATES` of the automaton matching the rule set's exec
    /// patterns that an LPM trie cannot express (`*` in a name, `**` before the end);
    /// 0: there are none.
    pub exec_glob: u16,
    /// The same for write patterns.
    pub write_glob: u16,
    /// `CLOCK_BOOTTIME` nanoseconds at which the identity expires (0: never). The
    /// kernel compares it with `bpf_ktime_get_boot_ns()` on every decision.
    pub expires_boot_ns: u64,
    /// Start state in `GLOB_STATES` of the automaton of the `egress.unix` patterns
    /// an LPM trie cannot express; 0: none.
    pub unix_glob: u16,
    /// `egress.unix.default` as an `action` code (allow when the policy has no
    /// `unix:` section).
    pub unix_default: u8,
    pub _pad: [u8; 5],
}

/// Data part of an LPM-trie key for exec and write rules.
///
/// The prefix length counts bits from the start of `ruleset`: 32 bits of rule set
/// plus 8 per path byte. A rule for a path prefix (`/usr/lib/git-core/**`) is the
/// prefix's bytes; an exact path rule is the path's bytes followed by one NUL byte,
/// so it only matches a lookup that ends there too and always beats a prefix.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PathKey {
    /// The rule set id ([`IdentityConfig::ruleset`]), big-endian so the trie's bit
    /// order is well defined.
    pub ruleset: [u8; 4],
    pub path: [u8; PATH_KEY_LEN],
}

impl PathKey {
    /// Prefix length in bits for `path_bytes` bytes of path after the identity.
    pub const fn prefix_bits(path_bytes: usize) -> u32 {
        32 + 8 * path_bytes as u32
    }
}

/// Value of an exec or write rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathRule {
    pub action: u8,
    pub _pad: [u8; 3],
    pub rule_id: u32,
    /// The rule's place in its kind's precedence order (higher wins; 1 is the
    /// weakest rule). A path can match both a trie entry and a pattern of the
    /// glob automaton; the kernel takes the one with the higher rank.
    pub rank: u32,
}

/// Key of the `GLOB_STATES` hash: one state of a rule set's glob automaton.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GlobKey {
    pub ruleset: u32,
    /// 1.. (0 is the dead state, which is never stored: no pattern can match).
    pub state: u32,
}

/// Bits of [`GlobState::flags`].
pub mod glob_flags {
    /// Every path that reaches this state, however it continues, gets the same
    /// answer (this state's `rule_id`, or none): the kernel can stop reading, and
    /// may trust the answer for a path longer than it can read.
    pub const STABLE: u8 = 1;
}

/// One state of a deterministic automaton over path bytes that matches all of a
/// rule set's path patterns of one kind at once. The daemon builds it from the
/// patterns; the kernel feeds it the real path byte by byte (one hash lookup per
/// byte, at most `PATH_KEY_LEN` of them, stopping early at a stable state).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobState {
    /// Next state for each byte; 0: dead.
    pub next: [u16; 256],
    /// The winning pattern rule when the path ends in this state (0: none matches).
    pub rule_id: u32,
    /// Its [`PathRule::rank`].
    pub rank: u32,
    /// Its action.
    pub action: u8,
    /// `glob_flags::*`.
    pub flags: u8,
    pub _pad: [u8; 2],
}

impl Default for GlobState {
    fn default() -> Self {
        GlobState { next: [0; 256], rule_id: 0, rank: 0, action: 0, flags: 0, _pad: [0; 2] }
    }
}

/// States the `GLOB_STATES` map holds, for all rule sets together.
pub const GLOB_STATES_MAX: u32 = 8192;

/// Data part of an LPM-trie key for egress rules. IPv4 addresses are stored
/// IPv4-mapped (`::ffff:a.b.c.d`), so a v4 /n is a prefix of 32 + 96 + n bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrKey {
    /// The rule set id, big-endian.
    pub ruleset: [u8; 4],
    pub addr: [u8; 16],
}

/// Key of the `EXEC_INODES` hash: an executable named by an exact exec rule,
/// pinned by its inode, so a hard link or a bind mount of it under another name
/// gets the rule's decision too. `dev` is the kernel's own encoding of the
/// superblock's `s_dev` (major << 20 | minor), not `stat`'s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExecInodeKey {
    pub ruleset: u32,
    pub dev: u32,
    pub ino: u64,
}

/// A one-shot approval of a held exec, value of `EXEC_APPROVALS` keyed by tgid.
/// The daemon writes it just before it lets the held open go on; the exec check
/// (BPF LSM `bprm_check_security`, or `sched_process_exec` on the fallback tier)
/// of that process allows an `ask` only if it finds an entry for exactly this file
/// (`dev` in the kernel's `s_dev` encoding, as in [`ExecInodeKey`]) before
/// `expires_boot_ns`, and deletes it. So an exec the daemon did not approve — a
/// daemon killed mid-hold makes the kernel let the held open through — is still
/// denied (or killed) in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecApproval {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
    /// CLOCK_BOOTTIME, as `bpf_ktime_get_boot_ns`.
    pub expires_boot_ns: u64,
}

/// A write open held for approval (value of `WRITE_HOLDS`, keyed by the opening
/// thread's tid, and of `WRITE_HELD_FILES`, keyed by the `struct file *`).
///
/// With BPF LSM, `file_open` runs *before* fanotify's `FAN_OPEN_PERM` event, so it
/// cannot wait for the answer: for an `ask` it lets the open go on into the hold
/// and records the file as [`write_hold::PENDING`]. agentd, answering the held
/// open, finds the entry by tid, sets it to [`write_hold::APPROVED`] before it
/// lets the open go on, or denies the open. Every later way to change the file's
/// contents (`file_permission` for write, shared `mmap`, truncate) checks the
/// file's entry: pending means not approved, EPERM. So an open the daemon never
/// answered (killed mid-hold: the kernel then lets held opens go on) cannot write.
///
/// Without BPF LSM the opened file is judged at `sys_exit`, after the hold: the
/// entry is then an [`write_hold::INTENT`] written at `sys_enter` (so agentd
/// knows which held opens to look at), which agentd turns into `APPROVED` with
/// the file's `dev`/`ino`; the exit check lets an `ask` through only with it and
/// deletes it, and kills the task otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteHold {
    /// The `struct file *` (BPF LSM only; 0 on the fallback tier).
    pub file: u64,
    pub ino: u64,
    /// CLOCK_BOOTTIME; an `APPROVED` intent is void after it (fallback tier).
    pub expires_boot_ns: u64,
    /// The kernel's `s_dev` encoding, as in [`ExecInodeKey`].
    pub dev: u32,
    /// `write_hold::*`
    pub state: u32,
    pub identity: u32,
    pub rule_id: u32,
}

/// States of a [`WriteHold`].
pub mod write_hold {
    /// Fallback tier: a bound task is in an open with write flags.
    pub const INTENT: u32 = 1;
    /// BPF LSM: `file_open` let an `ask` open into the hold; not approved.
    pub const PENDING: u32 = 2;
    /// agentd approved it.
    pub const APPROVED: u32 = 3;
    /// Approved, and counted as an allow of its rule (BPF LSM: at the first
    /// change through the file).
    pub const COUNTED: u32 = 4;
}

/// A TCP connect an `ask` rule sent to agentd's hold proxy instead of its
/// destination: where it was going and who asked. Written by connect4/6 keyed by
/// socket cookie, moved by the `sock_ops` program (once the source port exists) to
/// `HELD_CONNECTS` keyed by [`held_connect_key`], where the proxy finds it by the
/// accepted connection's peer port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldConnect {
    /// The original destination, IPv4 as IPv4-mapped IPv6.
    pub addr: [u8; 16],
    pub port: u16,
    /// AF_INET or AF_INET6 of the socket.
    pub family: u16,
    pub identity: u32,
    pub rule_id: u32,
    pub policy_version: u32,
    pub tgid: u32,
    pub _pad: u32,
}

/// `HELD_CONNECTS` key of a held connection: the socket's family and its local
/// (source) port on loopback.
pub const fn held_connect_key(family: u16, local_port: u16) -> u32 {
    ((family as u32) << 16) | local_port as u32
}

/// Index 0 of `HOLD_PROXY`: the loopback ports of agentd's hold proxy. 0: no proxy,
/// so an `ask` connect is denied (fail closed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldProxy {
    /// On 127.0.0.1, for IPv4 sockets.
    pub port4: u16,
    /// On ::1, for IPv6 sockets.
    pub port6: u16,
}

/// Key of the per-CPU `HITS` hash: how often one rule (or a kind's default,
/// `rule_id == 0`) of one rule set decided.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HitKey {
    pub ruleset: u32,
    pub rule_id: u32,
    /// `kind::EXEC`, `kind::WRITE` or `kind::EGRESS`.
    pub kind: u8,
    pub _pad: [u8; 3],
}

/// Value of the `HITS` map (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hits {
    /// Allowed (by allow or audit).
    pub allow: u64,
    /// Blocked (deny; ask while the kernel has no hold).
    pub deny: u64,
    /// Monitor mode: allowed, would have been blocked.
    pub would_deny: u64,
    /// Allowed by an audit rule.
    pub audit: u64,
}

/// One port rule inside an [`EgressRules`] entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// Inclusive range, host byte order. 0..=65535 means all ports.
    pub port_lo: u16,
    pub port_hi: u16,
    /// 0 = any, 6 = TCP, 17 = UDP.
    pub protocol: u8,
    pub action: u8,
    pub _pad: [u8; 2],
    pub rule_id: u32,
}

/// Value of an egress LPM entry: the ordered port rules that apply to addresses in
/// the entry's prefix. The kernel takes the first that matches port and protocol;
/// when none does, the identity's egress default applies. The compiler copies rules
/// of covering (shorter) prefixes into longer ones so that one lookup is enough.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressRules {
    pub count: u32,
    pub rules: [PortRule; MAX_PORT_RULES],
}

/// Value of `TASK_IDENTITY`, keyed by tgid: the identity a process acts for.
///
/// A cgroup binding is how an identity is *attached*; this is where it is *kept*.
/// A process gets an entry when it first acts in a bound cgroup (or when agentd
/// binds the cgroup it is in), and its children inherit it at fork, so moving
/// out of the cgroup — by a cgroup.procs write, clone3(CLONE_INTO_CGROUP) or
/// another process — sheds nothing. The entry goes when the last thread exits,
/// when the binding it came from is removed, or is rewritten on a rebind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskIdentity {
    pub identity: u32,
    pub _pad: u32,
    /// The cgroup id of the binding that attributed it (for unbind and rebind).
    pub binding: u64,
}

/// Bits of a `PROTECTED_PATHS` value.
pub mod protect {
    /// No bound task may write, create, rename, link, unlink or change metadata
    /// of it or anything below it.
    pub const WRITE: u32 = 1;
    /// No bound task may open it, or anything below it, even for reading (the
    /// state directory holds the receipt and identity signing keys).
    pub const READ: u32 = 2;
}

/// Value of `REF_MOUNTS`: how a path inside one filesystem reads in the reference
/// mount view (the host's initial mount namespace).
///
/// The kernel builds a file's path by walking dentries up to its superblock's
/// root, never through the mounts it was reached by, so bind mounts and private
/// mount namespaces change nothing. The LPM key is (`s_dev`, path inside the
/// filesystem) of a mount's root in the reference view; the longest match says
/// where that part of the filesystem is mounted there: drop `strip` bytes of the
/// in-filesystem path and put `prefix[..len]` in front. A filesystem with no
/// mount in the reference view has no entry: its paths are `unresolved`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountPrefix {
    pub strip: u16,
    pub len: u16,
    pub _pad: u32,
    pub prefix: [u8; MOUNT_PREFIX_LEN],
}

/// Longest mount point path a [`MountPrefix`] carries.
pub const MOUNT_PREFIX_LEN: usize = 248;

impl Default for MountPrefix {
    fn default() -> Self {
        MountPrefix { strip: 0, len: 0, _pad: 0, prefix: [0; MOUNT_PREFIX_LEN] }
    }
}

/// Index 0 of `GUARD`: what the kernel needs to keep enforcement out of a bound
/// task's reach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    /// agentd's tgid: no bound task may signal or trace it. 0: agentd is down.
    pub agentd_tgid: u32,
    /// Inode number of the reference mount namespace (`/proc/1/ns/mnt`).
    pub ref_mnt_ns: u32,
    /// agentd's process group (signals to `-pgid`).
    pub agentd_pgid: u32,
    /// `guard_flags::*`.
    pub flags: u32,
}

/// Bits of [`GuardConfig::flags`].
pub mod guard_flags {
    /// BPF LSM programs run here (agentd proved it at start-up): what only they
    /// can judge (ICMP destinations) may be allowed.
    pub const LSM: u32 = 1;
}

/// Byte offsets of kernel struct fields, read by the daemon from the running
/// kernel's BTF and stored at index 0 of the `KERNEL_OFFSETS` array. Rust eBPF has
/// no CO-RE, so this is how the programs walk `struct file` → dentries → mounts on
/// any kernel. `valid == 0` (never filled) makes every path decision fail closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub valid: u32,
    pub file_f_path: u32,
    pub file_f_mode: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub vfsmount_mnt_root: u32,
    pub binprm_file: u32,
    pub task_fs: u32,
    pub fs_struct_pwd: u32,
    pub task_files: u32,
    pub files_struct_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    /// `struct socket::type` (SOCK_STREAM/SOCK_DGRAM), for LSM `socket_connect`.
    pub socket_type: u32,
    /// Number of arguments of the `path_rename` LSM hook on this kernel (4 or 5:
    /// `flags` was added in 5.19). An LSM program reads the previous program's
    /// verdict from the argument after the last one.
    pub path_rename_nargs: u32,
    /// `task_struct::thread_info.status` (x86: TS_COMPAT marks a 32-bit syscall,
    /// including `int 0x80` from 64-bit code).
    pub task_ti_status: u32,
    /// `file::f_inode`, `inode::i_ino`, `inode::i_sb`, `super_block::s_dev`: the
    /// executable's (dev, inode) for `EXEC_INODES`.
    pub file_f_inode: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub super_block_s_dev: u32,
    // Honest paths: walking dentries to the superblock root, never through mounts.
    pub dentry_d_inode: u32,
    pub dentry_d_sb: u32,
    /// `dentry::d_hash` (an `hlist_bl_node`; its `pprev`, 8 bytes on, is NULL
    /// when the dentry is unhashed: a deleted file).
    pub dentry_d_hash: u32,
    pub super_block_s_root: u32,
    pub super_block_s_magic: u32,
    pub inode_i_mode: u32,
    pub inode_i_rdev: u32,
    // Sticky identity and the guards.
    pub task_tgid: u32,
    pub task_signal: u32,
    /// `signal_struct::live`: threads not yet exiting.
    pub signal_live: u32,
    pub task_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    /// `mnt_namespace::ns` + `ns_common::inum`.
    pub mnt_ns_inum: u32,
    pub fs_struct_root: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `cgroup::self` + `cgroup_subsys_state::parent` (a cgroup begins with its
    /// `self` css, so the parent css is the parent cgroup).
    pub cgroup_parent: u32,
    pub file_private_data: u32,
    pub vm_area_vm_file: u32,
    /// `pid::numbers` + `upid::nr`: the pid in the initial pid namespace.
    pub pid_nr: u32,
    pub socket_sk: u32,
    pub sock_sk_protocol: u32,
    pub unix_sock_path: u32,
    pub unix_sock_peer: u32,
    pub unix_sock_addr: u32,
    /// `unix_address::name` (a `sockaddr_un`: the path starts 2 bytes on).
    pub unix_address_name: u32,
    pub iattr_ia_valid: u32,
    /// Argument counts of the xattr hooks (the previous verdict follows them).
    pub inode_setxattr_nargs: u32,
    pub inode_removexattr_nargs: u32,
    /// `inode_setattr` gained an idmap argument in front of the dentry in 6.3.
    pub inode_setattr_nargs: u32,
    /// `task_struct::mm`, `mm_struct::exe_file`: the running executable, whose
    /// mapping at exec was judged as the exec itself.
    pub task_mm: u32,
    pub mm_exe_file: u32,
    /// `sock_common::skc_family` (a `struct sock` begins with its `sock_common`).
    pub sock_family: u32,
    /// `msghdr::msg_name`: the kernel's copy of a sendmsg destination.
    pub msghdr_msg_name: u32,
    /// `linux_binprm::filename` and `::interp`: the path exec was given, and
    /// the one the final binary is run as (they differ for a `#!` script).
    pub binprm_filename: u32,
    pub binprm_interp: u32,
    /// `proc_inode::pid` and `proc_inode::vfs_inode`: the process a /proc file
    /// belongs to is at `inode - vfs_inode + pid`.
    pub proc_inode_pid: u32,
    pub proc_inode_vfs_inode: u32,
    pub inode_i_nlink: u32,
    pub _pad: u32,
    /// `task_struct::cgroups`, `css_set::dfl_cgrp`: a task's cgroup (v2).
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
}

/// A decision the kernel reports to the daemon through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    pub ktime_ns: u64,
    pub cgroup_id: u64,
    pub identity: u32,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub rule_id: u32,
    pub policy_version: u32,
    pub kind: u8,
    pub verdict: u8,
    pub mechanism: u8,
    pub op: u8,
    pub reason: u8,
    /// 6 = TCP, 17 = UDP, 0 = unknown (egress only).
    pub protocol: u8,
    /// Destination port, host byte order (egress only).
    pub port: u16,
    /// AF_INET or AF_INET6 (egress only).
    pub family: u16,
    /// Bytes used in `path`; `EVENT_PATH_LEN` with `path_truncated` set when cut.
    pub path_len: u16,
    pub path_truncated: u8,
    pub _pad: [u8; 3],
    /// Detail of a kind SYSTEM event, as its `op` says (a target pid, a bpf
    /// command, clone flags, a capability); 0 otherwise.
    pub aux: u64,
    /// Destination address; IPv4 is IPv4-mapped (egress only).
    pub addr: [u8; 16],
    pub comm: [u8; 16],
    /// Target path: the executable (exec) or the file (write).
    pub path: [u8; EVENT_PATH_LEN],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], contain only integers and byte arrays, and
    // have explicit padding, so every bit pattern is valid and none has hidden bytes.
    unsafe impl aya::Pod for IdentityConfig {}
    unsafe impl aya::Pod for PathKey {}
    unsafe impl aya::Pod for PathRule {}
    unsafe impl aya::Pod for GlobKey {}
    unsafe impl aya::Pod for GlobState {}
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for PortRule {}
    unsafe impl aya::Pod for EgressRules {}
    unsafe impl aya::Pod for ExecInodeKey {}
    unsafe impl aya::Pod for ExecApproval {}
    unsafe impl aya::Pod for WriteHold {}
    unsafe impl aya::Pod for HeldConnect {}
    unsafe impl aya::Pod for HoldProxy {}
    unsafe impl aya::Pod for HitKey {}
    unsafe impl aya::Pod for Hits {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for TaskIdentity {}
    unsafe impl aya::Pod for MountPrefix {}
    unsafe impl aya::Pod for GuardConfig {}
    unsafe impl aya::Pod for AggKey {}
    unsafe impl aya::Pod for AggValue {}
    unsafe impl aya::Pod for LostKey {}
    unsafe impl aya::Pod for LostValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<IdentityConfig>(), 32);
        assert_eq!(size_of::<ExecInodeKey>(), 16);
        assert_eq!(size_of::<ExecApproval>(), 24);
        assert_eq!(size_of::<HeldConnect>(), 40);
        assert_eq!(size_of::<HoldProxy>(), 4);
        assert_eq!(held_connect_key(10, 443), (10 << 16) | 443);
        assert_eq!(size_of::<HitKey>(), 12);
        assert_eq!(size_of::<Hits>(), 32);
        assert_eq!(size_of::<PathKey>(), 256);
        assert_eq!(size_of::<PathRule>(), 12);
        assert_eq!(size_of::<GlobKey>(), 8);
        assert_eq!(size_of::<GlobState>(), 512 + 12);
        assert_eq!(size_of::<AddrKey>(), 20);
        assert_eq!(size_of::<PortRule>(), 12);
        assert_eq!(size_of::<EgressRules>(), 4 + 12 * MAX_PORT_RULES);
        assert_eq!(size_of::<KernelOffsets>(), 69 * 4);
        assert_eq!(size_of::<TaskIdentity>(), 16);
        assert_eq!(size_of::<MountPrefix>(), 8 + MOUNT_PREFIX_LEN);
        assert_eq!(size_of::<GuardConfig>(), 16);
        assert_eq!(
            size_of::<Event>(),
            8 + 8 + 6 * 4 + 8 + 4 + 4 + 8 + 16 + 16 + EVENT_PATH_LEN
        );
        assert_eq!(
            size_of::<AggKey>(),
            20 + 6 + 2 + 2 + 2 + 8 + 8 + 16 + EVENT_PATH_LEN
        );
        assert_eq!(size_of::<AggValue>(), 4 * 8 + 4 * 4 + 16);
        assert_eq!(size_of::<LostKey>(), 16);
        assert_eq!(size_of::<LostValue>(), 24);
    }
}
