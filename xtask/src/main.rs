//! `cargo xtask`: the project's own commands — set up a machine, run every test tier,
//! boot the test VM, and install and start agentd. `main` only parses arguments and
//! turns the outcome into an exit code; each command lives in its own module.

#![forbid(unsafe_code)]

mod bench;
mod cmd;
mod initramfs;
mod libtest;
mod run;
mod setup;
mod test;
mod vm;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, test, run and boot agentd",
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Install what building and testing need (apt packages, rust-src, bpf-linker,
    /// the VM test kernel); does nothing for what is already there.
    Setup,
    /// Run every test: unit, host kernel, and Debian's 6.1 kernel in QEMU.
    Test(test::Args),
    /// Boot the test kernel in QEMU and run one binary in it: `cargo xtask vm -- BINARY [ARGS]...`.
    Vm(vm::Args),
    /// Build, install and start agentd with the default policy (needs root).
    Run(run::Args),
    /// Measure the speed targets beside baselines taken in the same run; exits 1 if
    /// a target is missed.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::ensure(setup::Needs::ALL).map(|()| {
            cmd::say("setup complete: everything is present");
            0
        }),
        // The test summary is the last thing printed, so a failed run just exits 1.
        Cmd::Test(args) => test::command(args).map(|ok| if ok { 0 } else { 1 }),
        Cmd::Vm(args) => vm::command(args),
        Cmd::Run(args) => run::command(args).map(|()| 0),
        Cmd::Bench(args) => bench::command(args).map(|ok| if ok { 0 } else { 1 }),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("xtask:   because: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
