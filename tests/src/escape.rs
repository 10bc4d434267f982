//! Escape attempts: a hijacked agent, in a bound cgroup, as root and as uid 65534,
//! trying to get out from under its policy (DESIGN.md, "Threat model"). Each
//! scenario makes real attempts with `probe` against a real agentd and checks
//! three things per attempt: it fails the way the tier's mechanism fails a call
//! ([`By`]), what it aimed at is untouched, and agentd recorded it as an event
//! whose `reason` names the class (`escape`, `tamper`, `namespace`, `bpf`,
//! `ptrace`, `kernel`, `protocol`, `guarded`, `link`, ...).
//!
//! A scenario makes every attempt before it fails, and then fails with the list
//! of those that got through, so one run shows every hole at once. Each attempt
//! also prints one `escape-attempt:` line saying what it saw.
//!
//! The fallback tier cannot fail a syscall, only kill its caller when the call
//! enters the kernel; the call itself still runs (measured: a killed `rm` had
//! removed its file). So where the damage *is* the refused call (a rename, a
//! mount, a signal), its absence is only asserted where the mechanism denies;
//! where the damage needs a later call (the write after a bind mount, the child
//! after a clone3), it is asserted on both tiers.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    cases::Scratch,
    harness::{cgroup2_mount, outcome, Cgroup, Daemon, Echo, Outcome},
};

const NOBODY: &str = "65534";
const NOBODY_ID: u32 = 65534;

/// Who makes an attempt: root, or uid/gid 65534 (probe's `as-user`, after the
/// harness put it in the cgroup as root).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Root,
    Nobody,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Root => "root",
            Who::Nobody => "uid 65534",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Who::Root => "root",
            Who::Nobody => "nobody",
        }
    }
}

const BOTH: [Who; 2] = [Who::Root, Who::Nobody];

/// Which part of the kernel must stop an attempt; that decides what the attempt
/// sees on each tier.
#[derive(Clone, Copy, Debug)]
enum By {
    /// A guard (events of kind `system`): under BPF LSM a hook fails the call with
    /// EPERM; the fallback tier has only syscall tracepoints, which cannot fail a
    /// call, so it kills the caller (SIGKILL).
    Guard,
    /// An exec rule, through the exec mechanism doctor reports (same split).
    Exec,
    /// A write rule, through the write mechanism doctor reports (same split).
    Write,
    /// A cgroup socket program (sock_create, connect4/6, sendmsg4/6): those run on
    /// both tiers and fail the call itself, so EPERM on both.
    Socket,
}

/// The outcome an attempt stopped by `by` must have on this daemon's tier.
fn expected(d: &Daemon, by: By) -> Outcome {
    match by {
        By::Socket => Outcome::Errno("EPERM".into()),
        By::Exec => d.denied("exec"),
        By::Write => d.denied("write"),
        By::Guard => {
            // doctor lists a `system` mechanism once the guards exist; until then
            // the exec mechanism says which tier this is (BPF LSM: deny, else kill).
            let doc = d.doctor();
            let mechs = doc["mechanisms"].as_array().cloned().unwrap_or_default();
            let effect = ["system", "exec"]
                .iter()
                .find_map(|k| mechs.iter().find(|m| m["kind"] == *k))
                .and_then(|m| m["effect"].as_str().map(str::to_string))
                .unwrap_or_else(|| panic!("doctor reports no exec mechanism: {doc}"));
            match effect.as_str() {
                "deny" => Outcome::Errno("EPERM".into()),
                "kill" => Outcome::Killed(libc::SIGKILL),
                other => panic!("unknown effect {other:?}"),
            }
        }
    }
}

/// The event an attempt must leave: for this identity, with one of `reasons`
/// (and of `kinds`, unless empty), from the attempt's process when `pid` is set,
/// about a target containing `target` when set.
struct Want {
    what: String,
    pid: Option<u64>,
    kinds: &'static [&'static str],
    reasons: &'static [&'static str],
    target: Option<String>,
}

impl Want {
    fn matches(&self, identity: &str, e: &serde_json::Value) -> bool {
        e["identity"] == identity
            && self.reasons.iter().any(|r| e["reason"] == *r)
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| e["kind"] == *k))
            && self.pid.is_none_or(|p| e["pid"].as_u64() == Some(p))
            && self.target.as_ref().is_none_or(|t| e["target"].as_str().is_some_and(|x| x.contains(t.as_str())))
    }
}

const SYSTEM: &[&str] = &["system"];
const WRITE: &[&str] = &["write"];
const EXEC: &[&str] = &["exec"];
const ANY: &[&str] = &[];
/// What the fallback tier names a call it refuses because it cannot judge it
/// (a path through a symlinked directory, open_by_handle_at, fd-table sharing,
/// acct): the file's path is unknown to it. Under BPF LSM the same attempts are
/// judged on the file, by its rule.
const UNJUDGED: &[&str] = &["unresolved", "unsupported-syscall"];

/// What one attempt saw.
struct Seen {
    outcome: Outcome,
    pid: u32,
    stdout: String,
}

/// A running agentd with one identity bound to a cgroup, scratch directories its
/// policy names, and two loopback listeners; it collects what each attempt did.
struct Lab {
    d: Daemon,
    files: Scratch,
    name: String,
    cg: Cgroup,
    /// Writes allowed (rule `ok/**`). Mode 0777.
    ok: String,
    /// Ancestor of `deny`, so that renaming an ancestor can be tried. Mode 0777.
    outer: String,
    /// Writes denied (rule `outer/deny/**`); holds `secret` (0666, "secret\n")
    /// and `owned` (owned by 65534, "owned\n"). Mode 0777.
    deny: String,
    /// Exec allowed (rule `okbin/**`), empty. Mode 0777.
    okbin: String,
    /// Exec denied (rule `denybin/**`); holds `tool`, a copy of probe. Mode 0777.
    denybin: String,
    /// The one egress destination the policy allows, and one it does not.
    allowed: Echo,
    refused: Echo,
    /// True where the mechanism fails calls (BPF LSM), false where it kills.
    deny_tier: bool,
    /// [`expected`] for Guard, Exec and Write, asked once.
    stops: [Outcome; 3],
    bindings: String,
    wants: Vec<Want>,
    problems: Vec<String>,
}

impl Lab {
    /// A lab whose identity `name` is bound to `cg`, with `extra_write` (YAML rule
    /// lines) added to its write rules.
    fn new(name: &str, cg: Cgroup, extra_write: &str) -> Lab {
        let d = Daemon::start(name);
        let files = Scratch::new(name);
        let dir = |rel: &str| {
            let p = files.path(rel);
            fs::create_dir_all(&p).expect("scratch dir");
            fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).expect("chmod");
            p
        };
        let (ok, outer, okbin, denybin) = (dir("ok"), dir("outer"), dir("okbin"), dir("denybin"));
        let deny = dir("outer/deny");
        fs::write(format!("{deny}/secret"), "secret\n").expect("seed");
        fs::set_permissions(format!("{deny}/secret"), fs::Permissions::from_mode(0o666)).expect("chmod");
        fs::write(format!("{deny}/owned"), "owned\n").expect("seed");
        chown(&format!("{deny}/owned"), NOBODY_ID);
        fs::copy(&d.bins.probe, format!("{denybin}/tool")).expect("copy probe");
        let probe_dir = fs::canonicalize(&d.bins.probe).expect("probe path");
        let probe_dir = probe_dir.parent().expect("probe dir").to_str().expect("utf-8").to_string();
        let (allowed, refused) = (Echo::start("127.0.0.1"), Echo::start("127.0.0.1"));
        // The probe's own directory, unless a system rule above already covers it
        // (in the VM it is /bin): a duplicate rule is an error.
        let system = ["/usr", "/bin", "/lib", "/lib64"];
        let probe_rule = if system.iter().any(|d| probe_dir == *d || probe_dir.starts_with(&format!("{d}/"))) {
            String::new()
        } else {
            format!("      - {{path: \"{probe_dir}/**\", action: allow}}\n")
        };
        let text = format!(
            "apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata:\n  name: {name}\nspec:\n  mode: enforce\n  exec:\n    default: deny\n    rules:\n      - {{path: \"/usr/**\", action: allow}}\n      - {{path: \"/bin/**\", action: allow}}\n      - {{path: \"/lib/**\", action: allow}}\n      - {{path: \"/lib64/**\", action: allow}}\n{probe_rule}      - {{path: \"{okbin}/**\", action: allow}}\n      - {{path: \"{denybin}/**\", action: deny}}\n  write:\n    default: allow\n    rules:\n      - {{path: \"{ok}/**\", action: allow}}\n      - {{path: \"{deny}/**\", action: deny}}\n{extra_write}  egress:\n    default: deny\n    rules:\n      - {{cidr: 127.0.0.1/32, ports: [{}], action: allow}}\n",
            allowed.addr.port()
        );
        d.identity_bound(name, &text, &cg);
        let stops = [expected(&d, By::Guard), expected(&d, By::Exec), expected(&d, By::Write)];
        let deny_tier = stops[0] == Outcome::Errno("EPERM".into());
        let bindings = d.ctl_ok(&["bindings", "--json"]);
        Lab {
            d,
            files,
            name: name.to_string(),
            cg,
            ok,
            outer,
            deny,
            okbin,
            denybin,
            allowed,
            refused,
            deny_tier,
            stops,
            bindings,
            wants: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn probe(&self) -> String {
        self.d.bins.probe.to_str().expect("utf-8").to_string()
    }

    fn secret(&self) -> String {
        format!("{}/secret", self.deny)
    }

    /// Runs `probe ARGS` in `cg` as `who` and returns what it saw.
    fn run_in(&self, cg: &Cgroup, who: Who, args: &[&str]) -> Seen {
        let mut full: Vec<&str> = Vec::new();
        if who == Who::Nobody {
            full.extend(["as-user", NOBODY, NOBODY]);
        }
        full.extend_from_slice(args);
        let mut child = cg.spawn(&self.d.bins.probe, &full);
        let pid = child.id();
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("probe output");
        Seen { outcome: outcome(&out), pid, stdout: String::from_utf8_lossy(&out.stdout).into_owned() }
    }

    /// What an attempt stopped by `by` must see here.
    fn stop(&self, by: By) -> Outcome {
        match by {
            By::Guard => self.stops[0].clone(),
            By::Exec => self.stops[1].clone(),
            By::Write => self.stops[2].clone(),
            By::Socket => Outcome::Errno("EPERM".into()),
        }
    }

    /// One attempt in the bound cgroup: it must end as `by` says, and leave an
    /// event from its process with one of `reasons` (and `kinds`).
    fn attempt(&mut self, what: &str, who: Who, args: &[&str], by: By, kinds: &'static [&'static str], reasons: &'static [&'static str]) -> Seen {
        let seen = self.run_in(&self.cg, who, args);
        self.judge(what, who, &seen, self.stop(by), kinds, reasons);
        seen
    }

    /// A ptrace-class attempt. Under BPF LSM `/proc/PID/mem` reports the refused
    /// ptrace check as EACCES (proc's own translation), the others EPERM.
    fn ptrace_attempt(&mut self, what: &str, who: Who, args: &[&str], reasons: &'static [&'static str]) -> Seen {
        let seen = self.run_in(&self.cg, who, args);
        let mut want = self.stop(By::Guard);
        if self.deny_tier && args.first() == Some(&"proc-mem-write") {
            want = Outcome::Errno("EACCES".into());
        }
        self.judge(what, who, &seen, want, SYSTEM, reasons);
        seen
    }

    /// An executable mapping the exec rules refuse. Under BPF LSM the mmap fails
    /// with EPERM inside the loader, which reports it its own way (ld.so exits
    /// 127 "failed to map segment", dlopen returns NULL): any failure, with the
    /// `mmap-exec` event, is the refusal. On the fallback tier the mapper is killed.
    fn refused_mapping(&mut self, what: &str, who: Who, args: &[&str]) -> Seen {
        let seen = self.run_in(&self.cg, who, args);
        let want = if self.deny_tier && seen.outcome != Outcome::Ok && !matches!(seen.outcome, Outcome::Killed(_)) {
            seen.outcome.clone()
        } else {
            self.stop(By::Exec)
        };
        self.judge(what, who, &seen, want, EXEC, &["rule"]);
        seen
    }

    /// Checks that `seen` ended as `want`, and asks for its event (from its pid).
    fn judge(&mut self, what: &str, who: Who, seen: &Seen, want: Outcome, kinds: &'static [&'static str], reasons: &'static [&'static str]) {
        let what = format!("{what} [{}]", who.name());
        let verdict = if seen.outcome == want {
            "stopped"
        } else if seen.outcome == Outcome::Ok {
            "ESCAPED"
        } else {
            // Not agentd's doing: the kernel's own answer (EFAULT for a bad
            // address, EINVAL for a bad value, ENOSYS, DAC) or a broken probe.
            "NOT STOPPED BY AGENTD"
        };
        println!(
            "escape-attempt: {}: {what}: saw {:?}, want {want:?}: {verdict}; probe said {:?}",
            self.name,
            seen.outcome,
            seen.stdout.trim().replace('\n', " | ")
        );
        if seen.outcome != want {
            self.problems.push(format!("{what}: saw {:?}, want {want:?} (probe said {:?})", seen.outcome, seen.stdout.trim()));
        }
        self.wants.push(Want { what, pid: Some(u64::from(seen.pid)), kinds, reasons, target: None });
    }

    /// The last attempt's event comes from another process (a child it started):
    /// match it by its target instead of its pid.
    fn event_by_target(&mut self, target: String) {
        let w = self.wants.last_mut().expect("an attempt before");
        w.pid = None;
        w.target = Some(target);
    }

    /// Records whether what an attempt aimed at is untouched. `same_call`: the
    /// damage is the refused call itself, which the fallback tier's kill comes too
    /// late to prevent, so there it is only reported.
    fn untouched(&mut self, what: &str, who: Who, untouched: bool, detail: String, same_call: bool) {
        if untouched {
            return;
        }
        let what = format!("{what} [{}]", who.name());
        if same_call && !self.deny_tier {
            println!("escape-attempt: {}: {what}: took effect before the kill (the fallback tier cannot fail a call): {detail}", self.name);
            return;
        }
        println!("escape-attempt: {}: {what}: EFFECT LANDED: {detail}", self.name);
        self.problems.push(format!("{what}: {detail}"));
    }

    /// An action the policy allows, in the bound cgroup, must work (so that the
    /// refusals above are about the attempt, not about something broken).
    fn allowed_here(&mut self, what: &str, who: Who, args: &[&str]) {
        let seen = self.run_in(&self.cg, who, args);
        assert_eq!(seen.outcome, Outcome::Ok, "{what} [{}] is allowed and must work: {}", who.name(), seen.stdout);
    }

    /// Waits (10 s at most) for every event asked for so far, and records those
    /// that did not come.
    fn collect_events(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events: Vec<serde_json::Value>;
        loop {
            let text = self.d.ctl_ok(&["events", "--json"]);
            events = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["events"].as_array().cloned())
                .unwrap_or_default();
            let all = self.wants.iter().all(|w| events.iter().any(|e| w.matches(&self.name, e)));
            if all || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for w in &self.wants {
            if !events.iter().any(|e| w.matches(&self.name, e)) {
                let close: Vec<String> = events
                    .iter()
                    .filter(|e| e["identity"] == self.name.as_str() && w.pid.is_none_or(|p| e["pid"].as_u64() == Some(p)))
                    .map(|e| format!("{}/{}/{}", e["kind"], e["reason"], e["target"]))
                    .collect();
                println!("escape-attempt: {}: {}: NO EVENT with reason {:?} (its events: {close:?})", self.name, w.what, w.reasons);
                self.problems.push(format!("{}: no event with reason {:?} kind {:?} (its events: {close:?})", w.what, w.reasons, w.kinds));
            }
        }
        self.wants.clear();
    }

    /// Collects the events, checks the bindings, and fails with everything that
    /// went wrong.
    fn finish(mut self) {
        self.collect_events();
        let bindings = self.d.ctl_ok(&["bindings", "--json"]);
        if bindings != self.bindings {
            self.problems.push(format!("the bindings changed:\nbefore: {}\nafter: {bindings}", self.bindings));
        }
        assert!(
            self.problems.is_empty(),
            "{}: {} of the escape attempts were not stopped as they must be:\n  {}",
            self.name,
            self.problems.len(),
            self.problems.join("\n  ")
        );
    }
}

// ----- fixtures and file checks --------------------------------------------------------

fn chown(path: &str, id: u32) {
    std::os::unix::fs::chown(path, Some(id), Some(id)).unwrap_or_else(|e| panic!("chown {path}: {e}"));
}

/// True when `path` exists and (where the mechanism kills, so an open with
/// O_CREAT may have created it before the kill) holds data.
fn landed(path: &str, deny_tier: bool) -> bool {
    match fs::metadata(path) {
        Ok(m) => deny_tier || m.len() > 0,
        Err(_) => false,
    }
}

fn content(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("<{e}>"))
}

/// Whether `path` is a mount point in this (the test's) mount namespace.
fn is_mount_point(path: &str) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| l.split_whitespace().nth(4) == Some(path))
}

/// Unmounts what is mounted at a path on drop (a mount an attempt made on the
/// host, or one the test made).
struct Unmount(String);

impl Drop for Unmount {
    fn drop(&mut self) {
        let p = std::ffi::CString::new(self.0.as_str()).expect("path");
        for _ in 0..8 {
            // SAFETY: a valid path; MNT_DETACH never blocks.
            if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } != 0 {
                break;
            }
        }
    }
}

/// A process killed and reaped on drop.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pinned map `name` of the daemon.
fn pinned_map(d: &Daemon, name: &str) -> String {
    let obj = fs::read_dir(&d.pin_dir)
        .expect("pin dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("maps").is_dir())
        .expect("agentd's pins");
    obj.join("maps").join(name).to_str().expect("utf-8").to_string()
}

/// A path from /proc/self/maps of this test whose file name starts with one of
/// `names` (the dynamic loader, a shared library).
fn mapped(names: &[&str]) -> Option<String> {
    let maps = fs::read_to_string("/proc/self/maps").ok()?;
    names.iter().find_map(|n| {
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| Path::new(p).file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with(n)))
            .map(str::to_string)
    })
}

/// The scheduler state letter of `pid` (`T`: stopped).
fn proc_state(pid: u32) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("?").to_string()
}

fn tracer_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// `probe ARGS` from the test itself (unbound): a control that shows an attempt
/// works on this machine when agentd has no say.
fn unbound(d: &Daemon, args: &[&str]) -> (Outcome, String) {
    let out = Command::new(&d.bins.probe).args(args).output().expect("probe");
    (outcome(&out), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn as_nobody<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["as-user", NOBODY, NOBODY];
    v.extend_from_slice(args);
    v
}

/// Sends SIGCONT to a process on drop (agentd, after an attempt to stop it:
/// while it is stopped, every exec on the machine waits on it).
struct Cont(u32);

impl Drop for Cont {
    fn drop(&mut self) {
        // SAFETY: signalling a process we started.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// A sysctl set for a test and restored on drop.
pub struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    pub fn set(path: &'static str, value: &str) -> Sysctl {
        let old = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        fs::write(path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(self.path, self.old.trim());
    }
}

/// Process accounting turned off on drop (an attempt that got acct(2) through
/// would otherwise leave the host accounting into a test file).
struct AcctOff;

impl Drop for AcctOff {
    fn drop(&mut self) {
        // SAFETY: acct(NULL) turns accounting off; harmless when it is off.
        unsafe { libc::acct(std::ptr::null()) };
    }
}

/// A UDP-Lite socket on 127.0.0.1 that counts the datagrams it gets.
struct UdpLiteSink {
    fd: libc::c_int,
    port: u16,
}

impl UdpLiteSink {
    /// None when the kernel has no UDP-Lite.
    fn start() -> Option<UdpLiteSink> {
        // SAFETY: plain socket calls on a descriptor we own; the sockaddr_in is
        // fully initialised and passed with its size.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 136);
            if fd < 0 {
                return None;
            }
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let sa = &mut sin as *mut libc::sockaddr_in as *mut libc::sockaddr;
            if libc::bind(fd, sa, len) != 0 || libc::getsockname(fd, sa, &mut len) != 0 {
                libc::close(fd);
                return None;
            }
            Some(UdpLiteSink { fd, port: u16::from_be(sin.sin_port) })
        }
    }

    /// Datagrams received since the last call.
    fn drain(&self) -> usize {
        let mut n = 0;
        let mut buf = [0u8; 512];
        // SAFETY: receiving into a local buffer from a non-blocking socket we own.
        while unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) } >= 0 {
            n += 1;
        }
        n
    }
}

impl Drop for UdpLiteSink {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor we own.
        unsafe { libc::close(self.fd) };
    }
}

// ----- escape: leaving the bound cgroup ------------------------------------------------

/// Class `escape`. A process that acted under an identity keeps it wherever it
/// moves: a cgroup.procs write (to the cgroup2 root, or to an unbound sibling in
/// a subtree delegated to uid 65534) and clone3(CLONE_INTO_CGROUP) with a
/// read-only fd on the target are refused; a child clone3 started elsewhere
/// anyway still cannot write or connect where the policy says no; and a bound
/// process moved out by someone else (an operator) is still judged by its policy.
pub fn escape_cgroup_moves_keep_the_identity() {
    let parent = Cgroup::new("escape");
    let bound = parent.child("bound");
    let free = parent.child("free");
    // Delegated to 65534, as systemd delegates a subtree to a user: it may move its
    // own processes between these cgroups as far as cgroup permissions go.
    for dir in [&parent.path, &bound.path, &free.path] {
        for f in ["", "cgroup.procs", "cgroup.threads"] {
            chown(dir.join(f).to_str().expect("utf-8"), NOBODY_ID);
        }
    }
    let free_path = free.path.to_str().expect("utf-8").to_string();
    let mut lab = Lab::new("escape", bound, "");
    let root_cg = cgroup2_mount().to_str().expect("utf-8").to_string();
    let refused = lab.refused.addr.to_string();
    let allowed = lab.allowed.addr.to_string();
    lab.allowed_here("connect to the allowed port", Who::Nobody, &["connect", &allowed]);

    let mut moves: Vec<(Who, &str, String)> = vec![(Who::Root, "cgroup2 root", root_cg.clone())];
    for who in BOTH {
        moves.push((who, "unbound sibling", free_path.clone()));
    }
    for (who, to, dir) in &moves {
        let planted = format!("{}/moved-{}-{}", lab.deny, who.tag(), to.replace(' ', "-"));
        let what = format!("cgroup.procs write to the {to}, then a denied write");
        lab.attempt(&what, *who, &["cgroup-move", dir, "--", "write", &planted], By::Guard, SYSTEM, &["escape"]);
        let wrote = landed(&planted, lab.deny_tier);
        lab.untouched(&what, *who, !wrote, format!("{planted} was written"), false);

        let planted = format!("{}/cloned-{}-{}", lab.deny, who.tag(), to.replace(' ', "-"));
        let what = format!("clone3(CLONE_INTO_CGROUP) into the {to}, then a denied write");
        let seen = lab.attempt(&what, *who, &["clone-into-cgroup", dir, "--", "write", &planted], By::Guard, SYSTEM, &["escape"]);
        let wrote = landed(&planted, lab.deny_tier);
        lab.untouched(&what, *who, !wrote, format!("the child ({}) wrote {planted}", seen.stdout.lines().next().unwrap_or("")), false);
    }
    let what = "clone3(CLONE_INTO_CGROUP) into the cgroup2 root, then a denied connect";
    let seen = lab.attempt(what, Who::Root, &["clone-into-cgroup", &root_cg, "--", "connect", &refused], By::Guard, SYSTEM, &["escape"]);
    let reached = lab.refused.connections();
    lab.untouched(what, Who::Root, reached == 0, format!("the denied listener got {reached} connection(s): {}", seen.stdout.trim()), false);

    // Moved out by someone else: the operator (this test, unbound) moves a bound
    // process to the unbound sibling; what it does next is still judged by its
    // identity's policy.
    for who in BOTH {
        let planted = format!("{}/after-move-{}", lab.deny, who.tag());
        let mut args = vec!["wait-stdin", "write", &planted];
        if who == Who::Nobody {
            args = as_nobody(&args);
        }
        let mut child = lab.cg.spawn(&lab.d.bins.probe, &args);
        let pid = child.id();
        // Written as one string, like a shell would: cgroup.procs takes one pid.
        fs::write(free.path.join("cgroup.procs"), pid.to_string()).expect("move the bound process out");
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("probe");
        let seen = Seen { outcome: outcome(&out), pid, stdout: String::from_utf8_lossy(&out.stdout).into_owned() };
        let what = "a bound process moved out by the operator writes where its policy denies";
        lab.judge(what, who, &seen, lab.stop(By::Write), WRITE, &["rule"]);
        let wrote = landed(&planted, lab.deny_tier);
        lab.untouched(what, who, !wrote, format!("{planted} was written"), false);
    }
    lab.finish();
}

// ----- tamper: enforcement itself ---------------------------------------------------------

/// Class `tamper` (kind `system`). As root, a bound agent can neither read agentd's
/// state (the node key that seals receipts), nor write its state or
/// configuration, nor remove its bpffs pins, nor write the cgroup files of its
/// own bound cgroup, nor stop or terminate agentd (by pid, pidfd or process
/// group). Each target is unchanged afterwards and agentd keeps running.
pub fn tamper_enforcement_is_out_of_reach() {
    let mut lab = Lab::new("tamper", Cgroup::new("tamper"), "");
    let state = lab.d.state_dir.to_str().expect("utf-8").to_string();
    let key = format!("{state}/receipts/node.key");
    assert!(Path::new(&key).exists(), "agentd keeps no {key} any more: update this scenario");
    let r = Who::Root;

    // doctor says, per protection, how this tier provides it: the same effect the
    // attempts below must see.
    let doc = lab.d.doctor();
    let lines: Vec<String> = doc["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("protection: ")))
        .map(|c| format!("{}: {}", c["name"].as_str().unwrap_or(""), c["detail"].as_str().unwrap_or("")))
        .collect();
    let says = if lab.deny_tier { "refused with EPERM (BPF LSM)" } else { "refused by killing the caller (SIGKILL" };
    let out_of_reach = lines.iter().find(|l| l.starts_with("protection: enforcement out of reach: "));
    assert!(
        out_of_reach.is_some_and(|l| l.contains(says)) && lines.len() >= 9,
        "doctor's protection lines do not say {says:?} on this tier: {lines:#?}"
    );

    lab.attempt("read agentd's receipts/node.key", r, &["read", &key], By::Guard, SYSTEM, &["tamper"]);

    let planted = format!("{state}/receipts/planted");
    lab.attempt("create a file in agentd's state", r, &["write", &planted], By::Guard, SYSTEM, &["tamper"]);
    let wrote = landed(&planted, lab.deny_tier);
    lab.untouched("create a file in agentd's state", r, !wrote, format!("{planted} was written"), false);

    let config = lab.d.config_file().to_str().expect("utf-8").to_string();
    let before = content(&config);
    lab.attempt("append to agentd's configuration", r, &["append", &config], By::Guard, SYSTEM, &["tamper"]);
    let after = content(&config);
    lab.untouched("append to agentd's configuration", r, after == before, format!("it now reads {after:?}"), false);

    let pin = PathBuf::from(pinned_map(&lab.d, "BINDINGS"));
    let link = pin.parent().and_then(Path::parent).map(|o| o.join("links"));
    let link = link
        .and_then(|l| fs::read_dir(l).ok())
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().to_str().expect("utf-8").to_string())
        .expect("a pinned link of agentd's");
    lab.attempt("unlink one of agentd's bpffs pins", r, &["unlink", &link], By::Guard, SYSTEM, &["tamper"]);
    let exists = Path::new(&link).exists();
    lab.untouched("unlink one of agentd's bpffs pins", r, exists, format!("{link} is gone"), true);

    let freeze = lab.cg.path.join("cgroup.freeze").to_str().expect("utf-8").to_string();
    lab.attempt("write the bound cgroup's cgroup.freeze", r, &["write", &freeze], By::Guard, SYSTEM, &["tamper"]);

    let pid = lab.d.pid().expect("agentd running");
    let _cont = Cont(pid);
    let spid = pid.to_string();
    let pgrp = format!("-{pid}");
    for (what, args) in [
        ("SIGSTOP to agentd", vec!["signal", spid.as_str(), "STOP"]),
        ("SIGSTOP to agentd through a pidfd", vec!["pidfd-signal", spid.as_str(), "STOP"]),
        ("SIGSTOP to agentd's process group", vec!["signal", pgrp.as_str(), "STOP"]),
    ] {
        lab.attempt(what, r, &args, By::Guard, SYSTEM, &["tamper"]);
        let state = proc_state(pid);
        // SAFETY: signalling the daemon we started: if the stop landed, every exec
        // on this machine waits for it.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        lab.untouched(what, r, state != "T", "agentd was stopped".into(), true);
    }
    // Last, with the events so far collected: if it works, agentd is gone.
    lab.collect_events();
    lab.attempt("SIGTERM to agentd", r, &["signal", &spid, "TERM"], By::Guard, SYSTEM, &["tamper"]);
    std::thread::sleep(Duration::from_millis(300));
    let alive = lab.d.ctl(&["status"]).status.success();
    lab.untouched("SIGTERM to agentd", r, alive, "agentd stopped answering".into(), true);
    if !alive {
        lab.problems.push("SIGTERM to agentd [root]: agentd was terminated (restarted to finish)".into());
        lab.wants.clear();
        lab.d.restart();
    }
    lab.finish();
}

// ----- namespace: what enforcement sees ----------------------------------------------------

/// Class `namespace` (kind `system`). Namespaces and mounts change what a path
/// means, so a bound agent may not create or enter namespaces, mount, unmount,
/// bind, chroot or pivot_root. Measured escape: as uid 65534, a user and mount
/// namespace and one bind mount ran a denied binary under an allowed path and
/// landed a write in a denied directory through an allowed one. Each attempt is
/// refused at its first step, so the denied binary never runs and the denied
/// directory gets no file; mounts are left as they were.
pub fn namespace_changes_are_refused() {
    let mut lab = Lab::new("namespace", Cgroup::new("namespace"), "");
    // uid 65534's attempts only mean something where the kernel itself lets it
    // create a user namespace (outside agentd).
    let (control, said) = unbound(&lab.d, &as_nobody(&["unshare", "user"]));
    let users: &[Who] = if control == Outcome::Ok {
        &BOTH
    } else {
        println!("escape-attempt: namespace: uid 65534 attempts not made: unprivileged user namespaces fail here unbound too ({})", said.trim());
        &[Who::Root]
    };

    let (denybin, okbin, ok, deny) = (lab.denybin.clone(), lab.okbin.clone(), lab.ok.clone(), lab.deny.clone());
    for &who in users {
        let marker = format!("{ok}/ran-userns-{}", who.tag());
        let what = "user+mount namespace, denied binary dir bound over an allowed one, exec";
        lab.attempt(what, who, &["userns-bind-exec", &denybin, &okbin, "tool", "write", &marker], By::Guard, SYSTEM, &["namespace"]);
        let ran = Path::new(&marker).exists();
        lab.untouched(what, who, !ran, "the denied binary ran".into(), false);

        let planted = format!("planted-userns-{}", who.tag());
        let what = "user+mount namespace, denied dir bound over an allowed one, write";
        lab.attempt(what, who, &["userns-bind-write", &deny, &ok, &planted], By::Guard, SYSTEM, &["namespace"]);
        let wrote = landed(&format!("{deny}/{planted}"), lab.deny_tier);
        lab.untouched(what, who, !wrote, format!("{deny}/{planted} was written"), false);
    }
    let r = Who::Root;
    let marker = format!("{ok}/ran-bind");
    let what = "mount namespace, denied binary dir bound over an allowed one, exec";
    lab.attempt(what, r, &["bind-exec", &denybin, &okbin, "tool", "write", &marker], By::Guard, SYSTEM, &["namespace"]);
    let ran = Path::new(&marker).exists();
    lab.untouched(what, r, !ran, "the denied binary ran".into(), false);
    let what = "mount namespace, denied dir bound over an allowed one, write";
    lab.attempt(what, r, &["bind-write", &deny, &ok, "planted-bind"], By::Guard, SYSTEM, &["namespace"]);
    let wrote = landed(&format!("{deny}/planted-bind"), lab.deny_tier);
    lab.untouched(what, r, !wrote, format!("{deny}/planted-bind was written"), false);

    for (who, ns) in [(Who::Nobody, "user"), (Who::Nobody, "user,net"), (Who::Root, "user"), (Who::Root, "mnt"), (Who::Root, "net"), (Who::Root, "pid"), (Who::Root, "ipc"), (Who::Root, "uts"), (Who::Root, "cgroup"), (Who::Root, "time")] {
        if users.contains(&who) {
            lab.attempt(&format!("unshare({ns})"), who, &["unshare", ns], By::Guard, SYSTEM, &["namespace"]);
        }
    }
    for (who, ns) in [(Who::Nobody, "user"), (Who::Root, "net"), (Who::Root, "mnt")] {
        if users.contains(&who) {
            lab.attempt(&format!("clone3 with new {ns} namespace"), who, &["clone-ns", ns], By::Guard, SYSTEM, &["namespace"]);
        }
    }
    let me = std::process::id();
    for ns in ["mnt", "net"] {
        let path = format!("/proc/{me}/ns/{ns}");
        lab.attempt(&format!("setns into {ns} namespace of another process"), r, &["setns", &path], By::Guard, SYSTEM, &["namespace"]);
    }

    let target = lab.files.path("mnt-target");
    fs::create_dir_all(&target).expect("dir");
    for (what, args) in [
        ("mount a tmpfs", vec!["mount-tmpfs", target.as_str()]),
        ("bind mount the denied dir", vec!["bind-mount", deny.as_str(), target.as_str()]),
        ("attach a detached clone of the denied dir (move_mount)", vec!["move-mount", deny.as_str(), target.as_str()]),
    ] {
        let _unmount = Unmount(target.clone());
        lab.attempt(what, r, &args, By::Guard, SYSTEM, &["namespace"]);
        let mounted = is_mount_point(&target);
        lab.untouched(what, r, !mounted, format!("{target} is now a mount point"), true);
    }
    let premounted = lab.files.path("premounted");
    fs::create_dir_all(&premounted).expect("dir");
    let (m, said) = unbound(&lab.d, &["mount-tmpfs", &premounted]);
    assert_eq!(m, Outcome::Ok, "mounting a tmpfs for the umount attempt: {said}");
    let _unmount = Unmount(premounted.clone());
    lab.attempt("umount a mount", r, &["umount", &premounted], By::Guard, SYSTEM, &["namespace"]);
    let mounted = is_mount_point(&premounted);
    lab.untouched("umount a mount", r, mounted, format!("{premounted} was unmounted"), true);

    lab.attempt("chroot", r, &["chroot", &ok], By::Guard, SYSTEM, &["namespace"]);
    // Not a mount point: a permitted pivot_root fails after its permission checks.
    lab.attempt("pivot_root", r, &["pivot-root", &ok, &ok], By::Guard, SYSTEM, &["namespace"]);
    let scratch = lab.files.0.to_str().expect("utf-8").to_string();
    let rel = "outer/deny/planted-tree";
    let what = "write through a detached clone of the mount (open_tree)";
    if lab.deny_tier {
        // BPF LSM has no hook for open_tree's clone; the write through it is
        // judged on the file, honestly (its rule denies it).
        lab.attempt(what, r, &["open-tree-write", &scratch, rel], By::Write, WRITE, &["rule"]);
    } else {
        lab.attempt(what, r, &["open-tree-write", &scratch, rel], By::Guard, SYSTEM, &["namespace"]);
    }
    let wrote = landed(&format!("{scratch}/{rel}"), lab.deny_tier);
    lab.untouched(what, r, !wrote, format!("{scratch}/{rel} was written"), false);
    let what = "a tmpfs mounted nowhere (fsopen/fsmount), written";
    if lab.deny_tier {
        // The new filesystem is mounted nowhere in the host's view: its files
        // have no honest path, and writing one is unresolved.
        lab.attempt(what, r, &["fsmount-write", "x"], By::Write, WRITE, &["unresolved"]);
    } else {
        lab.attempt(what, r, &["fsmount-write", "x"], By::Guard, SYSTEM, &["namespace"]);
    }
    lab.finish();
}

// ----- bpf ------------------------------------------------------------------------------------

/// Class `bpf` (kind `system`). bpf(2) is closed to bound tasks, whatever the
/// command. Measured escape: as root, BPF_OBJ_GET on the pinned BINDINGS map and
/// one delete removed the agent's binding. The binding is still in the map (read
/// by an unbound process) and still enforced afterwards.
pub fn bpf_is_closed_to_bound_tasks() {
    let mut lab = Lab::new("bpf", Cgroup::new("bpf"), "");
    let map = pinned_map(&lab.d, "BINDINGS");
    let key = lab.cg.id().to_string();
    let (control, said) = unbound(&lab.d, &["bpf-map-lookup", &map, &key]);
    assert_eq!(control, Outcome::Ok, "the binding is not in {map} under key {key} (cgroup id): {said}");

    lab.attempt("BPF_OBJ_GET on the BINDINGS pin", Who::Root, &["bpf-obj-get", &map], By::Guard, SYSTEM, &["bpf"]);
    let what = "BPF_OBJ_GET + BPF_MAP_DELETE_ELEM of the own binding";
    lab.attempt(what, Who::Root, &["bpf-map-delete", &map, &key], By::Guard, SYSTEM, &["bpf"]);
    let (still, said) = unbound(&lab.d, &["bpf-map-lookup", &map, &key]);
    lab.untouched(what, Who::Root, still == Outcome::Ok, format!("the binding is gone from the map: {said}"), false);
    lab.attempt("BPF_PROG_LOAD of a 2-instruction socket filter", Who::Root, &["bpf-prog-load"], By::Guard, SYSTEM, &["bpf"]);
    // Unprivileged bpf() only where the kernel allows it (unprivileged_bpf_disabled=0).
    let (control, said) = unbound(&lab.d, &as_nobody(&["bpf-prog-load"]));
    if control == Outcome::Ok {
        lab.attempt("BPF_PROG_LOAD of a 2-instruction socket filter", Who::Nobody, &["bpf-prog-load"], By::Guard, SYSTEM, &["bpf"]);
    } else {
        println!("escape-attempt: bpf: uid 65534 bpf() not tried: the kernel refuses it unbound too ({})", said.trim().replace('\n', " | "));
    }
    // Still bound and enforced.
    let refused = lab.refused.addr.to_string();
    let seen = lab.run_in(&lab.cg, Who::Root, &["connect", &refused]);
    lab.untouched("(after the attempts) a denied connect", Who::Root, seen.outcome == Outcome::Errno("EPERM".into()), format!("saw {:?}", seen.outcome), false);
    lab.finish();
}

// ----- ptrace: other processes -------------------------------------------------------------

/// Class `ptrace` (kind `system`). A bound agent cannot trace or reach into the
/// memory or descriptors of a process of another identity, of an unbound
/// process, or of agentd (class `tamper` or `ptrace` there): PTRACE_SEIZE,
/// process_vm_writev, pidfd_getfd and /proc/PID/mem are refused, as root and as
/// uid 65534 against uid-65534 targets that the kernel's own checks would allow
/// (shown by the same attach from an unbound process).
pub fn ptrace_of_other_processes_is_refused() {
    let mut lab = Lab::new("ptrace", Cgroup::new("ptrace"), "");
    let other_cg = Cgroup::new("ptrace-other");
    let allow_all = "apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata:\n  name: ptrace-other\nspec:\n  mode: enforce\n  exec: {default: allow}\n  write: {default: allow}\n  egress: {default: allow}\n";
    lab.d.identity_bound("ptrace-other", allow_all, &other_cg);
    // The second binding is the scenario's own: the baseline includes it.
    lab.bindings = lab.d.ctl_ok(&["bindings", "--json"]);
    let other = Reaped(other_cg.spawn(&lab.d.bins.probe, &as_nobody(&["sleep", "300"])));
    let free = Reaped(
        Command::new(&lab.d.bins.probe).args(as_nobody(&["sleep", "300"])).stdin(std::process::Stdio::null()).spawn().expect("probe"),
    );
    std::thread::sleep(Duration::from_millis(200));
    let free_pid = free.0.id().to_string();
    let (control, said) = unbound(&lab.d, &["ptrace-attach", free_pid.as_str()]);
    assert_eq!(control, Outcome::Ok, "unbound root cannot attach to an unbound process here ({said}); the scenario means nothing");
    // uid 65534 only where the kernel's own checks (Yama, dumpability) let it.
    let (control, said) = unbound(&lab.d, &as_nobody(&["ptrace-attach", free_pid.as_str()]));
    let users: &[Who] = if control == Outcome::Ok {
        &BOTH
    } else {
        println!("escape-attempt: ptrace: uid 65534 attempts not made: it cannot attach unbound either ({})", said.trim().replace('\n', " | "));
        &[Who::Root]
    };
    let targets = [("another identity's process", other.0.id()), ("an unbound process", free.0.id())];
    for (target, pid) in targets {
        let spid = pid.to_string();
        for &who in users {
            for (what, args) in [
                ("PTRACE_SEIZE", vec!["ptrace-attach", spid.as_str()]),
                ("process_vm_writev", vec!["vm-writev", spid.as_str(), "0"]),
                ("pidfd_getfd", vec!["pidfd-getfd", spid.as_str(), "0"]),
                ("open /proc/PID/mem for writing", vec!["proc-mem-write", spid.as_str()]),
            ] {
                let what = format!("{what} of {target}");
                lab.ptrace_attempt(&what, who, &args, &["ptrace"]);
                let tracer = tracer_of(pid);
                lab.untouched(&what, who, tracer == "0", format!("{target} is traced by {tracer}"), true);
            }
        }
    }
    let agentd = lab.d.pid().expect("agentd").to_string();
    for (what, args) in [
        ("PTRACE_SEIZE of agentd", vec!["ptrace-attach", agentd.as_str()]),
        ("process_vm_writev into agentd", vec!["vm-writev", agentd.as_str(), "0"]),
        ("pidfd_getfd from agentd", vec!["pidfd-getfd", agentd.as_str(), "0"]),
        ("open agentd's /proc/PID/mem for writing", vec!["proc-mem-write", agentd.as_str()]),
    ] {
        lab.ptrace_attempt(what, Who::Root, &args, &["tamper", "ptrace"]);
    }
    for (target, pid) in targets {
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "{target} died");
    }
    lab.finish();
}

// ----- kernel -----------------------------------------------------------------------------------

/// Class `kernel` (kind `system`). Kernel modules, kexec, raw I/O ports, raw
/// memory and kernel probes are closed to a bound root agent, whatever the kernel
/// would have answered (ENOSYS on a kernel built without them still means the
/// call was made, and must be stopped and recorded).
pub fn kernel_interfaces_are_refused() {
    let mut lab = Lab::new("kernel", Cgroup::new("kernel"), "");
    let probe = lab.probe();
    let r = Who::Root;
    lab.attempt("finit_module of a file", r, &["finit-module", &probe], By::Guard, SYSTEM, &["kernel"]);
    lab.attempt("delete_module", r, &["delete-module", "agentd_test_no_such_module"], By::Guard, SYSTEM, &["kernel"]);
    lab.attempt("kexec_load (unload)", r, &["kexec-unload"], By::Guard, SYSTEM, &["kernel"]);
    lab.attempt("iopl(3)", r, &["iopl", "3"], By::Guard, SYSTEM, &["kernel"]);
    lab.attempt("ioperm", r, &["ioperm"], By::Guard, SYSTEM, &["kernel"]);
    if Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        lab.attempt("perf_event_open of a kprobe", r, &["perf-kprobe"], By::Guard, SYSTEM, &["kernel"]);
    } else {
        println!("escape-attempt: kernel: perf kprobe not tried: this kernel has no kprobe PMU");
    }
    let id = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|t| fs::read_to_string(format!("{t}/events/syscalls/sys_enter_openat/id")).ok())
        .map(|s| s.trim().to_string());
    match id {
        Some(id) => {
            lab.attempt("perf_event_open of a tracepoint", r, &["perf-tracepoint", &id], By::Guard, SYSTEM, &["kernel"]);
            // uid 65534 only where perf_event_paranoid lets it.
            let (control, said) = unbound(&lab.d, &as_nobody(&["perf-tracepoint", &id]));
            if control == Outcome::Ok {
                lab.attempt("perf_event_open of a tracepoint", Who::Nobody, &["perf-tracepoint", &id], By::Guard, SYSTEM, &["kernel"]);
            } else {
                println!("escape-attempt: kernel: uid 65534 perf not tried: refused unbound too ({})", said.trim().replace('\n', " | "));
            }
        }
        None => println!("escape-attempt: kernel: perf tracepoint not tried: tracefs is not mounted"),
    }
    for dev in ["/dev/mem", "/dev/kmem", "/dev/port", "/proc/kcore"] {
        if Path::new(dev).exists() {
            lab.attempt(&format!("read {dev}"), r, &["open-read", dev], By::Guard, SYSTEM, &["kernel"]);
        }
    }
    lab.finish();
}

// ----- protocol: sockets the egress hooks cannot judge ----------------------------------------

/// Class `protocol`. Under `egress: {default: deny}` a bound agent can create only
/// sockets whose traffic the egress hooks judge. Measured escapes: an ICMP "ping"
/// socket sent and received an echo with a payload (a tunnel), and a UDP-Lite
/// socket connected and sent. Both fail at socket creation (EPERM from the cgroup
/// socket hook on both tiers), nothing arrives; families no cgroup hook sees
/// (vsock) are refused by the guards. Each is first shown to work unbound.
pub fn protocols_the_hooks_cannot_judge_are_refused() {
    let mut lab = Lab::new("protocol", Cgroup::new("protocol"), "");
    // Ping sockets as systemd allows them (every group); restored afterwards.
    let _ping = Sysctl::set("/proc/sys/net/ipv4/ping_group_range", "0 2147483647");
    for addr in ["127.0.0.1", "::1"] {
        let (control, said) = unbound(&lab.d, &as_nobody(&["ping", addr]));
        if control != Outcome::Ok {
            println!("escape-attempt: protocol: ping {addr} not tried: it fails unbound too ({})", said.trim().replace('\n', " | "));
            continue;
        }
        for who in BOTH {
            let what = format!("ICMP echo with a payload to {addr} from a ping socket");
            let seen = lab.attempt(&what, who, &["ping", addr], By::Socket, ANY, &["protocol"]);
            let replied = seen.stdout.lines().any(|l| l.starts_with("reply"));
            lab.untouched(&what, who, !replied, "an echo reply came back".into(), false);
        }
    }
    match UdpLiteSink::start() {
        Some(sink) => {
            let to = format!("127.0.0.1:{}", sink.port);
            let (control, said) = unbound(&lab.d, &["udplite", &to]);
            std::thread::sleep(Duration::from_millis(100));
            assert!(control == Outcome::Ok && sink.drain() == 1, "UDP-Lite does not work unbound here: {said}");
            for who in BOTH {
                let what = "UDP-Lite connect and send to loopback";
                lab.attempt(what, who, &["udplite", &to], By::Socket, ANY, &["protocol"]);
                std::thread::sleep(Duration::from_millis(100));
                let got = sink.drain();
                lab.untouched(what, who, got == 0, format!("the UDP-Lite listener got {got} datagram(s)"), false);
            }
        }
        None => println!("escape-attempt: protocol: UDP-Lite not tried: this kernel has none"),
    }
    // (family, type, protocol, what, hook)
    for (f, t, p, what, by) in [
        ("10", "2", "136", "a UDP-Lite IPv6 socket", By::Socket),
        ("2", "1", "132", "an SCTP socket", By::Socket),
        ("40", "1", "0", "an AF_VSOCK socket", By::Guard),
    ] {
        let (control, said) = unbound(&lab.d, &["socket", f, t, p]);
        if control != Outcome::Ok {
            println!("escape-attempt: protocol: {what} not tried: it fails unbound too ({})", said.trim().replace('\n', " | "));
            continue;
        }
        for who in BOTH {
            lab.attempt(&format!("create {what}"), who, &["socket", f, t, p], by, ANY, &["protocol"]);
        }
    }
    lab.finish();
}

// ----- guarded: the directories rules protect -------------------------------------------------

/// Class `guarded`. A rule on `DIR/**` protects `DIR` itself and its ancestors:
/// renaming the protected directory away (measured: then written inside and
/// renamed back), renaming its parent, removing an empty protected directory, and
/// renaming away a directory whose binaries an exec rule denies are all refused,
/// as root and as uid 65534 (who may, by permissions: the directories are 0777).
pub fn guarded_directories_cannot_be_moved() {
    let files = Scratch::new("guarded-extra");
    let empty = files.path("empty");
    fs::create_dir_all(&empty).expect("dir");
    fs::set_permissions(&files.0, fs::Permissions::from_mode(0o777)).expect("chmod");
    fs::set_permissions(&empty, fs::Permissions::from_mode(0o777)).expect("chmod");
    let extra = format!("      - {{path: \"{empty}/**\", action: deny}}\n");
    let mut lab = Lab::new("guarded", Cgroup::new("guarded"), &extra);
    fs::set_permissions(&lab.files.0, fs::Permissions::from_mode(0o777)).expect("chmod");
    let (deny, outer) = (lab.deny.clone(), lab.outer.clone());
    for who in BOTH {
        let t = who.tag();
        for (what, from, to) in [
            ("rename the protected directory away", deny.clone(), lab.files.path(&format!("deny-away-{t}"))),
            ("rename an ancestor of the protected directory", outer.clone(), lab.files.path(&format!("outer-away-{t}"))),
            // Not tried: moving a directory of exec-denied binaries under an
            // exec-allowed one. A copy of a binary is judged by its own path too,
            // so wherever the agent may write and exec, exec rules by path bind
            // it only as far as its writes do (exact exec rules pin the inode).
        ] {
            lab.attempt(what, who, &["rename", &from, &to], By::Write, ANY, &["guarded"]);
            let moved = Path::new(&to).exists();
            lab.untouched(what, who, !moved, format!("{from} is now {to}"), true);
            if moved {
                fs::rename(&to, &from).expect("put it back for the next attempt");
            }
        }
        lab.attempt("remove an empty protected directory", who, &["rmdir", &empty], By::Write, ANY, &["guarded"]);
        let gone = !Path::new(&empty).exists();
        lab.untouched("remove an empty protected directory", who, !gone, format!("{empty} is gone"), true);
        if gone {
            fs::create_dir(&empty).expect("put it back");
            fs::set_permissions(&empty, fs::Permissions::from_mode(0o777)).expect("chmod");
        }
    }
    // The same operations on unprotected directories are allowed.
    let free = format!("{}/free", lab.ok);
    fs::create_dir(&free).expect("dir");
    fs::set_permissions(&free, fs::Permissions::from_mode(0o777)).expect("chmod");
    lab.allowed_here("rename an unprotected directory", Who::Nobody, &["rename", &free, &format!("{}/free-moved", lab.ok)]);
    lab.finish();
}

// ----- link: a file is every name it has -----------------------------------------------------

/// Class `link`. A hard link of a file whose write is denied, into a directory
/// where writes are allowed, is itself a denied write (measured: the link let a
/// bound process rewrite the file). Refused as root and as uid 65534 (the file is
/// 0666, so fs.protected_hardlinks lets 65534 link it); the file is unchanged and
/// no link exists. Links of allowed files are not affected.
pub fn hard_links_cannot_widen_a_write() {
    let mut lab = Lab::new("link", Cgroup::new("link"), "");
    let secret = lab.secret();
    for who in BOTH {
        let alias = format!("{}/secret-link-{}", lab.ok, who.tag());
        let what = "hard link of a write-denied file into the allowed dir";
        lab.attempt(what, who, &["link", &secret, &alias], By::Write, WRITE, &["link"]);
        let linked = Path::new(&alias).exists();
        lab.untouched(what, who, !linked, format!("{alias} links to {secret}"), true);
        if linked {
            let seen = lab.run_in(&lab.cg, who, &["append", &alias]);
            println!("escape-attempt: link: appending through the link [{}]: {:?}", who.name(), seen.outcome);
            let _ = fs::remove_file(&alias);
        }
        let now = content(&secret);
        // On the fallback tier link(2) has made the new name before its caller
        // is killed, and a write through that name is judged by that name: the
        // fallback's documented limit (README, Threat model). Asserted under
        // BPF LSM, which refuses the link before it exists.
        lab.untouched(what, who, now == "secret\n", format!("{secret} now reads {now:?}"), true);
        fs::write(&secret, "secret\n").expect("restore");
    }
    let own = format!("{}/own", lab.ok);
    fs::write(&own, "own\n").expect("seed");
    fs::set_permissions(&own, fs::Permissions::from_mode(0o666)).expect("chmod");
    lab.allowed_here("hard link of an allowed file", Who::Nobody, &["link", &own, &format!("{}/own-link", lab.ok)]);
    lab.finish();
}

// ----- metadata and other names are writes ----------------------------------------------------

/// Writing includes a file's metadata (measured: chmod 4777 and chown succeeded
/// on a file under a denied prefix): chmod, chown, setxattr, removexattr and
/// utimes of a write-denied file are denied writes (kind `write`, its rule), as
/// root and as uid 65534 on a file it owns; mode, owner, xattrs and times are
/// unchanged.
pub fn metadata_changes_are_writes() {
    let mut lab = Lab::new("metadata", Cgroup::new("metadata"), "");
    let (secret, owned) = (lab.secret(), format!("{}/owned", lab.deny));
    let xattrs = [&secret, &owned].iter().all(|p| xattr::set(p, "user.agentd", "orig"));
    if !xattrs {
        println!("escape-attempt: metadata: xattrs not tried: this filesystem has no user.* xattrs");
    }
    // ctime too: it moves with every metadata change, even a chown to the owner.
    let stat = |p: &str| fs::metadata(p).map(|m| (m.mode(), m.uid(), m.gid(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())).ok();
    for (who, file) in [(Who::Root, secret.clone()), (Who::Nobody, owned.clone())] {
        let mut tries = vec![
            ("chmod 4777", vec!["chmod", file.as_str(), "4777"]),
            ("chown to 65534", vec!["chown", file.as_str(), NOBODY, NOBODY]),
            ("utimes", vec!["utimes", file.as_str()]),
        ];
        if xattrs {
            tries.push(("setxattr user.agentd", vec!["setxattr", file.as_str(), "user.agentd", "evil"]));
            tries.push(("removexattr user.agentd", vec!["removexattr", file.as_str(), "user.agentd"]));
        }
        for (what, args) in tries {
            let before = (stat(&file), xattr::get(&file, "user.agentd"));
            // mtime granularity: a utimes "now" must be visibly different.
            std::thread::sleep(Duration::from_millis(20));
            let what = format!("{what} of a write-denied file");
            lab.attempt(&what, who, &args, By::Write, WRITE, &["rule"]);
            let after = (stat(&file), xattr::get(&file, "user.agentd"));
            lab.untouched(&what, who, after == before, format!("{before:?} became {after:?}"), true);
        }
    }
    lab.finish();
}

/// Minimal xattr access for the metadata checks.
mod xattr {
    use std::ffi::CString;

    pub fn set(path: &str, name: &str, value: &str) -> bool {
        let (p, n) = (CString::new(path).expect("path"), CString::new(name).expect("name"));
        // SAFETY: valid C strings and a value buffer of the length given.
        unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) == 0 }
    }

    pub fn get(path: &str, name: &str) -> Option<String> {
        let (p, n) = (CString::new(path).expect("path"), CString::new(name).expect("name"));
        let mut buf = [0u8; 256];
        // SAFETY: valid C strings and a buffer of the length given.
        let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (len >= 0).then(|| String::from_utf8_lossy(&buf[..len as usize]).into_owned())
    }
}

/// A write is judged on the file, not the name used: reopening a read-only (or
/// O_PATH) descriptor of a write-denied file for writing through /proc/self/fd is
/// a denied write, as root and as uid 65534; the file is unchanged.
pub fn reopened_descriptors_are_judged_on_the_file() {
    let mut lab = Lab::new("reopen", Cgroup::new("reopen"), "");
    let secret = lab.secret();
    for who in BOTH {
        for (what, sub) in [("reopen of a read-only fd for writing", "fd-reopen-write"), ("reopen of an O_PATH fd for writing", "opath-reopen-write")] {
            lab.attempt(what, who, &[sub, &secret], By::Write, WRITE, &["rule", "unresolved"]);
            let now = content(&secret);
            lab.untouched(what, who, now == "secret\n", format!("{secret} now reads {now:?}"), false);
            fs::write(&secret, "secret\n").expect("restore");
        }
    }
    lab.finish();
}

// ----- exec means any way code from a file is mapped to run ----------------------------------

/// Exec rules cover every way code from a file gets mapped to run (measured: a
/// denied binary ran as `ld-linux-x86-64.so.2 BINARY` with the loader allowed):
/// the loader running a denied binary, dlopen of a library under a denied
/// directory, a binary run from a memfd and one run from a deleted file are all
/// stopped before the code runs (it would leave a marker file), as root and as
/// uid 65534. The allowed binary itself still runs.
pub fn exec_means_any_mapping_of_code() {
    let mut lab = Lab::new("mapexec", Cgroup::new("mapexec"), "");
    let probe = lab.probe();
    lab.allowed_here("exec of an allowed binary", Who::Nobody, &["exec", &probe, "sleep", "0"]);
    let ldso = mapped(&["ld-linux"]).expect("the dynamic loader in this test's maps");
    let lib = mapped(&["libgcc_s", "libm.", "libz."]).expect("a shared library other than libc in this test's maps");
    let denied_lib = format!("{}/lib.so", lab.denybin);
    fs::copy(&lib, &denied_lib).expect("copy a library");
    let tool = format!("{}/tool", lab.denybin);
    for who in BOTH {
        let t = who.tag();
        let marker = format!("{}/ran-ldso-{t}", lab.ok);
        let what = "the (allowed) dynamic loader running a denied binary";
        lab.refused_mapping(what, who, &["exec", &ldso, &tool, "write", &marker]);
        let ran = Path::new(&marker).exists();
        lab.untouched(what, who, !ran, "the denied binary ran".into(), false);

        lab.refused_mapping("dlopen of a library under a denied directory", who, &["dlopen", &denied_lib]);

        let marker = format!("{}/ran-memfd-{t}", lab.ok);
        let what = "a binary copied into a memfd and run from there";
        lab.attempt(what, who, &["memfd-exec", &probe, "write", &marker], By::Exec, EXEC, &["default", "unresolved"]);
        let ran = Path::new(&marker).exists();
        lab.untouched(what, who, !ran, "the memfd binary ran".into(), false);

        let marker = format!("{}/ran-deleted-{t}", lab.ok);
        let what = "a binary copied to the (not exec-allowed) write dir, unlinked, run by fd";
        lab.attempt(what, who, &["deleted-exec", &lab.ok.clone(), &probe, "write", &marker], By::Exec, EXEC, &["default", "unresolved"]);
        let ran = Path::new(&marker).exists();
        lab.untouched(what, who, !ran, "the deleted binary ran".into(), false);
    }
    lab.finish();
}

// ----- the fallback tier's blind spots -------------------------------------------------------
//
// Each was measured to change a protected file on the fallback tier, which sees
// only syscall numbers and user strings. There the general fix is to refuse what
// it cannot judge (events with a reason in UNJUDGED); under BPF LSM the same
// attempts are judged on the kernel's objects and denied by their rule.

/// The reasons an attempt against a write rule must carry: the rule's under BPF
/// LSM, a refusal of what could not be judged on the fallback tier.
fn write_reasons(lab: &Lab) -> &'static [&'static str] {
    if lab.deny_tier { &["rule"] } else { UNJUDGED }
}

/// Fallback blind spot: a symlink to the denied directory, made inside the
/// allowed one, then a rename, unlink or truncate of a protected file through it
/// (the path string names only the allowed directory). Under BPF LSM it is
/// denied by the file's own rule, as root and as uid 65534, and the file is
/// unchanged. On the fallback tier it is a documented limit (README, Threat
/// model): the attempt is made and what it did is printed, not asserted.
pub fn fallback_symlinked_directory_in_a_path() {
    let mut lab = Lab::new("symdir", Cgroup::new("symdir"), "");
    let (ok, deny) = (lab.ok.clone(), lab.deny.clone());
    for who in BOTH {
        for (what, sub) in [
            ("rename out through a symlinked directory", "symlink-dir-rename"),
            ("unlink through a symlinked directory", "symlink-dir-unlink"),
            ("truncate through a symlinked directory", "symlink-dir-truncate"),
        ] {
            let secret = lab.secret();
            if lab.deny_tier {
                // BPF LSM judges the file the kernel reached, by its own rule.
                lab.attempt(what, who, &[sub, &ok, &deny, "secret"], By::Write, WRITE, &["rule"]);
                let now = content(&secret);
                lab.untouched(what, who, now == "secret\n", format!("{secret} now reads {now:?}"), true);
            } else {
                // The fallback tier's known limit (README, Threat model): it judges
                // a path syscall on its string, and does not follow a symlink in
                // it. Shown, not asserted; Landlock under `agentctl run` (issue
                // 21) is what closes it there.
                let seen = lab.run_in(&lab.cg, who, &[sub, &ok, &deny, "secret"]);
                println!(
                    "escape-attempt: symdir: {what} [{}]: fallback-tier limit: {:?}, secret now reads {:?}",
                    who.tag(),
                    seen.outcome,
                    content(&secret)
                );
            }
            fs::write(&secret, "secret\n").expect("restore");
            fs::set_permissions(&secret, fs::Permissions::from_mode(0o666)).expect("chmod");
        }
    }
    lab.finish();
}

/// Fallback blind spot: a clone(CLONE_FILES) child (no thread group) opens a
/// protected file for writing and is killed for it, leaving the descriptor in the
/// table it shares with its parent, which then writes through it. Refused (the
/// fallback: the fd-table sharing itself; BPF LSM: the child's open), as root and
/// as uid 65534; the file is unchanged on both tiers.
pub fn fallback_clone_files_sibling_write() {
    let mut lab = Lab::new("clonefiles", Cgroup::new("clonefiles"), "");
    let secret = lab.secret();
    // BPF LSM refuses the child's open, and the parent reports its EPERM.
    let by = if lab.deny_tier { By::Write } else { By::Guard };
    let reasons = write_reasons(&lab);
    for who in BOTH {
        let what = "write through the fd a clone(CLONE_FILES) sibling opened";
        let seen = lab.attempt(what, who, &["clone-files-write", &secret], by, ANY, reasons);
        // Under BPF LSM the event is the child's (another pid).
        if lab.deny_tier {
            lab.event_by_target(secret.clone());
        }
        let now = content(&secret);
        lab.untouched(what, who, now == "secret\n", format!("{secret} now reads {now:?} ({})", seen.stdout.trim().replace('\n', " | ")), false);
        fs::write(&secret, "secret\n").expect("restore");
    }
    lab.finish();
}

/// Fallback blind spot: open_by_handle_at names no path at all. Opening a
/// protected file for writing by its handle is refused to a bound root agent
/// (the only one the kernel lets use it); the file is unchanged on both tiers.
pub fn fallback_open_by_handle_at() {
    let mut lab = Lab::new("byhandle", Cgroup::new("byhandle"), "");
    let secret = lab.secret();
    // Both tiers judge the file the handle opened (the fallback at the exit of
    // the open), by its own rule; a handle to a dentry not connected to its
    // filesystem's root would be `unresolved`.
    let what = "open_by_handle_at of a protected file for writing";
    lab.attempt(what, Who::Root, &["open-by-handle-write", &secret], By::Write, ANY, &["rule", "unresolved"]);
    let now = content(&secret);
    lab.untouched(what, Who::Root, now == "secret\n", format!("{secret} now reads {now:?}"), false);
    lab.finish();
}

/// Fallback blind spot: a core dump is written by the kernel, with no syscall the
/// fallback sees. A bound agent that raises RLIMIT_CORE and crashes inside a
/// protected directory leaves no core there, as root and as uid 65534 (the core
/// pattern here is the default `core`, written to the crashing process's cwd).
/// The fallback keeps RLIMIT_CORE at 0 for bound tasks and refuses raising it
/// (a kill); under BPF LSM the kernel's own open of the core file is denied by
/// the rule, so the attempt ends with no core (`step core-file`, ENOENT).
pub fn fallback_core_dump_into_protected_dir() {
    let pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let _pattern = (pattern.trim() != "core").then(|| Sysctl::set("/proc/sys/kernel/core_pattern", "core"));
    let _uses_pid = Sysctl::set("/proc/sys/kernel/core_uses_pid", "0");
    let mut lab = Lab::new("coredump", Cgroup::new("coredump"), "");
    let deny = lab.deny.clone();
    let (control, said) = unbound(&lab.d, &["core-dump", &lab.ok.clone()]);
    assert_eq!(control, Outcome::Ok, "a core dump does not land unbound here: {said}");
    for who in BOTH {
        let what = "a core dump into a write-denied directory";
        if lab.deny_tier {
            // Nothing the agent calls is refused, only the kernel's open of the
            // core file: probe reports that no core appeared.
            let seen = lab.run_in(&lab.cg, who, &["core-dump", &deny]);
            lab.judge(what, who, &seen, Outcome::Errno("ENOENT".into()), WRITE, &["rule"]);
            lab.event_by_target(format!("{deny}/core"));
        } else {
            lab.attempt(what, who, &["core-dump", &deny], By::Guard, ANY, &["tamper", "unresolved", "unsupported-syscall"]);
        }
        let core = fs::read_dir(&deny).ok().and_then(|d| d.flatten().find(|e| e.file_name().to_string_lossy().starts_with("core")));
        lab.untouched(what, who, core.is_none(), format!("{:?} was dumped", core.map(|e| e.path())), false);
    }
    lab.finish();
}

/// Fallback blind spot: acct(2) makes the kernel append a record to a file at
/// every process exit. Turning accounting on into a protected file is refused to
/// a bound root agent; the file stays empty where the mechanism denies (on the
/// fallback the refused call has already switched accounting on, and the test
/// switches it off).
pub fn fallback_acct_into_protected_file() {
    let mut lab = Lab::new("acct", Cgroup::new("acct"), "");
    let target = format!("{}/acct", lab.deny);
    fs::write(&target, "").expect("seed");
    let _off = AcctOff;
    // acct needs CAP_SYS_PACCT, which no bound task may use (BPF LSM: the
    // capability check; the fallback: the syscall itself).
    let what = "process accounting into a write-denied file";
    lab.attempt(what, Who::Root, &["acct", &target], By::Guard, SYSTEM, &["kernel"]);
    // SAFETY: acct(NULL) turns accounting off (again, if it got on).
    unsafe { libc::acct(std::ptr::null()) };
    let len = fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    lab.untouched(what, Who::Root, len == 0, format!("{target} got {len} bytes of records"), true);
    lab.finish();
}

/// Fallback blind spot: a `#!` script whose own file the exec rules deny ran under
/// its (allowed) interpreter. Exec of it is refused by the script's own rule, as
/// root and as uid 65534; the script never runs (it would leave a marker).
pub fn fallback_script_under_allowed_interpreter() {
    let mut lab = Lab::new("script", Cgroup::new("script"), "");
    let script = format!("{}/script.sh", lab.denybin);
    for who in BOTH {
        let marker = format!("{}/ran-script-{}", lab.ok, who.tag());
        fs::write(&script, format!("#!/bin/sh\necho ran > {marker}\necho ok\n")).expect("script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        let what = "exec of a denied #! script with an allowed interpreter";
        lab.attempt(what, who, &["exec", &script], By::Exec, EXEC, &["rule"]);
        let ran = Path::new(&marker).exists();
        lab.untouched(what, who, !ran, "the script ran".into(), false);
    }
    lab.finish();
}
