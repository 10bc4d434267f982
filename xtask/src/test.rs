//! `cargo xtask test`: the one command that runs every test, in three tiers:
//!
//! 1. unit: `cargo test` over the workspace, no root, no kernel features;
//! 2. host: the integration tests against this machine's kernel (root);
//! 3. vm: the integration tests inside Debian's 6.1 kernel under QEMU, where BPF
//!    LSM programs run (the host kernel refuses them).
//!
//! Each tier reports passed/failed/skipped; the last lines are one line per tier and
//! the totals. A skip is not a pass: under `CI=true` or `--strict` a skipped test in
//! the kernel tiers fails the run.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{self, say, warn},
    libtest::{Skip, Tally},
    setup, vm, workspace,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run only this tier (repeatable); all three by default.
    #[arg(long = "tier", value_enum)]
    pub tiers: Vec<Tier>,
    /// Fail when a host- or VM-tier test is skipped (always on when CI is set).
    #[arg(long)]
    pub strict: bool,
    /// Kill the VM tier's VM after this many seconds (a hang detector: the tier takes ~20 min under TCG on 2 idle cores, longer on a busy machine).
    #[arg(long, default_value_t = 2400)]
    pub vm_timeout: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Unit,
    Host,
    Vm,
}

impl Tier {
    fn number(self) -> u8 {
        match self {
            Tier::Unit => 1,
            Tier::Host => 2,
            Tier::Vm => 3,
        }
    }

    /// Skips count against strict mode only where the kernel is the point.
    fn strict_about_skips(self) -> bool {
        self != Tier::Unit
    }
}

/// What one tier did.
struct Report {
    tier: Tier,
    /// e.g. `tier 2 (host kernel 6.18.44)`.
    label: String,
    passed: u64,
    failed: u64,
    skipped: u64,
    skips: Vec<Skip>,
    /// Names of failed tests.
    failures: Vec<String>,
    /// Failures that are not a failing test (build error, crash, timeout).
    problems: Vec<String>,
    took: Duration,
}

impl Report {
    fn new(tier: Tier, label: String) -> Report {
        Report {
            tier,
            label,
            passed: 0,
            failed: 0,
            skipped: 0,
            skips: Vec::new(),
            failures: Vec::new(),
            problems: Vec::new(),
            took: Duration::ZERO,
        }
    }

    fn add_tally(&mut self, t: &Tally) {
        self.passed += t.passed();
        self.failed += t.failed();
        self.skipped += t.skipped();
        self.skips.extend(t.all_skips());
        self.failures.extend(t.failures.iter().cloned());
    }

    /// Records a failure that no test reported, and counts it, so the totals never
    /// read "0 failed" for a tier that did not run.
    fn problem(&mut self, msg: impl Into<String>) {
        self.problems.push(msg.into());
        self.failed += 1;
    }
}

/// Runs the selected tiers and prints the summary. `Ok(false)` means something failed
/// (already reported).
pub fn command(args: Args) -> Result<bool> {
    let mut tiers = if args.tiers.is_empty() { vec![Tier::Unit, Tier::Host, Tier::Vm] } else { args.tiers.clone() };
    tiers.sort();
    tiers.dedup();
    let strict = args.strict || workspace::env_flag("CI");

    // Every tier builds the workspace, and its build script compiles the eBPF programs.
    let toolchain = setup::ensure(setup::Needs { toolchain: true, vm: false, agent_tools: false }).map_err(|e| format!("{e:#}"));
    let mut builds = Builds::default();
    let mut reports = Vec::new();
    for tier in tiers {
        let label = label(tier);
        say(format!("==== {label} ===="));
        let started = Instant::now();
        let mut report = Report::new(tier, label);
        let result = match &toolchain {
            Err(e) => Err(anyhow::anyhow!("setup failed: {e}")),
            Ok(()) => match tier {
                Tier::Unit => unit(&mut report),
                Tier::Host => host(&mut report, &mut builds),
                Tier::Vm => vm_tier(&mut report, &mut builds, Duration::from_secs(args.vm_timeout)),
            },
        };
        if let Err(e) = result {
            report.problem(format!("{e:#}"));
        }
        report.took = started.elapsed();
        say(format!(
            "{}: {} passed, {} failed, {} skipped in {:.1} s",
            report.label,
            report.passed,
            report.failed,
            report.skipped,
            report.took.as_secs_f64()
        ));
        reports.push(report);
    }
    Ok(summarize(&reports, strict))
}

fn label(tier: Tier) -> String {
    match tier {
        Tier::Unit => "tier 1 (unit)".to_string(),
        Tier::Host => format!("tier 2 (host kernel {})", workspace::kernel_release()),
        Tier::Vm => match setup::test_kernel() {
            Some(k) => format!("tier 3 (VM kernel {})", k.version),
            None => "tier 3 (VM kernel 6.1)".to_string(),
        },
    }
}

/// Prints skips, problems, timing, one line per tier and the totals (last).
fn summarize(reports: &[Report], strict: bool) -> bool {
    say("==== summary ====");
    for r in reports {
        for s in &r.skips {
            say(format!("skipped in tier {}: {}: {}", r.tier.number(), s.test, s.reason));
        }
        for f in &r.failures {
            say(format!("FAILED in tier {}: {f}", r.tier.number()));
        }
        for p in &r.problems {
            say(format!("FAILED tier {}: {p}", r.tier.number()));
        }
    }
    for r in reports {
        say(format!("{} took {:.1} s", r.label, r.took.as_secs_f64()));
    }
    let strict_skips: u64 = reports.iter().filter(|r| r.tier.strict_about_skips()).map(|r| r.skipped).sum();
    let strict_failure = strict && strict_skips > 0;
    if strict_failure {
        say(format!(
            "FAILED: {strict_skips} host/VM-tier test(s) skipped in strict mode (CI is set or --strict): a skip is not a \
             pass. Fix what the skip reasons above name (run as root, on a kernel with what the test needs)"
        ));
    } else if strict_skips > 0 {
        warn(format!("{strict_skips} host/VM-tier test(s) skipped; under CI=true this run would fail"));
    }
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for r in reports {
        println!("{}: {} passed, {} failed, {} skipped", r.label, r.passed, r.failed, r.skipped);
        passed += r.passed;
        failed += r.failed;
        skipped += r.skipped;
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    failed == 0 && !strict_failure
}

/// Tier 1: every crate's own tests. agent-ebpf is excluded: it is `no_std` for the BPF
/// target and only builds through aya-build; agentd-tests holds the kernel tiers.
fn unit(report: &mut Report) -> Result<()> {
    let mut c = workspace::cargo();
    c.args(["test", "--workspace", "--exclude", "agentd-tests", "--exclude", "agent-ebpf"]);
    run_libtest(report, &mut c)
}

/// Runs a `cargo test` command, counting from its output.
fn run_libtest(report: &mut Report, c: &mut Command) -> Result<()> {
    let mut tally = Tally::default();
    let status = cmd::stream(c, |line| tally.line(line))?;
    report.add_tally(&tally);
    if !status.success() && tally.failed() == 0 {
        report.problem(format!(
            "`{}` failed ({status}) without a failing test: a build error or a crashed test binary, see above",
            cmd::describe(c)
        ));
    } else if status.success() && tally.results == 0 {
        report.problem("no test binary reported a result; see the output above");
    }
    Ok(())
}

/// Binaries shared by the host and VM tiers, built once.
#[derive(Default)]
struct Builds {
    daemon: Option<PathBuf>,
}

impl Builds {
    /// Builds agentd and agentctl (debug) and returns the directory holding them.
    fn daemon(&mut self) -> Result<PathBuf> {
        if let Some(d) = &self.daemon {
            return Ok(d.clone());
        }
        let mut c = workspace::cargo();
        c.args(["build", "-p", "agent-daemon"]);
        cmd::run(&mut c, "fix the build error above")?;
        let dir = workspace::target_dir()?.join("debug");
        for bin in ["agentd", "agentctl"] {
            if !dir.join(bin).is_file() {
                bail!("`cargo build -p agent-daemon` did not produce {}", dir.join(bin).display());
            }
        }
        self.daemon = Some(dir.clone());
        Ok(dir)
    }
}

/// Tier 2: the host integration tests, as root, against this machine's kernel.
fn host(report: &mut Report, builds: &mut Builds) -> Result<()> {
    if !workspace::is_root() {
        let reason =
            "not running as root: these tests load eBPF programs and create cgroups; run `sudo -E cargo xtask test`";
        say(format!("skipping the whole tier: {reason}"));
        report.skipped += 1;
        report.skips.push(Skip { test: "all host-tier tests".to_string(), reason: reason.to_string() });
        return Ok(());
    }
    // The false-positive scenarios run git, gcc, make, python3 and npm as an agent.
    setup::ensure(setup::Needs { toolchain: false, vm: false, agent_tools: true })?;
    let dir = builds.daemon()?;
    let mut c = workspace::cargo();
    c.args(["test", "-p", "agentd-tests", "--test", "host", "--", "--test-threads=1", "--nocapture"])
        .env("AGENTD_BIN", dir.join("agentd"))
        .env("AGENTCTL_BIN", dir.join("agentctl"))
        // Built by `cargo test -p agentd-tests` with the test (it is that package's bin).
        .env("AGENTD_PROBE_BIN", dir.join("probe"))
        .env("AGENTD_TEST_TIER", "host")
        .env("RUST_BACKTRACE", "1");
    run_libtest(report, &mut c)
}

/// Tier 3: the VM integration tests, run by the test binary inside the VM.
fn vm_tier(report: &mut Report, builds: &mut Builds, timeout: Duration) -> Result<()> {
    setup::ensure(setup::Needs { toolchain: false, vm: true, agent_tools: true })?;
    report.label = label(Tier::Vm);
    let dir = builds.daemon()?;
    let artifacts = build_vm_tests()?;
    let mut extra = vm::project_binaries(&dir);
    extra.retain(|(_, guest)| *guest != vm::guest_bin("probe"));
    if let Some(probe) = &artifacts.probe {
        extra.push((probe.clone(), vm::guest_bin("probe")));
    }
    let req = vm::Request {
        env: vm::default_env(&extra),
        program: artifacts.test,
        args: vec!["--test-threads=1".to_string(), "--nocapture".to_string()],
        extra,
        timeout,
    };
    let outcome = vm::run(&req)?;
    let mut tally = Tally::default();
    outcome.console.iter().for_each(|l| tally.line(l));
    report.add_tally(&tally);
    match outcome.end {
        vm::End::Exited(0) if tally.results == 0 => {
            report.problem("the VM test binary reported no result; see the console above")
        }
        vm::End::Exited(0) => {}
        vm::End::Exited(code) if tally.failed() == 0 => report
            .problem(format!("the VM test binary exited with {code} without a failing test; see the console above")),
        vm::End::Exited(_) => {}
        end => report.problem(end.describe(timeout.as_secs())),
    }
    if let Some(t) = outcome.boot_time {
        say(format!("VM boot (QEMU start to /init running the tests): {:.1} s", t.as_secs_f64()));
    }
    Ok(())
}

struct VmTestArtifacts {
    test: PathBuf,
    probe: Option<PathBuf>,
}

/// Builds the VM test binary (and the probe it runs) and finds their paths in
/// cargo's JSON messages.
fn build_vm_tests() -> Result<VmTestArtifacts> {
    let mut c = workspace::cargo();
    c.args(["test", "-p", "agentd-tests", "--test", "vm", "--no-run", "--message-format=json-render-diagnostics"]);
    say(format!("running: {}", cmd::describe(&c)));
    let out = c
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{}`", cmd::describe(&c)))?;
    cmd::check(&c, out.status, "fix the build error above")?;
    parse_artifacts(&String::from_utf8_lossy(&out.stdout))
}

fn parse_artifacts(json_lines: &str) -> Result<VmTestArtifacts> {
    let mut test = None;
    let mut probe = None;
    for line in json_lines.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else { continue };
        let kinds = msg["target"]["kind"].as_array().cloned().unwrap_or_default();
        let name = msg["target"]["name"].as_str().unwrap_or("");
        if name == "vm" && kinds.iter().any(|k| k == "test") {
            test = Some(PathBuf::from(exe));
        } else if name == "probe" && kinds.iter().any(|k| k == "bin") {
            probe = Some(PathBuf::from(exe));
        }
    }
    let test = test.context("cargo built no `vm` test executable; is `[[test]] name = \"vm\"` in tests/Cargo.toml?")?;
    Ok(VmTestArtifacts { test, probe })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(tier: Tier, passed: u64, failed: u64, skipped: u64) -> Report {
        let mut r = Report::new(tier, format!("tier {}", tier.number()));
        (r.passed, r.failed, r.skipped) = (passed, failed, skipped);
        r
    }

    #[test]
    fn a_kernel_tier_skip_fails_only_in_strict_mode() {
        let reports = [report(Tier::Unit, 3, 0, 1), report(Tier::Host, 2, 0, 1)];
        assert!(summarize(&reports, false));
        assert!(!summarize(&reports, true));
        // Skips in the unit tier never fail a run.
        assert!(summarize(&[report(Tier::Unit, 3, 0, 1)], true));
        assert!(!summarize(&[report(Tier::Vm, 3, 1, 0)], false));
    }

    #[test]
    fn finds_test_and_probe_executables() {
        let json = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"agentd_tests"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"probe"},"executable":"/t/debug/probe"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"vm"},"executable":"/t/debug/deps/vm-abc"}
{"reason":"build-finished","success":true}"#;
        let a = parse_artifacts(json).expect("parses");
        assert_eq!(a.test, PathBuf::from("/t/debug/deps/vm-abc"));
        assert_eq!(a.probe, Some(PathBuf::from("/t/debug/probe")));
        assert!(parse_artifacts("").is_err());
    }
}
