//! `agentctl policy diff`: what changes from one policy to another, as rules and,
//! more to the point for a reviewer, as decisions (see `policy::diff` for how the
//! actions compared are chosen).

use std::{net::SocketAddr, path::Path};

use serde::Serialize;

use super::{
    error::{CliError, EXIT_FAILURE},
    output,
    policy_source::{self, Daemon, Lookup, Source},
    policy_test::{action_json, ActionJson},
    PolicyDiffArgs,
};
use crate::policy::{self, Action, DecisionChange, Mode, Outcome, Policy, PolicyDiff, Protocol, RuleChange, RuleRef};

/// Both sides and what differs.
#[derive(Clone, Debug)]
pub struct DiffReport {
    pub old: Side,
    pub new: Side,
    pub diff: PolicyDiff,
}

/// One of the two policies compared.
#[derive(Clone, Debug)]
pub struct Side {
    pub source: Source,
    pub name: String,
    pub mode: &'static str,
}

impl Side {
    fn of(source: Source, p: &Policy) -> Side {
        Side { source, name: p.name().to_string(), mode: p.mode().as_str() }
    }

    fn header(&self) -> String {
        match &self.source {
            Source::File(path) => format!("{} (policy {}, {})", path.display(), self.name, self.mode),
            Source::Applied(_) => format!("applied policy {} ({})", self.name, self.mode),
        }
    }
}

/// Runs `policy diff`; the exit status is 1 with `--exit-code` when the kernel
/// would decide something differently.
pub async fn diff(socket: &Path, args: &PolicyDiffArgs) -> Result<u8, CliError> {
    let report = run_diff(&args.old, &args.new, &mut Daemon::new(socket)).await?;
    if args.json {
        output::json(&report.json())?;
    } else {
        output::print(report.text())?;
    }
    Ok(if args.exit_code && report.diff.changes_enforcement() { EXIT_FAILURE } else { 0 })
}

/// Loads both policies (`lookup` is asked only for names) and compares them.
pub async fn run_diff(old: &str, new: &str, lookup: &mut impl Lookup) -> Result<DiffReport, CliError> {
    let (old_source, new_source) = (Source::from_arg(old), Source::from_arg(new));
    let old_policy = policy_source::load(&old_source, lookup).await?;
    let new_policy = policy_source::load(&new_source, lookup).await?;
    Ok(DiffReport {
        diff: policy::diff(&old_policy, &new_policy),
        old: Side::of(old_source, &old_policy),
        new: Side::of(new_source, &new_policy),
    })
}

/// `--json`: these fields are stable.
#[derive(Debug, Serialize)]
pub struct DiffJson {
    pub old: SideJson,
    pub new: SideJson,
    /// `{old, new}` when the mode changes.
    pub mode: Option<ChangeJson>,
    pub defaults: Vec<DefaultJson>,
    /// `spec.system` keys that change: [{key, old, new}], each allow or deny.
    pub system: Vec<SystemJson>,
    pub rules: Vec<RuleChangeJson>,
    /// How many actions were judged under both policies.
    pub probes: usize,
    pub decisions: Vec<DecisionJson>,
    /// Whether the kernel would decide something differently (what `--exit-code` reports).
    pub changes_enforcement: bool,
}

#[derive(Debug, Serialize)]
pub struct SideJson {
    /// The file, `null` for an applied policy.
    pub file: Option<String>,
    pub policy: String,
    pub mode: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ChangeJson {
    pub old: &'static str,
    pub new: &'static str,
}

#[derive(Debug, Serialize)]
pub struct DefaultJson {
    pub kind: &'static str,
    pub old: &'static str,
    pub new: &'static str,
}

#[derive(Debug, Serialize)]
pub struct SystemJson {
    pub key: &'static str,
    pub old: &'static str,
    pub new: &'static str,
}

#[derive(Debug, Serialize)]
pub struct RuleChangeJson {
    /// added, removed or changed.
    pub change: &'static str,
    pub kind: &'static str,
    pub old: Option<RuleJson>,
    pub new: Option<RuleJson>,
}

#[derive(Debug, Serialize)]
pub struct RuleJson {
    pub id: u32,
    pub line: usize,
    pub rule: String,
    pub action: &'static str,
}

#[derive(Debug, Serialize)]
pub struct DecisionJson {
    pub action: ActionJson,
    pub old: OutcomeJson,
    pub new: OutcomeJson,
}

#[derive(Debug, Serialize)]
pub struct OutcomeJson {
    pub decision: &'static str,
    /// 0 for the default.
    pub rule_id: u32,
    pub rule: Option<String>,
    pub line: Option<usize>,
}

impl DiffReport {
    pub fn json(&self) -> DiffJson {
        let side = |s: &Side| SideJson {
            file: match &s.source {
                Source::File(p) => Some(p.display().to_string()),
                Source::Applied(_) => None,
            },
            policy: s.name.clone(),
            mode: s.mode,
        };
        let rule = |r: Option<&RuleRef>| {
            r.map(|r| RuleJson { id: r.id, line: r.line, rule: r.text.clone(), action: r.action.as_str() })
        };
        let outcome = |o: &Outcome| OutcomeJson {
            decision: o.action.as_str(),
            rule_id: o.rule_id,
            rule: o.rule_text.clone(),
            line: o.line,
        };
        let d = &self.diff;
        DiffJson {
            old: side(&self.old),
            new: side(&self.new),
            mode: d.mode.map(|(o, n)| ChangeJson { old: o.as_str(), new: n.as_str() }),
            defaults: d
                .defaults
                .iter()
                .map(|(k, o, n)| DefaultJson { kind: k.as_str(), old: o.as_str(), new: n.as_str() })
                .collect(),
            system: d
                .system
                .iter()
                .map(|(k, o, n)| SystemJson { key: k, old: allow_or_deny(*o), new: allow_or_deny(*n) })
                .collect(),
            rules: d
                .rules
                .iter()
                .map(|c| RuleChangeJson {
                    change: change_name(c),
                    kind: c.kind().as_str(),
                    old: rule(c.old_rule()),
                    new: rule(c.new_rule()),
                })
                .collect(),
            probes: d.probes,
            decisions: d
                .decisions
                .iter()
                .map(|c| DecisionJson { action: action_json(&c.probe), old: outcome(&c.old), new: outcome(&c.new) })
                .collect(),
            changes_enforcement: d.changes_enforcement(),
        }
    }

    /// The human form: headers, mode and defaults, rules as a unified diff, then
    /// a table of the decisions that change.
    pub fn text(&self) -> String {
        self.render(false)
    }

    /// `text`; `plain` never wraps the table, even on a terminal (for tests).
    fn render(&self, plain: bool) -> String {
        let d = &self.diff;
        let mut out = vec![format!("--- {}", self.old.header()), format!("+++ {}", self.new.header())];
        if d.is_empty() {
            out.push(format!("no changes: {} probed actions are decided the same", d.probes));
            return out.join("\n");
        }
        let mut settings = Vec::new();
        if let Some((o, n)) = d.mode {
            settings.push(format!("mode: {} → {}", o.as_str(), n.as_str()));
        }
        settings.extend(d.defaults.iter().map(|(k, o, n)| format!("{} default: {o} → {n}", k.as_str())));
        settings.extend(
            d.system.iter().map(|(k, o, n)| format!("system.{k}: {} → {}", allow_or_deny(*o), allow_or_deny(*n))),
        );
        if !settings.is_empty() {
            out.push(String::new());
            out.extend(settings);
        }
        if !d.rules.is_empty() {
            out.push(String::new());
            out.push("rules:".into());
            for c in &d.rules {
                let kind = c.kind().as_str();
                let shown = |r: &RuleRef| format!("line {}: {}", r.line, r.text);
                match c {
                    RuleChange::Added { new, .. } => out.push(format!("  + {kind:<6} {}", shown(new))),
                    RuleChange::Removed { old, .. } => out.push(format!("  - {kind:<6} {}", shown(old))),
                    RuleChange::Changed { old, new, .. } => {
                        out.push(format!("  ~ {kind:<6} {}", shown(old)));
                        out.push(format!("  {:<6} → {}", "", shown(new)));
                    }
                }
            }
        }
        out.push(String::new());
        if d.decisions.is_empty() {
            out.push(format!("no decision changes: {} probed actions are decided the same", d.probes));
            match d.mode {
                Some((_, Mode::Monitor)) => {
                    out.push("but in monitor mode what was denied is allowed, and reported as would-deny".into())
                }
                Some((_, Mode::Enforce)) => {
                    out.push("but in enforce mode what was only reported as would-deny is denied".into())
                }
                None => {}
            }
            return out.join("\n");
        }
        out.push(format!("decisions that change ({} of {} probed actions):", d.decisions.len(), d.probes));
        let mut t = output::table(&["ACTION", "OLD", "NEW"]);
        if plain {
            t.force_no_tty();
        }
        let mut rows = d.decisions.iter().peekable();
        while let Some(c) = rows.next() {
            // TCP and UDP to the same place, changing alike: one row.
            let both = rows.next_if(|n| same_but_udp(c, n)).is_some();
            let what = match c.probe {
                Action::Connect { addr, port, .. } if both => {
                    format!("connect tcp+udp {}", SocketAddr::new(addr, port))
                }
                _ => c.probe.to_string(),
            };
            // Listed for its deciding rule only: say which rule that is.
            let texts = c.old.action == c.new.action;
            let icmp = matches!(c.probe, Action::Connect { protocol: Protocol::Icmp, .. });
            t.add_row(vec![what, outcome_text(&c.old, texts, icmp), outcome_text(&c.new, texts, icmp)]);
        }
        out.push(output::render_table(&t));
        out.join("\n")
    }
}

/// Whether `udp` is `tcp`'s probe over UDP and changes the same way.
fn same_but_udp(tcp: &DecisionChange, udp: &DecisionChange) -> bool {
    match (&tcp.probe, &udp.probe) {
        (
            Action::Connect { addr: a, port: p, protocol: Protocol::Tcp },
            Action::Connect { addr: b, port: q, protocol: Protocol::Udp },
        ) => a == b && p == q && tcp.old == udp.old && tcp.new == udp.new,
        _ => false,
    }
}

/// A `spec.system` setting as written.
fn allow_or_deny(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

fn change_name(c: &RuleChange) -> &'static str {
    match c {
        RuleChange::Added { .. } => "added",
        RuleChange::Removed { .. } => "removed",
        RuleChange::Changed { .. } => "changed",
    }
}

/// `allow (rule 3, line 14)` or `deny (default)`; with `text`, the rule as written
/// follows. ICMP that no rule decides is denied, not by the default.
fn outcome_text(o: &Outcome, text: bool, icmp: bool) -> String {
    let rule = match (o.line, &o.rule_text) {
        _ if o.rule_id == 0 && icmp => return format!("{} (no icmp rule)", o.action),
        _ if o.rule_id == 0 => return format!("{} (default)", o.action),
        (Some(line), Some(t)) if text => format!("rule {}, line {line}: {t}", o.rule_id),
        (Some(line), _) => format!("rule {}, line {line}", o.rule_id),
        (None, _) => format!("rule {}", o.rule_id),
    };
    format!("{} ({rule})", o.action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::policy_source::fake::FakeDaemon;

    const OLD: &str = r#"apiVersion: agentd.io/v1
kind: AgentPolicy
metadata:
  name: coder
spec:
  exec:
    default: deny
    rules:
      - {path: /nonexistent-agentd-test/bin/git, action: allow}
  write:
    default: deny
    rules:
      - {path: "/nonexistent-agentd-test/work/src/**", action: allow}
  egress:
    default: deny
    rules:
      - {cidr: 10.0.0.0/8, ports: ["1-1024"], action: allow}
"#;

    fn run(old: &str, new: &str, daemon: &mut FakeDaemon) -> Result<DiffReport, CliError> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(run_diff(old, new, daemon))
    }

    fn files(old: &str, new: &str) -> (tempfile::TempDir, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let (o, n) = (dir.path().join("old.yaml"), dir.path().join("new.yaml"));
        std::fs::write(&o, old).unwrap();
        std::fs::write(&n, new).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        (dir, s(&o), s(&n))
    }

    #[test]
    fn identical_files_have_no_changes() {
        let (_dir, o, n) = files(OLD, OLD);
        let mut daemon = FakeDaemon::default();
        let r = run(&o, &n, &mut daemon).unwrap();
        assert_eq!(daemon.asked, 0);
        assert!(r.diff.is_empty() && !r.diff.changes_enforcement());
        let text = r.render(true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("--- {o} (policy coder, enforce)"));
        assert_eq!(lines[1], format!("+++ {n} (policy coder, enforce)"));
        assert!(lines[2].starts_with("no changes: ") && lines[2].ends_with(" probed actions are decided the same"));
        assert_eq!(lines.len(), 3, "{text}");
    }

    #[test]
    fn widening_and_tightening_read_as_a_review() {
        let new = OLD
            .replace("/nonexistent-agentd-test/work/src/**", "/nonexistent-agentd-test/work/**")
            .replace(r#"ports: ["1-1024"]"#, "ports: [443]");
        let mut daemon = FakeDaemon::default().with_policy("coder", OLD);
        let (_dir, _, n) = files(OLD, &new);
        let r = run("coder", &n, &mut daemon).unwrap();
        assert_eq!(daemon.asked, 1);
        assert!(r.diff.changes_enforcement());
        let text = r.render(true);
        assert!(text.starts_with("--- applied policy coder (enforce)\n+++ "), "{text}");
        assert!(
            text.contains(
                "\n\nrules:\n\
                 \x20 - write  line 13: {path: \"/nonexistent-agentd-test/work/src/**\", action: allow}\n\
                 \x20 + write  line 13: {path: \"/nonexistent-agentd-test/work/**\", action: allow}\n\
                 \x20 ~ egress line 17: {cidr: 10.0.0.0/8, ports: [\"1-1024\"], action: allow}\n\
                 \x20        → line 17: {cidr: 10.0.0.0/8, ports: [443], action: allow}\n\n"
            ),
            "{text}"
        );
        assert!(text.contains("\ndecisions that change ("), "{text}");
        let row = |start: &str| {
            let l = text.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("{start}: {text}"));
            l.split("  ").filter(|c| !c.is_empty()).map(str::trim).collect::<Vec<_>>()
        };
        assert_eq!(
            row("write /nonexistent-agentd-test/work/x "),
            ["write /nonexistent-agentd-test/work/x", "deny (default)", "allow (rule 2, line 13)"]
        );
        assert_eq!(
            row("connect tcp+udp 10.0.0.0:1 "),
            ["connect tcp+udp 10.0.0.0:1", "allow (rule 3, line 17)", "deny (default)"]
        );
        assert!(!text.contains("connect udp 10.0.0.0:1 "), "{text}");
        assert!(!text.contains("connect tcp 10.0.0.0:443 "), "{text}");
        // Allowed before and after, by another rule: the rows say which.
        assert_eq!(
            row("write /nonexistent-agentd-test/work/src/x "),
            [
                "write /nonexistent-agentd-test/work/src/x",
                "allow (rule 2, line 13: {path: \"/nonexistent-agentd-test/work/src/**\", action: allow})",
                "allow (rule 2, line 13: {path: \"/nonexistent-agentd-test/work/**\", action: allow})"
            ]
        );

        let v = serde_json::to_value(r.json()).unwrap();
        assert_eq!(v["old"], serde_json::json!({"file": null, "policy": "coder", "mode": "enforce"}));
        assert_eq!(v["new"]["file"].as_str(), Some(n.as_str()));
        assert!(v["mode"].is_null());
        assert_eq!(v["defaults"], serde_json::json!([]));
        let changes: Vec<&str> = v["rules"].as_array().unwrap().iter().map(|c| c["change"].as_str().unwrap()).collect();
        assert_eq!(changes, ["removed", "added", "changed"]);
        assert_eq!(
            v["rules"][2]["new"],
            serde_json::json!({"id": 3, "line": 17, "rule": "{cidr: 10.0.0.0/8, ports: [443], action: allow}", "action": "allow"})
        );
        let d = v["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["action"]["target"] == "10.0.0.0:1" && d["action"]["protocol"] == "udp")
            .unwrap();
        assert_eq!(
            d["old"],
            serde_json::json!({"decision": "allow", "rule_id": 3, "rule": "{cidr: 10.0.0.0/8, ports: [\"1-1024\"], action: allow}", "line": 17})
        );
        assert_eq!(d["new"], serde_json::json!({"decision": "deny", "rule_id": 0, "rule": null, "line": null}));
        assert_eq!(v["changes_enforcement"], true);
        assert!(v["probes"].as_u64().unwrap() > 0);
    }

    #[test]
    fn mode_and_defaults() {
        let new = OLD
            .replace("spec:\n", "spec:\n  mode: monitor\n")
            .replace("  exec:\n    default: deny", "  exec:\n    default: audit");
        let (_dir, o, n) = files(OLD, &new);
        let r = run(&o, &n, &mut FakeDaemon::default()).unwrap();
        let text = r.render(true);
        assert!(text.contains("\n\nmode: enforce → monitor\nexec default: deny → audit\n"), "{text}");
        assert!(!text.contains("rules:"), "{text}");
        let only_mode = OLD.replace("spec:\n", "spec:\n  mode: monitor\n");
        let (_dir2, o2, n2) = files(OLD, &only_mode);
        let r2 = run(&o2, &n2, &mut FakeDaemon::default()).unwrap();
        assert!(r2.diff.changes_enforcement());
        let want = format!(
            "no decision changes: {} probed actions are decided the same\n\
             but in monitor mode what was denied is allowed, and reported as would-deny",
            r2.diff.probes
        );
        assert!(r2.render(true).ends_with(&want), "{}", r2.render(true));
        let v = serde_json::to_value(r.json()).unwrap();
        assert_eq!(v["mode"], serde_json::json!({"old": "enforce", "new": "monitor"}));
        assert_eq!(v["defaults"], serde_json::json!([{"kind": "exec", "old": "deny", "new": "audit"}]));
    }

    #[test]
    fn system_opt_ins_are_settings() {
        let new = format!("{OLD}  system:\n    namespaces: allow\n");
        let (_dir, o, n) = files(OLD, &new);
        let r = run(&o, &n, &mut FakeDaemon::default()).unwrap();
        assert!(r.diff.changes_enforcement());
        let text = r.render(true);
        assert!(text.contains("\n\nsystem.namespaces: deny → allow\n"), "{text}");
        let v = serde_json::to_value(r.json()).unwrap();
        assert_eq!(v["system"], serde_json::json!([{"key": "namespaces", "old": "deny", "new": "allow"}]));
    }

    #[test]
    fn icmp_and_unix_rows() {
        let new = OLD.replace(
            "      - {cidr: 10.0.0.0/8, ports: [\"1-1024\"], action: allow}\n",
            "      - {cidr: 10.0.0.0/8, ports: [\"1-1024\"], action: allow}\n      \
             - {cidr: 10.0.0.0/8, protocol: icmp, action: allow}\n    \
             unix:\n      rules:\n        - {path: /run/docker.sock, action: audit}\n",
        );
        let (_dir, o, n) = files(OLD, &new);
        let text = run(&o, &n, &mut FakeDaemon::default()).unwrap().render(true);
        let row = |start: &str| {
            let l = text.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("{start}: {text}"));
            l.split("  ").filter(|c| !c.is_empty()).map(str::trim).collect::<Vec<_>>()
        };
        assert_eq!(
            row("connect icmp 10.0.0.0 "),
            ["connect icmp 10.0.0.0", "deny (no icmp rule)", "allow (rule 4, line 18)"]
        );
        let docker = row("connect unix /run/docker.sock ");
        assert_eq!(docker[0..2], ["connect unix /run/docker.sock", "deny (rule 5)"], "{text}");
        assert_eq!(docker[2], "audit (rule 5, line 21)", "{text}");
        assert!(text.contains("  + unix   line 21: {path: /run/docker.sock, action: audit}"), "{text}");
    }

    #[test]
    fn tcp_and_udp_share_a_row_only_when_they_change_alike() {
        let new = OLD.replace(
            "      - {cidr: 10.0.0.0/8, ports: [\"1-1024\"], action: allow}\n",
            "      - {cidr: 10.0.0.0/8, ports: [\"1-1024\"], action: allow}\n      \
             - {cidr: 10.0.0.0/8, ports: [53], protocol: udp, action: deny}\n",
        );
        let (_dir, o, n) = files(OLD, &new);
        let text = run(&o, &n, &mut FakeDaemon::default()).unwrap().render(true);
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("connect ")).collect();
        assert!(rows.iter().any(|r| r.starts_with("connect udp 10.0.0.0:53 ")), "{text}");
        assert!(rows.iter().all(|r| !r.starts_with("connect tcp")), "TCP is unchanged: {text}");
    }

    #[test]
    fn a_reorder_changes_nothing_the_kernel_does() {
        let new = r#"apiVersion: agentd.io/v1
kind: AgentPolicy
metadata:
  name: coder
spec:
  egress:
    rules:
      - {cidr: 10.0.0.0/8, ports: ["1-1024"], action: allow}
    default: deny
  write:
    rules:
      - {path: "/nonexistent-agentd-test/work/src/**", action: allow}
    default: deny
  exec:
    rules:
      - {path: /nonexistent-agentd-test/bin/git, action: allow}
    default: deny
"#;
        let (_dir, o, n) = files(OLD, new);
        let r = run(&o, &n, &mut FakeDaemon::default()).unwrap();
        assert!(r.diff.is_empty(), "{}", r.text());
    }

    #[test]
    fn errors_name_the_policy() {
        let (_dir, o, _) = files(OLD, OLD);
        let err = run(&o, "/nonexistent/new.yaml", &mut FakeDaemon::default()).unwrap_err();
        assert!(err.to_string().starts_with("cannot read /nonexistent/new.yaml: "), "{err}");
        assert_eq!(err.exit_code(), 1);
        let (_dir, o, n) = files(OLD, &OLD.replace("default: deny", "default: never"));
        let err = run(&o, &n, &mut FakeDaemon::default()).unwrap_err();
        assert!(err.render().starts_with(&format!("agentctl: {n} has 3 errors:\n{n}:7:14: ")), "{}", err.render());
        let err = run("coder", &o, &mut FakeDaemon::default()).unwrap_err();
        assert!(err.to_string().contains("no policy named \"coder\""), "{err}");
    }
}
