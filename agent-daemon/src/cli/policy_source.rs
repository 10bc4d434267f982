//! Where `policy test` and `policy diff` get a policy from: a file on this machine,
//! or a policy applied to agentd, by name; and an identity, by name.
//!
//! agentd is asked only when a name has to be looked up, so the file forms work
//! without a daemon. The lookups are a trait so that the commands' logic can be
//! tested with a fake daemon.

use std::path::{Path, PathBuf};

use super::{client::Client, error::CliError};
use crate::{
    api::pb,
    policy::{self, Builtins, Policy},
};

/// A `FILE|NAME` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// The name (`metadata.name`) of a policy applied to agentd.
    Applied(String),
}

impl Source {
    /// A file if there is one by that name, or if it looks like one (has a `/`, or
    /// ends in `.yaml` or `.yml`: a typo then reads "cannot read", not "no policy
    /// named"); otherwise the name of an applied policy.
    pub fn from_arg(arg: &str) -> Source {
        let looks_like_file = arg.contains('/') || arg.ends_with(".yaml") || arg.ends_with(".yml");
        if looks_like_file || Path::new(arg).is_file() {
            Source::File(PathBuf::from(arg))
        } else {
            Source::Applied(arg.to_string())
        }
    }

    /// How messages name it; also the file name policy errors are reported under.
    pub fn label(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Applied(name) => format!("applied policy {name}"),
        }
    }
}

/// What only agentd knows.
pub trait Lookup {
    /// The YAML of the applied policy `name`, exactly as applied.
    async fn policy_yaml(&mut self, name: &str) -> Result<String, CliError>;
    /// The identity `name`: its policy and state.
    async fn identity(&mut self, name: &str) -> Result<pb::Identity, CliError>;
    /// What the built-in unix rules protect: this agentd's socket.
    fn builtins(&self) -> Builtins {
        Builtins::default()
    }
}

/// Asks agentd over its socket, connecting on first use.
pub struct Daemon<'a> {
    socket: &'a Path,
    client: Option<Client>,
}

impl<'a> Daemon<'a> {
    pub fn new(socket: &'a Path) -> Self {
        Daemon { socket, client: None }
    }

    async fn client(&mut self) -> Result<&mut Client, CliError> {
        let c = match self.client.take() {
            Some(c) => c,
            None => Client::connect(self.socket).await?,
        };
        Ok(self.client.insert(c))
    }
}

impl Lookup for Daemon<'_> {
    async fn policy_yaml(&mut self, name: &str) -> Result<String, CliError> {
        Ok(self.client().await?.policy_show(name).await?.yaml)
    }

    async fn identity(&mut self, name: &str) -> Result<pb::Identity, CliError> {
        let reply = self.client().await?.identity_show(name).await?;
        reply.identity.ok_or_else(|| CliError::Failed(format!("agentd sent no identity for {name:?}")))
    }

    /// The socket agentctl talks to is the one agentd protects (`--socket`),
    /// whether or not it is asked anything.
    fn builtins(&self) -> Builtins {
        Builtins::new(self.socket)
    }
}

/// Reads and parses the policy `source` names.
pub async fn load(source: &Source, lookup: &mut impl Lookup) -> Result<Policy, CliError> {
    let text = match source {
        Source::File(path) => {
            std::fs::read_to_string(path).map_err(|e| CliError::io(format!("cannot read {}", path.display()), e))?
        }
        Source::Applied(name) => lookup.policy_yaml(name).await?,
    };
    parse(&source.label(), &text, &lookup.builtins())
}

/// Parses a policy; a bad one is an error listing every problem on a line of its
/// own as `file:line:column: message`, as `policy validate` prints them.
pub fn parse(file_name: &str, text: &str, builtins: &Builtins) -> Result<Policy, CliError> {
    policy::parse_with(file_name, text, builtins).map_err(|errors| {
        let n = errors.len();
        let s = if n == 1 { "" } else { "s" };
        CliError::Failed(format!("{file_name} has {n} error{s}:\n{errors}"))
    })
}

#[cfg(test)]
pub mod fake {
    //! A daemon that knows a few policies and identities, and counts the questions.

    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    pub struct FakeDaemon {
        pub policies: HashMap<String, String>,
        pub identities: HashMap<String, pb::Identity>,
        pub asked: usize,
    }

    impl FakeDaemon {
        pub fn with_policy(mut self, name: &str, yaml: &str) -> Self {
            self.policies.insert(name.into(), yaml.into());
            self
        }

        pub fn with_identity(mut self, name: &str, policy: &str, state: &str) -> Self {
            let i =
                pb::Identity { name: name.into(), policy: policy.into(), state: state.into(), ..Default::default() };
            self.identities.insert(name.into(), i);
            self
        }
    }

    impl Lookup for FakeDaemon {
        async fn policy_yaml(&mut self, name: &str) -> Result<String, CliError> {
            self.asked += 1;
            self.policies.get(name).cloned().ok_or_else(|| CliError::Rpc {
                status: tonic::Status::not_found(format!("agentd: no policy named {name:?}")),
                socket: "/fake.sock".into(),
            })
        }

        async fn identity(&mut self, name: &str) -> Result<pb::Identity, CliError> {
            self.asked += 1;
            self.identities.get(name).cloned().ok_or_else(|| CliError::Rpc {
                status: tonic::Status::not_found(format!("agentd: no identity named {name:?}")),
                socket: "/fake.sock".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("coder");
        std::fs::write(&plain, "").unwrap();
        assert_eq!(Source::from_arg("coder"), Source::Applied("coder".into()));
        assert_eq!(Source::from_arg("coder.yaml"), Source::File("coder.yaml".into()));
        assert_eq!(Source::from_arg("coder.yml"), Source::File("coder.yml".into()));
        assert_eq!(Source::from_arg("policies/coder"), Source::File("policies/coder".into()));
        // An existing file wins over a name, even without an extension.
        let arg = plain.to_str().unwrap();
        assert_eq!(Source::from_arg(arg), Source::File(plain.clone()));
        assert_eq!(Source::Applied("coder".into()).label(), "applied policy coder");
    }

    #[test]
    fn a_bad_policy_lists_every_problem_at_its_line() {
        let text = "apiVersion: agentd.io/v1\nkind: AgentPolicy\nmetadata:\n  name: t\nspec:\n  bogus: 1\n  exec:\n    default: maybe\n";
        let err = parse("bad.yaml", text, &Builtins::default()).unwrap_err();
        let shown = err.render();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines[0], "agentctl: bad.yaml has 2 errors:", "{shown}");
        assert!(lines[1].starts_with("bad.yaml:6:3: "), "{shown}");
        assert!(lines[2].starts_with("bad.yaml:8:14: "), "{shown}");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut daemon = fake::FakeDaemon::default();
        let err = rt.block_on(load(&Source::File("/nonexistent/p.yaml".into()), &mut daemon)).unwrap_err();
        assert!(err.to_string().starts_with("cannot read /nonexistent/p.yaml: "), "{err}");
        assert_eq!(daemon.asked, 0);
    }
}
