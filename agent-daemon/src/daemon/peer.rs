//! Who is calling: the peer credentials of each agentctl connection, and the rule
//! that an agent can never change its own enforcement.
//!
//! SO_PEERCRED gives the uid, gid and pid of the process that connected. A pid is
//! only a number that the kernel reuses, so at accept time we open `/proc/<pid>`:
//! that directory handle stays tied to the process that connected, and reading
//! through it fails once that process is gone, instead of describing whichever
//! process got the pid next. The cgroup is read at every request, so a process that
//! moved into a bound cgroup after connecting is refused too.

use std::{
    fs, io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{UnixListener, UnixStream},
};
use tokio_stream::{Stream, StreamExt as _};

use crate::cgroup;

/// The process at the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// `/proc/<pid>` opened at accept time.
    proc_dir: Option<Arc<fs::File>>,
}

impl Peer {
    /// Reads the credentials of a freshly accepted connection.
    pub fn of(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(c) => {
                let pid = c.pid().filter(|p| *p > 0);
                let proc_dir = pid.and_then(|p| fs::File::open(format!("/proc/{p}")).ok()).map(Arc::new);
                Peer { uid: c.uid(), gid: c.gid(), pid, proc_dir }
            }
            // No credentials: a peer that can never be authorised to change anything.
            Err(_) => Peer { uid: u32::MAX, gid: u32::MAX, pid: None, proc_dir: None },
        }
    }

    /// Reads `/proc/<pid>/<file>` of the process that connected (not of a later
    /// process with the same pid).
    fn proc_read(&self, file: &str) -> io::Result<String> {
        let dir = self.proc_dir.as_ref().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no pid for the caller"))?;
        fs::read_to_string(format!("/proc/self/fd/{}/{file}", dir.as_raw_fd()))
    }

    /// The cgroup2 directory the calling process is in now.
    pub fn cgroup(&self, mount: &Path) -> Result<PathBuf, String> {
        let text = self.proc_read("cgroup").map_err(|e| match self.pid {
            Some(pid) => format!("cannot read /proc/{pid}/cgroup of the caller (has it exited?): {e}"),
            None => "the caller's pid is unknown".to_string(),
        })?;
        let cg = cgroup::parse_proc_cgroup(&text).ok_or("the caller has no cgroup v2 (0::) line in /proc/PID/cgroup")?;
        Ok(cgroup::join_mount(mount, cg))
    }

    /// The caller's supplementary groups (the `Groups:` line of `/proc/<pid>/status`).
    pub fn groups(&self) -> Vec<u32> {
        self.proc_read("status").map(|s| parse_status_groups(&s)).unwrap_or_default()
    }
}

/// Supplementary group ids from the text of `/proc/PID/status`.
pub fn parse_status_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether a caller may make changes at all: root, or a member of the socket's group.
pub fn may_change(uid: u32, gid: u32, groups: &[u32], socket_gid: u32) -> bool {
    uid == 0 || gid == socket_gid || groups.contains(&socket_gid)
}

/// The binding that confines a caller: the deepest bound cgroup that is the
/// caller's cgroup or one of its ancestors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confinement {
    pub cgroup: String,
    pub identity: String,
}

/// Finds the binding that confines a process in `peer_cgroup`, if any. `bindings`
/// are (cgroup path, identity name).
pub fn confinement<'a>(bindings: impl IntoIterator<Item = (&'a str, &'a str)>, peer_cgroup: &Path) -> Option<Confinement> {
    bindings
        .into_iter()
        .filter(|(path, _)| cgroup::is_within(peer_cgroup, Path::new(path)))
        .max_by_key(|(path, _)| Path::new(path).components().count())
        .map(|(path, identity)| Confinement { cgroup: path.to_string(), identity: identity.to_string() })
}

impl Confinement {
    /// The refusal an agent gets.
    pub fn refusal(&self) -> String {
        format!(
            "agentd: refusing request from a process inside bound cgroup {} (identity {}): agents cannot change their own enforcement",
            self.cgroup, self.identity
        )
    }
}

/// A connection plus who made it; tonic hands `Peer` to every request's extensions.
pub struct PeerStream {
    io: UnixStream,
    peer: Peer,
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The listener's connections, each with its peer's credentials taken at accept.
pub fn incoming(listener: UnixListener) -> impl Stream<Item = io::Result<PeerStream>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|r| {
        r.map(|io| {
            let peer = Peer::of(&io);
            PeerStream { io, peer }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "/sys/fs/cgroup/unified";

    fn bindings() -> Vec<(String, String)> {
        vec![
            (format!("{M}/agents/coder"), "coder".into()),
            (format!("{M}/agents/coder/tools"), "tool-runner".into()),
            (format!("{M}/system.slice/mcp.service"), "mcp".into()),
        ]
    }

    fn check(peer: &str) -> Option<Confinement> {
        let b = bindings();
        confinement(b.iter().map(|(p, i)| (p.as_str(), i.as_str())), Path::new(peer))
    }

    #[test]
    fn a_process_in_a_bound_cgroup_or_below_is_confined() {
        let c = check(&format!("{M}/agents/coder")).unwrap();
        assert_eq!(c.identity, "coder");
        // A child cgroup the agent made itself is still inside.
        assert_eq!(check(&format!("{M}/agents/coder/sub/deeper")).unwrap().identity, "coder");
        // The deepest binding names the identity in force.
        assert_eq!(check(&format!("{M}/agents/coder/tools/x")).unwrap().identity, "tool-runner");
        let msg = check(&format!("{M}/system.slice/mcp.service")).unwrap().refusal();
        assert_eq!(
            msg,
            format!("agentd: refusing request from a process inside bound cgroup {M}/system.slice/mcp.service (identity mcp): agents cannot change their own enforcement")
        );
    }

    #[test]
    fn others_are_not() {
        assert_eq!(check(&format!("{M}/user.slice/user-1000.slice/session-2.scope")), None);
        // A sibling whose name merely starts like a bound one.
        assert_eq!(check(&format!("{M}/agents/coder2")), None);
        // The parent of a bound cgroup (e.g. the admin's shell that made it).
        assert_eq!(check(&format!("{M}/agents")), None);
        assert_eq!(check(M), None);
    }

    #[test]
    fn root_or_socket_group_may_change() {
        assert!(may_change(0, 0, &[], 999));
        assert!(may_change(1000, 999, &[], 999));
        assert!(may_change(1000, 1000, &[27, 999], 999));
        assert!(!may_change(1000, 1000, &[27], 999));
        let status = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 999 \nVmPeak:\t1 kB\n";
        assert_eq!(parse_status_groups(status), vec![4, 24, 27, 999]);
        assert_eq!(parse_status_groups("Groups:\t\n"), Vec::<u32>::new());
    }

    #[tokio::test]
    async fn peer_of_a_real_connection_is_us() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let _client = UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let peer = Peer::of(&server);
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
        assert_eq!(peer.pid, Some(std::process::id() as i32));
        let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        if let Some(cg) = cgroup::parse_proc_cgroup(&ours) {
            assert_eq!(peer.cgroup(Path::new(M)).unwrap(), cgroup::join_mount(Path::new(M), cg));
        }
    }

    #[test]
    fn a_dead_peer_is_not_mistaken_for_another_process() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        let peer = Peer { uid: 0, gid: 0, pid: Some(pid), proc_dir: fs::File::open(format!("/proc/{pid}")).ok().map(Arc::new) };
        assert!(peer.cgroup(Path::new(M)).is_ok());
        child.kill().unwrap();
        child.wait().unwrap();
        let e = peer.cgroup(Path::new(M)).unwrap_err();
        assert!(e.contains("has it exited"), "{e}");
    }
}
