//! The exec and write holds. The exec hold: a fanotify group with
//! `FAN_OPEN_EXEC_PERM` marks on every real filesystem, so an `execve` waits in the
//! kernel (at the open of the binary) until agentd answers. The write hold
//! ([`WriteGate`]): a second group, `FAN_OPEN_PERM`, marked only while a policy
//! asks about writes. Only the answering is here; who is held and for how long is the
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
    sync::{Arc, Mutex},
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

/// One held open (of a binary being exec'd, or of a file opened to write): the
/// process is blocked in `execve` or `open` until this is answered. Dropping it
/// unanswered denies it (EPERM), so no path forgets a process.
pub struct HeldOpen {
    fan: Arc<Fanotify>,
    event: Option<FanotifyEvent>,
    /// Who is opening: the thread group for exec holds, the thread for write
    /// holds (their group reports thread ids, `FAN_REPORT_TID`).
    pub pid: u32,
    /// The file as the kernel opened it (`/proc/self/fd/N`), symlinks resolved.
    pub path: PathBuf,
    /// The file's device, in the kernel's encoding (major << 20 | minor), and inode.
    pub dev: u32,
    pub ino: u64,
}

impl HeldOpen {
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
                    // its own check, which refuses an unapproved ask.
                    warn!(pid = self.pid, error = %e, "could not answer a held open");
                }
            }
        }
    }
}

impl Drop for HeldOpen {
    fn drop(&mut self) {
        self.answer(Response::FAN_DENY);
    }
}

fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xf_ffff)
}

/// A filesystem mark made by [`mark_new`].
pub struct Marked {
    pub point: PathBuf,
    /// `st_dev` of the mount point.
    pub dev: u64,
    /// Marked as a whole filesystem (every mount of it), not only this mount.
    pub whole: bool,
}

/// Marks, for `mask`, every filesystem in `mountinfo` that is not a pseudo
/// filesystem and whose device is not in `seen` (which it adds to); returns what
/// it marked.
fn mark_new(fan: &Fanotify, mask: MaskFlags, mountinfo: &str, seen: &mut BTreeSet<u64>) -> Vec<Marked> {
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
        let whole = fan.mark(MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM, mask, None, Some(&point));
        let r = match whole {
            Ok(()) => Ok(true),
            Err(_) => fan.mark(MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT, mask, None, Some(&point)).map(|()| false),
        };
        match r {
            Ok(whole) => marked.push(Marked { point, dev: meta.dev(), whole }),
            Err(e) => warn!(mount = %point.display(), fstype = %fstype, error = %e, "cannot hold opens on this filesystem; an ask on it is denied"),
        }
    }
    marked
}

/// Reads a group's events for ever. `first(pid)` looks at the opener alone:
/// `None` (agentd's own opens; for writes, every thread the kernel did not record
/// as in an ask open) allows the open at once, before the file's path and inode
/// are looked up, since every open on a marked filesystem waits for this loop;
/// `Some(what)` hands the open and `what` to `handle`.
fn run_group<T>(fan: &Arc<Fanotify>, first: impl Fn(u32) -> Option<T>, mut handle: impl FnMut(HeldOpen, T)) -> EnforceError {
    loop {
        let events = match fan.read_events() {
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
            let pid = ev.pid() as u32;
            let raw = fd.as_raw_fd();
            let Some(what) = first(pid) else {
                HeldOpen { fan: fan.clone(), event: Some(ev), pid, path: PathBuf::new(), dev: 0, ino: 0 }.allow();
                continue;
            };
            let path = fs::read_link(format!("/proc/self/fd/{raw}")).unwrap_or_default();
            let meta = nix::sys::stat::fstat(raw).ok();
            let (dev, ino) = meta.map_or((0, 0), |m| (kernel_dev(m.st_dev), m.st_ino));
            handle(HeldOpen { fan: fan.clone(), event: Some(ev), pid, path, dev, ino }, what);
        }
    }
}

/// Calls `on_change` with the mount table each time it changes, on a thread of
/// its own, for as long as agentd runs (the kernel flags `/proc/self/mountinfo`
/// with POLLPRI on every change).
fn watch_mount_table(name: &str, mut on_change: impl FnMut(&str) + Send + 'static) -> Result<(), EnforceError> {
    let table = fs::File::open("/proc/self/mountinfo").map_err(|e| EnforceError::kernel("opening /proc/self/mountinfo", e))?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            let mut fds = [PollFd::new(table.as_fd(), PollFlags::POLLPRI)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!(error = %e, "cannot watch the mount table; filesystems mounted from now on are not held (asks on them are denied)");
                    return;
                }
            }
            let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else { continue };
            on_change(&mountinfo);
        })
        .map_err(|e| EnforceError::kernel("starting the mount watcher", e))?;
    Ok(())
}

/// Drops from `seen` the devices no longer mounted: a number may come back as
/// another filesystem (tmpfs numbers are reused), which must then be marked.
fn forget_unmounted(seen: &mut BTreeSet<u64>, mountinfo: &str) {
    let mounted: BTreeSet<u64> = crate::cgroup::parse_mountinfo(mountinfo)
        .iter()
        .filter_map(|m| fs::metadata(&m.mount_point).ok().map(|meta| meta.dev()))
        .collect();
    seen.retain(|d| mounted.contains(d));
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
        let marked: Vec<PathBuf> =
            mark_new(&fan, MaskFlags::FAN_OPEN_EXEC_PERM, &mountinfo, &mut seen).into_iter().map(|m| m.point).collect();
        if marked.is_empty() {
            return Err(EnforceError::Other("fanotify could mark no filesystem for exec holds".into()));
        }
        info!(filesystems = marked.len(), "exec holds: fanotify FAN_OPEN_EXEC_PERM marks in place");
        Ok(ExecGate { fan: Arc::new(fan), seen, marked })
    }

    /// Marks filesystems as they are mounted, for as long as agentd runs.
    pub fn watch_mounts(&self) -> Result<(), EnforceError> {
        let fan = self.fan.clone();
        let mut seen = self.seen.clone();
        watch_mount_table("exec-mounts", move |mountinfo| {
            forget_unmounted(&mut seen, mountinfo);
            for m in mark_new(&fan, MaskFlags::FAN_OPEN_EXEC_PERM, mountinfo, &mut seen) {
                info!(mount = %m.point.display(), "exec holds: marked a filesystem mounted after start");
            }
        })
    }

    /// Reads events for ever (on its own thread), handing each exec to `handle`,
    /// which must answer it (or drop it, which denies) — promptly for processes
    /// that are not held: every exec on the machine waits for this answer.
    pub fn run(self, mut handle: impl FnMut(HeldOpen)) -> EnforceError {
        let own = std::process::id();
        run_group(&self.fan, |pid| (pid != own).then_some(()), |held, ()| handle(held))
    }

    /// The group's file descriptor number (for logs).
    pub fn fd(&self) -> i32 {
        self.fan.as_fd().as_raw_fd()
    }
}

/// The write hold: a fanotify group with `FAN_OPEN_PERM` marks, in place only
/// while some policy asks about writes (every open on a marked filesystem waits
/// for agentd's answer, so they are not kept when nothing needs them). Which opens
/// are held the kernel says (`WRITE_HOLDS`, see `agent_common::WriteHold`): agentd
/// answers every other open at once, from one map lookup.
///
/// The devices of the filesystems marked as a whole go into `WRITE_HOLD_DEVS`;
/// an `ask` open of a file anywhere else is denied by the kernel (and becomes a
/// request) rather than let into a hold nobody would see.
pub struct WriteGate {
    fan: Arc<Fanotify>,
    marks: Arc<Mutex<WriteMarks>>,
}

#[derive(Default)]
struct WriteMarks {
    active: bool,
    seen: BTreeSet<u64>,
    /// Kernel-encoded devices of the filesystems marked whole.
    devs: BTreeSet<u32>,
    points: Vec<PathBuf>,
}

impl WriteMarks {
    fn add(&mut self, fan: &Fanotify, mountinfo: &str) {
        for m in mark_new(fan, MaskFlags::FAN_OPEN_PERM, mountinfo, &mut self.seen) {
            if m.whole {
                self.devs.insert(kernel_dev(m.dev));
            }
            self.points.push(m.point);
        }
    }
}

impl WriteGate {
    /// Creates the group, with no marks yet. Needs CAP_SYS_ADMIN.
    pub fn open() -> Result<WriteGate, EnforceError> {
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_UNLIMITED_QUEUE | InitFlags::FAN_REPORT_TID,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(|e| EnforceError::kernel("fanotify_init(FAN_CLASS_CONTENT | FAN_REPORT_TID)", e))?;
        Ok(WriteGate { fan: Arc::new(fan), marks: Arc::new(Mutex::new(WriteMarks::default())) })
    }

    /// A handle that turns the marks on and off.
    pub fn switch(&self) -> WriteSwitch {
        WriteSwitch { fan: self.fan.clone(), marks: self.marks.clone() }
    }

    /// Reads events for ever (on its own thread); as [`ExecGate::run`], but every
    /// open on the marked filesystems comes here. `recorded(tid)` returns, without
    /// waiting for anything, what the kernel recorded of the thread's ask open;
    /// an open with nothing recorded is allowed at once, the rest go to `handle`
    /// with the record, which must answer the ones it does not hold as promptly.
    pub fn run<T>(self, recorded: impl Fn(u32) -> Option<T>, handle: impl FnMut(HeldOpen, T)) -> EnforceError {
        run_group(&self.fan, recorded, handle)
    }
}

/// Turns the write gate's marks on or off, and keeps them on filesystems mounted
/// while it is on.
#[derive(Clone)]
pub struct WriteSwitch {
    fan: Arc<Fanotify>,
    marks: Arc<Mutex<WriteMarks>>,
}

impl std::fmt::Debug for WriteSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteSwitch").field("marked", &self.marked()).finish()
    }
}

impl WriteSwitch {
    /// Marks every filesystem (`on`) or removes every mark; returns the devices
    /// now held, for `WRITE_HOLD_DEVS`, or `None` when nothing changed.
    pub fn set(&self, on: bool) -> Option<BTreeSet<u32>> {
        let mut m = self.marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.active == on {
            return None;
        }
        if on {
            let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            m.add(&self.fan, &mountinfo);
            m.active = true;
            info!(filesystems = m.points.len(), "write holds: fanotify FAN_OPEN_PERM marks in place (a policy asks about writes)");
        } else {
            for kind in [MarkFlags::FAN_MARK_FILESYSTEM, MarkFlags::FAN_MARK_MOUNT] {
                if let Err(e) = self.fan.mark::<str>(MarkFlags::FAN_MARK_FLUSH | kind, MaskFlags::empty(), None, None) {
                    warn!(error = %e, "could not remove write-hold marks");
                }
            }
            *m = WriteMarks::default();
            info!("write holds: marks removed (no policy asks about writes)");
        }
        Some(m.devs.clone())
    }

    /// Whether the marks are in place, and on which mount points.
    pub fn marked(&self) -> Vec<PathBuf> {
        self.marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).points.clone()
    }

    /// Marks filesystems mounted while the marks are on; `devs` gets each new set
    /// of held devices.
    pub fn watch_mounts(&self, mut devs: impl FnMut(&BTreeSet<u32>) + Send + 'static) -> Result<(), EnforceError> {
        let (fan, marks) = (self.fan.clone(), self.marks.clone());
        watch_mount_table("write-mounts", move |mountinfo| {
            let mut m = marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !m.active {
                return;
            }
            forget_unmounted(&mut m.seen, mountinfo);
            let before = m.devs.len();
            m.add(&fan, mountinfo);
            if m.devs.len() != before {
                info!("write holds: marked a filesystem mounted after start");
                devs(&m.devs);
            }
        })
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
