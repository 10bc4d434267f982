//! `agentctl policy test`: what a policy, or an identity, decides for one action,
//! which rule decides it, and what the kernel then does.
//!
//! The answer comes from the policy evaluator, the reference semantics the
//! compiler's kernel maps are tested against, run on this machine (symlinks
//! resolved here). agentd is asked only for what only it knows: an applied policy's
//! text, and an identity's policy and standing.

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{
    error::CliError,
    output::{self, key_values},
    policy_source::{self, Daemon, Lookup, Source},
    PolicyTestArgs, ProtocolArg,
};
use crate::policy::{self, evaluate_as, Action, ActionKind, Mode, Policy, Protocol, Standing};

/// What `policy test` prints: with `--json`, this object (its fields are stable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TestReport {
    /// The policy's `metadata.name`; `None` when the identity has none.
    pub policy: Option<String>,
    /// `enforce` or `monitor`; `None` when no policy was consulted.
    pub mode: Option<&'static str>,
    pub action: ActionJson,
    /// What the policy says: allow, deny, ask or audit.
    pub decision: &'static str,
    /// What the kernel does: allow, deny or would_deny (monitor mode).
    pub enforced: &'static str,
    /// The deciding rule, 0 for the default (or an identity denied everything).
    pub rule_id: u32,
    /// That rule as written.
    pub rule: Option<String>,
    /// Its line in the policy file.
    pub line: Option<usize>,
    /// Why, in a sentence.
    pub reason: String,
    /// `--identity`, if given.
    pub identity: Option<String>,
    /// The identity's standing: active, revoked, expired or no-policy.
    pub standing: Option<&'static str>,
    /// The policy's `spec.system` settings; `None` when no policy was consulted.
    pub system: Option<SystemJson>,
    /// Where the policy came from; text only.
    #[serde(skip)]
    pub source: Option<Source>,
    /// Things to know about the answer; text only.
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// The action judged, with relative paths made absolute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ActionJson {
    /// exec, write, connect or unix (a connect to a local socket).
    pub kind: &'static str,
    /// The absolute path (for unix, or `@name` for an abstract socket), or
    /// `ADDR:PORT` (for ICMP, `ADDR`).
    pub target: String,
    /// tcp or udp, for connect only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
}

/// `spec.system`, each `allow` or `deny`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SystemJson {
    pub namespaces: &'static str,
    pub ptrace: &'static str,
}

impl SystemJson {
    fn of(s: &policy::System) -> SystemJson {
        let [(_, namespaces), (_, ptrace)] = s.entries();
        SystemJson { namespaces, ptrace }
    }
}

/// `--connect`: an address and, except for ICMP, a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectArg {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

/// Parses `--connect`: `1.2.3.4:443` or `[2001:db8::1]:443`; for ICMP the address
/// alone, `1.2.3.4`, `2001:db8::1` or `[2001:db8::1]` (whether a port is needed is
/// checked once the protocol is known).
pub fn parse_connect(s: &str) -> Result<ConnectArg, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(ConnectArg { addr: addr.ip(), port: Some(addr.port()) });
    }
    if let Ok(addr) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s).parse::<IpAddr>() {
        return Ok(ConnectArg { addr, port: None });
    }
    let hint = if s.starts_with('[') || s.matches(':').count() > 1 {
        "an IPv6 address goes in brackets, then the port"
    } else {
        "an IP address (not a host name) and a port are needed"
    };
    Err(format!(
        "{s:?} is not ADDR:PORT ({hint}), e.g. 1.2.3.4:443 or [2001:db8::1]:443 (with --protocol icmp, the address alone)"
    ))
}

pub async fn test(socket: &Path, args: &PolicyTestArgs) -> Result<(), CliError> {
    let report = run_test(args, &mut Daemon::new(socket)).await?;
    if args.json {
        output::json(&report)
    } else {
        output::print(report.text())
    }
}

/// Answers the question `args` asks; `lookup` is asked only for names.
pub async fn run_test(args: &PolicyTestArgs, lookup: &mut impl Lookup) -> Result<TestReport, CliError> {
    let action = action(args)?;
    let identity = match &args.identity {
        Some(name) => Some(lookup.identity(name).await?),
        None => None,
    };
    let standing = match &identity {
        None => Standing::Active,
        Some(i) => Standing::from_name(&i.state).ok_or_else(|| {
            CliError::Failed(format!(
                "identity {} is in state {:?}, which this agentctl does not know; use the agentctl that came with agentd",
                i.name, i.state
            ))
        })?,
    };
    let source = match (&args.policy, &identity) {
        (Some(arg), _) => Some(Source::from_arg(arg)),
        // Its own policy, if it is in force; otherwise there is nothing to consult.
        (None, Some(i)) if standing == Standing::Active && !i.policy.is_empty() => {
            Some(Source::Applied(i.policy.clone()))
        }
        (None, Some(_)) => None,
        (None, None) => return Err(CliError::Usage("give a policy FILE or NAME, or --identity NAME".into())),
    };
    let policy = match &source {
        Some(s) => Some(policy_source::load(s, lookup).await?),
        None => None,
    };
    let decision = evaluate_as(policy.as_ref(), standing, &action);
    let mode = policy.as_ref().map(Policy::mode);
    let line = match (&policy, decision.rule_id) {
        (Some(p), id) => p.rule_line(id),
        _ => None,
    };
    let mut notes = Vec::new();
    if decision.action == ActionKind::Ask && standing == Standing::Active && mode != Some(Mode::Monitor) {
        notes.push(match &action {
            Action::Exec { .. } => "the exec waits until a person runs `agentctl approve ID` or `agentctl deny ID` (see `agentctl approvals watch`); at the policy's approvals.timeout it gets on_timeout".into(),
            a if held(a) => "the connect waits at agentd's hold proxy until a person approves it (then it reaches its destination) or denies it (then it is reset); see `agentctl approvals watch`".into(),
            Action::Connect { protocol: Protocol::Icmp, .. } => "nothing holds an ICMP packet: it is denied (EPERM)".into(),
            Action::Write { .. } => "an open of an existing file for writing waits in the kernel for a person (`agentctl approvals list`; approve, or deny: EPERM; denied at the deadline); creating, renaming, linking, removing or truncating it by path is stopped and becomes a request, whose approval lets this identity write exactly this file for 2 minutes (`--for D`: for D), so a retry goes through".into(),
            _ => "the datagram is stopped (EPERM; nothing can hold one) and becomes a request in `agentctl approvals list`; approving it lets this identity send to exactly this address and port for 2 minutes (`--for D`: for D)".into(),
        });
    }
    // The evaluator answers for any valid file, but `apply` also needs the kernel to
    // enforce it exactly; an answer about a file that cannot be applied misleads.
    if let (Some(Source::File(path)), Some(p)) = (&source, &policy) {
        if let Err(errors) = policy::compile(p) {
            notes.push(format!(
                "agentd would refuse this file as it is ({} problem(s) the kernel cannot enforce): see `agentctl policy validate {}`",
                errors.len(),
                path.display()
            ));
        }
    }
    Ok(TestReport {
        policy: policy
            .as_ref()
            .map(|p| p.name().to_string())
            .or_else(|| identity.as_ref().map(|i| i.policy.clone()).filter(|p| !p.is_empty())),
        mode: mode.map(Mode::as_str),
        action: action_json(&action),
        decision: decision.action.as_str(),
        enforced: enforced(decision.action, mode, standing, &action),
        rule_id: decision.rule_id,
        rule: decision.rule_text,
        line,
        reason: decision.reason,
        identity: identity.as_ref().map(|i| i.name.clone()),
        standing: identity.is_some().then_some(standing.as_str()),
        system: policy.as_ref().map(|p| SystemJson::of(&p.system)),
        source,
        notes,
    })
}

/// Whether an `ask` for `action` is held for a person (an exec, a TCP connect);
/// other asks (writes, UDP) are denied.
fn held(action: &Action) -> bool {
    matches!(action, Action::Exec { .. } | Action::Connect { protocol: Protocol::Tcp, .. })
}

/// What the kernel does with a decision: only an active identity's policy can be
/// in monitor mode; an exec or TCP connect `ask` is held for a person, other asks
/// are denied.
fn enforced(decision: ActionKind, mode: Option<Mode>, standing: Standing, action: &Action) -> &'static str {
    match decision {
        ActionKind::Allow | ActionKind::Audit => "allow",
        ActionKind::Deny | ActionKind::Ask if standing == Standing::Active && mode == Some(Mode::Monitor) => {
            "would_deny"
        }
        ActionKind::Ask if standing == Standing::Active && held(action) => "hold",
        ActionKind::Deny | ActionKind::Ask => "deny",
    }
}

/// The one action of `args`, paths made absolute.
fn action(args: &PolicyTestArgs) -> Result<Action, CliError> {
    if let Some(path) = &args.exec {
        return Ok(Action::Exec { path: absolute(path, args.cwd.as_deref())? });
    }
    if let Some(path) = &args.write {
        return Ok(Action::Write { path: absolute(path, args.cwd.as_deref())? });
    }
    if let Some(path) = &args.connect_unix {
        // `@name` is an abstract socket, not a path relative to anything.
        if path.as_os_str().as_bytes().starts_with(b"@") {
            return Ok(Action::ConnectUnix { path: path.clone() });
        }
        return Ok(Action::ConnectUnix { path: absolute(path, args.cwd.as_deref())? });
    }
    if let Some(ConnectArg { addr, port }) = args.connect {
        let protocol = match args.protocol {
            None | Some(ProtocolArg::Tcp) => Protocol::Tcp,
            Some(ProtocolArg::Udp) => Protocol::Udp,
            Some(ProtocolArg::Icmp) => Protocol::Icmp,
        };
        return match (protocol, port) {
            (Protocol::Icmp, None) => Ok(Action::Connect { addr, port: 0, protocol }),
            // A port would suggest that ICMP rules have ports; they do not.
            (Protocol::Icmp, Some(_)) => Err(CliError::Usage(format!(
                "ICMP has no ports: give the address alone, e.g. --connect {} --protocol icmp",
                bracketed(addr)
            ))),
            (_, Some(port)) => Ok(Action::Connect { addr, port, protocol }),
            (_, None) => Err(CliError::Usage(format!(
                "--connect {} has no port: give ADDR:PORT, e.g. {}:443{} (only --protocol icmp takes an address alone)",
                bracketed(addr),
                bracketed(addr),
                if addr.is_ipv6() { ", an IPv6 address in brackets" } else { "" }
            ))),
        };
    }
    Err(CliError::Usage("give one of --exec PATH, --write PATH, --connect ADDR:PORT or --connect-unix PATH".into()))
}

/// An address as it is written before a port: IPv6 in brackets.
fn bracketed(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// `path` as the kernel sees it from a process in `cwd` (default: ours): joined to
/// it when relative. `.` and doubled slashes go; `..` stays, because it must be
/// taken after symlinks are resolved, as the kernel does (the evaluator does that).
fn absolute(path: &Path, cwd: Option<&Path>) -> Result<PathBuf, CliError> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let here = || std::env::current_dir().map_err(|e| CliError::io("finding the current directory", e));
        let base = match cwd {
            Some(dir) if dir.is_absolute() => dir.to_path_buf(),
            Some(dir) => here()?.join(dir),
            None => here()?,
        };
        base.join(path)
    };
    Ok(joined.components().collect())
}

/// The JSON form of an action (also `policy diff`'s).
pub fn action_json(action: &Action) -> ActionJson {
    match action {
        Action::Exec { path } => ActionJson { kind: "exec", target: path.display().to_string(), protocol: None },
        Action::Write { path } => ActionJson { kind: "write", target: path.display().to_string(), protocol: None },
        Action::Connect { addr, protocol: Protocol::Icmp, .. } => {
            ActionJson { kind: "connect", target: addr.to_string(), protocol: Some(Protocol::Icmp.as_str()) }
        }
        Action::Connect { addr, port, protocol } => ActionJson {
            kind: "connect",
            target: SocketAddr::new(*addr, *port).to_string(),
            protocol: Some(protocol.as_str()),
        },
        Action::ConnectUnix { path } => ActionJson { kind: "unix", target: path.display().to_string(), protocol: None },
    }
}

impl TestReport {
    /// The human form: one `key: value` per line.
    pub fn text(&self) -> String {
        let standing_denies = self.standing.is_some_and(|s| s != Standing::Active.as_str());
        let policy = match (&self.policy, self.mode, &self.source) {
            (None, _, _) => "-".to_string(),
            (Some(name), Some(mode), Some(Source::File(path))) => {
                format!("{name} ({}, mode {mode})", path.display())
            }
            (Some(name), Some(mode), _) => format!("{name} (applied, mode {mode})"),
            (Some(name), None, _) => format!("{name} (not consulted)"),
        };
        let decision = match (self.decision, self.enforced) {
            (_, _) if standing_denies => format!("deny (identity {})", self.standing.unwrap_or_default()),
            ("deny", "would_deny") => "allowed (monitor mode: would deny)".to_string(),
            ("ask", "would_deny") => "allowed (monitor mode: would ask)".to_string(),
            ("ask", "hold") => "ask (held until a person approves or denies it)".to_string(),
            ("ask", _) => "ask (stopped now; see the note)".to_string(),
            ("audit", _) => "audit (allowed, and reported)".to_string(),
            (d, _) => d.to_string(),
        };
        let rule = match (&self.rule, self.line) {
            (Some(text), Some(line)) => format!("{}, line {line}: {text}", self.rule_id),
            (Some(text), None) => format!("{}: {text}", self.rule_id),
            (None, _) if standing_denies => "none (the identity is denied everything)".to_string(),
            // ICMP never falls to the egress default: no rule is a deny of its own.
            (None, _) if self.action.protocol == Some("icmp") => "0 (no icmp rule: denied)".to_string(),
            (None, _) => format!("0 (the {} default)", self.action.kind.replace("connect", "egress")),
        };
        let target = match (self.action.kind, self.action.protocol) {
            (kind, Some(p)) => format!("{kind} {p} {}", self.action.target),
            ("unix", None) => format!("connect unix {}", self.action.target),
            (kind, None) => format!("{kind} {}", self.action.target),
        };
        let mut pairs = vec![("policy", policy)];
        if let (Some(name), Some(standing)) = (&self.identity, self.standing) {
            pairs.push(("identity", format!("{name} ({standing})")));
        }
        // Only when the policy opts into something: denied is what every policy
        // says unless it does.
        if let Some(s) = self.system.as_ref().filter(|s| s.namespaces == "allow" || s.ptrace == "allow") {
            pairs.push(("system", format!("namespaces {}, ptrace {}", s.namespaces, s.ptrace)));
        }
        pairs.extend([("action", target), ("decision", decision), ("rule", rule), ("reason", self.reason.clone())]);
        pairs.extend(self.notes.iter().map(|n| ("note", n.clone())));
        key_values(&pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{policy_source::fake::FakeDaemon, Cli, Command, PolicyCmd};
    use clap::Parser as _;

    /// Rules under /nonexistent-agentd-test, so no symlink on the test machine
    /// changes what they mean.
    const CODER: &str = r#"apiVersion: agentd.io/v1
kind: AgentPolicy
metadata:
  name: coder
spec:
  mode: enforce
  exec:
    default: deny
    rules:
      - {path: /nonexistent-agentd-test/bin/git, action: allow}
      - {path: /nonexistent-agentd-test/bin/curl, action: ask}
  write:
    default: deny
    rules:
      - {path: "/nonexistent-agentd-test/work/**", action: allow}
      - {path: "/nonexistent-agentd-test/work/.git/hooks/**", action: deny}
  egress:
    default: deny
    rules:
      - {cidr: 127.0.0.0/8, ports: [8080], action: allow}
      - {cidr: "2001:db8::/32", ports: [53], protocol: udp, action: audit}
"#;

    fn args(argv: &[&str]) -> PolicyTestArgs {
        let full = ["agentctl", "policy", "test"].into_iter().chain(argv.iter().copied());
        match Cli::try_parse_from(full).unwrap_or_else(|e| panic!("{argv:?}: {e}")).command {
            Command::Policy(PolicyCmd::Test(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn run(argv: &[&str], daemon: &mut FakeDaemon) -> Result<TestReport, CliError> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(run_test(&args(argv), daemon))
    }

    /// A policy file in a temporary directory (kept alive by the returned guard).
    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coder.yaml");
        std::fs::write(&path, text).unwrap();
        let s = path.to_str().unwrap().to_string();
        (dir, s)
    }

    #[test]
    fn a_file_is_answered_without_the_daemon() {
        let (_dir, f) = file(CODER);
        let mut daemon = FakeDaemon::default();
        let r = run(&[&f, "--exec", "/nonexistent-agentd-test/bin/git"], &mut daemon).unwrap();
        assert_eq!(daemon.asked, 0, "the daemon was asked");
        assert_eq!((r.decision, r.enforced, r.rule_id, r.line), ("allow", "allow", 1, Some(10)));
        assert_eq!(r.rule.as_deref(), Some("{path: /nonexistent-agentd-test/bin/git, action: allow}"));
        assert_eq!((r.policy.as_deref(), r.mode), (Some("coder"), Some("enforce")));
        assert_eq!((r.identity.as_deref(), r.standing), (None, None));
        let text = r.text();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                format!("policy:   coder ({f}, mode enforce)").as_str(),
                "action:   exec /nonexistent-agentd-test/bin/git",
                "decision: allow",
                "rule:     1, line 10: {path: /nonexistent-agentd-test/bin/git, action: allow}",
                "reason:   exec /nonexistent-agentd-test/bin/git: allow by rule 1 at line 10 (exact path)",
            ]
        );
    }

    #[test]
    fn the_default_and_the_most_specific_rule() {
        let (_dir, f) = file(CODER);
        let mut daemon = FakeDaemon::default();
        let r = run(&[&f, "--exec", "/nonexistent-agentd-test/bin/wget"], &mut daemon).unwrap();
        assert_eq!((r.decision, r.enforced, r.rule_id, r.line, r.rule.as_deref()), ("deny", "deny", 0, None, None));
        assert!(r.text().contains("\nrule:     0 (the exec default)\n"), "{}", r.text());
        let r = run(&[&f, "--write", "/nonexistent-agentd-test/work/.git/hooks/pre-commit"], &mut daemon).unwrap();
        assert_eq!((r.decision, r.rule_id, r.line), ("deny", 4, Some(16)));
        let r = run(&[&f, "--connect", "127.0.0.1:9"], &mut daemon).unwrap();
        assert!(r.text().contains("\nrule:     0 (the egress default)\n"), "{}", r.text());
    }

    #[test]
    fn relative_paths_are_taken_from_cwd() {
        let (_dir, f) = file(CODER);
        let mut daemon = FakeDaemon::default();
        let r = run(
            &[&f, "--write", "./src/../.git/hooks/post-merge", "--cwd", "/nonexistent-agentd-test/work"],
            &mut daemon,
        )
        .unwrap();
        // `.` is dropped, `..` is left for the evaluator (it follows symlinks first).
        assert_eq!(r.action.target, "/nonexistent-agentd-test/work/src/../.git/hooks/post-merge");
        assert_eq!((r.decision, r.rule_id), ("deny", 4));
        assert!(r.text().contains("action:   write /nonexistent-agentd-test/work/src/../.git/hooks/post-merge\n"));
        let r = run(&[&f, "--exec", "bin/git", "--cwd", "/nonexistent-agentd-test"], &mut daemon).unwrap();
        assert_eq!((r.action.target.as_str(), r.decision), ("/nonexistent-agentd-test/bin/git", "allow"));
        // No --cwd: the current directory.
        let r = run(&[&f, "--write", "x"], &mut daemon).unwrap();
        assert_eq!(PathBuf::from(&r.action.target), std::env::current_dir().unwrap().join("x"));
    }

    #[test]
    fn connections_v4_and_v6_with_protocol() {
        let (_dir, f) = file(CODER);
        let mut daemon = FakeDaemon::default();
        let r = run(&[&f, "--connect", "127.0.0.1:8080"], &mut daemon).unwrap();
        assert_eq!(r.action, ActionJson { kind: "connect", target: "127.0.0.1:8080".into(), protocol: Some("tcp") });
        assert_eq!((r.decision, r.rule_id, r.line), ("allow", 5, Some(20)));
        let r = run(&[&f, "--connect", "[2001:db8::1]:53", "--protocol", "udp"], &mut daemon).unwrap();
        assert_eq!((r.decision, r.enforced, r.rule_id), ("audit", "allow", 6));
        assert!(r.text().contains("action:   connect udp [2001:db8::1]:53\n"), "{}", r.text());
        assert!(r.text().contains("decision: audit (allowed, and reported)\n"), "{}", r.text());
        let r = run(&[&f, "--connect", "[2001:db8::1]:53"], &mut daemon).unwrap();
        assert_eq!((r.decision, r.rule_id), ("deny", 0), "tcp is not udp");
    }

    #[test]
    fn system_opt_ins_are_shown_when_the_policy_has_any() {
        let (_dir, f) = file(&format!("{CODER}  system:\n    ptrace: allow\n"));
        let r = run(&[&f, "--exec", "/nonexistent-agentd-test/bin/git"], &mut FakeDaemon::default()).unwrap();
        assert_eq!(r.system, Some(SystemJson { namespaces: "deny", ptrace: "allow" }));
        assert!(r.text().contains("\nsystem:   namespaces deny, ptrace allow\naction:"), "{}", r.text());
        let mut daemon = FakeDaemon::default().with_identity("gone", "coder", "revoked");
        let r = run(&["--identity", "gone", "--exec", "/x"], &mut daemon).unwrap();
        assert_eq!(r.system, None, "no policy consulted");
    }

    #[test]
    fn unix_sockets_by_path_abstract_name_and_built_in_rule() {
        let unix = "    unix:\n      default: deny\n      rules:\n        - {path: \"/nonexistent-agentd-test/run/**\", action: allow}\n        - {path: \"@ctl\", action: audit}\n";
        let (_dir, f) = file(&format!("{CODER}{unix}"));
        let mut daemon = FakeDaemon::default();
        let r = run(&[&f, "--connect-unix", "/nonexistent-agentd-test/run/app.sock"], &mut daemon).unwrap();
        assert_eq!((r.decision, r.enforced, r.rule_id, r.line), ("allow", "allow", 7, Some(25)));
        assert_eq!(
            r.action,
            ActionJson { kind: "unix", target: "/nonexistent-agentd-test/run/app.sock".into(), protocol: None }
        );
        assert!(r.text().contains("action:   connect unix /nonexistent-agentd-test/run/app.sock\n"), "{}", r.text());
        // Relative to --cwd, like every path.
        let r = run(&[&f, "--connect-unix", "run/x.sock", "--cwd", "/nonexistent-agentd-test"], &mut daemon).unwrap();
        assert_eq!((r.action.target.as_str(), r.rule_id), ("/nonexistent-agentd-test/run/x.sock", 7));
        // An abstract socket is a name, not a relative path.
        let r = run(&[&f, "--connect-unix", "@ctl", "--cwd", "/nonexistent-agentd-test"], &mut daemon).unwrap();
        assert_eq!((r.action.target.as_str(), r.decision, r.rule_id), ("@ctl", "audit", 8));
        let r = run(&[&f, "--connect-unix", "/nonexistent-agentd-test/other.sock"], &mut daemon).unwrap();
        assert_eq!((r.decision, r.rule_id), ("deny", 0));
        assert!(r.text().contains("\nrule:     0 (the unix default)\n"), "{}", r.text());
        // A built-in rule: an id, no line, and the text says why.
        let r = run(&[&f, "--connect-unix", "/run/agentd/agentd.sock"], &mut daemon).unwrap();
        assert_eq!((r.decision, r.rule_id, r.line), ("deny", 9, None));
        let text = r.text();
        assert!(
            text.contains("\nrule:     9: {path: /run/agentd/agentd.sock, action: deny}  # built-in: agentd's own API"),
            "{text}"
        );
        assert_eq!(daemon.asked, 0, "a file needs no daemon");
    }

    #[test]
    fn an_exec_ask_is_held_and_says_how_to_answer() {
        let (_dir, f) = file(CODER);
        let r = run(&[&f, "--exec", "/nonexistent-agentd-test/bin/curl"], &mut FakeDaemon::default()).unwrap();
        assert_eq!((r.decision, r.enforced, r.rule_id), ("ask", "hold", 2));
        let text = r.text();
        assert!(text.contains("decision: ask (held until a person approves or denies it)\n"), "{text}");
        assert!(text.contains("agentctl approve ID"), "{text}");
    }

    #[test]
    fn monitor_mode_allows_and_reports_would_deny() {
        let (_dir, f) = file(&CODER.replace("mode: enforce", "mode: monitor"));
        let r = run(&[&f, "--exec", "/nonexistent-agentd-test/bin/wget"], &mut FakeDaemon::default()).unwrap();
        assert_eq!((r.decision, r.enforced, r.mode), ("deny", "would_deny", Some("monitor")));
        let text = r.text();
        assert!(text.contains("decision: allowed (monitor mode: would deny)\n"), "{text}");
        assert!(r.reason.contains("monitor mode"), "{}", r.reason);
    }

    #[test]
    fn a_name_is_looked_up_in_the_daemon() {
        let mut daemon = FakeDaemon::default().with_policy("coder", CODER);
        let r = run(&["coder", "--exec", "/nonexistent-agentd-test/bin/git"], &mut daemon).unwrap();
        assert_eq!(daemon.asked, 1);
        assert_eq!((r.decision, r.rule_id, r.line), ("allow", 1, Some(10)));
        assert!(r.text().starts_with("policy:   coder (applied, mode enforce)\n"), "{}", r.text());
        let err = run(&["nosuch", "--exec", "/x"], &mut daemon).unwrap_err();
        assert_eq!(err.render(), "agentctl: agentd: no policy named \"nosuch\"\n");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn an_identity_uses_its_policy_and_its_standing() {
        let mut daemon = FakeDaemon::default()
            .with_policy("coder", CODER)
            .with_identity("alice-coder", "coder", "active")
            .with_identity("gone", "coder", "revoked")
            .with_identity("late", "coder", "expired")
            .with_identity("orphan", "deleted-policy", "no-policy");
        let r = run(&["--identity", "alice-coder", "--exec", "/nonexistent-agentd-test/bin/git"], &mut daemon).unwrap();
        assert_eq!((r.decision, r.rule_id), ("allow", 1));
        assert_eq!((r.identity.as_deref(), r.standing), (Some("alice-coder"), Some("active")));
        assert!(r.text().contains("\nidentity: alice-coder (active)\n"), "{}", r.text());

        for (who, standing) in [("gone", "revoked"), ("late", "expired"), ("orphan", "no-policy")] {
            daemon.asked = 0;
            let r = run(&["--identity", who, "--exec", "/nonexistent-agentd-test/bin/git"], &mut daemon).unwrap();
            assert_eq!(daemon.asked, 1, "{who}: only the identity is looked up");
            assert_eq!((r.decision, r.enforced, r.rule_id, r.standing), ("deny", "deny", 0, Some(standing)));
            assert_eq!(r.mode, None);
            let text = r.text();
            assert!(text.contains(&format!("decision: deny (identity {standing})\n")), "{text}");
            assert!(text.contains("rule:     none (the identity is denied everything)\n"), "{text}");
            assert!(text.contains("(not consulted)"), "{text}");
        }

        // A file given with an identity: the file's rules, the identity's standing.
        let (_dir, f) = file(&CODER.replace("mode: enforce", "mode: monitor"));
        let r = run(&[&f, "--identity", "gone", "--exec", "/nonexistent-agentd-test/bin/wget"], &mut daemon).unwrap();
        assert_eq!((r.decision, r.enforced, r.mode), ("deny", "deny", Some("monitor")), "revoked beats monitor");
        let r = run(&[&f, "--identity", "alice-coder", "--exec", "/nonexistent-agentd-test/bin/wget"], &mut daemon)
            .unwrap();
        assert_eq!(r.enforced, "would_deny");

        let err = run(&["--identity", "nobody", "--exec", "/x"], &mut daemon).unwrap_err();
        assert!(err.to_string().contains("no identity named \"nobody\""), "{err}");
        let mut odd = FakeDaemon::default().with_identity("odd", "coder", "suspended");
        let err = run(&["--identity", "odd", "--exec", "/x"], &mut odd).unwrap_err();
        assert!(err.to_string().contains("\"suspended\""), "{err}");
    }

    #[test]
    fn a_bad_policy_fails_with_every_error() {
        let (_dir, f) = file(&CODER.replace("default: deny", "default: nope").replace("mode: enforce", "mode: x"));
        let err = run(&[&f, "--exec", "/x"], &mut FakeDaemon::default()).unwrap_err();
        let text = err.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("agentctl: {f} has 4 errors:"), "{text}");
        assert!(lines[1].starts_with(&format!("{f}:6:9: ")), "{text}");
        assert!(lines[1..].iter().all(|l| l.starts_with(&format!("{f}:"))), "{text}");
        assert_eq!(err.exit_code(), 1);
        let err = run(&["/nonexistent/coder.yaml", "--exec", "/x"], &mut FakeDaemon::default()).unwrap_err();
        assert!(err.to_string().starts_with("cannot read /nonexistent/coder.yaml: "), "{err}");
    }

    #[test]
    fn a_file_agentd_would_refuse_is_answered_with_a_note() {
        // Valid, but a directory longer than the kernel's path keys.
        let long = format!("/nonexistent-agentd-test/{}", "a".repeat(agent_common::PATH_KEY_LEN));
        let (_dir, f) = file(&CODER.replace("/nonexistent-agentd-test/work/**", &format!("{long}/**")));
        let r = run(&[&f, "--write", &format!("{long}/x")], &mut FakeDaemon::default()).unwrap();
        assert_eq!((r.decision, r.rule_id), ("allow", 3));
        let text = r.text();
        assert!(text.contains("note:     agentd would refuse this file as it is (1 problem(s)"), "{text}");
        assert!(text.contains(&format!("`agentctl policy validate {f}`")), "{text}");
        let (_dir, f) = file(CODER);
        let r = run(&[&f, "--write", "/nonexistent-agentd-test/work/x"], &mut FakeDaemon::default()).unwrap();
        assert!(r.notes.is_empty(), "{:?}", r.notes);
    }

    #[test]
    fn json_has_the_stable_fields() {
        let (_dir, f) = file(CODER);
        let r = run(&[&f, "--exec", "/nonexistent-agentd-test/bin/curl"], &mut FakeDaemon::default()).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "action", "decision", "enforced", "identity", "line", "mode", "policy", "reason", "rule", "rule_id",
                "standing", "system"
            ]
        );
        assert_eq!(v["action"], serde_json::json!({"kind": "exec", "target": "/nonexistent-agentd-test/bin/curl"}));
        assert_eq!((v["decision"].as_str(), v["enforced"].as_str()), (Some("ask"), Some("hold")));
        assert_eq!((v["rule_id"].as_u64(), v["line"].as_u64()), (Some(2), Some(11)));
        assert!(v["identity"].is_null() && v["standing"].is_null());
        assert_eq!(v["system"], serde_json::json!({"namespaces": "deny", "ptrace": "deny"}));
        let r = run(&[&f, "--connect", "[::1]:443"], &mut FakeDaemon::default()).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["action"], serde_json::json!({"kind": "connect", "target": "[::1]:443", "protocol": "tcp"}));
        assert!(v["rule"].is_null() && v["line"].is_null());
    }

    #[test]
    fn connect_takes_addr_and_port() {
        let arg = |a: &str, port| Ok(ConnectArg { addr: a.parse().unwrap(), port });
        assert_eq!(parse_connect("1.2.3.4:443"), arg("1.2.3.4", Some(443)));
        assert_eq!(parse_connect("[2001:db8::1]:443"), arg("2001:db8::1", Some(443)));
        assert_eq!(parse_connect("[::ffff:127.0.0.1]:80").map(|a| a.port), Ok(Some(80)));
        // An address alone is for ICMP; whether it may be alone is checked later.
        assert_eq!(parse_connect("1.2.3.4"), arg("1.2.3.4", None));
        assert_eq!(parse_connect("2001:db8::1"), arg("2001:db8::1", None));
        assert_eq!(parse_connect("[2001:db8::1]"), arg("2001:db8::1", None));
        let err = |s| parse_connect(s).unwrap_err();
        assert!(err("[2001:db8::1]443").contains("brackets"), "{}", err("[2001:db8::1]443"));
        assert!(err("api.github.com:443").contains("not a host name"), "{}", err("api.github.com:443"));
        assert!(err("1.2.3.4:99999").contains("e.g. 1.2.3.4:443"));
    }

    #[test]
    fn icmp_is_an_address_alone_and_only_an_icmp_rule_allows_it() {
        let text = CODER.replace(
            "      - {cidr: \"2001:db8::/32\"",
            "      - {cidr: 127.0.0.0/8, protocol: icmp, action: allow}\n      - {cidr: \"2001:db8::/32\"",
        );
        let (_dir, f) = file(&text.replace("  egress:\n    default: deny", "  egress:\n    default: allow"));
        let mut daemon = FakeDaemon::default();
        let r = run(&[&f, "--connect", "127.0.0.1", "--protocol", "icmp"], &mut daemon).unwrap();
        assert_eq!((r.decision, r.enforced, r.rule_id, r.line), ("allow", "allow", 6, Some(21)));
        assert_eq!(r.action, ActionJson { kind: "connect", target: "127.0.0.1".into(), protocol: Some("icmp") });
        assert!(r.text().contains("action:   connect icmp 127.0.0.1\n"), "{}", r.text());
        // Not by the allowing default.
        let r = run(&[&f, "--connect", "2001:db8::1", "--protocol", "icmp"], &mut daemon).unwrap();
        assert_eq!((r.decision, r.rule_id), ("deny", 0));
        assert!(r.reason.contains("the egress default does not apply"), "{}", r.reason);
        assert!(r.text().contains("\nrule:     0 (no icmp rule: denied)\n"), "{}", r.text());
        // A port with ICMP, or none without it, is a usage error that says why.
        let err = run(&[&f, "--connect", "127.0.0.1:80", "--protocol", "icmp"], &mut daemon).unwrap_err();
        assert!(err.to_string().contains("ICMP has no ports"), "{err}");
        let err = run(&[&f, "--connect", "127.0.0.1"], &mut daemon).unwrap_err();
        assert!(err.to_string().contains("has no port: give ADDR:PORT, e.g. 127.0.0.1:443"), "{err}");
        assert_eq!(err.exit_code(), 2);
        // A port written after an IPv6 address without brackets is part of it.
        let err = run(&[&f, "--connect", "2001:db8::1:443"], &mut daemon).unwrap_err();
        assert!(err.to_string().contains("e.g. [2001:db8::1:443]:443, an IPv6 address in brackets"), "{err}");
    }
}
