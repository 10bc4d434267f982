//! The policy's decision for one action, in userspace, by the format's full rules.
//!
//! This is the reference semantics: the daemon and the CLI can use it to predict
//! and explain decisions, and the compiler's output is tested against it (see
//! `crosscheck`), so what the kernel enforces and what this says cannot drift.
//!
//! Paths are judged the way the kernel sees them: the given path is normalised and
//! its symlinks resolved on this machine (`path::real_path`), and every rule is read
//! with its literal directory resolved the same way. So `/bin/sh` and
//! `/usr/bin/dash` get the same decision when one links to the other, whichever
//! spelling the rule or the question uses; a rule's precedence is that of its
//! resolved spelling, as in the kernel. Like open(2) and exec, the final component
//! is followed too; an unlink or rename of a symlink itself is judged by the kernel
//! on the link's own path. Host rules never match here: a connection is judged by
//! its address, and names are not enforced yet.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use super::{
    glob::{Glob, KernelForm, Specificity},
    model::{
        mapped_addr, mapped_net, net_contains, ActionKind, Mode, PathRule, PathSection, Policy, Protocol, RuleKind,
        Target, UnixRule, UnixTarget,
    },
    path::{real_path, FileSystem, RealPaths},
    validate::egress_rank_within_net,
};

/// Something an agent tries to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run the program at `path`.
    Exec { path: PathBuf },
    /// Create, modify, rename or remove the file at `path`.
    Write { path: PathBuf },
    /// Open a connection (or send a datagram) to `addr:port`; for ICMP (an
    /// echo request from a ping socket) `port` is 0 and means nothing.
    Connect { addr: IpAddr, port: u16, protocol: Protocol },
    /// Connect (or send a datagram) to the local socket at `path`, or to the
    /// abstract socket `@name` when `path` starts with `@`.
    ConnectUnix { path: PathBuf },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Exec { path } => write!(f, "exec {}", path.display()),
            Action::Write { path } => write!(f, "write {}", path.display()),
            Action::Connect { addr, protocol: Protocol::Icmp, .. } => write!(f, "connect icmp {addr}"),
            Action::Connect { addr, port, protocol } => {
                write!(f, "connect {} {}", protocol.as_str(), SocketAddr::new(*addr, *port))
            }
            Action::ConnectUnix { path } => write!(f, "connect unix {}", path.display()),
        }
    }
}

/// The policy's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What the policy says. In monitor mode the action is allowed regardless, and a
    /// deny or ask is reported as "would deny" (the reason says so).
    pub action: ActionKind,
    /// The rule that decided, 0 for the kind's default.
    pub rule_id: u32,
    /// That rule as written, in one line.
    pub rule_text: Option<String>,
    /// Why, in a sentence for a person.
    pub reason: String,
}

/// Decides `action` under `policy` on this machine.
pub fn evaluate(policy: &Policy, action: &Action) -> Decision {
    evaluate_with(policy, action, &FileSystem)
}

pub(crate) fn evaluate_with(policy: &Policy, action: &Action, fs: &dyn RealPaths) -> Decision {
    let mut d = match action {
        Action::Exec { path } => path_decision(RuleKind::Exec, &policy.exec, path, fs),
        Action::Write { path } => path_decision(RuleKind::Write, &policy.write, path, fs),
        Action::Connect { addr, port, protocol } => connect_decision(policy, *addr, *port, *protocol),
        Action::ConnectUnix { path } => unix_decision(policy, path, fs),
    };
    d.reason = format!("{action}: {}", d.reason);
    if policy.mode == Mode::Monitor && matches!(d.action, ActionKind::Deny | ActionKind::Ask) {
        d.reason.push_str(" (monitor mode: allowed, reported as would-deny)");
    }
    d
}

/// A rule's pattern as it reads on this machine: its literal directory resolved.
pub(crate) fn effective_pattern(pattern: &Glob, fs: &dyn RealPaths) -> Glob {
    let dir = pattern.literal_dir();
    match real_path(&dir, fs) {
        Some(real) => pattern.with_literal_dir(&real),
        None => pattern.clone(),
    }
}

fn path_decision(kind: RuleKind, section: &PathSection, path: &Path, fs: &dyn RealPaths) -> Decision {
    let default = |reason: String| Decision { action: section.default, rule_id: 0, rule_text: None, reason };
    let Some(real) = real_path(path.as_os_str().as_bytes(), fs) else {
        return default(format!(
            "a relative path never matches a rule (the kernel judges absolute real paths); {} default {}",
            kind.as_str(),
            section.default
        ));
    };
    let shown = String::from_utf8_lossy(&real);
    let best = match pinned_exec_rule(kind, section, &real, fs) {
        Some(hit) => Some(hit),
        None => section
            .rules
            .iter()
            .filter_map(|r| {
                let eff = effective_pattern(&r.pattern, fs);
                eff.matches(&real).then(|| (eff.specificity(), r, eff))
            })
            // Most specific, then strongest action, then first in the file.
            .max_by(|(sa, a, _), (sb, b, _)| sa.cmp(sb).then(a.action.cmp(&b.action)).then(b.id.cmp(&a.id))),
    };
    let via =
        if shown.as_bytes() != path.as_os_str().as_bytes() { format!(" (real path {shown})") } else { String::new() };
    match best {
        None => {
            default(format!("no {} rule matches{via}; {} default {}", kind.as_str(), kind.as_str(), section.default))
        }
        Some((spec, r, eff)) => {
            let how = if spec.exact {
                "exact path".to_string()
            } else {
                format!("pattern, literal prefix {} bytes", spec.literal_len)
            };
            let resolved = if eff.as_str() != r.pattern.as_str() {
                format!(", read as {eff} on this machine")
            } else {
                String::new()
            };
            Decision {
                action: r.action,
                rule_id: r.id,
                rule_text: Some(r.text.clone()),
                reason: format!("{}{via} by rule {} at line {} ({how}{resolved})", r.action, r.id, r.at.line),
            }
        }
    }
}

/// Exec only: the exact rules naming the very file at `real` (same device and
/// inode, so also through a hard link), as the kernel's `EXEC_INODES` pins them.
/// Among several, the strongest action, then the earliest rule.
fn pinned_exec_rule<'r>(
    kind: RuleKind,
    section: &'r PathSection,
    real: &[u8],
    fs: &dyn RealPaths,
) -> Option<(Specificity, &'r PathRule, Glob)> {
    if kind != RuleKind::Exec {
        return None;
    }
    let id = fs.file_id(Path::new(std::ffi::OsStr::from_bytes(real)))?;
    section
        .rules
        .iter()
        .filter(|r| matches!(r.pattern.kernel_form(), Some(KernelForm::Exact(_))))
        .filter_map(|r| {
            let eff = effective_pattern(&r.pattern, fs);
            let rule_real = real_path(eff.as_str().as_bytes(), fs)?;
            (fs.file_id(Path::new(std::ffi::OsStr::from_bytes(&rule_real))) == Some(id))
                .then(|| (eff.specificity(), r, eff))
        })
        .max_by(|(_, a, _), (_, b, _)| a.action.cmp(&b.action).then(b.id.cmp(&a.id)))
}

fn connect_decision(policy: &Policy, addr: IpAddr, port: u16, protocol: Protocol) -> Decision {
    let a = mapped_addr(addr);
    let best = policy
        .egress
        .rules
        .iter()
        .filter_map(|r| match &r.target {
            Target::Cidr(net) => {
                let m = mapped_net(net);
                (net_contains(m, a) && r.matches_port(port, protocol)).then_some((m.1, r, net))
            }
            Target::Host(_) => None,
        })
        // Longest prefix, then ports, protocol, strongest action, first in file.
        .min_by_key(|(len, r, _)| (std::cmp::Reverse(*len), egress_rank_within_net(r)));
    match best {
        Some((_, r, net)) => Decision {
            action: r.action,
            rule_id: r.id,
            rule_text: Some(r.text.clone()),
            reason: format!("{} by rule {} at line {} (cidr {net})", r.action, r.id, r.at.line),
        },
        // The kernel denies ICMP that no rule allows, whatever the default: a
        // default written for TCP and UDP must not open ping to the world.
        None if protocol == Protocol::Icmp => Decision {
            action: ActionKind::Deny,
            rule_id: 0,
            rule_text: None,
            reason: "no icmp rule matches; ICMP is denied unless a rule with `protocol: icmp` allows it (the egress default does not apply to it)".to_string(),
        },
        None => {
            let hosts = policy.egress.rules.iter().filter(|r| matches!(r.target, Target::Host(_))).count();
            let note =
                if hosts > 0 { format!(" ({hosts} host rule(s) are not matched by address)") } else { String::new() };
            Decision {
                action: policy.egress.default,
                rule_id: 0,
                rule_text: None,
                reason: format!("no egress rule matches{note}; egress default {}", policy.egress.default),
            }
        }
    }
}

fn unix_decision(policy: &Policy, path: &Path, fs: &dyn RealPaths) -> Decision {
    let section = &policy.unix;
    let default = |reason: String| Decision { action: section.default, rule_id: 0, rule_text: None, reason };
    let bytes = path.as_os_str().as_bytes();
    // `via`: how the asked-about path reads for the kernel, when it differs.
    let decided_by = |r: &UnixRule, via: &str, how: String| Decision {
        action: r.action,
        rule_id: r.id,
        rule_text: Some(r.text.clone()),
        reason: match r.builtin {
            Some(why) => format!(
                "{}{via} by built-in rule {} ({how}): {why}; a rule naming this path exactly replaces it",
                r.action, r.id
            ),
            None => format!("{}{via} by rule {} at line {} ({how})", r.action, r.id, r.at.line),
        },
    };
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket: only a rule for exactly this name; paths never match.
        let best = section
            .rules
            .iter()
            .filter(|r| matches!(&r.target, UnixTarget::Abstract(n) if n.as_bytes() == name))
            .max_by(|a, b| a.action.cmp(&b.action).then(b.id.cmp(&a.id)));
        return match best {
            Some(r) => decided_by(r, "", "abstract socket name".into()),
            None => default(format!("no unix rule names this abstract socket; unix default {}", section.default)),
        };
    }
    let Some(real) = real_path(bytes, fs) else {
        return default(format!(
            "a relative path never matches a rule (the kernel judges absolute real paths); unix default {}",
            section.default
        ));
    };
    let shown = String::from_utf8_lossy(&real);
    let via = if shown.as_bytes() != bytes { format!(" (real path {shown})") } else { String::new() };
    let best = section
        .all()
        .filter_map(|r| {
            let UnixTarget::Path(pattern) = &r.target else { return None };
            let eff = effective_pattern(pattern, fs);
            eff.matches(&real).then(|| ((r.tier(), eff.specificity()), r, eff))
        })
        // The file's patterns, then the built-in rules, then the file's exact
        // paths; within each, most specific, strongest action, first in the file.
        .max_by(|(sa, a, _), (sb, b, _)| sa.cmp(sb).then(a.action.cmp(&b.action)).then(b.id.cmp(&a.id)));
    match best {
        None => default(format!("no unix rule matches{via}; unix default {}", section.default)),
        Some(((_, spec), r, eff)) => {
            let how = if spec.exact {
                "exact path".to_string()
            } else {
                format!("pattern, literal prefix {} bytes", spec.literal_len)
            };
            let resolved = match &r.target {
                UnixTarget::Path(p) if eff.as_str() != p.as_str() => format!(", read as {eff} on this machine"),
                _ => String::new(),
            };
            decided_by(r, &via, format!("{how}{resolved}"))
        }
    }
}

/// Whether an identity's policy is in force at all. Anything but `Active` denies
/// every action, whatever the policy says and in monitor mode too: the kernel
/// fails closed for an identity it cannot attribute a policy to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Standing {
    /// Its policy is in force.
    Active,
    Revoked,
    /// Past its expiry.
    Expired,
    /// Its policy is missing or does not compile.
    NoPolicy,
}

impl Standing {
    pub const ALL: [Standing; 4] = [Standing::Active, Standing::Revoked, Standing::Expired, Standing::NoPolicy];

    /// The name the API and `agentctl identity list` use for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Active => "active",
            Standing::Revoked => "revoked",
            Standing::Expired => "expired",
            Standing::NoPolicy => "no-policy",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Standing::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for Standing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decides `action` for an identity in `standing` whose policy is `policy`, on this
/// machine. An active identity without a policy is judged as `NoPolicy`: deny
/// rather than guess.
pub fn evaluate_as(policy: Option<&Policy>, standing: Standing, action: &Action) -> Decision {
    evaluate_as_with(policy, standing, action, &FileSystem)
}

pub(crate) fn evaluate_as_with(
    policy: Option<&Policy>,
    standing: Standing,
    action: &Action,
    fs: &dyn RealPaths,
) -> Decision {
    let why = match (standing, policy) {
        (Standing::Active, Some(p)) => return evaluate_with(p, action, fs),
        (Standing::Active | Standing::NoPolicy, _) => {
            "the identity has no policy in force (missing, or it does not compile)"
        }
        (Standing::Revoked, _) => "the identity is revoked",
        (Standing::Expired, _) => "the identity has expired",
    };
    Decision {
        action: ActionKind::Deny,
        rule_id: 0,
        rule_text: None,
        reason: format!("{action}: deny: {why}, so everything it does is denied, whatever its policy says"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{parse, path::NoFiles};

    fn policy(mode: &str) -> Policy {
        let text = format!(
            "apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata:\n  name: t\nspec:\n  mode: {mode}\n  exec:\n    default: allow\n"
        );
        parse("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn exec() -> Action {
        Action::Exec { path: "/usr/bin/git".into() }
    }

    #[test]
    fn an_active_identity_gets_its_policys_decision() {
        let p = policy("enforce");
        let d = evaluate_as_with(Some(&p), Standing::Active, &exec(), &NoFiles);
        assert_eq!(d, evaluate_with(&p, &exec(), &NoFiles));
        assert_eq!(d.action, ActionKind::Allow);
    }

    #[test]
    fn revoked_expired_and_policyless_identities_are_denied_everything() {
        let p = policy("enforce");
        let connect = Action::Connect { addr: "127.0.0.1".parse().unwrap(), port: 80, protocol: Protocol::Tcp };
        for (standing, policy, says) in [
            (Standing::Revoked, Some(&p), "revoked"),
            (Standing::Expired, Some(&p), "expired"),
            (Standing::NoPolicy, None, "no policy"),
            (Standing::NoPolicy, Some(&p), "no policy"),
            // Active but nothing to judge by: fail closed.
            (Standing::Active, None, "no policy"),
        ] {
            for action in [exec(), Action::Write { path: "/tmp/x".into() }, connect.clone()] {
                let d = evaluate_as_with(policy, standing, &action, &NoFiles);
                assert_eq!((d.action, d.rule_id, d.rule_text.as_deref()), (ActionKind::Deny, 0, None), "{standing}");
                assert!(d.reason.starts_with(&format!("{action}: deny: ")), "{}", d.reason);
                assert!(d.reason.contains(says), "{standing}: {}", d.reason);
            }
        }
    }

    #[test]
    fn monitor_mode_does_not_soften_a_revoked_identity() {
        let p = policy("monitor");
        let d = evaluate_as_with(Some(&p), Standing::Revoked, &exec(), &NoFiles);
        assert_eq!(d.action, ActionKind::Deny);
        assert!(!d.reason.contains("monitor"), "{}", d.reason);
    }

    #[test]
    fn standings_round_trip_through_their_api_names() {
        for s in Standing::ALL {
            assert_eq!(Standing::from_name(s.as_str()), Some(s));
        }
        assert_eq!(Standing::from_name("no-policy"), Some(Standing::NoPolicy));
        assert_eq!(Standing::from_name("suspended"), None);
    }
}
