//! What changes between two versions of a policy: the rules as written, and what a
//! reviewer needs more, the actions whose decision changes.
//!
//! Rules are matched by what they are about (kind and path pattern; egress target,
//! ports and protocol; unix path or abstract name), never by id or position, so a
//! reorder is no change. The built-in unix rules are the same on both sides.
//! Decisions are compared on probes built from both policies' rules: for every
//! rule, actions on it, just inside it and just outside its edges, where a change
//! of any rule shows. A pattern matches endlessly many paths, so this is not a proof
//! that nothing else changes, but every edge either policy draws is probed from
//! both sides. Each probe is judged by [`evaluate`](super::evaluate) on this
//! machine, so symlinks read as the kernel will read them.

use std::{
    collections::{BTreeSet, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::IpNet;

use super::{
    eval::{evaluate_with, Action},
    glob::Glob,
    model::{
        mapped_addr, mapped_net, net_contains, ActionKind, EgressRule, Mode, PathRule, Policy, Protocol, RuleKind,
        System, Target, UnixRule, UnixTarget,
    },
    path::{FileSystem, RealPaths},
};

/// A rule as a diff shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub id: u32,
    pub line: usize,
    /// The rule in one line, as written.
    pub text: String,
    pub action: ActionKind,
}

/// One rule-level change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleChange {
    Added {
        kind: RuleKind,
        new: RuleRef,
    },
    Removed {
        kind: RuleKind,
        old: RuleRef,
    },
    /// A rule about the same thing with another action (for egress: on the same
    /// target, also with other ports or another protocol).
    Changed {
        kind: RuleKind,
        old: RuleRef,
        new: RuleRef,
    },
}

impl RuleChange {
    pub fn kind(&self) -> RuleKind {
        match self {
            RuleChange::Added { kind, .. } | RuleChange::Removed { kind, .. } | RuleChange::Changed { kind, .. } => {
                *kind
            }
        }
    }

    /// The rule before, if there was one.
    pub fn old_rule(&self) -> Option<&RuleRef> {
        match self {
            RuleChange::Removed { old, .. } | RuleChange::Changed { old, .. } => Some(old),
            RuleChange::Added { .. } => None,
        }
    }

    /// The rule after, if there is one.
    pub fn new_rule(&self) -> Option<&RuleRef> {
        match self {
            RuleChange::Added { new, .. } | RuleChange::Changed { new, .. } => Some(new),
            RuleChange::Removed { .. } => None,
        }
    }
}

/// How one probe is decided under one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: ActionKind,
    /// The deciding rule, 0 for the kind's default.
    pub rule_id: u32,
    /// Its line (`None` for the default).
    pub line: Option<usize>,
    /// Its text (`None` for the default).
    pub rule_text: Option<String>,
}

/// A probe whose decision, or deciding rule, is not the same under both policies
/// (a rule edited in place, e.g. to other ports, is still the same rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionChange {
    pub probe: Action,
    pub old: Outcome,
    pub new: Outcome,
}

/// Everything that differs between two policies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    /// `spec.mode`, old and new, when it changes.
    pub mode: Option<(Mode, Mode)>,
    /// Per kind whose default changes: old and new default.
    pub defaults: Vec<(RuleKind, ActionKind, ActionKind)>,
    /// Per `spec.system` key that changes: the key, and whether it was and is
    /// allowed.
    pub system: Vec<(&'static str, bool, bool)>,
    /// Exec, then write, then egress, then unix; in each, old rules in file
    /// order, then the added ones in file order.
    pub rules: Vec<RuleChange>,
    /// How many actions were judged under both.
    pub probes: usize,
    /// In probe order: exec, write, connect, unix; paths and addresses ascending.
    pub decisions: Vec<DecisionChange>,
}

impl PolicyDiff {
    /// Nothing differs that this diff looks at.
    pub fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.defaults.is_empty()
            && self.system.is_empty()
            && self.rules.is_empty()
            && self.decisions.is_empty()
    }

    /// Whether the kernel would treat some action differently: a probe's decision
    /// changes, or the mode does (which changes what every deny does), or a
    /// `spec.system` opt-in does.
    pub fn changes_enforcement(&self) -> bool {
        self.mode.is_some() || !self.system.is_empty() || !self.decisions.is_empty()
    }
}

/// Compares `old` with `new` on this machine.
pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    diff_with(old, new, &FileSystem)
}

pub(crate) fn diff_with(old: &Policy, new: &Policy, fs: &dyn RealPaths) -> PolicyDiff {
    let mode = (old.mode() != new.mode()).then_some((old.mode(), new.mode()));
    let defaults = [
        (RuleKind::Exec, old.exec.default, new.exec.default),
        (RuleKind::Write, old.write.default, new.write.default),
        (RuleKind::Egress, old.egress.default, new.egress.default),
        (RuleKind::Unix, old.unix.default, new.unix.default),
    ]
    .into_iter()
    .filter(|(_, o, n)| o != n)
    .collect();
    let system = System::KEYS
        .into_iter()
        .map(|k| (k, old.system.allows(k), new.system.allows(k)))
        .filter(|(_, o, n)| o != n)
        .collect();

    // Rules are paired old to new (a changed rule is still the same rule); `paired`
    // holds every pair's ids, so that a probe decided by a rule and by its edited
    // version has not changed its deciding rule.
    let mut rules = Vec::new();
    let mut paired = HashSet::new();
    for kind in [RuleKind::Exec, RuleKind::Write] {
        let (o, n) = (&section_rules(old, kind), &section_rules(new, kind));
        rules.extend(match_rules(
            &mut paired,
            kind,
            o,
            n,
            |a, b| a.pattern == b.pattern,
            |_, _| false,
            |a, b| a.action == b.action,
        ));
    }
    let (o, n): (Vec<_>, Vec<_>) = (old.egress.rules.iter().collect(), new.egress.rules.iter().collect());
    rules.extend(match_rules(
        &mut paired,
        RuleKind::Egress,
        &o,
        &n,
        |a, b| a.target == b.target && a.ports == b.ports && a.protocol == b.protocol,
        |a, b| a.target == b.target,
        |a, b| a.action == b.action && a.ports == b.ports && a.protocol == b.protocol,
    ));
    let (o, n): (Vec<_>, Vec<_>) = (old.unix.rules.iter().collect(), new.unix.rules.iter().collect());
    rules.extend(match_rules(
        &mut paired,
        RuleKind::Unix,
        &o,
        &n,
        |a, b| a.target == b.target,
        |_, _| false,
        |a, b| a.action == b.action,
    ));
    // The built-in rules are one list, whose ids move with the file's rules.
    paired.extend(old.unix.builtins.iter().zip(&new.unix.builtins).map(|(a, b)| (a.id, b.id)));

    let probes = probes(old, new);
    let decisions = probes
        .iter()
        .filter_map(|probe| {
            let (a, b) = (judge(old, probe, fs), judge(new, probe, fs));
            let same_rule = (a.rule_id == 0 && b.rule_id == 0) || paired.contains(&(a.rule_id, b.rule_id));
            (a.action != b.action || !same_rule).then(|| DecisionChange { probe: probe.clone(), old: a, new: b })
        })
        .collect();
    PolicyDiff { mode, defaults, system, rules, probes: probes.len(), decisions }
}

/// A rule of either shape, as the diff shows it.
trait Shown {
    fn id(&self) -> u32;
    fn shown(&self) -> RuleRef;
}

impl Shown for &PathRule {
    fn id(&self) -> u32 {
        self.id
    }
    fn shown(&self) -> RuleRef {
        RuleRef { id: self.id, line: self.at.line, text: self.text.clone(), action: self.action }
    }
}

impl Shown for &UnixRule {
    fn id(&self) -> u32 {
        self.id
    }
    fn shown(&self) -> RuleRef {
        RuleRef { id: self.id, line: self.at.line, text: self.text.clone(), action: self.action }
    }
}

impl Shown for &EgressRule {
    fn id(&self) -> u32 {
        self.id
    }
    fn shown(&self) -> RuleRef {
        RuleRef { id: self.id, line: self.at.line, text: self.text.clone(), action: self.action }
    }
}

fn section_rules(p: &Policy, kind: RuleKind) -> Vec<&PathRule> {
    p.path_section(kind).map(|s| s.rules.iter().collect()).unwrap_or_default()
}

/// Pairs old rules with new ones: first those about exactly the same thing
/// (`exact`), then, among the rest, those on the same target (`loose`), each in
/// file order. A pair is a change unless `same`; the unpaired are removed or added.
/// Every pair's (old id, new id) goes into `pairs`.
fn match_rules<R: Shown>(
    pairs: &mut HashSet<(u32, u32)>,
    kind: RuleKind,
    old: &[R],
    new: &[R],
    exact: impl Fn(&R, &R) -> bool,
    loose: impl Fn(&R, &R) -> bool,
    same: impl Fn(&R, &R) -> bool,
) -> Vec<RuleChange> {
    let mut partner: Vec<Option<usize>> = vec![None; old.len()];
    let mut taken = vec![false; new.len()];
    for pass in [&exact as &dyn Fn(&R, &R) -> bool, &loose] {
        for (i, o) in old.iter().enumerate() {
            if partner[i].is_some() {
                continue;
            }
            if let Some(j) = (0..new.len()).find(|&j| !taken[j] && pass(o, &new[j])) {
                partner[i] = Some(j);
                taken[j] = true;
            }
        }
    }
    let mut out = Vec::new();
    for (o, p) in old.iter().zip(&partner) {
        if let Some(j) = p {
            pairs.insert((o.id(), new[*j].id()));
        }
        match p {
            None => out.push(RuleChange::Removed { kind, old: o.shown() }),
            Some(j) if !same(o, &new[*j]) => {
                out.push(RuleChange::Changed { kind, old: o.shown(), new: new[*j].shown() })
            }
            Some(_) => {}
        }
    }
    out.extend(new.iter().zip(&taken).filter(|(_, t)| !**t).map(|(n, _)| RuleChange::Added { kind, new: n.shown() }));
    out
}

/// The decision for `probe`, and the rule that made it.
fn judge(p: &Policy, probe: &Action, fs: &dyn RealPaths) -> Outcome {
    let d = evaluate_with(p, probe, fs);
    let line = p.rule_line(d.rule_id);
    Outcome { action: d.action, rule_id: d.rule_id, line, rule_text: d.rule_text }
}

/// A probe in the order the diff lists them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Probe {
    Exec(String),
    Write(String),
    /// Address, port (0 for ICMP), protocol.
    Connect(IpAddr, u16, Protocol),
    /// A local socket's path, or `@name`.
    Unix(String),
}

impl Probe {
    fn action(&self) -> Action {
        match self {
            Probe::Exec(p) => Action::Exec { path: PathBuf::from(p) },
            Probe::Write(p) => Action::Write { path: PathBuf::from(p) },
            Probe::Connect(addr, port, protocol) => Action::Connect { addr: *addr, port: *port, protocol: *protocol },
            Probe::Unix(p) => Action::ConnectUnix { path: PathBuf::from(p) },
        }
    }
}

/// Every action the diff judges under both policies.
fn probes(old: &Policy, new: &Policy) -> Vec<Action> {
    let mut set = BTreeSet::new();
    for (kind, make) in [(RuleKind::Exec, Probe::Exec as fn(String) -> Probe), (RuleKind::Write, Probe::Write)] {
        let before = set.len();
        for p in [old, new] {
            for r in p.path_section(kind).map(|s| s.rules.as_slice()).unwrap_or_default() {
                set.extend(path_probes(&r.pattern).into_iter().map(make));
            }
        }
        if set.len() == before {
            // No rules on either side: one arbitrary path, so a changed default shows.
            set.insert(make("/x".into()));
        }
    }
    let egress: Vec<&EgressRule> = old.egress.rules.iter().chain(&new.egress.rules).collect();
    set.extend(egress_probes(&egress));
    // Unix sockets: probed like paths, the built-in rules' too (their edges show
    // a changed default), and every abstract name as itself.
    for r in old.unix.all().chain(new.unix.all()) {
        match &r.target {
            UnixTarget::Path(g) => set.extend(path_probes(g).into_iter().map(Probe::Unix)),
            UnixTarget::Abstract(name) => {
                set.insert(Probe::Unix(format!("@{name}")));
            }
        }
    }
    set.iter().map(Probe::action).collect()
}

/// For an exact path, the path; for a pattern, a path inside it, one a level
/// deeper, the literal directory itself and a sibling just outside the literal
/// prefix (`/home/alice/work/**` gives `/home/alice/work/x`,
/// `/home/alice/work/x/x`, `/home/alice/work` and `/home/alice/workx`).
fn path_probes(pattern: &Glob) -> Vec<String> {
    let text = pattern.as_str();
    if pattern.is_exact() {
        return vec![text.to_string()];
    }
    // Validated: absolute, no empty components, `**` only as a whole component.
    let comps: Vec<&str> = text.trim_start_matches('/').split('/').collect();
    let first_wild = comps.iter().position(|c| c.contains('*')).unwrap_or(comps.len());
    let instance = |c: &&str| if *c == "**" { "x".to_string() } else { c.replace('*', "x") };
    let inside = format!("/{}", comps.iter().map(instance).collect::<Vec<_>>().join("/"));
    let mut out = vec![format!("{inside}/x"), inside];
    let dir = format!("/{}", comps[..first_wild].join("/"));
    if first_wild > 0 {
        out.push(format!("{dir}x"));
        out.push(dir.clone());
    }
    // A wildcard inside a name (`py*`): a name that just misses its literal head.
    let wild = comps.get(first_wild).copied().unwrap_or_default();
    let mut head = wild[..wild.find('*').unwrap_or(0)].to_string();
    if let Some(last) = head.pop() {
        head.push(if last == 'x' { 'y' } else { 'x' });
        let sep = if dir.ends_with('/') { "" } else { "/" };
        out.push(format!("{dir}{sep}{head}"));
    }
    out
}

/// For every CIDR rule of either policy: its first and last address and one just
/// outside each end; at each, the edges of every port range of every rule whose
/// network holds it (one below, first, last, one above) and a port no rule lists;
/// over TCP and UDP, and ICMP when either policy has an ICMP rule (without one
/// ICMP is denied everywhere, so nothing about it can change).
fn egress_probes(rules: &[&EgressRule]) -> BTreeSet<Probe> {
    let nets: Vec<(&EgressRule, IpNet)> = rules
        .iter()
        .filter_map(|r| match r.target {
            Target::Cidr(net) => Some((*r, net)),
            Target::Host(_) => None,
        })
        .collect();
    let unlisted = (1..=u16::MAX).find(|&port| !rules.iter().any(|r| r.ports.iter().any(|pr| pr.contains(port))));
    let mut addrs: BTreeSet<IpAddr> = nets.iter().flat_map(|(_, net)| edges(net)).collect();
    if addrs.is_empty() {
        // No CIDR rules on either side: one documentation address of each family,
        // so a changed default shows.
        addrs.insert(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        addrs.insert(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)));
    }
    let icmp = rules.iter().any(|r| r.protocol == Some(Protocol::Icmp));
    let mut out = BTreeSet::new();
    for addr in addrs {
        if icmp {
            out.insert(Probe::Connect(addr, 0, Protocol::Icmp));
        }
        let mut ports: BTreeSet<u16> = unlisted.into_iter().collect();
        for (r, net) in &nets {
            if !net_contains(mapped_net(net), mapped_addr(addr)) {
                continue;
            }
            for pr in &r.ports {
                ports.extend(
                    [pr.lo.checked_sub(1).filter(|&p| p > 0), Some(pr.lo), Some(pr.hi), pr.hi.checked_add(1)]
                        .into_iter()
                        .flatten(),
                );
            }
        }
        for port in ports {
            out.insert(Probe::Connect(addr, port, Protocol::Tcp));
            out.insert(Probe::Connect(addr, port, Protocol::Udp));
        }
    }
    out
}

/// A network's first and last address, and the addresses just outside it.
fn edges(net: &IpNet) -> Vec<IpAddr> {
    match net {
        IpNet::V4(n) => {
            let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
            [Some(lo), Some(hi), lo.checked_sub(1), hi.checked_add(1)]
                .into_iter()
                .flatten()
                .map(|a| IpAddr::V4(a.into()))
                .collect()
        }
        IpNet::V6(n) => {
            let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
            [Some(lo), Some(hi), lo.checked_sub(1), hi.checked_add(1)]
                .into_iter()
                .flatten()
                .map(|a| IpAddr::V6(a.into()))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{parse, path::NoFiles};

    const HEAD: &str = "apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata:\n  name: t\nspec:\n";

    fn pol(spec: &str) -> Policy {
        parse("t.yaml", &format!("{HEAD}{spec}")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn d(old: &str, new: &str) -> PolicyDiff {
        diff_with(&pol(old), &pol(new), &NoFiles)
    }

    /// The changed probes as `action: old → new` lines, for readable asserts.
    fn changes(d: &PolicyDiff) -> Vec<String> {
        d.decisions.iter().map(|c| format!("{}: {} → {}", c.probe, c.old.action, c.new.action)).collect()
    }

    const CODER: &str = r#"  exec:
    default: deny
    rules:
      - {path: /usr/bin/git, action: allow}
      - {path: "/usr/lib/git-core/**", action: allow}
  write:
    default: deny
    rules:
      - {path: "/home/alice/work/src/**", action: allow}
      - {path: "/home/alice/work/src/.git/hooks/**", action: deny}
  egress:
    default: deny
    rules:
      - {cidr: 10.0.0.0/8, ports: ["1-1024"], action: allow}
      - {cidr: "::1/128", action: allow}
"#;

    #[test]
    fn identical_policies_have_no_changes() {
        let diff = d(CODER, CODER);
        assert!(diff.is_empty(), "{diff:#?}");
        assert!(!diff.changes_enforcement());
        assert!(diff.probes > 0);
    }

    #[test]
    fn a_pure_reorder_changes_no_decision_and_no_rule() {
        let reordered = r#"  egress:
    default: deny
    rules:
      - {cidr: "::1/128", action: allow}
      - {cidr: 10.0.0.0/8, ports: ["1-1024"], action: allow}
  write:
    default: deny
    rules:
      - {path: "/home/alice/work/src/.git/hooks/**", action: deny}
      - {path: "/home/alice/work/src/**", action: allow}
  exec:
    rules:
      - {path: "/usr/lib/git-core/**", action: allow}
      - {path: /usr/bin/git, action: allow}
    default: deny
"#;
        let diff = d(CODER, reordered);
        assert!(diff.is_empty(), "{diff:#?}");
    }

    #[test]
    fn widening_a_write_rule_shows_the_newly_allowed_paths() {
        let wider = CODER.replace("/home/alice/work/src/**", "/home/alice/work/**");
        let diff = d(CODER, &wider);
        assert_eq!(diff.rules.len(), 2, "{:#?}", diff.rules);
        assert!(
            matches!(&diff.rules[0], RuleChange::Removed { kind: RuleKind::Write, old } if old.text.contains("work/src/**"))
        );
        assert!(
            matches!(&diff.rules[1], RuleChange::Added { kind: RuleKind::Write, new } if new.id == 3 && new.line == 14)
        );
        let got = changes(&diff);
        for want in [
            "write /home/alice/work/x: deny → allow",
            "write /home/alice/work/x/x: deny → allow",
            // Just outside the old prefix: a name sharing it.
            "write /home/alice/work/srcx: deny → allow",
            "write /home/alice/work/src: deny → allow",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want:?} in {got:#?}");
        }
        // Still denied, just outside the new prefix; and the hooks stay denied.
        assert!(!got.iter().any(|g| g.starts_with("write /home/alice/workx:")), "{got:#?}");
        assert!(!got.iter().any(|g| g.starts_with("write /home/alice/work/src/.git/hooks/x")), "{got:#?}");
        // Inside the old rule: allowed by both, but by another rule now.
        let c = diff.decisions.iter().find(|c| c.probe.to_string() == "write /home/alice/work/src/x").unwrap();
        assert_eq!((c.old.action, c.new.action), (ActionKind::Allow, ActionKind::Allow));
        assert_ne!(c.old.rule_text, c.new.rule_text);
        assert_eq!((c.old.line, c.new.line), (Some(14), Some(14)));
        assert!(diff.changes_enforcement());
        // Nothing else moves.
        assert!(diff.decisions.iter().all(|c| matches!(c.probe, Action::Write { .. })), "{got:#?}");
    }

    #[test]
    fn tightening_a_port_range_shows_the_ports_that_become_denied() {
        let tighter = CODER.replace(r#"ports: ["1-1024"]"#, "ports: [443]");
        let diff = d(CODER, &tighter);
        assert_eq!(diff.rules.len(), 1, "{:#?}", diff.rules);
        match &diff.rules[0] {
            RuleChange::Changed { kind: RuleKind::Egress, old, new } => {
                assert!(old.text.contains("1-1024") && new.text.contains("443"), "{old:?} {new:?}");
            }
            other => panic!("{other:?}"),
        }
        let got = changes(&diff);
        for want in [
            "connect tcp 10.0.0.0:1: allow → deny",
            "connect udp 10.0.0.0:1: allow → deny",
            "connect tcp 10.0.0.0:442: allow → deny",
            "connect tcp 10.0.0.0:444: allow → deny",
            "connect tcp 10.255.255.255:1024: allow → deny",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want:?} in {got:#?}");
        }
        for same in ["connect tcp 10.0.0.0:443:", "connect tcp 10.0.0.0:1025:", "connect tcp 9.255.255.255:"] {
            assert!(!got.iter().any(|g| g.starts_with(same)), "{same} should not change: {got:#?}");
        }
        assert!(got.iter().all(|g| g.ends_with("allow → deny")), "{got:#?}");
    }

    #[test]
    fn a_changed_action_is_one_changed_rule() {
        let ask = CODER.replace("{path: /usr/bin/git, action: allow}", "{path: /usr/bin/git, action: ask}");
        let diff = d(CODER, &ask);
        assert_eq!(diff.rules.len(), 1);
        assert!(matches!(&diff.rules[0], RuleChange::Changed { kind: RuleKind::Exec, old, new }
            if old.action == ActionKind::Allow && new.action == ActionKind::Ask));
        assert_eq!(changes(&diff), ["exec /usr/bin/git: allow → ask"]);
        let c = &diff.decisions[0];
        assert_eq!((c.old.rule_id, c.new.rule_id, c.new.line), (1, 1, Some(9)));
    }

    #[test]
    fn defaults_and_mode_are_reported() {
        let looser = CODER.replace("  write:\n    default: deny", "  write:\n    default: allow");
        let diff = d(CODER, &format!("  mode: monitor\n{looser}"));
        assert_eq!(diff.mode, Some((Mode::Enforce, Mode::Monitor)));
        assert_eq!(diff.defaults, [(RuleKind::Write, ActionKind::Deny, ActionKind::Allow)]);
        assert!(diff.rules.is_empty(), "{:#?}", diff.rules);
        let got = changes(&diff);
        assert!(got.contains(&"write /home/alice/work/srcx: deny → allow".to_string()), "{got:#?}");
        assert!(diff.decisions.iter().all(|c| c.old.rule_id == 0 && c.new.rule_id == 0), "{got:#?}");
        // A mode change alone changes what the kernel does.
        let only_mode = d(CODER, &format!("  mode: monitor\n{CODER}"));
        assert!(only_mode.decisions.is_empty() && only_mode.changes_enforcement());
    }

    #[test]
    fn a_system_opt_in_is_a_change_of_enforcement() {
        let diff = d(CODER, &format!("{CODER}  system:\n    ptrace: allow\n    namespaces: deny\n"));
        assert_eq!(diff.system, [("ptrace", false, true)]);
        assert!(diff.decisions.is_empty() && diff.rules.is_empty());
        assert!(!diff.is_empty() && diff.changes_enforcement());
        // Written out as the default it is no change.
        assert!(d(CODER, &format!("{CODER}  system: {{namespaces: deny}}\n")).is_empty());
    }

    #[test]
    fn a_default_change_shows_even_without_rules() {
        let diff = d("  exec:\n    default: deny\n", "  exec:\n    default: allow\n");
        assert_eq!(changes(&diff), ["exec /x: deny → allow"]);
        let diff = d("  egress:\n    default: deny\n", "  egress:\n    default: audit\n");
        let got = changes(&diff);
        assert!(got.contains(&"connect udp 192.0.2.1:1: deny → audit".to_string()), "{got:#?}");
        assert!(got.contains(&"connect tcp [2001:db8::1]:1: deny → audit".to_string()), "{got:#?}");
    }

    #[test]
    fn added_and_removed_egress_rules() {
        let more = CODER.replace(
            "      - {cidr: \"::1/128\", action: allow}\n",
            "      - {cidr: 192.168.1.0/24, ports: [53], protocol: udp, action: allow}\n",
        );
        let diff = d(CODER, &more);
        let kinds: Vec<_> =
            diff.rules.iter().map(|c| (c.old_rule().map(|r| r.id), c.new_rule().map(|r| r.id))).collect();
        assert_eq!(kinds, [(Some(6), None), (None, Some(6))], "{:#?}", diff.rules);
        let got = changes(&diff);
        assert!(got.contains(&"connect udp 192.168.1.0:53: deny → allow".to_string()), "{got:#?}");
        assert!(got.contains(&"connect tcp [::1]:1025: allow → deny".to_string()), "{got:#?}");
        // TCP to the DNS server, and the port just above, stay denied.
        assert!(!got.iter().any(|g| g.starts_with("connect tcp 192.168.1.0:53")), "{got:#?}");
        assert!(!got.iter().any(|g| g.starts_with("connect udp 192.168.1.0:54")), "{got:#?}");
    }

    #[test]
    fn icmp_rules_are_probed_only_over_icmp() {
        let ping = CODER.replace(
            "      - {cidr: \"::1/128\", action: allow}\n",
            "      - {cidr: \"::1/128\", action: allow}\n      - {cidr: 10.0.0.0/8, protocol: icmp, action: allow}\n",
        );
        let diff = d(CODER, &ping);
        assert!(matches!(&diff.rules[..], [RuleChange::Added { kind: RuleKind::Egress, new }] if new.id == 7));
        let got = changes(&diff);
        assert!(got.contains(&"connect icmp 10.0.0.0: deny → allow".to_string()), "{got:#?}");
        assert!(got.contains(&"connect icmp 10.255.255.255: deny → allow".to_string()), "{got:#?}");
        // Just outside, and over TCP and UDP, nothing changes; nor for ::1, whose
        // rule has no protocol (TCP and UDP only).
        assert!(got.iter().all(|g| g.starts_with("connect icmp 10.")), "{got:#?}");
        // Without ICMP rules on either side there is nothing to probe.
        assert!(!probes(&pol(CODER), &pol(CODER)).iter().any(|a| a.to_string().starts_with("connect icmp")));
    }

    #[test]
    fn unix_rules_and_their_default() {
        let with = |unix: &str| format!("{CODER}    unix:\n{unix}");
        let old = with("      default: allow\n      rules:\n        - {path: \"/srv/app/**\", action: allow}\n");
        let new = with("      default: deny\n      rules:\n        - {path: \"/srv/app/**\", action: audit}\n        - {path: /run/docker.sock, action: allow}\n        - {path: \"@ctl\", action: deny}\n");
        let diff = d(&old, &new);
        assert_eq!(diff.defaults, [(RuleKind::Unix, ActionKind::Allow, ActionKind::Deny)]);
        let kinds: Vec<_> =
            diff.rules.iter().map(|c| (c.kind(), c.old_rule().map(|r| r.id), c.new_rule().map(|r| r.id))).collect();
        assert_eq!(
            kinds,
            [(RuleKind::Unix, Some(7), Some(7)), (RuleKind::Unix, None, Some(8)), (RuleKind::Unix, None, Some(9))]
        );
        let got = changes(&diff);
        for want in [
            "connect unix /srv/app/x: allow → audit",
            "connect unix /srv/appx: allow → deny",
            "connect unix /run/docker.sock: deny → allow",
            "connect unix @ctl: allow → deny",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want:?} in {got:#?}");
        }
        // The other protected sockets stay denied by their built-in rules, whose
        // ids moved by two: no change.
        assert!(!got.iter().any(|g| g.starts_with("connect unix /run/podman/podman.sock")), "{got:#?}");
        assert!(!got.iter().any(|g| g.starts_with("connect unix /run/user/x/bus:")), "{got:#?}");
        assert!(got.iter().any(|g| g.starts_with("connect unix /run/user/x/bus/x: allow → deny")), "{got:#?}");
    }

    #[test]
    fn path_probes_sit_on_the_edges_of_a_pattern() {
        let p = |s: &str| path_probes(&Glob::parse(s).unwrap());
        assert_eq!(p("/usr/bin/git"), ["/usr/bin/git"]);
        assert_eq!(
            p("/home/alice/work/**"),
            ["/home/alice/work/x/x", "/home/alice/work/x", "/home/alice/workx", "/home/alice/work"]
        );
        assert_eq!(p("/usr/bin/py*"), ["/usr/bin/pyx/x", "/usr/bin/pyx", "/usr/binx", "/usr/bin", "/usr/bin/px"]);
        assert_eq!(p("/**"), ["/x/x", "/x"]);
        assert_eq!(p("/home/*/work/**"), ["/home/x/work/x/x", "/home/x/work/x", "/homex", "/home"]);
        assert_eq!(p("/x*"), ["/xx/x", "/xx", "/y"]);
        for pattern in ["/home/alice/work/**", "/usr/bin/py*", "/a/**/b", "/home/*/work/**"] {
            let g = Glob::parse(pattern).unwrap();
            let probes = path_probes(&g);
            assert!(g.matches(probes[1].as_bytes()), "{pattern}: {probes:?}");
            assert!(probes[2..].iter().all(|p| !g.matches(p.as_bytes())), "{pattern}: {probes:?}");
        }
    }

    #[test]
    fn egress_edges() {
        let net = |s: &str| edges(&s.parse().unwrap()).iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(net("127.0.0.0/8"), ["127.0.0.0", "127.255.255.255", "126.255.255.255", "128.0.0.0"]);
        assert_eq!(net("0.0.0.0/0"), ["0.0.0.0", "255.255.255.255"]);
        assert_eq!(net("::1/128"), ["::1", "::1", "::", "::2"]);
    }
}
