//! `agentctl`, the command line for agentd: the argument grammar (clap) and the
//! dispatch to one module per command group.
//!
//! Every command talks to the daemon over its unix socket, except `policy validate`
//! (offline), `policy test` and `policy diff` given files (offline), and the local
//! checks `doctor` prints when the daemon is down. Errors come back as [`CliError`],
//! which knows its message, hint and exit code; the binary only prints them.

mod approvals;
mod bind;
mod client;
mod error;
mod events;
mod identity;
mod output;
mod policy;
mod policy_diff;
mod policy_source;
mod policy_test;
mod receipts;
mod run;
mod status;

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::receipts::query::{self, Selector};

pub use error::{CliError, EXIT_FAILURE, EXIT_USAGE};

// The one place agentctl names the cgroup module (resolving CGROUP arguments, the
// cgroup2 mount, a process's cgroup).
use crate::cgroup;

/// The socket agentd listens on unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/agentd/agentd.sock";

const EXAMPLES: &str = "\
EXAMPLES:
  agentctl doctor                                      # what this kernel can enforce, and how
  agentctl policy apply policies/coding-agent.yaml
  agentctl identity create coder --policy coding-agent --owner alice
  agentctl run --identity coder -- claude              # run an agent under an identity
  agentctl bind system.slice/mcp-github.service mcp-github
  agentctl events --follow
  agentctl approvals watch                             # answer held (ask) actions";

/// Control agentd: give AI agents an identity and a policy the kernel enforces.
#[derive(Parser, Debug)]
#[command(name = "agentctl", version, propagate_version = true, arg_required_else_help = true, after_help = EXAMPLES)]
pub struct Cli {
    /// agentd's unix socket.
    #[arg(long, global = true, env = "AGENTD_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Per action kind, which kernel mechanism enforces it, and why better ones do not.
    #[command(after_help = "\
Works without the daemon too: it then shows the checks it can make itself and exits 1.

EXAMPLES:
  agentctl doctor
  agentctl doctor --json")]
    Doctor(JsonFlag),
    /// Daemon health: version, uptime, counters (including dropped events), mechanisms.
    #[command(after_help = "\
EXAMPLES:
  agentctl status
  agentctl status --json | jq .counters.events_dropped")]
    Status(JsonFlag),
    /// Apply, list, show, validate, test or diff policies.
    #[command(
        subcommand,
        after_help = "\
EXAMPLES:
  agentctl policy validate policies/*.yaml
  agentctl policy test policies/coding-agent.yaml --exec /usr/bin/curl
  agentctl policy diff coding-agent policies/coding-agent.yaml
  agentctl policy apply policies/coding-agent.yaml
  agentctl policy list
  agentctl policy show coding-agent"
    )]
    Policy(PolicyCmd),
    /// Create, list or show identities.
    #[command(
        subcommand,
        after_help = "\
EXAMPLES:
  agentctl identity create coder --policy coding-agent --owner alice
  agentctl identity list
  agentctl identity show coder"
    )]
    Identity(IdentityCmd),
    /// Bind a cgroup (and every cgroup below it, now and later) to an identity.
    #[command(after_help = "\
CGROUP is a cgroup directory: an absolute path, a path relative to the cgroup2 mount,
or a systemd unit name.

EXAMPLES:
  agentctl bind system.slice/mcp-github.service mcp-github
  agentctl bind mcp-github.service mcp-github
  agentctl bind /sys/fs/cgroup/agents/worker-1 worker")]
    Bind {
        /// The cgroup: absolute path, path under the cgroup2 mount, or systemd unit.
        cgroup: String,
        /// The identity to bind it to (see `agentctl identity list`).
        identity: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Remove a cgroup's binding.
    #[command(after_help = "\
EXAMPLES:
  agentctl unbind system.slice/mcp-github.service
  agentctl unbind mcp-github.service")]
    Unbind {
        /// The cgroup, written as for `bind` (a cgroup already removed: its absolute path).
        cgroup: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List bindings.
    #[command(after_help = "\
EXAMPLES:
  agentctl bindings
  agentctl bindings --json")]
    Bindings(JsonFlag),
    /// Run a command under an identity, in a fresh cgroup bound before it starts.
    #[command(after_help = "\
The command runs in a new cgroup <cgroup2 mount>/agentd.run/<identity>-<pid>, bound to
the identity before the command starts (it never runs unbound). When it exits, anything
it left running is killed, the cgroup unbound and removed, and agentctl exits with the
command's status (128+N if signal N killed it; 127 if it could not be started).
Run it from outside any bound cgroup.

EXAMPLES:
  agentctl run --identity coder -- claude
  agentctl run --identity ci -- make -j4 test
  agentctl run --identity coder --cgroup-parent /sys/fs/cgroup/agents -- bash")]
    #[command(override_usage = "agentctl run [OPTIONS] --identity <IDENTITY> -- <CMD> [ARGS]...")]
    Run(RunArgs),
    /// Kernel decisions: the recent ones, and with --follow new ones as they happen.
    #[command(after_help = "\
EXAMPLES:
  agentctl events
  agentctl events --last 20
  agentctl events --follow
  agentctl events --follow --json | jq 'select(.verdict == \"deny\")'")]
    Events(EventsArgs),
    /// Actions held for a decision (policy `ask`): list them, or watch and answer.
    #[command(subcommand, after_help = "\
An exec that a policy marks `ask` waits in the kernel until someone with the right to change
enforcement (root, or a member of the socket's group, outside any bound cgroup) approves or
denies it, or until the policy's approvals.timeout, when on_timeout applies.

EXAMPLES:
  agentctl approvals list
  agentctl approvals watch
  agentctl approve 3f9a2c1b --for 10m")]
    Approvals(ApprovalsCmd),
    /// Signed receipts of every decision and change: list, show, export, verify offline.
    #[command(
        subcommand,
        after_help = "\
agentd records a receipt for every kernel deny, kill, would-deny and audit, every hold
and its approval and outcome, and every policy apply, bind, unbind, identity create and
revoke and key rotation, naming who asked. Receipts are chained and sealed in batches
by the node's Ed25519 key; `verify` checks an export with the public key alone. The
format is in docs/receipts.md.

EXAMPLES:
  agentctl receipts list --verdict deny --since 1h
  agentctl receipts show 42
  agentctl receipts export -o export.jsonl
  agentctl receipts key show
  agentctl receipts verify export.jsonl --public-key /var/lib/agentd/receipts/keys/<hex>.pub"
    )]
    Receipts(ReceiptsCmd),
    /// Let a held action happen: once, or for a while (same identity, same target).
    #[command(after_help = "\
A held exec runs as soon as it is approved. With --for, the same identity may repeat the
same action (same binary) without a hold until the time is up; `agentctl approvals list`
shows the live grants. Exits 1 if ID is not pending (already decided, or timed out).

EXAMPLES:
  agentctl approve 3f9a2c1b
  agentctl approve 3f9a2c1b --for 10m
  agentctl approve 3f9a2c1b --json")]
    Approve {
        /// The hold's id (see `agentctl approvals list`).
        id: String,
        /// Also allow the same action by the same identity, unheld, for this long (max 24h).
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        for_: Option<std::time::Duration>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Refuse a held action: it fails with EPERM.
    #[command(after_help = "\
EXAMPLES:
  agentctl deny 3f9a2c1b
  agentctl deny 3f9a2c1b --reason \"no network tools in this repo\"")]
    Deny {
        /// The hold's id (see `agentctl approvals list`).
        id: String,
        /// Why, recorded with the decision.
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReceiptsCmd {
    /// The newest receipts that match: what was done, by whom, what was decided, by which rule.
    #[command(after_help = "\
Every filter given must match. WHEN is an RFC 3339 time (2026-01-01T12:00:00Z, or with an
offset) or a duration ago (90s, 10m, 2h, 1d). Shows the newest --limit matches, oldest
first; a note on stderr says when more matched (`receipts export` has them all). Before
reading, agentd makes every receipt appended so far durable, so what is shown is on disk.

--json prints an array of the receipts themselves (the fields of docs/receipts.md).

EXAMPLES:
  agentctl receipts list
  agentctl receipts list --identity coder --verdict deny --since 1h
  agentctl receipts list --action exec --since 2026-01-01T00:00:00Z --until 2026-01-02T00:00:00Z
  agentctl receipts list --type key-rotation --json | jq '.[].requester'")]
    List(ReceiptsListArgs),
    /// One receipt, every field: by seq, or by id (or its first 8 or more characters).
    #[command(after_help = "\
A number is a seq; anything else is an id or a unique prefix of one. Shows every member,
including who approved a held action (approval.decided_by, decided_at, how) and the seal
(key, batch, Merkle root, inclusion proof, signature). --json prints the receipt itself.

EXAMPLES:
  agentctl receipts show 42
  agentctl receipts show 4abb333e
  agentctl receipts show 42 --json | jq .approval")]
    Show {
        /// The receipt's seq, or its id (or a unique prefix of 8+ hex characters).
        #[arg(value_name = "ID|SEQ", value_parser = Selector::parse)]
        receipt: Selector,
        /// Print the receipt's own JSON (docs/receipts.md) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Receipts exactly as stored, one per line, with their seals: what `verify` checks.
    #[command(after_help = "\
Writes every receipt kept (to stdout, or to FILE with -o), each line byte for byte as
agentd stored and sealed it. With --since/--until, the contiguous run of the chain from
the first receipt at or after --since up to the first at or after --until, so it still
verifies (`verify --any-start`, with the key that sealed its first receipt). Before
reading, agentd makes every receipt appended so far durable.

EXAMPLES:
  agentctl receipts export -o export.jsonl
  agentctl receipts export --since 1d | gzip > receipts-today.jsonl.gz
  agentctl receipts export -o export.jsonl && agentctl receipts verify export.jsonl --public-key node.pub")]
    Export {
        /// From the first receipt at or after WHEN (RFC 3339, or a duration ago: 1h, 1d).
        #[arg(long, value_name = "WHEN", value_parser = receipts::parse_since)]
        since: Option<std::time::SystemTime>,
        /// Up to the first receipt at or after WHEN.
        #[arg(long, value_name = "WHEN", value_parser = receipts::parse_until)]
        until: Option<std::time::SystemTime>,
        /// Write to FILE instead of stdout (removed again if the export fails).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// The node's receipt signing key: show it, or rotate it.
    #[command(subcommand, after_help = "\
EXAMPLES:
  agentctl receipts key show
  agentctl receipts key rotate")]
    Key(ReceiptsKeyCmd),
    /// Verify an export (one receipt per line) with only the node's public key.
    #[command(after_help = "\
Checks every line: canonical encoding, id = hash, the inclusion proof to its batch's
Merkle root, the Ed25519 signature on that root under the key in force (following
key-rotation receipts), prev_hash linking each receipt to the one before, and seq
with no gap, duplicate or reordering. Stops at the first bad receipt and names its
line, seq and why. Exits 0 only if everything verified.

KEY is a file with the node's first public key: 64 hex characters, a PEM
\"PUBLIC KEY\", or an ssh-ed25519 line.

EXAMPLES:
  agentctl receipts verify export.jsonl --public-key node.pub
  agentctl receipts verify export.jsonl --public-key node.pub --json | jq .ok")]
    Verify {
        /// The export: JSONL, one receipt per line.
        file: PathBuf,
        /// The node's public key (the first one, if the key was rotated since).
        #[arg(long, value_name = "KEY")]
        public_key: PathBuf,
        /// Accept an export that starts mid-chain (after retention removed older
        /// segments); it is then verified from its first receipt on.
        #[arg(long)]
        any_start: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `receipts list`: filters, a limit, and the output form.
#[derive(Args, Debug)]
pub struct ReceiptsListArgs {
    /// Receipts of this agent identity (requester.identity).
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// Of this action kind: exec, write, egress, raw-socket, or an administrative one
    /// (policy-apply, bind, unbind, identity-create, identity-revoke, key-rotation).
    #[arg(long, value_name = "KIND", value_parser = query::parse_action_kind)]
    pub action: Option<String>,
    /// With this decision: allow, deny, kill, audit, would-deny, hold, ok, refused.
    #[arg(long, value_name = "VERDICT", value_parser = query::parse_verdict)]
    pub verdict: Option<crate::receipts::Verdict>,
    /// Of this receipt type: decision, hold, hold-outcome, approval, policy-apply, bind, ...
    #[arg(long = "type", value_name = "TYPE", value_parser = query::parse_receipt_type)]
    pub receipt_type: Option<crate::receipts::ReceiptType>,
    /// Decided at or after WHEN (RFC 3339, or a duration ago: 10m, 2h, 1d).
    #[arg(long, value_name = "WHEN", value_parser = receipts::parse_since)]
    pub since: Option<std::time::SystemTime>,
    /// Decided before WHEN (RFC 3339, or a duration ago).
    #[arg(long, value_name = "WHEN", value_parser = receipts::parse_until)]
    pub until: Option<std::time::SystemTime>,
    /// At most N receipts, the newest (1 to 1000).
    #[arg(long, value_name = "N", default_value = "100", value_parser = receipts::parse_limit)]
    pub limit: u32,
    /// Print an array of the receipts' own JSON (docs/receipts.md) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ReceiptsKeyCmd {
    /// The key that seals receipts now, its public key file, and the first key of the chain.
    #[command(after_help = "\
The public key file (64 hex characters) is what `agentctl receipts verify --public-key`
takes. After a rotation, a whole export verifies with the key that sealed its first
receipt (shown as first_key_id); the rotation receipts inside it hand over to each newer
key.

EXAMPLES:
  agentctl receipts key show
  agentctl receipts key show --json | jq -r .current.public_key > node.pub")]
    Show(JsonFlag),
    /// Replace the signing key: a key-rotation receipt, sealed by the old key, names the new one.
    #[command(after_help = "\
The rotation receipt records who asked (from the socket's peer credentials). Only root and
members of the socket's group, outside any bound cgroup, may rotate. Receipts after it are
sealed by the new key; exports that start before it still verify with the old public key.

EXAMPLES:
  agentctl receipts key rotate
  agentctl receipts key rotate --json")]
    Rotate(JsonFlag),
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCmd {
    /// What is waiting now, and the live `approve --for` grants.
    #[command(after_help = "\
EXAMPLES:
  agentctl approvals list
  agentctl approvals list --json | jq -r '.pending[].id'")]
    List(JsonFlag),
    /// Follow holds as they come and go; in a terminal, answer each one (y / a / n).
    #[command(after_help = "\
In a terminal each new hold is shown with who (identity, owner), what (binary and its
arguments) and why (rule), and a prompt: y approves once, a approves for 10 minutes, n
denies, Enter leaves it to someone else (or to the deadline). With --json, one object per
line: {\"type\": \"pending\"|\"resolved\", \"hold\": {...}, \"resolution\": {...}}.

EXAMPLES:
  agentctl approvals watch
  agentctl approvals watch --json | jq -c 'select(.type == \"pending\") | .hold'")]
    Watch(JsonFlag),
}

/// `--json` for every command that lists or shows.
#[derive(Args, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonFlag {
    /// Print JSON (proto field names; stable) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Validate, compile and install a policy; nothing changes if it has any error.
    #[command(after_help = "\
EXAMPLES:
  agentctl policy apply policies/coding-agent.yaml")]
    Apply {
        /// The policy file (YAML, agentd.io/v1).
        file: PathBuf,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List installed policies.
    #[command(after_help = "\
EXAMPLES:
  agentctl policy list
  agentctl policy list --json")]
    List(JsonFlag),
    /// Show one policy: summary, rules with their ids, and its YAML.
    #[command(after_help = "\
EXAMPLES:
  agentctl policy show coding-agent
  agentctl policy show coding-agent --yaml > coding-agent.yaml")]
    Show {
        /// The policy's name (metadata.name).
        name: String,
        #[command(flatten)]
        json: JsonFlag,
        /// Print only the policy's YAML, as applied.
        #[arg(long, conflicts_with = "json")]
        yaml: bool,
    },
    /// Check policy files offline (no daemon needed); exits 1 on any error.
    #[command(after_help = "\
Prints every problem as FILE:LINE:COLUMN: message, or `FILE: ok (N rules)`.

EXAMPLES:
  agentctl policy validate policies/*.yaml")]
    Validate {
        /// Policy files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// What a policy (or an identity) decides for one action, and which rule decides.
    #[command(after_help = "\
FILE|NAME is a policy file, or the name of a policy applied to agentd (agentd is then
asked for it; a file needs no daemon). With --identity, agentd is asked for the identity:
a revoked, expired or policy-less identity is denied everything, and without FILE|NAME
its own policy is used.

Paths are judged as the kernel sees them: a relative path against --cwd (default: the
current directory), like the process's working directory; --exec takes the path execve
gets (no $PATH lookup); symlinks are resolved on this machine. Exits 0 whenever the
question was answered, whatever the decision; 1 on errors.

--connect ADDR --protocol icmp asks about a ping: ICMP has no port, and only a rule
with `protocol: icmp` allows it (never the egress default, nor a rule without a
protocol, which covers TCP and UDP).

--connect-unix PATH asks about a connect to a local socket (egress.unix), judged by
the socket file's real path; @NAME is an abstract socket, matched by exact name.
agentd's own socket (--socket), container runtimes' and systemd's sockets and the
D-Bus buses are denied by built-in rules unless the policy names them exactly.

--json prints one object: policy, mode, action {kind, target, protocol}, decision
(allow|deny|ask|audit: what the policy says), enforced (allow|deny|would_deny|hold: what
the kernel does; an exec or TCP connect ask is held for a person, other asks are denied), rule_id (0:
the default), rule, line, reason, identity, standing (active|revoked|expired|no-policy),
system {namespaces, ptrace} (allow|deny: the policy's spec.system; null when no policy
was consulted). The text form shows system only when the policy allows one of them.

EXAMPLES:
  agentctl policy test policies/coding-agent.yaml --exec /usr/bin/curl
  agentctl policy test coding-agent --write .git/hooks/pre-commit --cwd /home/alice/work
  agentctl policy test coding-agent --connect 140.82.112.3:443
  agentctl policy test coding-agent --connect '[2001:db8::1]:53' --protocol udp
  agentctl policy test coding-agent --connect 10.0.0.1 --protocol icmp
  agentctl policy test coding-agent --connect-unix /var/run/docker.sock
  agentctl policy test coding-agent --connect-unix @my-service
  agentctl policy test --identity coder --exec /usr/bin/git
  agentctl policy test new.yaml --identity coder --write /etc/passwd --json | jq -r .enforced")]
    Test(PolicyTestArgs),
    /// Compare two policies: changed rules, then the actions whose decision changes.
    #[command(after_help = "\
OLD and NEW are each a policy file or the name of an applied policy. Rules are matched
by what they are about (kind and path; egress target; unix path or @name), not by
position: reordering is no change. Decisions are compared on probes at every rule's
edges, from both sides: its exact path; for a pattern a path inside it, one a level
deeper, its directory and a sibling just outside (exec, write, and unix sockets, the
built-in unix rules included); for a CIDR its first and last address and the ones just
outside, at each edge of every port range and at a port no rule lists, over TCP and
UDP, and over ICMP when either policy has an icmp rule.

With --exit-code, exits 1 when some decision changes, or the mode or a spec.system
setting does (like `git diff --exit-code`), and 0 otherwise. Errors exit 1 too, with a
message.

--json prints one object: old and new {file, policy, mode}, mode {old, new} or null,
defaults [{kind, old, new}], system [{key, old, new}] (spec.system settings that
change), rules [{change: added|removed|changed, kind, old, new}],
probes (how many actions were compared), decisions [{action, old, new}] (each side
{decision, rule_id, rule, line}), changes_enforcement (what --exit-code reports).

EXAMPLES:
  agentctl policy diff coding-agent policies/coding-agent.yaml   # what applying it changes
  agentctl policy diff old.yaml new.yaml
  agentctl policy diff old.yaml new.yaml --exit-code >/dev/null || echo \"decisions change\"
  agentctl policy diff old.yaml new.yaml --json | jq '.decisions[] | select(.new.decision == \"allow\")'")]
    Diff(PolicyDiffArgs),
}

/// `policy test`: a policy (or identity) and exactly one action.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("action").required(true).args(["exec", "write", "connect", "connect_unix"])))]
pub struct PolicyTestArgs {
    /// A policy file, or the name of an applied policy (default: the identity's).
    #[arg(value_name = "FILE|NAME", required_unless_present = "identity")]
    pub policy: Option<String>,
    /// Run the program at PATH.
    #[arg(long, value_name = "PATH")]
    pub exec: Option<PathBuf>,
    /// Create, modify, rename or remove the file at PATH.
    #[arg(long, value_name = "PATH")]
    pub write: Option<PathBuf>,
    /// Connect to ADDR:PORT (IPv6 in brackets: [2001:db8::1]:443); with
    /// --protocol icmp, ping ADDR (no port: ICMP has none).
    #[arg(long, value_name = "ADDR:PORT", value_parser = policy_test::parse_connect)]
    pub connect: Option<policy_test::ConnectArg>,
    /// The protocol of --connect [default: tcp].
    // `requires` alone is not enough: clap waives it when the missing argument
    // conflicts with a present one, as --connect does with --exec and --write.
    #[arg(long, value_enum, requires = "connect", conflicts_with_all = ["exec", "write", "connect_unix"])]
    pub protocol: Option<ProtocolArg>,
    /// Connect to the local (AF_UNIX) socket at PATH, or to the abstract socket
    /// @NAME (judged by egress.unix).
    #[arg(long, value_name = "PATH|@NAME")]
    pub connect_unix: Option<PathBuf>,
    /// Judge as this identity: its standing, and its policy unless FILE|NAME is given.
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// The working directory relative paths are taken from [default: the current one].
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Print JSON (stable snake_case fields, see --help) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--protocol`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolArg {
    Tcp,
    Udp,
    /// ICMP or ICMPv6 echo ("ping"): --connect takes the address alone.
    Icmp,
}

/// `policy diff`.
#[derive(Args, Debug)]
pub struct PolicyDiffArgs {
    /// The policy before: a file, or the name of an applied policy.
    #[arg(value_name = "OLD")]
    pub old: String,
    /// The policy after: a file, or the name of an applied policy.
    #[arg(value_name = "NEW")]
    pub new: String,
    /// Exit 1 when some decision (or the mode) changes, 0 when none does.
    #[arg(long)]
    pub exit_code: bool,
    /// Print JSON (stable snake_case fields, see --help) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum IdentityCmd {
    /// Create an identity on a policy: a new Ed25519 key pair, or your public key.
    #[command(after_help = "\
Without --public-key agentd makes an Ed25519 key pair and keeps the private key in its
state directory (keys/NAME.key, mode 0600, directory 0700). With --public-key the key pair
is yours: agentd records the public key only.

An identity past --expires, or revoked (`agentctl identity revoke`), is denied everything
by the kernel in every cgroup bound to it; the expiry is checked by the kernel itself, so
it holds while agentd is stopped.

EXAMPLES:
  agentctl identity create coder --policy coding-agent
  agentctl identity create mcp-github --policy mcp-server-readonly --owner alice --label team=platform
  agentctl identity create ci-42 --policy ci-runner --expires 2h
  agentctl identity create audit-bot --policy lockdown --public-key ~/.ssh/id_ed25519.pub --expires 2026-12-31T23:00:00Z")]
    Create {
        /// The identity's name.
        name: String,
        /// The policy it runs under (see `agentctl policy list`).
        #[arg(long)]
        policy: String,
        /// Who the agent acts for (default: you; under sudo, the user who ran sudo).
        #[arg(long, value_name = "WHO")]
        owner: Option<String>,
        /// Use this public key (64 hex characters, PEM PUBLIC KEY or ssh-ed25519 line) instead of making a key pair.
        #[arg(long, value_name = "FILE")]
        public_key: Option<std::path::PathBuf>,
        /// When it stops working: a duration from now (90s, 10m, 8h, 30d) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// A KEY=VALUE label (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::identity::parse_label)]
        labels: Vec<(String, String)>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Revoke an identity for good: the kernel denies everything its cgroups do, at once.
    #[command(after_help = "\
Every cgroup bound to the identity is denied every exec, file write and connect from its
next action on, including processes already running; the bindings stay, so nothing in
them escapes enforcement. Revocation cannot be undone: create a new identity (a new key)
and bind it instead. Exits 1 if the identity does not exist or is already revoked.

EXAMPLES:
  agentctl identity revoke coder --reason \"key leaked in CI log\"
  agentctl identity revoke mcp-github --json")]
    Revoke {
        /// The identity's name.
        name: String,
        /// Why, recorded with who revoked it and when.
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List identities.
    #[command(after_help = "\
EXAMPLES:
  agentctl identity list
  agentctl identity list --json")]
    List(JsonFlag),
    /// Show one identity: policy, owner, key, state, bound cgroups.
    #[command(after_help = "\
EXAMPLES:
  agentctl identity show coder
  agentctl identity show coder --json | jq -r .identity.public_key")]
    Show {
        /// The identity's name.
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The identity to run under.
    #[arg(long)]
    pub identity: String,
    /// Where to create the run's cgroup (default <cgroup2 mount>/agentd.run); an
    /// absolute path or one relative to the cgroup2 mount.
    #[arg(long, value_name = "DIR")]
    pub cgroup_parent: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep printing new events until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Start with the N most recent events (0: all kept; default: all, or 10 with --follow).
    #[arg(long, value_name = "N")]
    pub last: Option<u32>,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// Runs one parsed command line. `Ok` is the exit status: 0, or for `run` the
/// command's own.
pub fn run(cli: Cli) -> Result<u8, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::io("starting the async runtime", e))?;
    rt.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> Result<u8, CliError> {
    let socket = cli.socket;
    match cli.command {
        Command::Doctor(f) => status::doctor(&socket, f.json).await.map(ok),
        Command::Status(f) => status::status(&socket, f.json).await.map(ok),
        Command::Receipts(ReceiptsCmd::Verify { file, public_key, any_start, json }) => {
            receipts::verify(&file, &public_key, any_start, json.json)
        }
        Command::Receipts(ReceiptsCmd::List(args)) => receipts::list(&socket, args).await.map(ok),
        Command::Receipts(ReceiptsCmd::Show { receipt, json }) => receipts::show(&socket, &receipt, json).await.map(ok),
        Command::Receipts(ReceiptsCmd::Export { since, until, output }) => {
            receipts::export(&socket, since, until, output.as_deref()).await.map(ok)
        }
        Command::Receipts(ReceiptsCmd::Key(ReceiptsKeyCmd::Show(f))) => receipts::key_show(&socket, f.json).await.map(ok),
        Command::Receipts(ReceiptsCmd::Key(ReceiptsKeyCmd::Rotate(f))) => receipts::key_rotate(&socket, f.json).await.map(ok),
        Command::Policy(PolicyCmd::Validate { files }) => policy::validate(&socket, &files).map(ok),
        Command::Policy(PolicyCmd::Apply { file, json }) => policy::apply(&socket, &file, json.json).await.map(ok),
        Command::Policy(PolicyCmd::List(f)) => policy::list(&socket, f.json).await.map(ok),
        Command::Policy(PolicyCmd::Show { name, json, yaml }) => {
            policy::show(&socket, &name, json.json, yaml).await.map(ok)
        }
        Command::Policy(PolicyCmd::Test(args)) => policy_test::test(&socket, &args).await.map(ok),
        Command::Policy(PolicyCmd::Diff(args)) => policy_diff::diff(&socket, &args).await,
        Command::Identity(IdentityCmd::Create { name, policy, owner, public_key, expires, labels, json }) => {
            let opts = identity::CreateOptions { owner, public_key, expires, labels };
            identity::create(&socket, &name, &policy, opts, json.json).await.map(ok)
        }
        Command::Identity(IdentityCmd::Revoke { name, reason, json }) => {
            identity::revoke(&socket, &name, &reason, json.json).await.map(ok)
        }
        Command::Identity(IdentityCmd::List(f)) => identity::list(&socket, f.json).await.map(ok),
        Command::Identity(IdentityCmd::Show { name, json }) => identity::show(&socket, &name, json.json).await.map(ok),
        Command::Bind { cgroup, identity, json } => bind::bind(&socket, &cgroup, &identity, json.json).await.map(ok),
        Command::Unbind { cgroup, json } => bind::unbind(&socket, &cgroup, json.json).await.map(ok),
        Command::Bindings(f) => bind::list(&socket, f.json).await.map(ok),
        Command::Run(args) => run::run(&socket, args).await,
        Command::Events(args) => events::events(&socket, args).await.map(ok),
        Command::Approvals(ApprovalsCmd::List(f)) => approvals::list(&socket, f.json).await.map(ok),
        Command::Approvals(ApprovalsCmd::Watch(f)) => approvals::watch(&socket, f.json).await.map(ok),
        Command::Approve { id, for_, json } => approvals::approve(&socket, &id, for_, json.json).await.map(ok),
        Command::Deny { id, reason, json } => approvals::deny(&socket, &id, &reason, json.json).await.map(ok),
    }
}

fn ok((): ()) -> u8 {
    0
}

#[cfg(test)]
mod tests {
    use clap::{error::ErrorKind, CommandFactory as _};

    use super::*;

    fn parse(args: &[&str]) -> Cli {
        match Cli::try_parse_from(std::iter::once("agentctl").chain(args.iter().copied())) {
            Ok(cli) => cli,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn usage_error(args: &[&str]) -> clap::Error {
        match Cli::try_parse_from(std::iter::once("agentctl").chain(args.iter().copied())) {
            Ok(cli) => panic!("{args:?} parsed: {cli:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_parses() {
        assert!(matches!(parse(&["doctor"]).command, Command::Doctor(JsonFlag { json: false })));
        assert!(matches!(parse(&["status"]).command, Command::Status(_)));
        assert!(matches!(parse(&["policy", "apply", "p.yaml"]).command, Command::Policy(PolicyCmd::Apply { .. })));
        assert!(matches!(parse(&["policy", "list"]).command, Command::Policy(PolicyCmd::List(_))));
        assert!(matches!(parse(&["policy", "show", "coder"]).command, Command::Policy(PolicyCmd::Show { .. })));
        match parse(&["policy", "validate", "a.yaml", "b.yaml"]).command {
            Command::Policy(PolicyCmd::Validate { files }) => {
                assert_eq!(files, [PathBuf::from("a.yaml"), "b.yaml".into()])
            }
            other => panic!("{other:?}"),
        }
        match parse(&["identity", "create", "coder", "--policy", "coding-agent", "--owner", "alice"]).command {
            Command::Identity(IdentityCmd::Create { name, policy, owner, .. }) => {
                assert_eq!(
                    (name.as_str(), policy.as_str(), owner.as_deref()),
                    ("coder", "coding-agent", Some("alice"))
                );
            }
            other => panic!("{other:?}"),
        }
        match parse(&["identity", "create", "coder", "--policy", "p"]).command {
            Command::Identity(IdentityCmd::Create { owner, .. }) => assert_eq!(owner, None),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["identity", "list"]).command, Command::Identity(IdentityCmd::List(_))));
        match parse(&["identity", "create", "ci", "--policy", "p", "--expires", "2h", "--label", "a=b", "--label", "c=d=e"]).command {
            Command::Identity(IdentityCmd::Create { expires, labels, public_key, .. }) => {
                assert_eq!(expires.as_deref(), Some("2h"));
                assert_eq!(labels, vec![("a".into(), "b".into()), ("c".into(), "d=e".into())]);
                assert_eq!(public_key, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            usage_error(&["identity", "create", "ci", "--policy", "p", "--label", "nolabel"]).kind(),
            ErrorKind::ValueValidation
        );
        match parse(&["identity", "revoke", "coder", "--reason", "key leaked"]).command {
            Command::Identity(IdentityCmd::Revoke { name, reason, .. }) => assert_eq!((name.as_str(), reason.as_str()), ("coder", "key leaked")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["identity", "show", "coder"]).command, Command::Identity(IdentityCmd::Show { .. })));
        match parse(&["bind", "system.slice/mcp-github.service", "mcp-github"]).command {
            Command::Bind { cgroup, identity, .. } => {
                assert_eq!((cgroup.as_str(), identity.as_str()), ("system.slice/mcp-github.service", "mcp-github"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["unbind", "x.service"]).command, Command::Unbind { .. }));
        assert!(matches!(parse(&["bindings"]).command, Command::Bindings(_)));
        match parse(&["events"]).command {
            Command::Events(a) => assert!(!a.follow && a.last.is_none() && !a.json.json),
            other => panic!("{other:?}"),
        }
        match parse(&["events", "--follow", "--last", "5"]).command {
            Command::Events(a) => assert!(a.follow && a.last == Some(5)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_keeps_everything_after_the_double_dash() {
        match parse(&[
            "run",
            "--identity",
            "coder",
            "--",
            "claude",
            "--dangerously-skip",
            "-p",
            "x",
            "--",
            "--identity",
        ])
        .command
        {
            Command::Run(a) => {
                assert_eq!(a.identity, "coder");
                assert_eq!(a.command, ["claude", "--dangerously-skip", "-p", "x", "--", "--identity"]);
                assert_eq!(a.cgroup_parent, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_without_double_dash_takes_the_rest_as_the_command() {
        match parse(&["run", "--identity", "ci", "--cgroup-parent", "agents", "make", "-j4", "--keep-going"]).command {
            Command::Run(a) => {
                assert_eq!(a.command, ["make", "-j4", "--keep-going"]);
                assert_eq!(a.cgroup_parent, Some(PathBuf::from("agents")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_needs_a_command_and_an_identity() {
        assert_eq!(usage_error(&["run", "--identity", "x"]).kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(usage_error(&["run", "--identity", "x", "--"]).kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(usage_error(&["run", "--", "ls"]).kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn json_wherever_something_is_listed_or_shown() {
        for args in [
            &["status", "--json"][..],
            &["doctor", "--json"],
            &["policy", "apply", "p.yaml", "--json"],
            &["policy", "list", "--json"],
            &["policy", "show", "p", "--json"],
            &["identity", "create", "i", "--policy", "p", "--json"],
            &["identity", "list", "--json"],
            &["identity", "show", "i", "--json"],
            &["identity", "revoke", "i", "--json"],
            &["bind", "a.service", "i", "--json"],
            &["unbind", "a.service", "--json"],
            &["bindings", "--json"],
            &["approvals", "list", "--json"],
            &["approvals", "watch", "--json"],
            &["approve", "abc", "--json"],
            &["deny", "abc", "--json"],
            &["events", "--json"],
            &["events", "--follow", "--json"],
            &["policy", "test", "p.yaml", "--exec", "/x", "--json"],
            &["policy", "diff", "a.yaml", "b", "--json"],
            &["receipts", "list", "--json"],
            &["receipts", "show", "42", "--json"],
            &["receipts", "key", "show", "--json"],
            &["receipts", "key", "rotate", "--json"],
        ] {
            let cli = parse(args);
            let json = match cli.command {
                Command::Doctor(f) | Command::Status(f) | Command::Bindings(f) => f.json,
                Command::Approvals(ApprovalsCmd::List(f)) | Command::Approvals(ApprovalsCmd::Watch(f)) => f.json,
                Command::Approve { json, .. } | Command::Deny { json, .. } => json.json,
                Command::Policy(PolicyCmd::List(f)) | Command::Identity(IdentityCmd::List(f)) => f.json,
                Command::Policy(PolicyCmd::Apply { json, .. })
                | Command::Policy(PolicyCmd::Show { json, .. })
                | Command::Identity(IdentityCmd::Create { json, .. })
                | Command::Identity(IdentityCmd::Revoke { json, .. })
                | Command::Identity(IdentityCmd::Show { json, .. })
                | Command::Bind { json, .. }
                | Command::Unbind { json, .. } => json.json,
                Command::Events(a) => a.json.json,
                Command::Policy(PolicyCmd::Test(a)) => a.json,
                Command::Policy(PolicyCmd::Diff(a)) => a.json,
                Command::Receipts(ReceiptsCmd::List(a)) => a.json,
                Command::Receipts(ReceiptsCmd::Show { json, .. }) => json,
                Command::Receipts(ReceiptsCmd::Key(ReceiptsKeyCmd::Show(f) | ReceiptsKeyCmd::Rotate(f))) => f.json,
                other => panic!("{other:?}"),
            };
            assert!(json, "{args:?}");
        }
    }

    fn policy_test(args: &[&str]) -> PolicyTestArgs {
        match parse(&[&["policy", "test"], args].concat()).command {
            Command::Policy(PolicyCmd::Test(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn policy_test_takes_one_action() {
        let a = policy_test(&["coder.yaml", "--exec", "/usr/bin/git"]);
        assert_eq!(a.policy.as_deref(), Some("coder.yaml"));
        assert_eq!((a.exec, a.write, a.connect), (Some(PathBuf::from("/usr/bin/git")), None, None));
        assert_eq!((a.identity, a.cwd, a.protocol, a.json), (None, None, None, false));
        let a = policy_test(&["coder", "--write", "src/main.rs", "--cwd", "/home/alice/work", "--identity", "c"]);
        assert_eq!(a.write, Some(PathBuf::from("src/main.rs")));
        assert_eq!((a.cwd, a.identity.as_deref()), (Some(PathBuf::from("/home/alice/work")), Some("c")));
        let a = policy_test(&["coder", "--connect", "[2001:db8::1]:53", "--protocol", "udp"]);
        let to = |a: &str, port| Some(policy_test::ConnectArg { addr: a.parse().unwrap(), port });
        assert_eq!(a.connect, to("2001:db8::1", Some(53)));
        assert_eq!(a.protocol, Some(ProtocolArg::Udp));
        assert_eq!(policy_test(&["p", "--connect", "1.2.3.4:443"]).connect, to("1.2.3.4", Some(443)));
        let a = policy_test(&["p", "--connect", "10.0.0.1", "--protocol", "icmp"]);
        assert_eq!((a.connect, a.protocol), (to("10.0.0.1", None), Some(ProtocolArg::Icmp)));
        let a = policy_test(&["p", "--connect-unix", "/run/docker.sock"]);
        assert_eq!((a.connect_unix, a.connect), (Some(PathBuf::from("/run/docker.sock")), None));
        // The identity's own policy when no FILE|NAME is given.
        let a = policy_test(&["--identity", "coder", "--exec", "/usr/bin/git"]);
        assert_eq!((a.policy, a.identity.as_deref()), (None, Some("coder")));
    }

    #[test]
    fn policy_test_usage_errors() {
        for (args, kind) in [
            (&["policy", "test", "p.yaml"][..], ErrorKind::MissingRequiredArgument),
            (&["policy", "test", "--exec", "/x"], ErrorKind::MissingRequiredArgument),
            (&["policy", "test", "p.yaml", "--exec", "/x", "--write", "/y"], ErrorKind::ArgumentConflict),
            (&["policy", "test", "p.yaml", "--exec", "/x", "--protocol", "udp"], ErrorKind::ArgumentConflict),
            (&["policy", "test", "p.yaml", "--protocol", "udp"], ErrorKind::MissingRequiredArgument),
            (&["policy", "test", "p.yaml", "--connect-unix", "/x", "--protocol", "udp"], ErrorKind::ArgumentConflict),
            (&["policy", "test", "p.yaml", "--connect-unix", "/x", "--exec", "/y"], ErrorKind::ArgumentConflict),
            (&["policy", "test", "p.yaml", "--connect", "1.2.3.4:1", "--protocol", "sctp"], ErrorKind::InvalidValue),
            // An address without a port parses (ICMP takes one); `policy test`
            // refuses it for TCP and UDP, also with exit code 2.
            (&["policy", "test", "p.yaml", "--connect", "[2001:db8::1]443"], ErrorKind::ValueValidation),
            (&["policy", "test", "p.yaml", "--connect", "example.com:443"], ErrorKind::ValueValidation),
        ] {
            let e = usage_error(args);
            assert_eq!((e.kind(), e.exit_code()), (kind, 2), "{args:?}: {e}");
        }
        let e = usage_error(&["policy", "test", "p.yaml", "--connect", "[2001:db8::1]443"]).to_string();
        assert!(e.contains("brackets"), "{e}");
    }

    #[test]
    fn policy_diff_takes_two_policies() {
        match parse(&["policy", "diff", "coder", "new.yaml", "--exit-code"]).command {
            Command::Policy(PolicyCmd::Diff(a)) => {
                assert_eq!((a.old.as_str(), a.new.as_str(), a.exit_code, a.json), ("coder", "new.yaml", true, false));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["policy", "diff", "a.yaml", "b.yaml"]).command {
            Command::Policy(PolicyCmd::Diff(a)) => assert!(!a.exit_code),
            other => panic!("{other:?}"),
        }
        assert_eq!(usage_error(&["policy", "diff", "a.yaml"]).exit_code(), 2);
        assert_eq!(usage_error(&["policy", "diff", "a", "b", "c"]).exit_code(), 2);
    }

    #[test]
    fn receipts_commands_parse_their_filters() {
        match parse(&["receipts", "list", "--identity", "coder", "--action", "exec", "--verdict", "would-deny", "--type", "decision", "--since", "2h", "--until", "2026-01-01T02:00:00+02:00", "--limit", "7"]).command {
            Command::Receipts(ReceiptsCmd::List(a)) => {
                assert_eq!((a.identity.as_deref(), a.action.as_deref(), a.limit), (Some("coder"), Some("exec"), 7));
                assert_eq!((a.verdict, a.receipt_type), (Some(crate::receipts::Verdict::WouldDeny), Some(crate::receipts::ReceiptType::Decision)));
                let ago = std::time::SystemTime::now().duration_since(a.since.unwrap()).unwrap();
                assert!(ago >= std::time::Duration::from_secs(7200) && ago < std::time::Duration::from_secs(7260), "{ago:?}");
                assert_eq!(a.until, Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600)));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["receipts", "list"]).command {
            Command::Receipts(ReceiptsCmd::List(a)) => assert_eq!((a.limit, a.since, a.verdict), (100, None, None)),
            other => panic!("{other:?}"),
        }
        match parse(&["receipts", "show", "4ABB333E"]).command {
            Command::Receipts(ReceiptsCmd::Show { receipt, .. }) => assert_eq!(receipt, Selector::Id("4abb333e".into())),
            other => panic!("{other:?}"),
        }
        match parse(&["receipts", "export", "--since", "1d", "-o", "out.jsonl"]).command {
            Command::Receipts(ReceiptsCmd::Export { since, until, output }) => {
                assert!(since.is_some() && until.is_none());
                assert_eq!(output, Some(PathBuf::from("out.jsonl")));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["receipts", "export"]).command, Command::Receipts(ReceiptsCmd::Export { output: None, .. })));
        assert!(matches!(parse(&["receipts", "key", "rotate"]).command, Command::Receipts(ReceiptsCmd::Key(ReceiptsKeyCmd::Rotate(_)))));
    }

    #[test]
    fn bad_receipt_filters_are_usage_errors_that_say_why() {
        for (args, says) in [
            (&["receipts", "list", "--verdict", "denied"][..], "unknown verdict \"denied\"; one of: allow, deny"),
            (&["receipts", "list", "--action", "connect"], "connects and sends are `egress`"),
            (&["receipts", "list", "--type", "holds"], "unknown receipt type"),
            (&["receipts", "list", "--since", "yesterday"], "is neither an RFC 3339 time"),
            (&["receipts", "list", "--limit", "0"], "at least 1"),
            (&["receipts", "list", "--limit", "5000"], "agentctl receipts export"),
            (&["receipts", "export", "--until", "later"], "duration ago"),
            (&["receipts", "show", "0"], "neither a seq"),
            (&["receipts", "show", "xyz"], "neither a seq"),
            (&["receipts", "show"], "ID|SEQ"),
        ] {
            let e = usage_error(args);
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
            assert!(e.to_string().contains(says), "{args:?}: {e}");
        }
    }

    #[test]
    fn json_and_yaml_exclude_each_other() {
        assert_eq!(usage_error(&["policy", "show", "p", "--json", "--yaml"]).kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn socket_from_flag_anywhere_or_default() {
        assert_eq!(parse(&["--socket", "/tmp/x.sock", "status"]).socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(parse(&["status", "--socket", "/tmp/y.sock"]).socket, PathBuf::from("/tmp/y.sock"));
        if std::env::var_os("AGENTD_SOCKET").is_none() {
            assert_eq!(parse(&["status"]).socket, PathBuf::from(DEFAULT_SOCKET));
        }
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [&["bogus"][..], &["bind", "only-one"], &["policy", "validate"], &["events", "--last", "x"]] {
            assert_eq!(usage_error(args).exit_code(), 2, "{args:?}");
        }
        // No arguments at all: help, as a usage error.
        assert_eq!(usage_error(&[]).exit_code(), 2);
    }

    #[test]
    fn every_command_has_examples_in_its_help() {
        fn walk(cmd: &mut clap::Command, path: &str) {
            let help = cmd.render_long_help().to_string();
            assert!(help.contains("EXAMPLES:"), "`{path} --help` has no EXAMPLES section:\n{help}");
            for sub in cmd.get_subcommands_mut() {
                if sub.get_name() == "help" {
                    continue;
                }
                let p = format!("{path} {}", sub.get_name());
                walk(sub, &p);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        walk(&mut cmd, "agentctl");
    }
}
