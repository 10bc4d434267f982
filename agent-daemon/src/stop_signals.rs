//! SIGTERM and SIGINT, with who sent them.
//!
//! A bound agent must not be able to stop agentd. Where BPF LSM runs, the kernel
//! refuses its signal (`task_kill`); on the fallback tier the signal is delivered
//! before the sender is killed, so agentd itself must tell who sent it. A
//! `SA_SIGINFO` handler passes the sender's pid through a pipe (write(2) is
//! async-signal-safe) to [`StopSignals::recv`], whose caller decides.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicI32, Ordering},
};

use tokio::io::{unix::AsyncFd, Interest};

/// The write end of the pipe, for the handler (-1 until installed).
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

/// A stop signal: which, and the pid that sent it (0 when the kernel sent it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopSignal {
    pub signal: i32,
    pub sender: u32,
}

/// Receives SIGTERM and SIGINT after [`StopSignals::install`].
pub struct StopSignals {
    read: AsyncFd<OwnedFd>,
}

extern "C" fn on_signal(signal: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; only
    // async-signal-safe calls (write) follow.
    let sender = unsafe { if info.is_null() { 0 } else { (*info).si_pid() } };
    let msg: [i32; 2] = [signal, sender];
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: writes 8 bytes from a live local array to the pipe; a full
        // pipe drops the message (the pipe is non-blocking), never blocks here.
        unsafe { libc::write(fd, msg.as_ptr() as *const libc::c_void, 8) };
    }
}

impl StopSignals {
    /// Installs the handlers. Call once, inside a tokio runtime.
    pub fn install() -> io::Result<StopSignals> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 fills the two-element array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The write end lives as long as the process: the handler may run at any time.
        PIPE_WRITE.store(std::os::fd::IntoRawFd::into_raw_fd(write), Ordering::Relaxed);
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: a zeroed sigaction is valid; we set the handler, SA_SIGINFO
            // and SA_RESTART, and install it for a signal we own.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                if libc::sigaction(signal, &sa, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open for as
        // long as it is registered.
        let read = unsafe { AsyncFd::register_with_interest(read, Interest::READABLE) }?;
        Ok(StopSignals { read })
    }

    /// The next stop signal.
    pub async fn recv(&mut self) -> io::Result<StopSignal> {
        loop {
            let mut guard = self.read.readable().await?;
            let mut buf = [0i32; 2];
            let fd = std::os::fd::AsRawFd::as_raw_fd(guard.get_inner());
            // SAFETY: reads at most 8 bytes into a live local array.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, 8) };
            if n == 8 {
                return Ok(StopSignal { signal: buf[0], sender: buf[1].max(0) as u32 });
            }
            if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                return Err(io::Error::last_os_error());
            }
            guard.clear_ready();
        }
    }
}
