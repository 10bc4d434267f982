//! `agentctl run`: a fresh cgroup, bound before the command starts, removed after.

use std::{
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{client, CtlError};
use crate::{api::pb, service::cgroups};

pub async fn run(socket: &Path, identity: &str, parent: Option<PathBuf>, command: &[String]) -> Result<i32, CtlError> {
    let mut c = client::connect(socket).await?;
    let mount = cgroups::cgroup2_mount().map_err(|e| CtlError::Other(e.to_string()))?;
    let parent = parent.unwrap_or_else(|| mount.join("agentd.run"));
    std::fs::create_dir_all(&parent).map_err(|e| CtlError::Other(format!("creating {}: {e}", parent.display())))?;
    let cg = parent.join(format!("{identity}-{}", std::process::id()));
    std::fs::create_dir(&cg).map_err(|e| CtlError::Other(format!("creating cgroup {}: {e}", cg.display())))?;
    let path = cg.display().to_string();
    if let Err(e) = c.bind(pb::BindRequest { cgroup_path: path.clone(), identity: identity.into() }).await {
        let _ = std::fs::remove_dir(&cg);
        // Never run the command unbound.
        return Err(CtlError::Rpc(e));
    }
    let status = spawn_and_wait(&cg, command).await;
    cleanup(&cg);
    let unbound = c.unbind(pb::UnbindRequest { cgroup_path: path.clone() }).await;
    let _ = std::fs::remove_dir(&cg);
    if let Err(e) = unbound {
        eprintln!("agentctl: could not unbind {path}: {}", e.message());
    }
    let status = status?;
    if let Some(sig) = status.signal() {
        let name = if sig == libc::SIGKILL { "SIGKILL".to_string() } else { format!("signal {sig}") };
        eprintln!("agentctl: {} was killed by {name}{}", command[0], if sig == libc::SIGKILL { " (possibly by agentd: see `agentctl events`)" } else { "" });
        return Ok(128 + sig);
    }
    Ok(status.code().unwrap_or(1))
}

async fn spawn_and_wait(cg: &Path, command: &[String]) -> Result<std::process::ExitStatus, CtlError> {
    let procs = std::ffi::CString::new(cg.join("cgroup.procs").as_os_str().as_encoded_bytes())
        .map_err(|_| CtlError::Other("cgroup path has a NUL byte".into()))?;
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: between fork and exec only open/write/close on a prepared C string.
    // The child joins the bound cgroup before exec, and fails rather than run unbound.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.raw_os_error() == Some(libc::EPERM) { "denied by agentd's policy (EPERM)".to_string() } else { e.to_string() };
            eprintln!("agentctl: cannot run {}: {code}", command[0]);
            return Ok(std::process::ExitStatus::from_raw(if e.kind() == std::io::ErrorKind::NotFound { 127 << 8 } else { 126 << 8 }));
        }
    };
    let pid = child.id() as i32;
    let wait = tokio::task::spawn_blocking(move || child.wait());
    tokio::pin!(wait);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| CtlError::Other(e.to_string()))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(|e| CtlError::Other(e.to_string()))?;
    loop {
        tokio::select! {
            r = &mut wait => {
                let r = r.map_err(|e| CtlError::Other(e.to_string()))?;
                return r.map_err(|e| CtlError::Other(format!("waiting for {}: {e}", command[0])));
            }
            _ = term.recv() => { unsafe { libc::kill(pid, libc::SIGTERM) }; }
            _ = int.recv() => { unsafe { libc::kill(pid, libc::SIGINT) }; }
        }
    }
}

/// Kills whatever the command left in its cgroup and waits (bounded) until empty.
fn cleanup(cg: &Path) {
    let kill = cg.join("cgroup.kill");
    let procs = cg.join("cgroup.procs");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = std::fs::read_to_string(&procs).unwrap_or_default();
        if pids.trim().is_empty() || Instant::now() > deadline {
            return;
        }
        if std::fs::write(&kill, "1").is_err() {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
