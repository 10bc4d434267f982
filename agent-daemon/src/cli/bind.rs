//! `agentctl bind | unbind | bindings`.
//!
//! The cgroup is resolved here, on the client (absolute path, path under the cgroup2
//! mount, or systemd unit name), and sent to the daemon as an absolute path.

use std::path::{Path, PathBuf};

use super::{cgroup, client::Client, error::CliError, output};
use crate::api::pb;

pub async fn bind(socket: &Path, cgroup_arg: &str, identity: &str, json: bool) -> Result<(), CliError> {
    let path = cgroup::resolve(cgroup_arg).map_err(|e| CliError::Cgroup(e.to_string()))?;
    let mut c = Client::connect(socket).await?;
    let reply = c.bind(&path.display().to_string(), identity).await?;
    if json {
        return output::json(&reply);
    }
    let b = reply.binding.unwrap_or_default();
    output::print(format!(
        "bound {} (cgroup id {}) to identity {}: its processes and every cgroup below it are now enforced",
        b.cgroup_path, b.cgroup_id, b.identity
    ))
}

pub async fn unbind(socket: &Path, cgroup_arg: &str, json: bool) -> Result<(), CliError> {
    let path = unbind_path(cgroup_arg)?;
    let mut c = Client::connect(socket).await?;
    let reply = c.unbind(&path.display().to_string()).await?;
    if json {
        return output::json(&reply);
    }
    let b = reply.binding.unwrap_or_default();
    output::print(format!("unbound {} (was identity {})", b.cgroup_path, b.identity))
}

/// The path to unbind. A binding can outlive its cgroup (a stopped unit, a removed
/// directory), so when the cgroup no longer resolves, an absolute path or one
/// under the mount is taken as written: the daemon knows whether it is bound.
fn unbind_path(arg: &str) -> Result<PathBuf, CliError> {
    match cgroup::resolve(arg) {
        Ok(p) => Ok(p),
        Err(e) => {
            let p = Path::new(arg);
            if p.is_absolute() {
                Ok(p.to_path_buf())
            } else if arg.contains('/') {
                let mount = cgroup::cgroup2_mount().map_err(|e| CliError::Cgroup(e.to_string()))?;
                Ok(mount.join(arg.trim_start_matches("./")))
            } else {
                Err(CliError::Cgroup(e.to_string()))
            }
        }
    }
}

pub async fn list(socket: &Path, json: bool) -> Result<(), CliError> {
    let reply = Client::connect(socket).await?.bindings().await?;
    if json {
        return output::json(&reply);
    }
    if reply.bindings.is_empty() {
        return output::print(
            "no bindings (bind a cgroup with `agentctl bind CGROUP IDENTITY`, or start one with `agentctl run`)",
        );
    }
    output::print(bindings_table(&reply.bindings))
}

fn bindings_table(bindings: &[pb::Binding]) -> String {
    let mut t = output::table(&["CGROUP", "CGROUP ID", "IDENTITY", "BOUND AT", "PRESENT"]);
    for b in bindings {
        t.add_row(vec![
            b.cgroup_path.clone(),
            b.cgroup_id.to_string(),
            b.identity.clone(),
            output::or_dash(&b.bound_at),
            if b.present { "yes".into() } else { "no (cgroup removed)".into() },
        ]);
    }
    output::render_table(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_says_when_a_cgroup_is_gone() {
        let s = bindings_table(&[pb::Binding {
            cgroup_path: "/sys/fs/cgroup/agents/a".into(),
            cgroup_id: 42,
            identity: "coder".into(),
            bound_at: "2025-01-01T00:00:00Z".into(),
            present: false,
        }]);
        let row = s.lines().nth(1).unwrap();
        assert!(row.starts_with("/sys/fs/cgroup/agents/a") && row.contains("42") && row.contains("coder"), "{s}");
        assert!(row.ends_with("no (cgroup removed)"), "{s}");
    }

    #[test]
    fn unbind_takes_an_absolute_path_that_no_longer_exists() {
        assert_eq!(
            unbind_path("/nonexistent/agentd-test-cgroup").unwrap(),
            PathBuf::from("/nonexistent/agentd-test-cgroup")
        );
    }
}
