//! The host facts agentd depends on: the pseudo filesystems the kernel programs
//! need (bpffs for pins, tracefs for tracepoints, securityfs for the LSM list), and
//! the checks `agentctl doctor` shows.

use std::{fs, path::Path};

use nix::mount::{mount, MsFlags};
use tracing::{info, warn};

use crate::{api::pb, cgroup};

/// (filesystem type, where it belongs, why agentd needs it)
pub const PSEUDO_FS: [(&str, &str, &str); 3] = [
    ("bpf", "/sys/fs/bpf", "pinned programs and maps"),
    ("tracefs", "/sys/kernel/tracing", "tracepoint programs"),
    ("securityfs", "/sys/kernel/security", "the active LSM list"),
];

fn mounts() -> Vec<cgroup::Mount> {
    fs::read_to_string("/proc/self/mountinfo").map(|t| cgroup::parse_mountinfo(&t)).unwrap_or_default()
}

/// Whether a filesystem of `fs_type` is mounted at `target`.
pub fn is_mounted(fs_type: &str, target: &str) -> bool {
    mounts().iter().any(|m| m.fs_type == fs_type && m.mount_point == Path::new(target))
}

/// Whether `path` (or, if it does not exist yet, where it would be) is on a bpf
/// filesystem: the deepest mount point above it is a bpffs.
pub fn on_bpffs(path: &Path) -> bool {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    mounts()
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
        .is_some_and(|m| m.fs_type == "bpf")
}

/// Mounts each of [`PSEUDO_FS`] that is not mounted yet, and says so. A failure is
/// only logged: loading the programs is what proves whether enforcement works, and
/// it reports its own error.
pub fn mount_pseudo_filesystems() {
    for (fs_type, target, why) in PSEUDO_FS {
        if is_mounted(fs_type, target) {
            continue;
        }
        match mount(Some(fs_type), target, Some(fs_type), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None::<&str>) {
            Ok(()) => info!(fs_type, target, "mounted {fs_type} at {target} ({why})"),
            Err(e) => warn!(fs_type, target, error = %e, "could not mount {fs_type} at {target} ({why})"),
        }
    }
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> pb::Check {
    pb::Check { name: name.into(), ok, detail: detail.into() }
}

/// The facts `agentctl doctor` lists.
pub fn checks(pin_dir: &Path) -> Vec<pb::Check> {
    let cg = cgroup::cgroup2_mount();
    let all = mounts();
    let mounted = |t: &str, at: &str| all.iter().any(|m| m.fs_type == t && m.mount_point == Path::new(at));
    let pins_on_bpffs = on_bpffs(pin_dir);
    if !mounted("securityfs", "/sys/kernel/security") {
        mount_pseudo_filesystems();
    }
    let lsm = fs::read_to_string("/sys/kernel/security/lsm");
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    vec![
        match &cg {
            Ok(p) => check("cgroup2 mount", true, p.display().to_string()),
            Err(e) => check("cgroup2 mount", false, e.to_string()),
        },
        check(
            "bpffs mounted",
            mounted("bpf", "/sys/fs/bpf") && pins_on_bpffs,
            format!("pins in {}{}", pin_dir.display(), if pins_on_bpffs { "" } else { " (not on a bpf filesystem)" }),
        ),
        check(
            "kernel BTF",
            btf.is_file(),
            if btf.is_file() { "/sys/kernel/btf/vmlinux".to_string() } else { "/sys/kernel/btf/vmlinux missing: needs CONFIG_DEBUG_INFO_BTF=y".into() },
        ),
        match lsm {
            Ok(l) => check(
                "bpf in the active LSM list",
                l.trim().split(',').any(|m| m == "bpf"),
                format!("{} (a hint only: the mechanism report above is what loading programs proved)", l.trim()),
            ),
            Err(e) => check("bpf in the active LSM list", false, format!("/sys/kernel/security/lsm: {e}")),
        },
        check(
            "tracefs mounted",
            mounted("tracefs", "/sys/kernel/tracing"),
            "/sys/kernel/tracing (tracepoint programs need it)",
        ),
    ]
}
