//! A validated policy to the entries of the kernel's LPM tries.
//!
//! The kernel does one longest-prefix lookup per decision, so the compiler's job is
//! to lay rules out such that that lookup gives exactly the evaluator's answer:
//!
//! - Paths: an exact rule is the real path plus a NUL (it only matches a lookup that
//!   ends there, and beats every prefix); `DIR/**` is the real `DIR/`. The longest
//!   matching key is then the format's "exact beats pattern, longer literal prefix
//!   wins". Patterns the trie cannot express (`*` inside a name, `**` before the
//!   end) go into one automaton per kind ([`super::automaton`]). Every rule carries
//!   its rank in the kind's precedence order, and the kernel takes the higher-ranked
//!   of the trie's match and the automaton's.
//! - Egress: one entry per distinct network, holding its own port rules followed by
//!   those of every shorter network that covers it, in the format's precedence
//!   order (ICMP rules, port 0..=65535 and protocol 1, ahead of the rest). The
//!   lookup finds the longest network containing the address, and the first port
//!   rule that matches is then the evaluator's most specific rule; for ICMP
//!   (looked up as port 0, protocol 1) no match is a deny, never the default.
//!
//! What the kernel cannot enforce yet is either refused (if skipping it could let
//! something through) or skipped with a warning (if that only denies more).

use std::{cmp::Reverse, collections::BTreeMap, os::unix::ffi::OsStrExt as _};

use agent_common::{EgressRules, GlobState, PathRule as KernelPathRule, PortRule, MAX_PORT_RULES, PATH_KEY_LEN};

use super::{
    automaton,
    compiled::{CompiledPolicy, EgressEntry, InodeEntry, PathEntry},
    error::{ErrorKind, Errors, Location, PolicyErrors},
    eval::effective_pattern,
    glob::KernelForm,
    glob::Specificity,
    model::{
        mapped_net, net_contains, ActionKind, EgressRule, Mode, PathRule, PathSection, Policy, Protocol, RuleKind,
        Target, UnixRule, UnixSection, UnixTarget,
    },
    path::{real_path, FileId, FileSystem, RealPaths},
    validate::egress_rank_within_net,
};

/// Compiles a validated policy for the kernel, resolving rule paths on this machine.
pub fn compile(policy: &Policy) -> Result<CompiledPolicy, PolicyErrors> {
    compile_with(policy, &FileSystem)
}

pub(crate) fn compile_with(policy: &Policy, fs: &dyn RealPaths) -> Result<CompiledPolicy, PolicyErrors> {
    let mut c = Compiler { policy, errors: Errors::new(&policy.file), warnings: policy.warnings.clone() };
    let exec = c.paths(RuleKind::Exec, &policy.exec, &ranks(&policy.exec, fs), fs);
    let exec_inodes = exec_inodes(&policy.exec, fs);
    let write = c.paths(RuleKind::Write, &policy.write, &ranks(&policy.write, fs), fs);
    let unix = c.unix(fs);
    let mut globs = c.automaton(RuleKind::Exec, &exec, 1, MAX_GLOB_STATES);
    let exec_glob = if globs.is_empty() { 0 } else { 1 };
    let write_first = 1 + globs.len() as u16;
    let write_states = c.automaton(RuleKind::Write, &write, write_first, MAX_GLOB_STATES - globs.len());
    let write_glob = if write_states.is_empty() { 0 } else { write_first };
    globs.extend(write_states);
    // Never empty: the built-in rules for per-user sockets are patterns.
    let unix_first = 1 + globs.len() as u16;
    let unix_states = c.automaton(RuleKind::Unix, &unix, unix_first, MAX_GLOB_STATES - globs.len());
    let unix_glob = if unix_states.is_empty() { 0 } else { unix_first };
    globs.extend(unix_states);
    let egress = c.egress();
    let guarded = guarded_dirs(&policy.write, fs);
    if policy.unheld_ask() {
        c.warnings.push(format!(
            "{}: of `ask` writes, only an open of an existing file is held; creating, renaming, linking, removing or truncating by path an `ask` file, and a UDP send to an `ask` destination, are stopped at once and become requests whose approval lets exactly that file, or address and port, through",
            policy.file
        ));
    }
    let Compiler { errors, warnings, .. } = c;
    errors.finish()?;
    Ok(CompiledPolicy {
        name: policy.name.clone(),
        hash: policy.hash.clone(),
        monitor: policy.mode == Mode::Monitor,
        exec_default: policy.exec.default.code(),
        write_default: policy.write.default.code(),
        egress_default: policy.egress.default.code(),
        exec: exec.entries,
        exec_inodes,
        write: write.entries,
        egress,
        globs,
        exec_glob,
        write_glob,
        guarded,
        unix: unix.entries,
        unix_glob,
        unix_default: policy.unix.default.code(),
        system_flags: policy.system.flags() | icmp_flag(policy),
        rules: policy.rule_infos(),
        warnings,
    })
}

/// The directories whose renaming, removal or replacement would move what a
/// deny or ask write rule protects out from under it (a rule on `DIR/**`
/// protects `DIR` and every directory above it; one on a file, the directories
/// above the file). Only the literal part of a pattern can be guarded by name:
/// for `/home/*/work/**` that is `/home`.
fn guarded_dirs(section: &PathSection, fs: &dyn RealPaths) -> Vec<PathEntry> {
    let mut by_dir: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    for r in &section.rules {
        if !matches!(r.action, ActionKind::Deny | ActionKind::Ask) {
            continue;
        }
        let dir = r.pattern.literal_dir();
        let mut path = real_path(&dir, fs).unwrap_or(dir);
        if r.pattern.is_exact() {
            // The file itself is judged by the rule; what is above it is guarded.
            match path.iter().rposition(|&b| b == b'/') {
                Some(i) => path.truncate(i),
                None => continue,
            }
        }
        let mut end = path.len();
        while end > 1 {
            by_dir.entry(path[..end].to_vec()).or_insert(r.id);
            match path[..end].iter().rposition(|&b| b == b'/') {
                Some(i) => end = i,
                None => break,
            }
        }
    }
    by_dir
        .into_iter()
        .filter(|(dir, _)| dir.len() < PATH_KEY_LEN)
        .map(|(mut dir, rule_id)| {
            dir.push(0);
            PathEntry { key: dir, value: KernelPathRule { action: agent_common::action::DENY, _pad: [0; 3], rule_id, rank: 0 } }
        })
        .collect()
}

/// `identity_flags::ICMP` when some rule can let ICMP through (allow, audit, or
/// ask, which the kernel judges per destination): without it the kernel refuses
/// to create ICMP sockets at all.
fn icmp_flag(policy: &Policy) -> u8 {
    let lets_through = |r: &EgressRule| r.protocol == Some(Protocol::Icmp) && r.action != ActionKind::Deny;
    if policy.egress.rules.iter().any(lets_through) {
        agent_common::identity_flags::ICMP
    } else {
        0
    }
}

/// A unix rule on a path as a path rule, to lay it out like the others.
fn path_rule(r: &UnixRule) -> Option<PathRule> {
    let UnixTarget::Path(pattern) = &r.target else { return None };
    Some(PathRule {
        id: r.id,
        pattern: pattern.clone(),
        action: r.action,
        at: r.at,
        path_at: r.target_at,
        text: r.text.clone(),
    })
}

/// Pins every exact exec rule whose file exists to its (dev, inode), so the file
/// gets the rule's decision under any name (a hard link, a bind mount). Where
/// several exact rules name the same file, the strongest action wins, then the
/// earlier rule: the evaluator decides the same way.
fn exec_inodes(section: &PathSection, fs: &dyn RealPaths) -> Vec<InodeEntry> {
    let mut by_id: BTreeMap<FileId, &super::model::PathRule> = BTreeMap::new();
    for r in &section.rules {
        let Some(KernelForm::Exact(p)) = r.pattern.kernel_form() else { continue };
        let Some(real) = real_path(&p, fs) else { continue };
        let Some(id) = fs.file_id(std::path::Path::new(std::ffi::OsStr::from_bytes(&real))) else { continue };
        match by_id.get(&id) {
            Some(other) if (other.action, Reverse(other.id)) >= (r.action, Reverse(r.id)) => {}
            _ => {
                by_id.insert(id, r);
            }
        }
    }
    by_id
        .into_iter()
        .map(|(id, r)| InodeEntry {
            dev: id.dev,
            ino: id.ino,
            value: KernelPathRule { action: r.action.code(), _pad: [0; 3], rule_id: r.id, rank: 0 },
        })
        .collect()
}

struct Compiler<'p> {
    policy: &'p Policy,
    errors: Errors,
    warnings: Vec<String>,
}

/// The trie key of a path rule's kernel form, with its directory resolved.
fn path_key(form: &KernelForm, fs: &dyn RealPaths) -> Vec<u8> {
    match form {
        KernelForm::Exact(p) => {
            let mut key = real_path(p, fs).unwrap_or_else(|| p.clone());
            key.push(0);
            key
        }
        KernelForm::Below(dir) => {
            let mut key = real_path(dir, fs).unwrap_or_else(|| dir.clone());
            if key != b"/" {
                key.push(b'/');
            }
            key
        }
    }
}

/// A key for people: the NUL of an exact key is not shown.
fn show_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key.strip_suffix(b"\0").unwrap_or(key)).into_owned()
}

/// Automaton states one policy may use in the kernel, all kinds together: a
/// quarter of `GLOB_STATES`, so that several policies, and an old and a new
/// version during an apply, fit beside each other.
pub const MAX_GLOB_STATES: usize = agent_common::GLOB_STATES_MAX as usize / 4;

/// A kind's rules for the kernel: trie entries, and the patterns the trie cannot
/// express, for the automaton.
struct PathTables {
    /// Sorted by key.
    entries: Vec<PathEntry>,
    patterns: Vec<automaton::Pattern>,
    /// Where the first pattern rule of the file is, for errors about the automaton.
    first_pattern: Option<Location>,
}

/// Every rule's rank in the format's precedence among the rules of its kind
/// (1 the weakest): more specific (as its pattern reads on this machine), then
/// the stronger action, then the earlier rule. The kernel compares ranks between
/// a trie match and an automaton match; the evaluator orders by the same key.
fn ranks(section: &PathSection, fs: &dyn RealPaths) -> BTreeMap<u32, u32> {
    let mut order: Vec<_> = section
        .rules
        .iter()
        .map(|r| ((effective_pattern(&r.pattern, fs).specificity(), r.action, Reverse(r.id)), r.id))
        .collect();
    order.sort();
    order.into_iter().enumerate().map(|(i, (_, id))| (id, i as u32 + 1)).collect()
}

/// The same for `egress.unix`, built-in rules included: first by
/// [`UnixRule::tier`] (the file's patterns, the built-in rules, the file's exact
/// paths and abstract names), then as above. The evaluator orders by the same key.
fn unix_ranks(section: &UnixSection, fs: &dyn RealPaths) -> BTreeMap<u32, u32> {
    let mut order: Vec<_> = section
        .all()
        .map(|r| {
            let spec = match &r.target {
                UnixTarget::Path(g) => effective_pattern(g, fs).specificity(),
                UnixTarget::Abstract(name) => {
                    Specificity { exact: true, literal_len: name.len() + 1, star_first: false }
                }
            };
            ((r.tier(), spec, r.action, Reverse(r.id)), r.id)
        })
        .collect();
    order.sort();
    order.into_iter().enumerate().map(|(i, (_, id))| (id, i as u32 + 1)).collect()
}

impl Compiler<'_> {
    /// A kind's path rules as trie entries and automaton patterns, each with its
    /// rank from `rank`.
    fn paths(
        &mut self,
        kind: RuleKind,
        section: &PathSection,
        rank: &BTreeMap<u32, u32>,
        fs: &dyn RealPaths,
    ) -> PathTables {
        let mut by_key: BTreeMap<Vec<u8>, &super::model::PathRule> = BTreeMap::new();
        let mut patterns = Vec::new();
        let mut first_pattern = None;
        for r in &section.rules {
            let Some(form) = r.pattern.kernel_form() else {
                // `*` in a name or `**` before the end: the automaton's.
                patterns.push(automaton::Pattern {
                    regex: effective_pattern(&r.pattern, fs).regex(),
                    rule_id: r.id,
                    rank: rank[&r.id],
                    action: r.action.code(),
                });
                first_pattern.get_or_insert(r.path_at);
                continue;
            };
            let key = path_key(&form, fs);
            if key.len() > PATH_KEY_LEN {
                self.errors.push(
                    ErrorKind::Limit,
                    r.path_at,
                    format!(
                        "path {:?} is {} bytes as a kernel key ({}), over the kernel's {PATH_KEY_LEN}",
                        r.pattern.as_str(),
                        key.len(),
                        show_key(&key)
                    ),
                    Some("use a rule for a shorter directory (DIR/**)".into()),
                );
                continue;
            }
            match by_key.get(&key) {
                None => {
                    by_key.insert(key, r);
                }
                Some(&other) => {
                    // Same key: the stronger action wins, then the earlier rule; the
                    // evaluator breaks the tie the same way.
                    let (winner, loser) = if (r.action, Reverse(r.id)) > (other.action, Reverse(other.id)) {
                        (r, other)
                    } else {
                        (other, r)
                    };
                    self.warnings.push(format!(
                        "{}:{}:{}: {} rule {} {} can never match on this machine: it is the same real path ({}) as rule {} {} at line {}, which wins",
                        self.policy.file,
                        loser.at.line,
                        loser.at.column,
                        kind.as_str(),
                        loser.id,
                        loser.text,
                        show_key(&key),
                        winner.id,
                        winner.text,
                        winner.at.line,
                    ));
                    by_key.insert(key, winner);
                }
            }
        }
        let entries = by_key
            .into_iter()
            .map(|(key, r)| PathEntry {
                key,
                value: KernelPathRule { action: r.action.code(), _pad: [0; 3], rule_id: r.id, rank: rank[&r.id] },
            })
            .collect();
        PathTables { entries, patterns, first_pattern }
    }

    /// `egress.unix`: the file's path rules laid out as write rules are, its
    /// abstract names as exact keys of their own, and the built-in rules, except
    /// where the file names a protected path exactly (its rule has that key).
    fn unix(&mut self, fs: &dyn RealPaths) -> PathTables {
        let section = &self.policy.unix;
        let rank = unix_ranks(section, fs);
        let paths =
            PathSection { default: section.default, rules: section.rules.iter().filter_map(path_rule).collect() };
        let mut t = self.paths(RuleKind::Unix, &paths, &rank, fs);
        let value =
            |r: &UnixRule| KernelPathRule { action: r.action.code(), _pad: [0; 3], rule_id: r.id, rank: rank[&r.id] };
        for r in &section.rules {
            if let UnixTarget::Abstract(name) = &r.target {
                // At most 109 bytes: validation keeps names to what a socket address holds.
                t.entries.push(PathEntry { key: UnixTarget::abstract_key(name.as_bytes()), value: value(r) });
            }
        }
        for b in &section.builtins {
            let UnixTarget::Path(pattern) = &b.target else { continue };
            let Some(form) = pattern.kernel_form() else {
                t.patterns.push(automaton::Pattern {
                    regex: effective_pattern(pattern, fs).regex(),
                    rule_id: b.id,
                    rank: rank[&b.id],
                    action: b.action.code(),
                });
                continue;
            };
            let key = path_key(&form, fs);
            if key.len() > PATH_KEY_LEN {
                // Skipping it would let the socket through: refuse the policy.
                self.errors.push(
                    ErrorKind::Limit,
                    Location::new(1, 1),
                    format!(
                        "the built-in rule {} for {} cannot be enforced: its real path ({}) is {} bytes as a kernel key, over the kernel's {PATH_KEY_LEN}",
                        b.id,
                        pattern,
                        show_key(&key),
                        key.len()
                    ),
                    Some("run agentd with a --socket whose real path is shorter".into()),
                );
                continue;
            }
            if !t.entries.iter().any(|e| e.key == key) {
                t.entries.push(PathEntry { key, value: value(b) });
            }
        }
        t.entries.sort_by(|a, b| a.key.cmp(&b.key));
        t
    }

    /// The automaton for one kind's patterns, numbered from `first`; empty when
    /// the kind has none.
    fn automaton(&mut self, kind: RuleKind, t: &PathTables, first: u16, limit: usize) -> Vec<GlobState> {
        if t.patterns.is_empty() {
            return Vec::new();
        }
        // Only built-in patterns: blame the top of the file (the other kinds'
        // patterns used up the room).
        let at = t.first_pattern.unwrap_or(Location::new(1, 1));
        match automaton::build(&t.patterns, first, limit) {
            Ok(states) => states,
            Err(e) => {
                self.errors.push(
                    ErrorKind::Limit,
                    at,
                    format!("the {} path patterns (`*` inside a name, `**` before the end): {e}", kind.as_str()),
                    Some(format!(
                        "the kernel matches all of a policy's patterns with one automaton of at most {MAX_GLOB_STATES} states; use fewer patterns with several `*`/`**`, or DIR/** rules"
                    )),
                );
                Vec::new()
            }
        }
    }

    fn egress(&mut self) -> Vec<EgressEntry> {
        let policy = self.policy;
        let default = policy.egress.default;
        let mut cidrs: Vec<((u128, u8), &EgressRule)> = Vec::new();
        for r in &policy.egress.rules {
            match &r.target {
                Target::Cidr(net) => {
                    if r.protocol == Some(Protocol::Icmp) && r.action == ActionKind::Ask {
                        // Narrowing only, but not what `ask` says: tell.
                        self.warnings.push(format!(
                            "{}:{}:{}: icmp rule {} asks, but nothing can hold a ping: it is denied",
                            policy.file, r.at.line, r.at.column, r.text
                        ));
                    }
                    cidrs.push((mapped_net(net), r))
                }
                Target::Host(host) => self.host_rule(r, host, default),
            }
        }
        let mut nets: Vec<(u128, u8)> = cidrs.iter().map(|(n, _)| *n).collect();
        nets.sort();
        nets.dedup();
        let mut entries = Vec::with_capacity(nets.len());
        for net in nets {
            let mut applicable: Vec<&((u128, u8), &EgressRule)> =
                cidrs.iter().filter(|((a, len), _)| *len <= net.1 && net_contains((*a, *len), net.0)).collect();
            // ICMP rules first: no TCP or UDP lookup can match them, so where they
            // sit changes nothing for those, and ahead of the rest an ICMP lookup
            // finds its rule before any rule without a protocol (TCP and UDP
            // only, but stored as protocol 0). Among themselves, and among the
            // rest, the format's order: longest network, then the network's own.
            applicable.sort_by_key(|((_, len), r)| {
                (r.protocol != Some(Protocol::Icmp), Reverse(*len), egress_rank_within_net(r))
            });
            let mut list: Vec<PortRule> = Vec::new();
            'rules: for (_, r) in &applicable {
                let all = [super::model::PortRange { lo: 0, hi: u16::MAX }];
                let ranges = if r.ports.is_empty() { &all[..] } else { &r.ports[..] };
                // An ICMP rule has no ports: 0..=65535 holds the 0 the kernel
                // looks ICMP up with.
                let protocol = r.protocol.map_or(0, |p| p.number());
                for pr in ranges {
                    list.push(PortRule {
                        port_lo: pr.lo,
                        port_hi: pr.hi,
                        protocol,
                        action: r.action.code(),
                        _pad: [0; 2],
                        rule_id: r.id,
                    });
                    // Every port of TCP and UDP: nothing after it can ever be
                    // reached (ICMP rules all came before).
                    if protocol == 0 && pr.lo == 0 && pr.hi == u16::MAX {
                        break 'rules;
                    }
                }
            }
            if list.len() > MAX_PORT_RULES {
                let own = applicable
                    .iter()
                    .filter(|(n, _)| *n == net)
                    .map(|(_, r)| r)
                    .min_by_key(|r| r.id)
                    .expect("a network has a rule");
                let Target::Cidr(shown) = &own.target else { unreachable!("only cidr rules have networks") };
                let covering: Vec<String> =
                    applicable.iter().filter(|(n, _)| *n != net).map(|(_, r)| format!("line {}", r.at.line)).collect();
                self.errors.push(
                    ErrorKind::Limit,
                    own.target_at,
                    format!(
                        "{} port rules apply to {shown}{}, more than the {MAX_PORT_RULES} the kernel holds per network",
                        list.len(),
                        if covering.is_empty() {
                            String::new()
                        } else {
                            format!(" (its own and those of covering networks at {})", covering.join(", "))
                        },
                    ),
                    Some(
                        "merge port ranges (\"8000-8100\" is one rule), or split the network's rules differently"
                            .into(),
                    ),
                );
                continue;
            }
            let mut value = EgressRules { count: list.len() as u32, ..Default::default() };
            value.rules[..list.len()].copy_from_slice(&list);
            entries.push(EgressEntry { addr: net.0.to_be_bytes(), prefix_len: u32::from(net.1), value });
        }
        entries
    }

    /// Host rules compile to nothing until DNS is intercepted. That only narrows
    /// when the default is at least as strict as the rule; an `ask` under an
    /// allowing default would quietly become an allow, so it is refused.
    fn host_rule(&mut self, r: &EgressRule, host: &str, default: ActionKind) {
        let p = &self.policy;
        if r.action == ActionKind::Ask && matches!(default, ActionKind::Allow | ActionKind::Audit) {
            self.errors.push(
                ErrorKind::Unenforceable,
                r.target_at,
                format!(
                    "host rule for {host:?} (ask) cannot be enforced in the kernel yet, and the egress default ({default}) would let these connections through without asking"
                ),
                Some("make the egress default deny or ask, or ask by cidr instead".into()),
            );
            return;
        }
        self.warnings.push(format!(
            "{}:{}:{}: host rule {} is not enforced yet (no DNS interception in this build): connections to {host} fall to the egress default ({default})",
            p.file, r.at.line, r.at.column, r.text
        ));
    }
}
