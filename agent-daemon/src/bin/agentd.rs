//! `agentd`: the enforcement daemon. Parses flags, sets up logging and runs
//! `agentd::daemon`; every error becomes one line on stderr and a non-zero exit.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

/// Kernel-level enforcement for AI agents.
///
/// agentd loads its eBPF programs (or adopts the ones an earlier agentd left
/// pinned), installs every identity's policy and every cgroup binding from the state
/// directory, and serves agentctl on a unix socket. Enforcement lives in the kernel:
/// when agentd stops or crashes, every bound cgroup stays enforced, and the next
/// agentd picks up where it left off.
///
/// agentd must run as root. Processes in a bound cgroup can never change
/// enforcement through the socket, whatever their uid.
#[derive(Parser, Debug)]
#[command(
    name = "agentd",
    version,
    after_help = "\
FILES:
  STATE_DIR/policies/NAME.yaml     applied policies, exactly as applied
  STATE_DIR/identities/NAME.json   identities (id, policy, owner, public key)
  STATE_DIR/keys/NAME.key          identities' Ed25519 private keys (0600)
  STATE_DIR/bindings.json          cgroups bound to identities
  STATE_DIR/receipts/              signed receipt journal and node key (0700)
  /etc/agentd/agentd.yaml          configuration (--config): receipt retention, sinks

CONFIGURATION (all optional):
  receipts:
    segment_bytes: 16777216        # a new journal segment every 16 MiB
    retention: {max_segments: 64, max_bytes: 1073741824}
  sinks:                           # copies of every receipt, as stored (verifiable)
    - {type: jsonl, path: /var/log/agentd/receipts.jsonl}
    - {type: syslog, address: 127.0.0.1:514, transport: udp, min_severity: notice}
    - {type: hec, url: http://splunk:8088/services/collector/event, token_file: /etc/agentd/hec-token}

EXAMPLES:
  agentd                        # as the systemd unit runs it
  agentd --state-dir /tmp/agentd --socket /tmp/agentd/agentd.sock --pin-dir /sys/fs/bpf/agentd-dev
                                # a private instance next to the system one

Then: agentctl policy apply FILE; agentctl identity create NAME --policy POLICY;
agentctl bind CGROUP NAME (or agentctl run --identity NAME -- CMD).
Logs go to stderr; RUST_LOG=debug shows more. SIGTERM stops agentd and leaves
enforcement in place; `agentctl doctor` shows what this kernel can enforce."
)]
struct Args {
    /// Where policies, identities, their private keys and bindings are kept
    /// (created with mode 0700).
    #[arg(long, value_name = "DIR", env = "AGENTD_STATE_DIR", default_value = "/var/lib/agentd")]
    state_dir: PathBuf,

    /// The unix socket agentctl connects to (mode 0660; group `agentd` if that group
    /// exists, whose members may then make changes).
    #[arg(long, value_name = "PATH", env = "AGENTD_SOCKET", default_value = "/run/agentd/agentd.sock")]
    socket: PathBuf,

    /// bpffs directory for the pinned programs and maps. Use a different one for a
    /// second, independent agentd (e.g. tests).
    #[arg(long, value_name = "DIR", env = "AGENTD_PIN_DIR", default_value = "/sys/fs/bpf/agentd")]
    pin_dir: PathBuf,

    /// POST each held action (and how it ended) as JSON to this http:// URL, with
    /// retries (repeat the flag, or comma-separate in AGENTD_WEBHOOKS, for several).
    #[arg(long = "webhook", value_name = "URL", env = "AGENTD_WEBHOOKS", value_delimiter = ',')]
    webhooks: Vec<String>,

    /// The configuration file: receipt retention and receipt sinks (JSONL, syslog,
    /// Splunk HEC). Default /etc/agentd/agentd.yaml, which may be absent; a file
    /// named here must exist. It must not be writable by anyone but root.
    #[arg(long, value_name = "FILE", env = "AGENTD_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = agentd::daemon::Config {
        state_dir: args.state_dir,
        socket: args.socket,
        pin_dir: args.pin_dir,
        webhooks: args.webhooks,
        config_file: args.config,
    };
    match runtime.block_on(agentd::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentd: {e}");
            ExitCode::FAILURE
        }
    }
}
