//! Every map the programs share with the daemon. Maps marked `pinned` live under the
//! daemon's pin directory, so a restarted daemon adopts them and enforcement never
//! depends on the daemon being alive.

use agent_common::{
    AddrKey, AggKey, AggValue, EgressRules, Event, ExecApproval, ExecInodeKey, GlobKey, GlobState,
    GuardConfig, HeldConnect, HitKey, Hits, HoldProxy, IdentityConfig, KernelOffsets, LostKey,
    LostValue, MountPrefix, PathKey, PathRule, TaskIdentity, WriteHold, AGG_MAX, COUNTERS_LEN,
    GLOB_STATES_MAX, PATH_KEY_LEN,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
};

/// cgroup id → identity id. A task is attributed to the deepest bound ancestor of
/// its cgroup (see `attribution`).
#[map]
pub static BINDINGS: HashMap<u64, u32> = HashMap::pinned(16384, 0);

/// tgid → the identity the process acts for, wherever its cgroup goes (see
/// `agent_common::TaskIdentity`). Not LRU: an evicted entry would be an escape.
/// A fork whose child cannot be recorded is counted (`counter::LINEAGE_FULL`).
#[map]
pub static TASK_IDENTITY: HashMap<u32, TaskIdentity> = HashMap::pinned(65536, 0);

/// Paths no bound task may reach, in the reference view (agentd's state,
/// configuration, socket): keyed like a rule of rule set 0 (`DIR/` for what is
/// below a directory, `PATH\0` for one file), value `agent_common::protect` bits.
#[map]
pub static PROTECTED_PATHS: LpmTrie<PathKey, u32> = LpmTrie::pinned(256, 0);

/// The system's library directories (keyed like `PROTECTED_PATHS`): an
/// executable mapping of a file below one that no exec rule names is a library
/// being loaded, and allowed whatever the exec default.
#[map]
pub static LIB_DIRS: LpmTrie<PathKey, u32> = LpmTrie::pinned(64, 0);

/// Filesystems (`s_dev`) holding a protected path: only a read-only open there
/// needs its path resolved (to look for one).
#[map]
pub static PROTECTED_DEVS: HashMap<u32, u32> = HashMap::pinned(64, 0);

/// (s_dev, path inside the filesystem) → where it is mounted in the reference
/// mount view (see `agent_common::MountPrefix`).
#[map]
pub static REF_MOUNTS: LpmTrie<PathKey, MountPrefix> = LpmTrie::pinned(4096, 0);

/// Bound processes that signalled agentd (tgid → identity), written before the
/// signal goes: on the fallback tier it is delivered before the sender is
/// killed, and agentd, looking up who sent it, finds the sender gone.
#[map]
pub static AGENTD_SIGNALLERS: LruHashMap<u32, u32> = LruHashMap::pinned(256, 0);

/// The fallback tier's syscall handlers, by syscall number (index
/// `SYSCALL_OTHER` for a syscall this tier cannot read: 32-bit and x32): one
/// dispatcher per tracepoint tail-calls the handler of the syscall in hand, so a
/// syscall nothing judges costs one program and one lookup.
#[map]
pub static SYS_ENTER_PROGS: ProgramArray = ProgramArray::pinned(512, 0);
#[map]
pub static SYS_EXIT_PROGS: ProgramArray = ProgramArray::pinned(512, 0);

/// Index 0: agentd's pid and the reference mount namespace (see `GuardConfig`).
#[map]
pub static GUARD: Array<GuardConfig> = Array::pinned(1, 0);

/// Directories that hold what a deny or ask write rule protects (exact keys,
/// `path\0`, per rule set): renaming, removing or replacing them is denied.
#[map]
pub static GUARDED_DIRS: LpmTrie<PathKey, PathRule> = LpmTrie::pinned(16384, 0);

/// identity id → defaults and flags. Missing entry for a bound identity: deny all.
#[map]
pub static IDENTITIES: HashMap<u32, IdentityConfig> = HashMap::pinned(4096, 0);

#[map]
pub static EXEC_RULES: LpmTrie<PathKey, PathRule> = LpmTrie::pinned(65536, 0);

/// (rule set, dev, inode) of each executable an exact exec rule names. Checked
/// before `EXEC_RULES`: an exact rule beats every pattern, whatever name the file
/// is run by.
#[map]
pub static EXEC_INODES: HashMap<ExecInodeKey, PathRule> = HashMap::pinned(16384, 0);

/// One-shot approvals of held execs, by tgid (see `ExecApproval`).
#[map]
pub static EXEC_APPROVALS: HashMap<u32, ExecApproval> = HashMap::pinned(4096, 0);

/// Write opens in (or through) a hold, by the opening thread's tid (see
/// `WriteHold`). LRU: an entry whose open never reached the exit check is
/// replaced rather than kept.
#[map]
pub static WRITE_HOLDS: LruHashMap<u32, WriteHold> = LruHashMap::pinned(8192, 0);

/// Files BPF LSM `file_open` let into a write hold, by `struct file *`, until the
/// file is freed: pending ones cannot be written (see `WriteHold`).
#[map]
pub static WRITE_HELD_FILES: HashMap<u64, WriteHold> = HashMap::pinned(8192, 0);

/// Filesystems (`s_dev`) agentd holds write opens on (its `FAN_OPEN_PERM` marks).
/// An `ask` open of a file elsewhere cannot be held: it is denied (a request).
#[map]
pub static WRITE_HOLD_DEVS: HashMap<u32, u32> = HashMap::pinned(1024, 0);

/// Where agentd's hold proxy listens (see `HoldProxy`).
#[map]
pub static HOLD_PROXY: Array<HoldProxy> = Array::pinned(1, 0);

/// Held connects by socket cookie, until `sock_ops` knows their source port. LRU:
/// a connect that fails before its SYN leaves an entry nobody deletes.
#[map]
pub static HELD_BY_COOKIE: LruHashMap<u64, HeldConnect> = LruHashMap::pinned(8192, 0);

/// Held connects by (family, local port): what the hold proxy looks up.
#[map]
pub static HELD_CONNECTS: LruHashMap<u32, HeldConnect> = LruHashMap::pinned(8192, 0);

/// The states of each rule set's glob automata (exec and write patterns an LPM
/// trie cannot express); see `GlobState` and `decide::glob_match`.
#[map]
pub static GLOB_STATES: HashMap<GlobKey, GlobState> = HashMap::pinned(GLOB_STATES_MAX, 0);

#[map]
pub static WRITE_RULES: LpmTrie<PathKey, PathRule> = LpmTrie::pinned(65536, 0);

/// `egress.unix` rules: socket file paths, keyed like `WRITE_RULES`.
#[map]
pub static UNIX_RULES: LpmTrie<PathKey, PathRule> = LpmTrie::pinned(16384, 0);

#[map]
pub static EGRESS_RULES: LpmTrie<AddrKey, EgressRules> = LpmTrie::pinned(16384, 0);

/// Index 0: struct field offsets of the running kernel, filled by the daemon from BTF.
#[map]
pub static KERNEL_OFFSETS: Array<KernelOffsets> = Array::pinned(1, 0);

/// Per-rule decision counts, for `agentctl policy show`. Full: counted in
/// `counter::HITS_DROPPED` instead.
#[map]
pub static HITS: PerCpuHashMap<HitKey, Hits> = PerCpuHashMap::pinned(32768, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_LEN, 0);

/// Decisions reported to the daemon. 4 MiB holds ~12k events.
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(4 << 20, 0);

/// `BPF_F_NO_PREALLOC`: entries are allocated as used and freed after an RCU
/// grace period, so a program still holding one never writes into another's.
const NO_PREALLOC: u32 = 1;

/// In-kernel aggregation of reported decisions, per window (see
/// `agent_common::AggKey`): the first of each distinct decision goes to the ring
/// buffer, the repeats only add to its count. The daemon reads every entry once a
/// second (delivering a first whose event found the ring full), and reports and
/// deletes the entries of closed windows. Not LRU: an evicted entry would be a
/// decision lost without a trace.
#[map]
pub static AGG: HashMap<AggKey, AggValue> = HashMap::pinned(AGG_MAX, NO_PREALLOC);

/// Decisions kept neither in `AGG` nor in the ring buffer, counted for `gap`
/// receipts; the daemon deletes the entries of closed windows once recorded.
#[map]
pub static AGG_LOST: HashMap<LostKey, LostValue> = HashMap::pinned(8192, NO_PREALLOC);

/// identity → `AGG` entries it ever created (written by the kernel only).
#[map]
pub static AGG_USED: HashMap<u32, u64> = HashMap::pinned(16384, 0);
/// identity → its `AGG` entries the daemon deleted (written by the daemon only).
/// `AGG_USED - AGG_FREED` is what the identity holds now, with no counter
/// written from both sides.
#[map]
pub static AGG_FREED: HashMap<u32, u64> = HashMap::pinned(16384, 0);

/// Per-CPU room to build an `AGG` key and value (too big for the stack).
#[repr(C)]
pub struct AggScratch {
    pub key: AggKey,
    pub value: AggValue,
}

#[map]
pub static AGG_SCRATCH: PerCpuArray<AggScratch> = PerCpuArray::with_max_entries(1, 0);

/// Index 0: the tgid of the daemon's start-up probe. An LSM program that sees this
/// task counts a hit in `counter::LSM_PROBE`, proving the BPF LSM really runs (a BPF
/// LSM program can load and attach on a kernel where `bpf` is not an active LSM).
#[map]
pub static PROBE_TGID: Array<u32> = Array::pinned(1, 0);

/// Per-CPU scratch space: path reconstruction needs more than the 512-byte stack.
///
/// The first 8 + `PATH_KEY_LEN` bytes double as an LPM lookup key
/// (`prefix_len`, rule set, path), so the path is built in place and looked up
/// without copying.
#[repr(C)]
pub struct Scratch {
    pub prefix_len: u32,
    pub ruleset: [u8; 4],
    /// Room for `PATH_KEY_LEN` bytes plus one more component read of up to 256
    /// bytes at any offset below 256, which is what the verifier needs to see.
    pub path: [u8; 512],
    /// Dentry name pointers collected leaf-first during the walk.
    /// Sized to a power of two so an index masked with `NAMES_MASK` is in bounds by
    /// construction (older verifiers lose a compared bound across stack spills).
    pub names: [u64; crate::vfs::NAMES_MASK + 1],
    /// Components collected so far. Kept in memory (volatile) on purpose: as a
    /// register the verifier tracks it exactly and verifies every depth apart.
    pub depth: u64,
    /// Values passed through memory for the same reason as `depth`: constants that
    /// differ per syscall branch would otherwise multiply verifier states.
    pub opaque: [u64; 6],
    /// Where the in-filesystem part of a path waits while the mount prefix is
    /// put in front of it.
    pub tmp: [u8; 256],
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const _: () = assert!(PATH_KEY_LEN + 4 <= 256);
const _: () = assert!(core::mem::size_of::<Event>() < 1024);
