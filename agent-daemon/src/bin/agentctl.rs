//! `agentctl`: the command line for agentd.
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = agentd::ctl::Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentctl: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(agentd::ctl::run(cli)) {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("agentctl: {e}");
            std::process::ExitCode::from(e.exit_code() as u8)
        }
    }
}
