//! The gRPC service agentctl talks to: request checks, caller authorisation, and
//! conversion between the API messages and the daemon's records.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Instant, SystemTime},
};

use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{
    core::{Core, OpError},
    holds::{event_pb, grant_pb, hold_pb, resolution_pb, Holds},
    events::{EventStream, Hub},
    host,
    peer::{self, Peer},
    receipts as receipts_api,
};
use crate::{
    api::pb::{self, agentd_server::Agentd},
    cgroup,
    enforce::MechanismReport,
    holds::{Decider, Decision, HoldError, HoldEvent},
    identity::{keys, IdentityRecord, NewIdentity},
    receipts::{Journal, Requester},
    state::{self, BindingRecord, PolicyRecord},
};

/// Facts fixed at start-up.
#[derive(Debug)]
pub struct Info {
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub cgroup_mount: PathBuf,
    /// The socket file's group: its members (and root) may make changes.
    pub socket_gid: u32,
    /// agentd's own cgroup: never bindable.
    pub own_cgroup: Option<PathBuf>,
    pub started: Instant,
    /// The exec hold: how many filesystems fanotify marks, or why it is off.
    pub exec_holds: Result<usize, String>,
    /// The write gate's switch (its marks are on only while a policy asks about
    /// writes), or why there is none.
    pub write_holds: Result<crate::enforce::fanotify::WriteSwitch, String>,
    /// The connect hold proxy's loopback ports (IPv4, IPv6; 0: none), or why it is off.
    pub connect_proxy: Result<(u16, u16), String>,
    /// The receipt sinks, for their counters.
    pub sinks: super::Sinks,
    /// What applied policies' built-in unix rules protect (this agentd's socket).
    pub builtins: crate::policy::Builtins,
}

/// The Agentd service.
#[derive(Clone)]
pub struct Service {
    core: Arc<Mutex<Core>>,
    hub: Hub,
    info: Arc<Info>,
    holds: Arc<Holds>,
    /// The journal the core records into, read here without the core's lock.
    receipts: Arc<Journal>,
}

impl From<OpError> for Status {
    fn from(e: OpError) -> Status {
        match e {
            OpError::Invalid(m) => Status::invalid_argument(m),
            OpError::NotFound(m) => Status::not_found(m),
            OpError::Exists(m) => Status::already_exists(m),
            OpError::Kernel(m) => Status::failed_precondition(m),
            OpError::State(m) => Status::internal(m),
            OpError::Receipt(m) => Status::internal(m),
        }
    }
}

impl Service {
    pub fn new(core: Arc<Mutex<Core>>, hub: Hub, info: Info, holds: Arc<Holds>, receipts: Arc<Journal>) -> Service {
        Service { core, hub, info: Arc::new(info), holds, receipts }
    }

    /// A person's decision on a hold, from an authorized caller (root or the
    /// socket's group, and never from inside a bound cgroup: an agent cannot
    /// approve its own actions).
    async fn decide<T>(&self, req: &Request<T>, id: &str, decision: Decision) -> Result<pb::DecideReply, Status> {
        let (peer, _) = self.authorize_change(req).await?;
        let by = Decider { uid: peer.uid, name: user_name(peer.uid) };
        let mut service = self.holds.service();
        let hold = service.get(id.trim()).map(hold_pb);
        let resolution = service.decide(id, decision, by, SystemTime::now()).map_err(|e| match e {
            HoldError::NotFound(_) => Status::not_found(format!("agentd: {e}")),
            HoldError::Invalid(_) => Status::invalid_argument(format!("agentd: {e}")),
        })?;
        drop(service);
        let res = resolution_pb(&resolution);
        let hold = hold.unwrap_or_default();
        info!(hold = %hold.id, identity = %hold.identity, target = %hold.target, verdict = %res.verdict, how = %res.how, by = %res.decided_by, "hold decided");
        Ok(pb::DecideReply { hold: Some(hold), resolution: Some(res) })
    }

    /// Runs `f` on the core off the async workers: changes fsync files and write
    /// kernel maps, which must not stall the event pipeline.
    async fn with_core<R, F>(&self, f: F) -> Result<R, Status>
    where
        R: Send + 'static,
        F: FnOnce(&mut Core) -> R + Send + 'static,
    {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || f(&mut core.lock().unwrap_or_else(PoisonError::into_inner)))
            .await
            .map_err(|e| Status::internal(format!("agentd: internal error: {e}")))
    }

    /// Runs `f` on the receipt journal off the async workers, and without the
    /// core's lock: reading segment files and waiting for an fsync must stall
    /// neither the event pipeline nor other requests.
    async fn with_journal<R, F>(&self, f: F) -> Result<R, Status>
    where
        R: Send + 'static,
        F: FnOnce(&Journal) -> Result<R, Status> + Send + 'static,
    {
        let journal = self.receipts.clone();
        tokio::task::spawn_blocking(move || f(&journal))
            .await
            .map_err(|e| Status::internal(format!("agentd: internal error: {e}")))?
    }

    /// Refuses a change unless the caller is root or in the socket's group, and is
    /// not inside a bound cgroup: an agent must never reconfigure its own enforcement.
    /// Returns the caller and its cgroup.
    async fn authorize_change<T>(&self, req: &Request<T>) -> Result<(Peer, PathBuf), Status> {
        let peer = req
            .extensions()
            .get::<Peer>()
            .cloned()
            .ok_or_else(|| Status::permission_denied("agentd: cannot tell who is calling (no peer credentials); refusing the change"))?;
        if !peer::may_change(peer.uid, peer.gid, &peer.groups(), self.info.socket_gid) {
            return Err(Status::permission_denied(format!(
                "agentd: uid {} may read but not change enforcement: changes need root or membership of group {} (the socket's group)",
                peer.uid,
                group_name(self.info.socket_gid)
            )));
        }
        let cg = peer
            .cgroup(&self.info.cgroup_mount)
            .map_err(|e| Status::permission_denied(format!("agentd: {e}; refusing the change")))?;
        let bound = self.with_core(|c| c.bound_cgroups()).await?;
        if let Some(c) = peer::confinement(bound.iter().map(|(p, i)| (p.as_str(), i.as_str())), &cg) {
            info!(pid = ?peer.pid, uid = peer.uid, cgroup = %c.cgroup, identity = %c.identity, "refused a change from inside a bound cgroup");
            return Err(Status::permission_denied(c.refusal()));
        }
        // A bound process that left its cgroup keeps its identity in the kernel.
        if let Some(pid) = peer.pid {
            if let Some(identity) = self.with_core(move |c| c.task_identity(pid as u32)).await? {
                info!(pid, uid = peer.uid, identity = %identity, "refused a change from a process that acts for an identity");
                return Err(Status::permission_denied(format!(
                    "agentd: refusing request from process {pid}, which acts for identity {identity}: agents cannot change their own enforcement"
                )));
            }
        }
        Ok((peer, cg))
    }

    /// Checks a Bind request's path: an existing cgroup2 directory, not the root,
    /// not agentd's own, within the depth the kernel follows. Returns the canonical
    /// path and the cgroup id.
    fn check_bindable(&self, arg: &str, caller_cgroup: &Path) -> Result<(PathBuf, u64), Status> {
        let mount = &self.info.cgroup_mount;
        if !Path::new(arg).is_absolute() {
            return Err(Status::invalid_argument(format!("agentd: cgroup path {arg:?} is not absolute (agentctl resolves names and relative paths)")));
        }
        let path = cgroup::resolve_in(mount, arg).map_err(|e| Status::invalid_argument(format!("agentd: {e}")))?;
        let depth = cgroup::depth_below(mount, &path).unwrap_or(0);
        if depth == 0 {
            return Err(Status::invalid_argument(format!(
                "agentd: refusing to bind the root cgroup {}: that would bind every process, agentd included; bind the agent's own cgroup",
                mount.display()
            )));
        }
        if depth as u32 >= agent_common::MAX_CGROUP_DEPTH {
            return Err(Status::invalid_argument(format!(
                "agentd: {} is {depth} levels below {}; the kernel follows bindings only {} levels, so bind a cgroup nearer the root",
                path.display(),
                mount.display(),
                agent_common::MAX_CGROUP_DEPTH - 1
            )));
        }
        if let Some(own) = &self.info.own_cgroup {
            if cgroup::is_within(own, &path) {
                return Err(Status::invalid_argument(format!(
                    "agentd: {} contains agentd itself ({}); bind a cgroup that holds only the agent",
                    path.display(),
                    own.display()
                )));
            }
        }
        // Binding the caller's own cgroup (or an ancestor) would also lock the
        // caller out of every later change, the unbind included.
        if cgroup::is_within(caller_cgroup, &path) {
            return Err(Status::invalid_argument(format!(
                "agentd: {} contains the calling process itself ({}): agentctl would then be refused every change, this binding's removal included; bind a cgroup that holds only the agent (or use `agentctl run`)",
                path.display(),
                caller_cgroup.display()
            )));
        }
        let id = cgroup::cgroup_id(&path).map_err(|e| Status::invalid_argument(format!("agentd: {}: {e}", path.display())))?;
        Ok((path, id))
    }
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).ok().flatten().map_or_else(|| gid.to_string(), |g| g.name)
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map_or_else(|| format!("uid:{uid}"), |u| u.name)
}

fn policy_summary(core: &Core, name: &str, rec: &PolicyRecord) -> pb::PolicySummary {
    let loaded = core.loaded(name);
    pb::PolicySummary {
        name: name.to_string(),
        description: loaded.map(|l| l.description.clone()).unwrap_or_default(),
        version: rec.meta.version,
        hash: rec.meta.hash.clone(),
        mode: match loaded.map(|l| l.compiled.monitor) {
            Some(true) => "monitor",
            Some(false) => "enforce",
            // Stored but no longer compiles: nothing of it is enforced.
            None => "invalid",
        }
        .to_string(),
        applied_at: rec.meta.applied_at.clone(),
        // The file's rules; the built-in unix rules are listed by `policy show`.
        rules: loaded.map_or(0, |l| l.compiled.rules.iter().filter(|r| !r.builtin).count() as u32),
    }
}

fn identity_pb(core: &Core, rec: &IdentityRecord, now: SystemTime) -> pb::Identity {
    pb::Identity {
        name: rec.name.clone(),
        id: rec.id,
        policy: rec.policy.clone(),
        owner: rec.owner.clone(),
        public_key: rec.public_key.clone(),
        fingerprint: rec.fingerprint(),
        created_at: rec.created_at.clone(),
        state: rec.state(now, core.loaded(&rec.policy).is_some()).as_str().to_string(),
        bound_cgroups: core.state().bound_cgroups(&rec.name),
        labels: rec.labels.clone(),
        expires_at: rec.expires.clone().unwrap_or_default(),
        revoked_at: rec.revoked_at.clone().unwrap_or_default(),
        revoked_by: rec.revoked_by.clone().unwrap_or_default(),
        revoke_reason: rec.revoke_reason.clone().unwrap_or_default(),
        has_private_key: !rec.external_key && core.store().key_path(&rec.name).exists(),
    }
}

/// What keeps a bound agent inside its policy on this kernel, per protection,
/// for `agentctl doctor` (the README's "Threat model" says the same per tier).
fn protections(report: &MechanismReport) -> Vec<pb::Check> {
    let lsm = report.kinds.iter().any(|k| k.kind == "system" && k.effect == "deny");
    let stop = if lsm { "refused with EPERM (BPF LSM)" } else { "refused by killing the caller (SIGKILL, before its next instruction: the one call may already have taken effect)" };
    let check = |name: &str, detail: String| pb::Check { name: format!("protection: {name}"), ok: true, detail };
    vec![
        check(
            "sticky identity",
            format!("a bound process and every process it starts keep their identity wherever their cgroup goes (raw tracepoints sched_process_fork/exit, cgroup_attach_task); a cgroup.procs or cgroup.threads write out of the binding, or clone3(CLONE_INTO_CGROUP), is {stop}"),
        ),
        check(
            "honest paths",
            if lsm {
                "every exec, write and executable mapping is judged on the file's path in the host's mount view, whatever namespace, bind mount, chroot, /proc/PID/root or reopened descriptor named it; deleted, detached and unmounted files are unresolved (denied)".to_string()
            } else {
                "opens, execs and mappings are judged on the file in the host's mount view; path syscalls (unlink, rename, chmod, link, ...) on their string, and only from the host's mount namespace: a symlink inside the string is followed by the kernel, not by the judge".to_string()
            },
        ),
        check("enforcement out of reach", format!("bpf(), anything on bpffs, agentd's state (not even read: its keys sign receipts), configuration and socket, kernel modules, kexec, raw memory and I/O ports, kprobes/uprobes and tracepoints through perf, and signals or ptrace to agentd are {stop}; no policy key allows them")),
        check("namespaces and mounts", format!("creating or entering a namespace, mount, umount, pivot_root and chroot are {stop}, unless the policy says spec.system.namespaces: allow (then only inside a mount namespace that is not the host's; paths stay judged in the host's view)")),
        check("other processes", format!("ptrace, process_vm_writev, pidfd_getfd and /proc/PID/mem against a process of another identity, an unbound one or agentd are {stop} (spec.system.ptrace: allow permits them within the same identity)")),
        check("executable mappings", format!("ld.so /path/to/file and dlopen: mapping a file's code to run is judged by the exec rules ({}); libraries no rule names, in the system's library directories, load freely", if lsm { "mmap_file, file_mprotect" } else { "mmap with PROT_EXEC; mprotect of an existing file mapping is not seen on this tier" })),
        check("metadata, links, guarded directories", format!("chmod, chown, utimes and xattrs are writes; a hard link of a file the identity may not write is {stop}; renaming, removing or replacing a directory above what a deny or ask write rule protects is refused as a write to it")),
        check("sockets", "only TCP and UDP over IP, unix and netlink sockets may be created, and ICMP ping sockets when a rule allows ICMP (and BPF LSM judges each destination); UDP-Lite, SCTP, vsock and the rest are refused with EPERM; unix connects are judged by egress.unix on the socket reached".to_string()),
        check("drift", "every second agentd compares the kernel with its state (link pins, bindings, identities, rule sets, its own guard) and puts back what differs, with a tamper receipt".to_string()),
    ]
}

fn binding_pb(b: &BindingRecord) -> pb::Binding {
    pb::Binding {
        cgroup_path: b.cgroup_path.clone(),
        cgroup_id: b.cgroup_id,
        identity: b.identity.clone(),
        bound_at: b.bound_at.clone(),
        present: cgroup::cgroup_id(Path::new(&b.cgroup_path)).is_ok_and(|id| id == b.cgroup_id),
    }
}

/// The journal's position and every sink's counters, for `agentctl status`.
fn receipts_status(journal: &crate::receipts::Journal, sinks: &super::Sinks) -> pb::ReceiptsStatus {
    let stats = sinks.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|d| d.stats()).unwrap_or_default();
    let health = journal.health();
    pb::ReceiptsStatus {
        degraded: health.degraded.unwrap_or_default(),
        backlog: health.backlog,
        unrecorded: health.unrecorded,
        dir: journal.dir().display().to_string(),
        last_seq: journal.last_seq(),
        durable_seq: journal.durable_seq(),
        key_id: journal.key_id(),
        sinks: stats
            .into_iter()
            .map(|s| pb::SinkStatus {
                name: s.name,
                min_severity: s.min_severity.as_str().to_string(),
                delivered: s.stats.delivered,
                dropped: s.stats.dropped,
                failed_attempts: s.stats.failed_attempts,
                queued: s.stats.queued,
                last_error: s.stats.last_error.unwrap_or_default(),
            })
            .collect(),
    }
}

fn mechanisms_pb(report: &MechanismReport) -> Vec<pb::KindMechanism> {
    report
        .kinds
        .iter()
        .map(|k| pb::KindMechanism {
            kind: k.kind.clone(),
            active: k.active.clone(),
            effect: k.effect.clone(),
            unavailable: k.unavailable.iter().map(|(m, r)| pb::Unavailable { mechanism: m.clone(), reason: r.clone() }).collect(),
        })
        .collect()
}

fn not_found_policy(name: &str) -> Status {
    Status::not_found(format!("agentd: no policy named {name:?} (`agentctl policy list` shows them; add one with `agentctl policy apply FILE`)"))
}

fn not_found_identity(name: &str) -> Status {
    Status::not_found(format!(
        "agentd: no identity named {name:?} (`agentctl identity list` shows them; create one with `agentctl identity create {name} --policy POLICY`)"
    ))
}

#[tonic::async_trait]
impl Agentd for Service {
    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let info = self.info.clone();
        let reply = self
            .with_core(move |c| {
                let counters = c.counters().map_err(|e| Status::internal(format!("agentd: reading kernel counters: {e}")))?;
                let report = c.report();
                Ok::<_, Status>(pb::StatusReply {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    uptime_seconds: info.started.elapsed().as_secs(),
                    pin_dir: info.pin_dir.display().to_string(),
                    state_dir: info.state_dir.display().to_string(),
                    adopted: report.adopted,
                    identities: c.state().identities.len() as u32,
                    policies: c.state().policies.len() as u32,
                    bindings: c.state().bindings.len() as u32,
                    counters: Some(pb::Counters {
                        events: counters.events,
                        events_dropped: counters.events_dropped,
                        deny_exec: counters.deny_exec,
                        deny_write: counters.deny_write,
                        deny_egress: counters.deny_egress,
                        deny_socket: counters.deny_socket,
                        kills: counters.kills,
                        unresolved: counters.unresolved,
                        aggregated: counters.aggregated,
                        lost: counters.lost,
                        lost_uncounted: counters.lost_uncounted,
                    }),
                    mechanisms: mechanisms_pb(&report),
                    receipts: Some(receipts_status(c.receipts(), &info.sinks)),
                })
            })
            .await??;
        Ok(Response::new(reply))
    }

    async fn doctor(&self, _req: Request<pb::DoctorRequest>) -> Result<Response<pb::DoctorReply>, Status> {
        let (report, health) = self.with_core(|c| (c.report(), c.receipts().health())).await?;
        let pin_dir = self.info.pin_dir.clone();
        let mut checks = tokio::task::spawn_blocking(move || host::checks(&pin_dir)).await.map_err(|e| Status::internal(e.to_string()))?;
        let exec_check = report.kinds.iter().find(|k| k.kind == "exec").map(|k| k.active.clone()).unwrap_or_default();
        checks.push(match &self.info.exec_holds {
            Ok(n) => pb::Check {
                name: "exec holds (ask)".into(),
                ok: true,
                detail: format!(
                    "fanotify FAN_OPEN_EXEC_PERM on {n} filesystems holds the exec; only an approval agentd wrote lets it past {exec_check} (fails closed if agentd dies)"
                ),
            },
            Err(e) => pb::Check {
                name: "exec holds (ask)".into(),
                ok: false,
                detail: format!("unavailable ({e}): an exec the policy asks about is denied without a hold"),
            },
        });
        checks.push(match &self.info.connect_proxy {
            Ok((p4, p6)) => pb::Check {
                name: "connect holds (ask)".into(),
                ok: true,
                detail: format!(
                    "cgroup connect4/6 send an ask TCP connect to agentd's hold proxy (127.0.0.1:{p4}{}), spliced to its destination on approval, reset otherwise; an ask UDP send is stopped (EPERM) and becomes a request whose approval lets that address and port through",
                    if *p6 == 0 { String::new() } else { format!(", [::1]:{p6}") }
                ),
            },
            Err(e) => pb::Check {
                name: "connect holds (ask)".into(),
                ok: false,
                detail: format!("unavailable ({e}): a connect the policy asks about is denied"),
            },
        });
        let write_check = report.kinds.iter().find(|k| k.kind == "write").map(|k| (k.active.clone(), k.effect.clone())).unwrap_or_default();
        let after_hold = if write_check.1 == "kill" {
            "the exit check kills the opener unless agentd approved it (so a hold fails closed if agentd dies)"
        } else {
            "BPF LSM refuses every write, shared mapping and truncate through the file until agentd approves it (so a hold fails closed if agentd dies)"
        };
        let others = "creating, truncating by path, renaming, linking or removing an ask file is stopped (EPERM, or a kill) and becomes a request in `agentctl approvals list`, whose approval lets that identity write exactly that file for 2 minutes (`approve --for D`: for D)";
        checks.push(match &self.info.write_holds {
            Ok(switch) => {
                let marked = switch.marked();
                pb::Check {
                    name: "write holds (ask)".into(),
                    ok: true,
                    detail: format!(
                        "an open for writing of an existing ask file waits in fanotify FAN_OPEN_PERM ({}); {after_hold}; {others}",
                        if marked.is_empty() {
                            "marks are placed when a policy asks about writes; none does now".to_string()
                        } else {
                            format!("marked on {} filesystems while a policy asks about writes", marked.len())
                        }
                    ),
                }
            }
            Err(e) => pb::Check {
                name: "write holds (ask)".into(),
                ok: false,
                detail: format!("unavailable ({e}): no write is held; {others}"),
            },
        });
        checks.push(match health.degraded {
            None => pb::Check { name: "receipts".into(), ok: true, detail: "being written".into() },
            Some(why) => pb::Check {
                name: "receipts".into(),
                ok: false,
                detail: format!(
                    "DEGRADED: cannot be written ({why}); enforcement goes on, {} receipts wait in memory, {} refused for a full backlog (recorded as gap receipts once writing works); agentd tries again every second",
                    health.backlog, health.unrecorded
                ),
            },
        });
        checks.extend(protections(&report));
        Ok(Response::new(pb::DoctorReply { kernel_release: host::kernel_release(), mechanisms: mechanisms_pb(&report), checks }))
    }

    async fn policy_apply(&self, req: Request<pb::PolicyApplyRequest>) -> Result<Response<pb::PolicyApplyReply>, Status> {
        let (peer, _) = self.authorize_change(&req).await?;
        let by = requester(&peer);
        let r = req.into_inner();
        let file_name = if r.file_name.is_empty() { "policy.yaml".to_string() } else { r.file_name };
        // Compile before taking the lock: a bad policy changes nothing and waits for nothing.
        let yaml = r.yaml;
        let (policy, compiled) = tokio::task::spawn_blocking({
            let (file_name, yaml) = (file_name.clone(), yaml.clone());
            let builtins = self.info.builtins.clone();
            move || state::compile_policy(&file_name, &yaml, &builtins)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::invalid_argument)?;
        let mut warnings: Vec<String> = policy.warnings().to_vec();
        for w in &compiled.warnings {
            if !warnings.contains(w) {
                warnings.push(w.clone());
            }
        }
        let (applied, summary) = self
            .with_core(move |c| {
                let applied = c.apply(&yaml, &file_name, policy, compiled, &by, SystemTime::now())?;
                let rec = c.state().policies.get(&applied.name).cloned().expect("just applied");
                let summary = policy_summary(c, &applied.name, &rec);
                Ok::<_, OpError>((applied, summary))
            })
            .await??;
        info!(policy = %applied.name, version = applied.version, identities = ?applied.identities, "policy applied");
        Ok(Response::new(pb::PolicyApplyReply { policy: Some(summary), warnings }))
    }

    async fn policy_list(&self, _req: Request<pb::PolicyListRequest>) -> Result<Response<pb::PolicyListReply>, Status> {
        let policies = self.with_core(|c| c.state().policies.iter().map(|(n, r)| policy_summary(c, n, r)).collect()).await?;
        Ok(Response::new(pb::PolicyListReply { policies }))
    }

    async fn policy_show(&self, req: Request<pb::PolicyShowRequest>) -> Result<Response<pb::PolicyShowReply>, Status> {
        let name = req.into_inner().name;
        let reply = self
            .with_core(move |c| {
                let rec = c.state().policies.get(&name).ok_or_else(|| not_found_policy(&name))?;
                let hits = c.policy_hits(&name).map_err(|e| Status::unavailable(format!("agentd: reading rule hit counts: {e}")))?;
                let hit = |kind: u8, id: u32| {
                    let h = hits.get(&(kind, id)).copied().unwrap_or_default();
                    Some(pb::Hits { allow: h.allow, deny: h.deny, would_deny: h.would_deny, audit: h.audit })
                };
                let kind_code = |k: &str| match k {
                    "exec" => agent_common::kind::EXEC,
                    "write" => agent_common::kind::WRITE,
                    "unix" => agent_common::kind::UNIX,
                    _ => agent_common::kind::EGRESS,
                };
                let rules = c
                    .loaded(&name)
                    .map(|l| {
                        l.compiled
                            .rules
                            .iter()
                            .map(|r| pb::Rule {
                                id: r.id,
                                kind: r.kind.to_string(),
                                text: r.text.clone(),
                                line: r.line as u32,
                                action: r.action.to_string(),
                                hits: hit(kind_code(r.kind), r.id),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Ok::<_, Status>(pb::PolicyShowReply {
                    policy: Some(policy_summary(c, &name, rec)),
                    yaml: rec.yaml.clone(),
                    rules,
                    exec_default_hits: hit(agent_common::kind::EXEC, 0),
                    write_default_hits: hit(agent_common::kind::WRITE, 0),
                    egress_default_hits: hit(agent_common::kind::EGRESS, 0),
                    unix_default_hits: hit(agent_common::kind::UNIX, 0),
                    system_allows: c
                        .loaded(&name)
                        .map(|l| {
                            crate::policy::System::KEYS
                                .into_iter()
                                .filter(|k| l.policy.system.allows(k))
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .await??;
        Ok(Response::new(reply))
    }

    async fn identity_create(&self, req: Request<pb::IdentityCreateRequest>) -> Result<Response<pb::IdentityCreateReply>, Status> {
        let (peer, _) = self.authorize_change(&req).await?;
        let r = req.into_inner();
        let owner = if r.owner.trim().is_empty() { user_name(peer.uid) } else { r.owner.trim().to_string() };
        let public_key = match r.public_key.trim() {
            "" => None,
            text => Some(
                keys::parse_public_text(text)
                    .map_err(|e| Status::invalid_argument(format!("agentd: --public-key: {e}")))?,
            ),
        };
        let expires = match r.expires_at.trim() {
            "" => None,
            t => Some(humantime::parse_rfc3339_weak(t).map_err(|e| {
                Status::invalid_argument(format!("agentd: expires_at {t:?} is not an RFC 3339 time: {e}"))
            })?),
        };
        let spec = NewIdentity { name: r.name, policy: r.policy, owner, public_key, expires, labels: r.labels };
        let by = requester(&peer);
        let identity = self
            .with_core(move |c| {
                let now = SystemTime::now();
                let rec = c.create_identity(spec, &by, now)?;
                Ok::<_, OpError>(identity_pb(c, &rec, now))
            })
            .await??;
        info!(identity = %identity.name, id = identity.id, policy = %identity.policy, owner = %identity.owner, fingerprint = %identity.fingerprint, expires = %identity.expires_at, own_key = !identity.has_private_key, "identity created");
        Ok(Response::new(pb::IdentityCreateReply { identity: Some(identity) }))
    }

    async fn identity_revoke(&self, req: Request<pb::IdentityRevokeRequest>) -> Result<Response<pb::IdentityRevokeReply>, Status> {
        let (peer, _) = self.authorize_change(&req).await?;
        let r = req.into_inner();
        let by = user_name(peer.uid);
        let who = requester(&peer);
        let identity = self
            .with_core(move |c| {
                let now = SystemTime::now();
                let rec = c.revoke_identity(&r.name, &by, &who, r.reason.trim(), now)?;
                Ok::<_, OpError>(identity_pb(c, &rec, now))
            })
            .await??;
        warn!(identity = %identity.name, id = identity.id, by = %identity.revoked_by, reason = %identity.revoke_reason, bound = identity.bound_cgroups.len(), "identity revoked: its cgroups are denied everything");
        Ok(Response::new(pb::IdentityRevokeReply { identity: Some(identity) }))
    }

    async fn identity_list(&self, _req: Request<pb::IdentityListRequest>) -> Result<Response<pb::IdentityListReply>, Status> {
        let identities = self
            .with_core(|c| {
                let now = SystemTime::now();
                c.state().identities.values().map(|r| identity_pb(c, r, now)).collect()
            })
            .await?;
        Ok(Response::new(pb::IdentityListReply { identities }))
    }

    async fn identity_show(&self, req: Request<pb::IdentityShowRequest>) -> Result<Response<pb::IdentityShowReply>, Status> {
        let name = req.into_inner().name;
        let identity = self
            .with_core(move |c| {
                let rec = c.state().identities.get(&name).ok_or_else(|| not_found_identity(&name))?;
                Ok::<_, Status>(identity_pb(c, rec, SystemTime::now()))
            })
            .await??;
        Ok(Response::new(pb::IdentityShowReply { identity: Some(identity) }))
    }

    async fn bind(&self, req: Request<pb::BindRequest>) -> Result<Response<pb::BindReply>, Status> {
        let (peer, caller_cgroup) = self.authorize_change(&req).await?;
        let by = requester(&peer);
        let r = req.into_inner();
        let (path, cgroup_id) = self.check_bindable(&r.cgroup_path, &caller_cgroup)?;
        let path = path.display().to_string();
        let identity = r.identity;
        let bound = self.with_core(move |c| c.bind(&path, cgroup_id, &identity, &by, SystemTime::now())).await??;
        let b = &bound.binding;
        match &bound.replaced {
            Some(old) => info!(cgroup = %b.cgroup_path, cgroup_id = b.cgroup_id, identity = %b.identity, replaced = %old, "rebound"),
            None => info!(cgroup = %b.cgroup_path, cgroup_id = b.cgroup_id, identity = %b.identity, "bound"),
        }
        Ok(Response::new(pb::BindReply { binding: Some(binding_pb(b)) }))
    }

    async fn unbind(&self, req: Request<pb::UnbindRequest>) -> Result<Response<pb::UnbindReply>, Status> {
        let (peer, _) = self.authorize_change(&req).await?;
        let by = requester(&peer);
        let arg = req.into_inner().cgroup_path;
        let mount = self.info.cgroup_mount.clone();
        let b = self
            .with_core(move |c| {
                // As stored; else the same cgroup under another spelling; else by its id.
                let key = if c.binding(&arg).is_some() {
                    Some(arg.clone())
                } else {
                    let canonical = cgroup::resolve_in(&mount, &arg).ok();
                    canonical
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .filter(|p| c.binding(p).is_some())
                        .or_else(|| {
                            let id = cgroup::cgroup_id(canonical.as_deref()?).ok()?;
                            c.binding_by_id(id).map(|b| b.cgroup_path.clone())
                        })
                };
                c.unbind(key.as_deref().unwrap_or(&arg), &by, SystemTime::now())
            })
            .await??;
        info!(cgroup = %b.cgroup_path, identity = %b.identity, "unbound");
        Ok(Response::new(pb::UnbindReply { binding: Some(binding_pb(&b)) }))
    }

    async fn bindings(&self, _req: Request<pb::BindingsRequest>) -> Result<Response<pb::BindingsReply>, Status> {
        let bindings = self.with_core(|c| c.state().bindings.values().map(binding_pb).collect()).await?;
        Ok(Response::new(pb::BindingsReply { bindings }))
    }

    async fn approvals(&self, _req: Request<pb::ApprovalsRequest>) -> Result<Response<pb::ApprovalsReply>, Status> {
        let service = self.holds.service();
        let pending = service.pending().iter().map(hold_pb).collect();
        let grants = service.grants(SystemTime::now()).iter().map(grant_pb).collect();
        Ok(Response::new(pb::ApprovalsReply { pending, grants }))
    }

    type ApprovalsWatchStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::HoldEvent, Status>> + Send>>;

    async fn approvals_watch(&self, _req: Request<pb::ApprovalsWatchRequest>) -> Result<Response<Self::ApprovalsWatchStream>, Status> {
        // What is already waiting first, then everything new.
        let (now, rx) = {
            let mut service = self.holds.service();
            let rx = service.subscribe();
            (service.pending(), rx)
        };
        let first: Vec<Result<pb::HoldEvent, Status>> =
            now.iter().map(|p| Ok(event_pb(&HoldEvent::Pending(p.clone())))).collect();
        let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|e| match e {
            Ok(e) => Some(Ok(event_pb(&e))),
            // A slow reader missed some: say so rather than pretend.
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Some(Err(Status::data_loss(format!("agentd: this watcher fell {n} hold events behind; run `agentctl approvals list`"))))
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(first).chain(live))))
    }

    async fn approve(&self, req: Request<pb::ApproveRequest>) -> Result<Response<pb::DecideReply>, Status> {
        let r = req.get_ref();
        let for_ = (r.for_seconds > 0).then(|| std::time::Duration::from_secs(r.for_seconds));
        let id = r.id.clone();
        Ok(Response::new(self.decide(&req, &id, Decision::Approve { for_ }).await?))
    }

    async fn deny(&self, req: Request<pb::DenyRequest>) -> Result<Response<pb::DecideReply>, Status> {
        let r = req.get_ref();
        let (id, reason) = (r.id.clone(), r.reason.trim().to_string());
        Ok(Response::new(self.decide(&req, &id, Decision::Deny { reason }).await?))
    }

    type EventsStream = EventStream;

    async fn events(&self, req: Request<pb::EventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.hub.subscribe(r.follow, r.last as usize)))
    }

    async fn receipts_list(&self, req: Request<pb::ReceiptsListRequest>) -> Result<Response<pb::ReceiptsListReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.with_journal(move |j| receipts_api::list(j, &r, SystemTime::now())).await?))
    }

    async fn receipts_show(&self, req: Request<pb::ReceiptsShowRequest>) -> Result<Response<pb::ReceiptsShowReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.with_journal(move |j| receipts_api::show(j, &r)).await?))
    }

    type ReceiptsExportStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ReceiptsExportChunk, Status>> + Send>>;

    async fn receipts_export(&self, req: Request<pb::ReceiptsExportRequest>) -> Result<Response<Self::ReceiptsExportStream>, Status> {
        // A bad time is the request's error, before any line is sent.
        let span = receipts_api::export_span(req.get_ref(), SystemTime::now())?;
        let journal = self.receipts.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let sent = receipts_api::export(&journal, span, |chunk| tx.blocking_send(Ok(chunk)).is_ok());
            if let Err(status) = sent {
                let _ = tx.blocking_send(Err(status));
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn receipts_key_show(&self, _req: Request<pb::ReceiptsKeyShowRequest>) -> Result<Response<pb::ReceiptsKeyShowReply>, Status> {
        Ok(Response::new(self.with_journal(receipts_api::key_show).await?))
    }

    async fn receipts_key_rotate(&self, req: Request<pb::ReceiptsKeyRotateRequest>) -> Result<Response<pb::ReceiptsKeyRotateReply>, Status> {
        // A new signing key changes what vouches for every later receipt: only
        // those who may change enforcement may ask, and the receipt names them.
        let (peer, _) = self.authorize_change(&req).await?;
        let by = requester(&peer);
        let reply = self.with_journal(move |j| receipts_api::rotate(j, by)).await?;
        let new = reply.key.clone().unwrap_or_default();
        warn!(old = %reply.old_key_id, new = %new.key_id, seq = reply.seq, uid = peer.uid, "receipt signing key rotated");
        Ok(Response::new(reply))
    }
}

/// The person behind an API call, for receipts: user name, uid, pid and the
/// executable (from the socket's peer credentials; the executable is read from
/// /proc and is empty when the process is gone).
pub fn requester(peer: &Peer) -> Requester {
    let pid = peer.pid.and_then(|p| u32::try_from(p).ok());
    let exe = pid
        .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut r = Requester::person(user_name(peer.uid), peer.uid, pid.unwrap_or(0), exe);
    if pid.is_none() {
        r.pid = None;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::KindReport;

    fn report(system_effect: &str) -> MechanismReport {
        MechanismReport {
            kinds: vec![KindReport { kind: "system".into(), effect: system_effect.into(), ..Default::default() }],
            adopted: false,
        }
    }

    /// doctor's protection lines say how this tier stops each class: EPERM under
    /// BPF LSM, a kill (with what that leaves) on the fallback tier; each reads as
    /// a sentence whichever it is.
    #[test]
    fn protections_name_each_class_and_the_tiers_effect() {
        for (effect, says, never) in [("deny", "refused with EPERM", "SIGKILL"), ("kill", "refused by killing the caller (SIGKILL", "refused with EPERM (BPF LSM)")] {
            let checks = protections(&report(effect));
            let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
            for class in ["sticky identity", "honest paths", "enforcement out of reach", "namespaces and mounts", "other processes", "executable mappings", "metadata, links, guarded directories", "sockets", "drift"] {
                assert!(names.contains(&format!("protection: {class}").as_str()), "{effect}: no {class} in {names:?}");
            }
            let all: String = checks.iter().map(|c| c.detail.as_str()).collect::<Vec<_>>().join("\n");
            assert!(all.contains(says), "{effect}: {all}");
            assert!(!all.contains(never), "{effect}: {all}");
            assert!(!all.contains("is the caller") && !all.contains("are the caller"), "{effect}: {all}");
        }
    }
}
