//! `cargo xtask vm`: boots Debian's 6.1 cloud kernel under QEMU with an initramfs
//! that runs one command, streams the serial console live, and returns the
//! command's exit code. The VM test tier uses [`run`] to run its test binary in a
//! kernel where BPF LSM programs really run.
//!
//! The guest's `/usr` is this machine's, shared read-only with virtiofs: QEMU's own
//! `virtiofsd` serves it from a private mount namespace in which `/usr` is bind-mounted
//! read-only, and the guest mounts it `ro` too. So the guest runs git, gcc, python3,
//! node, … at the paths the example policies name, with no copy (see initramfs.rs).
//! Serving it needs root (virtiofsd and the mount namespace).
//!
//! Always TCG (software emulation): `/dev/kvm` exists on these machines but QEMU
//! hangs at boot with KVM (shared/ENVIRONMENT.md).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{self, say},
    initramfs::{self, BOOTED_MARKER, EXIT_MARKER, GUEST_BIN_DIR, USR_TAG},
    setup, workspace,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kill the VM after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Use target/release/{agentd,agentctl} instead of target/debug.
    #[arg(long)]
    pub release: bool,
    /// Extra environment for the command (KEY=VALUE), repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// The binary to run in the VM (a path, or a name looked up in PATH) and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    let valid = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("{k:?} is not a valid environment variable name"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `cargo xtask vm`: exits with the guest command's exit code.
pub fn command(args: Args) -> Result<i32> {
    setup::ensure(setup::Needs { toolchain: false, vm: true, agent_tools: false })?;
    let (program, rest) = args.command.split_first().context("no binary given: `cargo xtask vm -- BINARY [ARGS]`")?;
    let program = resolve_program(program)?;
    let profile = if args.release { "release" } else { "debug" };
    let bins = project_binaries(&workspace::target_dir()?.join(profile));
    let mut env = default_env(&bins);
    env.extend(args.env);
    let run =
        run(&Request { program, args: rest.to_vec(), extra: bins, env, timeout: Duration::from_secs(args.timeout) })?;
    match run.end {
        End::Exited(code) => {
            say(format!("VM command exited with {code}"));
            Ok(code)
        }
        other => bail!("{}", other.describe(args.timeout)),
    }
}

/// A path, or a bare name looked up in PATH like a shell would.
fn resolve_program(program: &str) -> Result<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        if !p.is_file() {
            bail!("{program} does not exist (the binary is copied from this machine into the VM)");
        }
        return Ok(p);
    }
    which::which(program)
        .with_context(|| format!("{program} is not in PATH; give the path of the binary to run in the VM"))
}

/// The guest path of a project binary (`agentd`, `agentctl`, `probe`).
pub fn guest_bin(name: &str) -> String {
    format!("{GUEST_BIN_DIR}/{name}")
}

/// agentd, agentctl and the tests' probe from `dir`, where they exist, with their
/// guest paths.
pub fn project_binaries(dir: &Path) -> Vec<(PathBuf, String)> {
    ["agentd", "agentctl", "probe"]
        .iter()
        .map(|name| (dir.join(name), guest_bin(name)))
        .filter(|(host, _)| host.is_file())
        .collect()
}

/// The environment the guest command always gets: where the project binaries are,
/// and that it runs in the VM tier.
pub fn default_env(bins: &[(PathBuf, String)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("AGENTD_TEST_TIER".to_string(), "vm".to_string()),
        ("RUST_BACKTRACE".to_string(), "1".to_string()),
        // Verifying the programs takes a minute under TCG: the scenarios' daemons
        // share one pinned set (the first loads it, the rest adopt it).
        ("AGENTD_TEST_PIN_DIR".to_string(), "/sys/fs/bpf/agentd-vm-tests".to_string()),
    ];
    for (_, guest) in bins {
        let var = match guest.strip_prefix(GUEST_BIN_DIR).and_then(|n| n.strip_prefix('/')) {
            Some("agentd") => "AGENTD_BIN",
            Some("agentctl") => "AGENTCTL_BIN",
            Some("probe") => "AGENTD_PROBE_BIN",
            _ => continue,
        };
        env.push((var.to_string(), guest.clone()));
    }
    // The guest logs at the level the host asked for.
    if let Ok(v) = std::env::var("RUST_LOG") {
        env.push(("RUST_LOG".to_string(), v));
    }
    env
}

pub struct Request {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub extra: Vec<(PathBuf, String)>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

/// How a VM run ended.
#[derive(Debug, PartialEq)]
pub enum End {
    /// The command ran and `/init` reported its exit code.
    Exited(i32),
    /// Killed after the timeout.
    TimedOut,
    /// QEMU ended without the exit marker: the kernel panicked, init died, or QEMU failed.
    Crashed(String),
}

impl End {
    pub fn describe(&self, timeout_secs: u64) -> String {
        match self {
            End::Exited(code) => format!("the VM command exited with {code}"),
            End::TimedOut => format!(
                "the VM did not finish within {timeout_secs} s and was killed; see the console above for where it stopped \
                 (raise --timeout if it was still making progress)"
            ),
            End::Crashed(why) => format!("the VM ended without reporting an exit code ({why}); see the console above"),
        }
    }
}

pub struct Outcome {
    pub end: End,
    /// The serial console, one entry per line, `\r` removed.
    pub console: Vec<String>,
    /// From starting QEMU to `/init` reaching the command.
    pub boot_time: Option<Duration>,
}

/// Boots the test kernel with an initramfs for `req` and waits for it to finish.
pub fn run(req: &Request) -> Result<Outcome> {
    let kernel =
        setup::test_kernel().context("the VM test kernel is missing in .vm/kernel/; run `cargo xtask setup`")?;
    let qemu = which::which("qemu-system-x86_64")
        .context("qemu-system-x86_64 is not installed; run `cargo xtask setup` (it installs qemu-system-x86)")?;
    let busybox = initramfs::find_busybox()?;

    let vm_dir = workspace::vm_dir();
    fs::create_dir_all(&vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;
    // One image per xtask process, so parallel runs (two engineers, two tiers) never
    // boot each other's image.
    let image = vm_dir.join(format!("initramfs-{}.cpio", std::process::id()));
    let _cleanup = RemoveOnDrop(image.clone());
    let started = Instant::now();
    let spec = initramfs::Spec {
        program: req.program.clone(),
        args: req.args.clone(),
        extra: req.extra.clone(),
        env: req.env.clone(),
        modules: kernel.modules.clone(),
    };
    let size = initramfs::build(&spec, &busybox, &image)?;
    say(format!(
        "initramfs with {} (+ {}) built: {:.1} MiB in {:.1} s",
        req.program.display(),
        if req.extra.is_empty() {
            "busybox".to_string()
        } else {
            req.extra.iter().map(|(_, g)| g.as_str()).collect::<Vec<_>>().join(", ")
        },
        size as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64()
    ));

    let socket = vm_dir.join(format!("usr-{}.sock", std::process::id()));
    let _virtiofsd = Virtiofsd::start(&socket)?;

    let mut c = Command::new(qemu);
    c.args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2", "-nographic", "-no-reboot"])
        // vhost-user needs the guest's memory shared with virtiofsd.
        .args(["-object", "memory-backend-memfd,id=mem,size=1024M,share=on", "-machine", "memory-backend=mem"])
        .arg("-chardev")
        .arg(format!("socket,id=usr,path={}", socket.display()))
        .args(["-device", &format!("vhost-user-fs-pci,chardev=usr,tag={USR_TAG}")])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&image)
        .args(["-append", "console=ttyS0 lsm=lockdown,capability,landlock,bpf panic=-1 quiet"]);
    say(format!("booting kernel {} under QEMU (TCG): {}", kernel.version, cmd::describe(&c)));
    let boot_started = Instant::now();
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("could not start qemu-system-x86_64; run `cargo xtask setup`")?;
    let stdout = child.stdout.take().context("QEMU's stdout was not captured")?;

    // A thread reads the console so the main thread can enforce the deadline.
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = printable(&String::from_utf8_lossy(&buf));
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let deadline = boot_started + req.timeout;
    let mut console = Vec::new();
    let mut boot_time = None;
    let mut exit_code = None;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        // After the exit marker, poweroff should end QEMU at once; don't wait long for it.
        let limit = match exit_code {
            Some(_) => deadline.min(now + Duration::from_secs(15)),
            None => deadline,
        };
        match rx.recv_timeout(limit.saturating_duration_since(now)) {
            Ok(line) => {
                println!("vm| {line}");
                if boot_time.is_none() && line.contains(BOOTED_MARKER) {
                    let t = boot_started.elapsed();
                    boot_time = Some(t);
                    let guest = line.split(BOOTED_MARKER).nth(1).map(str::trim).unwrap_or("?");
                    say(format!("VM booted in {:.1} s under TCG (guest uptime {guest} s)", t.as_secs_f64()));
                }
                if let Some(code) = parse_exit_marker(&line) {
                    exit_code = Some(code);
                }
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if exit_code.is_none() {
                    timed_out = true;
                }
                // Kill QEMU (by the id we started it with); the reader then sees EOF.
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().context("waiting for QEMU")?;
    let _ = reader.join();
    say(format!("VM finished after {:.1} s", boot_started.elapsed().as_secs_f64()));
    let end = match (exit_code, timed_out) {
        (Some(code), _) => End::Exited(code),
        (None, true) => End::TimedOut,
        (None, false) => End::Crashed(format!("QEMU exited with {status}")),
    };
    Ok(Outcome { end, console, boot_time })
}

/// `AGENTD-VM-EXIT 3` anywhere in a console line → 3. Kernel messages can share the
/// line, so the marker is searched for, not expected at the start.
fn parse_exit_marker(line: &str) -> Option<i32> {
    let rest = line.split(EXIT_MARKER).nth(1)?;
    let digits: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
    digits.parse().ok()
}

/// The console line without terminal control: SeaBIOS and the kernel send escape
/// sequences (clear screen, line wrap off) that would mess up the user's terminal.
fn printable(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI (`ESC [ … final`) or a two-character sequence such as `ESC c`.
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next().is_some_and(|c| !('@'..='~').contains(&c)) {}
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// QEMU's virtiofsd serving this machine's `/usr`, read-only, on a vhost-user
/// socket; stopped (by its process id) and its socket removed on drop.
struct Virtiofsd {
    child: std::process::Child,
    socket: PathBuf,
}

/// Debian's qemu-system-common ships it here (the C virtiofsd of QEMU 7.2).
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

impl Virtiofsd {
    fn start(socket: &Path) -> Result<Virtiofsd> {
        if !Path::new(VIRTIOFSD).is_file() {
            bail!("{VIRTIOFSD} is missing; it comes with qemu-system-x86 (qemu-system-common): run `cargo xtask setup`");
        }
        if !workspace::is_root() {
            bail!("the test VM shares this machine's /usr through virtiofsd, which needs root: run as root");
        }
        let _ = fs::remove_file(socket);
        // A private mount namespace where /usr is bind-mounted read-only: whatever the
        // guest does, virtiofsd cannot write to this machine's /usr.
        let script = format!(
            "mount --bind /usr /usr && mount -o remount,bind,ro /usr && exec {VIRTIOFSD} \"$@\""
        );
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "/bin/sh", "-c", &script, "virtiofsd"])
            .arg(format!("--socket-path={}", socket.display()))
            .args(["-o", "source=/usr", "-o", "cache=always", "-o", "sandbox=namespace", "-o", "log_level=warn"]);
        say(format!("sharing /usr read-only with the VM: {}", cmd::describe(&c)));
        let mut child = c
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("could not start virtiofsd (through unshare, util-linux)")?;
        // Its messages, marked as its own (at shutdown it says `fv_remove_watch: TODO!`
        // and `Unexpected poll revents`, which are harmless).
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    println!("virtiofsd| {line}");
                }
            });
        }
        let mut d = Virtiofsd { child, socket: socket.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(status) = d.child.try_wait().context("waiting for virtiofsd")? {
                bail!("virtiofsd exited ({status}) before opening {}; see its message above", socket.display());
            }
            if Instant::now() > deadline {
                bail!("virtiofsd did not open {} within 10 s", socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        // It exits by itself when QEMU closes the connection; this is for when QEMU
        // never connected.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_marker() {
        assert_eq!(parse_exit_marker("AGENTD-VM-EXIT 0"), Some(0));
        assert_eq!(parse_exit_marker("[  3.1] random: crng init done AGENTD-VM-EXIT 101"), Some(101));
        assert_eq!(parse_exit_marker("AGENTD-VM-EXIT"), None);
        assert_eq!(parse_exit_marker("test foo ... ok"), None);
    }

    #[test]
    fn console_lines_lose_terminal_control() {
        assert_eq!(printable("\x1bc\x1b[?7l\x1b[2JAGENTD-VM-BOOTED 2.44\r\n"), "AGENTD-VM-BOOTED 2.44");
        assert_eq!(printable("a\tb"), "a\tb");
    }

    #[test]
    fn env_arguments() {
        assert_eq!(parse_env("RUST_LOG=debug=x"), Ok(("RUST_LOG".into(), "debug=x".into())));
        assert!(parse_env("NOEQUALS").is_err());
        assert!(parse_env("1BAD=x").is_err());
        assert!(parse_env("BAD-NAME=x").is_err());
    }
}
