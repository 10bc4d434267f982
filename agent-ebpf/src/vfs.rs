//! Rebuilding a file's absolute path from the kernel's own objects.
//!
//! Decisions are made on the `struct file`/dentry the kernel is about to use, never
//! on a path string from user memory: symlinks are already resolved, relative paths
//! are already anchored, and nothing can change underneath us (Tetragon #1741,
//! KubeArmor #2319). Rust eBPF has no CO-RE, so field offsets come from the
//! `KERNEL_OFFSETS` map, which the daemon fills from the running kernel's BTF.
//!
//! The walk goes leaf → root collecting dentry names, crossing mount points through
//! `struct mount`, like the kernel's `prepend_path`; then it writes the components
//! root-first into the scratch buffer so the result is an LPM key as it stands.

use agent_common::{KernelOffsets, PATH_KEY_LEN};
use aya_ebpf::helpers::{
    bpf_probe_read_kernel,
    generated::{bpf_probe_read_kernel_str, bpf_probe_read_user_str},
};
use core::ffi::c_void;

use crate::maps::{Scratch, KERNEL_OFFSETS};

/// Deepest path (in components) the walk resolves; deeper paths fail closed.
pub const MAX_COMPONENTS: usize = 48;
/// Index mask for `Scratch::names`.
pub const NAMES_MASK: usize = 63;
const _: () = assert!(MAX_COMPONENTS <= NAMES_MASK + 1);
/// Walk steps: components plus mount crossings.
const MAX_STEPS: usize = MAX_COMPONENTS + 16;

/// Why a path could not be resolved. Every variant fails closed.
#[derive(Clone, Copy)]
pub enum Unresolved {
    NoOffsets,
    Read,
    TooDeep,
    /// A relative path from user memory contained `.` or `..` components, which the
    /// kernel-side fallback cannot normalise safely.
    NotNormal,
}

/// A resolved path in `Scratch::path[..len]`, NUL-terminated unless `truncated`.
#[derive(Clone, Copy)]
pub struct Resolved {
    pub len: usize,
    pub truncated: bool,
}

#[inline(always)]
pub fn offsets() -> Result<&'static KernelOffsets, Unresolved> {
    match KERNEL_OFFSETS.get(0) {
        Some(o) if o.valid != 0 => Ok(o),
        _ => Err(Unresolved::NoOffsets),
    }
}

#[inline(always)]
pub fn read_u64(addr: u64) -> Result<u64, Unresolved> {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault returns an error.
    match unsafe { bpf_probe_read_kernel(addr as *const u64) } {
        Ok(v) => Ok(v),
        Err(_) => Err(Unresolved::Read),
    }
}

#[inline(always)]
pub fn read_u32(addr: u64) -> Result<u32, Unresolved> {
    // SAFETY: as in read_u64.
    match unsafe { bpf_probe_read_kernel(addr as *const u32) } {
        Ok(v) => Ok(v),
        Err(_) => Err(Unresolved::Read),
    }
}

/// Resolves `struct path *` at kernel address `path`.
#[inline(always)]
pub fn resolve_path(s: &mut Scratch, o: &KernelOffsets, path: u64) -> Result<Resolved, Unresolved> {
    let mnt = read_u64(path + o.path_mnt as u64)?;
    let dentry = read_u64(path + o.path_dentry as u64)?;
    resolve_dentry(s, o, dentry, mnt)
}

/// Resolves `struct file *` at kernel address `file`.
#[inline(always)]
pub fn resolve_file(s: &mut Scratch, o: &KernelOffsets, file: u64) -> Result<Resolved, Unresolved> {
    resolve_path(s, o, file + o.file_f_path as u64)
}

/// Resolves a dentry seen through the mount `vfsmnt` (a `struct vfsmount *`).
#[inline(always)]
pub fn resolve_dentry(
    s: &mut Scratch,
    o: &KernelOffsets,
    dentry: u64,
    vfsmnt: u64,
) -> Result<Resolved, Unresolved> {
    collect(s, o, dentry, vfsmnt)?;
    Ok(emit(s, 0))
}

/// Walks from `dentry` up to the root, storing name pointers leaf-first; the count
/// goes to `s.depth`.
#[inline(always)]
fn collect(s: &mut Scratch, o: &KernelOffsets, dentry: u64, vfsmnt: u64) -> Result<(), Unresolved> {
    let mut dentry = dentry;
    let mut vfsmnt = vfsmnt;
    let mut mnt = vfsmnt.wrapping_sub(o.mount_mnt as u64);
    set_depth(s, 0);
    let mut step = 0;
    while step < MAX_STEPS {
        step += 1;
        let mnt_root = read_u64(vfsmnt + o.vfsmount_mnt_root as u64)?;
        if dentry == mnt_root {
            let parent = read_u64(mnt + o.mount_mnt_parent as u64)?;
            if parent == mnt {
                return Ok(());
            }
            dentry = read_u64(mnt + o.mount_mnt_mountpoint as u64)?;
            mnt = parent;
            vfsmnt = mnt + o.mount_mnt as u64;
            continue;
        }
        let parent = read_u64(dentry + o.dentry_d_parent as u64)?;
        if parent == dentry {
            // The root of a filesystem that is not mounted in our tree (pipefs,
            // a detached mount): its path is what we have.
            return Ok(());
        }
        let n = depth(s);
        if n >= MAX_COMPONENTS {
            return Err(Unresolved::TooDeep);
        }
        let name = read_u64(dentry + o.dentry_d_name as u64 + o.qstr_name as u64)?;
        // SAFETY: the mask keeps the index inside the 64-entry array.
        unsafe { *s.names.as_mut_ptr().add(n & NAMES_MASK) = name };
        set_depth(s, n + 1);
        dentry = parent;
    }
    Err(Unresolved::TooDeep)
}

/// Returns `v` through memory, as a value the verifier cannot see through.
#[inline(always)]
pub fn launder(s: &mut Scratch, v: u64) -> u64 {
    // SAFETY: in-bounds field of the live per-CPU scratch value.
    unsafe {
        core::ptr::write_volatile(&mut s.opaque[5], v);
        core::ptr::read_volatile(&s.opaque[5])
    }
}

#[inline(always)]
fn depth(s: &Scratch) -> usize {
    // SAFETY: reads a field of a live, aligned per-CPU map value.
    unsafe { core::ptr::read_volatile(&s.depth) as usize }
}

#[inline(always)]
fn set_depth(s: &mut Scratch, n: usize) {
    // SAFETY: writes a field of a live, aligned per-CPU map value.
    unsafe { core::ptr::write_volatile(&mut s.depth, n as u64) }
}

/// Writes `/name` for each collected component, root first, starting at byte
/// `start` of the scratch path. Components past `PATH_KEY_LEN` mark the result
/// truncated; prefix rules still match the part that fits.
#[inline(always)]
fn emit(s: &mut Scratch, start: usize) -> Resolved {
    let n = depth(s);
    let mut pos = start;
    let mut truncated = false;
    let mut i = 0;
    while i < MAX_COMPONENTS {
        if i >= n {
            break;
        }
        if pos >= PATH_KEY_LEN {
            truncated = true;
            break;
        }
        let idx = n - 1 - i;
        // SAFETY: the mask keeps the index inside the 64-entry array.
        let name = unsafe { *s.names.as_ptr().add(idx & NAMES_MASK) };
        let at = pos & 0xff;
        s.path[at] = b'/';
        let at = (pos + 1) & 0xff;
        // SAFETY: `at` < 256 and the read is at most 256 bytes into a 512-byte buffer.
        let r = unsafe {
            bpf_probe_read_kernel_str(s.path.as_mut_ptr().add(at) as *mut c_void, 256, name as *const c_void)
        };
        if r <= 0 {
            truncated = true;
            break;
        }
        pos = pos + 1 + (r as usize - 1);
        i += 1;
    }
    if n == 0 && start == 0 {
        s.path[0] = b'/';
        pos = 1;
    }
    finish(s, pos, truncated)
}

#[inline(always)]
fn finish(s: &mut Scratch, pos: usize, truncated: bool) -> Resolved {
    // Each early exit of the loops above reaches here with its own value ranges;
    // laundered through memory they become one state and the verifier prunes.
    let pos = launder(s, pos as u64) as usize;
    let truncated = launder(s, truncated as u64) != 0;
    if truncated || pos >= PATH_KEY_LEN {
        Resolved { len: PATH_KEY_LEN, truncated: true }
    } else {
        s.path[pos & 0x1ff] = 0;
        Resolved { len: pos, truncated: false }
    }
}

/// Resolves a path given as a user-memory string relative to `base` (a `struct
/// path *`, the cwd or a dirfd), for syscall-entry fallbacks where no kernel object
/// exists yet. Absolute strings are taken as they are. Any `.`/`..` component or
/// `//` fails closed: normalising needs the dentry cache, which only the LSM hooks
/// have.
#[inline(always)]
pub fn resolve_user(
    s: &mut Scratch,
    o: &KernelOffsets,
    user_path: u64,
    base: Option<u64>,
) -> Result<Resolved, Unresolved> {
    // Read the string first, at offset 0, to see whether it is absolute.
    // SAFETY: 256 bytes into the 512-byte scratch buffer at offset 0.
    let r = unsafe { bpf_probe_read_user_str(s.path.as_mut_ptr() as *mut c_void, 256, user_path as *const c_void) };
    if r <= 0 {
        return Err(Unresolved::Read);
    }
    let ulen = (r as usize - 1) & 0xff;
    if s.path[0] != b'/' {
        let base = match base {
            Some(b) => b,
            None => return Err(Unresolved::Read),
        };
        let mnt = read_u64(base + o.path_mnt as u64)?;
        let dentry = read_u64(base + o.path_dentry as u64)?;
        collect(s, o, dentry, mnt)?;
        let prefix = emit(s, 0);
        if prefix.truncated {
            return Ok(prefix);
        }
        let mut start = if prefix.len == 1 { 0 } else { prefix.len };
        let at = start & 0xff;
        s.path[at] = b'/';
        let at = (start + 1) & 0xff;
        // SAFETY: `at` < 256, read ≤ 256 bytes into the 512-byte buffer.
        let r = unsafe {
            bpf_probe_read_user_str(s.path.as_mut_ptr().add(at) as *mut c_void, 256, user_path as *const c_void)
        };
        if r <= 0 {
            return Err(Unresolved::Read);
        }
        start += 1;
        let total = start + (r as usize - 1);
        check_normal(s, start, total, true)?;
        return Ok(finish(s, total, false));
    }
    check_normal(s, 0, ulen, false)?;
    Ok(finish(s, ulen, false))
}

/// Rejects `.`/`..` components and empty components in `path[from..to]`.
///
/// A four-state machine (few distinct values keep the verifier's state count
/// small): 0 = at the start of a component, 1 = `.`, 2 = `..`, 3 = inside a name.
/// `relative` says whether `from` starts a component (relative) or a `/` (absolute).
#[inline(always)]
fn check_normal(s: &Scratch, from: usize, to: usize, relative: bool) -> Result<(), Unresolved> {
    let mut state: u8 = if relative { 0 } else { 3 };
    let mut i = from;
    let mut guard = 0;
    while guard < PATH_KEY_LEN {
        guard += 1;
        if i >= to || i >= PATH_KEY_LEN {
            break;
        }
        let c = s.path[i & 0x1ff];
        state = match (c, state) {
            (b'/', 0..=2) => return Err(Unresolved::NotNormal),
            (b'/', _) => 0,
            (b'.', 0) => 1,
            (b'.', 1) => 2,
            _ => 3,
        };
        i += 1;
    }
    if state == 1 || state == 2 {
        return Err(Unresolved::NotNormal);
    }
    Ok(())
}
