//! Reading kernel struct offsets from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the programs walk `struct file`,
//! dentries and mounts with offsets handed to them in the `KERNEL_OFFSETS` map.
//! They come from `/sys/kernel/btf/vmlinux`, so one build runs on any kernel
//! with BTF; a field this code cannot find is an error at start-up, never a guess.

use std::path::Path;

use agent_common::KernelOffsets;
use btf_rs::{Btf, Type};

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF from {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Open { path: String, source: btf_rs::Error },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no field {field}")]
    NoField { strukt: String, field: String },
    #[error("kernel BTF: {0}")]
    Other(String),
}

/// Reads every offset the programs need from the BTF file at `path`.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, BtfError> {
    let btf = Btf::from_file(path)
        .map_err(|source| BtfError::Open { path: path.display().to_string(), source })?;
    let f = |s: &str, field: &str| field_offset(&btf, s, field);
    Ok(KernelOffsets {
        valid: 1,
        file_f_path: f("file", "f_path")?,
        file_f_mode: f("file", "f_mode")?,
        path_mnt: f("path", "mnt")?,
        path_dentry: f("path", "dentry")?,
        dentry_d_parent: f("dentry", "d_parent")?,
        dentry_d_name: f("dentry", "d_name")?,
        qstr_len: f("qstr", "len")?,
        qstr_name: f("qstr", "name")?,
        mount_mnt: f("mount", "mnt")?,
        mount_mnt_parent: f("mount", "mnt_parent")?,
        mount_mnt_mountpoint: f("mount", "mnt_mountpoint")?,
        vfsmount_mnt_root: f("vfsmount", "mnt_root")?,
        binprm_file: f("linux_binprm", "file")?,
        task_fs: f("task_struct", "fs")?,
        fs_struct_pwd: f("fs_struct", "pwd")?,
        task_files: f("task_struct", "files")?,
        files_struct_fdt: f("files_struct", "fdt")?,
        fdtable_max_fds: f("fdtable", "max_fds")?,
        fdtable_fd: f("fdtable", "fd")?,
        socket_type: f("socket", "type")?,
        // Absent when the kernel has no BPF LSM; then the hook is never loaded.
        path_rename_nargs: func_nargs(&btf, "bpf_lsm_path_rename").unwrap_or(5),
        task_ti_status: f("task_struct", "thread_info")? + f("thread_info", "status")?,
        file_f_inode: f("file", "f_inode")?,
        inode_i_ino: f("inode", "i_ino")?,
        inode_i_sb: f("inode", "i_sb")?,
        super_block_s_dev: f("super_block", "s_dev")?,
        dentry_d_inode: f("dentry", "d_inode")?,
        dentry_d_sb: f("dentry", "d_sb")?,
        dentry_d_hash: f("dentry", "d_hash")?,
        super_block_s_root: f("super_block", "s_root")?,
        super_block_s_magic: f("super_block", "s_magic")?,
        inode_i_mode: f("inode", "i_mode")?,
        inode_i_rdev: f("inode", "i_rdev")?,
        task_tgid: f("task_struct", "tgid")?,
        task_signal: f("task_struct", "signal")?,
        signal_live: f("signal_struct", "live")?,
        task_nsproxy: f("task_struct", "nsproxy")?,
        nsproxy_mnt_ns: f("nsproxy", "mnt_ns")?,
        mnt_ns_inum: f("mnt_namespace", "ns")? + f("ns_common", "inum")?,
        fs_struct_root: f("fs_struct", "root")?,
        cgroup_kn: f("cgroup", "kn")?,
        kernfs_node_id: f("kernfs_node", "id")?,
        cgroup_parent: f("cgroup", "self")? + f("cgroup_subsys_state", "parent")?,
        file_private_data: f("file", "private_data")?,
        vm_area_vm_file: f("vm_area_struct", "vm_file")?,
        pid_nr: f("pid", "numbers")? + f("upid", "nr")?,
        socket_sk: f("socket", "sk")?,
        sock_sk_protocol: f("sock", "sk_protocol")?,
        unix_sock_path: f("unix_sock", "path")?,
        unix_sock_peer: f("unix_sock", "peer")?,
        unix_sock_addr: f("unix_sock", "addr")?,
        unix_address_name: f("unix_address", "name")?,
        iattr_ia_valid: f("iattr", "ia_valid")?,
        inode_setxattr_nargs: func_nargs(&btf, "bpf_lsm_inode_setxattr").unwrap_or(6),
        inode_removexattr_nargs: func_nargs(&btf, "bpf_lsm_inode_removexattr").unwrap_or(3),
        inode_setattr_nargs: func_nargs(&btf, "bpf_lsm_inode_setattr").unwrap_or(2),
        task_mm: f("task_struct", "mm")?,
        mm_exe_file: f("mm_struct", "exe_file")?,
        sock_family: f("sock_common", "skc_family")?,
        msghdr_msg_name: f("msghdr", "msg_name")?,
        binprm_filename: f("linux_binprm", "filename")?,
        binprm_interp: f("linux_binprm", "interp")?,
        proc_inode_pid: f("proc_inode", "pid")?,
        proc_inode_vfs_inode: f("proc_inode", "vfs_inode")?,
        inode_i_nlink: f("inode", "i_nlink")?,
        _pad: 0,
        task_cgroups: f("task_struct", "cgroups")?,
        css_set_dfl_cgrp: f("css_set", "dfl_cgrp")?,
    })
}

/// Byte offset of `field` in `struct strukt`, looking through anonymous unions and
/// structs (recent kernels wrap `f_path` and `d_name` in them).
fn field_offset(btf: &Btf, strukt: &str, field: &str) -> Result<u32, BtfError> {
    let types = btf.resolve_types_by_name(strukt).map_err(|_| BtfError::NoStruct(strukt.into()))?;
    let st = types
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
    find_member(btf, &st, field, 0)?
        .map(|bits| bits / 8)
        .ok_or_else(|| BtfError::NoField { strukt: strukt.into(), field: field.into() })
}

fn find_member(btf: &Btf, st: &btf_rs::Struct, field: &str, base_bits: u32) -> Result<Option<u32>, BtfError> {
    for m in &st.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let bits = base_bits + m.bit_offset();
        if name == field {
            return Ok(Some(bits));
        }
        if name.is_empty() {
            if let Some(inner) = strip_to_composite(btf, m)? {
                if let Some(found) = find_member(btf, &inner, field, bits)? {
                    return Ok(Some(found));
                }
            }
        }
    }
    Ok(None)
}

/// The struct/union a member's type resolves to through typedefs and qualifiers.
fn strip_to_composite(btf: &Btf, m: &btf_rs::Member) -> Result<Option<btf_rs::Struct>, BtfError> {
    let mut t = btf.resolve_chained_type(m).map_err(|e| BtfError::Other(e.to_string()))?;
    for _ in 0..16 {
        t = match t {
            Type::Struct(s) | Type::Union(s) => return Ok(Some(s)),
            Type::Typedef(ref x) => btf.resolve_chained_type(x).map_err(|e| BtfError::Other(e.to_string()))?,
            Type::Const(ref x) => btf.resolve_chained_type(x).map_err(|e| BtfError::Other(e.to_string()))?,
            Type::Volatile(ref x) => btf.resolve_chained_type(x).map_err(|e| BtfError::Other(e.to_string()))?,
            _ => return Ok(None),
        };
    }
    Ok(None)
}

/// Parameter count of kernel function `name`, if BTF has it.
fn func_nargs(btf: &Btf, name: &str) -> Option<u32> {
    let types = btf.resolve_types_by_name(name).ok()?;
    types.into_iter().find_map(|t| match t {
        Type::Func(f) => match btf.resolve_chained_type(&f).ok()? {
            Type::FuncProto(p) => Some(p.parameters.len() as u32),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the offsets of the kernel running the tests. Every machine agentd
    /// supports has BTF; a kernel without it cannot run agentd at all.
    #[test]
    fn reads_offsets_from_running_kernel() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        let o = kernel_offsets(path).expect("kernel BTF readable");
        assert_eq!(o.valid, 1);
        // Stable facts that hold on every kernel: qstr is {hash,len} then name;
        // struct path is {mnt, dentry}.
        assert_eq!(o.qstr_len, 4);
        assert_eq!(o.qstr_name, 8);
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8));
        assert!(o.file_f_path > 0 && o.dentry_d_name > 0 && o.mount_mnt > 0);
        assert!(o.path_rename_nargs == 4 || o.path_rename_nargs == 5);
        eprintln!(
            "inode_setattr {} inode_setxattr {} inode_removexattr {}",
            o.inode_setattr_nargs, o.inode_setxattr_nargs, o.inode_removexattr_nargs
        );
    }
}
