//! cgroup v2 for agentd and agentctl: where the cgroup2 filesystem is mounted (read
//! from `/proc/self/mountinfo`, never assumed: hybrid hosts mount it at
//! `/sys/fs/cgroup/unified`), turning what a user typed into a cgroup directory, a
//! cgroup's id, and which cgroup a process is in.
//!
//! A cgroup's id, as the kernel's `bpf_get_current_cgroup_id` reports it, is the
//! inode number of its cgroup2 directory.
#![forbid(unsafe_code)]

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

/// systemd unit suffixes that name a cgroup directory.
const UNIT_SUFFIXES: [&str; 3] = [".service", ".scope", ".slice"];

/// How far below the mount a search for a unit name goes. Deeper than the kernel
/// follows bindings anyway, so nothing bindable is missed.
const SEARCH_DEPTH: usize = agent_common::MAX_CGROUP_DEPTH as usize + 1;

/// Errors finding or resolving cgroups. Each says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (none in /proc/self/mountinfo); agentd needs cgroup v2: boot with systemd.unified_cgroup_hierarchy=1, or mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`")]
    NoMount,
    #[error("{arg} is not a cgroup: no such directory under the cgroup2 mount {mount} (give an existing cgroup directory, a path relative to {mount}, or a systemd unit such as foo.service; `systemd-cgls` lists them)")]
    NotFound { arg: String, mount: PathBuf },
    #[error("{arg} is not a cgroup: {path} has no cgroup.procs (give a directory of the cgroup2 mount {mount})")]
    NotCgroup { arg: String, path: PathBuf, mount: PathBuf },
    #[error("{arg} is not a cgroup: it is outside the cgroup2 mount {mount} (cgroup v1 hierarchies cannot be bound; give a path under {mount})")]
    Outside { arg: String, mount: PathBuf },
    #[error("no cgroup named {unit} under {mount} (is the unit running? `systemctl status {unit}`)")]
    NoUnit { unit: String, mount: PathBuf },
    #[error("systemd unit {unit} matches several cgroups: {}; give the path of the one you mean", .candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous { unit: String, candidates: Vec<PathBuf> },
    #[error("{path}: no cgroup v2 (0::) line; is the process in a cgroup v1-only hierarchy?")]
    NoUnifiedLine { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.into();
    move |source| CgroupError::Io { path, source }
}

/// One line of `/proc/self/mountinfo`: where something is mounted and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    /// The filesystem type, e.g. `cgroup2`, `bpf`, `tracefs`.
    pub fs_type: String,
}

/// Parses mountinfo text (see proc(5)). Lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // "36 35 98:0 /root /mnt rw,noatime master:1 - ext3 /dev/root rw": the
            // optional fields before " - " vary in number, so split there first.
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            let fs_type = post.split(' ').next()?;
            Some(Mount { mount_point: PathBuf::from(unescape_octal(mount_point)), fs_type: fs_type.to_string() })
        })
        .collect()
}

/// Undoes the kernel's `\040`-style escaping of spaces, tabs, newlines and
/// backslashes in mountinfo paths.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount point in mountinfo text: the first `cgroup2` entry.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    parse_mountinfo(mountinfo).into_iter().find(|m| m.fs_type == "cgroup2").map(|m| m.mount_point)
}

/// Where the cgroup2 filesystem is mounted on this host.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let path = "/proc/self/mountinfo";
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    cgroup2_mount_in(&text).ok_or(CgroupError::NoMount)
}

/// Resolves what a user typed to a cgroup directory under the cgroup2 mount:
/// - an absolute path (must be under the mount),
/// - a path relative to the mount root (`system.slice/foo.service`),
/// - a systemd unit name (`foo.service`, `session-3.scope`, `user.slice`): the one
///   directory of that name in the tree, preferring `system.slice/NAME`.
///
/// The result is canonical (symlinks and `..` resolved).
pub fn resolve(arg: &str) -> Result<PathBuf, CgroupError> {
    resolve_in(&cgroup2_mount()?, arg)
}

/// [`resolve`] against a given mount point (for tests and callers that already know it).
pub fn resolve_in(mount: &Path, arg: &str) -> Result<PathBuf, CgroupError> {
    let arg = arg.trim();
    let path = Path::new(arg);
    let is_unit = !arg.contains('/') && UNIT_SUFFIXES.iter().any(|s| arg.len() > s.len() && arg.ends_with(s));
    let candidate = if path.is_absolute() { path.to_path_buf() } else { mount.join(path) };
    match fs::symlink_metadata(&candidate) {
        Ok(_) => return check_cgroup_dir(mount, arg, &candidate),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(candidate)(e)),
    }
    if path.is_absolute() && !lexically_within(path, mount) {
        return Err(CgroupError::Outside { arg: arg.into(), mount: mount.into() });
    }
    if !is_unit {
        return Err(CgroupError::NotFound { arg: arg.into(), mount: mount.into() });
    }
    let mut found = Vec::new();
    find_named(mount, arg, 0, &mut found);
    found.sort();
    match found.len() {
        0 => Err(CgroupError::NoUnit { unit: arg.into(), mount: mount.into() }),
        1 => Ok(found.remove(0)),
        _ => {
            // The system manager's own copy of a unit wins over a user manager's.
            let system = mount.join("system.slice").join(arg);
            if found.contains(&system) {
                Ok(system)
            } else {
                Err(CgroupError::Ambiguous { unit: arg.into(), candidates: found })
            }
        }
    }
}

/// Canonicalises `candidate` and checks it is a cgroup directory under `mount`.
fn check_cgroup_dir(mount: &Path, arg: &str, candidate: &Path) -> Result<PathBuf, CgroupError> {
    let real = fs::canonicalize(candidate).map_err(io_err(candidate))?;
    let real_mount = fs::canonicalize(mount).unwrap_or_else(|_| mount.to_path_buf());
    if !is_within(&real, &real_mount) {
        return Err(CgroupError::Outside { arg: arg.into(), mount: mount.into() });
    }
    if !real.join("cgroup.procs").is_file() {
        return Err(CgroupError::NotCgroup { arg: arg.into(), path: real, mount: mount.into() });
    }
    // Report paths under the mount as the user knows it, not a canonical alias of it.
    match real.strip_prefix(&real_mount) {
        Ok(rel) => Ok(mount.join(rel)),
        Err(_) => Ok(real),
    }
}

fn find_named(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > SEARCH_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        // cgroupfs has no symlinks; file_type() does not follow them anyway.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let p = entry.path();
        if entry.file_name() == name {
            out.push(p.clone());
        }
        find_named(&p, name, depth + 1, out);
    }
}

/// A cgroup's id: the inode number of its cgroup2 directory.
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    fs::metadata(path).map(|m| m.ino())
}

/// How many levels `path` is below `mount` (the mount itself is 0); `None` when it
/// is not under `mount`. Purely lexical.
pub fn depth_below(mount: &Path, path: &Path) -> Option<usize> {
    let rel = path.strip_prefix(mount).ok()?;
    Some(rel.components().filter(|c| matches!(c, Component::Normal(_))).count())
}

/// How many levels `path` is below the cgroup2 mount.
pub fn depth(path: &Path) -> Result<usize, CgroupError> {
    let mount = cgroup2_mount()?;
    depth_below(&mount, path)
        .ok_or_else(|| CgroupError::Outside { arg: path.display().to_string(), mount })
}

/// The cgroup v2 path (`/user.slice/...`, relative to the cgroup2 root) in the text
/// of `/proc/PID/cgroup`: its `0::` line.
pub fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim_end())
}

/// Joins a `/proc/PID/cgroup` path (absolute within the cgroup2 tree) to the mount.
pub fn join_mount(mount: &Path, cgroup: &str) -> PathBuf {
    let rel = cgroup.trim_start_matches('/');
    if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    }
}

/// The cgroup2 directory process `pid` is in now.
pub fn current_cgroup(pid: u32) -> Result<PathBuf, CgroupError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let cg = parse_proc_cgroup(&text).ok_or(CgroupError::NoUnifiedLine { path })?;
    Ok(join_mount(&cgroup2_mount()?, cg))
}

/// True when `child` is `ancestor` or below it (component-wise: `/a/bc` is not
/// within `/a/b`). Purely lexical: give canonical paths.
pub fn is_within(child: &Path, ancestor: &Path) -> bool {
    child.starts_with(ancestor)
}

/// Lexical `is_within` that also ignores `.` components and trailing slashes.
fn lexically_within(child: &Path, ancestor: &Path) -> bool {
    let norm = |p: &Path| p.components().filter(|c| !matches!(c, Component::CurDir)).collect::<PathBuf>();
    norm(child).starts_with(norm(ancestor))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
25 22 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
40 25 0:35 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:14 - bpf bpf rw,mode=700
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_host() {
        assert_eq!(cgroup2_mount_in(HYBRID), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert_eq!(cgroup2_mount_in("22 1 8:1 / / rw - ext4 /dev/vda1 rw\n"), None);
        assert_eq!(cgroup2_mount_in(""), None);
    }

    #[test]
    fn mountinfo_fields_and_escapes() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.len(), 6);
        assert!(m.contains(&Mount { mount_point: "/sys/fs/bpf".into(), fs_type: "bpf".into() }));
        // No optional fields, and a space in the mount point.
        let m = parse_mountinfo("50 22 0:40 / /mnt/my\\040cgroups rw - cgroup2 none rw\ngarbage\n");
        assert_eq!(m, vec![Mount { mount_point: "/mnt/my cgroups".into(), fs_type: "cgroup2".into() }]);
    }

    #[test]
    fn proc_cgroup_unified_line() {
        let t = "12:pids:/user.slice\n1:name=systemd:/user.slice/session-2.scope\n0::/user.slice/session-2.scope\n";
        assert_eq!(parse_proc_cgroup(t), Some("/user.slice/session-2.scope"));
        assert_eq!(parse_proc_cgroup("0::/\n"), Some("/"));
        assert_eq!(parse_proc_cgroup("3:cpu:/x\n"), None);
        let mount = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(join_mount(mount, "/"), mount);
        assert_eq!(join_mount(mount, "/a/b.scope"), mount.join("a/b.scope"));
    }

    #[test]
    fn depth_and_within() {
        let m = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(depth_below(m, m), Some(0));
        assert_eq!(depth_below(m, &m.join("system.slice/foo.service")), Some(2));
        assert_eq!(depth_below(m, Path::new("/tmp")), None);
        assert!(is_within(Path::new("/a/b/c"), Path::new("/a/b")));
        assert!(is_within(Path::new("/a/b"), Path::new("/a/b")));
        assert!(!is_within(Path::new("/a/bc"), Path::new("/a/b")));
    }

    /// A fake cgroup tree: directories with a `cgroup.procs` file.
    fn tree(dirs: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.procs"), "").unwrap();
        for d in dirs {
            let p = t.path().join(d);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("cgroup.procs"), "").unwrap();
        }
        t
    }

    #[test]
    fn resolves_absolute_relative_and_units() {
        let t = tree(&[
            "system.slice/web.service",
            "user.slice/user-1000.slice/user@1000.service/app.slice/web.service",
            "user.slice/user-1000.slice/user@1000.service/app.slice/only-user.service",
            "a.slice/dup.scope",
            "b.slice/dup.scope",
        ]);
        let m = fs::canonicalize(t.path()).unwrap();
        let abs = m.join("system.slice/web.service");
        assert_eq!(resolve_in(&m, abs.to_str().unwrap()).unwrap(), abs);
        assert_eq!(resolve_in(&m, "system.slice/web.service").unwrap(), abs);
        assert_eq!(resolve_in(&m, "./system.slice/../system.slice/web.service").unwrap(), abs);
        // Prefers the system manager's unit.
        assert_eq!(resolve_in(&m, "web.service").unwrap(), abs);
        assert!(resolve_in(&m, "only-user.service").unwrap().ends_with("app.slice/only-user.service"));
        let e = resolve_in(&m, "dup.scope").unwrap_err();
        assert!(matches!(&e, CgroupError::Ambiguous { candidates, .. } if candidates.len() == 2), "{e}");
        assert!(e.to_string().contains("give the path"), "{e}");
        let e = resolve_in(&m, "nope.service").unwrap_err();
        assert!(matches!(e, CgroupError::NoUnit { .. }), "{e}");
        let e = resolve_in(&m, "not/there").unwrap_err();
        assert!(e.to_string().contains("is not a cgroup: no such directory"), "{e}");
    }

    #[test]
    fn refuses_outside_and_non_cgroups() {
        let t = tree(&["system.slice"]);
        let m = fs::canonicalize(t.path()).unwrap();
        fs::create_dir(m.join("plain")).unwrap();
        fs::remove_file(m.join("plain").join("cgroup.procs")).ok();
        let e = resolve_in(&m, "plain").unwrap_err();
        assert!(matches!(e, CgroupError::NotCgroup { .. }), "{e}");
        let e = resolve_in(&m, "/etc").unwrap_err();
        assert!(matches!(e, CgroupError::Outside { .. }), "{e}");
        let e = resolve_in(&m, "/definitely/not/a/cgroup").unwrap_err();
        assert!(matches!(e, CgroupError::Outside { .. }), "{e}");
        assert!(e.to_string().contains("is not a cgroup: it is outside the cgroup2 mount"), "{e}");
        let e = resolve_in(&m, "system.slice/../..").unwrap_err();
        assert!(matches!(e, CgroupError::Outside { .. }), "{e}");
    }

    #[test]
    fn id_is_the_inode() {
        let t = tree(&["x"]);
        let p = t.path().join("x");
        assert_eq!(cgroup_id(&p).unwrap(), fs::metadata(&p).unwrap().ino());
    }
}
