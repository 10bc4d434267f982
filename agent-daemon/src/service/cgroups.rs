//! Finding and naming cgroups: the cgroup2 mount (read from mountinfo, never
//! assumed), resolving what a user typed to a cgroup directory, a process's cgroup.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Errors resolving cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (see /proc/self/mountinfo); agentd needs cgroup v2")]
    NoMount,
    #[error("{0} is not a cgroup: no such directory under the cgroup2 mount {1} (create it, or name a systemd unit like foo.service)")]
    NotFound(String, String),
    #[error("{0} is outside the cgroup2 mount {1}")]
    Outside(String, String),
    #[error("systemd unit {0} matches several cgroups: {1}; give the path instead")]
    Ambiguous(String, String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// The cgroup2 mount point from mountinfo text.
pub fn parse_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| CgroupError::Io { path: "/proc/self/mountinfo".into(), source })?;
    parse_mountinfo(&info).ok_or(CgroupError::NoMount)
}

/// Resolves an absolute cgroup path, a path relative to the cgroup2 mount, or a
/// systemd unit name (`*.service`, `*.scope`, `*.slice`) to a cgroup directory.
pub fn resolve(arg: &str) -> Result<PathBuf, CgroupError> {
    let mount = cgroup2_mount()?;
    let is_cgroup = |p: &Path| p.join("cgroup.procs").is_file();
    let candidate = if Path::new(arg).is_absolute() { PathBuf::from(arg) } else { mount.join(arg.trim_start_matches("./")) };
    if is_cgroup(&candidate) {
        let real = fs::canonicalize(&candidate).map_err(|source| CgroupError::Io { path: arg.into(), source })?;
        if !real.starts_with(&mount) {
            return Err(CgroupError::Outside(arg.into(), mount.display().to_string()));
        }
        return Ok(real);
    }
    let unit = [".service", ".scope", ".slice"].iter().any(|s| arg.ends_with(s)) && !arg.contains('/');
    if unit {
        let mut found = Vec::new();
        find_named(&mount, arg, 0, &mut found);
        return match found.len() {
            0 => Err(CgroupError::NotFound(arg.into(), mount.display().to_string())),
            1 => Ok(found.remove(0)),
            _ => {
                if let Some(p) = found.iter().find(|p| p.parent().map(|d| d.ends_with("system.slice")).unwrap_or(false)) {
                    return Ok(p.clone());
                }
                Err(CgroupError::Ambiguous(arg.into(), found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")))
            }
        };
    }
    Err(CgroupError::NotFound(arg.into(), mount.display().to_string()))
}

fn find_named(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if e.file_name() == name {
                out.push(p.clone());
            }
            find_named(&p, name, depth + 1, out);
        }
    }
}

/// A cgroup's id: the inode number of its directory.
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    fs::metadata(path).map(|m| m.ino())
}

/// The `0::/path` line of /proc/PID/cgroup text.
pub fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// The cgroup2 directory of process `pid`.
pub fn current_cgroup(pid: u32) -> Result<PathBuf, CgroupError> {
    let path = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&path).map_err(|source| CgroupError::Io { path: path.clone(), source })?;
    let rel = parse_proc_cgroup(&text).ok_or(CgroupError::NoMount)?;
    Ok(cgroup2_mount()?.join(rel.trim_start_matches('/')))
}

/// Depth of `path` below the mount (the mount itself is 0).
pub fn depth(mount: &Path, path: &Path) -> usize {
    path.strip_prefix(mount).map(|r| r.components().count()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let info = "35 25 0:30 / /sys/fs/cgroup rw - tmpfs tmpfs ro\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(info), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(parse_mountinfo("1 2 3:4 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn reads_the_unified_line_of_proc_cgroup() {
        let t = "12:cpu:/x\n0::/user.slice/session-1.scope\n";
        assert_eq!(parse_proc_cgroup(t).as_deref(), Some("/user.slice/session-1.scope"));
    }

    #[test]
    fn depth_counts_components() {
        assert_eq!(depth(Path::new("/m"), Path::new("/m/a/b")), 2);
        assert_eq!(depth(Path::new("/m"), Path::new("/m")), 0);
    }
}
