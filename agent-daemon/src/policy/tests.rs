//! What a policy author sees: errors at the right line and column, decisions by the
//! format's precedence rules, and what the compiler hands the kernel.

use std::{net::IpAddr, path::Path};

use agent_common::action;

use super::{
    compile::compile_with,
    eval::evaluate_with,
    path::{FakeLinks, NoFiles},
    *,
};

/// Five lines: a spec body given to `pol` starts on line 6.
const HEAD: &str = "apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata:\n  name: t\nspec:\n";

fn pol(spec: &str) -> Result<Policy, PolicyErrors> {
    parse("t.yaml", &format!("{HEAD}{spec}"))
}

fn ok(spec: &str) -> Policy {
    pol(spec).unwrap_or_else(|e| panic!("{e}"))
}

fn exec(p: &Policy, path: &str) -> (ActionKind, u32) {
    let d = evaluate_with(p, &Action::Exec { path: path.into() }, &NoFiles);
    (d.action, d.rule_id)
}

fn write(p: &Policy, path: &str) -> (ActionKind, u32) {
    let d = evaluate_with(p, &Action::Write { path: path.into() }, &NoFiles);
    (d.action, d.rule_id)
}

fn unix(p: &Policy, path: &str) -> (ActionKind, u32) {
    let d = evaluate_with(p, &Action::ConnectUnix { path: path.into() }, &NoFiles);
    (d.action, d.rule_id)
}

fn connect(p: &Policy, addr: &str, port: u16, protocol: Protocol) -> (ActionKind, u32) {
    let d = evaluate_with(p, &Action::Connect { addr: addr.parse().unwrap(), port, protocol }, &NoFiles);
    (d.action, d.rule_id)
}

use ActionKind::{Allow, Ask, Audit, Deny};
use Protocol::{Tcp, Udp};

// ----- the format's example ------------------------------------------------------

const SPEC_EXAMPLE: &str = r#"apiVersion: agentd.io/v1
kind: AgentPolicy
metadata:
  name: coder                      # referenced by `agentctl identity create NAME --policy coder`
  description: coding agent in ~/work
spec:
  mode: enforce                    # enforce | monitor (monitor: allow, but report "would deny/ask")
  exec:
    default: deny                  # allow | deny | ask | audit   (audit = allow + receipt)
    rules:
      - {path: /usr/bin/git, action: allow}
      - {path: "/usr/lib/git-core/**", action: allow}
      - {path: /usr/bin/curl, action: ask}
  write:
    default: deny
    rules:
      - {path: "/home/alice/work/**", action: allow}
      - {path: "/home/alice/work/.git/hooks/**", action: deny}
  egress:
    default: deny
    rules:
      - {cidr: 127.0.0.0/8, ports: [8080, "9000-9100"], action: allow}
      - {cidr: "::1/128", action: allow}
      - {host: api.github.com, ports: [443], action: allow}     # by DNS name
      - {host: "*.githubusercontent.com", ports: [443], action: ask}
    unix:                          # connects to local (AF_UNIX) sockets by path
      default: allow               # allow | deny | audit
      rules:
        - {path: /run/docker.sock, action: deny}
  system:                          # what could change what enforcement sees; each defaults to deny
    namespaces: deny               # allow: create namespaces and mount inside ones it created
                                   # (sandboxes such as bubblewrap); paths stay judged honestly
    ptrace: deny                   # allow: trace processes of the same identity only
  approvals:
    timeout: 60s                   # hold deadline
    on_timeout: deny
    max_pending: 8
  receipts:
    allows: false                  # also sign allowed actions (denials, holds, approvals always)
"#;

#[test]
fn the_format_example_parses_with_every_field() {
    let p = parse("coder.yaml", SPEC_EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.name(), "coder");
    assert_eq!(p.description(), "coding agent in ~/work");
    assert_eq!(p.mode(), Mode::Enforce);
    assert_eq!(
        p.approvals,
        Approvals { timeout: std::time::Duration::from_secs(60), on_timeout: Deny, max_pending: 8 }
    );
    assert!(!p.receipts.allows);
    assert_eq!(p.text(), SPEC_EXAMPLE);
    assert_eq!(p.hash().len(), 64);
    // Ids: exec, then write, then egress, then egress.unix, from 1; then the
    // built-in unix rules.
    let infos = p.rule_infos();
    assert_eq!(infos.iter().filter(|r| !r.builtin).count(), 10);
    assert_eq!(infos.len(), 10 + p.unix.builtins.len());
    for (i, r) in infos.iter().enumerate() {
        assert_eq!(r.id, i as u32 + 1);
    }
    assert_eq!((infos[9].kind, infos[9].line, infos[9].builtin), ("unix", 29, false));
    assert_eq!(infos[9].text, "{path: /run/docker.sock, action: deny}");
    assert_eq!((infos[10].kind, infos[10].line, infos[10].index, infos[10].builtin), ("unix", 0, 1, true));
    assert!(
        infos[10].text.starts_with("{path: /run/agentd/agentd.sock, action: deny}  # built-in: "),
        "{}",
        infos[10].text
    );
    assert_eq!(p.rule_line(10), Some(29));
    assert_eq!(p.rule_line(11), None);
    assert_eq!((p.unix.default, p.system), (Allow, System::default()));
    assert_eq!(
        (infos[0].kind, infos[0].line, infos[0].text.as_str()),
        ("exec", 11, "{path: /usr/bin/git, action: allow}")
    );
    assert_eq!((infos[3].kind, infos[3].index, infos[3].line), ("write", 0, 17));
    assert_eq!(infos[4].text, "{path: \"/home/alice/work/.git/hooks/**\", action: deny}");
    assert_eq!((infos[5].kind, infos[5].line), ("egress", 22));
    assert_eq!(infos[5].text, "{cidr: 127.0.0.0/8, ports: [8080, \"9000-9100\"], action: allow}");
    assert_eq!(p.rule(8).map(|r| r.0), Some(RuleKind::Egress));

    assert_eq!(exec(&p, "/usr/bin/git"), (Allow, 1));
    assert_eq!(exec(&p, "/usr/lib/git-core/git-remote-https"), (Allow, 2));
    assert_eq!(exec(&p, "/usr/bin/curl"), (Ask, 3));
    assert_eq!(exec(&p, "/usr/bin/wget"), (Deny, 0));
    assert_eq!(write(&p, "/home/alice/work/src/main.rs"), (Allow, 4));
    assert_eq!(write(&p, "/home/alice/work/.git/hooks/pre-commit"), (Deny, 5));
    assert_eq!(connect(&p, "127.0.0.1", 9050, Tcp), (Allow, 6));
    assert_eq!(connect(&p, "127.0.0.1", 22, Tcp), (Deny, 0));
    assert_eq!(connect(&p, "::1", 22, Udp), (Allow, 7));
}

#[test]
fn block_style_rules_and_defaults_for_absent_sections() {
    let p = ok("  exec:\n    rules:\n      - path: /usr/bin/git\n        action: allow\n");
    assert_eq!(p.exec.default, Deny);
    assert_eq!(p.write, PathSection { default: Deny, rules: vec![] });
    assert_eq!(p.egress.default, Deny);
    assert_eq!(p.approvals, Approvals::default());
    assert_eq!(p.exec.rules[0].text, "{path: /usr/bin/git, action: allow}");
    assert_eq!(p.exec.rules[0].at, Location::new(8, 9));
    assert_eq!(p.mode(), Mode::Enforce);
    assert_eq!(ok("  mode: monitor\n").mode(), Mode::Monitor);
}

// ----- precedence ------------------------------------------------------------------

#[test]
fn exact_path_beats_any_pattern() {
    let p = ok("  exec:\n    default: allow\n    rules:\n      - {path: \"/usr/bin/**\", action: deny}\n      - {path: /usr/bin/git, action: allow}\n      - {path: \"/usr/bin/gi*\", action: deny}\n");
    assert_eq!(exec(&p, "/usr/bin/git"), (Allow, 2));
    assert_eq!(exec(&p, "/usr/bin/gitk"), (Deny, 3));
    assert_eq!(exec(&p, "/usr/bin/curl"), (Deny, 1));
    assert_eq!(exec(&p, "/usr/sbin/x"), (Allow, 0));
}

#[test]
fn longer_literal_prefix_wins() {
    let p = ok("  write:\n    rules:\n      - {path: \"/home/alice/work/.git/hooks/**\", action: deny}\n      - {path: \"/home/alice/work/**\", action: allow}\n      - {path: \"/home/**\", action: ask}\n");
    assert_eq!(write(&p, "/home/alice/work/a/b.rs"), (Allow, 2));
    assert_eq!(write(&p, "/home/alice/work/.git/hooks/pre-push"), (Deny, 1));
    assert_eq!(write(&p, "/home/alice/work/.git/config"), (Allow, 2));
    assert_eq!(write(&p, "/home/alice/.bashrc"), (Ask, 3));
    // A longer prefix as a string is not a longer prefix as a path.
    assert_eq!(write(&p, "/home/alice/workshop/x"), (Ask, 3));
    // DIR/** is what is inside DIR, not DIR itself.
    assert_eq!(write(&p, "/home/alice/work"), (Ask, 3));
}

#[test]
fn single_star_beats_double_star_at_equal_prefix() {
    let p = ok("  write:\n    default: ask\n    rules:\n      - {path: \"/data/**\", action: deny}\n      - {path: \"/data/*\", action: allow}\n");
    assert_eq!(write(&p, "/data/x"), (Allow, 2));
    assert_eq!(write(&p, "/data/x/y"), (Deny, 1));
    // Within one name, more literal text before the `*` is more specific.
    let p = ok("  exec:\n    rules:\n      - {path: \"/usr/bin/*\", action: deny}\n      - {path: \"/usr/bin/py*\", action: allow}\n");
    assert_eq!(exec(&p, "/usr/bin/python3"), (Allow, 2));
    assert_eq!(exec(&p, "/usr/bin/perl"), (Deny, 1));
}

#[test]
fn equal_specificity_deny_beats_ask_beats_audit_beats_allow() {
    // Four patterns of the same specificity (`*` first, literal prefix "/d/") that all match /d/ax.
    let rules = [("/d/*", "allow"), ("/d/*x", "audit"), ("/d/*x*", "ask"), ("/d/*ax", "deny")];
    let build = |skip: &[usize]| {
        let mut s = String::from("  exec:\n    rules:\n");
        for (i, (p, a)) in rules.iter().enumerate() {
            if !skip.contains(&i) {
                s.push_str(&format!("      - {{path: \"{p}\", action: {a}}}\n"));
            }
        }
        ok(&s)
    };
    assert_eq!(exec(&build(&[]), "/d/ax").0, Deny);
    assert_eq!(exec(&build(&[3]), "/d/ax").0, Ask);
    assert_eq!(exec(&build(&[2, 3]), "/d/ax").0, Audit);
    assert_eq!(exec(&build(&[1, 2, 3]), "/d/ax").0, Allow);
    // Same specificity and action: the first rule in the file reports.
    let p =
        ok("  exec:\n    rules:\n      - {path: \"/d/*\", action: deny}\n      - {path: \"/d/*x\", action: deny}\n");
    assert_eq!(exec(&p, "/d/ax"), (Deny, 1));
}

#[test]
fn longest_cidr_prefix_wins() {
    let p = ok("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, action: allow}\n      - {cidr: 10.1.0.0/16, action: deny}\n      - {cidr: 10.1.2.0/24, action: audit}\n      - {cidr: 0.0.0.0/0, ports: [443], action: ask}\n");
    assert_eq!(connect(&p, "10.9.9.9", 443, Tcp), (Allow, 1));
    assert_eq!(connect(&p, "10.1.9.9", 443, Tcp), (Deny, 2));
    assert_eq!(connect(&p, "10.1.2.9", 443, Tcp), (Audit, 3));
    assert_eq!(connect(&p, "11.0.0.1", 443, Tcp), (Ask, 4));
    assert_eq!(connect(&p, "11.0.0.1", 80, Tcp), (Deny, 0));
}

#[test]
fn ports_beat_no_ports_and_protocol_beats_none() {
    let p = ok("  egress:\n    default: audit\n    rules:\n      - {cidr: 10.0.0.0/8, action: deny}\n      - {cidr: 10.0.0.0/8, ports: [443], action: allow}\n      - {cidr: 10.0.0.0/8, ports: [53], protocol: udp, action: allow}\n      - {cidr: 10.0.0.0/8, ports: [53], action: ask}\n");
    assert_eq!(connect(&p, "10.0.0.1", 443, Tcp), (Allow, 2));
    assert_eq!(connect(&p, "10.0.0.1", 80, Tcp), (Deny, 1));
    assert_eq!(connect(&p, "10.0.0.1", 53, Udp), (Allow, 3));
    assert_eq!(connect(&p, "10.0.0.1", 53, Tcp), (Ask, 4));
    // The width of a port range does not matter: at equal class, the stronger action.
    let p = ok("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, ports: [\"1-1000\"], protocol: tcp, action: allow}\n      - {cidr: 10.0.0.0/8, ports: [443, \"2000-2001\"], protocol: tcp, action: deny}\n");
    assert_eq!(connect(&p, "10.0.0.1", 443, Tcp), (Deny, 2));
    assert_eq!(connect(&p, "10.0.0.1", 80, Tcp), (Allow, 1));
    assert_eq!(connect(&p, "10.0.0.1", 80, Udp), (Deny, 0));
}

#[test]
fn ipv4_ipv6_and_mapped_addresses() {
    let p = ok("  egress:\n    rules:\n      - {cidr: 192.168.0.0/16, action: allow}\n      - {cidr: \"fd00::/8\", ports: [\"1-1024\"], action: audit}\n      - {cidr: \"::1\", action: allow}\n      - {cidr: 127.0.0.1, ports: [8080], action: allow}\n");
    assert_eq!(connect(&p, "192.168.7.7", 1, Tcp), (Allow, 1));
    assert_eq!(connect(&p, "::ffff:192.168.7.7", 1, Tcp), (Allow, 1), "v4 rules cover v4-mapped v6");
    assert_eq!(connect(&p, "192.169.0.1", 1, Tcp), (Deny, 0));
    assert_eq!(connect(&p, "fd12:3456::1", 1024, Udp), (Audit, 2));
    assert_eq!(connect(&p, "fd12:3456::1", 1025, Udp), (Deny, 0));
    assert_eq!(connect(&p, "fe80::1", 80, Tcp), (Deny, 0));
    assert_eq!(connect(&p, "::1", 5, Tcp), (Allow, 3));
    assert_eq!(connect(&p, "127.0.0.1", 8080, Tcp), (Allow, 4));
    assert_eq!(connect(&p, "127.0.0.2", 8080, Tcp), (Deny, 0));
}

#[test]
fn icmp_is_allowed_only_by_a_rule_that_names_it() {
    let icmp = |p: &Policy, addr: &str| connect(p, addr, 0, Protocol::Icmp);
    let p = ok("  egress:\n    default: allow\n    rules:\n      - {cidr: 10.0.0.0/8, action: allow}\n      - {cidr: 10.0.0.0/8, protocol: icmp, action: allow}\n      - {cidr: 10.1.0.0/16, protocol: icmp, action: deny}\n      - {cidr: 10.1.2.0/24, ports: [443], action: audit}\n      - {cidr: \"2001:db8::/32\", protocol: icmp, action: audit}\n");
    assert_eq!(icmp(&p, "10.9.9.9"), (Allow, 2));
    assert_eq!(icmp(&p, "10.1.9.9"), (Deny, 3));
    // A longer network without an ICMP rule does not hide the covering ICMP rule.
    assert_eq!(icmp(&p, "10.1.2.3"), (Deny, 3));
    // Neither the allowing default nor a rule without a protocol lets ICMP out.
    assert_eq!(icmp(&p, "192.0.2.1"), (Deny, 0));
    assert_eq!(icmp(&p, "2001:db8::1"), (Audit, 5));
    // ...and an ICMP rule lets nothing else out.
    assert_eq!(connect(&p, "10.9.9.9", 80, Tcp), (Allow, 1));
    assert_eq!(connect(&p, "10.1.9.9", 80, Udp), (Allow, 1));
    let p = ok("  egress:\n    default: deny\n    rules:\n      - {cidr: 10.0.0.0/8, protocol: icmp, action: allow}\n");
    assert_eq!(connect(&p, "10.0.0.1", 80, Tcp), (Deny, 0));
    assert_eq!(connect(&p, "10.0.0.1", 53, Udp), (Deny, 0));
    let d = evaluate_with(
        &p,
        &Action::Connect { addr: "192.0.2.1".parse().unwrap(), port: 0, protocol: Protocol::Icmp },
        &NoFiles,
    );
    assert_eq!(d.reason, "connect icmp 192.0.2.1: no icmp rule matches; ICMP is denied unless a rule with `protocol: icmp` allows it (the egress default does not apply to it)");
}

#[test]
fn icmp_rules_conflict_only_with_icmp_rules() {
    // A protocol-less rule (TCP and UDP) never shadows an ICMP rule, nor the other way.
    assert!(errors(&spec("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, action: deny}\n      - {cidr: 10.0.0.0/8, protocol: icmp, action: allow}\n")).is_empty());
    expect(
        &spec("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, protocol: icmp, action: allow}\n      - {cidr: 10.0.0.0/8, protocol: icmp, action: deny}\n"),
        &[(9, 9, Conflict, "egress rule duplicates the rule at line 8 (same cidr, ports and protocol); hint: only the stronger one (deny) could ever apply")],
    );
}

#[test]
fn icmp_rules_compile_first_in_each_entry_and_set_the_icmp_flag() {
    use agent_common::identity_flags::ICMP;
    let p = ok("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, protocol: icmp, action: allow}\n      - {cidr: 10.1.0.0/16, action: deny}\n      - {cidr: 10.1.0.0/16, ports: [22], protocol: tcp, action: allow}\n");
    let c = compile_with(&p, &NoFiles).unwrap();
    assert_eq!(c.system_flags, ICMP);
    let e16 = c.egress.iter().find(|e| e.prefix_len == 112).unwrap();
    let rules: Vec<(u16, u16, u8, u8, u32)> = e16.value.rules[..e16.value.count as usize]
        .iter()
        .map(|r| (r.port_lo, r.port_hi, r.protocol, r.action, r.rule_id))
        .collect();
    // One code for ICMP and ICMPv6, every "port" (the kernel looks ICMP up with
    // port 0), and ahead of the every-port rule without a protocol, which would
    // otherwise end the list.
    assert_eq!(
        rules,
        vec![(0, 65535, 1, action::ALLOW, 1), (22, 22, 6, action::ALLOW, 3), (0, 65535, 0, action::DENY, 2)]
    );
    let k = |addr: &str, port, proto| c.egress_lookup(addr.parse().unwrap(), port, proto);
    assert_eq!(k("10.1.0.1", 0, 1), (action::ALLOW, 1));
    assert_eq!(k("10.1.0.1", 0, 6), (action::DENY, 2));
    assert_eq!(k("192.0.2.1", 0, 1), (action::DENY, 0));
    // Only a rule that can let ICMP through sets the flag.
    for (rules, flag) in [
        ("{cidr: 10.0.0.0/8, protocol: icmp, action: deny}", 0),
        ("{cidr: 10.0.0.0/8, protocol: icmp, action: audit}", ICMP),
        ("{cidr: 10.0.0.0/8, protocol: icmp, action: ask}", ICMP),
        ("{cidr: 10.0.0.0/8, action: allow}", 0),
    ] {
        let p = ok(&format!("  egress:\n    default: allow\n    rules:\n      - {rules}\n"));
        assert_eq!(compile_with(&p, &NoFiles).unwrap().system_flags, flag, "{rules}");
    }
    let p = ok("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, protocol: icmp, action: ask}\n");
    let w = compile_with(&p, &NoFiles).unwrap().warnings;
    assert!(
        w.iter().any(|w| w.starts_with(
            "t.yaml:8:9: icmp rule {cidr: 10.0.0.0/8, protocol: icmp, action: ask} asks, but nothing can hold a ping"
        )),
        "{w:?}"
    );
}

#[test]
fn port_range_edges() {
    let p = ok("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, ports: [\"8000-8100\", 1, 65535], action: allow}\n");
    for (port, want) in
        [(7999, Deny), (8000, Allow), (8100, Allow), (8101, Deny), (1, Allow), (2, Deny), (65535, Allow), (0, Deny)]
    {
        assert_eq!(connect(&p, "10.0.0.1", port, Tcp).0, want, "port {port}");
    }
    assert_eq!(
        p.egress.rules[0].ports,
        vec![PortRange { lo: 1, hi: 1 }, PortRange { lo: 8000, hi: 8100 }, PortRange { lo: 65535, hi: 65535 }]
    );
}

#[test]
fn host_rules_do_not_match_addresses() {
    let p = ok("  egress:\n    rules:\n      - {host: api.github.com, ports: [443], action: allow}\n");
    let d = evaluate_with(
        &p,
        &Action::Connect { addr: "140.82.112.3".parse().unwrap(), port: 443, protocol: Tcp },
        &NoFiles,
    );
    assert_eq!((d.action, d.rule_id), (Deny, 0));
    assert!(d.reason.contains("host rule"), "{}", d.reason);
}

// ----- normalisation ---------------------------------------------------------------

#[test]
fn paths_are_normalised_before_matching() {
    let p = ok("  write:\n    rules:\n      - {path: \"/home/alice/work/**\", action: allow}\n      - {path: /etc/hosts, action: audit}\n");
    assert_eq!(write(&p, "/home/alice/work/./src//main.rs"), (Allow, 1));
    assert_eq!(write(&p, "//home/alice/work/x/"), (Allow, 1));
    assert_eq!(write(&p, "/home/alice/work/../.ssh/authorized_keys"), (Deny, 0));
    assert_eq!(write(&p, "/home/alice/work/src/../../.bashrc"), (Deny, 0));
    assert_eq!(write(&p, "/tmp/../home/alice/work/x"), (Allow, 1));
    assert_eq!(write(&p, "/../../../etc/hosts"), (Audit, 2));
    assert_eq!(write(&p, "/etc/./hosts"), (Audit, 2));
}

#[test]
fn relative_paths_never_match() {
    let p = ok("  exec:\n    default: ask\n    rules:\n      - {path: \"/**\", action: allow}\n");
    for rel in ["usr/bin/git", "./git", "../bin/git", ""] {
        let d = evaluate_with(&p, &Action::Exec { path: rel.into() }, &NoFiles);
        assert_eq!((d.action, d.rule_id), (Ask, 0), "{rel:?}");
        assert!(d.reason.contains("relative"), "{}", d.reason);
    }
    assert_eq!(exec(&p, "/"), (Allow, 1));
}

#[test]
fn both_spellings_of_a_symlinked_path_get_one_decision() {
    // /bin -> /usr/bin (merged /usr) and /usr/bin/sh -> dash.
    let fs = FakeLinks(vec![("/bin", "/usr/bin"), ("/usr/bin/sh", "/usr/bin/dash")]);
    let p = ok("  exec:\n    rules:\n      - {path: /bin/sh, action: deny}\n      - {path: \"/bin/**\", action: allow}\n      - {path: \"/usr/bin/py*\", action: ask}\n");
    let ex = |path: &str| {
        let d = evaluate_with(&p, &Action::Exec { path: path.into() }, &fs);
        (d.action, d.rule_id)
    };
    assert_eq!(ex("/bin/sh"), (Deny, 1));
    assert_eq!(ex("/usr/bin/sh"), (Deny, 1));
    assert_eq!(ex("/usr/bin/dash"), (Deny, 1));
    assert_eq!(ex("/bin/ls"), (Allow, 2));
    assert_eq!(ex("/usr/bin/ls"), (Allow, 2));
    // The rule reads /usr/bin/** on this machine: its literal prefix is that long,
    // and /usr/bin/py* (longer) still beats it, for either spelling.
    assert_eq!(ex("/bin/python3"), (Ask, 3));
    let d = evaluate_with(&p, &Action::Exec { path: "/bin/ls".into() }, &fs);
    assert!(d.reason.contains("real path /usr/bin/ls") && d.reason.contains("read as /usr/bin/**"), "{}", d.reason);

    // The kernel gets the same real paths.
    let p =
        ok("  exec:\n    rules:\n      - {path: /bin/sh, action: deny}\n      - {path: \"/bin/**\", action: allow}\n");
    let c = compile_with(&p, &fs).unwrap();
    let keys: Vec<&[u8]> = c.exec.iter().map(|e| e.key.as_slice()).collect();
    assert_eq!(keys, vec![&b"/usr/bin/"[..], b"/usr/bin/dash\0"]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

// ----- egress.unix -------------------------------------------------------------------

/// The id of the built-in rule protecting `path` (by its text).
fn builtin_id(p: &Policy, path: &str) -> u32 {
    p.unix.builtins.iter().find(|r| r.text.starts_with(&format!("{{path: {path}, "))).map(|r| r.id).unwrap()
}

#[test]
fn unix_rules_match_paths_like_write_rules() {
    let p = ok("  egress:\n    unix:\n      default: deny\n      rules:\n        - {path: /srv/app/app.sock, action: allow}\n        - {path: \"/srv/app/**\", action: audit}\n        - {path: \"/srv/*/debug.sock\", action: deny}\n        - {path: \"/srv/**\", action: allow}\n        - {path: \"@app-control\", action: allow}\n");
    // Ids follow exec, write and egress rules (none here): 1..5, then the built-in ones.
    assert_eq!(unix(&p, "/srv/app/app.sock"), (Allow, 1));
    assert_eq!(unix(&p, "/srv/app/other.sock"), (Audit, 2));
    // Longer literal prefix wins: /srv/app/ over /srv/*.
    assert_eq!(unix(&p, "/srv/app/debug.sock"), (Audit, 2));
    assert_eq!(unix(&p, "/srv/web/debug.sock"), (Deny, 3));
    assert_eq!(unix(&p, "/srv/web/x.sock"), (Allow, 4));
    assert_eq!(unix(&p, "/srv/app/../web/x.sock"), (Allow, 4));
    assert_eq!(unix(&p, "/tmp/x.sock"), (Deny, 0));
    assert_eq!(unix(&p, "relative.sock"), (Deny, 0));
    // Abstract sockets: by exact name only, never by a path pattern.
    assert_eq!(unix(&p, "@app-control"), (Allow, 5));
    assert_eq!(unix(&p, "@app-control2"), (Deny, 0));
    assert_eq!(unix(&p, "@srv/app/app.sock"), (Deny, 0));
    let c = compile_with(&p, &NoFiles).unwrap();
    assert_eq!(c.unix_default, action::DENY);
    let mut keys: Vec<(&[u8], u32)> = c.unix.iter().map(|e| (e.key.as_slice(), e.value.rule_id)).collect();
    keys.retain(|(_, id)| *id <= 5);
    assert_eq!(keys, vec![(&b"/srv/"[..], 4), (b"/srv/app/", 2), (b"/srv/app/app.sock\0", 1), (b"@app-control\0", 5)]);
    assert_ne!(c.unix_glob, 0);
    let k = |path: &str| c.path_lookup(RuleKind::Unix, path.as_bytes());
    assert_eq!(k("/srv/web/debug.sock"), Some((action::DENY, 3)));
    assert_eq!(k("@app-control"), Some((action::ALLOW, 5)));
    assert_eq!(k("@app-control2"), Some((action::DENY, 0)));
}

#[test]
fn built_in_rules_protect_sockets_that_start_work_elsewhere() {
    let p = ok("  egress:\n    unix:\n      default: allow\n      rules:\n        - {path: \"/run/**\", action: allow}\n        - {path: \"/run/user/**\", action: audit}\n");
    for path in [
        "/run/agentd/agentd.sock",
        "/run/docker.sock",
        "/run/containerd/containerd.sock",
        "/run/podman/podman.sock",
        "/run/crio/crio.sock",
        "/run/systemd/private",
        "/run/dbus/system_bus_socket",
    ] {
        assert_eq!(unix(&p, path), (Deny, builtin_id(&p, path)), "{path}");
    }
    // Per-user sockets, for every user; not whatever else is in their directory.
    for (path, pattern) in [
        ("/run/user/1000/bus", "/run/user/*/bus"),
        ("/run/user/0/systemd/private", "/run/user/*/systemd/private"),
        ("/run/user/1000/podman/podman.sock", "/run/user/*/podman/podman.sock"),
        ("/run/user/1001/docker.sock", "/run/user/*/docker.sock"),
    ] {
        assert_eq!(unix(&p, path), (Deny, builtin_id(&p, pattern)), "{path}");
    }
    assert_eq!(unix(&p, "/run/user/1000/pipewire-0"), (Audit, 2));
    assert_eq!(unix(&p, "/run/app.sock"), (Allow, 1));
    // The ids come after every rule of the file, agentd's socket first.
    assert_eq!(p.unix.builtins[0].id, 3);
    assert_eq!(builtin_id(&p, "/run/agentd/agentd.sock"), 3);
    let d = evaluate_with(&p, &Action::ConnectUnix { path: "/run/docker.sock".into() }, &NoFiles);
    assert!(d.reason.contains("by built-in rule") && d.reason.contains("Docker"), "{}", d.reason);
    assert!(d.rule_text.unwrap().contains("# built-in: "));
}

#[test]
fn an_exact_rule_replaces_a_built_in_one_and_a_pattern_does_not() {
    let p = ok("  egress:\n    unix:\n      default: deny\n      rules:\n        - {path: /run/docker.sock, action: allow}\n        - {path: /run/user/1000/bus, action: audit}\n        - {path: \"/run/user/1000/**\", action: allow}\n        - {path: /run/agentd/agentd.sock, action: deny}\n");
    assert_eq!(unix(&p, "/run/docker.sock"), (Allow, 1));
    assert_eq!(unix(&p, "/run/user/1000/bus"), (Audit, 2));
    assert_eq!(unix(&p, "/run/user/1001/bus"), (Deny, builtin_id(&p, "/run/user/*/bus")));
    assert_eq!(unix(&p, "/run/user/1000/docker.sock"), (Deny, builtin_id(&p, "/run/user/*/docker.sock")));
    assert_eq!(unix(&p, "/run/user/1000/other"), (Allow, 3));
    // Written by the file, with the file's id.
    assert_eq!(unix(&p, "/run/agentd/agentd.sock"), (Deny, 4));
    let c = compile_with(&p, &NoFiles).unwrap();
    // The file's rule has the key; the built-in one is not written.
    let at = |key: &[u8]| c.unix.iter().filter(|e| e.key == key).map(|e| e.value.rule_id).collect::<Vec<_>>();
    assert_eq!(at(b"/run/docker.sock\0"), [1]);
    assert_eq!(at(b"/run/agentd/agentd.sock\0"), [4]);
    assert_eq!(at(b"/run/podman/podman.sock\0"), [builtin_id(&p, "/run/podman/podman.sock")]);
    let k = |path: &str| c.path_lookup(RuleKind::Unix, path.as_bytes());
    assert_eq!(k("/run/user/1000/bus"), Some((action::AUDIT, 2)));
    assert_eq!(k("/run/user/1001/bus"), Some((action::DENY, builtin_id(&p, "/run/user/*/bus"))));
    assert_eq!(k("/run/user/1000/other"), Some((action::ALLOW, 3)));
}

#[test]
fn protected_paths_are_compiled_to_real_paths() {
    // /var/run is /run on most machines: a rule through it names the same socket.
    let fs = FakeLinks(vec![("/var/run", "/run")]);
    let p = ok("  egress:\n    unix:\n      rules:\n        - {path: /var/run/docker.sock, action: audit}\n");
    let c = compile_with(&p, &fs).unwrap();
    assert!(c.unix.iter().any(|e| e.key == b"/run/docker.sock\0" && e.value.rule_id == 1));
    let d = evaluate_with(&p, &Action::ConnectUnix { path: "/var/run/docker.sock".into() }, &fs);
    assert_eq!((d.action, d.rule_id), (Audit, 1));
    let d = evaluate_with(&p, &Action::ConnectUnix { path: "/var/run/podman/podman.sock".into() }, &fs);
    assert_eq!((d.action, d.rule_id), (Deny, builtin_id(&p, "/run/podman/podman.sock")));
    assert!(d.reason.contains("(real path /run/podman/podman.sock)"), "{}", d.reason);
}

#[test]
fn agentds_own_socket_is_the_one_given() {
    let text = format!("{HEAD}  egress:\n    unix: {{default: allow}}\n");
    let p = super::parse_with("t.yaml", &text, &Builtins::new(Path::new("/srv/agentd/ctl.sock"))).unwrap();
    assert_eq!(unix(&p, "/srv/agentd/ctl.sock"), (Deny, 1));
    assert_eq!(unix(&p, "/run/agentd/agentd.sock"), (Allow, 0));
    // The number of built-in rules does not depend on it: ids stay put.
    assert_eq!(p.unix.builtins.len(), ok("  mode: enforce\n").unix.builtins.len());
}

#[test]
fn unix_defaults() {
    // No section: allow (the built-in rules still protect what they protect).
    let p = ok("  egress:\n    default: deny\n");
    assert_eq!(unix(&p, "/tmp/x.sock"), (Allow, 0));
    assert_eq!(compile_with(&p, &NoFiles).unwrap().unix_default, action::ALLOW);
    assert_eq!(unix(&ok("  mode: enforce\n"), "/tmp/x.sock"), (Allow, 0));
    let p = ok("  egress:\n    unix: {default: audit}\n");
    assert_eq!(unix(&p, "/tmp/x.sock"), (Audit, 0));
    assert_eq!(unix(&p, "@x"), (Audit, 0));
    assert_eq!(compile_with(&p, &NoFiles).unwrap().unix_default, action::AUDIT);
    assert_eq!(unix(&p, "/run/docker.sock").0, Deny);
}

#[test]
fn unix_errors() {
    let rule = |r: &str| spec(&format!("  egress:\n    unix:\n      rules:\n        - {{{r}}}\n"));
    // `        - {path: ` is 17 characters: a path value starts in column 18 of line 9.
    expect(&rule("path: /run/app.sock, action: ask"), &[(9, 41, Invalid, "action \"ask\" is not possible for unix sockets: nothing can hold a connect to a local socket; hint: use deny, or audit to allow it and report it")]);
    expect(
        &spec("  egress:\n    unix:\n      default: ask\n"),
        &[(8, 16, Invalid, "egress.unix.default \"ask\" is not possible for unix sockets")],
    );
    expect(
        &spec("  egress:\n    unix:\n      defualt: deny\n"),
        &[(
            8,
            7,
            Schema,
            "unknown key \"defualt\" in egress.unix (expected one of: default, rules); hint: did you mean \"default\"?",
        )],
    );
    expect(
        &spec("  egress:\n    unixx:\n      default: deny\n"),
        &[(
            7,
            5,
            Schema,
            "unknown key \"unixx\" in egress (expected one of: default, rules, unix); hint: did you mean \"unix\"?",
        )],
    );
    expect(
        &rule("path: run/app.sock, action: allow"),
        &[(9, 18, Invalid, "path \"run/app.sock\" is relative: rules match absolute paths only; hint: write it from the root, e.g. \"/run/app.sock\"")],
    );
    expect(&rule("path: \"@\", action: allow"), &[(9, 18, Invalid, "the abstract socket name after `@` is empty")]);
    expect(&rule("path: \"@app*\", action: allow"), &[(9, 18, Invalid, "abstract socket name \"@app*\" has `*`")]);
    expect(
        &rule(&format!("path: \"@{}\", action: allow", "a".repeat(108))),
        &[(9, 18, Invalid, "is 108 bytes, longer than the 107 a socket address holds")],
    );
    expect(
        &rule("path: /run/app.sock, acton: deny"),
        &[(
            9,
            33,
            Schema,
            "unknown key \"acton\" in unix rule (expected one of: path, action); hint: did you mean \"action\"?",
        )],
    );
    expect(&rule("action: deny"), &[(9, 11, Schema, "missing key \"path\" in unix rule")]);
    expect(
        &spec("  egress:\n    unix:\n      rules: /run/docker.sock\n"),
        &[(8, 14, Schema, "egress.unix.rules must be a list, found a scalar; hint: write one rule per line, each starting with `- {path: /run/docker.sock, action: deny}`")],
    );
}

#[test]
fn unix_conflicts() {
    expect(
        &spec("  egress:\n    unix:\n      rules:\n        - {path: \"@x\", action: allow}\n        - {path: \"@x\", action: deny}\n"),
        &[(10, 11, Conflict, "rule for path \"@x\" duplicates the rule at line 9")],
    );
    expect(
        &spec("  egress:\n    unix:\n      rules:\n        - {path: \"/run/user/*/bus\", action: allow}\n"),
        &[(9, 11, Conflict, "unix rule for \"/run/user/*/bus\" can never match: the built-in rule 10 protects every socket it names (a user's session bus asks their systemd to start units outside this identity's cgroup); hint: only an exact path replaces a built-in rule")],
    );
    // An exact path is how a built-in rule is replaced: no conflict.
    assert!(errors(&spec("  egress:\n    unix:\n      rules:\n        - {path: /run/user/1000/bus, action: allow}\n"))
        .is_empty());
}

// ----- validation errors, each at its line and column -----------------------------

/// Every error of a document as (line, column, kind, display).
fn errors(doc: &str) -> Vec<(usize, usize, ErrorKind, String)> {
    match parse("t.yaml", doc) {
        Ok(_) => vec![],
        Err(e) => e.iter().map(|e| (e.line, e.column, e.kind, e.to_string())).collect(),
    }
}

#[track_caller]
fn expect(doc: &str, want: &[(usize, usize, ErrorKind, &str)]) {
    let got = errors(doc);
    assert_eq!(got.len(), want.len(), "errors: {got:#?}\nwanted: {want:#?}");
    for ((gl, gc, gk, gs), (wl, wc, wk, ws)) in got.iter().zip(want) {
        assert_eq!((gl, gc, gk), (wl, wc, wk), "{gs}");
        assert!(gs.contains(ws), "{gs:?} should contain {ws:?}");
        assert!(gs.starts_with(&format!("t.yaml:{wl}:{wc}: ")), "{gs}");
    }
}

fn spec(body: &str) -> String {
    format!("{HEAD}{body}")
}

use ErrorKind::{Conflict, Invalid, Schema, Syntax};

#[test]
fn unknown_key_points_at_the_key_with_a_suggestion() {
    expect(
        &spec("  exec:\n    default: deny\n    rules:\n      - {path: /usr/bin/git, acton: allow}\n"),
        // Not also "missing key action": the typo is the problem.
        &[(
            9,
            30,
            Schema,
            "unknown key \"acton\" in exec rule (expected one of: path, action); hint: did you mean \"action\"?",
        )],
    );
    expect(
        &spec("  exec:\n    rules:\n      - {path: /x, color: red}\n"),
        &[(8, 9, Schema, "missing key \"action\""), (8, 20, Schema, "unknown key \"color\"")],
    );
    expect(&spec("  egres:\n    default: deny\n"), &[(6, 3, Schema, "unknown key \"egres\" in spec (expected one of: mode, exec, write, egress, system, approvals, receipts); hint: did you mean \"egress\"?")]);
    expect(&format!("{HEAD}  exec: {{}}\nextra: 1\n"), &[(7, 1, Schema, "unknown key \"extra\" in the policy")]);
    expect(
        &spec("  exec:\n    default: deny\n    default: allow\n"),
        &[(8, 5, Schema, "key \"default\" appears twice in exec (first at line 7)")],
    );
}

#[test]
fn header_errors() {
    expect(
        "apiVersion: agentd.io/v2\nkind: AgentPolicy\nmetadata: {name: a}\nspec: {}\n",
        &[(1, 13, Invalid, "apiVersion \"agentd.io/v2\" is not supported")],
    );
    expect(
        "apiVersion: agentd.io/v1\nkind: Policy\nmetadata: {name: a}\nspec: {}\n",
        &[(2, 7, Invalid, "kind \"Policy\" is not a policy; hint: write `kind: AgentPolicy`")],
    );
    expect("kind: AgentPolicy\nmetadata: {name: a}\nspec: {}\n", &[(1, 1, Schema, "missing key \"apiVersion\"")]);
    expect(
        "apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata:\n  description: x\nspec: {}\n",
        &[(4, 3, Schema, "missing key \"name\" in metadata")],
    );
    expect("apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata:\n  name: My_Agent\nspec: {}\n", &[(4, 9, Invalid, "metadata.name \"My_Agent\" is not a valid name; hint: use 1 to 63 lowercase letters, digits and '-', starting with a letter or digit, e.g. \"my-agent\"")]);
    expect(
        &format!("apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata:\n  name: {}\nspec: {{}}\n", "a".repeat(64)),
        &[(4, 9, Invalid, "is not a valid name")],
    );
    expect(
        "apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata: {name: a}\n",
        &[(1, 1, Schema, "missing key \"spec\"")],
    );
    expect("- a\n- b\n", &[(1, 1, Schema, "the policy must be a mapping, found a list")]);
    expect("apiVersion: [\n", &[(2, 1, Syntax, "invalid YAML")]);
    expect(
        &spec("  mode: enforcing\n"),
        &[(6, 9, Invalid, "spec.mode \"enforcing\" is not one of: enforce, monitor; hint: did you mean \"enforce\"?")],
    );
}

#[test]
fn path_errors() {
    let rule = |p: &str| spec(&format!("  exec:\n    rules:\n      - {{path: {p}, action: allow}}\n"));
    // `      - {path: ` is 15 characters: the value starts in column 16 of line 8.
    expect(&rule("usr/bin/git"), &[(8, 16, Invalid, "path \"usr/bin/git\" is relative: rules match absolute paths only; hint: write it from the root, e.g. \"/usr/bin/git\"")]);
    expect(&rule("~/work/**"), &[(8, 16, Invalid, "`~` is not expanded")]);
    expect(&rule("\"/usr/***\""), &[(8, 16, Invalid, "path \"/usr/***\" has `***`: `**` must be a whole component")]);
    expect(&rule("\"/usr/lib**\""), &[(8, 16, Invalid, "has `lib**`")]);
    expect(
        &rule("/usr//bin"),
        &[(8, 16, Invalid, "has an empty component (`//`); hint: write it normalised: /usr/bin")],
    );
    expect(
        &rule("/usr/bin/../sbin/x"),
        &[(8, 16, Invalid, "has a `..` component; hint: write it normalised: /usr/sbin/x")],
    );
    expect(
        &rule("/usr/bin/"),
        &[(
            8,
            16,
            Invalid,
            "ends with `/`; hint: write /usr/bin for that path itself, or /usr/bin/** for everything below it",
        )],
    );
    expect(&rule("\"/a/**/**\""), &[(8, 16, Invalid, "repeats `**/**`")]);
    expect(
        &spec("  exec:\n    rules:\n      - {path: /x, action: alow}\n"),
        &[(8, 28, Invalid, "action \"alow\" is not one of: allow, deny, ask, audit; hint: did you mean \"allow\"?")],
    );
    expect(
        &spec("  write:\n    rules:\n      - {action: allow}\n"),
        &[(8, 9, Schema, "missing key \"path\" in write rule")],
    );
    expect(
        &spec("  write:\n    rules: {path: /x}\n"),
        &[(7, 12, Schema, "write.rules must be a list, found a mapping")],
    );
    expect(&spec("  write:\n    default: maybe\n"), &[(7, 14, Invalid, "write.default \"maybe\" is not one of")]);
}

#[test]
fn egress_errors() {
    let rule = |r: &str| spec(&format!("  egress:\n    rules:\n      - {{{r}}}\n"));
    // `      - {cidr: ` is 15 characters: a cidr value starts in column 16 of line 8.
    expect(&rule("cidr: 10.0.0.1/8, action: allow"), &[(8, 16, Invalid, "cidr \"10.0.0.1/8\" has host bits set; hint: write 10.0.0.0/8 for the network, or 10.0.0.1/32 for that one host")]);
    expect(&rule("cidr: \"fd00::1/8\", action: allow"), &[(8, 16, Invalid, "write fd00::/8")]);
    expect(
        &rule("cidr: 10.0.0/8, action: allow"),
        &[(8, 16, Invalid, "cidr \"10.0.0/8\" is not an IPv4 or IPv6 network")],
    );
    expect(&rule("cidr: 10.0.0.0/33, action: allow"), &[(8, 16, Invalid, "is not an IPv4 or IPv6 network")]);
    // `      - {cidr: 10.0.0.0/8, ports: [` is 35 characters.
    expect(&rule("cidr: 10.0.0.0/8, ports: [0], action: allow"), &[(8, 36, Invalid, "port 0 is outside 1-65535")]);
    expect(
        &rule("cidr: 10.0.0.0/8, ports: [443, 70000], action: allow"),
        &[(8, 41, Invalid, "port 70000 is outside 1-65535")],
    );
    expect(
        &rule("cidr: 10.0.0.0/8, ports: [\"9100-9000\"], action: allow"),
        &[(8, 36, Invalid, "port range \"9100-9000\" runs backwards: write \"9000-9100\"")],
    );
    expect(
        &rule("cidr: 10.0.0.0/8, ports: [https], action: allow"),
        &[(8, 36, Invalid, "\"https\" is not a port number")],
    );
    expect(
        &rule("cidr: 10.0.0.0/8, ports: 443, action: allow"),
        &[(8, 35, Schema, "ports must be a list, found a scalar; hint: write a list: `ports: [443]`")],
    );
    expect(&rule("cidr: 10.0.0.0/8, ports: [], action: allow"), &[(8, 35, Invalid, "ports is empty")]);
    expect(
        &rule("cidr: 10.0.0.0/8, protocol: icpm, action: allow"),
        &[(8, 38, Invalid, "protocol \"icpm\" is not one of: tcp, udp, icmp; hint: did you mean \"icmp\"?")],
    );
    // `      - {cidr: 10.0.0.0/8, protocol: icmp, ports: ` is 50 characters.
    expect(
        &rule("cidr: 10.0.0.0/8, protocol: icmp, ports: [7], action: allow"),
        &[(8, 51, Invalid, "an icmp rule has no ports: ICMP has none; hint: remove `ports`")],
    );
    expect(
        &rule("host: example.com, protocol: icmp, action: allow"),
        &[(8, 16, Invalid, "host \"example.com\" with protocol icmp: ICMP is allowed by address only")],
    );
    expect(&rule("host: example.com, action: deny"), &[(8, 37, Invalid, "host \"example.com\" with action deny: host rules can only allow or ask; hint: a name's addresses are never all known")]);
    expect(&rule("host: example.com, action: audit"), &[(8, 37, Invalid, "host rules can only allow or ask")]);
    expect(&rule("host: \"exa mple.com\", action: allow"), &[(8, 16, Invalid, "is not a DNS name")]);
    expect(
        &rule("cidr: 10.0.0.0/8, host: example.com, action: allow"),
        &[(8, 34, Invalid, "either cidr or host, not both")],
    );
    expect(&rule("ports: [443], action: allow"), &[(8, 9, Schema, "an egress rule needs cidr or host")]);
}

#[test]
fn conflicting_rules() {
    expect(
        &spec("  write:\n    rules:\n      - {path: \"/x/**\", action: allow}\n      - {path: /y, action: allow}\n      - {path: \"/x/**\", action: deny}\n"),
        &[(10, 9, Conflict, "rule for path \"/x/**\" duplicates the rule at line 8; hint: only the stronger one (deny) could ever apply")],
    );
    expect(
        &spec("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, ports: [443], action: allow}\n      - {cidr: 10.0.0.0/8, ports: [443], action: allow}\n"),
        &[(9, 9, Conflict, "egress rule duplicates the rule at line 8 (same cidr, ports and protocol); hint: remove one of them")],
    );
    // Same class, the deny comes first and covers every port the allow names.
    expect(
        &spec("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, ports: [\"400-500\"], action: deny}\n      - {cidr: 10.0.0.0/8, ports: [443, 444], action: allow}\n"),
        &[(9, 9, Conflict, "egress rule can never match: on the same cidr, the rule(s) at line 8 come first")],
    );
    // The same network written two ways is the same network.
    expect(
        &spec("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, action: allow}\n      - {cidr: \"::ffff:10.0.0.0/104\", action: allow}\n"),
        &[(9, 9, Conflict, "duplicates the rule at line 8")],
    );
    expect(
        &spec("  egress:\n    rules:\n      - {host: a.example, action: allow}\n      - {host: A.example., action: allow}\n"),
        &[(9, 9, Conflict, "rule for host \"a.example\" duplicates the rule at line 8")],
    );
    // Not conflicts: a protocol-specific rule comes first, a longer CIDR is elsewhere.
    assert!(errors(&spec("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, ports: [53], protocol: udp, action: allow}\n      - {cidr: 10.0.0.0/8, ports: [53], action: deny}\n      - {cidr: 10.1.0.0/16, ports: [53], action: deny}\n")).is_empty());
    // One protocol covered, the other not: still reachable.
    assert!(errors(&spec("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, ports: [53], protocol: tcp, action: deny}\n      - {cidr: 10.0.0.0/8, ports: [53], protocol: udp, action: deny}\n      - {cidr: 10.0.0.0/8, ports: [53], action: allow}\n")).len() == 1);
}

#[test]
fn approvals_and_receipts_errors() {
    let a = |body: &str| spec(&format!("  approvals:\n{body}"));
    expect(
        &a("    timeout: soon\n"),
        &[(7, 14, Invalid, "approvals.timeout \"soon\" is not a duration; hint: write a duration like 60s, 5m or 1h")],
    );
    expect(&a("    timeout: 60\n"), &[(7, 14, Invalid, "hint: add a unit: 60s")]);
    expect(&a("    timeout: 10ms\n"), &[(7, 14, Invalid, "shorter than a second")]);
    expect(&a("    max_pending: 0\n"), &[(7, 18, Invalid, "approvals.max_pending is 0")]);
    expect(&a("    max_pending: many\n"), &[(7, 18, Invalid, "must be a whole number")]);
    expect(&a("    on_timeout: ask\n"), &[(7, 17, Invalid, "approvals.on_timeout \"ask\" is not one of: deny, allow")]);
    let p =
        ok("  approvals:\n    timeout: 5m\n    on_timeout: allow\n    max_pending: 2\n  receipts:\n    allows: true\n");
    assert_eq!(
        p.approvals,
        Approvals { timeout: std::time::Duration::from_secs(300), on_timeout: Allow, max_pending: 2 }
    );
    assert!(p.receipts.allows);
    expect(&spec("  receipts:\n    allows: \"yes\"\n"), &[(7, 13, Invalid, "receipts.allows must be true or false")]);
    expect(
        &spec("  receipts:\n    signall: true\n"),
        &[(7, 5, Schema, "unknown key \"signall\" in receipts (expected one of: allows)")],
    );
}

#[test]
fn system_settings_default_to_deny_and_compile_to_identity_flags() {
    use agent_common::identity_flags::{NAMESPACES, PTRACE};
    let none = ok("  exec: {default: allow}\n");
    assert_eq!(none.system, System::default());
    assert_eq!(compile_with(&none, &NoFiles).unwrap().system_flags, 0);
    let p = ok("  system:\n    namespaces: allow\n");
    assert_eq!(p.system, System { namespaces: true, ptrace: false });
    assert_eq!(compile_with(&p, &NoFiles).unwrap().system_flags, NAMESPACES);
    let p = ok("  system: {namespaces: allow, ptrace: allow}\n");
    assert_eq!(compile_with(&p, &NoFiles).unwrap().system_flags, NAMESPACES | PTRACE);
    assert_eq!(ok("  system: {ptrace: deny}\n").system, System::default());
    // An empty section is every key's default.
    assert_eq!(ok("  system: {}\n").system, System::default());
}

#[test]
fn system_errors() {
    expect(
        &spec("  system:\n    ptrace: allow\n    bpf: allow\n"),
        &[(8, 5, Schema, "unknown key \"bpf\" in system (expected one of: namespaces, ptrace)")],
    );
    expect(
        &spec("  system:\n    namespace: allow\n"),
        &[(7, 5, Schema, "unknown key \"namespace\" in system (expected one of: namespaces, ptrace); hint: did you mean \"namespaces\"?")],
    );
    expect(
        &spec("  system:\n    ptrace: ask\n"),
        &[(
            7,
            13,
            Invalid,
            "system.ptrace \"ask\" is not one of: allow, deny; hint: `ptrace` is allowed or denied as a whole",
        )],
    );
    expect(
        &spec("  system:\n    ptrace: alow\n"),
        &[(7, 13, Invalid, "system.ptrace \"alow\" is not one of: allow, deny; hint: did you mean \"allow\"?")],
    );
    expect(&spec("  system: allow\n"), &[(6, 11, Schema, "system must be a mapping, found a scalar")]);
    expect(
        &spec("  system:\n    ptrace: allow\n    ptrace: deny\n"),
        &[(8, 5, Schema, "key \"ptrace\" appears twice in system (first at line 7)")],
    );
}

#[test]
fn every_error_is_reported_at_once_in_file_order() {
    let e = pol("  exec:\n    default: deny\n    rules:\n      - {path: usr/bin/git, action: allow}\n      - {path: \"/home/*/x\", action: allow}\n  egress:\n    default: deny\n    rules:\n      - {cidr: 10.0.0.1/8, action: allow}\n      - {cidr: 10.0.0.0/8, ports: [0], action: allow}\n      - {host: example.com, action: deny}\n  approvals:\n    timeout: 60\n    max_pending: 0\n").unwrap_err();
    let lines: Vec<usize> = e.iter().map(|e| e.line).collect();
    // The `*` pattern is valid (compile refuses it, not parse).
    assert_eq!(lines, vec![9, 14, 15, 16, 18, 19], "{e}");
    assert_eq!(e.to_string().lines().count(), 6);
}

// ----- compile ---------------------------------------------------------------------

#[test]
fn path_keys_exact_and_prefix() {
    let p = ok("  exec:\n    default: deny\n    rules:\n      - {path: /nonexistent/tool, action: allow}\n      - {path: \"/nonexistent/dir/**\", action: audit}\n      - {path: \"/**\", action: ask}\n      - {path: /, action: deny}\n");
    let c = compile_with(&p, &NoFiles).unwrap();
    let got: Vec<(&[u8], u8, u32)> =
        c.exec.iter().map(|e| (e.key.as_slice(), e.value.action, e.value.rule_id)).collect();
    assert_eq!(
        got,
        vec![
            (&b"/"[..], action::ASK, 3),
            (b"/\0", action::DENY, 4),
            (b"/nonexistent/dir/", action::AUDIT, 2),
            (b"/nonexistent/tool\0", action::ALLOW, 1),
        ]
    );
    assert_eq!((c.exec_default, c.write_default, c.egress_default), (action::DENY, action::DENY, action::DENY));
    assert_eq!(c.rules.iter().filter(|r| !r.builtin).count(), 4);
    assert_eq!(c.rules[1].line, 10);
    assert_eq!(c.name, "t");
    assert_eq!(c.hash, p.hash());
    assert!(!c.monitor);
    assert!(compile_with(&ok("  mode: monitor\n"), &NoFiles).unwrap().monitor);
}

#[test]
fn patterns_a_trie_cannot_express_go_to_the_automaton() {
    let p = ok("  exec:\n    rules:\n      - {path: \"/home/*/work/**\", action: allow}\n      - {path: \"/usr/bin/py*\", action: allow}\n      - {path: \"/a/**/b\", action: deny}\n      - {path: \"/ok/**\", action: allow}\n");
    assert_eq!(exec(&p, "/home/bob/work/x"), (Allow, 1));
    let c = compile_with(&p, &NoFiles).unwrap();
    // Only `/ok/**` is a trie entry; the other three are one automaton.
    assert_eq!(c.exec.len(), 1);
    assert_eq!((c.exec_glob, c.write_glob), (1, 0));
    assert!(!c.globs.is_empty());
    let k = |path: &str| c.path_lookup(RuleKind::Exec, path.as_bytes());
    assert_eq!(k("/home/bob/work/x"), Some((action::ALLOW, 1)));
    assert_eq!(k("/home/bob/play/x"), Some((action::DENY, 0)));
    assert_eq!(k("/usr/bin/python3"), Some((action::ALLOW, 2)));
    assert_eq!(k("/a/x/y/b"), Some((action::DENY, 3)));
    assert_eq!(k("/ok/x"), Some((action::ALLOW, 4)));
    // Write patterns are numbered after the exec automaton's states.
    let p = ok("  exec:\n    rules:\n      - {path: \"/usr/bin/py*\", action: allow}\n  write:\n    rules:\n      - {path: \"/tmp/*.log\", action: allow}\n");
    let c = compile_with(&p, &NoFiles).unwrap();
    assert!(c.write_glob > c.exec_glob && c.exec_glob == 1, "{} {}", c.exec_glob, c.write_glob);
    assert_eq!(c.path_lookup(RuleKind::Write, b"/tmp/a.log"), Some((action::ALLOW, 2)));
    assert_eq!(c.path_lookup(RuleKind::Write, b"/tmp/a.txt"), Some((action::DENY, 0)));
    assert_eq!(c.path_lookup(RuleKind::Exec, b"/tmp/a.log"), Some((action::DENY, 0)));
}

#[test]
fn patterns_over_the_automaton_limit_are_an_error_at_the_first_pattern() {
    // Each `*a*b*c...` pattern over many distinct letters multiplies states.
    let mut rules = String::new();
    for i in 0..40 {
        rules.push_str(&format!("      - {{path: \"/x/*{i}*q*{i}z*/**/w{i}*\", action: allow}}\n"));
    }
    let p = ok(&format!("  write:\n    rules:\n      - {{path: /etc/hosts, action: deny}}\n{rules}"));
    let e = compile_with(&p, &NoFiles).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    assert_eq!((e.0[0].line, e.0[0].kind), (9, ErrorKind::Limit), "{e}");
    assert!(e.0[0].message.contains("automaton states"), "{e}");
}

#[test]
fn a_path_key_over_the_kernel_limit_is_an_error() {
    let long = format!("/{}", "a".repeat(agent_common::PATH_KEY_LEN - 1)); // 252 bytes, 253 with NUL
    let p = ok(&format!("  write:\n    rules:\n      - {{path: {long}, action: deny}}\n      - {{path: \"{long}/**\", action: deny}}\n      - {{path: {}, action: deny}}\n", &long[..251]));
    let e = compile_with(&p, &NoFiles).unwrap_err();
    assert_eq!(
        e.iter().map(|e| (e.line, e.kind)).collect::<Vec<_>>(),
        vec![(8, ErrorKind::Limit), (9, ErrorKind::Limit)],
        "{e}"
    );
    assert!(e.0[0].message.contains("253 bytes"), "{e}");
}

#[test]
fn same_real_path_twice_keeps_the_stronger_rule_and_warns() {
    let fs = FakeLinks(vec![("/bin", "/usr/bin")]);
    let p = ok("  exec:\n    rules:\n      - {path: \"/usr/bin/**\", action: allow}\n      - {path: \"/bin/**\", action: deny}\n      - {path: /bin/ls, action: allow}\n      - {path: /usr/bin/ls, action: allow}\n");
    let c = compile_with(&p, &fs).unwrap();
    let got: Vec<(&[u8], u8, u32)> =
        c.exec.iter().map(|e| (e.key.as_slice(), e.value.action, e.value.rule_id)).collect();
    assert_eq!(got, vec![(&b"/usr/bin/"[..], action::DENY, 2), (b"/usr/bin/ls\0", action::ALLOW, 3)]);
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings[0].starts_with("t.yaml:8:9: exec rule 1 {path: \"/usr/bin/**\", action: allow} can never match on this machine: it is the same real path (/usr/bin/) as rule 2"), "{}", c.warnings[0]);
    assert!(c.warnings[1].starts_with("t.yaml:11:9: exec rule 4"), "{}", c.warnings[1]);
    // The evaluator picks the same winners.
    let ex = |path: &str| {
        let d = evaluate_with(&p, &Action::Exec { path: path.into() }, &fs);
        (d.action, d.rule_id)
    };
    assert_eq!(ex("/usr/bin/cat"), (Deny, 2));
    assert_eq!(ex("/usr/bin/ls"), (Allow, 3));
}

#[test]
fn symlinked_rule_path_compiles_to_the_real_file() {
    use std::os::unix::ffi::OsStringExt as _;
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::create_dir(real.join("store")).unwrap();
    std::fs::write(real.join("store/tool-1.2"), "").unwrap();
    std::os::unix::fs::symlink(real.join("store/tool-1.2"), real.join("tool")).unwrap();
    std::os::unix::fs::symlink(real.join("store"), real.join("current")).unwrap();
    let p = ok(&format!(
        "  exec:\n    rules:\n      - {{path: {0}/tool, action: allow}}\n      - {{path: \"{0}/current/**\", action: audit}}\n      - {{path: {0}/current/new, action: deny}}\n",
        real.display()
    ));
    let c = super::compile(&p).unwrap();
    let key = |p: &Path, end: &[u8]| {
        let mut k = p.to_path_buf().into_os_string().into_vec();
        k.extend_from_slice(end);
        k
    };
    let keys: Vec<Vec<u8>> = c.exec.iter().map(|e| e.key.clone()).collect();
    assert_eq!(
        keys,
        vec![
            key(&real.join("store"), b"/"),
            key(&real.join("store/new"), b"\0"),
            key(&real.join("store/tool-1.2"), b"\0")
        ]
    );
    // The evaluator agrees for every spelling.
    let d = |path: std::path::PathBuf| super::evaluate(&p, &Action::Exec { path }).rule_id;
    assert_eq!(d(real.join("tool")), 1);
    assert_eq!(d(real.join("store/tool-1.2")), 1);
    assert_eq!(d(real.join("current/tool-1.2")), 1);
    assert_eq!(d(real.join("store/other")), 2);
    assert_eq!(d(real.join("store/new")), 3);
}

#[test]
fn egress_entries_carry_covering_rules_in_precedence_order() {
    let p = ok("  egress:\n    rules:\n      - {cidr: 10.0.0.0/8, action: allow}\n      - {cidr: 10.1.0.0/16, ports: [22], action: deny}\n      - {cidr: 10.1.0.0/16, ports: [\"8000-8100\", 9000], protocol: udp, action: audit}\n      - {cidr: \"::1/128\", ports: [443], action: allow}\n");
    let c = compile_with(&p, &NoFiles).unwrap();
    assert_eq!(c.egress.len(), 3);
    let e8 = c.egress.iter().find(|e| e.prefix_len == 104).unwrap();
    assert_eq!(e8.addr, "::ffff:10.0.0.0".parse::<std::net::Ipv6Addr>().unwrap().octets());
    let e16 = c.egress.iter().find(|e| e.prefix_len == 112).unwrap();
    let rules: Vec<(u16, u16, u8, u8, u32)> = e16.value.rules[..e16.value.count as usize]
        .iter()
        .map(|r| (r.port_lo, r.port_hi, r.protocol, r.action, r.rule_id))
        .collect();
    assert_eq!(
        rules,
        vec![
            (8000, 8100, 17, action::AUDIT, 3),
            (9000, 9000, 17, action::AUDIT, 3),
            (22, 22, 0, action::DENY, 2),
            (0, 65535, 0, action::ALLOW, 1),
        ]
    );
    let v6 = c.egress.iter().find(|e| e.prefix_len == 128).unwrap();
    assert_eq!(v6.addr, std::net::Ipv6Addr::LOCALHOST.octets());
}

#[test]
fn more_than_sixteen_port_rules_for_a_network_is_an_error() {
    let ports: Vec<String> = (1..=12).map(|i| (i * 10).to_string()).collect();
    let p = ok(&format!(
        "  egress:\n    rules:\n      - {{cidr: 10.0.0.0/8, ports: [{}], action: allow}}\n      - {{cidr: 10.1.0.0/16, ports: [1, 3, 5, 7, 9], action: deny}}\n",
        ports.join(", ")
    ));
    let e = compile_with(&p, &NoFiles).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    assert_eq!((e.0[0].line, e.0[0].column, e.0[0].kind), (9, 16, ErrorKind::Limit));
    assert!(
        e.0[0]
            .message
            .starts_with("17 port rules apply to 10.1.0.0/16 (its own and those of covering networks at line 8)"),
        "{e}"
    );
    // Rules after an every-port, every-protocol rule are unreachable and not counted.
    let p = ok(&format!("  egress:\n    rules:\n      - {{cidr: 10.0.0.0/8, ports: [{}], action: allow}}\n      - {{cidr: 10.1.0.0/16, action: deny}}\n", ports.join(", ")));
    let c = compile_with(&p, &NoFiles).unwrap();
    assert_eq!(c.egress.iter().find(|e| e.prefix_len == 112).unwrap().value.count, 1);
}

#[test]
fn host_rules_and_ask_compile_to_warnings() {
    let p = ok("  exec:\n    rules:\n      - {path: /usr/bin/curl, action: ask}\n  egress:\n    default: deny\n    rules:\n      - {host: api.github.com, ports: [443], action: allow}\n");
    let c = compile_with(&p, &NoFiles).unwrap();
    assert_eq!(c.warnings.len(), 1, "an exec ask is held, not a warning: {:?}", c.warnings);
    let p = ok("  write:\n    rules:\n      - {path: /etc/hosts, action: ask}\n  egress:\n    default: deny\n    rules:\n      - {host: api.github.com, ports: [443], action: allow}\n");
    let c = compile_with(&p, &NoFiles).unwrap();
    assert!(c.egress.is_empty());
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(
        c.warnings[0].starts_with(
            "t.yaml:12:9: host rule {host: api.github.com, ports: [443], action: allow} is not enforced yet"
        ),
        "{}",
        c.warnings[0]
    );
    assert!(c.warnings[1].contains("of `ask` writes, only an open of an existing file is held"), "{}", c.warnings[1]);
    // An ask by name under an allowing default would become an allow: refused.
    let p = ok("  egress:\n    default: allow\n    rules:\n      - {host: \"*.example.com\", action: ask}\n");
    let e = compile_with(&p, &NoFiles).unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].column, e.0[0].kind), (9, 16, ErrorKind::Unenforceable));
}

#[test]
fn literal_question_marks_warn() {
    let p = ok("  write:\n    rules:\n      - {path: \"/tmp/a?b\", action: allow}\n");
    assert_eq!(p.warnings().len(), 1);
    assert!(compile_with(&p, &NoFiles).unwrap().warnings[0].contains("matched literally"));
}

// ----- the shipped policies ----------------------------------------------------------

fn shipped() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) == Some("yaml") {
            out.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn every_shipped_policy_parses_and_compiles() {
    let files = shipped();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["ci-runner.yaml", "coding-agent.yaml", "default.yaml", "lockdown.yaml", "mcp-server-readonly.yaml"] {
        assert!(names.contains(&want), "policies/{want} is missing");
    }
    for (name, text) in &files {
        let p = parse(name, text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format!("{}.yaml", p.name()), *name, "metadata.name matches the file name");
        assert!(!p.description().is_empty(), "{name} has a description");
        let c = super::compile(&p).unwrap_or_else(|e| panic!("{e}"));
        // On this machine nothing in them shadows anything: warnings are only for
        // what the kernel cannot enforce yet.
        for w in &c.warnings {
            assert!(w.contains("not enforced yet") || w.contains("`ask`"), "{name}: unexpected warning {w}");
        }
    }
}

#[test]
fn shipped_policies_decide_as_documented() {
    let get = |n: &str| {
        let (name, text) = shipped().into_iter().find(|(f, _)| f == n).unwrap();
        parse(&name, &text).unwrap()
    };
    let ev = |p: &Policy, a: Action| super::evaluate(p, &a).action;
    let ex = |p: &str| Action::Exec { path: p.into() };
    let wr = |p: &str| Action::Write { path: p.into() };
    let co = |a: &str, port| Action::Connect { addr: a.parse::<IpAddr>().unwrap(), port, protocol: Tcp };

    let d = get("default.yaml");
    assert_eq!(ev(&d, ex("/usr/bin/ls")), Allow);
    assert_eq!(ev(&d, ex("/bin/sh")), Allow);
    assert_eq!(ev(&d, ex("/tmp/payload")), Deny);
    assert_eq!(ev(&d, wr("/tmp/x")), Allow);
    assert_eq!(ev(&d, wr("/etc/passwd")), Deny);
    assert_eq!(ev(&d, co("127.0.0.1", 8080)), Allow);
    assert_eq!(ev(&d, co("1.1.1.1", 443)), Deny);
    assert_eq!(ev(&d, Action::ConnectUnix { path: "/run/systemd/journal/socket".into() }), Allow);
    assert_eq!(ev(&d, Action::ConnectUnix { path: "/run/containerd/containerd.sock".into() }), Deny);
    assert_eq!(ev(&d, Action::ConnectUnix { path: "/run/agentd/agentd.sock".into() }), Deny);

    let c = get("coding-agent.yaml");
    assert_eq!(ev(&c, ex("/usr/bin/git")), Allow);
    assert_eq!(ev(&c, ex("/usr/bin/sudo")), Deny);
    assert_eq!(ev(&c, ex("/usr/bin/curl")), Ask);
    assert_eq!(ev(&c, wr("/home/alice/work/src/lib.rs")), Allow);
    assert_eq!(ev(&c, wr("/home/alice/work/.git/hooks/pre-commit")), Deny);
    // git init copies its samples; none of them runs, and nothing becomes a hook.
    assert_eq!(ev(&c, wr("/home/alice/work/.git/hooks/pre-commit.sample")), Allow);
    assert_eq!(ev(&c, wr("/home/alice/work/.git/hooks/x.sample/pre-commit")), Deny);
    assert_eq!(ev(&c, wr("/home/alice/work/.git/hooks/pre-commit.sample.d")), Deny);
    assert_eq!(ev(&c, wr("/home/alice/.ssh/authorized_keys")), Deny);
    let ux = |p: &str| Action::ConnectUnix { path: p.into() };
    assert_eq!(ev(&c, ux("/tmp/ssh-XXXXabcd/agent.4242")), Deny);
    assert_eq!(ev(&c, ux("/run/user/1000/gnupg/S.gpg-agent")), Deny);
    assert_eq!(ev(&c, ux("/run/docker.sock")), Deny);
    assert_eq!(ev(&c, ux("/run/user/1000/bus")), Deny);
    assert_eq!(ev(&c, ux("/run/systemd/resolve/io.systemd.Resolve")), Allow);
    assert_eq!(ev(&c, ux("/home/alice/work/target/dev.sock")), Allow);
    assert_eq!(ev(&c, Action::Connect { addr: "127.0.0.1".parse().unwrap(), port: 0, protocol: Protocol::Icmp }), Deny);

    let m = get("mcp-server-readonly.yaml");
    assert_eq!(ev(&m, wr("/home/alice/notes.txt")), Deny);
    assert_eq!(ev(&m, co("140.82.112.5", 443)), Allow);
    assert_eq!(ev(&m, co("140.82.112.5", 80)), Deny);

    let l = get("lockdown.yaml");
    let ux = Action::ConnectUnix { path: "/tmp/x.sock".into() };
    for a in [ex("/usr/bin/ls"), wr("/tmp/x"), co("127.0.0.1", 80), ux] {
        assert_eq!(ev(&l, a), Deny);
    }
}

#[test]
fn a_write_exception_opens_exactly_one_path_and_outranks_every_rule() {
    let p = ok("  write:\n    default: allow\n    rules:\n      - {path: \"/home/a/.ssh/**\", action: ask}\n      - {path: \"/home/*/.aws/*\", action: ask}\n      - {path: \"/etc/hosts\", action: ask}\n");
    let c = compile_with(&p, &NoFiles).unwrap();
    let w = |c: &crate::policy::compiled::CompiledPolicy, path: &str| c.path_lookup(RuleKind::Write, path.as_bytes());
    assert_eq!(w(&c, "/home/a/.ssh/config"), Some((action::ASK, 1)));
    let g = c
        .with_write_exceptions(&[("/home/a/.ssh/config".into(), 1), ("/home/b/.aws/credentials".into(), 2), ("/etc/hosts".into(), 3)])
        .unwrap();
    // Exactly the granted paths: a prefix rule, an automaton pattern, an exact rule.
    assert_eq!(w(&g, "/home/a/.ssh/config"), Some((action::ALLOW, 1)));
    assert_eq!(w(&g, "/home/b/.aws/credentials"), Some((action::ALLOW, 2)));
    assert_eq!(w(&g, "/etc/hosts"), Some((action::ALLOW, 3)));
    for other in ["/home/a/.ssh/config2", "/home/a/.ssh/id_ed25519", "/home/a/.ssh/confi"] {
        assert_eq!(w(&g, other), Some((action::ASK, 1)), "{other}");
    }
    assert_eq!(w(&g, "/home/c/.aws/credentials"), Some((action::ASK, 2)));
    assert_ne!(g.hash, c.hash, "a new rule set for the kernel");
    assert_eq!(c.with_write_exceptions(&[]).unwrap().hash, c.hash);
    assert!(c.with_write_exceptions(&[(format!("/{}", "x".repeat(agent_common::PATH_KEY_LEN)), 1)]).is_err());
    assert!(c.with_write_exceptions(&[("relative".into(), 1)]).is_err());
}

#[test]
fn a_udp_exception_lets_exactly_one_address_and_port_through() {
    use std::net::IpAddr;
    let p = ok("  egress:\n    default: deny\n    rules:\n      - {cidr: 10.0.0.0/8, ports: [53], protocol: udp, action: ask}\n      - {cidr: 10.0.0.0/8, ports: [443], action: allow}\n");
    let c = compile_with(&p, &NoFiles).unwrap();
    // The kernel's lookup: the longest covering entry, then its first matching rule.
    let look = |c: &crate::policy::compiled::CompiledPolicy, addr: &str, port: u16, proto: u8| -> Option<(u8, u32)> {
        let ip: IpAddr = addr.parse().unwrap();
        let bytes = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let a = u128::from_be_bytes(bytes);
        let e = c
            .egress
            .iter()
            .filter(|e| e.prefix_len == 0 || a & (u128::MAX << (128 - e.prefix_len)) == u128::from_be_bytes(e.addr))
            .max_by_key(|e| e.prefix_len)?;
        e.value.rules[..e.value.count as usize]
            .iter()
            .find(|r| r.port_lo <= port && port <= r.port_hi && (r.protocol == 0 || r.protocol == proto))
            .map(|r| (r.action, r.rule_id))
    };
    assert_eq!(look(&c, "10.1.2.3", 53, 17), Some((action::ASK, 1)));
    let g = c.with_udp_exceptions(&[("10.1.2.3".parse().unwrap(), 53, 1)]).unwrap();
    assert_eq!(look(&g, "10.1.2.3", 53, 17), Some((action::ALLOW, 1)));
    // Neighbours keep their answers: another address, another port, TCP.
    assert_eq!(look(&g, "10.1.2.4", 53, 17), Some((action::ASK, 1)));
    assert_eq!(look(&g, "10.1.2.3", 54, 17), None);
    assert_eq!(look(&g, "10.1.2.3", 53, 6), None);
    assert_eq!(look(&g, "10.1.2.3", 443, 6), Some((action::ALLOW, 2)), "the covering rules are kept");
    assert_ne!(g.hash, c.hash);
    // An address outside every rule gets an entry of its own.
    let g = c.with_udp_exceptions(&[("192.0.2.1".parse().unwrap(), 5353, 0)]).unwrap();
    assert_eq!(look(&g, "192.0.2.1", 5353, 17), Some((action::ALLOW, 0)));
    assert_eq!(look(&g, "192.0.2.1", 5354, 17), None);
    assert_eq!(look(&g, "[::1]".trim_matches(['[', ']']), 5353, 17), None);
}
