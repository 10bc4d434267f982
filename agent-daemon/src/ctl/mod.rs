//! `agentctl`: the command line for agentd. Commands talk to the daemon over its
//! unix socket, except `policy validate` (offline) and the local checks `doctor`
//! prints when the daemon is down.

mod client;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use tokio_stream::StreamExt as _;

use crate::{api::pb, policy::v1};
pub use client::CtlError;

const EXAMPLES: &str = "EXAMPLES:
  agentctl doctor                                   # what this kernel can enforce, and how
  agentctl policy apply policies/coding-agent.yaml
  agentctl identity create coder --policy coding-agent --owner alice
  agentctl run --identity coder -- claude           # run an agent under an identity
  agentctl bind system.slice/mcp-github.service mcp-github
  agentctl events --follow";

/// Control agentd: policies, identities, bindings, events.
#[derive(Parser, Debug)]
#[command(name = "agentctl", version, after_help = EXAMPLES)]
pub struct Cli {
    /// agentd's socket.
    #[arg(long, global = true, env = "AGENTD_SOCKET", default_value = "/run/agentd/agentd.sock")]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Per action kind, which kernel mechanism enforces it and why better ones do not.
    #[command(after_help = "EXAMPLES:\n  agentctl doctor\n  agentctl doctor --json")]
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Daemon health, counters (including dropped events) and mechanisms.
    #[command(after_help = "EXAMPLES:\n  agentctl status\n  agentctl status --json")]
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Apply, list, show or validate policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Create, list or show identities.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Bind a cgroup (and every cgroup below it, now and later) to an identity.
    #[command(after_help = "CGROUP is a path under the cgroup2 mount (absolute or relative to it) or a systemd unit name.\n\nEXAMPLES:\n  agentctl bind system.slice/mcp-github.service mcp-github\n  agentctl bind mcp-github.service mcp-github\n  agentctl bind /sys/fs/cgroup/agents/worker-1 worker")]
    Bind {
        cgroup: String,
        identity: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a binding.
    #[command(after_help = "EXAMPLES:\n  agentctl unbind system.slice/mcp-github.service")]
    Unbind {
        cgroup: String,
        #[arg(long)]
        json: bool,
    },
    /// List bindings.
    #[command(after_help = "EXAMPLES:\n  agentctl bindings\n  agentctl bindings --json")]
    Bindings {
        #[arg(long)]
        json: bool,
    },
    /// Run a command under an identity in a fresh cgroup; exits with its status.
    #[command(after_help = "The cgroup is created under <cgroup2 mount>/agentd.run/, bound before the command starts,\nand removed (leftover processes killed) when it exits.\n\nEXAMPLES:\n  agentctl run --identity coder -- claude\n  agentctl run --identity ci -- make test")]
    Run {
        #[arg(long)]
        identity: String,
        /// Parent directory for the run's cgroup (default <cgroup2 mount>/agentd.run).
        #[arg(long)]
        cgroup_parent: Option<PathBuf>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Kernel decisions: recent ones, and with --follow new ones as they happen.
    #[command(after_help = "EXAMPLES:\n  agentctl events\n  agentctl events --follow --json | jq .")]
    Events {
        #[arg(long)]
        follow: bool,
        /// Only the last N kept events.
        #[arg(long, default_value_t = 0)]
        last: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Validate, compile and install a policy; nothing changes if it has any error.
    #[command(after_help = "EXAMPLES:\n  agentctl policy apply policies/coding-agent.yaml")]
    Apply {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List installed policies.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a policy, its text and its rule ids.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Check policy files offline (no daemon needed); exits 1 on any error.
    #[command(after_help = "EXAMPLES:\n  agentctl policy validate policies/*.yaml")]
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum IdentityCmd {
    /// Create an identity (with a new Ed25519 key pair) on a policy.
    #[command(after_help = "EXAMPLES:\n  agentctl identity create coder --policy coding-agent --owner alice")]
    Create {
        name: String,
        #[arg(long)]
        policy: String,
        /// Who the agent acts for (default: you).
        #[arg(long, default_value = "")]
        owner: String,
        #[arg(long)]
        json: bool,
    },
    /// List identities.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one identity.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON"));
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    t
}

/// Runs one command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32, CtlError> {
    match cli.command {
        Command::Policy(PolicyCmd::Validate { files }) => return Ok(validate(&files)),
        Command::Doctor { json } => return doctor(&cli.socket, json).await,
        Command::Run { identity, cgroup_parent, command } => {
            return run::run(&cli.socket, &identity, cgroup_parent, &command).await;
        }
        _ => {}
    }
    let mut c = client::connect(&cli.socket).await?;
    match cli.command {
        Command::Status { json } => {
            let s = c.status(pb::StatusRequest {}).await?.into_inner();
            if json {
                print_json(&s);
            } else {
                println!("agentd {}  up {}s  {}", s.version, s.uptime_seconds, if s.adopted { "(adopted pinned enforcement)" } else { "" });
                println!("state {}  pins {}", s.state_dir, s.pin_dir);
                println!("{} policies, {} identities, {} bindings", s.policies, s.identities, s.bindings);
                let k = s.counters.unwrap_or_default();
                println!(
                    "denied: exec {}  write {}  egress {}  raw-socket {}  (kills {}, unresolved paths {})",
                    k.deny_exec, k.deny_write, k.deny_egress, k.deny_socket, k.kills, k.unresolved
                );
                println!("events: {} delivered, {} dropped (ring buffer full)", k.events, k.events_dropped);
                print_mechanisms(&s.mechanisms);
            }
        }
        Command::Policy(PolicyCmd::Apply { file, json }) => {
            let yaml = std::fs::read_to_string(&file).map_err(|e| CtlError::Other(format!("cannot read {}: {e}", file.display())))?;
            let r = c.policy_apply(pb::PolicyApplyRequest { yaml, file_name: file.display().to_string() }).await?.into_inner();
            if json {
                print_json(&r);
            } else {
                let p = r.policy.unwrap_or_default();
                println!("applied policy {} version {} ({} rules, {}, sha256 {})", p.name, p.version, p.rules, p.mode, &p.hash[..12.min(p.hash.len())]);
                for w in r.warnings {
                    eprintln!("warning: {w}");
                }
            }
        }
        Command::Policy(PolicyCmd::List { json }) => {
            let r = c.policy_list(pb::PolicyListRequest {}).await?.into_inner();
            if json {
                print_json(&r);
            } else {
                let mut t = table(&["NAME", "VERSION", "MODE", "RULES", "APPLIED", "DESCRIPTION"]);
                for p in r.policies {
                    t.add_row(vec![p.name, p.version.to_string(), p.mode, p.rules.to_string(), p.applied_at, p.description]);
                }
                println!("{t}");
            }
        }
        Command::Policy(PolicyCmd::Show { name, json }) => {
            let r = c.policy_show(pb::PolicyShowRequest { name }).await?.into_inner();
            if json {
                print_json(&r);
            } else {
                let p = r.policy.clone().unwrap_or_default();
                println!("name:        {}\nversion:     {}\nmode:        {}\nsha256:      {}\napplied_at:  {}", p.name, p.version, p.mode, p.hash, p.applied_at);
                let mut t = table(&["ID", "KIND", "LINE", "RULE"]);
                for rule in r.rules {
                    t.add_row(vec![rule.id.to_string(), rule.kind, rule.line.to_string(), rule.text]);
                }
                println!("{t}\n---\n{}", r.yaml);
            }
        }
        Command::Identity(IdentityCmd::Create { name, policy, owner, json }) => {
            let r = c.identity_create(pb::IdentityCreateRequest { name, policy, owner }).await?.into_inner();
            let i = r.identity.clone().unwrap_or_default();
            if json {
                print_json(&r);
            } else {
                println!("created identity {} (id {}, policy {}, owner {}, key {})", i.name, i.id, i.policy, i.owner, i.fingerprint);
            }
        }
        Command::Identity(IdentityCmd::List { json }) => {
            let r = c.identity_list(pb::IdentityListRequest {}).await?.into_inner();
            if json {
                print_json(&r);
            } else {
                let mut t = table(&["NAME", "ID", "POLICY", "OWNER", "STATE", "KEY", "BOUND"]);
                for i in r.identities {
                    t.add_row(vec![i.name, i.id.to_string(), i.policy, i.owner, i.state, i.fingerprint, i.bound_cgroups.len().to_string()]);
                }
                println!("{t}");
            }
        }
        Command::Identity(IdentityCmd::Show { name, json }) => {
            let r = c.identity_show(pb::IdentityShowRequest { name }).await?.into_inner();
            if json {
                print_json(&r);
            } else {
                let i = r.identity.unwrap_or_default();
                println!(
                    "name:         {}\nid:           {}\npolicy:       {}\nowner:        {}\nstate:        {}\npublic_key:   {}\nfingerprint:  {}\ncreated_at:   {}\nbound:        {}",
                    i.name, i.id, i.policy, i.owner, i.state, i.public_key, i.fingerprint, i.created_at, i.bound_cgroups.join(", ")
                );
            }
        }
        Command::Bind { cgroup, identity, json } => {
            let path = crate::service::cgroups::resolve(&cgroup).map_err(|e| CtlError::Other(e.to_string()))?;
            let r = c.bind(pb::BindRequest { cgroup_path: path.display().to_string(), identity }).await?.into_inner();
            if json {
                print_json(&r);
            } else {
                let b = r.binding.unwrap_or_default();
                println!("bound {} (cgroup id {}) to {}", b.cgroup_path, b.cgroup_id, b.identity);
            }
        }
        Command::Unbind { cgroup, json } => {
            let path = crate::service::cgroups::resolve(&cgroup).map(|p| p.display().to_string()).unwrap_or(cgroup);
            let r = c.unbind(pb::UnbindRequest { cgroup_path: path }).await?.into_inner();
            if json {
                print_json(&r);
            } else {
                let b = r.binding.unwrap_or_default();
                println!("unbound {} (was {})", b.cgroup_path, b.identity);
            }
        }
        Command::Bindings { json } => {
            let r = c.bindings(pb::BindingsRequest {}).await?.into_inner();
            if json {
                print_json(&r);
            } else {
                let mut t = table(&["CGROUP", "ID", "IDENTITY", "BOUND AT", "PRESENT"]);
                for b in r.bindings {
                    t.add_row(vec![b.cgroup_path, b.cgroup_id.to_string(), b.identity, b.bound_at, b.present.to_string()]);
                }
                println!("{t}");
            }
        }
        Command::Events { follow, last, json } => {
            let mut stream = c.events(pb::EventsRequest { follow, last }).await?.into_inner();
            let mut rows = Vec::new();
            while let Some(e) = stream.next().await {
                let e = e?;
                if json && follow {
                    println!("{}", serde_json::to_string(&e).expect("JSON"));
                } else if follow {
                    println!("{}", event_line(&e));
                } else {
                    rows.push(e);
                }
            }
            if !follow {
                if json {
                    print_json(&rows);
                } else {
                    let mut t = table(&["TIME", "IDENTITY", "KIND", "VERDICT", "TARGET", "RULE", "PID", "COMM", "MECHANISM"]);
                    for e in rows {
                        let rule = if e.rule_id == 0 { e.reason.clone() } else { format!("#{} {}", e.rule_id, e.rule) };
                        t.add_row(vec![e.time, e.identity, format!("{} {}", e.kind, e.op), e.verdict, e.target, rule, e.pid.to_string(), e.comm, e.mechanism]);
                    }
                    println!("{t}");
                }
            }
        }
        Command::Policy(PolicyCmd::Validate { .. }) | Command::Doctor { .. } | Command::Run { .. } => unreachable!("handled above"),
    }
    Ok(0)
}

/// One line per event, for `events --follow`.
pub fn event_line(e: &pb::Event) -> String {
    let rule = if e.rule_id == 0 { e.reason.clone() } else { format!("rule #{} {}", e.rule_id, e.rule) };
    format!("{} {} {} {} {} ({}, pid {} {}, {})", e.time, e.identity, e.verdict, e.kind, e.target, rule, e.pid, e.comm, e.mechanism)
}

fn print_mechanisms(m: &[pb::KindMechanism]) {
    for k in m {
        println!("{:<11} {} ({})", k.kind, if k.active.is_empty() { "NOT ENFORCED" } else { &k.active }, k.effect);
        for u in &k.unavailable {
            println!("{:<11}   not used: {} — {}", "", u.mechanism, u.reason);
        }
    }
}

fn validate(files: &[PathBuf]) -> i32 {
    let mut code = 0;
    for f in files {
        let name = f.display().to_string();
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{name}: cannot read: {e}");
                code = 1;
                continue;
            }
        };
        match v1::parse(&name, &text).and_then(|p| v1::compile(&p)) {
            Ok(c) => {
                println!("{name}: ok ({} rules)", c.rules.len());
                for w in c.warnings {
                    eprintln!("warning: {w}");
                }
            }
            Err(e) => {
                eprintln!("{e}");
                code = 1;
            }
        }
    }
    code
}

async fn doctor(socket: &std::path::Path, json: bool) -> Result<i32, CtlError> {
    match client::connect(socket).await {
        Ok(mut c) => {
            let d = c.doctor(pb::DoctorRequest {}).await?.into_inner();
            if json {
                print_json(&d);
            } else {
                println!("kernel {}", d.kernel_release);
                print_mechanisms(&d.mechanisms);
                for ch in &d.checks {
                    println!("{} {}{}", if ch.ok { "✓" } else { "✗" }, ch.name, if ch.detail.is_empty() { String::new() } else { format!(": {}", ch.detail) });
                }
            }
            Ok(0)
        }
        Err(e) => {
            // The daemon is down: say so, and show what can be checked from here.
            eprintln!("agentctl: {e}");
            let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
            println!("kernel {release}");
            let mount = crate::service::cgroups::cgroup2_mount();
            println!("{} cgroup2 mount: {}", if mount.is_ok() { "✓" } else { "✗" }, mount.map(|m| m.display().to_string()).unwrap_or_else(|e| e.to_string()));
            println!("{} kernel BTF: /sys/kernel/btf/vmlinux", if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() { "✓" } else { "✗" });
            match std::fs::read_to_string("/sys/kernel/security/lsm") {
                Ok(l) => println!("{} bpf in the active LSM list: {}", if l.split(',').any(|m| m.trim() == "bpf") { "✓" } else { "✗" }, l.trim()),
                Err(_) => println!("? active LSM list unreadable (securityfs not mounted)"),
            }
            println!("(start agentd for the mechanism report: it proves what runs by loading programs)");
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("agentctl").chain(args.iter().copied())).expect("parses")
    }

    #[test]
    fn run_keeps_the_commands_own_flags() {
        let cli = parse(&["run", "--identity", "coder", "--", "claude", "--dangerously-skip", "-p", "x"]);
        match cli.command {
            Command::Run { identity, command, .. } => {
                assert_eq!(identity, "coder");
                assert_eq!(command, ["claude", "--dangerously-skip", "-p", "x"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_needs_a_command_and_an_identity() {
        assert!(Cli::try_parse_from(["agentctl", "run", "--identity", "x"]).is_err());
        assert!(Cli::try_parse_from(["agentctl", "run", "--", "ls"]).is_err());
    }

    #[test]
    fn listing_commands_take_json() {
        for args in [
            &["status", "--json"][..],
            &["doctor", "--json"],
            &["bindings", "--json"],
            &["events", "--follow", "--json"],
            &["policy", "list", "--json"],
            &["policy", "show", "p", "--json"],
            &["identity", "list", "--json"],
            &["identity", "show", "i", "--json"],
            &["bind", "a.service", "i", "--json"],
            &["unbind", "a.service", "--json"],
        ] {
            parse(args);
        }
    }

    #[test]
    fn socket_comes_from_flag() {
        let cli = parse(&["--socket", "/tmp/x.sock", "status"]);
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
    }

    #[test]
    fn event_line_names_rule_or_reason() {
        let mut e = pb::Event { identity: "coder".into(), verdict: "deny".into(), kind: "egress".into(), target: "1.2.3.4:443".into(), reason: "default".into(), ..Default::default() };
        assert!(event_line(&e).contains("coder deny egress 1.2.3.4:443 (default"));
        e.rule_id = 3;
        e.rule = "{cidr: 1.0.0.0/8, action: deny}".into();
        assert!(event_line(&e).contains("rule #3 {cidr: 1.0.0.0/8, action: deny}"));
    }

    #[test]
    fn json_field_names_are_the_protos() {
        let v = serde_json::to_value(pb::Binding { cgroup_path: "/x".into(), cgroup_id: 7, identity: "i".into(), bound_at: "t".into(), present: true }).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["bound_at", "cgroup_id", "cgroup_path", "identity", "present"]);
    }
}
