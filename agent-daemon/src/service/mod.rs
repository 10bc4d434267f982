//! The agentd daemon: loads or adopts the kernel enforcement, rebuilds the
//! kernel's maps from the state directory, serves agentctl on a unix socket and
//! turns kernel events into the event stream.

pub mod cgroups;
pub mod events;
pub mod state;

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio_stream::{wrappers::UnixListenerStream, Stream};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::{
    api::pb::{self, agentd_server::Agentd},
    enforce::{Enforcer, EnforcerConfig},
    policy::{compiled::CompiledPolicy, v1},
};
use state::{BindingRecord, IdentityRecord, PolicyRecord, State, Store};

/// Where the daemon keeps things.
#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
}

struct Inner {
    enforcer: Enforcer,
    store: Store,
    state: State,
    /// Compiled form of every stored policy, by name.
    compiled: HashMap<String, CompiledPolicy>,
}

/// The gRPC service.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Mutex<Inner>>,
    events: events::Hub,
    config: Config,
    cgroup_mount: PathBuf,
    started: Instant,
}

type Result<T> = std::result::Result<T, Status>;

fn compile(file: &str, yaml: &str) -> std::result::Result<CompiledPolicy, String> {
    let p = v1::parse(file, yaml).map_err(|e| e.to_string())?;
    v1::compile(&p).map_err(|e| e.to_string())
}

/// Mounts a pseudo filesystem if nothing is mounted at `target` yet.
fn ensure_mounted(fstype: &str, target: &str) {
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(target)))
        .unwrap_or(false);
    if mounted {
        return;
    }
    match nix::mount::mount(Some(fstype), target, Some(fstype), nix::mount::MsFlags::empty(), None::<&str>) {
        Ok(()) => info!(%fstype, %target, "mounted"),
        Err(e) => warn!(%fstype, %target, %e, "could not mount"),
    }
}

/// Runs the daemon until SIGTERM/SIGINT. Enforcement stays in the kernel after it returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("agentd must run as root (it loads eBPF programs and manages cgroups)");
    }
    ensure_mounted("bpf", "/sys/fs/bpf");
    ensure_mounted("tracefs", "/sys/kernel/tracing");
    ensure_mounted("securityfs", "/sys/kernel/security");
    let cgroup_mount = cgroups::cgroup2_mount()?;
    let store = Store::open(&config.state_dir)?;
    let state = store.load()?;
    let enforcer = Enforcer::open(&EnforcerConfig { pin_dir: config.pin_dir.clone(), cgroup_root: cgroup_mount.clone() })
        .context("cannot set up kernel enforcement (run `agentctl doctor` for what this kernel supports)")?;
    let mut inner = Inner { enforcer, store, state, compiled: HashMap::new() };
    reconcile(&mut inner)?;
    let reader = inner.enforcer.take_events()?;
    let hub = events::Hub::new();
    let service = Service {
        inner: Arc::new(Mutex::new(inner)),
        events: hub.clone(),
        config: config.clone(),
        cgroup_mount,
        started: Instant::now(),
    };
    tokio::spawn(events::pump(reader, hub, service.names()));

    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if config.socket.exists() {
        if tokio::net::UnixStream::connect(&config.socket).await.is_ok() {
            anyhow::bail!("another agentd is already serving {}", config.socket.display());
        }
        std::fs::remove_file(&config.socket).with_context(|| format!("removing stale {}", config.socket.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&config.socket).with_context(|| format!("binding {}", config.socket.display()))?;
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o660))?;
    info!(socket = %config.socket.display(), "serving agentctl");

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        info!("shutting down; kernel enforcement stays in place");
    };
    tonic::transport::Server::builder()
        .add_service(pb::agentd_server::AgentdServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// Makes the kernel match the state: every identity's policy, every binding whose
/// cgroup still exists, and no binding the state does not have.
fn reconcile(inner: &mut Inner) -> anyhow::Result<()> {
    for (name, rec) in &inner.state.policies {
        match compile(&rec.file_name, &rec.yaml) {
            Ok(c) => {
                inner.compiled.insert(name.clone(), c);
            }
            Err(e) => warn!(policy = %name, %e, "stored policy no longer compiles; identities using it are denied everything"),
        }
    }
    for (name, id) in &inner.state.identities {
        let policy = inner.compiled.get(&id.policy);
        let version = inner.state.policies.get(&id.policy).map(|p| p.version).unwrap_or(0);
        inner.enforcer.set_identity(id.id, policy, version, id.revoked)?;
        info!(identity = %name, id = id.id, policy = %id.policy, "identity installed");
    }
    let mut want: BTreeMap<u64, u32> = BTreeMap::new();
    let mut gone = Vec::new();
    for (path, b) in &inner.state.bindings {
        let id = inner.state.identities.get(&b.identity).map(|i| i.id).unwrap_or(0);
        match cgroups::cgroup_id(Path::new(path)) {
            Ok(cgid) if cgid == b.cgroup_id => {
                want.insert(cgid, id);
            }
            _ => gone.push(path.clone()),
        }
    }
    for path in gone {
        warn!(cgroup = %path, "bound cgroup no longer exists; dropping the binding");
        inner.state.bindings.remove(&path);
    }
    for (cgid, id) in inner.enforcer.kernel_bindings()? {
        if want.get(&cgid) != Some(&id) {
            inner.enforcer.unbind(cgid)?;
        }
    }
    for (cgid, id) in &want {
        inner.enforcer.bind(*cgid, *id)?;
    }
    inner.store.save(&inner.state)?;
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl Service {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Id → (identity name, policy name, rule texts) for event enrichment.
    fn names(&self) -> events::Names {
        let inner = self.inner.clone();
        Arc::new(move |id: u32, rule: u32| {
            let g = inner.lock().unwrap_or_else(|p| p.into_inner());
            let (name, rec) = g.state.identities.iter().find(|(_, r)| r.id == id)?;
            let rule_text = g
                .compiled
                .get(&rec.policy)
                .and_then(|c| c.rules.iter().find(|r| r.id == rule).map(|r| r.text.clone()))
                .unwrap_or_default();
            Some((name.clone(), rec.policy.clone(), rule_text))
        })
    }

    /// Refuses changes from processes inside a bound cgroup: an agent must not be
    /// able to change its own enforcement.
    fn authorize_change<T>(&self, req: &Request<T>) -> Result<()> {
        let cred = req
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .ok_or_else(|| Status::permission_denied("agentd: cannot identify the caller (no peer credentials)"))?;
        let pid = cred.pid().ok_or_else(|| Status::permission_denied("agentd: caller has no pid"))?;
        let cg = cgroups::current_cgroup(pid as u32).map_err(|e| Status::permission_denied(format!("agentd: {e}")))?;
        let g = self.lock();
        for (path, b) in &g.state.bindings {
            if cg.starts_with(path) {
                return Err(Status::permission_denied(format!(
                    "agentd: refusing a change from a process inside bound cgroup {path} (identity {}): agents cannot change their own enforcement",
                    b.identity
                )));
            }
        }
        Ok(())
    }

    fn identity_pb(&self, g: &Inner, name: &str, rec: &IdentityRecord) -> pb::Identity {
        let state = if rec.revoked {
            "revoked"
        } else if !g.compiled.contains_key(&rec.policy) {
            "no-policy"
        } else {
            "active"
        };
        pb::Identity {
            name: name.into(),
            id: rec.id,
            policy: rec.policy.clone(),
            owner: rec.owner.clone(),
            public_key: rec.public_key.clone(),
            fingerprint: state::fingerprint(&rec.public_key),
            created_at: rec.created_at.clone(),
            state: state.into(),
            bound_cgroups: g.state.bindings.iter().filter(|(_, b)| b.identity == name).map(|(p, _)| p.clone()).collect(),
        }
    }

    fn mechanisms(g: &Inner) -> Vec<pb::KindMechanism> {
        g.enforcer
            .report()
            .kinds
            .into_iter()
            .map(|k| pb::KindMechanism {
                kind: k.kind,
                active: k.active,
                effect: k.effect,
                unavailable: k.unavailable.into_iter().map(|(mechanism, reason)| pb::Unavailable { mechanism, reason }).collect(),
            })
            .collect()
    }
}

fn summary(name: &str, rec: &PolicyRecord, c: Option<&CompiledPolicy>) -> pb::PolicySummary {
    let p = v1::parse(&rec.file_name, &rec.yaml).ok();
    pb::PolicySummary {
        name: name.into(),
        description: p.as_ref().map(|p| p.description().to_string()).unwrap_or_default(),
        version: rec.version,
        hash: rec.hash.clone(),
        mode: match c.map(|c| c.monitor) {
            Some(true) => "monitor".into(),
            _ => "enforce".into(),
        },
        applied_at: rec.applied_at.clone(),
        rules: c.map(|c| c.rules.len() as u32).unwrap_or(0),
    }
}

fn binding_pb(path: &str, b: &BindingRecord) -> pb::Binding {
    pb::Binding {
        cgroup_path: path.into(),
        cgroup_id: b.cgroup_id,
        identity: b.identity.clone(),
        bound_at: b.bound_at.clone(),
        present: cgroups::cgroup_id(Path::new(path)).map(|id| id == b.cgroup_id).unwrap_or(false),
    }
}

fn checks(mount: &Path) -> Vec<pb::Check> {
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    let mounted = |t: &str| {
        std::fs::read_to_string("/proc/self/mounts").map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(t))).unwrap_or(false)
    };
    vec![
        pb::Check { name: "cgroup2 mount".into(), ok: true, detail: mount.display().to_string() },
        pb::Check { name: "bpffs mounted at /sys/fs/bpf".into(), ok: mounted("/sys/fs/bpf"), detail: String::new() },
        pb::Check {
            name: "kernel BTF".into(),
            ok: Path::new("/sys/kernel/btf/vmlinux").exists(),
            detail: "/sys/kernel/btf/vmlinux".into(),
        },
        pb::Check {
            name: "bpf in the active LSM list".into(),
            ok: lsm.split(',').any(|m| m.trim() == "bpf"),
            detail: format!("{} (a hint only: agentd proves BPF LSM runs by loading a program)", lsm.trim()),
        },
        pb::Check { name: "tracefs mounted".into(), ok: mounted("/sys/kernel/tracing"), detail: String::new() },
    ]
}

#[tonic::async_trait]
impl Agentd for Service {
    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>> {
        let g = self.lock();
        let c = g.enforcer.counters().map_err(internal)?;
        Ok(Response::new(pb::StatusReply {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            pin_dir: self.config.pin_dir.display().to_string(),
            state_dir: self.config.state_dir.display().to_string(),
            adopted: g.enforcer.report().adopted,
            identities: g.state.identities.len() as u32,
            policies: g.state.policies.len() as u32,
            bindings: g.state.bindings.len() as u32,
            counters: Some(pb::Counters {
                events: c.events,
                events_dropped: c.events_dropped,
                deny_exec: c.deny_exec,
                deny_write: c.deny_write,
                deny_egress: c.deny_egress,
                deny_socket: c.deny_socket,
                kills: c.kills,
                unresolved: c.unresolved,
            }),
            mechanisms: Self::mechanisms(&g),
        }))
    }

    async fn doctor(&self, _req: Request<pb::DoctorRequest>) -> Result<Response<pb::DoctorReply>> {
        let g = self.lock();
        Ok(Response::new(pb::DoctorReply {
            kernel_release: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            mechanisms: Self::mechanisms(&g),
            checks: checks(&self.cgroup_mount),
        }))
    }

    async fn policy_apply(&self, req: Request<pb::PolicyApplyRequest>) -> Result<Response<pb::PolicyApplyReply>> {
        self.authorize_change(&req)?;
        let r = req.into_inner();
        let file = if r.file_name.is_empty() { "policy.yaml".to_string() } else { r.file_name.clone() };
        let parsed = v1::parse(&file, &r.yaml).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let compiled = v1::compile(&parsed).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let name = parsed.name().to_string();
        let mut g = self.lock();
        let version = g.state.policies.get(&name).map(|p| p.version + 1).unwrap_or(1);
        // Install into the kernel for every identity on this policy; roll back on failure.
        let users: Vec<(u32, bool)> = g.state.identities.values().filter(|i| i.policy == name).map(|i| (i.id, i.revoked)).collect();
        let old = g.compiled.get(&name).cloned();
        let old_version = g.state.policies.get(&name).map(|p| p.version).unwrap_or(0);
        for (i, (id, revoked)) in users.iter().enumerate() {
            if let Err(e) = g.enforcer.set_identity(*id, Some(&compiled), version, *revoked) {
                for (id, revoked) in &users[..=i] {
                    let _ = g.enforcer.set_identity(*id, old.as_ref(), old_version, *revoked);
                }
                return Err(Status::internal(format!("agentd: the kernel refused the policy, the previous one stays in force: {e}")));
            }
        }
        let rec = PolicyRecord { yaml: r.yaml, file_name: file, version, hash: compiled.hash.clone(), applied_at: state::now() };
        g.state.policies.insert(name.clone(), rec.clone());
        let warnings = compiled.warnings.clone();
        g.compiled.insert(name.clone(), compiled);
        g.store.save(&g.state).map_err(internal)?;
        info!(policy = %name, version, identities = users.len(), "policy applied");
        Ok(Response::new(pb::PolicyApplyReply { policy: Some(summary(&name, &rec, g.compiled.get(&name))), warnings }))
    }

    async fn policy_list(&self, _req: Request<pb::PolicyListRequest>) -> Result<Response<pb::PolicyListReply>> {
        let g = self.lock();
        let policies = g.state.policies.iter().map(|(n, r)| summary(n, r, g.compiled.get(n))).collect();
        Ok(Response::new(pb::PolicyListReply { policies }))
    }

    async fn policy_show(&self, req: Request<pb::PolicyShowRequest>) -> Result<Response<pb::PolicyShowReply>> {
        let name = req.into_inner().name;
        let g = self.lock();
        let rec = g.state.policies.get(&name).ok_or_else(|| {
            Status::not_found(format!("agentd: no policy named {name:?} (see `agentctl policy list`; add one with `agentctl policy apply FILE`)"))
        })?;
        let c = g.compiled.get(&name);
        Ok(Response::new(pb::PolicyShowReply {
            policy: Some(summary(&name, rec, c)),
            yaml: rec.yaml.clone(),
            rules: c
                .map(|c| c.rules.iter().map(|r| pb::Rule { id: r.id, kind: r.kind.into(), text: r.text.clone(), line: r.line as u32 }).collect())
                .unwrap_or_default(),
        }))
    }

    async fn identity_create(&self, req: Request<pb::IdentityCreateRequest>) -> Result<Response<pb::IdentityCreateReply>> {
        self.authorize_change(&req)?;
        let caller_uid = req
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .map(|c| c.uid())
            .unwrap_or(0);
        let r = req.into_inner();
        let valid = !r.name.is_empty()
            && r.name.len() <= 63
            && r.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !r.name.starts_with('-');
        if !valid {
            return Err(Status::invalid_argument(format!(
                "agentd: identity name {:?}: use lowercase letters, digits and '-', at most 63 characters",
                r.name
            )));
        }
        let mut g = self.lock();
        if g.state.identities.contains_key(&r.name) {
            return Err(Status::already_exists(format!("agentd: identity {:?} already exists", r.name)));
        }
        if !g.state.policies.contains_key(&r.policy) {
            return Err(Status::not_found(format!(
                "agentd: no policy named {:?}: apply it first with `agentctl policy apply FILE`",
                r.policy
            )));
        }
        let owner = if r.owner.is_empty() {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(caller_uid))
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid {caller_uid}"))
        } else {
            r.owner
        };
        let public_key = g.store.new_key(&r.name).map_err(internal)?;
        let id = g.state.next_identity_id.max(1);
        let rec = IdentityRecord { id, policy: r.policy.clone(), owner, public_key, created_at: state::now(), revoked: false };
        let version = g.state.policies.get(&r.policy).map(|p| p.version).unwrap_or(0);
        let compiled = g.compiled.get(&r.policy).cloned();
        g.enforcer.set_identity(id, compiled.as_ref(), version, false).map_err(internal)?;
        g.state.identities.insert(r.name.clone(), rec.clone());
        g.state.next_identity_id = id + 1;
        g.store.save(&g.state).map_err(internal)?;
        info!(identity = %r.name, id, policy = %r.policy, "identity created");
        let identity = self.identity_pb(&g, &r.name, &rec);
        Ok(Response::new(pb::IdentityCreateReply { identity: Some(identity) }))
    }

    async fn identity_list(&self, _req: Request<pb::IdentityListRequest>) -> Result<Response<pb::IdentityListReply>> {
        let g = self.lock();
        let identities = g.state.identities.iter().map(|(n, r)| self.identity_pb(&g, n, r)).collect();
        Ok(Response::new(pb::IdentityListReply { identities }))
    }

    async fn identity_show(&self, req: Request<pb::IdentityShowRequest>) -> Result<Response<pb::IdentityShowReply>> {
        let name = req.into_inner().name;
        let g = self.lock();
        let rec = g.state.identities.get(&name).ok_or_else(|| {
            Status::not_found(format!("agentd: no identity named {name:?} (create it with `agentctl identity create {name} --policy POLICY`)"))
        })?;
        Ok(Response::new(pb::IdentityShowReply { identity: Some(self.identity_pb(&g, &name, rec)) }))
    }

    async fn bind(&self, req: Request<pb::BindRequest>) -> Result<Response<pb::BindReply>> {
        self.authorize_change(&req)?;
        let r = req.into_inner();
        let path = PathBuf::from(&r.cgroup_path);
        if !path.is_absolute() || !path.join("cgroup.procs").is_file() || !path.starts_with(&self.cgroup_mount) {
            return Err(Status::invalid_argument(format!(
                "agentd: {} is not a cgroup under the cgroup2 mount {}",
                r.cgroup_path,
                self.cgroup_mount.display()
            )));
        }
        let depth = cgroups::depth(&self.cgroup_mount, &path);
        if depth == 0 {
            return Err(Status::invalid_argument("agentd: refusing to bind the root cgroup: that would bind every process, agentd included"));
        }
        if depth as u32 > agent_common::MAX_CGROUP_DEPTH {
            return Err(Status::invalid_argument(format!(
                "agentd: {} is {depth} levels deep; the kernel follows bindings {} levels down",
                r.cgroup_path,
                agent_common::MAX_CGROUP_DEPTH
            )));
        }
        // Never bind the daemon itself: it would be judged by an agent's policy.
        if let Ok(own) = cgroups::current_cgroup(std::process::id()) {
            if own.starts_with(&path) {
                return Err(Status::invalid_argument(format!(
                    "agentd: {} contains agentd itself ({}); bind a cgroup that holds only the agent",
                    r.cgroup_path,
                    own.display()
                )));
            }
        }
        let cgid = cgroups::cgroup_id(&path).map_err(internal)?;
        let mut g = self.lock();
        let id = g.state.identities.get(&r.identity).map(|i| i.id).ok_or_else(|| {
            Status::not_found(format!(
                "agentd: no identity named {:?} (create it with `agentctl identity create {} --policy POLICY`)",
                r.identity, r.identity
            ))
        })?;
        g.enforcer.bind(cgid, id).map_err(internal)?;
        let key = path.display().to_string();
        let b = BindingRecord { cgroup_id: cgid, identity: r.identity.clone(), bound_at: state::now() };
        g.state.bindings.insert(key.clone(), b.clone());
        g.store.save(&g.state).map_err(internal)?;
        info!(cgroup = %key, identity = %r.identity, "bound");
        Ok(Response::new(pb::BindReply { binding: Some(binding_pb(&key, &b)) }))
    }

    async fn unbind(&self, req: Request<pb::UnbindRequest>) -> Result<Response<pb::UnbindReply>> {
        self.authorize_change(&req)?;
        let path = req.into_inner().cgroup_path;
        let mut g = self.lock();
        let b = g.state.bindings.get(&path).cloned().ok_or_else(|| {
            Status::not_found(format!("agentd: {path} is not bound (see `agentctl bindings`)"))
        })?;
        g.enforcer.unbind(b.cgroup_id).map_err(internal)?;
        g.state.bindings.remove(&path);
        g.store.save(&g.state).map_err(internal)?;
        info!(cgroup = %path, identity = %b.identity, "unbound");
        Ok(Response::new(pb::UnbindReply { binding: Some(binding_pb(&path, &b)) }))
    }

    async fn bindings(&self, _req: Request<pb::BindingsRequest>) -> Result<Response<pb::BindingsReply>> {
        let g = self.lock();
        let bindings = g.state.bindings.iter().map(|(p, b)| binding_pb(p, b)).collect();
        Ok(Response::new(pb::BindingsReply { bindings }))
    }

    type EventsStream = Pin<Box<dyn Stream<Item = Result<pb::Event>> + Send>>;

    async fn events(&self, req: Request<pb::EventsRequest>) -> Result<Response<Self::EventsStream>> {
        let r = req.into_inner();
        Ok(Response::new(self.events.subscribe(r.follow, r.last as usize)))
    }
}
