//! The exec hold: a fanotify group with `FAN_OPEN_EXEC_PERM` marks on every real
//! filesystem, so an `execve` waits in the kernel (at the open of the binary) until
//! agentd answers. Only the answering is here; who is held and for how long is the
//! hold service's business.
//!
//! What the kernel guarantees and what it does not: it has no timeout for a
//! permission event, so agentd owns the deadline; and when the fanotify file
//! descriptor closes (agentd killed) it *allows* every pending event. That is why
//! an allowed hold is not the last word: the exec check (BPF LSM, or
//! `sched_process_exec` + SIGKILL) lets an `ask` through only with the one-shot
//! approval agentd writes into `EXEC_APPROVALS` just before it answers
//! `FAN_ALLOW` (see `agent_common::ExecApproval`).
//!
//! Filesystems mounted after start are marked as they appear ([`ExecGate::watch_mounts`]
//! polls agentd's mount table). Between a mount and its mark an `ask` exec from it
//! is not held, and the exec check denies it for want of an approval; mounts made
//! in other mount namespaces (a container's) are not seen, so execs from those are
//! denied the same way rather than held.

use std::{
    collections::BTreeSet,
    fs,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::MetadataExt as _,
    },
    path::PathBuf,
    sync::Arc,
};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyEvent, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};
use tracing::{info, warn};

use super::EnforceError;

/// Filesystems nobody runs programs from; marking them only adds events.
const PSEUDO_FILESYSTEMS: &[&str] = &[
    "proc", "sysfs", "cgroup", "cgroup2", "bpf", "tracefs", "securityfs", "debugfs", "devpts", "mqueue", "pstore",
    "configfs", "fusectl", "hugetlbfs", "autofs", "binfmt_misc", "nsfs", "efivarfs", "rpc_pipefs", "selinuxfs",
];

/// A fanotify group that holds every exec on the marked filesystems.
pub struct ExecGate {
    fan: Arc<Fanotify>,
    /// Devices of the filesystems marked so far (one mark per filesystem).
    seen: BTreeSet<u64>,
    /// Mount points marked, for `doctor`.
    pub marked: Vec<PathBuf>,
}

/// One held exec: the process is blocked in `execve` until this is answered.
/// Dropping it unanswered denies it (EPERM), so no path forgets a process.
pub struct HeldExec {
    fan: Arc<Fanotify>,
    event: Option<FanotifyEvent>,
    /// The process (thread group) that is exec'ing.
    pub tgid: u32,
    /// The binary as the kernel opened it (`/proc/self/fd/N`), symlinks resolved.
    pub path: PathBuf,
    /// The binary's device, in the kernel's encoding (major << 20 | minor), and inode.
    pub dev: u32,
    pub ino: u64,
}

impl HeldExec {
    pub fn allow(mut self) {
        self.answer(Response::FAN_ALLOW);
    }

    pub fn deny(mut self) {
        self.answer(Response::FAN_DENY);
    }

    fn answer(&mut self, r: Response) {
        if let Some(ev) = self.event.take() {
            if let Some(fd) = ev.fd() {
                if let Err(e) = self.fan.write_response(FanotifyResponse::new(fd, r)) {
                    // ENOENT: the process died while held. Anything else leaves it
                    // waiting until agentd exits, when the kernel lets it go on to
                    // the exec check, which denies an unapproved ask.
                    warn!(tgid = self.tgid, error = %e, "could not answer a held exec");
                }
            }
        }
    }
}

impl Drop for HeldExec {
    fn drop(&mut self) {
        self.answer(Response::FAN_DENY);
    }
}

fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xf_ffff)
}

/// Marks, for exec holds, every filesystem in `mountinfo` that is not a pseudo
/// filesystem and whose device is not in `seen` (which it adds to); returns the
/// mount points marked.
fn mark_new(fan: &Fanotify, mountinfo: &str, seen: &mut BTreeSet<u64>) -> Vec<PathBuf> {
    let mut marked = Vec::new();
    for m in crate::cgroup::parse_mountinfo(mountinfo) {
        let (point, fstype) = (m.mount_point, m.fs_type);
        if PSEUDO_FILESYSTEMS.contains(&fstype.as_str()) {
            continue;
        }
        let Ok(meta) = fs::metadata(&point) else { continue };
        if !seen.insert(meta.dev()) {
            continue;
        }
        // The whole filesystem where the kernel allows it (every mount of it,
        // bind mounts included); else this mount.
        let whole = fan.mark(MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM, MaskFlags::FAN_OPEN_EXEC_PERM, None, Some(&point));
        let r = whole.or_else(|_| {
            fan.mark(MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT, MaskFlags::FAN_OPEN_EXEC_PERM, None, Some(&point))
        });
        match r {
            Ok(()) => marked.push(point),
            Err(e) => warn!(mount = %point.display(), fstype = %fstype, error = %e, "cannot hold execs from this filesystem; an ask exec from it is denied"),
        }
    }
    marked
}

impl ExecGate {
    /// Creates the group and marks every mounted filesystem that is not a pseudo
    /// filesystem. Needs CAP_SYS_ADMIN.
    pub fn open() -> Result<ExecGate, EnforceError> {
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_UNLIMITED_QUEUE,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(|e| EnforceError::kernel("fanotify_init(FAN_CLASS_CONTENT)", e))?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| EnforceError::kernel("reading /proc/self/mountinfo", e))?;
        let mut seen = BTreeSet::new();
        let marked = mark_new(&fan, &mountinfo, &mut seen);
        if marked.is_empty() {
            return Err(EnforceError::Other("fanotify could mark no filesystem for exec holds".into()));
        }
        info!(filesystems = marked.len(), "exec holds: fanotify FAN_OPEN_EXEC_PERM marks in place");
        Ok(ExecGate { fan: Arc::new(fan), seen, marked })
    }

    /// Marks filesystems as they are mounted, on a thread of its own, for as long
    /// as agentd runs: it polls `/proc/self/mountinfo`, which the kernel flags on
    /// every change to the mount table.
    pub fn watch_mounts(&self) -> Result<(), EnforceError> {
        let table = fs::File::open("/proc/self/mountinfo").map_err(|e| EnforceError::kernel("opening /proc/self/mountinfo", e))?;
        let fan = self.fan.clone();
        let mut seen = self.seen.clone();
        std::thread::Builder::new()
            .name("exec-mounts".into())
            .spawn(move || loop {
                let mut fds = [PollFd::new(table.as_fd(), PollFlags::POLLPRI)];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        warn!(error = %e, "cannot watch the mount table; filesystems mounted from now on are not held (ask execs from them are denied)");
                        return;
                    }
                }
                let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else { continue };
                // A device number that is no longer mounted may come back as another
                // filesystem (tmpfs numbers are reused): forget it, so that is marked.
                let mounted: BTreeSet<u64> = crate::cgroup::parse_mountinfo(&mountinfo)
                    .iter()
                    .filter_map(|m| fs::metadata(&m.mount_point).ok().map(|meta| meta.dev()))
                    .collect();
                seen.retain(|d| mounted.contains(d));
                for point in mark_new(&fan, &mountinfo, &mut seen) {
                    info!(mount = %point.display(), "exec holds: marked a filesystem mounted after start");
                }
            })
            .map_err(|e| EnforceError::kernel("starting the mount watcher", e))?;
        Ok(())
    }

    /// Reads events for ever (on its own thread), handing each exec to `handle`,
    /// which must answer it (or drop it, which denies) — promptly for processes
    /// that are not held: every exec on the machine waits for this answer.
    pub fn run(self, mut handle: impl FnMut(HeldExec)) -> EnforceError {
        let own = std::process::id();
        loop {
            let events = match self.fan.read_events() {
                Ok(ev) => ev,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return EnforceError::kernel("reading fanotify events", e),
            };
            for ev in events {
                if !ev.check_version() {
                    return EnforceError::Other("fanotify event version mismatch".into());
                }
                let Some(fd) = ev.fd() else {
                    // FAN_NOFD: queue overflow. Cannot happen with an unlimited
                    // queue; nothing to answer.
                    continue;
                };
                let tgid = ev.pid() as u32;
                let raw = fd.as_raw_fd();
                let path = fs::read_link(format!("/proc/self/fd/{raw}")).unwrap_or_default();
                let meta = nix::sys::stat::fstat(raw).ok();
                let (dev, ino) = meta.map_or((0, 0), |m| (kernel_dev(m.st_dev), m.st_ino));
                let held = HeldExec { fan: self.fan.clone(), event: Some(ev), tgid, path, dev, ino };
                if tgid == own {
                    held.allow();
                    continue;
                }
                handle(held);
            }
        }
    }

    /// The group's file descriptor number (for logs).
    pub fn fd(&self) -> i32 {
        self.fan.as_fd().as_raw_fd()
    }
}

/// The arguments of the `execve`/`execveat` that process `pid` is blocked in,
/// read from its memory (`/proc/PID/syscall` gives the argv pointer). Empty when
/// they cannot be read; at most 64 arguments of 1 KiB each, for display only.
pub fn blocked_exec_argv(pid: u32) -> Vec<String> {
    read_argv(pid).unwrap_or_default()
}

/// (dev, inode) of the file the `execve`/`execveat` that `pid` is blocked in names,
/// or `None` when it cannot be told. An exec opens more than that file — the ELF
/// interpreter, a script's interpreter — and each open is a fanotify event; only
/// the named file is what the kernel's exec check judges, so only it may be held.
pub fn blocked_exec_file(pid: u32) -> Option<(u32, u64)> {
    let (nr, args) = blocked_syscall(pid)?;
    let (dirfd, name_ptr) = match nr {
        n if n == libc::SYS_execve => (libc::AT_FDCWD as i64, *args.first()?),
        n if n == libc::SYS_execveat => (*args.first()? as i32 as i64, *args.get(1)?),
        _ => return None,
    };
    let name = read_c_string(pid, name_ptr)?;
    let path = if name.starts_with('/') {
        format!("/proc/{pid}/root{name}")
    } else if dirfd == libc::AT_FDCWD as i64 {
        format!("/proc/{pid}/cwd/{name}")
    } else if name.is_empty() {
        return None;
    } else {
        format!("/proc/{pid}/fd/{dirfd}/{name}")
    };
    let m = fs::metadata(path).ok()?;
    Some((kernel_dev(m.dev()), m.ino()))
}

/// The number and arguments of the syscall `pid` is blocked in.
fn blocked_syscall(pid: u32) -> Option<(i64, Vec<u64>)> {
    // The event is queued a moment before the task goes to sleep waiting for the
    // answer; until then the file says "running". Wait for the sleep (bounded).
    let mut syscall = String::new();
    for _ in 0..200 {
        syscall = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
        if !syscall.starts_with("running") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    let mut f = syscall.split_whitespace();
    let nr: i64 = f.next()?.parse().ok()?;
    let args = f.filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()).collect();
    Some((nr, args))
}

fn read_c_string(pid: u32, ptr: u64) -> Option<String> {
    use std::os::unix::fs::FileExt as _;
    let mem = fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = vec![0u8; 4096];
    let n = mem.read_at(&mut buf, ptr).ok()?;
    let end = buf[..n].iter().position(|b| *b == 0)?;
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn read_argv(pid: u32) -> Option<Vec<String>> {
    use std::os::unix::fs::FileExt as _;
    let (nr, args) = blocked_syscall(pid)?;
    let argv = match nr {
        n if n == libc::SYS_execve => *args.get(1)?,
        n if n == libc::SYS_execveat => *args.get(2)?,
        _ => return None,
    };
    let mem = fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut out = Vec::new();
    for i in 0..64u64 {
        let mut p = [0u8; 8];
        mem.read_exact_at(&mut p, argv.checked_add(i * 8)?).ok()?;
        let ptr = u64::from_ne_bytes(p);
        if ptr == 0 {
            break;
        }
        let mut buf = vec![0u8; 1024];
        let n = mem.read_at(&mut buf, ptr).ok()?;
        let end = buf[..n].iter().position(|b| *b == 0).unwrap_or(n);
        out.push(String::from_utf8_lossy(&buf[..end]).into_owned());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_in_the_kernel_encoding() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 70000)), (259 << 20) | 70000);
    }
}
