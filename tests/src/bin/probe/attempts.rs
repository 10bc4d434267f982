//! The escape attempts of `probe`: one subcommand per way a bound agent might try
//! to get out from under its policy (tests/src/escape.rs drives them).
//!
//! Each does exactly one attempt, with nothing but libc, so that it runs in the
//! busybox VM as on the host. Where an attempt takes several steps, a failing step
//! prints `step NAME` before the usual last line `errno NAME n`, so a test can tell
//! which step the kernel stopped. Lines a test may read (`child-cgroup …`,
//! `child-exit N`, `child-signal N`, `fd N`, …) come before the last line.

use std::{
    ffi::{CStr, CString},
    io::{self, Read as _, Write as _},
    mem::size_of,
    os::unix::ffi::OsStrExt as _,
    process::exit,
};

/// `probe`'s own dispatcher, for attempts that end in another subcommand.
pub type Run = fn(&[String]) -> !;

/// Runs attempt `args[0]`; `None` when it is not one of ours.
pub fn run(args: &[String], again: Run) -> Option<io::Result<()>> {
    let a = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or_else(|| crate::usage()) };
    let rest = |i: usize| -> &[String] {
        if args.len() <= i {
            crate::usage()
        }
        &args[i..]
    };
    Some(match a(0) {
        // ----- mount namespaces and bind mounts -----
        "userns-bind-exec" => ns_bind(true, a(1), a(2)).and_then(|()| exec_path(&join(a(2), a(3)), &args[4..])),
        "userns-bind-write" => ns_bind(true, a(1), a(2)).and_then(|()| write_file(&join(a(2), a(3)))),
        "bind-exec" => ns_bind(false, a(1), a(2)).and_then(|()| exec_path(&join(a(2), a(3)), &args[4..])),
        "bind-write" => ns_bind(false, a(1), a(2)).and_then(|()| write_file(&join(a(2), a(3)))),
        "unshare" => step("unshare", cvt(unsafe_unshare(ns_flags(a(1))))),
        "clone-ns" => clone_ns(ns_flags(a(1))),
        "setns" => setns(a(1)),
        "mount-tmpfs" => step("mount", mount(Some("tmpfs"), a(1), Some("tmpfs"), 0, Some("size=1m"))),
        "bind-mount" => step("mount", mount(Some(a(1)), a(2), None, libc::MS_BIND, None)),
        "umount" => {
            let p = cstr(a(1));
            // SAFETY: a valid NUL-terminated path.
            step("umount", cvt(unsafe { libc::umount2(p.as_ptr(), 0) }))
        }
        "chroot" => {
            let p = cstr(a(1));
            // SAFETY: a valid NUL-terminated path.
            step("chroot", cvt(unsafe { libc::chroot(p.as_ptr()) }))
        }
        "pivot-root" => pivot_root(a(1), a(2)),
        "open-tree-write" => open_tree_file(a(1), a(2), true),
        "open-tree-read" => open_tree_file(a(1), a(2), false),
        "move-mount" => move_mount(a(1), a(2)),
        "fsmount-write" => fsmount_write(a(1)),

        // ----- cgroups -----
        "clone-into-cgroup" => {
            let action = match args.get(2).map(String::as_str) {
                Some("--") => rest(3),
                Some(_) => crate::usage(),
                None => &[],
            };
            clone_into_cgroup(a(1), action, again)
        }
        // cgroup-move DIR [-- ACTION...] — write 0 to DIR/cgroup.procs (this process
        // moves), then ACTION; unlike `join`, a refused move is an `errno` line.
        "cgroup-move" => {
            let action = match args.get(2).map(String::as_str) {
                Some("--") => rest(3),
                Some(_) => crate::usage(),
                None => &[],
            };
            step("cgroup.procs", std::fs::write(join(a(1), "cgroup.procs"), "0"))
                .map(|()| if !action.is_empty() { again(action) })
        }
        // wait-stdin ACTION... — reads stdin to its end (the test moves this
        // process meanwhile), then does ACTION.
        "wait-stdin" => {
            let _ = io::stdin().read_to_end(&mut Vec::new());
            again(rest(1))
        }

        // ----- bpf(2) -----
        "bpf-obj-get" => bpf_obj_get(a(1)).map(drop),
        "bpf-map-delete" => bpf_obj_get(a(1)).and_then(|fd| bpf_map_key(BPF_MAP_DELETE_ELEM, fd, parse_u64(a(2)))),
        "bpf-map-lookup" => bpf_obj_get(a(1)).and_then(|fd| bpf_map_key(BPF_MAP_LOOKUP_ELEM, fd, parse_u64(a(2)))),
        "bpf-prog-load" => bpf_prog_load(),

        // ----- other processes -----
        "ptrace-attach" => ptrace_attach(parse_pid(a(1))),
        "vm-writev" => vm_writev(parse_pid(a(1)), parse_hex(a(2))),
        "pidfd-getfd" => pidfd_getfd(parse_pid(a(1)), parse_u64(a(2)) as i32),
        "proc-mem-write" => proc_mem_write(parse_pid(a(1)), args.get(2).map(|s| parse_hex(s))),
        "signal" => {
            let (pid, sig) = (parse_pid(a(1)), parse_signal(a(2)));
            // SAFETY: kill(2) has no memory arguments.
            step("kill", cvt(unsafe { libc::kill(pid, sig) }))
        }
        "pidfd-signal" => pidfd_signal(parse_pid(a(1)), parse_signal(a(2))),

        // ----- the kernel itself -----
        "finit-module" => finit_module(a(1)),
        "delete-module" => {
            let name = cstr(a(1));
            // SAFETY: delete_module(name, flags) with a valid C string.
            step("delete_module", sys(unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) }))
                .map(drop)
        }
        // kexec_load with no segments: unloads the loaded kexec image (there is
        // none on the test machines); needs CAP_SYS_BOOT.
        "kexec-unload" => step(
            "kexec_load",
            // SAFETY: kexec_load(entry 0, 0 segments, NULL, flags 0): no memory is read.
            sys(unsafe { libc::syscall(libc::SYS_kexec_load, 0u64, 0u64, std::ptr::null::<u8>(), 0u64) }),
        )
        .map(drop),
        "iopl" => {
            let level: i64 = a(1).parse().unwrap_or_else(|_| crate::usage());
            // SAFETY: iopl(level) has no memory arguments.
            step("iopl", sys(unsafe { libc::syscall(libc::SYS_iopl, level) })).map(drop)
        }
        "ioperm" => {
            // Port 0x80 (the POST diagnostic port), which nothing here touches.
            // SAFETY: ioperm(from, num, on) has no memory arguments.
            step("ioperm", sys(unsafe { libc::syscall(libc::SYS_ioperm, 0x80u64, 1u64, 1i64) })).map(drop)
        }
        "perf-kprobe" => perf_kprobe(args.get(1).map_or("do_sys_openat2", String::as_str)),
        "perf-tracepoint" => perf_tracepoint(args.get(1).map_or("syscalls/sys_enter_openat", String::as_str)),
        "open-read" => open_read(a(1)),

        // ----- files -----
        "link" => step("link", std::fs::hard_link(a(1), a(2))),
        "chmod" => {
            let (p, mode) = (cstr(a(1)), u32::from_str_radix(a(2), 8).unwrap_or_else(|_| crate::usage()));
            // SAFETY: a valid NUL-terminated path.
            step("chmod", cvt(unsafe { libc::chmod(p.as_ptr(), mode) }))
        }
        "chown" => {
            let p = cstr(a(1));
            let (uid, gid) = (parse_u64(a(2)) as u32, parse_u64(a(3)) as u32);
            // SAFETY: a valid NUL-terminated path.
            step("chown", cvt(unsafe { libc::chown(p.as_ptr(), uid, gid) }))
        }
        "setxattr" => {
            let (p, n, v) = (cstr(a(1)), cstr(a(2)), a(3).as_bytes());
            // SAFETY: valid C strings and a value buffer of the length given.
            step("setxattr", cvt(unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) }))
        }
        "removexattr" => {
            let (p, n) = (cstr(a(1)), cstr(a(2)));
            // SAFETY: valid C strings.
            step("removexattr", cvt(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }))
        }
        "utimes" => {
            let p = cstr(a(1));
            // SAFETY: a valid path; NULL times means "now".
            step("utimensat", cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), std::ptr::null(), 0) }))
        }
        "rmdir" => step("rmdir", std::fs::remove_dir(a(1))),
        "fd-reopen-write" => reopen_write(a(1), libc::O_RDONLY),
        "opath-reopen-write" => reopen_write(a(1), libc::O_PATH),
        "open-by-handle-write" => open_by_handle_write(a(1)),
        "memfd-exec" => memfd_exec(a(1), &args[2..]),
        "deleted-exec" => deleted_exec(a(1), a(2), &args[3..]),
        "dlopen" => dlopen(a(1)),
        "symlink-dir-rename" => symlink_dir(a(1), a(2), a(3), SymlinkOp::Rename),
        "symlink-dir-unlink" => symlink_dir(a(1), a(2), a(3), SymlinkOp::Unlink),
        "symlink-dir-truncate" => symlink_dir(a(1), a(2), a(3), SymlinkOp::Truncate),
        "clone-files-write" => clone_files_write(a(1)),
        "core-dump" => core_dump(a(1)),
        "setrlimit-core" => setrlimit_core(),
        "acct" => acct(a(1)),
        "acct-off" => {
            // SAFETY: acct(NULL) turns accounting off.
            step("acct", cvt(unsafe { libc::acct(std::ptr::null()) }))
        }

        // ----- sockets -----
        "ping" => ping(a(1)),
        "udplite" => udplite(a(1)),
        "socket" => {
            let (f, t, p) = (parse_u64(a(1)) as i32, parse_u64(a(2)) as i32, parse_u64(a(3)) as i32);
            // SAFETY: plain syscall; the fd is closed right away.
            let fd = unsafe { libc::socket(f, t, p) };
            if fd >= 0 {
                // SAFETY: we own fd.
                unsafe { libc::close(fd) };
            }
            step("socket", cvt(fd))
        }
        "unix-connect" => step("connect", std::os::unix::net::UnixStream::connect(a(1))).map(drop),
        "unix-send" => std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| step("sendto", s.send_to(b"probe", a(1))))
            .map(drop),

        // ----- identity of the attempt -----
        "as-user" => {
            let (uid, gid) = (parse_u64(a(1)) as libc::uid_t, parse_u64(a(2)) as libc::gid_t);
            // SAFETY: setgroups(0, NULL) clears the supplementary groups; setgid
            // and setuid have no memory arguments.
            let r = step("setgroups", cvt(unsafe { libc::setgroups(0, std::ptr::null()) }))
                .and_then(|()| step("setgid", cvt(unsafe { libc::setgid(gid) })))
                .and_then(|()| step("setuid", cvt(unsafe { libc::setuid(uid) })))
                // A uid change leaves the process non-dumpable (its /proc files
                // owned by root); a process started as UID would be dumpable, and
                // it needs to be to write its own /proc/self/uid_map.
                // SAFETY: prctl with integer arguments.
                .and_then(|()| step("dumpable", cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) })));
            match r {
                Ok(()) => again(rest(3)),
                Err(e) => Err(e),
            }
        }
        _ => return None,
    })
}

// ----- helpers ---------------------------------------------------------------------

/// Prints `step NAME` when `r` failed, so the last line names the errno and the
/// line before it the step.
fn step<T>(name: &str, r: io::Result<T>) -> io::Result<T> {
    if r.is_err() {
        println!("step {name}");
    }
    r
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn sys(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| crate::usage())
}

fn join(dir: &str, rel: &str) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), rel.trim_start_matches('/'))
}

fn parse_u64(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| crate::usage())
}

fn parse_pid(s: &str) -> libc::pid_t {
    s.parse().unwrap_or_else(|_| crate::usage())
}

fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| crate::usage())
}

fn parse_signal(s: &str) -> libc::c_int {
    match s.trim_start_matches("SIG") {
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "TERM" => libc::SIGTERM,
        "KILL" => libc::SIGKILL,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        n => n.parse().unwrap_or_else(|_| crate::usage()),
    }
}

/// CLONE_NEW* flags from `user,mnt,pid,…`.
fn ns_flags(list: &str) -> libc::c_int {
    list.split(',')
        .map(|n| match n {
            "user" => libc::CLONE_NEWUSER,
            "mnt" => libc::CLONE_NEWNS,
            "pid" => libc::CLONE_NEWPID,
            "net" => libc::CLONE_NEWNET,
            "ipc" => libc::CLONE_NEWIPC,
            "uts" => libc::CLONE_NEWUTS,
            "cgroup" => libc::CLONE_NEWCGROUP,
            "time" => CLONE_NEWTIME,
            _ => crate::usage(),
        })
        .fold(0, |a, f| a | f)
}

const CLONE_NEWTIME: libc::c_int = 0x80;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn unsafe_unshare(flags: libc::c_int) -> libc::c_int {
    // SAFETY: unshare(2) has no memory arguments.
    unsafe { libc::unshare(flags) }
}

fn mount(src: Option<&str>, target: &str, fstype: Option<&str>, flags: libc::c_ulong, data: Option<&str>) -> io::Result<()> {
    let (src, target, fstype, data) = (src.map(cstr), cstr(target), fstype.map(cstr), data.map(cstr));
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NULL or a valid NUL-terminated string that outlives the call.
    cvt(unsafe { libc::mount(ptr(&src), target.as_ptr(), ptr(&fstype), flags, ptr(&data).cast()) })
}

fn write_file(path: &str) -> io::Result<()> {
    step(
        "write",
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(b"written by probe\n")),
    )
}

/// execv(path, [path, args…]) with this environment; returns only on failure.
fn exec_path(path: &str, args: &[String]) -> io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    Err(step("exec", Err(std::process::Command::new(path).args(args).exec()))?)
}

/// A new mount namespace (and user namespace, mapping our ids to 0 in it when
/// `user`), `/` made private, and `src` bind-mounted over `dst`.
fn ns_bind(user: bool, src: &str, dst: &str) -> io::Result<()> {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let flags = if user { libc::CLONE_NEWUSER | libc::CLONE_NEWNS } else { libc::CLONE_NEWNS };
    step("unshare", cvt(unsafe_unshare(flags)))?;
    if user {
        step("setgroups", std::fs::write("/proc/self/setgroups", "deny"))?;
        step("uid_map", std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")))?;
        step("gid_map", std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")))?;
    }
    step("make-private", mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None))?;
    step("bind", mount(Some(src), dst, None, libc::MS_BIND | libc::MS_REC, None))
}

/// `struct clone_args` (CLONE_ARGS_SIZE_VER2: with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// clone3 without a new stack or CLONE_VM: like fork(), it returns 0 in the child
/// (a copy of this process) and the child's pid in the parent.
fn clone3(args: &mut CloneArgs) -> io::Result<libc::pid_t> {
    // SAFETY: `args` is a valid clone_args of the size passed. With no stack and
    // no CLONE_VM the child runs on a copy of our memory, as after fork(); probe
    // is single-threaded when it gets here, so no lock is held by another thread.
    let r = unsafe { libc::syscall(libc::SYS_clone3, args as *mut CloneArgs, size_of::<CloneArgs>()) };
    sys(r).map(|pid| pid as libc::pid_t)
}

/// Waits for `pid` and prints `child-exit N` or `child-signal N`; returns
/// (exit code, signal).
fn wait_child(pid: libc::pid_t) -> (Option<i32>, Option<i32>) {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid {
            break;
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            println!("child-wait {}", io::Error::last_os_error());
            return (None, None);
        }
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        println!("child-signal {sig}");
        if libc::WCOREDUMP(status) {
            println!("child-core-dumped");
        }
        (None, Some(sig))
    } else {
        let code = libc::WEXITSTATUS(status);
        println!("child-exit {code}");
        (Some(code), None)
    }
}

fn clone_ns(flags: libc::c_int) -> io::Result<()> {
    let mut ca = CloneArgs { flags: flags as u32 as u64, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    match step("clone3", clone3(&mut ca))? {
        // SAFETY: _exit ends the child without running the parent's destructors.
        0 => unsafe { libc::_exit(0) },
        pid => match wait_child(pid) {
            (Some(0), _) => Ok(()),
            _ => Err(step("child", Err(io::Error::from_raw_os_error(libc::ECHILD)))?),
        },
    }
}

fn setns(path: &str) -> io::Result<()> {
    let fd = step("open", open(path, libc::O_RDONLY | libc::O_CLOEXEC))?;
    // SAFETY: fd is ours; nstype 0 accepts any namespace type.
    step("setns", cvt(unsafe { libc::setns(fd, 0) }))
}

fn open(path: &str, flags: libc::c_int) -> io::Result<libc::c_int> {
    let p = cstr(path);
    // SAFETY: a valid NUL-terminated path.
    let fd = unsafe { libc::open(p.as_ptr(), flags, 0o644) };
    if fd < 0 { Err(io::Error::last_os_error()) } else { Ok(fd) }
}

fn openat(dir: libc::c_int, path: &str, flags: libc::c_int) -> io::Result<libc::c_int> {
    let p = cstr(path);
    // SAFETY: a valid NUL-terminated path relative to a descriptor we own.
    let fd = unsafe { libc::openat(dir, p.as_ptr(), flags, 0o644) };
    if fd < 0 { Err(io::Error::last_os_error()) } else { Ok(fd) }
}

fn write_fd(fd: libc::c_int, data: &[u8]) -> io::Result<()> {
    // SAFETY: writing from a buffer of the length given to a descriptor we own.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// pivot_root(2) as such. The tests give it a NEW that is not a mount point: a
/// permitted call then fails (EINVAL or EBUSY) after every permission check, and
/// EPERM means refused. A real pivot would move the root of every process in the
/// mount namespace (the host's, on the host tier), so probe never tries one.
fn pivot_root(new: &str, put_old: &str) -> io::Result<()> {
    let real = std::fs::canonicalize(new).ok();
    if real.is_none() || mount_point_of(new).map(std::path::PathBuf::from) == real {
        eprintln!("probe: refusing pivot_root onto {new}: a mount point (or missing), so it could really pivot");
        exit(2)
    }
    let (n, o) = (cstr(new), cstr(put_old));
    // SAFETY: two valid NUL-terminated paths.
    step("pivot_root", sys(unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) })).map(drop)
}

const OPEN_TREE_CLONE: u64 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: u64 = 4;

fn open_tree_clone(path: &str) -> io::Result<libc::c_int> {
    let p = cstr(path);
    // SAFETY: open_tree(AT_FDCWD, path, flags) with a valid path.
    let r = unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as u64 | libc::AT_RECURSIVE as u64)
    };
    step("open_tree", sys(r)).map(|fd| fd as libc::c_int)
}

/// A detached copy of the mount at `path` (open_tree OPEN_TREE_CLONE), and a file
/// opened relative to it: for writing (create, truncate, write) or reading.
fn open_tree_file(path: &str, rel: &str, write: bool) -> io::Result<()> {
    let tree = open_tree_clone(path)?;
    if write {
        let fd = step("openat", openat(tree, rel, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC))?;
        step("write", write_fd(fd, b"written through a detached tree\n"))
    } else {
        let fd = step("openat", openat(tree, rel, libc::O_RDONLY | libc::O_CLOEXEC))?;
        let mut buf = [0u8; 64];
        // SAFETY: reading into a local buffer of the length given.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        step("read", if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) })
    }
}

/// The new mount API's bind mount: a detached clone of `src` attached at `dst`.
fn move_mount(src: &str, dst: &str) -> io::Result<()> {
    let tree = open_tree_clone(src)?;
    let (empty, d) = (cstr(""), cstr(dst));
    // SAFETY: move_mount(fd, "", AT_FDCWD, dst, F_EMPTY_PATH) with valid strings.
    let r = unsafe { libc::syscall(libc::SYS_move_mount, tree, empty.as_ptr(), libc::AT_FDCWD, d.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH) };
    step("move_mount", sys(r)).map(drop)
}

/// A tmpfs that is mounted nowhere (fsopen, fsmount), and a file written in it:
/// a file with no path in any mount namespace.
fn fsmount_write(rel: &str) -> io::Result<()> {
    let name = cstr("tmpfs");
    // SAFETY: fsopen(name, FSOPEN_CLOEXEC) with a valid string.
    let fs = step("fsopen", sys(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), 1u64) }))? as libc::c_int;
    // SAFETY: fsconfig(fd, FSCONFIG_CMD_CREATE, NULL, NULL, 0).
    step(
        "fsconfig",
        sys(unsafe { libc::syscall(libc::SYS_fsconfig, fs, 6u64, std::ptr::null::<u8>(), std::ptr::null::<u8>(), 0u64) }),
    )?;
    // SAFETY: fsmount(fd, FSMOUNT_CLOEXEC, 0).
    let mnt = step("fsmount", sys(unsafe { libc::syscall(libc::SYS_fsmount, fs, 1u64, 0u64) }))? as libc::c_int;
    let fd = step("openat", openat(mnt, rel, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC))?;
    step("write", write_fd(fd, b"written where no path leads\n"))
}

/// clone3(CLONE_INTO_CGROUP) into `dir`, opened read-only. The child prints the
/// cgroup it is in (`child-cgroup PATH`) and does `action` (or exits 0); the
/// parent prints how the child ended and `ok`: the last line is about the clone3
/// itself, the lines before it about what the child could do.
fn clone_into_cgroup(dir: &str, action: &[String], again: Run) -> io::Result<()> {
    let fd = step("open", open(dir, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC))?;
    let mut ca =
        CloneArgs { flags: CLONE_INTO_CGROUP, exit_signal: libc::SIGCHLD as u64, cgroup: fd as u64, ..Default::default() };
    match step("clone3", clone3(&mut ca))? {
        0 => {
            let cg = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            let line = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("?");
            println!("child-cgroup {line}");
            if action.is_empty() {
                exit(0)
            }
            again(action)
        }
        pid => {
            wait_child(pid);
            Ok(())
        }
    }
}

// ----- bpf(2) ----------------------------------------------------------------------

// bpf(2) commands (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_PROG_LOAD: u32 = 5;
const BPF_OBJ_GET: u32 = 7;

/// A zeroed `union bpf_attr` (128 bytes cover every command used here; the
/// kernel accepts a larger attr whose unknown tail is zero).
type BpfAttr = [u64; 16];

fn bpf(cmd: u32, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: bpf(cmd, attr, size) with a zero-filled attr of the size passed;
    // every pointer stored in it points at memory that outlives the call.
    sys(unsafe { libc::syscall(libc::SYS_bpf, cmd as u64, attr.as_mut_ptr(), size_of::<BpfAttr>()) })
}

/// BPF_OBJ_GET: a descriptor of the object pinned at `pin`.
fn bpf_obj_get(pin: &str) -> io::Result<libc::c_int> {
    let path = cstr(pin);
    let mut attr: BpfAttr = [0; 16];
    // pathname (u64) at 0; bpf_fd and file_flags (u32 each) stay 0.
    attr[0] = path.as_ptr() as u64;
    step("obj_get", bpf(BPF_OBJ_GET, &mut attr)).map(|fd| fd as libc::c_int)
}

/// BPF_MAP_DELETE_ELEM or BPF_MAP_LOOKUP_ELEM with an 8-byte key (native endian,
/// as the maps keyed by cgroup id store it).
fn bpf_map_key(cmd: u32, map: libc::c_int, key: u64) -> io::Result<()> {
    let mut value = [0u8; 4096];
    let mut attr: BpfAttr = [0; 16];
    // map_fd (u32) at 0, key at 8, value at 16 (lookup only: the kernel refuses
    // a delete whose attr has anything after `key` with EINVAL), flags at 24.
    attr[0] = map as u32 as u64;
    attr[1] = &key as *const u64 as u64;
    let name = if cmd == BPF_MAP_DELETE_ELEM { "map_delete" } else { "map_lookup" };
    if cmd == BPF_MAP_LOOKUP_ELEM {
        attr[2] = value.as_mut_ptr() as u64;
    }
    step(name, bpf(cmd, &mut attr)).map(|_| {
        if name == "map_lookup" {
            println!("value {}", value[..8].iter().map(|b| format!("{b:02x}")).collect::<String>());
        }
    })
}

/// BPF_PROG_LOAD of a socket filter `mov r0, 0; exit`: any bpf() program at all.
fn bpf_prog_load() -> io::Result<()> {
    // code 0xb7 = BPF_ALU64|BPF_MOV|BPF_K (r0 = 0), code 0x95 = BPF_JMP|BPF_EXIT.
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = cstr("GPL");
    let mut attr: BpfAttr = [0; 16];
    // prog_type (u32) at 0 = BPF_PROG_TYPE_SOCKET_FILTER, insn_cnt (u32) at 4,
    // insns at 8, license at 16.
    attr[0] = 1 | (2u64 << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    step("prog_load", bpf(BPF_PROG_LOAD, &mut attr)).map(drop)
}

// ----- other processes ----------------------------------------------------------------

fn ptrace_attach(pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: PTRACE_SEIZE takes no memory arguments (data 0: no options).
    step("seize", cvt(unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) as libc::c_int }))?;
    // A seized tracee is not stopped, so PTRACE_DETACH may say ESRCH; our exit
    // detaches in any case.
    // SAFETY: as above.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
    Ok(())
}

/// process_vm_writev of one byte at `addr` in `pid`. A permitted call with a bad
/// address (0) fails EFAULT; a refused one EPERM or ESRCH.
fn vm_writev(pid: libc::pid_t, addr: u64) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let local = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: 1 };
    // SAFETY: the local iovec points at a live one-byte buffer; the remote one is
    // only interpreted in the other process by the kernel.
    let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    step("process_vm_writev", if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) })
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<libc::c_int> {
    // SAFETY: pidfd_open(pid, 0) has no memory arguments.
    step("pidfd_open", sys(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u64) })).map(|fd| fd as libc::c_int)
}

fn pidfd_getfd(pid: libc::pid_t, fd: i32) -> io::Result<()> {
    let pidfd = pidfd_open(pid)?;
    // SAFETY: pidfd_getfd(pidfd, fd, 0) has no memory arguments.
    step("pidfd_getfd", sys(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0u64) })).map(drop)
}

fn pidfd_signal(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    let pidfd = pidfd_open(pid)?;
    // SAFETY: pidfd_send_signal(pidfd, sig, NULL, 0).
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, sig, std::ptr::null::<u8>(), 0u64) };
    step("pidfd_send_signal", sys(r)).map(drop)
}

/// /proc/PID/mem opened read-write; with ADDR, one byte written there (address 0
/// fails EIO when the open was allowed).
fn proc_mem_write(pid: libc::pid_t, addr: Option<u64>) -> io::Result<()> {
    let fd = step("open", open(&format!("/proc/{pid}/mem"), libc::O_RDWR | libc::O_CLOEXEC))?;
    if let Some(addr) = addr {
        // SAFETY: writing one byte from a local buffer to a descriptor we own.
        let n = unsafe { libc::pwrite(fd, [0u8].as_ptr().cast(), 1, addr as libc::off_t) };
        step("pwrite", if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) })?;
    }
    Ok(())
}

// ----- the kernel -----------------------------------------------------------------------

/// finit_module on any file: a permitted call on a file that is not a module fails
/// ENOEXEC (ENOSYS: the kernel has no modules); a refused one EPERM.
fn finit_module(path: &str) -> io::Result<()> {
    let fd = step("open", open(path, libc::O_RDONLY | libc::O_CLOEXEC))?;
    let params = cstr("");
    // SAFETY: finit_module(fd, "", 0) with a valid string.
    step("finit_module", sys(unsafe { libc::syscall(libc::SYS_finit_module, fd, params.as_ptr(), 0u64) })).map(drop)
}

/// A `struct perf_event_attr` of PERF_ATTR_SIZE_VER5 (112 bytes).
#[repr(C)]
#[derive(Default)]
struct PerfAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit 0: disabled.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
}

fn perf_event_open(attr: &mut PerfAttr) -> io::Result<()> {
    attr.size = size_of::<PerfAttr>() as u32;
    attr.flags = 1;
    // SAFETY: perf_event_open(attr, pid 0 (this process), cpu -1, group -1,
    // PERF_FLAG_FD_CLOEXEC) with a valid attr of the size it says.
    let r = unsafe { libc::syscall(libc::SYS_perf_event_open, attr as *mut PerfAttr, 0, -1, -1, 8u64) };
    step("perf_event_open", sys(r)).map(drop)
}

/// A kprobe through perf (the `kprobe` PMU): kernel code of our choosing.
fn perf_kprobe(func: &str) -> io::Result<()> {
    let ty = step("pmu", std::fs::read_to_string("/sys/bus/event_source/devices/kprobe/type"))?;
    let func = cstr(func);
    let mut attr = PerfAttr {
        type_: ty.trim().parse().map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        config1: func.as_ptr() as u64,
        ..Default::default()
    };
    perf_event_open(&mut attr)
}

/// A tracepoint counter on this process: EVENT is GROUP/NAME (its id read from
/// tracefs) or the id itself (tracefs is closed to unprivileged users).
fn perf_tracepoint(event: &str) -> io::Result<()> {
    let id = event.parse::<u64>().map(|n| n.to_string()).or_else(|_| {
        ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .find_map(|t| std::fs::read_to_string(format!("{t}/events/{event}/id")).ok())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    });
    let id: u64 = step("tracepoint-id", id)?.trim().parse().map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut attr = PerfAttr { type_: 2 /* PERF_TYPE_TRACEPOINT */, config: id, ..Default::default() };
    perf_event_open(&mut attr)
}

/// open O_RDONLY and read at most 4096 bytes (a device such as /dev/mem, a key).
fn open_read(path: &str) -> io::Result<()> {
    let fd = step("open", open(path, libc::O_RDONLY | libc::O_CLOEXEC))?;
    let mut buf = [0u8; 4096];
    // SAFETY: reading into a local buffer of the length given.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    step("read", if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) })?;
    println!("read-bytes {n}");
    Ok(())
}

// ----- files ----------------------------------------------------------------------------

/// Opens `path` with `first` (O_RDONLY or O_PATH), then reopens it for writing
/// through /proc/self/fd/N, and appends a line.
fn reopen_write(path: &str, first: libc::c_int) -> io::Result<()> {
    let fd = step("open", open(path, first | libc::O_CLOEXEC))?;
    let again = step("reopen", open(&format!("/proc/self/fd/{fd}"), libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC))?;
    step("write", write_fd(again, b"written through a reopened fd\n"))
}

/// `struct file_handle` with room for MAX_HANDLE_SZ bytes.
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

/// The mount point (from /proc/self/mountinfo) of the mount `path` is on.
fn mount_point_of(path: &str) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let unescape = |s: &str| s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\");
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(unescape))
        .filter(|mp| real.starts_with(mp))
        .max_by_key(|mp| mp.len())
}

/// name_to_handle_at, then open_by_handle_at for writing (relative to the mount
/// the file is on) and append a line: the open names no path at all.
fn open_by_handle_write(path: &str) -> io::Result<()> {
    let mut h = FileHandle { handle_bytes: 128, handle_type: 0, f_handle: [0; 128] };
    let mut mount_id = 0;
    let p = cstr(path);
    // SAFETY: a valid path, a handle with room for the 128 bytes it says, an int.
    step("name_to_handle_at", cvt(unsafe {
        libc::syscall(libc::SYS_name_to_handle_at, libc::AT_FDCWD, p.as_ptr(), &mut h as *mut FileHandle, &mut mount_id as *mut i32, 0) as libc::c_int
    }))?;
    let mp = mount_point_of(path).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT));
    let mfd = step("open-mount", step("mount-point", mp).and_then(|mp| open(&mp, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)))?;
    // SAFETY: the handle filled in above; flags for a write.
    let fd = step("open_by_handle_at", sys(unsafe {
        libc::syscall(libc::SYS_open_by_handle_at, mfd, &mut h as *mut FileHandle, libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC)
    }))? as libc::c_int;
    step("write", write_fd(fd, b"written through a file handle\n"))
}

/// argv or envp for execve: the C strings and a NULL-terminated pointer array
/// into them (keep both alive).
fn c_array(items: impl Iterator<Item = Vec<u8>>) -> (Vec<CString>, Vec<*const libc::c_char>) {
    let strings: Vec<CString> = items.map(|s| CString::new(s).unwrap_or_else(|_| crate::usage())).collect();
    let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    (strings, ptrs)
}

/// execveat(fd, "", argv, environ, AT_EMPTY_PATH): runs the file open at `fd`.
fn execveat_fd(fd: libc::c_int, argv0: &str, args: &[String]) -> io::Result<()> {
    let (_argv, argv) = c_array(std::iter::once(argv0.as_bytes().to_vec()).chain(args.iter().map(|a| a.as_bytes().to_vec())));
    let (_envp, envp) = c_array(std::env::vars_os().map(|(k, v)| {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        kv
    }));
    let empty = cstr("");
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_execveat, fd, empty.as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH) };
    step("execveat", sys(r))?;
    unreachable!("execveat returned without an error")
}

/// The binary copied into a memfd and run from there (a file with no path).
fn memfd_exec(binary: &str, args: &[String]) -> io::Result<()> {
    use std::os::fd::FromRawFd as _;
    let bytes = step("read", std::fs::read(binary))?;
    let name = cstr("probe-memfd");
    // SAFETY: memfd_create(name, 0) with a valid string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    step("memfd_create", cvt(fd))?;
    // SAFETY: fd is ours; ManuallyDrop keeps it open for the execveat below.
    let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    step("write", file.write_all(&bytes))?;
    execveat_fd(fd, binary, args)
}

/// The binary copied into `dir`, opened, unlinked, and run through its fd.
fn deleted_exec(dir: &str, binary: &str, args: &[String]) -> io::Result<()> {
    let copy = join(dir, &format!("probe-deleted-{}", std::process::id()));
    step("copy", std::fs::copy(binary, &copy))?;
    let fd = step("open", open(&copy, libc::O_RDONLY))?;
    step("unlink", std::fs::remove_file(&copy))?;
    execveat_fd(fd, &copy, args)
}

fn dlopen(lib: &str) -> io::Result<()> {
    let p = cstr(lib);
    // SAFETY: errno is thread-local; clearing it before the call tells a stale
    // value from one dlopen's own failing syscall left.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: dlopen of a path; RTLD_NOW resolves everything at once. The library
    // stays loaded until exit (its constructors run, as for any dlopen).
    let h = unsafe { libc::dlopen(p.as_ptr(), libc::RTLD_NOW) };
    if !h.is_null() {
        return Ok(());
    }
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: dlerror returns NULL or a C string valid until the next dl* call.
    let msg = unsafe { libc::dlerror() };
    let msg = if msg.is_null() { String::new() } else { unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned() };
    println!("dlerror {msg}");
    println!("step dlopen");
    if errno == 0 {
        println!("errno OTHER 0");
        exit(1)
    }
    Err(io::Error::from_raw_os_error(errno))
}

enum SymlinkOp {
    Rename,
    Unlink,
    Truncate,
}

/// A symlink ALLOWED/ln-PID -> DENIED made, then FILE renamed out (to
/// ALLOWED/FILE.moved-PID), unlinked or truncated through ALLOWED/ln-PID/FILE:
/// path strings that only name the allowed directory.
fn symlink_dir(allowed: &str, denied: &str, file: &str, what: SymlinkOp) -> io::Result<()> {
    let link = join(allowed, &format!("ln-{}", std::process::id()));
    step("symlink", std::os::unix::fs::symlink(denied, &link))?;
    let through = join(&link, file);
    match what {
        SymlinkOp::Rename => step("rename", std::fs::rename(&through, join(allowed, &format!("{file}.moved-{}", std::process::id())))),
        SymlinkOp::Unlink => step("unlink", std::fs::remove_file(&through)),
        SymlinkOp::Truncate => {
            let p = cstr(&through);
            // SAFETY: a valid NUL-terminated path.
            step("truncate", cvt(unsafe { libc::truncate(p.as_ptr(), 0) }))
        }
    }
}

/// A clone(CLONE_FILES) child (no thread group) opens PATH for writing and exits
/// (or is killed); the parent, which shares its descriptor table, then writes
/// through whatever the child left there. Prints `child-…`, `fd N` when the
/// parent found the child's descriptor; the last line is the parent's write. When
/// the child's open failed, the last line is its errno; when it was killed and
/// left nothing, the parent dies by the same signal.
fn clone_files_write(path: &str) -> io::Result<()> {
    let mut pipe = [0; 2];
    // SAFETY: pipe2 fills the two-int array.
    step("pipe", cvt(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) }))?;
    let mut ca = CloneArgs { flags: libc::CLONE_FILES as u64, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    match step("clone3", clone3(&mut ca))? {
        0 => {
            let r = open(path, libc::O_WRONLY | libc::O_APPEND);
            let errno: i32 = r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
            let _ = write_fd(pipe[1], &errno.to_ne_bytes());
            // SAFETY: _exit leaves the shared table as it is (no destructors).
            unsafe { libc::_exit(i32::from(errno != 0)) }
        }
        pid => {
            let (_, signal) = wait_child(pid);
            let mut buf = [0u8; 4];
            // SAFETY: reading into a local 4-byte buffer (non-blocking).
            let n = unsafe { libc::read(pipe[0], buf.as_mut_ptr().cast(), 4) };
            let child_errno = (n == 4).then(|| i32::from_ne_bytes(buf));
            if let Some(e) = child_errno.filter(|e| *e != 0) {
                return Err(step("child-open", Err(io::Error::from_raw_os_error(e)))?);
            }
            let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.into());
            let left = std::fs::read_dir("/proc/self/fd").ok().and_then(|d| {
                d.flatten().find_map(|e| {
                    let fd: i32 = e.file_name().to_str()?.parse().ok()?;
                    (std::fs::read_link(e.path()).ok()? == want).then_some(fd)
                })
            });
            match (left, signal) {
                (Some(fd), _) => {
                    println!("fd {fd}");
                    step("parent-write", write_fd(fd, b"written through a sibling's fd\n"))
                }
                (None, Some(sig)) => {
                    println!("step child-open");
                    // SAFETY: signalling ourselves, so the attempt reads as killed.
                    unsafe { libc::kill(libc::getpid(), sig) };
                    exit(1)
                }
                (None, None) => Err(step("find-fd", Err(io::Error::from_raw_os_error(libc::ENOENT)))?),
            }
        }
    }
}

/// Raises RLIMIT_CORE (to unlimited as root, else to the hard limit); prints the
/// limit it got.
fn setrlimit_core() -> io::Result<()> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit into a local.
    step("getrlimit", cvt(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) }))?;
    // SAFETY: geteuid cannot fail.
    let want = if unsafe { libc::geteuid() } == 0 { libc::RLIM_INFINITY } else { lim.rlim_max };
    let new = libc::rlimit { rlim_cur: want, rlim_max: want };
    // SAFETY: setrlimit from a local.
    step("setrlimit", cvt(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &new) }))?;
    println!("rlimit-core {want}");
    Ok(())
}

/// RLIMIT_CORE raised, then a child that makes itself dumpable, enters DIR and
/// dies of SIGSEGV; `ok` when a file named core* appeared in DIR (with the
/// default core_pattern `core`, the kernel writes it there itself).
fn core_dump(dir: &str) -> io::Result<()> {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    println!("core-pattern {}", pattern.trim());
    setrlimit_core()?;
    let d = cstr(dir);
    // SAFETY: probe is single-threaded here; the child only makes async-signal-
    // safe calls before it dies.
    match unsafe { libc::fork() } {
        -1 => Err(step("fork", Err(io::Error::last_os_error()))?),
        0 => {
            // SAFETY: prctl/chdir/signal/raise with valid arguments, then _exit
            // if SIGSEGV somehow did not end us.
            unsafe {
                libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
                if libc::chdir(d.as_ptr()) != 0 {
                    libc::_exit(3);
                }
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
                libc::_exit(4)
            }
        }
        pid => {
            wait_child(pid);
            let core = std::fs::read_dir(dir)
                .ok()
                .and_then(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).find(|n| n.starts_with("core")));
            match core {
                Some(name) => {
                    println!("core-file {name}");
                    Ok(())
                }
                None => Err(step("core-file", Err(io::Error::from_raw_os_error(libc::ENOENT)))?),
            }
        }
    }
}

/// Process accounting into PATH (which must exist): acct(PATH), one child that
/// exits (one record), then acct(NULL). `ok` when acct(PATH) succeeded.
fn acct(path: &str) -> io::Result<()> {
    let p = cstr(path);
    // SAFETY: a valid NUL-terminated path.
    step("acct", cvt(unsafe { libc::acct(p.as_ptr()) }))?;
    // SAFETY: a child that only exits.
    match unsafe { libc::fork() } {
        // SAFETY: _exit in the child.
        0 => unsafe { libc::_exit(0) },
        pid if pid > 0 => {
            wait_child(pid);
        }
        _ => {}
    }
    // SAFETY: acct(NULL) turns accounting off.
    step("acct-off", cvt(unsafe { libc::acct(std::ptr::null()) }))
}

// ----- sockets ---------------------------------------------------------------------------

/// An ICMP "ping" socket (SOCK_DGRAM, IPPROTO_ICMP/ICMPV6) and one echo request
/// with a payload; `ok` when sendto succeeded (and `reply N` if an answer came).
fn ping(addr: &str) -> io::Result<()> {
    let ip: std::net::IpAddr = addr.parse().unwrap_or_else(|_| crate::usage());
    let (fam, proto, kind) = match ip {
        std::net::IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8),
        std::net::IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8),
    };
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(fam, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto) };
    step("socket", cvt(fd))?;
    // type, code, checksum (the kernel fills it), id (the kernel sets it), seq 1.
    let mut packet = vec![kind, 0, 0, 0, 0, 0, 0, 1];
    packet.extend_from_slice(b"agentd-probe tunnel payload");
    let (sa, len) = crate::sockaddr(&std::net::SocketAddr::new(ip, 0));
    // SAFETY: sending from a live buffer to a sockaddr of the length given.
    let n = unsafe {
        libc::sendto(fd, packet.as_ptr().cast(), packet.len(), 0, &sa as *const libc::sockaddr_storage as *const libc::sockaddr, len)
    };
    step("sendto", if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) })?;
    let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
    let mut buf = [0u8; 256];
    // SAFETY: a timeval option of its size; a receive into a local buffer.
    let n = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), size_of::<libc::timeval>() as u32);
        libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0)
    };
    if n > 0 {
        println!("reply {n}");
    }
    Ok(())
}

/// A UDP-Lite socket (IPPROTO_UDPLITE, 136): connect, then one send.
fn udplite(addr: &str) -> io::Result<()> {
    let addr: std::net::SocketAddr = addr.parse().unwrap_or_else(|_| crate::usage());
    let fam = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(fam, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 136) };
    step("socket", cvt(fd))?;
    let (sa, len) = crate::sockaddr(&addr);
    // SAFETY: a sockaddr of the length given.
    step("connect", cvt(unsafe { libc::connect(fd, &sa as *const libc::sockaddr_storage as *const libc::sockaddr, len) }))?;
    // SAFETY: sending from a live buffer.
    let n = unsafe { libc::send(fd, b"probe udplite".as_ptr().cast(), 13, 0) };
    step("send", if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) })
}
