//! The event pipeline: kernel decisions (`agent_common::Event` from the ring
//! buffer) become `pb::Event`s with names (identity, policy, the rule as written),
//! wall-clock times and the process's executable; the last [`KEEP`] are kept for
//! `agentctl events`, and followers get new ones as they happen. A follower that
//! cannot keep up is told how many events it lost; nothing is dropped silently.

use std::{
    collections::{HashSet, VecDeque},
    net::Ipv6Addr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use agent_common::{
    agg_emitted, kind, mechanism, op, reason, verdict, AggKey, AggValue, Event, LostKey, LostValue,
    AGG_WINDOW_NS,
};
use nix::time::{clock_gettime, ClockId};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tracing::{debug, error, info, warn};

use crate::{
    api::pb,
    enforce::{Aggregates, EventReader},
    receipts::{model::parse_time, Draft, Journal, Requester, Verdict},
};

/// Events kept in memory for `agentctl events`.
pub const KEEP: usize = 4096;
/// Events a follower may fall behind by before it is cut off.
const FOLLOW_BUFFER: usize = 1024;

/// The names for an event's ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    pub identity: String,
    pub policy: String,
    /// The rule as written in the policy; empty for a default decision.
    pub rule: String,
    /// SHA-256 of the policy version that decided; empty when that version is no
    /// longer known to this daemon.
    pub policy_hash: String,
    /// The identity's owner and key fingerprint, for receipts.
    pub owner: String,
    pub key_fingerprint: String,
    /// The identity's policy asks for receipts of allowed actions too
    /// (`spec.receipts.allows`).
    pub receipts_allows: bool,
}

/// The stream type of the Events RPC.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, tonic::Status>> + Send>>;

struct Kept {
    recent: VecDeque<pb::Event>,
}

/// Recent events and live followers.
#[derive(Clone)]
pub struct Hub {
    kept: Arc<Mutex<Kept>>,
    live: broadcast::Sender<pb::Event>,
    closed: watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            kept: Arc::new(Mutex::new(Kept { recent: VecDeque::with_capacity(KEEP) })),
            live: broadcast::channel(FOLLOW_BUFFER).0,
            closed: watch::channel(false).0,
        }
    }

    /// Keeps `e` and sends it to every follower.
    pub fn publish(&self, e: pb::Event) {
        // Under the lock, so a new follower sees each event exactly once: either in
        // its snapshot of the kept ones or live.
        let mut k = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if k.recent.len() == KEEP {
            k.recent.pop_front();
        }
        k.recent.push_back(e.clone());
        let _ = self.live.send(e);
    }

    /// Ends every follower's stream (at shutdown, so connections can close).
    pub fn close(&self) {
        let _ = self.closed.send(true);
    }

    /// The kept events (the last `last` of them, or all for 0), then with `follow`
    /// the new ones until the client goes away or agentd stops.
    pub fn subscribe(&self, follow: bool, last: usize) -> EventStream {
        let (snapshot, mut live) = {
            let k = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            let skip = if last == 0 { 0 } else { k.recent.len().saturating_sub(last) };
            (k.recent.iter().skip(skip).cloned().collect::<Vec<_>>(), self.live.subscribe())
        };
        let mut closed = self.closed.subscribe();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            for e in snapshot {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                tokio::select! {
                    r = live.recv() => match r {
                        Ok(e) => {
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let _ = tx.send(Err(lagged(n))).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    () = until_closed(&mut closed) => {
                        let _ = tx.send(Err(tonic::Status::unavailable("agentd is shutting down; enforcement stays in the kernel"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

/// Resolves once the hub is closed (or gone).
async fn until_closed(closed: &mut watch::Receiver<bool>) {
    // The guard wait_for returns must not live across an await of the caller.
    let _ = closed.wait_for(|c| *c).await;
}

/// The last message a follower that fell behind gets.
fn lagged(n: u64) -> tonic::Status {
    tonic::Status::resource_exhausted(format!(
        "agentd: this follower fell behind and {n} events were dropped for it (the kernel's own drops are in `agentctl status`); reconnect, or read the kept ones with `agentctl events --last N`"
    ))
}

/// How often a repeated error about kernel decisions may reach agentd's log.
const REPEAT_EVERY: Duration = Duration::from_secs(10);

/// At most one log line per `every` for one repeated message; the lines held back
/// meanwhile are counted and reported with the next one, so a flood of decisions
/// a bound agent makes cannot flood agentd's own log.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl LogLimit {
    pub fn new(every: Duration) -> LogLimit {
        LogLimit { every, last: None, held_back: 0 }
    }

    /// `Some(n)` when a line may be written at `now`, `n` being how many were held
    /// back since the last one written; `None` (and one more held back) otherwise.
    pub fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < self.every) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// How often the aggregation tables are read.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long after its window ends an aggregation entry is reported and deleted:
/// a program that read the clock just before the window ended may still be
/// counting into it.
const WINDOW_GRACE_NS: u64 = 1_000_000_000;

/// Everything one decision goes through on its way out: names, a receipt,
/// `denied` for denials, and the hub.
struct Deliver<F, A> {
    hub: Hub,
    attribute: F,
    journal: Arc<Journal>,
    denied: A,
    unrecorded: LogLimit,
    gaps: LogLimit,
}

/// Identical decisions an aggregate event stands for: `count` of them, the last
/// at boot time `until_ns`.
#[derive(Clone, Copy, Debug)]
struct Repeats {
    count: u64,
    until_ns: u64,
}

impl<F, A> Deliver<F, A>
where
    F: Fn(u32, u32, u32) -> Option<Attribution>,
    A: Fn(&pb::Event),
{
    fn one(&mut self, ev: &Event, repeats: Option<Repeats>) {
        let names = (self.attribute)(ev.identity, ev.policy_version, ev.rule_id);
        let exe = std::fs::read_link(format!("/proc/{}/exe", ev.tgid))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let allows = names.as_ref().is_some_and(|n| n.receipts_allows);
        let (owner, fingerprint) = names
            .as_ref()
            .map(|n| (n.owner.clone(), n.key_fingerprint.clone()))
            .unwrap_or_default();
        let offset = boot_offset();
        let mut e = convert(ev, offset, names, exe);
        if let Some(r) = repeats {
            e.count = r.count;
            e.until = humantime::format_rfc3339_nanos(
                SystemTime::UNIX_EPOCH + offset + Duration::from_nanos(r.until_ns),
            )
            .to_string();
        }
        if let Some(draft) = decision_receipt(&e, &owner, &fingerprint, allows) {
            // The kernel has decided already; nobody waits for this receipt, so a
            // failure can only be reported, loudly. (append waits only when the
            // journal is far behind, which bounds memory rather than the pipeline.)
            if let Err(err) = self.journal.append(draft) {
                // At most one line per REPEAT_EVERY: `agentctl status` has the
                // journal's state, and a flood must not fill the log's disk too.
                if let Some(held_back) = self.unrecorded.allow(std::time::Instant::now()) {
                    error!(identity = %e.identity, kind = %e.kind, verdict = %e.verdict, target = %e.target, error = %err, more_since_last_line = held_back, "RECEIPT NOT RECORDED for a kernel decision");
                }
            }
        }
        // Decisions are events and receipts, not lines of agentd's own log: a bound
        // agent making them as fast as it can would otherwise write that log as
        // fast (measured: 775 MiB in 20 s). They are here at debug level only.
        debug!(
            identity = %e.identity, kind = %e.kind, verdict = %e.verdict, op = %e.op, target = %e.target,
            reason = %e.reason, rule = %e.rule, pid = e.pid, comm = %e.comm, mechanism = %e.mechanism, count = e.count, "decision"
        );
        // A repeat raises no new request: the first one did.
        if repeats.is_none() && (ev.verdict == verdict::DENY || ev.verdict == verdict::KILL) {
            (self.denied)(&e);
        }
        self.hub.publish(e);
    }

    /// Records `lost` decisions that have no receipt of their own.
    fn gap(&mut self, key: &LostKey, lost: &LostValue, cause: &str) {
        let names = (self.attribute)(key.identity, 0, 0);
        let offset = boot_offset();
        let at = |ns: u64| SystemTime::UNIX_EPOCH + offset + Duration::from_nanos(ns);
        let kind_name = kind_name(key.kind);
        let result = receipt_verdict(&verdict_name(key.verdict), true);
        let identity = names
            .as_ref()
            .map_or_else(|| format!("#{}", key.identity), |n| n.identity.clone());
        let (owner, fingerprint) = names
            .map(|n| (n.owner, n.key_fingerprint))
            .unwrap_or_default();
        let draft = Draft::gap(
            kind_name.clone(),
            result.unwrap_or(Verdict::Deny),
            lost.count,
            at(lost.last_ns),
            cause,
        )
        .requester(
            Requester::identity(identity.clone(), fingerprint, owner)
                .with_identity_id(key.identity),
        )
        .at(at(lost.first_ns));
        let recorded = self.journal.append(draft);
        if let Some(held_back) = self.gaps.allow(std::time::Instant::now()) {
            warn!(identity = %identity, kind = %kind_name, lost = lost.count, cause, recorded = recorded.is_ok(), more_since_last_line = held_back,
                "decisions enforced without a receipt of their own: recorded as a gap receipt");
        }
    }
}

/// Reads kernel events until the ring buffer goes away, and once a second the
/// kernel's aggregation tables (`aggregates`): a first decision whose event found
/// the ring buffer full is delivered from there, the repeats of each closed
/// window become one aggregate event and receipt (`count`, `repeats`), and the
/// decisions counted as lost become `gap` receipts. `attribute` names an event's
/// (identity id, policy version, rule id). Each decision that needs one (see
/// [`decision_receipt`]) gets a receipt in `journal`; each denial is also handed
/// to `denied` (which turns a denied `ask` write into a request), and so is each
/// kill.
pub async fn pump<F, A>(
    mut reader: EventReader,
    mut aggregates: Option<Aggregates>,
    hub: Hub,
    attribute: F,
    journal: Arc<Journal>,
    denied: A,
) where
    F: Fn(u32, u32, u32) -> Option<Attribution> + Send + 'static,
    A: Fn(&pb::Event) + Send + 'static,
{
    let mut d = Deliver {
        hub,
        attribute,
        journal,
        denied,
        unrecorded: LogLimit::new(REPEAT_EVERY),
        gaps: LogLimit::new(REPEAT_EVERY),
    };
    let mut sweep = Sweep::default();
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = reader.next() => match ev {
                Some(ev) => d.one(&ev, None),
                None => break,
            },
            _ = tick.tick() => if let Some(a) = aggregates.as_mut() {
                sweep.run(a, &mut d);
            },
        }
    }
    info!("the kernel event stream ended");
}

/// The daemon's side of in-kernel aggregation.
#[derive(Default)]
struct Sweep {
    /// Entries whose first decision this daemon delivered from the table (its
    /// event found the ring buffer full), so it is delivered once.
    firsts: HashSet<AggKey>,
    errors: Option<LogLimit>,
}

impl Sweep {
    fn run<F, A>(&mut self, a: &mut Aggregates, d: &mut Deliver<F, A>)
    where
        F: Fn(u32, u32, u32) -> Option<Attribution>,
        A: Fn(&pb::Event),
    {
        let now = boot_ns();
        let errors = self
            .errors
            .get_or_insert_with(|| LogLimit::new(REPEAT_EVERY));
        let entries = match a.entries() {
            Ok(e) => e,
            Err(err) => {
                if let Some(n) = errors.allow(std::time::Instant::now()) {
                    error!(error = %err, more_since_last_line = n, "reading the kernel's aggregation table");
                }
                return;
            }
        };
        for (k, v) in entries {
            let closed = window_closed(k.epoch, now);
            let from_table =
                v.emitted == agg_emitted::TABLE || (v.emitted == agg_emitted::PENDING && closed);
            if from_table && self.firsts.insert(k) {
                d.one(&first_event(&k, &v), None);
            }
            if !closed {
                continue;
            }
            if v.count > 1 {
                d.one(
                    &first_event(&k, &v),
                    Some(Repeats {
                        count: v.count - 1,
                        until_ns: v.last_ns,
                    }),
                );
            }
            if let Err(err) = a.remove(&k) {
                if let Some(n) = errors.allow(std::time::Instant::now()) {
                    error!(error = %err, more_since_last_line = n, "deleting a reported entry of the kernel's aggregation table");
                }
            }
            self.firsts.remove(&k);
        }
        match a.lost() {
            Ok(lost) => {
                for (k, v) in lost
                    .into_iter()
                    .filter(|(k, _)| window_closed(k.epoch, now))
                {
                    d.gap(&k, &v, "aggregation-full");
                    if let Err(err) = a.remove_lost(&k) {
                        if let Some(n) = errors.allow(std::time::Instant::now()) {
                            error!(error = %err, more_since_last_line = n, "deleting a recorded count of lost decisions");
                        }
                    }
                }
            }
            Err(err) => {
                if let Some(n) = errors.allow(std::time::Instant::now()) {
                    error!(error = %err, more_since_last_line = n, "reading the kernel's lost-decision counts");
                }
            }
        }
    }
}

/// Whether aggregation window `epoch` ended (with its grace) by boot time `now`.
fn window_closed(epoch: u32, now: u64) -> bool {
    (u64::from(epoch) + 1) * AGG_WINDOW_NS + WINDOW_GRACE_NS <= now
}

/// CLOCK_BOOTTIME now, in ns: the kernel's `bpf_ktime_get_boot_ns`.
fn boot_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| Duration::from(t).as_nanos() as u64)
        .unwrap_or(0)
}

/// The first decision of an aggregation entry, as the kernel would have sent it.
fn first_event(k: &AggKey, v: &AggValue) -> Event {
    Event {
        ktime_ns: v.first_ns,
        cgroup_id: v.cgroup_id,
        identity: k.identity,
        tgid: v.tgid,
        pid: v.pid,
        uid: v.uid,
        rule_id: k.rule_id,
        policy_version: k.policy_version,
        kind: k.kind,
        verdict: k.verdict,
        mechanism: k.mechanism,
        op: k.op,
        reason: k.reason,
        protocol: k.protocol,
        port: k.port,
        family: k.family,
        path_len: k.path_len,
        path_truncated: k.path_truncated,
        _pad: [0; 3],
        aux: k.aux,
        addr: k.addr,
        comm: v.comm,
        path: k.path,
    }
}

/// Wall-clock time minus CLOCK_BOOTTIME, now: add a kernel `ktime_get_boot_ns`
/// stamp to it to get the wall-clock time of the event. Taken per event, so clock
/// steps (NTP) are followed.
pub fn boot_offset() -> Duration {
    let boot = clock_gettime(ClockId::CLOCK_BOOTTIME).map(Duration::from).unwrap_or_default();
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().saturating_sub(boot)
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The event's target as a user reads it.
fn target(ev: &Event) -> String {
    match ev.kind {
        kind::EGRESS => {
            let ip = Ipv6Addr::from(ev.addr);
            match ip.to_ipv4_mapped() {
                Some(v4) => format!("{v4}:{}", ev.port),
                None => format!("[{ip}]:{}", ev.port),
            }
        }
        kind::SOCKET if ev.reason != reason::RAW_SOCKET => {
            let (family, ty, proto) = ((ev.aux >> 32) as u32, (ev.aux >> 16) as u16, ev.aux as u16);
            format!("socket (family {family}, type {ty}, protocol {proto})")
        }
        kind::SOCKET => match ev.family as i32 {
            libc::AF_PACKET => "packet socket".to_string(),
            libc::AF_INET => "raw IPv4 socket".to_string(),
            libc::AF_INET6 => "raw IPv6 socket".to_string(),
            f => format!("raw socket (address family {f})"),
        },
        kind::SYSTEM if ev.path_len == 0 => system_target(ev),
        _ => {
            let n = (ev.path_len as usize).min(ev.path.len());
            let mut p = cstr(&ev.path[..n]);
            if ev.path_truncated != 0 {
                p.push('…');
            }
            p
        }
    }
}

/// What a refused system action (kind SYSTEM) was aimed at, from its op and aux.
fn system_target(ev: &Event) -> String {
    let aux = ev.aux;
    match ev.op {
        op::BPF => format!("bpf(cmd {aux})"),
        op::MOUNT => match aux {
            0 => "mount".into(),
            1 => "umount".into(),
            2 => "move_mount".into(),
            3 => "pivot_root".into(),
            4 => "chroot".into(),
            n => format!("mount syscall {n}"),
        },
        op::NAMESPACE => format!("namespaces (clone flags {aux:#x})"),
        op::PTRACE => format!("process {aux}"),
        op::SIGNAL => format!("signal {} to process {}", aux >> 32, aux & 0xffff_ffff),
        op::MODULE => match aux {
            0 => "kernel module load".into(),
            1 => "kernel module delete".into(),
            _ => "kexec".into(),
        },
        op::CGROUP => format!("clone into a cgroup (flags {aux:#x})"),
        op::PERF => format!("perf event type {aux}"),
        op::RAWIO | op::CAPABILITY => format!("capability {aux}"),
        op::RLIMIT => format!("resource limit {aux}"),
        op::SYSCALL => format!("syscall (flags {aux:#x})"),
        _ => format!("aux {aux:#x}"),
    }
}

/// The receipt of a kernel decision, or `None` when it gets none: every deny,
/// kill, would-deny and audit gets one; an allow (an approved `ask`) only when
/// the identity's policy says `receipts.allows: true`. A held connect gets none
/// here: the hold itself is recorded where it is created (daemon::holds).
/// `owner` and `fingerprint` are the identity's, `allows` its policy's setting.
pub fn decision_receipt(
    e: &pb::Event,
    owner: &str,
    fingerprint: &str,
    allows: bool,
) -> Option<Draft> {
    let result = receipt_verdict(&e.verdict, allows)?;
    let mut requester = Requester::identity(e.identity.clone(), fingerprint, owner)
        .with_identity_id(e.identity_id)
        .with_process(e.pid, e.uid, e.executable.clone());
    requester.cgroup_id = Some(e.cgroup_id);
    let mut d = Draft::decision(e.kind.clone(), e.target.clone(), result)
        .requester(requester)
        .policy(e.policy.clone(), e.policy_version, e.policy_hash.clone())
        .reason(e.reason.clone())
        .mechanism(e.mechanism.clone())
        .param("op", e.op.clone())
        .param("comm", e.comm.clone())
        .param("tid", e.tid);
    if e.verdict == "approved" {
        d = d.outcome("approved");
    }
    // An aggregate: it stands for `repeats` decisions identical to the one
    // receipted at `time`, the last at `until`.
    if e.count > 1 {
        d = d.param("repeats", e.count).param("until", e.until.clone());
    }
    if !e.protocol.is_empty() {
        d = d.param("protocol", e.protocol.clone());
    }
    if e.rule_id != 0 {
        d = d.rule(e.rule_id, e.rule.clone());
    }
    if let Some(t) = parse_time(&e.time) {
        d = d.at(t);
    }
    Some(d)
}

/// The receipt verdict of an event verdict; `None` when it gets no receipt.
fn receipt_verdict(verdict: &str, allows: bool) -> Option<Verdict> {
    Some(match verdict {
        "deny" => Verdict::Deny,
        "kill" => Verdict::Kill,
        "would-deny" => Verdict::WouldDeny,
        "audit" => Verdict::Audit,
        "approved" if allows => Verdict::Allow,
        "approved" | "held" => return None,
        // A verdict this daemon does not know: recorded, as a denial would be,
        // rather than dropped (the event shows the raw code).
        _ => Verdict::Deny,
    })
}

fn kind_name(code: u8) -> String {
    name(
        code,
        &[
            (kind::EXEC, "exec"),
            (kind::WRITE, "write"),
            (kind::EGRESS, "egress"),
            (kind::SOCKET, "raw-socket"),
            (kind::SYSTEM, "system"),
            (kind::UNIX, "unix"),
        ],
    )
}

fn verdict_name(code: u8) -> String {
    name(
        code,
        &[
            (verdict::DENY, "deny"),
            (verdict::KILL, "kill"),
            (verdict::AUDIT, "audit"),
            (verdict::WOULD_DENY, "would-deny"),
            (verdict::APPROVED, "approved"),
            (verdict::HELD, "held"),
        ],
    )
}

fn name(code: u8, table: &[(u8, &'static str)]) -> String {
    table.iter().find(|(c, _)| *c == code).map_or_else(|| format!("unknown({code})"), |(_, n)| (*n).to_string())
}

/// Converts one kernel event. `boot_offset` from [`boot_offset`]; `names` from the
/// daemon's identities (`None`: an identity agentd does not know, shown as `#id`);
/// `executable` from `/proc/<tgid>/exe` ("" when the process is gone).
pub fn convert(ev: &Event, boot_offset: Duration, names: Option<Attribution>, executable: String) -> pb::Event {
    let names = names.unwrap_or_else(|| Attribution { identity: format!("#{}", ev.identity), ..Attribution::default() });
    let time = SystemTime::UNIX_EPOCH + boot_offset + Duration::from_nanos(ev.ktime_ns);
    pb::Event {
        time: humantime::format_rfc3339_nanos(time).to_string(),
        identity: names.identity,
        identity_id: ev.identity,
        kind: kind_name(ev.kind),
        verdict: verdict_name(ev.verdict),
        mechanism: name(
            ev.mechanism,
            &[
                (mechanism::LSM, "lsm"),
                (mechanism::TRACEPOINT, "tracepoint"),
                (mechanism::SOCK_ADDR, "sock_addr"),
                (mechanism::SOCK_CREATE, "sock_create"),
            ],
        ),
        op: name(
            ev.op,
            &[
                (op::EXEC, "exec"),
                (op::OPEN, "open"),
                (op::TRUNCATE, "truncate"),
                (op::UNLINK, "unlink"),
                (op::RENAME, "rename"),
                (op::CREATE, "create"),
                (op::LINK, "link"),
                (op::SYMLINK, "symlink"),
                (op::MKDIR, "mkdir"),
                (op::RMDIR, "rmdir"),
                (op::CONNECT, "connect"),
                (op::SENDMSG, "sendmsg"),
                (op::SOCKET, "socket"),
                (op::SYSCALL, "syscall"),
                (op::WRITE, "write"),
                (op::MMAP_EXEC, "mmap-exec"),
                (op::CHMOD, "chmod"),
                (op::CHOWN, "chown"),
                (op::XATTR, "xattr"),
                (op::UTIMES, "utimes"),
                (op::READ, "read"),
                (op::BPF, "bpf"),
                (op::MOUNT, "mount"),
                (op::NAMESPACE, "namespace"),
                (op::PTRACE, "ptrace"),
                (op::SIGNAL, "signal"),
                (op::MODULE, "module"),
                (op::CGROUP, "cgroup"),
                (op::PERF, "perf"),
                (op::RAWIO, "rawio"),
                (op::CAPABILITY, "capability"),
                (op::RLIMIT, "rlimit"),
            ],
        ),
        reason: name(
            ev.reason,
            &[
                (reason::RULE, "rule"),
                (reason::DEFAULT, "default"),
                (reason::REVOKED, "revoked"),
                (reason::NO_POLICY, "no-policy"),
                (reason::UNRESOLVED, "unresolved"),
                (reason::RAW_SOCKET, "raw-socket"),
                (reason::UNSUPPORTED_SYSCALL, "unsupported-syscall"),
                (reason::EXPIRED, "expired"),
                (reason::NOT_APPROVED, "not-approved"),
                (reason::ESCAPE, "escape"),
                (reason::TAMPER, "tamper"),
                (reason::NAMESPACE, "namespace"),
                (reason::BPF, "bpf"),
                (reason::PTRACE, "ptrace"),
                (reason::KERNEL, "kernel"),
                (reason::PROTOCOL, "protocol"),
                (reason::GUARDED, "guarded"),
                (reason::LINK, "link"),
            ],
        ),
        rule_id: ev.rule_id,
        rule: names.rule,
        policy: names.policy,
        policy_hash: names.policy_hash,
        policy_version: ev.policy_version,
        count: 1,
        until: String::new(),
        pid: ev.tgid,
        tid: ev.pid,
        uid: ev.uid,
        cgroup_id: ev.cgroup_id,
        comm: cstr(&ev.comm),
        executable,
        target: target(ev),
        protocol: match (ev.kind, ev.protocol) {
            (kind::EGRESS, 6) => "tcp",
            (kind::EGRESS, 17) => "udp",
            _ => "",
        }
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;

    /// A flood of the same error gives one line per period, each saying how many
    /// were held back since the one before.
    #[test]
    fn a_repeated_error_is_logged_once_per_period_with_a_count() {
        let t0 = std::time::Instant::now();
        let mut l = LogLimit::new(Duration::from_secs(10));
        assert_eq!(l.allow(t0), Some(0));
        let held: Vec<Option<u64>> = (1..=1000u64).map(|i| l.allow(t0 + Duration::from_millis(i))).collect();
        assert!(held.iter().all(Option::is_none), "written within the period");
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(l.allow(t0 + Duration::from_secs(11)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(30)), Some(1));
    }

    fn blank() -> Event {
        Event {
            ktime_ns: 0,
            cgroup_id: 0,
            identity: 0,
            tgid: 0,
            pid: 0,
            uid: 0,
            rule_id: 0,
            policy_version: 0,
            kind: 0,
            verdict: 0,
            mechanism: 0,
            op: 0,
            reason: 0,
            protocol: 0,
            port: 0,
            family: 0,
            path_len: 0,
            path_truncated: 0,
            _pad: [0; 3],
            aux: 0,
            addr: [0; 16],
            comm: [0; 16],
            path: [0; agent_common::EVENT_PATH_LEN],
        }
    }

    fn names() -> Option<Attribution> {
        Some(Attribution {
            identity: "coder".into(),
            policy: "coding-agent".into(),
            rule: "{path: /usr/bin/curl, action: deny}".into(),
            policy_hash: "ab".repeat(32),
            ..Attribution::default()
        })
    }

    #[test]
    fn exec_deny_reads_like_the_policy() {
        let mut e = exec_by_rule_2(verdict::DENY);
        e.ktime_ns = 1_500_000_000;
        e.comm[..4].copy_from_slice(b"bash");
        let got = convert(&e, Duration::from_secs(1_700_000_000), names(), "/usr/bin/bash".into());
        assert_eq!(got.time, "2023-11-14T22:13:21.500000000Z");
        assert_eq!(
            (got.kind.as_str(), got.verdict.as_str(), got.mechanism.as_str(), got.op.as_str(), got.reason.as_str()),
            ("exec", "deny", "lsm", "exec", "rule")
        );
        assert_eq!((got.identity.as_str(), got.identity_id, got.policy.as_str(), got.policy_version), ("coder", 3, "coding-agent", 4));
        assert_eq!(got.rule, "{path: /usr/bin/curl, action: deny}");
        assert_eq!((got.pid, got.tid, got.uid, got.cgroup_id), (100, 101, 1000, 77));
        assert_eq!((got.comm.as_str(), got.executable.as_str(), got.target.as_str()), ("bash", "/usr/bin/bash", "/usr/bin/curl"));
        assert_eq!(got.protocol, "");
    }

    /// The kernel's event for identity 3 exec'ing /usr/bin/curl, decided by rule 2.
    fn exec_by_rule_2(verdict_code: u8) -> Event {
        let mut e = blank();
        e.kind = kind::EXEC;
        e.verdict = verdict_code;
        e.mechanism = mechanism::LSM;
        e.op = op::EXEC;
        e.reason = reason::RULE;
        e.identity = 3;
        e.rule_id = 2;
        e.policy_version = 4;
        e.tgid = 100;
        e.pid = 101;
        e.uid = 1000;
        e.cgroup_id = 77;
        let p = b"/usr/bin/curl";
        e.path[..p.len()].copy_from_slice(p);
        e.path_len = p.len() as u16;
        e
    }

    fn decided(verdict_code: u8) -> pb::Event {
        convert(&exec_by_rule_2(verdict_code), Duration::from_secs(1_700_000_000), names(), "/usr/bin/bash".into())
    }

    #[test]
    fn a_denial_becomes_a_receipt_naming_who_what_and_which_rule() {
        let e = decided(verdict::DENY);
        let d = decision_receipt(&e, "alice", "3f2a00112233aabb", false).expect("a deny always gets a receipt");
        let r = d.into_receipt(1, String::new(), "node", SystemTime::UNIX_EPOCH);
        assert_eq!((r.kind, r.action.kind.as_str(), r.action.target.as_str()), (crate::receipts::ReceiptType::Decision, "exec", "/usr/bin/curl"));
        assert_eq!((r.decision.result, r.outcome.as_str()), (Verdict::Deny, "blocked"));
        let q = &r.requester;
        assert_eq!((q.identity.as_str(), q.key_fingerprint.as_str(), q.owner.as_str(), q.identity_id), ("coder", "3f2a00112233aabb", "alice", Some(3)));
        assert_eq!((q.pid, q.uid, q.executable.as_str(), q.cgroup_id), (Some(100), Some(1000), "/usr/bin/bash", Some(77)));
        let c = &r.decision;
        assert_eq!((c.policy.as_str(), c.policy_version, c.policy_hash.as_str()), ("coding-agent", Some(4), "ab".repeat(32).as_str()));
        assert_eq!((c.rule_id, c.rule.as_str()), (Some(2), "{path: /usr/bin/curl, action: deny}"));
        assert_eq!((c.reason.as_str(), c.mechanism.as_str()), ("rule", "lsm"));
        assert_eq!(r.time, e.time, "the time the kernel decided, not the time of append");
        assert_eq!(r.action.parameters["op"], "exec");
    }

    #[test]
    fn an_aggregate_receipt_stands_for_its_repeats() {
        let mut e = decided(verdict::DENY);
        assert!(
            decision_receipt(&e, "", "", false)
                .unwrap()
                .action
                .parameters
                .get("repeats")
                .is_none(),
            "one decision, no count"
        );
        e.count = 98_218;
        e.until = "2023-11-14T22:13:25.000000000Z".into();
        let d = decision_receipt(&e, "", "", false).unwrap();
        assert_eq!(d.action.parameters["repeats"], 98_218);
        assert_eq!(
            d.action.parameters["until"],
            "2023-11-14T22:13:25.000000000Z"
        );
        assert_eq!(
            (d.kind, d.decision.result),
            (crate::receipts::ReceiptType::Decision, Verdict::Deny)
        );
    }

    #[test]
    fn a_window_is_reported_once_it_and_its_grace_are_over() {
        let w = AGG_WINDOW_NS;
        assert!(!window_closed(0, w));
        assert!(!window_closed(0, w + WINDOW_GRACE_NS - 1));
        assert!(window_closed(0, w + WINDOW_GRACE_NS));
        assert!(!window_closed(7, 8 * w));
        assert!(window_closed(7, 8 * w + WINDOW_GRACE_NS));
    }

    #[test]
    fn a_first_delivered_from_the_table_reads_as_the_kernels_event() {
        let ev = exec_by_rule_2(verdict::DENY);
        let k = AggKey {
            epoch: 0,
            identity: ev.identity,
            rule_id: ev.rule_id,
            policy_version: ev.policy_version,
            tgid: ev.tgid,
            kind: ev.kind,
            verdict: ev.verdict,
            mechanism: ev.mechanism,
            op: ev.op,
            reason: ev.reason,
            protocol: ev.protocol,
            port: ev.port,
            family: ev.family,
            path_len: ev.path_len,
            path_truncated: ev.path_truncated,
            _pad: [0; 7],
            aux: ev.aux,
            addr: ev.addr,
            path: ev.path,
        };
        let v = AggValue {
            count: 3,
            first_ns: ev.ktime_ns,
            last_ns: ev.ktime_ns + 10,
            cgroup_id: ev.cgroup_id,
            tgid: ev.tgid,
            pid: ev.pid,
            uid: ev.uid,
            emitted: agg_emitted::TABLE,
            comm: ev.comm,
        };
        let at = Duration::from_secs(1_700_000_000);
        assert_eq!(
            convert(&first_event(&k, &v), at, names(), String::new()),
            convert(&ev, at, names(), String::new())
        );
    }

    #[test]
    fn which_decisions_get_receipts() {
        for (code, want) in [(verdict::DENY, Verdict::Deny), (verdict::KILL, Verdict::Kill), (verdict::WOULD_DENY, Verdict::WouldDeny), (verdict::AUDIT, Verdict::Audit)] {
            let d = decision_receipt(&decided(code), "", "", false).unwrap_or_else(|| panic!("{code}: no receipt"));
            assert_eq!(d.decision.result, want);
        }
        // An allow only when the policy asks for receipts of allows.
        assert!(decision_receipt(&decided(verdict::APPROVED), "", "", false).is_none());
        let d = decision_receipt(&decided(verdict::APPROVED), "", "", true).unwrap();
        assert_eq!((d.decision.result, d.outcome.as_str()), (Verdict::Allow, "approved"));
        // A held connect is recorded by the hold, not here.
        assert!(decision_receipt(&decided(verdict::HELD), "", "", true).is_none());
        // The default decision names no rule.
        let mut e = decided(verdict::DENY);
        e.rule_id = 0;
        e.rule.clear();
        assert_eq!(decision_receipt(&e, "", "", false).unwrap().decision.rule_id, None);
    }

    #[test]
    fn egress_targets() {
        let mut e = blank();
        e.kind = kind::EGRESS;
        e.verdict = verdict::KILL;
        e.protocol = 6;
        e.port = 443;
        e.family = libc::AF_INET as u16;
        e.addr = std::net::Ipv4Addr::new(140, 82, 112, 3).to_ipv6_mapped().octets();
        let got = convert(&e, Duration::ZERO, names(), String::new());
        assert_eq!((got.target.as_str(), got.protocol.as_str(), got.verdict.as_str()), ("140.82.112.3:443", "tcp", "kill"));
        e.family = libc::AF_INET6 as u16;
        e.protocol = 17;
        e.port = 53;
        e.addr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let got = convert(&e, Duration::ZERO, names(), String::new());
        assert_eq!((got.target.as_str(), got.protocol.as_str()), ("[2001:db8::1]:53", "udp"));
    }

    #[test]
    fn truncated_paths_unknown_ids_and_codes() {
        let mut e = blank();
        e.kind = kind::WRITE;
        e.identity = 9;
        e.path = [b'a'; agent_common::EVENT_PATH_LEN];
        e.path_len = agent_common::EVENT_PATH_LEN as u16;
        e.path_truncated = 1;
        e.verdict = 99;
        let got = convert(&e, Duration::ZERO, None, String::new());
        assert!(got.target.ends_with("a…") && got.target.chars().count() == agent_common::EVENT_PATH_LEN + 1);
        assert_eq!(got.identity, "#9");
        assert_eq!(got.verdict, "unknown(99)");
        // A path_len beyond the buffer is clamped, not a panic.
        e.path_len = u16::MAX;
        e.path_truncated = 0;
        assert_eq!(convert(&e, Duration::ZERO, None, String::new()).target.len(), agent_common::EVENT_PATH_LEN);
        e.kind = kind::SOCKET;
        e.family = libc::AF_PACKET as u16;
        e.reason = reason::RAW_SOCKET;
        let got = convert(&e, Duration::ZERO, None, String::new());
        assert_eq!((got.kind.as_str(), got.target.as_str(), got.reason.as_str()), ("raw-socket", "packet socket", "raw-socket"));
    }

    #[test]
    fn boot_offset_is_the_boot_time() {
        let boot = SystemTime::UNIX_EPOCH + boot_offset();
        let uptime: f64 = std::fs::read_to_string("/proc/uptime").unwrap().split(' ').next().unwrap().parse().unwrap();
        let expect = SystemTime::now() - Duration::from_secs_f64(uptime);
        let diff = boot.duration_since(expect).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(2), "{diff:?}");
    }

    fn event(n: u32) -> pb::Event {
        pb::Event { pid: n, ..Default::default() }
    }

    #[tokio::test]
    async fn kept_then_live_and_last_n() {
        let hub = Hub::new();
        for n in 0..(KEEP as u32 + 10) {
            hub.publish(event(n));
        }
        let all: Vec<_> = hub.subscribe(false, 0).collect().await;
        assert_eq!(all.len(), KEEP, "only the last {KEEP} are kept");
        assert_eq!(all[0].as_ref().unwrap().pid, 10);
        let last: Vec<u32> = hub.subscribe(false, 2).map(|e| e.unwrap().pid).collect().await;
        assert_eq!(last, vec![KEEP as u32 + 8, KEEP as u32 + 9]);

        let mut follow = hub.subscribe(true, 1);
        assert_eq!(follow.next().await.unwrap().unwrap().pid, KEEP as u32 + 9);
        hub.publish(event(1));
        assert_eq!(follow.next().await.unwrap().unwrap().pid, 1);
        hub.close();
        let end = follow.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::Unavailable);
        assert!(follow.next().await.is_none());
    }

    #[tokio::test]
    async fn a_lagging_follower_is_told_how_many_it_lost() {
        let hub = Hub::new();
        let mut follow = hub.subscribe(true, 0);
        // Let the forwarding task start waiting, then overrun its buffers.
        tokio::task::yield_now().await;
        for n in 0..(FOLLOW_BUFFER as u32 * 3) {
            hub.publish(event(n));
        }
        let mut got = 0;
        loop {
            match follow.next().await {
                Some(Ok(_)) => got += 1,
                Some(Err(s)) => {
                    assert_eq!(s.code(), tonic::Code::ResourceExhausted);
                    assert!(s.message().contains("events were dropped for it"), "{}", s.message());
                    break;
                }
                None => panic!("stream ended without saying events were lost"),
            }
        }
        assert!(got < FOLLOW_BUFFER * 3);
        assert!(follow.next().await.is_none());
    }
}
