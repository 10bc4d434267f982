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
//!   cloud kernel (a kernel where BPF LSM programs actually run), with the modules
//!   that let the guest mount this machine's `/usr` over virtiofs (the guest runs
//!   this machine's programs, at the same paths);
//! - the agent tools the false-positive scenarios run as a bound agent would, on the
//!   host and (through that shared `/usr`) in the VM: git, gcc with libc headers,
//!   make, python3 with venv and the wheels pip installs offline, node and npm.

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
    /// Booting the test VM: QEMU, busybox, the 6.1 test kernel and its virtiofs modules.
    pub vm: bool,
    /// The programs the false-positive scenarios run as an agent: git, gcc, make,
    /// python3 + venv, node + npm (host tier, and the VM tier through the shared /usr).
    pub agent_tools: bool,
}

impl Needs {
    pub const ALL: Needs = Needs { toolchain: true, vm: true, agent_tools: true };
}

/// Debian packages of the agent tools. `libc6-dev` is only a Recommends of gcc (and
/// `--no-install-recommends` is used), so it is named. `python3-venv` brings the pip
/// and setuptools wheels `python3 -m venv` installs from; `python3-wheel-whl` is the
/// `wheel` wheel, which setuptools 66 needs to build a wheel, so a venv can build a
/// local package with no index.
const AGENT_TOOL_PACKAGES: &[&str] =
    &["git", "gcc", "libc6-dev", "make", "python3", "python3-venv", "python3-wheel-whl"];

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
    if needs.agent_tools {
        packages.extend(AGENT_TOOL_PACKAGES.iter().map(|p| p.to_string()));
    }
    let mut apt = Apt::default();
    apt.install_missing(&packages)?;
    if needs.agent_tools {
        ensure_node(&mut apt)?;
    }

    if let Some(n) = llvm {
        ensure_rust_src()?;
        ensure_bpf_linker(n)?;
    }
    if needs.vm {
        ensure_test_kernel(&mut apt)?;
    }
    Ok(())
}

/// node and npm at `/usr/bin` (where the scenarios and the example policies expect
/// them). Whoever provides them is fine: NodeSource's `nodejs` package includes npm
/// and conflicts with Debian's `npm`, so Debian's `nodejs` is installed only when
/// there is no node at all, and Debian's `npm` only when npm is still missing then.
fn ensure_node(apt: &mut Apt) -> Result<()> {
    for (program, package) in [("/usr/bin/node", "nodejs"), ("/usr/bin/npm", "npm")] {
        if Path::new(program).exists() {
            say(format!("{program}: present"));
        } else {
            say(format!("{program} is missing: installing the {package} package"));
            apt.install_missing(&[package.to_string()])?;
            if !Path::new(program).exists() {
                bail!("the {package} package is installed but there is no {program}; the agent-tool scenarios run {program}");
            }
        }
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
    /// The modules the guest loads (in this order) to mount the host's `/usr` over
    /// virtiofs: the cloud kernel has the virtio PCI transport, FUSE and virtiofs as
    /// modules only.
    pub modules: Vec<PathBuf>,
}

/// The modules the VM needs, by name; their dependencies are found in the modules
/// themselves. virtio_pci is the transport of the vhost-user-fs-pci device, virtiofs
/// the filesystem.
const VM_MODULES: &[&str] = &["virtio_pci", "virtiofs"];

/// `.vm/kernel/modules/ORDER`: the copied modules' file names, in load order.
const MODULE_ORDER: &str = "ORDER";

/// The test kernel if it has been fetched, with its modules (a kernel fetched by an
/// older setup, without them, counts as missing and is fetched again).
pub fn test_kernel() -> Option<TestKernel> {
    let dir = workspace::vm_dir().join("kernel");
    let vmlinuz = dir.join("vmlinuz");
    let version = fs::read_to_string(dir.join("VERSION")).ok()?.trim().to_string();
    let modules_dir = dir.join("modules");
    let order = fs::read_to_string(modules_dir.join(MODULE_ORDER)).ok()?;
    let modules: Vec<PathBuf> =
        order.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| modules_dir.join(l)).collect();
    let complete = vmlinuz.is_file() && !version.is_empty() && !modules.is_empty() && modules.iter().all(|m| m.is_file());
    complete.then_some(TestKernel { vmlinuz, version, modules })
}

fn ensure_test_kernel(apt: &mut Apt) -> Result<()> {
    if let Some(k) = test_kernel() {
        say(format!("VM test kernel {}: present ({}, {} modules)", k.version, k.vmlinuz.display(), k.modules.len()));
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
    // The modules the guest needs for virtiofs, with what they depend on.
    let modules_dir = kernel_dir.join("modules");
    let _ = fs::remove_dir_all(&modules_dir);
    fs::create_dir_all(&modules_dir).with_context(|| format!("creating {}", modules_dir.display()))?;
    let available = index_modules(&extract.join("lib/modules").join(&version))?;
    let order = module_load_order(VM_MODULES, &available, |ko| module_depends(ko, &modules_dir))?;
    let mut names = String::new();
    for ko in &order {
        let name = ko.file_name().context("module without a file name")?;
        fs::copy(ko, modules_dir.join(name))
            .with_context(|| format!("copying {} into {}", ko.display(), modules_dir.display()))?;
        names.push_str(&format!("{}\n", name.to_string_lossy()));
    }
    // Write then rename so an interrupted setup never leaves a half-copied kernel
    // that a later run would take for present (the module list is written last:
    // without it the kernel counts as missing).
    let tmp = kernel_dir.join("vmlinuz.tmp");
    fs::copy(&image, &tmp).with_context(|| format!("copying {} to {}", image.display(), tmp.display()))?;
    fs::rename(&tmp, kernel_dir.join("vmlinuz")).context("moving the kernel image into place")?;
    fs::write(kernel_dir.join("VERSION"), format!("{version}\n")).context("writing .vm/kernel/VERSION")?;
    fs::write(modules_dir.join(MODULE_ORDER), names).context("writing .vm/kernel/modules/ORDER")?;
    // The other modules are most of the package and the VM needs none of them.
    let _ = fs::remove_dir_all(&extract);
    let _ = fs::remove_file(&deb);
    say(format!(
        "VM test kernel {version} installed in {} with modules {}",
        kernel_dir.display(),
        order.iter().filter_map(|m| m.file_name()).map(|n| n.to_string_lossy()).collect::<Vec<_>>().join(" ")
    ));
    Ok(())
}

/// Every module file under `dir`, by module name (`-` in a file name is `_` in the
/// module's name, as the kernel spells it).
fn index_modules(dir: &Path) -> Result<std::collections::BTreeMap<String, PathBuf>> {
    let mut found = std::collections::BTreeMap::new();
    let mut compressed = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry.with_context(|| format!("reading {}", d.display()))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(stem) = name.strip_suffix(".ko") {
                found.insert(stem.replace('-', "_"), path);
            } else if name.contains(".ko.") {
                compressed.push(name);
            }
        }
    }
    if found.is_empty() {
        bail!(
            "the kernel package has no uncompressed modules under {} ({} compressed ones: busybox insmod in the VM \
             loads plain .ko files only)",
            dir.display(),
            compressed.len()
        );
    }
    Ok(found)
}

/// `roots` and everything they depend on, dependencies first.
fn module_load_order(
    roots: &[&str],
    available: &std::collections::BTreeMap<String, PathBuf>,
    depends: impl Fn(&Path) -> Result<Vec<String>>,
) -> Result<Vec<PathBuf>> {
    fn visit(
        name: &str,
        available: &std::collections::BTreeMap<String, PathBuf>,
        depends: &dyn Fn(&Path) -> Result<Vec<String>>,
        visiting: &mut Vec<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let path = available
            .get(name)
            .with_context(|| format!("the kernel package has no module {name} (is it built in? then drop it from VM_MODULES)"))?;
        if order.contains(path) {
            return Ok(());
        }
        if visiting.iter().any(|v| v == name) {
            bail!("module dependency cycle through {name}");
        }
        visiting.push(name.to_string());
        for dep in depends(path)? {
            visit(&dep, available, depends, visiting, order)?;
        }
        visiting.pop();
        order.push(path.clone());
        Ok(())
    }
    let mut order = Vec::new();
    for root in roots {
        visit(root, available, &depends, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// The `depends=` entry of a module's `.modinfo` section, read with objcopy (no kmod
/// needed on the host). `scratch` is a directory for objcopy's output.
fn module_depends(ko: &Path, scratch: &Path) -> Result<Vec<String>> {
    let out = scratch.join("modinfo.tmp");
    cmd::output(Command::new("objcopy").args(["-O", "binary", "--only-section=.modinfo"]).arg(ko).arg(&out))
        .with_context(|| format!("reading the .modinfo section of {} (binutils' objcopy)", ko.display()))?;
    let data = fs::read(&out).with_context(|| format!("reading {}", out.display()));
    let _ = fs::remove_file(&out);
    Ok(parse_modinfo_depends(&data?))
}

/// `depends=a,b` among the NUL-separated `key=value` strings of `.modinfo`.
fn parse_modinfo_depends(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|b| *b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|deps| String::from_utf8_lossy(deps).split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|d| !d.is_empty())
        .collect()
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
    fn module_dependencies_come_first_once() {
        let available: std::collections::BTreeMap<String, PathBuf> =
            ["virtio", "virtio_ring", "virtio_pci", "fuse", "virtiofs", "virtio_pci_modern_dev"]
                .iter()
                .map(|n| (n.to_string(), PathBuf::from(format!("/m/{n}.ko"))))
                .collect();
        let deps = |ko: &Path| -> Result<Vec<String>> {
            Ok(match ko.file_stem().and_then(|s| s.to_str()) {
                Some("virtio_pci") => vec!["virtio_pci_modern_dev".into(), "virtio".into(), "virtio_ring".into()],
                Some("virtiofs") => vec!["fuse".into(), "virtio".into(), "virtio_ring".into()],
                _ => vec![],
            })
        };
        let order = module_load_order(&["virtio_pci", "virtiofs"], &available, deps).expect("order");
        let names: Vec<_> = order.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["virtio_pci_modern_dev", "virtio", "virtio_ring", "virtio_pci", "fuse", "virtiofs"]);
        assert!(module_load_order(&["nope"], &available, |_| Ok(vec![])).is_err());
    }

    #[test]
    fn modinfo_depends_entry() {
        let modinfo = b"license=GPL\0depends=fuse,virtio,virtio_ring\0name=virtiofs\0";
        assert_eq!(parse_modinfo_depends(modinfo), ["fuse", "virtio", "virtio_ring"]);
        assert!(parse_modinfo_depends(b"depends=\0name=virtio\0").is_empty());
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
