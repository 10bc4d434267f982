//! `probe`: performs exactly one action and reports how the kernel answered, so
//! the integration tests can run it inside a bound cgroup (on the host and in the
//! busybox VM, where there is no python or curl) and check what an agent would see.
//!
//! Prints `ok` and exits 0 on success, or `errno <NAME> <n>` and exits 1.
//! A kill by agentd's fallback mechanisms shows up as the parent seeing SIGKILL.

// In a directory of its own, so cargo does not take it for another binary.
#[path = "probe/attempts.rs"]
mod attempts;

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::exit,
    time::Duration,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(&args)
}

fn run(args: &[String]) -> ! {
    let a = |i: usize| -> &str {
        args.get(i).map(String::as_str).unwrap_or_else(|| usage())
    };
    let result: std::io::Result<()> = match a(0) {
        // connect ADDR:PORT — a TCP connect; optionally reads one line.
        "connect" => {
            let addr: SocketAddr = a(1).parse().unwrap_or_else(|_| usage());
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map(|mut s| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).unwrap_or(0);
                if n > 0 {
                    println!("read {}", String::from_utf8_lossy(&buf[..n]).trim());
                }
            })
        }
        // tcp-talk ADDR:PORT MSG — connect (waiting up to 90 s), send MSG and a
        // newline, read the answer to its end (up to 90 s); prints `read ANSWER`.
        // A connect held for approval waits here; a denied one ends in ECONNRESET.
        "tcp-talk" => {
            let addr: SocketAddr = a(1).parse().unwrap_or_else(|_| usage());
            TcpStream::connect_timeout(&addr, Duration::from_secs(90)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(90)))?;
                s.write_all(format!("{}\n", a(2)).as_bytes())?;
                let mut answer = Vec::new();
                s.read_to_end(&mut answer)?;
                println!("read {}", String::from_utf8_lossy(&answer).trim());
                Ok(())
            })
        }
        // udp ADDR:PORT — one datagram with sendto.
        "udp" => {
            let addr: SocketAddr = a(1).parse().unwrap_or_else(|_| usage());
            let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            UdpSocket::bind(bind).and_then(|s| s.send_to(b"probe", addr)).map(drop)
        }
        // write PATH — open for writing (create/truncate) and write a line.
        "write" => std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(a(1))
            .and_then(|mut f| f.write_all(b"written by probe\n")),
        // append PATH — open an existing file O_WRONLY|O_APPEND, no create.
        "append" => std::fs::OpenOptions::new()
            .append(true)
            .open(a(1))
            .and_then(|mut f| f.write_all(b"appended by probe\n")),
        "read" => std::fs::read(a(1)).map(drop),
        "unlink" => std::fs::remove_file(a(1)),
        "rename" => std::fs::rename(a(1), a(2)),
        "mkdir" => std::fs::create_dir(a(1)),
        "symlink" => std::os::unix::fs::symlink(a(1), a(2)),
        "truncate" => {
            let p = CString::new(a(1)).unwrap_or_else(|_| usage());
            // SAFETY: a valid NUL-terminated path.
            cvt(unsafe { libc::truncate(p.as_ptr(), 0) })
        }
        "raw-socket" => {
            // SAFETY: plain syscall; the fd is closed right away.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
            if fd >= 0 {
                // SAFETY: we own fd.
                unsafe { libc::close(fd) };
            }
            cvt(fd)
        }
        // io-uring — create an io_uring instance (its operations bypass syscall hooks).
        "io-uring" => {
            let mut params = [0u8; 120];
            // SAFETY: io_uring_setup(1, &params); params is large enough.
            let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
            if fd >= 0 {
                // SAFETY: we own fd.
                unsafe { libc::close(fd as i32) };
            }
            cvt(fd as i32)
        }
        // unlink32 PATH — unlink through the 32-bit `int 0x80` gate.
        "unlink32" => unlink32(a(1)),
        // exec PATH [ARGS...] — replace this process; only returns on failure.
        "exec" => {
            use std::os::unix::process::CommandExt as _;
            Err(std::process::Command::new(a(1)).args(&args[2..]).exec())
        }
        // hammer ALLOWED DENIED MILLIS — UDP connect(2) (no packet is sent) to
        // ALLOWED and DENIED in turn as fast as possible until stdin closes (or
        // MILLIS ms pass); prints `allowed_ok N allowed_failed N denied_ok N
        // denied_failed N`. Used to look for an instant, during a policy re-apply,
        // with the wrong decision.
        "hammer" => {
            let allowed: SocketAddr = a(1).parse().unwrap_or_else(|_| usage());
            let denied: SocketAddr = a(2).parse().unwrap_or_else(|_| usage());
            let millis: u64 = a(3).parse().unwrap_or_else(|_| usage());
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = done.clone();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let bind = if allowed.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let (sa, sd) = match (UdpSocket::bind(bind), UdpSocket::bind(bind)) {
                (Ok(a), Ok(d)) => (a, d),
                (Err(e), _) | (_, Err(e)) => fail(e),
            };
            let mut n = [0u64; 4];
            let end = std::time::Instant::now() + Duration::from_millis(millis);
            while std::time::Instant::now() < end && !done.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..64 {
                    n[if sa.connect(allowed).is_ok() { 0 } else { 1 }] += 1;
                    n[if sd.connect(denied).is_ok() { 2 } else { 3 }] += 1;
                }
            }
            println!("allowed_ok {} allowed_failed {} denied_ok {} denied_failed {}", n[0], n[1], n[2], n[3]);
            exit(0)
        }
        // flood HAMMER|- DISTINCT_ADDR BASE_PORT N MILLIS — UDP connect(2) to
        // HAMMER as fast as it can for MILLIS ms (with `-`: none), and N connects
        // to DISTINCT_ADDR:BASE_PORT, :BASE_PORT+1, ... spread evenly through that
        // time; prints `hammer_denied N hammer_ok N distinct_denied N distinct_ok N`.
        // A flood of one decision hiding distinct ones.
        "flood" => {
            let hammer: Option<SocketAddr> = if a(1) == "-" {
                None
            } else {
                Some(a(1).parse().unwrap_or_else(|_| usage()))
            };
            let distinct: std::net::IpAddr = a(2).parse().unwrap_or_else(|_| usage());
            let base: u16 = a(3).parse().unwrap_or_else(|_| usage());
            let count: u32 = a(4).parse().unwrap_or_else(|_| usage());
            let millis: u64 = a(5)
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or_else(|| usage());
            let bind = if distinct.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let (sh, sd) = match (UdpSocket::bind(bind), UdpSocket::bind(bind)) {
                (Ok(h), Ok(d)) => (h, d),
                (Err(e), _) | (_, Err(e)) => fail(e),
            };
            let start = std::time::Instant::now();
            let total = Duration::from_millis(millis);
            let mut n = [0u64; 4];
            let mut next = 0u32;
            loop {
                let elapsed = start.elapsed();
                // The next distinct one is due at (next + 1/2) / count of the way.
                while next < count && elapsed >= total * (2 * next + 1) / (2 * count) {
                    let to = SocketAddr::new(distinct, base.wrapping_add(next as u16));
                    n[if sd.connect(to).is_ok() { 3 } else { 2 }] += 1;
                    next += 1;
                }
                if elapsed >= total && next == count {
                    break;
                }
                match hammer {
                    Some(h) => {
                        for _ in 0..64 {
                            n[if sh.connect(h).is_ok() { 1 } else { 0 }] += 1;
                        }
                    }
                    None => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            println!(
                "hammer_denied {} hammer_ok {} distinct_denied {} distinct_ok {}",
                n[0], n[1], n[2], n[3]
            );
            exit(0)
        }
        // paced ADDR:PORT PER_SEC — UDP connect(2) to ADDR about PER_SEC times a
        // second until stdin closes; prints `ok N failed N`. A steady stream of
        // decisions (and receipts) at a rate the test chooses, unlike `hammer`,
        // whose volume would make every later step slow.
        // With a third argument `distinct`, each connect goes to the next port
        // (PORT, PORT+1, ... wrapping below 65536): every decision a distinct one,
        // which the kernel reports one by one rather than counting repeats.
        "paced" => {
            let mut addr: SocketAddr = a(1).parse().unwrap_or_else(|_| usage());
            let per_sec: u64 = a(2).parse().ok().filter(|n| *n > 0).unwrap_or_else(|| usage());
            let distinct = args.get(3).is_some_and(|x| x == "distinct");
            let base = addr.port();
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = done.clone();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let s = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap_or_else(|e| fail(e));
            let (start, mut n) = (std::time::Instant::now(), [0u64; 2]);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if distinct {
                    addr.set_port((u64::from(base) + (n[0] + n[1]) % (65536 - u64::from(base))) as u16);
                }
                n[usize::from(s.connect(addr).is_err())] += 1;
                // Ahead of the pace: wait for it.
                let due = start + Duration::from_micros((n[0] + n[1]) * 1_000_000 / per_sec);
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            }
            println!("ok {} failed {}", n[0], n[1]);
            exit(0)
        }
        // join CGROUP_DIR ACTION... — move into the cgroup, then do ACTION, so the
        // action is the only thing the cgroup's policy judges (no exec of probe).
        "join" => {
            if let Err(e) = std::fs::write(std::path::Path::new(a(1)).join("cgroup.procs"), "0") {
                eprintln!("probe: joining {}: {e}", a(1));
                exit(3)
            }
            if args.len() < 3 {
                usage()
            }
            run(&args[2..])
        }
        // tcp-try ADDR:PORT — a non-blocking TCP connect: `ok` once the kernel let
        // it start (EINPROGRESS, or an immediate answer such as ECONNREFUSED), the
        // errno when connect(2) itself was refused.
        "tcp-try" => {
            let addr: SocketAddr = a(1).parse().unwrap_or_else(|_| usage());
            let fam = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
            // SAFETY: plain syscalls on a socket we own; the sockaddr is built by
            // socket2-free code below with the right length for its family.
            unsafe {
                let fd = libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    fail(std::io::Error::last_os_error());
                }
                let (sa, len) = sockaddr(&addr);
                let r = libc::connect(fd, &sa as *const libc::sockaddr_storage as *const libc::sockaddr, len);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                match (r, err.raw_os_error()) {
                    (0, _) => Ok(()),
                    (_, Some(libc::EINPROGRESS | libc::ECONNREFUSED | libc::ENETUNREACH | libc::EHOSTUNREACH)) => Ok(()),
                    _ => Err(err),
                }
            }
        }
        // udp-connect ADDR:PORT — connect(2) a UDP socket (sends nothing).
        "udp-connect" => {
            let addr: SocketAddr = a(1).parse().unwrap_or_else(|_| usage());
            let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            UdpSocket::bind(bind).and_then(|s| s.connect(addr))
        }
        // sleep SECS — stay alive (a process to find in a cgroup).
        "sleep" => {
            std::thread::sleep(Duration::from_secs(a(1).parse().unwrap_or(1)));
            Ok(())
        }
        // bench-exec N — fork and exec /bin/true N times; prints `elapsed_ns T`.
        "bench-exec" => {
            let n: u32 = a(1).parse().unwrap_or_else(|_| usage());
            let start = std::time::Instant::now();
            for _ in 0..n {
                let st = std::process::Command::new("/bin/true").status();
                if !matches!(st, Ok(s) if s.success()) {
                    fail(std::io::Error::other("/bin/true failed"));
                }
            }
            println!("elapsed_ns {}", start.elapsed().as_nanos());
            Ok(())
        }
        // bench-open N PATH — open PATH read-only and close it N times; prints
        // `elapsed_ns T`.
        "bench-open" => {
            let n: u32 = a(1).parse().unwrap_or_else(|_| usage());
            let path = CString::new(a(2)).unwrap_or_else(|_| usage());
            let start = std::time::Instant::now();
            for _ in 0..n {
                // SAFETY: a valid NUL-terminated path; the fd is closed at once.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    fail(std::io::Error::last_os_error());
                }
                // SAFETY: we own fd.
                unsafe { libc::close(fd) };
            }
            println!("elapsed_ns {}", start.elapsed().as_nanos());
            Ok(())
        }
        // Everything else: the escape attempts (probe/attempts.rs).
        _ => attempts::run(args, run).unwrap_or_else(|| usage()),
    };
    match result {
        Ok(()) => {
            println!("ok");
            exit(0)
        }
        Err(e) => {
            let n = e.raw_os_error().unwrap_or(0);
            println!("errno {} {n}", errno_name(n));
            exit(1)
        }
    }
}

/// `addr` as a sockaddr_in/sockaddr_in6 in a sockaddr_storage, and its length.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; we fill the family's fields.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            (ss, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

fn fail(e: std::io::Error) -> ! {
    let n = e.raw_os_error().unwrap_or(0);
    println!("errno {} {n}", errno_name(n));
    exit(1)
}

/// unlink(2) through the ia32 syscall gate, with the path in the low 4 GiB as a
/// 32-bit syscall needs.
fn unlink32(path: &str) -> std::io::Result<()> {
    // SAFETY: an anonymous private mapping below 4 GiB, used only here.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let bytes = path.as_bytes();
    if bytes.len() >= 4096 {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    // SAFETY: the mapping is 4096 writable bytes; the path plus NUL fits.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), page as *mut u8, bytes.len());
        *(page as *mut u8).add(bytes.len()) = 0;
    }
    let ret: i64;
    // SAFETY: ia32 unlink (nr 10) with ebx = path; int 0x80 clobbers only eax
    // (and r8-r11 per the 64-bit entry), which we declare.
    unsafe {
        // rbx is reserved by LLVM: swap the argument in and out around the gate.
        std::arch::asm!(
            "xchg rbx, {arg}",
            "int 0x80",
            "xchg rbx, {arg}",
            arg = inout(reg) page as u64 => _,
            inlateout("rax") 10i64 => ret,
            lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
        );
    }
    if ret < 0 { Err(std::io::Error::from_raw_os_error(-ret as i32)) } else { Ok(()) }
}

fn cvt(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

fn errno_name(n: i32) -> &'static str {
    match n {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOENT => "ENOENT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::EBADF => "EBADF",
        libc::EFAULT => "EFAULT",
        libc::ENOSYS => "ENOSYS",
        libc::ENOEXEC => "ENOEXEC",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
        libc::ESRCH => "ESRCH",
        libc::EBUSY => "EBUSY",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EXDEV => "EXDEV",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EROFS => "EROFS",
        libc::ETXTBSY => "ETXTBSY",
        libc::ENODEV => "ENODEV",
        libc::ENXIO => "ENXIO",
        libc::ESTALE => "ESTALE",
        libc::ECHILD => "ECHILD",
        libc::ENOMEM => "ENOMEM",
        libc::ENOSPC => "ENOSPC",
        libc::EAGAIN => "EAGAIN",
        libc::ENOTCONN => "ENOTCONN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EKEYREJECTED => "EKEYREJECTED",
        libc::ENODATA => "ENODATA",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        0 => "NONE",
        _ => "OTHER",
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: probe SUBCOMMAND ARGS...
actions:
  flood HAMMER|- DISTINCT_ADDR BASE_PORT N MILLIS | paced ADDR:PORT PER_SEC [distinct]
  connect ADDR:PORT | udp ADDR:PORT | write PATH | append PATH | read PATH | unlink PATH
  rename FROM TO | mkdir PATH | symlink TARGET PATH | truncate PATH | raw-socket | io-uring
  unlink32 PATH | exec PATH [ARGS] | hammer ALLOWED DENIED MILLIS | paced ADDR:PORT PER_SEC
  join CGROUP ACTION... | tcp-try ADDR:PORT | udp-connect ADDR:PORT | tcp-talk ADDR:PORT MSG
  sleep SECS
escape attempts (a failing step prints `step NAME` before the errno line):
  as-user UID GID ACTION...           setgroups([]), setgid, setuid, then ACTION
  wait-stdin ACTION...                read stdin to its end, then ACTION
  userns-bind-exec SRC DST REL [ARGS] unshare(USER|NS), map our ids to 0, / private,
                                      bind SRC over DST, exec DST/REL ARGS
  userns-bind-write SRC DST REL       the same, then create/write DST/REL
  bind-exec SRC DST REL [ARGS]        as userns-bind-exec with unshare(NS) only (root)
  bind-write SRC DST REL              as userns-bind-write with unshare(NS) only (root)
  unshare NS[,NS...]                  NS: user mnt pid net ipc uts cgroup time
  clone-ns NS[,NS...]                 clone3 with those CLONE_NEW* flags; ok if the child ran
  setns PATH                          open PATH (e.g. /proc/1/ns/mnt), setns
  mount-tmpfs DIR | umount DIR | bind-mount SRC DST | chroot DIR
  pivot-root NEW PUT_OLD              raw pivot_root (EINVAL when NEW is no mount point)
  open-tree-write PATH REL            open_tree(OPEN_TREE_CLONE) PATH, create/write REL in it
  open-tree-read PATH REL             the same, reading REL
  move-mount SRC DST                  open_tree clone of SRC attached at DST (move_mount)
  fsmount-write REL                   fsopen/fsmount a detached tmpfs, write REL in it
  cgroup-move DIR [-- ACTION...]      write 0 to DIR/cgroup.procs, then ACTION
  clone-into-cgroup DIR [-- ACTION...]
                                      clone3(CLONE_INTO_CGROUP, fd of DIR O_RDONLY); the child
                                      prints `child-cgroup PATH` and does ACTION; the parent
                                      prints `child-exit N`/`child-signal N`, then the clone3 result
  bpf-obj-get PIN | bpf-map-delete PIN KEY_U64 | bpf-map-lookup PIN KEY_U64 | bpf-prog-load
  ptrace-attach PID                   PTRACE_SEIZE (our exit detaches)
  vm-writev PID ADDR_HEX              process_vm_writev of 1 byte (EFAULT: permitted, bad address)
  pidfd-getfd PID FD                  pidfd_open + pidfd_getfd
  proc-mem-write PID [ADDR_HEX]       open /proc/PID/mem O_RDWR (and pwrite 1 byte at ADDR)
  signal PID SIG | pidfd-signal PID SIG   SIG: STOP CONT TERM KILL INT HUP USR1 USR2 or a number
  finit-module PATH                   ENOEXEC: permitted (not a module); ENOSYS: no modules
  delete-module NAME | kexec-unload | iopl LEVEL | ioperm
  perf-kprobe [FUNC]                  perf_event_open on the kprobe PMU (default do_sys_openat2)
  perf-tracepoint [GROUP/EVENT]       default syscalls/sys_enter_openat
  open-read PATH                      open O_RDONLY, read up to 4096 bytes
  link SRC DST | chmod PATH OCTAL | chown PATH UID GID | utimes PATH | rmdir PATH
  setxattr PATH NAME VALUE | removexattr PATH NAME
  fd-reopen-write PATH                open O_RDONLY, reopen /proc/self/fd/N for append, write
  opath-reopen-write PATH             the same from an O_PATH descriptor
  open-by-handle-write PATH           name_to_handle_at, open_by_handle_at for append, write
  memfd-exec BINARY [ARGS]            BINARY copied into a memfd, execveat(AT_EMPTY_PATH)
  deleted-exec DIR BINARY [ARGS]      BINARY copied into DIR, opened, unlinked, execveat
  dlopen LIB                          dlopen(RTLD_NOW); prints `dlerror MSG` on failure
  symlink-dir-rename ALLOWED DENIED FILE     symlink ALLOWED/ln-PID -> DENIED, then rename
  symlink-dir-unlink ALLOWED DENIED FILE     ALLOWED/ln-PID/FILE to ALLOWED/FILE.moved-PID,
  symlink-dir-truncate ALLOWED DENIED FILE   unlink it, or truncate it
  clone-files-write PATH              a clone(CLONE_FILES) child opens PATH for writing; the
                                      parent writes through the fd it left (`fd N`)
  core-dump DIR                       raise RLIMIT_CORE; a child dumps core in DIR; ok if DIR/core*
  setrlimit-core | acct PATH | acct-off
  ping ADDR                           ICMP ping socket, one echo request with a payload
  udplite ADDR:PORT                   UDP-Lite socket, connect, send
  socket FAMILY TYPE PROTO            socket() with those numbers
  unix-connect PATH | unix-send PATH"
    );
    exit(2)
}
