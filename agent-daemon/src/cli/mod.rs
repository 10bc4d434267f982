//! `agentctl`, the command line for agentd: the argument grammar (clap) and the
//! dispatch to one module per command group.
//!
//! Every command talks to the daemon over its unix socket, except `policy validate`
//! (offline) and the local checks `doctor` prints when the daemon is down. Errors
//! come back as [`CliError`], which knows its message, hint and exit code; the
//! binary only prints them.

mod bind;
mod client;
mod error;
mod events;
mod identity;
mod output;
mod policy;
mod run;
mod status;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
  agentctl events --follow";

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
    /// Apply, list, show or validate policies.
    #[command(
        subcommand,
        after_help = "\
EXAMPLES:
  agentctl policy validate policies/*.yaml
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
}

#[derive(Subcommand, Debug)]
pub enum IdentityCmd {
    /// Create an identity, with a new Ed25519 key pair, on a policy.
    #[command(after_help = "\
EXAMPLES:
  agentctl identity create coder --policy coding-agent
  agentctl identity create mcp-github --policy mcp-server-readonly --owner alice")]
    Create {
        /// The identity's name.
        name: String,
        /// The policy it runs under (see `agentctl policy list`).
        #[arg(long)]
        policy: String,
        /// Who the agent acts for (default: you; under sudo, the user who ran sudo).
        #[arg(long, value_name = "WHO")]
        owner: Option<String>,
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
        Command::Policy(PolicyCmd::Validate { files }) => policy::validate(&files).map(ok),
        Command::Policy(PolicyCmd::Apply { file, json }) => policy::apply(&socket, &file, json.json).await.map(ok),
        Command::Policy(PolicyCmd::List(f)) => policy::list(&socket, f.json).await.map(ok),
        Command::Policy(PolicyCmd::Show { name, json, yaml }) => {
            policy::show(&socket, &name, json.json, yaml).await.map(ok)
        }
        Command::Identity(IdentityCmd::Create { name, policy, owner, json }) => {
            identity::create(&socket, &name, &policy, owner, json.json).await.map(ok)
        }
        Command::Identity(IdentityCmd::List(f)) => identity::list(&socket, f.json).await.map(ok),
        Command::Identity(IdentityCmd::Show { name, json }) => identity::show(&socket, &name, json.json).await.map(ok),
        Command::Bind { cgroup, identity, json } => bind::bind(&socket, &cgroup, &identity, json.json).await.map(ok),
        Command::Unbind { cgroup, json } => bind::unbind(&socket, &cgroup, json.json).await.map(ok),
        Command::Bindings(f) => bind::list(&socket, f.json).await.map(ok),
        Command::Run(args) => run::run(&socket, args).await,
        Command::Events(args) => events::events(&socket, args).await.map(ok),
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
            &["bind", "a.service", "i", "--json"],
            &["unbind", "a.service", "--json"],
            &["bindings", "--json"],
            &["events", "--json"],
            &["events", "--follow", "--json"],
        ] {
            let cli = parse(args);
            let json = match cli.command {
                Command::Doctor(f) | Command::Status(f) | Command::Bindings(f) => f.json,
                Command::Policy(PolicyCmd::List(f)) | Command::Identity(IdentityCmd::List(f)) => f.json,
                Command::Policy(PolicyCmd::Apply { json, .. })
                | Command::Policy(PolicyCmd::Show { json, .. })
                | Command::Identity(IdentityCmd::Create { json, .. })
                | Command::Identity(IdentityCmd::Show { json, .. })
                | Command::Bind { json, .. }
                | Command::Unbind { json, .. } => json.json,
                Command::Events(a) => a.json.json,
                other => panic!("{other:?}"),
            };
            assert!(json, "{args:?}");
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
