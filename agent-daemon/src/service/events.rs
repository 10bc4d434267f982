//! Kernel events → `pb::Event`: names for ids, wall-clock time, the executable
//! from /proc; the last few thousand kept for `agentctl events`, and a broadcast
//! to followers. A follower that falls behind is told how many it missed.

use std::{
    collections::VecDeque,
    net::Ipv6Addr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use agent_common::{kind, mechanism, op, reason, verdict, Event};
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tracing::info;

use crate::{api::pb, enforce::EventReader};

const KEEP: usize = 4096;

/// (identity id, rule id) → (identity name, policy name, rule text).
pub type Names = Arc<dyn Fn(u32, u32) -> Option<(String, String, String)> + Send + Sync>;

/// Recent events and live subscribers.
#[derive(Clone)]
pub struct Hub {
    recent: Arc<Mutex<VecDeque<pb::Event>>>,
    live: broadcast::Sender<pb::Event>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub { recent: Arc::new(Mutex::new(VecDeque::new())), live: broadcast::channel(1024).0 }
    }

    fn publish(&self, e: pb::Event) {
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == KEEP {
            r.pop_front();
        }
        r.push_back(e.clone());
        let _ = self.live.send(e);
    }

    /// The kept events (the last `last`, or all for 0), then live ones if `follow`.
    pub fn subscribe(
        &self,
        follow: bool,
        last: usize,
    ) -> Pin<Box<dyn Stream<Item = Result<pb::Event, tonic::Status>> + Send>> {
        let mut rx = self.live.subscribe();
        let kept: Vec<pb::Event> = {
            let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let skip = if last == 0 { 0 } else { r.len().saturating_sub(last) };
            r.iter().skip(skip).cloned().collect()
        };
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            for e in kept {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(tonic::Status::resource_exhausted(format!(
                                "agentd: this follower fell behind and missed {n} events; reconnect"
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
    }
}

/// Reads kernel events until the ring buffer goes away.
pub async fn pump(mut reader: EventReader, hub: Hub, names: Names) {
    let boot = boot_time();
    while let Some(ev) = reader.next().await {
        let e = convert(&ev, boot, &names);
        info!(
            identity = %e.identity, kind = %e.kind, verdict = %e.verdict, target = %e.target,
            rule = e.rule_id, pid = e.pid, comm = %e.comm, mechanism = %e.mechanism, "decision"
        );
        hub.publish(e);
    }
}

/// Wall-clock time of boot, to turn CLOCK_BOOTTIME stamps into times.
fn boot_time() -> SystemTime {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    let since_boot = if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } == 0 {
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    } else {
        Duration::ZERO
    };
    SystemTime::now() - since_boot
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Converts a kernel event (pure apart from the /proc read of the executable).
pub fn convert(ev: &Event, boot: SystemTime, names: &Names) -> pb::Event {
    let (identity, policy, rule) = names(ev.identity, ev.rule_id).unwrap_or_else(|| (format!("#{}", ev.identity), String::new(), String::new()));
    let target = match ev.kind {
        kind::EGRESS => {
            let a = ev.addr;
            let ip6 = Ipv6Addr::from(a);
            match ip6.to_ipv4_mapped() {
                Some(v4) if ev.family == 2 || a[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] => {
                    format!("{v4}:{}", ev.port)
                }
                _ => format!("[{ip6}]:{}", ev.port),
            }
        }
        kind::SOCKET => format!("family {}", ev.family),
        _ => {
            let n = (ev.path_len as usize).min(ev.path.len());
            let mut p = cstr(&ev.path[..n]);
            if ev.path_truncated != 0 {
                p.push('…');
            }
            p
        }
    };
    pb::Event {
        time: humantime::format_rfc3339_nanos(boot + Duration::from_nanos(ev.ktime_ns)).to_string(),
        identity,
        identity_id: ev.identity,
        kind: match ev.kind {
            kind::EXEC => "exec",
            kind::WRITE => "write",
            kind::EGRESS => "egress",
            kind::SOCKET => "raw-socket",
            _ => "unknown",
        }
        .into(),
        verdict: match ev.verdict {
            verdict::DENY => "deny",
            verdict::KILL => "kill",
            verdict::AUDIT => "audit",
            verdict::WOULD_DENY => "would-deny",
            _ => "unknown",
        }
        .into(),
        mechanism: match ev.mechanism {
            mechanism::LSM => "lsm",
            mechanism::TRACEPOINT => "tracepoint",
            mechanism::SOCK_ADDR => "sock_addr",
            mechanism::SOCK_CREATE => "sock_create",
            _ => "unknown",
        }
        .into(),
        op: match ev.op {
            op::EXEC => "exec",
            op::OPEN => "open",
            op::TRUNCATE => "truncate",
            op::UNLINK => "unlink",
            op::RENAME => "rename",
            op::CREATE => "create",
            op::LINK => "link",
            op::SYMLINK => "symlink",
            op::MKDIR => "mkdir",
            op::RMDIR => "rmdir",
            op::CONNECT => "connect",
            op::SENDMSG => "sendmsg",
            op::SOCKET => "socket",
            op::SYSCALL => "syscall",
            _ => "unknown",
        }
        .into(),
        reason: match ev.reason {
            reason::RULE => "rule",
            reason::DEFAULT => "default",
            reason::REVOKED => "revoked",
            reason::NO_POLICY => "no-policy",
            reason::UNRESOLVED => "unresolved",
            reason::RAW_SOCKET => "raw-socket",
            reason::UNSUPPORTED_SYSCALL => "unsupported-syscall",
            _ => "unknown",
        }
        .into(),
        rule_id: ev.rule_id,
        rule,
        policy,
        policy_version: ev.policy_version,
        pid: ev.tgid,
        tid: ev.pid,
        uid: ev.uid,
        cgroup_id: ev.cgroup_id,
        comm: cstr(&ev.comm),
        executable: std::fs::read_link(format!("/proc/{}/exe", ev.tgid)).map(|p| p.display().to_string()).unwrap_or_default(),
        target,
        protocol: match ev.protocol {
            6 => "tcp",
            17 => "udp",
            _ => "",
        }
        .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> Event {
        // SAFETY: Event is plain old data; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn egress_target_is_addr_port() {
        let mut e = blank();
        e.kind = kind::EGRESS;
        e.verdict = verdict::DENY;
        e.family = 2;
        e.port = 443;
        e.addr = std::net::Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        let names: Names = Arc::new(|_, _| Some(("coder".into(), "p".into(), "{cidr: 10.0.0.0/8, action: deny}".into())));
        let p = convert(&e, SystemTime::UNIX_EPOCH, &names);
        assert_eq!(p.target, "10.1.2.3:443");
        assert_eq!((p.kind.as_str(), p.verdict.as_str(), p.identity.as_str()), ("egress", "deny", "coder"));
        e.family = 10;
        e.addr = "::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(convert(&e, SystemTime::UNIX_EPOCH, &names).target, "[::1]:443");
    }

    #[test]
    fn path_target_marks_truncation() {
        let mut e = blank();
        e.kind = kind::WRITE;
        e.path[..4].copy_from_slice(b"/tmp");
        e.path_len = 4;
        e.path_truncated = 1;
        let names: Names = Arc::new(|_, _| None);
        let p = convert(&e, SystemTime::UNIX_EPOCH, &names);
        assert_eq!(p.target, "/tmp…");
        assert_eq!(p.identity, "#0");
    }
}
