//! Real-kernel test fixtures: a running `agentd` with its own state, socket and
//! pin directory; cgroups that remove themselves; and the `probe` binary run
//! inside them. Every fixture cleans up on drop, including the kernel objects
//! (removing the pin directory detaches the daemon's programs).

use std::{
    fs,
    io::Write as _,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
pub fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Paths of the binaries under test. The test tiers set `AGENTD_BIN`,
/// `AGENTCTL_BIN` and `AGENTD_PROBE_BIN`; otherwise the debug builds in target/.
pub struct Bins {
    pub agentd: PathBuf,
    pub agentctl: PathBuf,
    pub probe: PathBuf,
}

impl Bins {
    pub fn get() -> Bins {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug");
        let pick = |var: &str, name: &str| {
            std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| target.join(name))
        };
        Bins {
            agentd: pick("AGENTD_BIN", "agentd"),
            agentctl: pick("AGENTCTL_BIN", "agentctl"),
            probe: pick("AGENTD_PROBE_BIN", "probe"),
        }
    }
}

/// The cgroup2 mount point, from /proc/self/mountinfo (never assumed).
pub fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    for line in info.lines() {
        let (pre, post) = line.split_once(" - ").unwrap_or((line, ""));
        if post.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = pre.split_whitespace().nth(4) {
                return PathBuf::from(mp);
            }
        }
    }
    panic!("no cgroup2 mount in /proc/self/mountinfo");
}

/// A cgroup created for a test and removed (with its processes killed) on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(name: &str) -> Cgroup {
        let path = cgroup2_mount().join(unique(&format!("agentd-test-{name}")));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup { path }
    }

    /// A child cgroup, e.g. one created after the parent was bound.
    pub fn child(&self, name: &str) -> Cgroup {
        let path = self.path.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup { path }
    }

    pub fn id(&self) -> u64 {
        fs::metadata(&self.path).expect("stat cgroup").ino()
    }

    /// A command that moves itself into this cgroup before exec, so the exec itself
    /// is already judged; it fails rather than run outside the cgroup.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let procs = std::ffi::CString::new(self.path.join("cgroup.procs").as_os_str().as_encoded_bytes()).expect("path");
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        // SAFETY: only async-signal-safe calls (open/write/close) between fork and
        // exec, on a C string prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let r = libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if r != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
        cmd
    }

    /// Starts `program args` inside this cgroup, stdin and stdout piped.
    pub fn spawn(&self, program: &Path, args: &[&str]) -> std::process::Child {
        self.command(program, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} in {}: {e}", program.display(), self.path.display()))
    }

    /// Runs `program args` inside this cgroup and collects its output.
    pub fn run(&self, program: &Path, args: &[&str]) -> Output {
        self.command(program, args)
            .output()
            .unwrap_or_else(|e| panic!("running {} in {}: {e}", program.display(), self.path.display()))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // Children first (depth-first), then us.
            if let Ok(entries) = fs::read_dir(&self.path) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        let _ = fs::write(e.path().join("cgroup.kill"), "1");
                        let _ = fs::remove_dir(e.path());
                    }
                }
            }
            if fs::remove_dir(&self.path).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the probe (or any command) experienced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Failed with this errno name (EPERM, ECONNREFUSED, …).
    Errno(String),
    /// Killed by this signal.
    Killed(i32),
    /// Anything else: exit code and output.
    Other(String),
}

pub fn outcome(out: &Output) -> Outcome {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(sig) = out.status.signal() {
        return Outcome::Killed(sig);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    if out.status.success() && last == "ok" {
        return Outcome::Ok;
    }
    if let Some(rest) = last.strip_prefix("errno ") {
        return Outcome::Errno(rest.split_whitespace().next().unwrap_or("").to_string());
    }
    Outcome::Other(format!(
        "status {:?}, stdout {stdout:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The pin directory every daemon of this test process shares, when the tier
/// asks for one (`AGENTD_TEST_PIN_DIR`): the VM tier does, because verifying
/// the programs takes a minute under emulation. The first daemon loads them;
/// each later one adopts them, as a restarted agentd does, and reconciles them
/// with its own fresh state (bindings it does not know are removed). Without it
/// every daemon loads its own programs.
fn shared_pin_dir() -> Option<PathBuf> {
    std::env::var_os("AGENTD_TEST_PIN_DIR").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// A running agentd with private state and socket, and (see [`shared_pin_dir`])
/// its own pins.
pub struct Daemon {
    child: Option<Child>,
    pub bins: Bins,
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub log: PathBuf,
    /// Extra environment for agentd (e.g. AGENTD_WEBHOOKS).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    pub fn start(name: &str) -> Daemon {
        Daemon::start_with_env(name, &[])
    }

    /// [`Daemon::start`] with extra environment variables for agentd.
    pub fn start_with_env(name: &str, env: &[(&str, &str)]) -> Daemon {
        let id = unique(name);
        let dir = std::env::temp_dir().join(format!("agentd-test-{id}"));
        fs::create_dir_all(&dir).expect("test dir");
        Daemon::start_in(id, dir, env, shared_pin_dir())
    }

    /// A daemon with pins of its own even where the tier shares them, for a test
    /// that floods the kernel's event ring buffer: the pinned buffer outlives the
    /// daemon, and the next daemon to adopt shared pins would spend minutes
    /// receipting this test's leftover decisions (under identity ids its own state
    /// gives to other names).
    pub fn start_with_own_pins(name: &str) -> Daemon {
        let id = unique(name);
        let dir = std::env::temp_dir().join(format!("agentd-test-{id}"));
        fs::create_dir_all(&dir).expect("test dir");
        Daemon::start_in(id, dir, &[], None)
    }

    /// A daemon (pins of its own) whose state directory, receipts included, is a
    /// tmpfs of `bytes`: a disk a test can fill. Unmounted when the daemon is
    /// dropped. `config` is its agentd.yaml.
    pub fn start_on_small_disk(name: &str, bytes: u64, config: &str) -> Daemon {
        let id = unique(name);
        let dir = std::env::temp_dir().join(format!("agentd-test-{id}"));
        let state = dir.join("state");
        fs::create_dir_all(&state).expect("state dir");
        fs::write(dir.join("agentd.yaml"), config).expect("config file");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700"), "agentd-test", state.to_str().expect("utf-8")])
            .output()
            .expect("mount(8)");
        assert!(out.status.success(), "mounting a tmpfs on {}: {out:?}", state.display());
        Daemon::start_in(id, dir, &[], None)
    }

    fn start_in(id: String, dir: PathBuf, env: &[(&str, &str)], shared: Option<PathBuf>) -> Daemon {
        let mut d = Daemon {
            child: None,
            bins: Bins::get(),
            state_dir: dir.join("state"),
            socket: dir.join("agentd.sock"),
            pin_dir: match shared {
                Some(shared) => shared,
                None => PathBuf::from("/sys/fs/bpf").join(format!("agentd-test-{id}")),
            },
            log: dir.join("agentd.log"),
            dir,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        // A configuration of its own (empty unless a test writes one), so that the
        // machine's /etc/agentd/agentd.yaml never changes what a test sees.
        let config = self.config_file();
        if !config.exists() {
            fs::write(&config, "").expect("config file");
        }
        let child = Command::new(&self.bins.agentd)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .env("RUST_LOG", "info")
            .env("AGENTD_CONFIG", &config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bins.agentd.display()));
        self.child = Some(child);
        // Loading and verifying the programs takes seconds under TCG emulation, and
        // over 120 s there when the 2 cores are shared with other builds (measured:
        // 73-94 s at load average 4-5). This only bounds a hang.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("agentd exited during start-up ({status}):\n{}", self.log_text());
            }
            if self.socket.exists() && self.ctl(&["status"]).status.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!("agentd did not answer on {} within 300 s:\n{}", self.socket.display(), self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `--config` file this daemon reads at start.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("agentd.yaml")
    }

    /// [`Daemon::start`] with `config` as its configuration file.
    pub fn start_with_config(name: &str, config: &str) -> Daemon {
        let id = unique(name);
        let dir = std::env::temp_dir().join(format!("agentd-test-{id}"));
        fs::create_dir_all(&dir).expect("test dir");
        fs::write(dir.join("agentd.yaml"), config).expect("config file");
        Daemon::start_in(id, dir, &[], shared_pin_dir())
    }

    /// Runs agentd with `config` where it is expected to refuse to start; returns
    /// how it exited (panics if it is still running after 60 s).
    pub fn try_start_with_config(name: &str, config: &str) -> Output {
        let dir = std::env::temp_dir().join(format!("agentd-test-{}", unique(name)));
        fs::create_dir_all(&dir).expect("test dir");
        let file = dir.join("agentd.yaml");
        fs::write(&file, config).expect("config file");
        let pins = PathBuf::from("/sys/fs/bpf").join(dir.file_name().expect("name"));
        let mut child = Command::new(&Bins::get().agentd)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("agentd.sock"))
            .arg("--pin-dir")
            .arg(&pins)
            .arg("--config")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting agentd");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!("agentd accepted the configuration and kept running:\n{}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("output");
        let _ = fs::remove_dir_all(&dir);
        out
    }

    /// Polls `agentctl status --json` until `done` holds for it (30 s at most).
    pub fn wait_status(&self, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s: serde_json::Value = serde_json::from_str(&self.ctl_ok(&["status", "--json"])).expect("status --json");
            if done(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("agentctl status did not reach the expected state within 30 s:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL the daemon (no clean-up runs) and wait for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the daemon and return its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().expect("wait for agentd")
    }

    /// Starts the daemon again on the same state, socket and pins.
    pub fn restart(&mut self) {
        self.kill9();
        let _ = fs::remove_file(&self.socket);
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs agentctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(&self.bins.agentctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.bins.agentctl.display()))
    }

    /// Runs agentctl and panics (with its output and the daemon log) unless it succeeds.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        if !out.status.success() {
            panic!(
                "agentctl {args:?} failed ({}):\nstdout: {}\nstderr: {}\nagentd log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `agentctl events --json` once it satisfies `want` (the daemon drains the
    /// kernel's ring buffer asynchronously); panics with the last output after 10 s.
    pub fn events_until(&self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.ctl_ok(&["events", "--json"]);
            if want(&events) {
                return events;
            }
            if Instant::now() > deadline {
                panic!("expected event not seen within 10 s; events: {events}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes `yaml` to a file and applies it.
    pub fn apply(&self, name: &str, yaml: &str) {
        let file = self.dir.join(format!("{name}.yaml"));
        let mut f = fs::File::create(&file).expect("policy file");
        f.write_all(yaml.as_bytes()).expect("write policy");
        self.ctl_ok(&["policy", "apply", file.to_str().expect("utf-8 path")]);
    }

    /// Applies `yaml` as policy `name`, creates identity `name` on it and binds `cg`.
    pub fn identity_bound(&self, name: &str, yaml: &str, cg: &Cgroup) {
        self.apply(name, yaml);
        self.ctl_ok(&["identity", "create", name, "--policy", name]);
        self.ctl_ok(&["bind", cg.path.to_str().expect("utf-8 path"), name]);
    }

    /// `agentctl doctor --json`, parsed.
    pub fn doctor(&self) -> serde_json::Value {
        serde_json::from_str(&self.ctl_ok(&["doctor", "--json"])).expect("doctor --json is JSON")
    }

    /// The effect ("deny" or "kill") of the active mechanism for `kind`.
    pub fn effect(&self, kind: &str) -> (String, String) {
        let doc = self.doctor();
        let mechs = doc["mechanisms"].as_array().cloned().unwrap_or_default();
        for m in mechs {
            if m["kind"] == kind {
                return (
                    m["active"].as_str().unwrap_or("").to_string(),
                    m["effect"].as_str().unwrap_or("").to_string(),
                );
            }
        }
        panic!("doctor reports no mechanism for {kind}: {doc}");
    }

    /// The outcome a denied action of `kind` must have under the active mechanism.
    pub fn denied(&self, kind: &str) -> Outcome {
        match self.effect(kind).1.as_str() {
            "deny" => Outcome::Errno("EPERM".into()),
            "kill" => Outcome::Killed(libc::SIGKILL),
            other => panic!("unknown effect {other:?} for {kind}"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Removing the pins detaches this daemon's programs from the kernel
        // (shared pins stay for the next daemon).
        if shared_pin_dir().as_ref() != Some(&self.pin_dir) {
            let _ = fs::remove_dir_all(&self.pin_dir);
        }
        // A state directory of its own filesystem (`start_on_small_disk`).
        if fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == self.state_dir.to_str())) {
            let _ = Command::new("umount").arg("-l").arg(&self.state_dir).status();
        }
        if std::thread::panicking() {
            eprintln!("agentd log ({}):\n{}", self.log.display(), self.log_text());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A TCP listener on loopback that answers each connection's first line with
/// `echo: LINE`, and counts the connections it got.
pub struct Echo {
    pub addr: std::net::SocketAddr,
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Echo {
    pub fn start(ip: &str) -> Echo {
        use std::io::BufRead as _;
        let l = std::net::TcpListener::bind(format!("{ip}:0")).expect("bind echo");
        let addr = l.local_addr().expect("local addr");
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = connections.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut line = String::new();
                    let mut r = std::io::BufReader::new(&s);
                    if r.read_line(&mut line).is_ok() {
                        let _ = (&s).write_all(format!("echo: {}\n", line.trim()).as_bytes());
                    }
                });
            }
        });
        Echo { addr, connections }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A TCP listener on loopback that answers each connection with "hello".
pub struct Listener {
    pub addr: std::net::SocketAddr,
}

impl Listener {
    pub fn start(ip: &str) -> Listener {
        let l = std::net::TcpListener::bind(format!("{ip}:0")).expect("bind listener");
        let addr = l.local_addr().expect("local addr");
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut s = s;
                let _ = s.write_all(b"hello\n");
            }
        });
        Listener { addr }
    }
}

/// A one-thread HTTP/1.1 server on loopback that takes POSTs: each request's body
/// is sent on the channel after the reply. `status(n)` is the status line of the
/// n-th request (0-based), e.g. "200 OK"; `reply` its body.
pub struct HttpReceiver {
    pub url_base: String,
    pub bodies: std::sync::mpsc::Receiver<String>,
}

impl HttpReceiver {
    pub fn start(status: impl Fn(usize) -> &'static str + Send + 'static, reply: &'static str) -> HttpReceiver {
        use std::io::Read as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let url_base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, bodies) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut s) = conn else { return };
                let mut req = Vec::new();
                let mut buf = [0u8; 8192];
                let body = loop {
                    let Ok(k) = s.read(&mut buf) else { return };
                    req.extend_from_slice(&buf[..k]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            break body.to_string();
                        }
                    }
                    if k == 0 {
                        return;
                    }
                };
                let answer = format!(
                    "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    status(n),
                    reply.len()
                );
                let _ = s.write_all(answer.as_bytes());
                if tx.send(body).is_err() {
                    return;
                }
            }
        });
        HttpReceiver { url_base, bodies }
    }

    /// The next request body, waiting up to `secs`.
    pub fn next(&self, secs: u64) -> String {
        self.bodies.recv_timeout(Duration::from_secs(secs)).unwrap_or_else(|_| panic!("no HTTP request within {secs} s"))
    }
}
