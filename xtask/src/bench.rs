//! `cargo xtask bench`: the speed targets, each measured beside a baseline taken in
//! the same run on the same machine, so the figure means something on any host.
//!
//! Receipts (issue: signed receipts): events turned into durable, signed, chained
//! receipts per second, through the real journal (sealing, segment writes,
//! fsync), beside the raw Ed25519 signing rate of this machine. Target: at least
//! 50,000 receipts/s on 2 cores.

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{self, say},
    setup, workspace,
};

/// The figure for event → durable signed receipt throughput.
const RECEIPTS_PER_SEC_TARGET: f64 = 50_000.0;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Receipts to append.
    #[arg(long, default_value_t = 200_000)]
    pub receipts: u64,
    /// Directory on the disk to measure (the journal fsyncs there); default: the
    /// system's temporary directory.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

pub fn command(args: Args) -> Result<bool> {
    setup::ensure(setup::Needs { toolchain: true, vm: false, agent_tools: false })?;
    let mut c = workspace::cargo();
    c.args([
        "test",
        "--release",
        "-p",
        "agent-daemon",
        "--lib",
        "receipts::tests::bench_receipts_per_second",
        "--",
        "--ignored",
        "--exact",
        "--nocapture",
    ]);
    c.env("AGENTD_BENCH_N", args.receipts.to_string());
    if let Some(d) = &args.dir {
        c.env("AGENTD_BENCH_DIR", d);
    }
    say(format!("running (a release build first, which can take minutes): {}", cmd::describe(&c)));
    let out = cmd::output(&mut c).context("the receipts benchmark failed")?;
    let line = out
        .lines()
        .find(|l| l.starts_with("BENCH "))
        .context("the receipts benchmark printed no BENCH line")?;
    let (rate, raw) = parse(line)?;
    say(format!(
        "receipts: {rate:.0} durable signed receipts/s; raw Ed25519 on this machine: {raw:.0} signatures/s (ratio {:.2}); target {RECEIPTS_PER_SEC_TARGET:.0}/s: {}",
        rate / raw,
        if rate >= RECEIPTS_PER_SEC_TARGET { "met" } else { "NOT met" }
    ));
    Ok(rate >= RECEIPTS_PER_SEC_TARGET)
}

/// `BENCH receipts_per_sec=N raw_ed25519_signs_per_sec=M`.
fn parse(line: &str) -> Result<(f64, f64)> {
    let mut rate = None;
    let mut raw = None;
    for field in line.split_whitespace().skip(1) {
        match field.split_once('=') {
            Some(("receipts_per_sec", v)) => rate = v.parse().ok(),
            Some(("raw_ed25519_signs_per_sec", v)) => raw = v.parse().ok(),
            _ => {}
        }
    }
    match (rate, raw) {
        (Some(a), Some(b)) if b > 0.0 => Ok((a, b)),
        _ => bail!("cannot read the benchmark's result line: {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_result_line() {
        assert_eq!(super::parse("BENCH receipts_per_sec=155000.5 raw_ed25519_signs_per_sec=66000").unwrap(), (155000.5, 66000.0));
        assert!(super::parse("BENCH receipts_per_sec=1").is_err());
    }
}
