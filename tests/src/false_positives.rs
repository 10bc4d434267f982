//! The false-positive suite: legitimate agent work under the *shipped* example
//! policy must keep working, on both kernel tiers, whatever the enforcement hardens.
//!
//! Each scenario binds a cgroup to `policies/coding-agent.yaml` exactly as shipped,
//! except that its home `/home/alice` is a scratch home (`…/home/alice`, so the work
//! tree `/home/alice/work` and the cache `/home/alice/.cache` move together), then
//! does real work in the work tree through real tools started inside the cgroup:
//! git, a C build with make and gcc, a Python venv with a local package installed
//! offline, an npm install of a local package. It asserts that the work succeeded
//! and that agentd recorded no event for the identity: no denial, no kill, no hold.
//!
//! The tools get the environment an agent launcher would give them: PATH, HOME (the
//! scratch home), LANG=C, and nothing else unless the scenario says why. The scratch
//! home is under /var/tmp, not /tmp: the shipped policy lets the agent write all of
//! /tmp, which would hide a denial of the work tree's rules.
//!
//! Before the event check, each scenario makes one write the policy denies (a file
//! in the home outside the work tree) and waits for its event: agentd reports events
//! in the kernel's order, so once that one is there every earlier denial is too,
//! and the policy was visibly enforcing while the work ran.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{
    harness::{unique, Cgroup, Daemon},
    skip,
};

/// The shipped policy, compiled into the test binary (the VM has no checkout).
const CODING_AGENT: &str = include_str!("../../policies/coding-agent.yaml");
/// The home the shipped policy is written for.
const SHIPPED_HOME: &str = "/home/alice";
/// What each scenario's identity is called.
const IDENTITY: &str = "coder";

/// A command that ran longer than this is stopped and the scenario fails: an `ask`
/// the policy did not mean to raise would otherwise hold a tool for a minute and
/// then look like a slow tool. Generous for TCG emulation.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// A directory removed with everything in it on drop.
struct TempTree(PathBuf);

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A bound agent under the shipped coding-agent policy, with a home and a work tree.
pub struct Agent {
    pub d: Daemon,
    cg: Cgroup,
    /// The scratch home, standing for /home/alice.
    pub home: PathBuf,
    /// `home/work`, standing for /home/alice/work.
    pub work: PathBuf,
    /// Extra environment for every command (beyond PATH, HOME, LANG).
    env: Vec<(String, String)>,
    scenario: String,
    started: Instant,
    _tree: TempTree,
}

impl Agent {
    /// Starts agentd, applies coding-agent.yaml for a scratch home, and binds a fresh
    /// cgroup to identity `coder` on it.
    pub fn start(scenario: &str) -> Agent {
        let started = Instant::now();
        let d = Daemon::start(&format!("fp-{scenario}"));
        let base = PathBuf::from("/var/tmp").join(unique("afp"));
        fs::create_dir_all(&base).expect("scratch base under /var/tmp");
        let tree = TempTree(fs::canonicalize(&base).expect("canonical scratch base"));
        let home = tree.0.join("home/alice");
        let work = home.join("work");
        fs::create_dir_all(&work).expect("work tree");
        // A real home has ~/.cache; the policy allows what is *inside* it (`DIR/**`
        // is not DIR itself), so an agent could not create it.
        fs::create_dir_all(home.join(".cache")).expect("~/.cache");
        let yaml = shipped_policy_for(home.to_str().expect("utf-8 home"));
        d.apply("coding-agent", &yaml);
        d.ctl_ok(&["identity", "create", IDENTITY, "--policy", "coding-agent"]);
        let cg = Cgroup::new(&format!("fp-{scenario}"));
        d.ctl_ok(&["bind", cg.path.to_str().expect("utf-8 cgroup"), IDENTITY]);
        println!("fp {scenario}: agentd up, coding-agent.yaml applied for {} ({:.1} s)", home.display(), started.elapsed().as_secs_f64());
        Agent { d, cg, home, work, env: Vec::new(), scenario: scenario.to_string(), started: Instant::now(), _tree: tree }
    }

    /// Adds `key=value` to every later command's environment.
    pub fn setenv(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// `program args` in the bound cgroup, in `dir` (relative to the work tree), with
    /// the agent's environment and nothing else. A relative `program` is in `dir`.
    fn command(&self, dir: &str, program: &str, args: &[&str]) -> Command {
        let program = if program.starts_with('/') { PathBuf::from(program) } else { self.work.join(dir).join(program) };
        let mut c = self.cg.command(&program, args);
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &self.home)
            .env("LANG", "C")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.work.join(dir));
        c
    }

    /// Runs a step of the work and returns its stdout; fails the scenario (with its
    /// output and the identity's events) unless it exits 0.
    pub fn run(&self, dir: &str, program: &str, args: &[&str]) -> String {
        self.run_with_input(dir, program, args, None)
    }

    /// [`Agent::run`] with `input` on the command's stdin.
    pub fn run_with_input(&self, dir: &str, program: &str, args: &[&str], input: Option<&str>) -> String {
        let step = format!("{program} {}", args.join(" "));
        let t = Instant::now();
        let out = run_with_timeout(self.command(dir, program, args), input, STEP_TIMEOUT);
        let took = t.elapsed().as_secs_f64();
        if !out.status.success() {
            let how = match (out.status.code(), out.status.signal()) {
                (Some(code), _) => format!("exited with {code}"),
                (None, Some(sig)) => format!("was killed by signal {sig}"),
                _ => format!("ended with {}", out.status),
            };
            panic!(
                "{}: `{step}` (in work/{dir}) {how} after {took:.1} s\nstdout:\n{}\nstderr:\n{}\nagentd events for {IDENTITY}:\n{}",
                self.scenario,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                describe(&self.events()),
            );
        }
        println!("fp {}: {took:6.1} s  {step}", self.scenario);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `content` to `rel` (relative to the work tree) through a bound shell, as
    /// an agent's own file edits are: the write is judged too.
    pub fn write(&self, rel: &str, content: &str) {
        let path = self.work.join(rel);
        // Missing directories one at a time, as an editor makes them (`mkdir -p` of
        // an absolute path has its own scenario).
        let mut missing: Vec<&Path> = path.ancestors().skip(1).take_while(|p| !p.exists()).collect();
        missing.reverse();
        for dir in missing {
            self.run("", "/usr/bin/mkdir", &[dir.to_str().expect("utf-8")]);
        }
        let path = path.to_str().expect("utf-8");
        self.run_with_input("", "/usr/bin/sh", &["-c", "cat > \"$1\"", "sh", path], Some(content));
    }

    /// Every event agentd has for the identity.
    fn events(&self) -> Vec<serde_json::Value> {
        let text = self.d.ctl_ok(&["events", "--json"]);
        let all: serde_json::Value = serde_json::from_str(&text).expect("events --json is JSON");
        all["events"].as_array().cloned().unwrap_or_default().into_iter().filter(|e| e["identity"] == IDENTITY).collect()
    }

    /// Ends the scenario: proves the policy was enforcing (one denied write, seen as
    /// an event), then fails if agentd recorded anything else for the identity.
    pub fn assert_no_false_positive(self) {
        let sentinel = self.home.join(".agentd-fp-sentinel");
        let sentinel_path = sentinel.to_str().expect("utf-8").to_string();
        let out = run_with_timeout(self.command("", "/usr/bin/touch", &[&sentinel_path]), None, STEP_TIMEOUT);
        assert!(
            !out.status.success(),
            "{}: a write outside the work tree ({sentinel_path}) succeeded: the policy is not enforcing",
            self.scenario
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let events = loop {
            let events = self.events();
            if events.iter().any(|e| e["target"] == sentinel_path.as_str()) {
                break events;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no event for the denied write to {sentinel_path} within 30 s; events:\n{}",
                    self.scenario,
                    describe(&events)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let unexpected: Vec<serde_json::Value> =
            events.into_iter().filter(|e| e["target"] != sentinel_path.as_str()).collect();
        assert!(
            unexpected.is_empty(),
            "{}: agentd recorded {} event(s) for legitimate work under the shipped coding-agent policy \
             (false positives):\n{}",
            self.scenario,
            unexpected.len(),
            describe(&unexpected)
        );
        println!(
            "fp {}: the work took {:.1} s; no denial, kill or hold for {IDENTITY} (the sentinel write was denied)",
            self.scenario,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// coding-agent.yaml as shipped, for a home at `home` instead of /home/alice.
pub fn shipped_policy_for(home: &str) -> String {
    assert!(CODING_AGENT.contains("/home/alice/work/**"), "coding-agent.yaml no longer names /home/alice/work");
    CODING_AGENT.replace(SHIPPED_HOME, home)
}

/// One line per event: what was decided about what, by which rule, for whom.
fn describe(events: &[serde_json::Value]) -> String {
    if events.is_empty() {
        return "  (none)".to_string();
    }
    events
        .iter()
        .map(|e| {
            format!(
                "  {} {} {} {} (rule #{} {}, reason {}) by pid {} {} ({})",
                e["verdict"].as_str().unwrap_or("?"),
                e["kind"].as_str().unwrap_or("?"),
                e["op"].as_str().unwrap_or(""),
                e["target"].as_str().unwrap_or("?"),
                e["rule_id"],
                e["rule"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or(""),
                e["pid"],
                e["comm"].as_str().unwrap_or(""),
                e["executable"].as_str().unwrap_or(""),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `c` with `input` on stdin, collecting stdout and stderr; kills it (its
/// process group) after `timeout`.
fn run_with_timeout(mut c: Command, input: Option<&str>, timeout: Duration) -> Output {
    use std::os::unix::process::CommandExt as _;
    c.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = c.spawn().unwrap_or_else(|e| panic!("starting {:?}: {e}", c.get_program()));
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(text.as_bytes()).expect("writing the command's stdin");
    }
    let reader = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the command") {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: signalling the process group of our own child (process_group(0)
            // made it its leader), so the tool's children go too.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let status = child.wait().expect("waiting for the killed command");
            let mut err = stderr.join().unwrap_or_default();
            err.extend_from_slice(format!("\n[stopped after {} s]", timeout.as_secs()).as_bytes());
            return Output { status, stdout: stdout.join().unwrap_or_default(), stderr: err };
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

/// Reports a skip naming the missing tools and returns true if any is missing.
fn missing_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !Path::new(t).exists()).collect();
    if missing.is_empty() {
        return false;
    }
    skip(
        test,
        &format!("{} not installed here (`cargo xtask setup` installs the agent tools)", missing.join(", ")),
    );
    true
}

/// git in the agent's own work tree: init, configure the user, add, commit, branch,
/// status, diff, log, merge, tag. The hooks directory is git's own (`git init` fills
/// it with its samples); the agent never writes a hook.
pub fn fp_git_in_the_work_tree() {
    if missing_tools("fp_git_in_the_work_tree", &["/usr/bin/git"]) {
        return;
    }
    let a = Agent::start("git");
    let git = "/usr/bin/git";
    a.run("", git, &["init", "-q", "-b", "main"]);
    a.run("", git, &["config", "user.name", "Coding Agent"]);
    a.run("", git, &["config", "user.email", "agent@example.invalid"]);
    a.write("README.md", "# demo\n");
    a.write("src/lib.c", "int answer(void) { return 42; }\n");
    a.run("", git, &["add", "-A"]);
    a.run("", git, &["commit", "-q", "-m", "initial commit"]);
    a.run("", git, &["switch", "-q", "-c", "feature"]);
    a.write("README.md", "# demo\n\nMore words.\n");
    let status = a.run("", git, &["status", "--porcelain"]);
    assert_eq!(status.trim(), "M README.md", "git status");
    let diff = a.run("", git, &["diff"]);
    assert!(diff.contains("+More words."), "git diff: {diff}");
    a.run("", git, &["commit", "-q", "-am", "more words"]);
    a.run("", git, &["switch", "-q", "main"]);
    a.run("", git, &["merge", "-q", "--no-edit", "--no-ff", "feature"]);
    a.run("", git, &["tag", "v0.1"]);
    let log = a.run("", git, &["log", "--oneline"]);
    assert_eq!(log.lines().count(), 3, "two commits and a merge: {log}");
    let shown = a.run("", git, &["show", "v0.1:README.md"]);
    assert!(shown.contains("More words."), "{shown}");
    let hooks: Vec<String> = fs::read_dir(a.work.join(".git/hooks"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(hooks.iter().all(|h| h.ends_with(".sample")), "only git's samples in .git/hooks: {hooks:?}");
    a.assert_no_false_positive();
}

/// A C project of three files and a Makefile: make compiles with cc (gcc: cpp, cc1,
/// as), archives a static library with ar, links with ld, and the program runs.
pub fn fp_c_project_builds_and_runs() {
    if missing_tools("fp_c_project_builds_and_runs", &["/usr/bin/make", "/usr/bin/gcc", "/usr/bin/cc", "/usr/include/stdio.h"]) {
        return;
    }
    let a = Agent::start("c");
    a.write(
        "Makefile",
        "CFLAGS = -O2 -Wall -Werror\n\
         \n\
         demo: main.o libwork.a\n\
         \t$(CC) $(CFLAGS) -o $@ main.o libwork.a\n\
         \n\
         libwork.a: greet.o sum.o\n\
         \t$(AR) rcs $@ $^\n\
         \n\
         %.o: %.c work.h\n\
         \t$(CC) $(CFLAGS) -c -o $@ $<\n",
    );
    a.write("work.h", "const char *greeting(void);\nint sum(const int *xs, int n);\n");
    a.write("greet.c", "#include \"work.h\"\nconst char *greeting(void) { return \"hello from a bound agent\"; }\n");
    a.write("sum.c", "#include \"work.h\"\nint sum(const int *xs, int n) { int s = 0; for (int i = 0; i < n; i++) s += xs[i]; return s; }\n");
    a.write(
        "main.c",
        "#include <stdio.h>\n#include \"work.h\"\n\
         int main(void) { int xs[] = {1, 2, 3}; printf(\"%s: %d\\n\", greeting(), sum(xs, 3)); return 0; }\n",
    );
    a.run("", "/usr/bin/make", &[]);
    let out = a.run("", "./demo", &[]);
    assert_eq!(out.trim(), "hello from a bound agent: 6");
    let again = a.run("", "/usr/bin/make", &[]);
    assert!(again.contains("up to date"), "a second make does nothing: {again}");
    a.assert_no_false_positive();
}

/// A Python venv in the work tree (`python3 -m venv`, pip bootstrapped from the
/// distribution's wheels), and a local package with a pyproject.toml installed into
/// it by pip with no index, then imported and run through its console script.
pub fn fp_python_venv_installs_a_local_package() {
    let test = "fp_python_venv_installs_a_local_package";
    let wheels = "/usr/share/python-wheels";
    if missing_tools(test, &["/usr/bin/python3"]) {
        return;
    }
    // python3-venv's ensurepip installs pip from the distribution's wheels
    // (python3-pip-whl); setuptools 66 builds wheels with the `wheel` wheel.
    let has_wheel = |name: &str| {
        fs::read_dir(wheels).is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(name)))
    };
    let ensurepip = fs::read_dir("/usr/lib")
        .is_ok_and(|d| d.flatten().any(|e| e.path().join("ensurepip/__main__.py").is_file()));
    if !ensurepip || !has_wheel("pip-") || !has_wheel("wheel-") {
        skip(
            test,
            &format!(
                "python3's ensurepip or the pip/wheel wheels in {wheels} are missing (`cargo xtask setup` installs \
                 python3-venv and python3-wheel-whl)"
            ),
        );
        return;
    }
    let mut a = Agent::start("python");
    // No index, no version check: pip must not reach for the network. pip's cache is
    // ~/.cache/pip, which the policy allows.
    a.setenv("PIP_NO_INDEX", "1");
    a.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    a.write(
        "hello/pyproject.toml",
        "[build-system]\nrequires = [\"setuptools>=61\", \"wheel\"]\nbuild-backend = \"setuptools.build_meta\"\n\n\
         [project]\nname = \"agent-hello\"\nversion = \"0.1.0\"\n\n\
         [project.scripts]\nagent-hello = \"agent_hello:main\"\n",
    );
    a.write(
        "hello/src/agent_hello/__init__.py",
        "def greet():\n    return \"hello from a venv\"\n\ndef main():\n    print(greet())\n",
    );
    a.run("", "/usr/bin/python3", &["-m", "venv", ".venv"]);
    // setuptools 66 builds wheels with the `wheel` package: from the distribution's
    // wheels, as pip's own came.
    a.run("", ".venv/bin/pip", &["install", "-q", "--find-links", wheels, "wheel"]);
    a.run("", ".venv/bin/pip", &["install", "-q", "--no-build-isolation", "./hello"]);
    let out = a.run("", ".venv/bin/python", &["-c", "import agent_hello; print(agent_hello.greet())"]);
    assert_eq!(out.trim(), "hello from a venv");
    let out = a.run("", ".venv/bin/agent-hello", &[]);
    assert_eq!(out.trim(), "hello from a venv");
    a.assert_no_false_positive();
}

/// npm installs a local package (a directory dependency, no registry) into a project
/// in the work tree; node requires it and its bin runs from node_modules/.bin.
pub fn fp_npm_installs_a_local_package() {
    if missing_tools("fp_npm_installs_a_local_package", &["/usr/bin/node", "/usr/bin/npm"]) {
        return;
    }
    let mut a = Agent::start("npm");
    // npm's cache is its default, ~/.npm, which the shipped policy allows.
    // No registry: offline, no audit, no funding message, no update check.
    a.setenv("npm_config_offline", "true");
    a.setenv("npm_config_audit", "false");
    a.setenv("npm_config_fund", "false");
    a.setenv("npm_config_update_notifier", "false");
    a.write(
        "localpkg/package.json",
        "{\"name\": \"agent-localpkg\", \"version\": \"1.0.0\", \"main\": \"index.js\", \"bin\": {\"agent-hello\": \"cli.js\"}}\n",
    );
    a.write("localpkg/index.js", "module.exports = () => 'hello from a local package';\n");
    a.write("localpkg/cli.js", "#!/usr/bin/env node\nconsole.log(require('./index.js')());\n");
    a.write("app/package.json", "{\"name\": \"app\", \"version\": \"1.0.0\", \"private\": true}\n");
    a.run("app", "/usr/bin/npm", &["install", "../localpkg"]);
    let manifest = fs::read_to_string(a.work.join("app/package.json")).expect("package.json");
    assert!(manifest.contains("file:../localpkg"), "npm recorded the dependency: {manifest}");
    let out = a.run("app", "/usr/bin/node", &["-e", "console.log(require('agent-localpkg')())"]);
    assert_eq!(out.trim(), "hello from a local package");
    let out = a.run("app", "node_modules/.bin/agent-hello", &[]);
    assert_eq!(out.trim(), "hello from a local package");
    a.assert_no_false_positive();
}

/// `mkdir -p` of an absolute path inside the work tree, as an agent's shell runs it
/// all the time. coreutils makes every component from `/` down and takes EEXIST for
/// those that exist: an existing directory outside the writable tree is not created,
/// so it is no write.
pub fn fp_mkdir_p_of_an_absolute_path_in_the_work_tree() {
    let a = Agent::start("mkdir-p");
    let deep = a.work.join("src/module/tests");
    a.run("", "/usr/bin/mkdir", &["-p", deep.to_str().expect("utf-8")]);
    assert!(deep.is_dir(), "{} was made", deep.display());
    a.assert_no_false_positive();
}
