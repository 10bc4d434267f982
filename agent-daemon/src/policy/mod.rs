//! Policies: the user-facing `agentd.io/v1` format, its meaning, and its
//! compilation to the kernel's maps.
//!
//! ```text
//! text ──parse──▶ Policy ──compile──▶ CompiledPolicy ──(enforce)──▶ BPF maps
//!                   │
//!                   └──evaluate(Action)──▶ Decision
//! ```
//!
//! - [`parse()`] reads and validates a file. Every problem is reported at once, each
//!   as `file:line:column: message; hint: what to do`. Unknown keys are errors.
//! - [`evaluate()`] is the reference meaning of a policy, with the format's full
//!   glob and precedence rules. It judges a path the way the kernel sees it
//!   (normalised, symlinks resolved on this machine).
//! - [`compile()`] lays the rules out for the kernel's longest-prefix lookups and,
//!   for `*`/`**` patterns a prefix cannot express, a per-kind automaton, so that
//!   the kernel decides exactly as [`evaluate()`] does (the `crosscheck` tests
//!   simulate the kernel's lookups over the output to hold it to that). It never
//!   widens a rule: what the kernel cannot express is an error
//!   ([`ErrorKind::Unenforceable`], [`ErrorKind::Limit`]), and what it skips for
//!   now (DNS names) only ever narrows, with a warning.
//!
//! Precedence, as the format defines it: the most specific matching rule wins,
//! and at equal specificity deny > ask > audit > allow. For paths an exact path
//! beats any pattern, then the longer literal prefix (before the first wildcard)
//! wins, then `*` beats `**`. For egress the longer CIDR prefix wins, then a rule
//! with `ports` beats one without, then a rule with `protocol`; ICMP is allowed
//! only by a rule that names it. `egress.unix` rules are path rules (as write
//! rules), with built-in rules ([`Builtins`]) that outrank every pattern of the
//! file and yield to its exact paths. Rules have stable ids in file order (exec,
//! then write, then egress, then egress.unix, from 1, then the built-in unix
//! rules; 0 is the default).

pub mod automaton;
mod builtin;
mod compile;
pub mod compiled;
mod diff;
mod error;
mod eval;
mod glob;
mod model;
mod parse;
mod path;
pub use path::FileId;
mod validate;
pub mod vectors;

#[cfg(test)]
mod crosscheck;
#[cfg(test)]
mod tests;

pub use builtin::{Builtins, DEFAULT_AGENTD_SOCKET};
pub use compile::compile;
pub use diff::{diff, DecisionChange, Outcome, PolicyDiff, RuleChange, RuleRef};
pub use error::{ErrorKind, Location, PolicyError, PolicyErrors};
pub use eval::{evaluate, evaluate_as, Action, Decision, Standing};
pub use glob::{Glob, GlobError, KernelForm, Specificity};
pub use model::{
    ActionKind, Approvals, EgressRule, EgressSection, Mode, PathRule, PathSection, Policy, PortRange, Protocol,
    Receipts, RuleKind, System, Target, UnixRule, UnixSection, UnixTarget,
};
pub use validate::{API_VERSION, KIND};

/// Parses and validates a policy file, for an agentd listening on the default
/// socket. `file_name` is only used in messages.
pub fn parse(file_name: &str, text: &str) -> Result<Policy, PolicyErrors> {
    parse_with(file_name, text, &Builtins::default())
}

/// Parses and validates a policy file whose built-in unix rules protect the
/// socket `builtins` names (the daemon's `--socket`).
pub fn parse_with(file_name: &str, text: &str, builtins: &Builtins) -> Result<Policy, PolicyErrors> {
    let root = parse::parse_yaml(file_name, text)?;
    validate::validate(file_name, text, &root, builtins)
}
