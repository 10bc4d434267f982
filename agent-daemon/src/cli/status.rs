//! `agentctl status` and `agentctl doctor`.
//!
//! `doctor` asks the daemon, which knows what works because it proved it by loading
//! programs. When the daemon is down it still prints what can be checked from here
//! (the same shape as the daemon's report, so `--json` consumers need one parser),
//! and exits 1.

use std::path::{Path, PathBuf};

use super::{
    cgroup,
    client::Client,
    error::CliError,
    output::{self, human_duration, key_values},
};
use crate::api::pb;

pub async fn status(socket: &Path, json: bool) -> Result<(), CliError> {
    let s = Client::connect(socket).await?.status().await?;
    if json {
        return output::json(&s);
    }
    output::print(status_text(&s))
}

fn status_text(s: &pb::StatusReply) -> String {
    let k = s.counters.unwrap_or_default();
    let dropped = if k.events_dropped == 0 {
        "0".to_string()
    } else {
        format!(
            "{} (the ring buffer was full: delivered from the aggregation table instead)",
            k.events_dropped
        )
    };
    let lost = match (k.lost, k.lost_uncounted) {
        (0, 0) => "0".to_string(),
        (n, 0) => format!("{n} (enforced; recorded only as counts in `gap` receipts)"),
        (n, u) => format!("{n} (enforced; {u} of them not even counted per identity)"),
    };
    let mut out = key_values(&[
        ("version", s.version.clone()),
        ("uptime", human_duration(s.uptime_seconds)),
        (
            "adopted",
            if s.adopted { "yes (took over pinned enforcement from an earlier run)".into() } else { "no".into() },
        ),
        ("state_dir", s.state_dir.clone()),
        ("pin_dir", s.pin_dir.clone()),
        ("policies", s.policies.to_string()),
        ("identities", s.identities.to_string()),
        ("bindings", s.bindings.to_string()),
        ("events", k.events.to_string()),
        ("events_dropped", dropped),
        ("aggregated", k.aggregated.to_string()),
        ("lost", lost),
        ("deny_exec", k.deny_exec.to_string()),
        ("deny_write", k.deny_write.to_string()),
        ("deny_egress", k.deny_egress.to_string()),
        ("deny_socket", k.deny_socket.to_string()),
        ("kills", k.kills.to_string()),
        ("unresolved", k.unresolved.to_string()),
    ]);
    out.push_str("\n\nmechanisms:\n");
    out.push_str(&mechanisms_text(&s.mechanisms, false));
    if let Some(r) = &s.receipts {
        out.push_str("\n\n");
        out.push_str(&receipts_text(r));
    }
    out
}

/// The journal's position, and per sink what it delivered and what it lost.
fn receipts_text(r: &pb::ReceiptsStatus) -> String {
    let behind = r.last_seq.saturating_sub(r.durable_seq);
    let mut out = format!(
        "receipts: {} (last seq {}, durable {}{}), key {}\n",
        r.dir,
        r.last_seq,
        r.durable_seq,
        if behind == 0 { String::new() } else { format!(", {behind} being written") },
        r.key_id
    );
    if !r.degraded.is_empty() {
        out.push_str(&format!(
            "receipts DEGRADED: cannot be written ({}); enforcement goes on; {} wait in memory, {} refused for a full backlog (recorded as gap receipts once writing works); retried every second\n",
            r.degraded, r.backlog, r.unrecorded
        ));
    } else if r.unrecorded > 0 {
        out.push_str(&format!("receipts refused while the journal could not be written: {} (recorded as gap receipts)\n", r.unrecorded));
    }
    if r.sinks.is_empty() {
        out.push_str("sinks: none configured (see `agentd --help`, CONFIGURATION)");
        return out;
    }
    out.push_str("sinks:\n");
    let width = r.sinks.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &r.sinks {
        out.push_str(&format!(
            "  {:<width$}  min {:<7}  delivered {}  dropped {}  failed attempts {}  queued {}",
            s.name, s.min_severity, s.delivered, s.dropped, s.failed_attempts, s.queued
        ));
        if !s.last_error.is_empty() {
            out.push_str(&format!("\n  {:<width$}  last error: {}", "", s.last_error));
        }
        out.push('\n');
    }
    out.trim_end().to_string()
}

/// Per action kind, the active mechanism and its effect; with `why`, also each
/// better mechanism that is not active and the reason.
fn mechanisms_text(mechanisms: &[pb::KindMechanism], why: bool) -> String {
    if mechanisms.is_empty() {
        return "  (none reported)".into();
    }
    let width = mechanisms.iter().map(|m| m.kind.len()).max().unwrap_or(0);
    let mut out = Vec::new();
    for m in mechanisms {
        let active = if m.active.is_empty() { "NOT ENFORCED".to_string() } else { m.active.clone() };
        let effect = match m.effect.as_str() {
            "deny" => "deny: the action fails with EPERM".to_string(),
            "kill" => "kill: the process is killed with SIGKILL".to_string(),
            "" => "none".to_string(),
            other => other.to_string(),
        };
        if m.active.is_empty() {
            out.push(format!("  {:<width$}  {active}", m.kind));
        } else {
            out.push(format!("  {:<width$}  {active}  ({effect})", m.kind));
        }
        if why {
            for u in &m.unavailable {
                out.push(format!("  {:<width$}    not used: {}: {}", "", u.mechanism, u.reason));
            }
        }
    }
    out.join("\n")
}

fn checks_text(checks: &[pb::Check]) -> String {
    checks
        .iter()
        .map(|c| {
            let mark = if c.ok { "✓" } else { "✗" };
            if c.detail.is_empty() {
                format!("  {mark} {}", c.name)
            } else {
                format!("  {mark} {}: {}", c.name, c.detail)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn doctor_text(d: &pb::DoctorReply) -> String {
    let mut out = format!("kernel {}\n", d.kernel_release);
    if !d.mechanisms.is_empty() {
        out.push_str("\nenforcement, per action kind:\n");
        out.push_str(&mechanisms_text(&d.mechanisms, true));
        out.push('\n');
    }
    out.push_str("\nchecks:\n");
    out.push_str(&checks_text(&d.checks));
    out
}

pub async fn doctor(socket: &Path, json: bool) -> Result<(), CliError> {
    let down = match Client::connect(socket).await {
        Ok(mut c) => match c.doctor().await {
            Ok(d) => {
                return if json { output::json(&d) } else { output::print(doctor_text(&d)) };
            }
            Err(e @ (CliError::NotRunning { .. } | CliError::StaleSocket { .. })) => e,
            Err(e) => return Err(e),
        },
        Err(e) => e,
    };
    // The daemon is down (or unreachable): report what can be checked from here,
    // then the reason, and fail.
    let mut report = local_checks();
    report.checks.push(pb::Check { name: "agentd reachable".into(), ok: false, detail: down.to_string() });
    if json {
        output::json(&report)?;
    } else {
        output::print(doctor_text(&report))?;
        output::print(
            "\n(the per-kind mechanism report comes from the daemon: it proves what works by loading programs)",
        )?;
    }
    Err(down)
}

/// The checks agentctl can make without the daemon.
fn local_checks() -> pb::DoctorReply {
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let mut checks = Vec::new();

    match cgroup::cgroup2_mount() {
        Ok(m) => checks.push(check("cgroup2 mount", true, m.display().to_string())),
        Err(e) => checks.push(check("cgroup2 mount", false, e.to_string())),
    }

    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let bpffs = mounts_of_type(&mountinfo, "bpf");
    let bpf_dir = Path::new("/sys/fs/bpf");
    if bpffs.iter().any(|m| m == bpf_dir) {
        checks.push(check("bpffs at /sys/fs/bpf", true, "mounted (pins survive the daemon)".into()));
    } else {
        checks.push(check(
            "bpffs at /sys/fs/bpf",
            false,
            "not mounted: `mount -t bpf bpf /sys/fs/bpf` (enforcement cannot outlive the daemon without it)".into(),
        ));
    }

    let btf = Path::new("/sys/kernel/btf/vmlinux");
    checks.push(if btf.exists() {
        check("kernel BTF", true, btf.display().to_string())
    } else {
        check("kernel BTF", false, "no /sys/kernel/btf/vmlinux (kernel built without CONFIG_DEBUG_INFO_BTF)".into())
    });

    checks.push(match std::fs::read_to_string("/sys/kernel/security/lsm") {
        Ok(list) => lsm_check(&list),
        Err(e) => check(
            "bpf in the active LSM list",
            false,
            format!(
                "cannot read /sys/kernel/security/lsm ({e}); as root: `mount -t securityfs securityfs /sys/kernel/security`"
            ),
        ),
    });

    pb::DoctorReply { kernel_release, mechanisms: Vec::new(), checks }
}

fn lsm_check(list: &str) -> pb::Check {
    let list = list.trim();
    if list.split(',').any(|m| m.trim() == "bpf") {
        check(
            "bpf in the active LSM list",
            true,
            format!("{list} (listed; whether BPF LSM programs load is only known by loading one: ask the daemon)"),
        )
    } else {
        check(
            "bpf in the active LSM list",
            false,
            format!("{list}: add `lsm=...,bpf` to the kernel command line for synchronous denies"),
        )
    }
}

fn check(name: &str, ok: bool, detail: String) -> pb::Check {
    pb::Check { name: name.into(), ok, detail }
}

/// Mount points of one filesystem type, from /proc/self/mountinfo text.
fn mounts_of_type(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            if post.split_whitespace().next()? != fstype {
                return None;
            }
            pre.split_whitespace().nth(4).map(|p| PathBuf::from(unescape_mount(p)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> pb::StatusReply {
        pb::StatusReply {
            version: "0.1.0".into(),
            uptime_seconds: 3725,
            pin_dir: "/sys/fs/bpf/agentd".into(),
            state_dir: "/var/lib/agentd".into(),
            adopted: true,
            identities: 2,
            policies: 3,
            bindings: 1,
            counters: Some(pb::Counters { events: 10, ..Default::default() }),
            mechanisms: vec![pb::KindMechanism {
                kind: "exec".into(),
                active: "tracepoint sys_enter_execve + bpf_send_signal".into(),
                effect: "kill".into(),
                unavailable: vec![pb::Unavailable {
                    mechanism: "BPF LSM bprm_check_security".into(),
                    reason: "BPF_PROG_LOAD refused (EPERM)".into(),
                }],
            }],
            receipts: None,
        }
    }

    #[test]
    fn status_shows_each_sinks_deliveries_and_losses() {
        let mut s = status();
        s.receipts = Some(pb::ReceiptsStatus {
            dir: "/var/lib/agentd/receipts".into(),
            last_seq: 12,
            durable_seq: 10,
            key_id: "sha256:0123".into(),
            ..Default::default()
        });
        s.receipts.as_mut().unwrap().sinks = vec![
                pb::SinkStatus { name: "jsonl:/var/log/r.jsonl".into(), min_severity: "info".into(), delivered: 10, ..Default::default() },
                pb::SinkStatus {
                    name: "hec:http://siem:8088/services/collector/event".into(),
                    min_severity: "warning".into(),
                    delivered: 3,
                    dropped: 2,
                    failed_attempts: 9,
                    queued: 1,
                    last_error: "connection refused".into(),
                },
            ];
        let text = status_text(&s);
        assert!(text.contains("receipts: /var/lib/agentd/receipts (last seq 12, durable 10, 2 being written), key sha256:0123"), "{text}");
        assert!(text.contains("jsonl:/var/log/r.jsonl                         min info     delivered 10  dropped 0"), "{text}");
        assert!(text.contains("delivered 3  dropped 2  failed attempts 9  queued 1"), "{text}");
        assert!(text.contains("last error: connection refused"), "{text}");
        assert!(!text.contains("DEGRADED"), "{text}");
        s.receipts.as_mut().unwrap().sinks.clear();
        assert!(status_text(&s).contains("sinks: none configured"));
    }

    #[test]
    fn status_says_when_receipts_cannot_be_written_and_what_waits() {
        let mut s = status();
        s.receipts = Some(pb::ReceiptsStatus {
            dir: "/var/lib/agentd/receipts".into(),
            degraded: "/var/lib/agentd/receipts/seg-000002.jsonl: No space left on device (os error 28)".into(),
            backlog: 120,
            unrecorded: 3,
            ..Default::default()
        });
        let text = status_text(&s);
        assert!(text.contains("receipts DEGRADED: cannot be written (/var/lib/agentd/receipts/seg-000002.jsonl: No space left on device (os error 28)); enforcement goes on; 120 wait in memory, 3 refused"), "{text}");
        s.receipts.as_mut().unwrap().degraded.clear();
        let text = status_text(&s);
        assert!(!text.contains("DEGRADED") && text.contains("receipts refused while the journal could not be written: 3 (recorded as gap receipts)"), "{text}");
    }

    #[test]
    fn status_always_shows_dropped_events() {
        let s = status_text(&status());
        assert!(s.lines().any(|l| l.starts_with("events_dropped:") && l.ends_with(" 0")), "{s}");
        assert!(s.contains("uptime:") && s.contains("1h 2m 5s"), "{s}");
        assert!(s.contains("adopted:        yes"), "{s}");
        assert!(
            s.contains(
                "exec  tracepoint sys_enter_execve + bpf_send_signal  (kill: the process is killed with SIGKILL)"
            ),
            "{s}"
        );
        let mut r = status();
        r.counters = None;
        assert!(status_text(&r).lines().any(|l| l.starts_with("events_dropped:")));
    }

    #[test]
    fn status_json_keeps_counters_even_when_zero() {
        let v = serde_json::to_value(status()).unwrap();
        assert_eq!(v["counters"]["events_dropped"], 0);
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "adopted",
                "bindings",
                "counters",
                "identities",
                "mechanisms",
                "pin_dir",
                "policies",
                "receipts",
                "state_dir",
                "uptime_seconds",
                "version"
            ]
        );
        assert_eq!(v["mechanisms"][0]["unavailable"][0]["reason"], "BPF_PROG_LOAD refused (EPERM)");
    }

    #[test]
    fn doctor_says_why_better_mechanisms_are_not_used() {
        let d = pb::DoctorReply {
            kernel_release: "6.18.0".into(),
            mechanisms: status().mechanisms,
            checks: vec![
                check("cgroup2 mount", true, "/sys/fs/cgroup/unified".into()),
                check("tracefs", false, String::new()),
            ],
        };
        let s = doctor_text(&d);
        assert!(s.starts_with("kernel 6.18.0\n"), "{s}");
        assert!(s.contains("not used: BPF LSM bprm_check_security: BPF_PROG_LOAD refused (EPERM)"), "{s}");
        assert!(s.contains("  ✓ cgroup2 mount: /sys/fs/cgroup/unified\n  ✗ tracefs"), "{s}");
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["checks"][0]["name"], "cgroup2 mount");
        assert_eq!(v["checks"][1]["ok"], false);
    }

    #[test]
    fn unenforced_kinds_are_loud() {
        let m = pb::KindMechanism { kind: "write".into(), ..Default::default() };
        assert_eq!(mechanisms_text(&[m], true), "  write  NOT ENFORCED");
    }

    #[test]
    fn bpffs_found_in_mountinfo() {
        let info = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
40 25 0:33 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:14 - bpf bpf rw,mode=700
41 25 0:34 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw
42 25 0:35 / /tmp/with\\040space rw - bpf bpf rw";
        assert_eq!(mounts_of_type(info, "bpf"), [PathBuf::from("/sys/fs/bpf"), PathBuf::from("/tmp/with space")]);
        assert!(mounts_of_type(info, "tracefs").is_empty());
    }

    #[test]
    fn lsm_list() {
        assert!(lsm_check("lockdown,capability,landlock,bpf\n").ok);
        assert!(!lsm_check("lockdown,capability,landlock").ok);
        assert!(!lsm_check("lockdown,bpfx").ok);
    }

    #[test]
    fn local_checks_cover_the_basics() {
        let r = local_checks();
        assert!(!r.kernel_release.is_empty());
        let names: Vec<_> = r.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["cgroup2 mount", "bpffs at /sys/fs/bpf", "kernel BTF", "bpf in the active LSM list"]);
    }
}
