//! The built-in `egress.unix` rules: local sockets that every identity is kept
//! from unless its policy names them exactly.
//!
//! Each of these sockets is a way to start work outside the identity's cgroup,
//! where none of its rules apply: agentd's own API binds cgroups and runs
//! commands under identities, a container runtime starts containers, systemd and
//! the D-Bus buses start units. So whatever `egress.unix.default` says, a connect
//! to one is denied, by a rule of its own (events and receipts name it); a rule
//! in the file that names the same path exactly, with any action, replaces it.
//!
//! The rules come after the file's rules, in the order below, so their ids are
//! stable for a given file. Only agentd's socket depends on the machine: it is
//! the daemon's `--socket` (agentctl uses its own `--socket`, the same path).

use std::path::{Path, PathBuf};

use super::{
    error::Location,
    glob::Glob,
    model::{ActionKind, UnixRule, UnixTarget},
    path,
};

/// Where agentd listens unless told otherwise (`agentd --socket`).
pub const DEFAULT_AGENTD_SOCKET: &str = "/run/agentd/agentd.sock";

/// The sockets protected on every machine, with why. `*` is one path component,
/// as in a rule: the per-user runtime directories `/run/user/UID`.
const SOCKETS: &[(&str, &str)] = &[
    ("/run/docker.sock", "Docker starts containers outside this identity's cgroup"),
    ("/run/containerd/containerd.sock", "containerd starts containers outside this identity's cgroup"),
    ("/run/podman/podman.sock", "Podman starts containers outside this identity's cgroup"),
    ("/run/crio/crio.sock", "CRI-O starts containers outside this identity's cgroup"),
    ("/run/systemd/private", "systemd starts units (systemd-run) outside this identity's cgroup"),
    (
        "/run/dbus/system_bus_socket",
        "the system bus asks systemd and other services to start work outside this identity's cgroup",
    ),
    ("/run/user/*/systemd/private", "a user's systemd starts units outside this identity's cgroup"),
    ("/run/user/*/bus", "a user's session bus asks their systemd to start units outside this identity's cgroup"),
    ("/run/user/*/podman/podman.sock", "rootless Podman starts containers outside this identity's cgroup"),
    ("/run/user/*/docker.sock", "rootless Docker starts containers outside this identity's cgroup"),
];

const AGENTD_WHY: &str = "agentd's own API binds cgroups and runs commands under identities";

/// What the built-in rules depend on: where this machine's agentd listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Builtins {
    agentd_socket: PathBuf,
}

impl Default for Builtins {
    fn default() -> Self {
        Builtins { agentd_socket: PathBuf::from(DEFAULT_AGENTD_SOCKET) }
    }
}

impl Builtins {
    /// The built-in rules for an agentd listening on `agentd_socket`. A relative
    /// path is taken from the current directory, as the daemon binds it.
    pub fn new(agentd_socket: &Path) -> Builtins {
        let absolute = std::path::absolute(agentd_socket).unwrap_or_else(|_| agentd_socket.to_path_buf());
        Builtins { agentd_socket: absolute }
    }

    pub fn agentd_socket(&self) -> &Path {
        &self.agentd_socket
    }

    /// The rules, numbered from `first_id`: agentd's socket, then [`SOCKETS`].
    pub(crate) fn unix_rules(&self, first_id: u32) -> Vec<UnixRule> {
        use std::os::unix::ffi::OsStrExt as _;
        // Normalised the way every rule path is, and taken literally: a `*` in
        // agentd's socket path is a character of its name, not a wildcard. (It
        // is absolute: `new` made it so.)
        let socket = path::real_path(self.agentd_socket.as_os_str().as_bytes(), &path::NoFiles)
            .unwrap_or_else(|| DEFAULT_AGENTD_SOCKET.as_bytes().to_vec());
        let agentd = (Glob::literal(&socket), AGENTD_WHY);
        let others = SOCKETS.iter().filter_map(|(p, why)| Glob::parse(p).ok().map(|g| (g, *why)));
        std::iter::once(agentd)
            .chain(others)
            .enumerate()
            .map(|(i, (pattern, why))| UnixRule {
                id: first_id + i as u32,
                text: format!("{{path: {pattern}, action: deny}}  # built-in: {why}"),
                target: UnixTarget::Path(pattern),
                action: ActionKind::Deny,
                at: Location::default(),
                target_at: Location::default(),
                builtin: Some(why),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_socket_is_a_valid_pattern() {
        let rules = Builtins::default().unix_rules(7);
        assert_eq!(rules.len(), SOCKETS.len() + 1, "none is dropped");
        assert_eq!(rules.iter().map(|r| r.id).collect::<Vec<_>>(), (7..7 + rules.len() as u32).collect::<Vec<_>>());
        assert_eq!(
            rules[0].text,
            "{path: /run/agentd/agentd.sock, action: deny}  # built-in: agentd's own API binds cgroups and runs commands under identities"
        );
        assert!(rules.iter().all(|r| r.action == ActionKind::Deny && r.builtin.is_some()));
    }

    #[test]
    fn every_policy_pays_a_small_automaton_for_the_per_user_sockets() {
        // GLOB_STATES is shared by every rule set in the kernel: this much is
        // added to each policy's automaton states, pattern rules or not.
        let p = crate::policy::parse(
            "t.yaml",
            "apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata: {name: t}\nspec: {}\n",
        )
        .unwrap();
        let c = crate::policy::compile(&p).unwrap();
        assert_eq!((c.exec_glob, c.write_glob, c.unix_glob), (0, 0, 1));
        assert!(c.globs.len() <= 64, "{} states", c.globs.len());
    }

    #[test]
    fn agentds_socket_is_taken_as_given_and_literally() {
        let rules = Builtins::new(Path::new("/srv/a*d/./agentd.sock")).unix_rules(1);
        let UnixTarget::Path(g) = &rules[0].target else { panic!("{:?}", rules[0].target) };
        assert!(g.is_exact(), "{g}");
        assert_eq!(g.as_str(), "/srv/a*d/agentd.sock");
        assert!(g.matches(b"/srv/a*d/agentd.sock") && !g.matches(b"/srv/abcd/agentd.sock"));
        let here = std::env::current_dir().unwrap();
        assert_eq!(Builtins::new(Path::new("a.sock")).agentd_socket(), here.join("a.sock"));
    }
}
