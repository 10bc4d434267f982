//! Connects to local (AF_UNIX) sockets, judged by `egress.unix`.
//!
//! A local socket can be a way out of the cgroup as wide as any network: the
//! container runtimes, systemd and the D-Bus system bus start work elsewhere on
//! request. The decision is made on the socket the kernel is connecting to (the
//! listener's own bound path, walked honestly like any file; an abstract name
//! as `@name`), never on the string the task passed.
//!
//! With BPF LSM: `unix_stream_connect` and `unix_may_send`, EPERM before the
//! connection or datagram exists. Without it: the exit of a successful
//! `connect(2)`, on the peer the socket is now connected to, and a kill before
//! the task can send a byte through it (an unconnected datagram `sendto` is not
//! seen on that tier).

use agent_common::{kind, mechanism, op, verdict, KernelOffsets, PATH_KEY_LEN};
use aya_ebpf::{
    helpers::bpf_send_signal,
    macros::{lsm, raw_tracepoint},
    programs::{LsmContext, RawTracePointContext},
};
use core::ffi::c_void;

use crate::{
    attribution::{current_subject, Subject},
    decide::{decide_path, identity_config, report, unresolved, Decision, Target},
    maps::{Scratch, SCRATCH, UNIX_RULES},
    vfs::{offsets, read_u16, read_u32, read_u64, resolve_dentry, Resolved, Unresolved},
    EPERM, SIGKILL,
};

const AF_UNIX: u16 = 1;

/// The name of the unix socket `sk` (a `struct sock *` of the listener or
/// peer) in the scratch buffer: its honest path, or `@` and its abstract name.
#[inline(always)]
fn socket_name(s: &mut Scratch, o: &KernelOffsets, sk: u64) -> Result<Resolved, Unresolved> {
    let dentry = read_u64(sk + o.unix_sock_path as u64 + o.path_dentry as u64)?;
    if dentry != 0 {
        return resolve_dentry(s, o, dentry, true);
    }
    let addr = read_u64(sk + o.unix_sock_addr as u64)?;
    if addr == 0 {
        // Unbound (a socketpair end): nothing to name; judged as the empty name.
        return Err(Unresolved::Read);
    }
    // struct unix_address { refcount_t refcnt; int len; struct sockaddr_un name; }
    let len = read_u32(addr + 4)? as usize;
    // sun_family, then a NUL, then the abstract name.
    let name_len = if len > 3 { (len - 3) & 0xff } else { 0 };
    let name_len = if name_len >= PATH_KEY_LEN - 1 { PATH_KEY_LEN - 2 } else { name_len };
    s.path[0] = b'@';
    let src = addr + o.unix_address_name as u64 + 3;
    // SAFETY: at most PATH_KEY_LEN - 2 bytes at offset 1 of the 512-byte path.
    let _ = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            s.path.as_mut_ptr().add(1) as *mut c_void,
            name_len as u32,
            src as *const c_void,
        )
    };
    let end = (1 + name_len) & 0x1ff;
    s.path[end] = 0;
    Ok(Resolved { len: 1 + name_len, truncated: false, protect: 0 })
}

/// Decides a connect (or datagram) of `subject` to the unix socket `sk`.
#[inline(always)]
fn judge(subject: &Subject, sk: u64, opc: u8, mech: u8, hard: u8) -> Decision {
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return Decision::fail_closed() };
    // SAFETY: per-CPU scratch, exclusively ours until the program returns.
    let s = unsafe { &mut *s };
    match identity_config(subject.identity) {
        Err(d) => {
            report(s, subject, &d, &Target::path(kind::UNIX, opc, mech, None), hard);
            d
        }
        Ok(cfg) => {
            let named = match offsets() {
                Ok(o) => socket_name(s, o, sk),
                Err(e) => Err(e),
            };
            match named {
                Ok(r) => {
                    let d = decide_path(s, &UNIX_RULES, kind::UNIX, cfg, cfg.unix_default, cfg.unix_glob, r);
                    // Nothing can hold a unix connect: an `ask` is a denial.
                    let d = Decision { ask: false, ..d };
                    report(s, subject, &d, &Target::path(kind::UNIX, opc, mech, Some(r)), hard);
                    d
                }
                Err(why) => {
                    let d = unresolved(cfg.policy_version, why);
                    report(s, subject, &d, &Target::path(kind::UNIX, opc, mech, None), hard);
                    d
                }
            }
        }
    }
}

#[lsm(hook = "unix_stream_connect")]
#[inline(always)]
pub fn lsm_unix_stream_connect(ctx: LsmContext) -> i32 {
    // unix_stream_connect(struct sock *sock, struct sock *other, struct sock *newsk)
    let prev: i32 = ctx.arg(3);
    if prev != 0 {
        return prev;
    }
    let Some(subject) = current_subject() else { return 0 };
    let other = crate::write::raw_arg(&ctx, 1);
    if judge(&subject, other, op::CONNECT, mechanism::LSM, verdict::DENY).block { -EPERM } else { 0 }
}

#[lsm(hook = "unix_may_send")]
#[inline(always)]
pub fn lsm_unix_may_send(ctx: LsmContext) -> i32 {
    // unix_may_send(struct socket *sock, struct socket *other)
    let prev: i32 = ctx.arg(2);
    if prev != 0 {
        return prev;
    }
    let Some(subject) = current_subject() else { return 0 };
    let other = crate::write::raw_arg(&ctx, 1);
    let Ok(o) = offsets() else { return -EPERM };
    let Ok(sk) = read_u64(other + o.socket_sk as u64) else { return -EPERM };
    if judge(&subject, sk, op::SENDMSG, mechanism::LSM, verdict::DENY).block { -EPERM } else { 0 }
}

#[raw_tracepoint(tracepoint = "sys_exit")]
#[inline(always)]
pub fn tp_sys_exit_unix(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    let regs: u64 = ctx.arg(0);
    let id = read_u64(regs + crate::write::REG_ORIG_AX).unwrap_or(u64::MAX);
    // connect(2), successful: the socket has a peer now, and the task has not
    // sent anything through it yet.
    if id != 42 || ret != 0 {
        return 0;
    }
    let Some(subject) = current_subject() else { return 0 };
    let Ok(o) = offsets() else { return 0 };
    let fd = crate::write::arg(regs, 0);
    let Some(file) = crate::write::fd_file(o, fd as u32 as u64) else { return 0 };
    let Ok(sock) = read_u64(file + o.file_private_data as u64) else { return 0 };
    let Ok(sk) = read_u64(sock + o.socket_sk as u64) else { return 0 };
    if !matches!(read_u16(sk + o.sock_family as u64), Ok(AF_UNIX)) {
        return 0;
    }
    let Ok(peer) = read_u64(sk + o.unix_sock_peer as u64) else { return 0 };
    if peer == 0 {
        return 0;
    }
    if judge(&subject, peer, op::CONNECT, mechanism::TRACEPOINT, verdict::KILL).block {
        // SAFETY: signals the current task, the one that connected.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    0
}

