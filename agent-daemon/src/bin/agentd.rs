//! `agentd`: the agentd enforcement daemon.
use std::path::PathBuf;

use clap::Parser;

/// Kernel-level enforcement for AI agents: loads the eBPF programs (or adopts the
/// ones an earlier agentd pinned), installs every identity's policy and binding,
/// and serves agentctl on a unix socket. Enforcement stays in the kernel when
/// agentd stops or crashes.
#[derive(Parser)]
#[command(version, after_help = "EXAMPLES:\n  agentd                                   # defaults, as the systemd unit runs it\n  agentd --state-dir /tmp/s --socket /tmp/s/agentd.sock --pin-dir /sys/fs/bpf/agentd-dev\n\nLogs go to stderr; set RUST_LOG=debug for more.")]
struct Args {
    /// Identities, policies, bindings and keys (created 0700).
    #[arg(long, env = "AGENTD_STATE_DIR", default_value = "/var/lib/agentd")]
    state_dir: PathBuf,
    /// The agentctl socket (mode 0660).
    #[arg(long, env = "AGENTD_SOCKET", default_value = "/run/agentd/agentd.sock")]
    socket: PathBuf,
    /// bpffs directory for the pinned programs and maps.
    #[arg(long, env = "AGENTD_PIN_DIR", default_value = "/sys/fs/bpf/agentd")]
    pin_dir: PathBuf,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = agentd::service::Config { state_dir: args.state_dir, socket: args.socket, pin_dir: args.pin_dir };
    match rt.block_on(agentd::service::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
