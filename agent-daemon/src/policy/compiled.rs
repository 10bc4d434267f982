//! The output of the policy compiler: exactly what the enforcer writes into the
//! kernel maps for one identity, plus the rule table that gives every rule a stable
//! id for events.
//!
//! This is the seam between pure policy logic (unit-tested without root) and the
//! kernel-touching enforcer: the enforcer does nothing but copy these entries.

use agent_common::{EgressRules, PathRule};

/// A policy compiled for the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// `metadata.name`.
    pub name: String,
    /// Hex SHA-256 of the policy file's bytes.
    pub hash: String,
    /// `spec.mode: monitor`.
    pub monitor: bool,
    /// Per-kind defaults as `agent_common::action` codes.
    pub exec_default: u8,
    pub write_default: u8,
    pub egress_default: u8,
    /// Exec rules for the `EXEC_RULES` LPM trie.
    pub exec: Vec<PathEntry>,
    /// Exact exec rules pinned to the (dev, inode) their path named when the policy
    /// was compiled, for the `EXEC_INODES` hash. Checked first by the kernel.
    pub exec_inodes: Vec<InodeEntry>,
    /// Write rules for the `WRITE_RULES` LPM trie.
    pub write: Vec<PathEntry>,
    /// Egress entries for the `EGRESS_RULES` LPM trie.
    pub egress: Vec<EgressEntry>,
    /// Every rule, indexed by id (`rules[i].id == i as u32 + 1`; id 0 means "default").
    pub rules: Vec<RuleInfo>,
    /// What the kernel cannot enforce as written (always narrowing, never widening).
    pub warnings: Vec<String>,
}

/// One LPM entry of a path trie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathEntry {
    /// The key's path bytes: a prefix (`/usr/lib/git-core/`) or an exact path followed
    /// by a single NUL (`/usr/bin/git\0`). At most `agent_common::PATH_KEY_LEN` bytes.
    pub key: Vec<u8>,
    pub value: PathRule,
}

/// One entry of the `EXEC_INODES` hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeEntry {
    /// Kernel encoding of the superblock's device (major << 20 | minor).
    pub dev: u32,
    pub ino: u64,
    pub value: PathRule,
}

/// One LPM entry of the egress trie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressEntry {
    /// IPv6 or IPv4-mapped IPv6 address (network part; host bits zero).
    pub addr: [u8; 16],
    /// Prefix length over `addr`, 0..=128 (an IPv4 /n is 96 + n).
    pub prefix_len: u32,
    pub value: EgressRules,
}

/// What a rule id stands for, for `policy show`, events and receipts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub id: u32,
    /// "exec", "write" or "egress".
    pub kind: &'static str,
    /// Index of the rule within its kind's `rules:` list.
    pub index: usize,
    /// The rule as the user wrote it, in one line, e.g. `{path: /usr/bin/git, action: allow}`.
    pub text: String,
    /// 1-based line of the rule in the policy file.
    pub line: usize,
    /// "allow", "deny", "ask" or "audit".
    pub action: &'static str,
}
