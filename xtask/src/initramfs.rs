//! The test VM's root filesystem: an (uncompressed) newc cpio archive holding a
//! static busybox (with its applet links), the binaries to test, the kernel modules
//! for virtiofs, a few files of this machine's `/etc`, and an `/init` script that
//! mounts this machine's `/usr` read-only over virtiofs, mounts what agentd needs,
//! and runs one command.
//!
//! The guest is laid out as Debian 12 is (merged `/usr`: `/bin`, `/sbin`, `/lib`,
//! `/lib64` are symlinks into `/usr`), and its `/usr` *is* this machine's, so git,
//! gcc, python3, node and their libraries run in the guest at the same absolute paths
//! as on the host: the example policies name `/usr/bin/**` and `/usr/lib/**`, and
//! `/bin/sh` is the host's dash, not busybox. Busybox lives in `/busybox` and only
//! `/init` relies on it (it runs before `/usr` is there). The binaries under test go
//! to `/agentd/bin`; their shared libraries come from the shared `/usr`.
//!
//! The archive is written directly (newc is a simple format), so no staging
//! directory, root-owned files or device nodes on the host are needed: `/dev/console`
//! is just an entry in the archive.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// The line `/init` prints once the filesystems are mounted (boot time is measured to it).
pub const BOOTED_MARKER: &str = "AGENTD-VM-BOOTED";
/// The line `/init` prints after the command, followed by its exit code.
pub const EXIT_MARKER: &str = "AGENTD-VM-EXIT";
/// The virtiofs tag of the host's `/usr` (QEMU's vhost-user-fs-pci `tag=`).
pub const USR_TAG: &str = "hostusr";
/// Where the binaries under test live in the guest (outside `/usr`, which is the host's).
pub const GUEST_BIN_DIR: &str = "/agentd/bin";

/// Top-level symlinks of a merged-`/usr` system, reproduced in the guest as the host
/// has them.
const MERGED_USR_LINKS: &[&str] = &["bin", "sbin", "lib", "lib64", "lib32", "libx32"];

/// Small files and directories of this machine's `/etc` that programs in its `/usr`
/// expect: the alternatives links (`/usr/bin/cc -> /etc/alternatives/cc`), the
/// dynamic loader's cache and configuration, name-service configuration, and the
/// Python site customisation Debian links from `/usr/lib/python3.*`. Copied when present.
const HOST_ETC: &[&str] = &["alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "os-release"];

/// What the VM should run and with which files.
pub struct Spec {
    /// The host binary to run as the VM's command.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra host binaries, placed in the guest at the given absolute path.
    pub extra: Vec<(PathBuf, String)>,
    /// Environment of the command.
    pub env: Vec<(String, String)>,
    /// Kernel modules `/init` loads, in this order, before mounting the host's `/usr`.
    pub modules: Vec<PathBuf>,
}

/// Where the command's binary lands in the guest.
pub fn guest_program_path(program: &Path) -> String {
    let name = program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "program".into());
    format!("{GUEST_BIN_DIR}/{name}")
}

/// Builds the initramfs for `spec` and writes it to `out`. Returns its size in bytes.
pub fn build(spec: &Spec, busybox: &Path, out: &Path) -> Result<u64> {
    let mut archive = Archive::default();
    for dir in ["dev", "proc", "sys", "tmp", "run", "root", "etc", "usr", "var/tmp", "busybox", "agentd/bin", "agentd/modules"] {
        archive.dir(dir);
    }
    for link in MERGED_USR_LINKS {
        let host = Path::new("/").join(link);
        match fs::read_link(&host) {
            Ok(target) if target.starts_with("usr") || target.starts_with("/usr") => {
                archive.symlink_if_absent(link, &target.to_string_lossy())
            }
            Ok(target) => bail!(
                "{} points to {}, not into /usr: the VM shares this machine's /usr and needs a merged-/usr \
                 system (Debian 12 or newer)",
                host.display(),
                target.display()
            ),
            Err(_) if host.is_dir() => bail!(
                "{} is a directory, not a symlink into /usr: the VM shares this machine's /usr and needs a \
                 merged-/usr system (Debian 12 or newer)",
                host.display()
            ),
            Err(_) => {}
        }
    }
    // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
    archive.char_device("dev/console", 0o600, 5, 1);
    archive.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n".to_vec());
    archive.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
    for name in HOST_ETC {
        archive.copy_tree(&Path::new("/etc").join(name), &format!("etc/{name}"))?;
    }
    // Debian links /usr/lib/python3.X/sitecustomize.py to /etc/python3.X/.
    for entry in fs::read_dir("/etc").context("reading /etc")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("python3") {
            archive.copy_tree(&entry.path(), &format!("etc/{name}"))?;
        }
    }

    let busybox_data = fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    archive.file("busybox/busybox", 0o755, busybox_data);
    for applet in busybox_applets(busybox)? {
        archive.symlink_if_absent(&format!("busybox/{applet}"), "/busybox/busybox");
    }
    let mut binaries: Vec<(PathBuf, String)> = vec![(spec.program.clone(), guest_program_path(&spec.program))];
    binaries.extend(spec.extra.iter().cloned());
    let mut libraries = BTreeSet::new();
    for (host, guest) in &binaries {
        if guest == "/usr" || guest.starts_with("/usr/") || MERGED_USR_LINKS.iter().any(|l| guest.starts_with(&format!("/{l}/"))) {
            bail!("{guest} is inside the guest's /usr, which is this machine's /usr shared read-only; put it elsewhere");
        }
        let data = without_debug_info(host, out)?;
        archive.file(guest.trim_start_matches('/'), 0o755, data);
        libraries.extend(shared_libraries(host)?);
    }
    for lib in &libraries {
        // Libraries in /usr (all of them, on a merged-/usr system) reach the guest
        // through the shared /usr; any other is copied under the name the loader asks for.
        let real = fs::canonicalize(lib).with_context(|| format!("resolving shared library {}", lib.display()))?;
        if real.starts_with("/usr") {
            continue;
        }
        let data = fs::read(&real).with_context(|| format!("reading shared library {}", real.display()))?;
        archive.file(lib.to_string_lossy().trim_start_matches('/'), 0o755, data);
    }
    for module in &spec.modules {
        let name = module.file_name().context("module without a file name")?.to_string_lossy().into_owned();
        let data = fs::read(module).with_context(|| format!("reading kernel module {}", module.display()))?;
        archive.file(&format!("agentd/modules/{name}"), 0o644, data);
    }
    archive.file("init", 0o755, init_script(spec).into_bytes());

    // Uncompressed: the kernel reads newc as is, and measured here, gzip cost 2.6 s on
    // the host (a debug-built deflate) and 0.3 s more boot under TCG to inflate,
    // against 0.1 s to write 26 MiB plain.
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    archive.write_newc(&mut w).with_context(|| format!("writing {}", out.display()))?;
    w.flush().with_context(|| format!("writing {}", out.display()))?;
    let size = fs::metadata(out).with_context(|| format!("reading size of {}", out.display()))?.len();
    Ok(size)
}

/// `binary`'s bytes without DWARF debug info (`objcopy --strip-debug`). Debug builds
/// of agentd and the test binaries are 100+ MiB each, nearly all of it DWARF; the
/// guest unpacks the archive into RAM, where 336 MiB of it failed to unpack ("write
/// error") in a 1 GiB VM. Symbols stay, so backtraces still name functions.
fn without_debug_info(binary: &Path, out: &Path) -> Result<Vec<u8>> {
    let tmp = out.with_extension(format!("strip-{}", binary.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let status = Command::new("objcopy").arg("--strip-debug").arg(binary).arg(&tmp).status();
    let data = match status {
        Ok(s) if s.success() => fs::read(&tmp).with_context(|| format!("reading {}", tmp.display())),
        Ok(s) => Err(anyhow::anyhow!("objcopy --strip-debug {} failed ({s})", binary.display())),
        Err(e) => Err(anyhow::anyhow!("running objcopy (binutils) to strip {}: {e}", binary.display())),
    };
    let _ = fs::remove_file(&tmp);
    data
}

/// The shared libraries `ldd` lists for `binary`, including the dynamic loader.
/// A static binary has none.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd on {} (is libc-bin installed?)", binary.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // ldd exits 1 for static binaries; anything else is a real problem.
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
            || stdout.contains("statically linked")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), stderr.trim());
    }
    parse_ldd(&stdout).with_context(|| format!("reading ldd's output for {}", binary.display()))
}

fn parse_ldd(out: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        if line.ends_with("=> not found") {
            bail!("a shared library is missing on this machine: {line}");
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x…)`; `linux-vdso.so.1 (0x…)` has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The names of every busybox applet (`sh`, `ip`, …).
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list failed; reinstall busybox-static", busybox.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.contains('/'))
        .collect())
}

/// `/init`: PID 1 of the VM. It must never exit before printing the exit marker, so
/// a failing mount is reported and the command still runs (it will say what is wrong).
/// It runs on busybox alone until the host's `/usr` is mounted; the command gets a
/// Debian PATH (busybox last, as a fallback).
fn init_script(spec: &Spec) -> String {
    let mut s = String::from(
        "#!/busybox/sh\n\
         # Generated by `cargo xtask vm`: PID 1 of the test VM.\n\
         export PATH=/busybox\n\
         export HOME=/root\n\
         mnt() { mkdir -p \"$3\"; mount -t \"$1\" \"$2\" \"$3\" || echo \"init: mounting $1 on $3 failed\"; }\n\
         mnt proc proc /proc\n\
         mnt sysfs sysfs /sys\n\
         mnt devtmpfs devtmpfs /dev\n",
    );
    s.push_str("# This machine's /usr, read-only over virtiofs: the guest's programs and libraries.\n");
    for module in &spec.modules {
        let name = module.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        s.push_str(&format!("insmod /agentd/modules/{name} || echo 'init: insmod {name} failed'\n"));
    }
    s.push_str(&format!(
        "mount -t virtiofs -o ro {USR_TAG} /usr || echo 'init: mounting the host /usr (virtiofs tag {USR_TAG}) failed: \
         nothing dynamically linked can run'\n"
    ));
    s.push_str(
        "mnt tmpfs tmpfs /tmp\n\
         mnt tmpfs tmpfs /run\n\
         mnt cgroup2 cgroup2 /sys/fs/cgroup\n\
         mnt bpf bpf /sys/fs/bpf\n\
         mnt tracefs tracefs /sys/kernel/tracing\n\
         mnt securityfs securityfs /sys/kernel/security\n\
         chmod 1777 /tmp /var/tmp\n\
         ip link set lo up || echo 'init: bringing up lo failed'\n\
         # No NIC: default routes over lo, so a connect(2) to any address is judged by\n\
         # agentd's hooks and then routed, as on a host, instead of ENETUNREACH.\n\
         ip route add default dev lo || echo 'init: IPv4 default route failed'\n\
         ip -6 route add default dev lo || echo 'init: IPv6 default route failed'\n",
    );
    s.push_str(&format!("echo \"{BOOTED_MARKER} $(cut -d' ' -f1 /proc/uptime)\"\n"));
    s.push_str("cd /tmp\n(\n");
    s.push_str("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/busybox\n");
    for (k, v) in &spec.env {
        s.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    let mut command = vec!["exec".to_string(), shell_quote(&guest_program_path(&spec.program))];
    command.extend(spec.args.iter().map(|a| shell_quote(a)));
    s.push_str(&command.join(" "));
    s.push_str(&format!("\n)\ncode=$?\necho \"{EXIT_MARKER} $code\"\npoweroff -f\n"));
    s
}

/// Single-quotes `s` for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Entries of a newc archive, keyed by path so parents sort before children.
#[derive(Default)]
struct Archive {
    entries: BTreeMap<String, Entry>,
}

enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
    CharDevice { mode: u32, major: u32, minor: u32 },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Archive {
    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry::Dir);
        }
    }

    fn dir(&mut self, path: &str) {
        self.parents(path);
        self.entries.entry(path.to_string()).or_insert(Entry::Dir);
    }

    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.parents(path);
        self.entries.insert(path.to_string(), Entry::File { mode, data });
    }

    fn symlink_if_absent(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entries.entry(path.to_string()).or_insert_with(|| Entry::Symlink(target.to_string()));
    }

    /// Copies `host` (a file, a symlink as a symlink, or a directory with what is in
    /// it) to `path` in the archive; nothing when `host` does not exist.
    fn copy_tree(&mut self, host: &Path, path: &str) -> Result<()> {
        let Ok(meta) = fs::symlink_metadata(host) else { return Ok(()) };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(host).with_context(|| format!("reading link {}", host.display()))?;
            self.parents(path);
            self.entries.insert(path.to_string(), Entry::Symlink(target.to_string_lossy().into_owned()));
        } else if meta.is_dir() {
            self.dir(path);
            for entry in fs::read_dir(host).with_context(|| format!("reading {}", host.display()))? {
                let entry = entry.with_context(|| format!("reading {}", host.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                self.copy_tree(&entry.path(), &format!("{path}/{name}"))?;
            }
        } else if meta.is_file() {
            let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
            self.file(path, meta.permissions().mode() & 0o7777, data);
        }
        Ok(())
    }

    fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        self.entries.insert(path.to_string(), Entry::CharDevice { mode, major, minor });
    }

    fn write_newc(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        for (ino, (path, entry)) in (1..).zip(&self.entries) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (S_IFDIR | 0o755, &[], (0, 0)),
                Entry::File { mode, data } => (S_IFREG | mode, data, (0, 0)),
                Entry::Symlink(target) => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
                Entry::CharDevice { mode, major, minor } => (S_IFCHR | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
            write_record(w, ino, mode, nlink, rdev, path, data)?;
        }
        write_record(w, 0, 0, 1, (0, 0), "TRAILER!!!", &[])
    }
}

/// One newc record: 110-byte ASCII header, NUL-terminated name and data, each padded
/// to a multiple of 4 bytes.
fn write_record(
    w: &mut impl std::io::Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let name_len = name.len() + 1;
    let fields = [ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name_len as u32, 0];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0; 3][..pad4(110 + name_len)])?;
    w.write_all(data)?;
    w.write_all(&[0; 3][..pad4(data.len())])
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// The host's busybox, which must be static: the guest's busybox runs `/init` before
/// anything else could load libraries for it (they are copied anyway if it is not).
pub fn find_busybox() -> Result<PathBuf> {
    let path = which::which("busybox")
        .or_else(|_| which::which("/bin/busybox"))
        .context("busybox is not installed; run `cargo xtask setup` (it installs busybox-static)")?;
    let meta = fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o111 == 0 {
        bail!("{} is not executable", path.display());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        let out = "\tlinux-vdso.so.1 (0x00007ffaab8e9000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007ffaab85f000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007ffaab67d000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007ffaab8eb000)\n";
        let libs = parse_ldd(out).expect("parses");
        assert_eq!(
            libs,
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
                .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn newc_records_are_aligned_and_parents_come_first() {
        let mut a = Archive::default();
        a.file("usr/local/bin/x", 0o755, b"hello".to_vec());
        a.symlink_if_absent("bin/sh", "/bin/busybox");
        a.symlink_if_absent("usr/local/bin/x", "/bin/busybox"); // does not replace the file
        let mut out = Vec::new();
        a.write_newc(&mut out).expect("write");
        assert_eq!(out.len() % 4, 0);
        let names: Vec<String> = records(&out).into_iter().map(|(name, _, _)| name).collect();
        assert_eq!(names, ["bin", "bin/sh", "usr", "usr/local", "usr/local/bin", "usr/local/bin/x", "TRAILER!!!"]);
        let x = records(&out).into_iter().find(|(n, _, _)| n == "usr/local/bin/x").expect("x");
        assert_eq!(x.1 & 0o170000, S_IFREG);
        assert_eq!(x.2, b"hello");
    }

    /// A minimal newc reader, to check the writer against the format.
    fn records(mut buf: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while buf.len() >= 110 {
            assert_eq!(&buf[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&buf[6 + i * 8..14 + i * 8]).expect("ascii"), 16).expect("hex")
            };
            let (mode, size, name_len) = (field(1), field(6) as usize, field(11) as usize);
            let name = String::from_utf8(buf[110..110 + name_len - 1].to_vec()).expect("name");
            let data_at = 110 + name_len + pad4(110 + name_len);
            let data = buf[data_at..data_at + size].to_vec();
            buf = &buf[data_at + size + pad4(size)..];
            let end = name == "TRAILER!!!";
            out.push((name, mode, data));
            if end {
                break;
            }
        }
        out
    }

    #[test]
    fn init_runs_the_command_quoted_and_prints_the_exit_marker() {
        let spec = Spec {
            program: PathBuf::from("/target/debug/deps/vm-123"),
            args: vec!["--test-threads=1".into(), "it's".into()],
            extra: vec![],
            env: vec![("AGENTD_TEST_TIER".into(), "vm".into())],
            modules: vec![PathBuf::from("/k/modules/virtio.ko"), PathBuf::from("/k/modules/virtiofs.ko")],
        };
        let init = init_script(&spec);
        assert!(init.starts_with("#!/busybox/sh\n"), "init runs before /usr (and /bin/sh) exists");
        assert!(init.contains("export AGENTD_TEST_TIER='vm'\n"));
        assert!(init.contains("exec '/agentd/bin/vm-123' '--test-threads=1' 'it'\\''s'\n"));
        assert!(init.contains("echo \"AGENTD-VM-EXIT $code\"\npoweroff -f\n"));
        let virtio = init.find("insmod /agentd/modules/virtio.ko").expect("loads virtio");
        let virtiofs = init.find("insmod /agentd/modules/virtiofs.ko").expect("loads virtiofs");
        let mount = init.find("mount -t virtiofs -o ro hostusr /usr").expect("mounts /usr read-only");
        assert!(virtio < virtiofs && virtiofs < mount, "modules in order, then the mount:\n{init}");
    }
}
