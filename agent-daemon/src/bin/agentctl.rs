//! `agentctl`: the command line for agentd. Parsing and the commands live in
//! `agentd::cli`; this only turns the outcome into an exit status.
#![forbid(unsafe_code)]

use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;

fn main() -> ExitCode {
    // Usage errors, --help and --version exit here (usage errors with status 2).
    let cli = agentd::cli::Cli::parse();
    match agentd::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let _ = std::io::stderr().write_all(e.render().as_bytes());
            ExitCode::from(e.exit_code())
        }
    }
}
