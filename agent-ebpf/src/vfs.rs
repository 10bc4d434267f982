//! Rebuilding a file's absolute path, honestly, from the kernel's own objects.
//!
//! Decisions are made on the `struct file`/dentry the kernel is about to use, never
//! on a path string from user memory: symlinks are already resolved, relative paths
//! are already anchored, and nothing can change underneath us (Tetragon #1741,
//! KubeArmor #2319). Rust eBPF has no CO-RE, so field offsets come from the
//! `KERNEL_OFFSETS` map, which the daemon fills from the running kernel's BTF.
//!
//! The path is the file's path in the *reference* mount view (the host's initial
//! mount namespace), never the view of the mounts the task reached it through: the
//! walk follows `d_parent` up to the root of the file's own filesystem, ignoring
//! mounts entirely, and then `REF_MOUNTS` says where that part of that filesystem
//! is mounted in the reference view. A bind mount, a private mount namespace,
//! pivot_root or chroot changes what a task can *name*, not what this returns. A
//! file that is not reachable from its filesystem's root (a deleted file, a
//! disconnected dentry from `open_by_handle_at`) or on a filesystem the reference
//! view does not mount (memfd, a tmpfs mounted in a private namespace) has no
//! honest path: `Unresolved`, which every caller denies.
//!
//! Every resolved path is also looked up in `PROTECTED_PATHS` (agentd's state,
//! configuration and socket): `Resolved::protect` says what no bound task may do
//! to it, whatever its policy.

use agent_common::{KernelOffsets, PathKey, PATH_KEY_LEN};
use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user_str},
    },
    maps::lpm_trie::Key,
};
use core::ffi::c_void;

use crate::maps::{Scratch, GUARD, KERNEL_OFFSETS, PROTECTED_PATHS, REF_MOUNTS};

/// Deepest path (in components) the walk resolves; deeper paths fail closed.
pub const MAX_COMPONENTS: usize = 48;
/// Index mask for `Scratch::names`.
pub const NAMES_MASK: usize = 63;
const _: () = assert!(MAX_COMPONENTS <= NAMES_MASK + 1);
/// Walk steps.
const MAX_STEPS: usize = MAX_COMPONENTS + 1;

/// Why a path could not be resolved. Every variant fails closed.
#[derive(Clone, Copy)]
pub enum Unresolved {
    NoOffsets,
    Read,
    TooDeep,
    /// A relative path from user memory contained `.` or `..` components, which the
    /// kernel-side fallback cannot normalise safely.
    NotNormal,
    /// The walk did not end at its filesystem's root (a disconnected dentry).
    Detached,
    /// The file was deleted (an unhashed dentry).
    Deleted,
    /// The filesystem is not mounted in the reference view (or agentd has not
    /// told the kernel where it is yet).
    NoMount,
    /// A path string from a task whose mount namespace is not the reference one:
    /// what it names there is not what it names in the reference view.
    Foreign,
}

/// A resolved path in `Scratch::path[..len]`, NUL-terminated unless `truncated`.
#[derive(Clone, Copy)]
pub struct Resolved {
    pub len: usize,
    pub truncated: bool,
    /// `agent_common::protect` bits of the protected inodes on the way up.
    pub protect: u32,
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

#[inline(always)]
pub fn read_u16(addr: u64) -> Result<u16, Unresolved> {
    // SAFETY: as in read_u64.
    match unsafe { bpf_probe_read_kernel(addr as *const u16) } {
        Ok(v) => Ok(v),
        Err(_) => Err(Unresolved::Read),
    }
}

/// Resolves `struct path *` at kernel address `path` (its mount is ignored).
#[inline(always)]
pub fn resolve_path(s: &mut Scratch, o: &KernelOffsets, path: u64) -> Result<Resolved, Unresolved> {
    let dentry = read_u64(path + o.path_dentry as u64)?;
    resolve_dentry(s, o, dentry, true)
}

/// Resolves `struct file *` at kernel address `file`.
#[inline(always)]
pub fn resolve_file(s: &mut Scratch, o: &KernelOffsets, file: u64) -> Result<Resolved, Unresolved> {
    resolve_path(s, o, file + o.file_f_path as u64)
}

/// Resolves a dentry. `live`: the dentry names an existing file that must still
/// be linked in its directory (false for the new, negative dentry of a create).
#[inline(always)]
pub fn resolve_dentry(s: &mut Scratch, o: &KernelOffsets, dentry: u64, live: bool) -> Result<Resolved, Unresolved> {
    let dev = collect(s, o, dentry, live)?;
    let r = emit(s, 0);
    let r = translate(s, dev, r)?;
    Ok(with_protection(s, r))
}

/// The filesystem (`s_dev`) and its magic number of a dentry.
#[inline(always)]
pub fn dentry_fs(o: &KernelOffsets, dentry: u64) -> Result<(u32, u64), Unresolved> {
    let sb = read_u64(dentry + o.dentry_d_sb as u64)?;
    Ok((read_u32(sb + o.super_block_s_dev as u64)?, read_u64(sb + o.super_block_s_magic as u64)?))
}

/// Walks from `dentry` up to its filesystem's root, storing name pointers
/// leaf-first; the count goes to `s.depth`.
#[inline(always)]
fn collect(s: &mut Scratch, o: &KernelOffsets, dentry: u64, live: bool) -> Result<u32, Unresolved> {
    let sb = read_u64(dentry + o.dentry_d_sb as u64)?;
    let dev = read_u32(sb + o.super_block_s_dev as u64)?;
    let root = read_u64(sb + o.super_block_s_root as u64)?;
    if live && dentry != root {
        // d_unhashed(): an unlinked file (or one never linked, like O_TMPFILE).
        let pprev = read_u64(dentry + o.dentry_d_hash as u64 + 8)?;
        if pprev == 0 {
            return Err(Unresolved::Deleted);
        }
    }
    let mut dentry = dentry;
    set_depth(s, 0);
    let mut step = 0;
    while step < MAX_STEPS {
        step += 1;
        let parent = read_u64(dentry + o.dentry_d_parent as u64)?;
        if parent == dentry {
            if dentry != root {
                return Err(Unresolved::Detached);
            }
            return Ok(dev);
        }
        let n = depth(s);
        if n >= MAX_COMPONENTS {
            return Err(Unresolved::TooDeep);
        }
        let name = read_u64(dentry + o.dentry_d_name as u64 + o.qstr_name as u64)?;
        // The index goes through memory so that the mask survives: LLVM drops a
        // mask it can prove redundant (n < MAX_COMPONENTS), and 6.1's verifier
        // forgets the bound of a spilled register.
        let idx = launder(s, n as u64) as usize & NAMES_MASK;
        // SAFETY: the mask keeps the index inside the 64-entry array.
        unsafe { *s.names.as_mut_ptr().add(idx) = name };
        set_depth(s, n + 1);
        dentry = parent;
    }
    Err(Unresolved::TooDeep)
}

/// `r` with the `PROTECTED_PATHS` bits of the path in `s.path` (keyed like a
/// rule with rule set 0: `DIR/` covers what is below, `FILE\0` one file).
#[inline(always)]
pub fn with_protection(s: &mut Scratch, r: Resolved) -> Resolved {
    let bytes = if r.truncated { PATH_KEY_LEN } else { r.len + 1 };
    s.prefix_len = PathKey::prefix_bits(if bytes > PATH_KEY_LEN { PATH_KEY_LEN } else { bytes });
    s.ruleset = [0; 4];
    // SAFETY: Scratch starts with exactly the layout of Key<PathKey>.
    let key = unsafe { &*(s as *const Scratch as *const Key<PathKey>) };
    // SAFETY: the value is copied out at once.
    let protect = PROTECTED_PATHS.get(key).copied().unwrap_or(0);
    Resolved { protect, ..r }
}

/// Puts the reference view's mount point in front of the in-filesystem path in
/// `s.path[..r.len]` (see `agent_common::MountPrefix`).
#[inline(always)]
fn translate(s: &mut Scratch, dev: u32, r: Resolved) -> Result<Resolved, Unresolved> {
    // The key includes the terminating NUL when the path is whole, so that a
    // mount root's exact key (`R\0`) matches the root itself.
    let bytes = if r.truncated { PATH_KEY_LEN } else { r.len + 1 };
    s.prefix_len = PathKey::prefix_bits(if bytes > PATH_KEY_LEN { PATH_KEY_LEN } else { bytes });
    s.ruleset = dev.to_be_bytes();
    // SAFETY: Scratch starts with exactly the layout of Key<PathKey>.
    let key = unsafe { &*(s as *const Scratch as *const Key<PathKey>) };
    let Some(m) = REF_MOUNTS.get(key) else { return Err(Unresolved::NoMount) };
    let strip = m.strip as usize & 0xff;
    let plen = m.len as usize & 0xff;
    if strip == 0 && plen == 0 {
        return Ok(r);
    }
    let flen = if r.truncated { PATH_KEY_LEN } else { r.len };
    // The filesystem's root itself ("/") is just the mount point.
    let rest = if flen <= 1 || flen <= strip { 0 } else { flen - strip };
    // Through memory and masked: LLVM proves the bounds and drops a plain mask,
    // and the verifier, which tracks registers apart, cannot follow its proof.
    let rest = launder(s, rest as u64) as usize & 0xff;
    let plen = launder(s, plen as u64) as usize & 0xff;
    let strip = launder(s, strip as u64) as usize & 0xff;
    // SAFETY (all three): offsets and sizes are masked below 256, inside the
    // 512-byte path and the 256-byte tmp; the prefix is a map value of
    // MOUNT_PREFIX_LEN bytes, and `plen` came from it (agentd keeps it below).
    unsafe {
        let src = s.path.as_ptr().add(strip) as *const c_void;
        let _ = aya_ebpf::helpers::generated::bpf_probe_read_kernel(s.tmp.as_mut_ptr() as *mut c_void, rest as u32, src);
        let _ = aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            s.path.as_mut_ptr() as *mut c_void,
            plen as u32,
            m.prefix.as_ptr() as *const c_void,
        );
        let dst = s.path.as_mut_ptr().add(plen) as *mut c_void;
        let _ = aya_ebpf::helpers::generated::bpf_probe_read_kernel(dst, rest as u32, s.tmp.as_ptr() as *const c_void);
    }
    Ok(finish(s, plen + rest, r.truncated))
}

/// Whether the current task sees mounts as the reference view does: its mount
/// namespace is the reference one (agentd fills `GUARD`). Path strings of a task
/// elsewhere name other things.
#[inline(always)]
pub fn in_reference_view(o: &KernelOffsets) -> bool {
    let Some(g) = GUARD.get(0) else { return false };
    if g.ref_mnt_ns == 0 {
        return false;
    }
    current_mnt_ns(o) == Some(g.ref_mnt_ns)
}

/// The inode number of the current task's mount namespace.
#[inline(always)]
pub fn current_mnt_ns(o: &KernelOffsets) -> Option<u32> {
    // SAFETY: the current task pointer, only read through probe_read.
    let task = unsafe { bpf_get_current_task() };
    let ns = read_u64(task + o.task_nsproxy as u64).ok()?;
    if ns == 0 {
        return None;
    }
    let mnt_ns = read_u64(ns + o.nsproxy_mnt_ns as u64).ok()?;
    read_u32(mnt_ns + o.mnt_ns_inum as u64).ok()
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
        Resolved { len: PATH_KEY_LEN, truncated: true, protect: 0 }
    } else {
        s.path[pos & 0x1ff] = 0;
        Resolved { len: pos, truncated: false, protect: 0 }
    }
}

/// Resolves a path given as a user-memory string relative to `base` (a `struct
/// path *`, the cwd or a dirfd), for syscall-entry fallbacks where no kernel object
/// exists yet. Only for a task in the reference mount namespace: there an
/// absolute string names what it names in the reference view, and a relative
/// one is anchored at the base's honest path. Any `.`/`..` component or `//`
/// fails closed: normalising needs the dentry cache, which only the LSM hooks
/// have. (A symlink inside the string is followed by the kernel and not by this:
/// the fallback tier's known limit.)
#[inline(always)]
pub fn resolve_user(
    s: &mut Scratch,
    o: &KernelOffsets,
    user_path: u64,
    base: Option<u64>,
) -> Result<Resolved, Unresolved> {
    resolve_string(s, o, user_path, base, false)
}

/// [`resolve_user`] for a string in user memory or (`kernel`) the kernel's own
/// copy of one (`linux_binprm::filename`).
#[inline(always)]
pub fn resolve_string(
    s: &mut Scratch,
    o: &KernelOffsets,
    user_path: u64,
    base: Option<u64>,
    kernel: bool,
) -> Result<Resolved, Unresolved> {
    if !in_reference_view(o) {
        return Err(Unresolved::Foreign);
    }
    // Read the string first, at offset 0, to see whether it is absolute.
    let r = read_str(s.path.as_mut_ptr(), user_path, kernel);
    if r <= 0 {
        return Err(Unresolved::Read);
    }
    let ulen = (r as usize - 1) & 0xff;
    if s.path[0] != b'/' {
        let base = match base {
            Some(b) => b,
            None => return Err(Unresolved::Read),
        };
        let prefix = resolve_path(s, o, base)?;
        if prefix.truncated {
            return Ok(prefix);
        }
        let mut start = if prefix.len == 1 { 0 } else { prefix.len };
        let at = start & 0xff;
        s.path[at] = b'/';
        let at = (start + 1) & 0xff;
        // SAFETY: `at` < 256: 256 bytes from there fit the 512-byte buffer.
        let r = read_str(unsafe { s.path.as_mut_ptr().add(at) }, user_path, kernel);
        if r <= 0 {
            return Err(Unresolved::Read);
        }
        start += 1;
        let total = start + (r as usize - 1);
        check_normal(s, start, total, true)?;
        let total = without_trailing_slash(s, total);
        let r = finish(s, total, false);
        return Ok(with_protection(s, r));
    }
    check_normal(s, 0, ulen, false)?;
    let ulen = without_trailing_slash(s, ulen);
    let r = finish(s, ulen, false);
    Ok(with_protection(s, r))
}

/// `len` less a trailing `/` (`mkdir dir/` names `dir`, not something in it);
/// `check_normal` has refused `//`, so there is at most one.
#[inline(always)]
fn without_trailing_slash(s: &Scratch, len: usize) -> usize {
    if len > 1 && len <= PATH_KEY_LEN && s.path[(len - 1) & 0x1ff] == b'/' {
        len - 1
    } else {
        len
    }
}

/// Reads a NUL-terminated string of at most 256 bytes to `dst` (which must have
/// room for them) from user or kernel memory.
#[inline(always)]
fn read_str(dst: *mut u8, src: u64, kernel: bool) -> i64 {
    // SAFETY: the callers pass a destination with 256 bytes of room; the helpers
    // check the source address.
    unsafe {
        if kernel {
            bpf_probe_read_kernel_str(dst as *mut c_void, 256, src as *const c_void)
        } else {
            bpf_probe_read_user_str(dst as *mut c_void, 256, src as *const c_void)
        }
    }
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
