//! `cargo xtask run`: what a new user runs on a fresh machine. Sets up, builds the
//! release binaries, installs them with the policies, starts agentd (as a systemd
//! unit when systemd runs, else as a background process) and applies the default
//! policy.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{self, say, warn},
    setup, workspace,
};

const BIN_DIR: &str = "/usr/local/bin";
const POLICY_DIR: &str = "/etc/agentd/policies";
const UNIT_PATH: &str = "/etc/systemd/system/agentd.service";
const SOCKET: &str = "/run/agentd/agentd.sock";
const LOG: &str = "/var/log/agentd.log";
/// Pid of the agentd this command started without systemd, so a later run can
/// replace exactly that process.
const PID_FILE: &str = "/run/agentd-xtask.pid";
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Without systemd: run agentd in the foreground (logs to the terminal) instead of
    /// in the background.
    #[arg(long)]
    pub foreground: bool,
}

pub fn command(args: Args) -> Result<()> {
    if !workspace::is_root() {
        bail!("`cargo xtask run` installs into {BIN_DIR} and /etc and loads eBPF programs: run it as root (`sudo -E cargo xtask run`)");
    }
    // The agent tools (git, gcc, python3, npm) are for the tests, not for running agentd.
    setup::ensure(setup::Needs { toolchain: true, vm: true, agent_tools: false })?;

    say("building release binaries");
    cmd::run(workspace::cargo().args(["build", "--release", "-p", "agent-daemon"]), "fix the build error above")?;
    let release = workspace::target_dir()?.join("release");

    let systemd = Path::new("/run/systemd/system").is_dir();
    if !systemd {
        // Replacing the binary of a running daemon is fine (rename), but the old
        // process would keep running the old code and hold the socket.
        stop_previous_background_agentd()?;
    }
    for bin in ["agentd", "agentctl"] {
        install_file(&release.join(bin), &Path::new(BIN_DIR).join(bin), 0o755)?;
    }
    let default_policy = install_policies()?;

    let mut foreground_child = None;
    if systemd {
        start_with_systemd()?;
    } else {
        foreground_child = Some(start_directly(args.foreground)?);
    }
    wait_for_socket(foreground_child.as_mut())?;

    match default_policy {
        Some(policy) => cmd::run(
            Command::new(Path::new(BIN_DIR).join("agentctl")).args(["policy", "apply"]).arg(&policy),
            &format!("fix the policy (`agentctl policy validate {}`) and apply it again", policy.display()),
        )?,
        None => warn("policies/default.yaml does not exist in this checkout: no default policy applied"),
    }

    say("agentd is running. Next steps:");
    say("  agentctl doctor                      # which kernel mechanisms enforce exec, write and egress here");
    say(format!("  agentctl policy apply {POLICY_DIR}/coding-agent.yaml"));
    say("  agentctl identity create coder --policy coding-agent --owner $USER");
    say("  agentctl run --identity coder -- bash   # a shell under that identity");
    say("  agentctl events --follow             # what is denied, live");
    if systemd {
        say("  journalctl -u agentd -f              # the daemon's log");
    } else if !args.foreground {
        say(format!("  tail -f {LOG}          # the daemon's log"));
    }

    if let Some(mut child) = foreground_child.filter(|_| args.foreground) {
        say("agentd runs in the foreground; Ctrl-C stops it");
        let status = child.wait().context("waiting for agentd")?;
        say(format!("agentd exited: {status}"));
    }
    Ok(())
}

/// Copies `from` to `to` through a temporary file and a rename, so a running
/// binary is replaced rather than overwritten ("text file busy").
fn install_file(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let dir = to.parent().context("install target has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = to.with_extension("xtask-new");
    fs::copy(from, &tmp).with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", tmp.display()))?;
    fs::rename(&tmp, to).with_context(|| format!("moving {} into place", to.display()))?;
    say(format!("installed {}", to.display()));
    Ok(())
}

/// Installs `policies/*.yaml`; a policy the user changed in /etc is kept. Returns the
/// installed default policy, if the checkout has one.
fn install_policies() -> Result<Option<PathBuf>> {
    let src = workspace::root().join("policies");
    let dest = Path::new(POLICY_DIR);
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut entries: Vec<PathBuf> = match fs::read_dir(&src) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            warn(format!("cannot read {}: {e}; no policies installed", src.display()));
            return Ok(None);
        }
    };
    entries.retain(|p| p.extension().is_some_and(|x| x == "yaml"));
    entries.sort();
    for from in &entries {
        let Some(name) = from.file_name() else { continue };
        let to = dest.join(name);
        let new = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        match fs::read(&to) {
            Ok(old) if old == new => say(format!("{} is up to date", to.display())),
            // Never overwrite an edited policy: the user's copy is the one that counts.
            Ok(_) => warn(format!("kept {} (it differs from {}; compare them by hand)", to.display(), from.display())),
            Err(_) => install_file(from, &to, 0o644)?,
        }
    }
    let default = dest.join("default.yaml");
    Ok(src.join("default.yaml").is_file().then_some(default))
}

fn start_with_systemd() -> Result<()> {
    install_file(&workspace::root().join("dist/agentd.service"), Path::new(UNIT_PATH), 0o644)?;
    let hint = "see `systemctl status agentd` and `journalctl -u agentd`";
    cmd::run(Command::new("systemctl").arg("daemon-reload"), hint)?;
    cmd::run(Command::new("systemctl").args(["enable", "--now", "agentd"]), hint)?;
    // enable --now leaves an already running agentd on its old binary.
    cmd::run(Command::new("systemctl").args(["restart", "agentd"]), hint)
}

/// Starts agentd without systemd: in the background with its log in LOG, or in the
/// foreground sharing this terminal.
fn start_directly(foreground: bool) -> Result<Child> {
    let mut c = Command::new(Path::new(BIN_DIR).join("agentd"));
    c.stdin(Stdio::null());
    if foreground {
        say("starting agentd in the foreground");
    } else {
        say(format!("starting agentd in the background, log in {LOG}"));
        let log =
            fs::OpenOptions::new().create(true).append(true).open(LOG).with_context(|| format!("opening {LOG}"))?;
        let err = log.try_clone().with_context(|| format!("opening {LOG}"))?;
        // Its own process group: Ctrl-C in this terminal must not stop it later.
        c.stdout(log).stderr(err).process_group(0);
    }
    let child = c.spawn().with_context(|| format!("starting {BIN_DIR}/agentd"))?;
    if !foreground {
        fs::write(PID_FILE, format!("{}\n", child.id())).with_context(|| format!("writing {PID_FILE}"))?;
    }
    Ok(child)
}

/// Stops the agentd a previous `cargo xtask run` started, identified by its pid
/// file (and checked to still be agentd), so the new build takes over.
fn stop_previous_background_agentd() -> Result<()> {
    let Ok(text) = fs::read_to_string(PID_FILE) else { return Ok(()) };
    let Ok(pid) = text.trim().parse::<i32>() else { return Ok(()) };
    if !is_agentd(pid) {
        let _ = fs::remove_file(PID_FILE);
        return Ok(());
    }
    say(format!("stopping the agentd started earlier (pid {pid})"));
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("sending SIGTERM to the previous agentd")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if Path::new(&format!("/proc/{pid}")).exists() {
        bail!("the previous agentd (pid {pid}) did not stop within 15 s after SIGTERM; stop it (`kill {pid}`) and run again");
    }
    let _ = fs::remove_file(PID_FILE);
    Ok(())
}

/// Whether `pid` is still an agentd (pids are reused): its command name, or for a
/// wrapper such as an interpreter, one of its arguments, names agentd.
fn is_agentd(pid: i32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    comm.trim() == "agentd"
        || cmdline
            .split(|b| *b == 0)
            .any(|arg| Path::new(&*String::from_utf8_lossy(arg)).file_name().is_some_and(|n| n == "agentd"))
}

/// Waits until agentd accepts connections on its socket (a stale socket file from an
/// earlier run does not count). `child` is the process started here (none under
/// systemd): if it exits first, that is reported at once.
fn wait_for_socket(mut child: Option<&mut Child>) -> Result<()> {
    say(format!("waiting for {SOCKET}"));
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        if std::os::unix::net::UnixStream::connect(SOCKET).is_ok() {
            say("agentd is up");
            return Ok(());
        }
        if let Some(c) = child.as_deref_mut() {
            if let Some(status) = c.try_wait().context("checking on agentd")? {
                bail!("agentd exited during start-up ({status}){}", log_hint());
            }
        }
        if Instant::now() > deadline {
            bail!("agentd did not create {SOCKET} within {} s{}", SOCKET_TIMEOUT.as_secs(), log_hint());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The end of agentd's log, for error messages.
fn log_hint() -> String {
    if Path::new("/run/systemd/system").is_dir() {
        return "; see `journalctl -u agentd -n 50`".to_string();
    }
    match tail(Path::new(LOG), 4096) {
        Ok(t) if !t.trim().is_empty() => format!("; the end of {LOG}:\n{t}"),
        _ => format!("; {LOG} is empty (in the foreground the log is above)"),
    }
}

fn tail(path: &Path, bytes: u64) -> Result<String> {
    let mut f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(bytes)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
