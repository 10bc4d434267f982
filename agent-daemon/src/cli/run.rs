//! `agentctl run --identity NAME -- CMD...`: run a command under an identity.
//!
//! The order is what makes it safe:
//! 1. create a fresh cgroup `<parent>/<identity>-<pid>`;
//! 2. bind it through the daemon (on failure: remove it, report, never run CMD);
//! 3. spawn CMD, the child moving itself into the cgroup *before* exec; if that
//!    write fails the child fails before exec (fail closed: CMD never runs unbound);
//! 4. relay SIGINT/SIGTERM/SIGHUP/SIGQUIT to it and wait;
//! 5. kill whatever it left in the cgroup, wait (bounded) until the cgroup is empty,
//!    unbind, remove the cgroup. If it does not empty, it stays bound: processes
//!    left behind must not run unenforced.
//!
//! agentctl exits with CMD's status (128+N if signal N killed it, 127 if it could
//! not be executed).

use std::{
    ffi::CString,
    io::Read as _,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use tokio::signal::unix::{signal, SignalKind};

use super::{cgroup, client::Client, error::CliError, RunArgs};

/// How long leftover processes get to disappear after SIGKILL.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Exit status when CMD could not be executed.
const EXIT_NOT_EXECUTED: u8 = 127;
/// The byte the child writes to the marker pipe when it could not join the cgroup,
/// so the parent can tell that apart from a failed exec.
const JOIN_FAILED: u8 = b'c';

pub async fn run(socket: &Path, args: RunArgs) -> Result<u8, CliError> {
    let RunArgs { identity, cgroup_parent, command } = args;
    let program = command.first().cloned().ok_or_else(|| CliError::Usage("run: no command given".into()))?;

    let mut client = Client::connect(socket).await?;
    refuse_if_inside_bound_cgroup(&mut client).await?;

    // Handle signals from here on: a Ctrl-C while the cgroup exists must lead to
    // the cleanup below, not kill agentctl and leave a bound cgroup behind.
    let mut signals = Signals::new()?;
    let parent = run_parent(cgroup_parent.as_deref())?;
    let cg = create_cgroup(&parent, &identity)?;
    let cg_str = cg.display().to_string();
    if let Err(e) = client.bind(&cg_str, &identity).await {
        // Never run the command unbound.
        remove_cgroup(&cg);
        return Err(e);
    }

    let outcome = if let Some(sig) = signals.pending() {
        Outcome::Interrupted(sig)
    } else {
        spawn_and_wait(&cg, &command, &mut signals).await
    };

    // Cleanup, whatever happened.
    let cleanup = drain(&cg).await;
    match cleanup {
        Ok(()) => {
            // The cgroup is empty and removed either way; a binding agentd could not
            // drop only names a directory that no longer exists.
            let unbound = client.unbind(&cg_str).await;
            remove_cgroup(&cg);
            if let Err(e) = unbound {
                eprintln!("agentctl: could not unbind {cg_str} (the cgroup itself is removed): {e}");
                eprintln!("hint: once agentd answers again: `agentctl unbind {cg_str}`");
            }
        }
        Err(left) => {
            eprintln!(
                "agentctl: {left} process(es) in {cg_str} did not exit within {} s of SIGKILL; the cgroup stays bound to {identity}",
                DRAIN_TIMEOUT.as_secs()
            );
            eprintln!("hint: once they are gone: `agentctl unbind {cg_str} && rmdir {cg_str}`");
        }
    }

    match outcome {
        Outcome::Exited { status, relayed } => {
            if let Some(msg) = death_message(&program, status, relayed) {
                eprintln!("{msg}");
            }
            Ok(exit_code(status))
        }
        Outcome::NotStarted(e) => {
            let code = e.code;
            eprintln!("agentctl: {}", e.message);
            Ok(code)
        }
        Outcome::JoinFailed(e) => Err(CliError::Failed(format!(
            "{program} was not started: it could not join its cgroup {cg_str} ({e}), and agentctl never runs a command unbound"
        ))),
        Outcome::Interrupted(sig) => Ok(128 + sig as u8),
        Outcome::Error(e) => Err(e),
    }
}

/// What became of the command.
#[derive(Debug)]
enum Outcome {
    /// It ran and ended; `relayed` is the last signal agentctl passed on to it.
    Exited {
        status: ExitStatus,
        relayed: Option<Signal>,
    },
    /// It could not be executed.
    NotStarted(NotStarted),
    /// The child could not join the cgroup, so it stopped before exec.
    JoinFailed(std::io::Error),
    /// agentctl was told to stop before the command started.
    Interrupted(Signal),
    Error(CliError),
}

#[derive(Debug)]
struct NotStarted {
    code: u8,
    message: String,
}

/// The daemon refuses binds from inside a bound cgroup (an agent must not change its
/// own enforcement). Say so before creating anything.
async fn refuse_if_inside_bound_cgroup(client: &mut Client) -> Result<(), CliError> {
    let Ok(own) = cgroup::current_cgroup(std::process::id()) else { return Ok(()) };
    let bindings = client.bindings().await?;
    match bindings.bindings.iter().find(|b| cgroup::is_within(&own, Path::new(&b.cgroup_path))) {
        Some(b) => Err(CliError::InsideBoundCgroup { cgroup: b.cgroup_path.clone(), identity: b.identity.clone() }),
        None => Ok(()),
    }
}

/// The directory the run's cgroup goes in: `--cgroup-parent` (absolute, or relative
/// to the cgroup2 mount), else `<mount>/agentd.run`. Created if missing.
fn run_parent(arg: Option<&Path>) -> Result<PathBuf, CliError> {
    let mount = cgroup::cgroup2_mount().map_err(|e| CliError::Cgroup(e.to_string()))?;
    let parent = parent_dir(&mount, arg)?;
    std::fs::create_dir_all(&parent)
        .map_err(|e| CliError::io(format!("cannot create cgroup {}", parent.display()), e))?;
    if !parent.join("cgroup.procs").is_file() {
        return Err(CliError::Cgroup(format!("{} is not a cgroup (no cgroup.procs in it)", parent.display())));
    }
    Ok(parent)
}

fn parent_dir(mount: &Path, arg: Option<&Path>) -> Result<PathBuf, CliError> {
    let parent = match arg {
        None => mount.join("agentd.run"),
        Some(p) if p.is_absolute() => p.to_path_buf(),
        Some(p) => mount.join(p),
    };
    if parent.components().any(|c| matches!(c, std::path::Component::ParentDir)) || !parent.starts_with(mount) {
        return Err(CliError::Usage(format!(
            "--cgroup-parent {} is not under the cgroup2 mount {}",
            parent.display(),
            mount.display()
        )));
    }
    Ok(parent)
}

/// `<identity>-<pid>`, with anything that does not belong in a directory name
/// replaced.
fn cgroup_name(identity: &str, pid: u32) -> String {
    let safe: String =
        identity.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    let safe = safe.trim_start_matches('.');
    format!("{}-{pid}", if safe.is_empty() { "identity" } else { safe })
}

fn create_cgroup(parent: &Path, identity: &str) -> Result<PathBuf, CliError> {
    let cg = parent.join(cgroup_name(identity, std::process::id()));
    match std::fs::create_dir(&cg) {
        Ok(()) => Ok(cg),
        // Left by an earlier agentctl with our pid that died: reuse it only if empty.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                Ok(cg)
            } else {
                Err(CliError::Cgroup(format!("{} already exists and has processes in it", cg.display())))
            }
        }
        Err(e) => Err(CliError::io(format!("cannot create cgroup {}", cg.display()), e)),
    }
}

fn remove_cgroup(cg: &Path) {
    if let Err(e) = std::fs::remove_dir(cg) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("agentctl: could not remove cgroup {}: {e}", cg.display());
        }
    }
}

async fn spawn_and_wait(cg: &Path, command: &[String], signals: &mut Signals) -> Outcome {
    let procs = match CString::new(cg.join("cgroup.procs").as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(_) => return Outcome::Error(CliError::Cgroup(format!("{} has a NUL byte in its path", cg.display()))),
    };
    let (marker_r, marker_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return Outcome::Error(CliError::io("creating a pipe", e.into())),
    };
    let marker = marker_w.as_raw_fd();

    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes only open(2), write(2) and
    // close(2) calls on a C string and a descriptor prepared before the fork, and
    // reads errno. It allocates nothing.
    unsafe {
        cmd.pre_exec(move || join_cgroup(&procs, marker));
    }
    let spawned = cmd.spawn();
    drop(marker_w);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return if child_failed_to_join(marker_r) {
                Outcome::JoinFailed(e)
            } else {
                Outcome::NotStarted(not_started(&command[0], &e))
            };
        }
    };
    let Some(pid) = child.id() else {
        return Outcome::Error(CliError::Failed(format!("{} exited before agentctl saw its pid", command[0])));
    };
    let pid = Pid::from_raw(pid as i32);
    let mut relayed = None;
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => Outcome::Exited { status, relayed },
                    Err(e) => Outcome::Error(CliError::io(format!("waiting for {}", command[0]), e)),
                };
            }
            sig = signals.recv() => {
                if should_relay(sig) && kill(pid, sig).is_ok() {
                    relayed = Some(sig);
                }
            }
        }
    }
}

/// In the child, before exec: move this process into the cgroup. Any failure stops
/// the child before exec.
fn join_cgroup(procs: &CString, marker: i32) -> std::io::Result<()> {
    // SAFETY: open(2) on a valid NUL-terminated path; async-signal-safe.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        mark_join_failed(marker);
        return Err(err);
    }
    // SAFETY: write(2) of one byte from a static buffer to the descriptor just opened.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let err = std::io::Error::last_os_error();
    // SAFETY: close(2) of the descriptor opened above, exactly once.
    unsafe { libc::close(fd) };
    if n != 1 {
        mark_join_failed(marker);
        return Err(err);
    }
    Ok(())
}

fn mark_join_failed(marker: i32) {
    // SAFETY: write(2) of one byte from a static buffer to the marker pipe's write
    // end, which the child inherited open. The result does not matter: without the
    // marker the parent still reports a failure to start.
    unsafe { libc::write(marker, [JOIN_FAILED].as_ptr().cast(), 1) };
}

/// After a failed spawn: did the child report that it could not join the cgroup?
/// std reaps a child whose pre-exec step or exec failed before `spawn` returns, so
/// every write end is closed by now and the read cannot block.
fn child_failed_to_join(marker_r: OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    matches!(std::fs::File::from(marker_r).read(&mut byte), Ok(1) if byte[0] == JOIN_FAILED)
}

fn not_started(program: &str, e: &std::io::Error) -> NotStarted {
    let message = match e.kind() {
        std::io::ErrorKind::NotFound => format!("{program}: command not found"),
        std::io::ErrorKind::PermissionDenied if e.raw_os_error() == Some(libc::EPERM) => format!(
            "{program}: exec refused (EPERM), possibly by agentd's policy for this identity: see `agentctl events`"
        ),
        std::io::ErrorKind::PermissionDenied => format!("{program}: permission denied (is it executable?)"),
        _ => format!("cannot run {program}: {e}"),
    };
    NotStarted { code: EXIT_NOT_EXECUTED, message }
}

/// Whether to pass a signal agentctl received on to the command. SIGINT and SIGQUIT
/// from the keyboard already reached the command (the terminal signals the whole
/// foreground process group, which the command shares with agentctl): relaying them
/// would deliver a second Ctrl-C, which many agents read as "quit now".
fn should_relay(sig: Signal) -> bool {
    match sig {
        Signal::SIGINT | Signal::SIGQUIT => !in_terminal_foreground(),
        _ => true,
    }
}

fn in_terminal_foreground() -> bool {
    // SAFETY: getpgrp(2) and tcgetpgrp(3) only read process state; tcgetpgrp on a
    // descriptor that is not a terminal fails with ENOTTY and touches no memory.
    let (own, terminal) = unsafe {
        let own = libc::getpgrp();
        let terminal = [0, 1, 2].into_iter().map(|fd| libc::tcgetpgrp(fd)).find(|&pg| pg > 0);
        (own, terminal)
    };
    terminal == Some(own)
}

/// Kills everything left in the cgroup and waits until it is empty. `Err` is how
/// many processes are still there at the deadline.
async fn drain(cg: &Path) -> Result<(), usize> {
    let procs = cg.join("cgroup.procs");
    let kill_file = cg.join("cgroup.kill");
    let has_kill = kill_file.exists();
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    loop {
        let pids = match std::fs::read_to_string(&procs) {
            Ok(text) => parse_pids(&text),
            // The cgroup is gone: nothing left in it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) => Vec::new(),
        };
        if pids.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(pids.len());
        }
        // cgroup.kill (Linux 5.14) kills the whole cgroup atomically, forks in
        // flight included; without it, kill what is listed and look again.
        if !(has_kill && std::fs::write(&kill_file, "1").is_ok()) {
            for pid in &pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn parse_pids(text: &str) -> Vec<i32> {
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// The shell's convention: the exit code, or 128+N for signal N.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        (None, None) => 1,
    }
}

/// What to say when a signal ended the command. Nothing for a Ctrl-C, a closed pipe,
/// or a signal agentctl relayed (the user asked for it); SIGKILL may be agentd's
/// fallback enforcement, so point at the events.
fn death_message(program: &str, status: ExitStatus, relayed: Option<Signal>) -> Option<String> {
    let sig = Signal::try_from(status.signal()?).ok()?;
    if matches!(sig, Signal::SIGINT | Signal::SIGPIPE) || relayed == Some(sig) {
        return None;
    }
    let core = if status.core_dumped() { " (core dumped)" } else { "" };
    let agentd = if sig == Signal::SIGKILL { " (possibly by agentd: see `agentctl events`)" } else { "" };
    Some(format!("agentctl: {program} was killed by {}{core}{agentd}", sig.as_str()))
}

/// The signals agentctl handles while a run is in progress.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, CliError> {
        let on = |kind: SignalKind| signal(kind).map_err(|e| CliError::io("installing signal handlers", e));
        Ok(Signals {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
            quit: on(SignalKind::quit())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.hup.recv() => Signal::SIGHUP,
            _ = self.quit.recv() => Signal::SIGQUIT,
        }
    }

    /// A signal that already arrived, without waiting.
    fn pending(&mut self) -> Option<Signal> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        for (s, sig) in [
            (&mut self.int, Signal::SIGINT),
            (&mut self.term, Signal::SIGTERM),
            (&mut self.hup, Signal::SIGHUP),
            (&mut self.quit, Signal::SIGQUIT),
        ] {
            if s.poll_recv(&mut cx).is_ready() {
                return Some(sig);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn signalled(sig: i32) -> ExitStatus {
        ExitStatus::from_raw(sig)
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(exited(0)), 0);
        assert_eq!(exit_code(exited(3)), 3);
        assert_eq!(exit_code(signalled(libc::SIGKILL)), 137);
        assert_eq!(exit_code(signalled(libc::SIGTERM)), 143);
    }

    #[test]
    fn sigkill_points_at_agentd() {
        assert_eq!(
            death_message("claude", signalled(libc::SIGKILL), None).unwrap(),
            "agentctl: claude was killed by SIGKILL (possibly by agentd: see `agentctl events`)"
        );
        assert_eq!(
            death_message("a.out", signalled(libc::SIGSEGV | 0x80), None).unwrap(),
            "agentctl: a.out was killed by SIGSEGV (core dumped)"
        );
    }

    #[test]
    fn quiet_when_the_user_asked_for_the_signal() {
        assert_eq!(death_message("x", exited(1), None), None);
        assert_eq!(death_message("x", signalled(libc::SIGINT), None), None);
        assert_eq!(death_message("x", signalled(libc::SIGPIPE), None), None);
        assert_eq!(death_message("x", signalled(libc::SIGTERM), Some(Signal::SIGTERM)), None);
        assert!(death_message("x", signalled(libc::SIGTERM), None).is_some());
    }

    #[test]
    fn cannot_execute_is_127_with_a_reason() {
        let e = not_started("nosuchcmd", &std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!((e.code, e.message.as_str()), (127, "nosuchcmd: command not found"));
        let e = not_started("/etc/passwd", &std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(e.message.contains("permission denied"), "{}", e.message);
        let e = not_started("curl", &std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(e.message.contains("agentd") && e.message.contains("agentctl events"), "{}", e.message);
    }

    #[test]
    fn cgroup_names_are_safe() {
        assert_eq!(cgroup_name("coder", 42), "coder-42");
        assert_eq!(cgroup_name("../../etc", 7), "_.._etc-7");
        assert_eq!(cgroup_name("a b/c", 1), "a_b_c-1");
        assert_eq!(cgroup_name("", 1), "identity-1");
    }

    #[test]
    fn parent_stays_under_the_mount() {
        let m = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(parent_dir(m, None).unwrap(), m.join("agentd.run"));
        assert_eq!(parent_dir(m, Some(Path::new("agents"))).unwrap(), m.join("agents"));
        assert_eq!(parent_dir(m, Some(&m.join("x/y"))).unwrap(), m.join("x/y"));
        assert_eq!(parent_dir(m, Some(Path::new("/tmp/x"))).unwrap_err().exit_code(), 2);
        assert_eq!(parent_dir(m, Some(Path::new("../../tmp"))).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn pids_from_cgroup_procs() {
        assert_eq!(parse_pids("12\n345\n"), [12, 345]);
        assert!(parse_pids("").is_empty());
    }

    #[test]
    fn a_failed_join_never_execs() {
        // The pre-exec step against a path that is not a cgroup: the child must stop
        // before exec, and the parent must know why.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let not_a_cgroup = dir.path().join("missing");
        let witness = dir.path().join("ran");
        let mut signals = rt.block_on(async { Signals::new() }).unwrap();
        let cmd = vec!["touch".to_string(), witness.display().to_string()];
        let outcome = rt.block_on(spawn_and_wait(&not_a_cgroup, &cmd, &mut signals));
        assert!(matches!(outcome, Outcome::JoinFailed(_)), "{outcome:?}");
        assert!(!witness.exists(), "the command ran although it could not join its cgroup");
    }

    #[test]
    fn a_missing_command_is_not_a_join_failure() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // A plain file standing in for cgroup.procs: the join "succeeds".
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        let mut signals = rt.block_on(async { Signals::new() }).unwrap();
        let cmd = vec!["/nonexistent/agentd-test-command".to_string()];
        match rt.block_on(spawn_and_wait(dir.path(), &cmd, &mut signals)) {
            Outcome::NotStarted(e) => assert_eq!(e.code, 127),
            other => panic!("{other:?}"),
        }
    }
}
