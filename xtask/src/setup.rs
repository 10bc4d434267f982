//! `cargo xtask setup`: installs everything building and testing agentd needs, and
//! nothing that is already there. `test`, `vm` and `run` call [`ensure`] first, so
//! every check here must be cheap when things are present.
//!
//! What and why:
//! - the eBPF toolchain: the nightly compiler builds agent-ebpf (through aya-build),
//!   which needs nightly's `rust-src` and `bpf-linker`; bpf-linker must be linked
//!   against the same LLVM major as nightly's rustc, so that major is read from
//!   `rustc +nightly -vV` and never hard-coded;
//! - the VM tier: QEMU, a static busybox for the initramfs, and Debian's newest 6.1
//!   cloud kernel (a kernel where BPF LSM programs actually run).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{self, say, warn},
    workspace,
};

/// The bpf-linker release known to work with aya-build 0.2.0 on this toolchain.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Which groups of prerequisites a command needs.
#[derive(Clone, Copy, Debug)]
pub struct Needs {
    /// Building the workspace: nightly + rust-src, LLVM dev packages, bpf-linker.
    pub toolchain: bool,
    /// Booting the test VM: QEMU, busybox, the 6.1 test kernel.
    pub vm: bool,
}

impl Needs {
    pub const ALL: Needs = Needs { toolchain: true, vm: true };
}

/// Checks each prerequisite and installs what is missing.
pub fn ensure(needs: Needs) -> Result<()> {
    let llvm = if needs.toolchain { Some(nightly_llvm_major()?) } else { None };

    let mut packages: Vec<String> = Vec::new();
    if let Some(n) = llvm {
        packages.extend([format!("llvm-{n}-dev"), format!("libpolly-{n}-dev")]);
        packages.extend(["libzstd-dev", "zlib1g-dev"].map(String::from));
    }
    if needs.vm {
        // cpio is not used by xtask itself (it writes the newc archive directly) but
        // is what you need to look inside an initramfs by hand: `cpio -t < image`.
        // binutils: objcopy strips DWARF from the binaries packed into the initramfs.
        packages.extend(["qemu-system-x86", "busybox-static", "cpio", "binutils"].map(String::from));
        // The syslog receipt sink's test delivers to a private rsyslogd on loopback
        // (it starts its own with its own config; the system's is not used).
        packages.push("rsyslog".to_string());
    }
    let mut apt = Apt::default();
    apt.install_missing(&packages)?;

    if let Some(n) = llvm {
        ensure_rust_src()?;
        ensure_bpf_linker(n)?;
    }
    if needs.vm {
        ensure_test_kernel(&mut apt)?;
    }
    Ok(())
}

/// The LLVM major version of the nightly toolchain, from `rustc +nightly -vV`.
pub fn nightly_llvm_major() -> Result<u32> {
    let out = cmd::output(Command::new("rustc").args(["+nightly", "-vV"])).context(
        "the nightly Rust toolchain is missing or broken (it builds the eBPF programs); \
         install it with `rustup toolchain install nightly --component rust-src`",
    )?;
    let major = parse_llvm_major(&out).with_context(|| {
        format!("`rustc +nightly -vV` printed no `LLVM version:` line; reinstall nightly with `rustup toolchain install nightly`:\n{out}")
    })?;
    let release = out.lines().find_map(|l| l.strip_prefix("release: ")).unwrap_or("?");
    say(format!("nightly toolchain: rustc {release}, LLVM {major}"));
    Ok(major)
}

/// `LLVM version: 22.1.4` → 22.
fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    let version = rustc_vv.lines().find_map(|l| l.trim().strip_prefix("LLVM version:"))?;
    version.trim().split('.').next()?.parse().ok()
}

/// apt-get, run at most one `apt-get update` per xtask invocation and only when
/// something must actually be installed.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn update(&mut self) -> Result<()> {
        if !self.updated {
            say("updating the apt package lists");
            cmd::run(
                apt_get().arg("update"),
                "check that this machine can reach its Debian mirrors (/etc/apt/sources.list*)",
            )?;
            self.updated = true;
        }
        Ok(())
    }

    fn install_missing(&mut self, packages: &[String]) -> Result<()> {
        if packages.is_empty() {
            return Ok(());
        }
        let missing = missing_packages(packages)?;
        if missing.is_empty() {
            say(format!("apt packages present: {}", packages.join(" ")));
            return Ok(());
        }
        let list = missing.join(" ");
        if which::which("apt-get").is_err() {
            bail!("these packages are missing and this is not a Debian-like system (no apt-get): {list}; install their equivalents by hand");
        }
        if !workspace::is_root() {
            bail!("these packages are missing: {list}; installing them needs root: run `sudo -E cargo xtask setup`, or `sudo apt-get install {list}`");
        }
        self.update()?;
        let unavailable: Vec<&String> = missing.iter().filter(|p| !has_candidate(p)).collect();
        if !unavailable.is_empty() {
            let names: Vec<&str> = unavailable.iter().map(|s| s.as_str()).collect();
            let mut msg = format!("apt has no installable version of: {}", names.join(" "));
            if names.iter().any(|n| n.starts_with("llvm-") || n.starts_with("libpolly-")) {
                msg.push_str(
                    ". The LLVM packages must match the nightly rustc's LLVM major. On Debian 12 they come \
                     from bookworm-security (`deb http://deb.debian.org/debian-security bookworm-security main`) \
                     or bookworm-backports; elsewhere add https://apt.llvm.org for that major. \
                     Add the source, then run `cargo xtask setup` again",
                );
            }
            bail!(msg);
        }
        say(format!("installing apt packages: {list}"));
        let mut c = apt_get();
        // Recommends would pull in GUI and firmware packages the tests never use.
        c.args(["install", "-y", "--no-install-recommends"]).args(&missing);
        cmd::run(&mut c, "see apt's message above; fix the apt sources or dpkg state and run `cargo xtask setup` again")
    }
}

fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// The packages of `packages` that dpkg does not report as installed.
fn missing_packages(packages: &[String]) -> Result<Vec<String>> {
    if which::which("dpkg-query").is_err() {
        // Not Debian-like: report everything so the caller explains what to install.
        return Ok(packages.to_vec());
    }
    // dpkg-query exits non-zero when it has never heard of a package; that just means
    // "missing", so read its stdout whatever the status.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(packages)
        .output()
        .context("running dpkg-query to check installed packages")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(packages
        .iter()
        .filter(|p| !text.lines().any(|l| l.strip_prefix(p.as_str()) == Some(" install ok installed")))
        .cloned()
        .collect())
}

/// Whether apt knows an installable version (`apt-cache policy` Candidate).
fn has_candidate(package: &str) -> bool {
    let Ok(out) = cmd::output(Command::new("apt-cache").args(["policy", package])) else {
        return false;
    };
    out.lines().find_map(|l| l.trim().strip_prefix("Candidate:")).is_some_and(|c| c.trim() != "(none)")
}

fn ensure_rust_src() -> Result<()> {
    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("asking the nightly rustc for its sysroot")?;
    let src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if src.is_dir() {
        say("rust-src for nightly: present");
        return Ok(());
    }
    say("installing rust-src for the nightly toolchain (aya-build rebuilds core for the BPF target)");
    cmd::run(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "run `rustup component add rust-src --toolchain nightly` by hand to see why",
    )
}

fn ensure_bpf_linker(llvm: u32) -> Result<()> {
    match which::which("bpf-linker") {
        Ok(path) if cmd::succeeds(Command::new(&path).arg("--version")) => match bpf_linker_llvm_major(&path) {
            Some(n) if n == llvm => {
                say(format!("bpf-linker ({}, LLVM {n}): present", path.display()));
                return Ok(());
            }
            Some(n) => say(format!(
                "bpf-linker at {} is built against LLVM {n}, but nightly uses LLVM {llvm}: rebuilding it",
                path.display()
            )),
            None => {
                warn(format!(
                    "cannot tell which LLVM {} was built against; keeping it (if eBPF linking fails, \
                     delete it and run `cargo xtask setup`)",
                    path.display()
                ));
                return Ok(());
            }
        },
        Ok(path) => say(format!("bpf-linker at {} does not run: reinstalling it", path.display())),
        Err(_) => {
            if let Some(home_bin) = cargo_home().map(|h| h.join("bin/bpf-linker")).filter(|p| p.exists()) {
                bail!(
                    "{} exists but is not on PATH; add {} to PATH (rustc finds the linker there) and run again",
                    home_bin.display(),
                    home_bin.parent().map(|p| p.display().to_string()).unwrap_or_default()
                );
            }
            say("bpf-linker is not installed");
        }
    }
    say(format!("building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (about a minute)"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![PathBuf::from(format!("/usr/lib/llvm-{llvm}/bin"))];
    dirs.extend(std::env::split_paths(&path));
    let mut c = workspace::cargo();
    c.env("PATH", std::env::join_paths(dirs).context("building PATH for cargo install")?)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
        .args(["--no-default-features", "--features", &format!("llvm-{llvm}")]);
    cmd::run(
        &mut c,
        &format!("check that llvm-{llvm}-dev and libpolly-{llvm}-dev are installed and crates.io is reachable"),
    )
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// The LLVM major bpf-linker was built against. `bpf-linker --version` does not say,
/// so look at the libLLVM it is dynamically linked to, then at the features cargo
/// recorded when it installed it (`llvm-N`).
fn bpf_linker_llvm_major(path: &Path) -> Option<u32> {
    if let Ok(ldd) = cmd::output(Command::new("ldd").arg(path)) {
        if let Some(n) = parse_libllvm_major(&ldd) {
            return Some(n);
        }
    }
    let installed = fs::read_to_string(cargo_home()?.join(".crates2.json")).ok()?;
    parse_crates2_llvm_feature(&installed)
}

/// `libLLVM.so.22.1 => …` or `libLLVM-22.so => …` → 22.
fn parse_libllvm_major(ldd: &str) -> Option<u32> {
    ldd.lines().find_map(|l| {
        let rest = &l.trim()[l.trim().find("libLLVM")? + "libLLVM".len()..];
        let rest = rest.trim_start_matches(|c: char| !c.is_ascii_digit());
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// The `llvm-N` feature of the installed bpf-linker, from cargo's `.crates2.json`.
fn parse_crates2_llvm_feature(json: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let (_, info) = v["installs"].as_object()?.iter().find(|(k, _)| k.starts_with("bpf-linker "))?;
    info["features"].as_array()?.iter().find_map(|f| f.as_str()?.strip_prefix("llvm-")?.parse().ok())
}

/// The test kernel's files under `.vm/kernel/`.
pub struct TestKernel {
    pub vmlinuz: PathBuf,
    /// e.g. `6.1.0-56-cloud-amd64`.
    pub version: String,
}

/// The test kernel if it has been fetched.
pub fn test_kernel() -> Option<TestKernel> {
    let dir = workspace::vm_dir().join("kernel");
    let vmlinuz = dir.join("vmlinuz");
    let version = fs::read_to_string(dir.join("VERSION")).ok()?.trim().to_string();
    (vmlinuz.is_file() && !version.is_empty()).then_some(TestKernel { vmlinuz, version })
}

fn ensure_test_kernel(apt: &mut Apt) -> Result<()> {
    if let Some(k) = test_kernel() {
        say(format!("VM test kernel {}: present ({})", k.version, k.vmlinuz.display()));
        return Ok(());
    }
    let mut package = newest_cloud_kernel()?;
    if package.is_none() && workspace::is_root() {
        // A fresh machine may have empty package lists.
        apt.update()?;
        package = newest_cloud_kernel()?;
    }
    let package = package.context(
        "apt knows no linux-image-6.1.0-*-cloud-amd64-unsigned package; the VM tests need Debian 12's \
         (bookworm) main and bookworm-security sources; add them and run `apt-get update`",
    )?;
    let vm = workspace::vm_dir();
    let kernel_dir = vm.join("kernel");
    let extract = vm.join("kernel-extract");
    fs::create_dir_all(&kernel_dir).with_context(|| format!("creating {}", kernel_dir.display()))?;
    say(format!("downloading the VM test kernel {package} into {}", vm.display()));
    // The sandbox user _apt cannot write into a root-owned checkout; downloading as
    // the invoking user is what we want anyway.
    cmd::run(
        Command::new("apt-get").args(["-o", "APT::Sandbox::User=root", "download", &package]).current_dir(&vm),
        "check that the Debian mirrors are reachable",
    )?;
    let deb = find_file(&vm, &format!("{package}_"), ".deb")?
        .with_context(|| format!("apt-get download left no {package}_*.deb in {}", vm.display()))?;
    let _ = fs::remove_dir_all(&extract);
    cmd::run(
        Command::new("dpkg").arg("-x").arg(&deb).arg(&extract),
        "the downloaded .deb may be damaged: delete .vm/ and retry",
    )?;
    let boot = extract.join("boot");
    let image =
        find_file(&boot, "vmlinuz-", "")?.with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))?;
    let version = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("kernel image has an unexpected name")?
        .to_string();
    // Write then rename so an interrupted setup never leaves a half-copied kernel
    // that a later run would take for present.
    let tmp = kernel_dir.join("vmlinuz.tmp");
    fs::copy(&image, &tmp).with_context(|| format!("copying {} to {}", image.display(), tmp.display()))?;
    fs::rename(&tmp, kernel_dir.join("vmlinuz")).context("moving the kernel image into place")?;
    fs::write(kernel_dir.join("VERSION"), format!("{version}\n")).context("writing .vm/kernel/VERSION")?;
    // The modules are most of the package and the VM needs none of them.
    let _ = fs::remove_dir_all(&extract);
    let _ = fs::remove_file(&deb);
    say(format!("VM test kernel {version} installed in {}", kernel_dir.display()));
    Ok(())
}

/// The newest `linux-image-6.1.0-N-cloud-amd64-unsigned` apt knows, by N.
fn newest_cloud_kernel() -> Result<Option<String>> {
    let out = cmd::output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
    ]))
    .context("searching apt for the 6.1 cloud kernel")?;
    Ok(pick_newest_cloud_kernel(&out))
}

fn pick_newest_cloud_kernel(apt_search: &str) -> Option<String> {
    apt_search
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let abi = name.strip_prefix("linux-image-6.1.0-")?.strip_suffix("-cloud-amd64-unsigned")?;
            Some((abi.parse::<u32>().ok()?, name.to_string()))
        })
        .max()
        .map(|(_, name)| name)
}

fn find_file(dir: &Path, prefix: &str, suffix: &str) -> Result<Option<PathBuf>> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(suffix) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc() {
        let out = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(out), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }

    #[test]
    fn llvm_major_from_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007f01d1dda000)\n\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007f01c8a00000)\n";
        assert_eq!(parse_libllvm_major(ldd), Some(22));
        assert_eq!(parse_libllvm_major("\tlibLLVM-19.so => /usr/lib/x (0x1)\n"), Some(19));
        assert_eq!(parse_libllvm_major("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"), None);
    }

    #[test]
    fn llvm_major_from_cargo_install_record() {
        let json = r#"{"installs":{"bpf-linker 0.13.0 (registry+https://github.com/rust-lang/crates.io-index)":{"features":["llvm-22"],"no_default_features":true}}}"#;
        assert_eq!(parse_crates2_llvm_feature(json), Some(22));
        assert_eq!(parse_crates2_llvm_feature(r#"{"installs":{}}"#), None);
    }

    #[test]
    fn newest_kernel_by_abi_number_not_text() {
        let out = "linux-image-6.1.0-9-cloud-amd64-unsigned - Linux 6.1\n\
                   linux-image-6.1.0-56-cloud-amd64-unsigned - Linux 6.1\n\
                   linux-image-6.1.0-100-cloud-amd64-unsigned - Linux 6.1\n\
                   linux-image-6.1.0-55-cloud-amd64-dbg - debug\n";
        assert_eq!(pick_newest_cloud_kernel(out).as_deref(), Some("linux-image-6.1.0-100-cloud-amd64-unsigned"));
        assert_eq!(pick_newest_cloud_kernel(""), None);
    }
}
