//! What a receipt says: the action, who asked for it, what was decided and by which
//! policy rule, who approved it, what came of it, and where it sits in the chain.
//!
//! The JSON field names here are the wire format (docs/receipts.md, "Fields"). Empty
//! strings and absent numbers are left out of the JSON rather than written as `""`
//! or `0`: uid 0 is root, so "not known" and "zero" must not look alike.
//!
//! Parsing is strict (unknown members are errors), and a verifier also checks that
//! a parsed receipt serializes back to exactly what it read: a line has one meaning,
//! and one spelling of it.

use std::{collections::BTreeMap, fmt, time::SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The receipt format this agentd writes and verifies (the `format` field).
pub const FORMAT: u32 = 1;

/// The `prev_hash` of the first receipt of a chain.
pub const GENESIS_PREV_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a receipt records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptType {
    /// The kernel decided an exec, write or egress (deny, kill, audit, would-deny, or
    /// an allow where the policy records allows).
    Decision,
    /// An action is held for a person's approval.
    Hold,
    /// A held action ended: approved, denied, or its deadline passed.
    HoldOutcome,
    /// A person decided on a held action.
    Approval,
    PolicyApply,
    Bind,
    Unbind,
    IdentityCreate,
    IdentityRevoke,
    /// The node's receipt signing key was replaced; sealed by the old key.
    KeyRotation,
    /// Someone reached for enforcement itself and agentd noticed: the kernel's
    /// state differed from agentd's and was put back, or a bound process sent
    /// agentd a stop signal it ignored.
    Tamper,
    /// Decisions the kernel made and enforced that have no receipt of their own:
    /// how many, whose, of which kind and verdict, and when (the aggregation
    /// table was full for that identity, or the journal could not be written).
    Gap,
}

impl ReceiptType {
    /// Every type, for parsing and help texts.
    pub const ALL: [ReceiptType; 12] = [
        ReceiptType::Decision,
        ReceiptType::Hold,
        ReceiptType::HoldOutcome,
        ReceiptType::Approval,
        ReceiptType::PolicyApply,
        ReceiptType::Bind,
        ReceiptType::Unbind,
        ReceiptType::IdentityCreate,
        ReceiptType::IdentityRevoke,
        ReceiptType::KeyRotation,
        ReceiptType::Tamper,
        ReceiptType::Gap,
    ];

    /// The name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptType::Decision => "decision",
            ReceiptType::Hold => "hold",
            ReceiptType::HoldOutcome => "hold-outcome",
            ReceiptType::Approval => "approval",
            ReceiptType::PolicyApply => "policy-apply",
            ReceiptType::Bind => "bind",
            ReceiptType::Unbind => "unbind",
            ReceiptType::IdentityCreate => "identity-create",
            ReceiptType::IdentityRevoke => "identity-revoke",
            ReceiptType::KeyRotation => "key-rotation",
            ReceiptType::Tamper => "tamper",
            ReceiptType::Gap => "gap",
        }
    }

    /// Parses [`ReceiptType::as_str`].
    pub fn from_name(s: &str) -> Option<ReceiptType> {
        ReceiptType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether this records an administrative change rather than an agent's action.
    pub fn is_admin(self) -> bool {
        !matches!(
            self,
            ReceiptType::Decision
                | ReceiptType::Hold
                | ReceiptType::HoldOutcome
                | ReceiptType::Approval
                | ReceiptType::Gap
        )
    }
}

impl fmt::Display for ReceiptType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of a decision (`decision.result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Allow,
    /// Refused synchronously (EPERM).
    Deny,
    /// Stopped by killing the process (the fallback mechanisms).
    Kill,
    /// Allowed and recorded because the rule says `audit`.
    Audit,
    /// Allowed because the policy is in monitor mode; enforce mode would deny.
    WouldDeny,
    /// Waiting for a person.
    Hold,
    /// An administrative change that was carried out.
    Ok,
    /// An administrative change that was refused.
    Refused,
}

impl Verdict {
    /// Every verdict, for parsing and help texts.
    pub const ALL: [Verdict; 8] = [
        Verdict::Allow,
        Verdict::Deny,
        Verdict::Kill,
        Verdict::Audit,
        Verdict::WouldDeny,
        Verdict::Hold,
        Verdict::Ok,
        Verdict::Refused,
    ];

    /// The name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Kill => "kill",
            Verdict::Audit => "audit",
            Verdict::WouldDeny => "would-deny",
            Verdict::Hold => "hold",
            Verdict::Ok => "ok",
            Verdict::Refused => "refused",
        }
    }

    /// Parses [`Verdict::as_str`].
    pub fn from_name(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// What happened to the action, when nobody says otherwise.
    pub fn default_outcome(self) -> &'static str {
        match self {
            Verdict::Allow | Verdict::Audit | Verdict::WouldDeny => "allowed",
            Verdict::Deny => "blocked",
            Verdict::Kill => "killed",
            Verdict::Hold => "pending",
            Verdict::Ok => "done",
            Verdict::Refused => "refused",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One receipt, as stored, exported and verified (one line of `receipts export`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// [`FORMAT`].
    pub format: u32,
    /// Lowercase hex SHA-256 of the receipt's canonical body (every member but `id`
    /// and `seal`): the receipt's hash, its Merkle leaf, and the next receipt's
    /// `prev_hash`.
    pub id: String,
    /// 1 for the first receipt of the node's chain, then +1 with no gaps.
    pub seq: u64,
    /// When the action was decided: RFC 3339, UTC, always 9 fractional digits.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: ReceiptType,
    pub action: Action,
    pub requester: Requester,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// What came of the action: "blocked", "allowed", "killed", "pending",
    /// "approved", "denied", "timed-out", "done", ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub outcome: String,
    /// The node that decided (its hostname).
    pub host: String,
    /// The `id` of the previous receipt; [`GENESIS_PREV_HASH`] for seq 1.
    pub prev_hash: String,
    /// The signature part. Absent only before the receipt's batch is sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<Seal>,
}

/// What was attempted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// "exec", "write", "egress", "raw-socket" for an agent's actions; the receipt
    /// type ("policy-apply", "bind", ...) for administrative ones.
    pub kind: String,
    /// exec: the binary; write: the file; egress: "addr:port"; policy-apply: the
    /// policy name; bind/unbind: the cgroup path; identity-*: the identity name;
    /// key-rotation: the new key id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Anything else about the action ("argv", "op", "protocol", ...). Numbers in
    /// here must be integers (see [`super::encode`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, Value>,
}

/// Who asked: the agent identity and its process, or the person at `agentctl`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requester {
    /// The agent identity's name (empty for a person's administrative request).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_id: Option<u32>,
    /// [`crate::identity::keys::fingerprint`] of the identity's public key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_fingerprint: String,
    /// The human or service the identity acts for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// The bound cgroup's path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// The session or binding the action belongs to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub executable: String,
}

/// What was decided, and by which policy and rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub result: Verdict,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u32>,
    /// Hex SHA-256 of the policy text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<u32>,
    /// The rule as written in the policy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
    /// "rule", "default", "revoked", "expired", "no-policy", ... or free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// How it was enforced: "lsm", "tracepoint", "sock_addr", "fanotify", ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mechanism: String,
}

/// A person's decision on a held action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Who decided (a user name, or "timeout" when the deadline decided).
    pub decided_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by_uid: Option<u32>,
    /// RFC 3339, UTC, 9 fractional digits.
    pub decided_at: String,
    /// "once", "for 10m", "deny", "timeout", ...
    pub how: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Approval {
    /// A decision by `decided_by` at `at`, in the way `how`.
    pub fn new(decided_by: impl Into<String>, decided_by_uid: Option<u32>, at: SystemTime, how: impl Into<String>) -> Approval {
        Approval {
            decided_by: decided_by.into(),
            decided_by_uid,
            decided_at: format_time(at),
            how: how.into(),
            reason: String::new(),
        }
    }

    /// With the reason the person gave.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Approval {
        self.reason = reason.into();
        self
    }
}

/// The signature part: which batch the receipt was sealed in, its inclusion proof
/// in the batch's Merkle tree, and the signature over the tree's root
/// (docs/receipts.md, "Seal"). Everything a verifier needs besides the public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    /// The node key that signed: [`super::key::key_id`] of its public key.
    pub key_id: String,
    /// The seq of the batch's first receipt.
    pub batch_first_seq: u64,
    /// The seq of the batch's last receipt (a batch's seqs are consecutive, so this
    /// receipt is leaf `seq - batch_first_seq` of `batch_last_seq - batch_first_seq + 1`).
    pub batch_last_seq: u64,
    /// Lowercase hex Merkle root of the batch.
    pub root: String,
    /// The inclusion proof: sibling hashes from the leaf up (lowercase hex); empty
    /// for a batch of one.
    pub proof: Vec<String>,
    /// Lowercase hex Ed25519 signature (64 bytes) over [`super::seal::signed_message`].
    pub signature: String,
}

impl Requester {
    /// An agent identity.
    pub fn identity(name: impl Into<String>, key_fingerprint: impl Into<String>, owner: impl Into<String>) -> Requester {
        Requester {
            identity: name.into(),
            key_fingerprint: key_fingerprint.into(),
            owner: owner.into(),
            ..Requester::default()
        }
    }

    /// A person using agentctl, known by the API socket's peer credentials.
    pub fn person(user: impl Into<String>, uid: u32, pid: u32, executable: impl Into<String>) -> Requester {
        Requester {
            owner: user.into(),
            uid: Some(uid),
            pid: Some(pid),
            executable: executable.into(),
            ..Requester::default()
        }
    }

    /// With the identity's numeric id.
    pub fn with_identity_id(mut self, id: u32) -> Requester {
        self.identity_id = Some(id);
        self
    }

    /// With the acting process.
    pub fn with_process(mut self, pid: u32, uid: u32, executable: impl Into<String>) -> Requester {
        self.pid = Some(pid);
        self.uid = Some(uid);
        self.executable = executable.into();
        self
    }

    /// With the binding: the cgroup (path and id) and session.
    pub fn with_binding(mut self, cgroup: impl Into<String>, cgroup_id: u64, session: impl Into<String>) -> Requester {
        self.cgroup = cgroup.into();
        self.cgroup_id = Some(cgroup_id);
        self.session = session.into();
        self
    }
}

impl Receipt {
    /// `time` as a clock value; `None` if it is not RFC 3339.
    pub fn system_time(&self) -> Option<SystemTime> {
        parse_time(&self.time)
    }
}

/// RFC 3339, UTC, with exactly 9 fractional digits: fixed width, so times sort as
/// strings.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Parses an RFC 3339 UTC time, any fractional precision (`2026-01-01T00:00:00Z`;
/// also with a space for the `T`, or without the `Z`).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn names_round_trip_through_json() {
        for t in ReceiptType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), Value::String(t.as_str().into()));
            assert_eq!(ReceiptType::from_name(t.as_str()), Some(t));
        }
        for v in Verdict::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), Value::String(v.as_str().into()));
            assert_eq!(Verdict::from_name(v.as_str()), Some(v));
        }
        assert!(ReceiptType::Bind.is_admin() && !ReceiptType::HoldOutcome.is_admin());
    }

    #[test]
    fn times_are_fixed_width_utc() {
        let t = UNIX_EPOCH + Duration::new(1_767_225_600, 5);
        assert_eq!(format_time(t), "2026-01-01T00:00:00.000000005Z");
        assert_eq!(parse_time("2026-01-01T00:00:00.000000005Z"), Some(t));
        assert_eq!(parse_time("2026-01-01T00:00:00Z"), Some(t - Duration::from_nanos(5)));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn unknown_and_zero_look_different() {
        let r = Requester::person("root", 0, 10, "/usr/bin/agentctl");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["uid"], 0);
        assert!(v.get("identity").is_none() && v.get("cgroup_id").is_none());
        let back: Requester = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
