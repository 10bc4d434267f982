//! What can go wrong in `agentctl`, said so a user can act on it: one line saying what
//! happened, any detail lines (a rejected policy lists every problem, one per line,
//! as file:line:col), and a hint saying what to do.
//!
//! Exit codes: 0 success, 1 operational failure, 2 usage error (clap's own, plus the
//! few usage problems only visible after parsing). `agentctl run` exits with the
//! command's status instead, which is not an error.

use std::path::PathBuf;

use tonic::Code;

/// Exit status for operational failures.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for usage errors (the same as clap's).
pub const EXIT_USAGE: u8 = 2;

/// How to start the daemon, for every "agentd is not running" hint.
const START_HINT: &str = "start it with `systemctl start agentd` or `cargo xtask run`";

/// Everything `agentctl` reports as a failure.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No socket file: the daemon is not running (or `--socket` is wrong).
    #[error("agentd is not running (no socket at {})", .socket.display())]
    NotRunning { socket: PathBuf },
    /// A socket file nobody listens on: the daemon died without removing it.
    #[error("agentd is not running (nothing is listening on {})", .socket.display())]
    StaleSocket { socket: PathBuf },
    #[error("permission denied on agentd's socket {}", .socket.display())]
    SocketPermission { socket: PathBuf },
    /// EPERM from the connect: a security policy refuses this process the socket.
    #[error("connecting to agentd's socket {} was refused: Operation not permitted", .socket.display())]
    SocketRefused { socket: PathBuf },
    #[error("cannot connect to agentd at {}: {reason}", .socket.display())]
    Connect { socket: PathBuf, reason: String },
    /// The daemon answered with an error status.
    #[error("{}", rpc_headline(.status))]
    Rpc { status: tonic::Status, socket: PathBuf },
    #[error("agentd did not answer within {seconds} s")]
    Timeout { seconds: u64 },
    /// The daemon ended a `--follow` event stream.
    #[error("agentd closed the event stream (did it stop?)")]
    StreamClosed,
    /// A cgroup could not be found or used (message from `agentd::cgroup`, or ours).
    #[error("{0}")]
    Cgroup(String),
    /// `agentctl run` found itself inside a bound cgroup.
    #[error("agentctl is running inside bound cgroup {cgroup} (identity {identity}); agentd refuses binds from there")]
    InsideBoundCgroup { cgroup: String, identity: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// A usage problem clap cannot see (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Any other operational failure, already phrased for the user.
    #[error("{0}")]
    Failed(String),
    /// Every problem was already printed (e.g. `policy validate`); just exit 1.
    #[error("")]
    Reported,
    /// stdout was closed by its reader (`agentctl events --follow | head`): stop
    /// quietly and successfully, as ripgrep does.
    #[error("")]
    BrokenPipe,
}

impl CliError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            return CliError::BrokenPipe;
        }
        CliError::Io { what: what.into(), source }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::BrokenPipe => 0,
            _ => EXIT_FAILURE,
        }
    }

    /// Lines after the headline: for INVALID_ARGUMENT, every further line of the
    /// daemon's message (a rejected policy sends one problem per line).
    pub fn detail_lines(&self) -> Vec<&str> {
        match self {
            CliError::Rpc { status, .. } if multi_line(status) => {
                status.message().lines().filter(|l| !l.trim().is_empty()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            CliError::NotRunning { .. } => Some(format!("{START_HINT} (or point --socket / AGENTD_SOCKET at its socket)")),
            CliError::StaleSocket { .. } => Some(format!("{START_HINT}; the old socket file is left from a daemon that exited")),
            CliError::SocketPermission { socket } => Some(format!(
                "run agentctl as root (sudo), or join the group that owns {} and log in again",
                socket.display()
            )),
            CliError::SocketRefused { .. } => Some(
                "a security policy refused it: under an agentd identity, agentd's socket is out of reach \
                 unless egress.unix names it (agents cannot change their own enforcement); run \
                 agentctl from outside the agent's cgroup"
                    .into(),
            ),
            CliError::Connect { .. } => Some("check that --socket names agentd's unix socket".into()),
            CliError::Rpc { status, .. } => rpc_hint(status),
            CliError::Timeout { .. } => Some("agentd may be overloaded or stuck: see `journalctl -u agentd`".into()),
            CliError::StreamClosed => Some(format!("check `agentctl status`; if it is down, {START_HINT}")),
            CliError::InsideBoundCgroup { .. } => Some(
                "run `agentctl run` from a shell outside any agent's cgroup (agents cannot change their own enforcement)"
                    .into(),
            ),
            CliError::Usage(_) => Some("see `agentctl --help`".into()),
            _ => None,
        }
    }

    /// The full text for stderr: `agentctl: <headline>`, detail lines, a hint line.
    /// Empty for errors already reported.
    pub fn render(&self) -> String {
        if matches!(self, CliError::Reported | CliError::BrokenPipe) {
            return String::new();
        }
        let mut out = format!("agentctl: {self}\n");
        for line in self.detail_lines() {
            out.push_str(line);
            out.push('\n');
        }
        if let Some(h) = self.hint() {
            out.push_str(&format!("hint: {h}\n"));
        }
        out
    }

    /// An error status from the daemon.
    pub fn rpc(status: tonic::Status, socket: &std::path::Path) -> Self {
        // A call that fails because the connection is gone says so in transport
        // terms; the user needs to hear that the daemon is down.
        if status.code() == Code::Unavailable && !socket.exists() {
            return CliError::NotRunning { socket: socket.to_path_buf() };
        }
        CliError::Rpc { status, socket: socket.to_path_buf() }
    }
}

/// The first line of a daemon error, prefixed where the code alone tells more than
/// the message.
fn rpc_headline(status: &tonic::Status) -> String {
    if multi_line(status) {
        // Each line is a problem of its own (a rejected policy: file:line:col: ...);
        // they follow unprefixed so editors can jump to them.
        let n = status.message().lines().filter(|l| !l.trim().is_empty()).count();
        return format!("agentd rejected the request ({n} problems):");
    }
    let first = status.message().lines().next().unwrap_or("").trim();
    let first = if first.is_empty() { "(no message)" } else { first };
    match status.code() {
        Code::Unavailable => format!("agentd is unreachable: {first}"),
        Code::DeadlineExceeded => format!("agentd did not answer in time: {first}"),
        Code::Unimplemented => format!("this agentd does not support the request: {first}"),
        Code::Internal | Code::Unknown | Code::DataLoss => format!("agentd failed: {first}"),
        Code::Cancelled => format!("the request was cancelled: {first}"),
        // The daemon's own words (NOT_FOUND, INVALID_ARGUMENT, ALREADY_EXISTS,
        // PERMISSION_DENIED, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ...) already
        // say what is wrong.
        _ => first.to_string(),
    }
}

/// An INVALID_ARGUMENT message listing several problems, one per line.
fn multi_line(status: &tonic::Status) -> bool {
    status.code() == Code::InvalidArgument && status.message().lines().filter(|l| !l.trim().is_empty()).count() > 1
}

fn rpc_hint(status: &tonic::Status) -> Option<String> {
    match status.code() {
        Code::Unavailable => Some(format!("check `agentctl status`; if agentd is down, {START_HINT}")),
        Code::Unimplemented => Some(format!(
            "agentctl {} and the running agentd differ in version: use the agentctl that came with it",
            env!("CARGO_PKG_VERSION")
        )),
        Code::Internal | Code::Unknown | Code::DataLoss => {
            Some("agentd's log has the details: `journalctl -u agentd`".into())
        }
        Code::PermissionDenied if status.message().contains("inside bound cgroup") => Some(
            "run agentctl from a shell outside the agent's cgroup (agents cannot change their own enforcement)".into(),
        ),
        Code::PermissionDenied => Some("run agentctl as root, from outside any bound cgroup".into()),
        Code::DeadlineExceeded => Some("agentd may be overloaded or stuck: see `journalctl -u agentd`".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_down_says_how_to_start_it() {
        let e = CliError::NotRunning { socket: "/run/agentd/agentd.sock".into() };
        assert_eq!(e.exit_code(), 1);
        let text = e.render();
        assert!(text.starts_with("agentctl: agentd is not running (no socket at /run/agentd/agentd.sock)\n"), "{text}");
        assert!(text.contains("hint: start it with `systemctl start agentd` or `cargo xtask run`"), "{text}");
    }

    #[test]
    fn socket_refused_by_policy_is_not_a_group_problem() {
        let text = CliError::SocketRefused { socket: "/run/agentd/agentd.sock".into() }.render();
        assert!(text.contains("Operation not permitted"), "{text}");
        assert!(text.contains("egress.unix") && !text.contains("join the group"), "{text}");
    }

    #[test]
    fn socket_permission_says_root_or_group() {
        let text = CliError::SocketPermission { socket: "/run/agentd/agentd.sock".into() }.render();
        assert!(text.contains("permission denied on agentd's socket /run/agentd/agentd.sock"), "{text}");
        assert!(text.contains("root") && text.contains("group"), "{text}");
    }

    #[test]
    fn invalid_argument_prints_every_line() {
        let status = tonic::Status::invalid_argument(
            "coder.yaml:3:5: unknown key \"acton\"\ncoder.yaml:9:14: relative path \"bin/git\"\n",
        );
        let e = CliError::Rpc { status, socket: "/s".into() };
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.render(),
            "agentctl: agentd rejected the request (2 problems):\ncoder.yaml:3:5: unknown key \"acton\"\ncoder.yaml:9:14: relative path \"bin/git\"\n"
        );
        let one = CliError::Rpc { status: tonic::Status::invalid_argument("x.yaml:1:1: bad\n"), socket: "/s".into() };
        assert_eq!(one.render(), "agentctl: x.yaml:1:1: bad\n");
    }

    #[test]
    fn not_found_is_the_daemons_message() {
        let status = tonic::Status::not_found("agentd: no identity named \"coder\"");
        let e = CliError::Rpc { status, socket: "/s".into() };
        assert_eq!(e.render(), "agentctl: agentd: no identity named \"coder\"\n");
    }

    #[test]
    fn refused_from_inside_a_bound_cgroup_says_where_to_run() {
        let status =
            tonic::Status::permission_denied("agentd: refusing a change from a process inside bound cgroup /x");
        let text = CliError::Rpc { status, socket: "/s".into() }.render();
        assert!(text.contains("outside the agent's cgroup"), "{text}");
    }

    #[test]
    fn internal_points_at_the_log() {
        let text = CliError::Rpc { status: tonic::Status::internal("boom"), socket: "/s".into() }.render();
        assert!(text.starts_with("agentctl: agentd failed: boom\n"), "{text}");
        assert!(text.contains("journalctl -u agentd"), "{text}");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CliError::Reported.exit_code(), 1);
        assert_eq!(CliError::BrokenPipe.exit_code(), 0);
        assert_eq!(CliError::Cgroup("x is not a cgroup".into()).exit_code(), 1);
        assert_eq!(CliError::Timeout { seconds: 30 }.exit_code(), 1);
        assert_eq!(CliError::Reported.render(), "");
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(matches!(CliError::io("writing", pipe), CliError::BrokenPipe));
    }

    #[test]
    fn unavailable_with_the_socket_gone_is_not_running() {
        let e = CliError::rpc(
            tonic::Status::unavailable("transport error"),
            std::path::Path::new("/nonexistent/agentd.sock"),
        );
        assert!(matches!(e, CliError::NotRunning { .. }));
    }
}
