//! The daemon's behaviour against a fake kernel: what ends up enforced and what
//! ends up on disk after each operation, including the failures.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::*;

/// What the fake kernel holds: identity id → (policy name, version, revoked).
#[derive(Default)]
struct FakeState {
    identities: HashMap<u32, (Option<String>, u32, bool)>,
    bindings: HashMap<u64, u32>,
    /// identity id → the expiry the kernel enforces by itself.
    expires: HashMap<u32, Option<std::time::SystemTime>>,
    /// set_identity fails for this id.
    refuse: Option<u32>,
    /// identity id → the rule tables last installed for it.
    tables: HashMap<u32, CompiledPolicy>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn get(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }
}

impl Kernel for Fake {
    fn set_identity(
        &mut self,
        id: u32,
        policy: Option<&CompiledPolicy>,
        version: u32,
        revoked: bool,
        expires: Option<std::time::SystemTime>,
    ) -> Result<(), EnforceError> {
        let mut s = self.get();
        if s.refuse == Some(id) {
            return Err(EnforceError::Other("map full".into()));
        }
        s.expires.insert(id, expires);
        match policy {
            Some(p) => s.tables.insert(id, p.clone()),
            None => s.tables.remove(&id),
        };
        s.identities.insert(id, (policy.map(|p| p.name.clone()), version, revoked));
        Ok(())
    }
    fn hits(&self, _id: u32) -> Result<Vec<(u8, u32, agent_common::Hits)>, EnforceError> {
        Ok(Vec::new())
    }
    fn remove_identity(&mut self, id: u32) -> Result<(), EnforceError> {
        self.get().identities.remove(&id);
        Ok(())
    }
    fn bind(&mut self, cgroup_id: u64, id: u32) -> Result<(), EnforceError> {
        self.get().bindings.insert(cgroup_id, id);
        Ok(())
    }
    fn unbind(&mut self, cgroup_id: u64) -> Result<(), EnforceError> {
        self.get().bindings.remove(&cgroup_id);
        Ok(())
    }
    fn attribute_tasks(&mut self, _path: &std::path::Path, _cgroup_id: u64, _id: u32) -> Result<usize, EnforceError> {
        Ok(0)
    }
    fn task_identity(&self, _tgid: u32) -> Option<u32> {
        None
    }
    fn repair_drift(&mut self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    fn kernel_bindings(&self) -> Result<Vec<(u64, u32)>, EnforceError> {
        Ok(self.get().bindings.iter().map(|(c, i)| (*c, *i)).collect())
    }
    fn report(&self) -> MechanismReport {
        MechanismReport::default()
    }
    fn counters(&self) -> Result<Counters, EnforceError> {
        Ok(Counters::default())
    }
}

fn policy_text(name: &str, exec_default: &str) -> String {
    format!(
        "apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata:\n  name: {name}\n  description: test policy {name}\nspec:\n  mode: enforce\n  exec:\n    default: {exec_default}\n    rules:\n      - {{path: /usr/bin/git, action: allow}}\n      - {{path: /usr/bin/curl, action: deny}}\n  write:\n    default: deny\n  egress:\n    default: deny\n"
    )
}

struct World {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    kernel: Fake,
    core: Core,
    journal: Arc<Journal>,
}

/// The journal the daemon opens, in `<state>/receipts`.
fn open_journal(state_dir: &std::path::Path) -> Arc<Journal> {
    super::super::open_receipts(state_dir).unwrap()
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = Store::open(&path).unwrap();
    let (state, _) = store.load().unwrap();
    let kernel = Fake::default();
    let journal = open_journal(&path);
    let core = Core::new(Box::new(kernel.clone()), store, state, journal.clone());
    World { _dir: dir, dir: path, kernel, core, journal }
}

/// The person at agentctl in these tests.
fn who() -> Requester {
    Requester::person("alice", 1000, 4242, "/usr/bin/agentctl")
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl World {
    fn apply(&mut self, name: &str, exec_default: &str) -> Result<Applied, OpError> {
        let text = policy_text(name, exec_default);
        let (p, c) = state::compile_policy(&format!("{name}.yaml"), &text, &Builtins::default()).unwrap_or_else(|e| panic!("{e}"));
        self.core.apply(&text, &format!("{name}.yaml"), p, c, &who(), now())
    }

    /// The state as a restarted agentd would read it.
    fn on_disk(&self) -> State {
        Store::open(&self.dir).unwrap().load().unwrap().0
    }
}

#[test]
fn apply_create_bind_reach_kernel_and_disk() {
    let mut w = world();
    let a = w.apply("coding", "deny").unwrap();
    assert_eq!((a.name.as_str(), a.version, a.identities.len()), ("coding", 1, 0));
    let rec = w.core.create_identity(NewIdentity::new("coder", "coding", "alice"), &who(), now()).unwrap();
    assert_eq!(rec.id, 1);
    assert_eq!(w.kernel.get().identities[&1], (Some("coding".into()), 1, false));
    let b = w.core.bind("/cg/agents/coder", 500, "coder", &who(), now()).unwrap();
    assert_eq!(b.replaced, None);
    assert_eq!(w.kernel.get().bindings[&500], 1);

    // Re-apply: version 2 reaches every identity using it.
    let a = w.apply("coding", "allow").unwrap();
    assert_eq!((a.version, a.identities.clone()), (2, vec!["coder".to_string()]));
    assert_eq!(w.kernel.get().identities[&1], (Some("coding".into()), 2, false));

    let disk = w.on_disk();
    assert_eq!(&disk, w.core.state(), "what is enforced is what a restart would enforce");
    assert_eq!(disk.policies["coding"].meta.version, 2);
    assert_eq!(disk.policies["coding"].yaml, policy_text("coding", "allow"));
    assert_eq!(disk.bindings["/cg/agents/coder"].cgroup_id, 500);
    assert_eq!(disk.identities["coder"].owner, "alice");
    assert!(Store::open(&w.dir).unwrap().load_key("coder").is_ok());
}

#[test]
fn a_kernel_refusal_keeps_the_previous_policy_everywhere() {
    let mut w = world();
    w.apply("coding", "deny").unwrap();
    w.core.create_identity(NewIdentity::new("one", "coding", "alice"), &who(), now()).unwrap();
    w.core.create_identity(NewIdentity::new("two", "coding", "alice"), &who(), now()).unwrap();
    w.kernel.get().refuse = Some(2);
    let e = w.apply("coding", "allow").unwrap_err();
    assert!(matches!(&e, OpError::Kernel(m) if m.contains("identity two") && m.contains("keeps v1")), "{e}");
    w.kernel.get().refuse = None;
    let k = w.kernel.get();
    assert_eq!(k.identities[&1].1, 1, "identity one rolled back to v1");
    assert_eq!(k.identities[&2].1, 1);
    drop(k);
    assert_eq!(w.core.state().policies["coding"].meta.version, 1);
    assert_eq!(w.on_disk().policies["coding"].yaml, policy_text("coding", "deny"), "nothing persisted");
    // The next apply is version 2, not 3.
    assert_eq!(w.apply("coding", "allow").unwrap().version, 2);
}

#[test]
fn a_failed_write_rolls_the_kernel_back() {
    let mut w = world();
    w.apply("coding", "deny").unwrap();
    w.core.create_identity(NewIdentity::new("coder", "coding", "alice"), &who(), now()).unwrap();
    // Make the policies directory unwritable even for root: replace it with a file.
    let policies = w.dir.join("policies");
    std::fs::rename(&policies, w.dir.join("policies.moved")).unwrap();
    std::fs::write(&policies, "").unwrap();
    let e = w.apply("coding", "allow").unwrap_err();
    assert!(matches!(&e, OpError::State(m) if m.contains("nothing changed")), "{e}");
    assert_eq!(w.kernel.get().identities[&1].1, 1, "kernel back on v1");
    assert_eq!(w.core.state().policies["coding"].meta.version, 1);
}

#[test]
fn identity_create_checks() {
    let mut w = world();
    let e = w.core.create_identity(NewIdentity::new("coder", "missing", "alice"), &who(), now()).unwrap_err();
    assert!(matches!(&e, OpError::NotFound(m) if m.contains("agentctl policy apply FILE")), "{e}");
    w.apply("coding", "deny").unwrap();
    let e = w.core.create_identity(NewIdentity::new("Coder!", "coding", "alice"), &who(), now()).unwrap_err();
    assert!(matches!(e, OpError::Invalid(_)), "{e}");
    let e = w.core.create_identity(NewIdentity::new("coder", "", "alice"), &who(), now()).unwrap_err();
    assert!(matches!(&e, OpError::Invalid(m) if m.contains("--policy")), "{e}");
    w.core.create_identity(NewIdentity::new("coder", "coding", "alice"), &who(), now()).unwrap();
    let e = w.core.create_identity(NewIdentity::new("coder", "coding", "alice"), &who(), now()).unwrap_err();
    assert!(matches!(e, OpError::Exists(_)), "{e}");
    let second = w.core.create_identity(NewIdentity::new("reviewer", "coding", "bob"), &who(), now()).unwrap();
    assert_eq!(second.id, 2);
    assert_eq!(w.on_disk().next_identity_id, 3);
    assert_ne!(w.core.state().identities["coder"].public_key, second.public_key);
    // No identity is left behind in the kernel by the failed attempts.
    assert_eq!(w.kernel.get().identities.len(), 2);
}

#[test]
fn a_failed_identity_create_leaves_nothing() {
    let mut w = world();
    w.apply("coding", "deny").unwrap();
    let ids = w.dir.join("identities");
    std::fs::remove_dir(&ids).unwrap();
    std::fs::write(&ids, "").unwrap();
    let e = w.core.create_identity(NewIdentity::new("coder", "coding", "alice"), &who(), now()).unwrap_err();
    assert!(matches!(e, OpError::State(_)), "{e}");
    assert!(w.kernel.get().identities.is_empty());
    assert!(w.core.state().identities.is_empty());
    assert!(!w.dir.join("keys/coder.key").exists());
    // Its id stays retired.
    std::fs::remove_file(&ids).unwrap();
    std::fs::create_dir(&ids).unwrap();
    assert_eq!(w.core.create_identity(NewIdentity::new("coder", "coding", "alice"), &who(), now()).unwrap().id, 2);
}

#[test]
fn bind_replace_and_unbind() {
    let mut w = world();
    w.apply("coding", "deny").unwrap();
    w.core.create_identity(NewIdentity::new("a", "coding", "alice"), &who(), now()).unwrap();
    w.core.create_identity(NewIdentity::new("b", "coding", "alice"), &who(), now()).unwrap();
    let e = w.core.bind("/cg/x", 10, "nobody-here", &who(), now()).unwrap_err();
    assert!(matches!(&e, OpError::NotFound(m) if m.contains("no identity named \"nobody-here\"")), "{e}");
    assert!(w.kernel.get().bindings.is_empty());

    w.core.bind("/cg/x", 10, "a", &who(), now()).unwrap();
    let again = w.core.bind("/cg/x", 10, "a", &who(), now()).unwrap();
    assert_eq!(again.replaced, None);
    let r = w.core.bind("/cg/x", 10, "b", &who(), now()).unwrap();
    assert_eq!(r.replaced.as_deref(), Some("a"));
    assert_eq!(w.kernel.get().bindings[&10], 2);
    // The same path, recreated with a new id: the old entry goes.
    w.core.bind("/cg/x", 11, "b", &who(), now()).unwrap();
    assert_eq!(w.kernel.get().bindings.keys().copied().collect::<Vec<_>>(), vec![11]);

    let e = w.core.unbind("/cg/y", &who(), now()).unwrap_err();
    assert!(matches!(&e, OpError::NotFound(m) if m.contains("is not bound")), "{e}");
    let b = w.core.unbind("/cg/x", &who(), now()).unwrap();
    assert_eq!((b.identity.as_str(), b.cgroup_id), ("b", 11));
    assert!(w.kernel.get().bindings.is_empty());
    assert!(w.on_disk().bindings.is_empty());
}

#[test]
fn restart_reconciles_kernel_with_state() {
    let mut w = world();
    w.apply("coding", "deny").unwrap();
    w.core.create_identity(NewIdentity::new("a", "coding", "alice"), &who(), now()).unwrap();
    w.core.create_identity(NewIdentity::new("b", "coding", "alice"), &who(), now()).unwrap();
    w.core.bind("/cg/kept", 1, "a", &who(), now()).unwrap();
    w.core.bind("/cg/recreated", 2, "b", &who(), now()).unwrap();
    w.core.bind("/cg/gone", 3, "a", &who(), now()).unwrap();
    // The kernel also has a binding nobody recorded, and lost one. Dropped: the
    // unrecorded one and the stale ids of the recreated and the vanished cgroups.
    w.kernel.get().bindings.insert(99, 1);
    w.kernel.get().bindings.remove(&1);
    w.kernel.get().identities.clear();

    // A new daemon: same state dir, same (pinned) kernel.
    let store = Store::open(&w.dir).unwrap();
    let (state, _) = store.load().unwrap();
    let mut core = Core::new(Box::new(w.kernel.clone()), store, state, w.journal.clone());
    let probe = |p: &Path| match p.to_str() {
        Some("/cg/kept") => Some(1),
        Some("/cg/recreated") => Some(20),
        _ => None,
    };
    let r = core.reconcile(&probe, now()).unwrap();
    assert_eq!(r, Reconciled { identities: 2, adopted: 0, bound: 2, dropped: 3, missing: 1, broken_policies: vec![] });
    let k = w.kernel.get();
    let mut bindings: Vec<_> = k.bindings.iter().map(|(c, i)| (*c, *i)).collect();
    bindings.sort();
    assert_eq!(bindings, vec![(1, 1), (20, 2)]);
    assert_eq!(k.identities[&1], (Some("coding".into()), 1, false));
    drop(k);
    // The recreated cgroup's new id is recorded; the vanished one is kept.
    let disk = Store::open(&w.dir).unwrap().load().unwrap().0;
    assert_eq!(disk.bindings["/cg/recreated"].cgroup_id, 20);
    assert!(disk.bindings.contains_key("/cg/gone"));

    // Nothing to do the second time: everything is adopted.
    let r = core.reconcile(&probe, now()).unwrap();
    assert_eq!((r.adopted, r.bound, r.dropped), (2, 0, 0));
}

#[test]
fn a_policy_that_no_longer_compiles_denies_its_identities() {
    let mut w = world();
    w.apply("coding", "deny").unwrap();
    w.core.create_identity(NewIdentity::new("a", "coding", "alice"), &who(), now()).unwrap();
    std::fs::write(w.dir.join("policies/coding.yaml"), "apiVersion: agentd.io/v1\nkind: Nonsense\n").unwrap();
    let store = Store::open(&w.dir).unwrap();
    let (state, _) = store.load().unwrap();
    let mut core = Core::new(Box::new(w.kernel.clone()), store, state, w.journal.clone());
    let r = core.reconcile(&|_: &Path| None, now()).unwrap();
    assert_eq!(r.broken_policies, vec!["coding".to_string()]);
    assert_eq!(w.kernel.get().identities[&1].0, None, "no policy: the kernel denies everything");
    let rec = core.state().identities["a"].clone();
    assert_eq!(rec.state(now(), core.loaded("coding").is_some()).as_str(), "no-policy");
}

#[test]
fn expiry_reaches_the_kernel() {
    let mut w = world();
    w.apply("coding", "deny").unwrap();
    w.core.create_identity(NewIdentity::new("temp", "coding", "alice"), &who(), now()).unwrap();
    // Give it an expiry an hour from now, as a restarted daemon would read it.
    let mut rec = w.core.state().identities["temp"].clone();
    rec.expires = Some(state::rfc3339(now() + Duration::from_secs(3600)));
    w.core.store().save_identity(&rec).unwrap();
    let store = Store::open(&w.dir).unwrap();
    let (state, _) = store.load().unwrap();
    let mut core = Core::new(Box::new(w.kernel.clone()), store, state, w.journal.clone());
    core.reconcile(&|_: &Path| None, now()).unwrap();
    assert!(!w.kernel.get().identities[&1].2);
    // The kernel gets the expiry itself, so it denies at that instant even with
    // agentd down; the revoked flag is not how expiry is enforced.
    let at = rec.expires_at().expect("parses");
    assert_eq!(w.kernel.get().expires[&1], Some(at));
    assert!(core.refresh_expiry(now()).is_empty());
    assert_eq!(core.refresh_expiry(now() + Duration::from_secs(7200)), vec!["temp".to_string()]);
    assert_eq!(w.kernel.get().expires[&1], Some(at), "still handed to the kernel");
    assert!(core.refresh_expiry(now() + Duration::from_secs(7300)).is_empty(), "only once");
    // An expiry that does not parse cannot be handed to the kernel: revoked flag.
    let mut bad = core.state().identities["temp"].clone();
    bad.expires = Some("next tuesday".into());
    assert!(revoked_flag(&bad));
}

#[test]
fn events_name_rules_of_the_version_that_decided() {
    let mut w = world();
    w.apply("coding", "deny").unwrap();
    w.core.create_identity(NewIdentity::new("coder", "coding", "alice"), &who(), now()).unwrap();
    let v1_rule = w.core.loaded("coding").unwrap().compiled.rules[1].clone();
    assert!(v1_rule.text.contains("/usr/bin/curl"), "{v1_rule:?}");
    // v2 reorders the rules: rule 2 of v2 is another rule.
    let text = "apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata:\n  name: coding\nspec:\n  mode: enforce\n  exec:\n    default: deny\n    rules:\n      - {path: /usr/bin/ssh, action: deny}\n      - {path: /usr/bin/git, action: allow}\n  write:\n    default: deny\n  egress:\n    default: deny\n";
    let (p, c) = state::compile_policy("coding.yaml", text, &Builtins::default()).unwrap();
    w.core.apply(text, "coding.yaml", p, c, &who(), now()).unwrap();
    let a = w.core.attribute(1, 1, v1_rule.id).unwrap();
    assert_eq!((a.identity.as_str(), a.policy.as_str(), a.rule.as_str()), ("coder", "coding", v1_rule.text.as_str()));
    let a = w.core.attribute(1, 2, v1_rule.id).unwrap();
    assert!(a.rule.contains("/usr/bin/git"), "{a:?}");
    assert_eq!(w.core.attribute(1, 2, 0).unwrap().rule, "", "the default has no rule text");
    assert!(w.core.attribute(42, 1, 1).is_none());
}

#[test]
fn revoke_reaches_the_kernel_at_once_and_survives_a_restart() {
    let mut w = world();
    w.apply("coding", "allow").unwrap();
    w.core.create_identity(NewIdentity::new("coder", "coding", "alice"), &who(), now()).unwrap();
    w.core.bind("/cg/coder", 7, "coder", &who(), now()).unwrap();
    let e = w.core.revoke_identity("ghost", "root", &who(), "", now()).unwrap_err();
    assert!(matches!(&e, OpError::NotFound(m) if m.contains("no identity named \"ghost\"")), "{e}");
    let e = w.core.revoke_identity("coder", "root", &who(), "two\nlines", now()).unwrap_err();
    assert!(matches!(e, OpError::Invalid(_)), "{e}");
    assert!(!w.kernel.get().identities[&1].2, "a refused revoke changes nothing");

    let rec = w.core.revoke_identity("coder", "bob", &who(), "key leaked", now()).unwrap();
    assert_eq!(w.kernel.get().identities[&1], (Some("coding".into()), 1, true), "revoked in the kernel");
    assert_eq!(w.kernel.get().bindings[&7], 1, "the binding stays: its processes are denied, not unconfined");
    assert_eq!((rec.revoked_by.as_deref(), rec.revoke_reason.as_deref()), (Some("bob"), Some("key leaked")));
    assert!(rec.revoked_at.is_some());
    let disk = w.on_disk().identities["coder"].clone();
    assert_eq!(disk, rec, "recorded for the next start");

    let e = w.core.revoke_identity("coder", "root", &who(), "", now()).unwrap_err();
    assert!(matches!(&e, OpError::Exists(m) if m.contains("already revoked") && m.contains("by bob")), "{e}");
    // Neither a re-apply nor an expiry refresh brings it back.
    w.apply("coding", "deny").unwrap();
    assert!(w.kernel.get().identities[&1].2);
    assert!(w.core.refresh_expiry(now()).is_empty());
    let store = Store::open(&w.dir).unwrap();
    let (state, _) = store.load().unwrap();
    let mut core = Core::new(Box::new(w.kernel.clone()), store, state, w.journal.clone());
    w.kernel.get().identities.clear();
    core.reconcile(&|_: &Path| Some(7), now()).unwrap();
    assert!(w.kernel.get().identities[&1].2, "revoked again after a restart");
    assert_eq!(core.state().identities["coder"].state(now(), true).as_str(), "revoked");
}

#[test]
fn a_revoke_that_cannot_be_recorded_still_denies_and_says_so() {
    let mut w = world();
    w.apply("coding", "allow").unwrap();
    w.core.create_identity(NewIdentity::new("coder", "coding", "alice"), &who(), now()).unwrap();
    let ids = w.dir.join("identities");
    std::fs::rename(&ids, w.dir.join("identities.moved")).unwrap();
    std::fs::write(&ids, "").unwrap();
    let e = w.core.revoke_identity("coder", "root", &who(), "", now()).unwrap_err();
    assert!(matches!(&e, OpError::State(m) if m.contains("revoked in the kernel now")), "{e}");
    assert!(w.kernel.get().identities[&1].2, "the kernel denies even so");
    assert!(w.core.refresh_expiry(now()).is_empty(), "and nothing re-installs it un-revoked");
    // Once the disk is back, revoking again records it.
    std::fs::remove_file(&ids).unwrap();
    std::fs::rename(w.dir.join("identities.moved"), &ids).unwrap();
    let e = w.core.revoke_identity("coder", "root", &who(), "", now()).unwrap_err();
    assert!(matches!(e, OpError::Exists(_)), "{e}");
    assert!(w.on_disk().identities["coder"].revoked);
}

#[test]
fn identities_with_a_given_key_an_expiry_and_labels() {
    let mut w = world();
    w.apply("coding", "deny").unwrap();
    let theirs = keys::generate().verifying_key();
    let at = now() + Duration::from_secs(600);
    let mut spec = NewIdentity::new("ci", "coding", "ci-bot");
    spec.public_key = Some(theirs);
    spec.expires = Some(at);
    spec.labels.insert("team".into(), "platform".into());
    let rec = w.core.create_identity(spec, &who(), now()).unwrap();
    assert_eq!(rec.public_key, keys::public_hex(&theirs));
    assert!(!w.dir.join("keys/ci.key").exists(), "agentd never holds the private half of a given key");
    assert_eq!(rec.expires, Some(state::rfc3339(at)));
    assert_eq!(w.kernel.get().expires[&1], rec.expires_at(), "the kernel enforces the expiry itself");
    assert!(!w.kernel.get().identities[&1].2);
    assert_eq!(w.on_disk().identities["ci"].labels["team"], "platform");

    // A generated key's private half is stored, 0600.
    w.core.create_identity(NewIdentity::new("coder", "coding", "alice"), &who(), now()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(w.dir.join("keys/coder.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut past = NewIdentity::new("late", "coding", "alice");
    past.expires = Some(now() - Duration::from_secs(1));
    let e = w.core.create_identity(past, &who(), now()).unwrap_err();
    assert!(matches!(&e, OpError::Invalid(m) if m.contains("not in the future")), "{e}");
    let mut bad = NewIdentity::new("odd", "coding", "alice");
    bad.labels.insert("no spaces".into(), "x".into());
    let e = w.core.create_identity(bad, &who(), now()).unwrap_err();
    assert!(matches!(&e, OpError::Invalid(m) if m.contains("label key")), "{e}");
    assert_eq!(w.kernel.get().identities.len(), 2, "refused creates leave nothing in the kernel");
}

/// Every receipt in the journal, made durable first.
fn receipts(w: &World) -> Vec<crate::receipts::Stored> {
    w.journal.flush().unwrap();
    w.journal.query(crate::receipts::Filter::default()).unwrap().map(|r| r.unwrap()).collect()
}

/// The journal's export verifies with the node's public key alone.
fn assert_export_verifies(w: &World) {
    let lines: Vec<String> = receipts(w).into_iter().map(|s| s.line).collect();
    let key = crate::receipts::NodeKey::load(&super::super::receipts_dir(&w.dir)).unwrap().public_key();
    let report = crate::receipts::verify_lines(lines.iter().map(String::as_str), &key);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.receipts, lines.len() as u64);
}

#[test]
fn admin_changes_are_recorded_as_verifiable_receipts() {
    use crate::receipts::ReceiptType;
    let mut w = world();
    w.apply("coding", "deny").unwrap();
    let rec = w.core.create_identity(NewIdentity::new("coder", "coding", "bob"), &who(), now()).unwrap();
    w.core.bind("/cg/agents/coder", 500, "coder", &who(), now()).unwrap();
    // Binding what is already bound changes nothing, and records nothing.
    w.core.bind("/cg/agents/coder", 500, "coder", &who(), now()).unwrap();
    w.core.unbind("/cg/agents/coder", &who(), now()).unwrap();
    w.core.revoke_identity("coder", "alice", &who(), "key leaked", now()).unwrap();

    let all = receipts(&w);
    let kinds: Vec<ReceiptType> = all.iter().map(|s| s.receipt.kind).collect();
    assert_eq!(
        kinds,
        [ReceiptType::PolicyApply, ReceiptType::IdentityCreate, ReceiptType::Bind, ReceiptType::Unbind, ReceiptType::IdentityRevoke]
    );
    for s in &all {
        let r = &s.receipt.requester;
        assert_eq!((r.owner.as_str(), r.uid, r.pid, r.executable.as_str()), ("alice", Some(1000), Some(4242), "/usr/bin/agentctl"));
    }
    let apply = &all[0].receipt;
    let hash = &w.core.state().policies["coding"].meta.hash;
    assert_eq!((apply.decision.policy.as_str(), apply.decision.policy_version, &apply.decision.policy_hash), ("coding", Some(1), hash));
    let create = &all[1].receipt;
    assert_eq!(create.action.target, "coder");
    assert_eq!(create.action.parameters["key_fingerprint"], rec.fingerprint().as_str());
    assert_eq!(create.action.parameters["owner"], "bob");
    assert_eq!(create.action.parameters["policy"], "coding");
    for s in &all[2..4] {
        let r = &s.receipt;
        assert_eq!(r.action.target, "/cg/agents/coder");
        assert_eq!(r.action.parameters["cgroup_id"], 500);
        assert_eq!(r.action.parameters["identity"], "coder");
    }
    let revoke = &all[4].receipt;
    assert_eq!((revoke.action.target.as_str(), revoke.decision.reason.as_str()), ("coder", "key leaked"));
    assert_eq!(revoke.action.parameters["key_fingerprint"], rec.fingerprint().as_str());
    assert_export_verifies(&w);
}

#[test]
fn a_refused_change_records_nothing() {
    let mut w = world();
    w.apply("coding", "deny").unwrap();
    w.core.create_identity(NewIdentity::new("one", "coding", "alice"), &who(), now()).unwrap();
    let before = receipts(&w).len();
    w.kernel.get().refuse = Some(1);
    w.apply("coding", "allow").unwrap_err();
    w.core.bind("/cg/x", 10, "nobody-here", &who(), now()).unwrap_err();
    w.core.unbind("/cg/y", &who(), now()).unwrap_err();
    assert_eq!(receipts(&w).len(), before);
}

#[test]
fn a_journal_that_cannot_be_opened_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    // `receipts` is a file, not a directory.
    std::fs::write(dir.path().join("receipts"), b"not a directory").unwrap();
    let e = super::super::open_receipts(dir.path()).map(|_| ()).unwrap_err();
    assert!(matches!(e, super::super::DaemonError::Receipts { .. }), "{e}");
    assert!(e.to_string().contains("receipt journal"), "{e}");
}

#[test]
fn the_receipts_directory_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = world();
    let mode = std::fs::metadata(super::super::receipts_dir(&w.dir)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn events_carry_what_receipts_need() {
    let mut w = world();
    w.apply("coding", "deny").unwrap();
    let rec = w.core.create_identity(NewIdentity::new("coder", "coding", "bob"), &who(), now()).unwrap();
    let a = w.core.attribute(rec.id, 1, 0).unwrap();
    assert_eq!((a.owner.as_str(), a.key_fingerprint.as_str(), a.receipts_allows), ("bob", rec.fingerprint().as_str(), false));
    let text = policy_text("coding", "deny") + "  receipts:\n    allows: true\n";
    let (p, c) = state::compile_policy("coding.yaml", &text, &Builtins::default()).unwrap();
    w.core.apply(&text, "coding.yaml", p, c, &who(), now()).unwrap();
    assert!(w.core.attribute(rec.id, 2, 0).unwrap().receipts_allows);
}

#[test]
fn a_receipt_that_cannot_be_recorded_is_an_error_but_the_change_stands() {
    use crate::receipts::{JournalOptions, NodeKey};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = Store::open(&path).unwrap();
    let (state, _) = store.load().unwrap();
    let kernel = Fake::default();
    let jdir = dir.path().join("journal");
    // Every batch starts a new segment file, so a journal directory that is gone
    // makes the next write fail; two receipts may wait in memory.
    let opts = JournalOptions { segment_bytes: 1, max_pending: 2, ..JournalOptions::default() };
    let journal = Arc::new(Journal::open(&jdir, NodeKey::load_or_create(&jdir).unwrap(), "h", opts).unwrap());
    let mut core = Core::new(Box::new(kernel.clone()), store, state, journal.clone());
    let text = policy_text("coding", "deny");
    let (p, c) = state::compile_policy("coding.yaml", &text, &Builtins::default()).unwrap();
    core.apply(&text, "coding.yaml", p, c, &who(), now()).unwrap();
    core.create_identity(NewIdentity::new("coder", "coding", "alice"), &who(), now()).unwrap();
    journal.flush().unwrap();

    std::fs::rename(&jdir, dir.path().join("journal.moved")).unwrap();
    std::fs::write(&jdir, b"not a directory").unwrap();
    // The writer fails on the next batch; the receipt waits in memory.
    journal.append(crate::receipts::Draft::bind("/cg/probe", 1, "coder")).unwrap();
    assert!(journal.flush().is_err(), "the journal should be degraded");
    assert!(journal.health().degraded.is_some());
    // Room in the backlog (the failed batch is held apart from it): the changes
    // and their receipts (in memory) go ahead.
    core.bind("/cg/w", 11, "coder", &who(), now()).unwrap();
    core.bind("/cg/v", 12, "coder", &who(), now()).unwrap();
    // The backlog full: the change is made but says its receipt is missing.
    let e = core.bind("/cg/x", 10, "coder", &who(), now()).unwrap_err();
    assert!(matches!(e, OpError::Receipt(_)), "{e:?}");
    assert!(e.to_string().contains("in force, but its receipt could not be recorded"), "{e}");
    // Not undone: the kernel enforces the binding and the state has it.
    assert_eq!(kernel.get().bindings.get(&10), Some(&1));
    assert!(core.binding("/cg/x").is_some());
    assert!(Store::open(&path).unwrap().load().unwrap().0.bindings.contains_key("/cg/x"));
    assert_eq!(journal.health().unrecorded, 1);
}

#[test]
fn an_ask_carries_what_hold_receipts_need() {
    let mut w = world();
    w.apply("coding", "ask").unwrap();
    let rec = w.core.create_identity(NewIdentity::new("coder", "coding", "bob"), &who(), now()).unwrap();
    w.core.bind("/cg/agents/coder", 500, "coder", &who(), now()).unwrap();
    let ask = w.core.exec_ask(std::path::Path::new("/cg/agents/coder"), std::path::Path::new("/usr/bin/make"), now()).expect("an ask");
    assert_eq!(ask.key_fingerprint, rec.fingerprint());
    assert_eq!(ask.policy_hash, w.core.state().policies["coding"].meta.hash);
}

#[test]
fn an_approved_write_request_opens_one_file_until_its_time_is_up() {
    use agent_common::action;
    let mut w = world();
    let text = policy_text("p", "allow").replace("  write:\n    default: deny\n", "  write:\n    default: allow\n    rules:\n      - {path: \"/home/a/.ssh/**\", action: ask}\n");
    let (p, c) = state::compile_policy("p.yaml", &text, &Builtins::default()).unwrap();
    w.core.apply(&text, "p.yaml", p, c, &who(), now()).unwrap();
    let rec = w.core.create_identity(NewIdentity::new("coder", "p", "alice"), &who(), now()).unwrap();
    let lookup = |w: &World, path: &str| w.kernel.get().tables[&rec.id].path_lookup(crate::policy::RuleKind::Write, path.as_bytes());
    let t0 = now();
    let ask = w.core.write_ask(rec.id, Path::new("/home/a/.ssh/config"), t0).expect("an ask write");
    assert_eq!((ask.identity.as_str(), ask.rule_id), ("coder", 3));
    assert!(w.core.write_ask(rec.id, Path::new("/tmp/x"), t0).is_none(), "allowed writes are no request");
    assert_eq!(lookup(&w, "/home/a/.ssh/config"), Some((action::ASK, 3)));

    let until = t0 + std::time::Duration::from_secs(60);
    w.core.grant(rec.id, Excepted::Write("/home/a/.ssh/config".into()), 3, until, t0).unwrap();
    assert_eq!(lookup(&w, "/home/a/.ssh/config"), Some((action::ALLOW, 3)));
    assert_eq!(lookup(&w, "/home/a/.ssh/id_ed25519"), Some((action::ASK, 3)));
    assert_eq!(w.core.exceptions(t0).len(), 1);
    // Not yet: nothing ends.
    assert!(w.core.expire_exceptions(t0 + std::time::Duration::from_secs(59)).is_empty());
    assert_eq!(lookup(&w, "/home/a/.ssh/config"), Some((action::ALLOW, 3)));
    // Time is up: asked about again.
    let ended = w.core.expire_exceptions(until);
    assert_eq!(ended, vec![("coder".to_string(), Excepted::Write("/home/a/.ssh/config".into()))]);
    assert_eq!(lookup(&w, "/home/a/.ssh/config"), Some((action::ASK, 3)));
    assert!(w.core.exceptions(until).is_empty());

    // A new version of the policy ends exceptions at once.
    w.core.grant(rec.id, Excepted::Write("/home/a/.ssh/config".into()), 3, until, t0).unwrap();
    let (p, c) = state::compile_policy("p.yaml", &text, &Builtins::default()).unwrap();
    w.core.apply(&text, "p.yaml", p, c, &who(), t0).unwrap();
    assert_eq!(lookup(&w, "/home/a/.ssh/config"), Some((action::ASK, 3)));
    // A path the kernel cannot match exactly is refused, and changes nothing.
    let long = format!("/home/a/.ssh/{}", "x".repeat(agent_common::PATH_KEY_LEN));
    assert!(matches!(w.core.grant(rec.id, Excepted::Write(long.clone()), 3, until, t0), Err(OpError::Invalid(_))));
    assert!(w.core.exceptions(t0).is_empty());
}

#[test]
fn the_write_gate_is_on_only_while_a_policy_asks_about_writes() {
    let mut w = world();
    let told = Arc::new(Mutex::new(Vec::<bool>::new()));
    let t = told.clone();
    w.core.set_write_gate(Box::new(move |on| t.lock().unwrap().push(on)));
    assert_eq!(told.lock().unwrap().last(), Some(&false), "told at once: nothing asks");
    w.apply("plain", "allow").unwrap();
    assert_eq!(told.lock().unwrap().last(), Some(&false), "a policy whose writes are deny or allow");
    let asks = policy_text("p", "allow").replace("  write:\n    default: deny\n", "  write:\n    default: allow\n    rules:\n      - {path: \"/home/a/.ssh/**\", action: ask}\n");
    let (p, c) = state::compile_policy("p.yaml", &asks, &Builtins::default()).unwrap();
    w.core.apply(&asks, "p.yaml", p, c, &who(), now()).unwrap();
    assert_eq!(told.lock().unwrap().last(), Some(&true), "applying a write ask turns the gate on");
    let rec = w.core.create_identity(NewIdentity::new("coder", "p", "alice"), &who(), now()).unwrap();

    // A held open is an ask unless an exception lets that very file through.
    let t0 = now();
    let path = Path::new("/home/a/.ssh/config");
    assert_eq!(w.core.write_hold_ask(rec.id, path, t0).map(|a| a.rule_id), Some(3));
    w.core.grant(rec.id, Excepted::Write("/home/a/.ssh/config".into()), 3, t0 + std::time::Duration::from_secs(60), t0).unwrap();
    assert!(w.core.write_hold_ask(rec.id, path, t0).is_none(), "excepted: the kernel lets it through, nothing to hold");
    assert!(w.core.write_hold_ask(rec.id, Path::new("/home/a/.ssh/id_ed25519"), t0).is_some(), "only that file");

    // Monitor mode asks nobody: the gate goes off.
    let monitor = asks.replace("mode: enforce", "mode: monitor");
    let (p, c) = state::compile_policy("p.yaml", &monitor, &Builtins::default()).unwrap();
    w.core.apply(&monitor, "p.yaml", p, c, &who(), now()).unwrap();
    assert_eq!(told.lock().unwrap().last(), Some(&false), "no enforced write ask left");
    assert!(w.core.write_hold_ask(rec.id, path, now()).is_none());
}
