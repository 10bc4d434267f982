//! The output of the policy compiler: exactly what the enforcer writes into the
//! kernel maps for one identity, plus the rule table that gives every rule a stable
//! id for events.
//!
//! This is the seam between pure policy logic (unit-tested without root) and the
//! kernel-touching enforcer: the enforcer does nothing but copy these entries.

use agent_common::{EgressRules, GlobState, PathRule};

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
    /// States of the exec, write and unix glob automata for `GLOB_STATES`:
    /// `globs[i]` is state `i + 1` (0 is the dead state).
    pub globs: Vec<GlobState>,
    /// Start state of the exec automaton in `globs`, 0 when exec has no patterns
    /// the trie cannot express.
    pub exec_glob: u16,
    /// The same for write.
    pub write_glob: u16,
    /// Directories that hold what a deny or ask write rule protects, as exact keys
    /// (`DIR\0`) for `GUARDED_DIRS`: renaming, removing or replacing one is a
    /// write to what it holds.
    pub guarded: Vec<PathEntry>,
    /// `egress.unix` rules for the `UNIX_RULES` LPM trie (socket file paths,
    /// keyed like write rules; an abstract socket `@name` is `@name` + NUL), the
    /// built-in rules included.
    pub unix: Vec<PathEntry>,
    /// Start state of the `egress.unix` automaton in `globs` (0: none).
    pub unix_glob: u16,
    /// `egress.unix.default` as an action code.
    pub unix_default: u8,
    /// `agent_common::identity_flags` bits that come from the policy
    /// (`NAMESPACES`, `PTRACE`, `ICMP`).
    pub system_flags: u8,
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
    /// "exec", "write", "egress" or "unix".
    pub kind: &'static str,
    /// Index of the rule within its kind's `rules:` list (built-in rules follow
    /// the unix list).
    pub index: usize,
    /// The rule as the user wrote it, in one line, e.g. `{path: /usr/bin/git, action: allow}`.
    pub text: String,
    /// 1-based line of the rule in the policy file; 0 for a built-in rule.
    pub line: usize,
    /// "allow", "deny", "ask" or "audit".
    pub action: &'static str,
    /// One of the built-in `egress.unix` rules (no line; `text` says why).
    pub builtin: bool,
}

/// What the kernel's path lookup gives for a real path: an action code and rule id
/// (0 for the default), or `None` when the kernel cannot know the answer (a path
/// longer than it reads, inside a pattern that the rest could still decide) and
/// fails closed (deny, reason `unresolved`).
pub type PathLookup = Option<(u8, u32)>;

impl CompiledPolicy {
    /// This policy with UDP exceptions: each `(addr, port, rule id)` lets datagrams
    /// to exactly that address and port through (and nothing else), ahead of every
    /// rule for that address. `hash` changes with the set, as for writes. An address
    /// whose rule list is already full is an error.
    pub fn with_udp_exceptions(&self, targets: &[(std::net::IpAddr, u16, u32)]) -> Result<CompiledPolicy, String> {
        use agent_common::{PortRule, MAX_PORT_RULES};
        let mut out = self.clone();
        let mut digest = String::new();
        for (addr, port, rule_id) in targets {
            let bytes = match addr {
                std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                std::net::IpAddr::V6(v6) => v6.octets(),
            };
            let exception = PortRule { port_lo: *port, port_hi: *port, protocol: 17, action: agent_common::action::ALLOW, _pad: [0; 2], rule_id: *rule_id };
            // The exact entry, or a new one that starts from the longest covering
            // entry's rules (the kernel looks up one entry per address).
            let covering = |e: &EgressEntry| {
                let bits = u128::from_be_bytes(e.addr);
                let mask = if e.prefix_len == 0 { 0 } else { u128::MAX << (128 - e.prefix_len) };
                u128::from_be_bytes(bytes) & mask == bits
            };
            let base = out.egress.iter().filter(|e| covering(e)).max_by_key(|e| e.prefix_len).map(|e| e.value).unwrap_or_default();
            let count = base.count as usize;
            if count >= MAX_PORT_RULES {
                return Err(format!("{addr}: the kernel holds no more than {MAX_PORT_RULES} port rules per address, and this one has them all"));
            }
            let mut value = base;
            value.rules.copy_within(0..count, 1);
            value.rules[0] = exception;
            value.count = count as u32 + 1;
            out.egress.retain(|e| !(e.prefix_len == 128 && e.addr == bytes));
            out.egress.push(EgressEntry { addr: bytes, prefix_len: 128, value });
            digest.push_str(&format!("{addr}:{port}\0"));
        }
        if !targets.is_empty() {
            out.hash = format!("{}+udp:{}", out.hash, crate::state::sha256_hex(digest.as_bytes()));
        }
        Ok(out)
    }

    /// This policy with exceptions for `paths` (real paths, each with the id of the
    /// `ask` rule it was asked under): each becomes an exact-path `allow` that
    /// outranks every other write rule for exactly that path and nothing else, so
    /// an approved write request lets that one file be written. `hash` changes with
    /// the set, so the kernel gets a rule set of its own (swapped in atomically).
    /// A path the kernel cannot match exactly (longer than it reads) is an error.
    pub fn with_write_exceptions(&self, paths: &[(String, u32)]) -> Result<CompiledPolicy, String> {
        let mut out = self.clone();
        let mut digest = String::new();
        for (path, rule_id) in paths {
            let mut key = path.as_bytes().to_vec();
            key.push(0);
            if key.len() > agent_common::PATH_KEY_LEN || !path.starts_with('/') {
                return Err(format!(
                    "{path}: an exception needs an absolute path of at most {} bytes",
                    agent_common::PATH_KEY_LEN - 1
                ));
            }
            out.write.retain(|e| e.key != key);
            out.write.push(PathEntry {
                key,
                value: PathRule { action: agent_common::action::ALLOW, _pad: [0; 3], rule_id: *rule_id, rank: u32::MAX },
            });
            digest.push_str(path);
            digest.push('\0');
        }
        if !paths.is_empty() {
            out.hash = format!("{}+exceptions:{}", self.hash, crate::state::sha256_hex(digest.as_bytes()));
        }
        Ok(out)
    }

    /// The kernel's egress decision for a connection to `addr` and `port` over IP
    /// protocol `protocol` (6 TCP, 17 UDP; ICMP and ICMPv6 are looked up as 1
    /// with port 0), as the egress programs in agent-ebpf decide it: the longest
    /// entry whose network holds the address, then its first port rule that
    /// matches the port and the protocol, where protocol 0 is TCP and UDP only.
    /// No rule matches: the egress default, except for ICMP, which is denied. The
    /// tests hold this model to the evaluator.
    pub fn egress_lookup(&self, addr: std::net::IpAddr, port: u16, protocol: u8) -> (u8, u32) {
        const ICMP: u8 = 1;
        let a = u128::from_be_bytes(match addr {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        });
        let best = self
            .egress
            .iter()
            .filter(|e| {
                let mask = if e.prefix_len == 0 { 0 } else { u128::MAX << (128 - e.prefix_len) };
                u128::from_be_bytes(e.addr) & mask == a & mask
            })
            .max_by_key(|e| e.prefix_len);
        let rules = best.map_or(&[][..], |e| &e.value.rules[..(e.value.count as usize).min(e.value.rules.len())]);
        let matches = |r: &&agent_common::PortRule| {
            (r.port_lo..=r.port_hi).contains(&port) && (r.protocol == protocol || (r.protocol == 0 && protocol != ICMP))
        };
        match rules.iter().find(matches) {
            Some(r) => (r.action, r.rule_id),
            None if protocol == ICMP => (agent_common::action::DENY, 0),
            None => (self.egress_default, 0),
        }
    }

    /// The kernel's decision for `real` (an absolute real path) by the exec, write
    /// or unix tables, step for step as `decide_path` in agent-ebpf does it, the
    /// exec (dev, inode) pins aside: a longest-prefix match over the first
    /// `PATH_KEY_LEN` bytes of `real + NUL`, then the glob automaton, and the
    /// higher-ranked of the two. An abstract unix socket is looked up the same way
    /// as `@name` (so its key is `@name` + NUL, and no pattern matches it). The
    /// tests hold this model to the evaluator. Egress is not a path kind: `None`.
    pub fn path_lookup(&self, kind: super::RuleKind, real: &[u8]) -> PathLookup {
        let (entries, default, start) = match kind {
            super::RuleKind::Exec => (&self.exec, self.exec_default, self.exec_glob),
            super::RuleKind::Write => (&self.write, self.write_default, self.write_glob),
            super::RuleKind::Unix => (&self.unix, self.unix_default, self.unix_glob),
            super::RuleKind::Egress => return None,
        };
        let mut key = real.to_vec();
        key.push(0);
        key.truncate(agent_common::PATH_KEY_LEN);
        let (mut act, mut rule, rank) = entries
            .iter()
            .filter(|e| key.starts_with(&e.key))
            .max_by_key(|e| e.key.len())
            .map_or((default, 0, 0), |e| (e.value.action, e.value.rule_id, e.value.rank));
        if start != 0 {
            match super::automaton::walk(&self.globs, 1, start, real) {
                super::automaton::Walk::Rule(a, id, r) if r > rank => (act, rule) = (a, id),
                super::automaton::Walk::Rule(..) | super::automaton::Walk::None => {}
                super::automaton::Walk::Unknown => return None,
            }
        }
        Some((act, rule))
    }
}
