//! Running external programs the way every xtask step does: say what is about to
//! run, and when it fails, say what the user should do about it.

use std::{
    fmt::Display,
    io::{BufRead as _, BufReader},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// One progress line. Everything xtask prints starts with `xtask:` so it stands out
/// from the output of the programs it runs.
pub fn say(msg: impl Display) {
    println!("xtask: {msg}");
}

pub fn warn(msg: impl Display) {
    println!("xtask: warning: {msg}");
}

/// The command as a user would type it, with the environment it sets, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio and fails unless it exits 0. `hint` tells the
/// user what to do when it fails.
pub fn run(cmd: &mut Command, hint: &str) -> Result<()> {
    say(format!("running: {}", describe(cmd)));
    let status = cmd.status().with_context(|| format!("could not start `{}`; {hint}", describe(cmd)))?;
    check(cmd, status, hint)
}

/// Runs `cmd` and returns its stdout; stderr is included in the error if it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", describe(cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `cmd` starts and exits 0; its output is discarded. For cheap checks.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Runs `cmd`, echoing its stdout line by line (so progress shows live) and handing
/// each line to `on_line`. stderr is inherited. Returns the exit status.
pub fn stream(cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<ExitStatus> {
    say(format!("running: {}", describe(cmd)));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    let stdout = child.stdout.take().context("child stdout was not captured")?;
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bytes, not read_line: a test may print invalid UTF-8, which must not end the tier.
        let n = reader.read_until(b'\n', &mut buf).context("reading the output of a child process")?;
        if n == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        println!("{line}");
        on_line(line);
    }
    child.wait().with_context(|| format!("waiting for `{}`", describe(cmd)))
}

/// Turns a non-zero exit into an error carrying `hint`.
pub fn check(cmd: &Command, status: ExitStatus, hint: &str) -> Result<()> {
    if !status.success() {
        bail!("`{}` failed ({status}); {hint}", describe(cmd));
    }
    Ok(())
}
