//! The `agentd.io/v1` policy format: parsing, validation and compilation to the
//! kernel's maps (`compiled::CompiledPolicy`).
//!
//! Every error names file:line:column and says what to do. A policy that has any
//! error is rejected whole. The compiler never widens a rule: a pattern the kernel
//! cannot express exactly is an error, and a rule the kernel cannot enforce yet
//! (a DNS name) compiles to nothing with a warning, which only narrows.

use std::{collections::BTreeMap, fmt, net::IpAddr, path::Path};

use agent_common::{action, EgressRules, PathRule, PortRule, MAX_PORT_RULES, PATH_KEY_LEN};
use ipnet::IpNet;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::compiled::{CompiledPolicy, EgressEntry, PathEntry, RuleInfo};

/// One problem in a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

/// Every problem found in a policy file (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Doc {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default = "enforce")]
    mode: Mode,
    #[serde(default)]
    exec: Option<PathSection>,
    #[serde(default)]
    write: Option<PathSection>,
    #[serde(default)]
    egress: Option<EgressSection>,
    #[serde(default)]
    approvals: Option<Approvals>,
    #[serde(default)]
    receipts: Option<Receipts>,
}

fn enforce() -> Mode {
    Mode::Enforce
}

/// `spec.mode`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Monitor,
}

/// A rule's or a default's action.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Audit,
    Ask,
    Deny,
}

impl Action {
    fn code(self) -> u8 {
        match self {
            Action::Allow => action::ALLOW,
            Action::Audit => action::AUDIT,
            Action::Ask => action::ASK,
            Action::Deny => action::DENY,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathSection {
    default: Action,
    #[serde(default)]
    rules: Vec<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathRuleDoc {
    path: String,
    action: Action,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressSection {
    default: Action,
    #[serde(default)]
    rules: Vec<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressRuleDoc {
    #[serde(default)]
    cidr: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    ports: Option<Vec<serde_yaml::Value>>,
    #[serde(default)]
    protocol: Option<String>,
    action: Action,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Approvals {
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    on_timeout: Option<Action>,
    #[serde(default)]
    max_pending: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Receipts {
    #[serde(default)]
    allows: bool,
}

/// A validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub description: String,
    pub mode: Mode,
    pub hash: String,
    pub text: String,
    exec: Kind<String>,
    write: Kind<String>,
    egress: Kind<Egress>,
    rules: Vec<RuleInfo>,
    warnings: Vec<String>,
}

impl Policy {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn description(&self) -> &str {
        &self.description
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

#[derive(Clone, Debug)]
struct Kind<T> {
    default: Action,
    rules: Vec<(u32, T, Action)>,
}

#[derive(Clone, Debug)]
struct Egress {
    net: IpNet,
    ports: Vec<(u16, u16)>,
    protocol: u8,
}

/// Line (1-based) of the `n`-th `- ` item under the section `kind:` → `rules:`.
/// serde_yaml gives no positions for values, so rule positions come from the
/// text; the policy shape is fixed, so this scan is exact for valid YAML.
fn rule_lines(text: &str, kind: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut in_kind = false;
    let mut kind_indent = 0;
    let mut in_rules = false;
    let mut rules_indent = 0;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with(&format!("{kind}:")) {
            in_kind = true;
            kind_indent = indent;
            in_rules = false;
            continue;
        }
        if in_kind && indent <= kind_indent {
            in_kind = false;
            in_rules = false;
        }
        if in_kind && trimmed.starts_with("rules:") {
            in_rules = true;
            rules_indent = indent;
            continue;
        }
        if in_rules {
            if indent <= rules_indent && !trimmed.starts_with("- ") {
                in_rules = false;
            } else if trimmed.starts_with("- ") {
                out.push((i + 1, indent + 3));
            }
        }
    }
    out
}

/// Parses and validates a policy. All problems are reported at once.
pub fn parse(file: &str, text: &str) -> Result<Policy, PolicyErrors> {
    let err = |line: usize, column: usize, message: String| PolicyError { file: file.into(), line, column, message };
    let doc: Doc = serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        PolicyErrors(vec![err(line, column, format!("{e}"))])
    })?;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if doc.api_version != "agentd.io/v1" {
        errors.push(err(1, 1, format!("apiVersion is {:?}; this agentd reads \"agentd.io/v1\"", doc.api_version)));
    }
    if doc.kind != "AgentPolicy" {
        errors.push(err(1, 1, format!("kind is {:?}; expected \"AgentPolicy\"", doc.kind)));
    }
    let name = doc.metadata.name.clone();
    if !valid_name(&name) {
        errors.push(err(
            line_of(text, "name:"),
            1,
            format!("metadata.name {name:?} is not a valid name: use lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters"),
        ));
    }
    let mut rules: Vec<RuleInfo> = Vec::new();
    let mut next_id = 1u32;

    let mut path_kind = |kind: &'static str, section: Option<PathSection>, errors: &mut Vec<PolicyError>, rules: &mut Vec<RuleInfo>| -> Kind<String> {
        let Some(section) = section else {
            return Kind { default: Action::Deny, rules: vec![] };
        };
        let lines = rule_lines(text, kind);
        let mut out = Vec::new();
        for (index, raw) in section.rules.into_iter().enumerate() {
            let (line, col) = lines.get(index).copied().unwrap_or((1, 1));
            let text_line = text.lines().nth(line.saturating_sub(1)).unwrap_or("").trim().trim_start_matches("- ").to_string();
            match serde_yaml::from_value::<PathRuleDoc>(raw) {
                Err(e) => errors.push(err(line, col, format!("{kind} rule: {e} (a rule is {{path: /absolute/path, action: allow|deny|ask|audit}})"))),
                Ok(r) => match check_path(&r.path) {
                    Err(m) => errors.push(err(line, col, format!("{kind} rule path {:?}: {m}", r.path))),
                    Ok(()) => {
                        let id = next_id;
                        next_id += 1;
                        rules.push(RuleInfo { id, kind, index, text: text_line, line });
                        out.push((id, r.path, r.action));
                    }
                },
            }
        }
        Kind { default: section.default, rules: out }
    };
    let exec = path_kind("exec", doc.spec.exec, &mut errors, &mut rules);
    let write = path_kind("write", doc.spec.write, &mut errors, &mut rules);

    let egress = match doc.spec.egress {
        None => Kind { default: Action::Deny, rules: vec![] },
        Some(section) => {
            let lines = rule_lines(text, "egress");
            let mut out = Vec::new();
            for (index, raw) in section.rules.into_iter().enumerate() {
                let (line, col) = lines.get(index).copied().unwrap_or((1, 1));
                let text_line = text.lines().nth(line.saturating_sub(1)).unwrap_or("").trim().trim_start_matches("- ").to_string();
                let r = match serde_yaml::from_value::<EgressRuleDoc>(raw) {
                    Err(e) => {
                        errors.push(err(line, col, format!("egress rule: {e} (a rule is {{cidr: 10.0.0.0/8, ports: [443, \"8000-8100\"], protocol: tcp, action: allow}})")));
                        continue;
                    }
                    Ok(r) => r,
                };
                match egress_rule(&r) {
                    Err(m) => errors.push(err(line, col, format!("egress rule: {m}"))),
                    Ok(None) => {
                        let id = next_id;
                        next_id += 1;
                        rules.push(RuleInfo { id, kind: "egress", index, text: text_line, line });
                        warnings.push(format!(
                            "{file}:{line}: host rule {:?} is not enforced yet (no DNS interception in this build): connections to it fall to the egress default",
                            r.host.as_deref().unwrap_or("")
                        ));
                    }
                    Ok(Some(e)) => {
                        let id = next_id;
                        next_id += 1;
                        rules.push(RuleInfo { id, kind: "egress", index, text: text_line, line });
                        out.push((id, e, r.action));
                    }
                }
            }
            Kind { default: section.default, rules: out }
        }
    };
    if let Some(a) = &doc.spec.approvals {
        if let Some(t) = &a.timeout {
            if parse_duration(t).is_none() {
                errors.push(err(line_of(text, "timeout:"), 1, format!("approvals.timeout {t:?}: write a duration like 60s, 5m or 1h")));
            }
        }
        if a.max_pending == Some(0) {
            errors.push(err(line_of(text, "max_pending:"), 1, "approvals.max_pending must be at least 1".into()));
        }
        let _ = a.on_timeout;
    }
    let _ = doc.spec.receipts.as_ref().map(|r| r.allows);
    let uses_ask = [exec.default, write.default, egress.default].contains(&Action::Ask)
        || exec.rules.iter().chain(write.rules.iter()).any(|r| r.2 == Action::Ask)
        || egress.rules.iter().any(|r| r.2 == Action::Ask);
    if uses_ask {
        warnings.push(format!(
            "{file}: `ask` is denied by the kernel until the approval service exists: nothing is held for a human yet"
        ));
    }
    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    Ok(Policy {
        name,
        description: doc.metadata.description,
        mode: doc.spec.mode,
        hash: hex::encode(Sha256::digest(text.as_bytes())),
        text: text.to_string(),
        exec,
        write,
        egress,
        rules,
        warnings,
    })
}

fn line_of(text: &str, key: &str) -> usize {
    text.lines().position(|l| l.trim_start().starts_with(key)).map(|i| i + 1).unwrap_or(1)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
}

/// Checks a rule path: absolute, normalised, and a pattern the kernel can match
/// exactly (an exact path, or a directory followed by `/**`).
fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("paths must be absolute".into());
    }
    let (literal, prefix) = match p.strip_suffix("/**") {
        Some(dir) => (if dir.is_empty() { "/" } else { dir }, true),
        None => (p, false),
    };
    if literal.contains('*') || literal.contains('?') || literal.contains('[') {
        return Err(format!(
            "this pattern cannot be enforced in the kernel yet: only exact paths and a trailing /** are supported{}",
            if prefix { "" } else { " (for everything below a directory write DIR/**)" }
        ));
    }
    if literal.split('/').any(|c| c == "." || c == "..") || (literal.len() > 1 && literal.contains("//")) {
        return Err("write the path without '.', '..' or '//' components".into());
    }
    // The key is the literal plus one byte either way: the NUL that ends an exact
    // path, or the '/' that ends a directory prefix.
    let bytes = literal.len() + 1;
    if bytes > PATH_KEY_LEN {
        return Err(format!("the kernel matches paths of at most {} bytes", PATH_KEY_LEN - 1));
    }
    Ok(())
}

fn egress_rule(r: &EgressRuleDoc) -> Result<Option<Egress>, String> {
    let protocol = match r.protocol.as_deref() {
        None => 0,
        Some("tcp") => 6,
        Some("udp") => 17,
        Some(p) => return Err(format!("protocol {p:?}: use tcp or udp, or leave it out for both")),
    };
    let mut ports = Vec::new();
    for v in r.ports.iter().flatten() {
        ports.push(parse_ports(v)?);
    }
    match (&r.cidr, &r.host) {
        (Some(_), Some(_)) => Err("a rule has either cidr or host, not both".into()),
        (None, None) => Err("a rule needs cidr (e.g. 10.0.0.0/8) or host (e.g. api.github.com)".into()),
        (None, Some(h)) => {
            if r.action == Action::Deny {
                return Err(format!(
                    "host {h:?} with action deny: denying by DNS name is unsafe (a name's addresses are never all known); deny by cidr, or rely on the default deny"
                ));
            }
            Ok(None)
        }
        (Some(c), None) => {
            let net: IpNet = match c.parse() {
                Ok(n) => n,
                Err(_) => match c.parse::<IpAddr>() {
                    Ok(a) => IpNet::from(a),
                    Err(_) => return Err(format!("cidr {c:?} is not an IPv4 or IPv6 network like 10.0.0.0/8")),
                },
            };
            if net.trunc() != net {
                return Err(format!("cidr {c:?} has host bits set: write {}", net.trunc()));
            }
            Ok(Some(Egress { net, ports, protocol }))
        }
    }
}

fn parse_ports(v: &serde_yaml::Value) -> Result<(u16, u16), String> {
    let one = |n: u64| -> Result<u16, String> {
        if (1..=65535).contains(&n) { Ok(n as u16) } else { Err(format!("port {n} is outside 1-65535")) }
    };
    match v {
        serde_yaml::Value::Number(n) => {
            let p = one(n.as_u64().ok_or_else(|| format!("port {n} is not a whole number"))?)?;
            Ok((p, p))
        }
        serde_yaml::Value::String(s) => {
            let (lo, hi) = s.split_once('-').ok_or_else(|| format!("port range {s:?}: write \"lo-hi\", e.g. \"8000-8100\""))?;
            let lo = one(lo.trim().parse().map_err(|_| format!("port range {s:?}: {lo:?} is not a number"))?)?;
            let hi = one(hi.trim().parse().map_err(|_| format!("port range {s:?}: {hi:?} is not a number"))?)?;
            if lo > hi {
                return Err(format!("port range {s:?}: the low end is above the high end"));
            }
            Ok((lo, hi))
        }
        other => Err(format!("ports entry {other:?}: write a number or a \"lo-hi\" range")),
    }
}

fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    };
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

/// The kernel key for a path rule: exact paths end in NUL; `dir/**` is `dir/`.
/// The literal part is canonicalised when it exists, because the kernel matches
/// real paths (symlinks resolved): `/bin/sh` becomes `/usr/bin/dash` on Debian.
fn path_key(p: &str) -> Vec<u8> {
    let (literal, prefix) = match p.strip_suffix("/**") {
        Some(dir) => (if dir.is_empty() { "/" } else { dir }, true),
        None => (p, false),
    };
    let real = std::fs::canonicalize(Path::new(literal))
        .ok()
        .and_then(|r| r.to_str().map(str::to_string))
        .unwrap_or_else(|| literal.to_string());
    let mut key = real.into_bytes();
    if prefix {
        if key.last() != Some(&b'/') {
            key.push(b'/');
        }
    } else {
        key.push(0);
    }
    key
}

/// Compiles a validated policy to kernel map entries.
pub fn compile(policy: &Policy) -> Result<CompiledPolicy, PolicyErrors> {
    let paths = |k: &Kind<String>| -> Vec<PathEntry> {
        // Same key twice: the stronger action wins (deny > ask > audit > allow).
        let mut by_key: BTreeMap<Vec<u8>, (Action, u32)> = BTreeMap::new();
        for (id, p, a) in &k.rules {
            let key = path_key(p);
            let e = by_key.entry(key).or_insert((*a, *id));
            if *a > e.0 {
                *e = (*a, *id);
            }
        }
        by_key
            .into_iter()
            .map(|(key, (a, id))| PathEntry { key, value: PathRule { action: a.code(), _pad: [0; 3], rule_id: id } })
            .collect()
    };
    let mut egress = Vec::new();
    // Each distinct network gets its own LPM entry holding its rules and then
    // those of every covering (shorter) network, in precedence order.
    let mut nets: Vec<IpNet> = policy.egress.rules.iter().map(|(_, e, _)| e.net).collect();
    nets.sort();
    nets.dedup();
    let mut errors = Vec::new();
    for net in &nets {
        let mut applicable: Vec<&(u32, Egress, Action)> =
            policy.egress.rules.iter().filter(|(_, e, _)| covers(&e.net, net)).collect();
        applicable.sort_by(|a, b| {
            b.1.net.prefix_len_v6().cmp(&a.1.net.prefix_len_v6())
                .then((!b.1.ports.is_empty()).cmp(&!a.1.ports.is_empty()))
                .then((b.1.protocol != 0).cmp(&(a.1.protocol != 0)))
                .then(b.2.cmp(&a.2))
        });
        let mut value = EgressRules::default();
        let mut n = 0usize;
        for (id, e, a) in applicable {
            let ranges = if e.ports.is_empty() { vec![(0u16, 65535u16)] } else { e.ports.clone() };
            for (lo, hi) in ranges {
                if n == MAX_PORT_RULES {
                    errors.push(PolicyError {
                        file: policy.name.clone(),
                        line: policy.rules.iter().find(|r| r.id == *id).map(|r| r.line).unwrap_or(1),
                        column: 1,
                        message: format!("more than {MAX_PORT_RULES} port rules apply to {net}: merge port ranges"),
                    });
                    break;
                }
                value.rules[n] = PortRule { port_lo: lo, port_hi: hi, protocol: e.protocol, action: a.code(), _pad: [0; 2], rule_id: *id };
                n += 1;
            }
        }
        value.count = n as u32;
        let (addr, prefix_len) = mapped(net);
        egress.push(EgressEntry { addr, prefix_len, value });
    }
    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    Ok(CompiledPolicy {
        name: policy.name.clone(),
        hash: policy.hash.clone(),
        monitor: policy.mode == Mode::Monitor,
        exec_default: policy.exec.default.code(),
        write_default: policy.write.default.code(),
        egress_default: policy.egress.default.code(),
        exec: paths(&policy.exec),
        write: paths(&policy.write),
        egress,
        rules: policy.rules.clone(),
        warnings: policy.warnings.clone(),
    })
}

trait PrefixV6 {
    fn prefix_len_v6(&self) -> u8;
}

impl PrefixV6 for IpNet {
    fn prefix_len_v6(&self) -> u8 {
        match self {
            IpNet::V4(n) => 96 + n.prefix_len(),
            IpNet::V6(n) => n.prefix_len(),
        }
    }
}

/// Whether `outer` contains all of `inner` (IPv4 compared in the mapped space).
fn covers(outer: &IpNet, inner: &IpNet) -> bool {
    let (oa, ol) = mapped(outer);
    let (ia, il) = mapped(inner);
    if ol > il {
        return false;
    }
    let o = u128::from_be_bytes(oa);
    let i = u128::from_be_bytes(ia);
    let mask = if ol == 0 { 0 } else { u128::MAX << (128 - ol) };
    o & mask == i & mask
}

/// The network as a 16-byte address and prefix length (IPv4 → IPv4-mapped).
fn mapped(net: &IpNet) -> ([u8; 16], u32) {
    match net {
        IpNet::V4(n) => (n.network().to_ipv6_mapped().octets(), 96 + n.prefix_len() as u32),
        IpNet::V6(n) => (n.network().octets(), n.prefix_len() as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata:\n  name: t\nspec:\n";

    fn pol(spec: &str) -> Result<Policy, PolicyErrors> {
        parse("t.yaml", &format!("{HEAD}{spec}"))
    }

    #[test]
    fn unknown_key_is_an_error_with_location() {
        let e = pol("  exec:\n    default: deny\n    rules:\n      - {path: /usr/bin/git, acton: allow}\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("t.yaml:9:"), "{s}");
        assert!(s.contains("acton"), "{s}");
    }

    #[test]
    fn every_error_is_reported() {
        let e = pol("  exec:\n    default: deny\n    rules:\n      - {path: usr/bin/git, action: allow}\n      - {path: \"/home/*/x\", action: allow}\n  egress:\n    default: deny\n    rules:\n      - {cidr: 10.0.0.1/8, action: allow}\n      - {cidr: 10.0.0.0/8, ports: [0], action: allow}\n      - {host: example.com, action: deny}\n").unwrap_err();
        assert_eq!(e.0.len(), 5, "{e}");
        assert!(e.0[0].message.contains("absolute") && e.0[0].line == 9);
        assert!(e.0[1].message.contains("cannot be enforced in the kernel"));
        assert!(e.0[2].message.contains("write 10.0.0.0/8"), "{}", e.0[2]);
        assert!(e.0[3].message.contains("outside 1-65535"));
        assert!(e.0[4].message.contains("unsafe"));
    }

    #[test]
    fn path_keys_exact_and_prefix() {
        let p = pol("  exec:\n    default: deny\n    rules:\n      - {path: /nonexistent/tool, action: allow}\n      - {path: \"/nonexistent/dir/**\", action: deny}\n").unwrap();
        let c = compile(&p).unwrap();
        let keys: Vec<&[u8]> = c.exec.iter().map(|e| e.key.as_slice()).collect();
        assert!(keys.contains(&&b"/nonexistent/tool\0"[..]));
        assert!(keys.contains(&&b"/nonexistent/dir/"[..]));
        assert_eq!(c.exec_default, action::DENY);
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[1].line, 10);
    }

    #[test]
    fn symlinked_rule_path_compiles_to_the_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, "").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let p = pol(&format!("  exec:\n    default: deny\n    rules:\n      - {{path: {}, action: allow}}\n", link.display())).unwrap();
        let c = compile(&p).unwrap();
        let mut want = std::fs::canonicalize(&real).unwrap().into_os_string().into_vec();
        want.push(0);
        assert_eq!(c.exec[0].key, want);
        use std::os::unix::ffi::OsStringExt as _;
    }

    /// A simulation of the kernel's egress lookup over the compiled entries.
    fn kernel_egress(c: &CompiledPolicy, ip: IpAddr, port: u16, proto: u8) -> (u8, u32) {
        let addr = match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        let a = u128::from_be_bytes(addr);
        let best = c
            .egress
            .iter()
            .filter(|e| {
                let mask = if e.prefix_len == 0 { 0 } else { u128::MAX << (128 - e.prefix_len) };
                u128::from_be_bytes(e.addr) & mask == a & mask
            })
            .max_by_key(|e| e.prefix_len);
        if let Some(e) = best {
            for r in &e.value.rules[..e.value.count as usize] {
                if port >= r.port_lo && port <= r.port_hi && (r.protocol == 0 || r.protocol == proto) {
                    return (r.action, r.rule_id);
                }
            }
        }
        (c.egress_default, 0)
    }

    #[test]
    fn egress_precedence_longest_prefix_then_ports_then_protocol() {
        let p = pol("  egress:\n    default: deny\n    rules:\n      - {cidr: 10.0.0.0/8, action: allow}\n      - {cidr: 10.1.0.0/16, ports: [22], action: deny}\n      - {cidr: 10.1.0.0/16, ports: [\"8000-8100\"], protocol: udp, action: deny}\n      - {cidr: \"::1/128\", ports: [443], action: allow}\n").unwrap();
        let c = compile(&p).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(kernel_egress(&c, ip("10.2.3.4"), 22, 6), (action::ALLOW, 1));
        assert_eq!(kernel_egress(&c, ip("10.1.3.4"), 22, 6), (action::DENY, 2));
        assert_eq!(kernel_egress(&c, ip("10.1.3.4"), 8050, 17), (action::DENY, 3));
        // Covering /8 rule still applies inside the /16 for other ports.
        assert_eq!(kernel_egress(&c, ip("10.1.3.4"), 8050, 6), (action::ALLOW, 1));
        assert_eq!(kernel_egress(&c, ip("11.0.0.1"), 80, 6), (action::DENY, 0));
        assert_eq!(kernel_egress(&c, ip("::1"), 443, 6), (action::ALLOW, 4));
        assert_eq!(kernel_egress(&c, ip("::1"), 80, 6), (action::DENY, 0));
    }

    #[test]
    fn duplicate_path_keeps_the_stronger_action() {
        let p = pol("  write:\n    default: allow\n    rules:\n      - {path: \"/x/**\", action: allow}\n      - {path: \"/x/**\", action: deny}\n").unwrap();
        let c = compile(&p).unwrap();
        assert_eq!(c.write.len(), 1);
        assert_eq!(c.write[0].value.action, action::DENY);
        assert_eq!(c.write[0].value.rule_id, 2);
    }

    #[test]
    fn host_rules_and_ask_warn() {
        let p = pol("  egress:\n    default: ask\n    rules:\n      - {host: api.github.com, ports: [443], action: allow}\n").unwrap();
        let c = compile(&p).unwrap();
        assert!(c.egress.is_empty());
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    }

    #[test]
    fn example_policies_compile() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().and_then(|x| x.to_str()) == Some("yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let p = parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
                compile(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 4, "expected the example policies in {}", dir.display());
    }
}
