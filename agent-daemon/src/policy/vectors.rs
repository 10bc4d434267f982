//! Conformance vectors: policies, scratch-directory fixtures and actions with the
//! decision the format gives them (`tests/vectors/*.yaml`, described in
//! `tests/vectors/README.md`).
//!
//! The same files are replayed twice: here against [`evaluate_as`](super::evaluate_as)
//! (the test at the bottom, under `cargo test`), and against the real kernel by the
//! integration tests, which apply each policy, bind a cgroup and perform each action
//! in a real process. So everything a vector names lives under the placeholder
//! `@ROOT@`, a fresh scratch directory that [`VectorFile::materialize`] fills, and
//! egress vectors stay in documentation, loopback and private address ranges.
//!
//! Loading checks everything that can be checked without a filesystem (shapes,
//! unknown keys, placeholders, address ranges, paths that would leave `@ROOT@`),
//! and every error names the file, the line and the vector, so that a mistake in
//! one of hundreds of vectors is found by reading one line. The one way out of
//! `@ROOT@`: a unix connect to a socket a built-in rule protects
//! (`/run/docker.sock`, ...), since those rules are about exactly those paths.

use std::{
    fs, io,
    net::{IpAddr, SocketAddr},
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer};

use super::{
    compiled::CompiledPolicy,
    evaluate_as,
    parse::{parse_yaml, Node, Value},
    path, Action, ActionKind, Decision, Mode, Policy, PolicyErrors, Protocol, Standing,
};

/// The placeholder for the scratch directory, in policies and vectors alike.
pub const ROOT: &str = "@ROOT@";

/// What [`VectorFile::materialize`] writes for an `exec` fixture when no real binary
/// is given: enough for `stat` and the evaluator; the kernel replay copies a real
/// executable instead.
const PLACEHOLDER_EXEC: &[u8] = b"#!/bin/sh\nexit 0\n";

/// One `tests/vectors/*.yaml` file: a policy (with `@ROOT@` placeholders), the
/// fixture it needs, the identity's standing, and the vectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorFile {
    /// The file, as given to the loader (used in every message).
    pub path: PathBuf,
    /// The policy text, placeholders unsubstituted; `None` only when `identity` is
    /// `no-policy`.
    pub policy_text: Option<String>,
    /// The line of the vector file on which the policy's first line is written, so
    /// policy errors can point into the vector file (0 when not a block scalar).
    pub policy_line: usize,
    /// Created under `@ROOT@`, in order, before anything is evaluated.
    pub files: Vec<Fixture>,
    /// The identity's standing: anything but `Active` denies every action (rule 0).
    pub identity: Standing,
    pub vectors: Vec<Vector>,
}

/// One `files:` entry. `path` is relative to `@ROOT@`, without `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixture {
    pub path: String,
    pub kind: FixtureKind,
    /// Line of the entry in the vector file.
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FixtureKind {
    /// An executable regular file (the kernel replay copies a real binary here).
    Exec,
    /// An empty regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link. `target` is stored as written after substitution: relative
    /// to the link's directory, or `@ROOT@/...`.
    Symlink { target: String },
    /// A hard link to an earlier `exec` or `file` fixture (`target` relative to
    /// `@ROOT@`, like `path`).
    Hardlink { target: String },
    /// A unix socket file (bound, nobody listening).
    Socket,
}

/// One action and what the format says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vector {
    /// Unique within its file.
    pub name: String,
    /// Line of the vector in its file.
    pub line: usize,
    pub action: VectorAction,
    pub expected: Expected,
    /// Set when the format's answer (in `expected`) and the evaluator's disagree:
    /// why. Such a vector is reported but does not fail the userspace run.
    pub known_divergence: Option<String>,
}

/// An action, paths unsubstituted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VectorAction {
    /// `execve(path)`. `path` is `@ROOT@/...` and names an existing executable
    /// (a fixture, possibly through links).
    Exec { path: String },
    /// An `O_WRONLY|O_APPEND` open of `path` (created empty beforehand, like the
    /// kernel replay does: see [`Vector::prepare`]). A relative `path` is opened
    /// from `cwd`, which is then `@ROOT@/...`.
    Write { path: String, cwd: Option<String> },
    /// A non-blocking TCP connect, a UDP connect and send, or an ICMP echo
    /// request from a ping socket (`addr`'s port is then 0).
    Connect { addr: SocketAddr, protocol: Protocol },
    /// A connect to a local socket: `@ROOT@/...`, a socket a built-in rule
    /// protects (absolute), or an abstract socket `@name`.
    Unix { path: String },
}

/// The decision and the rule that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub decision: Verdict,
    /// The rule's id (file order: exec rules, then write, then egress, from 1);
    /// 0 for the kind's default, written `default`.
    pub rule: u32,
}

/// A decision as an agent experiences it. In monitor mode a deny or ask is
/// allowed and reported: `WouldDeny`, `WouldAsk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Audit,
    Ask,
    Deny,
    WouldAsk,
    WouldDeny,
}

impl Verdict {
    pub const ALL: [Verdict; 6] =
        [Verdict::Allow, Verdict::Audit, Verdict::Ask, Verdict::Deny, Verdict::WouldAsk, Verdict::WouldDeny];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Audit => "audit",
            Verdict::Ask => "ask",
            Verdict::Deny => "deny",
            Verdict::WouldAsk => "would-ask",
            Verdict::WouldDeny => "would-deny",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The verdict of a decision under a policy in `mode`, for an identity in
    /// `standing` (only an active identity's policy can be in monitor mode).
    pub fn of(action: ActionKind, mode: Mode, standing: Standing) -> Verdict {
        let monitor = mode == Mode::Monitor && standing == Standing::Active;
        match action {
            ActionKind::Allow => Verdict::Allow,
            ActionKind::Audit => Verdict::Audit,
            ActionKind::Ask if monitor => Verdict::WouldAsk,
            ActionKind::Ask => Verdict::Ask,
            ActionKind::Deny if monitor => Verdict::WouldDeny,
            ActionKind::Deny => Verdict::Deny,
        }
    }

    /// What the policy says, before monitor mode softens it.
    pub fn action(self) -> ActionKind {
        match self {
            Verdict::Allow => ActionKind::Allow,
            Verdict::Audit => ActionKind::Audit,
            Verdict::Ask | Verdict::WouldAsk => ActionKind::Ask,
            Verdict::Deny | Verdict::WouldDeny => ActionKind::Deny,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.rule {
            0 => write!(f, "{} by the default", self.decision),
            id => write!(f, "{} by rule {id}", self.decision),
        }
    }
}

/// Replaces every `@ROOT@` with `root` (which must be valid UTF-8: a temp dir is).
pub fn substitute(text: &str, root: &Path) -> String {
    text.replace(ROOT, &root.to_string_lossy())
}

/// What the userspace evaluator says about `action`, in the terms of a vector.
/// `policy` is `None` for an identity without one.
pub fn judge(policy: Option<&Policy>, standing: Standing, action: &Action) -> (Expected, Decision) {
    let d = evaluate_as(policy, standing, action);
    let mode = policy.map_or(Mode::Enforce, Policy::mode);
    (Expected { decision: Verdict::of(d.action, mode, standing), rule: d.rule_id }, d)
}

/// Loads every `*.yaml` file in `dir`, sorted by name. All problems in all files
/// are reported together, one per line.
pub fn load_dir(dir: &Path) -> Result<Vec<VectorFile>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().is_some_and(|x| x == "yaml") {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(format!("{}: no *.yaml vector files", dir.display()));
    }
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match load_file(&path) {
            Ok(f) => files.push(f),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors.join("\n"))
    }
}

/// Loads one vector file.
pub fn load_file(path: &Path) -> Result<VectorFile, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_file(path, &text)
}

/// Parses a vector file's text; `path` is only used in messages.
pub fn parse_file(path: &Path, text: &str) -> Result<VectorFile, String> {
    let name = path.display().to_string();
    // The marked tree gives each list item its line; serde gives the typed shape
    // and refuses unknown keys. A syntax error fails both, and serde's says where.
    let tree = parse_yaml(&name, text).ok();
    let vector_items = tree.as_ref().map(|t| items(t, "vectors")).unwrap_or_default();
    let file_items = tree.as_ref().map(|t| items(t, "files")).unwrap_or_default();
    let raw: RawFile = serde_yaml::from_str(text).map_err(|e| {
        let (at, message) = match e.location() {
            Some(l) => {
                let msg = e.to_string();
                let suffix = format!(" at line {} column {}", l.line(), l.column());
                let msg = msg.strip_suffix(&suffix).map(str::to_string).unwrap_or(msg);
                (format!("{name}:{}:{}", l.line(), l.column()), (msg, l.line()))
            }
            None => (name.clone(), (e.to_string(), 0)),
        };
        let (message, line) = message;
        // Name the vector the error is in, if it is in one.
        let within = vector_items.iter().rev().find(|(start, _)| line > 0 && *start <= line);
        match within {
            Some((_, Some(v))) => format!("{at}: vector {v:?}: {message}"),
            _ => format!("{at}: {message}"),
        }
    })?;
    let policy_line = text
        .lines()
        .position(|l| {
            let rest = l.strip_prefix("policy:").map(|r| r.split('#').next().unwrap_or("").trim());
            matches!(rest, Some("|" | "|-" | "|+"))
        })
        .map_or(0, |i| i + 2);
    let mut errors = Vec::new();
    let mut check = Checker { file: &name, errors: &mut errors };
    let identity = raw.identity.map_or(Standing::Active, RawIdentity::standing);
    match (&raw.policy, identity) {
        (Some(_), Standing::NoPolicy) => check.fail(
            0,
            None,
            "identity no-policy means the identity has no policy: remove `policy`".to_string(),
        ),
        (None, s) if s != Standing::NoPolicy => {
            check.fail(0, None, format!("identity {s} needs a `policy` (only no-policy has none)"))
        }
        _ => {}
    }
    if let Some(p) = &raw.policy {
        if p.matches(ROOT).count() != p.matches(&format!("{ROOT}/")).count() {
            check.fail(policy_line, None, format!("policy: every {ROOT} must be followed by `/`"));
        }
    }

    let mut files = Vec::new();
    for (i, f) in raw.files.into_iter().enumerate() {
        let line = file_items.get(i).map_or(0, |(l, _)| *l);
        if let Some(fx) = check.fixture(f, line, &files) {
            files.push(fx);
        }
    }

    let mut vectors: Vec<Vector> = Vec::new();
    if raw.vectors.is_empty() {
        check.fail(0, None, "`vectors` is empty".to_string());
    }
    for (i, v) in raw.vectors.into_iter().enumerate() {
        let line = vector_items.get(i).map_or(0, |(l, _)| *l);
        if vectors.iter().any(|o| o.name == v.name) {
            check.fail(line, Some(&v.name), "a vector by this name comes earlier in the file: rename one".into());
        }
        let action = check.action(v.action, line, &v.name);
        let expected = Expected { decision: v.expected.decision, rule: v.expected.rule.0 };
        if identity != Standing::Active && expected != (Expected { decision: Verdict::Deny, rule: 0 }) {
            check.fail(
                line,
                Some(&v.name),
                format!("an identity that is {identity} is denied everything: expect {{decision: deny, rule: default}}"),
            );
        }
        if matches!(&v.known_divergence, Some(why) if why.trim().is_empty()) {
            check.fail(line, Some(&v.name), "known_divergence must say why".into());
        }
        if let Some(action) = action {
            vectors.push(Vector { name: v.name, line, action, expected, known_divergence: v.known_divergence });
        }
    }
    if errors.is_empty() {
        Ok(VectorFile { path: path.to_path_buf(), policy_text: raw.policy, policy_line, files, identity, vectors })
    } else {
        Err(errors.join("\n"))
    }
}

impl VectorFile {
    /// `file:line` of a vector, for messages.
    pub fn location(&self, v: &Vector) -> String {
        format!("{}:{}", self.path.display(), v.line)
    }

    /// The policy with `@ROOT@` replaced, as it is applied.
    pub fn policy_for(&self, root: &Path) -> Option<String> {
        self.policy_text.as_deref().map(|t| substitute(t, root))
    }

    /// Parses and compiles the policy for `root` (after [`materialize`], since the
    /// compiler resolves rule paths on this machine). `None` for a no-policy
    /// identity. Errors point into the vector file, with `@ROOT@` put back.
    ///
    /// [`materialize`]: VectorFile::materialize
    pub fn compile_for(&self, root: &Path) -> Result<Option<(Policy, CompiledPolicy)>, String> {
        let Some(text) = self.policy_for(root) else { return Ok(None) };
        let name = self.path.display().to_string();
        let shown = |e: PolicyErrors| {
            let root = root.to_string_lossy();
            e.iter()
                .map(|p| {
                    let line = if self.policy_line > 0 { self.policy_line - 1 + p.line } else { p.line };
                    let hint = p.hint.as_deref().map(|h| format!("; hint: {h}")).unwrap_or_default();
                    format!("{name}:{line}: policy: {}{hint}", p.message).replace(&*root, ROOT)
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let policy = super::parse(&name, &text).map_err(shown)?;
        let compiled = super::compile(&policy).map_err(shown)?;
        Ok(Some((policy, compiled)))
    }

    /// Creates the fixture under `root` (an existing, empty directory), in order.
    /// `exec` entries are copies of `exec_source` when given (the kernel replay
    /// needs a real binary), a tiny shell script otherwise; both mode 0755.
    pub fn materialize(&self, root: &Path, exec_source: Option<&Path>) -> io::Result<()> {
        for f in &self.files {
            let path = root.join(&f.path);
            let ctx = |e: io::Error| {
                io::Error::new(
                    e.kind(),
                    format!("{}:{}: files: {}: {e}", self.path.display(), f.line, path.display()),
                )
            };
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(ctx)?;
            }
            match &f.kind {
                FixtureKind::Exec => {
                    match exec_source {
                        Some(src) => fs::copy(src, &path).map(drop),
                        None => fs::write(&path, PLACEHOLDER_EXEC),
                    }
                    .map_err(ctx)?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(ctx)?;
                }
                FixtureKind::File => fs::write(&path, b"").map_err(ctx)?,
                FixtureKind::Dir => fs::create_dir_all(&path).map_err(ctx)?,
                FixtureKind::Symlink { target } => symlink(substitute(target, root), &path).map_err(ctx)?,
                FixtureKind::Hardlink { target } => fs::hard_link(root.join(target), &path).map_err(ctx)?,
                // Binding makes the socket file; it stays when the listener goes.
                FixtureKind::Socket => drop(std::os::unix::net::UnixListener::bind(&path).map_err(ctx)?),
            }
        }
        Ok(())
    }
}

impl Vector {
    /// The action as the evaluator takes it: placeholders substituted, a relative
    /// write path joined to its `cwd` (as the kernel resolves it).
    pub fn to_action(&self, root: &Path) -> Action {
        match &self.action {
            VectorAction::Exec { path } => Action::Exec { path: substitute(path, root).into() },
            VectorAction::Write { path, cwd } => {
                let path = PathBuf::from(substitute(path, root));
                let path = match cwd {
                    Some(cwd) if path.is_relative() => PathBuf::from(substitute(cwd, root)).join(path),
                    _ => path,
                };
                Action::Write { path }
            }
            VectorAction::Connect { addr, protocol } => {
                Action::Connect { addr: addr.ip(), port: addr.port(), protocol: *protocol }
            }
            VectorAction::Unix { path } => Action::ConnectUnix { path: substitute(path, root).into() },
        }
    }

    /// Makes the action's target exist the way the kernel replay does before it
    /// acts, so both judge the same files: a write target is created empty (with
    /// its directories) and then opened for appending. An exec target must already
    /// be in the fixture.
    pub fn prepare(&self, root: &Path) -> io::Result<()> {
        let (Action::Exec { path } | Action::Write { path }) = self.to_action(root) else { return Ok(()) };
        match &self.action {
            VectorAction::Exec { .. } if !path.is_file() => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("exec target {} is not an existing file: declare it under `files`", path.display()),
            )),
            VectorAction::Write { .. } => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)?;
                }
                if !path.exists() {
                    fs::write(&path, b"")?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

// ----- the file's shape ------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    policy: Option<String>,
    #[serde(default)]
    files: Vec<RawFixture>,
    identity: Option<RawIdentity>,
    vectors: Vec<RawVector>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawIdentity {
    Active,
    Revoked,
    Expired,
    NoPolicy,
}

impl RawIdentity {
    fn standing(self) -> Standing {
        match self {
            RawIdentity::Active => Standing::Active,
            RawIdentity::Revoked => Standing::Revoked,
            RawIdentity::Expired => Standing::Expired,
            RawIdentity::NoPolicy => Standing::NoPolicy,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFixture {
    path: String,
    #[serde(rename = "type")]
    kind: RawFixtureKind,
    target: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawFixtureKind {
    Exec,
    File,
    Dir,
    Symlink,
    Hardlink,
    Socket,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVector {
    name: String,
    action: RawAction,
    expected: RawExpected,
    known_divergence: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    exec: Option<String>,
    write: Option<String>,
    cwd: Option<String>,
    connect: Option<String>,
    protocol: Option<RawProtocol>,
    unix: Option<String>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawProtocol {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpected {
    #[serde(deserialize_with = "verdict")]
    decision: Verdict,
    rule: RuleRef,
}

fn verdict<'de, D: Deserializer<'de>>(d: D) -> Result<Verdict, D::Error> {
    let s = String::deserialize(d)?;
    Verdict::from_name(&s).ok_or_else(|| {
        let names: Vec<&str> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
        de::Error::custom(format!("decision {s:?} is not one of: {}", names.join(", ")))
    })
}

/// `rule: 3` or `rule: default` (0).
struct RuleRef(u32);

impl<'de> Deserialize<'de> for RuleRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = RuleRef;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a rule id (1, 2, ...) or `default`")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RuleRef, E> {
                match u32::try_from(n) {
                    Ok(id) if id > 0 => Ok(RuleRef(id)),
                    _ => Err(E::custom(format!("rule {n}: ids start at 1; write `default` for the default"))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RuleRef, E> {
                u64::try_from(n).map_err(|_| E::custom(format!("rule {n} is negative"))).and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RuleRef, E> {
                match s {
                    "default" => Ok(RuleRef(0)),
                    _ => Err(E::custom(format!("rule {s:?}: write a rule id or `default`"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The start line of each item of the top-level list `key`, and its `name`.
fn items(root: &Node, key: &str) -> Vec<(usize, Option<String>)> {
    let Value::Map(entries) = &root.value else { return Vec::new() };
    let Some((_, list)) = entries.iter().find(|(k, _)| matches!(&k.value, Value::Scalar { text, .. } if text == key))
    else {
        return Vec::new();
    };
    let Value::Seq(list) = &list.value else { return Vec::new() };
    list.iter()
        .map(|item| {
            let name = match &item.value {
                Value::Map(m) => m.iter().find_map(|(k, v)| match (&k.value, &v.value) {
                    (Value::Scalar { text: k, .. }, Value::Scalar { text: v, .. }) if k == "name" => Some(v.clone()),
                    _ => None,
                }),
                _ => None,
            };
            (item.at.line, name)
        })
        .collect()
}

// ----- checks that need no filesystem --------------------------------------------

struct Checker<'a> {
    file: &'a str,
    errors: &'a mut Vec<String>,
}

impl Checker<'_> {
    fn fail(&mut self, line: usize, vector: Option<&str>, message: String) {
        let at = if line > 0 { format!("{}:{line}", self.file) } else { self.file.to_string() };
        match vector {
            Some(v) => self.errors.push(format!("{at}: vector {v:?}: {message}")),
            None => self.errors.push(format!("{at}: {message}")),
        }
    }

    fn fixture(&mut self, f: RawFixture, line: usize, earlier: &[Fixture]) -> Option<Fixture> {
        let what = format!("files: {}", f.path);
        let mut ok = true;
        if let Err(e) = relative_inside(&f.path) {
            self.fail(line, None, format!("{what}: path {e}"));
            ok = false;
        }
        let kind = match (f.kind, f.target) {
            (RawFixtureKind::Exec, None) => FixtureKind::Exec,
            (RawFixtureKind::File, None) => FixtureKind::File,
            (RawFixtureKind::Dir, None) => FixtureKind::Dir,
            (RawFixtureKind::Socket, None) => FixtureKind::Socket,
            (RawFixtureKind::Symlink, Some(target)) => {
                // Lexically inside @ROOT@, from the link's own directory.
                let parent = f.path.rsplit_once('/').map_or("", |(p, _)| p);
                let joined = match target.strip_prefix(ROOT) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_start_matches('/').to_string(),
                    Some(_) => {
                        self.fail(line, None, format!("{what}: target: {ROOT} must be followed by `/`"));
                        return None;
                    }
                    None if target.starts_with('/') => {
                        self.fail(line, None, format!("{what}: target {target:?} is outside {ROOT}: write {ROOT}/..."));
                        return None;
                    }
                    None => format!("{parent}/{target}"),
                };
                if depth_check(&joined).is_err() {
                    self.fail(line, None, format!("{what}: target {target:?} leaves {ROOT}"));
                    ok = false;
                }
                FixtureKind::Symlink { target }
            }
            (RawFixtureKind::Hardlink, Some(target)) => {
                let rel = target.strip_prefix(&format!("{ROOT}/")).unwrap_or(&target).to_string();
                let known = earlier
                    .iter()
                    .any(|e| e.path == rel && matches!(e.kind, FixtureKind::Exec | FixtureKind::File));
                if !known {
                    self.fail(
                        line,
                        None,
                        format!("{what}: target {target:?} must be an earlier `exec` or `file` entry"),
                    );
                    ok = false;
                }
                FixtureKind::Hardlink { target: rel }
            }
            (RawFixtureKind::Symlink | RawFixtureKind::Hardlink, None) => {
                self.fail(line, None, format!("{what}: a link needs a `target`"));
                return None;
            }
            (_, Some(_)) => {
                self.fail(line, None, format!("{what}: only symlink and hardlink entries have a `target`"));
                return None;
            }
        };
        if earlier.iter().any(|e| e.path == f.path) {
            self.fail(line, None, format!("{what}: declared twice"));
            ok = false;
        }
        ok.then_some(Fixture { path: f.path, kind, line })
    }

    fn action(&mut self, a: RawAction, line: usize, name: &str) -> Option<VectorAction> {
        let mut fail = |m: String| self.fail(line, Some(name), format!("action: {m}"));
        let given =
            [a.exec.is_some(), a.write.is_some(), a.connect.is_some(), a.unix.is_some()].iter().filter(|b| **b).count();
        if given != 1 {
            fail("give exactly one of exec, write, connect or unix".into());
            return None;
        }
        if a.cwd.is_some() && a.write.is_none() {
            fail("`cwd` goes with a relative `write` path only".into());
            return None;
        }
        if a.protocol.is_some() && a.connect.is_none() {
            fail("`protocol` goes with `connect` only".into());
            return None;
        }
        if let Some(path) = a.unix {
            let checked = match path.strip_prefix('@') {
                _ if path.starts_with(ROOT) => rooted_inside(&path),
                Some("") => Err("names no abstract socket: write @ and a name".into()),
                Some(name) if name.len() > 107 => {
                    Err("is longer than an abstract socket name can be (107 bytes)".into())
                }
                Some(_) => Ok(()),
                None if protected_socket(&path) => Ok(()),
                None => Err(format!(
                    "must start with {ROOT}/, be an abstract socket @name, or a socket a built-in rule protects"
                )),
            };
            if let Err(e) = checked {
                fail(format!("unix {path:?} {e}"));
                return None;
            }
            return Some(VectorAction::Unix { path });
        }
        if let Some(path) = a.exec {
            if let Err(e) = rooted_inside(&path) {
                fail(format!("exec {path:?} {e}"));
                return None;
            }
            return Some(VectorAction::Exec { path });
        }
        if let Some(path) = a.write {
            let checked = match (&a.cwd, path.starts_with(ROOT)) {
                (None, true) => rooted_inside(&path),
                (Some(_), true) => Err("is absolute: `cwd` is only for a relative path".into()),
                (None, false) => Err(format!("is relative: give a `cwd` ({ROOT}/...) or start it with {ROOT}/")),
                (Some(cwd), false) if path.starts_with('/') => Err(format!("is outside {ROOT} (cwd {cwd:?})")),
                (Some(cwd), false) => rooted_inside(&format!("{cwd}/{path}")),
            };
            if let Err(e) = checked {
                fail(format!("write {path:?} {e}"));
                return None;
            }
            return Some(VectorAction::Write { path, cwd: a.cwd });
        }
        let text = a.connect.unwrap_or_default();
        let protocol = match a.protocol {
            None | Some(RawProtocol::Tcp) => Protocol::Tcp,
            Some(RawProtocol::Udp) => Protocol::Udp,
            Some(RawProtocol::Icmp) => Protocol::Icmp,
        };
        // ICMP has no ports: an address alone (held with port 0).
        let parsed = match protocol {
            Protocol::Icmp => match text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                Ok(ip) => Ok(SocketAddr::new(ip, 0)),
                Err(_) if text.parse::<SocketAddr>().is_ok() => {
                    Err(format!("connect {text:?}: ICMP has no ports: give the address alone"))
                }
                Err(_) => Err(format!("connect {text:?} is not an IPv4 or IPv6 address")),
            },
            _ => text
                .parse::<SocketAddr>()
                .map_err(|_| format!("connect {text:?} is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)")),
        };
        let addr = match parsed {
            Ok(a) => a,
            Err(e) => {
                fail(e);
                return None;
            }
        };
        if addr.port() == 0 && protocol != Protocol::Icmp {
            fail(format!("connect {text:?}: port 0 is not a port a connection goes to"));
            return None;
        }
        if !in_test_ranges(addr.ip()) {
            fail(format!(
                "connect {text:?} is outside the ranges vectors may use: {} (and IPv4-mapped forms)",
                TEST_RANGES.join(", ")
            ));
            return None;
        }
        Some(VectorAction::Connect { addr, protocol })
    }
}

/// Whether `path` is a socket a built-in unix rule protects (on any machine: the
/// agentd socket as the default `--socket` names it).
pub fn protected_socket(path: &str) -> bool {
    super::Builtins::default().unix_rules(1).iter().any(|r| {
        matches!(&r.target, super::UnixTarget::Path(g) if g.matches(path.as_bytes()) && path::lexical(path.as_bytes()).as_deref() == Some(path))
    })
}

/// Where a vector may connect: documentation ranges, loopback, private networks.
const TEST_RANGES: &[&str] = &[
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "2001:db8::/32",
    "::1/128",
    "fc00::/7",
];

fn in_test_ranges(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    TEST_RANGES.iter().any(|r| r.parse::<IpNet>().is_ok_and(|n| n.contains(&ip)))
}

/// A fixture path: relative, no `.`/`..`/empty components, no placeholder.
fn relative_inside(path: &str) -> Result<(), String> {
    if path.starts_with('/') || path.contains(ROOT) {
        return Err(format!("{path:?} must be relative to {ROOT} (like bin/tool)"));
    }
    if path.split('/').any(|c| matches!(c, "" | "." | "..")) {
        return Err(format!("{path:?} must not have empty, `.` or `..` components"));
    }
    Ok(())
}

/// An action path: `@ROOT@` then `/...`, not climbing above `@ROOT@` lexically.
fn rooted_inside(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix(ROOT) else { return Err(format!("must start with {ROOT}/")) };
    if !rest.is_empty() && !rest.starts_with('/') {
        return Err(format!("{ROOT} must be followed by `/`"));
    }
    if rest.contains(ROOT) {
        return Err(format!("has {ROOT} twice"));
    }
    depth_check(rest).map_err(|()| format!("leaves {ROOT} (too many `..`)"))
}

/// Whether following `..` lexically ever goes above the start.
fn depth_check(rest: &str) -> Result<(), ()> {
    let mut depth = 0usize;
    for c in rest.split('/') {
        match c {
            "" | "." => {}
            ".." => depth = depth.checked_sub(1).ok_or(())?,
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, os::unix::ffi::OsStrExt as _};


    use super::*;
    use crate::policy::{
        model::RuleKind,
        path::{real_path, FileSystem, RealPaths as _},
        UnixTarget,
    };

    /// At least this many vectors must exist: the issue's floor.
    const MIN_VECTORS: usize = 170;

    fn vectors_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").join("tests/vectors")
    }

    fn load() -> Vec<VectorFile> {
        load_dir(&vectors_dir()).unwrap_or_else(|e| panic!("loading the vectors:\n{e}"))
    }

    /// The kernel's lookup over the compiled tables (as `crosscheck` simulates it):
    /// for exec the (dev, inode) pins first, then a longest-prefix match over
    /// `real path + NUL`; for egress the longest network, then its first port rule.
    fn kernel(c: &CompiledPolicy, action: &Action) -> (ActionKind, u32) {
        let code = |a: u8| ActionKind::ALL.into_iter().find(|k| k.code() == a).expect("an action code");
        let lookup = |kind: RuleKind, path: &Path| {
            let real = real_path(path.as_os_str().as_bytes(), &FileSystem).expect("an absolute path");
            // Vectors stay within the kernel's path length, so the model always knows.
            let (a, rule) = c.path_lookup(kind, &real).expect("a path the kernel can read whole");
            (code(a), rule)
        };
        match action {
            Action::Exec { path } => {
                let pinned = FileSystem.file_id(path).and_then(|id| {
                    c.exec_inodes.iter().find(|p| p.dev == id.dev && p.ino == id.ino)
                });
                match pinned {
                    Some(p) => (code(p.value.action), p.value.rule_id),
                    None => lookup(RuleKind::Exec, path),
                }
            }
            Action::Write { path } => lookup(RuleKind::Write, path),
            Action::Connect { addr, port, protocol } => {
                let (a, rule) = c.egress_lookup(*addr, *port, protocol.number());
                (code(a), rule)
            }
            // An abstract socket is looked up by `@name`, a path by its real path.
            Action::ConnectUnix { path } if path.as_os_str().as_bytes().starts_with(b"@") => {
                let (a, rule) = c.path_lookup(RuleKind::Unix, path.as_os_str().as_bytes()).expect("a short name");
                (code(a), rule)
            }
            Action::ConnectUnix { path } => lookup(RuleKind::Unix, path),
        }
    }

    /// Whether the real path of `p` is `root` or below it.
    fn inside(root: &Path, p: &Path) -> bool {
        real_path(p.as_os_str().as_bytes(), &FileSystem)
            .is_some_and(|real| Path::new(std::ffi::OsStr::from_bytes(&real)).starts_with(root))
    }

    fn kind_of(a: &Action) -> RuleKind {
        match a {
            Action::Exec { .. } => RuleKind::Exec,
            Action::Write { .. } => RuleKind::Write,
            Action::Connect { .. } => RuleKind::Egress,
            Action::ConnectUnix { .. } => RuleKind::Unix,
        }
    }

    #[test]
    fn every_vector_gets_its_expected_decision_and_rule() {
        let files = load();
        let mut failures: Vec<String> = Vec::new();
        let mut divergences: Vec<String> = Vec::new();
        let mut names = HashSet::new();
        // Vectors checked, and those with a problem (a file that cannot be set up
        // fails all of its vectors).
        let (mut checked, mut failed) = (0, 0);
        for file in &files {
            let fail = |failures: &mut Vec<String>, m: String| failures.push(format!("{}: {m}", file.path.display()));
            let dir = tempfile::tempdir().expect("a scratch directory");
            let root = fs::canonicalize(dir.path()).expect("the scratch directory's real path");
            if let Err(e) = file.materialize(&root, None) {
                fail(&mut failures, format!("fixture: {e}"));
                failed += file.vectors.len();
                continue;
            }
            for f in &file.files {
                if !inside(&root, &root.join(&f.path)) {
                    fail(&mut failures, format!("files: {} resolves outside {ROOT}", f.path));
                }
            }
            let compiled = match file.compile_for(&root) {
                Ok(c) => c,
                Err(e) => {
                    failures.push(e);
                    failed += file.vectors.len();
                    continue;
                }
            };
            let policy = compiled.as_ref().map(|(p, _)| p);
            if let Some(p) = policy {
                // The kernel replay applies every file's policy by name.
                let stem = file.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                if p.name() != stem {
                    fail(&mut failures, format!("metadata.name is {:?}: make it the file's name, {stem:?}", p.name()));
                }
                if !names.insert(p.name().to_string()) {
                    fail(&mut failures, format!("metadata.name {:?} is used by another file", p.name()));
                }
                for r in p.exec.rules.iter().chain(&p.write.rules) {
                    if !Path::new(&String::from_utf8_lossy(&r.pattern.literal_dir()).into_owned()).starts_with(&root)
                    {
                        fail(&mut failures, format!("rule {} names a path outside {ROOT}", r.text));
                    }
                }
                // Unix rules may also be about the sockets the built-in rules
                // protect, which are all below /run (to show which rules replace a
                // built-in one), and name abstract sockets.
                for r in &p.unix.rules {
                    let UnixTarget::Path(g) = &r.target else { continue };
                    let dir = String::from_utf8_lossy(&g.literal_dir()).into_owned();
                    if !Path::new(&dir).starts_with(&root) && !Path::new(&dir).starts_with("/run") {
                        fail(&mut failures, format!("unix rule {} names a path outside {ROOT} and /run", r.text));
                    }
                }
            }
            for v in &file.vectors {
                let at = file.location(v);
                let problems_before = failures.len();
                if let Err(e) = v.prepare(&root) {
                    failed += 1;
                    failures.push(format!("{at}: vector {:?}: {e}", v.name));
                    continue;
                }
                let action = v.to_action(&root);
                let rooted = matches!(&v.action, VectorAction::Unix { path } if path.starts_with(ROOT));
                if let Action::Exec { path } | Action::Write { path } = &action {
                    if !inside(&root, path) {
                        failed += 1;
                        failures.push(format!("{at}: vector {:?}: {} is outside {ROOT}", v.name, path.display()));
                        continue;
                    }
                }
                if let (Action::ConnectUnix { path }, true) = (&action, rooted) {
                    if !inside(&root, path) {
                        failed += 1;
                        failures.push(format!("{at}: vector {:?}: {} is outside {ROOT}", v.name, path.display()));
                        continue;
                    }
                }
                checked += 1;
                let (got, decision) = judge(policy, file.identity, &action);
                let shown = |s: &str| s.replace(&*root.to_string_lossy(), ROOT);
                if let Some(why) = &v.known_divergence {
                    divergences.push(format!(
                        "{at}: {}: the format says {}, the evaluator {got} ({}); {why}",
                        v.name,
                        v.expected,
                        shown(&decision.reason)
                    ));
                    continue;
                }
                if got != v.expected {
                    failures.push(format!(
                        "{at}: {}: expected {}, got {got}: {}",
                        v.name,
                        v.expected,
                        shown(&decision.reason)
                    ));
                }
                // What the kernel's tables say, for an identity whose policy is in
                // force (the kernel denies the others before any lookup).
                if let (Some((_, c)), Standing::Active) = (&compiled, file.identity) {
                    let (k_action, k_rule) = kernel(c, &action);
                    if (k_action, k_rule) != (v.expected.decision.action(), v.expected.rule) {
                        failures.push(format!(
                            "{at}: {}: expected {}, the compiled {} tables say {k_action} by rule {k_rule}",
                            v.name,
                            v.expected,
                            kind_of(&action).as_str()
                        ));
                    }
                }
                if failures.len() > problems_before {
                    failed += 1;
                }
            }
        }
        for d in &divergences {
            println!("known divergence: {d}");
        }
        assert!(failures.is_empty(), "{failed} of {checked} vectors failed:\n{}", failures.join("\n"));
    }

    #[test]
    fn there_are_enough_vectors() {
        let n: usize = load().iter().map(|f| f.vectors.len()).sum();
        assert!(n >= MIN_VECTORS, "{n} vectors, fewer than {MIN_VECTORS}");
    }

    const GOOD: &str = r#"
policy: |
  apiVersion: agentd.io/v1
  kind: AgentPolicy
  metadata: {name: t}
  spec: {}
files:
  - {path: bin/tool, type: exec}
vectors:
  - name: first
    action: {exec: "@ROOT@/bin/tool"}
    expected: {decision: deny, rule: default}
  - name: second
    action: {connect: "[2001:db8::1]:443", protocol: udp}
    expected: {decision: deny, rule: 3}
"#;

    #[test]
    fn a_good_file_loads_with_lines_and_rule_ids() {
        let f = parse_file(Path::new("good.yaml"), GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.identity, Standing::Active);
        assert_eq!(f.policy_line, 3);
        assert_eq!(f.files, vec![Fixture { path: "bin/tool".into(), kind: FixtureKind::Exec, line: 8 }]);
        assert_eq!((f.vectors[0].line, f.vectors[0].expected.rule), (10, 0));
        assert_eq!((f.vectors[1].line, f.vectors[1].expected.rule), (13, 3));
        assert_eq!(
            f.vectors[1].action,
            VectorAction::Connect { addr: "[2001:db8::1]:443".parse().unwrap(), protocol: Protocol::Udp }
        );
        let root = Path::new("/scratch");
        assert_eq!(f.vectors[0].to_action(root), Action::Exec { path: "/scratch/bin/tool".into() });
    }

    #[test]
    fn unix_and_icmp_actions_load() {
        let text = GOOD.replace(
            "  - name: second\n",
            "  - name: socket\n    action: {unix: \"@ROOT@/run/app.sock\"}\n    expected: {decision: allow, rule: default}\n  \
             - name: abstract\n    action: {unix: \"@app\"}\n    expected: {decision: allow, rule: default}\n  \
             - name: protected\n    action: {unix: /run/user/1000/bus}\n    expected: {decision: deny, rule: 1}\n  \
             - name: ping\n    action: {connect: \"[2001:db8::1]\", protocol: icmp}\n    expected: {decision: deny, rule: default}\n  \
             - name: second\n",
        );
        let f = parse_file(Path::new("u.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
        let root = Path::new("/scratch");
        let actions: Vec<Action> = f.vectors[1..5].iter().map(|v| v.to_action(root)).collect();
        assert_eq!(
            actions,
            [
                Action::ConnectUnix { path: "/scratch/run/app.sock".into() },
                Action::ConnectUnix { path: "@app".into() },
                Action::ConnectUnix { path: "/run/user/1000/bus".into() },
                Action::Connect { addr: "2001:db8::1".parse().unwrap(), port: 0, protocol: Protocol::Icmp },
            ]
        );
        assert!(protected_socket("/run/docker.sock") && protected_socket("/run/user/0/docker.sock"));
        assert!(!protected_socket("/run/user/0/other.sock") && !protected_socket("/run//docker.sock"));
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_file_and_the_vector() {
        let top = GOOD.replace("files:", "fixtures:");
        let e = parse_file(Path::new("bad.yaml"), &top).unwrap_err();
        assert!(e.starts_with("bad.yaml:7:1: ") && e.contains("unknown field `fixtures`"), "{e}");

        let inner = GOOD.replace("{decision: deny, rule: 3}", "{decision: deny, rule: 3, why: x}");
        let e = parse_file(Path::new("bad.yaml"), &inner).unwrap_err();
        assert!(e.starts_with("bad.yaml:15:") && e.contains("vector \"second\"") && e.contains("`why`"), "{e}");
    }

    #[test]
    fn mistakes_are_reported_with_file_line_and_vector() {
        let cases = [
            ("\"@ROOT@/bin/tool\"}", "\"/usr/bin/git\"}", "10: vector \"first\": action: exec \"/usr/bin/git\" must start with @ROOT@/"),
            ("\"@ROOT@/bin/tool\"}", "\"@ROOT@/../x\"}", "leaves @ROOT@"),
            ("{exec: \"@ROOT@/bin/tool\"}", "{write: x.txt}", "is relative: give a `cwd`"),
            ("[2001:db8::1]:443", "[2001:db9::1]:443", "outside the ranges vectors may use"),
            ("rule: 3}", "rule: 0}", "ids start at 1"),
            ("decision: deny, rule: 3", "decision: block, rule: 3", "\"block\" is not one of"),
            ("bin/tool, type: exec}", "../tool, type: exec}", "must not have empty, `.` or `..` components"),
            ("name: second", "name: first", "13: vector \"first\": a vector by this name comes earlier"),
            ("protocol: udp", "protocol: icmp", "ICMP has no ports: give the address alone"),
            ("{exec: \"@ROOT@/bin/tool\"}", "{unix: /var/run/app.sock}", "or a socket a built-in rule protects"),
            ("{exec: \"@ROOT@/bin/tool\"}", "{unix: \"@\"}", "names no abstract socket"),
            ("{exec: \"@ROOT@/bin/tool\"}", "{unix: \"@ROOT@/../x.sock\"}", "leaves @ROOT@"),
            (
                "{exec: \"@ROOT@/bin/tool\"}",
                "{unix: /run/x.sock, protocol: udp}",
                "`protocol` goes with `connect` only",
            ),
            (
                "{exec: \"@ROOT@/bin/tool\"}",
                "{unix: /run/x.sock, exec: /x}",
                "give exactly one of exec, write, connect or unix",
            ),
            ("\"[2001:db8::1]:443\", protocol: udp", "\"2001:db8::1\"", "is not ADDRESS:PORT"),
            ("\"[2001:db8::1]:443\", protocol: udp", "\"nowhere\", protocol: icmp", "is not an IPv4 or IPv6 address"),
            ("\"[2001:db8::1]:443\", protocol: udp", "\"8.8.8.8\", protocol: icmp", "outside the ranges"),
        ];
        for (from, to, want) in cases {
            let text = GOOD.replace(from, to);
            let e = parse_file(Path::new("bad.yaml"), &text).unwrap_err();
            assert!(e.starts_with("bad.yaml:") && e.contains(want), "{from} -> {to}: {e}");
        }
    }

    #[test]
    fn a_denied_identity_expects_deny_by_default_and_no_policy_has_none() {
        let revoked = GOOD.replace("files:", "identity: revoked\nfiles:");
        let e = parse_file(Path::new("r.yaml"), &revoked).unwrap_err();
        assert!(e.contains("vector \"second\"") && e.contains("revoked is denied everything"), "{e}");
        let e = parse_file(Path::new("n.yaml"), &GOOD.replace("files:", "identity: no-policy\nfiles:")).unwrap_err();
        assert!(e.contains("remove `policy`"), "{e}");
    }

    #[test]
    fn fixtures_are_created_under_the_root() {
        let text = r#"
policy: |
  apiVersion: agentd.io/v1
  kind: AgentPolicy
  metadata: {name: t}
  spec: {}
files:
  - {path: bin/tool, type: exec}
  - {path: work/a.txt, type: file}
  - {path: empty, type: dir}
  - {path: links/tool, type: symlink, target: ../bin/tool}
  - {path: abs, type: symlink, target: "@ROOT@/work"}
  - {path: hard, type: hardlink, target: bin/tool}
  - {path: run/app.sock, type: socket}
vectors:
  - name: rel
    action: {write: "../a.txt", cwd: "@ROOT@/work/sub"}
    expected: {decision: deny, rule: default}
"#;
        let f = parse_file(Path::new("fx.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        f.materialize(&root, None).unwrap();
        let meta = fs::metadata(root.join("bin/tool")).unwrap();
        assert!(meta.is_file() && meta.permissions().mode() & 0o111 != 0);
        assert!(root.join("work/a.txt").is_file() && root.join("empty").is_dir());
        assert_eq!(fs::canonicalize(root.join("links/tool")).unwrap(), root.join("bin/tool"));
        assert_eq!(fs::read_link(root.join("abs")).unwrap(), root.join("work"));
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(fs::metadata(root.join("hard")).unwrap().ino(), meta.ino());
        use std::os::unix::fs::FileTypeExt as _;
        assert!(fs::metadata(root.join("run/app.sock")).unwrap().file_type().is_socket());
        assert_eq!(
            f.vectors[0].to_action(&root),
            Action::Write { path: root.join("work/sub").join("../a.txt") }
        );
        f.vectors[0].prepare(&root).unwrap();
        assert!(root.join("work/a.txt").is_file());
    }
}
