//! `agentctl identity create | list | show`.

use std::path::Path;

use super::{
    client::Client,
    error::CliError,
    output::{self, key_values, or_dash},
};
use crate::api::pb;

pub async fn create(
    socket: &Path,
    name: &str,
    policy: &str,
    owner: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let owner = owner.unwrap_or_else(calling_user);
    let mut c = Client::connect(socket).await?;
    let reply =
        c.identity_create(pb::IdentityCreateRequest { name: name.into(), policy: policy.into(), owner }).await?;
    if json {
        return output::json(&reply);
    }
    let i = reply.identity.unwrap_or_default();
    output::print(format!(
        "created identity {} (policy {}, owner {}, key {})",
        i.name, i.policy, i.owner, i.fingerprint
    ))?;
    output::print(format!("run an agent under it:  agentctl run --identity {} -- COMMAND", i.name))
}

pub async fn list(socket: &Path, json: bool) -> Result<(), CliError> {
    let reply = Client::connect(socket).await?.identity_list().await?;
    if json {
        return output::json(&reply);
    }
    if reply.identities.is_empty() {
        return output::print("no identities (create one with `agentctl identity create NAME --policy POLICY`)");
    }
    let mut t = output::table(&["NAME", "ID", "POLICY", "OWNER", "STATE", "KEY", "BOUND", "CREATED"]);
    for i in &reply.identities {
        t.add_row(vec![
            i.name.clone(),
            i.id.to_string(),
            or_dash(&i.policy),
            or_dash(&i.owner),
            i.state.clone(),
            or_dash(&i.fingerprint),
            i.bound_cgroups.len().to_string(),
            or_dash(&i.created_at),
        ]);
    }
    output::print(output::render_table(&t))
}

pub async fn show(socket: &Path, name: &str, json: bool) -> Result<(), CliError> {
    let reply = Client::connect(socket).await?.identity_show(name).await?;
    if json {
        return output::json(&reply);
    }
    output::print(show_text(&reply.identity.unwrap_or_default()))
}

fn show_text(i: &pb::Identity) -> String {
    let bound = if i.bound_cgroups.is_empty() { "-".to_string() } else { i.bound_cgroups.join("\n               ") };
    key_values(&[
        ("name", i.name.clone()),
        ("id", i.id.to_string()),
        ("policy", or_dash(&i.policy)),
        ("owner", or_dash(&i.owner)),
        ("state", i.state.clone()),
        ("public_key", or_dash(&i.public_key)),
        ("fingerprint", or_dash(&i.fingerprint)),
        ("created_at", or_dash(&i.created_at)),
        ("bound_cgroups", bound),
    ])
}

/// The person running agentctl: under sudo, the one who ran sudo (the daemon only
/// sees root), else the current user.
fn calling_user() -> String {
    if let Some(u) = std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty()) {
        return u;
    }
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_is_a_key_value_block_with_every_cgroup() {
        let i = pb::Identity {
            name: "coder".into(),
            id: 3,
            policy: "coding-agent".into(),
            owner: "alice".into(),
            state: "active".into(),
            bound_cgroups: vec!["/sys/fs/cgroup/a".into(), "/sys/fs/cgroup/b".into()],
            ..Default::default()
        };
        let s = show_text(&i);
        assert!(s.starts_with("name:          coder\nid:            3\n"), "{s}");
        assert!(s.contains("public_key:    -"), "{s}");
        assert!(s.ends_with("bound_cgroups: /sys/fs/cgroup/a\n               /sys/fs/cgroup/b"), "{s}");
    }

    #[test]
    fn calling_user_is_never_empty() {
        assert!(!calling_user().is_empty());
    }
}
