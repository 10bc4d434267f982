//! Where things are: the workspace root, cargo, the target directory, the VM
//! scratch directory, and facts about the machine xtask runs on.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::cmd;

/// The workspace root: xtask's manifest lives one directory below it.
pub fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `.vm/` under the root (gitignored): the test kernel, downloads, initramfs images.
pub fn vm_dir() -> PathBuf {
    root().join(".vm")
}

/// A cargo command run from the workspace root. `cargo run` hands us the cargo it
/// used in `CARGO`; using the same one keeps toolchain and target dir consistent.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut c = Command::new(program);
    c.current_dir(root());
    c
}

/// The target directory cargo really uses (honours `CARGO_TARGET_DIR` and
/// `build.target-dir`), so freshly built binaries are found wherever they are.
pub fn target_dir() -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["metadata", "--format-version", "1", "--no-deps"]);
    let json = cmd::output(&mut c).context("asking cargo for the target directory")?;
    let meta: serde_json::Value = serde_json::from_str(&json).context("parsing `cargo metadata` output")?;
    let dir = meta["target_directory"].as_str().context("`cargo metadata` output has no target_directory")?;
    Ok(PathBuf::from(dir))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Whether an environment flag such as `CI` is set to something that means yes.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        !(v.is_empty() || v == "0" || v == "false" || v == "no")
    })
}
