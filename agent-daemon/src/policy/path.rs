//! Turning a path into the one the kernel sees.
//!
//! The kernel judges the real file: it rebuilds the path from dentries, so every
//! symlink is already resolved and there is no `.`, `..` or `//` left. Rules and the
//! paths given to the evaluator are brought to the same form here, through one
//! function, so that the compiler and the evaluator cannot disagree about a spelling.
//!
//! Resolution walks the path one component at a time like the kernel's lookup does:
//! an existing component is replaced by its canonical path (following a symlink),
//! `..` goes to the parent of what has been resolved so far, and from the first
//! component that does not exist on, the rest is kept lexically. So `/bin/newtool`
//! on a merged-/usr machine reads `/usr/bin/newtool` even before the file exists,
//! which is the path the kernel will see once it does.

use std::{
    ffi::OsStr,
    os::unix::ffi::{OsStrExt as _, OsStringExt as _},
    path::{Path, PathBuf},
};

/// Where real paths come from: the machine's filesystem, or a fake one in tests.
pub(crate) trait RealPaths {
    /// The canonical path of an existing file or directory, `None` if it does not
    /// exist (or cannot be resolved).
    fn canonicalize(&self, path: &Path) -> Option<PathBuf>;
    /// The (device, inode) of the regular file at `path`, symlinks followed, with
    /// the device in the kernel's own encoding (`MKDEV`: major << 20 | minor, what
    /// `super_block::s_dev` holds), `None` if it is not an existing regular file.
    fn file_id(&self, path: &Path) -> Option<FileId>;
}

/// A file's identity as the kernel's exec programs read it from `bprm->file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    pub dev: u32,
    pub ino: u64,
}

impl FileId {
    /// From `stat`'s `st_dev` (glibc's encoding) and `st_ino`.
    pub fn from_stat(st_dev: u64, st_ino: u64) -> FileId {
        let major = libc::major(st_dev) as u32;
        let minor = libc::minor(st_dev) as u32;
        FileId { dev: (major << 20) | (minor & 0xf_ffff), ino: st_ino }
    }
}

/// The filesystem of the machine this runs on.
pub(crate) struct FileSystem;

impl RealPaths for FileSystem {
    fn canonicalize(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }
    fn file_id(&self, path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok()?;
        m.is_file().then(|| FileId::from_stat(m.dev(), m.ino()))
    }
}

/// Resolves an absolute path (see the module comment). `None` for a relative path:
/// it never matches an absolute rule.
pub(crate) fn real_path(path: &[u8], fs: &dyn RealPaths) -> Option<Vec<u8>> {
    if !path.starts_with(b"/") {
        return None;
    }
    let mut cur: Vec<u8> = b"/".to_vec();
    let mut exists = true;
    for name in path.split(|&b| b == b'/') {
        match name {
            b"" | b"." => {}
            b".." => parent(&mut cur),
            name => {
                if cur.len() > 1 {
                    cur.push(b'/');
                }
                cur.extend_from_slice(name);
                if exists {
                    match fs.canonicalize(Path::new(OsStr::from_bytes(&cur))) {
                        Some(real) => cur = real.into_os_string().into_vec(),
                        None => exists = false,
                    }
                }
            }
        }
    }
    Some(cur)
}

/// `..` of a resolved path; `/..` is `/`, as in the kernel.
fn parent(cur: &mut Vec<u8>) {
    let cut = cur.iter().rposition(|&b| b == b'/').unwrap_or(0);
    cur.truncate(cut.max(1));
}

/// Lexical normalisation only (`.`, `..`, `//`; no filesystem): what `real_path`
/// gives on a machine without symlinks.
pub(crate) fn lexical(path: &[u8]) -> Option<String> {
    real_path(path, &NoFiles).map(|p| String::from_utf8_lossy(&p).into_owned())
}

/// A filesystem with no files at all: pure lexical normalisation.
pub(crate) struct NoFiles;

impl RealPaths for NoFiles {
    fn canonicalize(&self, _: &Path) -> Option<PathBuf> {
        None
    }
    fn file_id(&self, _: &Path) -> Option<FileId> {
        None
    }
}

/// A filesystem in which every path exists and some directories or files are
/// symlinks (`from` → `to`, both absolute and canonical), for pure tests.
#[cfg(test)]
pub(crate) struct FakeLinks(pub Vec<(&'static str, &'static str)>);

#[cfg(test)]
impl RealPaths for FakeLinks {
    fn canonicalize(&self, path: &Path) -> Option<PathBuf> {
        // Called with a path whose parent is already canonical, so only the path
        // itself can be a link.
        let p = path.as_os_str().as_bytes();
        for (from, to) in &self.0 {
            if p == from.as_bytes() {
                return Some(PathBuf::from(to));
            }
        }
        Some(path.to_path_buf())
    }
    fn file_id(&self, _: &Path) -> Option<FileId> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Option<String> {
        lexical(p.as_bytes())
    }

    #[test]
    fn lexical_normalisation() {
        assert_eq!(n("/usr//bin/./git").as_deref(), Some("/usr/bin/git"));
        assert_eq!(n("/home/alice/work/../.ssh/id_rsa").as_deref(), Some("/home/alice/.ssh/id_rsa"));
        assert_eq!(n("/../../etc/passwd").as_deref(), Some("/etc/passwd"));
        assert_eq!(n("/tmp/x/").as_deref(), Some("/tmp/x"));
        assert_eq!(n("/").as_deref(), Some("/"));
        assert_eq!(n("/a/..").as_deref(), Some("/"));
        assert_eq!(n("usr/bin/git"), None);
        assert_eq!(n("./x"), None);
        assert_eq!(n(""), None);
    }

    #[test]
    fn symlinks_resolve_like_the_kernel() {
        let fs = FakeLinks(vec![("/bin", "/usr/bin"), ("/usr/bin/sh", "/usr/bin/dash")]);
        let r = |p: &str| String::from_utf8(real_path(p.as_bytes(), &fs).unwrap()).unwrap();
        assert_eq!(r("/bin/sh"), "/usr/bin/dash");
        assert_eq!(r("/bin/git"), "/usr/bin/git");
        // `..` after a symlink goes to the link target's parent, as the kernel does.
        assert_eq!(r("/bin/../etc"), "/usr/etc");
    }

    #[test]
    fn real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(real.join("target")).unwrap();
        std::os::unix::fs::symlink(real.join("target"), real.join("link")).unwrap();
        let got = real_path(real.join("link/new/file").as_os_str().as_bytes(), &FileSystem).unwrap();
        assert_eq!(Path::new(OsStr::from_bytes(&got)), real.join("target/new/file"));
    }
}
