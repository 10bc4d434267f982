//! The agentd daemon: start-up (checks, mounts, loading or adopting the kernel
//! programs, making the kernel match the state directory), the agentctl API on a
//! unix socket, the event pipeline, and a clean stop.
//!
//! Enforcement lives in pinned kernel objects, not in this process: stopping agentd
//! (SIGTERM, SIGINT, or a crash) leaves every policy and binding in force, and the
//! next agentd adopts them.
//!
//! - [`core`]: state + kernel, kept consistent (unit-tested with a fake kernel)
//! - [`server`]: the gRPC service
//! - [`peer`]: who is calling, and the rule that agents cannot change their own enforcement
//! - [`events`]: kernel events to `agentctl events`
//! - [`receipts`]: the receipts API (list, show, export, the node key)
//! - [`host`]: pseudo filesystems and `doctor` checks
//! - [`config`]: the configuration file (receipt retention, receipt sinks)

#![forbid(unsafe_code)]

pub mod config;
pub mod core;
pub mod events;
pub mod holds;
pub mod host;
pub mod peer;
pub mod receipts;
pub mod server;

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    net::{UnixListener, UnixStream},
};
use agent_common::protect;
use tracing::{info, warn};

use self::{core::Core, events::Hub, holds::Holds, server::Service};
use crate::{
    api::pb::agentd_server::AgentdServer,
    cgroup::{self, CgroupError},
    enforce::{EnforceError, Enforcer, EnforcerConfig, MechanismReport},
    holds::{webhook, HoldService, RateLimit},
    receipts::{sinks::Dispatcher, Journal, JournalOptions, NodeKey},
    state::{StateError, Store},
};

/// The group whose members may change enforcement through the socket, if it exists.
pub const SOCKET_GROUP: &str = "agentd";
/// How often expiries are checked.
const EXPIRY_TICK: Duration = Duration::from_secs(10);
/// How long a stop waits for open requests to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a stop lets the receipt sinks deliver what is queued.
const SINKS_GRACE: Duration = Duration::from_secs(3);

/// The receipt sinks, shared by the journal's tap, `agentctl status` and the stop.
/// `None` once stopped.
pub type Sinks = Arc<Mutex<Option<Dispatcher>>>;

/// Where the daemon keeps things (from the command line).
#[derive(Clone, Debug)]
pub struct Config {
    /// Policies, identities, keys and bindings.
    pub state_dir: PathBuf,
    /// The agentctl socket.
    pub socket: PathBuf,
    /// bpffs directory of the pinned programs and maps.
    pub pin_dir: PathBuf,
    /// http:// URLs every hold is POSTed to.
    pub webhooks: Vec<String>,
    /// The configuration file given with `--config` (else [`config::DEFAULT_PATH`] if it exists).
    pub config_file: Option<PathBuf>,
}

/// Why agentd could not start (or stopped with an error). Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("must run as root: it loads eBPF programs, pins them in bpffs and attaches them to cgroups (run it as the systemd unit, or with sudo)")]
    NotRoot,
    #[error("cannot create {}: {source}", .path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Socket(String),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("state directory: {0}")]
    State(#[from] StateError),
    #[error("cannot load eBPF programs: {0} (run `agentctl doctor`)")]
    Load(EnforceError),
    #[error("cannot install the stored policies and bindings in the kernel: {0} (run `agentctl doctor`)")]
    Reconcile(EnforceError),
    #[error("serving the API failed: {0}")]
    Serve(String),
    #[error("{0}")]
    Config(String),
    #[error("cannot open the receipt journal in {}: {message} (agentd does not run without recording receipts; fix or move the directory away)", .dir.display())]
    Receipts { dir: PathBuf, message: String },
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    // Installed first, so a stop requested during a slow start is not lost.
    // With the sender's pid: a bound process may not stop agentd (see below).
    let mut stops =
        crate::stop_signals::StopSignals::install().map_err(|e| DaemonError::Serve(format!("SIGTERM/SIGINT handlers: {e}")))?;

    // First: is another agentd running? Then it owns the state and the pins.
    let webhooks = config
        .webhooks
        .iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| webhook::parse_url(u.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DaemonError::Config)?;
    let file_config = config::load(config.config_file.as_deref()).map_err(DaemonError::Config)?;
    match &file_config.source {
        Some(p) => info!(config = %p.display(), sinks = file_config.sinks.len(), "configuration read"),
        None => info!("no configuration file ({}): receipts kept without a size limit, no sinks", config::DEFAULT_PATH),
    }
    prepare_socket_dir(&config.socket)?;
    clear_stale_socket(&config.socket).await?;
    let store = Store::open(&config.state_dir)?;
    host::mount_pseudo_filesystems();
    if !host::on_bpffs(&config.pin_dir) {
        return Err(DaemonError::Load(EnforceError::Other(format!(
            "--pin-dir {} is not on a bpf filesystem; choose a directory under /sys/fs/bpf",
            config.pin_dir.display()
        ))));
    }
    let cgroup_mount = cgroup::cgroup2_mount()?;
    info!(mount = %cgroup_mount.display(), "cgroup2");
    // The state is read before the kernel is touched: a damaged state directory
    // stops agentd while the previous enforcement stays pinned and untouched.
    let (state, warnings) = store.load()?;
    for w in warnings {
        warn!("{w}");
    }

    let started = Instant::now();
    let mut enforcer = Enforcer::open(&EnforcerConfig { pin_dir: config.pin_dir.clone(), cgroup_root: cgroup_mount.clone() })
        .map_err(DaemonError::Load)?;
    let report = enforcer.report();
    log_report(&report);
    guard_enforcement(&mut enforcer, &config, file_config.source.as_deref())?;
    // The event pipeline gets a thread and a runtime of its own: under a flood of
    // denials it is busy all the time, and it must not take a worker from the API,
    // or an agent hammering denied actions could keep its policy from being changed.
    let events_rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| DaemonError::Serve(format!("the event pipeline's runtime: {e}")))?;
    let reader = {
        let _in_events_rt = events_rt.enter();
        enforcer.take_events().map_err(DaemonError::Load)?
    };
    let aggregates = enforcer.aggregates().map_err(DaemonError::Load)?;
    let exec_approvals = enforcer.exec_approvals().map_err(DaemonError::Load)?;
    let connect_holds = enforcer.connect_holds().map_err(DaemonError::Load)?;
    let enforcer_write_holds = enforcer.write_holds();
    let mut connect_holds_at_stop = enforcer.connect_holds().map_err(DaemonError::Load)?;

    // Before the kernel is changed: no receipts, no agentd (fail closed).
    let journal = open_receipts_with(&config.state_dir, file_config.journal.clone())?;
    let journal_at_stop = journal.clone();
    let sinks = start_sinks(&file_config, &journal)?;
    let mut core = Core::new(Box::new(enforcer), store, state, journal);
    // Every policy keeps bound agents from this agentd's own socket (a built-in
    // unix rule), wherever --socket put it.
    let builtins = crate::policy::Builtins::new(&config.socket);
    core.set_builtins(builtins.clone());
    let r = core
        .reconcile(&|p: &Path| cgroup::cgroup_id(p).ok(), SystemTime::now())
        .map_err(DaemonError::Reconcile)?;
    info!(
        adopted_pins = report.adopted,
        identities = r.identities,
        bindings_adopted = r.adopted,
        bindings_written = r.bound,
        bindings_dropped = r.dropped,
        bindings_missing = r.missing,
        broken_policies = ?r.broken_policies,
        took_ms = started.elapsed().as_millis() as u64,
        "kernel matches the state"
    );
    let core = Arc::new(Mutex::new(core));

    let hub = Hub::new();
    tokio::spawn(watch_expiry(core.clone()));
    tokio::spawn(watch_drift(core.clone()));

    // Holds: an exec a policy asks about waits in the kernel for a person.
    let holds = Holds::new(HoldService::new(RateLimit::default()), exec_approvals, journal_at_stop.clone());
    let exec_holds = match holds::start_exec_gate(core.clone(), holds.clone(), cgroup_mount.clone(), tokio::runtime::Handle::current()) {
        Ok(marked) => {
            info!(filesystems = marked.len(), "exec holds active (fanotify FAN_OPEN_EXEC_PERM)");
            Ok(marked.len())
        }
        // Without the gate an exec ask still fails closed: the kernel finds no approval.
        Err(e) => {
            warn!(error = %e, "exec holds unavailable: an exec the policy asks about is denied without a hold");
            Err(e.to_string())
        }
    };
    // Write holds: an open for writing a policy asks about waits the same way.
    let write_holds = match enforcer_write_holds.map(|maps| {
        holds::start_write_gate(core.clone(), holds.clone(), maps, cgroup_mount.clone(), tokio::runtime::Handle::current())
    }) {
        Ok(Ok((switch, on_change))) => {
            core.lock().unwrap_or_else(PoisonError::into_inner).set_write_gate(on_change);
            info!("write holds ready (fanotify FAN_OPEN_PERM while a policy asks about writes)");
            Ok(switch)
        }
        // Without the gate an ask write fails closed: the kernel refuses it (a request).
        Ok(Err(e)) | Err(e) => {
            warn!(error = %e, "write holds unavailable: a write the policy asks about is refused and becomes a request");
            Err(e.to_string())
        }
    };
    tokio::spawn(holds::expire_holds(holds.clone()));
    tokio::spawn(holds::expire_exceptions(core.clone()));
    let names = core.clone();
    let pump = events::pump(
        reader,
        Some(aggregates),
        hub.clone(),
        move |id, version, rule| {
            names
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .attribute(id, version, rule)
        },
        journal_at_stop.clone(),
        {
            let (core, holds, rt) = (
                core.clone(),
                holds.clone(),
                tokio::runtime::Handle::current(),
            );
            move |e: &crate::api::pb::Event| holds::ask_request(&core, &holds, e, &rt)
        },
    );
    std::thread::Builder::new()
        .name("events".into())
        .spawn(move || events_rt.block_on(pump))
        .map_err(|e| DaemonError::Serve(format!("starting the event pipeline: {e}")))?;

    let connect_proxy = match holds::start_connect_proxy(core.clone(), holds.clone(), connect_holds).await {
        Ok((p4, p6)) => {
            info!(port4 = p4, port6 = p6, "connect holds active (hold proxy on loopback)");
            Ok((p4, p6))
        }
        Err(e) => {
            warn!(error = %e, "connect holds unavailable: a connect the policy asks about is denied");
            Err(e)
        }
    };
    if !webhooks.is_empty() {
        info!(urls = ?webhooks.iter().map(|w| w.url.as_str()).collect::<Vec<_>>(), "holds are posted to webhooks");
        tokio::spawn(holds::notify_webhooks(holds.clone(), webhooks));
    }

    let core_for_signals = core.clone();
    let (listener, socket_gid) = bind_socket(&config.socket)?;
    let own_cgroup = cgroup::current_cgroup(std::process::id()).ok();
    let service = Service::new(
        core,
        hub.clone(),
        server::Info {
            state_dir: config.state_dir.clone(),
            pin_dir: config.pin_dir.clone(),
            cgroup_mount,
            socket_gid,
            own_cgroup,
            started,
            exec_holds,
            write_holds,
            connect_proxy,
            sinks: sinks.clone(),
            builtins,
        },
        holds.clone(),
        journal_at_stop.clone(),
    );
    info!(socket = %config.socket.display(), "serving agentctl");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = tonic::transport::Server::builder()
        .add_service(AgentdServer::new(service))
        .serve_with_incoming_shutdown(peer::incoming(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(serve);
    let stopped_by = loop {
        tokio::select! {
            r = &mut serve => break Err(r),
            s = stops.recv() => match s {
                Ok(s) => {
                    let name = if s.signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
                    // Under BPF LSM the kernel refuses a bound process's signal
                    // to agentd; on the fallback tier it arrives, and is ignored.
                    let core = core_for_signals.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(identity) = (s.sender != 0).then(|| core.task_identity(s.sender)).flatten() {
                        warn!(signal = name, sender = s.sender, %identity, "ignored a stop signal from a process that acts for an identity");
                        let target = format!("{name} from process {} (identity {identity})", s.sender);
                        if let Err(e) = core.record_tamper("signal", &target, "ignored", SystemTime::now()) {
                            warn!(error = %e, "could not record the ignored signal");
                        }
                        continue;
                    }
                    break Ok(name);
                }
                Err(e) => {
                    warn!(error = %e, "cannot read stop signals any more; stopping");
                    break Ok("SIGTERM");
                }
            },
        }
    };
    let result = match stopped_by {
        Ok(signal) => {
            // Whatever is held is denied, not left to the kernel's allow-on-close.
            holds::stop_connect_proxy(&mut connect_holds_at_stop);
            for (id, _) in holds.service().cancel_all(SystemTime::now()) {
                info!(hold = %id, "denied: agentd is stopping");
            }
            stop(signal, &hub, stop_tx, serve).await
        }
        Err(Ok(())) => Err(DaemonError::Serve("the server stopped by itself".into())),
        Err(Err(e)) => Err(DaemonError::Serve(e.to_string())),
    };
    if let Err(e) = fs::remove_file(&config.socket) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!(socket = %config.socket.display(), error = %e, "could not remove the socket");
        }
    }
    match journal_at_stop.flush() {
        Ok(seq) => info!(durable_seq = seq, "receipts flushed"),
        Err(e) => warn!(error = %e, "could not flush the last receipts"),
    }
    // After the flush: the last receipts reach the sinks too.
    let dispatcher = sinks.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(d) = dispatcher {
        for s in d.shutdown(SINKS_GRACE) {
            info!(sink = %s.name, delivered = s.stats.delivered, dropped = s.stats.dropped, failed_attempts = s.stats.failed_attempts, "receipt sink stopped");
        }
    }
    info!(pins = %config.pin_dir.display(), "agentd stopped; enforcement stays in the kernel");
    result
}

/// Puts enforcement itself out of bound tasks' reach: tells the kernel who agentd
/// is (no bound task may signal or trace it), which mount namespace is the
/// reference view and where its filesystems are mounted (paths are judged
/// there, whatever namespace a task made), and which paths no bound task may
/// reach (the state directory — its keys sign receipts — not even to read; the
/// configuration and the socket not to change).
fn guard_enforcement(enforcer: &mut Enforcer, config: &Config, config_file: Option<&Path>) -> Result<(), DaemonError> {
    use std::os::unix::fs::MetadataExt as _;
    let (ref_pid, ref_ns) = match fs::metadata("/proc/1/ns/mnt") {
        Ok(m) => ("1", m.ino() as u32),
        Err(e) => {
            // Some sandboxes hide PID 1's namespaces; agentd's own mount
            // namespace is then the reference (true wherever agentd is started
            // from the host's namespace, as `cargo xtask run` does).
            let own = fs::metadata("/proc/self/ns/mnt").map_err(|e2| {
                DaemonError::Load(EnforceError::Other(format!(
                    "cannot read /proc/1/ns/mnt ({e}) nor /proc/self/ns/mnt ({e2}): agentd judges paths in the host's initial mount namespace"
                )))
            })?;
            warn!(error = %e, "cannot read PID 1's mount namespace; judging paths in agentd's own mount namespace");
            ("self", own.ino() as u32)
        }
    };
    let me = std::process::id();
    let pgid = nix::unistd::getpgrp().as_raw() as u32;
    enforcer.set_guard(me, pgid, ref_ns).map_err(DaemonError::Load)?;
    let mut refs = enforcer.ref_mounts().map_err(DaemonError::Load)?;
    let mountinfo = PathBuf::from(format!("/proc/{ref_pid}/mountinfo"));
    let table = fs::read_to_string(&mountinfo)
        .map(|t| crate::enforce::mounts::parse(&t))
        .map_err(|e| DaemonError::Load(EnforceError::Other(format!("reading {}: {e}", mountinfo.display()))))?;
    refs.sync(&crate::enforce::mounts::entries(&table)).map_err(DaemonError::Load)?;
    std::thread::Builder::new()
        .name("ref-mounts".into())
        .spawn(move || follow_reference_mounts(refs, &mountinfo))
        .map_err(|e| DaemonError::Serve(format!("starting the mount watcher: {e}")))?;
    let canonical = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut protected = vec![(canonical(&config.state_dir), protect::READ | protect::WRITE)];
    protected.push((canonical(config_file.unwrap_or(Path::new(config::DEFAULT_PATH))), protect::WRITE));
    protected.push((canonical(&config.socket), protect::WRITE));
    // The pins: opening anything on bpffs is refused by its filesystem, but a
    // path syscall by name (unlink, rename) is judged by its path.
    protected.push((canonical(&config.pin_dir), protect::READ | protect::WRITE));
    if Path::new("/sys/fs/bpf").is_dir() {
        protected.push((PathBuf::from("/sys/fs/bpf"), protect::READ | protect::WRITE));
    }
    enforcer.protect(&protected).map_err(DaemonError::Load)?;
    let mut libs: Vec<PathBuf> = LIB_DIRS.iter().filter_map(|d| fs::canonicalize(d).ok()).filter(|d| d.is_dir()).collect();
    libs.sort();
    libs.dedup();
    enforcer.set_lib_dirs(&libs).map_err(DaemonError::Load)?;
    info!(agentd = me, reference_mnt_ns = ref_ns, mounts = table.len(), protected = ?protected.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>(), "enforcement guarded");
    Ok(())
}

/// Every second, compares the kernel with agentd's state and puts back what
/// differs (see `Core::check_drift`): whoever reached around enforcement — a
/// root process outside any bound cgroup, or, on the fallback tier, a call that
/// landed before its caller was killed — is undone and recorded.
async fn watch_drift(core: Arc<Mutex<Core>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let core = core.clone();
        let _ = tokio::task::spawn_blocking(move || {
            core.lock().unwrap_or_else(PoisonError::into_inner).check_drift(SystemTime::now());
        })
        .await;
    }
}

/// Where the system keeps shared libraries (merged-/usr systems make several of
/// these one real directory).
const LIB_DIRS: [&str; 7] = ["/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib"];

/// Keeps `REF_MOUNTS` in step with the reference mount table: the kernel wakes
/// a poller of `mountinfo` when it changes (checked every second too).
fn follow_reference_mounts(mut refs: crate::enforce::RefMounts, mountinfo: &Path) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd as _;
    let mut last: Option<Vec<crate::enforce::mounts::Entry>> = None;
    loop {
        let file = fs::File::open(mountinfo);
        match fs::read_to_string(mountinfo) {
            Ok(text) => {
                let entries = crate::enforce::mounts::entries(&crate::enforce::mounts::parse(&text));
                if last.as_ref() != Some(&entries) {
                    match refs.sync(&entries) {
                        Ok(()) => last = Some(entries),
                        Err(e) => warn!(error = %e, "could not update the reference mount table in the kernel"),
                    }
                }
            }
            Err(e) => warn!(error = %e, file = %mountinfo.display(), "cannot read the reference mount table"),
        }
        match file {
            Ok(f) => {
                let _ = poll(&mut [PollFd::new(f.as_fd(), PollFlags::POLLPRI)], PollTimeout::from(1000u16));
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Stops serving: followers' streams end, open requests get a moment to finish.
async fn stop<F>(signal: &str, hub: &Hub, stop_tx: tokio::sync::oneshot::Sender<()>, serve: F) -> Result<(), DaemonError>
where
    F: std::future::Future<Output = Result<(), tonic::transport::Error>>,
{
    info!("{signal}: stopping; enforcement stays pinned in the kernel");
    hub.close();
    let _ = stop_tx.send(());
    match tokio::time::timeout(STOP_GRACE, serve).await {
        Ok(r) => r.map_err(|e| DaemonError::Serve(e.to_string())),
        Err(_) => {
            warn!("open requests did not finish within {STOP_GRACE:?}; closing them");
            Ok(())
        }
    }
}

/// Says loudly what is not enforced (the enforcer logs what is).
fn log_report(report: &MechanismReport) {
    for k in report.kinds.iter().filter(|k| k.active.is_empty()) {
        warn!(kind = %k.kind, unavailable = ?k.unavailable, "nothing on this kernel enforces {}", k.kind);
    }
}

/// Re-installs identities whose expiry has passed, so expiry takes effect in the
/// kernel without waiting for a restart.
async fn watch_expiry(core: Arc<Mutex<Core>>) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tick.tick().await;
        let core = core.clone();
        let changed = tokio::task::spawn_blocking(move || {
            core.lock().unwrap_or_else(PoisonError::into_inner).refresh_expiry(SystemTime::now())
        })
        .await
        .unwrap_or_default();
        for name in changed {
            warn!(identity = %name, "identity expired: everything it does is denied from now on");
        }
    }
}

/// Creates the socket's directory (0750, group [`SOCKET_GROUP`] if that exists)
/// when it is missing; an existing directory is left as it is.
fn prepare_socket_dir(socket: &Path) -> Result<(), DaemonError> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else { return Ok(()) };
    if dir.exists() {
        return Ok(());
    }
    let err = |source| DaemonError::Dir { path: dir.to_path_buf(), source };
    fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).map_err(err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o750)).map_err(err)?;
    if let Some(gid) = socket_group() {
        nix::unistd::chown(dir, None, Some(gid)).map_err(|e| err(e.into()))?;
    }
    info!(dir = %dir.display(), "created the socket directory (0750)");
    Ok(())
}

fn socket_group() -> Option<nix::unistd::Gid> {
    nix::unistd::Group::from_name(SOCKET_GROUP).ok().flatten().map(|g| g.gid)
}

/// Removes a socket file left by an agentd that died, but refuses to start when
/// an agentd still answers on it.
async fn clear_stale_socket(socket: &Path) -> Result<(), DaemonError> {
    let meta = match fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DaemonError::Socket(format!("{}: {e}", socket.display()))),
    };
    if !meta.file_type().is_socket() {
        return Err(DaemonError::Socket(format!(
            "{} exists and is not a socket; move it away or choose another path with --socket",
            socket.display()
        )));
    }
    match tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(socket)).await {
        Ok(Ok(_)) | Err(_) => Err(DaemonError::Socket(format!(
            "another agentd is serving {} (stop it first, e.g. `systemctl stop agentd`, or choose another --socket)",
            socket.display()
        ))),
        Ok(Err(_)) => {
            fs::remove_file(socket).map_err(|e| DaemonError::Socket(format!("removing the stale socket {}: {e}", socket.display())))?;
            info!(socket = %socket.display(), "removed a stale socket left by an earlier agentd");
            Ok(())
        }
    }
}

/// Binds the API socket: mode 0660, group [`SOCKET_GROUP`] if it exists. Returns
/// the listener and the socket's group id.
fn bind_socket(socket: &Path) -> Result<(UnixListener, u32), DaemonError> {
    let err = |what: &str, e: &dyn std::fmt::Display| DaemonError::Socket(format!("{what} {}: {e}", socket.display()));
    let listener = UnixListener::bind(socket).map_err(|e| err("binding", &e))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o660)).map_err(|e| err("setting the mode of", &e))?;
    if let Some(gid) = socket_group() {
        nix::unistd::chown(socket, None, Some(gid)).map_err(|e| err("setting the group of", &e))?;
    }
    let gid = fs::metadata(socket).map_err(|e| err("reading", &e))?.gid();
    Ok((listener, gid))
}

/// The receipts subdirectory of the state directory.
pub fn receipts_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("receipts")
}

/// Opens (or creates) the receipt journal and node key in `<state_dir>/receipts`
/// (0700). Any failure is an error: agentd must not enforce without recording.
pub fn open_receipts(state_dir: &Path) -> Result<Arc<Journal>, DaemonError> {
    open_receipts_with(state_dir, JournalOptions::default())
}

/// Starts the configured receipt sinks and has the journal hand them every durable
/// receipt. With none configured the journal has no tap and pays nothing.
fn start_sinks(cfg: &config::FileConfig, journal: &Journal) -> Result<Sinks, DaemonError> {
    if cfg.sinks.is_empty() {
        return Ok(Arc::new(Mutex::new(None)));
    }
    let d = Dispatcher::start(&cfg.sinks).map_err(|e| DaemonError::Config(format!("cannot start the receipt sinks: {e}")))?;
    for s in &cfg.sinks {
        info!(sink = %s.name(), min_severity = %s.delivery.min_severity.as_str(), "receipt sink");
    }
    let sinks: Sinks = Arc::new(Mutex::new(Some(d)));
    let tap = sinks.clone();
    journal.set_tap(Arc::new(move |records| {
        if let Some(d) = tap.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            for r in records {
                d.push(r);
            }
        }
    }));
    Ok(sinks)
}

/// [`open_receipts`] with the configured segment size and retention.
pub fn open_receipts_with(state_dir: &Path, opts: JournalOptions) -> Result<Arc<Journal>, DaemonError> {
    let dir = receipts_dir(state_dir);
    let err = |message: String| DaemonError::Receipts { dir: dir.clone(), message };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| err(e.to_string()))?;
    // An existing directory is tightened too: the node key lives here.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| err(e.to_string()))?;
    let key = NodeKey::load_or_create(&dir).map_err(|e| err(e.to_string()))?;
    let journal = Journal::open(&dir, key, &host_name(), opts).map_err(|e| err(e.to_string()))?;
    let rec = journal.recovery();
    if rec.truncated_bytes > 0 {
        warn!(dir = %dir.display(), bytes = rec.truncated_bytes, saved = ?rec.saved_tail, cut_at = ?rec.cut_at, "receipt journal: cut a damaged tail");
    }
    info!(dir = %dir.display(), key_id = %journal.key_id(), last_seq = journal.last_seq(), "receipt journal open");
    Ok(Arc::new(journal))
}

/// This machine's name, as receipts record it.
fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "localhost".into())
}
