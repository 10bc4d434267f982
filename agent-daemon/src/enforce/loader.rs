//! Loading, attaching, pinning and adopting the kernel programs.
//!
//! Pins live in `<pin_dir>/<object id>/{maps,links}`, where the object id is a hash
//! of the embedded eBPF object. A daemon that finds pins of its own object adopts
//! them without touching the kernel's enforcement; one that finds pins of another
//! build (an upgrade) sets up its own first and only then removes the old ones, so
//! there is no moment with no enforcement.

use std::{
    collections::{BTreeSet, HashMap as StdHashMap},
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use agent_common::{
    counter, guard_flags, identity_flags, write_hold, AddrKey, AggKey, AggValue, EgressRules,
    Event, ExecApproval, ExecInodeKey, GlobKey, GlobState, GuardConfig, HeldConnect, HitKey, Hits,
    HoldProxy, IdentityConfig, KernelOffsets, LostKey, LostValue, MountPrefix, PathKey, PathRule,
    TaskIdentity, WriteHold, COUNTERS_LEN, PATH_KEY_LEN,
};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
    programs::{
        links::FdLink, CgroupAttachMode, CgroupSock, CgroupSockAddr, Lsm, RawTracePoint, SockOps,
    },
    Btf, Ebpf, EbpfLoader,
};
use sha2::{Digest as _, Sha256};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::{
    btf::kernel_offsets,
    probe::{KindReport, MechanismReport},
    Counters, EnforceError, EnforcerConfig,
};
use crate::policy::compiled::CompiledPolicy;

/// The eBPF object built by aya-build from agent-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

/// Cgroup programs attach through BPF links (kernel ≥ 5.7), which always coexist
/// with other programs on the cgroup; the kernel rejects the legacy ALLOW_MULTI
/// flag on links, so the mode is the default.
const CGROUP_ATTACH: CgroupAttachMode = CgroupAttachMode::Single;

/// The link pinned last by `attach_all`; pins without it are an unfinished start.
const COMPLETE_MARKER: &str = "sock_create";

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// LSM programs per action kind, in attach order.
const LSM_EXEC: &[(&str, &str)] = &[
    ("lsm_bprm_check_security", "bprm_check_security"),
    // Exec means any way a file's code gets mapped to run (ld.so, dlopen).
    ("lsm_mmap_exec", "mmap_file"),
    ("lsm_file_mprotect", "file_mprotect"),
];
const LSM_WRITE: &[(&str, &str)] = &[
    ("lsm_file_open", "file_open"),
    ("lsm_path_truncate", "path_truncate"),
    ("lsm_path_unlink", "path_unlink"),
    ("lsm_path_rmdir", "path_rmdir"),
    ("lsm_path_mkdir", "path_mkdir"),
    ("lsm_path_mknod", "path_mknod"),
    ("lsm_path_symlink", "path_symlink"),
    ("lsm_path_link", "path_link"),
    // lsm_path_rename4 or lsm_path_rename5, by the kernel's hook signature.
    ("lsm_path_rename", "path_rename"),
    // What keeps a write open that went into a hold from writing until agentd
    // approved it (see agent_common::WriteHold).
    ("lsm_file_permission", "file_permission"),
    ("lsm_mmap_file", "mmap_file"),
    ("lsm_file_free_security", "file_free_security"),
    // A file's metadata is part of it.
    ("lsm_path_chmod", "path_chmod"),
    ("lsm_path_chown", "path_chown"),
    // lsm_inode_setattr2 or lsm_inode_setattr3, by the kernel's hook signature.
    ("lsm_inode_setattr", "inode_setattr"),
    ("lsm_inode_setxattr", "inode_setxattr"),
    ("lsm_inode_removexattr", "inode_removexattr"),
];
/// What keeps enforcement out of a bound task's reach (see agent-ebpf `guard`).
const LSM_SYSTEM: &[(&str, &str)] = &[
    ("lsm_bpf", "bpf"),
    ("lsm_capable", "capable"),
    ("lsm_capable_namespaces", "capable"),
    ("lsm_task_alloc", "task_alloc"),
    ("lsm_userns_create", "userns_create"),
    ("lsm_sb_mount", "sb_mount"),
    ("lsm_sb_umount", "sb_umount"),
    ("lsm_move_mount", "move_mount"),
    ("lsm_sb_pivotroot", "sb_pivotroot"),
    ("lsm_path_chroot", "path_chroot"),
    ("lsm_ptrace_access_check", "ptrace_access_check"),
    ("lsm_task_kill", "task_kill"),
    ("lsm_perf_event_open", "perf_event_open"),
    ("lsm_socket_create", "socket_create"),
];
/// Keeping identities with processes: raw tracepoints, on every kernel.
const LINEAGE: &[(&str, &str)] = &[
    ("tp_sched_process_fork", "sched_process_fork"),
    ("tp_sched_process_exit", "sched_process_exit"),
    ("tp_cgroup_attach_task", "cgroup_attach_task"),
];
const LSM_EGRESS: &[(&str, &str)] = &[
    ("lsm_socket_connect", "socket_connect"),
    ("lsm_socket_sendmsg", "socket_sendmsg"),
    ("lsm_unix_stream_connect", "unix_stream_connect"),
    ("lsm_unix_may_send", "unix_may_send"),
];

/// Owns the kernel objects. One per daemon.
pub struct Enforcer {
    bindings: HashMap<MapData, u64, u32>,
    identities: HashMap<MapData, u32, IdentityConfig>,
    exec_rules: LpmTrie<MapData, PathKey, PathRule>,
    exec_inodes: HashMap<MapData, ExecInodeKey, PathRule>,
    write_rules: LpmTrie<MapData, PathKey, PathRule>,
    unix_rules: LpmTrie<MapData, PathKey, PathRule>,
    guarded_dirs: LpmTrie<MapData, PathKey, PathRule>,
    task_identity: HashMap<MapData, u32, TaskIdentity>,
    guard: Array<MapData, GuardConfig>,
    protected_paths: LpmTrie<MapData, PathKey, u32>,
    protected_devs: HashMap<MapData, u32, u32>,
    lib_dirs: LpmTrie<MapData, PathKey, u32>,
    glob_states: HashMap<MapData, GlobKey, GlobState>,
    egress_rules: LpmTrie<MapData, AddrKey, EgressRules>,
    hits: PerCpuHashMap<MapData, HitKey, Hits>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    report: MechanismReport,
    /// Where the pinned maps are (a second handle on `EXEC_APPROVALS` is opened
    /// from here for the hold service).
    maps_dir: PathBuf,
    /// identity id → the rule set the kernel uses for it.
    installed: StdHashMap<u32, Installed>,
    /// Next rule set id to hand out; never one the kernel still has entries for.
    next_ruleset: u32,
    /// Each identity's kernel entry as last written (`None`: removed), to find drift.
    written: StdHashMap<u32, Option<IdentityConfig>>,
    /// The last `GUARD` and `PROTECTED_PATHS` written, likewise.
    guard_written: Option<GuardConfig>,
    protected_written: Vec<(PathBuf, u32)>,
    /// Every pinned link, held open: a link whose pin is removed stays attached
    /// while agentd runs, and drift repair pins it again.
    links: Vec<(PathBuf, Option<FdLink>)>,
}

/// An identity's rule set in the kernel.
struct Installed {
    ruleset: u32,
    /// (policy hash, version) it was written from; `None` for one adopted from an
    /// earlier daemon (rewritten at the next install).
    source: Option<(String, u32)>,
    /// What was written, to check that the kernel still holds it.
    policy: Option<Box<CompiledPolicy>>,
}

/// Handle on `EXEC_APPROVALS`: what lets an approved `ask` exec through the kernel's
/// exec check (see `agent_common::ExecApproval`).
pub struct ExecApprovals {
    map: HashMap<MapData, u32, ExecApproval>,
}

impl ExecApprovals {
    /// Lets process `tgid`'s exec of the file (`dev` in the kernel's encoding,
    /// `ino`) through the kernel's check once, within `ttl`.
    pub fn approve(&mut self, tgid: u32, dev: u32, ino: u64, ttl: std::time::Duration) -> Result<(), EnforceError> {
        let expires_boot_ns = boot_deadline(SystemTime::now() + ttl);
        let v = ExecApproval { dev, _pad: 0, ino, expires_boot_ns };
        self.map.insert(tgid, v, 0).map_err(kerr("writing EXEC_APPROVALS"))
    }

    /// Drops an approval that was not used (the exec was denied after all).
    pub fn forget(&mut self, tgid: u32) {
        let _ = self.map.remove(&tgid);
    }
}

/// The write gate's view of the kernel (see `agent_common::WriteHold`): which
/// opens are held, how an approval is recorded, which filesystems can hold.
pub struct WriteHolds {
    holds: HashMap<MapData, u32, WriteHold>,
    files: HashMap<MapData, u64, WriteHold>,
    devs: HashMap<MapData, u32, u32>,
}

impl WriteHolds {
    /// The write open thread `tid` is in, if the kernel recorded one.
    pub fn lookup(&self, tid: u32) -> Option<WriteHold> {
        self.holds.get(&tid, 0).ok()
    }

    /// Records the approval of `tid`'s held open of (`dev`, `ino`), as `h` (what
    /// [`WriteHolds::lookup`] returned) says it must be: on the held file (BPF
    /// LSM), or on the thread's intent for the exit check, usable within `ttl`.
    pub fn approve(&mut self, tid: u32, h: WriteHold, dev: u32, ino: u64, ttl: std::time::Duration) -> Result<(), EnforceError> {
        let approved = WriteHold { state: write_hold::APPROVED, ..h };
        if h.file != 0 {
            // BPF_EXIST: a file that is gone (its task died) stays gone.
            self.files.insert(h.file, approved, 2).map_err(kerr("writing WRITE_HELD_FILES"))?;
            let _ = self.holds.remove(&tid);
            Ok(())
        } else {
            let v = WriteHold { dev, ino, expires_boot_ns: boot_deadline(SystemTime::now() + ttl), ..approved };
            self.holds.insert(tid, v, 0).map_err(kerr("writing WRITE_HOLDS"))
        }
    }

    /// Forgets `tid`'s held open (denied, or not ours to hold).
    pub fn forget(&mut self, tid: u32) {
        let _ = self.holds.remove(&tid);
    }

    /// The filesystems (`s_dev`) whose opens are held from now on.
    pub fn set_devs(&mut self, devs: &std::collections::BTreeSet<u32>) -> Result<(), EnforceError> {
        let old: Vec<u32> = self.devs.keys().filter_map(Result::ok).collect();
        for d in devs {
            self.devs.insert(*d, 1, 0).map_err(kerr("writing WRITE_HOLD_DEVS"))?;
        }
        for d in old.into_iter().filter(|d| !devs.contains(d)) {
            let _ = self.devs.remove(&d);
        }
        Ok(())
    }
}

/// The hold proxy's view of the kernel: where to send `ask` connects, and what each
/// held connection was (see `agent_common::HeldConnect`).
pub struct ConnectHolds {
    proxy: Array<MapData, HoldProxy>,
    held: HashMap<MapData, u32, HeldConnect>,
}

impl ConnectHolds {
    /// Points `ask` connects at the proxy's ports (0: none, deny them).
    pub fn set_proxy(&mut self, port4: u16, port6: u16) -> Result<(), EnforceError> {
        self.proxy.set(0, HoldProxy { port4, port6 }, 0).map_err(kerr("writing HOLD_PROXY"))
    }

    /// Takes the record of the held connection from (family, source port).
    pub fn take(&mut self, family: u16, local_port: u16) -> Option<HeldConnect> {
        let key = agent_common::held_connect_key(family, local_port);
        let v = self.held.get(&key, 0).ok()?;
        let _ = self.held.remove(&key);
        Some(v)
    }
}

/// `REF_MOUNTS`: where each filesystem is mounted in the reference view (see
/// `super::mounts`).
pub struct RefMounts {
    map: LpmTrie<MapData, PathKey, MountPrefix>,
}

impl RefMounts {
    /// Makes the map hold exactly `entries`: new ones first, stale ones last, so
    /// a path that has a name keeps one throughout.
    pub fn sync(&mut self, entries: &[super::mounts::Entry]) -> Result<(), EnforceError> {
        let old: Vec<Key<PathKey>> = self.map.keys().filter_map(Result::ok).collect();
        let mut want = Vec::with_capacity(entries.len());
        for e in entries {
            let k = path_key(e.dev.to_be_bytes(), &e.key)?;
            if self.map.get(&k, 0).ok() != Some(e.value) {
                self.map.insert(&k, e.value, 0).map_err(kerr("writing REF_MOUNTS"))?;
            }
            want.push(k);
        }
        for k in old {
            let keep = want
                .iter()
                .any(|w| w.prefix_len() == k.prefix_len() && w.data().ruleset == k.data().ruleset && w.data().path == k.data().path);
            if !keep {
                let _ = self.map.remove(&k);
            }
        }
        Ok(())
    }
}

/// Waits until every BPF program that started before now has returned.
///
/// BPF programs on these hooks run inside RCU read-side critical sections, and
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()` in the kernel. Where
/// it is refused (nohz_full), a generous sleep stands in.
fn grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0 as libc::c_long, 0 as libc::c_long) };
    if r != 0 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `CLOCK_BOOTTIME` nanoseconds at wall-clock time `at` (1 if already past: the
/// kernel treats the identity as expired from its next decision).
fn boot_deadline(at: SystemTime) -> u64 {
    let left = match at.duration_since(SystemTime::now()) {
        Ok(d) => d,
        Err(_) => return 1,
    };
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let now = (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64);
    now.saturating_add(left.as_nanos().min(u64::MAX as u128) as u64).max(1)
}

fn kerr(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> EnforceError {
    let what = what.into();
    move |e| EnforceError::kernel(what, e)
}

/// Short id of the embedded object: pins of another build are never adopted.
fn object_id() -> String {
    let digest = Sha256::digest(OBJECT);
    hex::encode(&digest[..8])
}

impl Enforcer {
    /// Loads and attaches everything, or adopts what an earlier daemon pinned in
    /// `config.pin_dir`. Needs root (CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN).
    pub fn open(config: &EnforcerConfig) -> Result<Enforcer, EnforceError> {
        if OBJECT.is_empty() {
            return Err(EnforceError::Other(
                "this agentd was built with AYA_BUILD_SKIP=1 and has no eBPF programs; rebuild without it".into(),
            ));
        }
        let t = std::time::Instant::now();
        let id = object_id();
        let root = config.pin_dir.join(&id);
        let maps_dir = root.join("maps");
        let links_dir = root.join("links");
        let offsets = kernel_offsets(Path::new(BTF_PATH))
            .map_err(|e| EnforceError::Unsupported { kind: "any action", why: e.to_string() })?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "object id and kernel offsets");

        // `sock_create` is pinned last: its presence marks a complete set.
        let adopt = links_dir.join(COMPLETE_MARKER).exists();
        let report = if adopt {
            info!(pins = %root.display(), "adopting pinned enforcement of an earlier agentd");
            adopted_report(&links_dir)
        } else {
            // Pins of our build without the last link are the remains of a start-up
            // that failed half way: start over rather than trip over them.
            if root.exists() {
                warn!(pins = %root.display(), "removing incomplete pins of an earlier failed start");
                fs::remove_dir_all(&root).map_err(|e| EnforceError::kernel(format!("removing {}", root.display()), e))?;
            }
            for dir in [&maps_dir, &links_dir] {
                fs::create_dir_all(dir).map_err(|e| {
                    EnforceError::kernel(
                        format!("creating {} (is bpffs mounted at {}?)", dir.display(), config.pin_dir.display()),
                        e,
                    )
                })?;
            }
            let mut ebpf = EbpfLoader::new()
                .default_map_pin_directory(&maps_dir)
                .load(OBJECT)
                .map_err(|e| EnforceError::kernel("loading the eBPF object", e))?;
            let mut offsets_map: Array<_, KernelOffsets> = take(&mut ebpf, "KERNEL_OFFSETS")?;
            offsets_map.set(0, offsets, 0).map_err(kerr("writing KERNEL_OFFSETS"))?;
            attach_all(&mut ebpf, &config.cgroup_root, &links_dir, &offsets)?
        };
        let mut enforcer = Enforcer {
            bindings: pinned(&maps_dir, "BINDINGS")?,
            identities: pinned(&maps_dir, "IDENTITIES")?,
            exec_rules: pinned(&maps_dir, "EXEC_RULES")?,
            exec_inodes: pinned(&maps_dir, "EXEC_INODES")?,
            write_rules: pinned(&maps_dir, "WRITE_RULES")?,
            unix_rules: pinned(&maps_dir, "UNIX_RULES")?,
            guarded_dirs: pinned(&maps_dir, "GUARDED_DIRS")?,
            task_identity: pinned(&maps_dir, "TASK_IDENTITY")?,
            guard: pinned(&maps_dir, "GUARD")?,
            protected_paths: pinned(&maps_dir, "PROTECTED_PATHS")?,
            protected_devs: pinned(&maps_dir, "PROTECTED_DEVS")?,
            lib_dirs: pinned(&maps_dir, "LIB_DIRS")?,
            glob_states: pinned(&maps_dir, "GLOB_STATES")?,
            egress_rules: pinned(&maps_dir, "EGRESS_RULES")?,
            hits: pinned(&maps_dir, "HITS")?,
            counters: pinned(&maps_dir, "COUNTERS")?,
            events: Some(pinned(&maps_dir, "EVENTS")?),
            report: MechanismReport { adopted: adopt, ..report },
            maps_dir: maps_dir.clone(),
            installed: StdHashMap::new(),
            next_ruleset: 1,
            written: StdHashMap::new(),
            guard_written: None,
            protected_written: Vec::new(),
            links: hold_links(&links_dir),
        };
        enforcer.adopt_rulesets()?;
        // Old builds' pins go only now that ours enforce.
        remove_other_pins(&config.pin_dir, &id);
        Ok(enforcer)
    }

    /// The one-shot exec approvals map, for the hold service (its own handle, so
    /// approving never waits for whoever holds the enforcer).
    pub fn exec_approvals(&self) -> Result<ExecApprovals, EnforceError> {
        Ok(ExecApprovals { map: pinned(&self.maps_dir, "EXEC_APPROVALS")? })
    }

    /// Handles on the write-hold maps, for the write gate.
    pub fn write_holds(&self) -> Result<WriteHolds, EnforceError> {
        Ok(WriteHolds {
            holds: pinned(&self.maps_dir, "WRITE_HOLDS")?,
            files: pinned(&self.maps_dir, "WRITE_HELD_FILES")?,
            devs: pinned(&self.maps_dir, "WRITE_HOLD_DEVS")?,
        })
    }

    /// Handles on the in-kernel aggregation tables, for the event pipeline.
    pub fn aggregates(&self) -> Result<Aggregates, EnforceError> {
        Ok(Aggregates {
            agg: pinned(&self.maps_dir, "AGG")?,
            lost: pinned(&self.maps_dir, "AGG_LOST")?,
            freed: pinned(&self.maps_dir, "AGG_FREED")?,
        })
    }

    /// Handles on the connect-hold maps, for the hold proxy.
    pub fn connect_holds(&self) -> Result<ConnectHolds, EnforceError> {
        Ok(ConnectHolds { proxy: pinned(&self.maps_dir, "HOLD_PROXY")?, held: pinned(&self.maps_dir, "HELD_CONNECTS")? })
    }

    /// Removes every pin under `pin_dir`: the kernel stops enforcing once no
    /// daemon holds the objects. Used by `agentd --uninstall` and tests.
    pub fn remove_pins(pin_dir: &Path) -> Result<(), EnforceError> {
        match fs::remove_dir_all(pin_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(EnforceError::kernel(format!("removing {}", pin_dir.display()), e)),
        }
    }

    /// Installs (or replaces) identity `id`'s policy. `policy: None` means the identity
    /// has no policy: everything it does is denied. `revoked` denies everything too,
    /// and so does the kernel itself once `expires` has passed.
    ///
    /// Atomic per identity: a changed policy is written under a fresh rule set id
    /// first, then the identity's config (rule set, defaults, flags and version, one
    /// hash map value) is replaced in one update, and only after an RCU grace period
    /// (every program that could still be using the old rule set has returned) is
    /// the old rule set deleted. A program sees the old version whole or the new one
    /// whole. If writing the new rule set fails, it is removed and the old version
    /// stays in force.
    pub fn set_identity(
        &mut self,
        id: u32,
        policy: Option<&CompiledPolicy>,
        version: u32,
        revoked: bool,
        expires: Option<SystemTime>,
    ) -> Result<(), EnforceError> {
        let Some(policy) = policy else {
            self.identities.remove(&id).or_else(ignore_missing).map_err(kerr("removing identity"))?;
            self.written.insert(id, None);
            if let Some(old) = self.installed.remove(&id) {
                grace_period();
                self.drop_ruleset(old.ruleset)?;
            }
            return Ok(());
        };
        let source = (policy.hash.clone(), version);
        let current = self.installed.get(&id).filter(|i| i.source.as_ref() == Some(&source)).map(|i| i.ruleset);
        let (ruleset, fresh) = match current {
            Some(r) => (r, false),
            None => {
                let r = self.next_ruleset;
                self.next_ruleset = self.next_ruleset.checked_add(1).unwrap_or(1);
                if let Err(e) = self.write_ruleset(r, policy) {
                    if let Err(e2) = self.drop_ruleset(r) {
                        warn!(ruleset = r, error = %e2, "could not remove a partly written rule set");
                    }
                    return Err(e);
                }
                (r, true)
            }
        };
        let mut flags = 0;
        if revoked {
            flags |= identity_flags::REVOKED;
        }
        if policy.monitor {
            flags |= identity_flags::MONITOR;
        }
        flags |= policy.system_flags & (identity_flags::NAMESPACES | identity_flags::PTRACE | identity_flags::ICMP);
        let cfg = IdentityConfig {
            exec_default: policy.exec_default,
            write_default: policy.write_default,
            egress_default: policy.egress_default,
            flags,
            policy_version: version,
            ruleset,
            exec_glob: policy.exec_glob,
            write_glob: policy.write_glob,
            expires_boot_ns: expires.map_or(0, boot_deadline),
            unix_glob: policy.unix_glob,
            unix_default: policy.unix_default,
            _pad: [0; 5],
        };
        if let Err(e) = self.identities.insert(id, cfg, 0) {
            if fresh {
                let _ = self.drop_ruleset(ruleset);
            }
            return Err(kerr("writing IDENTITIES")(e));
        }
        self.written.insert(id, Some(cfg));
        if fresh {
            let inst = Installed { ruleset, source: Some(source), policy: Some(Box::new(policy.clone())) };
            if let Some(old) = self.installed.insert(id, inst) {
                grace_period();
                self.drop_ruleset(old.ruleset)?;
            }
        }
        Ok(())
    }

    /// Writes every entry of `policy` under rule set `ruleset`.
    fn write_ruleset(&mut self, ruleset: u32, policy: &CompiledPolicy) -> Result<(), EnforceError> {
        let rs = ruleset.to_be_bytes();
        for e in &policy.exec {
            self.exec_rules.insert(&path_key(rs, &e.key)?, e.value, 0).map_err(kerr("writing EXEC_RULES"))?;
        }
        for e in &policy.exec_inodes {
            let key = ExecInodeKey { ruleset, dev: e.dev, ino: e.ino };
            self.exec_inodes.insert(key, e.value, 0).map_err(kerr("writing EXEC_INODES"))?;
        }
        for e in &policy.write {
            self.write_rules.insert(&path_key(rs, &e.key)?, e.value, 0).map_err(kerr("writing WRITE_RULES"))?;
        }
        for e in &policy.unix {
            self.unix_rules.insert(&path_key(rs, &e.key)?, e.value, 0).map_err(kerr("writing UNIX_RULES"))?;
        }
        for e in &policy.guarded {
            self.guarded_dirs.insert(&path_key(rs, &e.key)?, e.value, 0).map_err(kerr("writing GUARDED_DIRS"))?;
        }
        for (i, st) in policy.globs.iter().enumerate() {
            let key = GlobKey { ruleset, state: i as u32 + 1 };
            self.glob_states.insert(key, st, 0).map_err(kerr("writing GLOB_STATES (full? every policy's `*`/`**` patterns share it)"))?;
        }
        for e in &policy.egress {
            let key = Key::new(32 + e.prefix_len, AddrKey { ruleset: rs, addr: e.addr });
            self.egress_rules.insert(&key, e.value, 0).map_err(kerr("writing EGRESS_RULES"))?;
        }
        Ok(())
    }

    /// Deletes every entry of rule set `ruleset`, and its hit counts.
    fn drop_ruleset(&mut self, ruleset: u32) -> Result<(), EnforceError> {
        let rs = ruleset.to_be_bytes();
        for trie in [&mut self.exec_rules, &mut self.write_rules, &mut self.unix_rules, &mut self.guarded_dirs] {
            let stale: Vec<Key<PathKey>> =
                trie.keys().filter_map(Result::ok).filter(|k| k.data().ruleset == rs).collect();
            for k in stale {
                trie.remove(&k).or_else(ignore_missing).map_err(kerr("removing an old rule"))?;
            }
        }
        let stale: Vec<Key<AddrKey>> =
            self.egress_rules.keys().filter_map(Result::ok).filter(|k| k.data().ruleset == rs).collect();
        for k in stale {
            self.egress_rules.remove(&k).or_else(ignore_missing).map_err(kerr("removing an old egress rule"))?;
        }
        let stale: Vec<ExecInodeKey> =
            self.exec_inodes.keys().filter_map(Result::ok).filter(|k| k.ruleset == ruleset).collect();
        for k in stale {
            self.exec_inodes.remove(&k).or_else(ignore_missing).map_err(kerr("removing an old exec pin"))?;
        }
        let stale: Vec<GlobKey> =
            self.glob_states.keys().filter_map(Result::ok).filter(|k| k.ruleset == ruleset).collect();
        for k in stale {
            self.glob_states.remove(&k).or_else(ignore_missing).map_err(kerr("removing an old glob state"))?;
        }
        let stale: Vec<HitKey> = self.hits.keys().filter_map(Result::ok).filter(|k| k.ruleset == ruleset).collect();
        for k in stale {
            self.hits.remove(&k).or_else(ignore_missing).map_err(kerr("removing old hit counts"))?;
        }
        Ok(())
    }

    /// Removes identity `id`'s entries. Cgroups still bound to it are then denied everything.
    pub fn remove_identity(&mut self, id: u32) -> Result<(), EnforceError> {
        self.set_identity(id, None, 0, true, None)
    }

    /// How often each rule of identity `id`'s current rule set decided, summed over
    /// CPUs: (kind, rule id, counts), rule id 0 being the kind's default.
    pub fn hits(&self, id: u32) -> Result<Vec<(u8, u32, Hits)>, EnforceError> {
        let Some(inst) = self.installed.get(&id) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for key in self.hits.keys() {
            let key = key.map_err(kerr("reading HITS"))?;
            if key.ruleset != inst.ruleset {
                continue;
            }
            let per_cpu = match self.hits.get(&key, 0) {
                Ok(v) => v,
                Err(e) => match ignore_missing(e) {
                    // Removed since the key was listed.
                    Ok(()) => continue,
                    Err(e) => return Err(kerr("reading HITS")(e)),
                },
            };
            let mut sum = Hits::default();
            for h in per_cpu.iter() {
                sum.allow += h.allow;
                sum.deny += h.deny;
                sum.would_deny += h.would_deny;
                sum.audit += h.audit;
            }
            out.push((key.kind, key.rule_id, sum));
        }
        Ok(out)
    }

    /// Learns which rule sets pinned maps already hold: the identities' current
    /// ones are kept (and rewritten at their next install); any other is the
    /// remains of an apply interrupted by a crash, and is deleted.
    fn adopt_rulesets(&mut self) -> Result<(), EnforceError> {
        let mut in_use = BTreeSet::new();
        for entry in self.identities.iter() {
            let (id, cfg) = entry.map_err(kerr("reading IDENTITIES"))?;
            in_use.insert(cfg.ruleset);
            self.installed.insert(id, Installed { ruleset: cfg.ruleset, source: None, policy: None });
        }
        let mut present = BTreeSet::new();
        for k in self
            .exec_rules
            .keys()
            .chain(self.write_rules.keys())
            .chain(self.unix_rules.keys())
            .chain(self.guarded_dirs.keys())
            .filter_map(Result::ok)
        {
            present.insert(u32::from_be_bytes(k.data().ruleset));
        }
        for k in self.egress_rules.keys().filter_map(Result::ok) {
            present.insert(u32::from_be_bytes(k.data().ruleset));
        }
        for k in self.exec_inodes.keys().filter_map(Result::ok) {
            present.insert(k.ruleset);
        }
        for k in self.glob_states.keys().filter_map(Result::ok) {
            present.insert(k.ruleset);
        }
        self.next_ruleset = present.iter().chain(in_use.iter()).max().map_or(1, |m| m.saturating_add(1));
        for orphan in present.difference(&in_use) {
            warn!(ruleset = orphan, "removing a rule set no identity uses (an apply was interrupted)");
            self.drop_ruleset(*orphan)?;
        }
        Ok(())
    }

    /// Binds cgroup `cgroup_id` (the inode number of its cgroup2 directory) and all its
    /// descendants to identity `id`. Processes that this binding attributed
    /// before (a rebind) now act for `id`, wherever their cgroup went.
    pub fn bind(&mut self, cgroup_id: u64, id: u32) -> Result<(), EnforceError> {
        self.bindings.insert(cgroup_id, id, 0).map_err(kerr("writing BINDINGS"))?;
        let rebound: Vec<(u32, TaskIdentity)> = self
            .task_identity
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, t)| t.binding == cgroup_id && t.identity != id)
            .collect();
        for (tgid, t) in rebound {
            // BPF_EXIST: a process that exited meanwhile stays gone.
            let _ = self.task_identity.insert(tgid, TaskIdentity { identity: id, ..t }, 2);
        }
        Ok(())
    }

    /// Removes a binding, and the identity it gave to processes (wherever their
    /// cgroup went): an operator's unbind is what ends it.
    pub fn unbind(&mut self, cgroup_id: u64) -> Result<(), EnforceError> {
        self.bindings.remove(&cgroup_id).or_else(ignore_missing).map_err(kerr("removing a binding"))?;
        let released: Vec<u32> = self
            .task_identity
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, t)| t.binding == cgroup_id)
            .map(|(tgid, _)| tgid)
            .collect();
        for tgid in released {
            self.task_identity.remove(&tgid).or_else(ignore_missing).map_err(kerr("removing a process's identity"))?;
        }
        Ok(())
    }

    /// Gives identity `id` (bound at `cgroup_id`, whose directory is `path`) to
    /// every process already in that cgroup or below it, except those a more
    /// specific binding inside it attributed. New processes get it at fork or
    /// when moved in (the kernel's lineage programs); these were there first.
    pub fn attribute_tasks(&mut self, path: &Path, cgroup_id: u64, id: u32) -> Result<usize, EnforceError> {
        let mut inner: BTreeSet<u64> = BTreeSet::new();
        let mut tgids: Vec<u32> = Vec::new();
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                tgids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    use std::os::unix::fs::MetadataExt as _;
                    if let Ok(m) = e.metadata() {
                        inner.insert(m.ino());
                    }
                    stack.push(e.path());
                }
            }
        }
        let mut n = 0;
        for tgid in tgids {
            if let Ok(t) = self.task_identity.get(&tgid, 0) {
                if t.binding != cgroup_id && inner.contains(&t.binding) {
                    continue;
                }
            }
            let v = TaskIdentity { identity: id, _pad: 0, binding: cgroup_id };
            self.task_identity.insert(tgid, v, 0).map_err(kerr("writing TASK_IDENTITY"))?;
            n += 1;
        }
        Ok(n)
    }

    /// The identity process `tgid` acts for, as the kernel keeps it (or kept it,
    /// for a bound process the fallback tier killed for signalling agentd).
    pub fn task_identity(&self, tgid: u32) -> Option<u32> {
        if let Ok(t) = self.task_identity.get(&tgid, 0) {
            return Some(t.identity);
        }
        let signallers: HashMap<MapData, u32, u32> = pinned(&self.maps_dir, "AGENTD_SIGNALLERS").ok()?;
        signallers.get(&tgid, 0).ok()
    }

    /// Tells the kernel who agentd is (no bound task may signal or trace it),
    /// which mount namespace is the reference view, and whether BPF LSM runs.
    pub fn set_guard(&mut self, agentd_tgid: u32, agentd_pgid: u32, ref_mnt_ns: u32) -> Result<(), EnforceError> {
        let lsm = self.report.kinds.iter().any(|k| k.kind == "exec" && k.effect == "deny");
        let g = GuardConfig { agentd_tgid, ref_mnt_ns, agentd_pgid, flags: if lsm { guard_flags::LSM } else { 0 } };
        self.guard.set(0, g, 0).map_err(kerr("writing GUARD"))?;
        self.guard_written = Some(g);
        Ok(())
    }

    /// Marks paths (in the reference view) no bound task may reach: `(path,
    /// protect bits)`; a directory covers what is below it. Replaces the set.
    pub fn protect(&mut self, paths: &[(PathBuf, u32)]) -> Result<(), EnforceError> {
        use std::os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _};
        self.protected_written = paths.to_vec();
        let old: Vec<Key<PathKey>> = self.protected_paths.keys().filter_map(Result::ok).collect();
        let mut devs = BTreeSet::new();
        let mut keys = Vec::new();
        for (p, bits) in paths {
            let bytes = p.as_os_str().as_bytes();
            keys.push((path_key([0; 4], &[bytes, b"\0"].concat())?, *bits));
            keys.push((path_key([0; 4], &[bytes, b"/"].concat())?, *bits));
            if let Ok(m) = fs::metadata(p) {
                let dev = m.dev();
                devs.insert(((libc::major(dev) as u32) << 20) | libc::minor(dev) as u32);
            }
        }
        for (k, bits) in &keys {
            self.protected_paths.insert(k, *bits, 0).map_err(kerr("writing PROTECTED_PATHS"))?;
        }
        for k in old {
            if !keys.iter().any(|(n, _)| n.prefix_len() == k.prefix_len() && n.data().path == k.data().path) {
                let _ = self.protected_paths.remove(&k);
            }
        }
        let old_devs: Vec<u32> = self.protected_devs.keys().filter_map(Result::ok).collect();
        for d in &devs {
            self.protected_devs.insert(*d, 1, 0).map_err(kerr("writing PROTECTED_DEVS"))?;
        }
        for d in old_devs.into_iter().filter(|d| !devs.contains(d)) {
            let _ = self.protected_devs.remove(&d);
        }
        Ok(())
    }

    /// The system's library directories, as real paths: loading a library from
    /// one is not judged as running a program (see agent-ebpf `exec`).
    pub fn set_lib_dirs(&mut self, dirs: &[PathBuf]) -> Result<(), EnforceError> {
        use std::os::unix::ffi::OsStrExt as _;
        let old: Vec<Key<PathKey>> = self.lib_dirs.keys().filter_map(Result::ok).collect();
        for k in old {
            let _ = self.lib_dirs.remove(&k);
        }
        for d in dirs {
            let k = path_key([0; 4], &[d.as_os_str().as_bytes(), b"/"].concat())?;
            self.lib_dirs.insert(&k, 1, 0).map_err(kerr("writing LIB_DIRS"))?;
        }
        Ok(())
    }

    /// Puts back what the kernel lost or was changed from what agentd wrote:
    /// link pins, identity entries, rule sets (by their entry counts), the guard
    /// and the protected paths. Returns (what, which) for each repair; bindings
    /// are the caller's (it knows which cgroups should be bound).
    pub fn repair_drift(&mut self) -> Vec<(&'static str, String)> {
        let mut fixed = Vec::new();
        for (path, link) in &mut self.links {
            if path.exists() {
                continue;
            }
            if let Some(l) = link.take() {
                match l.pin(&*path) {
                    Ok(p) => {
                        *link = Some(FdLink::from(p));
                        fixed.push(("link", path.display().to_string()));
                    }
                    Err(e) => warn!(pin = %path.display(), error = %e, "could not pin a link again; it stays attached while agentd runs"),
                }
            }
        }
        let written: Vec<(u32, Option<IdentityConfig>)> = self.written.iter().map(|(k, v)| (*k, *v)).collect();
        for (id, want) in written {
            let have = self.identities.get(&id, 0).ok();
            if have == want {
                continue;
            }
            let r = match want {
                Some(cfg) => self.identities.insert(id, cfg, 0),
                None => self.identities.remove(&id).or_else(ignore_missing),
            };
            match r {
                Ok(()) => fixed.push(("identity", format!("identity #{id}"))),
                Err(e) => warn!(identity = id, error = %e, "could not restore an identity's kernel entry"),
            }
        }
        let counts = self.ruleset_counts();
        let rulesets: Vec<(u32, u32, Box<CompiledPolicy>)> = self
            .installed
            .iter()
            .filter_map(|(id, i)| i.policy.as_ref().map(|p| (*id, i.ruleset, p.clone())))
            .collect();
        for (id, ruleset, policy) in rulesets {
            let want = expected_counts(&policy);
            if counts.get(&ruleset).copied().unwrap_or_default() == want {
                continue;
            }
            let repaired = self.drop_ruleset(ruleset).and_then(|()| self.write_ruleset(ruleset, &policy));
            match repaired {
                Ok(()) => fixed.push(("rules", format!("the rules of identity #{id} ({})", policy.name))),
                Err(e) => warn!(identity = id, error = %e, "could not restore a rule set"),
            }
        }
        if let Some(g) = self.guard_written {
            if self.guard.get(&0, 0).ok() != Some(g) && self.guard.set(0, g, 0).is_ok() {
                fixed.push(("guard", "agentd's own guard entry".to_string()));
            }
        }
        let protected = self.protected_paths.keys().filter_map(Result::ok).count();
        if !self.protected_written.is_empty() && protected != 2 * self.protected_written.len() {
            let paths = self.protected_written.clone();
            if self.protect(&paths).is_ok() {
                fixed.push(("protected-paths", "agentd's protected paths".to_string()));
            }
        }
        fixed
    }

    /// Entries per rule set, over every map a rule set writes.
    fn ruleset_counts(&self) -> StdHashMap<u32, [usize; 7]> {
        let mut c: StdHashMap<u32, [usize; 7]> = StdHashMap::new();
        let tries = [&self.exec_rules, &self.write_rules, &self.unix_rules, &self.guarded_dirs];
        for (i, trie) in tries.into_iter().enumerate() {
            for k in trie.keys().filter_map(Result::ok) {
                c.entry(u32::from_be_bytes(k.data().ruleset)).or_default()[i] += 1;
            }
        }
        for k in self.egress_rules.keys().filter_map(Result::ok) {
            c.entry(u32::from_be_bytes(k.data().ruleset)).or_default()[4] += 1;
        }
        for k in self.exec_inodes.keys().filter_map(Result::ok) {
            c.entry(k.ruleset).or_default()[5] += 1;
        }
        for k in self.glob_states.keys().filter_map(Result::ok) {
            c.entry(k.ruleset).or_default()[6] += 1;
        }
        c
    }

    /// A handle on `REF_MOUNTS`, for the thread that keeps it in step with the
    /// reference mount table.
    pub fn ref_mounts(&self) -> Result<RefMounts, EnforceError> {
        Ok(RefMounts { map: pinned(&self.maps_dir, "REF_MOUNTS")? })
    }

    /// The bindings as the kernel has them: (cgroup id, identity id).
    pub fn kernel_bindings(&self) -> Result<Vec<(u64, u32)>, EnforceError> {
        self.bindings.iter().map(|r| r.map_err(kerr("reading BINDINGS"))).collect()
    }

    /// Which mechanism enforces each kind.
    pub fn report(&self) -> MechanismReport {
        self.report.clone()
    }

    /// Kernel counters.
    pub fn counters(&self) -> Result<Counters, EnforceError> {
        let mut v = [0u64; COUNTERS_LEN as usize];
        for (i, slot) in v.iter_mut().enumerate() {
            let per_cpu = self.counters.get(&(i as u32), 0).map_err(kerr("reading COUNTERS"))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(Counters {
            events: v[counter::EVENTS as usize],
            events_dropped: v[counter::EVENTS_DROPPED as usize],
            deny_exec: v[counter::DENY_EXEC as usize],
            deny_write: v[counter::DENY_WRITE as usize],
            deny_egress: v[counter::DENY_EGRESS as usize],
            deny_socket: v[counter::DENY_SOCKET as usize],
            kills: v[counter::KILLS as usize],
            unresolved: v[counter::UNRESOLVED as usize],
            aggregated: v[counter::AGG_REPEATS as usize],
            lost: v[counter::LOST as usize],
            lost_uncounted: v[counter::LOST_UNCOUNTED as usize],
        })
    }

    /// Takes the kernel's event stream. Call once, inside a tokio runtime; the
    /// reader yields decoded events as the kernel writes them.
    pub fn take_events(&mut self) -> Result<EventReader, EnforceError> {
        let ring = self.events.take().ok_or_else(|| EnforceError::Other("the event stream was already taken".into()))?;
        // SAFETY: the RingBuf owns its map fd and lives inside the AsyncFd, so the
        // fd stays open for as long as it is registered.
        let fd = unsafe { AsyncFd::register(ring) }.map_err(|e| EnforceError::kernel("polling the EVENTS ring buffer", e))?;
        Ok(EventReader { fd, pending: std::collections::VecDeque::new() })
    }
}

/// The kernel's aggregation tables (`AGG`, `AGG_LOST`) and the daemon's side of
/// the per-identity share (`AGG_FREED`).
pub struct Aggregates {
    agg: HashMap<MapData, AggKey, AggValue>,
    lost: HashMap<MapData, LostKey, LostValue>,
    freed: HashMap<MapData, u32, u64>,
}

impl Aggregates {
    /// Every aggregated decision now in the table. An entry deleted while this
    /// reads is left out.
    pub fn entries(&self) -> Result<Vec<(AggKey, AggValue)>, EnforceError> {
        let keys = self
            .agg
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(kerr("listing AGG"))?;
        Ok(keys
            .into_iter()
            .filter_map(|k| self.agg.get(&k, 0).ok().map(|v| (k, v)))
            .collect())
    }

    /// Deletes an entry of a closed window and gives its slot back to the
    /// identity's share.
    pub fn remove(&mut self, key: &AggKey) -> Result<(), EnforceError> {
        self.agg.remove(key).map_err(kerr("deleting from AGG"))?;
        let freed = self.freed.get(&key.identity, 0).unwrap_or(0);
        self.freed
            .insert(key.identity, freed + 1, 0)
            .map_err(kerr("writing AGG_FREED"))
    }

    /// The counts of decisions kept nowhere.
    pub fn lost(&self) -> Result<Vec<(LostKey, LostValue)>, EnforceError> {
        let keys = self
            .lost
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(kerr("listing AGG_LOST"))?;
        Ok(keys
            .into_iter()
            .filter_map(|k| self.lost.get(&k, 0).ok().map(|v| (k, v)))
            .collect())
    }

    pub fn remove_lost(&mut self, key: &LostKey) -> Result<(), EnforceError> {
        self.lost
            .remove(key)
            .map_err(kerr("deleting from AGG_LOST"))
    }
}

/// Async reader of the kernel's `EVENTS` ring buffer.
pub struct EventReader {
    fd: AsyncFd<RingBuf<MapData>>,
    pending: std::collections::VecDeque<Event>,
}

impl EventReader {
    /// Waits for the next event. `None` when the ring buffer is gone.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            let mut guard = self.fd.readable_mut().await.ok()?;
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<Event>() {
                    // SAFETY: the kernel wrote a whole `Event` (repr(C), every bit
                    // pattern valid); read_unaligned copes with any alignment.
                    let ev = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
                    self.pending.push_back(ev);
                }
            }
            guard.clear_ready();
        }
    }
}

/// The entries `write_ruleset` makes for `policy`, per map, as `ruleset_counts`
/// counts them.
fn expected_counts(policy: &CompiledPolicy) -> [usize; 7] {
    [
        policy.exec.len(),
        policy.write.len(),
        policy.unix.len(),
        policy.guarded.len(),
        policy.egress.len(),
        policy.exec_inodes.len(),
        policy.globs.len(),
    ]
}

/// Opens every pinned link under `links_dir`, to hold it (see `Enforcer::links`).
fn hold_links(links_dir: &Path) -> Vec<(PathBuf, Option<FdLink>)> {
    let Ok(entries) = fs::read_dir(links_dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        match aya::programs::links::PinnedLink::from_pin(&path) {
            Ok(p) => out.push((path, Some(FdLink::from(p)))),
            Err(err) => warn!(pin = %path.display(), error = %err, "could not open a pinned link to hold it"),
        }
    }
    out
}

fn ignore_missing(e: aya::maps::MapError) -> Result<(), aya::maps::MapError> {
    match &e {
        aya::maps::MapError::KeyNotFound => Ok(()),
        aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        _ => Err(e),
    }
}

fn path_key(ruleset_be: [u8; 4], bytes: &[u8]) -> Result<Key<PathKey>, EnforceError> {
    if bytes.len() > PATH_KEY_LEN {
        return Err(EnforceError::Other(format!(
            "a compiled path rule is {} bytes long; the kernel matches at most {PATH_KEY_LEN}",
            bytes.len()
        )));
    }
    let mut path = [0u8; PATH_KEY_LEN];
    path[..bytes.len()].copy_from_slice(bytes);
    Ok(Key::new(PathKey::prefix_bits(bytes.len()), PathKey { ruleset: ruleset_be, path }))
}


fn take<T: TryFrom<Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<T, EnforceError> {
    let map = ebpf.take_map(name).ok_or_else(|| EnforceError::Other(format!("eBPF object has no map {name}")))?;
    T::try_from(map).map_err(kerr(format!("opening map {name}")))
}

fn pinned<T: TryFrom<Map, Error = aya::maps::MapError>>(dir: &Path, name: &str) -> Result<T, EnforceError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(kerr(format!("opening pinned map {}", path.display())))?;
    let map = Map::from_map_data(data).map_err(kerr(format!("opening pinned map {}", path.display())))?;
    T::try_from(map).map_err(kerr(format!("opening pinned map {}", path.display())))
}

fn pin_link(link: FdLink, links_dir: &Path, name: &str) -> Result<(), EnforceError> {
    let path = links_dir.join(name);
    link.pin(&path).map(drop).map_err(|e| EnforceError::kernel(format!("pinning link {}", path.display()), e))
}

/// Attaches the best mechanism per kind and pins every link.
fn attach_all(
    ebpf: &mut Ebpf,
    cgroup_root: &Path,
    links_dir: &Path,
    offsets: &KernelOffsets,
) -> Result<MechanismReport, EnforceError> {
    let rename_prog = format!("lsm_path_rename{}", offsets.path_rename_nargs);
    let setattr_prog = format!("lsm_inode_setattr{}", offsets.inode_setattr_nargs);
    let write_progs: Vec<(&str, &str)> = LSM_WRITE[1..]
        .iter()
        .map(|&(name, hook)| match hook {
            "path_rename" => (rename_prog.as_str(), hook),
            "inode_setattr" => (setattr_prog.as_str(), hook),
            _ => (name, hook),
        })
        .collect();
    let btf = Btf::from_sys_fs().map_err(|e| EnforceError::kernel("reading kernel BTF", e))?;
    let (lsm, mut file_open_link) = match probe_lsm(ebpf, &btf) {
        Ok(link) => (Ok(()), Some(link)),
        Err(why) => (Err(why), None),
    };
    // The xattr programs read the previous verdict after a fixed argument count.
    let write_lsm = lsm.clone().and_then(|()| {
        if offsets.inode_setxattr_nargs != 6 || offsets.inode_removexattr_nargs != 3 || !matches!(offsets.inode_setattr_nargs, 2 | 3) {
            Err(format!(
                "this kernel's inode_setxattr/inode_removexattr/inode_setattr hooks take {}/{}/{} arguments; agentd knows 6/3/2-3",
                offsets.inode_setxattr_nargs, offsets.inode_removexattr_nargs, offsets.inode_setattr_nargs
            ))
        } else {
            Ok(())
        }
    });
    let mut kinds = Vec::new();

    // Lineage first: identities must follow processes before anything is judged.
    for (name, tp) in LINEAGE {
        attach_raw_tp(ebpf, name, tp, links_dir)?;
    }
    // The fallback tier's syscall handlers: (program, table, syscalls), wired
    // behind one dispatcher per tracepoint at the end.
    let mut tail_calls: Vec<(&str, &str, &[u32])> = Vec::new();

    // exec
    let mut exec = KindReport { kind: "exec".into(), ..Default::default() };
    let exec_lsm = lsm.clone().and_then(|()| attach_lsm(ebpf, &btf, LSM_EXEC, links_dir));
    match exec_lsm {
        Ok(()) => {
            exec.active = "BPF LSM bprm_check_security + mmap_file, file_mprotect (executable mappings)".into();
            exec.effect = "deny".into();
        }
        Err(why) => {
            exec.unavailable.push(("BPF LSM bprm_check_security".into(), why));
            exec.unavailable.push((
                "fanotify FAN_OPEN_EXEC_PERM".into(),
                "not used as the exec check: a fanotify deny needs agentd alive and the kernel programs do not (fanotify holds `ask` execs: see `exec holds` under checks)".into(),
            ));
            attach_raw_tp(ebpf, "tp_sched_process_exec", "sched_process_exec", links_dir)?;
            tail_calls.push(("tp_sys_enter_mmap", SYS_ENTER, &[9]));
            exec.active = "raw tracepoints sched_process_exec, sys_enter (mmap PROT_EXEC) + SIGKILL".into();
            exec.effect = "kill".into();
        }
    }
    kinds.push(exec);

    // write
    let mut write = KindReport { kind: "write".into(), ..Default::default() };
    match write_lsm.and_then(|()| attach_lsm(ebpf, &btf, &write_progs, links_dir)) {
        Ok(()) => {
            if let Some(link) = file_open_link.take() {
                pin_link(link, links_dir, LSM_WRITE[0].0)?;
            }
            write.active = "BPF LSM file_open + path_{truncate,unlink,rmdir,mkdir,mknod,symlink,link,rename,chmod,chown} + inode_{setattr,setxattr,removexattr} (+ file_permission, mmap_file for held opens)".into();
            write.effect = "deny".into();
        }
        Err(why) => {
            drop(file_open_link.take()); // detaches the probe's file_open
            write.unavailable.push(("BPF LSM file_open and path hooks".into(), why));
            write.unavailable.push((
                "fanotify FAN_OPEN_PERM as the write check".into(),
                "not used as the check (a fanotify deny needs agentd alive; the kernel programs do not); it holds ask opens".into(),
            ));
            tail_calls.push(("tp_sys_enter", SYS_ENTER, SYSCALLS_WRITE_ENTER));
            tail_calls.push(("tp_sys_enter_unjudgeable", SYS_ENTER, SYSCALLS_UNJUDGEABLE));
            tail_calls.push(("tp_sys_exit", SYS_EXIT, SYSCALLS_WRITE_EXIT));
            write.active = "raw tracepoints sys_enter/sys_exit + SIGKILL".into();
            write.effect = "kill".into();
        }
    }
    kinds.push(write);

    // system: enforcement out of reach.
    let mut system = KindReport { kind: "system".into(), ..Default::default() };
    match lsm.clone().and_then(|()| attach_lsm(ebpf, &btf, LSM_SYSTEM, links_dir)) {
        Ok(()) => {
            system.active = "BPF LSM bpf, capable, task_alloc, userns_create, sb_mount/umount/pivotroot, move_mount, path_chroot, ptrace_access_check, task_kill, perf_event_open".into();
            system.effect = "deny".into();
        }
        Err(why) => {
            system.unavailable.push(("BPF LSM guard hooks".into(), why));
            tail_calls.push(("tp_sys_enter_guard", SYS_ENTER, SYSCALLS_GUARD));
            system.active = "raw tracepoint sys_enter + SIGKILL".into();
            system.effect = "kill".into();
        }
    }
    kinds.push(system);

    // egress: cgroup sock_addr always; LSM socket_connect in front where it runs.
    let cgroup = fs::File::open(cgroup_root)
        .map_err(|e| EnforceError::kernel(format!("opening cgroup2 root {}", cgroup_root.display()), e))?;
    for name in ["connect4", "connect6", "sendmsg4", "sendmsg6"] {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        prog.load().map_err(|e| EnforceError::kernel(format!("loading {name}"), e))?;
        let link_id = prog
            .attach(cgroup.as_fd(), CGROUP_ATTACH)
            .map_err(|e| EnforceError::kernel(format!("attaching {name} to {}", cgroup_root.display()), e))?;
        let link = prog.take_link(link_id).map_err(|e| EnforceError::kernel(format!("taking link {name}"), e))?;
        let link = FdLink::try_from(link).map_err(|e| EnforceError::kernel(format!("link {name}"), e))?;
        pin_link(link, links_dir, name)?;
    }
    // The connect-hold helper: moves a held connect's record to its source port.
    let prog: &mut SockOps = program(ebpf, "hold_sock_ops")?;
    prog.load().map_err(|e| EnforceError::kernel("loading hold_sock_ops", e))?;
    let link_id = prog
        .attach(cgroup.as_fd(), CGROUP_ATTACH)
        .map_err(|e| EnforceError::kernel(format!("attaching hold_sock_ops to {}", cgroup_root.display()), e))?;
    let link = prog.take_link(link_id).map_err(|e| EnforceError::kernel("taking link hold_sock_ops", e))?;
    let link = FdLink::try_from(link).map_err(|e| EnforceError::kernel("link hold_sock_ops", e))?;
    pin_link(link, links_dir, "hold_sock_ops")?;
    let mut egress = KindReport { kind: "egress".into(), effect: "deny".into(), ..Default::default() };
    match lsm.clone().and_then(|()| attach_lsm(ebpf, &btf, LSM_EGRESS, links_dir)) {
        Ok(()) => {
            egress.active =
                "BPF LSM socket_connect, socket_sendmsg (ICMP), unix_stream_connect, unix_may_send + cgroup sock_addr connect4/6, sendmsg4/6"
                    .into()
        }
        Err(why) => {
            egress.unavailable.push(("BPF LSM socket_connect, unix_stream_connect, unix_may_send".into(), why));
            tail_calls.push(("tp_sys_exit_unix", SYS_EXIT, &[42]));
            egress.active = "cgroup sock_addr connect4/6, sendmsg4/6; raw tracepoint sys_exit of connect(2) + SIGKILL for unix sockets".into();
        }
    }
    kinds.push(egress);

    if !tail_calls.is_empty() {
        wire_syscall_handlers(ebpf, &tail_calls, links_dir)?;
    }

    let prog: &mut CgroupSock = program(ebpf, "sock_create")?;
    prog.load().map_err(|e| EnforceError::kernel("loading sock_create", e))?;
    let link_id = prog
        .attach(cgroup.as_fd(), CGROUP_ATTACH)
        .map_err(|e| EnforceError::kernel("attaching sock_create", e))?;
    let link = prog.take_link(link_id).map_err(|e| EnforceError::kernel("taking link sock_create", e))?;
    let link = FdLink::try_from(link).map_err(|e| EnforceError::kernel("link sock_create", e))?;
    pin_link(link, links_dir, COMPLETE_MARKER)?;
    kinds.push(KindReport {
        kind: "raw-socket".into(),
        active: "cgroup sock_create (raw, packet and every socket the egress hooks cannot judge refused to bound identities)".into(),
        effect: "deny".into(),
        unavailable: vec![],
    });

    for k in &kinds {
        info!(kind = %k.kind, active = %k.active, effect = %k.effect, "enforcement mechanism");
    }
    Ok(MechanismReport { kinds, adopted: false })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, EnforceError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| EnforceError::Other(format!("eBPF object has no program {name}")))?;
    p.try_into().map_err(|e| EnforceError::kernel(format!("program {name}"), e))
}

/// Proves BPF LSM runs here: loads and attaches `file_open`, then checks that the
/// program saw this process open a file. Loading alone proves nothing (a BPF LSM
/// program loads on kernels where `bpf` is not an active LSM and never runs).
/// On success the attached `file_open` link is returned for the write mechanism.
fn probe_lsm(ebpf: &mut Ebpf, btf: &Btf) -> Result<FdLink, String> {
    let prog: &mut Lsm = program(ebpf, "lsm_file_open").map_err(|e| e.to_string())?;
    prog.load("file_open", btf).map_err(|e| format!("the kernel refused to load a BPF LSM program: {}", chain(&e)))?;
    let link_id = prog.attach().map_err(|e| format!("the kernel refused to attach a BPF LSM program: {}", chain(&e)))?;
    let mut probe: Array<_, u32> = match ebpf.map_mut("PROBE_TGID").map(Array::try_from) {
        Some(Ok(a)) => a,
        _ => return Err("eBPF object has no PROBE_TGID map".into()),
    };
    let me = std::process::id();
    probe.set(0, me, 0).map_err(|e| e.to_string())?;
    let _ = fs::read("/proc/self/stat");
    probe.set(0, 0u32, 0).map_err(|e| e.to_string())?;
    let hits: u64 = match ebpf.map("COUNTERS").map(PerCpuArray::<_, u64>::try_from) {
        Some(Ok(c)) => c.get(&counter::LSM_PROBE, 0).map(|v| v.iter().sum()).unwrap_or(0),
        _ => 0,
    };
    let prog: &mut Lsm = program(ebpf, "lsm_file_open").map_err(|e| e.to_string())?;
    let link = FdLink::from(prog.take_link(link_id).map_err(|e| chain(&e))?);
    if hits == 0 {
        drop(link); // detaches
        let lsms = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
        return Err(format!(
            "BPF LSM programs load but never run: `bpf` is not an active LSM (active: {}); boot with lsm=...,bpf",
            lsms.trim()
        ));
    }
    Ok(link)
}

/// Loads and attaches LSM programs, pinning each link only when all attached. On
/// error the links attached so far are dropped (detached) and the reason returned
/// (and logged: the fallback chosen next may fail for reasons of its own).
fn attach_lsm(ebpf: &mut Ebpf, btf: &Btf, progs: &[(&str, &str)], links_dir: &Path) -> Result<(), String> {
    let r = attach_lsm_inner(ebpf, btf, progs, links_dir);
    if let Err(why) = &r {
        warn!(programs = ?progs.iter().map(|(n, _)| *n).collect::<Vec<_>>(), %why, "BPF LSM programs not attached");
    }
    r
}

fn attach_lsm_inner(ebpf: &mut Ebpf, btf: &Btf, progs: &[(&str, &str)], links_dir: &Path) -> Result<(), String> {
    let mut links: Vec<(String, FdLink)> = Vec::new();
    for (name, hook) in progs {
        let prog: &mut Lsm = program(ebpf, name).map_err(|e| e.to_string())?;
        let t = std::time::Instant::now();
        prog.load(hook, btf).map_err(|e| format!("loading {hook}: {}", chain(&e)))?;
        tracing::debug!(program = name, ms = t.elapsed().as_millis() as u64, "verified and loaded");
        let id = prog.attach().map_err(|e| format!("attaching {hook}: {}", chain(&e)))?;
        let link = prog.take_link(id).map_err(|e| format!("{hook}: {}", chain(&e)))?;
        links.push((name.to_string(), FdLink::from(link)));
    }
    for (name, link) in links {
        pin_link(link, links_dir, &name).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The tables of `SYS_ENTER_PROGS`/`SYS_EXIT_PROGS` (agent-ebpf `lineage`).
const SYS_ENTER: &str = "SYS_ENTER_PROGS";
const SYS_EXIT: &str = "SYS_EXIT_PROGS";
/// x86-64 syscall numbers each fallback handler judges; 511 is the dispatcher's
/// index for a syscall it cannot read (32-bit, x32), which
/// `tp_sys_enter_unjudgeable` refuses. They must match the handlers' own dispatch in agent-ebpf.
const SYSCALLS_WRITE_ENTER: &[u32] = &[
    2, 257, 437, 85, // open, openat, openat2, creat (write intent, for holds)
    76, 82, 84, 86, 87, 88, 133, 259, 263, 264, 265, 266, 316, // truncate .. renameat2
    90, 91, 92, 93, 94, 132, 188, 189, 190, 197, 198, 199, 235, 260, 261, 268, 280, 452, // metadata
];
/// What the fallback tier cannot follow, refused to bound tasks: io_uring_setup,
/// and 511, the dispatcher's index for every 32-bit and x32 syscall.
const SYSCALLS_UNJUDGEABLE: &[u32] = &[425, 511];
const SYSCALLS_WRITE_EXIT: &[u32] = &[2, 257, 437, 85, 304, 83, 258];
const SYSCALLS_GUARD: &[u32] = &[
    41, 56, 62, 101, 129, 155, 160, 161, 163, 165, 166, 172, 173, 175, 176, 200, 234, 246, 272, 297, 298, 302, 308, 310,
    311, 313, 320, 321, 424, 428, 429, 432, 435, 438, 442,
];

/// Loads each fallback handler and puts it in its table at its syscalls, then
/// attaches the two dispatchers: a syscall no handler wants costs one program and
/// one array lookup per tracepoint (the tables are pinned, so the handlers stay
/// with them).
fn wire_syscall_handlers(ebpf: &mut Ebpf, handlers: &[(&str, &str, &[u32])], links_dir: &Path) -> Result<(), EnforceError> {
    for (name, _, _) in handlers {
        let prog: &mut RawTracePoint = program(ebpf, name)?;
        prog.load().map_err(|e| EnforceError::kernel(format!("loading {name}"), e))?;
    }
    for table in [SYS_ENTER, SYS_EXIT] {
        let fds = handlers
            .iter()
            .filter(|(_, t, _)| *t == table)
            .map(|(name, _, ids)| {
                let prog: &mut RawTracePoint = program(ebpf, name)?;
                let fd = prog.fd().map_err(|e| EnforceError::kernel(format!("{name}"), e))?;
                let fd = fd.try_clone().map_err(|e| EnforceError::kernel(format!("{name}"), e))?;
                Ok((*name, fd, *ids))
            })
            .collect::<Result<Vec<_>, EnforceError>>()?;
        // Borrowed, not taken: the dispatchers, loaded after this, refer to it.
        let mut map: ProgramArray<&mut MapData> = match ebpf.map_mut(table).map(ProgramArray::try_from) {
            Some(Ok(m)) => m,
            _ => return Err(EnforceError::Other(format!("eBPF object has no program array {table}"))),
        };
        for (name, fd, ids) in &fds {
            for id in ids.iter() {
                map.set(*id, fd, 0).map_err(kerr(format!("wiring {name} for syscall {id}")))?;
            }
        }
    }
    attach_raw_tp(ebpf, "tp_sys_enter_dispatch", "sys_enter", links_dir)?;
    attach_raw_tp(ebpf, "tp_sys_exit_dispatch", "sys_exit", links_dir)
}

fn attach_raw_tp(ebpf: &mut Ebpf, name: &str, tp: &str, links_dir: &Path) -> Result<(), EnforceError> {
    let prog: &mut RawTracePoint = program(ebpf, name)?;
    prog.load().map_err(|e| EnforceError::kernel(format!("loading {name}"), e))?;
    let id = prog.attach(tp).map_err(|e| EnforceError::kernel(format!("attaching {name} to {tp}"), e))?;
    let link = prog.take_link(id).map_err(|e| EnforceError::kernel(format!("taking link {name}"), e))?;
    pin_link(FdLink::from(link), links_dir, name)
}

/// What an adopted pin set enforces, from the links present.
fn adopted_report(links_dir: &Path) -> MechanismReport {
    let has = |n: &str| links_dir.join(n).exists();
    let adopted_note = "not active in the adopted pinned enforcement".to_string();
    let mut kinds = Vec::new();
    let (active, effect) = if has("lsm_bprm_check_security") {
        ("BPF LSM bprm_check_security", "deny")
    } else {
        ("raw tracepoint sched_process_exec + SIGKILL", "kill")
    };
    let mut exec = KindReport { kind: "exec".into(), active: active.into(), effect: effect.into(), unavailable: vec![] };
    if effect == "kill" {
        exec.unavailable.push(("BPF LSM bprm_check_security".into(), adopted_note.clone()));
    }
    kinds.push(exec);
    let (active, effect) = if has("lsm_file_open") {
        ("BPF LSM file_open + path_{truncate,unlink,rmdir,mkdir,mknod,symlink,link,rename}", "deny")
    } else {
        ("raw tracepoints sys_enter/sys_exit + SIGKILL", "kill")
    };
    let mut write = KindReport { kind: "write".into(), active: active.into(), effect: effect.into(), unavailable: vec![] };
    if effect == "kill" {
        write.unavailable.push(("BPF LSM file_open and path hooks".into(), adopted_note.clone()));
    }
    kinds.push(write);
    let (active, effect) = if has("lsm_bpf") {
        ("BPF LSM bpf, capable, task_alloc, userns_create, sb_mount/umount/pivotroot, move_mount, path_chroot, ptrace_access_check, task_kill, perf_event_open", "deny")
    } else {
        ("raw tracepoint sys_enter + SIGKILL", "kill")
    };
    kinds.push(KindReport { kind: "system".into(), active: active.into(), effect: effect.into(), unavailable: vec![] });
    kinds.push(KindReport {
        kind: "egress".into(),
        active: if has("lsm_socket_connect") {
            "BPF LSM socket_connect, socket_sendmsg (ICMP), unix_stream_connect, unix_may_send + cgroup sock_addr connect4/6, sendmsg4/6".into()
        } else {
            "cgroup sock_addr connect4/6, sendmsg4/6; raw tracepoint sys_exit of connect(2) + SIGKILL for unix sockets".into()
        },
        effect: "deny".into(),
        unavailable: vec![],
    });
    kinds.push(KindReport {
        kind: "raw-socket".into(),
        active: "cgroup sock_create (raw and packet sockets refused to bound identities)".into(),
        effect: "deny".into(),
        unavailable: vec![],
    });
    MechanismReport { kinds, adopted: true }
}

fn remove_other_pins(pin_dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(pin_dir) else { return };
    for e in entries.flatten() {
        if e.file_name() != keep {
            let path: PathBuf = e.path();
            match fs::remove_dir_all(&path) {
                Ok(()) => info!(pins = %path.display(), "removed pinned enforcement of another agentd build"),
                Err(err) => warn!(pins = %path.display(), %err, "could not remove old pins"),
            }
        }
    }
}

/// An error with its sources, on one line (aya's verifier errors nest).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_keys_carry_ruleset_and_prefix_bits() {
        let k = path_key(7u32.to_be_bytes(), b"/usr/bin/git\0").expect("fits");
        assert_eq!(k.prefix_len(), 32 + 8 * 13);
        assert_eq!(k.data().ruleset, [0, 0, 0, 7]);
        assert_eq!(&k.data().path[..13], b"/usr/bin/git\0");
        let prefix = path_key(7u32.to_be_bytes(), b"/usr/lib/").expect("fits");
        assert_eq!(prefix.prefix_len(), 32 + 8 * 9);
    }

    #[test]
    fn overlong_path_rule_is_refused_not_truncated() {
        let long = vec![b'a'; PATH_KEY_LEN + 1];
        assert!(path_key([0; 4], &long).is_err());
        assert!(path_key([0; 4], &long[..PATH_KEY_LEN]).is_ok());
    }
}
