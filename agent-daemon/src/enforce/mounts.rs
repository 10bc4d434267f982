//! The reference mount view, as the kernel programs need it.
//!
//! The kernel builds a file's path from its own filesystem's root (never through
//! the mounts a task reached it by), so it must be told where each part of each
//! filesystem is mounted in the *reference* view: the host's initial mount
//! namespace, whose table is `/proc/1/mountinfo` (agentd itself may run in a
//! private mount namespace of its service manager). Each entry says: on device
//! `dev`, paths under `root` read as `mount_point` + the rest.
//!
//! Where one filesystem is mounted several times, the entry that covers a path
//! first (the shortest root, then the earliest mount) names it: a bind mount of
//! `/usr` at `/mnt/usr` does not rename `/usr/bin/git`.

use std::collections::BTreeMap;

use agent_common::{MountPrefix, MOUNT_PREFIX_LEN, PATH_KEY_LEN};

/// One mount of the reference view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefMount {
    /// The kernel's `s_dev` encoding (major << 20 | minor).
    pub dev: u32,
    /// The mount's root inside its filesystem (`/` for the whole filesystem).
    pub root: Vec<u8>,
    pub mount_point: Vec<u8>,
}

/// Parses `/proc/PID/mountinfo` (see proc(5)). Lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<RefMount> {
    text.lines()
        .filter_map(|line| {
            // "36 35 98:0 /root /mnt rw,noatime master:1 - ext3 /dev/root rw"
            let (pre, _) = line.split_once(" - ")?;
            let mut f = pre.split(' ');
            let (_id, _parent, devno, root, mount_point) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let (major, minor) = devno.split_once(':')?;
            let (major, minor): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
            Some(RefMount { dev: (major << 20) | minor, root: unescape(root), mount_point: unescape(mount_point) })
        })
        .collect()
}

/// Undoes mountinfo's `\040`-style escaping, byte for byte.
fn unescape(s: &str) -> Vec<u8> {
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
    out
}

/// One `REF_MOUNTS` entry: the key's device and path bytes (`ROOT/` covering
/// what is below a mount root, or `ROOT\0` for the root itself), and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub dev: u32,
    pub key: Vec<u8>,
    pub value: MountPrefix,
}

/// The `REF_MOUNTS` entries for a reference mount table. Mount points longer
/// than the kernel carries are left out: paths there are unresolved (denied).
pub fn entries(mounts: &[RefMount]) -> Vec<Entry> {
    // Per device, the roots that name paths: shortest first, and a root inside one
    // already taken adds nothing (those files already have a name).
    let mut by_dev: BTreeMap<u32, Vec<(usize, &RefMount)>> = BTreeMap::new();
    for (i, m) in mounts.iter().enumerate() {
        by_dev.entry(m.dev).or_default().push((i, m));
    }
    let mut out = Vec::new();
    for (dev, mut ms) in by_dev {
        ms.sort_by_key(|(i, m)| (m.root.len(), *i));
        let mut taken: Vec<&[u8]> = Vec::new();
        for (_, m) in ms {
            if taken.iter().any(|t| within(&m.root, t)) {
                continue;
            }
            let prefix: &[u8] = if m.mount_point == b"/" { b"" } else { &m.mount_point };
            if prefix.len() > MOUNT_PREFIX_LEN {
                continue;
            }
            let root: &[u8] = if m.root == b"/" { b"" } else { &m.root };
            let mut value = MountPrefix { strip: root.len() as u16, len: prefix.len() as u16, ..MountPrefix::default() };
            value.prefix[..prefix.len()].copy_from_slice(prefix);
            let below = [root, b"/"].concat();
            if below.len() <= PATH_KEY_LEN {
                out.push(Entry { dev, key: below, value });
                if !root.is_empty() {
                    out.push(Entry { dev, key: [root, b"\0"].concat(), value });
                }
            }
            taken.push(&m.root);
        }
    }
    out
}

/// Whether `path` is `dir` or below it (component-wise).
fn within(path: &[u8], dir: &[u8]) -> bool {
    dir == b"/" || path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

/// How `path` (in the reference view) reads, for tests and `doctor`: the
/// translation the kernel makes, applied to an in-filesystem path.
pub fn translate(entries: &[Entry], dev: u32, in_fs: &[u8]) -> Option<Vec<u8>> {
    let mut best: Option<&Entry> = None;
    for e in entries.iter().filter(|e| e.dev == dev) {
        let matches = if e.key.ends_with(b"\0") {
            in_fs == &e.key[..e.key.len() - 1]
        } else {
            in_fs.starts_with(&e.key) || (e.key == b"/" && in_fs == b"/")
        };
        if matches && best.is_none_or(|b| e.key.len() > b.key.len()) {
            best = Some(e);
        }
    }
    let e = best?;
    let prefix = &e.value.prefix[..e.value.len as usize];
    let rest: &[u8] = if in_fs == b"/" { b"" } else { in_fs.get(e.value.strip as usize..).unwrap_or(b"") };
    let mut out = [prefix, rest].concat();
    if out.is_empty() {
        out.push(b'/');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
23 22 0:21 / /tmp rw - tmpfs tmpfs rw
24 22 254:0 /usr /mnt/usr rw - ext4 /dev/vda rw
25 22 0:30 /@home /home rw - btrfs /dev/sdb rw,subvol=/@home
26 22 0:30 /@ /srv/root rw - btrfs /dev/sdb rw,subvol=/@
27 22 0:40 /data /mnt/my\\040data rw - ext4 /dev/sdc rw
";

    fn e() -> Vec<Entry> {
        entries(&parse(TABLE))
    }

    #[test]
    fn the_root_filesystem_keeps_its_paths() {
        assert_eq!(translate(&e(), 254 << 20, b"/usr/bin/git").unwrap(), b"/usr/bin/git");
        assert_eq!(translate(&e(), 254 << 20, b"/").unwrap(), b"/");
    }

    #[test]
    fn a_bind_mount_does_not_rename_what_already_has_a_name() {
        // /usr is bind-mounted at /mnt/usr too; /usr/bin/git stays /usr/bin/git.
        assert!(e().iter().all(|x| !(x.dev == 254 << 20 && x.key.starts_with(b"/usr"))));
    }

    #[test]
    fn a_filesystem_mounted_elsewhere_gets_its_mount_point() {
        assert_eq!(translate(&e(), 21, b"/x/y").unwrap(), b"/tmp/x/y");
        assert_eq!(translate(&e(), 21, b"/").unwrap(), b"/tmp");
    }

    #[test]
    fn subtree_mounts_strip_their_root() {
        assert_eq!(translate(&e(), 30, b"/@home/alice/f").unwrap(), b"/home/alice/f");
        assert_eq!(translate(&e(), 30, b"/@home").unwrap(), b"/home");
        assert_eq!(translate(&e(), 30, b"/@/etc").unwrap(), b"/srv/root/etc");
        // Not below any mounted root: no name in the reference view.
        assert_eq!(translate(&e(), 30, b"/@snapshots/x"), None);
        assert_eq!(translate(&e(), 30, b"/@homework"), None);
        assert_eq!(translate(&e(), 40, b"/data/f").unwrap(), b"/mnt/my data/f");
    }

    #[test]
    fn unknown_filesystems_have_no_name() {
        assert_eq!(translate(&e(), 99, b"/x"), None);
    }
}
