//! Turning a rule lookup into a verdict, counting it and reporting it.
//!
//! Every path here fails closed: a bound identity without a policy, a revoked
//! identity, an action code the kernel does not know, and a path the kernel could
//! not resolve are all denied.

use agent_common::{
    action, agg_emitted, counter, glob_flags, identity_flags, kind, reason, verdict, AggKey, Event,
    GlobKey, HitKey, Hits, IdentityConfig, LostKey, LostValue, PathKey, AGG_IDENTITY_SHARE,
    AGG_WINDOW_NS, EVENT_PATH_LEN, PATH_KEY_LEN,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_loop,
    },
    maps::{lpm_trie::Key, LpmTrie},
};
use core::ffi::c_void;

use crate::{
    attribution::Subject,
    maps::{
        Scratch, AGG, AGG_FREED, AGG_LOST, AGG_SCRATCH, AGG_USED, COUNTERS, EVENTS, GLOB_STATES,
        HITS, IDENTITIES, SCRATCH,
    },
    vfs::{Resolved, Unresolved},
};

/// What the kernel does about one action.
#[derive(Clone, Copy)]
pub struct Decision {
    /// Block it (EPERM or SIGKILL, depending on the mechanism).
    pub block: bool,
    /// Report it to the daemon.
    pub report: bool,
    /// `verdict::*` when reported with `block == false` (audit, would-deny).
    pub soft_verdict: u8,
    /// An `ask` in enforce mode: blocked unless the caller holds it (an exec with
    /// the daemon's approval, `exec::settle_ask`; a write open, `write::settle_ask`;
    /// a TCP connect sent to the hold proxy, `egress::hold`); not counted yet, as
    /// the caller decides which way it goes.
    pub ask: bool,
    pub reason: u8,
    pub rule_id: u32,
    pub policy_version: u32,
}

impl Decision {
    /// Deny when the kernel side itself is broken (a map that must exist does not).
    pub const fn fail_closed() -> Self {
        Decision::deny(reason::UNRESOLVED, 0, 0)
    }

    pub const fn deny_for(reason: u8, policy_version: u32) -> Self {
        Decision::deny(reason, 0, policy_version)
    }

    const fn deny(reason: u8, rule_id: u32, policy_version: u32) -> Self {
        Decision { block: true, report: true, soft_verdict: 0, ask: false, reason, rule_id, policy_version }
    }
}

/// Which `Hits` counter a decision adds to.
pub const HIT_ALLOW: u64 = 0;
pub const HIT_DENY: u64 = 1;
const HIT_WOULD_DENY: u64 = 2;
const HIT_AUDIT: u64 = 3;

/// Applies the identity's mode to a matched (or default) action of `kind`, and
/// counts the decision against the rule.
#[inline(always)]
pub fn from_action(cfg: &IdentityConfig, kind: u8, act: u8, reason: u8, rule_id: u32) -> Decision {
    let v = cfg.policy_version;
    let monitor = cfg.flags & identity_flags::MONITOR != 0;
    let (d, which) = match act {
        action::ALLOW => {
            (
                Decision { block: false, report: false, soft_verdict: 0, ask: false, reason, rule_id, policy_version: v },
                HIT_ALLOW,
            )
        }
        action::AUDIT => (
            Decision {
                block: false,
                report: true,
                soft_verdict: verdict::AUDIT,
                ask: false,
                reason,
                rule_id,
                policy_version: v,
            },
            HIT_AUDIT,
        ),
        // An exec or write ask is held by the daemon (fanotify), a TCP connect
        // ask by its proxy; the caller allows it only with the daemon's approval
        // (or refuses it where it cannot be held), and counts it then.
        action::ASK if !monitor && (kind == kind::EXEC || kind == kind::EGRESS || kind == kind::WRITE) => {
            return Decision { ask: true, ..Decision::deny(reason, rule_id, v) };
        }
        // DENY, other ASKs (no hold for them yet: deny) and anything unknown.
        _ if monitor => (
            Decision {
                block: false,
                report: true,
                soft_verdict: verdict::WOULD_DENY,
                ask: false,
                reason,
                rule_id,
                policy_version: v,
            },
            HIT_WOULD_DENY,
        ),
        _ => (Decision::deny(reason, rule_id, v), HIT_DENY),
    };
    count_hit(cfg.ruleset, kind, rule_id, which);
    d
}

/// Adds one to counter `which` of the rule's per-CPU `Hits`.
#[inline(always)]
pub fn count_hit(ruleset: u32, kind: u8, rule_id: u32, which: u64) {
    let key = HitKey { ruleset, rule_id, kind, _pad: [0; 3] };
    if let Some(h) = HITS.get_ptr_mut(&key) {
        // SAFETY: this CPU's copy; nothing else writes it while we run.
        unsafe { add_hit(&mut *h, which) };
        return;
    }
    let mut fresh = Hits::default();
    add_hit(&mut fresh, which);
    // BPF_NOEXIST: another CPU may have created the entry meanwhile; then add
    // to this CPU's copy of it instead.
    if HITS.insert(&key, &fresh, 1).is_ok() {
        return;
    }
    match HITS.get_ptr_mut(&key) {
        // SAFETY: as above.
        Some(h) => unsafe { add_hit(&mut *h, which) },
        None => bump(counter::HITS_DROPPED),
    }
}

#[inline(always)]
fn add_hit(h: &mut Hits, which: u64) {
    match which {
        HIT_ALLOW => h.allow += 1,
        HIT_DENY => h.deny += 1,
        HIT_WOULD_DENY => h.would_deny += 1,
        _ => {
            h.audit += 1;
            h.allow += 1;
        }
    }
}

/// The identity's config, or the fail-closed decision when it has none, is
/// revoked, or has expired.
#[inline(always)]
pub fn identity_config(identity: u32) -> Result<&'static IdentityConfig, Decision> {
    // SAFETY: the reference is only read before the program returns.
    match unsafe { IDENTITIES.get(&identity) } {
        None => Err(Decision::deny(reason::NO_POLICY, 0, 0)),
        Some(cfg) if cfg.flags & identity_flags::REVOKED != 0 => {
            Err(Decision::deny(reason::REVOKED, 0, cfg.policy_version))
        }
        // SAFETY: helper without arguments.
        Some(cfg) if cfg.expires_boot_ns != 0 && unsafe { bpf_ktime_get_boot_ns() } >= cfg.expires_boot_ns => {
            Err(Decision::deny(reason::EXPIRED, 0, cfg.policy_version))
        }
        Some(cfg) => Ok(cfg),
    }
}

/// Looks up the path in `Scratch::path` in the identity's rule set of `rules`
/// and, when the rule set has patterns the trie cannot express, in its glob
/// automaton starting at `glob_start`; the higher-ranked match decides, `default`
/// when nothing matches.
#[inline(always)]
pub fn decide_path(
    s: &mut Scratch,
    rules: &LpmTrie<PathKey, agent_common::PathRule>,
    kind: u8,
    cfg: &IdentityConfig,
    default: u8,
    glob_start: u16,
    resolved: Resolved,
) -> Decision {
    match match_path(s, rules, cfg, default, glob_start, resolved) {
        Ok((act, rule_id)) => {
            let why = if rule_id == 0 { reason::DEFAULT } else { reason::RULE };
            from_action(cfg, kind, act, why, rule_id)
        }
        Err(d) => d,
    }
}

/// The action and rule (0: the default) the rules give the path in
/// `Scratch::path`, counting nothing; `Err` when the answer is unresolved.
#[inline(always)]
pub fn match_path(
    s: &mut Scratch,
    rules: &LpmTrie<PathKey, agent_common::PathRule>,
    cfg: &IdentityConfig,
    default: u8,
    glob_start: u16,
    resolved: Resolved,
) -> Result<(u8, u32), Decision> {
    // Exact rules end in NUL: include it when the path is complete.
    let bytes = if resolved.truncated { PATH_KEY_LEN } else { resolved.len + 1 };
    s.prefix_len = PathKey::prefix_bits(if bytes > PATH_KEY_LEN { PATH_KEY_LEN } else { bytes });
    s.ruleset = cfg.ruleset.to_be_bytes();
    // SAFETY: Scratch starts with exactly the layout of Key<PathKey> (prefix_len,
    // identity, PATH_KEY_LEN path bytes); the map reads only that many bytes.
    let key = unsafe { &*(s as *const Scratch as *const Key<PathKey>) };
    let (lpm_action, lpm_rule, lpm_rank) = match rules.get(key) {
        Some(rule) => (rule.action, rule.rule_id, rule.rank),
        None => (default, 0, 0),
    };
    if glob_start == 0 {
        return Ok((lpm_action, lpm_rule));
    }
    match glob_match(cfg.ruleset, glob_start as u32, resolved) {
        GlobMatch::Rule { action, rule_id, rank } if rank > lpm_rank => Ok((action, rule_id)),
        GlobMatch::Rule { .. } | GlobMatch::None => Ok((lpm_action, lpm_rule)),
        GlobMatch::Unknown => Err(unresolved(cfg.policy_version, Unresolved::Read)),
    }
}

/// What a glob automaton says about a path.
enum GlobMatch {
    /// The winning pattern rule.
    Rule { action: u8, rule_id: u32, rank: u32 },
    /// No pattern matches.
    None,
    /// The path was longer than the kernel reads and the answer depends on the
    /// rest, or a state is missing (an automaton being replaced): fail closed.
    Unknown,
}

/// Runs the path through the automaton. One hash lookup per byte, at most
/// `PATH_KEY_LEN`, and it stops as soon as the answer cannot change (a stable
/// state: dead, or inside a trailing `**`).
///
/// The walk is a `bpf_loop` (5.17+) rather than a bounded loop: the verifier
/// checks the step once instead of once per byte, which on 6.1 would pass its
/// million-instruction budget in every program that decides a path.
#[inline(always)]
fn glob_match(ruleset: u32, start: u32, resolved: Resolved) -> GlobMatch {
    let n = if resolved.len > PATH_KEY_LEN { PATH_KEY_LEN } else { resolved.len };
    let mut walk = GlobWalk { ruleset, state: start, outcome: WALKING };
    // SAFETY: `glob_step` has the callback signature the helper expects, and `walk`
    // outlives the call.
    let done = unsafe {
        bpf_loop(n as u32, glob_step as *mut c_void, &mut walk as *mut GlobWalk as *mut c_void, 0)
    };
    match walk.outcome {
        DEAD => return GlobMatch::None,
        MISSING => return GlobMatch::Unknown,
        // Every byte read: `done` says so unless the helper failed.
        WALKING if done < 0 || done as usize != n => return GlobMatch::Unknown,
        _ => {}
    }
    let key = GlobKey { ruleset, state: walk.state };
    // SAFETY: read at once.
    let Some(st) = (unsafe { GLOB_STATES.get(&key) }) else { return GlobMatch::Unknown };
    // Stopped early at a stable state, or read the whole path; what the kernel did
    // not read of a longer path decides unless the state is stable.
    if resolved.truncated && st.flags & glob_flags::STABLE == 0 {
        return GlobMatch::Unknown;
    }
    if st.rule_id == 0 {
        GlobMatch::None
    } else {
        GlobMatch::Rule { action: st.action, rule_id: st.rule_id, rank: st.rank }
    }
}

const WALKING: u32 = 0;
const DEAD: u32 = 1;
const MISSING: u32 = 2;
const STOPPED: u32 = 3;

/// The walk's state between `glob_step` calls (on the caller's stack).
#[repr(C)]
struct GlobWalk {
    ruleset: u32,
    /// The state after the bytes read so far.
    state: u32,
    outcome: u32,
}

/// One byte of the walk: 0 to go on, 1 to stop.
#[inline(never)]
extern "C" fn glob_step(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `GlobWalk` `glob_match` passed to bpf_loop.
    let w = unsafe { &mut *(ctx as *mut GlobWalk) };
    let key = GlobKey { ruleset: w.ruleset, state: w.state };
    // SAFETY: read at once.
    let Some(st) = (unsafe { GLOB_STATES.get(&key) }) else {
        w.outcome = MISSING;
        return 1;
    };
    if st.flags & glob_flags::STABLE != 0 {
        w.outcome = STOPPED;
        return 1;
    }
    // Fetch the byte from the per-CPU scratch again rather than through a pointer
    // the verifier would have to carry across frames.
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        w.outcome = MISSING;
        return 1;
    };
    // SAFETY: per-CPU scratch, read only; the index is masked into the array.
    let b = unsafe { (*scratch).path[(i as usize) & 0x1ff] };
    let next = st.next[b as usize];
    if next == 0 {
        w.outcome = DEAD;
        return 1;
    }
    w.state = next as u32;
    0
}

/// The decision for a path that could not be resolved.
#[inline(always)]
pub fn unresolved(cfg_version: u32, _why: Unresolved) -> Decision {
    bump(counter::UNRESOLVED);
    Decision::deny(reason::UNRESOLVED, 0, cfg_version)
}

#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *c += 1 };
    }
}

/// What an event is about, beyond the decision.
pub struct Target {
    pub kind: u8,
    pub op: u8,
    pub mechanism: u8,
    /// Copy `Scratch::path[..len]` into the event.
    pub path: Option<Resolved>,
    pub family: u16,
    pub protocol: u8,
    pub port: u16,
    pub addr: [u8; 16],
    /// `Event::aux`.
    pub aux: u64,
}

impl Target {
    #[inline(always)]
    pub fn path(kind: u8, op: u8, mechanism: u8, path: Option<Resolved>) -> Self {
        Target { kind, op, mechanism, path, family: 0, protocol: 0, port: 0, addr: [0; 16], aux: 0 }
    }
}

/// Counts a block and writes the event. `hard_verdict` is `verdict::DENY` or
/// `verdict::KILL`, used when the decision blocks.
#[inline(always)]
pub fn report(s: &Scratch, subject: &Subject, d: &Decision, t: &Target, hard_verdict: u8) {
    if d.block {
        bump(match t.kind {
            kind::EXEC => counter::DENY_EXEC,
            kind::WRITE => counter::DENY_WRITE,
            kind::EGRESS | kind::UNIX => counter::DENY_EGRESS,
            _ => counter::DENY_SOCKET,
        });
        if hard_verdict == verdict::KILL {
            bump(counter::KILLS);
        }
    }
    if !d.report {
        return;
    }
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let v = if d.block {
        hard_verdict
    } else {
        d.soft_verdict
    };
    let Some(a) = AGG_SCRATCH.get_ptr_mut(0) else {
        // Cannot happen (a per-CPU array always has its entry); counted if it does.
        bump(counter::LOST);
        bump(counter::LOST_UNCOUNTED);
        return;
    };
    // SAFETY: this CPU's scratch entry; nothing else uses it while we run.
    let key = unsafe { &mut (*a).key };
    key.epoch = (now / AGG_WINDOW_NS) as u32;
    key.identity = subject.identity;
    key.rule_id = d.rule_id;
    key.policy_version = d.policy_version;
    key.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    key.kind = t.kind;
    key.verdict = v;
    key.mechanism = t.mechanism;
    key.op = t.op;
    key.reason = d.reason;
    key.protocol = t.protocol;
    key.port = t.port;
    key.family = t.family;
    key._pad = [0; 7];
    key.aux = t.aux;
    key.addr = t.addr;
    match t.path {
        Some(p) => {
            key.path_len = p.len as u16;
            key.path_truncated = p.truncated as u8;
            copy_path_exact(key, s, p.len);
        }
        None => {
            key.path_len = 0;
            key.path_truncated = 0;
            key.path = [0; EVENT_PATH_LEN];
        }
    }
    let key: &AggKey = key;
    if let Some(val) = AGG.get_ptr_mut(key) {
        // A repeat within the window: counted, not sent.
        // SAFETY: a live AGG value (no-prealloc: not reused while we hold it).
        unsafe { add_repeat(val as *mut u64, now) };
        bump(counter::AGG_REPEATS);
        return;
    }
    // A new distinct decision. Past its share of the table the identity's new
    // decisions are only counted, so its flood leaves room for the others.
    let used = unsafe { AGG_USED.get(&subject.identity) }
        .copied()
        .unwrap_or(0);
    let freed = unsafe { AGG_FREED.get(&subject.identity) }
        .copied()
        .unwrap_or(0);
    if used >= freed && used - freed >= AGG_IDENTITY_SHARE {
        lost(key, now);
        return;
    }
    // SAFETY: as for `key`.
    let value = unsafe { &mut (*a).value };
    let pid_tgid = bpf_get_current_pid_tgid();
    value.count = 1;
    value.first_ns = now;
    value.last_ns = now;
    value.cgroup_id = subject.cgroup_id;
    value.tgid = (pid_tgid >> 32) as u32;
    value.pid = pid_tgid as u32;
    value.uid = bpf_get_current_uid_gid() as u32;
    value.emitted = agg_emitted::PENDING;
    value.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // BPF_NOEXIST: another CPU may have made this very entry meanwhile.
    let alone = match AGG.insert(key, &*value, 1) {
        Ok(()) => {
            count_used(subject.identity);
            false
        }
        Err(e) if i64::from(e) == -(EEXIST as i64) => {
            match AGG.get_ptr_mut(key) {
                // SAFETY: as above.
                Some(val) => unsafe { add_repeat(val as *mut u64, now) },
                None => lost(key, now),
            }
            bump(counter::AGG_REPEATS);
            return;
        }
        // The table is full: the event goes alone, if it finds room.
        Err(_) => true,
    };
    // The ring buffer reservation is taken only here, so the verifier follows
    // one reference through straight-line code.
    let sent = match EVENTS.reserve::<Event>(0) {
        Some(mut en) => {
            fill(en.as_mut_ptr(), s, subject, d, t, v, now, value.comm);
            en.submit(0);
            bump(counter::EVENTS);
            true
        }
        None => false,
    };
    if alone {
        if !sent {
            lost(key, now);
        }
        return;
    }
    if !sent {
        // Kept in AGG: the daemon delivers it from there.
        bump(counter::EVENTS_DROPPED);
    }
    if let Some(val) = AGG.get_ptr_mut(key) {
        // SAFETY: as above; `emitted` is a plain u32 the daemon only reads.
        unsafe {
            (*val).emitted = if sent {
                agg_emitted::SENT
            } else {
                agg_emitted::TABLE
            }
        };
    }
}

const EEXIST: u32 = 17;

/// `*p += n`, atomically (BPF_ATOMIC add; its result is unused, which every
/// kernel with BPF supports). The BPF target has no compare-and-swap, so core's
/// `AtomicU64::fetch_add` is not there; this is the one use of the intrinsic.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, n: u64) {
    // SAFETY: the caller passes a valid, aligned pointer into a map value.
    let _ = unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, n,
        )
    };
}

/// Adds one to an `AGG` value's count (its first field) and moves its last time.
#[inline(always)]
unsafe fn add_repeat(count: *mut u64, now: u64) {
    // SAFETY: the caller's pointer is a live AggValue; `count` is its first field
    // and `last_ns` its third. The add is atomic: other CPUs count the same entry.
    unsafe {
        atomic_add(count, 1);
        *count.add(2) = now;
    }
}

/// One more `AGG` entry created by `identity`.
#[inline(always)]
fn count_used(identity: u32) {
    if let Some(u) = AGG_USED.get_ptr_mut(&identity) {
        // SAFETY: a live value of a preallocated map; atomic against other CPUs.
        unsafe { atomic_add(u, 1) };
        return;
    }
    if AGG_USED.insert(&identity, &1, 1).is_err() {
        if let Some(u) = AGG_USED.get_ptr_mut(&identity) {
            // SAFETY: as above.
            unsafe { atomic_add(u, 1) };
        }
    }
}

/// A decision kept nowhere: counted per window, identity, kind and verdict for
/// the daemon's `gap` receipt.
#[inline(always)]
fn lost(key: &AggKey, now: u64) {
    bump(counter::LOST);
    let lk = LostKey {
        epoch: key.epoch,
        identity: key.identity,
        kind: key.kind,
        verdict: key.verdict,
        _pad: [0; 6],
    };
    if let Some(l) = AGG_LOST.get_ptr_mut(&lk) {
        // SAFETY: a live LostValue; count first, last_ns third, as in AggValue.
        unsafe { add_repeat(l as *mut u64, now) };
        return;
    }
    if AGG_LOST
        .insert(
            &lk,
            &LostValue {
                count: 1,
                first_ns: now,
                last_ns: now,
            },
            1,
        )
        .is_ok()
    {
        return;
    }
    match AGG_LOST.get_ptr_mut(&lk) {
        // SAFETY: as above.
        Some(l) => unsafe { add_repeat(l as *mut u64, now) },
        None => bump(counter::LOST_UNCOUNTED),
    }
}

/// Writes every field of a reserved event.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fill(
    ev: *mut Event,
    s: &Scratch,
    subject: &Subject,
    d: &Decision,
    t: &Target,
    v: u8,
    now: u64,
    comm: [u8; 16],
) {
    // SAFETY: `ev` points at a reserved, exclusively owned ring buffer slot of
    // size_of::<Event>(); every field is written before submit.
    unsafe {
        let pid_tgid = bpf_get_current_pid_tgid();
        let uid_gid = bpf_get_current_uid_gid();
        (*ev).ktime_ns = now;
        (*ev).cgroup_id = subject.cgroup_id;
        (*ev).identity = subject.identity;
        (*ev).tgid = (pid_tgid >> 32) as u32;
        (*ev).pid = pid_tgid as u32;
        (*ev).uid = uid_gid as u32;
        (*ev).rule_id = d.rule_id;
        (*ev).policy_version = d.policy_version;
        (*ev).kind = t.kind;
        (*ev).verdict = v;
        (*ev).mechanism = t.mechanism;
        (*ev).op = t.op;
        (*ev).reason = d.reason;
        (*ev).protocol = t.protocol;
        (*ev).port = t.port;
        (*ev).family = t.family;
        (*ev).addr = t.addr;
        (*ev)._pad = [0; 3];
        (*ev).aux = t.aux;
        (*ev).comm = comm;
        match t.path {
            Some(p) => {
                (*ev).path_len = p.len as u16;
                (*ev).path_truncated = p.truncated as u8;
                copy_path(core::ptr::addr_of_mut!((*ev).path) as *mut u8, s);
            }
            None => {
                (*ev).path_len = 0;
                (*ev).path_truncated = 0;
                core::ptr::write_bytes(core::ptr::addr_of_mut!((*ev).path) as *mut u8, 0, EVENT_PATH_LEN);
            }
        }
    }
}

/// Copies the first `len` bytes of the scratch path into the key, the rest of
/// the key's path being zero, so the same path always makes the same key. (No
/// loop over the bytes: a branch per word multiplies the verifier's states.)
#[inline(always)]
fn copy_path_exact(key: &mut AggKey, s: &Scratch, len: usize) {
    key.path = [0; EVENT_PATH_LEN];
    let n = (len as u32).min(EVENT_PATH_LEN as u32);
    // SAFETY: both buffers hold at least EVENT_PATH_LEN bytes and n is at most that.
    let _ = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            key.path.as_mut_ptr() as *mut c_void,
            n,
            s.path.as_ptr() as *const c_void,
        )
    };
}

/// Copies the scratch path into an event with one bounded helper call.
#[inline(always)]
unsafe fn copy_path(dst: *mut u8, s: &Scratch) {
    // SAFETY: both buffers are at least EVENT_PATH_LEN bytes long.
    let _ = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            dst as *mut c_void,
            EVENT_PATH_LEN as u32,
            s.path.as_ptr() as *const c_void,
        )
    };
}
