//! Drafts: receipts as the daemon fills them in, before the journal gives them a
//! place in the chain (seq, prev_hash, id) and a seal.
//!
//! Each constructor names one kind of event and asks for what every receipt of
//! that kind must say; the `with_*` methods add the rest.
//!
//! ```
//! use agentd::receipts::{Draft, Requester, Verdict};
//! let d = Draft::decision("exec", "/usr/bin/curl", Verdict::Deny)
//!     .requester(Requester::identity("claude", "3f2a...", "alice").with_process(4242, 1000, "/usr/bin/bash"))
//!     .policy("dev", 3, "9c1e...")
//!     .rule(7, "deny exec /usr/bin/curl")
//!     .reason("rule")
//!     .mechanism("lsm")
//!     .param("argv", serde_json::json!(["curl", "example.com"]));
//! ```

use std::time::SystemTime;

use serde_json::Value;

use super::model::{format_time, Action, Approval, Decision, Receipt, ReceiptType, Requester, Verdict, FORMAT};

/// A receipt waiting for its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    pub kind: ReceiptType,
    /// When the action was decided; the journal uses the time of `append` if unset.
    pub time: Option<SystemTime>,
    pub action: Action,
    pub requester: Requester,
    pub decision: Decision,
    pub approval: Option<Approval>,
    /// Empty: the verdict's [`Verdict::default_outcome`].
    pub outcome: String,
}

impl Draft {
    /// A receipt of `kind` about `action_kind` on `target` with `result`.
    pub fn new(kind: ReceiptType, action_kind: impl Into<String>, target: impl Into<String>, result: Verdict) -> Draft {
        Draft {
            kind,
            time: None,
            action: Action { kind: action_kind.into(), target: target.into(), parameters: Default::default() },
            requester: Requester::default(),
            decision: Decision {
                result,
                policy: String::new(),
                policy_version: None,
                policy_hash: String::new(),
                rule_id: None,
                rule: String::new(),
                reason: String::new(),
                mechanism: String::new(),
            },
            approval: None,
            outcome: String::new(),
        }
    }

    /// The kernel decided an exec, write, egress or raw-socket action.
    pub fn decision(action_kind: impl Into<String>, target: impl Into<String>, result: Verdict) -> Draft {
        Draft::new(ReceiptType::Decision, action_kind, target, result)
    }

    /// `count` decisions of `action_kind` with `result` were made and enforced but
    /// have no receipt of their own, from this receipt's time to `until`;
    /// `cause` says why ("aggregation-full": the identity's share of the kernel's
    /// aggregation table was used up; "journal-unwritable": receipts could not
    /// be written). The requester says whose they were.
    pub fn gap(
        action_kind: impl Into<String>,
        result: Verdict,
        count: u64,
        until: SystemTime,
        cause: &str,
    ) -> Draft {
        Draft::new(ReceiptType::Gap, action_kind, "", result)
            .param("lost", count)
            .param("until", super::model::format_time(until))
            .param("cause", cause)
            .reason(cause.to_string())
            .outcome("unrecorded")
    }

    /// An action is held for approval.
    pub fn hold(action_kind: impl Into<String>, target: impl Into<String>, hold_id: impl Into<String>) -> Draft {
        Draft::new(ReceiptType::Hold, action_kind, target, Verdict::Hold).param("hold_id", hold_id.into())
    }

    /// A person decided on hold `hold_id`: `result` is allow or deny.
    pub fn approval(action_kind: impl Into<String>, target: impl Into<String>, hold_id: impl Into<String>, result: Verdict, approval: Approval) -> Draft {
        Draft::new(ReceiptType::Approval, action_kind, target, result)
            .param("hold_id", hold_id.into())
            .with_approval(approval)
            .outcome(if result == Verdict::Allow { "approved" } else { "denied" })
    }

    /// Hold `hold_id` ended with `result`; `outcome` says how ("approved",
    /// "denied", "timed-out", ...). Add the approval with [`Draft::with_approval`].
    pub fn hold_outcome(action_kind: impl Into<String>, target: impl Into<String>, hold_id: impl Into<String>, result: Verdict, outcome: impl Into<String>) -> Draft {
        Draft::new(ReceiptType::HoldOutcome, action_kind, target, result).param("hold_id", hold_id.into()).outcome(outcome)
    }

    /// Policy `name` was applied as `version` with text hash `hash`.
    pub fn policy_apply(name: impl Into<String>, version: u32, hash: impl Into<String>) -> Draft {
        let name = name.into();
        Draft::admin(ReceiptType::PolicyApply, name.clone()).policy(name, version, hash)
    }

    /// The cgroup at `cgroup_path` (inode `cgroup_id`) was bound to `identity`.
    pub fn bind(cgroup_path: impl Into<String>, cgroup_id: u64, identity: impl Into<String>) -> Draft {
        Draft::admin(ReceiptType::Bind, cgroup_path).param("cgroup_id", cgroup_id).param("identity", identity.into())
    }

    /// The cgroup at `cgroup_path` was unbound from `identity`.
    pub fn unbind(cgroup_path: impl Into<String>, cgroup_id: u64, identity: impl Into<String>) -> Draft {
        Draft::admin(ReceiptType::Unbind, cgroup_path).param("cgroup_id", cgroup_id).param("identity", identity.into())
    }

    /// Identity `name` (key `fingerprint`, acting for `owner`, under `policy`) was created.
    pub fn identity_create(name: impl Into<String>, fingerprint: impl Into<String>, owner: impl Into<String>, policy: impl Into<String>) -> Draft {
        Draft::admin(ReceiptType::IdentityCreate, name)
            .param("key_fingerprint", fingerprint.into())
            .param("owner", owner.into())
            .param("policy", policy.into())
    }

    /// Identity `name` (key `fingerprint`) was revoked because `reason`.
    /// Enforcement was reached for: `what` (e.g. `binding`, `link`, `signal`),
    /// `target` what it was about; `outcome` what agentd did about it.
    pub fn tamper(what: impl Into<String>, target: impl Into<String>, outcome: impl Into<String>) -> Draft {
        Draft::admin(ReceiptType::Tamper, target).param("what", what.into()).reason("tamper").outcome(outcome)
    }

    pub fn identity_revoke(name: impl Into<String>, fingerprint: impl Into<String>, reason: impl Into<String>) -> Draft {
        Draft::admin(ReceiptType::IdentityRevoke, name).param("key_fingerprint", fingerprint.into()).reason(reason)
    }

    /// The node key `old_key_id` is replaced by `new_key_id` (public key
    /// `new_public_key`, lowercase hex). Only the journal makes these, because the
    /// old key must seal them.
    pub(crate) fn key_rotation(old_key_id: &str, new_key_id: &str, new_public_key: &str) -> Draft {
        Draft::admin(ReceiptType::KeyRotation, new_key_id)
            .param("old_key_id", old_key_id)
            .param("new_key_id", new_key_id)
            .param("new_public_key", new_public_key)
            .outcome("rotated")
    }

    fn admin(kind: ReceiptType, target: impl Into<String>) -> Draft {
        Draft::new(kind, kind.as_str(), target, Verdict::Ok)
    }

    /// When the action was decided.
    pub fn at(mut self, time: SystemTime) -> Draft {
        self.time = Some(time);
        self
    }

    /// Adds `action.parameters[key] = value` (integers, strings, lists, objects;
    /// no floats).
    pub fn param(mut self, key: impl Into<String>, value: impl Into<Value>) -> Draft {
        self.action.parameters.insert(key.into(), value.into());
        self
    }

    /// Who asked.
    pub fn requester(mut self, requester: Requester) -> Draft {
        self.requester = requester;
        self
    }

    /// The policy that decided: its name, version and text hash.
    pub fn policy(mut self, name: impl Into<String>, version: u32, hash: impl Into<String>) -> Draft {
        self.decision.policy = name.into();
        self.decision.policy_version = Some(version);
        self.decision.policy_hash = hash.into();
        self
    }

    /// The rule that decided: its id and text as written.
    pub fn rule(mut self, id: u32, text: impl Into<String>) -> Draft {
        self.decision.rule_id = Some(id);
        self.decision.rule = text.into();
        self
    }

    /// Why ("rule", "default", "revoked", ... or free text).
    pub fn reason(mut self, reason: impl Into<String>) -> Draft {
        self.decision.reason = reason.into();
        self
    }

    /// How it was enforced ("lsm", "tracepoint", "sock_addr", "fanotify", ...).
    pub fn mechanism(mut self, mechanism: impl Into<String>) -> Draft {
        self.decision.mechanism = mechanism.into();
        self
    }

    /// Who approved or denied, when and how.
    pub fn with_approval(mut self, approval: Approval) -> Draft {
        self.approval = Some(approval);
        self
    }

    /// What came of the action.
    pub fn outcome(mut self, outcome: impl Into<String>) -> Draft {
        self.outcome = outcome.into();
        self
    }

    /// The receipt at `seq` after the receipt `prev_hash`, decided on `host`; `now`
    /// when the draft has no time. Unsealed, and `id` still empty.
    pub fn into_receipt(self, seq: u64, prev_hash: String, host: &str, now: SystemTime) -> Receipt {
        let outcome = if self.outcome.is_empty() { self.decision.result.default_outcome().to_string() } else { self.outcome };
        Receipt {
            format: FORMAT,
            id: String::new(),
            seq,
            time: format_time(self.time.unwrap_or(now)),
            kind: self.kind,
            action: self.action,
            requester: self.requester,
            decision: self.decision,
            approval: self.approval,
            outcome,
            host: host.to_string(),
            prev_hash,
            seal: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn approved_hold_names_the_approver_and_the_time() {
        let at = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let r = Draft::hold_outcome("exec", "/usr/bin/make", "1a2b3c4d", Verdict::Allow, "approved")
            .with_approval(Approval::new("alice", Some(1000), at, "once").with_reason("build"))
            .into_receipt(9, "ab".repeat(32), "node-1", at + Duration::from_secs(1));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["type"], "hold-outcome");
        assert_eq!(v["approval"]["decided_by"], "alice");
        assert_eq!(v["approval"]["decided_by_uid"], 1000);
        assert_eq!(v["approval"]["decided_at"], "2026-01-01T00:00:00.000000000Z");
        assert_eq!(v["approval"]["how"], "once");
        assert_eq!(v["action"]["parameters"]["hold_id"], "1a2b3c4d");
        assert_eq!(v["outcome"], "approved");
        assert_eq!(v["time"], "2026-01-01T00:00:01.000000000Z", "no time given: the time of append");
    }

    #[test]
    fn admin_receipts_carry_what_changed() {
        let r = Draft::bind("/sys/fs/cgroup/agents/a", 4242, "claude").into_receipt(1, String::new(), "h", UNIX_EPOCH);
        assert_eq!((r.kind, r.action.kind.as_str(), r.action.target.as_str()), (ReceiptType::Bind, "bind", "/sys/fs/cgroup/agents/a"));
        assert_eq!(r.action.parameters["cgroup_id"], 4242);
        assert_eq!((r.decision.result, r.outcome.as_str()), (Verdict::Ok, "done"));
        let r = Draft::policy_apply("dev", 3, "9c").into_receipt(2, String::new(), "h", UNIX_EPOCH);
        assert_eq!((r.decision.policy.as_str(), r.decision.policy_version, r.decision.policy_hash.as_str()), ("dev", Some(3), "9c"));
        let r = Draft::decision("exec", "/bin/x", Verdict::Deny).into_receipt(3, String::new(), "h", UNIX_EPOCH);
        assert_eq!(r.outcome, "blocked");
    }

    #[test]
    fn a_gap_says_how_many_of_what_from_when_to_when_and_why() {
        let from = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let r = Draft::gap(
            "egress",
            Verdict::Deny,
            1000,
            from + Duration::from_secs(3),
            "aggregation-full",
        )
        .requester(Requester::identity("spreader", "ab12", "alice").with_identity_id(7))
        .at(from)
        .into_receipt(4, String::new(), "h", from + Duration::from_secs(9));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (
                v["type"].as_str(),
                v["action"]["kind"].as_str(),
                v["decision"]["result"].as_str()
            ),
            (Some("gap"), Some("egress"), Some("deny"))
        );
        assert_eq!(v["action"]["parameters"]["lost"], 1000);
        assert_eq!(
            v["action"]["parameters"]["until"],
            "2026-01-01T00:00:03.000000000Z"
        );
        assert_eq!(v["action"]["parameters"]["cause"], "aggregation-full");
        assert_eq!(
            (v["time"].as_str(), v["outcome"].as_str()),
            (Some("2026-01-01T00:00:00.000000000Z"), Some("unrecorded"))
        );
        assert_eq!(
            (
                v["requester"]["identity"].as_str(),
                v["requester"]["identity_id"].as_u64()
            ),
            (Some("spreader"), Some(7))
        );
        assert!(
            !ReceiptType::Gap.is_admin(),
            "a gap is about an agent's actions"
        );
    }
}
