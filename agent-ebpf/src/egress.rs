//! Network egress decisions.
//!
//! cgroup `sock_addr` programs (connect4/6, sendmsg4/6) attached at the cgroup2 root
//! see every TCP connect and UDP send of every task and decide on the kernel's copy
//! of the destination: returning 0 makes the syscall fail with EPERM. Where BPF LSM
//! runs, `socket_connect` checks the same rules first. `sock_create` refuses raw
//! and packet sockets to bound identities, which could otherwise forge traffic
//! around the connect hooks.

use core::ffi::c_void;

use agent_common::{
    action, held_connect_key, identity_flags, kind, mechanism, op, reason, verdict, AddrKey, EgressRules, HeldConnect,
    MAX_PORT_RULES,
};
use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_socket_cookie},
    macros::{cgroup_sock, cgroup_sock_addr, lsm, sock_ops},
    maps::lpm_trie::Key,
    programs::{LsmContext, SockAddrContext, SockContext, SockOpsContext},
};

use crate::{
    attribution::{current_subject, Subject},
    decide::{count_hit, from_action, identity_config, report, Decision, Target, HIT_DENY},
    maps::{EGRESS_RULES, HELD_BY_COOKIE, HELD_CONNECTS, HOLD_PROXY, SCRATCH},
    vfs::{offsets, read_u32, read_u64},
    EPERM,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const AF_PACKET: u32 = 17;
const AF_UNIX: u32 = 1;
const AF_NETLINK: u32 = 16;
const AF_INET_U32: u32 = 2;
const AF_INET6_U32: u32 = 10;
const IPPROTO_ICMP: u32 = 1;
/// How ICMP and ICMPv6 alike are named in port rules and lookups.
const IPPROTO_ICMP_CODE: u8 = 1;
const IPPROTO_ICMPV6: u32 = 58;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Picks the first port rule of the longest matching prefix; else the default.
#[inline(always)]
fn lookup(ruleset: u32, addr: &[u8; 16], port: u16, protocol: u8) -> Option<(u8, u32)> {
    let key = Key::new(32 + 128, AddrKey { ruleset: ruleset.to_be_bytes(), addr: *addr });
    let rules: &EgressRules = EGRESS_RULES.get(&key)?;
    let count = rules.count as usize;
    let mut i = 0;
    while i < MAX_PORT_RULES {
        if i >= count {
            break;
        }
        if let Some(r) = rules.rules.get(i) {
            // A rule without a protocol covers TCP and UDP, never ICMP (1).
            let proto_ok = if protocol == IPPROTO_ICMP_CODE { r.protocol == IPPROTO_ICMP_CODE } else { r.protocol == 0 || r.protocol == protocol };
            if port >= r.port_lo && port <= r.port_hi && proto_ok {
                return Some((r.action, r.rule_id));
            }
        }
        i += 1;
    }
    None
}

/// The decision on a connect or send before any hold, and the identity's rule
/// set (to count an `ask` once the caller knows which way it went).
#[inline(always)]
fn decide(subject: &Subject, addr: &[u8; 16], port: u16, protocol: u8) -> (Decision, u32) {
    match identity_config(subject.identity) {
        Err(d) => (d, 0),
        Ok(cfg) => {
            let d = match lookup(cfg.ruleset, addr, port, protocol) {
                Some((act, rule_id)) => from_action(cfg, kind::EGRESS, act, reason::RULE, rule_id),
                // ICMP is allowed only by a rule that names it, whatever the default.
                None if protocol == IPPROTO_ICMP_CODE => from_action(cfg, kind::EGRESS, action::DENY, reason::DEFAULT, 0),
                None => from_action(cfg, kind::EGRESS, cfg.egress_default, reason::DEFAULT, 0),
            };
            (d, cfg.ruleset)
        }
    }
}

/// An `ask` that cannot be held (UDP, a send, no proxy): denied, and counted so.
#[inline(always)]
fn refuse_ask(d: Decision, ruleset: u32) -> Decision {
    count_hit(ruleset, kind::EGRESS, d.rule_id, HIT_DENY);
    Decision { ask: false, ..d }
}

#[inline(always)]
fn emit(subject: &Subject, d: &Decision, family: u16, addr: [u8; 16], port: u16, protocol: u8, op: u8, mech: u8) {
    let target = Target { kind: kind::EGRESS, op, mechanism: mech, path: None, family, protocol, port, addr, aux: 0 };
    if let Some(s) = SCRATCH.get_ptr(0) {
        // SAFETY: per-CPU scratch; egress events carry no path, so it is only read.
        report(unsafe { &*s }, subject, d, &target, verdict::DENY);
    }
}

/// Sends an `ask` TCP connect to agentd's hold proxy on loopback instead of its
/// destination, recording where it was going under the socket's cookie. False
/// (deny) when there is no proxy or the record cannot be written.
#[inline(always)]
fn hold(ctx: &SockAddrContext, v6_family: bool, subject: &Subject, d: &Decision, addr: [u8; 16], port: u16) -> bool {
    let Some(proxy) = HOLD_PROXY.get(0) else { return false };
    let to = if v6_family { proxy.port6 } else { proxy.port4 };
    if to == 0 {
        return false;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let held = HeldConnect {
        addr,
        port,
        family: if v6_family { AF_INET6 } else { AF_INET },
        identity: subject.identity,
        rule_id: d.rule_id,
        policy_version: d.policy_version,
        tgid,
        _pad: 0,
    };
    if HELD_BY_COOKIE.insert(&cookie, &held, 0).is_err() {
        return false;
    }
    // SAFETY: connect4/6 may rewrite the destination in their context.
    unsafe {
        let sa = &mut *ctx.sock_addr;
        if v6_family {
            sa.user_ip6 = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
        } else {
            sa.user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
        }
        sa.user_port = u32::from(to.to_be());
    }
    true
}

#[inline(always)]
fn v4_mapped(ip4_be: u32) -> [u8; 16] {
    let b = ip4_be.to_ne_bytes();
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3]]
}

#[inline(always)]
fn v6(words: &[u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        a[i * 4] = b[0];
        a[i * 4 + 1] = b[1];
        a[i * 4 + 2] = b[2];
        a[i * 4 + 3] = b[3];
        i += 1;
    }
    a
}

#[inline(always)]
fn sock_addr_verdict(ctx: &SockAddrContext, v6_family: bool, op: u8) -> i32 {
    let Some(subject) = current_subject() else { return 1 };
    // SAFETY: the context is the kernel's bpf_sock_addr; these are permitted loads.
    let (addr, port, protocol, family) = unsafe {
        let sa = &*ctx.sock_addr;
        let addr = if v6_family {
            let w = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]];
            v6(&w)
        } else {
            v4_mapped(sa.user_ip4)
        };
        let port = u16::from_be(sa.user_port as u16);
        (addr, port, sa.protocol as u8, if v6_family { AF_INET6 } else { AF_INET })
    };
    let (d, ruleset) = decide(&subject, &addr, port, protocol);
    let d = if !d.ask {
        d
    } else if op == op::CONNECT && protocol == IPPROTO_TCP && hold(ctx, v6_family, &subject, &d, addr, port) {
        Decision { block: false, report: true, soft_verdict: verdict::HELD, ask: false, ..d }
    } else {
        refuse_ask(d, ruleset)
    };
    emit(&subject, &d, family, addr, port, protocol, op, mechanism::SOCK_ADDR);
    if d.block { 0 } else { 1 }
}

#[cgroup_sock_addr(connect4)]

#[inline(always)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, false, op::CONNECT)
}

#[cgroup_sock_addr(connect6)]

#[inline(always)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, true, op::CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]

#[inline(always)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, false, op::SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]

#[inline(always)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, true, op::SENDMSG)
}

#[cgroup_sock(sock_create)]
#[inline(always)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: readable fields of the kernel's bpf_sock.
    let (family, ty, protocol) = unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    // Only the combinations the egress hooks judge: TCP and UDP over IPv4/IPv6
    // (connect4/6, sendmsg4/6), ICMP "ping" sockets by rule, local sockets
    // (AF_UNIX, judged at connect by `egress.unix`; AF_NETLINK, the kernel
    // itself). Cheap test first: this runs for every socket on the machine.
    let judged = match family {
        AF_UNIX | AF_NETLINK => true,
        AF_INET_U32 | AF_INET6_U32 => {
            (ty == SOCK_STREAM && protocol == IPPROTO_TCP as u32) || (ty == SOCK_DGRAM && protocol == IPPROTO_UDP as u32)
        }
        _ => false,
    };
    if judged {
        return 1;
    }
    let Some(subject) = current_subject() else { return 1 };
    let cfg = identity_config(subject.identity);
    let icmp = (family == AF_INET_U32 && protocol == IPPROTO_ICMP) || (family == AF_INET6_U32 && protocol == IPPROTO_ICMPV6);
    if ty == SOCK_DGRAM && icmp {
        if let Ok(c) = cfg {
            if c.flags & identity_flags::ICMP != 0 && crate::guard::lsm_runs() {
                // A rule allows ICMP somewhere: each destination is judged at
                // connect and send (BPF LSM socket_connect, socket_sendmsg).
                return 1;
            }
        }
    }
    let raw = ty == SOCK_RAW || family == AF_PACKET;
    let d = Decision {
        block: true,
        report: true,
        soft_verdict: 0,
        ask: false,
        reason: if raw { reason::RAW_SOCKET } else { reason::PROTOCOL },
        rule_id: 0,
        policy_version: match cfg {
            Ok(cfg) => cfg.policy_version,
            Err(_) => 0,
        },
    };
    let target = Target {
        kind: kind::SOCKET,
        op: op::SOCKET,
        mechanism: mechanism::SOCK_CREATE,
        path: None,
        family: family as u16,
        protocol: protocol as u8,
        port: ty as u16,
        addr: [0; 16],
        aux: ((family as u64) << 32) | ((ty as u64) << 16) | protocol as u64,
    };
    if let Some(s) = SCRATCH.get_ptr(0) {
        // SAFETY: per-CPU scratch, read only.
        report(unsafe { &*s }, &subject, &d, &target, verdict::DENY);
    }
    0
}

/// The destination of a sockaddr in kernel memory: (family, address, port),
/// `None` for a family that is not IP (local sockets are not network egress).
/// `Err` when it cannot be read (fail closed).
#[inline(always)]
fn kernel_sockaddr(address: u64) -> Result<Option<(u16, [u8; 16], u16)>, ()> {
    // sockaddr layouts are ABI: family at 0, port at 2 (network order), IPv4
    // address at 4, IPv6 address at 8.
    let head = read_u32(address).map_err(|_| ())?;
    let family = head as u16;
    let port = u16::from_be((head >> 16) as u16);
    let addr = match family {
        AF_INET => v4_mapped(read_u32(address + 4).map_err(|_| ())?),
        AF_INET6 => {
            let (a, b) = (read_u64(address + 8).map_err(|_| ())?, read_u64(address + 16).map_err(|_| ())?);
            let (a, b) = (a.to_ne_bytes(), b.to_ne_bytes());
            [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
        }
        _ => return Ok(None),
    };
    Ok(Some((family, addr, port)))
}

/// The protocol code rules use for `struct socket *sock`: TCP, UDP, or ICMP (1)
/// for a ping socket; 0 when unknown.
#[inline(always)]
fn socket_protocol(sock: u64) -> u8 {
    let Ok(o) = offsets() else { return 0 };
    let proto = read_u64(sock + o.socket_sk as u64).and_then(|sk| crate::vfs::read_u16(sk + o.sock_sk_protocol as u64));
    match proto {
        Ok(p) if p as u32 == IPPROTO_ICMP || p as u32 == IPPROTO_ICMPV6 => return IPPROTO_ICMP_CODE,
        _ => {}
    }
    match read_u32(sock + o.socket_type as u64) {
        Ok(t) if t & 0xffff == SOCK_STREAM => IPPROTO_TCP,
        Ok(t) if t & 0xffff == SOCK_DGRAM => IPPROTO_UDP,
        _ => 0,
    }
}

#[lsm(hook = "socket_connect")]
#[inline(always)]
pub fn lsm_socket_connect(ctx: LsmContext) -> i32 {
    // socket_connect(struct socket *sock, struct sockaddr *address, int addrlen)
    let (sock, address, prev): (u64, u64, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(3));
    if prev != 0 {
        return prev;
    }
    let Some(subject) = current_subject() else { return 0 };
    let (family, addr, port) = match kernel_sockaddr(address) {
        Ok(Some(d)) => d,
        Ok(None) => return 0,
        Err(()) => return -EPERM,
    };
    let protocol = socket_protocol(sock);
    let port = if protocol == IPPROTO_ICMP_CODE { 0 } else { port };
    let (d, ruleset) = decide(&subject, &addr, port, protocol);
    if d.ask && protocol == IPPROTO_TCP {
        // connect4/6 (always attached) hold it at the proxy, or deny it.
        return 0;
    }
    let d = if d.ask { refuse_ask(d, ruleset) } else { d };
    emit(&subject, &d, family, addr, port, protocol, op::CONNECT, mechanism::LSM);
    if d.block { -EPERM } else { 0 }
}

/// ICMP "ping" sockets have no cgroup send hook: each datagram's destination
/// is judged here (only ICMP; TCP and UDP are the cgroup programs' job).
#[lsm(hook = "socket_sendmsg")]
#[inline(always)]
pub fn lsm_socket_sendmsg(ctx: LsmContext) -> i32 {
    // socket_sendmsg(struct socket *sock, struct msghdr *msg, int size)
    let prev: i32 = ctx.arg(3);
    if prev != 0 {
        return prev;
    }
    // One lookup for a task that is not bound: this runs for every send.
    let Some(subject) = crate::attribution::sticky_subject() else { return 0 };
    let sock = crate::write::raw_arg(&ctx, 0);
    if socket_protocol(sock) != IPPROTO_ICMP_CODE {
        return 0;
    }
    let msg = crate::write::raw_arg(&ctx, 1);
    let Ok(o) = offsets() else { return -EPERM };
    let Ok(name) = read_u64(msg + o.msghdr_msg_name as u64) else { return -EPERM };
    if name == 0 {
        // A connected ping socket: its destination was judged at connect.
        return 0;
    }
    let (family, addr) = match kernel_sockaddr(name) {
        Ok(Some((f, a, _))) => (f, a),
        Ok(None) => return 0,
        Err(()) => return -EPERM,
    };
    let (d, ruleset) = decide(&subject, &addr, 0, IPPROTO_ICMP_CODE);
    let d = if d.ask { refuse_ask(d, ruleset) } else { d };
    emit(&subject, &d, family, addr, 0, IPPROTO_ICMP_CODE, op::SENDMSG, mechanism::LSM);
    if d.block { -EPERM } else { 0 }
}

/// Once a held connect's SYN is about to go (its source port is known), moves its
/// record from the socket cookie to (family, source port), which is all the proxy
/// can see of the connection it accepts.
#[sock_ops]

#[inline(always)]
pub fn hold_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
    // SAFETY: the value is copied out at once.
    let Some(held) = (unsafe { HELD_BY_COOKIE.get(&cookie) }).copied() else { return 1 };
    let key = held_connect_key(ctx.family() as u16, ctx.local_port() as u16);
    let _ = HELD_CONNECTS.insert(&key, &held, 0);
    let _ = HELD_BY_COOKIE.remove(&cookie);
    1
}
