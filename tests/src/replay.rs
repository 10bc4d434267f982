//! Replaying single actions against the real kernel and reading back which rule
//! decided, for the conformance vectors (`tests/vectors`).
//!
//! Each action is done by a fresh `probe` started outside the bound cgroup that
//! moves itself in (`probe join`) and then does exactly that one thing, so the
//! only decisions the cgroup's policy makes are about that action. What decided is
//! read from the kernel's own per-rule counters (`agentctl policy show --json`)
//! before and after: every counter that moved must be the expected rule's expected
//! counter. The outcome (success, EPERM, SIGKILL) must be what the active
//! mechanism does for that decision.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use crate::harness::{outcome, Cgroup, Daemon, Outcome};

/// One action, with absolute paths already substituted.
#[derive(Clone, Debug)]
pub enum Act {
    Exec { path: PathBuf },
    /// `path` may be relative, then it is opened from `cwd`.
    Write { path: PathBuf, cwd: Option<PathBuf> },
    Connect { addr: SocketAddr, udp: bool },
}

impl Act {
    pub fn kind(&self) -> &'static str {
        match self {
            Act::Exec { .. } => "exec",
            Act::Write { .. } => "write",
            Act::Connect { .. } => "egress",
        }
    }
}

/// Which of a rule's counters a decision moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Allow,
    Deny,
    WouldDeny,
    /// Audit moves `allow` and `audit` together.
    Audit,
}

/// What the kernel is expected to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    /// Blocked (deny, or ask while there is no hold service).
    pub blocked: bool,
    /// The rule id that decides (0: the kind's default) and the counter it moves;
    /// `None` when no rule is consulted (revoked or expired identity).
    pub counts: Option<(u32, Counter)>,
}

/// Per (kind, rule id): [allow, deny, would_deny, audit], from `policy show --json`.
pub type Hits = BTreeMap<(String, u64), [u64; 4]>;

pub fn hits(d: &Daemon, policy: &str) -> Hits {
    let v: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["policy", "show", policy, "--json"])).expect("policy show --json");
    let four = |h: &serde_json::Value| {
        ["allow", "deny", "would_deny", "audit"].map(|k| h.get(k).and_then(|x| x.as_u64()).unwrap_or(0))
    };
    let mut out = Hits::new();
    for r in v["rules"].as_array().cloned().unwrap_or_default() {
        let kind = r["kind"].as_str().unwrap_or("?").to_string();
        out.insert((kind, r["id"].as_u64().unwrap_or(u64::MAX)), four(&r["hits"]));
    }
    for kind in ["exec", "write", "egress"] {
        out.insert((kind.to_string(), 0), four(&v[format!("{kind}_default_hits")]));
    }
    out
}

/// Makes the action's target exist where the kernel would otherwise refuse it
/// before deciding anything (a missing executable, a missing parent directory), as
/// an unbound process. `exec_source` is copied to a missing executable.
pub fn prepare(act: &Act, exec_source: &Path) {
    match act {
        Act::Exec { path } => {
            if !path.exists() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).expect("parent of an executable");
                }
                std::fs::copy(exec_source, path).expect("copying an executable");
            }
        }
        Act::Write { path, cwd } => {
            let abs = match cwd {
                Some(c) if path.is_relative() => c.join(path),
                _ => path.clone(),
            };
            if let Some(parent) = abs.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
        }
        Act::Connect { .. } => {}
    }
}

/// Does `act` in cgroup `cg` from a fresh probe.
pub fn perform(d: &Daemon, cg: &Cgroup, act: &Act) -> Outcome {
    let cgpath = cg.path.to_str().expect("utf-8 cgroup path");
    let mut c = Command::new(&d.bins.probe);
    c.args(["join", cgpath]);
    match act {
        Act::Exec { path } => {
            c.arg("exec").arg(path).args(["sleep", "0"]);
        }
        Act::Write { path, cwd } => {
            c.arg("write").arg(path);
            if let Some(dir) = cwd {
                c.current_dir(dir);
            }
        }
        Act::Connect { addr, udp } => {
            c.arg(if *udp { "udp-connect" } else { "tcp-try" }).arg(addr.to_string());
        }
    }
    outcome(&c.output().expect("running probe"))
}

/// Replays one action and returns what disagreed with `want` (empty: agreed).
pub fn check(d: &Daemon, cg: &Cgroup, policy: &str, act: &Act, want: &Expect, blocked_outcome: &Outcome) -> Vec<String> {
    let before = hits(d, policy);
    let got = perform(d, cg, act);
    let after = hits(d, policy);
    let mut problems = Vec::new();
    let was_blocked = &got == blocked_outcome;
    if was_blocked != want.blocked {
        problems.push(format!(
            "expected {}, the kernel {} (probe: {got:?})",
            if want.blocked { "blocked" } else { "allowed" },
            if was_blocked { "blocked it" } else { "let it through" }
        ));
    }
    let moved: Vec<((String, u64), [u64; 4])> = after
        .iter()
        .filter_map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or_default();
            let delta = [0, 1, 2, 3].map(|i| a[i].saturating_sub(b[i]));
            (delta != [0; 4]).then(|| (k.clone(), delta))
        })
        .collect();
    match &want.counts {
        None => {
            if !moved.is_empty() {
                problems.push(format!("expected no rule to decide, counters moved: {moved:?}"));
            }
        }
        Some((rule, counter)) => {
            let key = (act.kind().to_string(), u64::from(*rule));
            let ok_shape = |d: &[u64; 4]| match counter {
                Counter::Allow => d[0] > 0 && d[1] == 0 && d[2] == 0 && d[3] == 0,
                Counter::Deny => d[1] > 0 && d[0] == 0 && d[2] == 0 && d[3] == 0,
                Counter::WouldDeny => d[2] > 0 && d[0] == 0 && d[1] == 0 && d[3] == 0,
                Counter::Audit => d[3] > 0 && d[0] == d[3] && d[1] == 0 && d[2] == 0,
            };
            let right = moved.iter().any(|(k, d)| *k == key && ok_shape(d));
            let others: Vec<_> = moved.iter().filter(|(k, _)| *k != key).collect();
            if !right || !others.is_empty() {
                problems.push(format!(
                    "expected {} rule {rule} to count {counter:?}; counters that moved: {moved:?}",
                    act.kind()
                ));
            }
        }
    }
    problems
}
