//! The daemon's decisions about state and kernel, free of gRPC and of the real
//! kernel (behind [`Kernel`]), so they are unit-tested without root.
//!
//! Every change follows one order: check everything, change the kernel, persist,
//! and only then update memory. A kernel refusal leaves the previous enforcement in
//! place; a failed write rolls the kernel back, so what is enforced is always what
//! a restarted agentd would enforce.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::Path,
    sync::Arc,
    time::SystemTime,
};

use agent_common::Hits;
use tracing::{error, info, warn};

use crate::{
    enforce::{Counters, EnforceError, Enforcer, MechanismReport},
    identity::{self, keys, IdentityRecord, NewIdentity},
    policy::{compiled::CompiledPolicy, evaluate_as, Action, ActionKind, Approvals, Builtins, Mode, Policy, Standing},
    receipts::{Draft, Journal, Requester},
    state::{self, BindingRecord, PolicyMeta, PolicyRecord, State, Store},
};

/// How many versions of a policy's rule table are kept for naming the rules of
/// events decided just before a re-apply.
const RULE_HISTORY: usize = 4;

/// The kernel operations the daemon uses; [`Enforcer`] in production.
pub trait Kernel: Send {
    /// Installs identity `id` (see [`Enforcer::set_identity`]): its policy, whether
    /// it is revoked, and the expiry the kernel itself enforces.
    fn set_identity(
        &mut self,
        id: u32,
        policy: Option<&CompiledPolicy>,
        version: u32,
        revoked: bool,
        expires: Option<SystemTime>,
    ) -> Result<(), EnforceError>;
    /// Per-rule decision counts of identity `id`'s rules in force: (kind, rule id, hits).
    fn hits(&self, id: u32) -> Result<Vec<(u8, u32, Hits)>, EnforceError>;
    fn remove_identity(&mut self, id: u32) -> Result<(), EnforceError>;
    fn bind(&mut self, cgroup_id: u64, id: u32) -> Result<(), EnforceError>;
    fn unbind(&mut self, cgroup_id: u64) -> Result<(), EnforceError>;
    /// Gives identity `id` to the processes already in the bound cgroup at `path`
    /// (see [`Enforcer::attribute_tasks`]).
    fn attribute_tasks(&mut self, path: &Path, cgroup_id: u64, id: u32) -> Result<usize, EnforceError>;
    /// The identity the kernel keeps for process `tgid`, wherever its cgroup is.
    fn task_identity(&self, tgid: u32) -> Option<u32>;
    /// Puts back what the kernel lost of what was written (see
    /// [`Enforcer::repair_drift`]); (what, which) per repair.
    fn repair_drift(&mut self) -> Vec<(&'static str, String)>;
    fn kernel_bindings(&self) -> Result<Vec<(u64, u32)>, EnforceError>;
    fn report(&self) -> MechanismReport;
    fn counters(&self) -> Result<Counters, EnforceError>;
}

impl Kernel for Enforcer {
    fn set_identity(
        &mut self,
        id: u32,
        policy: Option<&CompiledPolicy>,
        version: u32,
        revoked: bool,
        expires: Option<SystemTime>,
    ) -> Result<(), EnforceError> {
        Enforcer::set_identity(self, id, policy, version, revoked, expires)
    }
    fn hits(&self, id: u32) -> Result<Vec<(u8, u32, Hits)>, EnforceError> {
        Enforcer::hits(self, id)
    }
    fn remove_identity(&mut self, id: u32) -> Result<(), EnforceError> {
        Enforcer::remove_identity(self, id)
    }
    fn bind(&mut self, cgroup_id: u64, id: u32) -> Result<(), EnforceError> {
        Enforcer::bind(self, cgroup_id, id)
    }
    fn unbind(&mut self, cgroup_id: u64) -> Result<(), EnforceError> {
        Enforcer::unbind(self, cgroup_id)
    }
    fn attribute_tasks(&mut self, path: &Path, cgroup_id: u64, id: u32) -> Result<usize, EnforceError> {
        Enforcer::attribute_tasks(self, path, cgroup_id, id)
    }
    fn task_identity(&self, tgid: u32) -> Option<u32> {
        Enforcer::task_identity(self, tgid)
    }
    fn repair_drift(&mut self) -> Vec<(&'static str, String)> {
        Enforcer::repair_drift(self)
    }
    fn kernel_bindings(&self) -> Result<Vec<(u64, u32)>, EnforceError> {
        Enforcer::kernel_bindings(self)
    }
    fn report(&self) -> MechanismReport {
        Enforcer::report(self)
    }
    fn counters(&self) -> Result<Counters, EnforceError> {
        Enforcer::counters(self)
    }
}

/// Why an operation was refused; the server maps each to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    /// The kernel refused; the previous enforcement stays.
    #[error("{0}")]
    Kernel(String),
    /// The state directory could not be written; the kernel was rolled back.
    #[error("{0}")]
    State(String),
    /// The change is made (kernel and state), but its receipt could not be
    /// recorded: the caller must know the record is missing.
    #[error("{0}")]
    Receipt(String),
}

/// A stored policy that compiles.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub compiled: Arc<CompiledPolicy>,
    /// The parsed policy, for decisions made in userspace (which exec to hold).
    pub policy: Arc<Policy>,
    pub description: String,
}

/// What start-up found and did, for the log and `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub identities: usize,
    /// Kernel bindings already as the state wants them.
    pub adopted: usize,
    /// Bindings (re)written into the kernel.
    pub bound: usize,
    /// Kernel bindings the state does not have, removed.
    pub dropped: usize,
    /// Bound cgroups whose directory is gone (kept in the state, not in the kernel).
    pub missing: usize,
    /// Stored policies that no longer compile (their identities are denied everything).
    pub broken_policies: Vec<String>,
}

/// The result of a successful apply.
#[derive(Clone, Debug)]
pub struct Applied {
    pub name: String,
    pub version: u32,
    pub identities: Vec<String>,
}

/// An action to hold: who asks, under which rule, and the policy's hold settings.
#[derive(Clone, Debug)]
pub struct ExecAsk {
    pub identity: String,
    pub identity_id: u32,
    pub owner: String,
    pub policy: String,
    pub policy_version: u32,
    pub rule_id: u32,
    pub rule: String,
    pub approvals: Approvals,
    /// For receipts: the identity's key fingerprint, and the SHA-256 of the policy
    /// version that asked (empty when that version is no longer remembered).
    pub key_fingerprint: String,
    pub policy_hash: String,
}

/// The result of a bind.
#[derive(Clone, Debug)]
pub struct Bound {
    pub binding: BindingRecord,
    /// The identity the cgroup was bound to before, when this replaced it.
    pub replaced: Option<String>,
}

/// State, kernel and the compiled policies, kept consistent.
pub struct Core {
    kernel: Box<dyn Kernel>,
    store: Store,
    state: State,
    loaded: HashMap<String, Loaded>,
    history: HashMap<String, VecDeque<(u32, Arc<CompiledPolicy>)>>,
    /// Whether each identity is installed as denied-everything (revoked or expired).
    denied: HashMap<u32, bool>,
    /// The signed receipt journal: every administrative change is recorded here.
    receipts: Arc<Journal>,
    /// Approved requests in force, per identity id (see [`Core::grant`]). In memory
    /// only: a restarted agentd installs policies without them (fail closed).
    exceptions: HashMap<u32, Vec<Exception>>,
    /// Told, after each change to what the kernel enforces, whether any policy
    /// asks about writes (the write gate's marks are only kept while one does).
    write_gate: Option<Box<dyn Fn(bool) + Send>>,
    /// What the policies' built-in unix rules protect (this agentd's socket).
    builtins: Builtins,
}

/// One approved request: the identity may do exactly this until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exception {
    pub target: Excepted,
    /// The `ask` rule it was asked under (0: the kind's default).
    pub rule_id: u32,
    pub until: SystemTime,
}

/// What an exception lets through.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Excepted {
    /// Writes to exactly this file.
    Write(String),
    /// UDP datagrams to exactly this address and port.
    Udp(std::net::SocketAddr),
}

impl std::fmt::Display for Excepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Excepted::Write(p) => write!(f, "write {p}"),
            Excepted::Udp(a) => write!(f, "udp {a}"),
        }
    }
}

/// The kernel's revoked flag for `rec`. The kernel checks a well-formed expiry
/// itself (and reports it as `expired`, even while agentd is down); the flag is for
/// revocation, and for an expiry that does not parse (deny rather than guess).
fn revoked_flag(rec: &IdentityRecord) -> bool {
    rec.revoked || (rec.expires.is_some() && rec.expires_at().is_none())
}

fn kernel_err(what: String) -> impl FnOnce(EnforceError) -> OpError {
    move |e| OpError::Kernel(format!("agentd: the kernel refused {what}: {e}"))
}

fn state_err(e: state::StateError) -> OpError {
    OpError::State(format!("agentd: cannot write the state directory, so nothing changed: {e}"))
}

impl Core {
    pub fn new(kernel: Box<dyn Kernel>, store: Store, state: State, receipts: Arc<Journal>) -> Core {
        Core {
            kernel,
            store,
            state,
            loaded: HashMap::new(),
            history: HashMap::new(),
            denied: HashMap::new(),
            receipts,
            exceptions: HashMap::new(),
            write_gate: None,
            builtins: Builtins::default(),
        }
    }

    /// Compiles stored policies with `builtins` from now on (the daemon's
    /// `--socket`; the default otherwise). Call before [`Core::reconcile`].
    pub fn set_builtins(&mut self, builtins: Builtins) {
        self.builtins = builtins;
    }

    /// Whether a loaded policy asks about writes (a rule or the default), in
    /// enforce mode.
    pub fn asks_about_writes(&self) -> bool {
        self.loaded.values().any(|l| {
            let w = &l.policy.write;
            l.policy.mode() == Mode::Enforce
                && (w.default == ActionKind::Ask || w.rules.iter().any(|r| r.action == ActionKind::Ask))
        })
    }

    fn tell_write_gate(&self) {
        if let Some(gate) = &self.write_gate {
            gate(self.asks_about_writes());
        }
    }

    /// Sets who is told whether any policy asks about writes, and tells it now.
    pub fn set_write_gate(&mut self, gate: Box<dyn Fn(bool) + Send>) {
        gate(self.asks_about_writes());
        self.write_gate = Some(gate);
    }

    /// A write open the kernel let into a hold (or, on the fallback tier, that a
    /// bound task is making): whether it is an `ask` of identity `identity_id`'s
    /// policy as installed — with its exceptions, which the kernel lets through
    /// without a hold.
    pub fn write_hold_ask(&self, identity_id: u32, path: &Path, now: SystemTime) -> Option<ExecAsk> {
        let excepted = self.exceptions.get(&identity_id).into_iter().flatten().any(|e| {
            e.until > now && e.target == Excepted::Write(path.to_string_lossy().into_owned())
        });
        if excepted {
            return None;
        }
        self.write_ask(identity_id, path, now)
    }

    /// The receipt journal, for the event pipeline and holds to append to.
    pub fn receipts(&self) -> &Arc<Journal> {
        &self.receipts
    }

    /// Records the receipt of a change already made. A failure does not undo the
    /// change: the kernel (and the state directory) already enforce it, and rolling
    /// enforcement back because the record failed would trade a missing record for
    /// enforcement that differs from what the caller asked. Instead it is logged
    /// loudly and the caller gets an error saying the change stands unrecorded.
    fn record(&self, draft: Draft, what: &str) -> Result<(), OpError> {
        match self.receipts.append(draft) {
            Ok(_) => Ok(()),
            Err(e) => {
                error!(change = %what, error = %e, "RECEIPT NOT RECORDED: the change is in force but has no receipt");
                Err(OpError::Receipt(format!(
                    "agentd: {what} is in force, but its receipt could not be recorded: {e}; the receipt journal needs attention (see the agentd log)"
                )))
            }
        }
    }

    /// Compares the kernel with the state and puts back what differs: link
    /// pins, identity entries, rule sets, the guard, the protected paths, and
    /// the bindings. Each repair is logged and recorded as a `tamper` receipt
    /// (severity warning). Returns the repairs.
    pub fn check_drift(&mut self, now: SystemTime) -> Vec<(String, String)> {
        let mut fixed: Vec<(String, String)> = self.kernel.repair_drift().into_iter().map(|(w, t)| (w.to_string(), t)).collect();
        let mut want: BTreeMap<u64, (u32, String)> = BTreeMap::new();
        for b in self.state.bindings.values() {
            if let Some(id) = self.state.identities.get(&b.identity).map(|i| i.id) {
                want.insert(b.cgroup_id, (id, b.cgroup_path.clone()));
            }
        }
        match self.kernel.kernel_bindings() {
            Ok(have) => {
                let have: BTreeMap<u64, u32> = have.into_iter().collect();
                for (cg, (id, path)) in &want {
                    // A bound cgroup that is gone is not drift (it comes back bound).
                    if have.get(cg) != Some(id) && Path::new(path).is_dir() && self.kernel.bind(*cg, *id).is_ok() {
                        fixed.push(("binding".into(), path.clone()));
                    }
                }
                for cg in have.keys().filter(|cg| !want.contains_key(cg)) {
                    if self.kernel.unbind(*cg).is_ok() {
                        fixed.push(("binding".into(), format!("a binding of cgroup id {cg} agentd never made")));
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read the kernel's bindings to check them"),
        }
        for (what, target) in &fixed {
            warn!(what = %what, target = %target, "the kernel differed from agentd's state; restored");
            if let Err(e) = self.record_tamper(what, target, "restored", now) {
                warn!(error = %e, "could not record the repair");
            }
        }
        fixed
    }

    /// Records that enforcement itself was reached for (a `tamper` receipt).
    pub fn record_tamper(&self, what: &str, target: &str, outcome: &str, now: SystemTime) -> Result<(), OpError> {
        self.record(Draft::tamper(what, target, outcome).at(now), &format!("the {what} tamper record"))
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn loaded(&self, policy: &str) -> Option<&Loaded> {
        self.loaded.get(policy)
    }

    pub fn report(&self) -> MechanismReport {
        self.kernel.report()
    }

    pub fn counters(&self) -> Result<Counters, EnforceError> {
        self.kernel.counters()
    }

    /// Decision counts of policy `name`'s rules in force, summed over every
    /// identity using it: (kind, rule id) → hits; rule id 0 is the kind's default.
    pub fn policy_hits(&self, name: &str) -> Result<HashMap<(u8, u32), Hits>, EnforceError> {
        let mut out: HashMap<(u8, u32), Hits> = HashMap::new();
        for rec in self.state.identities.values().filter(|i| i.policy == name) {
            for (kind, rule, h) in self.kernel.hits(rec.id)? {
                let e = out.entry((kind, rule)).or_default();
                e.allow += h.allow;
                e.deny += h.deny;
                e.would_deny += h.would_deny;
                e.audit += h.audit;
            }
        }
        Ok(out)
    }

    /// The version of policy `name` in force (0 if none).
    fn version(&self, policy: &str) -> u32 {
        self.state.policies.get(policy).map_or(0, |p| p.meta.version)
    }

    fn compiled(&self, policy: &str) -> Option<Arc<CompiledPolicy>> {
        self.loaded.get(policy).map(|l| l.compiled.clone())
    }

    fn remember(&mut self, name: &str, version: u32, compiled: Arc<CompiledPolicy>) {
        let h = self.history.entry(name.to_string()).or_default();
        h.retain(|(v, _)| *v != version);
        h.push_back((version, compiled));
        while h.len() > RULE_HISTORY {
            h.pop_front();
        }
    }

    /// Installs identity `name` as the state says, given the time.
    fn install(&mut self, rec: &IdentityRecord, now: SystemTime) -> Result<(), EnforceError> {
        let compiled = self.compiled(&rec.policy).map(|c| self.with_exceptions(rec.id, c, now));
        let version = self.version(&rec.policy);
        let denied = rec.denies_all(now);
        self.kernel.set_identity(rec.id, compiled.as_deref(), version, revoked_flag(rec), rec.expires_at())?;
        self.denied.insert(rec.id, denied);
        self.tell_write_gate();
        Ok(())
    }

    /// `compiled` with the identity's exceptions in force at `now`.
    fn with_exceptions(&self, identity_id: u32, compiled: Arc<CompiledPolicy>, now: SystemTime) -> Arc<CompiledPolicy> {
        let live: Vec<&Exception> = self.exceptions.get(&identity_id).into_iter().flatten().filter(|e| e.until > now).collect();
        if live.is_empty() {
            return compiled;
        }
        match overlay(&compiled, &live) {
            Ok(c) => Arc::new(c),
            // Checked when granted; were it to fail here, the narrower policy stands.
            Err(e) => {
                warn!(identity_id, error = %e, "exceptions not installed");
                compiled
            }
        }
    }

    /// A write the kernel denied under an `ask` rule (or an `ask` write default)
    /// of identity `identity_id`, by the userspace evaluator, with the policy's hold
    /// settings; `None` when it was not an ask, or the identity can no longer act.
    pub fn write_ask(&self, identity_id: u32, path: &Path, now: SystemTime) -> Option<ExecAsk> {
        let rec = self.state.identity_by_id(identity_id)?;
        if rec.denies_all(now) {
            return None;
        }
        let loaded = self.loaded.get(&rec.policy)?;
        if loaded.policy.mode() != Mode::Enforce {
            return None;
        }
        let d = evaluate_as(Some(&loaded.policy), Standing::Active, &Action::Write { path: path.to_path_buf() });
        if d.action != ActionKind::Ask {
            return None;
        }
        Some(ExecAsk {
            identity: rec.name.clone(),
            identity_id: rec.id,
            owner: rec.owner.clone(),
            policy: rec.policy.clone(),
            policy_version: self.version(&rec.policy),
            rule_id: d.rule_id,
            rule: d.rule_text.unwrap_or_default(),
            approvals: loaded.policy.approvals,
            key_fingerprint: rec.fingerprint(),
            policy_hash: loaded.compiled.hash.clone(),
        })
    }

    /// A UDP send the kernel denied under an `ask` egress rule (or default); as
    /// [`Core::write_ask`].
    pub fn udp_ask(&self, identity_id: u32, to: std::net::SocketAddr, now: SystemTime) -> Option<ExecAsk> {
        let rec = self.state.identity_by_id(identity_id)?;
        if rec.denies_all(now) {
            return None;
        }
        let loaded = self.loaded.get(&rec.policy)?;
        if loaded.policy.mode() != Mode::Enforce {
            return None;
        }
        let action = Action::Connect { addr: to.ip(), port: to.port(), protocol: crate::policy::Protocol::Udp };
        let d = evaluate_as(Some(&loaded.policy), Standing::Active, &action);
        if d.action != ActionKind::Ask {
            return None;
        }
        Some(ExecAsk {
            identity: rec.name.clone(),
            identity_id: rec.id,
            owner: rec.owner.clone(),
            policy: rec.policy.clone(),
            policy_version: self.version(&rec.policy),
            rule_id: d.rule_id,
            rule: d.rule_text.unwrap_or_default(),
            approvals: loaded.policy.approvals,
            key_fingerprint: rec.fingerprint(),
            policy_hash: loaded.compiled.hash.clone(),
        })
    }

    /// Lets identity `identity_id` do exactly `target` until `until` (an approved
    /// request): its policy is installed again with the exception, in one atomic
    /// swap. Refused when the kernel cannot express it exactly.
    pub fn grant(&mut self, identity_id: u32, target: Excepted, rule_id: u32, until: SystemTime, now: SystemTime) -> Result<(), OpError> {
        let rec = self
            .state
            .identity_by_id(identity_id)
            .cloned()
            .ok_or_else(|| OpError::NotFound(format!("agentd: identity {identity_id} no longer exists")))?;
        let exception = Exception { target: target.clone(), rule_id, until };
        if let Some(c) = self.compiled(&rec.policy) {
            overlay(&c, &[&exception]).map_err(|e| OpError::Invalid(format!("agentd: {e}")))?;
        }
        let list = self.exceptions.entry(identity_id).or_default();
        list.retain(|e| e.target != target && e.until > now);
        list.push(exception);
        if let Err(e) = self.install(&rec, now) {
            if let Some(list) = self.exceptions.get_mut(&identity_id) {
                list.retain(|e| e.target != target);
            }
            return Err(kernel_err(format!("an exception for {target}"))(e));
        }
        Ok(())
    }

    /// Ends the exceptions whose time is up, re-installing their identities.
    /// Returns (identity, what was excepted) of each ended.
    pub fn expire_exceptions(&mut self, now: SystemTime) -> Vec<(String, Excepted)> {
        let mut ended = Vec::new();
        let ids: Vec<u32> = self.exceptions.keys().copied().collect();
        for id in ids {
            let Some(list) = self.exceptions.get_mut(&id) else { continue };
            let (live, dead): (Vec<_>, Vec<_>) = list.drain(..).partition(|e| e.until > now);
            *list = live;
            if list.is_empty() {
                self.exceptions.remove(&id);
            }
            if dead.is_empty() {
                continue;
            }
            let Some(rec) = self.state.identity_by_id(id).cloned() else { continue };
            if let Err(e) = self.install(&rec, now) {
                // The wider policy stays until the next try: say so loudly.
                error!(identity = %rec.name, error = %e, "could not end a write exception in the kernel; retrying");
                self.exceptions.entry(id).or_default().extend(dead);
                continue;
            }
            ended.extend(dead.into_iter().map(|e| (rec.name.clone(), e.target)));
        }
        ended
    }

    /// The exceptions in force, as (identity id, exception).
    pub fn exceptions(&self, now: SystemTime) -> Vec<(u32, Exception)> {
        let mut out: Vec<_> =
            self.exceptions.iter().flat_map(|(id, l)| l.iter().filter(|e| e.until > now).map(|e| (*id, e.clone()))).collect();
        out.sort_by(|a, b| (a.0, &a.1.target).cmp(&(b.0, &b.1.target)));
        out
    }

    /// Makes the kernel enforce exactly what the state says: every identity's
    /// policy, every binding whose cgroup still exists, and no other binding.
    /// `cgroup_id` gives a path's current cgroup id (`None` when it is gone).
    pub fn reconcile(&mut self, cgroup_id: &dyn Fn(&Path) -> Option<u64>, now: SystemTime) -> Result<Reconciled, EnforceError> {
        let mut r = Reconciled::default();
        let policies: Vec<(String, PolicyRecord)> = self.state.policies.iter().map(|(n, p)| (n.clone(), p.clone())).collect();
        for (name, rec) in policies {
            match state::compile_policy(&rec.meta.file_name, &rec.yaml, &self.builtins) {
                Ok((policy, compiled)) if policy.name() == name => {
                    let compiled = Arc::new(compiled);
                    self.remember(&name, rec.meta.version, compiled.clone());
                    let description = policy.description().to_string();
                    self.loaded.insert(name, Loaded { compiled, policy: Arc::new(policy), description });
                }
                Ok((policy, _)) => {
                    warn!(policy = %name, "stored policy is named {:?} inside; identities using it are denied everything", policy.name());
                    r.broken_policies.push(name);
                }
                Err(e) => {
                    warn!(policy = %name, error = %e, "stored policy no longer compiles; identities using it are denied everything until it is re-applied");
                    r.broken_policies.push(name);
                }
            }
        }
        let identities: Vec<IdentityRecord> = self.state.identities.values().cloned().collect();
        for rec in &identities {
            self.install(rec, now)?;
            let st = rec.state(now, self.loaded.contains_key(&rec.policy));
            info!(identity = %rec.name, id = rec.id, policy = %rec.policy, version = self.version(&rec.policy), state = st.as_str(), "identity installed");
        }
        r.identities = identities.len();

        // Which cgroup id each present binding has now. A directory recreated under
        // the same path (a restarted systemd unit) keeps its binding: the user bound
        // the path.
        let mut want: BTreeMap<u64, u32> = BTreeMap::new();
        let mut changed = false;
        for b in self.state.bindings.values_mut() {
            let Some(id) = self.state.identities.get(&b.identity).map(|i| i.id) else { continue };
            match cgroup_id(Path::new(&b.cgroup_path)) {
                Some(cg) => {
                    if cg != b.cgroup_id {
                        info!(cgroup = %b.cgroup_path, old_id = b.cgroup_id, new_id = cg, identity = %b.identity, "bound cgroup was recreated; binding the new one");
                        b.cgroup_id = cg;
                        changed = true;
                    }
                    want.insert(cg, id);
                }
                None => {
                    warn!(cgroup = %b.cgroup_path, identity = %b.identity, "bound cgroup no longer exists; the binding is kept and applies again if it comes back at the next start");
                    r.missing += 1;
                }
            }
        }
        let mut have: BTreeMap<u64, u32> = BTreeMap::new();
        for (cg, id) in self.kernel.kernel_bindings()? {
            if want.get(&cg) == Some(&id) {
                have.insert(cg, id);
                r.adopted += 1;
            } else {
                warn!(cgroup_id = cg, identity_id = id, "kernel binding not in the state; removing it");
                self.kernel.unbind(cg)?;
                r.dropped += 1;
            }
        }
        for (cg, id) in &want {
            if have.get(cg) != Some(id) {
                self.kernel.bind(*cg, *id)?;
                r.bound += 1;
            }
        }
        // Processes that are in bound cgroups keep their identity in the kernel
        // (it follows them if they move); record the ones already there.
        for b in self.state.bindings.values() {
            let Some(id) = self.state.identities.get(&b.identity).map(|i| i.id) else { continue };
            if want.get(&b.cgroup_id) == Some(&id) {
                if let Err(e) = self.kernel.attribute_tasks(Path::new(&b.cgroup_path), b.cgroup_id, id) {
                    warn!(cgroup = %b.cgroup_path, error = %e, "could not record the processes of a bound cgroup");
                }
            }
        }
        if changed {
            if let Err(e) = self.store.save_bindings(self.state.bindings.values()) {
                // The kernel already has the right ids; the next start will find them again.
                warn!(error = %e, "could not record the new cgroup ids of recreated cgroups");
            }
        }
        Ok(r)
    }

    /// Installs a compiled policy under its name, as version N+1, for every
    /// identity using it; then persists it. On any failure the previous version
    /// stays in force everywhere and nothing is written.
    ///
    /// `by` is who asked; the apply is recorded as a `policy-apply` receipt.
    pub fn apply(&mut self, yaml: &str, file_name: &str, policy: Policy, compiled: CompiledPolicy, by: &Requester, now: SystemTime) -> Result<Applied, OpError> {
        let name = compiled.name.clone();
        identity::validate_name("policy", &name).map_err(OpError::Invalid)?;
        let previous = self.compiled(&name);
        let previous_version = self.version(&name);
        let version = previous_version.checked_add(1).ok_or_else(|| OpError::Invalid(format!("policy {name} has reached the last version number")))?;
        let compiled = Arc::new(compiled);
        let users: Vec<IdentityRecord> = self.state.identities.values().filter(|i| i.policy == name).cloned().collect();
        // A new version of the policy ends the exceptions approved under the old one.
        for rec in &users {
            self.exceptions.remove(&rec.id);
        }

        let rollback = |core: &mut Core, done: &[IdentityRecord]| {
            for rec in done {
                if let Err(e) = core.kernel.set_identity(rec.id, previous.as_deref(), previous_version, revoked_flag(rec), rec.expires_at()) {
                    warn!(identity = %rec.name, error = %e, "could not restore the previous policy in the kernel");
                }
            }
        };
        for (i, rec) in users.iter().enumerate() {
            if let Err(e) = self.kernel.set_identity(rec.id, Some(&compiled), version, revoked_flag(rec), rec.expires_at()) {
                rollback(self, &users[..=i]);
                return Err(OpError::Kernel(format!(
                    "agentd: the kernel refused policy {name} v{version} for identity {}: {e}; every identity keeps {}",
                    rec.name,
                    if previous_version == 0 { "what it had".to_string() } else { format!("v{previous_version}") }
                )));
            }
        }
        let record = PolicyRecord {
            yaml: yaml.to_string(),
            meta: PolicyMeta {
                version,
                hash: state::sha256_hex(yaml.as_bytes()),
                applied_at: state::rfc3339(now),
                file_name: file_name.to_string(),
            },
        };
        if let Err(e) = self.store.save_policy(&name, &record) {
            rollback(self, &users);
            return Err(state_err(e));
        }
        let hash = record.meta.hash.clone();
        self.state.policies.insert(name.clone(), record);
        self.remember(&name, version, compiled.clone());
        let description = policy.description().to_string();
        self.loaded.insert(name.clone(), Loaded { compiled, policy: Arc::new(policy), description });
        for rec in &users {
            self.denied.insert(rec.id, rec.denies_all(now));
        }
        self.tell_write_gate();
        // After memory is updated: the policy is in force whether or not the receipt is written.
        self.record(Draft::policy_apply(name.clone(), version, hash).requester(by.clone()).at(now), &format!("policy {name} v{version}"))?;
        Ok(Applied { name, version, identities: users.into_iter().map(|u| u.name).collect() })
    }

    /// Creates an identity under an existing policy: with a fresh key pair whose
    /// private key is stored 0600, or with the caller's public key (agentd then
    /// never has the private key).
    ///
    /// `by` is who asked; the creation is recorded as an `identity-create` receipt.
    pub fn create_identity(&mut self, spec: NewIdentity, by: &Requester, now: SystemTime) -> Result<IdentityRecord, OpError> {
        let NewIdentity { name, policy, owner, public_key, expires, labels } = spec;
        let name = name.as_str();
        identity::validate_name("identity", name).map_err(|e| OpError::Invalid(format!("agentd: {e}")))?;
        if self.state.identities.contains_key(name) {
            return Err(OpError::Exists(format!("agentd: identity {name:?} already exists (see `agentctl identity show {name}`)")));
        }
        if policy.is_empty() {
            return Err(OpError::Invalid(format!(
                "agentd: identity {name:?} needs a policy: `agentctl identity create {name} --policy POLICY` (`agentctl policy list` shows them)"
            )));
        }
        if !self.state.policies.contains_key(&policy) {
            return Err(OpError::NotFound(format!(
                "agentd: no policy named {policy:?}: apply it first with `agentctl policy apply FILE` (`agentctl policy list` shows the applied ones)"
            )));
        }
        for (k, v) in &labels {
            identity::validate_label(k, v).map_err(|e| OpError::Invalid(format!("agentd: {e}")))?;
        }
        if let Some(at) = expires {
            if at <= now {
                return Err(OpError::Invalid(format!(
                    "agentd: identity {name:?} would expire at {}, which is not in the future",
                    state::rfc3339(at)
                )));
            }
        }
        let id = identity::next_id(self.state.identities.values().map(|i| i.id), self.state.next_identity_id)
            .ok_or_else(|| OpError::Invalid("agentd: every identity id has been used".into()))?;
        let (key, public) = match public_key {
            Some(pk) => (None, pk),
            None => {
                let k = keys::generate();
                let pk = k.verifying_key();
                (Some(k), pk)
            }
        };
        let rec = IdentityRecord {
            name: name.to_string(),
            id,
            policy,
            owner,
            created_at: state::rfc3339(now),
            public_key: keys::public_hex(&public),
            external_key: key.is_none(),
            revoked: false,
            expires: expires.map(state::rfc3339),
            labels,
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        };
        self.install(&rec, now).map_err(kernel_err(format!("identity {name}")))?;
        // The id is retired before anything else is written, so even a failure or
        // a crash half way never hands it out twice.
        let persisted = self.store.save_meta(id + 1).and_then(|()| {
            self.state.next_identity_id = id + 1;
            if let Some(k) = &key {
                self.store.save_key(name, k)?;
            }
            self.store.save_identity(&rec)
        });
        if let Err(e) = persisted {
            let _ = self.kernel.remove_identity(id);
            self.denied.remove(&id);
            let _ = self.store.remove_identity(name);
            return Err(state_err(e));
        }
        self.state.identities.insert(name.to_string(), rec.clone());
        self.record(
            Draft::identity_create(name, rec.fingerprint(), rec.owner.clone(), rec.policy.clone()).requester(by.clone()).at(now),
            &format!("identity {name}"),
        )?;
        Ok(rec)
    }

    /// Revokes identity `name` for good: the kernel denies everything its bound
    /// cgroups do from their next action on (before this returns), and the state
    /// records who did it, when and why. There is no un-revoke: create a new
    /// identity (a new key) instead.
    ///
    /// `requester` is who asked (`by` its user name, kept in the state); the
    /// revocation is recorded as an `identity-revoke` receipt.
    pub fn revoke_identity(&mut self, name: &str, by: &str, requester: &Requester, reason: &str, now: SystemTime) -> Result<IdentityRecord, OpError> {
        let old = self.state.identities.get(name).cloned().ok_or_else(|| {
            OpError::NotFound(format!("agentd: no identity named {name:?} (`agentctl identity list` shows them)"))
        })?;
        if old.revoked {
            // Written again, in case recording the revocation failed the first time.
            self.store.save_identity(&old).map_err(state_err)?;
            return Err(OpError::Exists(format!(
                "agentd: identity {name:?} was already revoked at {} by {}",
                old.revoked_at.as_deref().unwrap_or("an unknown time"),
                old.revoked_by.as_deref().unwrap_or("an unknown user")
            )));
        }
        if reason.chars().count() > 512 || reason.chars().any(char::is_control) {
            return Err(OpError::Invalid("agentd: --reason must be at most 512 characters, on one line".into()));
        }
        let mut rec = old.clone();
        rec.revoked = true;
        rec.revoked_at = Some(state::rfc3339(now));
        rec.revoked_by = Some(by.to_string());
        rec.revoke_reason = (!reason.is_empty()).then(|| reason.to_string());
        // Kernel first: the revocation must bite even if the disk is full. If the
        // state cannot be written the kernel keeps denying until the next start
        // (which re-installs what the disk says), and the caller is told.
        self.exceptions.remove(&rec.id);
        self.install(&rec, now).map_err(kernel_err(format!("revoking identity {name}")))?;
        let saved = self.store.save_identity(&rec);
        // Memory follows the kernel either way, so nothing this daemon does (an
        // expiry refresh, a policy apply) re-installs the identity un-revoked.
        self.state.identities.insert(name.to_string(), rec.clone());
        if let Err(e) = saved {
            return Err(OpError::State(format!(
                "agentd: identity {name} is revoked in the kernel now, but the state directory could not record it, so a restart of agentd would un-revoke it: {e}; fix the disk and run the revoke again to record it"
            )));
        }
        self.record(
            Draft::identity_revoke(name, rec.fingerprint(), reason).requester(requester.clone()).at(now),
            &format!("the revocation of identity {name}"),
        )?;
        Ok(rec)
    }

    /// Binds the cgroup at `path` (canonical, already checked to be a bindable
    /// cgroup with id `cgroup_id`) to identity `identity`, replacing an earlier
    /// binding of the same cgroup.
    ///
    /// `by` is who asked; a change is recorded as a `bind` receipt (re-binding
    /// what is already bound changes nothing and records nothing).
    pub fn bind(&mut self, path: &str, cgroup_id: u64, identity: &str, by: &Requester, now: SystemTime) -> Result<Bound, OpError> {
        let id = self.state.identities.get(identity).map(|i| i.id).ok_or_else(|| {
            OpError::NotFound(format!(
                "agentd: no identity named {identity:?} (create it with `agentctl identity create {identity} --policy POLICY`; `agentctl identity list` shows them)"
            ))
        })?;
        let previous = self.state.bindings.get(path).cloned();
        let previous_id = previous.as_ref().and_then(|p| self.state.identities.get(&p.identity)).map(|i| i.id);
        if let Some(p) = &previous {
            if p.identity == identity && p.cgroup_id == cgroup_id {
                // Already so: make sure the kernel agrees, change nothing else.
                self.kernel.bind(cgroup_id, id).map_err(kernel_err(format!("binding {path}")))?;
                return Ok(Bound { binding: p.clone(), replaced: None });
            }
        }
        self.kernel.bind(cgroup_id, id).map_err(kernel_err(format!("binding {path}")))?;
        // The processes already there act for the identity from now on, wherever
        // they go; new ones inherit it at fork.
        self.kernel
            .attribute_tasks(Path::new(path), cgroup_id, id)
            .map_err(kernel_err(format!("recording the processes of {path}")))?;
        let binding = BindingRecord {
            cgroup_path: path.to_string(),
            cgroup_id,
            identity: identity.to_string(),
            bound_at: state::rfc3339(now),
        };
        let mut next = self.state.bindings.clone();
        next.insert(path.to_string(), binding.clone());
        if let Err(e) = self.store.save_bindings(next.values()) {
            let restored = match (&previous, previous_id) {
                (Some(p), Some(pid)) if p.cgroup_id == cgroup_id => self.kernel.bind(cgroup_id, pid),
                _ => self.kernel.unbind(cgroup_id),
            };
            if let Err(k) = restored {
                warn!(cgroup = %path, error = %k, "could not undo the kernel binding");
            }
            return Err(state_err(e));
        }
        // The same path with an older cgroup id: that cgroup is gone, drop its entry.
        if let Some(p) = &previous {
            if p.cgroup_id != cgroup_id {
                let _ = self.kernel.unbind(p.cgroup_id);
            }
        }
        self.state.bindings = next;
        let replaced = previous.map(|p| p.identity).filter(|p| p != identity);
        let mut draft = Draft::bind(path, cgroup_id, identity).requester(by.clone()).at(now);
        if let Some(old) = &replaced {
            draft = draft.param("replaced", old.clone());
        }
        self.record(draft, &format!("the binding of {path} to {identity}"))?;
        Ok(Bound { binding, replaced })
    }

    /// The identity the kernel keeps for process `tgid` (a bound process that
    /// left its cgroup still has it).
    pub fn task_identity(&self, tgid: u32) -> Option<String> {
        let id = self.kernel.task_identity(tgid)?;
        Some(self.state.identities.values().find(|i| i.id == id).map(|i| i.name.clone()).unwrap_or_else(|| format!("#{id}")))
    }

    /// The binding recorded for `path`, if any.
    pub fn binding(&self, path: &str) -> Option<&BindingRecord> {
        self.state.bindings.get(path)
    }

    /// The binding of the cgroup with id `cgroup_id`, if any.
    pub fn binding_by_id(&self, cgroup_id: u64) -> Option<&BindingRecord> {
        self.state.bindings.values().find(|b| b.cgroup_id == cgroup_id)
    }

    /// Removes the binding recorded under `path` (as stored). `by` is who asked;
    /// the removal is recorded as an `unbind` receipt.
    pub fn unbind(&mut self, path: &str, by: &Requester, now: SystemTime) -> Result<BindingRecord, OpError> {
        let b = self
            .state
            .bindings
            .get(path)
            .cloned()
            .ok_or_else(|| OpError::NotFound(format!("agentd: {path} is not bound (`agentctl bindings` lists the bound cgroups)")))?;
        self.kernel.unbind(b.cgroup_id).map_err(kernel_err(format!("unbinding {path}")))?;
        let mut next = self.state.bindings.clone();
        next.remove(path);
        if let Err(e) = self.store.save_bindings(next.values()) {
            if let Some(id) = self.state.identities.get(&b.identity).map(|i| i.id) {
                if let Err(k) = self.kernel.bind(b.cgroup_id, id) {
                    warn!(cgroup = %path, error = %k, "could not restore the kernel binding");
                }
            }
            return Err(state_err(e));
        }
        self.state.bindings = next;
        self.record(
            Draft::unbind(path, b.cgroup_id, b.identity.clone()).requester(by.clone()).at(now),
            &format!("the unbinding of {path}"),
        )?;
        Ok(b)
    }

    /// Re-installs identities whose expiry has passed since they were installed.
    /// Returns their names.
    pub fn refresh_expiry(&mut self, now: SystemTime) -> Vec<String> {
        let due: Vec<IdentityRecord> = self
            .state
            .identities
            .values()
            .filter(|r| self.denied.get(&r.id).copied() != Some(r.denies_all(now)))
            .cloned()
            .collect();
        let mut names = Vec::new();
        for rec in due {
            match self.install(&rec, now) {
                Ok(()) => names.push(rec.name),
                Err(e) => warn!(identity = %rec.name, error = %e, "could not install the expiry in the kernel; will retry"),
            }
        }
        names
    }

    /// (cgroup path, identity) of every binding, for the caller check.
    pub fn bound_cgroups(&self) -> Vec<(String, String)> {
        self.state.bindings.values().map(|b| (b.cgroup_path.clone(), b.identity.clone())).collect()
    }

    /// The identity bound to `cgroup` (the deepest bound ancestor, as the kernel
    /// attributes it), if any.
    pub fn identity_of_cgroup(&self, cgroup: &Path) -> Option<&IdentityRecord> {
        cgroup.ancestors().find_map(|p| {
            let b = self.state.bindings.get(p.to_str()?)?;
            self.state.identities.get(&b.identity)
        })
    }

    /// Whether an exec of `path` by a process in `cgroup` is one the policy says
    /// to ask about — the same question the kernel's exec check answers, here in
    /// userspace so the hold can show who, what and why. `None`: not held (the
    /// kernel decides it alone).
    pub fn exec_ask(&self, cgroup: &Path, path: &Path, now: SystemTime) -> Option<ExecAsk> {
        let rec = self.identity_of_cgroup(cgroup)?;
        if rec.denies_all(now) {
            return None;
        }
        let loaded = self.loaded.get(&rec.policy)?;
        if loaded.policy.mode() != Mode::Enforce {
            return None;
        }
        let d = evaluate_as(Some(&loaded.policy), Standing::Active, &Action::Exec { path: path.to_path_buf() });
        if d.action != ActionKind::Ask {
            return None;
        }
        Some(ExecAsk {
            identity: rec.name.clone(),
            identity_id: rec.id,
            owner: rec.owner.clone(),
            policy: rec.policy.clone(),
            policy_version: self.version(&rec.policy),
            rule_id: d.rule_id,
            rule: d.rule_text.unwrap_or_default(),
            approvals: loaded.policy.approvals,
            key_fingerprint: rec.fingerprint(),
            policy_hash: loaded.compiled.hash.clone(),
        })
    }

    /// A connect the kernel sent to the hold proxy: who asked and under which rule
    /// (as the kernel decided it: `policy_version` and `rule_id`), with the hold
    /// settings of the identity's policy. `None` when the identity is gone, or can
    /// no longer act (revoked, expired): such a connect is refused, not held.
    pub fn connect_ask(&self, identity_id: u32, policy_version: u32, rule_id: u32, now: SystemTime) -> Option<ExecAsk> {
        let rec = self.state.identity_by_id(identity_id)?;
        if rec.denies_all(now) {
            return None;
        }
        let loaded = self.loaded.get(&rec.policy)?;
        let (rule, policy_hash) = self.attribute(identity_id, policy_version, rule_id).map(|a| (a.rule, a.policy_hash)).unwrap_or_default();
        Some(ExecAsk {
            identity: rec.name.clone(),
            identity_id: rec.id,
            owner: rec.owner.clone(),
            policy: rec.policy.clone(),
            policy_version,
            rule_id,
            rule,
            approvals: loaded.policy.approvals,
            key_fingerprint: rec.fingerprint(),
            policy_hash,
        })
    }

    /// Whether identity `identity_id` may still act (exists, not revoked or expired).
    pub fn identity_active(&self, identity_id: u32, now: SystemTime) -> bool {
        self.state.identity_by_id(identity_id).is_some_and(|r| !r.denies_all(now))
    }

    /// Names an event's identity, policy and rule. The rule text comes from the
    /// version the kernel decided under, when it is still remembered.
    pub fn attribute(&self, identity_id: u32, policy_version: u32, rule_id: u32) -> Option<super::events::Attribution> {
        let rec = self.state.identity_by_id(identity_id)?;
        // Only the version that decided can name the rule: ids are per version.
        let table = self
            .history
            .get(&rec.policy)
            .and_then(|h| h.iter().find(|(v, _)| *v == policy_version).map(|(_, c)| c.clone()));
        let rule = match (rule_id, &table) {
            (0, _) | (_, None) => String::new(),
            (id, Some(t)) => t.rules.iter().find(|r| r.id == id).map(|r| r.text.clone()).unwrap_or_default(),
        };
        Some(super::events::Attribution {
            identity: rec.name.clone(),
            policy: rec.policy.clone(),
            rule,
            policy_hash: table.map(|t| t.hash.clone()).unwrap_or_default(),
            owner: rec.owner.clone(),
            key_fingerprint: rec.fingerprint(),
            // The policy in force now (the setting is not kept per version).
            receipts_allows: self.loaded.get(&rec.policy).is_some_and(|l| l.policy.receipts.allows),
        })
    }
}

/// `compiled` with `exceptions` added to its tables.
fn overlay(compiled: &CompiledPolicy, exceptions: &[&Exception]) -> Result<CompiledPolicy, String> {
    let mut writes = Vec::new();
    let mut udp = Vec::new();
    for e in exceptions {
        match &e.target {
            Excepted::Write(p) => writes.push((p.clone(), e.rule_id)),
            Excepted::Udp(a) => udp.push((a.ip(), a.port(), e.rule_id)),
        }
    }
    compiled.with_write_exceptions(&writes)?.with_udp_exceptions(&udp)
}

#[cfg(test)]
mod tests;
