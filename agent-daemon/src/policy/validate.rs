//! From the marked YAML tree to a validated [`Policy`], collecting every problem.
//!
//! Each check reports at the node it is about (the key for an unknown key, the value
//! for a bad value, the rule for a rule-level conflict), with a hint a user can act
//! on. Problems do not stop the walk: one run lists everything wrong in the file.
//! Whether the kernel can enforce a valid rule is `compile`'s concern, not this one.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use ipnet::IpNet;
use sha2::{Digest as _, Sha256};

use super::{
    builtin::Builtins,
    error::{ErrorKind, Errors, Location, PolicyErrors},
    glob::{Glob, GlobError},
    model::{
        mapped_net, ActionKind, Approvals, EgressRule, EgressSection, Mode, PathRule, PathSection, Policy, PortRange,
        Protocol, Receipts, System, Target, UnixRule, UnixSection, UnixTarget,
    },
    parse::{Node, Value},
    path,
};

/// The only format this build reads.
pub const API_VERSION: &str = "agentd.io/v1";
pub const KIND: &str = "AgentPolicy";

const TOP_KEYS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const METADATA_KEYS: &[&str] = &["name", "description"];
const SPEC_KEYS: &[&str] = &["mode", "exec", "write", "egress", "system", "approvals", "receipts"];
const SECTION_KEYS: &[&str] = &["default", "rules"];
const EGRESS_KEYS: &[&str] = &["default", "rules", "unix"];
const PATH_RULE_KEYS: &[&str] = &["path", "action"];
const EGRESS_RULE_KEYS: &[&str] = &["cidr", "host", "ports", "protocol", "action"];
const APPROVALS_KEYS: &[&str] = &["timeout", "on_timeout", "max_pending"];
const RECEIPTS_KEYS: &[&str] = &["allows"];
const SYSTEM_KEYS: &[&str] = &System::KEYS;

/// The longest name an abstract socket can have: `sun_path` holds 108 bytes, the
/// first of which is the NUL that makes it abstract.
const ABSTRACT_NAME_MAX: usize = 107;

/// Validates a parsed document into a policy, with the built-in unix rules of
/// `builtins`.
pub(crate) fn validate(file: &str, text: &str, root: &Node, builtins: &Builtins) -> Result<Policy, PolicyErrors> {
    let mut v = Validator {
        errors: Errors::new(file),
        warnings: Vec::new(),
        file: file.to_string(),
        next_id: 1,
        builtins: builtins.clone(),
    };
    let policy = v.document(root);
    let Validator { errors, warnings, .. } = v;
    errors.finish()?;
    let mut policy = policy.expect("a document without errors yields a policy");
    policy.file = file.to_string();
    policy.text = text.to_string();
    policy.hash = hex::encode(Sha256::digest(text.as_bytes()));
    policy.warnings = warnings;
    Ok(policy)
}

struct Validator {
    errors: Errors,
    warnings: Vec<String>,
    file: String,
    /// Rule ids are handed out as rules are read: exec, then write, then egress,
    /// then egress.unix, then the built-in unix rules.
    next_id: u32,
    builtins: Builtins,
}

/// A mapping's entries, already checked for unknown and repeated keys.
struct Fields<'n> {
    at: Location,
    /// Key, where the key is, value.
    entries: Vec<(&'n str, Location, &'n Node)>,
    /// Keys that an unknown key looked like a typo of: already reported, so not
    /// reported again as missing.
    typos: Vec<&'static str>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(k, ..)| *k == key).map(|(.., v)| *v)
    }
}

impl Validator {
    fn error(&mut self, kind: ErrorKind, at: Location, message: impl Into<String>, hint: impl Into<Option<String>>) {
        self.errors.push(kind, at, message, hint.into());
    }

    fn document(&mut self, root: &Node) -> Option<Policy> {
        let top = self.mapping(root, "the policy", TOP_KEYS)?;
        if let Some(n) =
            self.required(&top, "apiVersion", "the policy", format!("start the file with `apiVersion: {API_VERSION}`"))
        {
            if let Some(s) = self.string(n, "apiVersion") {
                if s != API_VERSION {
                    self.error(
                        ErrorKind::Invalid,
                        n.at,
                        format!("apiVersion {s:?} is not supported"),
                        format!("this agentd reads `apiVersion: {API_VERSION}`"),
                    );
                }
            }
        }
        if let Some(n) = self.required(&top, "kind", "the policy", format!("add `kind: {KIND}`")) {
            if let Some(s) = self.string(n, "kind") {
                if s != KIND {
                    self.error(
                        ErrorKind::Invalid,
                        n.at,
                        format!("kind {s:?} is not a policy"),
                        format!("write `kind: {KIND}`"),
                    );
                }
            }
        }
        let (name, description) =
            match self.required(&top, "metadata", "the policy", "add `metadata: {name: my-agent}`".to_string()) {
                Some(n) => self.metadata(n),
                None => (None, String::new()),
            };
        let spec = self.required(
            &top,
            "spec",
            "the policy",
            "add a `spec:` with exec, write and egress sections (see policies/)".to_string(),
        );
        let mut mode = Mode::Enforce;
        let mut sections: [Option<&Node>; 6] = [None; 6];
        if let Some(spec) = spec.and_then(|s| self.mapping(s, "spec", SPEC_KEYS)) {
            if let Some(m) = spec.get("mode") {
                mode = self
                    .choice(m, "spec.mode", &[("enforce", Mode::Enforce), ("monitor", Mode::Monitor)])
                    .unwrap_or_default();
            }
            for (i, key) in ["exec", "write", "egress", "approvals", "receipts", "system"].into_iter().enumerate() {
                sections[i] = spec.get(key);
            }
        }
        let exec = self.path_section(sections[0], "exec");
        let write = self.path_section(sections[1], "write");
        let (egress, mut unix) = self.egress_section(sections[2]);
        // After every rule of the file: their ids do not move when a rule is added.
        unix.builtins = self.builtins.unix_rules(self.next_id);
        self.next_id += unix.builtins.len() as u32;
        let approvals = sections[3].map(|n| self.approvals(n)).unwrap_or_default();
        let receipts = sections[4].map(|n| self.receipts(n)).unwrap_or_default();
        let system = sections[5].map(|n| self.system(n)).unwrap_or_default();
        self.path_conflicts(&exec);
        self.path_conflicts(&write);
        self.egress_conflicts(&egress);
        self.unix_conflicts(&unix);
        Some(Policy {
            file: String::new(),
            text: String::new(),
            hash: String::new(),
            name: name?,
            description,
            mode,
            exec,
            write,
            egress,
            unix,
            system,
            approvals,
            receipts,
            warnings: Vec::new(),
        })
    }

    fn metadata(&mut self, node: &Node) -> (Option<String>, String) {
        let Some(m) = self.mapping(node, "metadata", METADATA_KEYS) else { return (None, String::new()) };
        let description =
            m.get("description").and_then(|d| self.string(d, "metadata.description")).unwrap_or_default().to_string();
        let Some(n) =
            self.required(&m, "name", "metadata", "add `name: my-agent` (lowercase letters, digits and '-')".into())
        else {
            return (None, description);
        };
        let name = self.string(n, "metadata.name").map(str::to_string);
        if let Some(name) = &name {
            if !valid_name(name) {
                self.error(
                    ErrorKind::Invalid,
                    n.at,
                    format!("metadata.name {name:?} is not a valid name"),
                    format!(
                        "use 1 to 63 lowercase letters, digits and '-', starting with a letter or digit{}",
                        suggest_name(name).map(|s| format!(", e.g. {s:?}")).unwrap_or_default()
                    ),
                );
            }
        }
        (name, description)
    }

    fn path_section(&mut self, node: Option<&Node>, kind: &'static str) -> PathSection {
        let mut section = PathSection { default: ActionKind::Deny, rules: Vec::new() };
        let Some(node) = node else { return section };
        let Some(m) = self.mapping(node, kind, SECTION_KEYS) else { return section };
        if let Some(d) = m.get("default") {
            section.default = self.action(d, &format!("{kind}.default")).unwrap_or(ActionKind::Deny);
        }
        for rule in self.rules(m.get("rules"), kind) {
            let id = self.take_id();
            if let Some(r) = self.path_rule(rule, kind, id) {
                section.rules.push(r);
            }
        }
        section
    }

    /// `egress`, and `egress.unix` inside it (its rules' ids follow the egress
    /// rules' wherever the file writes it).
    fn egress_section(&mut self, node: Option<&Node>) -> (EgressSection, UnixSection) {
        let mut section = EgressSection { default: ActionKind::Deny, rules: Vec::new() };
        let mut unix = UnixSection { default: ActionKind::Allow, rules: Vec::new(), builtins: Vec::new() };
        let Some(node) = node else { return (section, unix) };
        let Some(m) = self.mapping(node, "egress", EGRESS_KEYS) else { return (section, unix) };
        if let Some(d) = m.get("default") {
            section.default = self.action(d, "egress.default").unwrap_or(ActionKind::Deny);
        }
        for rule in self.rules(m.get("rules"), "egress") {
            let id = self.take_id();
            if let Some(r) = self.egress_rule(rule, id) {
                section.rules.push(r);
            }
        }
        if let Some(u) = m.get("unix") {
            unix = self.unix_section(u);
        }
        (section, unix)
    }

    fn unix_section(&mut self, node: &Node) -> UnixSection {
        let mut section = UnixSection { default: ActionKind::Allow, rules: Vec::new(), builtins: Vec::new() };
        let Some(m) = self.mapping(node, "egress.unix", SECTION_KEYS) else { return section };
        if let Some(d) = m.get("default") {
            section.default = self.unix_action(d, "egress.unix.default").unwrap_or(ActionKind::Allow);
        }
        for rule in self.rules(m.get("rules"), "egress.unix") {
            let id = self.take_id();
            if let Some(r) = self.unix_rule(rule, id) {
                section.rules.push(r);
            }
        }
        section
    }

    /// allow, deny or audit: nothing can hold a connect to a local socket.
    fn unix_action(&mut self, node: &Node, what: &str) -> Option<ActionKind> {
        match self.string(node, what)? {
            "ask" => {
                self.error(
                    ErrorKind::Invalid,
                    node.at,
                    format!(
                        "{what} \"ask\" is not possible for unix sockets: nothing can hold a connect to a local socket"
                    ),
                    "use deny, or audit to allow it and report it".to_string(),
                );
                None
            }
            _ => self.choice(
                node,
                what,
                &[("allow", ActionKind::Allow), ("deny", ActionKind::Deny), ("audit", ActionKind::Audit)],
            ),
        }
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The items of a `rules:` list (an empty value means no rules).
    fn rules<'n>(&mut self, node: Option<&'n Node>, kind: &str) -> &'n [Node] {
        match node {
            None => &[],
            Some(n) if n.is_null() => &[],
            Some(Node { value: Value::Seq(items), .. }) => items,
            Some(n) => {
                let example = match kind {
                    "egress" => "- {cidr: 10.0.0.0/8, ports: [443], action: allow}",
                    "egress.unix" => "- {path: /run/docker.sock, action: deny}",
                    _ => "- {path: /usr/bin/git, action: allow}",
                };
                self.error(
                    ErrorKind::Schema,
                    n.at,
                    format!("{kind}.rules must be a list, found {}", n.describe()),
                    format!("write one rule per line, each starting with `{example}`"),
                );
                &[]
            }
        }
    }

    fn path_rule(&mut self, node: &Node, kind: &str, id: u32) -> Option<PathRule> {
        let what = format!("{kind} rule");
        let m = self.mapping(node, &what, PATH_RULE_KEYS)?;
        let path = self.required(
            &m,
            "path",
            &what,
            "add `path: /absolute/path` (or `/dir/**` for everything below dir)".into(),
        );
        let action = self.required(&m, "action", &what, "add `action: allow` (or deny, ask, audit)".into());
        let action = action.and_then(|a| self.action(a, "action"));
        let path_node = path?;
        let text = self.string(path_node, "path")?;
        let pattern = match Glob::parse(text) {
            Ok(g) => g,
            Err(e) => {
                let hint = glob_hint(text, &e);
                self.error(ErrorKind::Invalid, path_node.at, format!("path {text:?} {e}"), hint);
                return None;
            }
        };
        self.literal_wildcard_warning(text, path_node.at);
        Some(PathRule { id, pattern, action: action?, at: m.at, path_at: path_node.at, text: one_line(node) })
    }

    fn unix_rule(&mut self, node: &Node, id: u32) -> Option<UnixRule> {
        let what = "unix rule";
        let m = self.mapping(node, what, PATH_RULE_KEYS)?;
        let path = self.required(
            &m,
            "path",
            what,
            "add `path: /run/app.sock` (a socket file; `/dir/**` for every socket below dir), or `path: \"@name\"` for an abstract socket".into(),
        );
        let action = self.required(&m, "action", what, "add `action: allow` (or deny, audit)".into());
        let action = action.and_then(|a| self.unix_action(a, "action"));
        let path_node = path?;
        let text = self.string(path_node, "path")?;
        let target = match text.strip_prefix('@') {
            Some(name) => UnixTarget::Abstract(self.abstract_name(name, path_node.at)?),
            None => match Glob::parse(text) {
                Ok(g) => {
                    self.literal_wildcard_warning(text, path_node.at);
                    UnixTarget::Path(g)
                }
                Err(e) => {
                    let hint = glob_hint(text, &e);
                    self.error(ErrorKind::Invalid, path_node.at, format!("path {text:?} {e}"), hint);
                    return None;
                }
            },
        };
        Some(UnixRule {
            id,
            target,
            action: action?,
            at: m.at,
            target_at: path_node.at,
            text: one_line(node),
            builtin: None,
        })
    }

    /// The name of an abstract socket (after its `@`).
    fn abstract_name(&mut self, name: &str, at: Location) -> Option<String> {
        let problem = if name.is_empty() {
            Some((
                "the abstract socket name after `@` is empty".to_string(),
                "write `@` and the name, e.g. \"@my-service\"".to_string(),
            ))
        } else if name.len() > ABSTRACT_NAME_MAX {
            Some((
                format!("abstract socket name \"@{name}\" is {} bytes, longer than the {ABSTRACT_NAME_MAX} a socket address holds", name.len()),
                "write the name the socket is bound to; no socket can have a longer one".to_string(),
            ))
        } else if name.contains('*') {
            Some((
                format!("abstract socket name \"@{name}\" has `*`: abstract sockets are matched by their exact name"),
                "write one rule per name; `*` and `**` are wildcards only in paths".to_string(),
            ))
        } else {
            None
        };
        match problem {
            Some((message, hint)) => {
                self.error(ErrorKind::Invalid, at, message, hint);
                None
            }
            None => Some(name.to_string()),
        }
    }

    /// `?`, `[` and `{` look like wildcards but are not: say so.
    fn literal_wildcard_warning(&mut self, text: &str, at: Location) {
        if let Some(c) = text.chars().find(|c| matches!(c, '?' | '[' | ']' | '{' | '}')) {
            self.warnings.push(format!(
                "{}:{}:{}: path {text:?} contains {c:?}, which is matched literally: only * and ** are wildcards",
                self.file, at.line, at.column
            ));
        }
    }

    fn egress_rule(&mut self, node: &Node, id: u32) -> Option<EgressRule> {
        let m = self.mapping(node, "egress rule", EGRESS_RULE_KEYS)?;
        let action = self.required(&m, "action", "egress rule", "add `action: allow` (or deny, ask, audit)".into());
        let action_at = action.map(|a| a.at);
        let action = action.and_then(|a| self.action(a, "action"));
        let protocol = match m.get("protocol") {
            None => Some(None),
            Some(p) => self
                .choice(p, "protocol", &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp), ("icmp", Protocol::Icmp)])
                .map(Some),
        };
        let ports = match (m.get("ports"), protocol) {
            (None, _) => Some(Vec::new()),
            (Some(p), Some(Some(Protocol::Icmp))) => {
                self.error(
                    ErrorKind::Invalid,
                    p.at,
                    "an icmp rule has no ports: ICMP has none",
                    "remove `ports` (the rule covers ICMP and ICMPv6 to the whole cidr)".to_string(),
                );
                None
            }
            (Some(p), _) => self.ports(p),
        };
        let target = match (m.get("cidr"), m.get("host")) {
            (Some(_), Some(h)) => {
                self.error(
                    ErrorKind::Invalid,
                    h.at,
                    "an egress rule has either cidr or host, not both",
                    "split it into two rules".to_string(),
                );
                None
            }
            (None, None) => {
                self.error(
                    ErrorKind::Schema,
                    m.at,
                    "an egress rule needs cidr or host",
                    "add `cidr: 10.0.0.0/8` (a network) or `host: api.example.com` (a DNS name)".to_string(),
                );
                None
            }
            (Some(c), None) => self.cidr(c).map(|t| (t, c.at)),
            (None, Some(h)) => self.host(h).map(|t| (t, h.at)),
        };
        if let (Some((Target::Host(h), _)), Some(a @ (ActionKind::Deny | ActionKind::Audit))) = (&target, action) {
            let hint = if a == ActionKind::Deny {
                "a name's addresses are never all known, so a deny by name would leak: deny by cidr, or rely on `default: deny`"
            } else {
                "use allow (connections are reported as events anyway), or audit by cidr"
            };
            self.error(
                ErrorKind::Invalid,
                action_at.unwrap_or(m.at),
                format!("host {h:?} with action {a}: host rules can only allow or ask"),
                hint.to_string(),
            );
            return None;
        }
        if let (Some((Target::Host(h), at)), Some(Some(Protocol::Icmp))) = (&target, protocol) {
            self.error(
                ErrorKind::Invalid,
                *at,
                format!("host {h:?} with protocol icmp: ICMP is allowed by address only"),
                "write the addresses as a cidr rule with `protocol: icmp`".to_string(),
            );
            return None;
        }
        let (target, target_at) = target?;
        Some(EgressRule {
            id,
            target,
            ports: ports?,
            protocol: protocol?,
            action: action?,
            at: m.at,
            target_at,
            text: one_line(node),
        })
    }

    fn cidr(&mut self, node: &Node) -> Option<Target> {
        let s = self.string(node, "cidr")?;
        let net = match s.parse::<IpNet>() {
            Ok(n) => n,
            // A bare address means that one host.
            Err(_) => match s.parse::<IpAddr>() {
                Ok(a) => IpNet::from(a),
                Err(_) => {
                    self.error(
                        ErrorKind::Invalid,
                        node.at,
                        format!("cidr {s:?} is not an IPv4 or IPv6 network"),
                        "write a network like 10.0.0.0/8, 192.168.1.7/32 or fd00::/8".to_string(),
                    );
                    return None;
                }
            },
        };
        if net.trunc() != net {
            self.error(
                ErrorKind::Invalid,
                node.at,
                format!("cidr {s:?} has host bits set"),
                format!(
                    "write {} for the network, or {}/{} for that one host",
                    net.trunc(),
                    net.addr(),
                    net.max_prefix_len()
                ),
            );
            return None;
        }
        Some(Target::Cidr(net))
    }

    fn host(&mut self, node: &Node) -> Option<Target> {
        let s = self.string(node, "host")?;
        let name = s.trim_end_matches('.').to_ascii_lowercase();
        if !valid_host(&name) {
            self.error(
                ErrorKind::Invalid,
                node.at,
                format!("host {s:?} is not a DNS name"),
                "write a name like api.github.com, or *.example.com for its subdomains (an address goes in cidr)"
                    .to_string(),
            );
            return None;
        }
        Some(Target::Host(name))
    }

    /// `ports: [443, "8000-8100"]`, sorted and merged.
    fn ports(&mut self, node: &Node) -> Option<Vec<PortRange>> {
        let Value::Seq(items) = &node.value else {
            let hint = match &node.value {
                Value::Scalar { text, .. } if !node.is_null() => format!("write a list: `ports: [{text}]`"),
                _ => "write a list like `ports: [443, \"8000-8100\"]`, or leave ports out for every port".to_string(),
            };
            self.error(ErrorKind::Schema, node.at, format!("ports must be a list, found {}", node.describe()), hint);
            return None;
        };
        if items.is_empty() {
            self.error(
                ErrorKind::Invalid,
                node.at,
                "ports is empty, so the rule could never match",
                "list some ports, or leave ports out for every port".to_string(),
            );
            return None;
        }
        let mut ranges = Vec::new();
        let mut ok = true;
        for item in items {
            match self.port_range(item) {
                Some(r) => ranges.push(r),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        ranges.sort();
        let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(r.lo) <= u32::from(last.hi) + 1 => last.hi = last.hi.max(r.hi),
                _ => merged.push(r),
            }
        }
        Some(merged)
    }

    fn port_range(&mut self, node: &Node) -> Option<PortRange> {
        let Value::Scalar { text, .. } = &node.value else {
            self.error(
                ErrorKind::Schema,
                node.at,
                format!("a port must be a number or a \"lo-hi\" range, found {}", node.describe()),
                "write e.g. 443 or \"8000-8100\"".to_string(),
            );
            return None;
        };
        let port = |s: &str| -> Result<u16, String> {
            let s = s.trim();
            match s.parse::<u64>() {
                Ok(n @ 1..=65535) => Ok(n as u16),
                Ok(n) => Err(format!("port {n} is outside 1-65535")),
                Err(_) => Err(format!("{s:?} is not a port number")),
            }
        };
        let result = match text.split_once('-') {
            None => port(text).map(|p| PortRange { lo: p, hi: p }),
            Some((lo, hi)) => match (port(lo), port(hi)) {
                (Ok(lo), Ok(hi)) if lo <= hi => Ok(PortRange { lo, hi }),
                (Ok(lo), Ok(hi)) => Err(format!("port range \"{text}\" runs backwards: write \"{hi}-{lo}\"")),
                (Err(e), _) | (_, Err(e)) => Err(format!("port range {text:?}: {e}")),
            },
        };
        match result {
            Ok(r) => Some(r),
            Err(message) => {
                self.error(
                    ErrorKind::Invalid,
                    node.at,
                    message,
                    "ports are 1-65535, one number or a quoted \"lo-hi\" range".to_string(),
                );
                None
            }
        }
    }

    fn approvals(&mut self, node: &Node) -> Approvals {
        let mut a = Approvals::default();
        let Some(m) = self.mapping(node, "approvals", APPROVALS_KEYS) else { return a };
        if let Some(t) = m.get("timeout") {
            if let Some(d) = self.duration(t) {
                a.timeout = d;
            }
        }
        if let Some(t) = m.get("on_timeout") {
            if let Some(v) =
                self.choice(t, "approvals.on_timeout", &[("deny", ActionKind::Deny), ("allow", ActionKind::Allow)])
            {
                a.on_timeout = v;
            }
        }
        if let Some(n) = m.get("max_pending") {
            match self.string(n, "approvals.max_pending").map(|s| s.parse::<u32>()) {
                Some(Ok(v)) if v >= 1 => a.max_pending = v,
                Some(Ok(_)) => self.error(
                    ErrorKind::Invalid,
                    n.at,
                    "approvals.max_pending is 0, so nothing could ever be held",
                    "write at least 1 (8 is a good start); to never hold, use deny instead of ask".to_string(),
                ),
                Some(Err(_)) => self.error(
                    ErrorKind::Invalid,
                    n.at,
                    "approvals.max_pending must be a whole number",
                    "write e.g. `max_pending: 8`".to_string(),
                ),
                None => {}
            }
        }
        a
    }

    fn duration(&mut self, node: &Node) -> Option<Duration> {
        let s = self.string(node, "approvals.timeout")?;
        match humantime::parse_duration(s) {
            Ok(d) if d >= Duration::from_secs(1) => Some(d),
            Ok(_) => {
                self.error(
                    ErrorKind::Invalid,
                    node.at,
                    format!("approvals.timeout {s:?} is shorter than a second: nobody could answer in time"),
                    "write e.g. 60s or 5m".to_string(),
                );
                None
            }
            Err(_) => {
                let hint = if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() {
                    format!("add a unit: {s}s")
                } else {
                    "write a duration like 60s, 5m or 1h".to_string()
                };
                self.error(ErrorKind::Invalid, node.at, format!("approvals.timeout {s:?} is not a duration"), hint);
                None
            }
        }
    }

    /// `spec.system`: each key `allow` or `deny` (left out: deny).
    fn system(&mut self, node: &Node) -> System {
        let mut system = System::default();
        let Some(m) = self.mapping(node, "system", SYSTEM_KEYS) else { return system };
        for (key, _, value) in &m.entries {
            let what = format!("system.{key}");
            // ask and audit have no meaning here: the kernel either lets the
            // whole class through (within its limits) or refuses it.
            let allowed = match self.string(value, &what) {
                Some(s @ ("ask" | "audit")) => {
                    self.error(
                        ErrorKind::Invalid,
                        value.at,
                        format!("{what} {s:?} is not one of: allow, deny"),
                        format!("`{key}` is allowed or denied as a whole: write `{key}: allow` or `{key}: deny`"),
                    );
                    None
                }
                Some(_) => self.choice(value, &what, &[("allow", true), ("deny", false)]),
                None => None,
            };
            match (*key, allowed) {
                ("namespaces", Some(a)) => system.namespaces = a,
                ("ptrace", Some(a)) => system.ptrace = a,
                _ => {}
            }
        }
        system
    }

    fn receipts(&mut self, node: &Node) -> Receipts {
        let mut r = Receipts::default();
        let Some(m) = self.mapping(node, "receipts", RECEIPTS_KEYS) else { return r };
        if let Some(a) = m.get("allows") {
            match &a.value {
                Value::Scalar { text, plain: true } if matches!(text.as_str(), "true" | "True" | "TRUE") => {
                    r.allows = true
                }
                Value::Scalar { text, plain: true } if matches!(text.as_str(), "false" | "False" | "FALSE") => {
                    r.allows = false
                }
                _ => self.error(
                    ErrorKind::Invalid,
                    a.at,
                    "receipts.allows must be true or false",
                    "write `allows: true` or `allows: false` (without quotes)".to_string(),
                ),
            }
        }
        r
    }

    // ----- conflicts -------------------------------------------------------------

    /// The same path twice in one list: only one can ever apply.
    fn path_conflicts(&mut self, section: &PathSection) {
        self.duplicates(section.rules.iter().map(|r| (r.pattern.as_str().to_string(), r.at, r.action)));
    }

    /// Reports every rule whose (path, where, action) repeats the path of an
    /// earlier one.
    fn duplicates(&mut self, rules: impl Iterator<Item = (String, Location, ActionKind)>) {
        let mut first: HashMap<String, (Location, ActionKind)> = HashMap::new();
        for (path, at, action) in rules {
            match first.get(&path) {
                None => {
                    first.insert(path, (at, action));
                }
                Some(&(f_at, f_action)) => {
                    let hint = if f_action == action {
                        "remove one of them".to_string()
                    } else {
                        format!("only the stronger one ({}) could ever apply: remove the other", f_action.max(action))
                    };
                    self.error(
                        ErrorKind::Conflict,
                        at,
                        format!("rule for path {path:?} duplicates the rule at line {}", f_at.line),
                        hint,
                    );
                }
            }
        }
    }

    /// Unix rules on the same path (or abstract name) twice, and patterns that
    /// repeat a built-in pattern: a pattern of the file never wins over a built-in
    /// rule, so such a rule could never match.
    fn unix_conflicts(&mut self, section: &UnixSection) {
        let shown = |t: &UnixTarget| match t {
            UnixTarget::Path(g) => g.as_str().to_string(),
            UnixTarget::Abstract(name) => format!("@{name}"),
        };
        self.duplicates(section.rules.iter().map(|r| (shown(&r.target), r.at, r.action)));
        for r in &section.rules {
            let UnixTarget::Path(g) = &r.target else { continue };
            let repeats = section.builtins.iter().find(|b| matches!(&b.target, UnixTarget::Path(p) if p == g));
            if let (false, Some(b)) = (g.is_exact(), repeats) {
                self.error(
                    ErrorKind::Conflict,
                    r.at,
                    format!(
                        "unix rule for {:?} can never match: the built-in rule {} protects every socket it names ({})",
                        g.as_str(),
                        b.id,
                        b.builtin.unwrap_or_default()
                    ),
                    "only an exact path replaces a built-in rule: name each socket, e.g. /run/user/1000/bus"
                        .to_string(),
                );
            }
        }
    }

    /// Egress rules that can never be the first match: identical to another, or on
    /// the same network with every port and protocol they name already taken by
    /// rules that come first (a longer CIDR never loses to a shorter one, so only
    /// the same network can shadow a rule completely).
    fn egress_conflicts(&mut self, section: &EgressSection) {
        let mut by_net: HashMap<(u128, u8), Vec<&EgressRule>> = HashMap::new();
        let mut hosts: HashMap<(&str, &[PortRange], Option<Protocol>), &EgressRule> = HashMap::new();
        for r in &section.rules {
            match &r.target {
                Target::Cidr(net) => by_net.entry(mapped_net(net)).or_default().push(r),
                Target::Host(h) => {
                    if let Some(f) = hosts.get(&(h.as_str(), r.ports.as_slice(), r.protocol)) {
                        self.error(
                            ErrorKind::Conflict,
                            r.at,
                            format!("rule for host {h:?} duplicates the rule at line {}", f.at.line),
                            "remove one of them".to_string(),
                        );
                    } else {
                        hosts.insert((h.as_str(), r.ports.as_slice(), r.protocol), r);
                    }
                }
            }
        }
        let mut found = Vec::new();
        for rules in by_net.values() {
            let mut ordered = rules.clone();
            ordered.sort_by_key(|r| egress_rank_within_net(r));
            for (i, r) in ordered.iter().enumerate() {
                let identical = ordered
                    .iter()
                    .filter(|o| o.id != r.id && o.ports == r.ports && o.protocol == r.protocol)
                    .min_by_key(|o| o.id);
                if let Some(first) = identical {
                    // Identical rules are reported once each, against the first in the file.
                    if first.id < r.id {
                        let hint = if first.action == r.action {
                            "remove one of them".to_string()
                        } else {
                            format!(
                                "only the stronger one ({}) could ever apply: remove the other",
                                first.action.max(r.action)
                            )
                        };
                        found.push((
                            r.at,
                            format!(
                                "egress rule duplicates the rule at line {} (same cidr, ports and protocol)",
                                first.at.line
                            ),
                            hint,
                        ));
                    }
                    continue;
                }
                let earlier = &ordered[..i];
                if shadowed(r, earlier) {
                    let lines: Vec<String> =
                        earlier.iter().filter(|o| overlaps(o, r)).map(|o| o.at.line.to_string()).collect();
                    found.push((
                        r.at,
                        format!(
                            "egress rule can never match: on the same cidr, the rule(s) at line {} come first for every port and protocol it names",
                            lines.join(", ")
                        ),
                        "remove it, or narrow the earlier rule (on one cidr, rules with ports come before rules without, then rules with a protocol, then deny > ask > audit > allow)".to_string(),
                    ));
                }
            }
        }
        found.sort_by_key(|(at, ..)| *at);
        for (at, message, hint) in found {
            self.error(ErrorKind::Conflict, at, message, hint);
        }
    }

    // ----- shapes and scalars ------------------------------------------------------

    /// A mapping with only `allowed` keys, each once.
    fn mapping<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&'static str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                ErrorKind::Schema,
                node.at,
                format!("{what} must be a mapping, found {}", node.describe()),
                format!("write it as `key: value` lines; its keys are: {}", allowed.join(", ")),
            );
            return None;
        };
        let mut fields = Fields { at: node.at, entries: Vec::new(), typos: Vec::new() };
        for (k, v) in entries {
            let Value::Scalar { text: key, .. } = &k.value else {
                self.error(
                    ErrorKind::Schema,
                    k.at,
                    format!("a key in {what} must be a plain word, found {}", k.describe()),
                    None,
                );
                continue;
            };
            if !allowed.contains(&key.as_str()) {
                let typo = did_you_mean(key, allowed);
                fields.typos.extend(typo);
                let hint = typo.map(|s| format!("did you mean {s:?}?"));
                self.error(
                    ErrorKind::Schema,
                    k.at,
                    format!("unknown key {key:?} in {what} (expected one of: {})", allowed.join(", ")),
                    hint,
                );
                continue;
            }
            if let Some((_, first, _)) = fields.entries.iter().find(|(f, ..)| *f == key.as_str()) {
                let line = first.line;
                self.error(
                    ErrorKind::Schema,
                    k.at,
                    format!("key {key:?} appears twice in {what} (first at line {line})"),
                    "keep one of them".to_string(),
                );
                continue;
            }
            fields.entries.push((key.as_str(), k.at, v));
        }
        Some(fields)
    }

    fn required<'n>(&mut self, fields: &Fields<'n>, key: &str, what: &str, hint: String) -> Option<&'n Node> {
        let v = fields.get(key);
        if v.is_none() && !fields.typos.contains(&key) {
            self.error(ErrorKind::Schema, fields.at, format!("missing key {key:?} in {what}"), hint);
        }
        v
    }

    /// A non-empty scalar.
    fn string<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        match &node.value {
            Value::Scalar { text, .. } if !node.is_null() => Some(text),
            _ => {
                self.error(
                    ErrorKind::Schema,
                    node.at,
                    format!("{what} must be a value, found {}", node.describe()),
                    None,
                );
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, node: &Node, what: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(node, what)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = did_you_mean(s, &names).map(|n| format!("did you mean {n:?}?"));
        self.error(ErrorKind::Invalid, node.at, format!("{what} {s:?} is not one of: {}", names.join(", ")), hint);
        None
    }

    fn action(&mut self, node: &Node, what: &str) -> Option<ActionKind> {
        let options: Vec<(&str, ActionKind)> = ActionKind::ALL.iter().map(|a| (a.as_str(), *a)).collect();
        self.choice(node, what, &options)
    }
}

/// The order of rules on one network: ports first, then protocol, then the
/// stronger action, then file order. (Across networks the longer prefix comes
/// first; `eval` and `compile` add that.)
pub(crate) fn egress_rank_within_net(r: &EgressRule) -> (bool, bool, std::cmp::Reverse<ActionKind>, u32) {
    (r.ports.is_empty(), r.protocol.is_none(), std::cmp::Reverse(r.action), r.id)
}

/// Whether `earlier` matches some (protocol, port) that `r` matches.
fn overlaps(earlier: &EgressRule, r: &EgressRule) -> bool {
    let proto = [Protocol::Tcp, Protocol::Udp, Protocol::Icmp]
        .into_iter()
        .any(|p| earlier.covers_protocol(p) && r.covers_protocol(p));
    proto
        && (earlier.ports.is_empty()
            || r.ports.is_empty()
            || earlier.ports.iter().any(|e| r.ports.iter().any(|p| e.lo <= p.hi && p.lo <= e.hi)))
}

/// Whether every (protocol, port) `r` matches is matched by a rule in `earlier`.
fn shadowed(r: &EgressRule, earlier: &[&EgressRule]) -> bool {
    let all = [PortRange { lo: 0, hi: 65535 }];
    let want: &[PortRange] = if r.ports.is_empty() { &all } else { &r.ports };
    let protocols: &[Protocol] = match r.protocol {
        Some(Protocol::Tcp) => &[Protocol::Tcp],
        Some(Protocol::Udp) => &[Protocol::Udp],
        Some(Protocol::Icmp) => &[Protocol::Icmp],
        None => &[Protocol::Tcp, Protocol::Udp],
    };
    protocols.iter().all(|&p| {
        let mut have: Vec<PortRange> = earlier
            .iter()
            .filter(|o| o.covers_protocol(p))
            .flat_map(|o| if o.ports.is_empty() { all.to_vec() } else { o.ports.clone() })
            .collect();
        have.sort();
        want.iter().all(|w| range_covered(*w, &have))
    })
}

/// Whether the union of sorted `have` ranges contains all of `w`.
fn range_covered(w: PortRange, have: &[PortRange]) -> bool {
    let mut next = u32::from(w.lo); // first port not yet known to be covered
    for h in have {
        if u32::from(h.lo) > next {
            break;
        }
        next = next.max(u32::from(h.hi) + 1);
        if next > u32::from(w.hi) {
            return true;
        }
    }
    next > u32::from(w.hi)
}

/// `[a-z0-9][a-z0-9-]{0,62}`: usable as a file name, a label and a CLI argument.
fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A valid name close to an invalid one (`My_Agent` → `my-agent`).
fn suggest_name(n: &str) -> Option<String> {
    let s: String = n
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .trim_start_matches('-')
        .chars()
        .take(63)
        .collect();
    (valid_name(&s) && s != n).then_some(s)
}

/// A DNS name, optionally `*.` + name for its subdomains.
fn valid_host(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.contains(|c: char| c.is_ascii_alphabetic())
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

/// What to write instead of a malformed path pattern.
fn glob_hint(text: &str, e: &GlobError) -> String {
    match e {
        GlobError::Relative if text.starts_with('~') => {
            "`~` is not expanded: write the home directory out, e.g. /home/alice/work/**".into()
        }
        GlobError::Relative => format!("write it from the root, e.g. \"/{}\"", text.trim_start_matches("./")),
        GlobError::TrailingSlash => {
            let t = text.trim_end_matches('/');
            format!("write {t} for that path itself, or {t}/** for everything below it")
        }
        GlobError::EmptyComponent | GlobError::DotComponent(_) => match path::lexical(text.as_bytes()) {
            Some(n) => format!("write it normalised: {n}"),
            None => "write it normalised, without `.`, `..` or `//`".into(),
        },
        GlobError::BadDoubleStar(_) => {
            "write `**` as a whole component for any depth (/usr/lib/**), or `*` to match within one name (/usr/bin/py*)".into()
        }
        GlobError::RepeatedDoubleStar => "write `**` once".into(),
        GlobError::Nul => "remove the NUL byte".into(),
    }
}

/// The closest of `options` to a misspelt word, if it is close enough to be a typo.
fn did_you_mean<'a>(word: &str, options: &[&'a str]) -> Option<&'a str> {
    options
        .iter()
        .map(|o| (edit_distance(&word.to_ascii_lowercase(), &o.to_ascii_lowercase()), *o))
        .filter(|(d, o)| *d <= (o.len() / 3).max(1) || common_prefix(word, o) >= 5.min(o.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x.eq_ignore_ascii_case(y)).count()
}

/// Edits (insert, delete, substitute, swap two neighbours) between two words: the
/// swap counts once because `tpc` for `tcp` is one slip of the fingers.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j - 1] + cost).min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// A node in one line of flow YAML, as written: `{path: /usr/bin/git, action: allow}`.
fn one_line(node: &Node) -> String {
    let mut out = String::new();
    render(node, &mut out);
    out
}

fn render(node: &Node, out: &mut String) {
    match &node.value {
        Value::Scalar { text, plain: true } => out.push_str(text),
        Value::Scalar { text, plain: false } => out.push_str(&format!("{text:?}")),
        Value::Seq(items) => {
            out.push('[');
            for (i, n) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(n, out);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(k, out);
                out.push_str(": ");
                render(v, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("coder"));
        assert!(valid_name("0-a-"));
        assert!(valid_name(&"a".repeat(63)));
        assert!(!valid_name(&"a".repeat(64)));
        assert!(!valid_name("-a"));
        assert!(!valid_name("Coder"));
        assert!(!valid_name("a_b"));
        assert!(!valid_name(""));
        assert_eq!(suggest_name("My_Agent").as_deref(), Some("my-agent"));
    }

    #[test]
    fn hosts() {
        assert!(valid_host("api.github.com"));
        assert!(valid_host("*.githubusercontent.com"));
        assert!(valid_host("localhost"));
        assert!(!valid_host("*"));
        assert!(!valid_host("a.*.com"));
        assert!(!valid_host("10.0.0.1"));
        assert!(!valid_host("-a.com"));
        assert!(!valid_host("a..com"));
    }

    #[test]
    fn typos() {
        assert_eq!(did_you_mean("acton", PATH_RULE_KEYS), Some("action"));
        assert_eq!(did_you_mean("pth", PATH_RULE_KEYS), Some("path"));
        assert_eq!(did_you_mean("foo", PATH_RULE_KEYS), None);
        assert_eq!(did_you_mean("alow", &["allow", "deny", "ask", "audit"]), Some("allow"));
        assert_eq!(did_you_mean("enforcing", &["enforce", "monitor"]), Some("enforce"));
        assert_eq!(did_you_mean("icmp", &["tcp", "udp"]), None);
        assert_eq!(did_you_mean("tpc", &["tcp", "udp"]), Some("tcp"));
        assert_eq!(did_you_mean("TCP", &["tcp", "udp"]), Some("tcp"));
    }

    #[test]
    fn port_cover() {
        let r = |lo, hi| PortRange { lo, hi };
        assert!(range_covered(r(5, 10), &[r(1, 6), r(7, 12)]));
        assert!(!range_covered(r(5, 10), &[r(1, 6), r(8, 12)]));
        assert!(range_covered(r(0, 65535), &[r(0, 65535)]));
        assert!(!range_covered(r(443, 443), &[]));
    }
}
