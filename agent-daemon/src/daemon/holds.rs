//! Wiring of the exec hold: each exec fanotify holds is judged in userspace (is it
//! an `ask` of a bound identity?), submitted to the hold service, and answered
//! when a person decides or the deadline passes. Approval writes the kernel's
//! one-shot `EXEC_APPROVALS` entry *before* the held open is allowed, so the
//! kernel's own exec check lets exactly that exec through; a denial answers
//! `FAN_DENY` (the exec fails with EPERM).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use super::core::{Core, ExecAsk, Excepted};
use crate::{
    cgroup,
    enforce::{
        fanotify::{blocked_exec_argv, blocked_exec_file, ExecGate, HeldOpen, WriteGate, WriteSwitch},
        ConnectHolds, ExecApprovals, WriteHolds,
    },
    api::pb,
    holds::{webhook, Grant, HoldEvent, HoldKind, HoldRequest, HoldService, How, Pending, Resolution, Submitted, Verdict},
    receipts::{self, Approval, Draft, Journal, Requester},
};

/// How long an approval written into the kernel stays usable: the exec check runs
/// microseconds after the held open is allowed; this only bounds a stale entry.
const APPROVAL_TTL: Duration = Duration::from_secs(10);

/// The hold service and what it needs to answer the kernel.
pub struct Holds {
    pub service: Mutex<HoldService>,
    approvals: Mutex<ExecApprovals>,
    /// Woken when a hold with a new deadline arrives.
    wake: Notify,
    /// Where holds, approvals and outcomes are recorded (see [`record_holds`]).
    receipts: Arc<Journal>,
}

impl Holds {
    /// The holds of this daemon; every hold `service` makes is recorded in `receipts`.
    pub fn new(mut service: HoldService, approvals: ExecApprovals, receipts: Arc<Journal>) -> Arc<Holds> {
        record_holds(&mut service, receipts.clone());
        Arc::new(Holds { service: Mutex::new(service), approvals: Mutex::new(approvals), wake: Notify::new(), receipts })
    }

    /// Records an ask answered at once, without a hold (a grant, the cap, the rate limit).
    fn record_decided(&self, req: &HoldRequest, r: &Resolution) {
        if let Err(e) = self.receipts.append(decided_receipt(req, r)) {
            error!(error = %e, identity = %req.identity, target = %req.target, "RECEIPT NOT RECORDED for an ask answered without a hold");
        }
    }

    pub fn service(&self) -> std::sync::MutexGuard<'_, HoldService> {
        self.service.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers a held exec as `resolution` says.
    fn answer(&self, held: HeldOpen, resolution: &Resolution) {
        if resolution.verdict == Verdict::Allow {
            let written = self.approvals.lock().unwrap_or_else(PoisonError::into_inner).approve(
                held.pid,
                held.dev,
                held.ino,
                APPROVAL_TTL,
            );
            match written {
                Ok(()) => held.allow(),
                Err(e) => {
                    // Without the kernel's entry the exec check would refuse it
                    // anyway; say so and fail the exec cleanly instead.
                    warn!(tgid = held.pid, error = %e, "approved exec could not be recorded in the kernel; denying it");
                    held.deny();
                }
            }
        } else {
            held.deny();
        }
    }
}

/// What the kernel tells us about the process that exec'd, for the person deciding.
fn describe(held: &HeldOpen, cgroup: &Path, ask: ExecAsk) -> HoldRequest {
    describe_as(held, cgroup, ask, HoldKind::Exec, blocked_exec_argv(held.pid))
}

fn describe_as(held: &HeldOpen, cgroup: &Path, ask: ExecAsk, kind: HoldKind, argv: Vec<String>) -> HoldRequest {
    let pid = held.pid;
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let uid = read("status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(u32::MAX);
    HoldRequest {
        identity: ask.identity,
        identity_id: ask.identity_id,
        owner: ask.owner,
        kind,
        target: held.path.to_string_lossy().into_owned(),
        argv,
        pid,
        uid,
        comm: read("comm").trim_end().to_string(),
        executable: std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
        cgroup_path: cgroup.to_string_lossy().into_owned(),
        policy: ask.policy,
        policy_version: ask.policy_version,
        rule_id: ask.rule_id,
        rule: ask.rule,
        key_fingerprint: ask.key_fingerprint,
        policy_hash: ask.policy_hash,
    }
}

/// How long an approved (once) request lets the agent do it: long enough to retry
/// what failed, short enough to be "this once".
pub const ONCE_WINDOW: Duration = Duration::from_secs(120);

/// A write or a UDP send the kernel stopped under an `ask` rule: nothing can hold
/// those on this build, so it failed with EPERM (or, where the write mechanism can
/// only kill, the process was killed), and this records it as a request a person
/// can approve. Approval installs an exception for exactly that file (or address
/// and port) and identity — for [`ONCE_WINDOW`], or for `approve --for D` — and the
/// agent's retry goes through. A request already waiting for the same target is
/// not asked again.
pub fn ask_request(core: &Arc<Mutex<Core>>, holds: &Arc<Holds>, e: &pb::Event, rt: &tokio::runtime::Handle) {
    if e.verdict != "deny" && e.verdict != "kill" {
        return;
    }
    let now = SystemTime::now();
    let (excepted, kind) = match e.kind.as_str() {
        // Only a whole, absolute path can be excepted exactly.
        "write" if e.target.starts_with('/') && !e.target.ends_with('…') => (Excepted::Write(e.target.clone()), HoldKind::Write),
        "egress" if e.protocol == "udp" => match e.target.parse::<std::net::SocketAddr>() {
            Ok(a) => (Excepted::Udp(a), HoldKind::Udp),
            Err(_) => return,
        },
        _ => return,
    };
    let ask = {
        let c = core.lock().unwrap_or_else(PoisonError::into_inner);
        match &excepted {
            Excepted::Write(p) => c.write_ask(e.identity_id, Path::new(p), now),
            Excepted::Udp(a) => c.udp_ask(e.identity_id, *a, now),
        }
    };
    let Some(ask) = ask else { return };
    let settings = ask.approvals;
    let req = HoldRequest {
        identity: ask.identity,
        identity_id: ask.identity_id,
        owner: ask.owner,
        kind,
        target: e.target.clone(),
        argv: Vec::new(),
        pid: e.pid,
        uid: e.uid,
        comm: e.comm.clone(),
        executable: e.executable.clone(),
        cgroup_path: String::new(),
        policy: ask.policy,
        policy_version: ask.policy_version,
        rule_id: ask.rule_id,
        rule: ask.rule,
        key_fingerprint: ask.key_fingerprint,
        policy_hash: ask.policy_hash,
    };
    let submitted = {
        let mut service = holds.service();
        if service.is_waiting(&req) {
            return;
        }
        service.submit(req.clone(), &settings, now)
    };
    match submitted {
        Submitted::Decided(r) => {
            holds.record_decided(&req, &r);
            // A grant still runs in userspace but the kernel stopped it: its
            // exception ended a moment early (or could not be installed); put it back.
            if r.verdict == Verdict::Allow {
                let until = holds
                    .service()
                    .grants(now)
                    .into_iter()
                    .find(|g| g.identity_id == req.identity_id && g.kind == req.kind && g.target == req.target)
                    .map(|g| g.until);
                if let Some(until) = until {
                    except(core, &req, &excepted, until, now);
                }
            }
        }
        Submitted::Held { id, wait } => {
            info!(hold = %id, identity = %req.identity, kind = %req.kind, target = %req.target, "stopped and asked about: an approval lets the agent do exactly this");
            holds.wake.notify_one();
            let (core, holds) = (core.clone(), holds.clone());
            rt.spawn(async move {
                let Ok(r) = wait.await else { return };
                if r.verdict != Verdict::Allow {
                    return;
                }
                let until = match r.how {
                    How::For(d) => r.decided_at.checked_add(d),
                    _ => r.decided_at.checked_add(ONCE_WINDOW),
                }
                .unwrap_or(r.decided_at);
                if !matches!(r.how, How::For(_)) {
                    if let Some(by) = r.decided_by.clone() {
                        holds.service().add_grant(&req, until, by, r.decided_at);
                    }
                }
                let _ = tokio::task::spawn_blocking(move || except(&core, &req, &excepted, until, SystemTime::now())).await;
            });
        }
    }
}

/// Installs the kernel exception for an approved request.
fn except(core: &Mutex<Core>, req: &HoldRequest, what: &Excepted, until: SystemTime, now: SystemTime) {
    let r = core.lock().unwrap_or_else(PoisonError::into_inner).grant(req.identity_id, what.clone(), req.rule_id, until, now);
    match r {
        Ok(()) => info!(identity = %req.identity, excepted = %what, until = %humantime::format_rfc3339_seconds(until), "exception in force"),
        Err(e) => error!(identity = %req.identity, excepted = %what, error = %e, "an approved request could not be put in force; it stays stopped"),
    }
}

/// Ends exceptions as their time runs out (checked every second).
pub async fn expire_exceptions(core: Arc<Mutex<Core>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let core = core.clone();
        let ended = tokio::task::spawn_blocking(move || {
            core.lock().unwrap_or_else(PoisonError::into_inner).expire_exceptions(SystemTime::now())
        })
        .await
        .unwrap_or_default();
        for (identity, what) in ended {
            info!(identity = %identity, excepted = %what, "exception ended: it is asked about again");
        }
    }
}

/// Starts the exec gate on its own thread. Returns the marked mount points.
pub fn start_exec_gate(
    core: Arc<Mutex<Core>>,
    holds: Arc<Holds>,
    cgroup_mount: PathBuf,
    rt: tokio::runtime::Handle,
) -> Result<Vec<PathBuf>, crate::enforce::EnforceError> {
    let gate = ExecGate::open()?;
    let marked = gate.marked.clone();
    // A filesystem mounted later (a USB stick, a tmpfs, a container's overlay in
    // this namespace) is held too, from its mount on.
    if let Err(e) = gate.watch_mounts() {
        warn!(error = %e, "filesystems mounted from now on are not held: an ask exec from one is denied");
    }
    std::thread::Builder::new()
        .name("exec-holds".into())
        .spawn(move || {
            let err = gate.run(|held| on_exec(&core, &holds, &cgroup_mount, &rt, held));
            // Every exec on the machine waits for this thread; if it cannot read
            // events any more, stop holding (the fd closes: the kernel lets pending
            // opens go on to its exec check, which denies an unapproved ask).
            warn!(error = %err, "exec hold thread stopped; ask execs are now denied without a hold");
        })
        .map_err(|e| crate::enforce::EnforceError::kernel("starting the exec hold thread", e))?;
    Ok(marked)
}

fn on_exec(core: &Mutex<Core>, holds: &Arc<Holds>, mount: &Path, rt: &tokio::runtime::Handle, held: HeldOpen) {
    // Most execs are not ours: answer those at once.
    let Some(cg) = process_cgroup(mount, held.pid) else {
        held.allow();
        return;
    };
    // The ELF (or script) interpreter the kernel opens for the program: the exec
    // check judges the program, not it, so it is never held.
    if blocked_exec_file(held.pid).is_some_and(|f| f != (held.dev, held.ino)) {
        held.allow();
        return;
    }
    let now = SystemTime::now();
    let ask = core.lock().unwrap_or_else(PoisonError::into_inner).exec_ask(&cg, &held.path, now);
    let Some(ask) = ask else {
        // Not an ask: the kernel's exec check decides alone.
        held.allow();
        return;
    };
    let settings = ask.approvals;
    let req = describe(&held, &cg, ask);
    let submitted = holds.service().submit(req.clone(), &settings, now);
    match submitted {
        Submitted::Decided(r) => {
            holds.record_decided(&req, &r);
            holds.answer(held, &r)
        }
        Submitted::Held { id, wait } => {
            info!(hold = %id, tgid = held.pid, target = %held.path.display(), "exec held for approval");
            holds.wake.notify_one();
            let holds = holds.clone();
            rt.spawn(async move {
                match wait.await {
                    Ok(r) => holds.answer(held, &r),
                    // The service dropped it without a decision: deny.
                    Err(_) => held.deny(),
                }
            });
        }
    }
}

/// Starts the write gate: its event thread and its mount watcher. Returns the
/// gate's switch (for `doctor`) and what to tell whether any policy asks about
/// writes, which turns the marks on and off (for [`Core::set_write_gate`]).
pub fn start_write_gate(
    core: Arc<Mutex<Core>>,
    holds: Arc<Holds>,
    maps: WriteHolds,
    cgroup_mount: PathBuf,
    rt: tokio::runtime::Handle,
) -> Result<(WriteSwitch, Box<dyn Fn(bool) + Send>), crate::enforce::EnforceError> {
    let gate = WriteGate::open()?;
    let switch = gate.switch();
    let maps = Arc::new(Mutex::new(maps));
    {
        let maps = maps.clone();
        if let Err(e) = switch.watch_mounts(move |devs| set_devs(&maps, devs)) {
            warn!(error = %e, "filesystems mounted from now on are not held: an ask write on one is denied (a request)");
        }
    }
    {
        let maps = maps.clone();
        std::thread::Builder::new()
            .name("write-holds".into())
            .spawn(move || {
                let recorded = |tid| maps.lock().unwrap_or_else(PoisonError::into_inner).lookup(tid);
                let err = gate.run(recorded, |held, h| on_write_open(&core, &holds, &maps, &cgroup_mount, &rt, held, h));
                warn!(error = %err, "write hold thread stopped; ask writes are now refused without a hold");
            })
            .map_err(|e| crate::enforce::EnforceError::kernel("starting the write hold thread", e))?;
    }
    let (s, m) = (switch.clone(), maps);
    let on_change: Box<dyn Fn(bool) + Send> = Box::new(move |on| {
        if let Some(devs) = s.set(on) {
            set_devs(&m, &devs);
        }
    });
    Ok((switch, on_change))
}

fn set_devs(maps: &Mutex<WriteHolds>, devs: &std::collections::BTreeSet<u32>) {
    if let Err(e) = maps.lock().unwrap_or_else(PoisonError::into_inner).set_devs(devs) {
        error!(error = %e, "could not tell the kernel which filesystems hold writes; ask writes there are refused (requests)");
    }
}

/// An open on a marked filesystem by a thread the kernel recorded (`h`) as in a
/// write open of a bound identity (the gate allowed every other open already).
/// Runs on the gate's thread, which every open there waits for, so it answers at
/// once unless the open is to be judged; those go to a blocking task (judging
/// takes the core lock, whose holder may itself be opening a file).
fn on_write_open(
    core: &Arc<Mutex<Core>>,
    holds: &Arc<Holds>,
    maps: &Arc<Mutex<WriteHolds>>,
    mount: &Path,
    rt: &tokio::runtime::Handle,
    held: HeldOpen,
    h: agent_common::WriteHold,
) {
    // BPF LSM recorded the very file it let into the hold; another file is some
    // other open of this thread (the kernel's own checks judge it).
    let lsm = h.file != 0;
    if matches!(h.state, agent_common::write_hold::APPROVED | agent_common::write_hold::COUNTED) || (lsm && (h.dev, h.ino) != (held.dev, held.ino)) {
        held.allow();
        return;
    }
    let (core, holds, maps, mount) = (core.clone(), holds.clone(), maps.clone(), mount.to_path_buf());
    let rt2 = rt.clone();
    rt.spawn_blocking(move || judge_write_open(&core, &holds, &maps, &mount, &rt2, held, h));
}

/// How long an approval of a held write open stays usable on the fallback tier
/// (the exit check runs microseconds after the open is let go on).
const WRITE_APPROVAL_TTL: Duration = Duration::from_secs(10);

fn judge_write_open(
    core: &Mutex<Core>,
    holds: &Arc<Holds>,
    maps: &Arc<Mutex<WriteHolds>>,
    mount: &Path,
    rt: &tokio::runtime::Handle,
    held: HeldOpen,
    h: agent_common::WriteHold,
) {
    let now = SystemTime::now();
    let ask = core.lock().unwrap_or_else(PoisonError::into_inner).write_hold_ask(h.identity, &held.path, now);
    let Some(ask) = ask else {
        if h.file != 0 {
            // The kernel said ask and userspace (policy re-applied meanwhile) does
            // not: nobody can approve it, so it is denied.
            maps.lock().unwrap_or_else(PoisonError::into_inner).forget(held.pid);
            held.deny();
        } else {
            // Fallback tier: not an ask; the exit check decides alone.
            held.allow();
        }
        return;
    };
    let cg = process_cgroup(mount, held.pid).unwrap_or_default();
    let settings = ask.approvals;
    let mut req = describe_as(&held, &cg, ask, HoldKind::Write, Vec::new());
    // The thread is what the kernel holds; the request names its process.
    if let Some(tgid) = thread_group(held.pid) {
        req.pid = tgid;
    }
    let submitted = holds.service().submit(req.clone(), &settings, now);
    match submitted {
        Submitted::Decided(r) => {
            holds.record_decided(&req, &r);
            answer_write(maps, held, h, &r);
        }
        Submitted::Held { id, wait } => {
            info!(hold = %id, tid = held.pid, target = %held.path.display(), "write open held for approval");
            holds.wake.notify_one();
            let maps = maps.clone();
            rt.spawn(async move {
                match wait.await {
                    Ok(r) => answer_write(&maps, held, h, &r),
                    Err(_) => {
                        maps.lock().unwrap_or_else(PoisonError::into_inner).forget(held.pid);
                        held.deny();
                    }
                }
            });
        }
    }
}

/// Answers a held write open: an approval is written into the kernel first (the
/// kernel's checks let an `ask` through only with it), then the open goes on.
fn answer_write(maps: &Mutex<WriteHolds>, held: HeldOpen, h: agent_common::WriteHold, r: &Resolution) {
    let mut m = maps.lock().unwrap_or_else(PoisonError::into_inner);
    if r.verdict == Verdict::Allow {
        match m.approve(held.pid, h, held.dev, held.ino, WRITE_APPROVAL_TTL) {
            Ok(()) => {
                drop(m);
                held.allow();
            }
            Err(e) => {
                warn!(tid = held.pid, error = %e, "approved write could not be recorded in the kernel; denying it");
                m.forget(held.pid);
                drop(m);
                held.deny();
            }
        }
    } else {
        m.forget(held.pid);
        drop(m);
        held.deny();
    }
}

/// The thread group (process) of thread `tid`.
fn thread_group(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

/// The cgroup directory of process `tgid` (None if it is gone).
fn process_cgroup(mount: &Path, tgid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/cgroup")).ok()?;
    let rel = cgroup::parse_proc_cgroup(&text)?;
    Some(cgroup::join_mount(mount, rel))
}

/// Resolves holds at their deadlines, within a few milliseconds.
pub async fn expire_holds(holds: Arc<Holds>) {
    loop {
        let next = holds.service().next_deadline();
        let wait = next.map_or(Duration::from_secs(3600), |t| t.duration_since(SystemTime::now()).unwrap_or_default());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = holds.wake.notified() => continue,
        }
        let expired = holds.service().expire(SystemTime::now());
        for (id, r) in expired {
            info!(hold = %id, verdict = ?r.verdict, "hold reached its deadline");
        }
    }
}

/// Posts every hold event to every webhook (each delivery on its own task, so a
/// slow endpoint delays nothing else).
pub async fn notify_webhooks(holds: Arc<Holds>, endpoints: Vec<webhook::Endpoint>) {
    let mut rx = holds.service().subscribe();
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!(missed = n, "webhook notifier fell behind; {n} hold events were not posted");
                webhook::FAILED.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let (give_up_at, what) = match &ev {
            HoldEvent::Pending(p) => (Some(p.deadline), format!("hold {} pending", p.id)),
            HoldEvent::Resolved { id, .. } => (None, format!("hold {id} resolved")),
        };
        let body = match serde_json::to_vec(&event_pb(&ev)) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "could not encode a hold event for the webhooks");
                continue;
            }
        };
        for ep in &endpoints {
            tokio::spawn(webhook::deliver(ep.clone(), body.clone(), give_up_at, what.clone()));
        }
    }
}

// ----- connects: the hold proxy ---------------------------------------------------

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// Starts the hold proxy: listeners on 127.0.0.1 and ::1 whose ports the kernel's
/// connect4/6 send `ask` connects to. Each accepted connection is matched to the
/// connect the kernel redirected (by its source port), held, and then either
/// spliced to the original destination or reset. Returns the ports.
pub async fn start_connect_proxy(
    core: Arc<Mutex<Core>>,
    holds: Arc<Holds>,
    mut maps: ConnectHolds,
) -> Result<(u16, u16), String> {
    let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("listening on 127.0.0.1: {e}"))?;
    let v6 = tokio::net::TcpListener::bind("[::1]:0").await.ok();
    let p4 = v4.local_addr().map_err(|e| e.to_string())?.port();
    let p6 = v6.as_ref().and_then(|l| l.local_addr().ok()).map_or(0, |a| a.port());
    maps.set_proxy(p4, p6).map_err(|e| e.to_string())?;
    let maps = Arc::new(Mutex::new(maps));
    for l in std::iter::once(v4).chain(v6) {
        let (core, holds, maps) = (core.clone(), holds.clone(), maps.clone());
        tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((client, peer)) => {
                        let (core, holds, maps) = (core.clone(), holds.clone(), maps.clone());
                        tokio::spawn(async move { held_connection(core, holds, maps, client, peer).await });
                    }
                    Err(e) => {
                        warn!(error = %e, "hold proxy accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    Ok((p4, p6))
}

/// Stops sending `ask` connects to the proxy (they are denied from now on): for a
/// stopping agentd, so nothing is redirected to a port that is about to close.
pub fn stop_connect_proxy(maps: &mut ConnectHolds) {
    if let Err(e) = maps.set_proxy(0, 0) {
        warn!(error = %e, "could not clear HOLD_PROXY; ask connects go to a closed port (refused) until agentd starts again");
    }
}

/// The original destination as `addr:port`.
fn destination(addr: [u8; 16], port: u16) -> std::net::SocketAddr {
    let v6 = std::net::Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => std::net::SocketAddr::from((v4, port)),
        None => std::net::SocketAddr::from((v6, port)),
    }
}

/// Closes `s` with a reset (SO_LINGER 0): the agent sees ECONNRESET, not a clean end.
/// (Linger 0 never blocks: the close sends RST and returns.)
fn reset(s: tokio::net::TcpStream) {
    let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 });
    drop(s);
}

async fn held_connection(
    core: Arc<Mutex<Core>>,
    holds: Arc<Holds>,
    maps: Arc<Mutex<ConnectHolds>>,
    client: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) {
    let family = if peer.is_ipv4() { AF_INET } else { AF_INET6 };
    let held = maps.lock().unwrap_or_else(PoisonError::into_inner).take(family, peer.port());
    let Some(h) = held else {
        // Not a connect the kernel redirected (someone dialled the port): refuse.
        warn!(peer = %peer, "connection to the hold proxy that no held connect made; reset");
        reset(client);
        return;
    };
    let dest = destination(h.addr, h.port);
    let now = SystemTime::now();
    let ask = core.lock().unwrap_or_else(PoisonError::into_inner).connect_ask(h.identity, h.policy_version, h.rule_id, now);
    let Some(ask) = ask else {
        info!(dest = %dest, identity_id = h.identity, "held connect of an identity that can no longer act; reset");
        reset(client);
        return;
    };
    let pid = h.tgid;
    let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let argv: Vec<String> =
        read("cmdline").split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let settings = ask.approvals;
    let req = HoldRequest {
        identity: ask.identity,
        identity_id: ask.identity_id,
        owner: ask.owner,
        kind: HoldKind::Connect,
        target: dest.to_string(),
        argv,
        pid,
        uid: String::from_utf8_lossy(&read("status"))
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(u32::MAX),
        comm: String::from_utf8_lossy(&read("comm")).trim_end().to_string(),
        executable: std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
        cgroup_path: process_cgroup(&crate::cgroup::cgroup2_mount().unwrap_or_default(), pid)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        policy: ask.policy,
        policy_version: ask.policy_version,
        rule_id: ask.rule_id,
        rule: ask.rule,
        key_fingerprint: ask.key_fingerprint,
        policy_hash: ask.policy_hash,
    };
    let submitted = holds.service().submit(req.clone(), &settings, now);
    let resolution = match submitted {
        Submitted::Decided(r) => {
            holds.record_decided(&req, &r);
            r
        }
        Submitted::Held { id, wait } => {
            info!(hold = %id, tgid = pid, dest = %dest, "connect held for approval");
            holds.wake.notify_one();
            match wait.await {
                Ok(r) => r,
                Err(_) => {
                    reset(client);
                    return;
                }
            }
        }
    };
    // Approved, but the identity was revoked (or expired) meanwhile: the kernel
    // would refuse its own connect now, so agentd must not make it on its behalf.
    let still = core.lock().unwrap_or_else(PoisonError::into_inner).identity_active(h.identity, SystemTime::now());
    if resolution.verdict != Verdict::Allow || !still {
        reset(client);
        return;
    }
    let upstream = match tokio::time::timeout(Duration::from_secs(30), tokio::net::TcpStream::connect(dest)).await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            info!(dest = %dest, error = %e, "approved connect failed upstream; reset");
            reset(client);
            return;
        }
        Err(_) => {
            info!(dest = %dest, "approved connect timed out upstream; reset");
            reset(client);
            return;
        }
    };
    let (mut client, mut upstream) = (client, upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        debug!(dest = %dest, error = %e, "held connection ended with an error");
    }
}

// ----- receipts -------------------------------------------------------------------

/// Records every hold and its resolution in `journal`: a `hold` receipt when an
/// action is held, an `approval` receipt when a person approves or denies it, and
/// a `hold-outcome` receipt when it resolves (approved, denied, timed out, or
/// cancelled because agentd stopped). Synchronous, so none is lost; an append
/// that fails is logged loudly (the action is answered regardless: the person's
/// decision or the deadline stands).
pub fn record_holds(service: &mut HoldService, journal: Arc<Journal>) {
    service.set_recorder(move |ev| {
        for draft in hold_receipts(ev) {
            if let Err(e) = journal.append(draft) {
                error!(error = %e, "RECEIPT NOT RECORDED for a hold");
            }
        }
    });
}

/// The action kind receipts use for a held action.
fn receipt_kind(k: HoldKind) -> &'static str {
    match k {
        HoldKind::Exec => "exec",
        HoldKind::Write => "write",
        HoldKind::Connect | HoldKind::Udp => "egress",
    }
}

fn receipt_verdict(v: Verdict) -> receipts::Verdict {
    match v {
        Verdict::Allow => receipts::Verdict::Allow,
        Verdict::Deny => receipts::Verdict::Deny,
    }
}

/// Who asked for the held action, and under which rule.
fn hold_draft(d: Draft, r: &HoldRequest) -> Draft {
    let mut who = Requester::identity(r.identity.clone(), r.key_fingerprint.clone(), r.owner.clone()).with_identity_id(r.identity_id).with_process(r.pid, r.uid, r.executable.clone());
    who.cgroup = r.cgroup_path.clone();
    let mut d = d.requester(who).policy(r.policy.clone(), r.policy_version, r.policy_hash.clone()).mechanism(match r.kind {
        HoldKind::Connect => "hold-proxy",
        HoldKind::Exec => "fanotify",
        // Stopped by the kernel first; the approval makes an exception.
        HoldKind::Write | HoldKind::Udp => "request",
    });
    if r.rule_id != 0 {
        d = d.rule(r.rule_id, r.rule.clone());
    }
    if !r.argv.is_empty() {
        d = d.param("argv", r.argv.clone());
    }
    d
}

/// The receipt of an ask answered at once without a hold: a decision, allowed by
/// an earlier `approve --for` (naming who granted it) or denied by the cap or the
/// rate limit.
pub fn decided_receipt(r: &HoldRequest, res: &Resolution) -> Draft {
    let mut d = Draft::decision(receipt_kind(r.kind), r.target.clone(), receipt_verdict(res.verdict))
        .at(res.decided_at)
        .reason(res.how.as_str())
        .param("detail", res.reason.clone());
    if let Some(by) = &res.decided_by {
        d = d.with_approval(Approval::new(by.name.clone(), Some(by.uid), res.decided_at, res.how.to_string()));
    }
    hold_draft(d, r)
}

/// The receipts of one hold event (see [`record_holds`]).
pub fn hold_receipts(ev: &HoldEvent) -> Vec<Draft> {
    match ev {
        HoldEvent::Pending(p) => {
            let r = &p.request;
            let d = Draft::hold(receipt_kind(r.kind), r.target.clone(), p.id.clone())
                .at(p.created_at)
                .reason("ask")
                .param("deadline", p.deadline_rfc3339())
                .param("on_timeout", p.on_timeout.as_str());
            vec![hold_draft(d, r)]
        }
        HoldEvent::Resolved { id, request: r, resolution: res } => {
            let verdict = receipt_verdict(res.verdict);
            let kind = receipt_kind(r.kind);
            let approval = res.decided_by.as_ref().map(|by| {
                let name = if by.name.is_empty() { format!("uid {}", by.uid) } else { by.name.clone() };
                Approval::new(name, Some(by.uid), res.decided_at, res.how.to_string()).with_reason(res.reason.clone())
            });
            let outcome = match (res.how, res.verdict) {
                (How::Timeout, _) => "timed-out",
                (How::Shutdown, _) => "cancelled",
                (_, Verdict::Allow) => "approved",
                (_, Verdict::Deny) => "denied",
            };
            let mut out = Vec::with_capacity(2);
            if let Some(a) = &approval {
                out.push(hold_draft(Draft::approval(kind, r.target.clone(), id.clone(), verdict, a.clone()).at(res.decided_at), r));
            }
            let mut d = Draft::hold_outcome(kind, r.target.clone(), id.clone(), verdict, outcome).at(res.decided_at).reason(res.reason.clone());
            if let Some(a) = approval {
                d = d.with_approval(a);
            }
            out.push(hold_draft(d, r));
            out
        }
    }
}

// ----- the API's view ---------------------------------------------------------------

pub fn hold_pb(p: &Pending) -> pb::Hold {
    pb::Hold {
        id: p.id.clone(),
        // Milliseconds: a deadline is a promise to the millisecond, not the second.
        created_at: humantime::format_rfc3339_millis(p.created_at).to_string(),
        deadline: humantime::format_rfc3339_millis(p.deadline).to_string(),
        on_timeout: p.on_timeout.as_str().to_string(),
        ..hold_pb_of_request(&p.request)
    }
}

pub fn resolution_pb(r: &Resolution) -> pb::Resolution {
    pb::Resolution {
        verdict: r.verdict.as_str().to_string(),
        how: r.how.as_str().to_string(),
        decided_by: r.decided_by.as_ref().map(|d| d.name.clone()).unwrap_or_default(),
        decided_by_uid: r.decided_by.as_ref().map_or(0, |d| d.uid),
        decided_at: humantime::format_rfc3339_millis(r.decided_at).to_string(),
        reason: r.reason.clone(),
        until: match r.how {
            How::For(d) => crate::state::rfc3339(r.decided_at + d),
            _ => String::new(),
        },
    }
}

pub fn grant_pb(g: &Grant) -> pb::Grant {
    pb::Grant {
        identity: g.identity.clone(),
        kind: g.kind.as_str().to_string(),
        target: g.target.clone(),
        until: g.until_rfc3339(),
        granted_by: g.granted_by.name.clone(),
    }
}

pub fn event_pb(e: &HoldEvent) -> pb::HoldEvent {
    match e {
        HoldEvent::Pending(p) => pb::HoldEvent { r#type: "pending".into(), hold: Some(hold_pb(p)), resolution: None },
        HoldEvent::Resolved { id, request, resolution } => {
            // The hold as it was, rebuilt from its request (its times are gone).
            let hold = pb::Hold { id: id.clone(), ..hold_pb_of_request(request) };
            pb::HoldEvent { r#type: "resolved".into(), hold: Some(hold), resolution: Some(resolution_pb(resolution)) }
        }
    }
}

fn hold_pb_of_request(r: &HoldRequest) -> pb::Hold {
    pb::Hold {
        identity: r.identity.clone(),
        identity_id: r.identity_id,
        owner: r.owner.clone(),
        kind: r.kind.as_str().to_string(),
        target: r.target.clone(),
        argv: r.argv.clone(),
        pid: r.pid,
        uid: r.uid,
        comm: r.comm.clone(),
        executable: r.executable.clone(),
        cgroup: r.cgroup_path.clone(),
        policy: r.policy.clone(),
        policy_version: r.policy_version,
        rule_id: r.rule_id,
        rule: r.rule.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        holds::{Decider, Decision},
        policy::Approvals,
        receipts::{Filter, NodeKey, ReceiptType, Stored},
    };

    fn request(target: &str) -> HoldRequest {
        HoldRequest {
            identity: "coder".into(),
            identity_id: 3,
            owner: "bob".into(),
            kind: HoldKind::Exec,
            target: target.into(),
            argv: vec!["make".into(), "all".into()],
            pid: 4242,
            uid: 1000,
            comm: "make".into(),
            executable: "/usr/bin/bash".into(),
            cgroup_path: "/sys/fs/cgroup/agents/coder".into(),
            policy: "coding".into(),
            policy_version: 2,
            rule_id: 5,
            rule: "{path: /usr/bin/make, action: ask}".into(),
            key_fingerprint: "3f2a00112233aabb".into(),
            policy_hash: "9c".repeat(32),
        }
    }

    struct Setup {
        dir: tempfile::TempDir,
        journal: Arc<Journal>,
        service: HoldService,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let journal = super::super::open_receipts(dir.path()).unwrap();
        let mut service = HoldService::new(crate::holds::RateLimit::default());
        record_holds(&mut service, journal.clone());
        Setup { dir, journal, service }
    }

    #[test]
    fn an_ask_answered_without_a_hold_is_a_decision_receipt() {
        let now = SystemTime::now();
        let granted = Resolution {
            verdict: Verdict::Allow,
            how: How::Grant,
            decided_by: Some(Decider { uid: 1000, name: "alice".into() }),
            decided_at: now,
            reason: "approved until later".into(),
        };
        let r = decided_receipt(&request("/usr/bin/make"), &granted).into_receipt(1, String::new(), "h", now);
        assert_eq!((r.kind, r.decision.result, r.decision.reason.as_str()), (ReceiptType::Decision, receipts::Verdict::Allow, "grant"));
        assert_eq!(r.approval.as_ref().unwrap().decided_by, "alice");
        let capped = Resolution { verdict: Verdict::Deny, how: How::Cap, decided_by: None, decided_at: now, reason: "too many".into() };
        let r = decided_receipt(&request("/usr/bin/make"), &capped).into_receipt(2, String::new(), "h", now);
        assert_eq!((r.decision.result, r.decision.reason.as_str(), r.outcome.as_str()), (receipts::Verdict::Deny, "cap", "blocked"));
        assert!(r.approval.is_none());
    }

    impl Setup {
        fn receipts(&self) -> Vec<Stored> {
            self.journal.flush().unwrap();
            self.journal.query(Filter::default()).unwrap().map(|r| r.unwrap()).collect()
        }

        fn verify(&self) {
            let lines: Vec<String> = self.receipts().into_iter().map(|s| s.line).collect();
            let key = NodeKey::load(&super::super::receipts_dir(self.dir.path())).unwrap().public_key();
            let report = receipts::verify_lines(lines.iter().map(String::as_str), &key);
            assert!(report.is_ok(), "{report}");
        }
    }

    fn held_id(s: Submitted) -> String {
        match s {
            Submitted::Held { id, .. } => id,
            Submitted::Decided(r) => panic!("not held: {r:?}"),
        }
    }

    #[test]
    fn an_approved_hold_has_hold_approval_and_outcome_receipts() {
        let mut s = setup();
        let now = SystemTime::now();
        let id = held_id(s.service.submit(request("/usr/bin/make"), &Approvals::default(), now));
        let by = Decider { uid: 1000, name: "alice".into() };
        s.service.decide(&id, Decision::Approve { for_: None }, by, now + Duration::from_secs(3)).unwrap();

        let all = s.receipts();
        let kinds: Vec<ReceiptType> = all.iter().map(|r| r.receipt.kind).collect();
        assert_eq!(kinds, [ReceiptType::Hold, ReceiptType::Approval, ReceiptType::HoldOutcome]);
        for r in &all {
            let r = &r.receipt;
            assert_eq!(r.action.parameters["hold_id"], id.as_str());
            assert_eq!((r.action.kind.as_str(), r.action.target.as_str()), ("exec", "/usr/bin/make"));
            assert_eq!((r.requester.identity.as_str(), r.requester.owner.as_str(), r.requester.pid), ("coder", "bob", Some(4242)));
            assert_eq!((r.decision.policy.as_str(), r.decision.rule_id), ("coding", Some(5)));
            assert_eq!((r.requester.key_fingerprint.as_str(), r.decision.policy_hash.as_str()), ("3f2a00112233aabb", "9c".repeat(32).as_str()));
        }
        let hold = &all[0].receipt;
        assert_eq!((hold.decision.result, hold.outcome.as_str()), (receipts::Verdict::Hold, "pending"));
        for r in &all[1..] {
            let r = &r.receipt;
            let a = r.approval.as_ref().expect("the approver is named");
            assert_eq!((a.decided_by.as_str(), a.decided_by_uid, a.how.as_str()), ("alice", Some(1000), "once"));
            assert_eq!((r.decision.result, r.outcome.as_str()), (receipts::Verdict::Allow, "approved"));
        }
        s.verify();
    }

    #[test]
    fn denied_and_timed_out_holds_say_so() {
        let mut s = setup();
        let now = SystemTime::now();
        let quick = Approvals { timeout: Duration::from_secs(1), ..Approvals::default() };
        let denied = held_id(s.service.submit(request("/usr/bin/curl"), &Approvals::default(), now));
        let timed = held_id(s.service.submit(request("/usr/bin/wget"), &quick, now));
        s.service.decide(&denied, Decision::Deny { reason: "no network".into() }, Decider { uid: 0, name: "root".into() }, now).unwrap();
        assert_eq!(s.service.expire(now + Duration::from_secs(2)).len(), 1);

        let all = s.receipts();
        let outcomes: Vec<(ReceiptType, String, String)> = all
            .iter()
            .map(|r| (r.receipt.kind, r.receipt.action.parameters["hold_id"].as_str().unwrap().to_string(), r.receipt.outcome.clone()))
            .collect();
        assert_eq!(
            outcomes,
            [
                (ReceiptType::Hold, denied.clone(), "pending".into()),
                (ReceiptType::Hold, timed.clone(), "pending".into()),
                (ReceiptType::Approval, denied.clone(), "denied".into()),
                (ReceiptType::HoldOutcome, denied.clone(), "denied".into()),
                (ReceiptType::HoldOutcome, timed.clone(), "timed-out".into()),
            ]
        );
        assert_eq!(all[3].receipt.approval.as_ref().unwrap().reason, "no network");
        let t = &all[4].receipt;
        assert!(t.approval.is_none(), "nobody decided");
        assert_eq!(t.decision.result, receipts::Verdict::Deny);
        s.verify();
    }
}
