//! `agentctl identity create | list | show | revoke`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::{
    client::Client,
    error::CliError,
    output::{self, key_values, or_dash},
};
use crate::{
    api::pb,
    identity::{self, keys},
};

/// `identity create`'s optional parts.
#[derive(Debug, Default)]
pub struct CreateOptions {
    pub owner: Option<String>,
    pub public_key: Option<PathBuf>,
    pub expires: Option<String>,
    pub labels: Vec<(String, String)>,
}

pub async fn create(socket: &Path, name: &str, policy: &str, opts: CreateOptions, json: bool) -> Result<(), CliError> {
    let owner = opts.owner.unwrap_or_else(calling_user);
    // Checked here, before agentd is asked, so a typo is reported with the flag.
    let public_key = match &opts.public_key {
        None => String::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("--public-key {}: {e}", path.display())))?;
            keys::parse_public_text(&text).map_err(|e| CliError::Usage(format!("--public-key {}: {e}", path.display())))?;
            text
        }
    };
    let expires_at = match &opts.expires {
        None => String::new(),
        Some(w) => {
            let at = identity::parse_expiry(w, SystemTime::now()).map_err(CliError::Usage)?;
            humantime::format_rfc3339_seconds(at).to_string()
        }
    };
    let mut labels = BTreeMap::new();
    for (k, v) in opts.labels {
        if labels.insert(k.clone(), v).is_some() {
            return Err(CliError::Usage(format!("--label {k} is given twice")));
        }
    }
    let mut c = Client::connect(socket).await?;
    let req = pb::IdentityCreateRequest { name: name.into(), policy: policy.into(), owner, public_key, expires_at, labels };
    let reply = c.identity_create(req).await?;
    if json {
        return output::json(&reply);
    }
    let i = reply.identity.unwrap_or_default();
    let key = if i.has_private_key { "new key pair" } else { "your public key" };
    output::print(format!("created identity {} (policy {}, owner {}, {key} {})", i.name, i.policy, i.owner, i.fingerprint))?;
    if !i.expires_at.is_empty() {
        output::print(format!("it expires at {}; after that the kernel denies everything it does", i.expires_at))?;
    }
    output::print(format!("run an agent under it:  agentctl run --identity {} -- COMMAND", i.name))
}

pub async fn revoke(socket: &Path, name: &str, reason: &str, json: bool) -> Result<(), CliError> {
    let mut c = Client::connect(socket).await?;
    let reply = c.identity_revoke(name, reason).await?;
    if json {
        return output::json(&reply);
    }
    let i = reply.identity.unwrap_or_default();
    let n = i.bound_cgroups.len();
    output::print(format!(
        "revoked identity {} at {} by {}: the kernel now denies everything in its {n} bound cgroup{}",
        i.name,
        i.revoked_at,
        i.revoked_by,
        if n == 1 { "" } else { "s" }
    ))
}

pub async fn list(socket: &Path, json: bool) -> Result<(), CliError> {
    let reply = Client::connect(socket).await?.identity_list().await?;
    if json {
        return output::json(&reply);
    }
    if reply.identities.is_empty() {
        return output::print("no identities (create one with `agentctl identity create NAME --policy POLICY`)");
    }
    let mut t = output::table(&["NAME", "ID", "POLICY", "OWNER", "STATE", "KEY", "BOUND", "CREATED", "EXPIRES"]);
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
            or_dash(&i.expires_at),
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
    let labels = i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
    key_values(&[
        ("name", i.name.clone()),
        ("id", i.id.to_string()),
        ("policy", or_dash(&i.policy)),
        ("owner", or_dash(&i.owner)),
        ("state", i.state.clone()),
        ("public_key", or_dash(&i.public_key)),
        ("fingerprint", or_dash(&i.fingerprint)),
        ("private_key", (if i.has_private_key { "held by agentd" } else { "not held by agentd" }).to_string()),
        ("created_at", or_dash(&i.created_at)),
        ("expires_at", if i.expires_at.is_empty() { "never".to_string() } else { i.expires_at.clone() }),
        ("labels", if labels.is_empty() { "-".to_string() } else { labels }),
        ("revoked_at", or_dash(&i.revoked_at)),
        ("revoked_by", or_dash(&i.revoked_by)),
        ("revoke_reason", or_dash(&i.revoke_reason)),
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
        assert!(s.contains("expires_at:    never\n"), "{s}");
    }

    #[test]
    fn calling_user_is_never_empty() {
        assert!(!calling_user().is_empty());
    }
}
