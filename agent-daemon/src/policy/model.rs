//! The typed model of an `agentd.io/v1` policy, as `parse` returns it.
//!
//! Everything here has been validated: paths are well-formed patterns, CIDRs have
//! no host bits, port ranges are ordered, durations are positive. Each rule carries
//! its id (stable, in file order: exec rules, then write, then egress, then
//! egress.unix, from 1, then the built-in unix rules; 0 means "the default") and
//! where it was written, so decisions, events and receipts can point back at the
//! line a user wrote.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::{compiled::RuleInfo, error::Location, glob::Glob};

/// A rule's or a default's action. Ordered by strength: at equal specificity the
/// stronger wins (deny > ask > audit > allow).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionKind {
    Allow,
    /// Allow, and sign a receipt for it.
    Audit,
    /// Hold for a human's approval.
    Ask,
    Deny,
}

impl ActionKind {
    pub const ALL: [ActionKind; 4] = [ActionKind::Allow, ActionKind::Deny, ActionKind::Ask, ActionKind::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Allow => "allow",
            ActionKind::Audit => "audit",
            ActionKind::Ask => "ask",
            ActionKind::Deny => "deny",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        ActionKind::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The code the kernel maps hold (`agent_common::action`).
    pub fn code(self) -> u8 {
        use agent_common::action;
        match self {
            ActionKind::Allow => action::ALLOW,
            ActionKind::Audit => action::AUDIT,
            ActionKind::Ask => action::ASK,
            ActionKind::Deny => action::DENY,
        }
    }
}

impl std::fmt::Display for ActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Decisions are enforced.
    #[default]
    Enforce,
    /// Everything is allowed, and what would have been denied or held is reported.
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

/// The transport of an egress rule or a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP and ICMPv6 ("ping" sockets). It has no ports, and only a rule that
    /// names it matches it: a rule without `protocol` is TCP and UDP, and the
    /// egress default never applies to it (no rule: deny).
    Icmp,
}

impl Protocol {
    /// IP protocol number, as the kernel's port rules store it. ICMPv6 (58) is
    /// stored and looked up as ICMP (1): one rule covers both families, as a
    /// `cidr` rule does.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

/// Which of the rule lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleKind {
    Exec,
    Write,
    Egress,
    /// `egress.unix`: connects to local (AF_UNIX) sockets.
    Unix,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Exec => "exec",
            RuleKind::Write => "write",
            RuleKind::Egress => "egress",
            RuleKind::Unix => "unix",
        }
    }
}

/// A validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub(crate) file: String,
    pub(crate) text: String,
    pub(crate) hash: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) mode: Mode,
    pub exec: PathSection,
    pub write: PathSection,
    pub egress: EgressSection,
    /// `spec.egress.unix`.
    pub unix: UnixSection,
    pub system: System,
    pub approvals: Approvals,
    pub receipts: Receipts,
    /// Things worth knowing that do not make the file wrong.
    pub(crate) warnings: Vec<String>,
}

impl Policy {
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `metadata.description` (empty when absent).
    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The file name given to `parse`, used in every message.
    pub fn file_name(&self) -> &str {
        &self.file
    }

    /// The exact text that was parsed.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Hex SHA-256 of the text's bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Warnings found while parsing (compile adds its own to `CompiledPolicy`).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn path_section(&self, kind: RuleKind) -> Option<&PathSection> {
        match kind {
            RuleKind::Exec => Some(&self.exec),
            RuleKind::Write => Some(&self.write),
            RuleKind::Egress | RuleKind::Unix => None,
        }
    }

    /// Every rule in id order, for events, receipts and `policy show`.
    pub fn rule_infos(&self) -> Vec<RuleInfo> {
        let paths = |kind: RuleKind, s: &PathSection| {
            s.rules
                .iter()
                .enumerate()
                .map(move |(index, r)| RuleInfo {
                    id: r.id,
                    kind: kind.as_str(),
                    index,
                    text: r.text.clone(),
                    line: r.at.line,
                    action: r.action.as_str(),
                    builtin: false,
                })
                .collect::<Vec<_>>()
        };
        let mut out = paths(RuleKind::Exec, &self.exec);
        out.extend(paths(RuleKind::Write, &self.write));
        out.extend(self.egress.rules.iter().enumerate().map(|(index, r)| RuleInfo {
            id: r.id,
            kind: RuleKind::Egress.as_str(),
            index,
            text: r.text.clone(),
            line: r.at.line,
            action: r.action.as_str(),
            builtin: false,
        }));
        out.extend(self.unix.all().enumerate().map(|(index, r)| RuleInfo {
            id: r.id,
            kind: RuleKind::Unix.as_str(),
            index,
            text: r.text.clone(),
            line: r.at.line,
            action: r.action.as_str(),
            builtin: r.builtin.is_some(),
        }));
        out
    }

    /// The rule with this id, as written, and where (line 0 for a built-in rule).
    pub fn rule(&self, id: u32) -> Option<(RuleKind, &str, Location)> {
        fn in_section(kind: RuleKind, s: &PathSection, id: u32) -> Option<(RuleKind, &str, Location)> {
            s.rules.iter().find(|r| r.id == id).map(|r| (kind, r.text.as_str(), r.at))
        }
        in_section(RuleKind::Exec, &self.exec, id)
            .or_else(|| in_section(RuleKind::Write, &self.write, id))
            .or_else(|| {
                self.egress.rules.iter().find(|r| r.id == id).map(|r| (RuleKind::Egress, r.text.as_str(), r.at))
            })
            .or_else(|| self.unix.all().find(|r| r.id == id).map(|r| (RuleKind::Unix, r.text.as_str(), r.at)))
    }

    /// The line of rule `id` in the file; `None` for the default (0) and for a
    /// built-in rule, which has none.
    pub fn rule_line(&self, id: u32) -> Option<usize> {
        self.rule(id).map(|(_, _, at)| at.line).filter(|&line| line > 0)
    }

    /// Whether any default or rule says `ask`.
    pub fn uses_ask(&self) -> bool {
        self.exec.default == ActionKind::Ask || self.exec.rules.iter().any(|r| r.action == ActionKind::Ask) || self.unheld_ask()
    }

    /// `ask` for a write or a connect: no hold exists for those yet, so the kernel
    /// denies them.
    pub fn unheld_ask(&self) -> bool {
        [self.write.default, self.egress.default].contains(&ActionKind::Ask)
            || self.write.rules.iter().any(|r| r.action == ActionKind::Ask)
            || self.egress.rules.iter().any(|r| r.action == ActionKind::Ask)
    }
}

/// `spec.exec` or `spec.write`. An absent section is `default: deny` with no rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathSection {
    pub default: ActionKind,
    pub rules: Vec<PathRule>,
}

/// One `{path, action}` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    pub id: u32,
    pub pattern: Glob,
    pub action: ActionKind,
    /// Where the rule starts.
    pub at: Location,
    /// Where its `path` value is (for errors about the path).
    pub path_at: Location,
    /// The rule in one line, as written.
    pub text: String,
}

/// `spec.egress`. An absent section is `default: deny` with no rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressSection {
    pub default: ActionKind,
    pub rules: Vec<EgressRule>,
}

/// One egress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressRule {
    pub id: u32,
    pub target: Target,
    /// Inclusive ranges, sorted and merged; empty means every port (always
    /// empty for ICMP, which has none).
    pub ports: Vec<PortRange>,
    /// `None` means both TCP and UDP (never ICMP).
    pub protocol: Option<Protocol>,
    pub action: ActionKind,
    pub at: Location,
    /// Where its `cidr` or `host` value is.
    pub target_at: Location,
    pub text: String,
}

impl EgressRule {
    /// Whether the rule covers `protocol` (a rule without one covers TCP and UDP).
    pub fn covers_protocol(&self, protocol: Protocol) -> bool {
        match self.protocol {
            Some(p) => p == protocol,
            None => protocol != Protocol::Icmp,
        }
    }

    /// Whether the rule matches a connection to `port` over `protocol` (the port
    /// of an ICMP connection means nothing).
    pub fn matches_port(&self, port: u16, protocol: Protocol) -> bool {
        self.covers_protocol(protocol)
            && (protocol == Protocol::Icmp || self.ports.is_empty() || self.ports.iter().any(|r| r.contains(port)))
    }
}

/// What an egress rule is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A network, host bits zero. IPv4 networks also cover IPv4-mapped IPv6.
    Cidr(IpNet),
    /// A DNS name, lowercase, possibly `*.` + a domain (allow or ask only).
    Host(String),
}

/// An inclusive port range (`lo == hi` for one port); never contains 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

/// `spec.egress.unix`: connects (and datagrams) to local (AF_UNIX) sockets, by
/// the socket's path. An absent section is `default: allow` with no rules of the
/// file's own; the built-in rules apply whatever the section says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixSection {
    /// Allow, deny or audit: nothing can hold a connect to a local socket, so
    /// never ask.
    pub default: ActionKind,
    /// The file's rules, in file order.
    pub rules: Vec<UnixRule>,
    /// The built-in rules (see `policy::builtin`), after the file's.
    pub builtins: Vec<UnixRule>,
}

impl UnixSection {
    /// The file's rules, then the built-in ones: id order.
    pub fn all(&self) -> impl Iterator<Item = &UnixRule> {
        self.rules.iter().chain(&self.builtins)
    }
}

/// One `{path, action}` rule of `egress.unix`, or a built-in one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixRule {
    pub id: u32,
    pub target: UnixTarget,
    pub action: ActionKind,
    /// Where the rule starts (line 0 for a built-in rule).
    pub at: Location,
    /// Where its `path` value is.
    pub target_at: Location,
    /// The rule in one line, as written (a built-in rule says it is one, and why).
    pub text: String,
    /// For a built-in rule, why the socket is protected; `None` for a rule of the file.
    pub builtin: Option<&'static str>,
}

impl UnixRule {
    /// Where the rule stands in the precedence of its kind before specificity:
    /// the file's patterns, then the built-in rules (so no pattern of the file,
    /// not even `/**`, opens a protected socket), then the file's exact rules (a
    /// path named exactly replaces the built-in rule for it).
    pub(crate) fn tier(&self) -> u8 {
        match (&self.target, self.builtin) {
            (_, Some(_)) => 1,
            (UnixTarget::Path(g), None) if !g.is_exact() => 0,
            _ => 2,
        }
    }
}

/// What a unix rule is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnixTarget {
    /// A socket file's path: exact, `DIR/**`, or a `*`/`**` pattern, as in write
    /// rules (symlinks resolved).
    Path(Glob),
    /// An abstract socket (`@name` in the file): its name without the `@`,
    /// matched exactly.
    Abstract(String),
}

impl UnixTarget {
    /// The kernel's trie key of an abstract socket: `@`, the name's bytes and a
    /// NUL. A socket path always starts with `/`, so the two never meet, and the
    /// NUL makes it exact, as for an exact path.
    pub fn abstract_key(name: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(name.len() + 2);
        key.push(b'@');
        key.extend_from_slice(name);
        key.push(0);
        key
    }
}

/// `spec.system`: opt-ins to things that could change what enforcement sees. Each
/// is denied unless the policy allows it; nothing here can allow bpf(), kernel
/// modules, kexec, raw memory, or reaching agentd or another identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct System {
    /// `namespaces: allow`: may create namespaces, and mount inside mount
    /// namespaces it created (sandboxes such as bubblewrap). Paths are still judged
    /// in the host's reference mount view, so this never weakens a path rule.
    pub namespaces: bool,
    /// `ptrace: allow`: may trace processes of the same identity (never another
    /// identity's, an unbound process or agentd).
    pub ptrace: bool,
}

impl System {
    /// The keys of `spec.system`, in the order they are shown.
    pub const KEYS: [&'static str; 2] = ["namespaces", "ptrace"];

    /// Whether the key named `key` (one of [`System::KEYS`]) is allowed.
    pub fn allows(&self, key: &str) -> bool {
        match key {
            "namespaces" => self.namespaces,
            "ptrace" => self.ptrace,
            _ => false,
        }
    }

    /// Each key with `allow` or `deny`, e.g. for `policy show`.
    pub fn entries(&self) -> [(&'static str, &'static str); 2] {
        Self::KEYS.map(|k| (k, if self.allows(k) { "allow" } else { "deny" }))
    }

    /// `agent_common::identity_flags` bits of what is allowed.
    pub fn flags(&self) -> u8 {
        use agent_common::identity_flags;
        let mut flags = 0;
        if self.namespaces {
            flags |= identity_flags::NAMESPACES;
        }
        if self.ptrace {
            flags |= identity_flags::PTRACE;
        }
        flags
    }
}

/// `spec.approvals`: how `ask` holds behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Approvals {
    /// How long an action is held before `on_timeout` applies.
    pub timeout: Duration,
    /// `deny` or `allow`.
    pub on_timeout: ActionKind,
    /// Holds waiting at once for this identity; more are denied at once (reason: the cap).
    pub max_pending: u32,
}

impl Default for Approvals {
    /// The values of the format's example: a minute, then deny; eight at a time.
    fn default() -> Self {
        Approvals { timeout: Duration::from_secs(60), on_timeout: ActionKind::Deny, max_pending: 8 }
    }
}

/// `spec.receipts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Receipts {
    /// Also sign allowed actions (denials, holds and approvals always are).
    pub allows: bool,
}

/// A network as a 128-bit prefix, IPv4 as IPv4-mapped IPv6: the kernel's key space.
pub(crate) fn mapped_net(net: &IpNet) -> (u128, u8) {
    match net {
        IpNet::V4(n) => (u128::from_be_bytes(n.network().to_ipv6_mapped().octets()), 96 + n.prefix_len()),
        IpNet::V6(n) => (u128::from_be_bytes(n.network().octets()), n.prefix_len()),
    }
}

/// An address in the kernel's key space.
pub(crate) fn mapped_addr(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from_be_bytes(a.to_ipv6_mapped().octets()),
        IpAddr::V6(a) => u128::from_be_bytes(a.octets()),
    }
}

/// Whether the mapped network `(net, len)` contains the mapped address.
pub(crate) fn net_contains((net, len): (u128, u8), addr: u128) -> bool {
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
    net & mask == addr & mask
}
